"""Batched reads and pipelines end to end, over a real server: every field of every
scroll survives the column codec both ways (the codec itself is tested in
``tests/test_codec.py``). No timing assertions.
"""
from __future__ import annotations

import numpy as np
import pytest

import vtpu
from vtpu.results import Scrolls
from vtpu.testing import running_server

MIXED = [
    b"v" * 32, "héllo", 3, -5, 2.5, None, True, [1, "a"], {"x": b"y"},
    np.arange(3, dtype=np.float32), "x" * 40, "y" * 300, b"z" * 70000, 1 << 63, "",
    b"", 0,
]


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.integration
def test_remote_get_many_and_pipelines_end_to_end():
    with running_server() as (host, port):
        c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
        try:
            coords = [f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 40)]
            c.cput_many(coords, [MIXED[i % len(MIXED)] for i in range(len(coords))])
            got = c.cget_many(coords + ["9.9.9/9.9.9/9.9.9"])
            assert len(got) == 40 and got[-1] is None
            assert [s.coordinate for s in got[:-1]] == coords
            assert got[:-1] == [c.cget(x) for x in coords]
            with c.pipeline() as p:
                for x in coords[:5]:
                    p.cget(x)
                p.cput(coords[0], "new")
                p.ccount("1.1.1/1.1.1/1.1.*")
                p.cget(coords[0])
            res = p.results
            assert res[5] == 2 and res[6] == 39 and res[7].content == "new"
            assert [s.coordinate for s in res[:5]] == coords[:5]
        finally:
            c.close()


@pytest.mark.integration
def test_remote_range_pages_of_every_content_kind():
    # RANGE pages are read by the compiled column reader; a small page size makes the
    # client follow several of them.
    with running_server(page_size=7) as (host, port):
        c = vtpu.connect(f"vtpu://{host}:{port}", timeout=30)
        m = vtpu.connect("mem://")
        try:
            coords = [f"2.2.2/2.2.2/2.2.{i}" for i in range(1, 30)]
            contents = [MIXED[i % len(MIXED)] for i in range(len(coords))]
            for cl in (c, m):
                cl.cput_many(coords, contents)
            got, want = c.crange("2.2.2/2.2.2/2.2.*"), m.crange("2.2.2/2.2.2/2.2.*")
            assert type(got) is type(want) is Scrolls  # one result type, joined from 5 pages
            assert len(got) == len(want) == len(coords) and got.keys == want.keys
            for g, w in zip(got, want):
                assert (g.coordinate, g.version) == (w.coordinate, w.version)
                if isinstance(w.content, np.ndarray):
                    assert g.content.dtype == w.content.dtype
                    assert np.array_equal(g.content, w.content)
                else:
                    assert type(g.content) is type(w.content) and g.content == w.content
            assert [s.coordinate for s in c.crange("2.2.2/2.2.2/2.2.*", limit=10)] == \
                coords[:10]
        finally:
            c.close()
            m.close()
