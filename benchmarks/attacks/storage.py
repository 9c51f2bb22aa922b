"""Storage: damage to the data directory, a full disk, two servers on one directory.

Bars (issue 12): after ``kill -9``, a deleted or corrupted WAL and bit flips in the
database make start-up refuse with a ``StorageError`` (0 silent losses, never a wrong
value); on a full disk writers get ``STORAGE`` error replies, no unacknowledged write is
visible, and writes work again by themselves once space is freed; a second server on a
directory in use is refused even when the ``LOCK`` file was deleted.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import Counter

import numpy as np

from vtpu import _core
from vtpu.errors import VTPUError
from vtpu.netclient import RemoteEngine

from . import data
from .harness import MiB, Run, RawConn, StartFailed, reply_code
from .registry import attack

DB = "vtpu.sqlite3"
WAL = DB + "-wal"
PUT_BATCH = 100  # keys per acknowledged PUT_MANY


def _keys(n: int, first: int = 3) -> np.ndarray:
    """Keys of the writes: component 0 = ``first``, the index's digits in 1-6."""
    arr = data.digit_coords(n, (1, 1, 1))
    arr[:, 6] = arr[:, 0]
    arr[:, 0] = first
    return arr


def _content(i: int) -> str:
    return f"write {i}"


def _write_acked(srv, n: int) -> int:
    """``n`` writes in acknowledged PUT_MANYs of PUT_BATCH keys; returns how many were
    acknowledged."""
    keys = _keys(n)
    c = RawConn(srv.port, timeout=30, token=srv.token)
    acked = 0
    try:
        for s in range(0, n, PUT_BATCH):
            e = min(s + PUT_BATCH, n)
            m = c.call("PUT_MANY", [_core.pack_many(keys[s:e]), [_content(i) for i in range(s, e)]])
            if reply_code(m) != "OK":
                break
            acked += e - s
    finally:
        c.close()
    return acked


def _verify(srv, n: int) -> dict:
    """Compare the server's contents with the ``n`` writes.

    :returns: ``{"lost", "wrong", "extra", "read_errors"}`` counts.
    """
    keys = _keys(n)
    c = RemoteEngine(port=srv.port, token=srv.token, timeout=60)
    lost = wrong = errors = 0
    try:
        for s in range(0, n, 5000):
            e = min(s + 5000, n)
            try:
                got = c.get_many(_core.pack_many(keys[s:e]), content_only=True)
            except VTPUError:
                errors += e - s
                continue
            for i, v in zip(range(s, e), got):
                if v is None:
                    lost += 1
                elif v != _content(i):
                    wrong += 1
        try:
            total = c.count(_core.parse_pattern("*.*.*/*.*.*/*.*.*"))
        except VTPUError:
            total = None
    finally:
        c.close()
    extra = None if total is None else total - (n - lost) - 1  # the probe key
    return {"lost": lost, "wrong": wrong, "extra": extra, "read_errors": errors}


def _restart(run: Run, d: str) -> tuple:
    """Start a server on ``d``: ``(server, None)`` or ``(None, "refused: ...")``."""
    try:
        return run.server(data=d), None
    except StartFailed as exc:
        lines = [ln for ln in exc.stderr.strip().splitlines() if ln.strip()]
        named = "StorageError" in exc.stderr
        return None, f"refused{' with StorageError' if named else ''}: {(lines or [''])[-1][:200]}"


def _no_silent_loss(run: Run, n: int, d: str, damage: str) -> None:
    srv2, refused = _restart(run, d)
    if srv2 is None:
        run.outcome = f"{damage}; start-up {refused}"
        run.check("refused with StorageError or nothing lost", "StorageError" in refused, refused)
        return
    v = _verify(srv2, n)
    run.note(**v)
    run.outcome = (f"{damage}; started, {v['lost']:,} of {n:,} acknowledged writes lost, "
                   f"{v['wrong']} wrong")
    run.check("refused with StorageError or nothing lost", v["lost"] == 0 and v["wrong"] == 0,
              f"{v['lost']:,} lost, {v['wrong']} wrong, no error")


def _crashed_store(run: Run) -> tuple:
    n = run.size(20_000, 5000)
    d = f"{run.workdir}/data"
    srv = run.server(data=d, fsync="everysec")
    data.put_probe_key(srv)
    run.begin(srv, probe=False)
    acked = _write_acked(srv, n)
    srv.kill9()
    run.note(acknowledged=acked)
    return n, d


