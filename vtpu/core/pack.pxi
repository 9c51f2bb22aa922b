# ---------------------------------------------------------------------------------------
# Packing: 18 bytes big-endian per coordinate, so byte order == coordinate order.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                           PyBytes_GET_SIZE)

import numpy as np
from vtpu.errors import InterfaceError


def pack(c):
    """Pack one (9,) uint16 coordinate into its 18-byte big-endian key.

    :raises InterfaceError: wrong dtype or shape.
    """
    c = _coord_arg(c)
    cdef const uint16_t[::1] v = c
    out = PyBytes_FromStringAndSize(NULL, KEY_BYTES)
    _pack_row(&v[0], <unsigned char*>PyBytes_AS_STRING(out))
    return out


def unpack(b):
    """Unpack an 18-byte key into a (9,) uint16 coordinate.

    :raises InterfaceError: not bytes-like or not 18 bytes long.
    """
    cdef const unsigned char[::1] v
    cdef cnp.npy_intp dim = NDIM
    out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_UINT16, 0)
    if type(b) is bytes and PyBytes_GET_SIZE(b) == KEY_BYTES:
        # (the usual argument: read in place, no buffer view set up)
        _unpack_row(<const unsigned char*>PyBytes_AS_STRING(b),
                    <uint16_t*>cnp.PyArray_DATA(<cnp.ndarray>out))
        return out
    try:
        if b is None:  # a typed memoryview would accept None as empty
            raise TypeError
        v = b
    except (TypeError, ValueError):
        raise InterfaceError(f"a packed coordinate must be bytes, got {type(b).__name__}") from None
    if v.shape[0] != KEY_BYTES:
        raise InterfaceError(f"a packed coordinate is 18 bytes, got {v.shape[0]}")
    _unpack_row(&v[0], <uint16_t*>cnp.PyArray_DATA(<cnp.ndarray>out))
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def pack_many(arr):
    """Pack an (N, 9) uint16 array into one N*18-byte big-endian blob.

    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(arr)
    cdef Py_ssize_t i, n = cnp.PyArray_DIMS(<cnp.ndarray>arr)[0]
    out = PyBytes_FromStringAndSize(NULL, n * KEY_BYTES)
    cdef const uint16_t* a = _u16(arr)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    with nogil:
        for i in range(n):
            _pack_row(a + i * NDIM, o + i * KEY_BYTES)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def unpack_many(b):
    """Unpack a blob of N*18 bytes into an (N, 9) uint16 array.

    :raises InterfaceError: not bytes-like or its length is not a multiple of 18.
    """
    cdef const unsigned char[::1] v
    cdef const unsigned char* src
    cdef Py_ssize_t i, nb
    if type(b) is bytes:
        # (the usual argument: read in place, no buffer view set up)
        src = <const unsigned char*>PyBytes_AS_STRING(b)
        nb = PyBytes_GET_SIZE(b)
    else:
        try:
            if b is None:
                raise TypeError
            v = b
        except (TypeError, ValueError):
            raise InterfaceError(f"packed coordinates must be bytes, got {type(b).__name__}") from None
        nb = v.shape[0]
        src = &v[0] if nb else NULL
    if nb % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    cdef cnp.npy_intp dims[2]
    dims[0] = nb // KEY_BYTES
    dims[1] = NDIM
    out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_UINT16, 0)
    cdef uint16_t* o = <uint16_t*>cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        for i in range(dims[0]):
            _unpack_row(src + i * KEY_BYTES, o + i * NDIM)
    return out


# -- one coordinate array row -> its key, for the facade's hot calls -----------------------

from libc.string cimport memcpy


def all_keys(list items):
    """True when every item of the list is an 18-byte packed key (a bytes object of
    KEY_BYTES), tested in C: no Python call per item (a pipeline's run of GETs).

    :param items: a list.
    :returns: bool (True for an empty list).
    """
    cdef Py_ssize_t i
    for i in range(len(items)):
        k = items[i]
        if not PyBytes_CheckExact(k) or PyBytes_GET_SIZE(k) != KEY_BYTES:
            return False
    return True


def key_of(c):
    """The 18-byte big-endian key of one coordinate given as a ``(9,)`` uint16 array,
    read straight from the array's memory (any strides), or None for anything else.

    For the hot paths that take a row of an ``(N, 9)`` array: :func:`pack` costs
    several times more in argument checks. Other inputs (other dtypes or shapes,
    byte-swapped arrays, non-arrays) answer None, and the caller uses its general
    conversion, which also reports errors.

    :param c: any object.
    :returns: 18 bytes, or None.
    """
    return _key_of(c)


cdef object _key_of(object c):
    # key_of, for the core's own callers (CallMeter.read) without a Python call.
    cdef cnp.ndarray a
    cdef const char* base
    cdef Py_ssize_t st
    cdef unsigned char* o
    cdef int j
    cdef uint16_t v
    if cnp.PyArray_Check(c):
        a = <cnp.ndarray>c
        if (cnp.PyArray_TYPE(a) == cnp.NPY_UINT16 and cnp.PyArray_NDIM(a) == 1
                and cnp.PyArray_DIM(a, 0) == NDIM and cnp.PyArray_ISNOTSWAPPED(a)):
            base = <const char*>cnp.PyArray_DATA(a)
            st = cnp.PyArray_STRIDE(a, 0)
            out = PyBytes_FromStringAndSize(NULL, KEY_BYTES)
            o = <unsigned char*>PyBytes_AS_STRING(out)
            for j in range(NDIM):
                memcpy(&v, base + j * st, 2)
                o[2 * j] = <unsigned char>(v >> 8)
                o[2 * j + 1] = <unsigned char>(v & 0xFF)
            return out
    return None
