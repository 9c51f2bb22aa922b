"""CRANGE reads its scrolls by store row (the index's hit positions in the store's sorted
run): the result matches a plain reference under writes, deletes and compactions made
before the query and between its steps, on every access path."""
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtpu import _core, engine as engine_mod, index as index_mod
from vtpu.engine import Engine
from vtpu.errors import InterfaceError
from vtpu.index import CoordIndex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # importlib mode
from _strategies import small_patterns  # noqa: E402

small = st.integers(0, 3)
coord = st.tuples(*[small] * 9)


def pattern():
    return small_patterns(small, 3)


write = st.one_of(
    st.tuples(st.just("put"), coord),
    st.tuples(st.just("put_many"), st.lists(coord, max_size=8)),
    st.tuples(st.just("del"), coord),
    st.tuples(st.just("del_many"), st.lists(coord, max_size=5)),
    st.tuples(st.just("del_range"), pattern()),
    st.tuples(st.just("readd"), coord),      # delete, then write again: a new tail row
    st.tuples(st.just("compact"),),
)


def pk(c) -> bytes:
    return _core.pack(np.array(c, dtype=np.uint16))


def matches(p, c) -> bool:
    return all(p[0, j] <= c[j] <= p[1, j] for j in range(9))


def apply(eng: Engine, ref: dict, op: tuple, tag: int) -> None:
    """Apply one write to the engine and to the reference dict."""
    kind = op[0]
    if kind == "put":
        eng.put(pk(op[1]), tag)
        ref[op[1]] = tag
    elif kind == "put_many":
        eng.put_many(b"".join(pk(c) for c in op[1]), [f"v{tag}"] * len(op[1]))
        ref.update((c, f"v{tag}") for c in op[1])
    elif kind == "del":
        assert eng.delete(pk(op[1])) == (1 if op[1] in ref else 0)
        ref.pop(op[1], None)
    elif kind == "del_many":
        want = len({c for c in op[1] if c in ref})
        assert eng.delete_many(b"".join(pk(c) for c in op[1])) == want
        for c in op[1]:
            ref.pop(c, None)
    elif kind == "del_range":
        gone = [c for c in ref if matches(op[1], c)]
        assert eng.delete_range(op[1]) == len(gone)
        for c in gone:
            del ref[c]
    elif kind == "readd":
        eng.delete(pk(op[1]))
        eng.put(pk(op[1]), f"again{tag}")
        ref[op[1]] = f"again{tag}"
    else:
        eng._index.merge()   # the store's compaction: every row id changes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(write, min_size=1, max_size=40),
       during=st.lists(write, max_size=12),
       p=pattern(),
       limit=st.one_of(st.none(), st.integers(1, 20)),
       after=st.one_of(st.none(), coord),
       merge=st.sampled_from([2, 8, 4096]),
       path=st.sampled_from([None, "lex", "post", "bitmap", "z"]))
def test_range_by_row_equals_reference(before, during, p, limit, after, merge, path):
    """A CRANGE answers the keys matching when it started, in coordinate order (after
    ``after``, at most ``limit``), each with its content when it is read; a key deleted
    meanwhile is left out, one deleted and written again is read at its new row."""
    eng = Engine()
    eng._index = CoordIndex(min_merge=merge, source=eng._map)
    eng._index.force_path = path
    ref: dict = {}
    for i, op in enumerate(before):
        apply(eng, ref, op, i)
    snap = sorted(c for c in ref if matches(p, c) and (after is None or c > after))
    if limit is not None:
        snap = snap[:limit]
    with pytest.MonkeyPatch.context() as mp:
        # Small windows: the query takes a step per couple of rows, and writes and
        # compactions land between them.
        mp.setattr(index_mod, "WINDOW", 2)
        mp.setattr(engine_mod, "GATHER", 1)
        steps = eng.range_steps(p, limit, None if after is None else pk(after))
        todo = list(during)
        tag = len(before)
        try:
            steps.send(None)   # the query starts: its snapshot is taken
            while True:
                if todo:
                    apply(eng, ref, todo.pop(0), tag)
                    tag += 1
                steps.send(None)
        except StopIteration as stop:
            got = stop.value
    exp = [c for c in snap if c in ref]
    assert [tuple(int(x) for x in r) for r in got.coords] == exp
    assert list(got.contents) == [ref[c] for c in exp]
    assert [s.version for s in got] == [eng._map.version(pk(c)) for c in exp]
    # Read once more, with nothing in between: exactly the reference.
    now = sorted(c for c in ref if matches(p, c) and (after is None or c > after))
    if limit is not None:
        now = now[:limit]
    res = eng.range(p, limit, None if after is None else pk(after))
    assert [tuple(int(x) for x in r) for r in res.coords] == now
    assert list(res.contents) == [ref[c] for c in now]
    keys = eng.range(p, limit, None if after is None else pk(after), keys_only=True)
    assert [tuple(int(x) for x in r) for r in keys] == now


