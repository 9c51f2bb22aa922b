"""pytest-benchmark suite for vtpu's network operations, with peers in the same run.

Run:  pytest benchmarks/bench_network.py --benchmark-group-by=group
      (benchmarks/install_peers.sh installs Redis, memcached and the Python clients)

Each group holds vtpu and its peers for one kind of operation, so pytest-benchmark's
table shows them side by side: single GET/PUT round trips (vtpu, the bare TCP echo floor,
Redis via redis-py + hiredis, memcached via pymemcache), 10k batched (CGET_MANY vs MGET),
and 1000 pipelined requests (vtpu pipeline vs a redis-py pipeline vs echo). A peer that
is missing is skipped, never failed. The client and every server are pinned to one CPU
for the whole module (DESIGN §8), and everything runs on 127.0.0.1.
"""

from __future__ import annotations

import numpy as np
import pytest

from vtpu.bench import peers as P
from vtpu.bench.common import VALUE, vtpu_connect
from vtpu.bench.harness import LocalServer
from vtpu.bench.kv import keys_for_peers, kv_coords, vtpu_pipeline

pytest.importorskip("pytest_benchmark")

N_KEYS = 1000
N_BATCH = 10_000
N_PIPE = 1000


@pytest.fixture(scope="module")
def started():
    """Start the vtpu server and every peer found; pin them and this process to one CPU."""
    procs = {}
    skipped = []
    try:
        srv = LocalServer().start()
    except Exception as exc:  # the server is the subject: without it nothing runs
        pytest.skip(f"vtpu server did not start: {exc}")
    procs["vtpu"] = srv
    for name in ("echo", "redis", "memcached"):
        procs[name] = P.start_peer(name, skipped.append)
    pids = [p.pid for p in procs.values() if p is not None]
    pin = P.Pinned(None, pids)
    pin.__enter__()
    try:
        yield procs, skipped
    finally:
        pin.__exit__(None, None, None)
        for p in procs.values():
            if p is not None:
                p.stop()


@pytest.fixture(scope="module")
def vclient(started):
    procs, _ = started
    c = vtpu_connect(procs["vtpu"].url)
    arr = kv_coords(N_BATCH)
    c.cput_many(arr, [VALUE] * N_BATCH)
    yield c
    c.close()


@pytest.fixture(scope="module")
def echo(started):
    procs, skipped = started
    if procs.get("echo") is None:
        pytest.skip("; ".join(s for s in skipped if "echo" in s) or "echo server missing")
    c = P.EchoClient(procs["echo"].host, procs["echo"].port)
    yield c
    c.close()


@pytest.fixture(scope="module")
def rclient(started):
    procs, skipped = started
    if procs.get("redis") is None:
        pytest.skip("; ".join(s for s in skipped if "redis" in s) or "redis missing")
    redis = pytest.importorskip("redis")
    r = redis.Redis(host=procs["redis"].host, port=procs["redis"].port)
    rk, _ = keys_for_peers(kv_coords(N_BATCH))
    r.mset(dict(zip(rk, [VALUE] * N_BATCH)))
    yield r, rk
    r.close()


@pytest.fixture(scope="module")
def mclient(started):
    procs, skipped = started
    if procs.get("memcached") is None:
        pytest.skip("; ".join(s for s in skipped if "memcached" in s) or "memcached missing")
    base = pytest.importorskip("pymemcache.client.base")
    m = base.Client((procs["memcached"].host, procs["memcached"].port), no_delay=True)
    _, mk = keys_for_peers(kv_coords(N_KEYS))
    m.set_many(dict(zip(mk, [VALUE] * N_KEYS)), noreply=False)
    yield m, mk
    m.close()


def _cycle(n):
    state = {"i": 0}

    def nxt():
        i = state["i"]
        state["i"] = (i + 1) % n
        return i

    return nxt


ROWS = kv_coords(N_KEYS)
ROW_LIST = [ROWS[i] for i in range(N_KEYS)]


# ----------------------------------------------------------------- single round trips


