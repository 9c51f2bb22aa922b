"""Wrong types, dtypes, shapes and layouts give a clear InterfaceError (a ValueError),
never a crash or a silently wrong answer."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vtpu import _core
from vtpu.errors import InterfaceError

ARR = np.arange(5 * 9, dtype=np.uint16).reshape(5, 9)
C = np.arange(9, dtype=np.uint16)
P = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
D = np.zeros((2, 9), dtype=np.int32)

BAD_ARRAYS = {
    "list": ARR.tolist(),
    "int32": ARR.astype(np.int32),
    "uint8": ARR.astype(np.uint8),
    "float": ARR.astype(np.float64),
    "byte-swapped": ARR.astype(">u2"),
    "shape (5, 8)": np.ascontiguousarray(ARR[:, :8]),
    "shape (45,)": ARR.ravel(),
    "shape (5, 9, 1)": ARR.reshape(5, 9, 1),
    "fortran": np.asfortranarray(ARR),
    "strided rows": np.zeros((10, 9), np.uint16)[::2],
    "strided cols": np.zeros((5, 18), np.uint16)[:, ::2],
    "none": None,
}

# (name, call taking the (N, 9) array argument)
ARRAY_CALLS = [
    ("format_coords", lambda a: _core.format_coords(a)),
    ("pack_many", lambda a: _core.pack_many(a)),
    ("morton_encode", lambda a: _core.morton_encode(a)),
    ("morton_decode", lambda a: _core.morton_decode(a)),
    ("match", lambda a: _core.match(a, P)),
    ("l1", lambda a: _core.l1(C, a)),
    ("hamming", lambda a: _core.hamming(C, a)),
    ("topk", lambda a: _core.topk(C, a, 3)),
    ("apply_delta", lambda a: _core.apply_delta(a, D)),
    ("prefix_hashes", lambda a: _core.prefix_hashes(a)),
    ("route", lambda a: _core.route(a, 4)),
    ("moe", lambda a: _core.moe(a, 4)),
    ("lower_bound", lambda a: _core.lower_bound(a, C)),
    ("upper_bound", lambda a: _core.upper_bound(a, C)),
    ("lex_scan", lambda a: _core.lex_scan(a, P)),
    ("lex_scan_from", lambda a: _core.lex_scan_from(a, P, 0, -1, 8)),
    ("z_scan keys", lambda a: _core.z_scan(a, ARR, P)),
    ("z_scan coords", lambda a: _core.z_scan(ARR, a, P)),
    ("lex_sort_order", lambda a: _core.lex_sort_order(a)),
    ("merge_sorted a", lambda a: _core.merge_sorted(a, None, ARR)),
    ("merge_sorted b", lambda a: _core.merge_sorted(ARR, None, a)),
]


@pytest.mark.parametrize("bad", list(BAD_ARRAYS), ids=list(BAD_ARRAYS))
@pytest.mark.parametrize("name,call", ARRAY_CALLS, ids=[n for n, _ in ARRAY_CALLS])
def test_bad_coordinate_arrays(name, call, bad):
    with pytest.raises(InterfaceError) as ei:
        call(BAD_ARRAYS[bad])
    assert isinstance(ei.value, ValueError)
    assert str(ei.value)


BAD_SINGLE = {
    "list": C.tolist(),
    "int32": C.astype(np.int32),
    "byte-swapped": C.astype(">u2"),
    "shape (8,)": C[:8].copy(),
    "shape (1, 9)": C.reshape(1, 9),
    "bytes": b"x" * 9,
    "none": None,
}

SINGLE_CALLS = [
    ("pack", lambda c: _core.pack(c)),
    ("format_coord", lambda c: _core.format_coord(c)),
    ("bigmin", lambda c: _core.bigmin(c, P)),
    ("litmax", lambda c: _core.litmax(c, P)),
    ("l1", lambda c: _core.l1(c, ARR)),
    ("hamming", lambda c: _core.hamming(c, ARR)),
    ("topk", lambda c: _core.topk(c, ARR, 2)),
    ("lower_bound", lambda c: _core.lower_bound(ARR, c)),
    ("upper_bound", lambda c: _core.upper_bound(ARR, c)),
]


@pytest.mark.parametrize("bad", list(BAD_SINGLE), ids=list(BAD_SINGLE))
@pytest.mark.parametrize("name,call", SINGLE_CALLS, ids=[n for n, _ in SINGLE_CALLS])
def test_bad_single_coordinates(name, call, bad):
    with pytest.raises(InterfaceError):
        call(BAD_SINGLE[bad])


def test_strided_single_coordinate_is_accepted():
    # A (9,) view with strides is copied, not rejected: the answer equals the contiguous one.
    c = np.zeros((9, 2), np.uint16)[:, 0]
    c[:] = C
    assert _core.pack(c) == _core.pack(C)
    assert _core.l1(c, ARR).tolist() == _core.l1(C, ARR).tolist()


BAD_PATTERNS = {
    "list": P.tolist(),
    "int32": P.astype(np.int32),
    "byte-swapped": P.astype(">u2"),
    "shape (9,)": P[0].copy(),
    "shape (3, 9)": np.zeros((3, 9), np.uint16),
    "shape (2, 8)": np.ascontiguousarray(P[:, :8]),
    "none": None,
}

PATTERN_CALLS = [
    ("format_pattern", lambda p: _core.format_pattern(p)),
    ("bigmin", lambda p: _core.bigmin(C, p)),
    ("litmax", lambda p: _core.litmax(C, p)),
    ("match", lambda p: _core.match(ARR, p)),
    ("moe_pattern", lambda p: _core.moe_pattern(p, 4)),
    ("lex_scan", lambda p: _core.lex_scan(ARR, p)),
    ("lex_scan_from", lambda p: _core.lex_scan_from(ARR, p, 0, -1, 8)),
    ("z_scan", lambda p: _core.z_scan(ARR, ARR, p)),
    ("match_rows", lambda p: _core.match_rows(ARR, np.arange(5), p)),
    ("pattern_is_empty", lambda p: _core.pattern_is_empty(p)),
    ("is_prefix_pattern", lambda p: _core.is_prefix_pattern(p)),
]


@pytest.mark.parametrize("bad", list(BAD_PATTERNS), ids=list(BAD_PATTERNS))
@pytest.mark.parametrize("name,call", PATTERN_CALLS, ids=[n for n, _ in PATTERN_CALLS])
def test_bad_patterns(name, call, bad):
    with pytest.raises(InterfaceError):
        call(BAD_PATTERNS[bad])


def test_fortran_pattern_is_accepted():
    pf = np.asfortranarray(_core.parse_pattern("1.*.[2:5]/*.*.*/*.*.*"))
    assert _core.match(ARR, pf).tolist() == _core.match(ARR, np.ascontiguousarray(pf)).tolist()


@pytest.mark.parametrize("bad", [D.tolist(), D.astype(np.int64), D.astype(np.uint16), D.astype(">i4"),
                                 np.zeros((3, 9), np.int32), None])
def test_bad_deltas(bad):
    with pytest.raises(InterfaceError):
        _core.apply_delta(ARR, bad)


# -- batched content checks ---------------------------------------------------------------

_CONTENT = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.binary(max_size=8),
    st.text(max_size=8), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.lists(st.integers(), max_size=3), st.sampled_from(["\ud800", object(), {1, 2}]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_CONTENT, max_size=20))
def test_check_contents_agrees_with_check_content(contents):
    """The batched check passes, converts or refuses each content as the per-content
    reference does: at the first content the reference refuses, with its error."""
    from vtpu.engine import check_content
    want, err = [], None
    for c in contents:
        try:
            want.append(check_content(c))
        except InterfaceError as e:
            err = str(e)
            break
    got = list(contents)
    if err is None:
        _core.check_contents(got, check_content)
        assert got == want and [type(g) for g in got] == [type(w) for w in want]
    else:
        with pytest.raises(InterfaceError) as info:
            _core.check_contents(got, check_content)
        assert str(info.value) == err


@settings(max_examples=200, deadline=None)
@given(_CONTENT)
def test_a_single_put_stores_or_refuses_as_check_content_does(content):
    """The engine's compiled put checks one content as the batch does: it stores what
    check_content returns (same value, same type) or refuses it with the same error,
    and a refused put stores nothing."""
    from vtpu.engine import Engine, check_content
    eng = Engine()
    key = _core.pack(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], np.uint16))
    try:
        want = check_content(content)
    except InterfaceError as e:
        with pytest.raises(InterfaceError) as info:
            eng.put(key, content)
        assert str(info.value) == str(e) and eng.get(key) is None
        return
    assert eng.put(key, content) == 1
    got = eng.get(key).content
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    else:
        assert got == want and type(got) is type(want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9), max_size=6))
def test_has_name_ids_finds_any_component_from_0xF000(rows):
    blob = _core.pack_many(np.array(rows, dtype=np.uint16).reshape(-1, 9))
    assert _core.has_name_ids(blob) == any(v >= 0xF000 for r in rows for v in r)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=17, max_size=19), st.text(max_size=18),
                          st.builds(bytearray, st.binary(min_size=18, max_size=18)),
                          st.none()), max_size=6))
def test_all_keys_agrees_with_the_python_test(items):
    """all_keys is the C form of "every item is a bytes object of 18 bytes"."""
    want = all(type(k) is bytes and len(k) == 18 for k in items)
    assert _core.all_keys(items) is want


class _Failure(ValueError):
    """A subclass of an exception: its instances are failed calls' results too."""


@given(st.lists(st.one_of(st.integers(), st.none(), st.text(max_size=3),
                          st.sampled_from([ValueError, KeyboardInterrupt, BaseException]),
                          st.builds(ValueError, st.text(max_size=3)),
                          st.builds(_Failure), st.builds(KeyboardInterrupt)), max_size=8))
def test_first_error_agrees_with_the_python_scan(items):
    """first_error is the C form of "the first item that is an exception object"; an
    exception class is a value like any other."""
    want = next((i for i, r in enumerate(items) if isinstance(r, BaseException)), -1)
    assert _core.first_error(items) == want
