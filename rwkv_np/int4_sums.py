"""The integer pieces of linear_int4.py's kernels, as LLVM IR on whole vectors: a group's
nibbles, scales and fifth bits, and the sums of two groups of weights with rounded x, one builder
per instruction set (`_pair_sums_vnni` for AVX512-VNNI, `_pair_sums_avx2` for AVX2 with x in
pair order, `_pair_sums_int16` generic), and one group at a time for leftover groups
(`_group_sums`). linear_int4.py's docstrings say why each is built the way it is; the layout is
storage_int4.py's."""
from llvmlite import ir
from numba.core import cgutils

from .llvm_vectors import FAST, F32 as _F32, I32 as _I32, I64 as _I64
from .llvm_vectors import bits_as_lanes, const as _const, splat as _splat, vec as _vec
from .storage_int4 import GROUP

_HALF = GROUP // 2  # bytes per group
_VF = ir.VectorType(_F32, _HALF)                   # <16 x float>
_VB = ir.VectorType(ir.IntType(8), _HALF)          # a group's 16 bytes
_VX = ir.VectorType(ir.IntType(16), GROUP)         # <32 x i16>: a group of xq, or of widened q


def _high(builder, q, hb, g):  # int5: q (n nibbles from group g on) + 16 where the 5th bit is set
    """hb points at the row's high-bit plane (4 bytes a group, bit j = 5th bit of value j):
    value = nibble + 16 bit, the bits a mask (AVX-512: kmov from memory, then LLVM's or and a
    masked move: two zmm ops more per 64 weights, so int5 runs ~20-40% under int4's weights/s in
    cache, one core: 23-33 vs 36-45 G/s on the 169M shapes)."""
    n = q.type.count
    bits = bits_as_lanes(builder, builder.gep(hb, [builder.shl(g, _I64(2))]), n)
    return builder.select(bits, builder.add(q, ir.Constant(q.type, [16] * n)), q)


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


def _pair_sums_int16(builder, qrow, xq, g, hb):  # groups g, g + 1 . int16 xq -> <16 x i32> each
    """One 32-byte load, both nibble halves widened to int16, one pmaddwd per group (LLVM
    matches the sign-extended multiply and the add of even and odd lanes). hb: int5's high-bit
    plane (None: int4); values 0..31 against |xq| <= 32767 stay in int32."""
    raw = _vec(builder, builder.gep(qrow, [builder.mul(g, _I64(_HALF))]), GROUP, ir.IntType(8), 1)
    wide = builder.zext(raw, _VX)
    lo, hi = builder.and_(wide, ir.Constant(_VX, [15] * GROUP)), builder.lshr(wide, ir.Constant(_VX, [4] * GROUP))
    out = []
    for k in (0, 1):  # group g + k: its 16 low nibbles, then its 16 high ones, as x is laid out
        q = builder.shuffle_vector(lo, hi, _const([k * _HALF + j for j in range(_HALF)] +
                                                  [GROUP + k * _HALF + j for j in range(_HALF)]))
        if hb is not None:
            q = _high(builder, q, hb, builder.add(g, _I64(k)))
        x = _vec(builder, builder.gep(xq, [builder.mul(builder.add(g, _I64(k)), _I64(GROUP))]), GROUP, ir.IntType(16), 2)
        wide32 = ir.VectorType(_I32, GROUP)
        p = builder.mul(builder.sext(q, wide32), builder.sext(x, wide32))
        out.append(builder.add(builder.shuffle_vector(p, p, _const(range(0, GROUP, 2))),
                               builder.shuffle_vector(p, p, _const(range(1, GROUP, 2)))))
    return out


def _pair_sums_vnni(builder, qrow, xq, g, hb):  # groups g, g + 1 . int8 xq -> one <16 x i32>
    """One vpdpbusd (AVX512-VNNI: unsigned bytes times signed bytes, four to a lane) for 64
    weights: lanes 0-7 hold group g's sums, 8-15 group g + 1's. int5 (hb not None): the two
    groups' 64 high bits, one 8-byte load, or-ed in as 16s (values 0..31 are still unsigned bytes)."""
    raw = _vec(builder, builder.gep(qrow, [builder.mul(g, _I64(_HALF))]), GROUP, ir.IntType(8), 1)
    b32 = ir.VectorType(ir.IntType(8), GROUP)
    lo, hi = builder.and_(raw, ir.Constant(b32, [15] * GROUP)), builder.lshr(raw, ir.Constant(b32, [4] * GROUP))
    q = builder.shuffle_vector(lo, hi, _const([*range(0, 16), *range(32, 48), *range(16, 32), *range(48, 64)]))
    if hb is not None:
        q = _high(builder, q, hb, g)
    x = _vec(builder, builder.gep(xq, [builder.mul(g, _I64(GROUP))]), 2 * GROUP, ir.IntType(8), 1)
    v16 = ir.VectorType(_I32, 16)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(fn, [ir.Constant(v16, [0] * 16), builder.bitcast(q, v16), builder.bitcast(x, v16)])


