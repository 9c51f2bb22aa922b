# ---------------------------------------------------------------------------------------
# Scroll: one stored scroll (its key, content, version, times and the name table its key
# refers to) as an extension type. The store's point reads and every result build them
# with _new_scroll (scroll.pxd); callers read them as attributes or as a mapping.
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t
from libc.string cimport memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject_GenericGetAttr

import numpy as np

# The mapping view's keys, in order (``dict(s)``, ``s['content']``).
cdef tuple _SCROLL_FIELDS = ("coordinate", "content", "version", "created_at", "updated_at")

# The interned names a caller's ``s.content`` / ``s.coordinate`` / ``s.version`` pass to
# __getattribute__ (Cython interns these literals, as the compiler does a code's names).
cdef str _A_CONTENT = "content"
cdef str _A_COORDINATE = "coordinate"
cdef str _A_VERSION = "version"


cdef bint _content_equal(object a, object b) except -1:
    """Contents compare as values; numpy arrays by dtype, shape and elements."""
    cdef bint aa = isinstance(a, np.ndarray), ba = isinstance(b, np.ndarray)
    if aa or ba:
        return (aa and ba and a.dtype == b.dtype and a.shape == b.shape
                and bool(np.array_equal(a, b)))
    return bool(a == b)


# The signature in the docstring's clinic form, so that inspect.signature(Scroll) and
# help() show the constructor's parameters (a C type has no Python __init__ signature).
@cython.freelist(1024)
@cython.embedsignature(False)
cdef class Scroll:
    """Scroll(key, content, version, created_at, updated_at, names=None)
--

    One stored scroll: coordinate, content, version and timestamps.

    Readable as attributes and as a mapping (``s['content']``, ``dict(s)``), like the
    prototype's dict replies. Immutable; equal when key, version, times and content are
    equal (numpy contents by dtype, shape and elements); not hashable.

    :param key: the 18-byte packed coordinate.
    :param content: the stored value.
    :param version: writes to the key since it was last absent (int64).
    :param created_at: unix seconds of the first write.
    :param updated_at: unix seconds of the last write.
    :param names: the name table the key's name ids refer to (None: numeric only).
    """

    def __init__(self, bytes key, content, int64_t version, double created_at,
                 double updated_at, names=None):
        self._inline = False   # (until _set_key says otherwise: __init__ may run again)
        _set_key(self, key)
        self.content = content
        self.version = version
        self.created_at = created_at
        self.updated_at = updated_at
        self.names = names

    def __getattribute__(self, name):
        # A result is read field by field, one Scroll at a time, so these reads are the
        # per-result cost. The interpreter cannot specialise reading a C type's getset
        # descriptor (each costs a type lookup and two calls), so the three fields a
        # reader reads are answered by the identity of the interned name; every other
        # name, any name not interned, and every subclass (which may redefine a field)
        # take the generic lookup.
        if type(self) is Scroll:
            if name is _A_CONTENT:
                return self.content
            if name is _A_COORDINATE:
                return self._coordinate()
            if name is _A_VERSION:
                return self.version
        return PyObject_GenericGetAttr(self, name)

    @property
    def key(self):
        """The 18-byte packed coordinate (bytes; made when first read, then kept)."""
        if self._kobj is None and self._inline:
            self._kobj = PyBytes_FromStringAndSize(<const char*>self._k, 18)
        return self._kobj

    @property
    def coordinate(self):
        """The coordinate as text (names resolved through the table), formatted from the
        18 bytes in one core call."""
        return self._coordinate()

    cdef str _coordinate(self):
        cdef uint16_t c[NDIM]
        if self._inline:
            _unpack_row(self._k, c)
            return _format_row(c, self.names)
        return _format_key(self.key, self.names)

    @property
    def coords(self):
        """The coordinate as a (9,) uint16 array."""
        return unpack(self.key)

    def __getitem__(self, field):
        if field in _SCROLL_FIELDS:
            return getattr(self, field)
        raise KeyError(field)

    @cython.embedsignature(True)
    def get(self, field, default=None):
        """Mapping-style access with a default.

        :param field: one of :meth:`keys`.
        :returns: that field, or ``default`` for any other name.
        """
        return getattr(self, field) if field in _SCROLL_FIELDS else default

    @cython.embedsignature(True)
    def keys(self):
        """The field names, as for a dict: coordinate, content, version, created_at,
        updated_at."""
        return _SCROLL_FIELDS

    def __iter__(self):
        return iter(_SCROLL_FIELDS)

    def __len__(self):
        return len(_SCROLL_FIELDS)

    def __eq__(self, other):
        if not isinstance(other, Scroll):
            return NotImplemented
        cdef Scroll o = <Scroll>other
        cdef bint same_key = (memcmp(self._k, o._k, 18) == 0 if self._inline and o._inline
                              else self.key == o.key)
        return (same_key and self.version == o.version
                and self.created_at == o.created_at and self.updated_at == o.updated_at
                and _content_equal(self.content, o.content))

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None  # mutable-looking content: not hashable

    def __repr__(self):
        content = self.content
        text = repr(content) if not isinstance(content, np.ndarray) else (
            f"ndarray(dtype={content.dtype}, shape={content.shape})")
        if len(text) > 60:
            text = text[:57] + "..."
        try:
            coord = self.coordinate
        except (CoordinateError, InterfaceError):   # a name id without its table, a bad key
            coord = self.key.hex() if self.key is not None else "?"
        return f"Scroll({coord}, version={self.version}, content={text})"

    def __reduce__(self):
        return (type(self), (self.key, self.content, self.version, self.created_at,
                             self.updated_at, self.names))
