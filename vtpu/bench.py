"""``vtpu bench``: the benchmark harness (DESIGN §6a, §8).

Reruns the prototype's benchmarks against a real vtpu server over the binary protocol and
prints, beside each measurement, the prototype's projection, the prototype's own measured
figure where it gave one, and peers measured *in the same run* (a bare TCP echo floor,
Redis via redis-py + hiredis, memcached via pymemcache, etcd, a Python linear scan, numpy),
as ratios. Peers that are missing are skipped with one line.

Usage (also ``python -m vtpu.bench``)::

    vtpu bench [--all | --test cget|cput|crange|nearest|sparse|moe|kg|sync ...]
               [--trials N] [--export FILE.json] [--plot FILE.png] [--host H --port P]

Without ``--host`` a loopback server is started (and stopped) by the harness. Latency runs
pin the client and every server to one CPU (``os.sched_setaffinity``) because on a small
VM whether they share a CPU changes loopback latency several-fold.

Data layout (chosen so no test disturbs another's counts): the CRANGE/CNEAREST data set has
components 0-5 = the six decimal digits of its index and components 6-8 = ``1.1.1``; every
other test writes under first component >= 100 with component 6 >= 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import queue as _queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from . import peers as _peers

TESTS = ("cget", "cput", "crange", "nearest", "sparse", "moe", "kg", "sync")

# The prototype's figures (seed README "Benchmark Results" / "Validation Summary").
PROTO = {
    "cget_projection_us": (50.0, 100.0),
    "cget_http_us": 1245.0,  # prototype median over HTTP/JSON
    "cput_http_us": 1200.0,  # "~1200 us (includes HTTP)"
    "crange_ms_per_100": 10.0,  # "CRANGE: 10 ms (100 items)"
    "sparse_projection_x": 10.0,
    "sparse_theoretical_x": 16.0,
    "sync_projection_x": 1_000_000.0,
    "sync_prototype_x": 18_000.0,
    "batch_improvement_x": (10.0, 20.0),  # "Expected improvement: 10-20x"
}

# Generated data regions (see module docstring).
R_LATENCY, R_SPARSE, R_KG, R_SYNC, R_CONC = 101, 102, 103, 104, 105

DEFAULTS = {
    "trials": 2000,
    "n_scrolls": 1_000_000,
    "batch": 10_000,
    "pipeline": 1000,
    "clients": 64,
    # 64 clients as 16 processes x 4 threads: with more threads per process, a client
    # thread whose reply has arrived waits up to the GIL switch interval (5 ms) to read
    # it, and p99 measures the client harness rather than the server (see _concurrent).
    "client_procs": 16,
    "conc_requests": 500,
    "agents": 4,
    "writes": 1000,
    "seq": 2048,
    "window": 128,
    "dim": 64,
    "moe_tokens": 1_000_000,
    "moe_experts": 64,
    "kg_nodes": 20_000,
    "kg_hops": 3,
    "kg_trials": 500,
    "nearest_trials": 100,
}

VALUE = b"v" * 32  # the small scroll content used by every key-value comparison


# =========================================================================== utilities


def log(msg: str) -> None:
    """Print one progress/status line to stderr.

    :param msg: the line.
    """
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """A simple stderr progress line (no dependency), redrawn at most twice a second.

    :param label: what is progressing.
    :param total: number of steps.
    :param enabled: False silences it.
    """

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(1, int(total)), enabled
        self.t0 = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        """Report ``done`` steps finished.

        :param done: steps done so far.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < (0.5 if self._tty else 5.0) and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total
        line = f"  {self.label}: {done:,}/{self.total:,} ({pct:.0f}%, {now - self.t0:.1f}s)"
        if self._tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            if done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            log(line)

    def done(self) -> None:
        """Mark the work finished."""
        self.update(self.total)