@pytest.mark.benchmark(group="single-get")
def test_vtpu_cget(benchmark, vclient):
    nxt = _cycle(N_KEYS)
    s = benchmark(lambda: vclient.cget(ROW_LIST[nxt()]))
    assert s is not None


@pytest.mark.benchmark(group="single-get")
def test_echo_floor_get(benchmark, echo):
    payload = b"e" * 32
    benchmark(lambda: echo.call(payload))


@pytest.mark.benchmark(group="single-get")
def test_redis_get(benchmark, rclient):
    r, rk = rclient
    nxt = _cycle(N_KEYS)
    assert benchmark(lambda: r.get(rk[nxt()])) == VALUE


@pytest.mark.benchmark(group="single-get")
def test_memcached_get(benchmark, mclient):
    m, mk = mclient
    nxt = _cycle(N_KEYS)
    assert benchmark(lambda: m.get(mk[nxt()])) == VALUE


@pytest.mark.benchmark(group="single-put")
def test_vtpu_cput(benchmark, vclient):
    nxt = _cycle(N_KEYS)
    assert benchmark(lambda: vclient.cput(ROW_LIST[nxt()], VALUE)) >= 1


@pytest.mark.benchmark(group="single-put")
def test_echo_floor_put(benchmark, echo):
    payload = b"e" * 64
    benchmark(lambda: echo.call(payload))


@pytest.mark.benchmark(group="single-put")
def test_redis_set(benchmark, rclient):
    r, rk = rclient
    nxt = _cycle(N_KEYS)
    benchmark(lambda: r.set(rk[nxt()], VALUE))


@pytest.mark.benchmark(group="single-put")
def test_memcached_set(benchmark, mclient):
    m, mk = mclient
    nxt = _cycle(N_KEYS)
    benchmark(lambda: m.set(mk[nxt()], VALUE, noreply=False))


# ----------------------------------------------------------------- batched 10k

BATCH = kv_coords(N_BATCH)
BATCH_VALUES = [VALUE] * N_BATCH


@pytest.mark.benchmark(group="batched-get-10k")
def test_vtpu_cget_many_10k(benchmark, vclient):
    out = benchmark(lambda: vclient.cget_many(BATCH))
    assert len(out) == N_BATCH


@pytest.mark.benchmark(group="batched-get-10k")
def test_redis_mget_10k(benchmark, rclient):
    r, rk = rclient
    out = benchmark(lambda: r.mget(rk))
    assert len(out) == N_BATCH


@pytest.mark.benchmark(group="batched-put-10k")
def test_vtpu_cput_many_10k(benchmark, vclient):
    out = benchmark(lambda: vclient.cput_many(BATCH, BATCH_VALUES))
    assert len(out) == N_BATCH


@pytest.mark.benchmark(group="batched-put-10k")
def test_redis_mset_10k(benchmark, rclient):
    r, rk = rclient
    mapping = dict(zip(rk, BATCH_VALUES))
    benchmark(lambda: r.mset(mapping))


# ----------------------------------------------------------------- pipelined 1000

PIPE_ROWS = [BATCH[i] for i in range(N_PIPE)]


@pytest.mark.benchmark(group="pipelined-get-1000")
def test_vtpu_pipeline_1000(benchmark, vclient):
    out = benchmark(lambda: vtpu_pipeline(vclient, "cget", PIPE_ROWS))
    assert len(out) == N_PIPE


@pytest.mark.benchmark(group="pipelined-get-1000")
def test_redis_pipeline_1000(benchmark, rclient):
    r, rk = rclient
    keys = rk[:N_PIPE]

    def run():
        p = r.pipeline(transaction=False)
        for k in keys:
            p.get(k)
        return p.execute()

    assert len(benchmark(run)) == N_PIPE


@pytest.mark.benchmark(group="pipelined-get-1000")
def test_echo_pipeline_1000(benchmark, echo):
    payloads = [b"e" * 32] * N_PIPE
    benchmark(lambda: echo.send_many(payloads))


def test_rows_are_distinct():
    """The generated key set has no duplicates (a sanity check, not a benchmark)."""
    assert len(np.unique(BATCH, axis=0)) == N_BATCH
