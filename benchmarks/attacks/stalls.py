"""Stalls: one request whose work grows with the data holds the event loop, so every
other client waits; and closing the connection does not stop the work.

Bar (issue 12): while any one of these runs on 1M scrolls, the probe's GET p99 <= 5 ms
and max <= 50 ms; the request is answered (a result or a clear error) within a budget;
once its client disconnects, the server stops working on it.

Each attack sends one request on its own connection and waits up to ``WAIT`` for the
reply. If none comes, it closes the connection and measures the server's CPU for
``CPU_WINDOW`` seconds: a server that dropped the work sits nearly idle apart from the
probe's GETs (which it then answers again).
"""
from __future__ import annotations

import time

from vtpu import protocol as P

from . import data
from .harness import TIMEOUT, Run, outcome_text, wait_reply
from .registry import attack

WAIT_FULL, WAIT_QUICK = 30.0, 15.0
CPU_WINDOW = 2.0
INTERLEAVE_FLOOR_S = 0.05  # a request answered faster than this needs no interleaving
IDLE_CPU_FRACTION = 0.10  # "stopped" = at most this share of one core after the close


def _loaded(run: Run, **server_kw):
    srv = run.server(**server_kw)
    run.note(**data.load(srv, run.size(data.FULL_N, data.QUICK_N)))
    return srv


def _cpu_fraction(srv, seconds: float) -> float | None:
    c0 = srv.cpu()
    time.sleep(seconds)
    c1 = srv.cpu()
    return None if c0 is None or c1 is None else (c1 - c0) / seconds


def stall(run: Run, srv, op: str, args: list) -> None:
    """Send one ``op`` request, wait for its reply, close, and record the stall bars."""
    wait = run.size(WAIT_FULL, WAIT_QUICK)
    run.begin(srv)
    c = run.connect(srv)
    frame = P.encode_request(c.next_id(), op, args, max_frame_size=1 << 32)
    t_sent = time.monotonic()
    c.send(frame, timeout=30)
    m, secs = wait_reply(c, min(wait, run.remaining() - 15))
    t_reply = time.monotonic()
    c.close()
    cpu = None
    if m is TIMEOUT:
        cpu = _cpu_fraction(srv, CPU_WINDOW)
    run.end()
    run.outcome = outcome_text(m, secs)
    run.note(request_bytes=len(frame), reply_s=round(secs, 3),
             cpu_after_close=None if cpu is None else round(cpu, 2))
    run.check(f"answered (result or error) within {wait:g} s", m is not TIMEOUT and m is not None,
              run.outcome)
    run.finish()
    if run.probe is not None:
        # GETs sent and answered in the middle half of the request's run: none can be
        # while the loop is held; a server that interleaves answers them all along.
        q = (t_reply - t_sent) / 4
        served = run.probe.completed_between(t_sent + q, t_reply - q)
        run.note(probe_served_during=served)
        run.check("other clients served while it runs", served > 0 or secs < INTERLEAVE_FLOOR_S,
                  f"{served} probe GETs answered in the middle half of its {secs:.2f} s")


@attack("stalls")
def kg_wild_2hops(run: Run) -> None:
    """KG from every scroll with a wildcard delta, 2 hops, default max_frontier (123 B)."""
    stall(run, _loaded(run), "KG", [data.ALL, data.WILD_DELTA, 2])


@attack("stalls")
def kg_wild_3hops(run: Run) -> None:
    """KG from every scroll with a wildcard delta, 3 hops, default max_frontier."""
    stall(run, _loaded(run), "KG", [data.ALL, data.WILD_DELTA, 3])


@attack("stalls")
def export_all(run: Run) -> None:
    """EXPORT_PHEXT of everything (the vectors skipped)."""
    stall(run, _loaded(run), "EXPORT_PHEXT", [None, True])


