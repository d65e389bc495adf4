"""The int4 and int5 weight storages: 4-bit (5-bit) values in groups of 32 along each row, a
float16 scale and a float16 minimum per group (asymmetric, like ggml's Q4_1 / Q5_1):

    W[i, 32 g + j] ~= d[i, g] * q[i, g, j] + m[i, g],    q in 0..15 (int5: 0..31)

Layout, in memory and in files (formats/safetensors.py), as linear_int4.py's kernels read it:
  q     (out, in/2) uint8: group g of row i is bytes 16 g .. 16 g + 15; byte j holds q[i, g, j] in
        its low nibble and q[i, g, 16 + j] in its high nibble (ggml's order), so one 16-byte load
        gives two runs of 16 values that meet two contiguous runs of x
  scales (out, in/32, 2) float16: [d, m] of each group, side by side (one cache line holds both)
That is 5 bits a weight (4 + 2 x 16 bits per 32). A row whose length is not a multiple of 32 is
not int4: `prepare_weight(W, "int4")` keeps it int8.

int5 (6 bits a weight, as rwkv.cpp's Q5_1) is one uint8 array (out, 5 in/8): each row is its
int4-layout nibble bytes (in/2, the 4 low bits of each value, as above) followed by its high-bit
bytes (in/8: group g's 4 bytes a little-endian uint32 whose bit j is bit 4 of q[i, g, j], ggml's
Q5_1 qh order), with the same scales array; q = nibble | (bit << 4). Q5_1 rounds each group
plainly from its min and max; int5 uses the search below with 31 levels. KL to float32
(tools/quality.py, embedding and head int8, demo / random 169M): int5 7.6e-4 / 1.62e-4, rwkv.cpp's
Q5_1 file 8.9e-4 / 1.75e-4, Q5_1's rounding of the layer matrices alone 9.2e-4 / 1.95e-4.

Why asymmetric, groups of 32, float16 scales (tools/quality.py's harness, KL to float32 of the
demo model, embeddings and head int8): symmetric d * (q - 8) 1.1e-2 and asymmetric 7.6e-3 (all
matrices int4, plain min/max), groups of 32 / 64 / 128: 2.8e-3 / 4.0e-3 / 4.9e-3 with the
search below; float16 scales cost nothing measurable and halve the scales' bytes.

Why the search: the min/max scale wastes levels on a group's one or two extreme weights. Each
group tries its range shrunk from either end (16 candidates) and, for each, the least-squares
(d, m) of the values it rounded to, and keeps the pair with the least squared error, counted
with d and m already rounded to float16 as they are stored. KL on the demo model 3.9e-3 -> 2.8e-3,
on a random 169M model 7.8e-4 -> 6.1e-4 (matrices only; about 10 s for the 169M layers).

What 4 bits do not reach (issue 19; KL to float32, embedding and head int8, demo / random 169M;
`python tools/quality.py --int4-study [--shape 169m]`): rwkv.cpp's Q5_1 gives 8.9e-4 / 1.75e-4,
and Q5_1's rounding is plain min/max over 31 levels (that alone, dequantized: 9.2e-4 / 1.95e-4,
6 bits a weight). int4 as stored: 3.0e-3 / 5.9e-4; its search is at the limit of choosing
(d, m) per group: refitting every candidate three times, or 36 candidates in place of 16, moved
the 169M figure 1% and the demo figure within its noise (2.8e-3 .. 3.0e-3), at 2-4x the time.
Also measured, matrices dequantized: the error weighted per column by E[x_j^2] of the inputs
(calibrated on the training text: demo -4%; a data-free proxy from ln weight and time_mix:
demo 0, 169M -5%); GPTQ (calibrated, each column's error fed forward along the row) 1.9e-3 /
4.4e-4; groups of 16 (6 bits a weight, as many as Q5_1's) 1.95e-3 / 3.8e-4, with GPTQ 1.2e-3
(demo). Mixed, int4 with some
kinds int8: feed_forward.key 1.9e-3 / 3.3e-4 (6.0 bits a 169M layer weight), ffn key + value
1.4e-3 / 1.6e-4 (6.9 bits), ffn key + value and attention value + output 4.7e-4 / 4.3e-5 (7.3
bits, 77% of the weights int8: under Q5_1's KL on both, but then int8 itself, 8.04 bits, gives
6.1e-5 / 2.8e-5). Nothing at Q5_1's 6 bits a layer weight or fewer reached its KL.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

I4, I5 = 4, 5  # storage.packed's kind numbers of int4 / int5 matrices (storage.py lists the others)

GROUP = 32  # values per scale; the kernels load a group's 16 bytes as one vector
_SHRINK = (0.0, 0.04, 0.08, 0.12)  # fractions of a group's range cut from its low / high end
_REFITS = 3  # rounds of refitting the best pair
_ROWS = 256  # rows quantized at a time: bounds the temporaries (~25 MB at 768 columns)


class Int4Weight:
    """An (out, in) matrix as 4-bit (int5: 5-bit) values with per-group float16 scales and
    minimums (above); which one, from the shapes: q has in/2 (5 in/8) columns."""
    dtype = np.dtype(np.uint8)  # of the stored values, for code that lists a state dict's dtypes

    def __init__(self, q: np.ndarray, scales: np.ndarray):
        # Contiguous arrays of the right dtypes (e.g. read-only views of a mapped file) are not copied.
        self.q = np.ascontiguousarray(q, dtype=np.uint8)                 # (out, in/2) or (out, 5 in/8)
        self.scales = np.ascontiguousarray(scales, dtype=np.float16)     # (out, in/32, 2): d, m
        out, n = self.q.shape[0], GROUP * self.scales.shape[1] if self.scales.ndim == 3 else -1
        self.bits = {n // 2: 4, 5 * n // 8: 5}.get(self.q.shape[1]) if n > 0 else None
        if self.bits is None or self.q.ndim != 2 or self.scales.shape != (out, n // GROUP, 2):
            raise InputError(f"Int4Weight: values {self.q.shape} and scales {self.scales.shape} "
                             f"do not fit groups of {GROUP} of 4 or 5 bits")
        self.storage = f"int{self.bits}"
        self.shape = (out, n)
        self.nbytes = self.q.nbytes + self.scales.nbytes

    def packed(self) -> tuple:  # -> linear's (array, kind, row_scale) form: float16 as uint16 bits
        return self.q, I4 if self.bits == 4 else I5, self.scales.view(np.uint16)

    def rows(self, r0: int, r1: int) -> np.ndarray:  # -> (r1 - r0, in) float32, rows r0:r1
        n = self.shape[1]
        q = self.q[r0:r1, :n // 2].reshape(r1 - r0, -1, GROUP // 2)
        values = np.concatenate([q & 15, q >> 4], axis=2)                       # (rows, groups, 32)
        if self.bits == 5:  # bit j of group g's little-endian uint32 is bit 4 of value j
            high = self.q[r0:r1, n // 2:].reshape(r1 - r0, -1, GROUP // 8)
            values |= np.unpackbits(high, axis=2, bitorder="little") << 4
        dm = self.scales[r0:r1].astype(np.float32)
        return (values.astype(np.float32) * dm[..., :1] + dm[..., 1:]).reshape(r1 - r0, -1)

    def to_float32(self) -> np.ndarray:  # -> (out, in) float32, the matrix the kernels multiply by
        return self.rows(0, self.shape[0])

    def __repr__(self):
        return f"Int4Weight(shape={self.shape}, {self.bits} bits, groups of {GROUP})"


def quantize_int4(W: np.ndarray, bits: int = 4) -> Int4Weight:  # W (out, in) float, in a multiple of GROUP
    """W in int4 (bits=5: int5), each group's (d, m) the least-squared-error pair of the search
    above over 2^bits - 1 steps."""
    W = np.ascontiguousarray(W, dtype=np.float32)
    out, n = W.shape
    name = f"int{bits}"
    if n % GROUP:
        raise InputError(f"{name}: rows of {n} values are not a whole number of groups of {GROUP}")
    if not np.all(np.isfinite(W)):
        raise InputError(f"{name}: the weight holds NaN or infinity")
    q = np.empty((out, bits * n // 8), np.uint8)
    scales = np.empty((out, n // GROUP, 2), np.float16)
    for r0 in range(0, out, _ROWS):
        r1 = min(out, r0 + _ROWS)
        values, scales[r0:r1, :, 0], scales[r0:r1, :, 1] = _quantize_groups(
            W[r0:r1].reshape(r1 - r0, -1, GROUP), 2 ** bits - 1)
        half = GROUP // 2
        q[r0:r1, :n // 2] = ((values[..., :half] & 15) | ((values[..., half:] & 15) << 4)).reshape(r1 - r0, -1)
        if bits == 5:  # group g's 32 fifth bits, a little-endian uint32 (bit j: value j)
            q[r0:r1, n // 2:] = np.packbits(values >> 4, axis=2, bitorder="little").reshape(r1 - r0, -1)
    return Int4Weight(q, scales)


def _quantize_groups(w, top):  # w (rows, groups, 32) float32, values 0..top -> values uint8, d, m (rows, groups) f16
    lo, hi = w.min(-1, keepdims=True), w.max(-1, keepdims=True)
    span = hi - lo
    if np.any(np.abs(lo) > 65504) or np.any(np.abs(hi) > 65504) or np.any(span / top > 65504):
        raise InputError("int4: weights beyond float16's range (|w| > 65504) cannot have float16 scales")
    best = None

    def keep(d, m):  # round w with (d, m) as stored (float16); keep it where the error is least
        nonlocal best
        d16, m16 = np.maximum(d, 0).astype(np.float16), m.astype(np.float16)
        df, mf = d16.astype(np.float32), m16.astype(np.float32)
        q = np.clip(np.rint((w - mf) / np.where(df > 0, df, 1)), 0, top)
        q[np.broadcast_to(df == 0, q.shape)] = 0
        err = ((q * df + mf - w) ** 2).sum(-1, keepdims=True)
        if best is None:
            best = [q, d16, m16, err]
        else:
            better = err < best[3]
            best = [np.where(better, q, best[0]), np.where(better, d16, best[1]),
                    np.where(better, m16, best[2]), np.minimum(err, best[3])]
        return q

    def refit(q, d):  # the least-squares (d, m) of w ~ d q + m over each group, for these q
        qm, wm = q.mean(-1, keepdims=True), w.mean(-1, keepdims=True)
        var = ((q - qm) ** 2).sum(-1, keepdims=True)
        d = np.where(var > 0, ((q - qm) * (w - wm)).sum(-1, keepdims=True) / np.maximum(var, 1e-30), d)
        return d, wm - d * qm

    for a in _SHRINK:
        for b in _SHRINK:
            d = span * (1 - a - b) / top
            keep(*refit(keep(d, lo + a * span), d))
    for _ in range(_REFITS):  # from the best so far: round, refit
        keep(*refit(best[0], best[1].astype(np.float32)))
    return best[0].astype(np.uint8), best[1][..., 0], best[2][..., 0]
