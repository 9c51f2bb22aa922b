"""The shared, non-twinned parts of the protocol module against the golden vectors:
message shapes, the content codec, packed coordinate forms, client-side hashes, the
opcode table. The codec proper (framing, encoders, decoders) is tested once per
implementation in ``tests/test_codec.py``."""
from __future__ import annotations

import os
import re
import sys

import msgpack
import numpy as np
import pytest

from vtpu import errors as E
from vtpu import protocol as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import from_json, load_vectors, to_json  # noqa: E402

FRAMES = load_vectors("frames")
VALUES = load_vectors("values")
COORDS = load_vectors("coords")
HASHES = load_vectors("hash")


# -- valid frames --------------------------------------------------------------------------


@pytest.mark.parametrize("vec", FRAMES["valid"], ids=lambda v: v["name"])
def test_frame_vector_shape(vec):
    msg = from_json(vec["value"])
    if "request" in vec["name"]:
        msgid, op, args = P.parse_request(msg)
        assert op in P.OPS and msgid == msg[0]
    else:
        r = P.parse_reply(msg)
        if isinstance(r, P.Push):
            assert (0, r.kind, r.payload) == (msg[0], msg[2], msg[3]) and len(msg) == 4
        else:
            assert type(r) is P.Reply and r.msgid == msg[0] and r.ok == (msg[1] == 0)
            assert r.value == (msg[2] if r.ok else tuple(msg[2]))


def test_every_opcode_has_a_request_vector():
    ops = {from_json(v["value"])[1] for v in FRAMES["valid"] if "request" in v["name"]}
    assert set(P.OPS) <= ops


# -- encoding limits -----------------------------------------------------------------------


def test_encode_refuses_oversized_without_poisoning():
    with pytest.raises(E.LimitError):
        P.encode_frame(b"x" * 100, max_frame_size=50)
    assert len(P.encode_frame(b"x" * 10, max_frame_size=50)) > 10


def test_encode_rejects_unencodable_values():
    with pytest.raises(E.InterfaceError):
        P.pack_value({1, 2})
    with pytest.raises(E.InterfaceError):
        P.pack_value(np.array([object()], dtype=object))
    with pytest.raises(E.InterfaceError):
        P.pack_value(np.zeros(2, dtype=[("a", "<i4")]))


# -- content values ------------------------------------------------------------------------


@pytest.mark.parametrize("vec", VALUES["valid"], ids=lambda v: v["name"])
def test_value_vector(vec):
    value = from_json(vec["value"])
    assert P.pack_value(value).hex() == vec["hex"]
    back = P.unpack_value(bytes.fromhex(vec["hex"]))
    assert to_json(back) == vec["value"]
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape


def test_ndarray_roundtrip_keeps_dtype_shape_and_order():
    a = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    b = P.unpack_value(P.pack_value(a))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    v = a[:, 1]  # non-contiguous view
    assert np.array_equal(P.unpack_value(P.pack_value(v)), v)


def test_numpy_scalars_become_numbers():
    assert P.unpack_value(P.pack_value([np.float32(1.5), np.int64(3), np.bool_(True)])) == [1.5, 3, True]


# -- packed coordinates --------------------------------------------------------------------


@pytest.mark.parametrize("vec", COORDS["coordinates"], ids=lambda v: v["name"])
def test_coordinate_vector(vec):
    c = np.array(vec["coord"], dtype=np.uint16)
    assert P.pack_coord(c).hex() == vec["hex"]
    assert P.unpack_coord(bytes.fromhex(vec["hex"])).tolist() == vec["coord"]
    core = pytest.importorskip("vtpu._core")
    assert core.pack(c).hex() == vec["hex"]


def test_coordinate_array_vectors():
    for vec in COORDS["arrays"]:
        arr = np.array(vec["coords"], dtype=np.uint16).reshape(-1, 9)
        assert P.pack_coords(arr).hex() == vec["hex"]
        assert P.unpack_coords(bytes.fromhex(vec["hex"])).tolist() == arr.tolist()


