"""Storage: round trips, group commit semantics, locking, corruption and torn files.

Contents are opaque bytes at this level (the engine encodes them), so these tests use
arbitrary byte strings; the engine-level round trip of every content kind lives in the
crash/integration tests.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtpu.errors import InterfaceError, StorageError
from vtpu.storage import DB_FILENAME, FORMAT_VERSION, Storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def key(*c: int) -> bytes:
    c = tuple(c) + (1,) * (9 - len(c))
    return struct.pack(">9H", *c)


def rows_of(st_: Storage) -> list[tuple]:
    names, it = st_.load()
    return list(it)


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
        assert got == sorted(rows)  # key order = coordinate order, values bit-exact
        assert s.count() == len(rows)
        for g in got:
            assert type(g[0]) is bytes and type(g[1]) is bytes
            assert type(g[2]) is int and type(g[3]) is float and type(g[4]) is float


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
        with pytest.raises(InterfaceError, match="18 bytes"):
            s.put(b"short", b"x", 1, 1.0, 1.0)
        # a row of the wrong type: commit fails loudly and keeps the batch queued
        s.put_many([(key(1), {"not": "bytes"}, 1, 1.0, 1.0)])
        with pytest.raises(StorageError):
            s.commit()
        assert s.pending == 1
        assert s.discard_pending() == 1
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


def test_lock_refused_by_other_process(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {ROOT!r})
            from vtpu.storage import Storage
            s = Storage({str(tmp_path)!r})
            print("locked", flush=True)
            sys.stdin.readline()
            s.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError) as ei:
            Storage(tmp_path)
        msg = str(ei.value)
        assert str(tmp_path) in msg
        assert f"pid {child.pid}" in msg
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    Storage(tmp_path).close()


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
    with Storage(path, fsync="never") as s:
        s.put_many([(key(1, 1, 1, 1, 1, 1, 1, 1 + i // 500, 1 + i % 500), os.urandom(200), 1,
                     1.0, 1.0) for i in range(n)])
        s.commit()
        s.checkpoint()
    return os.path.join(path, DB_FILENAME)


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


def test_torn_wal_tail_keeps_a_consistent_prefix(tmp_path):
    """A crash while the WAL was being appended (simulated by cutting its tail) must
    lose at most the unfinished transaction, never corrupt earlier ones."""
    r = run_py(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from vtpu.storage import Storage
        s = Storage({str(tmp_path)!r}, fsync="always")
        s.put_many([(bytes([1] * 17 + [i]), b"first" * 100, 1, 1.0, 1.0) for i in range(50)])
        s.commit()
        s.put_many([(bytes([2] * 17 + [i]), b"second" * 100, 1, 1.0, 1.0) for i in range(50)])
        s.commit()
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9, r.stderr
    wal = tmp_path / (DB_FILENAME + "-wal")
    size = os.path.getsize(wal)
    assert size > 0
    with open(wal, "r+b") as f:
        f.truncate(size - 1000)  # the second transaction's last frame is torn
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
