"""Shared fixtures: the same instruction tests run against ``mem://`` and a real server.

The server runs in a background thread on 127.0.0.1, port 0, started with a timeout by
:func:`vtpu.testing.running_server`; every test gets a fresh engine.
"""
import pytest

import vtpu


@pytest.fixture(params=["mem", "server"])
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

