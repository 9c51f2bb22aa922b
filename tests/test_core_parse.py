"""Parsing and formatting of coordinates, patterns and deltas: vtpu._core against pyref."""
import os
import re
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import pyref  # noqa: E402
from pyref import RefNames, row, rows
from vtpu import _core
from vtpu.errors import CoordinateError, InterfaceError

try:  # the store's own table, once it exists; the core only needs lookup/name_of
    from vtpu.coords import NameTable
except ImportError:  # pragma: no cover - depends on what else is in the tree
    NameTable = None

NAME_TABLES = [RefNames] + ([NameTable] if NameTable is not None else [])

numeric = st.one_of(st.integers(0, 61439), st.sampled_from([0, 1, 9, 10, 999, 61438, 61439]))
ident = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_-]{0,10}\Z")
component = st.one_of(numeric.map(str), numeric.map(str), ident)
sep_slash = st.sampled_from(["/", ";", " / ", " ;", "/  "])


@st.composite
def coord_text(draw, comp=component):
    parts = [draw(comp) for _ in range(9)]
    s1, s2 = draw(sep_slash), draw(sep_slash)
    lead = draw(st.sampled_from(["", " ", "  "]))
    trail = draw(st.sampled_from(["", " "]))
    return (lead + ".".join(parts[0:3]) + s1 + ".".join(parts[3:6]) + s2
            + ".".join(parts[6:9]) + trail)


def outcome(fn, *args, **kw):
    """('ok', value) or ('err', exception class) - for differential comparison."""
    try:
        return ("ok", fn(*args, **kw))
    except CoordinateError:
        return ("err", CoordinateError)


def coords_table():
    return RefNames(["alpha", "beta", "query", "person", "father"])


# ---------------------------------------------------------------------------------------
# Coordinates
# ---------------------------------------------------------------------------------------

@given(coord_text())
@example("1.2.3/4.5.6/7.8.9")
@example("0.0.0/0.0.0/0.0.0")
@example("61439.61439.61439/61439.61439.61439/61439.61439.61439")
@example("3.8.512/query.0.0/1.1.1")
@example(" 1.2.3 ; 4.5.6 / 7.8.9 ")
def test_parse_coord_matches_reference(text):
    got = _core.parse_coord(text, names=RefNames())
    assert got.dtype == np.uint16 and got.shape == (9,)
    assert row(got) == pyref.parse_coord(text, names=RefNames())


@given(st.text(alphabet="0123456789./; *[]:+-=ab_Z\t", max_size=40))
@example("1.2.3/4.5.6/7.8.9")
@example("1.2.3/4.5.6/7.8.9 ")
@example("01.002.3/4.5.6/7.8.9")
def test_parse_coord_fuzz_agrees_with_reference(text):
    exp = outcome(pyref.parse_coord, text, names=RefNames())
    got = outcome(_core.parse_coord, text, names=RefNames())
    if exp[0] == "ok":
        assert got[0] == "ok", text
        assert row(got[1]) == exp[1]
    else:
        assert got == exp, text


@st.composite
def near_miss(draw):
    """A valid coordinate text with one mutation: most mutations make it invalid."""
    text = draw(coord_text(st.one_of(numeric.map(str), ident)))
    i = draw(st.integers(0, len(text)))
    op = draw(st.sampled_from(["insert", "delete", "replace"]))
    ch = draw(st.sampled_from(list("0.9/;-+ *[]:a_é\x00")))
    if op == "insert":
        return text[:i] + ch + text[i:]
    if op == "delete":
        return text[:i] + text[i + 1:]
    return text[:i] + ch + text[i + 1:]


@given(near_miss())
def test_parse_coord_mutations_agree_with_reference(text):
    exp = outcome(pyref.parse_coord, text, names=RefNames())
    got = outcome(_core.parse_coord, text, names=RefNames())
    if exp[0] == "ok":
        assert got[0] == "ok", text
        assert row(got[1]) == exp[1]
    else:
        assert got == exp, text


