# ---------------------------------------------------------------------------------------
# Durable-store kernels (vtpu.engine, vtpu.storage): content validation before a batched
# write, the old values a batched write replaces, the per-record checksums sealed on
# write and verified on load, and the packed chunks a storage checkpoint keeps, each one
# call per batch.
#
# A record's checksum is xxh64(content, seed=xxh64(header, seed=0)), where the 42-byte
# header is the 18-byte key followed by the version (int64) and the bits of created_at
# and updated_at (float64), each little-endian; it is kept as a signed 64-bit integer
# (SQLite's INTEGER). A flipped bit in any field changes it.
#
# A chunk holds n records in key order as columns, each little-endian:
#
#     keys n*18 | versions n*8 | created n*8 | updated n*8 | checksums n*8 |
#     content ends n*8 (cumulative, from the start of the contents) | contents
#
# Every record keeps the checksum it was sealed with when written, so a flipped bit in
# any column (a key, a time, a content byte, a length) makes some record fail it.
# ---------------------------------------------------------------------------------------

from libc.stdint cimport uint64_t, int64_t
cimport cython
from libc.string cimport memcpy, memcmp
from libc.stdlib cimport malloc, realloc, free
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                           PyBytes_GET_SIZE)
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM

from vtpu.errors import InterfaceError

cdef extern from "Python.h":
    Py_ssize_t PyBytes_GET_SIZE(object o)

cdef enum:
    RECORD_HEAD = KEY_BYTES + 24
    CHUNK_FIXED = KEY_BYTES + 40   # bytes per record besides its content


def check_contents(list contents, object check):
    """Validate N contents in place, before a batched write changes anything.

    bytes, float, bool, None, ASCII str and an int of 64 bits or fewer (signed) pass as
    they are; every other value (other str included: it may hold a lone surrogate, an
    int past int64, which ``check`` may still accept as a uint64) is replaced by
    ``check(value)``, which returns the value to store or raises.

    :param contents: the contents (updated in place).
    :param check: the validator (``vtpu.engine.check_content``).
    :raises: whatever ``check`` raises, at the first bad content.
    """
    cdef Py_ssize_t i, n = len(contents)
    for i in range(n):
        c = contents[i]
        if not _storable_as_is(c):
            contents[i] = check(c)


def has_name_ids(object blob):
    """Whether any component of N packed keys is a name id (0xF000 and up: a high byte
    of 0xF0 or more), in one C pass over the bytes.

    :param blob: N*18 bytes (any bytes-like object).
    :returns: bool.
    """
    cdef const unsigned char* p
    cdef const unsigned char[::1] v
    cdef Py_ssize_t n
    if PyBytes_CheckExact(blob):
        # (The common case, a key or a request's blob: no buffer view to set up, which
        # would cost more than the scan of one key.)
        p = <const unsigned char*>PyBytes_AS_STRING(blob)
        n = PyBytes_GET_SIZE(blob)
    else:
        v = blob
        n = v.shape[0]
        if n == 0:
            return False
        p = &v[0]
    return _has_names(p, n)


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


cdef inline uint64_t _get_le64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef inline double _get_f64(const unsigned char* p) noexcept nogil:
    cdef uint64_t bits = _get_le64(p)
    cdef double d
    memcpy(&d, &bits, 8)
    return d


cdef inline int64_t _record_hash_raw(const unsigned char* key, int64_t version,
                                     double created, double updated,
                                     const unsigned char* content, Py_ssize_t ln) noexcept nogil:
    """The checksum of one record given as its fields."""
    cdef unsigned char head[RECORD_HEAD]
    cdef uint64_t bits
    memcpy(head, key, KEY_BYTES)
    _put_le64(head + KEY_BYTES, <uint64_t>version)
    memcpy(&bits, &created, 8)
    _put_le64(head + KEY_BYTES + 8, bits)
    memcpy(&bits, &updated, 8)
    _put_le64(head + KEY_BYTES + 16, bits)
    return <int64_t>_xxh64(content, ln, _xxh64(head, RECORD_HEAD, 0))


