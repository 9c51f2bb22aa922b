# ---------------------------------------------------------------------------------------
# Parsing. One tokenizer for coordinates, patterns and deltas; it fills 9 tokens and
# reports the first error with its byte position and component. Names are recorded as
# offsets and resolved afterwards through the caller's name table (the rare, slow path).
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t, int32_t, int64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

import numpy as np
from vtpu.errors import CoordinateError, InterfaceError

cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


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


cdef inline const unsigned char* _plain_number(const unsigned char* p, unsigned char sep,
                                                unsigned int* out) noexcept nogil:
    """Read one to five digits at p, at most MAX_NUMERIC, followed by ``sep``: returns
    the byte after ``sep`` (``out`` set), or NULL. Unrolled digit by digit: a coordinate's
    numbers are short, and each step is one test with no loop to close."""
    cdef unsigned int v = p[0] - 48u, d
    if v > 9u:
        return NULL
    d = p[1] - 48u
    if d > 9u:
        p += 1
    else:
        v = v * 10u + d
        d = p[2] - 48u
        if d > 9u:
            p += 2
        else:
            v = v * 10u + d
            d = p[3] - 48u
            if d > 9u:
                p += 3
            else:
                v = v * 10u + d
                d = p[4] - 48u
                if d > 9u:
                    p += 4
                else:
                    v = v * 10u + d
                    if v > MAX_NUMERIC or p[5] - 48u <= 9u:
                        return NULL     # over the limit, or a sixth digit
                    p += 5
    if p[0] != sep:
        return NULL
    out[0] = v
    return p + 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint _plain_coord(const char* s, Py_ssize_t n, uint16_t* out,
                              unsigned char* key) noexcept nogil:
    """Read ``a.b.c/d.e.f/g.h.i`` of nine decimal numbers and nothing else (no spaces,
    no ``;``, no names), each of one to five digits and at most MAX_NUMERIC, into
    ``out`` (native uint16) and, when ``key`` is given, as the 18 packed bytes there
    too: True if it is exactly that. Anything else is left to the tokenizer, which also
    explains errors.

    ``s[n]`` must be readable and neither a digit nor a separator: a str's data ends
    with its NUL terminator. The reads stop there, so no step compares with the end
    (the last number's separator is that NUL)."""
    cdef const unsigned char* p = <const unsigned char*>s
    cdef unsigned int v[NDIM]
    cdef int j
    # One group of three numbers after the other, each number with the separator it
    # expects after it (the last one's is the NUL): a loop over the nine, with a table
    # of separators, cost a fifth of the parse in its counter and its loads. (Three
    # copies of the reader are what the compiler still inlines; nine it does not.)
    for j in range(3):
        p = _plain_number(p, b'.', &v[3 * j])
        if p == NULL:
            return False
        p = _plain_number(p, b'.', &v[3 * j + 1])
        if p == NULL:
            return False
        p = _plain_number(p, b'/' if j < 2 else 0, &v[3 * j + 2])
        if p == NULL:
            return False
    # The NUL read as the last separator must be the end, not a NUL inside the text.
    if p != <const unsigned char*>s + n + 1:
        return False
    for j in range(NDIM):
        out[j] = <uint16_t>v[j]
    if key != NULL:
        _pack_row(out, key)
    return True


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
            if i - start > NAME_MAX_LEN:
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
                if i - j0 > NAME_MAX_LEN:
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


cdef Py_ssize_t _char_pos(str text, Py_ssize_t pos):
    """The character index of byte offset ``pos`` of the text's UTF-8 form.

    The tokenizer only steps over ASCII bytes, so ``pos`` is always a character start."""
    return len(text.encode("utf-8")[:pos].decode("utf-8"))


cdef str _quote(str text, Py_ssize_t at):
    """The input as messages quote it: whole when short, else 80 characters around ``at``
    (a 10 000-character input must not make a 10 000-character message)."""
    cdef Py_ssize_t n = len(text), a, b
    if n <= 80:
        return repr(text)
    a = max(0, min(at - 40, n - 80))
    b = min(n, a + 80)
    return f"{text[a:b]!r} (characters {a}..{b} of {n})"


