"""Sorted-array index primitives: lower_bound, lex_scan, z_scan, lex_sort_order,
merge_sorted - each against a brute-force filter or sort in pyref."""
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import pyref  # noqa: E402
from pyref import row, rows  # noqa: E402
from vtpu import _core  # noqa: E402
from vtpu.errors import InterfaceError  # noqa: E402

# Small per-component alphabets make patterns hit often and make runs of near misses,
# which is where the scans' skipping logic lives.
small = st.integers(0, 5)
alphabet_word = st.one_of(small, st.sampled_from([0, 5, 1000, 0xEFFF, 0xF000, 0xFFFF]))
coord = st.lists(alphabet_word, min_size=9, max_size=9)


def as_arr(values):
    return np.array(values, dtype=np.uint16).reshape(-1, 9)


def lex_sorted(arr):
    return np.ascontiguousarray(arr[_core.lex_sort_order(arr)])


@st.composite
def patterns(draw):
    lo, hi = [], []
    for _ in range(9):
        kind = draw(st.sampled_from(["fixed", "star", "interval", "interval"]))
        if kind == "fixed":
            v = draw(alphabet_word)
            lo.append(v), hi.append(v)
        elif kind == "star":
            lo.append(0), hi.append(0xFFFF)
        else:
            a, b = sorted([draw(alphabet_word), draw(alphabet_word)])
            lo.append(a), hi.append(b)
    if draw(st.integers(0, 9)) == 0:  # now and then an empty box
        j = draw(st.integers(0, 8))
        lo[j], hi[j] = 3, 2
    return np.array([lo, hi], dtype=np.uint16)


data_arrays = st.lists(coord, max_size=150).map(as_arr)


@given(data_arrays)
def test_lex_sort_order_matches_reference(arr):
    order = _core.lex_sort_order(arr)
    assert order.tolist() == pyref.lex_sort_order(rows(arr))


@given(data_arrays, coord)
def test_lower_bound_matches_reference(arr, key):
    s = lex_sorted(arr)
    key = np.array(key, np.uint16)
    assert _core.lower_bound(s, key) == pyref.lower_bound(rows(s), key)


