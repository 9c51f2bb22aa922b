"""The wire codec every caller uses: the compiled twin when it is built, else the
reference.

The choice is made once, here, at import (as msgpack's ``__init__`` picks ``_cmsgpack``
or ``fallback``): ``VTPU_PUREPYTHON=1`` forces the pure-Python reference
(:mod:`vtpu.protocol`); otherwise the compiled :mod:`vtpu._cprotocol` is used if it
imports, and the reference if it does not. Both export the names of
:data:`~vtpu.protocol.CODEC_NAMES` with the same semantics, byte for byte; one test
suite runs against each. :data:`IMPLEMENTATION` says which one was picked.

The server, the sync client and the asyncio client import only this module. Besides the
codec functions it re-exports the shared, non-hot names of :mod:`vtpu.protocol`:
constants, the opcode table, message shapes, the content codec and the packed
coordinate forms.
"""
from __future__ import annotations

import os

from .protocol import (  # re-exported: see __all__
    CODEC_NAMES,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_PORT,
    DELTA_SIZE,
    EXT_NDARRAY,
    KEY_SIZE,
    OPS,
    PATTERN_SIZE,
    PROTOCOL_VERSION,
    PUSH,
    STATUS_ERROR,
    STATUS_OK,
    OpSpec,
    Push,
    Reply,
    RequestError,
    batch_idempotent,
    check_blob,
    check_key,
    encode_error,
    encode_frame,
    encode_push,
    Encoded,
    encode_response_items,
    error_pair,
    pack_coord,
    pack_coords,
    pack_delta,
    pack_deltas,
    pack_pattern,
    pack_patterns,
    pack_value,
    packb,
    parse_reply,
    parse_request,
    scroll_to_wire,
    scrolls_to_wire,
    unpack_coord,
    unpack_coords,
    unpack_delta,
    unpack_deltas,
    unpack_pattern,
    unpack_patterns,
    unpack_value,
    wire_to_rows,
    wire_to_scrolls,
)

__all__ = [
    "IMPLEMENTATION",
    *CODEC_NAMES,  # the codec functions, from whichever implementation was picked
    "CODEC_NAMES",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_PORT",
    "DELTA_SIZE",
    "EXT_NDARRAY",
    "KEY_SIZE",
    "OPS",
    "PATTERN_SIZE",
    "PROTOCOL_VERSION",
    "PUSH",
    "STATUS_ERROR",
    "STATUS_OK",
    "OpSpec",
    "Push",
    "Reply",
    "RequestError",
    "batch_idempotent",
    "check_blob",
    "check_key",
    "encode_error",
    "encode_frame",
    "encode_response_items",
    "Encoded",
    "encode_push",
    "error_pair",
    "pack_coord",
    "pack_coords",
    "pack_delta",
    "pack_deltas",
    "pack_pattern",
    "pack_patterns",
    "pack_value",
    "packb",
    "parse_reply",
    "parse_request",
    "scroll_to_wire",
    "scrolls_to_wire",
    "unpack_coord",
    "unpack_coords",
    "unpack_delta",
    "unpack_deltas",
    "unpack_pattern",
    "unpack_patterns",
    "unpack_value",
    "wire_to_rows",
    "wire_to_scrolls",
]

if os.environ.get("VTPU_PUREPYTHON"):
    from . import protocol as _impl
else:
    try:
        from . import _cprotocol as _impl
    except ImportError:
        from . import protocol as _impl

#: ``"cython"`` or ``"python"``: which implementation of the codec functions is in use.
IMPLEMENTATION = "python" if _impl.__name__ == "vtpu.protocol" else "cython"

# The names of protocol.CODEC_NAMES, from the implementation picked above.
FrameDecoder = _impl.FrameDecoder
ReplyBuffer = _impl.ReplyBuffer
unpackb = _impl.unpackb
encode_request = _impl.encode_request
encode_get_requests = _impl.encode_get_requests
encode_response = _impl.encode_response
encode_responses = _impl.encode_responses
encode_get_replies = _impl.encode_get_replies
encode_scrolls = _impl.encode_scrolls
encode_response_scrolls = _impl.encode_response_scrolls
encode_response_contents = _impl.encode_response_contents
decode_scrolls = _impl.decode_scrolls
decode_response_scrolls = _impl.decode_response_scrolls
decode_get_replies = _impl.decode_get_replies
