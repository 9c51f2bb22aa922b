"""The column store (ColumnStore: key hash, columns, arena, compaction) and its result
type (Scrolls), each against a plain-Python reference: a dict of key -> row fields."""
import os
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtpu import _core
from vtpu.coords import NameTable, Scroll
from vtpu.errors import InterfaceError
from vtpu.results import Scrolls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # importlib mode
from _strategies import small_patterns  # noqa: E402


def key(i: int) -> bytes:
    """A packed key spreading i over a few components (so keys share long prefixes)."""
    return _core.pack(np.array([1, i % 7, 3, i // 7 % 5, 0, 0, i // 35, 2, i % 3],
                               dtype=np.uint16))


def same_content(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


_ARRAYS = [np.arange(4, dtype=np.float32), np.arange(6, dtype=">i4").reshape(2, 3),
           np.array([b"ab", b"c"]), np.array(["x", "yz"]), np.zeros(0, np.float64),
           np.array(7, dtype=np.uint16), np.arange(3, dtype=np.float32) * 2]

contents = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.none(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=3),
    st.sampled_from(_ARRAYS),
    st.just("\ud800 lone surrogate"),
    st.text(min_size=200, max_size=400),
)


class Reference:
    """What the store should hold: key -> [content, version, created, updated]."""

    def __init__(self):
        self.rows = {}

    def put(self, k, content, now):
        r = self.rows.get(k)
        if r is None:
            self.rows[k] = [content, 1, now, now]
            return 1
        r[0] = content
        r[1] += 1
        r[3] = now
        return r[1]

    def check(self, store: _core.ColumnStore, pool):
        assert len(store) == len(self.rows)
        cap, live, dead = store.hash_slots
        assert live == len(self.rows)
        assert (live + dead) * 10 <= cap * 7
        for k in pool:
            r = self.rows.get(k)
            s = store.get(k)
            if r is None:
                assert s is None and store.find(k) == -1 and k not in store
                assert store.version(k) == 0
                continue
            assert k in store
            assert s.key == k and s.version == r[1]
            assert s.created_at == r[2] and s.updated_at == r[3]
            assert same_content(s.content, r[0]), (s.content, r[0])
            assert same_content(store.content(k), r[0])
        blob = b"".join(pool)
        rows = store.find_many(blob)
        assert [int(x) >= 0 for x in rows] == [k in self.rows for k in pool]
        got = store.get_many(blob)
        assert len(got) == len(pool)
        assert got.keys == blob
        for k, s in zip(pool, got):
            assert (s is None) == (k not in self.rows)
            if s is not None:
                assert s.version == self.rows[k][1] and same_content(s.content, self.rows[k][0])
        vals = store.contents(blob)
        for k, v in zip(pool, vals):
            assert same_content(v, self.rows[k][0] if k in self.rows else None)
        assert got == store.take(rows)
        assert got.tolist() == [store.get(k) for k in pool]


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40), contents),
    st.tuples(st.just("put_many"), st.lists(st.tuples(st.integers(0, 40), contents),
                                            max_size=8)),
    st.tuples(st.just("set"), st.integers(0, 40), contents, st.integers(1, 99)),
    st.tuples(st.just("del"), st.integers(0, 40)),
    st.tuples(st.just("del_many"), st.lists(st.integers(0, 40), max_size=8)),
    st.tuples(st.just("compact")),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_store_matches_reference(seq):
    store = _core.ColumnStore()
    ref = Reference()
    pool = [key(i) for i in range(41)]
    now = 1000.0
    for op in seq:
        now += 1.0
        if op[0] == "put":
            assert store.put(pool[op[1]], op[2], now) == ref.put(pool[op[1]], op[2], now)
        elif op[0] == "put_many":
            ks = [pool[i] for i, _ in op[1]]
            before = set(ref.rows)
            want = [ref.put(k, c, now) for k, (_, c) in zip(ks, op[1])]
            versions, new = store.put_many(b"".join(ks), [c for _, c in op[1]], now)
            assert versions == want
            assert new == list(dict.fromkeys(k for k in ks if k not in before))
        elif op[0] == "set":
            k = pool[op[1]]
            fresh = k not in ref.rows
            assert store.set(k, op[2], op[3], now - 5, now) == fresh
            ref.rows[k] = [op[2], op[3], now - 5, now]
        elif op[0] == "del":
            k = pool[op[1]]
            assert store.delete(k) == (ref.rows.pop(k, None) is not None)
        elif op[0] == "del_many":
            ks = [pool[i] for i in op[1]]
            want = [k for k in dict.fromkeys(ks) if ref.rows.pop(k, None) is not None]
            assert store.delete_many(b"".join(ks)) == want
        else:
            rows_before = store.rows
            live_before = store.all_rows()
            keys_before = store.keys_of(live_before)
            remap = store.compact(arena=True)
            assert len(remap) == rows_before
            assert store.rows == len(ref.rows) and store.garbage_bytes == 0
            assert store.dead_rows == 0
            # live rows are now in key order, each with its key; the run is their keys
            assert sorted(remap[live_before]) == list(range(len(live_before)))
            assert (remap >= 0).sum() == len(live_before)
            want = sorted(keys_before[i:i + 18] for i in range(0, len(keys_before), 18))
            assert store.keys_of(store.all_rows()) == b"".join(want)
            for old, new in zip(live_before, remap[live_before]):
                assert store.keys_of([new]) == keys_before[18 * list(live_before).index(old):][:18]
            assert _core.pack_many(store.run) == b"".join(want) and store.tail_rows == 0
            assert not store.run.flags.writeable
        ref.check(store, pool)
    store.compact()
    ref.check(store, pool)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=3000), st.integers(1, 4))