@attack("storage", probe=False)
def wal_deleted(run: Run) -> None:
    """kill -9 after 20,000 acknowledged writes, delete the ``-wal``, start again."""
    n, d = _crashed_store(run)
    wal = os.path.join(d, WAL)
    size = os.path.getsize(wal) if os.path.exists(wal) else 0
    if size:
        os.remove(wal)
    run.note(wal_bytes=size)
    _no_silent_loss(run, n, d, f"WAL of {size / MiB:.1f} MiB deleted")
    run.end()


@attack("storage", probe=False)
def wal_flipped(run: Run) -> None:
    """kill -9 after 20,000 acknowledged writes, flip 16 bytes in the middle of the WAL."""
    n, d = _crashed_store(run)
    wal = os.path.join(d, WAL)
    size = os.path.getsize(wal) if os.path.exists(wal) else 0
    used = _wal_used(wal, size)
    off = max(0, used // 2)
    with open(wal, "r+b") as f:
        f.seek(off)
        b = f.read(16)
        f.seek(off)
        f.write(bytes(x ^ 0xFF for x in b))
    run.note(wal_bytes=size, flipped_at=off)
    _no_silent_loss(run, n, d, f"16 bytes flipped at {off:,} of the WAL")
    run.end()


def _wal_used(path: str, size: int) -> int:
    """Bytes of the WAL holding frames of the current generation (the preallocated rest
    is stale): frames are page size + 24 bytes after a 32-byte header, and the current
    ones carry the header's salts."""
    if size < 32:
        return size
    with open(path, "rb") as f:
        head = f.read(32)
        page = int.from_bytes(head[8:12], "big")
        salts = head[16:24]
        frame = page + 24
        used = 32
        while used + frame <= size:
            f.seek(used)
            fh = f.read(24)
            if fh[8:16] != salts:
                break
            used += frame
    return used


def _data_pages(path: str) -> tuple:
    """``(page_size, [page numbers])`` of the database pages holding written contents:
    where a flipped bit can change a stored key or value (most of a fresh file is free
    pages, where a flip changes nothing)."""
    with open(path, "rb") as f:
        raw = f.read()
    page_size = int.from_bytes(raw[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    marker = _content(0)[:-1].encode()
    pages = [i for i in range(len(raw) // page_size)
             if marker in raw[i * page_size:(i + 1) * page_size]]
    return page_size, pages


@attack("storage", probe=False)
def db_bit_flips(run: Run) -> None:
    """Single-bit flips in the data pages of a cleanly stopped store's database (10
    trials): a clear error, or silently wrong values?"""
    n, trials = run.size((20_000, 10), (5000, 4))
    base = f"{run.workdir}/base"
    srv = run.server(data=base)
    data.put_probe_key(srv)
    acked = _write_acked(srv, n)
    srv.stop()
    size = os.path.getsize(os.path.join(base, DB))
    page_size, pages = _data_pages(os.path.join(base, DB))
    run.begin(None)
    rng = np.random.default_rng(12)
    kinds = Counter()
    trial_notes = []
    for t in range(trials):
        run.alive_or_stalled()
        d = f"{run.workdir}/t{t}"
        shutil.copytree(base, d)
        page = pages[int(rng.integers(0, len(pages)))]
        off = page * page_size + int(rng.integers(0, page_size))
        bit = int(rng.integers(0, 8))
        with open(os.path.join(d, DB), "r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ (1 << bit)]))
        s2, refused = _restart(run, d)
        if s2 is None:
            kind = "refused" if "StorageError" in refused else "crashed"
            trial_notes.append({"offset": off, "bit": bit, "result": refused})
        else:
            v = _verify(s2, n)
            s2.stop()
            if v["read_errors"]:
                kind = "error on read"
            elif v["lost"] or v["wrong"] or v["extra"]:
                kind = "silently wrong"
            else:
                kind = "no effect"
            trial_notes.append({"offset": off, "bit": bit, "result": kind, **v})
        kinds[kind] += 1
        shutil.rmtree(d, ignore_errors=True)
    run.end()
    run.note(acknowledged=acked, db_bytes=size, data_pages=len(pages), trials=trial_notes)
    run.outcome = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f" (of {trials})"
    run.check("0 trials with a silently wrong value or key", kinds["silently wrong"] == 0,
              f"{kinds['silently wrong']} of {trials}")


@attack("storage", probe=False)
def disk_full(run: Run) -> None:
    """A full disk (a 20 MiB tmpfs): writers' replies, unacknowledged writes seen by
    readers, recovery once space is freed, and what a restart finds."""
    fail_target = run.size(200, 200)
    mnt = f"{run.workdir}/mnt"
    run.mount_tmpfs(mnt, "20m")
    with open(f"{mnt}/filler", "wb") as f:  # freed later to give space back
        f.write(b"\0" * (4 * MiB))
    d = f"{mnt}/data"
    srv = run.server(data=d, fsync="always")
    data.put_probe_key(srv)
    run.begin(srv, probe=False)
    value = os.urandom(16 * 1024)
    keys = _keys(6000, first=4)
    w = RawConn(srv.port, timeout=15)
    acked, failed, kinds = [], [], Counter()
    for i in range(len(keys)):
        run.alive_or_stalled()
        if len(failed) >= fail_target:
            break
        key = _core.pack(keys[i])
        if w.closed:
            w = RawConn(srv.port, timeout=15)
        try:
            m = w.call("PUT", [key, value + i.to_bytes(4, "big")], timeout=15)
        except TimeoutError:
            m = "timeout"
        code = reply_code(m) if m != "timeout" else "timeout"
        if code == "OK":
            acked.append(i)
        else:
            failed.append(i)
            kinds[code or "connection closed, no reply"] += 1
    w.close()
    # Readers: is any write that was never acknowledged visible?
    r = RawConn(srv.port, timeout=15)
    visible = 0
    for i in failed:
        m = r.call("GET", [_core.pack(keys[i])])
        if isinstance(m, list) and m[1] == 0 and m[2] is not None:
            visible += 1
    r.close()
    # Give the space back and see whether writes work again by themselves.
    os.remove(f"{mnt}/filler")
    recovered_after = None
    t_free = time.monotonic()
    for j in range(50):
        run.alive_or_stalled()
        try:
            c = RawConn(srv.port, timeout=5)
            m = c.call("PUT", [_core.pack(keys[-1 - j]), b"after"], timeout=5)
            c.close()
        except (OSError, TimeoutError, ConnectionError):
            m = None
        if reply_code(m) == "OK":
            recovered_after = time.monotonic() - t_free
            break
        time.sleep(0.1)
    srv.stop()
    srv2, refused = _restart(run, d)
    lost_acked = unacked_after = None
    if srv2 is not None:
        c = RemoteEngine(port=srv2.port, timeout=30)
        got = c.get_many(b"".join(_core.pack(keys[i]) for i in acked + failed), content_only=True)
        c.close()
        lost_acked = sum(1 for v in got[:len(acked)] if v is None)
        unacked_after = sum(1 for v in got[len(acked):] if v is not None)
    run.end()
    run.note(acked=len(acked), failed=len(failed), failures=dict(kinds), visible_unacked=visible,
             recovered_after_s=recovered_after, restart=refused or "started",
             lost_acked_after_restart=lost_acked, unacked_after_restart=unacked_after)
    run.outcome = (f"{len(acked)} acked, then {len(failed)} failed ("
                   + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"); {visible} unacked "
                   f"visible; " + ("recovered" if recovered_after is not None else "no recovery")
                   + " after freeing space; restart: " + (refused or
                   f"{lost_acked} acked lost, {unacked_after} unacked present"))
    run.check("writers get STORAGE error replies", set(kinds) == {"STORAGE"},
              ", ".join(f"{n} {k}" for k, n in kinds.items()))
    run.check("0 unacknowledged writes visible", visible == 0, f"{visible} of {len(failed)}")
    run.check("writes recover once space is freed", recovered_after is not None,
              f"after {recovered_after:.2f} s" if recovered_after is not None
              else "not within 50 tries")
    run.check("0 acknowledged writes lost after restart", lost_acked == 0,
              refused or f"{lost_acked} lost")


@attack("storage", probe=False)
def lock_deleted(run: Run) -> None:
    """Delete ``LOCK`` of a running server's directory, start a second server on it."""
    d = f"{run.workdir}/data"
    a = run.server(data=d)
    data.put_probe_key(a)
    run.begin(a, probe=False)
    lock = os.path.join(d, "LOCK")
    existed = os.path.exists(lock)
    if existed:
        os.remove(lock)
    b, refused = _restart(run, d)
    run.end()
    run.outcome = ("LOCK deleted; " if existed else "no LOCK file; ") + (
        f"second server {refused}" if b is None else "second server started on the same directory")
    run.check("a second server on the same directory is refused", b is None, run.outcome)
