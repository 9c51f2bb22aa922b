# The Scroll type (scroll.pxi): one stored scroll as a C struct of six fields, built by
# the store and the results through _new_scroll (no interpreter round) and read by the
# wire codec through its attributes.
from libc.stdint cimport int64_t


cdef class Scroll:
    cdef readonly bytes key             # 18-byte packed coordinate
    cdef readonly object content
    cdef readonly int64_t version
    cdef readonly double created_at     # unix seconds
    cdef readonly double updated_at
    cdef readonly object names          # the NameTable its name ids refer to, or None


cdef inline Scroll _new_scroll(bytes key, object content, int64_t version, double created,
                               double updated, object names):
    """A Scroll with these fields: what ``Scroll(...)`` makes, without calling __init__."""
    cdef Scroll s = Scroll.__new__(Scroll)
    s.key = key
    s.content = content
    s.version = version
    s.created_at = created
    s.updated_at = updated
    s.names = names
    return s