def test_hash_under_churn(ids, rounds):
    """Many keys inserted and deleted over and over: tombstones are reclaimed, and every
    key is found or not found exactly as a set says."""
    store = _core.ColumnStore()
    live = set()
    for r in range(rounds):
        blob = b"".join(key(i) for i in ids)
        store.put_many(blob, ["v"] * len(ids), float(r))
        live |= set(ids)
        gone = ids[r::2]
        store.delete_many(b"".join(key(i) for i in gone))
        live -= set(gone)
        cap, n, dead = store.hash_slots
        assert n == len(live) == len(store)
        assert (n + dead) * 10 <= cap * 7
    probe = sorted(set(ids) | set(range(0, 3100, 7)))
    rows = store.find_many(b"".join(key(i) for i in probe))
    assert [bool(x >= 0) for x in rows] == [i in live for i in probe]
    store.compact()
    assert store.hash_slots[2] == 0
    rows = store.find_many(b"".join(key(i) for i in probe))
    assert [bool(x >= 0) for x in rows] == [i in live for i in probe]


def test_overwrite_reuses_space_and_compaction_frees_it():
    store = _core.ColumnStore()
    k = key(1)
    store.put(k, "x" * 100, 1.0)
    store.put(k, "y" * 40, 2.0)        # fits in place: 60 bytes become garbage
    assert store.arena_bytes == 100 and store.garbage_bytes == 60
    store.put(k, "z" * 150, 3.0)       # does not fit: appended, the old 100 are garbage
    assert store.arena_bytes == 250 and store.garbage_bytes == 100
    store.put(k, [1, 2], 4.0)          # an object: the 150 arena bytes are garbage
    assert store.garbage_bytes == 250
    store.put(key(2), "kept", 5.0)
    store.compact(arena=False)
    assert store.garbage_bytes == 250
    store.compact()            # garbage is over a quarter of the arena: rewritten
    assert store.arena_bytes == 4 and store.garbage_bytes == 0
    assert store.get(k).content == [1, 2] and store.get(k).version == 4
    assert store.get(key(2)).content == "kept"


