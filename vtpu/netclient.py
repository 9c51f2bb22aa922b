"""The network backend: :class:`RemoteEngine` speaks the vtpu protocol to a server.

It implements :class:`vtpu.backend.Backend` (the engine methods the facade calls) with
the same names and signatures, plus an optional keyword-only ``timeout=``, so the
:class:`vtpu.client.Client` facade uses it wherever it would use an in-process
:class:`vtpu.engine.Engine`. Everything about the protocol (ids, encoding, reply
matching, names, pushes, RANGE pages, pipelines) is the :class:`vtpu.session.Session`'s;
this module only moves its bytes over a socket.

Connection contract
    * Connecting is lazy: the first call opens the socket (``TCP_NODELAY``), does the TLS
      handshake when TLS is on (``vtpus://``, ``ssl=``, ``tls_ca=``), sends HELLO and
      NAMES in one write and waits for both answers, all within ``connect_timeout``.
    * Every call has a deadline on :func:`time.monotonic` (``timeout``, or the per-call
      ``timeout=``); a call made of several round trips (a paged RANGE) shares one budget.
      A plaintext TCP socket stays in blocking mode and the kernel enforces the deadline
      (``SO_RCVTIMEO``/``SO_SNDTIMEO``): CPython calls ``poll()`` before every ``recv``
      and ``send`` on a socket that has a timeout, and a blocking socket saves those two
      system calls per round trip. A TLS socket keeps ``settimeout()`` (OpenSSL retries
      a read that timed out in the kernel on a blocking socket instead of failing it).
    * Socket errors are translated in one helper
      (:func:`vtpu.errors.translate_socket_error`): a timeout becomes
      :class:`vtpu.errors.TimeoutError`, any other ``OSError``
      :class:`vtpu.errors.ConnectionError`; raw socket errors never reach callers.
    * On *any* failure in the middle of a call (timeout, connection error, a malformed
      frame, even ``KeyboardInterrupt``) the socket is closed: a half-read reply would
      desynchronise the stream. The next call reconnects.
    * Only opcodes the protocol marks idempotent are retried automatically, by the
      :class:`vtpu.retry.Retry` policy (after a connection error; never after a timeout).
    * Server errors (:class:`vtpu.errors.ServerError` and friends, ``CoordinateError``,
      ``InterfaceError``) leave the connection open.

Thread safety
    One RemoteEngine may be shared by threads: a lock serialises whole request/response
    exchanges (and whole pipelines), so replies never interleave. For parallelism use one
    RemoteEngine per thread. After ``os.fork()`` the child notices and opens its own
    connection instead of sharing the parent's socket.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from . import _core
from . import errors as E
from ._cclient import IDLE_CHECK_SECONDS, SingleCalls
from .coords import NameTable
from .retry import ExponentialWithJitterBackoff, Retry
from .session import (
    ClientOps,
    Exchange,
    GetRun,
    Session,
    as_key,
    codec,
    finish,
    idempotent,
)

__all__ = ["RemoteEngine", "Pipeline", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_TIMEOUT"]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0

_monotonic = time.monotonic

# Deadlines enforced by the kernel (see the module docstring) where SO_RCVTIMEO takes a
# struct timeval; Windows takes milliseconds in a DWORD and keeps settimeout().
_KERNEL_TIMEOUTS = sys.platform != "win32" and hasattr(socket, "SO_RCVTIMEO")
_TIMEVAL = struct.Struct("@ll")


def _timeval(seconds: float | None) -> bytes:
    """``seconds`` as a struct timeval for SO_RCVTIMEO/SO_SNDTIMEO (None: no timeout; a
    positive time never rounds down to 0, which would mean none)."""
    if seconds is None:
        return _TIMEVAL.pack(0, 0)
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    return _TIMEVAL.pack(sec, usec if sec or usec else 1)

# Fork detection without a system call per request (os.getpid() is not cached by
# glibc): the child bumps a generation counter, connections remember theirs.
_fork_gen = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _fork_gen.__setitem__(0, _fork_gen[0] + 1))


class _Resolver:
    """NameTable resolver of a RemoteEngine: misses are answered by the server."""

    def __init__(self, engine: "RemoteEngine"):
        self.engine = engine

    def __call__(self, names: list, intern: bool) -> list:
        return self.engine._submit("INTERN", [list(names), bool(intern)], None, None)

    def full_table(self) -> list:
        return self.engine._submit("NAMES", [], None, None)


class RemoteEngine(SingleCalls, ClientOps):
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
    :param retry: the :class:`vtpu.retry.Retry` policy (default: ``retries`` retries
        with :class:`~vtpu.retry.ExponentialWithJitterBackoff` of base ``retry_backoff``).
    :param retries: automatic retries of idempotent calls after a connection error.
    :param retry_backoff: base of the jittered exponential backoff between retries.
    :param track: ask the server for invalidation pushes (see :attr:`on_push`).
    :param ssl: TLS: ``True`` (default context), an :class:`ssl.SSLContext`, or
        ``None``/``False`` (plaintext unless ``tls_ca``/``tls_cert`` is given); see
        :func:`vtpu.tls.client_context`.
    :param tls_ca: PEM file of the CA the server's certificate must chain to (implies TLS).
    :param tls_verify: ``False`` skips certificate and host name checks.
    :param server_hostname: the name the server's certificate must carry (default:
        ``host``).
    :param tls_cert: client certificate (PEM) for a server that requires one.
    :param tls_key: its private key (``None``: it is in ``tls_cert``).

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

    thread_safe = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = codec.DEFAULT_PORT,
        token: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE,
        socket_factory: Callable[..., Any] | None = None,
        retries: int = 1,
        retry_backoff: float = 0.05,
        track: bool = False,
        retry: Retry | None = None,
        ssl: Any = None,
        tls_ca: str | None = None,
        tls_verify: bool = True,
        server_hostname: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ):
        self.host = host
        self.port = port
        self.token = token
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_frame_size = max_frame_size
        self.socket_factory = socket_factory
        self.retry = retry if retry is not None else Retry(
            ExponentialWithJitterBackoff(retry_backoff), retries)
        self.track = track
        #: the TLS context connections are wrapped with (``None``: plaintext)
        self.ssl_context = None
        if ssl or tls_ca is not None or tls_cert is not None:
            from .tls import client_context

            self.ssl_context = client_context(ssl, tls_ca, tls_verify, tls_cert, tls_key)
        self.server_hostname = server_hostname
        #: the server's HELLO answer, once connected
        self.server_info: dict | None = None
        #: the protocol state of this client (ids, buffers, names, pending replies)
        self.session = Session(NameTable(resolver=_Resolver(self)), max_frame_size)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fork_gen = _fork_gen
        self._gen = _fork_gen[0]
        self._sock: Any = None
        # The per-operation timeout in force on the socket (-1: not set yet, 0: left
        # non-blocking by the idle check), and whether the kernel enforces it.
        self._sock_timeout: float | None = -1.0
        # The time left in a call for which the socket's timeout is kept as it is (see
        # _set_timeout); an empty range until one is set.
        self._keep_lo = float("inf")
        self._keep_hi = 0.0
        self._kernel_timeouts = False
        # The socket's descriptor for the codec's single-call round trip when the kernel
        # enforces its timeouts (a plain TCP socket in blocking mode), else -1.
        self._fd = -1
        self._last_io = 0.0

    @property
    def names(self) -> NameTable:
        """The client's :class:`vtpu.coords.NameTable` cache (loaded at connect; misses
        ask the server)."""
        return self.session.names

    @property
    def on_push(self) -> Callable[[str, Any], None] | None:
        """Called with ``(kind, payload)`` for every server push (e.g. ``"invalidate"``
        and a keys blob); an exception it raises is logged and reading goes on."""
        return self.session.on_push

    @on_push.setter
    def on_push(self, cb: Callable[[str, Any], None] | None) -> None:
        self.session.on_push = cb

    # -- connection ---------------------------------------------------------------------------
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

    def _where(self, what: str) -> str:
        return f"{what} {self.host}:{self.port}"

    def _drop(self) -> None:
        s, self._sock = self._sock, None
        self._fd = -1
        self.session.reset()
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
            self._fd = -1
            self.session.reset()
            self._lock = threading.Lock()

    def _connect(self) -> Any:
        t = self.connect_timeout
        deadline = None if t is None else _monotonic() + t
        addr = (self.host, self.port)
        try:
            if self.socket_factory is not None:
                sock = self.socket_factory(addr, t)
            else:
                sock = socket.create_connection(addr, timeout=t)
        except OSError as exc:
            raise E.translate_socket_error(exc, self._where("connect to")) from exc
        tcp = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            tcp = False  # not TCP (a test double or a unix socket): nothing to tune
        if self.ssl_context is not None:
            sock = self._tls_handshake(sock, deadline)
        self._sock = sock
        self._sock_timeout = -1.0
        self._keep_lo, self._keep_hi = float("inf"), 0.0
        self._kernel_timeouts = tcp and _KERNEL_TIMEOUTS and self.ssl_context is None
        self._fd = sock.fileno() if self._kernel_timeouts else -1
        s = self.session
        s.reset()
        try:
            hello = s.handshake(self.token, self.track)
            self._pump(hello, deadline)
        except BaseException as exc:
            self._drop()
            err: BaseException = exc
            if isinstance(exc, OSError) and not isinstance(exc, E.VTPUError):
                err = E.translate_socket_error(exc, self._where("HELLO to"))
            err = E.closed_before_hello(err, self.ssl_context is not None)
            if err is exc:
                raise
            raise err from exc
        self.server_info = hello.results[0]
        self._last_io = _monotonic()
        return sock

    def _tls_handshake(self, sock: Any, deadline: float | None) -> Any:
        """Wrap a connected socket in TLS (the handshake runs here, within the connect
        budget). The wrapped socket keeps the blocking-with-timeout mode, so every read
        and write below works unchanged: ``recv_into`` returns decrypted bytes (one TLS
        record at most per call) and waits for whole records itself."""
        try:
            if deadline is not None:
                sock.settimeout(max(deadline - _monotonic(), 0.001))
            return self.ssl_context.wrap_socket(
                sock, server_hostname=self.server_hostname or self.host)
        except OSError as exc:
            sock.close()
            raise E.translate_socket_error(exc, self._where("TLS handshake with")) from exc

    def _ensure(self) -> Any:
        if self._gen != _fork_gen[0]:
            self._check_fork()
        sock = self._sock
        if sock is not None and _monotonic() - self._last_io > IDLE_CHECK_SECONDS:
            if self._peer_closed(sock):
                self._drop()
                sock = None
        if sock is None:
            sock = self._connect()
        return sock

    def _peer_closed(self, sock: Any) -> bool:
        if self.session.buffered():
            return False
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            sock.settimeout(0)
            self._sock_timeout = 0
            self._keep_lo, self._keep_hi = float("inf"), 0.0
            # Read what is there into the session's buffer (a push, say; it is handled
            # with the next reply). TLS sockets cannot peek, so neither socket does.
            try:
                n = self.session.rx.recv(sock)
            except BlockingIOError:
                return False
            except OSError as exc:
                ssl = sys.modules.get("ssl")
                # Only TLS records without application data (a session ticket): alive.
                return not (ssl is not None and isinstance(exc, ssl.SSLWantReadError))
            return not n
        except (OSError, ValueError, TypeError, AttributeError):
            return True

    # -- raw I/O --------------------------------------------------------------------------------
    def _set_timeout(self, deadline: float | None, now: float | None = None) -> None:
        # Setting a timeout is a system call, so the common case must not need one: the
        # socket keeps its current timeout while that still fits the remaining budget
        # with some slack, and is lowered to the remaining time only near the deadline.
        # (Each blocking operation is thereby bounded by the deadline plus at most a
        # quarter of the previous setting.) The kept range is _keep_lo.._keep_hi, which
        # a single call checks inline before calling this.
        if deadline is None:
            if self._sock_timeout is not None:
                self._apply_timeout(None)
            return
        left = deadline - (_monotonic() if now is None else now)
        if left <= 0:
            raise E.TimeoutError(f"call to {self.host}:{self.port} timed out")
        if not self._keep_lo <= left <= self._keep_hi:
            self._apply_timeout(left)

    def _apply_timeout(self, seconds: float | None) -> None:
        """Bound each blocking socket operation by ``seconds`` (None: wait forever)."""
        sock = self._sock
        if self._kernel_timeouts:
            # Blocking mode (the idle check may have left the socket non-blocking); a
            # timed-out operation then fails with EAGAIN, which the socket error
            # translation reports as a timeout.
            sock.settimeout(None)
            tv = _timeval(seconds)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        else:
            sock.settimeout(seconds)
        self._sock_timeout = seconds
        if seconds is None or seconds <= 0:
            self._keep_lo, self._keep_hi = float("inf"), 0.0
        else:
            self._keep_lo, self._keep_hi = seconds * 0.75, seconds * 4

    def _send_rest(self, data: bytes, sent: int, deadline: float | None) -> None:
        """Send ``data[sent:]``, after a ``send()`` that took only the first ``sent``
        bytes. A socket timeout bounds one ``send()``, and one that made progress starts
        the next with a fresh timeout: the deadline is applied between them."""
        view = memoryview(data)
        while sent < len(view):
            self._set_timeout(deadline)
            sent += self._sock.send(view[sent:])

    def _fill(self, deadline: float | None) -> None:
        """Receive at least one more byte into the session's buffer."""
        self._set_timeout(deadline)
        if not self.session.rx.recv(self._sock):
            raise E.ConnectionError(f"server {self.host}:{self.port} closed the connection")

    def _pump(self, ex: Exchange, deadline: float | None) -> None:
        """Send what the session queued and read until ``ex`` is done (continuation
        requests the session queues meanwhile are sent as they appear)."""
        s = self.session
        while True:
            s.receive()
            if ex.done:
                return
            out = s.data_to_send()
            if out:
                self._set_timeout(deadline)
                n = self._sock.send(out)
                if n < len(out):
                    self._send_rest(out, n, deadline)
            self._fill(deadline)

    # -- calls ---------------------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is None else timeout
        return None if t is None else _monotonic() + t

    def _retry(self, exc: BaseException, fn: Callable[..., Any], args: tuple,
               is_idempotent: bool, deadline: float | None) -> Any:
        """After a failed first attempt: ``fn(*args, deadline)`` again for as long as
        the retry policy allows (and the deadline leaves time), else raise."""
        failures = 0
        while True:
            wait = self.retry.delay(exc, failures, is_idempotent)
            if wait is None or (deadline is not None and _monotonic() + wait >= deadline):
                raise exc
            time.sleep(wait)
            failures += 1
            try:
                return fn(*args, deadline)
            except E.VTPUError as again:
                exc = again

    def _exchange(self, entries: list, batch: bool, gets_only: bool | None,
                  deadline: float | None) -> Exchange:
        """Run calls as one exchange (one write, every reply read). Closes the socket
        on any failure."""
        with self._lock:
            self._ensure()
            ex = self.session.exchange(entries, batch, gets_only)
            try:
                self._pump(ex, deadline)
            except BaseException as exc:
                self._drop()
                if isinstance(exc, OSError) and not isinstance(exc, E.VTPUError):
                    raise E.translate_socket_error(exc, self._where("call to")) from exc
                raise
            self._last_io = _monotonic()
            return ex

    def _submit(self, op: str, args: list, decode: Any, timeout: float | None) -> Any:
        entries = [(op, args, decode)]
        deadline = self._deadline(timeout)
        try:
            ex = self._exchange(entries, False, False, deadline)
        except E.VTPUError as exc:
            ex = self._retry(exc, self._exchange, (entries, False, False), idempotent(op),
                             deadline)
        return ex.value()

    # -- pipelines --------------------------------------------------------------------------------
    def pipeline(self, raise_on_error: bool = True, *, batch: bool = False) -> "Pipeline":
        """Queue calls and send them together.

        ``with engine.pipeline() as p: p.get(k1); p.put(k2, v)`` sends every queued
        request in one write when the block ends, reads every reply in order, and then
        raises the first error (if ``raise_on_error``). Results: ``p.results`` (or the
        return value of :meth:`Pipeline.execute`).

        :param raise_on_error: if false, errors are returned in ``results`` as exception
            objects.
        :param batch: send one BATCH frame instead of one frame per call.
        """
        return Pipeline(self, batch=batch, raise_on_error=raise_on_error)


