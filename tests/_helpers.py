"""Helpers shared by the test modules (and ``protocol/gen_vectors.py``).

- The golden vectors of ``protocol/vectors/``: :func:`load_vectors`, and their JSON form
  (PROTOCOL.md, "Golden vectors": a bin is ``{"$bin": hex}``, an ext-1 array
  ``{"$ndarray": [dtype, shape, hex]}``) both ways, :func:`to_json` / :func:`from_json`.
- :class:`Raw`: one connection to a real server on 127.0.0.1 speaking the codec by hand
  (frames out, decoded messages in), for the tests that send what no client would.
- :class:`ShortReadSocket` (a real socket whose reads return a few bytes at most) and
  :func:`run_threads` (run a function in threads, collect what they raised).

Import it as the other helper modules are (pytest runs in importlib mode)::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _helpers import Raw  # noqa: E402
"""
from __future__ import annotations

import json
import pathlib
import select
import socket
import threading
import time
from typing import Any, Callable

import numpy as np

from vtpu import wire

VEC_DIR = pathlib.Path(__file__).resolve().parent.parent / "protocol" / "vectors"
IO_TIMEOUT = 10.0  # seconds a raw connection waits for the server's next message
_BIG = 1 << 30     # frames this side sends and accepts: the server's limits are tested


def load_vectors(name: str) -> dict:
    """The golden vector file ``protocol/vectors/<name>.json``, parsed."""
    with open(VEC_DIR / f"{name}.json") as f:
        return json.load(f)


def to_json(v: Any) -> Any:
    """A decoded value -> the vectors' JSON form (bins and ndarrays tagged)."""
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, np.ndarray):
        return {"$ndarray": [v.dtype.str, list(v.shape), v.tobytes(order="C").hex()]}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    return v


def from_json(v: Any) -> Any:
    """The vectors' JSON form -> the Python value it stands for."""
    if isinstance(v, dict):
        if set(v) == {"$bin"}:
            return bytes.fromhex(v["$bin"])
        if set(v) == {"$ndarray"}:
            dt, shape, raw = v["$ndarray"]
            return np.frombuffer(bytes.fromhex(raw), dtype=np.dtype(dt)).reshape(shape)
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


class Raw:
    """A raw protocol connection to ``127.0.0.1:port``: send frames, read messages, see
    the close.

    :param port: the server's port.
    :param options: the HELLO options.
    :param hello: say HELLO first (and require it to succeed); :attr:`hello` is its reply.
    :param token: the HELLO token.
    :param rcvbuf: ``SO_RCVBUF`` to set before connecting (a reader that lags).
    :param timeout: seconds :meth:`recv` waits for a message by default.
    """

    def __init__(self, port: int, options: dict | None = None, *, hello: bool = True,
                 token: str | None = None, rcvbuf: int | None = None,
                 timeout: float = IO_TIMEOUT):
        self.timeout = timeout
        self.s = socket.socket()
        if rcvbuf is not None:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        self.d = wire.FrameDecoder(_BIG)
        self.hello = None
        if hello:
            self.hello = self.call(1, "HELLO", [1, token, options or {}])
            assert self.hello is not None and self.hello[1] == 0, self.hello

    def send(self, data: bytes) -> None:
        """Send raw bytes (frames, parts of frames, garbage)."""
        self.s.sendall(data)

    def request(self, msgid: int, op: str, args: list) -> None:
        """Send one request frame."""
        self.s.sendall(wire.encode_request(msgid, op, args, _BIG))

    def call(self, msgid: int, op: str, args: list) -> Any:
        """Send one request and return the next message."""
        self.request(msgid, op, args)
        return self.recv()

    def recv(self, timeout: float | None = None) -> Any:
        """The next message, or None once the server closed the connection.

        :raises TimeoutError: nothing came within ``timeout`` (default: the connection's).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            m = self.d.next()
            if m is not None:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the server in time")
            self.s.settimeout(left)
            try:
                data = self.s.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                return None
            except socket.timeout:
                continue
            if not data:
                return None
            self.d.feed(data)

    def exchange(self, data: bytes, n: int) -> list:
        """Send ``data`` in one write and read ``n`` replies (pushes are skipped)."""
        self.s.sendall(data)
        out = []
        while len(out) < n:
            m = self.recv()
            assert m is not None, "connection closed"
            if m[0] == 0 and m[1] == "push":
                continue
            out.append(m)
        return out

    def ready(self) -> bool:
        """Whether a message (or bytes of one) is waiting, without blocking."""
        if self.d.buffered():
            return True
        return bool(select.select([self.s], [], [], 0)[0])

    def closed(self, skip: bool = False, timeout: float | None = None) -> bool:
        """Whether the server closes the connection next.

        :param skip: skip what the server still sends before it closes; False then only
            when it has not closed within ``timeout``.
        """
        if not skip:
            return self.recv(timeout) is None
        try:
            while self.recv(timeout) is not None:
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Close this side."""
        self.s.close()


class ShortReadSocket:
    """A real socket whose every read returns at most ``most`` bytes (partial reads).

    :attr:`reads` counts the ``recv_into`` calls; everything else is the socket's.
    """

    def __init__(self, sock: socket.socket, most: int = 5):
        self._s = sock
        self.most = most
        self.reads = 0

    def recv_into(self, buf, nbytes: int = 0) -> int:
        self.reads += 1
        return self._s.recv_into(buf, min(self.most, len(buf) if not nbytes else nbytes))

    def recv(self, n: int, flags: int = 0) -> bytes:
        return self._s.recv(min(n, self.most), flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)


def run_threads(work: Callable[[int], None], n: int, timeout: float = 60.0) -> list:
    """Run ``work(0)`` .. ``work(n - 1)`` in ``n`` threads at once and wait for them.

    :returns: what they raised (empty when all succeeded); a thread still running after
        ``timeout`` seconds counts as a failure.
    """
    errors: list = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    errors += [TimeoutError(f"{t.name} still running") for t in ts if t.is_alive()]
    return errors


def wait_for(cond: Callable[[], bool], timeout: float = IO_TIMEOUT, what: str = "") -> None:
    """Poll ``cond`` every 10 ms until it holds.

    :raises AssertionError: it still does not hold after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g} s: {what or cond}")
        time.sleep(0.01)
