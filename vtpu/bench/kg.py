"""``vtpu bench --test kg``: multi-hop CKG traversals of a generated graph, result sizes
checked against a Python BFS."""

from __future__ import annotations

import time
from typing import List

import numpy as np

from .common import R_KG, Progress, coords_array, fmt_coord, load_scrolls
from .harness import Ctx

def run(ctx: Ctx) -> None:
    """Multi-hop CKG on a generated graph: nodes ``103.(n//1000).(n%1000)/0.0.0/2.1.1``,
    edges of relation r at the node with component 3 set to r; an edge's content is the
    list of its target nodes' coordinates. Timed per traversal; result sizes checked
    against a Python BFS over the same graph."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    nn, hops, trials = sz["kg_nodes"], sz["kg_hops"], sz["kg_trials"]
    rng = np.random.default_rng(3)
    rels, fan = 2, 2

    def node(nid: int) -> List[int]:
        return [R_KG, nid // 1000, nid % 1000, 0, 0, 0, 2, 1, 1]

    nodes = coords_array([node(i) for i in range(nn)])
    targets = rng.integers(0, nn, size=(nn, rels, fan))
    edges, contents = [], []
    for r in range(rels):
        e = nodes.copy()
        e[:, 3] = r + 1
        edges.append(e)
        tg = targets[:, r, :]
        contents += [[fmt_coord(node(int(t))) for t in row] for row in tg]
    edge_arr = np.ascontiguousarray(np.concatenate(edges))
    secs = load_scrolls(c, nodes, [f"node {i}" for i in range(nn)], 20_000, "kg: load nodes",
                        ctx.show)
    secs += load_scrolls(c, edge_arr, contents, 20_000, "kg: load edges", ctx.show)
    deltas = [f"+0.0.0/={r + 1}.+0.+0/+0.+0.+0" for r in range(rels)]

    def bfs(start: int) -> int:
        frontier = {start}
        seen = {start}
        for _ in range(hops):
            nxt = set()
            for f in frontier:
                for r in range(rels):
                    for t in targets[f, r]:
                        t = int(t)
                        if t not in seen:
                            nxt.add(t)
            seen |= nxt
            frontier = nxt
            if not frontier:
                break
        return len(frontier)

    starts = rng.integers(0, nn, size=trials)
    lat, sizes, ref_sizes = [], [], []
    prog = Progress(f"kg {hops}-hop traversals", trials, ctx.show)
    for i, s in enumerate(starts):
        pat = fmt_coord(node(int(s)))
        t0 = time.perf_counter()
        res = c.ckg(pat, deltas, hops)
        lat.append(time.perf_counter() - t0)
        sizes.append(len(res))
        if i < 20:
            ref_sizes.append(bfs(int(s)))
        prog.update(i + 1)
    agree = sum(1 for a, b in zip(sizes, ref_sizes) if a == b)
    p50 = float(np.median(lat)) * 1e3
    rep.tests["kg"] = {"nodes": nn, "edges": len(edge_arr), "hops": hops, "load_s": secs,
                       "latency_ms": [x * 1e3 for x in lat], "result_sizes": sizes,
                       "bfs_sizes": ref_sizes, "bfs_agree": agree}
    rep.row("kg", f"{hops}-hop CKG, {nn // 1000}k nodes, p50", p50, "ms",
            projection="(prototype: 1 HTTP call per hop)",
            note=f"{1e3 / p50:.0f} traversals/s; mean frontier {np.mean(sizes):.0f}; "
                 f"{agree}/{len(ref_sizes)} agree with a visited-set BFS")
