"""Token mode for RWKV-5: one step (T = 1) of B <= 16 sequences, one compiled call per layer.

A decoded token reads every weight once, so its speed is memory bandwidth, provided nothing else
costs: the sequence path (model.py) spends dozens of NumPy calls and small products per layer on
vectors of a few hundred numbers. Here, as in RWKV-7's decode.py, one compiled function runs a
layer in parallel phases, each job finishing the elementwise work of its rows, with
reference.py's equations (x the residual (B, C); every variant: 5.2, and 5.1 / 5.0, whose
per-head decay and exp(time_first) bonus model.Layer has already spread over (H, N); 5.0 has no
gate):

    0. xa = ln1(x),  x_q = xa + (last - xa) (1 - mix_q)  for q in k, v, r, g          (serial)
    1. r, k, v = x_r Wr^T, x_k Wk^T, x_v Wv^T,  g = silu(x_g Wg^T)
    2. per head, with S[i][j] = [key][value] and w = e^λ, u the layer's decays and bonuses:
         y_j = Σ_i r_i (S_ij + u_i k_i v_j),   S_ij <- w_i S_ij + k_i v_j     (kernels.wkv5_step)
         o = group_norm(y) * g
    3. x += o Wo^T
    4. xf = ln2(x),  x_k, x_r blended as in 0;  key = relu(x_k Fk^T)^2,  rr = sigmoid(x_r Fr^T)
    5. x += rr * (key Fv^T)

Phases 3-5 and the per-head work of 2 are RWKV-6's too: rwkv_np/v6/decode.py runs them from
here, with its own phases before. Matrices go through linear.project (any storage; fastmath dot
products, as everywhere). The rest is compiled without fastmath: its sums run in the written
order, so the one-core and parallel builds give the same bits. The norms and blends are RWKV-7's
compiled `norm_and_mix` (the blend xn + (prev - xn) m, with m = 1 - time_mix here).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..exp import sigmoid
from ..linear import PARALLEL_MIN_WEIGHTS, activations, block, job_rows, jobs
from ..norm_stats import mean_inv_std
from ..storage import packed
from ..v7.kernels import norm_and_mix
from .kernels import wkv5_step


class TokenLayer(NamedTuple):
    """What one RWKV-5 layer's token step reads (model.Layer's fields, ready for Numba): vectors
    as float32 arrays, matrices as storage.packed tuples (array, kind, row_scale)."""
    ln1_weight: np.ndarray; ln1_bias: np.ndarray            # (C,)
    maa: np.ndarray                                          # (4, C): 1 - time_mix_k, _v, _r, _g
    key: tuple; value: tuple; receptance: tuple; gate: tuple  # (C, C); gate (0, 0) in 5.0
    decay: np.ndarray; u: np.ndarray                         # (H, N): w = e^λ, the bonus
    ln_x_weight: np.ndarray; ln_x_bias: np.ndarray          # (C,)
    output: tuple                                            # (C, C)
    ln2_weight: np.ndarray; ln2_bias: np.ndarray            # (C,)
    ffn_maa: np.ndarray                                      # (2, C): 1 - time_mix key, receptance
    ffn_key: tuple; ffn_receptance: tuple; ffn_value: tuple  # (F, C), (C, C), (C, F)


# ---------------------------------------------------------------- pieces RWKV-6's step shares

@njit(inline="always")
def keep(last, l, xn):  # last (B, L, C) <- xn (B, 1, C) at layer l: the token shift's memory
    for b in range(xn.shape[0]):     # a loop: a slice assignment compiles Numba's shape-mismatch
        for j in range(xn.shape[2]):  # message (string formatting: seconds of the first run)
            last[b, l, j] = xn[b, 0, j]


@njit(inline="always")
def silu_rows(y, i0, i1):  # y (B, out): y <- y sigmoid(y) in columns i0:i1
    for b in range(y.shape[0]):
        for i in range(i0, i1):
            y[b, i] = y[b, i] * sigmoid(y[b, i])


@njit(cache=True, error_model="numpy")  # a call, not inlined: one compiled body for both builds
def head(h, b, r, k, v, g, w, u, S, ln_x, gated, gn_eps, y, o):
    # head h of batch row b: r, k, v, g, o (B, C); w, u, y (N,); S (N, N) [key][value] in place
    """Phase 2's work for one head of one row: the WKV-5 step, then ln_x (per-head statistics in
    float64, as norm_and_mix's) and the gate: o = group_norm(y) * g."""
    N = S.shape[0]
    c0 = h * N
    wkv5_step(S, r[b, c0:c0 + N], k[b, c0:c0 + N], v[b, c0:c0 + N], w, u, y)
    mean, inv = mean_inv_std(y, gn_eps)
    for j in range(N):
        yn = np.float32((y[j] - mean) * inv) * ln_x[0][c0 + j] + ln_x[1][c0 + j]
        o[b, c0 + j] = yn * g[b, c0 + j] if gated else yn


