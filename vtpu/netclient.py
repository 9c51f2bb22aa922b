"""The network backend: :class:`RemoteEngine` speaks the vtpu protocol to a server.

It implements the Engine methods of ``CONTRACTS.md`` with the same names and
signatures (plus an optional keyword-only ``timeout=``), so the :class:`vtpu.client.Client`
facade can use it wherever it would use an in-process :class:`vtpu.engine.Engine`.

Connection contract
    * Connecting is lazy: the first call opens the socket (``TCP_NODELAY``), sends HELLO
      and waits for the answer, all within ``connect_timeout``.
    * Every call has a deadline on :func:`time.monotonic` (``timeout``, or the per-call
      ``timeout=``); a call made of several round trips (a paged RANGE) shares one budget.
    * Socket errors are translated at one boundary: a timeout becomes
      :class:`vtpu.errors.TimeoutError`, any other ``OSError`` becomes
      :class:`vtpu.errors.ConnectionError`; raw socket errors never reach callers.
    * On *any* failure in the middle of a call (timeout, connection error, a malformed
      frame, even ``KeyboardInterrupt``) the socket is closed: a half-read reply would
      desynchronise the stream. The next call reconnects.
    * Only opcodes the protocol marks idempotent are retried automatically (``retries``
      times, after a connection error; never after a timeout).
    * Server errors (:class:`vtpu.errors.ServerError` and friends, ``CoordinateError``,
      ``InterfaceError``) leave the connection open.

Thread safety
    One RemoteEngine may be shared by threads: a lock serialises whole request/response
    exchanges (and whole pipelines), so replies never interleave. For parallelism use one
    RemoteEngine per thread. After ``os.fork()`` the child notices the changed pid and
    opens its own connection instead of sharing the parent's socket.
"""
from __future__ import annotations

import logging
import os
import random
import select
import socket
import struct
import threading
import time
from typing import Any, Callable

import numpy as np

from . import _core
from . import errors as E
from . import protocol as P
from .coords import NameTable, Scroll

__all__ = ["RemoteEngine", "Pipeline", "ClientOps", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_TIMEOUT"]

log = logging.getLogger("vtpu.client")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0
# A connection idle for longer than this is checked for a peer close before it is used,
# so a server restart costs a reconnect rather than a failed non-idempotent write.
IDLE_CHECK_SECONDS = 1.0

# Request frames are built by hand: length, fixarray(3), uint32 msgid, opcode, args.
# The opcode bytes are encoded once; the msgid always uses the 5-byte uint32 form so the
# header has a fixed layout.
_HDR = struct.Struct(">IBBI")
_OPBYTES = {name: P.packb(name) for name in P.OPS}
_GET_TAIL = _OPBYTES["GET"] + b"\x91\xc4\x12"  # args = [bin8(18)]
_PUT2 = _OPBYTES["PUT"] + b"\x92\xc4\x12"  # args = [bin8(18), content]
_LEN = struct.Struct(">I")
_unpackb = P.unpackb

# Fork detection without a system call per request (os.getpid() is not cached by
# glibc): the child bumps a generation counter, connections remember theirs.
_fork_gen = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _fork_gen.__setitem__(0, _fork_gen[0] + 1))


def _request_frame(msgid: int, op: str, tail: bytes, max_frame_size: int) -> bytes:
    n = len(tail) + 6
    if n > max_frame_size:
        raise E.LimitError(
            f"{op}: request of {n} bytes exceeds max_frame_size {max_frame_size}", "LIMIT"
        )
    return _HDR.pack(n, 0x93, 0xCE, msgid) + tail


def _as_key(key: Any, what: str = "key") -> bytes:
    if type(key) is bytes and len(key) == P.KEY_SIZE:
        return key
    if isinstance(key, (bytearray, memoryview)) and len(key) == P.KEY_SIZE:
        return bytes(key)
    if isinstance(key, np.ndarray) and key.shape == (9,):
        return P.pack_coord(key)
    raise E.InterfaceError(f"{what} must be a packed coordinate (18 bytes) or a (9,) array")


def _as_blob(blob: Any) -> bytes:
    if type(blob) is bytes:
        if len(blob) % P.KEY_SIZE:
            raise E.InterfaceError(f"key blob of {len(blob)} bytes is not a multiple of 18")
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return _as_blob(bytes(blob))
    if isinstance(blob, np.ndarray):
        return P.pack_coords(blob.reshape(-1, 9))
    raise E.InterfaceError("keys must be an N*18-byte blob or an (N, 9) array")


def _as_pattern(p: Any, what: str = "pattern") -> bytes:
    if type(p) is bytes and len(p) == P.PATTERN_SIZE:
        return p
    return P.pack_pattern(np.asarray(p))


def _as_values(v: Any) -> Any:
    if v is None or (type(v) is bytes and len(v) in (P.PATTERN_SIZE, P.DELTA_SIZE)):
        return v
    a = np.asarray(v)
    if a.shape != (2, 9):
        raise E.InterfaceError(f"values must be a (2, 9) pattern or delta, got shape {a.shape}")
    # The two forms are told apart by dtype: deltas are int32, patterns uint16.
    return P.pack_delta(a) if a.dtype == np.int32 else P.pack_pattern(a)


class _Resolver:
    """NameTable resolver of a RemoteEngine: misses are answered by the server."""

    def __init__(self, engine: "RemoteEngine"):
        self.engine = engine

    def __call__(self, names: list, intern: bool) -> list:
        return self.engine._execute("INTERN", [list(names), bool(intern)], None, None)

    def full_table(self) -> list:
        return self.engine._execute("NAMES", [], None, None)


