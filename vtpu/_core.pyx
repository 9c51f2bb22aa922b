# cython: language_level=3, embedsignature=True, cdivision=True
"""vtpu._core: the compiled coordinate core.

Everything here works on packed coordinates: one coordinate is 9 x uint16, many are a
C-contiguous ``(N, 9) uint16`` numpy array, a pattern is a ``(2, 9) uint16`` array of
inclusive (lo, hi) bounds and a delta is a ``(2, 9) int32`` array of (op, value).
Inner loops run on raw pointers without the GIL; Python objects appear only at the
edges (strings in, strings out, names resolved through a name table).
"""

# One unit per concept, in vtpu/core/; _core.pxd includes their declarations.
include "core/limits.pxi"
include "core/args.pxi"
include "core/parse.pxi"
include "core/format.pxi"
include "core/pack.pxi"
include "core/morton.pxi"
include "core/distance.pxi"
include "core/delta.pxi"
include "core/hash.pxi"
include "core/scan.pxi"
include "core/scroll.pxi"
include "core/records.pxi"
include "core/scalar.pxi"
include "core/store.pxi"
include "core/meter.pxi"
include "core/results.pxi"
