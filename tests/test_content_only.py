"""The values-only batched read: ``cget_many(coords, content_only=True)``.

Runs against mem:// and a real loopback server (the ``client`` fixture), plus the wire
pieces behind it: ``GET_MANY [keys, true]`` on the server, its compiled encoder, the
pipeline and asyncio clients. No timing assertions.
"""
import asyncio

import numpy as np
import pytest

import vtpu
from vtpu import InterfaceError, _core
from vtpu import protocol as P
from vtpu.coords import Scroll
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.testing import ServerThread

MIXED = [
    b"v" * 32, "héllo", 3, -5, 2.5, None, True, [1, "a"], {"x": b"y"},
    np.arange(3, dtype=np.float32), "x" * 40, "y" * 300, b"z" * 70000, 1 << 63, "",
    b"", 0, np.arange(6, dtype=">i4").reshape(2, 3),
]


def coords_of(n, last=1):
    return [f"2.2.2/3.3.3/{last}.{i // 100}.{i % 100}" for i in range(n)]


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


def test_content_only_returns_contents_in_order(client):
    cs = coords_of(len(MIXED))
    client.cput_many(cs, MIXED)
    missing = "9.9.9/9.9.9/9.9.9"
    got = client.cget_many([missing] + cs + [missing], content_only=True)
    assert type(got) is list and len(got) == len(MIXED) + 2
    assert got[0] is None and got[-1] is None
    for want, have in zip(MIXED, got[1:-1]):
        assert same(want, have), (want, have)
    # the same contents as the full scrolls
    full = client.cget_many(cs)
    assert all(same(s.content, v) for s, v in zip(full, got[1:-1]))


def test_content_only_accepts_every_coordinate_form(client):
    cs = coords_of(5)
    client.cput_many(cs, [f"v{i}" for i in range(5)])
    arr = np.stack([_core.parse_coord(c) for c in cs])
    want = [f"v{i}" for i in range(5)]
    assert client.cget_many(arr, content_only=True) == want
    assert client.cget_many(_core.pack_many(arr), content_only=True) == want
    assert client.cget_many(list(arr), content_only=True) == want
    assert client.cget_many([], content_only=True) == []
    assert client.cget_many(np.empty((0, 9), np.uint16), content_only=True) == []


def test_content_only_repeated_and_updated_keys(client):
    c = "1.2.3/4.5.6/7.8.9"
    client.cput(c, "one")
    client.cput(c, "two")
    assert client.cget_many([c, c, c], content_only=True) == ["two"] * 3
    client.cdel(c)
    assert client.cget_many([c], content_only=True) == [None]


def test_content_only_numpy_contents_are_not_stacked(client):
    cs = coords_of(4)
    vecs = [np.arange(8, dtype=np.float32) + i for i in range(4)]
    client.cput_many(cs, vecs)
    got = client.cget_many(cs, content_only=True)
    assert type(got) is list and len(got) == 4
    for v, g in zip(vecs, got):
        assert g.dtype == np.float32 and np.array_equal(v, g)
    # the full form may stack them; both read the same
    assert all(np.array_equal(s.content, g) for s, g in zip(client.cget_many(cs), got))


def test_content_only_names(client):
    client.cput("alpha.1.1/1.1.1/1.1.1", "named")
    assert client.cget_many(["alpha.1.1/1.1.1/1.1.1", "alpha.1.1/1.1.1/1.1.2"],
                            content_only=True) == ["named", None]


def test_content_only_bad_coordinates(client):
    with pytest.raises(ValueError):
        client.cget_many(["1.2.3/4.5"], content_only=True)
    with pytest.raises(ValueError):
        client.cget_many(b"x" * 19, content_only=True)


def test_content_only_in_a_pipeline(client):
    cs = coords_of(3)
    client.cput_many(cs, ["a", b"b", 3])
    with client.pipeline() as p:
        p.cget_many(cs, content_only=True)
        p.cget(cs[0])
        p.cget_many(cs + ["9.9.9/9.9.9/9.9.9"], content_only=True)
    assert p.results[0] == ["a", b"b", 3]
    assert p.results[1].content == "a"
    assert p.results[2] == ["a", b"b", 3, None]


def test_content_only_default_is_unchanged(client):
    cs = coords_of(2)
    client.cput_many(cs, ["a", "b"])
    got = client.cget_many(cs)
    assert [s.coordinate for s in got] == cs and [s.content for s in got] == ["a", "b"]
    assert client.cget_many(cs, content_only=False) == got


# -- engine and server pieces ---------------------------------------------------------------


def test_engine_get_many_content_only():
    e = Engine()
    ks = _core.pack_many(_core.parse_coords(coords_of(len(MIXED))))
    e.put_many(ks, MIXED)
    miss = bytes(18)
    got = e.get_many(miss + ks, content_only=True)
    assert got[0] is None
    assert all(same(a, b) for a, b in zip(MIXED, got[1:]))
    assert all(same(s.content, v) for s, v in zip(e.get_many(ks), got[1:]))
    with pytest.raises(InterfaceError):
        e.get_many(b"x" * 20, content_only=True)


