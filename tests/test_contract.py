"""One backend contract, run unchanged against the three engines.

:class:`BackendContract` holds the test bodies. They call the engine methods
(``get``, ``put``, ``range``, ``attend``, ...) on the ``eng`` fixture, with packed
arguments (18-byte keys, N*18-byte blobs, ``(2, 9)`` uint16 patterns, int32 deltas),
and assert known values. Each subclass supplies ``eng``:

* :class:`TestEmbeddedEngine`: :class:`vtpu.engine.Engine`, what ``mem://`` uses;
* :class:`TestRemoteEngine`: :class:`vtpu.netclient.RemoteEngine` against a real
  loopback server;
* :class:`TestAsyncRemoteEngine`: :class:`vtpu.aio.AsyncRemoteEngine` against a real
  loopback server, through :class:`SyncAdapter`, which runs each coroutine on a private
  event loop so the same bodies call it synchronously.

The servers answer RANGE in pages of :data:`PAGE` so that paging is exercised even on
small stores: a backend must return whole results whatever the server's page size.

:class:`FacadeContract` does the same for the facade (``cget``, ``crange``, ...) over
``vtpu.connect("mem://")`` and ``vtpu.connect("vtpu://...")``.

A place where the backends disagree is a defect: the test states the contract, and
:func:`disagree` marks it a strict ``xfail`` on the backends that break it, with a
reason saying exactly how they differ. When a fix lands the xfail turns into an XPASS
failure, and the mark is removed.
"""
from __future__ import annotations

import asyncio
import inspect
import math

import numpy as np
import pytest

import vtpu
from vtpu import _core
from vtpu import errors as E
from vtpu.aio import AsyncRemoteEngine
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.phext import format_phext
from vtpu.results import Scrolls
from vtpu.testing import ServerThread

PAGE = 4          # the servers' RANGE page size
CALL_TIMEOUT = 30.0
ALL = _core.parse_pattern("*.*.*/*.*.*/*.*.*")


def key(text: str) -> bytes:
    """The 18-byte key of a numeric coordinate."""
    return _core.pack(_core.parse_coord(text))


def keys(texts) -> bytes:
    """An N*18-byte blob of numeric coordinates."""
    return _core.pack_many(_core.parse_coords(list(texts)))


def pat(text: str) -> np.ndarray:
    """A ``(2, 9)`` uint16 pattern."""
    return _core.parse_pattern(text)


def delta(text: str) -> np.ndarray:
    """A ``(2, 9)`` int32 delta."""
    return _core.parse_delta(text)


def coord(text: str) -> np.ndarray:
    """A ``(9,)`` uint16 coordinate."""
    return _core.parse_coord(text)


def texts(arr) -> list[str]:
    """Coordinates of an ``(M, 9)`` array as text."""
    return _core.format_coords(np.ascontiguousarray(arr, dtype=np.uint16))


def coords_of(scrolls) -> list[str]:
    return [_core.format_coord(_core.unpack(s.key)) for s in scrolls]


def grid(n: int = 3) -> list[str]:
    """``n**3`` coordinates ``a.1.1/b.1.1/1.1.c`` in coordinate order."""
    return [f"{a}.1.1/{b}.1.1/1.1.{c}" for a in range(1, n + 1) for b in range(1, n + 1)
            for c in range(1, n + 1)]


