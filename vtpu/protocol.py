"""The vtpu wire protocol: the readable reference codec (sans-IO).

Nothing in this module touches a socket. It turns Python values into frames and bytes
back into values, and knows the per-opcode argument and result shapes. The language-
neutral specification is ``protocol/PROTOCOL.md``; the golden vectors in
``protocol/vectors/`` pin every shape and are checked by ``tests/test_protocol.py``.

Callers import :mod:`vtpu.wire`, never this module: ``wire`` picks, once at import, this
reference or its compiled twin ``vtpu._cprotocol``, which has the same names and the
same semantics (byte for byte) for the codec functions listed in
:data:`CODEC_NAMES`, and re-exports the shared names (constants, the opcode table, the
packed coordinate forms) from here. One test suite runs against both.

Frame
    4-byte big-endian body length, then exactly one msgpack object (the body).
    Bodies larger than ``max_frame_size`` are refused on both encode and decode.
Request   ``[msgid, opcode, args]``              (msgid: uint >= 1, opcode: str, args: array)
Response  ``[msgid, 0, result]`` or ``[msgid, 1, [code, message]]``
Push      ``[0, "push", kind, payload]``          (msgid 0 is never used by requests)

Content values use msgpack with ext type 1 for numpy arrays (:func:`pack_value`).
Coordinates travel packed: one coordinate = 18 bytes big-endian, many = one N*18 blob,
a pattern = 36 bytes (lo || hi), a delta = 72 bytes (9 int32 ops || 9 int32 values).
"""
from __future__ import annotations

import struct
import threading
from typing import Any, Callable, Iterator, NamedTuple

import msgpack
import numpy as np

from .coords import Scroll
from ._core import KEY_BYTES as KEY_SIZE
from ._core import (KIND_ARRAY, KIND_BYTES, KIND_DEAD, KIND_OBJECT, KIND_PACKED,
                    KIND_STR, Scrolls)
from .errors import (
    FrameTooLarge,
    InterfaceError,
    LimitError,
    ProtocolError,
    VTPUError,
    error_code,
)

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_PORT",
    "STATUS_OK",
    "STATUS_ERROR",
    "PUSH",
    "EXT_NDARRAY",
    "KEY_SIZE",
    "OpSpec",
    "OPS",
    "pack_value",
    "unpack_value",
    "packb",
    "unpackb",
    "encode_frame",
    "encode_request",
    "encode_response",
    "encode_error",
    "encode_response_items",
    "Encoded",
    "encode_push",
    "encode_get_requests",
    "encode_responses",
    "encode_get_replies",
    "encode_scrolls",
    "encode_response_scrolls",
    "encode_response_contents",
    "decode_scrolls",
    "decode_response_scrolls",
    "decode_get_replies",
    "FrameDecoder",
    "ReplyBuffer",
    "RequestError",
    "refuse_big_batch",
    "CODEC_NAMES",
    "parse_request",
    "parse_reply",
    "Reply",
    "Push",
    "pack_coords",
    "unpack_coords",
    "pack_coord",
    "unpack_coord",
    "pack_pattern",
    "unpack_pattern",
    "pack_patterns",
    "unpack_patterns",
    "pack_delta",
    "unpack_delta",
    "pack_deltas",
    "unpack_deltas",
    "check_key",
    "check_blob",
    "scrolls_to_wire",
    "wire_to_rows",
    "wire_to_scrolls",
    "scroll_to_wire",
]

#: The codec functions that :mod:`vtpu._cprotocol` implements again, compiled, with the
#: same semantics; :mod:`vtpu.wire` takes these from one or the other.
CODEC_NAMES = (
    "unpackb",
    "encode_request",
    "encode_get_requests",
    "encode_response",
    "encode_responses",
    "encode_get_replies",
    "encode_scrolls",
    "encode_response_scrolls",
    "encode_response_contents",
    "decode_scrolls",
    "decode_response_scrolls",
    "decode_get_replies",
    "FrameDecoder",
    "ReplyBuffer",
)

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
DEFAULT_PORT = 1337
STATUS_OK = 0
STATUS_ERROR = 1
PUSH = "push"
EXT_NDARRAY = 1
PATTERN_SIZE = 2 * KEY_SIZE
DELTA_SIZE = 72  # 2 x 9 x int32 big-endian

_LEN = struct.Struct(">I")
_BE_U16 = np.dtype(">u2")
_BE_I32 = np.dtype(">i4")


# ---------------------------------------------------------------------------------------
# Content codec: msgpack + ext type 1 for numpy arrays.


def _default(obj: Any) -> Any:
    # msgpack calls this for every type it does not know; keep the common cases first.
    if isinstance(obj, np.ndarray):
        return _ndarray_ext(obj)
    if isinstance(obj, np.generic):
        # numpy scalars (np.float32(1.5), np.int64(3)) travel as plain numbers.
        return obj.item()
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise InterfaceError(f"cannot encode a value of type {type(obj).__name__!r}")


def _ndarray_ext(a: np.ndarray) -> msgpack.ExtType:
    dt = a.dtype
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise InterfaceError(
            f"cannot encode a numpy array of dtype {dt!r}: only plain numeric/bytes dtypes"
        )
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    try:
        inner = _tls.inner
    except AttributeError:
        # A second packer: this runs inside the outer packer's default hook.
        inner = _tls.inner = msgpack.Packer(use_bin_type=True)
    payload = inner.pack([dt.str, list(a.shape), a.tobytes()])
    return msgpack.ExtType(EXT_NDARRAY, payload)


_DTYPES: dict = {}  # dtype string -> np.dtype, for strings that passed the checks


def _dtype(dtype_str: Any) -> np.dtype:
    dt = _DTYPES.get(dtype_str)
    if dt is None:
        if type(dtype_str) is not str:
            raise ValueError(f"dtype must be a string, got {dtype_str!r}")
        dt = np.dtype(dtype_str)
        if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
            raise ValueError(f"dtype {dtype_str!r} not allowed")
        if len(_DTYPES) < 256:
            _DTYPES[dtype_str] = dt
    return dt


def _parse_ndarray_header(data: bytes) -> tuple | None:
    """Fast path for the common encodings: (dtype str, shape, offset of raw, raw length)."""
    if len(data) < 4 or data[0] != 0x93 or not 0xA0 <= data[1] <= 0xBF:
        return None
    pos = 2 + (data[1] & 0x1F)
    dts = data[2:pos].decode("ascii")
    h = data[pos]
    if not 0x90 <= h <= 0x9F:
        return None
    pos += 1
    shape = []
    for _ in range(h & 0x0F):
        b = data[pos]
        if b < 0x80:
            shape.append(b)
            pos += 1
        elif b == 0xCC:
            shape.append(data[pos + 1])
            pos += 2
        elif b == 0xCD:
            shape.append(int.from_bytes(data[pos + 1 : pos + 3], "big"))
            pos += 3
        elif b == 0xCE:
            shape.append(int.from_bytes(data[pos + 1 : pos + 5], "big"))
            pos += 5
        else:
            return None
    b = data[pos]
    if b == 0xC4:
        n, pos = data[pos + 1], pos + 2
    elif b == 0xC5:
        n, pos = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    elif b == 0xC6:
        n, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
    else:
        return None
    if pos + n != len(data):
        raise ValueError("ndarray payload has trailing or missing bytes")
    return dts, shape, pos, n


