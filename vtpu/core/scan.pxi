# ---------------------------------------------------------------------------------------
# Sorted-array index primitives (used by the engine): lexicographic binary and galloping
# search over (N, 9) word arrays, and the two pattern scans with skipping.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, realloc, free

import numpy as np
from vtpu.errors import InterfaceError


cdef inline Py_ssize_t _lower_bound(const uint16_t* base, Py_ssize_t lo, Py_ssize_t hi,
                                    const uint16_t* key) noexcept nogil:
    """First index in [lo, hi) whose row is >= key."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if lex_cmp(base + NDIM * mid, key) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _upper_bound(const uint16_t* base, Py_ssize_t lo, Py_ssize_t hi,
                                    const uint16_t* key) noexcept nogil:
    """First index in [lo, hi) whose row is > key."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if lex_cmp(base + NDIM * mid, key) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int64_t* _grown_rows(int64_t* buf, Py_ssize_t* cap) noexcept nogil:
    """A row buffer of cap[0] rows reallocated to twice as many (cap[0] doubled), or
    NULL (then buf is still valid, and still the caller's to free). The scans collect
    their rows in such a buffer, copied out once (:func:`_rows_array`): growing a numpy
    array instead cost more than the scan of a small answer."""
    cdef int64_t* grown = <int64_t*>realloc(buf, 2 * cap[0] * sizeof(int64_t))
    if grown != NULL:
        cap[0] *= 2
    return grown


cdef object _rows_array(const int64_t* buf, Py_ssize_t cnt):
    """The first cnt rows of a row buffer as a new int64 array."""
    out = _new_int64(cnt)
    if cnt:
        memcpy(<int64_t*>_i64(out), buf, cnt * sizeof(int64_t))
    return out


cdef inline Py_ssize_t _gallop(const uint16_t* base, Py_ssize_t start, Py_ssize_t n,
                               const uint16_t* key) noexcept nogil:
    """First index >= start whose row is >= key, searching outwards from start.

    Cost grows with the log of the distance jumped, not of the array size: skips in a
    scan are usually short."""
    cdef Py_ssize_t step = 1, lo = start, hi
    if lo >= n or lex_cmp(base + NDIM * lo, key) >= 0:
        return lo
    while True:
        hi = lo + step
        if hi >= n:
            return _lower_bound(base, lo + 1, n, key)
        if lex_cmp(base + NDIM * hi, key) >= 0:
            return _lower_bound(base, lo + 1, hi + 1, key)
        lo = hi
        step <<= 1


def lower_bound(sorted_arr, key):
    """First row index of a lexicographically sorted (N, 9) array that is >= key.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted.
    :param key: (9,) uint16.
    :returns: int in 0..N.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    key = _coord_arg(key, "key")
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>sorted_arr)[0]
    return _lower_bound(_u16(sorted_arr), 0, n, _u16(key)) if n else 0


def upper_bound(sorted_arr, key):
    """First row index of a lexicographically sorted (N, 9) array that is > key: the
    number of rows <= key.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted.
    :param key: (9,) uint16.
    :returns: int in 0..N.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    key = _coord_arg(key, "key")
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>sorted_arr)[0]
    return _upper_bound(_u16(sorted_arr), 0, n, _u16(key)) if n else 0


cdef bint _lex_next(const uint16_t* c, const uint16_t* lo, const uint16_t* hi,
                    uint16_t* out) noexcept nogil:
    """Smallest coordinate >= c (lexicographic) inside the box; False if none."""
    cdef int j, i
    for j in range(NDIM):
        if c[j] < lo[j]:
            memcpy(out, c, sizeof(uint16_t) * j)
            memcpy(out + j, lo + j, sizeof(uint16_t) * (NDIM - j))
            return True
        if c[j] > hi[j]:
            # carry: bump the deepest earlier component that still has room
            i = j - 1
            while i >= 0 and c[i] >= hi[i]:
                i -= 1
            if i < 0:
                return False
            memcpy(out, c, sizeof(uint16_t) * i)
            out[i] = c[i] + 1
            memcpy(out + i + 1, lo + i + 1, sizeof(uint16_t) * (NDIM - i - 1))
            return True
    memcpy(out, c, sizeof(uint16_t) * NDIM)
    return True


