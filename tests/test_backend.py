"""The backend contract and the facade's result types.

Engine and RemoteEngine implement :class:`vtpu.backend.Backend` with the same method
names and parameters; every facade method returns one type on every backend; and a
:class:`~vtpu.client.ClientPipeline` (which wraps a client) returns, call for call, what
the client itself returns.
"""
import inspect

import numpy as np
import pytest

import vtpu
from vtpu.backend import Backend, BackendPipeline
from vtpu.client import Client, ClientPipeline
from vtpu.engine import Engine
from vtpu.errors import CoordinateError, VersionConflict
from vtpu.netclient import RemoteEngine
from vtpu.coords import Scroll
from vtpu.results import Scrolls

CONTRACT = [name for name, v in vars(Backend).items()
            if callable(v) and not name.startswith("_")]


def params(fn):
    # Positional parameters must agree; a backend's extras (timeout=, batch=) are
    # keyword-only, so a positional call means the same on every backend.
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.name != "self" and p.kind is not p.KEYWORD_ONLY]


def test_the_contract_lists_every_method_the_facade_calls():
    assert set(CONTRACT) >= {"get", "put", "delete", "get_many", "put_many", "delete_many",
                             "delete_range", "range", "count", "nearest", "hier", "attend",
                             "attend_many", "kg", "intern", "name_table", "health", "stats",
                             "import_phext", "export_phext", "pipeline", "close"}


@pytest.mark.parametrize("cls", [Engine, RemoteEngine])
def test_engine_and_remote_engine_implement_the_contract(cls):
    backend = cls() if cls is Engine else cls(port=1)  # connecting is lazy
    assert isinstance(backend, Backend)
    assert isinstance(backend.pipeline(), BackendPipeline)
    assert backend.thread_safe is (cls is RemoteEngine)
    for name in CONTRACT:
        assert params(getattr(cls, name)) == params(getattr(Backend, name)), name


def seed(c):
    c.cput_many([f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 6)], [f"v{i}" for i in range(1, 6)])
    c.cput("2.1.1/1.1.1/1.1.1", np.arange(4, dtype=np.float32))
    c.cput("2.1.1/1.1.1/1.1.2", np.ones(4, dtype=np.float32))


@pytest.mark.integration  # the client fixture includes a loopback server
def test_each_range_method_returns_one_type(client):
    seed(client)
    pat = "1.1.1/1.1.1/1.1.*"
    scrolls = client.crange(pat, limit=3)
    # mem:// and file:// answer with the column result (vtpu.results.Scrolls); the
    # network client still decodes RANGE pages into a list
    assert isinstance(scrolls, (list, Scrolls)) and all(isinstance(s, Scroll) for s in scrolls)
    assert [s.content for s in scrolls] == ["v1", "v2", "v3"]
    keys = client.crange_keys(pat)
    assert isinstance(keys, np.ndarray) and keys.dtype == np.uint16 and keys.shape == (5, 9)
    assert keys[:, 8].tolist() == [1, 2, 3, 4, 5]
    assert client.format_coords(keys[:2]) == ["1.1.1/1.1.1/1.1.1", "1.1.1/1.1.1/1.1.2"]
    assert client.crange_keys(pat, limit=2, after="1.1.1/1.1.1/1.1.2")[:, 8].tolist() == [3, 4]
    assert client.crange_keys("9.*.*/*.*.*/*.*.*").shape == (0, 9)
    n = client.ccount(pat)
    assert type(n) is int and n == 5
    coords, dists = client.cnearest_arrays("1.1.1/1.1.1/1.1.3", k=3)
    assert coords[:, 8].tolist() == [3, 2, 4] and dists.tolist() == [0, 1, 1]
    assert client.cnearest("1.1.1/1.1.1/1.1.3", k=2) == [("1.1.1/1.1.1/1.1.3", 0),
                                                          ("1.1.1/1.1.1/1.1.2", 1)]


@pytest.mark.integration  # the client fixture includes a loopback server
def test_the_deprecated_flags_forward_and_say_so(client):
    seed(client)
    pat = "1.1.1/1.1.1/1.1.*"
    with pytest.deprecated_call(match="ccount"):
        assert client.crange(pat, count=True) == 5
    with pytest.deprecated_call(match="crange_keys"):
        assert client.crange(pat, keys_only=True) == client.format_coords(client.crange_keys(pat))
    with pytest.deprecated_call(match="crange_keys"):
        assert np.array_equal(client.crange(pat, keys_only=True, as_array=True),
                              client.crange_keys(pat))
    with pytest.deprecated_call(match="cnearest_arrays"):
        c, d = client.cnearest("1.1.1/1.1.1/1.1.3", k=2, as_array=True)
    assert c[:, 8].tolist() == [3, 2] and d.tolist() == [0, 1]