def stats_us(samples: Sequence[float]) -> dict:
    """Summarise latency samples (microseconds).

    :param samples: per-operation latencies in µs.
    :returns: dict with n, p50, p95, p99, mean, min, max (µs).
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def sample_latency(fn: Callable[[int], Any], n: int, warmup: int = 50) -> np.ndarray:
    """Time ``fn(i)`` for i in 0..n-1, one call at a time, with the GC paused.

    :param fn: the operation; gets the iteration number.
    :param n: number of timed calls.
    :param warmup: untimed calls first.
    :returns: float64 array of n latencies in µs.
    """
    for i in range(min(warmup, n)):
        fn(i)
    out = np.empty(n, dtype=np.float64)
    pc = time.perf_counter_ns
    was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            fn(i)
            out[i] = pc() - t0
    finally:
        if was:
            gc.enable()
    return out / 1000.0


def interleaved(samplers: Dict[str, Callable[[int], Any]], n: int, rounds: int = 5,
                warmup: int = 50, progress: Optional[Progress] = None) -> Dict[str, np.ndarray]:
    """Time several operations in alternating rounds so drift hits them all alike.

    :param samplers: name -> fn(i).
    :param n: timed calls per name in total.
    :param rounds: number of alternating rounds.
    :param warmup: untimed warm-up calls per name.
    :param progress: optional progress line (steps = rounds * len(samplers)).
    :returns: name -> µs array of length n.
    """
    rounds = max(1, min(rounds, n))
    per = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    out: Dict[str, List[np.ndarray]] = {k: [] for k in samplers}
    for k, fn in samplers.items():
        for i in range(min(warmup, n)):
            fn(i)
    step = 0
    for r in range(rounds):
        for k, fn in samplers.items():
            base = sum(per[:r])
            out[k].append(sample_latency(lambda i, fn=fn, base=base: fn(base + i), per[r], 0))
            step += 1
            if progress:
                progress.update(step)
    return {k: np.concatenate(v) for k, v in out.items()}


def best_of(fn: Callable[[], Any], reps: int = 3) -> float:
    """Run ``fn`` ``reps`` times; return the fastest wall time in seconds.

    :param fn: the work.
    :param reps: repetitions (>= 1).
    :returns: seconds.
    """
    best = math.inf
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn: Callable[[], Any], reps: int = 5) -> float:
    """Run ``fn`` ``reps`` times; return the median wall time in seconds.

    :param fn: the work.
    :param reps: repetitions (>= 1).
    :returns: seconds.
    """
    ts = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def machine_info() -> dict:
    """Describe the machine, interpreter and peer versions for the JSON export.

    :returns: dict (cpu model, cores, affinity, memory, OS, python, numpy, vtpu, peers).
    """
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        from ._version import __version__ as vv
    except ImportError:  # pragma: no cover
        vv = "unknown"
    core_compiled = None
    try:
        from . import _core  # noqa: F401
        core_compiled = getattr(_core, "__file__", "")
    except ImportError:
        pass
    return {
        "cpu_model": model, "cores": os.cpu_count(), "affinity": _peers.cpu_list(),
        "memory_bytes": mem, "os": platform.platform(), "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(), "numpy": np.__version__,
        "vtpu": vv, "vtpu_core": core_compiled, "peers": _peers.peer_versions(),
    }


# =========================================================================== report


class Report:
    """Collects summary rows, per-test details and skip lines; prints and exports them."""

    def __init__(self):
        self.rows: List[dict] = []
        self.tests: Dict[str, dict] = {}
        self.skipped: List[str] = []
        self.notes: List[str] = []
        self.errors: Dict[str, str] = {}

    def skip(self, line: str) -> None:
        """Record (and print) that a peer or a part was skipped.

        :param line: the reason, one line.
        """
        if line not in self.skipped:
            self.skipped.append(line)
            log("  " + line)

    def row(self, test: str, measure: str, vtpu: Optional[float], unit: str, *,
            projection: Optional[str] = None, prototype: Optional[str] = None,
            peer: Optional[str] = None, peer_value: Optional[float] = None,
            better: str = "lower", ratio_kind: str = "speedup",
            target: Optional[str] = None, target_ok: Optional[bool] = None,
            note: Optional[str] = None) -> dict:
        """Add one summary row.

        ``ratio`` is computed so that > 1 means vtpu is better: for ``better="lower"``
        (latencies) it is peer/vtpu, for ``"higher"`` (throughput) vtpu/peer. With
        ``ratio_kind="of_floor"`` it is vtpu/peer (how many times the floor).

        :param test: test name.
        :param measure: what was measured.
        :param vtpu: vtpu's value.
        :param unit: unit of vtpu and peer_value.
        :param projection: the prototype's projection, as text.
        :param prototype: the prototype's measured figure, as text.
        :param peer: peer name.
        :param peer_value: the peer's value in the same unit.
        :param better: "lower" or "higher".
        :param ratio_kind: "speedup" or "of_floor".
        :param target: DESIGN §8 target, as text.
        :param target_ok: whether the target was met (None = not applicable).
        :param note: free text.
        :returns: the row dict.
        """
        ratio = None
        if vtpu is not None and peer_value is not None and vtpu > 0 and peer_value > 0:
            if ratio_kind == "of_floor":
                ratio = vtpu / peer_value
            elif better == "lower":
                ratio = peer_value / vtpu
            else:
                ratio = vtpu / peer_value
        r = {"test": test, "measure": measure, "vtpu": vtpu, "unit": unit,
             "projection": projection, "prototype": prototype, "peer": peer,
             "peer_value": peer_value, "ratio": ratio, "ratio_kind": ratio_kind,
             "better": better, "target": target, "target_ok": target_ok, "note": note}
        self.rows.append(r)
        return r

    # ------------------------------------------------------------------ printing

    @staticmethod
    def _fmt(v: Optional[float], unit: str = "") -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return "-"
        a = abs(v)
        if a >= 1e6:
            s = f"{v / 1e6:.2f}M"
        elif a >= 1e4:
            s = f"{v / 1e3:.1f}k"
        elif a >= 100:
            s = f"{v:.0f}"
        elif a >= 10:
            s = f"{v:.1f}"
        else:
            s = f"{v:.2f}"
        return f"{s} {unit}".strip()

    @staticmethod
    def ratio_text(r: dict) -> str:
        """Format a row's ratio for the table.

        :param r: a row.
        :returns: text like "1.9x faster", "0.7x (slower)", "1.25x floor" or "-".
        """
        x = r.get("ratio")
        if x is None:
            return "-"
        if r.get("ratio_kind") == "of_floor":
            return f"{x:.2f}x floor"
        if x >= 1:
            return f"{x:,.1f}x better" if x < 1000 else f"{x:,.0f}x better"
        return f"{x:.2f}x (worse)"

    def table(self, notes: bool = True) -> str:
        """Render the summary table as text.

        :param notes: include the note column.
        :returns: the table.
        """
        head = ["test", "measure", "vtpu", "prototype (projection | measured)", "peer (same run)",
                "ratio", "target"] + (["note"] if notes else [])
        lines = []
        for r in self.rows:
            tgt = "-"
            if r.get("target"):
                mark = {True: "met", False: "MISSED", None: ""}[r.get("target_ok")]
                tgt = f"{r['target']} {mark}".strip()
            proto = " | ".join(x for x in (r.get("projection"), r.get("prototype")) if x) or "-"
            peer = "-"
            if r.get("peer"):
                pv = r.get("peer_value")
                peer = r["peer"] + (f" {self._fmt(pv, r['unit'])}" if pv is not None else "")
            line = [r["test"], r["measure"], self._fmt(r["vtpu"], r["unit"]), proto, peer,
                    self.ratio_text(r), tgt]
            if notes:
                line.append((r.get("note") or "")[:90])
            lines.append(line)
        widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
                  for i, h in enumerate(head)]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
        prev = None
        for x in lines:
            if prev is not None and x[0] != prev:
                out.append("")
            prev = x[0]
            out.append(fmt.format(*x).rstrip())
        return "\n".join(out)

    def to_json(self, machine: dict, config: dict, started: float) -> dict:
        """Build the export document.

        :param machine: :func:`machine_info` output.
        :param config: run configuration.
        :param started: unix start time.
        :returns: JSON-able dict.
        """
        return {
            "format": "vtpu-bench/1",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 3),
            "machine": machine, "config": config, "rows": self.rows,
            "tests": self.tests, "skipped": self.skipped, "notes": self.notes,
            "errors": self.errors, "prototype": {k: v for k, v in PROTO.items()},
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return obj


def _thin(samples: np.ndarray, keep: int = 2000) -> list:
    """Down-sample a latency array for the export (keeps the distribution's shape)."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size > keep:
        a = a[np.linspace(0, a.size - 1, keep).astype(np.int64)]
    return [round(float(x), 2) for x in a]


# =========================================================================== servers


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
        # The harness may run from a source tree; make the child import the same vtpu.
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _redis_client(peer: _peers.PeerProcess, report: Report):
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


def _memcached_client(peer: _peers.PeerProcess, report: Report):
    try:
        from pymemcache.client.base import Client  # type: ignore
    except ImportError:
        report.skip("skip memcached: the pymemcache package is missing (pip install pymemcache)")
        return None
    return Client((peer.host, peer.port), no_delay=True, timeout=30, connect_timeout=10)


# =========================================================================== vtpu calls
# Everything the harness asks of the client goes through these few functions, so the
# harness has one place to follow the facade.


def vtpu_connect(url: str):
    """Open a client to ``url`` with the package facade.

    :param url: ``vtpu://host:port``.
    :returns: the client.
    """
    from .client import connect

    return connect(url)


def coords_array(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Build an (N, 9) uint16 C-contiguous coordinate array.

    :param rows: N sequences of 9 ints.
    :returns: ndarray.
    """
    return np.ascontiguousarray(np.asarray(rows, dtype=np.uint16).reshape(-1, 9))


def fmt_coord(c: Sequence[int]) -> str:
    """Format 9 numeric components as ``a.b.c/d.e.f/g.h.i``.

    :param c: 9 ints.
    :returns: the coordinate string.
    """
    c = [int(x) for x in c]
    return f"{c[0]}.{c[1]}.{c[2]}/{c[3]}.{c[4]}.{c[5]}/{c[6]}.{c[7]}.{c[8]}"


def fmt_coords(arr: np.ndarray) -> List[str]:
    """Format many coordinates in plain Python (the prototype kept coordinates as strings).

    :param arr: (N, 9) array.
    :returns: list of strings.
    """
    f = "%d.%d.%d/%d.%d.%d/%d.%d.%d"
    return [f % tuple(r) for r in arr.tolist()]


def in_batches(n: int, size: int):
    """Yield (start, stop) slices covering range(n) in steps of ``size``.

    :param n: total.
    :param size: batch size (>= 1).
    """
    size = max(1, size)
    for s in range(0, n, size):
        yield s, min(n, s + size)


def load_scrolls(client, arr: np.ndarray, contents: Any, batch: int = 20_000,
                 label: str = "loading", show: bool = True) -> float:
    """Write many scrolls with batched CPUT; return the seconds it took.

    :param client: vtpu client.
    :param arr: (N, 9) coordinates.
    :param contents: list of N contents, or an ndarray whose row i is content i.
    :param batch: scrolls per call.
    :param label: progress label.
    :param show: show progress.
    :returns: seconds.
    """
    n = len(arr)
    prog = Progress(f"{label} {n:,} scrolls", n, show)
    t0 = time.perf_counter()
    for s, e in in_batches(n, batch):
        client.cput_many(arr[s:e], contents[s:e])
        prog.update(e)
    return time.perf_counter() - t0


# =========================================================================== context


class _NoPin:
    """Stands in for :class:`vtpu.peers.Pinned` when pinning is off."""

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
    """

    def __init__(self, client, url: str, server: Optional[LocalServer], peers: Peers,
                 report: Report, sizes: dict, pin: bool = True, show: bool = True):
        self.client, self.url, self.server = client, url, server
        self.peers, self.report, self.sizes = peers, report, sizes
        self.pin, self.show = pin, show
        self.cpu = _peers.pick_cpu()
        self.dataset: Optional[np.ndarray] = None  # the 1M CRANGE/CNEAREST coordinates
        self.dataset_loaded = False

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


# =========================================================================== key-value


def kv_coords(n: int) -> np.ndarray:
    """Coordinates of the key-value latency tests: ``101.1.1/(i//1000).(i%1000).1/2.1.1``.

    :param n: how many.
    :returns: (n, 9) uint16.
    """
    i = np.arange(n)
    arr = np.empty((n, 9), dtype=np.uint16)
    arr[:] = (R_LATENCY, 1, 1, 0, 0, 1, 2, 1, 1)
    arr[:, 3] = i // 1000
    arr[:, 4] = i % 1000
    return arr


def _keys_for_peers(arr: np.ndarray):
    """Redis keys = the 18-byte packed coordinate; memcached keys = its hex (ASCII only)."""
    be = arr.astype(">u2")
    rk = [be[i].tobytes() for i in range(len(arr))]
    mk = [k.hex().encode() for k in rk]
    return rk, mk


def _single_ops(ctx: Ctx, op: str) -> None:
    """CGET or CPUT single-op latency, beside echo, Redis and memcached, pinned."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    trials = sz["trials"]
    nkeys = max(1, min(trials, 1000))
    arr = kv_coords(nkeys)
    rows = [arr[i] for i in range(nkeys)]
    c.cput_many(arr, [VALUE] * nkeys)
    rk, mk = _keys_for_peers(arr)
    samplers: Dict[str, Callable[[int], Any]] = {}
    if op == "cget":
        samplers["vtpu"] = lambda i: c.cget(rows[i % nkeys])
    else:
        samplers["vtpu"] = lambda i: c.cput(rows[i % nkeys], VALUE)
    echo = ctx.peers.get("echo")
    ec = None
    if echo:
        ec = _peers.EchoClient(echo.host, echo.port)
        payload = b"e" * 32  # about the size of a CGET request frame
        samplers["echo"] = lambda i: ec.call(payload)
    rc = mc = None
    red = ctx.peers.get("redis")
    if red:
        rc = _redis_client(red, rep)
        if rc is not None:
            rc.mset(dict(zip(rk, [VALUE] * nkeys)))
            samplers["redis"] = ((lambda i: rc.get(rk[i % nkeys])) if op == "cget"
                                 else (lambda i: rc.set(rk[i % nkeys], VALUE)))
    mem = ctx.peers.get("memcached")
    if mem:
        mc = _memcached_client(mem, rep)
        if mc is not None:
            mc.set_many(dict(zip(mk, [VALUE] * nkeys)), noreply=False)
            samplers["memcached"] = ((lambda i: mc.get(mk[i % nkeys])) if op == "cget"
                                     else (lambda i: mc.set(mk[i % nkeys], VALUE, noreply=False)))
    prog = Progress(f"{op} single ops x{len(samplers)}", 10 * len(samplers), ctx.show)
    with ctx.pinned() as pin:
        res = interleaved(samplers, trials, rounds=10, progress=prog)
    st = {k: stats_us(v) for k, v in res.items()}
    what = "GET" if op == "cget" else "SET"
    detail = {"pinned_cpu": ctx.cpu if pin.ok else None, "trials": trials,
              "stats_us": st, "samples_us": {k: _thin(v) for k, v in res.items()}}
    rep.tests.setdefault(op, {}).update(single=detail)
    v = st["vtpu"]
    proto = f"{PROTO['cget_http_us' if op == 'cget' else 'cput_http_us']:.0f} us (HTTP)"
    rep.row(op, "p50 latency", v["p50"], "us", projection="50-100 us", prototype=proto,
            peer="echo floor" if "echo" in st else None,
            peer_value=st.get("echo", {}).get("p50"), ratio_kind="of_floor",
            target="<=1.3x floor" if "echo" in st else None,
            target_ok=(v["p50"] <= 1.3 * st["echo"]["p50"]) if "echo" in st else None,
            note=f"p95 {v['p95']:.1f} us, p99 {v['p99']:.1f} us"
                 + ("" if pin.ok else " (not pinned)"))
    if "redis" in st:
        rep.row(op, f"p50 vs Redis {what}", v["p50"], "us", peer="redis-py+hiredis",
                peer_value=st["redis"]["p50"], target=">=1.4x faster",
                target_ok=st["redis"]["p50"] >= 1.4 * v["p50"])
        rep.row(op, f"p99 vs Redis {what}", v["p99"], "us", peer="redis-py+hiredis",
                peer_value=st["redis"]["p99"])
    if "memcached" in st:
        rep.row(op, f"p50 vs memcached {what.lower()}", v["p50"], "us", peer="pymemcache",
                peer_value=st["memcached"]["p50"])
    rep.row(op, "p50 vs prototype HTTP", v["p50"], "us", peer="prototype (README)",
            peer_value=PROTO["cget_http_us" if op == "cget" else "cput_http_us"])
    if ec:
        ec.close()
    if rc is not None:
        rc.close()
    if mc is not None:
        mc.close()


def _batched(ctx: Ctx, op: str) -> None:
    """10k CGET/CPUT in one call vs Redis MGET/MSET (and memcached get_many/set_many)."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    n = sz["batch"]
    reps = 5
    arr = kv_coords(n)
    contents = [VALUE] * n
    c.cput_many(arr, contents)
    rk, mk = _keys_for_peers(arr)
    out: Dict[str, float] = {}
    if op == "cget":
        got = c.cget_many(arr)
        if len(got) != n or got[0] is None:
            raise RuntimeError("cget_many returned a wrong result")
        # A client may hand back scrolls lazily (built on first access), while redis-py
        # returns every value built: the compared time reads every scroll's content.
        out["vtpu"] = median_time(lambda: [s.content for s in c.cget_many(arr)], reps)
        call_only = median_time(lambda: c.cget_many(arr), reps)
        # The MGET equivalent: values only, one list of contents (None where absent).
        vals = c.cget_many(arr, content_only=True)
        if len(vals) != n or vals[0] != VALUE:
            raise RuntimeError("cget_many(content_only=True) returned a wrong result")
        values_only = median_time(lambda: c.cget_many(arr, content_only=True), reps)
    else:
        out["vtpu"] = median_time(lambda: c.cput_many(arr, contents), reps)
    red = ctx.peers.get("redis")
    rc = _redis_client(red, rep) if red else None
    if rc is not None:
        mapping = dict(zip(rk, contents))
        rc.mset(mapping)
        if op == "cget":
            out["redis"] = median_time(lambda: rc.mget(rk), reps)
        else:
            out["redis"] = median_time(lambda: rc.mset(mapping), reps)
        rc.close()
    mem = ctx.peers.get("memcached")
    mc = _memcached_client(mem, rep) if mem else None
    if mc is not None:
        mm = dict(zip(mk, contents))
        mc.set_many(mm, noreply=False)
        if op == "cget":
            out["memcached"] = median_time(lambda: mc.get_many(mk), reps)
        else:
            out["memcached"] = median_time(lambda: mc.set_many(mm, noreply=False), reps)
        mc.close()
    thr = {k: n / t for k, t in out.items()}
    rep.tests.setdefault(op, {})["batched"] = {"n": n, "seconds": out, "ops_per_s": thr}
    name = "CGET" if op == "cget" else "CPUT"
    rname = "MGET" if op == "cget" else "MSET"
    # CPUT carries the >=2x target here; for CGET it is carried by the values-only row
    # below (MGET returns values only), and this row shows full scrolls beside it.
    has_target = "redis" in thr and op != "cget"
    rep.row(op, f"batched {n // 1000}k {name}", thr["vtpu"], "ops/s", better="higher",
            projection="10-20x from batching",
            peer=f"Redis {rname}" if "redis" in thr else None, peer_value=thr.get("redis"),
            target=">=2x Redis" if has_target else None,
            target_ok=(thr["vtpu"] >= 2 * thr["redis"]) if has_target else None,
            note=f"{out['vtpu'] * 1e3:.1f} ms per call"
                 + (", full scrolls (key, content, version, 2 times), every content read"
                    if op == "cget" else ""))
    if op == "cget":
        rep.tests[op]["batched"]["values_only_s"] = values_only
        vo = n / values_only
        rep.row(op, f"batched {n // 1000}k {name}, values only", vo, "ops/s", better="higher",
                peer=f"Redis {rname}" if "redis" in thr else None, peer_value=thr.get("redis"),
                target=">=2x Redis" if "redis" in thr else None,
                target_ok=(vo >= 2 * thr["redis"]) if "redis" in thr else None,
                note=f"{values_only * 1e3:.2f} ms per call; cget_many(content_only=True): "
                     "a list of contents, like MGET's list of values")
        rep.tests[op]["batched"]["call_only_s"] = call_only
        rep.row(op, f"batched {n // 1000}k {name}, call only (lazy scrolls)", n / call_only,
                "ops/s", better="higher", peer=f"Redis {rname}" if "redis" in thr else None,
                peer_value=thr.get("redis"), note=f"{call_only * 1e3:.2f} ms per call")
    if "memcached" in thr:
        rep.row(op, f"batched {n // 1000}k vs memcached", thr["vtpu"], "ops/s",
                better="higher", peer="pymemcache *_many", peer_value=thr["memcached"])


def vtpu_pipeline(client, op: str, rows: List[np.ndarray]) -> list:
    """Send len(rows) independent CGET/CPUT requests pipelined on one connection (one
    write, then every reply is read).

    Uses the facade's ``client.pipeline()``; if that cannot queue calls, the transport's
    pipeline with packed 18-byte keys (the same requests on the wire).

    :param client: vtpu client.
    :param op: "cget" or "cput".
    :param rows: coordinates.
    :returns: the replies in order.
    """
    try:
        p = client.pipeline()
        if op == "cget":
            for r in rows:
                p.cget(r)
        else:
            for r in rows:
                p.cput(r, VALUE)
        execute = getattr(p, "execute", None) or p.backend.execute
        return execute()
    except (AttributeError, TypeError):
        pass
    keys = [np.asarray(r, dtype=">u2").tobytes() for r in rows]
    bp = client.backend.pipeline()
    if op == "cget":
        for k in keys:
            bp.get(k)
    else:
        for k in keys:
            bp.put(k, VALUE)
    return bp.execute()


def _pipelined(ctx: Ctx, op: str) -> None:
    """1000 pipelined independent requests vs a redis-py pipeline and the echo floor."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    n = sz["pipeline"]
    reps = 5
    arr = kv_coords(n)
    c.cput_many(arr, [VALUE] * n)
    rows = [arr[i] for i in range(n)]
    rk, _ = _keys_for_peers(arr)
    out: Dict[str, float] = {}
    try:
        res = vtpu_pipeline(c, op, rows)
        if len(res) != n:
            raise RuntimeError(f"pipeline returned {len(res)} replies for {n}")
        out["vtpu"] = median_time(lambda: vtpu_pipeline(c, op, rows), reps)
    except AttributeError as exc:
        rep.skip(f"skip {op} pipelined: the client has no pipeline ({exc})")
        return
    red = ctx.peers.get("redis")
    rc = _redis_client(red, rep) if red else None
    if rc is not None:
        rc.mset(dict(zip(rk, [VALUE] * n)))

        def rpipe():
            p = rc.pipeline(transaction=False)
            for k in rk:
                if op == "cget":
                    p.get(k)
                else:
                    p.set(k, VALUE)
            return p.execute()

        out["redis"] = median_time(rpipe, reps)
        rc.close()
    echo = ctx.peers.get("echo")
    if echo:
        ec = _peers.EchoClient(echo.host, echo.port)
        payloads = [b"e" * 32] * n
        out["echo"] = median_time(lambda: ec.send_many(payloads), reps)
        ec.close()
    thr = {k: n / t for k, t in out.items()}
    rep.tests.setdefault(op, {})["pipelined"] = {"n": n, "seconds": out, "ops_per_s": thr}
    rep.row(op, f"{n} pipelined", thr["vtpu"], "ops/s", better="higher",
            peer="redis-py pipeline" if "redis" in thr else None, peer_value=thr.get("redis"),
            target=">=2x Redis" if "redis" in thr else None,
            target_ok=(thr["vtpu"] >= 2 * thr["redis"]) if "redis" in thr else None)
    if "echo" in thr:
        rep.row(op, f"{n} pipelined vs echo", thr["vtpu"], "ops/s", better="higher",
                peer="echo pipelined", peer_value=thr["echo"])


# ---------------------------------------------------------------- concurrent clients


def _make_op(kind: str, addr: tuple, g: int, nkeys: int):
    """Build (fn(i), close) for one benchmark connection; ``g`` = global connection index.

    Kinds: "vtpu" (CGET), "redis" (GET), "vtpu_put" (agent ``g`` CPUTs into its own
    range ``104.g.1/...``), "etcd_put" (agent ``g`` puts ``agent/g/i`` through etcd's
    HTTP/JSON gateway).
    """
    if kind == "vtpu":
        cl = vtpu_connect(addr[0])
        arr = kv_coords(nkeys)
        rows = [arr[i] for i in range(nkeys)]
        cl.cget(rows[0])
        return (lambda i: cl.cget(rows[(i + g) % nkeys])), cl.close
    if kind == "vtpu_put":
        cl = vtpu_connect(addr[0])
        arr = np.empty((nkeys, 9), dtype=np.uint16)
        arr[:] = (R_SYNC, g, 1, 0, 0, 1, 2, 1, 1)
        arr[:, 3] = np.arange(nkeys) // 1000
        arr[:, 4] = np.arange(nkeys) % 1000
        rows = [arr[i] for i in range(nkeys)]
        cl.cget(rows[0])
        return (lambda i: cl.cput(rows[i % nkeys], VALUE)), cl.close
    if kind == "etcd_put":
        ec = _peers.EtcdClient(addr[0], addr[1], timeout=60)
        prefix = b"agent/%d/" % g
        ec.get(prefix)
        return (lambda i: ec.put(prefix + b"%d" % i, VALUE)), ec.close
    if kind == "redis":
        import redis  # type: ignore

        rc = redis.Redis(host=addr[0], port=addr[1], socket_timeout=60)
        rk, _ = _keys_for_peers(kv_coords(nkeys))
        rc.get(rk[0])
        return (lambda i: rc.get(rk[(i + g) % nkeys])), rc.close
    raise ValueError(f"unknown benchmark client kind {kind!r}")


def _conc_worker(kind: str, addr: tuple, first: int, threads: int, requests: int,
                 nkeys: int, go, results) -> None:
    """Worker process: ``threads`` threads, each with its own connection (global index
    ``first + t``), each doing ``requests`` operations; puts ("done", [(latencies µs
    float32, t_start, t_end) or an error string per thread]) on ``results``. Every wait
    is bounded; the parent also terminates the process by pid on timeout."""
    import threading

    out: list = [None] * threads
    ready = threading.Barrier(threads + 1)

    def body(t: int) -> None:
        try:
            fn, close = _make_op(kind, addr, first + t, nkeys)
        except Exception as exc:  # report it, and still reach the barrier
            out[t] = f"{type(exc).__name__}: {exc}"
            try:
                ready.wait(120)
            except threading.BrokenBarrierError:
                pass
            return
        try:
            ready.wait(120)
        except threading.BrokenBarrierError:
            pass
        go.wait(120)
        lat = np.empty(requests, dtype=np.float32)
        pc = time.perf_counter_ns
        t0 = time.monotonic()
        try:
            for i in range(requests):
                a = pc()
                fn(i)
                lat[i] = (pc() - a) / 1000.0
            out[t] = (lat, t0, time.monotonic())
        except Exception as exc:
            out[t] = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                close()
            except Exception:
                pass

    ths = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for th in ths:
        th.start()
    try:
        ready.wait(120)
    except threading.BrokenBarrierError:
        pass
    results.put(("ready", os.getpid()))
    for th in ths:
        th.join(600)
    results.put(("done", out))


def _mp():
    import multiprocessing as mp

    try:
        return mp.get_context("fork")
    except ValueError:  # pragma: no cover - no fork on this platform
        return mp.get_context("spawn")


def run_clients(kind: str, addr: tuple, clients: int, procs: int, requests: int,
                nkeys: int, timeout: float = 300.0) -> dict:
    """Run ``clients`` concurrent connections spread over ``procs`` processes.

    :param kind: "vtpu" / "vtpu_put" (addr = (url,)), "redis" / "etcd_put"
        (addr = (host, port)); see :func:`_make_op`.
    :param addr: address tuple.
    :param clients: total connections.
    :param procs: worker processes (threads per process = clients / procs).
    :param requests: requests per connection.
    :param nkeys: key-space size.
    :param timeout: seconds before the workers are terminated (by pid).
    :returns: dict with ops_per_s, stats_us, errors, wall_s.
    """
    ctx = _mp()
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    go = ctx.Event()
    results = ctx.Queue()
    firsts = [sum(per[:i]) for i in range(procs)]
    ps = [ctx.Process(target=_conc_worker, args=(kind, addr, firsts[i], per[i], requests,
                                                 nkeys, go, results), daemon=True)
          for i in range(procs)]
    for p in ps:
        p.start()
    deadline = time.monotonic() + timeout
    ready = 0
    outs: list = []
    errors: List[str] = []
    try:
        while ready < procs and time.monotonic() < deadline:
            try:
                msg = results.get(timeout=1.0)
            except _queue.Empty:
                if not any(p.is_alive() for p in ps):
                    break
                continue
            if msg[0] == "ready":
                ready += 1
            else:
                outs.append(msg[1])
        go.set()
        while len(outs) < procs and time.monotonic() < deadline:
            try:
                msg = results.get(timeout=1.0)
            except _queue.Empty:
                if not any(p.is_alive() for p in ps) and results.empty():
                    break
                continue
            if msg[0] == "done":
                outs.append(msg[1])
    finally:
        for p in ps:
            p.join(max(0.1, min(10.0, deadline - time.monotonic())))
            if p.is_alive():
                p.terminate()  # SIGTERM to that worker's pid
                p.join(5)
    lats, starts, ends = [], [], []
    for out in outs:
        for item in out:
            if isinstance(item, tuple):
                lats.append(item[0])
                starts.append(item[1])
                ends.append(item[2])
            elif item is not None:
                errors.append(str(item))
    if not lats:
        return {"errors": errors or ["no worker finished"], "ops_per_s": None}
    lat = np.concatenate(lats)
    wall = max(ends) - min(starts)
    return {"ops_per_s": lat.size / wall if wall > 0 else None, "wall_s": wall,
            "stats_us": stats_us(lat), "samples_us": _thin(lat), "errors": errors,
            "connections": len(lats), "processes": procs}


def _concurrent(ctx: Ctx) -> None:
    """64 concurrent clients: aggregate CGET throughput and p50/p99, vs one client and
    vs Redis with the same client layout (unpinned: every core is in use)."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    nclients, procs = sz["clients"], sz["client_procs"]
    requests = max(10, min(sz["conc_requests"], sz["trials"] // 5))
    nkeys = 1000
    arr = kv_coords(nkeys)
    c.cput_many(arr, [VALUE] * nkeys)
    rows = [arr[i] for i in range(nkeys)]
    # single-client sequential throughput, unpinned like the concurrent run
    n1 = max(200, min(2000, sz["trials"]))
    t = best_of(lambda: [c.cget(rows[i % nkeys]) for i in range(n1)], 2)
    single = n1 / t
    log(f"  {nclients} concurrent clients ({procs} processes x threads, {requests} requests each)")
    res = {"vtpu": run_clients("vtpu", (ctx.url,), nclients, procs, requests, nkeys)}
    red = ctx.peers.get("redis")
    if red:
        rc = _redis_client(red, rep)
        if rc is not None:
            rk, _ = _keys_for_peers(arr)
            rc.mset(dict(zip(rk, [VALUE] * nkeys)))
            rc.close()
            res["redis"] = run_clients("redis", (red.host, red.port), nclients, procs,
                                       requests, nkeys)
    rep.tests.setdefault("cget", {})["concurrent"] = {
        "clients": nclients, "processes": procs, "requests_per_client": requests,
        "single_client_ops_per_s": single, "results": res,
        "note": f"{os.cpu_count()} CPUs shared by the server and {procs} client processes"}
    v = res["vtpu"]
    if v.get("ops_per_s") is None:
        rep.skip(f"skip concurrent clients: {'; '.join(v.get('errors', []))[:300]}")
        return
    rep.row("cget", f"{nclients} clients aggregate", v["ops_per_s"], "ops/s", better="higher",
            peer="1 client (same server)", peer_value=single,
            target=">= single client", target_ok=v["ops_per_s"] >= single,
            note=f"{procs} procs x {nclients // procs} threads on {os.cpu_count()} CPUs")
    tail = v["stats_us"]["p99"] / v["stats_us"]["p50"]
    rep.row("cget", f"{nclients} clients p50", v["stats_us"]["p50"], "us",
            peer="redis, same layout" if "redis" in res and res["redis"].get("stats_us")
            else None,
            peer_value=(res.get("redis") or {}).get("stats_us", {}).get("p50"),
            target="p99 <= 5x p50", target_ok=tail <= 5.0,
            note=f"p99 {v['stats_us']['p99']:.0f} us = {tail:.1f}x p50")
    r = res.get("redis") or {}
    if r.get("ops_per_s"):
        rep.row("cget", f"{nclients} clients vs Redis", v["ops_per_s"], "ops/s",
                better="higher", peer="redis-py, same layout", peer_value=r["ops_per_s"])
    # The same 64 clients packed 16 threads to a process, for comparison: the tail then
    # includes waiting for the client process's GIL (both for vtpu and for Redis).
    dense_procs = max(1, nclients // 16)
    if dense_procs != procs:
        vd = run_clients("vtpu", (ctx.url,), nclients, dense_procs, requests, nkeys)
        rd = run_clients("redis", (red.host, red.port), nclients, dense_procs, requests,
                         nkeys) if "redis" in res else {}
        res["vtpu_dense_threads"], res["redis_dense_threads"] = vd, rd
        if vd.get("stats_us"):
            td = vd["stats_us"]["p99"] / vd["stats_us"]["p50"]
            rr = rd.get("stats_us") if rd else None
            rep.row("cget", f"{nclients} clients p50, {dense_procs} procs x 16 threads",
                    vd["stats_us"]["p50"], "us", peer="redis, same layout" if rr else None,
                    peer_value=rr["p50"] if rr else None,
                    note=f"p99 = {td:.1f}x p50 (GIL-bound client threads)"
                         + (f"; redis p99 = {rr['p99'] / rr['p50']:.1f}x p50" if rr else ""))


def _embedded(ctx: Ctx) -> None:
    """Embedded (``mem://``) CGET with a packed 18-byte key vs a Python dict lookup over
    the same keys (the data set's 1M coordinates), timed as tight loops."""
    from .client import connect

    rep, sz = ctx.report, ctx.sizes
    arr = dataset_coords(sz["n_scrolls"])
    n = len(arr)
    m = connect("mem://")
    t0 = time.perf_counter()
    for s, e in in_batches(n, 100_000):
        m.cput_many(arr[s:e], list(range(s, e)))
    load = time.perf_counter() - t0
    be = np.ascontiguousarray(arr.astype(">u2")).view(np.dtype((np.void, 18))).ravel()
    allkeys = [bytes(k) for k in be]
    # The dict owns its own key objects, as the store does: looking up with the very
    # objects a dict was built from would take CPython's identity shortcut and skip the
    # key comparison every real lookup (from a socket, a parse) pays.
    d = dict(zip((bytes(bytearray(k)) for k in allkeys), range(n)))
    rng = np.random.default_rng(17)
    keys = [allkeys[i] for i in rng.integers(0, n, 20_000)]
    if m.cget(keys[0]) is None:
        raise RuntimeError("mem:// cget of a stored key returned None")
    cget = m.cget
    get = d.get
    t_m = best_of(lambda: [cget(k) for k in keys], 3) / len(keys)
    t_d = best_of(lambda: [get(k) for k in keys], 3) / len(keys)
    rep.tests.setdefault("cget", {})["embedded"] = {"n": n, "load_s": load,
                                                   "mem_cget_ns": t_m * 1e9,
                                                   "dict_get_ns": t_d * 1e9}
    rep.row("cget", f"embedded mem:// CGET, {n / 1e6:g}M keys", t_m * 1e9, "ns",
            peer="Python dict.get", peer_value=t_d * 1e9, ratio_kind="of_floor",
            target="<=5x dict", target_ok=t_m <= 5 * t_d,
            note=f"packed 18-byte key; load {n / load:,.0f} scrolls/s in-process")
    m.close()


def t_cget(ctx: Ctx) -> None:
    """CGET: single-op latency vs echo/Redis/memcached, batched 10k vs MGET, 1000
    pipelined vs a redis-py pipeline, 64 concurrent clients, embedded vs a dict."""
    _single_ops(ctx, "cget")
    _batched(ctx, "cget")
    _pipelined(ctx, "cget")
    _concurrent(ctx)
    _embedded(ctx)


def t_cput(ctx: Ctx) -> None:
    """CPUT: single-op latency vs echo/Redis/memcached, batched 10k vs MSET, 1000
    pipelined vs a redis-py pipeline."""
    _single_ops(ctx, "cput")
    _batched(ctx, "cput")
    _pipelined(ctx, "cput")


# =========================================================================== CRANGE

# Patterns over the data set (components 0-5 = the six decimal digits of the index,
# components 6-8 = 1.1.1). With 1M scrolls each pattern matches exactly the count in its
# key; the harness checks every count against numpy on the same data. Every pattern
# fixes a digit component or component 6, so the other tests' data (first component
# >= 100, component 6 >= 2) never matches.
CRANGE_SHAPES: Dict[str, Dict[int, str]] = {
    "prefix": {
        10: "3.1.4/1.5.*/*.*.*",
        100: "3.1.4/1.*.*/*.*.*",
        1000: "3.1.4/*.*.*/*.*.*",
        10000: "3.1.*/*.*.*/*.*.*",
    },
    "middle": {
        10: "*.1.4/1.5.9/1.*.*",
        100: "*.1.4/1.5.*/1.*.*",
        1000: "*.*.4/1.5.*/1.*.*",
        10000: "*.*.4/1.*.*/1.*.*",
    },
    "suffix": {
        10: "*.1.4/1.5.9/1.1.1",
        100: "*.*.4/1.5.9/1.1.1",
        1000: "*.*.*/1.5.9/1.1.1",
        10000: "*.*.*/*.5.9/1.1.1",
    },
    "interval": {
        10: "3.1.4/1.[5:7].[0:5]/1.1.1",
        100: "3.1.4/[2:4].[0:10].[5:10]/1.1.1",
        1000: "3.1.[0:5]/[0:2].*.*/1.1.1",
        10000: "3.[0:5].[0:2]/*.*.*/1.1.1",
    },
    "mixed": {
        10: "[2:4].1.4/[0:5].5.9/1.*.1",
        100: "[2:4].1.*/1.[0:5].9/1.1.*",
        1000: "*.[0:5].4/*.[0:2].9/1.*.1",
        10000: "*.[0:5].[4:6]/*.*.9/1.1.*",
    },
}


def dataset_coords(n: int) -> np.ndarray:
    """The CRANGE/CNEAREST data set: index i -> its six decimal digits (most significant
    first) in components 0-5, then 1.1.1. Shuffled so inserts arrive in no useful order.

    :param n: number of scrolls (at most 1,000,000 distinct).
    :returns: (n, 9) uint16.
    """
    n = min(n, 1_000_000)
    i = np.arange(n, dtype=np.int64)
    arr = np.empty((n, 9), dtype=np.uint16)
    for j in range(6):
        arr[:, j] = (i // 10 ** (5 - j)) % 10
    arr[:, 6:] = 1
    rng = np.random.default_rng(7)
    return np.ascontiguousarray(arr[rng.permutation(n)])


def parse_pattern_py(p: str) -> List[tuple]:
    """Parse a numeric pattern into 9 inclusive (lo, hi) bounds, in plain Python.

    :param p: pattern like ``3.1.*/[2:4].5.9/1.1.1``.
    :returns: 9 (lo, hi) tuples.
    :raises ValueError: on a malformed pattern.
    """
    parts = p.replace(";", "/").replace("/", ".").split(".")
    if len(parts) != 9:
        raise ValueError(f"pattern {p!r} has {len(parts)} components, not 9")
    out = []
    for x in parts:
        x = x.strip()
        if x == "*":
            out.append((0, 0xFFFF))
        elif x.startswith("["):
            a, b = x[1:-1].split(":")
            out.append((int(a) if a else 0, (int(b) - 1) if b else 0xFFFF))
        else:
            out.append((int(x), int(x)))
    return out


def prototype_scan(coords: List[str], pattern: str) -> int:
    """The prototype's CRANGE: parse every stored coordinate string into its 9 integers,
    then compare them with the pattern's bounds.

    :param coords: all stored coordinates as strings.
    :param pattern: the pattern.
    :returns: number of matches.
    """
    bounds = parse_pattern_py(pattern)
    n = 0
    for s in coords:
        comps = [int(x) for x in s.replace("/", ".").split(".")]
        if all(lo <= v <= hi for v, (lo, hi) in zip(comps, bounds)):
            n += 1
    return n


def numpy_scan(arr: np.ndarray, pattern: str) -> np.ndarray:
    """A numpy-vectorised scan: indices of the rows inside the pattern's bounds.

    :param arr: (N, 9) uint16.
    :param pattern: the pattern.
    :returns: int64 indices.
    """
    b = np.asarray(parse_pattern_py(pattern), dtype=np.int64)
    lo, hi = b[:, 0].astype(np.uint16), np.minimum(b[:, 1], 0xFFFF).astype(np.uint16)
    return np.flatnonzero(((arr >= lo) & (arr <= hi)).all(axis=1))


def ensure_dataset(ctx: Ctx) -> np.ndarray:
    """Load the 1M-scroll data set into the server once (shared by crange and nearest).

    :param ctx: the context.
    :returns: the coordinates.
    """
    if ctx.dataset is None:
        ctx.dataset = dataset_coords(ctx.sizes["n_scrolls"])
    if not ctx.dataset_loaded:
        arr = ctx.dataset
        n = len(arr)
        # content: the index as an int (small, msgpack-native)
        contents = np.arange(n, dtype=np.int64).tolist()
        secs = load_scrolls(ctx.client, arr, contents, batch=50_000, label="crange: load",
                            show=ctx.show)
        ctx.dataset_loaded = True
        ctx.report.tests.setdefault("dataset", {}).update(
            {"n": n, "load_s": secs, "load_ops_per_s": n / secs if secs else None})
        ctx.report.row("crange", f"load {n / 1e6:g}M scrolls (batched CPUT)", n / secs,
                       "ops/s", better="higher", note=f"{secs:.1f} s in batches of 50k")
    return ctx.dataset


def t_crange(ctx: Ctx) -> None:
    """CRANGE over the 1M data set: 10/100/1000/10k results for prefix, middle, suffix,
    interval and mixed patterns, vs the projection (10 ms / 100 results), vs the
    prototype's linear scan of strings and vs a numpy-vectorised scan."""
    rep, c = ctx.report, ctx.client
    arr = ensure_dataset(ctx)
    n = len(arr)
    log("  crange: formatting coordinate strings for the prototype-kind scan")
    strings = fmt_coords(arr)
    details: Dict[str, dict] = {}
    total = sum(len(v) for v in CRANGE_SHAPES.values())
    prog = Progress("crange patterns", total, ctx.show)
    step = 0
    for shape, pats in CRANGE_SHAPES.items():
        # One prototype-kind scan per shape: its cost does not depend on the result count.
        scan_pat = pats[min(pats)]
        t0 = time.perf_counter()
        scan_count = prototype_scan(strings, scan_pat)
        scan_s = time.perf_counter() - t0
        sd = {"prototype_scan_s": scan_s, "prototype_scan_pattern": scan_pat,
              "prototype_scan_count": scan_count, "patterns": {}}
        for want, pat in sorted(pats.items()):
            expect = numpy_scan(arr, pat)
            np_s = best_of(lambda: numpy_scan(arr, pat), 3)
            got = c.crange(pat)
            ok = len(got) == len(expect)
            reps = 10 if want <= 1000 else 5
            t = median_time(lambda: c.crange(pat), reps)
            sd["patterns"][pat] = {"designed": want, "expected": int(len(expect)),
                                   "got": len(got), "correct": ok, "vtpu_s": t,
                                   "numpy_scan_s": np_s}
            if not ok:
                rep.errors[f"crange {pat}"] = f"returned {len(got)}, numpy finds {len(expect)}"
            proj_ms = PROTO["crange_ms_per_100"] * max(len(expect), 1) / 100.0
            # DESIGN §8 sets the targets for *selective* patterns: here <= 100 of 1M
            # (0.01%); bigger results are reported without a target.
            selective = len(expect) <= 100
            rep.row("crange", f"{shape} {len(expect):,} results", t * 1e3, "ms",
                    projection=f"{proj_ms:g} ms", peer="prototype scan (Python)",
                    peer_value=scan_s * 1e3,
                    target=">=1000x scan, >=20x numpy" if selective else None,
                    target_ok=(scan_s >= 1000 * t and np_s >= 20 * t) if selective else None,
                    note=(f"{pat}; numpy scan {np_s * 1e3:.1f} ms = {np_s / t:.1f}x"
                          + ("" if ok else f"; WRONG COUNT {len(got)}")))
            step += 1
            prog.update(step)
        details[shape] = sd
    rep.tests["crange"] = {"n": n, "shapes": details}
    # numpy comparison rows, compact: the best and worst ratio over every pattern
    ratios = [(d["numpy_scan_s"] / d["vtpu_s"], p) for sd in details.values()
              for p, d in sd["patterns"].items() if d["vtpu_s"] > 0]
    if ratios:
        lo, hi = min(ratios), max(ratios)
        sel = [(r, p) for r, p in ratios if details_count(details, p) <= 100]
        worst_sel = min(sel) if sel else lo
        rep.row("crange", "vs numpy scan, selective (<=100 results)", None, "x",
                peer="numpy vectorised scan", target=">=20x numpy",
                target_ok=worst_sel[0] >= 20,
                note=f"worst {worst_sel[0]:.1f}x ({worst_sel[1]}); best {hi[0]:.1f}x; "
                     f"worst over all sizes {lo[0]:.1f}x ({lo[1]})")


def details_count(details: Dict[str, dict], pat: str) -> int:
    """Expected result count of a CRANGE pattern in the collected details.

    :param details: per-shape details.
    :param pat: the pattern.
    :returns: the count (or a large number when unknown).
    """
    for sd in details.values():
        if pat in sd["patterns"]:
            return sd["patterns"][pat]["expected"]
    return 1 << 30


# =========================================================================== CNEAREST


def t_nearest(ctx: Ctx) -> None:
    """CNEAREST k=10 over the 1M data set, checked against numpy (distances), timed
    against numpy L1 + argpartition on the same array."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    arr = ensure_dataset(ctx)
    n = len(arr)
    rng = np.random.default_rng(11)
    trials = sz["nearest_trials"]
    qs = np.ones((trials, 9), dtype=np.uint16)
    qs[:, :6] = rng.integers(0, 13, size=(trials, 6))  # a bit outside the grid, too
    a32 = arr.astype(np.int32)

    def np_knn(q):
        d = np.abs(a32 - q.astype(np.int32)).sum(axis=1)
        idx = np.argpartition(d, 10)[:10]
        return np.sort(d[idx])

    wrong = 0
    prog = Progress("nearest queries", trials, ctx.show)
    vt, nt = [], []
    for i, q in enumerate(qs):
        t0 = time.perf_counter()
        got = c.cnearest(q, k=10)
        vt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = np_knn(q)
        nt.append(time.perf_counter() - t0)
        dists = np.sort(np.asarray([int(x[1]) for x in got]))
        if len(dists) != len(ref) or not np.array_equal(dists, ref):
            wrong += 1
        prog.update(i + 1)
    v50, n50 = float(np.median(vt)) * 1e3, float(np.median(nt)) * 1e3
    rep.tests["nearest"] = {"n": n, "k": 10, "trials": trials, "vtpu_ms": [x * 1e3 for x in vt],
                            "numpy_ms": [x * 1e3 for x in nt], "mismatches": wrong}
    if wrong:
        rep.errors["nearest"] = f"{wrong}/{trials} queries differ from numpy's distances"
    rep.row("nearest", f"k=10 over {n / 1e6:g}M, p50", v50, "ms",
            projection="(prototype: Hamming scan)", peer="numpy L1 + argpartition",
            peer_value=n50, target="<=10 ms and < numpy",
            target_ok=v50 <= 10 and v50 < n50,
            note=f"{1e3 / v50:.0f} queries/s; p95 {np.percentile(vt, 95) * 1e3:.1f} ms"
                 + (f"; {wrong} WRONG" if wrong else ""))


# =========================================================================== CMOE


def _jump(key: int, n: int) -> int:
    # Lamping & Veach jump consistent hash, the reference the spec names.
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def t_moe(ctx: Ctx) -> None:
    """Batched CMOE over 1M token coordinates: throughput, single == batched on a sample,
    beside a pure-Python per-token loop (xxh64 + jump hash) and the prototype's one HTTP
    call per token."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    n, experts = sz["moe_tokens"], sz["moe_experts"]
    rng = np.random.default_rng(5)
    toks = np.empty((n, 9), dtype=np.uint16)
    toks[:, 0] = 0
    toks[:, 1] = rng.integers(0, 4096, n)  # sequence
    toks[:, 2] = rng.integers(0, 2048, n)  # position
    toks[:, 3] = rng.integers(0, 32, n)  # layer
    toks[:, 4:] = 1
    out = c.cmoe(toks[:1000], experts)
    out = np.asarray(out)
    if out.shape != (1000,) or out.min() < 0 or out.max() >= experts:
        raise RuntimeError(f"cmoe returned shape {out.shape} range {out.min()}..{out.max()}")
    t = median_time(lambda: c.cmoe(toks, experts), 3)
    full = np.asarray(c.cmoe(toks, experts))
    sample = 200
    single = np.asarray([int(c.cmoe(toks[i], experts)) for i in range(sample)])
    consistent = bool(np.array_equal(single, full[:sample]))
    counts = np.bincount(full, minlength=experts)
    # pure-Python loop: xxh64 of the packed coordinate + jump hash (the spec's kind of
    # hash), over a slice, scaled to per-token time.
    py_n = 20_000
    py_s = None
    try:
        import xxhash  # type: ignore

        be = toks[:py_n].astype(">u2")
        t0 = time.perf_counter()
        for i in range(py_n):
            _jump(xxhash.xxh64_intdigest(be[i].tobytes()), experts)
        py_s = (time.perf_counter() - t0) / py_n
    except ImportError:
        rep.skip("skip moe python loop: xxhash missing")
    rep.tests["moe"] = {"tokens": n, "experts": experts, "seconds": t,
                        "tokens_per_s": n / t, "single_equals_batched": consistent,
                        "expert_load_min": int(counts.min()), "expert_load_max": int(counts.max()),
                        "python_loop_s_per_token": py_s}
    if not consistent:
        rep.errors["moe"] = "single-token CMOE differs from the batched result"
    rep.row("moe", f"batched CMOE {n / 1e6:g}M tokens", n / t, "tokens/s", better="higher",
            projection="(prototype: 1 HTTP call/token)",
            prototype=f"~{1e6 / PROTO['cget_http_us']:.0f} tokens/s",
            peer="Python loop xxh64+jump" if py_s else None,
            peer_value=(1.0 / py_s) if py_s else None,
            note=f"{t * 1e3:.0f} ms; load {counts.min()}..{counts.max()} per expert; "
                 f"single==batched {consistent}")
    rep.row("moe", "vs prototype HTTP per token", n / t, "tokens/s", better="higher",
            peer="prototype (README)", peer_value=1e6 / PROTO["cget_http_us"])


# =========================================================================== CKG


def t_kg(ctx: Ctx) -> None:
    """Multi-hop CKG on a generated graph: nodes ``103.(n//1000).(n%1000)/0.0.0/2.1.1``,
    edges of relation r at the node with component 3 set to r; an edge's content is the
    list of its target nodes' coordinates. Timed per traversal; result sizes checked
    against a Python BFS over the same graph."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    nn, hops, trials = sz["kg_nodes"], sz["kg_hops"], sz["kg_trials"]
    rng = np.random.default_rng(3)
    rels, fan = 2, 2

    def node(nid: int) -> List[int]:
        return [R_KG, nid // 1000, nid % 1000, 0, 0, 0, 2, 1, 1]

    nodes = coords_array([node(i) for i in range(nn)])
    targets = rng.integers(0, nn, size=(nn, rels, fan))
    edges, contents = [], []
    for r in range(rels):
        e = nodes.copy()
        e[:, 3] = r + 1
        edges.append(e)
        tg = targets[:, r, :]
        contents += [[fmt_coord(node(int(t))) for t in row] for row in tg]
    edge_arr = np.ascontiguousarray(np.concatenate(edges))
    secs = load_scrolls(c, nodes, [f"node {i}" for i in range(nn)], 20_000, "kg: load nodes",
                        ctx.show)
    secs += load_scrolls(c, edge_arr, contents, 20_000, "kg: load edges", ctx.show)
    deltas = [f"+0.0.0/={r + 1}.+0.+0/+0.+0.+0" for r in range(rels)]

    def bfs(start: int) -> int:
        frontier = {start}
        seen = {start}
        for _ in range(hops):
            nxt = set()
            for f in frontier:
                for r in range(rels):
                    for t in targets[f, r]:
                        t = int(t)
                        if t not in seen:
                            nxt.add(t)
            seen |= nxt
            frontier = nxt
            if not frontier:
                break
        return len(frontier)

    starts = rng.integers(0, nn, size=trials)
    lat, sizes, ref_sizes = [], [], []
    prog = Progress(f"kg {hops}-hop traversals", trials, ctx.show)
    for i, s in enumerate(starts):
        pat = fmt_coord(node(int(s)))
        t0 = time.perf_counter()
        res = c.ckg(pat, deltas, hops)
        lat.append(time.perf_counter() - t0)
        sizes.append(len(res))
        if i < 20:
            ref_sizes.append(bfs(int(s)))
        prog.update(i + 1)
    agree = sum(1 for a, b in zip(sizes, ref_sizes) if a == b)
    p50 = float(np.median(lat)) * 1e3
    rep.tests["kg"] = {"nodes": nn, "edges": len(edge_arr), "hops": hops, "load_s": secs,
                       "latency_ms": [x * 1e3 for x in lat], "result_sizes": sizes,
                       "bfs_sizes": ref_sizes, "bfs_agree": agree}
    rep.row("kg", f"{hops}-hop CKG, {nn // 1000}k nodes, p50", p50, "ms",
            projection="(prototype: 1 HTTP call per hop)",
            note=f"{1e3 / p50:.0f} traversals/s; mean frontier {np.mean(sizes):.0f}; "
                 f"{agree}/{len(ref_sizes)} agree with a visited-set BFS")


# =========================================================================== sparse


def sparse_coords(seq: int, kind: int) -> np.ndarray:
    """Coordinates of the attention tensors: ``102.1.1/1.1.1/2.KIND.POS`` with KIND 1 = Q,
    2 = K, 3 = V and POS the token position.

    :param seq: sequence length (<= 61440).
    :param kind: 1, 2 or 3.
    :returns: (seq, 9) uint16.
    """
    arr = np.empty((seq, 9), dtype=np.uint16)
    arr[:] = (R_SPARSE, 1, 1, 1, 1, 1, 2, kind, 0)
    arr[:, 8] = np.arange(seq)
    return arr


def window_patterns(seq: int, window: int) -> np.ndarray:
    """Key patterns of windowed attention: query i sees keys at positions
    [i - window, i + window] (clipped), as (seq, 2, 9) inclusive bounds.

    :param seq: sequence length.
    :param window: half-width.
    :returns: (seq, 2, 9) uint16.
    """
    k = sparse_coords(seq, 2)
    pats = np.empty((seq, 2, 9), dtype=np.uint16)
    pats[:, 0, :] = k
    pats[:, 1, :] = k
    i = np.arange(seq)
    pats[:, 0, 8] = np.maximum(i - window, 0)
    pats[:, 1, 8] = np.minimum(i + window, seq - 1)
    return pats


def numpy_window_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                           window: int) -> np.ndarray:
    """Reference windowed attention in float64 numpy (softmax over the window).

    :param Q: (S, d). :param K: (S, d). :param V: (S, d_v).
    :param window: half-width.
    :returns: (S, d_v) float64.
    """
    S, d = Q.shape
    Q, K, V = (x.astype(np.float64) for x in (Q, K, V))
    out = np.empty((S, V.shape[1]))
    for i in range(S):
        a, b = max(0, i - window), min(S, i + window + 1)
        s = K[a:b] @ Q[i] / math.sqrt(d)
        w = np.exp(s - s.max())
        w /= w.sum()
        out[i] = w @ V[a:b]
    return out


def numpy_dense_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Dense softmax(QK^T/sqrt(d))V in numpy, in the arrays' dtype.

    :param Q: (S, d). :param K: (S, d). :param V: (S, d_v).
    :returns: (S, d_v).
    """
    s = (Q @ K.T) / np.sqrt(np.asarray(Q.shape[1], dtype=Q.dtype))
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return s @ V


def vtpu_window_attention(client, seq: int, window: int) -> np.ndarray:
    """Batched CATTEND over the stored Q/K/V: every stored query against its window of
    stored keys, values = the V scroll at each key (delta: component 7 set to 3).

    :param client: vtpu client.
    :param seq: sequence length.
    :param window: half-width.
    :returns: (seq, d_v) outputs.
    """
    q_keys = sparse_coords(seq, 1)
    pats = window_patterns(seq, window)
    res = client.cattend_many(q_keys, pats, values="+0.0.0/+0.0.0/+0.=3.+0")
    return np.asarray(res["outputs"] if isinstance(res, dict) else res)


def t_sparse(ctx: Ctx) -> None:
    """Windowed attention (seq 2048, window ±128, d 64) through batched CATTEND over stored
    Q/K/V, checked against numpy (<= 1e-5), timed against dense numpy attention; again at
    seq 4096, where DESIGN §8 sets the target."""
    seqs = [ctx.sizes["seq"]] + ([4096] if ctx.sizes["seq"] < 4096 else [])
    for seq in seqs:
        _sparse_at(ctx, seq)


def _sparse_at(ctx: Ctx, seq: int) -> None:
    """One windowed-attention measurement at sequence length ``seq`` (see :func:`t_sparse`)."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    w, d = sz["window"], sz["dim"]
    rng = np.random.default_rng(13)
    Q, K, V = (rng.standard_normal((seq, d)).astype(np.float32) for _ in range(3))
    for kind, mat in ((1, Q), (2, K), (3, V)):
        c.cput_many(sparse_coords(seq, kind), mat)  # row i = the vector of position i
    out = vtpu_window_attention(c, seq, w)
    ref = numpy_window_attention(Q, K, V, w)
    err = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.shape == ref.shape \
        else float("inf")
    t_v = median_time(lambda: vtpu_window_attention(c, seq, w), 3)
    t_dense = best_of(lambda: numpy_dense_attention(Q, K, V), 3)
    t_dense64 = best_of(lambda: numpy_dense_attention(*(x.astype(np.float64)
                                                        for x in (Q, K, V))), 3)
    t_win = best_of(lambda: numpy_window_attention(Q, K, V, w), 1)
    theo = seq / (2 * w + 1)
    rep.tests.setdefault("sparse", {})[str(seq)] = {
        "seq": seq, "window": w, "dim": d, "max_abs_err": err, "vtpu_s": t_v,
        "numpy_dense_f32_s": t_dense, "numpy_dense_f64_s": t_dense64,
        "numpy_window_loop_s": t_win, "theoretical_flops_ratio": theo}
    if not err <= 1e-5:
        rep.errors[f"sparse {seq}"] = f"max |vtpu - numpy| = {err:.3g} > 1e-5 (shape {out.shape})"
    rep.row("sparse", f"windowed CATTEND seq {seq} +-{w} d{d}", t_v * 1e3, "ms",
            projection=f"{PROTO['sparse_projection_x']:g}x vs dense",
            prototype=f"{PROTO['sparse_theoretical_x']:g}x (theoretical)",
            peer="dense numpy f32", peer_value=t_dense * 1e3,
            # DESIGN §8 asks for beating dense attention at seq 4096; shorter sequences
            # are reported with their ratio but only the numerical check as a target.
            target="== numpy (1e-5), < dense" if seq >= 4096 else "== numpy (1e-5)",
            target_ok=err <= 1e-5 and (t_v < t_dense or seq < 4096),
            note=f"max err {err:.2g}; dense f64 {t_dense64 * 1e3:.1f} ms; numpy window loop "
                 f"{t_win * 1e3:.0f} ms; FLOP ratio {theo:.1f}x")


# =========================================================================== sync


def t_sync(ctx: Ctx) -> None:
    """Multi-agent sync: agents (processes) writing their own coordinate ranges
    concurrently to a memory-only vtpu, a durable vtpu (``--fsync always``) and etcd (a
    Raft write through its HTTP/JSON gateway), plus one-agent write latency."""
    rep, sz = ctx.report, ctx.sizes
    agents, writes = sz["agents"], sz["writes"]
    targets: Dict[str, tuple] = {"vtpu memory": ("vtpu_put", (ctx.url,))}
    durables: Dict[str, LocalServer] = {}
    tmp = tempfile.mkdtemp(prefix="vtpu-bench-durable-")
    try:
        for policy in ("always", "everysec"):
            try:
                srv = LocalServer(data=os.path.join(tmp, policy), fsync=policy).start()
                durables[policy] = srv
                targets[f"vtpu durable fsync={policy}"] = ("vtpu_put", (srv.url,))
            except Exception as exc:
                rep.skip(f"skip durable vtpu ({policy}): {exc}"[:400])
        et = ctx.peers.get("etcd")
        if et:
            targets["etcd (Raft)"] = ("etcd_put", (et.host, et.port))
        res: Dict[str, dict] = {}
        log(f"  sync: {agents} agents x {writes} writes, and 1 agent, per target")
        for name, (kind, addr) in targets.items():
            # One agent is a latency run: like every latency run here (DESIGN §8) its
            # client and the servers share one CPU; the forked agent inherits the pin.
            with ctx.pinned([srv.pid for srv in durables.values()]):
                one = run_clients(kind, addr, 1, 1, writes, writes)
            many = run_clients(kind, addr, agents, agents, writes, writes)
            res[name] = {"one_agent": one, "agents": many}
            if many.get("errors"):
                rep.skip(f"sync {name}: {'; '.join(many['errors'])[:300]}")
    finally:
        for srv in durables.values():
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rep.tests["sync"] = {"agents": agents, "writes_per_agent": writes, "results": res}
    et_name = "etcd (Raft)"
    etr = res.get(et_name, {})
    for name, r in res.items():
        if name == et_name:
            continue
        one, many = r["one_agent"], r["agents"]
        if not one.get("stats_us") or not many.get("ops_per_s"):
            continue
        e1 = (etr.get("one_agent") or {}).get("stats_us", {}).get("p50")
        em = (etr.get("agents") or {}).get("ops_per_s")
        is_durable = "always" in name   # the target is set for fsync on every write
        rep.row("sync", f"{name}: put p50, 1 agent", one["stats_us"]["p50"], "us",
                peer="etcd put" if e1 else None, peer_value=e1,
                projection=f"{PROTO['sync_projection_x']:,.0f}x vs Raft" if is_durable else None,
                prototype=f"{PROTO['sync_prototype_x']:,.0f}x vs Raft" if is_durable else None,
                target=">=3x faster than etcd" if (is_durable and e1) else None,
                target_ok=(e1 >= 3 * one["stats_us"]["p50"]) if (is_durable and e1) else None,
                note=f"p99 {one['stats_us']['p99']:.0f} us")
        rep.row("sync", f"{name}: {agents} agents aggregate", many["ops_per_s"], "writes/s",
                better="higher", peer=f"etcd, {agents} agents" if em else None, peer_value=em,
                note=f"p50 {many['stats_us']['p50']:.0f} us, p99 {many['stats_us']['p99']:.0f} us")
    if etr.get("one_agent", {}).get("stats_us"):
        s1 = etr["one_agent"]["stats_us"]
        rep.row("sync", "etcd put p50, 1 agent (peer)", s1["p50"], "us",
                note=f"p99 {s1['p99']:.0f} us; {agents} agents "
                     f"{(etr.get('agents') or {}).get('ops_per_s') or 0:.0f} writes/s")


# =========================================================================== plot


def plot(report: Report, path: str) -> bool:
    """Draw latency distributions (CDFs) and vtpu-vs-peer ratios to a PNG.

    :param report: the finished report.
    :param path: output file.
    :returns: True if written, False when matplotlib is missing (a message is printed).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib is not installed (pip install 'vtpu[plot]' or matplotlib); "
            "no plot written")
        return False
    dists = []
    for op in ("cget", "cput"):
        single = report.tests.get(op, {}).get("single")
        if single:
            for name, samples in single["samples_us"].items():
                dists.append((f"{op} {name}", samples))
    conc = report.tests.get("cget", {}).get("concurrent", {}).get("results", {})
    for name, r in conc.items():
        if r.get("samples_us"):
            dists.append((f"cget {name} x{report.tests['cget']['concurrent']['clients']}",
                          r["samples_us"]))
    ratios = [(f"{r['test']}: {r['measure']}"[:48], r["ratio"], r["ratio_kind"])
              for r in report.rows if r.get("ratio")]
    fig, axes = plt.subplots(1, 2, figsize=(15, max(5, 0.28 * len(ratios) + 1.5)))
    ax = axes[0]
    for label, s in dists:
        a = np.sort(np.asarray(s, dtype=float))
        if a.size:
            style = "--" if label.startswith("cput") else ("-." if " x" in label else "-")
            ax.plot(a, np.linspace(0, 1, a.size), style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (µs, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Round-trip latency distributions (same run)")
    ax.grid(True, which="both", alpha=0.3)
    if dists:
        ax.legend(fontsize=7)
    ax = axes[1]
    if ratios:
        ys = np.arange(len(ratios))
        vals = [max(r[1], 1e-3) for r in ratios]
        colors = ["tab:gray" if k == "of_floor" else ("tab:green" if v >= 1 else "tab:red")
                  for (_, v, k) in ratios]
        ax.barh(ys, vals, color=colors)
        ax.set_yticks(ys)
        ax.set_yticklabels([r[0] for r in ratios], fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("ratio (>1 = vtpu better; gray = times the echo floor)")
    ax.set_title("vtpu vs peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# =========================================================================== driver

RUNNERS: Dict[str, Callable[[Ctx], None]] = {
    "cget": t_cget, "cput": t_cput, "crange": t_crange, "nearest": t_nearest,
    "sparse": t_sparse, "moe": t_moe, "kg": t_kg, "sync": t_sync,
}


def run(tests: Sequence[str] = TESTS, trials: Optional[int] = None,
        host: Optional[str] = None, port: Optional[int] = None,
        export: Optional[str] = None, plot_path: Optional[str] = None,
        sizes: Optional[dict] = None, pin: bool = True, peers: Optional[set] = None,
        show: bool = True, out=None) -> dict:
    """Run benchmarks and return the results document (also exported/plotted if asked).

    :param tests: names from :data:`TESTS`.
    :param trials: single-op trials (default :data:`DEFAULTS` ``trials``).
    :param host: server to benchmark; None starts a loopback server.
    :param port: its port (default 1337 with ``host``).
    :param export: JSON file to write.
    :param plot_path: PNG file to draw.
    :param sizes: overrides of :data:`DEFAULTS`.
    :param pin: pin latency runs to one CPU.
    :param peers: peer names allowed (None = all found).
    :param show: progress lines on stderr.
    :param out: stream for the summary table (default stdout).
    :returns: the results document (see :meth:`Report.to_json`).
    :raises ValueError: for an unknown test name.
    :raises RuntimeError: when the loopback server cannot start.
    """
    out = out or sys.stdout
    unknown = [t for t in tests if t not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; choose from {', '.join(TESTS)}")
    sz = dict(DEFAULTS)
    sz.update(sizes or {})
    if trials is not None:
        sz["trials"] = max(1, int(trials))
    started = time.time()
    report = Report()
    server = None
    client = None
    peer_reg = Peers(report, peers)
    try:
        if host:
            url = f"vtpu://{host}:{port or 1337}"
            log(f"vtpu bench: server {url} (not started here; not pinned)")
        else:
            server = LocalServer().start()
            url = server.url
            log(f"vtpu bench: started a loopback server {url} (pid {server.pid})")
        client = vtpu_connect(url)
        ctx = Ctx(client, url, server, peer_reg, report, sz, pin=pin, show=show)
        for name in tests:
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                RUNNERS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken test must not lose the others
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            report.tests.setdefault(name, {})["wall_s"] = round(time.monotonic() - t0, 3)
    finally:
        try:
            if client is not None:
                client.close()
        except Exception:
            pass
        peer_reg.stop()
        if server is not None:
            server.stop()
    config = {"tests": list(tests), "host": host, "port": port, "pinned": pin,
              "pin_cpu": _peers.pick_cpu() if pin else None, "sizes": sz,
              "server": "loopback subprocess (python -m vtpu.server)" if not host else url}
    doc = _jsonable(report.to_json(machine_info(), config, started))
    print("\n=== vtpu bench summary (actual vs the prototype's projections vs peers, same run) ===",
          file=out)
    print(report.table(), file=out)
    if report.skipped:
        print("\nskipped / notes:", file=out)
        for s in report.skipped:
            print("  " + s, file=out)
    if report.errors:
        print("\nerrors:", file=out)
        for k, v in report.errors.items():
            print(f"  {k}: {v}", file=out)
    print(f"\n{doc['duration_s']:.0f} s on {doc['machine']['cpu_model']} "
          f"({doc['machine']['cores']} CPUs), python {doc['machine']['python']}", file=out)
    if export:
        with open(export, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"exported {export}", file=out)
    if plot_path:
        if plot(report, plot_path):
            print(f"plotted {plot_path}", file=out)
    out.flush()
    return doc


def build_parser() -> argparse.ArgumentParser:
    """The ``vtpu bench`` argument parser.

    :returns: the parser.
    """
    ap = argparse.ArgumentParser(
        prog="vtpu bench",
        description="Benchmark vtpu against the prototype's projections and peers found "
                    "on this machine (echo floor, Redis, memcached, etcd, numpy).")
    ap.add_argument("--all", action="store_true", help="run every test (the default)")
    ap.add_argument("--test", action="append", default=[], metavar="NAME",
                    help="test to run (repeat or comma-separate): " + ", ".join(TESTS))
    ap.add_argument("--trials", type=int, default=None,
                    help=f"single-op trials per system (default {DEFAULTS['trials']})")
    ap.add_argument("--export", metavar="FILE.json", help="write results + machine info as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="draw latency CDFs and ratios "
                                                       "(needs matplotlib)")
    ap.add_argument("--host", help="benchmark this server instead of starting a loopback one")
    ap.add_argument("--port", type=int, default=None, help="its port (default 1337)")
    ap.add_argument("--peers", default=None,
                    help="comma list of peers to use (echo,redis,memcached,etcd) or 'none'")
    ap.add_argument("--no-pin", action="store_true", help="do not pin latency runs to one CPU")
    ap.add_argument("--scrolls", type=int, default=None,
                    help=f"CRANGE/CNEAREST data set size (default {DEFAULTS['n_scrolls']:,})")
    ap.add_argument("--clients", type=int, default=None,
                    help=f"concurrent clients (default {DEFAULTS['clients']})")
    ap.add_argument("--seq", type=int, default=None,
                    help=f"sparse attention sequence length (default {DEFAULTS['seq']})")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vtpu bench``: parse ``argv``, run, print the table; exit status 0 when every
    selected test ran (missing peers do not count), 1 when a test failed, 2 on bad usage.

    :param argv: arguments without the program name (None: ``sys.argv[1:]``).
    :returns: exit status.
    """
    ns = build_parser().parse_args(list(argv) if argv is not None else None)
    tests: List[str] = []
    for t in ns.test:
        tests += [x.strip() for x in t.split(",") if x.strip()]
    if ns.all or not tests:
        tests = list(TESTS)
    bad = [t for t in tests if t not in RUNNERS]
    if bad:
        log(f"vtpu bench: unknown test {', '.join(bad)}; choose from {', '.join(TESTS)}")
        return 2
    sizes = {}
    if ns.scrolls:
        sizes["n_scrolls"] = ns.scrolls
    if ns.clients:
        sizes["clients"] = ns.clients
    if ns.seq:
        sizes["seq"] = ns.seq
    allowed = None
    if ns.peers is not None:
        allowed = set() if ns.peers.strip() == "none" else \
            {p.strip() for p in ns.peers.split(",") if p.strip()}
    try:
        doc = run(tests, ns.trials, ns.host, ns.port, ns.export, ns.plot, sizes,
                  pin=not ns.no_pin, peers=allowed, show=not ns.quiet)
    except RuntimeError as exc:
        log(f"vtpu bench: {exc}")
        return 1
    return 1 if doc.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
