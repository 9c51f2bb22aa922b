"""Packing, Morton keys, BIGMIN/LITMAX, matching, distances and top-k against pyref."""
import os
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import pyref  # noqa: E402
from pyref import row, rows  # noqa: E402
from vtpu import _core  # noqa: E402
from vtpu.errors import InterfaceError  # noqa: E402

word = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xEFFF, 0xF000, 0xFFFF]))
coord = st.lists(word, min_size=9, max_size=9)


def as_arr(values):
    return np.array(values, dtype=np.uint16).reshape(-1, 9)


coord_arrays = st.lists(coord, max_size=40).map(as_arr)


@st.composite
def patterns(draw):
    """Boxes with a mix of fixed, wildcard, interval and (sometimes) empty components."""
    lo, hi = [], []
    for _ in range(9):
        kind = draw(st.sampled_from(["fixed", "star", "interval", "interval", "empty"]
                                    if draw(st.booleans()) else ["fixed", "star", "interval"]))
        if kind == "fixed":
            v = draw(word)
            lo.append(v), hi.append(v)
        elif kind == "star":
            lo.append(0), hi.append(0xFFFF)
        elif kind == "interval":
            a, b = sorted([draw(word), draw(word)])
            lo.append(a), hi.append(b)
        else:
            a = draw(st.integers(1, 0xFFFF))
            lo.append(a), hi.append(draw(st.integers(0, a - 1)))
    return np.array([lo, hi], dtype=np.uint16)


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------

@given(coord_arrays)
def test_pack_round_trips_and_matches_reference(arr):
    blob = _core.pack_many(arr)
    assert isinstance(blob, bytes) and len(blob) == 18 * len(arr)
    assert blob == pyref.pack_many(rows(arr))
    back = _core.unpack_many(blob)
    assert back.dtype == np.uint16 and back.shape == arr.shape
    assert np.array_equal(back, arr)
    assert rows(back) == pyref.unpack_many(blob)
    for c in arr:
        b = _core.pack(c)
        assert b == pyref.pack(c)
        assert row(_core.unpack(b)) == row(c)
        assert row(_core.unpack(bytearray(b))) == row(c)
        assert row(_core.unpack(memoryview(b))) == row(c)


@given(coord, coord)
def test_pack_order_is_coordinate_order(a, b):
    pa, pb = _core.pack(np.array(a, np.uint16)), _core.pack(np.array(b, np.uint16))
    assert (pa < pb) == (tuple(a) < tuple(b))


def test_pack_edges():
    assert _core.pack(np.zeros(9, np.uint16)) == bytes(18)
    assert _core.pack(np.full(9, 0xFFFF, np.uint16)) == b"\xff" * 18
    assert _core.pack(np.array([0xEFFF, 1, 0, 0, 0, 0, 0, 0, 0x0102], np.uint16)) == \
        b"\xef\xff\x00\x01" + bytes(12) + b"\x01\x02"
    assert _core.pack_many(np.empty((0, 9), np.uint16)) == b""
    assert _core.unpack_many(b"").shape == (0, 9)
    for bad in (b"", bytes(17), bytes(19)):
        with pytest.raises(InterfaceError):
            _core.unpack(bad)
    with pytest.raises(InterfaceError):
        _core.unpack_many(bytes(19))
    for bad in ("x" * 18, 5, None):
        with pytest.raises(InterfaceError):
            _core.unpack(bad)
        with pytest.raises(InterfaceError):
            _core.unpack_many(bad)


# ---------------------------------------------------------------------------------------
# Morton
# ---------------------------------------------------------------------------------------

@given(coord_arrays)
@example(as_arr([[0] * 9, [0xFFFF] * 9, [0xEFFF] * 9, [1] + [0] * 8, [0] * 8 + [1]]))
def test_morton_matches_bitwise_reference_and_round_trips(arr):
    z = _core.morton_encode(arr)
    assert z.dtype == np.uint16 and z.shape == arr.shape
    assert rows(z) == pyref.morton_encode(rows(arr))
    back = _core.morton_decode(z)
    assert np.array_equal(back, arr)
    assert rows(back) == pyref.morton_decode(rows(z))


