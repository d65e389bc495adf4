"""WKV-5 as a Numba kernel: what the fast RWKV-5 and RWKV-6 models run, in float32 or float64
(the inputs' dtype).

The same recurrence as wkv.py's `wkv5_sequential` (read that first), per head:

    y_t[j] = Σ_i r_t[i] (S[i][j] + u[i] k_t[i] v_t[j]),     S[i][j] <- w_t[i] S[i][j] + k_t[i] v_t[j]

with w_t = e^{λ_t}. Parallel over (batch row x head), sequential over tokens. The state is
already key-major ([key][value]), so every inner loop runs over the value index j with
contiguous, independent lanes (no horizontal sums) and vectorizes without fastmath: float sums
run in the written order, so results do not depend on the build.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def wkv5_step(S, r, k, v, w, u, y):  # S (N, N) [key][value] in place; r, k, v, w, u, y (N,)
    """One token of one head: y_j = Σ_i r_i (S_ij + u_i k_i v_j), then S_ij <- w_i S_ij + k_i v_j.
    The prompt kernels and token mode (decode.py) all run this loop. Written as

        y_j = (Σ_i r_i u_i k_i) v_j + Σ_i r_i S_ij

    (the bonus is one number per token), with the rows of S taken four at a time, the value index j
    innermost: each pass loads and stores y once for four rows of S, where one row per pass made
    y's loads and stores outnumber S's (one core, T = 256, H = 12, N = 64: 1.57 -> 1.30 ms). Sums
    in the written order (no fastmath): the same bits in every build."""
    N = S.shape[0]
    a = r[0] * (u[0] * k[0])
    for i in range(1, N):
        a += r[i] * (u[i] * k[i])                 # Σ_i r_i u_i k_i
    for j in range(N):
        y[j] = a * v[j]
    i = 0
    while i + 4 <= N:
        r0, r1, r2, r3 = r[i], r[i + 1], r[i + 2], r[i + 3]
        k0, k1, k2, k3 = k[i], k[i + 1], k[i + 2], k[i + 3]
        w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
        S0, S1, S2, S3 = S[i], S[i + 1], S[i + 2], S[i + 3]
        for j in range(N):
            s0, s1, s2, s3, vj = S0[j], S1[j], S2[j], S3[j], v[j]
            y[j] += (r0 * s0 + r1 * s1) + (r2 * s2 + r3 * s3)     # Σ_i r_i S_ij, four rows
            S0[j] = w0 * s0 + k0 * vj                               # w_i S_ij + k_i v_j
            S1[j] = w1 * s1 + k1 * vj
            S2[j] = w2 * s2 + k2 * vj
            S3[j] = w3 * s3 + k3 * vj
        i += 4
    for rest in range(i, N):                      # N not a multiple of 4: the last rows one by one
        ri, ki, wi, row = r[rest], k[rest], w[rest], S[rest]
        for j in range(N):
            s = row[j]
            y[j] += ri * s
            row[j] = wi * s + ki * v[j]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _wkv5_kernel(r, w_log, k, v, u, state, y):  # r, w_log, k, v, y (B, T, H, N); u (H, N); state (B, H, N, N) in place
    B, T, H, N = r.shape
    for job in numba.prange(B * H):
        bi, h = job // H, job % H
        S = state[bi, h]                         # (N, N) view, S[key][value]
        yt, wt = np.empty(N, r.dtype), np.empty(N, r.dtype)
        for t in range(T):
            for i in range(N):
                wt[i] = np.exp(w_log[bi, t, h, i])
            wkv5_step(S, r[bi, t, h], k[bi, t, h], v[bi, t, h], wt, u[h], yt)
            for j in range(N):
                y[bi, t, h, j] = yt[j]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _wkv5_kernel_parallel(r, w_log, k, v, u, state, y):  # _wkv5_kernel with the heads over the cores
    _wkv5_kernel(r, w_log, k, v, u, state, y)


# Two builds of one loop, as rwkv_np's RWKV-4 and RWKV-7 WKV: called from Python, `_wkv5_kernel`
# runs on one core (prange is range); inlined into `_wkv5_kernel_parallel`, the prange is a
# parallel loop. Two functions, not two njit() of one, because Numba's disk cache is keyed by the
# function. error_model="numpy": no zero-division checks in compiled code. No fastmath: sums run
# in the written order, so both builds give the same bits and the kernel is deterministic, and
# exp(-1000) (the clamped log-decay floor) is an exact 0, not a flushed denormal.
PARALLEL_MIN_WORK = 1 << 18  # B * H * T * N * N multiply-adds from which the parallel build runs


def wkv5_forward(r, w_log, k, v, u, state=None):  # (B, T, H, N) x 4, u (H, N), state (B, H, N, N) or None
    """WKV-5 in Numba, in r's dtype (float32 or float64). Returns y (B, T, H, N) and the new state;
    `state` is read, not modified. w_log: the log-decays per token, already clamped (wkv.py)."""
    dtype = r.dtype
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N), dtype) if state is None else np.array(state, dtype, order="C")
    y = np.empty((B, T, H, N), dtype)
    if T == 0:
        return y, S
    args = (np.ascontiguousarray(x, dtype) for x in (r, w_log, k, v, u))
    parallel = B * H > 1 and B * H * T * N * N >= PARALLEL_MIN_WORK
    kernel = _wkv5_kernel_parallel if parallel else _wkv5_kernel
    kernel(*args, S, y)
    return y, S
