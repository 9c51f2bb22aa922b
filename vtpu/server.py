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
import hmac
import ipaddress
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from . import wire as P
from ._version import __version__
from .engine import MAX_FRONTIER, MAX_HOPS, MAX_K
from .errors import (
    CoordinateError,
    InterfaceError,
    LimitError,
    ProtocolError,
    StorageError,
    is_internal,
)

__all__ = ["start_server", "serve", "main", "ServerHandle", "DEFAULT_PAGE_SIZE",
           "is_loopback", "check_protected"]

log = logging.getLogger("vtpu.server")

DEFAULT_PAGE_SIZE = 65536  # scrolls per RANGE page; a page is one engine call
DEFAULT_MAX_BATCH = 100_000  # operations per BATCH frame
# Frames handled per read before yielding to the loop, so one client pipelining
# thousands of requests cannot starve the others.
FRAMES_PER_SLICE = 128


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


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**63 - 1, none_ok: bool = False) -> Any:
    if v is None and none_ok:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise InterfaceError(f"{what} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _bool(v: Any, what: str) -> bool:
    if v is None:
        return False
    if type(v) is not bool:
        raise InterfaceError(f"{what} must be a boolean, got {v!r}")
    return v


def _pattern(v: Any, what: str = "pattern") -> np.ndarray:
    if type(v) is not bytes or len(v) != P.PATTERN_SIZE:
        raise InterfaceError(f"{what} must be a packed pattern (bin of 36 bytes)")
    return P.unpack_pattern(v)


def _coord(v: Any, what: str = "coordinate") -> np.ndarray:
    return P.unpack_coord(P.check_key(v, what))


class _Dispatcher:
    """Decodes arguments, calls the engine, encodes results. One per server."""

    def __init__(self, engine: Any, page_size: int, max_batch: int):
        self.engine = engine
        self.page_size = page_size
        self.max_batch = max_batch
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
        ifv = _int(_opt(a, 2), "if_version", 0, none_ok=True)
        return self._put(key, a[1], ifv) if ifv is not None else self._put(key, a[1])

    def delete(self, a: list) -> int:
        _nargs(a, 1, 1)
        return self.engine.delete(P.check_key(a[0]))

    # -- many keys -----------------------------------------------------------------------
    def get_many(self, a: list) -> Any:
        _nargs(a, 1, 2)
        blob = P.check_blob(a[0])
        if _bool(_opt(a, 1), "content_only"):
            # Values only: one array of N contents (nil where nothing is stored).
            return list(self.engine.get_many(blob, content_only=True))
        return ScrollResult(self.engine.get_many(blob))

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

    def delete_range(self, a: list) -> int:
        _nargs(a, 1, 1)
        return self.engine.delete_range(_pattern(a[0]))

    # -- queries -------------------------------------------------------------------------
    def range(self, a: list) -> list:
        _nargs(a, 1, 4)
        pat = _pattern(a[0])
        limit = _int(_opt(a, 1), "limit", 0, none_ok=True)
        after = _opt(a, 2)
        if after is not None:
            P.check_key(after, "after")
        keys_only = _bool(_opt(a, 3), "keys_only")
        # Long results are paged: the server answers at most page_size items and says
        # where to continue, so one huge range never holds the loop for long.
        page = self.page_size * (16 if keys_only else 1)
        if limit is not None and limit <= page:
            # The caller's limit fits one page: the answer is complete by definition.
            res = self.engine.range(pat, limit=limit, after=after, keys_only=keys_only)
            more = False
        else:
            # Ask for one more than a page to learn whether another page follows.
            res = self.engine.range(pat, limit=page + 1, after=after, keys_only=keys_only)
            more = len(res) > page
            if more:
                res = res[:page]
        if keys_only:
            arr = np.asarray(res, dtype=np.uint16).reshape(-1, 9)
            nxt = P.pack_coord(arr[-1]) if more else None
            return [P.pack_coords(arr), nxt]
        return ScrollResult(res, True, res[-1].key if more else None)

    def count(self, a: list) -> int:
        _nargs(a, 1, 1)
        return int(self.engine.count(_pattern(a[0])))

    def nearest(self, a: list) -> list:
        _nargs(a, 1, 4)
        c = _coord(a[0])
        k = _int(_opt(a, 1, 10), "k", 0, MAX_K)
        metric = _opt(a, 2, "l1")
        if type(metric) is not str or metric not in ("l1", "hamming"):
            raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
        within = _opt(a, 3)
        within = None if within is None else _pattern(within, "within")
        coords, dist = self.engine.nearest(c, k=k, metric=metric, within=within)
        return [P.pack_coords(np.asarray(coords).reshape(-1, 9)), np.asarray(dist, dtype=np.int64)]

    def hier(self, a: list) -> Any:
        _nargs(a, 2, 2)
        c = _coord(a[0])
        d = a[1]
        if type(d) is not str or d not in ("NEXT", "PREV"):
            raise InterfaceError(f"direction must be 'NEXT' or 'PREV', got {d!r}")
        r = self.engine.hier(c, d)
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
        top_k = _int(_opt(a, 2), "top_k", 0, none_ok=True)
        values = self._values(_opt(a, 3))
        ret = _opt(a, 4, True)
        ret = True if ret is None else _bool(ret, "return_output")
        mode = _opt(a, 5)
        if mode is not None and mode not in ("auto", "dot", "distance"):
            raise InterfaceError(f"mode must be 'auto', 'dot' or 'distance', got {mode!r}")
        kw = {} if mode is None else {"mode": mode}
        r = self.engine.attend(q, pat, top_k=top_k, values=values, return_output=ret, **kw)
        return _attend_out(r)

    def attend_many(self, a: list) -> dict:
        _nargs(a, 2, 5)
        q = a[0]
        if not isinstance(q, np.ndarray):
            q = P.check_blob(q, P.KEY_SIZE, "queries")
        pats = P.unpack_patterns(P.check_blob(a[1], P.PATTERN_SIZE, "key patterns"))
        kw: dict = {}
        top_k = _int(_opt(a, 2), "top_k", 0, none_ok=True)
        if top_k is not None:
            kw["top_k"] = top_k  # engines without top_k reject it (ARG), never ignore it
        values = self._values(_opt(a, 3))
        if values is not None:
            kw["values"] = values
        if _bool(_opt(a, 4), "return_weights"):
            kw["return_weights"] = True
        return _attend_out(self.engine.attend_many(q, pats, **kw))

    def kg(self, a: list) -> list:
        _nargs(a, 2, 4)
        start = _pattern(a[0], "start")
        deltas = P.unpack_deltas(P.check_blob(a[1], P.DELTA_SIZE, "deltas"))
        hops = _int(_opt(a, 2, 1), "hops", 0, MAX_HOPS)
        mf = _int(_opt(a, 3, 10000), "max_frontier", 1, MAX_FRONTIER)
        return ScrollResult(self.engine.kg(start, deltas, hops, max_frontier=mf))

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
        return [int(i) for i in self.engine.intern(names)]

    def import_phext(self, a: list) -> int:
        _nargs(a, 1, 2)
        if type(a[0]) is not str:
            raise InterfaceError("the text must be a string")
        return self.engine.import_phext(a[0], skip_invalid=_bool(_opt(a, 1), "skip_invalid"))

    def export_phext(self, a: list) -> str:
        _nargs(a, 0, 2)
        pat = _opt(a, 0)
        pat = None if pat is None else _pattern(pat)
        return self.engine.export_phext(pat, skip_invalid=_bool(_opt(a, 1), "skip_invalid"))


class ScrollResult(NamedTuple):
    """A result that is a scroll list (GET_MANY, KG) or a RANGE page of one: encoded by
    the codec's column encoder straight from the Scrolls."""

    scrolls: list
    page: bool = False
    after: bytes | None = None

    def wire(self) -> Any:
        """The generic wire value (inside a BATCH result)."""
        w = P.scrolls_to_wire(self.scrolls)
        return [w, self.after] if self.page else w


def _attend_out(r: dict) -> dict:
    out = dict(r)
    keys = out.get("keys")
    if keys is not None:
        out["keys"] = P.pack_coords(np.asarray(keys, dtype=np.uint16).reshape(-1, 9))
    return out


# ---------------------------------------------------------------------------------------
# Connections


class _Connection(asyncio.Protocol):
    """One client connection: frames in, replies out, in request order."""

    def __init__(self, server: "_Server"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.decoder = P.FrameDecoder(server.max_frame_size)
        self.authed = False  # set by a successful HELLO (required first, token or not)
        self.hello = False
        self.out_limit = server.max_frame_size  # lowered by the client's HELLO option
        self.track = False
        self.pending: list[bytes] = []  # replies waiting for the group commit
        self.closing = False
        self.read_paused = False  # by us, to yield after FRAMES_PER_SLICE
        self.write_paused = False  # by the transport's flow control
        self.peer = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.server.conns.add(self)
        # Replies are written whole; keep the buffer small so a client that stops
        # reading is paused quickly instead of growing server memory.
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.track:
            self.track = False
            self.server.trackers -= 1
        self.server.conns.discard(self)
        self.pending.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.write_paused or self.read_paused:
            t.pause_reading()
        else:
            t.resume_reading()

    def data_received(self, data: bytes | memoryview) -> None:
        """Feed what arrived to the decoder, then answer the complete requests buffered
        (at most FRAMES_PER_SLICE of them, then the loop's other callbacks run first)."""
        if self.closing:
            return
        dec = self.decoder
        dec.feed(data)
        if self.read_paused:
            return  # _continue answers it
        server = self.server
        take = dec.next_requests
        out: list[bytes] = []
        wrote = False
        handled = 0
        try:
            while handled < FRAMES_PER_SLICE:
                try:
                    item = take(FRAMES_PER_SLICE - handled)
                except P.RequestError as exc:
                    # The frame boundary is intact: a bad request, the connection survives.
                    handled += 1
                    out.append(P.encode_error(exc.msgid, "PROTOCOL", str(exc), self.out_limit))
                    continue
                if item is None:
                    break
                if len(item) == 4:
                    # A run of plain GETs or PUTs: one engine call, one encoder call.
                    op, msgids, keys, contents = item
                    handled += len(msgids)
                    if contents is None:
                        out.append(server.get_run(self, msgids, keys))
                        continue
                    frame, w = server.put_run(self, msgids, keys, contents)
                else:
                    handled += 1
                    frame, w = server.handle(self, item[0], item[1], item[2])
                out.append(frame)
                wrote = wrote or w
                if self.closing:
                    break
        except ProtocolError as exc:
            # The byte stream can no longer be trusted: say why once, then close.
            out.append(P.encode_error(0, *P.error_pair(exc), self.out_limit))
            self.closing = True
        self._send(out, wrote)
        if self.closing:
            return
        if handled >= FRAMES_PER_SLICE and dec.buffered():
            # More requests already buffered: let other connections run first.
            self.read_paused = True
            self._update_reading()
            server.loop.call_soon(self._continue)

    def eof_received(self) -> bool | None:
        # A client vanishing mid-frame: whatever partial frame is buffered is dropped.
        return None

    def _continue(self) -> None:
        self.read_paused = False
        if self.closing:
            return
        self._update_reading()
        self.data_received(b"")  # answer what is buffered already

    def _send(self, out: list[bytes], wrote: bool) -> None:
        if not out:
            if self.closing:
                self._close_after_flush()
            return
        server = self.server
        if self.pending or (server.storage is not None and (wrote or server._dirty)):
            # Hold the replies until the group commit at the end of this loop iteration
            # (reads too, once a write is uncommitted: they may show it).
            self.pending.extend(out)
            server.schedule_flush(self)
        else:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            if self.closing:
                self._close_after_flush()

    def flush_pending(self) -> None:
        if self.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending))
        self.pending.clear()
        if self.closing:
            self._close_after_flush()

    def _close_after_flush(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            # close() flushes what is buffered, then closes.
            t.close()


class _Server:
    """Shared state of one listening server."""

    def __init__(self, engine: Any, token: str | None, max_frame_size: int, page_size: int,
                 max_batch: int):
        self.engine = engine
        self.storage = getattr(engine, "storage", None)
        self.token = token
        self.max_frame_size = max_frame_size
        self.max_batch = max_batch
        self.page_size = page_size
        self.dispatch = _Dispatcher(engine, page_size, max_batch)
        self.table = self.dispatch.table
        self._get = engine.get
        self._get_many = engine.get_many
        self._put = engine.put
        self.trackers = 0  # connections that asked for invalidation pushes
        self.conns: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()
        self._dirty: list[_Connection] = []
        self._flush_scheduled = False
        # (writer, keys written or None) this iteration, for invalidate pushes
        self._invalidate: list[tuple[_Connection, bytes | None]] = []
        self.commit_failures = 0  # consecutive failed group commits
        self.started = time.time()

    # -- group commit --------------------------------------------------------------------
    def schedule_flush(self, conn: _Connection) -> None:
        self._dirty.append(conn)
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
            frame = frames.get(sig)
            if frame is None:
                payload = None if any(k is None for k in keys) else b"".join(keys)
                frame = frames[sig] = P.encode_push("invalidate", payload)
            c.transport.write(frame)

    # -- runs of plain GETs ---------------------------------------------------------------
    def get_run(self, conn: _Connection, msgids: list, keys: bytes) -> bytes:
        """Answer a run of plain GET requests: ``keys`` holds their N 18-byte keys.

        One engine call (``get`` for one key, ``get_many`` for more) and one encoder call;
        a reply that does not fit the client's frame limit is answered alone, with a
        LIMIT error, and the others as usual.

        :returns: the N reply frames.
        """
        if conn.authed:
            try:
                scrolls = [self._get(keys)] if len(msgids) == 1 else self._get_many(keys)
                return P.encode_get_replies(msgids, scrolls, conn.out_limit)
            except Exception:
                pass  # answered one by one below, each with its own error
        return self._each(conn, "GET", msgids, keys, None)

    def put_run(self, conn: _Connection, msgids: list, keys: bytes,
                contents: list) -> tuple[bytes, bool]:
        """Answer a run of plain PUT requests (``[key, content]``, no ``if_version``).

        One engine call (``put`` for one key, ``put_many`` for more: the same versions
        as one ``put`` after the other) and one encoder call. If the batch is refused
        for an argument (a content the engine cannot store, an unknown name id),
        nothing was written and each PUT is executed on its own, so each request gets
        its own answer.

        :returns: ``(the N reply frames, whether anything may have been written)``.
        """
        if not conn.authed:
            return self._each(conn, "PUT", msgids, keys, contents), False
        try:
            if len(msgids) == 1:
                versions = [self._put(keys, contents[0])]
            else:
                versions = self.dispatch.put_many([keys, contents])
        except (InterfaceError, CoordinateError):
            return self._each(conn, "PUT", msgids, keys, contents), True
        except Exception as exc:
            return self._errors(conn, "PUT", msgids, exc), True
        if self.trackers:
            self.note_write("PUT_MANY", [keys], conn)
        return P.encode_responses(msgids, versions, conn.out_limit), True

    def _each(self, conn: _Connection, op: str, msgids: list, keys: bytes,
              contents: list | None) -> bytes:
        """Answer a run one request at a time (the path for runs that failed whole)."""
        k = P.KEY_SIZE
        out = []
        for i, m in enumerate(msgids):
            args = [keys[i * k:(i + 1) * k]] if contents is None else \
                [keys[i * k:(i + 1) * k], contents[i]]
            out.append(self.handle(conn, m, op, args)[0])
        return b"".join(out)

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
            if op == "BATCH":
                result = self.batch(args, conn)
            else:
                result = self.table[op](args)
                if spec.writes:
                    self.note_write(op, args, conn)
            if type(result) is ScrollResult:
                return P.encode_response_scrolls(msgid, result.scrolls, conn.out_limit,
                                                 result.page, result.after), False
            return P.encode_response(msgid, result, conn.out_limit), spec.writes
        except Exception as exc:
            return self.error_frame(msgid, op, exc, conn.out_limit), spec.writes

    def error_frame(self, msgid: int, op: str, exc: BaseException,
                    limit: int = P.DEFAULT_MAX_FRAME_SIZE) -> bytes:
        if is_internal(exc):
            # Not a validation error: a bug. The traceback stays here, the client
            # gets INTERNAL (never ARG) and the connection stays open.
            log.error("internal error in %s", op, exc_info=exc)
        code, msg = P.error_pair(exc)
        if isinstance(exc, LimitError) and op in ("RANGE", "GET_MANY", "KG"):
            msg += " (use a smaller limit or fewer keys per call)"
        return P.encode_error(msgid, code, f"{op}: {msg}", limit)

    def note_write(self, op: str, args: list, conn: _Connection) -> None:
        if not self.trackers:  # nobody asked for invalidation pushes
            return
        # The writer is remembered: a connection is never told about its own writes.
        if op in ("PUT", "DEL", "PUT_MANY", "DEL_MANY"):
            self._invalidate.append((conn, args[0]))
        elif op != "INTERN":
            self._invalidate.append((conn, None))  # a range/import touched unknown keys
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def batch(self, args: list, conn: _Connection) -> list:
        _nargs(args, 1, 1)
        ops = args[0]
        if type(ops) is not list:
            raise InterfaceError("takes one array of [opcode, args] pairs")
        if len(ops) > self.max_batch:
            raise LimitError(f"{len(ops)} operations exceed max_batch {self.max_batch}", "LIMIT")
        results = []
        for item in ops:
            if (
                type(item) is not list
                or len(item) != 2
                or type(item[0]) is not str
                or type(item[1]) is not list
            ):
                results.append([P.STATUS_ERROR, ["PROTOCOL", "batch item must be [opcode, args]"]])
                continue
            op, a = item
            spec = P.OPS.get(op)
            if spec is None or op in ("HELLO", "BATCH"):
                msg = f"opcode {op[:64]!r} not allowed in BATCH"
                results.append([P.STATUS_ERROR, ["PROTOCOL", msg]])
                continue
            try:
                r = self.table[op](a)
                if spec.writes:
                    self.note_write(op, a, conn)
                results.append([P.STATUS_OK, r.wire() if type(r) is ScrollResult else r])
            except Exception as exc:
                if is_internal(exc):
                    log.error("internal error in BATCH %s", op, exc_info=exc)
                code, msg = P.error_pair(exc)
                results.append([P.STATUS_ERROR, [code, f"{op}: {msg}"]])   # as error_frame
        return results

    def hello(self, conn: _Connection, msgid: int, args: list) -> bytes:
        version = args[0] if args else None
        token = args[1] if len(args) > 1 else None
        options = args[2] if len(args) > 2 and args[2] is not None else {}
        if version != P.PROTOCOL_VERSION:
            conn.closing = True
            return P.encode_error(
                msgid, "PROTOCOL",
                f"HELLO: protocol version {version!r} not supported (server speaks "
                f"{P.PROTOCOL_VERSION})",
            )
        if self.token is not None:
            ok = isinstance(token, str) and hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), self.token.encode("utf-8")
            )
            if not ok:
                conn.closing = True
                return P.encode_error(msgid, "AUTH", "HELLO: missing or wrong token")
        if type(options) is not dict:
            return P.encode_error(msgid, "ARG", "HELLO: options must be a map")
        mfs = options.get("max_frame_size")
        if mfs is not None and (type(mfs) is not int or not 1024 <= mfs <= 0xFFFFFFFF):
            return P.encode_error(msgid, "ARG", f"HELLO: max_frame_size must be an integer "
                                                f"in 1024..4294967295, got {mfs!r:.40}")
        track = options.get("track")
        if track is not None and type(track) is not bool:
            return P.encode_error(msgid, "ARG", f"HELLO: track must be a boolean, got {track!r:.40}")
        if mfs is not None:
            conn.out_limit = min(self.max_frame_size, mfs)
        track = bool(track)
        self.trackers += int(track) - int(conn.track)
        conn.track = track
        conn.authed = True
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
        }
        return P.encode_response(msgid, result)


