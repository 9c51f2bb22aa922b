"""TLS for the server and both clients, with the stdlib :mod:`ssl` module.

TLS sits below the framing (PROTOCOL.md §1): inside the encrypted stream a connection
carries exactly the bytes of a plaintext one. This module only builds the
:class:`ssl.SSLContext` each side uses, so the server, the sync client and the asyncio
client agree on one set of defaults (TLS 1.2 or newer, certificates and host names
verified unless told otherwise).

The client options follow redis-py's: a ``vtpus://`` URL (or ``ssl=True``) turns TLS
on, ``tls_ca`` names the one CA file the server's certificate must chain to (default:
the system's trust store), ``tls_verify=False`` turns every check off (encryption without
authentication: tests and private networks only), ``server_hostname`` is the name the
certificate must carry (default: the host connected to), and ``tls_cert``/``tls_key``
present a client certificate to a server started with ``--tls-ca``.
"""
from __future__ import annotations

import ssl as _ssl
from typing import Any

from .errors import InterfaceError

__all__ = ["server_context", "client_context"]


def _load(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise InterfaceError(f"cannot load {what} {args[0]!r}: {detail}") from exc


def server_context(cert: str, key: str | None = None, ca: str | None = None) -> _ssl.SSLContext:
    """The context of a TLS server.

    :param cert: PEM file with the server's certificate (and any intermediates).
    :param key: PEM file with its private key (``None``: the key is in ``cert``).
    :param ca: PEM file of the CA(s) client certificates must chain to; when given,
        every client must present a valid certificate (mutual TLS).
    :returns: a server-side :class:`ssl.SSLContext`.
    :raises InterfaceError: a file is missing or does not hold what it should.
    """
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _ssl.TLSVersion.TLSv1_2
    _load("TLS certificate/key", ctx.load_cert_chain, cert, key)
    if ca is not None:
        _load("TLS client CA file", ctx.load_verify_locations, ca)
        ctx.verify_mode = _ssl.CERT_REQUIRED
    return ctx


def client_context(ssl: Any = None, tls_ca: str | None = None, tls_verify: bool = True,
                   tls_cert: str | None = None,
                   tls_key: str | None = None) -> _ssl.SSLContext | None:
    """The context a client connects with, or ``None`` for plaintext.

    :param ssl: ``None``/``False``: plaintext unless another option below asks for TLS;
        ``True``: TLS with the default context; an :class:`ssl.SSLContext`: used as it
        is (then the other options must not be given).
    :param tls_ca: PEM file of the CA the server's certificate must chain to (implies
        TLS); default: the system's trust store.
    :param tls_verify: ``False`` checks neither the certificate nor the host name.
    :param tls_cert: PEM file with a client certificate (implies TLS).
    :param tls_key: its private key (``None``: the key is in ``tls_cert``).
    :returns: an :class:`ssl.SSLContext`, or ``None`` for a plaintext connection.
    :raises InterfaceError: contradictory options, or a file that cannot be loaded.
    """
    if isinstance(ssl, _ssl.SSLContext):
        if tls_ca is not None or tls_cert is not None or not tls_verify:
            raise InterfaceError("pass either ssl=<SSLContext> or the tls_* options, not both")
        return ssl
    if ssl not in (None, True, False):
        raise InterfaceError(f"ssl must be a bool or an ssl.SSLContext, got {type(ssl).__name__}")
    wants = tls_ca is not None or tls_cert is not None
    if ssl is False and wants:
        raise InterfaceError("ssl=False contradicts tls_ca/tls_cert")
    if not ssl and not wants:
        return None
    if tls_ca is None:
        ctx = _ssl.create_default_context(_ssl.Purpose.SERVER_AUTH)
    else:
        # Only this CA, not the system's store as well: the caller named who it trusts.
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        _load("TLS CA file", ctx.load_verify_locations, tls_ca)
    ctx.minimum_version = _ssl.TLSVersion.TLSv1_2
    # A peer closing without close_notify reads as a plain EOF ("server closed the
    # connection"): the framing already tells a cut frame from a whole one.
    ctx.options |= getattr(_ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if not tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    if tls_cert is not None:
        _load("TLS client certificate/key", ctx.load_cert_chain, tls_cert, tls_key)
    return ctx
