# Contents a write stores as they are (records.pxi): declared here, inline, for the
# engine's compiled write too (it cimports the check instead of calling the core).

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1


cdef inline bint _storable_as_is(object c) except -1:
    """Whether c is stored as it is, with no Python call to check it: bytes, float,
    bool, None, ASCII str, an int that fits int64."""
    cdef int overflow = 0
    t = type(c)
    if t is bytes or t is float or t is bool or c is None:
        return True
    if t is str:
        return PyUnicode_IS_ASCII(c)
    if t is int:
        PyLong_AsLongLongAndOverflow(c, &overflow)
        return overflow == 0
    return False