cdef inline bint _is_time(object x):
    t = type(x)
    return t is float or t is int


cdef int _record_hash(tuple row, int64_t* out) except -2:
    """The checksum of a row (key, content, version, created, updated, ...) in *out.

    Returns -1, with no exception set, when a field has the wrong type or range.
    """
    cdef int64_t version
    cdef double t_created, t_updated
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
    out[0] = _record_hash_raw(<const unsigned char*>PyBytes_AS_STRING(key), version,
                              t_created, t_updated,
                              <const unsigned char*>PyBytes_AS_STRING(content),
                              PyBytes_GET_SIZE(content))
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


def seal_tombstones(list keys):
    """The storage rows of deletions: ``(key, checksum)`` for every key, the checksum
    being ``xxh64(key)`` as a signed 64-bit integer.

    :param keys: bytes keys (18 bytes each in a store; any length is hashed as given).
    :returns: a new list of ``(key, checksum)`` tuples.
    :raises InterfaceError: a key is not bytes.
    """
    cdef Py_ssize_t i, n = len(keys)
    out = []
    for i in range(n):
        k = keys[i]
        if type(k) is not bytes:
            raise InterfaceError(f"deletion {i}: a key must be bytes, got {type(k).__name__}")
        out.append((k, <int64_t>_xxh64(<const unsigned char*>PyBytes_AS_STRING(k),
                                       PyBytes_GET_SIZE(k), 0)))
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


# -- chunks ------------------------------------------------------------------------------

cdef struct ChunkView:
    Py_ssize_t n
    const unsigned char* keys
    const unsigned char* versions
    const unsigned char* created
    const unsigned char* updated
    const unsigned char* crcs
    const unsigned char* ends
    const unsigned char* data
    Py_ssize_t data_len


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int chunk_view(object body, Py_ssize_t n, ChunkView* v) noexcept:
    """Lay ``v`` over a chunk of ``n`` records: 0, or -1 when it is not bytes or its sizes
    do not add up (content ends that decrease, or do not end where the chunk does)."""
    if type(body) is not bytes:
        return -1
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body), i
    if n < 0 or n > size // CHUNK_FIXED:
        return -1
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    v.n = n
    v.keys = p
    v.versions = p + n * KEY_BYTES
    v.created = v.versions + n * 8
    v.updated = v.created + n * 8
    v.crcs = v.updated + n * 8
    v.ends = v.crcs + n * 8
    v.data = p + n * CHUNK_FIXED
    v.data_len = size - n * CHUNK_FIXED
    cdef uint64_t e, prev = 0
    for i in range(n):
        e = _get_le64(v.ends + 8 * i)
        if e < prev or e > <uint64_t>v.data_len:
            return -1
        prev = e
    return 0 if prev == <uint64_t>v.data_len else -1


cdef inline Py_ssize_t chunk_start(const ChunkView* v, Py_ssize_t i) noexcept nogil:
    """Offset of record i's content in ``v.data``."""
    return 0 if i == 0 else <Py_ssize_t>_get_le64(v.ends + 8 * (i - 1))


cdef inline Py_ssize_t chunk_len(const ChunkView* v, Py_ssize_t i) noexcept nogil:
    """Length of record i's content."""
    return <Py_ssize_t>_get_le64(v.ends + 8 * i) - chunk_start(v, i)


