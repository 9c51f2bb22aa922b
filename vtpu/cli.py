"""The ``vtpu`` command (also ``python -m vtpu``).

::

    vtpu serve  [--host 127.0.0.1] [--port 1337] [--data DIR] [--fsync always|everysec|never]
                [--token-file PATH | --token T] [--unprotected]
                [--tls-cert CERT [--tls-key KEY] [--tls-ca CA]]
                [--max-clients N] [--timeout S] [--hello-timeout S] [--frame-timeout S]
                [--output-limit HARD SOFT S] [--names-per-second N]
    vtpu demo   [--host H --port P | --url mem://]
    vtpu bench  [--all | --test NAME] [--trials N] [--export FILE.json] [--plot FILE.png] [--host H --port P]
    vtpu get C | put C TEXT | range PATTERN | del C      [--url URL]
    vtpu import FILE.phext | export FILE.phext           [--url URL]
    vtpu stats | reclaim-names [--url URL]

Commands that talk to a store take ``--url`` (default ``$VTPU_URL`` or
``vtpu://127.0.0.1:1337``; ``vtpus://`` for TLS, ``vtpu://:TOKEN@HOST:PORT`` with a
token); ``file://DIR`` works without a server.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "demo"]


def _client(url: str):
    import vtpu

    return vtpu.connect(url)


def _progress(n: int) -> None:
    """Show how many scrolls a long export has written so far (on a terminal only)."""
    if sys.stderr.isatty():
        print(f"\rexported {n} scrolls ...", end="", file=sys.stderr, flush=True)


def _default_url() -> str:
    return os.environ.get("VTPU_URL", "vtpu://127.0.0.1:1337")


def _show(value) -> str:
    import numpy as np

    if isinstance(value, np.ndarray):
        return f"ndarray(dtype={value.dtype}, shape={value.shape}) {np.array2string(value, threshold=20)}"
    if isinstance(value, bytes):
        return f"bytes[{len(value)}] {value[:64]!r}"
    return value if isinstance(value, str) else json.dumps(value)


def demo(host: str | None = None, port: int | None = None, url: str | None = None,
         out=sys.stdout) -> int:
    """The prototype's quick test plus one line per remaining instruction.

    Runs against ``url`` (e.g. ``mem://`` for the embedded engine) or ``host:port`` when
    given, else against a loopback server it starts itself (in a background thread, on a
    free port) and stops at the end.

    :returns: exit status (0 when every step worked).
    """
    import numpy as np

    import vtpu

    server = None
    if url is None and host is None:
        from vtpu.testing import running_server

        server = running_server()
        host, port = server.__enter__()
    try:
        v = vtpu.connect(url) if url else vtpu.vTPU(host=host, port=port or 1337)
        p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
        p(f"=== vtpu demo ({url or f'vtpu://{host}:{port}'}) ===")
        p("1. Health check:")
        p(f"   Status: {v.health()['status']}")
        p("2. CPUT test:")
        ver = v.cput("1.1.1/1.1.1/1.1.1", "Hello from vTPU client!")
        p(f"   Written to 1.1.1/1.1.1/1.1.1 (version {ver})")
        p("3. CGET test:")
        p(f"   Read: {v.cget('1.1.1/1.1.1/1.1.1')['content']}")
        p("4. CDELTA test:")
        base, delta = "2.1.3/4.7.11/18.29.47", "+0.0.0/+0.0.5/+0.0.0"
        p(f"   {base} + {delta} = {v.cdelta(base, delta)}")
        # data for the remaining instructions
        rng = np.random.default_rng(0)
        v.cput_many([f"1.1.{i}/1.1.1/1.1.1" for i in range(2, 6)], [f"scroll {i}" for i in range(2, 6)])
        v.cput_many([f"3.8.{i}/key.0.0/1.1.1" for i in range(64)], rng.normal(size=(64, 16)))
        v.cput_many([f"3.8.{i}/value.0.0/1.1.1" for i in range(64)], rng.normal(size=(64, 16)))
        v.cput("3.8.512/query.0.0/1.1.1", rng.normal(size=16))
        v.cput("person.1001.1/attr.name.1/1.1.1", "Alice")
        v.cput("person.1002.1/attr.name.1/1.1.1", "Bob")
        v.cput("person.1001.1/rel.spouse.1/1.1.1", "person.1002.1/attr.name.1/1.1.1")
        p("5. CRANGE 1.1.*/1.1.1/1.1.1:")
        p(f"   {len(v.crange('1.1.*/1.1.1/1.1.1'))} scrolls")
        near = v.cnearest("1.1.3/1.1.1/1.1.1", k=3)
        p(f"6. CNEAREST k=3 of 1.1.3/1.1.1/1.1.1: {near}")
        p(f"7. CHIER UP of {base}: {v.chier(base, 'UP')}; "
          f"NEXT of 1.1.2/1.1.1/1.1.1: {v.chier('1.1.2/1.1.1/1.1.1', 'NEXT')}")
        p(f"8. CROUTE of {base} over 16 nodes: node {v.croute(base, 16)}")
        att = v.cattend(query_coord="3.8.512/query.0.0/1.1.1", key_pattern="3.8.*/key.0.0/1.1.1",
                        top_k=3, values="+0.0.0/=value.0.0/+0.0.0")
        p(f"9. CATTEND over {att.n} keys: top-3 "
          + ", ".join(f"{r['coordinate']} w={r['weight']:.3f}" for r in att)
          + f"; output[:3] = {np.round(att.output[:3], 4).tolist()}")
        p(f"10. CMOE of 0.512.768/3.*.*/expert.*.* over 64 experts: expert "
          f"{v.cmoe('0.512.768/3.*.*/expert.*.*', num_experts=64)}")
        kg = v.ckg(start_coord="person.1001.*/attr.*.*/1.1.1",
                   relation_deltas=["+0.0.0/+rel.spouse.*/+0.0.0"], hops=1)
        p(f"11. CKG spouse of person 1001: {[(s.coordinate, s.content) for s in kg]}")
        st = v.get_stats()
        p("12. Performance stats:")
        p(f"   Total calls: {st['total_calls']}")
        p(f"   Avg latency: {st['avg_latency_ms']:.3f} ms")
        p("vtpu demo complete")
        v.close()
        return 0
    finally:
        if server is not None:
            server.__exit__(None, None, None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vtpu`` command."""
    ap = argparse.ArgumentParser(prog="vtpu", description="vtpu: coordinate-addressed memory.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="run a server (see vtpu serve --help)", add_help=False)
    sub.add_parser("bench", help="benchmarks vs peers (see vtpu bench --help)", add_help=False)
    d = sub.add_parser("demo", help="the quick test on a loopback server")
    d.add_argument("--host")
    d.add_argument("--port", type=int)
    d.add_argument("--url", help="run against this store instead (mem:// = embedded engine)")
    for name, arg, hlp in [("get", "coordinate", "print a scroll"),
                           ("del", "target", "delete a scroll or a pattern"),
                           ("range", "pattern", "list scrolls matching a pattern")]:
        c = sub.add_parser(name, help=hlp)
        c.add_argument(arg)
        c.add_argument("--url", default=_default_url())
        if name == "range":
            c.add_argument("--limit", type=int)
            c.add_argument("--keys-only", action="store_true")
    c = sub.add_parser("put", help="write a text scroll")
    c.add_argument("coordinate")
    c.add_argument("text")
    c.add_argument("--url", default=_default_url())
    c = sub.add_parser("import", help="import a .phext file")
    c.add_argument("file")
    c.add_argument("--url", default=_default_url())
    c = sub.add_parser("export", help="export scrolls to a .phext file")
    c.add_argument("file")
    c.add_argument("--pattern")
    c.add_argument("--skip-invalid", action="store_true",
                   help="skip scrolls a phext file cannot hold instead of failing")
    c.add_argument("--url", default=_default_url())
    c = sub.add_parser("stats", help="store statistics")
    c.add_argument("--url", default=_default_url())
    c = sub.add_parser("reclaim-names", help="free the name ids no stored key uses")
    c.add_argument("--url", default=_default_url())
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtpu`` command.

    :param argv: arguments without the program name (None: ``sys.argv[1:]``).
    :returns: exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from vtpu.server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "bench":
        from vtpu.bench import main as bench_main

        return bench_main(argv[1:])
    ns = build_parser().parse_args(argv)
    from vtpu.errors import VTPUError

    try:
        if ns.cmd == "demo":
            return demo(ns.host, ns.port, ns.url)
        with _client(ns.url) as c:
            if ns.cmd == "get":
                s = c.cget(ns.coordinate)
                if s is None:
                    print(f"no scroll at {ns.coordinate}", file=sys.stderr)
                    return 1
                print(_show(s.content))
            elif ns.cmd == "put":
                print(f"version {c.cput(ns.coordinate, ns.text)}")
            elif ns.cmd == "del":
                print(f"deleted {c.cdel(ns.target)}")
            elif ns.cmd == "range":
                if ns.keys_only:
                    for k in c.format_coords(c.crange_keys(ns.pattern, limit=ns.limit)):
                        print(k)
                else:
                    for s in c.crange(ns.pattern, limit=ns.limit):
                        print(f"{s.coordinate}\t{_show(s.content)}")
            elif ns.cmd == "import":
                t0 = time.perf_counter()
                n = c.import_phext(ns.file)
                print(f"imported {n} scrolls from {ns.file} in {time.perf_counter() - t0:.2f} s")
            elif ns.cmd == "export":
                t0 = time.perf_counter()
                n = c.export_phext_file(ns.file, pattern=ns.pattern,
                                        skip_invalid=ns.skip_invalid, progress=_progress)
                if sys.stderr.isatty():
                    print(file=sys.stderr)  # end the progress line
                print(f"exported {n} scrolls to {ns.file} in {time.perf_counter() - t0:.2f} s")
            elif ns.cmd == "stats":
                print(json.dumps(c.stats(), indent=2, default=str))
            elif ns.cmd == "reclaim-names":
                print(f"reclaimed {c.reclaim_names()} name ids")
        return 0
    except (VTPUError, OSError) as e:
        print(f"vtpu {ns.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