cdef bint _lex_exact(const uint16_t* lo, const uint16_t* hi) noexcept nogil:
    """Whether every coordinate lexicographically between a box's corners is inside it:
    the box fixes a prefix of components, bounds the next one and leaves the rest
    whole (a prefix pattern such as ``3.7.*/*.*.*/*.*.*`` or ``3.7.4/[0:5].*.*/...``).
    Its matches in a sorted array are then the span between the corners."""
    cdef int j = 0
    while j < NDIM and lo[j] == hi[j]:
        j += 1
    j += 1   # the bounded component, if any
    while j < NDIM:
        if lo[j] != 0 or hi[j] != 0xFFFF:
            return False
        j += 1
    return True


def is_prefix_pattern(pattern):
    """Whether a pattern fixes a prefix of components, bounds the next one and leaves
    the rest whole: then every coordinate between its corners matches it, and its
    matches in a sorted array are the span between them.

    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: bool.
    :raises InterfaceError: not a (2, 9) uint16 array.
    """
    pattern = _pattern_arg(pattern)
    return _lex_exact(_u16(pattern), _u16(pattern) + NDIM)


cdef object _span_rows(Py_ssize_t a, Py_ssize_t b):
    """Rows a..b-1 as a new int64 array."""
    out = _new_int64(b - a if b > a else 0)
    cdef int64_t* o = <int64_t*>_i64(out)
    cdef Py_ssize_t i
    for i in range(a, b):
        o[i - a] = i
    return out


cdef tuple _skip_scan(const uint16_t* kb, const uint16_t* cb, Py_ssize_t n,
                      const uint16_t* lo, const uint16_t* hi, bint zorder,
                      Py_ssize_t i, Py_ssize_t limit, Py_ssize_t budget=-1,
                      Py_ssize_t* resume=NULL):
    """The scan loop shared by :func:`lex_scan` and :func:`z_scan`.

    ``kb`` holds the sorted keys (coordinates themselves, or Morton keys), ``cb`` the
    coordinates in the same order (the same array for the lexicographic index). From
    row i: stop past the box's high key, emit rows inside the box, step a few rows past
    misses, then jump (galloping search) to the next key that can be inside: the
    lexicographic successor in the box, or BIGMIN in Z order.

    With ``budget`` >= 0 it stops once it has examined that many rows (a jump counts
    JUMP_ROWS: its search reads about as many) and sets ``resume`` to the row to go on
    from; ``resume`` is -1 when the scan ended.

    Returns (int64 indices, number of jumps)."""
    cdef uint16_t kmax[NDIM]
    cdef uint16_t nxt[NDIM]
    cdef uint16_t knxt[NDIM]
    cdef Py_ssize_t cap = 64, cnt = 0, seeks = 0
    cdef int misses = 0
    cdef Py_ssize_t visits = 0
    cdef int64_t* buf = <int64_t*>malloc(cap * sizeof(int64_t))   # (see _grown_rows)
    cdef int64_t* grown
    if buf == NULL:
        raise MemoryError()
    if zorder:
        _morton_row(hi, kmax)
    else:
        memcpy(kmax, hi, sizeof(uint16_t) * NDIM)
    if resume != NULL:
        resume[0] = -1
    while i < n:
        if budget >= 0 and visits >= budget:
            resume[0] = i
            break
        visits += 1
        if lex_cmp(kb + NDIM * i, kmax) > 0:
            break
        if in_box(cb + NDIM * i, lo, hi):
            if cnt == cap:
                grown = _grown_rows(buf, &cap)
                if grown == NULL:
                    free(buf)
                    raise MemoryError()
                buf = grown
            buf[cnt] = i
            cnt += 1
            if cnt == limit:
                break
            i += 1
            misses = 0
            continue
        misses += 1
        if misses < STEP_BEFORE_SKIP:
            i += 1
            continue
        if zorder:
            if not _bigmin(cb + NDIM * i, lo, hi, nxt):
                break
            _morton_row(nxt, knxt)
        else:
            if not _lex_next(cb + NDIM * i, lo, hi, knxt):
                break
            if lex_cmp(knxt, kb + NDIM * i) <= 0:
                i += 1
                continue
        i = _gallop(kb, i + 1, n, knxt)
        seeks += 1
        visits += JUMP_ROWS
        misses = 0
    try:
        return _rows_array(buf, cnt), seeks
    finally:
        free(buf)


