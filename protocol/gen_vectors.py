"""Regenerate the golden vectors in protocol/vectors/ (deterministic output).

Run ``python protocol/gen_vectors.py`` from the repository root, then review the diff:
any changed byte is a protocol change and must be intended. The hash vectors are
computed from the ``xxhash`` reference package and a plain-Python jump hash, not from
vtpu's own core, so the test comparing them to vtpu is a real cross-check.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _helpers import to_json  # noqa: E402  (the vectors' JSON form, shared with the tests)
from vtpu import protocol as P  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "vectors")


def key(*c):
    return struct.pack(">9H", *c)


def pattern(lo, hi):
    return key(*lo) + key(*hi)


def delta(ops, vals):
    return struct.pack(">18i", *ops, *vals)


K1 = key(1, 2, 3, 4, 5, 6, 7, 8, 9)
K2 = key(1, 1, 1, 1, 1, 1, 1, 1, 1)
KN = key(3, 8, 512, 0xF000, 0, 0, 1, 1, 1)  # uses name id 0xF000 ("query")
PAT = pattern((1, 2, 3, 0, 0, 0, 0, 0, 0), (1, 2, 3, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF))
DELTA = delta((0,) * 9, (0, 0, 0, 0, 0, 5, 0, 0, 0))
VEC = np.array([0.5, -1.0, 2.0], dtype="<f4")
T = 1700000000.25


def frame_vectors():
    valid = []

    def add(name, msg, note=None, encode=True, frame=None):
        if frame is None:
            frame = P.encode_frame(msg)
        v = {"name": name, "hex": frame.hex(), "value": to_json(msg), "encode": encode}
        if note:
            v["note"] = note
        valid.append(v)

    hello = [1, "HELLO", [1, None, {"max_frame_size": 67108864}]]
    add("hello_request", hello)
    add("hello_request_token", [1, "HELLO", [1, "s3cret", {"track": True}]])
    add(
        "hello_response",
        [1, 0, {"server": "vtpu", "version": "0.1.0", "protocol": 1, "max_frame_size": 67108864,
                "max_batch": 100000, "page_size": 65536, "names_epoch": 0}],
    )
    add("ping_request", [2, "PING", []])
    add("ping_response", [2, 0, "PONG"])
    add("get_request", [3, "GET", [K1]])
    body = b"\x93\xce\x00\x00\x00\x03\xa3GET\x91\xc4\x12" + K1
    add("get_request_uint32_msgid", [3, "GET", [K1]], encode=False,
        frame=struct.pack(">I", len(body)) + body,
        note="the Python client always writes the msgid as uint32 (ce); decoders accept any width")
    add("get_response_found", [3, 0, [K1, "hello", 1, T, T]])
    add("get_response_missing", [3, 0, None])
    add("get_many_request", [4, "GET_MANY", [K1 + K2]])
    add("get_many_response", [4, 0, [K1 + bytes(18), ["hello", None], [2, 0], [T, None], [T + 1, None]]],
        note="second key absent: version 0, zero key, nil fields")
    add("get_many_response_stacked", [4, 0, [K1 + K2, np.arange(6, dtype="<f4").reshape(2, 3), [1, 1], [T, T], [T, T]]],
        note="contents as one stacked ext-1 array: row i is content i")
    add("get_many_request_content_only", [31, "GET_MANY", [K1 + K2, True]],
        note="values only (like Redis MGET): the result is one array of N contents")
    add("get_many_response_content_only", [31, 0, ["hello", None]],
        note="second key absent: nil (a stored nil content reads the same)")
    add("put_request", [5, "PUT", [K1, "hello"]])
    add("put_request_if_version", [6, "PUT", [K1, "hello again", 1]])
    add("put_request_ndarray", [7, "PUT", [K2, VEC]])
    add("put_response", [5, 0, 1])
    add("put_many_request_list", [8, "PUT_MANY", [K1 + K2, ["a", b"\x00\x01"]]])
    add("put_many_request_ndarray", [9, "PUT_MANY", [K1 + K2, np.arange(6, dtype="<f4").reshape(2, 3)]],
        note="row i of the array is content i")
    add("put_many_response", [9, 0, [2, 1]])
    add("del_request", [10, "DEL", [K1]])
    add("del_many_request", [11, "DEL_MANY", [K1 + K2]])
    add("del_range_request", [12, "DEL_RANGE", [PAT]])
    add("count_response", [12, 0, 2])
    add("range_request", [13, "RANGE", [PAT, None, None, False]])
    add("range_request_paged", [14, "RANGE", [PAT, 100, K1, True]])
    add("range_response_scrolls", [13, 0, [[K1, ["hello"], [1], [T], [T]], None]])
    add("range_response_keys_more", [14, 0, [K1 + K2, K2]], note="more pages: continue after K2")
    add("count_request", [15, "COUNT", [PAT]])
    add("nearest_request", [16, "NEAREST", [K1, 2, "l1", None]])
    add("nearest_response", [16, 0, [K1 + K2, np.array([0, 28], dtype="<i8")]])
    add("hier_request", [17, "HIER", [K1, "NEXT"]])
    add("hier_response", [17, 0, K2])
    add("attend_request", [18, "ATTEND", [VEC, PAT, 2, DELTA, True]])
    add("attend_request_key_query", [19, "ATTEND", [KN, PAT, None, None, False]])
    add(
        "attend_response",
        [18, 0, {"keys": K1, "scores": np.array([1.5], dtype="<f8"), "weights": np.array([1.0], dtype="<f8"),
                 "contents": [VEC], "output": np.array([0.5, -1.0, 2.0], dtype="<f8"), "n": 1}],
    )
    add("attend_many_request", [20, "ATTEND_MANY", [np.ones((2, 3), dtype="<f4"), PAT + PAT, None, None]])
    add("kg_request", [21, "KG", [PAT, DELTA + DELTA, 2, 10000]])
    add("intern_request", [22, "INTERN", [["query", "person"]]])
    add("intern_response", [22, 0, [0xF000, 0xF001]])
    add("names_request", [23, "NAMES", []])
    add("names_response", [23, 0, ["query", "person"]])
    add("reclaim_names_request", [31, "RECLAIM_NAMES", []])
    add("reclaim_names_response", [31, 0, 1])
    add("names_response_reclaimed", [32, 0, ["query", ""]], note="id 0xF001 was reclaimed: a free slot")
    add("health_request", [24, "HEALTH", []])
    add("stats_request", [25, "STATS", []])
    add("import_phext_request", [26, "IMPORT_PHEXT", ["hello\x17world", False]])
    add("export_phext_request", [27, "EXPORT_PHEXT", [None, False]])
    add("batch_request", [28, "BATCH", [[["PUT", [K1, "x"]], ["GET", [K1]], ["NOPE", []]]]])
    add("batch_response", [28, 0, [[0, 3], [0, [K1, "x", 3, T, T]], [1, ["PROTOCOL", "opcode 'NOPE' not allowed in BATCH"]]]])
    add("error_response", [29, 1, ["CONFLICT", "PUT: version is 3, not 1"]])
    add("error_unknown_opcode", [30, 1, ["PROTOCOL", "unknown opcode 'FROB'"]])
    add("error_connection_level", [0, 1, ["LIMIT", "frame body of 67108865 bytes exceeds max_frame_size 67108864"]])
    add("push_invalidate", [0, "push", "invalidate", K1 + K2])
    add("push_invalidate_all", [0, "push", "invalidate", None])

    def frame_of(body: bytes) -> str:
        return (struct.pack(">I", len(body)) + body).hex()

    invalid = [
        {"name": "zero_length", "hex": "00000000", "error": "ProtocolError", "stage": "frame"},
        {"name": "oversized_default", "hex": "04000001", "error": "ProtocolError", "stage": "frame",
         "note": "length 64 MiB + 1: refused from the header alone"},
        {"name": "oversized_small_limit", "hex": frame_of(b"\xa5" + b"x" * 5) ,
         "max_frame_size": 4, "error": "ProtocolError", "stage": "frame"},
        {"name": "never_used_byte", "hex": frame_of(b"\xc1"), "error": "ProtocolError", "stage": "frame"},
        {"name": "trailing_bytes", "hex": frame_of(b"\x01\x02"), "error": "ProtocolError", "stage": "frame"},
        {"name": "truncated_msgpack", "hex": frame_of(b"\x92\x01"), "error": "ProtocolError", "stage": "frame"},
        {"name": "bad_utf8_str", "hex": frame_of(b"\xa1\xff"), "error": "ProtocolError", "stage": "frame"},
        {"name": "unknown_ext_type", "hex": frame_of(b"\xd4\x05\x00"), "error": "ProtocolError", "stage": "frame"},
        {"name": "ndarray_wrong_size", "hex": frame_of(P.packb(_bad_ext(["<f4", [3], b"\x00" * 8]))),
         "error": "ProtocolError", "stage": "frame"},
        {"name": "ndarray_object_dtype", "hex": frame_of(P.packb(_bad_ext(["|O", [1], b"\x00" * 8]))),
         "error": "ProtocolError", "stage": "frame"},
        {"name": "ndarray_not_array", "hex": frame_of(P.packb(_bad_ext("junk"))),
         "error": "ProtocolError", "stage": "frame"},
        {"name": "truncated_frame", "hex": (struct.pack(">I", 10) + b"\x93\x01").hex(), "error": None,
         "incomplete": True, "stage": "frame", "note": "not an error yet: waits for 8 more bytes"},
        {"name": "request_not_array", "hex": frame_of(b"\x01"), "error": "ProtocolError", "stage": "request", "msgid": 0},
        {"name": "ndarray_unicode_bytes_as_chars", "hex": frame_of(P.packb(_bad_ext(["<U2", [1], b"ab\x00\x00"]))),
         "error": "ProtocolError", "stage": "frame",
         "note": "<U2 is 2 characters = 8 bytes per item, not 2 bytes"},
        {"name": "request_two_items", "hex": frame_of(P.packb([1, "GET"])), "error": "ProtocolError", "stage": "request",
         "msgid": 1, "note": "the msgid is readable, so the error reply carries it"},
        {"name": "request_msgid_zero", "hex": frame_of(P.packb([0, "GET", [K1]])), "error": "ProtocolError", "stage": "request", "msgid": 0},
        {"name": "request_msgid_negative", "hex": frame_of(P.packb([-1, "GET", [K1]])), "error": "ProtocolError", "stage": "request", "msgid": 0},
        {"name": "request_msgid_too_big", "hex": frame_of(P.packb([2**32, "GET", [K1]])), "error": "ProtocolError", "stage": "request", "msgid": 0},
        {"name": "request_opcode_int", "hex": frame_of(P.packb([1, 7, [K1]])), "error": "ProtocolError", "stage": "request", "msgid": 1},
        {"name": "request_args_map", "hex": frame_of(P.packb([1, "GET", {"k": K1}])), "error": "ProtocolError", "stage": "request", "msgid": 1},
        {"name": "request_four_items", "hex": frame_of(P.packb([4, "GET", [K1], None])), "error": "ProtocolError", "stage": "request", "msgid": 4},
        {"name": "reply_bad_status", "hex": frame_of(P.packb([1, 2, None])), "error": "ProtocolError", "stage": "reply"},
        {"name": "reply_error_not_pair", "hex": frame_of(P.packb([1, 1, "oops"])), "error": "ProtocolError", "stage": "reply"},
        {"name": "reply_push_bad_kind", "hex": frame_of(P.packb([0, "push", 5, None])), "error": "ProtocolError", "stage": "reply"},
    ]
    return {"description": "Frames: hex is the whole frame (length + body); value is the decoded body. "
                           "encode=false: decode-only (an alternative valid encoding).",
            "valid": valid, "invalid": invalid}


def _bad_ext(payload):
    import msgpack

    return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))


def value_vectors():
    vals = [
        ("nil", None), ("true", True), ("false", False), ("int_small", 7), ("int_negative", -33),
        ("int_uint64_max", 2**64 - 1), ("int_int64_min", -(2**63)), ("float", 1.5),
        ("float_inexact", 0.1), ("str", "hello"), ("str_unicode", "héllo ✓"), ("str_empty", ""),
        ("bin", b"\x00\x01\xff"), ("bin_empty", b""), ("array", [1, "a", None]),
        ("map", {"a": 1, "b": [True, 2.5]}),
        ("ndarray_f4_vector", np.array([0.5, -1.0, 2.0], dtype="<f4")),
        ("ndarray_f2", np.array([1.0, 0.5], dtype="<f2")),
        ("ndarray_i8_matrix", np.arange(6, dtype="<i8").reshape(2, 3)),
        ("ndarray_u1", np.array([0, 255], dtype="|u1")),
        ("ndarray_bool", np.array([True, False]), ),
        ("ndarray_u2_big_endian", np.array([1, 2], dtype=">u2")),
        ("ndarray_0d", np.array(3.0, dtype="<f8")),
        ("ndarray_empty", np.zeros((0, 4), dtype="<f4")),
        ("ndarray_bytes", np.array([b"ab", b"c"], dtype="|S2")),
        ("ndarray_unicode", np.array(["ab", "\u00e9"], dtype="<U2")),
        ("ndarray_unicode_big_endian", np.array(["x"], dtype=">U1")),
        ("map_with_ndarray", {"emb": np.array([1, 2], dtype="<i4"), "label": "x"}),
    ]
    return {"description": "Content values: hex = pack_value(value).",
            "valid": [{"name": n, "hex": P.pack_value(v).hex(), "value": to_json(v)} for n, v in vals]}


def coord_vectors():
    coords = [
        ("origin", (0,) * 9), ("ones", (1,) * 9), ("mixed", (1, 2, 3, 4, 5, 6, 7, 8, 9)),
        ("max_numeric", (61439,) * 9), ("name_ids", (0xF000, 0xF001, 0xFFFF, 0, 0, 0, 1, 1, 1)),
        ("prototype_example", (2, 1, 3, 4, 7, 11, 18, 29, 47)),
    ]
    out = {"description": "Packed forms: key = 9 x uint16 BE; pattern = lo||hi; delta = 9 int32 BE ops || 9 int32 BE values.",
           "coordinates": [{"name": n, "coord": list(c), "hex": key(*c).hex()} for n, c in coords]}
    out["arrays"] = [{"name": "two", "coords": [[1] * 9, list(range(1, 10))],
                      "hex": (key(*([1] * 9)) + key(*range(1, 10))).hex()},
                     {"name": "empty", "coords": [], "hex": ""}]
    out["patterns"] = [
        {"name": "prefix", "text": "1.2.3/*.*.*/*.*.*", "lo": [1, 2, 3, 0, 0, 0, 0, 0, 0],
         "hi": [1, 2, 3] + [0xFFFF] * 6, "hex": PAT.hex()},
        {"name": "interval", "text": "1.1.1/[2:5].*.*/1.1.1", "lo": [1, 1, 1, 2, 0, 0, 1, 1, 1],
         "hi": [1, 1, 1, 4, 0xFFFF, 0xFFFF, 1, 1, 1],
         "hex": pattern((1, 1, 1, 2, 0, 0, 1, 1, 1), (1, 1, 1, 4, 0xFFFF, 0xFFFF, 1, 1, 1)).hex()},
    ]
    out["deltas"] = [
        {"name": "add_book_5", "text": "+0.0.0/+0.0.5/+0.0.0", "ops": [0] * 9,
         "values": [0, 0, 0, 0, 0, 5, 0, 0, 0], "hex": DELTA.hex()},
        {"name": "set_and_wildcard", "text": "=7.-1.*/+0.+0.+0/+0.+0.+0", "ops": [1, 0, 2, 0, 0, 0, 0, 0, 0],
         "values": [7, -1, 0, 0, 0, 0, 0, 0, 0],
         "hex": delta((1, 0, 2, 0, 0, 0, 0, 0, 0), (7, -1, 0, 0, 0, 0, 0, 0, 0)).hex()},
    ]
    out["invalid_deltas"] = [
        {"name": "op_3", "hex": delta((3, 0, 0, 0, 0, 0, 0, 0, 0), (0,) * 9).hex(),
         "error": "InterfaceError", "note": "ops are 0 add, 1 set, 2 wildcard; anything else is ARG"},
        {"name": "op_negative", "hex": delta((0, 0, 0, 0, 0, 0, 0, 0, -1), (0,) * 9).hex(), "error": "InterfaceError"},
        {"name": "set_over_uint16", "hex": delta((1,) + (0,) * 8, (65536,) + (0,) * 8).hex(), "error": "InterfaceError"},
    ]
    out["texts"] = text_vectors()
    return out


# Names used by the text vectors: id 0xF000 + index.
TEXT_NAMES = ["query", "person", "father"]


def text_vectors():
    """The text grammar (PROTOCOL.md §2.4): text -> packed form, or an error. Written out
    by hand, not computed by vtpu, so they check the parser rather than restate it."""
    N = 0xF000
    ok = [
        ("coord", "1.2.3/4.5.6/7.8.9", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("coord", "1.2.3;4.5.6;7.8.9", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("coord", "  1.2.3 / 4.5.6 ; 7.8.9  ", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("coord", "0.0.0/0.0.0/0.0.61439", [0, 0, 0, 0, 0, 0, 0, 0, 61439]),
        ("coord", "007.1.1/1.1.1/1.1.1", [7, 1, 1, 1, 1, 1, 1, 1, 1]),
        ("coord", "3.8.512/query.0.0/1.1.1", [3, 8, 512, N, 0, 0, 1, 1, 1]),
        ("coord", "person.1001.1/father.person.1002/1.1.1", [N + 1, 1001, 1, N + 2, N + 1, 1002, 1, 1, 1]),
        ("pattern", "1.2.3/*.*.*/*.*.*", [[1, 2, 3, 0, 0, 0, 0, 0, 0], [1, 2, 3] + [0xFFFF] * 6]),
        ("pattern", "1.1.1/[2:5].[:3].[7:]/1.1.query",
         [[1, 1, 1, 2, 0, 7, 1, 1, N], [1, 1, 1, 4, 2, 61439, 1, 1, N]]),
        ("pattern", "[0:61440].*.*/*.*.*/*.*.*", [[0] * 9, [61439] + [0xFFFF] * 8]),
        ("delta", "+0.0.0/+0.0.5/+0.0.0", [[0] * 9, [0, 0, 0, 0, 0, 5, 0, 0, 0]]),
        ("delta", "0.0.0/0.0.5/0.0.0", [[0] * 9, [0, 0, 0, 0, 0, 5, 0, 0, 0]]),
        ("delta", "=7.-1.*/+0.+0.+0/+0.+0.+0", [[1, 0, 2, 0, 0, 0, 0, 0, 0], [7, -1, 0, 0, 0, 0, 0, 0, 0]]),
        ("delta", "person.=father.+query/0.0.0/0.0.0", [[1, 1, 1, 0, 0, 0, 0, 0, 0], [N + 1, N + 2, N, 0, 0, 0, 0, 0, 0]]),
    ]
    bad = [
        ("coord", "1.2.3/4.5.6/7.8", "8 components"),
        ("coord", "1.2.3/4.5.6/7.8.9.10", "10 components"),
        ("coord", "1..3/4.5.6/7.8.9", "empty component"),
        ("coord", "1.2.3/4.5.6/7.8.61440", "above 61439"),
        ("coord", "1.2.3/4.5.6/7.8.-1", "no sign in a coordinate"),
        ("coord", "1. 2.3/4.5.6/7.8.9", "no space around '.'"),
        ("coord", "1.2.3.4.5.6.7.8.9", "'/' (or ';') separates groups of three"),
        ("coord", "1.2.3/4.5.6/7.8.*", "no '*' in a coordinate"),
        ("coord", "a" * 65 + ".1.1/1.1.1/1.1.1", "name longer than 64"),
        ("coord", "1.2.3/4.5.6/7.8.9\t", "only spaces are blank"),
        ("pattern", "1.1.1/[5:5].1.1/1.1.1", "empty interval"),
        ("pattern", "1.1.1/[5-9].1.1/1.1.1", "interval needs ':'"),
        ("pattern", "1.1.1/[0:61441].1.1/1.1.1", "interval end above 61440"),
        ("delta", "-query.0.0/0.0.0/0.0.0", "a name cannot be subtracted"),
        ("delta", "+61440.0.0/0.0.0/0.0.0", "magnitude above 61439"),
    ]
    return {
        "names": TEXT_NAMES,
        "valid": [{"kind": k, "text": t, "packed": (key(*v) if k == "coord" else
                   pattern(*v) if k == "pattern" else delta(*v)).hex(), "value": v} for k, t, v in ok],
        "invalid": [{"kind": k, "text": t, "why": w, "error": "CoordinateError"} for k, t, w in bad],
        "format": [
            {"coord": [1, 2, 3, 4, 5, 6, 7, 8, 9], "text": "1.2.3/4.5.6/7.8.9"},
            {"coord": [3, 8, 512, N, 0, 0, 1, 1, 1], "text": "3.8.512/query.0.0/1.1.1"},
            {"pattern": [[1, 1, 1, 2, 0, 0, 1, 1, 1], [1, 1, 1, 4, 0xFFFF, 0xFFFF, 1, 1, 1]],
             "text": "1.1.1/[2:5].*.*/1.1.1"},
        ],
    }


def jump(k: int, n: int) -> int:
    b, j = -1, 0
    while j < n:
        b = j
        k = (k * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((k >> 33) + 1)))
    return b


def moe_bytes(data: bytes, n: int, top_k: int) -> list:
    out: list = []
    for r in range(16 * top_k):
        if len(out) == top_k:
            break
        e = jump(xxhash.xxh64_intdigest(data, r), n)
        if e not in out:
            out.append(e)
    cand = 0
    while len(out) < top_k:
        if cand not in out:
            out.append(cand)
        cand += 1
    return out


def hash_vectors():
    xx = [{"hex": d.hex(), "seed": s, "xxh64": xxhash.xxh64_intdigest(d, s)}
          for d, s in [(b"", 0), (b"a", 0), (K1, 0), (K1[:6], 0), (K1, 7), (b"vtpu" * 10, 2**63 + 5)]]
    jumps = [{"key": k, "n": n, "bucket": jump(k, n)}
             for k, n in [(0, 1), (1, 10), (2**64 - 1, 1000), (12345678901234567890, 7), (42, 2**31 - 1)]]
    routes = []
    for c in [(1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 9, 9, 9, 9, 9, 9), (2, 1, 3, 4, 7, 11, 18, 29, 47),
              (0,) * 9, (61439,) * 9]:
        for n, level in [(1, 3), (4, 3), (16, 3), (16, 1), (1000, 9)]:
            kb = key(*c)
            h = xxhash.xxh64_intdigest(kb[: 2 * level], 0)
            routes.append({"coord": list(c), "n": n, "level": level, "hashed_hex": kb[: 2 * level].hex(),
                           "node": jump(h, n)})
    moes = []
    for c in [(0, 512, 768, 3, 1, 1, 0, 0, 0), (1, 2, 3, 4, 5, 6, 7, 8, 9)]:
        for n, k in [(8, 1), (8, 2), (64, 4), (2, 2), (3, 3)]:
            moes.append({"coord": list(c), "n": n, "top_k": k, "experts": moe_bytes(key(*c), n, k)})
    lo, hi = (0, 512, 768, 3, 0, 0, 0xF000, 0, 0), (0, 512, 768, 3, 0xFFFF, 0xFFFF, 0xF000, 0xFFFF, 0xFFFF)
    for n, k in [(8, 1), (16, 2)]:
        moes.append({"pattern": [list(lo), list(hi)], "n": n, "top_k": k,
                     "hashed_hex": (key(*lo) + key(*hi)).hex(),
                     "experts": moe_bytes(key(*lo) + key(*hi), n, k)})
    return {"description": "xxh64 (xxhash reference), jump consistent hash, CROUTE and CMOE.",
            "xxh64": xx, "jump": jumps, "route": routes, "moe": moes}


def _req(msgid, op, args) -> str:
    return P.encode_request(msgid, op, args).hex()


def _raw_frame(body: bytes) -> str:
    return (struct.pack(">I", len(body)) + body).hex()


def exchange_vectors():
    """Conversations with a server: frames sent (after a successful HELLO with the given
    options), the exact frames expected back, and whether the connection then stays
    open. tests/test_spec_server.py replays each against a real server."""
    import msgpack

    PAT_ALL = pattern((0,) * 9, (0xFFFF,) * 9)
    E1 = key(1, 1, 1, 1, 1, 1, 1, 1, 1)
    E2 = key(1, 1, 1, 1, 1, 1, 1, 1, 2)
    f4 = lambda *v: np.array(v, dtype="<f4")  # noqa: E731
    f8 = lambda *v: np.array(v, dtype="<f8")  # noqa: E731
    put_vecs = lambda dt: [_req(1, "PUT", [E1, np.array([1, 0, 0], dtype=dt)]),  # noqa: E731
                           _req(2, "PUT", [E2, np.array([0, 1, 0], dtype=dt)])]
    ok_puts = [{"msgid": 1, "status": 0}, {"msgid": 2, "status": 0}]
    err = lambda m, code: {"msgid": m, "status": 1, "code": code}  # noqa: E731
    ts_put = msgpack.packb([3, "PUT", [K1, msgpack.Timestamp(1700000000, 0)]], use_bin_type=True)
    ex = [
        # §1: an undecodable body poisons the stream; a well-formed bad shape does not.
        {"name": "trailing_bytes_poison", "section": "1",
         "send": [_raw_frame(b"\x01\x02"), _req(2, "PING", [])],
         "expect": [err(0, "PROTOCOL")], "then": "closed"},
        {"name": "unknown_ext_poisons", "section": "1",
         "send": [_raw_frame(b"\xd4\x05\x00"), _req(2, "PING", [])],
         "expect": [err(0, "PROTOCOL")], "then": "closed"},
        {"name": "bad_ndarray_payload_poisons", "section": "1, 2.1",
         "send": [_raw_frame(P.packb([3, "PUT", [K1, _bad_ext(["<f4", [3], b"\x00" * 8])]])), _req(4, "PING", [])],
         "expect": [err(0, "PROTOCOL")], "then": "closed"},
        {"name": "oversized_length_poisons", "section": "1", "server": {"max_frame_size": 1024},
         "send": [struct.pack(">I", 1025).hex()],
         "expect": [err(0, "LIMIT")], "then": "closed"},
        # §2.1: <U counts characters (4 bytes each).
        {"name": "unicode_array_roundtrip", "section": "2.1",
         "send": [_req(1, "PUT", [K1, np.array(["ab", "\u00e9"], dtype="<U2")]),
                  _req(2, "GET_MANY", [K1, True])],
         "expect": [{"msgid": 1, "status": 0, "result": 1},
                    {"msgid": 2, "status": 0, "result": [np.array(["ab", "\u00e9"], dtype="<U2")]}],
         "then": "open"},
        # §2.1: ext -1 (msgpack's timestamp) is valid msgpack but no vtpu value: ARG.
        {"name": "timestamp_ext_is_arg", "section": "2.1",
         "send": [_raw_frame(ts_put), _req(4, "GET", [K1])],
         "expect": [err(3, "ARG"), {"msgid": 4, "status": 0, "result": None}], "then": "open"},
        # §3: the msgid of a malformed request is used when it can be read ...
        {"name": "two_item_request_keeps_msgid", "section": "3",
         "send": [P.encode_frame([7, "GET"]).hex(), _req(8, "PING", [])],
         "expect": [err(7, "PROTOCOL"), {"msgid": 8, "status": 0, "result": "PONG"}], "then": "open"},
        # ... and a msgid-0 error on an open connection answers the oldest unanswered request.
        {"name": "unreadable_msgid_answered_in_order", "section": "3",
         "send": [_req(5, "PING", []), P.encode_frame(["x", "GET", [K1]]).hex(), _req(6, "PING", [])],
         "expect": [{"msgid": 5, "status": 0, "result": "PONG"}, err(0, "PROTOCOL"),
                    {"msgid": 6, "status": 0, "result": "PONG"}], "then": "open"},
        # §3.2: no invalidate push for the connection's own write.
        {"name": "tracking_connection_not_told_own_write", "section": "3.2", "hello": {"track": True},
         "send": [_req(1, "PUT", [K1, "a"]), _req(2, "DEL", [K1])],
         "expect": [{"msgid": 1, "status": 0, "result": 1}, {"msgid": 2, "status": 0, "result": 1}],
         "then": "open", "note": "'open' is checked with a PING whose reply must be the next frame"},
        # §5 ATTEND: output is nil without values, the mean of values with zero scores.
        {"name": "attend_output_nil_without_values", "section": "5",
         "send": put_vecs("<f8") + [_req(3, "ATTEND", [f8(0, 0, 0), PAT_ALL, None, None, True]),
                                    _req(4, "ATTEND", [f8(0, 0, 0), PAT_ALL, None, PAT_ALL])],
         "expect": ok_puts + [{"msgid": 3, "status": 0, "result_has": {"output": None, "n": 2, "keys": E1 + E2}},
                              {"msgid": 4, "status": 0, "result_has": {"output": f8(0.5, 0.5, 0), "n": 2}}],
         "then": "open"},
        # §5 ATTEND_MANY: float32 in, float32 out; top_k only with return_weights.
        {"name": "attend_many_float32_stays_float32", "section": "5",
         "send": put_vecs("<f4") + [_req(3, "ATTEND_MANY", [np.zeros((1, 3), dtype="<f4"), PAT_ALL])],
         "expect": ok_puts + [{"msgid": 3, "status": 0, "result": {
             "outputs": np.array([[0.5, 0.5, 0]], dtype="<f4"), "counts": np.array([2], dtype="<i8")}}],
         "then": "open"},
        {"name": "attend_many_float64_query", "section": "5",
         "send": put_vecs("<f4") + [_req(3, "ATTEND_MANY", [np.zeros((1, 3), dtype="<f8"), PAT_ALL])],
         "expect": ok_puts + [{"msgid": 3, "status": 0, "result": {
             "outputs": np.array([[0.5, 0.5, 0]], dtype="<f8"), "counts": np.array([2], dtype="<i8")}}],
         "then": "open"},
        {"name": "attend_many_top_k", "section": "5",
         "send": put_vecs("<f4") + [_req(3, "ATTEND_MANY", [np.zeros((1, 3), dtype="<f4"), PAT_ALL, 1]),
                                    _req(4, "ATTEND_MANY", [np.zeros((1, 3), dtype="<f4"), PAT_ALL, 1, None, True])],
         "expect": ok_puts + [err(3, "ARG"), {"msgid": 4, "status": 0, "result": {
             "outputs": np.array([[0.5, 0.5, 0]], dtype="<f4"), "counts": np.array([2], dtype="<i8"),
             "weights": [f4(0.5)]}}],
         "then": "open"},
        # §2.2: delta ops other than 0/1/2 are refused.
        {"name": "delta_op_3_is_arg", "section": "2.2",
         "send": [_req(1, "KG", [PAT_ALL, delta((3,) + (0,) * 8, (0,) * 9)]),
                  _req(2, "ATTEND", [K1, PAT_ALL, None, delta((0,) * 8 + (7,), (0,) * 9)])],
         "expect": [err(1, "ARG"), err(2, "ARG")], "then": "open"},
        # §4: max_frame_size below 1024 is refused; an accepted one is enforced.
        {"name": "hello_max_frame_size_below_1024", "section": "4", "hello": None,
         "send": [_req(1, "HELLO", [1, None, {"max_frame_size": 512}]), _req(2, "PING", []),
                  _req(3, "HELLO", [1, None, {"max_frame_size": 1024}]), _req(4, "PING", [])],
         "expect": [err(1, "ARG"), err(2, "PROTOCOL"), {"msgid": 3, "status": 0},
                    {"msgid": 4, "status": 0, "result": "PONG"}], "then": "open"},
        {"name": "hello_max_frame_size_enforced", "section": "4",
         "send": [_req(1, "PUT", [K1, "x" * 2000]), _req(2, "HELLO", [1, None, {"max_frame_size": 1024}]),
                  _req(3, "GET", [K1]), _req(4, "GET_MANY", [K1])],
         "expect": [{"msgid": 1, "status": 0, "result": 1}, {"msgid": 2, "status": 0},
                    err(3, "LIMIT"), err(4, "LIMIT")], "then": "open"},
        # §5: absent keys are not errors (no opcode of protocol 1 answers NOT_FOUND).
        {"name": "absent_key_is_nil_not_error", "section": "5",
         "send": [_req(1, "GET", [K2]), _req(2, "DEL", [K2]), _req(3, "HIER", [K2, "NEXT"])],
         "expect": [{"msgid": 1, "status": 0, "result": None}, {"msgid": 2, "status": 0, "result": 0},
                    {"msgid": 3, "status": 0, "result": None}], "then": "open"},
    ]
    for e in ex:
        e.setdefault("hello", {})
        e["expect"] = to_json(e["expect"])
    return {"description": "Server conversations: after HELLO with `hello` options (null: no HELLO), "
                           "send the frames (hex) in one write; the frames received must be exactly "
                           "`expect` (result: exact value; result_has: these map entries; neither: "
                           "status only); then the connection is closed or still answers PING "
                           "with the next frame. `server`: server options.",
            "exchanges": ex}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name, fn in [("frames", frame_vectors), ("values", value_vectors), ("coords", coord_vectors),
                     ("hash", hash_vectors), ("exchanges", exchange_vectors)]:
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump(fn(), f, indent=1, sort_keys=False)
            f.write("\n")
        print("wrote", name + ".json")


if __name__ == "__main__":
    main()
