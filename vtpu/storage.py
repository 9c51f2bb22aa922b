"""Durable storage for the engine: SQLite in WAL mode under a data directory.

The engine keeps every scroll in memory; this module is its write-behind log and its
snapshot on restart. Contents arrive already encoded (opaque ``bytes``), keys are the
18-byte packed coordinates, and rows come back in key (= coordinate) order.

Layout of a data directory::

    DIR/                  flock()-ed (the directory itself) for the life of a Storage
    DIR/LOCK              the pid of the current holder (information only)
    DIR/COMMIT            the commit counter: how many commits the store has made
    DIR/vtpu.sqlite3      the database (plus -wal / -shm files while open)

Tables (format version 3):

* ``chunks(first BLOB PRIMARY KEY, n, body)``: the checkpoint. Each row packs ``n``
  records (up to :data:`CHUNK_RECORDS`, or :data:`CHUNK_BYTES` of contents) in key
  order as columns (layout in ``vtpu/core/records.pxi``); ``first`` is its first key,
  and chunks do not overlap. Start-up reads a few hundred wide rows instead of one row
  per scroll, and verifies and loads them in compiled loops.
* ``scrolls(key BLOB PRIMARY KEY, content BLOB, version, created_at, updated_at, crc)``
  (``WITHOUT ROWID``, so the B-tree is clustered on the key): every scroll written
  since the checkpoint; it replaces a checkpoint record of the same key.
* ``deleted(key BLOB PRIMARY KEY, crc)``: keys deleted since the checkpoint (while
  there is one); writing a key again removes it from here.
* ``names(id, name, crc)`` where ``id`` is the index into the name table (name id =
  0xF000 + index), and ``meta(key, value, crc)`` holding ``format_version``,
  ``created_at`` and ``commit`` (the number of the last commit).

A store of format version 2 (no checkpoint tables) gains them on open; one of version 1
(no checksums, no commit number) is migrated on open.

The checkpoint
--------------
:meth:`Storage.checkpoint` folds ``scrolls`` and ``deleted`` into the chunks, in one
transaction (a commit like any other), rewriting only the chunks whose key range they
touch. :meth:`Storage.close` does the same once the rows since the checkpoint reach
1/16 of the checkpoint (at least :data:`FOLD_MIN_ROWS`), so a store closed cleanly
starts fast; after a ``kill -9`` the rows since the last fold are read one by one, as
they always were, until the next fold.

Checksums
---------
Every record carries a checksum of all its fields: for scrolls
``xxh64(content, seed=xxh64(key ‖ le64(version) ‖ le64(created_at bits) ‖
le64(updated_at bits)))`` (sealed once, when the scroll is queued, and kept with the
record when a checkpoint packs it into a chunk), for deletions ``xxh64(key)``, for
names ``xxh64(utf8(name), seed=id)``, for meta ``xxh64(utf8(value),
seed=xxh64(utf8(key)))``, each kept as a signed 64-bit integer. They are verified on
every load (in the compiled core, one call per chunk or batch of rows), so a flipped bit
anywhere in a record, in a chunk's columns or its row is a
:class:`~vtpu.errors.StorageError` naming the record (or the chunk, when its columns do
not add up), never a wrong value.

Group commit
------------
:meth:`Storage.put`, :meth:`~Storage.put_many`, :meth:`~Storage.delete` and
:meth:`~Storage.add_names` only queue work in memory. :meth:`Storage.commit` writes
everything queued since the last commit in **one** SQLite transaction, in the order it
was queued, together with the new commit number. The server calls ``commit()`` once per
event-loop batch, before it sends the acknowledgements of that batch, so one fsync
covers many writes.

SQLite's automatic WAL checkpoint is off: it runs inside whichever ``COMMIT`` crosses
1,000 pages, copying them into the database and fsyncing it on the committing thread.
The storage's sync thread checkpoints instead (PASSIVE, on a connection of its own,
every :data:`CHECKPOINT_SECONDS` after a commit, with the policy's fsyncs), so a commit
only writes its own frames. A checkpoint that fails (a full disk) loses nothing: the
frames stay in the WAL, which grows until one succeeds.

The commit counter
------------------
SQLite keeps recent commits in the WAL file only; a WAL that is deleted, truncated or
damaged after a crash makes SQLite fall back to an older state without complaint. So
every commit also stores its number outside the WAL, in ``DIR/COMMIT`` (two
checksummed records written in place, alternately, so a torn write leaves the other
intact), and on open a database *behind* the counter is refused with a
:class:`~vtpu.errors.StorageError` naming both numbers. Each record holds ``seq`` (the
last commit written to the OS), ``synced`` (the last commit known to be on stable
storage) and the boot id of the machine that wrote it. The counter never claims more
than the database holds: ``seq`` is written after SQLite's ``COMMIT`` returned and
``synced`` after the fsync that made it durable. On open:

* same boot (the OS did not crash or restart since): the database must hold ``seq``,
  i.e. every commit that returned, under every policy;
* after a reboot: the database must hold ``synced``; commits after it may have been
  lost by the OS crash exactly as the fsync policy allows (below), and are logged.

Removing ``DIR/COMMIT`` accepts the database as it is (a warning is logged); that is the
way to start from a database restored without its WAL.

Guarantees per ``fsync`` policy (for writes whose ``commit()`` has returned)
---------------------------------------------------------------------------
``"always"``
    ``PRAGMA synchronous=FULL``: SQLite fsyncs the WAL before ``COMMIT`` returns, so
    ``commit()`` returns only once the batch is on stable storage. Every acknowledged
    write survives ``kill -9`` of the process *and* an OS crash or power loss (to the
    extent the disk honours fsync). The counter's ``synced`` follows every commit; its
    file is fsynced by a background thread at most once a second, so after an OS crash
    the loss of a WAL is still detected for all but at most the last second of commits.
``"everysec"`` (default)
    ``PRAGMA synchronous=NORMAL``: ``COMMIT`` hands the WAL frames to the OS (``write``)
    without fsync. A background thread fsyncs the WAL at most once a second, and only
    when something was committed since its last fsync, then advances ``synced`` and
    fsyncs the counter. Every acknowledged write survives ``kill -9`` (the data is in
    the OS page cache); on an OS crash or power loss, at most about the last second of
    acknowledged writes is lost. The database is never corrupted by either (SQLite's
    WAL frames are checksummed; a torn tail is discarded on the next open, leaving an
    earlier, consistent state).
``"never"``
    ``PRAGMA synchronous=OFF``: nothing is fsynced while serving (only on open, close
    and :meth:`Storage.sync`). Acknowledged writes still survive ``kill -9`` (they were
    written to the OS before ``commit()`` returned), but an OS crash or power loss can
    lose anything since the last open/close/sync and, per SQLite's documentation, may
    corrupt the database (reported as :class:`~vtpu.errors.StorageError` on the next
    open, never silently).

Writes queued but not yet committed are not durable under any policy.
:meth:`Storage.close` commits what is queued and fsyncs before returning, whatever the
policy, so a clean shutdown loses nothing.

Failure reporting
-----------------
* A second process (or a second ``Storage`` in the same process) opening the same
  directory gets :class:`~vtpu.errors.StorageError` naming the directory and the pid
  recorded by the holder. The lock is an ``flock`` on the directory, held on an open
  descriptor, so deleting ``LOCK`` does not release it.
* A database file that is not SQLite, is truncated, fails ``PRAGMA quick_check`` or a
  record checksum, or is behind the commit counter raises
  :class:`~vtpu.errors.StorageError` naming the file; so does any ``sqlite3`` error
  later (disk full, I/O error). Nothing is dropped silently.
* A failed ``commit()`` rolls the transaction back and drops the queued batch: the
  caller must not acknowledge those writes and must undo what it showed of them (the
  engine does); the next ``commit()`` starts afresh, so the store recovers by itself
  once the cause (e.g. a full disk) is gone.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
from typing import Iterable, Iterator, Sequence

from . import _core
from ._core import KEY_BYTES as KEY_SIZE
from .errors import CoordinateError, InterfaceError, StorageError

__all__ = [
    "Storage", "FORMAT_VERSION", "DB_FILENAME", "LOCK_FILENAME", "COUNTER_FILENAME",
    "FSYNC_POLICIES", "CHUNK_RECORDS", "CHUNK_BYTES", "FOLD_MIN_ROWS",
]

log = logging.getLogger("vtpu.storage")

FORMAT_VERSION = 3
DB_FILENAME = "vtpu.sqlite3"
LOCK_FILENAME = "LOCK"
COUNTER_FILENAME = "COMMIT"
FSYNC_POLICIES = ("always", "everysec", "never")

# Rows per fetchmany() when reading rows: large batches keep the per-row cost in C.
LOAD_BATCH = 65536
# A checkpoint chunk holds up to this many records, and this many content bytes (a
# larger record gets a chunk of its own): a few hundred KB, well under SQLite's 1 GB.
CHUNK_RECORDS = 4096
CHUNK_BYTES = 4 << 20
# close() folds the rows since the checkpoint into it once they are this many, and 1/16
# of the checkpoint's records (the fold rewrites the chunks they touch).
FOLD_MIN_ROWS = 16384
# A put segment this large is sorted by key before insertion: inserting into the clustered
# B-tree in key order touches each page once instead of randomly (bulk imports).
SORT_THRESHOLD = 4096
# Size the WAL is grown to at open (about what it holds between two checkpoints).
WAL_PREALLOC = 3 << 20
# How often the background thread checkpoints the WAL into the database (when anything
# was committed since): SQLite's own autocheckpoint is off, as it runs inside whichever
# COMMIT crosses 1000 pages, copying pages and fsyncing the database file on the
# server's loop thread (a 10 ms pause in the middle of a stream of small commits).
CHECKPOINT_SECONDS = 0.25

_SYNCHRONOUS = {"always": "FULL", "everysec": "NORMAL", "never": "OFF"}

# Tables added by format 3 (a format-2 store gains them on open).
_SCHEMA_3 = (
    "CREATE TABLE chunks (first BLOB PRIMARY KEY NOT NULL, n INTEGER NOT NULL,"
    " body BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE deleted (key BLOB PRIMARY KEY NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID",
)
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE scrolls ("
    " key BLOB PRIMARY KEY NOT NULL,"
    " content BLOB NOT NULL,"
    " version INTEGER NOT NULL,"
    " created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL,"
    " crc INTEGER NOT NULL"
    ") WITHOUT ROWID",
    "CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL, crc INTEGER NOT NULL)",
) + _SCHEMA_3

_PUT_SQL = (
    "INSERT OR REPLACE INTO scrolls (key, content, version, created_at, updated_at, crc)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_DEL_SQL = "DELETE FROM scrolls WHERE key = ?"
_TOMB_SQL = "INSERT OR REPLACE INTO deleted (key, crc) VALUES (?, ?)"
_RANGE_KEYS_SQL = "SELECT key FROM scrolls WHERE key BETWEEN ? AND ? LIMIT ?"
_UNTOMB_SQL = "DELETE FROM deleted WHERE key = ?"
_CHUNK_SQL = "INSERT INTO chunks (first, n, body) VALUES (?, ?, ?)"
_NAME_SQL = "INSERT OR REPLACE INTO names (id, name, crc) VALUES (?, ?, ?)"
_META_SQL = "INSERT OR REPLACE INTO meta (key, value, crc) VALUES (?, ?, ?)"
_SELECT_SQL = (
    "SELECT key, content, version, created_at, updated_at, crc FROM scrolls ORDER BY key"
)

# Segment kinds in the pending queue.
_PUT, _DEL, _NAMES = 0, 1, 2

# The commit counter file: two records at these offsets (separate disk sectors), each
# magic, seq, synced, boot id, then the xxh64 of those 40 bytes.
_COUNTER = struct.Struct("<8sQQ16s")
_COUNTER_MAGIC = b"VTPUCMT1"
_COUNTER_SLOTS = (0, 512)
_COUNTER_SIZE = _COUNTER.size + 8
_UNKNOWN_BOOT = bytes(16)


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def _meta_crc(key: str, value: str) -> int:
    return _signed(_core.xxh64(value.encode(), _core.xxh64(key.encode())))



def _tomb_crc(key: bytes) -> int:
    # The core's, as the commit seals each deletion record (one definition of it).
    return _core.seal_tombstones([key])[0][1]


def _name_crc(ident: int, name: str) -> int:
    return _signed(_core.xxh64(name.encode(), ident))


def _boot_id() -> bytes:
    """This boot of the OS (Linux), or zeros when unknown (then never "the same boot")."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            raw = bytes.fromhex(f.read().decode("ascii").strip().replace("-", ""))
        return raw if len(raw) == 16 else _UNKNOWN_BOOT
    except (OSError, ValueError):
        return _UNKNOWN_BOOT


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """Durable, exclusively locked store of scrolls and names in a data directory.

    :param path: the data directory; created (with parents) if missing.
    :param fsync: ``"always"``, ``"everysec"`` (default) or ``"never"``; see the module
        docstring for exactly what each guarantees.
    :param checkpoint_interval: seconds between background copies of the WAL into the
        database (default :data:`CHECKPOINT_SECONDS`; only after commits). A longer one
        lets the WAL grow for longer between copies.
    :param check: run ``PRAGMA quick_check`` on open (default ``True``). It reads every
        page, so a corrupt database is reported at start-up rather than half-way through
        serving; turn it off only for very large stores whose start-up time matters more.
        (Record checksums are verified on every load either way.)
    :raises StorageError: the directory is locked by another Storage/process, the
        database is corrupt, behind its commit counter, of an unknown format version, or
        cannot be created.
    :raises InterfaceError: ``fsync`` is not one of the three policies.

    Thread safety: methods may be called from any thread; an internal lock serialises
    them. The intended use is one owner (the server's event loop or an embedded engine).
    Usable as a context manager (``close()`` on exit).
    """

    def __init__(self, path: str | os.PathLike, fsync: str = "everysec", check: bool = True,
                 checkpoint_interval: float = CHECKPOINT_SECONDS):
        if fsync not in _SYNCHRONOUS:
            raise InterfaceError(
                f"fsync policy must be one of {', '.join(FSYNC_POLICIES)}; got {fsync!r}"
            )
        if not checkpoint_interval > 0:
            raise InterfaceError(f"checkpoint_interval must be > 0 seconds; got "
                                 f"{checkpoint_interval!r}")
        self.checkpoint_interval = float(checkpoint_interval)
        self.path = os.path.abspath(os.fspath(path))
        self.fsync = fsync
        self.db_path = os.path.join(self.path, DB_FILENAME)
        self.counter_path = os.path.join(self.path, COUNTER_FILENAME)
        self._wal_path = self.db_path + "-wal"
        self._mutex = threading.RLock()
        self._segments: list[list] = []  # [[kind, payload-list], ...] in queue order
        self._closed = False
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._dirty = False  # committed since the last WAL fsync (everysec)
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()
        self._sync_error: BaseException | None = None
        self._checkpointed_seq = -1  # commit_seq at the last background checkpoint
        self._checkpoint_failing = False  # logged once per run of failures
        self._names: list[str] = []
        # Keys deleted since the checkpoint (the ``deleted`` table), and how many
        # records the checkpoint holds: with none, deletions need no record.
        self._tombstones: set[bytes] = set()
        self._chunked = 0
        # The commit counter: its file, the next record slot, and what it says.
        self._boot = _boot_id()
        self._counter_fd: int | None = None
        self._counter_mutex = threading.Lock()
        self._counter_slot = 0
        self._counter_dirty = False  # written since its last fsync
        self._counter_error: BaseException | None = None
        #: Number of the last commit made to this store (over its whole life).
        self.commit_seq = 0
        #: Number of the last commit known to be on stable storage.
        self.synced_seq = 0
        #: Commits made by this Storage object.
        self.commits = 0
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data directory {self.path!r}: {exc}") from exc
        self._acquire_lock()
        try:
            self._open_db(check)
            self._open_counter()
            if self.fsync != "never":
                self._preallocate_wal()
        except BaseException:
            self._release()
            raise
        self._syncer = threading.Thread(
            target=self._sync_loop, name=f"vtpu-sync:{self.path}", daemon=True
        )
        self._syncer.start()

    # ------------------------------------------------------------------ opening

    def _acquire_lock(self) -> None:
        # The lock is on the directory itself: a file could be deleted (or replaced)
        # under a running server, letting a second one in.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StorageError(f"cannot open data directory {self.path!r}: {exc}") from exc
        lock_path = os.path.join(self.path, LOCK_FILENAME)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = ""
                try:
                    with open(lock_path, encoding="ascii", errors="replace") as f:
                        pid = f.read(64).strip()
                    if pid:
                        holder = f" (held by pid {pid})"
                except OSError:
                    pass
                raise StorageError(
                    f"data directory {self.path!r} is locked by another vtpu store"
                    f"{holder}; stop that server or use another --data directory"
                ) from None
            raise StorageError(f"cannot lock data directory {self.path!r}: {exc}") from exc
        self._lock_fd = fd
        # Record our pid so a refused second server can say who holds the directory
        # (best effort: a full disk must not keep the store from opening).
        try:
            with open(lock_path, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        except OSError:
            pass

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
            # The background thread checkpoints instead (CHECKPOINT_SECONDS).
            conn.execute("PRAGMA wal_autocheckpoint=0")
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
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                self._create_schema()
            else:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key='format_version'").fetchone()
                version = None if row is None else row[0]
                if version == "1":
                    self._migrate_v1()
                elif version == "2":
                    self._migrate_v2()
                elif version != str(FORMAT_VERSION):
                    raise StorageError(
                        f"database {self.db_path!r} has format version {version}, this "
                        f"vtpu reads version {FORMAT_VERSION} (and migrates versions 1 "
                        "and 2)"
                    )
            self.commit_seq = int(self._read_meta()["commit"])
            self._read_checkpoint_state()
        except StorageError:
            self._rollback_quietly()
            raise
        except (sqlite3.Error, ValueError) as exc:  # ValueError: undecodable schema text
            self._rollback_quietly()
            raise StorageError(
                f"database {self.db_path!r} is unreadable or corrupt ({exc}); restore it "
                "from a backup or move it away to start empty"
            ) from exc

    def _create_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        self._write_meta({"format_version": str(FORMAT_VERSION),
                          "created_at": repr(time.time()), "commit": "0"})
        conn.execute("COMMIT")

    def _migrate_v1(self) -> None:
        """Rewrite a format-1 store (no checksums, no commit number) as format 2.

        The old rows are trusted as they are (they carry nothing to verify); everything
        happens in one transaction, so an interrupted migration leaves the old store.
        """
        conn = self._conn
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        old = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
        for table in ("meta", "scrolls", "names"):
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        cur = conn.cursor()
        cur.execute("SELECT key, content, version, created_at, updated_at FROM scrolls_v1 "
                    "ORDER BY key")
        n = 0
        while True:
            batch = cur.fetchmany(LOAD_BATCH)
            if not batch:
                break
            try:
                conn.executemany(_PUT_SQL, _core.seal_records(batch))
            except InterfaceError as exc:
                raise StorageError(
                    f"cannot migrate {self.db_path!r} to format {FORMAT_VERSION}: {exc}"
                ) from exc
            n += len(batch)
        cur.close()
        conn.executemany(_NAME_SQL, [(i, name, _name_crc(i, name)) for i, name in
                                     conn.execute("SELECT id, name FROM names_v1")])
        for table in ("meta", "scrolls", "names"):
            conn.execute(f"DROP TABLE {table}_v1")
        self._write_meta({"format_version": str(FORMAT_VERSION),
                          "created_at": old.get("created_at", repr(time.time())),
                          "commit": "0"})
        conn.execute("COMMIT")
        log.warning("migrated %s from format 1 to %d (%d scrolls, %.1f s)",
                    self.db_path, FORMAT_VERSION, n, time.perf_counter() - t0)

    def _migrate_v2(self) -> None:
        """Give a format-2 store the checkpoint tables (its rows stay as they are: rows
        since an empty checkpoint). One transaction, so an interruption changes nothing."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA_3:
            conn.execute(stmt)
        self._write_meta({"format_version": str(FORMAT_VERSION)})
        conn.execute("COMMIT")
        log.info("%s: format 2 store upgraded to %d", self.db_path, FORMAT_VERSION)

    def _read_checkpoint_state(self) -> None:
        """Read the deletions since the checkpoint (verified) and its record count.

        :raises StorageError: a deletion record fails its checksum.
        """
        tombs = set()
        for key, crc in self._conn.execute("SELECT key, crc FROM deleted"):
            if type(key) is not bytes or len(key) != KEY_SIZE or crc != _tomb_crc(key):
                raise StorageError(
                    f"database {self.db_path!r} is damaged: the deletion record of "
                    f"{self._where(key)} fails its checksum; restore the directory from "
                    "a backup"
                )
            tombs.add(key)
        self._tombstones = tombs
        self._chunked = self._conn.execute(
            "SELECT coalesce(sum(n), 0) FROM chunks").fetchone()[0]

    def _write_meta(self, items: dict) -> None:
        self._conn.executemany(_META_SQL, [(k, v, _meta_crc(k, v)) for k, v in items.items()])

    def _read_meta(self) -> dict:
        meta = {}
        for key, value, crc in self._conn.execute("SELECT key, value, crc FROM meta"):
            if type(key) is not str or type(value) is not str or crc != _meta_crc(key, value):
                raise StorageError(
                    f"database {self.db_path!r} is damaged: the meta record {key!r} fails "
                    "its checksum; restore the directory from a backup"
                )
            meta[key] = value
        for key in ("format_version", "commit"):
            if key not in meta:
                raise StorageError(
                    f"database {self.db_path!r} is damaged: meta record {key!r} is missing; "
                    "restore the directory from a backup"
                )
        try:
            int(meta["commit"])
        except ValueError:
            raise StorageError(f"database {self.db_path!r} is damaged: bad commit number "
                               f"{meta['commit']!r}") from None
        return meta

    def _open_counter(self) -> None:
        """Check the database against the commit counter, then make both current.

        :raises StorageError: the database is behind the counter (the WAL was lost or
            damaged) or the counter file is unreadable.
        """
        have = self.commit_seq
        record = self._read_counter()
        if record is None:
            if have > 0:
                log.warning("%s: no commit counter %s; trusting the database as it is "
                            "(at commit %d)", self.path, self.counter_path, have)
        else:
            seq, synced, boot = record
            same_boot = boot == self._boot and boot != _UNKNOWN_BOOT
            need = seq if same_boot else synced
            if have < need:
                raise StorageError(
                    f"database {self.db_path!r} is at commit {have}, commit counter "
                    f"{self.counter_path!r} says {need}: the WAL ({self._wal_path}) was "
                    f"lost or damaged, or the database replaced by an older copy; "
                    f"{need - have} committed batches are missing. Restore the directory "
                    f"from a backup, or remove {self.counter_path!r} to accept the "
                    "database as it is"
                )
            if have < seq:
                log.warning("%s: the last %d commits before the OS restarted were not yet "
                            "on stable storage and are lost (as the fsync policy allows)",
                            self.path, seq - have)
        # What the database holds now is made durable once, so the counter may say so.
        try:
            if os.path.exists(self._wal_path):
                _fsync_path(self._wal_path)
            _fsync_path(self.db_path)
            create = record is None
            fd = os.open(self.counter_path, os.O_RDWR | os.O_CREAT, 0o644)
            self._counter_fd = fd
            self.synced_seq = have
            if create:
                os.ftruncate(fd, _COUNTER_SLOTS[-1] + _COUNTER_SIZE)
            for _ in _COUNTER_SLOTS:   # both slots: no stale record may outrank these
                self._write_counter()
            os.fsync(fd)
            if create:
                _fsync_path(self.path, directory=True)
            self._counter_dirty = False
        except OSError as exc:
            raise StorageError(f"cannot write commit counter {self.counter_path!r}: {exc}") \
                from exc

    def _read_counter(self) -> tuple[int, int, bytes] | None:
        """(seq, synced, boot) of the newest intact counter record, None if no file.

        :raises StorageError: the file exists but holds no intact record.
        """
        try:
            with open(self.counter_path, "rb") as f:
                data = f.read(_COUNTER_SLOTS[-1] + _COUNTER_SIZE)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read commit counter {self.counter_path!r}: {exc}") \
                from exc
        best = None
        for off in _COUNTER_SLOTS:
            rec = data[off:off + _COUNTER_SIZE]
            if len(rec) != _COUNTER_SIZE:
                continue
            body, crc = rec[:_COUNTER.size], int.from_bytes(rec[_COUNTER.size:], "little")
            magic, seq, synced, boot = _COUNTER.unpack(body)
            if magic != _COUNTER_MAGIC or crc != _core.xxh64(body) or synced > seq:
                continue
            if best is None or (seq, synced) > best[:2]:
                best = (seq, synced, boot)
        if best is None:
            raise StorageError(
                f"commit counter {self.counter_path!r} is damaged (no intact record): "
                "restore the directory from a backup, or remove the file to accept the "
                "database as it is"
            )
        return best

    def _write_counter(self) -> None:
        """Write (commit_seq, synced_seq) to the next counter slot (no fsync)."""
        seq = self.commit_seq
        # (read once each: another thread may advance them meanwhile)
        body = _COUNTER.pack(_COUNTER_MAGIC, seq, min(self.synced_seq, seq), self._boot)
        rec = body + _core.xxh64(body).to_bytes(8, "little")
        with self._counter_mutex:
            os.pwrite(self._counter_fd, rec, _COUNTER_SLOTS[self._counter_slot])
            self._counter_slot ^= 1
            self._counter_dirty = True

    def _preallocate_wal(self) -> None:
        """Grow the WAL file to its working size once, then restart it at offset 0.

        SQLite never shrinks the WAL (no journal_size_limit), so later commits overwrite
        existing blocks instead of appending; fdatasync then need not also flush the file
        size, which makes a durable commit ~1.5x faster on a fresh WAL. Costs one ~4 MB
        unsynced write at open, and leaves ~4 MB of free pages in the database file that
        later writes reuse. Best effort: a nearly full disk only skips it.
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
        except sqlite3.Error as exc:
            self._rollback_quietly()
            log.warning("%s: WAL not preallocated (%s)", self.path, exc)
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

    def load_chunks(self) -> tuple[list[str], list[tuple[int, bytes]]]:
        """Read the whole store back (engine start-up), verifying every checksum.

        The checkpoint's chunks are read as they are; the rows and deletions since it
        are merged into them (in the compiled core) when there are any.

        :returns: ``(names, chunks)``: ``names[i]`` is the name with id ``0xF000 + i``;
            ``chunks`` is a list of ``(n, body)`` holding every stored scroll once, in
            key (coordinate) order (read them with ``ColumnStore.load_chunks`` or
            ``_core.chunk_rows``).
        :raises StorageError: the store is closed, the database is unreadable/corrupt or
            a record, a chunk or a name fails its checksum (naming it).
        """
        with self._mutex:
            self._check_open()
            try:
                names = self._read_names()
                chunks = self._read_chunks()
                delta = self._read_delta()
                if delta or self._tombstones:
                    chunks = self._merge(chunks, delta, self._tombstones)
            except (sqlite3.Error, ValueError) as exc:
                raise self._db_error("reading the store", exc) from exc
            except InterfaceError as exc:   # verified records that do not fit together
                raise StorageError(f"database {self.db_path!r} is damaged: {exc}; restore "
                                   "the directory from a backup") from exc
        return names, chunks

    def load(self) -> tuple[list[str], Iterator[tuple]]:
        """Read the whole store back as rows (tools, tests), verifying every checksum.

        :returns: ``(names, rows)``: as :meth:`load_chunks`, with ``rows`` an iterator of
            ``(key, content, version, created_at, updated_at, checksum)`` tuples in key
            (coordinate) order.
        :raises StorageError: as :meth:`load_chunks` (everything is verified before the
            first row is returned).
        """
        names, chunks = self.load_chunks()
        return names, (row for n, body in chunks for row in _core.chunk_rows(body, n))

    def iter_batches(self, size: int = LOAD_BATCH) -> Iterator[list[tuple]]:
        """Yield all rows in key order as lists of ``size`` tuples (the last may be
        shorter), every one verified against its checksum.

        Same rows as :meth:`load`; handy for building arrays a batch at a time.

        :param size: rows per batch (default 65536).
        :raises StorageError: closed store, unreadable database or a damaged record.
        """
        batch: list[tuple] = []
        for n, body in self.load_chunks()[1]:
            batch.extend(_core.chunk_rows(body, n))
            while len(batch) >= size:
                yield batch[:size]
                del batch[:size]
        if batch:
            yield batch

    def _read_chunks(self) -> list[tuple[int, bytes]]:
        """The checkpoint's chunks in key order, each verified record by record."""
        chunks = []
        last = None
        cur = self._conn.cursor()
        try:
            cur.execute("SELECT first, n, body FROM chunks ORDER BY first")
            for first, n, body in cur:
                self._check_chunk(first, n, body)
                if last is not None and first <= last:
                    raise StorageError(
                        f"database {self.db_path!r} is damaged: the checkpoint chunk "
                        f"starting at {self._where(first)} overlaps the one before it; "
                        "restore the directory from a backup"
                    )
                last = _core.chunk_key(body, n, n - 1)
                chunks.append((n, body))
        finally:
            cur.close()
        return chunks

    def _read_delta(self, lo: bytes | None = None,
                    hi: bytes | None = None) -> list[tuple[int, bytes]]:
        """The rows since the checkpoint with ``lo <= key < hi`` (None: unbounded), in
        key order, verified (one core call per batch) and packed into chunks as read (a
        packed record takes less memory than a row of Python objects)."""
        where, args = _key_range(lo, hi)
        out: list[tuple[int, bytes]] = []
        cur = self._conn.cursor()  # own cursor: independent of the write path
        try:
            cur.execute(_SELECT_SQL.replace(" ORDER BY", where + " ORDER BY"), args)
            while True:
                batch = cur.fetchmany(LOAD_BATCH)
                if not batch:
                    return out
                bad = _core.verify_records(batch)
                if bad >= 0:
                    raise self._damaged_record(batch[bad][0] if batch[bad] else None)
                out.extend(_core.pack_rows(batch, CHUNK_RECORDS, CHUNK_BYTES))
        finally:
            cur.close()

    @staticmethod
    def _merge(chunks: list, delta: list, tombstones) -> list[tuple[int, bytes]]:
        """The chunks with the ``delta`` chunks written over them and the keys in
        ``tombstones`` removed."""
        if not chunks and not tombstones:
            return delta
        return _core.merge_chunks(chunks, delta, b"".join(sorted(tombstones)),
                                  CHUNK_RECORDS, CHUNK_BYTES)

    def _where(self, key) -> str:
        """A key as a coordinate (with the stored names), else as hex."""
        if type(key) is not bytes or len(key) != KEY_SIZE:
            return repr(key)
        from .coords import NameTable

        if not self._names:
            try:
                self._read_names()
            except (StorageError, sqlite3.Error, ValueError):
                pass
        try:
            return _core.format_coord(key, NameTable(self._names))
        except CoordinateError:
            return f"key {key.hex()}"

    def _damaged_record(self, key) -> StorageError:
        return StorageError(
            f"database {self.db_path!r} is damaged: the record at {self._where(key)} fails "
            "its checksum; restore the directory from a backup"
        )

    def _read_names(self) -> list[str]:
        rows = self._conn.execute("SELECT id, name, crc FROM names ORDER BY id").fetchall()
        names = []
        for i, (ident, name, crc) in enumerate(rows):
            if type(name) is not str or type(ident) is not int \
                    or crc != _name_crc(ident, name):
                raise StorageError(
                    f"database {self.db_path!r} is damaged: name table entry {ident!r} "
                    f"({name!r}) fails its checksum; restore the directory from a backup"
                )
            if ident != i:
                raise StorageError(
                    f"database {self.db_path!r} name table has a gap: id index {i} is "
                    f"missing (next stored index {ident}, name {name!r})"
                )
            names.append(name)
        self._names = names
        return names

    def count(self) -> int:
        """Number of committed scrolls (pending writes not included).

        Reads the whole store when it has a checkpoint and writes since (tools, tests).

        :raises StorageError: closed store or unreadable database.
        """
        with self._mutex:
            self._check_open()
            try:
                if not self._chunked:
                    return self._conn.execute("SELECT count(*) FROM scrolls").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._db_error("counting scrolls", exc) from exc
        return sum(n for n, _ in self.load_chunks()[1])

    # ------------------------------------------------------------------ queueing

    def put(self, key: bytes, content_blob: bytes, version: int, created: float,
            updated: float) -> None:
        """Queue one scroll write (insert or replace); durable after :meth:`commit`.

        :param key: the 18-byte packed coordinate.
        :param content_blob: the encoded content (stored as given).
        :param version: the scroll's version (>= 1).
        :param created: creation time, unix seconds.
        :param updated: last update time, unix seconds.
        :raises InterfaceError: a field has the wrong type (``key`` not 18 bytes,
            content not bytes ...); nothing is queued then.
        :raises StorageError: the store is closed.
        """
        self.put_many([(key, content_blob, version, created, updated)])

    def put_many(self, rows: Iterable[Sequence]) -> None:
        """Queue many scroll writes, as :meth:`put` tuples ``(key, content, version,
        created, updated)``; later rows for the same key win.

        :param rows: the rows (each sealed here with its checksum).
        :raises InterfaceError: a row has the wrong shape or types; nothing is queued.
        :raises StorageError: the store is closed.
        """
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        self._check_open()
        sealed = _core.seal_records(rows)
        with self._mutex:
            self._check_open()
            segs = self._segments
            if segs and segs[-1][0] == _PUT:
                segs[-1][1].extend(sealed)
            else:
                segs.append([_PUT, sealed])

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
        params = []
        for j, n in enumerate(names):
            n = str(n)
            params.append((first_id_index + j, n, _name_crc(first_id_index + j, n)))
        if not params:
            return
        with self._mutex:
            self._check_open()
            self._segments.append([_NAMES, params])

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
        :raises StorageError: the transaction failed (disk full, I/O error ...), the
            background fsync or the last counter write failed, or the store is closed.
            The queued batch is then dropped, not retried: nothing of it is stored, and
            the caller undoes what it showed of it.
        """
        with self._mutex:
            self._check_open()
            segs, self._segments = self._segments, []
            if not segs:
                return 0
            for attr, what in (("_sync_error", f"background fsync of {self._wal_path!r}"),
                               ("_counter_error", f"writing {self.counter_path!r}")):
                exc = getattr(self, attr)
                if exc is not None:
                    setattr(self, attr, None)
                    raise StorageError(f"{what} failed: {exc}; this batch was not stored")
            conn = self._conn
            seq = self.commit_seq + 1
            n = 0
            tombs = self._tombstones
            undo: list[tuple[bytes, bool]] = []  # (key, was a tombstone) in change order
            try:
                conn.execute("BEGIN")
                for kind, payload in segs:
                    n += len(payload)
                    if kind == _PUT:
                        if len(payload) >= SORT_THRESHOLD:
                            # Stable sort: a key written twice keeps its last row last.
                            payload = sorted(payload, key=_row_key)
                        conn.executemany(_PUT_SQL, payload)
                        if tombs:
                            # Written again after a deletion: the row alone now rules.
                            back = [(r[0],) for r in payload if r[0] in tombs]
                            if back:
                                conn.executemany(_UNTOMB_SQL, back)
                                for (k,) in back:
                                    if k in tombs:
                                        tombs.discard(k)
                                        undo.append((k, True))
                    elif kind == _DEL:
                        conn.executemany(_DEL_SQL, self._rows_of(payload))
                        if self._chunked:
                            # The checkpoint may hold the key: record the deletion.
                            gone = [k for (k,) in payload if len(k) == KEY_SIZE]
                            conn.executemany(_TOMB_SQL, _core.seal_tombstones(gone))
                            for k in gone:
                                if k not in tombs:
                                    tombs.add(k)
                                    undo.append((k, False))
                    else:
                        conn.executemany(_NAME_SQL, payload)
                self._set_commit(seq)
                conn.execute("COMMIT")
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                self._rollback_quietly()
                for k, was in reversed(undo):
                    if was:
                        tombs.add(k)
                    else:
                        tombs.discard(k)
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error("committing a batch", exc) from exc
                raise StorageError(
                    f"cannot store a queued row in {self.db_path!r}: {exc}"
                ) from exc
            self._committed(seq)
            return n

    def _rows_of(self, params: list) -> list:
        """The ``(key,)`` of ``params`` that have a row in ``scrolls`` (inside the open
        transaction). Deleted keys mostly live in the checkpoint alone, and a DELETE
        probing for an absent row costs as much as one removing it: one scan of the
        batch's key range finds the rows instead. A range holding many more rows than
        the batch (deletions scattered over a large table) is not scanned: every key is
        then returned, which is always correct."""
        if len(params) < 64:
            return params
        keys = [p[0] for p in params]
        try:
            lo, hi = min(keys), max(keys)
        except TypeError:
            return params
        if type(lo) is not bytes or type(hi) is not bytes:
            return params
        cap = 4 * len(keys) + 64
        rows = self._conn.execute(_RANGE_KEYS_SQL, (lo, hi, cap)).fetchall()
        if len(rows) >= cap:
            return params
        want = set(keys)
        return [r for r in rows if r[0] in want]

    def _set_commit(self, seq: int) -> None:
        """Store the commit number ``seq`` (inside the transaction making that commit)."""
        value = str(seq)
        self._conn.execute(_META_SQL, ("commit", value, _meta_crc("commit", value)))

    def _committed(self, seq: int) -> None:
        """Account for commit ``seq`` after SQLite's COMMIT returned: the counter."""
        self.commit_seq = seq
        if self.fsync == "always":
            self.synced_seq = seq
        self._dirty = True
        self.commits += 1
        try:
            self._write_counter()
        except OSError as exc:
            # The batch is stored: report the counter failure with the next commit.
            self._counter_error = exc

    def fold(self) -> int:
        """Fold the rows and deletions since the checkpoint into its chunks.

        Commits what is queued first. Only the chunks whose key range holds a row or a
        deletion since the checkpoint are rewritten; everything happens in one
        transaction, which is a commit (the commit counter advances), so a failure
        (disk full ...) changes nothing and the store stays as it was.

        :returns: the number of rows and deletions folded (0: nothing to do).
        :raises StorageError: on a database failure, a damaged record or chunk, or a
            closed store.
        """
        with self._mutex:
            self.commit()
            conn = self._conn
            try:
                tombs = sorted(self._tombstones) if self._chunked else []
                if not tombs and conn.execute("SELECT 1 FROM scrolls LIMIT 1").fetchone() \
                        is None:
                    return 0
                firsts = [r[0] for r in conn.execute("SELECT first FROM chunks ORDER BY first")]
                seq = self.commit_seq + 1
                folded = len(tombs)
                conn.execute("BEGIN IMMEDIATE")
                # Chunk i covers [firsts[i], firsts[i + 1]); the first also what is below.
                # One range at a time: memory holds one chunk and the rows over it.
                for i in range(max(len(firsts), 1)):
                    lo = firsts[i] if i else None
                    hi = firsts[i + 1] if i + 1 < len(firsts) else None
                    t0 = 0 if lo is None else bisect.bisect_left(tombs, lo)
                    t1 = len(tombs) if hi is None else bisect.bisect_left(tombs, hi)
                    delta = self._read_delta(lo, hi)
                    if not delta and t0 == t1:
                        continue
                    folded += sum(n for n, _ in delta)
                    # Free the pages of what is rewritten before writing it again: the
                    # new chunks reuse them, so the file need not grow by the range.
                    where, args = _key_range(lo, hi)
                    conn.execute("DELETE FROM scrolls" + where, args)
                    base = []
                    if firsts:
                        base = [self._read_chunk(firsts[i])]
                        conn.execute("DELETE FROM chunks WHERE first = ?", (firsts[i],))
                    new = self._merge(base, delta, tombs[t0:t1])
                    del delta, base
                    conn.executemany(_CHUNK_SQL, [(_core.chunk_key(body, n, 0), n, body)
                                                  for n, body in new])
                conn.execute("DELETE FROM deleted")
                chunked = conn.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()[0]
                self._set_commit(seq)
                conn.execute("COMMIT")
            except (sqlite3.Error, ValueError, InterfaceError) as exc:
                self._rollback_quietly()
                if isinstance(exc, InterfaceError):
                    raise StorageError(f"cannot fold {self.db_path!r}: {exc}") from exc
                raise self._db_error("folding into the checkpoint", exc) from exc
            except BaseException:
                self._rollback_quietly()
                raise
            self._tombstones = set()
            self._chunked = chunked
            self._committed(seq)
            return folded

    def _read_chunk(self, first: bytes) -> tuple[int, bytes]:
        """One chunk by its first key, verified."""
        n, body = self._conn.execute("SELECT n, body FROM chunks WHERE first = ?",
                                     (first,)).fetchone()
        self._check_chunk(first, n, body)
        return n, body

    def _check_chunk(self, first, n, body) -> None:
        """Verify one chunk row: every record's checksum and order, and that its columns
        and its row (first key, count) agree.

        :raises StorageError: naming the first damaged record, or the chunk.
        """
        ok = type(n) is int and type(body) is bytes and n > 0
        bad = _core.verify_chunk(body, n) if ok else -2
        if bad >= 0:
            raise self._damaged_record(_core.chunk_key(body, n, bad))
        if bad == -2 or _core.chunk_key(body, n, 0) != first:
            raise StorageError(
                f"database {self.db_path!r} is damaged: the checkpoint chunk starting at "
                f"{self._where(first)} does not add up (its columns or its row are "
                "damaged); restore the directory from a backup"
            )

    def _fold_due(self) -> bool:
        """Whether the rows since the checkpoint are enough to fold (see close())."""
        since = self._conn.execute("SELECT count(*) FROM scrolls").fetchone()[0] \
            + len(self._tombstones)
        return since >= max(FOLD_MIN_ROWS, self._chunked // 16)

    def sync(self) -> None:
        """Commit what is queued and force it to stable storage now (any policy).

        :raises StorageError: on any database or fsync failure.
        """
        with self._mutex:
            self.commit()
            self._fsync_wal()
            try:
                self._sync_counter(self.commit_seq)
            except OSError as exc:
                raise StorageError(f"cannot sync {self.counter_path!r}: {exc}") from exc

    def checkpoint(self) -> None:
        """Fold the rows since the checkpoint into it (:meth:`fold`), then the WAL into
        the database file, and truncate the WAL (e.g. after a bulk load).

        :raises StorageError: on a database failure.
        """
        with self._mutex:
            self._check_open()
            self.fold()
            try:
                # The sync thread may be checkpointing at this moment (busy): a few tries.
                for _ in range(50):
                    if not self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                        break
                    time.sleep(0.01)
            except sqlite3.Error as exc:
                raise self._db_error("checkpointing", exc) from exc

    def _fsync_wal(self) -> None:
        # fsync() on any descriptor of the file flushes its dirty pages (Linux), so we
        # need not reach into SQLite's own descriptor.
        try:
            _fsync_path(self._wal_path)
        except FileNotFoundError:
            pass  # no WAL: everything was checkpointed (and synced) already
        except OSError as exc:
            raise StorageError(f"fsync of {self._wal_path!r} failed: {exc}") from exc
        self._dirty = False

    def _sync_counter(self, synced: int) -> None:
        """Record that commits up to ``synced`` are on stable storage, durably."""
        if synced > self.synced_seq:
            self.synced_seq = synced
            self._write_counter()
        if self._counter_dirty:
            self._counter_dirty = False
            os.fsync(self._counter_fd)

    def _sync_loop(self) -> None:
        # Every checkpoint_interval: checkpoint the WAL if anything was committed since
        # the last time. At most once a second, and not while idle: everysec fsyncs the
        # WAL, then advances the counter's "synced"; always (SQLite fsynced every commit)
        # only flushes the counter file; never does neither.
        ckpt: sqlite3.Connection | None = None
        next_sync = time.monotonic() + 1.0
        next_ckpt = time.monotonic() + self.checkpoint_interval
        try:
            while not self._stop.wait(min(CHECKPOINT_SECONDS, self.checkpoint_interval)):
                now = time.monotonic()
                if self.fsync != "never" and now >= next_sync:
                    next_sync = now + 1.0
                    self._sync_round()
                if self._stop.is_set():
                    return
                if now >= next_ckpt:
                    next_ckpt = now + self.checkpoint_interval
                    ckpt = self._checkpoint_wal(ckpt)
        finally:
            if ckpt is not None:
                ckpt.close()

    def _sync_round(self) -> None:
        try:
            synced = self.synced_seq
            if self.fsync == "everysec" and self._dirty:
                self._dirty = False  # a commit after this point re-arms the next round
                target = self.commit_seq  # every commit up to here is in the WAL
                try:
                    _fsync_path(self._wal_path)
                    synced = target
                except FileNotFoundError:
                    synced = target
                except OSError as exc:
                    self._sync_error = exc
                    return
            if self._stop.is_set():
                return
            self._sync_counter(synced)
        except OSError as exc:
            self._counter_error = exc

    def _checkpoint_wal(self, ckpt: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Copy the committed WAL frames into the database (PASSIVE: waits for no reader
        or writer; the next writer then starts the WAL over). Runs on the sync thread,
        on a connection of its own, with the policy's fsyncs; a failure (a full disk)
        loses nothing, as the frames stay in the WAL, and is retried next round.

        :returns: the connection to use next round (None after a failure)."""
        seq = self.commit_seq
        if seq == self._checkpointed_seq:
            return ckpt
        try:
            if ckpt is None:
                ckpt = sqlite3.connect(self.db_path, isolation_level=None,
                                       check_same_thread=True, timeout=0)
                ckpt.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
            busy = ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
        except sqlite3.Error as exc:
            if not self._checkpoint_failing:
                self._checkpoint_failing = True
                log.warning("%s: checkpointing the WAL failed (%s); it keeps the writes "
                            "and grows until a checkpoint succeeds", self.path, exc)
            if ckpt is not None:
                ckpt.close()
            return None
        if not busy:
            self._checkpointed_seq = seq
        if self._checkpoint_failing:
            self._checkpoint_failing = False
            log.warning("%s: checkpointing the WAL succeeds again", self.path)
        return ckpt

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
                    self._fold_on_close()
                    # The closing checkpoint copies the WAL into the database and deletes
                    # it: let SQLite fsync the database first, whatever the policy.
                    if self.fsync == "never":
                        self._conn.execute("PRAGMA synchronous=NORMAL")
                    self._fsync_wal()
                    self._stop.set()
                    if self._syncer is not None:
                        self._syncer.join(timeout=5)
                    self._sync_counter(self.commit_seq)
            except OSError as exc:
                raise StorageError(f"cannot sync {self.path!r} on close: {exc}") from exc
            except sqlite3.Error as exc:
                raise self._db_error("closing", exc) from exc
            finally:
                self._release()

    def _fold_on_close(self) -> None:
        """Fold when due, so the next start-up reads chunks; a failed fold loses nothing
        (the rows stay where they are), so it is only logged."""
        try:
            if self._fold_due():
                self.fold()
        except (StorageError, sqlite3.Error) as exc:
            log.warning("%s: not folded into the checkpoint on close (%s); the next "
                        "start-up reads the rows since it one by one", self.path, exc)

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
        if self._counter_fd is not None:
            os.close(self._counter_fd)
            self._counter_fd = None
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
        return f"<Storage {self.path!r} fsync={self.fsync} commit={self.commit_seq} {state}>"

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.path!r} is closed")

    def _db_error(self, doing: str, exc: Exception) -> StorageError:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or type(exc) is sqlite3.DatabaseError \
                or isinstance(exc, ValueError):
            return StorageError(
                f"database {self.db_path!r} is corrupt ({doing}: {exc}); restore it "
                "from a backup or move it away to start empty"
            )
        return StorageError(f"database {self.db_path!r} failed while {doing}: {exc}")


def _key_range(lo: bytes | None, hi: bytes | None) -> tuple[str, list]:
    """A SQL ``WHERE`` clause (or "") and its arguments for ``lo <= key < hi``."""
    where, args = [], []
    if lo is not None:
        where.append("key >= ?")
        args.append(lo)
    if hi is not None:
        where.append("key < ?")
        args.append(hi)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _row_key(row: Sequence) -> bytes:
    return row[0]
