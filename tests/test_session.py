"""The client session without any socket: requests are read back with the reference
codec, replies are bytes the reference codec produced (as a server would send them).

Covers reply matching (in order, out of order, unknown ids, msgid-0 errors), pushes
between replies, RANGE continuation, BATCH, pipelines' error collection, name learning,
the receive buffer, and the retry policy's decisions.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from vtpu import errors as E
from vtpu import protocol as P
from vtpu.coords import NameTable, Scroll
from vtpu.retry import ConstantBackoff, ExponentialWithJitterBackoff, NoBackoff, Retry
from vtpu.session import ClientOps, Session, finish, reply_value

KEYS = [bytes([0, 7, 0, 0, 0, i]) + bytes(12) for i in range(1, 41)]
ALL = np.array([[0] * 9, [0xFFFF] * 9], np.uint16)


def scroll_wire(k, content="v", version=1):
    return [k, content, version, 1.5, 2.5]


def requests(session):
    """Decode what the session queued for the transport into (msgid, op, args)."""
    d = P.FrameDecoder()
    d.feed(session.data_to_send())
    return [P.parse_request(m) for m in d]


def reply(msgid, value):
    return P.encode_response(msgid, value)


class Queue(ClientOps):
    """ClientOps whose calls become exchange entries (the pipelines' shape)."""

    def __init__(self):
        self.entries = []

    def _submit(self, op, args, decode, timeout):
        self.entries.append((op, args, decode))


def entries(build):
    q = Queue()
    build(q)
    return q.entries


# -- one call outside any exchange ---------------------------------------------------------------


def test_get_roundtrip_fed_a_byte_at_a_time():
    s = Session()
    m, frame = s.encode_get(KEYS[0])
    assert P.parse_request(P.unpackb(frame[4:])) == (m, "GET", [KEYS[0]])
    data = reply(m, scroll_wire(KEYS[0], "hello", 3))
    for b in data[:-1]:
        s.feed(bytes([b]))
        assert s.read_get_reply(m) is None
    s.feed(data[-1:])
    got = reply_value(s.read_get_reply(m))
    assert isinstance(got, Scroll) and (got.key, got.content, got.version) == (KEYS[0], "hello", 3)
    assert s.buffered() == 0


def test_error_reply_and_missing_scroll():
    s = Session()
    m, _ = s.encode_get(KEYS[0])
    s.feed(reply(m, None))
    assert s.read_get_reply(m) == (True, None)
    m, _ = s.encode_put([KEYS[0], "x", 4])
    s.feed(P.encode_error(m, "CONFLICT", "PUT: version conflict"))
    ok, value = s.read_reply(m)
    assert not ok and value == ("CONFLICT", "PUT: version conflict")
    with pytest.raises(E.VersionConflict):
        reply_value((ok, value))
    # A GET's error reply, and a scroll in another valid encoding (a msgpack array16
    # header), which the generic reader decodes.
    m, _ = s.encode_get(KEYS[0])
    s.feed(P.encode_error(m, "ARG", "GET: bad key"))
    assert s.read_get_reply(m) == (False, ("ARG", "GET: bad key"))
    m, _ = s.encode_get(KEYS[0])
    body = bytes([0x93, m, 0x00, 0xDC, 0, 5]) + P.packb(KEYS[0]) + P.packb("y") \
        + P.packb(7) + P.packb(1.5) + P.packb(2.5)
    s.feed(len(body).to_bytes(4, "big") + body)
    got = reply_value(s.read_get_reply(m))
    assert (got.key, got.content, got.version, got.updated_at) == (KEYS[0], "y", 7, 2.5)
    assert s.buffered() == 0


def test_get_reply_after_a_push_and_with_a_wrong_msgid():
    pushes = []
    s = Session(on_push=lambda kind, payload: pushes.append((kind, payload)))
    m, _ = s.encode_get(KEYS[0])
    s.feed(P.encode_push("invalidate", KEYS[1]) + reply(m, scroll_wire(KEYS[0], "z", 2)))
    got = reply_value(s.read_get_reply(m))
    assert pushes == [("invalidate", KEYS[1])] and (got.content, got.version) == ("z", 2)
    m, _ = s.encode_get(KEYS[0])
    s.feed(reply(m + 5, None))
    with pytest.raises(E.ProtocolError):
        s.read_get_reply(m)


def test_msgids_wrap_to_one_and_never_wrap_inside_a_write():
    s = Session()
    s.msgid = 0xFFFFFFFF
    assert s.encode_get(KEYS[0])[0] == 1
    s.msgid = 0xFFFFFFFE
    ex = s.exchange(entries(lambda q: [q.get(k) for k in KEYS[:3]]))
    assert [m for m, _, _ in requests(s)] == [1, 2, 3] and ex.first == 1 and s.msgid == 3


def test_a_request_over_the_frame_limit_is_refused_locally():
    s = Session(max_frame_size=1024)
    with pytest.raises(E.LimitError):
        s.encode_put([KEYS[0], b"x" * 2000])
    with pytest.raises(E.LimitError):
        s.exchange(entries(lambda q: q.put(KEYS[0], b"x" * 2000)))
    assert s.data_to_send() == b""


# -- exchanges: matching ---------------------------------------------------------------------------


def test_pipeline_results_with_pushes_between():
    pushes = []
    s = Session(on_push=lambda kind, payload: pushes.append((kind, payload)))
    ex = s.exchange(entries(lambda q: [q.get(k) for k in KEYS]), gets_only=True)
    reqs = requests(s)
    assert [op for _, op, _ in reqs] == ["GET"] * 40 and [a[0] for _, _, a in reqs] == KEYS
    data = b""
    for i, (m, _, a) in enumerate(reqs):
        data += reply(m, None if i % 7 == 3 else scroll_wire(a[0], f"c{i}"))
        if i in (5, 30):
            data += P.encode_push("invalidate", a[0])
    s.feed(data[:500])
    assert s.receive() == [] and not ex.done
    s.feed(data[500:])
    assert s.receive() == [ex] and ex.done
    assert [None if r is None else r.content for r in ex.results] == [
        None if i % 7 == 3 else f"c{i}" for i in range(40)]
    assert pushes == [("invalidate", KEYS[5]), ("invalidate", KEYS[30])]


def test_a_failing_push_callback_is_logged_and_reading_goes_on(caplog):
    def bad(kind, payload):
        raise RuntimeError("callback bug")

    s = Session(on_push=bad)
    ex = s.exchange(entries(lambda q: (q.count(ALL), q.ping())))
    (m1, _, _), (m2, _, _) = requests(s)
    with caplog.at_level(logging.ERROR, logger="vtpu.client"):
        s.feed(reply(m1, 5) + P.encode_push("invalidate", None) + reply(m2, "PONG"))
        assert s.receive() == [ex]
    assert ex.results == [5, "PONG"]
    assert "on_push callback failed" in caplog.text and "callback bug" in caplog.text


def test_out_of_order_replies_are_matched_by_msgid():
    s = Session()
    ex = s.exchange(entries(lambda q: (q.count(ALL), q.ping(), q.health())))
    (m1, _, _), (m2, _, _), (m3, _, _) = requests(s)
    s.feed(reply(m3, {"status": "ok"}) + reply(m1, 7))
    assert s.receive() == [] and ex.results[0] == 7 and not ex.done
    s.feed(reply(m2, "PONG"))
    assert s.receive() == [ex]
    assert ex.results == [7, "PONG", {"status": "ok"}]


def test_replies_to_a_later_exchange_first():
    s = Session()
    a = s.exchange(entries(lambda q: q.count(ALL)))
    b = s.exchange(entries(lambda q: q.ping()))
    (ma, _, _), (mb, _, _) = requests(s)
    s.feed(reply(mb, "PONG"))
    assert s.receive() == [b] and not a.done
    s.feed(reply(ma, 3))
    assert s.receive() == [a] and a.value() == 3 and b.value() == "PONG"


def test_a_reply_nobody_waits_for_is_a_protocol_error():
    s = Session()
    s.exchange(entries(lambda q: q.ping()))
    (m, _, _), = requests(s)
    s.feed(reply(m + 5, "PONG"))
    with pytest.raises(E.ProtocolError, match="matches no request"):
        s.receive()
    s = Session()
    m, _ = s.encode_get(KEYS[0])
    s.feed(reply(m + 1, None))
    with pytest.raises(E.ProtocolError):
        s.read_reply(m)


def test_msgid_zero_error_is_raised_and_fails_every_pending_exchange():
    s = Session()
    a = s.exchange(entries(lambda q: (q.ping(), q.range(ALL))))
    b = s.exchange(entries(lambda q: q.get(KEYS[0])))
    (m1, _, _), _, _ = requests(s)
    s.feed(reply(m1, "PONG") + P.encode_error(0, "PROTOCOL", "frame with an empty body"))
    with pytest.raises(E.ProtocolError, match="empty body"):
        s.receive()
    exc = E.ProtocolError("frame with an empty body")
    assert s.fail(exc) == [a, b]
    assert a.done and b.done and a.error is exc and b.error is exc
    assert a.results == ["PONG", exc] and b.results == [exc]


def test_malformed_frames_poison_the_stream():
    s = Session()
    s.exchange(entries(lambda q: q.ping()))
    s.feed(b"\x00\x00\x00\x00")
    with pytest.raises(E.ProtocolError):
        s.receive()
    s = Session(max_frame_size=1024)
    s.feed((5000).to_bytes(4, "big"))
    with pytest.raises(E.ProtocolError):
        s.receive()


def test_reset_fails_pending_exchanges_and_drops_bytes():
    s = Session()
    ex = s.exchange(entries(lambda q: q.ping()))
    s.feed(b"\x00\x00")
    assert s.reset() == [ex] and isinstance(ex.error, E.ConnectionError)
    assert s.buffered() == 0 and s.data_to_send() == b""


def test_a_reply_larger_than_the_receive_buffer():
    s = Session()
    big = "x" * 300_000
    m, _ = s.encode_get(KEYS[0])
    data = reply(m, scroll_wire(KEYS[0], big))
    for i in range(0, len(data), 65536):
        assert s.read_get_reply(m) is None
        s.feed(data[i:i + 65536])
    assert reply_value(s.read_get_reply(m)).content == big


def test_many_replies_fed_at_once_and_in_odd_pieces():
    s = Session()
    ex = s.exchange(entries(lambda q: [q.get(k) for k in KEYS * 50]))
    data = b"".join(reply(m, scroll_wire(a[0], "y" * 200)) for m, _, a in requests(s))
    assert len(data) > 4 * 65536
    s.feed(data[:3])  # not even a length yet
    assert s.receive() == []
    s.feed(data[3:])  # more than the buffer holds, nothing read in between
    assert s.receive() == [ex] and len(ex.results) == 2000
    assert all(r.content == "y" * 200 for r in ex.results) and s.buffered() == 0
    # a partial frame left at the end of a full buffer is moved to the front
    s = Session()
    ex = s.exchange(entries(lambda q: [q.get(k) for k in KEYS * 2]))
    data = b"".join(reply(m, scroll_wire(a[0], "z" * 1000)) for m, _, a in requests(s))
    view = s.get_buffer()
    cut = len(view)
    assert len(data) > cut
    view[:] = data[:cut]
    s.buffer_updated(cut)
    assert s.receive() == [] and 0 < s.buffered() < 1100
    s.feed(data[cut:])
    assert s.receive() == [ex] and [r.content for r in ex.results] == ["z" * 1000] * 80


# -- results: errors kept as values, pipelines, BATCH ----------------------------------------------


def test_pipeline_errors_are_values_and_raised_after_everything():
    s = Session()

    def build(q):
        q.get(KEYS[0])
        q.put(KEYS[1], "b", if_version=5)
        q.get(KEYS[1])
        q.count(ALL)

    ex = s.exchange(entries(build))
    reqs = requests(s)
    assert [op for _, op, _ in reqs] == ["GET", "PUT", "GET", "COUNT"]
    s.feed(reply(reqs[0][0], scroll_wire(KEYS[0], "a")) +
           P.encode_error(reqs[1][0], "CONFLICT", "PUT: expected 5, found 0") +
           reply(reqs[2][0], None) + reply(reqs[3][0], 1))
    assert s.receive() == [ex]
    r = ex.results
    assert r[0].content == "a" and isinstance(r[1], E.VersionConflict) and r[2] is None
    assert r[3] == 1
    assert finish(r, False) is r
    with pytest.raises(E.VersionConflict, match="expected 5"):
        finish(r, True)


def test_a_malformed_result_fails_only_its_call():
    s = Session()
    ex = s.exchange(entries(lambda q: (q.get(KEYS[0]), q.get_many(b"".join(KEYS[:2]), True),
                                       q.ping())))
    (m1, _, _), (m2, _, _), (m3, _, _) = requests(s)
    s.feed(reply(m1, ["not", "a", "scroll"]) + reply(m2, ["only one"]) + reply(m3, "PONG"))
    assert s.receive() == [ex]
    assert isinstance(ex.results[0], E.ProtocolError)
    assert isinstance(ex.results[1], E.ProtocolError) and "expected 2 values" in str(ex.results[1])
    assert ex.results[2] == "PONG"


@pytest.mark.parametrize("bad", [
    scroll_wire(KEYS[0], version=2 ** 63), scroll_wire(KEYS[0], version=2 ** 64 - 1),
    [KEYS[0], "v", "1", 1.5, 2.5], [KEYS[0], "v", 1, "t", 2.5], [b"short", "v", 1, 1.5, 2.5]])
def test_a_scroll_out_of_range_is_a_protocol_error(bad):
    """A GET reply whose scroll has a field of the wrong type or out of its range (a
    version above int64) is a ProtocolError, in a single call and in a pipeline, and the
    stream goes on: nothing else (OverflowError, TypeError) reaches the caller."""
    s = Session()
    m, _ = s.encode_get(KEYS[0])
    s.feed(reply(m, bad))
    with pytest.raises(E.ProtocolError, match="malformed scroll"):
        reply_value(s.read_get_reply(m))
    ex = s.exchange(entries(lambda q: (q.get(KEYS[0]), q.ping())))
    (m1, _, _), (m2, _, _) = requests(s)
    s.feed(reply(m1, bad) + reply(m2, "PONG"))
    assert s.receive() == [ex]
    assert isinstance(ex.results[0], E.ProtocolError) and ex.results[1] == "PONG"


def test_batch_exchange():
    s = Session()
    ex = s.exchange(entries(lambda q: (q.put(KEYS[0], "x"), q.get(KEYS[0]),
                                       q.put(KEYS[0], "y", if_version=9), q.count(ALL))),
                    batch=True)
    (m, op, args), = requests(s)
    assert op == "BATCH" and [item[0] for item in args[0]] == ["PUT", "GET", "PUT", "COUNT"]
    s.feed(reply(m, [[0, 1], [0, scroll_wire(KEYS[0], "x")], [1, ["CONFLICT", "no"]], [0, 1]]))
    assert s.receive() == [ex]
    r = ex.results
    assert r[0] == 1 and r[1].content == "x" and isinstance(r[2], E.VersionConflict) and r[3] == 1
    # a refused BATCH frame fails every call in it
    ex = s.exchange(entries(lambda q: (q.ping(), q.ping())), batch=True)
    (m, _, _), = requests(s)
    s.feed(P.encode_error(m, "LIMIT", "too many"))
    assert s.receive() == [ex] and all(isinstance(x, E.LimitError) for x in ex.results)


def test_get_many_full_reply_is_read_by_the_column_reader():
    s = Session()
    blob = b"".join(KEYS[:3])
    ex = s.exchange(entries(lambda q: q.get_many(blob)))
    (m, op, args), = requests(s)
    assert (op, args) == ("GET_MANY", [blob])
    rows = [Scroll(KEYS[0], "a", 1, 1.0, 2.0), None, Scroll(KEYS[2], b"c", 4, 1.0, 2.0)]
    s.feed(reply(m, P.scrolls_to_wire(rows)))
    assert s.receive() == [ex]
    got = ex.value()
    assert len(got) == 3 and got[1] is None
    assert (got[0].content, got[2].content, got[2].version) == ("a", b"c", 4)


# -- RANGE continuation -----------------------------------------------------------------------------


def page(keys, after):
    return [P.scrolls_to_wire([Scroll(k, k.hex(), 1, 1.0, 1.0) for k in keys]), after]


def test_range_pages_are_followed_by_the_session():
    s = Session()
    ex = s.exchange(entries(lambda q: q.range(ALL)))
    (m1, _, args1), = requests(s)
    assert args1[1:] == [None, None, False]
    s.feed(reply(m1, page(KEYS[:10], KEYS[9])))
    assert s.receive() == [] and not ex.done
    (m2, op, args2), = requests(s)  # the session asked for the next page itself
    assert op == "RANGE" and args2[2] == KEYS[9] and args2[1] is None and m2 != m1
    s.feed(reply(m2, page(KEYS[10:25], KEYS[24])))
    assert s.receive() == []
    (m3, _, args3), = requests(s)
    assert args3[2] == KEYS[24]
    s.feed(reply(m3, page(KEYS[25:30], None)))
    assert s.receive() == [ex]
    assert [x.key for x in ex.value()] == KEYS[:30]


def test_range_continuation_respects_the_limit_and_keys_only():
    s = Session()
    ex = s.exchange(entries(lambda q: (q.range(ALL, limit=12, keys_only=True), q.ping())))
    (m1, _, _), (m2, _, _) = requests(s)
    coords = P.unpack_coords(b"".join(KEYS[:12]))
    s.feed(reply(m1, [P.pack_coords(coords[:8]), KEYS[7]]) + reply(m2, "PONG"))
    assert s.receive() == []
    (m3, _, args), = requests(s)
    assert args[1] == 4 and args[2] == KEYS[7] and args[3] is True
    s.feed(reply(m3, [P.pack_coords(coords[8:12]), KEYS[11]]))  # "more" but limit reached
    assert s.receive() == [ex] and s.data_to_send() == b""
    assert np.array_equal(ex.results[0], coords) and ex.results[1] == "PONG"


def test_an_error_on_a_later_page_fails_the_call():
    s = Session()
    ex = s.exchange(entries(lambda q: q.range(ALL)))
    (m1, _, _), = requests(s)
    s.feed(reply(m1, page(KEYS[:3], KEYS[2])))
    s.receive()
    (m2, _, _), = requests(s)
    s.feed(P.encode_error(m2, "LIMIT", "RANGE: too large"))
    assert s.receive() == [ex] and isinstance(ex.results[0], E.LimitError)


def test_an_abandoned_exchange_is_read_and_dropped_without_more_pages():
    s = Session()
    ex = s.exchange(entries(lambda q: q.range(ALL)))
    later = s.exchange(entries(lambda q: q.ping()))
    (m1, _, _), (m2, _, _) = requests(s)
    s.abandon(ex)
    s.feed(reply(m1, page(KEYS[:3], KEYS[2])) + reply(m2, "PONG"))
    assert s.receive() == [ex, later]
    assert s.data_to_send() == b"" and later.value() == "PONG"


# -- names and HELLO ---------------------------------------------------------------------------------


def test_handshake_loads_the_name_table_and_intern_learns_names():
    s = Session(NameTable())
    ex = s.handshake("tok", track=True)
    (m1, op1, a1), (m2, op2, _) = requests(s)
    assert (op1, op2) == ("HELLO", "NAMES")
    assert a1 == [P.PROTOCOL_VERSION, "tok", {"max_frame_size": s.max_frame_size, "track": True}]
    s.feed(reply(m1, {"server": "vtpu"}) + reply(m2, ["query", "key"]))
    assert s.receive() == [ex] and ex.results[0] == {"server": "vtpu"}
    assert s.names.to_list() == ["query", "key"]
    ex = s.exchange(entries(lambda q: q.intern(["key", "person"])))
    (m, _, args), = requests(s)
    assert args == [["key", "person"]]
    s.feed(reply(m, [0xF001, 0xF002]))
    s.receive()
    assert ex.value() == [0xF001, 0xF002] and s.names.lookup("person", False) == 0xF002


def test_a_refused_hello_is_a_connection_level_error():
    s = Session()
    ex = s.handshake(None, False)
    (m1, _, _), _ = requests(s)
    s.feed(P.encode_error(m1, "AUTH", "HELLO: missing or wrong token"))
    with pytest.raises(E.AuthError):
        s.receive()
    assert s.fail(E.AuthError("x")) == [ex]


# -- the retry policy ---------------------------------------------------------------------------------


def test_retry_decisions():
    r = Retry(ConstantBackoff(0.25), retries=2)
    conn = E.ConnectionError("reset")
    assert r.delay(conn, 0, True) == 0.25 and r.delay(conn, 1, True) == 0.25
    assert r.delay(conn, 2, True) is None              # retries used up
    assert r.delay(conn, 0, False) is None             # not idempotent: never twice
    assert r.delay(E.TimeoutError("slow"), 0, True) is None  # may still be running
    assert r.delay(E.VersionConflict("no"), 0, True) is None
    assert Retry(NoBackoff(), retries=0).delay(conn, 0, True) is None
    timeouts = Retry(NoBackoff(), 3, supported_errors=(E.ConnectionError, E.TimeoutError))
    assert timeouts.delay(E.TimeoutError("slow"), 2, True) == 0.0
    with pytest.raises(E.InterfaceError):
        Retry(retries=-1)


def test_exponential_backoff_with_jitter_stays_within_its_bounds():
    b = ExponentialWithJitterBackoff(base=0.1, cap=0.5)
    for failures, bound in ((0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)):
        draws = [b.compute(failures) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) > bound / 2  # jittered over the range, not a constant
    assert isinstance(Retry().backoff, ExponentialWithJitterBackoff)
