"""Small helpers for writing Numba intrinsics as LLVM IR on whole vectors (linear_int4.py's
kernels): pointers into array arguments, vector loads, splats, constant lane lists; and
`prefetch`, an intrinsic the int8 and int4 row loops call."""
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

F32, I64, I32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
FAST = ("fast",)


def data(context, builder, aryty, ary):  # an array argument -> pointer to its first element
    return context.make_array(aryty)(context, builder, ary).data


def row(context, builder, aryty, ary, i):  # pointer to row i of a C-contiguous 2-D or 3-D array
    a = context.make_array(aryty)(context, builder, ary)
    size = builder.extract_value(a.shape, 1)
    if aryty.ndim == 3:
        size = builder.mul(size, builder.extract_value(a.shape, 2))
    return builder.gep(a.data, [builder.mul(i, size)])


def splat(builder, value, n):  # scalar -> <n x type(value)>, every lane the value
    vec = ir.Constant(ir.VectorType(value.type, n), None)
    vec = builder.insert_element(vec, value, I32(0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n))


def vec(builder, ptr, n, type_, align):  # load <n x type_> at ptr
    return builder.load(builder.bitcast(ptr, ir.VectorType(type_, n).as_pointer()), align=align)


def const(values):  # an <n x i32> constant (shuffle masks, lane indices)
    return ir.Constant(ir.VectorType(I32, len(values)), list(values))


def bits_as_lanes(builder, ptr, n):  # n bits at byte pointer ptr -> <n x i1>, lane j = bit j
    """n/8 bytes read as one little-endian integer, bitcast to <n x i1> (lane j is bit j: on x86
    with AVX-512 a mask register, kmov)."""
    word = builder.load(builder.bitcast(ptr, ir.IntType(n).as_pointer()), align=1)
    return builder.bitcast(word, ir.VectorType(ir.IntType(1), n))


def c_array(t, ndim, dtype):  # a C-contiguous array type of that rank and dtype
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C" and t.dtype == dtype


def cpu_has(feature: str) -> bool:  # the CPU Numba compiles for has this LLVM feature ("avx512f")
    try:
        return bool(binding.get_host_cpu_features().get(feature, False))
    except Exception:  # noqa: BLE001 (a platform llvmlite cannot ask: assume not)
        return False


@intrinsic
def prefetch(typingctx, A, i, j):  # A (rows, cols) C-contiguous
    """Ask the cache for the line holding A[i, j] (llvm.prefetch: x86 prefetcht0). A hint
    only: it never faults and changes no result."""
    def codegen(context, builder, signature, args):
        A, i, j = args
        ary = context.make_array(signature.args[0])(context, builder, A)
        flat = builder.add(builder.mul(i, builder.extract_value(ary.shape, 1)), j)
        ptr = builder.bitcast(builder.gep(ary.data, [flat]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in every level, data
        return context.get_dummy_value()
    if isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C":
        return types.void(A, types.intp, types.intp), codegen