cdef int _view_or_raise(object body, Py_ssize_t n, ChunkView* v) except -1:
    if chunk_view(body, n, v) < 0:
        raise InterfaceError(f"a chunk of {n} records does not add up "
                             f"({len(body) if type(body) is bytes else type(body).__name__} bytes)")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def verify_chunk(object body, Py_ssize_t n):
    """Check every record of a chunk against its checksum, and their key order.

    :param body: the chunk (bytes).
    :param n: the number of records it should hold.
    :returns: -1 when every record is intact and keys strictly ascend; -2 when the chunk
        does not add up (see :func:`chunk_view`); otherwise the index of the first record
        with a wrong checksum or a key not above the one before.
    """
    cdef ChunkView v
    if chunk_view(body, n, &v) < 0:
        return -2
    cdef Py_ssize_t i, st
    cdef const unsigned char* key
    for i in range(n):
        key = v.keys + i * KEY_BYTES
        st = chunk_start(&v, i)
        if <int64_t>_get_le64(v.crcs + 8 * i) != _record_hash_raw(
                key, <int64_t>_get_le64(v.versions + 8 * i), _get_f64(v.created + 8 * i),
                _get_f64(v.updated + 8 * i), v.data + st, chunk_len(&v, i)):
            return i
        if i and memcmp(key - KEY_BYTES, key, KEY_BYTES) >= 0:
            return i
    return -1


def chunk_key(object body, Py_ssize_t n, Py_ssize_t i):
    """The key of record ``i`` of a chunk of ``n`` records (18 bytes).

    :raises InterfaceError: the chunk does not add up, or ``i`` is out of range.
    """
    cdef ChunkView v
    _view_or_raise(body, n, &v)
    if not 0 <= i < n:
        raise InterfaceError(f"record {i} of a chunk of {n}")
    return PyBytes_FromStringAndSize(<const char*>v.keys + i * KEY_BYTES, KEY_BYTES)


@cython.boundscheck(False)
@cython.wraparound(False)
def chunk_rows(object body, Py_ssize_t n):
    """The records of a chunk as storage rows.

    :returns: a list of ``(key, content, version, created_at, updated_at, checksum)``.
    :raises InterfaceError: the chunk does not add up.
    """
    cdef ChunkView v
    _view_or_raise(body, n, &v)
    cdef Py_ssize_t i
    out = PyList_New(n)
    for i in range(n):
        row = (PyBytes_FromStringAndSize(<const char*>v.keys + i * KEY_BYTES, KEY_BYTES),
               PyBytes_FromStringAndSize(<const char*>v.data + chunk_start(&v, i),
                                         chunk_len(&v, i)),
               <int64_t>_get_le64(v.versions + 8 * i), _get_f64(v.created + 8 * i),
               _get_f64(v.updated + 8 * i), <int64_t>_get_le64(v.crcs + 8 * i))
        Py_INCREF(row)
        PyList_SET_ITEM(out, i, row)
    return out


