"""One test suite for both wire codecs: the reference (vtpu.protocol) and its compiled
twin (vtpu._cprotocol), as msgpack-python runs one suite over its C and Python packers.

Every test takes the ``codec`` fixture and runs once per implementation: the golden
vectors (whole, byte at a time, random splits), the invalid ones, and the hot shapes
(GET runs, GET replies, scroll lists) checked against the generic codec and against
each other on random streams. ``VTPU_REQUIRE_EXT=1`` turns a missing compiled twin into
a failure, and then also asserts that :mod:`vtpu.wire` picked it.
"""
from __future__ import annotations

import importlib
import operator
import os
import random
import struct
import sys
import types

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vtpu import _core
from vtpu import errors as E
from vtpu import protocol as P
from vtpu import wire
from vtpu.coords import NameTable, Scroll
from vtpu.engine import Engine
from vtpu.results import Scrolls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import from_json, load_vectors, to_json  # noqa: E402

FRAMES = load_vectors("frames")


def _compiled():
    try:
        return importlib.import_module("vtpu._cprotocol")
    except ImportError as exc:
        if os.environ.get("VTPU_REQUIRE_EXT"):
            pytest.fail(f"VTPU_REQUIRE_EXT is set but vtpu._cprotocol does not import: {exc}")
        pytest.skip(f"vtpu._cprotocol is not built: {exc}")


@pytest.fixture(params=["python", "cython"])
def codec(request):
    """The module implementing the codec functions: reference or compiled twin."""
    return P if request.param == "python" else _compiled()


# -- the selection ---------------------------------------------------------------------


def test_both_twins_export_every_codec_name():
    twin = _compiled()
    for name in P.CODEC_NAMES:
        assert hasattr(P, name) and hasattr(twin, name), name
        assert getattr(wire, name) is getattr(twin if wire.IMPLEMENTATION == "cython" else P,
                                              name)


def test_wire_picks_the_compiled_twin_when_it_is_built():
    if os.environ.get("VTPU_PUREPYTHON"):
        assert wire.IMPLEMENTATION == "python"
        assert wire.FrameDecoder is P.FrameDecoder
        return
    twin = _compiled()
    assert wire.IMPLEMENTATION == "cython"
    assert wire.FrameDecoder is twin.FrameDecoder
    assert type(wire.encode_get_replies).__name__ != "function"


def test_wire_exports_every_codec_name_from_one_implementation():
    assert set(P.CODEC_NAMES) <= set(wire.__all__)
    impl = P if wire.IMPLEMENTATION == "python" else _compiled()
    for name in P.CODEC_NAMES:
        assert getattr(wire, name) is getattr(impl, name), name
    for name in wire.__all__:
        assert hasattr(wire, name), name


def test_wire_reexports_the_shared_names():
    for name in ("OPS", "KEY_SIZE", "packb", "encode_error", "encode_push",
                 "parse_request", "parse_reply", "pack_coords", "check_key", "RequestError"):
        assert getattr(wire, name) is getattr(P, name)


# -- helpers ---------------------------------------------------------------------------


def split_random(data: bytes, rng: random.Random, most: int = 7):
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, most)
        out.append(data[i : i + n])
        i += n
    return out


def key(i: int) -> bytes:
    return struct.pack(">9H", 7, 0, 0, 0, 0, 0, 0, i >> 16, i & 0xFFFF)


_PLAIN = {int, float, str, bytes, bool, type(None)}


def same(a, b):
    """Deep equality that also compares numpy arrays, Scrolls and value types."""
    if isinstance(a, Scroll) or isinstance(b, Scroll):
        return (isinstance(a, Scroll) and isinstance(b, Scroll)
                and (a.key, a.version, a.created_at, a.updated_at, a.names)
                == (b.key, b.version, b.created_at, b.updated_at, b.names)
                and same(a.content, b.content))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False
        types = list(map(type, a))
        if types == list(map(type, b)) and _PLAIN.issuperset(types):
            return all(map(operator.eq, a, b))  # what recursing would do, without the calls
        return all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


MIXED = [
    b"v" * 32, "héllo", 3, -5, 2.5, None, True, False, [1, "a", [2, [3]]], {"x": b"y"},
    np.arange(3, dtype=np.float32), "x" * 40, "y" * 300, "z" * 70000, b"w" * 70000,
    1 << 63, (1 << 64) - 1, -(1 << 40), "", b"", 0, 127, 128, 255, 256, 65535, 65536,
    (1, 2), np.float64(0.5), np.int64(-3), [None] * 20, list(range(70000)),
]


def scrolls_of(contents, names=None):
    return [Scroll(key(i), c, i + 1, 1700000000.0 + i, 1700000001.5 + i, names)
            for i, c in enumerate(contents)]


# -- golden vectors: every valid frame -------------------------------------------------


@pytest.mark.parametrize("vec", FRAMES["valid"], ids=lambda v: v["name"])
def test_frame_vector_decodes_whole(codec, vec):
    d = codec.FrameDecoder()
    d.feed(bytes.fromhex(vec["hex"]))
    msgs = list(d)
    assert [to_json(m) for m in msgs] == [vec["value"]]
    assert d.buffered() == 0


@pytest.mark.parametrize("vec", FRAMES["valid"], ids=lambda v: v["name"])
def test_frame_vector_decodes_byte_at_a_time(codec, vec):
    data = bytes.fromhex(vec["hex"])
    d = codec.FrameDecoder()
    got = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        m = d.next()
        if m is not None:
            got.append((i, m))
    assert len(got) == 1 and got[0][0] == len(data) - 1
    assert to_json(got[0][1]) == vec["value"]


@pytest.mark.parametrize("vec", [v for v in FRAMES["valid"] if v["encode"]],
                         ids=lambda v: v["name"])
def test_frame_vector_encodes(codec, vec):
    msg = from_json(vec["value"])
    assert P.encode_frame(msg).hex() == vec["hex"]
    if "request" in vec["name"]:
        assert codec.encode_request(*msg).hex() == vec["hex"]
    elif type(msg) is list and len(msg) == 3 and msg[1] == P.STATUS_OK:
        assert codec.encode_response(msg[0], msg[2]).hex() == vec["hex"]


