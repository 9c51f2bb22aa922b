# Deltas: the per-component operations a parsed delta holds (parse.pxi writes them,
# delta.pxi applies them).

cdef enum DeltaOp:
    DELTA_ADD = 0
    DELTA_SET = 1
    DELTA_WILD = 2
