"""Many concurrent benchmark connections, spread over worker processes (CGET's 64
clients, the sync benchmark's agents): each connection times its own requests."""

from __future__ import annotations

import os
import queue as _queue
import time
from typing import List

import numpy as np

from . import peers as _peers
from .common import R_SYNC, VALUE, stats_us, vtpu_connect
from .kv import keys_for_peers, kv_coords
from .report import thin

def _make_op(kind: str, addr: tuple, g: int, nkeys: int):
    """Build (fn(i), close) for one benchmark connection; ``g`` = global connection index.

    Kinds: "vtpu" (CGET), "redis" (GET), "vtpu_put" (agent ``g`` CPUTs into its own
    range ``104.g.1/...``), "etcd_put" (agent ``g`` puts ``agent/g/i`` through etcd's
    HTTP/JSON gateway).
    """
    if kind == "vtpu":
        cl = vtpu_connect(addr[0])
        arr = kv_coords(nkeys)
        rows = [arr[i] for i in range(nkeys)]
        cl.cget(rows[0])
        return (lambda i: cl.cget(rows[(i + g) % nkeys])), cl.close
    if kind == "vtpu_put":
        cl = vtpu_connect(addr[0])
        arr = np.empty((nkeys, 9), dtype=np.uint16)
        arr[:] = (R_SYNC, g, 1, 0, 0, 1, 2, 1, 1)
        arr[:, 3] = np.arange(nkeys) // 1000
        arr[:, 4] = np.arange(nkeys) % 1000
        rows = [arr[i] for i in range(nkeys)]
        cl.cget(rows[0])
        return (lambda i: cl.cput(rows[i % nkeys], VALUE)), cl.close
    if kind == "etcd_put":
        ec = _peers.EtcdClient(addr[0], addr[1], timeout=60)
        prefix = b"agent/%d/" % g
        ec.get(prefix)
        return (lambda i: ec.put(prefix + b"%d" % i, VALUE)), ec.close
    if kind == "redis":
        import redis  # type: ignore

        rc = redis.Redis(host=addr[0], port=addr[1], socket_timeout=60)
        rk, _ = keys_for_peers(kv_coords(nkeys))
        rc.get(rk[0])
        return (lambda i: rc.get(rk[(i + g) % nkeys])), rc.close
    raise ValueError(f"unknown benchmark client kind {kind!r}")


def _conc_worker(kind: str, addr: tuple, first: int, threads: int, requests: int,
                 nkeys: int, go, results) -> None:
    """Worker process: ``threads`` threads, each with its own connection (global index
    ``first + t``), each doing ``requests`` operations; puts ("done", [(latencies µs
    float32, t_start, t_end) or an error string per thread]) on ``results``. Every wait
    is bounded; the parent also terminates the process by pid on timeout."""
    import threading

    out: list = [None] * threads
    ready = threading.Barrier(threads + 1)

    def body(t: int) -> None:
        try:
            fn, close = _make_op(kind, addr, first + t, nkeys)
        except Exception as exc:  # report it, and still reach the barrier
            out[t] = f"{type(exc).__name__}: {exc}"
            try:
                ready.wait(120)
            except threading.BrokenBarrierError:
                pass
            return
        try:
            ready.wait(120)
        except threading.BrokenBarrierError:
            pass
        go.wait(120)
        lat = np.empty(requests, dtype=np.float32)
        pc = time.perf_counter_ns
        t0 = time.monotonic()
        try:
            for i in range(requests):
                a = pc()
                fn(i)
                lat[i] = (pc() - a) / 1000.0
            out[t] = (lat, t0, time.monotonic())
        except Exception as exc:
            out[t] = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                close()
            except Exception:
                pass

    ths = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for th in ths:
        th.start()
    try:
        ready.wait(120)
    except threading.BrokenBarrierError:
        pass
    results.put(("ready", os.getpid()))
    for th in ths:
        th.join(600)
    results.put(("done", out))


def _mp():
    import multiprocessing as mp

    try:
        return mp.get_context("fork")
    except ValueError:  # pragma: no cover - no fork on this platform
        return mp.get_context("spawn")


def run_clients(kind: str, addr: tuple, clients: int, procs: int, requests: int,
                nkeys: int, timeout: float = 300.0) -> dict:
    """Run ``clients`` concurrent connections spread over ``procs`` processes.

    :param kind: "vtpu" / "vtpu_put" (addr = (url,)), "redis" / "etcd_put"
        (addr = (host, port)); see :func:`_make_op`.
    :param addr: address tuple.
    :param clients: total connections.
    :param procs: worker processes (threads per process = clients / procs).
    :param requests: requests per connection.
    :param nkeys: key-space size.
    :param timeout: seconds before the workers are terminated (by pid).
    :returns: dict with ops_per_s, stats_us, errors, wall_s.
    """
    ctx = _mp()
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    go = ctx.Event()
    results = ctx.Queue()
    firsts = [sum(per[:i]) for i in range(procs)]
    ps = [ctx.Process(target=_conc_worker, args=(kind, addr, firsts[i], per[i], requests,
                                                 nkeys, go, results), daemon=True)
          for i in range(procs)]
    for p in ps:
        p.start()
    deadline = time.monotonic() + timeout
    ready = 0
    outs: list = []
    errors: List[str] = []
    try:
        while ready < procs and time.monotonic() < deadline:
            try:
                msg = results.get(timeout=1.0)
            except _queue.Empty:
                if not any(p.is_alive() for p in ps):
                    break
                continue
            if msg[0] == "ready":
                ready += 1
            else:
                outs.append(msg[1])
        go.set()
        while len(outs) < procs and time.monotonic() < deadline:
            try:
                msg = results.get(timeout=1.0)
            except _queue.Empty:
                if not any(p.is_alive() for p in ps) and results.empty():
                    break
                continue
            if msg[0] == "done":
                outs.append(msg[1])
    finally:
        for p in ps:
            p.join(max(0.1, min(10.0, deadline - time.monotonic())))
            if p.is_alive():
                p.terminate()  # SIGTERM to that worker's pid
                p.join(5)
    lats, starts, ends = [], [], []
    for out in outs:
        for item in out:
            if isinstance(item, tuple):
                lats.append(item[0])
                starts.append(item[1])
                ends.append(item[2])
            elif item is not None:
                errors.append(str(item))
    if not lats:
        return {"errors": errors or ["no worker finished"], "ops_per_s": None}
    lat = np.concatenate(lats)
    wall = max(ends) - min(starts)
    return {"ops_per_s": lat.size / wall if wall > 0 else None, "wall_s": wall,
            "stats_us": stats_us(lat), "samples_us": thin(lat), "errors": errors,
            "connections": len(lats), "processes": procs}