@pytest.mark.integration  # the client fixture includes a loopback server
def test_the_pipeline_wraps_the_client_and_returns_what_it_returns(client):
    seed(client)
    p = client.pipeline()
    assert isinstance(p, ClientPipeline) and not isinstance(p, Client) and p.client is client
    q = "2.1.1/1.1.1/1.1.1"
    calls = [
        ("cget", ("1.1.1/1.1.1/1.1.2",), {}),
        ("cget_many", (["1.1.1/1.1.1/1.1.1", "7.7.7/7.7.7/7.7.7"],), {"content_only": True}),
        ("crange", ("1.1.1/1.1.1/1.1.*",), {"limit": 2}),
        ("crange_keys", ("1.1.1/1.1.1/1.1.*",), {}),
        ("ccount", ("*.*.*/*.*.*/*.*.*",), {}),
        ("cnearest", ("1.1.1/1.1.1/1.1.3",), {"k": 2}),
        ("chier", ("1.1.1/1.1.1/1.1.3", "UP"), {}),
        ("chier", ("1.1.1/1.1.1/1.1.*", "DOWN"), {}),
        ("chier", ("1.1.1/1.1.1/1.1.3", "NEXT"), {}),
        ("cdelta", ("1.1.1/1.1.1/1.1.3", "+1.0.0/+0.0.0/+0.0.0"), {}),
        ("cattend", (), {"query_coord": q, "key_pattern": "2.1.1/1.1.1/1.1.*"}),
        ("ckg", ("1.1.1/1.1.1/1.1.1", "+0.0.0/+0.0.0/+0.0.1"), {}),
        ("croute", ("1.1.1/1.1.1/1.1.3", 16), {}),
        ("intern", (["person"],), {}),
    ]
    direct = [getattr(client, name)(*a, **kw) for name, a, kw in calls]
    for name, a, kw in calls:
        assert getattr(p, name)(*a, **kw) is p
    assert len(p) == len(calls)
    got = p.execute()
    assert got is p.results and len(got) == len(calls)
    for (name, _, _), want, have in zip(calls, direct, got):
        assert type(have) is type(want), name
        if isinstance(want, np.ndarray):
            assert np.array_equal(have, want), name
        elif name == "cattend":
            assert [r["coordinate"] for r in have] == [r["coordinate"] for r in want]
            assert np.allclose(have.weights, want.weights) and have.n == want.n == 2
        else:
            assert have == want, name


@pytest.mark.integration  # the client fixture includes a loopback server
def test_pipeline_cgets_keep_their_place_among_other_calls(client):
    """CGETs are handed to the backend in bulk, yet each result keeps its call's place:
    a read queued before a write sees the old value, one after it the new."""
    c = "3.3.3/3.3.3/3.3.3"
    p = client.pipeline()
    p.cget(c).cput(c, "a").cget(c).cget(c).croute(c, 8).cget("4.4.4/4.4.4/4.4.4")
    p.cput(c, "b").cget(c)
    got = p.execute()
    assert got[0] is None and got[1] == 1
    assert [got[i].content for i in (2, 3)] == ["a", "a"] and got[4] == client.croute(c, 8)
    assert got[5] is None and got[6] == 2
    assert (got[7].content, got[7].version, got[7].coordinate) == ("b", 2, c)
    assert len(got) == 8 == len(p.results)
    with pytest.raises(CoordinateError):
        client.pipeline().cget("1.1.1/1.1.1/1.1.1/1.1.1")   # refused when queued


@pytest.mark.integration  # the client fixture includes a loopback server
def test_pipeline_errors_come_after_every_call_ran(client):
    p = client.pipeline(raise_on_error=False)
    p.cput("1.1.1/1.1.1/1.1.1", "a")
    p.cput("1.1.1/1.1.1/1.1.1", "b", if_version=7)
    p.crange_keys("1.1.1/1.1.1/1.1.*")
    p.cget("1.1.1/1.1.1/1.1.1")
    res = p.execute()
    assert res[0] == 1 and isinstance(res[1], VersionConflict)
    assert res[2].tolist() == [[1] * 9] and res[3].content == "a"
    p = client.pipeline()
    p.cput("1.1.1/1.1.1/1.1.2", "c", if_version=3)
    p.ccount("1.1.1/1.1.1/1.1.*")
    with pytest.raises(VersionConflict):
        p.execute()
    assert p.results[1] == 1
    with pytest.raises(CoordinateError):
        p.cget("1.2.3/4.5")  # bad input raises when queued; nothing is queued
    assert len(p) == 0


def test_facade_over_an_engine_pipeline_of_every_method():
    e = Engine()
    c = vtpu.client.Client(e, "mem://")
    seed(c)
    pipe = e.pipeline(raise_on_error=False)
    key = vtpu._core.pack(vtpu._core.parse_coord("1.1.1/1.1.1/1.1.1"))
    pipe.get(key).put(key, "x", 9).count(np.array([[0] * 9, [0xFFFF] * 9], np.uint16))
    res = pipe.execute()
    assert res[0].content == "v1" and isinstance(res[1], VersionConflict) and res[2] == 7
    with pytest.raises(AttributeError):
        pipe.close  # not a queueable call