def test_scroll_vectors_encode_through_the_scroll_encoders(codec):
    by_name = {v["name"]: v for v in FRAMES["valid"]}
    for name in ("get_many_response", "get_many_response_stacked"):
        vec = by_name[name]
        msgid, _, w = from_json(vec["value"])
        scrolls = [None if row is None else Scroll(*row) for row in P.wire_to_rows(w)]
        assert codec.encode_response_scrolls(msgid, scrolls).hex() == vec["hex"]
        assert codec.encode_scrolls(scrolls) == P.packb(w)
        # a Scrolls result is written from its columns: the same bytes
        for sl in (Scrolls.from_scrolls(scrolls), P.wire_to_scrolls(w)):
            assert codec.encode_response_scrolls(msgid, sl).hex() == vec["hex"]
            assert codec.encode_scrolls(sl) == P.packb(w)
        r = codec.decode_response_scrolls(bytes.fromhex(vec["hex"])[4:])
        assert r.msgid == msgid and r.ok and same(list(r.value), scrolls)
    vec = by_name["range_response_scrolls"]
    msgid, _, (w, after) = from_json(vec["value"])
    scrolls = [Scroll(*row) for row in P.wire_to_rows(w)]
    assert codec.encode_response_scrolls(msgid, scrolls, page=True, after=after).hex() == \
        vec["hex"]
    assert codec.encode_response_scrolls(msgid, P.wire_to_scrolls(w), page=True,
                                         after=after).hex() == vec["hex"]
    r = codec.decode_response_scrolls(bytes.fromhex(vec["hex"])[4:], page=True)
    assert same(list(r.value[0]), scrolls) and r.value[1] == after
    vec = by_name["get_response_found"]
    msgid, _, row = from_json(vec["value"])
    assert codec.encode_get_replies([msgid], [Scroll(*row)])[0].hex() == vec["hex"]
    data = bytes.fromhex(vec["hex"]) + bytes.fromhex(by_name["get_response_missing"]["hex"])
    got, pos, more = codec.decode_get_replies(data, 0, len(data), msgid, 5)
    assert same(got, [Scroll(*row)]) and (pos, more) == (len(vec["hex"]) // 2, False)
    got, pos, more = codec.decode_get_replies(data, pos, len(data), msgid, 5)
    assert got == [None] and (pos, more) == (len(data), True)  # the missing one: same id
    vec = by_name["get_request"]
    msgid, _, (k,) = from_json(vec["value"])
    assert codec.encode_get_requests(msgid, k).hex() == vec["hex"]


def test_all_vectors_in_one_stream_random_splits(codec):
    data = b"".join(bytes.fromhex(v["hex"]) for v in FRAMES["valid"])
    want = [v["value"] for v in FRAMES["valid"]]
    rng = random.Random(1)
    for _ in range(20):
        d = codec.FrameDecoder()
        msgs = []
        for c in split_random(data, rng):
            d.feed(c)
            msgs.extend(d)
        assert [to_json(m) for m in msgs] == want
        assert d.buffered() == 0


# -- golden vectors: invalid frames ----------------------------------------------------


@pytest.mark.parametrize("vec", FRAMES["invalid"], ids=lambda v: v["name"])
def test_invalid_vector(codec, vec):
    data = bytes.fromhex(vec["hex"])
    mfs = vec.get("max_frame_size", P.DEFAULT_MAX_FRAME_SIZE)
    d = codec.FrameDecoder(mfs)
    if vec.get("incomplete"):
        d.feed(data)
        assert d.next() is None and d.next_requests(10) is None and d.buffered() == len(data)
        assert codec.decode_get_replies(data, 0, len(data), 1, 10) == ([], 0, True)
        return
    assert vec["error"] == "ProtocolError"
    if vec["stage"] == "frame":
        for take in ("next", "next_requests"):
            d = codec.FrameDecoder(mfs)
            d.feed(data)
            with pytest.raises(E.ProtocolError):
                if take == "next":
                    d.next()
                else:
                    d.next_requests(10)
        # the in-place reader stops there and leaves the frame to the generic reader
        assert codec.decode_get_replies(data, 0, len(data), 1, 10, None, mfs)[:2] == ([], 0)
        d = codec.FrameDecoder(mfs)
        with pytest.raises(E.ProtocolError):
            for i in range(len(data)):
                d.feed(data[i : i + 1])
                d.next()
    elif vec["stage"] == "request":
        d.feed(data)
        with pytest.raises(P.RequestError) as info:
            d.next_requests(10)
        assert d.buffered() == 0  # consumed: the stream goes on
        if "msgid" in vec:
            # §3: the error reply carries the msgid whenever it could be read.
            assert info.value.msgid == vec["msgid"]
    else:
        d.feed(data)
        with pytest.raises(E.ProtocolError):
            P.parse_reply(d.next())


def test_oversized_refused_from_header_alone(codec):
    d = codec.FrameDecoder(1000)
    d.feed(struct.pack(">I", 1001))
    with pytest.raises(E.FrameTooLarge, match="exceeds max_frame_size"):
        d.next()
    for take in (lambda: d.next_body(), lambda: d.next_requests(5)):
        with pytest.raises(E.FrameTooLarge):
            take()


def test_frame_at_exact_limit_is_accepted(codec):
    body = msgpack.packb("x" * 95)
    d = codec.FrameDecoder(len(body))
    d.feed(struct.pack(">I", len(body)) + body)
    assert d.next() == "x" * 95


def test_truncated_stream_keeps_waiting(codec):
    frame = codec.encode_request(1, "PUT", [bytes(18), "x" * 1000])
    d = codec.FrameDecoder()
    d.feed(frame[:-1])
    assert d.next() is None and d.next_body() is None
    assert d.buffered() == len(frame) - 1
    d.feed(memoryview(frame)[-1:])
    assert d.next_body() == frame[4:]


def test_head_size_announces_the_frame_still_arriving(codec):
    a = codec.encode_request(1, "PUT", [bytes(18), "x" * 1000])
    b = codec.encode_request(2, "GET", [bytes(18)])
    d = codec.FrameDecoder()
    assert d.head_size() == 0
    d.feed(a[:3])
    assert d.head_size() == 0   # fewer than 4 bytes: nothing announced yet
    d.feed(a[3:10])
    assert d.head_size() == len(a)   # from the header alone
    d.feed(a[10:] + b[:2])
    assert d.head_size() == len(a)   # complete, not consumed
    assert d.next() is not None and d.head_size() == 0
    d.feed(b[2:])
    assert d.head_size() == len(b)
    d.feed(struct.pack(">I", 2 ** 32 - 1))
    assert d.next() is not None
    assert d.head_size() == 2 ** 32 + 3   # announced, though no decoder would take it


def test_large_frames_and_buffer_reuse(codec):
    big = np.arange(300_000, dtype="<f8")
    frames = b"".join(codec.encode_response(i, big) for i in range(1, 4))
    d = codec.FrameDecoder()
    msgs = []
    for i in range(0, len(frames), 65536):
        d.feed(bytearray(frames[i : i + 65536]))
        msgs.extend(d)
    assert [m[0] for m in msgs] == [1, 2, 3]
    assert all(np.array_equal(m[2], big) for m in msgs)
    assert d.buffered() == 0


def test_garbage_after_valid_frame(codec):
    d = codec.FrameDecoder()
    d.feed(codec.encode_request(1, "PING", []) + b"\x00\x00\x00\x02\xc1\xc1")
    assert d.next() == [1, "PING", []]
    with pytest.raises(E.ProtocolError):
        d.next()


def test_random_garbage_never_crashes_the_decoder(codec):
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 64)
        data = struct.pack(">I", n) + bytes(rng.getrandbits(8) for _ in range(n))
        assert codec.decode_get_replies(data, 0, len(data), 1, 5)[1] in (0, len(data))
        for take in (lambda d: d.next(), lambda d: d.next_requests(5)):
            d = codec.FrameDecoder()
            d.feed(data)
            try:
                got = take(d)
            except E.ProtocolError:
                continue
            if got and type(got) is tuple:  # a request or run got through: its shape holds
                if len(got) == 3:
                    msgid, op, args = got
                    assert type(msgid) is int and msgid >= 1 and type(op) is str \
                        and type(args) is list
                else:
                    op, msgids, keys, contents = got
                    assert op in ("GET", "PUT") and len(keys) == 18 * len(msgids)


# -- encoders: same bytes as the generic codec -----------------------------------------


@pytest.mark.parametrize("i", range(len(MIXED)))
def test_requests_and_responses_equal_the_generic_frames(codec, i):
    v = MIXED[i]
    for msgid in (1, 127, 128, 70000, 0xFFFFFFFF):
        assert codec.encode_request(msgid, "PUT", [key(1), v]) == \
            P.encode_frame([msgid, "PUT", [key(1), v]])
        assert codec.encode_response(msgid, v) == P.encode_frame([msgid, 0, v])
        assert codec.encode_response(msgid, [v, [v]]) == P.encode_frame([msgid, 0, [v, [v]]])


def test_encoders_refuse_what_the_reference_refuses(codec):
    for bad in ({1, 2}, np.array([object()], dtype=object), "\ud800", [[{1}]]):
        with pytest.raises(E.InterfaceError):
            codec.encode_request(1, "PUT", [key(1), bad])
        with pytest.raises(E.InterfaceError):
            codec.encode_response(1, bad)
    with pytest.raises(E.LimitError):
        codec.encode_request(1, "PUT", [key(1), b"x" * 100], 50)
    with pytest.raises(E.LimitError):
        codec.encode_response(1, "x" * 100, 100)
    assert len(codec.encode_response(1, "x" * 95, 100)) == 104  # 3 + 2 + 95 = 100: fits


def test_get_requests_equal_single_requests(codec):
    ks = b"".join(key(i) for i in range(300))
    for first in (1, 100, 0xFFFFFFFF - 299):
        got = codec.encode_get_requests(first, ks)
        want = b"".join(P.encode_request(first + i, "GET", [key(i)]) for i in range(300))
        assert got == want
    assert codec.encode_get_requests(5, b"") == b""
    for bad_keys in (b"x" * 17, bytearray(18), "a" * 18, None):
        with pytest.raises(E.InterfaceError):
            codec.encode_get_requests(1, bad_keys)
    for bad_first in (0, -1, 0xFFFFFFFF, 1.0, True):
        with pytest.raises(E.InterfaceError):
            codec.encode_get_requests(bad_first, key(1) + key(2))


def test_responses_equal_single_responses(codec):
    msgids = list(range(1, len(MIXED) + 1))
    assert codec.encode_responses(msgids, MIXED) == \
        b"".join(P.encode_response(m, v) for m, v in zip(msgids, MIXED))
    assert codec.encode_responses((5, 6), (1, 2)) == P.encode_response(5, 1) + \
        P.encode_response(6, 2)
    assert codec.encode_responses([], []) == b""
    with pytest.raises(E.InterfaceError):
        codec.encode_responses([1], [1, 2])
    with pytest.raises(E.InterfaceError):
        codec.encode_responses([1, 2], [1, {3}])
    with pytest.raises(E.LimitError):
        codec.encode_responses([1, 2], [1, "x" * 5000], 4096)


