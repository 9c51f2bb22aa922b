# The column result type (results.pxi): declared here so that the wire codec builds a
# Scrolls straight from a reply's bytes, with no Python call per item.
from libc.stdint cimport uint8_t, int64_t, uint64_t
from libc.string cimport memcpy
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_1BYTE_DATA(object o)


cdef class Scrolls:
    cdef Py_ssize_t n
    cdef void* block                    # one malloc'd block holding the six columns below
    cdef size_t block_size
    cdef int64_t* ver
    cdef double* ctime
    cdef double* utime
    cdef int64_t* offs                  # a content's start in _data, or its index in _objs
    cdef int64_t* lens                  # its bytes in _data
    cdef uint8_t* kinds                 # CK_* per item
    cdef bytes _keys                    # n*18 packed keys
    cdef bytes _data                    # the bytes the spans point into
    cdef list _objs                     # contents kept as Python objects
    cdef list _types                    # (dtype, shape) per array type id
    cdef object _unpackb                # decoder of CK_PACKED contents
    cdef object _names                  # the name table of the keys

    cdef object _item(self, Py_ssize_t i)
    cdef Scrolls _subset(self, const int64_t* idx, Py_ssize_t m)
    cdef _copy_rows(self, unsigned char[::1] flat, Py_ssize_t ln)


cdef Scrolls _new_scrolls(Py_ssize_t n, object names, list types, object unpackb)


cdef inline bint _ascii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Whether the n bytes at p are all ASCII (then they are UTF-8 text), eight at a
    time: for the result's own checks and for the wire codec reading a reply's text."""
    cdef uint64_t acc = 0, w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        acc |= w
        i += 8
    while i < n:
        acc |= p[i]
        i += 1
    return (acc & 0x8080808080808080ULL) == 0


cdef inline object _ascii_text(const char* p, Py_ssize_t n):
    """The str of the n bytes at p, known to be ASCII: copied into a new compact str."""
    out = PyUnicode_New(n, 127)
    memcpy(PyUnicode_1BYTE_DATA(out), p, n)
    return out


cdef inline object _utf8_text(const char* p, Py_ssize_t n):
    """The str of the n UTF-8 bytes at p. ASCII (most stored text) is copied into a new
    compact str, which skips the decoder's own scan and its second pass; anything else is
    decoded (and refused with UnicodeDecodeError when it is not UTF-8)."""
    if _ascii(<const unsigned char*>p, n):
        return _ascii_text(p, n)
    return PyUnicode_DecodeUTF8(p, n, NULL)
