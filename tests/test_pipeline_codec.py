"""Pipelined GETs end to end over a real loopback server (pushes in between, errors,
short reads, large replies, msgid wrap), through the codec's GET-run encoder and reply
reader (tested on their own in ``tests/test_codec.py``); and ``_core.key_of``, which the
facade's pipelined CGET uses. No timing assertions.
"""
import os
import socket
import sys

import numpy as np
import pytest

import vtpu
from vtpu import _core
from vtpu import errors as E
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.session import ClientOps
from vtpu.testing import ServerThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import ShortReadSocket  # noqa: E402

MIXED = [
    b"v" * 32, "héllo", 3, -5, 2.5, None, True, [1, "a"], {"x": b"y"},
    np.arange(3, dtype=np.float32), "x" * 40, "y" * 300, b"z" * 70000, 1 << 63, "",
    b"", 0,
]


def keys_of(n, first=1):
    arr = np.zeros((n, 9), dtype=np.uint16)
    arr[:, 0] = 7
    arr[:, 8] = np.arange(first, first + n)
    return [_core.pack(r) for r in arr]


def same_scroll(a, b):
    if a is None or b is None:
        return a is None and b is None
    ca, cb = a.content, b.content
    if isinstance(ca, np.ndarray):
        ok = isinstance(cb, np.ndarray) and ca.dtype == cb.dtype and np.array_equal(ca, cb)
    else:
        ok = type(ca) is type(cb) and ca == cb
    return ok and (a.key, a.version, a.created_at, a.updated_at) == (
        b.key, b.version, b.created_at, b.updated_at)


# -- key_of ------------------------------------------------------------------------------------


def test_key_of_matches_pack():
    arr = np.arange(90, dtype=np.uint16).reshape(10, 9) * 700
    for r in arr:
        assert _core.key_of(r) == _core.pack(r)
    col = np.arange(90, dtype=np.uint16).reshape(9, 10)[:, 3]  # strided view
    assert _core.key_of(col) == _core.pack(np.ascontiguousarray(col))
    assert _core.key_of(np.full(9, 0xFFFF, np.uint16)) == b"\xff" * 18


@pytest.mark.parametrize("other", [
    "1.2.3/4.5.6/7.8.9", b"x" * 18, [1] * 9, None, np.zeros(8, np.uint16),
    np.zeros(9, np.int64), np.zeros((1, 9), np.uint16), np.zeros(9, ">u2"),
])
def test_key_of_declines_other_inputs(other):
    assert _core.key_of(other) is None


# -- pipelines end to end -------------------------------------------------------------------


@pytest.fixture
def server():
    with ServerThread(Engine()) as st:
        yield st


@pytest.fixture
def remote(server):
    r = RemoteEngine(port=server.port, timeout=20, connect_timeout=10)
    yield r
    r.close()


def generic_get(r, k):
    # The generic request path (an exchange of one call), not the lean GET override.
    return ClientOps.get(r, k)


@pytest.mark.integration
def test_pipelined_gets_equal_single_gets(remote):
    ks = keys_of(len(MIXED))
    remote.put_many(b"".join(ks), MIXED)
    ks = ks + keys_of(3, first=500)
    order = ks * 20  # 1000+ replies, more than one receive buffer (a 70 kB content too)
    with remote.pipeline() as p:
        for k in order:
            p.get(k)
    want = {k: generic_get(remote, k) for k in ks}
    assert len(p.results) == len(order)
    assert all(same_scroll(s, want[k]) for s, k in zip(p.results, order))


@pytest.mark.integration
def test_mixed_pipeline_with_errors_in_between(remote):
    ks = keys_of(4)
    remote.put(ks[0], "a")
    p = remote.pipeline(raise_on_error=False)
    p.get(ks[0])
    p.put(ks[1], "b", if_version=5)  # conflict
    p.get(ks[0])
    p.get(ks[1])
    p.put(ks[2], "c")
    p.count(np.array([[0] * 9, [0xFFFF] * 9], np.uint16))
    p.get(ks[2])
    p.get_many(b"".join(ks[:3]), content_only=True)
    res = p.execute()
    assert res[0].content == "a" and isinstance(res[1], E.VersionConflict)
    assert res[2].content == "a" and res[3] is None and res[4] == 1 and res[5] == 2
    assert res[6].content == "c" and res[7] == ["a", None, "c"]
    p = remote.pipeline()
    p.get(ks[0])
    p.put(ks[0], "x", if_version=9)
    p.get(ks[0])
    with pytest.raises(E.VersionConflict):
        p.execute()
    assert p.results[0].content == "a" and p.results[2].content == "a"


@pytest.mark.integration
def test_pushes_between_pipelined_replies(server):
    seen = []
    r = RemoteEngine(port=server.port, timeout=20, track=True)
    w = RemoteEngine(port=server.port, timeout=20)
    try:
        r.on_push = lambda kind, payload: seen.append((kind, payload))
        ks = keys_of(50)
        r.put_many(b"".join(ks), [f"v{i}" for i in range(50)])
        assert r.ping() == "PONG"
        for i in range(3):
            w.put(ks[i], "changed")  # each write pushes an invalidation to r
        assert w.ping() == "PONG"
        with r.pipeline() as p:
            for k in ks:
                p.get(k)
        assert [s.content for s in p.results] == ["changed"] * 3 + [f"v{i}" for i in range(3, 50)]
        assert len(seen) >= 1 and all(kind == "invalidate" for kind, _ in seen)
    finally:
        r.close()
        w.close()