def test_get_replies_equal_single_responses(codec):
    e = Engine()
    for i, v in enumerate(MIXED):
        e.put(key(i), v)
    scrolls = [e.get(key(i)) for i in range(len(MIXED))] + [None, None]
    msgids = list(range(40, 40 + len(scrolls)))
    got = codec.encode_get_replies(msgids, scrolls)
    frames = [P.encode_response(m, P.scroll_to_wire(s)) for m, s in zip(msgids, scrolls)]
    assert got == (b"".join(frames), len(scrolls))
    assert codec.encode_get_replies((1, 2), (None, None)) == \
        (P.encode_response(1, None) + P.encode_response(2, None), 2)
    # max_bytes: a prefix, up to and including the reply that reaches it
    for cap in (1, len(frames[0]), len(frames[0]) + 1, 70_000, len(b"".join(frames))):
        data, n = codec.encode_get_replies(msgids, scrolls, max_bytes=cap)
        assert data == b"".join(frames[:n])
        assert len(data) >= cap and len(b"".join(frames[:n - 1])) < cap
    with pytest.raises(E.InterfaceError):
        codec.encode_get_replies([1, 2], [None])
    with pytest.raises(E.LimitError):
        codec.encode_get_replies([1, 2], [None, scrolls[13]], 4096)  # 70 kB content


@pytest.mark.parametrize("case", [
    "mixed", "with_none", "first_none", "stacked", "stacked_mixed_shapes", "one_array",
    "empty", "stored", "odd_types", "many",
])
def test_scroll_lists_equal_the_generic_encoding(codec, case):
    names = NameTable()
    if case == "mixed":
        scrolls = scrolls_of(MIXED, names)
    elif case == "with_none":
        scrolls = scrolls_of(MIXED[:5]) + [None] + scrolls_of(["x"])
    elif case == "first_none":
        scrolls = [None] + scrolls_of([np.zeros(3), np.zeros(3)])
    elif case == "stacked":
        scrolls = scrolls_of([np.full(4, i, np.float32) for i in range(5)])
    elif case == "stacked_mixed_shapes":
        scrolls = scrolls_of([np.zeros(3), np.zeros(4), "x"])
    elif case == "one_array":
        scrolls = scrolls_of([np.zeros((2, 2))])
    elif case == "empty":
        scrolls = []
    elif case == "stored":
        # Scrolls read from the engine's column store, their contents loaded still
        # encoded (as from disk) and decoded on the way out.
        store = _core.ColumnStore(names)
        for i, v in enumerate(MIXED[:8]):
            store.set(key(i), P.pack_value(v), 2, 1.0, 2.0, packed=True)
        scrolls = [store.get(key(i)) for i in range(8)]
    elif case == "odd_types":
        # A Scroll's version and times are C fields (int64, double): odd types can only
        # come from another object with the five attributes.
        odd = types.SimpleNamespace
        scrolls = [odd(key=key(1), content="a", version=3, created_at=1, updated_at=2.5),
                   odd(key=key(2), content="b", version=1 << 40, created_at=None,
                       updated_at=0.5)]
    else:
        scrolls = scrolls_of([f"v{i}" for i in range(70000)])
    w = P.scrolls_to_wire(scrolls)
    assert codec.encode_scrolls(scrolls) == P.packb(w)
    for msgid in (3, 70000):
        assert codec.encode_response_scrolls(msgid, scrolls) == P.encode_response(msgid, w)
        for after in (None, key(9)):
            assert codec.encode_response_scrolls(msgid, scrolls, page=True, after=after) == \
                P.encode_response(msgid, [w, after])


def _stored_scrolls(contents, packed=False, missing=()):
    """A Scrolls read from a column store holding ``contents`` (kept encoded, as loaded
    from disk, with ``packed``), asking also for the keys in ``missing``."""
    store = _core.ColumnStore()
    for i, v in enumerate(contents):
        if packed:
            store.set(key(i), P.pack_value(v), i + 1, 1.5 + i, 2.5 + i, packed=True)
        else:
            store.set(key(i), v, i + 1, 1.5 + i, 2.5 + i)
    order = [key(i) for i in range(len(contents))]
    for j in missing:  # a key where nothing is stored, at position j
        order.insert(j, key(900 + j))
    return store.get_many(b"".join(order))


SCROLLS_CASES = {
    "mixed": lambda: _stored_scrolls(MIXED),
    "mixed_packed": lambda: _stored_scrolls(MIXED, packed=True),
    "none_items": lambda: _stored_scrolls(["a", None, b"b"], missing=(0, 2, 5)),
    "only_missing": lambda: _stored_scrolls([], missing=(0, 1)),
    "non_ascii": lambda: _stored_scrolls(["héllo wörld ✓", "日本語" * 20, "é" * 70000]),
    "empty": lambda: _stored_scrolls([]),
    "bytes": lambda: _stored_scrolls([bytes([i]) * (i * 37) for i in range(40)]),
    "stacked": lambda: _stored_scrolls([np.full(4, i, np.float32) for i in range(5)]),
    "stacked_packed": lambda: _stored_scrolls([np.full((2, 3), i, np.int16) for i in range(4)],
                                              packed=True),
    "stacked_big_endian": lambda: _stored_scrolls([np.arange(3, dtype=">f8") + i
                                                   for i in range(3)]),
    "stacked_empty_rows": lambda: _stored_scrolls([np.zeros((2, 0))] * 3),
    "arrays_zero_d": lambda: _stored_scrolls([np.array(1.5), np.array(2.5)]),
    "arrays_mixed_shapes": lambda: _stored_scrolls([np.zeros(3), np.zeros(4), np.zeros(3)]),
    "arrays_and_missing": lambda: _stored_scrolls([np.zeros(3)] * 3, missing=(1,)),
    "arrays_and_text": lambda: _stored_scrolls([np.zeros(3), "x"]),
    "one_array": lambda: _stored_scrolls([np.zeros((2, 2))]),
    "objects": lambda: Scrolls.from_scrolls(scrolls_of(MIXED) + [None]),
    "object_arrays": lambda: Scrolls.from_scrolls(scrolls_of([np.zeros(3), np.ones(3)])),
    "object_then_arena_arrays": lambda: Scrolls.concat([
        Scrolls.from_scrolls(scrolls_of([np.zeros(3)])),
        _stored_scrolls([np.ones(2), np.ones(3), np.full(3, 2.0)])[1:]]),
    "slice": lambda: _stored_scrolls(MIXED, missing=(3,))[::-3],
    "concat": lambda: Scrolls.concat([_stored_scrolls([np.zeros(2)] * 2),
                                      _stored_scrolls([np.ones(2)] * 2, packed=True)]),
}


