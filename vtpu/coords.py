"""Value types over the compiled core: the name table, Scroll, Coordinate, Pattern, Delta.

The core (:mod:`vtpu._core`) works on packed arrays; this module gives them names and
turns whatever a caller hands the facade (strings, lists, arrays, 18-byte keys) into the
packed forms, with one clear error when that is impossible.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vtpu import _core
from vtpu._core import MAX_NAMES, MAX_NUMERIC, NAME_BASE
from vtpu.errors import CoordinateError, InterfaceError, LimitError

__all__ = [
    "NAME_BASE",
    "MAX_NAMES",
    "MAX_NUMERIC",
    "NameTable",
    "Scroll",
    "Coordinate",
    "Pattern",
    "Delta",
    "to_key",
    "to_keys_blob",
    "to_coords",
    "to_pattern",
    "to_delta",
    "is_pattern_text",
    "NOTHING",
    "EVERYTHING",
    "read_key",
    "read_keys",
    "read_pattern",
    "read_delta",
    "delta_in_range",
]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")


class UnknownName(LookupError):
    """A read named a name the store never interned: it can match nothing.

    Raised by :class:`_ReadNames` while parsing and caught by the ``read_*`` conversions,
    which turn it into "no match". Not a CoordinateError on purpose: the core's batch
    parsers re-raise those with the item's index, and this must pass through unchanged.
    """

    def __init__(self, name: str):
        super().__init__(f"{name!r} is not a name of this store (never interned)")
        self.name = name


class _ReadNames:
    """A name table as reads see it: lookups never intern, unknown names raise.

    The core's parsers call ``lookup(name, intern)``; this view ignores ``intern``.
    """

    __slots__ = ("table",)

    def __init__(self, table: "NameTable"):
        self.table = table

    def lookup(self, name: str, intern: bool = False) -> int:
        """The id of a known name. :raises UnknownName: the store never interned it."""
        ident = self.table.lookup(name, False)
        if ident is None:
            raise UnknownName(name)
        return ident


class NameTable:
    """Names <-> ids (0xF000 + index) for name components of coordinates.

    The store owns the authoritative table; clients hold a cache whose misses go to the
    store through ``resolver``. An id keeps its name until the store reclaims it
    (:meth:`reclaim`: names no stored key uses); a reclaimed id is a free slot (an empty
    entry) and is given to a new name only once no never-used id is left. The
    :attr:`epoch` changes with every reclaim, so a cache taken at another epoch must be
    refreshed before its ids are trusted.

    :param names: initial names, in id order.
    :param resolver: ``resolver(names, intern) -> list[int | None]`` asked for names not
        in the table (client caches); None for the authoritative table.
    :param on_intern: ``on_intern(first_index, names)`` called after new names were
        added by this table itself (the engine persists them).

    Thread safety: lookups are lock-free reads; additions take a lock.
    """

    def __init__(
        self,
        names: Iterable[str] = (),
        resolver: Callable[[list, bool], list] | None = None,
        on_intern: Callable[[int, list], None] | None = None,
    ):
        self._ids: dict[str, int] = {}
        self._names: list[str] = []  # "" marks a free (reclaimed) slot
        self._free: set[int] = set()  # indexes of the free slots
        self._reclaims = 0
        # (index, previous entry) for every slot freed or given again since the owner's
        # last commit, so a failed commit can put them back (see truncate).
        self._changed: list[tuple[int, str]] = []
        self._resolver = resolver
        self._on_intern = on_intern
        self._lock = threading.Lock()
        #: the read-only view for parsing read arguments (see :func:`read_key`)
        self.reader = _ReadNames(self)
        self.extend(list(names))

    @property
    def epoch(self) -> int:
        """Changes with every change of the ids: the number of entries (free slots
        included) plus ``MAX_NAMES`` for every reclaim that freed ids in this process.
        Equal to the number of names while nothing was reclaimed."""
        return len(self._names) + MAX_NAMES * self._reclaims

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._ids

    @staticmethod
    def check_name(name: Any) -> str:
        """Validate a name (``[A-Za-z_][A-Za-z0-9_-]*``, at most 64 characters).

        :returns: the name.
        :raises CoordinateError: the name is not valid.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CoordinateError(
                f"bad name {name!r}: a name is [A-Za-z_][A-Za-z0-9_-]*, at most 64 characters"
            )
        return name

    def extend(self, names: list[str]) -> None:
        """Append names known to hold the next ids (cache sync, loading a store; no
        persistence hook). An empty string is a free slot: it keeps its position."""
        with self._lock:
            for name in names:
                if not name:
                    self._free.add(len(self._names))
                    self._names.append("")
                elif name not in self._ids:
                    self._ids[name] = NAME_BASE + len(self._names)
                    self._names.append(name)

    def is_free(self, ident: int) -> bool:
        """Whether ``ident`` is a reclaimed id not given to a name again."""
        return int(ident) - NAME_BASE in self._free

    @property
    def free(self) -> int:
        """Number of reclaimed ids not given to a name again."""
        return len(self._free)

    def reclaim(self, idents: Iterable[int]) -> list[str]:
        """Free these ids (the store's table: names no stored key uses).

        :returns: the names freed, in id order.
        """
        with self._lock:
            out = []
            for ident in sorted(set(int(i) for i in idents)):
                idx = ident - NAME_BASE
                if 0 <= idx < len(self._names) and self._names[idx]:
                    out.append(self._names[idx])
                    self._changed.append((idx, self._names[idx]))
                    del self._ids[self._names[idx]]
                    self._names[idx] = ""
                    self._free.add(idx)
            if out:
                self._reclaims += 1
            return out

    def truncate(self, n: int) -> None:
        """Forget every name with index >= ``n`` and undo the slots freed or given again
        since :meth:`committed` (the engine undoing a failed commit: those ids were never
        acknowledged to anyone, so they may be given again).

        :param n: the number of names to keep.
        """
        with self._lock:
            for idx, before in reversed(self._changed):
                now = self._names[idx]
                if now:
                    self._ids.pop(now, None)
                self._names[idx] = before
                if before:
                    self._ids[before] = NAME_BASE + idx
                    self._free.discard(idx)
                else:
                    self._free.add(idx)
            self._changed = []
            for name in self._names[n:]:
                self._ids.pop(name, None)
            del self._names[n:]
            self._free = {i for i in self._free if i < n}

    def committed(self) -> None:
        """The owner made every change so far durable: :meth:`truncate` keeps them."""
        self._changed = []

    def lookup(self, name: str, intern: bool = True) -> int | None:
        """The id of ``name``.

        :param name: a valid name.
        :param intern: give an unknown name the next free id (True) or return None.
        :returns: id in 0xF000..0xFFFF, or None (unknown and not interned).
        :raises LimitError: the table is full (4096 names).
        :raises CoordinateError: the name is not valid.
        """
        ident = self._ids.get(name)
        if ident is not None:
            return ident
        return self.intern_many([name], intern)[0]

    def intern_many(self, names: list[str], intern: bool = True) -> list[int | None]:
        """Ids of many names, interning the unknown ones when ``intern``.

        :returns: list of ids (None for unknown names when not interning).
        :raises LimitError: the table would exceed 4096 names.
        """
        missing = [n for n in dict.fromkeys(names) if n not in self._ids]
        if missing:
            for n in missing:
                self.check_name(n)
            if self._resolver is not None:
                ids = self._resolver(missing, intern)
                with self._lock:
                    for n, i in zip(missing, ids):
                        if i is not None:
                            self._ids[n] = i
                            idx = i - NAME_BASE
                            while len(self._names) <= idx:
                                self._names.append("")
                            self._names[idx] = n
            elif intern:
                with self._lock:
                    fresh = [n for n in missing if n not in self._ids]
                    room = MAX_NAMES - len(self._names)
                    if len(fresh) > room + len(self._free):
                        raise LimitError(
                            f"name table full: {MAX_NAMES} names, cannot add {fresh[:3]}"
                        )
                    # Never-used ids first; reclaimed ones only once those run out.
                    first = len(self._names)
                    runs = [(first, fresh[:room])] if room > 0 and fresh else []
                    for n in fresh[:room]:
                        self._ids[n] = NAME_BASE + len(self._names)
                        self._names.append(n)
                    for n in fresh[max(room, 0):]:
                        idx = min(self._free)
                        self._changed.append((idx, ""))
                        self._free.discard(idx)
                        self._ids[n] = NAME_BASE + idx
                        self._names[idx] = n
                        runs.append((idx, [n]))
                if self._on_intern is not None:
                    for at, added in runs:
                        self._on_intern(at, added)
        return [self._ids.get(n) for n in names]

    def check_ids(self, coords: np.ndarray) -> None:
        """Refuse coordinates holding name ids this table never gave out, or reclaimed.

        :param coords: (9,) or (N, 9) uint16 coordinates.
        :raises CoordinateError: a component is an id >= 0xF000 + len(table) (such a key
            could never be formatted or matched by name); the message names the row.
        """
        top = NAME_BASE + len(self._names)
        arr = np.asarray(coords).reshape(-1, 9)
        bad = np.argwhere(arr >= top)
        if len(bad):
            i, j = (int(x) for x in bad[0])
            row = f"row {i} " if arr.shape[0] > 1 else ""
            raise CoordinateError(
                f"{row}component {j + 1} holds name id 0x{int(arr[i, j]):04X}, which is not "
                f"in the name table ({len(self._names)} names): intern the name first")
        if self._free:
            freed = np.isin(arr, np.fromiter(self._free, np.int64, len(self._free)) + NAME_BASE)
            bad = np.argwhere(freed)
            if len(bad):
                i, j = (int(x) for x in bad[0])
                row = f"row {i} " if arr.shape[0] > 1 else ""
                raise CoordinateError(
                    f"{row}component {j + 1} holds name id 0x{int(arr[i, j]):04X}, which was "
                    "reclaimed (no stored key used it): intern the name again and refresh "
                    "the name table")

    def name_of(self, ident: int) -> str:
        """The name with id ``ident``.

        :raises CoordinateError: unknown id.
        """
        idx = int(ident) - NAME_BASE
        if 0 <= idx < len(self._names) and self._names[idx]:
            return self._names[idx]
        if self._resolver is not None and idx >= 0:
            self.refresh()
            if 0 <= idx < len(self._names) and self._names[idx]:
                return self._names[idx]
        raise CoordinateError(f"unknown name id 0x{int(ident):04X}")

    def refresh(self) -> None:
        """Re-read the whole table from the resolver's store (client caches)."""
        if self._resolver is not None and hasattr(self._resolver, "full_table"):
            self.extend_from(self._resolver.full_table())

    def extend_from(self, names: list[str]) -> None:
        """Replace the cache with the store's complete table (empty entries: free)."""
        with self._lock:
            self._names = list(names)
            self._ids = {n: NAME_BASE + i for i, n in enumerate(names) if n}
            self._free = {i for i, n in enumerate(names) if not n}

    def to_list(self) -> list[str]:
        """All names in id order (index i is id 0xF000 + i)."""
        return list(self._names)


