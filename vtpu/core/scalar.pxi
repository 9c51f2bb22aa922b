# ---------------------------------------------------------------------------------------
# One msgpack number or bool written and read in C, as msgpack's packb and unpackb do it:
# the store keeps a number content as its few msgpack bytes in the arena (no Python
# object per number), the core's results (CK_PACKED contents) and the compiled codec's
# scroll lists read a column of numbers without a Python call per number, and the
# codec's own number writers (put_uint, put_int, put_double) are these. Included by
# vtpu/_core.pyx and vtpu/_cprotocol.pyx (one source for both), with the big-endian
# helpers both use.
# ---------------------------------------------------------------------------------------

from libc.stdint cimport uint16_t, uint32_t, int64_t, uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    double PyFloat_AS_DOUBLE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? <unsigned long long>-1


cdef inline void be16(char* o, uint32_t v) noexcept nogil:
    o[0] = <char>(v >> 8); o[1] = <char>v

cdef inline void be32(char* o, uint32_t v) noexcept nogil:
    o[0] = <char>(v >> 24); o[1] = <char>(v >> 16); o[2] = <char>(v >> 8); o[3] = <char>v

cdef inline void be64(char* o, uint64_t v) noexcept nogil:
    be32(o, <uint32_t>(v >> 32)); be32(o + 4, <uint32_t>v)

cdef inline uint32_t rd16(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]

cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline uint64_t rd64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>rd32(p) << 32) | rd32(p + 4)


# -- writing (msgpack-python's forms: the shortest for an int, float64 for a float) --------

cdef inline int write_uint(char* o, uint64_t v) noexcept nogil:
    """Write ``v`` at ``o`` (9 bytes of room); returns how many bytes."""
    if v < 0x80:
        o[0] = <char>v
        return 1
    if v < 0x100:
        o[0] = <char>0xCC; o[1] = <char>v
        return 2
    if v < 0x10000:
        o[0] = <char>0xCD; be16(o + 1, <uint32_t>v)
        return 3
    if v < 0x100000000ULL:
        o[0] = <char>0xCE; be32(o + 1, <uint32_t>v)
        return 5
    o[0] = <char>0xCF; be64(o + 1, v)
    return 9

cdef inline int write_int(char* o, int64_t v) noexcept nogil:
    """Write ``v`` at ``o`` (9 bytes of room); returns how many bytes."""
    if v >= 0:
        return write_uint(o, <uint64_t>v)
    if v >= -32:
        o[0] = <char>v
        return 1
    if v >= -128:
        o[0] = <char>0xD0; o[1] = <char>v
        return 2
    if v >= -32768:
        o[0] = <char>0xD1; be16(o + 1, <uint32_t>(<uint16_t>v))
        return 3
    if v >= -2147483648LL:
        o[0] = <char>0xD2; be32(o + 1, <uint32_t>v)
        return 5
    o[0] = <char>0xD3; be64(o + 1, <uint64_t>v)
    return 9

cdef inline int write_double(char* o, double d) noexcept nogil:
    """Write ``d`` at ``o`` (9 bytes of room) as a float64; returns 9."""
    cdef uint64_t u
    memcpy(&u, &d, 8)
    o[0] = <char>0xCB
    be64(o + 1, u)
    return 9


cdef Py_ssize_t _pack_scalar(object v, unsigned char* out) except -2:
    """Write the msgpack encoding of an int, float or bool into ``out`` (9 bytes of
    room), as packb writes it; returns its length, or -1 for any other value (an int
    past 64 bits too)."""
    cdef type t = type(v)
    cdef int overflow = 0
    cdef long long x
    cdef unsigned long long u
    cdef char* o = <char*>out
    if t is bool:
        out[0] = 0xC3 if v is True else 0xC2
        return 1
    if t is float:
        return write_double(o, PyFloat_AS_DOUBLE(v))
    if t is not int:
        return -1
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow < 0:
        return -1
    if overflow > 0:
        try:
            u = PyLong_AsUnsignedLongLong(v)
        except OverflowError:
            return -1
        return write_uint(o, u)
    return write_int(o, x)


# -- reading ---------------------------------------------------------------------------

cdef object _NOT_SCALAR = object()


cdef inline Py_ssize_t _scalar_end(const unsigned char* p, Py_ssize_t pos,
                                   Py_ssize_t end) noexcept nogil:
    """The end of the msgpack int, float or bool at ``p[pos]`` (one that
    :func:`_packed_scalar` reads), or -1 for anything else or one cut short by ``end``:
    a decoder can keep such a span as it is and make its number when it is read."""
    cdef unsigned char c = p[pos]
    cdef Py_ssize_t n
    if c <= 0x7F or c >= 0xE0 or c == 0xC2 or c == 0xC3:
        n = 1
    elif c == 0xCC or c == 0xD0:
        n = 2
    elif c == 0xCD or c == 0xD1:
        n = 3
    elif c == 0xCE or c == 0xD2 or c == 0xCA:
        n = 5
    elif c == 0xCF or c == 0xD3 or c == 0xCB:
        n = 9
    else:
        return -1
    return pos + n if pos + n <= end else -1


cdef object _packed_scalar(const unsigned char* b, Py_ssize_t n):
    """The value of a msgpack encoding that is exactly one int, float or bool, as
    msgpack's unpackb gives it (no Python call per number: a column of numbers reads
    at C speed); ``_NOT_SCALAR`` for anything else."""
    if n < 1:
        return _NOT_SCALAR
    cdef unsigned char c = b[0]
    cdef uint32_t u32
    cdef uint64_t u
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
    if c == 0xCC and n == 2:
        return <long>b[1]
    if c == 0xCD and n == 3:
        return <long>rd16(b + 1)
    if c == 0xCE and n == 5:
        return <long long>rd32(b + 1)
    if c == 0xCF and n == 9:
        return rd64(b + 1)
    if c == 0xD0 and n == 2:
        return <long>(<signed char>b[1])
    if c == 0xD1 and n == 3:
        return <long>(<short>rd16(b + 1))
    if c == 0xD2 and n == 5:
        return <long>(<int>rd32(b + 1))
    if c == 0xD3 and n == 9:
        return <long long>rd64(b + 1)
    if c == 0xCA and n == 5:
        u32 = rd32(b + 1)
        memcpy(&f32, &u32, 4)
        return <double>f32
    if c == 0xCB and n == 9:
        u = rd64(b + 1)
        memcpy(&f64, &u, 8)
        return f64
    return _NOT_SCALAR