@given(st.lists(word, min_size=9, max_size=9).map(lambda v: as_arr([v])))
def test_morton_decode_is_a_bijection(z):
    # Every 144-bit key decodes to a coordinate that encodes back to it.
    assert np.array_equal(_core.morton_encode(_core.morton_decode(z)), z)


@given(coord, coord)
def test_morton_order_is_z_order(a, b):
    za, zb = _core.morton_encode(as_arr([a, b]))
    assert (tuple(za) < tuple(zb)) == (pyref.morton_int(a) < pyref.morton_int(b))


def test_morton_known_bits():
    # Component 0's top bit is key bit 143 (word 0's top bit); component 8's lowest bit
    # is key bit 0 (word 8's lowest bit).
    z = _core.morton_encode(as_arr([[0x8000] + [0] * 8, [0] * 8 + [1], [0, 0x8000] + [0] * 7]))
    assert row(z[0]) == (0x8000,) + (0,) * 8
    assert row(z[1]) == (0,) * 8 + (1,)
    assert row(z[2]) == (0x4000,) + (0,) * 8
    assert _core.morton_encode(np.empty((0, 9), np.uint16)).shape == (0, 9)
    assert _core.morton_decode(np.empty((0, 9), np.uint16)).shape == (0, 9)


# ---------------------------------------------------------------------------------------
# BIGMIN / LITMAX
# ---------------------------------------------------------------------------------------

@st.composite
def small_box_and_point(draw):
    """A box with up to 3 varying components of width <= 3 (so <= 27 points) and a
    query point near it, plus the box's dims chosen anywhere in 0..0xFFFF."""
    varying = draw(st.lists(st.integers(0, 8), min_size=0, max_size=3, unique=True))
    lo, hi = [], []
    for j in range(9):
        base = draw(st.one_of(st.integers(0, 0xFFFC), st.integers(0, 12),
                              st.sampled_from([0x7FFE, 0x7FFF, 0xEFFD, 0xFFFC])))
        width = draw(st.integers(1, 3)) if j in varying else 1
        lo.append(base)
        hi.append(base + width - 1)
    z = []
    for j in range(9):
        z.append(draw(st.one_of(st.integers(max(lo[j] - 3, 0), min(hi[j] + 3, 0xFFFF)),
                                st.integers(0, 0xFFFF))))
    return np.array(z, np.uint16), np.array([lo, hi], np.uint16)


@settings(max_examples=400)
@given(small_box_and_point())
def test_bigmin_litmax_against_brute_force(zp):
    z, p = zp
    bm, lm = _core.bigmin(z, p), _core.litmax(z, p)
    exp_bm, exp_lm = pyref.bigmin_brute(z, p), pyref.litmax_brute(z, p)
    assert (None if bm is None else row(bm)) == exp_bm
    assert (None if lm is None else row(lm)) == exp_lm
    # and the textbook integer algorithm of pyref agrees with the brute force
    assert pyref.bigmin(z, p) == exp_bm
    assert pyref.litmax(z, p) == exp_lm


def test_bigmin_litmax_exhaustive_tiny_boxes():
    # Every box [lo, hi] within 0..3 on components 6..8 (others fixed at 5) and every
    # query point in 0..4 on those components. The brute-force answer (the smallest Z key
    # of the box above the point, the largest below it) is read from the box's sorted Z
    # keys, made once per box from Z keys computed once per point.
    import bisect
    import itertools
    zkey = {q: pyref.morton_int((5,) * 6 + q) for q in itertools.product(range(5), repeat=3)}
    point = {k: (5,) * 6 + q for q, k in zkey.items()}
    queries = [(np.array((5,) * 6 + q, np.uint16), k) for q, k in zkey.items()]
    spans = [(a, b) for a in range(4) for b in range(a, 4)]
    for (a6, b6), (a7, b7), (a8, b8) in itertools.product(spans, repeat=3):
        p = np.array([[5] * 6 + [a6, a7, a8], [5] * 6 + [b6, b7, b8]], np.uint16)
        box = sorted(zkey[q] for q in itertools.product(range(a6, b6 + 1), range(a7, b7 + 1),
                                                         range(a8, b8 + 1)))
        for z, zv in queries:
            above = bisect.bisect_right(box, zv)
            below = bisect.bisect_left(box, zv)
            exp_bm = point[box[above]] if above < len(box) else None
            exp_lm = point[box[below - 1]] if below else None
            bm, lm = _core.bigmin(z, p), _core.litmax(z, p)
            assert (None if bm is None else row(bm)) == exp_bm, (z, p)
            assert (None if lm is None else row(lm)) == exp_lm, (z, p)
    # the sorted-keys answer is the brute force's (checked on one box)
    p = np.array([[5] * 6 + [0, 1, 0], [5] * 6 + [3, 2, 3]], np.uint16)
    for z, zv in queries[::7]:
        bm, lm = _core.bigmin(z, p), _core.litmax(z, p)
        assert (None if bm is None else row(bm)) == pyref.bigmin_brute(z, p)
        assert (None if lm is None else row(lm)) == pyref.litmax_brute(z, p)


