"""Same input, same answer, on ``mem://``, ``file://`` and a real server.

Regression tests for results that used to differ from the specification (PROTOCOL §5,
DESIGN §2-3) or between backends: CKG frontiers and edge contents, CATTEND's modes and
errors, name ids never interned, reads that must not intern, and error messages.
"""
import struct

import numpy as np
import pytest

import vtpu
from vtpu import CoordinateError, InterfaceError, LimitError, NotFoundError


@pytest.fixture(params=["mem", "file", pytest.param("server", marks=pytest.mark.integration)])
def store(request, tmp_path):
    """A client over a fresh store: embedded, embedded durable, or a loopback server."""
    if request.param == "mem":
        c = vtpu.connect("mem://")
    elif request.param == "file":
        c = vtpu.connect(f"file://{tmp_path}/data")
    else:
        from vtpu.testing import running_server

        with running_server() as (host, port):
            c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
            try:
                yield c
            finally:
                c.close()
        return
    try:
        yield c
    finally:
        c.close()


def _coords(scrolls):
    return [s.coordinate for s in scrolls]


# -- CKG ------------------------------------------------------------------------------------

def test_ckg_drops_only_the_rows_a_delta_takes_out_of_range(store):
    for c in ["6.0.0/0.0.0/0.0.0", "6.5.0/0.0.0/0.0.0", "6.4.1/0.0.0/0.0.0"]:
        store.cput(c, "node")
    # 6.0.0 - 1 leaves the range; 6.5.0 -> 6.4.1 (stored), 6.4.1 has component 3 = 1 -> 2 (not 0)
    got = store.ckg("6.*.0/0.0.0/0.0.0", ["+0.-1.+1/+0.+0.+0/+0.+0.+0"], hops=1)
    assert _coords(got) == ["6.4.1/0.0.0/0.0.0"]


def test_ckg_multi_hop_keeps_the_rows_still_in_range(store):
    # Hop 1 fans out from 1.5.0 to 2.0.0, 2.1.0, 2.2.0 (a list pointer); at hop 2 the
    # relation "library + 1, shelf - 1" takes 2.0.0 out of range, and still leads 2.1.0
    # and 2.2.0 on to 3.0.0 and 3.1.0.
    fan = ["2.0.0/0.0.0/0.0.0", "2.1.0/0.0.0/0.0.0", "2.2.0/0.0.0/0.0.0"]
    store.cput("1.5.0/0.0.0/0.0.0", "start")
    store.cput("1.5.1/0.0.0/0.0.0", fan)
    for c in fan + ["3.0.0/0.0.0/0.0.0", "3.1.0/0.0.0/0.0.0"]:
        store.cput(c, "node")
    rels = ["+0.+0.+1/+0.+0.+0/+0.+0.+0", "+1.-1.+0/+0.+0.+0/+0.+0.+0"]
    assert _coords(store.ckg("1.5.0/0.0.0/0.0.0", rels, hops=1)) == fan
    got = store.ckg("1.5.0/0.0.0/0.0.0", rels, hops=2)
    assert _coords(got) == ["3.0.0/0.0.0/0.0.0", "3.1.0/0.0.0/0.0.0"]


@pytest.mark.parametrize("form", ["key", "keys", "row", "rows", "text", "text_list", "mixed"])
def test_ckg_follows_every_coordinate_form_of_an_edge(store, form):
    t1, t2 = "2.2.2/2.2.2/2.2.2", "3.3.3/3.3.3/3.3.3"
    k1, k2 = struct.pack(">9H", *[2] * 9), struct.pack(">9H", *[3] * 9)
    content = {
        "key": k1,
        "keys": [k1, k2],
        "row": np.array([2] * 9, dtype=np.uint16),
        "rows": np.array([[2] * 9, [3] * 9], dtype=np.uint16),
        "text": "  2.2.2/2.2.2/2.2.2\n",
        "text_list": [t1, t2],
        "mixed": [t1, k2],
    }[form]
    store.cput("1.1.1/1.1.1/1.1.2", content)
    store.cput(t1, "target one")
    store.cput(t2, "target two")
    got = store.ckg("1.1.1/1.1.1/1.1.1", ["+0.0.0/0.0.0/0.0.1"])
    want = [t1] if form in ("key", "row", "text") else [t1, t2]
    assert _coords(got) == want


@pytest.mark.parametrize("content", [
    b"\x00" * 17, [1, 2, 3, 4, 5, 6, 7, 8, 9], np.arange(9, dtype=np.int64), "not a coordinate",
    [], ["2.2.2/2.2.2/2.2.2", "nope"], np.zeros((0, 9), np.uint16), {"to": "2.2.2/2.2.2/2.2.2"},
])
def test_ckg_edge_that_is_no_coordinate_is_the_next_frontier(store, content):
    store.cput("1.1.1/1.1.1/1.1.2", content)
    store.cput("2.2.2/2.2.2/2.2.2", "not reached")
    got = store.ckg("1.1.1/1.1.1/1.1.1", ["+0.0.0/0.0.0/0.0.1"])
    assert _coords(got) == ["1.1.1/1.1.1/1.1.2"]
