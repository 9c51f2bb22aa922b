# ---------------------------------------------------------------------------------------
# Matching, distances, top-k
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

import numpy as np
from vtpu.errors import InterfaceError


@cython.boundscheck(False)
@cython.wraparound(False)
def match(arr, pattern):
    """Boolean mask of the rows of ``arr`` inside the pattern's box.

    :param arr: C-contiguous (N, 9) uint16.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: (N,) bool array.
    """
    _coords_arg(arr)
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef const uint16_t[:, ::1] p = pattern
    cdef uint8_t[::1] o = out.view(np.uint8)
    # Only the constrained components are checked: a prefix pattern costs 3 compares.
    cdef int cols[NDIM]
    cdef int ncols = 0, j, k
    cdef uint16_t lo[NDIM]
    cdef uint16_t hi[NDIM]
    cdef bint ok
    for j in range(NDIM):
        if p[0, j] > p[1, j]:
            return out
        if p[0, j] != 0 or p[1, j] != 0xFFFF:
            cols[ncols] = j
            lo[ncols] = p[0, j]
            hi[ncols] = p[1, j]
            ncols += 1
    with nogil:
        for i in range(n):
            ok = True
            for k in range(ncols):
                if a[i, cols[k]] < lo[k] or a[i, cols[k]] > hi[k]:
                    ok = False
                    break
            o[i] = ok
    return out


cdef inline void _tile_query(const uint16_t* q, uint16_t* qt) noexcept nogil:
    """Repeat the query DIST_BLOCK times so a block of rows can be compared flat."""
    cdef Py_ssize_t t
    for t in range(NDIM * DIST_BLOCK):
        qt[t] = q[t % NDIM]


cdef inline void _dist_block(const uint16_t* src, const uint16_t* qt, uint16_t* tmp,
                             uint32_t* ds, Py_ssize_t nb, bint ham) noexcept nogil:
    """L1 (or Hamming) distances of nb consecutive rows to the tiled query qt.

    Two flat passes rather than one loop per row: an elementwise |x - y| (or x != y)
    over 9*nb uint16, which the compiler vectorises, then each row's 9 terms summed.
    This is several times faster than a per-row loop with early abandoning, whose
    unpredictable branch costs more than the arithmetic it saves."""
    cdef Py_ssize_t t, i, m = NDIM * nb
    cdef uint16_t x, y
    cdef const uint16_t* p
    if ham:
        for t in range(m):
            tmp[t] = src[t] != qt[t]
    else:
        for t in range(m):
            x = src[t]
            y = qt[t]
            tmp[t] = <uint16_t>(x - y) if x > y else <uint16_t>(y - x)
    for i in range(nb):
        p = tmp + NDIM * i
        ds[i] = (<uint32_t>p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7]) + p[8]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef _distances(c, arr, bint ham):
    """Per-row L1 (ham false) or Hamming (ham true) distances from c, as uint32."""
    c = _coord_arg(c)
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty(n, dtype=np.uint32)
    if n == 0:
        return out
    cdef const uint16_t[::1] q = c
    cdef const uint16_t[:, ::1] a = arr
    cdef uint32_t[::1] o = out
    cdef uint16_t qt[NDIM * DIST_BLOCK]
    cdef uint16_t tmp[NDIM * DIST_BLOCK]
    cdef Py_ssize_t nb
    _tile_query(&q[0], qt)
    with nogil:
        i = 0
        while i < n:
            nb = DIST_BLOCK if n - i > DIST_BLOCK else n - i
            _dist_block(&a[i, 0], qt, tmp, &o[i], nb, ham)
            i += nb
    return out


def l1(c, arr):
    """L1 distance (sum of absolute component differences) from c to every row.

    :returns: (N,) uint32.
    """
    return _distances(c, arr, False)


def hamming(c, arr):
    """Hamming distance (number of differing components) from c to every row.

    :returns: (N,) uint8.
    """
    return _distances(c, arr, True).astype(np.uint8)


# -- the k nearest ------------------------------------------------------------------------
#
# One path for every CNEAREST scan: Nearest keeps the best k (distance, coordinate, tag)
# seen so far in a max-heap whose root, the worst of them, is the bound a row must reach.
# Unsorted rows go through the flat distance passes block by block. Rows of a sorted
# array are reached through a descent over its ranges: a range's first and last rows
# share a prefix that every row between them shares, and the component after it lies
# between theirs, so the distance from the query to that box is a lower bound for every
# row of the range. A range whose bound is past the k-th best distance is skipped whole;
# the nearer half of a range is visited first, so the heap fills with near rows early.

