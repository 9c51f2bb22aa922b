"""Benchmarks of the compiled core (vtpu._core) on 1M coordinates, each beside a baseline.

Baselines: the plain-Python reference (tests/pyref.py) and numpy. Pure-Python baselines
on all 1M rows would take minutes per round, so they time a 10k or 100k subset and the
reported time is scaled linearly to 1M (``extra_info["scale"]``, and ``_x10``/``_x100``
in the test name). For sorting-based baselines linear scaling slightly *underestimates*
the 1M cost, so the ratios are conservative.

Run:  pytest benchmarks/bench_core.py --benchmark-only --benchmark-json=core.json
Then: python benchmarks/bench_core.py core.json   (prints the medians/ratios table)
"""
import json
import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, os.pardir, "tests"))  # pyref
sys.path.insert(0, os.path.join(_HERE, os.pardir))  # vtpu, when run as a script

import pyref  # noqa: E402
from vtpu import _core  # noqa: E402

N = 1_000_000
SEED = 12345


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(SEED)
    arr = rng.integers(0, 61440, size=(N, 9), dtype=np.uint16)
    texts = _core.format_coords(arr)
    q = rng.integers(0, 61440, size=9, dtype=np.uint16)
    # A selective mixed pattern: prefix component, an interval and a suffix value.
    pat = _core.parse_pattern("[0:30000].*.*/*.[100:20000].*/*.*.[0:6000]")
    return {"arr": arr, "texts": texts, "q": q, "pat": pat,
            "rows100k": pyref.rows(arr[:100_000]), "rows10k": pyref.rows(arr[:10_000])}


