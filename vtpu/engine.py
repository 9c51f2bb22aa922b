"""The store: a column store of scrolls, the coordinate indexes and the instructions.

One :class:`Engine` serves both the server (one per process, owned by its event loop)
and the embedded ``mem://`` / ``file://`` modes; it implements
:class:`vtpu.backend.Backend`. Every argument is already packed:
18-byte keys, N*18-byte blobs, (2, 9) uint16 patterns, (2, 9) int32 deltas; the facade
(:mod:`vtpu.client`) and the server do the parsing. Scrolls are rows of a
:class:`vtpu._core.ColumnStore` (no Python object per scroll at rest): a point lookup is
one probe of its key hash, a batched read one core call, and results of pattern queries
are :class:`vtpu.results.Scrolls` (columns; a Scroll is made only when one is read).
Pattern queries go through :class:`vtpu.index.CoordIndex`, whose main array is the
store's sorted run.

The engine is not thread-safe by design (Redis-style: one loop owns it). The embedded
client serialises calls with a lock.

Every instruction whose work grows with the data is written once, as a step generator
(``range_steps``, ``count_steps``, ``delete_range_steps``, ``nearest_steps``,
``attend_steps``, ``attend_many_steps``, ``kg_steps``, ``import_phext_steps``,
``export_phext_steps``; see :mod:`vtpu.steps`): the plain method runs it to completion,
the server a slice per loop turn between other requests.

With durable storage a write is validated and encoded before anything changes, then
applied in memory and queued for the storage's next group commit; the old values it
replaced are kept until that commit. If the commit fails (disk full, I/O error) every
write of the group is undone in memory, index and name table included, so no reader
ever sees a write that was not stored.
"""
from __future__ import annotations

import math
import os
import resource
import time
from typing import Any, Iterator

import numpy as np

from vtpu import _core, phext
from vtpu._cengine import EngineCore
from vtpu._version import __version__
from vtpu.coords import (EVERYTHING, MAX_NAMES, NAME_BASE, NameTable, Scroll, UnknownName,
                         apply_delta_any, delta_in_range)
from vtpu.errors import (CoordinateError, InterfaceError, LimitError, NotFoundError,
                         RequestTimeout)
from vtpu.index import CoordIndex
from vtpu.protocol import pack_value
from vtpu.steps import Best, Steps, run

__all__ = ["Engine", "check_content", "check_count", "check_key", "check_blob", "check_contents",
           "check_metric", "check_direction", "check_patterns", "check_values", "check_deltas",
           "check_name_list", "check_text", "estimate_wire_size"]

_EMPTY_COORDS = np.empty((0, 9), dtype=np.uint16)

# Work per step of the instructions in steps (vtpu.steps), each well under a millisecond.
GATHER = 1024        # scrolls read (and scored, checked) per step
DELETE_STEP = 512    # scrolls deleted per step (store, index and storage queue)
PUT_STEP = 1024      # scrolls of an import written per step
EDGE_STEP = 512      # KG edges followed per step
PHEXT_STEP = 128     # scrolls formatted per step of an export
SCORES_PER_STEP = 1 << 15   # ATTEND_MANY attention scores computed per step
ATTEND_BLOCK = 64           # ATTEND_MANY queries scored together (one matmul per block)
#: Bounds of CNEAREST's k and CKG's hops / max_frontier in every backend. A server caps
#: k and max_frontier lower per request (vtpu.server.MAX_NEAREST_K, MAX_KG_FRONTIER).
MAX_K = 1 << 31
MAX_HOPS = 1 << 20
MAX_FRONTIER = 1 << 31
_SCALARS = (str, bytes, int, float, bool, type(None))


# Deepest nesting of lists/dicts in a content: well inside what the content codec
# (msgpack, about 1000 levels with the frame around it) and the checker's own recursion
# allow, so every backend accepts or refuses a content alike.
MAX_CONTENT_DEPTH = 256


def check_content(content: Any, _depth: int = 0) -> Any:
    """Validate (and freeze) a scroll's content.

    str, bytes, numpy arrays (copied and made read-only, dtype and shape kept) and any
    msgpack-able value (None, bool, int, float, list, dict with str or int keys, nested
    at most ``MAX_CONTENT_DEPTH`` deep) are accepted. Every backend applies this same
    check, so a content is accepted or refused alike everywhere.

    :returns: the value to store.
    :raises InterfaceError: anything else (object arrays, sets, custom objects, text
        with a lone surrogate, which has no UTF-8 encoding ...).
    """
    if isinstance(content, _SCALARS):
        if isinstance(content, str):
            if not content.isascii():
                _check_text(content)
        elif isinstance(content, int) and not isinstance(content, bool) and \
                not -(1 << 63) <= content < (1 << 64):
            raise InterfaceError(f"integer content {content} does not fit 64 bits")
        return content
    if isinstance(content, np.ndarray):
        if content.dtype.hasobject or content.dtype.kind not in "biufcSUV" \
                or content.dtype.fields is not None:
            raise InterfaceError(f"cannot store an array of dtype {content.dtype}")
        arr = np.array(content, copy=True, order="C")
        arr.flags.writeable = False
        return arr
    if isinstance(content, (bytearray, memoryview)):
        return bytes(content)
    if isinstance(content, (list, tuple, dict)):
        if _depth >= MAX_CONTENT_DEPTH:
            raise InterfaceError(f"content nested deeper than {MAX_CONTENT_DEPTH} levels")
        if not isinstance(content, dict):
            items = []
            for x in content:   # a loop, not a comprehension: one frame per level
                items.append(check_content(x, _depth + 1))
            return items
        out = {}
        for k, v in content.items():
            if isinstance(k, str):
                if not k.isascii():
                    _check_text(k)
            elif not isinstance(k, int) or isinstance(k, bool):
                raise InterfaceError(f"dict content keys must be str or int, got {type(k).__name__}")
            else:
                check_content(k)
            out[k] = check_content(v, _depth + 1)
        return out
    if isinstance(content, np.generic):
        return check_content(content.item(), _depth)
    raise InterfaceError(
        f"cannot store content of type {type(content).__name__}: use str, bytes, a numpy "
        "array or a msgpack-able value")


def _check_text(text: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate), like the wire codec does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise InterfaceError(
            f"cannot store text with a lone surrogate {bad!r} at position {exc.start}: "
            "text must be valid Unicode (UTF-8 encodable)") from None


def _vector(content: Any) -> np.ndarray | None:
    """The content as a 1-d float vector, or None when it is not one."""
    if isinstance(content, np.ndarray) and content.ndim == 1 and content.dtype.kind in "biuf":
        return content
    if isinstance(content, list) and content and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in content):
        return np.asarray(content, dtype=np.float64)
    return None


def _kind(content: Any) -> str:
    """What a content is, for messages ("a str", "an array of shape (2, 3) int64")."""
    if isinstance(content, np.ndarray):
        return f"an array of shape {content.shape} {content.dtype}"
    name = type(content).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def check_count(v: Any, what: str, lo: int = 0, hi: int = (1 << 63) - 1,
                none_ok: bool = True) -> int | None:
    """None or an integer in lo..hi, else InterfaceError: the server's ARG check, so every
    backend refuses the same arguments the same way (a float, even 2.0, or a bool is not
    an integer here).

    :param none_ok: whether None (nil on the wire) is accepted.
    :returns: ``v`` as an int (or None).
    :raises InterfaceError: anything else.
    """
    if v is None and none_ok:
        return None
    # hi defaults to the wire's bound (an int64), so no backend takes a larger one.
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise InterfaceError(f"{what} must be an integer in {lo}..{hi}, got {v!r}")
    return int(v)


# -- argument checks -----------------------------------------------------------------------
# The engine's arguments are checked by these functions before any shortcut (an empty
# store answers nothing without looking at its arguments otherwise), and the network
# clients (vtpu.session.ClientOps) call the same functions before they send: what the
# engine refuses, every backend refuses, with the same error.


def _bytes_like(v: Any) -> bytes | None:
    """``v`` as bytes when it is bytes, a bytearray or a byte memoryview, else None."""
    if type(v) is bytes:
        return v
    if isinstance(v, bytearray) or (isinstance(v, memoryview) and v.itemsize == 1):
        return bytes(v)
    return None


# An 18-byte packed coordinate (bytes, bytearray or byte memoryview) as bytes; the
# store's point read applies the same rule.
check_key = _core.check_key


