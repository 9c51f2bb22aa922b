# ---------------------------------------------------------------------------------------
# The column store: every scroll of an engine as one row of C columns.
#
# A row is a key in the key column (9 native uint16, the form the coordinate index sorts
# and CNEAREST scans) and a fixed-size record (Row: version int64, created/updated
# float64, and the content reference: kind byte, offset, length). str and bytes contents,
# numpy arrays and numbers (their msgpack bytes) live in one byte arena, except a number
# of at most ROW_INLINE bytes (an int of 32 bits, a bool), which the row holds in its
# offset field, as Redis holds small integers in the object itself; other values (lists,
# dicts) stay Python objects in one list. Nothing at rest is a Python object per scroll.
#
# The key column has two runs: the sorted run (rows [0, m): a read-only numpy array,
# shared with the coordinate index as its main array, so keys are held once) and the
# tail (rows [m, n), appended since). compact() puts every live row in key order (one
# merge of the run with the sorted tail), drops deleted rows, rewrites the arena when a
# quarter of it is garbage, and returns the old -> new row map.
#
# An open-addressing hash (linear probing, 4-byte slots holding row + 1) finds a key's
# row; the keys themselves stay in the key column. A deleted row keeps its place (kind
# CK_DEAD) until compaction and leaves a tombstone slot.
# ---------------------------------------------------------------------------------------

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE)

import numpy as np
from vtpu.errors import InterfaceError

cdef object _NDARRAY = np.ndarray
cdef object _frombuffer = np.frombuffer


# -- the key hash ------------------------------------------------------------------------

cdef int kh_alloc(KeyHash* h, Py_ssize_t cap) except -1:
    """Give ``h`` ``cap`` empty slots (a power of two); the old slots are not freed."""
    h.slots = <uint32_t*>vtpu_pages_resize(NULL, 0, cap * sizeof(uint32_t))
    if h.slots == NULL:
        raise MemoryError()
    h.cap = cap
    h.live = 0
    h.deleted = 0
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t kh_find(const KeyHash* h, const KeyCols* kc,
                               const uint16_t* key) noexcept nogil:
    """The row holding ``key`` (9 native uint16), or -1."""
    return kh_find_hashed(h, kc, key, key_hash(<const unsigned char*>key))


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t kh_find_hashed(const KeyHash* h, const KeyCols* kc,
                                      const uint16_t* key, uint64_t hv) noexcept nogil:
    """:func:`kh_find` for a key whose ``key_hash`` is ``hv``."""
    cdef size_t mask = <size_t>h.cap - 1
    cdef size_t i = <size_t>hv & mask
    cdef uint32_t s
    while True:
        s = h.slots[i]
        if s == SLOT_EMPTY:
            return -1
        if s != SLOT_DELETED and memcmp(kc_at(kc, s - 1), key, KEY_BYTES) == 0:
            return s - 1
        i = (i + 1) & mask


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void kh_place(KeyHash* h, const uint16_t* key, uint32_t row) noexcept nogil:
    """Put ``row`` (whose key is not in the hash) in the first free slot of its probe."""
    cdef size_t mask = <size_t>h.cap - 1
    cdef size_t i = <size_t>key_hash(<const unsigned char*>key) & mask
    cdef uint32_t s
    while True:
        s = h.slots[i]
        if s == SLOT_EMPTY or s == SLOT_DELETED:
            if s == SLOT_DELETED:
                h.deleted -= 1
            h.slots[i] = row + 1
            h.live += 1
            return
        i = (i + 1) & mask


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t kh_remove(KeyHash* h, const KeyCols* kc, const uint16_t* key) noexcept nogil:
    """Take ``key`` out of the hash; returns its row, or -1 when it was not there."""
    cdef size_t mask = <size_t>h.cap - 1
    cdef size_t i = <size_t>key_hash(<const unsigned char*>key) & mask
    cdef uint32_t s
    while True:
        s = h.slots[i]
        if s == SLOT_EMPTY:
            return -1
        if s != SLOT_DELETED and memcmp(kc_at(kc, s - 1), key, KEY_BYTES) == 0:
            break
        i = (i + 1) & mask
    h.live -= 1
    # A slot followed by an empty one ends every probe that reaches it, so it can be
    # empty again rather than a tombstone, and so can the tombstones just before it.
    if h.slots[(i + 1) & mask] == SLOT_EMPTY:
        h.slots[i] = SLOT_EMPTY
        i = (i - 1) & mask
        while h.slots[i] == SLOT_DELETED:
            h.slots[i] = SLOT_EMPTY
            h.deleted -= 1
            i = (i - 1) & mask
    else:
        h.slots[i] = SLOT_DELETED
        h.deleted += 1
    return s - 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int kh_rebuild(KeyHash* h, const KeyCols* kc, const Row* meta,
                    Py_ssize_t nrows, Py_ssize_t live) except -1:
    """Refill the hash with every live row (kind != CK_DEAD), sized for a load <= 1/2."""
    cdef Py_ssize_t cap = 16, r
    while cap < 2 * live:
        cap *= 2
    cdef uint32_t* old = h.slots
    cdef Py_ssize_t old_cap = h.cap
    kh_alloc(h, cap)
    vtpu_pages_free(old, old_cap * sizeof(uint32_t))
    with nogil:
        for r in range(nrows):
            if meta[r].kind != CK_DEAD:
                kh_place(h, kc_at(kc, r), <uint32_t>r)
    return 0


cdef inline bint kh_full(const KeyHash* h) noexcept nogil:
    """True when one more row would take the slots in use above 7/10."""
    return (h.live + h.deleted + 1) * 10 > h.cap * 7


# -- helpers -----------------------------------------------------------------------------

cdef void* _grow_buf(void* p, size_t n) except NULL:
    cdef void* q = realloc(p, n if n else 1)
    if q == NULL:
        raise MemoryError()
    return q


