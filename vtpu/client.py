"""The facade: ``vtpu.connect(url)`` and the ten instructions as client methods.

A :class:`Client` turns what callers pass (coordinate strings, lists, ``(N, 9)`` arrays,
18-byte keys) into packed forms and calls a *backend* with the engine's method names:
the :class:`~vtpu.engine.Engine` itself for ``mem://`` and ``file://DIR``, or a
:class:`~vtpu.netclient.RemoteEngine` for ``vtpu://host:port``. The same facade, the
same semantics, whichever backend.

CDELTA, CROUTE, CMOE and CHIER UP are pure and computed here, vectorised, without a
round trip; they are specified (PROTOCOL.md) so every client agrees.

Thread safety: a Client may be shared between threads; calls are serialised by a lock.
After ``os.fork()`` a remote client reconnects in the child on first use.
"""
from __future__ import annotations

import threading
from time import perf_counter as _perf
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import numpy as np

from vtpu import _core
from vtpu.coords import (
    NameTable,
    Scroll,
    apply_delta_any,
    is_pattern_text,
    to_coords,
    to_delta,
    to_key,
    to_keys_blob,
    to_pattern,
)
from vtpu.errors import CoordinateError, InterfaceError

__all__ = ["Client", "ClientPipeline", "vTPU", "connect", "AttentionRecord", "AttentionResult"]


