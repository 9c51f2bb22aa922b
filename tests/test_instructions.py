"""Semantics of every instruction, run against mem:// and a real loopback server."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import xxhash

import vtpu
from vtpu import CoordinateError, InterfaceError, VersionConflict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
import pyref  # noqa: E402

# crange(..., keys_only=True / count=True) are the prototype-era forms these tests keep
# exercising; they forward to crange_keys / ccount with a DeprecationWarning.
pytestmark = pytest.mark.filterwarnings("ignore:crange\\(:DeprecationWarning")


# -- CGET / CPUT / CDEL ----------------------------------------------------------------------

def test_missing_scroll_is_none(client):
    assert client.cget("1.1.1/1.1.1/1.1.1") is None


@pytest.mark.parametrize("content", [
    "Hello vTPU", "", "ünïcödé\r\nline", b"\x00\x01\xff", 42, -7, 3.5, True, None,
    [1, "two", [3.0]], {"a": 1, "b": [1, 2], "c": {"d": None}},
])
def test_put_get_round_trip(client, content):
    v = client.cput("1.2.3/4.5.6/7.8.9", content)
    s = client.cget("1.2.3/4.5.6/7.8.9")
    assert v == 1 and s.version == 1
    assert s.content == content and type(s.content) is type(content)
    assert s["content"] == content and s["coordinate"] == "1.2.3/4.5.6/7.8.9"
    assert dict(s)["version"] == 1


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array([1, -2, 3], dtype=np.int64),
    np.zeros((2, 0, 3), dtype=np.uint8),
    np.array(7.5, dtype=np.float64),
    np.arange(6, dtype=">i4").reshape(2, 3),
])
def test_numpy_content_keeps_dtype_and_shape(client, arr):
    client.cput("9.9.9/9.9.9/9.9.9", arr)
    got = client.cget("9.9.9/9.9.9/9.9.9").content
    assert isinstance(got, np.ndarray)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.array_equal(got, arr)


def test_versions_and_timestamps(client):
    c = "1.1.1/1.1.1/1.1.2"
    assert client.cput(c, "a") == 1
    first = client.cget(c)
    assert client.cput(c, "b") == 2
    second = client.cget(c)
    assert second.version == 2 and second.content == "b"
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at


def test_compare_and_set(client):
    c = "1.1.1/1.1.1/1.1.3"
    assert client.cput(c, "new", if_version=0) == 1
    with pytest.raises(VersionConflict) as e:
        client.cput(c, "again", if_version=0)
    assert "1.1.1/1.1.1/1.1.3" in str(e.value)
    assert client.cput(c, "v2", if_version=1) == 2
    with pytest.raises(VersionConflict):
        client.cput(c, "stale", if_version=1)
    s = client.cget(c)
    assert s.content == "v2" and s.version == 2


def test_delete_single_pattern_many(client):
    coords = [f"1.1.{i}/2.2.2/3.3.3" for i in range(1, 11)]
    client.cput_many(coords, [f"s{i}" for i in range(10)])
    assert client.cdel(coords[0]) == 1
    assert client.cdel(coords[0]) == 0
    assert client.cget(coords[0]) is None
    assert client.cdel("1.1.[2:5]/2.2.2/3.3.3") == 3
    assert client.cdel_many(coords[5:8] + ["7.7.7/7.7.7/7.7.7"]) == 3
    assert client.crange("1.1.*/2.2.2/3.3.3", keys_only=True) == coords[4:5] + coords[8:]


def test_batched_get_put(client):
    arr = np.array([[1, 2, 3, 4, 5, 6, 7, 8, i] for i in range(100)], dtype=np.uint16)
    vers = client.cput_many(arr, [f"x{i}" for i in range(100)])
    assert list(vers) == [1] * 100
    got = client.cget_many(arr)
    assert [s.content for s in got] == [f"x{i}" for i in range(100)]
    mixed = client.cget_many(["1.2.3/4.5.6/7.8.0", "1.2.3/4.5.6/7.8.999"])
    assert mixed[0].content == "x0" and mixed[1] is None
    # an array of contents: row i is content i
    client.cput_many(arr[:3], np.eye(3, dtype=np.float32))
    assert np.array_equal(client.cget(arr[1]).content, np.eye(3, dtype=np.float32)[1])
    assert client.cput_many(arr[:2], ["a", "b"]) == [3, 3]


def test_bad_input_changes_nothing(client):
    client.cput("1.1.1/1.1.1/1.1.1", "keep")
    for bad in ["1.1.1/1.1.1", "1.1.1/1.1.1/1.1.1.1", "1.1.x!/1.1.1/1.1.1", "1.1.-1/1.1.1/1.1.1",
                "1.1.70000/1.1.1/1.1.1", ""]:
        with pytest.raises(CoordinateError) as e:
            client.cput(bad, "x")
        assert repr(bad)[1:-1] in str(e.value)
    with pytest.raises(InterfaceError):
        client.cput("1.1.1/1.1.1/1.1.1", object())
    with pytest.raises(InterfaceError):
        client.cput_many(["1.1.1/1.1.1/1.1.1", "1.1.1/1.1.1/1.1.2"], ["only one"])
    s = client.cget("1.1.1/1.1.1/1.1.1")
    assert s.content == "keep" and s.version == 1
    assert client.crange("*.*.*/*.*.*/*.*.*", count=True) == 1


# -- CRANGE ------------------------------------------------------------------------------

@pytest.fixture
def grid(client):
    coords = [f"{a}.{b}.1/{c}.1.1/1.1.{d}" for a in range(1, 4) for b in range(1, 4)
              for c in range(1, 4) for d in range(1, 4)]
    client.cput_many(coords, coords)
    return coords


def _matches(coords, pred):
    return sorted((c for c in coords if pred([int(x) for x in c.replace("/", ".").split(".")])),
                  key=lambda c: [int(x) for x in c.replace("/", ".").split(".")])


@pytest.mark.parametrize("pattern,pred", [
    ("2.*.*/*.*.*/*.*.*", lambda v: v[0] == 2),
    ("*.*.*/3.*.*/*.*.*", lambda v: v[3] == 3),
    ("*.*.*/*.*.*/*.*.2", lambda v: v[8] == 2),
    ("[1:3].*.*/*.*.*/*.*.[2:]", lambda v: 1 <= v[0] < 3 and v[8] >= 2),
    ("1.2.1/[:3].1.1/1.1.*", lambda v: v[0] == 1 and v[1] == 2 and v[3] < 3),
    ("*.*.*/*.*.*/*.*.*", lambda v: True),
    ("4.*.*/*.*.*/*.*.*", lambda v: False),
])
def test_crange_shapes(client, grid, pattern, pred):
    expected = _matches(grid, pred)
    got = client.crange(pattern)
    assert [s.coordinate for s in got] == expected
    assert all(s.content == s.coordinate for s in got)
    assert client.crange(pattern, keys_only=True) == expected
    assert client.crange(pattern, count=True) == len(expected)


def test_crange_limit_and_paging(client, grid):
    pattern = "*.*.*/*.*.*/*.*.*"
    everything = client.crange(pattern, keys_only=True)
    assert client.crange(pattern, limit=5, keys_only=True) == everything[:5]
    pages, after = [], None
    for _ in range(100):
        page = client.crange(pattern, limit=7, after=after, keys_only=True)
        pages.extend(page)
        if len(page) < 7:
            break
        after = page[-1]
    assert pages == everything
    assert [s.coordinate for s in client.crange_iter(pattern, page_size=10)] == everything
    arr = client.crange("2.*.*/*.*.*/*.*.*", keys_only=True, as_array=True)
    assert arr.dtype == np.uint16 and arr.shape == (27, 9)


def test_crange_names(client):
    client.cput("3.8.1/key.0.0/1.1.1", "k1")
    client.cput("3.8.2/key.0.0/1.1.1", "k2")
    client.cput("3.8.2/query.0.0/1.1.1", "q")
    got = client.crange("3.8.*/key.0.0/1.1.1")
    assert [s.coordinate for s in got] == ["3.8.1/key.0.0/1.1.1", "3.8.2/key.0.0/1.1.1"]
    assert client.crange("3.8.*/nothere.0.0/1.1.1") == []


# -- CDELTA -------------------------------------------------------------------------------

def test_cdelta(client):
    assert client.cdelta("2.1.3/4.7.11/18.29.47", "+0.0.0/+0.0.5/+0.0.0") == "2.1.3/4.7.16/18.29.47"
    assert client.cdelta("2.1.3/4.7.11/18.29.47", "=9.-1.0/0.0.=1/*.0.0") == "9.0.3/4.7.1/*.29.47"
    with pytest.raises(CoordinateError, match="component 1"):
        client.cdelta("2.1.3/4.7.11/18.29.47", "-3.0.0/0.0.0/0.0.0")
    with pytest.raises(CoordinateError, match="61439"):
        client.cdelta("61439.1.3/4.7.11/18.29.47", "+1.0.0/0.0.0/0.0.0")
    arr = np.array([[1] * 9, [2] * 9], dtype=np.uint16)
    out = client.cdelta(arr, "+1.0.0/0.0.0/0.0.=7")
    assert out.tolist() == [[2] + [1] * 7 + [7], [3] + [2] * 7 + [7]]
    assert client.cdelta(["1.1.1/1.1.1/1.1.1"], "0.0.0/rel.0.0/0.0.0") == ["1.1.1/rel.1.1/1.1.1"]


# -- CNEAREST -----------------------------------------------------------------------------

def test_cnearest_matches_brute_force(client):
    rng = np.random.default_rng(3)
    arr = np.unique(rng.integers(0, 6, (400, 9)).astype(np.uint16), axis=0)
    client.cput_many(arr, ["x"] * len(arr))
    q = rng.integers(0, 6, 9).astype(np.uint16)
    for metric in ("l1", "hamming"):
        if metric == "l1":
            d = np.abs(arr.astype(int) - q.astype(int)).sum(1)
        else:
            d = (arr != q).sum(1)
        ref = sorted(zip(d.tolist(), map(tuple, arr.tolist())))[:10]
        got = client.cnearest(q, k=10, metric=metric)
        assert [(dist, tuple(int(x) for x in c.replace("/", ".").split("."))) for c, dist in got] == ref
    within = "[0:3].*.*/*.*.*/*.*.*"
    got = client.cnearest(q, k=5, within=within)
    sel = arr[arr[:, 0] < 3]
    d = np.abs(sel.astype(int) - q.astype(int)).sum(1)
    assert [dist for _, dist in got] == sorted(d.tolist())[:5]
    assert client.cnearest(q, k=0) == []


# -- CHIER --------------------------------------------------------------------------------

def test_chier(client):
    assert client.chier("2.1.3/4.7.11/18.29.47", "UP") == "2.1.3/4.7.11/18.29.*"
    assert client.chier("2.1.3/4.7.11/18.29.*", "UP") == "2.1.3/4.7.11/18.*.*"
    for c in ["2.1.3/4.7.11/18.29.47", "2.1.3/4.7.11/18.29.48", "2.1.3/4.7.11/18.30.1",
              "2.1.3/4.7.12/1.1.1"]:
        client.cput(c, "x")
    assert client.chier("2.1.3/4.7.11/18.29.*", "DOWN") == [
        "2.1.3/4.7.11/18.29.47", "2.1.3/4.7.11/18.29.48"]
    assert client.chier("2.1.3/4.7.11/18.29.47", "NEXT") == "2.1.3/4.7.11/18.29.48"
    assert client.chier("2.1.3/4.7.11/18.29.48", "NEXT") == "2.1.3/4.7.11/18.30.1"
    assert client.chier("2.1.3/4.7.11/18.30.1", "PREV") == "2.1.3/4.7.11/18.29.48"
    assert client.chier("2.1.3/4.7.11/18.29.47", "PREV") is None
    assert client.chier("2.1.3/4.7.12/1.1.1", "NEXT") is None
    client.cdel("2.1.3/4.7.11/18.29.48")
    assert client.chier("2.1.3/4.7.11/18.29.47", "NEXT") == "2.1.3/4.7.11/18.30.1"
    with pytest.raises(InterfaceError):
        client.chier("2.1.3/4.7.11/18.29.47", "SIDEWAYS")


# -- CROUTE / CMOE ------------------------------------------------------------------------

def _jump(key, n):
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & (2 ** 64 - 1)
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def test_croute_definition_and_subtrees(client):
    c = "2.1.3/4.7.11/18.29.47"
    prefix = bytes.fromhex("000200010003")
    assert client.croute(c, 16) == _jump(xxhash.xxh64_intdigest(prefix), 16)
    assert client.croute("2.1.3/9.9.9/9.9.9", 16) == client.croute(c, 16)
    arr = np.random.default_rng(0).integers(0, 1000, (1000, 9)).astype(np.uint16)
    nodes = client.croute(arr, 8)
    assert nodes.dtype == np.int32 and nodes.shape == (1000,)
    assert nodes.tolist() == pyref.route(pyref.rows(arr), 8)
    assert nodes[:20].tolist() == [client.croute(row, 8) for row in arr[:20]]


def test_croute_stable_across_processes(client):
    coords = [f"{i}.{i * 7 % 13}.{i % 5}/1.2.3/4.5.6" for i in range(50)]
    here = [client.croute(c, 10) for c in coords]
    code = ("import vtpu; c = vtpu.connect('mem://'); "
            f"print([c.croute(x, 10) for x in {coords!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == here


def test_cmoe_balanced_and_deterministic(client):
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 61440, (64000, 9)).astype(np.uint16)
    experts = client.cmoe(tokens, 64)
    counts = np.bincount(experts, minlength=64)
    expected = len(tokens) / 64
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 150   # 63 degrees of freedom: p < 1e-6 above ~120
    assert client.cmoe(tokens[:10], 64).tolist() == experts[:10].tolist()
    assert experts[:500].tolist() == pyref.moe(pyref.rows(tokens[:500]), 64)
    assert client.intern(["expert"]) == [0xF000]
    e = client.cmoe("0.512.768/3.*.*/expert.*.*", num_experts=64)
    ref_names = pyref.RefNames(["expert"])
    ref_pattern = pyref.parse_pattern("0.512.768/3.*.*/expert.*.*", ref_names)
    assert e == pyref.moe_pattern(ref_pattern, 64)
    top = client.cmoe("0.512.768/3.1.1/1.1.1", num_experts=8, top_k=3)
    assert top == pyref.moe([(0, 512, 768, 3, 1, 1, 1, 1, 1)], 8, 3)[0]
    assert len(set(top)) == 3 and top[0] == client.cmoe("0.512.768/3.1.1/1.1.1", 8)
    two = client.cmoe(tokens[:5], 8, top_k=2)
    assert two.shape == (5, 2) and two.tolist() == pyref.moe(pyref.rows(tokens[:5]), 8, 2)


# -- CATTEND ------------------------------------------------------------------------------

def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_cattend_equals_numpy(client):
    rng = np.random.default_rng(11)
    d, n = 16, 40
    K = rng.normal(size=(n, d))
    V = rng.normal(size=(n, d))
    q = rng.normal(size=d)
    client.cput_many([f"3.8.{i}/key.0.0/1.1.1" for i in range(n)], K)
    client.cput_many([f"3.8.{i}/value.0.0/1.1.1" for i in range(n)], V)
    client.cput("3.8.512/query.0.0/1.1.1", q)
    # a scroll outside the pattern must not take part
    client.cput("3.9.0/key.0.0/1.1.1", rng.normal(size=d))
    res = client.cattend(query_coord="3.8.512/query.0.0/1.1.1", key_pattern="3.8.*/key.0.0/1.1.1",
                         top_k=5, values="+0.0.0/=value.0.0/+0.0.0")
    scores = K @ q / math.sqrt(d)
    w = _softmax(scores)
    assert res.n == n and res.mode == "dot"
    np.testing.assert_allclose(res.output, w @ V, rtol=1e-9, atol=1e-12)
    top = np.argsort(-scores)[:5]
    assert [r["coordinate"] for r in res] == [f"3.8.{i}/key.0.0/1.1.1" for i in top]
    np.testing.assert_allclose([r["score"] for r in res], scores[top])
    np.testing.assert_allclose([r["weight"] for r in res], w[top])
    assert np.array_equal(res[0]["content"], K[top[0]])
    # values given as a pattern aligned with the keys
    res2 = client.cattend(query=q, key_pattern="3.8.*/key.0.0/1.1.1",
                          values="3.8.*/value.0.0/1.1.1")
    np.testing.assert_allclose(res2.output, w @ V, rtol=1e-9)


def test_cattend_text_fallback(client):
    client.cput("3.8.1/key.0.0/1.1.1", "a")
    client.cput("3.8.5/key.0.0/1.1.1", "b")
    client.cput("3.8.512/query.0.0/1.1.1", "the query")
    res = client.cattend(query_coord="3.8.512/query.0.0/1.1.1",
                         key_pattern="3.8.*/key.0.0/1.1.1", top_k=32)
    assert res.mode == "distance" and len(res) == 2
    q = vtpu.Coordinate("3.8.512/query.0.0/1.1.1", client.names).array.astype(int)
    k = vtpu.Coordinate("3.8.5/key.0.0/1.1.1", client.names).array.astype(int)
    assert res[0]["coordinate"] == "3.8.5/key.0.0/1.1.1"
    assert res[0]["score"] == pytest.approx(1 / (1 + np.abs(q - k).sum()))
    assert sum(r["weight"] for r in res) == pytest.approx(1.0)


def test_cattend_many_windowed_equals_numpy(client):
    rng = np.random.default_rng(5)
    seq, d, win = 64, 8, 4
    K = rng.normal(size=(seq, d))
    V = rng.normal(size=(seq, d))
    Q = rng.normal(size=(seq, d))
    client.cput_many([f"1.1.1/1.1.1/1.{i}.1" for i in range(seq)], K)
    client.cput_many([f"1.1.1/1.1.1/2.{i}.1" for i in range(seq)], V)
    pats = [f"1.1.1/1.1.1/1.[{max(0, i - win)}:{min(seq, i + win + 1)}].1" for i in range(seq)]
    res = client.cattend_many(Q, pats, values="0.0.0/0.0.0/=2.0.0")
    for i in range(seq):
        lo, hi = max(0, i - win), min(seq, i + win + 1)
        w = _softmax(K[lo:hi] @ Q[i] / math.sqrt(d))
        np.testing.assert_allclose(res["outputs"][i], w @ V[lo:hi], rtol=1e-9, atol=1e-12)
    assert res["counts"].tolist() == [min(seq, i + win + 1) - max(0, i - win) for i in range(seq)]


# -- CKG ----------------------------------------------------------------------------------

def test_ckg_follows_pointers_and_terminates_on_cycles(client):
    # person.N.1/attr.name.1/1.1.1 holds a name; person.N.1/rel.spouse.1/1.1.1 points at
    # the spouse's name scroll.
    client.cput("person.1001.1/attr.name.1/1.1.1", "Alice")
    client.cput("person.1002.1/attr.name.1/1.1.1", "Bob")
    client.cput("person.1001.1/rel.spouse.1/1.1.1", "person.1002.1/attr.name.1/1.1.1")
    client.cput("person.1002.1/rel.spouse.1/1.1.1", "person.1001.1/attr.name.1/1.1.1")
    one = client.ckg(start_coord="person.1001.*/attr.*.*/1.1.1",
                     relation_deltas=["+0.0.0/+rel.spouse.*/+0.0.0"], hops=1)
    assert [s.content for s in one] == ["Bob"]
    # the cycle Alice -> Bob -> Alice stops: Alice was visited at the start
    three = client.ckg("person.1001.1/attr.name.1/1.1.1", ["+0.0.0/+rel.spouse.*/+0.0.0"], hops=3)
    assert three == []
    two = client.ckg("person.1001.1/attr.name.1/1.1.1", "+0.0.0/+rel.spouse.*/+0.0.0", hops=1)
    assert [s.content for s in two] == ["Bob"]


def test_ckg_edges_without_pointers_and_frontier_bound(client):
    # a chain 1 -> 2 -> 3 ... where each edge is the next node itself (no pointer content)
    for i in range(1, 20):
        client.cput(f"1.1.1/1.1.1/1.1.{i}", i)
    res = client.ckg("1.1.1/1.1.1/1.1.1", ["+0.0.0/+0.0.0/+0.0.1"], hops=3)
    assert [s.coordinate for s in res] == ["1.1.1/1.1.1/1.1.4"]
    # A wildcard start is cut to its first 5 matches (nodes 1..5, all visited); one hop
    # leads to 2..6, of which only 6 is new.
    fan = client.ckg("1.1.1/1.1.1/1.1.*", ["+0.0.0/+0.0.0/+0.0.1"], hops=1, max_frontier=5)
    assert [s.coordinate for s in fan] == ["1.1.1/1.1.1/1.1.6"]
    # A hub whose 10 edges point at 10 targets: the next frontier is cut to the first 4
    # targets in coordinate order.
    client.cput("2.1.1/1.1.1/1.1.1", "hub")
    for j in range(2, 12):
        client.cput(f"2.1.1/1.1.1/2.{j}.1", f"3.1.1/1.1.1/1.1.{j}")
        client.cput(f"3.1.1/1.1.1/1.1.{j}", f"target {j}")
    res = client.ckg("2.1.1/1.1.1/1.1.1", "+0.0.0/+0.0.0/+1.*.+0", hops=1, max_frontier=4)
    assert [s.content for s in res] == [f"target {j}" for j in range(2, 6)]
    res = client.ckg("2.1.1/1.1.1/1.1.1", "+0.0.0/+0.0.0/+1.*.+0", hops=1)
    assert [s.content for s in res] == [f"target {j}" for j in range(2, 12)]


# -- prototype README ---------------------------------------------------------------------

README_NAMES = ["query", "key", "expert", "person", "attr", "name", "rel", "spouse", "friend"]


def test_prototype_readme_examples(client):
    """The prototype README's calls, on a store where every answer is known beforehand."""
    vt = client
    assert vt.health()["status"] == "ok"
    assert vt.health()["scrolls"] == 0
    # Names in a fixed order, so a reference parser can give every coordinate's numbers.
    assert vt.intern(README_NAMES) == [0xF000 + i for i in range(len(README_NAMES))]
    ref_names = pyref.RefNames(README_NAMES)

    # CPUT / CGET
    assert vt.cput("1.1.1/1.1.1/1.1.1", "Hello vTPU") == 1
    result = vt.cget("1.1.1/1.1.1/1.1.1")
    assert result["content"] == "Hello vTPU" and result["version"] == 1
    assert result["coordinate"] == "1.1.1/1.1.1/1.1.1"

    # CRANGE: two scrolls under 1.1.*/1.1.1/1.1.1, one beside it
    vt.cput("1.1.2/1.1.1/1.1.1", "second")
    vt.cput("1.2.1/1.1.1/1.1.1", "outside")
    scrolls = vt.crange("1.1.*/1.1.1/1.1.1")
    assert [(s.coordinate, s.content) for s in scrolls] == [
        ("1.1.1/1.1.1/1.1.1", "Hello vTPU"), ("1.1.2/1.1.1/1.1.1", "second")]

    # CDELTA / CHIER
    assert vt.cdelta("2.1.3/4.7.11/18.29.47", "+0.0.0/+0.0.5/+0.0.0") == "2.1.3/4.7.16/18.29.47"
    assert vt.chier("2.1.3/4.7.11/18.29.47", "UP") == "2.1.3/4.7.11/18.29.*"
    for c in ["2.1.3/4.7.11/18.29.47", "2.1.3/4.7.11/18.29.50", "2.1.3/4.7.11/18.30.1"]:
        vt.cput(c, c)
    assert vt.chier("2.1.3/4.7.11/18.29.*", "DOWN") == [
        "2.1.3/4.7.11/18.29.47", "2.1.3/4.7.11/18.29.50"]

    # CATTEND: 40 key vectors (top_k=32 must cut), the query vector at its coordinate
    rng = np.random.default_rng(2024)
    d, n = 8, 40
    K = rng.normal(size=(n, d))
    q = rng.normal(size=d)
    vt.cput_many([f"3.8.{i}/key.0.0/1.1.1" for i in range(n)], K)
    vt.cput("3.8.512/query.0.0/1.1.1", q)

    # CKG: a hand-built edge set. Alice (1001) is married to Bob (1002) and befriends
    # Carol (1003); Carol is married to Dave (1004), outside the start pattern.
    people = {1001: "Alice", 1002: "Bob", 1003: "Carol", 1004: "Dave"}
    for pid, who in people.items():
        vt.cput(f"person.{pid}.1/attr.name.1/1.1.1", who)
    vt.cput("person.1001.1/attr.age.1/1.1.1", 41)   # a second start: same spouse edge
    vt.cput("person.1001.1/rel.spouse.1/1.1.1", "person.1002.1/attr.name.1/1.1.1")
    vt.cput("person.1001.1/rel.friend.1/1.1.1", "person.1003.1/attr.name.1/1.1.1")
    vt.cput("person.1003.1/rel.spouse.1/1.1.1", "person.1004.1/attr.name.1/1.1.1")

    # CNEAREST: brute force over every stored coordinate, ties in coordinate order
    stored = vt.crange("*.*.*/*.*.*/*.*.*", keys_only=True)
    q_coord = pyref.parse_coord("2.1.3/4.7.11/18.29.47", ref_names)
    dists = sorted((sum(abs(a - b) for a, b in zip(pyref.parse_coord(c, ref_names), q_coord)),
                    pyref.parse_coord(c, ref_names), c) for c in stored)
    neighbors = vt.cnearest("2.1.3/4.7.11/18.29.47", k=10)
    assert neighbors == [(c, dist) for dist, _, c in dists[:10]]
    assert neighbors[0] == ("2.1.3/4.7.11/18.29.47", 0)
    assert neighbors[1] == ("2.1.3/4.7.11/18.29.50", 3)

    scores = vt.cattend(query_coord="3.8.512/query.0.0/1.1.1", key_pattern="3.8.*/key.0.0/1.1.1",
                        top_k=32)
    raw = K @ q / math.sqrt(d)
    w = _softmax(raw)
    top = np.argsort(-raw, kind="stable")[:32]
    assert scores.n == n and scores.mode == "dot" and len(scores) == 32
    assert [r["coordinate"] for r in scores] == [f"3.8.{i}/key.0.0/1.1.1" for i in top]
    np.testing.assert_allclose(scores.scores, raw[top], rtol=1e-12)
    np.testing.assert_allclose(scores.weights, w[top], rtol=1e-12)
    assert scores.weights.sum() < 1.0   # the softmax ran over all 40, only 32 came back

    # CMOE of a pattern: its two bounds hashed (the reference in tests/pyref.py)
    expert_id = vt.cmoe("0.512.768/3.*.*/expert.*.*", num_experts=64)
    ref_pattern = pyref.parse_pattern("0.512.768/3.*.*/expert.*.*", ref_names)
    assert expert_id == pyref.moe_pattern(ref_pattern, 64)

    entities = vt.ckg(start_coord="person.1001.*/attr.*.*/1.1.1",
                      relation_deltas=["+0.0.0/+rel.spouse.*/+0.0.0"], hops=1)
    assert [(s.coordinate, s.content) for s in entities] == [
        ("person.1002.1/attr.name.1/1.1.1", "Bob")]
    both = vt.ckg("person.1001.1/attr.name.1/1.1.1",
                  ["+0.0.0/+rel.spouse.*/+0.0.0", "+0.0.0/+rel.friend.*/+0.0.0"], hops=1)
    assert [s.content for s in both] == ["Bob", "Carol"]

    stats = vt.get_stats()
    assert stats["errors"] == 0
    for op, times in [("cget", 1), ("crange", 2), ("cnearest", 1), ("cattend", 1), ("ckg", 2),
                      ("cput_many", 1)]:
        assert stats["by_op"][op] == times, op
    assert stats["by_op"]["cput"] == 3 + 3 + 1 + len(people) + 4
    assert stats["total_calls"] == sum(stats["by_op"].values())
    assert stats["avg_latency_ms"] == pytest.approx(
        stats["total_time_s"] / stats["total_calls"] * 1e3)
    assert vt.stats()["scrolls"] == 3 + 3 + n + 1 + len(people) + 4


