"""The vtpu server: one asyncio event loop owns the engine, many clients talk to it.

Redis-style: requests are executed on the loop thread in arrival order, so the engine
needs no locks. Each connection frames, decodes and encodes only through the wire codec
the clients use (:mod:`vtpu.wire`), and every request reaches the engine through its
public methods. Pipelined requests are answered in order: a run of pipelined GETs is
taken from the decoder in one call, answered with one engine call and encoded in one
call; a BATCH frame carries many operations.

Durability (group commit): replies to writes are held back until the end of the current
loop iteration, then ``engine.commit()`` runs once for everything written by every
connection in that iteration, and only then are the replies written. With
``fsync="always"`` an acknowledged write is therefore on disk. Replies to reads that
follow an uncommitted write are held with them. If the commit fails (disk full, I/O
error), the engine undoes the whole group in memory and every held reply becomes a
``STORAGE`` error: no client sees a write that was not stored, the connections stay
open, and the next group commits afresh, so the server recovers by itself once space
returns.

Bad input never takes the server down or changes data: a malformed frame, an unknown
opcode, a wrong argument or a bad coordinate gets a typed error reply; a stream that can
no longer be framed (garbage length, oversized frame) gets one error frame with msgid 0
and is closed; any other connection keeps being served.

Protected mode (like Redis's): a server refuses to listen on an address other than
loopback (127.0.0.0/8, ::1, ``localhost``) unless clients must authenticate (a token,
or TLS client certificates) or it is told ``unprotected=True`` / ``--unprotected``.
TLS (stdlib :mod:`ssl`, built by :mod:`vtpu.tls`) wraps the same byte stream.

Entry points: :func:`start_server` (async, returns a handle with ``.port`` and
``.close()``), :func:`serve` (blocking, handles SIGINT/SIGTERM), :func:`main` (argv).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import hmac
import ipaddress
import logging
import os
import resource
import select
import signal
import sys
import time
from concurrent.futures import Future
from types import GeneratorType
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _core
from . import wire as P
from ._cserver import ConnectionLoop  # (with the per-read budgets: SLICE_UNITS...)
from ._version import __version__
from .engine import (MAX_HOPS, check_count, check_direction, check_metric, check_mode,
                     estimate_wire_size)
from .errors import (
    InterfaceError,
    LimitError,
    ProtocolError,
    RequestTimeout,
    StorageError,
    is_internal,
)

__all__ = ["start_server", "serve", "main", "ServerHandle", "Limits", "DEFAULT_PAGE_SIZE",
           "DEFAULT_MAX_REQUEST_TIME", "is_loopback", "check_protected"]

log = logging.getLogger("vtpu.server")

# Scrolls per RANGE page (keys-only pages hold 16 times as many keys): a page is read in
# steps, but gathered and encoded in one go, a millisecond or two for a full page; a
# result of ~10,000 scrolls is then one round trip instead of ten.
DEFAULT_PAGE_SIZE = 16384
# Operations per BATCH frame. A BATCH is decoded in one go before its first operation
# runs (its operations then run in steps): this bounds that to a few tens of ms.
DEFAULT_MAX_BATCH = 10_000
SWEEP_SECONDS = 1.0  # how often connections are checked against the time limits
CLOSE_GRACE_SECONDS = 5.0  # a connection closed for a limit is aborted if still open then
MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one connection may hold and how long it may take: every default in one place
    (documented in PROTOCOL.md section 7; ``vtpu serve --help`` maps the options).

    :param max_clients: most open connections; ``None`` derives it from the process's
        current ``RLIMIT_NOFILE`` soft limit minus ``fd_reserve`` (read at every accept,
        so a limit changed at run time applies). At the limit a new connection closes
        the oldest one that has not completed HELLO, or, when every connection has, is
        answered with one ``LIMIT`` error frame and closed.
    :param fd_reserve: descriptors kept free for storage files and the listener.
    :param hello_frame_size: largest frame accepted before a successful HELLO.
    :param hello_timeout: seconds a connection may stay without a successful HELLO.
    :param idle_timeout: seconds without a byte from the client after which its
        connection is closed (0: never; connections with ``track`` never time out).
    :param frame_timeout: seconds a started frame may go without a byte arriving; a
        frame must also be complete within ``6 * frame_timeout`` of its first byte.
    :param output_hard: a connection whose unsent replies exceed this is closed at once.
    :param output_soft: ... or when they stay above this for ``output_soft_seconds``.
    :param output_soft_seconds: see ``output_soft``.
    :param slice_bytes: reply bytes produced for one connection before the others run;
        also the socket buffer above which the server stops reading its requests.
    :param names_per_second: new names one connection may intern per second (a burst of
        as many is allowed).
    :param input_total: bytes the server buffers at once for large frames (over
        ``vtpu._cserver.LARGE_FRAME``) over all connections. A frame is reserved its
        announced size when its header arrives; a connection whose frame does not fit is
        not read until others complete theirs (one large frame is always admitted), so
        many unfinished frames cannot add up to the server's memory.
    """

    max_clients: int | None = None
    fd_reserve: int = 32
    hello_frame_size: int = 64 * 1024
    hello_timeout: float = 10.0
    idle_timeout: float = 0.0
    frame_timeout: float = 5.0
    output_hard: int = 256 * MiB
    output_soft: int = 64 * MiB
    output_soft_seconds: float = 60.0
    slice_bytes: int = 4 * MiB
    names_per_second: int = 256
    input_total: int = 256 * MiB

    def client_limit(self) -> int:
        """The connection limit in force now (see ``max_clients``)."""
        if self.max_clients is not None:
            return self.max_clients
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return max(1, soft - self.fd_reserve)


