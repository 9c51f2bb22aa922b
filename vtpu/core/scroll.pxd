# The Scroll type (scroll.pxi): one stored scroll as a C struct, built by the store, the
# results and the wire codec through _new_scroll / _new_scroll_at (no interpreter round).
# An 18-byte key is held in the struct itself (no bytes object per scroll); ``key`` makes
# the bytes object when it is first read.
from libc.stdint cimport int64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef class Scroll:
    cdef unsigned char _k[18]           # the 18-byte packed coordinate, when _inline
    cdef object _kobj                   # the key as bytes once made (or one not 18 bytes)
    cdef bint _inline                   # _k holds the key
    cdef readonly object content
    cdef readonly int64_t version
    cdef readonly double created_at     # unix seconds
    cdef readonly double updated_at
    cdef readonly object names          # the NameTable its name ids refer to, or None

    cdef str _coordinate(self)


cdef inline void _set_key(Scroll s, bytes key) noexcept:
    """Give ``s`` the key object ``key``, held in the struct too when it is 18 bytes
    (``None`` is kept as it is, as ``Scroll(None, ...)`` always has)."""
    if key is not None and PyBytes_GET_SIZE(key) == 18:
        memcpy(s._k, PyBytes_AS_STRING(key), 18)
        s._inline = True
    s._kobj = key


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)


cdef inline Scroll _keyless_scroll(object content, int64_t version, double created,
                                   double updated, object names):
    """A Scroll with every field but its key set (the builders below add it).

    A Scroll is immutable, and one whose content holds no references (str, bytes, int,
    float, bool, None) can be in no reference cycle: its key is bytes and its name table
    refers to no scroll. Like a tuple of such values, it is taken off the collector's
    lists, which thousands of scrolls of a result would otherwise lengthen at every
    collection."""
    cdef Scroll s = Scroll.__new__(Scroll)
    s.content = content
    s.version = version
    s.created_at = created
    s.updated_at = updated
    s.names = names
    t = type(content)
    if t is str or t is bytes or t is int or t is float or t is bool or content is None:
        PyObject_GC_UnTrack(<void*>s)
    return s


cdef inline Scroll _new_scroll_at(const unsigned char* key, object content, int64_t version,
                                  double created, double updated, object names):
    """A Scroll whose key is the 18 bytes at ``key``: what ``Scroll(...)`` makes, without
    calling __init__ or making a bytes object."""
    cdef Scroll s = _keyless_scroll(content, version, created, updated, names)
    memcpy(s._k, key, 18)
    s._inline = True
    return s


cdef inline Scroll _new_scroll(bytes key, object content, int64_t version, double created,
                               double updated, object names):
    """A Scroll with these fields: what ``Scroll(...)`` makes, without calling __init__
    (the key object is kept: reading ``key`` gives it back)."""
    cdef Scroll s = _keyless_scroll(content, version, created, updated, names)
    _set_key(s, key)
    return s