class Pipeline(ClientOps):
    """Queued calls on a :class:`RemoteEngine`; see :meth:`RemoteEngine.pipeline`."""

    def __init__(self, engine: RemoteEngine, batch: bool = False, raise_on_error: bool = True):
        self.engine = engine
        self.batch = batch
        self.raise_on_error = raise_on_error
        self._queue: list[tuple[str, list, Any]] = []
        # The keys of the GETs queued since the last other call: entries are made of
        # them only when another call follows (a pipeline of GETs only is sent as one
        # GetRun, with no entry per call).
        self._keys: list = []
        self._gets_only = True
        self._idempotent = True
        self.results: list | None = None
        self._timeout: float | None = None

    def __len__(self) -> int:
        return len(self._queue) + len(self._keys)

    def _flush_keys(self) -> None:
        if self._keys:
            self._queue.extend(GetRun(self._keys))
            self._keys = []

    def _submit(self, op: str, args: list, decode: Any, timeout: float | None) -> "Pipeline":
        self._flush_keys()   # the GETs queued before this call go first
        if timeout is not None:
            self._timeout = timeout if self._timeout is None else max(self._timeout, timeout)
        if op != "GET":
            self._gets_only = False
            if self._idempotent and not idempotent(op):
                self._idempotent = False
        self._queue.append((op, args, decode))
        return self

    def get(self, key: bytes, *, timeout: float | None = None) -> "Pipeline":
        """Queue one GET (see :meth:`vtpu.session.ClientOps.get`); its result is a Scroll
        or ``None``."""
        # The common call of a pipeline, queued by the thousand: no decoder lookup, the
        # session's compiled reader makes the Scroll.
        if type(key) is not bytes or len(key) != 18:
            key = as_key(key)
        if timeout is not None:
            self._timeout = timeout if self._timeout is None else max(self._timeout, timeout)
        self._keys.append(key)
        return self

    def get_each(self, keys: list) -> "Pipeline":
        """Queue one GET per 18-byte key (as :meth:`get` for each, in order).

        :raises InterfaceError: a key that is not 18 bytes (nothing is queued).
        """
        if type(keys) is not list:
            keys = list(keys)
        if not _core.all_keys(keys):
            keys = [as_key(k) for k in keys]
        self._keys.extend(keys)
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
        :raises ConnectionError, TimeoutError: transport failures (an all-idempotent
            pipeline is retried automatically).
        """
        if self._queue:
            self._flush_keys()
            queue = self._queue
        else:
            queue = GetRun(self._keys)
        self._queue, self._keys = [], []
        gets_only, self._gets_only = self._gets_only, True
        is_idem, self._idempotent = self._idempotent, True
        if not queue:
            self.results = []
            return self.results
        eng = self.engine
        deadline = eng._deadline(self._timeout if timeout is None else timeout)
        try:
            ex = eng._exchange(queue, self.batch, gets_only, deadline)
        except E.VTPUError as exc:
            ex = eng._retry(exc, eng._exchange, (queue, self.batch, gets_only), is_idem,
                            deadline)
        self.results = ex.results
        return finish(ex.results, self.raise_on_error)

