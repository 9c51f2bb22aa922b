"""Same input, same answer, on ``mem://``, ``file://`` and a real server.

Regression tests for results that used to differ from the specification (PROTOCOL §5,
DESIGN §2-3) or between backends: CKG frontiers and edge contents, CATTEND's modes and
errors, name ids never interned, reads that must not intern, and error messages.
"""
import struct

import numpy as np
import pytest

import vtpu
from vtpu import CoordinateError, InterfaceError, LimitError, NotFoundError


@pytest.fixture(params=["mem", "file", pytest.param("server", marks=pytest.mark.integration)])
def store(request, tmp_path):
    """A client over a fresh store: embedded, embedded durable, or a loopback server."""
    if request.param == "mem":
        c = vtpu.connect("mem://")
    elif request.param == "file":
        c = vtpu.connect(f"file://{tmp_path}/data")
    else:
        from vtpu.server import Limits
        from vtpu.testing import running_server

        # (Some tests fill the whole name table in one call: no per-connection rate.)
        with running_server(limits=Limits(names_per_second=4096)) as (host, port):
            c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
            try:
                yield c
            finally:
                c.close()
        return
    try:
        yield c
    finally:
        c.close()


def _coords(scrolls):
    return [s.coordinate for s in scrolls]


# -- CKG ------------------------------------------------------------------------------------

def test_ckg_drops_only_the_rows_a_delta_takes_out_of_range(store):
    for c in ["6.0.0/0.0.0/0.0.0", "6.5.0/0.0.0/0.0.0", "6.4.1/0.0.0/0.0.0"]:
        store.cput(c, "node")
    # 6.0.0 - 1 leaves the range; 6.5.0 -> 6.4.1 (stored), 6.4.1 has component 3 = 1 -> 2 (not 0)
    got = store.ckg("6.*.0/0.0.0/0.0.0", ["+0.-1.+1/+0.+0.+0/+0.+0.+0"], hops=1)
    assert _coords(got) == ["6.4.1/0.0.0/0.0.0"]


def test_ckg_multi_hop_keeps_the_rows_still_in_range(store):
    # Hop 1 fans out from 1.5.0 to 2.0.0, 2.1.0, 2.2.0 (a list pointer); at hop 2 the
    # relation "library + 1, shelf - 1" takes 2.0.0 out of range, and still leads 2.1.0
    # and 2.2.0 on to 3.0.0 and 3.1.0.
    fan = ["2.0.0/0.0.0/0.0.0", "2.1.0/0.0.0/0.0.0", "2.2.0/0.0.0/0.0.0"]
    store.cput("1.5.0/0.0.0/0.0.0", "start")
    store.cput("1.5.1/0.0.0/0.0.0", fan)
    for c in fan + ["3.0.0/0.0.0/0.0.0", "3.1.0/0.0.0/0.0.0"]:
        store.cput(c, "node")
    rels = ["+0.+0.+1/+0.+0.+0/+0.+0.+0", "+1.-1.+0/+0.+0.+0/+0.+0.+0"]
    assert _coords(store.ckg("1.5.0/0.0.0/0.0.0", rels, hops=1)) == fan
    got = store.ckg("1.5.0/0.0.0/0.0.0", rels, hops=2)
    assert _coords(got) == ["3.0.0/0.0.0/0.0.0", "3.1.0/0.0.0/0.0.0"]


@pytest.mark.parametrize("form", ["key", "keys", "row", "rows", "text", "text_list", "mixed"])
def test_ckg_follows_every_coordinate_form_of_an_edge(store, form):
    t1, t2 = "2.2.2/2.2.2/2.2.2", "3.3.3/3.3.3/3.3.3"
    k1, k2 = struct.pack(">9H", *[2] * 9), struct.pack(">9H", *[3] * 9)
    content = {
        "key": k1,
        "keys": [k1, k2],
        "row": np.array([2] * 9, dtype=np.uint16),
        "rows": np.array([[2] * 9, [3] * 9], dtype=np.uint16),
        "text": "  2.2.2/2.2.2/2.2.2\n",
        "text_list": [t1, t2],
        "mixed": [t1, k2],
    }[form]
    store.cput("1.1.1/1.1.1/1.1.2", content)
    store.cput(t1, "target one")
    store.cput(t2, "target two")
    got = store.ckg("1.1.1/1.1.1/1.1.1", ["+0.0.0/0.0.0/0.0.1"])
    want = [t1] if form in ("key", "row", "text") else [t1, t2]
    assert _coords(got) == want


