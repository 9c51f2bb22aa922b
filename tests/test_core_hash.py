"""xxh64, jump hash, prefix hashes, routing and MoE assignment against pyref / xxhash."""
import os
import sys

import numpy as np
import pytest
import xxhash
from hypothesis import example, given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import pyref  # noqa: E402
from pyref import rows  # noqa: E402
from vtpu import _core  # noqa: E402
from vtpu.errors import InterfaceError  # noqa: E402

seeds = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
coord = st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9)
coord_arrays = st.lists(coord, max_size=30).map(lambda v: np.array(v, np.uint16).reshape(-1, 9))


@given(st.binary(max_size=200), seeds)
@example(b"", 0)
@example(b"a" * 31, 1)
@example(b"a" * 32, 2)
@example(b"a" * 33, 3)
@example(bytes(range(256)) * 4, 2**64 - 1)
def test_xxh64_equals_xxhash_package(data, seed):
    exp = xxhash.xxh64_intdigest(data, seed)
    assert _core.xxh64(data, seed) == exp
    assert _core.xxh64(bytearray(data), seed) == exp
    assert _core.xxh64(memoryview(data), seed) == exp
    assert _core.xxh64(np.frombuffer(data, np.uint8), seed) == exp


def test_xxh64_every_length_up_to_100():
    rng = np.random.default_rng(3)
    blob = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    for n in range(101):
        assert _core.xxh64(blob[:n]) == xxhash.xxh64_intdigest(blob[:n])
        assert _core.xxh64(blob[:n], n) == xxhash.xxh64_intdigest(blob[:n], n)


def test_xxh64_rejects_non_bytes():
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(InterfaceError):
            _core.xxh64(bad)


@given(st.integers(0, 2**64 - 1), st.integers(1, 100000))
@example(0, 1)
@example(2**64 - 1, 2**31 - 1)
def test_jump_hash_matches_reference(key, n):
    b = _core.jump_hash(key, n)
    assert b == pyref.jump_hash(key, n)
    assert 0 <= b < n


@given(st.integers(0, 2**64 - 1), st.integers(1, 500))
def test_jump_hash_is_consistent(key, n):
    # Growing from n to n+1 buckets moves a key only into the new bucket.
    a, b = _core.jump_hash(key, n), _core.jump_hash(key, n + 1)
    assert b == a or b == n


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50), st.integers(1, 1000))
def test_jump_hash_many_matches_reference(keys, n):
    arr = np.array(keys, dtype=np.uint64)
    out = _core.jump_hash_many(arr, n)
    assert out.dtype == np.int32
    assert out.tolist() == pyref.jump_hash_many(keys, n)


def test_jump_hash_bad_arguments():
    for n in (0, -1):
        with pytest.raises(InterfaceError):
            _core.jump_hash(1, n)
        with pytest.raises(InterfaceError):
            _core.jump_hash_many(np.zeros(2, np.uint64), n)
    for bad in (np.zeros(2, np.int64), [1, 2], np.zeros((2, 2), np.uint64)):
        with pytest.raises(InterfaceError):
            _core.jump_hash_many(bad, 3)


@given(coord_arrays, st.integers(1, 9), seeds)
def test_prefix_hashes_match_reference(arr, level, seed):
    h = _core.prefix_hashes(arr, level, seed)
    assert h.dtype == np.uint64
    assert [int(x) for x in h] == pyref.prefix_hashes(rows(arr), level, seed)


@given(coord_arrays, st.integers(1, 2000), st.integers(1, 9))
def test_route_matches_reference(arr, n, level):
    r = _core.route(arr, n, level)
    assert r.dtype == np.int32 and r.shape == (len(arr),)
    assert r.tolist() == pyref.route(rows(arr), n, level)


# Cross-check values, computed once with the xxhash package and the Python jump hash of
# pyref (route = jump_hash(xxh64(first 6 packed bytes), n)); they pin the wire-visible
# routing so that every client, in any language, agrees on placement.
KNOWN_ROUTES = {
    "1.1.1/1.1.1/1.1.1": [0, 0, 3, 9, 106],
    "3.8.512/0.0.0/1.1.1": [0, 0, 0, 13, 505],
    "0.0.0/0.0.0/0.0.0": [1, 1, 6, 11, 94],
    "61439.61439.61439/61439.61439.61439/61439.61439.61439": [0, 2, 6, 6, 35],
    "1.2.3/4.5.6/7.8.9": [0, 2, 3, 14, 851],
}


