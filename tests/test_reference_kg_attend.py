"""CKG, CATTEND and batched CATTEND agree with the plain-Python reference (tests/pyref.py).

Random small stores, relations and queries, on ``mem://`` and on a real server: the
same results (or the same error type) as the reference written from DESIGN §3 and
PROTOCOL §5. Graphs cover deltas leaving the range, wildcard relations, every edge
content form, hops and the frontier bound; attention covers dot-product softmax (to
1e-5), the distance fallback, top_k, values given as a delta or a pattern, and windows.
"""
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vtpu
from vtpu import CoordinateError, InterfaceError, NotFoundError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import pyref as R  # noqa: E402

NAMES = ["alpha", "beta"]
A, B = 0xF000, 0xF001
ALL = "*.*.*/*.*.*/*.*.*"
REF_NAMES = R.RefNames(NAMES)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def mem_store():
    """An embedded store with the names interned; each example clears it."""
    c = vtpu.connect("mem://")
    c.intern(NAMES)
    yield c
    c.close()


@pytest.fixture(scope="module")
def server_store():
    """A loopback server's store with the names interned; each example clears it."""
    from vtpu.testing import running_server

    with running_server() as (host, port):
        c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
        c.intern(NAMES)
        yield c
        c.close()


def _fill(store, data: dict):
    store.cdel(ALL)
    if data:
        store.cput_many(np.array(list(data), dtype=np.uint16), list(data.values()))


def _same_error(ref_call, call):
    """Run the reference; if it raises, the store must raise the same type."""
    try:
        want = ref_call()
    except (CoordinateError, InterfaceError, NotFoundError) as exc:
        with pytest.raises(type(exc)):
            call()
        return None, None
    return want, call()


def _same_content(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


# -- CKG ------------------------------------------------------------------------------------

# A small space (3 x 3 x 3 x {0, 1, alpha}) so that random relations often land on
# stored scrolls, and deltas of -1 / +1 often leave the range at 0 or at a name.
small = st.integers(0, 2)
coord = st.tuples(small, small, small, st.sampled_from([0, 1, A]), *[st.just(0)] * 5)


@st.composite
def edge_content(draw, target):
    kind = draw(st.sampled_from(["text", "key", "row", "rows", "list"] * 2 + ["plain"] * 8 + [
        "bad_list", "empty", "vector", "ghost", "ghost_list"]))
    c = draw(target)
    text = R.format_coord(c, REF_NAMES)
    if kind == "text":
        return draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " \n"]))
    if kind == "key":
        return R.pack(c)
    if kind == "row":
        return np.array(c, dtype=np.uint16)
    if kind == "rows":
        return np.array([c, draw(target)], dtype=np.uint16)
    if kind == "list":
        forms = [R.format_coord, lambda x, _: R.pack(x), lambda x, _: np.array(x, np.uint16)]
        return [draw(st.sampled_from(forms))(x, REF_NAMES)
                for x in draw(st.lists(target, min_size=1, max_size=3))]
    if kind == "bad_list":
        return [text, 5]
    if kind == "empty":
        return []
    if kind == "vector":
        return np.arange(3.0)
    if kind == "ghost":
        return "ghost.0.0/0.0.0/0.0.0"
    if kind == "ghost_list":
        return ["ghost.0.0/0.0.0/0.0.0", text]
    return draw(st.sampled_from(["node", 7, None, {"k": 1}]))


@st.composite
def delta(draw):
    ops, vals = [0] * 9, [0] * 9
    kind = draw(st.sampled_from(["step", "step", "step", "mixed", "wild"]))
    if kind in ("step", "wild"):       # one step along the grid: off it at 0 and 2
        vals[draw(st.integers(0, 2))] = draw(st.sampled_from([-1, 1]))
        if kind == "wild":
            ops[draw(st.integers(0, 3))] = 2
    else:
        for j in range(3):
            if draw(st.booleans()):
                vals[j] = draw(st.integers(-1, 1))
            else:
                ops[j], vals[j] = 1, draw(small)
        bump = draw(st.sampled_from(["keep", "bump", "set"]))
        if bump == "bump":         # +1 on a name component leaves the range
            vals[3] = 1
        elif bump == "set":
            ops[3], vals[3] = 1, draw(st.sampled_from([0, A]))
    return np.array([ops, vals], dtype=np.int32)