class SyncAdapter:
    """An :class:`AsyncRemoteEngine` whose methods run to completion when called.

    Every attribute of the wrapped engine is passed through; a call whose result is
    awaitable is run on this adapter's own event loop (bounded by ``timeout``) and its
    result returned, so synchronous test bodies can drive the asyncio client.
    """

    def __init__(self, engine: AsyncRemoteEngine, timeout: float = CALL_TIMEOUT):
        self._engine = engine
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        #: what the loop's exception handler was given (unretrieved future errors...)
        self.loop_errors: list = []
        self._loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))

    def _run(self, aw):
        return self._loop.run_until_complete(asyncio.wait_for(aw, self._timeout))

    def __getattr__(self, name: str):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def call(*args, **kw):
            res = attr(*args, **kw)
            return self._run(res) if inspect.isawaitable(res) else res

        return call

    def close(self) -> None:
        """Close the connection and the private loop (a second call does nothing)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._engine.close())
        finally:
            self._loop.close()


EMBEDDED = ("embedded",)
NETWORK = ("remote", "async")
EVERY = EMBEDDED + NETWORK


def disagree(backends: tuple, reason: str):
    """Mark a contract test as a known defect on ``backends`` (a strict xfail there).

    :param backends: the backends that break the contract (``"embedded"``, ``"remote"``,
        ``"async"``); the test must pass on the others.
    :param reason: how the backends differ today, exactly.
    """

    def deco(fn):
        fn.disagreement = (tuple(backends), reason)
        return fn

    return deco


class _Contract:
    """A contract suite: its ``backend`` name, and its tests marked with a known
    disagreement for that backend expected to fail (strictly)."""

    backend = "abstract"

    @pytest.fixture(autouse=True)
    def _known_disagreements(self, request):
        known = getattr(request.function, "disagreement", None)
        if known is not None and self.backend in known[0]:
            request.applymarker(pytest.mark.xfail(strict=True, reason=known[1]))


class BackendContract(_Contract):
    """The contract of the engine methods; subclasses provide the ``eng`` fixture."""

    # -- get / put / delete ---------------------------------------------------------------

    def test_get_missing_is_none(self, eng):
        assert eng.get(key("1.1.1/1.1.1/1.1.1")) is None

    @pytest.mark.parametrize("content", [
        "text", "", "ünïcödé\r\n", b"\x00\xffbytes", 0, -(1 << 63), (1 << 64) - 1, 2.5, True,
        None, [1, "two", [3.0, None]], {"a": 1, "b": {"c": [b"x"]}},
    ], ids=repr)
    def test_put_get_round_trip(self, eng, content):
        k = key("1.2.3/4.5.6/7.8.9")
        assert eng.put(k, content) == 1
        s = eng.get(k)
        assert s.key == k and s.version == 1
        assert s.content == content and type(s.content) is type(content)
        assert s.created_at == s.updated_at > 0

    @pytest.mark.parametrize("arr", [
        np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2], dtype=np.int64),
        np.zeros((2, 0), dtype=np.uint8), np.array(7.5), np.arange(4, dtype=">i4"),
    ], ids=lambda a: f"{a.dtype.str}{a.shape}")
    def test_array_content_keeps_dtype_and_shape(self, eng, arr):
        k = key("9.9.9/9.9.9/9.9.9")
        eng.put(k, arr)
        got = eng.get(k).content
        assert type(got) is np.ndarray and got.dtype == arr.dtype and got.shape == arr.shape
        assert np.array_equal(got, arr)

    def test_overwrite_bumps_version_and_keeps_created(self, eng):
        k = key("1.1.1/1.1.1/1.1.2")
        assert [eng.put(k, f"v{i}") for i in range(3)] == [1, 2, 3]
        s = eng.get(k)
        assert s.content == "v2" and s.version == 3 and s.updated_at >= s.created_at

    def test_compare_and_set(self, eng):
        k = key("1.1.1/1.1.1/1.1.3")
        with pytest.raises(E.VersionConflict):
            eng.put(k, "absent", if_version=1)
        assert eng.get(k) is None
        assert eng.put(k, "first", if_version=0) == 1
        with pytest.raises(E.VersionConflict):
            eng.put(k, "again", if_version=0)
        assert eng.put(k, "second", if_version=1) == 2
        with pytest.raises(E.VersionConflict):
            eng.put(k, "stale", if_version=1)
        s = eng.get(k)
        assert (s.content, s.version) == ("second", 2)

    def test_delete(self, eng):
        k = key("1.1.1/1.1.1/1.1.4")
        eng.put(k, "x")
        assert eng.delete(k) == 1
        assert eng.delete(k) == 0
        assert eng.get(k) is None
        assert eng.put(k, "back") == 1   # a deleted key starts again at version 1

    def test_unstorable_content_is_refused_and_nothing_stored(self, eng):
        k = key("1.1.1/1.1.1/1.1.5")
        for bad in (object(), {1, 2}, np.array([object()]), 1 << 64, -(1 << 63) - 1,
                    [1, object()], {"a": {2, 3}}):
            with pytest.raises(E.InterfaceError):
                eng.put(k, bad)
        assert eng.get(k) is None
        assert eng.count(ALL) == 0

    @pytest.mark.parametrize("bad", [b"", b"x" * 17, b"x" * 19], ids=len)
    def test_bad_key_size_on_put(self, eng, bad):
        with pytest.raises(E.InterfaceError):
            eng.put(bad, "x")
        assert eng.count(ALL) == 0

    @pytest.mark.parametrize("bad", [b"", b"x" * 17, b"x" * 19], ids=len)
    def test_bad_key_size_on_get(self, eng, bad):
        with pytest.raises(E.InterfaceError):
            eng.get(bad)

    @pytest.mark.parametrize("bad", [b"", b"x" * 17, b"x" * 19], ids=len)
    def test_bad_key_size_on_delete(self, eng, bad):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "keep")
        with pytest.raises(E.InterfaceError):
            eng.delete(bad)
        assert eng.count(ALL) == 1

    # -- many keys ------------------------------------------------------------------------

    def test_put_many_get_many(self, eng):
        cs = grid(2)
        assert eng.put_many(keys(cs), [f"c{i}" for i in range(len(cs))]) == [1] * len(cs)
        got = eng.get_many(keys(cs[:3] + ["9.9.9/9.9.9/9.9.9"]))
        assert len(got) == 4 and got[3] is None
        assert [(s.key, s.content, s.version) for s in got[:3]] == [
            (key(c), f"c{i}", 1) for i, c in enumerate(cs[:3])]
        assert eng.put_many(keys(cs[:2]), ["again", "twice"]) == [2, 2]
        assert eng.get(key(cs[1])).content == "twice"

    def test_get_many_content_only(self, eng):
        eng.put_many(keys(grid(1)), ["only"])
        blob = keys(grid(1) + ["2.2.2/2.2.2/2.2.2"] + grid(1))
        assert eng.get_many(blob, content_only=True) == ["only", None, "only"]

    def test_many_on_empty_blob(self, eng):
        assert list(eng.get_many(b"")) == []
        assert eng.get_many(b"", content_only=True) == []
        assert eng.put_many(b"", []) == []
        assert eng.delete_many(b"") == 0

    def test_put_many_array_contents_are_rows(self, eng):
        cs = grid(2)[:3]
        rows = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert eng.put_many(keys(cs), rows) == [1, 1, 1]
        for i, c in enumerate(cs):
            got = eng.get(key(c)).content
            assert got.dtype == np.float32 and got.tolist() == rows[i].tolist()
        assert eng.put_many(keys(cs), np.array([7, 8, 9])) == [2, 2, 2]
        assert [eng.get(key(c)).content for c in cs] == [7, 8, 9]

    def test_put_many_contents_not_a_sequence(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.put_many(keys(grid(1)), 5)
        assert eng.count(ALL) == 0

    def test_put_many_length_mismatch_writes_nothing(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.put_many(keys(grid(2)[:3]), ["a", "b"])
        with pytest.raises(E.InterfaceError):
            eng.put_many(keys(grid(2)[:3]), np.zeros((2, 4)))
        assert eng.count(ALL) == 0

    @pytest.mark.parametrize("n", [1, 17, 19])
    def test_bad_blob_size(self, eng, n):
        with pytest.raises(E.InterfaceError):
            eng.get_many(b"x" * n)
        with pytest.raises(E.InterfaceError):
            eng.put_many(b"x" * n, ["a"])

    @pytest.mark.parametrize("n", [1, 17, 19])
    def test_bad_blob_size_on_delete_many(self, eng, n):
        with pytest.raises(E.InterfaceError):
            eng.delete_many(b"x" * n)

    def test_delete_many_counts_what_existed(self, eng):
        cs = grid(2)
        eng.put_many(keys(cs), cs)
        assert eng.delete_many(keys(cs[:3] + ["9.9.9/9.9.9/9.9.9"])) == 3
        assert eng.delete_many(keys(cs[:3])) == 0
        assert coords_of(eng.range(ALL)) == cs[3:]

    # -- range / count / delete_range -----------------------------------------------------

    def test_range_in_coordinate_order(self, eng):
        cs = grid(3)
        eng.put_many(keys(cs[::-1]), cs[::-1])   # written backwards
        p = pat("[2:4].*.*/*.*.*/*.*.[:3]")
        exp = [c for c in cs if c[0] in "23" and c[-1] in "12"]
        got = eng.range(p)
        assert coords_of(got) == exp and [s.content for s in got] == exp
        assert eng.count(p) == len(exp) == 12
        arr = eng.range(p, keys_only=True)
        assert type(arr) is np.ndarray and arr.dtype == np.uint16 and arr.shape == (12, 9)
        assert texts(arr) == exp

    def test_range_returns_every_page(self, eng):
        cs = grid(3)                      # 27 scrolls, several server pages
        eng.put_many(keys(cs), cs)
        assert coords_of(eng.range(ALL)) == cs
        assert texts(eng.range(ALL, keys_only=True)) == cs
        assert eng.count(ALL) == 27

    def test_range_limit_and_after(self, eng):
        cs = grid(3)
        eng.put_many(keys(cs), cs)
        assert coords_of(eng.range(ALL, limit=10)) == cs[:10]
        assert texts(eng.range(ALL, limit=10, keys_only=True)) == cs[:10]
        pages, after = [], None
        for _ in range(20):
            page = eng.range(ALL, limit=5, after=after)
            pages += coords_of(page)
            if len(page) < 5:
                break
            after = page[-1].key
        assert pages == cs
        # `after` need not be stored: it is an exclusive lower bound
        assert coords_of(eng.range(ALL, limit=2, after=key("1.1.1/2.1.1/1.1.2"))) == \
            ["1.1.1/2.1.1/1.1.3", "1.1.1/3.1.1/1.1.1"]
        assert eng.range(ALL, after=key(cs[-1])) == []
        assert eng.range(ALL, limit=0) == []
        assert eng.range(ALL, limit=0, keys_only=True).shape == (0, 9)

    def test_range_on_empty_store(self, eng):
        assert eng.range(ALL) == []
        empty = eng.range(ALL, keys_only=True)
        assert empty.shape == (0, 9) and empty.dtype == np.uint16
        assert eng.count(ALL) == 0

    def test_range_negative_limit(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.range(ALL, limit=-1)

    @staticmethod
    def _refuses_pattern(eng, bad):
        for method in (eng.range, eng.count, eng.delete_range):
            with pytest.raises(E.InterfaceError):
                method(bad)
        with pytest.raises(E.InterfaceError):
            eng.nearest(np.zeros(9, np.uint16), 3, "l1", bad)

    @pytest.mark.parametrize("bad", [np.zeros((3, 9), np.uint16), np.zeros((2, 8), np.uint16),
                                     np.zeros(18, np.uint16)], ids=["3x9", "2x8", "flat18"])
    def test_bad_pattern_shape(self, eng, bad):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "keep")
        self._refuses_pattern(eng, bad)
        assert eng.count(ALL) == 1

    @pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64])
    def test_bad_pattern_dtype(self, eng, dtype):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "keep")
        self._refuses_pattern(eng, ALL.astype(dtype))
        assert eng.count(ALL) == 1

    def test_bad_pattern_shape_on_empty_store(self, eng):
        self._refuses_pattern(eng, np.zeros((3, 9), np.uint16))

    @pytest.mark.parametrize("stored", [1, 8])
    def test_range_float_limit(self, eng, stored):
        eng.put_many(keys(grid(2)[:stored]), ["x"] * stored)
        with pytest.raises(E.InterfaceError):
            eng.range(ALL, limit=2.5)

    def test_range_bad_after(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.range(ALL, after=b"x" * 17)

    def test_inverted_pattern_matches_nothing(self, eng):
        eng.put_many(keys(grid(2)), grid(2))
        p = pat("*.*.*/*.*.*/*.*.*")
        p[0, 0], p[1, 0] = 2, 1       # lo > hi
        assert eng.range(p) == [] and eng.count(p) == 0 and eng.delete_range(p) == 0
        assert eng.count(ALL) == 8

    def test_delete_range(self, eng):
        cs = grid(3)
        eng.put_many(keys(cs), cs)
        assert eng.delete_range(pat("2.*.*/*.*.*/*.*.*")) == 9
        assert eng.delete_range(pat("2.*.*/*.*.*/*.*.*")) == 0
        assert coords_of(eng.range(ALL)) == [c for c in cs if not c.startswith("2.")]

    # -- nearest / hier -------------------------------------------------------------------

    def _nearest_store(self, eng):
        rng = np.random.default_rng(17)
        arr = np.unique(rng.integers(0, 5, (120, 9)).astype(np.uint16), axis=0)
        eng.put_many(_core.pack_many(arr), ["n"] * len(arr))
        return arr

    @pytest.mark.parametrize("metric", ["l1", "hamming"])
    def test_nearest_known_neighbours(self, eng, metric):
        arr = self._nearest_store(eng)
        q = np.array([2, 2, 2, 2, 2, 2, 2, 2, 2], np.uint16)
        d = (np.abs(arr.astype(int) - 2).sum(1) if metric == "l1" else (arr != 2).sum(1))
        exp = sorted(zip(d.tolist(), map(tuple, arr.tolist())))[:7]
        got, dist = eng.nearest(q, 7, metric)
        assert got.dtype == np.uint16 and got.shape == (7, 9) and dist.dtype == np.int64
        assert list(zip(dist.tolist(), map(tuple, got.tolist()))) == exp

    def test_nearest_within_k0_and_k_beyond_size(self, eng):
        arr = self._nearest_store(eng)
        q = np.zeros(9, np.uint16)
        got, dist = eng.nearest(q, 1000)
        assert len(got) == len(arr) and dist.tolist() == sorted(arr.astype(int).sum(1).tolist())
        got, dist = eng.nearest(q, 5, "l1", pat("4.*.*/*.*.*/*.*.*"))
        sel = arr[arr[:, 0] == 4]
        assert got[:, 0].tolist() == [4] * 5
        assert dist.tolist() == sorted(sel.astype(int).sum(1).tolist())[:5]
        got, dist = eng.nearest(q, 0)
        assert got.shape == (0, 9) and dist.shape == (0,)

    def test_nearest_on_empty_store(self, eng):
        got, dist = eng.nearest(np.zeros(9, np.uint16), 3)
        assert got.shape == (0, 9) and dist.tolist() == []

    def test_nearest_bad_arguments(self, eng):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "x")
        q = np.zeros(9, np.uint16)
        with pytest.raises(E.InterfaceError):
            eng.nearest(q, -1)
        with pytest.raises(E.InterfaceError):
            eng.nearest(q, 3, "euclid")
        with pytest.raises(E.InterfaceError):
            eng.nearest(np.zeros(8, np.uint16), 3)

    def test_nearest_bad_metric_on_empty_store(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.nearest(np.zeros(9, np.uint16), 3, "euclid")

    def test_nearest_float_k(self, eng):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "x")
        with pytest.raises(E.InterfaceError):
            eng.nearest(np.zeros(9, np.uint16), 2.5)

    def test_nearest_takes_a_coordinate_array(self, eng):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "x")
        with pytest.raises(E.InterfaceError):
            eng.nearest(key("1.1.1/1.1.1/1.1.1"), 1)

    def test_hier_next_prev(self, eng):
        cs = grid(2)
        eng.put_many(keys(cs), cs)
        nxt = eng.hier(coord(cs[0]), "NEXT")
        assert type(nxt) is np.ndarray and nxt.dtype == np.uint16 and nxt.shape == (9,)
        assert _core.format_coord(nxt) == cs[1]
        assert _core.format_coord(eng.hier(coord(cs[3]), "PREV")) == cs[2]
        assert eng.hier(coord(cs[-1]), "NEXT") is None
        assert eng.hier(coord(cs[0]), "PREV") is None
        # from a coordinate that is not stored
        assert _core.format_coord(eng.hier(coord("1.1.1/1.1.1/1.1.0"), "NEXT")) == cs[0]

    def test_hier_bad_arguments(self, eng):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "x")
        for direction in ("SIDEWAYS", "UP", "DOWN", ""):
            with pytest.raises(E.InterfaceError):
                eng.hier(coord("1.1.1/1.1.1/1.1.1"), direction)
        with pytest.raises(E.InterfaceError):
            eng.hier(np.zeros(8, np.uint16), "NEXT")

    def test_hier_direction_is_exact(self, eng):
        eng.put_many(keys(grid(1) + ["2.1.1/1.1.1/1.1.1"]), ["a", "b"])
        with pytest.raises(E.InterfaceError):
            eng.hier(coord(grid(1)[0]), "next")

    # -- attend / attend_many -------------------------------------------------------------

    def _kv_store(self, eng, n=12, d=6, seed=3):
        rng = np.random.default_rng(seed)
        K, V = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        eng.put_many(keys([f"3.8.{i}/1.0.0/1.1.1" for i in range(n)]), K)
        eng.put_many(keys([f"3.8.{i}/2.0.0/1.1.1" for i in range(n)]), V)
        eng.put(key("3.9.0/1.0.0/1.1.1"), rng.normal(size=d))   # outside the pattern
        return K, V, rng.normal(size=d)

    def test_attend_dot_with_values(self, eng):
        K, V, q = self._kv_store(eng)
        eng.put(key("3.8.512/9.0.0/1.1.1"), q)
        res = eng.attend(key("3.8.512/9.0.0/1.1.1"), pat("3.8.*/1.0.0/1.1.1"), top_k=4,
                         values=delta("+0.0.0/=2.0.0/+0.0.0"))
        scores = K @ q / math.sqrt(len(q))
        w = np.exp(scores - scores.max())
        w /= w.sum()
        top = np.argsort(-scores)[:4]
        assert res["n"] == 12 and res["mode"] == "dot"
        assert texts(res["keys"]) == [f"3.8.{i}/1.0.0/1.1.1" for i in top]
        np.testing.assert_allclose(np.asarray(res["scores"]), scores[top], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(res["weights"]), w[top], rtol=1e-12)
        assert np.array_equal(res["contents"][0], K[top[0]])
        np.testing.assert_allclose(res["output"], w @ V, rtol=1e-9, atol=1e-12)

    def test_attend_vector_query_and_value_pattern(self, eng):
        K, V, q = self._kv_store(eng)
        res = eng.attend(q, pat("3.8.*/1.0.0/1.1.1"), values=pat("3.8.*/2.0.0/1.1.1"))
        w = np.exp(K @ q / math.sqrt(len(q)))
        w /= w.sum()
        assert res["n"] == 12 and len(res["keys"]) == 12
        np.testing.assert_allclose(res["output"], w @ V, rtol=1e-9, atol=1e-12)
        res = eng.attend(q, pat("3.8.*/1.0.0/1.1.1"), values=pat("3.8.*/2.0.0/1.1.1"),
                         return_output=False)
        assert res["output"] is None

    def test_attend_distance_fallback(self, eng):
        eng.put(key("3.8.1/1.0.0/1.1.1"), "a")
        eng.put(key("3.8.5/1.0.0/1.1.1"), "b")
        with pytest.raises(E.NotFoundError):   # no query scroll: only "distance" goes on
            eng.attend(key("3.8.4/1.0.0/1.1.1"), pat("3.8.*/1.0.0/1.1.1"))
        res = eng.attend(key("3.8.4/1.0.0/1.1.1"), pat("3.8.*/1.0.0/1.1.1"), mode="distance")
        assert res["mode"] == "distance" and res["n"] == 2 and res["output"] is None
        assert texts(res["keys"]) == ["3.8.5/1.0.0/1.1.1", "3.8.1/1.0.0/1.1.1"]
        np.testing.assert_allclose(np.asarray(res["scores"]), [1 / 2, 1 / 4])
        np.testing.assert_allclose(np.asarray(res["weights"]), [2 / 3, 1 / 3])
        assert res["contents"] == ["b", "a"]

    def test_attend_no_match(self, eng):
        res = eng.attend(key("3.8.4/1.0.0/1.1.1"), pat("3.8.*/1.0.0/1.1.1"), mode="distance")
        assert res["n"] == 0 and res["mode"] == "distance" and len(res["keys"]) == 0
        assert res["contents"] == [] and len(res["scores"]) == 0

    def test_attend_top_k(self, eng):
        self._kv_store(eng)
        q = np.ones(6)
        p = pat("3.8.*/1.0.0/1.1.1")
        full = eng.attend(q, p)
        assert len(eng.attend(q, p, top_k=0)["keys"]) == 0
        assert texts(eng.attend(q, p, top_k=3)["keys"]) == texts(full["keys"][:3])
        assert len(eng.attend(q, p, top_k=100)["keys"]) == 12

    def test_attend_negative_top_k(self, eng):
        self._kv_store(eng)
        with pytest.raises(E.InterfaceError):
            eng.attend(np.ones(6), pat("3.8.*/1.0.0/1.1.1"), top_k=-1)

    def test_attend_vector_query_without_vector_keys(self, eng):
        eng.put(key("3.8.1/1.0.0/1.1.1"), "text")
        with pytest.raises(E.InterfaceError):
            eng.attend(np.ones(4), pat("3.8.*/1.0.0/1.1.1"))

    def test_attend_many_windows(self, eng):
        rng = np.random.default_rng(5)
        seq, d, win = 20, 4, 3
        K, V, Q = (rng.normal(size=(seq, d)) for _ in range(3))
        eng.put_many(keys([f"1.1.1/1.1.1/1.{i}.1" for i in range(seq)]), K)
        eng.put_many(keys([f"1.1.1/1.1.1/2.{i}.1" for i in range(seq)]), V)
        kp = np.stack([pat(f"1.1.1/1.1.1/1.[{max(0, i - win)}:{min(seq, i + win + 1)}].1")
                       for i in range(seq)])
        res = eng.attend_many(Q, kp, values=delta("0.0.0/0.0.0/=2.0.0"), return_weights=True)
        for i in range(seq):
            lo, hi = max(0, i - win), min(seq, i + win + 1)
            s = K[lo:hi] @ Q[i] / math.sqrt(d)
            w = np.exp(s - s.max())
            w /= w.sum()
            np.testing.assert_allclose(res["outputs"][i], w @ V[lo:hi], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(np.asarray(res["weights"][i]), w, rtol=1e-9)
        assert res["outputs"].dtype == np.float64 and res["outputs"].shape == (seq, d)
        assert res["counts"].tolist() == [min(seq, i + win + 1) - max(0, i - win)
                                          for i in range(seq)]

    def test_attend_many_stored_queries(self, eng):
        rng = np.random.default_rng(8)
        K, Q = rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
        eng.put_many(keys([f"1.1.1/1.1.1/1.{i}.1" for i in range(5)]), K)
        eng.put_many(keys(["1.1.1/1.1.1/9.0.1", "1.1.1/1.1.1/9.1.1"]), Q)
        kp = np.stack([pat("1.1.1/1.1.1/1.*.1")] * 2)
        res = eng.attend_many(keys(["1.1.1/1.1.1/9.0.1", "1.1.1/1.1.1/9.1.1"]), kp)
        for i in range(2):
            s = K @ Q[i] / math.sqrt(3)
            w = np.exp(s - s.max())
            np.testing.assert_allclose(res["outputs"][i], (w / w.sum()) @ K, rtol=1e-9)
        assert res["counts"].tolist() == [5, 5]

    def test_attend_many_empty_and_mismatched(self, eng):
        res = eng.attend_many(np.empty((0, 3)), np.empty((0, 2, 9), np.uint16))
        assert res["outputs"].shape == (0, 3) and res["counts"].tolist() == []
        with pytest.raises(E.InterfaceError):
            eng.attend_many(np.ones((2, 3)), np.stack([ALL] * 3))

    # -- kg -------------------------------------------------------------------------------

    def _graph(self, eng):
        # people 1..4 at 5.N.1/1.1.1/1.1.1; edges at 5.N.1/2.R.1/1.1.1 point at a person:
        # R=1 spouse, R=2 friend. 1-spouse->2, 2-spouse->1 (a cycle), 1-friend->3,
        # 3-friend->4.
        for n in range(1, 5):
            eng.put(key(f"5.{n}.1/1.1.1/1.1.1"), f"p{n}")
        for a, r, b in [(1, 1, 2), (2, 1, 1), (1, 2, 3), (3, 2, 4)]:
            eng.put(key(f"5.{a}.1/2.{r}.1/1.1.1"), f"5.{b}.1/1.1.1/1.1.1")

    def test_kg_hops(self, eng):
        self._graph(eng)
        start = pat("5.1.1/1.1.1/1.1.1")
        spouse = np.stack([delta("+0.0.0/=2.=1.+0/+0.0.0")])
        friend = np.stack([delta("+0.0.0/=2.=2.+0/+0.0.0")])
        both = np.concatenate([spouse, friend])
        assert [s.content for s in eng.kg(start, spouse, 1)] == ["p2"]
        assert [s.content for s in eng.kg(start, spouse, 2)] == []    # back to 1: visited
        assert [s.content for s in eng.kg(start, friend, 2)] == ["p4"]
        assert [s.content for s in eng.kg(start, both, 1)] == ["p2", "p3"]
        assert [s.content for s in eng.kg(start, both, 0)] == ["p1"]
        res = eng.kg(pat("5.*.1/1.1.1/1.1.1"), friend, 1, max_frontier=2)
        assert [s.content for s in res] == ["p3"]   # starts p1, p2: only p1 has a friend

    def test_kg_bad_arguments(self, eng):
        start = pat("5.1.1/1.1.1/1.1.1")
        d = np.stack([delta("+0.0.0/+0.0.0/+0.0.1")])
        with pytest.raises(E.InterfaceError):
            eng.kg(start, d, -1)
        with pytest.raises(E.InterfaceError):
            eng.kg(start, d, 1, max_frontier=0)

    @pytest.mark.parametrize("bad", [np.zeros((1, 2, 9), np.float64), np.zeros((2, 9), np.int32)],
                             ids=["float64", "2d"])
    def test_kg_bad_deltas(self, eng, bad):
        self._graph(eng)
        with pytest.raises(E.InterfaceError):
            eng.kg(pat("5.1.1/1.1.1/1.1.1"), bad, 1)

    def test_kg_float_hops(self, eng):
        self._graph(eng)
        with pytest.raises(E.InterfaceError):
            eng.kg(pat("5.1.1/1.1.1/1.1.1"), np.stack([delta("+0.0.0/=2.=1.+0/+0.0.0")]), 1.5)

    # -- names ----------------------------------------------------------------------------

    def test_intern_and_name_table(self, eng):
        assert eng.name_table() == []
        assert eng.intern(["alpha", "beta"]) == [0xF000, 0xF001]
        assert eng.intern(["beta", "gamma"]) == [0xF001, 0xF002]
        assert eng.name_table() == ["alpha", "beta", "gamma"]
        assert eng.intern([]) == []

    def test_named_coordinates_format_with_the_table(self, eng):
        ids = eng.intern(["alpha"])
        k = _core.pack(np.array([ids[0], 1, 1, 1, 1, 1, 1, 1, 1], np.uint16))
        eng.put(k, "named")
        assert eng.get(k).coordinate == "alpha.1.1/1.1.1/1.1.1"
        assert [s.coordinate for s in eng.range(ALL)] == ["alpha.1.1/1.1.1/1.1.1"]

    def test_intern_refuses_a_bare_string(self, eng):
        with pytest.raises(E.InterfaceError):
            eng.intern("alpha")
        assert eng.name_table() == []

    @pytest.mark.parametrize("bad", [[1], [""], ["has space"], ["x" * 65]], ids=repr)
    def test_intern_bad_names(self, eng, bad):
        with pytest.raises((E.InterfaceError, E.CoordinateError)) as ei:
            eng.intern(bad)
        assert eng.name_table() == []

    # -- every argument is checked the engine's way, before any shortcut -------------------

    REFUSED = {
        "get a (9,) array": lambda e: e.get(coord("1.1.1/1.1.1/1.1.1")),
        "put a str key": lambda e: e.put("1.1.1/1.1.1/1.1.1", "x"),
        "put if_version -1": lambda e: e.put(key("1.1.1/1.1.1/1.1.1"), "x", -1),
        "put if_version 1.0": lambda e: e.put(key("1.1.1/1.1.1/1.1.1"), "x", 1.0),
        "delete a (9,) array": lambda e: e.delete(coord("1.1.1/1.1.1/1.1.1")),
        "get_many an int64 array": lambda e: e.get_many(coord("1.1.1/1.1.1/1.1.1")
                                                        .reshape(1, 9).astype(np.int64)),
        "get_many a flat array": lambda e: e.get_many(np.ones(18, np.uint16)),
        "get_many a list of keys": lambda e: e.get_many([key("1.1.1/1.1.1/1.1.1")]),
        "put_many a str": lambda e: e.put_many(keys(grid(1)), "x"),
        "put_many a generator": lambda e: e.put_many(keys(grid(1)), (c for c in ["x"])),
        "range a packed pattern": lambda e: e.range(ALL.astype(">u2").tobytes()),
        "range a list pattern": lambda e: e.range(ALL.tolist()),
        "range limit 2**63": lambda e: e.range(ALL, limit=1 << 63),
        "range after a (9,) array": lambda e: e.range(ALL, after=coord("1.1.1/1.1.1/1.1.1")),
        "nearest k 2.0": lambda e: e.nearest(coord("1.1.1/1.1.1/1.1.1"), 2.0),
        "nearest k True": lambda e: e.nearest(coord("1.1.1/1.1.1/1.1.1"), True),
        "nearest an int64 coordinate": lambda e: e.nearest(
            coord("1.1.1/1.1.1/1.1.1").astype(np.int64), 1),
        "nearest metric None": lambda e: e.nearest(coord("1.1.1/1.1.1/1.1.1"), 2, None),
        "nearest within float64": lambda e: e.nearest(coord("1.1.1/1.1.1/1.1.1"), 2, "l1",
                                                      ALL.astype(np.float64)),
        "hier a key": lambda e: e.hier(key("1.1.1/1.1.1/1.1.1"), "NEXT"),
        "hier direction None": lambda e: e.hier(coord("1.1.1/1.1.1/1.1.1"), None),
        "attend values float64": lambda e: e.attend(np.ones(3), ALL, values=ALL.astype(float)),
        "attend pattern float64": lambda e: e.attend(np.ones(3), ALL.astype(float)),
        "attend top_k 1.5": lambda e: e.attend(np.ones(3), ALL, top_k=1.5),
        "attend_many float64 patterns": lambda e: e.attend_many(
            np.ones((1, 3)), ALL.reshape(1, 2, 9).astype(float)),
        "attend_many (2, 9) patterns": lambda e: e.attend_many(np.ones((1, 3)), ALL),
        "kg start float64": lambda e: e.kg(ALL.astype(float), np.stack([delta(
            "+0.0.0/+0.0.0/+0.0.1")]), 1),
        "kg start (3, 9)": lambda e: e.kg(np.zeros((3, 9), np.uint16), np.stack([delta(
            "+0.0.0/+0.0.0/+0.0.1")]), 1),
        "kg packed deltas": lambda e: e.kg(ALL, np.stack([delta("+0.0.0/+0.0.0/+0.0.1")])
                                           .astype(">i4").tobytes(), 1),
        "kg max_frontier 2.5": lambda e: e.kg(ALL, np.stack([delta(
            "+0.0.0/+0.0.0/+0.0.1")]), 1, 2.5),
        "intern a generator": lambda e: e.intern(n for n in ["alpha"]),
        "intern an int": lambda e: e.intern(5),
        "export a (3, 9) pattern": lambda e: e.export_phext(np.zeros((3, 9), np.uint16)),
        "export a float64 pattern": lambda e: e.export_phext(ALL.astype(float)),
    }

    @pytest.mark.parametrize("stored", [0, 1], ids=["empty", "one scroll"])
    @pytest.mark.parametrize("case", sorted(REFUSED))
    def test_refused_alike(self, eng, case, stored):
        if stored:
            eng.put(key("1.1.1/1.1.1/1.1.2"), np.ones(3))
        with pytest.raises(E.InterfaceError):
            self.REFUSED[case](eng)
        assert eng.count(ALL) == stored and eng.name_table() == []

    def test_array_blob_is_packed_big_endian(self, eng):
        arr = _core.parse_coords(["1.1.1/1.1.1/1.1.2", "2.1.1/1.1.1/1.1.1"])
        assert eng.put_many(arr, ["a", "b"]) == [1, 1]
        assert coords_of(eng.range(ALL)) == ["1.1.1/1.1.1/1.1.2", "2.1.1/1.1.1/1.1.1"]
        assert [s.content for s in eng.get_many(arr)] == ["a", "b"]
        assert eng.delete_many(arr[:1]) == 1 and eng.count(ALL) == 1

    def test_byte_likes_are_keys(self, eng):
        k = key("1.1.1/1.1.1/1.1.1")
        assert eng.put(bytearray(k), "x") == 1
        assert eng.get(memoryview(k)).content == "x"
        assert eng.get_many(bytearray(k), content_only=True) == ["x"]
        assert eng.delete(bytearray(k)) == 1

    # -- health / stats -------------------------------------------------------------------

    def test_health_and_stats(self, eng):
        h = eng.health()
        assert h["status"] == "ok" and h["version"] == vtpu.__version__
        assert h["scrolls"] == 0 and h["names"] == 0
        eng.put_many(keys(grid(2)), grid(2))
        eng.intern(["alpha"])
        h = eng.health()
        assert h["scrolls"] == 8 and h["names"] == 1
        st = eng.stats()
        assert st["scrolls"] == 8 and st["names"] == 1

    # -- phext ----------------------------------------------------------------------------

    DOC_ITEMS = [((1, 1, 1, 1, 1, 1, 1, 1, 1), "first"), ((1, 1, 1, 1, 1, 1, 1, 1, 3), "third"),
                 ((1, 1, 2, 1, 1, 1, 1, 1, 1), "series two"), ((2, 1, 1, 1, 1, 1, 1, 1, 1), "lib")]

    def test_import_export_phext(self, eng):
        doc = format_phext(self.DOC_ITEMS)
        assert eng.import_phext(doc) == 4
        for c, text in self.DOC_ITEMS:
            assert eng.get(_core.pack(np.array(c, np.uint16))).content == text
        assert eng.export_phext() == doc
        assert eng.export_phext(pat("1.*.*/*.*.*/*.*.*")) == format_phext(self.DOC_ITEMS[:3])
        assert eng.import_phext("") == 0

    @pytest.mark.parametrize("bad", [b"bytes", 5], ids=repr)
    def test_import_phext_non_text(self, eng, bad):
        with pytest.raises(E.InterfaceError):
            eng.import_phext(bad)
        assert eng.count(ALL) == 0

    def test_export_refuses_what_phext_cannot_hold(self, eng):
        eng.put(key("1.1.1/1.1.1/1.1.1"), "fine")
        eng.put(key("1.1.1/1.1.1/1.1.2"), b"bytes")
        with pytest.raises(E.PhextError):
            eng.export_phext()
        assert eng.export_phext(skip_invalid=True) == format_phext([((1,) * 9, "fine")])


# -- the three backends ---------------------------------------------------------------------


class TestEmbeddedEngine(BackendContract):
    backend = "embedded"

    @pytest.fixture
    def eng(self):
        e = Engine()
        yield e
        e.close()


@pytest.fixture
def server():
    with ServerThread(Engine(), page_size=PAGE) as st:
        yield st


@pytest.mark.integration
class TestRemoteEngine(BackendContract):
    backend = "remote"

    @pytest.fixture
    def eng(self, server):
        r = RemoteEngine(port=server.port, timeout=CALL_TIMEOUT, connect_timeout=10)
        yield r
        r.close()


@pytest.mark.integration
class TestAsyncRemoteEngine(BackendContract):
    backend = "async"

    @pytest.fixture
    def eng(self, server):
        a = SyncAdapter(AsyncRemoteEngine(port=server.port, timeout=CALL_TIMEOUT,
                                          connect_timeout=10))
        yield a
        a.close()

    def test_refused_encoding_leaves_no_pending_reply(self, eng):
        import gc

        with pytest.raises(E.InterfaceError):
            eng.put(key("1.1.1/1.1.1/1.1.1"), 1 << 64)
        assert eng.get(key("1.1.1/1.1.1/1.1.1")) is None   # the connection still serves
        eng.close()
        gc.collect()
        assert [ctx.get("message") for ctx in eng.loop_errors] == []


# -- the facade over mem:// and vtpu:// -------------------------------------------------------

FACADE_MEM = ("mem",)
FACADE_EVERY = ("mem", "vtpu")


class FacadeContract(_Contract):
    """The facade methods (``cget``, ``crange``, ...); subclasses provide ``client``."""

    def test_point_calls(self, client):
        c = "1.2.3/4.5.6/7.8.9"
        assert client.cget(c) is None
        assert client.cput(c, {"k": [1, 2]}) == 1 and client.cput(c, "two") == 2
        s = client.cget(c)
        assert (s.coordinate, s.content, s.version) == (c, "two", 2)
        assert s["coordinate"] == c and dict(s)["content"] == "two"
        with pytest.raises(E.VersionConflict):
            client.cput(c, "stale", if_version=1)
        assert client.cdel(c) == 1 and client.cdel(c) == 0 and client.cget(c) is None

    def test_batched_calls(self, client):
        cs = grid(2)
        assert client.cput_many(cs, [f"v{i}" for i in range(8)]) == [1] * 8
        got = client.cget_many(cs[:2] + ["9.9.9/9.9.9/9.9.9"])
        assert [None if s is None else (s.coordinate, s.content) for s in got] == [
            (cs[0], "v0"), (cs[1], "v1"), None]
        assert client.cget_many(cs[:2], content_only=True) == ["v0", "v1"]
        assert client.cdel_many(cs[:3] + ["9.9.9/9.9.9/9.9.9"]) == 3
        assert client.cdel("2.*.*/*.*.*/*.*.*") == 4
        assert client.ccount("*.*.*/*.*.*/*.*.*") == 1

    def test_cget_many_returns_the_column_result(self, client):
        cs = grid(2)
        client.cput_many(cs, [f"v{i}" for i in range(len(cs))])
        # one result type on every backend: the core's columns (decoded into it remotely)
        got = client.cget_many([cs[1], "9.9.9/9.9.9/9.9.9", cs[0]])
        assert type(got) is Scrolls
        assert got.found.tolist() == [True, False, True]
        assert got.versions.tolist() == [1, 0, 1]
        assert [got.contents[0], got.contents[2]] == ["v1", "v0"] and got.contents[1] is None
        assert [got.coordinates[0], got.coordinates[2]] == [cs[1], cs[0]]
        assert got[0].coordinate == cs[1] and got[1] is None

    def test_crange_forms(self, client):
        cs = grid(3)
        client.cput_many(cs, cs)
        p = "[2:4].*.*/*.*.*/*.*.[:3]"
        exp = [c for c in cs if c[0] in "23" and c[-1] in "12"]
        got = client.crange(p)
        assert type(got) is Scrolls and [(s.coordinate, s.content) for s in got] == [
            (c, c) for c in exp]
        assert got.coordinates == exp and got.contents == exp
        assert client.crange(p, keys_only=True) == exp
        arr = client.crange(p, keys_only=True, as_array=True)
        assert type(arr) is np.ndarray and arr.dtype == np.uint16 and texts(arr) == exp
        assert client.crange(p, count=True) == client.ccount(p) == 12
        assert client.crange(p, limit=3, after=exp[4], keys_only=True) == exp[5:8]
        assert [s.coordinate for s in client.crange_iter(p, page_size=5)] == exp
        assert client.crange("4.*.*/*.*.*/*.*.*") == []

    def test_cnearest_and_chier(self, client):
        cs = grid(2)
        client.cput_many(cs, cs)
        assert client.cnearest("1.1.1/1.1.1/1.1.1", k=3) == [
            ("1.1.1/1.1.1/1.1.1", 0), ("1.1.1/1.1.1/1.1.2", 1), ("1.1.1/2.1.1/1.1.1", 1)]
        assert client.cnearest("2.1.1/2.1.1/1.1.2", k=2, metric="hamming",
                               within="1.*.*/*.*.*/*.*.*") == [
            ("1.1.1/2.1.1/1.1.2", 1), ("1.1.1/1.1.1/1.1.2", 2)]
        assert client.chier("1.1.1/2.1.1/1.1.2", "UP") == "1.1.1/2.1.1/1.1.*"
        assert client.chier("1.1.1/2.1.1/1.1.*", "DOWN") == cs[2:4]
        assert client.chier(cs[1], "NEXT") == cs[2] and client.chier(cs[1], "PREV") == cs[0]
        assert client.chier(cs[-1], "NEXT") is None

    def test_cattend(self, client):
        rng = np.random.default_rng(4)
        K, q = rng.normal(size=(6, 5)), rng.normal(size=5)
        client.cput_many([f"3.8.{i}/1.0.0/1.1.1" for i in range(6)], K)
        res = client.cattend(query=q, key_pattern="3.8.*/1.0.0/1.1.1", top_k=2)
        s = K @ q / math.sqrt(5)
        w = np.exp(s - s.max())
        w /= w.sum()
        top = np.argsort(-s)[:2]
        assert res.n == 6 and res.mode == "dot" and res.output is None
        assert [r["coordinate"] for r in res] == [f"3.8.{i}/1.0.0/1.1.1" for i in top]
        np.testing.assert_allclose(res.scores, s[top], rtol=1e-12)
        np.testing.assert_allclose(res.weights, w[top], rtol=1e-12)

    def test_cattend_negative_top_k(self, client):
        client.cput_many(grid(1) + ["1.1.1/1.1.1/1.1.2"], ["a", "b"])
        with pytest.raises(E.InterfaceError):
            client.cattend(query_coord=grid(1)[0], key_pattern="1.1.1/1.1.1/1.1.*", top_k=-1)

    def test_ckg(self, client):
        client.cput("person.1.1/attr.name.1/1.1.1", "Ann")
        client.cput("person.2.1/attr.name.1/1.1.1", "Ben")
        client.cput("person.1.1/rel.knows.1/1.1.1", "person.2.1/attr.name.1/1.1.1")
        got = client.ckg("person.1.1/attr.name.1/1.1.1", "+0.0.0/=rel.=knows.+0/+0.0.0")
        assert [(s.coordinate, s.content) for s in got] == [("person.2.1/attr.name.1/1.1.1", "Ben")]
        assert client.ckg("person.2.1/attr.name.1/1.1.1", "+0.0.0/=rel.=knows.+0/+0.0.0") == []

    def test_names_health_stats_phext(self, client):
        assert client.intern(["alpha", "beta"]) == [0xF000, 0xF001]
        client.cput("alpha.1.1/beta.1.1/1.1.1", "named")
        assert client.crange("alpha.*.*/*.*.*/*.*.*", keys_only=True) == [
            "alpha.1.1/beta.1.1/1.1.1"]
        h = client.health()
        assert h["status"] == "ok" and h["scrolls"] == 1 and h["names"] == 2
        assert client.stats()["scrolls"] == 1
        client.cdel("alpha.1.1/beta.1.1/1.1.1")
        doc = format_phext(BackendContract.DOC_ITEMS)
        assert client.import_phext(doc) == 4
        assert client.export_phext() == doc
        assert client.crange("1.1.1/1.1.1/1.1.*", keys_only=True) == [
            "1.1.1/1.1.1/1.1.1", "1.1.1/1.1.1/1.1.3"]

    @pytest.mark.parametrize("page_size", [1, 3, 10_000])
    def test_export_phext_file_streams_pages(self, client, tmp_path, page_size):
        # Pages of any size make the same document as the one-reply export; what a phext
        # file cannot hold is refused (nothing left at the path) or skipped and counted.
        rng = np.random.default_rng(page_size)
        coords = np.unique(rng.integers(1, 4, size=(40, 9)), axis=0).astype(np.uint16)
        texts = [f"scroll {i}\n" for i in range(len(coords))]
        client.cput_many(coords, texts)
        path = tmp_path / "out.phext"
        seen = []
        assert client.export_phext_file(path, page_size=page_size,
                                        progress=seen.append) == len(coords)
        assert path.read_bytes().decode("utf-8") == client.export_phext()
        assert seen[-1] == len(coords) and seen == sorted(seen)
        assert client.export_phext_file(path, "1.*.*/*.*.*/*.*.*", page_size=page_size) == \
            int((coords[:, 0] == 1).sum())
        assert path.read_bytes().decode("utf-8") == client.export_phext(pattern="1.*.*/*.*.*/*.*.*")
        client.cput("3.3.3/3.3.3/3.3.4", b"bytes")
        other = tmp_path / "other.phext"
        with pytest.raises(E.PhextError):
            client.export_phext_file(other, page_size=page_size)
        assert list(tmp_path.iterdir()) == [path]
        assert client.export_phext_file(other, skip_invalid=True,
                                        page_size=page_size) == len(coords)
        with pytest.raises(E.InterfaceError):
            client.export_phext_file(other, page_size=0)
        assert sorted(tmp_path.iterdir()) == sorted([path, other])
        with pytest.raises(E.InterfaceError):
            next(client.crange_iter("*.*.*/*.*.*/*.*.*", page_size=0))
        assert [s.coordinate for s in client.crange_iter("*.*.*/*.*.*/*.*.*", page_size)] \
            == client.crange("*.*.*/*.*.*/*.*.*", keys_only=True)

    def test_intern_refuses_a_bare_string(self, client):
        with pytest.raises(E.InterfaceError):
            client.intern("alpha")

    def test_errors_are_typed_and_change_nothing(self, client):
        client.cput("1.1.1/1.1.1/1.1.1", "keep")
        for call in (lambda: client.cget("1.1.1/1.1"), lambda: client.cput("1.1.x!/1.1.1/1.1.1", 1),
                     lambda: client.crange("1.1.1/1.1.1"), lambda: client.cnearest("1.1", 2),
                     lambda: client.chier("1.1.1/1.1.1/1.1.70000", "NEXT"),
                     lambda: client.cdelta("1.1.1/1.1.1/1.1.1", "-5.0.0/0.0.0/0.0.0")):
            with pytest.raises(E.CoordinateError):
                call()
        for call in (lambda: client.cget(b"x" * 17), lambda: client.cdel(b"x" * 17),
                     lambda: client.cput("1.1.1/1.1.1/1.1.1", object()),
                     lambda: client.cput_many(grid(1) * 2, ["one"]),
                     lambda: client.chier("1.1.1/1.1.1/1.1.1", "SIDEWAYS"),
                     lambda: client.cnearest("1.1.1/1.1.1/1.1.1", 2, metric="euclid"),
                     lambda: client.crange("*.*.*/*.*.*/*.*.*", limit=-1)):
            with pytest.raises(E.InterfaceError):
                call()
        s = client.cget("1.1.1/1.1.1/1.1.1")
        assert (s.content, s.version) == ("keep", 1) and client.ccount("*.*.*/*.*.*/*.*.*") == 1

    @pytest.mark.parametrize("call", [
        lambda c: c.cnearest("1.1.1/1.1.1/1.1.1", k=2.5),
        lambda c: c.cnearest("ghost.1.1/1.1.1/1.1.1", k=2.5),   # names no stored name
        lambda c: c.cnearest("1.1.1/1.1.1/1.1.1", k=2, metric="L1"),
        lambda c: c.ckg("1.1.1/1.1.1/1.1.1", "+0.0.0/+0.0.0/+0.0.1", hops=1.5),
        lambda c: c.ckg("1.1.1/1.1.1/1.1.1", "+0.0.0/+0.0.0/+0.0.1", max_frontier=2.0),
        lambda c: c.intern(n for n in ["alpha"]),
    ], ids=["k-float", "k-float-unknown-name", "metric-case", "hops-float", "frontier-float",
            "intern-generator"])
    def test_arguments_refused_alike(self, client, call):
        client.cput_many(grid(1) + ["1.1.1/1.1.1/1.1.2"], ["a", "b"])
        with pytest.raises(E.InterfaceError):
            call(client)
        assert client.ccount("*.*.*/*.*.*/*.*.*") == 2 and client.health()["names"] == 0

    def test_crange_float_limit(self, client):
        client.cput_many(grid(2), ["x"] * 8)
        with pytest.raises(E.InterfaceError):
            client.crange("*.*.*/*.*.*/*.*.*", limit=2.5)

    def test_cput_many_contents_not_a_sequence(self, client):
        with pytest.raises(E.InterfaceError):
            client.cput_many(grid(1), 5)


class TestFacadeMem(FacadeContract):
    backend = "mem"

    @pytest.fixture
    def client(self):
        c = vtpu.connect("mem://")
        yield c
        c.close()


@pytest.mark.integration
class TestFacadeRemote(FacadeContract):
    backend = "vtpu"

    @pytest.fixture
    def client(self, server):
        c = vtpu.connect(f"vtpu://127.0.0.1:{server.port}", timeout=CALL_TIMEOUT)
        yield c
        c.close()