# One stored scroll, an extension type of the core (vtpu/core/scroll.pxi): the store and
# the results build it directly; attributes, mapping access, ==, repr and pickling as
# documented there.
Scroll = _core.Scroll


# ---------------------------------------------------------------------------------------
# Conversions used by the facade: anything a caller may pass -> packed forms.
# ---------------------------------------------------------------------------------------

def is_pattern_text(text: str) -> bool:
    """True when a coordinate text contains wildcards or intervals."""
    return "*" in text or "[" in text


def to_key(c: Any, names: NameTable | None = None, intern: bool = True) -> bytes:
    """One coordinate (str, (9,) array, 9 ints, Coordinate or 18-byte key) -> 18-byte key.

    :raises CoordinateError: malformed text or values out of range.
    :raises InterfaceError: a type that is not a coordinate.
    """
    if isinstance(c, str):
        return _core.pack(_core.parse_coord(c, names, intern))
    if isinstance(c, bytes):
        if len(c) != 18:
            raise InterfaceError(f"a packed coordinate is 18 bytes, got {len(c)}")
        return c
    if isinstance(c, Coordinate):
        return c.key
    if isinstance(c, np.ndarray) and c.dtype == np.uint16 and c.shape == (9,):
        return _core.pack(c)
    if isinstance(c, (tuple, list, np.ndarray)) and len(c) == 9:
        return _core.pack(_values_to_array([c], "coordinate")[0])
    raise InterfaceError(f"not a coordinate: {type(c).__name__} {c!r:.80}")


