"""Durable storage for the engine: SQLite in WAL mode under a data directory.

The engine keeps every scroll in memory; this module is its write-behind log and its
snapshot on restart. Contents arrive already encoded (opaque ``bytes``), keys are the
18-byte packed coordinates, and rows come back in key (= coordinate) order.

Layout of a data directory::

    DIR/LOCK              flock()-ed for the life of a Storage; holds the owner's pid
    DIR/vtpu.sqlite3      the database (plus -wal / -shm files while open)

Tables: ``scrolls(key BLOB PRIMARY KEY, content BLOB, version, created_at, updated_at)``
(``WITHOUT ROWID``, so the B-tree is clustered on the key), ``names(id, name)`` where
``id`` is the index into the name table (name id = 0xF000 + index), and ``meta(key,
value)`` holding ``format_version``.

Group commit
------------
:meth:`Storage.put`, :meth:`~Storage.put_many`, :meth:`~Storage.delete` and
:meth:`~Storage.add_names` only queue work in memory. :meth:`Storage.commit` writes
everything queued since the last commit in **one** SQLite transaction, in the order it
was queued. The server calls ``commit()`` once per event-loop batch, before it sends the
acknowledgements of that batch, so one fsync covers many writes.

Guarantees per ``fsync`` policy (for writes whose ``commit()`` has returned)
---------------------------------------------------------------------------
``"always"``
    ``PRAGMA synchronous=FULL``: SQLite fsyncs the WAL before ``COMMIT`` returns, so
    ``commit()`` returns only once the batch is on stable storage. Every acknowledged
    write survives ``kill -9`` of the process *and* an OS crash or power loss (to the
    extent the disk honours fsync).
``"everysec"`` (default)
    ``PRAGMA synchronous=NORMAL``: ``COMMIT`` hands the WAL frames to the OS (``write``)
    without fsync. A background thread fsyncs the WAL at most once a second, and only
    when something was committed since its last fsync. Every acknowledged write
    survives ``kill -9`` (the data is in the OS page cache); on an OS crash or power
    loss, at most about the last second of acknowledged writes is lost. The database
    is never corrupted by either (SQLite's WAL frames are checksummed; a torn tail is
    discarded on the next open, leaving an earlier, consistent state).
``"never"``
    ``PRAGMA synchronous=OFF``: nothing is ever fsynced by vtpu or SQLite. Acknowledged
    writes still survive ``kill -9`` (they were written to the OS before ``commit()``
    returned), but an OS crash or power loss can lose any amount of recent data and,
    per SQLite's documentation, may corrupt the database (reported as
    :class:`~vtpu.errors.StorageError` on the next open, never silently).

Writes queued but not yet committed are not durable under any policy.
:meth:`Storage.close` commits what is queued and fsyncs before returning, whatever the
policy, so a clean shutdown loses nothing.

Failure reporting
-----------------
* A second process (or a second ``Storage`` in the same process) opening the same
  directory gets :class:`~vtpu.errors.StorageError` naming the directory and the pid
  recorded by the holder.
* A database file that is not SQLite, is truncated, or fails ``PRAGMA quick_check`` on
  open raises :class:`~vtpu.errors.StorageError` naming the file; so does any
  ``sqlite3`` error later (disk full, I/O error). Nothing is dropped silently.
* A failed ``commit()`` rolls the transaction back and keeps the queued batch, so a
  later ``commit()`` retries it; the caller must not acknowledge the writes.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from typing import Iterable, Iterator, Sequence

from ._core import KEY_BYTES as KEY_SIZE
from .errors import InterfaceError, StorageError

__all__ = ["Storage", "FORMAT_VERSION", "DB_FILENAME", "LOCK_FILENAME", "FSYNC_POLICIES"]

FORMAT_VERSION = 1
DB_FILENAME = "vtpu.sqlite3"
LOCK_FILENAME = "LOCK"
FSYNC_POLICIES = ("always", "everysec", "never")

# Rows per fetchmany() in load(): large batches keep the per-row cost in C.
LOAD_BATCH = 65536
# A put segment this large is sorted by key before insertion: inserting into the clustered
# B-tree in key order touches each page once instead of randomly (bulk imports).
SORT_THRESHOLD = 4096
# Size the WAL is grown to at open (just under the 1000-page autocheckpoint, 4 KiB pages).
WAL_PREALLOC = 3 << 20

_SYNCHRONOUS = {"always": "FULL", "everysec": "NORMAL", "never": "OFF"}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS scrolls ("
    " key BLOB PRIMARY KEY NOT NULL,"
    " content BLOB NOT NULL,"
    " version INTEGER NOT NULL,"
    " created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
)

_PUT_SQL = (
    "INSERT OR REPLACE INTO scrolls (key, content, version, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_DEL_SQL = "DELETE FROM scrolls WHERE key = ?"
_NAME_SQL = "INSERT OR REPLACE INTO names (id, name) VALUES (?, ?)"

# Segment kinds in the pending queue.
_PUT, _DEL, _NAMES = 0, 1, 2


class Storage:
    """Durable, exclusively locked store of scrolls and names in a data directory.

    :param path: the data directory; created (with parents) if missing.
    :param fsync: ``"always"``, ``"everysec"`` (default) or ``"never"``; see the module
        docstring for exactly what each guarantees.
    :param check: run ``PRAGMA quick_check`` on open (default ``True``). It reads every
        page, so a corrupt database is reported at start-up rather than half-way through
        serving; turn it off only for very large stores whose start-up time matters more.
    :raises StorageError: the directory is locked by another Storage/process, the
        database is corrupt, of an unknown format version, or cannot be created.
    :raises InterfaceError: ``fsync`` is not one of the three policies.

    Thread safety: methods may be called from any thread; an internal lock serialises
    them. The intended use is one owner (the server's event loop or an embedded engine).
    Usable as a context manager (``close()`` on exit).
    """

    def __init__(self, path: str | os.PathLike, fsync: str = "everysec", check: bool = True):
        if fsync not in _SYNCHRONOUS:
            raise InterfaceError(
                f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}; got {fsync!r}"
            )
        self.path = os.path.abspath(os.fspath(path))
        self.fsync = fsync
        self.db_path = os.path.join(self.path, DB_FILENAME)
        self._wal_path = self.db_path + "-wal"
        self._mutex = threading.RLock()
        self._segments: list[list] = []  # [[kind, payload-list], ...] in queue order
        self._closed = False
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._dirty = False  # committed since the last fsync (everysec)
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()
        self._sync_error: BaseException | None = None
        self.commits = 0
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data directory {self.path!r}: {exc}") from exc
        self._acquire_lock()
        try:
            self._open_db(check)
        except BaseException:
            self._release()
            raise
        if fsync == "everysec":
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"vtpu-fsync:{self.path}", daemon=True
            )
            self._syncer.start()

    # ------------------------------------------------------------------ opening

    def _acquire_lock(self) -> None:
        lock_path = os.path.join(self.path, LOCK_FILENAME)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {lock_path!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                pid = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                if pid:
                    holder = f" (held by pid {pid})"
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(
                    f"data directory {self.path!r} is locked by another vtpu store"
                    f"{holder}; stop that server or use another --data directory"
                ) from None
            raise StorageError(f"cannot lock data directory {self.path!r}: {exc}") from exc
        # Record our pid so a refused second server can say who holds the directory.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_db(self, check: bool) -> None:
        existed = os.path.exists(self.db_path) and os.path.getsize(self.db_path) > 0
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (one per commit()).
            conn = sqlite3.connect(
                self.db_path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.db_path!r}: {exc}") from exc
        self._conn = conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"cannot put {self.db_path!r} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
            # Larger page cache and mmap: bulk loads and the start-up scan stay in memory.
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA mmap_size=268435456")
            conn.execute("PRAGMA temp_store=MEMORY")
            if existed and check:
                rows = conn.execute("PRAGMA quick_check").fetchall()
                if rows != [("ok",)]:
                    detail = "; ".join(str(r[0]) for r in rows[:5])
                    raise StorageError(
                        f"database {self.db_path!r} is corrupt (quick_check: {detail}); "
                        "restore it from a backup or move it away to start empty"
                    )
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            row = conn.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('format_version', ?)",
                    (str(FORMAT_VERSION),),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)",
                    (repr(time.time()),),
                )
            elif row[0] != str(FORMAT_VERSION):
                raise StorageError(
                    f"database {self.db_path!r} has format version {row[0]}, this vtpu "
                    f"reads version {FORMAT_VERSION}"
                )
            conn.execute("COMMIT")
            if self.fsync != "never":
                self._preallocate_wal()
        except StorageError:
            self._rollback_quietly()
            raise
        except sqlite3.Error as exc:
            self._rollback_quietly()
            raise StorageError(
                f"database {self.db_path!r} is unreadable or corrupt ({exc}); restore it "
                "from a backup or move it away to start empty"
            ) from exc

    def _preallocate_wal(self) -> None:
        """Grow the WAL file to its working size once, then restart it at offset 0.

        SQLite never shrinks the WAL (no journal_size_limit), so later commits overwrite
        existing blocks instead of appending; fdatasync then need not also flush the file
        size, which makes a durable commit ~1.5x faster on a fresh WAL. Costs one ~4 MB
        unsynced write at open, and leaves ~4 MB of free pages in the database file that
        later writes reuse.
        """
        try:
            if os.path.getsize(self._wal_path) >= WAL_PREALLOC:
                return
        except OSError:
            pass
        conn = self._conn
        conn.execute("PRAGMA synchronous=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE _wal_prealloc (x BLOB)")
            conn.execute("INSERT INTO _wal_prealloc VALUES (zeroblob(?))", (WAL_PREALLOC,))
            conn.execute("DROP TABLE _wal_prealloc")
            conn.execute("COMMIT")
            # RESTART: copy everything back and make the next writer start at frame 0.
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
        self._fsync_wal()

    def _rollback_quietly(self) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # ------------------------------------------------------------------ reading

    def load(self) -> tuple[list[str], Iterator[tuple]]:
        """Read the whole store back (engine start-up).

        :returns: ``(names, rows)``: ``names[i]`` is the name with id ``0xF000 + i``;
            ``rows`` is an iterator of ``(key, content, version, created_at,
            updated_at)`` tuples in key (coordinate) order, read lazily in large batches.
            Exhaust it before the next write to this Storage.
        :raises StorageError: the store is closed or the database is unreadable/corrupt
            (also raised from the iterator if corruption is found mid-scan).
        """
        with self._mutex:
            self._check_open()
            try:
                names = self._read_names()
            except sqlite3.Error as exc:
                raise self._db_error("reading the name table", exc) from exc
        return names, self._iter_rows()

    def iter_batches(self, size: int = LOAD_BATCH) -> Iterator[list[tuple]]:
        """Yield all rows in key order as lists of up to ``size`` tuples.

        Same rows as :meth:`load`; handy for building arrays a batch at a time.

        :param size: rows per batch (default 65536).
        :raises StorageError: closed store or unreadable database.
        """
        self._check_open()
        cur = self._conn.cursor()  # own cursor: independent of the write path
        try:
            cur.execute(
                "SELECT key, content, version, created_at, updated_at FROM scrolls ORDER BY key"
            )
            while True:
                batch = cur.fetchmany(size)
                if not batch:
                    return
                yield batch
        except sqlite3.Error as exc:
            raise self._db_error("reading scrolls", exc) from exc
        finally:
            cur.close()

    def _iter_rows(self) -> Iterator[tuple]:
        for batch in self.iter_batches():
            yield from batch

    def _read_names(self) -> list[str]:
        rows = self._conn.execute("SELECT id, name FROM names ORDER BY id").fetchall()
        names = [name for _, name in rows]
        for i, (ident, name) in enumerate(rows):
            if ident != i:
                raise StorageError(
                    f"database {self.db_path!r} name table has a gap: id index {i} is "
                    f"missing (next stored index {ident}, name {name!r})"
                )
        return names

    def count(self) -> int:
        """Number of committed scrolls (pending writes not included).

        :raises StorageError: closed store or unreadable database.
        """
        with self._mutex:
            self._check_open()
            try:
                return self._conn.execute("SELECT count(*) FROM scrolls").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._db_error("counting scrolls", exc) from exc

    # ------------------------------------------------------------------ queueing

    def put(self, key: bytes, content_blob: bytes, version: int, created: float,
            updated: float) -> None:
        """Queue one scroll write (insert or replace); durable after :meth:`commit`.

        :param key: the 18-byte packed coordinate.
        :param content_blob: the encoded content (stored as given).
        :param version: the scroll's version (>= 1).
        :param created: creation time, unix seconds.
        :param updated: last update time, unix seconds.
        :raises InterfaceError: ``key`` is not 18 bytes.
        :raises StorageError: the store is closed.
        """
        if len(key) != KEY_SIZE:
            raise InterfaceError(f"storage key must be {KEY_SIZE} bytes, got {len(key)}")
        row = (key, content_blob, version, created, updated)
        with self._mutex:
            self._check_open()
            segs = self._segments
            if segs and segs[-1][0] == _PUT:
                segs[-1][1].append(row)
            else:
                segs.append([_PUT, [row]])

    def put_many(self, rows: Iterable[Sequence]) -> None:
        """Queue many scroll writes, as :meth:`put` tuples ``(key, content, version,
        created, updated)``; later rows for the same key win.

        :param rows: the rows; keys are not length-checked here (hot path).
        :raises StorageError: the store is closed.
        """
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        with self._mutex:
            self._check_open()
            segs = self._segments
            if segs and segs[-1][0] == _PUT:
                segs[-1][1].extend(rows)
            else:
                segs.append([_PUT, list(rows)])

    def delete(self, keys: Iterable[bytes]) -> None:
        """Queue deletion of scrolls by key; missing keys are ignored.

        :param keys: 18-byte packed coordinates (a list; a single ``bytes`` key is
            accepted too).
        :raises StorageError: the store is closed.
        """
        if isinstance(keys, (bytes, bytearray, memoryview)):
            keys = [bytes(keys)]
        params = [(k,) for k in keys]
        if not params:
            return
        with self._mutex:
            self._check_open()
            segs = self._segments
            if segs and segs[-1][0] == _DEL:
                segs[-1][1].extend(params)
            else:
                segs.append([_DEL, params])

    def add_names(self, first_id_index: int, names: Sequence[str]) -> None:
        """Queue names for the name table: ``names[j]`` gets index ``first_id_index + j``
        (name id ``0xF000 + index``). Committed in the same transaction as the writes
        queued with them, so a stored scroll never refers to an unknown name.

        :param first_id_index: the index of ``names[0]`` (0-based).
        :param names: the names, in id order.
        :raises StorageError: the store is closed.
        """
        params = [(first_id_index + j, str(n)) for j, n in enumerate(names)]
        if not params:
            return
        with self._mutex:
            self._check_open()
            self._segments.append([_NAMES, params])

    def discard_pending(self) -> int:
        """Drop everything queued since the last commit (after a commit failure that
        will not go away, e.g. a row of the wrong type).

        :returns: the number of operations dropped.
        """
        with self._mutex:
            n = sum(len(s[1]) for s in self._segments)
            self._segments = []
            return n

    @property
    def pending(self) -> int:
        """Number of queued operations not yet committed."""
        with self._mutex:
            return sum(len(s[1]) for s in self._segments)

    # ------------------------------------------------------------------ committing

    def commit(self) -> int:
        """Make everything queued durable (per the fsync policy) in one transaction.

        With ``fsync="always"`` this returns only once the data is on stable storage.
        A no-op (cheap) when nothing is queued.

        :returns: the number of queued operations written.
        :raises StorageError: the transaction failed (it is rolled back and the batch
            stays queued for the next ``commit()``), the background fsync failed, or the
            store is closed.
        """
        with self._mutex:
            self._check_open()
            if self._sync_error is not None:
                exc, self._sync_error = self._sync_error, None
                raise StorageError(f"background fsync of {self._wal_path!r} failed: {exc}")
            segs = self._segments
            if not segs:
                return 0
            conn = self._conn
            n = 0
            try:
                conn.execute("BEGIN")
                for kind, payload in segs:
                    n += len(payload)
                    if kind == _PUT:
                        if len(payload) >= SORT_THRESHOLD:
                            # Stable sort: a key written twice keeps its last row last.
                            payload = sorted(payload, key=_row_key)
                        conn.executemany(_PUT_SQL, payload)
                    elif kind == _DEL:
                        conn.executemany(_DEL_SQL, payload)
                    else:
                        conn.executemany(_NAME_SQL, payload)
                conn.execute("COMMIT")
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                self._rollback_quietly()
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error("committing a batch", exc) from exc
                raise StorageError(
                    f"cannot store a queued row in {self.db_path!r}: {exc}"
                ) from exc
            self._segments = []
            self._dirty = True
            self.commits += 1
            return n

    def sync(self) -> None:
        """Commit what is queued and force it to stable storage now (any policy).

        :raises StorageError: on any database or fsync failure.
        """
        with self._mutex:
            self.commit()
            self._fsync_wal()

    def checkpoint(self) -> None:
        """Fold the WAL into the database file and truncate it (e.g. after a bulk load).

        :raises StorageError: on a database failure.
        """
        with self._mutex:
            self._check_open()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise self._db_error("checkpointing", exc) from exc

    def _fsync_wal(self) -> None:
        # fsync() on any descriptor of the file flushes its dirty pages (Linux), so we
        # need not reach into SQLite's own descriptor.
        try:
            fd = os.open(self._wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: everything was checkpointed (and synced) already
        except OSError as exc:
            raise StorageError(f"cannot open {self._wal_path!r} to fsync: {exc}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"fsync of {self._wal_path!r} failed: {exc}") from exc
        finally:
            os.close(fd)
        self._dirty = False

    def _sync_loop(self) -> None:
        # everysec: at most one fsync per second, and none while idle.
        while not self._stop.wait(1.0):
            if not self._dirty:
                continue
            self._dirty = False  # a commit after this point re-arms the next round
            try:
                fd = os.open(self._wal_path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._sync_error = exc
                continue
            try:
                os.fsync(fd)
            except OSError as exc:
                self._sync_error = exc
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Commit what is queued, fsync, close the database and release the lock.

        Idempotent. After close every other method raises :class:`StorageError`.

        :raises StorageError: the final commit failed (the lock is released anyway).
        """
        with self._mutex:
            if self._closed:
                return
            try:
                if self._conn is not None:
                    self.commit()
                    self._fsync_wal()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        self._stop.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Storage {self.path!r} fsync={self.fsync} {state}>"

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.path!r} is closed")

    def _db_error(self, doing: str, exc: sqlite3.Error) -> StorageError:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or type(exc) is sqlite3.DatabaseError:
            return StorageError(
                f"database {self.db_path!r} is corrupt ({doing}: {exc}); restore it "
                "from a backup or move it away to start empty"
            )
        return StorageError(f"database {self.db_path!r} failed while {doing}: {exc}")


def _row_key(row: Sequence) -> bytes:
    return row[0]
