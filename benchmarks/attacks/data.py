"""The data the attacks run against, and the patterns and deltas they use.

``N`` scrolls (1,000,000 in the full version): three quarters text, one quarter vectors.
Scroll i of a part sits at the six decimal digits of i, each plus one (so 1 ... 10, and
every text scroll is a valid phext coordinate), in components 0-5; components 6-8 are
``1.1.1`` for text (content ``"scroll i"``) and ``2.1.1`` for vectors (16 float32s).
The probe's key (component 0 = 0) is outside both parts.
"""
from __future__ import annotations

import time

import numpy as np

from vtpu import _core
from vtpu import protocol as P
from vtpu.netclient import RemoteEngine

from .harness import PROBE_KEY, Server

FULL_N = 1_000_000
QUICK_N = 20_000
DIM = 16
BATCH = 50_000

ALL = P.pack_pattern(_core.parse_pattern("*.*.*/*.*.*/*.*.*"))
TEXT = P.pack_pattern(_core.parse_pattern("*.*.*/*.*.*/1.1.1"))
VECTORS = P.pack_pattern(_core.parse_pattern("*.*.*/*.*.*/2.1.1"))
# Keeps components 3-8 and frees 0-2: every frontier key fans out to ~N/1000 scrolls.
WILD_DELTA = P.pack_deltas(np.stack([_core.parse_delta("*.*.*/0.0.0/0.0.0")]))
FIRST_TEXT_KEY = _core.pack(np.array([1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.uint16))


def digit_coords(n: int, tail: tuple) -> np.ndarray:
    """(n, 9) uint16: row i holds the six decimal digits of i, each plus one, then ``tail``."""
    i = np.arange(n, dtype=np.int64)
    arr = np.empty((n, 9), dtype=np.uint16)
    for j in range(6):
        arr[:, j] = (i // 10 ** (5 - j)) % 10 + 1
    arr[:, 6:] = tail
    return arr


def parts(n: int) -> tuple:
    """``(text_coords, vector_coords)`` of the data set of ``n`` scrolls ((k, 9) uint16)."""
    n_vec = n // 4
    return digit_coords(n - n_vec, (1, 1, 1)), digit_coords(n_vec, (2, 1, 1))


def vectors(n: int, seed: int = 1) -> np.ndarray:
    """The vector contents, (n, DIM) float32."""
    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def put_probe_key(server: Server) -> None:
    """Store the probe's key (servers whose attack needs no data set)."""
    c = RemoteEngine(port=server.port, token=server.token, timeout=60)
    try:
        c.put(PROBE_KEY, "probe")
    finally:
        c.close()


def load(server: Server, n: int, timeout: float = 300.0) -> dict:
    """Store the data set and the probe's key through a client (not an attacker).

    :param server: the server to fill.
    :param n: number of scrolls.
    :param timeout: seconds per call.
    :returns: ``{"n": ..., "load_s": ...}``.
    """
    t0 = time.monotonic()
    c = RemoteEngine(port=server.port, token=server.token, timeout=timeout)
    try:
        c.put(PROBE_KEY, "probe")
        text, vec = parts(n)
        for s in range(0, len(text), BATCH):
            e = min(s + BATCH, len(text))
            c.put_many(_core.pack_many(text[s:e]), [f"scroll {i}" for i in range(s, e)])
        values = vectors(len(vec))
        for s in range(0, len(vec), BATCH):
            e = min(s + BATCH, len(vec))
            c.put_many(_core.pack_many(vec[s:e]), values[s:e])
    finally:
        c.close()
    return {"n": n, "load_s": round(time.monotonic() - t0, 2)}
