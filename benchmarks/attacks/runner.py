"""The command line: run the attacks, print one table row each, export JSON.

::

    python -m benchmarks.attacks [--quick] [--only CLASS|NAME[,...]] [--export FILE.json]
                                 [--timeout SECONDS] [--no-mem-limit] [--keep] [--list]
    python -m benchmarks.attacks --table FILE.json     # the Markdown table of an export

Attacks run one after another, each on its own server(s), each stopped and cleaned up
before the next starts. Exit status 0 when every attack passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import List, Optional

from .harness import HARD_TIMEOUT, MEM_LIMIT, MiB, ROOT
from .registry import run_attack, select

COLUMNS = ["attack", "class", "verdict", "outcome", "RSS MiB before/peak/after",
           "growth / bytes moved", "probe ms p50/p99/max", "failed bars"]


def _mib(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / MiB:.0f}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def row(res: dict) -> List[str]:
    """One table row for a result of :func:`~benchmarks.attacks.registry.run_attack`."""
    g = res.get("rss_growth")
    ratio = res.get("growth_per_byte")
    growth = "-" if g is None else (
        f"+{g / MiB:.0f} MiB / {_bytes(res['bytes_moved'])}"
        + (f" ({ratio:,.0f}x)" if ratio is not None and res["bytes_moved"] else ""))
    pr = res["details"].get("probe") or {}
    probe = (f"{pr['p50_ms']:.2f}/{pr['p99_ms']:.1f}/{pr['max_ms']:.0f}" if pr.get("n")
             else ("-" if not pr else f"none answered ({pr.get('errors', 0)} errors)"))
    failed = "; ".join(f"{c['bar']}: {c['value']}" for c in res["checks"] if not c["ok"])
    if res.get("error"):
        failed = res["error"]
    rss = "/".join(_mib(res.get(k)) for k in ("rss_before", "rss_peak", "rss_after"))
    return [res["name"], res["class"], res["verdict"], res["outcome"] or "-", rss, growth,
            probe, failed or "-"]


def markdown_table(results: List[dict]) -> str:
    """The results as a Markdown table (what README.md records)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row(r)) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def main(argv: Optional[List[str]] = None) -> int:
    """Run the selected attacks (see the module docstring); returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.attacks",
                                 description="Adversity attacks on a real vtpu server.")
    ap.add_argument("--quick", action="store_true",
                    help="small versions (20k scrolls, smaller floods) instead of 1M")
    ap.add_argument("--only", help="comma-separated classes or attack names")
    ap.add_argument("--export", help="write every result to this JSON file")
    ap.add_argument("--timeout", type=float, default=HARD_TIMEOUT,
                    help="hard timeout per attack after its set-up (s)")
    ap.add_argument("--no-mem-limit", action="store_true",
                    help="run the servers without the 2 GiB address-space limit")
    ap.add_argument("--keep", action="store_true", help="keep work directories (logs, data)")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--table", metavar="FILE.json",
                    help="print the Markdown table of an --export file and exit")
    ns = ap.parse_args(argv)
    if ns.table:
        with open(ns.table) as f:
            print(markdown_table(json.load(f)["results"]))
        return 0
    try:
        chosen = select(ns.only)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if ns.list:
        for a in chosen:
            print(f"{a.cls:9} {a.name:24} {a.doc}")
        return 0
    results = []
    t_all = time.monotonic()
    print(" | ".join(COLUMNS), flush=True)
    for a in chosen:
        t0 = time.monotonic()
        res = run_attack(a.name, quick=ns.quick, timeout=ns.timeout,
                         mem_limit=None if ns.no_mem_limit else MEM_LIMIT, keep=ns.keep)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        results.append(res)
        print(" | ".join(row(res)), flush=True)
    passed = sum(r["verdict"] == "PASS" for r in results)
    print(f"\n{passed}/{len(results)} passed in {time.monotonic() - t_all:.0f} s", flush=True)
    if ns.export:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "commit": _commit(), "quick": ns.quick, "timeout_s": ns.timeout,
                "mem_limit": None if ns.no_mem_limit else MEM_LIMIT,
                "python": platform.python_version(), "cpus": os.cpu_count()}
        with open(ns.export, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    return 0 if passed == len(results) else 1
