"""Single GET latency over TLS vs plaintext, on loopback.

Starts two ``vtpu serve`` processes (one with ``--tls-cert/--tls-key``, certificates
made with the openssl binary) and times single GETs of one small scroll through
:class:`vtpu.netclient.RemoteEngine`, alternating rounds between the two so drift hits
both alike. Run it pinned to one CPU, as the bench does its latency rows::

    taskset -c 1 python benchmarks/tls_get_p50.py
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netutil import ServeProcess, make_certs  # noqa: E402

from vtpu import _core  # noqa: E402
from vtpu.netclient import RemoteEngine  # noqa: E402

ROUNDS, PER_ROUND, WARMUP = 10, 5000, 2000


def main() -> int:
    key = _core.pack(_core.parse_coord("1.1.1/1.1.1/1.1.1"))
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(tmp)
        plain = ServeProcess([], tmp).start()
        tls = ServeProcess(["--tls-cert", certs.server_cert, "--tls-key", certs.server_key],
                           tmp).start()
        try:
            clients = {"plaintext": RemoteEngine(port=plain.port),
                       "TLS": RemoteEngine(port=tls.port, tls_ca=certs.ca)}
            samples: dict = {name: [] for name in clients}
            for c in clients.values():
                c.put(key, "x" * 64)
                for _ in range(WARMUP):
                    c.get(key)
            clock = time.perf_counter_ns
            for _ in range(ROUNDS):
                for name, c in clients.items():
                    out = samples[name]
                    get = c.get
                    for _ in range(PER_ROUND):
                        t0 = clock()
                        get(key)
                        out.append(clock() - t0)
            for c in clients.values():
                c.close()
        finally:
            plain.stop()
            tls.stop()
    p50 = {}
    for name, s in samples.items():
        s.sort()
        p50[name] = statistics.median(s) / 1000
        q = lambda f: s[int(len(s) * f)] / 1000  # noqa: E731
        print(f"{name:>9}: p50 {p50[name]:6.1f} us  p90 {q(0.9):6.1f}  p99 {q(0.99):6.1f} us"
              f"  ({len(s)} GETs)")
    print(f"TLS / plaintext p50: {p50['TLS'] / p50['plaintext']:.2f}x "
          f"(+{p50['TLS'] - p50['plaintext']:.1f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
