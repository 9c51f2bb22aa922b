"""Storage: round trips, group commit semantics, locking, corruption and torn files.

Contents are opaque bytes at this level (the engine encodes them), so these tests use
arbitrary byte strings; the engine-level round trip of every content kind lives in the
crash/integration tests.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time

import logging
import random
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vtpu
from vtpu import _core
from vtpu.errors import InterfaceError, StorageError
from vtpu.storage import COUNTER_FILENAME, DB_FILENAME, FORMAT_VERSION, LOCK_FILENAME, Storage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode
from fullfs import SmallFS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def key(*c: int) -> bytes:
    c = tuple(c) + (1,) * (9 - len(c))
    return struct.pack(">9H", *c)


def rows_of(st_: Storage) -> list[tuple]:
    """The stored rows without their (verified) checksums."""
    names, it = st_.load()
    return [r[:5] for r in it]


def run_py(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture(params=["always", "everysec", "never"])
def policy(request):
    return request.param


# ---------------------------------------------------------------------------- round trips


def test_round_trip_exact(tmp_path, policy):
    contents = [
        b"", b"\x00" * 7, bytes(range(256)), os.urandom(1 << 20), "utf-8 \u00e9\u4e2d".encode(),
        b"\xc4\x01\x02",  # looks like a msgpack bin header: still opaque
    ]
    rows = []
    for i, c in enumerate(contents):
        rows.append((key(1, 2, 3, 4, 5, 6, 7, 8, i + 1), c, i + 1,
                     1700000000.123456 + i, 1700000000.654321 + 2 * i))
    rows.append((key(0xEFFF, *([0xFFFF] * 8)), b"max", 2**40, 0.0, 1e-9))
    rows.append((key(0, 0, 0, 0, 0, 0, 0, 0, 0), b"zero", 1, -1.5, 3.25))
    with Storage(tmp_path, fsync=policy) as s:
        for r in rows[:3]:
            s.put(*r)
        s.put_many(rows[3:])
        s.add_names(0, ["query", "person"])
        s.add_names(2, ["father"])
        assert s.commit() == len(rows) + 3
        assert s.commit() == 0  # nothing queued: no-op
    with Storage(tmp_path, fsync=policy) as s:
        names, it = s.load()
        got = list(it)
        assert names == ["query", "person", "father"]
        # key order = coordinate order, values bit-exact
        assert [g[:5] for g in got] == sorted(rows)
        assert s.count() == len(rows)
        for g in got:
            assert type(g[0]) is bytes and type(g[1]) is bytes
            assert type(g[2]) is int and type(g[3]) is float and type(g[4]) is float
            assert type(g[5]) is int  # the checksum
        assert len({g[5] for g in got}) == len(got)


def test_group_commit_order_put_delete_put(tmp_path):
    k1, k2 = key(1), key(2)
    with Storage(tmp_path) as s:
        s.put(k1, b"a", 1, 1.0, 1.0)
        s.delete([k1])
        s.put(k2, b"b", 1, 1.0, 1.0)
        s.put(k2, b"b2", 2, 1.0, 2.0)
        s.delete(k2)
        s.put(k2, b"b3", 3, 1.0, 3.0)
        assert s.pending == 6
        s.commit()
        assert s.pending == 0
        assert rows_of(s) == [(k2, b"b3", 3, 1.0, 3.0)]
        s.delete([k2, key(99)])  # a missing key is ignored
        s.commit()
        assert rows_of(s) == []


def test_bulk_put_many_sorted_and_last_wins(tmp_path):
    n = 20000
    ks = [key(1, 1, 1, 1, 1, 1, 1, 1 + i // 1000, 1 + i % 1000) for i in range(n)]
    rows = [(k, b"v%d" % i, 1, 1.0, 1.0) for i, k in enumerate(ks)]
    rows.reverse()
    rows.append((ks[5], b"again", 2, 1.0, 2.0))  # same key later in one batch: it wins
    with Storage(tmp_path, fsync="never") as s:
        s.put_many(rows)
        s.commit()
        got = rows_of(s)
        assert len(got) == n
        assert [r[0] for r in got] == sorted(ks)
        assert dict((r[0], r[1]) for r in got)[ks[5]] == b"again"
        batches = list(s.iter_batches(size=3000))
        assert [len(b) for b in batches] == [3000] * 6 + [2000]


def test_uncommitted_is_not_stored_and_close_commits(tmp_path):
    s = Storage(tmp_path)
    s.put(key(1), b"x", 1, 1.0, 1.0)
    assert s.count() == 0
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        s.put(key(2), b"y", 1, 1.0, 1.0)
    with Storage(tmp_path) as s2:
        assert rows_of(s2) == [(key(1), b"x", 1, 1.0, 1.0)]


def test_bad_arguments(tmp_path):
    with pytest.raises(InterfaceError, match="fsync"):
        Storage(tmp_path, fsync="sometimes")
    with Storage(tmp_path) as s:
        with pytest.raises(InterfaceError, match="18-byte key"):
            s.put(b"short", b"x", 1, 1.0, 1.0)
        # a row of the wrong type is refused when queued: nothing of the batch is queued
        with pytest.raises(InterfaceError, match="storage row 1"):
            s.put_many([(key(3), b"fine", 1, 1.0, 1.0), (key(1), {"not": "bytes"}, 1, 1.0, 1.0)])
        with pytest.raises(InterfaceError, match="storage row 0"):
            s.put(key(1), b"x", 2**63, 1.0, 1.0)
        assert s.pending == 0
        s.put(key(2), b"ok", 1, 1.0, 1.0)
        s.commit()
        assert [r[0] for r in rows_of(s)] == [key(2)]


def test_everysec_background_fsync_clears_dirty(tmp_path):
    with Storage(tmp_path, fsync="everysec") as s:
        s.put(key(1), b"x", 1, 1.0, 1.0)
        s.commit()
        deadline = time.monotonic() + 10
        while s._dirty and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not s._dirty
        s.sync()  # explicit sync works under any policy


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(
    st.tuples(st.sampled_from(["put", "del", "commit"]), st.integers(1, 6), st.binary(max_size=20)),
    max_size=40,
))
def test_model_reopen(tmp_path_factory, ops):
    """Random put/delete/commit sequences: after close+reopen the store equals a dict
    model of everything committed (close commits the tail)."""
    d = tmp_path_factory.mktemp("model")
    model: dict[bytes, tuple] = {}
    with Storage(d, fsync="never") as s:
        for i, (op, k, v) in enumerate(ops):
            kk = key(k)
            if op == "put":
                row = (kk, v, i + 1, float(i), float(i) + 0.5)
                s.put(*row)
                model[kk] = row
            elif op == "del":
                s.delete([kk])
                model.pop(kk, None)
            else:
                s.commit()
    with Storage(d) as s:
        assert rows_of(s) == sorted(model.values())


# ---------------------------------------------------------------------------- locking


def test_second_storage_same_process_refused(tmp_path):
    with Storage(tmp_path):
        with pytest.raises(StorageError) as ei:
            Storage(tmp_path)
        msg = str(ei.value)
        assert str(tmp_path) in msg and f"pid {os.getpid()}" in msg
    Storage(tmp_path).close()  # released on close


@contextlib.contextmanager
def store_held_by_another_process(path):
    """A child process holding a Storage open on ``path`` until the block ends.

    :returns: (yields) the child's Popen.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {ROOT!r})
            from vtpu.storage import Storage
            s = Storage({str(path)!r})
            print("locked", flush=True)
            sys.stdin.readline()
            s.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_lock_refused_by_other_process(tmp_path):
    with store_held_by_another_process(tmp_path) as child:
        with pytest.raises(StorageError) as ei:
            Storage(tmp_path)
        msg = str(ei.value)
        assert str(tmp_path) in msg
        assert f"pid {child.pid}" in msg
    Storage(tmp_path).close()