@given(st.lists(st.lists(numeric, min_size=9, max_size=9), max_size=30))
def test_format_parse_round_trip_numeric(values):
    arr = np.array(values, dtype=np.uint16).reshape(-1, 9)
    texts = _core.format_coords(arr)
    assert texts == pyref.format_coords(rows(arr))
    back = _core.parse_coords(texts)
    assert back.dtype == np.uint16 and back.shape == arr.shape
    assert np.array_equal(back, arr)
    for c, t in zip(arr, texts):
        assert _core.format_coord(c) == t
        assert _core.format_coord(_core.pack(c)) == t


@pytest.mark.parametrize("table_cls", NAME_TABLES)
@given(st.lists(coord_text(), min_size=1, max_size=10))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_names_round_trip(table_cls, texts):
    names = table_cls()
    arr = _core.parse_coords(texts, names=names)
    ref = pyref.parse_coords(texts, names=RefNames())
    assert rows(arr) == ref
    # Name ids sit in 0xF000.., numbers below: formatting brings the same text back.
    again = _core.format_coords(arr, names=names)
    assert np.array_equal(_core.parse_coords(again, names=names, intern=False), arr)
    assert again == pyref.format_coords(rows(arr), names=names)


def test_name_ids_edges():
    names = RefNames()
    c = _core.parse_coord("a.b.c/1.2.3/0.61439.z", names=names)
    assert row(c) == (0xF000, 0xF001, 0xF002, 1, 2, 3, 0, 61439, 0xF003)
    assert _core.format_coord(c, names=names) == "a.b.c/1.2.3/0.61439.z"
    # The whole id space formats through the table.
    full = RefNames([f"n{i}" for i in range(4096)])
    arr = np.array([[0xF000] * 9, [0xFFFF] * 9, [0xEFFF] * 9], dtype=np.uint16)
    assert _core.format_coords(arr, names=full) == pyref.format_coords(rows(arr), names=full)
    assert _core.format_coord(arr[1], names=full) == "n4095.n4095.n4095/n4095.n4095.n4095/n4095.n4095.n4095"


def test_name_without_table_and_unknown_name():
    with pytest.raises(CoordinateError, match="name table"):
        _core.parse_coord("a.0.0/0.0.0/0.0.0")
    names = RefNames(["known"])
    assert _core.parse_coord("known.0.0/0.0.0/0.0.0", names=names, intern=False)[0] == 0xF000
    with pytest.raises(CoordinateError) as ei:
        _core.parse_coord("known.0.0/0.0.0/0.0.new", names=names, intern=False)
    assert "new" in str(ei.value) and "scroll" in str(ei.value)
    assert names.lookup("new", False) is None  # intern=False must not add it
    with pytest.raises(CoordinateError, match="name table"):
        _core.format_coord(np.array([0xF000] + [0] * 8, dtype=np.uint16))


def test_name_length_limit():
    n64 = "a" * 64
    c = _core.parse_coord(f"{n64}.0.0/0.0.0/0.0.0", names=RefNames())
    assert c[0] == 0xF000
    with pytest.raises(CoordinateError) as ei:
        _core.parse_coord(f"0.{n64}b.0/0.0.0/0.0.0", names=RefNames())
    assert "64" in str(ei.value) and "component 2" in str(ei.value)


