"""WKV-7 as a Numba kernel: what the fast model runs, in float32 or float64 (the inputs' dtype).

The same recurrence as wkv.py's `wkv7_sequential` (read that first), per head:

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,     y_t = S_t r_t,     w_t = e^{λ_t}

Parallel over (batch row x head), sequential over tokens. Two choices make the loops vectorize
without fastmath (no reassociation: float sums run in the written order):
- Each job keeps its head's state transposed, St[j][i] = S[i][j] (key-major), so every inner loop
  runs over the value index i with contiguous, independent lanes: no horizontal sums.
- One sweep over St per token: each key row j is updated with token t and, while it is in L1,
  added into y_t = S_t r_t and into S_t a_{t+1} (the "sa" the next token needs), so St is
  streamed once per token instead of twice.
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core.extending import overload

from ..exp import exp_nonpositive, sigmoid
from ..norm_stats import mean_inv_std


@numba.njit(cache=True, error_model="numpy", inline="always")
def _wkv7_kernel(r, w_log, k, v, a, b, state, y):  # r .. b, y (B, T, H, N); state (B, H, N, N) in place
    B, T, H, N = r.shape
    for job in numba.prange(B * H):
        bi, h = job // H, job % H
        St = np.empty((N, N), r.dtype)           # St[j, i] = S[i, j]: key-major private copy
        for i in range(N):
            for j in range(N):
                St[j, i] = state[bi, h, i, j]
        w = np.empty(N, r.dtype)
        sa = np.zeros(N, r.dtype)                # S_{t-1} a_t
        nxt = np.zeros(N, r.dtype)               # S_t a_{t+1}, built during token t's pass
        yt = np.empty(N, r.dtype)
        at = a[bi, 0, h]
        for j in range(N):                       # sa for the first token: S_0 a_1
            for i in range(N):
                sa[i] += St[j, i] * at[j]
        for t in range(T):
            rt, kt, vt, bt = r[bi, t, h], k[bi, t, h], v[bi, t, h], b[bi, t, h]
            an = a[bi, t + 1, h] if t + 1 < T else at   # unused after the last token
            for j in range(N):
                w[j] = exp_nonpositive(w_log[bi, t, h, j])   # vectorizes (exp.py)
            for i in range(N):
                yt[i] = 0
                nxt[i] = 0
            for j in range(N):
                wj, bj, kj, rj, aj = w[j], bt[j], kt[j], rt[j], an[j]
                row = St[j]
                for i in range(N):                              # S[i][j] w_j + (S a)_i b_j + v_i k_j
                    row[i] = row[i] * wj + sa[i] * bj + vt[i] * kj
                for i in range(N):
                    yt[i] += row[i] * rj                        # y_t = S_t r_t
                    nxt[i] += row[i] * aj                       # S_t a_{t+1}
            for i in range(N):
                y[bi, t, h, i] = yt[i]
                sa[i] = nxt[i]
            at = an
        for i in range(N):                       # written back by loops: a slice assignment would
            for j in range(N):                   # compile Numba's shape-mismatch message (~3 s)
                state[bi, h, i, j] = St[j, i]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _wkv7_kernel_parallel(r, w_log, k, v, a, b, state, y):  # _wkv7_kernel with the heads over the cores
    _wkv7_kernel(r, w_log, k, v, a, b, state, y)


# Two builds of one loop, as in rwkv_np's RWKV-4 WKV: called from Python, `_wkv7_kernel` runs on one
# core (prange is range); inlined into `_wkv7_kernel_parallel`, the prange is a parallel loop. Two
# functions, not two njit() of one, because Numba's disk cache is keyed by the function.
# error_model="numpy": no zero-division checks in compiled code (there are no divisions here; it
# keeps the loops free of Python's error paths). No fastmath: sums run in the written order, so
# both builds give the same bits and the kernel is deterministic.
#
# Measured (2-core AMD EPYC shared with other jobs, float32, N = 64, best of 7): one token of 12
# heads 85 us on one core, 42 us over two; 64 tokens x 12 heads 0.83 ms / 0.55 ms; 512 tokens x 12
# heads ~7 ms / ~5 ms (1.1 us per head and token on one core; float64 ~2x). Splitting the inner loop
# in two (update, then y and S a) is what lets LLVM vectorize it: one loop touching five arrays needs
# more run-time overlap checks than LLVM emits, and ran scalar (9.6 ms for the 512 tokens). A single
# token pays ~2.4 us per head for the transposed copy in and out; fine beside the projections.
# Waking the second core costs ~70 us when the machine is busy, so small calls stay on one core.
# The decays go through exp.py's exp_nonpositive (np.exp compiled to a scalar expf call per
# element): 256 tokens x 12 heads on one core 4.2-4.9 -> 3.2-4.0 ms (2-core Zen 4 VM, loaded).
#
# No chunked (matrix-product) kernel: per token and head it needs ~20k multiply-adds at N = 64 and
# chunk 16 (pairwise weights 4 n N, the S_0 products 2 N^2, the state update 2 N^2, the triangular
# solve n N / 2) against the 3 N^2 = 12k of this loop, plus n N exps for the pairwise decays. It
# pays on GPUs (tensor cores, parallel over time), not here: wkv.py's NumPy `wkv7_chunked` on the
# 512 x 12 x 64 case takes 150 ms (chunk 16) to 780 ms (chunk 64), against ~7 ms for this kernel.
PARALLEL_MIN_WORK = 1 << 18  # B * H * T * N * N multiply-adds from which the parallel build runs


def wkv7_forward(r, w_log, k, v, a, b, state=None):  # (B, T, H, N) x 6, state (B, H, N, N) or None
    """WKV-7 in Numba, in r's dtype (float32 or float64). Returns y (B, T, H, N) and the new state;
    `state` is read, not modified."""
    dtype = r.dtype
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N), dtype) if state is None else np.array(state, dtype, order="C")
    y = np.empty((B, T, H, N), dtype)
    if T == 0:
        return y, S
    args = (np.ascontiguousarray(x, dtype) for x in (r, w_log, k, v, a, b))
    parallel = B * H > 1 and B * H * T * N * N >= PARALLEL_MIN_WORK
    kernel = _wkv7_kernel_parallel if parallel else _wkv7_kernel
    kernel(*args, S, y)
    return y, S


@numba.njit(inline="always")
def _norm_and_mix(x, last, weight, bias, eps, mixes):  # x (B, T, C), last (B, C), mixes (K, C)
    # -> xn (B, T, C), mixed (K, B*T, C)
    """xn = layer_norm(x), and for each of the K token-shift mixes m (reference.time_mix)

        mixed_m = xn + (prev - xn) * m,     prev = xn one token earlier (last at t = 0)

    in one compiled pass instead of a dozen NumPy temporaries; statistics in float64, the rest in
    x's dtype. The prompt path (model.py) and token mode (decode.py) both run it, for the six
    time-mix blends (r, w, k, v, a, g) and the channel mix's one. Serial: a few hundred
    microseconds at T = 256, and a parallel region would wake threads for it. norm_and_mix_rows:
    the same loops over the cores (no sum crosses a row, so the same bits), for RWKV-5/6 prompts."""
    B, T, C = x.shape
    xn = np.empty_like(x)
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        mean, inv = mean_inv_std(x[b, t], eps)
        for j in range(C):
            xn[b, t, j] = (x[b, t, j] - mean) * inv * weight[j] + bias[j]
    out = np.empty((mixes.shape[0], B * T, C), x.dtype)
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        prev = last[b] if t == 0 else xn[b, t - 1]
        cur = xn[b, t]
        for k in range(mixes.shape[0]):
            for j in range(C):
                out[k, bt, j] = cur[j] + (prev[j] - cur[j]) * mixes[k, j]
    return xn, out


@numba.njit(cache=True)
def norm_and_mix(x, last, weight, bias, eps, mixes):  # one core: token mode's few rows
    return _norm_and_mix(x, last, weight, bias, eps, mixes)


@numba.njit(parallel=True, cache=True)
def norm_and_mix_rows(x, last, weight, bias, eps, mixes):  # the rows over the cores: prompts
    return _norm_and_mix(x, last, weight, bias, eps, mixes)


# ---------------------------------------------------------------- around the WKV, per head and token
# The elementwise equations of reference.time_mix before and after the recurrence, written once
# for one head of one row of (rows, C) arrays: the prompt path runs them over every row
# (wkv7_inputs / wkv7_outputs), token mode (decode.py) inside its per-head jobs.

def _like(x, value):  # value as a scalar of x's type (float32 arithmetic stays float32)
    pass


@overload(_like)
def _like_impl(x, value):
    return (lambda x, value: np.float32(value)) if x == numba.types.float32 else \
        (lambda x, value: np.float64(value))


@numba.njit(inline="always")
def dot8(x, y):  # x, y (n,) -> Σ x_j y_j in eight interleaved partial sums
    """A fixed summation order (lanes j mod 8, then pairwise): eight independent chains, no
    fastmath needed."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _like(x[0], 0.0)
    n, j = x.shape[0], 0
    while j + 8 <= n:
        s0 += x[j] * y[j]
        s1 += x[j + 1] * y[j + 1]
        s2 += x[j + 2] * y[j + 2]
        s3 += x[j + 3] * y[j + 3]
        s4 += x[j + 4] * y[j + 4]
        s5 += x[j + 5] * y[j + 5]
        s6 += x[j + 6] * y[j + 6]
        s7 += x[j + 7] * y[j + 7]
        j += 8
    while j < n:
        s0 += x[j] * y[j]
        j += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(inline="always")
