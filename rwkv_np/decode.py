"""Token mode: one step (T = 1) of B sequences through every layer, one Numba call per layer.

A decoded token reads every weight once, so its speed is memory bandwidth -- provided nothing
else costs. `model.run_block` spends some forty NumPy calls per layer on vectors of a few
hundred numbers, about 1 ms a layer: a third of a 169M token. Here one compiled function runs a
whole layer in four parallel phases, each job finishing the elementwise work of its rows

    1. k, v, r  = mix_k/v/r(ln1(x)) @ W_key/value/receptance.T        (3 matrices, one loop)
    2. att      = (sigmoid(r) * wkv(k, v)) @ W_output.T
    3. key, r'  = mix_k/r(ln2(x)) @ W_ffn_key/receptance.T             (2 matrices, one loop)
    4. ffn      = sigmoid(r') * (relu(key)^2 @ W_ffn_value.T)

with x += att, x += ffn between them: the equations of reference.py, the WKV step of wkv.py for
one token. The matrix work is linear.project (fastmath, vectorized); the rest is compiled
without fastmath, because the WKV step relies on exp(-1e38 - q) being exactly 0.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .linear import PARALLEL_MIN_WEIGHTS, activations, project
from .state import ATT_X, DEN, FFN_X, MAX, NUM
from .storage import packed
from .wkv import step_scales

ROWS_PER_JOB = 16  # weight rows per parallel work item: enough to amortize, small to balance


@njit(cache=True)
def norm_and_mix(x, last, weight, bias, eps, mixes):  # x (B, T, H), last (B, H), mixes (K, H)
    """xn = layer_norm(x) (B, T, H), and for each of the K mixes m the token-shift blend
    xn * m + prev * (1 - m) as (K, B*T, H), prev being xn one token earlier (last at t = 0).
    Both paths use it: model.run_block for a prompt, `_layer` for a token (T = 1). One compiled
    pass instead of a dozen NumPy temporaries; statistics in float64. Serial on purpose: idle OpenMP threads of a parallel region spin for milliseconds and slowed the
    BLAS call that follows (measured ~20% of a 256-token prompt)."""
    B, T, H = x.shape
    xn = np.empty_like(x)
    for bt in range(B * T):
        b, t = bt // T, bt % T
        mean = 0.0
        for j in range(H):
            mean += x[b, t, j]
        mean /= H
        var = 0.0
        for j in range(H):
            var += (x[b, t, j] - mean) ** 2
        inv = 1.0 / np.sqrt(var / H + eps)
        for j in range(H):
            xn[b, t, j] = (x[b, t, j] - mean) * inv * weight[j] + bias[j]
    out = np.empty((mixes.shape[0], B * T, H), x.dtype)
    for bt in range(B * T):
        b, t = bt // T, bt % T
        prev = last[b] if t == 0 else xn[b, t - 1]
        for k in range(mixes.shape[0]):
            for j in range(H):
                out[k, bt, j] = prev[j] + (xn[b, t, j] - prev[j]) * mixes[k, j]
    return xn, out


@njit(inline="always")
def _jobs(rows):  # number of ROWS_PER_JOB blocks of a matrix with `rows` rows
    return (rows + ROWS_PER_JOB - 1) // ROWS_PER_JOB


@njit(inline="always")
def _rows(job, rows):  # the rows of block `job`
    return job * ROWS_PER_JOB, min((job + 1) * ROWS_PER_JOB, rows)


@njit(inline="always")
def _keep(last, l, xn):  # last (B, H, L) <- xn (B, 1, H) in column l: the token shift's memory
    """A loop: a slice assignment would compile Numba's message for a shape mismatch (string
    formatting: ~3 s of the first run)."""
    for b in range(xn.shape[0]):
        for j in range(xn.shape[2]):
            last[b, j, l] = xn[b, 0, j]


@njit(cache=True, error_model="numpy", inline="always")  # no zero checks on divisions (wkv.py)
def _layer(x, state, l, vec, att_w, ffn_w, scale, halve, eps):
    """One layer for B tokens. x (B, H) float32, updated in place; state: the five (B, ., L)
    arrays of state.py, column l updated in place; vec: the layer's vectors (see `layer_args`);
    att_w: (key, value, receptance, output) and ffn_w: (key, receptance, value) weight tuples.
    Each job owns a block of rows of one phase and finishes the elementwise work on them, so
    the only serial code is the two layer norms. Called from Python, one core runs the jobs in
    turn (small models: linear.PARALLEL_MIN_WEIGHTS); inlined into `_layer_parallel`, every prange
    below is a parallel loop."""
    ln1_w, ln1_b, mix_k, mix_v, mix_r, decay, first, ln2_w, ln2_b, fmix_k, fmix_r = vec
    Wk, Wv, Wr, Wo = att_w
    Fk, Fr, Fv = ffn_w
    B, H = x.shape
    A, I = Wk[0].shape[0], Fk[0].shape[0]
    f32 = np.float32
    num, den, pmax = state[NUM], state[DEN], state[MAX]

    # Time mixing. xa = ln1(x); k, v, r from xa mixed with the previous token's xa.
    xa, mixed = norm_and_mix(x.reshape(B, 1, H), np.ascontiguousarray(state[ATT_X][:, :, l]),
                             ln1_w, ln1_b, eps, np.stack((mix_k, mix_v, mix_r)))
    xk, xv, xr = activations(Wk, mixed[0]), activations(Wv, mixed[1]), activations(Wr, mixed[2])
    _keep(state[ATT_X], l, xa)
    k, v, r = np.empty((B, A), f32), np.empty((B, A), f32), np.empty((B, A), f32)
    rw = np.empty((B, A), f32)
    for job in prange(_jobs(A)):  # channels c0:c1 of k, v, r, then their WKV step
        c0, c1 = _rows(job, A)
        buf = np.empty(H, f32)
        project(Wk, xk, k, c0, c1, buf)
        project(Wv, xv, v, c0, c1, buf)
        project(Wr, xr, r, c0, c1, buf)
        # WKV (wkv.py) for one token: q = max(p, u + k); wkv = (e^(p-q) a + e^(u+k-q) v) /
        # (e^(p-q) b + e^(u+k-q)); then the state a, b, p moves on by decay w and this token.
        for b in range(B):
            for c in range(c0, c1):
                kt, vt = k[b, c], v[b, c]
                aa, bb, pp = num[b, c, l], den[b, c, l], pmax[b, c, l]
                e1, e2 = step_scales(pp, first[c] + kt)
                wkv = (e1 * aa + e2 * vt) / (e1 * bb + e2)
                rw[b, c] = wkv / (1 + np.exp(-r[b, c]))
                pw = pp + decay[c]
                e1, e2 = step_scales(pw, kt)
                num[b, c, l] = e1 * aa + e2 * vt
                den[b, c, l] = e1 * bb + e2
                pmax[b, c, l] = max(pw, kt)

    att, rwa = np.empty((B, H), f32), activations(Wo, rw)
    for job in prange(_jobs(H)):  # x += (r * wkv) @ W_output.T, rows j0:j1
        j0, j1 = _rows(job, H)
        project(Wo, rwa, att, j0, j1, np.empty(A, f32))
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += att[b, j] * scale

    # Channel mixing. xf = ln2(x); key = relu(mix_k(xf) @ W_key.T)^2, gate = sigmoid(...).
    xf, mixed = norm_and_mix(x.reshape(B, 1, H), np.ascontiguousarray(state[FFN_X][:, :, l]),
                             ln2_w, ln2_b, eps, np.stack((fmix_k, fmix_r)))
    fk, fr = activations(Fk, mixed[0]), activations(Fr, mixed[1])
    _keep(state[FFN_X], l, xf)
    key, gate = np.empty((B, I), f32), np.empty((B, H), f32)
    n = _jobs(I)
    for job in prange(n + _jobs(H)):
        buf = np.empty(H, f32)
        if job < n:
            j0, j1 = _rows(job, I)
            project(Fk, fk, key, j0, j1, buf)
            for b in range(B):
                for j in range(j0, j1):
                    key[b, j] = max(key[b, j], f32(0.0)) ** 2
        else:
            j0, j1 = _rows(job - n, H)
            project(Fr, fr, gate, j0, j1, buf)
            for b in range(B):
                for j in range(j0, j1):
                    gate[b, j] = 1 / (1 + np.exp(-gate[b, j]))

    ffn, keya = np.empty((B, H), f32), activations(Fv, key)
    for job in prange(_jobs(H)):  # x += gate * (key @ W_value.T), rows j0:j1
        j0, j1 = _rows(job, H)
        project(Fv, keya, ffn, j0, j1, np.empty(I, f32))
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += ffn[b, j] * gate[b, j] * scale
                if halve:
                    x[b, j] /= 2


@njit(parallel=True, cache=True, error_model="numpy")
def _layer_parallel(x, state, l, vec, att_w, ffn_w, scale, halve, eps):  # _layer over the cores
    _layer(x, state, l, vec, att_w, ffn_w, scale, halve, eps)


def layer_args(blk):
    """(step, its arguments) for a model.Block, chosen once at load: `_layer` for a small model
    (ffn_key, the largest product, under linear.PARALLEL_MIN_WEIGHTS), else `_layer_parallel`.
    None when a weight has column scales (int8 with col_scales=True): model.run_block's case."""
    att, ffn = [], []
    for W, group in ((blk.att_key, att), (blk.att_value, att), (blk.att_receptance, att),
                     (blk.att_output, att), (blk.ffn_key, ffn), (blk.ffn_receptance, ffn),
                     (blk.ffn_value, ffn)):
        Wt, col_scale = packed(W)
        if col_scale is not None:
            return None
        group.append(Wt)
    vec = tuple(np.ascontiguousarray(a, np.float32) for a in (
        blk.ln1_weight, blk.ln1_bias, blk.att_mix_k, blk.att_mix_v, blk.att_mix_r,
        blk.time_decay, blk.time_first, blk.ln2_weight, blk.ln2_bias, blk.ffn_mix_k, blk.ffn_mix_r))
    I, H = blk.ffn_key.shape
    step = _layer_parallel if I * H >= PARALLEL_MIN_WEIGHTS else _layer
    return step, vec, tuple(att), tuple(ffn), np.float32(blk.scale), blk.halve


def decode(layers, x, state, eps):  # x (B, H) float32 after pre_ln, state: 5 arrays -> x (B, H)
    """Run x through every layer (`layers`: layer_args of each block), updating state in place."""
    x = np.ascontiguousarray(x, np.float32)
    state = tuple(state)
    eps = float(eps)  # float64, as prompts pass it: norm_and_mix is compiled once for both
    for l, (step, vec, att, ffn, scale, halve) in enumerate(layers):
        step(x, state, l, vec, att, ffn, scale, halve, eps)
    return x