def _decode_ndarray(data: bytes) -> np.ndarray:
    try:
        head = _parse_ndarray_header(data)
        if head is None:
            # Any other valid msgpack encoding of [dtype, shape, raw] (wider ints...).
            dtype_str, shape, raw = msgpack.unpackb(data, raw=False, use_list=True)
            if type(raw) is not bytes or type(shape) is not list:
                raise ValueError("expected [dtype str, shape array, raw bin]")
            data, offset, nbytes = raw, 0, len(raw)
        else:
            dtype_str, shape, offset, nbytes = head
        dt = _dtype(dtype_str)
        count = 1
        for n in shape:
            if type(n) is not int or n < 0:
                raise ValueError(f"bad shape {shape!r}")
            count *= n
        if count * dt.itemsize != nbytes:
            raise ValueError(f"{nbytes} bytes do not hold shape {shape} of dtype {dtype_str}")
        # Zero-copy view on the received bytes: arrays read from the store are read-only,
        # which also means a caller cannot mutate a value another caller holds.
        return np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(tuple(shape))
    except ProtocolError:
        raise
    except Exception as exc:  # any malformed payload is the sender's protocol error
        raise ProtocolError(f"malformed ndarray ext payload: {exc}") from None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _decode_ndarray(data)
    raise ProtocolError(f"unknown msgpack ext type {code}")


_packer_kw = dict(use_bin_type=True, default=_default, datetime=False)
# One reusable Packer per thread: msgpack.packb() builds a Packer and parses keyword
# arguments on every call, which costs more than packing a small request itself.
_tls = threading.local()


def packb(obj: Any) -> bytes:
    """Encode one value as msgpack with the vtpu extensions (ndarray ext type 1).

    :param obj: a msgpack-able value; numpy arrays become ext type 1, numpy scalars plain
        numbers, tuples arrays.
    :returns: the msgpack bytes.
    :raises InterfaceError: for a value msgpack cannot hold (object dtype, a set, ...).
    """
    try:
        pk = _tls.packer
    except AttributeError:
        pk = _tls.packer = msgpack.Packer(**_packer_kw)
    try:
        return pk.pack(obj)
    except BaseException as exc:
        # A failed pack may leave partial output in the packer: never reuse it.
        _tls.packer = msgpack.Packer(**_packer_kw)
        if isinstance(exc, InterfaceError):
            raise
        if isinstance(exc, (TypeError, ValueError, OverflowError)):
            raise InterfaceError(f"cannot encode value: {exc}") from None
        raise


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one msgpack object with the vtpu extensions.

    :param data: the encoded bytes (must hold exactly one object).
    :returns: the decoded value (arrays as lists, str as str, bin as bytes).
    :raises ProtocolError: on malformed input, trailing bytes or an unknown ext type.
    """
    try:
        return msgpack.unpackb(
            data, raw=False, ext_hook=_ext_hook, strict_map_key=False, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError ...
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None


def pack_value(obj: Any) -> bytes:
    """Encode a scroll content (the storage and wire content codec).

    str stays str, bytes stay bytes, numpy arrays keep dtype and shape (ext type 1).

    :param obj: the content.
    :returns: msgpack bytes.
    :raises InterfaceError: if the value cannot be encoded.
    """
    return packb(obj)


def unpack_value(data: bytes | bytearray | memoryview) -> Any:
    """Decode a content encoded by :func:`pack_value`.

    :param data: bytes from :func:`pack_value`.
    :returns: the content; numpy arrays come back read-only.
    :raises ProtocolError: if the bytes are not one valid value.
    """
    return unpackb(data)


# ---------------------------------------------------------------------------------------
# Frames


def encode_frame(obj: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode one message as a frame (4-byte big-endian length + msgpack body).

    :param obj: the message.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the body is larger than ``max_frame_size`` (nothing was sent,
        the connection stays usable).
    :raises InterfaceError: if the message holds a value msgpack cannot encode.
    """
    return _frame(packb(obj), max_frame_size)


def _frame(body: bytes, max_frame_size: int) -> bytes:
    """The frame of an encoded body; LimitError if the body is too large."""
    n = len(body)
    if n > max_frame_size:
        raise LimitError(
            f"frame body of {n} bytes exceeds max_frame_size {max_frame_size}", "LIMIT"
        )
    return _LEN.pack(n) + body


