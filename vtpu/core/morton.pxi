# ---------------------------------------------------------------------------------------
# Morton (Z-order). The 144-bit key interleaves the components' bits, most significant
# bit of component 0 first; it is held as 9 uint16 words, word 0 most significant, so
# lexicographic order of the words is numeric order of the key. Each byte of a
# component is spread with a 256-entry table (bit b -> bit 9b) and shifted into one of
# two 72-bit halves held in a 128-bit integer.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

import numpy as np


cdef uint64_t SPREAD8[256]

cdef void _init_spread() noexcept:
    cdef int x, b
    cdef uint64_t v
    for x in range(256):
        v = 0
        for b in range(8):
            if x & (1 << b):
                v |= (<uint64_t>1) << (9 * b)
        SPREAD8[x] = v

_init_spread()


cdef inline void _morton_row(const uint16_t* c, uint16_t* z) noexcept nogil:
    cdef u128 hi = 0, lo = 0
    cdef int j
    for j in range(NDIM):
        hi |= (<u128>SPREAD8[c[j] >> 8]) << (8 - j)
        lo |= (<u128>SPREAD8[c[j] & 0xFF]) << (8 - j)
    z[0] = <uint16_t>(hi >> 56)
    z[1] = <uint16_t>(hi >> 40)
    z[2] = <uint16_t>(hi >> 24)
    z[3] = <uint16_t>(hi >> 8)
    z[4] = <uint16_t>(((hi & 0xFF) << 8) | (lo >> 64))
    z[5] = <uint16_t>(lo >> 48)
    z[6] = <uint16_t>(lo >> 32)
    z[7] = <uint16_t>(lo >> 16)
    z[8] = <uint16_t>lo


cdef inline void _demorton_row(const uint16_t* z, uint16_t* c) noexcept nogil:
    cdef u128 hi = ((<u128>z[0]) << 56) | ((<u128>z[1]) << 40) | ((<u128>z[2]) << 24) \
        | ((<u128>z[3]) << 8) | (z[4] >> 8)
    cdef u128 lo = ((<u128>(z[4] & 0xFF)) << 64) | ((<u128>z[5]) << 48) \
        | ((<u128>z[6]) << 32) | ((<u128>z[7]) << 16) | z[8]
    cdef int j, b
    cdef uint32_t h, l
    for j in range(NDIM):
        h = 0
        l = 0
        for b in range(8):
            h |= <uint32_t>((hi >> (9 * b + 8 - j)) & 1) << b
            l |= <uint32_t>((lo >> (9 * b + 8 - j)) & 1) << b
        c[j] = <uint16_t>((h << 8) | l)


@cython.boundscheck(False)
@cython.wraparound(False)
def morton_encode(arr):
    """Z-order keys of an (N, 9) array, as an (N, 9) uint16 array of key words.

    :param arr: C-contiguous (N, 9) uint16 coordinates.
    :returns: (N, 9) uint16; row i word 0 holds the 16 most significant key bits.
    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef uint16_t[:, ::1] o = out
    with nogil:
        for i in range(n):
            _morton_row(&a[i, 0], &o[i, 0])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def morton_decode(z):
    """Inverse of :func:`morton_encode`: (N, 9) key words back to coordinates.

    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(z, "z")
    cdef Py_ssize_t i, n = z.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = z
    cdef uint16_t[:, ::1] o = out
    with nogil:
        for i in range(n):
            _demorton_row(&a[i, 0], &o[i, 0])
    return out


# ---------------------------------------------------------------------------------------
# BIGMIN / LITMAX (Tropf & Herzog), walked over the coordinate form: bit positions are
# visited in Z order (level 15..0, component 0..8) and the "load" steps rewrite one
# component's low bits, which is exactly the Z-key operation without materialising keys.
# ---------------------------------------------------------------------------------------

cdef inline uint16_t _load_1000(uint16_t v, int level) noexcept nogil:
    cdef uint32_t mask = (<uint32_t>2 << level) - 1   # bits level..0
    return <uint16_t>((v & ~mask) | (<uint32_t>1 << level))


