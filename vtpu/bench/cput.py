"""``vtpu bench --test cput``: the key-value measurements of :mod:`.kv` for CPUT."""

from __future__ import annotations

from .harness import Ctx
from .kv import batched, pipelined, single_ops


def run(ctx: Ctx) -> None:
    """CPUT: single-op latency vs echo/Redis/memcached, batched 10k vs MSET, 1000
    pipelined vs a redis-py pipeline."""
    single_ops(ctx, "cput")
    batched(ctx, "cput")
    pipelined(ctx, "cput")
