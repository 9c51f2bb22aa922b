"""The benchmark report: summary rows with ratios to peers, the text table, the JSON
export (with machine and peer versions) and the plot."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from . import peers as _peers
from .common import PROTO, log

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
    from .. import _core
    from .._version import __version__ as vv

    core_compiled = _core.__file__
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


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
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


def thin(samples: np.ndarray, keep: int = 2000) -> list:
    """Down-sample a latency array for the export (keeps the distribution's shape)."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size > keep:
        a = a[np.linspace(0, a.size - 1, keep).astype(np.int64)]
    return [round(float(x), 2) for x in a]



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
