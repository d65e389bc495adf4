"""Every projection of rwkv_np, y = x @ W.T, for each way a weight can be stored in memory.

Why this file exists: one decoded token reads every weight once (0.52 GB for the 169M model in
float32), so decode speed is memory bandwidth; a prompt is a chain of GEMMs, so prefill speed is
BLAS. `linear` picks the kernel by the number of rows N of x:

  N == 1        a Numba matrix-vector kernel: all cores stream W row by row, one vectorized
                dot product per row. 16-bit rows are widened in registers, never written back,
                so they read half the float32 bytes; int8 rows are multiplied by x rounded to
                int16 (`activations`) in integer arithmetic, reading a quarter.
  2 <= N <= 16  (batched decode) a matrix-matrix kernel that reads each weight row once and
                uses it for every row of x while it sits in L1.
  N > 16        BLAS GEMM, in gemm.py (numpy's OpenBLAS on one thread per block of W's rows, the
                blocks split between the threads by a pool of ours; packed weights widened to
                float32 a block of rows at a time, so no float32 copy of the whole matrix is made).

Weights come in any storage of storage.py, as `packed` tuples. Products smaller than
PARALLEL_MIN_WEIGHTS (a small model's) run the same kernels on one core.

Dot products use fastmath (they reassociate the sum so it vectorizes); nothing here relies on
-inf / -1e38 sentinels, so that is safe. Numba's np.dot would need scipy: kernels are plain loops.
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import overload

from .dot_rows import dot_rows, dot_rows4
from .dot_tile import tiles, tiles_int8
from .errors import InputError
from .gemm import gemm_tasks, run_tasks
from .linear_int4 import activations_int4, rows_int4
from .llvm_vectors import prefetch
from .storage import F16, _as_is, _bf16, _bf16_hi, _bf16_lo, _bits_to_f32, _f16, _i8, packed

SMALL_N = 16  # up to this many rows of x use the weight-row-reuse kernel (it beat OpenBLAS at
#               N = 2..16 on the 169M shapes, 1 and 2 threads), above: BLAS
PARALLEL_MIN_WEIGHTS = 1 << 17  # smaller products (the demo model's: <= 512 x 128) run on 1 core,
# here and in decode.py: the parallel builds cost ~10 s more to compile on first use (the
# README's main job with an empty cache: 26 -> 16 s), and at this size the second core saves ~20
# us per layer of a token. Same bits either way: each row is one dot product.

ROWS_PER_JOB = 24  # weight rows per parallel job of a batch's token step (every decode.py):
#                    enough to amortize, small to balance, whole tiles of dot_tile (3 or 2 rows)


def job_rows(B, width):  # weight rows per parallel job of a token step of B sequences
    """A batch is compute: ROWS_PER_JOB rows. One sequence is a stream of weights, and each job's
    rows are a run the hardware prefetcher starts afresh (RWKV-4's first phase reads three
    matrices in turn): a matrix of `width` rows makes three jobs a thread (a multiple of 16
    rows; a row's sum is the same in any job). Measured on the
    169M / v7 0.1B shapes (width 768, 2 threads: 128 rows), old and new paired in one process,
    a token against 16 rows: RWKV-4 int8 / bfloat16 / float32 0.89-0.92 / 0.94-0.95 / 0.97x,
    RWKV-7 int8 / bfloat16 0.93-0.95 / 0.93-0.96x, RWKV-6 0.91 / 0.94x; 384 rows (one job a
    thread) lost 3% on int8. Batch of 8 (RWKV-4), with dot_tile's tiles of 2 rows: 16 rows beat 8
    by 10-16% and 48 by 1-9%; with tiles of 3 rows 16 would leave a tile a third full, so 24."""
    if B > 1:
        return ROWS_PER_JOB
    return max(16, width // (3 * numba.get_num_threads()) // 16 * 16)


@njit(inline="always")
def jobs(rows, per):  # number of blocks of `per` rows in a matrix with `rows` rows
    return (rows + per - 1) // per


@njit(inline="always")
def job_span(job, rows, per):  # -> (i0, i1): the rows of block `job` of `per` rows
    return job * per, min((job + 1) * per, rows)


@njit(inline="always")
def block(W, x, y, job, n_in, per):  # W (out, n_in) packed, x its activations, y (B, out)
    # -> (i0, i1): rows i0:i1 of y = x @ W.T, block `job` of `per` rows (a token step's job)
    i0, i1 = job_span(job, W[0].shape[0], per)
    project(W, x, y, i0, i1, np.empty(n_in, np.float32))  # scratch: one widened row, exactly n_in
    return i0, i1


# ---------------------------------------------------------------- decode: N <= SMALL_N rows of x
# `project` computes some rows of y = x @ W.T for a weight in any storage. It is the one kernel
# of token mode: `linear` runs it over all rows, split between the cores, and decode.py runs it
# inside its fused layer step. A stored weight travels as a tuple (array, kind, row_scale)
# (storage.packed): Numba compiles one version per array dtype, and `kind` tells float16 from
# bfloat16 bits in a uint16 array; bfloat16 rows of even length come as uint32 pairs.

def project(W, x, y, i0, i1, buf):  # W (array (out, in), kind, row_scale), x (N, in), y (N, out)
    """y[:, i] = x @ W[i] for i0 <= i < i1; x as `activations(W, x)` gives it; buf (in,)
    float32 scratch for a widened row."""


@overload(project, inline="always")
def _project(W, x, y, i0, i1, buf):
    # Each storage's loops are a jitted function of their own, compiled once per process and
    # shared by every caller. Written out here, they were compiled again for each parallel
    # loop that calls `project` (five times for the demo model: ~5 s of the first run).
    dtype = W.types[0].dtype
    if isinstance(dtype, types.Float):
        return lambda W, x, y, i0, i1, buf: _rows_float(W[0], x, y, i0, i1)
    if dtype == types.uint16:
        return lambda W, x, y, i0, i1, buf: _rows_halves(W[0], W[1] == F16, x, y, i0, i1, buf)
    if dtype == types.uint32:  # x as `activations` made it: (x, xs)
        return lambda W, x, y, i0, i1, buf: _rows_pairs(W[0], x[0], x[1], y, i0, i1, buf)
    if dtype == types.int8:  # x as `activations` made it: (x, xq, sx)
        return lambda W, x, y, i0, i1, buf: _rows_int8(W[0], W[2], x, y, i0, i1, buf)
    if dtype == types.uint8:  # int4 / int5 (W[1]: I4 / I5): linear_int4.py
        return lambda W, x, y, i0, i1, buf: rows_int4(W[0], W[1], W[2], x, y, i0, i1, buf)


@njit(fastmath=True)
def _rows_float(A, x, y, i0, i1):  # A (out, in) float32 / float64
    if x.shape[0] == 1:
        _matvec_rows(A, _as_is, x[0], y[0], i0, i1)
    else:  # no widening: the rows are used where they are, by dot_tile or four at a time
        i = tiles(A, False, x, y, i0, i1)
        while i + 4 <= i1:
            dot_rows4(A, i, x, y, i)
            i += 4
        for r in range(i, i1):
            dot_rows(A[r], x, y, r)


@njit(fastmath=True)
def _rows_halves(A, f16, x, y, i0, i1, buf):  # A (out, in) uint16: float16 or bfloat16 bits
    i = tiles(A, f16, x, y, i0, i1)  # i0 for one row of x
    if f16:
        _packed_rows(A, _f16, x, y, i, i1, buf)
    else:
        _packed_rows(A, _bf16, x, y, i, i1, buf)


@njit(fastmath=True)
def _rows_pairs(A, x, xs, y, i0, i1, buf):  # A (out, in/2) uint32: bfloat16 in pairs
    # (column 2j in the low half, 2j + 1 in the high); xs: x's even and odd columns apart
    if x.shape[0] > 1:  # dot_tile, else as _packed_rows: four rows widened, then one at a time
        rows4, i = np.empty((4, 2 * A.shape[1]), np.float32), tiles(A, False, x, y, i0, i1)
        while i + 4 <= i1:
            for k in range(4):
                for j in range(A.shape[1]):
                    rows4[k, 2 * j], rows4[k, 2 * j + 1] = _bf16_lo(A[i + k, j]), _bf16_hi(A[i + k, j])
            dot_rows4(rows4, 0, x, y, i)
            i += 4
        for r in range(i, i1):
            for j in range(A.shape[1]):
                buf[2 * j], buf[2 * j + 1] = _bf16_lo(A[r, j]), _bf16_hi(A[r, j])
            dot_rows(buf, x, y, r)
        return
    for i in range(i0, i1):
        acc = np.float32(0.0)
        for j in range(A.shape[1]):
            acc += _bf16_lo(A[i, j]) * xs[0, j] + _bf16_hi(A[i, j]) * xs[1, j]
        y[0, i] = acc


@njit(fastmath=True)
def _rows_int8(Q, scale, x, y, i0, i1, buf):  # Q (out, in) int8, x = (x, xq, sx)
    xq, sx = x[1], x[2]
    if xq.shape[0] > 0:  # rows of x rounded to int16: integer products, a batch's by dot_tile
        i = i0 if xq.shape[0] == 1 else tiles_int8(Q, scale, xq, sx, y, i0, i1)
        for n in range(xq.shape[0]):
            _int8_rows(Q, scale, xq[n], sx[n], y[n], i, i1)
        return
    _packed_rows(Q, _i8, x[0], y, i0, i1, buf)
    for n in range(x[0].shape[0]):
        for i in range(i0, i1):
            y[n, i] *= scale[i]


@njit(inline="always")
def _matvec_rows(A, widen, x, y, i0, i1):  # A (out, in), x (in,), y (out,): y[i] = A[i] . x
    """N == 1: one accumulator per weight row and a plain loop over it: LLVM vectorizes and
    unrolls it (fastmath lets it reorder the sum). Packed elements are widened in registers,
    never written back, so they read half / a quarter of the float32 bytes. (Four rows per
    pass, sharing each load of x, measured no faster in the model and slower when packed.)"""
    for i in range(i0, i1):
        acc = np.float32(0.0)
        for j in range(A.shape[1]):
            acc += widen(A[i, j]) * x[j]
        y[i] = acc


def activations(W, x):  # x (N, in) -> what `project` takes as x for the weight W
    """x itself, except for two storages, where one row of x is prepared once for all the rows
    of W (for bfloat16 that measured 3% faster than once per block of rows):
    - bfloat16 in pairs: (x, xs), xs (2, in/2) the even and odd columns of x apart, so that both
      halves of a 32-bit load of W are used with plain vertical operations (a shift, a mask), no
      zero-extending shuffles: 15% faster on the 169M head than widening elements one by one.
    - int8: (x, xq, sx). Each float32 row n of x ~= xq[n] * sx[n], xq (N, in) int16, so that the
      int8 kernels multiply integers (vpmaddwd: on a Zen 1 core 1.5-2x the weights per second of
      widening int8 to float32, which bounded it; batches by dot_tile, the same sums as one
      row's: on a Zen 3, 169M, 2 threads, batch-8 decode 19.9 -> 13.8 ms). The levels are capped so
      that no int32 row sum can overflow: |xq| <= (2**31 - 1) // (127 * in), e.g. 22017 for in
      = 768, 5504 for 3072. float64 rows, and more than SMALL_N (BLAS), keep float arithmetic
      (xq empty).
    bfloat16 batches (N > 1) keep x alone (xs empty)."""


@overload(activations, inline="never")
def _activations(W, x):
    if W.types[0].dtype == types.uint32:
        def split(W, x):
            N, n = x.shape
            if N != 1:
                return x, np.empty((2, 0), x.dtype)
            xs = np.empty((2, n // 2), x.dtype)
            for j in range(n // 2):
                xs[0, j], xs[1, j] = x[0, 2 * j], x[0, 2 * j + 1]
            return x, xs
        return split
    if W.types[0].dtype == types.uint8:  # int4 / int5: (x, xq, sx, xsum, xerr), linear_int4.activations_int4
        rounds = x.dtype == types.float32
        return lambda W, x: activations_int4(x, rounds, W[1])
    if W.types[0].dtype != types.int8:
        return lambda W, x: x
    rounds = x.dtype == types.float32

    def impl(W, x):
        N, n = x.shape
        if not 1 <= N <= SMALL_N or not rounds:
            return x, np.empty((0, n), np.int16), np.empty(0, np.float64)
        levels = np.float64(min(32767, (2 ** 31 - 1) // (127 * max(n, 1))))
        xq, sx, bits = np.empty((N, n), np.int16), np.empty(N), x.view(np.int32)
        for b in range(N):  # each row on a scale of its own
            top = np.int32(0)  # max |x| as float32 bits: an integer max vectorizes (a float
            for j in range(n):  # one, NaN-aware, does not; 3x faster at B = 8), and inf or NaN
                top = max(top, bits[b, j] & np.int32(0x7FFFFFFF))  # reads as >= 0x7F800000
            if top == 0 or top >= np.int32(0x7F800000):
                xq[b] = 0
                sx[b] = 0.0 if top == 0 else np.nan  # NaN in, NaN out
                continue
            peak = np.float64(_bits_to_f32(np.uint32(top)))
            inv = levels / peak  # float64, like sx: a subnormal top would overflow float32
            for j in range(n):
                xq[b, j] = np.int16(np.rint(x[b, j] * inv))
            sx[b] = peak / levels
        return x, xq, sx
    return impl


@njit(inline="always")
def _int8_rows(Q, scale, xq, sx, y, i0, i1):  # Q (out, in) int8, xq (in,) int16, y (out,)
    """y[i] = scale[i] * sx * (Q[i] . xq), the products summed in int32 (the narrowing casts
    keep Numba from widening to int64, so that LLVM vectorizes it as vpmaddwd).

    Rows of at most 1 KB also ask for the row 4 KB ahead as each one starts: the hardware's
    prefetcher falls behind on them. Measured in one process, 169M int8: head 2.4 -> 2.0-2.1
    ms, layers 8.0-8.4 -> 7.2-7.6 ms (isolated 768-column matrices +15%). Longer rows lost (30%
    at 4096 columns), as did float32 and bfloat16 rows at every distance tried."""
    ahead = 4096 // Q.shape[1] if 0 < Q.shape[1] <= 1024 else 0  # rows
    for i in range(i0, i1):
        if ahead and i + ahead < Q.shape[0]:
            for j in range(0, Q.shape[1], 64):
                prefetch(Q, i + ahead, j)
        s = np.int32(0)
        for j in range(Q.shape[1]):
            s = np.int32(s + np.int32(Q[i, j]) * np.int32(xq[j]))
        y[i] = np.float32(s) * sx * scale[i]


@njit(inline="always")
def _packed_rows(A, widen, x, y, i0, i1, buf):  # A (out, in) packed, x (N, in), y (N, out)
    if x.shape[0] == 1:
        _matvec_rows(A, widen, x[0], y[0], i0, i1)
        return
    # N > 1: widen four rows once (into a buffer of their own: `buf` holds one), use them for
    # every row of x
    rows4, i = np.empty((4, A.shape[1]), np.float32), i0
    while i + 4 <= i1:
        for k in range(4):
            for j in range(A.shape[1]):
                rows4[k, j] = widen(A[i + k, j])
        dot_rows4(rows4, 0, x, y, i)
        i += 4
    for r in range(i, i1):
        for j in range(A.shape[1]):
            buf[j] = widen(A[r, j])
        dot_rows(buf, x, y, r)


@njit(cache=True, inline="always")
def _project_all(W, x, y, blocks):  # every row of y = x @ W.T, in blocks of rows
    """Called from Python, one core runs the blocks in turn (prange is range); inlined into
    `_project_all_parallel`, the prange becomes a parallel loop: one body, two builds."""
    out = W[0].shape[0]
    nb = min(out, blocks)
    xa = activations(W, x)
    for b in prange(nb):
        # Block edges on multiples of 12: without dot_tile (AVX-512, or in % 16 != 0) batches take
        # rows four at a time (dot_rows4) and the rest one at a time (dot_rows), whose sums LLVM
        # may order differently (AVX2: it does), so a row's kernel, hence its bits, must not
        # depend on the thread count; and dot_tile's tiles of 3 rows stay whole.
        i0 = b * out // nb // 12 * 12
        i1 = out if b == nb - 1 else (b + 1) * out // nb // 12 * 12
        buf = np.empty(x.shape[1], np.float32)
        project(W, xa, y, i0, i1, buf)


@njit(parallel=True, cache=True)
def _project_all_parallel(W, x, y, blocks):  # _project_all with the blocks split over the cores
    _project_all(W, x, y, blocks)


# ---------------------------------------------------------------- the entry points

def _operand(x, W):  # x (N, in), W stored (out, in) -> x as the kernels take it, W packed
    if x.ndim != 2 or x.shape[1] != W.shape[1]:
        raise InputError(f"linear: x of shape {x.shape} does not fit a weight of shape {W.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    Wt, col_scale = packed(W)
    if col_scale is not None:
        x = x * col_scale.astype(x.dtype, copy=False)
    return np.ascontiguousarray(x), Wt


def linear(x: np.ndarray, W) -> np.ndarray:  # x (N, in), W stored (out, in) -> (N, out)
    """y = x @ W.T in x's dtype (float32 or float64), W as returned by `prepare_weight`."""
    x, Wt = _operand(x, W)
    N = x.shape[0]
    if N > SMALL_N:
        y, tasks = gemm_tasks(x, Wt)
        run_tasks(tasks)
        return y
    y = np.empty((N, W.shape[0]), x.dtype)
    if N > 0:
        parallel = W.shape[0] * W.shape[1] >= PARALLEL_MIN_WEIGHTS
        blocks = 16 * numba.get_num_threads()
        (_project_all_parallel if parallel else _project_all)(Wt, x, y, blocks)
    return y


def linear_many(pairs) -> list:  # [(x (N, in), W (out, in)), ...] -> [(N, out), ...]
    """[linear(x, W) for x, W in pairs], the same numbers, with the BLAS blocks of all the products
    in one batch of pool tasks: independent products of a layer (RWKV-5/6's r, k, v, g, each of
    its own input) wait for the threads once, not once each, and small ones (a LoRA's) that
    `linear` runs on one thread share the cores."""
    if any(x.shape[0] <= SMALL_N for x, _ in pairs):
        return [linear(x, W) for x, W in pairs]
    ys, tasks = [], []
    for x, Wt in (_operand(x, W) for x, W in pairs):
        y, t = gemm_tasks(x, Wt)
        ys.append(y)
        tasks += t
    run_tasks(tasks)
    return ys
