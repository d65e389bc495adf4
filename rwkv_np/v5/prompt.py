"""The elementwise work of an RWKV-5/6 prompt, compiled: what model.py (v5 and v6) runs between
its matrix products when T > 1 (token mode has decode.py).

Kernels that replace some thirty NumPy passes (and their temporaries) per layer, beside
v7/kernels.norm_and_mix_rows (layer_norm(x) and its token-shift blends, the tokens over the cores):

    ddlerp       RWKV-6's data-dependent blends of the five inputs       (after its LoRA)
    wkv_norm_gate  the WKV-5 recurrence, then per token and head ln_x (a group norm) and the
                 gate silu(g), so that y leaves the kernel ready for the output product

and the channel mix's activations in rwkv_np/pointwise.py (shared with RWKV-4). The equations are
reference.py's (v5, v6), beside the lines. Why: at T = 256 on the 0.1B shape (2 cores) NumPy's elementwise passes
took ~50 ms of a ~390 ms RWKV-6 prompt on one core while the other waited; the products are
BLAS either way. Statistics of ln_x are summed in float64 (as norm_and_mix's and token mode's),
everything else in x's dtype. No fastmath: the decay floor relies on exact exp(-1000) = 0 and on
NaN propagating, and sums keep their written order (both builds give the same bits).
"""
from __future__ import annotations

import numba
import numpy as np

from ..exp import exp_nonpositive, sigmoid
from ..norm_stats import mean_inv_std
from .kernels import PARALLEL_MIN_WORK, wkv5_step
from .wkv import LOG_DECAY_FLOOR


@numba.njit(parallel=True, cache=True)
def ddlerp(xn, last, maa, offsets):  # xn (B, T, C), last (B, C), maa (5, C), offsets 5 of (B*T, C) in place
    """RWKV-6's five blends, in place of their LoRA offsets: x_j = xn + dx (maa_j + offset_j),
    dx = x_{t-1} - x_t (reference.time_mix; rows w, k, v, r, g)."""
    B, T, C = xn.shape
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        prev = last[b] if t == 0 else xn[b, t - 1]
        cur = xn[b, t]
        for q in range(5):
            o = offsets[q]
            for j in range(C):
                o[bt, j] = cur[j] + (prev[j] - cur[j]) * (maa[q, j] + o[bt, j])


@numba.njit(cache=True, error_model="numpy", inline="always")
def _wkv_norm_gate(r, k, v, lam, w_log, u, state, ln_w, ln_b, eps, g, floor, out):
    # r, k, v, g, out (B, T, H, N); lam (B, T, H, N) RWKV-6's log-decays or w_log (H, N) RWKV-5's
    # (the other one empty); u, ln_w, ln_b (H, N); state (B, H, N, N) in place
    """Per batch row and head (the parallel jobs), token by token:

        w_t = e^{max(λ_t, floor)}          (RWKV-6: λ_t = -e^{ww_t}; RWKV-5: w_log, fixed and floored)
        y_t = WKV-5 step (kernels.wkv5_step, the loop of the prompt kernel and of token mode)
        out_t = ((y_t - mean) / sqrt(var + eps) ln_w + ln_b) g_t sigmoid(g_t)   (ln_x, then the gate;
                no gate where g is empty: RWKV-5.0)

    as token mode computes them (decode.py: the same formulas, the exp of exp.py, statistics in
    float64, the normalized y rounded to the dtype before ln_x's affine map)."""
    B, T, H, N = r.shape
    per_token, gated = lam.shape[0] > 0, g.shape[0] > 0
    for job in numba.prange(B * H):
        b, h = job // H, job % H
        S = state[b, h]                          # (N, N) view, S[key][value]
        yt, wt = np.empty(N, r.dtype), np.empty(N, r.dtype)
        if not per_token:
            for i in range(N):
                wt[i] = exp_nonpositive(w_log[h, i])
        for t in range(T):
            if per_token:
                for i in range(N):
                    wt[i] = exp_nonpositive(max(lam[b, t, h, i], floor))
            wkv5_step(S, r[b, t, h], k[b, t, h], v[b, t, h], wt, u[h], yt)
            mean, inv = mean_inv_std(yt, eps)
            for j in range(N):
                yt[j] = (yt[j] - mean) * inv                      # rounded to the dtype here
            o = out[b, t, h]
            for j in range(N):
                o[j] = yt[j] * ln_w[h, j] + ln_b[h, j]
            if gated:
                gt = g[b, t, h]
                for j in range(N):
                    o[j] = o[j] * (gt[j] * sigmoid(gt[j]))       # silu(g) = g sigmoid(g)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _wkv_norm_gate_parallel(r, k, v, lam, w_log, u, state, ln_w, ln_b, eps, g, floor, out):
    _wkv_norm_gate(r, k, v, lam, w_log, u, state, ln_w, ln_b, eps, g, floor, out)  # heads over the cores


def wkv_norm_gate(r, k, v, u, state, ln_x, eps, lam=None, w_log=None, g=None):
    # r, k, v, lam, g (B*T, C) with B = state's rows; u, w_log (H, N); state (B, H, N, N) -> y (B*T, C), new state
    """The time mix between its products: WKV-5 with RWKV-6's per-token log-decays λ_t (lam,
    unclamped: the kernel floors them) or RWKV-5's fixed ones (w_log), ln_x, the gate. `state`
    is read, not modified."""
    dtype = r.dtype
    B, (H, N) = state.shape[0], u.shape
    T, C = r.shape[0] // B, r.shape[1]
    S = np.array(state, dtype, order="C")
    out = np.empty((B, T, H, N), dtype)
    none4 = np.empty((0, 0, 0, 0), dtype)
    heads = lambda z: np.ascontiguousarray(z, dtype).reshape(B, T, H, N)
    vec = lambda z: np.ascontiguousarray(z, dtype).reshape(H, N)
    args = (heads(r), heads(k), heads(v), none4 if lam is None else heads(lam),
            np.empty((0, 0), dtype) if w_log is None else vec(w_log), vec(u), S, vec(ln_x[0]), vec(ln_x[1]),
            eps, none4 if g is None else heads(g), dtype.type(LOG_DECAY_FLOOR), out)
    parallel = B * H > 1 and B * H * T * N * N >= PARALLEL_MIN_WORK
    (_wkv_norm_gate_parallel if parallel else _wkv_norm_gate)(*args)
    return out.reshape(B * T, C), S
