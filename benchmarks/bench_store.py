"""The compact store: memory per scroll, point and batched reads, CRANGE results read by
the caller, CNEAREST and start-up, each beside its peer measured in the same run.

Run: ``python benchmarks/bench_store.py [--only NAME,...] [--n 1000000]``. Each part
prints one line per figure; ``--json FILE`` also writes them. Parts:

* ``memory``   RSS growth per scroll of an engine loaded with N scrolls of 20-byte text
  (a fresh process each), beside redis-server loaded with the same keys and values
  (skipped with a note when redis-server is missing); and N float32 vectors of 64 dims
  against their raw 256 bytes.
* ``cget``     embedded CGET with a packed key (``mem://`` facade and the engine) vs a
  Python dict lookup over the same N keys; ``get_many`` of 10,000 packed keys.
* ``crange``   CRANGE over N scrolls returning ~100 and ~10,000 results, the caller
  reading every result's coordinate and content (scroll by scroll, and as columns), vs a
  numpy-vectorised scan of the same (N, 9) coordinates that also gathers the contents.
* ``nearest``  CNEAREST k=10 over the N coordinates.
* ``startup``  opening a durable store of N scrolls (``file://``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vtpu import _core  # noqa: E402

RESULTS: dict = {}

# Patterns over uniformly random components 0..9: each fixed digit keeps 1/10 of the
# scrolls, so with 1M scrolls these match ~100 and ~10,000.
PATTERNS = {
    "prefix": {100: "3.7.1/4.*.*/*.*.*", 10000: "3.7.*/*.*.*/*.*.*"},
    "middle": {100: "*.*.*/5.9.2/6.*.*", 10000: "*.*.*/5.9.*/*.*.*"},
    "suffix": {100: "*.*.*/*.*.8/2.4.4", 10000: "*.*.*/*.*.*/*.4.4"},
    "mixed": {100: "[2:4].*.1/*.[0:5].9/*.*.4", 10000: "[2:4].*.*/*.[0:5].*/*.*.4"},
}


def report(name: str, value: float, unit: str, note: str = "") -> None:
    """Print one figure and keep it for --json."""
    RESULTS[name] = {"value": value, "unit": unit, "note": note}
    print(f"{name:<58} {value:>12.4g} {unit:<6} {note}", flush=True)


def best_of(fn, reps: int = 5) -> float:
    """The fastest of ``reps`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def dataset(n: int, seed: int = 11) -> np.ndarray:
    """n distinct (n, 9) uint16 coordinates with components uniform in 0..9 (in no
    useful order)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 10, size=(int(n * 1.01) + 16, 9)).astype(np.uint16)
    arr = np.unique(arr, axis=0)[:n]
    return np.ascontiguousarray(arr[rng.permutation(len(arr))])


def texts(n: int) -> list:
    """n distinct 20-character strings."""
    return [f"content-{i:012d}" for i in range(n)]


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- memory ------------------------------------------------------------------------------

def _memory_child(kind: str, n: int) -> None:
    """Run in a fresh process: load n scrolls into an engine, print the RSS growth."""
    from vtpu.engine import Engine

    arr = dataset(n)
    blob = _core.pack_many(arr)
    if kind == "text":
        values = texts(n)
    else:
        values = np.random.default_rng(3).standard_normal((n, 64)).astype(np.float32)
    gc.collect()
    before = rss()
    eng = Engine()
    step = 50_000
    for s in range(0, n, step):
        eng.put_many(blob[s * 18:(s + step) * 18], values[s:s + step])
    gc.collect()
    after = rss()
    print(json.dumps({"per_scroll": (after - before) / n, "scrolls": len(eng._map)}))


def _redis_growth(n: int) -> float | None:
    """RSS growth per key of a redis-server loaded with n 18-byte keys of 20-byte values."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        before = r.info("memory")["used_memory_rss"]
        keys = _core.pack_many(dataset(n))
        vals = texts(n)
        step = 10_000
        for s in range(0, n, step):
            r.mset({keys[i * 18:(i + 1) * 18]: vals[i] for i in range(s, min(s + step, n))})
        time.sleep(0.5)
        after = r.info("memory")["used_memory_rss"]
        return (after - before) / n
    finally:
        proc.terminate()
        proc.wait(10)


def bench_memory(n: int) -> None:
    """RSS growth per scroll for text and vector contents, beside Redis."""
    for kind in ("text", "vector"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", kind, "--n", str(n)],
                             capture_output=True, text=True, timeout=900, check=True)
        per = json.loads(out.stdout.strip().splitlines()[-1])["per_scroll"]
        if kind == "text":
            red = _redis_growth(n)
            note = "redis-server missing" if red is None else \
                f"redis {red:.0f} B/key -> {per / red:.2f}x (target <= 0.7x)"
            report(f"memory: RSS growth per scroll, {n:,} x 20-byte text", per, "B", note)
            if red is not None:
                report("memory: redis-server RSS growth per key, same data", red, "B")
        else:
            report(f"memory: RSS growth per scroll, {n:,} x float32[64]", per, "B",
                   f"raw 256 B -> {per / 256:.2f}x")


# -- point and batched reads ---------------------------------------------------------------

def _load_engine(arr: np.ndarray, values):
    from vtpu.engine import Engine

    eng = Engine()
    blob = _core.pack_many(arr)
    step = 100_000
    for s in range(0, len(arr), step):
        eng.put_many(blob[s * 18:(s + step) * 18], values[s:s + step])
    return eng, blob


def bench_cget(n: int, arr, eng, blob) -> None:
    """Embedded CGET vs a dict over the same keys; get_many of 10,000 keys."""
    from vtpu.client import Client

    keys_all = [blob[i * 18:(i + 1) * 18] for i in range(n)]
    # The dict owns its key objects (as the store owns its keys): a lookup compares
    # bytes, instead of taking the identity shortcut on the very objects it was built from.
    d = dict(zip((bytes(bytearray(k)) for k in keys_all), range(n)))
    rng = np.random.default_rng(5)
    probe = [keys_all[i] for i in rng.integers(0, n, 20_000)]
    get = d.get
    t_dict = best_of(lambda: [get(k) for k in probe]) / len(probe)
    eget = eng.get
    t_eng = best_of(lambda: [eget(k) for k in probe]) / len(probe)
    client = Client(eng, "mem://")
    cget = client.cget
    t_cli = best_of(lambda: [cget(k) for k in probe]) / len(probe)
    report("cget: dict.get over the same keys", t_dict * 1e9, "ns")
    report("cget: Engine.get (packed key)", t_eng * 1e9, "ns", f"{t_eng / t_dict:.2f}x dict")
    report("cget: mem:// facade cget (packed key)", t_cli * 1e9, "ns",
           f"{t_cli / t_dict:.2f}x dict (target <= 1.5x)")
    many = b"".join(probe[:10_000])
    t_many = best_of(lambda: eng.get_many(many))
    report("get_many: 10,000 packed keys (Engine)", t_many * 1e3, "ms", "target <= 1 ms")
    t_read = best_of(lambda: [(s.coordinate, s.content) for s in eng.get_many(many)])
    report("get_many: 10,000 keys, each coordinate+content read", t_read * 1e3, "ms")


# -- CRANGE ----------------------------------------------------------------------------------

def _bounds(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    p = _core.parse_pattern(pattern)
    return p[0].copy(), p[1].copy()


def bench_crange(n: int, arr, eng, values) -> None:
    """CRANGE results read by the caller vs a numpy scan that gathers the contents."""
    contents = np.array(values, dtype=object)
    for shape, pats in PATTERNS.items():
        for want, pat in pats.items():
            p = _core.parse_pattern(pat)
            lo, hi = _bounds(pat)

            def numpy_scan():
                idx = np.flatnonzero(((arr >= lo) & (arr <= hi)).all(axis=1))
                return arr[idx], contents[idx].tolist()

            got_np = numpy_scan()
            res = eng.range(p)
            assert len(res) == len(got_np[0]), (pat, len(res), len(got_np[0]))
            t_np = best_of(numpy_scan, 3)
            t_count = best_of(lambda: eng.count(p))
            t_query = best_of(lambda: eng.range(p))

            def by_scroll():
                for s in eng.range(p):
                    s.coordinate
                    s.content

            def as_columns():
                r = eng.range(p)
                return r.coordinates, r.contents

            t_scroll = best_of(by_scroll)
            t_cols = best_of(as_columns)
            m = len(res)
            per = (t_cols - t_count) / m * 1e6 if m else 0.0
            tag = f"crange {shape} {m:,} results ({pat})"
            report(f"{tag}: numpy scan + gather", t_np * 1e3, "ms")
            report(f"{tag}: count", t_count * 1e3, "ms")
            report(f"{tag}: range (not read)", t_query * 1e3, "ms")
            report(f"{tag}: read scroll by scroll", t_scroll * 1e3, "ms",
                   f"numpy/vtpu = {t_np / t_scroll:.1f}x")
            report(f"{tag}: read as columns", t_cols * 1e3, "ms",
                   f"numpy/vtpu = {t_np / t_cols:.1f}x; {per:.2f} us/result beyond count")


# -- CNEAREST and start-up -------------------------------------------------------------------

def bench_nearest(n: int, arr, eng) -> None:
    """CNEAREST k=10 over the N coordinates (L1)."""
    rng = np.random.default_rng(9)
    qs = [arr[i].copy() for i in rng.integers(0, n, 5)]
    t = min(best_of(lambda q=q: eng.nearest(q, 10, "l1")) for q in qs)
    report("cnearest: k=10 over the store, L1 (Engine)", t * 1e3, "ms", "target <= 3 ms")
    a32 = arr.astype(np.float32)
    q = qs[0].astype(np.float32)
    t_np = best_of(lambda: np.argpartition(np.abs(a32 - q).sum(axis=1), 10)[:10], 3)
    report("cnearest: numpy L1 + argpartition (same data)", t_np * 1e3, "ms")


def bench_startup(n: int) -> None:
    """Opening a durable store of n scrolls of 20-byte text."""
    from vtpu.engine import Engine
    from vtpu.storage import Storage

    d = tempfile.mkdtemp(prefix="vtpu-bench-store-")
    try:
        arr = dataset(n)
        blob = _core.pack_many(arr)
        vals = texts(n)
        st = Storage(os.path.join(d, "data"), fsync="never")
        eng = Engine(st, autocommit=False)
        step = 100_000
        for s in range(0, n, step):
            eng.put_many(blob[s * 18:(s + step) * 18], vals[s:s + step])
        eng.close()
        gc.collect()
        t0 = time.perf_counter()
        eng = Engine(Storage(os.path.join(d, "data"), fsync="never"))
        t = time.perf_counter() - t0
        assert len(eng._map) == n
        report(f"startup: open a durable store of {n:,} scrolls", t, "s", "target <= 1.5 s")
        eng.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--only", default="memory,cget,crange,nearest,startup")
    ap.add_argument("--json")
    ap.add_argument("--memory-child")
    a = ap.parse_args()
    if a.memory_child:
        _memory_child(a.memory_child, a.n)
        return
    only = set(a.only.split(","))
    if "memory" in only:
        bench_memory(a.n)
    if only & {"cget", "crange", "nearest"}:
        arr = dataset(a.n)
        vals = texts(len(arr))
        eng, blob = _load_engine(arr, vals)
        if "cget" in only:
            bench_cget(len(arr), arr, eng, blob)
        if "crange" in only:
            bench_crange(len(arr), arr, eng, vals)
        if "nearest" in only:
            bench_nearest(len(arr), arr, eng)
        del eng
    if "startup" in only:
        bench_startup(a.n)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(RESULTS, f, indent=1)


if __name__ == "__main__":
    main()