@given(coord, patterns())
def test_bigmin_litmax_large_boxes_against_textbook(z, p):
    z = np.array(z, np.uint16)
    bm, lm = _core.bigmin(z, p), _core.litmax(z, p)
    assert (None if bm is None else row(bm)) == pyref.bigmin(z, p)
    assert (None if lm is None else row(lm)) == pyref.litmax(z, p)
    zk = pyref.morton_int(z)
    lo, hi = row(p[0]), row(p[1])
    if bm is not None:
        assert pyref.in_box(row(bm), (lo, hi)) and pyref.morton_int(bm) > zk
    if lm is not None:
        assert pyref.in_box(row(lm), (lo, hi)) and pyref.morton_int(lm) < zk


def test_bigmin_litmax_empty_box_is_none():
    p = np.array([[0] * 8 + [5], [3] * 8 + [2]], np.uint16)  # lo > hi on the last component
    assert _core.bigmin(np.zeros(9, np.uint16), p) is None
    assert _core.litmax(np.full(9, 9, np.uint16), p) is None


# ---------------------------------------------------------------------------------------
# Matching and distances
# ---------------------------------------------------------------------------------------

@given(coord_arrays, patterns())
def test_match_matches_reference(arr, p):
    # Put some rows inside the box so matches actually happen.
    if len(arr) and not (p[0] > p[1]).any():
        arr = arr.copy()
        arr[::2] = np.maximum(np.minimum(arr[::2], p[1]), p[0])
    m = _core.match(arr, p)
    assert m.dtype == np.bool_ and m.shape == (len(arr),)
    assert m.tolist() == pyref.match(rows(arr), p)


def test_match_edges():
    arr = as_arr([[0] * 9, [0xFFFF] * 9, [0xEFFF] * 9])
    star = np.array([[0] * 9, [0xFFFF] * 9], np.uint16)
    assert _core.match(arr, star).tolist() == [True, True, True]
    numeric = _core.parse_pattern("[:].[:].[:]/[:].[:].[:]/[:].[:].[:]")
    assert _core.match(arr, numeric).tolist() == [True, False, True]
    assert _core.match(np.empty((0, 9), np.uint16), star).shape == (0,)


dense_word = st.sampled_from([0, 1, 2, 3, 0xFFFF])
dense_arrays = st.lists(st.lists(dense_word, min_size=9, max_size=9), max_size=40).map(as_arr)


@st.composite
def window_patterns(draw):
    """Boxes over few values, so that spans hold rows inside and outside them: windows
    (fixed components, one interval, then wildcards: all of the span is in the box) and
    boxes with later components constrained too (some of it is not)."""
    j = draw(st.integers(0, 8))
    lo = [draw(dense_word) for _ in range(j)]
    hi = list(lo)
    for _ in range(9 - j):
        kind = draw(st.sampled_from(["star", "star", "interval", "fixed"]))
        a, b = sorted([draw(dense_word), draw(dense_word)])
        a, b = {"star": (0, 0xFFFF), "interval": (a, b), "fixed": (a, a)}[kind]
        lo.append(a), hi.append(b)
    return np.array([lo, hi], dtype=np.uint16)


