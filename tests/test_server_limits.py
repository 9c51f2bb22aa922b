"""Hostile and heavy clients against a real server: per-connection limits (issue 12).

Each class of abuse gets its test here: what a stranger may send before HELLO, readers
that stop reading, requests whose reply would not fit, frames that never complete,
connection floods and idle connections, name floods. Every test talks to a real server
on 127.0.0.1 with small limits, so the limits are reached quickly; big-data versions are
``slow``. After each case the server must still serve a well-behaved client.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import time

import numpy as np
import pytest

from vtpu import _core
from vtpu import protocol as P
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.server import Limits
from vtpu.testing import ServerThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from _helpers import IO_TIMEOUT, Raw, wait_for  # noqa: E402

pytestmark = pytest.mark.integration

K1 = _core.pack(_core.parse_coord("1.2.3/4.5.6/7.8.9"))


def key(i: int) -> bytes:
    return _core.pack(np.array([1, 1, 1, 1, 1, 1, 1, i // 60000, i % 60000], dtype=np.uint16))


def served(port: int, token=None) -> bool:
    """A fresh, well-behaved client gets an answer."""
    c = RemoteEngine(port=port, token=token, timeout=IO_TIMEOUT)
    try:
        return c.ping() in (True, "PONG")
    finally:
        c.close()


# -- before HELLO --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded():
    with ServerThread(Engine(), token="tok") as st:
        yield st


def test_large_frame_before_hello_is_refused_from_its_header(guarded):
    r = Raw(guarded.port, hello=False)
    # Only the header and a little of the body are sent: the refusal cannot have waited
    # for (or buffered) the rest.
    r.send(struct.pack(">I", 48 << 20) + b"\xdd" + b"\x80" * 1000)
    m = r.recv()
    assert m[0] == 0 and m[1] == 1 and m[2][0] == "LIMIT"
    assert "65536" in m[2][1]
    assert r.closed(skip=True)
    r.close()
    assert served(guarded.port, "tok")


def test_frame_limit_rises_after_hello(guarded):
    r = Raw(guarded.port, hello=False, token="tok")
    assert r.call(1, "HELLO", [1, "tok", {}])[1] == 0
    big = r.call(3, "INTERN", [["n" + "x" * 50] * 5000, False])  # a 270 kB request
    assert big[1] == 0 and big[2] == [None] * 5000
    r.close()


def test_failed_hello_options_keep_the_small_limit(guarded):
    r = Raw(guarded.port, hello=False)
    m = r.call(1, "HELLO", [1, "tok", {"track": "yes"}])
    assert m[2][0] == "ARG"
    r.send(struct.pack(">I", 100_000) + b"\x93")
    m = r.recv()
    assert m[0] == 0 and m[2][0] == "LIMIT"
    r.close()


@pytest.mark.parametrize("args,code,closes", [
    ([np.array([1])], "PROTOCOL", True),
    ([np.array([1, 1]), "tok", {}], "PROTOCOL", True),
    ([True, "tok", {}], "PROTOCOL", True),
    ([1.0, "tok", {}], "PROTOCOL", True),
    ([1, np.array([1, 2]), {}], "AUTH", True),
    ([1, "tok", {"track": np.array([True])}], "ARG", False),
    ([1, "tok", {"max_frame_size": np.array([4096])}], "ARG", False),
    ([1, "tok", {}, "extra"], "ARG", False),
    ([1, "tok", [1, 2]], "ARG", False),
], ids=["nd-version-1", "nd-version-2", "bool-version", "float-version", "nd-token",
        "nd-track", "nd-mfs", "four-args", "list-options"])
def test_malformed_hello_gets_a_typed_reply(guarded, caplog, args, code, closes):
    with caplog.at_level(logging.INFO, logger="vtpu.server"):
        r = Raw(guarded.port, hello=False)
        m = r.call(7, "HELLO", args)
        assert m[0] == 7 and m[1] == 1 and m[2][0] == code
        if closes:
            assert r.closed(skip=True)
        else:
            # Still open, still without a session, and a second bad HELLO on the same
            # connection logs nothing more.
            assert r.call(8, "HELLO", args)[2][0] == code
            assert r.call(9, "GET", [K1])[2][0] == "AUTH"
        r.close()
        time.sleep(0.2)
    lines = [rec for rec in caplog.records if rec.name == "vtpu.server"]
    assert len(lines) <= 1
    assert all(rec.exc_info is None and len(rec.getMessage()) < 256 for rec in lines)
    assert served(guarded.port, "tok")


# -- slow readers ----------------------------------------------------------------------------


def _server_side(st, fn):
    """Run ``fn(connections)`` on the server's loop (the server's own view)."""
    return st.call(lambda: fn(list(st.handle._server.conns)))


def _unsent(conns):
    return max((c.transport.get_write_buffer_size() for c in conns), default=0)


def test_requests_of_a_reader_that_stops_reading_wait_unanswered():
    lim = Limits(slice_bytes=1 << 20)
    value = b"\xab" * (256 << 10)
    with ServerThread(Engine(), limits=lim) as st:
        w = RemoteEngine(port=st.port)
        w.put(K1, value)
        w.put(key(1), "small")
        r = Raw(st.port, rcvbuf=64 << 10)
        n = 200  # 50 MiB of replies
        reqs = b"".join(P.encode_request(i, "GET", [K1 if i % 7 else key(1)])
                        for i in range(2, 2 + n))
        r.send(reqs)
        time.sleep(0.5)
        # At most the write buffer's high mark plus one slice is made, not 50 MiB.
        assert _server_side(st, _unsent) <= 2 * lim.slice_bytes + len(value)
        assert served(st.port)
        # Reading again: every reply arrives, in order, each the right one.
        for i in range(2, 2 + n):
            m = r.recv()
            assert m[0] == i and m[1] == 0
            assert m[2][1] == (value if i % 7 else "small")
        r.close()
        w.close()


def test_unread_replies_over_the_hard_limit_close_the_connection(caplog):
    lim = Limits(slice_bytes=256 << 10, output_hard=2 << 20)
    with ServerThread(Engine(), limits=lim) as st:
        w = RemoteEngine(port=st.port)
        # (The kernel's socket buffers take up to a few MiB of it; the rest is the
        # server's.)
        w.put(K1, b"\xcd" * (12 << 20))
        r = Raw(st.port, rcvbuf=64 << 10)
        with caplog.at_level(logging.WARNING, logger="vtpu.server"):
            r.send(P.encode_request(2, "GET", [K1]))
            deadline = time.monotonic() + IO_TIMEOUT
            while _server_side(st, len) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _server_side(st, len) == 1  # the writer only
        assert any("hard limit" in rec.getMessage() for rec in caplog.records)
        # (A reader of K1 would be closed too: its reply alone is over this hard limit.)
        assert w.get(key(3)) is None
        r.close()
        w.close()


def test_unread_replies_over_the_soft_limit_for_too_long_close_the_connection():
    lim = Limits(slice_bytes=256 << 10, output_soft=1 << 20, output_soft_seconds=1.0)
    with ServerThread(Engine(), limits=lim) as st:
        w = RemoteEngine(port=st.port)
        w.put(K1, b"\xcd" * (8 << 20))  # more than the kernel's buffers take
        r = Raw(st.port, rcvbuf=64 << 10)
        r.send(P.encode_request(2, "GET", [K1]))
        time.sleep(0.3)
        assert _server_side(st, len) == 2  # over the soft limit, not for long yet
        deadline = time.monotonic() + IO_TIMEOUT
        while _server_side(st, len) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _server_side(st, len) == 1
        assert served(st.port)
        r.close()
        w.close()


def test_a_tracker_that_falls_behind_gets_one_flush_everything_push():
    lim = Limits(slice_bytes=256 << 10)
    with ServerThread(Engine(), limits=lim) as st:
        w = RemoteEngine(port=st.port)
        t = Raw(st.port, rcvbuf=64 << 10, options={"track": True})
        blob = b"".join(key(i) for i in range(20_000))  # 360 kB of keys per push
        rounds = 40
        for _ in range(rounds):
            w.put_many(blob, [0] * 20_000)
        assert _server_side(st, _unsent) <= 2 * lim.slice_bytes + len(blob) + 64
        pushes = []
        t.s.settimeout(IO_TIMEOUT)
        while True:
            m = t.recv(2.0) if len(pushes) < rounds else None
            if m is None:
                break
            assert m[:3] == [0, "push", "invalidate"]
            pushes.append(m[3])
            if m[3] is None:
                break
        # Some pushes with keys, then one nil for everything left out.
        assert 1 <= len(pushes) < rounds
        assert pushes[-1] is None and all(p == blob for p in pushes[:-1])
        # Caught up: the next write is pushed with its keys again.
        w.put(key(5), 1)
        assert t.recv() == [0, "push", "invalidate", key(5)]
        t.close()
        w.close()


# -- replies sized before they are built ---------------------------------------------------


@pytest.fixture(scope="module")
def big_values():
    """A server with ten 300 kB values (keys 0..9) and a small one (key 50)."""
    with ServerThread(Engine()) as st:
        c = RemoteEngine(port=st.port)
        c.put_many(b"".join(key(i) for i in range(10)), [bytes([i]) * 300_000 for i in range(10)])
        c.put(key(50), "small")
        c.close()
        yield st


def test_get_many_over_the_client_limit_is_refused_from_an_estimate(big_values):
    r = Raw(big_values.port, options={"max_frame_size": 1 << 20})
    for content_only in (False, True):
        m = r.call(2, "GET_MANY", [key(3) * 1000, content_only])  # ~300 MB if built
        assert m[1] == 1 and m[2][0] == "LIMIT" and "1048576" in m[2][1]
    m = r.call(3, "GET_MANY", [key(3) + key(50) + key(4)])
    assert m[1] == 0 and m[2][1][1] == "small" and m[2][1][0] == b"\x03" * 300_000
    r.close()


def test_batch_stops_as_soon_as_its_results_pass_the_limit(big_values):
    r = Raw(big_values.port, options={"max_frame_size": 1 << 20})
    ops = [["PUT", [key(100), "before"]]] + [["GET", [key(i)]] for i in range(10)] \
        + [["PUT", [key(101), "after"]]]
    m = r.call(2, "BATCH", [ops])
    assert m[1] == 1 and m[2][0] == "LIMIT"
    assert "after 5 of 12 operations" in m[2][1]
    # What ran before the stop ran; what came after did not.
    got = r.call(3, "GET_MANY", [key(100) + key(101), True])
    assert got[2] == ["before", None]
    # The same operations in parts that fit are answered.
    m = r.call(4, "BATCH", [ops[:3]])
    assert m[1] == 0 and [x[0] for x in m[2]] == [0, 0, 0]
    r.close()


def test_range_pages_are_bounded_by_bytes(big_values):
    c = RemoteEngine(port=big_values.port, max_frame_size=1 << 20)
    pattern = _core.parse_pattern("1.1.1/1.1.1/1.0.[0:10]")
    r = Raw(big_values.port, options={"max_frame_size": 1 << 20})
    m = r.call(2, "RANGE", [P.pack_pattern(pattern)])
    page, after = m[2]
    assert len(page[0]) == 18  # one 300 kB scroll per page: half the 1 MiB limit
    assert after == key(0)
    # The client pages through, every value whole.
    got = c.range(pattern)
    assert [s.key for s in got] == [key(i) for i in range(10)]
    assert all(s.content == bytes([i]) * 300_000 for i, s in enumerate(got))
    r.close()
    c.close()


def test_reply_size_estimate_bounds_the_encoded_size():
    from vtpu.engine import estimate_wire_size

    e = Engine()
    contents = ["text", b"\x00" * 5000, np.arange(300, dtype=np.float32), {"a": [1, "bb"]},
                [b"x" * 100] * 3, 7, None, "é" * 10]
    e.put_many(b"".join(key(i) for i in range(len(contents))), contents)
    for group in (range(2), range(2, 5), range(len(contents))):
        scrolls = e.get_many(b"".join(key(i) for i in group) + key(999))
        est, n = estimate_wire_size(scrolls)
        real = len(P.encode_scrolls(scrolls))
        assert n == len(scrolls) and real * 0.9 <= est <= real + 64 * n
    scrolls = e.get_many(b"".join(key(i) for i in range(len(contents))))
    total, _ = estimate_wire_size(scrolls)
    upto, n = estimate_wire_size(scrolls, stop=100)
    assert n == 2 and 100 < upto < total  # the 5000-byte content passes 100
    assert estimate_wire_size(scrolls, stop=total) == (total, len(scrolls))


# -- frames that never complete, idle connections ------------------------------------------


def test_an_unfinished_frame_is_dropped_after_the_frame_timeout():
    with ServerThread(Engine(), limits=Limits(frame_timeout=0.5)) as st:
        r = Raw(st.port)
        r.send(struct.pack(">I", 1 << 20) + b"\x93" + b"\x00" * 100_000)
        m = r.recv()
        assert m[0] == 0 and m[1] == 1 and m[2][0] == "PROTOCOL" and "frame" in m[2][1]
        assert r.closed(skip=True)
        assert _server_side(st, lambda cs: sum(c.decoder.buffered() for c in cs)) == 0
        r.close()
        assert served(st.port)


def test_a_frame_that_keeps_arriving_is_not_dropped():
    with ServerThread(Engine(), limits=Limits(frame_timeout=2.0)) as st:
        r = Raw(st.port)
        data = P.encode_request(2, "PUT", [K1, "y" * 50_000])
        step = len(data) // 5 + 1
        for i in range(0, len(data), step):
            r.send(data[i:i + step])
            time.sleep(0.3)
        assert r.recv() == [2, 0, 1]
        r.close()


def test_unfinished_large_frames_share_one_input_limit():
    """Frames that take their time arriving cannot add up past ``input_total``: a frame
    that does not fit is not read until one that does completes, then it goes through;
    small requests are never held up."""
    big = P.encode_request(2, "PUT", [K1, b"\xcd" * (3 << 20)])   # ~3 MiB frames
    with ServerThread(Engine(), limits=Limits(input_total=7 << 20)) as st:
        held = [Raw(st.port) for _ in range(4)]
        for r in held:
            r.send(big[:-1])   # all but the last byte
        # Two frames fit the limit; the other two are not read past what had arrived.
        wait_for(lambda: _server_side(st, lambda cs: sum(c.input_wait for c in cs)) == 2)
        buffered = _server_side(st, lambda cs: sum(c.decoder.buffered() for c in cs))
        assert buffered < 2 * len(big) + 2 * (1 << 20)
        assert _server_side(st, lambda cs: st.handle._server.input_reserved) == 2 * len(big)
        assert served(st.port)   # a small request is not held up
        # Completing frames lets the waiting ones in, first come first served.
        for r in held:
            r.send(big[-1:])
        for r in held:
            assert r.recv() in ([2, 0, 1], [2, 0, 2], [2, 0, 3], [2, 0, 4])
            r.close()
        wait_for(lambda: _server_side(st, lambda cs: st.handle._server.input_reserved) == 0)
        assert RemoteEngine(port=st.port).get(K1).version == 4


def test_a_connection_without_hello_is_closed_after_the_hello_timeout():
    with ServerThread(Engine(), limits=Limits(hello_timeout=0.5)) as st:
        # One that says HELLO in time stays: connected first, it is past the timeout by
        # the time the silent one (connected after it) has been closed.
        ok = Raw(st.port)
        r = Raw(st.port, hello=False)
        m = r.recv()
        assert m[0] == 0 and m[2][0] == "PROTOCOL" and "HELLO" in m[2][1]
        assert r.closed(skip=True)
        r.close()
        assert ok.call(2, "PING", [])[2] == "PONG"
        ok.close()


def test_idle_timeout_closes_idle_connections_but_not_trackers():
    with ServerThread(Engine(), limits=Limits(idle_timeout=0.5)) as st:
        idle = Raw(st.port)
        tracker = Raw(st.port, options={"track": True})
        assert idle.closed(skip=True)
        assert tracker.call(2, "PING", [])[2] == "PONG"
        idle.close()
        tracker.close()


def test_idle_timeout_is_off_by_default():
    with ServerThread(Engine()) as st:
        r = Raw(st.port)
        time.sleep(1.5)
        assert r.call(2, "PING", [])[2] == "PONG"
        r.close()


# -- the client limit ------------------------------------------------------------------------


def test_at_the_client_limit_new_connections_are_refused_then_served_again():
    with ServerThread(Engine(), limits=Limits(max_clients=3)) as st:
        held = [Raw(st.port) for _ in range(3)]
        extra = Raw(st.port, hello=False)
        m = extra.recv()
        assert m[0] == 0 and m[2][0] == "LIMIT" and "client limit (3)" in m[2][1]
        assert extra.closed(skip=True)
        extra.close()
        assert all(r.call(2, "PING", [])[2] == "PONG" for r in held)
        held.pop().close()
        deadline = time.monotonic() + IO_TIMEOUT
        while _server_side(st, len) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served(st.port)
        for r in held:
            r.close()


def test_at_the_client_limit_the_oldest_connection_without_hello_makes_room():
    with ServerThread(Engine(), limits=Limits(max_clients=3)) as st:
        held = [Raw(st.port) for _ in range(2)]
        silent = Raw(st.port, hello=False)
        time.sleep(0.1)
        assert served(st.port)  # takes the silent one's place
        m = silent.recv()
        assert m[0] == 0 and m[2][0] == "LIMIT" and "HELLO" in m[2][1]
        assert silent.closed(skip=True)
        assert all(r.call(2, "PING", [])[2] == "PONG" for r in held)
        for r in held + [silent]:
            r.close()


def test_the_default_client_limit_follows_the_descriptor_limit():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert Limits().client_limit() == soft - 32
    assert Limits(fd_reserve=100).client_limit() == soft - 100
    assert Limits(max_clients=7).client_limit() == 7


def test_serve_command_line_limits():
    import re
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "vtpu", "serve", "--port", "0",
                          "--max-clients", "1", "--hello-timeout", "30", "--timeout", "0",
                          "--frame-timeout", "5", "--output-limit", "128m", "32m", "30",
                          "--names-per-second", "10"],
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        port = int(re.search(r"serving on [^:]+:(\d+)", line).group(1))
        first = Raw(port)
        second = Raw(port, hello=False)
        assert second.recv()[2][0] == "LIMIT"
        second.close()
        m = first.call(2, "INTERN", [[f"n{i}" for i in range(11)]])
        assert m[2][0] == "LIMIT"
        first.close()
    finally:
        p.terminate()
        p.wait(IO_TIMEOUT)
    bad = subprocess.run([sys.executable, "-m", "vtpu", "serve", "--output-limit", "lots",
                          "1m", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a size" in bad.stderr


# -- names -----------------------------------------------------------------------------------


def test_interning_is_rate_limited_per_connection():
    with ServerThread(Engine(), limits=Limits(names_per_second=10)) as st:
        a = Raw(st.port)
        m = a.call(2, "INTERN", [[f"a{i}" for i in range(11)]])
        assert m[2][0] == "LIMIT" and "10 per second" in m[2][1]
        assert a.call(3, "INTERN", [[], False])[2] == []
        assert a.call(4, "NAMES", [])[2] == []  # the refused call added nothing
        assert a.call(5, "INTERN", [[f"a{i}" for i in range(10)]])[1] == 0
        assert a.call(6, "INTERN", [[f"a{i}" for i in range(10)]])[1] == 0  # known: free
        assert a.call(7, "INTERN", [["a_new"]])[2][0] == "LIMIT"
        b = Raw(st.port)  # another connection has its own allowance
        assert b.call(2, "INTERN", [["b_name"]])[2] == [NAME_BASE_ID + 10]
        # In BATCH too.
        m = b.call(3, "BATCH", [[["INTERN", [[f"c{i}" for i in range(20)]]]]])
        assert m[2][0][0] == 1 and m[2][0][1][0] == "LIMIT"
        a.close()
        b.close()


def test_reclaim_names_over_the_wire():
    with ServerThread(Engine()) as st:
        c = RemoteEngine(port=st.port)
        ids = c.intern(["keep", "junk1", "junk2"])
        c.put(key_with_name(ids[0]), "x")
        r = Raw(st.port)
        epoch = r.call(2, "HELLO", [1, None, {}])[2]["names_epoch"]
        assert r.call(3, "RECLAIM_NAMES", [])[2] == 2
        assert r.call(4, "NAMES", [])[2] == ["keep", "", ""]
        assert r.call(5, "HELLO", [1, None, {}])[2]["names_epoch"] != epoch
        # A key with a freed id is refused, nothing stored.
        m = r.call(6, "PUT", [key_with_name(ids[1]), "stale"])
        assert m[2][0] == "COORD" and "reclaimed" in m[2][1]
        m = r.call(7, "PUT_MANY", [key_with_name(ids[0], 1) + key_with_name(ids[2]), [1, 2]])
        assert m[2][0] == "COORD"
        assert r.call(8, "GET", [key_with_name(ids[0], 1)])[2] is None
        assert c.reclaim_names() == 0
        assert c.intern(["junk1"]) == [NAME_BASE_ID + 3]  # a fresh id, not the freed one
        r.close()
        c.close()


NAME_BASE_ID = 0xF000


def key_with_name(name_id: int, i: int = 0) -> bytes:
    return _core.pack(np.array([name_id, 1, 1, 1, 1, 1, 1, 1, i], dtype=np.uint16))


def test_wire_sizes_are_the_column_formula():
    """Scrolls.wire_sizes (one C pass) against the sizing written out on the columns."""
    from vtpu.engine import _SCROLL_WIRE, _content_size

    e = Engine()
    contents = ["text", b"\x00" * 5000, np.arange(300, dtype=np.float32), {"a": [1, "bb"]},
                [b"x" * 100] * 3, 7, -70000, 2.5, True, None, "é" * 10, b""]
    e.put_many(b"".join(key(i) for i in range(len(contents))), contents)
    scrolls = e.get_many(b"".join(key(i) for i in range(len(contents))) + key(999))
    cols = scrolls.columns()
    want = []
    for i, kind in enumerate(cols.kinds):
        ln = cols.lengths[i]
        if kind in (_core.KIND_STR, _core.KIND_BYTES):
            want.append(ln + _SCROLL_WIRE + 5)
        elif kind == _core.KIND_PACKED:
            want.append(ln + _SCROLL_WIRE)
        elif kind == _core.KIND_ARRAY:
            want.append(ln - 4 + _SCROLL_WIRE + 32)
        elif kind == _core.KIND_NONE:
            want.append(_SCROLL_WIRE + 1)
        elif kind == _core.KIND_OBJECT:
            want.append(_SCROLL_WIRE + _content_size(cols.objects[cols.offsets[i]]))
        else:
            want.append(4)
    assert scrolls.wire_sizes(_SCROLL_WIRE, _content_size).tolist() == want
    assert {_core.KIND_DEAD, _core.KIND_ARRAY, _core.KIND_NONE} <= set(cols.kinds)
    assert len(e.get_many(b"").wire_sizes(_SCROLL_WIRE, _content_size)) == 0
