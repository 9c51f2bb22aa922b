# ---------------------------------------------------------------------------------------
# Results as columns: the scrolls of a CRANGE, GET_MANY, DOWN or NEAREST held as one key
# blob, version/time columns and content spans over one bytes object (or Python objects),
# so that a Scroll is made only for the item a caller reads, and whole columns
# (coordinates, contents, keys) come out in one call each.
# ---------------------------------------------------------------------------------------

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.buffer cimport PyBUF_WRITABLE, PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from cpython.unicode cimport PyUnicode_DecodeUTF8

import numpy as np
cdef extern from "Python.h":
    # PyBytes_AS_STRING on a borrowed pointer: a column's bytes read with no reference
    # taken (Cython holds one on an attribute it passes to a function).
    const char* _bytes_at "PyBytes_AS_STRING" (PyObject* o) noexcept nogil

from collections import namedtuple as _namedtuple
from vtpu.errors import InterfaceError

#: The content kinds of :meth:`Scrolls.columns` (one uint8 per item): where and how
#: item i's content is held.
KIND_DEAD = CK_DEAD        # nothing stored at the key: no content, version 0
KIND_NONE = CK_NONE        # the content None
KIND_STR = CK_STR          # str: data[off:off+len] is its UTF-8 text
KIND_BYTES = CK_BYTES      # bytes: data[off:off+len]
KIND_ARRAY = CK_ARRAY      # numpy array: data[off:off+4] its type id (little-endian
                           # uint32, an index into types), then its raw C-order data
KIND_OBJECT = CK_OBJECT    # any other value: objects[off]
KIND_PACKED = CK_PACKED    # one msgpack-encoded value: data[off:off+len]

ScrollColumns = _namedtuple("ScrollColumns", "keys versions created updated kinds offsets "
                                            "lengths data objects types")
ScrollColumns.__doc__ = """The columns a :class:`Scrolls` is held in (see
:meth:`Scrolls.columns`)."""


cdef class _ColumnBuffer:
    """A read-only one-dimensional buffer over one column of a Scrolls (memoryview()
    of it is the column, with no copy); it keeps the Scrolls alive."""
    cdef object owner
    cdef void* ptr
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef Py_ssize_t itemsize
    cdef bytes fmt

    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a Scrolls column is read-only")
        view.buf = self.ptr
        view.obj = self
        view.len = self.shape[0] * self.itemsize
        view.readonly = 1
        view.itemsize = self.itemsize
        view.format = PyBytes_AS_STRING(self.fmt) if flags & PyBUF_FORMAT else NULL
        view.ndim = 1
        view.shape = self.shape if flags & PyBUF_ND else NULL
        view.strides = self.strides if flags & PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef object _column(object owner, void* ptr, Py_ssize_t n, Py_ssize_t itemsize,
                    bytes fmt):
    """A read-only memoryview of n items of ``fmt`` at ``ptr``, kept valid by owner."""
    cdef _ColumnBuffer b = _ColumnBuffer.__new__(_ColumnBuffer)
    b.owner = owner
    b.ptr = ptr
    b.shape[0] = n
    b.strides[0] = itemsize
    b.itemsize = itemsize
    b.fmt = fmt
    return memoryview(b)


# The column block of the last large result freed, kept for the next of about its size.
# A caller reading results of thousands of rows in a loop frees one and makes the next:
# handed back to malloc, a block that large is given back to the system (or leaves the
# heap's top big enough to be trimmed), and the next result faults every page of its
# block in again, which costs more than filling it. One block, of at most
# _SPARE_MAX bytes, is what this holds.
cdef void* _spare = NULL
cdef size_t _spare_size = 0
cdef size_t _SPARE_MIN = 64 << 10
cdef size_t _SPARE_MAX = 16 << 20


cdef void* _take_block(size_t* size) noexcept:
    """A block of at least ``size[0]`` bytes (size[0] becomes its capacity), or NULL."""
    global _spare
    cdef void* p
    if _spare != NULL and size[0] <= _spare_size <= 2 * size[0]:
        p = _spare
        _spare = NULL
        size[0] = _spare_size
        return p
    return malloc(size[0])