cdef object _parse_error(str what, str text, int code, Py_ssize_t pos, int comp):
    cdef str label = f"component {comp + 1} ({COMPONENTS[comp]})"
    cdef Py_ssize_t at = _char_pos(text, pos)
    cdef str ch = text[at] if at < len(text) else ""
    if not text.strip(" "):
        msg = "is empty"
    elif ch == " " and code in (E_EMPTY, E_CHAR, E_SEP):
        msg = (f"{label} holds a space at position {at} (spaces are allowed only around '/' "
               "or ';' and at either end)")
    elif code == E_FEW or code == E_MANY:
        nparts = _count_parts(text)
        if code == E_MANY and nparts <= NDIM:
            msg = f"{label} is followed by unexpected text {ch!r} at position {at}"
        else:
            msg = f"has {nparts} components, expected 9 (a.b.c/d.e.f/g.h.i)"
    elif code == E_EMPTY:
        msg = f"{label} is empty"
    elif code == E_RANGE:
        msg = f"{label} is out of range 0..{MAX_NUMERIC}"
    elif code == E_NAMELEN:
        msg = f"{label} is a name longer than {NAME_MAX_LEN} characters"
    elif code == E_INTERVAL:
        msg = f"{label} is not a valid interval [a:b] (at position {at})"
    elif code == E_EMPTYIV:
        msg = f"{label} is an empty interval (need a < b)"
    elif code == E_SEP:
        sep = "'/'" if comp in (2, 5) else "'.'"
        msg = f"expected {sep} after {label} at position {at}"
    elif ch:
        msg = f"{label} has an unexpected character {ch!r} at position {at}"
    else:
        msg = f"{label} is cut short at position {at}"
    return CoordinateError(f"bad {what} {_quote(text, at)}: {msg}")


cdef int _name_id(object names, str text, Tok* t, int comp, bint intern, str what) except -1:
    cdef bytes raw = text.encode("utf-8")[t.a:t.b]
    name = raw.decode("ascii")
    if names is None:
        raise CoordinateError(f"bad {what} {_quote(text, _char_pos(text, t.a))}: component "
                              f"{comp + 1} ({COMPONENTS[comp]}) is the name {name!r}, which "
                              "needs a name table")
    ident = names.lookup(name, intern)
    if ident is None:
        raise CoordinateError(f"bad {what} {_quote(text, _char_pos(text, t.a))}: component "
                              f"{comp + 1} ({COMPONENTS[comp]}) is the unknown name {name!r}")
    return ident


cdef inline const char* _utf8(object s, Py_ssize_t* n, str what) except NULL:
    if not isinstance(s, str):
        raise CoordinateError(f"{what} must be a str, got {type(s).__name__}: {s!r:.80}")
    try:
        return PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError as e:   # a lone surrogate: no UTF-8 form, so no coordinate
        raise CoordinateError(f"bad {what} {_quote(s, e.start)}: {s[e.start]!r} at position "
                              f"{e.start} is not a character (a lone surrogate)") from None


cdef int _tokens(object s, int mode, str what, Tok* toks) except -1:
    """Tokenize ``s`` (a coordinate, pattern or delta) into 9 tokens, or raise the
    CoordinateError that quotes it and names the faulty component."""
    cdef Py_ssize_t n, errpos
    cdef int errcomp, code
    cdef const char* p = _utf8(s, &n, what)
    # The GIL stays held: a coordinate is a few dozen bytes, and releasing it per string
    # cost more than tokenizing (parse_coords calls this once per item).
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


