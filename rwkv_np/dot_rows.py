"""The batched dot product of one weight row with several rows of x, shared by linear.py's
kernels and linear_int4.py's (both widen a row of any storage into a float32 buffer first)."""
import numpy as np
from numba import njit


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
