"""The vtpu exception tree.

One root, :class:`VTPUError`, with builtin mix-ins wherever an error means the same as a
builtin, so ``except ValueError`` / ``except ConnectionError`` keep working for callers
who never heard of vtpu. Every message says what went wrong and where.

Server errors travel as ``(code, message)`` pairs; :data:`CODE_TO_ERROR` maps a code to
the class raised on the client, so both sides agree on one table. Only the errors vtpu
raises on purpose (this tree) have a code of their own; any other exception escaping the
server (a bug) is logged there and reaches the client as ``INTERNAL``
(:class:`InternalError`), never as an argument error.

Socket failures are turned into this tree in one place, :func:`translate_socket_error`.
"""
from __future__ import annotations

import builtins
import socket
import sys

__all__ = [
    "VTPUError",
    "CoordinateError",
    "InterfaceError",
    "ProtocolError",
    "FrameTooLarge",
    "ConnectionError",
    "TimeoutError",
    "ServerError",
    "AuthError",
    "VersionConflict",
    "NotFoundError",
    "LimitError",
    "RequestTimeout",
    "InternalError",
    "StorageError",
    "PhextError",
    "CODE_TO_ERROR",
    "error_code",
    "error_from_code",
    "is_internal",
    "translate_socket_error",
    "closed_before_hello",
]


class VTPUError(Exception):
    """Root of every error vtpu raises on purpose."""


class CoordinateError(VTPUError, ValueError):
    """Caller's fault: a malformed coordinate, pattern, delta or name.

    The message quotes the input and names the faulty component.
    """


class InterfaceError(VTPUError, ValueError):
    """Caller's fault: wrong type, dtype, shape or argument for an API call."""


class ProtocolError(VTPUError):
    """A frame that violates the protocol; the connection it came on is poisoned."""


class FrameTooLarge(ProtocolError):
    """A frame header announced a body above the receiver's ``max_frame_size``.

    Raised by the frame decoder before anything is buffered; the stream is poisoned like
    for any framing error, and a server reports it with code ``LIMIT``.
    """


class ConnectionError(VTPUError, builtins.ConnectionError):  # noqa: A001 - intended mix-in
    """The connection to the server failed, closed or could not be made."""


class TimeoutError(VTPUError, builtins.TimeoutError):  # noqa: A001 - intended mix-in
    """A connect or call deadline passed before the server answered."""


