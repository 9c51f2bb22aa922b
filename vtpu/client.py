"""The facade: ``vtpu.connect(url)`` and the ten instructions as client methods.

A :class:`Client` turns what callers pass (coordinate strings, lists, ``(N, 9)`` arrays,
18-byte keys) into packed forms and calls a *backend* (:class:`vtpu.backend.Backend`)
with the engine's method names: the :class:`~vtpu.engine.Engine` itself for ``mem://``
and ``file://DIR``, or a :class:`~vtpu.netclient.RemoteEngine` for ``vtpu://host:port``.
The same facade, the same semantics, whichever backend; each method returns one type.
:class:`ClientPipeline` wraps a client and queues the same calls.

CDELTA, CROUTE, CMOE and CHIER UP are pure and computed here, vectorised, without a
round trip; they are specified (PROTOCOL.md) so every client agrees.

Thread safety: a Client may be shared between threads; calls are serialised by a lock.
After ``os.fork()`` a remote client reconnects in the child on first use.
"""
from __future__ import annotations

import os
import threading
import warnings
from time import perf_counter as _perf
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlparse

import numpy as np

from vtpu import _core
from vtpu.coords import (
    EVERYTHING,
    NameTable,
    Scroll,
    apply_delta_any,
    is_pattern_text,
    read_delta,
    read_key,
    read_keys,
    read_pattern,
    to_coords,
    to_delta,
    to_key,
    to_keys_blob,
    to_pattern,
)
from vtpu.engine import MAX_FRONTIER, MAX_HOPS, MAX_K, check_count, check_metric, check_name_list
from vtpu.errors import CoordinateError, InterfaceError, NotFoundError
from vtpu.session import finish

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


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=4)


class _Call(NamedTuple):
    """One facade call, parsed: which backend method to call with what, and how its
    result becomes the instruction's result. ``method`` None: answered without the
    backend: a pure result, ``args[0]``, or with ``post`` a read answered without the
    store, ``post(args[0])`` (counted as a call; it may raise).
    """

    op: str
    method: str | None
    args: tuple
    kw: dict
    post: Callable[[Any], Any] | None


_NO_KW: dict = {}