@pytest.mark.parametrize("vec", COORDS["patterns"], ids=lambda v: v["name"])
def test_pattern_vector(vec):
    p = np.array([vec["lo"], vec["hi"]], dtype=np.uint16)
    assert P.pack_pattern(p).hex() == vec["hex"]
    assert P.unpack_pattern(bytes.fromhex(vec["hex"])).tolist() == p.tolist()
    core = pytest.importorskip("vtpu._core")
    assert core.parse_pattern(vec["text"]).tolist() == p.tolist()


@pytest.mark.parametrize("vec", COORDS["deltas"], ids=lambda v: v["name"])
def test_delta_vector(vec):
    d = np.array([vec["ops"], vec["values"]], dtype=np.int32)
    assert P.pack_delta(d).hex() == vec["hex"]
    assert P.unpack_delta(bytes.fromhex(vec["hex"])).tolist() == d.tolist()


@pytest.mark.parametrize("vec", COORDS["invalid_deltas"], ids=lambda v: v["name"])
def test_invalid_delta_vector(vec):
    with pytest.raises(E.InterfaceError):
        P.unpack_delta(bytes.fromhex(vec["hex"]))
    with pytest.raises(E.InterfaceError):
        P.unpack_deltas(bytes.fromhex(DELTA_OK) + bytes.fromhex(vec["hex"]))


DELTA_OK = COORDS["deltas"][0]["hex"]
TEXTS = COORDS["texts"]


def _text_names():
    from vtpu.coords import NameTable

    return NameTable(TEXTS["names"])


@pytest.mark.parametrize("vec", TEXTS["valid"], ids=lambda v: v["text"])
def test_text_grammar_valid(vec):
    core = pytest.importorskip("vtpu._core")
    parse = {"coord": core.parse_coord, "pattern": core.parse_pattern, "delta": core.parse_delta}
    got = parse[vec["kind"]](vec["text"], _text_names(), False)
    assert got.tolist() == vec["value"]
    packed = {"coord": P.pack_coord, "pattern": P.pack_pattern, "delta": P.pack_delta}[vec["kind"]]
    assert packed(got).hex() == vec["packed"]


@pytest.mark.parametrize("vec", TEXTS["invalid"], ids=lambda v: v["text"])
def test_text_grammar_invalid(vec):
    core = pytest.importorskip("vtpu._core")
    parse = {"coord": core.parse_coord, "pattern": core.parse_pattern, "delta": core.parse_delta}
    with pytest.raises(E.CoordinateError) as info:
        parse[vec["kind"]](vec["text"], _text_names(), False)
    text, msg = vec["text"], str(info.value)
    if len(text) <= 80:
        assert repr(text) in msg  # the message quotes the input
    else:  # a long input is quoted as 80 characters around the fault, and says where
        a, b, n = map(int, re.search(r"\(characters (\d+)\.\.(\d+) of (\d+)\)", msg).groups())
        assert n == len(text) and b - a == 80 and repr(text[a:b]) in msg


def test_text_format_vectors():
    core = pytest.importorskip("vtpu._core")
    for vec in TEXTS["format"]:
        if "coord" in vec:
            got = core.format_coord(np.array(vec["coord"], dtype=np.uint16), _text_names())
        else:
            got = core.format_pattern(np.array(vec["pattern"], dtype=np.uint16), _text_names())
        assert got == vec["text"]


def test_exchange_vectors_are_well_formed():
    """Every frame of the server conversations frames (or, for the poisoning cases, fails
    to decode exactly where the spec says)."""
    ex = load_vectors("exchanges")["exchanges"]
    assert {e["name"] for e in ex} >= {"trailing_bytes_poison", "unicode_array_roundtrip",
                                      "timestamp_ext_is_arg", "two_item_request_keeps_msgid"}
    for e in ex:
        for h in e["send"]:
            d = P.FrameDecoder(e.get("server", {}).get("max_frame_size", P.DEFAULT_MAX_FRAME_SIZE))
            d.feed(bytes.fromhex(h))
            if e["then"] == "closed" and h == e["send"][0]:
                with pytest.raises(E.ProtocolError):
                    d.next_frame()
            elif len(bytes.fromhex(h)) > 4:
                assert d.next_frame() is not None and d.buffered() == 0


