"""The compiled wire fast paths of vtpu._core against the generic msgpack codec.

``scroll_columns_msgpack`` (server GET_MANY), ``parse_scroll_columns`` / ``ScrollList``
(client GET_MANY) and ``serve_requests`` (server GET/PUT frame loop) must produce and
accept exactly what :mod:`vtpu.protocol` does; anything outside their simple shapes must
be left to the generic code. No timing assertions.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import vtpu
from vtpu import _core
from vtpu import errors as E
from vtpu import protocol as P
from vtpu import server as S
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


# -- scroll_columns_msgpack ----------------------------------------------------------------


def test_columns_equal_the_generic_encoding(engine):
    e, blob = engine
    q = blob + bytes(18) + blob_of(2, first=9) + blob[:36]  # misses and repeats
    want = P.packb(P.scrolls_to_wire(e.get_many(q)))
    assert _core.scroll_columns_msgpack(e._map, q, P.packb, Scroll) == want


def test_columns_empty_and_all_missing():
    e = Engine()
    for q in (b"", blob_of(3), blob_of(20)):
        want = P.packb(P.scrolls_to_wire(e.get_many(q)))
        assert _core.scroll_columns_msgpack(e._map, q, P.packb, Scroll) == want


def test_columns_leave_stacked_arrays_to_the_generic_encoder():
    e = Engine()
    blob = blob_of(4)
    e.put_many(blob, np.arange(8, dtype=np.float64).reshape(4, 2))
    assert _core.scroll_columns_msgpack(e._map, blob, P.packb, Scroll) is None


def test_columns_refuse_a_ragged_blob():
    with pytest.raises(E.InterfaceError):
        _core.scroll_columns_msgpack({}, b"x" * 19, P.packb, Scroll)


def test_columns_read_scroll_subclasses_through_attributes():
    class Lazy(Scroll):
        __slots__ = ()

        @property
        def content(self):
            return "from property"

    k = blob_of(1)
    s = Lazy.__new__(Lazy)
    for name, v in zip(("key", "version", "created_at", "updated_at", "_names"),
                       (k, 2, 1.0, 2.0, None)):
        object.__setattr__(s, name, v)
    got = _core.scroll_columns_msgpack({k: s}, k, P.packb, Scroll)
    assert P.unpackb(got) == [k, ["from property"], [2], [1.0], [2.0]]


# -- parse_scroll_columns / ScrollList -------------------------------------------------------


def parsed(e, q):
    raw = _core.scroll_columns_msgpack(e._map, q, P.packb, Scroll)
    body = b"\x93\x05\x00" + raw
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


# -- serve_requests ---------------------------------------------------------------------------


class _Conn:
    authed = True
    out_limit = P.DEFAULT_MAX_FRAME_SIZE


def generic_replies(e, data):
    async def run():
        st = S._Server(e, None, P.DEFAULT_MAX_FRAME_SIZE, 65536, 100000)
        dec = P.FrameDecoder()
        dec.feed(data)
        out = []
        while (b := dec.next_body()) is not None:
            out.append(st.handle_body(_Conn(), b)[0])
        return b"".join(out)

    return asyncio.run(run())


def serve(e, data, put=None, max_frame=P.DEFAULT_MAX_FRAME_SIZE,
          out_limit=P.DEFAULT_MAX_FRAME_SIZE, max_frames=10**6):
    return _core.serve_requests(data, 0, len(data), e._map, put, P.packb, P.unpackb, Scroll,
                                max_frame, out_limit, max_frames)


# Request frames with the msgid in its 5-byte uint32 form (``ce``), the form a client
# with a fixed-layout header sends: fixarray(3), ce msgid, opcode, args.
_GET_TAIL = P.packb("GET") + b"\x91\xc4\x12"  # args = [bin8(18)], the key follows
_PUT2 = P.packb("PUT") + b"\x92\xc4\x12"  # args = [bin8(18), content]


def _request_frame(msgid, op, tail, max_frame_size):
    body = b"\x93\xce" + msgid.to_bytes(4, "big") + tail
    assert len(body) <= max_frame_size
    return len(body).to_bytes(4, "big") + body


def test_get_frames_equal_the_generic_replies(engine):
    e, blob = engine
    ks = keys_of(blob) + [bytes(18)]
    data = b"".join(_request_frame(i + 1, "GET", _GET_TAIL + k, 1 << 26)
                    for i, k in enumerate(ks))
    data += P.encode_request(7, "GET", [ks[0]])  # a one-byte msgid
    pos, replies, count, wrote, err = serve(e, data)
    assert (pos, count, wrote, err) == (len(data), len(ks) + 1, False, None)
    assert replies == generic_replies(e, data)


def test_put_frames_equal_the_generic_path(engine):
    e, blob = engine
    ks = keys_of(blob)
    data = b"".join(_request_frame(i + 1, "PUT", _PUT2 + k + P.packb(MIXED[i % len(MIXED)]),
                                   1 << 26) for i, k in enumerate(ks))
    fresh = Engine()
    pos, replies, count, wrote, err = serve(fresh, data, put=fresh.put)
    assert (pos, count, wrote, err) == (len(data), len(ks), True, None)
    assert replies == b"".join(P.encode_response(i + 1, 1) for i in range(len(ks)))
    for k in ks:
        assert P.packb(fresh.get(k).content) == P.packb(e.get(k).content)


def test_stops_at_frames_it_does_not_handle(engine):
    e, blob = engine
    k = keys_of(blob)[0]
    get = _request_frame(1, "GET", _GET_TAIL + k, 1 << 26)
    put = _request_frame(2, "PUT", _PUT2 + k + P.packb("v"), 1 << 26)
    others = [
        P.encode_request(3, "COUNT", [bytes(36)]),
        P.encode_request(3, "PUT", [k, "v", 1]),  # if_version
        P.encode_request(3, "GET", [k, 1]),  # extra argument
        _request_frame(3, "PUT", _PUT2 + _core.pack(_core.parse_coord("1.1.1/1.1.1/1.1.1"))
                       .replace(b"\x00\x01", b"\xf0\x00", 1) + P.packb("v"), 1 << 26),
        _request_frame(3, "PUT", _PUT2 + k + b"\xc1", 1 << 26),  # malformed content
    ]
    for other in others:
        pos, replies, count, _w, err = serve(e, get + other + get, put=e.put)
        assert (pos, count, err) == (len(get), 1, None)
    assert serve(e, get + get[:-1])[:3:2] == (len(get), 1)  # incomplete frame
    # PUT without a put function is left alone too
    assert serve(e, get + put)[:3:2] == (len(get), 1)
    assert serve(e, get * 5, max_frames=3)[2] == 3
    assert serve(e, get + put, put=e.put, max_frame=20)[2] == 0


def test_large_get_reply_is_left_to_the_generic_limit_error(engine):
    e, blob = engine
    big = keys_of(blob)[12]  # the 70 kB content
    assert len(e.get(big).content) == 70000
    data = _request_frame(1, "GET", _GET_TAIL + big, 1 << 26)
    assert serve(e, data, out_limit=1024)[2] == 0
    assert serve(e, data)[2] == 1


def test_put_errors_are_reported_with_their_msgid(engine):
    e, blob = engine
    k = keys_of(blob)[0]

    def failing_put(key, content):
        raise E.InterfaceError("no")

    data = (_request_frame(4, "PUT", _PUT2 + k + P.packb("a"), 1 << 26)
            + _request_frame(5, "GET", _GET_TAIL + k, 1 << 26))
    pos, replies, count, wrote, err = serve(e, data, put=failing_put)
    assert replies == b"" and count == 1 and wrote and err[0] == 4
    assert isinstance(err[1], E.InterfaceError)
    assert pos == len(data) - len(_request_frame(5, "GET", _GET_TAIL + k, 1 << 26))


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
