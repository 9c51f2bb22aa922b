# ---------------------------------------------------------------------------------------
# Client-side wire helpers still used by vtpu.netclient (pipelined GET frames, GET and
# GET_MANY reply readers) and the engine's values-only read (scroll_contents). The wire
# codec itself is vtpu.wire (reference vtpu.protocol, compiled twin vtpu._cprotocol);
# these go away once their callers use it.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

import numpy as np
from vtpu.errors import InterfaceError


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


# -- big-endian helpers -----------------------------------------------------------------

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


cdef object _slot_or_attr(_Slots sl, object s, int i, str name):
    cdef PyObject* p
    if sl.ok and type(s) is sl.cls:
        p = sl.get(s, i)
        if p != NULL:
            return <object>p
    return getattr(s, name)


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
