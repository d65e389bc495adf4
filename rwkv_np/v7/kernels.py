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
                w[j] = np.exp(w_log[bi, t, h, j])
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


@numba.njit(cache=True)
def norm_and_mix(x, last, weight, bias, eps, mixes):  # x (B, T, C), last (B, C), mixes (K, C)
    # -> xn (B, T, C), mixed (K, B*T, C)
    """xn = layer_norm(x), and for each of the K token-shift mixes m (reference.time_mix)

        mixed_m = xn + (prev - xn) * m,     prev = xn one token earlier (last at t = 0)

    in one compiled pass instead of a dozen NumPy temporaries; statistics in float64, the rest in
    x's dtype. The prompt path (model.py) and token mode (decode.py) both run it, for the six
    time-mix blends (r, w, k, v, a, g) and the channel mix's one. Serial: a few hundred
    microseconds at T = 256, and a parallel region would wake threads for it."""
    B, T, C = x.shape
    xn = np.empty_like(x)
    for bt in range(B * T):
        b, t = bt // T, bt % T
        mean = 0.0
        for j in range(C):
            mean += x[b, t, j]
        mean /= C
        var = 0.0
        for j in range(C):
            var += (x[b, t, j] - mean) ** 2
        inv = 1.0 / np.sqrt(var / C + eps)
        for j in range(C):
            xn[b, t, j] = (x[b, t, j] - mean) * inv * weight[j] + bias[j]
    out = np.empty((mixes.shape[0], B * T, C), x.dtype)
    for bt in range(B * T):
        b, t = bt // T, bt % T
        prev = last[b] if t == 0 else xn[b, t - 1]
        cur = xn[b, t]
        for k in range(mixes.shape[0]):
            for j in range(C):
                out[k, bt, j] = cur[j] + (prev[j] - cur[j]) * mixes[k, j]
    return xn, out
