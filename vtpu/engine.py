"""The store: a hash map of scrolls, the coordinate indexes and the instructions.

One :class:`Engine` serves both the server (one per process, owned by its event loop)
and the embedded ``mem://`` / ``file://`` modes; it implements
:class:`vtpu.backend.Backend`. Every argument is already packed:
18-byte keys, N*18-byte blobs, (2, 9) uint16 patterns, (2, 9) int32 deltas; the facade
(:mod:`vtpu.client`) and the server do the parsing. Point lookups are one dict access;
pattern queries go through :class:`vtpu.index.CoordIndex`.

The engine is not thread-safe by design (Redis-style: one loop owns it). The embedded
client serialises calls with a lock.
"""
from __future__ import annotations

import math
import os
import resource
import time
from typing import Any, Iterator

import numpy as np

from vtpu import _core, phext
from vtpu._version import __version__
from vtpu.coords import NameTable, Scroll, apply_delta_any
from vtpu.errors import (CoordinateError, InterfaceError, LimitError, RequestTimeout,
                         VersionConflict)
from vtpu.index import WINDOW, CoordIndex
from vtpu.steps import Best, Steps, run

__all__ = ["Engine", "check_content"]

_FULL = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
_EMPTY_COORDS = np.empty((0, 9), dtype=np.uint16)

# Work per step of the instructions in steps (vtpu.steps), each about a millisecond.
GATHER = 1024        # scrolls read (and scored, formatted) per step
DELETE_STEP = 128    # scrolls deleted per step (map, index and storage queue)
PUT_STEP = 1024      # scrolls of an import written per step
EDGE_STEP = 512      # KG edges followed per step
PHEXT_STEP = 128     # scrolls formatted per step of an export
SCORES_PER_STEP = 1 << 15   # ATTEND_MANY attention scores computed per step
_SCALARS = (str, bytes, int, float, bool, type(None))


def check_content(content: Any) -> Any:
    """Validate (and freeze) a scroll's content.

    str, bytes, numpy arrays (copied and made read-only, dtype and shape kept) and any
    msgpack-able value (None, bool, int, float, list, dict with str keys) are accepted.

    :returns: the value to store.
    :raises InterfaceError: anything else (object arrays, sets, custom objects...).
    """
    if isinstance(content, _SCALARS):
        if isinstance(content, int) and not isinstance(content, bool) and \
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
    if isinstance(content, (list, tuple)):
        return [check_content(x) for x in content]
    if isinstance(content, dict):
        out = {}
        for k, v in content.items():
            if not isinstance(k, (str, int)):
                raise InterfaceError(f"dict content keys must be str or int, got {type(k).__name__}")
            out[k] = check_content(v)
        return out
    if isinstance(content, np.generic):
        return content.item()
    raise InterfaceError(
        f"cannot store content of type {type(content).__name__}: use str, bytes, a numpy "
        "array or a msgpack-able value")


def _frozen_row(row: np.ndarray) -> np.ndarray:
    """Content check for rows of an array the engine already copied and froze."""
    return row


def _vector(content: Any) -> np.ndarray | None:
    """The content as a 1-d float vector, or None when it is not one."""
    if isinstance(content, np.ndarray) and content.ndim == 1 and content.dtype.kind in "biuf":
        return content
    if isinstance(content, list) and content and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in content):
        return np.asarray(content, dtype=np.float64)
    return None