@pytest.mark.parametrize("case", list(SCROLLS_CASES))
def test_scrolls_encode_as_the_list_of_their_scrolls(codec, case):
    sl = SCROLLS_CASES[case]()
    items = list(sl)
    w = P.scrolls_to_wire(items)
    assert codec.encode_scrolls(sl) == P.encode_scrolls(items) == P.packb(w)
    for msgid in (3, 70000):
        assert codec.encode_response_scrolls(msgid, sl) == P.encode_response(msgid, w)
        for after in (None, key(9)):
            assert codec.encode_response_scrolls(msgid, sl, page=True, after=after) == \
                P.encode_response(msgid, [w, after])
    # a run of GET replies, one per item, written from the columns as from the items
    ids = [1 + 7919 * i for i in range(len(items))]
    want_run = b"".join(P.encode_response(m, P.scroll_to_wire(s)) for m, s in zip(ids, items))
    assert codec.encode_get_replies(ids, sl) == (want_run, len(items))
    if items:
        cut = codec.encode_get_replies(ids, sl, max_bytes=len(want_run) // 2)
        assert cut == codec.encode_get_replies(ids, items, max_bytes=len(want_run) // 2)
        assert cut[1] <= len(items) and want_run.startswith(cut[0])
    # and decode back to equal items
    got, end = codec.decode_scrolls(codec.encode_scrolls(sl))
    want = [None if s is None else Scroll(s.key, P.unpackb(P.packb(s.content)), s.version,
                                          s.created_at, s.updated_at) for s in items]
    assert same(list(got), want)


def test_scrolls_encoders_refuse_like_the_reference(codec):
    with pytest.raises(E.InterfaceError):
        codec.encode_scrolls(Scrolls.from_scrolls(scrolls_of(["ok", {1, 2}])))
    with pytest.raises(E.LimitError):
        codec.encode_response_scrolls(1, _stored_scrolls(["x" * 5000]), 4096)
    assert len(codec.encode_response_scrolls(1, _stored_scrolls(["x" * 5000]), 5100)) > 5000


def test_scrolls_columns_are_views_of_the_result():
    sl = _stored_scrolls(["té", b"\x00b", None, np.arange(3, dtype=np.int32), {"k": 1}],
                         missing=(1,))
    cols = sl.columns()
    assert cols.keys == sl.keys and len(cols.kinds) == len(sl) == 6
    assert bytes(cols.kinds) == bytes([_core.KIND_STR, _core.KIND_DEAD, _core.KIND_BYTES,
                                       _core.KIND_NONE, _core.KIND_ARRAY, _core.KIND_OBJECT])
    assert (cols.versions.format, cols.created.format, cols.offsets.format) == ("q", "d", "q")
    assert cols.versions.tolist() == sl.versions.tolist() == [1, 0, 2, 3, 4, 5]
    assert cols.created.tolist() == sl.created_at.tolist()
    assert cols.updated.tolist() == sl.updated_at.tolist()
    assert np.frombuffer(cols.versions, np.int64).tolist() == [1, 0, 2, 3, 4, 5]
    off, ln, data = cols.offsets, cols.lengths, cols.data
    assert data[off[0]:off[0] + ln[0]] == "té".encode()
    assert data[off[2]:off[2] + ln[2]] == b"\x00b"
    dtype, shape = cols.types[int.from_bytes(data[off[4]:off[4] + 4], "little")]
    assert (dtype, shape) == (np.dtype(np.int32), (3,))
    assert np.frombuffer(data, dtype, 3, off[4] + 4).tolist() == [0, 1, 2]
    assert cols.objects[off[5]] == {"k": 1}
    assert cols.versions.readonly
    with pytest.raises(TypeError):
        cols.versions[0] = 7
    del sl
    assert cols.versions.tolist() == [1, 0, 2, 3, 4, 5]  # the views keep the result


def test_scrolls_from_spans_inverts_columns():
    names = NameTable()
    for sl in (_stored_scrolls(MIXED, missing=(0, 4)), _stored_scrolls(MIXED, packed=True),
               _stored_scrolls([]), Scrolls.from_scrolls(scrolls_of(MIXED) + [None])):
        cols = sl.columns()
        back = Scrolls.from_spans(*cols, names=sl.names)
        assert type(back) is Scrolls and same(list(back), list(sl))
        assert back.keys == sl.keys and back.found.tolist() == sl.found.tolist()
        named = Scrolls.from_spans(*cols, names=names)
        assert all(s is None or s.names is names for s in named)


def test_scrolls_from_spans_refuses_bad_columns():
    good = dict(keys=key(1) + key(2), versions=[1, 2], created=[1.0, 2.0],
                updated=[1.0, 2.0], kinds=[_core.KIND_BYTES, _core.KIND_STR],
                offsets=[0, 2], lengths=[2, 3], data=b"abxyz")
    got = Scrolls.from_spans(**good)
    assert [s.content for s in got] == [b"ab", "xyz"] and got.versions.tolist() == [1, 2]
    for change in (dict(keys=key(1)[:17]), dict(versions=[1]), dict(kinds=[9, 2]),
                   dict(offsets=[0, 3]), dict(lengths=[-1, 3]), dict(data=b"ab\xff\xfe\xfd"),
                   dict(kinds=[_core.KIND_OBJECT, 2]), dict(kinds=[_core.KIND_ARRAY, 2]),
                   dict(kinds=[_core.KIND_ARRAY, 2], data=b"\x00\x00\x00\x00\x00",
                        lengths=[4, 1], types=[(np.dtype(np.int8), (2,))]),
                   dict(objects=("not", "a list")), dict(created="x")):
        with pytest.raises(E.InterfaceError):
            Scrolls.from_spans(**{**good, **change})
    # a dead item keeps no content, version or times
    dead = Scrolls.from_spans(**{**good, "kinds": [_core.KIND_DEAD, _core.KIND_STR]})
    assert dead[0] is None and dead.versions.tolist() == [0, 2]
    assert dead.created_at.tolist() == [0.0, 2.0]


def test_compiled_decoder_keeps_bin_str_and_number_contents_as_spans():
    twin = _compiled()
    numbers = [7, -3, 200, -200, 70_000, -70_000, 2**40, -2**40, 2**64 - 1, -2**63,
               True, False, 1.5, -0.25]
    contents = [b"ab", "cé", None] + numbers + [[1, 2]]
    raw = twin.encode_scrolls(_stored_scrolls(contents, missing=(len(contents),)))
    got, end = twin.decode_scrolls(raw)
    cols = got.columns()
    assert end == len(raw) and cols.data is raw  # no copy of the contents
    assert bytes(cols.kinds) == bytes([_core.KIND_BYTES, _core.KIND_STR, _core.KIND_NONE]
                                      + [_core.KIND_PACKED] * len(numbers)
                                      + [_core.KIND_OBJECT, _core.KIND_DEAD])
    # each number's span is its own msgpack encoding, read back as msgpack reads it
    for i, v in enumerate(numbers, start=3):
        span = raw[cols.offsets[i]:cols.offsets[i] + cols.lengths[i]]
        assert msgpack.unpackb(span) == v and type(msgpack.unpackb(span)) is type(v)
    read = [None if s is None else s.content for s in got]
    assert read == contents + [None]
    assert [type(v) for v in read[3:-2]] == [type(v) for v in numbers]
    assert got.contents == contents + [None]


def test_scroll_fields_are_read_as_getattr_reads_them(codec):
    class Plain:  # instance attributes, no descriptors
        def __init__(self, i):
            self.key, self.content, self.version = key(i), f"plain{i}", 1
            self.created_at = self.updated_at = 1.0

    class Loud(Scroll):
        __slots__ = ()

        def __getattribute__(self, name):
            v = object.__getattribute__(self, name)
            return v.upper() if name == "content" else v

    class Lazy(Scroll):
        __slots__ = ()
        content = property(lambda self: "lazy", lambda self, v: None)

    mixed = [Scroll(key(1), "s", 1, 1.0, 1.0), Plain(2), Loud(key(3), "loud", 1, 1.0, 1.0),
             Lazy(key(4), "x", 1, 1.0, 1.0), Scroll(key(5), "t", 2, 1.0, 2.0), Plain(6)]
    for scrolls in (mixed, mixed[::-1], [mixed[3]] * 3):
        w = P.scrolls_to_wire(scrolls)
        assert w[1][:2] != ["x", "x"]
        assert codec.encode_scrolls(scrolls) == P.packb(w)
        assert codec.encode_get_replies(list(range(1, len(scrolls) + 1)), scrolls)[0] == \
            b"".join(P.encode_response(i + 1, P.scroll_to_wire(x)) for i, x in enumerate(scrolls))
    # a class changed after use is read as it is now
    Lazy.content = property(lambda self: "changed", lambda self, v: None)
    assert P.unpackb(codec.encode_scrolls([mixed[3]]))[1] == ["changed"]
    assert P.unpackb(codec.encode_get_replies([1], [mixed[3]])[0][4:])[2][1] == "changed"


def test_scroll_list_encoders_refuse_like_the_reference(codec):
    bad = scrolls_of(["ok", {1, 2}])
    with pytest.raises(E.InterfaceError):
        codec.encode_scrolls(bad)
    with pytest.raises(E.InterfaceError):
        codec.encode_response_scrolls(1, bad)
    with pytest.raises(E.LimitError):
        codec.encode_response_scrolls(1, scrolls_of(["x" * 5000]), 4096)
    # a key that is not 18 bytes is encoded as given (the reference joins the keys)
    odd = [Scroll(b"short", "x", 1, 1.0, 1.0)]
    assert codec.encode_scrolls(odd) == P.packb(P.scrolls_to_wire(odd))


# -- one msgpack value -----------------------------------------------------------------


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=300)
    | st.builds(lambda n: np.arange(n, dtype=np.int16), st.integers(0, 4)),
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 300), inner, max_size=6),
    max_leaves=40)


def _decoded(codec, data):
    """What ``codec.unpackb`` gives for ``data``: ("ok", re-encoded value) or ("error",
    message), comparable across the twins (arrays and NaNs included)."""
    try:
        return "ok", P.packb(codec.unpackb(data))
    except E.ProtocolError as exc:
        return "error", str(exc)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_unpackb_twins_agree_on_values(value):
    raw = P.packb(value)
    assert _decoded(_compiled(), raw) == _decoded(P, raw) == ("ok", raw)
    for form in (bytearray(raw), memoryview(raw)):
        assert _decoded(_compiled(), form) == ("ok", raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUES, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                         max_size=4), st.integers(-3, 3))
