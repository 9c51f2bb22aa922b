"""The server and the network clients, end to end over real loopback sockets.

Every test talks to a real ``vtpu.server`` (started on 127.0.0.1, port 0, in a thread)
through :class:`vtpu.netclient.RemoteEngine` or :class:`vtpu.aio.AsyncRemoteEngine`:
the Engine methods, pipelining, BATCH, token auth, timeouts, reconnects, a short-read
socket, fork and thread safety. No timing assertions.
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

import numpy as np
import pytest

from vtpu import _core
from vtpu import errors as E
from vtpu import protocol as P
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.results import Scrolls
from vtpu.testing import ServerThread, running_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import ShortReadSocket, run_threads  # noqa: E402

pytestmark = pytest.mark.integration

ALL = _core.parse_pattern("*.*.*/*.*.*/*.*.*")


def key(text: str, names=None) -> bytes:
    return _core.pack(_core.parse_coord(text, names))


def keys(texts) -> bytes:
    return _core.pack_many(_core.parse_coords(list(texts)))


@pytest.fixture
def server():
    with ServerThread(Engine(), page_size=7) as st:
        yield st


@pytest.fixture
def client(server):
    r = RemoteEngine(port=server.port, timeout=20, connect_timeout=10)
    yield r
    r.close()


# -- Engine methods over the wire ---------------------------------------------------------


def test_hello_reports_limits(client):
    client.ping()
    info = client.server_info
    assert info["server"] == "vtpu" and info["protocol"] == P.PROTOCOL_VERSION
    assert info["page_size"] == 7 and info["max_frame_size"] == P.DEFAULT_MAX_FRAME_SIZE


def test_get_put_roundtrip(client):
    k = key("1.2.3/4.5.6/7.8.9")
    assert client.get(k) is None
    assert client.put(k, "hello") == 1
    s = client.get(k)
    assert s.content == "hello" and s.version == 1 and s.coordinate == "1.2.3/4.5.6/7.8.9"
    assert s["content"] == "hello" and s.created_at <= s.updated_at
    assert client.put(k, b"\x00bytes") == 2
    assert client.get(k).content == b"\x00bytes"
    vec = np.arange(12, dtype=np.float16).reshape(3, 4)
    assert client.put(k, vec) == 3
    got = client.get(k).content
    assert got.dtype == np.float16 and got.shape == (3, 4) and np.array_equal(got, vec)
    assert client.put(k, {"a": [1, 2.5, None]}) == 4
    assert client.get(k).content == {"a": [1, 2.5, None]}


def test_compare_and_set(client):
    k = key("1.1.1/1.1.1/1.1.1")
    assert client.put(k, "a", if_version=0) == 1
    with pytest.raises(E.VersionConflict):
        client.put(k, "b", if_version=0)
    assert client.put(k, "b", if_version=1) == 2
    assert client.get(k).content == "b"  # the connection survived the error


def test_many(client):
    ks = keys([f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 21)])
    assert client.put_many(ks, [f"v{i}" for i in range(20)]) == [1] * 20
    got = client.get_many(ks + key("9.9.9/9.9.9/9.9.9"))
    assert [s.content for s in got[:20]] == [f"v{i}" for i in range(20)] and got[20] is None
    emb = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    assert client.put_many(ks, emb) == [2] * 20
    got = client.get_many(ks)
    assert np.array_equal(np.stack([s.content for s in got]), emb)
    assert client.delete_many(ks[:36] + key("9.9.9/9.9.9/9.9.9")) == 2
    assert client.delete(ks[36:54]) == 1 and client.delete(ks[36:54]) == 0
    assert client.delete_range(_core.parse_pattern("1.1.1/1.1.1/1.1.[4:10]")) == 6
    assert client.count(ALL) == 11


def test_range_pages_transparently(client):
    coords = [f"2.1.1/1.1.1/1.{i}.{j}" for i in range(1, 6) for j in range(1, 6)]
    client.put_many(keys(coords), list(range(25)))
    client.put(key("3.1.1/1.1.1/1.1.1"), "other")
    pat = _core.parse_pattern("2.*.*/*.*.*/*.*.*")
    res = client.range(pat)  # page_size is 7: four round trips
    assert [s.coordinate for s in res] == sorted(coords, key=lambda t: _core.pack(_core.parse_coord(t)))
    assert [s.content for s in res] == list(range(25))
    # the pages are joined into one column result, as an embedded range gives
    assert type(res) is Scrolls and len(res) == 25
    assert res.coordinates == [s.coordinate for s in res] and res.contents == list(range(25))
    assert res.keys == b"".join(s.key for s in res) and res.versions.tolist() == [1] * 25
    assert [s.content for s in client.range(pat, limit=10)] == list(range(10))
    after = res[11].key
    assert [s.content for s in client.range(pat, after=after, limit=9)] == list(range(12, 21))
    ko = client.range(pat, keys_only=True)
    assert ko.dtype == np.uint16 and ko.shape == (25, 9)
    assert _core.format_coords(ko) == [s.coordinate for s in res]
    assert client.count(pat) == 25
    assert client.range(_core.parse_pattern("7.*.*/*.*.*/*.*.*")) == []


def test_range_pages_of_arrays_join_into_one_stacked_column(client):
    coords = [f"4.1.1/1.1.1/1.{i}.{j}" for i in range(1, 6) for j in range(1, 6)]
    emb = np.arange(25 * 6, dtype=np.float32).reshape(25, 6)
    client.put_many(keys(coords), emb)  # stored in coordinate order
    client.put(key("4.1.1/1.1.1/9.9.9"), np.arange(3, dtype=np.int64))  # another dtype
    res = client.range(_core.parse_pattern("4.*.*/*.*.*/*.*.*"))  # page_size 7: 4 pages
    assert type(res) is Scrolls and len(res) == 26
    assert [s.content.tolist() for s in res[:25]] == emb.tolist()
    assert res[25].content.tolist() == [0, 1, 2] and res[25].content.dtype == np.int64
    got = res[:21].contents  # the three stacked pages (the last one has two dtypes)
    assert type(got) is np.ndarray and got.dtype == np.float32 and np.array_equal(got, emb[:21])


def test_nearest_hier(client):
    cs = ["1.1.1/1.1.1/1.1.1", "1.1.1/1.1.1/1.1.5", "1.1.1/1.1.1/1.1.9", "5.5.5/5.5.5/5.5.5"]
    client.put_many(keys(cs), ["a", "b", "c", "d"])
    c, d = client.nearest(_core.parse_coord("1.1.1/1.1.1/1.1.4"), k=2)
    assert _core.format_coords(c) == ["1.1.1/1.1.1/1.1.5", "1.1.1/1.1.1/1.1.1"]
    assert d.tolist() == [1, 3]
    c, d = client.nearest(_core.parse_coord("1.1.1/1.1.1/1.1.4"), k=10, metric="hamming",
                          within=_core.parse_pattern("1.*.*/*.*.*/*.*.*"))
    assert len(c) == 3
    nxt = client.hier(_core.parse_coord("1.1.1/1.1.1/1.1.5"), "NEXT")
    assert _core.format_coord(nxt) == "1.1.1/1.1.1/1.1.9"
    assert client.hier(_core.parse_coord("5.5.5/5.5.5/5.5.5"), "NEXT") is None
    assert _core.format_coord(client.hier(_core.parse_coord("1.1.1/1.1.1/1.1.5"), "PREV")) \
        == "1.1.1/1.1.1/1.1.1"


def test_attend(client):
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((4, 8))
    ks = keys([f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 5)])
    client.put_many(ks, vecs)
    q = rng.standard_normal(8)
    r = client.attend(q, _core.parse_pattern("1.1.1/1.1.1/1.1.*"), top_k=2)
    assert r["n"] == 4 and r["keys"].shape == (2, 9) and len(r["contents"]) == 2
    scores = vecs @ q / np.sqrt(8)
    assert np.allclose(sorted(scores, reverse=True)[:2], r["scores"])
    pats = np.stack([_core.parse_pattern("1.1.1/1.1.1/1.1.*")] * 3)
    out = client.attend_many(rng.standard_normal((3, 8)), pats)
    assert out["outputs"].shape == (3, 8)


def test_kg(client):
    client.put(key("1.1.1/1.1.1/1.1.1"), "person")
    client.put(key("1.1.1/1.1.2/1.1.1"), "2.1.1/1.1.1/1.1.1")  # edge leads to 2.1.1/...
    client.put(key("2.1.1/1.1.1/1.1.1"), "target")
    d = np.stack([_core.parse_delta("+0.0.0/+0.0.1/+0.0.0")])
    out = client.kg(_core.parse_pattern("1.1.1/1.1.1/1.1.1"), d, 1)
    assert [s.content for s in out] == ["target"]


def test_names_through_the_client_cache(server, client):
    k = key("query.1.1/1.1.1/1.1.1", client.names)  # a miss: interned on the server
    assert client.names.to_list() == ["query"]
    client.put(k, "named")
    other = RemoteEngine(port=server.port)
    try:
        s = other.get(k)  # other's cache learns the id on formatting
        assert s.coordinate == "query.1.1/1.1.1/1.1.1"
        assert other.name_table() == ["query"]
        assert other.intern(["query", "person"]) == [0xF000, 0xF001]
        assert other.names.lookup("person", False) == 0xF001
    finally:
        other.close()


def test_uninterned_name_id_is_refused(client):
    bad = _core.pack(np.array([0xF123, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.uint16))
    with pytest.raises(E.CoordinateError):
        client.put(bad, "x")
    assert client.count(ALL) == 0


def test_health_stats_phext(client):
    assert client.health()["status"] == "ok"
    assert client.stats()["scrolls"] == 0
    client.put(key("1.1.1/1.1.1/1.1.1"), "hello")
    assert client.stats()["scrolls"] == 1 and client.health()["scrolls"] == 1
    text = client.export_phext()
    assert "hello" in text
    client.delete_range(ALL)
    assert client.import_phext(text) == 1
    assert client.get(key("1.1.1/1.1.1/1.1.1")).content == "hello"


# -- pipelining and BATCH ------------------------------------------------------------------


def test_pipeline_in_order(client):
    ks = [key(f"1.1.1/1.1.1/1.1.{i}") for i in range(1, 201)]
    with client.pipeline() as p:
        for i, k in enumerate(ks):
            p.put(k, i)
        for k in ks:
            p.get(k)
        p.count(ALL)
    res = p.results
    assert res[:200] == [1] * 200
    assert [s.content for s in res[200:400]] == list(range(200))
    assert res[400] == 200


def test_pipeline_drains_before_raising(client):
    k = key("1.1.1/1.1.1/1.1.1")
    client.put(k, "a")
    p = client.pipeline()
    p.put(k, "b", if_version=5)  # fails
    p.get(k)
    p.put(k, "c")
    with pytest.raises(E.VersionConflict):
        p.execute()
    assert p.results[1].content == "a" and p.results[2] == 2
    # the stream is still in sync
    assert client.get(k).content == "c"
    p = client.pipeline(raise_on_error=False)
    p.put(k, "d", if_version=1)
    p.get(k)
    r = p.execute()
    assert isinstance(r[0], E.VersionConflict) and r[1].content == "c"


def test_pipeline_follows_range_pages(client):
    client.put_many(keys([f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 31)]), list(range(30)))
    with client.pipeline() as p:
        p.range(ALL)
        p.count(ALL)
    assert [s.content for s in p.results[0]] == list(range(30)) and p.results[1] == 30


def test_batch(client):
    k = key("1.1.1/1.1.1/1.1.1")
    with pytest.raises(E.VersionConflict):
        with client.pipeline(batch=True) as p:
            p.put(k, "x")
            p.get(k)
            p.put(k, "y", if_version=9)
            p.count(ALL)
    assert p.results[0] == 1 and p.results[1].content == "x" and p.results[3] == 1
    # the failing op did not stop the others
    p = client.pipeline(batch=True, raise_on_error=False)
    p.put(k, "z")
    p.put(k, "w", if_version=1)
    p.get(k)
    r = p.execute()
    assert r[0] == 2 and isinstance(r[1], E.VersionConflict) and r[2].content == "z"


def test_batch_limit(server):
    server.stop()
    with ServerThread(Engine(), max_batch=3) as st:
        r = RemoteEngine(port=st.port)
        p = r.pipeline(batch=True, raise_on_error=False)
        for _ in range(4):
            p.ping()
        assert all(isinstance(x, E.LimitError) for x in p.execute())
        assert r.ping() == "PONG"
        r.close()


def test_many_clients_interleaved(server):
    clients = [RemoteEngine(port=server.port) for _ in range(8)]
    try:
        for rnd in range(20):
            for i, c in enumerate(clients):
                c.put(key(f"1.1.1/1.1.1/{i + 1}.1.1"), rnd)
        for i, c in enumerate(clients):
            assert c.get(key(f"1.1.1/1.1.1/{i + 1}.1.1")).version == 20
    finally:
        for c in clients:
            c.close()


# -- auth ----------------------------------------------------------------------------------


def test_token_auth():
    with running_server(token="s3cret") as (host, port):
        good = RemoteEngine(host, port, token="s3cret")
        assert good.ping() == "PONG"
        good.close()
        for tok in (None, "wrong", ""):
            bad = RemoteEngine(host, port, token=tok)
            with pytest.raises(E.AuthError):
                bad.ping()
            bad.close()
        # requests before HELLO are refused
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(P.encode_request(1, "GET", [bytes(18)]))
        d = P.FrameDecoder()
        msg = _read_one(s, d)
        assert msg[0] == 1 and msg[1] == 1 and msg[2][0] == "AUTH"
        s.close()


def _read_one(s, d):
    for _ in range(1000):
        m = d.next_frame()
        if m is not None:
            return m
        data = s.recv(65536)
        if not data:
            return None
        d.feed(data)
    raise AssertionError("no frame")


# -- timeouts, failures, reconnect ---------------------------------------------------------


def test_connect_refused_is_connection_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = RemoteEngine(port=port, connect_timeout=5)
    with pytest.raises(E.ConnectionError) as ei:
        r.ping()
    assert isinstance(ei.value, ConnectionError) and isinstance(ei.value, E.VTPUError)


def test_connect_timeout_on_silent_peer():
    # A listener that never accepts: TCP connects (backlog), HELLO is never answered.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    try:
        r = RemoteEngine(port=lst.getsockname()[1], connect_timeout=0.3)
        with pytest.raises(E.TimeoutError) as ei:
            r.ping()
        assert isinstance(ei.value, TimeoutError)
        assert not r.connected
    finally:
        lst.close()


class SlowEngine(Engine):
    """An Engine whose GET of one key blocks the server loop for a while."""

    SLOW = _core.pack(_core.parse_coord("6.6.6/6.6.6/6.6.6"))
    gate: threading.Event

    def get(self, key):
        if key == self.SLOW:
            self.gate.wait(10)
        return super().get(key)


def test_call_timeout_closes_and_reconnects():
    eng = SlowEngine()
    eng.gate = threading.Event()
    with ServerThread(eng) as st:
        r = RemoteEngine(port=st.port, timeout=20)
        k = key("1.1.1/1.1.1/1.1.1")
        r.put(k, "v")
        with pytest.raises(E.TimeoutError):
            r.get(SlowEngine.SLOW, timeout=0.2)
        assert not r.connected  # a half-finished exchange is never reused
        eng.gate.set()
        assert r.get(k).content == "v"  # lazily reconnected
        r.close()


def test_send_timeout_when_the_server_reads_nothing():
    # The server's loop is stuck, so it reads nothing: a PUT larger than the socket
    # buffers cannot be sent, and its deadline ends it (the send is bounded, not only
    # the wait for the reply); the connection is dropped and the next call reconnects.
    eng = SlowEngine()
    eng.gate = threading.Event()
    with ServerThread(eng) as st:
        r = RemoteEngine(port=st.port, timeout=20)
        blocker = RemoteEngine(port=st.port, timeout=20)
        k = key("1.1.1/1.1.1/1.1.1")
        r.put(k, "v")
        with pytest.raises(E.TimeoutError):
            blocker.get(SlowEngine.SLOW, timeout=0.2)   # the loop now waits for the gate
        big = np.zeros(16 << 20, dtype=np.uint8)
        with pytest.raises(E.TimeoutError):
            r.put(k, big, timeout=0.5)
        assert not r.connected
        eng.gate.set()
        assert r.get(k).content == "v"
        r.close()
        blocker.close()


def test_reconnect_after_server_restart():
    eng = Engine()
    st = ServerThread(eng).start()
    port = st.port
    r = RemoteEngine(port=port, retry_backoff=0.01)
    k = key("1.1.1/1.1.1/1.1.1")
    r.put(k, "v")
    st.stop()
    with pytest.raises(E.ConnectionError):
        r.get(k)  # nothing listens now (after one automatic retry)
    st = ServerThread(eng, port=port).start()  # same engine, same port
    try:
        assert r.get(k).content == "v"
        assert r.put(k, "w") == 2
        st.stop()
        st = ServerThread(eng, port=port).start()
        # the stale socket is detected by the idempotent retry
        assert r.get(k).content == "w"
    finally:
        r.close()
        st.stop()


def test_non_idempotent_call_is_not_retried():
    eng = Engine()
    st = ServerThread(eng).start()
    port = st.port
    r = RemoteEngine(port=port, retry_backoff=0.01)
    k = key("1.1.1/1.1.1/1.1.1")
    r.put(k, "v")
    st.stop()
    st = ServerThread(eng, port=port).start()
    try:
        try:
            r.put(k, "w")  # may fail on the dead socket; must then not have been re-sent
        except E.ConnectionError:
            assert r.get(k).version == 1
        else:
            assert r.get(k).version == 2
    finally:
        r.close()
        st.stop()


def test_short_reads(server):
    made = []

    def factory(addr, timeout):
        s = ShortReadSocket(socket.create_connection(addr, timeout=timeout))
        made.append(s)
        return s

    r = RemoteEngine(port=server.port, socket_factory=factory)
    big = np.arange(5000, dtype=np.float64)
    k = key("1.1.1/1.1.1/1.1.1")
    assert r.put(k, big) == 1
    assert np.array_equal(r.get(k).content, big)
    ks = keys([f"1.1.1/1.1.1/1.2.{i}" for i in range(1, 51)])
    r.put_many(ks, [f"x{i}" * 10 for i in range(50)])
    assert [s.content for s in r.get_many(ks)] == [f"x{i}" * 10 for i in range(50)]
    with r.pipeline() as p:
        for i in range(30):
            p.get(k)
    assert len(p.results) == 30 and len(made) == 1 and made[0].reads > 8000
    r.close()


def test_client_refuses_oversized_request_locally(server):
    r = RemoteEngine(port=server.port, max_frame_size=4096)
    with pytest.raises(E.LimitError):
        r.put(key("1.1.1/1.1.1/1.1.1"), b"x" * 10000)
    assert r.ping() == "PONG"  # nothing was sent; the connection is fine
    r.close()


def test_reply_over_client_limit_is_a_limit_error(server):
    r = RemoteEngine(port=server.port, max_frame_size=2048)
    k = key("1.1.1/1.1.1/1.1.1")
    r.put(k, b"x" * 1500)
    r.put(key("1.1.1/1.1.1/1.1.2"), b"y" * 1500)
    with pytest.raises(E.LimitError):
        r.get_many(k + key("1.1.1/1.1.1/1.1.2"))  # server would exceed our 2 KiB
    assert r.get(k).content == b"x" * 1500
    r.close()


# -- threads and fork ----------------------------------------------------------------------


def test_threads_share_one_client(client):
    def work(t):
        for i in range(100):
            k = key(f"1.1.1/1.1.1/{t + 1}.1.{i + 1}")
            client.put(k, (t, i))
            assert client.get(k).content == [t, i]

    assert run_threads(work, 6) == []
    assert client.count(ALL) == 600


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_its_own_connection(client):
    k = key("1.1.1/1.1.1/1.1.1")
    client.put(k, "parent")
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's socket
        code = 1
        try:
            code = 0 if client.get(k).content == "parent" and client.put(k, "child") == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert client.get(k).content == "child"  # parent's connection still in sync


# -- asyncio client ------------------------------------------------------------------------


def test_aio_client(server):
    from vtpu.aio import AsyncRemoteEngine

    async def main():
        async with AsyncRemoteEngine(port=server.port) as a:
            k = await a.key("query.1.1/1.1.1/1.1.1")
            assert await a.put(k, "v") == 1
            assert (await a.get(k)).coordinate == "query.1.1/1.1.1/1.1.1"
            ks = keys([f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 21)])
            assert await a.put_many(ks, np.ones((20, 4), dtype=np.float32)) == [1] * 20
            got = await a.get_many(ks)
            assert len(got) == 20 and got[0].content.shape == (4,)
            res = await a.range(_core.parse_pattern("1.*.*/*.*.*/*.*.*"))  # 3 pages
            assert len(res) == 20
            assert (await a.health())["status"] == "ok"
            # concurrent calls pipeline on one connection
            vals = await asyncio.gather(*[a.get(ks[18 * i:18 * i + 18]) for i in range(20)])
            assert all(v.version == 1 for v in vals)
            p = a.pipeline()
            p.put(k, "w")
            p.get(k)
            p.count(ALL)
            r = await p.execute()
            assert r[0] == 2 and r[1].content == "w" and r[2] == 21
            with pytest.raises(E.VersionConflict):
                await a.put(k, "x", if_version=7)
            assert await a.ping() == "PONG"

    asyncio.run(main())


def test_aio_auth_and_refused():
    from vtpu.aio import AsyncRemoteEngine

    async def main(port):
        with pytest.raises(E.AuthError):
            await AsyncRemoteEngine(port=port, token="nope").connect()
        a = AsyncRemoteEngine(port=port, token="t")
        assert await a.ping() == "PONG"
        await a.close()

    with running_server(token="t") as (_, port):
        asyncio.run(main(port))


def test_aio_timeout_leaves_the_connection_usable():
    from vtpu.aio import AsyncRemoteEngine

    eng = SlowEngine()
    eng.gate = threading.Event()

    async def main(port):
        async with AsyncRemoteEngine(port=port, timeout=20) as a:
            k = key("1.1.1/1.1.1/1.1.1")
            await a.put(k, "v")
            proto = a._proto
            with pytest.raises(E.TimeoutError):
                await a.get(SlowEngine.SLOW, timeout=0.2)
            eng.gate.set()
            # the late reply is read and dropped; the same connection answers the next call
            assert (await a.get(k)).content == "v" and a._proto is proto

    with ServerThread(eng) as st:
        asyncio.run(main(st.port))


def test_aio_concurrent_paged_ranges_and_a_failing_push_callback(caplog):
    from vtpu.aio import AsyncRemoteEngine

    async def main(port):
        async with AsyncRemoteEngine(port=port, track=True) as a, \
                AsyncRemoteEngine(port=port) as w:
            ks = keys([f"1.1.1/1.1.1/1.{j}.{i}" for j in range(1, 4) for i in range(1, 31)])
            await w.put_many(ks, [f"x{i}" for i in range(90)])

            def bad(kind, payload):
                raise RuntimeError("callback bug")

            a.on_push = bad
            pats = [_core.parse_pattern(f"1.1.1/1.1.1/1.{j}.*") for j in (1, 2, 3)]
            got = await asyncio.gather(*[a.range(p, limit=25) for p in pats],
                                       w.put(ks[:18], "changed"), a.count(ALL))
            assert [len(r) for r in got[:3]] == [25, 25, 25] and got[4] == 90
            assert [s.key for s in got[1]] == [ks[18 * (30 + i):18 * (31 + i)] for i in range(25)]
            assert await a.ping() == "PONG"  # pushes (and the callback's failures) read on

    with caplog.at_level("ERROR", logger="vtpu.client"):
        with running_server(page_size=10) as (_, port):
            asyncio.run(main(port))
    assert "on_push callback failed" in caplog.text