def encode_request(
    msgid: int, opcode: str, args: list, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Encode a request frame ``[msgid, opcode, args]``.

    :param msgid: request id, 1 .. 2**32-1, unique among the requests in flight.
    :param opcode: an opcode name from :data:`OPS`.
    :param args: the positional argument array for the opcode.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    """
    return encode_frame([msgid, opcode, args], max_frame_size)


def encode_response(msgid: int, result: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode a success response frame ``[msgid, 0, result]``.

    :raises LimitError: if the frame is too large.
    """
    return encode_frame([msgid, STATUS_OK, result], max_frame_size)


class Encoded:
    """The msgpack bytes of one value, to be written as they are (see
    :func:`encode_response_items`). It holds the bytes it is given (a marker around
    them, not a copy: a BATCH holds megabytes of them).

    :ivar data: the bytes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Encoded({len(self.data)} bytes)"


def encode_response_items(msgid: int, items: list,
                          max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode a success response frame ``[msgid, 0, [item, ...]]`` whose array items are
    values or, as :class:`Encoded`, msgpack bytes made earlier (BATCH encodes a column
    result as soon as its operation is done: it holds the reply's bytes rather than a
    Python object per scroll while the other operations run).

    :param msgid: the request id.
    :param items: the array items, in order: values, or :class:`Encoded` bytes.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if a value cannot be encoded.
    """
    pk = msgpack.Packer(**_packer_kw)
    head = pk.pack_array_header(3) + pk.pack(msgid) + pk.pack(STATUS_OK) + \
        pk.pack_array_header(len(items))
    parts = [b"", head]
    size = len(head)
    for item in items:
        b = item.data if type(item) is Encoded else packb(item)
        size += len(b)
        if size > max_frame_size:
            raise LimitError(
                f"frame body of more than {max_frame_size} bytes exceeds max_frame_size "
                f"{max_frame_size}", "LIMIT")
        parts.append(b)
    parts[0] = _LEN.pack(size)
    return b"".join(parts)


def encode_error(msgid: int, code: str, message: str,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode an error response frame ``[msgid, 1, [code, message]]``.

    Error frames never hit the frame limit: the message is cut at 4096 characters, and
    further if the frame would not fit ``max_frame_size`` (at least 1024 in a session).

    :param msgid: the failed request's id, or 0 for a connection-level error.
    :param code: an error code from :data:`vtpu.errors.CODE_TO_ERROR`.
    :param message: human-readable text (informative only: clients match the code).
    :param max_frame_size: the receiver's frame limit.
    :returns: the frame bytes.
    """
    # 4 bytes of UTF-8 per character at most, plus room for msgid, code and headers.
    cut = min(4096, (max_frame_size - 64) // 4)
    if len(message) > cut:
        message = message[: max(cut - 3, 0)] + "..."
    return encode_frame([msgid, STATUS_ERROR, [code, message]])


def encode_push(kind: str, payload: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode a server push frame ``[0, "push", kind, payload]``."""
    return encode_frame([0, PUSH, kind, payload], max_frame_size)


def _check_msgids(first: int, n: int) -> None:
    if type(first) is not int or first < 1 or first + n - 1 > 0xFFFFFFFF:
        raise InterfaceError(f"msgids {first!r}.. (+{n}) must stay within 1 .. 2**32-1")


def encode_get_requests(first_msgid: int, keys: bytes,
                        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode one GET request frame per key, back to back (a pipelined run of GETs).

    The bytes equal ``b"".join(encode_request(first_msgid + i, "GET", [key_i]))``.

    :param first_msgid: the first request's id; the ids count up by one and the last,
        ``first_msgid + N - 1``, must not exceed 2**32 - 1 (the caller wraps by
        splitting the run).
    :param keys: N*18 bytes, the packed keys in order.
    :param max_frame_size: the largest body allowed (a GET body is at most 31 bytes).
    :returns: the N frames as one bytes object (``b""`` for no keys).
    :raises InterfaceError: if ``keys`` is not bytes of a multiple of 18, or the msgids
        leave 1 .. 2**32-1.
    """
    if type(keys) is not bytes or len(keys) % KEY_SIZE:
        raise InterfaceError("GET keys must be bytes holding packed coordinates (N*18)")
    n = len(keys) // KEY_SIZE
    if n:
        _check_msgids(first_msgid, n)
    return b"".join(
        encode_request(first_msgid + i, "GET", [keys[i * KEY_SIZE : (i + 1) * KEY_SIZE]],
                       max_frame_size)
        for i in range(n)
    )


def encode_responses(msgids: list, results: list,
                     max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode the success replies to a run of requests, back to back.

    The bytes equal ``b"".join(encode_response(msgids[i], results[i]))``.

    :param msgids: the requests' ids.
    :param results: one result value each.
    :param max_frame_size: the largest body allowed per reply.
    :returns: the reply frames as one bytes object.
    :raises LimitError: if one reply would exceed ``max_frame_size``.
    :raises InterfaceError: if the lengths differ or a result cannot be encoded.
    """
    if len(msgids) != len(results):
        raise InterfaceError(f"{len(msgids)} msgids for {len(results)} results")
    return b"".join(encode_response(m, r, max_frame_size) for m, r in zip(msgids, results))


def encode_get_replies(msgids: list, scrolls: list,
                       max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                       max_bytes: int | None = None) -> tuple[bytes, int]:
    """Encode the replies to a run of GET requests, back to back.

    The bytes equal ``b"".join(encode_response(msgids[i], scroll_to_wire(scrolls[i])))``:
    ``[msgid, 0, nil]`` where nothing is stored, else ``[msgid, 0, [key, content,
    version, created_at, updated_at]]``.

    :param msgids: the requests' ids.
    :param scrolls: one Scroll (anything with those five attributes) or ``None`` each.
    :param max_frame_size: the largest body allowed per reply.
    :param max_bytes: stop after the first reply that brings the output to this many
        bytes or more (at least one reply is encoded); ``None``: encode them all.
    :returns: ``(frames, n)``: the first ``n`` reply frames as one bytes object.
    :raises LimitError: if one reply would exceed ``max_frame_size`` (nothing is
        returned; the caller answers that request alone with an error).
    :raises InterfaceError: if the lengths differ or a content cannot be encoded.
    """
    if len(msgids) != len(scrolls):
        raise InterfaceError(f"{len(msgids)} msgids for {len(scrolls)} scrolls")
    out = []
    size = 0
    for m, s in zip(msgids, scrolls):
        f = encode_response(m, scroll_to_wire(s), max_frame_size)
        out.append(f)
        size += len(f)
        if max_bytes is not None and size >= max_bytes:
            break
    return b"".join(out), len(out)


def encode_scrolls(scrolls: Any, *, status: int | None = None, page: bool = False,
                   after: bytes | None = None) -> bytes:
    """Encode a list of Scrolls (``None`` allowed) as the msgpack bytes of the
    column-wise scroll list (see :func:`scrolls_to_wire`), in one buffer with what a
    BATCH item wraps it in.

    :param scrolls: a :class:`vtpu.results.Scrolls` (written from its columns, see
        :func:`_columns_msgpack`), or Scroll objects (anything with the five
        attributes) or ``None``.
    :param status: given: the bytes of the BATCH item ``[status, value]``.
    :param page: the value is a RANGE page ``[scroll list, after]``.
    :param after: with ``page``: the key to continue after, or ``None``.
    :returns: the msgpack bytes of one value.
    :raises InterfaceError: if a content cannot be encoded.
    """
    w = _columns_msgpack(scrolls) if type(scrolls) is Scrolls else \
        packb(scrolls_to_wire(scrolls))
    if page:
        w = b"\x92" + w + packb(after)
    if status is not None:
        w = b"\x92" + packb(status) + w
    return w


def encode_response_contents(msgid: int, scrolls: Any,
                             max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode the success reply of a values-only GET_MANY, ``[msgid, 0, [content, ...]]``:
    item i's content, nil where nothing is stored (a stored ``None`` reads the same).

    The bytes equal ``encode_response(msgid, [None if s is None else s.content for s in
    scrolls])``; a :class:`vtpu.results.Scrolls` is written from its columns (one array
    per content, never stacked).

    :param msgid: the request id.
    :param scrolls: a :class:`vtpu.results.Scrolls`, or Scroll objects or ``None``.
    :param max_frame_size: the largest body allowed.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if a content cannot be encoded.
    """
    return encode_response(msgid, [None if s is None else s.content for s in scrolls],
                           max_frame_size)


def encode_response_scrolls(msgid: int, scrolls: list,
                            max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                            page: bool = False, after: bytes | None = None) -> bytes:
    """Encode a success reply whose result is a column-wise scroll list: GET_MANY and
    KG (``[msgid, 0, columns]``) or, with ``page``, a RANGE page
    (``[msgid, 0, [columns, after]]``).

    The bytes equal ``encode_response(msgid, scrolls_to_wire(scrolls))``, or
    ``encode_response(msgid, [scrolls_to_wire(scrolls), after])`` with ``page``.

    :param msgid: the request id.
    :param scrolls: a :class:`vtpu.results.Scrolls` (written from its columns), or
        Scroll objects or ``None``.
    :param max_frame_size: the largest body allowed.
    :param page: wrap the list as a RANGE page.
    :param after: with ``page``: the key to continue after, or ``None`` on the last page.
    :returns: the frame bytes.
    :raises LimitError: if the frame is too large.
    :raises InterfaceError: if a content cannot be encoded.
    """
    if type(scrolls) is Scrolls:
        # msgpack is written piece by piece: [msgid, 0, list] or [msgid, 0, [list, after]]
        body = encode_scrolls(scrolls, page=page, after=after)
        return _frame(b"\x93" + packb(msgid) + b"\x00" + body, max_frame_size)
    result: Any = scrolls_to_wire(scrolls)
    if page:
        result = [result, after]
    return encode_response(msgid, result, max_frame_size)


class RequestError(ProtocolError):
    """A well-framed message that is not a request (``[msgid >= 1, opcode, args]``).

    Unlike the other :class:`ProtocolError` cases of :meth:`FrameDecoder.next_requests`,
    the frame boundary is intact and the stream stays usable: the server answers with an
    error reply of code ``code`` (``PROTOCOL``, or ``LIMIT`` for a BATCH refused before
    it was decoded) and keeps reading. ``msgid`` is the request id when one could be
    read, else 0.
    """

    def __init__(self, message: str, msgid: int = 0, code: str = "PROTOCOL"):
        super().__init__(message)
        self.msgid = msgid
        self.code = code


_UINT_WIDTH = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BATCH_OPCODES = (b"\xa5BATCH", b"\xd9\x05BATCH")


def refuse_big_batch(head: bytes | bytearray | memoryview, max_batch: int) -> None:
    """Refuse a BATCH request of more than ``max_batch`` operations from the first bytes
    of its body, before anything is decoded (so an oversized BATCH costs no decoding).

    Only msgpack's shortest forms of ``[msgid, "BATCH", [ops]]`` are recognised; any
    other body passes (the server counts the operations once decoded).

    :param head: the body's first bytes (32 are enough).
    :param max_batch: the most operations allowed.
    :raises RequestError: code ``LIMIT``, with the request's msgid.
    """
    b = bytes(head[:32])
    if len(b) < 10 or b[0] != 0x93:
        return
    if b[1] < 0x80:
        msgid, pos = b[1], 2
    else:
        w = _UINT_WIDTH.get(b[1])
        if w is None:
            return
        msgid, pos = int.from_bytes(b[2:2 + w], "big"), 2 + w
    for op in _BATCH_OPCODES:
        if b.startswith(op, pos):
            pos += len(op)
            break
    else:
        return
    if b[pos:pos + 1] != b"\x91" or len(b) < pos + 2:
        return
    t = b[pos + 1]
    if 0x90 <= t <= 0x9F:
        n = t & 0x0F
    elif t == 0xDC:
        n = int.from_bytes(b[pos + 2:pos + 4], "big")
    elif t == 0xDD:
        n = int.from_bytes(b[pos + 2:pos + 6], "big")
    else:
        return
    if n > max_batch and 1 <= msgid <= 0xFFFFFFFF:
        raise RequestError(f"BATCH: {n} operations exceed max_batch {max_batch}", msgid,
                           "LIMIT")


class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes)``, then ``next()`` until ``None``.

    It never reads from anywhere; the caller feeds whatever bytes arrived, in pieces of
    any size (one byte at a time works). A length above ``max_frame_size`` is refused
    from the header alone, before anything is buffered for it.

    Besides the generic :meth:`next`, it knows the hot shape of the server's side: runs
    of pipelined plain GET and PUT requests, taken with :meth:`next_requests`, which
    leaves any other frame to the generic path, so the two never disagree on a byte.
    (Clients that own their receive buffer decode runs of GET replies in place with
    :func:`decode_get_replies`.)

    :param max_frame_size: the largest body accepted.
    :param max_batch: with :meth:`next_requests`, refuse a BATCH request announcing more
        operations than this before decoding it (see :func:`refuse_big_batch`); 0 does
        not check.
    """

    __slots__ = ("max_frame_size", "max_batch", "_buf", "_pos", "_peek")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_batch: int = 0):
        self.max_frame_size = max_frame_size
        self.max_batch = max_batch
        self._buf = bytearray()
        self._pos = 0  # start of unread data in _buf; compacted lazily to avoid O(n^2)
        self._peek: Any = None  # (end offset, decoded body) of the frame at _pos, if known

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes.

        :param data: any number of bytes (possibly empty, possibly several frames).
        """
        if self._pos and self._pos == len(self._buf):
            # Everything consumed: reuse the buffer instead of growing it forever.
            del self._buf[:]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        """Return how many received bytes are not yet consumed (at most a partial frame
        after :meth:`next` returned ``None``)."""
        return len(self._buf) - self._pos

    def head_size(self) -> int:
        """Return the size, its 4-byte header included, of the frame at the read position
        as its header announces it (complete or not), or 0 before 4 bytes of it arrived.
        A server uses it to budget the memory a frame still arriving will take."""
        if len(self._buf) - self._pos < 4:
            return 0
        return 4 + _LEN.unpack_from(self._buf, self._pos)[0]

    # -- frames --------------------------------------------------------------------------
    def _frame_end(self) -> int:
        """Offset just after the complete frame at the read position, or -1."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return -1
        (n,) = _LEN.unpack_from(buf, pos)
        if n > self.max_frame_size:
            raise FrameTooLarge(
                f"frame body of {n} bytes exceeds max_frame_size {self.max_frame_size}"
            )
        if n == 0:
            raise ProtocolError("frame with an empty body")
        end = pos + 4 + n
        return end if end <= len(buf) else -1

    def _consume(self, end: int) -> None:
        buf = self._buf
        self._peek = None
        if end == len(buf):
            del buf[:]
            self._pos = 0
        elif end > 65536 and end > len(buf) // 2:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end

    def _decoded(self, end: int) -> Any:
        """The decoded body of the complete frame at the read position (cached)."""
        peek = self._peek
        if peek is not None and peek[0] == end:
            return peek[1]
        msg = unpackb(self._buf[self._pos + 4 : end])
        self._peek = (end, msg)
        return msg

    def next_body(self) -> bytes | None:
        """Return the next complete frame body as raw bytes, or ``None`` if incomplete.

        :raises FrameTooLarge: on a length above ``max_frame_size``.
        :raises ProtocolError: on a zero length (either way the stream is unusable).
        """
        end = self._frame_end()
        if end < 0:
            return None
        body = bytes(self._buf[self._pos + 4 : end])
        self._consume(end)
        return body

    def next(self) -> Any:
        """Return the next decoded message, or ``None`` if no complete frame is buffered.

        :raises ProtocolError: on an oversized/empty length or a body that is not exactly
            one valid msgpack object (the frame is consumed). After this error the
            stream is unusable.
        """
        end = self._frame_end()
        if end < 0:
            return None
        try:
            return self._decoded(end)
        finally:
            self._consume(end)

    next_frame = next  # the name of earlier releases

    def __iter__(self) -> Iterator[Any]:
        """Iterate over the complete messages buffered so far."""
        while True:
            msg = self.next()
            if msg is None:
                return
            yield msg

    # -- the server's side ---------------------------------------------------------------
    def next_requests(self, limit: int) -> tuple | None:
        """Take the next request, or the next run of plain GETs or plain PUTs.

        A plain GET is a frame whose body is exactly ``[msgid, "GET", [bin of 18]]``, a
        plain PUT one whose body is ``[msgid, "PUT", [bin of 18, content]]``.
        Consecutive plain requests of one opcode (at most ``limit`` frames) come back as
        one run, so the server answers them with one engine call and one encoder call.

        :param limit: most frames to consume (>= 1).
        :returns: ``None`` if no complete frame is buffered; a run as the 4-tuple
            ``(opcode, msgids, keys, contents)``: ``"GET"`` or ``"PUT"``, a list of N
            msgids, the N*18 bytes of their keys in order, and for PUT the list of N
            contents (``None`` for GET); otherwise one request as the 3-tuple
            ``(msgid, opcode, args)`` (a GET or PUT with other arguments comes this
            way too, for the dispatcher to check).
        :raises RequestError: a frame that decodes but is not a request, or a BATCH of
            more than ``max_batch`` operations (consumed; the stream stays usable).
        :raises ProtocolError: an empty or oversized length, or a body that is not
            exactly one msgpack object (consumed; the stream is unusable). A run
            before such a frame is returned first; the next call raises.
        """
        run_op = None
        msgids: list = []
        keys: list = []
        contents: list = []
        while len(msgids) < limit:
            end = -1
            try:
                end = self._frame_end()
                if end < 0:
                    break
                if self.max_batch and end - self._pos - 4 > self.max_batch:
                    # Each operation takes a few bytes: only a body this long can be a
                    # BATCH over the limit.
                    refuse_big_batch(bytes(self._buf[self._pos + 4:self._pos + 36]),
                                     self.max_batch)
                msg = self._decoded(end)
            except ProtocolError:
                if msgids:
                    break  # reported by the next call, after this run is answered
                if end >= 0:
                    self._consume(end)
                raise
            op = _plain_op(msg)
            if op is None or (run_op is not None and op != run_op):
                if msgids:
                    break
                self._consume(end)
                msgid, op, args = parse_request(msg)
                return msgid, op, args
            run_op = op
            args = msg[2]
            msgids.append(msg[0])
            keys.append(args[0])
            if op == "PUT":
                contents.append(args[1])
            self._consume(end)
        if not msgids:
            return None
        return run_op, msgids, b"".join(keys), contents if run_op == "PUT" else None


def decode_get_replies(data: bytes | bytearray | memoryview, pos: int, end: int,
                       msgid: int, count: int, names: Any = None,
                       max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> tuple[list, int, bool]:
    """Decode a run of GET success replies in place, from a client's receive buffer.

    Starting at ``data[pos]``, decodes consecutive complete frames whose bodies are
    ``[msgid + i, 0, nil]`` or ``[msgid + i, 0, [key bin(18), content, version uint >= 1,
    created float, updated float]]`` (``i`` counting from 0), at most ``count``. It stops
    at the first frame that is incomplete or of any other kind (an error reply, a push,
    another id, a length it does not accept), which the caller then reads generically.

    :param data: the receive buffer.
    :param pos: offset of the next unread frame.
    :param end: end of the received bytes in ``data``.
    :param msgid: the id the first reply must carry.
    :param count: most replies to decode.
    :param names: the name table given to every Scroll.
    :param max_frame_size: the largest body accepted (a larger or empty length stops the
        run; the caller's framing reports it).
    :returns: ``(scrolls, pos, need_more)``: a list of Scroll or ``None`` (nothing
        stored), the offset after them, and whether the run stopped at an incomplete
        frame (rather than at ``count`` or at a frame of another kind).
    """
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    end = min(end, len(data))
    out: list = []
    while len(out) < count:
        if end - pos < 4:
            return out, pos, True
        (n,) = _LEN.unpack_from(data, pos)
        if n == 0 or n > max_frame_size:
            break
        if end - pos - 4 < n:
            return out, pos, True
        try:
            msg = unpackb(data[pos + 4 : pos + 4 + n])
        except ProtocolError:
            break
        if (type(msg) is not list or len(msg) != 3 or type(msg[0]) is not int
                or msg[0] != msgid + len(out) or type(msg[1]) is not int or msg[1] != STATUS_OK):
            break
        v = msg[2]
        if v is None:
            out.append(None)
        else:
            row = _scroll_row(v)
            if row is None:
                break
            out.append(Scroll(*row, names))
        pos += 4 + n
    return out, pos, False


class ReplyBuffer:
    """A client connection's receive buffer: socket reads land in its free space, and
    whole reply frames are taken from its front (the client side's framing, as
    :class:`FrameDecoder` is the server's).

    It never reads by itself except in :meth:`recv`, one ``recv_into`` of the socket it
    is given. The free space it hands out for reads (:meth:`get_buffer`, the pair an
    :class:`asyncio.BufferedProtocol` uses) stays valid until :meth:`buffer_updated`;
    a body returned by :meth:`next_body` stays valid until the next read into the
    buffer.

    :param max_frame_size: the largest reply body accepted.
    :param size: the starting capacity in bytes (it grows to hold the largest frame).
    """

    __slots__ = ("max_frame_size", "_buf", "_view", "_start", "_end")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, size: int = 65536):
        self.max_frame_size = max_frame_size
        self._buf = bytearray(max(size, 16))
        self._view = memoryview(self._buf)
        self._start = 0  # the first unread byte
        self._end = 0    # one after the last received byte

    def _replace(self, size: int) -> None:
        # A new buffer of ``size`` holding the unread bytes at its front. (A new object,
        # not a resize: views handed out earlier keep the bytes they showed.)
        n = self._end - self._start
        nb = bytearray(size)
        nb[:n] = self._view[self._start:self._end]
        self._buf = nb
        self._view = memoryview(nb)
        self._start, self._end = 0, n

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """The writable free space after the received bytes (never empty), for
        ``recv_into``; report what was written with :meth:`buffer_updated`.

        :param sizehint: ignored (asyncio's hint; the space is at least 4 KiB or what
            the frame being received still needs).
        """
        if self._start == self._end:
            self._start = self._end = 0
            return self._view
        if len(self._buf) - self._end < 4096:
            self._replace(len(self._buf) if self._start else 2 * len(self._buf))
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of :meth:`get_buffer`'s space.

        :raises ValueError: more bytes than that space holds.
        """
        if nbytes < 0 or self._end + nbytes > len(self._buf):
            raise ValueError(f"{nbytes} bytes do not fit the free space "
                             f"({len(self._buf) - self._end})")
        self._end += nbytes

    def recv(self, sock: Any) -> int:
        """Read once from ``sock`` (``sock.recv_into``) into the free space.

        :returns: the number of bytes read; 0 when the peer closed the connection.
        :raises OSError: what the socket raises (a timeout, a reset...).
        """
        n = sock.recv_into(self.get_buffer())
        self._end += n
        return n

    def send_recv(self, sock: Any, fd: int, frame: bytes) -> int:
        """A single call's round trip on a blocking socket: send all of ``frame``, then
        read once into the free space (as :meth:`recv`).

        :param sock: the socket.
        :param fd: its descriptor when the caller knows it is a plain blocking TCP socket
            whose timeouts the kernel enforces: the compiled twin then makes the two
            system calls itself (the result is the same); -1 for any other socket.
        :param frame: the request bytes.
        :returns: the number of bytes read; 0 when the peer closed the connection.
        :raises OSError: what the socket raises (EAGAIN when a kernel timeout expired).
        """
        sock.sendall(frame)
        return self.recv(sock)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy received bytes in (for transports that hand out bytes)."""
        view = memoryview(data).cast("B")
        n = len(view)
        if len(self._buf) - self._end < n:
            need = self._end - self._start + n
            size = len(self._buf)
            while size < need:
                size *= 2
            self._replace(size)
        self._buf[self._end:self._end + n] = view
        self._end += n

    def buffered(self) -> int:
        """How many received bytes are not taken yet."""
        return self._end - self._start

    def clear(self) -> None:
        """Drop every buffered byte (the connection was replaced)."""
        self._start = self._end = 0

    def next_body(self) -> memoryview | None:
        """Take the next complete frame and return its body, or None while it has not
        fully arrived (the buffer then grows, once, to hold a frame larger than it).

        :raises ProtocolError: a length of 0 or above ``max_frame_size`` (the stream is
            unusable).
        """
        start = self._start
        avail = self._end - start
        if avail < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf, start)
        if n > self.max_frame_size or n == 0:
            raise ProtocolError(
                f"reply frame of {n} bytes (max_frame_size {self.max_frame_size})")
        if avail < 4 + n:
            if 4 + n > len(self._buf):
                self._replace(4 + n)
            return None
        self._start = start + 4 + n
        return self._view[start + 4:start + 4 + n]

    def take_reply(self, msgid: int) -> tuple | None:
        """Take the next frame if it is the success reply to ``msgid`` (``[msgid, 0,
        value]``, the whole body one msgpack object): ``(True, value)``. Anything else
        (an error, a push, another reply, a frame not fully arrived, a malformed one) is
        left where it is, for :meth:`next_body`, and None returned.
        """
        start = self._start
        avail = self._end - start
        if avail < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf, start)
        if n > self.max_frame_size or n == 0 or avail < 4 + n:
            return None
        got = success_reply(bytes(self._view[start + 4:start + 4 + n]), msgid)
        if got is not None:
            self._start = start + 4 + n
        return got

    def take_get_replies(self, msgid: int, count: int, names: Any = None) -> list:
        """Take the run of GET success replies at the front, as
        :func:`decode_get_replies` reads them (at most ``count``, ids from ``msgid``).

        :returns: the list of Scroll or None read (empty: the next frame is incomplete
            or of another kind).
        """
        got, pos, _more = decode_get_replies(self._buf, self._start, self._end, msgid,
                                             count, names, self.max_frame_size)
        self._start = pos
        return got


def success_reply(body: bytes, msgid: int) -> tuple | None:
    """``(True, value)`` when ``body`` is the success reply to ``msgid`` as
    :func:`parse_reply` reads one (``[msgid, 0, value]``, the whole body one msgpack
    object in any valid encoding), else None (an error, a push, another reply, malformed
    bytes)."""
    try:
        r = parse_reply(unpackb(body))
    except ProtocolError:
        return None
    if type(r) is not Reply or not r.ok or r.msgid != msgid:
        return None
    return True, r.value


def _plain_op(msg: Any) -> str | None:
    """``"GET"`` for a plain GET request ``[msgid, "GET", [bin of 18]]``, ``"PUT"`` for a
    plain PUT ``[msgid, "PUT", [bin of 18, content]]``, else None."""
    if type(msg) is list and len(msg) == 3:
        msgid, op, args = msg
        if (type(msgid) is int and 1 <= msgid <= 0xFFFFFFFF and type(args) is list
                and args and type(args[0]) is bytes and len(args[0]) == KEY_SIZE):
            if op == "GET" and len(args) == 1:
                return "GET"
            if op == "PUT" and len(args) == 2:
                return "PUT"
    return None


_INT64_MAX = (1 << 63) - 1   # a version is an int64


def _scroll_row(v: Any) -> tuple | None:
    """``(key, content, version, created, updated)`` of a scroll's wire form, or None
    if ``v`` is not exactly that shape."""
    if type(v) is list and len(v) == 5:
        key, content, version, created, updated = v
        if (type(key) is bytes and len(key) == KEY_SIZE and type(version) is int
                and 1 <= version <= _INT64_MAX and type(created) is float
                and type(updated) is float):
            return key, content, version, created, updated
    return None



# ---------------------------------------------------------------------------------------
# Message shapes


class Reply(NamedTuple):
    """A decoded response: ``ok`` tells whether ``value`` is a result or ``(code, message)``."""

    msgid: int
    ok: bool
    value: Any


class Push(NamedTuple):
    """A decoded server push."""

    kind: str
    payload: Any


def parse_request(msg: Any) -> tuple[int, str, list]:
    """Check the shape of a decoded request.

    :param msg: a decoded frame body.
    :returns: ``(msgid, opcode, args)``.
    :raises RequestError: if it is not ``[uint msgid >= 1, str opcode, array args]``;
        ``exc.msgid`` holds the id when one could be read (an array whose first item
        is an integer in 1 .. 2**32-1), else 0.
    """
    msgid = 0
    if type(msg) is list and msg:
        # The msgid is read whenever it can be, so the error reply names the request.
        first = msg[0]
        if type(first) is int and 1 <= first <= 0xFFFFFFFF:
            msgid = first
            if len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is list:
                return msgid, msg[1], msg[2]
    raise RequestError("malformed request: expected [msgid >= 1, opcode str, args array]",
                       msgid)


def parse_reply(msg: Any) -> Reply | Push:
    """Check the shape of a decoded response or push.

    :param msg: a decoded frame body.
    :returns: a :class:`Reply` or a :class:`Push`.
    :raises ProtocolError: for any other shape.
    """
    if type(msg) is list:
        n = len(msg)
        if n == 3:
            msgid, status, value = msg
            if type(msgid) is int and msgid >= 0:
                if status == STATUS_OK:
                    return Reply(msgid, True, value)
                if (
                    status == STATUS_ERROR
                    and type(value) is list
                    and len(value) == 2
                    and type(value[0]) is str
                    and type(value[1]) is str
                ):
                    return Reply(msgid, False, (value[0], value[1]))
        elif n == 4 and msg[0] == 0 and msg[1] == PUSH and type(msg[2]) is str:
            return Push(msg[2], msg[3])
    raise ProtocolError(f"malformed reply: {str(msg)[:200]}")


# ---------------------------------------------------------------------------------------
# Packed coordinate forms


def pack_coords(arr: Any) -> bytes:
    """Pack an ``(N, 9)`` uint16 array into an N*18-byte big-endian blob.

    :raises InterfaceError: for a wrong shape or values outside 0..65535.
    """
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[1] != 9:
        raise InterfaceError(f"expected an (N, 9) coordinate array, got shape {a.shape}")
    if a.dtype != np.uint16:
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise InterfaceError("coordinate components must be in 0..65535")
    return a.astype(_BE_U16, copy=False).tobytes()


def unpack_coords(blob: bytes) -> np.ndarray:
    """Unpack an N*18-byte blob into a writable ``(N, 9)`` uint16 array.

    :raises InterfaceError: if the length is not a multiple of 18.
    """
    if len(blob) % KEY_SIZE:
        raise InterfaceError(f"coordinate blob of {len(blob)} bytes is not a multiple of 18")
    return np.frombuffer(blob, dtype=_BE_U16).reshape(-1, 9).astype(np.uint16)


def pack_coord(c: Any) -> bytes:
    """Pack one coordinate (9 components) into 18 bytes."""
    return pack_coords(np.asarray(c).reshape(1, 9))


def unpack_coord(key: bytes) -> np.ndarray:
    """Unpack 18 bytes into a ``(9,)`` uint16 array.

    :raises InterfaceError: if ``key`` is not 18 bytes.
    """
    if len(key) != KEY_SIZE:
        raise InterfaceError(f"a packed coordinate is 18 bytes, got {len(key)}")
    return unpack_coords(key)[0]


def pack_pattern(p: Any) -> bytes:
    """Pack a ``(2, 9)`` pattern (lo row, hi row, both inclusive) into 36 bytes."""
    a = np.asarray(p)
    if a.shape != (2, 9):
        raise InterfaceError(f"a pattern is a (2, 9) array, got shape {a.shape}")
    return pack_coords(a)


def unpack_pattern(b: bytes) -> np.ndarray:
    """Unpack 36 bytes into a ``(2, 9)`` uint16 pattern.

    :raises InterfaceError: if ``b`` is not 36 bytes.
    """
    if len(b) != PATTERN_SIZE:
        raise InterfaceError(f"a packed pattern is 36 bytes, got {len(b)}")
    return unpack_coords(b)


def pack_patterns(p: Any) -> bytes:
    """Pack a ``(Q, 2, 9)`` stack of patterns into a Q*36-byte blob."""
    a = np.asarray(p)
    if a.ndim != 3 or a.shape[1:] != (2, 9):
        raise InterfaceError(f"expected a (Q, 2, 9) pattern array, got shape {a.shape}")
    return pack_coords(a.reshape(-1, 9))


def unpack_patterns(b: bytes) -> np.ndarray:
    """Unpack a Q*36-byte blob into a ``(Q, 2, 9)`` uint16 array."""
    if len(b) % PATTERN_SIZE:
        raise InterfaceError(f"pattern blob of {len(b)} bytes is not a multiple of 36")
    return unpack_coords(b).reshape(-1, 2, 9)


def pack_deltas(d: Any) -> bytes:
    """Pack an ``(R, 2, 9)`` int32 stack of deltas into R*72 bytes (big-endian int32)."""
    a = np.asarray(d)
    if a.ndim != 3 or a.shape[1:] != (2, 9):
        raise InterfaceError(f"expected an (R, 2, 9) delta array, got shape {a.shape}")
    return a.astype(_BE_I32).tobytes()


def unpack_deltas(b: bytes) -> np.ndarray:
    """Unpack an R*72-byte blob into an ``(R, 2, 9)`` int32 array.

    :raises InterfaceError: if the length is not a multiple of 72, an op is not 0 (add),
        1 (set) or 2 (wildcard), or a set value is outside 0..65535.
    """
    if len(b) % DELTA_SIZE:
        raise InterfaceError(f"delta blob of {len(b)} bytes is not a multiple of 72")
    d = np.frombuffer(b, dtype=_BE_I32).reshape(-1, 2, 9).astype(np.int32)
    ops, vals = d[:, 0], d[:, 1]
    bad = np.flatnonzero(((ops < 0) | (ops > 2)).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise InterfaceError(f"delta {i}: op {ops[i].tolist()} holds a value other than "
                             "0 (add), 1 (set), 2 (wildcard)")
    bad = np.flatnonzero(((ops == 1) & ((vals < 0) | (vals > 0xFFFF))).any(axis=1))
    if bad.size:
        raise InterfaceError(f"delta {int(bad[0])}: a set value is outside 0..65535")
    return d


def pack_delta(d: Any) -> bytes:
    """Pack one ``(2, 9)`` int32 delta (row 0 ops, row 1 values) into 72 bytes."""
    a = np.asarray(d)
    if a.shape != (2, 9):
        raise InterfaceError(f"a delta is a (2, 9) array, got shape {a.shape}")
    return pack_deltas(a.reshape(1, 2, 9))


def unpack_delta(b: bytes) -> np.ndarray:
    """Unpack 72 bytes into a ``(2, 9)`` int32 delta."""
    if len(b) != DELTA_SIZE:
        raise InterfaceError(f"a packed delta is 72 bytes, got {len(b)}")
    return unpack_deltas(b)[0]


def check_key(key: Any, what: str = "key") -> bytes:
    """Validate a packed coordinate argument (bin of 18 bytes).

    :raises InterfaceError: otherwise.
    """
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise InterfaceError(f"{what} must be a packed coordinate (bin of 18 bytes)")
    return key


def check_blob(blob: Any, unit: int = KEY_SIZE, what: str = "coordinates") -> bytes:
    """Validate a packed array argument (bin whose length is a multiple of ``unit``).

    :raises InterfaceError: otherwise.
    """
    if type(blob) is not bytes or len(blob) % unit:
        raise InterfaceError(f"{what} must be a bin whose length is a multiple of {unit}")
    return blob


# ---------------------------------------------------------------------------------------
# Scrolls on the wire


def scroll_to_wire(s: Any) -> list | None:
    """Encode one Scroll (or ``None``) as ``[key, content, version, created_at, updated_at]``."""
    if s is None:
        return None
    return [s.key, s.content, s.version, s.created_at, s.updated_at]


_ZERO_KEY = bytes(KEY_SIZE)


def scrolls_to_wire(scrolls: list) -> list:
    """Encode a list of Scrolls (``None`` allowed) column-wise.

    ``[keys_blob, contents, versions, created, updated]``: one N*18 bin for the keys and
    one array per field; a ``None`` entry has version 0, a zero key and nil fields.
    When every content is a numpy array of one dtype and shape (the embedding case),
    ``contents`` is a single stacked ndarray whose row i is content i: one ext value
    instead of N, which is most of the cost of a large result.
    """
    keys = []
    contents = []
    versions = []
    created = []
    updated = []
    for s in scrolls:
        if s is None:
            keys.append(_ZERO_KEY)
            contents.append(None)
            versions.append(0)
            created.append(None)
            updated.append(None)
        else:
            keys.append(s.key)
            contents.append(s.content)
            versions.append(s.version)
            created.append(s.created_at)
            updated.append(s.updated_at)
    return [b"".join(keys), _stack_if_uniform(contents), versions, created, updated]


def _columns_msgpack(scrolls: Scrolls) -> bytes:
    """The msgpack bytes of ``scrolls_to_wire(list(scrolls))``, written from the result's
    columns (:meth:`Scrolls.columns`), piece by piece, with no Scroll made: the keys
    blob as it is, each content from where it is held (see :func:`_content_msgpack`),
    then the version and time columns.
    """
    cols = scrolls.columns()
    kinds = cols.kinds.tolist()
    dead = [k == KIND_DEAD for k in kinds]
    keys = bytearray(cols.keys)
    for i in np.flatnonzero(dead).tolist():
        keys[i * KEY_SIZE:(i + 1) * KEY_SIZE] = _ZERO_KEY  # no key where nothing is stored
    stacked = _stack_if_uniform(_array_contents(scrolls, kinds))
    if type(stacked) is np.ndarray:
        contents = packb(stacked)
    else:
        contents = _array_header(len(kinds)) + b"".join(
            _content_msgpack(cols, k, a, m)
            for k, a, m in zip(kinds, cols.offsets.tolist(), cols.lengths.tolist()))
    versions = [0 if x else v for x, v in zip(dead, cols.versions.tolist())]
    created = [None if x else t for x, t in zip(dead, cols.created.tolist())]
    updated = [None if x else t for x, t in zip(dead, cols.updated.tolist())]
    return (b"\x95" + packb(bytes(keys)) + contents + packb(versions) + packb(created)
            + packb(updated))


def _content_msgpack(cols: Any, kind: int, off: int, ln: int) -> bytes:
    """The msgpack bytes of one content of a result's columns (see
    :meth:`Scrolls.columns` for where each kind is held)."""
    data = cols.data
    if kind == KIND_BYTES:
        return packb(data[off:off + ln])
    if kind == KIND_STR:
        return packb(data[off:off + ln].decode("utf-8"))
    if kind == KIND_PACKED:
        return data[off:off + ln]  # one msgpack value, as the store keeps it
    if kind == KIND_OBJECT:
        return packb(cols.objects[off])
    if kind == KIND_ARRAY:
        dtype, shape = cols.types[int.from_bytes(data[off:off + 4], "little")]
        arr = np.frombuffer(data, dtype, (ln - 4) // dtype.itemsize, off + 4) if ln > 4 \
            else np.empty(0, dtype)
        return packb(arr.reshape(shape))
    return packb(None)  # the content None, or nothing stored


_ARRAYISH = (KIND_ARRAY, KIND_OBJECT, KIND_PACKED)


def _array_contents(scrolls: Scrolls, kinds: list) -> list:
    """The contents, when every one may be a numpy array (the case a stacked form is
    looked for); else []."""
    if len(kinds) < 2 or any(k not in _ARRAYISH for k in kinds):
        return []
    contents = scrolls.contents
    return contents if type(contents) is list else list(contents)


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of n items."""
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 0x10000 else b"\xdd" + n.to_bytes(4, "big")


def _stack_if_uniform(contents: list) -> Any:
    if len(contents) < 2:
        return contents
    first = contents[0]
    if type(first) is not np.ndarray or first.ndim == 0:
        return contents
    dt, shape = first.dtype, first.shape
    for c in contents:
        if type(c) is not np.ndarray or c.shape != shape or c.dtype != dt:
            return contents
    return np.stack(contents)


def wire_to_rows(w: Any) -> Iterator[tuple | None]:
    """Iterate over a column-wise scroll list, yielding
    ``(key, content, version, created_at, updated_at)`` or ``None`` (version 0).

    :raises ProtocolError: if the shape is wrong.
    """
    try:
        keys, contents, versions, created, updated = w
        n = len(versions)
        if isinstance(contents, np.ndarray):
            if contents.ndim < 2:
                raise ValueError("stacked contents need at least 2 dimensions")
            contents = list(contents)  # row views, no copies
        if type(keys) is not bytes or not (
                type(contents) is type(versions) is type(created) is type(updated) is list):
            raise TypeError("expected a keys bin and four arrays")
        if len(keys) != n * KEY_SIZE or not (len(contents) == len(created) == len(updated) == n):
            raise ValueError("column lengths differ")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed scroll list: {exc}") from None
    for i in range(n):
        v = versions[i]
        if type(v) is not int or not 0 <= v < 1 << 63:
            raise ProtocolError(f"malformed scroll list: version {v!r} at {i}")
        if v:
            c, u = created[i], updated[i]
            if type(c) is not float or type(u) is not float:
                raise ProtocolError(f"malformed scroll list: times at {i} are not floats")
            yield (keys[i * KEY_SIZE : (i + 1) * KEY_SIZE], contents[i], v, c, u)
        else:
            yield None


def wire_to_scrolls(w: Any, names: Any = None) -> Scrolls:
    """A column-wise scroll list (already unpacked) as a :class:`vtpu.results.Scrolls`.

    :param w: ``[keys_blob, contents, versions, created, updated]`` as unpacked.
    :param names: the name table given to every Scroll.
    :returns: the Scrolls (item i a Scroll, or ``None`` for version 0).
    :raises ProtocolError: if the shape is wrong.
    """
    rows = list(wire_to_rows(w))  # checks every column and item
    created = [0.0 if r is None else r[3] for r in rows]
    updated = [0.0 if r is None else r[4] for r in rows]
    return Scrolls.from_columns(w[0], w[1], w[2], created, updated, None, names)


def _unpack_at(data: Any, offset: int) -> tuple[Any, int]:
    """Decode the one msgpack value at ``data[offset:]``: ``(value, end offset)``."""
    up = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=False,
                          use_list=True, max_buffer_size=max(len(data), 1))
    up.feed(memoryview(data)[offset:])
    try:
        value = up.unpack()
    except ProtocolError:
        raise
    except msgpack.OutOfData:
        raise ProtocolError("malformed msgpack: truncated value") from None
    except Exception as exc:  # FormatError, StackError, UnicodeDecodeError ...
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    return value, offset + up.tell()


def decode_scrolls(data: bytes | bytearray | memoryview, offset: int = 0,
                   names: Any = None) -> tuple[Any, int]:
    """Decode the column-wise scroll list at ``data[offset:]`` (either contents form).

    :param data: bytes holding the encoded list (a reply body, say).
    :param offset: where the list starts.
    :param names: the name table given to every Scroll.
    :returns: ``(scrolls, end)``: a :class:`vtpu.results.Scrolls` (item i a Scroll, or
        ``None`` for version 0), and the offset just after the list.
    :raises ProtocolError: if the bytes are truncated or not a scroll list.
    """
    w, end = _unpack_at(data, offset)
    return wire_to_scrolls(w, names), end


def decode_response_scrolls(body: bytes | bytearray | memoryview, names: Any = None,
                            page: bool = False) -> Reply | Push:
    """Decode a reply body whose success result is a scroll list (GET_MANY, KG) or, with
    ``page``, a RANGE page ``[scroll list, after]``: the inverse of
    :func:`encode_response_scrolls`.

    :param body: one frame body.
    :param names: the name table given to every Scroll.
    :param page: the result is a RANGE page.
    :returns: a :class:`Reply` whose ``value`` is the scrolls (with ``page``:
        ``(scrolls, after)``); an error reply or a push decode as in
        :func:`parse_reply`.
    :raises ProtocolError: if the body is malformed, or a success result is not of
        that shape.
    """
    r = parse_reply(unpackb(body))
    if type(r) is Push or not r.ok:
        return r
    w = r.value
    if page:
        if type(w) is not list or len(w) != 2:
            raise ProtocolError("malformed RANGE page: expected [scroll list, after]")
        w, after = w
        if after is not None and (type(after) is not bytes or len(after) != KEY_SIZE):
            raise ProtocolError("malformed RANGE page: after must be nil or 18 bytes")
    scrolls = wire_to_scrolls(w, names)
    return Reply(r.msgid, True, (scrolls, after) if page else scrolls)


# ---------------------------------------------------------------------------------------
# Opcode table


class OpSpec(NamedTuple):
    """One opcode: its engine method, whether a retry is safe, whether it writes."""

    name: str
    method: str | None  # Engine method it maps to (None: handled by the server itself)
    idempotent: bool
    writes: bool
    summary: str


OPS: dict[str, OpSpec] = {
    s.name: s
    for s in [
        OpSpec("HELLO", None, True, False, "open a session: version, token, options"),
        OpSpec("PING", None, True, False, "liveness check; returns 'PONG'"),
        OpSpec("GET", "get", True, False, "one scroll or nil"),
        OpSpec("GET_MANY", "get_many", True, False,
               "many scrolls (or only their contents), one per key"),
        OpSpec("PUT", "put", False, True, "write one scroll; returns its new version"),
        OpSpec("PUT_MANY", "put_many", False, True, "write many scrolls; returns versions"),
        OpSpec("DEL", "delete", False, True, "delete one key; returns 0 or 1"),
        OpSpec("DEL_MANY", "delete_many", False, True, "delete many keys; returns count"),
        OpSpec("DEL_RANGE", "delete_range", False, True, "delete by pattern; returns count"),
        OpSpec("RANGE", "range", True, False, "scrolls (or keys) matching a pattern, paged"),
        OpSpec("COUNT", "count", True, False, "how many scrolls match a pattern"),
        OpSpec("NEAREST", "nearest", True, False, "k nearest stored coordinates"),
        OpSpec("HIER", "hier", True, False, "next/previous stored coordinate"),
        OpSpec("ATTEND", "attend", True, False, "attention over matching vectors"),
        OpSpec("ATTEND_MANY", "attend_many", True, False, "many attention queries"),
        OpSpec("KG", "kg", True, False, "multi-hop traversal"),
        OpSpec("INTERN", "intern", True, True, "intern names; returns ids"),
        OpSpec("NAMES", "name_table", True, False, "the whole name table"),
        OpSpec("RECLAIM_NAMES", "reclaim_names", True, True,
               "free the ids of names no stored key uses; returns how many"),
        OpSpec("HEALTH", "health", True, False, "health report"),
        OpSpec("STATS", "stats", True, False, "statistics"),
        OpSpec("IMPORT_PHEXT", "import_phext", False, True, "import a .phext text"),
        OpSpec("EXPORT_PHEXT", "export_phext", True, False, "export scrolls as .phext text"),
        OpSpec("BATCH", None, False, True, "many operations in one frame"),
    ]
}


def batch_idempotent(ops: list) -> bool:
    """A BATCH is safe to retry only if every operation inside it is."""
    return all(OPS[op].idempotent for op, _ in ops)


def error_pair(exc: BaseException) -> list:
    """Turn an exception into the ``[code, message]`` pair of an error reply."""
    msg = exc.message if hasattr(exc, "message") and isinstance(exc.message, str) else str(exc)
    code = error_code(exc)
    if code == "INTERNAL" and not isinstance(exc, VTPUError):
        # A bug, not the request: name the exception, the traceback is in the server log.
        msg = f"internal error ({type(exc).__name__}: {msg}); see the server log"
    elif not msg:
        msg = type(exc).__name__
    return [code, msg]


ResultDecoder = Callable[[Any], Any]