@settings(max_examples=80, deadline=None)
@given(st.lists(coord, max_size=60), st.lists(coord, max_size=20))
def test_lower_bounds_equals_lower_bound(arr, keys):
    a = np.unique(np.array(arr, dtype=np.uint16).reshape(-1, 9), axis=0)
    k = np.unique(np.array(keys, dtype=np.uint16).reshape(-1, 9), axis=0)
    got = _core.lower_bounds(np.ascontiguousarray(a), np.ascontiguousarray(k))
    assert list(got) == [_core.lower_bound(a, row) for row in k]


def test_lower_bounds_refuses_unsorted_keys():
    a = np.zeros((3, 9), np.uint16)
    a[:, 0] = [1, 2, 3]
    k = np.zeros((2, 9), np.uint16)
    k[:, 0] = [3, 1]
    with pytest.raises(InterfaceError, match="row 1 is below row 0"):
        _core.lower_bounds(a, k)


def test_rows_at_maps_run_positions_and_looks_up_the_rest():
    eng = Engine()
    eng._index = ix = CoordIndex(min_merge=2, source=eng._map)
    m = eng._map
    keys = [pk((i,) + (0,) * 8) for i in range(6)]
    eng.put_many(b"".join(keys[:4]), ["a", "b", "c", "d"])   # merged: the sorted run
    run = m.run
    assert m.tail_rows == 0 and len(run) == 4
    extra = _core.unpack_many(keys[4] + keys[5])
    eng.put(keys[4], "e")                                     # a tail row
    assert list(m.rows_at(run, np.array([0, 3, -1, 2]), extra)) == [0, 3, 4, 2]
    # deleted: left out; deleted and written again: found at its new row
    eng.delete(keys[3])
    eng.delete(keys[0])
    eng.put(keys[0], "a2")
    new0 = m.find(keys[0])
    assert new0 >= 4
    assert list(m.rows_at(run, np.array([0, 1, 3, -2]), extra)) == [new0, 1]
    assert [s.content for s in m.take(m.rows_at(run, np.array([0, 1]), extra))] == ["a2", "b"]
    # after a compaction the old run's positions are looked up by key
    ix.merge()
    assert m.run is not run
    rows = m.rows_at(run, np.array([0, 1, 2, 3, -1]), extra)
    assert [s.content for s in m.take(rows)] == ["a2", "b", "c", "e"]
    # a run that is not the store's (an index of its own) is looked up likewise
    own = np.ascontiguousarray(run.copy())
    assert [s.content for s in m.take(m.rows_at(own, np.array([2, 1]), extra))] == ["c", "b"]
    with pytest.raises(InterfaceError, match="position 4 is outside"):
        m.rows_at(run, np.array([4]), extra)
    with pytest.raises(InterfaceError, match="position -3 is outside"):
        m.rows_at(run, np.array([-3]), extra)
    with pytest.raises(InterfaceError):
        m.rows_at(run, np.array([[0]]), extra)
    assert len(m.rows_at(run, np.array([], dtype=np.int64), extra)) == 0
