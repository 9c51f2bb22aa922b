"""Bad input never takes the server down or changes data.

Each case is sent over a raw socket to a real server holding a few scrolls. After every
case the server must still answer another client, and the stored data must be exactly
what it was. Garbage that breaks framing gets one msgid-0 error frame and a close; a
well-framed bad request gets a typed error reply and the connection stays usable.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import sys

import msgpack
import numpy as np
import pytest

from vtpu import _core
from vtpu import protocol as P
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.testing import ServerThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import IO_TIMEOUT, Raw  # noqa: E402

pytestmark = pytest.mark.integration

ALL = _core.parse_pattern("*.*.*/*.*.*/*.*.*")
K1 = _core.pack(_core.parse_coord("1.2.3/4.5.6/7.8.9"))
K2 = _core.pack(_core.parse_coord("1.1.1/1.1.1/1.1.1"))
PAT = P.pack_pattern(ALL)


@pytest.fixture(scope="module")
def server():
    with ServerThread(Engine(), max_frame_size=1 << 20) as st:
        c = RemoteEngine(port=st.port)
        c.put(K1, "one")
        c.put(K2, np.arange(4, dtype=np.float32))
        c.intern(["query"])
        c.close()
        yield st


def snapshot(port):
    c = RemoteEngine(port=port, timeout=IO_TIMEOUT)
    try:
        rows = []
        for s in c.range(ALL):
            content = s.content.tobytes() if isinstance(s.content, np.ndarray) else s.content
            rows.append((s.key, content, s.version, s.updated_at))
        return rows, c.name_table()
    finally:
        c.close()


@pytest.fixture
def check(server):
    """Yields the port; afterwards asserts the server serves and data is unchanged."""
    before = snapshot(server.port)
    yield server.port
    assert snapshot(server.port) == before


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# -- framing errors: one error frame (msgid 0), then close ---------------------------------


@pytest.mark.parametrize(
    "data,code",
    [
        (b"\x00\x00\x00\x00", "PROTOCOL"),  # empty body
        (struct.pack(">I", (1 << 20) + 1), "LIMIT"),  # over this server's 1 MiB
        (struct.pack(">I", 0xFFFFFFFF) + b"xx", "LIMIT"),
    ],
    ids=["zero", "oversized", "huge"],
)
def test_unframeable_stream_is_closed(check, data, code):
    r = Raw(check)
    r.send(data)
    m = r.recv()
    assert m[0] == 0 and m[1] == 1 and m[2][0] == code
    assert r.closed()
    r.close()


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x01\x02", b"\x92\x01", b"\xa1\xff", b"\xd4\x05\x00",
     P.packb(msgpack.ExtType(1, msgpack.packb(["<f4", [3], b"\x00" * 8]))),
     P.packb(msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\x00" * 8]))),
     b"\xdd\xff\xff\xff\xff"],
    ids=["never-used", "trailing", "truncated", "bad-utf8", "unknown-ext", "ndarray-size",
         "ndarray-object", "array-len-lie"],
)
def test_undecodable_body_poisons_the_stream(check, body):
    # PROTOCOL.md §1: a body that is not exactly one valid msgpack object poisons the
    # stream: one msgid-0 error, then the server closes; other connections go on.
    r = Raw(check)
    r.send(frame(body) + P.encode_request(5, "PING", []))
    m = r.recv()
    assert m[0] == 0 and m[1] == 1 and m[2][0] == "PROTOCOL"
    assert r.closed()
    assert Raw(check).call(6, "PING", []) == [6, 0, "PONG"]
    r.close()


@pytest.mark.parametrize(
    "msg",
    [1, "x", [], [1, "GET"], [0, "GET", [K1]], [-1, "GET", [K1]], [2**32, "GET", [K1]],
     [1, 7, [K1]], [1, "GET", {"k": K1}], [1, "GET", [K1], "extra"], {"msgid": 1}],
    ids=["int", "str", "empty", "two", "msgid0", "negative", "msgid-big", "op-int",
         "args-map", "four", "map"],
)
def test_malformed_request_shapes(check, msg):
    r = Raw(check)
    r.send(P.encode_frame(msg))
    m = r.recv()
    assert m[1] == 1 and m[2][0] == "PROTOCOL"
    assert r.call(9, "PING", []) == [9, 0, "PONG"]
    r.close()


def test_unknown_opcode(check):
    r = Raw(check)
    m = r.call(3, "FROB", [K1])
    assert m == [3, 1, m[2]] and m[2][0] == "PROTOCOL" and "FROB" in m[2][1]
    m = r.call(4, "x" * 10000, [])
    assert m[1] == 1 and len(m[2][1]) < 200
    assert r.call(5, "GET", [K1])[2][1] == "one"
    r.close()


BAD_ARGS = [
    ("GET", []), ("GET", [K1, K1]), ("GET", [K1[:17]]), ("GET", ["1.2.3/4.5.6/7.8.9"]), ("GET", [None]),
    ("GET", [42]),
    ("GET_MANY", [K1[:10]]), ("GET_MANY", [[K1, K2]]),
    ("PUT", [K1]), ("PUT", [K1[:5], "x"]), ("PUT", [K1, "x", "1"]), ("PUT", [K1, "x", -1]),
    ("PUT", [K1, "x", 1.5]), ("PUT", [K1, "x", 1, 2]),
    ("PUT", [_core.pack(np.array([0xF555] + [1] * 8, dtype=np.uint16)), "x"]),
    ("PUT_MANY", [K1 + K2, ["only one"]]), ("PUT_MANY", [K1 + K2, "ab"]), ("PUT_MANY", [K1[:7], []]),
    ("PUT_MANY", [K1 + K2, np.zeros((3, 2))]), ("PUT_MANY", [K1, {"a": 1}]),
    ("DEL", [K1 + K2]), ("DEL_MANY", ["K1"]), ("DEL_RANGE", [K1]), ("DEL_RANGE", []),
    ("RANGE", [K1]), ("RANGE", [PAT, -1]), ("RANGE", [PAT, "5"]), ("RANGE", [PAT, None, b"x"]),
    ("RANGE", [PAT, None, None, "yes"]),
    ("COUNT", [PAT + PAT]), ("NEAREST", [K1, -2]), ("NEAREST", [K1, 3, "cosine"]),
    ("NEAREST", [K1, 3, "l1", K1]), ("HIER", [K1, "UP"]), ("HIER", [K1]),
    ("ATTEND", [K1, K1]), ("ATTEND", ["q", PAT]), ("ATTEND", [K1, PAT, None, b"\x00" * 5]),
    ("ATTEND", [np.array(["a"]), PAT]),
    ("ATTEND_MANY", [np.ones((2, 3)), PAT]), ("ATTEND_MANY", [np.ones((1, 3)), PAT, 3]),
    ("KG", [PAT, b"\x00" * 71, 1]), ("KG", [PAT, b"\x00" * 72, -1]), ("KG", [K1, b"", 1]),
    ("INTERN", ["query"]), ("INTERN", [[1, 2]]), ("INTERN", [["bad name!"]]),
    ("NAMES", [1]), ("HEALTH", ["x"]), ("STATS", [1, 2]),
    ("IMPORT_PHEXT", [b"bytes"]), ("IMPORT_PHEXT", []), ("EXPORT_PHEXT", [K1]),
    ("BATCH", []), ("BATCH", ["x"]), ("BATCH", [[1, 2]]),
    ("PING", [1, 2, 3]),
]


@pytest.mark.parametrize("op,args", BAD_ARGS, ids=[f"{o}-{i}" for i, (o, _) in enumerate(BAD_ARGS)])
def test_wrong_arguments_get_typed_errors(check, op, args):
    r = Raw(check)
    m = r.call(7, op, args)
    assert m[0] == 7, m
    if op == "BATCH" and m[1] == 0:
        # a BATCH of bad items fails per item
        assert all(item[0] == 1 for item in m[2])
    elif op == "PING":
        assert m[1] == 0  # extra PING args are ignored
    else:
        assert m[1] == 1 and m[2][0] in ("ARG", "COORD", "PROTOCOL", "LIMIT"), m
    assert r.call(8, "GET", [K1])[2][1] == "one"
    r.close()


def test_batch_refuses_nested_and_hello(check):
    r = Raw(check)
    m = r.call(2, "BATCH", [[["HELLO", [1, None, {}]], ["BATCH", [[]]], ["GET", [K1]], ["PUT", [K1]]]])
    assert m[1] == 0
    res = m[2]
    assert res[0][0] == 1 and res[1][0] == 1 and res[2][0] == 0 and res[3][0] == 1
    assert res[3][1][0] == "ARG"
    r.close()


# -- session -------------------------------------------------------------------------------


def test_requests_before_hello(check):
    r = Raw(check, hello=False)
    m = r.call(1, "PUT", [K1, "evil"])
    assert m[1] == 1 and m[2][0] == "PROTOCOL"
    assert r.call(2, "HELLO", [1, None, {}])[1] == 0
    assert r.call(3, "GET", [K1])[2][1] == "one"
    r.close()


@pytest.mark.parametrize("hello", [[2, None, {}], [None], [], ["1"]], ids=["v2", "nil", "empty", "str"])
def test_bad_hello_closes(check, hello):
    r = Raw(check, hello=False)
    m = r.call(1, "HELLO", hello)
    assert m[1] == 1 and m[2][0] == "PROTOCOL"
    assert r.closed()
    r.close()


def test_hello_bad_options(check):
    r = Raw(check, hello=False)
    m = r.call(1, "HELLO", [1, None, "opts"])
    assert m[1] == 1 and m[2][0] == "ARG"
    r.close()


def test_wrong_token_closes_and_others_continue():
    eng = Engine()
    with ServerThread(eng, token="tok") as st:
        ok = RemoteEngine(port=st.port, token="tok")
        ok.put(K1, "kept")
        for tok in (None, "", "tok2", 5, "t" * 60000):  # (a HELLO frame holds <= 64 KiB)
            r = Raw(st.port, hello=False)
            m = r.call(1, "HELLO", [1, tok, {}])
            assert m[1] == 1 and m[2][0] == "AUTH"
            assert r.closed()
            r.close()
        r = Raw(st.port, hello=False)
        m = r.call(1, "DEL", [K1])
        assert m[2][0] == "AUTH"
        r.close()
        assert ok.get(K1).content == "kept"
        ok.close()


# -- vanishing and misbehaving clients -----------------------------------------------------


def test_client_vanishes_mid_frame(check):
    for cut in (1, 3, 4, 10, 30):
        r = Raw(check)
        data = P.encode_request(2, "PUT", [K1, "never written " * 3])
        r.send(data[:cut])
        r.close()
    for _ in range(3):
        r = Raw(check)
        r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.send(P.encode_request(2, "PUT", [K1, "x"])[:15])
        r.close()  # RST instead of FIN


def test_many_connections_dropped_abruptly(check):
    socks = [socket.create_connection(("127.0.0.1", check), timeout=IO_TIMEOUT) for _ in range(50)]
    for i, s in enumerate(socks):
        if i % 2:
            s.sendall(b"\x00\x00")
        s.close()


def test_pipelined_burst_then_disconnect_without_reading(check):
    r = Raw(check)
    burst = b"".join(P.encode_request(i, "GET", [K1]) for i in range(2, 5002))
    r.send(burst)
    r.close()


def test_burst_of_reads_is_answered_in_order(check):
    r = Raw(check)
    r.send(b"".join(P.encode_request(i, "PING", []) for i in range(2, 1002)))
    ids = [r.recv()[0] for _ in range(1000)]
    assert ids == list(range(2, 1002))
    r.close()


def test_random_garbage_streams(check):
    rng = random.Random(11)
    for _ in range(40):
        r = Raw(check)
        n = rng.randint(1, 300)
        r.send(bytes(rng.getrandbits(8) for _ in range(n)))
        try:
            r.s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # whatever happened, the server answers or closes; it never hangs
        for _ in range(50):
            if r.recv() is None:
                break
        r.close()


def test_garbage_frame_with_valid_length(check):
    rng = random.Random(5)
    r = Raw(check)
    for i in range(200):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
        r.send(frame(body))
        m = r.recv()
        if m is None:
            break
        assert m[1] == 1  # an error reply of some kind (never a success)
    r.close()


def test_slow_client_does_not_block_others(check):
    # Fill the server's write buffer by not reading, while another client keeps working.
    big = Raw(check)
    big.send(b"".join(P.encode_request(i, "STATS", []) for i in range(2, 3000)))
    other = RemoteEngine(port=check, timeout=IO_TIMEOUT)
    for _ in range(20):
        assert other.get(K1).content == "one"
    other.close()
    big.close()
