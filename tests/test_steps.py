"""Instructions in steps (vtpu.steps): the same answers however finely they are sliced,
and what a request in steps sees when others write between its steps.

The plain engine methods run the step generators to completion; here the step sizes are
shrunk (a few rows or scrolls per step, so every instruction takes many steps and every
window boundary is crossed) and the answers compared with those of the default sizes.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtpu import _core, engine as engine_mod, index as index_mod, phext
from vtpu.engine import Engine
from vtpu.errors import LimitError, RequestTimeout
from vtpu.index import CoordIndex
from vtpu.steps import Best, run, smallest

small = st.integers(1, 4)
coord = st.tuples(*[small] * 9)


@st.composite
def pattern(draw):
    comps = []
    for _ in range(9):
        kind = draw(st.sampled_from(["any", "any", "eq", "range"]))
        if kind == "any":
            comps.append((0, 0xFFFF))
        elif kind == "eq":
            v = draw(small)
            comps.append((v, v))
        else:
            a = draw(st.integers(1, 4))
            comps.append((a, draw(st.integers(a, 5))))
    return np.array([[c[0] for c in comps], [c[1] for c in comps]], dtype=np.uint16)


TINY = {"WINDOW": 3, "GATHER_STEP": 2}
TINY_ENGINE = {"GATHER": 2, "DELETE_STEP": 2, "PUT_STEP": 3, "EDGE_STEP": 2, "PHEXT_STEP": 2,
               "SCORES_PER_STEP": 4}


@contextlib.contextmanager
def tiny_steps():
    """Shrink every step size, so that each instruction takes many steps."""
    saved = [(mod, name, getattr(mod, name)) for mod, names in
             ((index_mod, TINY), (engine_mod, TINY_ENGINE), (phext, {"PARSE_STEP": 2}))
             for name in names]
    for mod, names in ((index_mod, TINY), (engine_mod, TINY_ENGINE), (phext, {"PARSE_STEP": 2})):
        for name, v in names.items():
            setattr(mod, name, v)
    try:
        yield
    finally:
        for mod, name, v in saved:
            setattr(mod, name, v)


def key(c) -> bytes:
    return _core.pack(np.array(c, dtype=np.uint16))


def store(coords, dead=(), vectors=False) -> Engine:
    """An engine holding ``coords`` (text, or 4-float vectors), then ``dead`` deleted
    (rows of main dead, a delta of new keys on top: every part of the index used)."""
    e = Engine()
    e._index = CoordIndex(min_merge=8, source=e._map)
    rng = np.random.default_rng(len(coords))
    for i, c in enumerate(coords):
        e.put(key(c), rng.standard_normal(4) if vectors else f"text {i}")
    for c in dead:
        e.delete(key(c))
    return e


def steps_of(gen) -> int:
    """Run a step generator to completion and count its steps."""
    n = 0
    try:
        while True:
            gen.send(None)
            n += 1
    except StopIteration:
        return n


def same(a, b) -> None:
    """Equal results: arrays, scroll lists, dicts of those."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif not isinstance(a, (str, bytes, np.ndarray, dict)) and hasattr(a, "__len__") \
            and len(a) and hasattr(a[0], "key"):   # a list of scrolls, or a Scrolls
        assert [(s.key, s.content if not isinstance(s.content, np.ndarray) else
                 s.content.tolist(), s.version) for s in a] == \
               [(s.key, s.content if not isinstance(s.content, np.ndarray) else
                 s.content.tolist(), s.version) for s in b]
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12) if a.dtype.kind == "f" \
            else np.testing.assert_array_equal(a, b)
    else:
        assert a == b


stores = st.lists(coord, min_size=1, max_size=60, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coords=stores, pats=st.lists(pattern(), min_size=1, max_size=3),
       path=st.sampled_from([None, "lex", "post", "bitmap", "z"]), data=st.data())
