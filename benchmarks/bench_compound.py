"""The compound instructions, in-process, beside numpy / Python baselines in one run.

* sparse: batched windowed CATTEND (window ±128, d = 64) over stored Q/K/V at sequence
  lengths 2048 and 4096, beside dense numpy attention (float32) on the same data;
* CMOE of 1M tokens beside a Python loop over the xxhash package (100k, scaled);
* CKG 3-hop traversals on a random graph of 20k nodes.

Run: ``pytest benchmarks/bench_compound.py --benchmark-only``.
"""
import numpy as np
import pytest
import xxhash

import vtpu
from vtpu import _core
from vtpu.bench.sparse import (
    numpy_dense_attention,
    numpy_window_attention,
    sparse_coords,
    vtpu_window_attention,
)

WINDOW, DIM = 128, 64


@pytest.fixture(scope="module", params=[2048, 4096])
def qkv(request):
    seq = request.param
    rng = np.random.default_rng(13)
    Q, K, V = (rng.standard_normal((seq, DIM)).astype(np.float32) for _ in range(3))
    c = vtpu.connect("mem://")
    for kind, mat in ((1, Q), (2, K), (3, V)):
        c.cput_many(sparse_coords(seq, kind), mat)
    return seq, c, Q, K, V


def test_sparse_cattend_many(benchmark, qkv):
    seq, c, Q, K, V = qkv
    out = benchmark(vtpu_window_attention, c, seq, WINDOW)
    err = float(np.abs(out.astype(np.float64) - numpy_window_attention(Q, K, V, WINDOW)).max())
    assert err <= 1e-5
    benchmark.extra_info.update({"seq": seq, "max_abs_err": err})


def test_sparse_dense_numpy(benchmark, qkv):
    seq, _, Q, K, V = qkv
    benchmark(numpy_dense_attention, Q, K, V)
    benchmark.extra_info["seq"] = seq


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(0, 61440, (1_000_000, 9)).astype(np.uint16)


def test_cmoe_batched_1m(benchmark, tokens):
    c = vtpu.connect("mem://")
    experts = benchmark(c.cmoe, tokens, 64)
    assert experts.shape == (len(tokens),)


def _python_moe(rows, n):
    out = []
    for r in rows:
        key = xxhash.xxh64_intdigest(b"".join(int(x).to_bytes(2, "big") for x in r))
        b, j = -1, 0
        while j < n:
            b = j
            key = (key * 2862933555777941757 + 1) & (2 ** 64 - 1)
            j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
        out.append(b)
    return out


def test_cmoe_python_loop_100k(benchmark, tokens):
    sub = tokens[:100_000].tolist()
    res = benchmark.pedantic(_python_moe, (sub, 64), rounds=1, iterations=1)
    assert res == vtpu.connect("mem://").cmoe(tokens[:100_000], 64).tolist()
    benchmark.extra_info["scale_to_1m"] = 10


@pytest.fixture(scope="module")
def graph():
    n, rels = 20_000, 2
    rng = np.random.default_rng(3)
    c = vtpu.connect("mem://")
    nodes = np.array([[103, i // 1000, i % 1000, 0, 0, 0, 2, 1, 1] for i in range(n)],
                     dtype=np.uint16)
    c.cput_many(nodes, [f"node {i}" for i in range(n)])
    text = _core.format_coords(nodes)
    for r in range(rels):
        edges = nodes.copy()
        edges[:, 3] = r + 1
        targets = rng.integers(0, n, (n, 2))
        c.cput_many(edges, [[text[a], text[b]] for a, b in targets])
    return c, text, [f"+0.0.0/={r + 1}.+0.+0/+0.+0.+0" for r in range(rels)]


def test_ckg_3_hops(benchmark, graph):
    c, text, deltas = graph
    res = benchmark(c.ckg, text[123], deltas, 3)
    benchmark.extra_info["frontier"] = len(res)