cdef class _ChunkOut:
    """Chunks being written: records are added in strictly ascending key order, and a
    chunk is closed at ``cap`` records or when its contents would pass ``max_bytes``."""
    cdef unsigned char* fixed   # cap rows of the fixed columns, each column cap long
    cdef unsigned char* data
    cdef Py_ssize_t n, cap, data_n, data_cap, max_bytes
    cdef unsigned char last[KEY_BYTES]
    cdef bint any
    cdef list out

    def __cinit__(self, Py_ssize_t cap, Py_ssize_t max_bytes):
        if cap < 1 or max_bytes < 1:
            raise InterfaceError("a chunk holds at least one record and one byte")
        self.cap = cap
        self.max_bytes = max_bytes
        self.fixed = <unsigned char*>malloc(cap * CHUNK_FIXED)
        if self.fixed == NULL:
            raise MemoryError()
        self.out = []

    def __dealloc__(self):
        free(self.fixed)
        free(self.data)

    cdef int add(self, const unsigned char* key, const unsigned char* version,
                 const unsigned char* created, const unsigned char* updated,
                 const unsigned char* crc, const unsigned char* content,
                 Py_ssize_t ln) except -1:
        """Add one record (its numbers as 8 little-endian bytes each)."""
        if self.any and memcmp(self.last, key, KEY_BYTES) >= 0:
            raise InterfaceError("storage records are not in strictly ascending key order")
        if self.n == self.cap or (self.n and self.data_n + ln > self.max_bytes):
            self.flush()
        cdef Py_ssize_t want
        cdef void* q
        if self.data_n + ln > self.data_cap:
            want = max(self.data_n + ln, 2 * self.data_cap, 4096)
            q = realloc(self.data, want)
            if q == NULL:
                raise MemoryError()
            self.data = <unsigned char*>q
            self.data_cap = want
        cdef Py_ssize_t i = self.n, c = self.cap
        cdef unsigned char* f = self.fixed
        memcpy(f + i * KEY_BYTES, key, KEY_BYTES)
        f += c * KEY_BYTES
        memcpy(f + 8 * i, version, 8)
        memcpy(f + 8 * (c + i), created, 8)
        memcpy(f + 8 * (2 * c + i), updated, 8)
        memcpy(f + 8 * (3 * c + i), crc, 8)
        if ln:
            memcpy(self.data + self.data_n, content, ln)
        self.data_n += ln
        _put_le64(f + 8 * (4 * c + i), <uint64_t>self.data_n)
        memcpy(self.last, key, KEY_BYTES)
        self.any = True
        self.n += 1
        return 0

    cdef int add_from(self, const ChunkView* v, Py_ssize_t i) except -1:
        """Add record ``i`` of a chunk as it is."""
        return self.add(v.keys + i * KEY_BYTES, v.versions + 8 * i, v.created + 8 * i,
                        v.updated + 8 * i, v.crcs + 8 * i, v.data + chunk_start(v, i),
                        chunk_len(v, i))

    cdef int flush(self) except -1:
        cdef Py_ssize_t n = self.n, c = self.cap, j
        if n == 0:
            return 0
        body = PyBytes_FromStringAndSize(NULL, n * CHUNK_FIXED + self.data_n)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(body)
        memcpy(p, self.fixed, n * KEY_BYTES)
        p += n * KEY_BYTES
        for j in range(5):   # versions, created, updated, checksums, ends
            memcpy(p + j * n * 8, self.fixed + c * KEY_BYTES + j * c * 8, n * 8)
        p += 5 * n * 8
        if self.data_n:
            memcpy(p, self.data, self.data_n)
        self.out.append((n, body))
        self.n = 0
        self.data_n = 0
        return 0

    cdef list finish(self):
        self.flush()
        return self.out


cdef class _ChunkCursor:
    """Reads the records of a list of ``(n, body)`` chunks one after another."""
    cdef list chunks
    cdef Py_ssize_t ci, i
    cdef ChunkView v
    cdef bint done

    def __cinit__(self, list chunks):
        self.chunks = chunks
        self.ci = -1
        self.i = 0
        self.v.n = 0
        self.done = False
        self._next_chunk()

    cdef int _next_chunk(self) except -1:
        while True:
            self.ci += 1
            if self.ci >= len(self.chunks):
                self.done = True
                return 0
            n, body = self.chunks[self.ci]
            _view_or_raise(body, n, &self.v)
            self.i = 0
            if self.v.n:
                return 0

    cdef inline const unsigned char* key(self) noexcept:
        return self.v.keys + self.i * KEY_BYTES

    cdef inline int advance(self) except -1:
        self.i += 1
        if self.i >= self.v.n:
            self._next_chunk()
        return 0