def test_unpackb_twins_agree_on_damaged_bytes(value, flips, cut):
    """Bytes changed, cut short or followed by more: the same value or the same error."""
    raw = bytearray(P.packb(value))
    for at, b in flips:
        raw[at % len(raw)] = b
    raw = bytes(raw[:len(raw) + cut] if cut < 0 else raw + b"\xc0" * cut)
    assert _decoded(_compiled(), raw) == _decoded(P, raw)


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", b"\x92\x01", b"\x91" * 1100 + b"\xc0", b"\xa2\xc3\x28", b"\x81\x91\x01\x02",
    b"\xdd\xff\xff\xff\xff", b"\xdf\x00\x01\x00\x00\x01", b"\xd4\x05\x00", b"\x01\x02",
], ids=["empty", "reserved", "cut-array", "deep", "bad-utf8", "list-key", "huge-array",
        "huge-map", "unknown-ext", "trailing"])
def test_unpackb_twins_refuse_alike(raw):
    got = _decoded(_compiled(), raw)
    assert got[0] == "error" and got == _decoded(P, raw)


# -- decoders --------------------------------------------------------------------------


@pytest.mark.parametrize("contents", [
    MIXED, ["a", None, "b"], [np.full(3, i, np.int16) for i in range(4)], [], ["only"],
], ids=["mixed", "small", "stacked", "empty", "one"])
def test_decode_scrolls_inverts_the_encoder(codec, contents):
    names = NameTable()
    scrolls = scrolls_of(contents, names)
    if len(contents) > 1 and contents[1] is None:
        scrolls[1] = None
    blob = b"\x01\x02" + codec.encode_scrolls(scrolls) + b"\xc0"
    got, end = codec.decode_scrolls(blob, 2, names)
    assert end == len(blob) - 1 and len(got) == len(scrolls)
    # what the receiver sees: tuples arrive as lists, numpy scalars as numbers
    scrolls = [None if s is None else Scroll(s.key, P.unpackb(P.packb(s.content)), s.version,
                                             s.created_at, s.updated_at, names)
               for s in scrolls]
    assert same(list(got), scrolls)
    assert got == list(got) and list(got) == got
    assert type(got) is Scrolls  # the core's result type, as embedded
    if scrolls and scrolls[-1] is not None:
        assert got[-1] == got[len(scrolls) - 1]  # a new, equal Scroll per read
        assert got[-1].coordinate == scrolls[-1].coordinate
    # the columns come straight from the decoded ones
    assert got.keys == b"".join(bytes(18) if s is None else s.key for s in scrolls)
    assert got.versions.tolist() == [0 if s is None else s.version for s in scrolls]
    assert got.found.tolist() == [s is not None for s in scrolls]
    zero = Scroll(bytes(18), None, 1, 0.0, 0.0, names)
    assert got.coordinates == [(zero if s is None else s).coordinate for s in scrolls]
    if contents and type(contents[0]) is np.ndarray:
        assert np.array_equal(got.contents, np.stack(contents))  # one stacked array
    else:
        assert same(got.contents, [None if s is None else s.content for s in scrolls])
    got2, end2 = codec.decode_scrolls(bytearray(blob), 2, names)
    assert end2 == end and same(list(got2), scrolls)


_NUMBERS = st.one_of(
    st.integers(-(1 << 63), (1 << 64) - 1), st.integers(-40, 300), st.booleans(),
    st.floats(allow_nan=False), st.floats(width=32, allow_nan=False),
    st.sampled_from([0, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, -(1 << 31),
                     (1 << 32) - 1, (1 << 63) - 1, -(1 << 63), float("inf")]))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_NUMBERS, max_size=12), st.booleans())
def test_numbers_decode_as_msgpack_decodes_them(codec, values, single):
    """Contents that are one msgpack number or bool (in every width the format has, as
    any client may send them: float32 too) read back as msgpack's unpackb reads them,
    through the column result's contents and through each Scroll."""
    n = len(values)
    if single:   # as float32: what fits one
        values = [1.5 if type(v) is float and 3.4e38 < abs(v) < float("inf") else v
                  for v in values]
    body = msgpack.packb([bytes(18) * n, values, [1] * n, [1.0] * n, [1.0] * n],
                         use_single_float=single)
    want = msgpack.unpackb(body)[1]
    got, _ = codec.decode_scrolls(body)
    contents = got.contents
    assert contents == want and [type(x) for x in contents] == [type(x) for x in want]
    assert [s.content for s in got] == want


def test_decoded_scroll_lists_behave_like_lists(codec):
    import pickle

    names = NameTable()
    want = scrolls_of([f"c{i}" for i in range(6)], names) + [None]
    want[3] = None
    sl, _ = codec.decode_scrolls(codec.encode_scrolls(want), 0, names)
    assert type(sl) is Scrolls and not isinstance(sl, list)
    assert len(sl) == 7 and sl == want and want == list(sl) and not (sl != want)
    assert sl.tolist() == want and type(sl.tolist()) is list
    other = (P if codec is not P else _compiled()).decode_scrolls(codec.encode_scrolls(want))[0]
    assert sl == other and other == sl  # the two twins' lists compare equal
    assert sl[0] == want[0] and sl[-1] is None and sl[-2] == want[-2]
    assert sl[1:4] == want[1:4] and sl[::-2] == want[::-2]
    assert sl[2] == sl[2] and sl[2] is not sl[2]  # a new, equal Scroll per read
    assert list(reversed(sl)) == list(reversed(want))
    assert want[4] in sl and None in sl and sl.index(None) == 3 and sl.count(None) == 2
    assert sl + [1] == want + [1] and [1] + sl == [1] + want
    assert sl != want[:-1] and sl != tuple(want)
    assert repr(sl) == repr(want)
    plain, _ = codec.decode_scrolls(codec.encode_scrolls(want))  # (a name table has a lock)
    assert pickle.loads(pickle.dumps(plain)) == plain == want
    assert [s.coordinate for s in sl if s is not None] == [
        s.coordinate for s in want if s is not None]
    for bad in (7, -8, 100):
        with pytest.raises(IndexError):
            sl[bad]
    with pytest.raises(ValueError):
        sl.index("nothing")
    with pytest.raises(TypeError):
        hash(sl)


@pytest.mark.parametrize("bad", [
    b"\x95\xc4\x11" + b"k" * 17 + b"\x91\xc0\x91\x01\x91\xcb" + b"\0" * 8 + b"\x91\xcb" + b"\0" * 8,
    b"\x95\xc4\x12" + b"k" * 18 + b"\x92\xc0\xc0\x91\x01\x91\xc0\x91\xc0",   # lengths differ
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91\xa1x\x91\x01\x91\x01\x91\x01",      # int times
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91\xa1x\x91\xff\x91\xc0\x91\xc0",      # negative version
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91\xa1\xff\x91\x00\x91\xc0\x91\xc0",   # bad utf-8
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91\xa2\xc3\x28\x91\x01\x91\xcb" + b"\0" * 8
    + b"\x91\xcb" + b"\0" * 8,                                                  # stored, bad utf-8
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91\xd4\x05\x00\x91\x00\x91\xc0\x91\xc0",  # unknown ext
    b"\x95\xc4\x12" + b"k" * 18 + b"\x91",                                   # truncated
    b"\x95" + P.packb(key(1) + key(2)) + P.packb(np.zeros(2)) + P.packb([1, 1])
    + P.packb([1.0, 1.0]) * 2,                                               # stacked, 1-d
    b"\x95" + P.packb(key(1) + key(2)) + P.packb(np.zeros((3, 2))) + P.packb([1, 1])
    + P.packb([1.0, 1.0]) * 2,                                               # 3 rows, 2 keys
    b"\x95" + P.packb(key(1)) + b"\xd4\x01\x00" + P.packb([1]) + P.packb([1.0]) * 2,  # bad ext
    b"\x94\xc4\x00\x90\x90\x90",
    b"\xc0",
    b"",
])
def test_decode_scrolls_refuses_malformed_lists(codec, bad):
    with pytest.raises(E.ProtocolError):
        codec.decode_scrolls(bad)


def test_decode_scrolls_absent_entry_fields_are_not_looked_at(codec):
    raw = b"\x95\xc4\x12" + bytes(18) + b"\x91\xc0\x91\x00\x91\x07\x91\xa1x"
    got, end = codec.decode_scrolls(raw)
    assert list(got) == [None] and end == len(raw)


def test_decode_response_scrolls_other_replies(codec):
    err = P.encode_error(5, "LIMIT", "too big")[4:]
    assert codec.decode_response_scrolls(err) == P.Reply(5, False, ("LIMIT", "too big"))
    push = P.encode_push("invalidate", None)[4:]
    assert codec.decode_response_scrolls(push, page=True) == P.Push("invalidate", None)
    for bad_result in ("PONG", [1, 2], [[b"", [], [], [], []], b"short"]):
        body = P.encode_response(5, bad_result)[4:]
        with pytest.raises(E.ProtocolError):
            codec.decode_response_scrolls(body, page=True)
    body = codec.encode_response_scrolls(70000, scrolls_of(["a"]))[4:]
    with pytest.raises(E.ProtocolError):
        codec.decode_response_scrolls(body + b"\xc0")
    r = codec.decode_response_scrolls(memoryview(body))
    assert r.msgid == 70000 and same(list(r.value), scrolls_of(["a"]))


