# ---------------------------------------------------------------------------------------
# Batched reads and writes for the engine: one C loop over the keys of a CPUT_MANY or of
# a values-only CGET_MANY. The engine's own Scroll objects are built and read through
# their slots here (the class's __slots__ are checked first; anything else goes through
# attributes). The wire codec (vtpu._cprotocol) never does this: it reads attributes.
# ---------------------------------------------------------------------------------------

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_DECREF

from vtpu.errors import InterfaceError

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
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


cdef object _slot_or_attr(_Slots sl, object s, int i, str name):
    cdef PyObject* p
    if sl.ok and type(s) is sl.cls:
        p = sl.get(s, i)
        if p != NULL:
            return <object>p
    return getattr(s, name)


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
def put_scrolls(dict m, bytes blob, list contents, double now, object names,
                object scroll_cls):
    """Write N scrolls into a key -> Scroll map in one C loop (the engine's CPUT_MANY).

    The contents are stored as they are: the caller validated them first (the engine
    through ``check_contents``), so nothing here can refuse one halfway through. In key
    order, each key gets a new Scroll: version 1 and ``created_at = now`` when absent,
    else the old version + 1 and the old ``created_at``; ``updated_at = now``. A key
    repeated in the batch is written repeatedly, its versions counting up.

    :param m: the engine's map (18-byte key -> Scroll).
    :param blob: N*18 bytes of keys.
    :param contents: N contents, already validated.
    :param now: the write time (unix seconds).
    :param names: the name table each Scroll refers to.
    :param scroll_cls: the Scroll class (a ``__slots__`` class).
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