@given(data_arrays, coord, st.booleans())
def test_upper_bound_matches_reference(arr, key, stored):
    s = lex_sorted(arr)
    if stored and len(s):
        key = list(s[len(s) // 2])   # a key the array holds (maybe more than once)
    key = np.array(key, np.uint16)
    assert _core.upper_bound(s, key) == pyref.upper_bound(rows(s), key)


@st.composite
def prefix_patterns(draw):
    """Patterns that fix a prefix, bound the next component and leave the rest whole:
    their matches are the span between the corners (lex_scan reads no row of it)."""
    k = draw(st.integers(0, 9))
    lo = [draw(small) for _ in range(k)]
    hi = list(lo)
    if k < 9:
        a, b = sorted([draw(alphabet_word), draw(alphabet_word)])
        if draw(st.booleans()):
            a, b = 0, 0xFFFF
        lo.append(a), hi.append(b)
        lo += [0] * (8 - k)
        hi += [0xFFFF] * (8 - k)
    return np.array([lo, hi], dtype=np.uint16)


@settings(max_examples=300)
@given(data_arrays, st.one_of(patterns(), prefix_patterns()), st.integers(-1, 160),
       st.integers(-1, 40))
def test_lex_scan_equals_brute_force(arr, p, start, limit):
    s = lex_sorted(arr)
    start = max(start, 0)
    idx, seeks = _core.lex_scan(s, p, start, limit)
    assert idx.dtype == np.int64 and seeks >= 0
    assert idx.tolist() == pyref.lex_scan(rows(s), p, start, limit)


@given(st.one_of(patterns(), prefix_patterns()), st.lists(coord, max_size=20))
def test_is_prefix_pattern_means_the_span_between_the_corners_matches(p, extra):
    lo, hi = list(row(p[0])), list(row(p[1]))
    j = next((j for j in range(9) if lo[j] != hi[j]), 9)
    want = all(lo[k] == 0 and hi[k] == 0xFFFF for k in range(j + 1, 9))
    assert _core.is_prefix_pattern(p) == want
    if want:
        # every coordinate that sorts between the corners is inside the box
        between = [list(c) for c in extra + [lo, hi] if lo <= list(c) <= hi]
        assert all(pyref.in_box(c, (lo, hi)) for c in between)


@settings(max_examples=300)
@given(data_arrays, st.one_of(patterns(), prefix_patterns()), st.integers(0, 160),
       st.integers(-1, 40), st.integers(1, 12))
def test_lex_scan_from_in_steps_equals_brute_force(arr, p, start, limit, budget):
    # Resumed step by step (each examining about `budget` rows), the scan finds what one
    # whole scan finds; every step moves on.
    s = lex_sorted(arr)
    got, at, steps = [], start, 0
    while at >= 0:
        left = -1 if limit < 0 else limit - len(got)
        idx, nxt = _core.lex_scan_from(s, p, at, left, budget)
        assert idx.dtype == np.int64
        got += idx.tolist()
        assert nxt < 0 or nxt > at
        at, steps = nxt, steps + 1
        assert steps <= len(s) + 1
    assert got == pyref.lex_scan(rows(s), p, start, limit)


def test_lex_scan_from_refuses_a_budget_below_one():
    s = as_arr([[1] * 9])
    every = np.array([[0] * 9, [0xFFFF] * 9], np.uint16)
    for bad in (0, -1):
        with pytest.raises(InterfaceError, match="budget"):
            _core.lex_scan_from(s, every, 0, -1, bad)


@settings(max_examples=300)
@given(data_arrays, patterns(), st.integers(-1, 40))
def test_z_scan_equals_brute_force(arr, p, limit):
    z = _core.morton_encode(arr)
    order = _core.lex_sort_order(z)  # Z keys as words sort like the 144-bit integers
    zk = np.ascontiguousarray(z[order])
    zc = np.ascontiguousarray(arr[order])
    idx, seeks = _core.z_scan(zk, zc, p, limit)
    assert idx.dtype == np.int64 and seeks >= 0
    assert idx.tolist() == pyref.z_scan(rows(zk), rows(zc), p, limit)


def test_scans_skip_on_large_random_data():
    # Many rows and selective patterns of every shape: the skipping paths get exercised
    # and the results still equal the brute-force filter.
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 12, size=(30000, 9), dtype=np.uint16)
    arr = np.unique(arr, axis=0)
    s = lex_sorted(arr)
    z = _core.morton_encode(s)
    order = _core.lex_sort_order(z)
    zk, zc = np.ascontiguousarray(z[order]), np.ascontiguousarray(s[order])
    texts = ["3.4.*/*.*.*/*.*.*",          # prefix
             "*.*.*/5.[2:4].*/*.*.*",      # middle
             "*.*.*/*.*.*/*.7.1",          # suffix
             "[2:4].*.*/*.[0:2].*/*.*.[9:]",  # intervals
             "1.*.[3:5]/*.2.*/[0:6].*.0"]  # mixed
    total_seeks = 0
    for t in texts:
        p = _core.parse_pattern(t)
        want = np.nonzero(_core.match(s, p))[0].tolist()
        idx, seeks = _core.lex_scan(s, p)
        assert idx.tolist() == want, t
        total_seeks += seeks
        zidx, zseeks = _core.z_scan(zk, zc, p)
        assert sorted(rows(zc[zidx])) == rows(s[want]), t
        assert zidx.tolist() == np.nonzero(_core.match(zc, p))[0].tolist(), t
        total_seeks += zseeks
        # paging: limit + start reproduce the full result in pieces
        pages, pos = [], 0
        for _ in range(10000):
            part, _s = _core.lex_scan(s, p, pos, 7)
            if len(part) == 0:
                break
            pages.extend(part.tolist())
            pos = int(part[-1]) + 1
        assert pages == want, t
    assert total_seeks > 0


def test_scan_edges():
    empty = np.empty((0, 9), np.uint16)
    p = _core.parse_pattern("*.*.*/*.*.*/*.*.*")
    assert _core.lex_scan(empty, p)[0].shape == (0,)
    assert _core.z_scan(empty, empty, p)[0].shape == (0,)
    assert _core.lower_bound(empty, np.zeros(9, np.uint16)) == 0
    arr = lex_sorted(as_arr([[1] * 9, [2] * 9]))
    assert _core.lex_scan(arr, p, 0, 0)[0].tolist() == []
    assert _core.lex_scan(arr, p, 5)[0].tolist() == []
    with pytest.raises(InterfaceError):
        _core.z_scan(arr, arr[:1].copy(), p)


@st.composite
def merge_inputs(draw):
    universe = draw(st.lists(coord, max_size=80, unique_by=tuple))
    a = [c for c in universe if draw(st.booleans())]
    b = [c for c in universe if draw(st.booleans())]
    a = lex_sorted(as_arr(a))
    b = lex_sorted(as_arr(b))
    keep = None
    if draw(st.booleans()):
        keep = np.array(draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a))), bool)
    return a, keep, b