class Client:
    """A vtpu client over any backend. Create it with :func:`connect`.

    Every method takes coordinates as text (``"1.2.3/4.5.6/7.8.9"``, names allowed),
    18-byte keys, 9-int sequences or uint16 arrays; batched ``*_many`` methods take lists
    or ``(N, 9)`` arrays and make one call. Each method returns one type, the same on
    every backend (:class:`vtpu.backend.Backend`: the in-process engine or a server).

    Names
        Writes (cput, cput_many) and the hashes (croute, cmoe) intern the names they
        use. Reads never do: a name the store never interned is in no stored
        coordinate, so a read naming it matches nothing (cget -> None, crange -> [],
        ccount -> 0, cdel -> 0, cnearest -> [], ckg -> [], CATTEND keys -> empty; a
        CATTEND query there -> NotFoundError) and the durable 4096-name table does not
        grow. CDELTA and CHIER UP on text are pure text computations and need no ids.

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
        # A backend that does not serialise its own calls (the in-process engine) gets
        # the facade's lock around writes; reads of it are single dict lookups.
        self._lock_writes = not backend.thread_safe
        self._calls = 0
        self._errors = 0
        self._time = 0.0
        self._ops: dict[str, int] = {}
        # cget, counted and timed in C around the backend's get (apart from _ops, to keep
        # the hottest call lean); cput counted apart from _ops too.
        self._reads = _core.CallMeter(backend.get, lambda c, b=backend: read_key(c, b.names))
        # The hottest call as one C call (the meter does what cget does; a subclass that
        # overrides cget keeps its own). The resolver holds the backend, not the client,
        # so no reference cycle keeps a dropped client (and its socket) alive.
        if type(self).cget is Client.cget:
            self.cget = self._reads.read
        # cput likewise: one C call when the backend serialises its own calls (a remote
        # one); the in-process engine's writes take the facade's lock around it.
        self._puts = _core.CallMeter(backend.put, lambda c, b=backend: to_key(c, b.names))
        if type(self).cput is Client.cput and not self._lock_writes:
            self.cput = self._puts.write

    # -- plumbing -----------------------------------------------------------------------

    @property
    def names(self) -> NameTable:
        """The name table (a cache of the server's for remote clients)."""
        return self._b.names

    @property
    def backend(self):
        """The :class:`vtpu.backend.Backend` this client calls (an engine or a remote
        engine)."""
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

    def _now(self, call: _Call):
        """Run a parsed call on the backend and return the instruction's result."""
        if call.method is None:
            if call.post is None:
                return call.args[0]
            return self._run(call.op, call.post, call.args[0])
        r = self._run(call.op, getattr(self._b, call.method), *call.args, **call.kw)
        return r if call.post is None else call.post(r)

    def _key(self, c) -> bytes:
        return to_key(c, self.names)

    def _read_key(self, c) -> bytes | None:
        return read_key(c, self.names)

    def format_coords(self, coords) -> list[str]:
        """Coordinate text of an ``(N, 9)`` uint16 array (names resolved by this client's
        table), e.g. of :meth:`crange_keys`.

        :param coords: ``(N, 9)`` uint16 array.
        :returns: N strings.
        """
        return _core.format_coords(np.ascontiguousarray(coords), self.names)

    _fmt = format_coords

    def close(self) -> None:
        """Close the connection (remote) or the durable store (file://)."""
        self._b.close()

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
        # The hottest call: no lock (a point read is one lookup in the store, atomic
        # under the GIL, or a remote call whose connection has its own lock). An
        # instance's cget is bound to the meter's read (see __init__), which does this
        # in C: an 18-byte key as it is, a (9,) uint16 row packed, anything else by
        # read_key (None: it names a name the store never interned, nothing there).
        return self._reads.read(coord)

    def _plan_cget_many(self, coords, content_only: bool) -> _Call:
        blob, known = read_keys(coords, self.names)
        return _Call("cget_many", "get_many", (blob,),
                     {"content_only": True} if content_only else _NO_KW,
                     None if known is None else (lambda r: _spread(r, known)))

    def cget_many(self, coords, content_only: bool = False):
        """Batched CGET in one call.

        :param coords: list of coordinates, an (N, 9) uint16 array or an N*18-byte blob.
        :param content_only: return only the contents (like Redis MGET returns values):
            a list of N contents, ``None`` where nothing is stored (a stored ``None``
            content reads the same). Remotely the reply carries no keys, versions or
            times, and no Scroll objects are made.
        :returns: N Scrolls / None in input order, as a :class:`vtpu.results.Scrolls`
            (the same column result on every backend), or N contents (a list) with
            ``content_only``.
        :raises CoordinateError: a malformed coordinate.
        """
        return self._now(self._plan_cget_many(coords, content_only))

    def cput(self, coord, content: Any, if_version: int | None = None) -> int:
        """CPUT: write a scroll and return its new version.

        :param content: str, bytes, numpy array (dtype and shape kept) or a msgpack-able value.
        :param if_version: compare-and-set: write only if the stored version is this
            (0: only if nothing is stored).
        :raises VersionConflict: the compare-and-set failed (nothing written).
        """
        # Hot like cget: counted and timed by the write meter. This method runs for a
        # backend that does not serialise its own calls (the embedded engine: its
        # indexes change), under the facade's lock; a remote client's cput is the
        # meter's write itself (bound in __init__).
        with self._lock:
            return self._puts.write(coord, content, if_version)

    def _plan_cput_many(self, coords, contents) -> _Call:
        return _Call("cput_many", "put_many", (to_keys_blob(coords, self.names), contents),
                     _NO_KW, None)

    def cput_many(self, coords, contents) -> list:
        """Batched CPUT in one call; returns the new versions.

        :param coords: list of coordinates or an (N, 9) uint16 array.
        :param contents: list of N contents, or an array whose row i is content i.
        """
        return self._now(self._plan_cput_many(coords, contents))

    def _plan_cdel(self, target) -> _Call:
        if isinstance(target, str) and is_pattern_text(target):
            return _Call("cdel", "delete_range", (read_pattern(target, self.names),), _NO_KW,
                         None)
        key = self._read_key(target)
        if key is None:   # names a name the store never interned: nothing to delete
            return _nothing("cdel", 0)
        return _Call("cdel", "delete", (key,), _NO_KW, None)

    def cdel(self, target) -> int:
        """CDEL: delete the scroll at a coordinate, or every scroll matching a pattern.

        :returns: how many scrolls were deleted.
        """
        return self._now(self._plan_cdel(target))

    def _plan_cdel_many(self, coords) -> _Call:
        return _Call("cdel_many", "delete_many", (read_keys(coords, self.names)[0],), _NO_KW,
                     None)

    def cdel_many(self, coords) -> int:
        """Batched CDEL of many coordinates; returns how many existed."""
        return self._now(self._plan_cdel_many(coords))

    # -- CRANGE -------------------------------------------------------------------------

    def _plan_crange(self, pattern, limit, after, keys_only=False, count=False,
                     as_array=False) -> _Call:
        if count:
            _deprecated("crange(..., count=True)", "ccount(pattern)")
            return self._plan_ccount(pattern)
        p = read_pattern(pattern, self.names)
        akey = self._after_key(after)
        if keys_only:
            if as_array:
                _deprecated("crange(..., keys_only=True, as_array=True)",
                            "crange_keys(pattern)")
                return _Call("crange", "range", (p, limit, akey, True), _NO_KW, None)
            _deprecated("crange(..., keys_only=True)",
                        "crange_keys(pattern) (an array; format_coords() for text)")
            return _Call("crange", "range", (p, limit, akey, True), _NO_KW, self.format_coords)
        return _Call("crange", "range", (p, limit, akey, False), _NO_KW, None)

    def _after_key(self, after) -> bytes | None:
        if after is None:
            return None
        akey = self._read_key(after)
        if akey is None:
            raise CoordinateError(f"after={after!r} names a name the store never interned, "
                                  "so it is no position in the store")
        return akey

    def crange(self, pattern, limit: int | None = None, keys_only: bool = False,
               count: bool = False, after=None, as_array: bool = False) -> list[Scroll]:
        """CRANGE: scrolls matching a pattern, in coordinate order.

        :param pattern: text with ``*``, ``[a:b]``, numbers and names, or (2, 9) bounds.
        :param limit: at most this many (a page).
        :param after: exclusive start coordinate (the last one of the previous page).
        :param keys_only: deprecated, use :meth:`crange_keys` (with ``as_array``: the
            array it returns; without: :meth:`format_coords` of it, a list of str).
        :param count: deprecated, use :meth:`ccount` (returns its int).
        :param as_array: deprecated, see ``keys_only``.
        :returns: a list of :class:`~vtpu.coords.Scroll`.
        """
        return self._now(self._plan_crange(pattern, limit, after, keys_only, count, as_array))

    def _plan_crange_keys(self, pattern, limit, after) -> _Call:
        p = read_pattern(pattern, self.names)
        akey = self._after_key(after)
        return _Call("crange_keys", "range", (p, limit, akey, True), _NO_KW, None)

    def crange_keys(self, pattern, limit: int | None = None, after=None) -> np.ndarray:
        """CRANGE of coordinates only: no contents travel or get decoded.

        :param pattern: as for :meth:`crange`.
        :param limit: at most this many.
        :param after: exclusive start coordinate.
        :returns: an ``(M, 9)`` uint16 array in coordinate order (text:
            :meth:`format_coords`).
        """
        return self._now(self._plan_crange_keys(pattern, limit, after))

    def crange_iter(self, pattern, page_size: int = 10000) -> Iterator[Scroll]:
        """Stream every scroll matching a pattern, fetched in pages of ``page_size``.

        :raises InterfaceError: ``page_size`` is not an integer of 1 or more.
        """
        for page in self._pages(read_pattern(pattern, self.names), page_size):
            yield from page

    def _pages(self, p: np.ndarray, page_size: int) -> Iterator[Any]:
        """The scrolls matching the (2, 9) pattern ``p``, one CRANGE of ``page_size``
        after the last key of the page before at a time, as column results.

        :raises InterfaceError: at once, ``page_size`` is not an integer of 1 or more.
        """
        page_size = check_count(page_size, "page_size", 1)

        def pages():
            after = None
            while True:
                page = self._run("crange", self._b.range, p, page_size, after, False)
                yield page
                if len(page) < page_size:
                    return
                after = page.keys[-18:]

        return pages()

    def _plan_ccount(self, pattern) -> _Call:
        return _Call("ccount", "count", (read_pattern(pattern, self.names),), _NO_KW, None)

    def ccount(self, pattern) -> int:
        """How many scrolls match a pattern."""
        return self._now(self._plan_ccount(pattern))

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
        if isinstance(delta, str) and (isinstance(base, str) or (
                isinstance(base, (list, tuple)) and all(isinstance(b, str) for b in base))):
            names = NameTable()   # text in, text out: names need no ids of the store
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
        return _core.format_coords(np.ascontiguousarray(res), names)

    # -- CNEAREST / CHIER -----------------------------------------------------------------

    def _plan_cnearest(self, coord, k, metric, within, as_array=False) -> _Call:
        # Checked here too: a coordinate naming an unknown name answers without the backend.
        metric = check_metric(metric)
        k = check_count(k, "k", 0, MAX_K)
        key = self._read_key(coord)
        w = None if within is None else read_pattern(within, self.names)
        if as_array:
            _deprecated("cnearest(..., as_array=True)", "cnearest_arrays()")
            post = None
        else:
            fmt = self.format_coords

            def post(r):
                coords, dists = r
                return list(zip(fmt(coords), (int(x) for x in dists)))
        if key is None:   # a coordinate no stored one can be near: it names no known name
            none = (np.empty((0, 9), np.uint16), np.empty(0, np.int64))
            return _Call("cnearest", None, (none,), _NO_KW, post or (lambda r: r))
        return _Call("cnearest", "nearest", (_core.unpack(key), k, metric, w), _NO_KW,
                     post)

    def cnearest(self, coord, k: int = 10, metric: str = "l1", within=None,
                 as_array: bool = False) -> list[tuple[str, int]]:
        """CNEAREST: the k stored coordinates nearest to ``coord``.

        :param metric: ``"l1"`` (sum of absolute component differences) or ``"hamming"``
            (number of differing components).
        :param within: only consider coordinates matching this pattern.
        :param as_array: deprecated, use :meth:`cnearest_arrays`.
        :returns: list of ``(coordinate, distance)`` nearest first (ties by coordinate
            order).
        """
        return self._now(self._plan_cnearest(coord, k, metric, within, as_array))

    def cnearest_arrays(self, coord, k: int = 10, metric: str = "l1",
                        within=None) -> tuple[np.ndarray, np.ndarray]:
        """CNEAREST as arrays (see :meth:`cnearest`).

        :returns: ``(coords (m, 9) uint16, dists (m,) int64)``, nearest first.
        """
        c = self._plan_cnearest(coord, k, metric, within)
        return self._now(c._replace(post=None))

    def _plan_chier(self, coord, direction) -> _Call:
        d = str(direction).upper()
        names = self.names
        if d == "UP":
            if isinstance(coord, str):
                names = NameTable()   # text in, text out: names need no ids of the store
            p = to_pattern(coord, names).copy()
            concrete = np.flatnonzero(p[0] == p[1])
            if len(concrete):
                j = concrete[-1]
                p[0, j], p[1, j] = 0, 0xFFFF
            return _Call("chier", None, (_core.format_pattern(p, names),), _NO_KW, None)
        if d == "DOWN":
            p = read_pattern(coord, names)
            return _Call("chier", "range", (p, None, None, True), _NO_KW, self.format_coords)
        if d in ("NEXT", "PREV"):
            key = self._read_key(coord)
            if key is None:   # names a name the store never interned: no position in it
                return _nothing("chier", None)
            return _Call("chier", "hier", (_core.unpack(key), d), _NO_KW,
                         lambda res: None if res is None else _core.format_coord(res, names))
        raise InterfaceError(f"direction must be UP, DOWN, NEXT or PREV, got {direction!r}")

    def chier(self, coord, direction: str = "UP"):
        """CHIER: hierarchical navigation.

        :param direction: ``UP`` (the coordinate with its last concrete component made
            ``*``, as pattern text), ``DOWN`` (coordinates of stored scrolls under the
            pattern, a list of text), ``NEXT`` / ``PREV`` (the neighbouring stored
            coordinate in document order, or None).
        """
        return self._now(self._plan_chier(coord, direction))

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
            if not _is_delta_text(values):
                return read_pattern(values, names)
            d = read_delta(values, names)
            if d is None:
                raise InterfaceError(f"values {values!r} sets a name the store never interned: "
                                     "no value scroll can be there")
            return d
        if isinstance(values, np.ndarray) and values.shape == (2, 9) and values.dtype in (
                np.int32, np.uint16):
            return np.ascontiguousarray(values)
        raise InterfaceError("values must be a pattern or a delta")

    def _plan_cattend(self, query_coord, key_pattern, top_k, values, query,
                      mode="auto") -> _Call:
        if key_pattern is None:
            raise InterfaceError("cattend needs key_pattern")
        if query is not None:
            q = np.asarray(query)
        elif query_coord is not None:
            q = self._read_key(query_coord)
            if q is None:
                return _refused("cattend", NotFoundError(
                    f"no scroll at the query coordinate {query_coord!r}: it names a name the "
                    "store never interned"))
        else:
            raise InterfaceError("cattend needs query_coord or query")
        p = read_pattern(key_pattern, self.names)
        fmt = self.format_coords

        def post(res) -> AttentionResult:
            coords = fmt(res["keys"])
            recs = [AttentionRecord(coordinate=c, score=float(s), weight=float(w), content=t)
                    for c, s, w, t in zip(coords, res["scores"], res["weights"],
                                          res["contents"])]
            return AttentionResult(recs, res["output"], res["n"], res["mode"])

        return _Call("cattend", "attend", (q, p),
                     {"top_k": top_k, "values": self._values_arg(values), "mode": mode}, post)

    def cattend(self, query_coord=None, key_pattern=None, top_k: int | None = None,
                values=None, query=None, mode: str = "auto") -> AttentionResult:
        """CATTEND: attention of a query over the scrolls matching ``key_pattern``.

        When scrolls hold vectors: scores q.k/sqrt(d), softmax weights over every matched
        key, the top-k records, and with ``values`` (a pattern aligned with the keys, or a
        delta from each key to its value) the weighted sum of value vectors in
        ``result.output``. Text scrolls fall back to 1/(1 + L1 distance) between
        coordinates, weights score/sum.

        :param query_coord: coordinate of the scroll holding the query vector.
        :param query: the query vector itself (instead of ``query_coord``).
        :param mode: ``"auto"``: dot-product scores when the query is a vector, the
            distance fallback when the query scroll and every key scroll hold no vector,
            an error for anything in between; ``"dot"`` or ``"distance"`` force one.
        :returns: :class:`AttentionResult` of :class:`AttentionRecord` (``r['coordinate']``,
            ``r['score']``, ``r['weight']``, ``r['content']``); empty when nothing matches.
        :raises NotFoundError: nothing is stored at ``query_coord`` (unless ``mode`` is
            ``"distance"``, which needs the coordinate only).
        :raises InterfaceError: the query and key sizes differ (both are named), or the
            keys mix vectors and other contents.
        """
        return self._now(self._plan_cattend(query_coord, key_pattern, top_k, values, query,
                                            mode))

    def _plan_cattend_many(self, queries, key_patterns, values, return_weights) -> _Call:
        names = self.names
        if isinstance(queries, np.ndarray) and queries.dtype.kind == "f":
            q = queries
        else:
            q, known = read_keys(queries, names)
            if known is not None:
                i = int(np.flatnonzero(~known)[0])
                return _refused("cattend_many", NotFoundError(
                    f"no scroll at query coordinate {i} ({list(queries)[i]!r}): it names a "
                    "name the store never interned"))
        if isinstance(key_patterns, np.ndarray):
            kp = np.ascontiguousarray(key_patterns, dtype=np.uint16)
        elif not isinstance(key_patterns, (list, tuple)):
            raise InterfaceError(f"key_patterns must be a list of patterns or a (Q, 2, 9) array, "
                                 f"got {type(key_patterns).__name__}")
        else:
            kp = np.stack([read_pattern(p, names) for p in key_patterns]) if len(key_patterns) \
                else np.empty((0, 2, 9), dtype=np.uint16)
        v = None if values is None else read_delta(values, names)
        if values is not None and v is None:
            raise InterfaceError(f"values {values!r} sets a name the store never interned: "
                                 "no value scroll can be there")
        return _Call("cattend_many", "attend_many", (q, kp),
                     {"values": v, "return_weights": return_weights}, None)

    def cattend_many(self, queries, key_patterns, values=None,
                     return_weights: bool = False) -> dict:
        """Batched CATTEND in one call (windowed / sparse attention).

        :param queries: (Q, d) float array of query vectors, or a list of Q query coordinates.
        :param key_patterns: list of Q patterns or a (Q, 2, 9) uint16 array.
        :param values: None (keys are values) or a delta from each key to its value.
        :returns: dict ``outputs`` (Q, d_v) and ``counts`` (Q,) (+ ``weights``).
        """
        return self._now(self._plan_cattend_many(queries, key_patterns, values,
                                                 return_weights))

    # -- CKG ------------------------------------------------------------------------------

    def _plan_ckg(self, start_coord, relation_deltas, hops, max_frontier) -> _Call:
        names = self.names
        if isinstance(relation_deltas, (str, np.ndarray)) and not (
                isinstance(relation_deltas, np.ndarray) and relation_deltas.ndim == 3):
            relation_deltas = [relation_deltas]
        if not isinstance(relation_deltas, (list, tuple, np.ndarray)):
            raise InterfaceError(f"relation_deltas must be a delta or a list of deltas, got "
                                 f"{type(relation_deltas).__name__}")
        # A relation setting a name the store never interned leads to no stored scroll.
        ds = [d for d in (read_delta(d, names) for d in relation_deltas) if d is not None]
        ds = np.stack(ds) if ds else np.empty((0, 2, 9), dtype=np.int32)
        start = read_pattern(start_coord, names)
        return _Call("ckg", "kg", (start, ds, hops, max_frontier), _NO_KW, None)

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
        return self._now(self._plan_ckg(start_coord, relation_deltas, hops, max_frontier))

    # -- names, admin ---------------------------------------------------------------------

    def _plan_intern(self, names) -> _Call:
        return _Call("intern", "intern", (check_name_list(names),), _NO_KW, None)

    def intern(self, names) -> list:
        """Ids of names (0xF000...), interning the unknown ones."""
        return self._now(self._plan_intern(names))

    def reclaim_names(self) -> int:
        """Free the store's name ids that no stored key uses (a flood of junk names
        undone); returns how many, and refreshes this client's name table."""
        n = self._now(_Call("reclaim_names", "reclaim_names", (), _NO_KW, None))
        if n:
            self._now(_Call("name_table", "name_table", (), _NO_KW, None))
        return n

    def health(self) -> dict:
        """The store's health: ``{'status': 'ok', ...}``."""
        return self._now(_Call("health", "health", (), _NO_KW, None))

    def stats(self) -> dict:
        """Store-side statistics (counts, index sizes, memory, latencies when remote)."""
        return self._now(_Call("stats", "stats", (), _NO_KW, None))

    def get_stats(self) -> dict:
        """Client-side statistics, as the prototype's ``get_stats()``."""
        reads, puts = self._reads, self._puts
        calls = self._calls + reads.calls + puts.calls
        total = self._time + reads.seconds + puts.seconds
        by_op = dict(self._ops)
        for op, n in (("cget", reads.calls), ("cput", puts.calls)):
            if n:
                by_op[op] = by_op.get(op, 0) + n
        return {"total_calls": calls, "errors": self._errors + reads.errors + puts.errors,
                "total_time_s": total,
                "avg_latency_ms": (total / calls * 1e3) if calls else 0.0,
                "by_op": by_op}

    def _plan_import_phext(self, source, skip_invalid) -> _Call:
        return _Call("import_phext", "import_phext", (_read_phext_source(source), skip_invalid),
                     _NO_KW, None)

    def import_phext(self, source, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext file (path) or document (str starting with text).

        :returns: how many scrolls were stored.
        """
        return self._now(self._plan_import_phext(source, skip_invalid))

    def _plan_export_phext(self, path, pattern, skip_invalid) -> _Call:
        p = None if pattern is None else read_pattern(pattern, self.names)

        def post(text: str) -> str:
            if path is not None:
                with open(path, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            return text

        return _Call("export_phext", "export_phext", (p, skip_invalid), _NO_KW, post)

    def export_phext(self, path=None, pattern=None, skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document.

        :param path: also write it to this file (bytes as UTF-8, newlines untouched).
        :returns: the document text.
        :raises PhextError: a scroll a phext file cannot hold (unless ``skip_invalid``).
        """
        return self._now(self._plan_export_phext(path, pattern, skip_invalid))

    def export_phext_file(self, path, pattern=None, skip_invalid: bool = False,
                          page_size: int = 10_000, progress=None) -> int:
        """Stream the scrolls matching ``pattern`` (default all) into a .phext file, one
        page of ``page_size`` scrolls at a time, so neither side holds the document: the
        way to export a store of any size (:meth:`export_phext` returns the whole text
        in one reply, at most the frame limit).

        The file is written under a temporary name, fsynced and renamed over ``path``:
        a failure leaves no half-written export. The pages are read one after another,
        not from one snapshot: a scroll written during the export may or may not be in it.

        :param path: the file.
        :param pattern: which scrolls (default: all).
        :param skip_invalid: skip scrolls a phext file cannot hold instead of raising.
        :param page_size: scrolls per request (1 .. the server's page size is best).
        :param progress: called with the number of scrolls written so far after each page.
        :returns: how many scrolls were written.
        :raises PhextError: a scroll a phext file cannot hold (unless ``skip_invalid``), or
            text not encodable as UTF-8; nothing is left at ``path`` then.
        :raises OSError: the file cannot be written.
        """
        from vtpu.phext import PhextWriter, PhextError

        pages = self._pages(EVERYTHING if pattern is None else read_pattern(pattern, self.names),
                            page_size)
        writer = PhextWriter(skip_invalid=skip_invalid, names=self.names, keep_skipped=False)
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        written = 0
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                for page in pages:
                    skipped = writer.n_skipped
                    try:
                        f.write(writer.write_columns(page.coords, page.contents))
                    except UnicodeEncodeError as exc:
                        raise PhextError(
                            f"scroll text is not encodable as UTF-8 ({exc.reason})") from None
                    written += len(page) - (writer.n_skipped - skipped)
                    if progress is not None:
                        progress(written)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return written

    def pipeline(self, raise_on_error: bool = True) -> "ClientPipeline":
        """Queue calls and send them in one write (remote) or run them in one go (embedded).

        ``with client.pipeline() as p: p.cput(c1, x); p.cget(c2)`` then ``p.results``;
        or call ``p.execute()``. Every reply is read before the first error is raised
        (unless ``raise_on_error`` is false: errors are then returned in the results).
        Each result is what the same call on the client returns.
        """
        return ClientPipeline(self, raise_on_error)


class _Const:
    """A pipeline slot whose result was known when it was queued (a pure instruction)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class ClientPipeline:
    """Calls of a :class:`Client`, queued and sent together; see :meth:`Client.pipeline`.

    It wraps the client: each method parses its arguments exactly as the client's method
    of the same name (bad input raises at once, nothing is queued), queues one backend
    call, and :meth:`execute` returns, per call, what the client's method would have
    returned (exception objects for failed calls when ``raise_on_error`` is false).
    The pure instructions (cdelta, croute, cmoe, ``chier(..., "UP")``) are computed when
    queued; :meth:`Client.crange_iter` (many round trips) has no queued form.
    """

    def __init__(self, client: Client, raise_on_error: bool = True):
        self._client = client
        self._pipe = client.backend.pipeline(raise_on_error=False)
        self._slots: list = []   # per call: None, a post-processing function, or a _Const
        # CGET keys not handed to the backend pipeline yet: queued there with one
        # get_each() before the next backend call, so the calls keep their order.
        self._gets: list = []
        self.raise_on_error = raise_on_error
        self.results: list | None = None

    @property
    def names(self) -> NameTable:
        """The client's name table."""
        return self._client.names

    @property
    def client(self) -> Client:
        """The client whose calls are queued."""
        return self._client

    def __len__(self) -> int:
        return len(self._slots)

    def _add(self, call: _Call) -> "ClientPipeline":
        if call.method is None:
            value = call.args[0]
            if call.post is not None:   # a read answered without the store
                try:
                    value = call.post(value)
                except Exception as exc:   # an error result, raised at execute like others
                    value = exc
            self._slots.append(_Const(value))
        else:
            if self._gets:
                self._flush_gets()
            getattr(self._pipe, call.method)(*call.args, **call.kw)
            self._slots.append(call.post)
        return self

    def _flush_gets(self) -> None:
        gets, self._gets = self._gets, []
        self._pipe.get_each(gets)

    def _pure(self, value) -> "ClientPipeline":
        self._slots.append(_Const(value))
        return self

    # -- the queued instructions (each: see the Client method of the same name) -------------

    def cget(self, coord) -> "ClientPipeline":
        """Queue a CGET; its result (Scroll or None) comes with :meth:`execute`."""
        # Queued by the thousand: no parsing object, and a (9,) uint16 row packed in C.
        if type(coord) is bytes and len(coord) == 18:
            key = coord
        else:
            key = _core.key_of(coord) or self._client._read_key(coord)
            if key is None:   # names a name the store never interned: nothing there
                return self._pure(None)
        self._gets.append(key)
        self._slots.append(None)
        return self

    def cput(self, coord, content: Any, if_version: int | None = None) -> "ClientPipeline":
        """Queue a CPUT (result: the new version)."""
        if type(coord) is bytes and len(coord) == 18:
            key = coord
        else:
            key = _core.key_of(coord) or self._client._key(coord)
        if self._gets:
            self._flush_gets()
        self._pipe.put(key, content, if_version)
        self._slots.append(None)
        return self

    def cget_many(self, coords, content_only: bool = False) -> "ClientPipeline":
        """Queue a batched CGET (see :meth:`Client.cget_many`)."""
        return self._add(self._client._plan_cget_many(coords, content_only))

    def cput_many(self, coords, contents) -> "ClientPipeline":
        """Queue a batched CPUT (see :meth:`Client.cput_many`)."""
        return self._add(self._client._plan_cput_many(coords, contents))

    def cdel(self, target) -> "ClientPipeline":
        """Queue a CDEL (see :meth:`Client.cdel`)."""
        return self._add(self._client._plan_cdel(target))

    def cdel_many(self, coords) -> "ClientPipeline":
        """Queue a batched CDEL (see :meth:`Client.cdel_many`)."""
        return self._add(self._client._plan_cdel_many(coords))

    def crange(self, pattern, limit: int | None = None, keys_only: bool = False,
               count: bool = False, after=None, as_array: bool = False) -> "ClientPipeline":
        """Queue a CRANGE (result: a list of Scroll; the deprecated flags as in
        :meth:`Client.crange`)."""
        return self._add(self._client._plan_crange(pattern, limit, after, keys_only, count,
                                                   as_array))

    def crange_keys(self, pattern, limit: int | None = None, after=None) -> "ClientPipeline":
        """Queue a CRANGE of coordinates (result: an ``(M, 9)`` uint16 array)."""
        return self._add(self._client._plan_crange_keys(pattern, limit, after))

    def ccount(self, pattern) -> "ClientPipeline":
        """Queue a count of the scrolls matching a pattern (result: int)."""
        return self._add(self._client._plan_ccount(pattern))

    def cnearest(self, coord, k: int = 10, metric: str = "l1", within=None,
                 as_array: bool = False) -> "ClientPipeline":
        """Queue a CNEAREST (result: list of ``(coordinate, distance)``)."""
        return self._add(self._client._plan_cnearest(coord, k, metric, within, as_array))

    def cnearest_arrays(self, coord, k: int = 10, metric: str = "l1",
                        within=None) -> "ClientPipeline":
        """Queue a CNEAREST (result: ``(coords, dists)`` arrays)."""
        return self._add(self._client._plan_cnearest(coord, k, metric, within)._replace(
            post=None))

    def chier(self, coord, direction: str = "UP") -> "ClientPipeline":
        """Queue a CHIER (UP is computed at once)."""
        return self._add(self._client._plan_chier(coord, direction))

    def cattend(self, query_coord=None, key_pattern=None, top_k: int | None = None,
                values=None, query=None, mode: str = "auto") -> "ClientPipeline":
        """Queue a CATTEND (result: an :class:`AttentionResult`)."""
        return self._add(self._client._plan_cattend(query_coord, key_pattern, top_k, values,
                                                    query, mode))

    def cattend_many(self, queries, key_patterns, values=None,
                     return_weights: bool = False) -> "ClientPipeline":
        """Queue a batched CATTEND (result: its dict)."""
        return self._add(self._client._plan_cattend_many(queries, key_patterns, values,
                                                         return_weights))

    def ckg(self, start_coord, relation_deltas, hops: int = 1,
            max_frontier: int = 10000) -> "ClientPipeline":
        """Queue a CKG (result: the final frontier's scrolls)."""
        return self._add(self._client._plan_ckg(start_coord, relation_deltas, hops,
                                                max_frontier))

    def intern(self, names) -> "ClientPipeline":
        """Queue an intern of names (result: their ids)."""
        return self._add(self._client._plan_intern(names))

    def health(self) -> "ClientPipeline":
        """Queue a health check (result: its dict)."""
        return self._add(_Call("health", "health", (), _NO_KW, None))

    def stats(self) -> "ClientPipeline":
        """Queue a statistics call (result: its dict)."""
        return self._add(_Call("stats", "stats", (), _NO_KW, None))

    def import_phext(self, source, skip_invalid: bool = False) -> "ClientPipeline":
        """Queue a .phext import (result: how many scrolls)."""
        return self._add(self._client._plan_import_phext(source, skip_invalid))

    def export_phext(self, path=None, pattern=None,
                     skip_invalid: bool = False) -> "ClientPipeline":
        """Queue a .phext export (result: the text; written to ``path`` at execute)."""
        return self._add(self._client._plan_export_phext(path, pattern, skip_invalid))

    def cdelta(self, base, delta) -> "ClientPipeline":
        """CDELTA, computed now (pure); its result takes its place among the results."""
        return self._pure(self._client.cdelta(base, delta))

    def croute(self, coord, num_nodes: int, level: int = 3) -> "ClientPipeline":
        """CROUTE, computed now (pure)."""
        return self._pure(self._client.croute(coord, num_nodes, level))

    def cmoe(self, token, num_experts: int, top_k: int = 1) -> "ClientPipeline":
        """CMOE, computed now (pure)."""
        return self._pure(self._client.cmoe(token, num_experts, top_k))

    cmoe_many = cmoe

    # -- running --------------------------------------------------------------------------------

    def execute(self) -> list:
        """Send / run every queued call; returns the results in order.

        :raises Exception: the first failed call's error, after every reply was read
            (unless ``raise_on_error`` is false).
        """
        if self._gets:
            self._flush_gets()
        slots, self._slots = self._slots, []
        client = self._client
        if client._lock_writes:
            with client._lock:
                raw = self._pipe.execute()
        else:
            raw = self._pipe.execute()
        if slots.count(None) == len(slots):
            results = raw  # cget/cput only: the backend's results are the results
        else:
            results = []
            it = iter(raw)
            for slot in slots:
                if slot is None:
                    results.append(next(it))
                elif type(slot) is _Const:
                    results.append(slot.value)
                else:
                    r = next(it)
                    if not isinstance(r, BaseException):
                        try:
                            r = slot(r)
                        except Exception as exc:
                            r = exc
                    results.append(r)
        self.results = results
        return finish(results, self.raise_on_error)

    def __enter__(self) -> "ClientPipeline":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.execute()


def _nothing(op: str, value) -> _Call:
    """The call of a read naming a never-interned name: answered ``value`` without the
    store (counted as a call, like the others)."""
    return _Call(op, None, (value,), _NO_KW, lambda r: r)


def _refused(op: str, exc: BaseException) -> _Call:
    """The call of a read refused before reaching the store: it raises ``exc``."""
    def refuse(_):
        raise exc
    return _Call(op, None, (None,), _NO_KW, refuse)


def _spread(found: list, known: np.ndarray) -> list:
    """Results for the known inputs put back in place, None for the others."""
    out: list = [None] * len(known)
    for i, r in zip(np.flatnonzero(known), found):
        out[i] = r
    return out


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


_TLS_QUERY = ("tls_ca", "tls_cert", "tls_key", "server_hostname")
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _redacted(u: Any) -> str:
    """The URL with its token replaced by ``***`` (a client's repr must not show it)."""
    netloc = u.netloc
    if u.password is not None:
        netloc = ":***@" + netloc.rpartition("@")[2]
    query = u.query
    q = parse_qs(query, keep_blank_values=True)
    if "token" in q:
        q["token"] = ["***"]
        query = urlencode({k: v[-1] for k, v in q.items()}, safe="*/")
    return u._replace(netloc=netloc, query=query).geturl()


def connect(url: str = "mem://", **kwargs) -> Client:
    """Open a client.

    :param url: ``mem://`` (in-process engine), ``file://DIR`` (in-process, durable in
        DIR), ``vtpu://host:port`` (a server) or ``vtpus://host:port`` (a server over
        TLS). The token goes in the password part, as in redis-py:
        ``vtpu://:TOKEN@host:port`` (percent-encoded; ``?token=T`` works too). The query
        may carry ``tls_ca``, ``tls_cert``, ``tls_key``, ``server_hostname`` (paths and
        names) and ``tls_verify`` (``0``/``1``); keyword arguments win over the URL.
    :param kwargs: for ``file://``: ``fsync`` (always|everysec|never); for ``vtpu://``:
        any :class:`vtpu.netclient.RemoteEngine` argument (``token``, ``timeout``,
        ``connect_timeout``, ``max_frame_size``, ``ssl``, ``tls_ca``, ``tls_verify``,
        ``server_hostname``, ``tls_cert``, ``tls_key`` ...).
    :returns: a :class:`Client`.
    :raises InterfaceError: an unknown scheme or a malformed URL.
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
    if scheme in ("vtpu", "tcp", "vtpus"):
        from vtpu.netclient import RemoteEngine

        shown = _redacted(u)
        if u.username:
            raise InterfaceError(f"{shown}: the token goes in the password part, with an "
                                 "empty user name: vtpu://:TOKEN@host:port")
        try:
            port = u.port or 1337
        except ValueError as exc:
            raise InterfaceError(f"{shown}: {exc}") from None
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if u.password is not None:
            kwargs.setdefault("token", unquote(u.password))
        if "token" in q:
            kwargs.setdefault("token", q["token"])
        for k in _TLS_QUERY:
            if k in q:
                kwargs.setdefault(k, q[k])
        if "tls_verify" in q:
            v = _BOOLS.get(q["tls_verify"].lower())
            if v is None:
                raise InterfaceError(f"{shown}: tls_verify must be 0 or 1, got {q['tls_verify']!r}")
            kwargs.setdefault("tls_verify", v)
        if scheme == "vtpus":
            kwargs.setdefault("ssl", True)
        return Client(RemoteEngine(u.hostname or "127.0.0.1", port, **kwargs), shown)
    raise InterfaceError(f"unknown URL scheme in {url!r}: use mem://, file://DIR, "
                         "vtpu://host:port or vtpus://host:port")


class vTPU(Client):
    """The prototype's constructor, kept: ``vTPU(host="localhost", port=1337)``.

    Connects to a vtpu server over the binary protocol (lazily, on first call).
    """

    def __init__(self, host: str = "localhost", port: int = 1337, **kwargs):
        from vtpu.netclient import RemoteEngine

        super().__init__(RemoteEngine(host, port, **kwargs), f"vtpu://{host}:{port}")
