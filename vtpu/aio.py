"""An asyncio client on the same sans-IO session as the sync client.

``AsyncRemoteEngine`` has the Engine methods of :class:`vtpu.netclient.RemoteEngine`
as coroutines (same names, arguments, results and errors): both are written once in
:class:`vtpu.session.ClientOps`, and every byte goes through one
:class:`vtpu.session.Session` (ids, reply matching, names, pushes, RANGE pages). Replies
are matched to requests by msgid, so any number of tasks may call concurrently on one
connection: their requests are pipelined automatically. :meth:`AsyncRemoteEngine.pipeline`
queues calls and sends them in one write.

A timed-out call does not poison the connection here (its late reply is read and
dropped); a transport failure fails every pending call with
:class:`vtpu.errors.ConnectionError` and the next call reconnects. Idempotent calls are
retried by the same :class:`vtpu.retry.Retry` policy as the sync client's.

Name ids: the client loads the server's name table when it connects and learns names
returned by :meth:`intern`. Parse coordinate text with names through
``await engine.key("a.b.c/...")`` (which interns first: for writes),
``await engine.key(text, intern=False)`` and ``await engine.pattern(...)`` (which never
intern: for reads; a name the server never interned gives None / a pattern matching
nothing).

TLS: ``ssl=``/``tls_ca=``/``tls_verify=``/``server_hostname=``/``tls_cert=``/``tls_key=``
as on the sync client (:func:`vtpu.tls.client_context`); the transport is then asyncio's
TLS transport and the session sees the same decrypted bytes.

Use one AsyncRemoteEngine per event loop; it is not thread-safe.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable

from . import _core
from . import errors as E
from .coords import NameTable, read_key, read_pattern
from .retry import ExponentialWithJitterBackoff, Retry
from .session import ClientOps, Exchange, Session, codec, finish, idempotent

__all__ = ["AsyncRemoteEngine", "AsyncPipeline", "connect",
           "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_TIMEOUT"]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class _NoResolver:
    """Name-table resolver for the async client: a synchronous miss cannot ask the server."""

    def __call__(self, names: list, intern: bool) -> list:
        if not intern:
            return [None] * len(names)
        raise E.InterfaceError(
            f"names {names[:3]} are not known yet: use `await engine.intern([...])` or "
            "`await engine.key(text)` with the async client"
        )


class _Proto(asyncio.BufferedProtocol):
    """Moves bytes between one transport and the engine's session."""

    def __init__(self, owner: "AsyncRemoteEngine"):
        self.owner = owner
        self.session = owner.session
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def active(self) -> bool:
        """Whether this is the engine's connection (or the one being opened); bytes of
        an older one must not reach the session."""
        return self.owner._proto is self or self.owner._opening is self

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self.active:
            return memoryview(bytearray(4096))  # a closed connection's last bytes: dropped
        return self.session.rx.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if not self.active:
            return
        s = self.session
        s.rx.buffer_updated(nbytes)
        try:
            done = s.receive()
        except E.VTPUError as exc:
            # A malformed stream or a connection-level error: nothing more can be read.
            self.fail(exc)
            return
        _wake(done)
        out = s.data_to_send()
        if out:
            self.transport.write(out)

    def fail(self, exc: BaseException) -> None:
        if self.active:
            _wake(self.session.fail(exc))
        if self.transport is not None:
            self.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        where = f"{self.owner.host}:{self.owner.port}"
        self.fail(E.ConnectionError(f"connection to {where} lost" + (f": {exc}" if exc else "")))
        self.owner._on_lost(self)


def _wake(done: list[Exchange]) -> None:
    for ex in done:
        fut = ex.waiter
        if fut is not None and not fut.done():
            fut.set_result(None)


