"""The batched dot products of weight rows with several rows of x, shared by linear.py's
kernels and linear_int4.py's (both widen a row of any storage into a float32 buffer first):
`dot_rows` for one weight row, `dot_rows4` for four (`dot_rows2`, two, is its AVX2 form)."""
import numpy as np
from numba import njit

from .llvm_vectors import cpu_has

# A 4 x 4 tile's 16 vector accumulators and 8 loads fit AVX-512's 32 registers; in AVX2's 16 the
# tile spills, and two 2 x 4 tiles are faster (Zen 3, one core, N = 8, in cache: 17 -> 25 G
# multiply-adds/s). Numba compiles for this CPU, so the choice is this CPU's.
WIDE = cpu_has("avx512f")


@njit(fastmath=True)  # a call, not inlined: inlined at its five call sites it cost ~18 s of
def dot_rows(w, x, y, i):  # the first run's compile, for the same speed (measured)
    """y[:, i] = x @ w for w (in,) weight row i, x (N, in), y (N, out). Eight rows of x per pass,
    so each load of w[j] feeds eight multiply-adds (measured ~15% faster than four rows, or two
    weight rows by four), then four, then one at a time."""
    n, N = 0, x.shape[0]
    while n + 8 <= N:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for j in range(w.shape[0]):
            p = w[j]
            a0 += p * x[n, j]
            a1 += p * x[n + 1, j]
            a2 += p * x[n + 2, j]
            a3 += p * x[n + 3, j]
            a4 += p * x[n + 4, j]
            a5 += p * x[n + 5, j]
            a6 += p * x[n + 6, j]
            a7 += p * x[n + 7, j]
        y[n, i], y[n + 1, i], y[n + 2, i], y[n + 3, i] = a0, a1, a2, a3
        y[n + 4, i], y[n + 5, i], y[n + 6, i], y[n + 7, i] = a4, a5, a6, a7
        n += 8
    while n + 4 <= N:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for j in range(w.shape[0]):
            p = w[j]
            a0 += p * x[n, j]
            a1 += p * x[n + 1, j]
            a2 += p * x[n + 2, j]
            a3 += p * x[n + 3, j]
        y[n, i], y[n + 1, i], y[n + 2, i], y[n + 3, i] = a0, a1, a2, a3
        n += 4
    while n < N:
        acc = np.float32(0.0)
        for j in range(w.shape[0]):
            acc += w[j] * x[n, j]
        y[n, i] = acc
        n += 1


@njit(fastmath=True)
def dot_rows4(W, r, x, y, i):
    """y[:, i:i+4] = x @ W[r:r+4].T for W (>= r + 4, in) four weight rows (float32, e.g. widened
    into a buffer), x (N, in), y (N, out). A 4 x 4 tile per pass: each step of j loads four of
    W and four of x for sixteen multiply-adds, where `dot_rows` loads nine for eight (x reloaded
    for every weight row), so batched decode stops waiting on loads. One core, W cached, N = 8:
    in = 768 27 -> 48, in = 3072 13 -> 55 G multiply-adds/s. Rows of x left over (N % 4) take
    four weight rows by one."""
    if not WIDE:
        dot_rows2(W, r, x, y, i)
        dot_rows2(W, r + 2, x, y, i + 2)
        return
    n, N = 0, x.shape[0]
    while n + 4 <= N:
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
        c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = np.float32(0.0)
        for j in range(W.shape[1]):
            w0, w1, w2, w3 = W[r, j], W[r + 1, j], W[r + 2, j], W[r + 3, j]
            x0, x1, x2, x3 = x[n, j], x[n + 1, j], x[n + 2, j], x[n + 3, j]
            a0 += w0 * x0; a1 += w0 * x1; a2 += w0 * x2; a3 += w0 * x3
            b0 += w1 * x0; b1 += w1 * x1; b2 += w1 * x2; b3 += w1 * x3
            c0 += w2 * x0; c1 += w2 * x1; c2 += w2 * x2; c3 += w2 * x3
            d0 += w3 * x0; d1 += w3 * x1; d2 += w3 * x2; d3 += w3 * x3
        y[n, i], y[n + 1, i], y[n + 2, i], y[n + 3, i] = a0, a1, a2, a3
        y[n, i + 1], y[n + 1, i + 1], y[n + 2, i + 1], y[n + 3, i + 1] = b0, b1, b2, b3
        y[n, i + 2], y[n + 1, i + 2], y[n + 2, i + 2], y[n + 3, i + 2] = c0, c1, c2, c3
        y[n, i + 3], y[n + 1, i + 3], y[n + 2, i + 3], y[n + 3, i + 3] = d0, d1, d2, d3
        n += 4
    while n < N:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for j in range(W.shape[1]):
            xj = x[n, j]
            a0 += W[r, j] * xj
            a1 += W[r + 1, j] * xj
            a2 += W[r + 2, j] * xj
            a3 += W[r + 3, j] * xj
        y[n, i], y[n, i + 1], y[n, i + 2], y[n, i + 3] = a0, a1, a2, a3
        n += 1


@njit(fastmath=True)
def dot_rows2(W, r, x, y, i):
    """y[:, i:i+2] = x @ W[r:r+2].T: `dot_rows4`'s tile for AVX2, two weight rows by four rows
    of x (eight accumulators), then the rows of x left over one at a time."""
    n, N = 0, x.shape[0]
    while n + 4 <= N:
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
        for j in range(W.shape[1]):
            w0, w1 = W[r, j], W[r + 1, j]
            x0, x1, x2, x3 = x[n, j], x[n + 1, j], x[n + 2, j], x[n + 3, j]
            a0 += w0 * x0; a1 += w0 * x1; a2 += w0 * x2; a3 += w0 * x3
            b0 += w1 * x0; b1 += w1 * x1; b2 += w1 * x2; b3 += w1 * x3
        y[n, i], y[n + 1, i], y[n + 2, i], y[n + 3, i] = a0, a1, a2, a3
        y[n, i + 1], y[n + 1, i + 1], y[n + 2, i + 1], y[n + 3, i + 1] = b0, b1, b2, b3
        n += 4
    while n < N:
        a0 = b0 = np.float32(0.0)
        for j in range(W.shape[1]):
            xj = x[n, j]
            a0 += W[r, j] * xj
            b0 += W[r + 1, j] * xj
        y[n, i], y[n, i + 1] = a0, b0
        n += 1
