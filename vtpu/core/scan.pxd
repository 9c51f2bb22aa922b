# Sorted-array scans: coordinate order and the box test (also used by the distance unit),
# the scan's stepping constant and the bit intrinsic of the bitmap kernel.
from libc.stdint cimport uint16_t

cdef enum:
    STEP_BEFORE_SKIP = 4   # rows stepped linearly before a skip is computed
    JUMP_ROWS = 8          # what a jump (a galloping search) counts in a scan's budget

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil


cdef inline int lex_cmp(const uint16_t* a, const uint16_t* b) noexcept nogil:
    """Three-way lexicographic comparison of two coordinates (or 9-word Z keys)."""
    cdef int j
    for j in range(NDIM):
        if a[j] != b[j]:
            return -1 if a[j] < b[j] else 1
    return 0


cdef inline bint in_box(const uint16_t* c, const uint16_t* lo, const uint16_t* hi) noexcept nogil:
    """True when every component of c lies within [lo, hi] (inclusive)."""
    cdef int j
    for j in range(NDIM):
        if c[j] < lo[j] or c[j] > hi[j]:
            return False
    return True
