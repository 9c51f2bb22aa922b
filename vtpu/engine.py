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
from typing import Any

import numpy as np

from vtpu import _core
from vtpu._version import __version__
from vtpu.coords import MAX_NAMES, NAME_BASE, NameTable, Scroll, apply_delta_any
from vtpu.errors import CoordinateError, InterfaceError, VersionConflict
from vtpu.index import CoordIndex

__all__ = ["Engine", "check_content", "estimate_wire_size"]

_FULL = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
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
        if not isinstance(item, str):
            return None
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
        if len(self.names) >= MAX_NAMES and not self.names.free:
            # A full table (a flood of names, say) would refuse every new name for good:
            # free what no key uses.
            self.reclaim_names()
        self.load_seconds = time.perf_counter() - t0

    def _persist(self, scrolls: list[Scroll]) -> None:
        from vtpu.protocol import pack_value

        self.storage.put_many([(s.key, pack_value(s.content), s.version, s.created_at,
                                s.updated_at) for s in scrolls])
        if self.autocommit:
            self.storage.commit()

    def _persist_delete(self, keys: list[bytes]) -> None:
        self.storage.delete(keys)
        if self.autocommit:
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
        return 1

    def delete_many(self, blob: bytes) -> int:
        """CDEL of many keys: returns how many scrolls were removed."""
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
        if limit is not None and limit < 0:
            raise InterfaceError(f"limit must be >= 0, got {limit}")
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
        if k < 0:
            raise InterfaceError(f"k must be >= 0, got {k}")
        return self._index.nearest(c, k, metric, within)

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

    def _value_vectors(self, keys: np.ndarray, values, cast: bool = True) -> np.ndarray:
        if values.dtype == np.int32:           # a delta applied to every key
            vcoords = apply_delta_any(keys, values)
            if isinstance(vcoords, list):
                raise InterfaceError("a values delta must not contain wildcards")
            scrolls = self.get_many(_core.pack_many(vcoords))
        else:                                   # a pattern aligned with the keys
            scrolls = self.range(values)
        if len(scrolls) != len(keys):
            raise InterfaceError(f"values give {len(scrolls)} scrolls for {len(keys)} keys")
        vecs = []
        for s in scrolls:
            v = None if s is None else _vector(s.content)
            if v is None:
                raise InterfaceError("every value scroll must hold a 1-d numeric vector")
            vecs.append(v)
        if not vecs:
            return np.empty((0, 0))
        out = np.stack(vecs)
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
        """
        qvec, qcoord = self._query_vector(q)
        scrolls = self.range(key_pattern)
        n = len(scrolls)
        keys = _core.unpack_many(b"".join(s.key for s in scrolls)) if n else \
            np.empty((0, 9), dtype=np.uint16)
        kvecs = [_vector(s.content) for s in scrolls] if qvec is not None else []
        output = None
        if qvec is not None and n and all(v is not None and v.shape == qvec.shape for v in kvecs):
            K = np.stack(kvecs).astype(np.float64)
            scores = K @ qvec.astype(np.float64) / math.sqrt(qvec.shape[0])
            w = np.exp(scores - scores.max())
            weights = w / w.sum()
            mode = "dot"
            if values is not None and return_output:
                V = self._value_vectors(keys, values)
                output = weights @ V
        else:
            if qcoord is None:
                raise InterfaceError("a vector query needs key scrolls holding vectors of its size")
            dist = _core.l1(qcoord, keys).astype(np.float64) if n else np.empty(0)
            scores = 1.0 / (1.0 + dist)
            weights = scores / scores.sum() if n else scores
            mode = "distance"
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
        if top_k is not None and not return_weights:
            # top_k only trims the returned weights; accepting it alone would ignore it.
            raise InterfaceError("attend_many: top_k applies only with return_weights=True")
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
        # One index query for the union box of all windows, then per-query spans of it.
        union = np.stack([kp[:, 0].min(axis=0), kp[:, 1].max(axis=0)]).astype(np.uint16)
        ucoords = self._index.query(union)
        blob = _core.pack_many(ucoords)
        m = self._map
        kv = [_vector(m[blob[i:i + 18]].content) for i in range(0, len(blob), 18)]
        if any(v is None or v.shape != (d,) for v in kv):
            raise InterfaceError(f"every key scroll must hold a vector of size {d}")
        K = np.stack(kv) if kv else np.empty((0, d))
        V = K if values is None else self._value_vectors(ucoords, values, cast=False)
        # float32 throughout when everything stored is float32 (as models keep it),
        # float64 otherwise.
        ft = np.float32 if Q.dtype == K.dtype == V.dtype == np.float32 else np.float64
        Q, K, V = Q.astype(ft, copy=False), K.astype(ft, copy=False), V.astype(ft, copy=False)
        starts, ends, exact = _core.window_spans(ucoords, np.ascontiguousarray(kp))
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
        if hops < 0 or max_frontier < 1:
            raise InterfaceError("hops must be >= 0 and max_frontier >= 1")
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
                try:
                    targets = apply_delta_any(base, np.ascontiguousarray(delta))
                except CoordinateError:
                    continue   # a relation leading out of the coordinate space has no edge
                if isinstance(targets, list):
                    edges = [s for p in targets for s in self.range(p, limit=max_frontier)]
                else:
                    blob = _core.pack_many(targets)
                    edges = [s for s in (m.get(blob[i:i + 18]) for i in range(0, len(blob), 18))
                             if s is not None]
                for e in edges:
                    for t in (_parse_targets(e.content, self.names) or [e.key]):
                        if t not in visited:
                            visited.add(t)
                            nxt[t] = None
            frontier = sorted(nxt)[:max_frontier]
        return [m[k] for k in sorted(frontier) if k in m]

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
        if freed and self.storage is not None:
            for ident in unused:
                self.storage.add_names(ident - NAME_BASE, [""])
            if self.autocommit:
                self.storage.commit()
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