def test_deleting_the_lock_file_does_not_release_the_lock(tmp_path):
    with store_held_by_another_process(tmp_path):
        os.remove(tmp_path / LOCK_FILENAME)
        with pytest.raises(StorageError, match="is locked by another vtpu store"):
            Storage(tmp_path)
        with pytest.raises(StorageError, match="is locked"):  # still, a second time
            Storage(tmp_path)
    with Storage(tmp_path):
        with pytest.raises(StorageError, match=f"held by pid {os.getpid()}"):
            Storage(tmp_path)


def test_lock_released_when_holder_is_killed(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {ROOT!r})
            from vtpu.storage import Storage
            s = Storage({str(tmp_path)!r}, fsync="always")
            s.put(b"k" * 18, b"v", 1, 1.0, 1.0)
            s.commit()
            print("committed", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    with Storage(tmp_path) as s:  # the kernel dropped the flock with the process
        assert rows_of(s) == [(b"k" * 18, b"v", 1, 1.0, 1.0)]


# ---------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("fsync", ["always", "everysec", "never"])
def test_committed_survives_kill9_uncommitted_does_not(tmp_path, fsync):
    r = run_py(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(tmp_path)!r}, fsync={fsync!r})
        for i in range(100):
            s.put(bytes([0] * 17 + [i]), b"v%d" % i, 1, 1.0, 1.0)
            s.commit()
        s.put(b"\\xff" * 18, b"never committed", 1, 1.0, 1.0)
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr
    with Storage(tmp_path) as s:
        got = rows_of(s)
    assert [g[0][-1] for g in got] == list(range(100))
    assert all(g[0] != b"\xff" * 18 for g in got)


# ---------------------------------------------------------------------------- corruption


def _make_store(path, n=2000):
    """A closed store of n scrolls folded into its checkpoint, with no free pages (so
    every page of the file holds something)."""
    with Storage(path, fsync="never") as s:
        s.put_many([(key(1, 1, 1, 1, 1, 1, 1, 1 + i // 500, 1 + i % 500), os.urandom(200), 1,
                     1.0, 1.0) for i in range(n)])
        s.commit()
        s.checkpoint()
    db = os.path.join(path, DB_FILENAME)
    con = sqlite3.connect(db)
    con.execute("VACUUM")
    con.close()
    return db


def test_not_a_database(tmp_path):
    with open(tmp_path / DB_FILENAME, "wb") as f:
        f.write(b"this is not sqlite at all" * 100)
    with pytest.raises(StorageError) as ei:
        Storage(tmp_path)
    assert DB_FILENAME in str(ei.value)
    # The failed open released the directory lock: a second try reports corruption
    # again, not "locked".
    with pytest.raises(StorageError) as ei2:
        Storage(tmp_path)
    assert "locked" not in str(ei2.value)


def test_truncated_database(tmp_path):
    db = _make_store(tmp_path)
    size = os.path.getsize(db)
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StorageError, match="corrupt|unreadable"):
        s = Storage(tmp_path)
        try:
            list(s.load()[1])
        finally:
            s.close()


def test_scribbled_page_detected(tmp_path):
    db = _make_store(tmp_path)
    size = os.path.getsize(db)
    with open(db, "r+b") as f:
        # Overwrite a page in the middle of the B-tree with garbage.
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xa5" * 4096)
    with pytest.raises(StorageError, match="corrupt"):
        s = Storage(tmp_path)
        try:
            list(s.load()[1])
        finally:
            s.close()


def test_corruption_reported_by_load_without_check(tmp_path):
    db = _make_store(tmp_path)
    size = os.path.getsize(db)
    with open(db, "r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\x00\xff" * 2048)
    try:
        s = Storage(tmp_path, check=False)
    except StorageError:
        return  # detected even earlier: fine
    try:
        with pytest.raises(StorageError, match="corrupt"):
            names, it = s.load()
            list(it)
    finally:
        s.close()


def _wal_commit_ends(wal) -> list[int]:
    """File offsets where the WAL's valid transactions end (its frames carry the salts
    of its header; a commit frame has a nonzero database size)."""
    with open(wal, "rb") as f:
        data = f.read()
    page = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    ends, pos = [], 32
    while pos + 24 + page <= len(data) and data[pos + 8:pos + 16] == salts:
        pos += 24 + page
        if int.from_bytes(data[pos - page - 20:pos - page - 16], "big"):
            ends.append(pos)
    return ends


def test_torn_wal_tail_keeps_a_consistent_prefix(tmp_path):
    """An OS crash while the WAL was being appended (simulated by cutting its tail and
    a counter written in another boot) loses at most the unfinished transaction, never
    corrupts earlier ones; in the same boot the same cut is a refused, damaged WAL."""
    r = run_py(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(tmp_path)!r}, fsync="everysec")
        s.put_many([(bytes([1] * 17 + [i]), b"first" * 100, 1, 1.0, 1.0) for i in range(50)])
        s.commit()
        s.put_many([(bytes([2] * 17 + [i]), b"second" * 100, 1, 1.0, 1.0) for i in range(50)])
        s.commit()
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr
    wal = tmp_path / (DB_FILENAME + "-wal")
    ends = _wal_commit_ends(wal)
    assert len(ends) >= 2
    with open(wal, "r+b") as f:
        f.truncate(ends[-1] - 1000)  # the second transaction's last frame is torn
    with pytest.raises(StorageError, match="at commit 1, commit counter .* says 2: the WAL"):
        Storage(tmp_path)
    # After a reboot only the synced commit (the first) must be there.
    _write_counter(tmp_path, seq=2, synced=1, boot=b"\x01" * 16)
    with Storage(tmp_path) as s:
        got = rows_of(s)
    firsts = [g for g in got if g[0][0] == 1]
    seconds = [g for g in got if g[0][0] == 2]
    assert len(firsts) == 50
    assert len(seconds) in (0, 50)  # all or nothing


