"""Crash safety: a real server with ``--data``, killed with SIGKILL at random points while
clients write; after each restart every acknowledged write must be there, intact.

Each round: start ``python -m vtpu.server --port 0 --data DIR --fsync F`` (the port is read
from its start-up line), intern a name, then pipeline writes (PUT of str / bytes / ndarray
/ msgpack map / int contents, PUT_MANY, DEL, overwrites of hot keys, keys that use the
interned name), recording which ones were acknowledged. A timer SIGKILLs the server at a
random moment. Restart on the same directory and check:

* the server starts at all (the store opens and passes ``quick_check``);
* every key whose last acknowledged operation was a PUT holds that content (or a later
  one that was sent on the same connection), with ``version`` >= the acknowledged one;
  every acknowledged DEL stays deleted unless a later PUT was sent;
* fresh keys survive as a prefix of their send order (commits are atomic and ordered:
  no holes);
* everything verified in earlier rounds is still there unchanged, and the interned names
  are still in the name table at the same ids.

Default run: 5 rounds with ``fsync=always`` plus one round each of ``everysec`` and
``never`` (kill -9 alone loses nothing acknowledged under any policy). Set
``VTPU_CRASH_ROUNDS=20`` (or run ``-m slow`` with ``VTPU_SLOW=1``) for the long run.
"""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

P = pytest.importorskip("vtpu.protocol")

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_BASE = 0xF000
START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0


def _engine_available() -> bool:
    try:
        import vtpu.engine  # noqa: F401
        import vtpu.server  # noqa: F401
    except ImportError:
        return False
    return True


requires_server = pytest.mark.skipif(
    not _engine_available(), reason="vtpu.engine / vtpu.server not importable yet"
)


# ---------------------------------------------------------------------------- server


class Server:
    """A server subprocess on 127.0.0.1 with its stderr in a log file."""

    def __init__(self, data: str, fsync: str, log_path: str):
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(log_path, "ab")
        self.log_offset = self.log.tell()  # the log is shared by rounds: read only ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vtpu.server", "--host", "127.0.0.1", "--port", "0",
             "--data", data, "--fsync", fsync],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=ROOT,
        )
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        pat = re.compile(rb"serving on [\d.]+:(\d+)")
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read()
            m = pat.search(text)
            if m is not None and self.proc.poll() is None:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n"
                    + text.decode("utf-8", "replace")[-4000:]
                )
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"server did not start within {START_TIMEOUT} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the killer timer's kill and this one raced: it is gone either way
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.log.close()


