"""Reading and writing ``.phext`` files (plain hypertext), in pure Python.

A phext file is text in which nine control characters are *dimension breaks* (see
``PHEXT.md``): reading starts at ``1.1.1/1.1.1/1.1.1``, every maximal run of text
without a break byte is the scroll at the current coordinate, and each break adds 1 to
its dimension and resets every lower dimension to 1.

:func:`parse_phext` agrees scroll for scroll with the reference implementation, the
``phext`` package's ``Phext().explode(text)`` (same coordinates, same texts, same order),
including its edge cases:

* 0x1B (escape), ``\\n``, ``\\r`` and every other character are ordinary scroll text;
* empty scrolls (two breaks in a row, leading or trailing breaks) are absent;
* a break never advances a component past 999 (the reference saturates, as libphext-rs
  does): the component stays at 999 while the lower ones still reset to 1. Two runs can
  then land on the same coordinate; as in ``explode`` (a dict) the later text wins and
  the coordinate keeps its first position in the result. Because that silently drops
  text, ``parse_phext(text, strict=True)`` raises :class:`~vtpu.errors.PhextError`
  instead whenever a break would go past 999 (the only deliberate, opt-in divergence).

:func:`format_phext` writes scrolls back so that ``parse_phext(format_phext(items))``
gives the same scrolls. It refuses (:class:`~vtpu.errors.PhextError` naming the
coordinate) whatever a phext file cannot hold, or skips and reports it with
``skip_invalid=True``:

* a component outside 1..999 (a 0 cannot be reached from the start coordinate, so it
  would silently shift the whole series on re-read; vtpu allows up to 61439);
* a name component (ids 0xF000..0xFFFF: phext coordinates are numbers only);
* content that is not ``str`` (bytes, numpy arrays, other msgpack values);
* text containing a break character (0x01, 0x17-0x1A, 0x1C-0x1F): it would split the
  scroll on re-read;
* an empty string: empty scrolls do not exist in phext (it would vanish on re-read);
* a coordinate given twice.

Files: :func:`read_phext` / :func:`write_phext` use UTF-8 and never translate newlines,
so ``\\r\\n`` inside scrolls survives a round trip.

Speed: the break runs are found by one C-level regex; per scroll there is one dict
lookup (break runs are memoised) and a tuple build, so a million scrolls parse or format
in about a second. Both also come in pieces for long documents:
:func:`parse_phext_steps` (a step generator, :mod:`vtpu.steps`) and
:class:`PhextWriter` (a document written chunk by chunk).
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import numpy as np

from ._core import NAME_BASE as NAME_ID_MIN
from .errors import PhextError
from .steps import run

__all__ = [
    "BREAKS",
    "BREAK_CHARS",
    "MAX_COMPONENT",
    "parse_phext",
    "parse_phext_steps",
    "format_phext",
    "PhextWriter",
    "read_phext",
    "write_phext",
    "check_item",
]

# Dimension breaks, library (dimension 0) first, scroll (dimension 8) last.
BREAKS = "\x01\x1f\x1e\x1d\x1c\x1a\x19\x18\x17"
BREAK_CHARS = frozenset(BREAKS)
_BREAK_DIM = {ch: d for d, ch in enumerate(BREAKS)}
MAX_COMPONENT = 999  # the reference saturates here (COORDINATE_MAXIMUM - 1)
ORIGIN = (1, 1, 1, 1, 1, 1, 1, 1, 1)
PARSE_STEP = 4096  # scrolls read per step of parse_phext_steps (about a millisecond)

_BREAK_CLASS = "[\x01\x17-\x1a\x1c-\x1f]"
_RUN_RE = re.compile(f"{_BREAK_CLASS}+")
_BREAK_RE = re.compile(_BREAK_CLASS)


def _run_effect(run: str) -> tuple[int, int, tuple, bool]:
    """Summarise a run of break characters.

    The effect of a run on any coordinate ``c`` is: keep ``c[:d]``, add ``k`` to
    ``c[d]`` (saturating at 999), and set ``c[d+1:]`` to ``tail`` - where ``d`` is the
    highest (smallest-index) dimension in the run, ``k`` the number of its breaks, and
    ``tail`` the result of the rest of the run on an all-ones suffix. That makes the
    effect independent of ``c``, so it can be memoised per distinct run.

    :returns: ``(d, k, tail, saturates_inside)``; the last flag says whether the tail
        itself hit 999 (a lower dimension broken more than 998 times).
    """
    d = min(_BREAK_DIM[ch] for ch in run)
    last = run.rfind(BREAKS[d])
    k = run.count(BREAKS[d])
    tail = [1] * (8 - d)
    saturated = False
    for ch in run[last + 1:]:
        dim = _BREAK_DIM[ch]
        i = dim - d - 1
        if tail[i] < MAX_COMPONENT:
            tail[i] += 1
        else:
            saturated = True
        for j in range(i + 1, 8 - d):
            tail[j] = 1
    return d, k, tuple(tail), saturated


def parse_phext(text: str, *, strict: bool = False) -> list[tuple[tuple[int, ...], str]]:
    """Split a phext document into scrolls.

    :param text: the whole document as ``str`` (read files with :func:`read_phext`, or
        ``open(..., newline="")``, so ``\\r\\n`` stays).
    :param strict: raise instead of saturating when a break would take a component past
        999 (the reference silently folds such scrolls onto earlier coordinates).
    :returns: ``[(coordinate, text), ...]`` with coordinate a tuple of 9 ints in
        1..999, in the order and with the contents of ``phext``'s ``explode``.
    :raises PhextError: ``text`` is not a ``str``; or, with ``strict``, a component
        would pass 999 (the message gives the coordinate and character offset).
    """
    return run(parse_phext_steps(text, strict=strict))


def parse_phext_steps(text: str, *, strict: bool = False):
    """Steps of :func:`parse_phext` (:mod:`vtpu.steps`): PARSE_STEP scrolls per step."""
    if not isinstance(text, str):
        raise PhextError(
            f"phext text must be str, got {type(text).__name__} (decode bytes as UTF-8 first)"
        )
    # The runs of break characters, found one at a time; the texts lie between them.
    runs = _RUN_RE.finditer(text)
    m = next(runs, None)
    out: dict[tuple, str] = {}
    cache: dict[str, tuple] = {}
    coord = ORIGIN
    first = text[:m.start()] if m is not None else text
    if first:
        out[coord] = first
    offset = len(first) if strict else 0
    done = 0
    while m is not None:
        run = m.group()
        after = next(runs, None)
        body = text[m.end():after.start() if after is not None else len(text)]
        eff = cache.get(run)
        if eff is None:
            eff = cache[run] = _run_effect(run)
        d, k, tail, inner_sat = eff
        v = coord[d] + k
        if v > MAX_COMPONENT or inner_sat:
            if strict:
                raise PhextError(
                    f"phext break run at character {offset} takes the "
                    f"{_DIM_NAMES[d]} component of {_fmt(coord)} past {MAX_COMPONENT}; "
                    "the reference saturates there and would merge scrolls"
                )
            if v > MAX_COMPONENT:
                v = MAX_COMPONENT
        coord = coord[:d] + (v,) + tail
        if body:
            out[coord] = body
        if strict:
            offset += len(run) + len(body)
        m = after
        done += 1
        if done % PARSE_STEP == 0:
            yield
    return list(out.items())


_DIM_NAMES = (
    "library", "shelf", "series", "collection", "volume", "book", "chapter", "section",
    "scroll",
)


def _fmt(c: Sequence[int], names=None) -> str:
    """Format a coordinate for a message; name ids become names when ``names`` (a
    NameTable with ``name_of``) knows them."""
    try:
        parts = []
        for v in c:
            v = int(v)
            if v >= NAME_ID_MIN and names is not None:
                try:
                    parts.append(str(names.name_of(v)))
                    continue
                except Exception:  # unknown id: show the number
                    pass
            parts.append(str(v))
        if len(parts) != 9:
            return repr(c)
        return "{}.{}.{}/{}.{}.{}/{}.{}.{}".format(*parts)
    except (TypeError, ValueError):
        return repr(c)


def _as_coord(c) -> tuple[int, ...]:
    """Normalise a coordinate given as 9 ints (tuple/list/ndarray), 18 packed bytes or a
    numeric ``a.b.c/d.e.f/g.h.i`` string into a tuple of 9 Python ints."""
    if isinstance(c, tuple) and len(c) == 9 and all(type(x) is int for x in c):
        return c
    if isinstance(c, (bytes, bytearray, memoryview)):
        b = bytes(c)
        if len(b) != 18:
            raise PhextError(f"packed coordinate must be 18 bytes, got {len(b)}: {b!r}")
        return tuple(int.from_bytes(b[i:i + 2], "big") for i in range(0, 18, 2))
    if isinstance(c, str):
        parts = re.split(r"\s*[/;]\s*|\.", c.strip())
        try:
            t = tuple(int(p) for p in parts)
        except ValueError:
            raise PhextError(
                f"coordinate {c!r} cannot go in a phext file: only numeric components "
                "(names are not representable)"
            ) from None
        if len(t) != 9:
            raise PhextError(f"coordinate {c!r} does not have 9 components")
        return t
    try:
        t = tuple(int(x) for x in c)
    except (TypeError, ValueError):
        raise PhextError(f"not a coordinate: {c!r}") from None
    if len(t) != 9:
        raise PhextError(f"coordinate {c!r} does not have 9 components")
    return t


def check_item(coord, content) -> str | None:
    """Say why a scroll cannot be written to a phext file, or ``None`` if it can.

    :param coord: a tuple of 9 ints.
    :param content: the scroll content.
    :returns: a reason string, or ``None``.
    """
    for i, v in enumerate(coord):
        if v < 1 or v > MAX_COMPONENT:
            if v >= NAME_ID_MIN:
                return (
                    f"component {i} ({_DIM_NAMES[i]}) is a name id (0x{v:04X}); phext "
                    "coordinates are numeric only"
                )
            return (
                f"component {i} ({_DIM_NAMES[i]}) is {v}; phext files hold 1..{MAX_COMPONENT}"
                + (" (a 0 would shift the whole series on re-read)" if v == 0 else "")
            )
    if not isinstance(content, str):
        return f"content is {type(content).__name__}, phext scrolls hold text (str) only"
    if not content:
        return "content is an empty string; empty scrolls do not exist in phext"
    m = _BREAK_RE.search(content)
    if m is not None:
        return (
            f"text contains the break character 0x{ord(m.group()):02X} at index "
            f"{m.start()}; it would split the scroll on re-read"
        )
    return None


def format_phext(items: Iterable, *, skip_invalid: bool = False, return_skipped: bool = False,
                 names=None):
    """Write scrolls as one phext document.

    :param items: ``(coordinate, content)`` pairs. A coordinate is 9 ints (tuple, list
        or ndarray row), 18 packed bytes, or a numeric coordinate string. Items are
        written in coordinate order (sorted here if they are not already).
    :param skip_invalid: skip what a phext file cannot hold (see the module docstring)
        instead of raising.
    :param return_skipped: also return the skipped items.
    :param names: optional name table (``name_of(id)``), only to show name components
        by name in error messages.
    :returns: the document (``str``); with ``return_skipped``, ``(document, skipped)``
        where ``skipped`` is a list of ``(coordinate tuple, content, reason)``.
    :raises PhextError: an item cannot be represented (message names its coordinate
        and why), unless ``skip_invalid``.
    """
    w = PhextWriter(skip_invalid=skip_invalid, names=names)
    coords, texts = w._valid(items)
    # Coordinate order; sort only when needed (exports from the engine arrive sorted).
    n = len(coords)
    if any(coords[i] >= coords[i + 1] for i in range(n - 1)):
        order = sorted(range(n), key=coords.__getitem__)
        coords = [coords[i] for i in order]
        texts = [texts[i] for i in order]
        dups = [i for i in range(1, n) if coords[i] == coords[i - 1]]
        if dups:
            if not skip_invalid:
                raise PhextError(
                    f"scroll {_fmt(coords[dups[0]], names)} appears more than once; a phext file "
                    "holds one scroll per coordinate"
                )
            drop = set(dups)
            for i in dups:
                w.skipped.append((coords[i], texts[i], "duplicate coordinate"))
            w.n_skipped += len(dups)
            coords = [c for i, c in enumerate(coords) if i not in drop]
            texts = [t for i, t in enumerate(texts) if i not in drop]
    doc = w._write_valid(np.array(coords, dtype=np.int64).reshape(-1, 9), texts)
    return (doc, w.skipped) if return_skipped else doc


def _bad_texts(texts: list) -> set:
    """Indexes of the texts the fast pass flags (not str, empty, holding a break): one
    C-level pass and one regex search when none is."""
    if all(type(t) is str for t in texts) and all(texts):
        if _BREAK_RE.search("".join(texts)) is None:
            return set()
        return {i for i, t in enumerate(texts) if _BREAK_RE.search(t)}
    return ({i for i, t in enumerate(texts) if type(t) is not str or not t}
            | {i for i, t in enumerate(texts) if type(t) is str and _BREAK_RE.search(t)})


class PhextWriter:
    """Writes one phext document a chunk of scrolls at a time (an export streamed to a
    file or built in steps): each :meth:`write` returns the text of its scrolls, which
    continues the text of the previous calls. The document is the concatenation.

    The scrolls of all calls must come in ascending coordinate order, each coordinate
    once (as the engine's queries give them); :func:`format_phext` sorts any input.

    :param skip_invalid: skip what a phext file cannot hold instead of raising.
    :param names: optional name table, only to show names in error messages.
    :param keep_skipped: keep what was skipped in ``skipped`` (else only count it: an
        export of many scrolls a phext file cannot hold need not hold them all).
    :ivar skipped: the ``(coordinate, content, reason)`` skipped so far.
    :ivar n_skipped: how many were skipped.
    """

    def __init__(self, *, skip_invalid: bool = False, names=None, keep_skipped: bool = True):
        self.skip_invalid = skip_invalid
        self.names = names
        self.keep_skipped = keep_skipped
        self.skipped: list[tuple] = []
        self.n_skipped = 0
        self._here = ORIGIN
        self._last: tuple | None = None
        self._cache: dict[tuple, str] = {}

    def write(self, items: Iterable) -> str:
        """The text of the next scrolls of the document.

        :param items: ``(coordinate, content)`` pairs (as :func:`format_phext`), after
            every coordinate written before, ascending.
        :returns: their text (``""`` when every one was skipped).
        :raises PhextError: an item cannot be represented (unless ``skip_invalid``), or
            the coordinates are not ascending.
        """
        coords, texts = self._valid(items)
        return self._write_valid(np.array(coords, dtype=np.int64).reshape(-1, 9), texts)

    def write_columns(self, coords, contents: Sequence) -> str:
        """:meth:`write` for scrolls given as columns, as a query result holds them: no
        tuple of Python ints per coordinate, and the checks and the breaks between
        scrolls worked out for all rows at once.

        :param coords: an (M, 9) integer array, ascending, after every coordinate
            written before.
        :param contents: the M contents.
        :returns: their text (``""`` when every one was skipped).
        :raises PhextError: as :meth:`write`; also a shape that is not (M, 9) with M
            contents.
        """
        arr = np.asarray(coords)
        texts = list(contents)
        if arr.ndim != 2 or arr.shape[1] != 9 or arr.dtype.kind not in "iu" \
                or len(arr) != len(texts):
            raise PhextError(f"write_columns needs an (M, 9) integer array and M contents, "
                             f"got {arr.dtype} {arr.shape} and {len(texts)}")
        arr = arr.astype(np.int64)
        bad = set(np.flatnonzero(((arr < 1) | (arr > MAX_COMPONENT)).any(axis=1)).tolist())
        bad |= _bad_texts(texts)
        if bad:
            drop = self._drop(sorted(bad), lambda i: tuple(arr[i].tolist()), texts)
            if drop:
                keep = np.ones(len(texts), dtype=np.bool_)
                keep[sorted(drop)] = False
                arr = arr[keep]
                texts = [t for i, t in enumerate(texts) if i not in drop]
        return self._write_valid(arr, texts)

    def _write_valid(self, arr: np.ndarray, texts: list) -> str:
        """The text of scrolls a phext file can hold (an (M, 9) int64 array and their M
        texts), after every one written before: the order checked and the breaks
        between scrolls worked out for all rows at once."""
        if not len(arr):
            return ""
        here = np.asarray(self._here, dtype=np.int64)
        prev = np.vstack([here[None, :], arr[:-1]])
        neq = arr != prev
        moved = neq.any(axis=1)
        d = neq.argmax(axis=1)
        rows = np.arange(len(arr))
        step = arr[rows, d] - prev[rows, d]
        # Row i against row i - 1 (the first against the last one written, if any: the
        # start position is that one then): ascending where the first differing
        # component grew (equal rows differ nowhere: a step of 0).
        if not (step[1 if self._last is None else 0:] > 0).all():
            raise PhextError("PhextWriter.write needs scrolls in ascending coordinate "
                             "order, each coordinate once (format_phext sorts)")
        out: list = [""] * (2 * len(texts))
        out[1::2] = texts
        cache = self._cache
        # A break at dimension d moves on n there and starts every later dimension at 1;
        # a coordinate past 1 in a later dimension needs breaks there too (its tail).
        tailed = ((arr > 1) & (np.arange(9) > d[:, None])).any(axis=1)
        for i, di, n, mv, tl in zip(rows.tolist(), d.tolist(), step.tolist(),
                                    moved.tolist(), tailed.tolist()):
            if not mv:
                continue   # at the start position: no break before it
            if not tl:
                out[2 * i] = BREAKS[di] * n
                continue
            tail = tuple(arr[i, di + 1:].tolist())
            key = (di, n, tail)
            sep = cache.get(key)
            if sep is None:
                sep = BREAKS[di] * n + "".join(BREAKS[j] * (tail[j - di - 1] - 1)
                                               for j in range(di + 1, 9))
                cache[key] = sep
            out[2 * i] = sep
        self._here = self._last = tuple(arr[-1].tolist())
        return "".join(out)

    def _valid(self, items: Iterable) -> tuple[list, list]:
        """The items' coordinates and texts, without those a phext file cannot hold
        (recorded in ``skipped``, or raised)."""
        coords: list[tuple] = []
        texts: list = []
        for c, content in items:
            coords.append(_as_coord(c))
            texts.append(content)
        # Fast validation: one pass of C-level min/max, one regex search over all texts.
        bad = set()
        for i, c in enumerate(coords):
            if min(c) < 1 or max(c) > MAX_COMPONENT:
                bad.add(i)
        bad |= _bad_texts(texts)
        if bad:
            drop = self._drop(sorted(bad), coords.__getitem__, texts)
            if drop:
                coords = [c for i, c in enumerate(coords) if i not in drop]
                texts = [t for i, t in enumerate(texts) if i not in drop]
        return coords, texts

    def _drop(self, suspects: list, coord_of, texts: list) -> set:
        """Of the rows the fast checks flagged, those a phext file cannot hold: raised,
        or recorded in ``skipped`` and returned (with ``skip_invalid``)."""
        drop = set()
        quiet = self.skip_invalid and not self.keep_skipped
        for i in suspects:
            if quiet and not isinstance(texts[i], str):
                # Only text goes in a phext file, and nothing is kept to say why.
                self.n_skipped += 1
                drop.add(i)
                continue
            c = coord_of(i)
            reason = check_item(c, texts[i])
            if reason is None:  # flagged by the fast pass but fine (a str subclass)
                continue
            if not self.skip_invalid:
                raise PhextError(
                    f"scroll {_fmt(c, self.names)} cannot be written to phext: {reason}"
                )
            if self.keep_skipped:
                self.skipped.append((c, texts[i], reason))
            self.n_skipped += 1
            drop.add(i)
        return drop


def read_phext(path: str | os.PathLike, *, strict: bool = False):
    """Read and parse a ``.phext`` file (UTF-8, newlines kept exactly).

    :param path: the file.
    :param strict: see :func:`parse_phext`.
    :returns: as :func:`parse_phext`.
    :raises PhextError: the file is not valid UTF-8 (message gives the byte offset).
    :raises OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PhextError(
            f"{os.fspath(path)!r} is not UTF-8 (byte offset {exc.start}: {exc.reason})"
        ) from None
    return parse_phext(text, strict=strict)


def write_phext(path: str | os.PathLike, items: Iterable, *, skip_invalid: bool = False,
                names=None):
    """Write scrolls to a ``.phext`` file (UTF-8, newlines written as given).

    The file is written to a temporary name, fsynced and renamed over ``path``, so a
    crash never leaves a half-written export.

    :param path: the file.
    :param items: as :func:`format_phext`.
    :param skip_invalid: as :func:`format_phext`.
    :param names: as :func:`format_phext`.
    :returns: the list of skipped ``(coordinate, content, reason)`` (empty if none).
    :raises PhextError: as :func:`format_phext`, or text not encodable as UTF-8.
    :raises OSError: the file cannot be written.
    """
    doc, skipped = format_phext(items, skip_invalid=skip_invalid, return_skipped=True,
                                names=names)
    try:
        data = doc.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PhextError(f"scroll text is not encodable as UTF-8 ({exc.reason})") from None
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return skipped