class AsyncRemoteEngine(ClientOps):
    """Engine methods as coroutines over one TCP connection.

    :param host: server address.
    :param port: server port.
    :param token: auth token for HELLO.
    :param connect_timeout: seconds for connect + HELLO.
    :param timeout: default seconds per call (``None``: no limit); per call ``timeout=``.
    :param max_frame_size: largest frame body sent or accepted.
    :param retry: the :class:`vtpu.retry.Retry` policy (default: ``retries`` retries
        with :class:`~vtpu.retry.ExponentialWithJitterBackoff` of base ``retry_backoff``).
    :param retries: retries of idempotent calls after a connection failure.
    :param retry_backoff: base of the jittered exponential backoff between retries.
    :param track: ask for invalidation pushes (delivered to :attr:`on_push`).
    :param ssl: TLS: ``True``, an :class:`ssl.SSLContext`, or ``None``/``False``
        (plaintext unless ``tls_ca``/``tls_cert`` is given).
    :param tls_ca: PEM file of the CA the server's certificate must chain to (implies TLS).
    :param tls_verify: ``False`` skips certificate and host name checks.
    :param server_hostname: the name the certificate must carry (default: ``host``).
    :param tls_cert: client certificate (PEM) for a server that requires one.
    :param tls_key: its private key (``None``: it is in ``tls_cert``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = codec.DEFAULT_PORT,
        token: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE,
        retries: int = 1,
        track: bool = False,
        retry_backoff: float = 0.05,
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
        self.retry = retry if retry is not None else Retry(
            ExponentialWithJitterBackoff(retry_backoff), retries)
        self.track = track
        #: the TLS context connections use (``None``: plaintext)
        self.ssl_context = None
        if ssl or tls_ca is not None or tls_cert is not None:
            from .tls import client_context

            self.ssl_context = client_context(ssl, tls_ca, tls_verify, tls_cert, tls_key)
        self.server_hostname = server_hostname
        self.server_info: dict | None = None
        #: the protocol state of this client (ids, buffers, names, pending replies)
        self.session = Session(NameTable(resolver=_NoResolver()), max_frame_size)
        self._proto: _Proto | None = None
        self._opening: _Proto | None = None
        self._connecting: asyncio.Future | None = None

    @property
    def names(self) -> NameTable:
        """The client's name-table cache (loaded at connect, learns interned names)."""
        return self.session.names

    @property
    def on_push(self) -> Callable[[str, Any], None] | None:
        """Called with ``(kind, payload)`` for every server push; an exception it raises
        is logged and reading goes on."""
        return self.session.on_push

    @on_push.setter
    def on_push(self, cb: Callable[[str, Any], None] | None) -> None:
        self.session.on_push = cb

    # -- names ---------------------------------------------------------------------------------
    async def key(self, text: str, intern: bool = True) -> bytes | None:
        """Parse coordinate text into an 18-byte key.

        :param intern: intern its names on the server first (for writes); with False
            nothing is interned (for reads).
        :returns: the key; None (only with ``intern=False``) when the text names a name
            the server never interned, so that nothing can be stored there.
        """
        await self._learn_text_names(text, intern)
        if intern:
            return _core.pack(_core.parse_coord(text, self.names, False))
        return read_key(text, self.names)

    async def pattern(self, text: str) -> Any:
        """Parse pattern text into a (2, 9) array, interning nothing (patterns are read).

        :returns: the bounds; a pattern matching nothing when the text names a name the
            server never interned.
        """
        await self._learn_text_names(text, False)
        return read_pattern(text, self.names)

    async def _learn_text_names(self, text: str, intern: bool) -> None:
        names = [n for n in _NAME.findall(text) if n not in self.names]
        if not names:
            return
        ids = await self.intern(names, intern=intern)
        if any(i is not None and n not in self.names for n, i in zip(names, ids)):
            await self.name_table()   # ids beyond the cached ones: load the whole table

    # -- connection ------------------------------------------------------------------------------
    async def connect(self) -> "AsyncRemoteEngine":
        """Connect now (otherwise the first call connects)."""
        await self._ensure()
        return self

    async def _ensure(self) -> _Proto:
        proto = self._proto
        if proto is not None:
            return proto
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            if self._proto is None:
                raise E.ConnectionError(f"cannot connect to {self.host}:{self.port}")
            return self._proto
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            if self.connect_timeout is None:
                await self._open()
            else:
                await asyncio.wait_for(self._open(), self.connect_timeout)
        except (asyncio.TimeoutError, OSError) as exc:
            raise E.translate_socket_error(exc, f"connect to {self.host}:{self.port}") from None
        finally:
            self._connecting.set_result(None)
            self._connecting = None
        return self._proto  # type: ignore[return-value]

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.session
        s.reset()
        tls: dict = {}
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "server_hostname": self.server_hostname or self.host}
        _, proto = await loop.create_connection(lambda: _Proto(self), self.host, self.port,
                                                **tls)
        self._opening = proto
        try:
            hello = s.handshake(self.token, self.track)
            hello.waiter = loop.create_future()
            proto.transport.write(s.data_to_send())
            try:
                await hello.waiter
            except BaseException:
                proto.transport.abort()
                raise
            if hello.error is not None:
                proto.transport.abort()
                err = E.closed_before_hello(hello.error, self.ssl_context is not None)
                if err is hello.error:
                    raise err
                raise err from hello.error
            self.server_info = hello.results[0]
            self._proto = proto
        finally:
            self._opening = None

    def _on_lost(self, proto: _Proto) -> None:
        if self._proto is proto:
            self._proto = None

    async def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        proto, self._proto = self._proto, None
        # Calls still waiting on this connection fail now rather than at their timeout.
        _wake(self.session.fail(E.ConnectionError(f"{self.host}:{self.port}: closed")))
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(proto.closed), 1.0)
            except (asyncio.TimeoutError, E.VTPUError):
                pass

    async def __aenter__(self) -> "AsyncRemoteEngine":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- calls ---------------------------------------------------------------------------------
    async def _attempt(self, entries: list, deadline: float | None) -> Exchange:
        """Write one exchange and wait for it; one attempt, no retry."""
        proto = await self._ensure()
        s = self.session
        ex = s.exchange(entries)
        ex.waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(s.data_to_send())
        try:
            if deadline is None:
                await ex.waiter
            else:
                await asyncio.wait_for(ex.waiter, max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            s.abandon(ex)  # its late replies are read and dropped
            raise E.translate_socket_error(
                asyncio.TimeoutError(), f"{entries[0][0]} to {self.host}:{self.port}") from None
        except BaseException:
            s.abandon(ex)
            raise
        if ex.error is not None:
            raise ex.error
        return ex

    async def _run(self, entries: list, is_idempotent: bool,
                   timeout: float | None) -> Exchange:
        """Run an exchange with the retry policy; one deadline for every attempt."""
        t = self.timeout if timeout is None else timeout
        deadline = None if t is None else time.monotonic() + t
        failures = 0
        while True:
            try:
                return await self._attempt(entries, deadline)
            except E.VTPUError as exc:
                wait = self.retry.delay(exc, failures, is_idempotent)
                if wait is None or (deadline is not None
                                    and time.monotonic() + wait >= deadline):
                    raise
                await asyncio.sleep(wait)
                failures += 1

    def _submit(self, op: str, args: list, decode: Any, timeout: float | None) -> Any:
        return self._one(op, args, decode, timeout)

    async def _one(self, op: str, args: list, decode: Any, timeout: float | None) -> Any:
        ex = await self._run([(op, args, decode)], idempotent(op), timeout)
        return ex.value()

    def pipeline(self, raise_on_error: bool = True) -> "AsyncPipeline":
        """Queue calls; ``await p.execute()`` sends them in one write and returns results."""
        return AsyncPipeline(self, raise_on_error)


class AsyncPipeline(ClientOps):
    """Queued calls of an :class:`AsyncRemoteEngine` (results in order, errors after all)."""

    def __init__(self, engine: AsyncRemoteEngine, raise_on_error: bool = True):
        self.engine = engine
        self.raise_on_error = raise_on_error
        self._queue: list = []
        self.results: list | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def _submit(self, op: str, args: list, decode: Any, timeout: float | None) -> "AsyncPipeline":
        self._queue.append((op, args, decode))
        return self

    async def execute(self, timeout: float | None = None) -> list:
        """Send everything queued in one write, await every reply, then raise the first
        error.

        :param timeout: budget for the whole exchange (default: the engine's timeout).
        :returns: one result per queued call (exception objects for failed calls when
            ``raise_on_error`` is false).
        """
        queue, self._queue = self._queue, []
        if not queue:
            self.results = []
            return self.results
        is_idem = all(idempotent(op) for op, _, _ in queue)
        ex = await self.engine._run(queue, is_idem, timeout)
        self.results = ex.results
        return finish(ex.results, self.raise_on_error)


async def connect(host: str = "127.0.0.1", port: int = codec.DEFAULT_PORT,
                  **kw: Any) -> AsyncRemoteEngine:
    """Open an :class:`AsyncRemoteEngine` and connect it.

    :raises ConnectionError, TimeoutError, AuthError: when the connection or HELLO fails.
    """
    return await AsyncRemoteEngine(host, port, **kw).connect()