# Every malformed kind: (text, words the message must contain besides the quoted input).
MALFORMED = [
    ("1.2.3/4.5.6/7.8", ["8 components"]),
    ("1.2.3/4.5.6/7.8.9.10", ["10 components"]),
    ("1.2.3/4.5/6.7.8.9", ["component"]),
    ("1..3/4.5.6/7.8.9", ["component 2", "empty"]),
    ("1.2.3/4.5.6/7.8.", ["component 9", "empty"]),
    (".2.3/4.5.6/7.8.9", ["component 1", "empty"]),
    ("1.2.3/-4.5.6/7.8.9", ["component 4"]),
    ("1.2.3/4.5.6/7.8.-9", ["component 9"]),
    ("1.2.3/4.5.x6y!/7.8.9", ["component 6"]),
    ("1.2.3/4.5.6/7.8.9.5", ["10 components"]),
    ("1.2.3/4.5.6/7.8.1.5", ["10 components"]),
    ("1.2.3/4.5.6/7.8.61440", ["component 9", "range"]),
    ("99999999999999999999.2.3/4.5.6/7.8.9", ["component 1", "range"]),
    ("1.2.3/4.5.6/7.8.9x", ["component 9"]),
    ("1.2.3/4.5.6/7.8.1e3", ["component 9"]),
    ("1.2.3/4.5.6/7.8.3.5e", ["component"]),
    ("1,2,3/4.5.6/7.8.9", ["component 1"]),
    ("1.2.3|4.5.6/7.8.9", ["component 3"]),
    ("1.2.3.4.5.6.7.8.9", ["component 3", "'/'"]),
    ("1.2/3.4.5.6/7.8.9", ["component 2", "'.'"]),
    ("1.2.3/4.5.6/7.8. 9", ["component 9"]),
    ("1 .2.3/4.5.6/7.8.9", ["component 1"]),
    ("1.2.3/4.5.6/7.8.9/", ["component"]),
    ("1.2.3//4.5.6/7.8.9", ["component 4"]),
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("1.2.3/4.5.6/7.8.½", ["component 9"]),
    ("1.2.3/4.5.6/7.8.\u0663", ["component 9"]),
    ("1.2.3/4.5.6/7.8.9\n", ["component"]),
    ("*.2.3/4.5.6/7.8.9", ["component 1"]),
    ("[1:2].2.3/4.5.6/7.8.9", ["component 1"]),
]


@pytest.mark.parametrize("text,words", MALFORMED)
def test_malformed_coordinate(text, words):
    with pytest.raises(CoordinateError) as ei:
        _core.parse_coord(text, names=RefNames())
    err = ei.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert repr(text) in msg, msg
    for w in words:
        assert w in msg, msg
    # The reference agrees that it is malformed.
    with pytest.raises(CoordinateError):
        pyref.parse_coord(text, names=RefNames())


@pytest.mark.parametrize("bad", [5, 1.5, None, b"1.2.3/4.5.6/7.8.9", ["1.2.3/4.5.6/7.8.9"]])
def test_non_str_input(bad):
    for fn in (_core.parse_coord, _core.parse_pattern, _core.parse_delta):
        with pytest.raises(CoordinateError) as ei:
            fn(bad)
        assert type(bad).__name__ in str(ei.value)


def test_parse_coords_batch_errors_and_edges():
    assert _core.parse_coords([]).shape == (0, 9)
    assert _core.parse_coords([]).dtype == np.uint16
    assert _core.parse_coords(iter(["1.2.3/4.5.6/7.8.9"])).shape == (1, 9)
    with pytest.raises(CoordinateError) as ei:
        _core.parse_coords(["1.2.3/4.5.6/7.8.9", "1.2.3/4.5.6/7.8"])
    assert "item 1" in str(ei.value) and "'1.2.3/4.5.6/7.8'" in str(ei.value)
    with pytest.raises(CoordinateError, match="item 0"):
        _core.parse_coords([7])
    with pytest.raises(InterfaceError):
        _core.parse_coords("1.2.3/4.5.6/7.8.9")
    assert _core.format_coords(np.empty((0, 9), np.uint16)) == []


# ---------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------

@st.composite
def interval(draw):
    a = draw(st.one_of(st.none(), st.integers(0, 61439)))
    lo = a or 0
    b = draw(st.one_of(st.none(), st.integers(lo + 1, 61440)))
    return f"[{'' if a is None else a}:{'' if b is None else b}]"


pattern_component = st.one_of(numeric.map(str), st.just("*"), interval(), ident)


@given(coord_text(pattern_component))
@example("*.*.*/*.*.*/*.*.*")
@example("[:].[0:1].[61439:]/[:61440].0.*/x.y.[5:6]")
def test_parse_pattern_matches_reference(text):
    got = _core.parse_pattern(text, names=RefNames())
    assert got.dtype == np.uint16 and got.shape == (2, 9)
    exp = pyref.parse_pattern(text, names=RefNames())
    assert (row(got[0]), row(got[1])) == exp
    # format -> parse gives the same bounds, and format agrees with the reference.
    names = RefNames()
    p = _core.parse_pattern(text, names=names)
    f = _core.format_pattern(p, names=names)
    assert f == pyref.format_pattern(p, names=names)
    assert np.array_equal(_core.parse_pattern(f, names=names, intern=False), p)