@pytest.mark.integration
def test_pipelined_gets_with_short_reads(server):
    r = RemoteEngine(port=server.port, timeout=20, socket_factory=lambda a, t: ShortReadSocket(
        socket.create_connection(a, timeout=t), most=7))
    try:
        ks = keys_of(40)
        r.put_many(b"".join(ks), [("s" * i) for i in range(40)])
        with r.pipeline() as p:
            for k in ks:
                p.get(k)
            p.get(keys_of(1, first=999)[0])
        assert [s.content for s in p.results[:-1]] == ["s" * i for i in range(40)]
        assert p.results[-1] is None
    finally:
        r.close()


@pytest.mark.integration
def test_pipelined_gets_across_the_msgid_wrap(remote):
    ks = keys_of(10)
    remote.put_many(b"".join(ks), list(range(10)))
    remote.session.msgid = 0xFFFFFFFF - 4
    with remote.pipeline() as p:
        for k in ks:
            p.get(k)
    assert [s.content for s in p.results] == list(range(10))
    assert remote.session.msgid == 10  # no wrap inside one write: ids 1 .. 10
    assert generic_get(remote, ks[3]).content == 3


@pytest.mark.integration
def test_pipeline_batch_mode_still_works(remote):
    ks = keys_of(3)
    remote.put(ks[0], "a")
    p = remote.pipeline(batch=True)
    for k in ks:
        p.get(k)
    assert [None if s is None else s.content for s in p.execute()] == ["a", None, None]


@pytest.mark.integration
def test_pipeline_reply_over_the_client_limit(server):
    r = RemoteEngine(port=server.port, timeout=20, max_frame_size=4096)
    try:
        k1, k2 = keys_of(2)
        r.put(k1, "small")
        w = RemoteEngine(port=server.port, timeout=20)
        w.put(k2, b"x" * 5000)  # its GET reply is larger than the client's frames
        w.close()
        p = r.pipeline(raise_on_error=False)
        p.get(k1)
        p.get(k2)
        p.get(k1)
        res = p.execute()
        assert res[0].content == "small" and isinstance(res[1], E.LimitError)
        assert res[2].content == "small"
    finally:
        r.close()


@pytest.mark.integration
def test_facade_pipeline_cget_forms(server):
    c = vtpu.connect(f"vtpu://127.0.0.1:{server.port}", timeout=20)
    m = vtpu.connect("mem://")
    try:
        for cl in (c, m):
            cl.cput("1.2.3/4.5.6/7.8.9", "x")
            arr = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9]], dtype=np.uint16)
            with cl.pipeline() as p:
                p.cget("1.2.3/4.5.6/7.8.9")
                p.cget(arr[0])
                p.cget(_core.pack(arr[0]))
                p.cget([1, 2, 3, 4, 5, 6, 7, 8, 9])
                p.cget(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9]))  # int64 row
                p.cget("9.9.9/9.9.9/9.9.9")
            assert [s.content for s in p.results[:5]] == ["x"] * 5 and p.results[5] is None
            with pytest.raises(ValueError):
                with cl.pipeline() as p:
                    p.cget("1.2.3")
            assert cl.cget(arr[0]).content == "x"
            assert cl.cget(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])).content == "x"
            with pytest.raises(ValueError):
                cl.cget(np.array([1, 2, 3], np.uint16))
    finally:
        c.close()
        m.close()


@pytest.mark.integration
def test_get_runs_keep_their_place_among_other_calls(remote):
    """GETs queued before any other call travel as one run of keys; the ones after a
    PUT as entries: either way each result is in its call's place."""
    ks = keys_of(6)
    remote.put_many(b"".join(ks[:3]), ["a", "b", "c"])
    p = remote.pipeline()
    p.get_each(ks[:2])
    p.get(ks[2])
    assert len(p) == 3
    p.put(ks[3], "d")
    p.get_each([ks[3], ks[4]])
    p.get(ks[0])
    assert len(p) == 7
    res = p.execute()
    assert [r.content if isinstance(r, vtpu.Scroll) else r for r in res] == \
        ["a", "b", "c", 1, "d", None, "a"]
    assert len(p) == 0
    # the pipeline is empty again: a second run alone
    p.get_each(ks[:3])
    assert [r.content for r in p.execute()] == ["a", "b", "c"]


@pytest.mark.integration
def test_a_run_of_gets_is_retried_on_a_restarted_server():
    eng = Engine()
    st = ServerThread(eng).start()
    port = st.port
    r = RemoteEngine(port=port, retry_backoff=0.01, timeout=20)
    ks = keys_of(50)
    r.put_many(b"".join(ks), [f"v{i}" for i in range(50)])
    st.stop()
    st = ServerThread(eng, port=port).start()
    try:
        p = r.pipeline()
        p.get_each(ks)
        # the stale socket fails the first attempt; GETs alone are idempotent: re-sent
        assert [s.content for s in p.execute()] == [f"v{i}" for i in range(50)]
    finally:
        r.close()
        st.stop()
