# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeASCII

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
from cpython.bytes cimport PyBytes_GET_SIZE, PyBytes_AS_STRING

from vtpu.errors import CoordinateError, InterfaceError


# "00" .. "99": two digits a lookup, not two divisions.
cdef char _DIGITS2[200]
for _i in range(100):
    _DIGITS2[2 * _i] = 48 + _i // 10
    _DIGITS2[2 * _i + 1] = 48 + _i % 10


# The decimal text of 0 .. 999, four bytes each: its digits, then (in the fourth byte)
# how many there are. A component below 1000, nearly every one, is then written by one
# 4-byte copy and an add, with no branch on its length for the branch predictor to miss
# (coordinates of one result mix lengths: 7, 42, 510).
cdef char _DEC3[4000]
for _i in range(1000):
    _t = str(_i).encode()
    for _j in range(3):
        _DEC3[4 * _i + _j] = _t[_j] if _j < len(_t) else 48
    _DEC3[4 * _i + 3] = len(_t)


cdef inline Py_ssize_t _put_uint(char* buf, Py_ssize_t pos, uint32_t v) noexcept nogil:
    """Write v (a numeric component, at most 65535) in decimal at buf[pos]; return the
    position after it. Up to 4 bytes from pos are written: the caller's buffer has room
    for them, and what follows overwrites the extra ones."""
    cdef uint32_t lo
    if v < 1000:
        memcpy(buf + pos, &_DEC3[4 * v], 4)
        return pos + _DEC3[4 * v + 3]
    memcpy(buf + pos, &_DEC3[4 * (v // 1000)], 4)
    pos += _DEC3[4 * (v // 1000) + 3]
    lo = v % 1000
    buf[pos] = <char>(48 + lo // 100)
    memcpy(buf + pos + 1, &_DIGITS2[2 * (lo % 100)], 2)
    return pos + 3


cdef str _name_text(object names, uint16_t v, int comp):
    if names is None:
        raise CoordinateError(f"component {comp + 1} ({COMPONENTS[comp]}) holds name id "
                              f"0x{v:04X}, which needs a name table to format")
    return names.name_of(v)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef str _format_row(const uint16_t* c, object names):
    cdef char buf[64]
    cdef Py_ssize_t pos
    # A name id is above MAX_NUMERIC: adding k carries it, and only it, past 0xFFFF
    # into bit 16, so one test covers the nine components.
    cdef uint32_t k = 0xFFFF - MAX_NUMERIC
    if ((c[0] + k) | (c[1] + k) | (c[2] + k) | (c[3] + k) | (c[4] + k) | (c[5] + k)
            | (c[6] + k) | (c[7] + k) | (c[8] + k)) & 0x10000:
        return _format_named(c, names)
    # Digits and separators, written straight (no loop nor separator choice per part).
    pos = _put_uint(buf, 0, c[0])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[1])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[2])
    buf[pos] = b'/'
    pos = _put_uint(buf, pos + 1, c[3])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[4])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[5])
    buf[pos] = b'/'
    pos = _put_uint(buf, pos + 1, c[6])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[7])
    buf[pos] = b'.'
    pos = _put_uint(buf, pos + 1, c[8])
    # An ASCII str filled in place (no decoding pass).
    out = PyUnicode_New(pos, 127)
    short_copy(<char*>PyUnicode_DATA(out), buf, pos)   # (declared in parse.pxi)
    return out


cdef str _format_named(const uint16_t* c, object names):
    # A coordinate with names: apart from _format_row, whose every call would otherwise
    # make (and free) the scope of the generator below.
    cdef int j
    parts = []
    for j in range(NDIM):
        parts.append(_name_text(names, c[j], j) if c[j] > MAX_NUMERIC else str(c[j]))
    return "/".join(".".join(parts[k:k + 3]) for k in (0, 3, 6))


def format_coord(c, names=None):
    """Format one coordinate as ``a.b.c/d.e.f/g.h.i``.

    :param c: a (9,) uint16 array (or 18-byte packed key).
    :param names: name table used for components >= 0xF000.
    :returns: the coordinate text.
    :raises CoordinateError: a name id with no table (or unknown to it).
    """
    cdef uint16_t row[NDIM]
    if type(c) is bytes and len(<bytes>c) == KEY_BYTES:
        # A packed key (Scroll.coordinate): straight from its bytes, no array made.
        _unpack_row(<const unsigned char*>PyBytes_AS_STRING(c), row)
        return _format_row(row, names)
    if isinstance(c, bytes):
        c = unpack(c)
    c = _coord_arg(c)
    cdef const uint16_t[::1] v = c
    return _format_row(&v[0], names)


cdef str _format_key(object key, object names):
    # format_key's work, for Scroll.coordinate too: one C call, no array made.
    cdef uint16_t c[NDIM]
    if type(key) is not bytes or PyBytes_GET_SIZE(key) != KEY_BYTES:
        return format_coord(unpack(key), names)   # checks and explains the argument
    _unpack_row(<const unsigned char*>PyBytes_AS_STRING(key), c)
    return _format_row(c, names)


def format_key(key, names=None):
    """Format one 18-byte packed key as ``a.b.c/d.e.f/g.h.i``, straight from its bytes.

    :param key: the packed key (bytes).
    :param names: name table used for components >= 0xF000.
    :returns: the coordinate text.
    :raises InterfaceError: not 18 bytes; CoordinateError: unformattable name id.
    """
    return _format_key(key, names)


@cython.boundscheck(False)
@cython.wraparound(False)
def format_keys(blob, names=None):
    """Format N packed keys (one N*18-byte blob) as a list of N coordinate strings.

    :param blob: bytes, a multiple of 18 long.
    :param names: name table used for components >= 0xF000.
    :returns: list of str.
    :raises InterfaceError: not bytes or not a multiple of 18; CoordinateError:
        unformattable name id.
    """
    if type(blob) is not bytes:
        raise InterfaceError(f"packed coordinates must be bytes, got {type(blob).__name__}")
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(blob), i
    if nb % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
    cdef uint16_t c[NDIM]
    out = [None] * (nb // KEY_BYTES)
    for i in range(nb // KEY_BYTES):
        _unpack_row(p + i * KEY_BYTES, c)
        out[i] = _format_row(c, names)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def format_coords(arr, names=None):
    """Format an (N, 9) uint16 array as a list of N coordinate strings.

    :param arr: C-contiguous (N, 9) uint16 array.
    :param names: name table used for components >= 0xF000.
    :returns: list of str.
    :raises InterfaceError: wrong dtype/shape; CoordinateError: unformattable name id.
    """
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = [None] * n
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    for i in range(n):
        out[i] = _format_row(&a[i, 0], names)
    return out


def format_pattern(p, names=None):
    """Format a (2, 9) pattern array back to text (``*``, ``[a:b]``, numbers, names).

    :param p: (2, 9) uint16 inclusive bounds.
    :param names: name table for name ids.
    :returns: the pattern text; an empty component (lo > hi) formats as ``[lo:lo]``.
    """
    p = _pattern_arg(p)
    parts = []
    for j in range(NDIM):
        lo, hi = int(p[0, j]), int(p[1, j])
        if lo == 0 and hi == 0xFFFF:
            parts.append("*")
        elif lo == hi:
            parts.append(_name_text(names, lo, j) if lo > MAX_NUMERIC else str(lo))
        else:
            top = "" if hi >= MAX_NUMERIC else str(hi + 1)
            if hi < lo:
                top = str(lo)
            parts.append(f"[{lo if lo else ''}:{top}]")
    return "/".join(".".join(parts[k:k + 3]) for k in (0, 3, 6))
