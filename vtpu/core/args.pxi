# ---------------------------------------------------------------------------------------
# Argument checking: every array entering a kernel is checked here, so a wrong dtype,
# shape or layout is an InterfaceError naming the argument, never a crash.
# ---------------------------------------------------------------------------------------

cimport numpy as cnp
from libc.stdint cimport uint16_t, int64_t
import numpy as np
from vtpu.errors import InterfaceError

cnp.import_array()

# The checks are C functions over numpy's C API: the kernels of a small query (a binary
# search, a scan of a few hundred rows) are called several times per request, and the
# same checks through numpy attributes (a dtype comparison, ``flags``) and a memoryview
# per array cost more than the search itself.


cdef inline bint _is_u16(cnp.ndarray a) noexcept:
    """A native-order uint16 array (what ``a.dtype == np.uint16`` says)."""
    return cnp.PyArray_TYPE(a) == cnp.NPY_UINT16 and cnp.PyArray_ISNOTSWAPPED(a)


cdef inline const uint16_t* _u16(object arr) noexcept:
    """The first word of an array that passed one of the uint16 checks below."""
    return <const uint16_t*>cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef inline const int64_t* _i64(object arr) noexcept:
    """The first entry of a C-contiguous int64 array (one :func:`_vector_arg` gave, or
    one :func:`_new_int64` made)."""
    return <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef object _vector_arg(object v, int type_num, object dtype):
    """``v`` as a C-contiguous array of numpy type ``type_num`` (``dtype``): ``v``
    itself when it is a native 1-d one, else numpy's conversion (which callers check
    for the shape they need)."""
    if (cnp.PyArray_Check(v) and cnp.PyArray_TYPE(<cnp.ndarray>v) == type_num
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>v) and cnp.PyArray_NDIM(<cnp.ndarray>v) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>v)):
        return v
    return np.ascontiguousarray(v, dtype=dtype)


cdef object _coords_arg(object arr, str what="coords"):
    """Return ``arr`` as a C-contiguous (N, 9) uint16 array or raise InterfaceError."""
    if not cnp.PyArray_Check(arr):
        raise InterfaceError(f"{what} must be a numpy (N, 9) uint16 array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if not _is_u16(a):
        raise InterfaceError(f"{what} must have dtype uint16, got {arr.dtype}")
    if cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIMS(a)[1] != NDIM:
        raise InterfaceError(f"{what} must have shape (N, 9), got {arr.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise InterfaceError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    return arr


cdef object _coord_arg(object c, str what="coordinate"):
    """Return ``c`` as a contiguous (9,) uint16 array (a copy if it was not) or raise
    InterfaceError."""
    if not cnp.PyArray_Check(c):
        raise InterfaceError(f"{what} must be a numpy (9,) uint16 array, got {type(c).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>c
    if not _is_u16(a) or cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIMS(a)[0] != NDIM:
        raise InterfaceError(f"{what} must be a (9,) uint16 array, got {c.dtype} {c.shape}")
    return c if cnp.PyArray_IS_C_CONTIGUOUS(a) else np.ascontiguousarray(c)


cdef object _pattern_arg(object p, str what="pattern"):
    """Return ``p`` as a C-contiguous (2, 9) uint16 array (a copy if it was not) or
    raise InterfaceError."""
    if not cnp.PyArray_Check(p):
        raise InterfaceError(f"{what} must be a numpy (2, 9) uint16 array, got {type(p).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>p
    if (not _is_u16(a) or cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIMS(a)[0] != 2
            or cnp.PyArray_DIMS(a)[1] != NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) uint16 array, got {p.dtype} {p.shape}")
    return p if cnp.PyArray_IS_C_CONTIGUOUS(a) else np.ascontiguousarray(p)


cdef object _delta_arg(object d, str what="delta"):
    """Return ``d`` as a C-contiguous (2, 9) int32 array (a copy if it was not) or raise
    InterfaceError."""
    if not cnp.PyArray_Check(d):
        raise InterfaceError(f"{what} must be a numpy (2, 9) int32 array, got {type(d).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>d
    if (cnp.PyArray_TYPE(a) != cnp.NPY_INT32 or not cnp.PyArray_ISNOTSWAPPED(a)
            or cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIMS(a)[0] != 2
            or cnp.PyArray_DIMS(a)[1] != NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) int32 array, got {d.dtype} {d.shape}")
    return d if cnp.PyArray_IS_C_CONTIGUOUS(a) else np.ascontiguousarray(d)


cdef inline bint _box_empty(const uint16_t* lo, const uint16_t* hi) noexcept nogil:
    """A box with lo > hi in some component: it holds no coordinate."""
    cdef int j
    for j in range(NDIM):
        if lo[j] > hi[j]:
            return True
    return False


cdef object _new_int64(Py_ssize_t n):
    """A new uninitialised (n,) int64 array (numpy's C API: no call through Python)."""
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)


# The same checks under public names, for callers outside the core that must refuse
# exactly what the kernels refuse (the engine before its shortcuts, the network clients
# before they send).

def check_coord(c, what="coordinate"):
    """A ``(9,)`` uint16 array, contiguous.

    :param c: the argument.
    :param what: its name, for the message.
    :returns: ``c`` (a contiguous copy if it was not).
    :raises InterfaceError: anything else.
    """
    return _coord_arg(c, what)


def check_coords(arr, what="coords"):
    """A C-contiguous ``(N, 9)`` uint16 array.

    :returns: ``arr``.
    :raises InterfaceError: anything else.
    """
    return _coords_arg(arr, what)


def check_pattern(p, what="pattern"):
    """A ``(2, 9)`` uint16 pattern array, contiguous.

    :returns: ``p`` (a contiguous copy if it was not).
    :raises InterfaceError: anything else.
    """
    return _pattern_arg(p, what)


def pattern_is_empty(p):
    """Whether a pattern's box is empty (lo > hi in some component): it matches nothing.

    :param p: (2, 9) uint16 pattern.
    :returns: bool.
    :raises InterfaceError: not a (2, 9) uint16 array.
    """
    p = _pattern_arg(p)
    return _box_empty(_u16(p), _u16(p) + NDIM)
