# ---------------------------------------------------------------------------------------
# Batched writes for the engine: one C loop over the keys of a CPUT_MANY.
# ---------------------------------------------------------------------------------------

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from vtpu.errors import InterfaceError


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