cdef uint32_t _OPEN = 0xFFFFFFFE     # Nearest.kth while fewer than k rows are kept
cdef uint32_t _NO_ROW = 0xFFFFFFFF   # a range's lower bound when no row can be in within


cdef inline uint32_t _gap(uint16_t x, uint16_t lo, uint16_t hi, bint ham) noexcept nogil:
    """Distance from x to the nearest value of [lo, hi] in one component (lo <= hi)."""
    if x < lo:
        return 1 if ham else <uint32_t>(lo - x)
    if x > hi:
        return 1 if ham else <uint32_t>(x - hi)
    return 0


cdef class Nearest:
    """The k coordinates nearest to a query among the rows fed to it, kept as rows come.

    Rows arrive by ranges of arrays (:meth:`scan` for any order, :meth:`scan_sorted`
    for a lexicographically sorted array, which skips the ranges that cannot hold a
    nearer row); :meth:`result` answers the best k of everything fed so far. Equal
    distances are ordered by coordinate, then by the row's tag (its row number in the
    array it came from), so the answer is exact and deterministic.

    :param c: (9,) uint16 query coordinate.
    :param k: how many to keep (>= 0).
    :param metric: ``"l1"`` (sum of |differences|) or ``"hamming"`` (differing components).
    :param within: optional (2, 9) uint16 inclusive pattern; rows outside it are ignored.
    :raises InterfaceError: bad metric, k < 0, or wrong array types.
    """
    cdef uint16_t q[NDIM]
    cdef uint16_t qt[NDIM * DIST_BLOCK]
    cdef uint16_t lo[NDIM]
    cdef uint16_t hi[NDIM]
    cdef uint32_t wgap[NDIM]   # per component: the query's gap to the within box
    cdef bint ham, boxed, none_fit
    cdef Py_ssize_t k, size
    cdef uint32_t kth           # the root's distance once k are kept, else _OPEN
    cdef uint32_t* hd           # per slot: distance, coordinate, tag
    cdef uint16_t* hc
    cdef int64_t* ht
    cdef int32_t* heap          # slots, as a max-heap on (distance, coordinate, tag)
    cdef readonly Py_ssize_t rows_seen   # rows whose distance was computed

    def __cinit__(self, c, Py_ssize_t k, str metric="l1", within=None):
        c = _coord_arg(c)
        if metric not in ("l1", "hamming"):
            raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
        if k < 0:
            raise InterfaceError(f"k must be >= 0, got {k}")
        if k > 0x7FFFFFFF:
            raise InterfaceError(f"k must be < 2**31, got {k}")
        cdef const uint16_t[::1] cv = c
        cdef const uint16_t[:, ::1] p
        cdef int j
        self.ham = metric == "hamming"
        self.k = k
        self.size = 0
        self.kth = _OPEN
        self.rows_seen = 0
        self.boxed = within is not None
        self.none_fit = False
        for j in range(NDIM):
            self.q[j] = cv[j]
            self.lo[j] = 0
            self.hi[j] = 0xFFFF
            self.wgap[j] = 0
        if self.boxed:
            p = _pattern_arg(within, "within")
            for j in range(NDIM):
                self.lo[j] = p[0, j]
                self.hi[j] = p[1, j]
                if p[0, j] > p[1, j]:
                    self.none_fit = True
                else:
                    self.wgap[j] = _gap(self.q[j], p[0, j], p[1, j], self.ham)
        _tile_query(self.q, self.qt)
        cdef Py_ssize_t cap = k if k > 0 else 1
        self.hd = <uint32_t*>malloc(cap * sizeof(uint32_t))
        self.hc = <uint16_t*>malloc(cap * NDIM * sizeof(uint16_t))
        self.ht = <int64_t*>malloc(cap * sizeof(int64_t))
        self.heap = <int32_t*>malloc(cap * sizeof(int32_t))
        if not (self.hd and self.hc and self.ht and self.heap):
            raise MemoryError()

    def __dealloc__(self):
        free(self.hd)
        free(self.hc)
        free(self.ht)
        free(self.heap)

    @property
    def bound(self):
        """The distance a row must not exceed to enter: the k-th best so far, or None
        while fewer than k rows are kept."""
        return None if self.kth == _OPEN else self.kth

    def __len__(self):
        return self.size

    # -- the heap ------------------------------------------------------------------------

    cdef inline bint _worse(self, int32_t a, int32_t b) noexcept nogil:
        """True when slot a orders after slot b."""
        cdef int c
        if self.hd[a] != self.hd[b]:
            return self.hd[a] > self.hd[b]
        c = lex_cmp(self.hc + NDIM * a, self.hc + NDIM * b)
        if c != 0:
            return c > 0
        return self.ht[a] > self.ht[b]

    cdef void _offer(self, uint32_t d, const uint16_t* row, int64_t tag) noexcept nogil:
        """Keep (d, row, tag) if it is among the best k so far (d <= bound already)."""
        cdef int32_t s, t
        cdef Py_ssize_t pos, child, parent
        cdef int c
        if self.size < self.k:
            s = <int32_t>self.size
            pos = self.size
            self.size += 1
        else:
            s = self.heap[0]
            if d == self.hd[s]:
                c = lex_cmp(row, self.hc + NDIM * s)
                if c > 0 or (c == 0 and tag >= self.ht[s]):
                    return
            pos = -1
        self.hd[s] = d
        memcpy(self.hc + NDIM * s, row, NDIM * sizeof(uint16_t))
        self.ht[s] = tag
        if pos >= 0:
            # A new slot at the bottom: up while it is worse than its parent.
            self.heap[pos] = s
            while pos > 0:
                parent = (pos - 1) >> 1
                t = self.heap[parent]
                if not self._worse(s, t):
                    break
                self.heap[pos] = t
                pos = parent
            self.heap[pos] = s
        else:
            # The root replaced by a better row: down while a child is worse.
            pos = 0
            while True:
                child = 2 * pos + 1
                if child >= self.size:
                    break
                if child + 1 < self.size and self._worse(self.heap[child + 1], self.heap[child]):
                    child += 1
                t = self.heap[child]
                if not self._worse(t, s):
                    break
                self.heap[pos] = t
                pos = child
            self.heap[pos] = s
        if self.size == self.k:
            self.kth = self.hd[self.heap[0]]

    # -- scanning ------------------------------------------------------------------------

    cdef void _rows(self, const uint16_t* base, Py_ssize_t a, Py_ssize_t b,
                    const uint8_t* alive) noexcept nogil:
        """Offer every row of [a, b): distances by blocks, then only the rows within the
        bound are checked (alive, within) and offered."""
        cdef uint16_t tmp[NDIM * DIST_BLOCK]
        cdef uint32_t ds[DIST_BLOCK]
        cdef Py_ssize_t b0 = a, nb, ii, i
        cdef const uint16_t* row
        self.rows_seen += b - a
        while b0 < b:
            nb = DIST_BLOCK if b - b0 > DIST_BLOCK else b - b0
            _dist_block(base + NDIM * b0, self.qt, tmp, ds, nb, self.ham)
            for ii in range(nb):
                # Once k are kept almost every row fails this one compare.
                if ds[ii] > self.kth:
                    continue
                i = b0 + ii
                if alive != NULL and not alive[i]:
                    continue
                row = base + NDIM * i
                if self.boxed and not in_box(row, self.lo, self.hi):
                    continue
                self._offer(ds[ii], row, i)
            b0 += nb

    cdef uint32_t _range_lb(self, const uint16_t* base, Py_ssize_t a,
                            Py_ssize_t b) noexcept nogil:
        """Lower bound of the distance to any row of sorted [a, b) inside the within box
        (_NO_ROW when none can be inside it)."""
        cdef const uint16_t* f = base + NDIM * a
        cdef const uint16_t* l = base + NDIM * (b - 1)
        cdef uint32_t s = 0
        cdef uint16_t x, y
        cdef int j = 0
        # The shared prefix: every row of the range has these components.
        while j < NDIM and f[j] == l[j]:
            if f[j] < self.lo[j] or f[j] > self.hi[j]:
                return _NO_ROW
            s += _gap(self.q[j], f[j], f[j], self.ham)
            j += 1
        if j < NDIM:
            # The first component that differs lies in [f[j], l[j]] (and in the box).
            x = f[j] if f[j] > self.lo[j] else self.lo[j]
            y = l[j] if l[j] < self.hi[j] else self.hi[j]
            if x > y:
                return _NO_ROW
            s += _gap(self.q[j], x, y, self.ham)
            j += 1
            while j < NDIM:
                s += self.wgap[j]
                j += 1
        return s

    cdef void _descend(self, const uint16_t* base, Py_ssize_t a, Py_ssize_t b,
                       const uint8_t* alive) noexcept nogil:
        """Offer the rows of sorted [a, b) that can beat the bound, nearer half first."""
        cdef Py_ssize_t mid
        cdef uint32_t la, lb
        if b - a <= NEAREST_LEAF:
            self._rows(base, a, b, alive)
            return
        mid = a + ((b - a) >> 1)
        la = self._range_lb(base, a, mid)
        lb = self._range_lb(base, mid, b)
        if lb < la:
            if lb <= self.kth:
                self._descend(base, mid, b, alive)
            if la <= self.kth:
                self._descend(base, a, mid, alive)
        else:
            if la <= self.kth:
                self._descend(base, a, mid, alive)
            if lb <= self.kth:
                self._descend(base, mid, b, alive)

    cdef Py_ssize_t _stop(self, arr, Py_ssize_t stop) except? -2:
        _coords_arg(arr)
        return arr.shape[0] if stop == -1 else stop

    cdef const uint8_t* _args(self, arr, Py_ssize_t start, Py_ssize_t stop, alive) except? NULL:
        _coords_arg(arr)
        cdef Py_ssize_t n = arr.shape[0]
        if not 0 <= start <= stop <= n:
            raise InterfaceError(f"rows [{start}, {stop}) are not inside the {n} rows")
        if alive is None:
            return NULL
        if not isinstance(alive, np.ndarray) or alive.dtype != np.bool_ or alive.shape != (n,):
            raise InterfaceError(f"alive must be None or a ({n},) bool array")
        if not alive.flags.c_contiguous:
            raise InterfaceError("alive must be C-contiguous")
        return <const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>alive)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def scan(self, arr, Py_ssize_t start=0, Py_ssize_t stop=-1, alive=None):
        """Offer rows [start, stop) of ``arr`` (any order), each tagged with its row number.

        :param stop: one past the last row (-1: the end).
        :param arr: C-contiguous (N, 9) uint16.
        :param alive: optional (N,) bool array: rows where it is False are skipped.
        :raises InterfaceError: wrong types or a range outside the array.
        """
        cdef Py_ssize_t e = self._stop(arr, stop)
        cdef const uint8_t* m = self._args(arr, start, e, alive)
        if self.k == 0 or self.none_fit or start == e:
            return
        cdef const uint16_t[:, ::1] a = arr
        with nogil:
            self._rows(&a[0, 0], start, e, m)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def scan_sorted(self, arr, Py_ssize_t start=0, Py_ssize_t stop=-1, alive=None):
        """Offer rows [start, stop) of a lexicographically sorted ``arr``, skipping every
        range whose rows are all too far (the answer is the same as :meth:`scan`'s).

        :param stop: one past the last row (-1: the end).
        :param arr: C-contiguous (N, 9) uint16, sorted (unchecked: the caller's promise).
        :param alive: optional (N,) bool array: rows where it is False are skipped.
        :raises InterfaceError: wrong types or a range outside the array.
        """
        cdef Py_ssize_t e = self._stop(arr, stop)
        cdef const uint8_t* m = self._args(arr, start, e, alive)
        if self.k == 0 or self.none_fit or start == e:
            return
        cdef const uint16_t[:, ::1] a = arr
        with nogil:
            if self._range_lb(&a[0, 0], start, e) <= self.kth:
                self._descend(&a[0, 0], start, e, m)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def windows(self, arr, Py_ssize_t size):
        """Split a sorted array into windows of ``size`` rows, nearest first.

        :param arr: C-contiguous (N, 9) uint16, sorted.
        :param size: rows per window (> 0).
        :returns: ``(starts, bounds)``: int64 first rows and the lower bound of the
            distance to any row of each window, by ascending bound (then start); windows
            that cannot hold a row inside ``within`` are left out.
        """
        _coords_arg(arr)
        if size <= 0:
            raise InterfaceError(f"size must be > 0, got {size}")
        cdef Py_ssize_t n = arr.shape[0], nw = (n + size - 1) // size, w, cnt = 0
        starts = np.empty(nw, dtype=np.int64)
        bounds = np.empty(nw, dtype=np.int64)
        if n == 0 or self.k == 0 or self.none_fit:
            return starts[:0], bounds[:0]
        cdef const uint16_t[:, ::1] a = arr
        cdef int64_t[::1] st = starts
        cdef int64_t[::1] bd = bounds
        cdef uint32_t lb
        with nogil:
            for w in range(nw):
                lb = self._range_lb(&a[0, 0], w * size, min(n, (w + 1) * size))
                if lb != _NO_ROW:
                    st[cnt] = w * size
                    bd[cnt] = lb
                    cnt += 1
        starts, bounds = starts[:cnt], bounds[:cnt]
        order = np.lexsort((starts, bounds))
        return starts[order], bounds[order]

    def result(self):
        """The rows kept, nearest first (ties by coordinate, then tag).

        :returns: ``(coords, dists, tags)``: (m, 9) uint16, (m,) uint32, (m,) int64.
        """
        cdef Py_ssize_t m = self.size, i, s
        coords = np.empty((m, NDIM), dtype=np.uint16)
        dists = np.empty(m, dtype=np.uint32)
        tags = np.empty(m, dtype=np.int64)
        if m == 0:
            return coords, dists, tags
        cdef uint16_t[:, ::1] co = coords
        cdef uint32_t[::1] do = dists
        cdef int64_t[::1] to = tags
        for i in range(m):
            s = self.heap[i]
            do[i] = self.hd[s]
            to[i] = self.ht[s]
            memcpy(&co[i, 0], self.hc + NDIM * s, NDIM * sizeof(uint16_t))
        order = np.lexsort((tags,) + tuple(coords[:, j] for j in range(NDIM - 1, -1, -1))
                           + (dists,))
        return coords[order], dists[order], tags[order]