def test_queries_in_tiny_steps_equal_one_step(coords, pats, path, data):
    dead = data.draw(st.lists(st.sampled_from(coords), unique=True, max_size=len(coords) // 2))
    big = store(coords, dead)
    small_ = store(coords, dead)
    big._index.force_path = small_._index.force_path = path
    q = np.array(data.draw(coord), dtype=np.uint16)
    expect = []
    for p in pats:
        expect.append((big.range(p), big.count(p), big.range(p, limit=3, keys_only=True),
                       big.nearest(q, 5), big.nearest(q, 3, "hamming", p),
                       big.export_phext(p, skip_invalid=True)))
    with tiny_steps():
        for p, exp in zip(pats, expect):
            got = (small_.range(p), small_.count(p), small_.range(p, limit=3, keys_only=True),
                   small_.nearest(q, 5), small_.nearest(q, 3, "hamming", p),
                   small_.export_phext(p, skip_invalid=True))
            same(got, exp)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coords=stores, p=pattern(), top_k=st.one_of(st.none(), st.integers(0, 8)))
def test_attention_in_tiny_steps_equals_one_step(coords, p, top_k):
    text = store(coords)
    vec = store(coords, vectors=True)
    q = key(coords[0])   # its vector; the distance fallback when nothing matches
    windows = np.stack([p, p, np.array([[0] * 9, [0xFFFF] * 9], np.uint16)])
    Q = np.random.default_rng(1).standard_normal((3, 4))
    exp = (text.attend(key(coords[0]), p, top_k=top_k),
           vec.attend(q, p, top_k=top_k, values=p),
           vec.attend_many(Q, windows, top_k=top_k, return_weights=True),
           vec.attend_many(Q, windows))
    with tiny_steps():
        got = (text.attend(key(coords[0]), p, top_k=top_k),
               vec.attend(q, p, top_k=top_k, values=p),
               vec.attend_many(Q, windows, top_k=top_k, return_weights=True),
               vec.attend_many(Q, windows))
    same(got, exp)


def test_kg_and_phext_in_tiny_steps_equal_one_step():
    coords = [(a, b, 1, 1, 1, 1, 1, 1, c) for a in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2)]
    e1, e2 = store(coords), store(coords)
    for e in (e1, e2):   # an edge whose content leads elsewhere
        e.put(key((1, 1, 1, 1, 1, 1, 1, 1, 3)), "3.3.1/1.1.1/1.1.2")
    start = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0xFFFF]], np.uint16)
    deltas = np.stack([_core.parse_delta("*.0.0/0.0.0/0.0.0"),
                       _core.parse_delta("0.+1.0/0.0.0/0.0.0")])
    doc = e1.export_phext()
    exp = [s.key for s in e1.kg(start, deltas, hops=2, max_frontier=4)]
    with tiny_steps():
        assert [s.key for s in e2.kg(start, deltas, hops=2, max_frontier=4)] == exp
        assert e2.export_phext() == doc
        e3 = Engine()
        assert e3.import_phext(doc) == len(phext.parse_phext(doc))
        assert e3.export_phext() == doc


def test_a_query_sees_the_keys_of_its_start():
    """Writes and deletes between the steps of a query (and a merge of the index)
    change nothing in what it finds: it reads the index as it was when it started."""
    coords = [(1, 1, 1, 1, 1, 1, 1, i, j) for i in range(1, 9) for j in range(1, 9)]
    e = store(coords, dead=coords[:5])
    ix = e._index
    p = np.array([[1] * 7 + [0, 0], [1] * 7 + [0xFFFF, 0xFFFF]], np.uint16)
    with tiny_steps():
        before = ix.query(p)
        gen = ix.query_steps(p)
        gen.send(None)
        gen.send(None)
        for c in coords[5:30]:               # rows of main die (alive written in place)
            e.delete(key(c))
        for c in coords[:5]:                 # dead rows come back
            e.put(key(c), "again")
        for i in range(20):                  # new keys, enough to merge the index
            e.put(key((1, 1, 1, 1, 1, 1, 1, 9, i + 1)), "new")
        np.testing.assert_array_equal(run(gen), before)
        # A range of scrolls leaves out what is deleted before its step reads it.
        start = [_core.pack(c) for c in ix.query(p)]
        gen = e.range_steps(p)
        gen.send(None)
        e.delete(key(coords[40]))
        e.put(key((1, 1, 1, 1, 1, 1, 1, 9, 30)), "later")
        assert [s.key for s in run(gen)] == [k for k in start if k != key(coords[40])]


def stopped_after_three_steps(gen):
    """Run three steps of ``gen``, then stop it as the server does on a timeout.

    :returns: the RequestTimeout it raised.
    """
    for _ in range(3):
        gen.send(None)
    with pytest.raises(RequestTimeout) as info:
        gen.throw(RequestTimeout("stopped"))
    return info.value


