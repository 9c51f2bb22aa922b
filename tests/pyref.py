"""Plain-Python reference of every public function of :mod:`vtpu._core`.

Written for obviousness, not speed: ints, tuples, lists, ``str.split`` and ``int()``;
loops instead of vector tricks. Coordinates are tuples of 9 ints, many coordinates are
lists of such tuples, a pattern is a pair ``(lo, hi)`` of 9-tuples (inclusive bounds), a
delta is a pair ``(ops, values)`` of 9-tuples. The tests convert the compiled core's
numpy results with :func:`rows` / :func:`row` before comparing.

The semantics follow DESIGN §2 and the docstrings of ``vtpu/_core.pyx``. Hashes use the
``xxhash`` package as the reference implementation of xxh64.
"""
from __future__ import annotations

import xxhash

from vtpu.errors import CoordinateError, InterfaceError

NDIM = 9
MAX_NUMERIC = 0xEFFF
NAME_BASE = 0xF000
NAME_MAX_LEN = 64
KEY_BYTES = 18
MASK64 = (1 << 64) - 1
COMPONENTS = ("library", "shelf", "series", "collection", "volume", "book",
              "chapter", "section", "scroll")
DELTA_ADD, DELTA_SET, DELTA_WILD = 0, 1, 2

_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + _DIGITS + "-"


# ---------------------------------------------------------------------------------------
# Helpers shared with the tests
# ---------------------------------------------------------------------------------------

class RefNames:
    """A tiny name table with the interface the core expects.

    ``lookup(name, intern)`` returns the id (0xF000 + insertion index), interning unknown
    names when ``intern`` is true and returning None otherwise; ``name_of(id)`` is the
    inverse (KeyError for an unknown id).
    """

    def __init__(self, names=()):
        self._ids = {}
        self._names = []
        for n in names:
            self.lookup(n, True)

    def lookup(self, name, intern):
        if name in self._ids:
            return self._ids[name]
        if not intern:
            return None
        if len(self._names) >= 0x1000:
            raise CoordinateError(f"name table full, cannot intern {name!r}")
        ident = NAME_BASE + len(self._names)
        self._ids[name] = ident
        self._names.append(name)
        return ident

    def name_of(self, ident):
        i = int(ident) - NAME_BASE
        if not 0 <= i < len(self._names):
            raise KeyError(ident)
        return self._names[i]

    def to_list(self):
        return list(self._names)


def row(a):
    """A (9,) array (or any 9-sequence) as a tuple of Python ints."""
    return tuple(int(x) for x in a)


def rows(arr):
    """An (N, 9) array as a list of tuples of Python ints."""
    return [row(r) for r in arr]


def _is_number(text):
    return len(text) > 0 and all(ch in _DIGITS for ch in text)


def _is_name(text):
    return (0 < len(text) and text[0] in _NAME_START
            and all(ch in _NAME_CHARS for ch in text))


def _fail(what, text, msg):
    raise CoordinateError(f"bad {what} {text!r}: {msg}")


def _split9(what, text):
    """Split text into 9 component strings, or raise CoordinateError."""
    if not isinstance(text, str):
        raise CoordinateError(f"{what} must be a str, got {type(text).__name__}")
    body = text.strip(" ")
    if body == "":
        _fail(what, text, "is empty")
    groups = body.replace(";", "/").split("/")
    parts = []
    for g in groups:
        parts.extend(g.strip(" ").split("."))
    if len(groups) != 3 or len(parts) != NDIM:
        _fail(what, text, f"has {len(parts)} components in {len(groups)} groups, expected 9")
    for gi, g in enumerate(groups):
        if len(g.strip(" ").split(".")) != 3:
            _fail(what, text, f"group {gi + 1} does not have 3 components")
    return parts


def _number(what, text, j, part, top=MAX_NUMERIC):
    if not _is_number(part):
        _fail(what, text, f"component {j + 1} ({COMPONENTS[j]}) is not a number")
    v = int(part)
    if v > top:
        _fail(what, text, f"component {j + 1} ({COMPONENTS[j]}) is out of range")
    return v


def _name_id(what, text, j, name, names, intern):
    if len(name) > NAME_MAX_LEN:
        _fail(what, text, f"component {j + 1} ({COMPONENTS[j]}) is a name longer than 64")
    if names is None:
        _fail(what, text, f"component {j + 1} ({COMPONENTS[j]}) needs a name table")
    ident = names.lookup(name, intern)
    if ident is None:
        _fail(what, text, f"component {j + 1} ({COMPONENTS[j]}) is an unknown name")
    return ident


