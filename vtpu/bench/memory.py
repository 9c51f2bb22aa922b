"""``vtpu bench --test memory``: how many bytes the server holds per scroll, beside Redis
holding the same keys and values.

Two data sets of the bench size (``--scrolls``, default 1M): scrolls of 20-byte text, and
float32 vectors of 64 dims (256 raw bytes each). Each is loaded into a *fresh* vtpu server
through the client in batches (``cput_many``), and the server's resident set
(``/proc/PID/status`` VmRSS) is read before, after, and after a full ``gc.collect()`` in
the server (the server is started with a SIGUSR1 handler that collects, for this
measurement only). The same keys (the 18-byte packed coordinates) and values (the text's
UTF-8 bytes, the vector's raw bytes) go into a fresh Redis with pipelined MSET, read the
same way. Growth per item = (after - before) / N.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Optional

import numpy as np

from . import peers as _peers
from .common import Progress, in_batches, load_scrolls, log, rss_bytes, vtpu_connect
from .crange import dataset_coords
from .harness import Ctx, LocalServer, redis_client

TEXT_BYTES = 20
VECTOR_DIM = 64
TARGET_RATIO = 0.7  # issue 10: vtpu growth per scroll <= 0.7x Redis growth per key

# The server under measurement runs vtpu.server's own main() after installing one signal
# handler, so a full collection can be asked for from outside without a protocol command.
_GC_BOOT = (
    "import gc, signal, sys\n"
    "def _collect(signum, frame):\n"
    "    n = gc.collect()\n"
    "    sys.stderr.write('vtpu-bench gc collected %d\\n' % n)\n"
    "    sys.stderr.flush()\n"
    "signal.signal(signal.SIGUSR1, _collect)\n"
    "from vtpu.server import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class GcServer(LocalServer):
    """A memory-only vtpu server subprocess that runs ``gc.collect()`` on SIGUSR1."""

    def _argv(self) -> list:
        argv = super()._argv()
        # [python, "-m", "vtpu.server", options...] -> [python, "-c", boot, options...]
        return [argv[0], "-c", _GC_BOOT] + argv[3:]

    def collect(self, client, timeout: float = 10.0) -> bool:
        """Ask the server for a full collection and wait until it reports one.

        The handler runs when the server's main thread next executes Python code, so
        requests are sent until the server's stderr shows the collection.

        :param client: a client of this server (its requests wake the loop).
        :param timeout: seconds to wait.
        :returns: True when the server reported the collection.
        """
        marker = "vtpu-bench gc collected"
        before = self._stderr_tail(whole=True).count(marker)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client.cget("0.0.0/0.0.0/0.0.0")
            if self._stderr_tail(whole=True).count(marker) > before:
                return True
            time.sleep(0.02)
        return False


def text_contents(n: int) -> list:
    """N distinct texts of exactly :data:`TEXT_BYTES` ASCII bytes.

    :param n: how many (< 10**8).
    :returns: list of str.
    """
    return [f"scroll text {i:08d}" for i in range(n)]


def vector_contents(n: int) -> np.ndarray:
    """N float32 vectors of :data:`VECTOR_DIM` dims (row i is content i).

    :param n: how many.
    :returns: (n, 64) float32.
    """
    return np.random.default_rng(23).standard_normal((n, VECTOR_DIM), dtype=np.float32)


def vtpu_growth(arr: np.ndarray, contents: Any, label: str, show: bool) -> dict:
    """Load ``contents`` at ``arr`` into a fresh server; return its RSS growth.

    :param arr: (N, 9) coordinates.
    :param contents: N contents (list, or array whose row i is content i).
    :param label: progress label.
    :param show: progress lines.
    :returns: dict with n, rss_before/after/after_gc, per-scroll bytes, load seconds, gc_ok.
    :raises RuntimeError: the server did not start or did not store every scroll.
    """
    n = len(arr)
    with GcServer() as server:
        c = vtpu_connect(server.url)
        try:
            c.cput("0.0.0/0.0.0/9.9.9", "warm-up")  # first-request allocations out of the way
            c.cdel("0.0.0/0.0.0/9.9.9")
            server.collect(c)
            before = rss_bytes(server.pid)
            secs = load_scrolls(c, arr, contents, batch=50_000, label=label, show=show)
            after = rss_bytes(server.pid)
            gc_ok = server.collect(c)
            after_gc = rss_bytes(server.pid)
            stored = c.ccount("*.*.*/*.*.*/*.*.*")
        finally:
            c.close()
    if stored != n:
        raise RuntimeError(f"the server holds {stored} scrolls after loading {n}")
    if before is None or after_gc is None:
        raise RuntimeError("cannot read the server's VmRSS from /proc")
    return {"n": n, "rss_before": before, "rss_after": after, "rss_after_gc": after_gc,
            "per_item": (after_gc - before) / n, "per_item_before_gc": (after - before) / n,
            "load_s": secs, "gc_ok": gc_ok}


def redis_growth(ctx: Ctx, keys: list, values: list, label: str) -> Optional[dict]:
    """Load ``keys``/``values`` into a fresh Redis with pipelined MSET; RSS growth.

    :param ctx: the context (for skip lines, peer selection and progress).
    :param keys: N byte keys.
    :param values: N byte values.
    :param label: progress label.
    :returns: dict like :func:`vtpu_growth` (plus used_memory), or None when skipped.
    """
    rep = ctx.report
    if ctx.peers.allowed is not None and "redis" not in ctx.peers.allowed:
        rep.skip("skip redis (memory): not selected (--peers)")
        return None
    # A Redis of its own: the shared peer holds other tests' keys.
    peer = _peers.start_redis(rep.skip)
    if peer is None:
        rep.skip("skip redis (memory): no redis-server, so no B/key to compare "
                 "(apt-get install redis-server)")
        return None
    try:
        r = redis_client(peer, rep)
        if r is None:
            return None
        before = rss_bytes(peer.pid)
        used0 = int(r.info("memory")["used_memory"])
        n = len(keys)
        prog = Progress(f"{label} {n:,} keys", n, ctx.show)
        t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        # MSETs of 1000 keys, ten to a round trip.
        for s, e in in_batches(n, 10_000):
            for a, b in in_batches(e - s, 1000):
                pipe.mset(dict(zip(keys[s + a:s + b], values[s + a:s + b])))
            pipe.execute()
            prog.update(e)
        secs = time.perf_counter() - t0
        stored = int(r.dbsize())
        after = rss_bytes(peer.pid)
        used1 = int(r.info("memory")["used_memory"])
        r.close()
    finally:
        peer.stop()
    if stored != n:
        raise RuntimeError(f"Redis holds {stored} keys after loading {n}")
    return {"n": n, "rss_before": before, "rss_after": after, "per_item": (after - before) / n,
            "used_memory_per_item": (used1 - used0) / n, "load_s": secs,
            "version": peer.version}


def packed_keys(arr: np.ndarray) -> list:
    """The 18-byte packed (big-endian) form of each coordinate, as Redis keys.

    :param arr: (N, 9) uint16.
    :returns: list of N bytes.
    """
    be = np.ascontiguousarray(arr.astype(">u2")).view(np.dtype((np.void, 18))).ravel()
    return [bytes(k) for k in be]


def run(ctx: Ctx) -> None:
    """Server RSS growth per scroll for N scrolls of 20-byte text and N float32 vectors
    of 64 dims, beside a Redis holding the same keys and values."""
    rep = ctx.report
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        rep.skip("skip memory: no /proc/PID/status on this system")
        return
    n = ctx.sizes["n_scrolls"]
    arr = dataset_coords(n)
    n = len(arr)
    keys = packed_keys(arr)
    detail: dict = {"n": n}
    sets = (("text", f"{TEXT_BYTES}-byte text", text_contents(n)),
            ("vector", f"float32 x{VECTOR_DIM} vectors", vector_contents(n)))
    for name, what, contents in sets:
        log(f"  memory: {n:,} scrolls of {what}")
        v = vtpu_growth(arr, contents, f"memory ({name}): vtpu load", ctx.show)
        if isinstance(contents, np.ndarray):
            values = [row.tobytes() for row in contents]
        else:
            values = [x.encode("utf-8") for x in contents]
        raw = len(values[0])
        red = redis_growth(ctx, keys, values, f"memory ({name}): Redis MSET")
        del values
        detail[name] = {"vtpu": v, "redis": red, "value_bytes": raw}
        size = f"{n / 1e6:g}M" if n >= 100_000 else f"{n:,}"
        gc_note = "" if v["gc_ok"] else "; the server did not report its gc"
        base = (f"RSS growth after gc; before gc {v['per_item_before_gc']:.0f} B; "
                f"raw {18 + raw} B (18 key + {raw} value){gc_note}")
        if name == "text":
            x = v["per_item"] / red["per_item"] if red and red["per_item"] > 0 else None
            rep.row("memory", f"{size} x {what}: server RSS/scroll",
                    v["per_item"], "B", peer="Redis RSS per key (MSET)" if red else None,
                    peer_value=red["per_item"] if red else None,
                    target=f"<={TARGET_RATIO}x Redis" if red else None,
                    target_ok=(x <= TARGET_RATIO) if x is not None else None,
                    note=(f"{x:.2f}x Redis; " if x is not None else "") + base
                    + (f"; Redis used_memory {red['used_memory_per_item']:.0f} B/key"
                       if red else ""))
        else:
            rep.row("memory", f"{size} x {what}: server RSS/scroll",
                    v["per_item"], "B", peer="Redis RSS per key (MSET)" if red else None,
                    peer_value=red["per_item"] if red else None,
                    note=f"{v['per_item'] / raw:.2f}x the raw {raw} B vector; " + base
                    + (f"; Redis used_memory {red['used_memory_per_item']:.0f} B/key"
                       if red else ""))
    rep.tests["memory"] = detail
