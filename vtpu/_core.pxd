# Declarations and inline helpers shared by the functions of vtpu/_core.pyx.
# A coordinate is 9 x uint16; the helpers below work on raw pointers into C-contiguous
# (N, 9) arrays so the inner loops touch no Python objects.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t

cdef enum:
    NDIM = 9
    MAX_NUMERIC = 0xEFFF    # largest numeric component
    NAME_BASE = 0xF000      # first name id
    KEY_BYTES = 18          # packed coordinate size

cdef enum DeltaOp:
    DELTA_ADD = 0
    DELTA_SET = 1
    DELTA_WILD = 2


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
