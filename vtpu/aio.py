"""An asyncio client on the same sans-IO codec as the sync client and the server.

``AsyncRemoteEngine`` has the Engine methods of :class:`vtpu.netclient.RemoteEngine`
as coroutines (same names, arguments, results and errors). Replies are matched to
requests by msgid, so any number of tasks may call concurrently on one connection:
their requests are pipelined automatically. :meth:`AsyncRemoteEngine.pipeline` queues
calls and sends them in one write.

A timed-out call does not poison the connection here (a late reply is recognised by
its msgid and dropped); a transport failure fails every pending call with
:class:`vtpu.errors.ConnectionError` and the next call reconnects. Idempotent calls are
retried once after a connection failure.

Name ids: the client loads the server's name table when it connects and learns names
returned by :meth:`intern`. Parse coordinate text with names through
``await engine.key("a.b.c/...")`` / ``await engine.pattern(...)``, which intern first.

Use one AsyncRemoteEngine per event loop; it is not thread-safe.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from . import errors as E
from . import protocol as P
from ._core import NAME_BASE
from .netclient import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientOps,
    _Continue,
    _Decoders,
    _merge_pages,
    _OPBYTES,
    _request_frame,
)

__all__ = ["AsyncRemoteEngine", "AsyncPipeline", "connect"]

log = logging.getLogger("vtpu.client")


class _NoResolver:
    """Name-table resolver for the async client: a synchronous miss cannot ask the server."""

    def __call__(self, names: list, intern: bool) -> list:
        if not intern:
            return [None] * len(names)
        raise E.InterfaceError(
            f"names {names[:3]} are not known yet: use `await engine.intern([...])` or "
            "`await engine.key(text)` with the async client"
        )


class _Proto(asyncio.Protocol):
    def __init__(self, owner: "AsyncRemoteEngine"):
        self.owner = owner
        self.decoder = P.FrameDecoder(owner.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, asyncio.Future] = {}
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            for msg in self.decoder:
                r = P.parse_reply(msg)
                if isinstance(r, P.Push):
                    cb = self.owner.on_push
                    if cb is not None:
                        try:
                            cb(r.kind, r.payload)
                        except Exception:
                            log.exception("on_push callback failed for a %r push", r.kind)
                    continue
                if r.msgid == 0 and not r.ok:
                    self.fail(E.error_from_code(r.value[0], r.value[1]))
                    return
                fut = self.waiters.pop(r.msgid, None)
                if fut is not None and not fut.done():
                    fut.set_result((r.ok, r.value))
        except E.ProtocolError as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        waiters, self.waiters = self.waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(E.ConnectionError(
            f"connection to {self.owner.host}:{self.owner.port} lost" + (f": {exc}" if exc else "")
        ))
        self.owner._on_lost(self)


class AsyncRemoteEngine(ClientOps):
    """Engine methods as coroutines over one TCP connection.

    :param host: server address.
    :param port: server port.
    :param token: auth token for HELLO.
    :param connect_timeout: seconds for connect + HELLO.
    :param timeout: default seconds per call (``None``: no limit); per call ``timeout=``.
    :param max_frame_size: largest frame body sent or accepted.
    :param retries: retries of idempotent calls after a connection failure.
    :param track: ask for invalidation pushes (delivered to :attr:`on_push`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = P.DEFAULT_PORT,
        token: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame_size: int = P.DEFAULT_MAX_FRAME_SIZE,
        retries: int = 1,
        track: bool = False,
    ):
        self.host = host
        self.port = port
        self.token = token
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_frame_size = max_frame_size
        self.retries = retries
        self.track = track
        self.on_push: Callable[[str, Any], None] | None = None
        self.server_info: dict | None = None
        self._dec = _Decoders(self)
        self._proto: _Proto | None = None
        self._connecting: asyncio.Future | None = None
        self._msgid = 0
        from .coords import NameTable

        self.names = NameTable(resolver=_NoResolver())

    # -- names ---------------------------------------------------------------------------
    def _make_scroll(self, key, content, version, created, updated):
        from .coords import Scroll

        return Scroll(key, content, version, created, updated, self.names)

    def _learn_names(self, names: list, ids: Any) -> None:
        if not isinstance(ids, list):
            return
        table = self.names
        for name, i in zip(names, ids):
            if name not in table and i == NAME_BASE + len(table):
                table.extend([name])

    def _learn_table(self, names: Any) -> None:
        if isinstance(names, list):
            self.names.extend_from(names)

    async def key(self, text: str) -> bytes:
        """Parse coordinate text (interning its names on the server) into an 18-byte key."""
        from . import _core

        await self._intern_text_names(text)
        return _core.pack(_core.parse_coord(text, self.names, False))

    async def pattern(self, text: str) -> Any:
        """Parse pattern text (interning its names on the server) into a (2, 9) array."""
        from . import _core

        await self._intern_text_names(text)
        return _core.parse_pattern(text, self.names, False)

    async def _intern_text_names(self, text: str) -> None:
        import re

        names = [n for n in re.findall(r"[A-Za-z_][A-Za-z0-9_-]*", text) if n not in self.names]
        if names:
            await self.intern(names)

    # -- connection ----------------------------------------------------------------------
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
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            await self._open()
        except BaseException as exc:
            self._connecting.set_result(None)
            self._connecting = None
            if isinstance(exc, (asyncio.TimeoutError, OSError)) and not isinstance(exc, E.VTPUError):
                raise E.translate_socket_error(exc, f"connect to {self.host}:{self.port}") from None
            raise
        self._connecting.set_result(None)
        self._connecting = None
        return self._proto  # type: ignore[return-value]

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()

        async def go() -> None:
            _, proto = await loop.create_connection(lambda: _Proto(self), self.host, self.port)
            options: dict = {"max_frame_size": self.max_frame_size}
            if self.track:
                options["track"] = True
            ok, value = await self._raw(proto, "HELLO", [P.PROTOCOL_VERSION, self.token, options])
            if not ok:
                proto.transport.close()
                raise E.error_from_code(value[0], f"HELLO to {self.host}:{self.port}: {value[1]}")
            self.server_info = value
            ok, names = await self._raw(proto, "NAMES", [])
            if ok:
                self._learn_table(names)
            self._proto = proto

        if self.connect_timeout is None:
            await go()
        else:
            await asyncio.wait_for(go(), self.connect_timeout)

    def _on_lost(self, proto: _Proto) -> None:
        if self._proto is proto:
            self._proto = None

    def _next_id(self) -> int:
        m = self._msgid + 1
        if m > 0xFFFFFFFF:
            m = 1
        self._msgid = m
        return m

    async def _raw(self, proto: _Proto, op: str, args: list) -> tuple[bool, Any]:
        msgid = self._next_id()
        fut = asyncio.get_running_loop().create_future()
        proto.waiters[msgid] = fut
        proto.transport.write(
            _request_frame(msgid, op, _OPBYTES[op] + P.packb(args), self.max_frame_size)
        )
        return await fut

    async def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        proto, self._proto = self._proto, None
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

    # -- calls ---------------------------------------------------------------------------
    async def _call(self, op: str, args: list, timeout: float | None) -> Any:
        t = self.timeout if timeout is None else timeout
        idempotent = P.OPS[op].idempotent
        attempt = 0
        while True:
            try:
                proto = await self._ensure()
                fut = self._raw(proto, op, args)
                ok, value = await (fut if t is None else asyncio.wait_for(fut, t))
                break
            except E.ConnectionError:
                if not idempotent or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(0.05 * attempt)
            except (asyncio.TimeoutError, OSError) as exc:
                raise E.translate_socket_error(exc, f"{op} to {self.host}:{self.port}") from None
        if ok:
            return value
        raise E.error_from_code(value[0], value[1])

    def _execute(self, op: str, args: list, decode: Any, timeout: float | None) -> Any:
        return self._run(op, args, decode, timeout)

    async def _run(self, op: str, args: list, decode: Any, timeout: float | None) -> Any:
        start = time.monotonic()
        value = await self._call(op, args, timeout)
        if decode is None:
            return value
        value = decode(value)
        if type(value) is _Continue:
            return await self._follow(value, timeout, start)
        return value

    async def _follow(self, page: _Continue, timeout: float | None, start: float) -> Any:
        pages = [page.items]
        got = len(page.items)
        args = list(page.args)
        limit = args[1]
        t = self.timeout if timeout is None else timeout
        while page.after is not None and (limit is None or got < limit):
            args[1] = None if limit is None else limit - got
            args[2] = page.after
            left = None if t is None else max(t - (time.monotonic() - start), 1e-6)
            res = self._dec.range_page(args)(await self._call("RANGE", args, left))
            page = res if type(res) is _Continue else _Continue(res, None, args, page.keys_only)
            pages.append(page.items)
            got += len(page.items)
        return _merge_pages(pages, page.keys_only)

    def pipeline(self, raise_on_error: bool = True) -> "AsyncPipeline":
        """Queue calls; ``await p.execute()`` sends them in one write and returns results."""
        return AsyncPipeline(self, raise_on_error)


