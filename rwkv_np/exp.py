"""e^x for x <= 0 in compiled loops, in the argument's precision: the one exp of rwkv_np's kernels.

Numba compiles np.exp on a float32 to a call of the C library's expf per element, which keeps a
loop from vectorizing (a v7 sigmoid over 256 x 768: 0.84 ms, against 0.20 ms with `exp32` and
0.18 ms for NumPy's). Every exponent the kernels take is <= 0 (log-space WKV steps, decays,
sigmoids written as e^{-|z|}), which is the range `exp32` covers. float64 keeps the C library's
exp, for the golden-output precision. Moved here from RWKV-4's kernels, which use it as before.
"""
import numba
import numpy as np
from numba.core.extending import overload

from .storage import _bits_to_f32


@numba.njit(inline="always")
def exp32(x):  # float32 e^x for x <= 0: < 1 ulp, exactly 0 below -87.34 (e^(-1e38) = 0)
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


def exp_nonpositive(x):  # e^x for x <= 0 in x's precision
    pass


@overload(exp_nonpositive)
def _exp_nonpositive_impl(x):
    if x == numba.types.float32:
        return lambda x: exp32(x)
    return lambda x: np.exp(x)  # float64: the C library's exp, for the golden-output precision


def sigmoid(z):  # 1 / (1 + e^{-z}) in z's precision, through e^{-|z|} only
    """For z >= 0 the usual form; for z < 0 the same number as e^z / (1 + e^z), so the exp never
    sees a positive argument (and never overflows). Branch-free (a select): loops vectorize."""


@overload(sigmoid)
def _sigmoid_impl(z):
    one = np.float32(1.0) if z == numba.types.float32 else 1.0  # no float64 detour for float32

    def impl(z):
        e = exp_nonpositive(-abs(z))
        s = one / (one + e)
        return s if z >= 0 else e * s
    return impl