@given(st.text(alphabet="0123456789./; *[]:ab", max_size=40))
@example("[1:2].2.3/4.5.6/7.8.9")
def test_parse_pattern_fuzz_agrees_with_reference(text):
    exp = outcome(pyref.parse_pattern, text, names=RefNames())
    got = outcome(_core.parse_pattern, text, names=RefNames())
    if exp[0] == "ok":
        assert got[0] == "ok", text
        assert (row(got[1][0]), row(got[1][1])) == exp[1]
    else:
        assert got == exp, text


@given(st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9),
       st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9))
def test_format_pattern_any_bounds_matches_reference(lo, hi):
    p = np.array([lo, hi], dtype=np.uint16)
    names = RefNames([f"n{i}" for i in range(4096)])
    assert _core.format_pattern(p, names=names) == pyref.format_pattern(p, names=names)


MALFORMED_PATTERNS = [
    ("[5:5].0.0/0.0.0/0.0.0", ["component 1", "empty interval"]),
    ("[6:5].0.0/0.0.0/0.0.0", ["component 1", "empty interval"]),
    ("0.[:0].0/0.0.0/0.0.0", ["component 2", "empty interval"]),
    ("0.0.[1:2/0.0.0/0.0.0", ["component 3", "interval"]),
    ("0.0.0/[12].0.0/0.0.0", ["component 4", "interval"]),
    ("0.0.0/0.[a:b].0/0.0.0", ["component 5", "interval"]),
    ("0.0.0/0.0.[1:61441]/0.0.0", ["component 6", "range"]),
    ("0.0.0/0.0.0/[61440:].0.0", ["component 7", "range"]),
    ("0.0.0/0.0.0/0.[-1:5].0", ["component 8", "interval"]),
    ("0.0.0/0.0.0/0.0.**", ["component 9"]),
    ("0.0.0/0.0.0/0.0.[1: 2]", ["component 9", "interval"]),
    ("0.0.0/0.0.0/0.0.[1:2:3]", ["component 9", "interval"]),
    ("0.0.0/0.0.0/0.0", ["8 components"]),
    ("0.0.0/0.0.0/0.0.*.*", ["10 components"]),
    ("0.0.0/0.0.0/0.0.=5", ["component 9"]),
    ("0.0.0/0.0.0/0.0.61440", ["component 9", "range"]),
]


@pytest.mark.parametrize("text,words", MALFORMED_PATTERNS)
def test_malformed_pattern(text, words):
    with pytest.raises(CoordinateError) as ei:
        _core.parse_pattern(text, names=RefNames())
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert repr(text) in msg, msg
    for w in words:
        assert w in msg, msg
    with pytest.raises(CoordinateError):
        pyref.parse_pattern(text, names=RefNames())


# ---------------------------------------------------------------------------------------
# Deltas
# ---------------------------------------------------------------------------------------

delta_component = st.one_of(
    numeric.map(str),
    numeric.map(lambda v: f"+{v}"),
    numeric.map(lambda v: f"-{v}"),
    numeric.map(lambda v: f"={v}"),
    st.just("*"),
    ident,
    ident.map(lambda n: "=" + n),
)


@given(coord_text(delta_component))
@example("+0.0.0/+0.0.5/+0.0.0")
@example("=1.-2.*/x.=y.+0/0.0.61439")
def test_parse_delta_matches_reference(text):
    got = _core.parse_delta(text, names=RefNames())
    assert got.dtype == np.int32 and got.shape == (2, 9)
    assert (row(got[0]), row(got[1])) == pyref.parse_delta(text, names=RefNames())