@attack("stalls")
def attend_huge_top_k(run: Run) -> None:
    """ATTEND of one key over every scroll with top_k = 2**31."""
    stall(run, _loaded(run), "ATTEND", [data.FIRST_TEXT_KEY, data.ALL, 2**31])


@attack("stalls")
def attend_many_weights(run: Run) -> None:
    """ATTEND_MANY: 64 vector queries over every vector scroll, weights returned."""
    q = data.vectors(64, seed=5)
    stall(run, _loaded(run), "ATTEND_MANY", [q, data.VECTORS * 64, None, None, True])


@attack("stalls")
def cdel_all_memory(run: Run) -> None:
    """CDEL of ``*.*.*/*.*.*/*.*.*`` in memory."""
    stall(run, _loaded(run), "DEL_RANGE", [data.ALL])


@attack("stalls")
def cdel_all_durable(run: Run) -> None:
    """CDEL of ``*.*.*/*.*.*/*.*.*`` on a durable store (--data, fsync everysec)."""
    srv = _loaded(run, data=f"{run.workdir}/data", fsync="everysec")
    stall(run, srv, "DEL_RANGE", [data.ALL])


@attack("stalls")
def batch_count(run: Run) -> None:
    """BATCH of 100k COUNT of every scroll."""
    ops = run.size(100_000, 2000)
    stall(run, _loaded(run), "BATCH", [[["COUNT", [data.ALL]]] * ops])


@attack("stalls")
def batch_1m_ops(run: Run) -> None:
    """BATCH of 1M operations (10x max_batch): must be refused, and quickly."""
    ops = run.size(1_000_000, 200_000)
    stall(run, _loaded(run), "BATCH", [[["PING", []]] * ops])


@attack("stalls")
def range_page(run: Run) -> None:
    """One RANGE page (page_size scrolls) of every scroll."""
    stall(run, _loaded(run), "RANGE", [data.ALL])


@attack("stalls")
def nearest_huge_k(run: Run) -> None:
    """NEAREST of one key with k = 2**31."""
    stall(run, _loaded(run), "NEAREST", [data.FIRST_TEXT_KEY, 2**31])


@attack("stalls", probe=False)
def disconnect_stops_work(run: Run) -> None:
    """Send a long request, disconnect after a moment: does the server stop working?

    Full: the 2-hop wildcard KG on 1M scrolls. Quick: a BATCH of 10,000 COUNTs (the
    server's max_batch) of the 20k data set (about 3.5 s of work for the server before
    issue 12). No probe, so the CPU measured after the close is the abandoned request's
    alone.
    """
    srv = _loaded(run)
    if run.quick:
        op, args, after = "BATCH", [[["COUNT", [data.ALL]]] * 10_000], 0.5
    else:
        op, args, after = "KG", [data.ALL, data.WILD_DELTA, 2], 1.0
    run.begin(srv)
    c = run.connect(srv)
    c.request(op, args)
    m, secs = wait_reply(c, after)
    c.close()
    if m is not TIMEOUT:
        run.end()
        run.outcome = f"finished before the disconnect ({outcome_text(m, secs)})"
        run.check("work stops when its client disconnects", True, "nothing left to stop")
        run.finish()
        return
    cpu = _cpu_fraction(srv, 3.0)
    t_closed = time.monotonic()
    ok, secs_alive, what = srv.answers(min(30.0, run.remaining() - 10))
    run.end()
    run.outcome = (f"closed after {after:g} s; then {100 * (cpu or 0):.0f}% CPU for 3 s; "
                   f"fresh client {'served' if ok else 'not served'} "
                   f"{time.monotonic() - t_closed:.1f} s after")
    run.note(cpu_after_close=cpu, served_after_s=round(secs_alive, 2) if ok else None)
    run.check("work stops when its client disconnects",
              cpu is not None and cpu <= IDLE_CPU_FRACTION,
              f"{100 * (cpu or 0):.0f}% of a core over 3 s after the close")
    run.finish(memory=True)