@st.composite
def start(draw, stored):
    c = draw(st.sampled_from(stored)) if stored and draw(st.integers(0, 3)) else draw(coord)
    if draw(st.booleans()):
        return (c, c)
    lo, hi = list(c), list(c)
    for j in draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)):
        lo[j], hi[j] = 0, 0xFFFF
    return (tuple(lo), tuple(hi))


@st.composite
def kg_case(draw):
    keys = draw(st.lists(coord, unique=True, min_size=12, max_size=40))
    # pointers lead mostly to stored scrolls, sometimes anywhere
    target = st.one_of(st.sampled_from(keys), coord) if keys else coord
    data = {k: draw(edge_content(target)) for k in keys}
    return dict(data=data, start=draw(start(keys)),
                deltas=draw(st.lists(delta(), min_size=1, max_size=4)),
                hops=draw(st.sampled_from([0, 1, 2, 2, 3, 3])),
                max_frontier=draw(st.sampled_from([1, 2, 3, 5, 10000])))


def _check_kg(store, data, start, deltas, hops, max_frontier):
    _fill(store, data)
    want = R.kg(data, start, [(R.row(d[0]), R.row(d[1])) for d in deltas], hops, max_frontier,
                REF_NAMES)
    got = store.ckg(np.array(start, dtype=np.uint16), np.stack(deltas), hops, max_frontier)
    assert [R.row(s.coords) for s in got] == want
    assert [s.coordinate for s in got] == [R.format_coord(c, REF_NAMES) for c in want]


@given(case=kg_case())
@settings(max_examples=150, **SETTINGS)
def test_ckg_equals_reference(mem_store, case):
    _check_kg(mem_store, **case)


@pytest.mark.integration
@given(case=kg_case())
@settings(max_examples=50, **SETTINGS)
def test_ckg_equals_reference_on_a_server(server_store, case):
    _check_kg(server_store, **case)


# -- CATTEND --------------------------------------------------------------------------------

akey = st.tuples(st.just(5), st.integers(0, 2), st.integers(0, 4), *[st.just(0)] * 6)


@st.composite
def vector(draw, d):
    # Integer-valued entries: every dot product is exact in both computations, so equal
    # scores tie in both and the coordinate order decides.
    vals = draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d))
    return np.array(vals, dtype=draw(st.sampled_from([np.float64, np.float64, np.float32])))


@st.composite
def attention_store(draw):
    d = draw(st.integers(1, 4))
    data = {}
    for k in draw(st.lists(akey, min_size=3, max_size=14, unique=True)):
        kind = draw(st.sampled_from(["vec"] * 12 + ["text", "short"]))
        data[k] = draw(vector(d)) if kind == "vec" else ("a text" if kind == "text" else
                                                         draw(vector(d + 1)))
    if draw(st.integers(0, 2)):   # value scrolls one library up, sometimes missing one
        dv = draw(st.integers(1, 3))
        for k in list(data):
            if draw(st.integers(0, 19)):
                data[(6,) + k[1:]] = draw(vector(dv))
    return d, data


@st.composite
def box(draw):
    if draw(st.booleans()):
        return ((5, 0, 0, 0, 0, 0, 0, 0, 0), (5, 2, 4, 0, 0, 0, 0, 0, 0))   # every key
    a0 = draw(st.integers(0, 2))
    a1 = draw(st.integers(a0, 2))
    b0 = draw(st.integers(0, 4))
    b1 = draw(st.integers(b0, 4))
    return ((5, a0, b0, 0, 0, 0, 0, 0, 0), (5, a1, b1, 0, 0, 0, 0, 0, 0))