def test_short_numbers_are_held_in_their_rows_and_read_back_on_every_path():
    """A number of at most 5 msgpack bytes (an int of 32 bits, a bool) takes no arena
    bytes; one just longer does. Each reads back as itself from a point read, a
    gather, after a rewrite of the arena and after a load, and turning one into text
    and back keeps the garbage count exact."""
    import msgpack

    edges = [0, 1, -1, -32, -33, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32,
             -(1 << 31), -(1 << 31) - 1, (1 << 63) - 1, -(1 << 63), True, False, 0.5]
    store = _core.ColumnStore()
    for i, v in enumerate(edges):
        store.put(key(i), v, 1.0)
    want_arena = sum(len(msgpack.packb(v)) for v in edges if len(msgpack.packb(v)) > 5)
    assert store.arena_bytes == want_arena and store.garbage_bytes == 0
    blob = b"".join(key(i) for i in range(len(edges)))
    for got in ([store.get(key(i)).content for i in range(len(edges))],
                store.get_many(blob).contents, [s.content for s in store.get_many(blob)]):
        assert got == edges and [type(g) for g in got] == [type(v) for v in edges]
    # number -> text -> number: the text's bytes are garbage once the number is back
    store.put(key(0), "t" * 10, 2.0)
    store.put(key(0), 7, 3.0)
    assert store.garbage_bytes == 10 and store.get(key(0)).content == 7
    store.put(key(1), 1 << 40, 4.0)    # a long number over a short one: 9 arena bytes
    store.put(key(1), 5, 5.0)          # and back: those 9 are garbage
    assert store.garbage_bytes == 19
    store.delete(key(len(edges) - 1))  # a float in the arena: its 9 bytes too
    assert store.garbage_bytes == 28
    store.compact(arena=True)
    assert store.garbage_bytes == 0 and store.arena_bytes == want_arena - 9
    want = [7, 5] + edges[2:-1]
    assert store.get_many(b"".join(key(i) for i in range(len(want)))).contents == want
    # a load (the durable store's start-up) keeps them as a write does
    loaded = _core.ColumnStore()
    loaded.load([(key(i), msgpack.packb(v), 1, 1.0, 1.0) for i, v in enumerate(want)])
    assert [loaded.get(key(i)).content for i in range(len(want))] == want
    assert loaded.arena_bytes == store.arena_bytes


def test_arrays_keep_dtype_shape_and_are_read_only():
    store = _core.ColumnStore()
    for i, a in enumerate(_ARRAYS):
        store.put(key(i), a, 1.0)
    for i, a in enumerate(_ARRAYS):
        got = store.get(key(i)).content
        assert same_content(got, a) and not got.flags.writeable
    assert len(store.array_types) == len(_ARRAYS)


def test_packed_contents_decode_when_read():
    from vtpu.protocol import pack_value

    store = _core.ColumnStore()
    store.set(key(1), pack_value({"a": [1, 2]}), 3, 1.0, 2.0, packed=True)
    store.set(key(2), pack_value(np.arange(3, dtype=np.int16)), 1, 1.0, 1.0, packed=True)
    assert store.get(key(1)).content == {"a": [1, 2]}
    assert same_content(store.get(key(2)).content, np.arange(3, dtype=np.int16))
    assert store.get_many(key(1) + key(2)).contents[0] == {"a": [1, 2]}
    with pytest.raises(InterfaceError):
        store.set(key(3), "not bytes", 1, 1.0, 1.0, packed=True)


_NUMBER = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.booleans(),
                    st.floats(allow_nan=False), st.sampled_from([0, -1, -32, -33, 127, 128,
                                                                 255, 256, 65535, 65536,
                                                                 -129, -32769, 1.0, -0.0]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_NUMBER, min_size=1, max_size=30))
def test_numbers_are_kept_as_their_msgpack_bytes(values):
    """A number content is its msgpack bytes in the arena (no Python object held): it
    reads back equal and of its type, through get, the column result and its wire form
    (the bytes msgpack's packb makes), before and after a compaction."""
    import msgpack

    from vtpu import protocol as P

    store = _core.ColumnStore()
    blob = b"".join(key(i) for i in range(len(values)))
    store.put_many(blob, list(values), 1.0)
    for round_ in range(2):
        got = [store.get(key(i)).content for i in range(len(values))]
        assert got == values and [type(g) for g in got] == [type(v) for v in values]
        res = store.get_many(blob)
        assert list(res.contents) == values
        assert P.unpackb(P.encode_scrolls(res))[1] == msgpack.unpackb(msgpack.packb(values))
        assert P.encode_scrolls(res) == P.encode_scrolls(list(res))   # the packb bytes
        store.compact()


def test_bad_arguments():
    store = _core.ColumnStore()
    for bad in (b"short", "x" * 18, None):
        with pytest.raises(InterfaceError):
            store.put(bad, "x", 1.0)
        with pytest.raises(InterfaceError):
            store.get(bad)
    with pytest.raises(InterfaceError, match="multiple of 18"):
        store.get_many(b"x" * 19)
    with pytest.raises(InterfaceError, match="2 coordinates but 1 contents"):
        store.put_many(key(1) + key(2), ["a"], 1.0)
    assert len(store) == 0
    with pytest.raises(IndexError):
        store.take([5])
    # row ids in any integer form numpy makes one array of: a 0-d one is one row
    store.put(key(1), "a", 1.0)
    for rows in ([0], (0,), np.array(0), np.array([0], dtype=np.int32)):
        assert [s.content for s in store.take(rows)] == ["a"]


# -- the result type -------------------------------------------------------------------

def _result(n_missing=True):
    names = NameTable()
    names.extend(["alpha"])
    store = _core.ColumnStore(names)
    ks = [key(i) for i in range(6)]
    ks[5] = _core.pack(np.array([0xF000, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.uint16))
    for i, k in enumerate(ks):
        if i != 2 or not n_missing:
            store.put(k, f"text {i}" if i % 2 else np.full(3, i, np.float32), float(i))
    return store, ks, store.get_many(b"".join(ks))


def test_scrolls_behave_like_a_list():
    store, ks, res = _result()
    ref = [store.get(k) for k in ks]
    assert ref[2] is None
    assert isinstance(res, Scrolls)
    assert len(res) == 6 and res == ref and ref == res.tolist() and not (res != ref)
    assert res[0] == ref[0] and res[-1] == ref[-1] and res[2] is None
    with pytest.raises(IndexError):
        res[6]
    with pytest.raises(IndexError):
        res[-7]
    for sl in (slice(1, 4), slice(None, None, -1), slice(0, 6, 2), slice(5, 0, -2),
               slice(10, 20)):
        part = res[sl]
        assert isinstance(part, Scrolls) and part == ref[sl]
        assert part.keys == b"".join(ks[sl])
    assert list(res) == ref and list(reversed(res)) == ref[::-1]
    assert ref[3] in res and res.index(ref[3]) == 3 and res.count(None) == 1
    assert res.take([4, -1, 0]) == [ref[4], ref[5], ref[0]]
    assert res == store.get_many(b"".join(ks))
    assert res != ref[:5] and res != ref[::-1]
    assert (res == (1, 2)) is False
    assert Scrolls.from_scrolls(ref) == res
    assert res + [None] == ref + [None]
    assert repr(res) == repr(ref)


def test_scrolls_from_columns():
    names = NameTable()
    ks = [key(i) for i in range(4)]
    r = Scrolls.from_columns(b"".join(ks), ["a", None, b"c", {"d": 1}],
                             np.array([3, 0, 1, 7]), [1.0, 0.0, 2.0, 3.0],
                             [1.5, 9.0, 2.5, 3.5], None, names)
    assert r == [Scroll(ks[0], "a", 3, 1.0, 1.5, names), None,
                 Scroll(ks[2], b"c", 1, 2.0, 2.5, names), Scroll(ks[3], {"d": 1}, 7, 3.0, 3.5, names)]
    assert r.found.tolist() == [True, False, True, True] and r.names is names
    # stored(): the items where a scroll is, itself when that is every one
    kept = r.stored()
    assert kept == [x for x in r if x is not None] and kept.keys == ks[0] + ks[2] + ks[3]
    assert kept.stored() is kept and kept.names is names
    assert len(Scrolls.from_columns(ks[1], [None], [0], [0.0], [0.0]).stored()) == 0
    assert r.versions.tolist() == [3, 0, 1, 7] and r.updated_at.tolist() == [1.5, 0.0, 2.5, 3.5]
    assert r.contents == ["a", None, b"c", {"d": 1}] and r.keys == b"".join(ks)
    # an explicit mask wins over the versions; a stacked array becomes read-only rows
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = Scrolls.from_columns(b"".join(ks), emb, [1, 1, 1, 1], [0.0] * 4, [0.0] * 4,
                             [True, True, False, True])
    emb[0, 0] = 99  # the result holds its own copy
    assert a[2] is None and a[0].content.tolist() == [0.0, 1.0, 2.0]
    assert a[0].content.dtype == np.float32 and not a[0].content.flags.writeable
    assert type(a.take([0, 1, 3]).contents) is np.ndarray
    assert a.take([0, 1, 3]).contents.tolist() == [[0, 1, 2], [3, 4, 5], [9, 10, 11]]
    empty = Scrolls.from_columns(b"", [], [], [], [])
    assert len(empty) == 0 and empty == [] and empty.contents == []
    for bad in (
        dict(keys=b"x" * 17),
        dict(contents=["a"]),
        dict(versions=[1, 2]),
        dict(created=[0.0] * 5),
        dict(found=[True]),
        dict(versions=["one"] * 4),
        dict(contents=np.zeros((3, 2))),
    ):
        cols = dict(keys=b"".join(ks), contents=[1, 2, 3, 4], versions=[1] * 4,
                    created=[0.0] * 4, updated=[0.0] * 4, found=None)
        cols.update(bad)
        with pytest.raises(InterfaceError):
            Scrolls.from_columns(**cols)


def test_scrolls_concat():
    store, ks, res = _result()
    other = _core.ColumnStore(res.names)
    other.put(key(40), np.arange(2, dtype=np.int8), 1.0)   # another store's type table
    other.put(key(41), np.full(3, 7, np.float32), 1.0)
    more = other.get_many(key(40) + key(41) + key(42))
    cols = Scrolls.from_columns(key(50), [["x"]], [2], [1.0], [1.0])
    both = Scrolls.concat([res, more, res[3:], cols])
    ref = res.tolist() + more.tolist() + res[3:].tolist() + cols.tolist()
    assert type(both) is Scrolls and both == ref and len(both) == 13
    assert both.keys == res.keys + more.keys + res[3:].keys + cols.keys
    assert both[6].content.dtype == np.int8 and both[6].content.tolist() == [0, 1]
    assert both[7].content.tolist() == [7.0] * 3 and both[7].content.dtype == np.float32
    assert both.versions.tolist() == [s.version if s else 0 for s in ref]
    assert both.take([0, 4, 7]).contents.tolist() == [[0, 0, 0], [4, 4, 4], [7, 7, 7]]
    assert Scrolls.concat([res]) is res
    with pytest.raises(InterfaceError):
        Scrolls.concat([])
    with pytest.raises(InterfaceError):
        Scrolls.concat([res, ref])


def test_scrolls_pickle_as_their_items():
    store = _core.ColumnStore()
    store.put(key(1), "a", 1.0)
    store.put(key(2), np.arange(3), 2.0)
    res = store.get_many(key(1) + key(3) + key(2))
    back = pickle.loads(pickle.dumps(res))
    assert isinstance(back, Scrolls) and back == res


def test_scrolls_columns():
    store, ks, res = _result()
    ref = [store.get(k) for k in ks]
    assert res.keys == b"".join(ks)
    assert (res.coords == _core.unpack_many(b"".join(ks))).all()
    assert res.coordinates == [_core.format_key(k, res.names) for k in ks]
    assert res.coordinates[5].startswith("alpha.1.1/")
    assert list(res.found) == [s is not None for s in ref]
    assert list(res.versions) == [0 if s is None else s.version for s in ref]
    assert list(res.created_at) == [0.0 if s is None else s.created_at for s in ref]
    assert list(res.updated_at) == [0.0 if s is None else s.updated_at for s in ref]
    got = res.contents
    assert isinstance(got, list) and len(got) == 6
    for g, s in zip(got, ref):
        assert same_content(g, None if s is None else s.content)
    # every item a float32 (3,) array: one stacked (N, 3) array
    arrays = res[0:6:2][0:1] + []
    assert len(arrays) == 1
    stacked = store.get_many(ks[0] + ks[4]).contents
    assert isinstance(stacked, np.ndarray) and stacked.shape == (2, 3)
    assert stacked.dtype == np.float32 and (stacked[1] == 4).all() and (stacked[0] == 0).all()
    empty = store.get_many(b"")
    assert len(empty) == 0 and empty.contents == [] and empty.keys == b""
    assert empty.coords.shape == (0, 9) and empty.coordinates == []


def test_scrolls_are_snapshots():
    store, ks, res = _result(n_missing=False)
    before = res.tolist()
    for k in ks:
        store.put(k, "overwritten", 99.0)
    store.delete(ks[0])
    store.compact()
    assert res == before
    assert res.contents[1] == "text 1"


def test_format_key_matches_format_coord():
    names = NameTable()
    names.extend(["alpha", "beta"])
    for c in ([0] * 9, [0xEFFF] * 9, [1, 2, 3, 0xF001, 5, 6, 7, 8, 0xF000]):
        k = _core.pack(np.array(c, dtype=np.uint16))
        assert _core.format_key(k, names) == _core.format_coord(np.array(c, np.uint16), names)
    assert _core.format_keys(key(1) + key(2)) == [_core.format_key(key(1)),
                                                  _core.format_key(key(2))]
    with pytest.raises(InterfaceError):
        _core.format_key(b"short")
    with pytest.raises(InterfaceError):
        _core.format_keys(b"x" * 17)


# -- the engine: store and index together ----------------------------------------------

small = st.integers(0, 3)
coord9 = st.tuples(*[small] * 9)


def patterns():
    return small_patterns(small, 2)


engine_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), coord9, st.integers(0, 99)),
    st.tuples(st.just("put_many"), st.lists(coord9, max_size=12)),
    st.tuples(st.just("del"), coord9),
    st.tuples(st.just("del_many"), st.lists(coord9, max_size=6)),
    st.tuples(st.just("del_range"), patterns()),
), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(engine_ops, st.lists(patterns(), min_size=1, max_size=3), coord9,
       st.sampled_from([2, 8, 4096]), st.sampled_from([None, "lex", "post", "bitmap", "z"]))
def test_engine_store_and_index_agree_with_brute_force(ops, pats, q, merge, path):
    """Writes, deletes and compactions (the index's merges) keep the store, its sorted run
    and the index answering exactly what a dict would, on every access path."""
    from vtpu.engine import Engine
    from vtpu.index import CoordIndex

    eng = Engine()
    eng._index = CoordIndex(min_merge=merge, source=eng._map)
    eng._index.force_path = path
    ref = {}
    pk = lambda c: _core.pack(np.array(c, dtype=np.uint16))  # noqa: E731
    for i, op in enumerate(ops):
        if op[0] == "put":
            eng.put(pk(op[1]), op[2])
            ref[op[1]] = op[2]
        elif op[0] == "put_many":
            eng.put_many(b"".join(pk(c) for c in op[1]), [f"v{i}"] * len(op[1]))
            ref.update((c, f"v{i}") for c in op[1])
        elif op[0] == "del":
            assert eng.delete(pk(op[1])) == (1 if op[1] in ref else 0)
            ref.pop(op[1], None)
        elif op[0] == "del_many":
            want = len({c for c in op[1] if c in ref})
            assert eng.delete_many(b"".join(pk(c) for c in op[1])) == want
            for c in op[1]:
                ref.pop(c, None)
        else:
            p = op[1]
            gone = [c for c in ref if all(p[0, j] <= c[j] <= p[1, j] for j in range(9))]
            assert eng.delete_range(p) == len(gone)
            for c in gone:
                del ref[c]
    ix = eng._index
    assert len(eng._map) == len(ix) == len(ref)
    assert ix.main is eng._map.run   # one copy of the keys
    # main row r is alive exactly when store row r is live: rows are shared
    live = eng._map.all_rows()
    assert list(np.flatnonzero(ix.alive)) == [r for r in live if r < len(ix.main)]
    everything = sorted(ref)
    for p in pats:
        exp = [c for c in everything if all(p[0, j] <= c[j] <= p[1, j] for j in range(9))]
        got = eng.range(p)
        assert isinstance(got, Scrolls)
        assert [tuple(int(x) for x in r) for r in got.coords] == exp
        assert got.contents == [ref[c] for c in exp] or (not exp and got.contents == [])
        assert eng.count(p) == len(exp)
    qa = np.array(q, dtype=np.uint16)
    coords, dists = eng.nearest(qa, 5, "l1")
    exp = sorted((sum(abs(a - b) for a, b in zip(c, q)), c) for c in ref)[:5]
    assert [(int(d), tuple(int(x) for x in c)) for c, d in zip(coords, dists)] == exp
    later = [c for c in everything if c > q]
    nxt = eng.hier(qa, "NEXT")
    assert (None if nxt is None else tuple(int(x) for x in nxt)) == (later[0] if later else None)
    got = eng.get_many(b"".join(pk(c) for c in everything) + pk((4,) * 9))
    assert [s.content for s in got[:-1]] == [ref[c] for c in everything] and got[-1] is None
    ix.merge()
    assert ix.main is eng._map.run and eng._map.tail_rows == 0
    assert [tuple(int(x) for x in r) for r in eng._map.run] == everything


def test_a_key_deleted_from_the_run_and_written_again_is_a_new_row():
    from vtpu.engine import Engine
    from vtpu.index import CoordIndex

    eng = Engine()
    eng._index = ix = CoordIndex(min_merge=2, source=eng._map)
    keys = [key(i) for i in range(4)]
    eng.put_many(b"".join(keys), ["a", "b", "c", "d"])   # merged: the sorted run
    assert eng._map.tail_rows == 0 and len(ix.main) == 4
    assert eng.delete(keys[1]) == 1
    assert eng.put(keys[1], "b2") == 1
    row = eng._map.find(keys[1])
    assert row >= len(ix.main)                      # in the tail, not the old run row
    assert list(np.flatnonzero(ix.alive)) == [r for r in eng._map.all_rows() if r < 4]
    assert [s.content for s in eng.range(np.array([[0] * 9, [0xFFFF] * 9], np.uint16))] \
        == ["a", "b2", "c", "d"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), contents), max_size=40), st.booleans())
def test_load_from_storage_rows(items, ordered):
    """load() of (key, packed content, version, times) rows equals the same rows set()
    one by one, in key order or not (duplicates: the last one wins, as with set())."""
    from vtpu.protocol import pack_value

    rows = []
    for v, (i, c) in enumerate(items):
        if isinstance(c, str) and "\ud800" in c:
            continue   # no UTF-8 form: storage cannot hold it
        rows.append((key(i), pack_value(c), v + 1, float(v), float(v) + 0.5))
    if ordered:
        rows = sorted({r[0]: r for r in rows}.values())
    loaded = _core.ColumnStore()
    assert loaded.load(iter(rows)) == len(rows)
    ref = _core.ColumnStore()
    for r in rows:
        ref.set(*r, packed=True)
    pool = [key(i) for i in range(61)]
    blob = b"".join(pool)
    assert loaded.get_many(blob) == ref.get_many(blob)
    assert len(loaded) == len(ref) and loaded.tail_rows == 0 and loaded.dead_rows == 0
    assert _core.pack_many(loaded.run) == b"".join(sorted({r[0] for r in rows}))
    if rows:
        with pytest.raises(InterfaceError, match="empty"):
            loaded.load([])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1700, 9000), st.booleans()), min_size=2, max_size=8))