@njit(inline="always")
def output_and_channel_mix(x, o, ffn_x, l, w, eps, per):
    # x (B, C) in place, o (B, C) the gated WKV output; ffn_x (B, L, C) layer l in place
    """Phases 3-5 of either generation's layer (w: its TokenLayer; RWKV-5's fixed channel-mix
    blends and RWKV-6's are both x + (last - x) maa)."""
    Wo, Fk, Fr, Fv = w.output, w.ffn_key, w.ffn_receptance, w.ffn_value   # fields as locals: a
    B, C = x.shape                                                         # parallel loop cannot
    F = Fk[0].shape[0]                                                     # take the NamedTuple
    f32 = np.float32

    # 3. x += o Wo^T
    att, oa = np.empty((B, C), f32), activations(Wo, o)
    for job in prange(jobs(C, per)):
        j0, j1 = block(Wo, oa, att, job, C, per)
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += att[b, j]

    # 4. ln2, the two blends; key = relu(x_k Fk^T)^2, rr = sigmoid(x_r Fr^T)
    xf, mixed = norm_and_mix(x.reshape(B, 1, C), np.ascontiguousarray(ffn_x[:, l]),
                             w.ln2_weight, w.ln2_bias, eps, w.ffn_maa)
    keep(ffn_x, l, xf)
    key, rr = np.empty((B, F), f32), np.empty((B, C), f32)
    fk, fr = activations(Fk, mixed[0]), activations(Fr, mixed[1])
    nf = jobs(F, per)
    for job in prange(nf + jobs(C, per)):
        if job < nf:
            j0, j1 = block(Fk, fk, key, job, C, per)
            for b in range(B):
                for j in range(j0, j1):
                    kv = max(key[b, j], f32(0.0))
                    key[b, j] = kv * kv
        else:
            j0, j1 = block(Fr, fr, rr, job - nf, C, per)
            for b in range(B):
                for j in range(j0, j1):
                    rr[b, j] = sigmoid(rr[b, j])

    # 5. x += rr * (key Fv^T)
    ffn, keya = np.empty((B, C), f32), activations(Fv, key)
    for job in prange(jobs(C, per)):
        j0, j1 = block(Fv, keya, ffn, job, F, per)
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += rr[b, j] * ffn[b, j]


# ---------------------------------------------------------------- RWKV-5's layer

