"""Token mode for RWKV-6: one step (T = 1) of B <= 16 sequences, one compiled call per layer.

RWKV-5's token mode (v5/decode.py: why, and the phases this shares) with RWKV-6's two
data-dependent pieces in front, reference.py's equations (x the residual (B, C)):

    0. xa = ln1(x),  dx = last - xa,  xxx = xa + dx maa_x                               (serial)
    1. m = tanh(xxx W1^T)              (5 D_mix): the ddlerp LoRA's first matrix, rows w k v r g
    2. x_q = xa + dx (maa_q + m_q W2[q]^T)   for q in w, k, v, r, g               ("ddlerp")
    3. r, k, v = x_r Wr^T, x_k Wk^T, x_v Wv^T,  g = silu(x_g Wg^T),  h_w = tanh(x_w D1^T)
    4. per head (its N channels): ww = time_decay + h_w D2^T,  w = e^λ, λ = max(-e^ww, floor)
         y_j = Σ_i r_i (S_ij + u_i k_i v_j),   S_ij <- w_i S_ij + k_i v_j,   o = group_norm(y) * g
    5. x += o Wo^T
    6. xf = ln2(x),  x_k, x_r = xf + (last - xf) maa_k / maa_r;  key = relu(x_k Fk^T)^2,
       rr = sigmoid(x_r Fr^T)
    7. x += rr * (key Fv^T)

(W1, W2, D1, D2 are (out, in): model.Layer holds the LoRA matrices transposed.) Phase 4's WKV
and ln_x, and 5-7, are v5/decode.py's (`head`, `output_and_channel_mix`). Every matrix, LoRAs
included (float32), goes through linear.project; the LoRAs' first version here, a loop over
BlinkDL's (in, out) columns without fastmath, cost 0.4 ms a layer on one core (0.1B shape: a
v5.2 layer 0.77 ms, a v6 layer 1.16 ms) for 4% more weights. Nothing else uses fastmath (the
decay's floor relies on exp(-inf) and max(-inf, floor)), so the one-core and parallel builds
give the same bits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..exp import exp_nonpositive
from ..linear import activations, block, job_span, jobs, project
from ..storage import packed
from ..v5.decode import (
    f32,
    head,
    keep,
    matrices_of,
    output_and_channel_mix,
    runs_parallel,
    silu_rows,
)
from ..v5.wkv import LOG_DECAY_FLOOR
from ..v7.kernels import norm_and_mix

_FLOOR = np.float32(LOG_DECAY_FLOOR)


class TokenLayer(NamedTuple):
    """What one RWKV-6 layer's token step reads (model.Layer's fields, ready for Numba): vectors
    as float32 arrays, matrices as storage.packed tuples (array, kind, row_scale)."""
    ln1_weight: np.ndarray; ln1_bias: np.ndarray            # (C,)
    maa_x: np.ndarray                                        # (1, C)
    maa: np.ndarray                                          # (5, C): time_maa_w, _k, _v, _r, _g
    maa_w1: tuple; maa_w2: tuple                            # (5 D_mix, C), (5 C, D_mix): mix q's rows q C ..
    time_decay: np.ndarray                                   # (C,)
    decay_w1: tuple; decay_w2: tuple                        # (D_decay, C), (C, D_decay)
    u: np.ndarray                                            # (H, N) time_faaaa, the bonus
    receptance: tuple; key: tuple; value: tuple; gate: tuple  # (C, C)
    ln_x_weight: np.ndarray; ln_x_bias: np.ndarray          # (C,)
    output: tuple                                            # (C, C)
    ln2_weight: np.ndarray; ln2_bias: np.ndarray            # (C,)
    ffn_maa: np.ndarray                                      # (2, C): time_maa_k, time_maa_r
    ffn_key: tuple; ffn_receptance: tuple; ffn_value: tuple  # (F, C), (C, C), (C, F)


@njit(inline="always")
def tanh_rows(y, i0, i1):  # y (B, out): y <- tanh(y) in columns i0:i1
    for b in range(y.shape[0]):
        for i in range(i0, i1):
            y[b, i] = np.tanh(y[b, i])


@njit(cache=True, error_model="numpy", inline="always")  # no zero checks on divisions
def _layer(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):
    # x (B, C) float32 in place; att_x, ffn_x (B, L, C), wkv (B, L, H, N, N): layer l in place
    """One layer for B tokens; w its TokenLayer. Called from Python, one core runs the jobs in turn;
    inlined into `_layer_parallel`, every prange (here and in the inlined pieces) is a parallel
    loop. A job is `per` rows of one matrix (linear.job_rows; a head in phase 4). The LoRA
    matrices are float32: their activations are x itself."""
    Wr, Wk, Wv, Wg = w.receptance, w.key, w.value, w.gate         # fields as locals: a parallel
    M1, M2, D1, D2 = w.maa_w1, w.maa_w2, w.decay_w1, w.decay_w2    # loop cannot take the NamedTuple
    maa, time_decay, u, ln_x = w.maa, w.time_decay, w.u, (w.ln_x_weight, w.ln_x_bias)
    B, C = x.shape
    H, N = u.shape
    Dm, Dd = M2[0].shape[1], D1[0].shape[0]
    f32_ = np.float32

    # 0. ln1, and the blend the ddlerp LoRA reads; `last` kept for dx.
    last = att_x[:, l].copy()
    xa, mixed = norm_and_mix(x.reshape(B, 1, C), last, w.ln1_weight, w.ln1_bias, eps, w.maa_x)
    keep(att_x, l, xa)

    # 1. m = tanh(xxx W1^T), then each mix's D_mix columns as a (B, D_mix) array.
    m = np.empty((B, 5 * Dm), f32_)
    for job in prange(jobs(5 * Dm, per)):
        i0, i1 = block(M1, mixed[0], m, job, C, per)
        tanh_rows(m, i0, i1)
    mq = np.empty((5, B, Dm), f32_)
    for q in range(5):
        for b in range(B):
            for d in range(Dm):
                mq[q, b, d] = m[b, q * Dm + d]

    # 2. x_q = xa + dx (maa_q + m_q W2[q]^T), rows w, k, v, r, g of xs; W2[q] is W2's rows q C ..
    off, xs = np.empty((B, 5 * C), f32_), np.empty((5, B, C), f32_)
    nc = jobs(C, per)
    for job in prange(5 * nc):
        q, (c0, c1) = job // nc, job_span(job % nc, C, per)
        project(M2, mq[q], off, q * C + c0, q * C + c1, np.empty(Dm, f32_))
        for b in range(B):
            for c in range(c0, c1):
                xs[q, b, c] = xa[b, 0, c] + (last[b, c] - xa[b, 0, c]) * (maa[q, c] + off[b, q * C + c])

    # 3. r, k, v, g = silu(x_g Wg^T), h_w = tanh(x_w D1)
    xr, xk, xv, xg = activations(Wr, xs[3]), activations(Wk, xs[1]), activations(Wv, xs[2]), activations(Wg, xs[4])
    r, k, v, g = np.empty((B, C), f32_), np.empty((B, C), f32_), np.empty((B, C), f32_), np.empty((B, C), f32_)
    hw = np.empty((B, Dd), f32_)
    for job in prange(4 * nc + jobs(Dd, per)):
        if job < nc:
            block(Wr, xr, r, job, C, per)
        elif job < 2 * nc:
            block(Wk, xk, k, job - nc, C, per)
        elif job < 3 * nc:
            block(Wv, xv, v, job - 2 * nc, C, per)
        elif job < 4 * nc:
            i0, i1 = block(Wg, xg, g, job - 3 * nc, C, per)
            silu_rows(g, i0, i1)
        else:
            i0, i1 = block(D1, xs[0], hw, job - 4 * nc, C, per)
            tanh_rows(hw, i0, i1)

    # 4. Per head: its decays from the decay LoRA's second matrix, the WKV step, ln_x, the gate.
    zw, o = np.empty((B, C), f32_), np.empty((B, C), f32_)
    for h in prange(H):
        c0 = h * N
        project(D2, hw, zw, c0, c0 + N, np.empty(Dd, f32_))
        y, wt = np.empty(N, f32_), np.empty(N, f32_)
        for b in range(B):
            for j in range(N):   # e^{-e^ww}: e^ww may overflow to inf, the floor keeps λ finite
                wt[j] = exp_nonpositive(max(-np.exp(time_decay[c0 + j] + zw[b, c0 + j]), _FLOOR))
            head(h, b, r, k, v, g, wt, u[h], wkv[b, l, h], ln_x, True, gn_eps, y, o)

    output_and_channel_mix(x, o, ffn_x, l, w, eps, per)


@njit(parallel=True, cache=True, error_model="numpy")
def _layer_parallel(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):  # _layer over the cores
    _layer(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per)


def token_layer(lay):
    """(step, TokenLayer) for a model.Layer, chosen once at load: `_layer`, or `_layer_parallel`
    (v5.decode.runs_parallel). None when a weight has column scales: the sequence path's case."""
    matrices = matrices_of(lay, ("receptance", "key", "value", "gate", "output", "ffn_key", "ffn_receptance",
                                 "ffn_value"))
    if matrices is None:
        return None
    loras = {name: packed(getattr(lay, name))[0] for name in ("maa_w1", "decay_w1", "decay_w2")}
    loras["maa_w2"] = packed(lay.maa_w2.reshape(-1, lay.maa_w2.shape[-1]))[0]  # (5 C, D_mix), a view
    vectors = {"ln1_weight": f32(lay.ln1[0]), "ln1_bias": f32(lay.ln1[1]), "maa_x": f32(lay.maa_x[None]),
               "maa": f32(lay.maa), "time_decay": f32(lay.time_decay), "u": f32(lay.u),
               "ln_x_weight": f32(lay.ln_x[0]), "ln_x_bias": f32(lay.ln_x[1]),
               "ln2_weight": f32(lay.ln2[0]), "ln2_bias": f32(lay.ln2[1]), "ffn_maa": f32(lay.ffn_maa)}
    step = _layer_parallel if runs_parallel(lay) else _layer
    return step, TokenLayer(**vectors, **loras, **matrices)