cdef tuple _lex_rows(const uint16_t* base, Py_ssize_t n, const uint16_t* p,
                     Py_ssize_t i, Py_ssize_t limit, Py_ssize_t budget,
                     Py_ssize_t* resume):
    """The matches of a lexicographic scan from row i (at or past the low corner), as
    :func:`_skip_scan` (``budget``, ``resume``, the returned pair); a prefix pattern's
    are the span up to the high corner, taken without comparing a row."""
    cdef Py_ssize_t e
    if not _lex_exact(p, p + NDIM):
        return _skip_scan(base, base, n, p, p + NDIM, False, i, limit, budget, resume)
    e = _upper_bound(base, i, n, p + NDIM)
    if limit > 0 and e - i > limit:
        e = i + limit
    if resume != NULL:
        resume[0] = -1
        if budget >= 0 and e - i > budget:
            e = resume[0] = i + budget
    return _span_rows(i, e), 0


@cython.boundscheck(False)
@cython.wraparound(False)
def lex_scan(sorted_arr, pattern, Py_ssize_t start=0, Py_ssize_t limit=-1):
    """Row indices of a lexicographically sorted array that match the pattern.

    Seeks to the first row >= the box's low corner, steps a few rows, and when it meets
    a row outside the box jumps (galloping search) to the next coordinate that could be
    inside. Results come out in coordinate order.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted lexicographically.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :param start: first row index to consider (for paging).
    :param limit: stop after this many matches (-1: no limit).
    :returns: ``(idx, seeks)``: int64 matching row indices and the number of jumps made.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>sorted_arr)[0], i
    cdef const uint16_t* p = _u16(pattern)
    if n == 0 or limit == 0 or _box_empty(p, p + NDIM):
        return _new_int64(0), 0
    cdef const uint16_t* base = _u16(sorted_arr)
    i = _gallop(base, start, n, p) if start > 0 else _lower_bound(base, 0, n, p)
    return _lex_rows(base, n, p, i, limit, -1, NULL)


def lex_scan_from(sorted_arr, pattern, Py_ssize_t start, Py_ssize_t limit, Py_ssize_t budget):
    """:func:`lex_scan` from row ``start`` that examines about ``budget`` rows at most (a
    jump counts as several) and says where to go on: a scan in bounded steps, each as
    long as its work, not as the rows it skips.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted lexicographically.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :param start: first row index to consider.
    :param limit: stop after this many matches (-1: no limit).
    :param budget: rows to examine at most (>= 1).
    :returns: ``(idx, resume)``: int64 matching row indices (ascending), and the row to
        call again from, or -1 when the scan is over (past the box, the limit reached,
        or the end of the array).
    """
    _coords_arg(sorted_arr, "sorted_arr")
    pattern = _pattern_arg(pattern)
    if budget < 1:
        raise InterfaceError(f"budget must be >= 1, got {budget}")
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>sorted_arr)[0]
    cdef Py_ssize_t resume = -1
    cdef const uint16_t* p = _u16(pattern)
    if start < 0:
        start = 0
    if start >= n or limit == 0 or _box_empty(p, p + NDIM):
        return _new_int64(0), -1
    cdef const uint16_t* base = _u16(sorted_arr)
    idx, _ = _lex_rows(base, n, p, _gallop(base, start, n, p), limit, budget, &resume)
    return idx, resume


@cython.boundscheck(False)
@cython.wraparound(False)
def z_scan(zkeys, zcoords, pattern, Py_ssize_t limit=-1):
    """Row indices of a Z-ordered index that match the pattern, with BIGMIN skipping.

    Seeks to the first key >= Z(lo corner), steps a few keys, and when a key lies
    outside the box jumps to BIGMIN (the next Z key inside the box) by galloping search;
    stops past Z(hi corner). Results come out in Z order.

    :param zkeys: C-contiguous (N, 9) uint16 Morton keys, sorted.
    :param zcoords: (N, 9) uint16 coordinates in the same row order.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :param limit: stop after this many matches (-1: no limit).
    :returns: ``(idx, seeks)``: int64 matching row indices and the number of jumps made.
    """
    _coords_arg(zkeys, "zkeys")
    _coords_arg(zcoords, "zcoords")
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>zkeys)[0]
    if cnp.PyArray_DIMS(<cnp.ndarray>zcoords)[0] != n:
        raise InterfaceError("zkeys and zcoords must have the same length")
    cdef const uint16_t* p = _u16(pattern)
    if n == 0 or limit == 0 or _box_empty(p, p + NDIM):
        return _new_int64(0), 0
    cdef const uint16_t* zk = _u16(zkeys)
    cdef uint16_t zmin[NDIM]
    _morton_row(p, zmin)
    return _skip_scan(zk, _u16(zcoords), n, p, p + NDIM, True,
                      _lower_bound(zk, 0, n, zmin), limit)


@cython.boundscheck(False)
@cython.wraparound(False)
def lower_bounds(sorted_arr, keys):
    """:func:`lower_bound` of many keys: where each would go in a sorted array.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted.
    :param keys: C-contiguous (K, 9) uint16, sorted (each search gallops on from the
        previous one's answer).
    :returns: (K,) int64 indices in 0..N, ascending.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    _coords_arg(keys, "keys")
    cdef Py_ssize_t n = sorted_arr.shape[0], k = keys.shape[0], i, at = 0
    out = np.zeros(k, dtype=np.int64)
    if n == 0 or k == 0:
        return out
    cdef const uint16_t[:, ::1] a = sorted_arr
    cdef const uint16_t[:, ::1] b = keys
    cdef int64_t[::1] o = out
    cdef Py_ssize_t bad = -1
    with nogil:
        for i in range(k):
            if i and lex_cmp(&b[i, 0], &b[i - 1, 0]) < 0:
                bad = i
                break
            at = _gallop(&a[0, 0], at, n, &b[i, 0])
            o[i] = at
    if bad >= 0:
        raise InterfaceError(f"keys must be sorted: row {bad} is below row {bad - 1}")
    return out


def lex_sort_order(arr):
    """Permutation that sorts an (N, 9) uint16 array lexicographically (stable).

    :returns: (N,) int64 indices.
    """
    _coords_arg(arr)
    return np.lexsort(tuple(arr[:, j] for j in range(NDIM - 1, -1, -1)))


@cython.boundscheck(False)
@cython.wraparound(False)
def merge_sorted(a_keys, a_keep, b_keys, a_vals=None, b_vals=None):
    """Merge two lexicographically sorted (N, 9) arrays, dropping rows of ``a`` not kept.

    Keys present in both are taken once (from ``b``). Optional value arrays of the same
    (N, 9) shape travel with their keys (the Z index carries coordinates with its keys).

    :param a_keys: sorted (Na, 9) uint16.
    :param a_keep: (Na,) bool mask, or None to keep all of a.
    :param b_keys: sorted (Nb, 9) uint16.
    :returns: ``merged_keys`` or ``(merged_keys, merged_vals)`` when values are given.
    """
    _coords_arg(a_keys, "a_keys")
    _coords_arg(b_keys, "b_keys")
    cdef bint vals = a_vals is not None
    if vals:
        _coords_arg(a_vals, "a_vals")
        _coords_arg(b_vals, "b_vals")
    cdef Py_ssize_t na = a_keys.shape[0], nb = b_keys.shape[0]
    # The loops below read a_keep[i], a_vals[i], b_vals[j] without bounds checks.
    if vals and (a_vals.shape[0] != na or b_vals.shape[0] != nb):
        raise InterfaceError("a_vals/b_vals must have as many rows as a_keys/b_keys")
    if a_keep is None:
        a_keep = np.ones(na, dtype=np.bool_)
    elif not isinstance(a_keep, np.ndarray) or a_keep.dtype != np.bool_ or a_keep.shape != (na,):
        raise InterfaceError(f"a_keep must be None or a ({na},) bool array")
    cdef const uint8_t[::1] keep = np.ascontiguousarray(a_keep).view(np.uint8)
    out = np.empty((na + nb, NDIM), dtype=np.uint16)
    outv = np.empty((na + nb, NDIM), dtype=np.uint16) if vals else out
    cdef uint16_t[:, ::1] o = out
    cdef uint16_t[:, ::1] ov = outv
    cdef const uint16_t[:, ::1] ak
    cdef const uint16_t[:, ::1] bk
    cdef const uint16_t[:, ::1] av
    cdef const uint16_t[:, ::1] bv
    # Empty arrays cannot be viewed through a pointer: pad them with one dummy row.
    ak = a_keys if na else np.zeros((1, NDIM), np.uint16)
    bk = b_keys if nb else np.zeros((1, NDIM), np.uint16)
    av = (a_vals if na else np.zeros((1, NDIM), np.uint16)) if vals else ak
    bv = (b_vals if nb else np.zeros((1, NDIM), np.uint16)) if vals else bk
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef int c
    with nogil:
        while i < na or j < nb:
            if i < na and not keep[i]:
                i += 1
                continue
            if j >= nb:
                c = -1
            elif i >= na:
                c = 1
            else:
                c = lex_cmp(&ak[i, 0], &bk[j, 0])
            if c < 0:
                memcpy(&o[k, 0], &ak[i, 0], 2 * NDIM)
                if vals:
                    memcpy(&ov[k, 0], &av[i, 0], 2 * NDIM)
                i += 1
            else:
                memcpy(&o[k, 0], &bk[j, 0], 2 * NDIM)
                if vals:
                    memcpy(&ov[k, 0], &bv[j, 0], 2 * NDIM)
                j += 1
                if c == 0:
                    i += 1
            k += 1
    if vals:
        return out[:k].copy(), outv[:k].copy()
    return out[:k].copy()


# ---------------------------------------------------------------------------------------
# Posting-list / bitmap kernels for the engine's per-component index.
# ---------------------------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def match_rows(arr, rows, pattern):
    """The entries of ``rows`` whose row of ``arr`` matches the pattern (order kept).

    :param arr: C-contiguous (N, 9) uint16.
    :param rows: 1-d int32 or int64 array of row indices into arr (all < N).
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: int64 array, a subsequence of rows.
    :raises InterfaceError: wrong types, or a row index out of range.
    """
    _coords_arg(arr)
    pattern = _pattern_arg(pattern)
    if not isinstance(rows, np.ndarray) or rows.ndim != 1:
        raise InterfaceError("rows must be a 1-d integer array")
    rows = _vector_arg(rows, cnp.NPY_INT64, np.int64)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>arr)[0]
    cdef Py_ssize_t m = cnp.PyArray_DIMS(<cnp.ndarray>rows)[0], i, cnt = 0
    out = _new_int64(m)
    if m == 0 or n == 0:
        return out[:0]
    cdef const int64_t* r = _i64(rows)
    cdef const uint16_t* a = _u16(arr)
    cdef const uint16_t* p = _u16(pattern)
    cdef int64_t* o = <int64_t*>_i64(out)
    cdef bint bad = False
    with nogil:
        for i in range(m):
            if r[i] < 0 or r[i] >= n:
                bad = True
                break
            # The rows are scattered over the array: asking for a row a few ahead
            # overlaps its cache miss with the checks before it.
            if i + PREFETCH_AHEAD < m and 0 <= r[i + PREFETCH_AHEAD] < n:
                prefetch(a + NDIM * r[i + PREFETCH_AHEAD])
            if in_box(a + NDIM * r[i], p, p + NDIM):
                o[cnt] = r[i]
                cnt += 1
    if bad:
        raise InterfaceError("row index out of range")
    return out[:cnt]