def test_error_codes_are_one_table():
    assert E.error_code(E.FrameTooLarge("x")) == "LIMIT"
    assert E.error_code(E.InternalError("x")) == "INTERNAL"
    for exc in (ValueError("v"), TypeError("t"), KeyError("k"), IndexError("i"), RuntimeError()):
        assert E.error_code(exc) == "INTERNAL" and E.is_internal(exc)
    assert E.error_code(E.CoordinateError("c")) == "COORD"
    assert not E.is_internal(E.InterfaceError("a"))
    code, msg = P.error_pair(KeyError("boom"))
    assert code == "INTERNAL" and "KeyError" in msg and "boom" in msg
    assert type(E.error_from_code("INTERNAL", "m")) is E.InternalError


def test_error_frame_fits_the_receivers_limit():
    f = P.encode_error(3, "ARG", "\u00e9" * 4000, max_frame_size=1024)
    assert len(f) - 4 <= 1024
    d = P.FrameDecoder(1024)
    d.feed(f)
    r = P.parse_reply(d.next_frame())
    assert r.msgid == 3 and r.value[0] == "ARG" and r.value[1].endswith("...")


def test_packed_forms_reject_bad_sizes():
    with pytest.raises(E.InterfaceError):
        P.unpack_coords(b"\x00" * 17)
    with pytest.raises(E.InterfaceError):
        P.unpack_pattern(b"\x00" * 18)
    with pytest.raises(E.InterfaceError):
        P.pack_coords(np.zeros((2, 8), dtype=np.uint16))
    with pytest.raises(E.InterfaceError):
        P.pack_coords(np.full((1, 9), 70000))


def test_keys_sort_like_coordinates():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 0xFFFF, size=(200, 9), dtype=np.uint16)
    keys = [P.pack_coord(r) for r in arr]
    order = sorted(range(200), key=lambda i: tuple(arr[i].tolist()))
    assert sorted(range(200), key=lambda i: keys[i]) == order


def test_scroll_list_roundtrip():
    class S:
        def __init__(self, k, c, v):
            self.key, self.content, self.version = k, c, v
            self.created_at = self.updated_at = 1.0

    k1, k2 = bytes(range(18)), bytes(18)
    w = P.scrolls_to_wire([S(k1, "a", 1), None, S(k2, b"b", 3)])
    rows = list(P.wire_to_rows(P.unpackb(P.packb(w))))
    assert rows == [(k1, "a", 1, 1.0, 1.0), None, (k2, b"b", 3, 1.0, 1.0)]
    with pytest.raises(E.ProtocolError):
        list(P.wire_to_rows([b"x", [], [1], [], []]))


# -- client-side hashes (CROUTE / CMOE) ----------------------------------------------------


def test_xxh64_vectors():
    import xxhash

    core = pytest.importorskip("vtpu._core")
    for v in HASHES["xxh64"]:
        data = bytes.fromhex(v["hex"])
        assert xxhash.xxh64_intdigest(data, v["seed"]) == v["xxh64"]
        assert core.xxh64(data, v["seed"]) == v["xxh64"]


def test_jump_vectors():
    core = pytest.importorskip("vtpu._core")
    for v in HASHES["jump"]:
        assert core.jump_hash(v["key"], v["n"]) == v["bucket"]


def test_route_vectors():
    core = pytest.importorskip("vtpu._core")
    for v in HASHES["route"]:
        arr = np.array([v["coord"]], dtype=np.uint16)
        assert int(core.route(arr, v["n"], v["level"])[0]) == v["node"]


def test_moe_vectors():
    core = pytest.importorskip("vtpu._core")
    for v in HASHES["moe"]:
        if "coord" in v:
            r = core.moe(np.array([v["coord"]], dtype=np.uint16), v["n"], v["top_k"])
            got = [int(r[0])] if v["top_k"] == 1 else [int(x) for x in r[0]]
        else:
            r = core.moe_pattern(np.array(v["pattern"], dtype=np.uint16), v["n"], v["top_k"])
            got = [r] if v["top_k"] == 1 else list(r)
        assert got == v["experts"]