@pytest.mark.parametrize("content", [
    b"\x00" * 17, [1, 2, 3, 4, 5, 6, 7, 8, 9], np.arange(9, dtype=np.int64), "not a coordinate",
    [], ["2.2.2/2.2.2/2.2.2", "nope"], np.zeros((0, 9), np.uint16), {"to": "2.2.2/2.2.2/2.2.2"},
])
def test_ckg_edge_that_is_no_coordinate_is_the_next_frontier(store, content):
    store.cput("1.1.1/1.1.1/1.1.2", content)
    store.cput("2.2.2/2.2.2/2.2.2", "not reached")
    got = store.ckg("1.1.1/1.1.1/1.1.1", ["+0.0.0/0.0.0/0.0.1"])
    assert _coords(got) == ["1.1.1/1.1.1/1.1.2"]


# -- CATTEND --------------------------------------------------------------------------------

def _keys8(store, prefix="300.1", n=3, d=8):
    rng = np.random.default_rng(3)
    K = rng.normal(size=(n, d))
    store.cput_many([f"{prefix}.{i}/0.0.0/1.1.1" for i in range(n)], K)
    return K


def test_cattend_query_and_key_sizes_must_agree(store):
    _keys8(store)
    with pytest.raises(InterfaceError) as e:
        store.cattend(query=np.ones(4), key_pattern="300.1.*/0.0.0/1.1.1")
    assert "size 4" in str(e.value) and "size 8" in str(e.value)
    assert "300.1.0/0.0.0/1.1.1" in str(e.value)
    # the same through a stored query scroll: no switch to coordinate distance
    store.cput("300.9.9/0.0.0/1.1.1", np.ones(4))
    with pytest.raises(InterfaceError) as e:
        store.cattend(query_coord="300.9.9/0.0.0/1.1.1", key_pattern="300.1.*/0.0.0/1.1.1")
    assert "size 4" in str(e.value) and "size 8" in str(e.value)


def test_cattend_keys_of_mixed_kinds_are_an_error_unless_distance_is_asked(store):
    K = _keys8(store)
    store.cput("300.1.9/0.0.0/1.1.1", "a text scroll")
    store.cput("300.9.9/0.0.0/1.1.1", np.ones(8))
    with pytest.raises(InterfaceError) as e:
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1")
    assert "300.1.9/0.0.0/1.1.1" in str(e.value) and "mode='distance'" in str(e.value)
    with pytest.raises(InterfaceError):
        store.cattend(query_coord="300.9.9/0.0.0/1.1.1", key_pattern="300.1.*/0.0.0/1.1.1",
                      mode="dot")
    res = store.cattend(query_coord="300.9.9/0.0.0/1.1.1", key_pattern="300.1.*/0.0.0/1.1.1",
                        mode="distance")
    assert res.mode == "distance" and res.n == 4
    q = np.array([300, 9, 9, 0, 0, 0, 1, 1, 1])
    ks = [np.array([300, 1, i, 0, 0, 0, 1, 1, 1]) for i in (0, 1, 2, 9)]
    scores = np.array([1 / (1 + np.abs(q - k).sum()) for k in ks])
    assert [r["coordinate"] for r in res] == [f"300.1.{i}/0.0.0/1.1.1" for i in (9, 2, 1, 0)]
    np.testing.assert_allclose(res.weights, (scores / scores.sum())[::-1], rtol=1e-12)
    # explicit dot mode over the vectors alone works
    res = store.cattend(query=np.ones(8), key_pattern="300.1.[0:3]/0.0.0/1.1.1", mode="dot")
    s = K @ np.ones(8) / np.sqrt(8)
    np.testing.assert_allclose(sorted(res.scores), sorted(s), rtol=1e-12)
    # a vector query has no coordinate to measure distance from
    with pytest.raises(InterfaceError):
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1", mode="distance")
    with pytest.raises(InterfaceError):
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1", mode="cosine")