def _reply_msgids(frames: bytes, max_frame_size: int) -> list[int]:
    """The msgids of the reply frames in ``frames`` (whole frames, in order)."""
    dec = P.FrameDecoder(max_frame_size)
    dec.feed(frames)
    return [msg[0] for msg in dec]


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
    state = _Server(engine, token, max_frame_size, page_size, max_batch)
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
) -> None:
    """Run a server until SIGINT/SIGTERM (blocking).

    On a signal it stops accepting, flushes held replies after a last commit, closes the
    connections and the storage, and returns.

    :param host: address to bind (loopback by default).
    :param port: TCP port (0 = any free port; printed on stderr).
    :param data: directory for durable storage; ``None`` keeps everything in memory.
    :param fsync: ``"always"``, ``"everysec"`` or ``"never"`` (with ``data``).
    :param token: if set, clients must present it in HELLO.
    :param max_frame_size: largest frame body accepted and sent.
    :param ready: called with the handle once listening (tests, CLI banners).
    :param ssl: an :class:`ssl.SSLContext` to serve TLS with (see
        :func:`vtpu.tls.server_context`); ``None``: plaintext.
    :param unprotected: allow a non-loopback ``host`` without a token.
    :raises InterfaceError: a non-loopback ``host`` in protected mode (checked before
        anything is created or opened).
    :raises StorageError: if ``data`` is locked by another server or unusable.
    """
    from .engine import Engine

    check_protected(host, token, ssl, unprotected)

    storage = None
    if data is not None:
        from .storage import Storage

        os.makedirs(data, exist_ok=True)
        storage = Storage(data, fsync=fsync)
    engine = Engine(storage=storage, autocommit=False) if storage is not None else Engine()
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    async def run() -> None:
        handle = await start_server(engine, host, port, token=token,
                                    max_frame_size=max_frame_size, ssl=ssl,
                                    unprotected=unprotected)
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
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr)
    if (ns.tls_key or ns.tls_ca) and not ns.tls_cert:
        ap.error("--tls-key and --tls-ca need --tls-cert")
    try:
        token = _token(ns)
        ctx = None
        if ns.tls_cert:
            from .tls import server_context

            ctx = server_context(ns.tls_cert, ns.tls_key, ns.tls_ca)
        serve(ns.host, ns.port, data=ns.data, fsync=ns.fsync, token=token,
              max_frame_size=ns.max_frame_size, ssl=ctx, unprotected=ns.unprotected)
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