@given(dense_arrays, st.lists(window_patterns(), max_size=4))
def test_window_spans_against_brute_force(arr, pats):
    srt = np.unique(arr, axis=0) if len(arr) else arr
    keys = [tuple(int(v) for v in r) for r in srt]
    p = np.array(pats, dtype=np.uint16).reshape(-1, 2, 9)
    starts, ends, exact = _core.window_spans(np.ascontiguousarray(srt), p)
    for i, pat in enumerate(p):
        lo, hi = tuple(int(v) for v in pat[0]), tuple(int(v) for v in pat[1])
        s = sum(k < lo for k in keys)
        e = max(s, sum(k <= hi for k in keys))
        assert (starts[i], ends[i]) == (s, e)
        assert exact[i] == all(pyref.match(keys[s:e], pat))


def test_band_fill_against_numpy():
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        sc = rng.standard_normal((6, 7)).astype(dtype)
        lo = np.array([-3, 0, 2, 5, 9, 4], dtype=np.int64)
        hi = np.array([2, 7, 2, 20, 12, 1], dtype=np.int64)
        want = sc.copy()
        cols = np.arange(7)
        for r in range(6):
            want[r, (cols < lo[r]) | (cols >= hi[r])] = -np.inf
        kept = _core.band_fill(sc, lo, hi, -np.inf)
        np.testing.assert_array_equal(sc, want)
        assert kept.tolist() == [int(np.isfinite(want[r]).sum()) for r in range(6)]
    with pytest.raises(InterfaceError, match="C-contiguous"):
        _core.band_fill(np.zeros((3, 4), np.float32)[:, ::2], np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(InterfaceError, match="float32 or float64"):
        _core.band_fill(np.zeros((3, 4), np.int32), np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(InterfaceError, match=r"one bound per row \(3\)"):
        _core.band_fill(np.zeros((3, 4)), np.zeros(2), np.zeros(3), 0.0)


@given(coord, coord_arrays)
def test_l1_hamming_match_reference(c, arr):
    c = np.array(c, np.uint16)
    d = _core.l1(c, arr)
    h = _core.hamming(c, arr)
    assert d.dtype == np.uint32 and h.dtype == np.uint8
    assert d.tolist() == pyref.l1(c, rows(arr))
    assert h.tolist() == pyref.hamming(c, rows(arr))


def test_l1_extremes():
    c = np.zeros(9, np.uint16)
    arr = as_arr([[0xFFFF] * 9])
    assert _core.l1(c, arr).tolist() == [9 * 0xFFFF]
    assert _core.l1(arr[0], as_arr([[0] * 9])).tolist() == [9 * 0xFFFF]
    assert _core.hamming(c, arr).tolist() == [9]


# ---------------------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------------------

small_word = st.integers(0, 6)
clustered_arrays = st.lists(st.lists(small_word, min_size=9, max_size=9), max_size=60).map(as_arr)


def check_topk(c, arr, k, metric, mask):
    idx, dist = _core.topk(c, arr, k, metric=metric, mask=mask)
    exp_idx, exp_dist = pyref.topk(c, rows(arr), k, metric, None if mask is None else mask.tolist())
    assert idx.dtype == np.int64 and dist.dtype == np.uint32
    assert len(idx) == len(exp_idx) == min(k, len(exp_idx))
    assert dist.tolist() == exp_dist
    # Rows equal in (distance, coordinate) are interchangeable; compare coordinates and
    # then check the indices are distinct, admissible and at the right distance.
    assert rows(arr[idx]) == [row(arr[i]) for i in exp_idx]
    assert len(set(idx.tolist())) == len(idx)
    full = _core.l1(c, arr) if metric == "l1" else _core.hamming(c, arr)
    for i, d in zip(idx, dist):
        assert full[i] == d
        assert mask is None or mask[i]
    if len(np.unique(arr, axis=0)) == len(arr):
        assert idx.tolist() == exp_idx


@settings(max_examples=300)
@given(st.lists(small_word, min_size=9, max_size=9), clustered_arrays,
       st.integers(0, 70), st.sampled_from(["l1", "hamming"]), st.data())
def test_topk_matches_sorted_reference(c, arr, k, metric, data):
    c = np.array(c, np.uint16)
    mask = None
    if data.draw(st.booleans()):
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(arr), max_size=len(arr))),
                        dtype=bool)
    check_topk(c, arr, k, metric, mask)