class _RateLimitedLog:
    """At most one line per kind per ``every`` seconds; the next line that gets through
    says how many were left out. Keeps floods (descriptor errors, bad handshakes from
    many connections) from filling the log."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, msg, *args)

    def log(self, level: int, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) < self.every:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return
        self._last[kind] = now
        dropped = self._dropped.pop(kind, 0)
        if dropped:
            msg += f" ({dropped} more like this not logged)"
        log.log(level, msg, *args)


# Loop time a request in steps (vtpu.steps) runs per turn before the loop serves the
# others; the requests in steps of one read of a connection share one such slice.
SLICE_SECONDS = 0.0005
DEFAULT_MAX_REQUEST_TIME = 5.0  # seconds a request may run before it stops with TIMEOUT
# Caps refused with ARG before any work: results this large are not a query's answer.
MAX_TOP_K = 10_000  # ATTEND top_k (and every matched key when top_k is nil), ATTEND_MANY
MAX_NEAREST_K = 10_000  # NEAREST k
# KG max_frontier (default 10,000): the wire's cap (PROTOCOL.md section 7), well under
# the bound every backend takes (vtpu.engine.MAX_FRONTIER).
MAX_KG_FRONTIER = 100_000
MAX_WEIGHTS = 1_000_000  # weights one ATTEND_MANY returns in all (LIMIT above)
MAX_VISITED = 250_000  # coordinates one KG walk may reach (LIMIT above)
PACK_STEP = 65536  # keys packed per step of a keys-only RANGE page
PAGE_STEP = 1024  # scrolls in a page above which its gathering is a step of its own


# ---------------------------------------------------------------------------------------
# Argument helpers: every check raises InterfaceError (code "ARG") before the engine is
# touched, so a malformed request cannot change data.


def _nargs(args: list, lo: int, hi: int) -> None:
    # Messages never name the opcode: every error reply is prefixed with it once.
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise InterfaceError(f"takes {want} arguments, got {len(args)}")


def _opt(args: list, i: int, default: Any = None) -> Any:
    return args[i] if len(args) > i else default


def _bool(v: Any, what: str) -> bool:
    if v is None:
        return False
    if type(v) is not bool:
        raise InterfaceError(f"{what} must be a boolean, got {v!r}")
    return v


def _pattern(v: Any, what: str = "pattern") -> np.ndarray:
    if type(v) is not bytes or len(v) != P.PATTERN_SIZE:
        raise InterfaceError(f"{what} must be a packed pattern (bin of 36 bytes)")
    return _core.unpack_many(v)   # (2, 9): its two rows


def _coord(v: Any, what: str = "coordinate") -> np.ndarray:
    return _core.unpack(P.check_key(v, what))


class _Dispatcher:
    """Decodes arguments, calls the engine, encodes results. One per server.

    A handler checks its arguments at once (a malformed request is refused before any
    work) and returns the result, or, for an instruction whose work grows with the data,
    a step generator (:mod:`vtpu.steps`) whose return value is the result: the server
    runs it a slice per loop turn (:class:`_Job`).
    """

    def __init__(self, engine: Any, page_size: int, max_batch: int, max_frame_size: int):
        self.engine = engine
        self.page_size = page_size
        self.max_batch = max_batch
        # The connection whose request is executing (set per request by the server):
        # replies are sized against its frame limit before they are built, and it is
        # charged for the names it interns.
        self.caller: Any = None
        self.max_frame_size = max_frame_size
        e = engine
        # Bound methods resolved once: the hot path is a dict lookup and a call.
        self.table: dict[str, Callable[[list], Any]] = {
            "PING": lambda a: "PONG",
            "GET": self.get,
            "GET_MANY": self.get_many,
            "PUT": self.put,
            "PUT_MANY": self.put_many,
            "DEL": self.delete,
            "DEL_MANY": self.delete_many,
            "DEL_RANGE": self.delete_range,
            "RANGE": self.range,
            "COUNT": self.count,
            "NEAREST": self.nearest,
            "HIER": self.hier,
            "ATTEND": self.attend,
            "ATTEND_MANY": self.attend_many,
            "KG": self.kg,
            "INTERN": self.intern,
            "NAMES": lambda a: (_nargs(a, 0, 0), list(e.name_table()))[1],
            "RECLAIM_NAMES": lambda a: (_nargs(a, 0, 0), e.reclaim_names())[1],
            "HEALTH": lambda a: (_nargs(a, 0, 0), e.health())[1],
            "STATS": lambda a: (_nargs(a, 0, 0), e.stats())[1],
            "IMPORT_PHEXT": self.import_phext,
            "EXPORT_PHEXT": self.export_phext,
        }
        self._get = e.get
        self._put = e.put

    # -- single key ----------------------------------------------------------------------
    def get(self, a: list) -> Any:
        if len(a) != 1:
            _nargs(a, 1, 1)
        s = self._get(P.check_key(a[0]))
        if s is None:
            return None
        return [s.key, s.content, s.version, s.created_at, s.updated_at]

    def put(self, a: list) -> int:
        _nargs(a, 2, 3)
        key = P.check_key(a[0])
        ifv = check_count(_opt(a, 2), "if_version", 0)
        return self._put(key, a[1], ifv) if ifv is not None else self._put(key, a[1])

    def delete(self, a: list) -> int:
        _nargs(a, 1, 1)
        return self.engine.delete(P.check_key(a[0]))

    # -- many keys -----------------------------------------------------------------------
    def get_many(self, a: list) -> Any:
        _nargs(a, 1, 2)
        blob = P.check_blob(a[0])
        # Refused from the stored sizes before anything is built: a few keys of large
        # values would otherwise make (and hold) a reply far over the limit.
        limit = self.caller.out_limit
        if _bool(_opt(a, 1), "content_only"):
            # Values only: one array of N contents (nil where nothing is stored),
            # written from the result's columns.
            return ScrollResult(self.engine.get_many_within(blob, limit, content_only=True),
                                values=True)
        return ScrollResult(self.engine.get_many_within(blob, limit))

    def put_many(self, a: list) -> list:
        _nargs(a, 2, 2)
        blob = P.check_blob(a[0])
        n = len(blob) // P.KEY_SIZE
        contents = a[1]
        if isinstance(contents, np.ndarray):
            if contents.ndim < 1 or contents.shape[0] != n:
                raise InterfaceError(
                    f"a content array of shape {contents.shape} for {n} keys (row i is content i)"
                )
        elif type(contents) is list:
            if len(contents) != n:
                raise InterfaceError(f"{len(contents)} contents for {n} keys")
        else:
            raise InterfaceError("contents must be an array or an ndarray")
        versions = self.engine.put_many(blob, contents)
        if isinstance(versions, np.ndarray):
            versions = versions.tolist()
        return versions

    def delete_many(self, a: list) -> int:
        _nargs(a, 1, 1)
        return self.engine.delete_many(P.check_blob(a[0]))

    def delete_range(self, a: list):
        _nargs(a, 1, 1)
        return self.engine.delete_range_steps(_pattern(a[0]))

    # -- queries -------------------------------------------------------------------------
    def range(self, a: list) -> list:
        _nargs(a, 1, 4)
        pat = _pattern(a[0])
        limit = check_count(_opt(a, 1), "limit", 0)
        after = _opt(a, 2)
        if after is not None:
            P.check_key(after, "after")
        keys_only = _bool(_opt(a, 3), "keys_only")
        return self._range_steps(pat, limit, after, keys_only)

    def _range_steps(self, pat: np.ndarray, limit: int | None, after: bytes | None,
                     keys_only: bool):
        # Long results are paged: the server answers at most page_size items and says
        # where to continue, so one huge range is many short requests. A page also
        # ends before it passes half the client's frame limit.
        page_bytes = self.caller.out_limit // 2
        page = self.page_size * (16 if keys_only else 1)
        if keys_only:
            page = min(page, max(1, page_bytes // P.KEY_SIZE))
        if limit is not None and limit <= page:
            # The caller's limit fits one page: the answer is complete by definition.
            res = yield from self.engine.range_steps(pat, limit, after, keys_only)
            more = False
        else:
            # Ask for one more than a page to learn whether another page follows.
            res = yield from self.engine.range_steps(pat, page + 1, after, keys_only)
            more = len(res) > page
            if more:
                res = res[:page]
        if keys_only:
            arr = np.asarray(res, dtype=np.uint16).reshape(-1, 9)
            nxt = P.pack_coord(arr[-1]) if more else None
            parts = []
            for i in range(0, len(arr), PACK_STEP):
                yield
                parts.append(P.pack_coords(arr[i:i + PACK_STEP]))
            return [b"".join(parts), nxt]
        if len(res) > PAGE_STEP:
            yield   # the page was gathered in this step; measuring it starts the next
        size, n = estimate_wire_size(res, page_bytes)
        if size > page_bytes and n > 1:
            res = res[:n - 1]  # up to the scroll that passes page_bytes
            more = True
        return ScrollResult(res, True, res[-1].key if more else None)

    def count(self, a: list):
        _nargs(a, 1, 1)
        return self.engine.count_steps(_pattern(a[0]))

    def nearest(self, a: list):
        _nargs(a, 1, 4)
        c = _coord(a[0])
        k = check_count(_opt(a, 1, 10), "k", 0, MAX_NEAREST_K, none_ok=False)
        metric = check_metric(_opt(a, 2, "l1"))
        within = _opt(a, 3)
        within = None if within is None else _pattern(within, "within")
        return self._nearest_steps(c, k, metric, within)

    def _nearest_steps(self, c: np.ndarray, k: int, metric: str, within: Any):
        coords, dist = yield from self.engine.nearest_steps(c, k, metric, within)
        return [P.pack_coords(np.asarray(coords).reshape(-1, 9)), np.asarray(dist, dtype=np.int64)]

    def hier(self, a: list) -> Any:
        _nargs(a, 2, 2)
        c = _coord(a[0])
        r = self.engine.hier(c, check_direction(a[1]))
        return None if r is None else P.pack_coord(r)

    def _values(self, v: Any) -> Any:
        if v is None:
            return None
        if type(v) is bytes and len(v) == P.PATTERN_SIZE:
            return P.unpack_pattern(v)
        if type(v) is bytes and len(v) == P.DELTA_SIZE:
            return P.unpack_delta(v)
        raise InterfaceError("values must be nil, a 36-byte pattern or a 72-byte delta")

    def attend(self, a: list) -> dict:
        _nargs(a, 2, 6)
        q = a[0]
        if not (isinstance(q, np.ndarray) or (type(q) is bytes and len(q) == P.KEY_SIZE)):
            raise InterfaceError("the query must be an ndarray or an 18-byte key")
        pat = _pattern(a[1], "key pattern")
        top_k = check_count(_opt(a, 2), "top_k", 0, MAX_TOP_K)
        values = self._values(_opt(a, 3))
        ret = _opt(a, 4, True)
        ret = True if ret is None else _bool(ret, "return_output")
        mode = check_mode(_opt(a, 5))
        return self._attend_steps(self.engine.attend_steps(q, pat, top_k, values, ret, mode,
                                                           max_keys=MAX_TOP_K))

    def _attend_steps(self, steps: Any):
        return _attend_out((yield from steps))

    def attend_many(self, a: list) -> dict:
        _nargs(a, 2, 5)
        q = a[0]
        if not isinstance(q, np.ndarray):
            q = P.check_blob(q, P.KEY_SIZE, "queries")
        pats = P.unpack_patterns(P.check_blob(a[1], P.PATTERN_SIZE, "key patterns"))
        kw: dict = {}
        top_k = check_count(_opt(a, 2), "top_k", 0, MAX_TOP_K)
        if top_k is not None:
            kw["top_k"] = top_k  # engines without top_k reject it (ARG), never ignore it
        values = self._values(_opt(a, 3))
        if values is not None:
            kw["values"] = values
        if _bool(_opt(a, 4), "return_weights"):
            kw["return_weights"] = True
            kw["max_weights"] = MAX_WEIGHTS
        return self._attend_steps(self.engine.attend_many_steps(q, pats, **kw))

    def kg(self, a: list):
        _nargs(a, 2, 4)
        start = _pattern(a[0], "start")
        deltas = P.unpack_deltas(P.check_blob(a[1], P.DELTA_SIZE, "deltas"))
        hops = check_count(_opt(a, 2, 1), "hops", 0, MAX_HOPS, none_ok=False)
        mf = check_count(_opt(a, 3, 10000), "max_frontier", 1, MAX_KG_FRONTIER, none_ok=False)
        return self._kg_steps(start, deltas, hops, mf)

    def _kg_steps(self, start: np.ndarray, deltas: np.ndarray, hops: int, mf: int):
        return ScrollResult((yield from self.engine.kg_steps(start, deltas, hops, mf,
                                                             max_visited=MAX_VISITED)))

    def intern(self, a: list) -> list:
        _nargs(a, 1, 2)
        names = a[0]
        if type(names) is not list or not all(type(n) is str for n in names):
            raise InterfaceError("names must be an array of strings")
        flag = _opt(a, 1)
        if flag is not None and not _bool(flag, "intern"):
            # Look-up only: unknown names answer nil and nothing is added.
            ids = self.engine.lookup_names(names)
            return [None if i is None else int(i) for i in ids]
        table = self.engine.names
        new = sum(1 for n in dict.fromkeys(names) if n not in table)
        if new:
            self.caller.allow_names(new)  # a flood from one connection is refused whole
        ids = [int(i) for i in self.engine.intern(names)]
        if new:
            self.caller.spend_names(new)
        return ids

    def import_phext(self, a: list):
        _nargs(a, 1, 2)
        if type(a[0]) is not str:
            raise InterfaceError("the text must be a string")
        return self.engine.import_phext_steps(a[0], _bool(_opt(a, 1), "skip_invalid"))

    def export_phext(self, a: list):
        _nargs(a, 0, 2)
        pat = _opt(a, 0)
        pat = None if pat is None else _pattern(pat)
        # No reply can be larger than the server's frame limit: stop as soon as it is.
        return self.engine.export_phext_steps(pat, _bool(_opt(a, 1), "skip_invalid"),
                                              max_chars=self.max_frame_size)


class ScrollResult(NamedTuple):
    """A result that is a scroll list (GET_MANY, KG) or a RANGE page of one: encoded by
    the codec's column encoder straight from the Scrolls."""

    scrolls: list
    page: bool = False
    after: bytes | None = None
    values: bool = False   # a values-only GET_MANY: the contents alone, one array

    def encoded(self, status: int) -> bytes:
        """The msgpack bytes of the BATCH reply item ``[status, result value]``."""
        if self.values:
            return P.packb([status, [None if s is None else s.content for s in self.scrolls]])
        return P.encode_scrolls(self.scrolls, status=status, page=self.page,
                                after=self.after)