cdef void _give_block(void* p, size_t size) noexcept:
    """Free a block from _take_block, or keep it as the spare (the larger one is kept)."""
    global _spare, _spare_size
    if p == NULL:
        return
    if _SPARE_MIN <= size <= _SPARE_MAX and (_spare == NULL or size > _spare_size):
        free(_spare)
        _spare, _spare_size = p, size
    else:
        free(p)


cdef Scrolls _new_scrolls(Py_ssize_t n, object names, list types, object unpackb):
    """An empty Scrolls with room for n rows (keys, data and objects still to be set)."""
    cdef Scrolls out = Scrolls.__new__(Scrolls)
    cdef Py_ssize_t m = n if n else 1
    cdef size_t size = m * (5 * sizeof(int64_t) + 1)
    cdef char* block = <char*>_take_block(&size)
    if block == NULL:
        raise MemoryError()
    out.block = block
    out.block_size = size
    out.ver = <int64_t*>block
    out.ctime = <double*>(block + m * 8)
    out.utime = <double*>(block + m * 16)
    out.offs = <int64_t*>(block + m * 24)
    out.lens = <int64_t*>(block + m * 32)
    out.kinds = <uint8_t*>(block + m * 40)
    out.n = n
    out._names = names
    out._types = types
    out._unpackb = unpackb
    return out


