# Packing: one coordinate <-> its 18-byte big-endian key, for every unit that builds keys.
from libc.stdint cimport uint16_t

cdef inline void _pack_row(const uint16_t* c, unsigned char* o) noexcept nogil:
    cdef int j
    for j in range(NDIM):
        o[2 * j] = <unsigned char>(c[j] >> 8)
        o[2 * j + 1] = <unsigned char>(c[j] & 0xFF)


cdef inline void _unpack_row(const unsigned char* b, uint16_t* c) noexcept nogil:
    cdef int j
    for j in range(NDIM):
        c[j] = <uint16_t>((b[2 * j] << 8) | b[2 * j + 1])
