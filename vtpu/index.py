"""The ordered indexes behind pattern queries, and the planner that picks one.

Layout, all over packed (N, 9) uint16 arrays:

* **main**: every indexed coordinate in lexicographic order, with an ``alive`` mask.
  Deleting flips a bit (found by binary search); re-inserting a deleted key flips it
  back. Prefix patterns and NEXT/PREV are binary searches here (``lex_scan`` skips
  over rows that cannot match).
* **delta**: new keys since the last merge, unsorted, bounded in size; scanned with the
  vectorised matcher and merged into main (one linear merge) when it grows.
* **Z index** (built lazily from main): Morton keys in order, answered by ``z_scan``
  with BIGMIN skipping - for patterns whose free components come first.
* **postings** (built lazily, per component): row ids grouped by component value, and
  a bitmap for each value holding at least 1/64 of the rows - for patterns that fix a
  few components in the middle of free ones (smallest list first, or an AND of bitmaps).

:meth:`CoordIndex.plan` estimates each access path's cost from exact counts it gets in
O(log N) (range sizes, posting sizes) and runs the cheapest, so no selective pattern
scans the store. Results always come back in coordinate order.
"""
from __future__ import annotations

import numpy as np

from vtpu import _core

__all__ = ["CoordIndex"]

_EMPTY = np.empty((0, 9), dtype=np.uint16)
_FULL_LO = 0
_FULL_HI = 0xFFFF


def _upper(arr: np.ndarray, c: np.ndarray) -> int:
    """Number of rows of a sorted array that are <= c."""
    i = _core.lower_bound(arr, c)
    if i < len(arr) and (arr[i] == c).all():
        i += 1
    return i


def _sorted(arr: np.ndarray) -> np.ndarray:
    if len(arr) <= 1:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr[_core.lex_sort_order(arr)])


