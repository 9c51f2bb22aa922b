"""Server durability and lifecycle: group commit before acknowledgement, graceful
SIGTERM, invalidation pushes, RANGE paging edge cases."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vtpu import _core
from vtpu.engine import Engine
from vtpu.netclient import RemoteEngine
from vtpu.storage import Storage
from vtpu.testing import ServerThread

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = _core.parse_pattern("*.*.*/*.*.*/*.*.*")


def key(text: str) -> bytes:
    return _core.pack(_core.parse_coord(text))


class RecordingStorage(Storage):
    """A real Storage that records which keys each commit made durable."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.queued: list = []
        self.durable: set = set()
        self.commits = 0
        self.guard = threading.Lock()

    def put(self, key, *rest):
        with self.guard:
            self.queued.append(key)
        return super().put(key, *rest)

    def put_many(self, rows):
        rows = list(rows)
        with self.guard:
            self.queued.extend(r[0] for r in rows)
        return super().put_many(rows)

    def commit(self):
        n = super().commit()
        with self.guard:
            self.durable.update(self.queued)
            self.queued.clear()
            self.commits += 1
        return n


def test_writes_are_acknowledged_only_after_commit(tmp_path):
    st_ = RecordingStorage(str(tmp_path / "d"), fsync="always")
    eng = Engine(storage=st_)
    with ServerThread(eng) as st:
        c = RemoteEngine(port=st.port)
        for i in range(1, 31):
            k = key(f"1.1.1/1.1.1/1.1.{i}")
            c.put(k, i)
            assert k in st_.durable  # acknowledged => committed
        ks = [key(f"1.1.1/1.1.1/1.2.{i}") for i in range(1, 201)]
        with c.pipeline() as p:
            for i, k in enumerate(ks):
                p.put(k, i)
        assert set(ks) <= st_.durable
        c.put_many(b"".join(ks), np.zeros((200, 4)))
        assert set(ks) <= st_.durable
        c.close()
    eng.close()
    # everything acknowledged is in the store after a restart
    eng2 = Engine(storage=Storage(str(tmp_path / "d")))
    try:
        assert eng2.count(ALL) == 230
        assert eng2.get(key("1.1.1/1.1.1/1.1.30")).content == 30
    finally:
        eng2.close()


def test_pipelined_writes_share_commits(tmp_path):
    st_ = RecordingStorage(str(tmp_path / "d"), fsync="never")
    eng = Engine(storage=st_)
    with ServerThread(eng) as st:
        c = RemoteEngine(port=st.port)
        c.ping()
        before = st_.commits
        with c.pipeline() as p:
            for i in range(1, 101):
                p.put(key(f"1.1.1/1.1.1/1.1.{i}"), i)
        # 100 writes sent in one write: group commit needs far fewer than 100 commits
        assert st_.commits - before < 100
        c.close()
    eng.close()


def _start_subprocess(args, tmp_path):
    log = open(tmp_path / "server.log", "wb")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "vtpu.server", "--port", "0", *args],
                            stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (tmp_path / "server.log").read_text(errors="replace")
        m = re.search(r"serving on [\d.]+:(\d+)", text)
        if m:
            return proc, int(m.group(1)), log
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {text}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("server did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(tmp_path, sig):
    data = str(tmp_path / "data")
    proc, port, log = _start_subprocess(["--data", data, "--fsync", "never"], tmp_path)
    try:
        c = RemoteEngine(port=port)
        c.put_many(_core.pack_many(_core.parse_coords(
            [f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 51)])), list(range(50)))
        c.close()
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    eng = Engine(storage=Storage(data))  # the lock was released, the data is there
    try:
        assert eng.count(ALL) == 50
    finally:
        eng.close()


def test_invalidation_pushes():
    with ServerThread(Engine()) as st:
        tracker = RemoteEngine(port=st.port, track=True)
        seen = []
        tracker.on_push = lambda kind, payload: seen.append((kind, payload))
        tracker.ping()
        writer = RemoteEngine(port=st.port)
        k = key("1.1.1/1.1.1/1.1.1")
        writer.put(k, "v")
        writer.delete_range(ALL)
        tracker.ping()  # pushes arrive in the tracker's stream before this reply
        assert ("invalidate", k) in seen and ("invalidate", None) in seen
        plain = RemoteEngine(port=st.port)  # did not ask: gets no pushes
        plain.ping()
        writer.put(k, "w")
        assert plain.get(k).content == "w"
        for c in (tracker, writer, plain):
            c.close()


def test_range_limit_edges():
    with ServerThread(Engine(), page_size=4) as st:
        c = RemoteEngine(port=st.port)
        c.put_many(_core.pack_many(_core.parse_coords(
            [f"1.1.1/1.1.1/1.1.{i}" for i in range(1, 11)])), list(range(10)))
        assert c.range(ALL, limit=0) == []
        assert c.range(ALL, limit=0, keys_only=True).shape == (0, 9)
        assert [s.content for s in c.range(ALL, limit=4)] == [0, 1, 2, 3]
        assert [s.content for s in c.range(ALL, limit=5)] == [0, 1, 2, 3, 4]
        assert [s.content for s in c.range(ALL, limit=8)] == list(range(8))
        assert [s.content for s in c.range(ALL)] == list(range(10))
        assert len(c.range(ALL, keys_only=True)) == 10
        c.close()