def test_content_only_reply_matches_the_generic_encoder():
    from vtpu import wire

    e = Engine()
    ks = _core.pack_many(_core.parse_coords(coords_of(len(MIXED))))
    e.put_many(ks, MIXED)
    for blob in [ks, bytes(18) + ks[:36] + bytes(18), b"", ks[18 * 5:18 * 6]]:
        contents = e.get_many(blob, content_only=True)
        scrolls = e.get_many(blob)
        expect = [None if sc is None else sc.content for sc in scrolls]
        assert len(contents) == len(expect)
        assert all(same(a, b) for a, b in zip(contents, expect))
        assert wire.encode_response(3, contents) == P.encode_frame([3, 0, contents])
    with pytest.raises(InterfaceError):
        e.get_many(b"x" * 17, content_only=True)


def test_store_contents_reads_contents_still_encoded():
    # Contents loaded from disk stay encoded in the store until read: the batched read
    # must decode them.
    k = bytes(18)
    m = _core.ColumnStore()
    m.set(k, P.packb(["stored", 1]), 1, 1.0, 1.0, packed=True)
    assert m.contents(k) == [["stored", 1]]
    m.set(k, P.packb({"a": "stored"}), 2, 1.0, 1.0, packed=True)
    assert m.contents(k + bytes([0] * 17 + [1])) == [{"a": "stored"}, None]


@pytest.fixture
def server():
    with ServerThread(Engine()) as st:
        yield st


@pytest.mark.integration
def test_wire_request_and_reply(server):
    r = RemoteEngine(port=server.port, timeout=20)
    try:
        ks = _core.pack_many(_core.parse_coords(coords_of(3)))
        r.put_many(ks, ["a", None, b"c"])
        assert r.get_many(ks + bytes(18), True) == ["a", None, b"c", None]
        assert r.get_many(ks, content_only=True) == ["a", None, b"c"]
        # the argument is a boolean; nil means the default (scrolls)
        assert r.request("GET_MANY", [ks, None])[2] == [1, 1, 1]
        with pytest.raises(InterfaceError):
            r.request("GET_MANY", [ks, 1])
        with pytest.raises(InterfaceError):
            r.request("GET_MANY", [ks, True, 3])
        # inside a BATCH the generic encoder answers the same values
        p = r.pipeline(batch=True)
        p.get_many(ks, content_only=True)
        p.get_many(ks)
        res = p.execute()
        assert res[0] == ["a", None, b"c"] and [s.content for s in res[1]] == ["a", None, b"c"]
    finally:
        r.close()


@pytest.mark.integration
def test_wire_limit_applies(server):
    r = RemoteEngine(port=server.port, timeout=20, max_frame_size=2048)
    try:
        ks = _core.pack_many(_core.parse_coords(coords_of(2)))
        r.put(ks[:18], b"x" * 1500)
        r.put(ks[18:], b"y" * 1500)
        from vtpu.errors import LimitError

        with pytest.raises(LimitError):
            r.get_many(ks, content_only=True)
        assert r.get_many(ks[:18], content_only=True) == [b"x" * 1500]
    finally:
        r.close()


@pytest.mark.integration
def test_async_client_content_only(server):
    from vtpu.aio import AsyncRemoteEngine

    async def go():
        a = AsyncRemoteEngine(port=server.port, timeout=20)
        try:
            ks = _core.pack_many(_core.parse_coords(coords_of(3)))
            await a.put_many(ks, ["a", 2, None])
            assert await a.get_many(ks + bytes(18), content_only=True) == ["a", 2, None, None]
            p = a.pipeline()
            p.get_many(ks, content_only=True)
            p.get(ks[:18])
            res = await p.execute()
            assert res[0] == ["a", 2, None] and res[1].content == "a"
        finally:
            await a.close()

    asyncio.run(asyncio.wait_for(go(), 60))


@pytest.mark.integration
def test_facade_over_a_server_thread(server):
    c = vtpu.connect(f"vtpu://127.0.0.1:{server.port}", timeout=20)
    try:
        c.cput_many(coords_of(2), ["p", "q"])
        assert c.cget_many(coords_of(2), content_only=True) == ["p", "q"]
    finally:
        c.close()


@pytest.mark.parametrize("content_only", [False, True])
def test_engine_get_many_budget_refuses_before_copying(content_only):
    # max_bytes: a read whose reply would pass the budget is refused (LimitError), one
    # that fits is the same as without a budget; contents kept as Python objects (a
    # ~50 KB list here) count too, not only the arena's bytes.
    from vtpu.errors import LimitError

    e = Engine()
    cs = _core.pack_many(_core.parse_coords(coords_of(len(MIXED) + 1)))
    e.put_many(cs[:-18], MIXED)   # the last key stays empty
    e.put(cs[:18], [b"o" * 1000] * 50)
    want = e.get_many(cs, content_only)
    reply = len(P.packb(want) if content_only else P.encode_scrolls(want))
    got = e.get_many_within(cs, content_only=content_only, max_bytes=2 * reply)
    # Values only, the result is still the column result (the server writes its
    # contents from the columns): its items' contents are the values.
    items = [None if s is None else s.content for s in got] if content_only else list(got)
    assert len(got) == len(want) and all(map(same, items, list(want)))
    for budget in (reply // 2, reply - 51000, 0):   # the last two: without the object
        with pytest.raises(LimitError):
            e.get_many_within(cs, content_only=content_only, max_bytes=budget)
    small = e.get_many_within(cs[18:], content_only=content_only, max_bytes=reply - 45000)
    assert len(small) == len(MIXED)