@given(merge_inputs(), st.booleans())
def test_merge_sorted_matches_reference(inputs, with_vals):
    a, keep, b = inputs
    if with_vals:
        av = np.ascontiguousarray(a[:, ::-1])
        bv = np.ascontiguousarray(b[:, ::-1] // 2)
        keys, vals = _core.merge_sorted(a, keep, b, av, bv)
        ek, ev = pyref.merge_sorted(rows(a), keep, rows(b), rows(av), rows(bv))
        assert rows(keys) == ek and rows(vals) == ev
    else:
        keys = _core.merge_sorted(a, keep, b)
        assert keys.dtype == np.uint16 and keys.shape[1] == 9
        assert rows(keys) == pyref.merge_sorted(rows(a), keep, rows(b))


def test_merge_sorted_rejects_mismatched_arguments():
    a = np.arange(90, dtype=np.uint16).reshape(10, 9)
    b = a[:2].copy()
    for bad_keep in (np.ones(3, bool), np.ones(10, np.int64), [True] * 10):
        with pytest.raises(InterfaceError):
            _core.merge_sorted(a, bad_keep, b)
    with pytest.raises(InterfaceError):
        _core.merge_sorted(a, None, b, a[:3].copy(), b)
    with pytest.raises(InterfaceError):
        _core.merge_sorted(a, None, b, a, None)
    empty = np.empty((0, 9), np.uint16)
    assert _core.merge_sorted(empty, None, empty).shape == (0, 9)
    assert rows(_core.merge_sorted(empty, None, b)) == rows(b)
    assert rows(_core.merge_sorted(a, np.zeros(10, bool), empty)) == []


@given(data_arrays, patterns(), st.data())
def test_match_rows_equals_brute_force(arr, p, data):
    picked = data.draw(st.lists(st.integers(0, len(arr) - 1), max_size=60)) if len(arr) else []
    got = _core.match_rows(arr, np.array(picked, dtype=np.int64), p)
    lo_hi = (row(p[0]), row(p[1]))
    assert got.tolist() == [i for i in picked if pyref.in_box(row(arr[i]), lo_hi)]


def test_match_rows_refuses_rows_outside_the_array():
    arr = as_arr([[1] * 9, [2] * 9])
    every = np.array([[0] * 9, [0xFFFF] * 9], np.uint16)
    for bad in ([0, 2], [-1], [1, 0, 5]):
        with pytest.raises(InterfaceError, match="out of range"):
            _core.match_rows(arr, np.array(bad, dtype=np.int64), every)
    assert _core.match_rows(arr, np.array([1, 0], dtype=np.int64), every).tolist() == [1, 0]


@given(patterns())
def test_pattern_is_empty_matches_reference(p):
    assert _core.pattern_is_empty(p) == pyref._box_empty(p)


@given(st.integers(1, 2000), st.data())   # past 256 rows: the answer's buffer grows
def test_bitmap_and_rows_equals_brute_force(nbits, data):
    # up to six bitmaps: four are read through their own pointers, more word by word;
    # words past nbits, and rows from `first` only
    nw = (nbits + 63) // 64 + data.draw(st.integers(0, 2))
    nmaps = data.draw(st.integers(1, 6))
    first = data.draw(st.integers(-1, nbits + 70))
    # zero words too: whole blocks of four that one bitmap already empties, as a sparse
    # answer's do, and single bits at either end of a word
    words = st.one_of(st.just(0), st.integers(0, 2**64 - 1),
                      st.sampled_from([1, 1 << 63, 2**64 - 1]))
    maps = [np.array(data.draw(st.lists(words, min_size=nw, max_size=nw)),
                     dtype=np.uint64) for _ in range(nmaps)]
    got = _core.bitmap_and_rows(maps, nbits, first)
    want = [i for i in range(max(0, first), nbits)
            if all((int(m[i // 64]) >> (i % 64)) & 1 for m in maps)]
    assert got.tolist() == want
    if first <= 0:
        assert _core.bitmap_and_rows(maps, nbits).tolist() == want
    # past the last word: every bit of every word (no overflow on a huge count)
    every = _core.bitmap_and_rows(maps, 64 * nw, first).tolist()
    assert _core.bitmap_and_rows(maps, sys.maxsize, first).tolist() == every
