"""What runs a benchmark: the vtpu server subprocess under test, the registry of peer
servers (started on first use, stopped at the end), the Redis and memcached clients, and
:class:`Ctx`, the context every benchmark gets (with CPU pinning for latency runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import peers as _peers
from .report import Report

class LocalServer:
    """A vtpu server subprocess on 127.0.0.1, stopped by its pid.

    :param data: data directory for a durable server, or None for memory only.
    :param fsync: fsync policy with ``data`` ("always", "everysec", "never").
    """

    def __init__(self, data: Optional[str] = None, fsync: Optional[str] = None):
        self.data, self.fsync = data, fsync
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.host = _peers.LOOPBACK
        self._errfile = None

    @property
    def pid(self) -> int:
        """The server's pid (0 before start)."""
        return self.proc.pid if self.proc else 0

    @property
    def url(self) -> str:
        """``vtpu://127.0.0.1:PORT``."""
        return f"vtpu://{self.host}:{self.port}"

    def _argv(self) -> List[str]:
        # Port 0: the server binds a free port itself and prints it (no race).
        argv = [sys.executable, "-m", "vtpu.server", "--host", self.host, "--port", "0"]
        if self.data:
            argv += ["--data", self.data]
            if self.fsync:
                argv += ["--fsync", self.fsync]
        return argv

    def start(self, timeout: float = 30.0) -> "LocalServer":
        """Start the server on a free port and wait until it accepts connections.

        :param timeout: seconds to wait for the server's "serving on HOST:PORT" line.
        :returns: self.
        :raises RuntimeError: when the server does not come up (with its stderr tail).
        """
        self._errfile = tempfile.TemporaryFile()
        env = dict(os.environ)
        # The harness may run from a source tree; make the child import the same vtpu
        # (this file is <root>/vtpu/bench/harness.py).
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._errfile,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = self._stderr_tail(whole=True)
            for line in text.splitlines():
                if "serving on" in line:
                    hostport = line.split("serving on", 1)[1].split()[0]
                    try:
                        self.port = int(hostport.rsplit(":", 1)[1])
                    except (IndexError, ValueError):
                        continue
                    if _peers.wait_port(self.host, self.port, 10, self.proc):
                        return self
            time.sleep(0.05)
        last = self._stderr_tail()
        self.stop()
        raise RuntimeError(f"vtpu server did not start: {last or 'no serving line'}")

    def _stderr_tail(self, whole: bool = False) -> str:
        if not self._errfile:
            return ""
        try:
            self._errfile.seek(0)
            data = self._errfile.read()
            return (data if whole else data[-800:]).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by pid (SIGTERM, then SIGKILL). Safe to call twice.

        :param timeout: seconds to wait for a clean exit.
        """
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        if self._errfile:
            try:
                self._errfile.close()
            except OSError:
                pass
            self._errfile = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Peers:
    """Starts peer servers on first use and stops them all at the end.

    :param report: where skip lines go.
    :param allowed: peer names that may be used (None = all).
    """

    def __init__(self, report: Report, allowed: Optional[set] = None):
        self.report, self.allowed = report, allowed
        self.running: Dict[str, Optional[_peers.PeerProcess]] = {}

    def get(self, name: str) -> Optional[_peers.PeerProcess]:
        """Return the running peer ``name``, starting it if needed; None when skipped.

        :param name: echo, redis, memcached or etcd.
        :returns: the peer or None.
        """
        if name not in self.running:
            if self.allowed is not None and name not in self.allowed:
                self.report.skip(f"skip {name}: not selected (--peers)")
                self.running[name] = None
            else:
                self.running[name] = _peers.start_peer(name, self.report.skip)
        p = self.running[name]
        if p is not None and not p.alive():
            self.report.skip(f"skip {name}: the server exited")
            self.running[name] = None
            return None
        return p

    def pids(self) -> List[int]:
        """Pids of the running peers."""
        return [p.pid for p in self.running.values() if p is not None and p.alive()]

    def stop(self) -> None:
        """Stop every peer started here."""
        for p in self.running.values():
            if p is not None:
                p.stop()
        self.running.clear()


def redis_client(peer: _peers.PeerProcess, report: Report):
    try:
        import redis  # type: ignore
    except ImportError:
        report.skip("skip redis: the redis Python package is missing (pip install redis hiredis)")
        return None
    r = redis.Redis(host=peer.host, port=peer.port, socket_timeout=30)
    try:
        import hiredis  # type: ignore  # noqa: F401
    except ImportError:
        report.skip("note redis: hiredis missing, redis-py uses its pure-Python parser")
    r.ping()
    return r


def memcached_client(peer: _peers.PeerProcess, report: Report):
    try:
        from pymemcache.client.base import Client  # type: ignore
    except ImportError:
        report.skip("skip memcached: the pymemcache package is missing (pip install pymemcache)")
        return None
    return Client((peer.host, peer.port), no_delay=True, timeout=30, connect_timeout=10)


# =========================================================================== context


class _NoPin:
    """Stands in for :class:`vtpu.bench.peers.Pinned` when pinning is off."""

    ok = False

    def __enter__(self) -> "_NoPin":
        return self

    def __exit__(self, *exc) -> None:
        return None


class Ctx:
    """What every test gets: the client, the server, the peers, the report and the sizes.

    :param client: vtpu client of the server under test.
    :param url: that server's URL.
    :param server: the LocalServer started by the harness, or None for ``--host``.
    :param peers: the Peers registry.
    :param report: the Report.
    :param sizes: the size parameters (DEFAULTS overridden by options).
    :param pin: pin latency runs to one CPU.
    :param show: show progress lines.
    :param big: also run the 10M-scroll variants (``--big``).
    """

    def __init__(self, client, url: str, server: Optional[LocalServer], peers: Peers,
                 report: Report, sizes: dict, pin: bool = True, show: bool = True,
                 big: bool = False):
        self.client, self.url, self.server = client, url, server
        self.peers, self.report, self.sizes = peers, report, sizes
        self.pin, self.show, self.big = pin, show, big
        self.cpu = _peers.pick_cpu()
        self.dataset: Optional[np.ndarray] = None  # the 1M CRANGE/CNEAREST coordinates
        self.dataset_loaded = False
        self.embedded = None  # a mem:// client holding the same data set, made on first use

    def close(self) -> None:
        """Close the embedded store (the client and servers are the harness's)."""
        if self.embedded is not None:
            self.embedded.close()
            self.embedded = None

    def pinned(self, extra_pids: Sequence[int] = ()) -> _peers.Pinned:
        """Pin this process, the vtpu server and the running peers to one CPU.

        :param extra_pids: more pids to pin.
        :returns: the context manager (a no-op when pinning is off).
        """
        if not self.pin or self.server is None:
            # An outside server (--host) cannot be pinned from here: pin nothing rather
            # than half the pair, and the rows say "not pinned".
            return _NoPin()
        pids = ([self.server.pid] if self.server else []) + self.peers.pids() + list(extra_pids)
        return _peers.Pinned(self.cpu, pids)
