"""Peer servers for side-by-side benchmarks (DESIGN §8).

Starts the comparison servers found on the machine - Redis, memcached, etcd and a bare
TCP echo server (the latency floor) - each on 127.0.0.1 with a free port, and stops each
one by the pid it was started with. A peer that is missing or cannot start is *skipped*:
the start functions return ``None`` and report one clear line through ``log``; they never
raise for an absent peer.

Also here: CPU pinning helpers (latency runs pin client and server to one CPU, because on
a 2-vCPU machine whether they share a CPU changes loopback latency several-fold), the echo
client, and small clients for etcd's HTTP/JSON gateway.

Nothing in this module imports the rest of vtpu, so it works while the package is being
built and in the benchmark worker processes.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, List, Optional

LOOPBACK = "127.0.0.1"

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    Binds port 0 and closes the socket, so another process could take the port before the
    caller does; callers that start servers retry on failure.

    :param host: address to probe (loopback by default).
    :returns: a port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0,
              proc: Optional[subprocess.Popen] = None) -> bool:
    """Wait until a TCP connect to ``host:port`` succeeds.

    :param host: address.
    :param port: port.
    :param timeout: seconds to wait at most.
    :param proc: if given and it exits meanwhile, give up at once.
    :returns: True when the port accepts connections, False on timeout or process exit.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- pinning


def cpu_list() -> List[int]:
    """Return the CPUs this process may run on, sorted.

    :returns: list of CPU numbers (``[0]`` where affinity is not supported).
    """
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return [0]


def pick_cpu() -> int:
    """Choose the CPU that latency runs pin to: the last allowed one (CPU 0 takes most
    interrupts on small VMs).

    :returns: a CPU number.
    """
    return cpu_list()[-1]


def thread_ids(pid: int) -> List[int]:
    """Return the thread ids of process ``pid`` (just ``[pid]`` when /proc is missing).

    :param pid: process id.
    :returns: list of task ids.
    """
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def set_affinity(pid: int, cpus: Iterable[int], all_threads: bool = True) -> bool:
    """Pin process ``pid`` (0 = this process) to ``cpus``.

    ``sched_setaffinity`` acts on one thread; with ``all_threads`` every thread of the
    process is pinned (memcached and etcd serve from worker threads).

    :param pid: process id, 0 for the calling process.
    :param cpus: CPU numbers.
    :param all_threads: pin every thread listed under /proc/PID/task.
    :returns: True if at least the main thread was pinned, False if unsupported or failed.
    """
    cpus = set(cpus)
    if not hasattr(os, "sched_setaffinity"):
        return False
    real = os.getpid() if pid == 0 else pid
    tids = thread_ids(real) if all_threads else [real]
    ok = False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            ok = True
        except OSError:
            continue
    return ok


def get_affinity(pid: int = 0) -> Optional[set]:
    """Return the CPU set of ``pid`` (0 = self), or None where unsupported.

    :param pid: process id.
    :returns: set of CPU numbers or None.
    """
    try:
        return set(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


class Pinned:
    """Context manager: pin this process and the given pids to one CPU, restore on exit.

    ``with Pinned(cpu, [server_pid]) as p: ...``; ``p.ok`` says whether pinning worked.
    Pids that have exited are ignored.

    :param cpu: the CPU to share.
    :param pids: child process ids to pin with this process.
    """

    def __init__(self, cpu: Optional[int] = None, pids: Iterable[int] = ()):
        self.cpu = pick_cpu() if cpu is None else cpu
        self.pids = [p for p in pids if p]
        self._saved: dict = {}
        self.ok = False

    def __enter__(self) -> "Pinned":
        for pid in [0] + self.pids:
            before = get_affinity(pid)
            if before is None:
                continue
            self._saved[pid] = before
            self.ok = set_affinity(pid, [self.cpu]) or self.ok
        return self

    def __exit__(self, *exc) -> None:
        for pid, cpus in self._saved.items():
            set_affinity(pid, cpus)


# --------------------------------------------------------------------------- processes


class PeerProcess:
    """A server process started by this module, stopped by its pid.

    Attributes: ``name``, ``proc`` (subprocess.Popen), ``host``, ``port``, ``version``
    (str), ``workdir`` (temporary directory removed on stop, or None), ``extra`` (dict).
    """

    def __init__(self, name: str, proc: subprocess.Popen, host: str, port: int,
                 version: str = "", workdir: Optional[str] = None):
        self.name = name
        self.proc = proc
        self.host = host
        self.port = port
        self.version = version
        self.workdir = workdir
        self.extra: dict = {}

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process by pid: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Also removes the temporary work directory. Safe to call twice.

        :param timeout: seconds to wait for a clean exit.
        """
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PeerProcess {self.name} pid={self.pid} {self.host}:{self.port}>"


def _version(cmd: List[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _launch(name: str, argv_for_port: Callable[[int], List[str]], log: Log,
            ready: Callable[[int, subprocess.Popen], bool], version: str = "",
            workdir: Optional[str] = None, attempts: int = 3) -> Optional[PeerProcess]:
    """Start ``argv_for_port(port)`` on a free port, retrying when the port was taken."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        argv = argv_for_port(port)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            log(f"skip {name}: cannot start {argv[0]}: {exc}")
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            return None
        peer = PeerProcess(name, proc, LOOPBACK, port, version, workdir)
        if ready(port, proc):
            return peer
        err = b""
        if proc.poll() is not None and proc.stderr is not None:
            try:
                err = proc.stderr.read()[-400:]
            except OSError:
                err = b""
        last = err.decode("utf-8", "replace").strip().replace("\n", " | ")
        peer.workdir = None  # keep the directory for the next attempt
        peer.stop()
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"skip {name}: did not start on 127.0.0.1 ({last or 'no answer on its port'})")
    return None


