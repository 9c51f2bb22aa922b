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
O(log N) (range sizes, posting sizes) and from a first stretch of the skip scan (how far
its jumps carry it), and runs the cheapest, so no selective pattern scans the store.
Results always come back in coordinate order.

Queries come in steps (:mod:`vtpu.steps`: ``query_steps``, ``count_steps``,
``nearest_steps``; the plain methods run them): a window of WINDOW rows per step, over a
snapshot of the index taken when the query starts, so writes between its steps change
nothing in its answer. Main arrays are never written in place, which is also what lets
a large posting list or Z index be built on a helper thread while the loop goes on.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

from vtpu import _core
from vtpu.coords import EVERYTHING
from vtpu.steps import run

__all__ = ["CoordIndex", "Hits", "WINDOW"]

_EMPTY = np.empty((0, 9), dtype=np.uint16)
_NO_POS = np.empty(0, dtype=np.int64)
_FULL_LO = 0
_FULL_HI = 0xFFFF

#: Rows of main (or candidates of a posting list, keys of the Z index) a query examines
#: per step: well under a millisecond.
WINDOW = 16384
#: What the planner takes each path's work to cost, in nanoseconds (fitted on 1M rows
#: to the bench's eight read patterns and the attack harness's dense one, so that each
#: gets its fastest path): a row the skip scan examines (a jump counts as several, see
#: lex_scan_from), a candidate row read at random (a posting list's, or a bitmap
#: AND's, checked against the pattern), one word of one bitmap ANDed.
NS_LEX_ROW = 15.0
NS_RANDOM_ROW = 20.0
NS_BITMAP_WORD = 0.3
#: Rows the planner lets the skip scan examine to learn how far a pattern's scan goes.
PROBE_ROWS = 256
#: Coordinates of a query's answer gathered per step (about a millisecond).
GATHER_STEP = 65536
#: Lazy structures of main arrays at least this long are built on the builder thread.
BUILD_ON_THREAD = 65536

_builder: ThreadPoolExecutor | None = None
_builder_lock = threading.Lock()


def _windows(lo: int, hi: int, size: int):
    """``(a, b)`` bounds of consecutive windows of at most ``size`` covering [lo, hi)."""
    for a in range(lo, hi, size):
        yield a, min(a + size, hi)


def _built(fn: Callable, main: np.ndarray, *args):
    """Steps: ``fn(main, *args)``, on the builder thread when ``main`` is large.

    Safe because the builders only read ``main``, which is never written in place (a
    merge replaces the array), and make new objects; the caller installs the result on
    its own thread. Meanwhile the event loop serves other requests (numpy's sorts and the
    compiled kernels release the GIL).
    """
    global _builder
    if len(main) < BUILD_ON_THREAD:
        return fn(main, *args)
    with _builder_lock:
        if _builder is None:
            _builder = ThreadPoolExecutor(1, thread_name_prefix="vtpu-index")
    fut = _builder.submit(fn, main, *args)
    yield fut
    return fut.result()


def _z_index(main: np.ndarray) -> tuple:
    """(Morton keys in order, the coordinates in that order, their rows in main)."""
    z = _core.morton_encode(main)
    order = _core.lex_sort_order(z)
    return np.ascontiguousarray(z[order]), np.ascontiguousarray(main[order]), order


def _postings_of(main: np.ndarray, j: int) -> "_Postings":
    return _Postings(np.ascontiguousarray(main[:, j]))