class Raw:
    """The smallest protocol client: pipelined requests over one socket."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.dec = P.FrameDecoder()
        self.next_id = 1
        hello = self.call("HELLO", [P.PROTOCOL_VERSION, None, {}])
        assert hello["server"] == "vtpu"

    def send(self, op: str, args: list) -> int:
        msgid = self.next_id
        self.next_id += 1
        self.sock.sendall(P.encode_request(msgid, op, args))
        return msgid

    def recv(self):
        while True:
            body = self.dec.next_frame()
            if body is not None:
                if isinstance(body, (bytes, bytearray, memoryview)):
                    body = P.unpackb(body)
                r = P.parse_reply(body)
                if isinstance(r, P.Push):
                    continue
                return r
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionResetError("server closed the connection")
            self.dec.feed(data)

    def call(self, op: str, args: list):
        msgid = self.send(op, args)
        r = self.recv()
        assert r.msgid == msgid
        if not r.ok:
            raise AssertionError(f"{op} failed: {r.value}")
        return r.value

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------- model


def key_of(*c: int) -> bytes:
    return b"".join(int(v).to_bytes(2, "big") for v in c)


def fresh_key(rnd: int, kind: int, seq: int, j: int = 1, name_id: int = 1) -> bytes:
    """A key written exactly once: unique per (round, kind, seq, j)."""
    return key_of(rnd + 10, kind, 1 + seq // 1_000_000, name_id, 1, 1 + (seq // 1000) % 1000,
                  1 + seq % 1000, 1, j)


def make_content(rng: random.Random, tag: str):
    kind = rng.randrange(5)
    if kind == 0:
        return f"text {tag} \u00e9\r\n" * rng.randint(1, 3)
    if kind == 1:
        return tag.encode() + bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if kind == 2:
        shape = (rng.randint(1, 4), rng.randint(1, 8))
        dtype = rng.choice([np.float32, np.float64, np.int64, np.uint16])
        return (np.arange(shape[0] * shape[1]).reshape(shape) + len(tag)).astype(dtype)
    if kind == 3:
        return {"tag": tag, "n": rng.randint(0, 10**9), "l": [1, 2.5, None, "x"]}
    return rng.randint(-2**40, 2**40)


def same_content(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return type(a) is type(b) and a == b


class Model:
    """What was sent and what was acknowledged, per key, across rounds."""

    def __init__(self):
        self.verified: dict[bytes, tuple] = {}  # key -> (content, version) after last check
        self.names: dict[str, int] = {}

    def start_round(self):
        self.history: dict[bytes, list] = {}  # key -> [(op, content, acked_version|None)]
        self.fresh: list[bytes] = []  # keys written exactly once, in send order
        self.acked_fresh: set[bytes] = set()

    def sent(self, key: bytes, op: str, content=None) -> tuple:
        h = self.history.setdefault(key, [])
        h.append([op, content, None, False])
        return key, len(h) - 1

    def acked(self, ref: tuple, version) -> None:
        key, i = ref
        entry = self.history[key][i]
        entry[2] = version
        entry[3] = True


def run_round(rnd: int, data: str, fsync: str, log: str, model: Model, rng: random.Random):
    server = Server(data, fsync, log)
    try:
        cl = Raw(server.port)
        verify_previous(cl, model)
        name = f"crash_r{rnd}"
        ids = cl.call("INTERN", [[name]])
        model.names[name] = ids[0]
        model.start_round()
        hot = [key_of(9, 9, 9, 1, 1, 1, 1, 1, i) for i in range(1, 9)]
        killer = threading.Timer(rng.uniform(0.05, 0.6), server.kill)
        inflight: dict[int, list] = {}
        seq = 0
        deadline = time.monotonic() + 30
        killer.start()
        try:
            while time.monotonic() < deadline and seq < 200_000:
                # keep up to 32 requests in flight so the kill lands between writes,
                # commits and acknowledgements
                while len(inflight) < 32:
                    seq += 1
                    r = rng.random()
                    if r < 0.55:
                        k = fresh_key(rnd, 1, seq)
                        if seq % 7 == 0:  # a key using the interned name
                            k = fresh_key(rnd, 2, seq, name_id=ids[0])
                        c = make_content(rng, f"{rnd}/{seq}")
                        refs = [model.sent(k, "put", c)]
                        model.fresh.append(k)
                        msgid = cl.send("PUT", [k, c])
                    elif r < 0.85:
                        k = rng.choice(hot)
                        c = make_content(rng, f"hot {rnd}/{seq}")
                        refs = [model.sent(k, "put", c)]
                        msgid = cl.send("PUT", [k, c])
                    elif r < 0.95:
                        ks = [fresh_key(rnd, 3, seq, j) for j in range(5)]
                        cs = [f"many {rnd}/{seq}/{j}" for j in range(5)]
                        refs = [model.sent(k, "put", c) for k, c in zip(ks, cs)]
                        model.fresh.extend(ks)
                        msgid = cl.send("PUT_MANY", [b"".join(ks), cs])
                    else:
                        k = rng.choice(hot)
                        refs = [model.sent(k, "del")]
                        msgid = cl.send("DEL", [k])
                    inflight[msgid] = refs
                reply = cl.recv()
                refs = inflight.pop(reply.msgid)
                assert reply.ok, f"write failed: {reply.value}"
                versions = reply.value if isinstance(reply.value, list) else [reply.value]
                for ref, v in zip(refs, versions):
                    model.acked(ref, v)
        except (OSError, ConnectionResetError):
            pass  # the server was killed mid-stream: expected
        finally:
            killer.cancel()
            cl.close()
    finally:
        server.kill()
    acked = sum(1 for h in model.history.values() for e in h if e[3])
    # Restart and check.
    server = Server(data, fsync, log)
    try:
        cl = Raw(server.port)
        check_round(cl, model)
        cl.close()
    finally:
        server.stop()
    return acked


def fetch(cl: Raw, keys: list[bytes]) -> dict[bytes, tuple]:
    out = {}
    for i in range(0, len(keys), 5000):
        chunk = keys[i:i + 5000]
        w = cl.call("GET_MANY", [b"".join(chunk)])
        for k, row in zip(chunk, P.wire_to_rows(w)):
            out[k] = row
    return out


def verify_previous(cl: Raw, model: Model) -> None:
    if not model.verified:
        return
    keys = list(model.verified)
    got = fetch(cl, keys)
    for k in keys:
        exp = model.verified[k]
        row = got[k]
        if exp is None:
            assert row is None, f"deleted key {k.hex()} came back"
        else:
            assert row is not None, f"key {k.hex()} verified earlier is gone"
            assert same_content(row[1], exp[0]) and row[2] == exp[1], f"key {k.hex()} changed"
    table = cl.call("NAMES", [])
    for name, ident in model.names.items():
        assert table[ident - NAME_BASE] == name, f"name {name} lost or moved"


def check_round(cl: Raw, model: Model) -> None:
    keys = list(model.history)
    got = fetch(cl, keys)
    for k in keys:
        h = model.history[k]
        last_ack = max((i for i, e in enumerate(h) if e[3]), default=-1)
        row = got[k]
        # Allowed final states: the state after op j for some j >= last_ack (ops of one
        # connection are applied and committed in order); before any op, the key held
        # whatever the previous rounds verified.
        prior = model.verified.get(k)
        ok_states = []
        if last_ack == -1:
            ok_states.append(("prior", prior))
        for j in range(max(last_ack, 0), len(h)):
            ok_states.append((h[j][0], h[j]))
        matched = False
        for kind, e in ok_states:
            if kind == "prior":
                if (e is None and row is None) or (
                    e is not None and row is not None and same_content(row[1], e[0])
                ):
                    matched = True
            elif kind == "del":
                if row is None:
                    matched = True
            else:
                if row is not None and same_content(row[1], e[1]):
                    if e[3]:
                        assert row[2] >= e[2], f"{k.hex()}: version went back"
                    matched = True
            if matched:
                break
        assert matched, (
            f"key {k.hex()}: stored {row!r} is not an allowed state "
            f"(last acknowledged op #{last_ack} of {len(h)})"
        )
        if row is not None:
            assert row[2] >= 1 and row[3] <= row[4]
    # Fresh keys: present ones form a prefix of the send order (no holes).
    present = [got[k] is not None for k in model.fresh]
    if False in present:
        first_missing = present.index(False)
        assert not any(present[first_missing:]), "a later write survived an earlier lost one"
    # Remember what is there now for the next rounds.
    for k in keys:
        row = got[k]
        model.verified[k] = None if row is None else (row[1], row[2])
    verify_previous(cl, model)


# ---------------------------------------------------------------------------- tests


def _rounds(tmp_path, fsync: str, n: int, seed: int):
    rng = random.Random(seed)
    model = Model()
    data = str(tmp_path / "data")
    log = str(tmp_path / "server.log")
    total = 0
    for rnd in range(n):
        total += run_round(rnd, data, fsync, log, model, rng)
    print(f"\n{n} crash rounds (fsync={fsync}): {total} acknowledged writes checked, "
          f"{len(model.verified)} keys verified")
    return total


@requires_server
def test_crash_rounds_always(tmp_path):
    n = int(os.environ.get("VTPU_CRASH_ROUNDS", "5"))
    _rounds(tmp_path, "always", n, seed=1234)


@requires_server
@pytest.mark.parametrize("fsync", ["everysec", "never"])
def test_crash_round_other_policies(tmp_path, fsync):
    _rounds(tmp_path, fsync, 1, seed=99)


@requires_server
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VTPU_SLOW"), reason="set VTPU_SLOW=1 for 20 rounds")
def test_crash_20_rounds(tmp_path):
    _rounds(tmp_path, "always", 20, seed=20)