# ---------------------------------------------------------------------------------------
# Parsing and formatting
# ---------------------------------------------------------------------------------------

def parse_coord(s, names=None, intern=True):
    parts = _split9("coordinate", s)
    out = []
    # Check every component's shape before interning any name, as the core does.
    for j, part in enumerate(parts):
        if not (_is_number(part) or _is_name(part)):
            _fail("coordinate", s, f"component {j + 1} ({COMPONENTS[j]}) is malformed")
        if _is_number(part):
            _number("coordinate", s, j, part)
        elif len(part) > NAME_MAX_LEN:
            _name_id("coordinate", s, j, part, names, intern)
    for j, part in enumerate(parts):
        if _is_number(part):
            out.append(int(part))
        else:
            out.append(_name_id("coordinate", s, j, part, names, intern))
    return tuple(out)


def parse_coords(seq, names=None, intern=True):
    if isinstance(seq, str):
        raise InterfaceError("parse_coords takes a sequence of strings")
    return [parse_coord(s, names, intern) for s in seq]


def _component_text(v, j, names):
    if v <= MAX_NUMERIC:
        return str(v)
    if names is None:
        raise CoordinateError(f"component {j + 1} holds a name id, which needs a name table")
    return names.name_of(v)


def _join9(parts):
    return "/".join(".".join(parts[k:k + 3]) for k in (0, 3, 6))


def format_coord(c, names=None):
    if isinstance(c, bytes):
        c = unpack(c)
    return _join9([_component_text(int(v), j, names) for j, v in enumerate(c)])


def format_coords(arr, names=None):
    return [format_coord(c, names) for c in arr]


def _pattern_component(s, j, part, names, intern):
    """(lo, hi) for one pattern component."""
    if part == "*":
        return (0, 0xFFFF)
    if part.startswith("[") and part.endswith("]") and part.count(":") == 1:
        a_text, b_text = part[1:-1].split(":")
        if a_text != "" and not _is_number(a_text):
            _fail("pattern", s, f"component {j + 1} ({COMPONENTS[j]}) is not a valid interval")
        if b_text != "" and not _is_number(b_text):
            _fail("pattern", s, f"component {j + 1} ({COMPONENTS[j]}) is not a valid interval")
        a = int(a_text) if a_text else 0
        b = int(b_text) if b_text else MAX_NUMERIC + 1
        if a > MAX_NUMERIC or b > MAX_NUMERIC + 1:
            _fail("pattern", s, f"component {j + 1} ({COMPONENTS[j]}) is out of range")
        if b <= a:
            _fail("pattern", s, f"component {j + 1} ({COMPONENTS[j]}) is an empty interval")
        return (a, b - 1)
    if _is_number(part):
        v = _number("pattern", s, j, part)
        return (v, v)
    if _is_name(part):
        return None  # resolved after every component was checked
    _fail("pattern", s, f"component {j + 1} ({COMPONENTS[j]}) is malformed")


def parse_pattern(s, names=None, intern=True):
    parts = _split9("pattern", s)
    bounds = [_pattern_component(s, j, part, names, intern) for j, part in enumerate(parts)]
    for j, part in enumerate(parts):
        if bounds[j] is None and len(part) > NAME_MAX_LEN:
            _name_id("pattern", s, j, part, names, intern)
    for j, part in enumerate(parts):
        if bounds[j] is None:
            ident = _name_id("pattern", s, j, part, names, intern)
            bounds[j] = (ident, ident)
    return (tuple(b[0] for b in bounds), tuple(b[1] for b in bounds))


def format_pattern(p, names=None):
    lo, hi = row(p[0]), row(p[1])
    parts = []
    for j in range(NDIM):
        a, b = lo[j], hi[j]
        if a == 0 and b == 0xFFFF:
            parts.append("*")
        elif a == b:
            parts.append(_component_text(a, j, names))
        else:
            if b < a:
                top = str(a)
            elif b >= MAX_NUMERIC:
                top = ""
            else:
                top = str(b + 1)
            parts.append("[" + (str(a) if a else "") + ":" + top + "]")
    return _join9(parts)


