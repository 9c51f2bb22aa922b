"""The server agrees with PROTOCOL.md: the conversations of ``protocol/vectors/
exchanges.json`` replayed byte for byte against a real server, and the error contract
(INTERNAL for bugs, logged; one socket-error translation; logged push-callback
failures) seen from real clients."""
from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time

import numpy as np
import pytest

from vtpu import errors as E
from vtpu import protocol as P
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.testing import running_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import IO_TIMEOUT, Raw, load_vectors, to_json  # noqa: E402

pytestmark = pytest.mark.integration

EXCHANGES = load_vectors("exchanges")["exchanges"]


def check_frame(got, want) -> None:
    assert got is not None, f"connection closed, expected {want}"
    assert got[0] == want["msgid"] and got[1] == want["status"], (got, want)
    if want["status"] == 1:
        assert got[2][0] == want["code"], got
        assert isinstance(got[2][1], str)
    elif "result" in want:
        assert to_json(got[2]) == want["result"]
    elif "result_has" in want:
        for k, v in want["result_has"].items():
            assert to_json(got[2][k]) == v, (k, got[2][k])


@pytest.mark.parametrize("ex", EXCHANGES, ids=lambda e: e["name"])
def test_exchange(ex):
    with running_server(**ex.get("server", {})) as (_, port):
        c = Raw(port, hello=False)
        if ex["hello"] is not None:
            c.send(P.encode_request(0xFFFF, "HELLO", [1, None, ex["hello"]]))
            assert c.recv()[:2] == [0xFFFF, 0]
        c.send(b"".join(bytes.fromhex(h) for h in ex["send"]))
        for want in ex["expect"]:
            check_frame(c.recv(), want)
        if ex["then"] == "closed":
            assert c.recv() is None
        else:
            # No stray frame (e.g. a push of the connection's own write) may come first.
            c.send(P.encode_request(0xFFFE, "PING", []))
            assert c.recv() == [0xFFFE, 0, "PONG"]
        c.close()


def test_invalidate_goes_to_other_tracking_connections_only():
    with running_server() as (_, port):
        conns = []
        for _ in range(2):
            c = Raw(port, hello=False)
            c.send(P.encode_request(1, "HELLO", [1, None, {"track": True}]))
            assert c.recv()[1] == 0
            conns.append(c)
        writer, watcher = conns
        k1, k2 = bytes(18), bytes([0, 1] * 9)
        writer.send(P.encode_request(2, "PUT", [k1, "a"]) + P.encode_request(3, "PUT", [k2, "b"]))
        assert writer.recv() == [2, 0, 1] and writer.recv() == [3, 0, 1]
        assert watcher.recv() == [0, "push", "invalidate", k1 + k2]
        # The watcher writes: the first connection hears of it, the watcher does not.
        watcher.send(P.encode_request(4, "DEL", [k1]) + P.encode_request(5, "PING", []))
        assert watcher.recv() == [4, 0, 1] and watcher.recv() == [5, 0, "PONG"]
        assert writer.recv() == [0, "push", "invalidate", k1]
        writer.send(P.encode_request(6, "PING", []))
        assert writer.recv() == [6, 0, "PONG"]
        for c in conns:
            c.close()


class _BuggyCount(Engine):
    """An engine whose COUNT has a bug: a bare KeyError escapes it (from a step)."""

    def count_steps(self, pattern):
        yield
        raise KeyError("missing slot")