def test_names_round_trip(client):
    ids = client.intern(["query", "key"])
    assert all(0xF000 <= i <= 0xFFFF for i in ids)
    client.cput("3.8.512/query.0.0/1.1.1", "q")
    assert client.crange("3.8.*/query.*.*/*.*.*", keys_only=True) == ["3.8.512/query.0.0/1.1.1"]
    assert client.intern(["query"]) == ids[:1]


def test_pipeline_results_and_errors(client):
    p = client.pipeline(raise_on_error=False)
    p.cput("1.1.1/1.1.1/1.1.1", "a")
    p.cput("1.1.1/1.1.1/1.1.1", "x", if_version=5)
    p.cget("1.1.1/1.1.1/1.1.1")
    p.crange_keys("1.1.1/1.1.1/1.1.*")
    p.crange("1.1.1/1.1.1/1.1.*", keys_only=True)
    res = p.execute()
    assert res[0] == 1
    assert isinstance(res[1], VersionConflict)
    assert res[2].content == "a"
    assert res[3].tolist() == [[1] * 9]
    assert res[4] == ["1.1.1/1.1.1/1.1.1"]  # the same result as the client's own call
    with pytest.raises(VersionConflict):
        with client.pipeline() as q:
            q.cput("1.1.1/1.1.1/1.1.1", "y", if_version=9)
            q.cput("1.1.1/1.1.1/1.1.2", "z")
    assert client.cget("1.1.1/1.1.1/1.1.2").content == "z"   # ran before the raise


def test_cattend_many_float32_within_1e5_of_numpy(client):
    rng = np.random.default_rng(9)
    seq, d, win = 300, 16, 20
    K = rng.normal(size=(seq, d)).astype(np.float32)
    Q = rng.normal(size=(seq, d)).astype(np.float32)
    client.cput_many([f"1.1.1/1.1.1/1.{i}.1" for i in range(seq)], K)
    kp = np.zeros((seq, 2, 9), np.uint16)
    kp[:, :, :] = [1, 1, 1, 1, 1, 1, 1, 0, 1]
    kp[:, 0, 7] = np.maximum(0, np.arange(seq) - win)
    kp[:, 1, 7] = np.minimum(seq - 1, np.arange(seq) + win)
    res = client.cattend_many(Q, kp)
    assert res["outputs"].dtype == np.float32
    K64, Q64 = K.astype(np.float64), Q.astype(np.float64)
    for i in range(0, seq, 17):
        lo, hi = max(0, i - win), min(seq, i + win + 1)
        w = _softmax(K64[lo:hi] @ Q64[i] / math.sqrt(d))
        np.testing.assert_allclose(res["outputs"][i], w @ K64[lo:hi], atol=1e-5)