def parse_delta(s, names=None, intern=True):
    parts = _split9("delta", s)
    ops, vals, pending = [], [], []
    for j, part in enumerate(parts):
        if part == "*":
            ops.append(DELTA_WILD)
            vals.append(0)
            continue
        sign = part[0] if part[:1] in ("+", "-", "=") else ""
        body = part[len(sign):]
        if _is_number(body):
            v = _number("delta", s, j, body)
            ops.append(DELTA_SET if sign == "=" else DELTA_ADD)
            vals.append(-v if sign == "-" else v)
        elif _is_name(body) and sign != "-":
            if len(body) > NAME_MAX_LEN:
                _fail("delta", s, f"component {j + 1} ({COMPONENTS[j]}) is a name longer than 64")
            ops.append(DELTA_SET)
            vals.append(None)
            pending.append((j, body))
        else:
            _fail("delta", s, f"component {j + 1} ({COMPONENTS[j]}) is malformed")
    for j, body in pending:
        vals[j] = _name_id("delta", s, j, body, names, intern)
    return (tuple(ops), tuple(vals))


def apply_delta(arr, delta):
    ops, vals = row(delta[0]), row(delta[1])
    out = []
    for i, c in enumerate(arr):
        c = row(c)
        new = []
        for j in range(NDIM):
            if ops[j] == DELTA_ADD:
                if vals[j] == 0:
                    new.append(c[j])
                    continue
                v = c[j] + vals[j]
                if c[j] > MAX_NUMERIC or v < 0 or v > MAX_NUMERIC:
                    raise CoordinateError(f"delta leaves the coordinate range at row {i}, "
                                          f"component {j + 1} ({COMPONENTS[j]})")
                new.append(v)
            elif ops[j] == DELTA_SET:
                new.append(vals[j])
            else:
                new.append(c[j])
        out.append(tuple(new))
    return out


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------

def pack(c):
    out = b""
    for v in row(c):
        out += bytes([v >> 8, v & 0xFF])
    return out


def unpack(b):
    b = bytes(b)
    if len(b) != KEY_BYTES:
        raise InterfaceError(f"a packed coordinate is 18 bytes, got {len(b)}")
    return tuple(b[2 * j] * 256 + b[2 * j + 1] for j in range(NDIM))


def pack_many(arr):
    return b"".join(pack(c) for c in arr)


def unpack_many(b):
    b = bytes(b)
    if len(b) % KEY_BYTES:
        raise InterfaceError("packed coordinates need a multiple of 18 bytes")
    return [unpack(b[i:i + KEY_BYTES]) for i in range(0, len(b), KEY_BYTES)]


# ---------------------------------------------------------------------------------------
# Morton (Z-order), bit by bit
# ---------------------------------------------------------------------------------------

def morton_int(c):
    """The 144-bit Z key of one coordinate as a Python int.

    Bits are taken level by level from the most significant (15) down, and within a
    level component 0 first."""
    c = row(c)
    z = 0
    for level in range(15, -1, -1):
        for j in range(NDIM):
            z = (z << 1) | ((c[j] >> level) & 1)
    return z


def demorton_int(z):
    c = [0] * NDIM
    pos = 143
    for level in range(15, -1, -1):
        for j in range(NDIM):
            c[j] |= ((z >> pos) & 1) << level
            pos -= 1
    return tuple(c)


def int_to_words(z):
    """144-bit int as 9 uint16 words, word 0 most significant."""
    return tuple((z >> (16 * (NDIM - 1 - w))) & 0xFFFF for w in range(NDIM))


def words_to_int(words):
    z = 0
    for w in row(words):
        z = (z << 16) | w
    return z


def morton_encode(arr):
    return [int_to_words(morton_int(c)) for c in arr]


def morton_decode(zarr):
    return [demorton_int(words_to_int(z)) for z in zarr]


# ---------------------------------------------------------------------------------------
# BIGMIN / LITMAX: the textbook algorithm (Tropf & Herzog) on 144-bit integers, and a
# brute force over every point of a (small) box to check it against.
# ---------------------------------------------------------------------------------------

def _bit_dim_masks():
    """For each key bit position (0 = least significant), the mask of all bits of the
    same component that are at or below it."""
    masks = []
    for pos in range(144):
        m = 0
        q = pos
        while q >= 0:
            m |= 1 << q
            q -= NDIM
        masks.append(m)
    return masks


_BELOW = _bit_dim_masks()


def _load_1000(v, pos):
    return (v & ~_BELOW[pos]) | (1 << pos)