class Hits(NamedTuple):
    """Where the matches of a query are, in coordinate order."""

    main: np.ndarray    # the main array the query read
    pos: np.ndarray     # (M,) int64: p >= 0 is row p of main, p < 0 row -1 - p of extra
    extra: np.ndarray   # (K, 9) uint16: the matches from the delta, sorted

    def coords(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The (M, 9) uint16 coordinates of the matches (of matches ``start:stop``: a
        long delete gathers a step's worth at a time, from the arrays the query read,
        which stay as they were)."""
        pos = self.pos[start:stop]
        if not len(self.extra):
            return np.ascontiguousarray(self.main[pos]) if len(pos) else _EMPTY
        out = np.empty((len(pos), 9), dtype=np.uint16)
        in_main = pos >= 0
        out[in_main] = self.main[pos[in_main]]
        out[~in_main] = self.extra[-1 - pos[~in_main]]
        return out


def _bitmap_components(posts: dict, lo: list, hi: list, n: int,
                       sizes: dict | None = None) -> list:
    """The components whose bitmaps the bitmap path ANDs: each one the pattern (bounds
    ``lo``/``hi``, nine ints each) fixes to a value dense enough to have a bitmap, but
    not held by every row (that one selects nothing and is not read). ``sizes``: the
    posting sizes of the pattern's ranges by component, when the caller has them."""
    out = []
    for j, post in posts.items():
        v = lo[j]
        if hi[j] == v and v in post.bitmaps and (
                sizes[j] if sizes is not None else post.size(v, v)) < n:
            out.append(j)
    return out


def _bounds(p: np.ndarray) -> tuple:
    """A (2, 9) pattern's bounds as two lists of Python ints: the planner compares and
    looks them up many times per query, which on numpy scalars cost more than the
    scan of a small answer."""
    return p[0].tolist(), p[1].tolist()


class _Snap(NamedTuple):
    """What a query reads, as it was when the query started."""

    main: np.ndarray
    alive: np.ndarray | None   # None: no row of main is deleted
    delta: np.ndarray          # the delta, sorted


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
        # Row ids fit int32 below 2**31 rows: half the memory of the largest part.
        self.order = np.argsort(col, kind="stable").astype(
            np.int32 if n < 2**31 else np.int64)
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
        cum = self.cum
        return cum.item(hi + 1) - cum.item(lo)

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
        self._alive_shared = False              # a running query holds self.alive
        # Deleted main entries: how many, and (without a source, to revive a key added
        # again) key -> row. With a source a re-added key is a new row of the store, so
        # only the count is kept: a CDEL of a million keys holds no dict of them.
        self._n_dead = 0
        self._dead: dict[bytes, int] = {}
        self._delta: dict[bytes, None] = {}     # insertion-ordered set of new keys
        self._delta_arr: np.ndarray | None = _EMPTY
        self._z: tuple | None = None
        self._post: list[_Postings | None] = [None] * 9
        self._min_merge = min_merge
        self.last_plan = ""
        self.force_path: str | None = None   # tests pin an access path to check each one

    # -- maintenance --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.main) - self._n_dead + len(self._delta)

    def _merge_limit(self) -> int:
        return max(self._min_merge, min(len(self.main) // 16, 65536))

    def add(self, key: bytes) -> None:
        """Index a key new to the store."""
        # With a source a re-added key is a new row of the store's tail, so it joins the
        # delta; its deleted main row stays deleted until the merge.
        row = self._dead.pop(key, None) if self._source is None else None
        if row is not None:
            self._alive_w()[row] = True
            self._n_dead -= 1
            return
        self._delta[key] = None
        self._delta_arr = None
        if len(self._delta) > self._merge_limit():
            self.merge()

    def add_many(self, keys: list[bytes]) -> None:
        """Index many keys new to the store (a large batch is merged in one pass)."""
        if not self._n_dead or self._source is not None:
            # nothing to revive: the whole batch joins the delta at C speed
            self._delta.update(dict.fromkeys(keys))
            keys = ()
        for key in keys:
            row = self._dead.pop(key, None)
            if row is not None:
                self._alive_w()[row] = True
                self._n_dead -= 1
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
            self._alive_shared = False
        elif len(self.main) * 18 != len(blob):
            raise ValueError(f"the source holds {len(self.main)} keys, not the "
                             f"{len(blob) // 18} given")

    def remove(self, key: bytes) -> None:
        """Drop a stored key from the index."""
        self._drop(key)
        self.merge_if_due()

    def merge_if_due(self) -> None:
        """Merge when the deleted main rows pass the limit (after deletes made with
        ``remove_many(..., merge=False)``)."""
        if self._n_dead > self._merge_limit():
            self.merge()

    def remove_many(self, keys: list[bytes], merge: bool = True) -> None:
        """Drop stored keys from the index, merging (if due, and ``merge``) once all are
        dropped: with a source, which already lost every one of them, a merge half way
        would not match. A long delete passes ``merge=False`` and calls
        :meth:`merge_if_due` at its end: one merge (a compaction of the store) instead
        of one per sixteenth of it, each a pause for every other request.

        The keys' rows in main are found in one sorted search (a CDEL of a pattern drops
        a million keys: no Python work per key but for the few new since the last merge,
        which live in the delta)."""
        if not keys:
            return
        main = self.main
        rest = keys
        if len(keys) <= 16:
            # A few keys: one search each costs less than the batched search's set-up.
            for key in keys:
                self._drop(key)
            rest = ()
        elif len(main):
            arr = _core.unpack_many(b"".join(keys))
            order = _core.lex_sort_order(arr)
            arr = arr[order]
            rows = _core.lower_bounds(main, arr)
            inside = np.flatnonzero(rows < len(main))
            hit = np.zeros(len(arr), dtype=np.bool_)
            hit[inside] = (main[rows[inside]] == arr[inside]).all(axis=1)
            hit &= self.alive[np.minimum(rows, len(main) - 1)]   # a live main row
            if hit.any():
                dead = rows[hit]
                self._alive_w()[dead] = False
                self._n_dead += len(dead)
                if self._source is None:
                    self._dead.update(zip(map(keys.__getitem__, order[hit].tolist()),
                                          dead.tolist()))
                rest = list(map(keys.__getitem__, order[~hit].tolist()))
        for key in rest:   # not live in main: new since the last merge (the delta)
            if key in self._delta:
                del self._delta[key]
                self._delta_arr = None
        if merge:
            self.merge_if_due()

    def _drop(self, key: bytes) -> None:
        if key in self._delta:
            del self._delta[key]
            self._delta_arr = None
            return
        c = _core.unpack(key)
        row = _core.lower_bound(self.main, c)
        self._alive_w()[row] = False
        self._n_dead += 1
        if self._source is None:
            self._dead[key] = row

    def merge(self) -> None:
        """Fold the delta into main and drop deleted rows (one linear merge)."""
        if self._source is not None:
            self._source.compact()
            self.main = self._source.run
        else:
            delta = self._delta_sorted()
            keep = self.alive if self._n_dead else None
            if len(self.main) == 0:
                self.main = delta
            else:
                self.main = _core.merge_sorted(self.main, keep, delta)
        self.alive = np.ones(len(self.main), dtype=np.bool_)
        self._alive_shared = False
        self._dead.clear()
        self._n_dead = 0
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

    def _zindex_steps(self, main: np.ndarray):
        """Steps: the Z index of ``main`` (cached while ``main`` is the index's)."""
        if main is self.main and self._z is not None:
            return self._z
        z = yield from _built(_z_index, main)
        if main is self.main:
            self._z = z
        return z

    def _postings_steps(self, j: int, main: np.ndarray):
        """Steps: the postings of component j of ``main`` (cached likewise)."""
        p = self._post[j] if main is self.main else None
        if p is None:
            p = yield from _built(_postings_of, main, j)
            if main is self.main:
                self._post[j] = p
        return p

    def _zindex(self):
        return run(self._zindex_steps(self.main))

    def _postings(self, j: int) -> _Postings:
        return run(self._postings_steps(j, self.main))

    def sizes(self) -> dict:
        """Sizes of the parts, for stats."""
        z = self._z
        return {
            "main": int(len(self.main)),
            "deleted_in_main": self._n_dead,
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
    #
    # A query reads a snapshot (_Snap) taken when it starts and runs in steps of at most
    # WINDOW rows (vtpu.steps): between two steps other requests may write. main is never
    # written in place (a merge replaces it), the sorted delta is rebuilt rather than
    # changed, and the alive mask is copied before its next in-place write once a query
    # holding it has yielded (_hold), so a query sees exactly the keys indexed when it
    # started, however long it runs.

    def _snapshot(self) -> _Snap:
        return _Snap(self.main, self.alive if self._n_dead else None, self._delta_sorted())

    def _hold(self, snap: _Snap) -> None:
        """Call before a query over ``snap`` yields: its alive mask must stay as it is."""
        if snap.alive is not None and snap.alive is self.alive:
            self._alive_shared = True

    def _alive_w(self) -> np.ndarray:
        """The alive mask, to write in place (a copy if a running query holds it)."""
        if self._alive_shared:
            self.alive = self.alive.copy()
            self._alive_shared = False
        return self.alive

    def _upper_row(self, c: np.ndarray) -> int:
        """Number of main rows <= c."""
        return _core.upper_bound(self.main, c)

    def plan(self, p: np.ndarray) -> tuple[str, float]:
        """Pick the access path for a pattern over main.

        :returns: (path, its estimated cost in nanoseconds); path is "lex", "post",
            "bitmap" or "z".
        """
        path, cost, _, _ = run(self._plan_steps(self._snapshot(), p))
        return path, cost

    def _plan_steps(self, snap: _Snap, p: np.ndarray):
        """Steps of :meth:`plan` over a snapshot (building a posting list or the Z index
        it needs may take a few): ``(path, cost, postings, dense)``, the postings it read
        by component and the components the bitmap path would AND (None when the plan
        did not get that far): the scan reads them again."""
        main = snap.main
        n = len(main)
        lo_i = _core.lower_bound(main, p[0])
        n_lex = _core.upper_bound(main, p[1]) - lo_i
        if n_lex <= 2048 or _core.is_prefix_pattern(p):
            return "lex", n_lex * NS_LEX_ROW, {}, None   # (a prefix's matches: the span)
        lo, hi = _bounds(p)
        constrained = [j for j in range(9) if lo[j] != _FULL_LO or hi[j] != _FULL_HI]
        if not constrained:
            return "lex", n_lex * NS_LEX_ROW, {}, None   # every row matches: in order
        # The skip scan's cost is how far its jumps carry it. A first stretch of it
        # says: the share of the span between the corners it got through, and the
        # rows it examined per match (times the matches the postings predict, the
        # components taken as independent).
        found, r = _core.lex_scan_from(main, p, lo_i, -1, PROBE_ROWS)
        if r < 0:
            return "lex", PROBE_ROWS * NS_LEX_ROW, {}, None   # it ended in the stretch
        sizes = []
        posts = {}
        matches = float(n)
        for j in constrained:
            post = posts[j] = yield from self._postings_steps(j, main)
            sizes.append((post.size(lo[j], hi[j]), j))
            matches *= sizes[-1][0] / n
        size_of = {j: sz for sz, j in sizes}
        rows = PROBE_ROWS * n_lex / max(1, r - lo_i)
        if len(found):
            # (with no match in the stretch, rows per match is unknown, only bounded)
            rows = min(rows, matches * PROBE_ROWS / len(found))
        best = ("lex", rows * NS_LEX_ROW)
        # Posting sizes are exact; a sparse one bounds the work by its length (each
        # of its rows read at random). It wins a tie: an empty one reads nothing.
        s, j = min(sizes)
        if s * NS_RANDOM_ROW <= best[1]:
            best = ("post", s * NS_RANDOM_ROW)
        dense = _bitmap_components(posts, lo, hi, n, size_of)
        if len(dense) >= 2:
            # The AND reads the words of each bitmap between the corners; its candidates
            # (as many as the values' shares of the rows make, taken as independent)
            # are then checked.
            cand = float(n_lex)
            for j in dense:
                cand *= size_of[j] / n
            cost = len(dense) * (n_lex / 64) * NS_BITMAP_WORD + cand * NS_RANDOM_ROW
            if cost < best[1]:
                best = ("bitmap", cost)
        # The Z index (built for this, ~44 bytes a row) is worth asking only when every
        # path so far is slow and the matches are few: a pattern matching a good share
        # of the rows is no faster to gather in Z order.
        if best[1] > n / 32 * NS_RANDOM_ROW and matches < n / 32:
            zk, _, _ = yield from self._zindex_steps(main)
            zlo = _core.morton_encode(p[0:1].copy())[0]
            zhi = _core.morton_encode(p[1:2].copy())[0]
            n_z = _core.lower_bound(zk, zhi) - _core.lower_bound(zk, zlo)
            # Its matches come in Z order: each is then read at random and sorted.
            cost = n_z / 4.0 * NS_LEX_ROW + matches * NS_RANDOM_ROW
            if cost < best[1]:
                best = ("z", cost)
        return best + (posts, dense)

    def _scan_steps(self, snap: _Snap, p: np.ndarray, start: int, limit: int | None,
                    sink: Callable[[np.ndarray], bool], ordered: bool = True):
        """Steps: hand the alive main rows >= ``start`` matching p to ``sink``, a chunk
        per step, in ascending row order when ``ordered``; stop once the sink says so
        (its limit is reached) or after ``limit`` rows of a path that finds them in order.

        :param sink: called with each chunk (int64 row ids of ``snap.main``, possibly
            empty); returns True to stop.
        """
        main = snap.main
        n = len(main)
        if n == 0:
            return
        if self.force_path:
            path, posts, dense = self.force_path, {}, None
        else:
            path, _, posts, dense = yield from self._plan_steps(snap, p)
        self.last_plan = path
        alive = snap.alive
        if path == "lex":
            # A step examines WINDOW rows at most, however many the skips pass over.
            r = start
            left = -1 if limit is None else limit
            while r >= 0:
                rows, r = _core.lex_scan_from(main, p, r, left if alive is None else -1,
                                              WINDOW)
                if alive is not None and len(rows):
                    rows = rows[alive[rows]]
                if sink(rows):
                    return
                if left > 0:
                    left -= len(rows)
                    if left <= 0:
                        return
                if r >= 0:
                    self._hold(snap)
                    yield
            return
        unordered: list = []   # row chunks of paths that do not find rows in row order
        if path == "z":
            zk, zc, zrows = yield from self._zindex_steps(main)
            r = _core.lower_bound(zk, _core.morton_encode(p[0:1].copy())[0])
            hi = _core.upper_bound(zk, _core.morton_encode(p[1:2].copy())[0])
            chunks = ((zrows[_core.z_scan(zk[a:b], zc[a:b], p)[0] + a])
                      for a, b in _windows(r, hi, WINDOW))
            in_order = False
        else:
            lo, hi = _bounds(p)
            constrained = [j for j in range(9) if lo[j] != _FULL_LO or hi[j] != _FULL_HI]
            for j in constrained or [0]:
                if j not in posts:   # (the plan read most already)
                    posts[j] = yield from self._postings_steps(j, main)
            if path == "post":
                best = min(posts, key=lambda j: posts[j].size(lo[j], hi[j]))
                cand = posts[best].rows(lo[best], hi[best])
                in_order = lo[best] == hi[best]   # one value: ascending rows
            else:   # bitmap
                if dense is None:
                    dense = _bitmap_components(posts, lo, hi, n)
                maps = [posts[j].bitmaps[lo[j]] for j in dense]
                # Only the words of rows between the corners (and past `start`).
                r0 = max(start, _core.lower_bound(main, p[0]))
                r1 = _core.upper_bound(main, p[1])
                cand = _core.bitmap_and_rows(maps, r1, r0) if maps else \
                    np.arange(r0, max(r0, r1), dtype=np.int64)
                in_order = True
            chunks = (_core.match_rows(main, cand[a:b], p)
                      for a, b in _windows(0, len(cand), WINDOW))
        for rows in chunks:
            if start:
                rows = rows[rows >= start]
            if alive is not None and len(rows):
                rows = rows[alive[rows]]
            if in_order or not ordered:
                if sink(rows):
                    return
            else:
                unordered.append(rows)
            self._hold(snap)
            yield
        if unordered:
            rows = np.sort(np.concatenate(unordered))
            for a, b in _windows(0, len(rows), WINDOW):
                if sink(rows[a:b]):
                    return
                self._hold(snap)
                yield

    def query(self, p: np.ndarray, after: np.ndarray | None = None,
              limit: int | None = None) -> np.ndarray:
        """Coordinates matching the pattern, in coordinate order.

        :param p: (2, 9) uint16 pattern.
        :param after: only coordinates strictly greater than this (paging).
        :param limit: at most this many.
        :returns: (M, 9) uint16 array.
        """
        return run(self.query_steps(p, after, limit))

    def query_steps(self, p: np.ndarray, after: np.ndarray | None = None,
                    limit: int | None = None):
        """Steps of :meth:`query`: the keys indexed when it started (a snapshot). A
        long answer is gathered GATHER_STEP coordinates per step."""
        hits = yield from self.hits_steps(p, after, limit)
        n = len(hits.pos)
        if n <= GATHER_STEP:
            return hits.coords()
        out = np.empty((n, 9), dtype=np.uint16)
        for a in range(0, n, GATHER_STEP):
            yield
            out[a:a + GATHER_STEP] = hits.coords(a, a + GATHER_STEP)
        return out

    def hits_steps(self, p: np.ndarray, after: np.ndarray | None = None,
                   limit: int | None = None):
        """Steps: where the coordinates :meth:`query` answers are, as :class:`Hits`.

        With a source, a hit's position in main is its row in the store for as long as
        main is the store's run (:meth:`vtpu._core.ColumnStore.rows_at`).
        """
        if limit == 0 or _core.pattern_is_empty(p):
            return Hits(self.main, _NO_POS, _EMPTY)
        snap = self._snapshot()
        main = snap.main
        start = _core.upper_bound(main, after) if after is not None else 0
        parts: list = []
        got = 0

        def sink(rows: np.ndarray) -> bool:
            nonlocal got
            if len(rows):
                if limit is not None and got + len(rows) > limit:
                    rows = rows[:limit - got]
                parts.append(rows)
                got += len(rows)
            return limit is not None and got >= limit

        yield from self._scan_steps(snap, p, start, limit, sink)
        pos = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else _NO_POS
        delta = snap.delta
        dm = _EMPTY
        if len(delta):
            dm = delta[_core.match(delta, p)]
            if after is not None and len(dm):
                dm = dm[_core.upper_bound(dm, after):]
            if len(dm):
                # Both sorted and disjoint (an alive key is in main or in the delta): each
                # delta hit goes before the main hits at or past its place in main.
                at = np.searchsorted(pos, _core.lower_bounds(main, dm))
                pos = np.insert(pos, at, -1 - np.arange(len(dm), dtype=np.int64))
        if limit is not None and len(pos) > limit:
            pos = pos[:limit]
        return Hits(main, np.ascontiguousarray(pos, dtype=np.int64), dm)

    def count(self, p: np.ndarray) -> int:
        """Number of indexed coordinates matching the pattern."""
        return run(self.count_steps(p))

    def count_steps(self, p: np.ndarray):
        """Steps of :meth:`count` (over the keys indexed when it started)."""
        if _core.pattern_is_empty(p):
            return 0
        snap = self._snapshot()
        n = 0

        def sink(rows: np.ndarray) -> bool:
            nonlocal n
            n += len(rows)
            return False

        yield from self._scan_steps(snap, p, 0, None, sink, ordered=False)
        if len(snap.delta):
            n += int(_core.match(snap.delta, p).sum())
        return n

    def all_coords(self) -> np.ndarray:
        """Every indexed coordinate, in coordinate order."""
        return self.query(EVERYTHING)

    def nearest(self, c: np.ndarray, k: int, metric: str = "l1",
                within: np.ndarray | None = None):
        """The k indexed coordinates nearest to c (ties by coordinate order).

        :returns: ((m, 9) uint16 coordinates, (m,) int64 distances), nearest first.
        """
        return run(self.nearest_steps(c, k, metric, within))

    def nearest_steps(self, c: np.ndarray, k: int, metric: str = "l1",
                      within: np.ndarray | None = None):
        """Steps of :meth:`nearest`: a window of main (or of the delta) per step, nearest
        window first; the windows that cannot hold a nearer key are never read."""
        snap = self._snapshot()
        nn = _core.Nearest(c, min(k, len(snap.main) + len(snap.delta)), metric, within)
        for arr, alive in ((snap.main, snap.alive), (snap.delta, None)):
            starts, bounds = nn.windows(arr, WINDOW)
            for a, lb in zip(starts.tolist(), bounds.tolist()):
                kth = nn.bound
                if kth is not None and lb > kth:
                    break   # windows come by ascending bound: none after this one either
                nn.scan_sorted(arr, a, min(a + WINDOW, len(arr)), alive)
                self._hold(snap)
                yield
        coords, dists, _ = nn.result()
        return coords, dists.astype(np.int64)

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
            j = _core.upper_bound(delta, c) if len(delta) else 0
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
