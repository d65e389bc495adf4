"""How many threads rwkv_np uses, and how its idle threads wait.

The Numba kernels (linear.py, decode.py, wkv.py) run on Numba's OpenMP threads (GNU libgomp);
prompts run through numpy's OpenBLAS, which has a thread pool of its own. `set_threads` sets both.

Idle OpenMP threads spin after each parallel region, by default for 300,000 rounds, and a decoded
token runs ~50 regions. On a busy machine the spinning holds cores that other threads need. 169M
fp32 token, 2 cores, median ms: idle 31 either way; beside a busy loop 65 -> 59; two rwkv_np
processes at once 100 -> 69 each; beside a test run (its own OpenMP threads) 590 -> 58. So
importing rwkv_np asks for a short spin, then sleep: GOMP_SPINCOUNT=1000, unless the user set it
or OMP_WAIT_POLICY. libgomp reads it when it loads, at Numba's first parallel call.
"""
import contextlib
import ctypes
import functools
import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import numba  # noqa: E402

from .errors import InputError  # noqa: E402


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
                setter = getattr(lib, name)
                setter._lib = lib  # where its get_num_threads lives (blas_single_thread)
                found.append(setter)
                break
    return found


@functools.lru_cache(maxsize=1)
def _openblas_threads() -> tuple:  # ((set_num_threads, get_num_threads), ...): numpy's OpenBLAS
    pairs = []
    for setter in _openblas_setters():
        getter = getattr(setter._lib, setter.__name__.replace("_set_", "_get_"), None) \
            if hasattr(setter, "_lib") else None
        if getter is not None:
            pairs.append((setter, getter))
    return tuple(pairs)


@contextlib.contextmanager
def blas_single_thread():
    """numpy's OpenBLAS on one thread inside the block, its thread count restored after.

    gemm.py runs a prompt's matrix products as independent blocks on a thread pool of its own:
    on a shared machine OpenBLAS's threads, which wait for each other inside every product, lose
    badly when another process holds a core (v7-0.1b, 256-token prompt, 2 cores beside another
    engineer's job: OpenBLAS on 2 threads 2.7-3.2 s, on 1 thread 0.69-0.83 s). Not for blocks run
    concurrently from two Python threads of the caller's (the count is process-wide)."""
    pairs = _openblas_threads()
    before = [get() for _, get in pairs]
    for set_, _ in pairs:
        set_(1)
    try:
        yield
    finally:
        for (set_, _), n in zip(pairs, before):
            set_(n)


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