def _load_0111(v, pos):
    return (v & ~_BELOW[pos]) | (_BELOW[pos] ^ (1 << pos))


def _box_empty(pattern):
    lo, hi = row(pattern[0]), row(pattern[1])
    return any(lo[j] > hi[j] for j in range(NDIM))


def bigmin(z, pattern):
    """Smallest point of the box (by Z key) whose Z key is greater than Z(z); or None."""
    if _box_empty(pattern):
        return None
    zv, zmin, zmax = morton_int(z), morton_int(pattern[0]), morton_int(pattern[1])
    best = None
    for pos in range(143, -1, -1):
        bits = ((zv >> pos) & 1, (zmin >> pos) & 1, (zmax >> pos) & 1)
        if bits == (0, 0, 1):
            best = _load_1000(zmin, pos)
            zmax = _load_0111(zmax, pos)
        elif bits == (0, 1, 1):
            return demorton_int(zmin)
        elif bits == (1, 0, 0):
            break
        elif bits == (1, 0, 1):
            zmin = _load_1000(zmin, pos)
    return None if best is None else demorton_int(best)


def litmax(z, pattern):
    """Largest point of the box (by Z key) whose Z key is less than Z(z); or None."""
    if _box_empty(pattern):
        return None
    zv, zmin, zmax = morton_int(z), morton_int(pattern[0]), morton_int(pattern[1])
    best = None
    for pos in range(143, -1, -1):
        bits = ((zv >> pos) & 1, (zmin >> pos) & 1, (zmax >> pos) & 1)
        if bits == (0, 0, 1):
            zmax = _load_0111(zmax, pos)
        elif bits == (0, 1, 1):
            break
        elif bits == (1, 0, 0):
            return demorton_int(zmax)
        elif bits == (1, 0, 1):
            best = _load_0111(zmax, pos)
            zmin = _load_1000(zmin, pos)
    return None if best is None else demorton_int(best)


def box_points(pattern):
    """Every point of a box, as tuples (only sensible for small boxes)."""
    lo, hi = row(pattern[0]), row(pattern[1])
    pts = [()]
    for j in range(NDIM):
        pts = [p + (v,) for p in pts for v in range(lo[j], hi[j] + 1)]
    return pts


def bigmin_brute(z, pattern):
    zv = morton_int(z)
    keys = [morton_int(p) for p in box_points(pattern)]
    above = [k for k in keys if k > zv]
    return demorton_int(min(above)) if above else None


def litmax_brute(z, pattern):
    zv = morton_int(z)
    keys = [morton_int(p) for p in box_points(pattern)]
    below = [k for k in keys if k < zv]
    return demorton_int(max(below)) if below else None


# ---------------------------------------------------------------------------------------
# Matching, distances, top-k
# ---------------------------------------------------------------------------------------

def in_box(c, pattern):
    lo, hi = pattern
    return all(lo[j] <= c[j] <= hi[j] for j in range(NDIM))


def match(arr, pattern):
    p = (row(pattern[0]), row(pattern[1]))
    return [in_box(row(c), p) for c in arr]


def l1_one(a, b):
    return sum(abs(a[j] - b[j]) for j in range(NDIM))


def hamming_one(a, b):
    return sum(1 for j in range(NDIM) if a[j] != b[j])


def l1(c, arr):
    c = row(c)
    return [l1_one(c, row(r)) for r in arr]


def hamming(c, arr):
    c = row(c)
    return [hamming_one(c, row(r)) for r in arr]


def topk(c, arr, k, metric="l1", mask=None):
    """Sort every candidate by (distance, coordinate, index) and keep the first k.

    Returns ``(idx list, dist list)``."""
    if metric not in ("l1", "hamming"):
        raise InterfaceError(f"bad metric {metric!r}")
    if k < 0:
        raise InterfaceError("k must be >= 0")
    c = row(c)
    dist = l1_one if metric == "l1" else hamming_one
    cands = []
    for i, r in enumerate(arr):
        if mask is not None and not mask[i]:
            continue
        r = row(r)
        cands.append((dist(c, r), r, i))
    cands.sort()
    best = cands[:k]
    return [t[2] for t in best], [t[0] for t in best]


# ---------------------------------------------------------------------------------------
# Hashing and routing
# ---------------------------------------------------------------------------------------

def xxh64(data, seed=0):
    return xxhash.xxh64_intdigest(bytes(data), seed)