def run(benchmark, fn, *, group, kind, scale=1, rounds=None):
    """Time fn; ``scale`` multiplies a subset's time up to 1M rows in the summary."""
    benchmark.group = group
    benchmark.extra_info.update({"kind": kind, "scale": scale, "rows": N // scale})
    if rounds:
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    return benchmark(fn)


# ---------------------------------------------------------------------------------------
# parse / format / pack
# ---------------------------------------------------------------------------------------

def test_parse_core(benchmark, data):
    out = run(benchmark, lambda: _core.parse_coords(data["texts"]), group="parse", kind="core")
    assert np.array_equal(out, data["arr"])


def test_parse_pyref_100k_x10(benchmark, data):
    sub = data["texts"][:100_000]
    run(benchmark, lambda: [pyref.parse_coord(s) for s in sub], group="parse",
        kind="pure Python", scale=10, rounds=3)


def test_parse_python_split_100k_x10(benchmark, data):
    # The idiomatic one-liner a prototype would use: no validation at all.
    sub = data["texts"][:100_000]

    def parse():
        return [tuple(int(x) for x in s.replace("/", ".").split(".")) for s in sub]
    run(benchmark, parse, group="parse", kind="python split", scale=10, rounds=3)


def test_format_core(benchmark, data):
    run(benchmark, lambda: _core.format_coords(data["arr"]), group="format", kind="core")


def test_format_pyref_100k_x10(benchmark, data):
    sub = data["rows100k"]
    run(benchmark, lambda: [pyref.format_coord(c) for c in sub], group="format",
        kind="pure Python", scale=10, rounds=3)


def test_pack_many_core(benchmark, data):
    run(benchmark, lambda: _core.pack_many(data["arr"]), group="pack_many", kind="core")


def test_pack_many_numpy(benchmark, data):
    run(benchmark, lambda: data["arr"].astype(">u2").tobytes(), group="pack_many", kind="numpy")


def test_pack_many_pyref_100k_x10(benchmark, data):
    sub = data["rows100k"]
    run(benchmark, lambda: pyref.pack_many(sub), group="pack_many", kind="pure Python",
        scale=10, rounds=3)


# ---------------------------------------------------------------------------------------
# Morton
# ---------------------------------------------------------------------------------------

def test_morton_core(benchmark, data):
    run(benchmark, lambda: _core.morton_encode(data["arr"]), group="morton", kind="core")


def test_morton_pyref_10k_x100(benchmark, data):
    sub = data["rows10k"]
    run(benchmark, lambda: pyref.morton_encode(sub), group="morton", kind="pure Python",
        scale=100, rounds=3)


def test_morton_numpy(benchmark, data):
    arr = data["arr"]

    def enc():
        # 144 vectorised bit steps into 9 uint16 key words.
        z = np.zeros((len(arr), 9), np.uint16)
        pos = 143
        for level in range(15, -1, -1):
            for j in range(9):
                bit = (arr[:, j] >> level) & 1
                w, b = divmod(pos, 16)
                z[:, 8 - w] |= (bit << b).astype(np.uint16)
                pos -= 1
        return z
    out = run(benchmark, enc, group="morton", kind="numpy", rounds=3)
    assert np.array_equal(out, _core.morton_encode(arr))


# ---------------------------------------------------------------------------------------
# match
# ---------------------------------------------------------------------------------------

def test_match_core(benchmark, data):
    run(benchmark, lambda: _core.match(data["arr"], data["pat"]), group="match", kind="core")


def test_match_numpy(benchmark, data):
    arr, p = data["arr"], data["pat"]
    out = run(benchmark, lambda: ((arr >= p[0]) & (arr <= p[1])).all(axis=1), group="match",
              kind="numpy")
    assert np.array_equal(out, _core.match(arr, p))


def test_match_pyref_100k_x10(benchmark, data):
    sub = data["rows100k"]
    p = (pyref.row(data["pat"][0]), pyref.row(data["pat"][1]))
    run(benchmark, lambda: [pyref.in_box(c, p) for c in sub], group="match",
        kind="pure Python", scale=10, rounds=3)


# ---------------------------------------------------------------------------------------
# L1 top-10
# ---------------------------------------------------------------------------------------

def test_topk_l1_core(benchmark, data):
    arr, q = data["arr"], data["q"]
    idx, dist = run(benchmark, lambda: _core.topk(q, arr, 10), group="l1 top-10", kind="core")
    full = _core.l1(q, arr)
    assert dist.tolist() == np.sort(full)[:10].tolist()


def test_topk_l1_numpy_distance_argpartition(benchmark, data):
    arr, q = data["arr"], data["q"]

    def np_topk():
        d = np.abs(arr.astype(np.int32) - q.astype(np.int32)).sum(axis=1)
        part = np.argpartition(d, 10)[:10]
        return part[np.argsort(d[part], kind="stable")]
    run(benchmark, np_topk, group="l1 top-10", kind="numpy distance + argpartition")


def test_topk_l1_numpy_argpartition_only(benchmark, data):
    d = _core.l1(data["q"], data["arr"]).astype(np.int64)
    run(benchmark, lambda: np.argpartition(d, 10)[:10], group="l1 top-10",
        kind="numpy argpartition only (distances precomputed)")


def test_topk_l1_pyref_100k_x10(benchmark, data):
    sub = data["rows100k"]
    q = data["q"]
    run(benchmark, lambda: pyref.topk(q, sub, 10), group="l1 top-10",
        kind="pure Python (sort all)", scale=10, rounds=3)


# ---------------------------------------------------------------------------------------
# hashing / routing
# ---------------------------------------------------------------------------------------

def test_route_core(benchmark, data):
    run(benchmark, lambda: _core.route(data["arr"], 16), group="route", kind="core")


def test_route_python_xxhash_100k_x10(benchmark, data):
    # Python loop over the xxhash C package plus a Python jump hash.
    sub = data["rows100k"]
    run(benchmark, lambda: pyref.route(sub, 16), group="route",
        kind="python + xxhash pkg", scale=10, rounds=3)


def test_prefix_hashes_core(benchmark, data):
    run(benchmark, lambda: _core.prefix_hashes(data["arr"], 3), group="xxh64 (1M prefixes)",
        kind="core")


def test_prefix_hashes_xxhash_pkg_100k_x10(benchmark, data):
    import xxhash

    blob = _core.pack_many(data["arr"][:100_000])
    h = xxhash.xxh64_intdigest

    def hashes():
        return [h(blob[i:i + 6]) for i in range(0, len(blob), 18)]
    run(benchmark, hashes, group="xxh64 (1M prefixes)", kind="python + xxhash pkg",
        scale=10, rounds=3)


# ---------------------------------------------------------------------------------------
# Summary: python benchmarks/bench_core.py results.json
# ---------------------------------------------------------------------------------------

def summarize(path):
    with open(path) as f:
        doc = json.load(f)
    groups = {}
    for b in doc["benchmarks"]:
        info = b.get("extra_info", {})
        med = b["stats"]["median"] * info.get("scale", 1)
        groups.setdefault(b["group"], []).append((info.get("kind", b["name"]), med,
                                                  info.get("scale", 1)))
    lines = ["| operation (1M coordinates) | implementation | median | core is faster by |",
             "|---|---|---|---|"]
    for g, items in groups.items():
        core = next((m for k, m, _s in items if k == "core"), None)
        for kind, med, scale in sorted(items, key=lambda t: t[1]):
            note = f" (timed on {1_000_000 // scale:,} rows, x{scale})" if scale > 1 else ""
            ratio = "" if kind == "core" or core is None else f"{med / core:.1f}x"
            lines.append(f"| {g} | {kind}{note} | {fmt(med)} | {ratio} |")
    return "\n".join(lines)


def fmt(sec):
    if sec >= 1:
        return f"{sec:.2f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec * 1e6:.1f} µs"


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