def row_inputs(n, c0, c1, N, first, k, v, v_first, zw, za, zv, p, neg_decay, w_log, kt, vt, a, b):
    # row n, channels c0:c1 (whole heads of N) of k, v, v_first, zw, za, zv (rows, C) -> w_log, kt,
    # vt, a, b there; p = (k_k, k_a, w0, a0, v0) (C,) each; neg_decay = -e^{-1/2} in their dtype
    """The WKV-7 inputs of one token, from its projections (zw, za, zv: the LoRAs before their
    biases w0, a0, v0):
        log w = -e^{-1/2} sigmoid(zw + w0),   iclr = sigmoid(za + a0)
        kk = normalize(k * k_k) per head,   a = -kk,   b = kk iclr,   kt = k (1 + (iclr - 1) k_a)
        layer 0: v_first = v, vt = v;   later layers: vt = v + (v_first - v) sigmoid(zv + v0)
    normalize(x) = x / max(||x||, 1e-12), as torch's F.normalize. Loops run over the whole range
    and touch at most four arrays: LLVM then vectorizes them (one loop per head over all of them
    ran scalar, 3x slower on short loops, 5.8 ms per 256 x 768 layer against 1.8 ms in NumPy)."""
    k_k, k_a, w0, a0, v0 = p
    one = _like(k[n, c0], 1.0)                                  # float32 stays float32
    for c in range(c0, c1):
        w_log[n, c] = neg_decay * sigmoid(zw[n, c] + w0[c])
    for c in range(c0, c1):
        b[n, c] = sigmoid(za[n, c] + a0[c])                     # iclr, until b is made below
    for c in range(c0, c1):
        kt[n, c] = k[n, c] * (one + (b[n, c] - one) * k_a[c])
    for c in range(c0, c1):
        a[n, c] = k[n, c] * k_k[c]                              # k * k_k, normalized per head
    for h0 in range(c0, c1, N):
        norm = max(np.sqrt(dot8(a[n, h0:h0 + N], a[n, h0:h0 + N])), _like(a[n, h0], 1e-12))
        for c in range(h0, h0 + N):
            kk = a[n, c] / norm
            a[n, c] = -kk
            b[n, c] = kk * b[n, c]
    if first:
        for c in range(c0, c1):
            v_first[n, c] = v[n, c]
        for c in range(c0, c1):
            vt[n, c] = v[n, c]
    else:
        for c in range(c0, c1):
            vt[n, c] = sigmoid(zv[n, c] + v0[c])
        for c in range(c0, c1):
            vt[n, c] = v[n, c] + (v_first[n, c] - v[n, c]) * vt[n, c]