@given(coord, coord_arrays, st.integers(0, 45))
def test_topk_wide_values(c, arr, k):
    check_topk(np.array(c, np.uint16), arr, k, "l1", None)


def test_topk_large_random():
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 200, size=(20000, 9), dtype=np.uint16)
    c = rng.integers(0, 200, size=9, dtype=np.uint16)
    for k in (1, 10, 100):
        idx, dist = _core.topk(c, arr, k)
        full = _core.l1(c, arr)
        assert dist.tolist() == sorted(full.tolist())[:k]
        order = sorted(range(len(arr)), key=lambda i: (int(full[i]), row(arr[i]), i))[:k]
        assert rows(arr[idx]) == [row(arr[i]) for i in order]


def test_topk_edges():
    c = np.zeros(9, np.uint16)
    empty = np.empty((0, 9), np.uint16)
    idx, dist = _core.topk(c, empty, 10)
    assert idx.shape == (0,) and dist.shape == (0,) and idx.dtype == np.int64
    arr = as_arr([[1] * 9, [0] * 9])
    idx, dist = _core.topk(c, arr, 0)
    assert len(idx) == 0
    idx, dist = _core.topk(c, arr, 5)
    assert idx.tolist() == [1, 0] and dist.tolist() == [0, 9]
    idx, dist = _core.topk(c, arr, 5, mask=np.array([False, False]))
    assert len(idx) == 0
    with pytest.raises(InterfaceError):
        _core.topk(c, arr, -1)
    with pytest.raises(InterfaceError):
        _core.topk(c, arr, 1, metric="l2")
    for bad_mask in (np.array([True]), np.array([1, 0]), [True, False], np.array([[True, False]])):
        with pytest.raises(InterfaceError):
            _core.topk(c, arr, 1, mask=bad_mask)


# ---------------------------------------------------------------------------------------
# Nearest: the running top-k over unsorted and sorted arrays (the CNEAREST scan)
# ---------------------------------------------------------------------------------------

def brute_nearest(c, arr, k, metric, alive=None, within=None):
    """Every admissible row sorted by (distance, coordinate, row), cut to k: numpy."""
    a = arr.astype(np.int64)
    q = np.asarray(c, dtype=np.int64)
    d = np.abs(a - q).sum(axis=1) if metric == "l1" else (a != q).sum(axis=1)
    ok = np.ones(len(arr), dtype=bool) if alive is None else alive.copy()
    if within is not None:
        ok &= ((arr >= within[0]) & (arr <= within[1])).all(axis=1)
    rows_ = np.flatnonzero(ok)
    order = np.lexsort((rows_,) + tuple(arr[rows_, j] for j in range(8, -1, -1)) + (d[rows_],))
    keep = rows_[order][:k]
    return arr[keep], d[keep], keep


def sorted_unique(arr):
    return np.ascontiguousarray(np.unique(arr, axis=0)) if len(arr) else arr


def check_nearest(c, arr, k, metric, alive, within, cuts):
    """scan, scan_sorted over the whole array, and scan_sorted over ranges fed in any
    order all answer what brute force does."""
    exp_c, exp_d, exp_r = brute_nearest(c, arr, k, metric, alive, within)
    runs = []
    nn = _core.Nearest(c, k, metric, within)
    nn.scan(arr, 0, len(arr), alive)
    runs.append(nn.result())
    nn = _core.Nearest(c, k, metric, within)
    nn.scan_sorted(arr, 0, -1, alive)
    runs.append(nn.result())
    nn = _core.Nearest(c, k, metric, within)
    edges = sorted(set([0, len(arr)] + [x % (len(arr) + 1) for x in cuts]))
    spans = list(zip(edges, edges[1:]))
    for a, b in spans[::-1] if len(cuts) % 2 else spans:
        nn.scan_sorted(arr, a, b, alive)
    runs.append(nn.result())
    for coords, dists, tags in runs:
        assert coords.dtype == np.uint16 and dists.dtype == np.uint32 and tags.dtype == np.int64
        assert dists.tolist() == exp_d.tolist()
        assert rows(coords) == rows(exp_c)
        assert tags.tolist() == exp_r.tolist()


