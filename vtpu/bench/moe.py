"""``vtpu bench --test moe``: batched CMOE routing of 1M tokens, beside a pure-Python
xxh64 + jump-hash loop and the prototype's one HTTP call per token."""

from __future__ import annotations

import time

import numpy as np

from .common import PROTO, median_time
from .harness import Ctx

def _jump(key: int, n: int) -> int:
    # Lamping & Veach jump consistent hash, the reference the spec names.
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def run(ctx: Ctx) -> None:
    """Batched CMOE over 1M token coordinates: throughput, single == batched on a sample,
    beside a pure-Python per-token loop (xxh64 + jump hash) and the prototype's one HTTP
    call per token."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    n, experts = sz["moe_tokens"], sz["moe_experts"]
    rng = np.random.default_rng(5)
    toks = np.empty((n, 9), dtype=np.uint16)
    toks[:, 0] = 0
    toks[:, 1] = rng.integers(0, 4096, n)  # sequence
    toks[:, 2] = rng.integers(0, 2048, n)  # position
    toks[:, 3] = rng.integers(0, 32, n)  # layer
    toks[:, 4:] = 1
    out = c.cmoe(toks[:1000], experts)
    out = np.asarray(out)
    if out.shape != (1000,) or out.min() < 0 or out.max() >= experts:
        raise RuntimeError(f"cmoe returned shape {out.shape} range {out.min()}..{out.max()}")
    t = median_time(lambda: c.cmoe(toks, experts), 3)
    full = np.asarray(c.cmoe(toks, experts))
    sample = 200
    single = np.asarray([int(c.cmoe(toks[i], experts)) for i in range(sample)])
    consistent = bool(np.array_equal(single, full[:sample]))
    counts = np.bincount(full, minlength=experts)
    # pure-Python loop: xxh64 of the packed coordinate + jump hash (the spec's kind of
    # hash), over a slice, scaled to per-token time.
    py_n = 20_000
    py_s = None
    try:
        import xxhash  # type: ignore

        be = toks[:py_n].astype(">u2")
        t0 = time.perf_counter()
        for i in range(py_n):
            _jump(xxhash.xxh64_intdigest(be[i].tobytes()), experts)
        py_s = (time.perf_counter() - t0) / py_n
    except ImportError:
        rep.skip("skip moe python loop: xxhash missing")
    rep.tests["moe"] = {"tokens": n, "experts": experts, "seconds": t,
                        "tokens_per_s": n / t, "single_equals_batched": consistent,
                        "expert_load_min": int(counts.min()), "expert_load_max": int(counts.max()),
                        "python_loop_s_per_token": py_s}
    if not consistent:
        rep.errors["moe"] = "single-token CMOE differs from the batched result"
    rep.row("moe", f"batched CMOE {n / 1e6:g}M tokens", n / t, "tokens/s", better="higher",
            projection="(prototype: 1 HTTP call/token)",
            prototype=f"~{1e6 / PROTO['cget_http_us']:.0f} tokens/s",
            peer="Python loop xxh64+jump" if py_s else None,
            peer_value=(1.0 / py_s) if py_s else None,
            note=f"{t * 1e3:.0f} ms; load {counts.min()}..{counts.max()} per expert; "
                 f"single==batched {consistent}")
    rep.row("moe", "vs prototype HTTP per token", n / t, "tokens/s", better="higher",
            peer="prototype (README)", peer_value=1e6 / PROTO["cget_http_us"])