class BatchReply(NamedTuple):
    """A BATCH result: each operation's ``[status, result-or-error]``, a column result
    already encoded (:class:`~vtpu.protocol.Encoded`)."""

    items: list


def _batch_entry(status: int, value: Any) -> tuple[Any, int]:
    """One BATCH item ``[status, value]`` as it is held until the reply is encoded, and
    how many bytes it takes there. A column result is encoded now (its bytes are a
    third of its scrolls as Python objects); anything else is held as it is (often
    shared objects, as NAMES's) and measured."""
    if type(value) is ScrollResult:
        b = P.Encoded(value.encoded(status))
        return b, len(b)
    item = [status, value]
    if value is None or type(value) in (int, float, bool):
        return item, 11
    if type(value) in (bytes, str):
        return item, len(value) + 7
    return item, len(P.packb(item))


def _attend_out(r: dict) -> dict:
    out = dict(r)
    keys = out.get("keys")
    if keys is not None:
        out["keys"] = P.pack_coords(np.asarray(keys, dtype=np.uint16).reshape(-1, 9))
    return out


# ---------------------------------------------------------------------------------------
# Connections


class _Connection(ConnectionLoop, asyncio.Protocol):
    """One client connection: frames in, replies out, in request order.

    Memory per connection is bounded: before HELLO only small frames are accepted; one
    slice of processing produces at most about ``Limits.slice_bytes`` of replies; while
    the socket's write buffer is above that (the transport paused writing) nothing more
    is read or answered; pushes to a paused connection collapse into one "anything may
    have changed" push; and a connection whose unsent replies pass the output limits is
    closed.
    """

    def __init__(self, server: "_Server"):
        self.server = server
        self.clock = server.loop.time
        self.engine_get = server._get
        self.durable = server.storage is not None
        self.engine_put = server._put
        self.engine_get_many = server._get_many
        self.content_lengths = server.engine.content_lengths
        lim = server.limits
        self.slice_bytes = lim.slice_bytes
        self.transport: asyncio.Transport | None = None
        # Until a good HELLO only small frames: a stranger cannot make the server
        # buffer (or decode) a large one. The decoder checks each length on arrival.
        self.decoder = P.FrameDecoder(min(server.limits.hello_frame_size,
                                          server.max_frame_size), server.max_batch)
        self.authed = False  # set by a successful HELLO (required first, token or not)
        self.hello = False
        self.hello_logged = False  # a failed HELLO is logged once per connection
        self.out_limit = server.max_frame_size  # lowered by the client's HELLO option
        self.track = False
        self.pending: list[bytes] = []  # replies waiting for the group commit
        self.closing = False
        self.read_paused = False  # by us, to let other connections run or for a job
        self.input_wait = False  # not read until its large frame fits Limits.input_total
        self.reserved = 0  # bytes of Limits.input_total held for the frame arriving
        self.write_paused = False  # by the transport's flow control
        # A run of GETs taken from the decoder but not answered yet (the slice's reply
        # budget ran out): (msgids, keys), answered first when the connection resumes.
        self.backlog: tuple[list, bytes] | None = None
        self.push_all = False  # an invalidation was left out while writes were paused
        self.soft_since = 0.0  # loop time the output first stayed above output_soft
        # Loop times for the timeouts: accepted, last bytes received, and since when an
        # incomplete frame has waited for the rest (0: none).
        self.opened = self.last_rx = server.loop.time()
        self.partial_since = 0.0
        # New names this connection may still intern now (refilled at names_per_second).
        self.names_left = float(server.limits.names_per_second)
        self.names_at = self.opened
        self.peer = None
        self.job: _Job | None = None  # a request in steps running for this connection
        # Until when this read may run a request's first slice (0: no request in steps
        # has started in this read yet).
        self.slice_end = 0.0
        self.request_timeout: float | None = None  # HELLO's timeout_ms, in seconds

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        server = self.server
        if not server.admit(self):
            return
        server.conns.add(self)
        server.prehello[self] = None
        # Replies are written whole; keep the buffer small so a client that stops
        # reading is paused quickly instead of growing server memory.
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=self.server.limits.slice_bytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.track:
            self.track = False
            self.server.trackers -= 1
        self.server.conns.discard(self)
        self.server.prehello.pop(self, None)
        self.server.reserve_input(self, 0)
        self.pending.clear()
        self.backlog = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.soft_since = 0.0
        if self.push_all and not self.closing:
            # The invalidations left out while paused, as one: drop the whole cache.
            self.push_all = False
            self.transport.write(P.encode_push("invalidate", None))
        self._update_reading()
        if not self.read_paused and not self.closing and (
                self.backlog is not None or self.decoder.buffered()):
            self._yield()  # answer what was left buffered

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.write_paused or self.read_paused or self.input_wait:
            t.pause_reading()
        else:
            t.resume_reading()

    def _stream_failed(self, exc: Exception) -> bytes:
        """The error reply for a failure outside any one request's handling (a stream
        that can no longer be trusted, or a bug); the connection closes after it.
        Called by :meth:`ConnectionLoop._process`."""
        self.closing = True
        if not isinstance(exc, ProtocolError) and is_internal(exc):
            # A frame the decoder could not read, or a bug: the connection cannot know
            # where it stands, so it closes after saying so; the server keeps serving.
            self.server.ratelog.warning("internal", "internal error on a connection from "
                                        "%s: %r", _peer(self), exc)
        return P.encode_error(0, *P.error_pair(exc), self.out_limit)

    def _yield(self) -> None:
        """Stop reading and answer the rest on a later loop iteration (other connections
        run first)."""
        self.read_paused = True
        self._update_reading()
        self.server.loop.call_soon(self._continue)

    def eof_received(self) -> bool | None:
        # A client vanishing mid-frame: whatever partial frame is buffered is dropped.
        return None

    def _continue(self) -> None:
        self.read_paused = False
        if self.closing:
            return
        self._update_reading()
        if not self.write_paused:  # else resume_writing continues
            self._process()

    def flush_pending(self) -> None:
        if self.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending))
            if self.write_paused:
                self.check_output()
        self.pending.clear()
        if self.closing:
            self._close_after_flush()

    def push(self, frame: bytes) -> None:
        """Send a push now, or, while writes are paused, remember that one is owed
        (sent as one "anything may have changed" push on resume)."""
        if self.write_paused:
            self.push_all = True
            return
        self.transport.write(frame)
        if self.write_paused:
            self.check_output()

    def check_output(self, now: float | None = None) -> None:
        """Close the connection if its unsent replies are over the output limits (hard:
        at once; soft: once they stayed above it for ``output_soft_seconds``)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        lim = self.server.limits
        size = t.get_write_buffer_size()
        if size > lim.output_hard:
            self.drop(f"{size} bytes of replies not read (hard limit {lim.output_hard})")
            return
        if size <= lim.output_soft:
            self.soft_since = 0.0
            return
        if now is None:
            now = self.server.loop.time()
        if not self.soft_since:
            self.soft_since = now
        elif now - self.soft_since > lim.output_soft_seconds:
            self.drop(f"more than {lim.output_soft} bytes of replies not read for "
                      f"{lim.output_soft_seconds:g} s")

    def drop(self, why: str) -> None:
        """Close at once, discarding what is buffered both ways (logged)."""
        self.server.ratelog.warning("drop", "closing the connection from %s: %s",
                                    _peer(self), why)
        self._release()
        if self.transport is not None:
            self.transport.abort()

    def allow_names(self, n: int) -> None:
        """Refuse (``LIMIT``) interning ``n`` new names if that is over this connection's
        rate: ``names_per_second``, with a burst of as many."""
        rate = self.server.limits.names_per_second
        now = self.server.loop.time()
        self.names_left = min(float(rate), self.names_left + (now - self.names_at) * rate)
        self.names_at = now
        if n > self.names_left:
            raise LimitError(
                f"{n} new names: a connection may add {rate} per second and has "
                f"{int(self.names_left)} left now (send fewer new names per call)", "LIMIT")

    def spend_names(self, n: int) -> None:
        """Charge ``n`` interned names to the rate (after :meth:`allow_names`)."""
        self.names_left -= n

    def expire(self, code: str | None, why: str) -> None:
        """Close for a limit or timeout: say why in one error frame (msgid 0) unless
        ``code`` is None or replies are still queued, then close; buffers are freed now,
        and the socket is aborted if it has not closed within a few seconds."""
        t = self.transport
        self._release()
        if t is None or t.is_closing():
            return
        if code is not None and t.get_write_buffer_size() == 0:
            t.write(P.encode_error(0, code, why, self.out_limit))
        t.close()
        self.server.loop.call_later(CLOSE_GRACE_SECONDS, t.abort)

    def _release(self) -> None:
        """Stop serving this connection and free its buffers now."""
        self.closing = True
        self.pending.clear()
        self.backlog = None
        self.decoder = P.FrameDecoder(1)
        self.server.conns.discard(self)
        self.server.prehello.pop(self, None)
        self.server.reserve_input(self, 0)

    def _close_after_flush(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            # close() flushes what is buffered, then closes.
            t.close()


class _Server:
    """Shared state of one listening server."""

    def __init__(self, engine: Any, token: str | None, max_frame_size: int, page_size: int,
                 max_batch: int, limits: Limits | None = None,
                 max_request_time: float = DEFAULT_MAX_REQUEST_TIME):
        self.engine = engine
        self.limits = limits if limits is not None else Limits()
        self.ratelog = _RateLimitedLog()
        self.max_request_time = max_request_time  # seconds; 0: no limit
        self.storage = getattr(engine, "storage", None)
        self.token = token
        self.max_frame_size = max_frame_size
        self.max_batch = max_batch
        self.page_size = page_size
        self.dispatch = _Dispatcher(engine, page_size, max_batch, max_frame_size)
        self.table = self.dispatch.table
        self._get = engine.get
        self._get_many = engine.get_many
        self._put = engine.put
        self.trackers = 0  # connections that asked for invalidation pushes
        self.conns: set[_Connection] = set()
        # Connections without a successful HELLO yet, oldest first.
        self.prehello: dict[_Connection, None] = {}
        # Limits.input_total: bytes reserved for large frames arriving, and the
        # connections waiting for room (with what they need), first come first served.
        self.input_reserved = 0
        self.input_waiters: dict[_Connection, int] = {}
        self.loop = asyncio.get_running_loop()
        self._dirty: list[_Connection] = []
        self._flush_scheduled = False
        # (writer, keys written or None) this iteration, for invalidate pushes
        self._invalidate: list[tuple[_Connection, bytes | None]] = []
        self.commit_failures = 0  # consecutive failed group commits
        self.failed_commits = 0  # every failed group commit so far (jobs watch it)
        self.started = time.time()
        self._sweeper: asyncio.TimerHandle | None = self.loop.call_later(SWEEP_SECONDS,
                                                                         self.sweep)

    # -- timers --------------------------------------------------------------------------
    def sweep(self) -> None:
        """Once a second: close the connections over a time limit (Redis's clientsCron):
        no HELLO within ``hello_timeout``; an incomplete frame without a byte for
        ``frame_timeout`` or incomplete for ``6 * frame_timeout``; nothing received for
        ``idle_timeout`` (if set; not for tracking connections); unsent replies above
        ``output_soft`` for ``output_soft_seconds``. A connection waiting for its request
        in steps is not idle."""
        now = self.loop.time()
        lim = self.limits
        for c in list(self.conns):
            if c.closing:
                continue
            if not c.authed and now - c.opened > lim.hello_timeout:
                c.expire("PROTOCOL", f"no HELLO within {lim.hello_timeout:g} s")
            elif c.partial_since and not (c.write_paused or c.read_paused or c.backlog
                                          or c.input_wait) and (
                    now - c.last_rx > lim.frame_timeout
                    or now - c.partial_since > 6 * lim.frame_timeout):
                c.expire("PROTOCOL", f"a frame was not completed in time (no byte for "
                                     f"{lim.frame_timeout:g} s, or incomplete for "
                                     f"{6 * lim.frame_timeout:g} s)")
            elif (lim.idle_timeout and not c.track and not c.write_paused and c.job is None
                  and now - c.last_rx > lim.idle_timeout):
                c.expire(None, "idle")
            elif c.soft_since:
                c.check_output(now)
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self.sweep)

    # -- admission -----------------------------------------------------------------------
    def admit(self, conn: _Connection) -> bool:
        """Take a new connection, or refuse it (one LIMIT error frame, then close) when
        the server is at its client limit and every connection has completed HELLO; a
        connection still without HELLO is closed to make room first."""
        limit = self.limits.client_limit()
        if len(self.conns) < limit:
            return True
        oldest = next(iter(self.prehello), None)
        if oldest is not None:
            self.ratelog.warning("evict", "at the client limit (%d): closing the oldest "
                                 "connection without HELLO (%s)", limit, _peer(oldest))
            oldest.expire("LIMIT", f"the server is at its client limit ({limit}) and this "
                                   "connection has not completed HELLO")
            return True
        self.ratelog.warning("maxclients", "at the client limit (%d): refusing a "
                             "connection from %s", limit, _peer(conn))
        conn.closing = True
        conn.transport.write(P.encode_error(
            0, "LIMIT", f"the server is at its client limit ({limit}); try again later"))
        conn.transport.close()
        return False

    # -- input budget ----------------------------------------------------------------------
    def reserve_input(self, conn: _Connection, need: int) -> None:
        """Hold ``need`` bytes of ``Limits.input_total`` for the large frame ``conn`` is
        receiving (0: none), in place of what it held. When it does not fit the
        connection stops being read until :meth:`_admit_waiters` finds room; room freed
        goes to the waiters in arrival order."""
        if conn.input_wait:
            if need == self.input_waiters.get(conn):
                return   # still waiting for the same frame: keep its place
        elif need == conn.reserved:
            return
        freed = conn.reserved
        self.input_reserved -= freed
        conn.reserved = 0
        was_waiting = self.input_waiters.pop(conn, None) is not None
        conn.input_wait = False
        if need and not conn.closing:
            if self.input_reserved and self.input_reserved + need > self.limits.input_total:
                if not was_waiting:
                    self.ratelog.warning(
                        "input", "%d bytes of large frames are arriving (input limit %d): "
                        "a frame of %d bytes from %s waits", self.input_reserved,
                        self.limits.input_total, need, _peer(conn))
                self.input_waiters[conn] = need
                conn.input_wait = True
                conn._update_reading()
            else:
                conn.reserved = need
                self.input_reserved += need
                if was_waiting:
                    conn._update_reading()
        if freed:
            self._admit_waiters()

    def _admit_waiters(self) -> None:
        now = self.loop.time()
        limit = self.limits.input_total
        for c, need in list(self.input_waiters.items()):
            if c.closing:
                del self.input_waiters[c]
                continue
            if self.input_reserved and self.input_reserved + need > limit:
                break
            del self.input_waiters[c]
            c.input_wait = False
            c.reserved = need
            self.input_reserved += need
            # Its frame's clocks start again now: the wait was the server's doing.
            c.last_rx = now
            if c.partial_since:
                c.partial_since = now
            c._update_reading()

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- group commit --------------------------------------------------------------------
    def schedule_flush(self, conn: _Connection) -> None:
        self._dirty.append(conn)
        self.commit_soon()

    def commit_soon(self) -> None:
        """Run the group commit (and the pushes) at the end of this loop turn."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit once for every write of this loop iteration, then release the replies.

        A failed commit undoes the group (the engine reverts it) and answers every held
        reply with a ``STORAGE`` error instead.
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        if self.storage is not None:
            try:
                wrote = self.engine.commit()
            except Exception as exc:
                self._commit_failed(dirty, exc)
                return
            if wrote and self.commit_failures:
                log.warning("storage commits succeed again, after %d failed",
                            self.commit_failures)
                self.commit_failures = 0
        seen = set()
        for c in dirty:
            if id(c) not in seen:
                seen.add(id(c))
                c.flush_pending()
        self._push_invalidations()

    def _commit_failed(self, dirty: list[_Connection], exc: Exception) -> None:
        if not self.commit_failures:
            # Once per run of failures: a full disk must not also flood the log.
            log.error("storage commit failed, answering STORAGE until it succeeds: %s", exc,
                      exc_info=is_internal(exc))
        self.commit_failures += 1
        self.failed_commits += 1
        self._invalidate = []  # the writes were undone: nothing changed
        message = (f"{P.error_pair(exc)[1]} (this group commit was undone: nothing of it "
                   "is stored or visible; retry later)")
        seen = set()
        for c in dirty:
            if id(c) in seen:
                continue
            seen.add(id(c))
            held = b"".join(c.pending)
            c.pending = [P.encode_error(msgid, "STORAGE", message)
                         for msgid in _reply_msgids(held, self.max_frame_size)]
            c.flush_pending()

    def _push_invalidations(self) -> None:
        if not self._invalidate:
            return
        inv, self._invalidate = self._invalidate, []
        watchers = [c for c in self.conns if c.track and not c.closing]
        if not watchers:
            return
        frames: dict = {}  # one encoded push per distinct set of other writers' keys
        for c in watchers:
            keys = [k for w, k in inv if w is not c]
            if not keys or c.transport is None or c.transport.is_closing():
                continue
            sig = None if len(keys) == len(inv) else id(c)  # None: wrote nothing itself
            if c.write_paused:
                c.push_all = True  # sent as one "anything may have changed" on resume
                continue
            frame = frames.get(sig)
            if frame is None:
                payload = None if any(k is None for k in keys) else b"".join(keys)
                frame = frames[sig] = P.encode_push("invalidate", payload)
            c.push(frame)

    # -- a run the loop could not answer whole (vtpu/_cserver.pyx) -----------------------
    def _each_put(self, conn: _Connection, msgids: list, keys: bytes,
                  contents: list) -> bytes:
        """Answer a run of PUTs one request at a time (the path for runs that failed
        whole)."""
        k = P.KEY_SIZE
        return b"".join([self.handle(conn, m, "PUT", [keys[i * k:(i + 1) * k], contents[i]])[0]
                         for i, m in enumerate(msgids)])

    def _errors(self, conn: _Connection, op: str, msgids: list, exc: Exception) -> bytes:
        """The same error reply for every request of a run."""
        return b"".join([self.error_frame(m, op, exc, conn.out_limit) for m in msgids])

    # -- one request ---------------------------------------------------------------------
    def handle(self, conn: _Connection, msgid: int, op: str, args: list) -> tuple[bytes, bool]:
        """Execute one decoded request. Returns (reply frame, wrote)."""
        if not conn.authed and op != "HELLO":
            code = "AUTH" if self.token is not None else "PROTOCOL"
            return P.encode_error(msgid, code, f"{op}: HELLO must come first",
                                  conn.out_limit), False
        if op == "HELLO":
            return self.hello(conn, msgid, args), False
        spec = P.OPS.get(op)
        if spec is None:
            return P.encode_error(msgid, "PROTOCOL", f"unknown opcode {op[:64]!r}",
                                  conn.out_limit), False
        try:
            self.dispatch.caller = conn
            if op == "BATCH":
                result = self.batch(args, conn)
            else:
                result = self.table[op](args)
            if type(result) is GeneratorType:
                return _Job(self, conn, msgid, op, args, result).start()
            if spec.writes:
                self.note_write(op, args, conn)
            return self.reply_frame(msgid, result, conn.out_limit), spec.writes
        except Exception as exc:
            return self.error_frame(msgid, op, exc, conn.out_limit), spec.writes

    @staticmethod
    def reply_frame(msgid: int, result: Any, limit: int) -> bytes:
        """The success reply carrying a handler's result."""
        if type(result) is ScrollResult:
            if result.values:
                return P.encode_response_contents(msgid, result.scrolls, limit)
            return P.encode_response_scrolls(msgid, result.scrolls, limit, result.page,
                                             result.after)
        if type(result) is BatchReply:
            return P.encode_response_items(msgid, result.items, limit)
        return P.encode_response(msgid, result, limit)

    def error_frame(self, msgid: int, op: str, exc: BaseException,
                    limit: int = P.DEFAULT_MAX_FRAME_SIZE) -> bytes:
        if is_internal(exc):
            # Not a validation error: a bug. The traceback stays here, the client
            # gets INTERNAL (never ARG) and the connection stays open.
            log.error("internal error in %s", op, exc_info=exc)
        code, msg = P.error_pair(exc)
        if isinstance(exc, LimitError) and op in ("RANGE", "GET_MANY", "KG"):
            msg += " (use a smaller limit or fewer keys per call)"
        elif isinstance(exc, LimitError) and op == "EXPORT_PHEXT":
            msg += " (export a narrower pattern at a time)"
        return P.encode_error(msgid, code, f"{op}: {msg}", limit)

    def note_write(self, op: str, args: list, conn: _Connection) -> None:
        if not self.trackers:  # nobody asked for invalidation pushes
            return
        # The writer is remembered: a connection is never told about its own writes.
        if op in ("PUT", "DEL", "PUT_MANY", "DEL_MANY"):
            self._invalidate.append((conn, args[0]))
        elif op != "INTERN":
            self._invalidate.append((conn, None))  # a range/import touched unknown keys
        self.commit_soon()

    def batch(self, args: list, conn: _Connection):
        """BATCH: its arguments are checked now, its operations run as steps."""
        _nargs(args, 1, 1)
        ops = args[0]
        if type(ops) is not list:
            raise InterfaceError("takes one array of [opcode, args] pairs")
        if len(ops) > self.max_batch:
            raise LimitError(f"{len(ops)} operations exceed max_batch {self.max_batch}", "LIMIT")
        return self._batch_steps(ops, conn)

    def _batch_steps(self, ops: list, conn: _Connection):
        """Steps: the operations in order, one or more steps each. Stopped by its time
        budget, a BATCH still answers: the operations done, then TIMEOUT for the one it
        stopped in and for each one not started."""
        results: list = []
        # The reply is one frame: stop as soon as the results pass the client's limit
        # instead of holding them all and failing at the end.
        size, limit = 16, conn.out_limit
        for i, item in enumerate(ops):
            if size > limit:
                break
            started = False
            try:
                yield
                started = True
                entry, n = yield from self._batch_item(item, conn)
                results.append(entry)
                size += n
            except RequestTimeout as exc:
                left = [P.STATUS_ERROR, [
                    "TIMEOUT", f"not executed: the BATCH ran out of time at operation {i}"]]
                if started:
                    code, msg = P.error_pair(exc)
                    results.append([P.STATUS_ERROR, [code, f"{item[0]}: {msg}"]])
                else:
                    results.append(left)
                results.extend([left] * (len(ops) - i - 1))
                break
        if size > limit:
            raise LimitError(
                f"stopped after {len(results)} of {len(ops)} operations: their results "
                f"pass the client's frame limit of {limit} bytes (those were executed, the "
                "rest not); send fewer operations per BATCH", "LIMIT")
        return BatchReply(results)

    def _batch_item(self, item: Any, conn: _Connection):
        """Steps of one BATCH operation; returns its ``[status, result-or-error]`` (see
        :func:`_batch_entry`) and about how many bytes that takes in the reply."""
        if (
            type(item) is not list
            or len(item) != 2
            or type(item[0]) is not str
            or type(item[1]) is not list
        ):
            return _batch_entry(P.STATUS_ERROR,
                                ["PROTOCOL", "batch item must be [opcode, args]"])
        op, a = item
        spec = P.OPS.get(op)
        if spec is None or op in ("HELLO", "BATCH"):
            msg = f"opcode {op[:64]!r} not allowed in BATCH"
            return _batch_entry(P.STATUS_ERROR, ["PROTOCOL", msg])
        try:
            r = self.table[op](a)
            if type(r) is GeneratorType:
                r = yield from r
            if spec.writes:
                self.note_write(op, a, conn)
            if type(r) is ScrollResult:
                yield   # its encoding is a step of its own (a page takes a few ms)
            return _batch_entry(P.STATUS_OK, r)
        except RequestTimeout:
            if spec.writes:
                self.note_write(op, a, conn)   # what it did before it stopped
            raise
        except Exception as exc:
            if is_internal(exc):
                log.error("internal error in BATCH %s", op, exc_info=exc)
            code, msg = P.error_pair(exc)
            return _batch_entry(P.STATUS_ERROR, [code, f"{op}: {msg}"])   # as error_frame

    def hello(self, conn: _Connection, msgid: int, args: list) -> bytes:
        """Answer HELLO (PROTOCOL.md section 4). A malformed one gets a typed error reply
        (``PROTOCOL`` and a close for a bad version, ``AUTH`` and a close for a bad token,
        ``ARG`` for bad options or too many arguments) and at most one log line per
        connection."""
        if len(args) > 3:
            return self._bad_hello(conn, msgid, "ARG",
                                   f"HELLO takes 1..3 arguments, got {len(args)}")
        version = args[0] if args else None
        token = args[1] if len(args) > 1 else None
        options = args[2] if len(args) > 2 and args[2] is not None else {}
        if type(version) is not int or version != P.PROTOCOL_VERSION:
            conn.closing = True
            return self._bad_hello(
                conn, msgid, "PROTOCOL",
                f"HELLO: protocol version {_describe(version)} not supported (server speaks "
                f"{P.PROTOCOL_VERSION})")
        if self.token is not None:
            ok = type(token) is str and hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), self.token.encode("utf-8")
            )
            if not ok:
                conn.closing = True
                return self._bad_hello(conn, msgid, "AUTH", "HELLO: missing or wrong token")
        if type(options) is not dict:
            return self._bad_hello(conn, msgid, "ARG", "HELLO: options must be a map, got "
                                                       + _describe(options))
        mfs = options.get("max_frame_size")
        if mfs is not None and (type(mfs) is not int or not 1024 <= mfs <= 0xFFFFFFFF):
            return self._bad_hello(conn, msgid, "ARG", "HELLO: max_frame_size must be an "
                                   f"integer in 1024..4294967295, got {_describe(mfs)}")
        track = options.get("track")
        if track is not None and type(track) is not bool:
            return self._bad_hello(conn, msgid, "ARG",
                                   f"HELLO: track must be a boolean, got {_describe(track)}")
        tms = options.get("timeout_ms")
        if tms is not None and (type(tms) is not int or not 1 <= tms <= 0xFFFFFFFF):
            return self._bad_hello(conn, msgid, "ARG", "HELLO: timeout_ms must be an integer "
                                   f"in 1..4294967295, got {_describe(tms)}")
        if tms is not None:
            mrt = self.max_request_time
            conn.request_timeout = tms / 1000 if not mrt else min(tms / 1000, mrt)
        if mfs is not None:
            conn.out_limit = min(self.max_frame_size, mfs)
        track = bool(track)
        self.trackers += int(track) - int(conn.track)
        conn.track = track
        if not conn.authed:
            conn.authed = True
            conn.decoder.max_frame_size = self.max_frame_size
            self.prehello.pop(conn, None)
        conn.hello = True
        names = getattr(self.engine, "names", None)
        epoch = getattr(names, "epoch", None)
        result = {
            "server": "vtpu",
            "version": __version__,
            "protocol": P.PROTOCOL_VERSION,
            "max_frame_size": self.max_frame_size,
            "max_batch": self.max_batch,
            "page_size": self.page_size,
            "names_epoch": epoch if isinstance(epoch, int) else 0,
            "max_request_ms": round(1000 * self.max_request_time),
        }
        return P.encode_response(msgid, result)

    def _bad_hello(self, conn: _Connection, msgid: int, code: str, msg: str) -> bytes:
        """The error reply to a failed HELLO, logged once per connection."""
        if not conn.hello_logged:
            # (INFO: a stranger's handshakes are not the operator's problem by default.)
            conn.hello_logged = True
            self.ratelog.log(logging.INFO, "hello", "%s: %s: %s", _peer(conn), code, msg)
        return P.encode_error(msgid, code, msg, conn.out_limit)