def _values_to_array(rows: Sequence, what: str) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise InterfaceError(f"{what} must have 9 components per row, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        if arr.dtype.kind not in "iu":
            raise InterfaceError(f"{what} must hold integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            bad = np.argwhere((arr < 0) | (arr > 0xFFFF))[0]
            raise CoordinateError(
                f"{what} row {bad[0]} component {bad[1] + 1} = {arr[tuple(bad)]} "
                f"is outside 0..{MAX_NUMERIC}")
        arr = arr.astype(np.uint16)
    return np.ascontiguousarray(arr)


def to_coords(cs: Any, names: NameTable | None = None, intern: bool = True) -> np.ndarray:
    """Many coordinates (list of str/keys, (N, 9) array, or an N*18-byte blob) -> (N, 9) uint16.

    :raises CoordinateError: a malformed coordinate (the message names its index).
    :raises InterfaceError: a type that is not a list/array of coordinates.
    """
    if isinstance(cs, np.ndarray):
        if cs.dtype == np.uint16 and cs.ndim == 2 and cs.shape[1] == 9:
            return np.ascontiguousarray(cs)
        return _values_to_array(cs, "coordinates")
    if isinstance(cs, (bytes, bytearray, memoryview)):
        return _core.unpack_many(bytes(cs))
    if isinstance(cs, str):
        raise InterfaceError("expected a list of coordinates, got one string")
    try:
        cs = list(cs)
    except TypeError:
        raise InterfaceError(f"expected a list or array of coordinates, got {type(cs).__name__}") \
            from None
    if not cs:
        return np.empty((0, 9), dtype=np.uint16)
    if _core.all_text(cs):
        return _core.parse_coords(cs, names, intern)
    return _core.unpack_many(b"".join(to_key(c, names, intern) for c in cs))


def to_keys_blob(cs: Any, names: NameTable | None = None, intern: bool = True) -> bytes:
    """Many coordinates -> one N*18-byte blob (see :func:`to_coords`)."""
    if isinstance(cs, (bytes, bytearray)) and len(cs) % 18 == 0:
        return bytes(cs)
    if type(cs) is list and cs:
        blob = _core.text_keys(cs, names, intern)   # strings straight to packed keys
        if blob is not None:
            return blob
    return _core.pack_many(to_coords(cs, names, intern))


def to_pattern(p: Any, names: NameTable | None = None, intern: bool = True) -> np.ndarray:
    """A pattern (text, Pattern, (2, 9) bounds, or a concrete coordinate) -> (2, 9) uint16.

    :raises CoordinateError: malformed pattern text.
    :raises InterfaceError: not a pattern.
    """
    if isinstance(p, str):
        return _core.parse_pattern(p, names, intern)
    if isinstance(p, Pattern):
        return p.bounds
    if isinstance(p, np.ndarray) and p.dtype == np.uint16 and p.shape == (2, 9):
        return np.ascontiguousarray(p)
    c = _core.unpack(to_key(p, names, intern))
    return np.stack([c, c])


def to_delta(d: Any, names: NameTable | None = None, intern: bool = True) -> np.ndarray:
    """A delta (text, Delta, or (2, 9) int32 ops/values) -> (2, 9) int32.

    :raises CoordinateError: malformed delta text.
    """
    if isinstance(d, str):
        return _core.parse_delta(d, names, intern)
    if isinstance(d, Delta):
        return d.ops
    if isinstance(d, np.ndarray) and d.dtype == np.int32 and d.shape == (2, 9):
        return np.ascontiguousarray(d)
    raise InterfaceError(f"not a delta: {type(d).__name__} {d!r:.80}")


# Reads never intern: a name the store never interned is in no stored coordinate, so a
# read naming it has a known answer ("no match") and must not grow the durable,
# 4096-entry table (nor fail with LimitError once it is full).

#: A pattern that matches nothing (lo > hi in the first component).
NOTHING = np.array([[0xFFFF] + [0] * 8, [0] + [0xFFFF] * 8], dtype=np.uint16)
NOTHING.flags.writeable = False

#: The pattern of every coordinate (names included).
EVERYTHING = np.array([[0] * 9, [0xFFFF] * 9], dtype=np.uint16)
EVERYTHING.flags.writeable = False


def _reader(names: NameTable | None):
    return None if names is None else names.reader


def read_key(c: Any, names: NameTable | None) -> bytes | None:
    """A coordinate argument of a read as an 18-byte key, without interning.

    :returns: the key, or None when the coordinate names a name the store never
        interned (nothing can be stored there).
    :raises CoordinateError: malformed text; :raises InterfaceError: not a coordinate.
    """
    try:
        return to_key(c, _reader(names), False)
    except UnknownName:
        return None


def read_keys(cs: Any, names: NameTable | None) -> tuple[bytes, np.ndarray | None]:
    """Many coordinates of a read as one blob, without interning.

    :returns: ``(blob, known)``: the keys of the coordinates that can exist, and None
        when that is all of them, else a boolean mask over the inputs saying which ones
        the blob holds (the others name never-interned names).
    """
    reader = _reader(names)
    try:
        return to_keys_blob(cs, reader, False), None
    except UnknownName:
        pass
    # Only text can name a name, so ``cs`` is a sequence here: sort it out one by one.
    keys = [read_key(c, names) for c in cs]
    known = np.array([k is not None for k in keys], dtype=bool)
    return b"".join(k for k in keys if k is not None), known


def read_pattern(p: Any, names: NameTable | None) -> np.ndarray:
    """A pattern argument of a read as (2, 9) bounds, without interning.

    :returns: the bounds, or :data:`NOTHING` when a component names a name the store
        never interned (every component must match, so nothing can).
    """
    try:
        return to_pattern(p, _reader(names), False)
    except UnknownName:
        return NOTHING


def read_delta(d: Any, names: NameTable | None) -> np.ndarray | None:
    """A delta argument of a read as (2, 9) int32, without interning.

    :returns: the delta, or None when it sets a component to a name the store never
        interned (every coordinate it leads to is empty).
    """
    try:
        return to_delta(d, _reader(names), False)
    except UnknownName:
        return None


def delta_in_range(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Which rows of ``base`` a delta keeps inside the coordinate space.

    A row drops out when an add takes a numeric component outside 0..61439, or adds a
    non-zero amount to a name component: exactly the rows :func:`apply_delta_any`
    refuses.

    :param base: (N, 9) uint16 coordinates.
    :param delta: (2, 9) int32 delta.
    :returns: (N,) bool mask.
    """
    adds = (delta[0] == 0) & (delta[1] != 0)
    if not adds.any():
        return np.ones(len(base), dtype=bool)
    old = base[:, adds].astype(np.int64)
    new = old + delta[1, adds].astype(np.int64)
    return ((old <= MAX_NUMERIC) & (new >= 0) & (new <= MAX_NUMERIC)).all(axis=1)


def apply_delta_any(base: np.ndarray, delta: np.ndarray):
    """Apply a delta to (N, 9) coordinates.

    :returns: (N, 9) uint16 coordinates, or, when the delta has wildcard components, a
        list of N (2, 9) patterns.
    :raises CoordinateError: a result leaves 0..61439.
    """
    out = _core.apply_delta(base, delta)
    wild = delta[0] == 2
    if not wild.any():
        return out
    pats = []
    for row in out:
        lo = row.copy()
        hi = row.copy()
        lo[wild] = 0
        hi[wild] = 0xFFFF
        pats.append(np.stack([lo, hi]))
    return pats


class Coordinate:
    """A coordinate value: text in, packed forms out.

    ``Coordinate("1.2.3/4.5.6/7.8.9")``; ``.array`` (9,) uint16, ``.key`` 18 bytes,
    ``str()`` the text, ``c + "+0.0.0/+0.0.5/+0.0.0"`` applies a delta.
    """

    __slots__ = ("array", "_names")

    def __init__(self, value: Any, names: NameTable | None = None):
        self.array = _core.unpack(to_key(value, names))
        self.array.flags.writeable = False
        self._names = names

    @property
    def key(self) -> bytes:
        """The 18-byte big-endian packed form."""
        return _core.pack(self.array)

    def __str__(self) -> str:
        return _core.format_coord(self.array, self._names)

    def __repr__(self) -> str:
        return f"Coordinate({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Coordinate):
            return self.key == other.key
        if isinstance(other, str):
            try:
                return self.key == to_key(other, self._names, intern=False)
            except (CoordinateError, InterfaceError):
                return False
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: "Coordinate") -> bool:
        return self.key < other.key

    def __add__(self, delta: Any) -> "Coordinate | Pattern":
        d = to_delta(delta, self._names)
        res = apply_delta_any(self.array.reshape(1, 9), d)
        if isinstance(res, list):
            return Pattern(res[0], self._names)
        return Coordinate(res[0], self._names)


class Pattern:
    """A pattern value: 9 inclusive (lo, hi) bounds (``*``, ``[a:b]``, numbers, names)."""

    __slots__ = ("bounds", "_names")

    def __init__(self, value: Any, names: NameTable | None = None):
        self.bounds = to_pattern(value, names)
        self._names = names

    def matches(self, coords: Any) -> np.ndarray:
        """Boolean mask of the coordinates inside this pattern."""
        return _core.match(to_coords(coords, self._names), self.bounds)

    @property
    def is_concrete(self) -> bool:
        """True when every component is one value (the pattern is a coordinate)."""
        return bool((self.bounds[0] == self.bounds[1]).all())

    def __str__(self) -> str:
        return _core.format_pattern(self.bounds, self._names)

    def __repr__(self) -> str:
        return f"Pattern({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pattern):
            return bool((self.bounds == other.bounds).all())
        return NotImplemented

    __hash__ = None


class Delta:
    """A delta value: per component add, set, set-to-name or wildcard."""

    __slots__ = ("ops", "_names")

    def __init__(self, value: Any, names: NameTable | None = None):
        self.ops = to_delta(value, names)
        self._names = names

    def apply(self, coords: Any):
        """Apply to coordinates; see :func:`apply_delta_any`."""
        return apply_delta_any(to_coords(coords, self._names), self.ops)

    def __repr__(self) -> str:
        return f"Delta({self.ops.tolist()!r})"