class AsyncPipeline(ClientOps):
    """Queued calls of an :class:`AsyncRemoteEngine` (results in order, errors after all)."""

    def __init__(self, engine: AsyncRemoteEngine, raise_on_error: bool = True):
        self.engine = engine
        self.raise_on_error = raise_on_error
        self._dec = engine._dec
        self._queue: list = []
        self.results: list | None = None

    def _execute(self, op: str, args: list, decode: Any, timeout: float | None) -> "AsyncPipeline":
        self._queue.append((op, args, decode))
        return self

    async def execute(self, timeout: float | None = None) -> list:
        """Send everything queued in one write, await every reply, then raise the first error."""
        queue, self._queue = self._queue, []
        eng = self.engine
        proto = await eng._ensure()
        loop = asyncio.get_running_loop()
        futs = []
        frames = []
        for op, args, _ in queue:
            m = eng._next_id()
            fut = loop.create_future()
            proto.waiters[m] = fut
            futs.append(fut)
            frames.append(_request_frame(m, op, _OPBYTES[op] + P.packb(args), eng.max_frame_size))
        proto.transport.write(b"".join(frames))
        t = eng.timeout if timeout is None else timeout
        gathered = asyncio.gather(*futs, return_exceptions=True)
        try:
            replies = await (gathered if t is None else asyncio.wait_for(gathered, t))
        except (asyncio.TimeoutError, OSError) as exc:
            raise E.translate_socket_error(exc, f"pipeline to {eng.host}:{eng.port}") from None
        results: list = []
        first: BaseException | None = None
        start = time.monotonic()
        for (op, _a, decode), rep in zip(queue, replies):
            if isinstance(rep, BaseException):
                value = rep
            else:
                ok, value = rep
                if ok:
                    try:
                        value = value if decode is None else decode(value)
                        if type(value) is _Continue:
                            value = await eng._follow(value, timeout, start)
                    except Exception as exc:
                        value = exc
                else:
                    value = E.error_from_code(value[0], f"{op}: {value[1]}")
            if isinstance(value, BaseException) and first is None:
                first = value
            results.append(value)
        self.results = results
        if first is not None and self.raise_on_error:
            raise first
        return results


async def connect(host: str = "127.0.0.1", port: int = P.DEFAULT_PORT,
                  **kw: Any) -> AsyncRemoteEngine:
    """Open an :class:`AsyncRemoteEngine` and connect it.

    :raises ConnectionError, TimeoutError, AuthError: when the connection or HELLO fails.
    """
    return await AsyncRemoteEngine(host, port, **kw).connect()
