# ---------------------------------------------------------------------------------------
# Matching, distances, top-k
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t

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


cdef inline bint _worse(uint32_t da, const uint16_t* ca, uint32_t db,
                        const uint16_t* cb) noexcept nogil:
    """True when (da, ca) orders after (db, cb): larger distance, ties by coordinate."""
    if da != db:
        return da > db
    return lex_cmp(ca, cb) > 0


cdef void _sift_down(int64_t* heap, uint32_t* hd, Py_ssize_t size, Py_ssize_t pos,
                     const uint16_t* base) noexcept nogil:
    # Max-heap on (distance, coordinate): the root is the worst of the current best k.
    cdef Py_ssize_t child, big
    cdef int64_t ti
    cdef uint32_t td
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        big = child
        if child + 1 < size and _worse(hd[child + 1], base + NDIM * heap[child + 1],
                                       hd[child], base + NDIM * heap[child]):
            big = child + 1
        if not _worse(hd[big], base + NDIM * heap[big], hd[pos], base + NDIM * heap[pos]):
            return
        ti = heap[pos]; heap[pos] = heap[big]; heap[big] = ti
        td = hd[pos]; hd[pos] = hd[big]; hd[big] = td
        pos = big


cdef void _sift_up(int64_t* heap, uint32_t* hd, Py_ssize_t pos,
                   const uint16_t* base) noexcept nogil:
    cdef Py_ssize_t parent
    cdef int64_t ti
    cdef uint32_t td
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(hd[pos], base + NDIM * heap[pos], hd[parent], base + NDIM * heap[parent]):
            return
        ti = heap[pos]; heap[pos] = heap[parent]; heap[parent] = ti
        td = hd[pos]; hd[pos] = hd[parent]; hd[parent] = td
        pos = parent


@cython.boundscheck(False)
@cython.wraparound(False)
def topk(c, arr, Py_ssize_t k, str metric="l1", mask=None):
    """The k rows nearest to c, without sorting everything (a bounded max-heap).

    :param c: (9,) uint16 query coordinate.
    :param arr: C-contiguous (N, 9) uint16 candidates.
    :param k: how many to return (fewer when fewer rows qualify).
    :param metric: ``"l1"`` (sum of |differences|) or ``"hamming"`` (differing components).
    :param mask: optional (N,) bool array; only rows where it is True are candidates.
    :returns: ``(idx, dist)``: int64 row indices and uint32 distances, nearest first,
        ties broken by coordinate order.
    :raises InterfaceError: bad metric, k < 0, or wrong array types.
    """
    c = _coord_arg(c)
    _coords_arg(arr)
    if metric not in ("l1", "hamming"):
        raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
    if k < 0:
        raise InterfaceError(f"k must be >= 0, got {k}")
    cdef Py_ssize_t n = arr.shape[0]
    cdef const uint8_t[::1] m
    cdef bint use_mask = mask is not None
    if use_mask:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
            raise InterfaceError(f"mask must be a ({n},) bool array")
        m = np.ascontiguousarray(mask).view(np.uint8)
    else:
        m = np.ones(1, dtype=np.uint8)
    if k > n:
        k = n
    heap_a = np.empty(max(k, 1), dtype=np.int64)
    hd_a = np.empty(max(k, 1), dtype=np.uint32)
    cdef int64_t[::1] heap = heap_a
    cdef uint32_t[::1] hd = hd_a
    cdef const uint16_t[::1] q = c
    cdef const uint16_t* base
    cdef Py_ssize_t i, size = 0
    cdef int j
    cdef int32_t d
    cdef uint32_t s
    cdef bint ham = metric == "hamming"
    if k == 0 or n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint32)
    cdef const uint16_t[:, ::1] a = arr
    base = &a[0, 0]
    cdef const uint16_t* row
    cdef uint32_t bound = 0xFFFFFFFF
    cdef uint16_t qt[NDIM * DIST_BLOCK]
    cdef uint16_t tmp[NDIM * DIST_BLOCK]
    cdef uint32_t ds[DIST_BLOCK]
    cdef Py_ssize_t b0, nb, ii
    _tile_query(&q[0], qt)
    with nogil:
        b0 = 0
        while b0 < n:
            nb = DIST_BLOCK if n - b0 > DIST_BLOCK else n - b0
            _dist_block(base + NDIM * b0, qt, tmp, ds, nb, ham)
            for ii in range(nb):
                s = ds[ii]
                # Once the heap is full, bound is its worst distance: almost every row
                # fails this one predictable compare.
                if s > bound:
                    continue
                i = b0 + ii
                if use_mask and not m[i]:
                    continue
                row = base + NDIM * i
                if size < k:
                    heap[size] = i
                    hd[size] = s
                    _sift_up(&heap[0], &hd[0], size, base)
                    size += 1
                    if size == k:
                        bound = hd[0]
                elif s < hd[0] or (s == hd[0] and lex_cmp(row, base + NDIM * heap[0]) < 0):
                    heap[0] = i
                    hd[0] = s
                    _sift_down(&heap[0], &hd[0], size, 0, base)
                    bound = hd[0]
            b0 += nb
    idx = heap_a[:size].copy()
    dist = hd_a[:size].copy()
    # Sort the k winners: by distance, then coordinate (k is small).
    rows = arr[idx]
    order = np.lexsort(tuple(rows[:, j] for j in range(NDIM - 1, -1, -1)) + (dist,))
    return idx[order], dist[order]
