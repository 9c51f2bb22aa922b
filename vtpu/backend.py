"""The backend contract: the engine methods the :class:`vtpu.client.Client` facade calls.

Two classes implement :class:`Backend`: :class:`vtpu.engine.Engine` in-process
(``mem://``, ``file://DIR``) and :class:`vtpu.netclient.RemoteEngine` over the network
(``vtpu://host:port``; each method there also takes a keyword-only ``timeout=``).
:class:`vtpu.aio.AsyncRemoteEngine` has the same methods as coroutines.

Every argument is already packed: 18-byte keys, N*18-byte key blobs (or ``(N, 9)``
uint16 arrays), ``(2, 9)`` uint16 patterns, ``(R, 2, 9)`` int32 deltas; the facade parses
what callers pass. Results are plain values (:class:`~vtpu.coords.Scroll` objects,
ints, arrays, dicts) with the same meaning on every backend; the facade turns them into
the instructions' results.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from vtpu._core import check_key
from vtpu.coords import NameTable, Scroll
from vtpu.session import finish

__all__ = ["Backend", "BackendPipeline", "EnginePipeline"]


@runtime_checkable
class Backend(Protocol):
    """What a store must offer to sit behind the facade.

    :ivar names: the name table (the store's own, or a client's cache of it).
    :ivar thread_safe: whether the backend serialises concurrent calls itself (a remote
        connection has its lock); otherwise the facade holds its lock around writes.
    """

    names: NameTable
    thread_safe: bool

    def get(self, key: bytes) -> Scroll | None:
        """The scroll at an 18-byte key, or None."""

    def get_many(self, blob: bytes, content_only: bool = False) -> Sequence:
        """N scrolls (None where nothing is stored) in key order; with ``content_only``
        their contents only."""

    def put(self, key: bytes, content: Any, if_version: int | None = None) -> int:
        """Write one scroll; returns its new version.

        :raises VersionConflict: ``if_version`` is not the stored version (0: absent).
        """

    def put_many(self, blob: bytes, contents: Any) -> list[int]:
        """Write N scrolls (a list of contents, or an array whose row i is content i)."""

    def delete(self, key: bytes) -> int:
        """Delete one scroll; returns 1 if it existed, else 0."""

    def delete_many(self, blob: bytes) -> int:
        """Delete N keys; returns how many existed."""

    def delete_range(self, pattern: np.ndarray) -> int:
        """Delete every scroll matching a pattern; returns how many."""

    def range(self, pattern: np.ndarray, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False) -> Any:
        """Scrolls matching a pattern in coordinate order, starting after ``after``; with
        ``keys_only`` their coordinates as an ``(M, 9)`` uint16 array."""

    def count(self, pattern: np.ndarray) -> int:
        """How many scrolls match a pattern."""

    def nearest(self, c: np.ndarray, k: int = 10, metric: str = "l1",
                within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k stored coordinates nearest to ``c``: ``(coords (m, 9), dists (m,))``."""

    def hier(self, c: np.ndarray, direction: str) -> np.ndarray | None:
        """The NEXT/PREV stored coordinate in document order, or None."""

    def attend(self, q: Any, key_pattern: np.ndarray, top_k: int | None = None,
               values: Any = None, return_output: bool = True,
               mode: str | None = "auto") -> dict:
        """Attention of one query over the scrolls matching ``key_pattern`` scored as
        ``mode`` says ("auto", "dot" or "distance"): a dict with ``keys`` (m, 9),
        ``scores``, ``weights``, ``contents``, ``output``, ``n``, ``mode``."""

    def attend_many(self, queries: Any, key_patterns: np.ndarray, top_k: int | None = None,
                    values: Any = None, return_weights: bool = False) -> dict:
        """Batched attention: a dict with ``outputs`` (Q, d_v), ``counts`` (Q,) and
        ``weights`` when asked."""

    def kg(self, start: np.ndarray, deltas: np.ndarray, hops: int = 1,
           max_frontier: int = 10000) -> list:
        """Multi-hop traversal; the scrolls of the final frontier in coordinate order."""

    def intern(self, names: list) -> list:
        """Ids of names (0xF000 + index), interning unknown ones."""

    def name_table(self) -> list:
        """The whole name table; index i is id 0xF000 + i."""

    def reclaim_names(self) -> int:
        """Free the ids of names no stored key uses; returns how many."""

    def health(self) -> dict:
        """``{'status': 'ok', ...}``."""

    def stats(self) -> dict:
        """Store-side statistics."""

    def import_phext(self, text: str, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext document; returns how many."""

    def export_phext(self, pattern: np.ndarray | None = None,
                     skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document."""

    def pipeline(self, raise_on_error: bool = True) -> "BackendPipeline":
        """A queue of calls (the methods above) run together by ``execute()``."""

    def close(self) -> None:
        """Release the connection or the durable store."""


@runtime_checkable
class BackendPipeline(Protocol):
    """Queued backend calls: the :class:`Backend` methods queue (their results come from
    :meth:`execute`, in order)."""

    results: list | None

    def get_each(self, keys: list) -> "BackendPipeline":
        """Queue one ``get`` per 18-byte key, in order (a facade pipeline's CGETs)."""

    def execute(self) -> list:
        """Run every queued call; then raise the first error (or return them as values).

        :returns: one result per queued call.
        """


_NO_KW: dict = {}  # the keywords of a queued get (never changed)


class EnginePipeline:
    """Queued calls on an in-process engine, run in order by :meth:`execute`.

    Every :class:`Backend` method of the engine can be queued; a failing call does not
    stop the ones after it (like a remote pipeline), and the first error is raised after
    all ran.

    :param engine: the :class:`vtpu.engine.Engine`.
    :param raise_on_error: raise the first error from :meth:`execute` (else return it as
        a value in the results).
    """

    def __init__(self, engine: Any, raise_on_error: bool = True):
        self._engine = engine
        self._queue: list = []
        self.raise_on_error = raise_on_error
        self.results: list | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("pipeline", "close", "names", "thread_safe"):
            raise AttributeError(name)
        method = getattr(self._engine, name)

        def queue(*args: Any, **kw: Any) -> "EnginePipeline":
            self._queue.append((method, args, kw))
            return self

        queue.__doc__ = f"Queue :meth:`Engine.{name}`; its result comes from execute()."
        return queue

    def get_each(self, keys: list) -> "EnginePipeline":
        """Queue one :meth:`Engine.get` per key, in order.

        :raises InterfaceError: a key that is not 18 bytes (nothing is queued).
        """
        get = self._engine.get
        keys = [check_key(k) for k in keys]
        self._queue.extend([(get, (k,), _NO_KW) for k in keys])
        return self

    def execute(self) -> list:
        """Run every queued call in order; raise the first error after all ran.

        :returns: one result per queued call (exception objects for failed calls when
            ``raise_on_error`` is false).
        """
        queue, self._queue = self._queue, []
        results = []
        for method, args, kw in queue:
            try:
                results.append(method(*args, **kw))
            except Exception as exc:  # reported after every call ran, like a remote pipeline
                results.append(exc)
        self.results = results
        return finish(results, self.raise_on_error)