@st.composite
def attend_case(draw):
    d, data = draw(attention_store())
    kp = draw(box())
    qkind = draw(st.sampled_from(["vector"] * 3 + ["coord"] * 2 + ["absent"]))
    stored = sorted(k for k in data if k[0] == 5)
    qkey = draw(st.sampled_from(stored)) if qkind == "coord" and stored else draw(akey)
    if qkind == "absent":
        data.pop(qkey, None)
    return dict(d=d, data=data, kp=kp, qkey=qkey,
                qvec=draw(vector(d)) if qkind == "vector" else None,
                top_k=draw(st.sampled_from([None, 0, 1, 3, 20])),
                vkind=draw(st.sampled_from([None, "delta", "pattern"])),
                mode=draw(st.sampled_from(["auto", "auto", "dot", "distance"])))


def _check_attend(store, d, data, kp, qkey, qvec, top_k, vkind, mode):
    _fill(store, data)
    values = ref_values = None
    if vkind == "delta":
        values = np.array([[0] * 9, [1] + [0] * 8], dtype=np.int32)
        ref_values = ("delta", ((0,) * 9, (1,) + (0,) * 8))
    elif vkind == "pattern":
        vp = ((6,) + kp[0][1:], (6,) + kp[1][1:])
        values, ref_values = np.array(vp, dtype=np.uint16), ("pattern", vp)
    if qvec is not None:
        query, kw = ("vector", [float(x) for x in qvec]), {"query": qvec}
    else:
        query, kw = ("coord", qkey), {"query_coord": np.array(qkey, dtype=np.uint16)}
    pattern = np.array(kp, dtype=np.uint16)
    want, got = _same_error(
        lambda: R.attend(data, query, kp, top_k, ref_values, mode),
        lambda: store.cattend(key_pattern=pattern, top_k=top_k, values=values, mode=mode, **kw))
    if want is None:
        return
    assert got.n == want["n"] and got.mode == want["mode"]
    assert [r["coordinate"] for r in got] == [R.format_coord(k) for k in want["keys"]]
    np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got.weights, want["weights"], atol=1e-5)
    assert all(_same_content(r["content"], c) for r, c in zip(got, want["contents"]))
    if want["output"] is None:
        assert got.output is None
    else:
        np.testing.assert_allclose(got.output, want["output"], atol=1e-5)


@given(case=attend_case())
@settings(max_examples=250, **SETTINGS)
def test_cattend_equals_reference(mem_store, case):
    _check_attend(mem_store, **case)


@pytest.mark.integration
@given(case=attend_case())
@settings(max_examples=50, **SETTINGS)
def test_cattend_equals_reference_on_a_server(server_store, case):
    _check_attend(server_store, **case)


@st.composite
def windows(draw):
    n = draw(st.integers(1, 5))
    return [draw(box()) for _ in range(n)]


@st.composite
def attend_many_case(draw):
    d, data = draw(attention_store())
    wins = draw(windows())
    return dict(data=data, wins=wins,
                queries=np.stack([draw(vector(d)).astype(np.float64) for _ in wins]),
                with_values=draw(st.booleans()))


def _check_attend_many(store, data, wins, queries, with_values):
    _fill(store, data)
    values = np.array([[0] * 9, [1] + [0] * 8], dtype=np.int32) if with_values else None
    ref_values = ((0,) * 9, (1,) + (0,) * 8) if with_values else None
    want, got = _same_error(
        lambda: R.attend_many(data, [[float(x) for x in q] for q in queries], wins, ref_values),
        lambda: store.cattend_many(queries, [np.array(w, dtype=np.uint16) for w in wins],
                                   values=values))
    if want is None:
        return
    outputs, counts = want
    assert got["counts"].tolist() == counts
    np.testing.assert_allclose(got["outputs"], np.array(outputs), atol=1e-5)


@given(case=attend_many_case())
@settings(max_examples=200, **SETTINGS)
def test_cattend_many_equals_reference(mem_store, case):
    _check_attend_many(mem_store, **case)


@pytest.mark.integration
@given(case=attend_many_case())
@settings(max_examples=40, **SETTINGS)
def test_cattend_many_equals_reference_on_a_server(server_store, case):
    _check_attend_many(server_store, **case)