def _fifth_bits(builder, word, lanes):  # int5 without mask registers -> <32 x i8>, 16 where set
    """word: the two groups' 8 bytes of fifth bits splat over 32 bytes; lanes: for each output
    lane, the byte (of its 16-byte half) holding its bit, bit j % 8. One vpshufb moves the bytes
    in place, an or with every other bit and a compare with all ones test the bit (ggml's way)."""
    b32 = ir.VectorType(ir.IntType(8), GROUP)
    spread = builder.shuffle_vector(word, word, _const(lanes))
    others = builder.or_(spread, ir.Constant(b32, [~(1 << (j % 8)) for j in range(GROUP)]))  # i8: ~b as signed
    return builder.select(builder.icmp_signed("==", others, ir.Constant(b32, [-1] * GROUP)),
                          ir.Constant(b32, [16] * GROUP), ir.Constant(b32, [0] * GROUP))


def _pair_sums_avx2(builder, qrow, xq, g, hb):  # groups g, g + 1 . int8 xq in pair order -> <8 x i32>
    """AVX2 without VNNI. x comes in pair order (`pair_order`), so the 32 bytes of two groups
    meet it as they lie: the low nibbles (values 0-15 of g, then of g + 1) against x's first 32
    bytes and the high ones against the next 32, one vpmaddubsw each (unsigned q times signed
    x, pairs added in int16), the two added (4 x 31 x 127 cannot saturate), one vpmaddwd with
    ones to int32. Lanes 0-3 hold group g's sums, 4-7 group g + 1's.

    Against x in natural order (ggml's way: a vperm2i128 per group puts its values in order,
    then a vpmaddubsw, vpmaddwd, conversion and multiply-add per group), one core of a Zen 3,
    169M shapes, interleaved runs: int4 19-23 -> 26-32 G weights/s in cache (19-23 -> 24-26
    streaming), int5 13-16 -> 17-20.5 (13-15 -> 16.5-18)."""
    raw = _vec(builder, builder.gep(qrow, [builder.mul(g, _I64(_HALF))]), GROUP, ir.IntType(8), 1)
    b32, v16, v8 = ir.VectorType(ir.IntType(8), GROUP), ir.VectorType(ir.IntType(16), 16), ir.VectorType(_I32, 8)
    halves = [builder.and_(raw, ir.Constant(b32, [15] * GROUP)), builder.lshr(raw, ir.Constant(b32, [4] * GROUP))]
    if hb is not None:  # bytes 0-3: g's bits (values 0-7, 8-15, 16-23, 24-31), 4-7: g + 1's
        word = builder.load(builder.bitcast(builder.gep(hb, [builder.shl(g, _I64(2))]), _I64.as_pointer()), align=1)
        word = builder.bitcast(_splat(builder, word, 4), b32)
        for k in (0, 1):  # low halves: bytes 0, 1 and 20, 21 (16 + 4, 16 + 5); high: 2, 3 and 22, 23
            lanes = [2 * k + j // 8 for j in range(16)] + [16 + 4 + 2 * k + j // 8 for j in range(16)]
            halves[k] = builder.or_(halves[k], _fifth_bits(builder, word, lanes))
    ubsw = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [b32, b32]), "llvm.x86.avx2.pmadd.ub.sw")
    wd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v16, v16]), "llvm.x86.avx2.pmadd.wd")
    x = [_vec(builder, builder.gep(xq, [builder.add(builder.mul(g, _I64(GROUP)), _I64(k * GROUP))]), GROUP,
              ir.IntType(8), 1) for k in (0, 1)]
    both = builder.add(builder.call(ubsw, [halves[0], x[0]]), builder.call(ubsw, [halves[1], x[1]]))
    return builder.call(wd, [both, ir.Constant(v16, [1] * 16)])


def _group_sums(builder, qrow, xq, g, hb):  # one group g . xq (int8 or int16) -> i32 scalar
    lo, hi = _nibbles(builder, qrow, g, ir.VectorType(_I32, _HALF))
    q = builder.shuffle_vector(lo, hi, _const(range(GROUP)))
    if hb is not None:
        q = _high(builder, q, hb, g)
    x = builder.sext(_vec(builder, builder.gep(xq, [builder.mul(g, _I64(GROUP))]), GROUP, xq.type.pointee, 2),
                     ir.VectorType(_I32, GROUP))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [ir.VectorType(_I32, GROUP)]),
                                        "llvm.vector.reduce.add.v32i32")
    return builder.call(fn, [builder.mul(q, x)])


def group_values(builder, qrow, dmrow, hb, g, bits):  # group g of a row -> two <16 x float>: q * d + m
    """Values 0-15 and 16-31 of group g widened to float32 (linear_int4's widened rows for
    prompts, dot_tile's batch tiles). hb: int5's high-bit plane (bits 5), else unused."""
    d, m = _scale(builder, dmrow, g, 0), _scale(builder, dmrow, g, 1)
    out = []
    for k, half in enumerate(_nibbles(builder, qrow, g, ir.VectorType(_I32, _HALF))):
        if bits == 5:  # value j = nibble + 16 (bit j): bits 16 k .. 16 k + 15 of the word
            half = _high(builder, half, builder.gep(hb, [_I64(2 * k)]), g)
        out.append(builder.fadd(builder.fmul(builder.sitofp(half, _VF), d, flags=FAST), m, flags=FAST))
    return out