def jump_hash(key, n):
    """Lamping & Veach jump consistent hash, with Python ints standing in for uint64."""
    if n < 1:
        raise InterfaceError("number of buckets must be >= 1")
    key &= MASK64
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def jump_hash_many(keys, n):
    return [jump_hash(int(k), n) for k in keys]


def prefix_hashes(arr, level=3, seed=0):
    if not 1 <= level <= NDIM:
        raise InterfaceError("level must be in 1..9")
    return [xxh64(pack(c)[:2 * level], seed) for c in arr]


def route(arr, n, level=3):
    return [jump_hash(h, n) for h in prefix_hashes(arr, level)]


def _moe_bytes(data, n, top_k):
    chosen = []
    for r in range(16 * top_k):
        if len(chosen) == top_k:
            break
        e = jump_hash(xxh64(data, r), n)
        if e not in chosen:
            chosen.append(e)
    cand = 0
    while len(chosen) < top_k:
        if cand not in chosen:
            chosen.append(cand)
        cand += 1
    return chosen


def moe(arr, n, top_k=1):
    """Experts per token: a list of ints (top_k == 1) or a list of top_k-lists."""
    if n < 1 or not 1 <= top_k <= n:
        raise InterfaceError("bad number of experts or top_k")
    out = [_moe_bytes(pack(c), n, top_k) for c in arr]
    return [e[0] for e in out] if top_k == 1 else out


def moe_pattern(pattern, n, top_k=1):
    if n < 1 or not 1 <= top_k <= n:
        raise InterfaceError("bad number of experts or top_k")
    lo, hi = row(pattern[0]), row(pattern[1])
    data = pack(lo) if lo == hi else pack(lo) + pack(hi)
    out = _moe_bytes(data, n, top_k)
    return out[0] if top_k == 1 else out


# ---------------------------------------------------------------------------------------
# Sorted-array index primitives
# ---------------------------------------------------------------------------------------

def lower_bound(sorted_arr, key):
    key = row(key)
    for i, r in enumerate(sorted_arr):
        if row(r) >= key:
            return i
    return len(sorted_arr)


def upper_bound(sorted_arr, key):
    key = row(key)
    for i, r in enumerate(sorted_arr):
        if row(r) > key:
            return i
    return len(sorted_arr)


def lex_scan(sorted_arr, pattern, start=0, limit=-1):
    """Matching row indices from ``start`` on, in row order, at most ``limit``."""
    p = (row(pattern[0]), row(pattern[1]))
    out = []
    for i in range(max(start, 0), len(sorted_arr)):
        if limit >= 0 and len(out) >= limit:
            break
        if in_box(row(sorted_arr[i]), p):
            out.append(i)
    return out


def z_scan(zkeys, zcoords, pattern, limit=-1):
    p = (row(pattern[0]), row(pattern[1]))
    out = []
    for i in range(len(zcoords)):
        if limit >= 0 and len(out) >= limit:
            break
        if in_box(row(zcoords[i]), p):
            out.append(i)
    return out


def lex_sort_order(arr):
    keyed = [(row(r), i) for i, r in enumerate(arr)]
    keyed.sort()
    return [i for _, i in keyed]


def merge_sorted(a_keys, a_keep, b_keys, a_vals=None, b_vals=None):
    """Union of the kept rows of a and all rows of b (b wins on equal keys), sorted.

    Assumes keys are unique within each input. Returns keys, or (keys, vals)."""
    merged = {}
    for i, k in enumerate(a_keys):
        if a_keep is None or a_keep[i]:
            merged[row(k)] = row(a_vals[i]) if a_vals is not None else None
    for i, k in enumerate(b_keys):
        merged[row(k)] = row(b_vals[i]) if b_vals is not None else None
    keys = sorted(merged)
    if a_vals is None:
        return keys
    return keys, [merged[k] for k in keys]


# ---------------------------------------------------------------------------------------
# Instructions over a store: CKG and CATTEND (DESIGN §3, PROTOCOL §5)
#
# A store is a dict {coordinate tuple: content}. Patterns and deltas are as above
# ((lo, hi) and (ops, values) pairs of 9-tuples); a query is ("coord", tuple) or
# ("vector", list of floats). Results use tuples and lists of Python floats.
# ---------------------------------------------------------------------------------------

class _UnknownName(Exception):
    """A name the store never interned: a coordinate naming it can hold nothing."""


