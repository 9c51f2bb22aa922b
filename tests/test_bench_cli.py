"""`vtpu bench` harness: a real (short) run against a loopback server, plus the pieces
that need no server (data generators, pattern counts, report, echo peer). No timing
assertions: only that the harness runs and reports what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vtpu import bench
from vtpu.bench import common, crange, memory, peers, report, sparse, startup


@pytest.mark.integration
def test_bench_cget_exports_rows(tmp_path):
    pytest.importorskip("vtpu.server")
    out = tmp_path / "results.json"
    # Small sizes: the point is the harness and its report, not the numbers.
    rc = bench.main(["--test", "cget", "--trials", "50", "--scrolls", "20000", "--clients", "4",
                     "--export", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0, doc.get("errors")
    assert doc["format"] == "vtpu-bench/1"
    assert doc["config"]["tests"] == ["cget"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    assert "numpy" in doc["machine"] and "peers" in doc["machine"]
    rows = [r for r in doc["rows"] if r["test"] == "cget"]
    measures = {r["measure"] for r in rows}
    assert "p50 latency" in measures
    assert any(m.startswith("batched") for m in measures)
    p50 = next(r for r in rows if r["measure"] == "p50 latency")
    assert p50["vtpu"] > 0 and p50["unit"] == "us"
    assert p50["projection"] == "50-100 us"
    single = doc["tests"]["cget"]["single"]
    assert single["stats_us"]["vtpu"]["n"] == 50
    # every peer either ran or was reported as skipped with a reason
    for name in ("echo", "redis", "memcached"):
        ran = name in single["stats_us"]
        said = any(name in s for s in doc["skipped"])
        assert ran or said, name
    assert not doc["errors"]


@pytest.fixture(scope="module")
def dataset():
    """The CRANGE benchmark's 1M coordinates, made once for the module (read-only: the
    tests share it)."""
    arr = crange.dataset_coords(1_000_000)
    arr.setflags(write=False)
    return arr


def test_crange_patterns_match_their_designed_counts(dataset):
    arr = dataset
    assert arr.shape == (1_000_000, 9) and arr.dtype == np.uint16
    # Distinct first six components: one 12-byte value per row (np.unique(axis=0) is 5x
    # slower for the same answer).
    assert len(np.unique(np.ascontiguousarray(arr[:, :6]).view("V12"))) == 1_000_000
    for shape, pats in crange.CRANGE_SHAPES.items():
        for want, pat in pats.items():
            assert len(crange.numpy_scan(arr, pat)) == want, (shape, pat)


def test_prototype_scan_agrees_with_numpy(dataset):
    arr = dataset[:20_000]
    strings = common.fmt_coords(arr)
    for pat in ("3.*.*/*.*.*/*.*.*", "*.*.4/1.[0:5].*/1.*.*", "[2:4].1.*/*.*.9/1.1.*"):
        assert crange.prototype_scan(strings, pat) == len(crange.numpy_scan(arr, pat))


def test_window_attention_reference_matches_dense_with_full_window():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((32, 8)) for _ in range(3))
    np.testing.assert_allclose(sparse.numpy_window_attention(q, k, v, 32),
                               sparse.numpy_dense_attention(q, k, v), atol=1e-12)
    pats = sparse.window_patterns(32, 4)
    assert pats.shape == (32, 2, 9)
    assert pats[0, 0, 8] == 0 and pats[0, 1, 8] == 4 and pats[31, 0, 8] == 27


def test_report_table_json_and_ratios():
    rep = report.Report()
    rep.row("cget", "p50 latency", 20.0, "us", peer="echo floor", peer_value=16.0,
            ratio_kind="of_floor", target="<=1.3x floor", target_ok=True)
    r = rep.row("cget", "p50 vs Redis GET", 20.0, "us", peer="redis", peer_value=40.0)
    assert r["ratio"] == pytest.approx(2.0)
    t = rep.row("cget", "batched", 1e6, "ops/s", better="higher", peer="redis",
                peer_value=5e5)
    assert t["ratio"] == pytest.approx(2.0)
    text = rep.table()
    assert "1.25x floor" in text and "2.0x better" in text
    doc = report.jsonable(rep.to_json({"cores": 2}, {}, 0.0))
    json.dumps(doc)
    assert len(doc["rows"]) == 3


@pytest.mark.integration
def test_echo_peer_round_trip_and_stop():
    p = peers.start_echo(lambda m: None)
    if p is None:
        pytest.skip("echo server could not start")
    try:
        c = peers.EchoClient(p.host, p.port)
        assert c.call(b"hello") == 9
        assert c.send_many([b"a", b"bc"] * 3) == 3 * (5 + 6)
        c.close()
    finally:
        p.stop()
    assert not p.alive()


def test_missing_peer_is_skipped_with_a_line(monkeypatch):
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    lines = []
    assert peers.start_redis(lines.append) is None
    assert peers.start_memcached(lines.append) is None
    assert peers.start_etcd(lines.append) is None
    assert len(lines) == 3 and all(line.startswith("skip ") for line in lines)


def test_unknown_test_is_a_usage_error():
    assert bench.main(["--test", "nope"]) == 2


@pytest.mark.integration
def test_bench_memory_and_startup_at_tiny_sizes(tmp_path):
    pytest.importorskip("vtpu.server")
    out = tmp_path / "mem.json"
    rc = bench.main(["--test", "memory,startup", "--scrolls", "3000", "--peers", "redis",
                     "--quiet", "--export", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0, doc.get("errors")
    assert doc["config"]["sizes"]["n_scrolls"] == 3000 and doc["config"]["big"] is False
    mem = doc["tests"]["memory"]
    for name, raw in (("text", memory.TEXT_BYTES), ("vector", 4 * memory.VECTOR_DIM)):
        v = mem[name]["vtpu"]
        assert v["n"] == 3000 and v["gc_ok"] is True
        assert v["rss_after_gc"] > v["rss_before"] > 0
        assert mem[name]["value_bytes"] == raw
        if mem[name]["redis"] is None:
            assert any("redis" in s for s in doc["skipped"])
        else:
            assert mem[name]["redis"]["n"] == 3000 and mem[name]["redis"]["rss_after"] > 0
    rows = {r["measure"]: r for r in doc["rows"] if r["test"] == "memory"}
    text = rows["3,000 x 20-byte text: server RSS/scroll"]
    assert text["unit"] == "B" and text["vtpu"] == pytest.approx(mem["text"]["vtpu"]["per_item"])
    assert "3,000 x float32 x64 vectors: server RSS/scroll" in rows
    st = doc["tests"]["startup"]["3000"]
    assert st["n"] == 3000 and len(st["opens"]) == startup.OPENS
    assert all(o["scrolls"] == 3000 and o["content"] == "scroll text 00000000"
               for o in st["opens"])
    srow = next(r for r in doc["rows"] if r["test"] == "startup")
    assert srow["vtpu"] == pytest.approx(st["start_s"]) and srow["target"] is None


def test_read_patterns_match_their_designed_counts(dataset):
    arr = dataset
    contents = np.arange(len(arr))
    for shape, pats in crange.READ_SHAPES.items():
        for want, pat in pats.items():
            coords, got = crange.numpy_read(arr, contents, pat)
            idx = crange.numpy_scan(arr, pat)
            assert len(coords) == want == len(idx), (shape, pat)
            assert sorted(got.tolist()) == idx.tolist()
            assert sorted(coords) == sorted(common.fmt_coords(arr[idx]))


def test_read_columns_reads_what_the_store_holds(dataset):
    from vtpu import connect

    arr = dataset[:300]
    m = connect("mem://")
    m.cput_many(arr, list(range(300)))
    res = m.crange("*.*.*/*.*.*/1.1.1")
    path, coords, contents = common.read_columns(res)
    # Today's results are lists of Scrolls; a columnar result is read through its columns.
    assert path == ("columns" if hasattr(res, "coordinates") else "per-scroll")
    assert sorted(coords) == sorted(common.fmt_coords(arr))
    assert sorted(int(x) for x in contents) == list(range(300))
    assert dict(zip(coords, (int(x) for x in contents)))[common.fmt_coord(arr[7])] == 7
    assert common.read_each(res) == 300
    m.close()

    class Columns(list):
        coordinates = ["a", "b"]
        contents = [7, 8]

    assert common.read_columns(Columns()) == ("columns", ["a", "b"], [7, 8])


def test_faiss_peer_agrees_with_numpy_l1(dataset):
    pytest.importorskip("faiss")
    from vtpu.bench import nearest

    arr = dataset[:5000]
    rep = report.Report()
    search = nearest.faiss_index(arr, rep)
    q = np.array([3, 1, 4, 1, 5, 9, 1, 1, 1], dtype=np.uint16)
    d = np.abs(arr.astype(np.int64) - q.astype(np.int64)).sum(axis=1)
    assert np.sort(search(q)).astype(np.int64).tolist() == np.sort(d)[:nearest.K].tolist()


def test_rss_of_this_process_is_read_from_proc():
    import os

    rss = common.rss_bytes(os.getpid())
    if rss is None:
        pytest.skip("no /proc on this system")
    assert rss > 1 << 20
    assert common.rss_bytes(2 ** 22 + 12345) is None


def test_startup_coords_are_distinct_beyond_the_data_set():
    arr = startup.startup_coords(1_200_000)
    assert arr.shape == (1_200_000, 9) and (arr[:, 7:] == 1).all()
    index = arr[:, :7].astype(np.int64) @ (10 ** np.arange(6, -1, -1))
    assert np.array_equal(np.sort(index), np.arange(1_200_000))


@pytest.mark.parametrize("n", range(1, 8))
def test_round_orders_let_each_call_follow_every_other_equally_often(n):
    orders = common.round_orders(n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    follows = {}
    for o in orders:
        for a, b in zip(o, o[1:]):
            follows[a, b] = follows.get((a, b), 0) + 1
    pairs = {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(follows) == pairs
    assert len(set(follows.values())) <= 1   # the same count for every pair


def test_median_times_runs_each_call_once_a_round_after_every_other():
    seen = []
    fns = {k: (lambda k=k: seen.append(k)) for k in "abcd"}
    out = common.median_times(fns, reps=8)
    assert set(out) == set("abcd") and all(v >= 0 for v in out.values())
    timed = seen[4:]                      # after one untimed call each
    assert len(timed) == 32
    rounds = [timed[i:i + 4] for i in range(0, 32, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    after = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert len(after) == 12               # every call has followed every other