def all_text(list items):
    """True when every item of the list is a str (the test before :func:`parse_coords`,
    at C speed: no Python call per item).

    :param items: a list.
    :returns: bool (True for an empty list).
    """
    cdef Py_ssize_t i
    for i in range(len(items)):
        if not isinstance(items[i], str):
            return False
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _parse_many(list items, uint16_t* rows, unsigned char* keys, object names,
                     bint intern, bint texts_only=False) except -1:
    """Parse every string of ``items`` into ``rows`` (N*9 native uint16) or, when
    ``keys`` is given, into ``keys`` (N*18 bytes, packed big-endian). With
    ``texts_only``, an item that is not a str stops the parse and 1 is returned (the
    caller takes another path), in the same pass as the parse."""
    cdef Py_ssize_t i, n = len(items)
    cdef uint16_t tmp[NDIM]
    cdef uint16_t* o
    for i in range(n):
        s = items[i]
        if keys != NULL:
            o = &tmp[0]
        else:
            o = rows + i * NDIM
        # The common item: an ASCII str of nine numbers, read straight from its bytes.
        # Anything else (spaces, names, an error to report) takes the full path. (A
        # compact str's data ends with a NUL, the stop _plain_coord reads to.)
        if PyUnicode_CheckExact(s) and PyUnicode_IS_COMPACT_ASCII(s) and \
                _plain_coord(PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s), o,
                             NULL if keys == NULL else keys + i * KEY_BYTES):
            continue
        if texts_only and not isinstance(s, str):
            return 1
        try:
            _parse_coord_into(s, o, names, intern)
        except CoordinateError as e:
            raise CoordinateError(f"item {i}: {e}") from None
        if keys != NULL:
            _pack_row(tmp, keys + i * KEY_BYTES)
    return 0


cdef list _string_list(seq):
    if isinstance(seq, str):
        raise InterfaceError("parse_coords takes a sequence of strings, not one string")
    return seq if type(seq) is list else list(seq)


def parse_coords(seq, names=None, bint intern=True):
    """Parse many coordinate strings into an (N, 9) uint16 array.

    :param seq: a sequence (list/tuple) of coordinate strings.
    :param names: name table for name components (see :func:`parse_coord`).
    :param intern: intern unknown names (True) or report them (False).
    :returns: C-contiguous (N, 9) uint16 array.
    :raises CoordinateError: for the first bad string, quoting it and its index.
    """
    cdef list items = _string_list(seq)
    out = np.empty((len(items), NDIM), dtype=np.uint16)
    if len(items) == 0:
        return out
    cdef uint16_t[:, ::1] o = out
    _parse_many(items, &o[0, 0], NULL, names, intern)
    return out


def parse_keys(seq, names=None, bint intern=True):
    """Parse many coordinate strings into one N*18-byte blob of packed keys: what
    ``pack_many(parse_coords(seq))`` gives, without the array between.

    :param seq: a sequence (list/tuple) of coordinate strings.
    :param names: name table for name components (see :func:`parse_coord`).
    :param intern: intern unknown names (True) or report them (False).
    :returns: bytes.
    :raises CoordinateError: for the first bad string, quoting it and its index.
    """
    cdef list items = _string_list(seq)
    out = PyBytes_FromStringAndSize(NULL, len(items) * KEY_BYTES)
    if len(items):
        _parse_many(items, NULL, <unsigned char*>PyBytes_AS_STRING(out), names, intern)
    return out


def text_keys(list items, names=None, bint intern=True):
    """The packed keys of a list of coordinate strings (as :func:`parse_keys`), or None
    when an item is not a str: the test of :func:`all_text` made in the parse's own
    pass over the list.

    :param items: a list.
    :param names: name table for name components (see :func:`parse_coord`).
    :param intern: intern unknown names (True) or report them (False).
    :returns: bytes, or None.
    :raises CoordinateError: for the first bad string, quoting it and its index.
    """
    out = PyBytes_FromStringAndSize(NULL, len(items) * KEY_BYTES)
    if len(items) and _parse_many(items, NULL, <unsigned char*>PyBytes_AS_STRING(out), names,
                                  intern, True):
        return None
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