def topk(c, arr, Py_ssize_t k, str metric="l1", mask=None):
    """The k rows nearest to c, without sorting everything (see :class:`Nearest`).

    :param c: (9,) uint16 query coordinate.
    :param arr: C-contiguous (N, 9) uint16 candidates.
    :param k: how many to return (fewer when fewer rows qualify).
    :param metric: ``"l1"`` (sum of |differences|) or ``"hamming"`` (differing components).
    :param mask: optional (N,) bool array; only rows where it is True are candidates.
    :returns: ``(idx, dist)``: int64 row indices and uint32 distances, nearest first,
        ties broken by coordinate order, then row index.
    :raises InterfaceError: bad metric, k < 0, or wrong array types.
    """
    _coords_arg(arr)
    if k < 0:
        raise InterfaceError(f"k must be >= 0, got {k}")
    cdef Py_ssize_t n = arr.shape[0]
    nn = Nearest(c, min(k, n), metric)
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (n,):
        mask = np.ascontiguousarray(mask)
    elif mask is not None:
        raise InterfaceError(f"mask must be a ({n},) bool array")
    nn.scan(arr, 0, n, mask)
    _, dist, idx = nn.result()
    return idx, dist


ctypedef fused _real:
    float
    double


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _band_fill(_real[:, ::1] s, const int64_t[::1] lo, const int64_t[::1] hi,
                     _real value, int64_t[::1] kept) noexcept nogil:
    cdef Py_ssize_t r, c, a, b, n = s.shape[1]
    for r in range(s.shape[0]):
        a = min(max(lo[r], 0), n)
        b = min(max(hi[r], a), n)
        for c in range(a):
            s[r, c] = value
        for c in range(b, n):
            s[r, c] = value
        kept[r] = b - a


