"""``vtpu bench --test nearest``: CNEAREST k=10 over the 1M data set, checked against and
timed beside numpy."""

from __future__ import annotations

import time

import numpy as np

from .common import Progress
from .crange import ensure_dataset
from .harness import Ctx

def run(ctx: Ctx) -> None:
    """CNEAREST k=10 over the 1M data set, checked against numpy (distances), timed
    against numpy L1 + argpartition on the same array."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    arr = ensure_dataset(ctx)
    n = len(arr)
    rng = np.random.default_rng(11)
    trials = sz["nearest_trials"]
    qs = np.ones((trials, 9), dtype=np.uint16)
    qs[:, :6] = rng.integers(0, 13, size=(trials, 6))  # a bit outside the grid, too
    a32 = arr.astype(np.int32)

    def np_knn(q):
        d = np.abs(a32 - q.astype(np.int32)).sum(axis=1)
        idx = np.argpartition(d, 10)[:10]
        return np.sort(d[idx])

    wrong = 0
    prog = Progress("nearest queries", trials, ctx.show)
    vt, nt = [], []
    for i, q in enumerate(qs):
        t0 = time.perf_counter()
        got = c.cnearest(q, k=10)
        vt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = np_knn(q)
        nt.append(time.perf_counter() - t0)
        dists = np.sort(np.asarray([int(x[1]) for x in got]))
        if len(dists) != len(ref) or not np.array_equal(dists, ref):
            wrong += 1
        prog.update(i + 1)
    v50, n50 = float(np.median(vt)) * 1e3, float(np.median(nt)) * 1e3
    rep.tests["nearest"] = {"n": n, "k": 10, "trials": trials, "vtpu_ms": [x * 1e3 for x in vt],
                            "numpy_ms": [x * 1e3 for x in nt], "mismatches": wrong}
    if wrong:
        rep.errors["nearest"] = f"{wrong}/{trials} queries differ from numpy's distances"
    rep.row("nearest", f"k=10 over {n / 1e6:g}M, p50", v50, "ms",
            projection="(prototype: Hamming scan)", peer="numpy L1 + argpartition",
            peer_value=n50, target="<=10 ms and < numpy",
            target_ok=v50 <= 10 and v50 < n50,
            note=f"{1e3 / v50:.0f} queries/s; p95 {np.percentile(vt, 95) * 1e3:.1f} ms"
                 + (f"; {wrong} WRONG" if wrong else ""))
