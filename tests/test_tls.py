"""TLS: a server with a certificate made at test time, both clients over it.

The certificates come from the ``openssl`` binary (``tests/netutil.py``): a CA, a
server certificate for ``localhost``/``127.0.0.1`` signed by it, a client certificate,
and an unrelated CA. Every server listens on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import vtpu  # noqa: E402
from vtpu import _core  # noqa: E402
from vtpu import errors as E  # noqa: E402
from vtpu.aio import AsyncRemoteEngine  # noqa: E402
from vtpu.netclient import IDLE_CHECK_SECONDS, RemoteEngine  # noqa: E402
from vtpu.testing import ServerThread  # noqa: E402
from vtpu.tls import client_context, server_context  # noqa: E402

from _helpers import run_threads  # noqa: E402
from netutil import ServeProcess, make_certs  # noqa: E402

ALL = _core.parse_pattern("*.*.*/*.*.*/*.*.*")


def key(text: str) -> bytes:
    return _core.pack(_core.parse_coord(text))


def keys(texts) -> bytes:
    return _core.pack_many(_core.parse_coords(list(texts)))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def tls_server(certs):
    """A TLS server on 127.0.0.1 with small RANGE pages (so RANGE takes several)."""
    with ServerThread(ssl=server_context(certs.server_cert, certs.server_key),
                      page_size=7) as st:
        yield st


# -- contexts (no server) ---------------------------------------------------------------


def test_client_context_options(certs):
    assert client_context() is None and client_context(False) is None
    ctx = client_context(tls_ca=certs.ca)  # a CA implies TLS
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # that CA only, not the system store as well
    off = client_context(True, tls_verify=False)
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    mine = ssl.create_default_context()
    assert client_context(mine) is mine
    with pytest.raises(E.InterfaceError, match="not both"):
        client_context(mine, tls_ca=certs.ca)
    with pytest.raises(E.InterfaceError, match="contradicts"):
        client_context(False, tls_ca=certs.ca)
    with pytest.raises(E.InterfaceError, match="cannot load TLS CA file"):
        client_context(tls_ca=certs.ca + ".missing")
    with pytest.raises(E.InterfaceError, match="cannot load TLS certificate"):
        server_context(certs.ca, certs.server_key)  # the key does not match
    assert server_context(certs.server_cert, certs.server_key,
                          certs.ca).verify_mode == ssl.CERT_REQUIRED


def test_url_options_reach_the_client(certs):
    c = vtpu.connect(f"vtpus://localhost:4242?tls_ca={certs.ca}&server_hostname=db.example")
    b = c.backend
    assert (b.host, b.port, b.server_hostname) == ("localhost", 4242, "db.example")
    assert b.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert vtpu.connect("vtpu://127.0.0.1:4242").backend.ssl_context is None
    off = vtpu.connect("vtpus://127.0.0.1:4242?tls_verify=0").backend.ssl_context
    assert off.verify_mode == ssl.CERT_NONE
    with pytest.raises(E.InterfaceError, match="tls_verify"):
        vtpu.connect("vtpus://127.0.0.1:4242?tls_verify=maybe")


# -- the sync client -------------------------------------------------------------------------


@pytest.mark.integration
def test_sync_client_get_put_pipeline_range(tls_server, certs):
    c = vtpu.connect(f"vtpus://127.0.0.1:{tls_server.port}?tls_ca={certs.ca}", timeout=30)
    assert c.cput("1.1.1/1.1.1/1.1.1", "over TLS") == 1
    assert c.cget("1.1.1/1.1.1/1.1.1")["content"] == "over TLS"
    # A value much larger than one TLS record (16 KiB): many partial reads per reply.
    big = np.arange(300_000, dtype=np.float32)
    assert c.cput("1.1.1/1.1.1/1.1.2", big) == 1
    assert np.array_equal(c.cget("1.1.1/1.1.1/1.1.2")["content"], big)
    with c.pipeline() as p:
        for i in range(1, 51):
            p.cput(f"2.1.1/1.1.1/1.1.{i}", f"v{i}")
        for i in range(1, 51):
            p.cget(f"2.1.1/1.1.1/1.1.{i}")
    assert p.results[:50] == [1] * 50
    assert [s["content"] for s in p.results[50:]] == [f"v{i}" for i in range(1, 51)]
    got = c.crange("2.1.1/1.1.1/1.1.*")  # 50 results in pages of 7
    assert [s.content for s in got] == [f"v{i}" for i in range(1, 51)]
    assert c.ccount("*.*.*/*.*.*/*.*.*") == 52
    c.close()


@pytest.mark.integration
def test_sync_client_idle_connection_survives_and_keeps_pushes(tls_server, certs):
    # After an idle second the client checks whether the server closed the connection.
    # A TLS socket cannot peek, so the check reads into the session buffer: a push that
    # arrived meanwhile must be delivered, and the connection must not be replaced.
    watcher = RemoteEngine(port=tls_server.port, tls_ca=certs.ca, track=True)
    pushes = []
    watcher.on_push = lambda kind, payload: pushes.append((kind, payload))
    k = key("1.1.1/1.1.1/1.1.1")
    assert watcher.get(k) is None
    hello = watcher.server_info  # a new connection would bring a new HELLO answer
    writer = RemoteEngine(port=tls_server.port, tls_ca=certs.ca)
    assert writer.put(k, "new") == 1
    time.sleep(IDLE_CHECK_SECONDS + 0.3)
    assert watcher.get(k).content == "new"
    assert pushes == [("invalidate", k)]
    assert watcher.server_info is hello  # the same TLS connection
    writer.close()
    watcher.close()


@pytest.mark.integration
def test_many_tls_connections_at_once(tls_server, certs):
    # The server reads every TLS connection through one shared buffer: interleaved big
    # requests from several clients must each arrive intact.
    def work(t):
        c = RemoteEngine(port=tls_server.port, tls_ca=certs.ca)
        for i in range(5):
            k = key(f"1.1.1/1.1.{t + 1}/1.1.{i + 1}")
            v = np.full(50_000, t * 10 + i, dtype=np.int32)
            assert c.put(k, v) == 1
            assert np.array_equal(c.get(k).content, v)
        c.close()

    assert run_threads(work, 4) == []
    c = RemoteEngine(port=tls_server.port, tls_ca=certs.ca)
    assert c.count(ALL) == 20
    c.close()


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_opens_its_own_tls_connection(tls_server, certs):
    c = RemoteEngine(port=tls_server.port, tls_ca=certs.ca)
    k = key("1.1.1/1.1.1/1.1.1")
    c.put(k, "parent")
    pid = os.fork()
    if pid == 0:  # child: must not write into the parent's TLS stream
        code = 1
        try:
            code = 0 if c.get(k).content == "parent" and c.put(k, "child") == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert c.get(k).content == "child"  # the parent's TLS session is still in sync
    c.close()


@pytest.mark.integration
def test_call_timeout_over_tls(certs):
    # A server that accepts but never answers (its loop is blocked): the deadline holds.
    import threading

    blocked, gate = threading.Event(), threading.Event()

    def block_the_loop():
        blocked.set()
        gate.wait(10)

    with ServerThread(ssl=server_context(certs.server_cert, certs.server_key)) as st:
        c = RemoteEngine(port=st.port, tls_ca=certs.ca, timeout=0.5)
        assert c.ping() == "PONG"
        blocker = threading.Thread(target=st.call, args=(block_the_loop,))
        blocker.start()
        assert blocked.wait(10)
        with pytest.raises(E.TimeoutError):
            c.ping()
        gate.set()
        blocker.join(10)
        assert c.ping() == "PONG"  # reconnected
        c.close()


# -- the asyncio client -------------------------------------------------------------------


@pytest.mark.integration
def test_async_client_get_put_pipeline_range(tls_server, certs):
    async def main():
        async with AsyncRemoteEngine(port=tls_server.port, tls_ca=certs.ca) as a:
            k = key("1.1.1/1.1.1/1.1.1")
            assert await a.put(k, "over TLS") == 1
            assert (await a.get(k)).content == "over TLS"
            big = np.arange(300_000, dtype=np.float32)
            assert await a.put(key("1.1.1/1.1.1/1.1.2"), big) == 1
            assert np.array_equal((await a.get(key("1.1.1/1.1.1/1.1.2"))).content, big)
            ks = keys([f"2.1.1/1.1.1/1.1.{i}" for i in range(1, 31)])
            p = a.pipeline()
            for i in range(30):
                p.put(ks[18 * i:18 * i + 18], i)
            p.count(ALL)
            r = await p.execute()
            assert r == [1] * 30 + [32]
            got = await a.range(_core.parse_pattern("2.1.1/1.1.1/1.1.*"))  # pages of 7
            assert [s.content for s in got] == list(range(30))
            vals = await asyncio.gather(*[a.get(ks[18 * i:18 * i + 18]) for i in range(30)])
            assert [v.content for v in vals] == list(range(30))

    asyncio.run(main())


# -- failures ------------------------------------------------------------------------------


@pytest.mark.integration
def test_wrong_ca_or_host_name_is_a_connection_error(tls_server, certs):
    port = tls_server.port
    bad = [dict(tls_ca=certs.other_ca), dict(ssl=True),
           dict(tls_ca=certs.ca, server_hostname="db.example")]
    for kw in bad:
        with pytest.raises(E.ConnectionError, match="TLS certificate verify failed"):
            RemoteEngine(port=port, retries=0, **kw).ping()

        async def aio(kw=kw):
            await AsyncRemoteEngine(port=port, retries=0, **kw).connect()

        with pytest.raises(E.ConnectionError, match="TLS certificate verify failed"):
            asyncio.run(aio())
    # Encryption without verification works (and is what tls_verify=False means).
    assert RemoteEngine(port=port, ssl=True, tls_verify=False).ping() == "PONG"


@pytest.mark.integration
def test_plaintext_client_to_tls_server_is_told_why(tls_server, certs):
    port = tls_server.port
    with pytest.raises(E.ConnectionError, match="vtpus://"):
        vtpu.connect(f"vtpu://127.0.0.1:{port}", retries=0).cget("1.1.1/1.1.1/1.1.1")

    async def aio():
        await AsyncRemoteEngine(port=port, retries=0).connect()

    with pytest.raises(E.ConnectionError, match="vtpus://"):
        asyncio.run(aio())
    # The server keeps serving TLS clients.
    c = RemoteEngine(port=port, tls_ca=certs.ca)
    assert c.put(key("1.1.1/1.1.1/1.1.1"), "still here") == 1
    assert tls_server.handle.connections == 1
    c.close()


@pytest.mark.integration
def test_tls_client_to_plaintext_server_is_told_why():
    with ServerThread() as st:
        with pytest.raises(E.ConnectionError, match="does not speak TLS"):
            RemoteEngine(port=st.port, ssl=True, tls_verify=False, retries=0).ping()
        assert RemoteEngine(port=st.port).ping() == "PONG"


@pytest.mark.integration
def test_client_certificates(certs):
    ctx = server_context(certs.server_cert, certs.server_key, ca=certs.ca)
    with ServerThread(ssl=ctx) as st:
        with pytest.raises(E.ConnectionError, match="client certificate"):
            RemoteEngine(port=st.port, tls_ca=certs.ca, retries=0).ping()
        c = RemoteEngine(port=st.port, tls_ca=certs.ca, tls_cert=certs.client_cert,
                         tls_key=certs.client_key)
        assert c.put(key("1.1.1/1.1.1/1.1.1"), "mutual") == 1

        async def aio():
            async with AsyncRemoteEngine(port=st.port, tls_ca=certs.ca,
                                         tls_cert=certs.client_cert,
                                         tls_key=certs.client_key) as a:
                return (await a.get(key("1.1.1/1.1.1/1.1.1"))).content

        assert asyncio.run(aio()) == "mutual"
        c.close()


# -- the command line ----------------------------------------------------------------------


@pytest.mark.integration
def test_vtpu_serve_tls_options(certs, tmp_path):
    args = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    with ServeProcess(args, str(tmp_path)) as srv:
        assert "over TLS" in srv.log()
        c = vtpu.connect(f"vtpus://127.0.0.1:{srv.port}?tls_ca={certs.ca}")
        assert c.cput("1.1.1/1.1.1/1.1.1", "cli") == 1 and c.cget("1.1.1/1.1.1/1.1.1")
        c.close()
        assert srv.stop() == 0
    bad = ServeProcess(["--tls-cert", certs.server_cert, "--tls-key", certs.ca],
                       str(tmp_path))
    with pytest.raises(Exception) as info:
        bad.start()
    assert info.value.returncode == 2 and "cannot load TLS certificate" in info.value.log
