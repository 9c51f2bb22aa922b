"""The probe process: one well-behaved client doing back-to-back single GETs.

``python -m benchmarks.attacks.probe --port P --key HEX --out FILE.npz`` connects to
127.0.0.1:P (token from ``VTPU_TOKEN``), prints ``ready`` after its first GET, then reads
the key in a loop, recording when each GET started (``time.monotonic``, the same clock
as the harness) and how long it took. A line on stdin (or its end) stops it: it writes
the samples, including a GET still in flight with the time it has waited so far, prints
``done`` and exits. A failed GET is recorded with the time until it failed, counted as
an error, and the client reconnects on its next call (20 ms later).
"""
from __future__ import annotations

import argparse
import array
import os
import sys
import threading
import time

import numpy as np

from vtpu.errors import VTPUError
from vtpu.netclient import RemoteEngine

MAX_GETS = 20_000_000  # bounds memory and the loop
MAX_SECONDS = 1800.0


def main(argv=None) -> int:
    """Run the probe until told to stop (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="probe")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True, help="the key to read, hex")
    ap.add_argument("--out", required=True)
    ns = ap.parse_args(argv)
    key = bytes.fromhex(ns.key)
    token = os.environ.get("VTPU_TOKEN")
    starts = array.array("d")
    lats = array.array("d")
    state = {"inflight": None, "errors": 0, "stop": False}
    lock = threading.Lock()

    def finish() -> None:
        # A GET in flight gets a moment to complete, so the time this thread took to
        # wake up is not counted as its latency; one still waiting after that is
        # recorded with the time it has waited (a lower bound).
        deadline = time.monotonic() + 0.2
        while state["inflight"] is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        with lock:
            inflight = state["inflight"]
            n = min(len(starts), len(lats))
            s = np.frombuffer(starts, dtype=np.float64)[:n].copy()
            lt = np.frombuffer(lats, dtype=np.float64)[:n].copy()
        censored = np.array([inflight, time.monotonic() - inflight]) if inflight else np.empty(0)
        tmp = ns.out + ".tmp.npz"
        np.savez(tmp, start=s, lat=lt, errors=np.int64(state["errors"]), censored=censored)
        os.replace(tmp, ns.out)
        sys.stdout.write("done\n")
        sys.stdout.flush()
        os._exit(0)

    def watch_stdin() -> None:
        sys.stdin.readline()
        state["stop"] = True
        finish()

    c = RemoteEngine(port=ns.port, token=token, timeout=600, retries=0)
    c.get(key)
    threading.Thread(target=watch_stdin, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    mono = time.monotonic
    t_end = mono() + MAX_SECONDS
    while not state["stop"] and len(lats) < MAX_GETS:
        t0 = mono()
        if t0 > t_end:
            break
        state["inflight"] = t0
        failed = False
        try:
            c.get(key)
        except (VTPUError, OSError):
            failed = True
        t1 = mono()
        with lock:
            # A failed GET counts too, with the time until it failed: the client waited.
            state["inflight"] = None
            starts.append(t0)
            lats.append(t1 - t0)
        if failed:
            state["errors"] += 1
            time.sleep(0.02)
    # Stopped or out of bounds: the stdin thread writes the samples and exits the
    # process; returning here would end the process under it.
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