def test_cattend_vector_query_scroll_over_text_keys_needs_distance_mode(store):
    store.cput("5.5.1/0.0.0/1.1.1", "a")
    store.cput("5.5.2/0.0.0/1.1.1", "b")
    store.cput("5.5.9/0.0.0/1.1.1", np.ones(8))
    with pytest.raises(InterfaceError):
        store.cattend(query_coord="5.5.9/0.0.0/1.1.1", key_pattern="5.5.[1:3]/0.0.0/1.1.1")
    store.cput("5.5.8/0.0.0/1.1.1", "text query")
    res = store.cattend(query_coord="5.5.8/0.0.0/1.1.1", key_pattern="5.5.[1:3]/0.0.0/1.1.1")
    assert res.mode == "distance" and [r["coordinate"] for r in res] == [
        "5.5.2/0.0.0/1.1.1", "5.5.1/0.0.0/1.1.1"]
    # a text query over vector keys is the same mix the other way round
    with pytest.raises(InterfaceError):
        store.cattend(query_coord="5.5.8/0.0.0/1.1.1", key_pattern="5.5.[8:10]/0.0.0/1.1.1")


def test_cattend_empty_key_pattern_gives_an_empty_result_for_both_query_forms(store):
    store.cput("300.9.9/0.0.0/1.1.1", np.ones(3))
    for kw in ({"query": np.ones(3)}, {"query_coord": "300.9.9/0.0.0/1.1.1"}):
        res = store.cattend(key_pattern="999.*.*/*.*.*/*.*.*", top_k=4, values="+1.0.0/0.0.0/0.0.0",
                            **kw)
        assert list(res) == [] and res.n == 0 and res.output is None and res.mode == "dot"


def test_cattend_query_coord_with_nothing_stored_is_not_found(store):
    _keys8(store)
    with pytest.raises(NotFoundError) as e:
        store.cattend(query_coord="888.1.1/0.0.0/1.1.1", key_pattern="300.1.*/0.0.0/1.1.1")
    assert "888.1.1/0.0.0/1.1.1" in str(e.value)
    # distance mode needs the coordinate only
    res = store.cattend(query_coord="300.1.7/0.0.0/1.1.1", key_pattern="300.1.*/0.0.0/1.1.1",
                        mode="distance", top_k=1)
    assert [r["coordinate"] for r in res] == ["300.1.2/0.0.0/1.1.1"]


def test_cattend_top_k_must_not_be_negative(store):
    _keys8(store)
    with pytest.raises(InterfaceError):
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1", top_k=-1)
    assert len(store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1", top_k=0)) == 0


def test_cattend_value_sizes_must_agree(store):
    _keys8(store, n=2)
    store.cput("301.1.0/0.0.0/1.1.1", np.ones(5))
    store.cput("301.1.1/0.0.0/1.1.1", np.ones(6))
    with pytest.raises(InterfaceError) as e:
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1",
                      values="+1.0.0/0.0.0/0.0.0")
    assert "size 5" in str(e.value) and "size 6" in str(e.value)
    store.cdel("301.1.1/0.0.0/1.1.1")
    with pytest.raises(InterfaceError) as e:
        store.cattend(query=np.ones(8), key_pattern="300.1.*/0.0.0/1.1.1",
                      values="+1.0.0/0.0.0/0.0.0")
    assert "301.1.1/0.0.0/1.1.1" in str(e.value)


def test_cattend_many_reads_only_the_scrolls_inside_its_windows(store):
    rng = np.random.default_rng(4)
    K1, K2 = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    store.cput_many([f"310.1.{i}/0.0.0/1.1.1" for i in range(3)], K1)
    store.cput_many([f"311.3.{i}/0.0.0/1.1.1" for i in range(3)], K2)
    # in the box spanning both windows, but in neither window
    store.cput("310.2.0/0.0.0/1.1.1", "text")
    store.cput("310.1.0/0.0.0/2.1.1", np.ones(3))
    Q = rng.normal(size=(2, 8))
    res = store.cattend_many(Q, ["310.1.*/0.0.0/1.1.1", "311.3.*/0.0.0/1.1.1"])
    assert res["counts"].tolist() == [3, 3]
    for q, K, out in zip(Q, (K1, K2), res["outputs"]):
        s = K @ q / np.sqrt(8)
        w = np.exp(s - s.max())
        np.testing.assert_allclose(out, (w / w.sum()) @ K, rtol=1e-9)
    # values by delta: only the windows' keys need a value scroll
    store.cput_many([f"410.1.{i}/0.0.0/1.1.1" for i in range(3)], K1 * 2)
    store.cput_many([f"411.3.{i}/0.0.0/1.1.1" for i in range(3)], K2 * 2)
    res2 = store.cattend_many(Q, ["310.1.*/0.0.0/1.1.1", "311.3.*/0.0.0/1.1.1"],
                              values="+100.0.0/0.0.0/0.0.0")
    np.testing.assert_allclose(res2["outputs"], 2 * res["outputs"], rtol=1e-9)
    # a scroll inside a window that holds no vector is still an error naming it
    store.cput("311.3.5/0.0.0/1.1.1", "text in a window")
    with pytest.raises(InterfaceError) as e:
        store.cattend_many(Q, ["310.1.*/0.0.0/1.1.1", "311.3.*/0.0.0/1.1.1"])
    assert "311.3.5/0.0.0/1.1.1" in str(e.value)
    with pytest.raises(InterfaceError) as e:
        store.cattend_many(np.ones((1, 4)), ["310.1.*/0.0.0/1.1.1"])
    assert "size 4" in str(e.value) and "size 8" in str(e.value)