def _parse_targets(content: Any, names: NameTable) -> list[bytes] | None:
    """Coordinates an edge's content points at (CKG), or None when it points nowhere."""
    items = content if isinstance(content, list) else [content]
    if not items:
        return None
    out = []
    for item in items:
        if not isinstance(item, str) or ("/" not in item and ";" not in item):
            return None   # a coordinate's text always holds its group separators
        try:
            out.append(_core.pack(_core.parse_coord(item.strip(), names, False)))
        except CoordinateError:
            return None
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
            from vtpu.protocol import unpack_value

            _SCROLL_CONTENT.__set__(self, unpack_value(blob))
            self._blob = None
        return _SCROLL_CONTENT.__get__(self)


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
        table = self.names
        m = self._map
        for key, blob, version, created, updated in rows:
            m[key] = _StoredScroll(key, blob, version, created, updated, table)
        keys = list(m)
        if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
            keys.sort()   # the storage returns key order; never trust it blindly
        self._index.load_sorted(b"".join(keys))
        self.load_seconds = time.perf_counter() - t0

    def _persist(self, scrolls: list[Scroll]) -> None:
        from vtpu.protocol import pack_value

        self.storage.put_many([(s.key, pack_value(s.content), s.version, s.created_at,
                                s.updated_at) for s in scrolls])

    def _persist_delete(self, keys: list[bytes]) -> None:
        self.storage.delete(keys)

    def _autocommit(self) -> None:
        """Commit what the write call just queued (embedded use; the server commits)."""
        if self.autocommit and self.storage is not None:
            self.storage.commit()

    def commit(self) -> None:
        """Make every write so far durable (per the storage's fsync policy)."""
        if self.storage is not None:
            self.storage.commit()

    def close(self) -> None:
        """Commit and close the storage, if any."""
        if self.storage is not None:
            self.storage.commit()
            self.storage.close()
            self.storage = None

    def _count(self, op: str, n: int = 1) -> None:
        self._ops[op] = self._ops.get(op, 0) + n

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
        g = self._map.get
        return [g(blob[i:i + 18]) for i in range(0, len(blob), 18)]

    def put(self, key: bytes, content: Any, if_version: int | None = None) -> int:
        """CPUT: write a scroll; returns its new version.

        :param if_version: compare-and-set: write only if the stored version equals this
            (0 means "only if absent").
        :raises VersionConflict: the stored version differs from ``if_version``.
        :raises InterfaceError: unstorable content or a malformed key.
        """
        if type(key) is not bytes or len(key) != 18:
            raise InterfaceError("a packed coordinate is 18 bytes")
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
            self._index.add(key)
        else:
            s = Scroll(key, content, old.version + 1, old.created_at, now, self.names)
        self._map[key] = s
        if self.storage is not None:
            self._persist([s])
            self._autocommit()
        return s.version

    def put_many(self, blob: bytes, contents: Any) -> list[int]:
        """Batched CPUT: ``contents[i]`` goes to the i-th key of the blob.

        :param contents: a list, or an ndarray whose row i is content i.
        :returns: the new versions.
        :raises InterfaceError: lengths differ or a content is unstorable (nothing is
            written then).
        """
        versions = self._write_many(blob, contents)
        self._autocommit()
        return versions

    def _write_many(self, blob: bytes, contents: Any) -> list[int]:
        """:meth:`put_many` without the autocommit (what an import does per step)."""
        if type(blob) is not bytes:
            blob = bytes(blob)
        n = len(blob) // 18
        check = check_content
        if isinstance(contents, np.ndarray):
            if contents.ndim == 0 or contents.shape[0] != n:
                raise InterfaceError(f"{n} coordinates but contents of shape {contents.shape}")
            frozen = np.array(contents, copy=True, order="C")
            frozen.flags.writeable = False
            contents = list(frozen) if frozen.ndim > 1 else [x.item() for x in frozen]
            check = _frozen_row   # rows of one frozen copy: nothing left to copy or check
        else:
            contents = list(contents)
            if len(contents) != n:
                raise InterfaceError(f"{n} coordinates but {len(contents)} contents")
        versions, new_keys, written = _core.put_scrolls(self._map, blob, contents, time.time(),
                                                        self.names, Scroll, check)
        if new_keys:
            self._index.add_many(new_keys)
        if self.storage is not None:
            self._persist(written)
        return versions

    def delete(self, key: bytes) -> int:
        """CDEL of one key: returns 1 if a scroll was removed, else 0."""
        if self._map.pop(key, None) is None:
            return 0
        self._index.remove(key)
        if self.storage is not None:
            self._persist_delete([key])
            self._autocommit()
        return 1

    def delete_many(self, blob: bytes) -> int:
        """CDEL of many keys: returns how many scrolls were removed."""
        n = self._delete_keys(blob)
        self._autocommit()
        return n

    def _delete_keys(self, blob: bytes) -> int:
        """:meth:`delete_many` without the autocommit."""
        keys = [blob[i:i + 18] for i in range(0, len(blob), 18)]
        gone = []
        for key in keys:
            if self._map.pop(key, None) is not None:
                self._index.remove(key)
                gone.append(key)
        if gone and self.storage is not None:
            self._persist_delete(gone)
        return len(gone)

    def delete_range(self, pattern: np.ndarray) -> int:
        """CDEL of a pattern: removes every matching scroll, returns how many."""
        return run(self.delete_range_steps(pattern))

    def delete_range_steps(self, pattern: np.ndarray) -> Steps:
        """Steps of :meth:`delete_range` (:mod:`vtpu.steps`).

        The keys matching when it starts are deleted DELETE_STEP at a time; one that
        another request deleted meanwhile is not counted, one written meanwhile under
        the pattern is not deleted. Stopped by a :class:`RequestTimeout` between steps,
        it raises one that says how many it deleted: those stay deleted (each step
        leaves the store consistent), the others stay stored.
        """
        n = 0
        total = None
        try:
            coords = yield from self._index.query_steps(pattern)
            total = len(coords)
            for a in range(0, total, DELETE_STEP):
                if a:
                    yield
                n += self._delete_keys(_core.pack_many(coords[a:a + DELETE_STEP]))
        except RequestTimeout as exc:
            done = "none was deleted" if total is None else \
                f"{n} of the {total} matching scrolls were deleted, the others are still stored"
            raise RequestTimeout(f"{exc.message}; {done}") from None
        finally:
            if n:
                self._autocommit()
        return n

    # -- pattern queries ------------------------------------------------------------------

    def range(self, pattern: np.ndarray, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False):
        """CRANGE: scrolls matching the pattern, in coordinate order.

        :param limit: at most this many (page size).
        :param after: exclusive start key (the last key of the previous page).
        :param keys_only: return an (M, 9) uint16 array of coordinates instead of scrolls.
        """
        return run(self.range_steps(pattern, limit, after, keys_only))

    def range_steps(self, pattern: np.ndarray, limit: int | None = None,
                    after: bytes | None = None, keys_only: bool = False) -> Steps:
        """Steps of :meth:`range`: the keys matching when it starts, their scrolls read
        GATHER per step (one deleted meanwhile is left out)."""
        if limit is not None and limit < 0:
            raise InterfaceError(f"limit must be >= 0, got {limit}")
        coords = yield from self._index.query_steps(
            pattern, None if after is None else _core.unpack(after), limit)
        if keys_only:
            return coords
        scrolls, _ = yield from self._scrolls_steps(coords)
        return scrolls

    def _scrolls_steps(self, coords: np.ndarray) -> Steps:
        """Steps: the scrolls stored at (M, 9) coordinates, GATHER per step.

        :returns: ``(scrolls, their coordinates)``: in the order given, without those no
            longer stored (deleted since the coordinates were found).
        """
        out: list = []
        kept = None
        for a in range(0, len(coords), GATHER):
            if a:
                yield
            got = self.get_many(_core.pack_many(coords[a:a + GATHER]))
            present = [s is not None for s in got]
            if all(present):
                out.extend(got)
                continue
            if kept is None:
                kept = np.ones(len(coords), dtype=np.bool_)
            kept[a:a + len(got)] = present
            out.extend(s for s in got if s is not None)
        return out, (coords if kept is None else coords[kept])

    def count(self, pattern: np.ndarray) -> int:
        """CRANGE count: how many scrolls match the pattern."""
        return run(self.count_steps(pattern))

    def count_steps(self, pattern: np.ndarray) -> Steps:
        """Steps of :meth:`count` (the keys matching when it starts)."""
        return (yield from self._index.count_steps(pattern))

    def nearest(self, c: np.ndarray, k: int = 10, metric: str = "l1", within=None):
        """CNEAREST: the k stored coordinates nearest to c.

        :returns: ((m, 9) uint16 coordinates, (m,) int64 distances), nearest first, ties
            by coordinate order.
        """
        return run(self.nearest_steps(c, k, metric, within))

    def nearest_steps(self, c: np.ndarray, k: int = 10, metric: str = "l1",
                      within=None) -> Steps:
        """Steps of :meth:`nearest` (over the keys stored when it starts)."""
        if k < 0:
            raise InterfaceError(f"k must be >= 0, got {k}")
        return (yield from self._index.nearest_steps(c, k, metric, within))

    def hier(self, c: np.ndarray, direction: str):
        """CHIER NEXT/PREV: the neighbouring stored coordinate in document order, or None."""
        if direction not in ("NEXT", "PREV"):
            raise InterfaceError(f"direction must be NEXT or PREV here, got {direction!r}")
        return self._index.neighbour(c, direction)

    # -- compound instructions ------------------------------------------------------------

    def _query_vector(self, q) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(vector, coordinate) of an attention query given as a key or a vector."""
        if isinstance(q, bytes):
            s = self._map.get(q)
            vec = _vector(s.content) if s is not None else None
            return vec, _core.unpack(q)
        if isinstance(q, np.ndarray):
            if q.ndim != 1 or q.dtype.kind not in "biuf":
                raise InterfaceError("a query vector must be a 1-d numeric array")
            return q, None
        raise InterfaceError(f"query must be a key or a vector, got {type(q).__name__}")

    def _value_vectors_steps(self, keys: np.ndarray, values, cast: bool = True) -> Steps:
        """Steps: the value vectors of attention keys, stacked (one row per key)."""
        if values.dtype == np.int32:           # a delta applied to every key
            vcoords = apply_delta_any(keys, values)
            if isinstance(vcoords, list):
                raise InterfaceError("a values delta must not contain wildcards")
            scrolls = []
            for a in range(0, len(vcoords), GATHER):
                if a:
                    yield
                scrolls.extend(self.get_many(_core.pack_many(vcoords[a:a + GATHER])))
        else:                                   # a pattern aligned with the keys
            scrolls = yield from self.range_steps(values)
        if len(scrolls) != len(keys):
            raise InterfaceError(f"values give {len(scrolls)} scrolls for {len(keys)} keys")
        parts = []
        for a in range(0, len(scrolls), GATHER):
            yield
            vecs = []
            for s in scrolls[a:a + GATHER]:
                v = None if s is None else _vector(s.content)
                if v is None:
                    raise InterfaceError("every value scroll must hold a 1-d numeric vector")
                vecs.append(v)
            parts.append(np.stack(vecs))
        if not parts:
            return np.empty((0, 0))
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out.astype(np.float64) if cast else out

    def attend(self, q, key_pattern: np.ndarray, top_k: int | None = None, values=None,
               return_output: bool = True) -> dict:
        """CATTEND: attention of one query over the scrolls matching ``key_pattern``.

        With vector contents: scores q.k/sqrt(d), softmax weights over all matched keys,
        and (with ``values``) the weighted sum of value vectors. Otherwise the fallback
        score 1/(1 + L1 distance) between coordinates, weights normalised to sum to 1.

        :returns: dict with ``keys`` (top-k coordinates by score, ties by coordinate),
            ``scores``, ``weights``, ``contents``, ``output`` (or None), ``n`` matched,
            ``mode`` ("dot" or "distance").
        :raises InterfaceError: ``top_k`` < 0, or a vector query without vector keys.
        """
        return run(self.attend_steps(q, key_pattern, top_k, values, return_output))

    def attend_steps(self, q, key_pattern: np.ndarray, top_k: int | None = None,
                     values=None, return_output: bool = True,
                     max_keys: int | None = None) -> Steps:
        """Steps of :meth:`attend`: keys read and scored GATHER per step, the best
        ``top_k`` kept as they come (so ``top_k`` bounds the work of the ordering).

        :param max_keys: with ``top_k`` None (every matched key), refuse with
            :class:`LimitError` when more keys than this match (checked before reading
            any scroll).
        """
        if top_k is not None and top_k < 0:
            raise InterfaceError(f"top_k must be >= 0, got {top_k}")
        qvec, qcoord = self._query_vector(q)
        coords = yield from self._index.query_steps(key_pattern)
        if top_k is None and max_keys is not None and len(coords) > max_keys:
            raise LimitError(f"{len(coords)} keys match and top_k is nil (every one of them); "
                             f"at most {max_keys} are returned: give a top_k", "LIMIT")
        scrolls, keys = yield from self._scrolls_steps(coords)
        n = len(scrolls)
        output = None
        parts = []
        dot = qvec is not None and n > 0
        if dot:
            qv = qvec.astype(np.float64)
            root = math.sqrt(qvec.shape[0])
            for a in range(0, n, GATHER):
                yield
                kv = [_vector(s.content) for s in scrolls[a:a + GATHER]]
                if not all(v is not None and v.shape == qvec.shape for v in kv):
                    dot = False
                    break
                parts.append(np.stack(kv).astype(np.float64) @ qv / root)
        if not dot:
            if qcoord is None:
                raise InterfaceError("a vector query needs key scrolls holding vectors of its size")
            parts = []
            for a in range(0, n, WINDOW):
                yield
                parts.append(1.0 / (1.0 + _core.l1(qcoord, keys[a:a + WINDOW]).astype(np.float64)))
        # Every pass over the n scores goes a chunk per step: the softmax's max and sum
        # (dot) or the sum (distance), the best top_k by score with ties by coordinate
        # (the keys are in coordinate order), and the weighted sum of the values.
        mode = "dot" if dot else "distance"
        top = max((float(p.max()) for p in parts), default=0.0) if dot else 0.0
        total = 0.0
        best = Best(n if top_k is None else top_k)
        want_output = dot and values is not None and return_output
        V = (yield from self._value_vectors_steps(keys, values)) if want_output else None
        acc = None
        at = 0
        for part in parts:
            yield
            w = np.exp(part - top) if dot else part
            total += float(w.sum())
            if V is not None:
                c = w @ V[at:at + len(part)]
                acc = c if acc is None else acc + c
            best.add(np.where(np.isnan(part), np.inf, -part),
                     np.arange(at, at + len(part), dtype=np.int64))
            at += len(part)
        _, order = best.result()
        scores = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else \
            np.empty(0)
        scores = scores[order]
        weights = (np.exp(scores - top) if dot else scores) / total if n else scores
        if acc is not None:
            output = acc / total
        return {"keys": keys[order], "scores": scores, "weights": weights,
                "contents": [scrolls[i].content for i in order], "output": output, "n": n,
                "mode": mode}

    def attend_many(self, queries, key_patterns: np.ndarray, top_k: int | None = None,
                    values=None, return_weights: bool = False) -> dict:
        """Batched CATTEND: one attention output per query (windowed/sparse attention).

        :param queries: (Q, d) float array, or an N*18-byte blob of keys of query vectors.
        :param key_patterns: (Q, 2, 9) uint16 patterns, one per query.
        :param values: None (keys are also values) or a (2, 9) int32 delta mapping each key
            coordinate to its value coordinate.
        :param top_k: with ``return_weights``, keep each query's ``top_k`` largest weights.
        :param return_weights: include each query's weights (list of arrays, key order).
        :returns: dict ``outputs`` (Q, d_v) float64, ``counts`` (Q,) int64 keys per query,
            and ``weights`` when asked.
        :raises InterfaceError: shapes disagree, or a key/value scroll holds no vector.
        """
        return run(self.attend_many_steps(queries, key_patterns, top_k, values,
                                          return_weights))

    def attend_many_steps(self, queries, key_patterns: np.ndarray, top_k: int | None = None,
                          values=None, return_weights: bool = False,
                          max_weights: int | None = None) -> Steps:
        """Steps of :meth:`attend_many`: about SCORES_PER_STEP scores a step (a softmax
        over a long window is accumulated chunk by chunk, online).

        :param max_weights: with ``return_weights``, refuse with :class:`LimitError`
            when more weights than this would be returned in all (checked before any
            score is computed).
        """
        if top_k is not None and not return_weights:
            # top_k only trims the returned weights; accepting it alone would ignore it.
            raise InterfaceError("attend_many: top_k applies only with return_weights=True")
        if top_k is not None and top_k < 0:
            raise InterfaceError(f"top_k must be >= 0, got {top_k}")
        if isinstance(queries, (bytes, bytearray)):
            qs = [self._map.get(bytes(queries[i:i + 18])) for i in range(0, len(queries), 18)]
            if any(s is None or _vector(s.content) is None for s in qs):
                raise InterfaceError("every query key must hold a vector")
            Q = np.stack([_vector(s.content) for s in qs]) if qs else np.empty((0, 0))
        else:
            Q = np.asarray(queries)
        kp = np.asarray(key_patterns)
        if Q.ndim != 2 or Q.dtype.kind not in "biuf" or kp.shape != (Q.shape[0], 2, 9) \
                or kp.dtype != np.uint16:
            raise InterfaceError(f"need (Q, d) numeric queries and (Q, 2, 9) uint16 patterns, "
                                 f"got {Q.shape} {Q.dtype} and {kp.shape} {kp.dtype}")
        nq, d = Q.shape
        if nq == 0:
            return {"outputs": np.empty((0, d)), "counts": np.empty(0, dtype=np.int64)}
        kp = np.ascontiguousarray(kp)
        # One index query for the union box of all windows, then per-query spans of it.
        union = np.stack([kp[:, 0].min(axis=0), kp[:, 1].max(axis=0)]).astype(np.uint16)
        ucoords = yield from self._index.query_steps(union)
        kscrolls, ucoords = yield from self._scrolls_steps(ucoords)
        kparts = []
        for a in range(0, len(kscrolls), GATHER):
            yield
            kv = [_vector(s.content) for s in kscrolls[a:a + GATHER]]
            if any(v is None or v.shape != (d,) for v in kv):
                raise InterfaceError(f"every key scroll must hold a vector of size {d}")
            kparts.append(np.stack(kv))
        K = (np.concatenate(kparts) if len(kparts) > 1 else kparts[0]) if kparts else \
            np.empty((0, d))
        V = K if values is None else \
            (yield from self._value_vectors_steps(ucoords, values, cast=False))
        # float32 throughout when everything stored is float32 (as models keep it),
        # float64 otherwise.
        ft = np.float32 if Q.dtype == K.dtype == V.dtype == np.float32 else np.float64
        Q, K, V = Q.astype(ft, copy=False), K.astype(ft, copy=False), V.astype(ft, copy=False)
        starts = np.empty(nq, dtype=np.int64)
        ends = np.empty(nq, dtype=np.int64)
        exact = np.empty(nq, dtype=np.bool_)
        # Spans cost their length (every row is checked), so queries are taken in groups
        # sized to the time they took.
        i, g = 0, 1
        while i < nq:
            t0 = time.perf_counter()
            starts[i:i + g], ends[i:i + g], exact[i:i + g] = \
                _core.window_spans(ucoords, kp[i:i + g])
            i += g
            dt = time.perf_counter() - t0
            g = g * 2 if dt < 2e-4 else max(1, g // 2) if dt > 1e-3 else g
            yield
        if return_weights and max_weights is not None:
            spans = ends - starts
            returned = int((spans if top_k is None else np.minimum(spans, top_k)).sum())
            if returned > max_weights:
                raise LimitError(f"the weights of up to {returned} keys would be returned, at "
                                 f"most {max_weights} are: give a top_k or fewer queries",
                                 "LIMIT")
        dv = V.shape[1] if V.ndim == 2 and len(V) else d
        outputs = np.zeros((nq, dv), dtype=ft)
        counts = np.zeros(nq, dtype=np.int64)
        weights_out: list | None = [None] * nq if return_weights else None
        scale = ft(1.0 / math.sqrt(d))

        def scores(qi: np.ndarray, Qb: np.ndarray, inexact: list, c0: int, c1: int):
            # (valid mask, scores with -inf where invalid) of a block of queries over
            # the keys [c0, c1).
            pos = np.arange(c0, c1)
            valid = (pos >= starts[qi, None]) & (pos < ends[qi, None])
            for r, i in inexact:
                a, b = max(int(starts[i]), c0), min(int(ends[i]), c1)
                if a < b:
                    valid[r, a - c0:b - c0] = _core.match(ucoords[a:b], kp[i])
            sc = (Qb @ K[c0:c1].T) * scale
            sc[~valid] = -np.inf
            return valid, sc

        # Queries in window order, in blocks: one dense (block x span) matmul per block
        # with a mask, so neighbouring windows share their keys instead of gathering a
        # (Q, W, d) copy. Rows inside a window's lexicographic span that miss its box
        # (possible when a later component is constrained) are masked out too. A long
        # span is taken in chunks, the softmax accumulated online (running max, sum and
        # weighted sum, rescaled when the max grows); the weights, when asked for, are a
        # second pass over the chunks once the max and the sum are known.
        order = np.argsort(starts, kind="stable")
        block = 128
        for b0 in range(0, nq, block):
            qi = order[b0:b0 + block]
            s0, e0 = int(starts[qi].min()), int(ends[qi].max())
            if e0 <= s0:
                continue
            nb = len(qi)
            step = max(1, SCORES_PER_STEP // nb)
            Qb = Q[qi]
            inexact = [(r, qi[r]) for r in np.flatnonzero(~exact[qi])]
            top = np.full(nb, -np.inf, dtype=ft)
            tot = np.zeros(nb, dtype=ft)
            acc = np.zeros((nb, dv), dtype=ft)
            for c0 in range(s0, e0, step):
                yield
                c1 = min(c0 + step, e0)
                valid, sc = scores(qi, Qb, inexact, c0, c1)
                new = np.maximum(top, sc.max(axis=1))
                ref = np.where(np.isfinite(new), new, 0).astype(ft, copy=False)
                w = np.exp(sc - ref[:, None])
                grow = np.exp(np.where(np.isfinite(top), top - ref, -np.inf)).astype(
                    ft, copy=False)
                tot = tot * grow + w.sum(axis=1)
                acc = acc * grow[:, None] + w @ V[c0:c1]
                counts[qi] += valid.sum(axis=1)
                top = new
            outputs[qi] = np.divide(acc, tot[:, None], out=np.zeros_like(acc),
                                    where=tot[:, None] > 0)
            if weights_out is None:
                continue
            ref = np.where(np.isfinite(top), top, 0).astype(ft, copy=False)
            norm = np.where(tot > 0, tot, 1).astype(ft, copy=False)
            wq = [np.empty(int(counts[i]), dtype=ft) for i in qi]
            fill = [0] * nb
            for c0 in range(s0, e0, step):
                yield
                c1 = min(c0 + step, e0)
                valid, sc = scores(qi, Qb, inexact, c0, c1)
                w = np.exp(sc - ref[:, None]) / norm[:, None]
                for r in range(nb):
                    wr = w[r, valid[r]]
                    if len(wr):
                        wq[r][fill[r]:fill[r] + len(wr)] = wr
                        fill[r] += len(wr)
            for r, i in enumerate(qi):
                if r % 16 == 0:
                    yield
                wr = wq[r] if tot[r] > 0 else np.zeros_like(wq[r])
                if top_k is not None and top_k < len(wr):
                    wr = np.partition(wr, len(wr) - top_k)[len(wr) - top_k:] if top_k else \
                        wr[:0]
                weights_out[i] = np.sort(wr)[::-1] if top_k is not None else wr
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
        return run(self.kg_steps(start, deltas, hops, max_frontier))

    def kg_steps(self, start: np.ndarray, deltas: np.ndarray, hops: int = 1,
                 max_frontier: int = 10000, max_visited: int | None = None) -> Steps:
        """Steps of :meth:`kg`: one edge lookup (a pattern's range, or GATHER keys) or
        EDGE_STEP edges followed per step.

        :param max_visited: refuse with :class:`LimitError` once the walk has seen more
            coordinates than this (each one is remembered to be visited once).
        """
        deltas = np.asarray(deltas)
        if deltas.ndim != 3 or deltas.shape[1:] != (2, 9) or deltas.dtype != np.int32:
            raise InterfaceError(f"deltas must be an (R, 2, 9) int32 array, got {deltas.shape}")
        if hops < 0 or max_frontier < 1:
            raise InterfaceError("hops must be >= 0 and max_frontier >= 1")
        if (start[0] == start[1]).all():
            frontier = [_core.pack(start[0])]
        else:
            coords = yield from self._index.query_steps(start, None, max_frontier)
            blob = _core.pack_many(coords)
            frontier = [blob[i:i + 18] for i in range(0, len(blob), 18)]
        visited = set(frontier)
        names = self.names
        nxt: list = []   # new coordinates; cut back to the max_frontier smallest as it grows

        def follow(edges: list) -> Steps:
            for a in range(0, len(edges), EDGE_STEP):
                if a:
                    yield
                for e in edges[a:a + EDGE_STEP]:
                    for t in (_parse_targets(e.content, names) or [e.key]):
                        if t not in visited:
                            visited.add(t)
                            nxt.append(t)
                if max_visited is not None and len(visited) > max_visited:
                    raise LimitError(f"the walk reached more than {max_visited} coordinates: "
                                     "use fewer hops, narrower deltas or a smaller "
                                     "max_frontier", "LIMIT")
                if len(nxt) > 2 * max_frontier:
                    nxt.sort()
                    del nxt[max_frontier:]

        for _ in range(hops):
            if not frontier:
                break
            base = _core.unpack_many(b"".join(frontier))
            nxt = []
            for delta in deltas:
                delta = np.ascontiguousarray(delta)
                try:
                    targets = _core.apply_delta(base, delta)
                except CoordinateError:
                    continue   # a relation leading out of the coordinate space has no edge
                wild = delta[0] == 2
                if wild.any():
                    # Frontier coordinates differing only in wildcard components give
                    # the same pattern: each distinct one is looked up once.
                    lo, hi = targets.copy(), targets.copy()
                    lo[:, wild] = 0
                    hi[:, wild] = 0xFFFF
                    pats = np.ascontiguousarray(np.concatenate([lo, hi], axis=1))
                    raw = pats.tobytes()
                    looked: set = set()
                    for i in range(len(pats)):
                        if i % GATHER == 0:
                            yield
                        p = raw[36 * i:36 * i + 36]
                        if p in looked:
                            continue
                        looked.add(p)
                        edges = yield from self.range_steps(pats[i].reshape(2, 9),
                                                            limit=max_frontier)
                        yield from follow(edges)
                else:
                    edges, _ = yield from self._scrolls_steps(targets)
                    yield from follow(edges)
            yield
            nxt.sort()
            frontier = nxt[:max_frontier]
        scrolls, _ = yield from self._scrolls_steps(
            _core.unpack_many(b"".join(sorted(frontier))) if frontier else _EMPTY_COORDS)
        return scrolls

    # -- names, import/export, health -----------------------------------------------------

    def intern(self, names: list) -> list:
        """Ids of names, interning unknown ones (persisted with the data)."""
        if not isinstance(names, (list, tuple)):
            raise InterfaceError("intern takes a list of names")
        return self.names.intern_many(list(names), True)

    def lookup_names(self, names: list) -> list:
        """Ids of names, None for unknown ones (nothing is interned)."""
        return self.names.intern_many(list(names), False)

    def name_table(self) -> list:
        """The whole name table, index i = id 0xF000 + i."""
        return self.names.to_list()

    def import_phext(self, text: str, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext document; returns how many were stored.

        Reading agrees scroll for scroll with the reference ``explode``; every scroll a
        phext file holds is storable, so ``skip_invalid`` has nothing to skip on import
        (it is accepted for symmetry with :meth:`export_phext`).
        """
        return run(self.import_phext_steps(text, skip_invalid))

    def import_phext_steps(self, text: str, skip_invalid: bool = False) -> Steps:
        """Steps of :meth:`import_phext`: the document is read in steps, then its
        scrolls are written PUT_STEP per step, in document order. Stopped by a
        :class:`RequestTimeout`, it raises one that says how many were stored (the
        first ones of the document; the rest are not)."""
        n = 0
        items = None
        try:
            items = yield from phext.parse_phext_steps(text)
            for a in range(0, len(items), PUT_STEP):
                yield
                part = items[a:a + PUT_STEP]
                # parse_phext yields components in 1..999 only: they always fit uint16.
                blob = _core.pack_many(np.array([c for c, _ in part], dtype=np.uint16))
                self._write_many(blob, [t for _, t in part])
                n += len(part)
        except RequestTimeout as exc:
            done = "nothing was stored" if items is None else \
                f"the first {n} of its {len(items)} scrolls were stored, the others were not"
            raise RequestTimeout(f"{exc.message}; {done}") from None
        finally:
            if n:
                self._autocommit()
        return n

    def export_phext(self, pattern: np.ndarray | None = None, skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document."""
        return run(self.export_phext_steps(pattern, skip_invalid))

    def export_phext_steps(self, pattern: np.ndarray | None = None, skip_invalid: bool = False,
                           max_chars: int | None = None) -> Steps:
        """Steps of :meth:`export_phext`: the keys matching when it starts, then
        PHEXT_STEP scrolls read and formatted per step (one deleted meanwhile is left out).

        :param max_chars: refuse with :class:`LimitError` as soon as the document grows
            past this many characters (a reply that could not be sent anyway).
        """
        coords = yield from self._index.query_steps(_FULL if pattern is None else pattern)
        # Pieces are joined 64 at a time as they come, so the last step joins a few
        # large strings (one copy of the document) rather than thousands of small ones.
        joined: list = []
        parts: list = []
        size = 0
        for text in self._phext_pieces(coords, skip_invalid):
            size += len(text)
            if max_chars is not None and size > max_chars:
                raise LimitError(f"the export is over {max_chars} characters: export "
                                 "a narrower pattern at a time", "LIMIT")
            parts.append(text)
            if len(parts) == 64:
                joined.append("".join(parts))
                parts = []
            yield
        return "".join(joined + parts)

    def _phext_pieces(self, coords: np.ndarray, skip_invalid: bool) -> Iterator[str]:
        """The phext document of the scrolls at sorted coordinates, one piece per
        PHEXT_STEP scrolls (their concatenation is the document)."""
        w = phext.PhextWriter(skip_invalid=skip_invalid, names=self.names)
        for a in range(0, len(coords), PHEXT_STEP):
            part = coords[a:a + PHEXT_STEP]
            got = self.get_many(_core.pack_many(part))
            yield w.write([(tuple(c), s.content) for c, s in zip(part.tolist(), got)
                           if s is not None])

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