cdef void* _grow_pages(void* p, size_t old, size_t n) except NULL:
    cdef void* q = vtpu_pages_resize(p, old, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef inline bint _in_arena(uint8_t kind) noexcept nogil:
    """Whether a content of this kind is bytes (a span of the arena, or of a result's
    data)."""
    return kind == CK_STR or kind == CK_BYTES or kind == CK_ARRAY or kind == CK_PACKED


cdef enum:
    # A packed number this short is held in its row's offset field (40 bits), not in the
    # arena: a point read of it takes no cache miss after the row's.
    ROW_INLINE = 5


cdef inline bint _row_inline(const Row* r) noexcept nogil:
    return r.kind == CK_PACKED and r.len <= ROW_INLINE


cdef inline bint _row_in_arena(const Row* r) noexcept nogil:
    """Whether the row's content takes arena bytes (r.len of them, at r.off)."""
    return _in_arena(<uint8_t>r.kind) and not _row_inline(r)


cdef inline uint64_t _inline_word(const char* src, Py_ssize_t ln) noexcept nogil:
    """The ln <= ROW_INLINE bytes at src as the row's offset field holds them (byte i in
    bits 8i..8i+7, whatever the host's byte order)."""
    cdef uint64_t w = 0
    cdef Py_ssize_t i
    for i in range(ln):
        w |= (<uint64_t>(<const unsigned char*>src)[i]) << (8 * i)
    return w


cdef inline const char* _row_data(const Row* r, const char* arena, char* tmp) noexcept nogil:
    """Where the bytes of a row's content are (an arena kind): in the arena, or, held in
    the row, copied out into ``tmp`` (ROW_INLINE bytes)."""
    cdef uint64_t w
    cdef Py_ssize_t i
    if _row_inline(r):
        w = r.off
        for i in range(<Py_ssize_t>r.len):
            tmp[i] = <char>((w >> (8 * i)) & 0xFF)
        return tmp
    return arena + r.off


cdef object _array_from(const char* base, int64_t off, int64_t ln, object owner,
                        list types):
    """The numpy array stored at base[off:off+ln] (type id, then data), read-only.

    With an owner (a bytes object whose buffer is ``base``) the array is a view of it;
    without one the data is copied first (the store's arena moves).
    """
    cdef uint32_t tid
    memcpy(&tid, base + off, 4)
    dtype, shape = types[tid]
    if ln == 4:
        a = np.empty(shape, dtype)
        a.flags.writeable = False
        return a
    if owner is None:
        a = _frombuffer(PyBytes_FromStringAndSize(base + off + 4, ln - 4), dtype)
    else:
        a = _frombuffer(owner, dtype, (ln - 4) // dtype.itemsize, off + 4)
    return a.reshape(shape)


cdef object _content_from(uint8_t kind, const char* base, int64_t off, int64_t ln,
                          PyObject* owner, PyObject* objs, PyObject* types,
                          PyObject* unpackb):
    """Materialise one content held as (kind, off, ln) over ``base``/``objs``.

    The objects come borrowed (the caller's result or store holds them, and nothing
    here can replace them): a read of one content takes no reference it must give
    back. ``owner`` is NULL when ``base`` is no bytes object's buffer."""
    if kind == CK_STR:
        return _utf8_text(base + off, ln)
    if kind == CK_BYTES:
        return PyBytes_FromStringAndSize(base + off, ln)
    if kind == CK_OBJECT:
        return (<list>objs)[off]
    if kind == CK_ARRAY:
        return _array_from(base, off, ln, None if owner == NULL else <object>owner,
                           <list>types)
    if kind == CK_PACKED:
        v = _packed_scalar(<const unsigned char*>base + off, ln)
        if v is not _NOT_SCALAR:
            return v
        return (<object>unpackb)(PyBytes_FromStringAndSize(base + off, ln))
    return None   # CK_NONE, CK_DEAD


cdef inline (uint8_t, Py_ssize_t) _plain_payload(const unsigned char* b, Py_ssize_t n) noexcept nogil:
    """(kind, header length) of a msgpack-encoded content that is exactly one str, bin
    or nil: its payload can be kept as is. CK_PACKED for anything else."""
    cdef Py_ssize_t hl = 0, ln = -1
    cdef uint8_t kind = CK_PACKED
    if n == 0:
        return CK_PACKED, 0
    cdef unsigned char c = b[0]
    if c == 0xC0:
        return (CK_NONE, 1) if n == 1 else (CK_PACKED, 0)
    if 0xA0 <= c <= 0xBF:
        kind, hl, ln = CK_STR, 1, c & 0x1F
    elif (c == 0xD9 or c == 0xC4) and n >= 2:
        kind, hl, ln = (CK_STR if c == 0xD9 else CK_BYTES), 2, b[1]
    elif (c == 0xDA or c == 0xC5) and n >= 3:
        kind, hl, ln = (CK_STR if c == 0xDA else CK_BYTES), 3, (b[1] << 8) | b[2]
    elif (c == 0xDB or c == 0xC6) and n >= 5:
        kind, hl = (CK_STR if c == 0xDB else CK_BYTES), 5
        ln = (<Py_ssize_t>b[1] << 24) | (b[2] << 16) | (b[3] << 8) | b[4]
    if ln < 0 or hl + ln != n:
        return CK_PACKED, 0
    return kind, hl


cdef object _rows_arg(object rows):
    """Row ids as a C-contiguous int64 array (``rows`` itself when it is one)."""
    a = _vector_arg(rows, cnp.NPY_INT64, np.int64)
    if cnp.PyArray_NDIM(<cnp.ndarray>a) != 1:
        raise InterfaceError(f"rows must be a 1-d array of row ids, got shape {a.shape}")
    return a


cdef inline Py_ssize_t _blob_rows(object blob) except -1:
    if type(blob) is not bytes:
        raise InterfaceError(f"packed coordinates must be bytes, got {type(blob).__name__}")
    cdef Py_ssize_t nb = len(<bytes>blob)
    if nb % KEY_BYTES:
        raise InterfaceError(f"packed coordinates need a multiple of 18 bytes, got {nb}")
    return nb // KEY_BYTES


cdef inline int _key_arg(object key, uint16_t* out) except -1:
    """Unpack an 18-byte packed key into 9 native uint16."""
    if type(key) is not bytes or len(<bytes>key) != KEY_BYTES:
        raise InterfaceError("a packed coordinate is 18 bytes")
    _unpack_row(<const unsigned char*>PyBytes_AS_STRING(key), out)
    return 0


def check_key(object key, str what="key"):
    """An 18-byte packed coordinate (bytes, bytearray or byte memoryview) as bytes.

    :param key: the key.
    :param what: what the key is, for the error message.
    :returns: the key as bytes (the object itself when it is bytes).
    :raises InterfaceError: anything else (a ``(9,)`` array too: pack it first).
    """
    if type(key) is bytes and len(<bytes>key) == KEY_BYTES:
        return key
    b = None
    if type(key) is bytes:
        b = key
    elif isinstance(key, bytearray) or (isinstance(key, memoryview) and key.itemsize == 1):
        b = bytes(key)
    if b is None or len(<bytes>b) != KEY_BYTES:
        got = f"{len(<bytes>b)} bytes" if b is not None else type(key).__name__
        raise InterfaceError(f"{what} must be a packed coordinate of 18 bytes, got {got}")
    return b


cdef struct _LoadState:
    uint16_t prev[NDIM]   # the last key appended
    bint ascending        # every key so far above the one before
    Py_ssize_t count      # rows read


cdef class _Pages:
    """A read-only buffer of pages (vtpu_pages_resize), freed with the object: what the
    sorted run's numpy array is a view of."""
    cdef void* p
    cdef size_t n

    def __cinit__(self):
        self.p = NULL
        self.n = 0

    def __dealloc__(self):
        vtpu_pages_free(self.p, self.n)

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("the sorted run is read-only")
        PyBuffer_FillInfo(buf, self, self.p, self.n, 1, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        pass


cdef object _run_array(_Pages pages, Py_ssize_t m):
    """The (m, 9) uint16 read-only array over a page buffer."""
    return _frombuffer(pages, np.uint16, m * NDIM).reshape(m, NDIM)


# -- the store ---------------------------------------------------------------------------

cdef class ColumnStore:
    """Scrolls as rows of C columns, found by packed key through an open-addressing hash.

    :param names: the name table every :class:`Scroll` it builds refers to.
    :param unpackb: decoder for contents kept encoded (``set(..., packed=True)``); default
        :func:`vtpu.protocol.unpack_value`.

    Writes take contents already validated (the engine's ``check_content``). str
    (UTF-8), bytes and numpy arrays (dtype and shape kept, read back read-only) live in
    the arena; None takes no space; anything else stays the object it is. A version
    counts writes to a key since it was last absent; times are unix seconds. Keys given
    and returned are packed (18 bytes big-endian); rows are numbered in the store's
    order (key order after :meth:`compact`).
    """
    cdef KeyCols kc
    cdef object _run         # rows [0, m): (m, 9) uint16 read-only array, key order
    cdef Py_ssize_t tail_cap
    cdef Row* meta
    cdef Py_ssize_t n, cap, live
    cdef char* arena
    cdef Py_ssize_t arena_n, arena_cap, garbage
    cdef list objs
    cdef uint32_t* free_objs
    cdef Py_ssize_t nfree, free_cap
    cdef readonly list array_types   # type id -> (dtype, shape), append-only
    cdef dict type_ids
    cdef KeyHash ht
    cdef readonly object names
    cdef object unpackb

    def __cinit__(self):
        self.kc.run = NULL
        self.kc.tail = NULL
        self.kc.m = 0
        self.meta = NULL
        self.free_objs = NULL
        self.arena = NULL
        self.ht.slots = NULL

    def __init__(self, names=None, unpackb=None):
        if unpackb is None:
            from vtpu.protocol import unpack_value as unpackb
        if self.ht.slots != NULL:
            raise TypeError("a ColumnStore is initialised once")
        self.names = names
        self.unpackb = unpackb
        self.objs = []
        self.array_types = []
        self.type_ids = {}
        cdef _Pages pages = _Pages()
        pages.p = _grow_pages(NULL, 0, 0)
        self._set_run(pages, 0)
        kh_alloc(&self.ht, 16)

    def __dealloc__(self):
        vtpu_pages_free(self.kc.tail, self.tail_cap * KEY_BYTES)
        vtpu_pages_free(self.meta, self.cap * sizeof(Row))
        vtpu_pages_free(self.arena, self.arena_cap)
        vtpu_pages_free(self.ht.slots, self.ht.cap * sizeof(uint32_t))
        free(self.free_objs)

    cdef _set_run(self, _Pages pages, Py_ssize_t m):
        self._run = _run_array(pages, m)
        self.kc.run = <const uint16_t*>pages.p
        self.kc.m = m

    # -- sizes -------------------------------------------------------------------------

    def __len__(self):
        return self.live

    @property
    def rows(self):
        """Rows in use, deleted ones included (compaction drops those)."""
        return self.n

    @property
    def dead_rows(self):
        """Deleted rows waiting for compaction."""
        return self.n - self.live

    @property
    def garbage_bytes(self):
        """Arena bytes no row refers to any more (overwritten or deleted contents)."""
        return self.garbage

    @property
    def arena_bytes(self):
        """Arena bytes in use, garbage included."""
        return self.arena_n

    @property
    def hash_slots(self):
        """(capacity, live slots, tombstones) of the key hash."""
        return self.ht.cap, self.ht.live, self.ht.deleted

    @property
    def run(self):
        """The sorted run: the keys of rows [0, m) as a read-only (m, 9) uint16 array,
        in coordinate order (the coordinate index's main array)."""
        return self._run

    @property
    def tail_rows(self):
        """Rows appended since the last compaction (they follow the sorted run)."""
        return self.n - self.kc.m

    def nbytes(self):
        """Bytes held by the key column, the row records, the arena and the hash.

        :returns: dict with ``keys`` (sorted run + tail capacity), ``rows`` (records),
            ``arena``, ``hash``, ``objects`` (the object list's pointers) and ``total``.
        """
        out = {"keys": (self.kc.m + self.tail_cap) * KEY_BYTES,
               "rows": self.cap * sizeof(Row), "arena": self.arena_cap,
               "hash": self.ht.cap * 4, "objects": 8 * len(self.objs)}
        out["total"] = sum(out.values())
        return out

    # -- growth ------------------------------------------------------------------------

    cdef int _reserve_rows(self, Py_ssize_t need) except -1:
        """Room for ``need`` rows in all (records and tail keys)."""
        cdef Py_ssize_t cap, tail_need = need - self.kc.m
        if need > MAX_ROWS:
            raise MemoryError(f"a column store holds at most {MAX_ROWS} rows")
        if need > self.cap:
            cap = self.cap * 2 if self.cap else 64
            while cap < need:
                cap *= 2
            self.meta = <Row*>_grow_pages(self.meta, self.cap * sizeof(Row), cap * sizeof(Row))
            self.cap = cap
        if tail_need > self.tail_cap:
            cap = self.tail_cap * 2 if self.tail_cap else 64
            while cap < tail_need:
                cap *= 2
            self.kc.tail = <uint16_t*>_grow_pages(self.kc.tail, self.tail_cap * KEY_BYTES,
                                                  cap * KEY_BYTES)
            self.tail_cap = cap
        return 0

    cdef int _reserve_arena(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.arena_n + extra
        if need <= self.arena_cap:
            return 0
        if need > ROW_MAX_OFF:
            raise MemoryError("the content arena is full (1 TiB)")
        cdef Py_ssize_t cap = self.arena_cap * 2 if self.arena_cap else 4096
        while cap < need:
            cap *= 2
        self.arena = <char*>_grow_pages(self.arena, self.arena_cap, cap)
        self.arena_cap = cap
        return 0

    cdef int _reserve_free(self) except -1:
        """Room in the free-slot list for one more object slot."""
        if self.nfree == self.free_cap:
            self.free_cap = self.free_cap * 2 if self.free_cap else 64
            self.free_objs = <uint32_t*>_grow_buf(self.free_objs,
                                                 self.free_cap * sizeof(uint32_t))
        return 0

    cdef Py_ssize_t _alloc_obj(self, object value) except -1:
        cdef Py_ssize_t slot
        if self.nfree:
            self.nfree -= 1
            slot = self.free_objs[self.nfree]
            self.objs[slot] = value
            return slot
        self.objs.append(value)
        return len(self.objs) - 1

    cdef void _free_obj(self, Py_ssize_t slot):
        # The caller made room with _reserve_free.
        self.objs[slot] = None
        self.free_objs[self.nfree] = <uint32_t>slot
        self.nfree += 1

    cdef Py_ssize_t _type_id(self, object arr):
        """The id of an array's (dtype, shape), -1 when it cannot be kept in the arena."""
        dt = arr.dtype
        if dt.itemsize == 0 or dt.hasobject or dt.fields is not None:
            return -1
        key = (dt, arr.shape)
        tid = self.type_ids.get(key)
        if tid is None:
            if len(self.array_types) >= MAX_ARRAY_TYPES:
                return -1
            tid = len(self.array_types)
            self.array_types.append(key)
            self.type_ids[key] = tid
        return tid

    # -- content -----------------------------------------------------------------------

    cdef int _set_content(self, Row* r, object content, bint fresh, bint packed) except -1:
        """Make ``content`` the content of row ``r``; ``fresh``: it had none before.

        With ``packed``, ``content`` is the msgpack encoding of the value (bytes). Only
        MemoryError can be raised, and only before anything changed. ``r`` must not move
        meanwhile (nothing here grows the records).
        """
        cdef const char* src = NULL
        cdef Py_ssize_t ln = 0, total, oldlen, off, slot
        cdef uint32_t tid = 0
        cdef Py_ssize_t t_id
        cdef uint8_t kind, old
        cdef Py_buffer view
        cdef bint have_view = False, old_arena
        cdef unsigned char num[9]
        if packed and len(<bytes>content) > ROW_MAX_LEN:
            content = self.unpackb(content)   # too large for the arena: kept decoded
            packed = False
        t = type(content)
        if packed:
            kind = CK_PACKED
            src = PyBytes_AS_STRING(content)
            ln = len(<bytes>content)
        elif content is None:
            kind = CK_NONE
        elif t is str:
            kind = CK_STR
            try:
                src = PyUnicode_AsUTF8AndSize(content, &ln)
            except UnicodeEncodeError:
                kind = CK_OBJECT   # lone surrogates: no UTF-8 form, keep the object
        elif t is bytes:
            kind = CK_BYTES
            src = PyBytes_AS_STRING(content)
            ln = len(<bytes>content)
        elif t is int or t is float or t is bool:
            # A number is its few msgpack bytes in the arena, not a Python object.
            ln = _pack_scalar(content, num)
            if ln > 0:
                kind = CK_PACKED
                src = <const char*>num
            else:
                kind = CK_OBJECT
                ln = 0
        elif t is _NDARRAY:
            kind = CK_OBJECT
            t_id = self._type_id(content)
            if t_id >= 0:
                try:
                    PyObject_GetBuffer(content, &view, PyBUF_C_CONTIGUOUS)
                    have_view = True
                    kind = CK_ARRAY
                    tid = <uint32_t>t_id
                    src = <const char*>view.buf
                    ln = view.len
                except (BufferError, TypeError, ValueError):
                    pass
        else:
            kind = CK_OBJECT
        try:
            total = ln + 4 if kind == CK_ARRAY else ln
            if total > ROW_MAX_LEN:
                kind = CK_OBJECT   # large contents stay the objects they are
            old = CK_DEAD if fresh else r.kind
            old_arena = not fresh and _row_in_arena(r)
            oldlen = r.len if old_arena else 0
            if old == CK_OBJECT:
                self._reserve_free()
            if kind == CK_PACKED and total <= ROW_INLINE:
                if old == CK_OBJECT:
                    self._free_obj(r.off)
                self.garbage += oldlen
                r.off = _inline_word(src, total)
                r.len = total
            elif _in_arena(kind):
                if old_arena and total <= oldlen:
                    off = r.off   # fits where the old content was
                else:
                    self._reserve_arena(total)
                    off = self.arena_n
                    self.arena_n += total
                    self.garbage += oldlen
                    oldlen = total
                self.garbage += oldlen - total
                if kind == CK_ARRAY:
                    memcpy(self.arena + off, &tid, 4)
                    memcpy(self.arena + off + 4, src, ln)
                else:
                    memcpy(self.arena + off, src, ln)
                if old == CK_OBJECT:
                    self._free_obj(r.off)
                r.off = off
                r.len = total
            else:
                slot = self._alloc_obj(content) if kind == CK_OBJECT else 0
                if old == CK_OBJECT:
                    self._free_obj(r.off)
                self.garbage += oldlen
                r.off = slot
                r.len = 0
            r.kind = kind
        finally:
            if have_view:
                PyBuffer_Release(&view)
        return 0

    cdef inline object _content(self, Py_ssize_t row):
        cdef Row* r = &self.meta[row]
        cdef char tmp[8]
        cdef const char* base = self.arena
        cdef int64_t off = r.off
        if _row_inline(r):
            base, off = _row_data(r, self.arena, tmp), 0
        return _content_from(r.kind, base, off, r.len, NULL, <PyObject*>self.objs,
                             <PyObject*>self.array_types, <PyObject*>self.unpackb)

    cdef Scroll _scroll(self, Py_ssize_t row, bytes key):
        content = self._content(row)
        cdef Row* r = &self.meta[row]
        return _new_scroll(key, content, r.version, r.created, r.updated, self.names)

    # -- writes ------------------------------------------------------------------------

    cdef Py_ssize_t _append(self, const uint16_t* key, object content, int64_t version,
                            double created, double updated, bint packed) except -1:
        """A new row for a key that is not stored."""
        cdef Py_ssize_t row = self.n
        self._reserve_rows(row + 1)
        cdef Row* r = &self.meta[row]
        self._set_content(r, content, True, packed)
        memcpy(self.kc.tail + (row - self.kc.m) * NDIM, key, KEY_BYTES)
        r.version = version
        r.created = created
        r.updated = updated
        self.n += 1
        self.live += 1
        if kh_full(&self.ht):
            kh_rebuild(&self.ht, &self.kc, self.meta, self.n, self.live)
        else:
            kh_place(&self.ht, key, <uint32_t>row)
        return row

    cpdef int64_t put(self, object key, object content, double now) except -1:
        """Write a content at a key: a new row (version 1, created = updated = now) or
        the next version of the stored row (created kept, updated = now).

        :param key: 18-byte packed key.
        :param content: a validated content.
        :param now: the write time.
        :returns: the new version.
        :raises InterfaceError: a key that is not 18 bytes.
        """
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        cdef Py_ssize_t row = kh_find(&self.ht, &self.kc, k)
        if row < 0:
            self._append(k, content, 1, now, now, False)
            return 1
        cdef Row* r = &self.meta[row]
        self._set_content(r, content, False, False)
        r.version += 1
        r.updated = now
        return r.version

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def put_many(self, object blob, list contents, double now):
        """Write N contents at N packed keys, in order (a key given twice is written
        twice, its version counting up).

        :param blob: N*18 bytes of keys.
        :param contents: N validated contents.
        :param now: the write time.
        :returns: ``(versions, new_keys)``: the N new versions (a list) and the keys that
            were not stored before (bytes objects, in order, once each).
        :raises InterfaceError: lengths disagree.
        """
        cdef Py_ssize_t n = _blob_rows(blob), i, row
        if len(contents) != n:
            raise InterfaceError(f"{n} coordinates but {len(contents)} contents")
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
        cdef uint16_t k[NDIM]
        cdef Row* r
        versions = [None] * n
        new_keys = []
        self._reserve_rows(self.n + n)
        for i in range(n):
            _unpack_row(p + i * KEY_BYTES, k)
            row = kh_find(&self.ht, &self.kc, k)
            if row < 0:
                self._append(k, contents[i], 1, now, now, False)
                versions[i] = 1
                new_keys.append(PyBytes_FromStringAndSize(<const char*>p + i * KEY_BYTES,
                                                          KEY_BYTES))
            else:
                r = &self.meta[row]
                self._set_content(r, contents[i], False, False)
                r.version += 1
                r.updated = now
                versions[i] = r.version
        return versions, new_keys

    def set(self, object key, object content, int64_t version, double created,
            double updated, bint packed=False):
        """Store a row exactly as given (start-up from storage, undoing a write).

        :param key: 18-byte packed key; an existing row for it is overwritten.
        :param content: the content, or with ``packed`` its msgpack encoding (bytes),
            decoded each time it is read.
        :returns: True when the key was not stored before.
        :raises InterfaceError: a malformed key, or ``packed`` with a non-bytes content.
        """
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        if packed and type(content) is not bytes:
            raise InterfaceError("a packed content is bytes")
        cdef Py_ssize_t row = kh_find(&self.ht, &self.kc, k)
        if row < 0:
            self._append(k, content, version, created, updated, packed)
            return True
        cdef Row* r = &self.meta[row]
        self._set_content(r, content, False, packed)
        r.version = version
        r.created = created
        r.updated = updated
        return False

    def load(self, rows):
        """Fill an empty store from a storage's rows, built straight into the layout.

        Rows in ascending key order (a store's primary-key order) are appended with no
        hash probe, the hash is built once at the end and their keys become the sorted
        run as they are; a row out of order (never from a sound storage) falls back to
        :meth:`set` for the rest and a compaction at the end sorts them. A content
        encoded as a msgpack str, bin or nil is kept decoded (its payload is copied to
        the arena); any other is kept encoded and decoded when read.

        :param rows: an iterable of ``(key, packed content, version, created, updated,
            ...)`` (fields after the fifth, such as a checksum, are not read).
        :returns: the number of rows read.
        :raises InterfaceError: the store is not empty, a key is malformed or a content
            is not bytes.
        """
        if self.n:
            raise InterfaceError("load fills an empty store")
        cdef _LoadState st
        st.ascending = True
        st.count = 0
        for rec in rows:
            key, blob, version, created, updated = rec[0], rec[1], rec[2], rec[3], rec[4]
            if type(key) is not bytes or len(<bytes>key) != KEY_BYTES:
                raise InterfaceError("a packed coordinate is 18 bytes")
            if type(blob) is not bytes:
                raise InterfaceError(f"row {st.count}: a packed content is bytes")
            self._load_row(&st, <const unsigned char*>PyBytes_AS_STRING(key),
                           <const unsigned char*>PyBytes_AS_STRING(blob), len(<bytes>blob),
                           version, created, updated, key, blob)
        return self._load_end(&st)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def load_chunks(self, chunks):
        """Fill an empty store from a storage's chunks, as :meth:`load` does from rows.

        :param chunks: an iterable of ``(n, body)`` chunks of records in ascending key
            order (each is read once, in turn, so a generator may free it after), as
            :func:`pack_rows` and :func:`merge_chunks` make them (verified by the
            storage; their checksums are not read here).
        :returns: the number of records read.
        :raises InterfaceError: the store is not empty or a chunk does not add up.
        """
        if self.n:
            raise InterfaceError("load fills an empty store")
        cdef _LoadState st
        st.ascending = True
        st.count = 0
        cdef ChunkView v
        cdef Py_ssize_t i
        for n, body in chunks:
            _view_or_raise(body, n, &v)
            for i in range(v.n):
                self._load_row(&st, v.keys + i * KEY_BYTES, v.data + chunk_start(&v, i),
                               chunk_len(&v, i), <int64_t>_get_le64(v.versions + 8 * i),
                               _get_f64(v.created + 8 * i), _get_f64(v.updated + 8 * i),
                               None, None)
        return self._load_end(&st)

    cdef int _load_row(self, _LoadState* st, const unsigned char* key,
                       const unsigned char* b, Py_ssize_t ln, int64_t version,
                       double created, double updated, object pykey,
                       object blob) except -1:
        """One row of a load: appended in place while keys ascend, else :meth:`set`.
        ``pykey``/``blob`` are the key and content as bytes, or None (made if needed)."""
        cdef uint16_t k[NDIM]
        cdef Py_ssize_t row, hl
        cdef uint8_t kind
        cdef Row* r
        _unpack_row(key, k)
        if st.ascending and st.count and lex_cmp(st.prev, k) >= 0:
            st.ascending = False
            kh_rebuild(&self.ht, &self.kc, self.meta, self.n, self.live)
        st.count += 1
        if blob is None and not st.ascending:
            pykey = PyBytes_FromStringAndSize(<const char*>key, KEY_BYTES)
            blob = PyBytes_FromStringAndSize(<const char*>b, ln)
        if not st.ascending:
            self.set(pykey, blob, version, created, updated, True)
            return 0
        memcpy(st.prev, k, KEY_BYTES)
        kind, hl = _plain_payload(b, ln)
        if kind == CK_PACKED:
            hl = 0   # kept encoded, whole
        row = self.n
        self._reserve_rows(row + 1)
        r = &self.meta[row]
        if ln - hl > ROW_MAX_LEN:
            # Too large for the arena: _set_content keeps it decoded, as an object.
            if blob is None:
                blob = PyBytes_FromStringAndSize(<const char*>b, ln)
            self._set_content(r, blob, True, True)
        else:
            r.kind = kind
            r.len = ln - hl
            r.off = 0
            if _row_inline(r):
                r.off = _inline_word(<const char*>b + hl, r.len)
            elif r.len:
                self._reserve_arena(r.len)
                r.off = self.arena_n
                memcpy(self.arena + self.arena_n, b + hl, r.len)
                self.arena_n += r.len
        memcpy(self.kc.tail + (row - self.kc.m) * NDIM, k, KEY_BYTES)
        r.version = version
        r.created = created
        r.updated = updated
        self.n += 1
        self.live += 1
        return 0

    cdef Py_ssize_t _load_end(self, _LoadState* st) except -1:
        """Finish a load: sort what came out of order, else the tail becomes the run."""
        if not st.ascending:
            self.compact(arena=False)
            return st.count
        if st.count == 0:
            return 0
        cdef _Pages pages = _Pages()
        pages.p = self.kc.tail
        pages.n = self.n * KEY_BYTES
        if self.tail_cap > self.n:
            pages.p = _grow_pages(self.kc.tail, self.tail_cap * KEY_BYTES, pages.n)
        self.kc.tail = NULL
        self.tail_cap = 0
        self._set_run(pages, self.n)
        kh_rebuild(&self.ht, &self.kc, self.meta, self.n, self.live)
        return st.count

    cdef int _kill(self, Py_ssize_t row) except -1:
        cdef Row* r = &self.meta[row]
        if r.kind == CK_OBJECT:
            self._reserve_free()
            self._free_obj(r.off)
        elif _row_in_arena(r):
            self.garbage += r.len
        r.kind = CK_DEAD
        self.live -= 1
        return 0

    def delete(self, object key):
        """Remove the row of a key; returns True when one was removed.

        :raises InterfaceError: a key that is not 18 bytes.
        """
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        cdef Py_ssize_t row = kh_remove(&self.ht, &self.kc, k)
        if row < 0:
            return False
        self._kill(row)
        return True

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def delete_many(self, object blob):
        """Remove the rows of N packed keys.

        :returns: the keys that were removed (bytes objects, in order, once each).
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        cdef Py_ssize_t n = _blob_rows(blob), i, row
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
        cdef uint16_t k[NDIM]
        gone = []
        for i in range(n):
            _unpack_row(p + i * KEY_BYTES, k)
            row = kh_remove(&self.ht, &self.kc, k)
            if row >= 0:
                self._kill(row)
                gone.append(PyBytes_FromStringAndSize(<const char*>p + i * KEY_BYTES,
                                                      KEY_BYTES))
        return gone

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _key_order(self):
        """Old row ids of the live rows in key order: the run's live rows (already in
        order) merged with the tail's live rows (sorted here)."""
        cdef Py_ssize_t m = self.kc.m, n = self.n, r, i, t = 0, a = 0, b = 0, w = 0
        for r in range(m, n):
            if self.meta[r].kind != CK_DEAD:
                t += 1
        tail_rows = np.empty(t, dtype=np.int64)
        cdef int64_t[::1] tr = tail_rows
        i = 0
        for r in range(m, n):
            if self.meta[r].kind != CK_DEAD:
                tr[i] = r
                i += 1
        if t:
            tk = np.empty((t, NDIM), dtype=np.uint16)
            self._gather_keys(tail_rows, tk)
            tail_rows = tail_rows[lex_sort_order(tk)]
            tr = tail_rows
        order = np.empty(self.live, dtype=np.int64)
        cdef int64_t[::1] o = order
        cdef const uint16_t* ka
        cdef const uint16_t* kb
        while True:
            while a < m and self.meta[a].kind == CK_DEAD:
                a += 1
            if a >= m:
                while b < t:
                    o[w] = tr[b]
                    w += 1
                    b += 1
                break
            if b >= t:
                while a < m:
                    if self.meta[a].kind != CK_DEAD:
                        o[w] = a
                        w += 1
                    a += 1
                break
            ka = kc_at(&self.kc, a)
            kb = kc_at(&self.kc, tr[b])
            if lex_cmp(ka, kb) < 0:
                o[w] = a
                a += 1
            else:
                o[w] = tr[b]
                b += 1
            w += 1
        return order

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef _gather_keys(self, const int64_t[::1] rows, uint16_t[:, ::1] out):
        cdef Py_ssize_t i
        for i in range(rows.shape[0]):
            memcpy(&out[i, 0], kc_at(&self.kc, rows[i]), KEY_BYTES)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def compact(self, arena=None):
        """Put the live rows in key order as the new sorted run, drop deleted rows, and
        rebuild the hash without tombstones.

        :param arena: rewrite the arena without its garbage: True, False, or None (the
            default) for when a quarter of it or more is garbage.
        :returns: (old rows,) int64 array: the new row of each old row, -1 for a deleted
            one. Row ids change, so anything holding them must follow this map.
        """
        cdef Py_ssize_t n = self.n, w, old, live = self.live
        if arena is None:
            arena = self.garbage * 4 >= self.arena_n and self.garbage > 0
        order = self._key_order()
        cdef const int64_t[::1] o = order
        remap = np.full(n, -1, dtype=np.int64)
        cdef int64_t[::1] rm = remap
        # New sorted run, new records (the old ones are read while these are written).
        cdef _Pages pages = _Pages()
        pages.p = _grow_pages(NULL, 0, live * KEY_BYTES)
        pages.n = live * KEY_BYTES
        cdef uint16_t* run = <uint16_t*>pages.p
        cdef Py_ssize_t cap = 64
        while cap < live:
            cap *= 2
        cdef Row* meta = <Row*>_grow_pages(NULL, 0, cap * sizeof(Row))
        cdef char* new_arena = NULL
        cdef Py_ssize_t pos = 0, ln
        cdef Py_ssize_t new_cap = self.arena_n - self.garbage
        cdef list objs = []
        cdef list old_objs = self.objs
        try:
            if arena:
                new_arena = <char*>_grow_pages(NULL, 0, new_cap)
        except MemoryError:
            vtpu_pages_free(meta, cap * sizeof(Row))
            raise
        for w in range(live):
            old = o[w]
            rm[old] = w
            memcpy(run + w * NDIM, kc_at(&self.kc, old), KEY_BYTES)
            meta[w] = self.meta[old]
            if meta[w].kind == CK_OBJECT:
                meta[w].off = len(objs)
                objs.append(old_objs[self.meta[old].off])
            elif arena and _row_in_arena(&meta[w]):
                ln = meta[w].len
                memcpy(new_arena + pos, self.arena + meta[w].off, ln)
                meta[w].off = pos
                pos += ln
        vtpu_pages_free(self.meta, self.cap * sizeof(Row))
        self.meta = meta
        self.cap = cap
        if arena:
            vtpu_pages_free(self.arena, self.arena_cap)
            self.arena = new_arena
            self.arena_n = pos
            self.arena_cap = new_cap
            self.garbage = 0
        self.objs = objs
        self.nfree = 0
        self.n = live
        self._set_run(pages, live)   # the tail is now empty; its buffer is kept
        kh_rebuild(&self.ht, &self.kc, self.meta, self.n, self.live)
        return remap


    # -- reads -------------------------------------------------------------------------

    def find(self, object key):
        """The row of a key, or -1.

        :raises InterfaceError: a key that is not 18 bytes.
        """
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        return kh_find(&self.ht, &self.kc, k)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def find_many(self, object blob):
        """Rows of N packed keys in one loop.

        :returns: (N,) int64 array, -1 where a key is not stored.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        cdef Py_ssize_t n = _blob_rows(blob)
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        cdef int64_t[::1] o = out
        self._find_rows(<const unsigned char*>PyBytes_AS_STRING(blob), n, &o[0])
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _find_rows(self, const unsigned char* p, Py_ssize_t n,
                         int64_t* out) noexcept nogil:
        # Many keys: each lookup is two dependent reads far apart in memory (its hash
        # slot, then its row's key). The keys' hashes are made first, so that the slot
        # of a key two gathers ahead and the key column row of the one a gather ahead
        # are asked for while the current key is compared.
        cdef Py_ssize_t i, ahead
        cdef uint16_t k[NDIM]
        cdef uint32_t s
        cdef size_t mask = <size_t>self.ht.cap - 1
        cdef uint64_t* hv = NULL
        if n > PREFETCH_AHEAD:
            hv = <uint64_t*>malloc(n * sizeof(uint64_t))
        if hv == NULL:
            for i in range(n):
                _unpack_row(p + i * KEY_BYTES, k)
                out[i] = kh_find(&self.ht, &self.kc, k)
            return
        for i in range(n):
            _unpack_row(p + i * KEY_BYTES, k)
            hv[i] = key_hash(<const unsigned char*>k)
        for i in range(n):
            ahead = i + 2 * PREFETCH_AHEAD
            if ahead < n:
                prefetch(&self.ht.slots[hv[ahead] & mask])
            ahead = i + PREFETCH_AHEAD
            if ahead < n:
                s = self.ht.slots[hv[ahead] & mask]
                if s != SLOT_EMPTY and s != SLOT_DELETED:
                    prefetch(kc_at(&self.kc, s - 1))
            _unpack_row(p + i * KEY_BYTES, k)
            out[i] = kh_find_hashed(&self.ht, &self.kc, k, hv[i])
        free(hv)

    def __getitem__(self, key):
        """The scroll at a key; raises KeyError when none is stored (mapping access)."""
        s = self.get(key)
        if s is None:
            raise KeyError(key)
        return s

    def __contains__(self, key):
        cdef uint16_t k[NDIM]
        if type(key) is not bytes or len(<bytes>key) != KEY_BYTES:
            return False
        _unpack_row(<const unsigned char*>PyBytes_AS_STRING(key), k)
        return kh_find(&self.ht, &self.kc, k) >= 0

    cpdef object get(self, object key):
        """The scroll at a key (built now, with its content decoded), or None.

        :param key: the 18-byte packed key (bytes, bytearray or byte memoryview).
        :raises InterfaceError: anything else (see :func:`check_key`).
        """
        cdef uint16_t k[NDIM]
        if type(key) is not bytes or len(<bytes>key) != KEY_BYTES:
            key = check_key(key)
        _unpack_row(<const unsigned char*>PyBytes_AS_STRING(key), k)
        cdef uint64_t hv = key_hash(<const unsigned char*>k)
        # The slot's row names both the key to compare and the record to read: ask for
        # the record while the key is compared (two cache misses at once, not in turn).
        cdef uint32_t s = self.ht.slots[<size_t>hv & <size_t>(self.ht.cap - 1)]
        if s != SLOT_EMPTY and s != SLOT_DELETED:
            prefetch(&self.meta[s - 1])
        cdef Py_ssize_t row = kh_find_hashed(&self.ht, &self.kc, k, hv)
        if row < 0:
            return None
        return self._scroll(row, key)

    def version(self, object key):
        """The stored version of a key, 0 when it is not stored."""
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        cdef Py_ssize_t row = kh_find(&self.ht, &self.kc, k)
        return 0 if row < 0 else self.meta[row].version

    def content(self, object key, default=None):
        """The content at a key, or ``default`` when it is not stored."""
        cdef uint16_t k[NDIM]
        _key_arg(key, k)
        cdef Py_ssize_t row = kh_find(&self.ht, &self.kc, k)
        return default if row < 0 else self._content(row)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def contents(self, object blob):
        """The contents at N packed keys (the values-only batched read).

        :returns: a list of N contents, None where a key is not stored.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        cdef Py_ssize_t n = _blob_rows(blob), i, row
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
        cdef uint16_t k[NDIM]
        out = [None] * n
        for i in range(n):
            _unpack_row(p + i * KEY_BYTES, k)
            row = kh_find(&self.ht, &self.kc, k)
            if row >= 0:
                out[i] = self._content(row)
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def content_lengths(self, object blob):
        """How many bytes each content at N packed keys holds, without reading any.

        For sizing a reply before it is built (the server refuses an oversized one up
        front): a content kept in the arena reports its byte length (str as UTF-8, an
        array its raw data), a content kept as a Python object reports -2 (the caller
        sizes those few itself), and a key where nothing is stored -1.

        :returns: (N,) int64 array.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        cdef Py_ssize_t n = _blob_rows(blob), i, row
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        cdef int64_t[::1] o = out
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
        cdef uint16_t k[NDIM]
        with nogil:
            for i in range(n):
                _unpack_row(p + i * KEY_BYTES, k)
                row = kh_find(&self.ht, &self.kc, k)
                if row < 0:
                    o[i] = -1
                elif self.meta[row].kind == CK_OBJECT:
                    o[i] = -2
                else:
                    o[i] = <int64_t>self.meta[row].len
        return out

    def get_many(self, object blob, int64_t max_bytes=-1, int64_t per_row=0):
        """The scrolls at N packed keys, as one column result.

        :param max_bytes: when >= 0, a budget: if the arena bytes of the found contents
            plus ``per_row`` per found key pass it, nothing is copied and None is
            returned (one key lookup each for the check and the read; contents kept as
            Python objects count 0 here, the caller sizes those few).
        :param per_row: see ``max_bytes``.
        :returns: a :class:`Scrolls` of N items, None where a key is not stored (its key
            in ``.keys`` is still the one asked for); or None over ``max_bytes``.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        cdef Py_ssize_t n = _blob_rows(blob)
        cdef int64_t* rows = <int64_t*>malloc((n if n else 1) * sizeof(int64_t))
        if rows == NULL:
            raise MemoryError()
        try:
            self._find_rows(<const unsigned char*>PyBytes_AS_STRING(blob), n, rows)
            return self._take(rows, n, blob, max_bytes, per_row)
        finally:
            free(rows)

    def take(self, rows):
        """The scrolls of the given rows, as one column result (a snapshot).

        :param rows: row ids (-1, or a deleted row, reads as None).
        :returns: a :class:`Scrolls`.
        :raises IndexError: a row id outside the store.
        """
        a = _rows_arg(rows)
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>a)[0]
        return self._take(_i64(a) if n else NULL, n, None)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def rows_at(self, run, pos, extra):
        """The rows now holding the keys a coordinate-index query found, in its order,
        the keys no longer stored left out.

        A key found in a sorted run that is still this store's run is at the row of its
        position there, which only needs to be live; any other key (one found outside
        the run, in a run a compaction has replaced since, or at a row deleted since) is
        looked up in the hash.

        :param run: the (m, 9) sorted run the query read (this store's :attr:`run` when
            it started).
        :param pos: (M,) int64: ``p >= 0`` is the key at row p of ``run``, ``p < 0`` the
            key at row ``-1 - p`` of ``extra``.
        :param extra: (K, 9) uint16 coordinates: the keys found outside ``run``.
        :returns: (M',) int64 row ids, M' <= M.
        :raises InterfaceError: a position outside ``run`` or ``extra``.
        """
        _coords_arg(run, "run")
        _coords_arg(extra, "extra")
        p = _rows_arg(pos)
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>p)[0], i, w = 0
        cdef Py_ssize_t m = cnp.PyArray_DIMS(<cnp.ndarray>run)[0]
        cdef Py_ssize_t k = cnp.PyArray_DIMS(<cnp.ndarray>extra)[0]
        cdef Py_ssize_t row
        out = _new_int64(n)
        if n == 0:
            return out
        cdef const int64_t* ps = _i64(p)
        cdef int64_t* o = <int64_t*>_i64(out)
        # (Rows are read only at positions checked against m and k.)
        cdef const uint16_t* ra = _u16(run)
        cdef const uint16_t* ea = _u16(extra)
        # Identity: a run is never written in place, and holding it keeps its pages.
        cdef bint same = run is self._run
        cdef int64_t bad = 0
        cdef bint out_of_range = False
        with nogil:
            for i in range(n):
                row = ps[i]
                if row >= 0:
                    if row >= m:
                        out_of_range, bad = True, row
                        break
                    if not (same and self.meta[row].kind != CK_DEAD):
                        row = kh_find(&self.ht, &self.kc, ra + NDIM * row)
                else:
                    if -1 - row >= k:
                        out_of_range, bad = True, row
                        break
                    row = kh_find(&self.ht, &self.kc, ea + NDIM * (-1 - row))
                if row >= 0:
                    o[w] = row
                    w += 1
        if out_of_range:
            raise InterfaceError(f"position {bad} is outside the run ({m} rows) and the "
                                 f"extra keys ({k})")
        return out[:w]

    def keys_of(self, rows):
        """The packed keys of the given rows, as one N*18-byte blob.

        :raises IndexError: a row id outside the store (or -1).
        """
        a = _rows_arg(rows)
        cdef Py_ssize_t n = a.shape[0], i, row
        out = PyBytes_FromStringAndSize(NULL, n * KEY_BYTES)
        cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
        cdef const int64_t[::1] r = a
        for i in range(n):
            row = r[i]
            if row < 0 or row >= self.n:
                raise IndexError(f"row {row} is not in the store ({self.n} rows)")
            _pack_row(kc_at(&self.kc, row), o + i * KEY_BYTES)
        return out

    def all_rows(self):
        """Every live row id, ascending."""
        out = np.empty(self.live, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t r, w = 0
        for r in range(self.n):
            if self.meta[r].kind != CK_DEAD:
                o[w] = r
                w += 1
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Scrolls _take(self, const int64_t* rows, Py_ssize_t n, object keys,
                       int64_t limit=-1, int64_t per_row=0):
        """Gather rows into a new Scrolls; ``keys``: the result's key blob, or None to
        pack the rows' keys (rows < 0 then get a zero key). With ``limit`` >= 0: None
        when the arena bytes plus ``per_row`` per found row pass it (see get_many)."""
        cdef Py_ssize_t i, row, total = 0, found = 0, ahead, nrows = self.n
        cdef uint8_t kind
        # The store's columns through locals: the writes into the result below cannot
        # alias them, which the compiler cannot know of fields reached through self.
        cdef const Row* meta = self.meta
        cdef const Row* r
        cdef const char* arena = self.arena
        cdef char tmp[8]
        for i in range(n):
            row = rows[i]
            if row >= nrows or row < -1:
                raise IndexError(f"row {row} is not in the store ({nrows} rows)")
        with nogil:
            for i in range(n):
                if i + PREFETCH_AHEAD < n:
                    ahead = rows[i + PREFETCH_AHEAD]
                    if ahead >= 0:
                        prefetch(&meta[ahead])
                row = rows[i]
                if row >= 0 and meta[row].kind != CK_DEAD:
                    found += 1
                    if _in_arena(meta[row].kind):
                        total += meta[row].len
        if limit >= 0 and total + per_row * found > limit:
            return None
        cdef Scrolls out = _new_scrolls(n, self.names, self.array_types,
                                        self.unpackb)
        data = PyBytes_FromStringAndSize(NULL, total)
        cdef char* d = PyBytes_AS_STRING(data)
        cdef unsigned char* kp = NULL
        if keys is None:
            keys = PyBytes_FromStringAndSize(NULL, n * KEY_BYTES)
            kp = <unsigned char*>PyBytes_AS_STRING(keys)
        cdef list objs = []
        cdef Py_ssize_t pos = 0, ln, nobj = 0
        cdef int64_t* ver = out.ver
        cdef double* ctime = out.ctime
        cdef double* utime = out.utime
        cdef int64_t* offs = out.offs
        cdef int64_t* lens = out.lens
        cdef uint8_t* kinds = out.kinds
        with nogil:
            for i in range(n):
                row = rows[i]
                if i + PREFETCH_AHEAD < n:
                    ahead = rows[i + PREFETCH_AHEAD]
                    if ahead >= 0 and _row_in_arena(&meta[ahead]):
                        prefetch(arena + meta[ahead].off)
                if kp != NULL:
                    if row >= 0:
                        _pack_row(kc_at(&self.kc, row), kp + i * KEY_BYTES)
                    else:
                        memset(kp + i * KEY_BYTES, 0, KEY_BYTES)
                kind = meta[row].kind if row >= 0 else CK_DEAD
                kinds[i] = kind
                if kind == CK_DEAD:
                    ver[i] = 0
                    ctime[i] = utime[i] = 0.0
                    offs[i] = lens[i] = 0
                    continue
                r = &meta[row]
                ver[i] = r.version
                ctime[i] = r.created
                utime[i] = r.updated
                if _in_arena(kind):
                    ln = r.len
                    short_copy(d + pos, _row_data(r, arena, tmp), ln)
                    offs[i] = pos
                    lens[i] = ln
                    pos += ln
                else:
                    # An object (its slot in objs, added below with the GIL) or None.
                    offs[i] = nobj if kind == CK_OBJECT else 0
                    nobj += kind == CK_OBJECT
                    lens[i] = 0
        if nobj:
            for i in range(n):
                if kinds[i] == CK_OBJECT:
                    objs.append(self.objs[meta[rows[i]].off])
        out._keys = keys
        out._data = data
        out._objs = objs
        return out


def trim_heap():
    """Give the malloc heap's free pages back to the system.

    A compaction's temporaries (numpy arrays of a few bytes per row) are freed into the
    heap, where glibc keeps them resident; a store that compacts from time to time calls
    this afterwards so its RSS is what it holds. A no-op off glibc.
    """
    with nogil:
        vtpu_trim_heap()


def keep_heap(int below=4 << 20, int pad=2 << 20, int keep=64 << 20):
    """Let a server process's malloc heap keep what a large request frees, for the next.

    glibc maps every block above its (adaptive) threshold on its own and gives the heap's
    free top back after each large free, so a request that builds and frees a few
    hundred KB (a GET_MANY of 10,000 keys: its result columns and its reply) has every
    page faulted in again by the next one; on a virtual machine that costs as much as
    the request's own work, and a first touch of memory the machine never used costs
    several times more (a BATCH holding 60 MB of encoded RANGE pages stalled the server
    for 5-6 ms a page). With this, blocks below ``below`` come from the heap, which grows
    ``pad`` bytes beyond a request at a time and gives its free top back only when more
    than ``keep`` bytes are free (glibc's own adaptive bound is 64 MiB too). What the
    process holds for this is bounded by ``keep``; :func:`trim_heap` still gives
    everything back. For a server's own process (it changes the process's allocator),
    not for a library's caller.

    :param below: blocks smaller than this come from the heap (larger ones are mapped
        and given back when freed).
    :param pad: bytes the heap grows by beyond what a request needs.
    :param keep: bytes of free heap top kept resident after a large free.
    :returns: whether the allocator took every setting (False off glibc).
    """
    return vtpu_keep_heap(below, pad, keep) != 0