def test_cattend_many_query_keys_must_hold_vectors(store):
    _keys8(store)
    store.cput("300.9.0/0.0.0/1.1.1", np.ones(8))
    store.cput("300.9.1/0.0.0/1.1.1", "text")
    store.cput("300.9.2/0.0.0/1.1.1", np.ones(4))
    pats = ["300.1.*/0.0.0/1.1.1"] * 2
    with pytest.raises(NotFoundError):
        store.cattend_many(["300.9.0/0.0.0/1.1.1", "300.9.7/0.0.0/1.1.1"], pats)
    with pytest.raises(InterfaceError) as e:
        store.cattend_many(["300.9.0/0.0.0/1.1.1", "300.9.1/0.0.0/1.1.1"], pats)
    assert "300.9.1/0.0.0/1.1.1" in str(e.value)
    with pytest.raises(InterfaceError) as e:
        store.cattend_many(["300.9.0/0.0.0/1.1.1", "300.9.2/0.0.0/1.1.1"], pats)
    assert "size 8" in str(e.value) and "size 4" in str(e.value)
    res = store.cattend_many(["300.9.0/0.0.0/1.1.1"], pats[:1])
    assert res["counts"].tolist() == [3]


# -- names ----------------------------------------------------------------------------------

def test_writes_refuse_name_ids_never_interned(store):
    with pytest.raises(CoordinateError) as e:
        store.cput(b"\xff" * 18, "x")
    assert "0xFFFF" in str(e.value)
    with pytest.raises(CoordinateError):
        store.cput(np.array([0xFEEE] + [1] * 8, dtype=np.uint16), "x")
    rows = np.ones((3, 9), dtype=np.uint16)
    rows[2, 4] = 0xF000
    with pytest.raises(CoordinateError) as e:
        store.cput_many(rows, ["a", "b", "c"])
    assert "row 2" in str(e.value)
    assert store.ccount("*.*.*/*.*.*/*.*.*") == 0     # nothing of the refused batch stored
    # ids the table gave out are fine
    (ident,) = store.intern(["alpha"])
    assert ident == 0xF000
    assert store.cput_many(rows, ["a", "b", "c"]) == [1, 2, 1]
    assert store.cput(np.array([ident] + [2] * 8, dtype=np.uint16), "y") == 1
    with pytest.raises(CoordinateError):
        store.cput(np.array([ident + 1] + [2] * 8, dtype=np.uint16), "y")
    # what is stored can always be listed and formatted
    assert store.crange("*.*.*/*.*.*/*.*.*", keys_only=True) == [
        "1.1.1/1.1.1/1.1.1", "1.1.1/1.alpha.1/1.1.1", "alpha.2.2/2.2.2/2.2.2"]
    assert [c for c, _ in store.cnearest("1.1.1/1.1.1/1.1.1", k=5)][0] == "1.1.1/1.1.1/1.1.1"


def _names(store):
    return list(store.backend.name_table())