cdef enum:
    AND_BLOCK = 8   # words a bitmap AND reads before it tests whether any bit is set


cdef inline uint64_t _and_word(const uint64_t** maps, Py_ssize_t nb,
                               Py_ssize_t w) noexcept nogil:
    """Word w of every bitmap ANDed."""
    cdef uint64_t word = maps[0][w]
    cdef Py_ssize_t k
    for k in range(1, nb):
        word &= maps[k][w]
    return word


cdef inline uint64_t _and_block(const uint64_t* m0, const uint64_t* m1, const uint64_t* m2,
                                const uint64_t* m3, Py_ssize_t w) noexcept nogil:
    """Whether any row of words w..w+AND_BLOCK-1 is set in all four bitmaps (nonzero),
    in a loop the compiler runs a vector at a time."""
    cdef uint64_t acc = 0
    cdef int t
    for t in range(AND_BLOCK):
        acc |= m0[w + t] & m1[w + t] & m2[w + t] & m3[w + t]
    return acc


cdef inline int _emit_bits(uint64_t word, int64_t base, int64_t nbits, int64_t** buf,
                           Py_ssize_t* cnt, Py_ssize_t* cap) noexcept nogil:
    """Append the rows of a word's set bits (row base + bit, below nbits) to a row
    buffer (see _grown_rows); -1 when it cannot grow (buf[0] is then still valid)."""
    cdef int64_t row
    cdef int64_t* grown
    while word:
        row = base + __builtin_ctzll(word)
        word &= word - 1
        if row >= nbits:
            return 0
        if cnt[0] == cap[0]:
            grown = _grown_rows(buf[0], cap)
            if grown == NULL:
                return -1
            buf[0] = grown
        buf[0][cnt[0]] = row
        cnt[0] += 1
    return 0


