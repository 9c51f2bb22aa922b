# ---------------------------------------------------------------------------------------
# Deltas
# ---------------------------------------------------------------------------------------

cimport cython
from libc.stdint cimport uint16_t, int32_t, int64_t

import numpy as np
from vtpu.errors import CoordinateError


@cython.boundscheck(False)
@cython.wraparound(False)
def apply_delta(arr, delta):
    """Apply a delta's add/set ops to every row (wildcard ops leave the value as is).

    :param arr: C-contiguous (N, 9) uint16 coordinates.
    :param delta: (2, 9) int32 (op, value) from :func:`parse_delta`.
    :returns: new (N, 9) uint16 array.
    :raises CoordinateError: a result outside 0..61439, or adding to a name component;
        the message names the row and component.
    """
    _coords_arg(arr)
    delta = _delta_arg(delta)
    cdef Py_ssize_t i, n = arr.shape[0]
    out = np.empty((n, NDIM), dtype=np.uint16)
    if n == 0:
        return out
    cdef const uint16_t[:, ::1] a = arr
    cdef const int32_t[:, ::1] dl = delta
    cdef uint16_t[:, ::1] o = out
    cdef int j, badj = -1
    cdef Py_ssize_t badi = -1
    cdef int64_t v
    with nogil:
        for i in range(n):
            for j in range(NDIM):
                if dl[0, j] == DELTA_ADD:
                    if dl[1, j] == 0:
                        o[i, j] = a[i, j]
                        continue
                    v = <int64_t>a[i, j] + dl[1, j]
                    if a[i, j] > MAX_NUMERIC or v < 0 or v > MAX_NUMERIC:
                        badi = i
                        badj = j
                        break
                    o[i, j] = <uint16_t>v
                elif dl[0, j] == DELTA_SET:
                    o[i, j] = <uint16_t>dl[1, j]
                else:
                    o[i, j] = a[i, j]
            if badj >= 0:
                break
    if badj >= 0:
        old = int(arr[badi, badj])
        add = int(delta[1, badj])
        what = ("a name component cannot be added to" if old > MAX_NUMERIC
                else f"{old} {'+' if add >= 0 else '-'} {abs(add)} = {old + add} is outside 0..{MAX_NUMERIC}")
        raise CoordinateError(f"delta leaves the coordinate range at row {badi}, "
                              f"component {badj + 1} ({COMPONENTS[badj]}): {what}")
    return out
