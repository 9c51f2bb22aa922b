# Packing: one coordinate <-> its 18-byte big-endian key, for every unit that builds keys.
from libc.stdint cimport uint16_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \\
        __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define VTPU_BIG_ENDIAN 1
    #else
    #define VTPU_BIG_ENDIAN 0
    #endif
    """
    const int VTPU_BIG_ENDIAN     # the machine's uint16 is already a key's byte order


cdef inline uint64_t _swap_lanes(uint64_t w) noexcept nogil:
    """Swap the two bytes of each of the four 16-bit lanes of w."""
    return ((w & 0x00FF00FF00FF00FFULL) << 8) | ((w >> 8) & 0x00FF00FF00FF00FFULL)


cdef inline void _pack_row(const uint16_t* c, unsigned char* o) noexcept nogil:
    # Nine big-endian uint16: on a little-endian machine two words of four lanes and
    # the last lane, byte-swapped in registers (compilers make a poor job of 18 byte
    # stores).
    cdef uint64_t a, b
    cdef uint16_t x
    if VTPU_BIG_ENDIAN:
        memcpy(o, c, 18)
        return
    memcpy(&a, c, 8)
    memcpy(&b, c + 4, 8)
    a = _swap_lanes(a)
    b = _swap_lanes(b)
    x = <uint16_t>((c[8] >> 8) | (c[8] << 8))
    memcpy(o, &a, 8)
    memcpy(o + 8, &b, 8)
    memcpy(o + 16, &x, 2)


cdef inline void _unpack_row(const unsigned char* b, uint16_t* c) noexcept nogil:
    cdef int j
    for j in range(NDIM):
        c[j] = <uint16_t>((b[2 * j] << 8) | b[2 * j + 1])


cdef inline bint _has_names(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Whether any component of the n bytes of packed keys at p is a name id (0xF000
    and up: a high byte of 0xF0 or more)."""
    cdef Py_ssize_t i
    for i in range(0, n, 2):
        if p[i] >= 0xF0:
            return True
    return False
