# ---------------------------------------------------------------------------------------
# One msgpack number or bool decoded in C, as msgpack's unpackb decodes it: the core's
# results (CK_PACKED contents) and the compiled codec's scroll lists read a column of
# numbers without a Python call per number. Included by vtpu/_core.pyx and
# vtpu/_cprotocol.pyx (one source for both).
# ---------------------------------------------------------------------------------------

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy


cdef object _NOT_SCALAR = object()


cdef inline uint64_t _be_uint(const unsigned char* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef object _packed_scalar(const unsigned char* b, Py_ssize_t n):
    """The value of a msgpack encoding that is exactly one int, float or bool, as
    msgpack's unpackb gives it (no Python call per number: a column of numbers reads
    at C speed); ``_NOT_SCALAR`` for anything else."""
    if n < 1:
        return _NOT_SCALAR
    cdef unsigned char c = b[0]
    cdef uint64_t u
    cdef uint32_t u32
    cdef float f32
    cdef double f64
    if n == 1:
        if c <= 0x7F:
            return <long>c
        if c >= 0xE0:
            return <long>(<signed char>c)
        if c == 0xC2:
            return False
        if c == 0xC3:
            return True
        return _NOT_SCALAR
    if 0xCC <= c <= 0xCF and n == 1 + (1 << (c - 0xCC)):
        return _be_uint(b + 1, n - 1)   # uint 8/16/32/64
    if 0xD0 <= c <= 0xD3 and n == 1 + (1 << (c - 0xD0)):
        u = _be_uint(b + 1, n - 1)
        if n == 2:
            return <long>(<signed char>u)
        if n == 3:
            return <long>(<short>u)
        if n == 5:
            return <long>(<int>u)
        return <long long>u
    if c == 0xCA and n == 5:
        u32 = <uint32_t>_be_uint(b + 1, 4)
        memcpy(&f32, &u32, 4)
        return <double>f32
    if c == 0xCB and n == 9:
        u = _be_uint(b + 1, 8)
        memcpy(&f64, &u, 8)
        return f64
    return _NOT_SCALAR