@given(st.text(alphabet="0123456789./; *+-=ab", max_size=40))
@example("+1.-2.=3/4.5.6/7.8.9")
def test_parse_delta_fuzz_agrees_with_reference(text):
    exp = outcome(pyref.parse_delta, text, names=RefNames())
    got = outcome(_core.parse_delta, text, names=RefNames())
    if exp[0] == "ok":
        assert got[0] == "ok", text
        assert (row(got[1][0]), row(got[1][1])) == exp[1]
    else:
        assert got == exp, text


MALFORMED_DELTAS = [
    ("+0.0.0/+0.0.5/+0.0", ["8 components"]),
    ("+0.0.0/+0.0.5/+0.0.0.0", ["10 components"]),
    ("++1.0.0/0.0.0/0.0.0", ["component 1"]),
    ("0.+.0/0.0.0/0.0.0", ["component 2"]),
    ("0.0.-x/0.0.0/0.0.0", ["component 3"]),
    ("0.0.0/+61440.0.0/0.0.0", ["component 4", "range"]),
    ("0.0.0/0.-61440.0/0.0.0", ["component 5", "range"]),
    ("0.0.0/0.0.[1:2]/0.0.0", ["component 6"]),
    ("0.0.0/0.0.0/=*.0.0", ["component 7"]),
    ("0.0.0/0.0.0/0..0", ["component 8", "empty"]),
    ("0.0.0/0.0.0/0.0.5-", ["component 9"]),
]


@pytest.mark.parametrize("text,words", MALFORMED_DELTAS)
def test_malformed_delta(text, words):
    with pytest.raises(CoordinateError) as ei:
        _core.parse_delta(text, names=RefNames())
    msg = str(ei.value)
    assert repr(text) in msg, msg
    for w in words:
        assert w in msg, msg
    with pytest.raises(CoordinateError):
        pyref.parse_delta(text, names=RefNames())


coord_values = st.lists(st.lists(st.integers(0, 61439), min_size=9, max_size=9),
                        min_size=0, max_size=20)


@given(coord_values, coord_text(st.one_of(
    st.integers(-61439, 61439).map(lambda v: f"{v:+d}"),
    st.integers(-3, 3).map(lambda v: f"{v:+d}"),
    numeric.map(lambda v: f"={v}"),
    st.just("*"), st.just("+0"))))
def test_apply_delta_matches_reference(values, text):
    arr = np.array(values, dtype=np.uint16).reshape(-1, 9)
    d = _core.parse_delta(text)
    exp = outcome(pyref.apply_delta, rows(arr), (row(d[0]), row(d[1])))
    got = outcome(_core.apply_delta, arr, d)
    if exp[0] == "ok":
        assert got[0] == "ok"
        assert got[1].dtype == np.uint16 and got[1].shape == arr.shape
        assert rows(got[1]) == exp[1]
    else:
        assert got == exp


def test_apply_delta_errors_name_row_and_component():
    arr = _core.parse_coords(["1.1.1/1.1.1/1.1.1", "1.1.1/1.1.61439/1.1.1"])
    with pytest.raises(CoordinateError) as ei:
        _core.apply_delta(arr, _core.parse_delta("0.0.0/0.0.+1/0.0.0"))
    msg = str(ei.value)
    assert "row 1" in msg and "component 6 (book)" in msg
    with pytest.raises(CoordinateError, match="component 1"):
        _core.apply_delta(arr, _core.parse_delta("-2.0.0/0.0.0/0.0.0"))
    # Adding to a name id is an error; setting a name is fine; +0 leaves names alone.
    names = RefNames()
    named = _core.parse_coords(["x.1.1/1.1.1/1.1.1"], names=names)
    with pytest.raises(CoordinateError, match="name"):
        _core.apply_delta(named, _core.parse_delta("+1.0.0/0.0.0/0.0.0"))
    out = _core.apply_delta(named, _core.parse_delta("+0.y.0/0.0.0/0.0.*", names=names))
    assert rows(out) == [(0xF000, 0xF001, 1, 1, 1, 1, 1, 1, 1)]
    assert _core.apply_delta(np.empty((0, 9), np.uint16), _core.parse_delta("1.1.1/1.1.1/1.1.1")).shape == (0, 9)