def pack_rows(list rows, Py_ssize_t max_records, Py_ssize_t max_bytes):
    """Pack sealed storage rows, in strictly ascending key order, into chunks.

    :param rows: ``(key, content, version, created_at, updated_at, checksum)`` tuples as
        :func:`seal_records` makes them (the checksum is kept, not recomputed).
    :param max_records: records per chunk at most.
    :param max_bytes: content bytes per chunk at most (a larger record has a chunk of
        its own).
    :returns: a list of ``(n, body)``.
    :raises InterfaceError: a row of the wrong shape or types, or keys out of order.
    """
    cdef _ChunkOut out = _ChunkOut(max_records, max_bytes)
    cdef unsigned char nums[32]
    cdef int64_t version
    cdef double created, updated
    cdef long long crc
    cdef uint64_t bits
    cdef int overflow
    cdef Py_ssize_t i
    for i in range(len(rows)):
        row = rows[i]
        if type(row) is not tuple or len(<tuple>row) != 6 or type(row[0]) is not bytes \
                or PyBytes_GET_SIZE(row[0]) != KEY_BYTES or type(row[1]) is not bytes \
                or type(row[2]) is not int or not _is_time(row[3]) \
                or not _is_time(row[4]) or type(row[5]) is not int:
            raise InterfaceError(f"storage row {i} must be a sealed row, got {_row_types(row)}")
        try:
            version = row[2]
        except OverflowError:
            raise InterfaceError(f"storage row {i}: version out of range") from None
        created = row[3]
        updated = row[4]
        crc = PyLong_AsLongLongAndOverflow(row[5], &overflow)
        if overflow:
            raise InterfaceError(f"storage row {i}: checksum out of range")
        _put_le64(nums, <uint64_t>version)
        memcpy(&bits, &created, 8)
        _put_le64(nums + 8, bits)
        memcpy(&bits, &updated, 8)
        _put_le64(nums + 16, bits)
        _put_le64(nums + 24, <uint64_t>crc)
        out.add(<const unsigned char*>PyBytes_AS_STRING(row[0]), nums, nums + 8, nums + 16,
                nums + 24, <const unsigned char*>PyBytes_AS_STRING(row[1]),
                PyBytes_GET_SIZE(row[1]))
    return out.finish()


@cython.boundscheck(False)
@cython.wraparound(False)
def merge_chunks(list base, list delta, bytes deleted, Py_ssize_t max_records,
                 Py_ssize_t max_bytes):
    """Apply the writes made since a checkpoint to its chunks, in one ordered pass.

    :param base: the checkpoint's chunks ``(n, body)``, in key order, not overlapping.
    :param delta: chunks of the records written since (they replace a base record of
        the same key), in key order.
    :param deleted: the keys deleted since (N*18 bytes, strictly ascending); a key also
        in ``delta`` was written again after its deletion, and is kept.
    :param max_records: records per output chunk at most.
    :param max_bytes: content bytes per output chunk at most.
    :returns: the merged chunks, a list of ``(n, body)``.
    :raises InterfaceError: a chunk does not add up, or records or deleted keys are out
        of key order.
    """
    cdef _ChunkCursor a = _ChunkCursor(base)
    cdef _ChunkCursor b = _ChunkCursor(delta)
    cdef _ChunkOut out = _ChunkOut(max_records, max_bytes)
    if len(deleted) % KEY_BYTES:
        raise InterfaceError(f"deleted keys need a multiple of 18 bytes, got {len(deleted)}")
    cdef const unsigned char* dp = <const unsigned char*>PyBytes_AS_STRING(deleted)
    cdef Py_ssize_t nd = len(deleted) // KEY_BYTES, di = 0
    cdef int c
    for di in range(1, nd):
        if memcmp(dp + (di - 1) * KEY_BYTES, dp + di * KEY_BYTES, KEY_BYTES) >= 0:
            raise InterfaceError("deleted keys are not in strictly ascending order")
    di = 0
    while not a.done or not b.done:
        if not b.done:
            c = -1 if a.done else memcmp(b.key(), a.key(), KEY_BYTES)
            if c <= 0:
                if c == 0:
                    a.advance()
                out.add_from(&b.v, b.i)
                b.advance()
                continue
        while di < nd and memcmp(dp + di * KEY_BYTES, a.key(), KEY_BYTES) < 0:
            di += 1
        if not (di < nd and memcmp(dp + di * KEY_BYTES, a.key(), KEY_BYTES) == 0):
            out.add_from(&a.v, a.i)
        a.advance()
    return out.finish()



def _row_types(row):
    if type(row) is not tuple:
        return type(row).__name__
    return "(" + ", ".join(type(x).__name__ for x in row) + ")"