def _unknown_name_reads(store):
    """Every read naming the never-interned name ``ghost``, with the answer it must give."""
    g = "ghost.1.1/1.1.1/1.1.1"
    return [
        ("cget", lambda: store.cget(g), None),
        ("cget_many", lambda: [None if s is None else s.content
                               for s in store.cget_many(["1.1.1/1.1.1/1.1.1", g])], ["one", None]),
        ("cget_many values", lambda: store.cget_many([g, "1.1.1/1.1.1/1.1.1"], content_only=True),
         [None, "one"]),
        ("crange", lambda: store.crange("ghost.*.*/*.*.*/*.*.*"), []),
        ("crange keys", lambda: store.crange("*.*.*/ghost.*.*/*.*.*", keys_only=True), []),
        ("crange count", lambda: store.crange("*.*.*/*.*.*/*.*.ghost", count=True), 0),
        ("ccount", lambda: store.ccount("1.1.1/1.1.1/1.1.ghost"), 0),
        ("crange_iter", lambda: list(store.crange_iter("ghost.*.*/*.*.*/*.*.*")), []),
        ("cdel", lambda: store.cdel(g), 0),
        ("cdel pattern", lambda: store.cdel("ghost.*.*/*.*.*/*.*.*"), 0),
        ("cdel_many", lambda: store.cdel_many([g, "9.9.9/9.9.9/9.9.9"]), 0),
        ("cnearest", lambda: store.cnearest(g, k=3), []),
        ("cnearest within", lambda: store.cnearest("1.1.1/1.1.1/1.1.1", within="ghost.*.*/*.*.*/*.*.*"),
         []),
        ("chier down", lambda: store.chier("ghost.*.*/*.*.*/*.*.*", "DOWN"), []),
        ("chier next", lambda: store.chier(g, "NEXT"), None),
        ("chier up", lambda: store.chier(g, "UP"), "ghost.1.1/1.1.1/1.1.*"),
        ("cdelta", lambda: store.cdelta("1.1.1/1.1.1/1.1.1", "=ghost.+0.+0/+0.+0.+0/+0.+0.+0"), g),
        ("cattend keys", lambda: list(store.cattend(query=np.ones(2), key_pattern="ghost.*.*/*.*.*/*.*.*")),
         []),
        ("cattend_many window", lambda: store.cattend_many(
            np.ones((1, 2)), ["ghost.*.*/*.*.*/*.*.*"])["counts"].tolist(), [0]),
        ("ckg start", lambda: store.ckg(g, ["+0.0.0/0.0.0/0.0.1"]), []),
        ("ckg delta", lambda: store.ckg("1.1.1/1.1.1/1.1.1", ["=ghost.+0.+0/+0.+0.+0/+0.+0.+0"]), []),
        ("export", lambda: store.export_phext(pattern="ghost.*.*/*.*.*/*.*.*"), ""),
    ]


def test_reads_never_intern_names(store):
    store.cput("1.1.1/1.1.1/1.1.1", "one")
    for what, read, want in _unknown_name_reads(store):
        assert read() == want, what
        assert _names(store) == [], what
    with pytest.raises(NotFoundError):
        store.cattend(query_coord="ghost.1.1/1.1.1/1.1.1", key_pattern="1.*.*/*.*.*/*.*.*")
    with pytest.raises(CoordinateError):
        store.crange("*.*.*/*.*.*/*.*.*", after="ghost.1.1/1.1.1/1.1.1")
    assert _names(store) == []
    # a pipeline keeps its results in step with its calls
    p = store.pipeline()
    p.cget("ghost.1.1/1.1.1/1.1.1")
    p.cget("1.1.1/1.1.1/1.1.1")
    p.cdel("ghost.1.1/1.1.1/1.1.1")
    p.cget_many(["ghost.1.1/1.1.1/1.1.1", "1.1.1/1.1.1/1.1.1"])
    p.ccount("ghost.*.*/*.*.*/*.*.*")
    res = p.execute()
    assert res[0] is None and res[1].content == "one" and res[2] == 0
    assert res[3][0] is None and res[3][1].content == "one" and res[4] == 0
    assert _names(store) == []
    # a name written once is known to every read afterwards
    store.cput("ghost.1.1/1.1.1/1.1.1", "boo")
    assert store.cget("ghost.1.1/1.1.1/1.1.1").content == "boo"
    assert store.crange("ghost.*.*/*.*.*/*.*.*", keys_only=True) == ["ghost.1.1/1.1.1/1.1.1"]
    assert _names(store) == ["ghost"]


def test_reads_with_a_full_name_table_answer_no_match(store):
    store.cput("1.1.1/1.1.1/1.1.1", "one")
    store.intern([f"n{i}" for i in range(4096)])
    assert len(_names(store)) == 4096
    for what, read, want in _unknown_name_reads(store):
        assert read() == want, what
    with pytest.raises(LimitError):
        store.cput("ghost.1.1/1.1.1/1.1.1", "a write does need an id")
    assert len(_names(store)) == 4096