@numba.njit(inline="always")
def head_outputs(n, c0, c1, h, y, r, kt, vt, g, r_k, gn_weight, gn_bias, gn_eps, o):
    # row n, channels c0:c1 (head h) of y, r, kt, vt, g (rows, C) -> o there; r_k (H, N)
    """What the time mix multiplies by o_proj, for one head of one token:
        o = (group_norm(y) + (Σ_j r_j kt_j r_k[h, j]) vt) * g
    the group norm's statistics in float64, as norm_and_mix's."""
    bonus = _like(r[n, c0], 0.0)
    for c in range(c0, c1):
        bonus += r[n, c] * kt[n, c] * r_k[h, c - c0]
    mean, inv = mean_inv_std(y[n, c0:c1], gn_eps)
    for c in range(c0, c1):
        yn = _like(y[n, c], (y[n, c] - mean) * inv)
        o[n, c] = (yn * gn_weight[c] + gn_bias[c] + bonus * vt[n, c]) * g[n, c]


@numba.njit(cache=True, error_model="numpy")
def wkv7_inputs(first, k, v, v_first, zw, za, zv, p, neg_decay, heads):
    # k, v, v_first, zw, za, zv (rows, C) -> w_log, kt, vt, a, b (rows, C); v_first written if first
    """row_inputs over every row (the prompt path): one pass, no NumPy temporaries."""
    rows, C = k.shape
    N = C // heads
    w_log, kt, vt, a, b = (np.empty_like(k), np.empty_like(k), np.empty_like(k), np.empty_like(k),
                           np.empty_like(k))
    for n in range(rows):
        row_inputs(n, 0, C, N, first, k, v, v_first, zw, za, zv, p, neg_decay, w_log, kt, vt, a, b)
    return w_log, kt, vt, a, b


@numba.njit(cache=True, error_model="numpy")
def wkv7_outputs(y, r, kt, vt, g, r_k, gn_weight, gn_bias, gn_eps):  # (rows, C) x 5 -> o (rows, C)
    """head_outputs over every row and head (the prompt path)."""
    rows = y.shape[0]
    H, N = r_k.shape
    o = np.empty_like(y)
    for n in range(rows):
        for h in range(H):
            head_outputs(n, h * N, (h + 1) * N, h, y, r, kt, vt, g, r_k, gn_weight, gn_bias, gn_eps, o)
    return o
