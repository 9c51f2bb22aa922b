"""Lock-outs: one client keeps the others from being served (descriptors, the name
table, a crashing HELLO), and configuration that exposes the server or its token.

Bars (issue 12): 2,000 idle connections at ``nofile=1024`` and a new well-behaved client
is served within 100 ms; another client's new name is accepted after a flood of names
(and after a restart); every malformed HELLO gets a typed error reply and at most a line
of log; a non-loopback bind without a token is refused; the token can be kept out of
``/proc/PID/cmdline`` and ``--token`` warns that it shows there.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import select
import socket
import time

import numpy as np

from vtpu import _core
from vtpu import protocol as P

from . import data
from .harness import (LOOPBACK, NEW_CLIENT_MS, Run, RawConn, StartFailed, TIMEOUT,
                      reply_code, wait_reply)
from .registry import attack

SERVER_NOFILE = 1024
IDLE_BATCH = 100  # asyncio's default listen backlog
LOG_BYTES_PER_ATTEMPT = 256  # "logged at most once per connection": about one short line
FLOOD_LOG_BYTES = 64 * 1024  # out-of-descriptor errors must be rate-limited


def _open_idle(port: int, n: int, seconds: float) -> tuple:
    """Open ``n`` TCP connections that never send anything.

    :returns: ``(sockets, established)``; sockets still connecting are kept open too.
    """
    socks, pending = [], {}
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((LOOPBACK, port))
        socks.append(s)
        if err in (0, errno.EINPROGRESS):
            pending[s.fileno()] = s
    established = 0
    poller = select.poll()  # select() cannot take descriptors above 1023
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            s = pending.pop(fd, None)
            poller.unregister(fd)
            if s is not None and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established += 1
    return socks, established


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _wait_fds_settle(pid: int, seconds: float, quiet: float = 1.0) -> int:
    """Wait until a process's descriptor count has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + seconds
    last, since = _fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _fd_count(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def _idle(run: Run, n: int) -> None:
    srv = run.server(nofile=SERVER_NOFILE)
    data.put_probe_key(srv)
    run.begin(srv)
    log0 = srv.log_size()
    # In batches the size of the listen backlog, each accepted before the next: a burst
    # overflows the kernel's accept queue and the overflow never reaches the server.
    socks, established = [], 0
    run.cleanups.append(lambda: [s.close() for s in socks])
    for start in range(0, n, IDLE_BATCH):
        run.alive_or_stalled()
        before = _fd_count(srv.pid)
        batch, ok = _open_idle(srv.port, min(IDLE_BATCH, n - start), 5.0)
        socks += batch
        established += ok
        deadline = time.monotonic() + 2.0
        while _fd_count(srv.pid) < min(before + ok, SERVER_NOFILE) and time.monotonic() < deadline:
            time.sleep(0.01)
    fds = _wait_fds_settle(srv.pid, 5.0, quiet=0.5)
    t0 = time.monotonic()
    what = ""
    try:
        c = RawConn(srv.port, timeout=10.0, token=srv.token)
        m = c.call("GET", [data.PROBE_KEY], timeout=max(0.1, 10.0 - (time.monotonic() - t0)))
        ok = reply_code(m) == "OK"
        what = "" if ok else f"GET: {reply_code(m)}"
        c.close()
    except (OSError, TimeoutError, ConnectionError) as exc:
        ok, what = False, f"{type(exc).__name__}: {exc}"
    secs = time.monotonic() - t0
    log_text = srv.log_text()
    emfile_lines = len(re.findall(r"Too many open files", log_text))
    log_bytes = srv.log_size() - log0
    run.end()
    for s in socks:
        s.close()
    run.outcome = (f"{established}/{n} idle connections up, server holds {fds} descriptors; "
                   f"new client "
                   + (f"served in {secs * 1000:.1f} ms" if ok else f"not served ({what}) "
                      f"after {secs:.1f} s"))
    run.note(established=established, server_fds=fds, new_client_s=round(secs, 4),
             emfile_log_lines=emfile_lines, log_bytes=log_bytes)
    run.check("new client served (within 10 s)", ok, what or "served")
    run.check(f"new client served within {NEW_CLIENT_MS:g} ms", ok and secs * 1000 <= NEW_CLIENT_MS,
              f"{secs * 1000:.1f} ms" if ok else "not served", timing=True)
    run.check("descriptor errors logged at a bounded rate", log_bytes <= FLOOD_LOG_BYTES,
              f"{log_bytes:,} B of log, {emfile_lines:,} 'Too many open files' lines")
    run.finish()


@attack("lockouts")
def idle_1100(run: Run) -> None:
    """1,100 idle TCP connections (no HELLO) to a server at nofile=1024, then a new client."""
    _idle(run, 1100)


@attack("lockouts")
def idle_2000(run: Run) -> None:
    """2,000 idle TCP connections (no HELLO) to a server at nofile=1024, then a new client."""
    _idle(run, 2000)


@attack("lockouts")
def intern_flood(run: Run) -> None:
    """One client interns all 4,096 names; then another client's new name (and after a
    restart of the durable store)."""
    d = f"{run.workdir}/data"
    srv = run.server(data=d)
    data.put_probe_key(srv)
    run.begin(srv)
    a = run.connect(srv)
    t0 = time.monotonic()
    accepted, last = 0, "OK"
    for s in range(0, 4096, 512):
        run.alive_or_stalled()
        m = a.call("INTERN", [[f"junk{i:04d}" for i in range(s, s + 512)]])
        last = reply_code(m)
        if last != "OK":
            break
        accepted += 512
    flood_s = time.monotonic() - t0
    b = RawConn(srv.port, token=srv.token)
    m = b.call("INTERN", [["late_client_name"]])
    b.close()
    first = reply_code(m)
    run.end()
    run.finish()
    srv.stop()
    srv2 = run.server(data=d)
    b2 = RawConn(srv2.port, token=srv2.token)
    m2 = b2.call("INTERN", [["late_client_name_2"]])
    b2.close()
    second = reply_code(m2)
    run.outcome = (f"flood: {accepted} names accepted in {flood_s * 1000:.0f} ms (then {last}); "
                   f"other client's new name: {first}; after restart: {second}")
    run.note(flood_accepted=accepted, flood_s=round(flood_s, 4))
    run.check("another client's new name accepted after the flood", first == "OK",
              first or "closed")
    run.check("... and after a restart", second == "OK", second or "closed")


_ODD_HELLOS = {
    "ndarray version [1]": lambda tok: [np.array([1]), tok, {}],
    "ndarray version [1, 1]": lambda tok: [np.array([1, 1]), tok, {}],
    "ndarray token": lambda tok: [1, np.array([1, 2]), {}],
    "ndarray track": lambda tok: [1, tok, {"track": np.array([True])}],
    "ndarray max_frame_size": lambda tok: [1, tok, {"max_frame_size": np.array([4096])}],
}


@attack("lockouts")
def hello_odd_types(run: Run) -> None:
    """HELLO with odd argument types (ndarray version, token, track, max_frame_size) to a
    server with a token: a typed error reply or a dropped connection, and log per attempt."""
    attempts = run.size(50, 5)
    srv = run.server(token=secrets.token_hex(16))
    data.put_probe_key(srv)
    run.begin(srv)
    outcomes, log_per = {}, {}
    for label, make in _ODD_HELLOS.items():
        log0 = srv.log_size()
        codes = []
        for _ in range(attempts):
            run.alive_or_stalled()
            c = run.connect(srv, hello=False)
            c.send(P.encode_request(c.next_id(), "HELLO", make(srv.token)))
            m, _ = wait_reply(c, 5.0)
            codes.append("no reply" if m is TIMEOUT else (reply_code(m) or "dropped"))
            c.close()
        time.sleep(0.1)  # let the server's log line of the last attempt land
        outcomes[label] = {k: codes.count(k) for k in sorted(set(codes))}
        log_per[label] = (srv.log_size() - log0) / attempts
    worst = max(log_per, key=log_per.get)
    run.end()
    typed = all(set(o) <= {"ARG", "PROTOCOL", "AUTH"} for o in outcomes.values())
    run.outcome = "; ".join(f"{k}: " + ", ".join(f"{n}x {c}" for c, n in v.items())
                            for k, v in outcomes.items())
    run.note(outcomes=outcomes, log_bytes_per_attempt=log_per)
    run.check("every odd HELLO answered with a typed error", typed, run.outcome)
    run.check(f"log <= {LOG_BYTES_PER_ATTEMPT} B per attempt",
              log_per[worst] <= LOG_BYTES_PER_ATTEMPT,
              f"{log_per[worst]:,.0f} B per attempt ({worst})")
    run.finish()


@attack("lockouts")
def fastpath_bad_utf8(run: Run) -> None:
    """A plain PUT (the compiled fast path) whose str content is invalid UTF-8; the same
    bytes through the generic path (with ``if_version``) for comparison."""
    srv = run.server()
    data.put_probe_key(srv)
    key = _core.pack(np.array([5, 5, 5, 5, 5, 5, 5, 5, 5], dtype=np.uint16))
    run.begin(srv)

    def bad_put(args: list) -> tuple:
        c = run.connect(srv)
        frame = P.encode_request(c.next_id(), "PUT", args)
        c.send(frame.replace(b"\xa4ABCD", b"\xa4\xff\xfe\xfd\xfc"))
        m, _ = wait_reply(c, 5.0)
        c.close()
        return "no reply" if m is TIMEOUT else (reply_code(m) or "dropped, no reply")

    fast = bad_put([key, "ABCD"])
    generic = bad_put([key, "ABCD", 0])
    run.end()
    probe = RawConn(srv.port, token=srv.token)
    stored = probe.call("GET", [key])
    probe.close()
    nothing = isinstance(stored, list) and stored[1] == 0 and stored[2] is None
    run.outcome = f"fast path: {fast}; generic path: {generic}"
    run.check("fast-path PUT answered PROTOCOL", fast == "PROTOCOL", fast)
    run.check("nothing stored", nothing, "absent" if nothing else f"{stored!r:.60}")
    run.finish()


@attack("lockouts", probe=False)
def unprotected_bind(run: Run) -> None:
    """``--host 0.0.0.0`` without a token: does it start? (Checked through 127.0.0.1 only.)"""
    srv = run.server(start=False, host="0.0.0.0")
    run.begin(None)
    try:
        srv.start(timeout=20)
        started = True
        ok, _, _ = srv.answers()  # loopback only, never the other addresses
        what = "started, serving without a token" + ("" if ok else " (not answering)")
        srv.stop()
    except StartFailed as exc:
        started = False
        what = f"refused (exit {exc.returncode}): {exc.stderr.strip().splitlines()[-1][:160]}"
    run.end()
    run.outcome = what
    run.check("refuses a non-loopback bind without a token", not started, what)


@attack("lockouts", probe=False)
def token_in_cmdline(run: Run) -> None:
    """The token on the command line (``--token``), in ``VTPU_TOKEN`` and in a
    ``--token-file``: is it in ``/proc/PID/cmdline``, enforced, warned about?"""
    token = secrets.token_hex(16)
    run.begin(None)
    found = {}
    for via in ("arg", "env", "file"):
        srv = run.server(start=False, token=token, token_via=via)
        try:
            srv.start(timeout=20)
        except StartFailed as exc:
            found[via] = {"started": False,
                          "error": (exc.stderr.strip().splitlines() or [""])[-1][:160]}
            continue
        with open(f"/proc/{srv.pid}/cmdline", "rb") as f:
            visible = token.encode() in f.read()
        try:
            RawConn(srv.port, token=None).close()
            enforced = False
        except ConnectionError:
            enforced = True
        good = RawConn(srv.port, token=token)
        good.close()
        time.sleep(0.2)
        warned = bool(re.search(r"token", srv.log_text(), re.I))
        found[via] = {"started": True, "in_cmdline": visible, "enforced": enforced,
                      "warned": warned}
        srv.stop()
    run.end()
    run.note(**{f"token_{k}": v for k, v in found.items()})
    arg, env, tf = found["arg"], found["env"], found["file"]
    run.outcome = "; ".join(
        f"{k}: " + (("in cmdline" if v["in_cmdline"] else "not in cmdline")
                    + (", enforced" if v["enforced"] else ", NOT enforced")
                    + (", warned" if v["warned"] else "") if v["started"]
                    else f"refused ({v['error']})")
        for k, v in (("--token", arg), ("VTPU_TOKEN", env), ("--token-file", tf)))
    run.check("--token warns that the token shows in the process list",
              arg.get("started") and arg.get("warned"),
              "warned" if arg.get("warned") else "no warning")
    run.check("VTPU_TOKEN: enforced, not in cmdline",
              env.get("started") and env.get("enforced") and not env.get("in_cmdline"),
              str(env))
    run.check("--token-file: enforced, not in cmdline",
              tf.get("started") and tf.get("enforced") and not tf.get("in_cmdline"), str(tf))
