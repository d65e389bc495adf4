"""The statistics of every layer norm and group norm in rwkv_np's compiled kernels.

    mean = Σ_j x_j / n,     inv = 1 / sqrt(Σ_j (x_j - mean)^2 / n + eps)       (both float64)

A sum written as one chain (`s += x[j]`) waits for each addition before the next: four cycles a
term, whatever the vector width, since without fastmath LLVM must keep the written order. Here
each sum runs in eight independent chains (lane j mod 8), added pairwise at the end: a fixed
order, so every build and both paths (prompt and token mode) still give the same bits, at the
adder's throughput. norm_and_mix_rows at T = 256, C = 768 (an RWKV-6 prompt runs twelve of each):
five blends 0.25 -> 0.165 ms, one 0.21 -> 0.12 ms; ln_x (64 channels a head) in the WKV kernels too.
"""
import numba
import numpy as np


@numba.njit(inline="always")
def _sum8(x, shift, square):  # x (n,) -> Σ_j (x_j - shift)^p in float64, p = 2 if square else 1
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n, j = x.shape[0], 0
    while j + 8 <= n:
        d0, d1, d2, d3 = x[j] - shift, x[j + 1] - shift, x[j + 2] - shift, x[j + 3] - shift
        d4, d5, d6, d7 = x[j + 4] - shift, x[j + 5] - shift, x[j + 6] - shift, x[j + 7] - shift
        if square:
            d0, d1, d2, d3, d4, d5, d6, d7 = d0 * d0, d1 * d1, d2 * d2, d3 * d3, d4 * d4, d5 * d5, d6 * d6, d7 * d7
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        s4 += d4
        s5 += d5
        s6 += d6
        s7 += d7
        j += 8
    while j < n:
        d = x[j] - shift
        s0 += d * d if square else d
        j += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(inline="always")
def mean_inv_std(x, eps):  # x (n,) float32 or float64 -> (mean, 1 / sqrt(var + eps)), float64
    """A row's layer-norm statistics (the biased variance, as torch's layer_norm and group_norm)."""
    n = x.shape[0]
    mean = _sum8(x, 0.0, False) / n
    return mean, 1.0 / np.sqrt(_sum8(x, mean, True) / n + eps)