def test_format_version_mismatch(tmp_path):
    Storage(tmp_path).close()
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    con.execute("UPDATE meta SET value=? WHERE key='format_version'", (str(FORMAT_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StorageError, match="format version"):
        Storage(tmp_path)


def test_name_table_gap_is_an_error(tmp_path):
    with Storage(tmp_path) as s:
        s.add_names(0, ["a"])
        s.add_names(2, ["c"])  # index 1 missing: a torn name table must not shift ids
        s.commit()
        with pytest.raises(StorageError, match="gap"):
            s.load()


# ---------------------------------------------------------------------------- commit counter

_COUNTER = struct.Struct("<8sQQ16s")  # magic, seq, synced, boot id; then xxh64 of those


def _counter_records(path) -> list[tuple]:
    """(seq, synced, boot, intact) of both records of the counter file."""
    with open(os.path.join(path, COUNTER_FILENAME), "rb") as f:
        data = f.read()
    out = []
    for off in (0, 512):
        body = data[off:off + _COUNTER.size]
        crc = int.from_bytes(data[off + _COUNTER.size:off + _COUNTER.size + 8], "little")
        magic, seq, synced, boot = _COUNTER.unpack(body)
        out.append((seq, synced, boot, magic == b"VTPUCMT1" and crc == _core.xxh64(body)))
    return out


def _write_counter(path, seq: int, synced: int, boot: bytes) -> None:
    body = _COUNTER.pack(b"VTPUCMT1", seq, synced, boot)
    rec = body + _core.xxh64(body).to_bytes(8, "little")
    with open(os.path.join(path, COUNTER_FILENAME), "r+b") as f:
        for off in (0, 512):
            f.seek(off)
            f.write(rec)


def _this_boot() -> bytes:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return bytes.fromhex(f.read().strip().replace("-", ""))


def _kill9_after_commits(path, n: int, fsync: str) -> None:
    r = run_py(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(path)!r}, fsync={fsync!r})
        for i in range(1, {n} + 1):
            s.put(bytes([0] * 16 + [i // 256, i % 256]), b"v%d" % i, 1, 1.0, 1.0)
            s.commit()
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr


def test_commit_counter_follows_every_commit(tmp_path, policy):
    with Storage(tmp_path, fsync=policy) as s:
        assert s.commit_seq == 0
        for i in range(5):
            s.put(key(i + 1), b"x", 1, 1.0, 1.0)
            s.commit()
            recs = _counter_records(tmp_path)
            seq, synced, _, _ = max(r for r in recs if r[3])
            # never more than the database holds, and never more "synced" than fsynced
            assert seq == s.commit_seq == i + 1
            assert synced <= seq
            if policy == "always":
                assert synced == seq
        assert s.commit() == 0 and s.commit_seq == 5  # an empty commit is no commit
        s.sync()
        assert max(r for r in _counter_records(tmp_path) if r[3])[:2] == (5, 5)
    with Storage(tmp_path, fsync=policy) as s:
        assert s.commit_seq == 5
        assert all(r[3] and r[:2] == (5, 5) for r in _counter_records(tmp_path))


def test_everysec_counter_catches_up_with_the_background_fsync(tmp_path):
    with Storage(tmp_path, fsync="everysec") as s:
        s.put(key(1), b"x", 1, 1.0, 1.0)
        s.commit()
        deadline = time.monotonic() + 10
        while s.synced_seq < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.synced_seq == 1
        assert max(r for r in _counter_records(tmp_path) if r[3])[:2] == (1, 1)


def test_wal_deleted_after_kill9_is_refused(tmp_path, policy):
    _kill9_after_commits(tmp_path, 30, policy)
    os.remove(tmp_path / (DB_FILENAME + "-wal"))
    with pytest.raises(StorageError) as ei:
        Storage(tmp_path)
    msg = str(ei.value)
    assert re.search(r"at commit (\d+), commit counter .*COMMIT' says 30: the WAL", msg), msg
    assert int(re.search(r"at commit (\d+)", msg).group(1)) < 30
    assert "remove" in msg  # says how to accept the database as it is
    # Refusing changed nothing: still refused, and accepted once the counter is removed.
    with pytest.raises(StorageError, match="says 30"):
        Storage(tmp_path)
    os.remove(tmp_path / COUNTER_FILENAME)
    with Storage(tmp_path) as s:
        assert len(rows_of(s)) == s.commit_seq < 30


def test_wal_damaged_after_kill9_is_refused(tmp_path):
    _kill9_after_commits(tmp_path, 30, "everysec")
    wal = tmp_path / (DB_FILENAME + "-wal")
    with open(wal, "r+b") as f:
        f.seek(32 + 24 + 2000)  # inside the first frame's page: every later frame is lost
        b = f.read(16)
        f.seek(32 + 24 + 2000)
        f.write(bytes(x ^ 0xFF for x in b))
    with pytest.raises(StorageError, match=r"commit counter .* says 30: the WAL"):
        Storage(tmp_path)


def test_database_ahead_of_counter_is_fine(tmp_path):
    # A kill -9 between SQLite's COMMIT and the counter write leaves the counter one
    # behind: nothing is missing.
    with Storage(tmp_path) as s:
        for i in range(3):
            s.put(key(i + 1), b"x", 1, 1.0, 1.0)
            s.commit()
    _write_counter(tmp_path, seq=2, synced=2, boot=_this_boot())
    with Storage(tmp_path) as s:
        assert s.commit_seq == 3 and len(rows_of(s)) == 3


def test_counter_after_a_reboot_checks_only_synced_commits(tmp_path, caplog):
    with Storage(tmp_path) as s:
        for i in range(3):
            s.put(key(i + 1), b"x", 1, 1.0, 1.0)
            s.commit()
    other = b"\x07" * 16
    # Commits 4 and 5 were written but not synced before the OS went down: allowed.
    _write_counter(tmp_path, seq=5, synced=3, boot=other)
    with caplog.at_level(logging.WARNING, logger="vtpu.storage"):
        Storage(tmp_path).close()
    assert "last 2 commits" in caplog.text
    # Commit 4 was on stable storage: its loss is damage, whatever the boot.
    _write_counter(tmp_path, seq=5, synced=4, boot=other)
    with pytest.raises(StorageError, match="at commit 3, commit counter .* says 4"):
        Storage(tmp_path)
    # An unknown boot id is never "the same boot".
    _write_counter(tmp_path, seq=5, synced=3, boot=bytes(16))
    Storage(tmp_path).close()
    # Same boot: every commit that returned must be there.
    _write_counter(tmp_path, seq=5, synced=3, boot=_this_boot())
    with pytest.raises(StorageError, match="says 5"):
        Storage(tmp_path)


def test_counter_torn_or_missing(tmp_path, caplog):
    with Storage(tmp_path) as s:
        s.put(key(1), b"x", 1, 1.0, 1.0)
        s.commit()
    path = tmp_path / COUNTER_FILENAME
    with open(path, "r+b") as f:  # one torn record: the other one is used
        f.seek(10)
        f.write(b"\xff\xff")
    with Storage(tmp_path) as s:
        assert s.commit_seq == 1
    with open(path, "r+b") as f:  # both damaged: refused, never guessed
        for off in (10, 522):
            f.seek(off)
            f.write(b"\xff\xff")
    with pytest.raises(StorageError, match="counter .* is damaged"):
        Storage(tmp_path)
    os.remove(path)  # removing it accepts the database as it is
    with caplog.at_level(logging.WARNING, logger="vtpu.storage"):
        with Storage(tmp_path) as s:
            assert s.commit_seq == 1 and len(rows_of(s)) == 1
    assert "no commit counter" in caplog.text
    assert all(r[3] and r[:2] == (1, 1) for r in _counter_records(tmp_path))


def test_database_file_replaced_by_an_older_copy_is_refused(tmp_path):
    with Storage(tmp_path) as s:
        s.put(key(1), b"x", 1, 1.0, 1.0)
        s.commit()
    shutil.copy(tmp_path / DB_FILENAME, tmp_path / "old.sqlite3")
    with Storage(tmp_path) as s:
        s.put(key(2), b"y", 1, 1.0, 1.0)
        s.commit()
    os.replace(tmp_path / "old.sqlite3", tmp_path / DB_FILENAME)
    with pytest.raises(StorageError, match="at commit 1, commit counter .* says 2"):
        Storage(tmp_path)


# ---------------------------------------------------------------------------- checksums


def _engine_store(path, n: int = 300) -> dict:
    """A closed engine store of ``n`` scrolls of assorted contents, and what it holds."""
    from vtpu.engine import Engine

    e = Engine(Storage(path, fsync="never"))
    ids = e.intern([f"name{j}" for j in range(12)])
    want = {}
    for i in range(n):
        k = key(1, 2, 3, ids[i % 12], 1 + i % 7, 1, 1, 1 + i // 100, 1 + i % 100)
        kinds = [f"text value {i} \u00e9", b"bytes %d" % i, i * 1000003,
                 np.arange(i % 9 + 1, dtype=np.float32) + i, [i, "x", None]]
        e.put(k, kinds[i % len(kinds)])
        want[k] = e.get(k)
    e.close()
    return want


def _same_scroll(a, b) -> bool:
    if (a.key, a.version, a.created_at, a.updated_at) != (b.key, b.version, b.created_at,
                                                           b.updated_at):
        return False
    x, y = a.content, b.content
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
                and x.shape == y.shape and np.array_equal(x, y))
    return type(x) is type(y) and x == y


def _flip_trials(tmp_path, trials: int, seed: int, folded: bool = False) -> dict:
    """Flip one random bit of the database per trial; count how each open ended.
    ``folded``: the scrolls are in the checkpoint's chunks (compacted: no free pages)."""
    from vtpu.engine import Engine

    src = tmp_path / "src"
    want = _engine_store(src)
    if folded:
        with Storage(src) as s:
            assert s.fold() == len(want)
        con = sqlite3.connect(src / DB_FILENAME)
        con.execute("VACUUM")
        con.close()
    names = [f"name{j}" for j in range(12)]
    db_size = os.path.getsize(src / DB_FILENAME)
    rng = random.Random(seed)
    out = {"error": 0, "intact": 0, "silent": []}
    for t in range(trials):
        d = tmp_path / f"t{t}"
        shutil.copytree(src, d)
        off, bit = rng.randrange(db_size), rng.randrange(8)
        with open(d / DB_FILENAME, "r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ (1 << bit)]))
        try:
            e = Engine(Storage(d, fsync="never"))
        except StorageError:
            out["error"] += 1
        else:
            try:
                ok = (e.name_table() == names and len(e._map) == len(want)
                      and all(k in e._map and _same_scroll(e._map[k], s) for k, s in want.items()))
            except Exception as exc:  # a decode failure after a clean load: also silent
                ok = False
                exc_text = repr(exc)
            else:
                exc_text = ""
            e.close()
            if ok:
                out["intact"] += 1
            else:
                out["silent"].append((off, bit, exc_text))
        shutil.rmtree(d)
    return out


def test_single_bit_flips_never_give_a_wrong_value(tmp_path):
    res = _flip_trials(tmp_path, trials=30, seed=12)
    assert res["silent"] == []
    assert res["error"] > 0


def test_single_bit_flips_in_checkpoint_chunks_never_give_a_wrong_value(tmp_path):
    res = _flip_trials(tmp_path, trials=30, seed=13, folded=True)
    assert res["silent"] == []
    assert res["error"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VTPU_SLOW"), reason="set VTPU_SLOW=1 for 400 trials")
def test_single_bit_flips_never_give_a_wrong_value_many(tmp_path):
    res = _flip_trials(tmp_path, trials=400, seed=1212)
    assert res["silent"] == []


def _flip_bit_in(path, needle: bytes, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(needle)
        assert data.count(needle) == 1
        f.seek(at + len(needle) - 1)
        f.write(bytes([data[at + len(needle) - 1] ^ (1 << bit)]))


def test_flipped_content_bit_names_the_coordinate(tmp_path):
    from vtpu.engine import Engine

    _engine_store(tmp_path)
    _flip_bit_in(tmp_path / DB_FILENAME, b"text value 215 ")
    with pytest.raises(StorageError) as ei:
        Engine(Storage(tmp_path))
    # The scroll holding it, formatted with its names, and what to do.
    msg = str(ei.value)
    assert "record at 1.2.3/name11.6.1/1.3.16 fails its checksum" in msg, msg
    assert "backup" in msg


def test_flipped_bit_in_a_chunk_names_the_coordinate(tmp_path):
    from vtpu.engine import Engine

    _engine_store(tmp_path)
    with Storage(tmp_path) as s:
        s.fold()
    _flip_bit_in(tmp_path / DB_FILENAME, b"text value 215 ")
    with pytest.raises(StorageError) as ei:
        Engine(Storage(tmp_path))
    msg = str(ei.value)
    assert "record at 1.2.3/name11.6.1/1.3.16 fails its checksum" in msg, msg


def _chunk_row(path) -> tuple:
    con = sqlite3.connect(os.path.join(path, DB_FILENAME))
    row = con.execute("SELECT first, n, body FROM chunks").fetchone()
    con.close()
    return row


def _set_chunk(path, first, n, body) -> None:
    con = sqlite3.connect(os.path.join(path, DB_FILENAME))
    con.execute("UPDATE chunks SET first = ?, n = ?, body = ?", (first, n, body))
    con.commit()
    con.close()


def test_damaged_chunk_columns_and_row_are_errors(tmp_path):
    """Each column of a chunk, and its row's first key and count: a flipped bit is an
    error naming a record or the chunk, never a wrong value."""
    rows = [(key(1, i), b"v%d" % i, i, 1.0 + i, 2.0 + i) for i in range(1, 11)]
    with Storage(tmp_path) as s:
        s.put_many(rows)
        s.commit()
        assert s.fold() == 10
    first, n, body = _chunk_row(tmp_path)
    assert (first, n) == (key(1, 1), 10)
    fixed = 18 + 40
    # key, version, created, updated, checksum, content end, content of record 3
    for off in (3 * 18, 10 * 18 + 3 * 8, 10 * 26 + 3 * 8, 10 * 34 + 3 * 8, 10 * 42 + 3 * 8,
                10 * 50 + 3 * 8, 10 * fixed + 7):
        bad = bytearray(body)
        bad[off] ^= 4
        _set_chunk(tmp_path, first, n, bytes(bad))
        with Storage(tmp_path) as s:
            with pytest.raises(StorageError, match="fails its checksum|does not add up"):
                rows_of(s)
    for f, c, b in ((key(1, 2), n, body), (first, n - 1, body), (first, n + 1, body),
                    (first, n, body[:-1]), (first, 10.5, body), (first, 0, b"")):
        _set_chunk(tmp_path, f, c, b)
        with Storage(tmp_path) as s:
            with pytest.raises(StorageError, match="chunk starting at .* does not add up"):
                rows_of(s)
    _set_chunk(tmp_path, first, n, body)
    with Storage(tmp_path) as s:
        assert rows_of(s) == rows


def test_writes_after_the_checkpoint_amend_it(tmp_path, policy):
    """Puts, overwrites, deletes and puts after deletes since a fold read back exactly,
    before and after the next fold, through the storage and an engine."""
    from vtpu.engine import Engine

    from vtpu.protocol import pack_value

    def row(i, tag="", v=1):
        return (key(2, 1 + i // 100, 1 + i % 100), pack_value(f"c{i}{tag}"), v, 1.5 + i,
                2.5 + i)

    want = {r[0]: r for r in (row(i) for i in range(0, 3000, 2))}
    with Storage(tmp_path, fsync=policy) as s:
        s.put_many(list(want.values()))
        s.commit()
        assert s.fold() == 1500
        assert s.fold() == 0
        new = [row(i, "new") for i in range(1, 3000, 7)]   # new keys between
        over = [row(i, "over", 2) for i in range(0, 3000, 10)]   # overwrites
        s.put_many(new + over)
        gone = [row(i)[0] for i in range(2, 3000, 6)]
        s.delete(gone)
        s.delete([key(7, 7)])   # never stored
        back = [row(i, "back", 3) for i in range(2, 3000, 30)]   # deleted, then again
        s.put_many(back)
        s.commit()
        for r in new + over:
            want[r[0]] = r
        for k in gone:
            want.pop(k, None)
        for r in back:
            want[r[0]] = r
        expect = [want[k] for k in sorted(want)]
        assert rows_of(s) == expect
        assert s.count() == len(expect)
    with Storage(tmp_path, fsync=policy) as s:
        assert rows_of(s) == expect
        seq = s.commit_seq
        assert s.fold() > 0
        assert s.commit_seq == seq + 1
        assert rows_of(s) == expect
        con = sqlite3.connect(tmp_path / DB_FILENAME)
        assert con.execute("SELECT count(*) FROM scrolls").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM deleted").fetchone() == (0,)
        con.close()
    e = Engine(Storage(tmp_path))
    assert len(e._map) == len(expect)
    assert all(e._map[r[0]].version == r[2] for r in expect)
    assert e._map[row(10)[0]].content == "c10over"
    assert e._map[row(32)[0]].content == "c32back"
    assert row(8)[0] not in e._map
    e.close()


def test_the_wal_is_checkpointed_in_the_background(tmp_path, policy):
    """SQLite's autocheckpoint is off (it would pause a commit on the caller's thread):
    the sync thread checkpoints instead, so the WAL stays near its working size however
    much is written, under every policy."""
    from vtpu.protocol import pack_value
    from vtpu.storage import CHECKPOINT_SECONDS

    blob = pack_value(b"\x5a" * (1 << 20))
    with Storage(tmp_path, fsync=policy) as s:
        wal = s.db_path + "-wal"
        for i in range(16):   # 16 MiB in all, 1 MiB per commit
            s.put_many([(key(4, 1 + i), blob, 1, 1.0, 1.0)])
            s.commit()
            if i % 4 == 3:
                time.sleep(CHECKPOINT_SECONDS * 1.5)
        assert os.path.getsize(wal) < 10 << 20
        assert len(rows_of(s)) == 16


def test_the_checkpoint_interval_spaces_the_background_checkpoints(tmp_path):
    """With a long checkpoint_interval the WAL keeps every commit (nothing is copied
    into the database meanwhile); a bad interval is refused."""
    from vtpu.protocol import pack_value
    from vtpu.storage import CHECKPOINT_SECONDS

    blob = pack_value(b"\x5a" * (1 << 20))
    with Storage(tmp_path, fsync="never", checkpoint_interval=3600) as s:
        wal = s.db_path + "-wal"
        for i in range(8):
            s.put_many([(key(4, 1 + i), blob, 1, 1.0, 1.0)])
            s.commit()
            if i % 4 == 3:
                time.sleep(CHECKPOINT_SECONDS * 1.5)
        assert os.path.getsize(wal) > 8 << 20   # all eight commits still in the WAL
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(InterfaceError):
            Storage(tmp_path / "bad", checkpoint_interval=bad)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folded=st.sets(st.integers(0, 2999), max_size=400),
       since=st.sets(st.integers(0, 2999), max_size=1500),
       gone=st.sets(st.integers(0, 2999), min_size=60, max_size=300))
def test_a_batch_of_deletions_removes_exactly_its_keys(tmp_path_factory, folded, since, gone):
    """A batch of deletions over keys in the checkpoint, in rows since it, in both or in
    neither (its DELETE finds the rows since the checkpoint by a scan of the batch's key
    range, or probes every key when that range holds many more rows): read back, and
    after reopening, exactly what a dict holds."""
    from vtpu.protocol import pack_value

    def row(i, tag):
        return (key(3, 1 + i // 100, 1 + i % 100), pack_value(f"{tag}{i}"), 1, 1.5, 2.5)

    path = tmp_path_factory.mktemp("dels")
    want = {}
    with Storage(path, fsync="never") as s:
        s.put_many([row(i, "f") for i in sorted(folded)])
        s.commit()
        s.fold()
        s.put_many([row(i, "s") for i in sorted(since)])
        s.commit()
        for r in [row(i, "f") for i in folded] + [row(i, "s") for i in since]:
            want[r[0]] = r
        keys = [row(i, "")[0] for i in gone]
        random.Random(len(keys)).shuffle(keys)
        s.delete(keys)
        s.commit()
        for k in keys:
            want.pop(k, None)
        expect = [want[k] for k in sorted(want)]
        assert rows_of(s) == expect
    with Storage(path, fsync="never") as s:
        assert rows_of(s) == expect


def test_fold_splits_chunks_and_rewrites_only_what_changed(tmp_path, monkeypatch):
    import vtpu.storage as storage_mod

    monkeypatch.setattr(storage_mod, "CHUNK_RECORDS", 100)
    rows = [(key(3, 1 + i // 100, 1 + i % 100), b"x" * (i % 50), 1, 1.0, 1.0)
            for i in range(1000)]
    with Storage(tmp_path) as s:
        s.put_many(rows)
        s.commit()
        s.fold()
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    before = dict(con.execute("SELECT first, body FROM chunks"))
    assert len(before) == 10
    with Storage(tmp_path) as s:
        s.put(rows[550][0], b"changed", 2, 1.0, 3.0)
        s.delete([rows[990][0]])
        s.fold()
        got = rows_of(s)
    after = dict(con.execute("SELECT first, body FROM chunks"))
    con.close()
    assert [k for k in before if before[k] != after.get(k)] == [rows[500][0], rows[900][0]]
    assert len(got) == 999 and got[550] == (rows[550][0], b"changed", 2, 1.0, 3.0)


def test_close_folds_once_enough_was_written(tmp_path, monkeypatch):
    import vtpu.storage as storage_mod

    monkeypatch.setattr(storage_mod, "FOLD_MIN_ROWS", 50)
    with Storage(tmp_path) as s:
        s.put_many([(key(4, i), b"a", 1, 1.0, 1.0) for i in range(1, 50)])
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
    with Storage(tmp_path) as s:
        s.put(key(4, 50), b"a", 1, 1.0, 1.0)
    assert con.execute("SELECT count(*), sum(n) FROM chunks").fetchone() == (1, 50)
    assert con.execute("SELECT count(*) FROM scrolls").fetchone() == (0,)
    con.close()


def test_deletion_after_the_checkpoint_survives_kill(tmp_path):
    with Storage(tmp_path) as s:
        s.put_many([(key(5, i), b"v", 1, 1.0, 1.0) for i in range(1, 21)])
        s.commit()
        s.fold()
    r = run_py(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(tmp_path)!r}, fsync="everysec")
        s.delete([bytes.fromhex({key(5, 3).hex()!r}), bytes.fromhex({key(5, 9).hex()!r})])
        s.commit()
        s.put(bytes.fromhex({key(5, 9).hex()!r}), b"again", 2, 1.0, 2.0)
        s.commit()
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr
    with Storage(tmp_path) as s:
        got = rows_of(s)
    assert [g[0] for g in got] == [key(5, i) for i in range(1, 21) if i != 3]
    assert got[7] == (key(5, 9), b"again", 2, 1.0, 2.0)


def test_flipped_deletion_record_is_an_error(tmp_path):
    with Storage(tmp_path) as s:
        s.put_many([(key(6, i), b"v", 1, 1.0, 1.0) for i in range(1, 5)])
        s.commit()
        s.fold()
        s.delete([key(6, 2)])
        s.commit()
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    con.execute("UPDATE deleted SET key = ?", (key(6, 3),))
    con.commit()
    con.close()
    with pytest.raises(StorageError, match=r"deletion record of 6\.3\.1/.* fails its checksum"):
        Storage(tmp_path)


def test_format_2_store_opens_and_folds(tmp_path):
    """A store written by format 2 (checksummed rows, no checkpoint) opens as it is, and
    a fold then moves its rows into chunks."""
    from vtpu.engine import Engine
    from vtpu.protocol import pack_value

    rows = _core.seal_records([(key(1, 2, 3, 0xF000, 1, 1, 1, 1, 1 + i), pack_value(f"v2 {i}"),
                                1 + i, 1700000000.0 + i, 1700000001.0 + i) for i in range(100)])
    meta = {"format_version": "2", "created_at": "1700000000.5", "commit": "4"}
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL);
        CREATE TABLE scrolls (key BLOB PRIMARY KEY NOT NULL, content BLOB NOT NULL,
            version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            crc INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL, crc INTEGER NOT NULL);
    """)
    con.executemany("INSERT INTO meta VALUES (?, ?, ?)",
                    [(k, v, storage_crc_meta(k, v)) for k, v in meta.items()])
    con.execute("INSERT INTO names VALUES (0, 'query', ?)", (storage_crc_name(0, "query"),))
    con.executemany("INSERT INTO scrolls VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    e = Engine(Storage(tmp_path))
    assert e.storage.commit_seq == 4
    assert [e.get(r[0]).content for r in rows] == [f"v2 {i}" for i in range(100)]
    e.close()
    with Storage(tmp_path) as s:
        assert s.fold() == 100
        assert [r[:5] for r in rows_of(s)] == [r[:5] for r in rows]
    e = Engine(Storage(tmp_path))
    assert [e.get(r[0]).content for r in rows] == [f"v2 {i}" for i in range(100)]
    assert e.get(rows[7][0]).version == 8
    e.close()
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    assert con.execute("SELECT value FROM meta WHERE key='format_version'").fetchone() == \
        (str(FORMAT_VERSION),)
    con.close()


def storage_crc_meta(k: str, v: str) -> int:
    h = _core.xxh64(v.encode(), _core.xxh64(k.encode()))
    return h - (1 << 64) if h >= 1 << 63 else h


def storage_crc_name(i: int, name: str) -> int:
    h = _core.xxh64(name.encode(), i)
    return h - (1 << 64) if h >= 1 << 63 else h


def test_disk_full_during_a_fold_changes_nothing(tmp_path):
    with SmallFS(tmp_path) as fs:
        if fs.kind != "tmpfs":
            # A file size cap at the database's size never stops the fold's WAL.
            pytest.skip("needs a tmpfs (root)")
        d = os.path.join(fs.path, "data")
        # 4 MB: the fold's WAL outgrows its 3 MB preallocation, and fits once freed.
        rows = [(key(8, 1 + i // 100, 1 + i % 100), os.urandom(4000), 1, 1.0, 1.0)
                for i in range(1000)]
        with Storage(d, fsync="never") as s:   # closed unfolded: the WAL is removed
            s.put_many(rows)
            s.commit()
        with Storage(d, fsync="always") as s:
            seq = s.commit_seq
            fs.fill()
            with pytest.raises(StorageError):
                s.fold()
            assert s.commit_seq == seq
            assert rows_of(s) == rows
            fs.free()
            assert s.fold() == 1000
            assert rows_of(s) == rows
        with Storage(d) as s:
            assert rows_of(s) == rows


def test_flipped_name_bit_is_an_error(tmp_path):
    from vtpu.engine import Engine

    _engine_store(tmp_path)
    _flip_bit_in(tmp_path / DB_FILENAME, b"name7", bit=1)
    with pytest.raises(StorageError, match=r"name table entry 7 \('name5'\) fails its checksum"):
        Engine(Storage(tmp_path))


def test_flipped_version_or_time_bit_is_an_error(tmp_path):
    with Storage(tmp_path) as s:
        s.put(key(1), b"x", 7, 1.0, 2.0)
        s.commit()
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    for column, value in (("version", 8), ("updated_at", 2.0000000000000004), ("key", key(2))):
        con.execute(f"UPDATE scrolls SET {column} = ?", (value,))
        con.commit()
        with Storage(tmp_path) as s:
            with pytest.raises(StorageError, match="fails its checksum"):
                rows_of(s)
        con.execute("DELETE FROM scrolls")
        con.execute("INSERT INTO scrolls SELECT * FROM (SELECT ?, ?, 7, 1.0, 2.0, 0)",
                    (key(1), b"x"))
        con.execute("UPDATE scrolls SET crc = ?", (_core.seal_records([(key(1), b"x", 7, 1.0,
                                                                          2.0)])[0][5],))
        con.commit()
    con.close()
    with Storage(tmp_path) as s:
        assert rows_of(s) == [(key(1), b"x", 7, 1.0, 2.0)]


def test_format_1_store_is_migrated(tmp_path):
    """A store written before checksums and commit numbers opens, checksummed."""
    from vtpu.engine import Engine
    from vtpu.protocol import pack_value

    con = sqlite3.connect(tmp_path / DB_FILENAME)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE scrolls (key BLOB PRIMARY KEY NOT NULL, content BLOB NOT NULL,
            version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        INSERT INTO meta VALUES ('format_version', '1'), ('created_at', '1700000000.5');
        INSERT INTO names VALUES (0, 'query'), (1, 'person');
    """)
    rows = [(key(1, 2, 3, 0xF000 + i % 2, 1, 1, 1, 1, 1 + i), pack_value(f"old {i}"), 1 + i,
             1700000000.0 + i, 1700000001.0 + i) for i in range(100)]
    con.executemany("INSERT INTO scrolls VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    e = Engine(Storage(tmp_path))
    assert e.name_table() == ["query", "person"]
    assert [e.get(r[0]).content for r in rows] == [f"old {i}" for i in range(100)]
    assert e.get(rows[7][0]).version == 8 and e.get(rows[7][0]).created_at == 1700000007.0
    e.put(key(9), "new")
    e.close()
    with Storage(tmp_path) as s:
        assert s.commit_seq == 1
        assert len(rows_of(s)) == 101
    con = sqlite3.connect(tmp_path / DB_FILENAME)
    assert con.execute("SELECT value FROM meta WHERE key='format_version'").fetchone() == \
        (str(FORMAT_VERSION),)
    assert con.execute("SELECT value FROM meta WHERE key='created_at'").fetchone() == \
        ("1700000000.5",)
    assert sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master "
                                            "WHERE type='table'")) == \
        ["chunks", "deleted", "meta", "names", "scrolls"]
    con.close()
    _flip_bit_in(tmp_path / DB_FILENAME, b"old 42")  # migrated rows are checked too
    with pytest.raises(StorageError, match="fails its checksum"):
        Engine(Storage(tmp_path))


# ---------------------------------------------------------------------------- refused writes

ALL = "*.*.*/*.*.*/*.*.*"


def _nest(depth: int):
    x = 1
    for _ in range(depth):
        x = [x]
    return x


@pytest.fixture(params=["mem", "file", pytest.param("server", marks=pytest.mark.integration),
                        pytest.param("server-file", marks=pytest.mark.integration)])
def backend(request, tmp_path):
    """A client on every backend: embedded in memory, embedded durable, and a real
    server (in memory or durable); yields (client, reopen) where reopen() gives a client
    over the same store after a restart (durable backends) or None."""
    from vtpu.engine import Engine
    from vtpu.testing import ServerThread

    kind = request.param
    if kind in ("mem", "file"):
        url = "mem://" if kind == "mem" else f"file://{tmp_path / 'data'}"
        c = vtpu.connect(url)
        holder = [c]

        def reopen():
            if kind == "mem":
                return None
            holder[0].close()
            holder[0] = vtpu.connect(url)
            return holder[0]
        yield c, reopen
        holder[0].close()
        return
    engine = Engine(Storage(tmp_path / "data")) if kind == "server-file" else None
    srv = ServerThread(engine).start()
    c = vtpu.connect(f"vtpu://{srv.host}:{srv.port}", timeout=30)
    try:
        yield c, (lambda: None)
    finally:
        c.close()
        srv.stop()
        if engine is not None:
            engine.close()


REFUSED = {
    "lone surrogate": "\ud800x",
    "lone low surrogate": "ok \udfff",
    "surrogate dict key": {"\udc00": 1},
    "surrogate in a list": ["a", ["b", "\ud83d"]],
    "too deep": _nest(300),
    "set": {1, 2},
    "too big an int": 2**64,
}


def _state(c) -> list:
    return [(s.key, s.content, s.version) for s in c.crange(ALL)]


def test_refused_content_changes_nothing_on_every_backend(backend):
    c, reopen = backend
    c.cput("1.1.1/1.1.1/1.1.1", "kept")
    c.cput("1.1.1/1.1.1/1.1.3", "old")
    before = _state(c)
    for what, bad in REFUSED.items():
        with pytest.raises(InterfaceError):
            c.cput("1.1.1/1.1.1/1.1.2", bad)
        with pytest.raises(InterfaceError):
            c.cput("1.1.1/1.1.1/1.1.3", bad)  # over an existing scroll
        with pytest.raises(InterfaceError):  # one bad content refuses the whole batch
            c.cput_many(["1.1.1/1.1.1/1.2.1", "1.1.1/1.1.1/1.1.3", "1.1.1/1.1.1/1.2.2"],
                        ["fine", "fine too", bad])
        assert c.cget("1.1.1/1.1.1/1.1.2") is None, what
        assert c.cget("1.1.1/1.1.1/1.2.1") is None, what
        assert _state(c) == before, what
        assert c.crange(ALL, count=True) == 2
    # Arrays whose rows become refused scalars are refused as a batch too.
    for bad_rows in (np.array(["ok", "\ud800"]), np.array([1 + 2j, 3j])):
        with pytest.raises(InterfaceError):
            c.cput_many(["1.1.1/1.1.1/1.2.1", "1.1.1/1.1.1/1.2.2"], bad_rows)
    assert _state(c) == before
    # The same contents are accepted alike everywhere.
    c.cput("1.1.1/1.1.1/1.1.2", "\u00e9\u4e2d \U0001f600")
    c.cput("1.1.1/1.1.1/1.1.4", _nest(256))
    c.cput_many(["1.1.1/1.1.1/1.2.1", "1.1.1/1.1.1/1.2.2"], np.array(["ok", "\u00e9"]))
    assert c.cget("1.1.1/1.1.1/1.1.2").content == "\u00e9\u4e2d \U0001f600"
    assert c.cget("1.1.1/1.1.1/1.1.4").content == _nest(256)
    assert [c.cget(f"1.1.1/1.1.1/1.2.{i}").content for i in (1, 2)] == ["ok", "\u00e9"]
    after = _state(c)
    c2 = reopen()
    if c2 is not None:
        assert _state(c2) == after


def test_refused_write_on_file_is_not_stored_after_reopen(tmp_path):
    url = f"file://{tmp_path}"
    c = vtpu.connect(url)
    c.cput("1.1.1/1.1.1/1.1.1", "kept")
    with pytest.raises(InterfaceError, match="lone surrogate"):
        c.cput("1.1.1/1.1.1/1.1.2", "\ud800x")
    with pytest.raises(InterfaceError, match="lone surrogate"):
        c.cput_many(["1.1.1/1.1.1/1.1.3", "1.1.1/1.1.1/1.1.4"], ["ok", "\ud800"])
    c.close()
    c = vtpu.connect(url)
    assert [s.content for s in c.crange(ALL)] == ["kept"]
    c.close()


# ---------------------------------------------------------------------------- disk full


def _fill_until_failing(c, coord_of, big, limit: int = 400) -> tuple[list, list]:
    """Write big scrolls until writes fail; returns (acknowledged, refused) indexes."""
    acked, refused = [], []
    for i in range(limit):
        try:
            c.cput(coord_of(i), big + str(i))
            acked.append(i)
        except StorageError:
            refused.append(i)
            if len(refused) >= 200:
                break
    return acked, refused


def test_disk_full_file_backend_changes_nothing_and_recovers(tmp_path):
    def coord(i):
        return f"2.1.1/1.1.1/1.{1 + i // 100}.{1 + i % 100}"

    big = "x" * 65536
    with SmallFS(tmp_path) as fs:
        url = f"file://{fs.path}/data"
        c = vtpu.connect(url, fsync="always")
        c.cput("1.1.1/1.1.1/1.1.1", "before")
        fs.fill()
        acked, refused = _fill_until_failing(c, coord, big)
        assert len(refused) >= 150, (fs.kind, len(acked))
        # Nothing refused is visible, counted or indexed.
        assert all(c.cget(coord(i)) is None for i in refused)
        assert c.crange(ALL, count=True) == 1 + len(acked)
        assert [s.key for s in c.crange("2.*.*/*.*.*/*.*.*")] == \
            [c.cget(coord(i)).key for i in acked]
        # A refused write that named a new name leaves no name behind; an overwrite and
        # a delete that fail leave the old scroll.
        with pytest.raises(StorageError):
            c.cput("1.1.1/fresh.1.1/1.1.1", big)
        assert "fresh" not in c.backend.name_table()
        with pytest.raises(StorageError):
            c.cput("1.1.1/1.1.1/1.1.1", big)
        with pytest.raises(StorageError):
            c.cput_many([coord(900), coord(901)], [big, big])
        assert c.cget("1.1.1/1.1.1/1.1.1").content == "before"
        assert c.cget("1.1.1/1.1.1/1.1.1").version == 1
        assert c.cget(coord(900)) is None
        fs.free()
        # Recovers by itself once space returns.
        assert c.cput("1.1.1/1.1.1/1.1.1", "after") == 2
        assert c.cput("1.1.1/fresh.1.1/1.1.1", "named") == 1
        assert c.cdel(coord(acked[0])) == 1
        c.close()
        c = vtpu.connect(url)
        assert c.cget("1.1.1/1.1.1/1.1.1").content == "after"
        assert c.cget("1.1.1/fresh.1.1/1.1.1").content == "named"
        assert sorted(s.content for s in c.crange("2.*.*/*.*.*/*.*.*")) == \
            sorted(big + str(i) for i in acked[1:])
        c.close()


def test_failed_group_commits_are_undone_exactly(tmp_path):
    """Random groups of puts, batched puts with repeated keys, deletes and new names,
    each ending in a commit that fails: afterwards the engine (map, index, name table)
    is exactly as before the group; once space returns the same kind of group sticks."""
    from vtpu.engine import Engine

    rng = random.Random(7)
    big = b"\x01" * 200000
    coords = [key(1, 1, 1, 1, 1, 1, 1, 1 + i // 20, 1 + i % 20) for i in range(60)]

    def snapshot(e):
        return ({s.key: (s.version, s.content) for s in e.range(_core.parse_pattern(ALL))},
                [bytes(k) for k in _core.pack_many(e.range(_core.parse_pattern(ALL),
                                                           keys_only=True))],
                e.name_table(), e.count(_core.parse_pattern(ALL)))

    def group(e, g):
        for _ in range(rng.randrange(1, 8)):
            op = rng.choice(["put", "put_many", "del", "del_many", "intern"])
            if op == "put":
                e.put(rng.choice(coords), f"g{g} {rng.random()}")
            elif op == "put_many":
                ks = [rng.choice(coords) for _ in range(rng.randrange(1, 6))]
                e.put_many(b"".join(ks), [f"m{g} {i}" for i in range(len(ks))])
            elif op == "del":
                e.delete(rng.choice(coords))
            elif op == "del_many":
                e.delete_many(b"".join(rng.sample(coords, 4)))
            else:
                e.intern([f"n{g}_{rng.randrange(3)}"])
        e.put(rng.choice(coords), big)  # no room for this: the whole group fails

    with SmallFS(tmp_path) as fs:
        e = Engine(Storage(os.path.join(fs.path, "data"), fsync="always"), autocommit=False)
        e.put_many(b"".join(coords[:30]), [f"base {i}" for i in range(30)])
        e.commit()
        fs.fill()
        while True:  # use up whatever room the WAL still has
            e.put(coords[59], big)
            try:
                e.commit()
            except StorageError:
                break
        for g in range(40):
            before = snapshot(e)
            group(e, g)
            with pytest.raises(StorageError):
                e.commit()
            assert snapshot(e) == before, g
        fs.free()
        group(e, 99)
        e.commit()
        after = snapshot(e)
        e.close()
        e = Engine(Storage(os.path.join(fs.path, "data")))
        assert snapshot(e) == after
        e.close()


# ---------------------------------------------------------------------------- engine level


def _engine_mod():
    return pytest.importorskip("vtpu.engine")


CONTENTS = [
    "text \u00e9\u4e2d\r\n", "", b"", b"\x00\xffbytes", 0, -2**63, 2**64 - 1, 1.5, float("inf"),
    None, True, [1, "two", [3.0]], {"a": 1, "b": [b"x", None]},
    np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 5), dtype=np.int8),
    np.array([1, 2, 3], dtype=">u2"), np.array([[True, False]]), np.float64(2.5) * np.ones(7),
]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and np.array_equal(a, b) and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("="))
    if isinstance(a, float) and isinstance(b, float):
        return a == b
    return type(a) is type(b) and a == b


def test_engine_round_trip_all_content_kinds(tmp_path):
    Engine = _engine_mod().Engine
    e = Engine(storage=Storage(tmp_path, fsync="always"))
    (qid,) = e.intern(["query"])
    keys = []
    for i, c in enumerate(CONTENTS):
        k = key(1, 2, 3, qid if i % 3 == 0 else 4, 5, 6, 7, 8, i + 1)
        keys.append(k)
        e.put(k, c)
    e.put(keys[0], "overwritten")  # version 2
    e.delete(keys[1])
    before = {k: e.get(k) for k in keys}
    e.close()

    e2 = Engine(storage=Storage(tmp_path))
    try:
        assert e2.name_table() == ["query"]
        for k in keys:
            a, b = before[k], e2.get(k)
            if a is None:
                assert b is None
                continue
            assert b is not None
            assert _same(a.content, b.content), (a.content, b.content)
            assert (a.version, a.created_at, a.updated_at) == (
                b.version, b.created_at, b.updated_at)
        assert e2.get(keys[0]).version == 2
    finally:
        e2.close()


def test_engine_phext_import_export_survives_restart(tmp_path):
    Engine = _engine_mod().Engine
    from vtpu.phext import parse_phext, read_phext

    path = "/work/shared/data/phext/basic.phext"
    if not os.path.exists(path):
        pytest.skip("basic.phext not available")
    with open(path, newline="") as f:
        text = f.read()
    e = Engine(storage=Storage(tmp_path))
    assert e.import_phext(text) == len(read_phext(path))
    e.close()
    e2 = Engine(storage=Storage(tmp_path))
    try:
        assert parse_phext(e2.export_phext()) == sorted(parse_phext(text))
    finally:
        e2.close()


# ---------------------------------------------------------------------------- checkpoint


def test_kill_during_a_fold_keeps_every_row(tmp_path):
    """A fold is one transaction: killed wherever it is, the store opens with every
    committed row, folded or not."""
    r = run_py(f"""
        import os, sys, threading, time
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(tmp_path)!r}, fsync="everysec")
        s.put_many([(bytes([3] * 14) + i.to_bytes(4, "big"), b"r%d" % i, 1, 1.0, 1.0)
                    for i in range(30000)])
        s.commit()
        threading.Thread(target=s.fold, daemon=True).start()
        time.sleep(0.05)
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr
    with Storage(tmp_path) as s:
        got = rows_of(s)
        assert s.fold() in (0, 30000)
        assert rows_of(s) == got
    assert got == [(bytes([3] * 14) + i.to_bytes(4, "big"), b"r%d" % i, 1, 1.0, 1.0)
                   for i in range(30000)]


def test_column_store_loads_chunks_out_of_order(tmp_path):
    """Chunks a sound storage never gives (out of key order) still load every record
    once, sorted, later ones winning."""
    from vtpu.coords import NameTable, Scroll
    from vtpu.protocol import pack_value

    def chunk(ks, tag):
        return _core.pack_rows(_core.seal_records(
            [(key(9, k), pack_value(f"{tag}{k}"), k, 1.0, 2.0) for k in ks]), 100, 1 << 20)

    m = _core.ColumnStore(NameTable())
    assert m.load_chunks(chunk(range(10, 20), "a") + chunk(range(1, 12), "b")) == 21
    assert len(m) == 19
    assert [m[key(9, k)].content for k in range(1, 20)] == \
        [f"b{k}" for k in range(1, 12)] + [f"a{k}" for k in range(12, 20)]
    with pytest.raises(InterfaceError, match="empty store"):
        m.load_chunks(chunk([1], "c"))