class _Postings:
    """Row ids of main grouped by one component's value, plus bitmaps of dense values."""

    __slots__ = ("order", "cum", "bitmaps")

    def __init__(self, col: np.ndarray):
        n = len(col)
        counts = np.bincount(col, minlength=0x10000)
        self.cum = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.order = np.argsort(col, kind="stable").astype(np.int64)
        self.bitmaps: dict[int, np.ndarray] = {}
        dense = np.flatnonzero(counts >= max(64, n // 64))
        words = (n + 63) // 64
        for v in dense:
            bits = np.packbits(col == v, bitorder="little")
            padded = np.zeros(words * 8, dtype=np.uint8)
            padded[: len(bits)] = bits
            self.bitmaps[int(v)] = padded.view(np.uint64)

    def size(self, lo: int, hi: int) -> int:
        """Number of rows whose value lies in [lo, hi]."""
        return int(self.cum[hi + 1] - self.cum[lo])

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Row ids whose value lies in [lo, hi], grouped by value, ascending within one."""
        return self.order[self.cum[lo]: self.cum[hi + 1]]


class CoordIndex:
    """Coordinate index: lexicographic main + delta buffer, lazy Z index and postings.

    Keys added must be new to the index; keys removed must be present. The owner (the
    engine's store) guarantees both.

    :param min_merge: the delta (and the deleted rows of main) is merged once it holds
        more than max(min_merge, min(len(main) // 16, 65536)) keys.
    :param source: a :class:`vtpu._core.ColumnStore` holding the same keys: main is then
        the store's sorted run (the keys are held once), and a merge is the store's
        compaction, which rebuilds that run. Without one, the index keeps its own main.
    """

    def __init__(self, min_merge: int = 4096, source=None):
        self._source = source
        if source is not None and (source.tail_rows or source.dead_rows):
            source.compact(arena=False)   # main is the run of every key the store holds
        self.main = _EMPTY if source is None else source.run
        self.alive = np.ones(len(self.main), dtype=np.bool_)
        self._dead: dict[bytes, int] = {}       # key -> row of a deleted main entry
        self._delta: dict[bytes, None] = {}     # insertion-ordered set of new keys
        self._delta_arr: np.ndarray | None = _EMPTY
        self._z: tuple | None = None
        self._post: list[_Postings | None] = [None] * 9
        self._min_merge = min_merge
        self.last_plan = ""
        self.force_path: str | None = None   # tests pin an access path to check each one

    # -- maintenance --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.main) - len(self._dead) + len(self._delta)

    def _merge_limit(self) -> int:
        return max(self._min_merge, min(len(self.main) // 16, 65536))

    def add(self, key: bytes) -> None:
        """Index a key new to the store."""
        # With a source a re-added key is a new row of the store's tail, so it joins the
        # delta; its deleted main row stays deleted until the merge.
        row = self._dead.pop(key, None) if self._source is None else None
        if row is not None:
            self.alive[row] = True
            return
        self._delta[key] = None
        self._delta_arr = None
        if len(self._delta) > self._merge_limit():
            self.merge()

    def add_many(self, keys: list[bytes]) -> None:
        """Index many keys new to the store (a large batch is merged in one pass)."""
        if not self._dead or self._source is not None:
            # nothing to revive: the whole batch joins the delta at C speed
            self._delta.update(dict.fromkeys(keys))
            keys = ()
        for key in keys:
            row = self._dead.pop(key, None)
            if row is not None:
                self.alive[row] = True
            else:
                self._delta[key] = None
        self._delta_arr = None
        if len(self._delta) > self._merge_limit():
            self.merge()

    def load_sorted(self, blob: bytes) -> None:
        """Replace the contents with keys given in ascending order (start-up from disk).

        :param blob: N*18 bytes of distinct keys, ascending (a store's primary-key order).
            With a source, which holds these keys, its compaction builds main instead.
        """
        self.clear()
        if self._source is None:
            self.main = _core.unpack_many(blob)
            self.alive = np.ones(len(self.main), dtype=np.bool_)
        elif len(self.main) * 18 != len(blob):
            raise ValueError(f"the source holds {len(self.main)} keys, not the "
                             f"{len(blob) // 18} given")

    def remove(self, key: bytes) -> None:
        """Drop a stored key from the index."""
        self._drop(key)
        if len(self._dead) > self._merge_limit():
            self.merge()

    def remove_many(self, keys: list[bytes]) -> None:
        """Drop stored keys from the index, merging (if due) once all are dropped: with a
        source, which already lost every one of them, a merge half way would not match."""
        for key in keys:
            self._drop(key)
        if len(self._dead) > self._merge_limit():
            self.merge()

    def _drop(self, key: bytes) -> None:
        if key in self._delta:
            del self._delta[key]
            self._delta_arr = None
            return
        c = _core.unpack(key)
        row = _core.lower_bound(self.main, c)
        self.alive[row] = False
        self._dead[key] = row

    def merge(self) -> None:
        """Fold the delta into main and drop deleted rows (one linear merge)."""
        if self._source is not None:
            self._source.compact()
            self.main = self._source.run
        else:
            delta = self._delta_sorted()
            keep = self.alive if self._dead else None
            if len(self.main) == 0:
                self.main = delta
            else:
                self.main = _core.merge_sorted(self.main, keep, delta)
        self.alive = np.ones(len(self.main), dtype=np.bool_)
        self._dead.clear()
        self._delta.clear()
        self._delta_arr = _EMPTY
        self._z = None
        self._post = [None] * 9
        if self._source is not None:
            _core.trim_heap()   # what the compaction's temporaries left in the heap

    def clear(self) -> None:
        """Forget everything (with a source: index what it holds in its sorted run)."""
        self.__init__(self._min_merge, self._source)

    def _delta_sorted(self) -> np.ndarray:
        if self._delta_arr is None:
            if self._delta:
                self._delta_arr = _sorted(_core.unpack_many(b"".join(self._delta)))
            else:
                self._delta_arr = _EMPTY
        return self._delta_arr

    def _zindex(self):
        if self._z is None:
            z = _core.morton_encode(self.main)
            order = _core.lex_sort_order(z)
            self._z = (np.ascontiguousarray(z[order]), np.ascontiguousarray(self.main[order]),
                       order)
        return self._z

    def _postings(self, j: int) -> _Postings:
        p = self._post[j]
        if p is None:
            p = self._post[j] = _Postings(np.ascontiguousarray(self.main[:, j]))
        return p

    def sizes(self) -> dict:
        """Sizes of the parts, for stats."""
        z = self._z
        return {
            "main": int(len(self.main)),
            "deleted_in_main": len(self._dead),
            "delta": len(self._delta),
            "z_index": 0 if z is None else int(len(z[0])),
            "postings_built": [j for j in range(9) if self._post[j] is not None],
            "bytes": int(self.main.nbytes + self.alive.nbytes
                         + (0 if z is None else z[0].nbytes + z[1].nbytes + z[2].nbytes)
                         + sum(p.order.nbytes + p.cum.nbytes
                               + sum(b.nbytes for b in p.bitmaps.values())
                               for p in self._post if p is not None)),
        }

    # -- queries ------------------------------------------------------------------------

    def _upper_row(self, c: np.ndarray) -> int:
        """Number of main rows <= c."""
        return _upper(self.main, c)

    def plan(self, p: np.ndarray) -> tuple[str, float]:
        """Pick the access path for a pattern over main.

        :returns: (path, estimated rows touched); path is "lex", "post", "bitmap" or "z".
        """
        n = len(self.main)
        lo_i = _core.lower_bound(self.main, p[0])
        n_lex = self._upper_row(p[1]) - lo_i
        if n_lex <= 2048:
            return "lex", n_lex
        constrained = [j for j in range(9) if p[0, j] != _FULL_LO or p[1, j] != _FULL_HI]
        best = ("lex", n_lex / 4.0)   # skipping usually touches far fewer rows
        # Posting sizes are exact; a sparse one bounds the work by its length.
        sizes = []
        for j in constrained:
            post = self._postings(j)
            sizes.append((post.size(int(p[0, j]), int(p[1, j])), j))
        if sizes:
            s, j = min(sizes)
            if s < best[1]:
                best = ("post", s)
            dense = [j for j in constrained if p[0, j] == p[1, j]
                     and int(p[0, j]) in self._post[j].bitmaps]
            if len(dense) >= 2:
                cost = len(dense) * n / 256.0 + min(s for s, _ in sizes) / 64.0
                if cost < best[1]:
                    best = ("bitmap", cost)
        if best[1] > n / 32:
            zk, _, _ = self._zindex()
            zlo = _core.morton_encode(p[0:1].copy())[0]
            zhi = _core.morton_encode(p[1:2].copy())[0]
            n_z = _core.lower_bound(zk, zhi) - _core.lower_bound(zk, zlo)
            if n_z / 4.0 < best[1]:
                best = ("z", n_z / 4.0)
        return best

    def _main_rows(self, p: np.ndarray, start_row: int = 0, limit: int = -1) -> np.ndarray:
        """Ascending main row ids matching p (alive only), from start_row on."""
        if len(self.main) == 0:
            return np.empty(0, dtype=np.int64)
        path = self.force_path or self.plan(p)[0]
        self.last_plan = path
        if path == "lex":
            rows, _ = _core.lex_scan(self.main, p, start_row,
                                     limit if not self._dead else -1)
        elif path == "post":
            best = min(range(9), key=lambda j: self._postings(j).size(int(p[0, j]), int(p[1, j])))
            cand = self._post[best].rows(int(p[0, best]), int(p[1, best]))
            rows = _core.match_rows(self.main, cand, p)
            if p[0, best] != p[1, best]:
                rows = np.sort(rows)
        elif path == "bitmap":
            maps = [self._postings(j).bitmaps[int(p[0, j])] for j in range(9)
                    if p[0, j] == p[1, j] and int(p[0, j]) in self._postings(j).bitmaps]
            if maps:
                cand = _core.bitmap_and_rows(maps, len(self.main))
            else:
                cand = np.arange(len(self.main), dtype=np.int64)
            rows = _core.match_rows(self.main, cand, p)
        else:
            zk, zc, zrows = self._zindex()
            idx, _ = _core.z_scan(zk, zc, p)
            rows = np.sort(zrows[idx])
        if start_row and path != "lex":
            rows = rows[rows >= start_row]
        if self._dead and len(rows):
            rows = rows[self.alive[rows]]
        return rows

    def query(self, p: np.ndarray, after: np.ndarray | None = None,
              limit: int | None = None) -> np.ndarray:
        """Coordinates matching the pattern, in coordinate order.

        :param p: (2, 9) uint16 pattern.
        :param after: only coordinates strictly greater than this (paging).
        :param limit: at most this many.
        :returns: (M, 9) uint16 array.
        """
        if (p[0] > p[1]).any() or limit == 0:
            return _EMPTY
        start = self._upper_row(after) if after is not None else 0
        rows = self._main_rows(p, start, -1 if limit is None else limit)
        found = self.main[rows]
        delta = self._delta_sorted()
        if len(delta):
            dm = delta[_core.match(delta, p)]
            if after is not None and len(dm):
                dm = dm[_upper(dm, after):]
            if len(dm):
                found = _sorted(np.concatenate([found, dm]))
        if limit is not None and len(found) > limit:
            found = found[:limit]
        return np.ascontiguousarray(found)

    def count(self, p: np.ndarray) -> int:
        """Number of indexed coordinates matching the pattern."""
        if (p[0] > p[1]).any():
            return 0
        n = len(self._main_rows(p))
        delta = self._delta_sorted()
        if len(delta):
            n += int(_core.match(delta, p).sum())
        return n

    def all_coords(self) -> np.ndarray:
        """Every indexed coordinate, in coordinate order."""
        return self.query(np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16))

    def nearest(self, c: np.ndarray, k: int, metric: str = "l1",
                within: np.ndarray | None = None):
        """The k indexed coordinates nearest to c (ties by coordinate order).

        :returns: ((m, 9) uint16 coordinates, (m,) int64 distances), nearest first.
        """
        cands = []
        mask = None
        if len(self.main):
            if within is not None:
                mask = _core.match(self.main, within)
                if self._dead:
                    mask &= self.alive
            elif self._dead:
                mask = self.alive
            idx, dist = _core.topk(c, self.main, k, metric, mask)
            cands.append((self.main[idx], dist))
        delta = self._delta_sorted()
        if len(delta):
            dmask = _core.match(delta, within) if within is not None else None
            idx, dist = _core.topk(c, delta, k, metric, dmask)
            cands.append((delta[idx], dist))
        if not cands:
            return _EMPTY, np.empty(0, dtype=np.int64)
        coords = np.ascontiguousarray(np.concatenate([x for x, _ in cands]))
        dists = np.concatenate([d for _, d in cands]).astype(np.int64)
        order = np.lexsort(tuple(coords[:, j] for j in range(8, -1, -1)) + (dists,))[:k]
        return coords[order], dists[order]

    def neighbour(self, c: np.ndarray, direction: str) -> np.ndarray | None:
        """The indexed coordinate right after (NEXT) or before (PREV) c in coordinate order."""
        best = None
        if direction == "NEXT":
            i = self._upper_row(c)
            while i < len(self.main) and not self.alive[i]:
                i += 1
            if i < len(self.main):
                best = self.main[i]
            delta = self._delta_sorted()
            j = _upper(delta, c) if len(delta) else 0
            if j < len(delta) and (best is None or _core.pack(delta[j]) < _core.pack(best)):
                best = delta[j]
        else:
            i = _core.lower_bound(self.main, c) - 1
            while i >= 0 and not self.alive[i]:
                i -= 1
            if i >= 0:
                best = self.main[i]
            delta = self._delta_sorted()
            j = (_core.lower_bound(delta, c) - 1) if len(delta) else -1
            if j >= 0 and (best is None or _core.pack(delta[j]) > _core.pack(best)):
                best = delta[j]
        return None if best is None else best.copy()