def test_all_text_is_isinstance_str_for_every_item():
    class Text(str):
        pass

    for items in ([], ["1.1.1/1.1.1/1.1.1"], ["a", Text("b")], ["a", b"b"], [None], ["a"] * 3 + [1]):
        assert _core.all_text(items) is all(isinstance(x, str) for x in items)
    with pytest.raises(TypeError):
        _core.all_text(("a", "b"))   # a list only: callers make one first


class _Text(str):
    """A str subclass: the batch parser's fast path takes exact str only."""


_ITEM = st.one_of(
    st.builds(lambda c: "{}.{}.{}/{}.{}.{}/{}.{}.{}".format(*c),
              st.lists(st.integers(0, 70000), min_size=9, max_size=9)),
    st.sampled_from(["1.2.3 / 4.5.6 ; 7.8.9", " 1.1.1/1.1.1/1.1.1", "x.1.1/1.1.1/1.1.1",
                     "1.1.1/1.1.1/1.1", "1.1.1/1.1.1/1.1.é", "", "1..1/1.1.1/1.1.1",
                     # a NUL inside the text or after it (the reader stops at the str's
                     # own NUL terminator), and the numeric limit from both sides
                     "1.1.1/1.1.1/1.1.1\x00", "1.1.1/1\x00.1.1/1.1.1", "1.1.1/1.1.1/1.1.\x00",
                     "61439.0.0/0.0.0/0.0.61439", "61440.0.0/0.0.0/0.0.0",
                     "0.0.0/0.0.0/0.0.99999", "00001.0.0/0.0.0/0.0.000001"]),
    st.builds(_Text, st.just("3.3.3/3.3.3/3.3.3")),
    st.text(alphabet="0123456789./; xé", max_size=24),
    # Near the plain form: 8 to 10 numbers of 0 to 6 digits (leading zeros too), each
    # followed by any separator, so every check of the branch-free reader is reached.
    st.builds(lambda parts, seps: "".join(p + q for p, q in zip(parts, seps))[:-1],
              st.lists(st.text(alphabet="0123456789", max_size=6), min_size=8, max_size=10),
              st.lists(st.sampled_from("././/./;:\x00"), min_size=10, max_size=10)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ITEM, max_size=8))
def test_parse_coords_agrees_with_parse_coord_item_by_item(items):
    """The batch parser gives each row as parse_coord gives it, and at the first item
    parse_coord refuses, that error with the item's index."""
    names = NameTable()
    want, err = [], None
    for i, s in enumerate(items):
        try:
            want.append(_core.parse_coord(s, names=names, intern=False))
        except CoordinateError as e:
            err = f"item {i}: {e}"
            break
    if err is None:
        got = _core.parse_coords(items, names=names, intern=False)
        assert got.shape == (len(items), 9)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        # parse_keys and text_keys: the same rows, packed
        assert _core.parse_keys(items, names=names, intern=False) == b"".join(
            _core.pack(w) for w in want)
        assert _core.text_keys(items, names=names, intern=False) == b"".join(
            _core.pack(w) for w in want)
    else:
        for parse in (_core.parse_coords, _core.parse_keys, _core.text_keys):
            with pytest.raises(CoordinateError) as info:
                parse(items, names=names, intern=False)
            assert str(info.value) == err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_ITEM, st.sampled_from([b"1.1.1/1.1.1/1.1.1", None, 7, (1,) * 9])),
                max_size=8))
def test_text_keys_is_none_at_the_first_item_that_is_no_str(items):
    """text_keys reads strings as parse_keys does, up to the first item that is not a
    str: then None (the caller's other path), unless a string before it is refused."""
    first_other = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
    if first_other is None:
        try:
            want = _core.parse_keys(items, intern=False)
        except CoordinateError as e:
            with pytest.raises(CoordinateError, match=re.escape(str(e))):
                _core.text_keys(items, intern=False)
        else:
            assert _core.text_keys(items, intern=False) == want
        return
    try:
        _core.parse_keys(items[:first_other], intern=False)
    except CoordinateError as e:
        with pytest.raises(CoordinateError, match=re.escape(str(e))):
            _core.text_keys(items, intern=False)
    else:
        assert _core.text_keys(items, intern=False) is None