# -- the server's side: runs of GET requests -------------------------------------------


def test_next_requests_groups_plain_gets_and_puts(codec):
    d = codec.FrameDecoder()
    ks = [key(i) for i in range(10)]
    d.feed(codec.encode_get_requests(1, b"".join(ks[:4]))
           + codec.encode_request(5, "PUT", [ks[4], "x"])
           + codec.encode_request(6, "PUT", [ks[5], [1, {"a": b"b"}]])
           + codec.encode_request(7, "PUT", [ks[6], "y", 3])          # if_version: alone
           + codec.encode_get_requests(8, b"".join(ks[7:10]))
           + codec.encode_request(11, "PUT", [ks[0], None]))
    assert d.next_requests(128) == ("GET", [1, 2, 3, 4], b"".join(ks[:4]), None)
    assert d.next_requests(128) == ("PUT", [5, 6], ks[4] + ks[5], ["x", [1, {"a": b"b"}]])
    assert d.next_requests(128) == (7, "PUT", [ks[6], "y", 3])
    assert d.next_requests(2) == ("GET", [8, 9], b"".join(ks[7:9]), None)
    assert d.next_requests(1) == ("GET", [10], ks[9], None)
    assert d.next_requests(128) == ("PUT", [11], ks[0], [None])
    assert d.next_requests(128) is None


@pytest.mark.parametrize("i", range(len(MIXED)))
def test_next_requests_put_contents_decode_like_the_generic_decoder(codec, i):
    d = codec.FrameDecoder()
    d.feed(codec.encode_request(3, "PUT", [key(1), MIXED[i]]))
    op, msgids, keys, contents = d.next_requests(10)
    assert (op, msgids, keys) == ("PUT", [3], key(1))
    assert same(contents, [P.unpackb(P.packb(MIXED[i]))])


def test_next_requests_other_encodings_and_shapes(codec):
    k = key(3)
    d = codec.FrameDecoder()
    wide_id = b"\x93\xce\x00\x00\x00\x07\xa3GET\x91\xc4\x12" + k   # msgid as uint32
    str8_op = b"\x93\x08\xd9\x03GET\x91\xc4\x12" + k               # opcode as str8
    for body in (wide_id, str8_op):
        d.feed(struct.pack(">I", len(body)) + body)
    d.feed(codec.encode_request(9, "GET", [k, "extra"]))   # not plain: for the dispatcher
    d.feed(codec.encode_request(10, "GET", [b"short"]))
    d.feed(codec.encode_request(11, "PUT", [b"short", "x"]))
    bin16_key = b"\x93\x0c\xa3PUT\x92\xc5\x00\x12" + k + b"\xa1x"  # key as bin16
    d.feed(struct.pack(">I", len(bin16_key)) + bin16_key)
    d.feed(P.encode_frame([13, "GET"]))                     # not a request
    d.feed(P.encode_frame([0, "GET", [k]]))                 # msgid 0: not a request
    assert d.next_requests(100) == ("GET", [7, 8], k + k, None)
    assert d.next_requests(100) == (9, "GET", [k, "extra"])
    assert d.next_requests(100) == (10, "GET", [b"short"])
    assert d.next_requests(100) == (11, "PUT", [b"short", "x"])
    assert d.next_requests(100) == ("PUT", [12], k, ["x"])
    with pytest.raises(P.RequestError) as ei:
        d.next_requests(100)
    assert ei.value.msgid == 13
    with pytest.raises(P.RequestError) as ei:
        d.next_requests(100)
    assert ei.value.msgid == 0
    assert d.next_requests(100) is None and d.buffered() == 0


def test_next_requests_put_with_a_bad_content_poisons_after_the_run(codec):
    good = codec.encode_request(1, "PUT", [key(1), "a"])
    for bad_content in (b"\xa1\xff", b"\xd4\x05\x00", b"\xc1"):
        body = b"\x93\x02\xa3PUT\x92\xc4\x12" + key(2) + bad_content
        d = codec.FrameDecoder()
        d.feed(good + struct.pack(">I", len(body)) + body)
        assert d.next_requests(100) == ("PUT", [1], key(1), ["a"])
        with pytest.raises(E.ProtocolError):
            d.next_requests(100)
        assert d.buffered() == 0


