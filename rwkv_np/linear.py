"""Every projection of rwkv_np, y = x @ W.T, for each way a weight can be stored in memory.

Why this file exists: one decoded token reads every weight once (0.52 GB for the 169M model in
float32), so decode speed is memory bandwidth; a prompt is a chain of GEMMs, so prefill speed is
BLAS. `linear` picks the kernel by the number of rows N of x:

  N == 1        a Numba matrix-vector kernel: all cores stream W row by row, one vectorized
                dot product per row. 16-bit and int8 rows are widened in registers, never
                written back, so they read half / a quarter of the float32 bytes (on a Zen 1
                core the widening instructions, not memory, then set the pace).
  2 <= N <= 16  (batched decode) a matrix-matrix kernel that reads each weight row once and
                uses it for every row of x while it sits in L1.
  N > 16        BLAS GEMM (numpy's OpenBLAS); 16-bit and int8 weights are widened to float32
                a block of rows at a time, so no float32 copy of the whole matrix is made.

Storages, chosen once at load time by `prepare_weight`:
  "float32" / "float64"  a plain C-contiguous ndarray (out, in)
  "float16"              a plain np.float16 ndarray (out, in)
  "bfloat16"             Bf16Weight: the upper 16 bits of each float32, as uint16 (numpy has no
                         bfloat16); widening is a 16-bit left shift
  "int8"                 Int8Weight: W[i, j] ~= q[i, j] * row_scale[i] * col_scale[j]

Dot products use fastmath (they reassociate the sum so it vectorizes); nothing here relies on
-inf / -1e38 sentinels, so that is safe. Numba's np.dot would need scipy: kernels are plain loops.
"""
import ctypes
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.extending import intrinsic

from .errors import InputError

STORAGES = ("float32", "float64", "float16", "bfloat16", "int8")
SMALL_N = 16  # up to this many rows of x use the weight-row-reuse kernel (it beat OpenBLAS at
#               N = 2..16 on the 169M shapes, 1 and 2 threads), above: BLAS
_BLOCK_BYTES = 1 << 20  # float32 bytes of W widened at a time before a GEMM (fits in L2/L3)


# ---------------------------------------------------------------- weight containers

class Bf16Weight:
    """A bfloat16 matrix kept as its raw bits: `bits` (out, in) uint16, value = bits << 16."""
    storage = "bfloat16"

    def __init__(self, bits: np.ndarray):  # (out, in) uint16
        self.bits = np.ascontiguousarray(bits, dtype=np.uint16)
        self.shape = self.bits.shape
        self.nbytes = self.bits.nbytes

    def to_float32(self) -> np.ndarray:  # -> (out, in) float32
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    def __repr__(self):
        return f"Bf16Weight(shape={self.shape})"


class Int8Weight:
    """Symmetric int8 quantization: W[i, j] ~= q[i, j] * row_scale[i] * col_scale[j].

    `col_scale` is None unless asked for. The matrix product folds it into x, so
    x @ W.T = ((x * col_scale) @ q.T) * row_scale.
    """
    storage = "int8"

    def __init__(self, q: np.ndarray, row_scale: np.ndarray, col_scale=None):
        self.q = np.ascontiguousarray(q, dtype=np.int8)                       # (out, in)
        self.row_scale = np.ascontiguousarray(row_scale, dtype=np.float32)    # (out,)
        self.col_scale = (None if col_scale is None                           # (in,) or None
                          else np.ascontiguousarray(col_scale, dtype=np.float32))
        self.shape = self.q.shape
        self.nbytes = self.q.nbytes + self.row_scale.nbytes + (
            0 if self.col_scale is None else self.col_scale.nbytes)

    def to_float32(self) -> np.ndarray:  # -> (out, in) float32, the matrix the kernels multiply by
        w = self.q.astype(np.float32) * self.row_scale[:, None]
        return w if self.col_scale is None else w * self.col_scale[None, :]

    def __repr__(self):
        cols = "" if self.col_scale is None else ", col_scale"
        return f"Int8Weight(shape={self.shape}{cols})"


def prepare_weight(W: np.ndarray, storage: str = "float32", col_scales: bool = False):
    """Convert a float weight (out, in) (or an embedding (V, H)) to its storage, once, at load.

    float32/float64/float16 give a contiguous ndarray; bfloat16 rounds to nearest-even (as
    torch's .to(torch.bfloat16)); int8 uses per-row scales max|W[i]|/127, and with
    col_scales=True first divides each column by its max |W[:, j]| (helps outlier columns).
    """
    if storage not in STORAGES:
        raise InputError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    W = np.asarray(W)
    if W.ndim != 2 or W.dtype.kind != "f":
        raise InputError(f"prepare_weight expects a 2-D float array, got {W.dtype} {W.shape}")
    if storage in ("float32", "float64", "float16"):
        return np.ascontiguousarray(W, dtype=storage)
    W = np.ascontiguousarray(W, dtype=np.float32)
    if storage == "bfloat16":
        u = W.view(np.uint32)
        rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
        keep_nan = np.isnan(W)  # rounding could carry a NaN's payload into inf; keep it quiet NaN
        bits = np.where(keep_nan, (u >> 16) | np.uint32(0x40), rounded).astype(np.uint16)
        return Bf16Weight(bits)
    col_scale = None
    if col_scales:
        col_scale = np.abs(W).max(axis=0)
        col_scale[col_scale == 0] = 1.0
        W = W / col_scale[None, :]
    row_scale = np.abs(W).max(axis=1) / np.float32(127.0)
    row_scale[row_scale == 0] = 1.0
    q = np.clip(np.rint(W / row_scale[:, None]), -127, 127).astype(np.int8)
    return Int8Weight(q, row_scale, col_scale)