HINT = "(install the peers with benchmarks/install_peers.sh)"


def start_redis(log: Log = _stderr) -> Optional[PeerProcess]:
    """Start ``redis-server`` on 127.0.0.1 and a free port, persistence off.

    :param log: receives a one-line reason when Redis is skipped.
    :returns: the running peer, or None when redis-server is missing or fails to start.
    """
    exe = shutil.which("redis-server")
    if not exe:
        log(f"skip redis: redis-server not found {HINT}")
        return None
    version = _version([exe, "--version"])

    def argv(port: int) -> List[str]:
        return [exe, "--bind", LOOPBACK, "--port", str(port), "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
                "--logfile", "", "--loglevel", "warning", "--dir", tempfile.gettempdir()]

    return _launch("redis", argv, log, lambda p, pr: wait_port(LOOPBACK, p, 10, pr), version)


def start_memcached(log: Log = _stderr) -> Optional[PeerProcess]:
    """Start ``memcached`` on 127.0.0.1 (TCP only, UDP off) and a free port.

    :param log: receives a one-line reason when memcached is skipped.
    :returns: the running peer, or None when memcached is missing or fails to start.
    """
    exe = shutil.which("memcached")
    if not exe:
        log(f"skip memcached: memcached not found {HINT}")
        return None
    version = _version([exe, "-V"])
    user = ["-u", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []

    def argv(port: int) -> List[str]:
        return [exe, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "512", "-t", "2"] + user

    return _launch("memcached", argv, log, lambda p, pr: wait_port(LOOPBACK, p, 10, pr),
                   version)


def start_etcd(log: Log = _stderr) -> Optional[PeerProcess]:
    """Start a one-member ``etcd`` on 127.0.0.1 (client and peer URLs) with a temp data dir.

    Writes go through Raft and are fsynced by etcd's WAL, which is what the sync benchmark
    compares against. ``peer.port`` is the client port (HTTP/JSON gateway at /v3/).

    :param log: receives a one-line reason when etcd is skipped.
    :returns: the running peer, or None when etcd is missing or fails to start.
    """
    exe = shutil.which("etcd")
    if not exe:
        log(f"skip etcd: etcd not found {HINT}")
        return None
    version = _version([exe, "--version"])
    workdir = tempfile.mkdtemp(prefix="vtpu-bench-etcd-")

    def argv(port: int) -> List[str]:
        peer_port = free_port()
        data = os.path.join(workdir, f"data-{port}")
        return [exe, "--name", "bench", "--data-dir", data,
                "--listen-client-urls", f"http://{LOOPBACK}:{port}",
                "--advertise-client-urls", f"http://{LOOPBACK}:{port}",
                "--listen-peer-urls", f"http://{LOOPBACK}:{peer_port}",
                "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer_port}",
                "--initial-cluster", f"bench=http://{LOOPBACK}:{peer_port}",
                "--log-level", "error"]

    def ready(port: int, proc: subprocess.Popen) -> bool:
        if not wait_port(LOOPBACK, port, 20, proc):
            return False
        # The port opens before the member has elected itself leader: wait for a put.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                c = EtcdClient(LOOPBACK, port, timeout=2)
                c.put(b"__vtpu_bench_ready", b"1")
                c.close()
                return True
            except (OSError, ValueError, http.client.HTTPException):
                time.sleep(0.1)
        return False

    return _launch("etcd", argv, log, ready, version, workdir)


# --------------------------------------------------------------------------- echo floor

ECHO_SERVER_SOURCE = r'''
import socket, struct, sys, threading
def serve(conn):
    # Reads whatever arrived, sends back every complete frame in one sendall: one
    # recv + one send per round trip, and pipelined frames go back in bulk.
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rbuf = bytearray(1 << 16)
    rview = memoryview(rbuf)
    pending = bytearray()
    unpack = struct.Struct(">I").unpack_from
    try:
        while True:
            n = conn.recv_into(rbuf)
            if not n:
                return
            if not pending and n >= 4 and unpack(rbuf, 0)[0] + 4 == n:
                conn.sendall(rview[:n])  # the common case: exactly one whole frame
                continue
            pending += rview[:n]
            off, end = 0, len(pending)
            while end - off >= 4:
                size = unpack(pending, off)[0]
                if end - off - 4 < size:
                    break
                off += 4 + size
            if off:
                conn.sendall(pending[:off])
                del pending[:off]
    except OSError:
        pass
    finally:
        conn.close()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
srv.listen(128)
sys.stdout.write("%d\n" % srv.getsockname()[1])
sys.stdout.flush()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def start_echo(log: Log = _stderr) -> Optional[PeerProcess]:
    """Start the bare TCP echo server (the latency floor) in a Python subprocess.

    It echoes 4-byte big-endian length-prefixed frames unchanged (every complete frame
    received is sent back in one write), one thread per connection, binding 127.0.0.1
    port 0 and printing the port it got.

    :param log: receives a one-line reason when the echo server cannot start.
    :returns: the running peer, or None.
    """
    try:
        proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER_SOURCE],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        log(f"skip echo: cannot start {sys.executable}: {exc}")
        return None
    peer = None
    try:
        line = proc.stdout.readline() if proc.stdout else b""
        port = int(line.strip())
        peer = PeerProcess("echo", proc, LOOPBACK, port,
                           f"python {sys.version.split()[0]} socket echo")
        if wait_port(LOOPBACK, port, 5, proc):
            return peer
    except (ValueError, OSError):
        pass
    (peer or PeerProcess("echo", proc, LOOPBACK, 0)).stop()
    log("skip echo: the echo server did not start")
    return None


class EchoClient:
    """Blocking client of the echo server: one frame out, the same frame back.

    :param host: server address.
    :param port: server port.
    :param timeout: socket timeout in seconds.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray(1 << 16)
        self._view = memoryview(self._buf)

    def call(self, payload: bytes) -> int:
        """Send one length-prefixed frame and read the echo back with ``recv_into``.

        :param payload: frame body.
        :returns: number of bytes received (header included).
        :raises ConnectionError: when the server closes the connection.
        """
        frame = struct.pack(">I", len(payload)) + payload
        self.sock.sendall(frame)
        want = len(frame)
        if want > len(self._buf):
            self._buf = bytearray(want)
            self._view = memoryview(self._buf)
        got = 0
        view = self._view
        while got < want:
            n = self.sock.recv_into(view[got:want])
            if not n:
                raise ConnectionError("echo server closed the connection")
            got += n
        return got

    def send_many(self, payloads: List[bytes]) -> int:
        """Pipeline: write every frame in one ``sendall`` then read every echo back.

        :param payloads: frame bodies.
        :returns: total bytes received.
        :raises ConnectionError: when the server closes the connection.
        """
        blob = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
        self.sock.sendall(blob)
        want = len(blob)
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        while got < want:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise ConnectionError("echo server closed the connection")
            got += n
        return got

    def close(self) -> None:
        """Close the socket."""
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- etcd client


class EtcdClient:
    """Minimal client of etcd's v3 HTTP/JSON gateway on one keep-alive connection.

    :param host: etcd client address.
    :param port: etcd client port.
    :param timeout: socket timeout in seconds.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        self.conn.request("POST", path, body=data,
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise ValueError(f"etcd {path}: HTTP {resp.status}: {raw[:200]!r}")
        if self.conn.sock is not None:
            try:
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return json.loads(raw or b"{}")

    def put(self, key: bytes, value: bytes) -> dict:
        """Write ``key`` = ``value`` (one Raft proposal, durable when answered).

        :param key: key bytes.
        :param value: value bytes.
        :returns: the decoded JSON reply.
        :raises ValueError: on a non-200 reply.
        :raises OSError: on a network failure.
        """
        return self._post("/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                         "value": base64.b64encode(value).decode()})

    def get(self, key: bytes) -> Optional[bytes]:
        """Read ``key``; return its value or None.

        :param key: key bytes.
        :returns: value bytes or None.
        """
        out = self._post("/v3/kv/range", {"key": base64.b64encode(key).decode()})
        kvs = out.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


# --------------------------------------------------------------------------- registry

STARTERS = {
    "echo": start_echo,
    "redis": start_redis,
    "memcached": start_memcached,
    "etcd": start_etcd,
}


def start_peer(name: str, log: Log = _stderr) -> Optional[PeerProcess]:
    """Start the peer called ``name`` (echo, redis, memcached, etcd).

    :param name: peer name.
    :param log: receives a one-line reason when the peer is skipped.
    :returns: the running peer or None.
    :raises KeyError: for an unknown peer name.
    """
    return STARTERS[name](log)


def python_module_version(name: str) -> Optional[str]:
    """Return the installed version of a Python distribution, or None if not installed.

    :param name: distribution name (``redis``, ``hiredis``, ``pymemcache``...).
    :returns: version string or None.
    """
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def peer_versions() -> dict:
    """Return the versions of the peer servers and client libraries found on the machine.

    :returns: dict name -> version string or None when missing.
    """
    out = {}
    for name, cmd in (("redis-server", ["redis-server", "--version"]),
                      ("memcached", ["memcached", "-V"]),
                      ("etcd", ["etcd", "--version"])):
        exe = shutil.which(cmd[0])
        out[name] = _version([exe] + cmd[1:]) if exe else None
    for mod in ("redis", "hiredis", "pymemcache", "matplotlib", "uvloop", "msgpack",
                "faiss-cpu"):
        out["py:" + mod] = python_module_version(mod)
    return out
