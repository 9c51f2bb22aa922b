"""Shared fixtures, and the guard that keeps ``-m "not integration"`` free of servers.

The ``client`` fixture runs the same instruction tests against ``mem://`` and a real
server in a background thread on 127.0.0.1, port 0, started with a timeout by
:func:`vtpu.testing.running_server`; every test gets a fresh engine. Its server
parameter carries the ``integration`` marker, so ``test_x[server]`` is an integration
test and ``test_x[mem]`` is not.

The guard: while a test runs, binding or listening on a socket in this process
(:class:`vtpu.testing.ServerThread`, ``running_server``, ``vtpu.cli.demo()``, a raw
``socket.create_server``), or starting a subprocess that serves (``vtpu serve``,
``python -m vtpu.server``, ``vtpu demo`` without ``--url``, ``vtpu bench``, or
``python -c`` code that binds a socket), raises :class:`ServerWithoutMarker` unless the
test carries ``@pytest.mark.integration``; the test is also failed at teardown in case
the error was swallowed on its way out. A new server-backed test therefore cannot slip
into the fast, server-free selection unmarked.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess

import pytest

import vtpu


class ServerWithoutMarker(RuntimeError):
    """A test started a server but is not marked ``integration``."""


class _Guard:
    """The test being run and what it did that it was not marked for."""

    item = None
    violations: list = []


_GUARD = _Guard()


def _require_integration(what: str) -> None:
    item = _GUARD.item
    if item is None or item.get_closest_marker("integration") is not None:
        return
    msg = (f"{item.nodeid} {what} but is not marked @pytest.mark.integration "
           "(mark the test, its module, or the fixture parameter that starts the server)")
    _GUARD.violations.append(msg)
    raise ServerWithoutMarker(msg)


_SERVING_COMMANDS = {"serve", "bench"}


def _serving_command(args) -> str | None:
    """What a subprocess's argv starts that serves, or None."""
    if isinstance(args, (str, bytes)):
        argv = shlex.split(os.fsdecode(args))
    else:
        try:
            argv = [os.fsdecode(a) for a in args]
        except TypeError:
            return None
    for i, a in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        rest = argv[i + 2:]
        if a == "-m" and nxt == "vtpu.server":
            return "python -m vtpu.server"
        is_cli = (a == "-m" and nxt == "vtpu") or (i == 0 and os.path.basename(a) == "vtpu")
        if is_cli:
            cmd_args = rest if a == "-m" else argv[1:]
            cmd = cmd_args[0] if cmd_args else ""
            if cmd in _SERVING_COMMANDS:
                return f"vtpu {cmd}"
            if cmd == "demo" and "--url" not in cmd_args:
                return "vtpu demo (on a server it starts)"
        if a == "-c" and any(s in nxt for s in (".bind(", ".listen(", "create_server",
                                                  "start_server", "running_server",
                                                  "ServerThread", "vtpu.server")):
            return "python -c code that serves on a socket"
    return None


_real_bind = socket.socket.bind
_real_listen = socket.socket.listen
_real_popen_init = subprocess.Popen.__init__


def _guarded_bind(self, address):
    _require_integration(f"binds a socket to {address!r}")
    return _real_bind(self, address)


def _guarded_listen(self, *args):
    _require_integration("listens on a socket")
    return _real_listen(self, *args)


def _guarded_popen_init(self, args, *rest, **kw):
    what = _serving_command(args)
    if what is not None:
        _require_integration(f"starts a server subprocess ({what})")
    return _real_popen_init(self, args, *rest, **kw)


def pytest_configure(config):
    socket.socket.bind = _guarded_bind
    socket.socket.listen = _guarded_listen
    subprocess.Popen.__init__ = _guarded_popen_init


def pytest_unconfigure(config):
    socket.socket.bind = _real_bind
    socket.socket.listen = _real_listen
    subprocess.Popen.__init__ = _real_popen_init


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before any fixture of the item (module-scoped ones included) is set up.
    _GUARD.item = item
    _GUARD.violations = []


@pytest.fixture(autouse=True)
def _servers_need_the_integration_marker(request):
    """Fail a test that started a server without the ``integration`` marker."""
    yield
    if _GUARD.violations:
        pytest.fail("; ".join(_GUARD.violations), pytrace=False)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["mem", pytest.param("server", marks=pytest.mark.integration)])
def client(request):
    """A client over a fresh store: embedded (``mem://``) or a loopback server."""
    if request.param == "mem":
        c = vtpu.connect("mem://")
        yield c
        c.close()
        return
    from vtpu.testing import running_server

    with running_server() as (host, port):
        c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
        try:
            yield c
        finally:
            c.close()


@pytest.fixture
def mem():
    """An embedded client only (engine internals are inspected)."""
    return vtpu.connect("mem://")
