"""The int4 kernels of linear.py: y = x @ W.T for W in storage_int4's layout (groups of 32 4-bit
values, a float16 scale d and minimum m per group), W[i, 32 g + j] = d[i, g] q[i, g, j] + m[i, g].

Decode (one float32 row of x) multiplies integers: x is rounded to int16 once per vector,
x ~= sx * xq (|xq| <= 32767: a group's sums of 15 * 32767 products cannot overflow int32), and

    y[i] = sx * sum_g d[i, g] * (q[i, g, :] . xq[g]) + sum_g m[i, g] * xsum[g]

with xsum[g] the float32 sum of x over group g, computed once per vector too. Batches (N > 1) and
float64 x widen each row to float32 in a buffer, q * d + m, and use it for every row of x; prompts
widen blocks of rows the same way before BLAS (`widen_rows`).

Why explicit vectors: written as plain loops (linear.py's style), LLVM fully unrolls a group's
16-byte loop and then vectorizes across groups with gathers: 1.4-2.2 G weights/s on one core.
So a group's work is written here in LLVM IR as whole vectors (Numba intrinsics): one 16-byte
load, the two nibble halves widened to one <32 x i16> that meets xq's 32 values in a pmaddwd, the
16 pair sums converted and scaled by d into a float accumulator that lives across groups (two,
alternating, so that consecutive groups do not wait on each other's add), one horizontal sum per
row. Generic LLVM vectors: AVX-512 gets zmm registers, AVX2 pairs of ymm. One core of the
project's Zen 4, 169M shapes: 15-21 G weights/s with the matrix in cache (the same vectors in
float arithmetic: 12-15), 10-19 streaming from memory (int8's kernel: 16-22, on 8 bits a weight
to int4's 5: int4 is bound by this arithmetic, not by memory).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .linear import _dot_rows
from .storage_int4 import GROUP

_HALF = GROUP // 2  # bytes per group
_F32, _I64, _I32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
_VF = ir.VectorType(_F32, _HALF)                   # <16 x float>
_VB = ir.VectorType(ir.IntType(8), _HALF)          # a group's 16 bytes
_VW = ir.VectorType(ir.IntType(16), _HALF)         # <16 x i16>
_VX = ir.VectorType(ir.IntType(16), GROUP)         # <32 x i16>: a group of xq, or of widened q
_FAST = ("fast",)


def _data(context, builder, aryty, ary):  # an array argument -> pointer to its first element
    return context.make_array(aryty)(context, builder, ary).data


def _row(context, builder, aryty, ary, i):  # pointer to row i of a C-contiguous 2-D or 3-D array
    a = context.make_array(aryty)(context, builder, ary)
    size = builder.extract_value(a.shape, 1)
    if aryty.ndim == 3:
        size = builder.mul(size, builder.extract_value(a.shape, 2))
    return builder.gep(a.data, [builder.mul(i, size)])


def _splat(builder, value, n):  # scalar -> <n x type(value)>, every lane the value
    vec = ir.Constant(ir.VectorType(value.type, n), None)
    vec = builder.insert_element(vec, value, _I32(0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _scale(builder, dmrow, g, k):  # float16 bits dmrow[2 g + k] (k 0: d, 1: m) -> <16 x float> splat
    h = builder.bitcast(builder.load(builder.gep(dmrow, [builder.add(builder.shl(g, _I64(1)), _I64(k))])),
                        ir.HalfType())
    return builder.fpext(_splat(builder, h, _HALF), _VF)


def _nibbles(builder, qrow, g, vtype):  # group g's 16 bytes -> (low nibbles, high nibbles) as vtype
    raw = builder.load(builder.bitcast(builder.gep(qrow, [builder.mul(g, _I64(_HALF))]),
                                       _VB.as_pointer()), align=1)
    wide = builder.zext(raw, vtype)
    return (builder.and_(wide, ir.Constant(vtype, [15] * _HALF)),
            builder.lshr(wide, ir.Constant(vtype, [4] * _HALF)))


def _pair_values(builder, qrow, g):  # groups g, g + 1 -> their 32 values each, as two <32 x i16>
    raw = builder.load(builder.bitcast(builder.gep(qrow, [builder.mul(g, _I64(_HALF))]),
                                       ir.VectorType(ir.IntType(8), GROUP).as_pointer()), align=1)
    wide = builder.zext(raw, _VX)
    lo = builder.and_(wide, ir.Constant(_VX, [15] * GROUP))
    hi = builder.lshr(wide, ir.Constant(_VX, [4] * GROUP))
    take = lambda first: ir.Constant(ir.VectorType(_I32, GROUP), [first + k for k in range(_HALF)] +  # noqa
                                     [GROUP + first + k for k in range(_HALF)])
    return builder.shuffle_vector(lo, hi, take(0)), builder.shuffle_vector(lo, hi, take(_HALF))


def _group_sums(builder, qrow, xq, g, q=None):  # -> <16 x float>: pair sums of q[g] * xq[32 g : 32 g + 32]
    if q is None:  # else: the group's values as <32 x i16>, from _pair_values
        lo, hi = _nibbles(builder, qrow, g, _VW)
        q = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, GROUP), list(range(GROUP))))
    x = builder.load(builder.bitcast(builder.gep(xq, [builder.mul(g, _I64(GROUP))]), _VX.as_pointer()), align=2)
    wide = ir.VectorType(_I32, GROUP)
    p = builder.mul(builder.sext(q, wide), builder.sext(x, wide))   # LLVM: one pmaddwd with the
    pick = lambda first: ir.Constant(ir.VectorType(_I32, _HALF), list(range(first, GROUP, 2)))  # noqa
    return builder.sitofp(builder.add(builder.shuffle_vector(p, p, pick(0)),  # add of the pairs
                                      builder.shuffle_vector(p, p, pick(1))), _VF)


@intrinsic
def _group_dot(typingctx, Q, i, DM, xq, sx, xsum):
    """sx * sum_g d[i, g] (q[i, g, :] . xq[32 g : 32 g + 32]) + sum_g m[i, g] xsum[g], float32.
    Q (out, in/2) uint8, DM (out, in/32, 2) float16 bits [d, m] as uint16, xq (in,) int16, xsum
    (in/32,) float32, all C-contiguous.

    Groups go 16 at a time: their 16 [d, m] pairs are one 64-byte load, split into a vector of d
    and one of m (the m terms: one multiply-add for the 16), and each group's d is a lane of it
    (a permute) rather than a scalar load, conversion and broadcast of its own; pairs of groups
    share one 32-byte load. Against one group at a time with the m terms in a scalar loop (a
    4-cycle chain per group), one core, matrix in cache, interleaved runs: 768 x 768 13.4-14.3
    -> 15.0-17.6 G weights/s, 256 x 3072 13.6-15.5 -> 18.6-21.2."""
    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        qrow = _row(context, builder, sig.args[0], args[0], i)
        dmrow = _row(context, builder, sig.args[2], args[2], i)
        xp = _data(context, builder, sig.args[3], args[3])
        xsp = _data(context, builder, sig.args[5], args[5])
        groups = builder.extract_value(context.make_array(sig.args[2])(context, builder, args[2]).shape, 1)
        zero = ir.Constant(_VF, [0.0] * _HALF)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(3)]  # d terms (two), m terms
        lanes = lambda first: ir.Constant(ir.VectorType(_I32, _HALF), list(range(first, GROUP, 2)))  # noqa
        half16 = ir.VectorType(ir.HalfType(), _HALF)

        def add(k, g, d, q=None):  # acc[k] += d * sums of group g
            term = builder.fmul(_group_sums(builder, qrow, xp, g, q), d, flags=_FAST)
            builder.store(builder.fadd(builder.load(acc[k]), term, flags=_FAST), acc[k])

        blocks = builder.lshr(groups, _I64(4))
        with cgutils.for_range(builder, blocks) as loop:  # 16 groups
            g0 = builder.shl(loop.index, _I64(4))
            pairs = builder.load(builder.bitcast(builder.gep(dmrow, [builder.shl(g0, _I64(1))]), _VX.as_pointer()), align=2)
            d, m = (builder.fpext(builder.bitcast(builder.shuffle_vector(pairs, pairs, lanes(k)), half16), _VF)
                    for k in (0, 1))
            xs = builder.load(builder.bitcast(builder.gep(xsp, [g0]), _VF.as_pointer()), align=4)
            builder.store(builder.fadd(builder.load(acc[2]), builder.fmul(m, xs, flags=_FAST), flags=_FAST), acc[2])
            for k in range(0, _HALF, 2):
                pair = _pair_values(builder, qrow, builder.add(g0, _I64(k)))
                for j in (0, 1):
                    dk = builder.shuffle_vector(d, d, ir.Constant(ir.VectorType(_I32, _HALF), [k + j] * _HALF))
                    add(j, builder.add(g0, _I64(k + j)), dk, pair[j])
        with cgutils.for_range(builder, builder.sub(groups, builder.shl(blocks, _I64(4)))) as loop:  # the rest
            g = builder.add(builder.shl(blocks, _I64(4)), loop.index)
            add(0, g, _scale(builder, dmrow, g, 0))
            xs = _splat(builder, builder.fmul(builder.load(builder.gep(xsp, [g])), _F32(1.0 / _HALF)), _HALF)
            builder.store(builder.fadd(builder.load(acc[2]), builder.fmul(_scale(builder, dmrow, g, 1), xs,
                                                                          flags=_FAST), flags=_FAST), acc[2])
        sxv = _splat(builder, args[4], _HALF)
        total = builder.fadd(builder.fmul(builder.fadd(builder.load(acc[0]), builder.load(acc[1]), flags=_FAST),
                                          sxv, flags=_FAST), builder.load(acc[2]), flags=_FAST)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32, _VF]),
                                                "llvm.vector.reduce.fadd.v16f32")
        return builder.call(reduce, [_F32(0.0), total], fastmath=_FAST)
    if _c(Q, 2, types.uint8) and _c(DM, 3, types.uint16) and _c(xq, 1, types.int16) and sx == types.float32 \
            and _c(xsum, 1, types.float32) and isinstance(i, types.Integer):
        return types.float32(Q, i, DM, xq, sx, xsum), codegen


def _c(t, ndim, dtype):  # a C-contiguous array type of that rank and dtype
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C" and t.dtype == dtype


@intrinsic
def _widen_row(typingctx, Q, i, DM, out):
    """out[:] = row i as float32, q * d + m group by group; out (in,) float32 C-contiguous."""
    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        qrow = _row(context, builder, sig.args[0], args[0], i)
        dmrow = _row(context, builder, sig.args[2], args[2], i)
        op = _data(context, builder, sig.args[3], args[3])
        groups = builder.extract_value(context.make_array(sig.args[2])(context, builder, args[2]).shape, 1)
        with cgutils.for_range(builder, groups) as loop:
            g = loop.index
            d, m = _scale(builder, dmrow, g, 0), _scale(builder, dmrow, g, 1)
            base = builder.gep(op, [builder.mul(g, _I64(GROUP))])
            for k, half in enumerate(_nibbles(builder, qrow, g, ir.VectorType(_I32, _HALF))):
                value = builder.fadd(builder.fmul(builder.sitofp(half, _VF), d, flags=_FAST), m, flags=_FAST)
                builder.store(value, builder.bitcast(builder.gep(base, [_I64(k * _HALF)]), _VF.as_pointer()), align=4)
        return context.get_dummy_value()
    if _c(Q, 2, types.uint8) and _c(DM, 3, types.uint16) and _c(out, 1, types.float32) and isinstance(i, types.Integer):
        return types.void(Q, i, DM, out), codegen


@njit(fastmath=True)
def rows_int4(Q, DM, x, y, i0, i1, buf):  # Q (out, in/2), DM (out, in/32, 2) bits, y (N, out)
    """y[:, i] = x @ W[i] for i0 <= i < i1; x as `activations_int4` made it."""
    if x[1].shape[0] == 1:  # one float32 row, rounded to int16: integer products
        xq, sx, xsum = x[1][0], x[2][0], x[3][0]
        for i in range(i0, i1):  # (prefetching rows 2-8 KB ahead, as int8 does: no gain measured)
            y[0, i] = _group_dot(Q, i, DM, xq, sx, xsum)
        return
    for i in range(i0, i1):  # batches, float64: widen the row once, use it for every row of x
        _widen_row(Q, i, DM, buf)
        _dot_rows(buf, x[0], y, i)


@njit
def activations_int4(x, rounds):  # x (N, in) -> (x, xq (1, in) int16, sx (1,), xsum (1, in/32))
    """For one float32 row (rounds: x is float32): x ~= sx * xq, xq int16 with max |xq| = 32767,
    and the float32 sums of x over each group; else x alone (the float path) and empty arrays."""
    N, n = x.shape
    groups = n // GROUP
    if N != 1 or not rounds:
        return x, np.empty((0, n), np.int16), np.empty(0, np.float32), np.empty((0, groups), np.float32)
    top, finite = np.float32(0.0), True
    for j in range(n):
        top = max(top, abs(x[0, j]))
        finite &= abs(x[0, j]) < np.inf
    xq = np.zeros((1, n), np.int16)
    if finite and top > 0:
        inv = np.float64(32767.0) / top  # float64: a subnormal top would overflow float32
        for j in range(n):
            xq[0, j] = np.int16(np.rint(x[0, j] * inv))
    xsum = np.zeros((1, groups), np.float32)
    for g in range(groups):
        for j in range(g * GROUP, (g + 1) * GROUP):
            xsum[0, g] += x[0, j]
    sx = np.full(1, np.float32(top / np.float64(32767.0)) if finite else np.float32(np.nan))  # NaN in, NaN out
    return x, xq, sx, xsum


@njit(nogil=True)  # prompts widen blocks on linear's thread pool: no GIL, so they run at once
def widen_rows(Q, DM, r0, r1):  # -> (r1 - r0, in) float32, rows r0:r1 of the matrix
    out = np.empty((r1 - r0, 2 * Q.shape[1]), np.float32)
    for i in range(r0, r1):
        _widen_row(Q, i, DM, out[i - r0])
    return out
