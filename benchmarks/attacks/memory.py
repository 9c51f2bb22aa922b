"""Memory amplification: small requests (or slow readers) that make the server allocate
far more than the attacker sent or read.

Bar (issue 12): RSS growth <= 2x the bytes the attacker sent or read + a fixed
allowance, and under the 2 GiB address-space limit the process never dies.
"""
from __future__ import annotations

import secrets
import select
import time

import numpy as np

from vtpu import _core
from vtpu import protocol as P
from vtpu.netclient import RemoteEngine
from vtpu.server import Limits

from . import data
from .harness import (MiB, Run, RawConn, TIMEOUT, outcome_text, reply_code, settle,
                      wait_reply)
from .registry import attack

BIG_KEY = _core.pack(np.array([7, 7, 7, 7, 7, 7, 7, 7, 7], dtype=np.uint16))
SLOW_READER_RCVBUF = 64 * 1024  # a client that never reads: keep the kernel's share small


def _put_big_value(server, size: int = MiB) -> None:
    """Store ``size`` bytes at BIG_KEY, and the probe's key."""
    c = RemoteEngine(port=server.port, token=server.token, timeout=60)
    try:
        c.put(BIG_KEY, b"\xab" * size)
        c.put(data.PROBE_KEY, "probe")
    finally:
        c.close()


def _reply_check(run: Run, m, seconds: float, codes=("LIMIT",)) -> None:
    code = reply_code(m) if m is not TIMEOUT else None
    run.outcome = outcome_text(m, seconds)
    run.check(f"refused with {'/'.join(codes)}", code in codes, run.outcome)


@attack("control")
def baseline(run: Run) -> None:
    """No attack: the probe alone for 2 s (the noise floor of its latencies here)."""
    srv = run.server()
    data.put_probe_key(srv)
    run.begin(srv)
    time.sleep(run.size(2.0, 0.5))
    run.end()
    run.outcome = "idle server, probe only"
    run.finish()


@attack("memory")
def hello_bomb(run: Run) -> None:
    """48 MiB frame of empty maps sent before HELLO to a server with a token."""
    size = run.size(48 * MiB, 2 * MiB)
    srv = run.server(token=secrets.token_hex(16))
    data.put_probe_key(srv)
    run.begin(srv)
    c = run.connect(srv, hello=False)
    n = size - 5
    body = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    c.send(len(body).to_bytes(4, "big") + body, timeout=min(30.0, run.remaining() - 15))
    m, secs = wait_reply(c, min(30.0, run.remaining() - 12))
    run.end()
    run.note(frame_bytes=len(body) + 4)
    _reply_check(run, m, secs, ("AUTH", "PROTOCOL", "LIMIT"))
    run.finish()


@attack("memory")
def get_pipeline_unread(run: Run) -> None:
    """1,500 pipelined GETs of a 1 MiB value on a socket that never reads."""
    count = run.size(1500, 300)
    srv = run.server()
    _put_big_value(srv)
    run.begin(srv)
    c = run.connect(srv, rcvbuf=SLOW_READER_RCVBUF)
    frames = b"".join(P.encode_request(i + 1, "GET", [BIG_KEY]) for i in range(count))
    sent = c.send(frames, timeout=10)
    settle(run, srv, run.size(8.0, 3.0))
    run.end()
    run.outcome = f"{count} GETs ({sent:,} B) sent, never read"
    run.note(requests=count, request_bytes=len(frames))
    run.finish()


@attack("memory")
def get_many_same_key(run: Run) -> None:
    """GET_MANY of the same 1 MiB key 1,000 times (an 18 KB request)."""
    count = run.size(1000, 100)
    srv = run.server()
    _put_big_value(srv)
    run.begin(srv)
    c = run.connect(srv)
    c.request("GET_MANY", [BIG_KEY * count])
    m, secs = wait_reply(c, min(30.0, run.remaining() - 12))
    run.end()
    _reply_check(run, m, secs)
    run.finish()


@attack("memory")
def batch_range(run: Run) -> None:
    """BATCH of 300 RANGE over the whole data set (a 13.8 KB request).

    Each RANGE answers one page (at most ``page_size`` scrolls), so the full version's
    reply (~20 MB) fits the default frame limit and an ``OK`` is a right answer; the
    quick version (200 RANGEs of 20k scrolls, pages totalling ~12 MB) announces an
    8 MiB receive limit in its HELLO, so its reply cannot fit and must be refused.
    Either way the server must not hold more than the reply it may send.
    """
    ops, limit = run.size((300, None), (200, 8 * MiB))
    srv = run.server()
    run.note(**data.load(srv, run.size(data.FULL_N, data.QUICK_N)))
    run.begin(srv)
    c = run.connect(srv, options={"max_frame_size": limit} if limit else None)
    c.request("BATCH", [[["RANGE", [data.ALL]]] * ops])
    m, secs = wait_reply(c, min(30.0, run.remaining() - 12))
    run.end()
    _reply_check(run, m, secs, ("LIMIT",) if limit else ("OK", "LIMIT"))
    run.finish()


