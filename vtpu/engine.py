"""The store: a hash map of scrolls, the coordinate indexes and the instructions.

One :class:`Engine` serves both the server (one per process, owned by its event loop)
and the embedded ``mem://`` / ``file://`` modes; it implements
:class:`vtpu.backend.Backend`. Every argument is already packed:
18-byte keys, N*18-byte blobs, (2, 9) uint16 patterns, (2, 9) int32 deltas; the facade
(:mod:`vtpu.client`) and the server do the parsing. Point lookups are one dict access;
pattern queries go through :class:`vtpu.index.CoordIndex`.

The engine is not thread-safe by design (Redis-style: one loop owns it). The embedded
client serialises calls with a lock.

With durable storage a write is validated and encoded before anything changes, then
applied in memory and queued for the storage's next group commit; the old values it
replaced are kept until that commit. If the commit fails (disk full, I/O error) every
write of the group is undone in memory, index and name table included, so no reader
ever sees a write that was not stored.
"""
from __future__ import annotations

import gc
import math
import os
import resource
import time
from typing import Any

import numpy as np

from vtpu import _core
from vtpu._version import __version__
from vtpu.coords import (MAX_NAMES, NAME_BASE, NameTable, Scroll, UnknownName, apply_delta_any,
                         delta_in_range)
from vtpu.errors import CoordinateError, InterfaceError, NotFoundError, VersionConflict
from vtpu.index import CoordIndex
from vtpu.protocol import pack_value, unpack_value

__all__ = ["Engine", "check_content", "estimate_wire_size"]

_FULL = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
#: Bounds of CNEAREST's k and CKG's hops / max_frontier (the wire accepts no more).
MAX_K = 1 << 31
MAX_HOPS = 1 << 20
MAX_FRONTIER = 1 << 31
_SCALARS = (str, bytes, int, float, bool, type(None))


# Deepest nesting of lists/dicts in a content: well inside what the content codec
# (msgpack, about 1000 levels with the frame around it) and the checker's own recursion
# allow, so every backend accepts or refuses a content alike.
MAX_CONTENT_DEPTH = 256


def check_content(content: Any, _depth: int = 0) -> Any:
    """Validate (and freeze) a scroll's content.

    str, bytes, numpy arrays (copied and made read-only, dtype and shape kept) and any
    msgpack-able value (None, bool, int, float, list, dict with str or int keys, nested
    at most ``MAX_CONTENT_DEPTH`` deep) are accepted. Every backend applies this same
    check, so a content is accepted or refused alike everywhere.

    :returns: the value to store.
    :raises InterfaceError: anything else (object arrays, sets, custom objects, text
        with a lone surrogate, which has no UTF-8 encoding ...).
    """
    if isinstance(content, _SCALARS):
        if isinstance(content, str):
            if not content.isascii():
                _check_text(content)
        elif isinstance(content, int) and not isinstance(content, bool) and \
                not -(1 << 63) <= content < (1 << 64):
            raise InterfaceError(f"integer content {content} does not fit 64 bits")
        return content
    if isinstance(content, np.ndarray):
        if content.dtype.hasobject or content.dtype.kind not in "biufcSUV" \
                or content.dtype.fields is not None:
            raise InterfaceError(f"cannot store an array of dtype {content.dtype}")
        arr = np.array(content, copy=True, order="C")
        arr.flags.writeable = False
        return arr
    if isinstance(content, (bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, (list, tuple, dict)):
        if _depth >= MAX_CONTENT_DEPTH:
            raise InterfaceError(f"content nested deeper than {MAX_CONTENT_DEPTH} levels")
        if not isinstance(content, dict):
            items = []
            for x in content:   # a loop, not a comprehension: one frame per level
                items.append(check_content(x, _depth + 1))
            return items
        out = {}
        for k, v in content.items():
            if isinstance(k, str):
                if not k.isascii():
                    _check_text(k)
            elif not isinstance(k, int) or isinstance(k, bool):
                raise InterfaceError(f"dict content keys must be str or int, got {type(k).__name__}")
            else:
                check_content(k)
            out[k] = check_content(v, _depth + 1)
        return out
    if isinstance(content, np.generic):
        return check_content(content.item(), _depth)
    raise InterfaceError(
        f"cannot store content of type {type(content).__name__}: use str, bytes, a numpy "
        "array or a msgpack-able value")


def _check_text(text: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate), like the wire codec does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise InterfaceError(
            f"cannot store text with a lone surrogate {bad!r} at position {exc.start}: "
            "text must be valid Unicode (UTF-8 encodable)") from None


def _vector(content: Any) -> np.ndarray | None:
    """The content as a 1-d float vector, or None when it is not one."""
    if isinstance(content, np.ndarray) and content.ndim == 1 and content.dtype.kind in "biuf":
        return content
    if isinstance(content, list) and content and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in content):
        return np.asarray(content, dtype=np.float64)
    return None


