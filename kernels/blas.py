"""Matrix products through BLAS with alpha and beta: c = alpha * op(a) @ op(b) + beta * c.

`np.dot(a, b, out)` inside Numba always computes out = a @ b. gemm's two scalars let one
BLAS call also scale the product and add it to what `c` holds, so an SGD step
W - lr * (x.T @ delta) becomes a single sgemm that accumulates into W: no product buffer
and no second pass over W. The call goes to Numba's own BLAS entry point (`numba_xxgemm`,
the one `np.dot` uses, backed by scipy's BLAS), declared by symbol name, so compiled code
stays cacheable.

The CPU generator copies this source into each generated module (so a cached module never
depends on this file); imported from here the functions run as they are, for tests.
"""
from llvmlite import ir as _llir
from numba import njit
from numba.core import cgutils as _cgutils, types as _types
from numba.extending import intrinsic

# What the copied source needs at the top of a generated module.
IMPORTS = ["from llvmlite import ir as _llir",
           "from numba.core import cgutils as _cgutils, types as _types",
           "from numba.extending import intrinsic"]


@intrinsic
def _xxgemm(typingctx, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    # Column-major BLAS gemm on C-contiguous float arrays of one dtype (alpha, beta too).
    arrays = (a, b, c)
    if not all(isinstance(x, _types.Array) and x.layout == "C" for x in arrays) or \
            len({x.dtype for x in arrays} | {alpha, beta}) != 1 or \
            a.dtype not in (_types.float32, _types.float64):
        return None
    sig = _types.intc(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        char = _llir.IntType(8)
        intp = context.get_value_type(_types.intp)
        vp = _cgutils.voidptr_t
        fnty = _llir.FunctionType(_llir.IntType(32), [char, char, char, intp, intp, intp, vp,
                                                      vp, intp, vp, intp, vp, vp, intp])
        fn = _cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        tys = signature.args

        def data(i):
            array = context.make_array(tys[i])(context, builder, args[i])
            return builder.bitcast(array.data, vp)

        def slot(i):
            return builder.bitcast(_cgutils.alloca_once_value(builder, args[i]), vp)

        def integer(i):
            return context.cast(builder, args[i], tys[i], _types.intp)

        kind = _llir.Constant(char, ord("s" if tys[6].dtype == _types.float32 else "d"))
        return builder.call(fn, (kind, builder.trunc(integer(0), char),
                                 builder.trunc(integer(1), char), integer(2), integer(3),
                                 integer(4), slot(5), data(6), integer(7), data(8),
                                 integer(9), slot(10), data(11), integer(12)))
    return sig, codegen


def gemm(trans_a, trans_b, alpha, a, b, beta, c):
    """c = alpha * op(a) @ op(b) + beta * c, where op(x) is x.T when asked. a, b and c are
    2-D C-contiguous arrays of one float dtype (every buffer of a generated program is),
    c does not overlap a or b, and alpha and beta have c's dtype."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # BLAS wants k >= 1: the product is zero
        for i in range(m):
            for j in range(n):
                c[i, j] = beta * c[i, j] if beta != 0 else 0
        return
    # Row-major c = op(a) @ op(b) is column-major c.T = op(b).T @ op(a).T: the same memory
    # read with the operands swapped; each leading dimension is the physical row length.
    status = _xxgemm(84 if trans_b else 78, 84 if trans_a else 78, n, m, k, alpha,
                     b, b.shape[1], a, a.shape[1], beta, c, n)
    if status != 0:
        raise RuntimeError("BLAS gemm failed")


GEMM = njit(gemm)  # for tests; generated modules get their own copy