@st.composite
def nearest_cases(draw, values):
    if draw(st.booleans()):
        arr = draw(st.lists(st.lists(values, min_size=9, max_size=9), max_size=300).map(as_arr))
    else:
        # Larger arrays (the sorted scan splits ranges longer than its leaf size) of a
        # few distinct values per component, so sorted ranges share long prefixes.
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        n = draw(st.integers(0, 3000))
        spread = [draw(st.sampled_from([1, 2, 4, 10, 300, 0x10000])) for _ in range(9)]
        arr = np.stack([rng.integers(0, s, size=n) for s in spread], axis=1).astype(np.uint16)
    arr = np.ascontiguousarray(arr[np.lexsort(tuple(arr[:, j] for j in range(8, -1, -1)))])
    if draw(st.booleans()):
        arr = sorted_unique(arr)   # what the index holds; duplicates are tested otherwise
    c = np.array(draw(st.lists(values, min_size=9, max_size=9)), dtype=np.uint16)
    how = draw(st.sampled_from(["drawn", "near a row", "in the data's range"])) if len(arr) \
        else "drawn"
    if how == "in the data's range":
        c = np.array([draw(st.integers(0, min(int(arr[:, j].max()) + 2, 0xFFFF)))
                      for j in range(9)], dtype=np.uint16)
    elif how == "near a row":
        # Near a stored row, above or below it in each component.
        noise = np.array(draw(st.lists(st.integers(-3, 3), min_size=9, max_size=9)))
        c = (arr[draw(st.integers(0, len(arr) - 1))] + noise).clip(0, 0xFFFF).astype(np.uint16)
    # Mostly a k well below N, where the bound skips ranges; sometimes k >= N.
    k = draw(st.one_of(st.integers(0, 12), st.integers(0, 60), st.integers(0, len(arr) + 3)))
    alive = None
    if draw(st.booleans()):
        alive = np.array(draw(st.lists(st.booleans(), min_size=len(arr), max_size=len(arr))),
                         dtype=bool)
    within = None
    if draw(st.booleans()):
        lo = [draw(values) for _ in range(9)]
        hi = [draw(st.one_of(st.just(0xFFFF), values)) for _ in range(9)]
        for j in range(9):
            if draw(st.integers(0, 3)) == 0:
                lo[j], hi[j] = 0, 0xFFFF
            elif draw(st.integers(0, 5)):   # mostly a real interval, sometimes empty
                lo[j], hi[j] = min(lo[j], hi[j]), max(lo[j], hi[j])
        within = np.array([lo, hi], dtype=np.uint16)
    metric = draw(st.sampled_from(["l1", "hamming"]))
    cuts = draw(st.lists(st.integers(0, 4000), max_size=6))
    return c, arr, k, metric, alive, within, cuts


@settings(max_examples=400, deadline=None)
@given(nearest_cases(st.integers(0, 3)))
def test_nearest_clustered_equals_brute_force(case):
    check_nearest(*case)   # small values: many equal distances, ties by coordinate


@settings(max_examples=200, deadline=None)
@given(nearest_cases(word))
def test_nearest_wide_values_equal_brute_force(case):
    check_nearest(*case)


