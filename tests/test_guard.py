"""The conftest guard: a test that starts a server must carry the ``integration`` marker."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from vtpu.testing import running_server


def _guard(request):
    """The conftest's guard state (conftest modules are plugins of the run)."""
    for plugin in request.config.pluginmanager.get_plugins():
        if hasattr(plugin, "_GUARD") and hasattr(plugin, "_serving_command"):
            return plugin
    raise AssertionError("the conftest guard is not loaded")


def test_unmarked_test_cannot_start_a_server(request):
    conf = _guard(request)
    with pytest.raises(conf.ServerWithoutMarker, match="not marked @pytest.mark.integration"):
        with running_server():
            pass
    with pytest.raises(conf.ServerWithoutMarker, match="binds a socket"):
        socket.create_server(("127.0.0.1", 0))
    with pytest.raises(conf.ServerWithoutMarker, match=r"python -m vtpu\.server"):
        subprocess.run([sys.executable, "-m", "vtpu.server", "--port", "0"], timeout=5)
    assert len(conf._GUARD.violations) == 3
    assert all(request.node.nodeid in v for v in conf._GUARD.violations)
    # Each would also fail this test at teardown; they were provoked on purpose.
    conf._GUARD.violations.clear()


def test_unmarked_test_may_run_other_subprocesses(request):
    r = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.strip() == "42"
    assert _guard(request)._GUARD.violations == []


@pytest.mark.integration
def test_marked_test_starts_a_server(request):
    with running_server() as (host, port):
        with socket.create_connection((host, port), timeout=10):
            pass
    assert host == "127.0.0.1" and port > 0
    assert _guard(request)._GUARD.violations == []


@pytest.mark.parametrize("argv,what", [
    (["python", "-m", "vtpu.server", "--port", "0"], "python -m vtpu.server"),
    (["python", "-m", "vtpu", "serve", "--port", "0"], "vtpu serve"),
    (["/venv/bin/vtpu", "bench", "--test", "cget"], "vtpu bench"),
    (["vtpu", "demo"], "vtpu demo (on a server it starts)"),
    ("vtpu serve --port 0", "vtpu serve"),
    (["python", "-c", "import socket; socket.socket().bind(('127.0.0.1', 0))"],
     "python -c code that serves on a socket"),
    (["vtpu", "demo", "--url", "mem://"], None),
    (["python", "-m", "vtpu", "--help"], None),
    (["python", "-m", "vtpu", "get", "1.1.1/1.1.1/1.1.1", "--url", "vtpu://h:1"], None),
    (["python", "-c", "print('bind')"], None),
    (["git", "status"], None),
])
def test_serving_commands_are_recognised(request, argv, what):
    assert _guard(request)._serving_command(argv) == what
