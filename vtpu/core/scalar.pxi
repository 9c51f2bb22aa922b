# ---------------------------------------------------------------------------------------
# One msgpack number or bool decoded and encoded in C, as msgpack's unpackb and packb do
# it: the store keeps a number content as its few msgpack bytes in the arena (no Python
# object per number), and the core's results (CK_PACKED contents) and the compiled
# codec's scroll lists read a column of numbers without a Python call per number.
# Included by vtpu/_core.pyx and vtpu/_cprotocol.pyx (one source for both).
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


cdef extern from "Python.h":
    double PyFloat_AS_DOUBLE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? <unsigned long long>-1


cdef inline void _put_be(unsigned char* p, uint64_t v, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        p[n - 1 - i] = <unsigned char>(v & 0xFF)
        v >>= 8


cdef Py_ssize_t _pack_scalar(object v, unsigned char* out) except -2:
    """Write the msgpack encoding of an int, float or bool into ``out`` (9 bytes of
    room), in the form msgpack's packb chooses (the shortest for an int, a float64 for a
    float); returns its length, or -1 for any other value (an int past 64 bits too)."""
    cdef type t = type(v)
    cdef int overflow = 0
    cdef long long x
    cdef unsigned long long u
    cdef double d
    if t is bool:
        out[0] = 0xC3 if v is True else 0xC2
        return 1
    if t is float:
        d = PyFloat_AS_DOUBLE(v)
        memcpy(&u, &d, 8)
        out[0] = 0xCB
        _put_be(out + 1, u, 8)
        return 9
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
        out[0] = 0xCF
        _put_be(out + 1, u, 8)
        return 9
    if x < -(1 << 5):
        if x < -(1 << 15):
            if x < -(1 << 31):
                out[0] = 0xD3
                _put_be(out + 1, <uint64_t>x, 8)
                return 9
            out[0] = 0xD2
            _put_be(out + 1, <uint64_t>x, 4)
            return 5
        if x < -(1 << 7):
            out[0] = 0xD1
            _put_be(out + 1, <uint64_t>x, 2)
            return 3
        out[0] = 0xD0
        out[1] = <unsigned char>(x & 0xFF)
        return 2
    if x < (1 << 7):
        out[0] = <unsigned char>(x & 0xFF)   # a positive or negative fixint
        return 1
    if x < (1 << 16):
        if x < (1 << 8):
            out[0] = 0xCC
            out[1] = <unsigned char>x
            return 2
        out[0] = 0xCD
        _put_be(out + 1, <uint64_t>x, 2)
        return 3
    if x < (1LL << 32):
        out[0] = 0xCE
        _put_be(out + 1, <uint64_t>x, 4)
        return 5
    out[0] = 0xCF
    _put_be(out + 1, <uint64_t>x, 8)
    return 9