cdef object _u64_arg(object b):
    """A bitmap as a C-contiguous 1-d uint64 array (``b`` itself when it is one)."""
    b = _vector_arg(b, cnp.NPY_UINT64, np.uint64)
    if cnp.PyArray_NDIM(<cnp.ndarray>b) != 1:
        raise InterfaceError("bitmap_and_rows needs equally long 1-d bitmaps")
    return b


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def bitmap_and_rows(bitmaps, Py_ssize_t nbits, Py_ssize_t first=0):
    """AND several bitmaps (uint64 arrays, bit i of word w = row 64*w + i) and list the
    set rows from ``first`` up to ``nbits``: only the words holding those rows are read.

    :param bitmaps: non-empty list of equally long 1-d uint64 arrays.
    :param nbits: rows below this (bits past it are ignored).
    :param first: rows from this one (bits before it are ignored).
    :returns: int64 ascending row indices.
    """
    cdef Py_ssize_t nb = len(bitmaps), w, t, nw = -1, cnt = 0, cap = 256, i, w_end
    if nb == 0:
        raise InterfaceError("bitmap_and_rows needs at least one bitmap")
    # Read in place through one pointer each (stacking them copied every bitmap, a
    # few hundred KB, per query).
    held = [_u64_arg(b) for b in bitmaps]
    for a in held:
        if nw >= 0 and cnp.PyArray_DIMS(<cnp.ndarray>a)[0] != nw:
            raise InterfaceError("bitmap_and_rows needs equally long 1-d bitmaps")
        nw = cnp.PyArray_DIMS(<cnp.ndarray>a)[0]
    cdef const uint64_t** maps = <const uint64_t**>malloc(nb * sizeof(uint64_t*))
    if maps == NULL:
        raise MemoryError()
    cdef int64_t* buf = <int64_t*>malloc(cap * sizeof(int64_t))   # (see _grown_rows)
    cdef uint64_t word
    cdef const uint64_t* m0
    cdef const uint64_t* m1
    cdef const uint64_t* m2
    cdef const uint64_t* m3
    try:
        if buf == NULL:
            raise MemoryError()
        if nw <= 0:
            return _rows_array(buf, 0)
        for i in range(nb):
            maps[i] = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>held[i])
        # Up to four bitmaps (the usual case) are read through four pointers; with
        # fewer, a pointer repeats one (ANDing a word with itself changes nothing).
        m0 = maps[0]
        m1 = maps[1 if nb > 1 else 0]
        m2 = maps[2 if nb > 2 else nb - 1]
        m3 = maps[3 if nb > 3 else nb - 1]
        if first < 0:
            first = 0
        if nbits > 64 * nw:
            nbits = 64 * nw   # (every bit of every word; no overflow below)
        w = first // 64
        w_end = (nbits + 63) // 64 if nbits > 0 else 0
        if w < w_end and first % 64:
            # The first word's rows below `first` are left out.
            word = _and_word(maps, nb, w) & (<uint64_t>0xFFFFFFFFFFFFFFFF << (first % 64))
            if word and _emit_bits(word, 64 * w, nbits, &buf, &cnt, &cap) < 0:
                raise MemoryError()
            w += 1
        if nb <= 4:
            # A block of words ANDed, then one test of them all: on an answer of a few
            # rows in a thousand most blocks are zero, and the block's loop runs
            # straight, a vector at a time, where a test per word went each way about
            # as often.
            while w + AND_BLOCK <= w_end:
                if _and_block(m0, m1, m2, m3, w):
                    for t in range(AND_BLOCK):
                        word = m0[w + t] & m1[w + t] & m2[w + t] & m3[w + t]
                        if word and _emit_bits(word, 64 * (w + t), nbits, &buf, &cnt,
                                               &cap) < 0:
                            raise MemoryError()
                w += AND_BLOCK
        while w < w_end:
            word = _and_word(maps, nb, w)
            if word and _emit_bits(word, 64 * w, nbits, &buf, &cnt, &cap) < 0:
                raise MemoryError()
            w += 1
        return _rows_array(buf, cnt)
    finally:
        free(maps)
        free(buf)


