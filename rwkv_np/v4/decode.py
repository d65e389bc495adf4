"""Token mode: one step (T = 1) of B sequences through every layer, one Numba call per layer.

A decoded token reads every weight once, so its speed is memory bandwidth -- provided nothing
else costs. `model.run_block` spends some forty NumPy calls per layer on vectors of a few
hundred numbers, about 1 ms a layer: a third of a 169M token. Here one compiled function runs a
whole layer in four parallel phases, each job finishing the elementwise work of its rows

    1. k, v, r  = mix_k/v/r(ln1(x)) @ W_key/value/receptance.T        (3 matrices, one loop)
    2. att      = (sigmoid(r) * wkv(k, v)) @ W_output.T
    3. key, r'  = mix_k/r(ln2(x)) @ W_ffn_key/receptance.T             (2 matrices, one loop)
    4. ffn      = sigmoid(r') * (relu(key)^2 @ W_ffn_value.T)

with x += att, x += ffn between them: the equations of reference.py, kernels.wkv_step for the
WKV of one token. The matrix work is linear.project (fastmath, vectorized); the rest is compiled
without fastmath, because the WKV step relies on exp(-1e38 - q) being exactly 0.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..exp import sigmoid
from ..linear import PARALLEL_MIN_WEIGHTS, activations, job_rows, job_span, jobs, project
from ..storage import packed
from .kernels import norm_and_mix, wkv_step
from .state import ATT_X, DEN, FFN_X, MAX, NUM


class TokenLayer(NamedTuple):
    """What one layer's token step reads, named once (model.Block's fields, ready for Numba):
    vectors as float32 arrays, matrices as storage.packed tuples (array, kind, row_scale)."""
    ln1_weight: np.ndarray; ln1_bias: np.ndarray                            # (H,)
    att_mix_k: np.ndarray; att_mix_v: np.ndarray; att_mix_r: np.ndarray    # (H,)
    time_decay: np.ndarray; time_first: np.ndarray                          # (A,) w < 0, u
    ln2_weight: np.ndarray; ln2_bias: np.ndarray                            # (H,)
    ffn_mix_k: np.ndarray; ffn_mix_r: np.ndarray                            # (H,)
    att_key: tuple; att_value: tuple; att_receptance: tuple                 # (A, H)
    att_output: tuple                                                       # (H, A)
    ffn_key: tuple; ffn_receptance: tuple; ffn_value: tuple                 # (I, H), (H, H), (H, I)
    scale: np.float32                                                       # HF's rescale factor
    halve: bool                                                             # x /= 2 after the layer


@njit(inline="always")
def _keep(last, l, xn):  # last (B, H, L) <- xn (B, 1, H) in column l: the token shift's memory
    """A loop: a slice assignment would compile Numba's message for a shape mismatch (string
    formatting: ~3 s of the first run)."""
    for b in range(xn.shape[0]):
        for j in range(xn.shape[2]):
            last[b, j, l] = xn[b, 0, j]


@njit(cache=True, error_model="numpy", inline="always")  # no zero checks on divisions (wkv.py)
def _layer(x, state, l, w, eps, per):
    """One layer for B tokens. x (B, H) float32, updated in place; state: the five (B, ., L)
    arrays of state.py, column l updated in place; w: the layer's TokenLayer; per: weight rows a
    job (linear.job_rows). Each job owns a block of rows of one phase and finishes the elementwise
    work on them, so the only serial code is the two layer norms and the int8 roundings of x.
    Called from Python, one core runs the jobs in turn (small models:
    linear.PARALLEL_MIN_WEIGHTS); inlined into `_layer_parallel`, every prange below is a
    parallel loop."""
    Wk, Wv, Wr, Wo = w.att_key, w.att_value, w.att_receptance, w.att_output
    Fk, Fr, Fv = w.ffn_key, w.ffn_receptance, w.ffn_value
    first, decay, scale, halve = w.time_first, w.time_decay, w.scale, w.halve  # fields as locals:
    B, H = x.shape                                   # a parallel loop cannot take the tuple itself
    A, I = Wk[0].shape[0], Fk[0].shape[0]
    f32 = np.float32
    num, den, pmax = state[NUM], state[DEN], state[MAX]

    # Time mixing. xa = ln1(x); k, v, r from xa mixed with the previous token's xa.
    xa, mixed = norm_and_mix(x.reshape(B, 1, H), np.ascontiguousarray(state[ATT_X][:, :, l]),
                             w.ln1_weight, w.ln1_bias, eps, np.stack((w.att_mix_k, w.att_mix_v, w.att_mix_r)))
    xk, xv, xr = activations(Wk, mixed[0]), activations(Wv, mixed[1]), activations(Wr, mixed[2])
    _keep(state[ATT_X], l, xa)
    k, v, r = np.empty((B, A), f32), np.empty((B, A), f32), np.empty((B, A), f32)
    rw = np.empty((B, A), f32)
    for job in prange(jobs(A, per)):  # channels c0:c1 of k, v, r, then their WKV step
        c0, c1 = job_span(job, A, per)
        buf = np.empty(H, f32)
        project(Wk, xk, k, c0, c1, buf)
        project(Wv, xv, v, c0, c1, buf)
        project(Wr, xr, r, c0, c1, buf)
        sa, sb, sp = np.empty(c1 - c0, f32), np.empty(c1 - c0, f32), np.empty(c1 - c0, f32)
        for b in range(B):  # the WKV of this token, and the state a, b, p moved on
            for c in range(c0, c1):  # state[., b, c, l] lies L floats apart: gathered first,
                sa[c - c0], sb[c - c0], sp[c - c0] = num[b, c, l], den[b, c, l], pmax[b, c, l]
            for c in range(c0, c1):  # so that this loop vectorizes (B = 8: 3x faster)
                wkv, sa[c - c0], sb[c - c0], sp[c - c0] = wkv_step(
                    sa[c - c0], sb[c - c0], sp[c - c0], first[c], decay[c], k[b, c], v[b, c])
                rw[b, c] = wkv * sigmoid(r[b, c])
            for c in range(c0, c1):
                num[b, c, l], den[b, c, l], pmax[b, c, l] = sa[c - c0], sb[c - c0], sp[c - c0]

    att, rwa = np.empty((B, H), f32), activations(Wo, rw)
    for job in prange(jobs(H, per)):  # x += (r * wkv) @ W_output.T, rows j0:j1
        j0, j1 = job_span(job, H, per)
        project(Wo, rwa, att, j0, j1, np.empty(A, f32))
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += att[b, j] * scale

    # Channel mixing. xf = ln2(x); key = relu(mix_k(xf) @ W_key.T)^2, gate = sigmoid(...).
    xf, mixed = norm_and_mix(x.reshape(B, 1, H), np.ascontiguousarray(state[FFN_X][:, :, l]),
                             w.ln2_weight, w.ln2_bias, eps, np.stack((w.ffn_mix_k, w.ffn_mix_r)))
    fk, fr = activations(Fk, mixed[0]), activations(Fr, mixed[1])
    _keep(state[FFN_X], l, xf)
    key, gate = np.empty((B, I), f32), np.empty((B, H), f32)
    n = jobs(I, per)
    for job in prange(n + jobs(H, per)):
        buf = np.empty(H, f32)
        if job < n:
            j0, j1 = job_span(job, I, per)
            project(Fk, fk, key, j0, j1, buf)
            for b in range(B):
                for j in range(j0, j1):
                    key[b, j] = max(key[b, j], f32(0.0)) ** 2
        else:
            j0, j1 = job_span(job - n, H, per)
            project(Fr, fr, gate, j0, j1, buf)
            for b in range(B):
                for j in range(j0, j1):
                    gate[b, j] = sigmoid(gate[b, j])

    ffn, keya = np.empty((B, H), f32), activations(Fv, key)
    for job in prange(jobs(H, per)):  # x += gate * (key @ W_value.T), rows j0:j1
        j0, j1 = job_span(job, H, per)
        project(Fv, keya, ffn, j0, j1, np.empty(I, f32))
        for b in range(B):
            for j in range(j0, j1):
                x[b, j] += ffn[b, j] * gate[b, j] * scale
                if halve:
                    x[b, j] /= 2


@njit(parallel=True, cache=True, error_model="numpy")
def _layer_parallel(x, state, l, w, eps, per):  # _layer over the cores
    _layer(x, state, l, w, eps, per)


def token_layer(blk):
    """(step, TokenLayer) for a model.Block, chosen once at load: `_layer` for a small model
    (ffn_key, the largest product, under linear.PARALLEL_MIN_WEIGHTS), else `_layer_parallel`.
    None when a weight has column scales (int8 with col_scales=True): model.run_block's case."""
    matrices = {}
    for name in ("att_key", "att_value", "att_receptance", "att_output", "ffn_key", "ffn_receptance",
                 "ffn_value"):
        matrices[name], col_scale = packed(getattr(blk, name))
        if col_scale is not None:
            return None
    vectors = {name: np.ascontiguousarray(getattr(blk, name), np.float32) for name in (
        "ln1_weight", "ln1_bias", "att_mix_k", "att_mix_v", "att_mix_r", "time_decay", "time_first",
        "ln2_weight", "ln2_bias", "ffn_mix_k", "ffn_mix_r")}
    I, H = blk.ffn_key.shape
    step = _layer_parallel if I * H >= PARALLEL_MIN_WEIGHTS else _layer
    return step, TokenLayer(**vectors, **matrices, scale=np.float32(blk.scale), halve=blk.halve)


def decode(layers, x, state, eps):  # x (B, H) float32 after pre_ln, state: 5 arrays -> x (B, H)
    """Run x through every layer (`layers`: token_layer of each block), updating state in place."""
    x = np.ascontiguousarray(x, np.float32)
    state = tuple(state)
    eps = float(eps)  # float64, as prompts pass it: norm_and_mix is compiled once for both
    per = job_rows(*x.shape)
    for l, (step, layer) in enumerate(layers):
        step(x, state, l, layer, eps, per)
    return x
