# cython: language_level=3
"""The engine's write of one scroll, compiled.

:class:`EngineCore` is the base class of :class:`vtpu.engine.Engine`. It holds what a
CPUT touches (the column store, the coordinate index, the name table, the storage and
its undo log, the autocommit flag) as C fields and runs ``put`` with no Python frame of
its own: the argument checks, the compare-and-set, the storage write and its undo entry
when the engine is durable, the store write and the index entry of a new key. Every
other engine call, and what ``put`` calls by name (the checks, the storage, ``commit``,
``_fmt``), stays Python in the subclass and its module.

Like the server's loop and the client's single call it has no pure-Python twin: it is
the engine's own code, moved.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from vtpu._core cimport _has_names, _storable_as_is

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_REALTIME

from vtpu import _core
from vtpu.errors import VersionConflict

cdef object _engine = None


cdef object _engine_module():
    # vtpu.engine imports this module for its base class: the checks put shares with the
    # rest of the engine are looked up from it after import.
    global _engine
    if _engine is None:
        import vtpu.engine
        _engine = vtpu.engine
    return _engine


# Bound once: put calls it for a key with name ids.
cdef object _unpack_many = _core.unpack_many


cdef inline double _now() noexcept nogil:
    """Unix seconds, from the clock time.time() reads (without the Python call)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class EngineCore:
    """The compiled part of :class:`vtpu.engine.Engine` (its base class): the fields a
    write touches, and :meth:`put`."""

    cdef public object _map       # the column store (vtpu._core.ColumnStore)
    cdef public object _index     # the coordinate index (vtpu.index.CoordIndex)
    cdef public object names      # the name table
    cdef public object storage    # a vtpu.storage.Storage, or None in memory only
    cdef public object _undo      # (key, [old scrolls]) per write since the last commit
    cdef public object autocommit

    cpdef put(self, key, content, if_version=None):
        """CPUT: write a scroll; returns its new version.

        :param key: the 18-byte packed coordinate.
        :param content: the content (see :func:`vtpu.engine.check_content`).
        :param if_version: compare-and-set: write only if the stored version equals this
            (0 means "only if absent").
        :raises VersionConflict: the stored version differs from ``if_version``.
        :raises InterfaceError: unstorable content or a malformed key.
        """
        e = _engine_module()
        if type(key) is not bytes or len(<bytes>key) != 18:
            key = e.check_key(key)
        if if_version is not None:
            if_version = e.check_count(if_version, "if_version")
        if _has_names(<const unsigned char*>PyBytes_AS_STRING(key), 18):
            self.names.check_ids(_unpack_many(key))
        if not _storable_as_is(content):
            content = e.check_content(content)
        m = self._map
        if if_version is not None:
            have = m.version(key)
            if have != if_version:
                raise VersionConflict(
                    f"version conflict at {self._fmt(key)}: expected {if_version}, "
                    f"found {have}")
        st = self.storage
        if st is None:
            # In memory only: the store write, and the index for a new key.
            version = m.put(key, content, _now())
            if version == 1:
                self._index.add(key)
            return version
        old = m.get(key)   # kept for the undo log
        now = _now()
        # Encoded and queued before memory changes: a refusal leaves nothing behind.
        # (The store's write gives the same version and times.)
        if old is None:
            version, created = 1, now
        else:
            version, created = old.version + 1, old.created_at
        st.put(key, e.pack_value(content), version, created, now)
        self._undo.append((key, [old]))
        version = m.put(key, content, now)
        if version == 1:   # the key was not stored
            self._index.add(key)
        if self.autocommit:
            self.commit()
        return version
