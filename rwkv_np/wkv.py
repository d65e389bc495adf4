"""WKV: RWKV-4's time-mixing recurrence, three ways.

Per channel c (all channels are independent), with w = -exp(time_decay) < 0 and u = time_first,
the exact recurrence over a sequence of keys k_t and values v_t is

    wkv_t = (N_{t-1} + e^(u + k_t) v_t) / (D_{t-1} + e^(u + k_t))
    N_t   = e^w N_{t-1} + e^(k_t) v_t
    D_t   = e^w D_{t-1} + e^(k_t)

e^(k_t) overflows float32 for k_t > 88, so every engine keeps the state in log-space instead:
(a, b, p) with N = a e^p and D = b e^p, and scales each update by its largest exponent.

1. `wkv_reference`: float64 plain NumPy, step by step: the readable oracle.
2. `wkv_parallel`:  the parallel ("GPT-mode") form, every output of a chunk at once, chunks
                    chained by state; O(T * chunk) work. Proven equal to (1) by tests.
3. `wkv_forward`:   the Numba kernel the model runs (float32 or float64), parallel over
                    batch x channel blocks, sequential over time.

State arrays are (B, C); an empty state is a = b = 0, p = -1e38 (HF's CPU kernel uses -1e38;
exp(-1e38 - anything finite) is exactly 0, so the first step sees no history).
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core.extending import overload

from .storage import _bits_to_f32

EMPTY_MAX = -1e38  # p of an empty state: e^p is exactly 0 in float32 and float64


def empty_wkv_state(batch: int, channels: int, dtype=np.float64):
    """(a, b, p), each (B, C): the state before any token."""
    a = np.zeros((batch, channels), dtype)
    b = np.zeros((batch, channels), dtype)
    p = np.full((batch, channels), EMPTY_MAX, dtype)
    return a, b, p


def wkv_reference(w, u, k, v, state=None):
    """Sequential WKV in float64.  w, u: (C,)  k, v: (B, T, C)  state: (a, b, p) each (B, C) or None.

    Returns wkv (B, T, C) and the new state (a, b, p). Each step, in log-space:

        q  = max(p, u + k_t)                      # largest exponent of the output's two terms
        wkv_t = (e^(p-q) a + e^(u+k_t-q) v_t) / (e^(p-q) b + e^(u+k_t-q))
        q' = max(p + w, k_t)                      # largest exponent of the updated state
        a  = e^(p+w-q') a + e^(k_t-q') v_t;  b = e^(p+w-q') b + e^(k_t-q');  p = q'
    """
    w, u, k, v = (np.asarray(x, np.float64) for x in (w, u, k, v))
    B, T, C = k.shape
    a, b, p = empty_wkv_state(B, C) if state is None else (np.array(s, np.float64) for s in state)
    out = np.empty((B, T, C))
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        q = np.maximum(p, u + kt)
        e1, e2 = np.exp(p - q), np.exp(u + kt - q)
        out[:, t] = (e1 * a + e2 * vt) / (e1 * b + e2)
        q = np.maximum(p + w, kt)
        e1, e2 = np.exp(p + w - q), np.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    return out, (a, b, p)


def wkv_parallel(w, u, k, v, state=None, chunk: int = 64):
    """Parallel form: all outputs of a chunk as one weighted average.  Shapes as `wkv_reference`.

    Unrolling the recurrence, output t of a chunk (0-based) averages the incoming state and the
    values v_i with log-weights
        p0 + t w          on the incoming state (a0, b0)
        (t-1-i) w + k_i   on v_i for i < t
        u + k_t           on v_t
    (none for i > t). Subtracting each row's max before exponentiating keeps every term <= 1.
    The state after a chunk of length T has log-weights p0 + T w and (T-1-i) w + k_i, so its
    p_T = max of those: the same p the recurrence produces.
    """
    w, u, k, v = (np.asarray(x, np.float64) for x in (w, u, k, v))
    B, T, C = k.shape
    a, b, p = empty_wkv_state(B, C) if state is None else (np.array(s, np.float64) for s in state)
    out = np.empty((B, T, C))
    for start in range(0, T, chunk):
        kc, vc = k[:, start:start + chunk], v[:, start:start + chunk]  # (B, n, C)
        n = kc.shape[1]
        t = np.arange(n)
        lag = (t[:, None] - 1 - t[None, :]).astype(np.float64)        # (n, n): t-1-i
        # logw[b, t, i, c]: weight of v_i in output t; -inf above the diagonal (future tokens).
        logw = np.where((t[:, None] > t[None, :])[None, :, :, None],
                        lag[None, :, :, None] * w + kc[:, None, :, :], -np.inf)
        diag = u + kc                                                    # (B, n, C)
        logw[:, t, t, :] = diag
        logs = p[:, None, :] + t[None, :, None] * w                     # (B, n, C): weight of the state
        m = np.maximum(logw.max(axis=2), logs)                          # (B, n, C): row max
        e = np.exp(logw - m[:, :, None, :])                             # (B, n, n, C)
        es = np.exp(logs - m)
        num = es * a[:, None, :] + np.einsum("btic,bic->btc", e, vc)
        den = es * b[:, None, :] + e.sum(axis=2)
        out[:, start:start + n] = num / den
        # State after the chunk.
        lw = (n - 1 - t)[None, :, None] * w + kc                         # (B, n, C)
        ls = p + n * w                                                   # (B, C)
        q = np.maximum(lw.max(axis=1), ls)
        e, es = np.exp(lw - q[:, None, :]), np.exp(ls - q)
        a = es * a + (e * vc).sum(axis=1)
        b = es * b + e.sum(axis=1)
        p = q
    return out, (a, b, p)


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
                e1, e2 = step_scales(pp[c], uu[c] + kt[c])
                ot[c] = (e1 * aa[c] + e2 * vt[c]) / (e1 * bb[c] + e2)
                pw = pp[c] + ww[c]
                e1, e2 = step_scales(pw, kt[c])
                aa[c] = e1 * aa[c] + e2 * vt[c]
                bb[c] = e1 * bb[c] + e2
                pp[c] = max(pw, kt[c])
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