class ReadNames:
    """A name table for reads: known names resolve, unknown ones raise _UnknownName."""

    def __init__(self, names):
        self.names = names

    def lookup(self, name, intern):
        ident = self.names.lookup(name, False)
        if ident is None:
            raise _UnknownName(name)
        return ident


def matching(store, pattern):
    """Stored coordinates in the pattern, in coordinate order."""
    return sorted(c for c in store if in_box(c, pattern))


def delta_one(c, delta):
    """One coordinate plus a delta: a coordinate, a pattern (wildcards), or None when an
    add leaves 0..61439 or changes a name component (DESIGN §2: never clamped)."""
    ops, vals = delta
    lo, hi = [], []
    for j in range(NDIM):
        if ops[j] == DELTA_ADD:
            v = c[j] + vals[j]
            if vals[j] != 0 and (c[j] > MAX_NUMERIC or not 0 <= v <= MAX_NUMERIC):
                return None
            lo.append(c[j] if vals[j] == 0 else v)
            hi.append(lo[-1])
        elif ops[j] == DELTA_SET:
            lo.append(vals[j])
            hi.append(vals[j])
        else:
            lo.append(0)
            hi.append(0xFFFF)
    return (tuple(lo), tuple(hi)) if DELTA_WILD in ops else tuple(lo)


def _edge_coord(item, names):
    """("ok", coordinate), ("none",) for a coordinate naming an unknown name, or None
    when the item is not a coordinate (PROTOCOL §5 KG: text, key or a (9,) uint16 row)."""
    import numpy as np

    if isinstance(item, str):
        try:
            return ("ok", parse_coord(item.strip(), ReadNames(names), False))
        except _UnknownName:
            return ("none",)
        except CoordinateError:
            return None
    if isinstance(item, bytes):
        return ("ok", unpack(item)) if len(item) == KEY_BYTES else None
    if isinstance(item, np.ndarray) and item.dtype == np.uint16 and item.shape == (NDIM,):
        return ("ok", row(item))
    return None


def edge_targets(content, names):
    """Coordinates an edge's content points at, or None when it is no pointer."""
    import numpy as np

    if isinstance(content, np.ndarray) and content.dtype == np.uint16 and content.ndim == 2 \
            and content.shape[1] == NDIM:
        return [row(r) for r in content] or None
    items = content if isinstance(content, list) else [content]
    if not items:
        return None
    out = []
    for item in items:
        got = _edge_coord(item, names)
        if got is None:
            return None
        if got[0] == "ok":
            out.append(got[1])
    return out


def kg(store, start, deltas, hops=1, max_frontier=10000, names=None):
    """CKG: multi-hop traversal; returns the final frontier's stored coordinates."""
    lo, hi = start
    frontier = [lo] if lo == hi else matching(store, start)[:max_frontier]
    visited = set(frontier)
    for _ in range(hops):
        if not frontier:
            break
        found = set()
        for c in frontier:
            for d in deltas:
                t = delta_one(c, d)
                if t is None:
                    continue
                if isinstance(t[0], tuple):      # a pattern: its first max_frontier scrolls
                    edges = matching(store, t)[:max_frontier]
                else:
                    edges = [t] if t in store else []
                for e in edges:
                    targets = edge_targets(store[e], names)
                    for x in (targets if targets is not None else [e]):
                        if x not in visited:
                            visited.add(x)
                            found.add(x)
        frontier = sorted(found)[:max_frontier]
    return [c for c in sorted(frontier) if c in store]


def as_vector(content):
    """A content as a list of floats when it is a 1-d numeric vector, else None."""
    import numpy as np

    if isinstance(content, np.ndarray):
        if content.ndim == 1 and content.dtype.kind in "biuf":
            return [float(x) for x in content]
        return None
    if isinstance(content, list) and content and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in content):
        return [float(x) for x in content]
    return None


def _softmax(scores):
    import math

    top = max(scores)
    e = [math.exp(s - top) for s in scores]
    total = sum(e)
    return [x / total for x in e]


