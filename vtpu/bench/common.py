"""Shared pieces of the benchmark harness: the prototype's figures, the default sizes,
progress and timing (latency sampling, medians, percentiles), and the few calls every
benchmark makes on the vtpu client (connect, coordinate arrays, batched loads).

Data layout (chosen so no benchmark disturbs another's counts): the CRANGE/CNEAREST data
set has components 0-5 = the six decimal digits of its index and components 6-8 =
``1.1.1``; every other benchmark writes under first component >= 100 (its ``R_*``
region) with component 6 >= 2.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

# The prototype's figures (seed README "Benchmark Results" / "Validation Summary").
PROTO = {
    "cget_projection_us": (50.0, 100.0),
    "cget_http_us": 1245.0,  # prototype median over HTTP/JSON
    "cput_http_us": 1200.0,  # "~1200 us (includes HTTP)"
    "crange_ms_per_100": 10.0,  # "CRANGE: 10 ms (100 items)"
    "sparse_projection_x": 10.0,
    "sparse_theoretical_x": 16.0,
    "sync_projection_x": 1_000_000.0,
    "sync_prototype_x": 18_000.0,
    "batch_improvement_x": (10.0, 20.0),  # "Expected improvement: 10-20x"
}

# Generated data regions (see module docstring).
R_LATENCY, R_SPARSE, R_KG, R_SYNC = 101, 102, 103, 104

DEFAULTS = {
    "trials": 2000,
    "n_scrolls": 1_000_000,
    "batch": 10_000,
    "pipeline": 1000,
    "clients": 64,
    # 64 clients as 16 processes x 4 threads: with more threads per process, a client
    # thread whose reply has arrived waits up to the GIL switch interval (5 ms) to read
    # it, and p99 measures the client harness rather than the server (see cget._concurrent).
    "client_procs": 16,
    "conc_requests": 500,
    "agents": 4,
    "writes": 1000,
    "seq": 2048,
    "window": 128,
    "dim": 64,
    "moe_tokens": 1_000_000,
    "moe_experts": 64,
    "kg_nodes": 20_000,
    "kg_hops": 3,
    "kg_trials": 500,
    "nearest_trials": 100,
}

VALUE = b"v" * 32  # the small scroll content used by every key-value comparison


# =========================================================================== utilities


def log(msg: str) -> None:
    """Print one progress/status line to stderr.

    :param msg: the line.
    """
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """A simple stderr progress line (no dependency), redrawn at most twice a second.

    :param label: what is progressing.
    :param total: number of steps.
    :param enabled: False silences it.
    """

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(1, int(total)), enabled
        self.t0 = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        """Report ``done`` steps finished.

        :param done: steps done so far.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < (0.5 if self._tty else 5.0) and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total
        line = f"  {self.label}: {done:,}/{self.total:,} ({pct:.0f}%, {now - self.t0:.1f}s)"
        if self._tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            if done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            log(line)


