"""``vtpu bench``: the benchmark harness (DESIGN §6a, §8).

Reruns the prototype's benchmarks against a real vtpu server over the binary protocol and
prints, beside each measurement, the prototype's projection, the prototype's own measured
figure where it gave one, and peers measured *in the same run* (a bare TCP echo floor,
Redis via redis-py + hiredis, memcached via pymemcache, etcd, a Python linear scan, numpy,
FAISS), as ratios. Peers that are missing are skipped with one line.

Usage (also ``python -m vtpu.bench``)::

    vtpu bench [--all | --test cget|cput|crange|nearest|sparse|moe|kg|sync|memory|startup ...]
               [--trials N] [--scrolls N] [--big] [--export FILE.json] [--plot FILE.png]
               [--host H --port P]

Without ``--host`` a loopback server is started (and stopped) by the harness. Latency runs
pin the client and every server to one CPU (``os.sched_setaffinity``) because on a small
VM whether they share a CPU changes loopback latency several-fold.

One module per benchmark, each with ``run(ctx)``: :mod:`.cget`, :mod:`.cput`,
:mod:`.crange`, :mod:`.nearest`, :mod:`.sparse`, :mod:`.moe`, :mod:`.kg`, :mod:`.sync`,
:mod:`.memory` (server RSS per scroll beside Redis), :mod:`.startup` (durable start-up).
Shared: :mod:`.common` (sizes, timing, vtpu calls), :mod:`.report` (rows, table, JSON,
plot), :mod:`.harness` (the server under test, the peer registry, :class:`Ctx`),
:mod:`.kv` (key-value measurements of cget and cput), :mod:`.clients` (concurrent client
processes) and :mod:`.peers` (starting Redis, memcached, etcd and the echo floor).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from . import cget, cput, crange, kg, memory, moe, nearest, sparse, startup, sync
from . import peers as _peers
from .common import DEFAULTS, log, steal_seconds, vtpu_connect
from .harness import Ctx, LocalServer, Peers
from .report import Report, jsonable, machine_info, plot

__all__ = ["TESTS", "RUNNERS", "run", "build_parser", "main"]

TESTS = ("cget", "cput", "crange", "nearest", "sparse", "moe", "kg", "sync", "memory",
         "startup")

RUNNERS: Dict[str, Callable[[Ctx], None]] = {
    "cget": cget.run, "cput": cput.run, "crange": crange.run, "nearest": nearest.run,
    "sparse": sparse.run, "moe": moe.run, "kg": kg.run, "sync": sync.run,
    "memory": memory.run, "startup": startup.run,
}


def run(tests: Sequence[str] = TESTS, trials: Optional[int] = None,
        host: Optional[str] = None, port: Optional[int] = None,
        export: Optional[str] = None, plot_path: Optional[str] = None,
        sizes: Optional[dict] = None, pin: bool = True, peers: Optional[set] = None,
        show: bool = True, out=None, big: bool = False) -> dict:
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
    :param big: also run the 10M-scroll variants (start-up of 10M durable scrolls).
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
    ctx: Optional[Ctx] = None
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
        ctx = Ctx(client, url, server, peer_reg, report, sz, pin=pin, show=show, big=big)
        for name in tests:
            log(f"== {name}")
            t0 = time.monotonic()
            steal0 = steal_seconds()
            try:
                RUNNERS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken test must not lose the others
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            report.tests.setdefault(name, {})["wall_s"] = round(time.monotonic() - t0, 3)
            steal = steal_seconds()
            if steal is not None and steal0 is not None:
                # A virtual machine's host may take CPU time from every process at once;
                # shown per test so that a slow spell is not read as a result.
                report.tests[name]["host_steal_s"] = round(steal - steal0, 3)
                if steal - steal0 >= 0.05:
                    report.skip(f"note {name}: the host took {steal - steal0:.2f} s of CPU "
                                f"(steal) during this test; its rows may be slowed by it")
    finally:
        try:
            if ctx is not None:
                ctx.close()
        except Exception:
            pass
        try:
            if client is not None:
                client.close()
        except Exception:
            pass
        peer_reg.stop()
        if server is not None:
            server.stop()
    config = {"tests": list(tests), "host": host, "port": port, "pinned": pin, "big": big,
              "pin_cpu": _peers.pick_cpu() if pin else None, "sizes": sz,
              "server": "loopback subprocess (python -m vtpu.server)" if not host else url}
    doc = jsonable(report.to_json(machine_info(), config, started))
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
                    "on this machine (echo floor, Redis, memcached, etcd, numpy, FAISS).")
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
                    help="CRANGE/CNEAREST/memory/start-up data set size "
                         f"(default {DEFAULTS['n_scrolls']:,})")
    ap.add_argument("--clients", type=int, default=None,
                    help=f"concurrent clients (default {DEFAULTS['clients']})")
    ap.add_argument("--seq", type=int, default=None,
                    help=f"sparse attention sequence length (default {DEFAULTS['seq']})")
    ap.add_argument("--big", action="store_true",
                    help="also run the 10M-scroll variants (durable start-up of 10M)")
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
                  pin=not ns.no_pin, peers=allowed, show=not ns.quiet, big=ns.big)
    except RuntimeError as exc:
        log(f"vtpu bench: {exc}")
        return 1
    return 1 if doc.get("errors") else 0

