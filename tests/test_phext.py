"""Phext reading/writing: agreement with the reference ``phext`` package, round trips,
and refusal (or skipping) of what a phext file cannot hold."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtpu.errors import PhextError
from vtpu.phext import BREAKS, format_phext, parse_phext, read_phext, write_phext
from vtpu.testing import shared_data_dir

phext_ref = pytest.importorskip("phext.phext")  # listed in the [test] extra; fallback only

DATA = os.environ.get("VTPU_PHEXT_DATA", os.path.join(shared_data_dir(), "phext"))
FILES = sorted(glob.glob(os.path.join(DATA, "*.phext")))
HERE = os.path.dirname(os.path.abspath(__file__))
FILES += sorted(glob.glob(os.path.join(HERE, "data", "*.phext")))


def explode(text: str) -> list[tuple[tuple, str]]:
    """The reference: Phext().explode as a list of (tuple, text) in its dict order."""
    return [(c.as_tuple(), t) for c, t in phext_ref.Phext().explode(text).items()]


def implode(items) -> str:
    """The reference writer (dephokenize), fed scrolls in coordinate order."""
    P = phext_ref.Phext()
    Coordinate = phext_ref.Coordinate
    return P.dephokenize([
        phext_ref.PositionedScroll(Coordinate(*c), t) for c, t in sorted(items)
    ])


# ---------------------------------------------------------------------------- reading


def test_real_files_are_there():
    assert FILES, f"no .phext files under {DATA} (set VTPU_PHEXT_DATA)"


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_agrees_with_explode_on_real_files(path):
    with open(path, newline="") as f:
        text = f.read()
    mine = parse_phext(text)
    assert mine == explode(text)
    assert mine == read_phext(path)
    # the real files are normal: strict parsing sees no saturation
    assert parse_phext(text, strict=True) == mine
    # and they are written back to the same scrolls
    assert parse_phext(format_phext(mine)) == mine


def test_real_file_keeps_crlf():
    path = os.path.join(DATA, "basic.phext")
    if not os.path.exists(path):
        pytest.skip("basic.phext not available")
    texts = [t for _, t in read_phext(path)]
    assert any("\r\n" in t for t in texts)


# Text mixing every break, 0x1B, CR/LF, other controls, ASCII and non-ASCII.
_ALPHABET = st.sampled_from(
    list(BREAKS) + ["\x1b", "\r", "\n", "\r\n", "\x00", "\x02", "\x03", "\x07", "\x7f",
                    "a", "b", "Z", " ", "é", "中", "😀", "1.2.3"]
)
phext_texts = st.lists(_ALPHABET, max_size=200).map("".join)


@settings(max_examples=400, deadline=None)
@given(phext_texts)
def test_agrees_with_explode_on_generated_texts(text):
    assert parse_phext(text) == explode(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(BREAKS)), st.integers(0, 1100),
                          st.text(max_size=3)), max_size=6))
def test_agrees_with_explode_on_long_break_runs(parts):
    # Long runs (up to past 999) exercise the memoised run effects and saturation.
    text = "".join(b * n + t for b, n, t in parts)
    assert parse_phext(text) == explode(text)


def test_saturation_matches_reference_and_strict_refuses():
    text = "first" + "\x17" * 998 + "at999" + "\x17" + "folded" + "\x18" + "next"
    ref = explode(text)
    assert parse_phext(text) == ref
    # the reference folds "folded" onto 1.1.1/1.1.1/1.1.999 and "at999" is gone
    assert ((1,) * 8 + (999,), "folded") in ref
    with pytest.raises(PhextError, match=r"1\.1\.1/1\.1\.1/1\.1\.999.*999") as ei:
        parse_phext(text, strict=True)
    assert "character 1008" in str(ei.value)
    # exactly reaching 999 is fine in strict mode
    ok = "a" + "\x1e" * 998 + "b"
    assert parse_phext(ok, strict=True) == explode(ok)


def test_saturation_inside_a_run_strict():
    text = "x" + "\x1c" + "\x17" * 1000 + "y"
    assert parse_phext(text) == explode(text)
    with pytest.raises(PhextError):
        parse_phext(text, strict=True)


@pytest.mark.parametrize("text,expected", [
    ("", []),
    ("\x17\x17", []),
    ("a", [((1,) * 9, "a")]),
    ("\x1ba\x1b", [((1,) * 9, "\x1ba\x1b")]),
    ("\x17b", [((1,) * 8 + (2,), "b")]),
    ("a\x01\x17b\x17", [((1,) * 9, "a"), ((2, 1, 1, 1, 1, 1, 1, 1, 2), "b")]),
    ("\x17\x01b", [((2,) + (1,) * 8, "b")]),
    ("a\r\n\x17\r\n", [((1,) * 9, "a\r\n"), ((1,) * 8 + (2,), "\r\n")]),
])
def test_small_cases(text, expected):
    got = parse_phext(text)
    assert got == explode(text)
    if expected is not None:
        assert got == expected


def test_parse_rejects_bytes():
    with pytest.raises(PhextError, match="str"):
        parse_phext(b"abc")


def test_read_phext_not_utf8(tmp_path):
    p = tmp_path / "bad.phext"
    p.write_bytes(b"ok\x17\xff\xfe")
    with pytest.raises(PhextError, match="byte offset 3"):
        read_phext(p)


# ---------------------------------------------------------------------------- writing


coords = st.tuples(*[st.integers(1, 999)] * 9) | st.tuples(
    *[st.integers(1, 3)] * 9)  # small values give many shared prefixes
scroll_text = st.text(
    st.characters(blacklist_characters=BREAKS, blacklist_categories=("Cs",)), min_size=1,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(coords, scroll_text, max_size=30))
def test_round_trip_and_agreement_with_reference_writer(d):
    items = sorted(d.items())
    doc = format_phext(items)
    assert parse_phext(doc) == items
    assert explode(doc) == items
    assert doc == implode(items)  # byte-identical to the reference writer
    # order of input does not matter
    assert format_phext(list(reversed(items))) == doc


def test_round_trip_file_keeps_crlf(tmp_path):
    items = [((1,) * 9, "line1\r\nline2\r\n"), ((1, 2, 3, 4, 5, 6, 7, 8, 9), "\rx\n")]
    p = tmp_path / "out.phext"
    assert write_phext(p, items) == []
    assert read_phext(p) == items
    assert p.read_bytes().count(b"\r\n") == 2


def test_coordinate_forms():
    c = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    packed = b"".join(v.to_bytes(2, "big") for v in c)
    for form in (c, list(c), np.array(c, dtype=np.uint16), packed, "1.2.3/4.5.6/7.8.9",
                 "1.2.3;4.5.6;7.8.9"):
        assert parse_phext(format_phext([(form, "x")])) == [(c, "x")]


def test_empty_export():
    assert format_phext([]) == ""
    assert format_phext([], return_skipped=True) == ("", [])


INVALID = [
    ((0, 1, 1, 1, 1, 1, 1, 1, 1), "x", r"0\.1\.1/1\.1\.1/1\.1\.1.*component 0.*shift"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 0), "x", r"1\.1\.1/1\.1\.1/1\.1\.0.*component 8"),
    ((1, 1, 1, 1000, 1, 1, 1, 1, 1), "x", r"1\.1\.1/1000\.1\.1/1\.1\.1.*1\.\.999"),
    ((1, 1, 1, 1, 61439, 1, 1, 1, 1), "x", r"61439"),
    ((1, 1, 1, 0xF000, 1, 1, 1, 1, 1), "x", r"1\.1\.1/61440\.1\.1/1\.1\.1.*name"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 0xFFFF), "x", r"65535.*name"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 2), b"bytes", r"1\.1\.1/1\.1\.1/1\.1\.2.*bytes"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 2), np.zeros(3), r"1\.1\.1/1\.1\.1/1\.1\.2.*ndarray"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 2), {"a": 1}, r"1\.1\.1/1\.1\.1/1\.1\.2.*dict"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 2), 5, r"1\.1\.1/1\.1\.1/1\.1\.2.*int"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 2), "", r"1\.1\.1/1\.1\.1/1\.1\.2.*empty"),
] + [
    ((2, 1, 1, 1, 1, 1, 1, 1, 1), f"ab{b}c", rf"2\.1\.1/1\.1\.1/1\.1\.1.*0x{ord(b):02X} at index 2")
    for b in BREAKS
]


@pytest.mark.parametrize("coord,content,pattern", INVALID)
def test_invalid_raises_naming_coordinate(coord, content, pattern):
    good = [((1, 1, 1, 1, 1, 1, 1, 1, 1), "fine"), ((3, 1, 1, 1, 1, 1, 1, 1, 1), "also")]
    with pytest.raises(PhextError, match=pattern) as ei:
        format_phext(good + [(coord, content)])
    doc, skipped = format_phext(good + [(coord, content)], skip_invalid=True,
                                return_skipped=True)
    assert parse_phext(doc) == good
    assert len(skipped) == 1
    assert skipped[0][0] == coord
    # the reason given for the skip is the one the refusal names
    assert isinstance(skipped[0][2], str) and skipped[0][2]
    assert skipped[0][2] in str(ei.value)


def test_escape_is_not_a_break_and_is_writable():
    items = [((1,) * 9, "a\x1bb")]
    assert parse_phext(format_phext(items)) == items


def test_duplicates():
    items = [((1,) * 9, "a"), ((1,) * 9, "b")]
    with pytest.raises(PhextError, match=r"1\.1\.1/1\.1\.1/1\.1\.1.*more than once"):
        format_phext(items)
    doc, skipped = format_phext(items, skip_invalid=True, return_skipped=True)
    assert parse_phext(doc) == [((1,) * 9, "a")]
    assert skipped == [((1,) * 9, "b", "duplicate coordinate")]


def test_name_in_string_coordinate():
    with pytest.raises(PhextError, match="numeric"):
        format_phext([("1.1.1/query.1.1/1.1.1", "x")])


def test_skip_counts_many(tmp_path):
    items = [((1, 1, 1, 1, 1, 1, 1, 1, i), f"s{i}") for i in range(1, 11)]
    items += [((0, 1, 1, 1, 1, 1, 1, 1, 1), "bad"), ((1, 1, 1, 1, 1, 1, 1, 2, 1), b"raw"),
              ((1, 1, 1, 1, 1, 1, 1, 3, 1), "x\x17y")]
    skipped = write_phext(tmp_path / "x.phext", items, skip_invalid=True)
    assert sorted(s[0] for s in skipped) == sorted(c for c, _ in items[10:])
    assert read_phext(tmp_path / "x.phext") == items[:10]
    with pytest.raises(PhextError):
        write_phext(tmp_path / "y.phext", items)
    assert not (tmp_path / "y.phext").exists()  # nothing half-written


def test_large_round_trip():
    # 50k scrolls across every dimension; keeps the vectorised paths honest.
    n = 50_000
    items = [((1 + i // 20000, 1, 1 + (i // 5000) % 4, 1, 1 + (i // 1000) % 5, 1,
               1 + (i // 100) % 10, 1, 1 + i % 100), f"t{i}\n") for i in range(n)]
    doc = format_phext(items)
    assert parse_phext(doc) == items
    assert explode(doc) == items


class _Names:
    def name_of(self, ident):
        if ident == 0xF000:
            return "query"
        raise KeyError(ident)


def test_error_shows_names_when_given():
    with pytest.raises(PhextError, match=r"1\.1\.1/query\.1\.1/1\.1\.1.*name id"):
        format_phext([((1, 1, 1, 0xF000, 1, 1, 1, 1, 1), "x")], names=_Names())
    with pytest.raises(PhextError, match=r"1\.1\.1/61441\.1\.1/1\.1\.1"):
        format_phext([((1, 1, 1, 0xF001, 1, 1, 1, 1, 1), "x")], names=_Names())


# -- the column writer ---------------------------------------------------------------------

_COMPONENT = st.sampled_from([1, 1, 1, 2, 3, 998, 999, 0, 1000, 0xF000])
_TEXT = st.one_of(st.sampled_from(["a", "bc", "line\nbreak", "x" * 5]),
                  st.sampled_from(["", "a\x17b", "\x01", b"bytes", None, 7]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.tuples(*[_COMPONENT] * 9), _TEXT), max_size=40,
                unique_by=lambda it: it[0]),
       st.lists(st.integers(1, 10), max_size=4), st.booleans())
def test_write_columns_writes_what_write_writes(items, cuts, skip):
    """Scrolls given as an (M, 9) array and their contents, in chunks: the same text, the
    same skips and the same error as the pair writer given them one by one."""
    from vtpu.phext import PhextWriter

    items.sort(key=lambda it: it[0])
    chunks, a = [], 0
    for c in cuts + [len(items)]:
        chunks.append(items[a:a + c])
        a += c
    pairs, cols = PhextWriter(skip_invalid=skip), PhextWriter(skip_invalid=skip)
    want = got = ""
    want_err = got_err = None
    try:
        for ch in chunks:
            want += pairs.write(ch)
    except PhextError as e:
        want_err = str(e)
    try:
        for ch in chunks:
            arr = np.array([c for c, _ in ch], dtype=np.uint16).reshape(-1, 9)
            got += cols.write_columns(arr, [t for _, t in ch])
    except PhextError as e:
        got_err = str(e)
    assert got_err == want_err
    if want_err is None:
        assert got == want
        assert cols.n_skipped == pairs.n_skipped and cols.skipped == pairs.skipped


def test_write_columns_refuses_coordinates_out_of_order():
    from vtpu.phext import PhextWriter

    w = PhextWriter()
    w.write_columns(np.array([[1] * 8 + [3]], dtype=np.uint16), ["a"])
    for bad in ([[1] * 8 + [3]], [[1] * 8 + [2]], [[1] * 8 + [4], [1] * 8 + [4]]):
        with pytest.raises(PhextError, match="ascending"):
            w.write_columns(np.array(bad, dtype=np.uint16), ["b"] * len(bad))
    with pytest.raises(PhextError, match="array"):
        w.write_columns(np.zeros((2, 8), dtype=np.uint16), ["b", "c"])