@pytest.mark.integration
def test_asyncio_client_reads_never_intern():
    import asyncio

    from vtpu.aio import AsyncRemoteEngine
    from vtpu.testing import running_server

    async def main(port):
        async with AsyncRemoteEngine(port=port) as a:
            assert await a.key("ghost.1.1/1.1.1/1.1.1", intern=False) is None
            assert await a.count(await a.pattern("ghost.*.*/*.*.*/*.*.*")) == 0
            assert await a.name_table() == []
            # another client interns names: the cache learns them on a read, uninterned
            other = vtpu.connect(f"vtpu://127.0.0.1:{port}")
            other.cput("zero.1.1/1.1.1/1.1.1", "z")
            other.cput("ghost.1.1/1.1.1/1.1.1", "boo")
            other.close()
            key = await a.key("ghost.1.1/1.1.1/1.1.1", intern=False)
            assert (await a.get(key)).content == "boo"
            assert await a.count(await a.pattern("ghost.*.*/*.*.*/*.*.*")) == 1
            assert await a.name_table() == ["zero", "ghost"]
            # writes still intern
            k = await a.key("fresh.1.1/1.1.1/1.1.1")
            assert await a.put(k, "f") == 1
            assert await a.name_table() == ["zero", "ghost", "fresh"]

    with running_server() as (_, port):
        asyncio.run(main(port))


# -- same input, same error ------------------------------------------------------------------

_C = "1.1.1/1.1.1/1.1.1"
_ALL = "*.*.*/*.*.*/*.*.*"
_REL = ["+0.0.0/0.0.0/0.0.1"]
_BAD_ARGUMENTS = {
    "if_version -1": lambda s: s.cput("5.5.5/5.5.5/5.5.5", "x", if_version=-1),
    "if_version True": lambda s: s.cput("5.5.5/5.5.5/5.5.5", "x", if_version=True),
    "if_version 1.0": lambda s: s.cput("5.5.5/5.5.5/5.5.5", "x", if_version=1.0),
    "if_version '0'": lambda s: s.cput("5.5.5/5.5.5/5.5.5", "x", if_version="0"),
    "limit -1": lambda s: s.crange(_ALL, limit=-1),
    "limit 1.5": lambda s: s.crange(_ALL, limit=1.5),
    "k -1": lambda s: s.cnearest(_C, k=-1),
    "k 2**40": lambda s: s.cnearest(_C, k=2 ** 40),
    "hops -1": lambda s: s.ckg(_C, _REL, hops=-1),
    "hops 2**21": lambda s: s.ckg(_C, _REL, hops=2 ** 21),
    "max_frontier 0": lambda s: s.ckg(_C, _REL, max_frontier=0),
    "max_frontier 2**40": lambda s: s.ckg(_C, _REL, max_frontier=2 ** 40),
    "top_k -1": lambda s: s.cattend(query=np.ones(4), key_pattern=_ALL, top_k=-1),
    "top_k 1.5": lambda s: s.cattend(query=np.ones(4), key_pattern=_ALL, top_k=1.5),
    "top_k True": lambda s: s.cattend(query=np.ones(4), key_pattern=_ALL, top_k=True),
    "empty query": lambda s: s.cattend(query=np.ones(0), key_pattern=_ALL),
    "2-d query": lambda s: s.cattend(query=np.ones((2, 4)), key_pattern=_ALL),
}


@pytest.mark.parametrize("case", sorted(_BAD_ARGUMENTS))
def test_bad_arguments_are_interface_errors_on_every_backend(store, case):
    store.cput(_C, np.ones(4))
    with pytest.raises(InterfaceError):
        _BAD_ARGUMENTS[case](store)
    assert store.ccount(_ALL) == 1 and store.cget("5.5.5/5.5.5/5.5.5") is None


# -- error messages ---------------------------------------------------------------------------