cdef inline uint16_t _load_0111(uint16_t v, int level) noexcept nogil:
    cdef uint32_t mask = (<uint32_t>2 << level) - 1
    return <uint16_t>((v & ~mask) | ((<uint32_t>1 << level) - 1))


cdef bint _bigmin(const uint16_t* z, const uint16_t* lo_in, const uint16_t* hi_in,
                  uint16_t* out) noexcept nogil:
    """Smallest point of the box [lo, hi] whose Z key is > the Z key of z.

    Returns False when there is none. Coordinates in, coordinate out."""
    cdef uint16_t mn[NDIM]
    cdef uint16_t mx[NDIM]
    cdef bint found = False
    cdef int level, j
    cdef int zb, nb, xb
    memcpy(mn, lo_in, sizeof(uint16_t) * NDIM)
    memcpy(mx, hi_in, sizeof(uint16_t) * NDIM)
    for level in range(15, -1, -1):
        for j in range(NDIM):
            zb = (z[j] >> level) & 1
            nb = (mn[j] >> level) & 1
            xb = (mx[j] >> level) & 1
            if zb == 0:
                if nb == 0 and xb == 1:
                    memcpy(out, mn, sizeof(uint16_t) * NDIM)
                    out[j] = _load_1000(mn[j], level)
                    found = True
                    mx[j] = _load_0111(mx[j], level)
                elif nb == 1:
                    memcpy(out, mn, sizeof(uint16_t) * NDIM)
                    return True
            else:
                if xb == 0:
                    return found
                if nb == 0:
                    mn[j] = _load_1000(mn[j], level)
    return found


cdef bint _litmax(const uint16_t* z, const uint16_t* lo_in, const uint16_t* hi_in,
                  uint16_t* out) noexcept nogil:
    """Largest point of the box [lo, hi] whose Z key is < the Z key of z."""
    cdef uint16_t mn[NDIM]
    cdef uint16_t mx[NDIM]
    cdef bint found = False
    cdef int level, j
    cdef int zb, nb, xb
    memcpy(mn, lo_in, sizeof(uint16_t) * NDIM)
    memcpy(mx, hi_in, sizeof(uint16_t) * NDIM)
    for level in range(15, -1, -1):
        for j in range(NDIM):
            zb = (z[j] >> level) & 1
            nb = (mn[j] >> level) & 1
            xb = (mx[j] >> level) & 1
            if zb == 0:
                if nb == 1:
                    return found
                if xb == 1:
                    mx[j] = _load_0111(mx[j], level)
            else:
                if xb == 0:
                    memcpy(out, mx, sizeof(uint16_t) * NDIM)
                    return True
                if nb == 0:
                    memcpy(out, mx, sizeof(uint16_t) * NDIM)
                    out[j] = _load_0111(mx[j], level)
                    found = True
                    mn[j] = _load_1000(mn[j], level)
    return found


def bigmin(z, pattern):
    """BIGMIN: the smallest coordinate inside the pattern's box whose Z key exceeds z's.

    :param z: (9,) uint16 coordinate (typically one just found outside the box).
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: (9,) uint16 coordinate, or None when no such point exists.
    """
    z = _coord_arg(z, "z")
    pattern = _pattern_arg(pattern)
    cdef const uint16_t[::1] zv = z
    cdef const uint16_t[:, ::1] p = pattern
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    # An empty box (lo > hi somewhere) has no points; the bit walk assumes lo <= hi.
    if _box_empty(&p[0, 0], &p[1, 0]):
        return None
    if not _bigmin(&zv[0], &p[0, 0], &p[1, 0], &o[0]):
        return None
    return out


def litmax(z, pattern):
    """LITMAX: the largest coordinate inside the pattern's box whose Z key is below z's.

    :returns: (9,) uint16 coordinate, or None when no such point exists.
    """
    z = _coord_arg(z, "z")
    pattern = _pattern_arg(pattern)
    cdef const uint16_t[::1] zv = z
    cdef const uint16_t[:, ::1] p = pattern
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    if _box_empty(&p[0, 0], &p[1, 0]):
        return None
    if not _litmax(&zv[0], &p[0, 0], &p[1, 0], &o[0]):
        return None
    return out