def test_unexpected_engine_error_is_internal_and_logged(caplog):
    caplog.set_level(logging.ERROR, logger="vtpu.server")
    with running_server(_BuggyCount()) as (host, port):
        with RemoteEngine(host, port) as eng:
            pat = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
            with pytest.raises(E.InternalError) as info:
                eng.count(pat)
            assert info.value.code == "INTERNAL" and "KeyError" in info.value.message
            assert not isinstance(info.value, ValueError)  # never looks like a bad argument
            # The connection survives and bad input is still the caller's fault.
            assert eng.ping() == "PONG"
            with pytest.raises(E.InterfaceError):
                eng.nearest(bytes(18), k=-1)
            # Inside a BATCH too.
            with eng.pipeline(batch=True, raise_on_error=False) as p:
                p.count(pat)
                p.ping()
            assert isinstance(p.results[0], E.InternalError) and p.results[1] == "PONG"
    records = [r for r in caplog.records if r.name == "vtpu.server" and r.exc_info]
    assert len(records) == 2
    assert all(r.exc_info[0] is KeyError for r in records)
    assert "COUNT" in records[0].getMessage() and "BATCH COUNT" in records[1].getMessage()


def test_failing_push_callback_is_logged_and_connection_goes_on(caplog):
    caplog.set_level(logging.ERROR, logger="vtpu.client")
    with running_server() as (host, port):
        with RemoteEngine(host, port, track=True) as watcher, RemoteEngine(host, port) as writer:
            seen = []

            def on_push(kind, payload):
                seen.append((kind, payload))
                raise RuntimeError("callback bug")

            watcher.on_push = on_push
            watcher.ping()
            writer.put(bytes(18), "x")
            # The push precedes the reply to the watcher's next request.
            deadline = time.monotonic() + IO_TIMEOUT
            while not seen and time.monotonic() < deadline:
                assert watcher.ping() == "PONG"
            assert seen == [("invalidate", bytes(18))]
            assert watcher.get(bytes(18)).content == "x"
    msgs = [r for r in caplog.records if r.name == "vtpu.client"]
    assert len(msgs) == 1 and msgs[0].exc_info[0] is RuntimeError


def test_socket_errors_become_vtpu_errors():
    # A port nobody listens on: refused -> ConnectionError.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(E.ConnectionError) as info:
        RemoteEngine("127.0.0.1", port, retries=0).ping()
    assert isinstance(info.value.__cause__, OSError)
    # A listener that never answers HELLO: TimeoutError (not a socket.timeout).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(E.TimeoutError):
            RemoteEngine("127.0.0.1", silent.getsockname()[1], connect_timeout=0.2).ping()
    finally:
        silent.close()


def test_translate_socket_error():
    assert isinstance(E.translate_socket_error(socket.timeout("t"), "x"), E.TimeoutError)
    assert isinstance(E.translate_socket_error(ConnectionResetError(104, "reset"), "x"),
                      E.ConnectionError)
    err = E.translate_socket_error(OSError(111, "Connection refused"), "connect to h:1")
    assert str(err) == "connect to h:1 failed: Connection refused"
    mine = E.LimitError("l")
    assert E.translate_socket_error(mine, "x") is mine


def test_oversized_frame_is_frame_too_large_on_the_client():
    d = P.FrameDecoder(1024)
    d.feed(struct.pack(">I", 1025))
    with pytest.raises(E.FrameTooLarge):
        d.next_frame()


def test_async_client_same_error_contract(caplog):
    import asyncio

    from vtpu import aio

    caplog.set_level(logging.ERROR, logger="vtpu.client")

    async def run(host, port):
        watcher = await aio.connect(host, port, track=True)
        writer = await aio.connect(host, port)
        watcher.on_push = lambda kind, payload: 1 / 0
        await writer.put(bytes(18), "x")
        for _ in range(100):  # bounded: the push arrives within a few loop turns
            if caplog.records:
                break
            await asyncio.sleep(0.01)
        assert await watcher.ping() == "PONG"  # the connection went on
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        try:
            with pytest.raises(E.TimeoutError):
                await aio.connect("127.0.0.1", silent.getsockname()[1], connect_timeout=0.2)
        finally:
            silent.close()
        await watcher.close()
        await writer.close()

    with running_server() as (host, port):
        asyncio.run(run(host, port))
    msgs = [r for r in caplog.records if r.name == "vtpu.client"]
    assert len(msgs) == 1 and msgs[0].exc_info[0] is ZeroDivisionError
