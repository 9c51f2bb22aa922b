# ---------------------------------------------------------------------------------------
# Scroll slots: the core builds and reads its own Scroll objects (the column store's
# views, the column results) through their slots; the class's __slots__ are checked
# first and anything else goes through attributes. The wire codec (vtpu._cprotocol)
# never does this: it reads attributes.
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