def _describe(v: Any) -> str:
    """A short description of a client's value for an error message (never a long
    repr: an argument can be a huge array)."""
    if v is None or type(v) in (bool, int, float):
        return repr(v)[:40]
    if type(v) is str:
        return repr(v[:32]) + ("..." if len(v) > 32 else "")
    if isinstance(v, np.ndarray):
        return f"an ndarray of {v.dtype} {list(v.shape)[:4]}"
    return f"a value of type {type(v).__name__}"


def _peer(conn: _Connection) -> str:
    p = conn.peer
    return f"{p[0]}:{p[1]}" if isinstance(p, tuple) and len(p) >= 2 else str(p)


def _reply_msgids(frames: bytes, max_frame_size: int) -> list[int]:
    """The msgids of the reply frames in ``frames`` (whole frames, in order)."""
    dec = P.FrameDecoder(max_frame_size)
    dec.feed(frames)
    return [msg[0] for msg in dec]


# poll() event of a peer that closed its end (Linux); elsewhere only hang-ups and errors.
_HANGUP = getattr(select, "POLLRDHUP", 0) if hasattr(select, "poll") else 0


class _Job:
    """One request running in steps (:mod:`vtpu.steps`) for a connection.

    It runs a slice (SLICE_SECONDS of steps) at a time, the first one at once; between
    slices the loop serves everything else, and the connection reads nothing more until
    the job has answered (its replies stay in request order). A job whose connection
    closed is dropped at its next slice (the generator is closed: no more work is done).
    One that runs past its budget (the server's ``max_request_time``, or the shorter
    ``timeout_ms`` the connection asked for in HELLO) gets :class:`RequestTimeout` thrown
    in between two steps and answers what that makes of it: a TIMEOUT error (saying what
    a write did so far), or a BATCH's partial results. A writing job commits after each
    slice (so a long delete never piles up one huge commit; on durable storage its
    slices are shorter, the commit being most of the cost) and tells trackers.

    While a job runs its connection is not read, so the loop would not see the client
    hang up: before each slice the job polls the socket for a hang-up itself. A group
    commit that fails while a job runs (its writes, or writes it may have read, were
    undone) ends the job with ``STORAGE``.
    """

    __slots__ = ("server", "conn", "msgid", "op", "args", "gen", "writes", "budget",
                 "deadline", "slice", "_poll", "_failures")

    def __init__(self, server: "_Server", conn: "_Connection", msgid: int, op: str, args: list,
                 gen: Any):
        self.server = server
        self.conn = conn
        self.msgid = msgid
        self.op = op
        self.args = args
        self.gen = gen
        self.writes = P.OPS[op].writes
        self.budget = conn.request_timeout or server.max_request_time
        self.deadline = time.perf_counter() + self.budget if self.budget else float("inf")
        durable = self.writes and server.storage is not None
        self.slice = SLICE_SECONDS / 4 if durable else SLICE_SECONDS
        self._poll: Any = None
        self._failures = server.failed_commits

    def start(self) -> tuple[bytes | None, bool]:
        """Run the first slice now (unless this read of the connection has used its
        slice already). Returns ``(reply frame, wrote)`` if that finished the request,
        else ``(None, wrote)``: the job goes on from the loop and answers, then resumes
        the connection, by itself."""
        conn = self.conn
        now = time.perf_counter()
        if not conn.slice_end:
            # The first request in steps of this read: the requests in steps of one read
            # share SLICE_SECONDS from now for their first slices.
            conn.slice_end = now + SLICE_SECONDS
        if now < conn.slice_end:
            done = self._slice()
            if done is not None:
                return done
        else:
            self.server.loop.call_soon(self._resume)
        conn.job = self
        conn.read_paused = True
        conn._update_reading()
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None and _HANGUP:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), _HANGUP)
        return None, self.writes

    def _hung_up(self) -> bool:
        """Whether the client closed its end (or the socket failed)."""
        if self._poll is None:
            return False
        try:
            events = self._poll.poll(0)
        except OSError:
            return True
        return any(ev & (_HANGUP | select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _, ev in events)

    def _slice(self) -> tuple[bytes, bool] | None:
        """Run steps for one slice; the reply when the request ended, else None (the next
        slice is scheduled)."""
        gen = self.gen
        # Replies are sized against, and interned names charged to, this job's client.
        self.server.dispatch.caller = self.conn
        now = time.perf_counter()
        end = now + self.slice
        try:
            while now < self.deadline:
                w = gen.send(None)
                if w is not None and isinstance(w, Future):
                    self._after_slice()
                    w.add_done_callback(self._wake)
                    return None
                now = time.perf_counter()
                if now >= end:
                    break
            else:
                return self._timed_out()
        except StopIteration as stop:
            return self._finish(stop.value)
        except Exception as exc:
            return self._failed(exc)
        self._after_slice()
        self.server.loop.call_soon(self._resume)
        return None

    def _wake(self, _: Future) -> None:
        # On the builder thread: resume on the loop (unless it was closed meanwhile).
        try:
            self.server.loop.call_soon_threadsafe(self._resume)
        except RuntimeError:
            pass

    def _after_slice(self) -> None:
        if self.writes:
            # What this slice wrote is committed with this loop turn's group commit (the
            # reply waits for the last one) and trackers hear of it now.
            if self.op != "BATCH":
                self.server.note_write(self.op, self.args, self.conn)
            self.server.commit_soon()

    def _timed_out(self) -> tuple[bytes, bool]:
        exc = RequestTimeout(f"stopped after {self.budget:g} s, its time budget (the "
                             "server's --max-request-time, or timeout_ms in HELLO)")
        self.server.dispatch.caller = self.conn
        try:
            self.gen.throw(exc)
        except StopIteration as stop:
            return self._finish(stop.value)   # a BATCH answers what it did
        except Exception as e:
            return self._failed(e)
        self.gen.close()   # it went on after the throw: stop it for good
        return self._failed(exc)

    def _finish(self, result: Any) -> tuple[bytes, bool]:
        if self.writes and self.op != "BATCH":
            self.server.note_write(self.op, self.args, self.conn)
        try:
            return self.server.reply_frame(self.msgid, result, self.conn.out_limit), self.writes
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc: BaseException) -> tuple[bytes, bool]:
        if self.writes and self.op != "BATCH":
            self.server.note_write(self.op, self.args, self.conn)
        return self.server.error_frame(self.msgid, self.op, exc, self.conn.out_limit), \
            self.writes

    def _resume(self) -> None:
        conn = self.conn
        if conn.closing or self._hung_up():
            # The client is gone (or the server is closing): nothing will read the
            # answer, so no more work is done for it.
            self.gen.close()
            conn.job = None
            if not conn.closing and conn.transport is not None:
                conn.closing = True
                conn.transport.abort()
            return
        if self.server.failed_commits != self._failures:
            self.gen.close()
            done = self._failed(StorageError(
                "a group commit failed while it ran and was undone; what its steps did "
                "before that stays done (repeat it once storage works again)"))
        else:
            done = self._slice()
        if done is None:
            return
        conn.job = None
        frame, wrote = done
        conn._send([frame], wrote)
        if not conn.closing:
            self.server.loop.call_soon(conn._continue)   # the requests read meanwhile