# -- opcode table and errors ---------------------------------------------------------------


def test_opcode_table():
    assert not P.OPS["PUT"].idempotent and P.OPS["GET"].idempotent
    assert all(not s.idempotent for s in P.OPS.values() if s.name.startswith(("PUT", "DEL")))
    assert P.batch_idempotent([("GET", []), ("COUNT", [])])
    assert not P.batch_idempotent([("GET", []), ("PUT", [])])


def test_error_pairs_map_back_to_classes():
    for exc in [E.CoordinateError("bad"), E.InterfaceError("x"), E.VersionConflict("v"),
                E.LimitError("l"), E.AuthError("a"), ValueError("plain")]:
        code, msg = P.error_pair(exc)
        back = E.error_from_code(code, msg)
        assert isinstance(back, E.VTPUError)
        if isinstance(exc, E.VTPUError):
            assert type(back) is type(exc)


def test_ndarray_ext_any_valid_msgpack_encoding_decodes():
    # Wider-than-needed ints and a str8 dtype: other encoders may write these.
    raw = np.arange(3, dtype="<i2").tobytes()
    payload = b"\x93" + b"\xd9\x03<i2" + b"\x91\xcf" + (3).to_bytes(8, "big") + b"\xc5\x00\x06" + raw
    v = P.unpack_value(P.packb(msgpack.ExtType(1, payload)))
    assert v.dtype == np.dtype("<i2") and v.tolist() == [0, 1, 2]
    for bad in [payload[:-1], payload + b"\x00", b"\x93\xa3<i2\x91\x04\xc4\x06" + raw,
                b"\x93\xa3<i2\x91\xff\xc4\x06" + raw]:
        with pytest.raises(E.ProtocolError):
            P.unpack_value(P.packb(msgpack.ExtType(1, bad)))


def test_scroll_list_stacks_uniform_arrays():
    class S:
        def __init__(self, k, c):
            self.key, self.content, self.version = k, c, 1
            self.created_at = self.updated_at = 2.0

    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = P.scrolls_to_wire([S(bytes([i]) * 18, rows[i].copy()) for i in range(4)])
    assert isinstance(w[1], np.ndarray) and w[1].shape == (4, 3)
    back = list(P.wire_to_rows(P.unpackb(P.packb(w))))
    assert [r[1].tolist() for r in back] == rows.tolist()
    assert all(r[1].dtype == np.float32 and r[1].shape == (3,) for r in back)
    # mixed shapes, scalars-in-arrays and absent entries keep the list form
    for scrolls in ([S(bytes(18), np.zeros(3)), S(bytes(18), np.zeros(4))],
                    [S(bytes(18), np.float64(1)), S(bytes(18), np.zeros(()))],
                    [S(bytes(18), np.zeros(3)), None]):
        w = P.scrolls_to_wire(scrolls)
        assert type(w[1]) is list and len(w[1]) == len(scrolls)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 70000])
def test_encode_response_items_matches_encode_response(n):
    # Pre-encoded items are written as they are: the frame is byte for byte the one
    # encode_response makes from the values, whatever the array header's width.
    values = [[P.STATUS_OK, i] if i % 3 else [P.STATUS_OK, b"v" * (i % 7)] for i in range(n)]
    items = [P.Encoded(P.packb(v)) if i % 2 else v for i, v in enumerate(values)]
    assert P.encode_response_items(2**31, items) == P.encode_response(2**31, values)


def test_encode_response_items_limit():
    items = [P.Encoded(P.packb(b"x" * 600)), b"y" * 600]
    frame = P.encode_response_items(7, items, 1300)
    assert P.unpackb(frame[4:]) == [7, P.STATUS_OK, [b"x" * 600, b"y" * 600]]
    with pytest.raises(E.LimitError):
        P.encode_response_items(7, items, 1200)
    # bytes that are not marked Encoded are a value, not msgpack
    assert P.unpackb(P.encode_response_items(1, [P.packb(5)])[4:]) == [1, 0, [P.packb(5)]]
