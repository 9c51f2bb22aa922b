# cython: language_level=3, embedsignature=True, cdivision=True
"""vtpu._core: the compiled coordinate core.

Everything here works on packed coordinates: one coordinate is 9 x uint16, many are a
C-contiguous ``(N, 9) uint16`` numpy array, a pattern is a ``(2, 9) uint16`` array of
inclusive (lo, hi) bounds and a delta is a ``(2, 9) int32`` array of (op, value).
Inner loops run on raw pointers without the GIL; Python objects appear only at the
edges (strings in, strings out, names resolved through a name table).
"""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeASCII

import numpy as np

from vtpu.errors import CoordinateError, InterfaceError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

COMPONENTS = ("library", "shelf", "series", "collection", "volume", "book",
              "chapter", "section", "scroll")
MAX_NUMERIC_VALUE = MAX_NUMERIC
NAME_BASE_ID = NAME_BASE
NAME_MAX_LEN = 64

# ---------------------------------------------------------------------------------------
# Argument checking: every array entering a kernel is checked here, so a wrong dtype,
# shape or layout is an InterfaceError naming the argument, never a crash.
# ---------------------------------------------------------------------------------------

def _coords_arg(arr, str what="coords"):
    """Return ``arr`` as a C-contiguous (N, 9) uint16 array or raise InterfaceError."""
    if not isinstance(arr, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (N, 9) uint16 array, got {type(arr).__name__}")
    if arr.dtype != np.uint16:
        raise InterfaceError(f"{what} must have dtype uint16, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != NDIM:
        raise InterfaceError(f"{what} must have shape (N, 9), got {arr.shape}")
    if not arr.flags.c_contiguous:
        raise InterfaceError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    return arr


def _coord_arg(c, str what="coordinate"):
    """Return ``c`` as a (9,) uint16 array or raise InterfaceError."""
    if not isinstance(c, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (9,) uint16 array, got {type(c).__name__}")
    if c.dtype != np.uint16 or c.shape != (NDIM,):
        raise InterfaceError(f"{what} must be a (9,) uint16 array, got {c.dtype} {c.shape}")
    return np.ascontiguousarray(c)


def _pattern_arg(p, str what="pattern"):
    """Return ``p`` as a C-contiguous (2, 9) uint16 array or raise InterfaceError."""
    if not isinstance(p, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (2, 9) uint16 array, got {type(p).__name__}")
    if p.dtype != np.uint16 or p.shape != (2, NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) uint16 array, got {p.dtype} {p.shape}")
    return np.ascontiguousarray(p)


def _delta_arg(d, str what="delta"):
    """Return ``d`` as a C-contiguous (2, 9) int32 array or raise InterfaceError."""
    if not isinstance(d, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (2, 9) int32 array, got {type(d).__name__}")
    if d.dtype != np.int32 or d.shape != (2, NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) int32 array, got {d.dtype} {d.shape}")
    return np.ascontiguousarray(d)


# ---------------------------------------------------------------------------------------
# Parsing. One tokenizer for coordinates, patterns and deltas; it fills 9 tokens and
# reports the first error with its byte position and component. Names are recorded as
# offsets and resolved afterwards through the caller's name table (the rare, slow path).
# ---------------------------------------------------------------------------------------

cdef enum TokKind:
    TK_NUM = 0
    TK_STAR = 1
    TK_RANGE = 2
    TK_NAME = 3
    TK_SETNUM = 4
    TK_SETNAME = 5
    TK_ADD = 6

cdef enum ParseMode:
    M_COORD = 0
    M_PATTERN = 1
    M_DELTA = 2

cdef enum ParseErr:
    E_OK = 0
    E_EMPTY = 1
    E_CHAR = 2
    E_RANGE = 3
    E_FEW = 4
    E_MANY = 5
    E_NAMELEN = 6
    E_INTERVAL = 7
    E_SEP = 8
    E_EMPTYIV = 9

cdef struct Tok:
    int kind
    int64_t a
    int64_t b


cdef inline bint _is_digit(char ch) noexcept nogil:
    return b'0' <= ch <= b'9'


cdef inline bint _is_name_start(char ch) noexcept nogil:
    return (b'a' <= ch <= b'z') or (b'A' <= ch <= b'Z') or ch == b'_'


cdef inline bint _is_name_char(char ch) noexcept nogil:
    return _is_name_start(ch) or _is_digit(ch) or ch == b'-'


cdef inline Py_ssize_t _number(const char* s, Py_ssize_t i, Py_ssize_t n,
                               int64_t* out) noexcept nogil:
    """Read decimal digits at i; return the index after them (== i if none).

    The value saturates just above 0xFFFF so huge inputs cannot overflow."""
    cdef int64_t v = 0
    while i < n and _is_digit(s[i]):
        if v <= 0x10000:
            v = v * 10 + (s[i] - 48)
        i += 1
    out[0] = v
    return i


cdef int _tokenize(const char* s, Py_ssize_t n, int mode, Tok* toks,
                   Py_ssize_t* errpos, int* errcomp) noexcept nogil:
    cdef Py_ssize_t i = 0, start, j0
    cdef int comp = 0
    cdef int64_t v, w
    cdef char ch
    while i < n and s[i] == b' ':
        i += 1
    while True:
        errcomp[0] = comp
        errpos[0] = i
        start = i
        if i >= n or s[i] == b'.' or s[i] == b'/' or s[i] == b';' or s[i] == b' ':
            return E_EMPTY if comp > 0 or n > 0 else E_FEW
        ch = s[i]
        if _is_digit(ch):
            i = _number(s, i, n, &v)
            if v > MAX_NUMERIC:
                return E_RANGE
            toks[comp].kind = TK_ADD if mode == M_DELTA else TK_NUM
            toks[comp].a = v
        elif _is_name_start(ch):
            while i < n and _is_name_char(s[i]):
                i += 1
            if i - start > 64:
                return E_NAMELEN
            toks[comp].kind = TK_SETNAME if mode == M_DELTA else TK_NAME
            toks[comp].a = start
            toks[comp].b = i
        elif ch == b'*' and mode != M_COORD:
            i += 1
            toks[comp].kind = TK_STAR
        elif ch == b'[' and mode == M_PATTERN:
            i += 1
            j0 = i
            i = _number(s, i, n, &v)
            if i == j0:
                v = 0
            if i >= n or s[i] != b':':
                errpos[0] = i
                return E_INTERVAL
            i += 1
            j0 = i
            i = _number(s, i, n, &w)
            if i == j0:
                w = MAX_NUMERIC + 1
            if i >= n or s[i] != b']':
                errpos[0] = i
                return E_INTERVAL
            i += 1
            if v > MAX_NUMERIC or w > MAX_NUMERIC + 1:
                return E_RANGE
            if w <= v:
                return E_EMPTYIV
            toks[comp].kind = TK_RANGE
            toks[comp].a = v
            toks[comp].b = w - 1
        elif mode == M_DELTA and (ch == b'+' or ch == b'-' or ch == b'='):
            i += 1
            if i < n and _is_digit(s[i]):
                i = _number(s, i, n, &v)
                if v > MAX_NUMERIC:
                    return E_RANGE
                if ch == b'=':
                    toks[comp].kind = TK_SETNUM
                    toks[comp].a = v
                else:
                    toks[comp].kind = TK_ADD
                    toks[comp].a = -v if ch == b'-' else v
            elif i < n and _is_name_start(s[i]) and ch != b'-':
                j0 = i
                while i < n and _is_name_char(s[i]):
                    i += 1
                if i - j0 > 64:
                    return E_NAMELEN
                toks[comp].kind = TK_SETNAME
                toks[comp].a = j0
                toks[comp].b = i
            else:
                errpos[0] = i
                return E_CHAR
        else:
            return E_CHAR
        # separator after this component
        if comp == NDIM - 1:
            while i < n and s[i] == b' ':
                i += 1
            if i < n:
                errpos[0] = i
                return E_MANY
            return E_OK
        if comp == 2 or comp == 5:
            while i < n and s[i] == b' ':
                i += 1
            if i >= n:
                errpos[0] = i
                return E_FEW
            if s[i] != b'/' and s[i] != b';':
                errpos[0] = i
                return E_SEP
            i += 1
            while i < n and s[i] == b' ':
                i += 1
        else:
            if i >= n:
                errpos[0] = i
                return E_FEW
            if s[i] != b'.':
                errpos[0] = i
                return E_SEP if s[i] in b'/;' else E_CHAR
            i += 1
        comp += 1


def _count_parts(str text):
    import re
    return len([p for p in re.split(r"\s*[/;]\s*|\.", text.strip())])


cdef object _parse_error(str what, str text, int code, Py_ssize_t pos, int comp):
    cdef str label = f"component {comp + 1} ({COMPONENTS[comp]})"
    if not text.strip():
        msg = "is empty"
    elif code == E_FEW or code == E_MANY:
        nparts = _count_parts(text)
        if code == E_MANY and nparts <= NDIM:
            bad = text.encode("utf-8", "replace")[pos:pos + 1].decode("utf-8", "replace")
            msg = f"{label} is followed by unexpected text {bad!r} at position {pos}"
        else:
            msg = f"has {nparts} components, expected 9 (a.b.c/d.e.f/g.h.i)"
    elif code == E_EMPTY:
        msg = f"{label} is empty"
    elif code == E_RANGE:
        msg = f"{label} is out of range 0..{MAX_NUMERIC}"
    elif code == E_NAMELEN:
        msg = f"{label} is a name longer than 64 characters"
    elif code == E_INTERVAL:
        msg = f"{label} is not a valid interval [a:b] (at position {pos})"
    elif code == E_EMPTYIV:
        msg = f"{label} is an empty interval (need a < b)"
    elif code == E_SEP:
        sep = "'/'" if comp in (2, 5) else "'.'"
        msg = f"expected {sep} after {label} at position {pos}"
    else:
        bad = text.encode("utf-8", "replace")[pos:pos + 1].decode("utf-8", "replace") or "end"
        msg = f"{label} has an unexpected character {bad!r} at position {pos}"
    return CoordinateError(f"bad {what} {text!r}: {msg}")


cdef int _name_id(object names, str text, Tok* t, int comp, bint intern, str what) except -1:
    cdef bytes raw = text.encode("utf-8")[t.a:t.b]
    name = raw.decode("ascii")
    if names is None:
        raise CoordinateError(f"bad {what} {text!r}: component {comp + 1} ({COMPONENTS[comp]}) "
                              f"is the name {name!r}, which needs a name table")
    ident = names.lookup(name, intern)
    if ident is None:
        raise CoordinateError(f"bad {what} {text!r}: component {comp + 1} ({COMPONENTS[comp]}) "
                              f"is the unknown name {name!r}")
    return ident


cdef inline const char* _utf8(object s, Py_ssize_t* n, str what) except NULL:
    if not isinstance(s, str):
        raise CoordinateError(f"{what} must be a str, got {type(s).__name__}: {s!r:.80}")
    return PyUnicode_AsUTF8AndSize(s, n)


cdef int _tokens(object s, int mode, str what, Tok* toks) except -1:
    """Tokenize ``s`` (a coordinate, pattern or delta) into 9 tokens, or raise the
    CoordinateError that quotes it and names the faulty component."""
    cdef Py_ssize_t n, errpos
    cdef int errcomp, code
    cdef const char* p = _utf8(s, &n, what)
    with nogil:
        code = _tokenize(p, n, mode, toks, &errpos, &errcomp)
    if code != E_OK:
        raise _parse_error(what, s, code, errpos, errcomp)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _parse_coord_into(object s, uint16_t* out, object names, bint intern) except -1:
    cdef Tok toks[NDIM]
    cdef int j
    _tokens(s, M_COORD, "coordinate", toks)
    for j in range(NDIM):
        if toks[j].kind == TK_NUM:
            out[j] = <uint16_t>toks[j].a
        else:
            out[j] = <uint16_t>_name_id(names, s, &toks[j], j, intern, "coordinate")
    return 0


def parse_coord(s, names=None, bint intern=True):
    """Parse one coordinate string into a (9,) uint16 array.

    :param s: ``"a.b.c/d.e.f/g.h.i"``; ``;`` may replace ``/``; spaces around separators are ok.
    :param names: a name table (``lookup(name, intern) -> id``) for name components.
    :param intern: give unknown names a new id (True) or report them (False).
    :returns: numpy array of shape (9,), dtype uint16.
    :raises CoordinateError: quoting the input and naming the faulty component.
    """
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    _parse_coord_into(s, &o[0], names, intern)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def parse_coords(seq, names=None, bint intern=True):
    """Parse many coordinate strings into an (N, 9) uint16 array.

    :param seq: a sequence (list/tuple) of coordinate strings.
    :param names: name table for name components (see :func:`parse_coord`).
    :param intern: intern unknown names (True) or report them (False).
    :returns: C-contiguous (N, 9) uint16 array.
    :raises CoordinateError: for the first bad string, quoting it and its index.
    """
    if isinstance(seq, str):
        raise InterfaceError("parse_coords takes a sequence of strings, not one string")
    seq = list(seq)
    cdef Py_ssize_t i, n = len(seq)
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef uint16_t[:, ::1] o = out
    for i in range(n):
        try:
            _parse_coord_into(seq[i], &o[i, 0], names, intern)
        except CoordinateError as e:
            raise CoordinateError(f"item {i}: {e}") from None
    return out


def parse_pattern(s, names=None, bint intern=True):
    """Parse a pattern string into a (2, 9) uint16 array of inclusive (lo, hi) bounds.

    Components: a number, a name, ``*`` (any value, names included) or a half-open
    interval ``[a:b]`` meaning a <= v < b (``[a:]`` and ``[:b]`` allowed; numeric only).

    :param s: the pattern text.
    :param names: name table for name components.
    :param intern: intern unknown names (True) or report them (False).
    :returns: array ``p`` with ``p[0]`` the lower and ``p[1]`` the upper bounds.
    :raises CoordinateError: quoting the input and naming the faulty component.
    """
    cdef Tok toks[NDIM]
    cdef int j
    _tokens(s, M_PATTERN, "pattern", toks)
    out = np.empty((2, NDIM), dtype=np.uint16)
    cdef uint16_t[:, ::1] o = out
    for j in range(NDIM):
        k = toks[j].kind
        if k == TK_NUM:
            o[0, j] = o[1, j] = <uint16_t>toks[j].a
        elif k == TK_STAR:
            o[0, j] = 0
            o[1, j] = 0xFFFF
        elif k == TK_RANGE:
            o[0, j] = <uint16_t>toks[j].a
            o[1, j] = <uint16_t>toks[j].b
        else:
            o[0, j] = o[1, j] = <uint16_t>_name_id(names, s, &toks[j], j, intern, "pattern")
    return out


def parse_delta(s, names=None, bint intern=True):
    """Parse a delta string into a (2, 9) int32 array of (op, value).

    Per component: ``+n``/``-n``/``n`` add, ``=n`` set, a name (or ``+name``/``=name``)
    set to that name, ``*`` make the component a wildcard.

    :param s: the delta text, e.g. ``"+0.0.0/+0.0.5/+0.0.0"``.
    :param names: name table for name components.
    :param intern: intern unknown names (True) or report them (False).
    :returns: array ``d`` with ``d[0]`` the ops (0 add, 1 set, 2 wildcard), ``d[1]`` values.
    :raises CoordinateError: quoting the input and naming the faulty component.
    """
    cdef Tok toks[NDIM]
    cdef int j
    _tokens(s, M_DELTA, "delta", toks)
    out = np.zeros((2, NDIM), dtype=np.int32)
    cdef int32_t[:, ::1] o = out
    for j in range(NDIM):
        k = toks[j].kind
        if k == TK_ADD:
            o[0, j] = DELTA_ADD
            o[1, j] = <int32_t>toks[j].a
        elif k == TK_SETNUM:
            o[0, j] = DELTA_SET
            o[1, j] = <int32_t>toks[j].a
        elif k == TK_STAR:
            o[0, j] = DELTA_WILD
        else:
            o[0, j] = DELTA_SET
            o[1, j] = _name_id(names, s, &toks[j], j, intern, "delta")
    return out


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------

cdef inline Py_ssize_t _put_uint(char* buf, Py_ssize_t pos, uint32_t v) noexcept nogil:
    cdef char tmp[8]
    cdef int k = 0
    if v == 0:
        buf[pos] = b'0'
        return pos + 1
    while v:
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        k += 1
    while k:
        k -= 1
        buf[pos] = tmp[k]
        pos += 1
    return pos


cdef str _name_text(object names, uint16_t v, int comp):
    if names is None:
        raise CoordinateError(f"component {comp + 1} ({COMPONENTS[comp]}) holds name id "
                              f"0x{v:04X}, which needs a name table to format")
    return names.name_of(v)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef str _format_row(const uint16_t* c, object names):
    cdef char buf[128]
    cdef Py_ssize_t pos = 0
    cdef int j
    cdef bint has_name = False
    for j in range(NDIM):
        if c[j] > MAX_NUMERIC:
            has_name = True
            break
        pos = _put_uint(buf, pos, c[j])
        if j < NDIM - 1:
            buf[pos] = b'/' if (j == 2 or j == 5) else b'.'
            pos += 1
    if not has_name:
        return PyUnicode_DecodeASCII(buf, pos, NULL)
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
    if isinstance(c, bytes):
        c = unpack(c)
    c = _coord_arg(c)
    cdef const uint16_t[::1] v = c
    return _format_row(&v[0], names)


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


# ---------------------------------------------------------------------------------------
# Packing: 18 bytes big-endian per coordinate, so byte order == coordinate order.
# ---------------------------------------------------------------------------------------

cdef inline void _pack_row(const uint16_t* c, unsigned char* o) noexcept nogil:
    cdef int j
    for j in range(NDIM):
        o[2 * j] = <unsigned char>(c[j] >> 8)
        o[2 * j + 1] = <unsigned char>(c[j] & 0xFF)


cdef inline void _unpack_row(const unsigned char* b, uint16_t* c) noexcept nogil:
    cdef int j
    for j in range(NDIM):
        c[j] = <uint16_t>((b[2 * j] << 8) | b[2 * j + 1])


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
    try:
        if b is None:  # a typed memoryview would accept None as empty
            raise TypeError
        v = b
    except (TypeError, ValueError):
        raise InterfaceError(f"a packed coordinate must be bytes, got {type(b).__name__}") from None
    if v.shape[0] != KEY_BYTES:
        raise InterfaceError(f"a packed coordinate is 18 bytes, got {v.shape[0]}")
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    _unpack_row(&v[0], &o[0])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def pack_many(arr):
    """Pack an (N, 9) uint16 array into one N*18-byte big-endian blob.

    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = PyBytes_FromStringAndSize(NULL, n * KEY_BYTES)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    with nogil:
        for i in range(n):
            _pack_row(&a[i, 0], o + i * KEY_BYTES)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def unpack_many(b):
    """Unpack a blob of N*18 bytes into an (N, 9) uint16 array.

    :raises InterfaceError: not bytes-like or its length is not a multiple of 18.
    """
    cdef const unsigned char[::1] v
    try:
        if b is None:
            raise TypeError
        v = b
    except (TypeError, ValueError):
        raise InterfaceError(f"packed coordinates must be bytes, got {type(b).__name__}") from None
    cdef Py_ssize_t i, n = v.shape[0] // KEY_BYTES
    if v.shape[0] % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {v.shape[0]}")
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef uint16_t[:, ::1] o = out
    with nogil:
        for i in range(n):
            _unpack_row(&v[i * KEY_BYTES], &o[i, 0])
    return out


# ---------------------------------------------------------------------------------------
# Morton (Z-order). The 144-bit key interleaves the components' bits, most significant
# bit of component 0 first; it is held as 9 uint16 words, word 0 most significant, so
# lexicographic order of the words is numeric order of the key. Each byte of a
# component is spread with a 256-entry table (bit b -> bit 9b) and shifted into one of
# two 72-bit halves held in a 128-bit integer.
# ---------------------------------------------------------------------------------------

cdef extern from *:
    """
    typedef unsigned __int128 vtpu_u128;
    """
    ctypedef unsigned long long u128 "vtpu_u128"

cdef uint64_t SPREAD8[256]

cdef void _init_spread() noexcept:
    cdef int x, b
    cdef uint64_t v
    for x in range(256):
        v = 0
        for b in range(8):
            if x & (1 << b):
                v |= (<uint64_t>1) << (9 * b)
        SPREAD8[x] = v

_init_spread()


cdef inline void _morton_row(const uint16_t* c, uint16_t* z) noexcept nogil:
    cdef u128 hi = 0, lo = 0
    cdef int j
    for j in range(NDIM):
        hi |= (<u128>SPREAD8[c[j] >> 8]) << (8 - j)
        lo |= (<u128>SPREAD8[c[j] & 0xFF]) << (8 - j)
    z[0] = <uint16_t>(hi >> 56)
    z[1] = <uint16_t>(hi >> 40)
    z[2] = <uint16_t>(hi >> 24)
    z[3] = <uint16_t>(hi >> 8)
    z[4] = <uint16_t>(((hi & 0xFF) << 8) | (lo >> 64))
    z[5] = <uint16_t>(lo >> 48)
    z[6] = <uint16_t>(lo >> 32)
    z[7] = <uint16_t>(lo >> 16)
    z[8] = <uint16_t>lo


cdef inline void _demorton_row(const uint16_t* z, uint16_t* c) noexcept nogil:
    cdef u128 hi = ((<u128>z[0]) << 56) | ((<u128>z[1]) << 40) | ((<u128>z[2]) << 24) \
        | ((<u128>z[3]) << 8) | (z[4] >> 8)
    cdef u128 lo = ((<u128>(z[4] & 0xFF)) << 64) | ((<u128>z[5]) << 48) \
        | ((<u128>z[6]) << 32) | ((<u128>z[7]) << 16) | z[8]
    cdef int j, b
    cdef uint32_t h, l
    for j in range(NDIM):
        h = 0
        l = 0
        for b in range(8):
            h |= <uint32_t>((hi >> (9 * b + 8 - j)) & 1) << b
            l |= <uint32_t>((lo >> (9 * b + 8 - j)) & 1) << b
        c[j] = <uint16_t>((h << 8) | l)


@cython.boundscheck(False)
@cython.wraparound(False)
def morton_encode(arr):
    """Z-order keys of an (N, 9) array, as an (N, 9) uint16 array of key words.

    :param arr: C-contiguous (N, 9) uint16 coordinates.
    :returns: (N, 9) uint16; row i word 0 holds the 16 most significant key bits.
    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef uint16_t[:, ::1] o = out
    with nogil:
        for i in range(n):
            _morton_row(&a[i, 0], &o[i, 0])
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def morton_decode(z):
    """Inverse of :func:`morton_encode`: (N, 9) key words back to coordinates.

    :raises InterfaceError: wrong dtype, shape or layout.
    """
    _coords_arg(z, "z")
    cdef Py_ssize_t i, n = z.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = z
    cdef uint16_t[:, ::1] o = out
    with nogil:
        for i in range(n):
            _demorton_row(&a[i, 0], &o[i, 0])
    return out


# ---------------------------------------------------------------------------------------
# BIGMIN / LITMAX (Tropf & Herzog), walked over the coordinate form: bit positions are
# visited in Z order (level 15..0, component 0..8) and the "load" steps rewrite one
# component's low bits, which is exactly the Z-key operation without materialising keys.
# ---------------------------------------------------------------------------------------

cdef inline uint16_t _load_1000(uint16_t v, int level) noexcept nogil:
    cdef uint32_t mask = (<uint32_t>2 << level) - 1   # bits level..0
    return <uint16_t>((v & ~mask) | (<uint32_t>1 << level))


cdef inline uint16_t _load_0111(uint16_t v, int level) noexcept nogil:
    cdef uint32_t mask = (<uint32_t>2 << level) - 1
    return <uint16_t>((v & ~mask) | ((<uint32_t>1 << level) - 1))


cdef bint _bigmin(const uint16_t* z, const uint16_t* lo_in, const uint16_t* hi_in,
                  uint16_t* out) noexcept nogil:
    """Smallest point of the box [lo, hi] whose Z key is > the Z key of z.

    Returns False when there is none. Coordinates in, coordinate out."""
    cdef uint16_t mn[NDIM]
    cdef uint16_t mx[NDIM]
    cdef bint found = False
    cdef int level, j
    cdef int zb, nb, xb
    memcpy(mn, lo_in, sizeof(uint16_t) * NDIM)
    memcpy(mx, hi_in, sizeof(uint16_t) * NDIM)
    for level in range(15, -1, -1):
        for j in range(NDIM):
            zb = (z[j] >> level) & 1
            nb = (mn[j] >> level) & 1
            xb = (mx[j] >> level) & 1
            if zb == 0:
                if nb == 0 and xb == 1:
                    memcpy(out, mn, sizeof(uint16_t) * NDIM)
                    out[j] = _load_1000(mn[j], level)
                    found = True
                    mx[j] = _load_0111(mx[j], level)
                elif nb == 1:
                    memcpy(out, mn, sizeof(uint16_t) * NDIM)
                    return True
            else:
                if xb == 0:
                    return found
                if nb == 0:
                    mn[j] = _load_1000(mn[j], level)
    return found


cdef bint _litmax(const uint16_t* z, const uint16_t* lo_in, const uint16_t* hi_in,
                  uint16_t* out) noexcept nogil:
    """Largest point of the box [lo, hi] whose Z key is < the Z key of z."""
    cdef uint16_t mn[NDIM]
    cdef uint16_t mx[NDIM]
    cdef bint found = False
    cdef int level, j
    cdef int zb, nb, xb
    memcpy(mn, lo_in, sizeof(uint16_t) * NDIM)
    memcpy(mx, hi_in, sizeof(uint16_t) * NDIM)
    for level in range(15, -1, -1):
        for j in range(NDIM):
            zb = (z[j] >> level) & 1
            nb = (mn[j] >> level) & 1
            xb = (mx[j] >> level) & 1
            if zb == 0:
                if nb == 1:
                    return found
                if xb == 1:
                    mx[j] = _load_0111(mx[j], level)
            else:
                if xb == 0:
                    memcpy(out, mx, sizeof(uint16_t) * NDIM)
                    return True
                if nb == 0:
                    memcpy(out, mx, sizeof(uint16_t) * NDIM)
                    out[j] = _load_0111(mx[j], level)
                    found = True
                    mn[j] = _load_1000(mn[j], level)
    return found


def bigmin(z, pattern):
    """BIGMIN: the smallest coordinate inside the pattern's box whose Z key exceeds z's.

    :param z: (9,) uint16 coordinate (typically one just found outside the box).
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: (9,) uint16 coordinate, or None when no such point exists.
    """
    z = _coord_arg(z, "z")
    pattern = _pattern_arg(pattern)
    cdef const uint16_t[::1] zv = z
    cdef const uint16_t[:, ::1] p = pattern
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    # An empty box (lo > hi somewhere) has no points; the bit walk assumes lo <= hi.
    if (pattern[0] > pattern[1]).any():
        return None
    if not _bigmin(&zv[0], &p[0, 0], &p[1, 0], &o[0]):
        return None
    return out


def litmax(z, pattern):
    """LITMAX: the largest coordinate inside the pattern's box whose Z key is below z's.

    :returns: (9,) uint16 coordinate, or None when no such point exists.
    """
    z = _coord_arg(z, "z")
    pattern = _pattern_arg(pattern)
    cdef const uint16_t[::1] zv = z
    cdef const uint16_t[:, ::1] p = pattern
    out = np.empty(NDIM, dtype=np.uint16)
    cdef uint16_t[::1] o = out
    if (pattern[0] > pattern[1]).any():
        return None
    if not _litmax(&zv[0], &p[0, 0], &p[1, 0], &o[0]):
        return None
    return out


# ---------------------------------------------------------------------------------------
# Matching, distances, top-k
# ---------------------------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def match(arr, pattern):
    """Boolean mask of the rows of ``arr`` inside the pattern's box.

    :param arr: C-contiguous (N, 9) uint16.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: (N,) bool array.
    """
    _coords_arg(arr)
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef const uint16_t[:, ::1] p = pattern
    cdef uint8_t[::1] o = out.view(np.uint8)
    # Only the constrained components are checked: a prefix pattern costs 3 compares.
    cdef int cols[NDIM]
    cdef int ncols = 0, j, k
    cdef uint16_t lo[NDIM]
    cdef uint16_t hi[NDIM]
    cdef bint ok
    for j in range(NDIM):
        if p[0, j] > p[1, j]:
            return out
        if p[0, j] != 0 or p[1, j] != 0xFFFF:
            cols[ncols] = j
            lo[ncols] = p[0, j]
            hi[ncols] = p[1, j]
            ncols += 1
    with nogil:
        for i in range(n):
            ok = True
            for k in range(ncols):
                if a[i, cols[k]] < lo[k] or a[i, cols[k]] > hi[k]:
                    ok = False
                    break
            o[i] = ok
    return out


cdef enum:
    DIST_BLOCK = 512   # rows per distance block: the uint16 scratch (2 x 9 KB) stays in L1


cdef inline void _tile_query(const uint16_t* q, uint16_t* qt) noexcept nogil:
    """Repeat the query DIST_BLOCK times so a block of rows can be compared flat."""
    cdef Py_ssize_t t
    for t in range(NDIM * DIST_BLOCK):
        qt[t] = q[t % NDIM]


cdef inline void _dist_block(const uint16_t* src, const uint16_t* qt, uint16_t* tmp,
                             uint32_t* ds, Py_ssize_t nb, bint ham) noexcept nogil:
    """L1 (or Hamming) distances of nb consecutive rows to the tiled query qt.

    Two flat passes rather than one loop per row: an elementwise |x - y| (or x != y)
    over 9*nb uint16, which the compiler vectorises, then each row's 9 terms summed.
    This is several times faster than a per-row loop with early abandoning, whose
    unpredictable branch costs more than the arithmetic it saves."""
    cdef Py_ssize_t t, i, m = NDIM * nb
    cdef uint16_t x, y
    cdef const uint16_t* p
    if ham:
        for t in range(m):
            tmp[t] = src[t] != qt[t]
    else:
        for t in range(m):
            x = src[t]
            y = qt[t]
            tmp[t] = <uint16_t>(x - y) if x > y else <uint16_t>(y - x)
    for i in range(nb):
        p = tmp + NDIM * i
        ds[i] = (<uint32_t>p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7]) + p[8]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef _distances(c, arr, bint ham):
    """Per-row L1 (ham false) or Hamming (ham true) distances from c, as uint32."""
    c = _coord_arg(c)
    _coords_arg(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty(n, dtype=np.uint32)
    if n == 0:
        return out
    cdef const uint16_t[::1] q = c
    cdef const uint16_t[:, ::1] a = arr
    cdef uint32_t[::1] o = out
    cdef uint16_t qt[NDIM * DIST_BLOCK]
    cdef uint16_t tmp[NDIM * DIST_BLOCK]
    cdef Py_ssize_t nb
    _tile_query(&q[0], qt)
    with nogil:
        i = 0
        while i < n:
            nb = DIST_BLOCK if n - i > DIST_BLOCK else n - i
            _dist_block(&a[i, 0], qt, tmp, &o[i], nb, ham)
            i += nb
    return out


def l1(c, arr):
    """L1 distance (sum of absolute component differences) from c to every row.

    :returns: (N,) uint32.
    """
    return _distances(c, arr, False)


def hamming(c, arr):
    """Hamming distance (number of differing components) from c to every row.

    :returns: (N,) uint8.
    """
    return _distances(c, arr, True).astype(np.uint8)
    cdef const uint16_t[::1] q = c
    cdef const uint16_t[:, ::1] a = arr
    cdef uint8_t[::1] o = out
    cdef int j
    cdef uint8_t s
    with nogil:
        for i in range(n):
            s = 0
            for j in range(NDIM):
                s += a[i, j] != q[j]
            o[i] = s
    return out


cdef inline bint _worse(uint32_t da, const uint16_t* ca, uint32_t db,
                        const uint16_t* cb) noexcept nogil:
    """True when (da, ca) orders after (db, cb): larger distance, ties by coordinate."""
    if da != db:
        return da > db
    return lex_cmp(ca, cb) > 0


cdef void _sift_down(int64_t* heap, uint32_t* hd, Py_ssize_t size, Py_ssize_t pos,
                     const uint16_t* base) noexcept nogil:
    # Max-heap on (distance, coordinate): the root is the worst of the current best k.
    cdef Py_ssize_t child, big
    cdef int64_t ti
    cdef uint32_t td
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        big = child
        if child + 1 < size and _worse(hd[child + 1], base + NDIM * heap[child + 1],
                                       hd[child], base + NDIM * heap[child]):
            big = child + 1
        if not _worse(hd[big], base + NDIM * heap[big], hd[pos], base + NDIM * heap[pos]):
            return
        ti = heap[pos]; heap[pos] = heap[big]; heap[big] = ti
        td = hd[pos]; hd[pos] = hd[big]; hd[big] = td
        pos = big


cdef void _sift_up(int64_t* heap, uint32_t* hd, Py_ssize_t pos,
                   const uint16_t* base) noexcept nogil:
    cdef Py_ssize_t parent
    cdef int64_t ti
    cdef uint32_t td
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(hd[pos], base + NDIM * heap[pos], hd[parent], base + NDIM * heap[parent]):
            return
        ti = heap[pos]; heap[pos] = heap[parent]; heap[parent] = ti
        td = hd[pos]; hd[pos] = hd[parent]; hd[parent] = td
        pos = parent


@cython.boundscheck(False)
@cython.wraparound(False)
def topk(c, arr, Py_ssize_t k, str metric="l1", mask=None):
    """The k rows nearest to c, without sorting everything (a bounded max-heap).

    :param c: (9,) uint16 query coordinate.
    :param arr: C-contiguous (N, 9) uint16 candidates.
    :param k: how many to return (fewer when fewer rows qualify).
    :param metric: ``"l1"`` (sum of |differences|) or ``"hamming"`` (differing components).
    :param mask: optional (N,) bool array; only rows where it is True are candidates.
    :returns: ``(idx, dist)``: int64 row indices and uint32 distances, nearest first,
        ties broken by coordinate order.
    :raises InterfaceError: bad metric, k < 0, or wrong array types.
    """
    c = _coord_arg(c)
    _coords_arg(arr)
    if metric not in ("l1", "hamming"):
        raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
    if k < 0:
        raise InterfaceError(f"k must be >= 0, got {k}")
    cdef Py_ssize_t n = arr.shape[0]
    cdef const uint8_t[::1] m
    cdef bint use_mask = mask is not None
    if use_mask:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
            raise InterfaceError(f"mask must be a ({n},) bool array")
        m = np.ascontiguousarray(mask).view(np.uint8)
    else:
        m = np.ones(1, dtype=np.uint8)
    if k > n:
        k = n
    heap_a = np.empty(max(k, 1), dtype=np.int64)
    hd_a = np.empty(max(k, 1), dtype=np.uint32)
    cdef int64_t[::1] heap = heap_a
    cdef uint32_t[::1] hd = hd_a
    cdef const uint16_t[::1] q = c
    cdef const uint16_t* base
    cdef Py_ssize_t i, size = 0
    cdef int j
    cdef int32_t d
    cdef uint32_t s
    cdef bint ham = metric == "hamming"
    if k == 0 or n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint32)
    cdef const uint16_t[:, ::1] a = arr
    base = &a[0, 0]
    cdef const uint16_t* row
    cdef uint32_t bound = 0xFFFFFFFF
    cdef uint16_t qt[NDIM * DIST_BLOCK]
    cdef uint16_t tmp[NDIM * DIST_BLOCK]
    cdef uint32_t ds[DIST_BLOCK]
    cdef Py_ssize_t b0, nb, ii
    _tile_query(&q[0], qt)
    with nogil:
        b0 = 0
        while b0 < n:
            nb = DIST_BLOCK if n - b0 > DIST_BLOCK else n - b0
            _dist_block(base + NDIM * b0, qt, tmp, ds, nb, ham)
            for ii in range(nb):
                s = ds[ii]
                # Once the heap is full, bound is its worst distance: almost every row
                # fails this one predictable compare.
                if s > bound:
                    continue
                i = b0 + ii
                if use_mask and not m[i]:
                    continue
                row = base + NDIM * i
                if size < k:
                    heap[size] = i
                    hd[size] = s
                    _sift_up(&heap[0], &hd[0], size, base)
                    size += 1
                    if size == k:
                        bound = hd[0]
                elif s < hd[0] or (s == hd[0] and lex_cmp(row, base + NDIM * heap[0]) < 0):
                    heap[0] = i
                    hd[0] = s
                    _sift_down(&heap[0], &hd[0], size, 0, base)
                    bound = hd[0]
            b0 += nb
    idx = heap_a[:size].copy()
    dist = hd_a[:size].copy()
    # Sort the k winners: by distance, then coordinate (k is small).
    rows = arr[idx]
    order = np.lexsort(tuple(rows[:, j] for j in range(NDIM - 1, -1, -1)) + (dist,))
    return idx[order], dist[order]


# ---------------------------------------------------------------------------------------
# Deltas
# ---------------------------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def apply_delta(arr, delta):
    """Apply a delta's add/set ops to every row (wildcard ops leave the value as is).

    :param arr: C-contiguous (N, 9) uint16 coordinates.
    :param delta: (2, 9) int32 (op, value) from :func:`parse_delta`.
    :returns: new (N, 9) uint16 array.
    :raises CoordinateError: a result outside 0..61439, or adding to a name component;
        the message names the row and component.
    """
    _coords_arg(arr)
    delta = _delta_arg(delta)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef const int32_t[:, ::1] dl = delta
    cdef uint16_t[:, ::1] o = out
    cdef int j, badj = -1
    cdef Py_ssize_t badi = -1
    cdef int64_t v
    with nogil:
        for i in range(n):
            for j in range(NDIM):
                if dl[0, j] == DELTA_ADD:
                    if dl[1, j] == 0:
                        o[i, j] = a[i, j]
                        continue
                    v = <int64_t>a[i, j] + dl[1, j]
                    if a[i, j] > MAX_NUMERIC or v < 0 or v > MAX_NUMERIC:
                        badi = i
                        badj = j
                        break
                    o[i, j] = <uint16_t>v
                elif dl[0, j] == DELTA_SET:
                    o[i, j] = <uint16_t>dl[1, j]
                else:
                    o[i, j] = a[i, j]
            if badj >= 0:
                break
    if badj >= 0:
        old = int(arr[badi, badj])
        add = int(delta[1, badj])
        what = ("a name component cannot be added to" if old > MAX_NUMERIC
                else f"{old} {'+' if add >= 0 else '-'} {abs(add)} = {old + add} is outside 0..{MAX_NUMERIC}")
        raise CoordinateError(f"delta leaves the coordinate range at row {badi}, "
                              f"component {badj + 1} ({COMPONENTS[badj]}): {what}")
    return out


# ---------------------------------------------------------------------------------------
# Hashing: xxh64 (bit-exact with the xxhash package) and jump consistent hash.
# ---------------------------------------------------------------------------------------

cdef uint64_t P1 = 0x9E3779B185EBCA87ULL
cdef uint64_t P2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t P3 = 0x165667B19E3779F9ULL
cdef uint64_t P4 = 0x85EBCA77C2B2AE63ULL
cdef uint64_t P5 = 0x27D4EB2F165667C5ULL


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const unsigned char* p) noexcept nogil:
    # Little-endian read assembled byte by byte: correct on any host byte order.
    return (<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) \
        | (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) \
        | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56)


cdef inline uint64_t _read32(const unsigned char* p) noexcept nogil:
    return (<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) \
        | (<uint64_t>p[3] << 24)


cdef inline uint64_t _round(uint64_t acc, uint64_t inp) noexcept nogil:
    acc += inp * P2
    acc = _rotl(acc, 31)
    return acc * P1


cdef inline uint64_t _merge(uint64_t acc, uint64_t val) noexcept nogil:
    acc ^= _round(0, val)
    return acc * P1 + P4


cdef uint64_t _xxh64(const unsigned char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    cdef const unsigned char* end = p + n
    cdef uint64_t h, v1, v2, v3, v4
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        while p + 32 <= end:
            v1 = _round(v1, _read64(p))
            v2 = _round(v2, _read64(p + 8))
            v3 = _round(v3, _read64(p + 16))
            v4 = _round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + P5
    h += <uint64_t>n
    while p + 8 <= end:
        h ^= _round(0, _read64(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h ^= _read32(p) * P1
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h ^= (<uint64_t>p[0]) * P5
        h = _rotl(h, 11) * P1
        p += 1
    h ^= h >> 33
    h *= P2
    h ^= h >> 29
    h *= P3
    h ^= h >> 32
    return h


cdef inline int32_t _jump(uint64_t key, int32_t n) noexcept nogil:
    cdef int64_t b = -1, j = 0
    while j < n:
        b = j
        key = key * 2862933555777941757ULL + 1
        j = <int64_t>((b + 1) * (<double>(1LL << 31) / <double>((key >> 33) + 1)))
    return <int32_t>b


def xxh64(data, uint64_t seed=0):
    """xxHash64 of a bytes-like object; equal to ``xxhash.xxh64_intdigest(data, seed)``.

    :raises InterfaceError: data is not bytes-like.
    """
    cdef const unsigned char[::1] v
    try:
        if data is None:
            raise TypeError
        v = data
    except (TypeError, ValueError):
        raise InterfaceError(f"xxh64 needs bytes, got {type(data).__name__}") from None
    if v.shape[0] == 0:
        return _xxh64(<const unsigned char*>b"", 0, seed)
    return _xxh64(&v[0], v.shape[0], seed)


def jump_hash(uint64_t key, int32_t n):
    """Jump consistent hash (Lamping & Veach) of a 64-bit key into n buckets.

    :returns: bucket in 0..n-1.
    :raises InterfaceError: n < 1.
    """
    if n < 1:
        raise InterfaceError(f"number of buckets must be >= 1, got {n}")
    return _jump(key, n)


@cython.boundscheck(False)
@cython.wraparound(False)
def jump_hash_many(keys, int32_t n):
    """Jump consistent hash of every key of a uint64 array into n buckets.

    :returns: (N,) int32 buckets.
    """
    if n < 1:
        raise InterfaceError(f"number of buckets must be >= 1, got {n}")
    if not isinstance(keys, np.ndarray) or keys.dtype != np.uint64 or keys.ndim != 1:
        raise InterfaceError("keys must be a 1-d uint64 array")
    keys = np.ascontiguousarray(keys)
    cdef Py_ssize_t i, m = keys.shape[0]
    out = np.empty(m, dtype=np.int32)
    if m == 0:
        return out
    cdef const uint64_t[::1] kv = keys
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = _jump(kv[i], n)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def prefix_hashes(arr, int level=3, uint64_t seed=0):
    """xxh64 of each row's packed first ``level`` components (2*level big-endian bytes).

    :param arr: (N, 9) uint16 coordinates.
    :param level: 1..9 components hashed.
    :returns: (N,) uint64.
    """
    _coords_arg(arr)
    if not 1 <= level <= NDIM:
        raise InterfaceError(f"level must be in 1..9, got {level}")
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef uint64_t[::1] o = out
    cdef unsigned char buf[KEY_BYTES]
    with nogil:
        for i in range(n):
            _pack_row(&a[i, 0], buf)
            o[i] = _xxh64(buf, 2 * level, seed)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def route(arr, int32_t n, int level=3):
    """CROUTE: the node (0..n-1) owning each coordinate.

    ``jump_hash(xxh64(packed first `level` components, seed 0), n)``, so a whole subtree
    sharing those components lands on one node and every client agrees.

    :returns: (N,) int32.
    """
    if n < 1:
        raise InterfaceError(f"number of nodes must be >= 1, got {n}")
    h = prefix_hashes(arr, level)
    return jump_hash_many(h, n)


@cython.boundscheck(False)
@cython.wraparound(False)
def moe(arr, int32_t n, int top_k=1):
    """CMOE over token coordinates: hash routing of each token to experts.

    Expert r of a token is ``jump_hash(xxh64(packed token, seed=r'), n)`` for the r-th
    seed r' that yields an expert not chosen yet (seeds 0, 1, 2, ...; after 16*top_k
    seeds the lowest unused experts fill in, so the result is always defined).

    :param arr: (N, 9) uint16 token coordinates.
    :param n: number of experts (>= 1).
    :param top_k: experts per token (1..n).
    :returns: (N,) int32 when top_k == 1, else (N, top_k) int32.
    """
    _coords_arg(arr)
    if n < 1:
        raise InterfaceError(f"number of experts must be >= 1, got {n}")
    if not 1 <= top_k <= n:
        raise InterfaceError(f"top_k must be in 1..{n}, got {top_k}")
    cdef Py_ssize_t i, m = arr.shape[0]
    out = np.empty((m, top_k), dtype=np.int32)
    cdef const uint16_t[:, ::1] a
    cdef int32_t[:, ::1] o = out
    cdef unsigned char buf[KEY_BYTES]
    if m:
        a = arr
        with nogil:
            for i in range(m):
                _pack_row(&a[i, 0], buf)
                _moe_row(buf, KEY_BYTES, n, top_k, &o[i, 0])
    return out[:, 0].copy() if top_k == 1 else out


cdef void _moe_row(const unsigned char* buf, Py_ssize_t nbytes, int32_t n, int top_k,
                   int32_t* out) noexcept nogil:
    cdef int got = 0, r, t
    cdef int32_t e, cand
    cdef bint dup
    for r in range(16 * top_k):
        if got == top_k:
            return
        e = _jump(_xxh64(buf, nbytes, <uint64_t>r), n)
        dup = False
        for t in range(got):
            if out[t] == e:
                dup = True
                break
        if not dup:
            out[got] = e
            got += 1
    cand = 0
    while got < top_k:
        dup = False
        for t in range(got):
            if out[t] == cand:
                dup = True
                break
        if not dup:
            out[got] = cand
            got += 1
        cand += 1


def moe_pattern(pattern, int32_t n, int top_k=1):
    """CMOE for one token given as a pattern: hashes its bounds.

    A pattern whose components are all concrete hashes exactly like that coordinate;
    otherwise the 36 bytes packed lo || packed hi are hashed.

    :returns: int expert (top_k == 1) or a list of top_k experts.
    """
    pattern = _pattern_arg(pattern)
    if n < 1:
        raise InterfaceError(f"number of experts must be >= 1, got {n}")
    if not 1 <= top_k <= n:
        raise InterfaceError(f"top_k must be in 1..{n}, got {top_k}")
    cdef const uint16_t[:, ::1] p = pattern
    cdef unsigned char buf[2 * KEY_BYTES]
    cdef Py_ssize_t nbytes = KEY_BYTES
    _pack_row(&p[0, 0], buf)
    if not (pattern[0] == pattern[1]).all():
        _pack_row(&p[1, 0], buf + KEY_BYTES)
        nbytes = 2 * KEY_BYTES
    out = np.empty(top_k, dtype=np.int32)
    cdef int32_t[::1] o = out
    _moe_row(buf, nbytes, n, top_k, &o[0])
    return int(out[0]) if top_k == 1 else [int(x) for x in out]


# ---------------------------------------------------------------------------------------
# Sorted-array index primitives (used by the engine): lexicographic binary and galloping
# search over (N, 9) word arrays, and the two pattern scans with skipping.
# ---------------------------------------------------------------------------------------

cdef inline Py_ssize_t _lower_bound(const uint16_t* base, Py_ssize_t lo, Py_ssize_t hi,
                                    const uint16_t* key) noexcept nogil:
    """First index in [lo, hi) whose row is >= key."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if lex_cmp(base + NDIM * mid, key) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _gallop(const uint16_t* base, Py_ssize_t start, Py_ssize_t n,
                               const uint16_t* key) noexcept nogil:
    """First index >= start whose row is >= key, searching outwards from start.

    Cost grows with the log of the distance jumped, not of the array size: skips in a
    scan are usually short."""
    cdef Py_ssize_t step = 1, lo = start, hi
    if lo >= n or lex_cmp(base + NDIM * lo, key) >= 0:
        return lo
    while True:
        hi = lo + step
        if hi >= n:
            return _lower_bound(base, lo + 1, n, key)
        if lex_cmp(base + NDIM * hi, key) >= 0:
            return _lower_bound(base, lo + 1, hi + 1, key)
        lo = hi
        step <<= 1


def lower_bound(sorted_arr, key):
    """First row index of a lexicographically sorted (N, 9) array that is >= key.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted.
    :param key: (9,) uint16.
    :returns: int in 0..N.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    key = _coord_arg(key, "key")
    cdef Py_ssize_t n = sorted_arr.shape[0]
    if n == 0:
        return 0
    cdef const uint16_t[:, ::1] a = sorted_arr
    cdef const uint16_t[::1] k = key
    return _lower_bound(&a[0, 0], 0, n, &k[0])


cdef bint _lex_next(const uint16_t* c, const uint16_t* lo, const uint16_t* hi,
                    uint16_t* out) noexcept nogil:
    """Smallest coordinate >= c (lexicographic) inside the box; False if none."""
    cdef int j, i
    for j in range(NDIM):
        if c[j] < lo[j]:
            memcpy(out, c, sizeof(uint16_t) * j)
            memcpy(out + j, lo + j, sizeof(uint16_t) * (NDIM - j))
            return True
        if c[j] > hi[j]:
            # carry: bump the deepest earlier component that still has room
            i = j - 1
            while i >= 0 and c[i] >= hi[i]:
                i -= 1
            if i < 0:
                return False
            memcpy(out, c, sizeof(uint16_t) * i)
            out[i] = c[i] + 1
            memcpy(out + i + 1, lo + i + 1, sizeof(uint16_t) * (NDIM - i - 1))
            return True
    memcpy(out, c, sizeof(uint16_t) * NDIM)
    return True


cdef enum:
    STEP_BEFORE_SKIP = 4   # rows stepped linearly before a skip is computed


cdef tuple _skip_scan(const uint16_t* kb, const uint16_t* cb, Py_ssize_t n,
                      const uint16_t* lo, const uint16_t* hi, bint zorder,
                      Py_ssize_t i, Py_ssize_t limit):
    """The scan loop shared by :func:`lex_scan` and :func:`z_scan`.

    ``kb`` holds the sorted keys (coordinates themselves, or Morton keys), ``cb`` the
    coordinates in the same order (the same array for the lexicographic index). From
    row i: stop past the box's high key, emit rows inside the box, step a few rows past
    misses, then jump (galloping search) to the next key that can be inside: the
    lexicographic successor in the box, or BIGMIN in Z order.

    Returns (int64 indices, number of jumps)."""
    cdef uint16_t kmax[NDIM]
    cdef uint16_t nxt[NDIM]
    cdef uint16_t knxt[NDIM]
    cdef Py_ssize_t cap = 64, cnt = 0, seeks = 0
    cdef int misses = 0
    out = np.empty(cap, dtype=np.int64)
    cdef int64_t[::1] o = out
    if zorder:
        _morton_row(hi, kmax)
    else:
        memcpy(kmax, hi, sizeof(uint16_t) * NDIM)
    while i < n:
        if lex_cmp(kb + NDIM * i, kmax) > 0:
            break
        if in_box(cb + NDIM * i, lo, hi):
            if cnt == cap:
                cap *= 2
                out = np.resize(out, cap)
                o = out
            o[cnt] = i
            cnt += 1
            if cnt == limit:
                break
            i += 1
            misses = 0
            continue
        misses += 1
        if misses < STEP_BEFORE_SKIP:
            i += 1
            continue
        if zorder:
            if not _bigmin(cb + NDIM * i, lo, hi, nxt):
                break
            _morton_row(nxt, knxt)
        else:
            if not _lex_next(cb + NDIM * i, lo, hi, knxt):
                break
            if lex_cmp(knxt, kb + NDIM * i) <= 0:
                i += 1
                continue
        i = _gallop(kb, i + 1, n, knxt)
        seeks += 1
        misses = 0
    return out[:cnt].copy(), seeks


@cython.boundscheck(False)
@cython.wraparound(False)
def lex_scan(sorted_arr, pattern, Py_ssize_t start=0, Py_ssize_t limit=-1):
    """Row indices of a lexicographically sorted array that match the pattern.

    Seeks to the first row >= the box's low corner, steps a few rows, and when it meets
    a row outside the box jumps (galloping search) to the next coordinate that could be
    inside. Results come out in coordinate order.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted lexicographically.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :param start: first row index to consider (for paging).
    :param limit: stop after this many matches (-1: no limit).
    :returns: ``(idx, seeks)``: int64 matching row indices and the number of jumps made.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t n = sorted_arr.shape[0], i
    if n == 0 or limit == 0 or (pattern[0] > pattern[1]).any():
        return np.empty(0, dtype=np.int64), 0
    cdef const uint16_t[:, ::1] a = sorted_arr
    cdef const uint16_t[:, ::1] p = pattern
    cdef const uint16_t* base = &a[0, 0]
    i = _gallop(base, start, n, &p[0, 0]) if start > 0 else _lower_bound(base, 0, n, &p[0, 0])
    return _skip_scan(base, base, n, &p[0, 0], &p[1, 0], False, i, limit)


@cython.boundscheck(False)
@cython.wraparound(False)
def z_scan(zkeys, zcoords, pattern, Py_ssize_t limit=-1):
    """Row indices of a Z-ordered index that match the pattern, with BIGMIN skipping.

    Seeks to the first key >= Z(lo corner), steps a few keys, and when a key lies
    outside the box jumps to BIGMIN (the next Z key inside the box) by galloping search;
    stops past Z(hi corner). Results come out in Z order.

    :param zkeys: C-contiguous (N, 9) uint16 Morton keys, sorted.
    :param zcoords: (N, 9) uint16 coordinates in the same row order.
    :param pattern: (2, 9) uint16 inclusive bounds.
    :param limit: stop after this many matches (-1: no limit).
    :returns: ``(idx, seeks)``: int64 matching row indices and the number of jumps made.
    """
    _coords_arg(zkeys, "zkeys")
    _coords_arg(zcoords, "zcoords")
    pattern = _pattern_arg(pattern)
    cdef Py_ssize_t n = zkeys.shape[0]
    if zcoords.shape[0] != n:
        raise InterfaceError("zkeys and zcoords must have the same length")
    if n == 0 or limit == 0 or (pattern[0] > pattern[1]).any():
        return np.empty(0, dtype=np.int64), 0
    cdef const uint16_t[:, ::1] zk = zkeys
    cdef const uint16_t[:, ::1] zc = zcoords
    cdef const uint16_t[:, ::1] p = pattern
    cdef uint16_t zmin[NDIM]
    _morton_row(&p[0, 0], zmin)
    return _skip_scan(&zk[0, 0], &zc[0, 0], n, &p[0, 0], &p[1, 0], True,
                      _lower_bound(&zk[0, 0], 0, n, zmin), limit)


def lex_sort_order(arr):
    """Permutation that sorts an (N, 9) uint16 array lexicographically (stable).

    :returns: (N,) int64 indices.
    """
    _coords_arg(arr)
    return np.lexsort(tuple(arr[:, j] for j in range(NDIM - 1, -1, -1)))


@cython.boundscheck(False)
@cython.wraparound(False)
def merge_sorted(a_keys, a_keep, b_keys, a_vals=None, b_vals=None):
    """Merge two lexicographically sorted (N, 9) arrays, dropping rows of ``a`` not kept.

    Keys present in both are taken once (from ``b``). Optional value arrays of the same
    (N, 9) shape travel with their keys (the Z index carries coordinates with its keys).

    :param a_keys: sorted (Na, 9) uint16.
    :param a_keep: (Na,) bool mask, or None to keep all of a.
    :param b_keys: sorted (Nb, 9) uint16.
    :returns: ``merged_keys`` or ``(merged_keys, merged_vals)`` when values are given.
    """
    _coords_arg(a_keys, "a_keys")
    _coords_arg(b_keys, "b_keys")
    cdef bint vals = a_vals is not None
    if vals:
        _coords_arg(a_vals, "a_vals")
        _coords_arg(b_vals, "b_vals")
    cdef Py_ssize_t na = a_keys.shape[0], nb = b_keys.shape[0]
    # The loops below read a_keep[i], a_vals[i], b_vals[j] without bounds checks.
    if vals and (a_vals.shape[0] != na or b_vals.shape[0] != nb):
        raise InterfaceError("a_vals/b_vals must have as many rows as a_keys/b_keys")
    if a_keep is None:
        a_keep = np.ones(na, dtype=np.bool_)
    elif not isinstance(a_keep, np.ndarray) or a_keep.dtype != np.bool_ or a_keep.shape != (na,):
        raise InterfaceError(f"a_keep must be None or a ({na},) bool array")
    cdef const uint8_t[::1] keep = np.ascontiguousarray(a_keep).view(np.uint8)
    out = np.empty((na + nb, NDIM), dtype=np.uint16)
    outv = np.empty((na + nb, NDIM), dtype=np.uint16) if vals else out
    cdef uint16_t[:, ::1] o = out
    cdef uint16_t[:, ::1] ov = outv
    cdef const uint16_t[:, ::1] ak
    cdef const uint16_t[:, ::1] bk
    cdef const uint16_t[:, ::1] av
    cdef const uint16_t[:, ::1] bv
    # Empty arrays cannot be viewed through a pointer: pad them with one dummy row.
    ak = a_keys if na else np.zeros((1, NDIM), np.uint16)
    bk = b_keys if nb else np.zeros((1, NDIM), np.uint16)
    av = (a_vals if na else np.zeros((1, NDIM), np.uint16)) if vals else ak
    bv = (b_vals if nb else np.zeros((1, NDIM), np.uint16)) if vals else bk
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef int c
    with nogil:
        while i < na or j < nb:
            if i < na and not keep[i]:
                i += 1
                continue
            if j >= nb:
                c = -1
            elif i >= na:
                c = 1
            else:
                c = lex_cmp(&ak[i, 0], &bk[j, 0])
            if c < 0:
                memcpy(&o[k, 0], &ak[i, 0], 2 * NDIM)
                if vals:
                    memcpy(&ov[k, 0], &av[i, 0], 2 * NDIM)
                i += 1
            else:
                memcpy(&o[k, 0], &bk[j, 0], 2 * NDIM)
                if vals:
                    memcpy(&ov[k, 0], &bv[j, 0], 2 * NDIM)
                j += 1
                if c == 0:
                    i += 1
            k += 1
    if vals:
        return out[:k].copy(), outv[:k].copy()
    return out[:k].copy()


# ---------------------------------------------------------------------------------------
# Posting-list / bitmap kernels for the engine's per-component index.
# ---------------------------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def match_rows(arr, rows, pattern):
    """The entries of ``rows`` whose row of ``arr`` matches the pattern (order kept).

    :param arr: C-contiguous (N, 9) uint16.
    :param rows: 1-d int32 or int64 array of row indices into arr (all < N).
    :param pattern: (2, 9) uint16 inclusive bounds.
    :returns: int64 array, a subsequence of rows.
    :raises InterfaceError: wrong types, or a row index out of range.
    """
    _coords_arg(arr)
    pattern = _pattern_arg(pattern)
    if not isinstance(rows, np.ndarray) or rows.ndim != 1:
        raise InterfaceError("rows must be a 1-d integer array")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cdef Py_ssize_t n = arr.shape[0], m = rows.shape[0], i, cnt = 0
    out = np.empty(m, dtype=np.int64)
    if m == 0 or n == 0:
        return out[:0]
    if rows.min() < 0 or rows.max() >= n:
        raise InterfaceError("row index out of range")
    cdef const uint16_t[:, ::1] a = arr
    cdef const uint16_t[:, ::1] p = pattern
    cdef const int64_t[::1] r = rows
    cdef int64_t[::1] o = out
    with nogil:
        for i in range(m):
            if in_box(&a[r[i], 0], &p[0, 0], &p[1, 0]):
                o[cnt] = r[i]
                cnt += 1
    return out[:cnt]


@cython.boundscheck(False)
@cython.wraparound(False)
def bitmap_and_rows(bitmaps, Py_ssize_t nbits):
    """AND several bitmaps (uint64 arrays, bit i of word w = row 64*w + i) and list the set rows.

    :param bitmaps: non-empty list of equally long 1-d uint64 arrays.
    :param nbits: number of valid rows (bits past it are ignored).
    :returns: int64 ascending row indices.
    """
    cdef Py_ssize_t nb = len(bitmaps), w, nw, k, cnt = 0, cap = 256
    if nb == 0:
        raise InterfaceError("bitmap_and_rows needs at least one bitmap")
    mats = np.ascontiguousarray(np.stack(bitmaps), dtype=np.uint64) if nb > 1 else \
        np.ascontiguousarray(bitmaps[0], dtype=np.uint64).reshape(1, -1)
    nw = mats.shape[1]
    cdef const uint64_t[:, ::1] mv = mats
    out = np.empty(cap, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef uint64_t word
    cdef int64_t row
    for w in range(nw):
        word = mv[0, w]
        k = 1
        while word and k < nb:
            word &= mv[k, w]
            k += 1
        while word:
            row = 64 * w + __builtin_ctzll(word)
            word &= word - 1
            if row >= nbits:
                break
            if cnt == cap:
                cap *= 2
                out = np.resize(out, cap)
                o = out
            o[cnt] = row
            cnt += 1
    return out[:cnt].copy()


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil


@cython.boundscheck(False)
@cython.wraparound(False)
def window_spans(sorted_arr, patterns):
    """For each pattern, the span of a sorted array between its box corners.

    Row span i is [starts[i], ends[i]): the rows lexicographically between pattern i's
    low and high corners, a superset of its matches. ``exact[i]`` says every row of the
    span matches (the usual case for windows over one component), so callers need no
    per-row check for it.

    :param sorted_arr: C-contiguous (N, 9) uint16, sorted lexicographically.
    :param patterns: C-contiguous (Q, 2, 9) uint16 patterns.
    :returns: ``(starts, ends, exact)``: int64, int64 and bool arrays of length Q.
    """
    _coords_arg(sorted_arr, "sorted_arr")
    if not isinstance(patterns, np.ndarray) or patterns.dtype != np.uint16 or \
            patterns.ndim != 3 or patterns.shape[1:] != (2, NDIM):
        raise InterfaceError("patterns must be a (Q, 2, 9) uint16 array")
    patterns = np.ascontiguousarray(patterns)
    cdef Py_ssize_t n = sorted_arr.shape[0], q = patterns.shape[0], i, r, s, e
    starts = np.zeros(q, dtype=np.int64)
    ends = np.zeros(q, dtype=np.int64)
    exact = np.ones(q, dtype=np.bool_)
    if q == 0 or n == 0:
        return starts, ends, exact
    cdef const uint16_t[:, ::1] a = sorted_arr
    cdef const uint16_t[:, :, ::1] p = patterns
    cdef int64_t[::1] st = starts
    cdef int64_t[::1] en = ends
    cdef uint8_t[::1] ex = exact.view(np.uint8)
    cdef const uint16_t* base = &a[0, 0]
    with nogil:
        for i in range(q):
            s = _lower_bound(base, 0, n, &p[i, 0, 0])
            e = _lower_bound(base, s, n, &p[i, 1, 0])
            if e < n and lex_cmp(base + NDIM * e, &p[i, 1, 0]) == 0:
                e += 1
            st[i] = s
            en[i] = e
            for r in range(s, e):
                if not in_box(base + NDIM * r, &p[i, 0, 0], &p[i, 1, 0]):
                    ex[i] = 0
                    break
    return starts, ends, exact


# ---------------------------------------------------------------------------------------
# Wire fast paths (used by vtpu.server and vtpu.netclient).
#
# The per-item Python work of the network path (one Scroll per key, one msgpack object
# per field, one interpreter round per request frame) dominates batched and pipelined
# calls. These functions do that work in one C loop each. They produce and accept
# exactly the bytes the generic msgpack codec (vtpu.protocol) would, so the wire format
# does not change; anything outside the simple shapes they know is left to the generic
# code (they return None or stop early), never guessed at.
# ---------------------------------------------------------------------------------------

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New, PyList_SET_ITEM, PyList_GET_ITEM
from libc.string cimport memset

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    PyObject* PyType_GenericAlloc(PyTypeObject* t, Py_ssize_t n)

cdef enum:
    _T_OBJECT_EX = 16  # structmember.h: a PyObject* slot, AttributeError when unset
    _SCROLL_NSLOTS = 6

cdef tuple _SCROLL_SLOTS = ("key", "content", "version", "created_at", "updated_at", "_names")


cdef class _Slots:
    """Byte offsets of a ``__slots__`` class's fields, to read and fill instances directly.

    Only used when the class's slots are exactly the ones asked for and are plain object
    slots; otherwise ``ok`` is false and callers use ordinary attribute access.
    """
    cdef object cls
    cdef Py_ssize_t off[_SCROLL_NSLOTS]
    cdef bint ok

    def __init__(self, cls, tuple names):
        self.cls = cls
        self.ok = False
        import types
        if len(names) != _SCROLL_NSLOTS or tuple(getattr(cls, "__slots__", ())) != names:
            return
        for i, name in enumerate(names):
            d = cls.__dict__.get(name)
            if type(d) is not types.MemberDescriptorType:
                return
            if (<PyMemberDescrObject*>d).d_member.type != _T_OBJECT_EX:
                return
            self.off[i] = (<PyMemberDescrObject*>d).d_member.offset
        self.ok = True

    cdef inline PyObject* get(self, object obj, int i) noexcept:
        # Borrowed reference, NULL when the slot is unset.
        return (<PyObject**>((<char*><PyObject*>obj) + self.off[i]))[0]

    cdef object new(self, object key, object content, object version, object created,
                    object updated, object names):
        # Same state as cls(key, content, version, created, updated, names): Scroll's
        # __init__ only stores its six arguments, which is what this does without the
        # interpreter round.
        cdef PyTypeObject* tp = <PyTypeObject*>self.cls
        cdef PyObject* p = PyType_GenericAlloc(tp, 0)
        if p == NULL:
            raise MemoryError()
        obj = <object>p
        Py_DECREF(obj)  # tp_alloc returned a new reference, <object> took another
        self._set(p, 0, key)
        self._set(p, 1, content)
        self._set(p, 2, version)
        self._set(p, 3, created)
        self._set(p, 4, updated)
        self._set(p, 5, names)
        return obj

    cdef inline void _set(self, PyObject* p, int i, object v) noexcept:
        Py_INCREF(v)
        (<PyObject**>((<char*>p) + self.off[i]))[0] = <PyObject*>v


cdef dict _slots_cache = {}

cdef _Slots _scroll_slots(cls):
    s = _slots_cache.get(cls)
    if s is None:
        s = _Slots(cls, _SCROLL_SLOTS)
        if len(_slots_cache) < 16:
            _slots_cache[cls] = s
    return <_Slots>s


# -- a growable output buffer ------------------------------------------------------------

cdef struct _Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap

cdef int _buf_init(_Buf* b, Py_ssize_t cap) except -1:
    b.p = <char*>PyMem_Malloc(cap)
    if b.p == NULL:
        raise MemoryError()
    b.n = 0
    b.cap = cap
    return 0

cdef int _buf_grow(_Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap
    while cap < b.n + extra:
        cap *= 2
    cdef char* q = <char*>PyMem_Realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    return 0

cdef inline int _buf_reserve(_Buf* b, Py_ssize_t extra) except -1:
    if b.n + extra > b.cap:
        _buf_grow(b, extra)
    return 0

cdef inline int _wput(_Buf* b, const char* s, Py_ssize_t k) except -1:
    _buf_reserve(b, k)
    memcpy(b.p + b.n, s, k)
    b.n += k
    return 0

cdef inline void _be16(char* o, uint32_t v) noexcept nogil:
    o[0] = <char>(v >> 8); o[1] = <char>v

cdef inline void _be32(char* o, uint32_t v) noexcept nogil:
    o[0] = <char>(v >> 24); o[1] = <char>(v >> 16); o[2] = <char>(v >> 8); o[3] = <char>v

cdef inline void _be64(char* o, uint64_t v) noexcept nogil:
    _be32(o, <uint32_t>(v >> 32)); _be32(o + 4, <uint32_t>v)

cdef inline uint32_t _rd16(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]

cdef inline uint32_t _rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline uint64_t _rd64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>_rd32(p) << 32) | _rd32(p + 4)

cdef int _wput_uint(_Buf* b, uint64_t v) except -1:
    # msgpack's shortest unsigned form, as msgpack-python writes it.
    _buf_reserve(b, 9)
    cdef char* o = b.p + b.n
    if v < 0x80:
        o[0] = <char>v; b.n += 1
    elif v < 0x100:
        o[0] = <char>0xCC; o[1] = <char>v; b.n += 2
    elif v < 0x10000:
        o[0] = <char>0xCD; _be16(o + 1, <uint32_t>v); b.n += 3
    elif v < 0x100000000ULL:
        o[0] = <char>0xCE; _be32(o + 1, <uint32_t>v); b.n += 5
    else:
        o[0] = <char>0xCF; _be64(o + 1, v); b.n += 9
    return 0

cdef int _wput_arrhdr(_Buf* b, Py_ssize_t n) except -1:
    _buf_reserve(b, 5)
    cdef char* o = b.p + b.n
    if n < 16:
        o[0] = <char>(0x90 | n); b.n += 1
    elif n < 0x10000:
        o[0] = <char>0xDC; _be16(o + 1, <uint32_t>n); b.n += 3
    else:
        o[0] = <char>0xDD; _be32(o + 1, <uint32_t>n); b.n += 5
    return 0

cdef int _wput_bin(_Buf* b, const char* s, Py_ssize_t n) except -1:
    _buf_reserve(b, n + 5)
    cdef char* o = b.p + b.n
    if n < 0x100:
        o[0] = <char>0xC4; o[1] = <char>n; b.n += 2
    elif n < 0x10000:
        o[0] = <char>0xC5; _be16(o + 1, <uint32_t>n); b.n += 3
    else:
        o[0] = <char>0xC6; _be32(o + 1, <uint32_t>n); b.n += 5
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0

cdef int _wput_double(_Buf* b, double d) except -1:
    _buf_reserve(b, 9)
    cdef uint64_t u
    memcpy(&u, &d, 8)
    b.p[b.n] = <char>0xCB
    _be64(b.p + b.n + 1, u)
    b.n += 9
    return 0

cdef int _wput_value(_Buf* b, object v, object packb) except -1:
    """Append one value: bytes, str, float and positive int inline, anything else
    through ``packb`` (the generic codec, which also raises its errors)."""
    cdef Py_ssize_t n
    cdef const char* s
    cdef char* o
    cdef int overflow = 0
    cdef long long x
    if PyBytes_CheckExact(v):
        _wput_bin(b, PyBytes_AS_STRING(v), len(<bytes>v))
    elif PyUnicode_CheckExact(v):
        try:
            s = PyUnicode_AsUTF8AndSize(v, &n)
        except UnicodeError:
            s = NULL
        if s == NULL:
            raw = packb(v)  # lone surrogates: the codec's own error
            _wput(b, PyBytes_AS_STRING(raw), len(<bytes>raw))
            return 0
        _buf_reserve(b, n + 5)
        o = b.p + b.n
        if n < 32:
            o[0] = <char>(0xA0 | n); b.n += 1
        elif n < 0x100:
            o[0] = <char>0xD9; o[1] = <char>n; b.n += 2
        elif n < 0x10000:
            o[0] = <char>0xDA; _be16(o + 1, <uint32_t>n); b.n += 3
        else:
            o[0] = <char>0xDB; _be32(o + 1, <uint32_t>n); b.n += 5
        memcpy(b.p + b.n, s, n)
        b.n += n
    elif PyFloat_CheckExact(v):
        _wput_double(b, PyFloat_AS_DOUBLE(v))
    elif v is None:
        _wput(b, "\xc0", 1)
    elif PyLong_CheckExact(v):
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0 and x >= 0:
            _wput_uint(b, <uint64_t>x)
        else:
            raw = packb(v)
            _wput(b, PyBytes_AS_STRING(raw), len(<bytes>raw))
    else:
        raw = packb(v)
        _wput(b, PyBytes_AS_STRING(raw), len(<bytes>raw))
    return 0


cdef object _slot_or_attr(_Slots sl, object s, int i, str name):
    cdef PyObject* p
    if sl.ok and type(s) is sl.cls:
        p = sl.get(s, i)
        if p != NULL:
            return <object>p
    return getattr(s, name)


@cython.boundscheck(False)
@cython.wraparound(False)
def scroll_columns_msgpack(dict m, bytes blob, object packb, object scroll_cls):
    """Look up N packed keys in a ``{key: Scroll}`` map and encode the result as the
    column-wise scroll list of the wire protocol, in one C loop.

    The bytes equal ``packb(vtpu.protocol.scrolls_to_wire([m.get(k) for k in keys]))``
    for the shapes handled here: ``[keys bin, [contents], [versions], [created],
    [updated]]`` with a zero key, nil content, version 0 and nil times for a missing key.

    :param m: the engine's map from 18-byte keys to Scroll objects.
    :param blob: N*18 bytes of packed keys.
    :param packb: the generic encoder, used for contents that are not bytes, str, float,
        None or non-negative int (and for its errors).
    :param scroll_cls: the Scroll class (its slots are read directly when it is exactly
        that class).
    :returns: the msgpack bytes, or None when the contents would be sent stacked (the
        first found content is a numpy array), which the generic encoder handles.
    :raises InterfaceError: if ``blob`` is not a multiple of 18 bytes.
    """
    cdef Py_ssize_t nb = len(blob)
    if nb % 18:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    cdef Py_ssize_t n = nb // 18, i
    cdef const char* kp = PyBytes_AS_STRING(blob)
    cdef _Slots sl = _scroll_slots(scroll_cls)
    cdef list found = PyList_New(n) if n else []
    cdef PyObject* hit
    cdef bint first = True
    for i in range(n):
        key = PyBytes_FromStringAndSize(kp + 18 * i, 18)
        hit = PyDict_GetItem(m, key)
        if hit == NULL:
            s = None
        else:
            s = <object>hit
            if first:
                first = False
                if isinstance(_slot_or_attr(sl, s, 1, "content"), np.ndarray):
                    return None
        Py_INCREF(s)
        PyList_SET_ITEM(found, i, s)
    cdef _Buf b
    _buf_init(&b, 64 + nb + 48 * n)
    try:
        _wput(&b, "\x95", 1)
        # keys: the request's keys, zeroed where nothing is stored
        _wput_bin(&b, kp, nb)
        for i in range(n):
            if <object>PyList_GET_ITEM(found, i) is None:
                memset(b.p + b.n - nb + 18 * i, 0, 18)
        _wput_arrhdr(&b, n)
        for i in range(n):
            s = <object>PyList_GET_ITEM(found, i)
            if s is None:
                _wput(&b, "\xc0", 1)
            else:
                _wput_value(&b, _slot_or_attr(sl, s, 1, "content"), packb)
        _wput_arrhdr(&b, n)
        for i in range(n):
            s = <object>PyList_GET_ITEM(found, i)
            _wput_value(&b, 0 if s is None else _slot_or_attr(sl, s, 2, "version"), packb)
        _wput_arrhdr(&b, n)
        for i in range(n):
            s = <object>PyList_GET_ITEM(found, i)
            _wput_value(&b, None if s is None else _slot_or_attr(sl, s, 3, "created_at"), packb)
        _wput_arrhdr(&b, n)
        for i in range(n):
            s = <object>PyList_GET_ITEM(found, i)
            _wput_value(&b, None if s is None else _slot_or_attr(sl, s, 4, "updated_at"), packb)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)


# -- reading msgpack -----------------------------------------------------------------------

cdef enum:
    _K_NIL = 0
    _K_BIN = 1
    _K_STR = 2
    _K_OTHER = 3


cdef Py_ssize_t _skip(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, int depth) noexcept nogil:
    """Position after the msgpack object at ``pos``, or -1 if malformed/truncated."""
    if pos >= end or depth > 64:
        return -1
    cdef unsigned char c = p[pos]
    cdef Py_ssize_t k = 0, cnt = 0, i
    if c < 0x80 or c >= 0xE0 or c == 0xC0 or c == 0xC2 or c == 0xC3:
        return pos + 1
    if 0xA0 <= c <= 0xBF:
        k = 1 + (c & 0x1F)
    elif c == 0xC4 or c == 0xD9:
        if pos + 2 > end:
            return -1
        k = 2 + p[pos + 1]
    elif c == 0xC5 or c == 0xDA:
        if pos + 3 > end:
            return -1
        k = 3 + _rd16(p + pos + 1)
    elif c == 0xC6 or c == 0xDB:
        if pos + 5 > end:
            return -1
        k = 5 + _rd32(p + pos + 1)
    elif c == 0xCA:
        k = 5
    elif c == 0xCB:
        k = 9
    elif c == 0xCC or c == 0xD0:
        k = 2
    elif c == 0xCD or c == 0xD1:
        k = 3
    elif c == 0xCE or c == 0xD2:
        k = 5
    elif c == 0xCF or c == 0xD3:
        k = 9
    elif c == 0xD4:
        k = 3
    elif c == 0xD5:
        k = 4
    elif c == 0xD6:
        k = 6
    elif c == 0xD7:
        k = 10
    elif c == 0xD8:
        k = 18
    elif c == 0xC7:
        if pos + 2 > end:
            return -1
        k = 3 + p[pos + 1]
    elif c == 0xC8:
        if pos + 3 > end:
            return -1
        k = 4 + _rd16(p + pos + 1)
    elif c == 0xC9:
        if pos + 5 > end:
            return -1
        k = 6 + _rd32(p + pos + 1)
    else:
        # containers
        if 0x90 <= c <= 0x9F:
            cnt = c & 0x0F; pos += 1
        elif 0x80 <= c <= 0x8F:
            cnt = 2 * (c & 0x0F); pos += 1
        elif c == 0xDC or c == 0xDE:
            if pos + 3 > end:
                return -1
            cnt = _rd16(p + pos + 1) * (2 if c == 0xDE else 1); pos += 3
        elif c == 0xDD or c == 0xDF:
            if pos + 5 > end:
                return -1
            cnt = (<Py_ssize_t>_rd32(p + pos + 1)) * (2 if c == 0xDF else 1); pos += 5
        else:
            return -1  # 0xC1 is never used
        for i in range(cnt):
            pos = _skip(p, pos, end, depth + 1)
            if pos < 0:
                return -1
        return pos
    if pos + k > end:
        return -1
    return pos + k


cdef inline Py_ssize_t _read_uint(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                  uint64_t* out) noexcept nogil:
    """Read an unsigned msgpack int; position after it, or -1 if it is not one."""
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if c < 0x80:
        out[0] = c
        return pos + 1
    if c == 0xCC and pos + 2 <= end:
        out[0] = p[pos + 1]
        return pos + 2
    if c == 0xCD and pos + 3 <= end:
        out[0] = _rd16(p + pos + 1)
        return pos + 3
    if c == 0xCE and pos + 5 <= end:
        out[0] = _rd32(p + pos + 1)
        return pos + 5
    if c == 0xCF and pos + 9 <= end:
        out[0] = _rd64(p + pos + 1)
        return pos + 9
    return -1


cdef inline Py_ssize_t _read_arrhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                    Py_ssize_t* n) noexcept nogil:
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if 0x90 <= c <= 0x9F:
        n[0] = c & 0x0F
        return pos + 1
    if c == 0xDC and pos + 3 <= end:
        n[0] = _rd16(p + pos + 1)
        return pos + 3
    if c == 0xDD and pos + 5 <= end:
        n[0] = _rd32(p + pos + 1)
        return pos + 5
    return -1


cdef inline Py_ssize_t _read_binhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                    Py_ssize_t* n) noexcept nogil:
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if c == 0xC4 and pos + 2 <= end:
        n[0] = p[pos + 1]
        pos += 2
    elif c == 0xC5 and pos + 3 <= end:
        n[0] = _rd16(p + pos + 1)
        pos += 3
    elif c == 0xC6 and pos + 5 <= end:
        n[0] = _rd32(p + pos + 1)
        pos += 5
    else:
        return -1
    if pos + n[0] > end:
        return -1
    return pos


cdef inline Py_ssize_t _read_strhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                    Py_ssize_t* n) noexcept nogil:
    cdef unsigned char c = p[pos]
    if 0xA0 <= c <= 0xBF:
        n[0] = c & 0x1F
        pos += 1
    elif c == 0xD9 and pos + 2 <= end:
        n[0] = p[pos + 1]
        pos += 2
    elif c == 0xDA and pos + 3 <= end:
        n[0] = _rd16(p + pos + 1)
        pos += 3
    elif c == 0xDB and pos + 5 <= end:
        n[0] = _rd32(p + pos + 1)
        pos += 5
    else:
        return -1
    if pos + n[0] > end:
        return -1
    return pos


cdef class ScrollList:
    """A read-only list of Scroll-or-None decoded lazily from a column-wise reply.

    Built by :func:`parse_scroll_columns` from the reply bytes of a batched read: the
    columns stay in one C array each, and a Scroll object is made the first time its
    index is read (then kept, so the same index gives the same object). It behaves like a
    list of Scroll/None: ``len``, indexing (negative too), slices (a list), iteration,
    ``in``, ``index``, ``count``, ``==`` with a list or another ScrollList, ``list(x)``.
    """
    cdef bytes body
    cdef Py_ssize_t n, keys_off
    cdef int64_t* starts
    cdef int64_t* ends
    cdef uint64_t* versions
    cdef double* created
    cdef double* updated
    cdef uint8_t* kinds
    cdef object names
    cdef object unpackb
    cdef _Slots slots
    cdef list cache

    def __cinit__(self):
        self.starts = self.ends = NULL
        self.versions = NULL
        self.created = self.updated = NULL
        self.kinds = NULL

    def __dealloc__(self):
        PyMem_Free(self.starts)
        PyMem_Free(self.ends)
        PyMem_Free(self.versions)
        PyMem_Free(self.created)
        PyMem_Free(self.updated)
        PyMem_Free(self.kinds)

    def __len__(self):
        return self.n

    cdef object _make(self, Py_ssize_t i):
        cdef const char* p = PyBytes_AS_STRING(self.body)
        if self.versions[i] == 0:
            return None
        key = PyBytes_FromStringAndSize(p + self.keys_off + 18 * i, 18)
        cdef int kind = self.kinds[i]
        cdef Py_ssize_t s = self.starts[i], e = self.ends[i]
        if kind == _K_BIN:
            content = PyBytes_FromStringAndSize(p + s, e - s)
        elif kind == _K_STR:
            content = (p + s)[:e - s].decode("utf-8")
        elif kind == _K_NIL:
            content = None
        else:
            content = self.unpackb(p[s:e])
        version = self.versions[i]
        created = self.created[i]
        updated = self.updated[i]
        if self.slots.ok:
            return self.slots.new(key, content, version, created, updated, self.names)
        return self.slots.cls(key, content, version, created, updated, self.names)

    cdef object _at(self, Py_ssize_t i):
        v = <object>PyList_GET_ITEM(self.cache, i)
        if v is _UNSET:
            v = self._make(i)
            self.cache[i] = v
        return v

    def __getitem__(self, idx):
        cdef Py_ssize_t i
        if isinstance(idx, slice):
            return [self._at(i) for i in range(*idx.indices(self.n))]
        i = idx
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("ScrollList index out of range")
        return self._at(i)

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            yield self._at(i)

    def __reversed__(self):
        cdef Py_ssize_t i
        for i in range(self.n - 1, -1, -1):
            yield self._at(i)

    def __contains__(self, x):
        cdef Py_ssize_t i
        for i in range(self.n):
            v = self._at(i)
            if v is x or v == x:
                return True
        return False

    def index(self, x):
        """Index of the first item equal to ``x``; raises ValueError if none."""
        cdef Py_ssize_t i
        for i in range(self.n):
            v = self._at(i)
            if v is x or v == x:
                return i
        raise ValueError(f"{x!r} is not in the list")

    def count(self, x):
        """How many items equal ``x``."""
        cdef Py_ssize_t i, c = 0
        for i in range(self.n):
            v = self._at(i)
            if v is x or v == x:
                c += 1
        return c

    def tolist(self):
        """All items as a plain list (every Scroll made now)."""
        return [self._at(i) for i in range(self.n)]

    def __eq__(self, other):
        if isinstance(other, ScrollList):
            other = (<ScrollList>other).tolist()
        elif not isinstance(other, (list, tuple)):
            return NotImplemented
        if isinstance(other, tuple):
            return False  # like list == tuple
        return self.tolist() == other

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __add__(self, other):
        return self.tolist() + list(other)

    def __radd__(self, other):
        return list(other) + self.tolist()

    def __repr__(self):
        return repr(self.tolist())

    def __reduce__(self):
        return (list, (self.tolist(),))


cdef object _UNSET = object()



@cython.boundscheck(False)
@cython.wraparound(False)
def parse_scroll_columns(body, Py_ssize_t pos, object scroll_cls, object names,
                         object unpackb):
    """Decode a column-wise scroll list (``[keys bin, [contents], [versions], [created],
    [updated]]``) at ``body[pos:]`` into a lazy :class:`ScrollList`.

    Only one pass over the bytes: contents are located, not decoded (bin and str
    contents are cut from the body when read; other values go through ``unpackb``).

    :param body: the reply bytes (kept alive by the result).
    :param pos: where the scroll list starts.
    :param scroll_cls: the Scroll class to build items with.
    :param names: the name table given to every Scroll.
    :param unpackb: the generic decoder for contents that are not bin/str/nil.
    :returns: ``(ScrollList, end position)``, or None if the value is not in this simple
        form (stacked ndarray contents, non-float times...): decode it generically then.
    :raises ProtocolError: if the bytes are truncated or the columns disagree in length.
    """
    if type(body) is not bytes:
        body = bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t end = len(<bytes>body), n = 0, cnt, i, kl, q
    cdef uint64_t u
    cdef double d
    if pos >= end or p[pos] != 0x95:
        return None
    pos += 1
    q = _read_binhdr(p, pos, end, &kl)
    if q < 0:
        return None
    if kl % 18:
        from vtpu.errors import ProtocolError
        raise ProtocolError("malformed scroll list: key blob is not a multiple of 18 bytes")
    n = kl // 18
    cdef ScrollList out = ScrollList.__new__(ScrollList)
    out.body = <bytes>body
    out.n = n
    out.keys_off = q
    out.names = names
    out.unpackb = unpackb
    out.slots = _scroll_slots(scroll_cls)
    cdef Py_ssize_t sz = n if n else 1
    out.starts = <int64_t*>PyMem_Malloc(sz * sizeof(int64_t))
    out.ends = <int64_t*>PyMem_Malloc(sz * sizeof(int64_t))
    out.versions = <uint64_t*>PyMem_Malloc(sz * sizeof(uint64_t))
    out.created = <double*>PyMem_Malloc(sz * sizeof(double))
    out.updated = <double*>PyMem_Malloc(sz * sizeof(double))
    out.kinds = <uint8_t*>PyMem_Malloc(sz)
    if (out.starts == NULL or out.ends == NULL or out.versions == NULL or
            out.created == NULL or out.updated == NULL or out.kinds == NULL):
        raise MemoryError()
    pos = q + kl
    # contents
    pos = _read_arrhdr(p, pos, end, &cnt)
    if pos < 0:
        return None  # stacked ndarray (an ext value), or truncated: generic path
    if cnt != n:
        return _bad_columns()
    cdef unsigned char c
    for i in range(n):
        if pos >= end:
            return _bad_columns()
        c = p[pos]
        if c == 0xC0:
            out.kinds[i] = _K_NIL
            out.starts[i] = out.ends[i] = pos
            pos += 1
            continue
        q = _read_binhdr(p, pos, end, &kl)
        if q >= 0:
            out.kinds[i] = _K_BIN
            out.starts[i] = q
            out.ends[i] = q + kl
            pos = q + kl
            continue
        q = _read_strhdr(p, pos, end, &kl)
        if q >= 0:
            out.kinds[i] = _K_STR
            out.starts[i] = q
            out.ends[i] = q + kl
            pos = q + kl
            continue
        q = _skip(p, pos, end, 0)
        if q < 0:
            return _bad_columns()
        out.kinds[i] = _K_OTHER
        out.starts[i] = pos
        out.ends[i] = q
        pos = q
    # versions
    pos = _read_arrhdr(p, pos, end, &cnt)
    if pos < 0 or cnt != n:
        return _bad_columns()
    for i in range(n):
        pos = _read_uint(p, pos, end, &out.versions[i])
        if pos < 0:
            return None  # not plain unsigned ints: let the generic decoder judge
    # created, updated: float64 for stored scrolls, nil for missing ones
    cdef double* col
    cdef int k
    for k in range(2):
        col = out.created if k == 0 else out.updated
        pos = _read_arrhdr(p, pos, end, &cnt)
        if pos < 0 or cnt != n:
            return _bad_columns()
        for i in range(n):
            if pos + 1 <= end and p[pos] == 0xC0 and out.versions[i] == 0:
                col[i] = 0.0
                pos += 1
            elif pos + 9 <= end and p[pos] == 0xCB:
                u = _rd64(p + pos + 1)
                memcpy(&d, &u, 8)
                col[i] = d
                pos += 9
            else:
                return None
    out.cache = PyList_New(n) if n else []
    for i in range(n):
        Py_INCREF(_UNSET)
        PyList_SET_ITEM(out.cache, i, _UNSET)
    return out, pos


cdef object _bad_columns():
    from vtpu.errors import ProtocolError
    raise ProtocolError("malformed scroll list: column lengths differ or bytes are truncated")


@cython.boundscheck(False)
@cython.wraparound(False)
def serve_requests(const unsigned char[::1] data, Py_ssize_t pos, Py_ssize_t end, dict m,
                   object put, object packb, object unpackb, object scroll_cls,
                   Py_ssize_t max_frame, Py_ssize_t out_limit, Py_ssize_t max_frames):
    """Answer a run of plain GET (and PUT) request frames in one C loop.

    Starting at ``data[pos]``, every complete frame whose body is exactly
    ``[msgid, "GET", [key]]`` (or ``[msgid, "PUT", [key, content]]`` when ``put`` is
    given and the key names no interned id) is executed and its reply frame appended to
    one output; the loop stops at the first frame of any other kind, at an incomplete
    frame, after ``max_frames`` frames, or after a PUT that raised. Replies are the bytes
    the generic encoder would produce.

    :param data: received bytes (a bytes/bytearray buffer).
    :param pos: offset of the next unread frame.
    :param end: end of the received bytes.
    :param m: the engine's map from 18-byte keys to Scroll objects (for GET).
    :param put: ``put(key, content) -> version`` (the engine's), or None to leave PUTs
        to the generic path.
    :param packb: the generic encoder (contents that are not bytes/str/float/None/int).
    :param unpackb: the generic decoder (PUT contents that are not bin/str/nil).
    :param scroll_cls: the Scroll class (its slots are read directly).
    :param max_frame: largest request body accepted; a larger frame is left to the
        generic path (which refuses it).
    :param out_limit: largest reply body to send; a GET whose reply would be larger is
        left to the generic path (which answers with a LIMIT error).
    :param max_frames: most frames to handle.
    :returns: ``(pos, replies, frames, wrote, error)``: the offset after the last handled
        frame, the reply frames as one bytes object (b"" if none), how many frames were
        handled, whether a PUT ran, and ``None`` or ``(msgid, exception)`` for a PUT that
        raised (its frame is consumed; the caller sends the error reply after
        ``replies``).
    """
    cdef const unsigned char* p = &data[0] if data.shape[0] else NULL
    cdef Py_ssize_t size, body, q, frame_start, count = 0, kl, cend
    cdef uint64_t msgid
    cdef bint is_put, wrote = False
    cdef _Slots sl = _scroll_slots(scroll_cls)
    cdef PyObject* hit
    cdef _Buf b
    cdef int j
    if end > data.shape[0]:
        end = data.shape[0]
    _buf_init(&b, 256)
    error = None
    try:
        while count < max_frames and pos + 4 <= end:
            size = _rd32(p + pos)
            body = pos + 4
            if size == 0 or size > max_frame or body + size > end:
                break
            cend = body + size
            if size < 27 or p[body] != 0x93:
                break
            q = _read_uint(p, body + 1, cend, &msgid)
            if q < 0 or msgid == 0 or msgid > 0xFFFFFFFF or q + 25 > cend:
                break
            if p[q] != 0xA3:
                break
            if p[q + 1] == 71 and p[q + 2] == 69 and p[q + 3] == 84:  # GET
                is_put = False
                if p[q + 4] != 0x91 or q + 7 + 18 != cend:
                    break
            elif p[q + 1] == 80 and p[q + 2] == 85 and p[q + 3] == 84 and put is not None:
                is_put = True
                if p[q + 4] != 0x92 or q + 7 + 18 >= cend:
                    break
                # Name ids (>= 0xF000) must be checked against the table: generic path.
                for j in range(9):
                    if p[q + 7 + 2 * j] >= 0xF0:
                        break
                else:
                    j = 9
                if j != 9:
                    break
            else:
                break
            if p[q + 5] != 0xC4 or p[q + 6] != 18:
                break
            key = PyBytes_FromStringAndSize(<const char*>p + q + 7, 18)
            q += 25  # after the key
            frame_start = b.n
            if not is_put:
                hit = PyDict_GetItem(m, key)
                _buf_reserve(&b, 4)
                b.n += 4
                _wput(&b, "\x93", 1)
                _wput_uint(&b, msgid)
                if hit == NULL:
                    _wput(&b, "\x00\xc0", 2)
                else:
                    s = <object>hit
                    _wput(&b, "\x00\x95", 2)
                    k = _slot_or_attr(sl, s, 0, "key")
                    if not PyBytes_CheckExact(k):
                        b.n = frame_start
                        break
                    _wput_bin(&b, PyBytes_AS_STRING(k), len(<bytes>k))
                    _wput_value(&b, _slot_or_attr(sl, s, 1, "content"), packb)
                    _wput_value(&b, _slot_or_attr(sl, s, 2, "version"), packb)
                    _wput_value(&b, _slot_or_attr(sl, s, 3, "created_at"), packb)
                    _wput_value(&b, _slot_or_attr(sl, s, 4, "updated_at"), packb)
                if b.n - frame_start - 4 > out_limit:
                    b.n = frame_start
                    break
            else:
                # The content fills the rest of the body.
                c = p[q]
                if c == 0xC0 and q + 1 == cend:
                    content = None
                elif _read_binhdr(p, q, cend, &kl) >= 0:
                    if _read_binhdr(p, q, cend, &kl) + kl != cend:
                        break
                    content = PyBytes_FromStringAndSize(<const char*>p + cend - kl, kl)
                elif _read_strhdr(p, q, cend, &kl) >= 0:
                    if _read_strhdr(p, q, cend, &kl) + kl != cend:
                        break
                    content = (<const char*>p + cend - kl)[:kl].decode("utf-8", "strict")
                else:
                    if _skip(p, q, cend, 0) != cend:
                        break
                    try:
                        content = unpackb((<const char*>p + q)[:cend - q])
                    except Exception:
                        break  # the generic path reports the malformed value
                wrote = True
                try:
                    version = put(key, content)
                except Exception as exc:
                    pos = cend
                    count += 1
                    error = (msgid, exc)
                    break
                _buf_reserve(&b, 4)
                b.n += 4
                _wput(&b, "\x93", 1)
                _wput_uint(&b, msgid)
                _wput(&b, "\x00", 1)
                _wput_value(&b, version, packb)
            _be32(b.p + frame_start, <uint32_t>(b.n - frame_start - 4))
            pos = cend
            count += 1
        return pos, PyBytes_FromStringAndSize(b.p, b.n), count, wrote, error
    finally:
        PyMem_Free(b.p)


# -- values-only batched reads (GET_MANY with content_only) --------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def scroll_contents(dict m, bytes blob, object scroll_cls):
    """Look up N packed keys in a ``{key: Scroll}`` map and return their contents.

    :param m: the engine's map from 18-byte keys to Scroll objects.
    :param blob: N*18 bytes of packed keys.
    :param scroll_cls: the Scroll class (its content slot is read directly when a
        scroll is exactly that class; subclasses go through the attribute).
    :returns: a list of N contents, ``None`` where nothing is stored.
    :raises InterfaceError: if ``blob`` is not a multiple of 18 bytes.
    """
    cdef Py_ssize_t nb = len(blob)
    if nb % 18:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    cdef Py_ssize_t n = nb // 18, i
    cdef const char* kp = PyBytes_AS_STRING(blob)
    cdef _Slots sl = _scroll_slots(scroll_cls)
    cdef list out = PyList_New(n) if n else []
    cdef PyObject* hit
    for i in range(n):
        key = PyBytes_FromStringAndSize(kp + 18 * i, 18)
        hit = PyDict_GetItem(m, key)
        v = None if hit == NULL else _slot_or_attr(sl, <object>hit, 1, "content")
        Py_INCREF(v)
        PyList_SET_ITEM(out, i, v)
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def scroll_contents_msgpack(dict m, bytes blob, object packb, object scroll_cls):
    """The msgpack bytes of ``[content or nil for each key]`` in one C loop: the result of
    ``GET_MANY [keys, true]``.

    The bytes equal ``packb(scroll_contents(m, blob, scroll_cls))``.

    :param m: the engine's map from 18-byte keys to Scroll objects.
    :param blob: N*18 bytes of packed keys.
    :param packb: the generic encoder, for contents that are not bytes, str, float, None
        or non-negative int (numpy arrays, lists, maps...), and for its errors.
    :param scroll_cls: the Scroll class.
    :returns: the msgpack bytes of one array of N values.
    :raises InterfaceError: if ``blob`` is not a multiple of 18 bytes, or a content
        cannot be encoded.
    """
    cdef Py_ssize_t nb = len(blob)
    if nb % 18:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    cdef Py_ssize_t n = nb // 18, i
    cdef const char* kp = PyBytes_AS_STRING(blob)
    cdef _Slots sl = _scroll_slots(scroll_cls)
    cdef PyObject* hit
    cdef _Buf b
    _buf_init(&b, 64 + 40 * n)
    try:
        _wput_arrhdr(&b, n)
        for i in range(n):
            key = PyBytes_FromStringAndSize(kp + 18 * i, 18)
            hit = PyDict_GetItem(m, key)
            if hit == NULL:
                _wput(&b, "\xc0", 1)
            else:
                _wput_value(&b, _slot_or_attr(sl, <object>hit, 1, "content"), packb)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)


# -- pipelined GETs on the client: request frames out, reply frames in ----------------------

cimport numpy as cnp
cnp.import_array()


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


@cython.boundscheck(False)
@cython.wraparound(False)
def get_request_frames(list keys, uint64_t msgid):
    """Encode one GET request frame per key, back to back, with msgids counting up from
    ``msgid``: the bytes of ``encode_request(msgid + i, "GET", [keys[i]])`` with the
    msgid written as uint32 (``ce``), as the client writes every request header.

    :param keys: 18-byte keys.
    :param msgid: the first request's id; the last one, ``msgid + len(keys) - 1``, must
        not exceed 2**32 - 1.
    :returns: the frames as one bytes object.
    :raises InterfaceError: a key that is not 18 bytes, or msgids out of range.
    """
    cdef Py_ssize_t n = len(keys), i
    if msgid < 1 or msgid + <uint64_t>n - 1 > 0xFFFFFFFFULL:
        raise InterfaceError("msgids must stay within 1 .. 2**32-1")
    out = PyBytes_FromStringAndSize(NULL, 35 * n)
    cdef char* o = PyBytes_AS_STRING(out)
    cdef object k
    for i in range(n):
        k = <object>PyList_GET_ITEM(keys, i)
        if not PyBytes_CheckExact(k) or len(<bytes>k) != KEY_BYTES:
            raise InterfaceError("GET keys must be packed coordinates (bytes of 18)")
        # length 31 | fixarray(3) | uint32 msgid | "GET" | fixarray(1) | bin8(18) key
        memcpy(o, b"\x00\x00\x00\x1f\x93\xce", 6)
        _be32(o + 6, <uint32_t>(msgid + <uint64_t>i))
        memcpy(o + 10, b"\xa3GET\x91\xc4\x12", 7)
        memcpy(o + 17, PyBytes_AS_STRING(k), KEY_BYTES)
        o += 35
    return out


cdef inline Py_ssize_t _read_double(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                    double* out) noexcept nogil:
    cdef uint64_t u
    cdef uint32_t w
    cdef float f
    if pos + 9 <= end and p[pos] == 0xCB:
        u = _rd64(p + pos + 1)
        memcpy(out, &u, 8)
        return pos + 9
    if pos + 5 <= end and p[pos] == 0xCA:
        w = _rd32(p + pos + 1)
        memcpy(&f, &w, 4)
        out[0] = f
        return pos + 5
    return -1


@cython.boundscheck(False)
@cython.wraparound(False)
def parse_get_replies(const unsigned char[::1] data, Py_ssize_t pos, Py_ssize_t end,
                      uint64_t msgid, Py_ssize_t count, list out, Py_ssize_t at,
                      object scroll_cls, object names, object unpackb,
                      Py_ssize_t max_frame):
    """Decode a run of GET success replies straight from the receive buffer.

    Starting at ``data[pos]``, every complete frame whose body is
    ``[msgid, 0, nil]`` or ``[msgid, 0, [key bin(18), content, version uint,
    created float, updated float]]``, with the msgid expected next (``msgid``, then
    ``msgid + 1``, ...), becomes ``None`` or a Scroll stored at ``out[at]``,
    ``out[at + 1]``, ...; the loop stops after ``count`` frames, at an incomplete frame,
    or at the first frame of any other kind (an error reply, a push, another encoding),
    which the caller then reads with the generic decoder. Contents that are not bin,
    str or nil are decoded by ``unpackb``.

    :param data: the receive buffer (bytes or bytearray).
    :param pos: offset of the next unread frame.
    :param end: end of the received bytes.
    :param msgid: the id the first reply must carry.
    :param count: most frames to decode.
    :param out: result list, at least ``at + count`` long.
    :param at: index in ``out`` of the first result.
    :param scroll_cls: the Scroll class.
    :param names: the name table given to every Scroll.
    :param unpackb: the generic decoder for other contents.
    :param max_frame: largest frame body accepted (a larger one is left to the generic
        reader, which refuses it).
    :returns: ``(pos, decoded, need_more)``: the offset after the decoded frames, how
        many were decoded, and whether the loop stopped at an incomplete frame (rather
        than at the count or at a frame it does not decode).
    """
    cdef const unsigned char* p = &data[0] if data.shape[0] else NULL
    cdef Py_ssize_t size, body, cend, q, kl, cs, ce, done = 0
    cdef uint64_t mid, ver
    cdef double created, updated
    cdef unsigned char c
    cdef _Slots sl = _scroll_slots(scroll_cls)
    cdef bint need_more = False
    if end > data.shape[0]:
        end = data.shape[0]
    if at < 0 or at + count > len(out):
        raise IndexError("result list too short")
    while done < count:
        if pos + 4 > end:
            need_more = True
            break
        size = _rd32(p + pos)
        body = pos + 4
        if size == 0 or size > max_frame:
            break
        if body + size > end:
            need_more = True
            break
        cend = body + size
        if size < 4 or p[body] != 0x93:
            break
        q = _read_uint(p, body + 1, cend, &mid)
        if q < 0 or mid != msgid + <uint64_t>done or q + 2 > cend or p[q] != 0x00:
            break
        q += 1
        if p[q] == 0xC0:
            if q + 1 != cend:
                break
            v = None
        else:
            if p[q] != 0x95:
                break
            q += 1
            q = _read_binhdr(p, q, cend, &kl)
            if q < 0 or kl != KEY_BYTES:
                break
            key = PyBytes_FromStringAndSize(<const char*>p + q, KEY_BYTES)
            q += KEY_BYTES
            if q >= cend:
                break
            c = p[q]
            if c == 0xC0:
                content = None
                q += 1
            elif _read_binhdr(p, q, cend, &kl) >= 0:
                cs = _read_binhdr(p, q, cend, &kl)
                content = PyBytes_FromStringAndSize(<const char*>p + cs, kl)
                q = cs + kl
            elif _read_strhdr(p, q, cend, &kl) >= 0:
                cs = _read_strhdr(p, q, cend, &kl)
                content = (<const char*>p + cs)[:kl].decode("utf-8")
                q = cs + kl
            else:
                ce = _skip(p, q, cend, 0)
                if ce < 0:
                    break
                content = unpackb(bytes((<const char*>p + q)[:ce - q]))
                q = ce
            q = _read_uint(p, q, cend, &ver)
            if q < 0 or ver == 0:
                break
            q = _read_double(p, q, cend, &created)
            if q < 0:
                break
            q = _read_double(p, q, cend, &updated)
            if q != cend:
                break
            if sl.ok:
                v = sl.new(key, content, ver, created, updated, names)
            else:
                v = scroll_cls(key, content, ver, created, updated, names)
        old = <object>PyList_GET_ITEM(out, at + done)
        Py_INCREF(v)
        PyList_SET_ITEM(out, at + done, v)
        Py_DECREF(old)
        pos = cend
        done += 1
    return pos, done, need_more


# ---------------------------------------------------------------------------------------
# Batched writes for the engine: one C loop over the keys of a CPUT_MANY.
# ---------------------------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
def put_scrolls(dict m, bytes blob, list contents, double now, object names,
                object scroll_cls, object check):
    """Write N scrolls into a key -> Scroll map in one C loop (the engine's CPUT_MANY).

    Every content is validated first (str, bytes, float, bool and None pass as they are;
    anything else goes through ``check``, which returns the value to store or raises),
    so a bad content leaves the map untouched. Then, in key order, each key gets a new
    Scroll: version 1 and ``created_at = now`` when absent, else the old version + 1 and
    the old ``created_at``; ``updated_at = now``. A key repeated in the batch is written
    repeatedly, its versions counting up.

    :param m: the engine's map (18-byte key -> Scroll).
    :param blob: N*18 bytes of keys.
    :param contents: N contents (the list is updated in place with checked values).
    :param now: the write time (unix seconds).
    :param names: the name table each Scroll refers to.
    :param scroll_cls: the Scroll class (a ``__slots__`` class).
    :param check: validator for contents of other types.
    :returns: ``(versions, new_keys, written)``: the N new versions, the keys that were
        absent before (in order, once each), and the N Scrolls written.
    :raises InterfaceError: lengths disagree or scroll_cls has unexpected slots.
    """
    cdef Py_ssize_t n = len(blob) // KEY_BYTES, i
    if len(blob) % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {len(blob)}")
    if len(contents) != n:
        raise InterfaceError(f"{n} coordinates but {len(contents)} contents")
    cdef _Slots sl = _scroll_slots(scroll_cls)
    if not sl.ok:
        raise InterfaceError(f"{scroll_cls!r} does not have the Scroll slots")
    for i in range(n):
        c = contents[i]
        t = type(c)
        if not (t is str or t is bytes or t is float or t is bool or c is None):
            contents[i] = check(c)
    cdef const char* p = PyBytes_AS_STRING(blob)
    cdef PyObject* old
    versions = PyList_New(n)
    written = PyList_New(n)
    new_keys = []
    nowf = now
    one = 1
    for i in range(n):
        key = PyBytes_FromStringAndSize(p + KEY_BYTES * i, KEY_BYTES)
        old = PyDict_GetItem(m, key)
        if old == NULL:
            s = sl.new(key, contents[i], one, nowf, nowf, names)
            new_keys.append(key)
            ver = one
        else:
            ver = <object>sl.get(<object>old, 2) + 1
            s = sl.new(key, contents[i], ver, <object>sl.get(<object>old, 3), nowf, names)
        m[key] = s
        Py_INCREF(ver)
        PyList_SET_ITEM(versions, i, ver)
        Py_INCREF(s)
        PyList_SET_ITEM(written, i, s)
    return versions, new_keys, written


# ---------------------------------------------------------------------------------------
# Durable-store kernels (vtpu.engine, vtpu.storage): content validation before a batched
# write, the old values a batched write replaces, and the per-record checksums sealed on
# write and verified on load, each one call per batch.
#
# A record's checksum is xxh64(content, seed=xxh64(header, seed=0)), where the 42-byte
# header is the 18-byte key followed by the version (int64) and the bits of created_at
# and updated_at (float64), each little-endian; it is kept as a signed 64-bit integer
# (SQLite's INTEGER). A flipped bit in any field changes it.
# ---------------------------------------------------------------------------------------

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

cdef enum:
    RECORD_HEAD = KEY_BYTES + 24


def check_contents(list contents, object check):
    """Validate N contents in place, before a batched write changes anything.

    bytes, float, bool, None and ASCII str pass as they are; every other value (other
    str included: it may hold a lone surrogate) is replaced by ``check(value)``, which
    returns the value to store or raises.

    :param contents: the contents (updated in place).
    :param check: the validator (``vtpu.engine.check_content``).
    :raises: whatever ``check`` raises, at the first bad content.
    """
    cdef Py_ssize_t i, n = len(contents)
    for i in range(n):
        c = contents[i]
        t = type(c)
        if t is bytes or t is float or t is bool or c is None:
            continue
        if t is str and PyUnicode_IS_ASCII(c):
            continue
        contents[i] = check(c)


def get_scrolls(dict m, bytes blob):
    """``[m.get(key) for each 18-byte key of blob]`` in one C loop.

    :param m: a key -> value map.
    :param blob: N*18 bytes of keys.
    :returns: a list of N values, None where a key is absent.
    :raises InterfaceError: the blob is not a multiple of 18 bytes.
    """
    cdef Py_ssize_t n = len(blob) // KEY_BYTES, i
    if len(blob) % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {len(blob)}")
    cdef const char* p = PyBytes_AS_STRING(blob)
    cdef PyObject* v
    out = PyList_New(n)
    for i in range(n):
        key = PyBytes_FromStringAndSize(p + KEY_BYTES * i, KEY_BYTES)
        v = PyDict_GetItem(m, key)
        val = None if v == NULL else <object>v
        Py_INCREF(val)
        PyList_SET_ITEM(out, i, val)
    return out


cdef inline void _put_le64(unsigned char* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>(v >> (8 * i))


cdef inline bint _is_time(object x):
    t = type(x)
    return t is float or t is int


cdef int _record_hash(tuple row, int64_t* out) except -2:
    """The checksum of a row (key, content, version, created, updated, ...) in *out.

    Returns -1, with no exception set, when a field has the wrong type or range.
    """
    cdef unsigned char head[RECORD_HEAD]
    cdef int64_t version
    cdef double t_created, t_updated
    cdef uint64_t bits, seed
    if len(row) < 5:
        return -1
    key = row[0]
    content = row[1]
    ver = row[2]
    created = row[3]
    updated = row[4]
    if type(key) is not bytes or PyBytes_GET_SIZE(key) != KEY_BYTES or type(content) is not bytes \
            or type(ver) is not int or not _is_time(created) or not _is_time(updated):
        return -1
    try:
        version = ver
        t_created = created
        t_updated = updated
    except OverflowError:
        return -1
    memcpy(head, PyBytes_AS_STRING(key), KEY_BYTES)
    _put_le64(head + KEY_BYTES, <uint64_t>version)
    memcpy(&bits, &t_created, 8)
    _put_le64(head + KEY_BYTES + 8, bits)
    memcpy(&bits, &t_updated, 8)
    _put_le64(head + KEY_BYTES + 16, bits)
    seed = _xxh64(head, RECORD_HEAD, 0)
    out[0] = <int64_t>_xxh64(<const unsigned char*>PyBytes_AS_STRING(content),
                             PyBytes_GET_SIZE(content), seed)
    return 0


def seal_records(list rows):
    """Append its checksum to every storage row.

    :param rows: tuples ``(key, content, version, created_at, updated_at)``: an 18-byte
        key, bytes, an int64 and two float (or int) times.
    :returns: a new list of tuples ``(key, content, version, created_at, updated_at,
        checksum)``.
    :raises InterfaceError: a row is not such a tuple (nothing is returned then).
    """
    cdef Py_ssize_t i, n = len(rows)
    cdef int64_t h
    out = PyList_New(n)
    for i in range(n):
        row = rows[i]
        if type(row) is not tuple or _record_hash(<tuple>row, &h) < 0:
            Py_INCREF(None)
            PyList_SET_ITEM(out, i, None)   # keep the list valid for its deallocation
            raise InterfaceError(
                f"storage row {i} must be (18-byte key, bytes content, int version, "
                f"float created_at, float updated_at), got {_row_types(row)}")
        sealed = (row[0], row[1], row[2], row[3], row[4], h)
        Py_INCREF(sealed)
        PyList_SET_ITEM(out, i, sealed)
    return out


def verify_records(list rows):
    """Find the first storage row whose checksum does not match.

    :param rows: tuples ``(key, content, version, created_at, updated_at, checksum)`` as
        read back from the database.
    :returns: the index of the first row with a wrong checksum or a field of the wrong
        type, or -1 when every row is intact.
    """
    cdef Py_ssize_t i, n = len(rows)
    cdef int64_t h
    cdef long long stored
    cdef int overflow
    for i in range(n):
        row = rows[i]
        if type(row) is not tuple or len(<tuple>row) != 6 or _record_hash(<tuple>row, &h) < 0:
            return i
        crc = (<tuple>row)[5]
        if type(crc) is not int:
            return i
        stored = PyLong_AsLongLongAndOverflow(crc, &overflow)
        if overflow or stored != h:
            return i
    return -1


def _row_types(row):
    if type(row) is not tuple:
        return type(row).__name__
    return "(" + ", ".join(type(x).__name__ for x in row) + ")"
