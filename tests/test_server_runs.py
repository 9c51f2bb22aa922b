"""Runs of pipelined GETs and PUTs on a real server: answered with one engine call each,
and every request still gets exactly the answer it would get alone (errors included).
Also the scroll-list replies (GET_MANY, RANGE pages, KG, inside BATCH), which the server
encodes with the codec's column encoder. Requests go out over a raw socket, pipelined
in one write, so the runs really form on the server.
"""
from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest

from vtpu import _core
from vtpu import protocol as P
from vtpu import wire as W
from vtpu.engine import Engine
from vtpu.testing import ServerThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import IO_TIMEOUT, Raw  # noqa: E402

pytestmark = pytest.mark.integration



def key(i: int) -> bytes:
    return _core.pack(np.array([5, 0, 0, 0, 0, 0, 0, i >> 8, i & 0xFF], np.uint16))


@pytest.fixture
def server():
    e = Engine()
    with ServerThread(e) as st:
        st.engine_ref = e
        yield st


def by_id(replies: list) -> dict:
    return {m[0]: m for m in replies}


def test_pipelined_get_run_equals_single_gets(server):
    r = Raw(server.port)
    puts = b"".join(W.encode_request(10 + i, "PUT", [key(i), f"v{i}"]) for i in range(50))
    assert all(m[2] == 1 for m in r.exchange(puts, 50))
    ks = b"".join(key(i) for i in range(60))  # 10 absent keys
    got = r.exchange(W.encode_get_requests(100, ks), 60)
    assert [m[0] for m in got] == list(range(100, 160))
    for i, m in enumerate(got):
        if i < 50:
            k, content, version, created, updated = m[2]
            assert (k, content, version) == (key(i), f"v{i}", 1)
            assert isinstance(created, float) and created == updated
        else:
            assert m == [100 + i, 0, None]
    r.close()


def test_a_get_reply_over_the_client_limit_fails_alone(server):
    r = Raw(server.port, {"max_frame_size": 4096})
    w = Raw(server.port)
    w.exchange(W.encode_request(2, "PUT", [key(1), "small"])
               + W.encode_request(3, "PUT", [key(2), b"x" * 5000]), 2)
    got = r.exchange(W.encode_get_requests(7, key(1) + key(2) + key(1)), 3)
    assert got[0][2][1] == "small" and got[2][2][1] == "small"
    assert got[1][0] == 8 and got[1][1] == 1 and got[1][2][0] == "LIMIT"
    r.close()
    w.close()