class ServerHandle:
    """A running server: ``.host``, ``.port``, ``await .close()`` / ``.close()``."""

    def __init__(self, server: _Server, aserver: asyncio.base_events.Server, host: str, port: int):
        self._server = server
        self._aserver = aserver
        self.host = host
        self.port = port
        self.engine = server.engine

    @property
    def connections(self) -> int:
        """Number of open client connections."""
        return len(self._server.conns)

    def close(self) -> None:
        """Stop accepting, close every client connection (pending replies are flushed
        after one last commit). Safe to call twice. Use :meth:`wait_closed` to wait."""
        self._aserver.close()
        self._server.stop_sweeping()
        if self._server._dirty:
            self._server.flush()
        for c in list(self._server.conns):
            c.closing = True
            if c.transport is not None:
                c.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""
        await self._aserver.wait_closed()

    async def aclose(self) -> None:
        """Close and wait."""
        self.close()
        await self.wait_closed()


async def start_server(
    engine: Any = None,
    host: str = "127.0.0.1",
    port: int = P.DEFAULT_PORT,
    token: str | None = None,
    max_frame_size: int = P.DEFAULT_MAX_FRAME_SIZE,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    reuse_address: bool = True,
    ssl: Any = None,
    unprotected: bool = False,
    limits: Limits | None = None,
    max_request_time: float = DEFAULT_MAX_REQUEST_TIME,
) -> ServerHandle:
    """Start serving ``engine`` on the running event loop.

    :param engine: a :class:`vtpu.engine.Engine` (a fresh in-memory one if ``None``).
    :param host: address to bind; loopback by default.
    :param port: TCP port; 0 picks a free one (read it back from ``.port``).
    :param token: if set, HELLO must carry this token.
    :param max_frame_size: largest frame body accepted and sent.
    :param page_size: scrolls per RANGE page.
    :param max_batch: most operations in one BATCH frame.
    :param ssl: an :class:`ssl.SSLContext` (see :func:`vtpu.tls.server_context`): every
        connection is TLS; ``None``: plaintext.
    :param unprotected: allow a non-loopback ``host`` without a token (see
        :func:`check_protected`).
    :param limits: per-connection limits and timeouts (:class:`Limits`; its defaults if
        ``None``).
    :param max_request_time: seconds a request may run (in steps, other clients served
        meanwhile) before it stops with ``TIMEOUT``; 0 for no limit. A connection may ask
        for less with the HELLO option ``timeout_ms``.
    :returns: a :class:`ServerHandle`.
    :raises InterfaceError: a non-loopback ``host`` in protected mode.
    :raises OSError: if the address cannot be bound.
    """
    check_protected(host, token, ssl, unprotected)
    if engine is None:
        from .engine import Engine

        engine = Engine()
    if getattr(engine, "storage", None) is not None and hasattr(engine, "autocommit"):
        # The server commits once per loop iteration (group commit), not per write.
        engine.autocommit = False
    if max_request_time < 0:
        raise InterfaceError(f"max_request_time must be >= 0, got {max_request_time}")
    state = _Server(engine, token, max_frame_size, page_size, max_batch, limits,
                    max_request_time)
    factory: Callable[[], asyncio.BaseProtocol] = lambda: _Connection(state)  # noqa: E731
    if ssl is not None and not issubclass(_Connection, asyncio.BufferedProtocol):
        scratch = memoryview(bytearray(TLS_READ_SIZE))
        factory = lambda: _TLSReader(_Connection(state), scratch)  # noqa: E731
    aserver = await asyncio.get_running_loop().create_server(
        factory, host, port, reuse_address=reuse_address, ssl=ssl
    )
    sock = aserver.sockets[0]
    bound = sock.getsockname()
    return ServerHandle(state, aserver, bound[0], bound[1])


