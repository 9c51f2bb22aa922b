"""Instructions in bounded steps: one generator per instruction whose work grows with
the data.

An expensive instruction (a pattern query, a delete by pattern, attention, a KG walk,
an export...) is written once, as a generator that does a bounded amount of work (about
a millisecond: one window of index rows, one chunk of scrolls) between two ``yield``s
and returns its result. :func:`run` executes one to completion: that is what the
engine's plain methods do (``mem://``, ``file://``). The server drives the same
generator a few steps per event-loop turn and answers its other connections in between
(:mod:`vtpu.server`); it can stop one between two steps, throwing
:class:`~vtpu.errors.RequestTimeout` into it (a write reports what it did so far) or
closing it (its client left). A generator therefore only yields where everything it
changed is consistent.

A step yields ``None``, or a :class:`concurrent.futures.Future` when it waits for work
handed to another thread (an index structure built from an array nobody writes, see
:mod:`vtpu.index`): :func:`run` waits for the future, the server resumes the generator
once it is done.
"""
from __future__ import annotations

from concurrent.futures import Future, wait
from typing import Any, Generator

import numpy as np

__all__ = ["Steps", "run", "smallest"]

#: What a step generator is: it yields None or a Future and returns its result.
Steps = Generator[Any, None, Any]


def run(steps: Steps) -> Any:
    """Execute a step generator to completion.

    :param steps: a generator of this module's kind.
    :returns: what the generator returns.
    :raises: whatever the generator raises.
    """
    send = steps.send
    try:
        while True:
            w = send(None)
            if w is not None and isinstance(w, Future):
                wait([w])
    except StopIteration as stop:
        return stop.value


def smallest(values: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest entries by (value, order), in no particular order.

    ``order`` breaks ties (its entries are distinct: a row number, a position in
    coordinate order). Linear: one partition, plus a sort of the entries equal to the
    k-th value. Used to keep the best k of a stream fed chunk by chunk (NEAREST, ATTEND)
    without sorting all of it.

    :param values: 1-d numeric array (no NaN: callers map it to +inf first).
    :param order: 1-d int64 array of the same length.
    :param k: how many to keep (>= 0).
    :returns: int64 positions into ``values``.
    """
    n = len(values)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(values, k - 1)[k - 1]
    less = np.flatnonzero(values < kth)
    ties = np.flatnonzero(values == kth)
    need = k - len(less)
    if len(ties) > need:
        ties = ties[np.argsort(order[ties], kind="stable")[:need]]
    return np.concatenate([less, ties]).astype(np.int64, copy=False)


class Best:
    """The k smallest (value, order) pairs of a stream fed chunk by chunk.

    Memory and work stay proportional to k plus one chunk: the pool is cut back to k
    whenever it holds more than twice that.

    :param k: how many to keep.
    """

    __slots__ = ("k", "_vals", "_order", "_n")

    def __init__(self, k: int):
        self.k = k
        self._vals: list = []
        self._order: list = []
        self._n = 0

    def add(self, values: np.ndarray, order: np.ndarray) -> None:
        """Offer a chunk: ``values`` and their tie-breaking ``order`` (same length)."""
        if not len(values) or self.k <= 0:
            return
        self._vals.append(values)
        self._order.append(order)
        self._n += len(values)
        if self._n > 2 * self.k + 4096:
            self._cut()

    def _cut(self) -> None:
        v = np.concatenate(self._vals) if len(self._vals) > 1 else self._vals[0]
        o = np.concatenate(self._order) if len(self._order) > 1 else self._order[0]
        keep = smallest(v, o, self.k)
        self._vals, self._order, self._n = [v[keep]], [o[keep]], len(keep)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept pairs, smallest first: ``(values, order)``."""
        if not self._vals:
            return np.empty(0), np.empty(0, dtype=np.int64)
        self._cut()
        v, o = self._vals[0], self._order[0]
        s = np.lexsort((o, v))
        return v[s], o[s]
