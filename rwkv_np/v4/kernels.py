"""The Numba code of RWKV-4: the WKV kernel for prompts, its one-token step, and the layer
norm + token-shift pass both the prompt path (model.py) and token mode (decode.py) run.

`wkv_forward` computes wkv.wkv_reference's recurrence (float32 or float64), parallel over
batch x channel blocks, sequential over time; tests hold it to the reference.
"""
from __future__ import annotations

import numba
import numpy as np

from ..exp import exp_nonpositive as _exp_nonpositive  # e^x for x <= 0: a vectorizable float32 exp
from ..norm_stats import mean_inv_std
from ..pointwise import PARALLEL_MIN_ELEMENTS
from .wkv import empty_wkv_state


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


@numba.njit(inline="always")
def _norm_and_mix(x, last, weight, bias, eps, mixes):  # x (B, T, H), last (B, H), mixes (K, H)
    """xn = layer_norm(x) (B, T, H), and for each of the K mixes m the token-shift blend
    xn * m + prev * (1 - m) as (K, B*T, H), prev being xn one token earlier (last at t = 0).
    Both paths use it: model.run_block for a prompt (`norm_and_mix_rows`, the rows over the
    cores), decode's layer for a token (`norm_and_mix`, one core: a parallel region would wake
    threads for one row). One compiled pass instead of a dozen NumPy temporaries; statistics in
    float64. No sum crosses a row, so both builds give the same bits. (It was serial for prompts
    too while OpenBLAS's own threads ran the products: OpenMP threads spinning after a parallel
    region slowed them ~20%. Products now run on rwkv_np's pool and libgomp spins briefly:
    threads.py.)"""
    B, T, H = x.shape
    xn = np.empty_like(x)
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        mean, inv = mean_inv_std(x[b, t], eps)
        for j in range(H):
            xn[b, t, j] = (x[b, t, j] - mean) * inv * weight[j] + bias[j]
    out = np.empty((mixes.shape[0], B * T, H), x.dtype)
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        prev = last[b] if t == 0 else xn[b, t - 1]
        for k in range(mixes.shape[0]):
            for j in range(H):
                out[k, bt, j] = prev[j] + (xn[b, t, j] - prev[j]) * mixes[k, j]
    return xn, out


@numba.njit(cache=True)
def norm_and_mix(x, last, weight, bias, eps, mixes):  # one core: token mode's few rows
    return _norm_and_mix(x, last, weight, bias, eps, mixes)


@numba.njit(parallel=True, cache=True)
def _norm_and_mix_parallel(x, last, weight, bias, eps, mixes):  # the rows over the cores
    return _norm_and_mix(x, last, weight, bias, eps, mixes)


def norm_and_mix_rows(x, last, weight, bias, eps, mixes):  # prompts: x (B, T, H) -> as norm_and_mix
    """norm_and_mix with the rows over the cores from pointwise.PARALLEL_MIN_ELEMENTS elements (a
    small model's prompts keep the one-core build: the parallel one costs seconds to compile)."""
    big = x.size >= PARALLEL_MIN_ELEMENTS
    return (_norm_and_mix_parallel if big else norm_and_mix)(x, last, weight, bias, eps, mixes)