@pytest.mark.integration
def test_server_error_messages_name_the_opcode_once():
    from vtpu.netclient import RemoteEngine
    from vtpu.testing import running_server

    keys2 = b"".join(struct.pack(">9H", *[1] * 8, i) for i in (1, 2))
    with running_server() as (host, port):
        eng = RemoteEngine(host, port)
        one = struct.pack(">9H", *[1] * 9)
        # Raw requests: the client checks these arguments itself before sending (as the
        # engine does), so only a request sent as is reaches the server's checks.
        calls = {
            "PUT_MANY": lambda t: t.request("PUT_MANY", [keys2, np.ones((3, 4))]),
            "HIER": lambda t: t.request("HIER", [one, "SIDEWAYS"]),
            "PUT": lambda t: t.put(b"\xff" * 18, "x"),
            "NEAREST": lambda t: t.request("NEAREST", [one, -1]),
        }
        for op, call in calls.items():
            with pytest.raises(vtpu.VTPUError) as e:
                call(eng)
            assert str(e.value).startswith(f"{op}: ") and f"{op}: {op}" not in str(e.value), op
            for batch in (False, True):    # a pipeline reports it the same way
                p = eng.pipeline(batch=batch, raise_on_error=False)
                call(p)
                (err,) = p.execute()
                assert type(err) is type(e.value) and str(err) == str(e.value), (op, batch)
        eng.close()


@pytest.mark.parametrize("text", [" 1.2.3/4.5.6/7.8.9", "1.2.3/4.5.6/7.8.9  ", "1.2.3 / 4.5.6 ; 7.8.9"])
def test_text_accepts_spaces_at_the_ends_and_around_slashes(text):
    c = vtpu.connect("mem://")
    c.cput(text, "x")
    assert c.crange(_ALL, keys_only=True) == ["1.2.3/4.5.6/7.8.9"]
    assert c.cget(text).content == "x"


@pytest.mark.parametrize("text", ["\t1.2.3/4.5.6/7.8.9", "1.2.3/4.5.6/7.8.9\n", "1.2.3/4. 5.6/7.8.9",
                                  "1.2.3/4 .5.6/7.8.9", "1.2.3/4.5.6/7.8.9 1"])
def test_text_refuses_other_whitespace(text):
    with pytest.raises(CoordinateError):
        vtpu.connect("mem://").cget(text)


@pytest.mark.parametrize("text, char, pos", [
    ("1.2.3/4.5.6/7.8.\u0661", "\u0661", 16), ("1.2.\uff13/4.5.6/7.8.9", "\uff13", 4),
    ("1.2.3/4.5.6/7.8\u00b2", "\u00b2", 15), ("\u00e9.2.3/4.5.6/7.8.9", "\u00e9", 0),
    ("\u00e9\u00e9.2.3/4.5.6/7.8.9\u00e9", "\u00e9", 0), ("1.\u00e9.3/4.5.6/7.8.9", "\u00e9", 2),
])
def test_non_ascii_errors_quote_the_character_and_its_position(store, text, char, pos):
    with pytest.raises(CoordinateError) as e:
        store.cget(text)
    msg = str(e.value)
    assert f"character {char!r} at position {pos}" in msg and "\ufffd" not in msg
    with pytest.raises(CoordinateError) as e:   # a lone surrogate is no character at all
        store.cget("1.2.3/4.5.6/\ud800.8.9")
    assert "position 12" in str(e.value)


def test_a_space_inside_a_group_is_named_as_a_space(store):
    for text, comp, pos in [("1.2.3/4. 5.6/7.8.9", 5, 8), ("1.2.3/4 .5.6/7.8.9", 4, 7)]:
        with pytest.raises(CoordinateError) as e:
            store.cget(text)
        assert f"component {comp} " in str(e.value) and f"holds a space at position {pos}" in \
            str(e.value) and "empty" not in str(e.value)


@pytest.mark.parametrize("text", ["1" * 10000, "1.2.3/4.5.6/7.8.9" + "x" * 10000,
                                  "\u00e9" * 10000, "*.*.*/*.*.*/*.*.[1:" + "9" * 10000])
def test_errors_quote_at_most_about_80_characters(store, text):
    with pytest.raises(CoordinateError) as e:
        store.crange(text)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("call", [
    lambda s: s.cget_many(None), lambda s: s.cdel_many(5), lambda s: s.cput_many(None, []),
    lambda s: s.ckg(_C, None), lambda s: s.cattend_many(np.ones((1, 4)), None),
    lambda s: s.cattend_many(np.ones((1, 4)), 7),
])
def test_arguments_of_the_wrong_type_are_interface_errors(store, call):
    with pytest.raises(InterfaceError):
        call(store)
