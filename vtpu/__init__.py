"""vtpu: a coordinate-addressed memory for ML pipelines and agents.

``vtpu.connect("mem://")`` gives an in-process store; ``vtpu.connect("vtpu://host:port")``
a client of a vtpu server; ``vtpu.connect("file://DIR")`` a durable in-process store.
Every client has the ten instructions as methods: cget, cput, crange, cdelta, cnearest,
chier, croute, cattend, cmoe, ckg (plus cdel, batched ``*_many`` variants, health, stats).
"""
from vtpu._version import __version__
from vtpu.client import AttentionRecord, AttentionResult, Client, connect, vTPU
from vtpu.coords import Coordinate, Delta, NameTable, Pattern, Scroll
from vtpu.results import Scrolls
from vtpu.errors import (
    AuthError,
    ConnectionError,
    CoordinateError,
    InterfaceError,
    InternalError,
    LimitError,
    NotFoundError,
    PhextError,
    ProtocolError,
    RequestTimeout,
    ServerError,
    StorageError,
    TimeoutError,
    VersionConflict,
    VTPUError,
)

__all__ = [
    "__version__", "connect", "vTPU", "Client", "Scroll", "Scrolls", "Coordinate", "Pattern",
    "Delta",
    "NameTable", "AttentionRecord", "AttentionResult",
    "VTPUError", "CoordinateError", "InterfaceError", "ProtocolError", "ConnectionError",
    "TimeoutError", "ServerError", "AuthError", "VersionConflict", "NotFoundError",
    "LimitError", "RequestTimeout", "InternalError", "StorageError", "PhextError",
]
