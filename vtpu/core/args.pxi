# ---------------------------------------------------------------------------------------
# Argument checking: every array entering a kernel is checked here, so a wrong dtype,
# shape or layout is an InterfaceError naming the argument, never a crash.
# ---------------------------------------------------------------------------------------

import numpy as np
from vtpu.errors import InterfaceError


def _coords_arg(arr, str what="coords"):
    """Return ``arr`` as a C-contiguous (N, 9) uint16 array or raise InterfaceError."""
    if not isinstance(arr, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (N, 9) uint16 array, got {type(arr).__name__}")
    if arr.dtype != np.uint16:
        raise InterfaceError(f"{what} must have dtype uint16, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != NDIM:
        raise InterfaceError(f"{what} must have shape (N, 9), got {arr.shape}")
    if not arr.flags.c_contiguous:
        raise InterfaceError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    return arr


def _coord_arg(c, str what="coordinate"):
    """Return ``c`` as a (9,) uint16 array or raise InterfaceError."""
    if not isinstance(c, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (9,) uint16 array, got {type(c).__name__}")
    if c.dtype != np.uint16 or c.shape != (NDIM,):
        raise InterfaceError(f"{what} must be a (9,) uint16 array, got {c.dtype} {c.shape}")
    return np.ascontiguousarray(c)


def _pattern_arg(p, str what="pattern"):
    """Return ``p`` as a C-contiguous (2, 9) uint16 array or raise InterfaceError."""
    if not isinstance(p, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (2, 9) uint16 array, got {type(p).__name__}")
    if p.dtype != np.uint16 or p.shape != (2, NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) uint16 array, got {p.dtype} {p.shape}")
    return np.ascontiguousarray(p)


def _delta_arg(d, str what="delta"):
    """Return ``d`` as a C-contiguous (2, 9) int32 array or raise InterfaceError."""
    if not isinstance(d, np.ndarray):
        raise InterfaceError(f"{what} must be a numpy (2, 9) int32 array, got {type(d).__name__}")
    if d.dtype != np.int32 or d.shape != (2, NDIM):
        raise InterfaceError(f"{what} must be a (2, 9) int32 array, got {d.dtype} {d.shape}")
    return np.ascontiguousarray(d)


# The same checks under public names, for callers outside the core that must refuse
# exactly what the kernels refuse (the engine before its shortcuts, the network clients
# before they send).

def check_coord(c, what="coordinate"):
    """A ``(9,)`` uint16 array, contiguous.

    :param c: the argument.
    :param what: its name, for the message.
    :returns: ``c`` (a contiguous copy if it was not).
    :raises InterfaceError: anything else.
    """
    return _coord_arg(c, what)


def check_coords(arr, what="coords"):
    """A C-contiguous ``(N, 9)`` uint16 array.

    :returns: ``arr``.
    :raises InterfaceError: anything else.
    """
    return _coords_arg(arr, what)


def check_pattern(p, what="pattern"):
    """A ``(2, 9)`` uint16 pattern array, contiguous.

    :returns: ``p`` (a contiguous copy if it was not).
    :raises InterfaceError: anything else.
    """
    return _pattern_arg(p, what)