def is_loopback(host: Any) -> bool:
    """Whether ``host`` (what :func:`start_server` binds) reaches loopback only.

    Loopback means 127.0.0.0/8, ``::1`` (also as ``::ffff:127.x.y.z``) and the name
    ``localhost``. Any other name counts as not loopback (it may resolve anywhere), and
    so do ``""``/``None`` (every interface); a list of hosts is loopback when each is.
    """
    if isinstance(host, (list, tuple, set, frozenset)):
        return bool(host) and all(is_loopback(h) for h in host)
    if not isinstance(host, str) or not host:
        return False
    h = host.strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def check_protected(host: Any, token: str | None, ssl: Any = None,
                    unprotected: bool = False) -> None:
    """Protected mode: refuse to serve a non-loopback address to anyone who connects.

    Allowed: a loopback ``host``, a ``token``, a TLS context that requires client
    certificates, or ``unprotected=True``.

    :raises InterfaceError: none of those holds (the message says how to fix it).
    """
    if unprotected or token is not None or is_loopback(host):
        return
    if ssl is not None and getattr(ssl, "verify_mode", None) == _cert_required():
        return
    raise InterfaceError(
        f"refusing to listen on {host!r} without a token (protected mode): anyone who "
        "can reach that address could read and change every scroll. Set a token "
        "(VTPU_TOKEN or --token-file; token= in serve()), require client certificates "
        "(--tls-ca), bind a loopback address (127.0.0.1), or pass --unprotected "
        "(unprotected=True) to serve it anyway")