def check_blob(blob: Any, what: str = "keys") -> bytes:
    """N packed coordinates: N*18 bytes, or an ``(N, 9)`` uint16 array (packed here).

    :returns: the blob as bytes.
    :raises InterfaceError: anything else (another dtype or shape is not cast).
    """
    if isinstance(blob, np.ndarray):
        return _core.pack_many(_core.check_coords(blob, what))
    b = _bytes_like(blob)
    if b is None:
        raise InterfaceError(f"{what} must be N*18 bytes or an (N, 9) uint16 array, "
                             f"got {type(blob).__name__}")
    if len(b) % 18:
        raise InterfaceError(f"{what}: packed coordinates need a multiple of 18 bytes, "
                             f"got {len(b)}")
    return b


def check_contents(contents: Any, n: int) -> Any:
    """The contents of a batched write of ``n`` keys: a list or tuple of n contents, or an
    ndarray whose row i is content i (the contents themselves are checked on write).

    :returns: a list, or the array.
    :raises InterfaceError: another type (a str or a generator is not split into
        contents), or not n of them.
    """
    if isinstance(contents, np.ndarray):
        if contents.ndim == 0 or contents.shape[0] != n:
            raise InterfaceError(f"{n} coordinates but contents of shape {contents.shape}")
        return contents
    if not isinstance(contents, (list, tuple)):
        raise InterfaceError("contents must be a list or an ndarray (row i is content i), "
                             f"got {type(contents).__name__}")
    if len(contents) != n:
        raise InterfaceError(f"{n} coordinates but {len(contents)} contents")
    return contents if type(contents) is list else list(contents)


def check_metric(metric: Any) -> str:
    """CNEAREST's metric: "l1" or "hamming". :raises InterfaceError: anything else."""
    if type(metric) is not str or metric not in ("l1", "hamming"):
        raise InterfaceError(f"metric must be 'l1' or 'hamming', got {metric!r}")
    return metric


def check_mode(mode: Any) -> str:
    """CATTEND's mode: None (meaning "auto"), "auto", "dot" or "distance".

    :returns: the mode, "auto" for None.
    :raises InterfaceError: anything else.
    """
    if mode is None:
        return "auto"
    if type(mode) is not str or mode not in ("auto", "dot", "distance"):
        raise InterfaceError(f"mode must be 'auto', 'dot' or 'distance', got {mode!r}")
    return mode


def check_direction(direction: Any) -> str:
    """CHIER's direction here: "NEXT" or "PREV", exactly. :raises InterfaceError: else."""
    if type(direction) is not str or direction not in ("NEXT", "PREV"):
        raise InterfaceError(f"direction must be NEXT or PREV here, got {direction!r}")
    return direction


def check_patterns(patterns: Any, what: str = "key patterns") -> np.ndarray:
    """A ``(Q, 2, 9)`` uint16 array of patterns. :raises InterfaceError: anything else."""
    if not isinstance(patterns, np.ndarray) or patterns.dtype != np.uint16 or \
            patterns.ndim != 3 or patterns.shape[1:] != (2, 9):
        got = (f"{patterns.dtype} {patterns.shape}" if isinstance(patterns, np.ndarray)
               else type(patterns).__name__)
        raise InterfaceError(f"{what} must be a (Q, 2, 9) uint16 array, got {got}")
    return np.ascontiguousarray(patterns)


def check_values(values: Any) -> np.ndarray | None:
    """CATTEND's values: None, a ``(2, 9)`` int32 delta (from each key to its value) or a
    ``(2, 9)`` uint16 pattern (aligned with the keys); the dtype tells them apart.

    :raises InterfaceError: anything else.
    """
    if values is None:
        return None
    if isinstance(values, np.ndarray) and values.dtype == np.int32:
        if values.shape != (2, 9):
            raise InterfaceError(f"a values delta must be a (2, 9) int32 array, got "
                                 f"{values.shape}")
        return np.ascontiguousarray(values)
    return _core.check_pattern(values, "values")


def check_deltas(deltas: Any) -> np.ndarray:
    """CKG's relations: an ``(R, 2, 9)`` int32 array. :raises InterfaceError: else."""
    if not isinstance(deltas, np.ndarray) or deltas.ndim != 3 or \
            deltas.shape[1:] != (2, 9) or deltas.dtype != np.int32:
        got = (f"{deltas.dtype} {deltas.shape}" if isinstance(deltas, np.ndarray)
               else type(deltas).__name__)
        raise InterfaceError(f"deltas must be an (R, 2, 9) int32 array, got {got}")
    return np.ascontiguousarray(deltas)


def check_name_list(names: Any) -> list:
    """The names of an intern call: a list or tuple (a bare str is not split into its
    characters). :raises InterfaceError: anything else."""
    if not isinstance(names, (list, tuple)):
        raise InterfaceError(f"intern takes a list of names, got {type(names).__name__}")
    return list(names)


def check_text(text: Any) -> str:
    """A .phext document to import: a str. :raises InterfaceError: anything else."""
    if type(text) is not str:
        raise InterfaceError(f"the phext text must be a str, got {type(text).__name__} "
                             "(decode bytes as UTF-8 first)")
    return text


