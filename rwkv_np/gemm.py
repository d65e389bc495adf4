"""Prompt products, y = x @ W.T for N > SMALL_N rows of x: BLAS on blocks of W's rows, on a pool
of our own threads.

Why this file exists: a prompt is a chain of GEMMs, so prefill speed is BLAS, and on a shared
machine OpenBLAS's own threads wait for each other inside every product. linear.py's `linear` and
`linear_many` hand their large products here: `gemm_tasks` cuts one into blocks of W's rows (each
a single-threaded BLAS call into its columns of y), `run_tasks` runs the blocks of one or more
products on the pool. 16-bit, int8 and int4 weights are widened to float32 a block of rows at a
time inside their task, so no float32 copy of the whole matrix is made.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from .linear_int4 import widen_rows
from .storage import F16, FLOAT, _bf16, _bf16_hi, _bf16_lo, _f16, _i8
from .storage_int4 import I4, I5
from .threads import blas_single_thread

# A product is cut into blocks of W's rows, each an independent single-threaded BLAS call into
# its columns of y, run as tasks on a pool of numba.get_num_threads() threads: a core that another
# process holds delays one task, not every step of the product (OpenBLAS's own threads wait for
# each other inside it: threads.blas_single_thread has the figures). Packed weights are widened
# to float32 _BLOCK_BYTES at a time inside their task, so the widening runs on every core too.
# One block per thread: 256-token prompts, 2 cores, tokens/s (best of 3-5, ways taking turns):
#                            OpenBLAS 2 threads   1 block per thread   4 blocks per thread
#   quiet machine   v4 169M        713                  718                  597
#                   v7 0.1B        657                  626                  613
#   others' jobs    v4 169M        325                  404                  404
#                   v7 0.1B        175                  387                  283
#   + a busy loop   v4 169M        182                  319                  308
#                   v7 0.1B         61                  171                  183
_TASK_FLOPS = 1 << 24   # ~16 MFLOP, ~0.2 ms of sgemm on one core: a pool task costs ~30 us
_TASK_ROWS = 32         # blocks of W's rows come in multiples of this (whole BLAS panels)
_BLOCK_BYTES = 1 << 22  # float32 bytes of W widened at a time before a GEMM (fits in L3). 4 MB,
# not 1: a GEMM over 341 rows of a 768-column W ran ~10% below one over 1364 (one OpenBLAS thread,
# T = 1024: 80 vs 89 GFLOP/s); 169M prompts, fresh processes alternating, 3 pairs, tokens/s:
# bf16 T=256 627 -> 703, T=1024 670 -> 701; int8 T=256 632 -> 648, T=1024 658 -> 733.
_pools = {}             # threads -> ThreadPoolExecutor
_scratch = threading.local()  # each thread's float32 rows for widening, reused from call to call


# Rows of a packed weight widened into a float32 buffer that is reused, in one compiled pass:
# NumPy's astype-shift-view made two fresh arrays per block, and fresh pages cost ~2.5 us each
# to fault in on this VM (v7-0.1b bf16 / int8 prompts: products 20-45% slower than float32).
@njit(cache=True)
def _widen_halves(A, f16, r0, out):  # A (rows, in) uint16 float16 / bfloat16 bits -> out (n, in)
    for i in range(out.shape[0]):
        for j in range(A.shape[1]):
            out[i, j] = _f16(A[r0 + i, j]) if f16 else _bf16(A[r0 + i, j])


@njit(cache=True)
def _widen_pairs(A, r0, out):  # A (rows, in/2) uint32 bfloat16 pairs (low half first) -> out (n, in)
    for i in range(out.shape[0]):
        for j in range(A.shape[1]):
            out[i, 2 * j], out[i, 2 * j + 1] = _bf16_lo(A[r0 + i, j]), _bf16_hi(A[r0 + i, j])


@njit(cache=True)
def _widen_int8(Q, scale, r0, out):  # Q (rows, in) int8, scale (rows,) -> out (n, in)
    for i in range(out.shape[0]):
        s = scale[r0 + i]
        for j in range(Q.shape[1]):
            out[i, j] = _i8(Q[r0 + i, j]) * s


def _rows(W, r0, r1, n_in):  # rows r0:r1 of a packed weight as float32: a view of W or of the buffer
    if W[1] == FLOAT:
        return W[0][r0:r1]
    size = (r1 - r0) * n_in
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size, np.float32)
    out, A = buf[:size].reshape(r1 - r0, n_in), W[0]
    if W[1] in (I4, I5):
        widen_rows(A, W[1], W[2], r0, out)
    elif A.dtype == np.uint32:
        _widen_pairs(A, r0, out)
    elif A.dtype == np.int8:
        _widen_int8(A, W[2], r0, out)
    else:
        _widen_halves(A, W[1] == F16, r0, out)
    return out


def gemm_tasks(x, W):  # x (N, in) contiguous, W (array, kind, row_scale) packed -> y (N, out), [task]
    """y = x @ W.T by BLAS on blocks of W's rows: y, unfilled, and the blocks as calls that fill it."""
    (N, n_in), out = x.shape, W[0].shape[0]
    threads = numba.get_num_threads()  # the calling thread's count (set_threads)
    tasks = 1 if threads == 1 else min(threads, max(1, 2 * N * n_in * out // _TASK_FLOPS))
    rows = out if tasks == 1 else -(-out // tasks // _TASK_ROWS) * _TASK_ROWS
    step = out if W[1] == FLOAT else max(1, _BLOCK_BYTES // (4 * n_in))  # rows widened at a time
    y = np.empty((N, out), x.dtype)

    def block(r0):  # rows r0 : r0 + rows of W -> columns of y
        for s0 in range(r0, min(out, r0 + rows), step):
            s1 = min(out, r0 + rows, s0 + step)
            np.matmul(x, _rows(W, s0, s1, n_in).T, out=y[:, s0:s1])
    return y, [lambda r0=r0: block(r0) for r0 in range(0, out, rows)]


def run_tasks(tasks):  # the blocks of one or more products, split between the threads, BLAS on one each
    threads = numba.get_num_threads()
    with blas_single_thread():
        if len(tasks) == 1 or threads == 1:
            for task in tasks:
                task()
        else:
            if threads not in _pools:
                _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="rwkv_np-gemm")
            for _ in _pools[threads].map(lambda task: task(), tasks):
                pass