def stats_us(samples: Sequence[float]) -> dict:
    """Summarise latency samples (microseconds).

    :param samples: per-operation latencies in µs.
    :returns: dict with n, p50, p95, p99, mean, min, max (µs).
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def sample_latency(fn: Callable[[int], Any], n: int, warmup: int = 50) -> np.ndarray:
    """Time ``fn(i)`` for i in 0..n-1, one call at a time, with the GC paused.

    :param fn: the operation; gets the iteration number.
    :param n: number of timed calls.
    :param warmup: untimed calls first.
    :returns: float64 array of n latencies in µs.
    """
    for i in range(min(warmup, n)):
        fn(i)
    out = np.empty(n, dtype=np.float64)
    pc = time.perf_counter_ns
    was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            fn(i)
            out[i] = pc() - t0
    finally:
        if was:
            gc.enable()
    return out / 1000.0


def interleaved(samplers: Dict[str, Callable[[int], Any]], n: int, rounds: int = 5,
                warmup: int = 50, progress: Optional[Progress] = None) -> Dict[str, np.ndarray]:
    """Time several operations in alternating rounds so drift hits them all alike, the
    rounds in :func:`round_orders`'s order (each operation's first call of a round
    follows every other operation equally often).

    :param samplers: name -> fn(i).
    :param n: timed calls per name in total.
    :param rounds: number of alternating rounds.
    :param warmup: untimed warm-up calls per name.
    :param progress: optional progress line (steps = rounds * len(samplers)).
    :returns: name -> µs array of length n.
    """
    rounds = max(1, min(rounds, n))
    per = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    out: Dict[str, List[np.ndarray]] = {k: [] for k in samplers}
    for k, fn in samplers.items():
        for i in range(min(warmup, n)):
            fn(i)
    step = 0
    names = list(samplers)
    orders = round_orders(len(names))
    for r in range(rounds):
        for j in orders[r % len(orders)]:
            k, fn = names[j], samplers[names[j]]
            base = sum(per[:r])
            out[k].append(sample_latency(lambda i, fn=fn, base=base: fn(base + i), per[r], 0))
            step += 1
            if progress:
                progress.update(step)
    return {k: np.concatenate(v) for k, v in out.items()}


def round_orders(n: int) -> List[List[int]]:
    """Orders for rounds of ``n`` calls in which each call follows every other equally
    often (a Williams design, the crossover trials' answer to carry-over): within the
    returned rounds every ordered pair of different calls is adjacent the same number
    of times (once for even ``n``, twice for odd). A call finds the caches and the
    allocator in the state the one before it left, so no call should always follow the
    same one; rotating one order does not do that (its cyclic successor never changes).

    :param n: number of calls (>= 1).
    :returns: ``n`` orders (``2n`` for odd ``n`` > 1), each a permutation of ``range(n)``.
    """
    if n <= 1:
        return [[0] * n]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return rows


def median_times(fns: Dict[str, Callable[[], Any]], reps: int = 9) -> Dict[str, float]:
    """Time several calls in alternating rounds (each once per round, after one untimed
    call each), so that a slow spell of a shared machine hits them all alike; the
    median wall time of each. The rounds' orders come from :func:`round_orders`: each
    call follows each other one equally often.

    :param fns: name -> the work.
    :param reps: rounds (>= 1).
    :returns: name -> seconds.
    """
    for fn in fns.values():
        fn()
    ts: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    orders = round_orders(len(names))
    for r in range(max(1, reps)):
        for j in orders[r % len(orders)]:
            k = names[j]
            fn = fns[k]
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


def best_of(fn: Callable[[], Any], reps: int = 3) -> float:
    """Run ``fn`` ``reps`` times; return the fastest wall time in seconds.

    :param fn: the work.
    :param reps: repetitions (>= 1).
    :returns: seconds.
    """
    best = math.inf
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn: Callable[[], Any], reps: int = 5) -> float:
    """Run ``fn`` ``reps`` times; return the median wall time in seconds.

    :param fn: the work.
    :param reps: repetitions (>= 1).
    :returns: seconds.
    """
    ts = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# =========================================================================== vtpu calls
# Everything the harness asks of the client goes through these few functions, so the
# harness has one place to follow the facade.


def vtpu_connect(url: str):
    """Open a client to ``url`` with the package facade.

    :param url: ``vtpu://host:port``.
    :returns: the client.
    """
    from ..client import connect

    return connect(url)


def coords_array(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Build an (N, 9) uint16 C-contiguous coordinate array.

    :param rows: N sequences of 9 ints.
    :returns: ndarray.
    """
    return np.ascontiguousarray(np.asarray(rows, dtype=np.uint16).reshape(-1, 9))


def fmt_coord(c: Sequence[int]) -> str:
    """Format 9 numeric components as ``a.b.c/d.e.f/g.h.i``.

    :param c: 9 ints.
    :returns: the coordinate string.
    """
    c = [int(x) for x in c]
    return f"{c[0]}.{c[1]}.{c[2]}/{c[3]}.{c[4]}.{c[5]}/{c[6]}.{c[7]}.{c[8]}"


def fmt_coords(arr: np.ndarray) -> List[str]:
    """Format many coordinates in plain Python (the prototype kept coordinates as strings).

    :param arr: (N, 9) array.
    :returns: list of strings.
    """
    f = "%d.%d.%d/%d.%d.%d/%d.%d.%d"
    return [f % tuple(r) for r in arr.tolist()]


def read_columns(res) -> tuple:
    """Read every result's coordinate (text) and content, as columns when the result
    offers them (``result.coordinates`` / ``result.contents``), else scroll by scroll.

    :param res: a CRANGE / CGET_MANY result.
    :returns: (path, coordinates, contents), path ``"columns"`` or ``"per-scroll"``.
    """
    cols = getattr(res, "coordinates", None)
    if cols is not None and hasattr(res, "contents"):
        contents = res.contents
        return "columns", (cols() if callable(cols) else cols), \
            (contents() if callable(contents) else contents)
    return "per-scroll", [s.coordinate for s in res], [s.content for s in res]


def read_each(res) -> int:
    """Read each result's coordinate (text) and content, scroll by scroll, the way a
    caller iterating over the result does.

    :param res: a CRANGE / CGET_MANY result.
    :returns: the number of results read.
    """
    n = 0
    for s in res:
        _ = (s.coordinate, s.content)
        n += 1
    return n


def steal_seconds() -> Optional[float]:
    """CPU time the hypervisor took from this machine's CPUs so far, all CPUs together
    (``/proc/stat`` steal; None where there is none to read). On a virtual machine a
    burst of it stalls every process at once, timed calls and peers alike: the report
    shows it per test, so that such a stall is not read as a result.

    :returns: seconds, or None.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[8]) / tick if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def rss_bytes(pid: int) -> Optional[int]:
    """Resident set size of a process, from ``/proc/PID/status`` (VmRSS).

    :param pid: process id.
    :returns: bytes, or None where /proc is unavailable.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def in_batches(n: int, size: int):
    """Yield (start, stop) slices covering range(n) in steps of ``size``.

    :param n: total.
    :param size: batch size (>= 1).
    """
    size = max(1, size)
    for s in range(0, n, size):
        yield s, min(n, s + size)


def load_scrolls(client, arr: np.ndarray, contents: Any, batch: int = 20_000,
                 label: str = "loading", show: bool = True) -> float:
    """Write many scrolls with batched CPUT; return the seconds it took.

    :param client: vtpu client.
    :param arr: (N, 9) coordinates.
    :param contents: list of N contents, or an ndarray whose row i is content i.
    :param batch: scrolls per call.
    :param label: progress label.
    :param show: show progress.
    :returns: seconds.
    """
    n = len(arr)
    prog = Progress(f"{label} {n:,} scrolls", n, show)
    t0 = time.perf_counter()
    for s, e in in_batches(n, batch):
        client.cput_many(arr[s:e], contents[s:e])
        prog.update(e)
    return time.perf_counter() - t0