def _cert_required() -> Any:
    import ssl as _ssl

    return _ssl.CERT_REQUIRED


TLS_READ_SIZE = 65536  # decrypted bytes handed over per TLS read (4 records of 16 KiB)


class _TLSReader(asyncio.BufferedProtocol):
    """Puts a connection on a TLS transport through a read buffer.

    asyncio's TLS layer (and uvloop's) reads for a plain :class:`asyncio.Protocol` by
    allocating a bytes object of 256 KiB per read and shrinking it: an mmap, mremap and
    munmap per request, which doubled a single GET's latency. A BufferedProtocol is read
    into its own buffer instead; this one hands each read to the connection as bytes.
    ``scratch`` is shared by every connection of a server: the TLS layer fills it and
    calls :meth:`buffer_updated` in one go on the loop thread, and the connection's
    decoder copies the bytes out before anything else can read.
    """

    def __init__(self, conn: _Connection, scratch: memoryview):
        self.conn = conn
        self.scratch = scratch

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        # The connection's decoder copies what it is fed at once: no bytes object needed.
        self.conn.data_received(self.scratch[:nbytes])


def _one_blas_thread() -> bool:
    """Keep OpenBLAS (numpy's matrix products) to one thread in this process.

    The loop's thread computes ATTEND/ATTEND_MANY a slice at a time between other
    requests; BLAS worker threads only compete with it for the cores, and on a loaded
    machine they turn a small product of microseconds into milliseconds (and the steps
    with it). Best effort, like ``threadpoolctl``: the library numpy loaded is found in
    the process's memory map (Linux) and told through its own call.

    :returns: whether a library was found and set.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[5] for line in f
                     if len(line.split()) >= 6 and "openblas" in line.split()[5].lower()}
    except OSError:
        return False
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)
                done = True
                break
    return done


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def serve(
    host: str = "127.0.0.1",
    port: int = P.DEFAULT_PORT,
    data: str | None = None,
    fsync: str = "everysec",
    token: str | None = None,
    max_frame_size: int = P.DEFAULT_MAX_FRAME_SIZE,
    ready: Callable[[ServerHandle], None] | None = None,
    ssl: Any = None,
    unprotected: bool = False,
    limits: Limits | None = None,
    max_request_time: float = DEFAULT_MAX_REQUEST_TIME,
    max_batch: int = DEFAULT_MAX_BATCH,
    checkpoint_interval: float | None = None,
) -> None:
    """Run a server until SIGINT/SIGTERM (blocking).

    On a signal it stops accepting, flushes held replies after a last commit, closes the
    connections and the storage, and returns. The process's BLAS runs on one thread (see
    :func:`_one_blas_thread`).

    :param host: address to bind (loopback by default).
    :param port: TCP port (0 = any free port; printed on stderr).
    :param data: directory for durable storage; ``None`` keeps everything in memory.
    :param fsync: ``"always"``, ``"everysec"`` or ``"never"`` (with ``data``).
    :param checkpoint_interval: seconds between background copies of the WAL into the
        database (with ``data``; default: the storage's).
    :param token: if set, clients must present it in HELLO.
    :param max_frame_size: largest frame body accepted and sent.
    :param ready: called with the handle once listening (tests, CLI banners).
    :param ssl: an :class:`ssl.SSLContext` to serve TLS with (see
        :func:`vtpu.tls.server_context`); ``None``: plaintext.
    :param unprotected: allow a non-loopback ``host`` without a token.
    :param max_request_time: as :func:`start_server`.
    :param max_batch: most operations in one BATCH frame.
    :raises InterfaceError: a non-loopback ``host`` in protected mode (checked before
        anything is created or opened).
    :param limits: per-connection limits and timeouts (:class:`Limits`).
    :raises StorageError: if ``data`` is locked by another server or unusable.
    """
    from .engine import Engine

    check_protected(host, token, ssl, unprotected)

    storage = None
    if data is not None:
        from .storage import CHECKPOINT_SECONDS, Storage

        os.makedirs(data, exist_ok=True)
        storage = Storage(data, fsync=fsync, checkpoint_interval=(
            CHECKPOINT_SECONDS if checkpoint_interval is None else checkpoint_interval))
    engine = Engine(storage=storage, autocommit=False) if storage is not None else Engine()
    _one_blas_thread()
    _core.keep_heap()   # this process is the server's: large requests reuse their pages
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    async def run() -> None:
        loop.set_exception_handler(_quiet_descriptor_errors)
        handle = await start_server(engine, host, port, token=token,
                                    max_frame_size=max_frame_size, max_batch=max_batch,
                                    ssl=ssl, unprotected=unprotected, limits=limits,
                                    max_request_time=max_request_time)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread / not supported: rely on KeyboardInterrupt
        if not is_loopback(host) and token is None:
            log.warning("serving %s without a token (unprotected): anyone who can reach it "
                        "can read and change every scroll", host)
        print(
            f"vtpu {__version__} serving on {handle.host}:{handle.port}"
            + (" over TLS" if ssl is not None else "")
            + (f" data={data} fsync={fsync}" if data else " (in memory)"),
            file=sys.stderr,
            flush=True,
        )
        if ready is not None:
            ready(handle)
        try:
            await stop.wait()
        finally:
            await handle.aclose()

    try:
        loop.run_until_complete(run())
    except KeyboardInterrupt:
        pass
    finally:
        try:
            engine.close()
        finally:
            loop.close()
            asyncio.set_event_loop(None)


_DESCRIPTOR_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_loop_log = _RateLimitedLog(every=10.0)


def _quiet_descriptor_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's exception handler: out-of-descriptor errors while accepting (the loop
    backs off and retries by itself) are logged at most once per 10 s, without a
    traceback; anything else goes to the default handler."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in _DESCRIPTOR_ERRORS:
        _loop_log.warning("accept", "cannot accept connections: %s (lower --max-clients or "
                          "raise the descriptor limit)", exc.strerror or exc)
        return
    loop.default_exception_handler(context)


def _size(text: str) -> int:
    """A byte count with an optional k/m/g suffix (powers of 1024)."""
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256m)") from None


_SERVE_EPILOG = """\
security:
  Without a token, vtpu serve only listens on loopback (127.0.0.0/8, ::1, localhost);
  another --host needs a token, client certificates (--tls-ca) or --unprotected.
  Give the token in $VTPU_TOKEN or --token-file (mode 600); --token works but shows
  in the process list (ps, /proc/PID/cmdline). With --tls-cert/--tls-key every
  connection is TLS (clients use vtpus://HOST:PORT).
"""


def _read_token_file(path: str) -> str:
    """The token in ``path`` (its trailing newline removed); warns when the file is
    open to group or others.

    :raises InterfaceError: unreadable, not UTF-8, or empty.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except OSError as exc:
        raise InterfaceError(f"--token-file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        log.warning("token file %s is accessible by group/others (mode %04o): "
                    "chmod 600 %s", path, mode & 0o777, path)
    try:
        token = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InterfaceError(f"--token-file {path}: not UTF-8 text") from None
    if not token:
        raise InterfaceError(f"--token-file {path}: the file is empty")
    return token


def _token(ns: argparse.Namespace) -> str | None:
    """The token from ``--token``, ``--token-file`` or ``$VTPU_TOKEN`` (in that order)."""
    if ns.token is not None:
        log.warning("--token shows the token in the process list (ps, /proc/PID/cmdline) "
                    "to every user of this machine: use VTPU_TOKEN or --token-file")
        if not ns.token:
            raise InterfaceError("--token: the token is empty")
        return ns.token
    if ns.token_file is not None:
        return _read_token_file(ns.token_file)
    return os.environ.get("VTPU_TOKEN") or None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vtpu serve``."""
    ap = argparse.ArgumentParser(
        prog="vtpu serve", description="Run a vtpu server.", epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; see security below)")
    ap.add_argument("--port", type=int, default=P.DEFAULT_PORT,
                    help=f"TCP port, 0 = any free one (default {P.DEFAULT_PORT})")
    ap.add_argument("--data", default=None, metavar="DIR",
                    help="directory for durable storage (default: in memory only)")
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "never"],
                    help="when writes reach the disk, with --data (default everysec)")
    ap.add_argument("--checkpoint-interval", type=float, default=None, metavar="SECONDS",
                    help="seconds between background copies of the WAL into the database, "
                         "with --data (default 0.25)")
    tok = ap.add_mutually_exclusive_group()
    tok.add_argument("--token-file", metavar="PATH",
                     help="read the token clients must send from PATH (default: $VTPU_TOKEN)")
    tok.add_argument("--token", metavar="T",
                     help="the token on the command line (visible in the process list)")
    ap.add_argument("--unprotected", action="store_true",
                    help="allow a non-loopback --host without a token")
    ap.add_argument("--tls-cert", metavar="CERT",
                    help="serve TLS with this PEM certificate (chain)")
    ap.add_argument("--tls-key", metavar="KEY",
                    help="the certificate's PEM private key (default: inside CERT)")
    ap.add_argument("--tls-ca", metavar="CA",
                    help="require client certificates signed by this PEM CA")
    ap.add_argument("--max-frame-size", type=int, default=P.DEFAULT_MAX_FRAME_SIZE,
                    metavar="BYTES", help="largest request/reply body (default 64 MiB)")
    d = Limits()
    ap.add_argument("--max-clients", type=int, default=None, metavar="N",
                    help="most open connections (default: the descriptor limit minus "
                         f"{d.fd_reserve})")
    ap.add_argument("--timeout", type=float, default=d.idle_timeout, metavar="SECONDS",
                    help="close a connection that sent nothing for this long (default 0: "
                         "never)")
    ap.add_argument("--hello-timeout", type=float, default=d.hello_timeout, metavar="SECONDS",
                    help="close a connection without a successful HELLO after this long "
                         f"(default {d.hello_timeout:g})")
    ap.add_argument("--frame-timeout", type=float, default=d.frame_timeout, metavar="SECONDS",
                    help="close a connection whose started frame gets no byte for this "
                         f"long, or stays incomplete 6 times as long (default "
                         f"{d.frame_timeout:g})")
    ap.add_argument("--output-limit", nargs=3, type=str, metavar=("HARD", "SOFT", "SECONDS"),
                    default=None, help="close a connection whose unsent replies pass HARD, "
                    "or stay above SOFT for SECONDS (default "
                    f"{d.output_hard >> 20}m {d.output_soft >> 20}m {d.output_soft_seconds:g})")
    ap.add_argument("--names-per-second", type=int, default=d.names_per_second, metavar="N",
                    help="new names one connection may intern per second (default "
                         f"{d.names_per_second})")
    ap.add_argument("--input-limit", type=_size, default=d.input_total, metavar="SIZE",
                    help="bytes of large frames (1m and over) buffered at once over all "
                         "connections; a connection whose frame does not fit waits "
                         f"(default {d.input_total >> 20}m)")
    ap.add_argument("--max-request-time", type=float, default=DEFAULT_MAX_REQUEST_TIME,
                    metavar="SECONDS",
                    help="stop a request with TIMEOUT after this long (0: never; "
                         f"default {DEFAULT_MAX_REQUEST_TIME:g})")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="OPS",
                    help=f"most operations in one BATCH (default {DEFAULT_MAX_BATCH})")
    ap.add_argument("--log-level", default="WARNING", help="default WARNING")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``vtpu serve`` / ``python -m vtpu.server``: parse ``argv`` and run :func:`serve`.

    :param argv: arguments without the program name (``None``: ``sys.argv[1:]``).
    :returns: process exit status (2 for a refused configuration: protected mode, a
        bad token file, unusable TLS files).
    """
    ap = build_parser()
    ns = ap.parse_args(argv)
    limits = dataclasses.replace(
        Limits(), max_clients=ns.max_clients, idle_timeout=ns.timeout, hello_timeout=ns.hello_timeout,
        frame_timeout=ns.frame_timeout, names_per_second=ns.names_per_second,
        input_total=ns.input_limit)
    if ns.output_limit is not None:
        try:
            hard, soft = _size(ns.output_limit[0]), _size(ns.output_limit[1])
            secs = float(ns.output_limit[2])
        except (argparse.ArgumentTypeError, ValueError) as exc:
            ap.error(f"--output-limit: {exc}")
        limits = dataclasses.replace(limits, output_hard=hard, output_soft=soft,
                                     output_soft_seconds=secs)
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr)
    if (ns.tls_key or ns.tls_ca) and not ns.tls_cert:
        ap.error("--tls-key and --tls-ca need --tls-cert")
    if ns.max_request_time < 0:
        ap.error("--max-request-time must be >= 0")
    if ns.max_batch < 1:
        ap.error("--max-batch must be >= 1")
    try:
        token = _token(ns)
        ctx = None
        if ns.tls_cert:
            from .tls import server_context

            ctx = server_context(ns.tls_cert, ns.tls_key, ns.tls_ca)
        serve(ns.host, ns.port, data=ns.data, fsync=ns.fsync, token=token,
              max_frame_size=ns.max_frame_size, ssl=ctx, unprotected=ns.unprotected,
              limits=limits, max_request_time=ns.max_request_time, max_batch=ns.max_batch,
              checkpoint_interval=ns.checkpoint_interval)
    except InterfaceError as exc:
        print(f"vtpu serve: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        # A store that cannot be opened (locked, damaged, behind its commit counter):
        # the message says what and what to do; a traceback would only bury it.
        print(f"vtpu serve: StorageError: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