def test_delete_range_stopped_says_what_it_did(monkeypatch):
    e = store([(1, 1, 1, 1, 1, 1, 1, 1, j) for j in range(1, 40)])
    p = np.array([[1] * 8 + [0], [1] * 8 + [0xFFFF]], np.uint16)
    monkeypatch.setattr(engine_mod, "DELETE_STEP", 5)
    err = stopped_after_three_steps(e.delete_range_steps(p))
    monkeypatch.undo()
    left = e.count(p)
    assert f"{39 - left} of the 39 matching scrolls were deleted" in err.message
    assert 0 < left < 39
    assert e.delete_range(p) == left and e.count(p) == 0


def test_import_stopped_says_what_it_stored(monkeypatch):
    doc = phext.format_phext([((1, 1, 1, 1, 1, 1, 1, 1, j), f"s{j}") for j in range(1, 30)])
    e = Engine()
    monkeypatch.setattr(engine_mod, "PUT_STEP", 4)
    err = stopped_after_three_steps(e.import_phext_steps(doc))
    monkeypatch.undo()
    n = len(e._map)
    assert f"the first {n} of its 29 scrolls were stored" in err.message
    assert [s.content for s in e.range(np.array([[0] * 9, [0xFFFF] * 9], np.uint16))] == \
        [f"s{j}" for j in range(1, n + 1)]


def test_caps_of_the_steps():
    e = store([(1, 1, 1, 1, 1, 1, 1, i, j) for i in range(1, 6) for j in range(1, 6)],
              vectors=True)
    every = np.array([[0] * 9, [0xFFFF] * 9], np.uint16)
    with pytest.raises(LimitError):
        run(e.attend_steps(np.ones(4), every, None, max_keys=24))
    assert len(run(e.attend_steps(np.ones(4), every, 3, max_keys=24))["keys"]) == 3
    with pytest.raises(LimitError):
        run(e.attend_many_steps(np.ones((2, 4)), np.stack([every, every]), None,
                                return_weights=True, max_weights=49))
    assert len(run(e.attend_many_steps(np.ones((2, 4)), np.stack([every, every]), 2,
                                       return_weights=True, max_weights=4))["weights"]) == 2
    start = np.array([[1] * 7 + [1, 1], [1] * 7 + [1, 1]], np.uint16)
    wild = np.stack([_core.parse_delta("0.0.0/0.0.0/0.*.*")])
    with pytest.raises(LimitError):
        run(e.kg_steps(start, wild, 1, 100, max_visited=10))
    assert len(run(e.kg_steps(start, wild, 1, 100, max_visited=25))) == 24
    with pytest.raises(LimitError):
        run(store([(1,) * 9]).export_phext_steps(None, True, max_chars=1))


def test_a_small_query_is_one_step():
    e = store([(1, 1, 1, 1, 1, 1, 1, 1, j) for j in range(1, 9)])
    p = np.array([[1] * 8 + [0], [1] * 8 + [0xFFFF]], np.uint16)
    assert steps_of(e.range_steps(p)) == 0
    assert steps_of(e.count_steps(p)) == 0


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 5), max_size=60), k=st.integers(0, 70),
       chunk=st.integers(1, 9))
def test_best_keeps_the_k_smallest_by_value_then_order(values, k, chunk):
    v = np.array(values, dtype=np.int64)
    order = np.arange(len(v), dtype=np.int64)[::-1].copy()   # ties: larger position first
    exp = sorted(zip(values, order.tolist()))[:k]
    pos = smallest(v, order, k)
    assert sorted(zip(v[pos].tolist(), order[pos].tolist())) == exp
    best = Best(k)
    for a in range(0, len(v), chunk):
        best.add(v[a:a + chunk], order[a:a + chunk])
    got_v, got_o = best.result()
    assert list(zip(got_v.tolist(), got_o.tolist())) == exp


def test_phext_writer_pieces_make_the_document():
    items = [((1, 1, 1, 1, 1, i, 1, 1, j), f"t{i}{j}") for i in range(1, 4) for j in range(1, 4)]
    items.append(((1, 1, 1, 1, 1, 5, 1, 1, 0), "bad: component 0"))
    items.sort()
    w = phext.PhextWriter(skip_invalid=True)
    doc = "".join(w.write(items[a:a + 2]) for a in range(0, len(items), 2))
    assert doc == phext.format_phext(items, skip_invalid=True)
    assert [c for c, _, _ in w.skipped] == [(1, 1, 1, 1, 1, 5, 1, 1, 0)]
    with pytest.raises(phext.PhextError):
        w.write(items[:1])   # before what was written: not a continuation
