# Short copies: the spans of a result (keys, small contents) are a few dozen bytes each,
# where a library memcpy call costs more than the copy. Inline, for the core and for the
# wire codec that cimports it (inline only: no .pxi).
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline void short_copy(char* d, const char* s, size_t n) noexcept nogil:
    """Copy n bytes from s to d (not overlapping): up to 32 bytes as two overlapping
    word moves (memcpy of a constant size compiles to a move), longer ones by memcpy."""
    cdef uint64_t a, b, c, e
    cdef uint32_t x, y
    if n > 32:
        memcpy(d, s, n)
    elif n >= 16:
        memcpy(&a, s, 8)
        memcpy(&b, s + 8, 8)
        memcpy(&c, s + n - 16, 8)
        memcpy(&e, s + n - 8, 8)
        memcpy(d, &a, 8)
        memcpy(d + 8, &b, 8)
        memcpy(d + n - 16, &c, 8)
        memcpy(d + n - 8, &e, 8)
    elif n >= 8:
        memcpy(&a, s, 8)
        memcpy(&b, s + n - 8, 8)
        memcpy(d, &a, 8)
        memcpy(d + n - 8, &b, 8)
    elif n >= 4:
        memcpy(&x, s, 4)
        memcpy(&y, s + n - 4, 4)
        memcpy(d, &x, 4)
        memcpy(d + n - 4, &y, 4)
    elif n > 0:
        d[0] = s[0]
        d[n >> 1] = s[n >> 1]
        d[n - 1] = s[n - 1]
