"""The int4 and int5 kernels of linear.py: y = x @ W.T for W in storage_int4's layout (groups of
32 4-bit values, a float16 scale d and minimum m per group), W[i, 32 g + j] = d[i, g] q[i, g, j] +
m[i, g]. int5 is the same IR with q = nibble | (bit << 4), the group's 32 fifth bits one 4-byte
load spread to lanes (int4_sums.py, which holds the per-instruction-set pieces: `_high`, a mask
register on AVX-512; `_fifth_bits` on AVX2); each kernel is built twice (`_group_dot_of(bits)`),
and rows_int4 / widen_rows pick the build by the packed tuple's kind at run time, so every
caller keeps one compiled version for both.

Decode (one float32 row of x) multiplies integers: each group of 32 values of x is rounded on a
scale of its own, x[j] ~= sx[g] xq[j], once per vector, and

    y[i] = sum_g d[i, g] sx[g] (q[i, g, :] . xq[g]) + sum_g m[i, g] xsum[g]

with xsum[g] the float32 sum of x over group g. On a CPU with AVX512-VNNI, xq is int8 and one
vpdpbusd multiplies 64 weights (ggml rounds x the same way for its Q4/Q5 formats); with AVX2,
xq is int8 too, in `pair_order`, and two vpmaddubsw and a vpmaddwd take 64; elsewhere (generic
LLVM vectors) xq is int16 and a pmaddwd takes 16. Batches (N > 1) and float64 x widen each row
to float32 in a buffer, q * d + m, and use it for every row of x; prompts widen blocks of rows
the same way before BLAS (`widen_rows`).

Why explicit vectors: written as plain loops (linear.py's style), LLVM fully unrolls a group's
16-byte loop and then vectorizes across groups with gathers: 1.4-2.2 G weights/s on one core.
So the work is written here in LLVM IR as whole vectors (Numba intrinsics): a 32-byte load for
two groups, the nibbles split with a mask and a shift, one vpdpbusd (or two vpmaddubsw), the sums
converted and scaled into float accumulators that live across groups (two, alternating, so that
consecutive groups do not wait on each other's add), one horizontal sum per row. Generic LLVM
vectors but for vpdpbusd / vpmaddubsw: AVX-512 gets zmm registers, AVX2 pairs of ymm. One core of
the project's Zen 4, 169M shapes, streaming from memory: 19-25 G weights/s with VNNI, 12-17.5 with
int16 (int8's kernel: 16-22, on 8 bits a weight to int4's 5). One core of the Zen 3 (AVX2), 169M
shapes, streaming: int4 24-26, int5 16.5-18 G weights/s (int16 x: 12-13 and 6.4-8.6).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .dot_rows import dot_rows, dot_rows4
from .dot_tile import tiles_int4
from .int4_sums import _HALF, _VF, _group_sums, _pair_sums_avx2, _pair_sums_int16, _pair_sums_vnni, group_values
from .llvm_vectors import FAST as _FAST, F32 as _F32, I64 as _I64
from .llvm_vectors import c_array as _c, cpu_has, const as _const, data as _data, prefetch, row as _row
from .llvm_vectors import vec as _vec
from .storage_int4 import GROUP, I5

VNNI = cpu_has("avx512vnni")  # vpdpbusd
XQ, LEVELS = (np.int8, 127) if VNNI or cpu_has("avx2") else (np.int16, 32767)  # x's rounding: int8 for
# vpdpbusd / vpmaddubsw, else int16 for generic pmaddwd (a group's int16 sums, 32 * 31 * 32767 at
# most, cannot overflow int32)
PAIRED = XQ == np.int8 and not VNNI  # the AVX2 kernel reads x in `pair_order`
_X_TYPES = (types.int8, types.int16) if XQ == np.int8 else (types.int16,)  # xq the kernels take


def _group_dot_of(bits):  # -> the intrinsic below for int4 (bits 4) or int5 (bits 5) rows
    def _group_dot(typingctx, Q, i, DM, xq, sx, xsum, xerr):
        """sum_g d[i, g] (sx[g] (q[i, g, :] . xq[32 g : 32 g + 32]) + xerr[g]) + m[i, g] xsum[g],
        float32. Q (out, in/2) uint8 (int5: (out, 5 in/8), the nibbles then the high bits), DM (out, in/32, 2) float16 bits [d, m] as uint16, xq (in,) int8
        (VNNI; AVX2: in `pair_order`) or int16, sx, xsum and xerr (in/32,) float32, all C-contiguous.

        Groups go 8 at a time (768 columns: 3 blocks): their 8 [d, m] pairs are one 32-byte load,
        split into d and m vectors; d * sx is each group's scale, a lane of a vector (a permute)
        rather than a scalar load, conversion and broadcast; the m terms of the 8 are one
        multiply-add. Leftover groups (rows not a multiple of 256) go one at a time. Against one
        group at a time with the m terms in a scalar loop (a 4-cycle chain per group), int16, one
        core, matrix in cache, interleaved runs: 768 x 768 13.4-14.3 -> 15.0-17.6 G weights/s,
        256 x 3072 13.6-15.5 -> 18.6-21.2; VNNI on int8 x, streaming from memory, 169M shapes:
        12.1-17.5 -> 18.9-25.5 (in cache 10.5-16.2 -> 27.4-29.8)."""
        int8 = xq.dtype == types.int8  # VNNI or AVX2 (`XQ`)
        paired = int8 and PAIRED  # AVX2: x in pair order

        def codegen(context, builder, sig, args):
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            qrow = _row(context, builder, sig.args[0], args[0], i)
            dmrow = _row(context, builder, sig.args[2], args[2], i)
            xp, sxp, xsp, xep = (_data(context, builder, sig.args[k], args[k]) for k in (3, 4, 5, 6))
            groups = builder.extract_value(context.make_array(sig.args[2])(context, builder, args[2]).shape, 1)
            hb = builder.gep(qrow, [builder.mul(groups, _I64(_HALF))]) if bits == 5 else None
            v8, v16 = ir.VectorType(_F32, 8), ir.VectorType(_F32, 16)
            acc = [cgutils.alloca_once_value(builder, ir.Constant(v16, [0.0] * 16)) for _ in range(2)]
            macc = cgutils.alloca_once_value(builder, ir.Constant(v8, [0.0] * 8))    # the m terms
            rest = cgutils.alloca_once_value(builder, _F32(0.0))                      # leftover groups

            def add(a, x, y):  # a += x * y
                builder.store(builder.fadd(builder.load(a), builder.fmul(x, y, flags=_FAST), flags=_FAST), a)

            blocks = builder.lshr(groups, _I64(3))
            with cgutils.for_range(builder, blocks) as loop:  # 8 groups
                g0 = builder.shl(loop.index, _I64(3))
                pairs = _vec(builder, builder.gep(dmrow, [builder.shl(g0, _I64(1))]), 16, ir.IntType(16), 2)
                d, m = (builder.fpext(builder.bitcast(builder.shuffle_vector(pairs, pairs, _const(range(k, 16, 2))),
                                                      ir.VectorType(ir.HalfType(), 8)), v8) for k in (0, 1))
                ds = builder.fmul(d, _vec(builder, builder.gep(sxp, [g0]), 8, _F32, 4), flags=_FAST)
                add(macc, m, _vec(builder, builder.gep(xsp, [g0]), 8, _F32, 4))
                add(macc, d, _vec(builder, builder.gep(xep, [g0]), 8, _F32, 4))
                for n, k in enumerate(range(0, 8, 4 if paired else 2)):  # groups k, k + 1 (paired: to k + 3)
                    g = builder.add(g0, _I64(k))
                    if paired:  # two pairs' sums, four lanes a group, one multiply-add
                        s4 = [_pair_sums_avx2(builder, qrow, xp, builder.add(g, _I64(j)), hb) for j in (0, 2)]
                        sums = [builder.shuffle_vector(s4[0], s4[1], _const(range(16)))]
                        scales = [builder.shuffle_vector(ds, ds, _const([k + j // 4 for j in range(16)]))]
                    elif int8:
                        sums = [_pair_sums_vnni(builder, qrow, xp, g, hb)]
                        scales = [builder.shuffle_vector(ds, ds, _const([k] * 8 + [k + 1] * 8))]
                    else:
                        sums = _pair_sums_int16(builder, qrow, xp, g, hb)
                        scales = [builder.shuffle_vector(ds, ds, _const([k + j] * 16)) for j in (0, 1)]
                    for j, (s, scale) in enumerate(zip(sums, scales)):
                        add(acc[(n + j) % 2], builder.sitofp(s, v16), scale)
            with cgutils.for_range(builder, builder.sub(groups, builder.shl(blocks, _I64(3)))) as loop:
                g = builder.add(builder.shl(blocks, _I64(3)), loop.index)
                half = lambda k: builder.fpext(builder.bitcast(builder.load(builder.gep(  # noqa: E731
                    dmrow, [builder.add(builder.shl(g, _I64(1)), _I64(k))])), ir.HalfType()), _F32)
                add(rest, builder.fmul(builder.sitofp(_group_sums(builder, qrow, xp, g, hb), _F32), half(0), flags=_FAST),
                    builder.load(builder.gep(sxp, [g])))
                add(rest, half(1), builder.load(builder.gep(xsp, [g])))
                add(rest, half(0), builder.load(builder.gep(xep, [g])))
            total = builder.fadd(builder.load(acc[0]), builder.load(acc[1]), flags=_FAST)
            reduce = lambda v, n: builder.call(cgutils.get_or_insert_function(  # noqa: E731
                builder.module, ir.FunctionType(_F32, [_F32, v.type]), f"llvm.vector.reduce.fadd.v{n}f32"),
                [_F32(0.0), v], fastmath=_FAST)
            return builder.fadd(builder.fadd(reduce(total, 16), reduce(builder.load(macc), 8), flags=_FAST),
                                builder.load(rest), flags=_FAST)
        if _c(Q, 2, types.uint8) and _c(DM, 3, types.uint16) and isinstance(i, types.Integer) and \
                isinstance(xq, types.Array) and xq.dtype in _X_TYPES \
                and _c(xq, 1, xq.dtype) and _c(sx, 1, types.float32) and _c(xsum, 1, types.float32) and _c(xerr, 1, types.float32):
            return types.float32(Q, i, DM, xq, sx, xsum, xerr), codegen
    _group_dot.__name__ = _group_dot.__qualname__ = f"_group_dot{bits}"
    return intrinsic(_group_dot)


_group_dot, _group_dot5 = _group_dot_of(4), _group_dot_of(5)


def _widen_row_of(bits):  # -> the intrinsic below for int4 (bits 4) or int5 (bits 5) rows
    def _widen_row(typingctx, Q, i, DM, out):
        """out[:] = row i as float32, q * d + m group by group; out (in,) float32 C-contiguous."""
        def codegen(context, builder, sig, args):
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            qrow = _row(context, builder, sig.args[0], args[0], i)
            dmrow = _row(context, builder, sig.args[2], args[2], i)
            op = _data(context, builder, sig.args[3], args[3])
            groups = builder.extract_value(context.make_array(sig.args[2])(context, builder, args[2]).shape, 1)
            hb = builder.gep(qrow, [builder.mul(groups, _I64(_HALF))])
            with cgutils.for_range(builder, groups) as loop:
                base = builder.gep(op, [builder.mul(loop.index, _I64(GROUP))])
                for k, value in enumerate(group_values(builder, qrow, dmrow, hb, loop.index, bits)):
                    builder.store(value, builder.bitcast(builder.gep(base, [_I64(k * _HALF)]), _VF.as_pointer()), align=4)
            return context.get_dummy_value()
        if _c(Q, 2, types.uint8) and _c(DM, 3, types.uint16) and _c(out, 1, types.float32) and isinstance(i, types.Integer):
            return types.void(Q, i, DM, out), codegen
    _widen_row.__name__ = _widen_row.__qualname__ = f"_widen_row{bits}"
    return intrinsic(_widen_row)


_widen_row4, _widen_row5 = _widen_row_of(4), _widen_row_of(5)


@njit(fastmath=True)
def rows_int4(Q, kind, DM, x, y, i0, i1, buf):  # Q (out, in/2 or 5 in/8), DM (out, in/32, 2) bits
    """y[:, i] = x @ W[i] for i0 <= i < i1, y (N, out); kind I4 or I5 (a run-time int: one
    compiled version for both); x as `activations_int4` made it."""
    if x[1].shape[0] == 1:  # one float32 row, rounded to XQ: integer products
        xq, sx, xsum, xerr = x[1][0], x[2][0], x[3][0], x[4][0]
        # Each row asks for the one 4 KB ahead, as linear's int8 rows: one Zen 3 core streaming
        # int5 768 x 3072 (1920-byte rows) 8.0 -> 14.6 G weights/s, 768 x 768 11.0 -> 13.4.
        ahead = 4096 // Q.shape[1]  # rows
        for i in range(i0, i1):
            if 0 < ahead and i + ahead < i1:
                for j in range(0, Q.shape[1], 64):
                    prefetch(Q, i + ahead, j)
            if kind == I5:
                y[0, i] = _group_dot5(Q, i, DM, xq, sx, xsum, xerr)
            else:
                y[0, i] = _group_dot(Q, i, DM, xq, sx, xsum, xerr)
        return
    _batch_rows(Q, kind, DM, x[0], y, i0, i1, buf)


@njit(fastmath=True)  # a call of its own, so that the single-row loops above compile as before
def _batch_rows(Q, kind, DM, x, y, i0, i1, buf):  # x (N, in) float32
    """Batches: two rows at a time widened in registers (dot_tile), else four rows widened once
    into a buffer (as linear.py's _packed_rows), used for every row of x."""
    rows4, i = np.empty((4, buf.shape[0]), np.float32), tiles_int4(Q, kind, DM, x, y, i0, i1)
    while i + 4 <= i1:
        for k in range(4):
            if kind == I5:
                _widen_row5(Q, i + k, DM, rows4[k])
            else:
                _widen_row4(Q, i + k, DM, rows4[k])
        dot_rows4(rows4, 0, x, y, i)
        i += 4
    for r in range(i, i1):
        if kind == I5:
            _widen_row5(Q, r, DM, buf)
        else:
            _widen_row4(Q, r, DM, buf)
        dot_rows(buf, x, y, r)


@njit
def activations_int4(x, rounds, kind):  # x (N, in) -> (x, xq (1, in), sx, xsum, xerr (1, in/32))
    """For one float32 row (rounds: x is float32), each group of 32 rounded on its own scale:
    x[j] ~= sx[g] xq[j], |xq| <= LEVELS (XQ: int8 with VNNI or AVX2, else int16; in `pair_order`
    for AVX2); x's float32 sums per group; and xerr[g] = c (xsum[g] - sx[g] sum_j xq[j]), c = 7.5
    for int4 (kind I4), 15.5 for int5: the centre of the values 0..15 (0..31). Else x alone (the
    float path) and empty arrays.

    Why xerr: the integer products take q in 0..15, so the rounding of x meets d q, which sits
    off zero by about the group's whole range; d * xerr moves it to d (q - 7.5), centred like
    the weights, at one multiply-add per group: int8 x against a random 70 x 768 matrix, error
    1.6e-2 -> 4.0e-3 of max |y| (the m terms take x's exact sums either way)."""
    x, xq, sx, xsum, xerr = quantize_x(x, rounds, XQ, LEVELS, 15.5 if kind == I5 else 7.5)
    if PAIRED:
        pair_order(xq)
    return x, xq, sx, xsum, xerr


@njit
def pair_order(xq):  # xq (rows, in), rearranged in place as the AVX2 kernel reads it
    """Each pair of groups of each whole block of 8 (256 columns), 64 values, gets its middle two
    quarters swapped: [g: 0-15, g + 1: 0-15, g: 16-31, g + 1: 16-31], as the two groups' 32 bytes
    of nibbles lie (low nibbles, then high). Columns past the last whole block stay in order."""
    for r in range(xq.shape[0]):
        for c in range(0, xq.shape[1] // (8 * GROUP) * (8 * GROUP), 2 * GROUP):
            for j in range(c + GROUP // 2, c + GROUP):
                xq[r, j], xq[r, j + GROUP // 2] = xq[r, j + GROUP // 2], xq[r, j]


@njit
def quantize_x(x, rounds, dtype, levels, centre=7.5):  # activations_int4, xq of this dtype and range
    N, n = x.shape
    groups = n // GROUP
    xq = np.zeros((1 if N == 1 and rounds else 0, n), dtype)
    sx = np.zeros((xq.shape[0], groups), np.float32)
    xsum = np.zeros((xq.shape[0], groups), np.float32)
    xerr = np.zeros((xq.shape[0], groups), np.float32)
    for g in range(groups if xq.shape[0] else 0):
        top, finite = np.float32(0.0), True
        for j in range(g * GROUP, (g + 1) * GROUP):
            top = max(top, abs(x[0, j]))
            finite &= abs(x[0, j]) < np.inf
            xsum[0, g] += x[0, j]
        qsum = 0
        if finite and top > 0:
            inv = np.float64(levels) / top  # float64: a subnormal top would overflow float32
            for j in range(g * GROUP, (g + 1) * GROUP):
                xq[0, j] = np.rint(x[0, j] * inv)
                qsum += xq[0, j]
        sx[0, g] = np.float32(top / np.float64(levels)) if finite else np.float32(np.nan)  # NaN in, NaN out
        xerr[0, g] = np.float32(centre) * (xsum[0, g] - sx[0, g] * np.float32(qsum))
    return x, xq, sx, xsum, xerr


@njit(nogil=True)  # prompts widen blocks on linear's thread pool: no GIL, so they run at once
def widen_rows(Q, kind, DM, r0, out):  # rows r0 : r0 + len(out) of the matrix -> out (n, in) float32
    for i in range(out.shape[0]):
        if kind == I5:
            _widen_row5(Q, r0 + i, DM, out[i])
        else:
            _widen_row4(Q, r0 + i, DM, out[i])
