"""The channel mix's pointwise activations, compiled, in place: what the RWKV-4, -5 and -6 prompt
paths run between their matrix products (token mode does the same inside decode.py's phases).

    relu_square   relu(x)^2, the key activation
    sigmoid_mul   sigmoid(r) v, the receptance gate (also RWKV-4's time-mix gate on the WKV)

Each one pass over the rows with no temporaries, split between the cores from
PARALLEL_MIN_ELEMENTS: NumPy's version of the two (np.maximum, *=, 1 / (1 + exp(-r)), *) made five
passes and three (T, F) temporaries on one core. exp.sigmoid goes through e^{-|r|} only (no overflow), < 1 ulp from NumPy's.
"""
import numba

from .exp import sigmoid

PARALLEL_MIN_ELEMENTS = 1 << 16  # smaller arrays (a small model's prompt) take the one-core build:
# the parallel ones cost seconds to compile on first use (the README's main job: 15 -> 21 s)


@numba.njit(inline="always")
def _relu_square(x):  # x (rows, F) in place
    for n in numba.prange(x.shape[0]):
        for j in range(x.shape[1]):
            z = x[n, j]
            x[n, j] = 0 if z < 0 else z * z      # a NaN stays NaN, as np.maximum


@numba.njit(inline="always")
def _sigmoid_mul(rr, vv):  # rr, vv (rows, C) -> vv in place
    for n in numba.prange(vv.shape[0]):
        for j in range(vv.shape[1]):
            vv[n, j] = sigmoid(rr[n, j]) * vv[n, j]


# One body each, two builds (as v7/kernels.norm_and_mix): in the one-core build prange is range.
# Four functions, not njit() twice of one: Numba's disk cache is keyed by the function.
@numba.njit(cache=True)
def _relu_square_1(x):
    _relu_square(x)


@numba.njit(cache=True)
def _sigmoid_mul_1(rr, vv):
    _sigmoid_mul(rr, vv)


@numba.njit(parallel=True, cache=True)
def _relu_square_n(x):
    _relu_square(x)


@numba.njit(parallel=True, cache=True)
def _sigmoid_mul_n(rr, vv):
    _sigmoid_mul(rr, vv)


def relu_square(x):  # x (rows, F) in place
    """relu(x)^2, the channel mix's key activation."""
    (_relu_square_n if x.size >= PARALLEL_MIN_ELEMENTS else _relu_square_1)(x)


def sigmoid_mul(rr, vv):  # rr, vv (rows, C) -> vv in place
    """sigmoid(rr) vv, the receptance gate (exp.sigmoid: 1 / (1 + e^{-rr}), through e^{-|rr|} only)."""
    (_sigmoid_mul_n if vv.size >= PARALLEL_MIN_ELEMENTS else _sigmoid_mul_1)(rr, vv)