def test_gets_before_hello_are_refused_each(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    s.sendall(W.encode_get_requests(3, key(1) + key(2)) + W.encode_request(
        5, "PUT", [key(1), "x"]) + W.encode_request(6, "PUT", [key(2), "y"]))
    d = W.FrameDecoder()
    got = []
    while len(got) < 4:
        d.feed(s.recv(65536))
        got.extend(d)
    assert [(m[0], m[1], m[2][0]) for m in got] == [(i, 1, "PROTOCOL") for i in (3, 4, 5, 6)]
    s.close()
    assert server.call(lambda: server.engine_ref.get(key(1))) is None


def test_pipelined_put_run_equals_single_puts(server):
    r = Raw(server.port)
    # repeated keys count their versions up, as one PUT after the other would
    order = [key(i % 7) for i in range(40)]
    data = b"".join(W.encode_request(50 + i, "PUT", [k, i]) for i, k in enumerate(order))
    got = r.exchange(data, 40)
    want = {}
    for i, k in enumerate(order):
        want[k] = want.get(k, 0) + 1
        assert got[i] == [50 + i, 0, want[k]]
    got = r.exchange(W.encode_get_requests(200, b"".join(key(i) for i in range(7))), 7)
    assert [m[2][1] for m in got] == [35, 36, 37, 38, 39, 33, 34]  # the last write wins
    r.close()


def test_a_bad_put_in_a_run_fails_alone(server):
    r = Raw(server.port)
    r.exchange(W.encode_request(2, "INTERN", [["known"]]), 1)
    named = _core.pack(np.array([5, 0, 0, 0, 0, 0, 0, 0, 0xF001], np.uint16))  # not interned
    data = (W.encode_request(10, "PUT", [key(1), "a"])
            + W.encode_request(11, "PUT", [key(2), "b"])
            + W.encode_request(12, "PUT", [named, "c"])          # unknown name id
            + W.encode_request(13, "PUT", [key(3), "d"])
            + W.encode_request(14, "PUT", [key(4), {b"bin key": 1}])  # unstorable
            + W.encode_request(15, "PUT", [key(5), "f"]))
    got = by_id(r.exchange(data, 6))
    assert [got[i][2] for i in (10, 11, 13, 15)] == [1, 1, 1, 1]
    assert got[12][1] == 1 and got[12][2][0] == "COORD"
    assert got[14][1] == 1 and got[14][2][0] == "ARG"
    e = server.engine_ref
    assert server.call(lambda: [e.get(key(i)).content for i in (1, 2, 3, 5)]) == [
        "a", "b", "d", "f"]
    assert server.call(lambda: (e.get(named), e.get(key(4)))) == (None, None)
    r.close()


def test_put_runs_push_invalidations_to_other_trackers(server):
    watcher = Raw(server.port, {"track": True})
    writer = Raw(server.port)
    data = b"".join(W.encode_request(20 + i, "PUT", [key(i), "w"]) for i in range(5))
    writer.exchange(data, 5)
    watcher.s.sendall(W.encode_request(9, "PING", []))
    seen = set()
    while True:
        m = watcher.recv()
        if m[0] == 0 and m[1] == "push":
            assert m[2] == "invalidate"
            blob = m[3]
            seen.update(blob[i:i + 18] for i in range(0, len(blob), 18))
        else:
            assert m == [9, 0, "PONG"]
            break
    assert seen == {key(i) for i in range(5)}
    watcher.close()
    writer.close()


def test_scroll_list_replies(server):
    r = Raw(server.port)
    n = 40
    blob = b"".join(key(i) for i in range(n))
    r.exchange(W.encode_request(2, "PUT_MANY", [blob, [f"s{i}" for i in range(n)]]), 1)
    # GET_MANY: a scroll list, absent entries as version 0
    (m,) = r.exchange(W.encode_request(3, "GET_MANY", [key(0) + bytes(18) + key(5)]), 1)
    rows = list(P.wire_to_rows(m[2]))
    assert rows[1] is None and rows[0][:3] == (key(0), "s0", 1) and rows[2][1] == "s5"
    # the body is what the column encoder writes for the engine's scrolls
    e = server.engine_ref
    scrolls = server.call(lambda: e.get_many(key(0) + bytes(18) + key(5)))
    r.s.sendall(W.encode_request(4, "GET_MANY", [key(0) + bytes(18) + key(5)]))
    while (body := r.d.next_body()) is None:
        r.d.feed(r.s.recv(65536))
    assert body == W.encode_response_scrolls(4, scrolls)[4:]
    # RANGE pages through the column codec: a limit, then the continuation
    pat = P.pack_pattern(np.array([[5] + [0] * 8, [5] + [0xFFFF] * 8], np.uint16))
    (m,) = r.exchange(W.encode_request(5, "RANGE", [pat, 10, None, False]), 1)
    page, after = m[2]
    assert after is None and [row[1] for row in P.wire_to_rows(page)] == [
        f"s{i}" for i in range(10)]
    (m,) = r.exchange(W.encode_request(6, "RANGE", [pat, None, key(29), False]), 1)
    assert [row[1] for row in P.wire_to_rows(m[2][0])] == [f"s{i}" for i in range(30, n)]
    # inside a BATCH the same results travel as generic values
    (m,) = r.exchange(W.encode_request(7, "BATCH", [[["GET_MANY", [key(1)]],
                                                      ["RANGE", [pat, 2, None, False]]]]), 1)
    (s1, r1), (s2, r2) = m[2]
    assert s1 == 0 and list(P.wire_to_rows(r1))[0][1] == "s1"
    assert s2 == 0 and [row[1] for row in P.wire_to_rows(r2[0])] == ["s0", "s1"]
    r.close()


def test_range_pages_follow_the_page_size():
    e = Engine()
    blob = b"".join(key(i) for i in range(25))
    e.put_many(blob, [f"p{i}" for i in range(25)])
    with ServerThread(e, page_size=10) as st:
        r = Raw(st.port)
        pat = P.pack_pattern(np.array([[5] + [0] * 8, [5] + [0xFFFF] * 8], np.uint16))
        after, got = None, []
        for msgid in range(2, 10):
            (m,) = r.exchange(W.encode_request(msgid, "RANGE", [pat, None, after, False]), 1)
            page, after = m[2]
            got.extend(row[1] for row in P.wire_to_rows(page))
            if after is None:
                break
        assert got == [f"p{i}" for i in range(25)] and msgid == 4
        r.close()
