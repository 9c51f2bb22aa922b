"""Query results as columns.

A CRANGE, GET_MANY, CHIER DOWN or CNEAREST result is a :class:`Scrolls`: a read-only
sequence of :class:`~vtpu.coords.Scroll` (or None, for a key of a batched read where
nothing is stored) held as columns by the compiled core, so that no Python object exists
per result until one is read:

- ``len(r)``, ``r[i]`` (a Scroll made now; cheap), ``r[a:b:c]`` and ``r.take(indices)``
  (another Scrolls), iteration, ``in``, ``index``, ``count``, and ``==`` with a list of
  Scrolls (or another Scrolls) behave as for a list;
- whole columns come out in one core call each: ``r.keys`` (the N*18-byte packed keys),
  ``r.coords`` ((N, 9) uint16), ``r.coordinates`` (N strings, names resolved),
  ``r.contents``, ``r.versions`` (int64), ``r.created_at`` / ``r.updated_at`` (float64)
  and ``r.found`` (bool);
- ``r.contents`` is one stacked ``(N, *shape)`` array when every item holds a numpy
  array of the same dtype and shape (the common case of embeddings), otherwise a list.

A result is a snapshot: writes to the store after it was made do not change it.
"""
from __future__ import annotations

from collections.abc import Sequence

from vtpu._core import Scrolls

__all__ = ["Scrolls"]

Sequence.register(Scrolls)
