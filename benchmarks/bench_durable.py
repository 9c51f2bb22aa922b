"""Durability benchmarks (pytest-benchmark).

Run::

    pytest benchmarks/bench_durable.py --benchmark-only [--benchmark-json out.json]

Measures, in one run:

* ``Storage.put`` + ``Storage.commit`` latency of one small scroll for each fsync policy
  (``always`` = fsync per commit, ``everysec``, ``never``);
* ``Storage.load`` of 1M rows (what an engine restart reads before rebuilding its
  indexes), in seconds; ``VTPU_BENCH_LOAD_ROWS`` changes the row count;
* a whole ``Engine`` restart on 1M rows (load + decode + index rebuild), when the engine
  is importable;
* an etcd put through its v3 HTTP/JSON gateway (a Raft write, fsynced) on one
  keep-alive connection, when the ``etcd`` binary is installed (skipped otherwise);

and prints the ratio etcd put / Storage put+commit(always) at the end (also written to
``VTPU_BENCH_DURABLE_OUT`` if set). Timings go to stdout; no assertions on them.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from vtpu.storage import Storage

LOAD_ROWS = int(os.environ.get("VTPU_BENCH_LOAD_ROWS", "1000000"))
RESULTS: dict[str, float] = {}  # name -> median seconds, filled as the benchmarks run


def _key(i: int) -> bytes:
    return struct.pack(">9H", 1, 2, 3, 4, 5, (i >> 32) & 0xFFFF, (i >> 16) & 0xFFFF, i & 0xFFFF, 1)


def _record(name: str, benchmark) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[name] = stats.stats.median


@pytest.mark.parametrize("fsync", ["always", "everysec", "never"])
def test_put_commit(benchmark, tmp_path, fsync):
    """One 100-byte scroll: queue it and commit (the server's per-batch durable write)."""
    blob = b"x" * 100
    with Storage(tmp_path, fsync=fsync) as s:
        counter = iter(range(1 << 40))

        def op():
            i = next(counter)
            now = time.time()
            s.put(_key(i), blob, 1, now, now)
            s.commit()

        benchmark.pedantic(op, rounds=2000 if fsync != "always" else 500, warmup_rounds=20)
    _record(f"put_commit_{fsync}", benchmark)


def test_put_commit_batch_of_100_always(benchmark, tmp_path):
    """Group commit: 100 scrolls queued, one fsync (per-write cost = result / 100)."""
    blob = b"x" * 100
    with Storage(tmp_path, fsync="always") as s:
        counter = iter(range(1 << 40))

        def op():
            now = time.time()
            s.put_many([(_key(next(counter)), blob, 1, now, now) for _ in range(100)])
            s.commit()

        benchmark.pedantic(op, rounds=200, warmup_rounds=5)
    _record("put_commit_batch100_always", benchmark)


@pytest.fixture(scope="module")
def loaded_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    rng = os.urandom
    t0 = time.perf_counter()
    with Storage(d, fsync="never") as s:
        step = 100_000
        for start in range(0, LOAD_ROWS, step):
            now = time.time()
            s.put_many([(_key(i * 7919 % (1 << 40)), rng(64), 1, now, now)
                        for i in range(start, min(start + step, LOAD_ROWS))])
            s.commit()
        s.checkpoint()
    print(f"\nbulk write of {LOAD_ROWS} rows (fsync=never, 100k per commit): "
          f"{time.perf_counter() - t0:.2f} s")
    return d


def test_load_1m(benchmark, loaded_dir):
    """Open the store and read every row back (engine restart before index rebuild)."""

    def op():
        with Storage(loaded_dir) as s:
            names, rows = s.load()
            n = 0
            for batch in s.iter_batches():
                n += len(batch)
        assert n == LOAD_ROWS

    benchmark.pedantic(op, rounds=3, iterations=1)
    _record("load_rows", benchmark)


def test_engine_restart_1m(benchmark, tmp_path_factory):
    """Engine start-up on a 1M-row store: Storage.load + content decoding + index rebuild."""
    engine_mod = pytest.importorskip("vtpu.engine")
    from vtpu.protocol import pack_value

    d = tmp_path_factory.mktemp("engine_load")
    blob = pack_value("scroll text of moderate length")
    with Storage(d, fsync="never") as s:
        step = 100_000
        for start in range(0, LOAD_ROWS, step):
            now = time.time()
            s.put_many([(struct.pack(">9H", 1, 1, 1, 1, 1 + i // 1000000, 1 + (i // 10000) % 100,
                                     1 + (i // 100) % 100, 1 + i % 100, 1), blob, 1, now, now)
                        for i in range(start, min(start + step, LOAD_ROWS))])
            s.commit()
        s.checkpoint()

    def op():
        e = engine_mod.Engine(storage=Storage(d))
        e.close()

    benchmark.pedantic(op, rounds=1, iterations=1)
    _record("engine_restart_rows", benchmark)


# --------------------------------------------------------------------------- etcd peer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def etcd():
    exe = shutil.which("etcd")
    if exe is None:
        pytest.skip("etcd not installed (apt-get install etcd-server): etcd peer skipped")
    work = tempfile.mkdtemp(prefix="vtpu-bench-durable-etcd-")
    cport, pport = _free_port(), _free_port()
    curl, purl = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    log = open(os.path.join(work, "etcd.log"), "wb")
    proc = subprocess.Popen(
        [exe, "--name", "bench", "--data-dir", os.path.join(work, "data"),
         "--listen-client-urls", curl, "--advertise-client-urls", curl,
         "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
         "--initial-cluster", f"bench={purl}", "--log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    conn = None
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.skip(f"etcd exited with {proc.returncode} at start-up (log in {work})")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", cport, timeout=5)
                _etcd_put(conn, b"warm", b"up")
                break
            except (OSError, http.client.HTTPException, ValueError):
                if conn is not None:
                    conn.close()
                if time.monotonic() > deadline:
                    pytest.skip("etcd did not answer within 30 s")
                time.sleep(0.2)
        yield conn
    finally:
        if conn is not None:
            conn.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _etcd_put(conn: http.client.HTTPConnection, key: bytes, value: bytes) -> None:
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "value": base64.b64encode(value).decode()})
    conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        raise ValueError(f"etcd put: HTTP {resp.status} {raw[:200]!r}")


def test_etcd_put(benchmark, etcd):
    """etcd v3 put of the same 100-byte value (HTTP/JSON gateway, keep-alive)."""
    blob = b"x" * 100
    counter = iter(range(1 << 40))
    benchmark.pedantic(lambda: _etcd_put(etcd, b"k%d" % next(counter), blob),
                       rounds=500, warmup_rounds=20)
    _record("etcd_put", benchmark)


def test_zz_report(benchmark):
    """Print the medians and the etcd/vtpu ratio (runs last, being defined last).

    It takes the ``benchmark`` fixture (timing a no-op once) only so that
    ``--benchmark-only`` does not skip it.
    """
    benchmark.pedantic(lambda: None, rounds=1)
    if not RESULTS:
        pytest.skip("no benchmark ran (--benchmark-disable?)")
    lines = [f"{k:32s} {v * 1e6:12.1f} us" if v < 1 else f"{k:32s} {v:12.3f} s"
             for k, v in sorted(RESULTS.items())]
    ratio = None
    if "etcd_put" in RESULTS and "put_commit_always" in RESULTS:
        ratio = RESULTS["etcd_put"] / RESULTS["put_commit_always"]
        lines.append(f"etcd put / vtpu put+commit(always): {ratio:.2f}x")
    print("\n" + "\n".join(lines))
    out = os.environ.get("VTPU_BENCH_DURABLE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"medians_s": RESULTS, "etcd_over_always": ratio}, f, indent=1)
