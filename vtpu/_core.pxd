# Declarations of vtpu._core, one .pxd per unit of vtpu/core/: each declares what the
# other units use (constants, enums, structs, extern blocks, inline helpers); the .pxi
# of the same name, included by _core.pyx, implements the unit.
include "core/limits.pxd"
include "core/copy.pxd"
include "core/parse.pxd"
include "core/pack.pxd"
include "core/morton.pxd"
include "core/distance.pxd"
include "core/delta.pxd"
include "core/scan.pxd"
include "core/scroll.pxd"
include "core/store.pxd"
include "core/records.pxd"
include "core/results.pxd"