@pytest.mark.parametrize("text", sorted(KNOWN_ROUTES))
def test_route_known_values(text):
    arr = _core.parse_coords([text])
    got = [int(_core.route(arr, n)[0]) for n in (2, 3, 7, 16, 1000)]
    assert got == KNOWN_ROUTES[text]
    assert got == [pyref.route(rows(arr), n)[0] for n in (2, 3, 7, 16, 1000)]


def test_route_keeps_subtrees_together():
    rng = np.random.default_rng(11)
    arr = rng.integers(0, 61440, size=(1000, 9), dtype=np.uint16)
    arr[:, :3] = (7, 8, 9)
    assert len(set(_core.route(arr, 64).tolist())) == 1


def test_route_bad_arguments():
    arr = np.zeros((2, 9), np.uint16)
    with pytest.raises(InterfaceError):
        _core.route(arr, 0)
    for level in (0, 10):
        with pytest.raises(InterfaceError):
            _core.route(arr, 4, level)
    assert _core.route(np.empty((0, 9), np.uint16), 4).shape == (0,)


@given(coord_arrays, st.integers(1, 64), st.data())
def test_moe_matches_reference(arr, n, data):
    top_k = data.draw(st.integers(1, min(n, 8)))
    out = _core.moe(arr, n, top_k)
    assert out.dtype == np.int32
    exp = pyref.moe(rows(arr), n, top_k)
    if top_k == 1:
        assert out.shape == (len(arr),)
        assert out.tolist() == exp
    else:
        assert out.shape == (len(arr), top_k)
        assert out.tolist() == exp
        for r in out.tolist():
            assert len(set(r)) == top_k and all(0 <= e < n for e in r)


def test_moe_all_experts_and_fill_in():
    arr = np.arange(90, dtype=np.uint16).reshape(10, 9)
    out = _core.moe(arr, 5, 5)
    assert out.tolist() == pyref.moe(rows(arr), 5, 5)
    assert all(sorted(r) == [0, 1, 2, 3, 4] for r in out.tolist())


def test_moe_balanced_on_uniform_tokens():
    # 200k uniformly drawn tokens over 16 experts: a chi-square statistic with 15
    # degrees of freedom stays far below 60 (p < 1e-6) for an unbiased assignment. The
    # seed is fixed, so the outcome is deterministic.
    rng = np.random.default_rng(20240601)
    arr = rng.integers(0, 61440, size=(200_000, 9), dtype=np.uint16)
    for top_k in (1, 2):
        out = _core.moe(arr, 16, top_k).reshape(len(arr), top_k)
        counts = np.bincount(out.ravel(), minlength=16)
        expected = out.size / 16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 60, (top_k, counts.tolist())
    # sequential token positions (a context window) are balanced too
    seq = np.zeros((100_000, 9), np.uint16)
    seq[:, 7] = np.arange(100_000) // 61440
    seq[:, 8] = np.arange(100_000) % 61440
    counts = np.bincount(_core.moe(seq, 16), minlength=16)
    chi2 = float(((counts - 100_000 / 16) ** 2 / (100_000 / 16)).sum())
    assert chi2 < 60, counts.tolist()


@given(st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9),
       st.lists(st.integers(0, 0xFFFF), min_size=9, max_size=9), st.integers(1, 40), st.data())
def test_moe_pattern_matches_reference(lo, hi, n, data):
    top_k = data.draw(st.integers(1, min(n, 4)))
    p = np.array([lo, hi], np.uint16)
    got = _core.moe_pattern(p, n, top_k)
    assert got == pyref.moe_pattern(p, n, top_k)
    # a concrete pattern routes exactly like its coordinate
    cp = np.array([lo, lo], np.uint16)
    single = _core.moe(np.array([lo], np.uint16), n, top_k)
    assert _core.moe_pattern(cp, n, top_k) == (int(single[0]) if top_k == 1 else single[0].tolist())


def test_moe_bad_arguments():
    arr = np.zeros((2, 9), np.uint16)
    with pytest.raises(InterfaceError):
        _core.moe(arr, 0)
    with pytest.raises(InterfaceError):
        _core.moe(arr, 4, 5)
    with pytest.raises(InterfaceError):
        _core.moe(arr, 4, 0)
    p = np.zeros((2, 9), np.uint16)
    with pytest.raises(InterfaceError):
        _core.moe_pattern(p, 0)
    with pytest.raises(InterfaceError):
        _core.moe_pattern(p, 3, 4)
    assert _core.moe(np.empty((0, 9), np.uint16), 4).shape == (0,)
    assert _core.moe(np.empty((0, 9), np.uint16), 4, 2).shape == (0, 2)
