"""How a weight matrix is kept in memory, chosen once at load time by `prepare_weight`.

  "float32" / "float64"  a plain C-contiguous ndarray (out, in)
  "float16"              a plain np.float16 ndarray (out, in)
  "bfloat16"             Bfloat16: the upper 16 bits of each float32, as uint16 (numpy has no
                         bfloat16); widening is a 16-bit left shift
  "int8"                 Int8Weight: W[i, j] ~= q[i, j] * row_scale[i] * col_scale[j]
  "int4"                 Int4Weight (storage_int4.py): 4-bit values in groups of 32 along a row,
                         a float16 scale and minimum per group; rows of other lengths stay int8
  "int5"                 the same with 5-bit values (6 bits a weight, as rwkv.cpp's Q5_1)

The kernels of linear.py take any of them in one form, `packed(W)`: a tuple (array, kind,
row_scale) that Numba compiles a version of per array dtype, and widen elements to float32 in
registers with the functions at the end of this file.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from .errors import InputError, ModelFileError
from .storage_int4 import GROUP, Int4Weight, quantize_int4

STORAGES = ("float32", "float64", "float16", "bfloat16", "int8", "int4", "int5")

COMPUTE_DTYPES = ("float32", "float64")  # the precisions the models compute in


def compute_dtype(dtype) -> np.dtype:
    """The model's compute dtype from what a user passes: "float32", np.float64, np.dtype("f4")...
    Anything but float32 and float64 is an InputError."""
    try:
        d = np.dtype(dtype)
    except (TypeError, ValueError):
        d = None
    if dtype is None or d is None or d.name not in COMPUTE_DTYPES:
        raise InputError(f"dtype: expected one of {list(COMPUTE_DTYPES)}, got {dtype!r} (a name or a NumPy dtype)")
    return np.dtype(d.name)  # native byte order


FLOAT, F16, BF16, I8 = 0, 1, 2, 3  # kind (I4 = 4, I5 = 5: storage_int4.py)
NO_SCALE = np.ones(0, np.float32)


class Bfloat16(np.ndarray):
    """bfloat16 values kept as their raw bits: a uint16 array (NumPy has no bfloat16) whose
    float32 value is bits << 16. The one bfloat16 type of rwkv_np: BF16 tensors read from a file
    and matrices stored as bfloat16 alike (`Bfloat16(bits)` views uint16 bits as one)."""
    storage = "bfloat16"

    def __new__(cls, bits: np.ndarray):  # (...) uint16
        return np.ascontiguousarray(bits, dtype=np.uint16).view(cls)

    def to_float32(self) -> np.ndarray:  # -> same shape, float32
        return bf16_to_float32(self)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:  # uint16 bits (any shape) -> float32
    """A bfloat16 is the top half of a float32's bits."""
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:  # float32 (any shape) -> uint16 bits
    """The one float32 -> bfloat16 rounding: to nearest, ties to even, as torch's .to(bfloat16).

    Add 0x7FFF plus the lowest kept bit, then drop the low 16 bits: a carry out of the mantissa
    bumps the exponent, so the largest finite values round to inf as they should. A NaN keeps its
    sign and top payload bits with the quiet bit set: the carry could otherwise turn a NaN into
    inf or, through the sign bit, into zero."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(u.view(np.float32)), (u >> 16) | np.uint32(0x40), rounded).astype(np.uint16)


def as_float(x, dtype) -> np.ndarray:  # any stored tensor -> ndarray of `dtype`
    """A tensor as float32 or float64; float32 data asked as float32 is not copied."""
    if isinstance(x, (Int8Weight, Int4Weight, Bfloat16)):
        x = x.to_float32()
    if not np.issubdtype(x.dtype, np.floating):
        raise ModelFileError(f"tensor of dtype {x.dtype} where a floating-point weight is expected")
    return x if x.dtype == dtype else x.astype(dtype)


class Int8Weight:
    """Symmetric int8 quantization: W[i, j] ~= q[i, j] * row_scale[i] * col_scale[j].

    `col_scale` is None unless asked for. The matrix product folds it into x, so
    x @ W.T = ((x * col_scale) @ q.T) * row_scale.
    """
    storage = "int8"
    dtype = np.dtype(np.int8)  # of the stored values, for code that lists a state dict's dtypes

    def __init__(self, q: np.ndarray, row_scale: np.ndarray, col_scale=None):
        # Contiguous int8 / float32 arrays (e.g. read-only views of a mapped file) are not copied.
        self.q = np.ascontiguousarray(q, dtype=np.int8)                       # (out, in)
        self.row_scale = np.ascontiguousarray(row_scale, dtype=np.float32)    # (out,)
        self.col_scale = (None if col_scale is None                           # (in,) or None
                          else np.ascontiguousarray(col_scale, dtype=np.float32))
        self.shape = self.q.shape
        self.nbytes = self.q.nbytes + self.row_scale.nbytes + (
            0 if self.col_scale is None else self.col_scale.nbytes)

    def to_float32(self) -> np.ndarray:  # -> (out, in) float32, the matrix the kernels multiply by
        w = rows_as_float((self.q, I8, self.row_scale), 0, self.shape[0])
        return w if self.col_scale is None else w * self.col_scale[None, :]

    def __repr__(self):
        cols = "" if self.col_scale is None else ", col_scale"
        return f"Int8Weight(shape={self.shape}{cols})"


def prepare_weight(W: np.ndarray, storage: str = "float32", col_scales: bool = False):
    """Convert a float weight (out, in) (or an embedding (V, H)) to its storage, once, at load.

    float32/float64/float16 give a contiguous ndarray; bfloat16 rounds to nearest-even (as
    torch's .to(torch.bfloat16)); int8 uses per-row scales max|W[i]|/127, and with
    col_scales=True first divides each column by its max |W[:, j]| (helps outlier columns);
    int4 / int5 is storage_int4.quantize_int4, for rows that are whole groups of 32 (else int8).
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
        return Bfloat16(float32_to_bf16(W))
    if storage in ("int4", "int5") and W.shape[1] % GROUP == 0 and not col_scales:
        return quantize_int4(W, int(storage[3]))
    col_scale = None
    if col_scales:
        col_scale = np.abs(W).max(axis=0)
        col_scale[col_scale == 0] = 1.0
        W = W / col_scale[None, :]
    row_scale = np.abs(W).max(axis=1) / np.float32(127.0)
    row_scale[row_scale == 0] = 1.0
    q = np.clip(np.rint(W / row_scale[:, None]), -127, 127).astype(np.int8)
    return Int8Weight(q, row_scale, col_scale)


EDGE_STORAGE = {"int4": "int8", "int5": "int8"}  # the embedding and the head of an int4 (int5) model stay int8: one
# embedding row is read per token, so 4 bits buy no speed there, and 4 bits cost most on these two
# (demo model, KL to float32 with only that matrix int4: embedding 1.5e-3, head 1.8e-3; every
# layer matrix at once 2.8e-3). The int8 head is 18% more bytes per 169M token (96 vs 81 MB).
# rwkv.cpp's Q5_1 files keep both in float16.


def storage_of(dtype, weights: str | None, edge: bool = False):
    """The function that puts a matrix (out, in) into memory for `linear`; edge=True for the
    embedding and the head (EDGE_STORAGE).

    weights=None keeps each matrix as it is on disk, memory-mapped, not copied: float32, float16,
    bfloat16, int8, int4 or int5 (`rwkv-np quantize` files; a float64 model widens 16-bit and quantized
    matrices to float64); "float32", "float16", "bfloat16", "int8", "int4" or "int5" stores every matrix
    that way (16-bit and quantized ones are widened inside linear's kernels: half / a quarter /
    about a sixth of the bytes per token; a quantized file asked for its own storage stays
    mapped, asked for another is dequantized first)."""
    if weights is not None and weights not in STORAGES:
        raise InputError(f"weights: expected one of {', '.join(STORAGES)}, got {weights!r}")
    if edge:
        weights = EDGE_STORAGE.get(weights, weights)

    def store(x):
        if isinstance(x, (Int8Weight, Int4Weight)):
            if weights == x.storage or (weights is None and dtype == np.float32):
                return x
            if weights in ("int4", "int5") and x.shape[1] % GROUP:  # int4's (int5's) int8 rows
                return x
            x = x.to_float32()
        if weights is None and dtype == np.float32 and (x.dtype == np.float16 or isinstance(x, Bfloat16)):
            return store_as(x, "float16" if x.dtype == np.float16 else "bfloat16")
        if weights is None or weights == dtype.name:
            return as_float(x, dtype)
        return store_as(x, weights)

    def store_as(x, weights):
        if weights == "float16" and x.dtype == np.float16:
            return x                                       # already 16-bit on disk: no copy
        if weights == "bfloat16" and isinstance(x, Bfloat16):
            return x
        return prepare_weight(as_float(x, np.float32), weights)
    return store


def dequantize(W) -> np.ndarray:  # -> (out, in) float ndarray: the matrix `linear` multiplies by
    """The float matrix a stored weight stands for (float32 unless W is a float64 ndarray)."""
    if isinstance(W, (Bfloat16, Int8Weight, Int4Weight)):
        return W.to_float32()
    return W if W.dtype == np.float64 else W.astype(np.float32)


def rows_as_float(W, r0: int, r1: int) -> np.ndarray:  # W (array, kind, row_scale) -> (r1-r0, in)
    """Rows r0:r1 of a stored weight as the float32 (or float64) matrix they stand for (int4:
    linear_int4.widen_rows)."""
    A, kind, scale = W
    if kind == FLOAT:
        return A[r0:r1]
    if kind == F16:
        return A[r0:r1].view(np.float16).astype(np.float32)
    if kind == BF16:
        return (A[r0:r1].view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return A[r0:r1].astype(np.float32) * scale[r0:r1, None]


def packed(W):  # stored weight -> ((array, kind, row_scale), col_scale or None)
    """The tuple form of a stored weight that the kernels take, and its column scales."""
    if isinstance(W, np.ndarray) and W.dtype.kind == "f":
        if W.dtype == np.float16:
            return (W.view(np.uint16), F16, NO_SCALE), None
        return (np.ascontiguousarray(W), FLOAT, NO_SCALE), None
    if isinstance(W, Bfloat16):  # as uint32 pairs when the rows have an even length
        bits = W.view(np.ndarray)
        return (bits.view(np.uint32) if W.shape[1] % 2 == 0 else bits, BF16, NO_SCALE), None
    if isinstance(W, Int8Weight):
        return (W.q, I8, W.row_scale), W.col_scale
    if isinstance(W, Int4Weight):  # (q, I4 or I5, [d, m] bits)
        return W.packed(), None
    raise InputError(f"linear: unsupported weight {type(W).__name__} "
                     f"{getattr(W, 'dtype', '')}; use prepare_weight")


def embedding_rows(E, ids, dtype=np.float32) -> np.ndarray:  # E stored (V, H), ids (n,) -> (n, H)
    """Rows `ids` of an embedding matrix in any storage, widened to `dtype`."""
    ids = np.asarray(ids)
    V = E.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids[(ids < 0) | (ids >= V)].flat[0]
        raise InputError(f"token id {bad} is outside the vocabulary [0, {V})")
    if isinstance(E, Bfloat16):
        return bf16_to_float32(E.view(np.ndarray)[ids]).astype(dtype, copy=False)
    if isinstance(E, Int8Weight):
        rows = E.q[ids].astype(dtype) * E.row_scale[ids, None]
        return rows if E.col_scale is None else rows * E.col_scale
    if isinstance(E, Int4Weight):
        return np.concatenate([E.rows(i, i + 1) for i in ids.reshape(-1)] or [np.empty((0, E.shape[1]))]
                              ).reshape(*ids.shape, E.shape[1]).astype(dtype, copy=False)
    return np.asarray(E[ids], dtype=dtype)


def embed(E, input_ids, dtype) -> np.ndarray:  # E stored (V, C), input_ids (B, T) or (T,) -> (B, T, C)
    """The embeddings of a caller's token ids, which are checked first: one clear InputError for
    ragged, empty, non-integer or out-of-vocabulary ids."""
    try:
        ids = np.asarray(input_ids)
    except (ValueError, TypeError) as e:  # ragged nested lists...
        raise InputError(f"input_ids: not an array of token ids ({e})") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.size == 0:
        raise InputError(f"input_ids: expected a non-empty (B, T) or (T,) array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        if not (np.issubdtype(ids.dtype, np.floating) and np.all(np.isfinite(ids))
                and np.all(ids == np.round(ids))):
            raise InputError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
    V = E.shape[0]
    if ids.min() < 0 or ids.max() >= V:
        bad = ids[(ids < 0) | (ids >= V)].flat[0]
        raise InputError(f"input_ids: token id {bad} is outside the vocabulary [0, {V})")
    return embedding_rows(E, ids.reshape(-1), dtype).reshape(*ids.shape, -1)


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


# One widening function per storage, passed to the loops of linear.py (Numba compiles a copy
# of the loop for each, so the conversion is inlined and vectorized).
@njit(inline="always")
def _as_is(v):  # float32 / float64 storage
    return v


@njit(inline="always")
def _f16(bits):  # uint16 float16 bits -> float32
    return _f16_to_f32(bits)


@njit(inline="always")
def _bf16(bits):  # uint16 -> float32: bfloat16 is the upper half of a float32
    return _bits_to_f32(np.uint32(bits) << np.uint32(16))


@njit(inline="always")
def _bf16_lo(pair):  # uint32 holding two bfloat16 -> the first (low half) as float32
    return _bits_to_f32(pair << np.uint32(16))


@njit(inline="always")
def _bf16_hi(pair):  # -> the second (high half) as float32
    return _bits_to_f32(pair & np.uint32(0xFFFF0000))


@njit(inline="always")
def _i8(q):  # int8 -> float32 (the row scale is applied to the finished dot product)
    return np.float32(q)