@njit(cache=True, error_model="numpy", inline="always")  # no zero checks on divisions
def _layer(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):
    # x (B, C) float32 in place; att_x, ffn_x (B, L, C), wkv (B, L, H, N, N): layer l in place
    """One layer for B tokens; w its TokenLayer. Called from Python, one core runs the jobs in turn
    (small models: linear.PARALLEL_MIN_WEIGHTS); inlined into `_layer_parallel`, every prange
    (here and in the inlined pieces) is a parallel loop. A job is `per` rows of one matrix
    (linear.job_rows; a head in phase 2), so the static split of a phase between the cores is an
    even one."""
    Wk, Wv, Wr, Wg = w.key, w.value, w.receptance, w.gate
    decay, u, ln_x = w.decay, w.u, (w.ln_x_weight, w.ln_x_bias)
    B, C = x.shape
    H, N = u.shape
    gated = Wg[0].shape[0] > 0
    f32 = np.float32

    # 0. ln1 and the blends (rows k, v, r, g of `mixed`).
    xa, mixed = norm_and_mix(x.reshape(B, 1, C), np.ascontiguousarray(att_x[:, l]),
                             w.ln1_weight, w.ln1_bias, eps, w.maa)
    keep(att_x, l, xa)
    xk, xv, xr = activations(Wk, mixed[0]), activations(Wv, mixed[1]), activations(Wr, mixed[2])
    xg = activations(Wg, mixed[3])

    # 1. r, k, v, g = silu(x_g Wg^T)
    r, k, v, g = np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32)
    nc = jobs(C, per)
    for job in prange((4 if gated else 3) * nc):
        if job < nc:
            block(Wr, xr, r, job, C, per)
        elif job < 2 * nc:
            block(Wk, xk, k, job - nc, C, per)
        elif job < 3 * nc:
            block(Wv, xv, v, job - 2 * nc, C, per)
        else:
            i0, i1 = block(Wg, xg, g, job - 3 * nc, C, per)
            silu_rows(g, i0, i1)

    # 2. Per head: the WKV step, ln_x, the gate.
    o = np.empty((B, C), f32)
    for h in prange(H):
        y = np.empty(N, f32)
        for b in range(B):
            head(h, b, r, k, v, g, decay[h], u[h], wkv[b, l, h], ln_x, gated, gn_eps, y, o)

    output_and_channel_mix(x, o, ffn_x, l, w, eps, per)


@njit(parallel=True, cache=True, error_model="numpy")
def _layer_parallel(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):  # _layer over the cores
    _layer(x, att_x, ffn_x, wkv, l, w, eps, gn_eps, per)


def matrices_of(lay, names) -> dict | None:
    """{name: packed tuple} of a model.Layer's matrices; None if one has column scales (int8
    with col_scales=True: the sequence path's case). A missing matrix (None) has no rows."""
    out = {}
    for name in names:
        W = getattr(lay, name)
        out[name], col_scale = packed(W if W is not None else np.zeros((0, 0), np.float32))
        if col_scale is not None:
            return None
    return out


def f32(a):  # a copy as float32, C order: one Numba type for every layer
    return np.array(a, np.float32, order="C")


def runs_parallel(lay) -> bool:  # a model.Layer -> whether its step takes the parallel build
    """ffn_key, the largest product, at least linear.PARALLEL_MIN_WEIGHTS: small models' layers
    stay on one core (the parallel builds cost compile time, and save ~20 us a layer there)."""
    F, C = lay.ffn_key.shape
    return F * C >= PARALLEL_MIN_WEIGHTS


def token_layer(lay):
    """(step, TokenLayer) for a model.Layer, chosen once at load: `_layer`, or `_layer_parallel`
    (runs_parallel). None when a weight has column scales: the sequence path's case."""
    matrices = matrices_of(lay, ("key", "value", "receptance", "gate", "output", "ffn_key",
                                 "ffn_receptance", "ffn_value"))
    if matrices is None:
        return None
    maa = lay.maa
    if lay.gate is None:                       # 5.0: no gate, no time_mix_g (a row never read)
        maa = np.concatenate([maa, maa[:1]])
    vectors = {"ln1_weight": f32(lay.ln1[0]), "ln1_bias": f32(lay.ln1[1]), "maa": f32(maa),
               "decay": f32(np.exp(lay.w_log.astype(np.float64))), "u": f32(lay.u),
               "ln_x_weight": f32(lay.ln_x[0]), "ln_x_bias": f32(lay.ln_x[1]),
               "ln2_weight": f32(lay.ln2[0]), "ln2_bias": f32(lay.ln2[1]),
               "ffn_maa": f32(lay.ffn_maa)}
    step = _layer_parallel if runs_parallel(lay) else _layer
    return step, TokenLayer(**vectors, **matrices)


def decode(layers, x, state, eps, gn_eps):  # x (B, C) float32 after pre_ln; state [att_x, ffn_x, wkv]
    # -> x (B, C) after the last layer
    """Run x through every layer (`layers`: token_layer of each, RWKV-5's or RWKV-6's), updating
    the state in place."""
    x = np.ascontiguousarray(x, np.float32)
    att_x, ffn_x, wkv = state
    eps, gn_eps = float(eps), float(gn_eps)
    per = job_rows(*x.shape)
    for l, (step, layer) in enumerate(layers):
        step(x, att_x, ffn_x, wkv, l, layer, eps, gn_eps, per)
    return x