def test_next_requests_answers_the_run_before_a_bad_frame(codec):
    for tail in (b"\x00\x00\x00\x01\xc1", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"):
        d = codec.FrameDecoder()
        d.feed(codec.encode_get_requests(1, key(1) + key(2)) + tail)
        assert d.next_requests(100) == ("GET", [1, 2], key(1) + key(2), None)
        with pytest.raises(E.ProtocolError):
            d.next_requests(100)


def test_next_requests_byte_at_a_time(codec):
    data = (codec.encode_get_requests(1, key(1) + key(2))
            + codec.encode_request(3, "PING", []) + codec.encode_get_requests(4, key(4)))
    d = codec.FrameDecoder()
    got = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        r = d.next_requests(100)
        if r is not None:
            got.append(r)
    assert got == [("GET", [1], key(1), None), ("GET", [2], key(2), None), (3, "PING", []),
                   ("GET", [4], key(4), None)]


# -- the client's side: runs of GET replies --------------------------------------------


@pytest.fixture
def filled():
    e = Engine()
    for i, v in enumerate(MIXED):
        e.put(key(i), v)
    e.put(key(0), b"again")  # version 2
    return e, [e.get(key(i)) for i in range(len(MIXED))] + [None, None]


def test_decode_get_replies_inverts_encode_get_replies(codec, filled):
    _, scrolls = filled
    names = NameTable()
    data = bytearray(b"junk" + codec.encode_get_replies(list(range(40, 40 + len(scrolls))),
                                                       scrolls)[0])
    got, pos, more = codec.decode_get_replies(data, 4, len(data), 40, len(scrolls) + 5, names)
    assert (pos, more) == (len(data), True) and len(got) == len(scrolls)
    for g, s in zip(got, scrolls):
        if s is None:
            assert g is None
        else:
            assert same(g.content, P.unpackb(P.packb(s.content))) and g.names is names
            assert (g.key, g.version, g.created_at, g.updated_at) == (
                s.key, s.version, s.created_at, s.updated_at)
    assert got[0].coordinate == "7.0.0/0.0.0/0.0.0"
    assert codec.decode_get_replies(memoryview(data), 4, len(data), 40, 2)[1:] == (
        4 + len(codec.encode_get_replies([40, 41], scrolls[:2])[0]), False)
    with pytest.raises(ValueError):
        codec.decode_get_replies(data, -1, len(data), 40, 1)


def test_decode_get_replies_stops_where_it_must(codec, filled):
    _, scrolls = filled
    frames = [codec.encode_get_replies([10 + i], [scrolls[i]])[0] for i in range(3)]
    buf = b"".join(frames)
    f0 = len(frames[0])

    def dec(data, msgid=10, count=3, mfs=P.DEFAULT_MAX_FRAME_SIZE):
        got, pos, more = codec.decode_get_replies(data, 0, len(data), msgid, count, None, mfs)
        return len(got), pos, more

    assert dec(buf, count=2) == (2, f0 + len(frames[1]), False)
    for cut in (1, 3, 4, f0 - 1):
        assert dec(buf[:cut]) == (0, 0, True)
    assert dec(buf[: f0 + 5]) == (1, f0, True)
    assert dec(buf, msgid=11) == (0, 0, False)
    assert dec(buf, mfs=f0 - 5) == (0, 0, False)                 # over the limit: stop
    assert dec(b"\x00\x00\x00\x00" + buf) == (0, 0, False)        # empty body: stop
    err = P.encode_error(10, "CONFLICT", "no")
    assert dec(err + buf) == (0, 0, False)
    push = P.encode_push("invalidate", None)
    assert dec(frames[0] + push) == (1, f0, False)
    assert dec(codec.encode_response(10, 3)) == (0, 0, False)
    assert dec(frames[0] + b"\x00\x00\x00\x01\xc1") == (1, f0, False)  # undecodable: stop
    # end before the buffer's end: only what was received counts
    assert codec.decode_get_replies(buf, 0, f0, 10, 3)[1:] == (f0, True)


@pytest.mark.parametrize("body", [
    [5, 0, [b"k" * 17, "c", 1, 1.0, 1.0]],          # short key
    [5, 0, [b"k" * 18, "c", 0, 1.0, 1.0]],          # version 0
    [5, 0, [b"k" * 18, "c", 1, 1, 1.0]],            # integer time
    [5, 0, [b"k" * 18, "c", 1, 1.0]],               # 4 fields
    [5, 0, [b"k" * 18, "c", -1, 1.0, 1.0]],         # negative version
    [5, False, None],                               # status false, not 0
    [True, 0, None],                                # msgid true, not 5
    [5, 0, "PONG"],
    [5, 1, ["PROTOCOL", "x"]],
])
def test_decode_get_replies_leaves_other_shapes(codec, body):
    f = P.encode_frame(body)
    assert codec.decode_get_replies(f, 0, len(f), 5, 1) == ([], 0, False)


def test_decode_get_replies_accepts_other_encodings(codec):
    body = (b"\x93\xce\x00\x00\x00\x05\x00\x95\xc4\x12" + b"k" * 18 + b"\xd9\x03abc"
            + b"\xcd\x01\x00" + b"\xca\x3f\xc0\x00\x00" + b"\xcb"
            + np.float64(2.5).byteswap().tobytes())
    f = struct.pack(">I", len(body)) + body
    (s,), pos, more = codec.decode_get_replies(f, 0, len(f), 5, 1)
    assert (s.key, s.content, s.version, s.created_at, s.updated_at) == (
        b"k" * 18, "abc", 256, 1.5, 2.5)
    assert (pos, more) == (len(f), False)


# -- both twins agree on random streams ------------------------------------------------


def random_frames(rng: random.Random, e: Engine) -> tuple[bytes, list]:
    out = []
    scrolls = []
    msgid = 1
    for _ in range(rng.randint(1, 40)):
        r = rng.random()
        if r < 0.5:
            n = rng.randint(1, 5)
            ks = b"".join(key(rng.randrange(len(MIXED) + 3)) for _ in range(n))
            out.append(P.encode_get_requests(msgid, ks))
            msgid += n
        elif r < 0.8:
            s = [e.get(key(rng.randrange(len(MIXED) + 3))) for _ in range(rng.randint(1, 4))]
            out.append(P.encode_get_replies(list(range(msgid, msgid + len(s))), s)[0])
            scrolls.append((msgid, len(s)))
            msgid += len(s)
        elif r < 0.9:
            out.append(P.encode_request(msgid, "PUT", [key(1), MIXED[rng.randrange(len(MIXED))]]))
            msgid += 1
        else:
            out.append(P.encode_push("invalidate", None))
    return b"".join(out), scrolls


def drain(d, rng: random.Random, mode: int) -> list:
    got = []
    for _ in range(10000):
        if mode == 0:
            r = d.next_requests(rng.randint(1, 8))
        elif mode == 1:
            r = d.next()
        else:
            r = d.next_body()
        if r is None:
            return got
        got.append(r)
    raise AssertionError("decoder never ran dry")


def test_twins_agree_on_random_streams(filled):
    twin = _compiled()
    e, _ = filled
    rng = random.Random(11)
    for _ in range(60):
        data, _ = random_frames(rng, e)
        chunks = split_random(data, rng, most=40)
        seed = rng.random()
        for mode in range(3):
            results = []
            for impl in (P, twin):
                d = impl.FrameDecoder()
                r2 = random.Random(seed)
                got = []
                for c in chunks:
                    d.feed(c)
                    try:
                        got.extend(drain(d, r2, mode))
                    except P.RequestError as exc:
                        got.append(("RequestError", exc.msgid))
                results.append(got)
            assert same(results[0], results[1]), mode


def test_twins_agree_on_get_replies_in_random_buffers(filled):
    twin = _compiled()
    e, _ = filled
    rng = random.Random(12)
    for _ in range(200):
        data, runs = random_frames(rng, e)
        bounds = [0]
        d = P.FrameDecoder()
        d.feed(data)
        while d.next_body() is not None:
            bounds.append(len(data) - d.buffered())
        pos = rng.choice(bounds)
        end = rng.randint(pos, len(data))
        msgid = rng.choice([m for m, _ in runs] or [1]) + rng.randint(-1, 1)
        count = rng.randint(1, 6)
        a = P.decode_get_replies(data, pos, end, msgid, count)
        b = twin.decode_get_replies(bytearray(data), pos, end, msgid, count)
        assert same(list(a), list(b))


# -- the client's receive buffer ----------------------------------------------------------


def _bodies(rx):
    out = []
    while True:
        b = rx.next_body()
        if b is None:
            return out
        out.append(bytes(b))


@pytest.mark.parametrize("seed", range(6))
def test_reply_buffer_frames_any_split_like_the_frame_decoder(codec, seed):
    """Bytes written into its free space in random pieces (from 1 byte to more than the
    buffer holds, frames up to 200 KB) come out as the same bodies FrameDecoder reads."""
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.choice([1, 7, 300, 5000, 70000, 200000])) for _ in range(12)]
    data = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    rx = codec.ReplyBuffer(1 << 20, size=rng.choice([16, 1024, 65536]))
    got, pos = [], 0
    while pos < len(data):
        if rng.random() < 0.3:
            n = rng.randint(1, 3 * 65536)
            rx.feed(data[pos:pos + n])
        else:
            space = rx.get_buffer()
            assert len(space) > 0
            n = min(len(space), rng.randint(1, 3 * 65536), len(data) - pos)
            space[:n] = data[pos:pos + n]
            rx.buffer_updated(n)
        pos += min(n, len(data) - pos)
        got.extend(_bodies(rx))
        assert rx.buffered() == pos - sum(4 + len(x) for x in got)
    assert got == bodies and rx.buffered() == 0


def test_reply_buffer_refuses_bad_lengths_and_overfills(codec):
    rx = codec.ReplyBuffer(100)
    rx.feed(struct.pack(">I", 101) + b"x")
    with pytest.raises(E.ProtocolError, match="101 bytes"):
        rx.next_body()
    rx.clear()
    assert rx.buffered() == 0 and rx.next_body() is None
    rx.feed(b"\x00\x00\x00\x00")
    with pytest.raises(E.ProtocolError):
        rx.next_body()
    rx.clear()
    space = rx.get_buffer()
    with pytest.raises(ValueError):
        rx.buffer_updated(len(space) + 1)
    with pytest.raises(ValueError):
        rx.buffer_updated(-1)
    assert rx.buffered() == 0


def test_reply_buffer_bodies_stay_valid_while_it_grows(codec):
    """A body handed out keeps its bytes after later reads grow or compact the buffer."""
    rx = codec.ReplyBuffer(1 << 22, size=64)
    small = struct.pack(">I", 3) + b"abc"
    big = b"y" * 100000
    rx.feed(small + struct.pack(">I", len(big)) + big[:10])
    first = rx.next_body()
    assert rx.next_body() is None  # the big frame's start: the buffer grows for it
    rx.feed(big[10:])
    assert bytes(first) == b"abc" and bytes(rx.next_body()) == big


def test_reply_buffer_takes_get_replies_like_decode_get_replies(codec, filled):
    _, scrolls = filled
    frames = codec.encode_get_replies(list(range(7, 7 + len(scrolls))), scrolls)[0]
    err = P.encode_error(7 + len(scrolls), "CONFLICT", "no")
    names = NameTable()
    rx = codec.ReplyBuffer()
    rx.feed(frames[:-3])
    got = rx.take_get_replies(7, 100, names)
    assert len(got) == len(scrolls) - 1 and got[0].names is names
    assert rx.take_get_replies(7 + len(got), 1) == []      # incomplete: nothing taken
    rx.feed(frames[-3:] + err)
    (last,) = rx.take_get_replies(7 + len(got), 5)
    assert last is None and scrolls[-1] is None
    assert rx.take_get_replies(7 + len(scrolls), 1) == []  # an error: left for the caller
    assert P.unpackb(rx.next_body())[1] == P.STATUS_ERROR and rx.buffered() == 0


def _frame(body):
    return struct.pack(">I", len(body)) + body


