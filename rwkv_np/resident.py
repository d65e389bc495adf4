"""float32 matrices that decode streams are copied off the file's memory map into the process's
own memory at load, where NumPy asks for transparent huge pages (2 MB) on large allocations.

Why: a float32 token streams every matrix (0.52 GB for the 169M shape), and it streams faster
from 2 MB pages than from the page cache's mapping, mostly 4 KB pages: 169M fp32 decode, one
thread, best of 20 alternating steps of each in one process, 28.9 ms mapped -> 22.4 ms copied
(24.2 ms in anonymous 2 MB pages made by hand, so it is the pages, not NumPy). The packed
storages are bound by their arithmetic, and there copying measured no gain (bfloat16 18.5 ->
18.0 ms, int8 8.0 -> 9.8, int4 7.6 -> 8.8), so they stay mapped; so do embeddings (one row read
per token).

The copy goes 16 MB at a time, and the file's pages each piece read are dropped from this
process's mapping at once (MADV_DONTNEED on a read-only shared file mapping unmaps them; the page
cache keeps them, a later read maps them again): the process holds the matrix once, and its
peak memory stays within 16 MB of that.
"""
from __future__ import annotations

import mmap

import numpy as np

_CHUNK = 16 << 20  # bytes copied before the mapping's pages are dropped


def resident(a: np.ndarray) -> np.ndarray:  # a float32 (or float64) matrix -> the same, not mapped
    """`a` itself unless it is a view of a memory-mapped file; then a copy in process memory."""
    mapping, offset = _mapping(a)
    if mapping is None or not a.flags.c_contiguous:
        return a
    out = np.empty_like(a, order="C")
    flat, src = out.reshape(-1), a.reshape(-1)
    step = max(1, _CHUNK // a.itemsize)
    for start in range(0, src.size, step):
        flat[start:start + step] = src[start:start + step]
        _drop(mapping, offset + start * a.itemsize, min(step, src.size - start) * a.itemsize)
    return out


def _mapping(a: np.ndarray):  # -> (mmap, byte offset of a's data in it), or (None, 0)
    """The read-only map `a` views: a file's (anonymous maps are writable, and dropping their
    pages would lose their contents), as formats/safetensors.py makes them."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    obj = base.obj if isinstance(base, memoryview) else base
    if not isinstance(obj, mmap.mmap) or obj.closed or not memoryview(obj).readonly:
        return None, 0
    return obj, a.ctypes.data - np.frombuffer(obj, np.uint8, 1).ctypes.data


def _drop(mapping: mmap.mmap, start: int, length: int) -> None:
    """Unmap the whole pages of [start, start + length) from this process (a hint: no error)."""
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + length) // page * page
    if hi > lo and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass
