"""The engine's indexes always agree with a brute-force scan, under writes and deletes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vtpu import _core
from vtpu import index as index_mod
from vtpu.engine import Engine
from vtpu.index import NS_LEX_ROW, CoordIndex

PATHS = [None, "lex", "post", "bitmap", "z"]

small = st.integers(0, 4)
coord = st.tuples(*[small] * 9)


@st.composite
def component(draw):
    kind = draw(st.sampled_from(["any", "any", "eq", "eq", "range"]))
    if kind == "any":
        return (0, 0xFFFF)
    if kind == "eq":
        v = draw(small)
        return (v, v)
    a = draw(st.integers(0, 4))
    b = draw(st.integers(a, 5))
    return (a, b)


@st.composite
def pattern(draw):
    comps = [draw(component()) for _ in range(9)]
    return np.array([[c[0] for c in comps], [c[1] for c in comps]], dtype=np.uint16)


ops = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "del"]), coord),
               min_size=1, max_size=300)


def _replay(ops, merge):
    """Apply put/delete ops to a fresh index and to a reference set."""
    ix = CoordIndex(min_merge=merge)
    ref = set()
    for op, c in ops:
        key = _core.pack(np.array(c, dtype=np.uint16))
        if op == "put" and c not in ref:
            ix.add(key)
            ref.add(c)
        elif op == "del" and c in ref:
            ix.remove(key)
            ref.discard(c)
    return ix, ref


# Few distinct coordinates, so that keys are deleted, written again and deleted again,
# and batches long enough (over 16) for remove_many's sorted search.
POOL = [tuple((i * 7 + j * 3) % 5 for j in range(9)) + () for i in range(5)] + \
    [tuple(int(b) for b in format(i, "09b")) for i in range(60)]
batched_ops = st.lists(st.tuples(st.sampled_from(["put", "put", "del_many", "del"]),
                                  st.lists(st.sampled_from(POOL), min_size=1, max_size=40)),
                        min_size=1, max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=batched_ops, pats=st.lists(pattern(), min_size=1, max_size=4),
       merge=st.sampled_from([2, 16, 4096]))
@example(ops=[("put", POOL[5:30]), ("del_many", POOL[5:30])],
         pats=[np.array([[0] * 9, [0xFFFF] * 9], np.uint16)], merge=4096)
def test_remove_many_equals_one_by_one(ops, pats, merge):
    # remove_many (one sorted search over main) drops exactly what remove does key by
    # key: keys of main, of the delta, re-added after a delete, in any order.
    # On its own and as the engine's (whose store is its source: a key deleted and
    # written again lives in the delta while its old main row stays dead).
    ix, ref, eng = CoordIndex(min_merge=merge), set(), Engine()
    every = sorted({c for _, cs in ops for c in cs})
    eng.put_many(_core.pack_many(np.array(every, dtype=np.uint16)), ["x"] * len(every))
    eng._index.merge()   # the store's compaction: every key in main, then all deleted
    eng.delete_range(np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16))
    for op, cs in ops:
        keys = {c: _core.pack(np.array(c, dtype=np.uint16)) for c in cs}
        if op == "put":
            for c, k in keys.items():
                if c not in ref:
                    ix.add(k)
                    ref.add(c)
                eng.put(k, "x")
        else:
            gone = [k for c, k in keys.items() if c in ref]
            if op == "del_many":
                ix.remove_many(gone)
                eng.delete_many(b"".join(keys.values()))
            else:
                for k in gone:
                    ix.remove(k)
                for k in keys.values():
                    eng.delete(k)
            ref -= set(keys)
        assert len(ix) == len(ref) == eng.count(np.array([[0] * 9, [0xFFFF] * 9], np.uint16))
    for p in pats:
        assert [tuple(int(x) for x in r) for r in ix.query(p)] == _brute(ref, p)
        assert [tuple(int(x) for x in r) for r in eng.range(p, keys_only=True)] == \
            _brute(ref, p)


def _brute(ref, p):
    return sorted(c for c in ref if all(p[0, j] <= c[j] <= p[1, j] for j in range(9)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, pats=st.lists(pattern(), min_size=1, max_size=5),
       merge=st.sampled_from([2, 16, 4096]), path=st.sampled_from(PATHS))
def test_index_equals_brute_force(ops, pats, merge, path):
    ix, ref = _replay(ops, merge)
    ix.force_path = path
    assert len(ix) == len(ref)
    for p in pats:
        exp = _brute(ref, p)
        got = [tuple(int(x) for x in r) for r in ix.query(p)]
        assert got == exp
        assert ix.count(p) == len(exp)
        if exp:
            after = np.array(exp[len(exp) // 2], dtype=np.uint16)
            got = [tuple(int(x) for x in r) for r in ix.query(p, after=after, limit=3)]
            assert got == [c for c in exp if c > tuple(after)][:3]


@settings(max_examples=40, deadline=None)
@given(ops=ops, q=coord, k=st.integers(0, 12), metric=st.sampled_from(["l1", "hamming"]),
       within=st.one_of(st.none(), pattern()), merge=st.sampled_from([2, 4096]))
def test_nearest_and_neighbours_equal_brute_force(ops, q, k, metric, within, merge):
    ix, ref = _replay(ops, merge)
    qa = np.array(q, dtype=np.uint16)
    cands = ref if within is None else set(_brute(ref, within))

    def dist(c):
        if metric == "l1":
            return sum(abs(a - b) for a, b in zip(c, q))
        return sum(a != b for a, b in zip(c, q))

    exp = sorted((dist(c), c) for c in cands)[:k]
    coords, dists = ix.nearest(qa, k, metric, within)
    assert [(int(d), tuple(int(x) for x in c)) for c, d in zip(coords, dists)] == exp
    nxt = ix.neighbour(qa, "NEXT")
    later = sorted(c for c in ref if c > q)
    assert (None if nxt is None else tuple(int(x) for x in nxt)) == (later[0] if later else None)
    prv = ix.neighbour(qa, "PREV")
    earlier = sorted(c for c in ref if c < q)
    assert (None if prv is None else tuple(int(x) for x in prv)) == (earlier[-1] if earlier else None)


@settings(max_examples=60, deadline=None)
@given(ops=ops, qs=st.lists(coord, min_size=1, max_size=4), k=st.integers(0, 40),
       metric=st.sampled_from(["l1", "hamming"]), within=st.one_of(st.none(), pattern()),
       merge=st.sampled_from([2, 16, 4096]), window=st.sampled_from([1, 3, 16, 200]))
def test_nearest_over_many_windows_equals_brute_force(ops, qs, k, metric, within, merge,
                                                      window):
    # Small windows: the nearest-first window order, the stop once a window's bound is
    # past the k-th best, deleted rows of main and the delta all take part.
    ix, ref = _replay(ops, merge)
    cands = ref if within is None else set(_brute(ref, within))
    saved = index_mod.WINDOW
    index_mod.WINDOW = window
    try:
        for q in qs:
            qa = np.array(q, dtype=np.uint16)
            if metric == "l1":
                exp = sorted((sum(abs(a - b) for a, b in zip(c, q)), c) for c in cands)[:k]
            else:
                exp = sorted((sum(a != b for a, b in zip(c, q)), c) for c in cands)[:k]
            coords, dists = ix.nearest(qa, k, metric, within)
            assert dists.dtype == np.int64
            assert [(int(d), tuple(int(x) for x in c)) for c, d in zip(coords, dists)] == exp
    finally:
        index_mod.WINDOW = saved


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "del"]), coord), max_size=200),
       pats=st.lists(pattern(), min_size=1, max_size=3))
def test_engine_range_equals_brute_force(ops, pats):
    eng = Engine()
    eng._index = CoordIndex(min_merge=8)
    ref = {}
    for i, (op, c) in enumerate(ops):
        key = _core.pack(np.array(c, dtype=np.uint16))
        if op == "put":
            eng.put(key, i)
            ref[c] = i
        else:
            assert eng.delete(key) == (1 if c in ref else 0)
            ref.pop(c, None)
    for p in pats:
        exp = _brute(ref, p)
        got = eng.range(p)
        assert [tuple(int(x) for x in _core.unpack(s.key)) for s in got] == exp
        assert [s.content for s in got] == [ref[c] for c in exp]


def test_selective_patterns_do_not_scan_everything():
    """Each access path touches far fewer rows than the store holds."""
    rng = np.random.default_rng(0)
    arr = np.unique(rng.integers(1, 11, (200000, 9)).astype(np.uint16), axis=0)
    ix = CoordIndex()
    blob = _core.pack_many(arr)   # packed once: the slices below share it
    ix.add_many([blob[i:i + 18] for i in range(0, len(blob), 18)])
    ix.merge()
    n = len(arr)
    for text in ["1.2.3/4.*.*/*.*.*", "*.*.*/3.4.5/6.*.*", "*.*.*/*.*.*/4.5.6",
                 "[2:4].*.7/*.[1:3].*/*.*.9"]:
        p = _core.parse_pattern(text)
        path, cost = ix.plan(p)   # nanoseconds: a twentieth of reading every row at most
        assert cost < n * NS_LEX_ROW / 20, (text, path, cost)
        exp = arr[_core.match(arr, p)]
        assert np.array_equal(ix.query(p), exp)


def test_rare_matches_behind_free_components_are_read_from_a_posting_list():
    # The skip scan's first stretch finds no match here: what it costs per match is
    # unknown, and the scan would read every row. A posting list of a few rows (or of
    # none) is the plan, and gives the brute-force answer.
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1000, (100_000, 9)).astype(np.uint16)
    arr[:, :6] = rng.integers(0, 10, (100_000, 6))
    arr = np.unique(arr, axis=0)
    ix = CoordIndex()
    blob = _core.pack_many(arr)
    ix.add_many([blob[i:i + 18] for i in range(0, len(blob), 18)])
    ix.merge()
    for text in ["*.*.*/*.*.*/*.17.42", "*.*.*/*.*.*/*.*.1001"]:
        p = _core.parse_pattern(text)
        path, _ = ix.plan(p)
        assert path == "post", (text, path)
        assert np.array_equal(ix.query(p), arr[_core.match(arr, p)])


@pytest.mark.parametrize("path", ["lex", "post", "bitmap", "z"])
def test_each_path_on_a_larger_store(path):
    rng = np.random.default_rng(1)
    arr = np.unique(rng.integers(1, 9, (20000, 9)).astype(np.uint16), axis=0)
    ix = CoordIndex()
    blob = _core.pack_many(arr)
    ix.add_many([blob[i:i + 18] for i in range(0, len(blob), 18)])
    ix.force_path = path
    for i in range(0, len(arr), 7):   # delete some rows of main
        ix.remove(blob[18 * i: 18 * i + 18])
    alive = np.ones(len(arr), bool)
    alive[::7] = False
    for text in ["1.*.*/*.*.*/*.*.*", "*.*.*/2.3.*/*.*.*", "*.*.*/*.*.*/*.*.5",
                 "[2:4].*.*/*.[1:3].*/*.*.[5:]"]:
        p = _core.parse_pattern(text)
        exp = arr[_core.match(arr, p) & alive]
        assert np.array_equal(ix.query(p), exp), (path, text)
