"""The client's GET_MANY reader of vtpu._core (``parse_scroll_columns`` /
``ScrollList``) against the generic msgpack codec, and batched reads end to end. The
wire codec proper is tested in ``tests/test_codec.py``. No timing assertions.
"""
from __future__ import annotations

import numpy as np
import pytest

import vtpu
from vtpu import _core
from vtpu import errors as E
from vtpu import protocol as P
from vtpu.coords import Scroll
from vtpu.engine import Engine
from vtpu.testing import running_server

MIXED = [
    b"v" * 32, "héllo", 3, -5, 2.5, None, True, [1, "a"], {"x": b"y"},
    np.arange(3, dtype=np.float32), "x" * 40, "y" * 300, b"z" * 70000, 1 << 63, "",
    b"", 0,
]


def blob_of(n: int, first: int = 1) -> bytes:
    arr = np.zeros((n, 9), dtype=np.uint16)
    arr[:, 0] = first
    arr[:, 3] = np.arange(n) // 1000
    arr[:, 4] = np.arange(n) % 1000
    return _core.pack_many(arr)


def keys_of(blob: bytes) -> list[bytes]:
    return [blob[i:i + 18] for i in range(0, len(blob), 18)]


@pytest.fixture
def engine():
    e = Engine()
    blob = blob_of(len(MIXED) * 3)
    e.put_many(blob, [MIXED[i % len(MIXED)] for i in range(len(MIXED) * 3)])
    return e, blob


# -- parse_scroll_columns / ScrollList -------------------------------------------------------


def parsed(e, q):
    body = P.encode_response_scrolls(5, e.get_many(q))[4:]
    sl, end = _core.parse_scroll_columns(body, 3, Scroll, e.names, P.unpackb)
    assert end == len(body)
    return sl


def test_scroll_list_equals_the_engine_result(engine):
    e, blob = engine
    q = blob + bytes(18) + blob[:18]
    want = e.get_many(q)
    sl = parsed(e, q)
    assert len(sl) == len(want)
    assert sl == want and want == list(sl) and not (sl != want)
    assert [s is None for s in sl] == [s is None for s in want]
    for got, exp in zip(sl, want):
        if exp is not None:
            assert type(got) is Scroll
            assert got.key == exp.key and got.version == exp.version
            assert got.created_at == exp.created_at and got.updated_at == exp.updated_at
            assert got.coordinate == exp.coordinate
            assert dict(got).keys() == dict(exp).keys()


def test_scroll_list_behaves_like_a_list(engine):
    e, blob = engine
    q = blob[:90] + bytes(18)
    want = e.get_many(q)
    sl = parsed(e, q)
    assert sl[0] == want[0] and sl[-1] is None and sl[-2] == want[-2]
    assert sl[1:4] == want[1:4] and sl[::-2] == want[::-2]
    assert sl[2] is sl[2]  # made once, then kept
    assert list(reversed(sl)) == list(reversed(want))
    assert want[3] in sl and None in sl and sl.index(None) == 5
    assert sl.count(None) == 1
    assert sl.tolist() == want and sl + [1] == want + [1] and [1] + sl == [1] + want
    assert sl != want[:-1] and sl != tuple(want)
    assert sl.__reduce__() == (list, (want,))  # pickles as a plain list
    assert repr(sl) == repr(want)
    for bad in (6, -7, 100):
        with pytest.raises(IndexError):
            sl[bad]
    with pytest.raises(ValueError):
        sl.index("nothing")
    with pytest.raises(TypeError):
        hash(sl)


def test_scroll_list_contents_keep_their_types(engine):
    e, blob = engine
    sl = parsed(e, blob)
    for s, c in zip(sl, [MIXED[i % len(MIXED)] for i in range(len(sl))]):
        if isinstance(c, np.ndarray):
            assert s.content.dtype == c.dtype and np.array_equal(s.content, c)
        else:
            assert type(s.content) is type(c) and s.content == c


def test_parse_leaves_other_shapes_to_the_generic_decoder():
    stacked = P.packb(P.scrolls_to_wire([
        Scroll(blob_of(1), np.zeros(2), 1, 1.0, 1.0), Scroll(blob_of(1), np.ones(2), 1, 1.0, 1.0)]))
    assert _core.parse_scroll_columns(stacked, 0, Scroll, None, P.unpackb) is None
    int_times = P.packb([blob_of(1), [b"x"], [1], [5], [6]])
    assert _core.parse_scroll_columns(int_times, 0, Scroll, None, P.unpackb) is None
    assert _core.parse_scroll_columns(P.packb([1, 2]), 0, Scroll, None, P.unpackb) is None


def test_parse_refuses_inconsistent_columns():
    k = blob_of(2)
    for bad in ([k, [b"a"], [1, 1], [1.0, 1.0], [1.0, 1.0]],
                [k, [b"a", b"b"], [1], [1.0, 1.0], [1.0, 1.0]],
                [k[:20], [b"a"], [1], [1.0], [1.0]]):
        with pytest.raises(E.ProtocolError):
            _core.parse_scroll_columns(P.packb(bad), 0, Scroll, None, P.unpackb)
    good = P.packb([k, [b"a", b"b"], [1, 1], [1.0, 1.0], [1.0, 1.0]])
    for cut in (len(good) - 1, len(good) - 12, 30, 3):
        # truncated: refused, or (None) left to the generic decoder, which refuses it
        try:
            r = _core.parse_scroll_columns(good[:cut], 0, Scroll, None, P.unpackb)
        except E.ProtocolError:
            continue
        assert r is None
        with pytest.raises(E.ProtocolError):
            P.unpackb(good[:cut])


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.integration
def test_remote_get_many_and_pipelines_end_to_end():
    with running_server() as (host, port):
        c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
        try:
            coords = [f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 40)]
            c.cput_many(coords, [MIXED[i % len(MIXED)] for i in range(len(coords))])
            got = c.cget_many(coords + ["9.9.9/9.9.9/9.9.9"])
            assert len(got) == 40 and got[-1] is None
            assert [s.coordinate for s in got[:-1]] == coords
            assert got[:-1] == [c.cget(x) for x in coords]
            with c.pipeline() as p:
                for x in coords[:5]:
                    p.cget(x)
                p.cput(coords[0], "new")
                p.ccount("1.1.1/1.1.1/1.1.*")
                p.cget(coords[0])
            res = p.results
            assert res[5] == 2 and res[6] == 39 and res[7].content == "new"
            assert [s.coordinate for s in res[:5]] == coords[:5]
        finally:
            c.close()
