"""Test helpers: a real vtpu server on 127.0.0.1, in a background thread.

``with running_server() as (host, port): ...`` starts :func:`vtpu.server.start_server` on
port 0 in its own thread and event loop, waits (with a timeout) until it listens, and
stops it on exit. Suites that run the same tests against ``mem://`` and a server use it
from a fixture::

    @pytest.fixture(params=["mem", "server"])
    def url(request):
        if request.param == "mem":
            yield "mem://"
        else:
            with running_server() as (host, port):
                yield f"vtpu://{host}:{port}"
"""
from __future__ import annotations

import asyncio
import os
import contextlib
import threading
from typing import Any, Iterator

__all__ = ["ServerThread", "running_server", "START_TIMEOUT", "shared_data_dir"]

START_TIMEOUT = 30.0


class ServerThread:
    """A server running in a daemon thread with its own event loop.

    :param engine: the engine to serve (a fresh in-memory Engine if ``None``).
    :param host: address to bind (loopback).
    :param port: 0 = any free port.
    :param kw: further :func:`vtpu.server.start_server` arguments (``token``,
        ``max_frame_size``, ``page_size``, ``max_batch``).

    ``.host``/``.port`` after :meth:`start`; :meth:`stop` closes it (bounded wait).
    The engine belongs to the server thread while it runs: inspect it through a client,
    or after :meth:`stop`.
    """

    def __init__(self, engine: Any = None, host: str = "127.0.0.1", port: int = 0, **kw: Any):
        self.engine = engine
        self.host = host
        self.port = port
        self.kw = kw
        self.handle = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = START_TIMEOUT) -> "ServerThread":
        """Start and wait until the server listens.

        :raises RuntimeError: the server did not come up in ``timeout`` seconds.
        :raises OSError: the address could not be bound.
        """
        self._thread = threading.Thread(target=self._run, name="vtpu-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"test server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        from .server import _new_loop, start_server

        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.handle = await start_server(self.engine, self.host, self.port, **self.kw)
            except BaseException as exc:  # report bind errors to the starting thread
                self._error = exc
                self._ready.set()
                return
            self.engine = self.handle.engine
            self.port = self.handle.port
            self._ready.set()
            await self._stop.wait()
            await self.handle.aclose()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def call(self, fn: Any, *args: Any, timeout: float = START_TIMEOUT) -> Any:
        """Run ``fn(*args)`` on the server's loop thread and return its result."""
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn, *args), self._loop)
        return fut.result(timeout)

    def stop(self, timeout: float = START_TIMEOUT) -> None:
        """Stop serving (connections are closed) and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"test server did not stop within {timeout} s")

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _as_coro(fn: Any, *args: Any) -> Any:
    return fn(*args)


@contextlib.contextmanager
def running_server(engine: Any = None, token: str | None = None, **kw: Any) -> Iterator[tuple]:
    """Run a real server on 127.0.0.1 (port 0) for the duration of the block.

    :param engine: engine to serve (fresh in-memory Engine if ``None``).
    :param token: require this token in HELLO.
    :param kw: more :func:`vtpu.server.start_server` arguments.
    :yields: ``(host, port)``.
    """
    st = ServerThread(engine, token=token, **kw)
    st.start()
    try:
        yield (st.host, st.port)
    finally:
        st.stop()


def shared_data_dir() -> str:
    """The shared data folder with the real test files (``.phext`` files and others).

    ``$VTPU_SHARED_DATA`` if set, else ``shared/data`` beside the checkout (where CI puts
    it), else ``/work/shared/data``.

    :returns: the folder's path (which may be missing: tests then fail, loudly).
    """
    env = os.environ.get("VTPU_SHARED_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.normpath(os.path.join(here, "..", "..", "shared", "data"))
    return beside if os.path.isdir(beside) else "/work/shared/data"