def test_nearest_large_sorted_with_deletes_and_within():
    rng = np.random.default_rng(3)
    for hi_v, n in ((10, 200_000), (3000, 100_000), (0x10000, 50_000)):
        arr = sorted_unique(rng.integers(0, hi_v, size=(n, 9), dtype=np.uint16))
        alive = rng.random(len(arr)) < 0.9
        for t in range(6):
            c = rng.integers(0, hi_v + 2, size=9).clip(0, 0xFFFF).astype(np.uint16)
            within = None
            if t % 2:
                within = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
                within[:, 1] = sorted(rng.integers(0, hi_v, size=2))
            for metric in ("l1", "hamming"):
                for k in (1, 10, 257):
                    check_nearest(c, arr, k, metric, alive if t % 3 else None, within,
                                  [len(arr) // 3, len(arr) // 2])


def test_nearest_skips_far_ranges_of_a_sorted_array():
    # 1M-like digits data: the sorted scan computes few distances, the plain scan all.
    i = np.arange(100_000)
    arr = np.ones((len(i), 9), dtype=np.uint16)
    for j in range(5):
        arr[:, j] = (i // 10 ** (4 - j)) % 10
    c = np.array([3, 1, 4, 1, 5, 1, 1, 1, 1], dtype=np.uint16)
    nn = _core.Nearest(c, 10)
    nn.scan_sorted(arr)
    full = _core.Nearest(c, 10)
    full.scan(arr)
    assert full.rows_seen == len(arr)
    assert nn.rows_seen < len(arr) // 20
    assert [x.tolist() for x in nn.result()] == [x.tolist() for x in full.result()]
    assert nn.bound == 1 and len(nn) == 10


def test_nearest_windows_bound_their_rows():
    rng = np.random.default_rng(5)
    arr = sorted_unique(rng.integers(0, 6, size=(3000, 9), dtype=np.uint16))
    within = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0], [3] + [0xFFFF] * 8], dtype=np.uint16)
    c = np.array([5, 0, 2, 2, 2, 2, 2, 2, 2], dtype=np.uint16)
    for metric in ("l1", "hamming"):
        for box in (None, within):
            nn = _core.Nearest(c, 5, metric, box)
            starts, bounds = nn.windows(arr, 100)
            assert list(bounds) == sorted(bounds)
            d = _core.l1(c, arr) if metric == "l1" else _core.hamming(c, arr).astype(np.uint32)
            inside = np.ones(len(arr), bool) if box is None else \
                ((arr >= box[0]) & (arr <= box[1])).all(axis=1)
            listed = set(starts.tolist())
            for a in range(0, len(arr), 100):
                w = slice(a, a + 100)
                if a in listed:
                    lb = int(bounds[starts.tolist().index(a)])
                    assert not inside[w].any() or lb <= d[w][inside[w]].min()
                else:
                    assert not inside[w].any()
            assert box is None or len(listed) < len(range(0, len(arr), 100))


def test_nearest_edges_and_bad_arguments():
    c = np.zeros(9, np.uint16)
    arr = as_arr([[1] * 9, [0] * 9, [0] * 9])
    nn = _core.Nearest(c, 0)
    nn.scan(arr)
    assert len(nn) == 0 and nn.bound is None and len(nn.result()[0]) == 0
    nn = _core.Nearest(c, 2)
    nn.scan(np.empty((0, 9), np.uint16))
    assert nn.bound is None
    nn.scan(arr)
    assert nn.result()[2].tolist() == [1, 2] and nn.bound == 0
    empty_box = np.array([[2] + [0] * 8, [1] + [0xFFFF] * 8], dtype=np.uint16)
    nn = _core.Nearest(c, 2, "l1", empty_box)
    nn.scan_sorted(arr[::-1].copy())
    assert len(nn) == 0 and len(nn.windows(arr, 2)[0]) == 0
    with pytest.raises(InterfaceError):
        _core.Nearest(c, -1)
    with pytest.raises(InterfaceError):
        _core.Nearest(c, 1, "l2")
    with pytest.raises(InterfaceError):
        _core.Nearest(c, 1, "l1", np.zeros((3, 9), np.uint16))
    nn = _core.Nearest(c, 1)
    for bad in (lambda: nn.scan(arr, 0, 4), lambda: nn.scan(arr, 2, 1),
                lambda: nn.scan_sorted(arr, -3, 2), lambda: nn.scan(arr.astype(np.int32)),
                lambda: nn.scan(arr, 0, -1, np.ones(2, bool)),
                lambda: nn.scan_sorted(arr, 0, -1, np.ones(3, np.uint8)),
                lambda: nn.windows(arr, 0)):
        with pytest.raises(InterfaceError):
            bad()
    assert len(nn) == 0
