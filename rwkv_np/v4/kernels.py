"""The Numba code of RWKV-4: the WKV kernel for prompts, its one-token step, and the layer
norm + token-shift pass both the prompt path (model.py) and token mode (decode.py) run.

`wkv_forward` computes wkv.wkv_reference's recurrence (float32 or float64), parallel over
batch x channel blocks, sequential over time; tests hold it to the reference.
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core.extending import overload

from ..storage import _bits_to_f32
from .wkv import empty_wkv_state


@numba.njit(inline="always")
def _exp32(x):  # float32 e^x for x <= 0: < 1 ulp, exactly 0 below -87.34 (e^(-1e38) = 0)
    """A polynomial exp that LLVM can vectorize, unlike a call to the C library's expf.

    x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two parts so that n ln2 is exact), then
    e^r by the degree-7 Taylor-like polynomial of Cephes' expf, times 2^n built in the exponent
    bits. Results below float32's normal range (x < ln 2^-126) are flushed to 0."""
    f32 = np.float32
    z = max(x, f32(-87.336544))
    n = np.floor(z * f32(1.44269504) + f32(0.5))
    r = z - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    e = (p * r * r + r + f32(1.0)) * _bits_to_f32(np.uint32((np.int32(n) + 127) << 23))
    return f32(0.0) if x < f32(-87.336544) else e  # NaN stays NaN


def _exp_nonpositive(x):  # e^x for x <= 0 in x's precision
    pass


@overload(_exp_nonpositive)
def _exp_nonpositive_impl(x):
    if x == numba.types.float32:
        return lambda x: _exp32(x)
    return lambda x: np.exp(x)  # float64: the C library's exp, for the golden-output precision


@numba.njit(inline="always")
def step_scales(x, y):  # -> (e^(x-q), e^(y-q)), q = max(x, y): one of them is e^0 = 1
    """The two factors of a log-space step: one exp instead of two, and no branch (a select),
    so a loop over channels vectorizes."""
    one = np.float32(1.0)  # unifies with float32 or float64 exps: no change of precision
    e = _exp_nonpositive(-abs(x - y))
    return (one, e) if x >= y else (e, one)


@numba.njit(inline="always")
def wkv_step(a, b, p, u, w, k, v):  # one channel, one token -> (wkv, a', b', p')
    """The step of wkv.wkv_reference in the state's precision, shared by the prompt kernel below
    and decode.py's fused layer:
        q = max(p, u + k):   wkv = (e^(p-q) a + e^(u+k-q) v) / (e^(p-q) b + e^(u+k-q))
        q' = max(p + w, k):  a' = e^(p+w-q') a + e^(k-q') v,  b' = e^(p+w-q') b + e^(k-q'),  p' = q'
    """
    e1, e2 = step_scales(p, u + k)
    out = (e1 * a + e2 * v) / (e1 * b + e2)
    pw = p + w
    e1, e2 = step_scales(pw, k)
    return out, e1 * a + e2 * v, e1 * b + e2, max(pw, k)


_BLOCK = 64  # channels per parallel work item: contiguous, so the inner loop vectorizes


@numba.njit(cache=True, error_model="numpy", inline="always")  # error_model: see below
def _wkv_kernel(w, u, k, v, a, b, p, out):  # w, u (C,)  k, v, out (B, T, C)  a, b, p (B, C)
    B, T, C = k.shape
    nblocks = (C + _BLOCK - 1) // _BLOCK
    for job in numba.prange(B * nblocks):
        bi = job // nblocks
        c0 = (job % nblocks) * _BLOCK
        c1 = min(c0 + _BLOCK, C)
        # The block's state in private copies and each step's rows as 1-D views: LLVM can then
        # tell the arrays apart and vectorizes the loop over channels (exp included: _exp32).
        aa, bb, pp = a[bi, c0:c1].copy(), b[bi, c0:c1].copy(), p[bi, c0:c1].copy()
        uu, ww = u[c0:c1], w[c0:c1]
        for t in range(T):
            kt, vt, ot = k[bi, t, c0:c1], v[bi, t, c0:c1], out[bi, t, c0:c1]
            for c in range(c1 - c0):
                ot[c], aa[c], bb[c], pp[c] = wkv_step(aa[c], bb[c], pp[c], uu[c], ww[c], kt[c], vt[c])
        # Written back by a loop: a slice assignment would compile Numba's message for a shape
        # mismatch (string formatting: ~3 s of the first run).
        for c in range(c1 - c0):
            a[bi, c0 + c], b[bi, c0 + c], p[bi, c0 + c] = aa[c], bb[c], pp[c]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _wkv_kernel_parallel(w, u, k, v, a, b, p, out):  # _wkv_kernel with the blocks over the cores
    _wkv_kernel(w, u, k, v, a, b, p, out)


# Two builds of the same loop: called from Python, `_wkv_kernel` runs on one core (prange is
# range); inlined into `_wkv_kernel_parallel`, the prange is a parallel loop. Threads pay off only
# when there is enough work per call (a prompt); a few hundred channels run faster on one core,
# and on a loaded machine waking idle threads for them costs milliseconds. Two functions, not
# two njit() of one: Numba's cache is keyed by the function, so those served one build for both.
# error_model="numpy": a float division needs no zero check (Python's rules would raise), which
# lets the loop over channels vectorize; the denominators here are >= 1 anyway.
PARALLEL_MIN_WORK = 1 << 16  # B * T * C steps


def wkv_forward(w, u, k, v, state=None):
    """The model's WKV: Numba, in k's dtype (float32 or float64).  Shapes as `wkv_reference`.

    `state` (a, b, p) is read, not modified; the new state is returned."""
    dtype = k.dtype
    B, T, C = k.shape
    if state is None:
        a, b, p = empty_wkv_state(B, C, dtype)
    else:
        a, b, p = (np.array(s, dtype, order="C") for s in state)  # copies: updated in place below
    out = np.empty((B, T, C), dtype)
    kernel = _wkv_kernel_parallel if B * T * C >= PARALLEL_MIN_WORK else _wkv_kernel
    kernel(np.ascontiguousarray(w, dtype), np.ascontiguousarray(u, dtype),
                np.ascontiguousarray(k), np.ascontiguousarray(v, dtype), a, b, p, out)
    return out, (a, b, p)


@numba.njit(cache=True)
def norm_and_mix(x, last, weight, bias, eps, mixes):  # x (B, T, H), last (B, H), mixes (K, H)
    """xn = layer_norm(x) (B, T, H), and for each of the K mixes m the token-shift blend
    xn * m + prev * (1 - m) as (K, B*T, H), prev being xn one token earlier (last at t = 0).
    Both paths use it: model.run_block for a prompt, decode's layer for a token (T = 1). One
    compiled pass instead of a dozen NumPy temporaries; statistics in float64. Serial on purpose:
    idle OpenMP threads of a parallel region spin for milliseconds and slowed the BLAS call that
    follows (measured ~20% of a 256-token prompt)."""
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