class _Continue:
    """A RANGE page that says where to continue; resolved by the executor."""

    __slots__ = ("items", "after", "args", "keys_only")

    def __init__(self, items, after, args, keys_only):
        self.items = items
        self.after = after
        self.args = args
        self.keys_only = keys_only


class ClientOps:
    """The Engine-shaped methods, written once over an abstract ``_execute``.

    :class:`RemoteEngine` executes immediately, :class:`Pipeline` queues, and
    :class:`vtpu.aio.AsyncRemoteEngine` returns awaitables; all share these encoders and
    result decoders, so there is one copy of every opcode's wire shape on the client.
    Subclasses provide ``_execute(op, args, decode, timeout)`` and ``_decoders`` (an
    object with ``scroll``/``scrolls``/``names`` helpers, normally the engine itself).
    """

    _dec: "_Decoders"

    def _execute(self, op: str, args: list, decode: Callable[[Any], Any] | None,
                 timeout: float | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- single key ----------------------------------------------------------------------
    def get(self, key: bytes, *, timeout: float | None = None) -> Any:
        """Read one scroll.

        :param key: packed coordinate (18 bytes).
        :returns: a :class:`vtpu.coords.Scroll` or ``None``.
        :raises ConnectionError, TimeoutError: transport failures.
        """
        return self._execute("GET", [_as_key(key)], self._dec.scroll, timeout)

    def put(self, key: bytes, content: Any, if_version: int | None = None, *,
            timeout: float | None = None) -> int:
        """Write one scroll.

        :param key: packed coordinate.
        :param content: str, bytes, numpy array or any msgpack-able value.
        :param if_version: compare-and-set: write only if the current version is this
            (0 = only if absent).
        :returns: the new version.
        :raises VersionConflict: the compare-and-set failed.
        """
        k = _as_key(key)
        args = [k, content] if if_version is None else [k, content, if_version]
        return self._execute("PUT", args, None, timeout)

    def delete(self, key: bytes, *, timeout: float | None = None) -> int:
        """Delete one scroll. :returns: 1 if it existed, else 0."""
        return self._execute("DEL", [_as_key(key)], None, timeout)

    # -- many keys -----------------------------------------------------------------------
    def get_many(self, blob: bytes, content_only: bool = False, *,
                 timeout: float | None = None) -> Any:
        """Read many scrolls in one round trip.

        :param blob: N*18 bytes of packed keys (or an ``(N, 9)`` array).
        :param content_only: return only the contents (``GET_MANY [keys, true]``): the
            server sends one array of N values, no keys, versions or times.
        :returns: a list of N entries, each a Scroll or ``None``; with ``content_only`` a
            list of N contents, ``None`` where nothing is stored.
        :raises ProtocolError: a values-only reply that is not an array of N values.
        """
        b = _as_blob(blob)
        if content_only:
            return self._execute("GET_MANY", [b, True], _contents_decoder(len(b) // P.KEY_SIZE),
                                 timeout)
        return self._execute("GET_MANY", [b], self._dec.scrolls_or_none, timeout)

    def put_many(self, blob: bytes, contents: Any, *, timeout: float | None = None) -> Any:
        """Write many scrolls in one round trip.

        :param blob: N*18 bytes of packed keys (or an ``(N, 9)`` array).
        :param contents: a list of N contents, or an ndarray whose row i is content i
            (sent as one ext value, no per-row work).
        :returns: the list of new versions.
        """
        if not isinstance(contents, (list, np.ndarray)):
            contents = list(contents)
        return self._execute("PUT_MANY", [_as_blob(blob), contents], None, timeout)

    def delete_many(self, blob: bytes, *, timeout: float | None = None) -> int:
        """Delete many keys. :returns: how many existed."""
        return self._execute("DEL_MANY", [_as_blob(blob)], None, timeout)

    def delete_range(self, pattern: Any, *, timeout: float | None = None) -> int:
        """Delete every scroll matching a ``(2, 9)`` pattern. :returns: how many."""
        return self._execute("DEL_RANGE", [_as_pattern(pattern)], None, timeout)

    # -- queries -------------------------------------------------------------------------
    def range(self, pattern: Any, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False, *, timeout: float | None = None) -> Any:
        """Scrolls matching a pattern, in coordinate order (fetched page by page).

        :param pattern: ``(2, 9)`` uint16 pattern.
        :param limit: at most this many (``None``: all).
        :param after: exclusive start key, for paging.
        :param keys_only: return an ``(M, 9)`` uint16 array of coordinates instead.
        :returns: a list of Scrolls, or an ndarray when ``keys_only``.
        """
        args = [_as_pattern(pattern), limit, None if after is None else _as_key(after, "after"),
                bool(keys_only)]
        return self._execute("RANGE", args, self._dec.range_page(args), timeout)

    def count(self, pattern: Any, *, timeout: float | None = None) -> int:
        """How many scrolls match a pattern."""
        return self._execute("COUNT", [_as_pattern(pattern)], None, timeout)

    def nearest(self, c: Any, k: int = 10, metric: str = "l1", within: Any = None, *,
                timeout: float | None = None) -> Any:
        """The k stored coordinates nearest to ``c``.

        :returns: ``(coords (m, 9) uint16, distances (m,) int64)``.
        """
        args = [_as_key(c, "c"), int(k), metric, None if within is None else _as_pattern(within)]
        return self._execute("NEAREST", args, _dec_nearest, timeout)

    def hier(self, c: Any, direction: str, *, timeout: float | None = None) -> Any:
        """The next/previous stored coordinate in document order, or ``None``."""
        d = direction.upper() if isinstance(direction, str) else direction
        return self._execute("HIER", [_as_key(c, "c"), d], _dec_coord, timeout)

    def attend(self, q: Any, key_pattern: Any, top_k: int | None = None, values: Any = None,
               return_output: bool = True, *, timeout: float | None = None) -> dict:
        """Attention of query ``q`` (a stored key or a vector) over matching scrolls.

        :returns: the dict described in CONTRACTS.md (``keys`` as an ``(m, 9)`` array).
        """
        if not isinstance(q, np.ndarray):
            q = _as_key(q, "q")
        args = [q, _as_pattern(key_pattern), top_k, _as_values(values), bool(return_output)]
        return self._execute("ATTEND", args, _dec_attend, timeout)

    def attend_many(self, queries: Any, key_patterns: Any, top_k: int | None = None,
                    values: Any = None, return_weights: bool = False, *,
                    timeout: float | None = None) -> dict:
        """Many attention queries in one round trip (see :meth:`attend`).

        :param queries: ``(Q, d)`` float array, or packed keys of stored query vectors.
        :param key_patterns: ``(Q, 2, 9)`` uint16 patterns, one per query.
        :returns: the engine's dict (``outputs`` (Q, d_v), ``counts``, ``weights`` if asked).
        """
        if not isinstance(queries, np.ndarray):
            queries = _as_blob(queries)  # packed keys of stored query vectors
        pats = key_patterns if type(key_patterns) is bytes else P.pack_patterns(key_patterns)
        args = [queries, pats, top_k, _as_values(values), bool(return_weights)]
        return self._execute("ATTEND_MANY", args, _dec_attend, timeout)

    def kg(self, start: Any, deltas: Any, hops: int, max_frontier: int = 10000, *,
           timeout: float | None = None) -> list:
        """Multi-hop traversal; returns the final frontier's scrolls."""
        d = deltas if type(deltas) is bytes else P.pack_deltas(np.asarray(deltas).reshape(-1, 2, 9))
        args = [_as_pattern(start, "start"), d, int(hops), int(max_frontier)]
        return self._execute("KG", args, self._dec.scrolls, timeout)

    # -- names and admin -----------------------------------------------------------------
    def intern(self, names: list, *, timeout: float | None = None) -> list:
        """Intern names on the server; returns their ids (0xF000 + index)."""
        names = list(names)
        return self._execute("INTERN", [names], self._dec.interned(names), timeout)

    def name_table(self, *, timeout: float | None = None) -> list:
        """The server's whole name table (index i = id 0xF000 + i)."""
        return self._execute("NAMES", [], self._dec.name_list, timeout)

    def health(self, *, timeout: float | None = None) -> dict:
        """The server's health report."""
        return self._execute("HEALTH", [], None, timeout)

    def stats(self, *, timeout: float | None = None) -> dict:
        """The server's statistics."""
        return self._execute("STATS", [], None, timeout)

    def ping(self, *, timeout: float | None = None) -> str:
        """Round trip with no work; returns ``"PONG"``."""
        return self._execute("PING", [], None, timeout)

    def import_phext(self, text: str, skip_invalid: bool = False, *,
                     timeout: float | None = None) -> int:
        """Import a .phext document on the server; returns how many scrolls."""
        return self._execute("IMPORT_PHEXT", [text, bool(skip_invalid)], None, timeout)

    def export_phext(self, pattern: Any = None, skip_invalid: bool = False, *,
                     timeout: float | None = None) -> str:
        """Export scrolls (all, or those matching ``pattern``) as .phext text."""
        p = None if pattern is None else _as_pattern(pattern)
        return self._execute("EXPORT_PHEXT", [p, bool(skip_invalid)], None, timeout)


# -- result decoders that need no client state ----------------------------------------------


def _dec_nearest(r: Any) -> tuple:
    blob, dist = r
    return P.unpack_coords(blob), np.asarray(dist, dtype=np.int64)


def _contents_decoder(n: int) -> Callable[[Any], Any]:
    """Decoder of a values-only GET_MANY reply: an array of exactly ``n`` values."""

    def dec(r: Any) -> Any:
        return _check_contents(r, n)

    return dec


def _check_contents(r: Any, n: int) -> list:
    if type(r) is not list or len(r) != n:
        got = f"{len(r)} values" if type(r) is list else type(r).__name__
        raise E.ProtocolError(f"GET_MANY values-only reply: expected {n} values, got {got}")
    return r


def _dec_coord(r: Any) -> Any:
    return None if r is None else P.unpack_coord(r)


def _dec_attend(r: Any) -> dict:
    if type(r) is dict and type(r.get("keys")) is bytes:
        r["keys"] = P.unpack_coords(r["keys"])
    return r


class _Decoders:
    """Result decoders that build Scrolls (coordinate strings need the name table)."""

    def __init__(self, owner: Any):
        self.owner = owner

    def _scroll_cls(self):
        from .coords import Scroll

        return Scroll

    def make(self, key, content, version, created, updated):
        return self.owner._make_scroll(key, content, version, created, updated)

    def scroll(self, r: Any) -> Any:
        if r is None:
            return None
        try:
            key, content, version, created, updated = r
        except (TypeError, ValueError):
            raise E.ProtocolError("malformed scroll in reply") from None
        return self.owner._make_scroll(key, content, version, created, updated)

    def scrolls_or_none(self, r: Any) -> list:
        make = self.owner._make_scroll
        return [None if row is None else make(*row) for row in P.wire_to_rows(r)]

    def scrolls(self, r: Any) -> list:
        make = self.owner._make_scroll
        return [make(*row) for row in P.wire_to_rows(r) if row is not None]

    def range_page(self, args: list) -> Callable[[Any], Any]:
        keys_only = args[3]

        def dec(r: Any) -> Any:
            try:
                body, after = r
            except (TypeError, ValueError):
                raise E.ProtocolError("malformed RANGE reply") from None
            items = P.unpack_coords(body) if keys_only else self.scrolls(body)
            if after is None:
                return items
            return _Continue(items, after, args, keys_only)

        return dec

    def interned(self, names: list) -> Callable[[Any], Any]:
        def dec(ids: Any) -> Any:
            self.owner._learn_names(names, ids)
            return ids

        return dec

    def name_list(self, r: Any) -> list:
        self.owner._learn_table(r)
        return r


def _merge_pages(pages: list, keys_only: bool) -> Any:
    if keys_only:
        return np.concatenate(pages) if len(pages) > 1 else pages[0]
    out: list = []
    for p in pages:
        out.extend(p)
    return out


def _jitter_sleep(base: float, attempt: int) -> None:
    time.sleep(base * (2**attempt) * (0.5 + random.random()))


class RemoteEngine(ClientOps):
    """Engine methods over a TCP connection to a vtpu server.

    :param host: server address (loopback by default).
    :param port: server port.
    :param token: auth token sent in HELLO (if the server requires one).
    :param connect_timeout: seconds for TCP connect + HELLO.
    :param timeout: default seconds per call (``None``: wait forever); override per call
        with ``timeout=``.
    :param max_frame_size: largest frame body sent or accepted.
    :param socket_factory: ``f(address, timeout) -> socket`` used instead of
        :func:`socket.create_connection` (tests inject short-read sockets this way).
    :param retries: automatic retries of idempotent calls after a connection error.
    :param retry_backoff: base of the jittered exponential backoff between retries.
    :param track: ask the server for invalidation pushes (see :attr:`on_push`).

    Error handling
        Every exception a call raises is a :class:`vtpu.errors.VTPUError`; raw socket
        and msgpack errors never escape. The class is chosen by the server's error code
        (PROTOCOL.md §3.1); catch classes, never match message texts (informative only).

        ===================================  ===============  ==================  =========
        exception (code)                     at fault         connection          retried
        ===================================  ===============  ==================  =========
        ``CoordinateError`` (``COORD``)      caller           stays open          no
        ``InterfaceError`` (``ARG``)         caller           stays open          no
        ``NotFoundError`` (``NOT_FOUND``)    caller           stays open          no
        ``LimitError`` (``LIMIT``)           caller           stays open          no
        ``VersionConflict`` (``CONFLICT``)   a concurrent     stays open          no
                                             writer
        ``AuthError`` (``AUTH``)             configuration    closed              no
        ``InternalError`` (``INTERNAL``)     server (a bug;   stays open          no
                                             traceback in
                                             the server log)
        ``StorageError`` (``STORAGE``)       server's store   stays open          no
        ``ProtocolError``                    the sender of a  closed when a       no
                                             bad frame        reply could not be
                                                              decoded; open for a
                                                              ``PROTOCOL`` reply
        ``ConnectionError``                  network/server   closed              idempotent
                                                                                  opcodes
        ``TimeoutError``                     network/server   closed              no
        ===================================  ===============  ==================  =========

        * Caller errors found locally (a malformed coordinate, a request over
          ``max_frame_size``) are raised before anything is sent.
        * "Closed" means this client closed its socket (a half-read stream is never
          reused); the next call reconnects transparently.
        * Only opcodes the protocol marks idempotent are retried, ``retries`` times
          after a :class:`~vtpu.errors.ConnectionError`, with jittered exponential
          backoff from ``retry_backoff``. A timed-out or failed non-idempotent write
          may or may not have taken effect.
        * In a pipeline every call gets its own result or exception; the first exception
          is raised after all replies were read (unless ``raise_on_error=False``).
        * An exception raised by :attr:`on_push` is logged on the ``vtpu.client`` logger
          and otherwise ignored; the connection goes on.

    See the module docstring for the connection and thread-safety contract.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = P.DEFAULT_PORT,
        token: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame_size: int = P.DEFAULT_MAX_FRAME_SIZE,
        socket_factory: Callable[..., Any] | None = None,
        retries: int = 1,
        retry_backoff: float = 0.05,
        track: bool = False,
    ):
        self.host = host
        self.port = port
        self.token = token
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_frame_size = max_frame_size
        self.socket_factory = socket_factory
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.track = track
        #: called with (kind, payload) for every server push (e.g. "invalidate", keys blob)
        self.on_push: Callable[[str, Any], None] | None = None
        #: the server's HELLO answer, once connected
        self.server_info: dict | None = None
        self._dec = _Decoders(self)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._gen = _fork_gen[0]
        self._sock: Any = None
        self._sock_timeout: float | None = -1.0  # what settimeout() was last given
        self._msgid = 0
        self._last_io = 0.0
        self._rbuf = bytearray(65536)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._names = None
        self._closed = False

    # -- names ---------------------------------------------------------------------------
    @property
    def names(self) -> Any:
        """A client-side :class:`vtpu.coords.NameTable` cache; misses ask the server."""
        if self._names is None:
            self._names = self._make_names()
        return self._names

    def _make_names(self) -> Any:
        return NameTable(resolver=_Resolver(self))

    def _learn_names(self, names: list, ids: Any) -> None:
        # Ids are positional, so a name can be cached only if its id is the next one;
        # anything else is left for the table to resolve on a miss.
        table = self._names
        if table is None or not isinstance(ids, list):
            return
        for name, i in zip(names, ids):
            if name not in table and i == _core.NAME_BASE + len(table):
                table.extend([name])

    def _learn_table(self, names: Any) -> None:
        if self._names is not None and isinstance(names, list):
            self._names.extend_from(names)

    def _make_scroll(self, key, content, version, created, updated):
        return Scroll(key, content, version, created, updated, self._names or self.names)

    # -- connection ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether a socket is currently open (it may still turn out to be dead)."""
        return self._sock is not None and self._gen == _fork_gen[0]

    def close(self) -> None:
        """Close the connection. The engine stays usable: the next call reconnects."""
        with self._lock:
            self._drop()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; never raise from a finaliser
        try:
            s = self._sock
            if s is not None and self._pid == os.getpid():
                s.close()
        except Exception:
            pass

    def _drop(self) -> None:
        s, self._sock = self._sock, None
        self._rstart = self._rend = 0
        if s is not None and self._pid == os.getpid():
            try:
                s.close()
            except OSError:
                pass

    def _check_fork(self) -> None:
        pid = os.getpid()
        if pid != self._pid or self._gen != _fork_gen[0]:
            # Forked: the socket belongs to the parent. Forget it without touching it
            # (closing our copy of the fd would be harmless, sending on it would not).
            self._pid = pid
            self._gen = _fork_gen[0]
            self._sock = None
            self._rstart = self._rend = 0
            self._lock = threading.Lock()

    def _connect(self) -> None:
        deadline = None if self.connect_timeout is None else time.monotonic() + self.connect_timeout
        addr = (self.host, self.port)
        try:
            if self.socket_factory is not None:
                sock = self.socket_factory(addr, self.connect_timeout)
            else:
                sock = socket.create_connection(addr, timeout=self.connect_timeout)
        except OSError as exc:
            raise E.translate_socket_error(exc, f"connect to {self.host}:{self.port}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (a test double or a unix socket): nothing to tune
        self._sock = sock
        self._sock_timeout = -1.0
        self._rstart = self._rend = 0
        self._last_io = time.monotonic()
        options = {"max_frame_size": self.max_frame_size}
        if self.track:
            options["track"] = True
        try:
            msgid = self._next_id()
            frame = P.encode_request(msgid, "HELLO", [P.PROTOCOL_VERSION, self.token, options])
            self._send(frame, deadline)
            ok, value = self._recv_reply(msgid, deadline)
        except BaseException:
            self._drop()
            raise
        if not ok:
            self._drop()
            raise E.error_from_code(value[0], f"HELLO to {self.host}:{self.port}: {value[1]}")
        self.server_info = value

    def _ensure(self) -> Any:
        if self._gen != _fork_gen[0]:
            self._check_fork()
        sock = self._sock
        if sock is not None and time.monotonic() - self._last_io > IDLE_CHECK_SECONDS:
            if self._peer_closed(sock):
                self._drop()
                sock = None
        if sock is None:
            self._connect()
            sock = self._sock
        return sock

    def _peer_closed(self, sock: Any) -> bool:
        if self._rend > self._rstart:
            return False
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            sock.settimeout(0)
            self._sock_timeout = 0
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return False
            return not data
        except (OSError, ValueError, TypeError, AttributeError):
            return True

    def _next_id(self) -> int:
        m = self._msgid + 1
        if m > 0xFFFFFFFF:
            m = 1
        self._msgid = m
        return m

    # -- raw I/O (the one place socket errors are translated) ------------------------------
    def _set_timeout(self, deadline: float | None) -> None:
        # settimeout() is a system call, so the common case must not need one: the
        # socket keeps its current timeout while that still fits the remaining budget
        # with some slack, and is lowered to the remaining time only near the deadline.
        # (Each blocking operation is thereby bounded by the deadline plus at most a
        # quarter of the previous setting.)
        cur = self._sock_timeout
        if deadline is None:
            if cur is not None:
                self._sock.settimeout(None)
                self._sock_timeout = None
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise E.TimeoutError(f"call to {self.host}:{self.port} timed out")
        if cur is None or cur <= 0 or left < cur * 0.75 or left > cur * 4:
            self._sock.settimeout(left)
            self._sock_timeout = left

    def _send(self, data: bytes, deadline: float | None) -> None:
        try:
            self._set_timeout(deadline)
            self._sock.sendall(data)
        except E.VTPUError:
            raise
        except OSError as exc:
            raise E.translate_socket_error(exc, f"send to {self.host}:{self.port}") from exc

    def _fill(self, deadline: float | None) -> None:
        """Receive at least one more byte into the buffer."""
        if self._rstart == self._rend:
            self._rstart = self._rend = 0
        elif self._rend == len(self._rbuf):
            # Move the partial frame to the front before reading more.
            n = self._rend - self._rstart
            self._rbuf[:n] = self._rview[self._rstart : self._rend]
            self._rstart, self._rend = 0, n
        try:
            self._set_timeout(deadline)
            n = self._sock.recv_into(self._rview[self._rend :])
        except E.VTPUError:
            raise
        except OSError as exc:
            raise E.translate_socket_error(exc, f"receive from {self.host}:{self.port}") from exc
        if not n:
            raise E.ConnectionError(f"server {self.host}:{self.port} closed the connection")
        self._rend += n

    def _recv_msg(self, deadline: float | None, raw: bool = False) -> Any:
        """Read exactly one frame and decode it (``raw``: return the body bytes)."""
        while True:
            avail = self._rend - self._rstart
            if avail >= 4:
                (n,) = _LEN.unpack_from(self._rbuf, self._rstart)
                if n > self.max_frame_size or n == 0:
                    raise E.ProtocolError(
                        f"reply frame of {n} bytes (max_frame_size {self.max_frame_size})"
                    )
                if avail >= 4 + n:
                    start = self._rstart + 4
                    self._rstart = start + n
                    if raw:
                        return bytes(self._rview[start : start + n])
                    return P.unpackb(self._rview[start : start + n])
                if 4 + n > len(self._rbuf):
                    # A big reply: grow the buffer once to hold it whole.
                    nb = bytearray(4 + n)
                    nb[:avail] = self._rview[self._rstart : self._rend]
                    self._rview.release()
                    self._rbuf = nb
                    self._rview = memoryview(nb)
                    self._rstart, self._rend = 0, avail
            self._fill(deadline)

    def _recv_reply(self, msgid: int, deadline: float | None,
                    raw: bool = False) -> tuple[bool, Any]:
        """Read frames until the reply to ``msgid``; pushes in between go to on_push.

        With ``raw``, a success reply's value is returned undecoded, as
        ``(body bytes, offset of the value)``.
        """
        head = b"\x93" + P.packb(msgid) + b"\x00" if raw else None
        while True:
            msg = self._recv_msg(deadline, raw)
            if raw:
                if msg.startswith(head):
                    return True, (msg, len(head))
                msg = P.unpackb(msg)
            if type(msg) is list and len(msg) == 3 and msg[0] == msgid:
                status = msg[1]
                if status == 0:
                    return True, msg[2]
                r = P.parse_reply(msg)
                return False, r.value
            # A push is handed on and reading goes on; anything else raises.
            self._handle_stray(msg, msgid)

    def _handle_push(self, push: P.Push) -> None:
        cb = self.on_push
        if cb is not None:
            try:
                cb(push.kind, push.payload)
            except Exception:
                # A faulty callback must not desynchronise the connection: log, go on.
                log.exception("on_push callback failed for a %r push", push.kind)

    # -- calls ---------------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is None else timeout
        return None if t is None else time.monotonic() + t

    def _roundtrip(self, op: str, tail: bytes, deadline: float | None) -> tuple[bool, Any]:
        """Send one request and read its reply; closes the socket on any failure."""
        with self._lock:
            sock = self._sock
            now = time.monotonic()
            if (sock is None or self._gen != _fork_gen[0]
                    or now - self._last_io > IDLE_CHECK_SECONDS):
                sock = self._ensure()
            m = self._msgid + 1
            if m > 0xFFFFFFFF:
                m = 1
            self._msgid = m
            n = len(tail) + 6
            if n > self.max_frame_size:
                raise E.LimitError(
                    f"{op}: request of {n} bytes exceeds max_frame_size {self.max_frame_size}",
                    "LIMIT",
                )
            try:
                self._set_timeout(deadline)
                sock.sendall(_HDR.pack(n, 0x93, 0xCE, m) + tail)
                if self._rend == self._rstart:
                    # Fast path: the whole reply usually arrives in one recv.
                    got = sock.recv_into(self._rview)
                    if got >= 4:
                        size = _LEN.unpack_from(self._rbuf)[0]
                        if size + 4 == got and 0 < size <= self.max_frame_size:
                            self._rstart = self._rend = 0
                            msg = _unpackb(self._rview[4:got])
                            if type(msg) is list and len(msg) == 3 and msg[0] == m:
                                self._last_io = time.monotonic()
                                if msg[1] == 0:
                                    return True, msg[2]
                                return False, P.parse_reply(msg).value
                            self._handle_stray(msg, m)  # a push: consumed
                            got = 0
                    elif not got:
                        raise E.ConnectionError(
                            f"server {self.host}:{self.port} closed the connection"
                        )
                    self._rstart, self._rend = 0, got
                ok, value = self._recv_reply(m, deadline)
            except E.VTPUError:
                self._drop()
                raise
            except OSError as exc:
                self._drop()
                raise E.translate_socket_error(exc, f"{op} to {self.host}:{self.port}") from exc
            except BaseException:
                # Whatever happened, the stream may hold half a reply: never reuse it.
                self._drop()
                raise
            self._last_io = time.monotonic()
            return ok, value

    def _handle_stray(self, msg: Any, msgid: int) -> None:
        """A frame that is not our reply arrived alone: a push, or a fatal error."""
        r = P.parse_reply(msg)
        if isinstance(r, P.Push):
            self._handle_push(r)
            return
        if r.msgid == 0 and not r.ok:
            # Connection-level error: the server closes after sending it.
            raise E.error_from_code(r.value[0], r.value[1])
        raise E.ProtocolError(f"reply id {r.msgid} does not match request id {msgid}")

    def _with_retry(self, idempotent: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """Return ``fn(*args)``; after a ConnectionError, call it again with a jittered
        backoff, up to ``retries`` times, but only when the exchange is idempotent."""
        attempt = 0
        while True:
            try:
                return fn(*args)
            except E.ConnectionError:
                if not idempotent or attempt >= self.retries:
                    raise
                _jitter_sleep(self.retry_backoff, attempt)
                attempt += 1

    def _call_tail(self, op: str, tail: bytes, idempotent: bool, timeout: float | None) -> Any:
        ok, value = self._with_retry(idempotent, self._roundtrip, op, tail,
                                     self._deadline(timeout))
        if ok:
            return value
        raise E.error_from_code(value[0], value[1])

    def _execute(self, op: str, args: list, decode: Callable[[Any], Any] | None,
                 timeout: float | None) -> Any:
        spec = P.OPS[op]
        tail = _OPBYTES[op] + P.packb(args)
        value = self._call_tail(op, tail, spec.idempotent, timeout)
        if decode is None:
            return value
        value = decode(value)
        if type(value) is _Continue:
            return self._follow(value, timeout)
        return value

    def _follow(self, page: _Continue, timeout: float | None) -> Any:
        """Fetch the remaining RANGE pages after the first (one budget for all)."""
        pages = [page.items]
        got = len(page.items)
        args = list(page.args)
        limit = args[1]
        deadline = self._deadline(timeout)
        while page.after is not None and (limit is None or got < limit):
            args[1] = None if limit is None else limit - got
            args[2] = page.after
            remaining = None if deadline is None else max(deadline - time.monotonic(), 1e-6)
            r = self._call_tail("RANGE", _OPBYTES["RANGE"] + P.packb(args), True, remaining)
            res = self._dec.range_page(args)(r)
            if type(res) is _Continue:
                page = res
            else:
                page = _Continue(res, None, args, page.keys_only)
            pages.append(page.items)
            got += len(page.items)
        return _merge_pages(pages, page.keys_only)

    def _call_raw(self, op: str, tail: bytes, timeout: float | None) -> tuple[bytes, int]:
        """An idempotent call whose success value is returned undecoded:
        ``(reply body, offset of the value)``."""
        ok, value = self._with_retry(True, self._exchange_raw, op, tail,
                                     self._deadline(timeout))
        if ok:
            return value
        raise E.error_from_code(value[0], value[1])

    def _exchange_raw(self, op: str, tail: bytes, deadline: float | None) -> tuple[bool, Any]:
        with self._lock:
            self._ensure()
            m = self._next_id()
            try:
                self._send(_request_frame(m, op, tail, self.max_frame_size), deadline)
                ok, value = self._recv_reply(m, deadline, raw=True)
            except BaseException:
                self._drop()
                raise
            self._last_io = time.monotonic()
            return ok, value

    # -- hot paths: bypass the generic encoder -----------------------------------------
    def get_many(self, blob: bytes, content_only: bool = False, *,
                 timeout: float | None = None) -> Any:
        """Read many scrolls in one round trip (see :meth:`ClientOps.get_many`).

        :param content_only: return the list of contents only (``None`` where nothing
            is stored), decoded from one msgpack array.
        :returns: a :class:`vtpu._core.ScrollList`: behaves like a list of Scroll/None
            (len, indexing, iteration, ``==`` with a list) and makes each Scroll only
            when it is first read; with ``content_only`` a plain list of contents.
        """
        b = _as_blob(blob)
        if content_only:
            tail = _OPBYTES["GET_MANY"] + P.packb([b, True])
            return _check_contents(self._call_tail("GET_MANY", tail, True, timeout),
                                   len(b) // P.KEY_SIZE)
        tail = _OPBYTES["GET_MANY"] + P.packb([b])
        body, pos = self._call_raw("GET_MANY", tail, timeout)
        r = _core.parse_scroll_columns(body, pos, Scroll, self._names or self.names,
                                       _unpackb)
        if r is not None and r[1] == len(body):
            return r[0]
        # Another encoding of the same value (stacked ndarray contents, say).
        return self._dec.scrolls_or_none(_unpackb(memoryview(body)[pos:]))

    def get(self, key: bytes, *, timeout: float | None = None) -> Any:
        """Read one scroll (see :meth:`ClientOps.get`)."""
        if type(key) is not bytes or len(key) != 18:
            key = _as_key(key)
        r = self._call_tail("GET", _GET_TAIL + key, True, timeout)
        if r is None:
            return None
        if type(r) is list and len(r) == 5:
            return Scroll(r[0], r[1], r[2], r[3], r[4], self._names or self.names)
        return self._dec.scroll(r)  # raises the ProtocolError

    def put(self, key: bytes, content: Any, if_version: int | None = None, *,
            timeout: float | None = None) -> int:
        """Write one scroll (see :meth:`ClientOps.put`)."""
        if type(key) is not bytes or len(key) != 18:
            key = _as_key(key)
        if if_version is None:
            tail = _PUT2 + key + P.packb(content)
        else:
            tail = _OPBYTES["PUT"] + P.packb([key, content, if_version])
        return self._call_tail("PUT", tail, False, timeout)

    # -- pipelines -----------------------------------------------------------------------
    def pipeline(self, batch: bool = False, raise_on_error: bool = True) -> "Pipeline":
        """Queue calls and send them together.

        ``with engine.pipeline() as p: p.get(k1); p.put(k2, v)`` sends every queued
        request in one write when the block ends, reads every reply in order, and then
        raises the first error (if ``raise_on_error``). Results: ``p.results`` (or the
        return value of :meth:`Pipeline.execute`).

        :param batch: send one BATCH frame instead of one frame per call.
        :param raise_on_error: if false, errors are returned in ``results`` as exception
            objects.
        """
        return Pipeline(self, batch=batch, raise_on_error=raise_on_error)


_ONLY_GET = {"GET"}


class Pipeline(ClientOps):
    """Queued calls on a :class:`RemoteEngine`; see :meth:`RemoteEngine.pipeline`."""

    def __init__(self, engine: RemoteEngine, batch: bool = False, raise_on_error: bool = True):
        self.engine = engine
        self.batch = batch
        self.raise_on_error = raise_on_error
        self._dec = engine._dec
        self._queue: list[tuple[str, list, Callable[[Any], Any] | None]] = []
        self.results: list | None = None
        self._timeout: float | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def _execute(self, op: str, args: list, decode: Any, timeout: float | None) -> "Pipeline":
        if timeout is not None:
            self._timeout = timeout if self._timeout is None else max(self._timeout, timeout)
        self._queue.append((op, args, decode))
        return self

    def get(self, key: bytes, *, timeout: float | None = None) -> "Pipeline":
        """Queue one GET (see :meth:`ClientOps.get`); its result is a Scroll or ``None``."""
        # The common call of a pipeline: queued without the generic encoder's work.
        if type(key) is not bytes or len(key) != 18:
            key = _as_key(key)
        if timeout is not None:
            self._timeout = timeout if self._timeout is None else max(self._timeout, timeout)
        self._queue.append(("GET", [key], self._dec.scroll))
        return self

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.execute()

    def execute(self, timeout: float | None = None) -> list:
        """Send everything queued, read every reply, then raise the first error.

        :param timeout: budget for the whole exchange (default: the engine's timeout).
        :returns: one result per queued call, in order (exception objects for failed
            calls when ``raise_on_error`` is false).
        :raises ConnectionError, TimeoutError: transport failures (the queue is kept;
            an all-idempotent pipeline is retried automatically).
        """
        queue, self._queue = self._queue, []
        if not queue:
            self.results = []
            return self.results
        eng = self.engine
        if timeout is None:
            timeout = self._timeout
        deadline = eng._deadline(timeout)
        ops = {op for op, _, _ in queue}
        idempotent = all(P.OPS[op].idempotent for op in ops)
        results, pairs = eng._with_retry(idempotent, self._exchange, queue, deadline,
                                         ops == _ONLY_GET)
        # results[i] is final already unless i is in pairs (then it is (ok, value)).
        first_error: BaseException | None = None
        for i in pairs:
            op, _args, decode = queue[i]
            ok, value = results[i]
            if ok:
                try:
                    value = value if decode is None else decode(value)
                    if type(value) is _Continue:
                        value = eng._follow(value, timeout)
                except Exception as exc:
                    value = exc
                    first_error = first_error or exc
            else:
                value = E.error_from_code(value[0], f"{op}: {value[1]}")
                first_error = first_error or value
            results[i] = value
        self.results = results
        if first_error is not None and self.raise_on_error:
            raise first_error
        return results

    def _exchange(self, queue: list, deadline: float | None,
                  only_get: bool = False) -> tuple[list, Any]:
        """Send the queue and read every reply (``only_get``: every call is a GET).

        :returns: ``(results, pairs)``: ``results[i]`` is the finished result of call i
            (a GET reply decoded by the compiled reader), or its ``(ok, value)`` pair when
            ``i`` is in ``pairs`` (ascending indexes), which the caller decodes.
        """
        eng = self.engine
        mfs = eng.max_frame_size
        n = len(queue)
        with eng._lock:
            eng._ensure()
            all_get = False
            if self.batch:
                msgid = eng._next_id()
                frames = [P.encode_request(msgid, "BATCH", [[[op, a] for op, a, _ in queue]], mfs)]
                ids = [msgid]
            else:
                first = eng._msgid + 1
                all_get = only_get and first + n - 1 <= 0xFFFFFFFF
                if all_get:
                    # Every call a GET (the common pipeline): all frames in one C loop,
                    # msgids counting up without a wrap.
                    eng._msgid = first + n - 1
                    ids = range(first, first + n)
                    frames = [_core.get_request_frames([a[0] for _, a, _ in queue], first)]
                else:
                    ids = []
                    frames = []
                    for op, a, _ in queue:
                        m = eng._next_id()
                        ids.append(m)
                        if op == "GET":
                            frames.append(_HDR.pack(31, 0x93, 0xCE, m) + _GET_TAIL + a[0])
                        else:
                            frames.append(_request_frame(m, op, _OPBYTES[op] + P.packb(a), mfs))
            try:
                eng._send(b"".join(frames) if len(frames) > 1 else frames[0], deadline)
                if self.batch:
                    replies = [eng._recv_reply(ids[0], deadline)]
                else:
                    replies, pairs = self._read_replies(queue, ids, all_get, deadline)
            except BaseException:
                eng._drop()
                raise
            eng._last_io = time.monotonic()
        if not self.batch:
            return replies, pairs
        ok, value = replies[0]
        if not ok:
            # The BATCH frame itself was refused (too many ops, say): every call failed.
            return [(False, value)] * len(queue), range(len(queue))
        if type(value) is not list or len(value) != len(queue):
            raise E.ProtocolError("BATCH reply does not hold one result per operation")
        out = []
        for item in value:
            if type(item) is not list or len(item) != 2:
                raise E.ProtocolError("malformed BATCH result item")
            out.append((item[0] == P.STATUS_OK, item[1]))
        return out, range(len(out))

    def _read_replies(self, queue: list, ids: Any, all_get: bool,
                      deadline: float | None) -> tuple[list, list]:
        """Read one reply per queued call (see :meth:`_exchange` for the result).

        Runs of GET replies are decoded by ``_core.parse_get_replies`` straight from the
        receive buffer, whatever was received so far per call; a frame it does not
        decode (an error, a push, another encoding) goes through the generic reader.
        """
        eng = self.engine
        n = len(queue)
        out: list = [None] * n
        pairs: list = []
        names = eng._names or eng.names
        parse = _core.parse_get_replies
        mfs = eng.max_frame_size
        i = 0
        while i < n:
            if queue[i][0] != "GET":
                out[i] = eng._recv_reply(ids[i], deadline)
                pairs.append(i)
                i += 1
                continue
            # The run of GETs with consecutive msgids starting at i.
            if all_get:
                j = n
            else:
                j = i + 1
                while j < n and queue[j][0] == "GET" and ids[j] == ids[j - 1] + 1:
                    j += 1
            while i < j:
                pos, k, need_more = parse(eng._rbuf, eng._rstart, eng._rend, ids[i], j - i,
                                          out, i, Scroll, names, _unpackb, mfs)
                eng._rstart = pos
                i += k
                if i == j:
                    break
                if need_more:
                    avail = eng._rend - pos
                    if avail < 4 or 4 + _LEN.unpack_from(eng._rbuf, pos)[0] <= len(eng._rbuf):
                        eng._fill(deadline)
                        continue
                # A frame the compiled reader leaves alone (or one larger than the
                # buffer): the generic reader handles it, pushes and errors included.
                out[i] = eng._recv_reply(ids[i], deadline)
                pairs.append(i)
                i += 1
        return out, pairs