cdef class Scrolls:
    """A read-only sequence of Scroll-or-None backed by columns: a query's result.

    ``len``, indexing (negative too; an int gives a :class:`~vtpu.coords.Scroll` made
    now, or None for a key where nothing is stored), slicing (another Scrolls),
    iteration, ``in``, ``index``, ``count`` and ``==`` with a list of Scrolls or another
    Scrolls behave as for a list. Each read of an item makes a new Scroll (equal to the
    last one, not the same object).

    Whole columns, each in one call: :attr:`keys` (the N*18-byte packed keys),
    :attr:`coords` ((N, 9) uint16), :attr:`coordinates` (N strings),
    :attr:`contents`, :attr:`versions`, :attr:`created_at`, :attr:`updated_at` and
    :attr:`found`; :meth:`columns` gives the columns as they are held (no copy) and
    :meth:`from_spans` makes a Scrolls from them. A result is a snapshot: later writes
    to the store do not change it.
    """
    # (Its fields are declared in core/results.pxd.)

    def __cinit__(self):
        self.block = NULL
        self.n = 0

    def __init__(self):
        raise TypeError("Scrolls are made by the store (or Scrolls.from_scrolls, "
                        "from_columns, from_spans, concat)")

    def __dealloc__(self):
        _give_block(self.block, self.block_size)

    @staticmethod
    def from_scrolls(items, names=None):
        """A Scrolls holding the given scrolls (None items stay None).

        :param items: an iterable of Scroll or None.
        :param names: the name table of the items (default: the first item's).
        :returns: a Scrolls equal to ``list(items)``.
        """
        items = list(items)
        cdef Py_ssize_t n = len(items), i
        if names is None:
            for s in items:
                if s is not None:
                    names = s.names
                    break
        cdef Scrolls out = _new_scrolls(n, names, [], None)
        keys = PyBytes_FromStringAndSize(NULL, n * KEY_BYTES)
        cdef char* kp = PyBytes_AS_STRING(keys)
        objs = []
        for i in range(n):
            s = items[i]
            out.lens[i] = 0
            if s is None:
                memset(kp + i * KEY_BYTES, 0, KEY_BYTES)
                out.kinds[i] = CK_DEAD
                out.ver[i] = 0
                out.ctime[i] = out.utime[i] = 0.0
                out.offs[i] = 0
                continue
            k = s.key
            if type(k) is not bytes or len(<bytes>k) != KEY_BYTES:
                raise InterfaceError(f"item {i} has no 18-byte key")
            memcpy(kp + i * KEY_BYTES, PyBytes_AS_STRING(k), KEY_BYTES)
            out.kinds[i] = CK_OBJECT
            out.offs[i] = len(objs)
            objs.append(s.content)
            out.ver[i] = s.version
            out.ctime[i] = s.created_at
            out.utime[i] = s.updated_at
        out._keys = keys
        out._data = b""
        out._objs = objs
        return out

    @staticmethod
    def from_columns(keys, contents, versions, created, updated, found=None, names=None):
        """A Scrolls made from whole columns (a decoded wire reply, say), with no Python
        work per item beyond copying the contents list.

        :param keys: the N*18-byte packed keys (bytes-like).
        :param contents: a list of N contents (None allowed), or an ndarray of at least
            2 dimensions whose row i is content i (copied into the result; each item then
            reads as a read-only row, as from the store).
        :param versions: N versions (an int64 array or anything ``np.asarray`` takes).
        :param created: N creation times (float64; ignored where nothing is stored).
        :param updated: N update times (float64; ignored where nothing is stored).
        :param found: N bools, True where a scroll is stored; ``None``: where the
            version is not 0.
        :param names: the name table of the scrolls.
        :returns: a Scrolls whose item i is a Scroll, or None where nothing is stored.
        :raises InterfaceError: columns of the wrong type or of different lengths.
        """
        if type(keys) is not bytes:
            keys = bytes(keys)
        cdef Py_ssize_t kl = len(<bytes>keys), n, i, rowbytes = 0
        if kl % KEY_BYTES:
            raise InterfaceError(f"keys: {kl} bytes is not a multiple of {KEY_BYTES}")
        n = kl // KEY_BYTES
        try:
            ver = np.ascontiguousarray(versions, dtype=np.int64)
            cre = np.ascontiguousarray(created, dtype=np.float64)
            upd = np.ascontiguousarray(updated, dtype=np.float64)
            fnd = (ver != 0) if found is None else np.ascontiguousarray(found, dtype=np.bool_)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InterfaceError(f"columns: {exc}") from None
        for what, col in (("versions", ver), ("created", cre), ("updated", upd),
                          ("found", fnd)):
            if col.shape != (n,):
                raise InterfaceError(f"{what}: shape {col.shape}, expected ({n},) for "
                                     f"{n} keys")
        stacked = isinstance(contents, np.ndarray)
        if stacked and (contents.ndim < 2 or contents.dtype.hasobject):
            contents = list(contents)   # not rows of raw data: keep them as objects
            stacked = False
        if stacked:
            if contents.shape[0] != n:
                raise InterfaceError(f"contents: {contents.shape[0]} rows for {n} keys")
            rows = np.ascontiguousarray(contents)
            rowbytes = rows.nbytes // n if n else 0
        else:
            contents = list(contents)
            if len(<list>contents) != n:
                raise InterfaceError(f"contents: {len(contents)} items for {n} keys")
        cdef Scrolls out = _new_scrolls(n, names, [], None)
        out._keys = keys
        if n == 0:
            out._data = b""
            out._objs = []
            return out
        cdef const int64_t[::1] v = ver
        cdef const double[::1] c = cre
        cdef const double[::1] u = upd
        cdef const uint8_t[::1] f = fnd.view(np.uint8)
        cdef const uint8_t[::1] src
        cdef char* d = NULL
        cdef uint32_t tid = 0
        if stacked:
            out._types = [(rows.dtype, rows.shape[1:])]
            data = PyBytes_FromStringAndSize(NULL, n * (4 + rowbytes))
            d = PyBytes_AS_STRING(data)
            if rowbytes:
                src = rows.reshape(-1).view(np.uint8)
            out._data = data
            out._objs = []
        else:
            out._data = b""
            out._objs = contents
        for i in range(n):
            out.lens[i] = 0
            out.offs[i] = 0
            if not f[i]:
                out.kinds[i] = CK_DEAD
                out.ver[i] = 0
                out.ctime[i] = out.utime[i] = 0.0
                continue
            out.ver[i] = v[i]
            out.ctime[i] = c[i]
            out.utime[i] = u[i]
            if stacked:
                out.kinds[i] = CK_ARRAY
                out.offs[i] = i * (4 + rowbytes)
                out.lens[i] = 4 + rowbytes
                memcpy(d + i * (4 + rowbytes), &tid, 4)
                if rowbytes:
                    memcpy(d + i * (4 + rowbytes) + 4, &src[i * rowbytes], rowbytes)
            else:
                out.kinds[i] = CK_OBJECT
                out.offs[i] = i
        return out

    @staticmethod
    def concat(parts):
        """The items of several Scrolls, one after another, as one Scrolls (the pages
        of a paged query, say).

        :param parts: Scrolls (at least one).
        :returns: a Scrolls equal to the concatenation of the parts (the first part's
            name table); a single part is returned as it is (a result is read-only).
        :raises InterfaceError: no parts, or a part that is not a Scrolls.
        """
        parts = list(parts)
        if not parts:
            raise InterfaceError("concat needs at least one Scrolls")
        for x in parts:
            if not isinstance(x, Scrolls):
                raise InterfaceError(f"concat: {type(x).__name__} is not a Scrolls")
        if len(parts) == 1:
            return parts[0]
        cdef Scrolls first = <Scrolls>parts[0], p
        cdef Py_ssize_t n = 0, dl = 0, j, i, w = 0, dbase = 0, obase = 0
        unpackb = None
        types = []
        for p in parts:
            n += p.n
            dl += len(p._data)
            if unpackb is None:
                unpackb = p._unpackb
        cdef Scrolls out = _new_scrolls(n, first._names, types, unpackb)
        out._keys = b"".join([(<Scrolls>x)._keys for x in parts])
        data = PyBytes_FromStringAndSize(NULL, dl)
        cdef char* d = PyBytes_AS_STRING(data)
        cdef list objs = []
        cdef uint32_t t
        cdef uint32_t[::1] remap
        for p in parts:
            # The parts' array type ids, renumbered into the merged table.
            tmap = []
            for ty in p._types:
                if ty not in types:
                    types.append(ty)
                tmap.append(types.index(ty))
            remap = np.array(tmap if tmap else [0], dtype=np.uint32)
            if len(p._data):
                memcpy(d + dbase, PyBytes_AS_STRING(p._data), len(p._data))
            for i in range(p.n):
                out.ver[w] = p.ver[i]
                out.ctime[w] = p.ctime[i]
                out.utime[w] = p.utime[i]
                out.kinds[w] = p.kinds[i]
                out.lens[w] = p.lens[i]
                if p.kinds[i] == CK_OBJECT:
                    out.offs[w] = p.offs[i] + obase
                elif _in_arena(p.kinds[i]):
                    out.offs[w] = p.offs[i] + dbase
                    if p.kinds[i] == CK_ARRAY:
                        memcpy(&t, d + out.offs[w], 4)
                        t = remap[t]
                        memcpy(d + out.offs[w], &t, 4)
                else:
                    out.offs[w] = 0
                w += 1
            dbase += len(p._data)
            obase += len(p._objs)
            objs.extend(p._objs)
        out._data = data
        out._objs = objs
        return out

    def __len__(self):
        return self.n

    cdef object _item(self, Py_ssize_t i):
        # One item per read of a result, so its cost is the per-result cost: the
        # columns are read through borrowed pointers (the result holds them; no
        # reference is counted but the new objects'), and the two kinds most contents
        # are (bytes, text) are made here rather than through _content_from.
        cdef uint8_t kind = self.kinds[i]
        if kind == CK_DEAD:
            return None
        cdef const char* data = _bytes_at(<PyObject*>self._data)
        if kind == CK_BYTES:
            content = PyBytes_FromStringAndSize(data + self.offs[i], self.lens[i])
        elif kind == CK_STR:
            content = _utf8_text(data + self.offs[i], self.lens[i])
        else:
            content = _content_from(kind, data, self.offs[i], self.lens[i],
                                    <PyObject*>self._data, <PyObject*>self._objs,
                                    <PyObject*>self._types, <PyObject*>self._unpackb)
        return _new_scroll_at(<const unsigned char*>_bytes_at(<PyObject*>self._keys)
                              + i * KEY_BYTES, content, self.ver[i], self.ctime[i],
                              self.utime[i], <object>(<PyObject*>self._names))

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Scrolls _subset(self, const int64_t* idx, Py_ssize_t m):
        """The items at positions idx[0..m) (each in range) as a new Scrolls."""
        cdef Scrolls out = _new_scrolls(m, self._names, self._types, self._unpackb)
        keys = PyBytes_FromStringAndSize(NULL, m * KEY_BYTES)
        cdef char* kp = PyBytes_AS_STRING(keys)
        cdef const char* src = PyBytes_AS_STRING(self._keys)
        cdef Py_ssize_t j, i
        for j in range(m):
            i = idx[j]
            memcpy(kp + j * KEY_BYTES, src + i * KEY_BYTES, KEY_BYTES)
            out.ver[j] = self.ver[i]
            out.ctime[j] = self.ctime[i]
            out.utime[j] = self.utime[i]
            out.offs[j] = self.offs[i]
            out.lens[j] = self.lens[i]
            out.kinds[j] = self.kinds[i]
        out._keys = keys
        out._data = self._data
        out._objs = self._objs
        return out

    def take(self, indices):
        """The items at the given positions (negative ones count from the end).

        :param indices: integer positions.
        :returns: a Scrolls.
        :raises IndexError: a position out of range.
        """
        a = np.array(indices, dtype=np.int64, copy=True).reshape(-1)
        a[a < 0] += self.n
        if a.size and (a.min() < 0 or a.max() >= self.n):
            raise IndexError("Scrolls index out of range")
        if a.size == 0:
            return self._subset(NULL, 0)
        cdef const int64_t[::1] v = a
        return self._subset(&v[0], a.shape[0])

    def __getitem__(self, idx):
        cdef Py_ssize_t i
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.n)
            return self.take(np.arange(start, stop, step, dtype=np.int64))
        i = idx
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("Scrolls index out of range")
        return self._item(i)

    def __iter__(self):
        # An iterator type rather than a generator: its __next__ is the C slot, a
        # fraction of a generator's resume per item.
        cdef _ScrollsIter it = _ScrollsIter.__new__(_ScrollsIter)
        it.src = self
        it.i = 0
        return it

    def __reversed__(self):
        cdef Py_ssize_t i
        for i in range(self.n - 1, -1, -1):
            yield self._item(i)

    def __contains__(self, x):
        cdef Py_ssize_t i
        for i in range(self.n):
            v = self._item(i)
            if v is x or v == x:
                return True
        return False

    def index(self, x):
        """Position of the first item equal to ``x``; raises ValueError if none."""
        cdef Py_ssize_t i
        for i in range(self.n):
            v = self._item(i)
            if v is x or v == x:
                return i
        raise ValueError(f"{x!r} is not in the result")

    def count(self, x):
        """How many items equal ``x``."""
        cdef Py_ssize_t i, c = 0
        for i in range(self.n):
            v = self._item(i)
            if v is x or v == x:
                c += 1
        return c

    def tolist(self):
        """Every item as a plain list (a Scroll made for each)."""
        cdef Py_ssize_t i
        return [self._item(i) for i in range(self.n)]

    # -- whole columns -----------------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def wire_sizes(self, Py_ssize_t per_item, content_size):
        """About how many bytes each item takes in a reply, from the columns in one C
        pass (the sizing a server does before it encodes a page): ``per_item`` plus the
        content's encoding, a held content counting its bytes and header, an array its
        ext header and data; ``content_size(obj)`` sizes a content kept as an object;
        an absent item counts 4.

        :param per_item: bytes per item besides its content.
        :param content_size: the size of a content kept as a Python object.
        :returns: an (N,) int64 array.
        """
        out = _new_int64(self.n)
        cdef int64_t* o = <int64_t*>_i64(out)
        cdef Py_ssize_t i
        cdef uint8_t kind
        for i in range(self.n):
            kind = self.kinds[i]
            if kind == CK_STR or kind == CK_BYTES:
                o[i] = self.lens[i] + per_item + 5      # a bin or str header at most
            elif kind == CK_PACKED:
                o[i] = self.lens[i] + per_item          # already msgpack
            elif kind == CK_ARRAY:
                o[i] = self.lens[i] - 4 + per_item + 32  # the ext head, not the type id
            elif kind == CK_NONE:
                o[i] = per_item + 1
            elif kind == CK_OBJECT:
                o[i] = per_item + content_size(self._objs[self.offs[i]])
            else:
                o[i] = 4
        return out

    def columns(self):
        """The columns the result is held in, with no copy: for code that writes a whole
        result at once (the wire codec) without a Python object per item.

        :returns: a :class:`ScrollColumns` ``(keys, versions, created, updated, kinds,
            offsets, lengths, data, objects, types)``: ``keys`` the N*18-byte packed
            keys (as :attr:`keys`); ``versions`` N int64, ``created`` and ``updated`` N
            float64 (0 where nothing is stored), ``kinds`` N uint8 (a ``KIND_*``
            constant each), ``offsets`` and ``lengths`` N int64, each a read-only
            memoryview over the result; ``data`` (bytes) and ``objects`` (a list) hold
            the contents and ``types`` is the ``(dtype, shape)`` of each array type id.
            Item i's content, by kind: ``data[off:off+len]`` for ``KIND_STR`` (UTF-8),
            ``KIND_BYTES``, ``KIND_PACKED`` (one msgpack value) and ``KIND_ARRAY`` (a
            4-byte little-endian type id, then the raw C-order array);
            ``objects[off]`` for ``KIND_OBJECT``; none for ``KIND_NONE`` (the content
            None) and ``KIND_DEAD`` (nothing stored). ``objects`` and ``types`` are the
            result's own lists: read them, do not change them.
        """
        cdef Py_ssize_t n = self.n
        return ScrollColumns(self._keys,
                             _column(self, self.ver, n, 8, b"q"),
                             _column(self, self.ctime, n, 8, b"d"),
                             _column(self, self.utime, n, 8, b"d"),
                             _column(self, self.kinds, n, 1, b"B"),
                             _column(self, self.offs, n, 8, b"q"),
                             _column(self, self.lens, n, 8, b"q"),
                             self._data, self._objs, self._types)

    @staticmethod
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def from_spans(keys, versions, created, updated, kinds, offsets, lengths, data,
                   objects=None, types=None, names=None, unpackb=None):
        """A Scrolls made from the columns of :meth:`columns` (a wire reply whose
        contents stay spans over the reply's bytes, say): the inverse of
        :meth:`columns`, copying the fixed-width columns and keeping ``data``,
        ``objects`` and ``types`` as they are.

        :param keys: the N*18 packed keys (bytes-like).
        :param versions: N versions (int64; set to 0 where the kind is ``KIND_DEAD``).
        :param created: N creation times (float64; 0 where nothing is stored).
        :param updated: N update times (float64; 0 where nothing is stored).
        :param kinds: N content kinds (uint8, ``KIND_*``).
        :param offsets: N int64: where each content starts in ``data``, or its index in
            ``objects`` (see :meth:`columns`).
        :param lengths: N int64: how many bytes of ``data`` each content spans.
        :param data: bytes holding the spans (a bytes-like object is copied once).
        :param objects: the contents kept as Python objects (default: none).
        :param types: ``(dtype, shape)`` per array type id (default: none).
        :param names: the name table of the scrolls.
        :param unpackb: decoder of ``KIND_PACKED`` contents, called when one is read
            (default: :func:`vtpu.protocol.unpack_value`).
        :returns: a Scrolls whose item i is a Scroll, or None where the kind is
            ``KIND_DEAD``.
        :raises InterfaceError: columns of the wrong type or of different lengths, an
            unknown kind, a span outside ``data``, text that is not UTF-8, an object
            index outside ``objects``, or an array span that does not hold its type.
        """
        if type(keys) is not bytes:
            keys = bytes(keys)
        if type(data) is not bytes:
            data = bytes(data)
        objects = [] if objects is None else objects
        types = [] if types is None else types
        if type(objects) is not list or type(types) is not list:
            raise InterfaceError("objects and types are lists")
        cdef Py_ssize_t kl = len(<bytes>keys), n, i, dl = len(<bytes>data)
        cdef Py_ssize_t no = len(<list>objects), nt = len(<list>types), j
        if kl % KEY_BYTES:
            raise InterfaceError(f"keys: {kl} bytes is not a multiple of {KEY_BYTES}")
        n = kl // KEY_BYTES
        try:
            ver = np.ascontiguousarray(versions, dtype=np.int64)
            cre = np.ascontiguousarray(created, dtype=np.float64)
            upd = np.ascontiguousarray(updated, dtype=np.float64)
            knd = np.ascontiguousarray(kinds, dtype=np.uint8)
            off = np.ascontiguousarray(offsets, dtype=np.int64)
            lns = np.ascontiguousarray(lengths, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InterfaceError(f"columns: {exc}") from None
        for what, col in (("versions", ver), ("created", cre), ("updated", upd),
                          ("kinds", knd), ("offsets", off), ("lengths", lns)):
            if col.shape != (n,):
                raise InterfaceError(f"{what}: shape {col.shape}, expected ({n},) for "
                                     f"{n} keys")
        # The data bytes of each array type, to check that a span holds its type.
        cdef int64_t[::1] tbytes = np.zeros(max(nt, 1), dtype=np.int64)
        for j in range(nt):
            try:
                dt, shape = types[j]
                tbytes[j] = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            except (TypeError, ValueError) as exc:
                raise InterfaceError(f"types[{j}] is not (dtype, shape): {exc}") from None
        if unpackb is None:
            from vtpu.protocol import unpack_value as unpackb
        cdef Scrolls out = _new_scrolls(n, names, types, unpackb)
        out._keys = keys
        out._data = data
        out._objs = objects
        if n == 0:
            return out
        cdef const int64_t[::1] v = ver
        cdef const double[::1] c = cre
        cdef const double[::1] u = upd
        cdef const uint8_t[::1] k = knd
        cdef const int64_t[::1] o = off
        cdef const int64_t[::1] ln = lns
        cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef uint8_t kind
        cdef uint32_t tid
        cdef int64_t a, m
        for i in range(n):
            kind, a, m = k[i], o[i], ln[i]
            if kind > CK_PACKED:
                raise InterfaceError(f"item {i}: unknown content kind {kind}")
            if kind == CK_DEAD:
                out.ver[i] = 0
                out.ctime[i] = out.utime[i] = 0.0
                out.offs[i] = out.lens[i] = 0
                out.kinds[i] = kind
                continue
            if kind == CK_OBJECT:
                if a < 0 or a >= no:
                    raise InterfaceError(f"item {i}: object {a} is not in objects "
                                         f"({no})")
                m = 0
            elif _in_arena(kind):
                if a < 0 or m < 0 or a > dl - m:
                    raise InterfaceError(f"item {i}: span {a}+{m} is outside the "
                                         f"{dl} data bytes")
                if kind == CK_STR and not _ascii(d + a, m):
                    try:
                        PyUnicode_DecodeUTF8(<const char*>d + a, m, NULL)
                    except UnicodeDecodeError as exc:
                        raise InterfaceError(f"item {i}: text is not UTF-8: "
                                             f"{exc}") from None
                elif kind == CK_ARRAY:
                    if m < 4:
                        raise InterfaceError(f"item {i}: an array span needs its "
                                             "4-byte type id")
                    memcpy(&tid, d + a, 4)
                    if tid >= nt or m - 4 != tbytes[tid]:
                        raise InterfaceError(f"item {i}: the array span does not hold "
                                             f"array type {tid}")
            else:
                a = m = 0    # CK_NONE
            out.kinds[i] = kind
            out.offs[i] = a
            out.lens[i] = m
            out.ver[i] = v[i]
            out.ctime[i] = c[i]
            out.utime[i] = u[i]
        return out


    @property
    def keys(self):
        """The packed keys, one N*18-byte blob (for a key where nothing is stored, the
        key that was asked for, or zeros when there was none)."""
        return self._keys

    @property
    def coords(self):
        """The coordinates as an (N, 9) uint16 array."""
        return unpack_many(self._keys)

    @property
    def coordinates(self):
        """The coordinates as N strings (names resolved), formatted in one call."""
        return format_keys(self._keys, self._names)

    @property
    def names(self):
        """The name table the scrolls refer to."""
        return self._names

    @property
    def contents(self):
        """The contents, in order.

        When every item holds a numpy array of one dtype and shape, one stacked
        ``(N, *shape)`` array (a fresh, writable copy); otherwise a list (None for a key
        where nothing is stored). An empty result gives an empty list.
        """
        cdef Py_ssize_t i, n = self.n, ln = -1
        cdef uint32_t tid = 0, t
        cdef const char* base = PyBytes_AS_STRING(self._data)
        cdef bint uniform = n > 0
        for i in range(n):
            if self.kinds[i] != CK_ARRAY:
                uniform = False
                break
            memcpy(&t, base + self.offs[i], 4)
            if i == 0:
                tid = t
            elif t != tid:
                uniform = False
                break
        if uniform:
            dtype, shape = self._types[tid]
            out = np.empty((n,) + tuple(shape), dtype)
            ln = self.lens[0] - 4
            if ln:
                flat = out.reshape(-1).view(np.uint8)
                self._copy_rows(flat, ln)
            return out
        return [_content_from(self.kinds[i], base, self.offs[i], self.lens[i],
                              <PyObject*>self._data, <PyObject*>self._objs,
                              <PyObject*>self._types, <PyObject*>self._unpackb)
                for i in range(n)]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef _copy_rows(self, unsigned char[::1] flat, Py_ssize_t ln):
        cdef Py_ssize_t i
        cdef const char* base = PyBytes_AS_STRING(self._data)
        cdef unsigned char* dst = &flat[0]
        for i in range(self.n):
            memcpy(dst + i * ln, base + self.offs[i] + 4, ln)

    @property
    def versions(self):
        """The versions as an (N,) int64 array (0 where nothing is stored)."""
        out = np.empty(self.n, dtype=np.int64)
        if self.n:
            memcpy(_array_ptr(out), self.ver, self.n * 8)
        return out

    @property
    def created_at(self):
        """The creation times as an (N,) float64 array (0 where nothing is stored)."""
        out = np.empty(self.n, dtype=np.float64)
        if self.n:
            memcpy(_array_ptr(out), self.ctime, self.n * 8)
        return out

    @property
    def updated_at(self):
        """The update times as an (N,) float64 array (0 where nothing is stored)."""
        out = np.empty(self.n, dtype=np.float64)
        if self.n:
            memcpy(_array_ptr(out), self.utime, self.n * 8)
        return out

    @property
    def found(self):
        """An (N,) bool array: True where a scroll is stored."""
        out = np.empty(self.n, dtype=np.bool_)
        cdef Py_ssize_t i
        cdef unsigned char[::1] o
        if self.n:
            o = out.view(np.uint8)
            for i in range(self.n):
                o[i] = self.kinds[i] != CK_DEAD
        return out

    def stored(self):
        """The items where a scroll is stored, in order: this result itself when that is
        every item (a result is read-only), else a new Scrolls without the None items.

        :returns: a Scrolls.
        """
        cdef Py_ssize_t i, m = 0
        for i in range(self.n):
            m += self.kinds[i] != CK_DEAD
        if m == self.n:
            return self
        idx = np.empty(m, dtype=np.int64)
        cdef int64_t[::1] w = idx
        m = 0
        for i in range(self.n):
            if self.kinds[i] != CK_DEAD:
                w[m] = i
                m += 1
        return self._subset(&w[0] if m else NULL, m)

    # -- list behaviour ----------------------------------------------------------------

    def __eq__(self, other):
        if isinstance(other, Scrolls):
            other = (<Scrolls>other).tolist()
        elif hasattr(other, "tolist") and not isinstance(other, list):
            other = other.tolist()  # another list-like sequence
        elif not isinstance(other, list):
            return NotImplemented
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
        return repr(self.tolist())   # as the list it stands for

    def __reduce__(self):
        return (_scrolls_from_list, (self.tolist(), self._names))


def _scrolls_from_list(items, names):
    """Unpickle a Scrolls (pickled as its items)."""
    return Scrolls.from_scrolls(items, names)


cdef inline void* _array_ptr(object arr):
    """The data pointer of a C-contiguous numpy array with at least one element."""
    cdef unsigned char[::1] v = arr.view(np.uint8)
    return <void*>&v[0]


@cython.final
cdef class _ScrollsIter:
    """Iterator over a Scrolls: each item made as it is reached."""
    cdef Scrolls src
    cdef Py_ssize_t i

    def __iter__(self):
        return self

    def __next__(self):
        cdef Scrolls s = self.src
        if s is None or self.i >= s.n:
            self.src = None
            raise StopIteration
        self.i += 1
        return s._item(self.i - 1)

    def __length_hint__(self):
        return 0 if self.src is None else self.src.n - self.i


# -- call results ----------------------------------------------------------------------

cdef extern from "Python.h":
    bint PyExceptionInstance_Check(object o)


def first_error(list results):
    """The position of the first exception object in a list of call results (a
    pipeline's, where a failed call's slot holds its exception), or -1: one C pass, a
    type flag test per item.

    :param results: a list.
    :returns: int.
    """
    cdef Py_ssize_t i
    for i in range(len(results)):
        if PyExceptionInstance_Check(results[i]):
            return i
    return -1
