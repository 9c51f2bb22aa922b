"""Protected mode and secrets: no open non-loopback server without saying so, and the
token kept out of the process list.

Servers may bind 0.0.0.0 to check that the bind is refused or accepted, but every
connection goes to 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest uses importlib mode

import vtpu  # noqa: E402
from vtpu import errors as E  # noqa: E402
from vtpu.netclient import RemoteEngine  # noqa: E402
from vtpu.server import check_protected, is_loopback, start_server  # noqa: E402
from vtpu.testing import ServerThread  # noqa: E402

from netutil import ServeProcess, StartFailed, make_certs  # noqa: E402


def test_loopback_addresses():
    for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST",
                 "::ffff:127.0.0.1", ["127.0.0.1", "::1"]]:
        assert is_loopback(host), host
    for host in ["0.0.0.0", "::", "", None, "10.0.0.1", "192.168.1.2", "example.com",
                 "::ffff:10.0.0.1", ["127.0.0.1", "0.0.0.0"], []]:
        assert not is_loopback(host), host


def test_check_protected():
    check_protected("127.0.0.1", None)
    check_protected("0.0.0.0", "t")
    check_protected("0.0.0.0", None, unprotected=True)
    with pytest.raises(E.InterfaceError, match=r"protected mode.*--unprotected"):
        check_protected("0.0.0.0", None)
    with pytest.raises(E.InterfaceError, match="protected mode"):
        check_protected("", None)  # every interface


@pytest.mark.integration
def test_start_server_refuses_and_accepts():
    async def refused():
        await start_server(host="0.0.0.0", port=0)

    with pytest.raises(E.InterfaceError, match="protected mode"):
        asyncio.run(refused())
    token = secrets.token_hex(8)
    for kw in [dict(unprotected=True), dict(token=token)]:
        with ServerThread(host="0.0.0.0", **kw) as st:
            c = RemoteEngine("127.0.0.1", st.port, token=kw.get("token"))
            assert c.ping() == "PONG"
            c.close()


@pytest.mark.integration
def test_client_certificates_count_as_protection(tmp_path):
    from vtpu.tls import server_context

    certs = make_certs(str(tmp_path))
    with pytest.raises(E.InterfaceError, match="protected mode"):
        check_protected("0.0.0.0", None, server_context(certs.server_cert, certs.server_key))
    ctx = server_context(certs.server_cert, certs.server_key, ca=certs.ca)
    with ServerThread(host="0.0.0.0", ssl=ctx) as st:
        c = RemoteEngine("127.0.0.1", st.port, tls_ca=certs.ca, tls_cert=certs.client_cert,
                         tls_key=certs.client_key)
        assert c.ping() == "PONG"
        c.close()


# -- vtpu serve -----------------------------------------------------------------------------


@pytest.mark.integration
def test_serve_refuses_a_public_bind_without_a_token(tmp_path):
    srv = ServeProcess(["--host", "0.0.0.0"], str(tmp_path))
    with pytest.raises(StartFailed) as info:
        srv.start()
    assert info.value.returncode == 2
    assert "refusing to listen on '0.0.0.0' without a token (protected mode)" in info.value.log
    assert "Traceback" not in info.value.log
    with ServeProcess(["--host", "0.0.0.0", "--unprotected"], str(tmp_path)) as srv:
        assert "without a token (unprotected)" in srv.log()  # said out loud
        c = vtpu.connect(f"vtpu://127.0.0.1:{srv.port}")
        assert c.cput("1.1.1/1.1.1/1.1.1", "open") == 1
        c.close()
        assert srv.stop() == 0


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _check_enforced(port: int, token: str) -> None:
    with pytest.raises(E.AuthError):
        RemoteEngine(port=port).ping()
    with pytest.raises(E.AuthError):
        RemoteEngine(port=port, token=token + "x").ping()
    c = vtpu.connect(f"vtpu://:{token}@127.0.0.1:{port}")
    assert c.cput("1.1.1/1.1.1/1.1.1", "secret") == 1
    assert token not in repr(c)
    c.close()


@pytest.mark.integration
def test_token_from_the_environment(tmp_path):
    token = secrets.token_hex(16)
    with ServeProcess(["--host", "0.0.0.0"], str(tmp_path), env={"VTPU_TOKEN": token}) as srv:
        _check_enforced(srv.port, token)
        assert token.encode() not in _cmdline(srv.proc.pid)
        assert "token" not in srv.log().lower()  # no warning needed


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_token_file(tmp_path):
    token = secrets.token_hex(16)
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    with ServeProcess(["--token-file", str(path)], str(tmp_path)) as srv:
        _check_enforced(srv.port, token)  # the newline is not part of the token
        assert token.encode() not in _cmdline(srv.proc.pid)
        assert "token" not in srv.log().lower()
    path.chmod(0o644)
    with ServeProcess(["--token-file", str(path)], str(tmp_path)) as srv:
        assert "accessible by group/others (mode 0644)" in srv.log()
        _check_enforced(srv.port, token)
    path.write_text("\n")
    for args, msg in [(["--token-file", str(path)], "the file is empty"),
                      (["--token-file", str(tmp_path / "missing")], "No such file"),
                      (["--host", "0.0.0.0", "--token", ""], "the token is empty")]:
        with pytest.raises(StartFailed) as info:
            ServeProcess(args, str(tmp_path)).start()
        assert info.value.returncode == 2 and msg in info.value.log, info.value.log


@pytest.mark.integration
def test_token_on_the_command_line_warns(tmp_path):
    token = secrets.token_hex(16)
    with ServeProcess(["--token", token], str(tmp_path)) as srv:
        assert "--token shows the token in the process list" in srv.log()
        _check_enforced(srv.port, token)
    with pytest.raises(StartFailed) as info:
        ServeProcess(["--token", token, "--token-file", "x"], str(tmp_path)).start()
    assert info.value.returncode == 2 and "not allowed with" in info.value.log


def test_url_token_forms():
    c = vtpu.connect("vtpu://:s%40cr%3At@127.0.0.1:4242")
    assert c.backend.token == "s@cr:t" and "s%40cr" not in repr(c) and ":***@" in repr(c)
    c = vtpu.connect("vtpu://127.0.0.1:4242?token=abc&timeout=1")
    assert c.backend.token == "abc" and "abc" not in repr(c)
    assert vtpu.connect("vtpu://:url@127.0.0.1:4242", token="kw").backend.token == "kw"
    with pytest.raises(E.InterfaceError, match="password part"):
        vtpu.connect("vtpu://user:pw@127.0.0.1:4242")
