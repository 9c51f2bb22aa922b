"""What every attack runs on: a real ``vtpu serve`` subprocess, its memory and CPU read
from ``/proc``, a probe process, counted raw connections, and :class:`Run`, which holds
one attack's processes, numbers, checks and verdict.

Everything started here is stopped by its pid (never by name), every wait is bounded,
and a watchdog kills the run's processes when an attack overruns its hard timeout, so a
stalled server cannot hang the harness.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from vtpu import protocol as P
from vtpu.bench.common import steal_seconds

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
GiB = 1 << 30

#: The issue's bars (issue 12, "What it must show").
MEM_LIMIT = 2 * GiB  # address-space limit every attacked server runs under
ALLOWANCE_FULL = 64 * MiB  # fixed RSS allowance on top of 2x the attacker's bytes
ALLOWANCE_QUICK = 16 * MiB  # the quick versions send less, so they get less slack
PROBE_P99_MS = 5.0
PROBE_MAX_MS = 50.0
NEW_CLIENT_MS = 100.0  # a new well-behaved client served this fast while flooded
HARD_TIMEOUT = 60.0  # seconds an attack (after its set-up) may take before "stalled"
SETUP_TIMEOUT = 300.0  # seconds for starting servers and loading data
ALIVE_TIMEOUT = 5.0  # a fresh client must be served within this after an attack

#: The key the probe reads (component 0 is never used by the data sets).
PROBE_KEY = bytes(16) + b"\x00\x01"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def child_env(extra: Optional[Dict[str, str]] = None, drop: Sequence[str] = ("VTPU_TOKEN",)
              ) -> Dict[str, str]:
    """The environment of a child process: this tree's ``vtpu`` and ``benchmarks`` first.

    :param extra: variables to set.
    :param drop: inherited variables to remove (a stray ``VTPU_TOKEN`` would change what
        the server requires).
    :returns: the environment.
    """
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to one process; a process that is already gone is not an error."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def proc_status(pid: int) -> Dict[str, int]:
    """``VmRSS``, ``VmHWM`` and ``VmSize`` of a process in bytes (empty when it is gone)."""
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:", b"VmSize:")):
                    k, v = line.split(b":", 1)
                    out[k.decode()] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return {}
    return out


def proc_cpu(pid: int) -> Optional[float]:
    """User + system CPU seconds a process has used (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces; fields follow the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class StartFailed(RuntimeError):
    """The server exited (or never said it was serving) instead of starting.

    :ivar returncode: its exit status (None if it was still running and got killed).
    :ivar stderr: the tail of what it wrote.
    """

    def __init__(self, returncode: Optional[int], stderr: str):
        super().__init__(f"server did not start (exit {returncode}): {stderr[-600:]}")
        self.returncode = returncode
        self.stderr = stderr


# =========================================================================== the server


class Server:
    """One ``vtpu serve`` subprocess on a free port, with its log in a file.

    :param workdir: where the log file goes.
    :param data: ``--data DIR`` (None: memory only).
    :param token: the token, passed as ``token_via`` says.
    :param token_via: ``"env"`` (``VTPU_TOKEN``), ``"arg"`` (``--token``) or ``"file"``
        (``--token-file``).
    :param mem_limit: ``RLIMIT_AS`` in bytes applied to the process (None: none).
    :param nofile: ``RLIMIT_NOFILE`` applied to the process (None: inherited).
    :param host: the address to bind (loopback unless an attack checks binding).
    :param fsync: ``--fsync`` with ``data``.
    :param extra: more command-line arguments.
    :param name: a label for the log file.
    """

    def __init__(self, workdir: str, data: Optional[str] = None, token: Optional[str] = None,
                 token_via: str = "env", mem_limit: Optional[int] = MEM_LIMIT,
                 nofile: Optional[int] = None, host: str = LOOPBACK,
                 fsync: Optional[str] = None, extra: Sequence[str] = (), name: str = "server"):
        self.workdir, self.data, self.token, self.token_via = workdir, data, token, token_via
        self.mem_limit, self.nofile, self.host = mem_limit, nofile, host
        self.fsync, self.extra = fsync, list(extra)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.log_path = os.path.join(workdir, f"{name}-{time.monotonic_ns()}.log")
        self._log = None

    @property
    def pid(self) -> int:
        """The process id (0 before :meth:`start`)."""
        return self.proc.pid if self.proc else 0

    def argv(self) -> List[str]:
        """The command line this server runs."""
        argv = [sys.executable, "-m", "vtpu", "serve", "--host", self.host, "--port", "0"]
        if self.data:
            argv += ["--data", self.data]
            if self.fsync:
                argv += ["--fsync", self.fsync]
        if self.token is not None and self.token_via == "arg":
            argv += ["--token", self.token]
        if self.token is not None and self.token_via == "file":
            path = os.path.join(self.workdir, "token")
            with open(path, "w") as f:
                f.write(self.token + "\n")
            os.chmod(path, 0o600)
            argv += ["--token-file", path]
        return argv + self.extra

    def start(self, timeout: float = 60.0) -> "Server":
        """Start the server and wait for its ``serving on HOST:PORT`` line.

        :param timeout: seconds to wait (a durable store of 1M scrolls takes a few).
        :returns: self.
        :raises StartFailed: it exited first, or did not come up in ``timeout``.
        """
        extra_env = {"VTPU_TOKEN": self.token} if (
            self.token is not None and self.token_via == "env") else {}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     env=child_env(extra_env), start_new_session=True)
        # Limits go on the running process by pid (prlimit(2)); the server has not
        # allocated anything yet, and the parent stays untouched.
        if self.mem_limit is not None:
            resource.prlimit(self.pid, resource.RLIMIT_AS, (self.mem_limit, self.mem_limit))
        if self.nofile is not None:
            resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        deadline = time.monotonic() + timeout
        pat = re.compile(r"serving on (\S+):(\d+)")
        while time.monotonic() < deadline:
            m = pat.search(self.log_text())
            if m:
                self.port = int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise StartFailed(self.proc.returncode, self.log_text())
            time.sleep(0.02)
        self.stop()
        raise StartFailed(None, self.log_text() + " (timed out)")

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> Dict[str, int]:
        """Its ``VmRSS``/``VmHWM``/``VmSize`` in bytes (empty once it exited)."""
        return proc_status(self.pid) if self.running() else {}

    def cpu(self) -> Optional[float]:
        """CPU seconds used so far (None once it exited)."""
        return proc_cpu(self.pid) if self.running() else None

    def log_text(self) -> str:
        """Everything it wrote to stdout/stderr so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """Bytes of log written so far."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def answers(self, timeout: float = ALIVE_TIMEOUT) -> tuple:
        """Whether a fresh client is served: connect, HELLO, GET of the probe key.

        :param timeout: seconds for the whole exchange.
        :returns: ``(ok, seconds, what)`` — what went wrong when not ok.
        """
        t0 = time.monotonic()
        if not self.running():
            return False, 0.0, f"process exited ({self.proc.returncode if self.proc else None})"
        try:
            c = RawConn(self.port, timeout=timeout, token=self.token)
        except (OSError, ConnectionError, TimeoutError, AssertionError) as exc:
            return False, time.monotonic() - t0, f"connect/HELLO: {type(exc).__name__}: {exc}"
        try:
            m = c.call("GET", [PROBE_KEY], timeout=max(0.1, timeout - (time.monotonic() - t0)))
            if m is None:
                return False, time.monotonic() - t0, "closed without a reply"
            return m[1] == P.STATUS_OK, time.monotonic() - t0, "" if m[1] == 0 else str(m[2])
        except (OSError, TimeoutError) as exc:
            return False, time.monotonic() - t0, f"GET: {type(exc).__name__}"
        finally:
            c.close()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        p = self.proc
        if p is not None and p.poll() is None:
            kill_pid(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_pid(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout)
        self._close_log()
        return p.returncode if p is not None else None

    def kill9(self) -> None:
        """``kill -9`` (a crash), and reap it."""
        p = self.proc
        if p is not None and p.poll() is None:
            kill_pid(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


# =========================================================================== connections


class RawConn:
    """A counted raw connection: frames out, messages in, no retries, no client logic.

    :param port: the server's port (on 127.0.0.1).
    :param timeout: default seconds per blocking operation.
    :param hello: send HELLO first and require success.
    :param token: HELLO's token.
    :param options: HELLO's options map.
    :param rcvbuf: ``SO_RCVBUF`` before connecting (a small one for clients that never
        read, so what they do not read stays in the server rather than in the kernel).

    ``sent`` and ``read`` count the bytes that really crossed the socket.
    """

    def __init__(self, port: int, timeout: float = 10.0, hello: bool = True,
                 token: Optional[str] = None, options: Optional[dict] = None,
                 rcvbuf: Optional[int] = None, host: str = LOOPBACK):
        self.timeout = timeout
        self.sent = 0
        self.read = 0
        self.msgid = 0
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.settimeout(timeout)
        try:
            self.s.connect((host, port))
        except BaseException:
            self.s.close()
            raise
        self.dec = P.FrameDecoder(1 << 32)
        self.closed = False
        if hello:
            m = self.call("HELLO", [1, token, options or {}])
            if m is None or m[1] != P.STATUS_OK:
                self.close()
                raise ConnectionError(f"HELLO failed: {m!r:.200}")

    def next_id(self) -> int:
        """A fresh msgid."""
        self.msgid += 1
        return self.msgid

    def send(self, data: bytes, timeout: Optional[float] = None) -> int:
        """Send as much of ``data`` as the server takes within ``timeout``.

        :returns: bytes sent (less than ``len(data)`` when the server stopped reading or
            closed the connection).
        """
        view = memoryview(data)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        done = 0
        while done < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.s.settimeout(left)
            try:
                n = self.s.send(view[done:done + (1 << 20)])
            except (socket.timeout, BlockingIOError):
                break
            except OSError:  # reset / broken pipe: the server dropped us
                self.closed = True
                break
            done += n
            self.sent += n
        return done

    def request(self, op: str, args: list) -> int:
        """Send one request; returns its msgid."""
        msgid = self.next_id()
        self.send(P.encode_request(msgid, op, args, max_frame_size=1 << 32))
        return msgid

    def recv_msg(self, timeout: Optional[float] = None) -> Any:
        """The next message, or None when the server closed the connection.

        :raises TimeoutError: nothing complete arrived within ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            m = self.dec.next_frame()
            if m is not None:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete reply")
            self.s.settimeout(left)
            try:
                data = self.s.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError("no complete reply") from None
            except OSError:
                self.closed = True
                return None
            if not data:
                self.closed = True
                return None
            self.read += len(data)
            self.dec.feed(data)

    def call(self, op: str, args: list, timeout: Optional[float] = None) -> Any:
        """Send a request and return the next non-push message (None: closed)."""
        self.request(op, args)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            m = self.recv_msg(max(0.0, deadline - time.monotonic()))
            if m is None or not (isinstance(m, list) and len(m) == 4 and m[1] == P.PUSH):
                return m

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with contextlib.suppress(OSError):
            self.s.close()
        self.closed = True


def reply_summary(m: Any) -> str:
    """A short text for a reply: ``OK``, the error code, or ``closed``."""
    if m is None:
        return "closed, no reply"
    if isinstance(m, list) and len(m) == 3:
        if m[1] == P.STATUS_OK:
            return "OK"
        if isinstance(m[2], list) and m[2]:
            return str(m[2][0])
    return f"odd reply {m!r:.60}"


def reply_code(m: Any) -> Optional[str]:
    """The error code of an error reply, ``"OK"`` for a success, None when closed."""
    if m is None:
        return None
    if isinstance(m, list) and len(m) == 3:
        return "OK" if m[1] == P.STATUS_OK else (m[2][0] if isinstance(m[2], list) else "?")
    return "?"


# =========================================================================== measurements


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread (bounded)."""

    def __init__(self, pid: int, interval: float = 0.01, max_samples: int = 200_000):
        self.pid, self.interval, self.max_samples = pid, interval, max_samples
        self.peak = 0
        self.last = 0
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "RssSampler":
        """Start sampling."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and self.n < self.max_samples:
            rss = proc_status(self.pid).get("VmRSS")
            if rss is None:
                return
            self.last = rss
            self.peak = max(self.peak, rss)
            self.n += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling (joins the thread)."""
        self._stop.set()
        self._thread.join(5)


class Probe:
    """The well-behaved client: back-to-back single GETs in its own process.

    :param server: the server to probe.
    :param workdir: where its samples file goes.
    :param key: the key it reads.
    """

    def __init__(self, server: Server, workdir: str, key: bytes = PROBE_KEY):
        self.server, self.key = server, key
        self.out = os.path.join(workdir, f"probe-{time.monotonic_ns()}.npz")
        self.err = os.path.join(workdir, f"probe-{time.monotonic_ns()}.err")
        self.proc: Optional[subprocess.Popen] = None
        self.start_t = np.empty(0)
        self.lat = np.empty(0)
        self.errors = 0
        self.censored: Optional[tuple] = None  # (start, seconds so far) of a GET in flight

    @property
    def pid(self) -> int:
        """The probe's pid (0 before start)."""
        return self.proc.pid if self.proc else 0

    def start(self, timeout: float = 30.0) -> "Probe":
        """Start it and wait until it has connected and read once."""
        argv = [sys.executable, "-m", "benchmarks.attacks.probe", "--port", str(self.server.port),
                "--key", self.key.hex(), "--out", self.out]
        env = child_env({"VTPU_TOKEN": self.server.token} if self.server.token else None)
        self._errf = open(self.err, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._errf, env=env, start_new_session=True, cwd=ROOT)
        line = _readline(self.proc.stdout, timeout)
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"probe did not start: {line!r} {self._err_tail()}")
        return self

    def _err_tail(self) -> str:
        try:
            with open(self.err, "rb") as f:
                return f.read()[-400:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """Ask it to stop, collect its samples; kill it by pid if it does not answer."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.stdin.write(b"stop\n")
                p.stdin.flush()
            _readline(p.stdout, timeout)
        self.kill()
        try:
            with np.load(self.out) as z:
                self.start_t, self.lat = z["start"], z["lat"]
                self.errors = int(z["errors"])
                c = z["censored"]
                self.censored = (float(c[0]), float(c[1])) if c.size else None
        except (OSError, KeyError, ValueError):
            pass

    def kill(self) -> None:
        """Kill it by pid (idempotent)."""
        p = self.proc
        if p is not None and p.poll() is None:
            kill_pid(p.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for f in (getattr(self, "_errf", None), p.stdin if p else None, p.stdout if p else None):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def window(self, t0: float, t1: float) -> np.ndarray:
        """Latencies (s) of the GETs that overlapped ``[t0, t1]``, plus a GET still in
        flight when the probe stopped (counted with the time it had waited)."""
        s, lat = self.start_t, self.lat
        sel = (s < t1) & (s + lat > t0)
        out = lat[sel]
        if self.censored is not None and self.censored[0] < t1:
            out = np.append(out, self.censored[1])
        return out

    def completed_between(self, t0: float, t1: float) -> int:
        """How many GETs were both sent and answered inside ``(t0, t1)``."""
        s, lat = self.start_t, self.lat
        return int(((s > t0) & (s + lat < t1)).sum())


def _readline(f, timeout: float) -> bytes:
    """One line from a pipe, or b"" after ``timeout``."""
    r, _, _ = select.select([f], [], [], timeout)
    if not r:
        return b""
    return f.readline()


# =========================================================================== one run


class Stalled(RuntimeError):
    """The attack overran its hard timeout; its processes were killed."""


class Run:
    """One attack: its servers, probe and connections, its numbers, checks and verdict.

    :param name: the attack's name.
    :param cls: its class (control, memory, stalls, lockouts, storage).
    :param quick: run the small version.
    :param timeout: the hard timeout of the attack phase (set-up not counted).
    :param mem_limit: the address-space limit of the servers it starts.
    :param with_probe: run the probe during the attack.
    """

    def __init__(self, name: str, cls: str, quick: bool, timeout: float = HARD_TIMEOUT,
                 mem_limit: Optional[int] = MEM_LIMIT, with_probe: bool = True):
        self.name, self.cls, self.quick = name, cls, quick
        self.timeout, self.mem_limit, self.with_probe = timeout, mem_limit, with_probe
        self.allowance = ALLOWANCE_QUICK if quick else ALLOWANCE_FULL
        self.workdir = tempfile.mkdtemp(prefix=f"vtpu-attack-{name}-")
        self.servers: List[Server] = []
        self.probes: List[Probe] = []
        self.conns: List[RawConn] = []
        self.mounts: List[str] = []
        self.cleanups: List[Any] = []  # callables run at close (e.g. closing raw sockets)
        self.checks: List[dict] = []
        self.details: Dict[str, Any] = {}
        self.outcome = ""
        self.stalled = False
        self.main: Optional[Server] = None
        self.probe: Optional[Probe] = None
        self.t0 = self.t1 = None
        self.rss_before = self.rss_peak = self.rss_after = None
        self._sampler: Optional[RssSampler] = None
        self._hwm0 = 0
        self._steal0: Optional[float] = None  # host CPU steal when the window opened
        self._watchdog: Optional[threading.Timer] = None
        self.arm(SETUP_TIMEOUT)

    # -- sizes -----------------------------------------------------------------------------
    def size(self, full: Any, quick: Any) -> Any:
        """``quick`` in the quick version, else ``full``."""
        return quick if self.quick else full

    # -- watchdog --------------------------------------------------------------------------
    def arm(self, seconds: float) -> None:
        """(Re)start the watchdog: after ``seconds`` every process of the run is killed."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._deadline = time.monotonic() + seconds
        self._watchdog = threading.Timer(seconds, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def remaining(self) -> float:
        """Seconds left before the watchdog fires."""
        return max(0.0, self._deadline - time.monotonic())

    def _expire(self) -> None:
        self.stalled = True
        for p in self.probes:
            p.kill()
        for s in self.servers:
            if s.running():
                kill_pid(s.pid)

    def alive_or_stalled(self) -> None:
        """Raise :class:`Stalled` once the watchdog has fired (loops call this)."""
        if self.stalled:
            raise Stalled(f"hard timeout of {self.timeout:g} s")

    # -- processes and connections ---------------------------------------------------------
    def server(self, start: bool = True, **kw: Any) -> Server:
        """A server for this run (started unless ``start`` is False); stopped at the end.

        :param kw: :class:`Server` arguments; ``mem_limit`` defaults to the run's.
        """
        kw.setdefault("mem_limit", self.mem_limit)
        s = Server(self.workdir, **kw)
        self.servers.append(s)
        if start:
            s.start()
        return s

    def connect(self, server: Server, attacker: bool = True, **kw: Any) -> RawConn:
        """A raw connection; an attacker's bytes count toward the memory bar."""
        kw.setdefault("token", server.token)
        c = RawConn(server.port, **kw)
        if attacker:
            self.conns.append(c)
        return c

    @property
    def bytes_moved(self) -> int:
        """Bytes the attacker's connections really sent plus read."""
        return sum(c.sent + c.read for c in self.conns)

    def mount_tmpfs(self, path: str, size: str) -> None:
        """Mount a tmpfs of ``size`` at ``path`` (root only); unmounted at the end."""
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       check=True, capture_output=True, timeout=30)
        self.mounts.append(path)

    # -- the attack window -----------------------------------------------------------------
    def begin(self, server: Optional[Server], probe: Optional[bool] = None) -> None:
        """Set-up is done: start the probe, take the "before" numbers, arm the hard timeout.

        :param server: the server under attack (None: no numbers, only the timeout).
        :param probe: override the run's ``with_probe``.
        """
        self.main = server
        if server is None:  # an attack on start-up itself: only the clock and timeout
            self.arm(self.timeout)
            self.t0 = time.monotonic()
            return
        if self.with_probe if probe is None else probe:
            self.probe = Probe(server, self.workdir).start()
            self.probes.append(self.probe)
            time.sleep(0.2)  # let it settle into its loop before the numbers are taken
        st = server.status()
        self.rss_before = st.get("VmRSS")
        self._hwm0 = st.get("VmHWM", 0)
        self._sampler = RssSampler(server.pid).start()
        self._steal0 = steal_seconds()
        self.arm(self.timeout)
        self.t0 = time.monotonic()

    def end(self) -> None:
        """The attack proper is over (outcome known): close the window."""
        if self.t0 is not None and self.t1 is None:
            self.t1 = time.monotonic()
            steal = steal_seconds()
            if steal is not None and self._steal0 is not None:
                self.details["host_steal_s"] = round(steal - self._steal0, 2)
        if self._sampler is not None:
            self._sampler.stop()
            hwm = proc_status(self.main.pid).get("VmHWM", 0) if self.main.running() else 0
            # VmHWM only moves when the attack set a new peak; else the samples hold it.
            self.rss_peak = hwm if hwm > self._hwm0 else max(self._sampler.peak,
                                                               self.rss_before or 0)
            self._sampler = None

    @contextlib.contextmanager
    def window(self, server: Server, probe: Optional[bool] = None) -> Iterator["Run"]:
        """``begin`` ... ``end`` as a block."""
        self.begin(server, probe)
        try:
            yield self
        finally:
            self.end()

    # -- results ---------------------------------------------------------------------------
    def check(self, bar: str, ok: bool, value: str, timing: bool = False) -> bool:
        """Record one bar: what it is, whether it holds, the measured value.

        :param timing: a latency bar (the regression tests leave these to the runner).
        """
        self.checks.append({"bar": bar, "ok": bool(ok), "value": value, "timing": timing})
        return bool(ok)

    def note(self, **kw: Any) -> None:
        """Attack-specific numbers for the report."""
        self.details.update(kw)

    def close_attackers(self) -> None:
        """Close every attacker connection."""
        for c in self.conns:
            c.close()

    def finish(self, server: Optional[Server] = None, memory: bool = True,
               alive: bool = True) -> None:
        """The standard bars: still alive, memory within 2x bytes + allowance, probe.

        :param server: the attacked server (default: the one given to :meth:`begin`).
        :param memory: apply the memory bar.
        :param alive: apply the "answers a fresh client" bar.
        """
        server = server or self.main
        self.end()
        self.close_attackers()
        if alive:
            ok, secs, what = server.answers(min(ALIVE_TIMEOUT, max(0.5, self.remaining() - 3)))
            self.details["alive_s"] = round(secs, 4)
        # Looked at after the fresh client: a process on its way out still accepts.
        time.sleep(0.3)
        died = not server.running()
        self.details["exit_status"] = server.proc.returncode if died else None
        if died:
            self.details["log_tail"] = server.log_text()[-600:]
        if alive:
            self.check("process never dies (2 GiB limit)", not died,
                       f"exited with {server.proc.returncode}" if died else "running")
            self.check("answers a fresh client", ok,
                       f"in {secs * 1000:.1f} ms" if ok else (what or "no"))
        if server.running():
            self.rss_after = server.status().get("VmRSS")
        if memory and self.rss_before is not None and self.rss_peak is not None:
            growth = self.rss_peak - self.rss_before
            bound = 2 * self.bytes_moved + self.allowance
            self.check("RSS growth <= 2x bytes + allowance", growth <= bound,
                       f"+{growth / MiB:.1f} MiB vs {bound / MiB:.1f} MiB")
        if self.probe is not None:
            self.probe.stop()
            lat = self.probe.window(self.t0, self.t1)
            if lat.size:
                p50, p99 = np.percentile(lat, [50, 99]) * 1000
                mx = lat.max() * 1000
                self.details["probe"] = {"n": int(lat.size), "p50_ms": float(p50),
                                         "p99_ms": float(p99), "max_ms": float(mx),
                                         "errors": self.probe.errors}
                steal = self.details.get("host_steal_s")
                self.check(f"probe p99 <= {PROBE_P99_MS:g} ms, max <= {PROBE_MAX_MS:g} ms",
                           p99 <= PROBE_P99_MS and mx <= PROBE_MAX_MS,
                           f"p99 {p99:.2f} ms, max {mx:.1f} ms"
                           + (f" (host CPU steal meanwhile: {steal:g} s)" if steal else ""),
                           timing=True)
            else:
                self.details["probe"] = {"n": 0, "errors": self.probe.errors}
            self.check("probe's GETs never fail", self.probe.errors == 0,
                       f"{self.probe.errors} failed")

    def verdict(self) -> str:
        """PASS when every bar holds; STALLED after the hard timeout; else FAIL."""
        if self.stalled:
            return "STALLED"
        if not self.checks:
            return "ERROR"
        return "PASS" if all(c["ok"] for c in self.checks) else "FAIL"

    def result(self, error: Optional[str] = None) -> dict:
        """Everything measured, as plain data (the JSON export and the table use it)."""
        growth = (self.rss_peak - self.rss_before) if (
            self.rss_peak is not None and self.rss_before is not None) else None
        moved = self.bytes_moved
        return {
            "name": self.name, "class": self.cls, "quick": self.quick,
            "verdict": "ERROR" if error else self.verdict(), "error": error,
            "outcome": self.outcome,
            "elapsed_s": (self.t1 - self.t0) if (self.t0 is not None and self.t1 is not None)
            else None,
            "rss_before": self.rss_before, "rss_peak": self.rss_peak,
            "rss_after": self.rss_after, "rss_growth": growth,
            "bytes_sent": sum(c.sent for c in self.conns),
            "bytes_read": sum(c.read for c in self.conns),
            "bytes_moved": moved,
            "growth_per_byte": (growth / moved) if (growth is not None and moved) else None,
            "allowance": self.allowance,
            "checks": self.checks, "details": self.details,
        }

    def close(self, keep: bool = False) -> None:
        """Stop everything the run started (by pid), unmount, remove the work directory."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sampler is not None:
            self._sampler.stop()
        self.close_attackers()
        for fn in self.cleanups:
            with contextlib.suppress(Exception):
                fn()
        for p in self.probes:
            p.kill()
        for s in self.servers:
            s.stop(timeout=5)
        for m in reversed(self.mounts):
            subprocess.run(["umount", m], capture_output=True, timeout=30)
        self.mounts.clear()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# =========================================================================== waiting for replies

TIMEOUT = "no reply"  # what :func:`wait_reply` returns when nothing came in time


def wait_reply(conn: RawConn, seconds: float) -> tuple:
    """Wait up to ``seconds`` for the next non-push message on ``conn``.

    :returns: ``(message, seconds waited)``; the message is None when the server closed
        the connection and :data:`TIMEOUT` when nothing complete arrived.
    """
    t0 = time.monotonic()
    deadline = t0 + seconds
    while True:
        try:
            m = conn.recv_msg(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return TIMEOUT, time.monotonic() - t0
        if not (isinstance(m, list) and len(m) == 4 and m[1] == P.PUSH):
            return m, time.monotonic() - t0


def outcome_text(m: Any, seconds: float) -> str:
    """``"LIMIT after 2.10 s"``, ``"OK after ..."``, ``"closed, no reply after ..."``."""
    if m is TIMEOUT:
        return f"no reply in {seconds:.1f} s"
    return f"{reply_summary(m)} after {seconds:.2f} s"


def settle(run: Run, server: Server, max_s: float, quiet_s: float = 0.5) -> None:
    """Wait until the server's RSS has not grown for ``quiet_s`` (at most ``max_s``)."""
    deadline = time.monotonic() + min(max_s, run.remaining())
    last = server.status().get("VmRSS", 0)
    still = time.monotonic()
    while time.monotonic() < deadline and server.running():
        time.sleep(0.05)
        now = server.status().get("VmRSS", 0)
        if now > last + MiB:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet_s:
            return