def _kind(content: Any) -> str:
    """What a content is, for messages ("a str", "an array of shape (2, 3) int64")."""
    if isinstance(content, np.ndarray):
        return f"an array of shape {content.shape} {content.dtype}"
    name = type(content).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def _count_arg(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int | None:
    """None or an integer in lo..hi, else InterfaceError: the server's ARG check, so every
    backend refuses the same arguments the same way."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or \
            (hi is not None and v > hi):
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InterfaceError(f"{what} must be an integer {span}, got {v!r}")
    return int(v)


def _rows_in_windows(coords: np.ndarray, kp: np.ndarray, starts: np.ndarray,
                     ends: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Which rows of sorted ``coords`` match at least one window pattern.

    :param starts, ends, exact: :func:`vtpu._core.window_spans` of ``coords`` and ``kp``.
    :returns: (N,) bool mask.
    """
    n = len(coords)
    whole = exact & (ends > starts)
    cover = np.bincount(starts[whole], minlength=n + 1) - np.bincount(ends[whole], minlength=n + 1)
    inside = np.cumsum(cover[:n]) > 0
    for i in np.flatnonzero(~exact):
        a, b = int(starts[i]), int(ends[i])
        inside[a:b] |= _core.match(coords[a:b], kp[i])
    return inside


def _edge_key(item: Any, names: NameTable) -> bytes | None:
    """The key one coordinate-valued item stands for (CKG).

    :returns: 18 bytes; ``b""`` for coordinate text naming a name the store never
        interned (a coordinate where nothing can be stored); None when the item is not
        a coordinate (text that does not parse, any other value).
    """
    if isinstance(item, str):
        try:
            return _core.pack(_core.parse_coord(item.strip(), names.reader, False))
        except UnknownName:
            return b""
        except CoordinateError:
            return None
    if isinstance(item, bytes):
        return item if len(item) == 18 else None
    if isinstance(item, np.ndarray) and item.dtype == np.uint16 and item.shape == (9,):
        return _core.pack(item)
    return None


def _edge_targets(content: Any, names: NameTable) -> list[bytes] | None:
    """Coordinates an edge's content points at (CKG), or None when it points nowhere.

    A coordinate is text (surrounding whitespace ignored), an 18-byte key or a (9,)
    uint16 array; a list of them or an (N, 9) uint16 array points at each. Anything
    else (including an empty list) is no pointer: the edge itself is the target.
    Coordinates naming never-interned names hold nothing and are left out.
    """
    if isinstance(content, np.ndarray) and content.dtype == np.uint16 and \
            content.ndim == 2 and content.shape[1] == 9:
        blob = _core.pack_many(np.ascontiguousarray(content))
        return [blob[i:i + 18] for i in range(0, len(blob), 18)] or None
    items = content if isinstance(content, list) else [content]
    if not items:
        return None
    out = []
    for item in items:
        key = _edge_key(item, names)
        if key is None:
            return None
        if key:
            out.append(key)
    return out


_SCROLL_CONTENT = Scroll.content   # the slot descriptor holding a Scroll's content


class _StoredScroll(Scroll):
    """A Scroll loaded from disk whose content is decoded on first access.

    Start-up then costs one object per row, not one msgpack decode per row; a scroll
    that is never read is never decoded.
    """

    __slots__ = ("_blob",)

    def __init__(self, key, blob, version, created_at, updated_at, names):
        self.key = key
        self._blob = blob
        self.version = version
        self.created_at = created_at
        self.updated_at = updated_at
        self._names = names

    @property
    def content(self):
        """The content, decoded from its stored form on first access."""
        blob = self._blob
        if blob is not None:
            _SCROLL_CONTENT.__set__(self, unpack_value(blob))
            self._blob = None
        return _SCROLL_CONTENT.__get__(self)


_SCROLL_WIRE = 48   # a scroll's key, version and times, with their msgpack headers
_FLAT = frozenset((str, bytes))


def _content_size(v: Any) -> int:
    """About how many bytes a content takes in msgpack (exact for bin, ASCII str and
    arrays; a str of other text is counted by characters)."""
    t = type(v)
    if t is bytes or t is str:
        return len(v) + 5
    if t is np.ndarray:
        return v.nbytes + 32
    if t is list:
        return 5 + sum([_content_size(x) for x in v])
    if t is dict:
        return 5 + sum([_content_size(k) + _content_size(x) for k, x in v.items()])
    return 9


def estimate_wire_size(scrolls: list, stop: int | None = None,
                       per_scroll: int = _SCROLL_WIRE) -> tuple[int, int]:
    """About how many bytes these scrolls take in a reply, without encoding them: each
    content's size plus a fixed amount per scroll.

    :param scrolls: Scrolls, or None for absent entries.
    :param stop: a size of interest: when the total passes it, say where.
    :param per_scroll: bytes added per scroll besides its content.
    :returns: ``(bytes, n)``: the estimate for all the scrolls and ``n = len(scrolls)``,
        or, when it passes ``stop``, the estimate up to and including the ``n``-th
        scroll, the first at which the running total passes ``stop``.
    """
    contents = [s.content for s in scrolls if s is not None]
    if set(map(type, contents)) <= _FLAT:  # the common case, at C speed
        sizes = list(map(len, contents))
        head = per_scroll + 5
    else:
        sizes = list(map(_content_size, contents))
        head = per_scroll
    total = sum(sizes) + head * len(contents) + 4 * (len(scrolls) - len(contents))
    if stop is None or total <= stop:
        return total, len(scrolls)
    run = 0
    it = iter(sizes)
    for n, s in enumerate(scrolls, 1):
        run += 4 if s is None else head + next(it)
        if run > stop:
            return run, n
    return total, len(scrolls)  # (not reached: the total passed stop)


class Engine:
    """An in-memory, indexed coordinate store with optional durable storage.

    :param storage: a :class:`vtpu.storage.Storage` (or None for memory only). Its rows
        and names are loaded at start-up and the indexes rebuilt from them.
    :param autocommit: commit storage after every write call (embedded use). The server
        turns it off and commits once per batch of frames (group commit).
    """

    #: not safe for concurrent calls: the facade serialises writes with its lock
    thread_safe = False

    def __init__(self, storage=None, autocommit: bool = True):
        self.storage = storage
        self.autocommit = autocommit
        self.names = NameTable(on_intern=self._names_added)
        self._map: dict[bytes, Scroll] = {}
        self._index = CoordIndex()
        self._started = time.time()
        self._ops: dict[str, int] = {}
        self.load_seconds = 0.0
        # Since the last commit: (keys blob, the scrolls they held before) per write call,
        # and how many names the storage holds.
        self._undo: list[tuple[bytes, list]] = []
        self._names_mark = 0
        if storage is not None:
            self._load()

    # -- durability -----------------------------------------------------------------------

    def _names_added(self, first: int, names: list) -> None:
        if self.storage is not None:
            self.storage.add_names(first, names)

    def _load(self) -> None:
        t0 = time.perf_counter()
        names, rows = self.storage.load()
        self.names.extend(list(names))
        self._names_mark = len(self.names)
        table = self.names
        m = self._map
        # A million new objects would trigger full garbage collections over everything
        # loaded so far, half of the loop's time; they form no cycles.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            for key, blob, version, created, updated, _crc in rows:
                m[key] = _StoredScroll(key, blob, version, created, updated, table)
        finally:
            if gc_was_on:
                gc.enable()
        keys = list(m)
        if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
            keys.sort()   # the storage returns key order; never trust it blindly
        self._index.load_sorted(b"".join(keys))
        if len(self.names) >= MAX_NAMES and not self.names.free:
            # A full table (a flood of names, say) would refuse every new name for good:
            # free what no key uses.
            self.reclaim_names()
        self.load_seconds = time.perf_counter() - t0

    def _queued(self, mark: int, queue: Any, *args: Any) -> None:
        """Queue a write that memory already shows; undo it there if queueing fails."""
        try:
            queue(*args)
        except BaseException:
            self._revert(mark)
            raise
        if self.autocommit:
            self.commit()

    def _revert(self, mark: int) -> None:
        """Undo, newest first, every write recorded in the undo log after ``mark``."""
        undo, m, index = self._undo, self._map, self._index
        while len(undo) > mark:
            blob, olds = undo.pop()
            for i in range(len(olds) - 1, -1, -1):
                key = blob[18 * i:18 * i + 18]
                old = olds[i]
                if old is None:
                    if m.pop(key, None) is not None:
                        index.remove(key)
                else:
                    if key not in m:
                        index.add(key)
                    m[key] = old

    def commit(self) -> int:
        """Make every write so far durable (per the storage's fsync policy).

        :returns: the number of storage operations written (0: nothing was pending).
        :raises StorageError: the commit failed; every write since the last commit is
            then undone in memory too (scrolls, index and name table), as if it had
            never been made.
        """
        if self.storage is None:
            return 0
        try:
            n = self.storage.commit()
        except BaseException:
            self._revert(0)
            self.names.truncate(self._names_mark)
            raise
        self._undo = []
        self._names_mark = len(self.names)
        self.names.committed()
        return n

    def close(self) -> None:
        """Commit and close the storage, if any."""
        if self.storage is not None:
            self.commit()
            self.storage.close()
            self.storage = None

    def _count(self, op: str, n: int = 1) -> None:
        self._ops[op] = self._ops.get(op, 0) + n

    def _check_names(self, blob: bytes) -> None:
        """Refuse keys holding name ids never interned (COORD): nothing could format them.

        :raises CoordinateError: naming the row and the id.
        """
        # Name ids are 0xF000 and up, so only a high byte >= 0xF0 needs the table.
        if len(blob) == 18:
            if max(blob[0::2]) < 0xF0:
                return
        elif not blob or np.frombuffer(blob, np.uint8)[0::2].max() < 0xF0:
            return
        self.names.check_ids(_core.unpack_many(blob))

    # -- point operations -----------------------------------------------------------------

    def get(self, key: bytes) -> Scroll | None:
        """CGET: the scroll at an 18-byte key, or None."""
        return self._map.get(key)

    def get_many(self, blob: bytes, content_only: bool = False) -> list:
        """Batched CGET over an N*18-byte blob.

        :param blob: N*18 bytes of packed keys.
        :param content_only: return the contents only, not Scroll objects.
        :returns: a list of N Scrolls, None where nothing is stored; with
            ``content_only`` a list of N contents, None where nothing is stored.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        if len(blob) % 18:
            raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {len(blob)}")
        if content_only:
            return _core.scroll_contents(self._map, bytes(blob), Scroll)
        return _core.get_scrolls(self._map, bytes(blob))

    def estimate_size(self, blob: bytes, stop: int | None = None,
                      content_only: bool = False) -> int:
        """About how many bytes the scrolls at these keys take in a reply (see
        :func:`estimate_wire_size`), for refusing a read before building its reply.

        :param blob: N*18 bytes of packed keys.
        :param stop: stop counting once the total passes this many bytes.
        :param content_only: count the contents only (a values-only read).
        :returns: the estimate (at most one content past ``stop``).
        """
        return estimate_wire_size(self.get_many(blob), stop,
                                  0 if content_only else _SCROLL_WIRE)[0]

    def put(self, key: bytes, content: Any, if_version: int | None = None) -> int:
        """CPUT: write a scroll; returns its new version.

        :param if_version: compare-and-set: write only if the stored version equals this
            (0 means "only if absent").
        :raises VersionConflict: the stored version differs from ``if_version``.
        :raises InterfaceError: unstorable content or a malformed key.
        """
        if type(key) is not bytes or len(key) != 18:
            raise InterfaceError("a packed coordinate is 18 bytes")
        if_version = _count_arg(if_version, "if_version")
        self._check_names(key)
        content = check_content(content)
        old = self._map.get(key)
        if if_version is not None:
            have = 0 if old is None else old.version
            if have != if_version:
                raise VersionConflict(
                    f"version conflict at {self._fmt(key)}: expected {if_version}, found {have}")
        now = time.time()
        if old is None:
            s = Scroll(key, content, 1, now, now, self.names)
        else:
            s = Scroll(key, content, old.version + 1, old.created_at, now, self.names)
        st = self.storage
        if st is not None:
            # Encoded and queued before memory changes: a refusal leaves nothing behind.
            st.put(key, pack_value(content), s.version, s.created_at, s.updated_at)
            self._undo.append((key, [old]))
        if old is None:
            self._index.add(key)
        self._map[key] = s
        if st is not None and self.autocommit:
            self.commit()
        return s.version

    def put_many(self, blob: bytes, contents: Any) -> list[int]:
        """Batched CPUT: ``contents[i]`` goes to the i-th key of the blob.

        :param contents: a list, or an ndarray whose row i is content i.
        :returns: the new versions.
        :raises InterfaceError: lengths differ or a content is unstorable (nothing is
            written then).
        """
        if type(blob) is not bytes:
            blob = bytes(blob)
        if len(blob) % 18:
            raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {len(blob)}")
        self._check_names(blob)
        n = len(blob) // 18
        if isinstance(contents, np.ndarray):
            if contents.ndim == 0 or contents.shape[0] != n:
                raise InterfaceError(f"{n} coordinates but contents of shape {contents.shape}")
            frozen = check_content(contents)   # the dtype check, and one frozen copy
            if frozen.ndim > 1:
                contents = list(frozen)        # rows of that copy: nothing left to check
            else:
                contents = frozen.tolist()
                _core.check_contents(contents, check_content)
        else:
            contents = list(contents)
            if len(contents) != n:
                raise InterfaceError(f"{n} coordinates but {len(contents)} contents")
            _core.check_contents(contents, check_content)
        st = self.storage
        if st is not None:
            # Encoded before memory changes: a refusal leaves nothing behind.
            blobs = [pack_value(c) for c in contents]
            olds = _core.get_scrolls(self._map, blob)
        versions, new_keys, written = _core.put_scrolls(self._map, blob, contents, time.time(),
                                                        self.names, Scroll)
        if new_keys:
            self._index.add_many(new_keys)
        if st is not None:
            mark = len(self._undo)
            self._undo.append((blob, olds))
            self._queued(mark, st.put_many, [
                (s.key, b, s.version, s.created_at, s.updated_at)
                for s, b in zip(written, blobs)])
        return versions

    def delete(self, key: bytes) -> int:
        """CDEL of one key: returns 1 if a scroll was removed, else 0."""
        old = self._map.pop(key, None)
        if old is None:
            return 0
        self._index.remove(key)
        if self.storage is not None:
            mark = len(self._undo)
            self._undo.append((key, [old]))
            self._queued(mark, self.storage.delete, [key])
        return 1

    def delete_many(self, blob: bytes) -> int:
        """CDEL of many keys: returns how many scrolls were removed."""
        keys = [blob[i:i + 18] for i in range(0, len(blob), 18)]
        gone, olds = [], []
        for key in keys:
            old = self._map.pop(key, None)
            if old is not None:
                self._index.remove(key)
                gone.append(key)
                olds.append(old)
        if gone and self.storage is not None:
            mark = len(self._undo)
            self._undo.append((b"".join(gone), olds))
            self._queued(mark, self.storage.delete, gone)
        return len(gone)

    def delete_range(self, pattern: np.ndarray) -> int:
        """CDEL of a pattern: removes every matching scroll, returns how many."""
        coords = self._index.query(pattern)
        return self.delete_many(_core.pack_many(coords)) if len(coords) else 0

    # -- pattern queries ------------------------------------------------------------------

    def range(self, pattern: np.ndarray, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False):
        """CRANGE: scrolls matching the pattern, in coordinate order.

        :param limit: at most this many (page size).
        :param after: exclusive start key (the last key of the previous page).
        :param keys_only: return an (M, 9) uint16 array of coordinates instead of scrolls.
        """
        limit = _count_arg(limit, "limit")
        coords = self._index.query(pattern, None if after is None else _core.unpack(after),
                                   limit)
        if keys_only:
            return coords
        blob = _core.pack_many(coords)
        m = self._map
        return [m[blob[i:i + 18]] for i in range(0, len(blob), 18)]

    def count(self, pattern: np.ndarray) -> int:
        """CRANGE count: how many scrolls match the pattern."""
        return self._index.count(pattern)

    def nearest(self, c: np.ndarray, k: int = 10, metric: str = "l1", within=None):
        """CNEAREST: the k stored coordinates nearest to c.

        :returns: ((m, 9) uint16 coordinates, (m,) int64 distances), nearest first, ties
            by coordinate order.
        """
        k = _count_arg(k, "k", 0, MAX_K)
        return self._index.nearest(c, k, metric, within)

    def hier(self, c: np.ndarray, direction: str):
        """CHIER NEXT/PREV: the neighbouring stored coordinate in document order, or None."""
        if direction not in ("NEXT", "PREV"):
            raise InterfaceError(f"direction must be NEXT or PREV here, got {direction!r}")
        return self._index.neighbour(c, direction)

    # -- compound instructions ------------------------------------------------------------

    def _query_vector(self, q, mode: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(vector, coordinate) of an attention query given as a key or a vector.

        :returns: the query vector (None when the query scroll holds something else) and
            the query coordinate (None for a vector query).
        :raises NotFoundError: the key holds no scroll (``mode="distance"`` needs only
            the coordinate, so there it may be empty).
        """
        if isinstance(q, bytes):
            if len(q) != 18:
                raise InterfaceError(f"a query key is 18 bytes, got {len(q)}")
            s = self._map.get(q)
            if s is None and mode != "distance":
                raise NotFoundError(f"no scroll at the query coordinate {self._fmt(q)}")
            vec = None if s is None else _vector(s.content)
            if vec is not None and vec.size == 0:
                raise InterfaceError(f"the query scroll at {self._fmt(q)} holds an empty vector")
            return vec, _core.unpack(q)
        if isinstance(q, np.ndarray):
            if q.ndim != 1 or q.dtype.kind not in "biuf":
                raise InterfaceError("a query vector must be a 1-d numeric array, got "
                                     f"shape {q.shape} dtype {q.dtype}")
            if q.size == 0:
                raise InterfaceError("the query vector is empty")
            return q, None
        raise InterfaceError(f"query must be a key or a vector, got {type(q).__name__}")

    def _vectors(self, scrolls: list, size: int | None, what: str, against: str = "",
                 hint: str = "") -> np.ndarray:
        """The contents of ``scrolls`` stacked as (n, size) vectors, dtype kept.

        :param size: the size every vector must have (None: the first one's).
        :param what: "query", "key" or "value", for messages.
        :param against: what fixed the size ("the query vector"), for messages.
        :param hint: appended to the message about a scroll holding no vector.
        :raises InterfaceError: a scroll holds no 1-d numeric vector, or one of another
            size; the message names its coordinate and both sizes.
        """
        vecs = [None if s is None else _vector(s.content) for s in scrolls]
        if not vecs:
            return np.empty((0, size or 0))
        shapes = {None if v is None else v.shape for v in vecs}
        if len(shapes) == 1 and None not in shapes and (size is None or shapes == {(size,)}):
            return np.stack(vecs)
        for s, v in zip(scrolls, vecs):   # name the first scroll that does not fit
            if v is None:
                held = "nothing" if s is None else _kind(s.content)
                where = "" if s is None else f" at {self._fmt(s.key)}"
                raise InterfaceError(
                    f"the {what} scroll{where} holds {held}, not a vector"
                    + (f" of size {size}" if size is not None else "") + hint)
            if size is None:
                size, against = v.shape[0], f"the {what} scroll at {self._fmt(s.key)}"
            elif v.shape[0] != size:
                raise InterfaceError(
                    f"{against} has size {size} but the {what} scroll at {self._fmt(s.key)} "
                    f"holds a vector of size {v.shape[0]}")
        raise AssertionError("unreachable: the shapes differ, so some scroll does not fit")

    def _value_vectors(self, keys: np.ndarray, values, cast: bool = True) -> np.ndarray:
        if values.dtype == np.int32:           # a delta applied to every key
            vcoords = apply_delta_any(keys, values)
            if isinstance(vcoords, list):
                raise InterfaceError("a values delta must not contain wildcards")
            scrolls = self.get_many(_core.pack_many(vcoords))
            for i, s in enumerate(scrolls):
                if s is None:
                    raise InterfaceError(
                        f"no value scroll at {self._fmt(_core.pack(vcoords[i]))} (the value "
                        f"of the key at {self._fmt(_core.pack(keys[i]))})")
        else:                                   # a pattern aligned with the keys
            scrolls = self.range(values)
        if len(scrolls) != len(keys):
            raise InterfaceError(f"values give {len(scrolls)} scrolls for {len(keys)} keys")
        out = self._vectors(scrolls, None, "value")
        return out.astype(np.float64) if cast else out

    def attend(self, q, key_pattern: np.ndarray, top_k: int | None = None, values=None,
               return_output: bool = True, mode: str | None = "auto") -> dict:
        """CATTEND: attention of one query over the scrolls matching ``key_pattern``.

        Modes: ``"dot"`` scores q.k/sqrt(d) with softmax weights over all matched keys;
        ``"distance"`` scores 1/(1 + L1 distance) between the query and key coordinates
        with weights score/sum (the text fallback); ``"auto"`` is "dot" when the query is
        a vector and "distance" when the query scroll and every key scroll hold no vector.
        Anything else (a vector query over text keys, keys of mixed kinds or sizes) is an
        error, never a silent switch. With ``values`` the output is the weighted sum of
        the value vectors.

        :param q: an 18-byte key of the scroll holding the query, or a 1-d vector.
        :param top_k: return only the ``top_k`` best keys (the weights are over all).
        :param values: None, a (2, 9) uint16 pattern aligned with the keys or a (2, 9)
            int32 delta from each key to its value.
        :param mode: "auto" (None), "dot" or "distance".
        :returns: dict with ``keys`` (top-k coordinates by score, ties by coordinate),
            ``scores``, ``weights``, ``contents``, ``output`` (None without ``values`` or
            when no key matched), ``n`` matched, ``mode`` ("dot" or "distance").
        :raises NotFoundError: the query key holds no scroll (modes "auto" and "dot").
        :raises InterfaceError: sizes or kinds disagree (the message names both sizes),
            or a bad argument.
        """
        mode = "auto" if mode is None else mode
        if mode not in ("auto", "dot", "distance"):
            raise InterfaceError(f"mode must be 'auto', 'dot' or 'distance', got {mode!r}")
        top_k = _count_arg(top_k, "top_k")
        qvec, qcoord = self._query_vector(q, mode)
        scrolls = self.range(key_pattern)
        n = len(scrolls)
        keys = _core.unpack_many(b"".join(s.key for s in scrolls)) if n else \
            np.empty((0, 9), dtype=np.uint16)
        if mode == "auto":
            if qvec is None:
                for s in scrolls:
                    v = _vector(s.content)
                    if v is not None:
                        raise InterfaceError(
                            f"the query scroll at {self._fmt(q)} holds "
                            f"{_kind(self._map[q].content)}, not a vector, but the key scroll "
                            f"at {self._fmt(s.key)} holds a vector of size {v.shape[0]}: "
                            "store a query vector, or pass mode='distance'")
            mode = "dot" if qvec is not None else "distance"
        if mode == "dot":
            if qvec is None:
                raise InterfaceError(f"mode 'dot' needs a query vector; the query scroll at "
                                     f"{self._fmt(q)} holds {_kind(self._map[q].content)}")
            d = qvec.shape[0]
            K = self._vectors(scrolls, d, "key", "the query vector",
                              " (keys of mixed kinds: pass mode='distance' to score every key "
                              "by coordinate distance)").astype(np.float64)
            scores = K @ qvec.astype(np.float64) / math.sqrt(d)
            w = np.exp(scores - scores.max()) if n else scores
            weights = w / w.sum() if n else w
        else:
            if qcoord is None:
                raise InterfaceError("mode 'distance' scores coordinates: give the query as a "
                                     "coordinate (query_coord), not a vector")
            dist = _core.l1(qcoord, keys).astype(np.float64) if n else np.empty(0)
            scores = 1.0 / (1.0 + dist)
            weights = scores / scores.sum() if n else scores
        output = None
        if values is not None and return_output and n:
            output = weights @ self._value_vectors(keys, values)
        order = np.lexsort(tuple(keys[:, j] for j in range(8, -1, -1)) + (-scores,)) if n else \
            np.empty(0, dtype=np.int64)
        if top_k is not None:
            order = order[:top_k]
        return {"keys": keys[order], "scores": scores[order], "weights": weights[order],
                "contents": [scrolls[i].content for i in order], "output": output, "n": n,
                "mode": mode}

    def attend_many(self, queries, key_patterns: np.ndarray, top_k: int | None = None,
                    values=None, return_weights: bool = False) -> dict:
        """Batched CATTEND: one attention output per query (windowed/sparse attention).

        Query i attends over the scrolls matching its pattern (its window) with dot-product
        scores and softmax weights; only scrolls inside some window are read, so anything
        stored between windows may hold any content.

        :param queries: (Q, d) float array, or an N*18-byte blob of keys of query vectors.
        :param key_patterns: (Q, 2, 9) uint16 patterns, one per query.
        :param values: None (keys are also values) or a (2, 9) int32 delta mapping each key
            coordinate to its value coordinate.
        :param top_k: with ``return_weights``, keep each query's ``top_k`` largest weights.
        :param return_weights: include each query's weights (list of arrays, key order).
        :returns: dict ``outputs`` (Q, d_v) float64, ``counts`` (Q,) int64 keys per query,
            and ``weights`` when asked.
        :raises NotFoundError: a query key holds no scroll.
        :raises InterfaceError: shapes disagree (the message names both sizes), or a
            query/key/value scroll holds no vector.
        """
        m = self._map
        top_k = _count_arg(top_k, "top_k")
        if top_k is not None and not return_weights:
            # top_k only trims the returned weights; accepting it alone would ignore it.
            raise InterfaceError("attend_many: top_k applies only with return_weights=True")
        if isinstance(queries, (bytes, bytearray)):
            if len(queries) % 18:
                raise InterfaceError(f"query keys need a multiple of 18 bytes, got {len(queries)}")
            qs = []
            for i in range(0, len(queries), 18):
                s = m.get(bytes(queries[i:i + 18]))
                if s is None:
                    raise NotFoundError(f"no scroll at the query coordinate "
                                        f"{self._fmt(bytes(queries[i:i + 18]))} (query {i // 18})")
                qs.append(s)
            Q = self._vectors(qs, None, "query")
        else:
            Q = np.asarray(queries)
        kp = np.asarray(key_patterns)
        if Q.ndim != 2 or Q.dtype.kind not in "biuf" or kp.shape != (Q.shape[0], 2, 9) \
                or kp.dtype != np.uint16:
            raise InterfaceError(f"need (Q, d) numeric queries and (Q, 2, 9) uint16 patterns, "
                                 f"got {Q.shape} {Q.dtype} and {kp.shape} {kp.dtype}")
        if values is not None and values.dtype != np.int32:
            raise InterfaceError("batched attention takes values as a delta from each key to "
                                 "its value (a pattern cannot be aligned with many windows)")
        nq, d = Q.shape
        if nq == 0:
            return {"outputs": np.empty((0, d)), "counts": np.empty(0, dtype=np.int64)}
        if d == 0:
            raise InterfaceError("the query vectors are empty (d = 0)")
        kp = np.ascontiguousarray(kp)
        # One index query for the union box of all windows, then per-query spans of it;
        # rows of the box that are in no window are dropped before any content is read.
        union = np.stack([kp[:, 0].min(axis=0), kp[:, 1].max(axis=0)]).astype(np.uint16)
        ucoords = self._index.query(union)
        starts, ends, exact = _core.window_spans(ucoords, kp)
        inside = _rows_in_windows(ucoords, kp, starts, ends, exact)
        if not inside.all():
            ucoords = np.ascontiguousarray(ucoords[inside])
            starts, ends, exact = _core.window_spans(ucoords, kp)
        blob = _core.pack_many(ucoords)
        K = self._vectors([m[blob[i:i + 18]] for i in range(0, len(blob), 18)], d, "key",
                          "each query vector")
        V = K if values is None else self._value_vectors(ucoords, values, cast=False)
        # float32 throughout when everything stored is float32 (as models keep it),
        # float64 otherwise.
        ft = np.float32 if Q.dtype == K.dtype == V.dtype == np.float32 else np.float64
        Q, K, V = Q.astype(ft, copy=False), K.astype(ft, copy=False), V.astype(ft, copy=False)
        dv = V.shape[1] if V.ndim == 2 and len(V) else d
        outputs = np.zeros((nq, dv), dtype=ft)
        counts = np.zeros(nq, dtype=np.int64)
        weights_out: list | None = [None] * nq if return_weights else None
        scale = ft(1.0 / math.sqrt(d))
        # Queries in window order, in blocks: one dense (block x span) matmul per block
        # with a mask, so neighbouring windows share their keys instead of gathering a
        # (Q, W, d) copy. Rows inside a window's lexicographic span that miss its box
        # (possible when a later component is constrained) are masked out too.
        order = np.argsort(starts, kind="stable")
        block = 128
        for b0 in range(0, nq, block):
            qi = order[b0:b0 + block]
            s0, e0 = int(starts[qi].min()), int(ends[qi].max())
            if e0 <= s0:
                continue
            pos = np.arange(s0, e0)
            valid = (pos >= starts[qi, None]) & (pos < ends[qi, None])
            for r in np.flatnonzero(~exact[qi]):
                i = qi[r]
                a, b = int(starts[i]), int(ends[i])
                valid[r, a - s0:b - s0] = _core.match(ucoords[a:b], kp[i])
            sc = (Q[qi] @ K[s0:e0].T) * scale
            sc[~valid] = -np.inf
            mx = sc.max(axis=1, keepdims=True)
            mx[~np.isfinite(mx)] = 0
            w = np.exp(sc - mx)
            tot = w.sum(axis=1, keepdims=True)
            w = np.divide(w, tot, out=np.zeros_like(w), where=tot > 0)
            outputs[qi] = w @ V[s0:e0]
            counts[qi] = valid.sum(axis=1)
            if weights_out is not None:
                for r, i in enumerate(qi):
                    wr = w[r, valid[r]]
                    weights_out[i] = np.sort(wr)[::-1][:top_k] if top_k is not None else wr
        res = {"outputs": outputs, "counts": counts}
        if weights_out is not None:
            res["weights"] = weights_out
        return res

    def kg(self, start: np.ndarray, deltas: np.ndarray, hops: int = 1,
           max_frontier: int = 10000) -> list:
        """CKG: multi-hop traversal.

        From each frontier coordinate apply each delta; the scrolls found there are edges.
        An edge whose content is a coordinate (or a list of them) leads there, otherwise
        the edge's own coordinate is the next frontier. Coordinates are visited once;
        each frontier is cut to ``max_frontier`` (in coordinate order).

        :param start: (2, 9) pattern; a concrete one is a single start coordinate, a
            wildcard one starts from every stored scroll matching it.
        :param deltas: (R, 2, 9) int32 relation deltas.
        :returns: the scrolls stored at the final frontier, in coordinate order.
        """
        deltas = np.asarray(deltas)
        if deltas.ndim != 3 or deltas.shape[1:] != (2, 9) or deltas.dtype != np.int32:
            raise InterfaceError(f"deltas must be an (R, 2, 9) int32 array, got {deltas.shape}")
        hops = _count_arg(hops, "hops", 0, MAX_HOPS)
        max_frontier = _count_arg(max_frontier, "max_frontier", 1, MAX_FRONTIER)
        if (start[0] == start[1]).all():
            frontier = [_core.pack(start[0])]
        else:
            frontier = [s.key for s in self.range(start, limit=max_frontier)]
        visited = set(frontier)
        m = self._map
        for _ in range(hops):
            if not frontier:
                break
            base = _core.unpack_many(b"".join(frontier))
            nxt: dict[bytes, None] = {}
            for delta in deltas:
                delta = np.ascontiguousarray(delta)
                # A row the delta takes out of the coordinate space has no edge for this
                # relation; the other rows go on.
                keep = delta_in_range(base, delta)
                if not keep.any():
                    continue
                targets = apply_delta_any(base if keep.all() else base[keep], delta)
                if isinstance(targets, list):
                    edges = [s for p in targets for s in self.range(p, limit=max_frontier)]
                else:
                    blob = _core.pack_many(targets)
                    edges = [s for s in (m.get(blob[i:i + 18]) for i in range(0, len(blob), 18))
                             if s is not None]
                for e in edges:
                    found = _edge_targets(e.content, self.names)
                    for t in (found if found is not None else [e.key]):
                        if t not in visited:
                            visited.add(t)
                            nxt[t] = None
            frontier = sorted(nxt)[:max_frontier]
        return [m[k] for k in sorted(frontier) if k in m]

    # -- names, import/export, health -----------------------------------------------------

    def intern(self, names: list) -> list:
        """Ids of names, interning unknown ones (persisted with the data: with
        ``autocommit`` they are committed before their ids are returned).

        :raises LimitError: the name table is full.
        :raises StorageError: the commit failed (the new names are forgotten again).
        """
        if not isinstance(names, (list, tuple)):
            raise InterfaceError("intern takes a list of names")
        ids = self.names.intern_many(list(names), True)
        if self.storage is not None and self.autocommit:
            self.commit()
        return ids

    def lookup_names(self, names: list) -> list:
        """Ids of names, None for unknown ones (nothing is interned)."""
        return self.names.intern_many(list(names), False)

    def name_table(self) -> list:
        """The whole name table, index i = id 0xF000 + i ("" for a reclaimed id)."""
        return self.names.to_list()

    def reclaim_names(self) -> list:
        """Free the ids of the names no stored key uses, so a flood of junk names can be
        undone (persisted with the data). A freed id is refused in keys until it is given
        to a name again, which happens only once no never-used id is left; the table's
        epoch changes, telling caches to refresh.

        :returns: how many ids were freed.
        """
        coords = self._index.all_coords()
        named = coords[coords >= NAME_BASE]
        used = set(np.unique(named).tolist()) if named.size else set()
        table = self.names.to_list()
        unused = [NAME_BASE + i for i, n in enumerate(table) if n and NAME_BASE + i not in used]
        freed = self.names.reclaim(unused)
        if self.storage is None:
            self.names.committed()  # nothing to roll back in memory only
        elif freed:
            for ident in unused:
                self.storage.add_names(ident - NAME_BASE, [""])
            if self.autocommit:
                self.commit()
        return len(freed)

    def import_phext(self, text: str, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext document; returns how many were stored.

        Reading agrees scroll for scroll with the reference ``explode``; every scroll a
        phext file holds is storable, so ``skip_invalid`` has nothing to skip on import
        (it is accepted for symmetry with :meth:`export_phext`).
        """
        from vtpu import phext

        items = phext.parse_phext(text)
        if not items:
            return 0
        # parse_phext yields components in 1..999 only, so they always fit uint16.
        blob = _core.pack_many(np.array([c for c, _ in items], dtype=np.uint16))
        self.put_many(blob, [t for _, t in items])
        return len(items)

    def export_phext(self, pattern: np.ndarray | None = None, skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document."""
        from vtpu import phext

        scrolls = self.range(_FULL if pattern is None else pattern)
        items = [(tuple(int(x) for x in _core.unpack(s.key)), s.content) for s in scrolls]
        return phext.format_phext(items, skip_invalid=skip_invalid, names=self.names)

    def pipeline(self, raise_on_error: bool = True):
        """Queue engine calls and run them in order with ``execute()`` (the in-process
        counterpart of a remote pipeline; see :class:`vtpu.backend.EnginePipeline`)."""
        from vtpu.backend import EnginePipeline

        return EnginePipeline(self, raise_on_error)

    def _fmt(self, key: bytes) -> str:
        try:
            return _core.format_coord(_core.unpack(key), self.names)
        except CoordinateError:
            return key.hex()

    def health(self) -> dict:
        """Liveness and a few counts (the prototype's health reply, extended)."""
        return {"status": "ok", "version": __version__, "scrolls": len(self._map),
                "names": len(self.names), "durable": self.storage is not None,
                "uptime_s": time.time() - self._started}

    def stats(self) -> dict:
        """Counts, index sizes and memory."""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"scrolls": len(self._map), "names": len(self.names),
                "index": self._index.sizes(), "last_plan": self._index.last_plan,
                "max_rss_bytes": rss, "pid": os.getpid(),
                "load_seconds": self.load_seconds,
                "durable": self.storage is not None}
