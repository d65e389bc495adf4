"""Token mode for RWKV-7: one step (T = 1) of B <= 16 sequences, one compiled call per layer.

A decoded token reads every weight once, so its speed is memory bandwidth, provided nothing else
costs: the sequence path (model.py) spends dozens of NumPy calls and small products per layer on
vectors of a few hundred numbers (v7-0.1b fp32 in tools/bench.py: 43.1 ms a token that way, 33.1
ms this way, in two runs in which BlinkDL's package took 63.6 and 62.1 ms). Here one compiled
function runs a layer in five parallel phases, each job finishing the elementwise work of its
rows, with reference.py's equations (x the residual (B, C)):

    0. xa = ln1(x),  x_m = xa + (last - xa) * mix_m  for m in r, w, k, v, a, g    (serial)
    1. r, k, v = x_r Wr^T, x_k Wk^T, x_v Wv^T;  the LoRAs' first matrices:
       h_w = tanh(x_w W1^T),  h_a = x_a A1^T,  h_g = sigmoid(x_g G1^T),  h_v = x_v V1^T
    2. per head (its N channels): the LoRAs' second matrices, then
       w = exp(-e^{-1/2} sigmoid(h_w W2^T + w0)),   iclr = sigmoid(h_a A2^T + a0),   g = h_g G2^T
       kk = normalize(k * k_k),   k <- k (1 + (iclr - 1) k_a)
       v_first = v (layer 0)  or  v <- v + (v_first - v) sigmoid(h_v V2^T + v0)
       S <- S diag(w) + (S a) b^T + v k^T  with a = -kk, b = kk iclr;   y = S r
       o = (group_norm(y) + (Σ_j r_j k_j r_k[j]) v) * g
    3. x += o Wo^T
    4. xf = ln2(x),  key = relu((xf + (last - xf) * x_k) Fk^T)^2                 (ln2 serial)
    5. x += key Fv^T

Matrices go through linear.project (any storage; fastmath dot products, as everywhere). The rest
is compiled without fastmath: its sums run in the written order, so the one-core and parallel
builds give the same bits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..exp import exp_nonpositive, sigmoid
from ..linear import PARALLEL_MIN_WEIGHTS, activations, block, job_rows, jobs, project
from ..storage import packed
from .kernels import dot8, head_outputs, norm_and_mix, row_inputs
from .reference import DECAY_SCALE

_NEG_DECAY = np.float32(-DECAY_SCALE)      # log w = -e^{-1/2} sigmoid(z), rounded as model.py's


class TokenLayer(NamedTuple):
    """What one layer's token step reads (model.Layer's fields, ready for Numba): vectors as
    float32 arrays, matrices as storage.packed tuples (array, kind, row_scale)."""
    attn_norm_weight: np.ndarray; attn_norm_bias: np.ndarray           # (C,)
    mix: np.ndarray                                                     # (6, C): r, w, k, v, a, g
    r_proj: tuple; k_proj: tuple; v_proj: tuple; o_proj: tuple         # (C, C)
    w_down: tuple; a_down: tuple; g_down: tuple; v_down: tuple         # (D, C); v_down (0, 0) in layer 0
    w_up: tuple; a_up: tuple; g_up: tuple; v_up: tuple                 # (C, D); v_up (0, 0) in layer 0
    w_bias: np.ndarray; a_bias: np.ndarray; v_bias: np.ndarray         # (C,): w0, a0, v0
    k_k: np.ndarray; k_a: np.ndarray                                    # (C,)
    r_k: np.ndarray                                                     # (H, N)
    g_norm_weight: np.ndarray; g_norm_bias: np.ndarray                 # (C,)
    ffn_norm_weight: np.ndarray; ffn_norm_bias: np.ndarray             # (C,)
    ffn_mix: np.ndarray                                                 # (1, C): ffn.x_k
    ffn_key: tuple; ffn_value: tuple                                    # (F, C), (C, F)
    first: bool                                                         # layer 0: v_first = v


@njit(inline="always")
def _keep(last, l, xn):  # last (B, L, C) <- xn (B, 1, C) at layer l: the token shift's memory
    for b in range(xn.shape[0]):     # a loop: a slice assignment compiles Numba's shape-mismatch
        for j in range(xn.shape[2]):  # message (string formatting: seconds of the first run)
            last[b, l, j] = xn[b, 0, j]


@njit(cache=True, error_model="numpy")  # a call, not inlined: one compiled body for both builds
def _head(h, b, first, r, k, v, v_first, zw, za, zg, zv, S, p, gn, tmp, o, gn_eps):
    # one head h of batch row b: r .. zv, o (B, C); S (N, N) [value][key], updated in place;
    # p = (k_k, k_a, w0, a0, v0), gn = (weight, bias, r_k); tmp: six (B, C) scratch arrays
    """Phase 2's elementwise work (kernels.row_inputs / head_outputs, as the prompt path runs
    them) around the WKV-7 step of one token, in S's own layout: row i (value i) is contiguous,
    so S a and S r are dot products over it (8-lane sums)."""
    N = S.shape[0]
    c0, c1 = h * N, (h + 1) * N
    w_log, kt, vt, a, bb, y = tmp
    row_inputs(b, c0, c1, N, first, k, v, v_first, zw, za, zv, p, _NEG_DECAY, w_log, kt, vt, a, bb)
    w = np.empty(N, np.float32)
    for j in range(N):
        w[j] = exp_nonpositive(w_log[b, c0 + j])
    aj, bj, kj, rj = a[b, c0:c1], bb[b, c0:c1], kt[b, c0:c1], r[b, c0:c1]
    for i in range(N):                                   # S[i][j] w_j + (S a)_i b_j + v_i k_j
        row = S[i]
        sa = dot8(row, aj)
        vi = vt[b, c0 + i]
        for j in range(N):
            row[j] = row[j] * w[j] + sa * bj[j] + vi * kj[j]
        y[b, c0 + i] = dot8(row, rj)                     # y = S_t r
    head_outputs(b, c0, c1, h, y, r, kt, vt, zg, gn[2], gn[0], gn[1], gn_eps, o)


@njit(cache=True, error_model="numpy", inline="always")  # no zero checks on divisions
def _layer(x, v_first, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):
    # x, v_first (B, C) float32 in place; att_x, ffn_x (B, L, C), wkv (B, L, H, N, N): layer l in place
    """One layer for B tokens; w its TokenLayer. Called from Python, one core runs the jobs in turn
    (small models: linear.PARALLEL_MIN_WEIGHTS); inlined into `_layer_parallel`, every prange below
    is a parallel loop. Each job is `per` rows of one matrix (linear.job_rows; a head in phase 2),
    so the static split of a phase between the cores is an even one."""
    Wr, Wk, Wv, Wo, Fk, Fv = w.r_proj, w.k_proj, w.v_proj, w.o_proj, w.ffn_key, w.ffn_value
    W1, A1, G1, V1 = w.w_down, w.a_down, w.g_down, w.v_down     # fields as locals: a parallel
    W2, A2, G2, V2 = w.w_up, w.a_up, w.g_up, w.v_up             # loop cannot take the NamedTuple
    p, gn = (w.k_k, w.k_a, w.w_bias, w.a_bias, w.v_bias), (w.g_norm_weight, w.g_norm_bias, w.r_k)
    first = w.first
    B, C = x.shape
    H, N = w.r_k.shape
    Dw, Da, Dg, Dv, F = W1[0].shape[0], A1[0].shape[0], G1[0].shape[0], V1[0].shape[0], Fk[0].shape[0]
    f32 = np.float32

    # 0. ln1 and the six token-shift blends (rows r, w, k, v, a, g of `mixed`).
    xa, mixed = norm_and_mix(x.reshape(B, 1, C), np.ascontiguousarray(att_x[:, l]),
                             w.attn_norm_weight, w.attn_norm_bias, eps, w.mix)
    _keep(att_x, l, xa)
    xr, xw, xk = activations(Wr, mixed[0]), activations(W1, mixed[1]), activations(Wk, mixed[2])
    xv, xv1 = activations(Wv, mixed[3]), activations(V1, mixed[3])
    xa1, xg = activations(A1, mixed[4]), activations(G1, mixed[5])

    # 1. r, k, v and the LoRAs' first matrices (tanh for the decay's, sigmoid for the gate's).
    r, k, v = np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32)
    hw, ha, hg, hv = np.empty((B, Dw), f32), np.empty((B, Da), f32), np.empty((B, Dg), f32), np.empty((B, Dv), f32)
    nc, nw, na, ng = jobs(C, per), jobs(Dw, per), jobs(Da, per), jobs(Dg, per)
    for job in prange(3 * nc + nw + na + ng + jobs(Dv, per)):
        if job < nc:
            block(Wr, xr, r, job, C, per)
        elif job < 2 * nc:
            block(Wk, xk, k, job - nc, C, per)
        elif job < 3 * nc:
            block(Wv, xv, v, job - 2 * nc, C, per)
        elif job < 3 * nc + nw:
            i0, i1 = block(W1, xw, hw, job - 3 * nc, C, per)
            for b in range(B):
                for i in range(i0, i1):
                    hw[b, i] = np.tanh(hw[b, i])
        elif job < 3 * nc + nw + na:
            block(A1, xa1, ha, job - 3 * nc - nw, C, per)
        elif job < 3 * nc + nw + na + ng:
            i0, i1 = block(G1, xg, hg, job - 3 * nc - nw - na, C, per)
            for b in range(B):
                for i in range(i0, i1):
                    hg[b, i] = sigmoid(hg[b, i])
        else:
            block(V1, xv1, hv, job - 3 * nc - nw - na - ng, C, per)

    # 2. Per head: its N rows of the LoRAs' second matrices, then the WKV step, norm, bonus, gate.
    hw2, ha2, hg2, hv2 = activations(W2, hw), activations(A2, ha), activations(G2, hg), activations(V2, hv)
    zw, za, zg, zv = np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32)
    o = np.empty((B, C), f32)
    tmp = (np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32), np.empty((B, C), f32),
           np.empty((B, C), f32), np.empty((B, C), f32))
    for h in prange(H):
        project(W2, hw2, zw, h * N, (h + 1) * N, np.empty(Dw, f32))
        project(A2, ha2, za, h * N, (h + 1) * N, np.empty(Da, f32))
        project(G2, hg2, zg, h * N, (h + 1) * N, np.empty(Dg, f32))
        if not first:
            project(V2, hv2, zv, h * N, (h + 1) * N, np.empty(Dv, f32))
        for b in range(B):
            _head(h, b, first, r, k, v, v_first, zw, za, zg, zv, wkv[b, l, h], p, gn, tmp, o, gn_eps)

    # 3. x += o Wo^T
    att, oa = np.empty((B, C), f32), activations(Wo, o)
    for job in prange(nc):
        j0, j1 = block(Wo, oa, att, job, C, per)
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += att[b, j]

    # 4. ln2, the channel mix's blend, key = relu(xk Fk^T)^2
    xf, mixed = norm_and_mix(x.reshape(B, 1, C), np.ascontiguousarray(ffn_x[:, l]),
                             w.ffn_norm_weight, w.ffn_norm_bias, eps, w.ffn_mix)
    _keep(ffn_x, l, xf)
    key, fk = np.empty((B, F), f32), activations(Fk, mixed[0])
    for job in prange(jobs(F, per)):
        j0, j1 = block(Fk, fk, key, job, C, per)
        for b in range(B):
            for j in range(j0, j1):
                kv = max(key[b, j], f32(0.0))
                key[b, j] = kv * kv

    # 5. x += key Fv^T
    ffn, keya = np.empty((B, C), f32), activations(Fv, key)
    for job in prange(nc):
        j0, j1 = block(Fv, keya, ffn, job, F, per)
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += ffn[b, j]


@njit(parallel=True, cache=True, error_model="numpy")
def _layer_parallel(x, v_first, att_x, ffn_x, wkv, l, w, eps, gn_eps, per):  # _layer over the cores
    _layer(x, v_first, att_x, ffn_x, wkv, l, w, eps, gn_eps, per)


def _absent(W):  # packed (array, kind, row_scale) -> the same type with no rows: layer 0's v_lora
    return W[0][:0, :0], W[1], W[2][:0]


def token_layer(lay, first: bool):
    """(step, TokenLayer) for a model.Layer, chosen once at load: `_layer` for a small model
    (ffn_key, the largest product, under linear.PARALLEL_MIN_WEIGHTS), else `_layer_parallel`.
    None when a weight has column scales (int8 with col_scales=True): the sequence path's case."""
    named = {"r_proj": lay.r_proj, "k_proj": lay.k_proj, "v_proj": lay.v_proj, "o_proj": lay.o_proj,
             "ffn_key": lay.ffn_key, "ffn_value": lay.ffn_value}
    for kind in "wagv":
        lora = getattr(lay, f"{kind}_lora")
        if lora is not None:
            named[f"{kind}_down"], named[f"{kind}_up"] = lora[0], lora[1]
    matrices = {}
    for name, W in named.items():
        matrices[name], col_scale = packed(W)
        if col_scale is not None:
            return None
    if lay.v_lora is None:
        matrices["v_down"], matrices["v_up"] = _absent(matrices["a_down"]), _absent(matrices["a_up"])
    f32 = lambda a: np.array(a, np.float32, order="C")  # copies: one Numba type for every layer
    C = lay.mix.shape[1]
    vectors = {
        "attn_norm_weight": f32(lay.attn_norm[0]), "attn_norm_bias": f32(lay.attn_norm[1]), "mix": f32(lay.mix),
        "w_bias": f32(lay.w_lora[2]), "a_bias": f32(lay.a_lora[2]),
        "v_bias": f32(lay.v_lora[2]) if lay.v_lora is not None else np.zeros(C, np.float32),
        "k_k": f32(lay.k_k), "k_a": f32(lay.k_a), "r_k": f32(lay.r_k),
        "g_norm_weight": f32(lay.g_norm[0]), "g_norm_bias": f32(lay.g_norm[1]),
        "ffn_norm_weight": f32(lay.ffn_norm[0]), "ffn_norm_bias": f32(lay.ffn_norm[1]),
        "ffn_mix": f32(lay.ffn_x_k.reshape(1, C))}
    F = lay.ffn_key.shape[0]
    step = _layer_parallel if F * C >= PARALLEL_MIN_WEIGHTS else _layer
    return step, TokenLayer(**vectors, **matrices, first=bool(first))


def decode(layers, x, state, eps, gn_eps):  # x (B, C) float32 after pre_norm; state [att_x, ffn_x, wkv]
    # -> x (B, C) after the last layer
    """Run x through every layer (`layers`: token_layer of each), updating the state in place."""
    x = np.ascontiguousarray(x, np.float32)
    v_first = np.empty_like(x)   # layer 0's v, which later layers mix into theirs
    att_x, ffn_x, wkv = state
    eps, gn_eps = float(eps), float(gn_eps)
    per = job_rows(*x.shape)
    for l, (step, layer) in enumerate(layers):
        step(x, v_first, att_x, ffn_x, wkv, l, layer, eps, gn_eps, per)
    return x
