"""Batched decode's tile, written as LLVM IR on whole vectors: R weight rows times every row of x
(2 <= N <= 16), y[n, r + a] = W[r + a] . x[n], weights of any storage widened to float32 in
registers, with the memory ahead of the rows asked for while they are multiplied.

Why: a batch of 8 does 8 multiply-adds per weight read, so a core spends most of its time
computing, and the hardware's prefetcher alone then leaves the rows' lines to arrive as they
are needed (it starts over at each 4 KB page): the core waits on memory, then computes, and the
two times add up. Asking for the line a few rows ahead with every line used keeps the memory
busy while the core computes. One Zen 3 core, float32, N = 8, 169M shapes, streaming 200 MB of
weights against the same loops in plain Numba (dot_rows.dot_rows2): 768 x 768 16 -> 24 G
multiply-adds/s, 3072 x 768 17 -> 24 (from cache: 31-33 both).

The loop: columns go in chunks of CHUNK, so that the chunk of the R rows and of every row of x
stays in L1 (a 3072-column x is 96 KB for N = 8); within a chunk, each group of four rows of x
keeps its 4 R accumulators (R weight rows x 4 rows of x, 8 floats each) in registers, 16
columns a step: two 8-float halves of each weight row, widened once, times four rows of x.
Between chunks the accumulators wait in a stack buffer. Rows of x past the last group of four
(N % 4) make a last group with row N - 1 repeated, its extra sums not stored; weight rows past
the end of a range likewise repeat its last row, so every row of a range goes through the tile,
and a row's sum is the same wherever a range (a parallel job) starts.

R = 3 for float32, bfloat16 and float16: 12 accumulators, 3 weight rows and a row of x fill
AVX2's 16 registers, and each load of x feeds three multiply-adds, not two. Later groups widen
the 16-bit rows again from L1 (two cheap instructions) rather than keep them in a buffer: one Zen
3 core, N = 8, 169M shapes, in G multiply-adds/s against 2 rows with the buffer: float32 25-27
-> 29-30, bfloat16 30-31 -> 34-35, float16 30-33 -> 37-40; the buffer with 3 rows lost (25-27).
int8 keeps R = 2 (integer products: 3 rows were 7-14% slower on two of three shapes), as do
int4 and int5, which keep the rows the first group widened in a 4 KB buffer for the others:
unpacking costs more than reloading (169M, B = 8, whole-model decode int4 22 -> 19 ms, int5 31
-> 23).
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

from .dot_rows import WIDE
from .int4_sums import _HALF, group_values
from .llvm_vectors import F32, FAST, I32, I64, c_array, const, row, vec
from .storage_int4 import GROUP, I5

CHUNK = 512       # columns per pass: 2 weight rows + 8 rows of x, 40 KB float32 at most
_GROUPS = 4       # groups of four rows of x: N <= 16 (linear.SMALL_N)
_V8, _V16 = ir.VectorType(F32, 8), ir.VectorType(F32, 16)
_I8P = ir.IntType(8).as_pointer()


class _Rows:
    """How a storage's weight rows are read, `width` columns a step: `rows` -> the R rows'
    handles and the bytes of a row; `at` -> the byte address of a step (what is prefetched);
    `load` -> the step's values, <16 x float> (int8: <16 x i32>) vectors. R weight rows a tile,
    and `wide`: whether the first group of rows of x keeps the rows it widened for the others."""
    width = 16

    def __init__(self, name, itemsize, load, R):
        self.name, self.itemsize, self._load, self.R, self.wide = name, itemsize, load, R, False

    def rows(self, context, builder, sig, args, rs, cols):  # -> ([handle of row r for r in rs], bytes a row)
        stride = builder.mul(cols, I64(self.itemsize))
        w = builder.bitcast(context.make_array(sig.args[0])(context, builder, args[0]).data, _I8P)
        return [builder.gep(w, [builder.mul(r, stride)]) for r in rs], stride

    def at(self, builder, row, j):
        return builder.gep(row, [builder.mul(j, I64(self.itemsize))])

    def load(self, builder, row, j):
        return [self._load(builder, self.at(builder, row, j))]


class _Int4Rows(_Rows):
    """int4 / int5 (storage_int4's layout): a step is a group of 32, two <16 x float> q * d + m,
    int4_sums.group_values; the scales array DM is the tile's 6th argument."""
    width = GROUP

    def __init__(self, bits):
        self.name, self.bits, self.R, self.wide = f"int{bits}", bits, 2, True

    def rows(self, context, builder, sig, args, rs, cols):
        stride = builder.extract_value(context.make_array(sig.args[0])(context, builder, args[0]).shape, 1)
        half = builder.mul(builder.lshr(cols, I64(5)), I64(_HALF))  # int5: the high bits after the nibbles
        handles = []
        for r in rs:
            q = row(context, builder, sig.args[0], args[0], r)
            handles.append((q, row(context, builder, sig.args[5], args[5], r), builder.gep(q, [half])))
        return handles, stride

    def at(self, builder, row, j):
        return builder.gep(row[0], [builder.lshr(j, I64(1))])

    def load(self, builder, row, j):
        q, dm, hb = row
        return group_values(builder, q, dm, hb, builder.lshr(j, I64(5)), self.bits)


def _float32(builder, p):  # 16 float32 at p (i8*) -> <16 x float>
    return vec(builder, p, 16, F32, 4)


def _bfloat16(builder, p):  # 16 bfloat16 bits: a float32's upper half
    v = builder.zext(vec(builder, p, 16, ir.IntType(16), 2), ir.VectorType(I32, 16))
    return builder.bitcast(builder.shl(v, ir.Constant(v.type, [16] * 16)), _V16)


def _float16(builder, p):
    return builder.fpext(vec(builder, p, 16, ir.HalfType(), 2), _V16)


def _int8(builder, p):  # 16 int8 -> <16 x i32>: multiplied by x rounded to int16 (linear.activations)
    return builder.sext(vec(builder, p, 16, ir.IntType(8), 1), ir.VectorType(I32, 16))


def _float_step(builder, wv, xp):  # <16 x float> weights . 16 floats of x at xp -> two <8 x float>
    xv = vec(builder, xp, 16, F32, 4)
    return [builder.fmul(builder.shuffle_vector(wv, wv, const(range(h, h + 8))),
                         builder.shuffle_vector(xv, xv, const(range(h, h + 8))), flags=FAST) for h in (0, 8)]


def _int16_step(builder, wv, xp):  # <16 x i32> weights . 16 int16 of x -> one <8 x i32>
    """Products of neighbours added: LLVM makes it one pmaddwd."""
    p = builder.mul(wv, builder.sext(vec(builder, xp, 16, ir.IntType(16), 2), wv.type))
    return [builder.add(builder.shuffle_vector(p, p, const(range(0, 16, 2))),
                        builder.shuffle_vector(p, p, const(range(1, 16, 2))))]


def _tile_of(storage):  # -> the intrinsic below, for weights stored as `storage` (a _Rows) reads them
    integer, R = storage.name == "int8", storage.R

    def dot_tile(typingctx, W, r, x, y, stop, a5, a6):
        """y[n, r + a] = W[r + a] . x[n] for a < R with r + a < stop, and every n < N. W (out, in)
        stored (bfloat16 pairs in uint32: the same bytes as in uint16); x (N, in) float32 with in %
        16 == 0 (int4, int5: 32) and N <= 16; y (N, out) float32; all C-contiguous. Rows at or past
        `stop` are row stop - 1 again, their sums not stored, so that every row of a range goes
        through the tile and its sum does not depend on where a range starts. a5, a6: int8: x (N,
        in) is int16, y[n, i] = float32(sum) * sx[n] * scale[i] in float64 (a5 sx (N,) float64,
        a6 scale (out,) float32), as linear._int8_rows finishes a row; int4 / int5: a5 the scales
        (out, in/32, 2) float16 bits; float storages: anything."""
        def codegen(context, builder, sig, args):
            xa, ya = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[2:4], args[2:4]))
            r, stop = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 4))
            rows, cols = builder.extract_value(xa.shape, 0), builder.extract_value(xa.shape, 1)
            out = builder.extract_value(ya.shape, 1)
            last = builder.sub(stop, I64(1))
            wrows = [builder.add(r, I64(a)) for a in range(R)]
            stored = [builder.icmp_unsigned("<", w, stop) for w in wrows]
            wrows = [builder.select(ok, w, last) for ok, w in zip(stored, wrows)]
            ws_at, stride = storage.rows(context, builder, sig, args, wrows, cols)
            # the same columns a whole number of tiles ahead, at least 4 KB
            ahead = builder.mul(stride, builder.mul(builder.add(builder.udiv(I64(4095), builder.mul(stride, I64(R))),
                                                                I64(1)), I64(R)))
            groups = builder.lshr(builder.add(rows, I64(3)), I64(2))  # the last may repeat row N - 1
            groups = builder.select(builder.icmp_unsigned("<", groups, I64(_GROUPS)), groups, I64(_GROUPS))
            v8 = ir.VectorType(I32, 8) if integer else _V8
            xsize, step = (2, _int16_step) if integer else (4, _float_step)
            K = 4 * R  # accumulators: R weight rows x 4 rows of x
            saved = cgutils.alloca_once_value(builder, ir.Constant(ir.ArrayType(v8, K * _GROUPS), None))
            saved = builder.bitcast(saved, v8.as_pointer())
            with cgutils.for_range(builder, builder.mul(groups, I64(K))) as loop:
                builder.store(ir.Constant(v8, None), builder.gep(saved, [loop.index]))
            acc = [cgutils.alloca_once(builder, v8) for _ in range(K)]  # registers, within a group
            # the chunk of the R rows as the first group widened them, for the others (storage.wide:
            # int4 / int5, whose unpacking costs more than a load)
            wide = None if not storage.wide else builder.bitcast(
                cgutils.alloca_once(builder, ir.ArrayType(_V16, R * CHUNK // 16)), _V16.as_pointer())
            pf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [_I8P, I32, I32, I32]),
                                                "llvm.prefetch.p0")
            w = storage.width
            steps, per_chunk = builder.udiv(cols, I64(w)), I64(CHUNK // w)
            chunks = builder.udiv(builder.add(steps, I64(CHUNK // w - 1)), per_chunk)
            add = builder.add if integer else lambda a, b: builder.fadd(a, b, flags=FAST)
            with cgutils.for_range(builder, chunks) as chunk:
                s0 = builder.mul(chunk.index, per_chunk)
                s1 = builder.add(s0, per_chunk)
                s1 = builder.select(builder.icmp_unsigned("<", s1, steps), s1, steps)

                def group_pass(g, first):  # rows 4 g .. 4 g + 3 of x over this chunk's steps
                    xs = []
                    for b in range(4):
                        n = builder.add(builder.shl(g, I64(2)), I64(b))
                        n = builder.select(builder.icmp_unsigned("<", n, rows), n, builder.sub(rows, I64(1)))
                        xs.append(builder.gep(builder.bitcast(xa.data, _I8P), [builder.mul(builder.mul(n, cols), I64(xsize))]))
                    for k in range(K):
                        builder.store(builder.load(builder.gep(saved, [builder.add(builder.mul(g, I64(K)), I64(k))])), acc[k])
                    with cgutils.for_range_slice(builder, s0, s1, I64(1)) as (j, _):
                        spot = builder.mul(builder.sub(j, s0), I64(w // 16))  # the step's place in wide
                        j = builder.mul(j, I64(w))  # column
                        ws = []
                        for a, wr in enumerate(ws_at):
                            places = [] if wide is None else [
                                builder.gep(wide, [builder.add(spot, I64(a * CHUNK // 16 + h))]) for h in range(w // 16)]
                            if first or wide is None:
                                builder.call(pf, [builder.gep(storage.at(builder, wr, j), [ahead]), I32(0), I32(3), I32(1)])
                                ws.append(storage.load(builder, wr, j))
                                if wide is not None:
                                    for v, place in zip(ws[-1], places):
                                        builder.store(v, place)
                            else:
                                ws.append([builder.load(place) for place in places])
                        for b, xp in enumerate(xs):
                            for h in range(w // 16):
                                at = builder.gep(xp, [builder.mul(builder.add(j, I64(16 * h)), I64(xsize))])
                                for a, wv in enumerate(ws):
                                    for p in step(builder, wv[h], at):
                                        builder.store(add(builder.load(acc[4 * a + b]), p), acc[4 * a + b])
                    for k in range(K):
                        builder.store(builder.load(acc[k]), builder.gep(saved, [builder.add(builder.mul(g, I64(K)), I64(k))]))

                group_pass(I64(0), True)
                with cgutils.for_range_slice(builder, I64(1), groups, I64(1)) as (g, _):
                    group_pass(g, False)
            if integer:
                reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I32, [v8]),
                                                        "llvm.vector.reduce.add.v8i32")
                sxp, scp = (context.make_array(t)(context, builder, a).data for t, a in zip(sig.args[5:], args[5:]))
            else:
                reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32, [F32, v8]),
                                                        "llvm.vector.reduce.fadd.v8f32")
            yp = builder.bitcast(ya.data, F32.as_pointer())
            f64 = ir.DoubleType()
            with cgutils.for_range(builder, groups) as group:
                g = group.index
                for k in range(K):
                    a, b = divmod(k, 4)
                    total = builder.load(builder.gep(saved, [builder.add(builder.mul(g, I64(K)), I64(k))]))
                    n = builder.add(builder.shl(g, I64(2)), I64(b))
                    with builder.if_then(builder.and_(builder.icmp_unsigned("<", n, rows), stored[a])):
                        if integer:  # float32(sum) * sx[n] * scale[row], in float64
                            total = builder.fpext(builder.sitofp(builder.call(reduce, [total]), F32), f64)
                            total = builder.fmul(total, builder.load(builder.gep(sxp, [n])))
                            total = builder.fptrunc(builder.fmul(total, builder.fpext(builder.load(builder.gep(scp, [wrows[a]])), f64)), F32)
                        else:
                            total = builder.call(reduce, [F32(0.0), total], fastmath=FAST)
                        builder.store(total, builder.gep(yp, [builder.add(builder.mul(n, out), wrows[a])]))
            return context.get_dummy_value()
        arrays = all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" for t in (W, x, y))
        ok = arrays and x.dtype == (types.int16 if integer else types.float32) and y.dtype == types.float32 and \
            isinstance(r, types.Integer) and isinstance(stop, types.Integer)
        if isinstance(storage, _Int4Rows):
            ok = ok and W.dtype == types.uint8 and c_array(a5, 3, types.uint16)
        else:
            ok = ok and W.dtype.bitwidth == 8 * storage.itemsize * (2 if W.dtype == types.uint32 else 1)
        if integer:
            ok = ok and c_array(a5, 1, types.float64) and c_array(a6, 1, types.float32)
        if ok:
            return types.void(W, r, x, y, stop, a5, a6), codegen
    dot_tile.__name__ = dot_tile.__qualname__ = f"dot_tile_{storage.name}"
    return intrinsic(dot_tile)


_FLOAT_ROWS = 3  # R of the three float storages: `tiles` steps by it for all of them
_FLOAT32, _BFLOAT16, _FLOAT16 = (_Rows(name, size, load, _FLOAT_ROWS) for name, size, load in (
    ("float32", 4, _float32), ("bfloat16", 2, _bfloat16), ("float16", 2, _float16)))
_INT8, _INT4, _INT5 = _Rows("int8", 1, _int8, 2), _Int4Rows(4), _Int4Rows(5)
tile_float32, tile_bfloat16, tile_float16 = _tile_of(_FLOAT32), _tile_of(_BFLOAT16), _tile_of(_FLOAT16)
tile_int8, tile_int4, tile_int5 = _tile_of(_INT8), _tile_of(_INT4), _tile_of(_INT5)


def tiles(A, f16, x, y, i0, i1):  # A (out, in) stored, x (N, in), y (N, out) -> int
    """Rows i0 <= i < i1 of y = x @ A.T by the tile above, R at a time: returns the first row it
    left (i1, or i0 if x is not for it). f16: uint16 A holds float16 bits, not bfloat16. Batches
    only (2 <= N <= 16), float32 x with in % 16 == 0, and not on AVX-512, which keeps dot_rows4's
    4 x 4 tile (measured there)."""


@overload(tiles, inline="always")
def _tiles(A, f16, x, y, i0, i1):
    one = {types.float32: tile_float32, types.uint32: tile_bfloat16}.get(A.dtype)
    if WIDE or x.dtype != types.float32 or (one is None and A.dtype != types.uint16):
        return lambda A, f16, x, y, i0, i1: i0
    R = _FLOAT_ROWS
    tile = _halves if one is None else njit(inline="always")(lambda A, r, x, y, stop, f16: one(A, r, x, y, stop, x, x))

    def impl(A, f16, x, y, i0, i1):
        if x.shape[1] % 16 or not 2 <= x.shape[0] <= 4 * _GROUPS:
            return i0
        for i in range(i0, i1, R):
            tile(A, i, x, y, i1, f16)
        return i1
    return impl


@njit(inline="always")
def _halves(A, r, x, y, stop, f16):  # uint16: float16 or bfloat16 bits, told at run time
    if f16:
        tile_float16(A, r, x, y, stop, x, x)
    else:
        tile_bfloat16(A, r, x, y, stop, x, x)


def tiles_int8(Q, scale, xq, sx, y, i0, i1):  # Q (out, in) int8, xq (N, in) int16 -> int
    """`tiles` for int8 weights and rows of x rounded to int16 (linear.activations): rows i0 <= i
    < i1; returns the first row it left (i0 for float64 y: float64 x is not rounded)."""


@overload(tiles_int8, inline="always")
def _tiles_int8(Q, scale, xq, sx, y, i0, i1):
    if y.dtype != types.float32:
        return lambda Q, scale, xq, sx, y, i0, i1: i0
    R = _INT8.R

    def impl(Q, scale, xq, sx, y, i0, i1):
        if xq.shape[1] % 16 or xq.shape[0] > 4 * _GROUPS:
            return i0
        for i in range(i0, i1, R):
            tile_int8(Q, i, xq, y, i1, sx, scale)
        return i1
    return impl


def tiles_int4(Q, kind, DM, x, y, i0, i1):  # Q (out, in/2 or 5 in/8) uint8, DM (out, in/32, 2) -> int
    """`tiles` for int4 / int5 weights (kind: storage_int4.I4 / I5): widened in registers, q * d +
    m, against float32 rows of x; returns the first row it left."""


@overload(tiles_int4, inline="always")
def _tiles_int4(Q, kind, DM, x, y, i0, i1):
    if WIDE or x.dtype != types.float32:
        return lambda Q, kind, DM, x, y, i0, i1: i0
    R = _INT4.R  # int5's too

    def impl(Q, kind, DM, x, y, i0, i1):
        if x.shape[1] % GROUP or not 2 <= x.shape[0] <= 4 * _GROUPS:
            return i0
        for i in range(i0, i1, R):
            if kind == I5:
                tile_int5(Q, i, x, y, i1, DM, DM)
            else:
                tile_int4(Q, i, x, y, i1, DM, DM)
        return i1
    return impl