@cython.boundscheck(False)
@cython.wraparound(False)
def window_spans(sorted_arr, patterns):
    """For each pattern, the span of a sorted array between its box corners.

    Row span i is [starts[i], ends[i]): the rows lexicographically between pattern i's
    low and high corners, a superset of its matches. ``exact[i]`` says every row of the
    span matches (the usual case for windows over one component), so callers need no
    per-row check for it.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted lexicographically.
    :param patterns: C-contiguous (Q, 2, 9) uint16 patterns.
    :returns: ``(starts, ends, exact)``: int64, int64 and bool arrays of length Q.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    if not isinstance(patterns, np.ndarray) or patterns.dtype != np.uint16 or \
            patterns.ndim != 3 or patterns.shape[1:] != (2, NDIM):
        raise InterfaceError("patterns must be a (Q, 2, 9) uint16 array")
    patterns = np.ascontiguousarray(patterns)
    cdef Py_ssize_t n = sorted_arr.shape[0], q = patterns.shape[0], i, r, s, e
    starts = np.zeros(q, dtype=np.int64)
    ends = np.zeros(q, dtype=np.int64)
    exact = np.ones(q, dtype=np.bool_)
    if q == 0 or n == 0:
        return starts, ends, exact
    cdef const uint16_t[:, ::1] a = sorted_arr
    cdef const uint16_t[:, :, ::1] p = patterns
    cdef int64_t[::1] st = starts
    cdef int64_t[::1] en = ends
    cdef uint8_t[::1] ex = exact.view(np.uint8)
    cdef const uint16_t* base = &a[0, 0]
    with nogil:
        for i in range(q):
            s = _lower_bound(base, 0, n, &p[i, 0, 0])
            e = _lower_bound(base, s, n, &p[i, 1, 0])
            if e < n and lex_cmp(base + NDIM * e, &p[i, 1, 0]) == 0:
                e += 1
            st[i] = s
            en[i] = e
            if _lex_exact(&p[i, 0, 0], &p[i, 1, 0]):   # a window over one component
                continue
            for r in range(s, e):
                if not in_box(base + NDIM * r, &p[i, 0, 0], &p[i, 1, 0]):
                    ex[i] = 0
                    break
    return starts, ends, exact