_REPLY_FRAMES = st.one_of(
    # A success reply (the id sometimes another), in the canonical form or not.
    st.builds(lambda m, v: ("ok", m, _frame(P.packb([m, 0, v]))),
              st.sampled_from([7, 8, 300, 70000]), _VALUES),
    st.builds(lambda v: ("ok", 7, _frame(b"\x93\xcc\x07\xcc\x00" + P.packb(v))), _VALUES),
    st.builds(lambda v: ("ok", 7, _frame(b"\x93\xd0\x07\x00" + P.packb(v))), _VALUES),
    # An error, a push, a wrong shape, trailing or damaged bytes, a bad length.
    st.just(("other", 7, P.encode_error(7, "CONFLICT", "no"))),
    st.just(("other", 7, _frame(P.packb([0, "INVALIDATE", [b"k" * 18]])))),
    st.builds(lambda v: ("other", 7, _frame(P.packb([7, 0, v]) + b"\x00")), _VALUES),
    st.builds(lambda v: ("other", 7, _frame(P.packb([7, 0, v])[:-1])), _VALUES),
    st.builds(lambda v: ("other", 7, _frame(P.packb([7, 1, v]))), _VALUES),
    st.just(("other", 7, _frame(b"\x93\x07\x00\xc1"))),
    # Another id or an error status, then damaged bytes: None, without decoding.
    st.builds(lambda v: ("other", 7, _frame(P.packb([8, 0, v])[:-1])), _VALUES),
    st.just(("other", 7, _frame(b"\x93\x07\x01\xc1"))),
    st.just(("other", 7, _frame(b"\x93\x00\xaaINVALIDATE\xc1"))),
    st.just(("other", 7, b"\x00\x00\x00\x00")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_REPLY_FRAMES, st.integers(0, 12))
def test_reply_buffer_take_reply_agrees_across_twins(case, cut):
    """take_reply gives what decoding the frame gives for the success reply to its id,
    in either twin, for any encoding; any other frame (and an incomplete one) stays for
    next_body, which then reads it as it would have."""
    _kind, msgid, frame = case
    for twin in (P, _compiled()):
        rx = twin.ReplyBuffer(1 << 20)
        rx.feed(frame[:max(0, len(frame) - cut)] if cut else frame)
        got = rx.take_reply(msgid)
        if cut:
            assert got is None and rx.buffered() == len(frame) - min(cut, len(frame))
            continue
        try:
            msg = P.unpackb(frame[4:]) if len(frame) > 4 else None
        except E.ProtocolError:
            msg = None
        want_ok = (type(msg) is list and len(msg) == 3 and type(msg[0]) is int
                   and msg[0] == msgid and type(msg[1]) is int and msg[1] == 0)
        if want_ok:
            assert got is not None and got[0] is True and rx.buffered() == 0
            assert P.packb(got[1]) == P.packb(msg[2])
        else:
            assert got is None and rx.buffered() == len(frame)


def test_reply_buffer_take_reply_leaves_other_replies_for_next_body(codec):
    rx = codec.ReplyBuffer()
    push = _frame(P.packb([0, "INVALIDATE", [b"k" * 18]]))
    rx.feed(push + _frame(P.packb([9, 0, 5])) + P.encode_error(10, "CONFLICT", "no"))
    assert rx.take_reply(9) is None                        # the push comes first
    assert P.unpackb(rx.next_body())[1] == "INVALIDATE"
    assert rx.take_reply(8) is None                        # not the reply to 8
    assert rx.take_reply(9) == (True, 5)
    assert rx.take_reply(10) is None and P.unpackb(rx.next_body())[1] == P.STATUS_ERROR
    assert rx.buffered() == 0 and rx.take_reply(11) is None


@pytest.mark.parametrize("use_fd", [False, True], ids=["socket", "fd"])
def test_reply_buffer_send_recv_round_trips_on_a_socket(codec, use_fd):
    """send_recv sends the whole frame and reads once, through the socket object or
    (the compiled twin) the descriptor; a kernel timeout is EAGAIN, a close reads 0."""
    import socket
    a, b = socket.socketpair()
    try:
        rx = codec.ReplyBuffer()
        fd = a.fileno() if use_fd else -1
        frame = struct.pack(">I", 5) + b"hello"
        reply = struct.pack(">I", 2) + b"ok"
        b.sendall(reply)
        assert rx.send_recv(a, fd, frame) == len(reply)
        assert b.recv(100) == frame and bytes(rx.next_body()) == b"ok"
        big = b"z" * 300000  # more than one send() takes at once
        got = bytearray()
        import threading
        t = threading.Thread(target=lambda: [got.extend(b.recv(1 << 20))
                                             for _ in iter(lambda: len(got) < len(big), False)]
                             and b.sendall(reply))
        t.start()
        assert rx.send_recv(a, fd, big) == len(reply)
        t.join(10)
        assert bytes(got) == big and bytes(rx.next_body()) == b"ok"
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 20000))
        with pytest.raises(BlockingIOError):
            rx.send_recv(a, fd, frame)
        assert b.recv(100) == frame  # sent before the read timed out
        b.shutdown(socket.SHUT_WR)  # the peer is done sending: the read gets 0 bytes
        assert rx.send_recv(a, fd, frame) == 0 and b.recv(100) == frame
        assert rx.buffered() == 0
        b.close()
        with pytest.raises(OSError):   # EPIPE, from the socket or the system call
            rx.send_recv(a, fd, frame)
    finally:
        a.close()
        b.close()


# -- a BATCH over max_batch, refused from its first bytes ----------------------------------


def test_batch_over_max_batch_is_refused_before_decoding(codec):
    ops = [["PING", []]] * 40
    get = codec.encode_request(7, "GET", [bytes(18)])
    big = codec.encode_request(8, "BATCH", [ops])
    ok = codec.encode_request(9, "BATCH", [ops[:30]])
    d = codec.FrameDecoder(P.DEFAULT_MAX_FRAME_SIZE, 30)
    d.feed(get + big + ok)
    run = d.next_requests(10)
    assert run[0] == "GET" and run[1] == [7]   # the run before it comes first
    with pytest.raises(P.RequestError) as info:
        d.next_requests(10)
    assert info.value.msgid == 8 and info.value.code == "LIMIT"
    assert str(info.value) == "BATCH: 40 operations exceed max_batch 30"
    assert d.next_requests(10) == (9, "BATCH", [ops[:30]])   # the stream goes on
    # The opcode not in a form the check reads (str 16): decoded, for the server to count.
    body = P.packb([10, "BATCH", [ops]]).replace(b"\xa5BATCH", b"\xda\x00\x05BATCH", 1)
    d.feed(struct.pack(">I", len(body)) + body)
    assert d.next_requests(10) == (10, "BATCH", [ops])
    # No limit: nothing is checked.
    d = codec.FrameDecoder()
    d.feed(big)
    assert d.next_requests(10) == (8, "BATCH", [ops])


@pytest.mark.parametrize("n", [0, 15, 16, 65535, 65536])
def test_refuse_big_batch_reads_every_array_width(n):
    head = P.packb([3, "BATCH", [[["PING", []]] * n]])[:32]
    if n > 10:
        with pytest.raises(P.RequestError) as info:
            P.refuse_big_batch(head, 10)
        assert info.value.msgid == 3 and info.value.code == "LIMIT"
    else:
        P.refuse_big_batch(head, 10)
    P.refuse_big_batch(head, max(n, 1))


@pytest.mark.parametrize("page", [False, True])
@pytest.mark.parametrize("contents", [MIXED, [np.full(3, i, np.float32) for i in range(5)]],
                         ids=["mixed", "arrays"])
def test_encode_scrolls_as_a_batch_item(contents, page):
    """``status`` (and ``page``/``after``) wrap the scroll list as a BATCH item, in one
    buffer, byte for byte as packing the wrapped value does, in both twins."""
    twin = _compiled()
    names = NameTable()
    listed = scrolls_of(contents, names)
    e = Engine()
    e.put_many(b"".join(s.key for s in listed), [s.content for s in listed])
    columns = e.get_many(b"".join(s.key for s in listed))   # written from its columns
    after = bytes(range(18)) if page else None
    for scrolls in (listed, columns):
        plain = P.encode_scrolls(scrolls)
        value = [P.unpackb(plain), after] if page else P.unpackb(plain)
        want = b"\x92" + P.packb(P.STATUS_OK) + (
            b"\x92" + plain + P.packb(after) if page else plain)
        for codec in (P, twin):
            got = codec.encode_scrolls(scrolls, status=P.STATUS_OK, page=page, after=after)
            assert got == want
            assert same(P.unpackb(got), [P.STATUS_OK, value])


@pytest.mark.parametrize("contents", [MIXED, [np.full(3, i, np.float32) for i in range(5)],
                                      ["a", None, b"b"], []],
                         ids=["mixed", "arrays", "with-none", "empty"])
def test_encode_response_contents_writes_each_content(contents):
    """A values-only GET_MANY reply: item i's content (nil where nothing is stored, an
    array per item, never stacked), from a column result or from Scroll objects, the
    same bytes in both twins as encode_response of the list of contents."""
    twin = _compiled()
    listed = scrolls_of(contents)
    e = Engine()
    keys = b"".join(s.key for s in listed)
    if listed:
        e.put_many(keys, [s.content for s in listed])
    absent = bytes(range(18))
    columns = e.get_many(keys + absent)   # the last key holds nothing
    want_values = [s.content for s in listed] + [None]
    want = P.encode_response(9, want_values)
    for codec in (P, twin):
        assert codec.encode_response_contents(9, columns) == want
        assert codec.encode_response_contents(9, list(columns)) == want
        with pytest.raises(E.LimitError):
            codec.encode_response_contents(9, columns, len(want) - 5)
    assert len(P.unpackb(want[4:])[2]) == len(want_values)
