"""``vtpu bench --test sparse``: windowed attention through batched CATTEND over stored
Q/K/V, checked against numpy and timed beside dense numpy attention."""

from __future__ import annotations

import math

import numpy as np

from .common import PROTO, R_SPARSE, best_of, median_time
from .harness import Ctx

def sparse_coords(seq: int, kind: int) -> np.ndarray:
    """Coordinates of the attention tensors: ``102.1.1/1.1.1/2.KIND.POS`` with KIND 1 = Q,
    2 = K, 3 = V and POS the token position.

    :param seq: sequence length (<= 61440).
    :param kind: 1, 2 or 3.
    :returns: (seq, 9) uint16.
    """
    arr = np.empty((seq, 9), dtype=np.uint16)
    arr[:] = (R_SPARSE, 1, 1, 1, 1, 1, 2, kind, 0)
    arr[:, 8] = np.arange(seq)
    return arr


def window_patterns(seq: int, window: int) -> np.ndarray:
    """Key patterns of windowed attention: query i sees keys at positions
    [i - window, i + window] (clipped), as (seq, 2, 9) inclusive bounds.

    :param seq: sequence length.
    :param window: half-width.
    :returns: (seq, 2, 9) uint16.
    """
    k = sparse_coords(seq, 2)
    pats = np.empty((seq, 2, 9), dtype=np.uint16)
    pats[:, 0, :] = k
    pats[:, 1, :] = k
    i = np.arange(seq)
    pats[:, 0, 8] = np.maximum(i - window, 0)
    pats[:, 1, 8] = np.minimum(i + window, seq - 1)
    return pats


def numpy_window_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                           window: int) -> np.ndarray:
    """Reference windowed attention in float64 numpy (softmax over the window).

    :param Q: (S, d). :param K: (S, d). :param V: (S, d_v).
    :param window: half-width.
    :returns: (S, d_v) float64.
    """
    S, d = Q.shape
    Q, K, V = (x.astype(np.float64) for x in (Q, K, V))
    out = np.empty((S, V.shape[1]))
    for i in range(S):
        a, b = max(0, i - window), min(S, i + window + 1)
        s = K[a:b] @ Q[i] / math.sqrt(d)
        w = np.exp(s - s.max())
        w /= w.sum()
        out[i] = w @ V[a:b]
    return out


def numpy_dense_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Dense softmax(QK^T/sqrt(d))V in numpy, in the arrays' dtype.

    :param Q: (S, d). :param K: (S, d). :param V: (S, d_v).
    :returns: (S, d_v).
    """
    s = (Q @ K.T) / np.sqrt(np.asarray(Q.shape[1], dtype=Q.dtype))
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return s @ V


def vtpu_window_attention(client, seq: int, window: int) -> np.ndarray:
    """Batched CATTEND over the stored Q/K/V: every stored query against its window of
    stored keys, values = the V scroll at each key (delta: component 7 set to 3).

    :param client: vtpu client.
    :param seq: sequence length.
    :param window: half-width.
    :returns: (seq, d_v) outputs.
    """
    q_keys = sparse_coords(seq, 1)
    pats = window_patterns(seq, window)
    res = client.cattend_many(q_keys, pats, values="+0.0.0/+0.0.0/+0.=3.+0")
    return np.asarray(res["outputs"] if isinstance(res, dict) else res)


def run(ctx: Ctx) -> None:
    """Windowed attention (seq 2048, window ±128, d 64) through batched CATTEND over stored
    Q/K/V, checked against numpy (<= 1e-5), timed against dense numpy attention; again at
    seq 4096, where DESIGN §8 sets the target."""
    seqs = [ctx.sizes["seq"]] + ([4096] if ctx.sizes["seq"] < 4096 else [])
    for seq in seqs:
        _sparse_at(ctx, seq)


def _sparse_at(ctx: Ctx, seq: int) -> None:
    """One windowed-attention measurement at sequence length ``seq`` (see :func:`run`)."""
    rep, c, sz = ctx.report, ctx.client, ctx.sizes
    w, d = sz["window"], sz["dim"]
    rng = np.random.default_rng(13)
    Q, K, V = (rng.standard_normal((seq, d)).astype(np.float32) for _ in range(3))
    for kind, mat in ((1, Q), (2, K), (3, V)):
        c.cput_many(sparse_coords(seq, kind), mat)  # row i = the vector of position i
    out = vtpu_window_attention(c, seq, w)
    ref = numpy_window_attention(Q, K, V, w)
    err = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.shape == ref.shape \
        else float("inf")
    t_v = median_time(lambda: vtpu_window_attention(c, seq, w), 3)
    t_dense = best_of(lambda: numpy_dense_attention(Q, K, V), 3)
    t_dense64 = best_of(lambda: numpy_dense_attention(*(x.astype(np.float64)
                                                        for x in (Q, K, V))), 3)
    t_win = best_of(lambda: numpy_window_attention(Q, K, V, w), 1)
    theo = seq / (2 * w + 1)
    rep.tests.setdefault("sparse", {})[str(seq)] = {
        "seq": seq, "window": w, "dim": d, "max_abs_err": err, "vtpu_s": t_v,
        "numpy_dense_f32_s": t_dense, "numpy_dense_f64_s": t_dense64,
        "numpy_window_loop_s": t_win, "theoretical_flops_ratio": theo}
    if not err <= 1e-5:
        rep.errors[f"sparse {seq}"] = f"max |vtpu - numpy| = {err:.3g} > 1e-5 (shape {out.shape})"
    rep.row("sparse", f"windowed CATTEND seq {seq} +-{w} d{d}", t_v * 1e3, "ms",
            projection=f"{PROTO['sparse_projection_x']:g}x vs dense",
            prototype=f"{PROTO['sparse_theoretical_x']:g}x (theoretical)",
            peer="dense numpy f32", peer_value=t_dense * 1e3,
            # DESIGN §8 asks for >= 5x dense attention at seq 4096; shorter sequences
            # are reported with their ratio but only the numerical check as a target.
            target="== numpy (1e-5), >=5x dense" if seq >= 4096 else "== numpy (1e-5)",
            target_ok=err <= 1e-5 and (5 * t_v <= t_dense or seq < 4096),
            note=f"max err {err:.2g}; dense f64 {t_dense64 * 1e3:.1f} ms; numpy window loop "
                 f"{t_win * 1e3:.0f} ms; FLOP ratio {theo:.1f}x")