def _fill_name_table(server) -> int:
    c = RemoteEngine(port=server.port, token=server.token, timeout=60)
    try:
        names = [f"n{i:04d}_" + "x" * 58 for i in range(4096)]  # 64 characters each
        for s in range(0, len(names), 512):
            c.intern(names[s:s + 512])
        c.put(data.PROBE_KEY, "probe")
        return len(c.name_table())
    finally:
        c.close()


@attack("memory")
def batch_names(run: Run) -> None:
    """BATCH of 100k NAMES with a full name table (4,096 names of 64 characters)."""
    ops = run.size(100_000, 300)
    # Set-up fills the table from one connection at once: allow it (the attack is the
    # BATCH, not the interning).
    srv = run.server(extra=["--names-per-second", "4096"])
    run.note(names=_fill_name_table(srv))
    run.begin(srv)
    c = run.connect(srv)
    c.request("BATCH", [[["NAMES", []]] * ops])
    m, secs = wait_reply(c, min(30.0, run.remaining() - 12))
    run.end()
    _reply_check(run, m, secs)
    run.finish()


@attack("memory")
def track_unread(run: Run) -> None:
    """A ``track`` connection that never reads while another client does 200 PUT_MANYs of
    50k keys (the same keys each time, so the stored data does not grow)."""
    rounds, keys = run.size((200, 50_000), (80, 25_000))
    srv = run.server()
    data.put_probe_key(srv)
    blob = _core.pack_many(data.parts(4 * keys)[0][:keys])
    contents = [0] * keys
    # The writer is a well-behaved client: its bytes are reported, not charged to the
    # tracker, whose own traffic is a HELLO.
    w = RawConn(srv.port, timeout=60)
    w.call("PUT_MANY", [blob, contents])
    run.begin(srv)
    tracker = run.connect(srv, options={"track": True}, rcvbuf=SLOW_READER_RCVBUF)
    done = 0
    for _ in range(rounds):
        run.alive_or_stalled()
        m = w.call("PUT_MANY", [blob, contents], timeout=min(60.0, run.remaining()))
        if reply_code(m) != "OK":
            break
        done += 1
    settle(run, srv, run.size(5.0, 2.0))
    run.end()
    run.outcome = f"{done} PUT_MANYs of {keys:,} keys answered; tracker read {tracker.read:,} B"
    run.note(writer_sent=w.sent, pushed_keys_bytes=done * len(blob))
    run.check("writer served throughout", done == rounds, f"{done}/{rounds}")
    w.close()
    run.finish()


@attack("memory")
def partial_frames(run: Run) -> None:
    """16 connections each holding 60 MiB of an unfinished frame (after HELLO).

    The server buffers at most its input limit of such frames at once (``--input-limit``,
    256 MiB): a connection whose frame does not fit is not read, so its send stops short
    (each is given 2 s). Every connection the server let its frame in must be closed
    within the hold, and the memory must be back once the hold ends."""
    n, per, hold = run.size((16, 60 * MiB, 20.0), (4, 8 * MiB, 10.0))
    srv = run.server()
    data.put_probe_key(srv)
    run.begin(srv)
    conns = []
    header = (64 * MiB).to_bytes(4, "big")  # the largest frame the server accepts
    chunk = b"\x00" * per
    let_in = 0
    for _ in range(n):
        run.alive_or_stalled()
        c = run.connect(srv)
        let_in += c.send(header + chunk, timeout=2.0) == len(header) + per
        conns.append(c)
    settle(run, srv, 3.0)
    held = srv.status().get("VmRSS", 0) - (run.rss_before or 0)
    # Hold: does the server drop frames that never complete (and free them)?
    deadline = time.monotonic() + min(hold, run.remaining() - 15)
    closed = 0
    while time.monotonic() < deadline and closed < n:
        r, _, _ = select.select([c.s for c in conns if not c.closed], [], [], 0.2)
        for c in conns:
            if c.s in r:
                try:
                    got = c.s.recv(65536)
                except OSError:
                    got = b""
                c.read += len(got)
                if not got:
                    c.closed = True
        closed = sum(c.closed for c in conns)
    time.sleep(0.5)
    after_hold = srv.status().get("VmRSS", 0) - (run.rss_before or 0)
    run.end()
    run.outcome = (f"{n} x {per // MiB} MiB unfinished, {let_in} let in whole; server closed "
                   f"{closed} in {hold:g} s; +{held / MiB:.0f} MiB held, "
                   f"+{after_hold / MiB:.0f} MiB at the end")
    run.note(held_bytes=held, after_hold_bytes=after_hold, closed_by_server=closed,
             let_in=let_in)
    limit = Limits().input_total   # the server runs with the default
    run.check("unfinished frames held <= the input limit + allowance",
              held <= limit + run.allowance, f"+{held / MiB:.0f} MiB")
    run.check(f"unfinished frames let in dropped within {hold:g} s", closed >= let_in > 0,
              f"{closed} closed, {let_in} let in")
    run.check("their memory released", after_hold <= run.allowance,
              f"+{after_hold / MiB:.1f} MiB after the hold")
    run.finish()