def test_large_results_made_and_freed_in_any_order_keep_their_own_columns(steps):
    """A freed large result's column block is kept for the next one of about its size:
    results of varying sizes, some kept and some dropped, each still reads exactly its
    own rows while later ones are made."""
    store = _core.ColumnStore()
    n = 9000
    keys = _core.pack_many(np.array([[1, 1, 1, 1, 1, 1, i // 1000 + 1, i % 1000, 1]
                                     for i in range(n)], np.uint16))
    store.put_many(keys, [f"c{i}" for i in range(n)], 1000.0)
    kept = []
    for m, keep in steps:
        res = store.get_many(keys[:m * 18])
        kept.append((m, res))
        if not keep:
            kept.pop()
            del res
        for km, r in kept:
            assert len(r) == km and r.versions.tolist() == [1] * km
            assert r.contents == [f"c{i}" for i in range(km)]


def test_keep_heap_lets_a_process_reuse_freed_large_blocks():
    """After keep_heap(), a process that makes and frees a few hundred KB again and
    again has its pages kept (no page faults per round); with glibc's default
    thresholds it gives them back and each round faults them in again."""
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/maps"):
        pytest.skip("glibc's allocator on Linux")
    import subprocess
    code = (
        "import resource, sys\n"
        "from vtpu import _core\n"
        # The baseline: glibc's default thresholds (128 KiB, no pad), fixed rather than
        # adaptive, since its adaptive ones may or may not trim these patterns
        # depending on what ran before.
        "ok = _core.keep_heap() if sys.argv[1] == '1' else "
        "_core.keep_heap(128 << 10, 0, 128 << 10)\n"
        "def churn():\n"   # a result's few large buffers: made together, freed together
        "    bufs = [bytearray(size) for size in (700 << 10, 400 << 10, 300 << 10)]\n"
        "    for b in bufs:\n"
        "        b[::4096] = b'x' * len(b[::4096])\n"
        "def pages():\n"  # a BATCH's encoded pages: 24 MB in blocks of 1.3 MB, held together
        "    bufs = [bytearray(1300 << 10) for _ in range(18)]\n"
        "    for b in bufs:\n"
        "        b[::4096] = b'x' * len(b[::4096])\n"
        "out = [ok]\n"
        "for work in (churn, pages):\n"
        "    for _ in range(3): work()\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(20): work()\n"
        "    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)\n"
        "print(*out)\n")
    got = {}
    for arg in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        got[arg] = (out[0] == "True", float(out[1]), float(out[2]))
    if not got["1"][0]:
        pytest.skip("not glibc: keep_heap is a no-op")
    assert got["1"][1] < 5 < got["0"][1]
    # 24 MB held at once and freed (past the 2 MB pad): kept, not faulted in again.
    assert got["1"][2] < 50 < got["0"][2]