def _value_rows(store, keys, values):
    """Value vectors, one per key, for ``values`` = ("delta", d) or ("pattern", p)."""
    if values[0] == "delta":
        coords = []
        for k in keys:
            t = delta_one(k, values[1])
            if t is None:
                raise CoordinateError("a values delta leaves the coordinate range")
            if isinstance(t[0], tuple):
                raise InterfaceError("a values delta must not contain wildcards")
            coords.append(t)
    else:
        coords = matching(store, values[1])
        if len(coords) != len(keys):
            raise InterfaceError("values give another number of scrolls than keys")
    vecs = []
    for c in coords:
        v = as_vector(store[c]) if c in store else None
        if v is None:
            raise InterfaceError(f"no value vector at {c}")
        vecs.append(v)
    if len({len(v) for v in vecs}) > 1:
        raise InterfaceError("value vectors of different sizes")
    return vecs


def attend(store, query, key_pattern, top_k=None, values=None, mode="auto"):
    """CATTEND: scores, weights and output of one query over the matching scrolls.

    :returns: dict ``keys``, ``scores``, ``weights``, ``contents`` (top-k by score, ties
        in coordinate order), ``output`` (None without values or matches), ``n``, ``mode``.
    """
    import math

    from vtpu.errors import NotFoundError

    if query[0] == "coord":
        qcoord = query[1]
        if qcoord not in store and mode != "distance":
            raise NotFoundError(f"no scroll at {qcoord}")
        qvec = as_vector(store[qcoord]) if qcoord in store else None
    else:
        qcoord, qvec = None, list(query[1])
    keys = matching(store, key_pattern)
    kvecs = [as_vector(store[k]) for k in keys]
    if mode == "auto":
        if qvec is None and any(v is not None for v in kvecs):
            raise InterfaceError("a text query over vector keys")
        mode = "dot" if qvec is not None else "distance"
    if mode == "dot":
        if qvec is None or any(v is None or len(v) != len(qvec) for v in kvecs):
            raise InterfaceError("query and keys are not vectors of one size")
        d = len(qvec)
        scores = [sum(a * b for a, b in zip(qvec, k)) / math.sqrt(d) for k in kvecs]
        weights = _softmax(scores) if scores else []
    else:
        if qcoord is None:
            raise InterfaceError("distance mode needs a query coordinate")
        scores = [1.0 / (1.0 + l1_one(qcoord, k)) for k in keys]
        total = sum(scores)
        weights = [s / total for s in scores]
    output = None
    if values is not None and keys:
        vecs = _value_rows(store, keys, values)
        output = [sum(w * v[i] for w, v in zip(weights, vecs)) for i in range(len(vecs[0]))]
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], keys[i]))
    if top_k is not None:
        order = order[:top_k]
    return {"keys": [keys[i] for i in order], "scores": [scores[i] for i in order],
            "weights": [weights[i] for i in order], "contents": [store[keys[i]] for i in order],
            "output": output, "n": len(keys), "mode": mode}


def attend_many(store, queries, patterns, values=None):
    """Batched CATTEND: query i (a vector) attends with softmax over its own pattern.

    :param values: None (keys are the values) or a delta from each key to its value.
    :returns: ``(outputs, counts)``: a list of Q output lists (empty windows: zeros of
        the value size) and a list of Q counts.
    """
    import math

    d = len(queries[0])
    outputs, counts = [], []
    windows = []
    for p in patterns:              # every key of every window first, then the values
        keys = matching(store, p)
        kvecs = [as_vector(store[k]) for k in keys]
        if any(v is None or len(v) != d for v in kvecs):
            raise InterfaceError(f"a key in the window {p} is no vector of size {d}")
        windows.append((keys, kvecs))
    value_of = {}
    if values is not None:          # the value of every key inside some window
        inside = sorted({k for keys, _ in windows for k in keys})
        value_of = dict(zip(inside, _value_rows(store, inside, ("delta", values))))
    rows_of = []
    for q, (keys, kvecs) in zip(queries, windows):
        vecs = kvecs if values is None else [value_of[k] for k in keys]
        rows_of.append((q, kvecs, vecs))
    sizes = {len(v) for _, _, vecs in rows_of for v in vecs}
    if len(sizes) > 1:
        raise InterfaceError("value vectors of different sizes")
    dv = sizes.pop() if sizes else d
    for q, kvecs, vecs in rows_of:
        counts.append(len(kvecs))
        if not kvecs:
            outputs.append([0.0] * dv)
            continue
        w = _softmax([sum(a * b for a, b in zip(q, k)) / math.sqrt(d) for k in kvecs])
        outputs.append([sum(wi * v[i] for wi, v in zip(w, vecs)) for i in range(dv)])
    return outputs, counts
