# cython: language_level=3, embedsignature=True, cdivision=True
"""vtpu._cprotocol: the compiled twin of the wire codec.

Same names, same semantics and the same bytes as the reference codec
(:mod:`vtpu.protocol`) for the functions of ``protocol.CODEC_NAMES``; :mod:`vtpu.wire`
picks one of the two at import. What is compiled is the per-item work of the hot
shapes: request and reply headers, runs of pipelined GET and PUT requests and their
replies, and column-wise scroll lists. Values are written inline when they are bytes, str, float,
bool, None, non-negative int or a list of those; anything else (maps, numpy arrays,
negative ints...) goes through the reference ``packb``, which writes exactly what
msgpack-python writes inside a larger object. Decoders read the canonical encodings in
place and hand every other encoding to the generic decoder, so both twins accept and
refuse the same input. A :class:`vtpu.results.Scrolls` result is written from its
columns (``Scrolls.columns()``), with no Scroll made; other Scroll fields are read
through their attributes. A scroll list is decoded into ``Scrolls.from_spans`` (bin and
str contents stay spans over the reply's bytes); a single Scroll is made by calling the
class.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, _PyBytes_Resize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX
from libc.string cimport memcpy, memmove, memset

include "core/scalar.pxi"

import numpy as np

from vtpu import protocol as _ref
from vtpu import _core
from vtpu._core import Scrolls as _Scrolls
from vtpu.coords import Scroll
# The core's Scroll type and its builder: a decoded reply's Scroll is made in C (no
# __init__ argument parsing, no Python int/float for its version and times).
from vtpu._core cimport (Scroll as _CScroll, _new_scroll_at, Scrolls as _CScrolls,
                         _new_scrolls, _ascii, _ascii_text, _utf8_text, short_copy)
from vtpu.errors import FrameTooLarge, InterfaceError, LimitError, ProtocolError
from vtpu.protocol import Reply, packb, parse_request, refuse_big_batch

cdef extern from "Python.h":
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    bint PyList_CheckExact(object o)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

cdef enum:
    KEY_SIZE = 18
    # Plain values nested deeper than this go through packb as a whole, so the depth
    # limit is packb's (msgpack-python's) for everything but the outer array.
    INLINE_DEPTH = 2
    LOCAL_BUF = 512

cdef object _ndarray = np.ndarray


# ---------------------------------------------------------------------------------------
# A growable output buffer; small frames never touch the heap.

cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap
    bint heap
    PyObject* obj   # when not NULL: p is this bytes object's buffer (see buf_init_bytes)
    char local[LOCAL_BUF]

cdef inline void buf_init(Buf* b) noexcept:
    b.p = b.local
    b.n = 0
    b.cap = LOCAL_BUF
    b.heap = False
    b.obj = NULL

cdef int buf_init_bytes(Buf* b, Py_ssize_t cap) except -1:
    """A buffer written straight into a bytes object of ``cap`` bytes (grown as needed):
    for a large output, buf_bytes then shrinks it and hands it out instead of copying
    it into a new one."""
    buf_init(b)
    o = PyBytes_FromStringAndSize(NULL, max(cap, LOCAL_BUF))
    Py_INCREF(o)
    b.obj = <PyObject*>o
    b.p = PyBytes_AS_STRING(o)
    b.cap = len(<bytes>o)
    return 0

cdef inline void buf_free(Buf* b) noexcept:
    if b.heap:
        PyMem_Free(b.p)
    if b.obj != NULL:
        Py_XDECREF(b.obj)
        b.obj = NULL
    b.p = b.local
    b.heap = False

cdef int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef char* q
    while cap < b.n + extra:
        cap *= 2
    if b.obj != NULL:
        _PyBytes_Resize(&b.obj, cap)   # MemoryError: the object is gone, b.obj NULL
        b.p = PyBytes_AS_STRING(<object>b.obj)
        b.cap = cap
        return 0
    if b.heap:
        q = <char*>PyMem_Realloc(b.p, cap)
    else:
        q = <char*>PyMem_Malloc(cap)
        if q != NULL:
            memcpy(q, b.p, b.n)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    b.heap = True
    return 0

cdef inline int reserve(Buf* b, Py_ssize_t extra) except -1:
    if b.n + extra > b.cap:
        buf_grow(b, extra)
    return 0

cdef inline int put(Buf* b, const char* s, Py_ssize_t k) except -1:
    reserve(b, k)
    memcpy(b.p + b.n, s, k)
    b.n += k
    return 0

cdef inline int put1(Buf* b, unsigned char c) except -1:
    reserve(b, 1)
    b.p[b.n] = <char>c
    b.n += 1
    return 0

# be16/be32/be64 and rd16/rd32/rd64 come with core/scalar.pxi (included above).


# -- writing msgpack (msgpack-python's shortest forms) -------------------------------------

cdef int put_uint(Buf* b, uint64_t v) except -1:
    reserve(b, 9)
    b.n += write_uint(b.p + b.n, v)
    return 0

cdef inline int put_int(Buf* b, int64_t v) except -1:
    # msgpack-python's shortest form of a signed integer.
    reserve(b, 9)
    b.n += write_int(b.p + b.n, v)
    return 0

cdef inline int put_arrhdr(Buf* b, Py_ssize_t n) except -1:
    reserve(b, 5)
    cdef char* o = b.p + b.n
    if n < 16:
        o[0] = <char>(0x90 | n); b.n += 1
    elif n < 0x10000:
        o[0] = <char>0xDC; be16(o + 1, <uint32_t>n); b.n += 3
    else:
        o[0] = <char>0xDD; be32(o + 1, <uint32_t>n); b.n += 5
    return 0

cdef inline Py_ssize_t write_binhdr(char* o, Py_ssize_t n) noexcept nogil:
    """Write the header of an n-byte bin at o; returns its length (room: 5 bytes)."""
    if n < 0x100:
        o[0] = <char>0xC4; o[1] = <char>n
        return 2
    elif n < 0x10000:
        o[0] = <char>0xC5; be16(o + 1, <uint32_t>n)
        return 3
    o[0] = <char>0xC6; be32(o + 1, <uint32_t>n)
    return 5

cdef inline Py_ssize_t write_strhdr(char* o, Py_ssize_t n) noexcept nogil:
    """Write the header of an n-byte str at o; returns its length (room: 5 bytes)."""
    if n < 32:
        o[0] = <char>(0xA0 | n)
        return 1
    elif n < 0x100:
        o[0] = <char>0xD9; o[1] = <char>n
        return 2
    elif n < 0x10000:
        o[0] = <char>0xDA; be16(o + 1, <uint32_t>n)
        return 3
    o[0] = <char>0xDB; be32(o + 1, <uint32_t>n)
    return 5

cdef inline int put_binhdr(Buf* b, Py_ssize_t n) except -1:
    reserve(b, 5)
    b.n += write_binhdr(b.p + b.n, n)
    return 0

cdef inline int put_span_of(Buf* b, const char* s, Py_ssize_t n, bint text) except -1:
    """Append the n bytes at s as a str (``text``) or a bin: header and bytes under one
    reserve."""
    reserve(b, n + 5)
    cdef Py_ssize_t h = write_strhdr(b.p + b.n, n) if text else write_binhdr(b.p + b.n, n)
    short_copy(b.p + b.n + h, s, n)
    b.n += h + n
    return 0

cdef inline int put_str(Buf* b, const char* s, Py_ssize_t n) except -1:
    return put_span_of(b, s, n, True)

cdef inline int put_bin(Buf* b, const char* s, Py_ssize_t n) except -1:
    return put_span_of(b, s, n, False)

cdef int put_double(Buf* b, double d) except -1:
    reserve(b, 9)
    b.n += write_double(b.p + b.n, d)
    return 0

cdef int put_packed(Buf* b, object v) except -1:
    raw = packb(v)
    put(b, PyBytes_AS_STRING(raw), len(<bytes>raw))
    return 0

cdef int put_value(Buf* b, object v, int depth) except -1:
    """Append one value as msgpack-python would write it inside a larger object."""
    cdef Py_ssize_t n, i
    cdef const char* s
    cdef int overflow = 0
    cdef long long x
    if PyBytes_CheckExact(v):
        put_bin(b, PyBytes_AS_STRING(v), len(<bytes>v))
    elif PyUnicode_CheckExact(v):
        try:
            s = PyUnicode_AsUTF8AndSize(v, &n)
        except UnicodeError:
            return put_packed(b, v)  # lone surrogates: the reference's own error
        put_str(b, s, n)
    elif v is None:
        put1(b, 0xC0)
    elif v is True:
        put1(b, 0xC3)
    elif v is False:
        put1(b, 0xC2)
    elif PyFloat_CheckExact(v):
        put_double(b, PyFloat_AS_DOUBLE(v))
    elif PyLong_CheckExact(v):
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            put_int(b, x)
        else:
            put_packed(b, v)
    elif PyList_CheckExact(v) and depth < INLINE_DEPTH:
        n = len(<list>v)
        put_arrhdr(b, n)
        for i in range(n):
            put_value(b, <object>PyList_GET_ITEM(v, i), depth + 1)
    else:
        put_packed(b, v)
    return 0


cdef inline void frame_open(Buf* b) noexcept:
    # The 4-byte length is written by frame_close once the body is complete.
    b.n += 4

cdef int frame_close(Buf* b, Py_ssize_t start, Py_ssize_t max_frame_size) except -1:
    cdef Py_ssize_t n = b.n - start - 4
    if n > max_frame_size:
        raise LimitError(
            f"frame body of {n} bytes exceeds max_frame_size {max_frame_size}", "LIMIT")
    be32(b.p + start, <uint32_t>n)
    return 0

cdef inline bytes buf_bytes(Buf* b):
    if b.obj != NULL:
        if b.n != b.cap:
            _PyBytes_Resize(&b.obj, b.n)
            b.cap = b.n
            b.p = PyBytes_AS_STRING(<object>b.obj)
        return <bytes><object>b.obj   # a new reference; buf_free drops the buffer's own
    return PyBytes_FromStringAndSize(b.p, b.n)


# ---------------------------------------------------------------------------------------
# Encoders

def encode_request(msgid, opcode, args, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Encode a request frame ``[msgid, opcode, args]``.

    :param msgid: request id, 1 .. 2**32-1, unique among the requests in flight.
    :param opcode: an opcode name from ``OPS``.
    :param args: the positional argument array for the opcode.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if an argument cannot be encoded.
    """
    cdef Buf b
    buf_init(&b)
    try:
        frame_open(&b)
        put1(&b, 0x93)
        put_value(&b, msgid, INLINE_DEPTH)
        put_value(&b, opcode, INLINE_DEPTH)
        put_value(&b, args, 1)
        frame_close(&b, 0, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


def encode_response(msgid, result, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Encode a success response frame ``[msgid, 0, result]``.

    :param msgid: the request id.
    :param result: the result value.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if the result cannot be encoded.
    """
    cdef Buf b
    buf_init(&b)
    try:
        frame_open(&b)
        put1(&b, 0x93)
        put_value(&b, msgid, INLINE_DEPTH)
        put1(&b, 0x00)
        put_value(&b, result, 1)
        frame_close(&b, 0, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_get_requests(first_msgid, keys, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Encode one GET request frame per key, back to back (a pipelined run of GETs).

    The bytes equal ``b"".join(encode_request(first_msgid + i, "GET", [key_i]))``.

    :param first_msgid: the first request's id; the last, ``first_msgid + N - 1``, must
        not exceed 2**32 - 1.
    :param keys: N*18 bytes, the packed keys in order.
    :param max_frame_size: the largest body allowed (a GET body is at most 31 bytes).
    :returns: the N frames as one bytes object (``b""`` for no keys).
    :raises InterfaceError: if ``keys`` is not bytes of a multiple of 18, or the msgids
        leave 1 .. 2**32-1.
    """
    if not PyBytes_CheckExact(keys) or len(<bytes>keys) % KEY_SIZE:
        raise InterfaceError("GET keys must be bytes holding packed coordinates (N*18)")
    cdef Py_ssize_t n = len(<bytes>keys) // KEY_SIZE, i, start
    if n == 0:
        return b""
    if not PyLong_CheckExact(first_msgid) or first_msgid < 1 or first_msgid + n - 1 > 0xFFFFFFFF:
        _ref._check_msgids(first_msgid, n)  # raises the reference's InterfaceError
    cdef uint64_t m = first_msgid
    cdef const char* kp = PyBytes_AS_STRING(keys)
    cdef Buf b
    buf_init(&b)
    try:
        reserve(&b, 35 * n)
        for i in range(n):
            start = b.n
            frame_open(&b)
            put1(&b, 0x93)
            put_uint(&b, m + <uint64_t>i)
            put(&b, b"\xa3GET\x91\xc4\x12", 7)
            put(&b, kp + KEY_SIZE * i, KEY_SIZE)
            frame_close(&b, start, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_responses(msgids, results, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Encode the success replies to a run of requests, back to back.

    The bytes equal ``b"".join(encode_response(msgids[i], results[i]))``.

    :param msgids: the requests' ids.
    :param results: one result value each.
    :param max_frame_size: the largest body allowed per reply.
    :returns: the reply frames as one bytes object.
    :raises LimitError: if one reply would exceed ``max_frame_size``.
    :raises InterfaceError: if the lengths differ or a result cannot be encoded.
    """
    if not PyList_CheckExact(msgids):
        msgids = list(msgids)
    if not PyList_CheckExact(results):
        results = list(results)
    cdef Py_ssize_t n = len(<list>msgids), i, start
    if n != len(<list>results):
        raise InterfaceError(f"{n} msgids for {len(<list>results)} results")
    cdef Buf b
    buf_init(&b)
    try:
        reserve(&b, 16 * n)
        for i in range(n):
            start = reply_open(&b, <object>PyList_GET_ITEM(msgids, i))
            put_value(&b, <object>PyList_GET_ITEM(results, i), 1)
            frame_close(&b, start, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


# -- reading a Scroll's fields --------------------------------------------------------------

cdef extern from "Python.h":
    ctypedef PyObject* (*descrgetfunc)(PyObject*, PyObject*, PyObject*) except? NULL
    ctypedef struct TypeSlots "PyTypeObject":
        void* tp_getattro
        void* tp_descr_get
        void* tp_descr_set
        unsigned int tp_version_tag
        unsigned long tp_flags
    PyObject* PyObject_GenericGetAttr(PyObject* o, PyObject* name) except NULL
    unsigned long Py_TPFLAGS_VALID_VERSION_TAG

cdef enum:
    F_KEY = 0
    F_CONTENT = 1
    F_VERSION = 2
    F_CREATED = 3
    F_UPDATED = 4
    NFIELDS = 5

cdef tuple FIELD_NAMES = ("key", "content", "version", "created_at", "updated_at")


cdef class FieldReader:
    """Reads the five fields of Scroll objects as ``getattr`` does, without its
    per-access lookup: for a type whose attribute access is the generic one and whose
    fields are data descriptors (slots, properties), ``getattr(s, name)`` is
    ``descriptor.__get__(s, type)``, so the descriptors are looked up once per type
    (again whenever the type is modified) and called directly. Any other type is read
    with ``getattr``."""
    cdef object tp
    cdef unsigned int tag
    cdef bint direct
    cdef list held  # the descriptors, kept alive
    cdef PyObject* descr[NFIELDS]
    cdef descrgetfunc get[NFIELDS]

    cdef int bind(self, object tp) except -1:
        cdef TypeSlots* t = <TypeSlots*><PyObject*>tp
        cdef TypeSlots* dt
        cdef int i
        self.tp = tp
        self.tag = t.tp_version_tag
        self.direct = (t.tp_getattro == <void*>PyObject_GenericGetAttr
                       and (t.tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) != 0)
        self.held = []
        if not self.direct:
            return 0
        for i in range(NFIELDS):
            d = None
            for klass in tp.__mro__:
                d = klass.__dict__.get(FIELD_NAMES[i])
                if d is not None:
                    break
            if d is None:
                self.direct = False
                return 0
            dtype = type(d)
            dt = <TypeSlots*><PyObject*>dtype
            if dt.tp_descr_get == NULL or dt.tp_descr_set == NULL:
                self.direct = False  # not a data descriptor: instance dicts could win
                return 0
            self.held.append(d)
            self.descr[i] = <PyObject*>d
            self.get[i] = <descrgetfunc>dt.tp_descr_get
        return 0

    cdef inline int check(self, object s) except -1:
        # Call before read(): (re)binds to s's type when needed.
        cdef object tp = type(s)
        if tp is not self.tp or (<TypeSlots*><PyObject*>tp).tp_version_tag != self.tag:
            self.bind(tp)
        return 0

    cdef inline object read(self, object s, int i):
        # Field i of s, whose type check() has seen.
        cdef PyObject* r
        if not self.direct:
            return getattr(s, FIELD_NAMES[i])
        r = self.get[i](self.descr[i], <PyObject*>s, <PyObject*>self.tp)
        v = <object>r
        Py_DECREF(v)  # the call returned a new reference; the cast took another
        return v


cdef FieldReader FIELDS = FieldReader()


cdef int put_scroll(Buf* b, object s) except -1:
    # [key, content, version, created_at, updated_at], or nil
    if s is None:
        put1(b, 0xC0)
        return 0
    put1(b, 0x95)
    cdef _CScroll c
    if type(s) is _CScroll:
        # The core's own Scroll: its fields read in C (no Python int or float made).
        c = <_CScroll>s
        if c._inline:
            put_binhdr(b, KEY_SIZE)
            put(b, <const char*>c._k, KEY_SIZE)
        else:
            put_value(b, c.key, 1)
        put_value(b, c.content, 1)
        put_int(b, c.version)
        put_double(b, c.created_at)
        put_double(b, c.updated_at)
        return 0
    FIELDS.check(s)
    put_value(b, FIELDS.read(s, F_KEY), 1)
    put_value(b, FIELDS.read(s, F_CONTENT), 1)
    put_value(b, FIELDS.read(s, F_VERSION), 1)
    put_value(b, FIELDS.read(s, F_CREATED), 1)
    put_value(b, FIELDS.read(s, F_UPDATED), 1)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_get_replies(msgids, scrolls, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE,
                       max_bytes=None):
    """Encode the replies to a run of GET requests, back to back.

    The bytes equal ``b"".join(encode_response(msgids[i], scroll_to_wire(scrolls[i])))``.

    :param msgids: the requests' ids.
    :param scrolls: one Scroll (anything with those five attributes) or ``None`` each.
    :param max_frame_size: the largest body allowed per reply.
    :param max_bytes: stop after the first reply that brings the output to this many
        bytes or more (at least one reply is encoded); ``None``: encode them all.
    :returns: ``(frames, n)``: the first ``n`` reply frames as one bytes object.
    :raises LimitError: if one reply would exceed ``max_frame_size`` (nothing is
        returned; the caller answers that request alone with an error).
    :raises InterfaceError: if the lengths differ or a content cannot be encoded.
    """
    if not PyList_CheckExact(msgids):
        msgids = list(msgids)
    cdef Py_ssize_t stop = -1 if max_bytes is None else max_bytes
    if type(scrolls) is _Scrolls:
        return get_replies_from_columns(msgids, scrolls, max_frame_size, stop)
    if not PyList_CheckExact(scrolls):
        scrolls = list(scrolls)
    cdef Py_ssize_t n = len(<list>msgids), i, start
    if n != len(<list>scrolls):
        raise InterfaceError(f"{n} msgids for {len(<list>scrolls)} scrolls")
    cdef Buf b
    buf_init(&b)
    try:
        reserve(&b, 96 * n)  # a reply with a small content; larger ones grow the buffer
        for i in range(n):
            start = reply_open(&b, <object>PyList_GET_ITEM(msgids, i))
            put_scroll(&b, <object>PyList_GET_ITEM(scrolls, i))
            frame_close(&b, start, max_frame_size)
            if stop >= 0 and b.n >= stop:
                return buf_bytes(&b), i + 1
        return buf_bytes(&b), n
    finally:
        buf_free(&b)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object get_replies_from_columns(list msgids, object scrolls, Py_ssize_t max_frame_size,
                                     Py_ssize_t stop):
    """:func:`encode_get_replies` of a Scrolls, written from its columns (no Scroll made):
    one ``[msgid, 0, [key, content, version, created_at, updated_at]]`` (or nil) each."""
    cdef _Cols c = _Cols.of(scrolls.columns())
    cdef Py_ssize_t n = len(msgids), i, start
    if n != c.kinds.shape[0]:
        raise InterfaceError(f"{n} msgids for {c.kinds.shape[0]} scrolls")
    cdef const char* d = PyBytes_AS_STRING(c.data)
    cdef const char* kp = PyBytes_AS_STRING(c.keys)
    cdef uint64_t u
    cdef dict heads = {}
    cdef Buf b
    buf_init(&b)
    try:
        reserve(&b, n * (KEY_SIZE + 48) + len(c.data))
        for i in range(n):
            start = reply_open(&b, <object>PyList_GET_ITEM(msgids, i))
            if c.kinds[i] == K_DEAD:
                put1(&b, 0xC0)
            else:
                put1(&b, 0x95)
                put_binhdr(&b, KEY_SIZE)
                put(&b, kp + i * KEY_SIZE, KEY_SIZE)
                put_span(&b, c.kinds[i], d, c.offs[i], c.lens[i], c.objs, c.types, heads)
                put_int(&b, c.ver[i])
                reserve(&b, 18)
                memcpy(&u, &c.cre[i], 8)
                b.p[b.n] = <char>0xCB
                be64(b.p + b.n + 1, u)
                memcpy(&u, &c.upd[i], 8)
                b.p[b.n + 9] = <char>0xCB
                be64(b.p + b.n + 10, u)
                b.n += 18
            frame_close(&b, start, max_frame_size)
            if stop >= 0 and b.n >= stop:
                return buf_bytes(&b), i + 1
        return buf_bytes(&b), n
    finally:
        buf_free(&b)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int put_scroll_list(Buf* b, list scrolls) except -1:
    """Append the column-wise scroll list; returns 1 when the reference must encode it
    instead (stacked ndarray contents, or keys that are not 18 bytes), leaving ``b``
    as it was."""
    cdef Py_ssize_t n = len(scrolls), i, mark = b.n, keys_at
    cdef Buf ver, cre, upd
    if n >= 2:
        s = <object>PyList_GET_ITEM(scrolls, 0)
        if s is not None and FIELDS.check(s) == 0 and type(FIELDS.read(s, F_CONTENT)) is _ndarray:
            return 1  # may be sent stacked: the reference decides
    buf_init(&ver)
    buf_init(&cre)
    buf_init(&upd)
    try:
        put1(b, 0x95)
        put_binhdr(b, n * KEY_SIZE)
        reserve(b, n * KEY_SIZE)
        keys_at = b.n
        b.n += n * KEY_SIZE
        put_arrhdr(b, n)
        put_arrhdr(&ver, n)
        put_arrhdr(&cre, n)
        put_arrhdr(&upd, n)
        for i in range(n):
            s = <object>PyList_GET_ITEM(scrolls, i)
            if s is None:
                memset(b.p + keys_at + KEY_SIZE * i, 0, KEY_SIZE)
                put1(b, 0xC0)
                put1(&ver, 0x00)
                put1(&cre, 0xC0)
                put1(&upd, 0xC0)
                continue
            FIELDS.check(s)
            k = FIELDS.read(s, F_KEY)
            if not PyBytes_CheckExact(k) or len(<bytes>k) != KEY_SIZE:
                b.n = mark
                return 1
            memcpy(b.p + keys_at + KEY_SIZE * i, PyBytes_AS_STRING(k), KEY_SIZE)
            put_value(b, FIELDS.read(s, F_CONTENT), 1)
            put_value(&ver, FIELDS.read(s, F_VERSION), 1)
            put_value(&cre, FIELDS.read(s, F_CREATED), 1)
            put_value(&upd, FIELDS.read(s, F_UPDATED), 1)
        put(b, ver.p, ver.n)
        put(b, cre.p, cre.n)
        put(b, upd.p, upd.n)
        return 0
    except BaseException:
        b.n = mark
        raise
    finally:
        buf_free(&ver)
        buf_free(&cre)
        buf_free(&upd)


# -- a Scrolls result, straight from its columns ----------------------------------------

cdef enum:
    # The content kinds of Scrolls.columns(); checked against the core's at import.
    K_DEAD = 0
    K_NONE = 1
    K_STR = 2
    K_BYTES = 3
    K_ARRAY = 4
    K_OBJECT = 5
    K_PACKED = 6
    EXT_NDARRAY = 1

if (_core.KIND_DEAD, _core.KIND_NONE, _core.KIND_STR, _core.KIND_BYTES, _core.KIND_ARRAY,
        _core.KIND_OBJECT, _core.KIND_PACKED) != (K_DEAD, K_NONE, K_STR, K_BYTES, K_ARRAY,
                                                  K_OBJECT, K_PACKED):
    raise ImportError("vtpu._cprotocol was built against other content kinds than "
                      "vtpu._core's")


cdef inline bint packed_ndarray(const unsigned char* p, int64_t n) noexcept nogil:
    """Whether the msgpack value p[0:n] starts as an ndarray ext (it may then decode to
    an array that the reference stacks with the others)."""
    if n >= 2 and 0xD4 <= p[0] <= 0xD8:
        return p[1] == EXT_NDARRAY
    if n >= 3 and p[0] == 0xC7:
        return p[2] == EXT_NDARRAY
    if n >= 4 and p[0] == 0xC8:
        return p[3] == EXT_NDARRAY
    if n >= 6 and p[0] == 0xC9:
        return p[5] == EXT_NDARRAY
    return False


cdef int put_ndarray_ext(Buf* b, object dtype, object shape, Py_ssize_t rows,
                         Py_ssize_t nbytes) except -1:
    """Append the ext header and payload head of an array of ``dtype`` and ``shape``
    (with a leading dimension of ``rows`` when rows >= 0) whose ``nbytes`` of raw data
    the caller appends next: the bytes ``packb`` writes for such an array."""
    cdef Buf head
    cdef Py_ssize_t total
    buf_init(&head)
    try:
        put1(&head, 0x93)
        put_value(&head, dtype.str, 1)
        dims = list(shape)
        if rows >= 0:
            dims.insert(0, rows)
        put_value(&head, dims, 1)
        put_binhdr(&head, nbytes)
        total = head.n + nbytes
        reserve(b, 6)
        if total == 1 or total == 2 or total == 4 or total == 8 or total == 16:
            put1(b, 0xD4 if total == 1 else 0xD5 if total == 2 else 0xD6 if total == 4
                 else 0xD7 if total == 8 else 0xD8)
        elif total < 0x100:
            put1(b, 0xC7)
            put1(b, <unsigned char>total)
        elif total < 0x10000:
            put1(b, 0xC8)
            be16(b.p + b.n, <uint32_t>total)
            b.n += 2
        else:
            put1(b, 0xC9)
            be32(b.p + b.n, <uint32_t>total)
            b.n += 4
        put1(b, EXT_NDARRAY)
        put(b, head.p, head.n)
    finally:
        buf_free(&head)
    return 0


cdef inline Py_ssize_t columns_size_hint(object cols):
    # About the encoded size of a Scrolls (exact or over for contents held as bytes).
    return len(cols.kinds) * (KEY_SIZE + 32) + len(cols.data) + 64


cdef inline Py_ssize_t reply_open(Buf* b, object msgid) except -1:
    """Open one success reply frame ``[msgid, 0, ...`` (its result follows); returns
    where the frame starts, for ``frame_close``."""
    cdef Py_ssize_t start = b.n
    reserve(b, 8)
    frame_open(b)
    put1(b, 0x93)
    put_value(b, msgid, INLINE_DEPTH)
    put1(b, 0x00)
    return start


@cython.final
cdef class _Cols:
    """The columns of a Scrolls (``Scrolls.columns()``) as typed views, for the
    encoders that write a result straight from them."""
    cdef bytes keys
    cdef bytes data
    cdef list objs
    cdef list types
    cdef const int64_t[::1] ver
    cdef const double[::1] cre
    cdef const double[::1] upd
    cdef const unsigned char[::1] kinds
    cdef const int64_t[::1] offs
    cdef const int64_t[::1] lens

    @staticmethod
    cdef _Cols of(object cols):
        cdef _Cols c = _Cols.__new__(_Cols)
        c.keys = cols.keys
        c.data = cols.data
        c.objs = cols.objects
        c.types = cols.types
        c.ver = cols.versions
        c.cre = cols.created
        c.upd = cols.updated
        c.kinds = cols.kinds
        c.offs = cols.offsets
        c.lens = cols.lengths
        return c


cdef inline int put_span(Buf* b, unsigned char kind, const char* d, int64_t off,
                         int64_t ln, list objs, list types, dict heads) except -1:
    """Append one content of a Scrolls from its span in the result's data (or its
    object): the bytes ``put_value`` writes for the content itself. ``heads`` keeps the
    ext header of each array type met so far (made once per type, not per array).

    The kinds most contents are (bytes, text, nil) are written here, inline in the
    callers' loops; the others by :func:`put_span_other`."""
    if kind == K_BYTES or kind == K_STR:
        return put_span_of(b, d + off, ln, kind == K_STR)
    if kind == K_DEAD or kind == K_NONE:
        return put1(b, 0xC0)   # the content None, or nothing stored
    return put_span_other(b, kind, d, off, ln, objs, types, heads)


cdef int put_span_other(Buf* b, unsigned char kind, const char* d, int64_t off,
                        int64_t ln, list objs, list types, dict heads) except -1:
    """:func:`put_span` of an array, a packed number or an object content."""
    cdef uint32_t tid
    cdef Buf hb
    if kind == K_ARRAY:
        memcpy(&tid, d + off, 4)
        head = heads.get(tid)
        if head is None:
            # Every array of a type has the same size: its header is the same bytes.
            dtype, shape = types[tid]
            buf_init(&hb)
            try:
                put_ndarray_ext(&hb, dtype, shape, -1, ln - 4)
                head = PyBytes_FromStringAndSize(hb.p, hb.n)
            finally:
                buf_free(&hb)
            heads[tid] = head
        put(b, PyBytes_AS_STRING(head), len(<bytes>head))
        put(b, d + off + 4, ln - 4)
    elif kind == K_PACKED:
        put(b, d + off, ln)
    elif kind == K_OBJECT:
        put_value(b, <object>PyList_GET_ITEM(objs, off), 1)
    else:
        put1(b, 0xC0)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int put_contents(Buf* b, _Cols c, dict heads) except -1:
    """Append every content of ``c`` one after the other (what ``put_span`` writes for
    each), the columns read through locals: no reference taken per item."""
    cdef Py_ssize_t n = c.kinds.shape[0], i
    if n == 0:
        return 0
    cdef const char* d = PyBytes_AS_STRING(c.data)
    cdef const unsigned char* kinds = &c.kinds[0]
    cdef const int64_t* offs = &c.offs[0]
    cdef const int64_t* lens = &c.lens[0]
    cdef list objs = c.objs
    cdef list types = c.types
    for i in range(n):
        put_span(b, kinds[i], d, offs[i], lens[i], objs, types, heads)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int put_scroll_columns(Buf* b, object scrolls, object cols) except -1:
    """Append the column-wise scroll list of a Scrolls from its columns ``cols``
    (``Scrolls.columns()``): the bytes of ``scrolls_to_wire(list(scrolls))``, with no
    Python object per item but for contents kept as objects."""
    cdef _Cols c = _Cols.of(cols)
    cdef Py_ssize_t n = c.kinds.shape[0], i, keys_at, rowbytes = 0
    cdef const char* d = PyBytes_AS_STRING(c.data)
    cdef const char* kp = PyBytes_AS_STRING(c.keys)
    cdef unsigned char kind
    cdef uint32_t tid, tid0 = 0
    cdef int form = 0   # contents: 0 one per item, 1 stacked from the spans, 2 packb'd
    # arrays: every content may be a numpy array; in_arena: every one is held in the
    # arena (kind K_ARRAY), all of the type of the first, tid0.
    cdef bint arrays = n >= 2, in_arena = True, seen = False
    stacked = None
    # The contents go stacked exactly when the reference stacks them: at least two,
    # every one a numpy array of one dtype and of one shape with a dimension at least.
    for i in range(n):
        kind = c.kinds[i]
        if kind == K_ARRAY:
            memcpy(&tid, d + c.offs[i], 4)
            if not seen:
                tid0, seen = tid, True
            elif tid != tid0 and c.types[tid] != c.types[tid0]:
                arrays = False
        elif kind == K_OBJECT and type(<object>PyList_GET_ITEM(c.objs, c.offs[i])) is _ndarray:
            in_arena = False
        elif kind == K_PACKED and packed_ndarray(<const unsigned char*>d + c.offs[i], c.lens[i]):
            in_arena = False
        else:
            arrays = False
        if not arrays:
            break
    if arrays and in_arena:
        dtype, shape = c.types[tid0]
        if len(shape) and dtype.isnative:
            form = 1
            rowbytes = c.lens[0] - 4
    if arrays and form == 0:
        # Arrays held otherwise too, or in another byte order (stacking makes it
        # native): the reference's own test, on the contents.
        contents = scrolls.contents
        stacked = _ref._stack_if_uniform(contents if type(contents) is list
                                         else list(contents))
        if type(stacked) is _ndarray:
            form = 2
    reserve(b, columns_size_hint(cols))
    put1(b, 0x95)
    put_binhdr(b, n * KEY_SIZE)
    reserve(b, n * KEY_SIZE)
    keys_at = b.n
    memcpy(b.p + keys_at, kp, n * KEY_SIZE)
    b.n += n * KEY_SIZE
    for i in range(n):
        if c.kinds[i] == K_DEAD:
            memset(b.p + keys_at + KEY_SIZE * i, 0, KEY_SIZE)  # no key where nothing is
    if form == 1:
        put_ndarray_ext(b, dtype, shape, n, n * rowbytes)
        reserve(b, n * rowbytes)
        for i in range(n):
            memcpy(b.p + b.n, d + c.offs[i] + 4, rowbytes)
            b.n += rowbytes
    elif form == 2:
        put_packed(b, stacked)
    else:
        put_arrhdr(b, n)
        put_contents(b, c, {})
    put_arrhdr(b, n)
    reserve(b, 9 * n)
    for i in range(n):
        if c.kinds[i] == K_DEAD:
            b.p[b.n] = 0x00
            b.n += 1
        else:
            b.n += write_int(b.p + b.n, c.ver[i])   # (room reserved above)
    put_times(b, c.kinds, c.cre)
    put_times(b, c.kinds, c.upd)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int put_times(Buf* b, const unsigned char[::1] kinds, const double[::1] t) except -1:
    """Append one time column: nil where nothing is stored, else a float64."""
    cdef Py_ssize_t n = kinds.shape[0], i
    cdef uint64_t u
    put_arrhdr(b, n)
    reserve(b, 9 * n)
    for i in range(n):
        if kinds[i] == K_DEAD:
            b.p[b.n] = <char>0xC0
            b.n += 1
        else:
            memcpy(&u, &t[i], 8)
            b.p[b.n] = <char>0xCB
            be64(b.p + b.n + 1, u)
            b.n += 9
    return 0


def encode_scrolls(scrolls, *, status=None, bint page=False, after=None):
    """Encode a list of Scrolls (``None`` allowed) as the msgpack bytes of the
    column-wise scroll list (see ``scrolls_to_wire``), in one buffer with what a BATCH
    item wraps it in.

    :param scrolls: a :class:`vtpu.results.Scrolls` (written from its columns), or
        Scroll objects (anything with the five attributes) or ``None``.
    :param status: given: the bytes of the BATCH item ``[status, value]``.
    :param page: the value is a RANGE page ``[scroll list, after]``.
    :param after: with ``page``: the key to continue after, or ``None``.
    :returns: the msgpack bytes of one value.
    :raises InterfaceError: if a content cannot be encoded.
    """
    cdef bint columns = type(scrolls) is _Scrolls
    if not columns and not PyList_CheckExact(scrolls):
        scrolls = list(scrolls)
    cdef Buf b
    buf_init(&b)
    try:
        if columns:
            cols = scrolls.columns()
            buf_init_bytes(&b, 16 + columns_size_hint(cols))
        if status is not None:
            put1(&b, 0x92)
            put_value(&b, status, 1)
        if page:
            put1(&b, 0x92)
        if columns:
            put_scroll_columns(&b, scrolls, cols)
        elif put_scroll_list(&b, scrolls):
            return _ref.encode_scrolls(scrolls, status=status, page=page, after=after)
        if page:
            put_value(&b, after, 1)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


def encode_response_contents(msgid, scrolls,
                             Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Encode the success reply of a values-only GET_MANY, ``[msgid, 0, [content, ...]]``:
    item i's content, nil where nothing is stored (a stored ``None`` reads the same).

    :param msgid: the request id.
    :param scrolls: a :class:`vtpu.results.Scrolls` (written from its columns: one
        array per content, never stacked), or Scroll objects or ``None``.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if a content cannot be encoded.
    """
    if type(scrolls) is not _Scrolls:
        return _ref.encode_response_contents(msgid, scrolls, max_frame_size)
    cols = scrolls.columns()
    cdef _Cols c = _Cols.of(cols)
    cdef Py_ssize_t n = c.kinds.shape[0]
    cdef Buf b
    buf_init(&b)
    try:
        buf_init_bytes(&b, 32 + 6 * n + len(c.data))
        frame_open(&b)
        put1(&b, 0x93)
        put_value(&b, msgid, INLINE_DEPTH)
        put1(&b, 0x00)
        put_arrhdr(&b, n)
        put_contents(&b, c, {})
        frame_close(&b, 0, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


def encode_response_scrolls(msgid, scrolls,
                            Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE,
                            bint page=False, after=None):
    """Encode a success reply whose result is a column-wise scroll list: GET_MANY and
    KG (``[msgid, 0, columns]``) or, with ``page``, a RANGE page
    (``[msgid, 0, [columns, after]]``).

    :param msgid: the request id.
    :param scrolls: a :class:`vtpu.results.Scrolls` (written from its columns), or
        Scroll objects or ``None``.
    :param max_frame_size: the largest body allowed.
    :param page: wrap the list as a RANGE page.
    :param after: with ``page``: the key to continue after, or ``None`` on the last page.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if a content cannot be encoded.
    """
    cdef bint columns = type(scrolls) is _Scrolls
    if not columns and not PyList_CheckExact(scrolls):
        scrolls = list(scrolls)
    cdef Buf b
    buf_init(&b)
    try:
        if columns:
            cols = scrolls.columns()
            buf_init_bytes(&b, 32 + columns_size_hint(cols))
        frame_open(&b)
        put1(&b, 0x93)
        put_value(&b, msgid, INLINE_DEPTH)
        put1(&b, 0x00)
        if page:
            put1(&b, 0x92)
        if columns:
            put_scroll_columns(&b, scrolls, cols)
        elif put_scroll_list(&b, scrolls):
            return _ref.encode_response_scrolls(msgid, scrolls, max_frame_size, page, after)
        if page:
            put_value(&b, after, 1)
        frame_close(&b, 0, max_frame_size)
        return buf_bytes(&b)
    finally:
        buf_free(&b)


# ---------------------------------------------------------------------------------------
# Reading msgpack in place: each reader returns the position after what it read, or -1
# when the bytes are not that (or are truncated); callers then use the generic decoder.

cdef Py_ssize_t skip(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                     int depth) noexcept nogil:
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
        k = 3 + rd16(p + pos + 1)
    elif c == 0xC6 or c == 0xDB:
        if pos + 5 > end:
            return -1
        k = 5 + rd32(p + pos + 1)
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
        k = 4 + rd16(p + pos + 1)
    elif c == 0xC9:
        if pos + 5 > end:
            return -1
        k = 6 + rd32(p + pos + 1)
    else:
        if 0x90 <= c <= 0x9F:
            cnt = c & 0x0F; pos += 1
        elif 0x80 <= c <= 0x8F:
            cnt = 2 * (c & 0x0F); pos += 1
        elif c == 0xDC or c == 0xDE:
            if pos + 3 > end:
                return -1
            cnt = rd16(p + pos + 1) * (2 if c == 0xDE else 1); pos += 3
        elif c == 0xDD or c == 0xDF:
            if pos + 5 > end:
                return -1
            cnt = (<Py_ssize_t>rd32(p + pos + 1)) * (2 if c == 0xDF else 1); pos += 5
        else:
            return -1  # 0xC1 is never used
        for i in range(cnt):
            pos = skip(p, pos, end, depth + 1)
            if pos < 0:
                return -1
        return pos
    if pos + k > end:
        return -1
    return pos + k


cdef inline Py_ssize_t read_uint(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                 uint64_t* out) noexcept nogil:
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
        out[0] = rd16(p + pos + 1)
        return pos + 3
    if c == 0xCE and pos + 5 <= end:
        out[0] = rd32(p + pos + 1)
        return pos + 5
    if c == 0xCF and pos + 9 <= end:
        out[0] = rd64(p + pos + 1)
        return pos + 9
    return -1


cdef inline Py_ssize_t read_arrhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                   Py_ssize_t* n) noexcept nogil:
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if 0x90 <= c <= 0x9F:
        n[0] = c & 0x0F
        return pos + 1
    if c == 0xDC and pos + 3 <= end:
        n[0] = rd16(p + pos + 1)
        return pos + 3
    if c == 0xDD and pos + 5 <= end:
        n[0] = rd32(p + pos + 1)
        return pos + 5
    return -1


cdef inline Py_ssize_t read_binhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                   Py_ssize_t* n) noexcept nogil:
    """Header of a bin whose bytes are all present: position of its first byte."""
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if c == 0xC4 and pos + 2 <= end:
        n[0] = p[pos + 1]
        pos += 2
    elif c == 0xC5 and pos + 3 <= end:
        n[0] = rd16(p + pos + 1)
        pos += 3
    elif c == 0xC6 and pos + 5 <= end:
        n[0] = rd32(p + pos + 1)
        pos += 5
    else:
        return -1
    if pos + n[0] > end:
        return -1
    return pos


cdef inline Py_ssize_t read_strhdr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                   Py_ssize_t* n) noexcept nogil:
    """Header of a str whose bytes are all present: position of its first byte."""
    if pos >= end:
        return -1
    cdef unsigned char c = p[pos]
    if 0xA0 <= c <= 0xBF:
        n[0] = c & 0x1F
        pos += 1
    elif c == 0xD9 and pos + 2 <= end:
        n[0] = p[pos + 1]
        pos += 2
    elif c == 0xDA and pos + 3 <= end:
        n[0] = rd16(p + pos + 1)
        pos += 3
    elif c == 0xDB and pos + 5 <= end:
        n[0] = rd32(p + pos + 1)
        pos += 5
    else:
        return -1
    if pos + n[0] > end:
        return -1
    return pos


cdef inline Py_ssize_t read_double(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                   double* out) noexcept nogil:
    cdef uint64_t u
    cdef uint32_t w
    cdef float f
    if pos + 9 <= end and p[pos] == 0xCB:
        u = rd64(p + pos + 1)
        memcpy(out, &u, 8)
        return pos + 9
    if pos + 5 <= end and p[pos] == 0xCA:
        w = rd32(p + pos + 1)
        memcpy(&f, &w, 4)
        out[0] = f
        return pos + 5
    return -1


# -- one msgpack value ------------------------------------------------------------------

# What read_value cannot read: the reference then decodes the whole input (or says why
# it is malformed), so both twins give the same values and the same errors.
cdef object _ELSEWHERE = object()


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object read_value(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end, int depth):
    """The msgpack value at ``pos[0]`` as the reference's ``unpackb`` decodes it (nil,
    bools, numbers, str, bin, arrays as lists, maps as dicts), moving ``pos[0]`` past it;
    ``_ELSEWHERE`` for anything else: an ext (arrays), a truncated or malformed value,
    text that is not UTF-8, an unhashable map key, nesting deeper than 32."""
    cdef Py_ssize_t q = pos[0], e, n, i, ln
    cdef unsigned char c
    if q >= end or depth > 32:
        return _ELSEWHERE
    c = p[q]
    if c <= 0x7F:
        pos[0] = q + 1
        return <long>c
    if c >= 0xE0:
        pos[0] = q + 1
        return <long>(<signed char>c)
    if c == 0xC0:
        pos[0] = q + 1
        return None
    if c == 0xC2 or c == 0xC3:
        pos[0] = q + 1
        return c == 0xC3
    if 0xA0 <= c <= 0xBF or 0xD9 <= c <= 0xDB:
        e = read_strhdr(p, q, end, &ln)
        if e < 0:
            return _ELSEWHERE
        pos[0] = e + ln
        if _ascii(p + e, ln):
            # (Outside the try: entering one saves the thread's exception state, a
            # tenth of a short value's read.)
            return _ascii_text(<const char*>p + e, ln)
        try:
            return PyUnicode_DecodeUTF8(<const char*>p + e, ln, NULL)
        except UnicodeDecodeError:
            pos[0] = q
            return _ELSEWHERE
    if 0xC4 <= c <= 0xC6:
        e = read_binhdr(p, q, end, &ln)
        if e < 0:
            return _ELSEWHERE
        pos[0] = e + ln
        return PyBytes_FromStringAndSize(<const char*>p + e, ln)
    if 0xCA <= c <= 0xD3:
        # float32/64, uint8-64, int8-64: one byte of type, then 4, 8, 1, 2, 4, 8, ...
        ln = 1 + (4, 8, 1, 2, 4, 8, 1, 2, 4, 8)[c - 0xCA]
        if q + ln > end:
            return _ELSEWHERE
        v = _packed_scalar(p + q, ln)
        if v is _NOT_SCALAR:
            return _ELSEWHERE
        pos[0] = q + ln
        return v
    if 0x90 <= c <= 0x9F or c == 0xDC or c == 0xDD:
        e = read_arrhdr(p, q, end, &n)
        if e < 0 or n > end - e:   # (each item takes a byte at least)
            return _ELSEWHERE
        pos[0] = e
        out = PyList_New(n)
        for i in range(n):
            v = read_value(p, pos, end, depth + 1)
            if v is _ELSEWHERE:
                for i in range(i, n):
                    Py_INCREF(None)
                    PyList_SET_ITEM(out, i, None)
                return _ELSEWHERE
            Py_INCREF(v)
            PyList_SET_ITEM(out, i, v)
        return out
    if 0x80 <= c <= 0x8F or c == 0xDE or c == 0xDF:
        if c <= 0x8F:
            n, e = c & 0x0F, q + 1
        elif c == 0xDE and q + 3 <= end:
            n, e = rd16(p + q + 1), q + 3
        elif c == 0xDF and q + 5 <= end:
            n, e = rd32(p + q + 1), q + 5
        else:
            return _ELSEWHERE
        if n > (end - e) // 2:
            return _ELSEWHERE
        pos[0] = e
        d = {}
        for i in range(n):
            k = read_value(p, pos, end, depth + 1)
            if k is _ELSEWHERE:
                return _ELSEWHERE
            v = read_value(p, pos, end, depth + 1)
            if v is _ELSEWHERE:
                return _ELSEWHERE
            try:
                d[k] = v
            except TypeError:   # an unhashable key: the reference says so
                return _ELSEWHERE
        return d
    return _ELSEWHERE   # an ext, or the unused byte 0xC1


def unpackb(data):
    """Decode exactly one msgpack object with the vtpu extensions.

    :param data: the encoded bytes (must hold exactly one object).
    :returns: the decoded value (arrays as lists, str as str, bin as bytes).
    :raises ProtocolError: on malformed input, trailing bytes or an unknown ext type.
    """
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0
    if PyBytes_CheckExact(data):
        v = read_value(<const unsigned char*>PyBytes_AS_STRING(data), &pos,
                       PyBytes_GET_SIZE(data), 0)
        if v is not _ELSEWHERE and pos == PyBytes_GET_SIZE(data):
            return v
        return _ref.unpackb(data)
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except TypeError:
        return _ref.unpackb(data)   # not bytes-like: the reference's own error
    try:
        v = read_value(<const unsigned char*>view.buf, &pos, view.len, 0)
        if v is not _ELSEWHERE and pos == view.len:
            return v
    finally:
        PyBuffer_Release(&view)
    return _ref.unpackb(data)


cdef object read_content(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end):
    """Decode the content at ``pos[0]`` (what :func:`read_value` reads in place, an array
    content with ``unpackb``) and move ``pos[0]`` past it; ``pos[0]`` is -1 if it cannot
    be read here (the caller then decodes the whole thing generically)."""
    cdef Py_ssize_t q = pos[0], e
    v = read_value(p, pos, end, 0)
    if v is not _ELSEWHERE:
        return v
    e = skip(p, q, end, 0)
    if e < 0:
        pos[0] = -1
        return None
    try:
        v = unpackb(PyBytes_FromStringAndSize(<const char*>p + q, e - q))
    except ProtocolError:
        pos[0] = -1
        return None
    pos[0] = e
    return v


# ---------------------------------------------------------------------------------------
# Scroll lists: decoded column by column straight into the core's Scrolls

cdef object _UNSET = object()


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object parse_scroll_list(bytes data, Py_ssize_t pos, object names,
                              Py_ssize_t* end_out):
    """The scroll list at ``data[pos:]`` as a :class:`vtpu.results.Scrolls`, or None when
    it is not in the canonical form read here (then the reference decodes it, or says
    why it is malformed). The result's columns are written as the bytes are read, in
    one pass: bin, str, number and bool contents stay spans over ``data`` (text
    checked as UTF-8), other contents are decoded into objects, and stacked contents
    (one ndarray) are given to ``Scrolls.from_columns``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = len(data), n, cnt, i, kl, q, e, n_items
    cdef int k
    cdef double dbl
    cdef uint64_t x
    cdef unsigned char c
    cdef bint bad_text = False
    if pos < 0 or pos >= end or p[pos] != 0x95:
        return None
    q = read_binhdr(p, pos + 1, end, &kl)
    if q < 0 or kl % KEY_SIZE:
        return None
    n = kl // KEY_SIZE
    keys = PyBytes_FromStringAndSize(<const char*>p + q, kl)
    pos = q + kl
    stacked = None
    if pos < end and (0xD4 <= p[pos] <= 0xD8 or 0xC7 <= p[pos] <= 0xC9):
        # Stacked contents: one ndarray ext whose row i is content i.
        e = skip(p, pos, end, 0)
        if e < 0:
            return None
        try:
            stacked = unpackb(memoryview(data)[pos:e])
        except ProtocolError:
            return None
        if type(stacked) is not _ndarray or stacked.ndim < 2 or stacked.shape[0] != n:
            return None
        pos = e
        n_items = 0   # no content to read one by one
    else:
        pos = read_arrhdr(p, pos, end, &cnt)
        if pos < 0 or cnt != n:
            return None
        n_items = n
    cdef list objects = []
    cdef _CScrolls out = _new_scrolls(n, names, [], _ref.unpack_value)
    cdef uint8_t* kinds = out.kinds
    cdef int64_t* offs = out.offs
    cdef int64_t* lens = out.lens
    cdef int64_t* ver = out.ver
    cdef double* times[2]
    times[0], times[1] = out.ctime, out.utime
    for i in range(n_items):
        if pos >= end:
            return None
        c = p[pos]
        offs[i] = lens[i] = 0
        if c == 0xC0:
            kinds[i] = K_NONE
            pos += 1
            continue
        e = read_binhdr(p, pos, end, &kl)
        if e >= 0:
            kinds[i] = K_BYTES
        else:
            e = read_strhdr(p, pos, end, &kl)
            if e >= 0:
                kinds[i] = K_STR
                # (read_strhdr has checked the span is in the data)
                bad_text = bad_text or not _ascii(p + e, kl)
        if e >= 0:
            offs[i] = e
            lens[i] = kl
            pos = e + kl
            continue
        e = _scalar_end(p, pos, end)
        if e > 0:
            # A number or bool stays a span too: made when it is read, as the store's.
            kinds[i] = K_PACKED
            offs[i] = pos
            lens[i] = e - pos
            pos = e
            continue
        v = read_content(p, &pos, end)
        if pos < 0:
            return None
        kinds[i] = K_OBJECT
        offs[i] = len(objects)
        objects.append(v)
    if bad_text:
        # Some text is not ASCII: each such span must be UTF-8 (what the reference
        # refuses otherwise, even where nothing is stored).
        for i in range(n_items):
            if kinds[i] == K_STR and text_invalid(p + offs[i], lens[i]):
                return None
    pos = read_arrhdr(p, pos, end, &cnt)
    if pos < 0 or cnt != n:
        return None
    for i in range(n):
        pos = read_uint(p, pos, end, &x)
        if pos < 0 or x > <uint64_t>INT64_MAX:
            return None
        ver[i] = <int64_t>x
        if x == 0:
            kinds[i] = K_DEAD
            offs[i] = lens[i] = 0
    for k in range(2):
        pos = read_arrhdr(p, pos, end, &cnt)
        if pos < 0 or cnt != n:
            return None
        for i in range(n):
            if ver[i] == 0:
                times[k][i] = 0.0
                pos = skip(p, pos, end, 0)  # an absent entry's time is not looked at
                if pos < 0:
                    return None
            else:
                pos = read_double(p, pos, end, &dbl)
                if pos < 0:
                    return None
                times[k][i] = dbl
    end_out[0] = pos
    if stacked is not None:
        return _Scrolls.from_columns(keys, stacked, _array_copy(ver, n, np.int64),
                                     _array_copy(out.ctime, n, np.float64),
                                     _array_copy(out.utime, n, np.float64), None, names)
    out._keys = keys
    out._data = data
    out._objs = objects
    return out


cdef object _array_copy(const void* src, Py_ssize_t n, object dtype):
    """A numpy array of n items of ``dtype`` (an 8-byte type), copied from ``src``."""
    a = np.empty(n, dtype=dtype)
    cdef unsigned char[::1] w = a.view(np.uint8)
    if n:
        memcpy(&w[0], src, n * 8)
    return a


cdef bint text_invalid(const unsigned char* s, Py_ssize_t n):
    """Whether the n bytes at s are not UTF-8 text."""
    if _ascii(s, n):
        return False
    try:
        PyUnicode_DecodeUTF8(<const char*>s, n, "strict")
    except UnicodeDecodeError:
        return True
    return False


def decode_scrolls(data, Py_ssize_t offset=0, names=None):
    """Decode the column-wise scroll list at ``data[offset:]`` (either contents form).

    :param data: bytes holding the encoded list (a reply body, say).
    :param offset: where the list starts.
    :param names: the name table given to every Scroll.
    :returns: ``(scrolls, end)``: a :class:`vtpu.results.Scrolls` (item i a Scroll,
        or ``None`` for version 0), and the offset just after the list.
    :raises ProtocolError: if the bytes are truncated or not a scroll list.
    """
    cdef Py_ssize_t end = 0
    if not PyBytes_CheckExact(data):
        data = bytes(data)
    r = parse_scroll_list(<bytes>data, offset, names, &end)
    if r is None:
        return _ref.decode_scrolls(data, offset, names)
    return r, end


def decode_response_scrolls(body, names=None, bint page=False):
    """Decode a reply body whose success result is a scroll list (GET_MANY, KG) or, with
    ``page``, a RANGE page ``[scroll list, after]``.

    :param body: one frame body.
    :param names: the name table given to every Scroll.
    :param page: the result is a RANGE page.
    :returns: a ``Reply`` whose ``value`` is the scrolls (with ``page``:
        ``(scrolls, after)``); an error reply or a push decode as in ``parse_reply``.
    :raises ProtocolError: if the body is malformed, or a success result is not of
        that shape.
    """
    cdef uint64_t msgid
    cdef Py_ssize_t end, pos, q, kl
    if not PyBytes_CheckExact(body):
        body = bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    end = len(<bytes>body)
    if end >= 3 and p[0] == 0x93:
        pos = read_uint(p, 1, end, &msgid)
        if pos > 0 and pos < end and p[pos] == 0x00:
            pos += 1
            if not page or (pos < end and p[pos] == 0x92):
                r = parse_scroll_list(<bytes>body, pos + 1 if page else pos, names, &q)
                if r is not None:
                    if not page:
                        if q == end:
                            return Reply(msgid, True, r)
                    elif q + 1 == end and p[q] == 0xC0:
                        return Reply(msgid, True, (r, None))
                    elif (q + 2 + KEY_SIZE == end and p[q] == 0xC4
                          and p[q + 1] == KEY_SIZE):
                        return Reply(msgid, True, (r, PyBytes_FromStringAndSize(
                            <const char*>p + q + 2, KEY_SIZE)))
    return _ref.decode_response_scrolls(body, names, page)


# ---------------------------------------------------------------------------------------
# The frame decoder

cdef enum:
    OP_NONE = 0
    OP_GET = 1
    OP_PUT = 2

cdef inline int plain_op(object msg):
    # OP_GET for [msgid, "GET", [bin of 18]], OP_PUT for [msgid, "PUT", [bin of 18,
    # content]], else OP_NONE (the reference's _plain_op).
    if type(msg) is not list or len(<list>msg) != 3:
        return OP_NONE
    msgid, op, args = msg
    if not (PyLong_CheckExact(msgid) and 1 <= msgid <= 0xFFFFFFFF
            and PyList_CheckExact(args) and len(<list>args) >= 1):
        return OP_NONE
    key = args[0]
    if not (PyBytes_CheckExact(key) and len(<bytes>key) == KEY_SIZE):
        return OP_NONE
    if op == "GET" and len(<list>args) == 1:
        return OP_GET
    if op == "PUT" and len(<list>args) == 2:
        return OP_PUT
    return OP_NONE


cdef inline object scroll_row_or_none(object v, object names):
    # A Scroll from a scroll's wire form, or _UNSET if v is not exactly that shape.
    if type(v) is list and len(<list>v) == 5:
        key, content, version, created, updated = v
        if (PyBytes_CheckExact(key) and len(<bytes>key) == KEY_SIZE
                and PyLong_CheckExact(version) and 1 <= version <= INT64_MAX
                and PyFloat_CheckExact(created) and PyFloat_CheckExact(updated)):
            return Scroll(key, content, version, created, updated, names)
    return _UNSET


cdef class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes)``, then ``next()`` until ``None``.

    The compiled twin of ``vtpu.protocol.FrameDecoder`` (same methods, same results);
    it keeps the received bytes in one C buffer and reads the hot frame shapes in place.

    :param max_frame_size: the largest body accepted.
    :param max_batch: with :meth:`next_requests`, refuse a BATCH request announcing more
        operations than this before decoding it; 0 does not check.
    """
    cdef public Py_ssize_t max_frame_size
    cdef public Py_ssize_t max_batch
    cdef char* buf
    cdef Py_ssize_t start, end, cap
    cdef object peek  # decoded body of the complete frame at start, or _UNSET

    def __cinit__(self, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE,
                  Py_ssize_t max_batch=0):
        self.max_frame_size = max_frame_size
        self.max_batch = max_batch
        self.buf = NULL
        self.start = self.end = self.cap = 0
        self.peek = _UNSET

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef int _append(self, const char* s, Py_ssize_t n) except -1:
        cdef Py_ssize_t live = self.end - self.start, cap
        cdef char* q
        if self.end + n > self.cap:
            if self.start:
                # Move the unread bytes (at most a few frames) to the front first.
                memmove(self.buf, self.buf + self.start, live)
                self.start, self.end = 0, live
            if live + n > self.cap:
                cap = self.cap * 2 if self.cap else 65536
                while cap < live + n:
                    cap *= 2
                q = <char*>PyMem_Realloc(self.buf, cap)
                if q == NULL:
                    raise MemoryError()
                self.buf = q
                self.cap = cap
        memcpy(self.buf + self.end, s, n)
        self.end += n
        return 0

    def feed(self, data):
        """Append received bytes.

        :param data: any bytes-like object (possibly empty, possibly several frames).
        """
        cdef Py_buffer view
        if self.start == self.end:
            self.start = self.end = 0
        if PyBytes_CheckExact(data):
            self._append(PyBytes_AS_STRING(data), len(<bytes>data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._append(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def buffered(self):
        """Return how many received bytes are not yet consumed (at most a partial frame
        after :meth:`next` returned ``None``)."""
        return self.end - self.start

    def head_size(self):
        """Return the size, its 4-byte header included, of the frame at the read position
        as its header announces it (complete or not), or 0 before 4 bytes of it arrived.
        A server uses it to budget the memory a frame still arriving will take."""
        if self.end - self.start < 4:
            return 0
        return 4 + <Py_ssize_t>rd32(<const unsigned char*>self.buf + self.start)

    cdef Py_ssize_t _frame_end(self) except -2:
        # Offset just after the complete frame at start, or -1.
        if self.end - self.start < 4:
            return -1
        cdef Py_ssize_t n = rd32(<const unsigned char*>self.buf + self.start)
        if n > self.max_frame_size:
            raise FrameTooLarge(
                f"frame body of {n} bytes exceeds max_frame_size {self.max_frame_size}")
        if n == 0:
            raise ProtocolError("frame with an empty body")
        n += self.start + 4
        return n if n <= self.end else -1

    cdef inline void _consume(self, Py_ssize_t e) noexcept:
        self.peek = _UNSET
        self.start = e
        if e == self.end:
            self.start = self.end = 0

    cdef object _decoded(self, Py_ssize_t e):
        if self.peek is _UNSET:
            self.peek = unpackb(PyBytes_FromStringAndSize(self.buf + self.start + 4,
                                                          e - self.start - 4))
        return self.peek

    def next_body(self):
        """Return the next complete frame body as raw bytes, or ``None`` if incomplete.

        :raises FrameTooLarge: on a length above ``max_frame_size``.
        :raises ProtocolError: on a zero length (either way the stream is unusable).
        """
        cdef Py_ssize_t e = self._frame_end()
        if e < 0:
            return None
        body = PyBytes_FromStringAndSize(self.buf + self.start + 4, e - self.start - 4)
        self._consume(e)
        return body

    def next(self):
        """Return the next decoded message, or ``None`` if no complete frame is buffered.

        :raises ProtocolError: on an oversized/empty length or a body that is not exactly
            one valid msgpack object (the frame is consumed). After this error the
            stream is unusable.
        """
        cdef Py_ssize_t e = self._frame_end()
        if e < 0:
            return None
        try:
            return self._decoded(e)
        finally:
            self._consume(e)

    next_frame = next

    def __iter__(self):
        """Iterate over the complete messages buffered so far."""
        while True:
            msg = self.next()
            if msg is None:
                return
            yield msg

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def next_requests(self, Py_ssize_t limit):
        """Take the next request, or the next run of plain GETs or plain PUTs.

        A plain GET is a frame whose body is exactly ``[msgid, "GET", [bin of 18]]``, a
        plain PUT one whose body is ``[msgid, "PUT", [bin of 18, content]]``.

        :param limit: most frames to consume (>= 1).
        :returns: ``None`` if no complete frame is buffered; a run as the 4-tuple
            ``(opcode, msgids, keys, contents)`` (``contents`` is ``None`` for GET);
            otherwise one request as the 3-tuple ``(msgid, opcode, args)``.
        :raises RequestError: a frame that decodes but is not a request, or a BATCH of
            more than ``max_batch`` operations (consumed; the stream stays usable).
        :raises ProtocolError: an empty or oversized length, or a body that is not
            exactly one msgpack object (consumed; the stream is unusable). A run
            before such a frame is returned first; the next call raises.
        """
        cdef list msgids = []
        cdef list contents = None
        cdef Buf keys
        cdef Py_ssize_t e, e2, size, q, count = 0
        cdef const unsigned char* p
        cdef uint64_t mid
        cdef int op, run_op = OP_NONE
        buf_init(&keys)
        try:
            while count < limit:
                e = -1
                try:
                    e = self._frame_end()
                    if e < 0:
                        break
                    p = <const unsigned char*>self.buf + self.start + 4
                    size = e - self.start - 4
                    # The canonical forms: 93 <uint msgid> a3 "GET" 91 c4 12 <key> and
                    # 93 <uint msgid> a3 "PUT" 92 c4 12 <key> <content>
                    q = read_uint(p, 1, size, &mid) if size >= 27 and p[0] == 0x93 else -1
                    if (q > 0 and q + 25 <= size and mid >= 1 and mid <= 0xFFFFFFFF
                            and p[q] == 0xA3 and p[q + 5] == 0xC4 and p[q + 6] == KEY_SIZE):
                        op = OP_NONE
                        if (p[q + 1] == 71 and p[q + 2] == 69 and p[q + 3] == 84
                                and p[q + 4] == 0x91 and q + 25 == size):
                            op = OP_GET
                        elif (p[q + 1] == 80 and p[q + 2] == 85 and p[q + 3] == 84
                                and p[q + 4] == 0x92 and q + 25 < size):
                            e2 = q + 25
                            content = read_content(p, &e2, size)
                            if e2 == size:
                                op = OP_PUT
                        if op != OP_NONE and (run_op == OP_NONE or op == run_op):
                            run_op = op
                            msgids.append(mid)
                            put(&keys, <const char*>p + q + 7, KEY_SIZE)
                            if op == OP_PUT:
                                if contents is None:
                                    contents = []
                                contents.append(content)
                            self._consume(e)
                            count += 1
                            continue
                    if self.max_batch and size > self.max_batch:
                        # Only a body this long can be a BATCH over the limit.
                        refuse_big_batch(PyBytes_FromStringAndSize(<const char*>p,
                                                                   min(size, 32)),
                                         self.max_batch)
                    msg = self._decoded(e)
                except ProtocolError:
                    if count:
                        break
                    if e >= 0:
                        self._consume(e)
                    raise
                op = plain_op(msg)
                if op == OP_NONE or (run_op != OP_NONE and op != run_op):
                    if count:
                        break
                    self._consume(e)
                    if (type(msg) is list and len(<list>msg) == 3
                            and PyLong_CheckExact(msg[0]) and 1 <= msg[0] <= 0xFFFFFFFF
                            and PyUnicode_CheckExact(msg[1]) and PyList_CheckExact(msg[2])):
                        return msg[0], msg[1], msg[2]
                    return parse_request(msg)  # raises the reference's RequestError
                run_op = op
                args = msg[2]
                msgids.append(msg[0])
                put(&keys, PyBytes_AS_STRING(args[0]), KEY_SIZE)
                if op == OP_PUT:
                    if contents is None:
                        contents = []
                    contents.append(args[1])
                self._consume(e)
                count += 1
            if not count:
                return None
            return ("GET" if run_op == OP_GET else "PUT"), msgids, buf_bytes(&keys), contents
        finally:
            buf_free(&keys)


@cython.boundscheck(False)
@cython.wraparound(False)
def decode_get_replies(data, Py_ssize_t pos, Py_ssize_t end, msgid, Py_ssize_t count,
                       names=None, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE):
    """Decode a run of GET success replies in place, from a client's receive buffer.

    Starting at ``data[pos]``, decodes consecutive complete frames whose bodies are
    ``[msgid + i, 0, nil]`` or ``[msgid + i, 0, [key bin(18), content, version uint >= 1,
    created float, updated float]]``, at most ``count``; stops at the first frame that is
    incomplete or of any other kind, which the caller then reads generically.

    :param data: the receive buffer (any contiguous bytes-like object).
    :param pos: offset of the next unread frame.
    :param end: end of the received bytes in ``data``.
    :param msgid: the id the first reply must carry.
    :param count: most replies to decode.
    :param names: the name table given to every Scroll.
    :param max_frame_size: the largest body accepted (a larger or empty length stops the
        run; the caller's framing reports it).
    :returns: ``(scrolls, pos, need_more)``: a list of Scroll or ``None``, the offset
        after them, and whether the run stopped at an incomplete frame.
    """
    cdef Py_buffer view
    cdef bint need_more = False
    cdef list out
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = _decode_gets(<const unsigned char*>view.buf, &pos,
                           end if end < view.len else view.len, msgid, count, names,
                           max_frame_size, &need_more)
        return out, pos, need_more
    finally:
        PyBuffer_Release(&view)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef list _decode_gets(const unsigned char* p, Py_ssize_t* at, Py_ssize_t end, msgid,
                       Py_ssize_t count, names, Py_ssize_t max_frame_size,
                       bint* need_more_out):
    # decode_get_replies over p[*at:end]: the list read; *at moves past it.
    cdef list out = []
    cdef Py_ssize_t size, q, done = 0, pos = at[0]
    cdef const unsigned char* b
    cdef const unsigned char* kp
    cdef uint64_t mid, ver = 0, want = 0
    cdef double created, updated
    cdef bint fast = PyLong_CheckExact(msgid) and 0 <= msgid <= 0xFFFFFFFF
    cdef bint need_more = False
    if fast:
        want = msgid
    try:
        while done < count:
            if end - pos < 4:
                need_more = True
                break
            size = rd32(p + pos)
            if size == 0 or size > max_frame_size:
                break
            if end - pos - 4 < size:
                need_more = True
                break
            b = p + pos + 4
            if fast:
                q = read_uint(b, 1, size, &mid) if b[0] == 0x93 else -1
                if q > 0 and mid == want + <uint64_t>done and q + 1 < size and b[q] == 0:
                    q += 1
                    if b[q] == 0xC0 and q + 1 == size:
                        out.append(None)
                        pos += 4 + size
                        done += 1
                        continue
                    if (b[q] == 0x95 and q + 3 + KEY_SIZE <= size and b[q + 1] == 0xC4
                            and b[q + 2] == KEY_SIZE):
                        kp = b + q + 3
                        q += 3 + KEY_SIZE
                        content = read_content(b, &q, size)
                        if q > 0:
                            q = read_uint(b, q, size, &ver)
                        if q > 0:
                            q = read_double(b, q, size, &created)
                        if q > 0:
                            q = read_double(b, q, size, &updated)
                        if q == size and 1 <= ver <= <uint64_t>INT64_MAX:
                            out.append(_new_scroll_at(kp, content, <int64_t>ver, created,
                                                      updated, names))
                            pos += 4 + size
                            done += 1
                            continue
            # Another encoding: the generic decoder and the reference's checks.
            try:
                msg = unpackb(PyBytes_FromStringAndSize(<const char*>b, size))
            except ProtocolError:
                break
            if (type(msg) is not list or len(<list>msg) != 3
                    or not PyLong_CheckExact(msg[0]) or msg[0] != msgid + done
                    or not PyLong_CheckExact(msg[1]) or msg[1] != 0):
                break
            v = msg[2]
            if v is not None:
                v = scroll_row_or_none(v, names)
                if v is _UNSET:
                    break
            out.append(v)
            pos += 4 + size
            done += 1
        return out
    finally:
        at[0] = pos
        need_more_out[0] = need_more


cdef extern from *:
    """
    /* One send() and one recv() on a descriptor, for ReplyBuffer.send_recv. Where the
       client never passes one (Windows: no kernel timeouts, fd is -1) they only fail;
       where MSG_NOSIGNAL is missing (macOS) Python already ignores SIGPIPE. */
    #include <errno.h>
    #if defined(_WIN32)
    static Py_ssize_t vtpu_send(int fd, const void* b, size_t n) { errno = ENOSYS; return -1; }
    static Py_ssize_t vtpu_recv(int fd, void* b, size_t n) { errno = ENOSYS; return -1; }
    #else
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    static Py_ssize_t vtpu_send(int fd, const void* b, size_t n) {
        return send(fd, b, n, MSG_NOSIGNAL);
    }
    static Py_ssize_t vtpu_recv(int fd, void* b, size_t n) { return recv(fd, b, n, 0); }
    #endif
    """
    Py_ssize_t vtpu_send(int fd, const void* b, size_t n) nogil
    Py_ssize_t vtpu_recv(int fd, void* b, size_t n) nogil

cdef extern from "<errno.h>":
    int errno
    int EINTR


cdef int _os_error_or_retry() except -1:
    # After a failed send/recv: EINTR runs the signal handlers (their exception
    # propagates) and asks for a retry, as the socket module does (PEP 475); any other
    # errno is raised as the OSError subclass it maps to.
    if errno == EINTR:
        if PyErr_CheckSignals() < 0:
            return -1
        return 0
    PyErr_SetFromErrno(OSError)
    return -1


cdef class ReplyBuffer:
    """A client connection's receive buffer: socket reads land in its free space, and
    whole reply frames are taken from its front.

    The compiled twin of ``vtpu.protocol.ReplyBuffer`` (same methods, same results): a
    single call's read and reply take no Python frame.

    :param max_frame_size: the largest reply body accepted.
    :param size: the starting capacity in bytes (it grows to hold the largest frame).
    """
    cdef public Py_ssize_t max_frame_size
    cdef bytearray buf
    cdef object view  # memoryview of buf
    cdef Py_ssize_t start, end

    def __cinit__(self, Py_ssize_t max_frame_size=_ref.DEFAULT_MAX_FRAME_SIZE,
                  Py_ssize_t size=65536):
        self.max_frame_size = max_frame_size
        self.buf = bytearray(max(size, 16))
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    cdef int _replace(self, Py_ssize_t size) except -1:
        # A new buffer of ``size`` holding the unread bytes at its front (a new object,
        # not a resize: views handed out earlier keep the bytes they showed).
        cdef Py_ssize_t n = self.end - self.start
        cdef bytearray nb = bytearray(size)
        memcpy(PyByteArray_AS_STRING(nb), PyByteArray_AS_STRING(self.buf) + self.start, n)
        self.buf = nb
        self.view = memoryview(nb)
        self.start, self.end = 0, n
        return 0

    cdef object _free_space(self):
        cdef Py_ssize_t cap = PyByteArray_GET_SIZE(self.buf)
        if self.start == self.end:
            self.start = self.end = 0
            return self.view
        if cap - self.end < 4096:
            self._replace(cap if self.start else 2 * cap)
        return self.view[self.end:]

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """The writable free space after the received bytes (never empty), for
        ``recv_into``; report what was written with :meth:`buffer_updated`."""
        return self._free_space()

    def buffer_updated(self, Py_ssize_t nbytes):
        """Record that ``nbytes`` were written at the start of :meth:`get_buffer`'s space.

        :raises ValueError: more bytes than that space holds.
        """
        if nbytes < 0 or self.end + nbytes > PyByteArray_GET_SIZE(self.buf):
            raise ValueError(f"{nbytes} bytes do not fit the free space "
                             f"({PyByteArray_GET_SIZE(self.buf) - self.end})")
        self.end += nbytes

    def recv(self, sock):
        """Read once from ``sock`` (``sock.recv_into``) into the free space.

        :returns: the number of bytes read; 0 when the peer closed the connection.
        :raises OSError: what the socket raises (a timeout, a reset...).
        """
        cdef Py_ssize_t n = sock.recv_into(self._free_space())
        self.end += n
        return n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def send_recv(self, sock, int fd, bytes frame not None):
        """A single call's round trip on a blocking socket: send all of ``frame``, then
        read once into the free space.

        :param fd: the socket's descriptor when it is a plain blocking TCP socket whose
            timeouts the kernel enforces: the two system calls are made here, with the
            GIL released (a signal is handled as the socket module handles it, then the
            call goes on); -1 for any other socket (through its methods).
        :returns: the number of bytes read; 0 when the peer closed the connection.
        :raises OSError: what the system call failed with (EAGAIN when a kernel timeout
            expired).
        """
        cdef const char* p = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t left = PyBytes_GET_SIZE(frame), r
        cdef bytearray buf
        cdef char* dst
        cdef size_t room
        if fd < 0:
            sock.sendall(frame)
            return self.recv(sock)
        while left > 0:
            with nogil:
                r = vtpu_send(fd, p, left)
            if r < 0:
                _os_error_or_retry()
                continue
            p += r
            left -= r
        self._free_space()
        buf = self.buf  # held while the GIL is released
        dst = PyByteArray_AS_STRING(buf) + self.end
        room = PyByteArray_GET_SIZE(buf) - self.end
        while True:
            with nogil:
                r = vtpu_recv(fd, dst, room)
            if r >= 0:
                break
            _os_error_or_retry()
        self.end += r
        return r

    def feed(self, data):
        """Copy received bytes in (for transports that hand out bytes)."""
        cdef Py_buffer v
        cdef Py_ssize_t need, size
        PyObject_GetBuffer(data, &v, PyBUF_SIMPLE)
        try:
            if PyByteArray_GET_SIZE(self.buf) - self.end < v.len:
                need = self.end - self.start + v.len
                size = PyByteArray_GET_SIZE(self.buf)
                while size < need:
                    size *= 2
                self._replace(size)
            memcpy(PyByteArray_AS_STRING(self.buf) + self.end, v.buf, v.len)
            self.end += v.len
        finally:
            PyBuffer_Release(&v)

    def buffered(self):
        """How many received bytes are not taken yet."""
        return self.end - self.start

    def clear(self):
        """Drop every buffered byte (the connection was replaced)."""
        self.start = self.end = 0

    def next_body(self):
        """Take the next complete frame and return its body, or None while it has not
        fully arrived (the buffer then grows, once, to hold a frame larger than it).

        :raises ProtocolError: a length of 0 or above ``max_frame_size``.
        """
        cdef Py_ssize_t s = self.start, avail = self.end - self.start, n
        if avail < 4:
            return None
        n = rd32(<const unsigned char*>PyByteArray_AS_STRING(self.buf) + s)
        if n > self.max_frame_size or n == 0:
            raise ProtocolError(
                f"reply frame of {n} bytes (max_frame_size {self.max_frame_size})")
        if avail < 4 + n:
            if 4 + n > PyByteArray_GET_SIZE(self.buf):
                self._replace(4 + n)
            return None
        self.start = s + 4 + n
        return self.view[s + 4:s + 4 + n]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def take_reply(self, msgid):
        """Take the next frame if it is the success reply to ``msgid`` (``[msgid, 0,
        value]``, the whole body one msgpack object): ``(True, value)``. Anything else
        (an error, a push, another reply, a frame not fully arrived, a malformed one) is
        left where it is, for :meth:`next_body`, and None returned.
        """
        cdef Py_ssize_t s = self.start, avail = self.end - self.start, n, pos
        cdef uint64_t mid = 0
        cdef const unsigned char* p
        if avail < 4:
            return None
        p = <const unsigned char*>PyByteArray_AS_STRING(self.buf) + s
        n = rd32(p)
        if n > self.max_frame_size or n == 0 or avail < 4 + n:
            return None
        # The canonical form every reply is written in: fixarray 3, the id as a uint,
        # status 0, then the value. A frame that starts as another reply or a push
        # (another id) or an error (another positive fixint status) is left for
        # next_body to decode once, whatever follows: the reference says None for it
        # too, malformed or not.
        pos = read_uint(p, 5, 4 + n, &mid) if p[4] == 0x93 else -1
        if pos > 0 and pos < 4 + n and type(msgid) is int and 0 <= msgid <= 0xFFFFFFFF:
            if mid != <uint64_t>msgid or 0 < p[pos] <= 0x7F:
                return None
            if p[pos] == 0:
                pos += 1
                v = read_value(p, &pos, 4 + n, 0)
                if v is not _ELSEWHERE and pos == 4 + n:
                    self.start = s + 4 + n
                    return True, v
        # Any other form: decoded whole and checked by the reference's own test.
        got = _ref.success_reply(PyBytes_FromStringAndSize(<const char*>p + 4, n), msgid)
        if got is not None:
            self.start = s + 4 + n
        return got

    def take_get_replies(self, msgid, Py_ssize_t count, names=None):
        """Take the run of GET success replies at the front, as
        :func:`decode_get_replies` reads them (at most ``count``, ids from ``msgid``).

        :returns: the list of Scroll or None read (empty: the next frame is incomplete
            or of another kind).
        """
        cdef bint more = False
        # (The buffer is only read here: no Python code runs that could replace it.)
        return _decode_gets(<const unsigned char*>PyByteArray_AS_STRING(self.buf),
                            &self.start, self.end, msgid, count, names,
                            self.max_frame_size, &more)