class ServerError(VTPUError):
    """The server answered a request with an error.

    :ivar code: the protocol error code (a short upper-case string, see PROTOCOL.md).
    :ivar message: the server's human-readable explanation.
    """

    code = "SERVER"

    def __init__(self, message: str = "", code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class AuthError(ServerError):
    """HELLO was refused: missing or wrong token."""

    code = "AUTH"


class VersionConflict(ServerError):
    """A compare-and-set (``if_version=``) found another version at the coordinate."""

    code = "CONFLICT"


class NotFoundError(ServerError):
    """A request named something that does not exist (an unknown name id, say)."""

    code = "NOT_FOUND"


class LimitError(ServerError):
    """A request exceeded a configured limit (frame size, name table, result size)."""

    code = "LIMIT"


class RequestTimeout(ServerError):
    """A request ran out of its time budget on the server (``--max-request-time``, or the
    connection's ``timeout_ms``) and was stopped.

    A read left nothing behind. A write that works in steps (a delete by pattern, an
    import) says in the message how much of it was done: that part stays done; a BATCH
    answers the operations it completed and this error for the others. Not a client-side
    deadline: that is :class:`TimeoutError`.
    """

    code = "TIMEOUT"


class InternalError(ServerError):
    """The server failed in a way it did not expect (a bug), not because of the request.

    The server logged the traceback and keeps serving; the connection stays open.
    Retrying is pointless unless the server is fixed.
    """

    code = "INTERNAL"


class StorageError(VTPUError):
    """The durable store is unusable: locked by another server, torn or corrupt."""


class PhextError(VTPUError, ValueError):
    """A scroll or coordinate that a .phext file cannot hold, or a malformed .phext file."""


# Codes carried in error replies. Caller-side errors keep their builtin mix-ins on the
# client: a bad coordinate sent to the server comes back as CoordinateError.
CODE_TO_ERROR: dict[str, type[VTPUError]] = {
    "COORD": CoordinateError,
    "ARG": InterfaceError,
    "PROTOCOL": ProtocolError,
    "AUTH": AuthError,
    "CONFLICT": VersionConflict,
    "NOT_FOUND": NotFoundError,
    "LIMIT": LimitError,
    "TIMEOUT": RequestTimeout,
    "INTERNAL": InternalError,
    "STORAGE": StorageError,
    "PHEXT": PhextError,
    "SERVER": ServerError,
}

_ERROR_TO_CODE: dict[type, str] = {cls: code for code, cls in CODE_TO_ERROR.items()}
# An oversized frame is a framing error on the receiver, reported as a limit.
_ERROR_TO_CODE[FrameTooLarge] = "LIMIT"


def error_code(exc: BaseException) -> str:
    """Return the protocol error code for an exception raised while serving a request.

    Only this module's classes have codes: ``ValueError``, ``TypeError``, ``KeyError``
    and every other exception from outside the tree are ``"INTERNAL"`` (the caller logs
    them), so a bug never looks like the client's fault.

    :param exc: any exception.
    :returns: a code from :data:`CODE_TO_ERROR`.
    """
    for cls in type(exc).__mro__:
        code = _ERROR_TO_CODE.get(cls)
        if code is not None:
            return code
    return "INTERNAL"


def is_internal(exc: BaseException) -> bool:
    """Whether ``exc`` is unexpected (outside the tree, or :class:`InternalError`): the
    server logs those with a traceback before answering ``INTERNAL``."""
    return error_code(exc) == "INTERNAL"


def error_from_code(code: str, message: str) -> VTPUError:
    """Build the exception a client raises for an error reply.

    :param code: the reply's error code; unknown codes give a plain :class:`ServerError`.
    :param message: the reply's message.
    :returns: an exception instance (not raised).
    """
    cls = CODE_TO_ERROR.get(code, ServerError)
    if issubclass(cls, ServerError):
        return cls(message, code)
    return cls(message)


def translate_socket_error(exc: BaseException, where: str) -> VTPUError:
    """Turn a socket-level failure into the vtpu error a caller sees.

    The one translation used by the sync and the asyncio client: a timeout (socket or
    asyncio) becomes :class:`TimeoutError`, any other ``OSError`` (TLS errors included:
    a certificate that fails verification, a peer that does not speak TLS) a
    :class:`ConnectionError`; a vtpu error is returned unchanged.

    :param exc: the caught exception.
    :param where: what was being done, e.g. ``"send to 127.0.0.1:1337"``.
    :returns: an exception instance (not raised); raise it ``from exc``.
    """
    if isinstance(exc, VTPUError):
        return exc
    aio = sys.modules.get("asyncio")
    # BlockingIOError (EAGAIN) from a blocking socket: its kernel timeout (SO_RCVTIMEO /
    # SO_SNDTIMEO, as the sync client sets them) expired.
    if isinstance(exc, (builtins.TimeoutError, socket.timeout, BlockingIOError)) or (
        aio is not None and isinstance(exc, aio.TimeoutError)
    ):
        return TimeoutError(f"{where} timed out")
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return ConnectionError(f"{where} failed: {_tls_reason(ssl, exc)}")
    if isinstance(exc, OSError):
        return ConnectionError(f"{where} failed: {exc.strerror or exc}")
    return ConnectionError(f"{where} failed: {type(exc).__name__}: {exc}")


def _tls_reason(ssl, exc: BaseException) -> str:
    """What a TLS failure means, in words (``exc`` is an ``ssl.SSLError``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {exc.verify_message or exc.reason}"
    reason = str(getattr(exc, "reason", None) or exc)
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
                  "RECORD_LAYER_FAILURE"):
        # What a TLS client reads from a plaintext server.
        return (f"TLS {reason}: the other end does not speak TLS (is the server started "
                "with --tls-cert?)")
    if "CERTIFICATE_REQUIRED" in reason:
        return f"TLS {reason}: the server requires a client certificate (tls_cert=)"
    if isinstance(exc, ssl.SSLEOFError):
        return f"TLS connection closed by the other end ({reason})"
    return f"TLS error: {reason}"


def closed_before_hello(exc: BaseException, tls: bool) -> BaseException:
    """The error a client raises when its connection failed before HELLO was answered.

    Two configuration mistakes look exactly like that, so a :class:`ConnectionError`
    gets a hint: a plaintext client talking to a TLS server (which drops a connection
    whose first bytes are not a TLS handshake), and a TLS client without a certificate
    talking to a server that requires one (with TLS 1.3 the server refuses it after the
    client's handshake is done). Anything else is returned unchanged.

    :param exc: what the HELLO exchange failed with.
    :param tls: whether the connection was TLS.
    :returns: the exception to raise (``from exc``).
    """
    if type(exc) is not ConnectionError:
        return exc
    hint = ("if the server requires client certificates, pass tls_cert= and tls_key="
            if tls else "if the server uses TLS, connect with vtpus://HOST:PORT or ssl=True")
    return ConnectionError(f"{exc} before answering HELLO ({hint})")