def _rows_in_windows(coords: np.ndarray, kp: np.ndarray, starts: np.ndarray,
                     ends: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Which rows of sorted ``coords`` match at least one window pattern.

    :param starts, ends, exact: :func:`vtpu._core.window_spans` of ``coords`` and ``kp``.
    :returns: (N,) bool mask.
    """
    n = len(coords)
    whole = exact & (ends > starts)
    cover = np.bincount(starts[whole], minlength=n + 1) - np.bincount(ends[whole], minlength=n + 1)
    inside = np.cumsum(cover[:n]) > 0
    for i in np.flatnonzero(~exact):
        a, b = int(starts[i]), int(ends[i])
        inside[a:b] |= _core.match(coords[a:b], kp[i])
    return inside


def _edge_key(item: Any, names: NameTable) -> bytes | None:
    """The key one coordinate-valued item stands for (CKG).

    :returns: 18 bytes; ``b""`` for coordinate text naming a name the store never
        interned (a coordinate where nothing can be stored); None when the item is not
        a coordinate (text that does not parse, any other value).
    """
    if isinstance(item, str):
        if "/" not in item and ";" not in item:
            return None   # a coordinate's text always holds its group separators
        try:
            return _core.pack(_core.parse_coord(item.strip(), names.reader, False))
        except UnknownName:
            return b""
        except CoordinateError:
            return None
    if isinstance(item, bytes):
        return item if len(item) == 18 else None
    if isinstance(item, np.ndarray) and item.dtype == np.uint16 and item.shape == (9,):
        return _core.pack(item)
    return None


def _edge_targets(content: Any, names: NameTable) -> list[bytes] | None:
    """Coordinates an edge's content points at (CKG), or None when it points nowhere.

    A coordinate is text (surrounding whitespace ignored), an 18-byte key or a (9,)
    uint16 array; a list of them or an (N, 9) uint16 array points at each. Anything
    else (including an empty list) is no pointer: the edge itself is the target.
    Coordinates naming never-interned names hold nothing and are left out.
    """
    if isinstance(content, np.ndarray) and content.dtype == np.uint16 and \
            content.ndim == 2 and content.shape[1] == 9:
        blob = _core.pack_many(np.ascontiguousarray(content))
        return [blob[i:i + 18] for i in range(0, len(blob), 18)] or None
    items = content if isinstance(content, list) else [content]
    if not items:
        return None
    out = []
    for item in items:
        key = _edge_key(item, names)
        if key is None:
            return None
        if key:
            out.append(key)
    return out


_SCROLL_WIRE = 48   # a scroll's key, version and times, with their msgpack headers
_FLAT = frozenset((str, bytes))


def _content_size(v: Any) -> int:
    """About how many bytes a content takes in msgpack (exact for bin, ASCII str and
    arrays; a str of other text is counted by characters)."""
    t = type(v)
    if t is bytes or t is str:
        return len(v) + 5
    if t is np.ndarray:
        return v.nbytes + 32
    if t is list:
        return 5 + sum([_content_size(x) for x in v])
    if t is dict:
        return 5 + sum([_content_size(k) + _content_size(x) for k, x in v.items()])
    return 9


def estimate_wire_size(scrolls: Any, stop: int | None = None,
                       per_scroll: int = _SCROLL_WIRE) -> tuple[int, int]:
    """About how many bytes these scrolls take in a reply, without encoding them: each
    content's size plus a fixed amount per scroll.

    :param scrolls: a :class:`~vtpu.results.Scrolls` (sized from its columns, no Scroll
        made), or a list of Scrolls, None for absent entries.
    :param stop: a size of interest: when the total passes it, say where.
    :param per_scroll: bytes added per scroll besides its content.
    :returns: ``(bytes, n)``: the estimate for all the scrolls and ``n = len(scrolls)``,
        or, when it passes ``stop``, the estimate up to and including the ``n``-th
        scroll, the first at which the running total passes ``stop``.
    """
    if type(scrolls) is _core.Scrolls:
        each = scrolls.wire_sizes(per_scroll, _content_size)
    else:
        contents = [s.content for s in scrolls if s is not None]
        flat = set(map(type, contents)) <= _FLAT  # the common case, at C speed
        sizes = iter(list(map(len, contents)) if flat else list(map(_content_size, contents)))
        head = per_scroll + 5 if flat else per_scroll
        each = np.array([4 if s is None else head + next(sizes) for s in scrolls],
                        dtype=np.int64)
    total = int(each.sum())
    if stop is None or total <= stop:
        return total, len(scrolls)
    upto = np.cumsum(each)
    n = int(np.searchsorted(upto, stop, side="right"))  # the first scroll past stop
    return int(upto[n]), n + 1


def _refuse_over(size: int, limit: int) -> None:
    """Refuse a read whose reply would be about ``size`` bytes, over ``limit``."""
    if size > limit:
        raise LimitError(f"the reply would take more than {limit} bytes (the client's frame "
                         "limit)", "LIMIT")


class _VectorRows:
    """Vectors gathered chunk by chunk into one ``(n, d)`` array, made at the first chunk
    (a dtype met later promotes it), rather than a list of parts joined at the end: that
    join copies every vector once more into memory the process has not touched yet,
    whose page faults cost a large window more than its gathers."""

    def __init__(self, n: int):
        """:param n: at most how many vectors will be added."""
        self.n = n
        self.out: np.ndarray | None = None
        self.got = 0

    def add(self, vecs: np.ndarray) -> None:
        """Append the (m, d) ``vecs`` (every chunk has the same d)."""
        if not len(vecs):
            return
        if self.out is None:
            self.out = np.empty((self.n, vecs.shape[1]), dtype=vecs.dtype)
        else:
            self.out = self.out.astype(np.result_type(self.out, vecs), copy=False)
        self.out[self.got:self.got + len(vecs)] = vecs
        self.got += len(vecs)

    def result(self, d: int) -> np.ndarray:
        """The vectors added, ``(got, d)`` (float64 and empty when none were)."""
        return np.empty((0, d)) if self.out is None else self.out[:self.got]


class Engine(EngineCore):
    """An in-memory, indexed coordinate store with optional durable storage.

    Its write of one scroll, :meth:`put`, is compiled: the base class
    :class:`vtpu._cengine.EngineCore` holds the fields it touches.

    :param storage: a :class:`vtpu.storage.Storage` (or None for memory only). Its rows
        and names are loaded at start-up and the indexes rebuilt from them.
    :param autocommit: commit storage after every write call (embedded use). The server
        turns it off and commits once per batch of frames (group commit).
    """

    #: not safe for concurrent calls: the facade serialises writes with its lock
    thread_safe = False

    def __init__(self, storage=None, autocommit: bool = True):
        self.storage = storage
        self.autocommit = autocommit
        self.names = NameTable(on_intern=self._names_added)
        # key -> scroll: the rows of the column store (mapping access: get, [], in, len)
        self._map = _core.ColumnStore(self.names)
        # The hottest call, bound straight to the store's C method: a Python frame
        # around it was a tenth of an embedded CGET (see Engine.get). A subclass that
        # overrides get keeps its own.
        if type(self).get is Engine.get:
            self.get = self._map.get
        # The index's main array is the store's sorted run: keys are held once.
        self._index = CoordIndex(source=self._map)
        self._started = time.time()
        self._ops: dict[str, int] = {}
        self.load_seconds = 0.0
        # Since the last commit: (keys blob, the scrolls they held before) per write call,
        # and how many names the storage holds.
        self._undo: list[tuple[bytes, list]] = []
        self._names_mark = 0
        if storage is not None:
            self._load()

    # -- durability -----------------------------------------------------------------------

    def _names_added(self, first: int, names: list) -> None:
        if self.storage is not None:
            self.storage.add_names(first, names)

    def _load(self) -> None:
        t0 = time.perf_counter()
        names, chunks = self.storage.load_chunks()
        self.names.extend(list(names))
        self._names_mark = len(self.names)
        # The records come in key order, packed in chunks: the store takes them as its
        # sorted run in one pass (it checks the order), and the index's main array is
        # that run. Each chunk is dropped once read, so they and the store are not both
        # held whole.
        chunks.reverse()
        self._map.load_chunks(chunks.pop() for _ in range(len(chunks)))
        self._index.clear()
        if len(self.names) >= MAX_NAMES and not self.names.free:
            # A full table (a flood of names, say) would refuse every new name for good:
            # free what no key uses.
            self.reclaim_names()
        self.load_seconds = time.perf_counter() - t0

    def _queued(self, mark: int, queue: Any, *args: Any, commit: bool = True) -> None:
        """Queue a write that memory already shows; undo it there if queueing fails.

        :param commit: commit it too when ``autocommit`` is on (a write in steps commits
            once, at its end).
        """
        try:
            queue(*args)
        except BaseException:
            self._revert(mark)
            raise
        if commit and self.autocommit:
            self.commit()

    def _revert(self, mark: int) -> None:
        """Undo, newest first, every write recorded in the undo log after ``mark``."""
        undo, m, index = self._undo, self._map, self._index
        while len(undo) > mark:
            blob, olds = undo.pop()
            for i in range(len(olds) - 1, -1, -1):
                key = blob[18 * i:18 * i + 18]
                old = olds[i]
                if old is None:
                    if m.delete(key):
                        index.remove(key)
                else:
                    # The store first: an index merge on the way is built from it.
                    absent = key not in m
                    m.set(key, old.content, old.version, old.created_at, old.updated_at)
                    if absent:
                        index.add(key)

    def commit(self) -> int:
        """Make every write so far durable (per the storage's fsync policy).

        :returns: the number of storage operations written (0: nothing was pending).
        :raises StorageError: the commit failed; every write since the last commit is
            then undone in memory too (scrolls, index and name table), as if it had
            never been made.
        """
        if self.storage is None:
            return 0
        try:
            n = self.storage.commit()
        except BaseException:
            self._revert(0)
            self.names.truncate(self._names_mark)
            raise
        self._undo = []
        self._names_mark = len(self.names)
        self.names.committed()
        return n

    def close(self) -> None:
        """Commit and close the storage, if any."""
        if self.storage is not None:
            self.commit()
            self.storage.close()
            self.storage = None

    def _maybe_compact(self) -> None:
        """Compact the store once deleted rows or dead content bytes are a quarter of it
        (amortised: a compaction costs about as much as the writes since the last one)."""
        m = self._map
        if m.dead_rows > max(4096, len(m) // 4) or \
                m.garbage_bytes > max(1 << 20, m.arena_bytes // 4):
            self._index.merge()   # the index's merge is the store's compaction

    def _count(self, op: str, n: int = 1) -> None:
        self._ops[op] = self._ops.get(op, 0) + n

    def _check_names(self, blob: bytes) -> None:
        """Refuse keys holding name ids never interned (COORD): nothing could format them.

        :raises CoordinateError: naming the row and the id.
        """
        # Name ids are 0xF000 and up, so only a high byte >= 0xF0 needs the table.
        if blob and _core.has_name_ids(blob):
            self.names.check_ids(_core.unpack_many(blob))

    # -- point operations -----------------------------------------------------------------

    def get(self, key: bytes) -> Scroll | None:
        """CGET: the scroll at an 18-byte key (made now from its row), or None.

        An engine's ``get`` is its store's own point read (bound in ``__init__``: one
        hash lookup, no Python frame around it); this method is what it binds.

        :raises InterfaceError: a key that is not 18 bytes (see :func:`check_key`).
        """
        return self._map.get(key)

    def get_many(self, blob: bytes, content_only: bool = False):
        """Batched CGET over an N*18-byte blob, in one core call.

        :param blob: N*18 bytes of packed keys.
        :param content_only: return the contents only, not scrolls.
        :returns: a :class:`~vtpu.results.Scrolls` of N items, None where nothing is
            stored; with ``content_only`` a list of N contents, None where nothing is
            stored.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        """
        if content_only:
            return self._map.contents(check_blob(blob))
        return self._map.get_many(check_blob(blob))

    def get_many_within(self, blob: bytes, max_bytes: int | None,
                        content_only: bool = False):
        """:meth:`get_many` with a reply budget (the server's GET_MANY): a result whose
        reply would pass ``max_bytes`` is refused before anything is copied.

        :param blob: N*18 bytes of packed keys.
        :param max_bytes: the budget in reply bytes (about: see
            :func:`estimate_wire_size`), or None for none.
        :param content_only: the reply will carry the contents only: the budget counts
            those. The result is the same column result (a server writes its contents
            from the columns, with no object per content).
        :returns: a :class:`~vtpu.results.Scrolls` of N items, None where nothing is
            stored.
        :raises InterfaceError: the blob is not a multiple of 18 bytes.
        :raises LimitError: the reply would pass ``max_bytes``.
        """
        blob = check_blob(blob)
        if max_bytes is None:
            return self._map.get_many(blob)
        # One lookup per key: the store checks its arena bytes against the budget
        # before it copies anything; contents kept as objects are sized after.
        per = 0 if content_only else _SCROLL_WIRE
        res = self._map.get_many(blob, max_bytes, per + 5)
        # None: the arena bytes alone pass the budget (nothing was copied).
        _refuse_over(max_bytes + 1 if res is None else
                     estimate_wire_size(res, max_bytes, per)[0], max_bytes)
        return res

    def content_lengths(self, blob: bytes) -> np.ndarray:
        """How many bytes each stored content at these keys holds, without reading any
        (-1 where nothing is stored, -2 for a content kept as a Python object).

        :param blob: N*18 bytes of packed keys.
        :returns: (N,) int64 array.
        :raises InterfaceError: a malformed blob.
        """
        return self._map.content_lengths(check_blob(blob))

    def put_many(self, blob: bytes, contents: Any) -> list[int]:
        """Batched CPUT: ``contents[i]`` goes to the i-th key of the blob.

        :param contents: a list, or an ndarray whose row i is content i.
        :returns: the new versions.
        :raises InterfaceError: lengths differ or a content is unstorable (nothing is
            written then).
        """
        return self._put_many(blob, contents, True)

    def _put_many(self, blob: bytes, contents: Any, commit: bool) -> list[int]:
        """:meth:`put_many`; ``commit``: as :meth:`_queued`."""
        blob = check_blob(blob)
        n = len(blob) // 18
        contents = check_contents(contents, n)
        self._check_names(blob)
        if isinstance(contents, np.ndarray):
            frozen = check_content(contents)   # the dtype check, and one frozen copy
            if frozen.ndim > 1:
                contents = list(frozen)        # rows of that copy: nothing left to check
            else:
                contents = frozen.tolist()
                _core.check_contents(contents, check_content)
        else:
            _core.check_contents(contents, check_content)
        m = self._map
        st = self.storage
        if st is not None:
            # Encoded before memory changes: a refusal leaves nothing behind.
            blobs = [pack_value(c) for c in contents]
            olds = m.get_many(blob)
        versions, new_keys = m.put_many(blob, contents, time.time())
        if new_keys:
            self._index.add_many(new_keys)
        if st is not None:
            # Each key's row as stored now (a key given twice: its last write, twice).
            written = m.get_many(blob)
            mark = len(self._undo)
            self._undo.append((blob, olds))
            self._queued(mark, st.put_many, list(zip(
                [blob[i:i + 18] for i in range(0, len(blob), 18)], blobs,
                written.versions.tolist(), written.created_at.tolist(),
                written.updated_at.tolist())), commit=commit)
        self._maybe_compact()
        return versions

    def delete(self, key: bytes) -> int:
        """CDEL of one key: returns 1 if a scroll was removed, else 0.

        :raises InterfaceError: a key that is not 18 bytes.
        """
        if type(key) is not bytes:
            key = check_key(key)
        m = self._map
        old = m.get(key) if self.storage is not None else None   # kept for the undo log
        if not m.delete(key):
            return 0
        self._index.remove(key)
        if self.storage is not None:
            mark = len(self._undo)
            self._undo.append((key, [old]))
            self._queued(mark, self.storage.delete, [key])
        self._maybe_compact()
        return 1

    def delete_many(self, blob: bytes) -> int:
        """CDEL of many keys: returns how many scrolls were removed.

        :raises InterfaceError: the blob is not N*18 bytes or an (N, 9) uint16 array.
        """
        return self._delete_many(blob, True)

    def _delete_many(self, blob: bytes, commit: bool, compact: bool = True) -> int:
        """:meth:`delete_many`; ``commit``: as :meth:`_queued`; ``compact``: compact the
        store now if due (a long delete compacts once, at its end)."""
        blob = check_blob(blob)
        m = self._map
        st = self.storage
        olds = m.get_many(blob) if st is not None else None   # kept for the undo log
        gone = m.delete_many(blob)
        self._index.remove_many(gone, merge=compact)
        if gone and st is not None:
            mark = len(self._undo)
            self._undo.append((blob, olds))
            self._queued(mark, st.delete, gone, commit=commit)
        if compact:
            self._maybe_compact()
        return len(gone)

    def delete_range(self, pattern: np.ndarray) -> int:
        """CDEL of a pattern: removes every matching scroll, returns how many.

        :raises InterfaceError: not a (2, 9) uint16 pattern.
        """
        return run(self.delete_range_steps(pattern))

    def delete_range_steps(self, pattern: np.ndarray) -> Steps:
        """Steps of :meth:`delete_range` (:mod:`vtpu.steps`).

        The keys matching when it starts are deleted DELETE_STEP at a time; one that
        another request deleted meanwhile is not counted, one written meanwhile under
        the pattern is not deleted. Stopped by a :class:`RequestTimeout` between steps,
        it raises one that says how many it deleted: those stay deleted (each step
        leaves the store consistent), the others stay stored.
        """
        pattern = _core.check_pattern(pattern)
        n = 0
        total = None
        try:
            # Where the matches are, not their coordinates: each step gathers its own
            # (one gather of a million coordinates would be one long step).
            hits = yield from self._index.hits_steps(pattern)
            total = len(hits.pos)
            for a in range(0, total, DELETE_STEP):
                if a:
                    yield
                n += self._delete_many(_core.pack_many(hits.coords(a, a + DELETE_STEP)),
                                       False, compact=False)
        except RequestTimeout as exc:
            done = "none was deleted" if total is None else \
                f"{n} of the {total} matching scrolls were deleted, the others are still stored"
            raise RequestTimeout(f"{exc.message}; {done}") from None
        finally:
            if n:
                # Compacted once now, not every sixteenth of the store on the way: each
                # compaction is one pause for every other request.
                self._index.merge_if_due()
                self._maybe_compact()
            if n and self.storage is not None and self.autocommit:
                self.commit()
        return n

    # -- pattern queries ------------------------------------------------------------------

    def range(self, pattern: np.ndarray, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False):
        """CRANGE: scrolls matching the pattern, in coordinate order.

        :param limit: at most this many (page size).
        :param after: exclusive start key (the last key of the previous page).
        :param keys_only: return an (M, 9) uint16 array of coordinates instead of scrolls.
        """
        return run(self.range_steps(pattern, limit, after, keys_only))

    def range_steps(self, pattern: np.ndarray, limit: int | None = None,
                    after: bytes | None = None, keys_only: bool = False) -> Steps:
        """Steps of :meth:`range`: the keys matching when it starts, found a window of
        the index per step; their scrolls are read in one go (one deleted meanwhile is
        left out). A long result is for ``mem://``: the server pages RANGE."""
        pattern = _core.check_pattern(pattern)
        limit = check_count(limit, "limit")
        hits = yield from self._index.hits_steps(
            pattern, None if after is None else _core.unpack(check_key(after, "after")), limit)
        if keys_only:
            return hits.coords()
        if len(hits.pos) > GATHER:
            yield
        # A hit in the store's sorted run is at the row of its position there: the rows
        # are gathered in one pass, with no key hashed but those found elsewhere.
        m = self._map
        return m.take(m.rows_at(hits.main, hits.pos, hits.extra))

    def _stored(self, coords: np.ndarray):
        """The scrolls at (M, 9) coordinates (a :class:`~vtpu.results.Scrolls`), without
        those no longer stored."""
        res = self._map.get_many(_core.pack_many(coords))
        found = res.found
        return res if found.all() else res.take(np.flatnonzero(found))

    def _chunks(self, coords: np.ndarray, size: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
        """``(scrolls, their coordinates)`` of (M, 9) coordinates, ``size`` (GATHER) at a
        time, without those no longer stored: a step generator reads one per step."""
        size = size or GATHER
        for a in range(0, len(coords), size):
            part = coords[a:a + size]
            res = self._map.get_many(_core.pack_many(part))
            found = res.found
            if found.all():
                yield res, part
            else:
                keep = np.flatnonzero(found)
                yield res.take(keep), part[keep]

    def _hit_chunks(self, hits: Any, size: int) -> Iterator[Any]:
        """The scrolls of a query's hits (:class:`vtpu.index.Hits`), ``size`` at a time
        in their order, without those no longer stored: a step generator reads one per
        step. Nothing is gathered for all hits at once (a query of a million hits is
        read a chunk per step), and a hit in the store's sorted run is read by its row,
        no key hashed."""
        m = self._map
        for a in range(0, len(hits.pos), size):
            yield m.take(m.rows_at(hits.main, hits.pos[a:a + size], hits.extra))

    def count(self, pattern: np.ndarray) -> int:
        """CRANGE count: how many scrolls match the pattern.

        :raises InterfaceError: not a (2, 9) uint16 pattern.
        """
        return run(self.count_steps(pattern))

    def count_steps(self, pattern: np.ndarray) -> Steps:
        """Steps of :meth:`count` (the keys matching when it starts)."""
        return (yield from self._index.count_steps(_core.check_pattern(pattern)))

    def nearest(self, c: np.ndarray, k: int = 10, metric: str = "l1", within=None):
        """CNEAREST: the k stored coordinates nearest to c.

        :returns: ((m, 9) uint16 coordinates, (m,) int64 distances), nearest first, ties
            by coordinate order.
        """
        return run(self.nearest_steps(c, k, metric, within))

    def nearest_steps(self, c: np.ndarray, k: int = 10, metric: str = "l1",
                      within=None) -> Steps:
        """Steps of :meth:`nearest` (over the keys stored when it starts)."""
        c = _core.check_coord(c)
        k = check_count(k, "k", 0, MAX_K)
        metric = check_metric(metric)
        if within is not None:
            within = _core.check_pattern(within, "within")
        return (yield from self._index.nearest_steps(c, k, metric, within))

    def hier(self, c: np.ndarray, direction: str):
        """CHIER NEXT/PREV: the neighbouring stored coordinate in document order, or None."""
        return self._index.neighbour(_core.check_coord(c), check_direction(direction))

    # -- compound instructions ------------------------------------------------------------

    def _query_vector(self, q, mode: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(vector, coordinate) of an attention query given as a key or a vector.

        :returns: the query vector (None when the query scroll holds something else) and
            the query coordinate (None for a vector query).
        :raises NotFoundError: the key holds no scroll (``mode="distance"`` needs only
            the coordinate, so there it may be empty).
        """
        if isinstance(q, (bytes, bytearray, memoryview)):
            q = check_key(q, "a query key")
            s = self._map.get(q)
            if s is None and mode != "distance":
                raise NotFoundError(f"no scroll at the query coordinate {self._fmt(q)}")
            vec = None if s is None else _vector(s.content)
            if vec is not None and vec.size == 0:
                raise InterfaceError(f"the query scroll at {self._fmt(q)} holds an empty vector")
            return vec, _core.unpack(q)
        if isinstance(q, np.ndarray):
            if q.ndim != 1 or q.dtype.kind not in "biuf":
                raise InterfaceError("a query vector must be a 1-d numeric array, got "
                                     f"shape {q.shape} dtype {q.dtype}")
            if q.size == 0:
                raise InterfaceError("the query vector is empty")
            return q, None
        raise InterfaceError(f"query must be a key or a vector, got {type(q).__name__}")

    def _vectors(self, scrolls, size: int | None, what: str, against: str = "",
                 hint: str = "") -> np.ndarray:
        """The contents of ``scrolls`` stacked as (n, size) vectors, dtype kept.

        :param scrolls: a :class:`~vtpu.results.Scrolls` (None where nothing is stored).
        :param size: the size every vector must have (None: the first one's).
        :param what: "query", "key" or "value", for messages.
        :param against: what fixed the size ("the query vector"), for messages.
        :param hint: appended to the message about a scroll holding no vector.
        :raises InterfaceError: a scroll holds no 1-d numeric vector, or one of another
            size; the message names its coordinate and both sizes.
        """
        if not len(scrolls):
            return np.empty((0, size or 0))
        # The common case in one core call: every scroll holds a 1-d numeric array of one
        # dtype and size, so the contents column is already the (n, size) matrix.
        col = scrolls.contents
        if isinstance(col, np.ndarray) and col.ndim == 2 and col.dtype.kind in "biuf" \
                and (size is None or col.shape[1] == size):
            return col
        vecs = [None if s is None else _vector(s.content) for s in scrolls]
        shapes = {None if v is None else v.shape for v in vecs}
        if len(shapes) == 1 and None not in shapes and (size is None or shapes == {(size,)}):
            return np.stack(vecs)
        for s, v in zip(scrolls, vecs):   # name the first scroll that does not fit
            if v is None:
                held = "nothing" if s is None else _kind(s.content)
                where = "" if s is None else f" at {self._fmt(s.key)}"
                raise InterfaceError(
                    f"the {what} scroll{where} holds {held}, not a vector"
                    + (f" of size {size}" if size is not None else "") + hint)
            if size is None:
                size, against = v.shape[0], f"the {what} scroll at {self._fmt(s.key)}"
            elif v.shape[0] != size:
                raise InterfaceError(
                    f"{against} has size {size} but the {what} scroll at {self._fmt(s.key)} "
                    f"holds a vector of size {v.shape[0]}")
        raise AssertionError("unreachable: the shapes differ, so some scroll does not fit")

    def _value_vectors_steps(self, keys: np.ndarray, values, cast: bool = True) -> Steps:
        """Steps: the value vectors of attention keys, stacked (one row per key), GATHER
        scrolls per step."""
        rows = _VectorRows(len(keys))
        size = against = None
        got = 0

        def take(scrolls: list) -> None:
            nonlocal size, against, got
            vecs = self._vectors(scrolls, size, "value", against or "")
            if size is None and len(vecs):
                size = vecs.shape[1]
                against = f"the value scroll at {self._fmt(scrolls[0].key)}"
            if got + len(scrolls) <= len(keys):   # (more is refused below)
                rows.add(vecs)
            got += len(scrolls)

        if values.dtype == np.int32:           # a delta applied to every key
            vcoords = apply_delta_any(keys, values)
            if isinstance(vcoords, list):
                raise InterfaceError("a values delta must not contain wildcards")
            for a in range(0, len(vcoords), GATHER):
                yield
                scrolls = self.get_many(_core.pack_many(vcoords[a:a + GATHER]))
                for i in np.flatnonzero(~scrolls.found):
                    raise InterfaceError(
                        f"no value scroll at {self._fmt(_core.pack(vcoords[a + i]))} (the "
                        f"value of the key at {self._fmt(_core.pack(keys[a + i]))})")
                take(scrolls)
        else:                                   # a pattern aligned with the keys
            vcoords = yield from self._index.query_steps(values)
            for part, _ in self._chunks(vcoords):
                yield
                take(part)
        if got != len(keys):
            raise InterfaceError(f"values give {got} scrolls for {len(keys)} keys")
        out = rows.result(0)
        return out.astype(np.float64) if cast else out

    def attend(self, q, key_pattern: np.ndarray, top_k: int | None = None, values=None,
               return_output: bool = True, mode: str | None = "auto") -> dict:
        """CATTEND: attention of one query over the scrolls matching ``key_pattern``.

        Modes: ``"dot"`` scores q.k/sqrt(d) with softmax weights over all matched keys;
        ``"distance"`` scores 1/(1 + L1 distance) between the query and key coordinates
        with weights score/sum (the text fallback); ``"auto"`` is "dot" when the query is
        a vector and "distance" when the query scroll and every key scroll hold no vector.
        Anything else (a vector query over text keys, keys of mixed kinds or sizes) is an
        error, never a silent switch. With ``values`` the output is the weighted sum of
        the value vectors.

        :param q: an 18-byte key of the scroll holding the query, or a 1-d vector.
        :param top_k: return only the ``top_k`` best keys (the weights are over all).
        :param values: None, a (2, 9) uint16 pattern aligned with the keys or a (2, 9)
            int32 delta from each key to its value.
        :param mode: "auto" (None), "dot" or "distance".
        :returns: dict with ``keys`` (top-k coordinates by score, ties by coordinate),
            ``scores``, ``weights``, ``contents``, ``output`` (None without ``values`` or
            when no key matched), ``n`` matched, ``mode`` ("dot" or "distance").
        :raises NotFoundError: the query key holds no scroll (modes "auto" and "dot").
        :raises InterfaceError: sizes or kinds disagree (the message names both sizes),
            or a bad argument.
        """
        return run(self.attend_steps(q, key_pattern, top_k, values, return_output, mode))

    def attend_steps(self, q, key_pattern: np.ndarray, top_k: int | None = None,
                     values=None, return_output: bool = True, mode: str | None = "auto",
                     max_keys: int | None = None) -> Steps:
        """Steps of :meth:`attend`: keys read and scored GATHER per step, the best
        ``top_k`` kept as they come (so ``top_k`` bounds the work of the ordering).

        :param max_keys: with ``top_k`` None (every matched key), refuse with
            :class:`LimitError` when more keys than this match (checked before reading
            any scroll).
        """
        mode = check_mode(mode)
        top_k = check_count(top_k, "top_k")
        key_pattern = _core.check_pattern(key_pattern, "key pattern")
        values = check_values(values)
        qvec, qcoord = self._query_vector(q, mode)
        coords = yield from self._index.query_steps(key_pattern)
        if top_k is None and max_keys is not None and len(coords) > max_keys:
            raise LimitError(f"{len(coords)} keys match and top_k is nil (every one of them); "
                             f"at most {max_keys} are returned: give a top_k", "LIMIT")
        if mode == "dot" and qvec is None:
            raise InterfaceError(f"mode 'dot' needs a query vector; the query scroll at "
                                 f"{self._fmt(q)} holds {_kind(self._map[q].content)}")
        if mode == "distance" and qcoord is None:
            raise InterfaceError("mode 'distance' scores coordinates: give the query as a "
                                 "coordinate (query_coord), not a vector")
        # One pass over the keys a chunk per step: their scores (and, in "auto" mode
        # without a query vector, the check that no key holds a vector), and the
        # chunks themselves, for the contents of the best keys at the end.
        chunks: list = []
        kparts: list = []
        parts: list = []
        for part, pc in self._chunks(coords):
            yield
            chunks.append(part)
            kparts.append(pc)
            if qvec is not None and mode != "distance":
                d = qvec.shape[0]
                K = self._vectors(part, d, "key", "the query vector",
                                  " (keys of mixed kinds: pass mode='distance' to score every "
                                  "key by coordinate distance)").astype(np.float64)
                parts.append(K @ qvec.astype(np.float64) / math.sqrt(d))
                continue
            if mode == "auto":
                for s in part:
                    v = _vector(s.content)
                    if v is not None:
                        raise InterfaceError(
                            f"the query scroll at {self._fmt(q)} holds "
                            f"{_kind(self._map[q].content)}, not a vector, but the key scroll "
                            f"at {self._fmt(s.key)} holds a vector of size {v.shape[0]}: "
                            "store a query vector, or pass mode='distance'")
            parts.append(1.0 / (1.0 + _core.l1(qcoord, pc).astype(np.float64)))
        if mode == "auto":
            mode = "dot" if qvec is not None else "distance"
        dot = mode == "dot"
        keys = np.concatenate(kparts) if len(kparts) > 1 else kparts[0] if kparts else \
            _EMPTY_COORDS
        n = len(keys)
        # The softmax's max and sum (dot) or the sum (distance), the best top_k by score
        # with ties by coordinate (the keys are in coordinate order) and the weighted sum
        # of the values: a chunk of the n scores per step.
        top = max((float(p.max()) for p in parts if len(p)), default=0.0) if dot else 0.0
        total = 0.0
        best = Best(n if top_k is None else top_k)
        V = None
        if values is not None and return_output and n:
            V = yield from self._value_vectors_steps(keys, values)
        acc = None
        at = 0
        for part in parts:
            yield
            w = np.exp(part - top) if dot else part
            total += float(w.sum())
            if V is not None:
                c = w @ V[at:at + len(part)]
                acc = c if acc is None else acc + c
            best.add(np.where(np.isnan(part), np.inf, -part),
                     np.arange(at, at + len(part), dtype=np.int64))
            at += len(part)
        _, order = best.result()
        scores = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else \
            np.empty(0)
        scores = scores[order]
        weights = (np.exp(scores - top) if dot else scores) / total if n else scores
        starts = np.cumsum([0] + [len(c) for c in chunks])
        which = np.searchsorted(starts, order, side="right") - 1
        contents = [chunks[c][int(i - starts[c])].content for c, i in zip(which, order)]
        return {"keys": keys[order], "scores": scores, "weights": weights,
                "contents": contents, "output": None if acc is None else acc / total,
                "n": n, "mode": mode}

    def attend_many(self, queries, key_patterns: np.ndarray, top_k: int | None = None,
                    values=None, return_weights: bool = False) -> dict:
        """Batched CATTEND: one attention output per query (windowed/sparse attention).

        Query i attends over the scrolls matching its pattern (its window) with dot-product
        scores and softmax weights; only scrolls inside some window are read, so anything
        stored between windows may hold any content.

        :param queries: (Q, d) float array, or an N*18-byte blob of keys of query vectors.
        :param key_patterns: (Q, 2, 9) uint16 patterns, one per query.
        :param values: None (keys are also values) or a (2, 9) int32 delta mapping each key
            coordinate to its value coordinate.
        :param top_k: with ``return_weights``, keep each query's ``top_k`` largest weights.
        :param return_weights: include each query's weights (list of arrays, key order).
        :returns: dict ``outputs`` (Q, d_v) float64, ``counts`` (Q,) int64 keys per query,
            and ``weights`` when asked.
        :raises NotFoundError: a query key holds no scroll.
        :raises InterfaceError: shapes disagree (the message names both sizes), or a
            query/key/value scroll holds no vector.
        """
        return run(self.attend_many_steps(queries, key_patterns, top_k, values,
                                          return_weights))

    def _spans_steps(self, coords: np.ndarray, kp: np.ndarray) -> Steps:
        """Steps: :func:`vtpu._core.window_spans` of ``coords`` and ``kp``, the queries
        taken in groups sized to the time they took (a span costs its length)."""
        nq = len(kp)
        starts = np.empty(nq, dtype=np.int64)
        ends = np.empty(nq, dtype=np.int64)
        exact = np.empty(nq, dtype=np.bool_)
        i, g = 0, 1
        while i < nq:
            yield
            t0 = time.perf_counter()
            starts[i:i + g], ends[i:i + g], exact[i:i + g] = \
                _core.window_spans(coords, kp[i:i + g])
            i += g
            dt = time.perf_counter() - t0
            g = g * 2 if dt < 2e-4 else max(1, g // 2) if dt > 1e-3 else g
        return starts, ends, exact

    def attend_many_steps(self, queries, key_patterns: np.ndarray, top_k: int | None = None,
                          values=None, return_weights: bool = False,
                          max_weights: int | None = None) -> Steps:
        """Steps of :meth:`attend_many`: about SCORES_PER_STEP scores a step (a softmax
        over a long window is accumulated chunk by chunk, online).

        :param max_weights: with ``return_weights``, refuse with :class:`LimitError`
            when more weights than this would be returned in all (checked before any
            score is computed).
        """
        m = self._map
        top_k = check_count(top_k, "top_k")
        if top_k is not None and not return_weights:
            # top_k only trims the returned weights; accepting it alone would ignore it.
            raise InterfaceError("attend_many: top_k applies only with return_weights=True")
        kp = check_patterns(key_patterns)
        values = check_values(values)
        if isinstance(queries, (bytes, bytearray)):
            if len(queries) % 18:
                raise InterfaceError(f"query keys need a multiple of 18 bytes, got {len(queries)}")
            qs = m.get_many(bytes(queries))
            for i in np.flatnonzero(~qs.found):
                key = bytes(queries[18 * i:18 * i + 18])
                raise NotFoundError(f"no scroll at the query coordinate {self._fmt(key)} "
                                    f"(query {i})")
            Q = self._vectors(qs, None, "query")
        else:
            Q = np.asarray(queries)
        if Q.ndim != 2 or Q.dtype.kind not in "biuf" or kp.shape != (Q.shape[0], 2, 9) \
                or kp.dtype != np.uint16:
            raise InterfaceError(f"need (Q, d) numeric queries and (Q, 2, 9) uint16 patterns, "
                                 f"got {Q.shape} {Q.dtype} and {kp.shape} {kp.dtype}")
        if values is not None and values.dtype != np.int32:
            raise InterfaceError("batched attention takes values as a delta from each key to "
                                 "its value (a pattern cannot be aligned with many windows)")
        nq, d = Q.shape
        if nq == 0:
            return {"outputs": np.empty((0, d)), "counts": np.empty(0, dtype=np.int64)}
        if d == 0:
            raise InterfaceError("the query vectors are empty (d = 0)")
        kp = np.ascontiguousarray(kp)
        # One index query for the union box of all windows, then per-query spans of it;
        # rows of the box that are in no window are dropped before any content is read.
        union = np.stack([kp[:, 0].min(axis=0), kp[:, 1].max(axis=0)]).astype(np.uint16)
        ucoords = yield from self._index.query_steps(union)
        starts, ends, exact = yield from self._spans_steps(ucoords, kp)
        yield
        inside = _rows_in_windows(ucoords, kp, starts, ends, exact)
        if not inside.all():
            ucoords = np.ascontiguousarray(ucoords[inside])
            starts, ends, exact = yield from self._spans_steps(ucoords, kp)
        krows = _VectorRows(len(ucoords))
        cparts: list = []
        for part, pc in self._chunks(ucoords):
            yield
            krows.add(self._vectors(part, d, "key", "each query vector"))
            cparts.append(pc)
        if krows.got != len(ucoords):
            # A key was deleted since the windows were laid out: lay them out again.
            ucoords = np.concatenate(cparts) if cparts else _EMPTY_COORDS
            starts, ends, exact = yield from self._spans_steps(ucoords, kp)
        K = krows.result(d)
        V = K if values is None else \
            (yield from self._value_vectors_steps(ucoords, values, cast=False))
        # float32 throughout when everything stored is float32 (as models keep it),
        # float64 otherwise.
        ft = np.float32 if Q.dtype == K.dtype == V.dtype == np.float32 else np.float64
        Q, K, V = Q.astype(ft, copy=False), K.astype(ft, copy=False), V.astype(ft, copy=False)
        if return_weights and max_weights is not None:
            spans = ends - starts
            returned = int((spans if top_k is None else np.minimum(spans, top_k)).sum())
            if returned > max_weights:
                raise LimitError(f"the weights of up to {returned} keys would be returned, at "
                                 f"most {max_weights} are: give a top_k or fewer queries",
                                 "LIMIT")
        dv = V.shape[1] if V.ndim == 2 and len(V) else d
        outputs = np.zeros((nq, dv), dtype=ft)
        counts = np.zeros(nq, dtype=np.int64)
        weights_out: list | None = [None] * nq if return_weights else None
        scale = ft(1.0 / math.sqrt(d))

        def scores(qi: np.ndarray, lo: np.ndarray, hi: np.ndarray, inexact: list,
                   c0: int, c1: int):
            # Scores of a block of queries over the keys [c0, c1), -inf outside each
            # query's window; how many keys of each query are inside; and, for a query
            # whose span is not all inside its box, which keys of [max(lo, c0),
            # min(hi, c1)) are (row -> bool mask).
            qb = Q[qi]
            qb *= scale       # the 1/sqrt(d) of the scores, on the block's own copy
            sc = qb @ K[c0:c1].T
            inside = _core.band_fill(sc, lo - c0, hi - c0, -np.inf)
            masks = {}
            for r, i in inexact:
                a, b = max(int(lo[r]), c0), min(int(hi[r]), c1)
                if a < b:
                    hit = _core.match(ucoords[a:b], kp[i])
                    sc[r, a - c0:b - c0][~hit] = -np.inf
                    inside[r] = np.count_nonzero(hit)
                    masks[r] = hit
            return sc, inside, masks

        # Queries in window order, in blocks: one dense (block x span) matmul per block,
        # the cells outside each query's window masked, so neighbouring windows share
        # their keys instead of gathering a (Q, W, d) copy. Rows inside a window's
        # lexicographic span that miss its box (possible when a later component is
        # constrained) are masked out too. A long span is taken in chunks, the softmax
        # accumulated online (running max, sum and weighted sum, rescaled when the max
        # grows); the weights, when asked for, are a second pass over the chunks once
        # the max and the sum are known.
        order = np.argsort(starts, kind="stable")
        any_inexact = not exact.all()
        for b0 in range(0, nq, ATTEND_BLOCK):
            qi = order[b0:b0 + ATTEND_BLOCK]
            lo, hi = starts[qi], ends[qi]
            s0, e0 = int(lo.min()), int(hi.max())
            if e0 <= s0:
                continue
            nb = len(qi)
            step = max(1, SCORES_PER_STEP // nb)
            inexact = [(r, qi[r]) for r in np.flatnonzero(~exact[qi])] if any_inexact else []
            for c0 in range(s0, e0, step):
                yield
                c1 = min(c0 + step, e0)
                sc, inside, _ = scores(qi, lo, hi, inexact, c0, c1)
                new = sc.max(axis=1)
                if c0 != s0:
                    np.maximum(top, new, out=new)
                ref = np.where(np.isfinite(new), new, 0).astype(ft, copy=False)
                sc -= ref[:, None]
                w = np.exp(sc, out=sc)
                if c0 == s0:
                    tot, acc = w.sum(axis=1), w @ V[c0:c1]
                    counts[qi] = inside
                else:
                    grow = np.exp(np.where(np.isfinite(top), top - ref, -np.inf)).astype(
                        ft, copy=False)
                    tot = tot * grow + w.sum(axis=1)
                    acc = acc * grow[:, None] + w @ V[c0:c1]
                    counts[qi] += inside
                top = new
            outputs[qi] = np.divide(acc, tot[:, None], out=np.zeros_like(acc),
                                    where=tot[:, None] > 0)
            if weights_out is None:
                continue
            ref = np.where(np.isfinite(top), top, 0).astype(ft, copy=False)
            norm = np.where(tot > 0, tot, 1).astype(ft, copy=False)
            wq = [np.empty(int(counts[i]), dtype=ft) for i in qi]
            fill = [0] * nb
            for c0 in range(s0, e0, step):
                yield
                c1 = min(c0 + step, e0)
                sc, _, masks = scores(qi, lo, hi, inexact, c0, c1)
                w = np.exp(sc - ref[:, None]) / norm[:, None]
                for r in range(nb):
                    a, b = max(int(lo[r]), c0), min(int(hi[r]), c1)
                    if a >= b:
                        continue
                    wr = w[r, a - c0:b - c0]
                    if r in masks:
                        wr = wr[masks[r]]
                    wq[r][fill[r]:fill[r] + len(wr)] = wr
                    fill[r] += len(wr)
            for r, i in enumerate(qi):
                if r % 16 == 0:
                    yield
                wr = wq[r] if tot[r] > 0 else np.zeros_like(wq[r])
                if top_k is not None and top_k < len(wr):
                    wr = np.partition(wr, len(wr) - top_k)[len(wr) - top_k:] if top_k else \
                        wr[:0]
                weights_out[i] = np.sort(wr)[::-1] if top_k is not None else wr
        res = {"outputs": outputs, "counts": counts}
        if weights_out is not None:
            res["weights"] = weights_out
        return res

    def kg(self, start: np.ndarray, deltas: np.ndarray, hops: int = 1,
           max_frontier: int = 10000) -> list:
        """CKG: multi-hop traversal.

        From each frontier coordinate apply each delta; the scrolls found there are edges.
        An edge whose content is a coordinate (or a list of them) leads there, otherwise
        the edge's own coordinate is the next frontier. Coordinates are visited once;
        each frontier is cut to ``max_frontier`` (in coordinate order).

        :param start: (2, 9) pattern; a concrete one is a single start coordinate, a
            wildcard one starts from every stored scroll matching it.
        :param deltas: (R, 2, 9) int32 relation deltas.
        :returns: the scrolls stored at the final frontier, in coordinate order.
        """
        return run(self.kg_steps(start, deltas, hops, max_frontier))

    def kg_steps(self, start: np.ndarray, deltas: np.ndarray, hops: int = 1,
                 max_frontier: int = 10000, max_visited: int | None = None) -> Steps:
        """Steps of :meth:`kg`: one edge lookup (a pattern's range, or GATHER keys) or
        EDGE_STEP edges followed per step.

        :param max_visited: refuse with :class:`LimitError` once the walk has seen more
            coordinates than this (each one is remembered to be visited once).
        """
        start = _core.check_pattern(start, "start")
        deltas = check_deltas(deltas)
        hops = check_count(hops, "hops", 0, MAX_HOPS)
        max_frontier = check_count(max_frontier, "max_frontier", 1, MAX_FRONTIER)
        if (start[0] == start[1]).all():
            frontier = [_core.pack(start[0])]
        else:
            coords = yield from self._index.query_steps(start, None, max_frontier)
            blob = _core.pack_many(coords)
            frontier = [blob[i:i + 18] for i in range(0, len(blob), 18)]
        visited = set(frontier)
        names = self.names
        nxt: list = []   # new coordinates; cut back to the max_frontier smallest as it grows

        def follow(edges: Any) -> Steps:
            for a in range(0, len(edges), EDGE_STEP):
                if a:
                    yield
                for e in edges[a:a + EDGE_STEP]:
                    found = _edge_targets(e.content, names)
                    for t in (found if found is not None else [e.key]):
                        if t not in visited:
                            visited.add(t)
                            nxt.append(t)
                if max_visited is not None and len(visited) > max_visited:
                    raise LimitError(f"the walk reached more than {max_visited} coordinates: "
                                     "use fewer hops, narrower deltas or a smaller "
                                     "max_frontier", "LIMIT")
                if len(nxt) > 2 * max_frontier:
                    nxt.sort()
                    del nxt[max_frontier:]

        for _ in range(hops):
            if not frontier:
                break
            base = _core.unpack_many(b"".join(frontier))
            nxt = []
            for delta in deltas:
                delta = np.ascontiguousarray(delta)
                # A row the delta takes out of the coordinate space has no edge for this
                # relation; the other rows go on.
                keep = delta_in_range(base, delta)
                if not keep.any():
                    continue
                targets = _core.apply_delta(base if keep.all() else base[keep], delta)
                wild = delta[0] == 2
                if wild.any():
                    # Frontier coordinates differing only in wildcard components give
                    # the same pattern: each distinct one is looked up once.
                    lo, hi = targets.copy(), targets.copy()
                    lo[:, wild] = 0
                    hi[:, wild] = 0xFFFF
                    pats = np.ascontiguousarray(np.concatenate([lo, hi], axis=1))
                    raw = pats.tobytes()
                    looked: set = set()
                    for i in range(len(pats)):
                        if i % GATHER == 0:
                            yield
                        p = raw[36 * i:36 * i + 36]
                        if p in looked:
                            continue
                        looked.add(p)
                        edges = yield from self.range_steps(pats[i].reshape(2, 9),
                                                            limit=max_frontier)
                        yield from follow(edges)
                else:
                    for edges, _ in self._chunks(targets):
                        yield
                        yield from follow(edges)
            yield
            nxt.sort()
            frontier = nxt[:max_frontier]
        yield
        return self._stored(_core.unpack_many(b"".join(frontier)) if frontier else
                            _EMPTY_COORDS)

    # -- names, import/export, health -----------------------------------------------------

    def intern(self, names: list) -> list:
        """Ids of names, interning unknown ones (persisted with the data: with
        ``autocommit`` they are committed before their ids are returned).

        :raises LimitError: the name table is full.
        :raises StorageError: the commit failed (the new names are forgotten again).
        """
        ids = self.names.intern_many(check_name_list(names), True)
        if self.storage is not None and self.autocommit:
            self.commit()
        return ids

    def lookup_names(self, names: list) -> list:
        """Ids of names, None for unknown ones (nothing is interned)."""
        return self.names.intern_many(list(names), False)

    def name_table(self) -> list:
        """The whole name table, index i = id 0xF000 + i ("" for a reclaimed id)."""
        return self.names.to_list()

    def reclaim_names(self) -> list:
        """Free the ids of the names no stored key uses, so a flood of junk names can be
        undone (persisted with the data). A freed id is refused in keys until it is given
        to a name again, which happens only once no never-used id is left; the table's
        epoch changes, telling caches to refresh.

        :returns: how many ids were freed.
        """
        coords = self._index.all_coords()
        named = coords[coords >= NAME_BASE]
        used = set(np.unique(named).tolist()) if named.size else set()
        table = self.names.to_list()
        unused = [NAME_BASE + i for i, n in enumerate(table) if n and NAME_BASE + i not in used]
        freed = self.names.reclaim(unused)
        if self.storage is None:
            self.names.committed()  # nothing to roll back in memory only
        elif freed:
            for ident in unused:
                self.storage.add_names(ident - NAME_BASE, [""])
            if self.autocommit:
                self.commit()
        return len(freed)

    def import_phext(self, text: str, skip_invalid: bool = False) -> int:
        """Store every scroll of a .phext document; returns how many were stored.

        Reading agrees scroll for scroll with the reference ``explode``; every scroll a
        phext file holds is storable, so ``skip_invalid`` has nothing to skip on import
        (it is accepted for symmetry with :meth:`export_phext`).

        :raises InterfaceError: ``text`` is not a str.
        :raises PhextError: a malformed document.
        """
        return run(self.import_phext_steps(text, skip_invalid))

    def import_phext_steps(self, text: str, skip_invalid: bool = False) -> Steps:
        """Steps of :meth:`import_phext`: the document is read in steps, then its
        scrolls are written PUT_STEP per step, in document order. Stopped by a
        :class:`RequestTimeout`, it raises one that says how many were stored (the
        first ones of the document; the rest are not)."""
        text = check_text(text)
        n = 0
        items = None
        try:
            items = yield from phext.parse_phext_steps(text)
            for a in range(0, len(items), PUT_STEP):
                yield
                part = items[a:a + PUT_STEP]
                # parse_phext yields components in 1..999 only: they always fit uint16.
                blob = _core.pack_many(np.array([c for c, _ in part], dtype=np.uint16))
                self._put_many(blob, [t for _, t in part], False)
                n += len(part)
        except RequestTimeout as exc:
            done = "nothing was stored" if items is None else \
                f"the first {n} of its {len(items)} scrolls were stored, the others were not"
            raise RequestTimeout(f"{exc.message}; {done}") from None
        finally:
            if n and self.storage is not None and self.autocommit:
                self.commit()
        return n

    def export_phext(self, pattern: np.ndarray | None = None, skip_invalid: bool = False) -> str:
        """The scrolls matching ``pattern`` (default all) as a .phext document."""
        return run(self.export_phext_steps(pattern, skip_invalid))

    def export_phext_steps(self, pattern: np.ndarray | None = None, skip_invalid: bool = False,
                           max_chars: int | None = None) -> Steps:
        """Steps of :meth:`export_phext`: the keys matching when it starts, then
        PHEXT_STEP scrolls read and formatted per step (one deleted meanwhile is left out).

        :param max_chars: refuse with :class:`LimitError` as soon as the document grows
            past this many characters (a reply that could not be sent anyway).
        """
        pattern = EVERYTHING if pattern is None else _core.check_pattern(pattern)
        hits = yield from self._index.hits_steps(pattern)
        # Pieces are joined 64 at a time as they come, so the last step joins a few
        # large strings (one copy of the document) rather than thousands of small ones.
        joined: list = []
        parts: list = []
        size = 0
        for text in self._phext_pieces(hits, skip_invalid):
            size += len(text)
            if max_chars is not None and size > max_chars:
                raise LimitError(f"the export is over {max_chars} characters: export "
                                 "a narrower pattern at a time", "LIMIT")
            parts.append(text)
            if len(parts) == 64:
                joined.append("".join(parts))
                parts = []
            yield
        return "".join(joined + parts)

    def _phext_pieces(self, hits: Any, skip_invalid: bool) -> Iterator[str]:
        """The phext document of the scrolls a query found, one piece per PHEXT_STEP
        scrolls (their concatenation is the document)."""
        w = phext.PhextWriter(skip_invalid=skip_invalid, names=self.names, keep_skipped=False)
        for part in self._hit_chunks(hits, PHEXT_STEP):
            yield w.write_columns(part.coords, part.contents)

    def pipeline(self, raise_on_error: bool = True):
        """Queue engine calls and run them in order with ``execute()`` (the in-process
        counterpart of a remote pipeline; see :class:`vtpu.backend.EnginePipeline`)."""
        from vtpu.backend import EnginePipeline

        return EnginePipeline(self, raise_on_error)

    def _fmt(self, key: bytes) -> str:
        try:
            return _core.format_coord(_core.unpack(key), self.names)
        except CoordinateError:
            return key.hex()

    def health(self) -> dict:
        """Liveness and a few counts (the prototype's health reply, extended)."""
        return {"status": "ok", "version": __version__, "scrolls": len(self._map),
                "names": len(self.names), "durable": self.storage is not None,
                "uptime_s": time.time() - self._started}

    def stats(self) -> dict:
        """Counts, index sizes and memory."""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"scrolls": len(self._map), "names": len(self.names),
                "index": self._index.sizes(), "last_plan": self._index.last_plan,
                "store": self._map.nbytes(),
                "max_rss_bytes": rss, "pid": os.getpid(),
                "load_seconds": self.load_seconds,
                "durable": self.storage is not None}