class AttentionRecord(dict):
    """One attended key: ``r['coordinate']``, ``r['score']``, ``r['weight']``, ``r['content']``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class AttentionResult(list):
    """CATTEND's top-k records (best first) plus the whole-distribution results.

    :ivar output: weighted sum of value vectors (None without ``values=``).
    :ivar n: number of keys matched (the softmax ran over all of them).
    :ivar mode: ``"dot"`` (vectors) or ``"distance"`` (coordinate fallback).
    """

    def __init__(self, records, output=None, n=0, mode="dot"):
        super().__init__(records)
        self.output = output
        self.n = n
        self.mode = mode

    @property
    def scores(self) -> np.ndarray:
        """Scores of the returned records."""
        return np.array([r["score"] for r in self], dtype=np.float64)

    @property
    def weights(self) -> np.ndarray:
        """Softmax weights of the returned records."""
        return np.array([r["weight"] for r in self], dtype=np.float64)


def _is_delta_text(text: str) -> bool:
    return any(ch in text for ch in "+=-")


class Client:
    """A vtpu client over any backend. Create it with :func:`connect`.

    Every method takes coordinates as text (``"1.2.3/4.5.6/7.8.9"``, names allowed),
    18-byte keys, 9-int sequences or uint16 arrays; batched ``*_many`` methods take lists
    or ``(N, 9)`` arrays and make one call.

    Error handling
        Everything raised is a :class:`~vtpu.errors.VTPUError`; catch classes, not
        message texts. Malformed input raises :class:`~vtpu.errors.CoordinateError` or
        :class:`~vtpu.errors.InterfaceError` (both ``ValueError``), locally before
        anything is sent or as the server's ``COORD``/``ARG`` reply; nothing stored
        changes and the connection stays open. Other server answers raise
        :class:`~vtpu.errors.ServerError` subclasses (``VersionConflict``,
        ``LimitError``, ``NotFoundError``, ``AuthError``) and the connection stays
        open, except after ``AuthError``. :class:`~vtpu.errors.InternalError` is a
        server bug (the traceback is in the server's log), not the caller's fault.
        Transport failures raise :class:`~vtpu.errors.ConnectionError` /
        :class:`~vtpu.errors.TimeoutError`; the socket is closed and the next call
        reconnects, and only idempotent calls are retried automatically. The full
        table is in :class:`vtpu.netclient.RemoteEngine`.
    """

    def __init__(self, backend, url: str = ""):
        self._b = backend
        self.url = url
        self._lock = threading.RLock()
        self._calls = 0
        self._errors = 0
        self._time = 0.0
        self._ops: dict[str, int] = {}
        self._reads = 0          # cget / cput calls, counted apart from _ops to keep them lean
        self._read_time = 0.0
        self._writes = 0
        self._write_time = 0.0
        from vtpu.engine import Engine

        self._local = isinstance(backend, Engine)

    # -- plumbing -----------------------------------------------------------------------

    @property
    def names(self) -> NameTable:
        """The name table (a cache of the server's for remote clients)."""
        return self._b.names

    @property
    def backend(self):
        """The engine (embedded) or remote engine this client calls."""
        return self._b

    def _run(self, op: str, fn, *args, **kw):
        t0 = _perf()
        try:
            with self._lock:
                return fn(*args, **kw)
        except BaseException:
            self._errors += 1
            raise
        finally:
            self._calls += 1
            self._time += _perf() - t0
            self._ops[op] = self._ops.get(op, 0) + 1

    def _key(self, c) -> bytes:
        return to_key(c, self.names)

    def _fmt(self, arr: np.ndarray) -> list[str]:
        return _core.format_coords(np.ascontiguousarray(arr), self.names)

    def close(self) -> None:
        """Close the connection (remote) or the durable store (file://)."""
        close = getattr(self._b, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<vtpu.Client {self.url or type(self._b).__name__}>"

    # -- CGET / CPUT / CDEL -------------------------------------------------------------

    def cget(self, coord) -> Scroll | None:
        """CGET: the scroll at a coordinate, or None.

        :param coord: coordinate text, 18-byte key, 9 ints or (9,) array.
        :returns: :class:`~vtpu.coords.Scroll` (also readable as ``s['content']``) or None.
        :raises CoordinateError: malformed coordinate.
        """
        # The hottest call: no lock (a point read is one dict lookup, atomic under the
        # GIL, or a remote call whose connection has its own lock) and cheap accounting.
        t0 = _perf()
        if type(coord) is bytes and len(coord) == 18:
            key = coord
        else:
            # A (9,) uint16 row is packed in C; anything else (text...) by to_key.
            key = _core.key_of(coord) or self._key(coord)
        try:
            s = self._b.get(key)
        except BaseException:
            self._errors += 1
            raise
        self._reads += 1
        self._read_time += _perf() - t0
        return s

    def cget_many(self, coords, content_only: bool = False) -> list:
        """Batched CGET in one call: a list of Scroll-or-None in input order.

        :param coords: list of coordinates, an (N, 9) uint16 array or an N*18-byte blob.
        :param content_only: return only the contents (like Redis MGET returns values):
            a list of N contents, ``None`` where nothing is stored (a stored ``None``
            content reads the same). Remotely the reply carries no keys, versions or
            times, and no Scroll objects are made.
        :returns: a list of N Scrolls / None, or of N contents with ``content_only``.
        :raises CoordinateError: a malformed coordinate.
        """
        blob = to_keys_blob(coords, self.names)
        if content_only:
            return self._run("cget_many", self._b.get_many, blob, content_only=True)
        return self._run("cget_many", self._b.get_many, blob)

    def cput(self, coord, content: Any, if_version: int | None = None) -> int:
        """CPUT: write a scroll and return its new version.

        :param content: str, bytes, numpy array (dtype and shape kept) or a msgpack-able value.
        :param if_version: compare-and-set: write only if the stored version is this
            (0: only if nothing is stored).
        :raises VersionConflict: the compare-and-set failed (nothing written).
        """
        # Hot like cget: the embedded engine is locked (its indexes change), a remote
        # backend serialises on its own connection lock.
        t0 = _perf()
        if type(coord) is bytes and len(coord) == 18:
            key = coord
        else:
            key = _core.key_of(coord) or self._key(coord)
        try:
            if self._local:
                with self._lock:
                    v = self._b.put(key, content, if_version)
            else:
                v = self._b.put(key, content, if_version)
        except BaseException:
            self._errors += 1
            raise
        self._writes += 1
        self._write_time += _perf() - t0
        return v

    def cput_many(self, coords, contents) -> list:
        """Batched CPUT in one call; returns the new versions.

        :param coords: list of coordinates or an (N, 9) uint16 array.
        :param contents: list of N contents, or an array whose row i is content i.
        """
        blob = to_keys_blob(coords, self.names)
        return self._run("cput_many", self._b.put_many, blob, contents)

    def cdel(self, target) -> int:
        """CDEL: delete the scroll at a coordinate, or every scroll matching a pattern.

        :returns: how many scrolls were deleted.
        """
        if isinstance(target, str) and is_pattern_text(target):
            return self._run("cdel", self._b.delete_range, to_pattern(target, self.names))
        return self._run("cdel", self._b.delete, self._key(target))

    def cdel_many(self, coords) -> int:
        """Batched CDEL of many coordinates; returns how many existed."""
        return self._run("cdel_many", self._b.delete_many, to_keys_blob(coords, self.names))

    # -- CRANGE -------------------------------------------------------------------------

    def crange(self, pattern, limit: int | None = None, keys_only: bool = False,
               count: bool = False, after=None, as_array: bool = False):
        """CRANGE: scrolls matching a pattern, in coordinate order.

        :param pattern: text with ``*``, ``[a:b]``, numbers and names, or (2, 9) bounds.
        :param limit: at most this many (a page).
        :param keys_only: return coordinates (text, or an (M, 9) array with ``as_array``).
        :param count: return only how many match.
        :param after: exclusive start coordinate (the last one of the previous page).
        :returns: list of Scroll, list of str / (M, 9) array, or int.
        """
        p = to_pattern(pattern, self.names)
        if count:
            return self._run("crange", self._b.count, p)
        akey = None if after is None else self._key(after)
        res = self._run("crange", self._b.range, p, limit, akey, keys_only)
        if keys_only and not as_array:
            return self._fmt(res)
        return res

    def crange_iter(self, pattern, page_size: int = 10000) -> Iterator[Scroll]:
        """Stream every scroll matching a pattern, fetched in pages of ``page_size``."""
        p = to_pattern(pattern, self.names)
        after = None
        while True:
            page = self._run("crange", self._b.range, p, page_size, after, False)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].key

    def ccount(self, pattern) -> int:
        """How many scrolls match a pattern."""
        return self._run("ccount", self._b.count, to_pattern(pattern, self.names))

    # -- CDELTA (pure) --------------------------------------------------------------------

    def cdelta(self, base, delta):
        """CDELTA: coordinate arithmetic, computed locally.

        :param base: a coordinate (text -> text result), or a list / (N, 9) array of them
            (list -> list of text, array -> array).
        :param delta: e.g. ``"+0.0.0/+0.0.5/+0.0.0"``: per component add (``+n``/``-n``),
            set (``=n`` or a name) or wildcard (``*``, which makes the result a pattern).
        :returns: same shape as ``base``; patterns come back as text.
        :raises CoordinateError: a result leaves 0..61439 (never clamped).
        """
        names = self.names
        d = to_delta(delta, names)
        if isinstance(base, str):
            if is_pattern_text(base):
                raise CoordinateError(f"CDELTA takes a coordinate, got the pattern {base!r}")
            res = apply_delta_any(_core.parse_coord(base, names).reshape(1, 9), d)
            if isinstance(res, list):
                return _core.format_pattern(res[0], names)
            return _core.format_coord(res[0], names)
        arr = to_coords(base, names)
        res = apply_delta_any(arr, d)
        if isinstance(base, np.ndarray):
            return res if not isinstance(res, list) else np.stack(res)
        if isinstance(res, list):
            return [_core.format_pattern(p, names) for p in res]
        return self._fmt(res)

    # -- CNEAREST / CHIER -----------------------------------------------------------------

    def cnearest(self, coord, k: int = 10, metric: str = "l1", within=None,
                 as_array: bool = False):
        """CNEAREST: the k stored coordinates nearest to ``coord``.

        :param metric: ``"l1"`` (sum of absolute component differences) or ``"hamming"``
            (number of differing components).
        :param within: only consider coordinates matching this pattern.
        :returns: list of ``(coordinate, distance)`` nearest first (ties by coordinate
            order), or ``(coords (m, 9), dists (m,))`` arrays with ``as_array``.
        """
        if metric not in ("l1", "hamming"):
            raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
        c = _core.unpack(self._key(coord))
        w = None if within is None else to_pattern(within, self.names)
        coords, dists = self._run("cnearest", self._b.nearest, c, int(k), metric, w)
        if as_array:
            return coords, dists
        return list(zip(self._fmt(coords), (int(x) for x in dists)))

    def chier(self, coord, direction: str = "UP"):
        """CHIER: hierarchical navigation.

        :param direction: ``UP`` (the coordinate with its last concrete component made
            ``*``, as pattern text), ``DOWN`` (coordinates of stored scrolls under the
            pattern), ``NEXT`` / ``PREV`` (the neighbouring stored coordinate in document
            order, or None).
        """
        d = str(direction).upper()
        names = self.names
        if d == "UP":
            p = to_pattern(coord, names).copy()
            concrete = np.flatnonzero(p[0] == p[1])
            if len(concrete):
                j = concrete[-1]
                p[0, j], p[1, j] = 0, 0xFFFF
            return _core.format_pattern(p, names)
        if d == "DOWN":
            p = to_pattern(coord, names)
            return self._fmt(self._run("chier", self._b.range, p, None, None, True))
        if d in ("NEXT", "PREV"):
            c = _core.unpack(self._key(coord))
            res = self._run("chier", self._b.hier, c, d)
            return None if res is None else _core.format_coord(res, names)
        raise InterfaceError(f"direction must be UP, DOWN, NEXT or PREV, got {direction!r}")

    # -- CROUTE / CMOE (pure) -------------------------------------------------------------

    def croute(self, coord, num_nodes: int, level: int = 3):
        """CROUTE: the node (0..num_nodes-1) owning a coordinate, or an int array for many.

        jump_hash(xxh64(packed first ``level`` components), num_nodes): a subtree sharing
        those components stays on one node; every client computes the same answer.
        """
        if isinstance(coord, (str, bytes)) or (isinstance(coord, np.ndarray) and coord.ndim == 1):
            arr = _core.unpack(self._key(coord)).reshape(1, 9)
            return int(_core.route(arr, num_nodes, level)[0])
        return _core.route(to_coords(coord, self.names), num_nodes, level)

    def cmoe(self, token, num_experts: int, top_k: int = 1):
        """CMOE: hash routing of a token to experts (hash-layer MoE).

        :param token: a coordinate, a pattern (its bounds are hashed), or a list / (N, 9)
            array of token coordinates (then an int array comes back).
        :returns: expert id, or a list of ``top_k`` distinct experts; arrays for many.
        """
        names = self.names
        if isinstance(token, str):
            return _core.moe_pattern(to_pattern(token, names), num_experts, top_k)
        if isinstance(token, (bytes, np.ndarray)) and (
                isinstance(token, bytes) or token.ndim == 1):
            arr = _core.unpack(self._key(token)).reshape(1, 9)
            res = _core.moe(arr, num_experts, top_k)
            return int(res[0]) if top_k == 1 else [int(x) for x in res[0]]
        return _core.moe(to_coords(token, names), num_experts, top_k)

    cmoe_many = cmoe

    # -- CATTEND --------------------------------------------------------------------------

    def _values_arg(self, values):
        if values is None:
            return None
        names = self.names
        if isinstance(values, str):
            return to_delta(values, names) if _is_delta_text(values) else to_pattern(values, names)
        if isinstance(values, np.ndarray) and values.shape == (2, 9) and values.dtype in (
                np.int32, np.uint16):
            return np.ascontiguousarray(values)
        raise InterfaceError("values must be a pattern or a delta")

    def cattend(self, query_coord=None, key_pattern=None, top_k: int | None = None,
                values=None, query=None) -> AttentionResult:
        """CATTEND: attention of a query over the scrolls matching ``key_pattern``.

        When scrolls hold vectors: scores q.k/sqrt(d), softmax weights over every matched
        key, the top-k records, and with ``values`` (a pattern aligned with the keys, or a
        delta from each key to its value) the weighted sum of value vectors in
        ``result.output``. Text scrolls fall back to 1/(1 + L1 distance).

        :param query_coord: coordinate of the scroll holding the query vector.
        :param query: the query vector itself (instead of ``query_coord``).
        :returns: :class:`AttentionResult` of :class:`AttentionRecord` (``r['coordinate']``,
            ``r['score']``, ``r['weight']``, ``r['content']``).
        """
        if key_pattern is None:
            raise InterfaceError("cattend needs key_pattern")
        if query is not None:
            q = np.asarray(query)
        elif query_coord is not None:
            q = self._key(query_coord)
        else:
            raise InterfaceError("cattend needs query_coord or query")
        p = to_pattern(key_pattern, self.names)
        res = self._run("cattend", self._b.attend, q, p, top_k=top_k,
                        values=self._values_arg(values))
        coords = self._fmt(res["keys"])
        recs = [AttentionRecord(coordinate=c, score=float(s), weight=float(w), content=t)
                for c, s, w, t in zip(coords, res["scores"], res["weights"], res["contents"])]
        return AttentionResult(recs, res["output"], res["n"], res["mode"])

    def cattend_many(self, queries, key_patterns, values=None, return_weights: bool = False):
        """Batched CATTEND in one call (windowed / sparse attention).

        :param queries: (Q, d) float array of query vectors, or a list of Q query coordinates.
        :param key_patterns: list of Q patterns or a (Q, 2, 9) uint16 array.
        :param values: None (keys are values) or a delta from each key to its value.
        :returns: dict ``outputs`` (Q, d_v) and ``counts`` (Q,) (+ ``weights``).
        """
        names = self.names
        if isinstance(queries, np.ndarray) and queries.dtype.kind == "f":
            q = queries
        else:
            q = to_keys_blob(queries, names)
        if isinstance(key_patterns, np.ndarray):
            kp = np.ascontiguousarray(key_patterns, dtype=np.uint16)
        else:
            kp = np.stack([to_pattern(p, names) for p in key_patterns]) if len(key_patterns) \
                else np.empty((0, 2, 9), dtype=np.uint16)
        v = None if values is None else to_delta(values, names)
        return self._run("cattend_many", self._b.attend_many, q, kp, values=v,
                         return_weights=return_weights)

    # -- CKG ------------------------------------------------------------------------------

    def ckg(self, start_coord, relation_deltas, hops: int = 1, max_frontier: int = 10000) -> list:
        """CKG: multi-hop knowledge-graph traversal.

        From each frontier coordinate apply each relation delta; the scrolls found there
        are edges; an edge whose content is a coordinate (or a list of them) leads there,
        otherwise the edge itself is the next frontier. Visited set, frontier cut to
        ``max_frontier``.

        :param start_coord: a coordinate, or a pattern (every stored match is a start).
        :param relation_deltas: a delta or a list of deltas.
        :returns: the scrolls at the final frontier, in coordinate order.
        """
        names = self.names
        if isinstance(relation_deltas, (str, np.ndarray)) and not (
                isinstance(relation_deltas, np.ndarray) and relation_deltas.ndim == 3):
            relation_deltas = [relation_deltas]
        ds = np.stack([to_delta(d, names) for d in relation_deltas]) if len(relation_deltas) \
            else np.empty((0, 2, 9), dtype=np.int32)
        start = to_pattern(start_coord, names)
        return self._run("ckg", self._b.kg, start, ds, int(hops), int(max_frontier))

    # -- names, admin ---------------------------------------------------------------------

    def intern(self, names) -> list:
        """Ids of names (0xF000...), interning the unknown ones."""
        return self._run("intern", self._b.intern, list(names))

    def health(self) -> dict:
        """The store's health: ``{'status': 'ok', ...}``."""
        return self._run("health", self._b.health)

    def stats(self) -> dict:
        """Store-side statistics (counts, index sizes, memory, latencies when remote)."""
        return self._run("stats", self._b.stats)

    def get_stats(self) -> dict:
        """Client-side statistics, as the prototype's ``get_stats()``."""
        calls = self._calls + self._reads + self._writes
        total = self._time + self._read_time + self._write_time
        by_op = dict(self._ops)
        for op, n in (("cget", self._reads), ("cput", self._writes)):
            if n:
                by_op[op] = by_op.get(op, 0) + n
        return {"total_calls": calls, "errors": self._errors,
                "total_time_s": total,
                "avg_latency_ms": (total / calls * 1e3) if calls else 0.0,
                "by_op": by_op}

    def import_phext(self, source, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext file (path) or document (str starting with text).

        :returns: how many scrolls were stored.
        """
        text = _read_phext_source(source)
        return self._run("import_phext", self._b.import_phext, text, skip_invalid)

    def export_phext(self, path=None, pattern=None, skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document.

        :param path: also write it to this file (bytes as UTF-8, newlines untouched).
        :returns: the document text.
        :raises PhextError: a scroll a phext file cannot hold (unless ``skip_invalid``).
        """
        p = None if pattern is None else to_pattern(pattern, self.names)
        text = self._run("export_phext", self._b.export_phext, p, skip_invalid)
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return text

    def pipeline(self, raise_on_error: bool = True) -> "ClientPipeline":
        """Queue calls and send them in one write (remote) or run them in one go (embedded).

        ``with client.pipeline() as p: p.cput(c1, x); p.cget(c2)`` then ``p.results``;
        or call ``p.execute()``. Every reply is read before the first error is raised
        (unless ``raise_on_error`` is false: errors are then returned in the results).
        Results are the plain engine results: Scroll / None, versions, counts, lists.
        """
        make = getattr(self._b, "pipeline", None)
        pipe = make(raise_on_error=raise_on_error) if make is not None else \
            _LocalPipeline(self._b, raise_on_error)
        return ClientPipeline(pipe, self.names, self.url)


class _LocalPipeline:
    """Queued calls on an embedded engine, run in order by :meth:`execute`."""

    def __init__(self, engine, raise_on_error: bool):
        self._engine = engine
        self._queue: list = []
        self.raise_on_error = raise_on_error
        self.results: list | None = None

    def __getattr__(self, name: str):
        method = getattr(self._engine, name)

        def queue(*args, **kw):
            self._queue.append((method, args, kw))
            return self
        return queue

    def execute(self) -> list:
        """Run every queued call in order; raise the first error after all ran."""
        queue, self._queue = self._queue, []
        results, first = [], None
        for method, args, kw in queue:
            try:
                results.append(method(*args, **kw))
            except Exception as exc:  # reported after every call ran, like a remote pipeline
                results.append(exc)
                first = first or exc
        self.results = results
        if first is not None and self.raise_on_error:
            raise first
        return results


class ClientPipeline(Client):
    """A :class:`Client` whose calls are queued; see :meth:`Client.pipeline`.

    Point and batch calls (cget, cput, cdel and their ``_many`` forms, crange, ccount)
    can be queued; calls whose results the facade post-processes cannot.
    """

    def __init__(self, pipe, names: NameTable, url: str):
        super().__init__(pipe, url)
        self._names = names
        self.results: list | None = None

    @property
    def names(self) -> NameTable:
        """The parent client's name table."""
        return self._names

    def _key(self, c) -> bytes:
        return to_key(c, self._names)

    def _run(self, op: str, fn, *args, **kw):
        fn(*args, **kw)
        return None

    def cget(self, coord) -> None:
        """Queue a CGET; its result (Scroll or None) comes with :meth:`execute`."""
        # Queued by the thousand: no timing or counters here, and a (9,) uint16 row is
        # packed in C.
        if type(coord) is bytes and len(coord) == 18:
            self._b.get(coord)
        else:
            self._b.get(_core.key_of(coord) or to_key(coord, self._names))

    def crange(self, pattern, limit=None, keys_only=False, count=False, after=None,
               as_array=False):
        """Queue a CRANGE (``keys_only`` gives an array in a pipeline)."""
        return super().crange(pattern, limit, keys_only, count, after, as_array=True)

    def _not_queued(self, *a, **kw):
        raise InterfaceError("this call cannot be queued in a pipeline")

    cnearest = chier = cattend = cattend_many = ckg = crange_iter = _not_queued

    def execute(self) -> list:
        """Send / run every queued call; returns the results in order."""
        self.results = self._b.execute()
        return self.results

    def __enter__(self) -> "ClientPipeline":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.execute()


def _read_phext_source(source) -> str:
    import os

    if isinstance(source, (bytes, bytearray)):
        return bytes(source).decode("utf-8")
    if isinstance(source, os.PathLike) or (isinstance(source, str) and len(source) < 4096
                                           and os.path.exists(source)):
        with open(source, "r", encoding="utf-8", newline="") as f:
            return f.read()
    if isinstance(source, str):
        return source
    raise InterfaceError(f"import_phext takes a path or the document text, got {type(source).__name__}")


def connect(url: str = "mem://", **kwargs) -> Client:
    """Open a client.

    :param url: ``mem://`` (in-process engine), ``file://DIR`` (in-process, durable in
        DIR), or ``vtpu://host:port`` (a server; ``?token=T`` allowed).
    :param kwargs: for ``file://``: ``fsync`` (always|everysec|never); for ``vtpu://``:
        ``token``, ``timeout``, ``connect_timeout``, ``max_frame_size``.
    :returns: a :class:`Client`.
    :raises InterfaceError: an unknown scheme.
    """
    u = urlparse(url)
    scheme = u.scheme.lower()
    if scheme == "mem":
        from vtpu.engine import Engine

        return Client(Engine(), url)
    if scheme == "file":
        from vtpu.engine import Engine
        from vtpu.storage import Storage

        path = (u.netloc + u.path) if u.netloc not in ("", "localhost") else u.path
        if not path:
            raise InterfaceError(f"file:// needs a directory: {url!r}")
        return Client(Engine(Storage(path, **kwargs)), url)
    if scheme in ("vtpu", "tcp"):
        from vtpu.netclient import RemoteEngine

        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if "token" in q and "token" not in kwargs:
            kwargs["token"] = q["token"]
        return Client(RemoteEngine(u.hostname or "127.0.0.1", u.port or 1337, **kwargs), url)
    raise InterfaceError(f"unknown URL scheme in {url!r}: use mem://, file://DIR or vtpu://host:port")


class vTPU(Client):
    """The prototype's constructor, kept: ``vTPU(host="localhost", port=1337)``.

    Connects to a vtpu server over the binary protocol (lazily, on first call).
    """

    def __init__(self, host: str = "localhost", port: int = 1337, **kwargs):
        from vtpu.netclient import RemoteEngine

        super().__init__(RemoteEngine(host, port, **kwargs), f"vtpu://{host}:{port}")