def dequantize(W) -> np.ndarray:  # -> (out, in) float ndarray: the matrix `linear` multiplies by
    """The float matrix a stored weight stands for (float32 unless W is a float64 ndarray)."""
    if isinstance(W, (Bf16Weight, Int8Weight)):
        return W.to_float32()
    return W if W.dtype == np.float64 else W.astype(np.float32)


# ---------------------------------------------------------------- element widening (in registers)

@intrinsic
def _f16_to_f32(typingctx, bits):
    """float16 bits (uint16) -> float32: LLVM's fpext, i.e. vcvtph2ps on x86 (F16C)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterpret uint32 bits as float32 (a no-op bitcast, so the loop still vectorizes)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@njit(inline="always")
def _bf16_to_f32(bits):  # uint16 -> float32: bfloat16 is the upper half of a float32
    return _bits_to_f32(np.uint32(bits) << np.uint32(16))


# ---------------------------------------------------------------- decode: N == 1
# One accumulator per weight row, a plain loop over the row: LLVM vectorizes and unrolls it
# (fastmath lets it reorder the sum). prange splits the rows between the cores.

@njit(parallel=True, fastmath=True, cache=True)
def _matvec_float(W, x, y):  # W (out, in) float, x (in,), y (out,)
    for i in prange(W.shape[0]):
        acc = np.float32(0.0)
        for j in range(W.shape[1]):
            acc += W[i, j] * x[j]
        y[i] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_f16(W, x, y):  # W (out, in) uint16 float16 bits, x (in,), y (out,)
    for i in prange(W.shape[0]):
        acc = np.float32(0.0)
        for j in range(W.shape[1]):
            acc += _f16_to_f32(W[i, j]) * x[j]
        y[i] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_bf16(W, x, y):  # W (out, in) uint16 bfloat16 bits, x (in,), y (out,)
    for i in prange(W.shape[0]):
        acc = np.float32(0.0)
        for j in range(W.shape[1]):
            acc += _bf16_to_f32(W[i, j]) * x[j]
        y[i] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _matvec_i8(Q, row_scale, x, y):  # Q (out, in) int8, row_scale (out,), x (in,), y (out,)
    for i in prange(Q.shape[0]):
        acc = np.float32(0.0)
        for j in range(Q.shape[1]):
            acc += np.float32(Q[i, j]) * x[j]
        y[i] = acc * row_scale[i]


# ---------------------------------------------------------------- batched decode: 2 <= N <= SMALL_N
# Each weight row is loaded from memory once and used for all N rows of x while it is in L1;
# four rows of x per pass, so that every load of w[j] feeds four multiply-adds.

_F16, _BF16, _I8 = 1, 2, 3  # `kind` of a packed (non-float) weight


@njit(inline="always")
def _dot_rows(w, x, y, i):  # w (in,) one weight row, x (N, in), y (N, out): y[:, i] = x @ w
    n = 0
    while n + 4 <= x.shape[0]:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for j in range(w.shape[0]):
            a0 += w[j] * x[n, j]
            a1 += w[j] * x[n + 1, j]
            a2 += w[j] * x[n + 2, j]
            a3 += w[j] * x[n + 3, j]
        y[n, i], y[n + 1, i], y[n + 2, i], y[n + 3, i] = a0, a1, a2, a3
        n += 4
    while n < x.shape[0]:
        acc = np.float32(0.0)
        for j in range(w.shape[0]):
            acc += w[j] * x[n, j]
        y[n, i] = acc
        n += 1


@njit(parallel=True, fastmath=True, cache=True)
def _matmat_float(W, x, y):  # W (out, in) float, x (N, in), y (N, out)
    for i in prange(W.shape[0]):
        _dot_rows(W[i], x, y, i)


@njit(inline="always")
def _widen_row(W, kind, i, row_scale, buf):  # W (out, in) packed, buf (in,) float: buf = W[i]
    if kind == _F16:
        for j in range(W.shape[1]):
            buf[j] = _f16_to_f32(W[i, j])
    elif kind == _BF16:
        for j in range(W.shape[1]):
            buf[j] = _bf16_to_f32(W[i, j])
    else:  # int8, row scale folded in
        s = row_scale[i]
        for j in range(W.shape[1]):
            buf[j] = np.float32(W[i, j]) * s


@njit(parallel=True, fastmath=True, cache=True)
def _matmat_packed(W, kind, row_scale, x, y, n_blocks):  # W (out, in) uint16/int8, x (N, in), y (N, out)
    out, n_in = W.shape
    n_blocks = min(out, n_blocks)
    for b in prange(n_blocks):
        buf = np.empty(n_in, np.float32)  # one widened weight row, private to this block
        for i in range(b * out // n_blocks, (b + 1) * out // n_blocks):
            _widen_row(W, kind, i, row_scale, buf)
            _dot_rows(buf, x, y, i)


# ---------------------------------------------------------------- prefill: N > SMALL_N, BLAS

@njit(cache=True)
def _widen_rows(W, kind, row_scale, r0, buf):  # buf (R, in) float = W[r0:r0+R] as floats
    for r in range(buf.shape[0]):
        _widen_row(W, kind, r0 + r, row_scale, buf[r])


def _gemm_packed(x, W, kind, row_scale):  # x (N, in), W (out, in) packed -> (N, out)
    """BLAS on float32 copies of W made a block of rows at a time (no full float32 copy)."""
    out, n_in = W.shape
    rows = max(1, _BLOCK_BYTES // (4 * n_in))
    buf = np.empty((min(rows, out), n_in), x.dtype)
    y = np.empty((x.shape[0], out), x.dtype)
    for r0 in range(0, out, rows):
        block = buf[:min(rows, out - r0)]
        _widen_rows(W, kind, row_scale, r0, block)
        y[:, r0:r0 + len(block)] = x @ block.T
    return y


# ---------------------------------------------------------------- the entry points

def _packed(W):  # stored weight -> (packed array, kind, row_scale, col_scale), or None for floats
    if isinstance(W, np.ndarray):
        if W.dtype == np.float16:
            return W.view(np.uint16), _F16, _NO_SCALE, None
        if W.dtype.kind == "f":
            return None
    elif isinstance(W, Bf16Weight):
        return W.bits, _BF16, _NO_SCALE, None
    elif isinstance(W, Int8Weight):
        return W.q, _I8, W.row_scale, W.col_scale
    raise InputError(f"linear: unsupported weight {type(W).__name__} "
                     f"{getattr(W, 'dtype', '')}; use prepare_weight")


_NO_SCALE = np.ones(0, np.float32)


def linear(x: np.ndarray, W) -> np.ndarray:  # x (N, in), W stored (out, in) -> (N, out)
    """y = x @ W.T in x's dtype (float32 or float64), W as returned by `prepare_weight`."""
    if x.ndim != 2 or x.shape[1] != W.shape[1]:
        raise InputError(f"linear: x of shape {x.shape} does not fit a weight of shape {W.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    x = np.ascontiguousarray(x)
    N = x.shape[0]
    packed = _packed(W)
    if packed is None:  # float32 / float64 ndarray
        W = np.ascontiguousarray(W)
        if N > SMALL_N:
            return (x @ W.T).astype(x.dtype, copy=False)
        y = np.empty((N, W.shape[0]), x.dtype)
        if N == 1:
            _matvec_float(W, x[0], y[0])
        elif N > 0:
            _matmat_float(W, x, y)
        return y
    P, kind, row_scale, col_scale = packed
    if col_scale is not None:
        x = x * col_scale.astype(x.dtype, copy=False)
    if N > SMALL_N:
        return _gemm_packed(x, P, kind, row_scale)
    y = np.empty((N, P.shape[0]), x.dtype)
    if N == 1:
        if kind == _F16:
            _matvec_f16(P, x[0], y[0])
        elif kind == _BF16:
            _matvec_bf16(P, x[0], y[0])
        else:
            _matvec_i8(P, row_scale, x[0], y[0])
    elif N > 0:
        _matmat_packed(P, kind, row_scale, x, y, 16 * numba.get_num_threads())
    return y


def embedding_rows(E, ids, dtype=np.float32) -> np.ndarray:  # E stored (V, H), ids (n,) -> (n, H)
    """Rows `ids` of an embedding matrix in any storage, widened to `dtype`."""
    ids = np.asarray(ids)
    V = E.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids[(ids < 0) | (ids >= V)].flat[0]
        raise InputError(f"token id {bad} is outside the vocabulary [0, {V})")
    if isinstance(E, Bf16Weight):
        return (E.bits[ids].astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)
    if isinstance(E, Int8Weight):
        rows = E.q[ids].astype(dtype) * E.row_scale[ids, None]
        return rows if E.col_scale is None else rows * E.col_scale
    return np.asarray(E[ids], dtype=dtype)


# ---------------------------------------------------------------- threads

def _openblas_setters():  # the set_num_threads functions of every OpenBLAS loaded in this process
    found = []
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return found
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                found.append(getattr(lib, name))
                break
    return found


def set_threads(n: int | None = None) -> int:
    """Use n threads (None: all cores) in the Numba kernels and in numpy's OpenBLAS.

    Returns the number set. Numba cannot go above the NUMBA_NUM_THREADS it started with.
    """
    n = os.cpu_count() or 1 if n is None else int(n)
    if n < 1:
        raise InputError(f"threads must be >= 1, got {n}")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    for setter in _openblas_setters():
        setter(n)
    return n
