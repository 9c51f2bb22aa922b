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

from libc.stdint cimport uint64_t, int64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM

from vtpu.errors import InterfaceError

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

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