def band_fill(scores, lo, hi, double value):
    """Set every cell of each row outside that row's column span to ``value``, in place:
    row ``r`` keeps columns ``[lo[r], hi[r])`` (clipped to the row). A band of attention
    windows over a block of keys is masked so, in one pass over the cells outside it.

    :param scores: C-contiguous (R, C) float32 or float64 array, written in place.
    :param lo: (R,) int64 first kept column of each row.
    :param hi: (R,) int64 end (exclusive) of each row's kept columns.
    :param value: what the other cells become (e.g. ``-inf`` before a softmax).
    :returns: (R,) int64: how many cells of each row were kept.
    :raises InterfaceError: wrong dtypes or shapes.
    """
    if not isinstance(scores, np.ndarray) or scores.ndim != 2 or \
            scores.dtype not in (np.float32, np.float64) or not scores.flags.c_contiguous \
            or not scores.flags.writeable:
        raise InterfaceError("scores must be a writable C-contiguous (R, C) float32 or "
                             "float64 array")
    lo = _vector_arg(lo, cnp.NPY_INT64, np.int64)
    hi = _vector_arg(hi, cnp.NPY_INT64, np.int64)
    if lo.shape != (scores.shape[0],) or hi.shape != (scores.shape[0],):
        raise InterfaceError(f"lo and hi need one bound per row ({scores.shape[0]}), got "
                             f"{lo.shape} and {hi.shape}")
    cdef float[:, ::1] s32
    cdef double[:, ::1] s64
    cdef const int64_t[::1] l = lo
    cdef const int64_t[::1] h = hi
    kept = _new_int64(scores.shape[0])
    cdef int64_t[::1] k = kept
    if scores.dtype == np.float32:
        s32 = scores
        with nogil:
            _band_fill(s32, l, h, <float>value, k)
    else:
        s64 = scores
        with nogil:
            _band_fill(s64, l, h, value, k)
    return kept
