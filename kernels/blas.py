"""Matrix products through BLAS with alpha and beta: c = alpha * op(a) @ op(b) + beta * c.

`np.dot(a, b, out)` inside Numba always computes out = a @ b. gemm's two scalars let one
BLAS call also scale the product and add it to what `c` holds, so an SGD step
W - lr * (x.T @ delta) becomes a single sgemm that accumulates into W: no product buffer
and no second pass over W.

The call goes to the CBLAS that numpy itself links (numpy's wheels bundle OpenBLAS), so a
process holds one BLAS and one BLAS thread pool whether it runs numpy or compiled code, and
no scipy is needed. Compiled code calls it by a fixed symbol name, `graphnn_cblas_sgemm`
(or `_dgemm`), that `register` points at numpy's function in each process before compiled
code loads; the address is never written into compiled code, so modules stay cacheable.

The CPU generator copies `_cblas_gemm` and `gemm` into each generated module (so a cached
module never depends on this file's code); imported from here they run as they are, for
tests and for the benchmark's BLAS floor.
"""
import ctypes
import glob
import os

from llvmlite import binding as _llvm, ir as _llir
from numba import njit
from numba.core import cgutils as _cgutils, types as _types
from numba.extending import intrinsic

# What the copied source needs at the top of a generated module.
IMPORTS = ["from llvmlite import ir as _llir",
           "from numba.core import cgutils as _cgutils, types as _types",
           "from numba.extending import intrinsic",
           "from kernels.blas import register as _register_cblas"]

CBLAS_SYMBOL = "graphnn_cblas_{}gemm"  # {} is s (float32) or d (float64)
# gemv's symbol: CBLAS_SYMBOL with gemv for gemm (`register` points both)
CBLAS_GEMV_SYMBOL = "graphnn_cblas_{}gemv"

# The CBLAS names a numpy build may export, with the width of their integer arguments:
# numpy's wheels carry scipy-openblas64 (64-bit integers, prefixed names); other builds
# (Debian, conda, Accelerate) link a plain CBLAS with 32-bit integers.
_FLAVOURS = (("scipy_cblas_{}gemm64_", 64), ("cblas_{}gemm64_", 64),
             ("scipy_cblas_{}gemm", 32), ("cblas_{}gemm", 32))
_THREAD_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                   "openblas_set_num_threads64_", "openblas_set_num_threads")
_THREAD_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                   "openblas_get_num_threads64_", "openblas_get_num_threads")
_CONFIG_GETTERS = ("scipy_openblas_get_config64_", "scipy_openblas_get_config",
                   "openblas_get_config64_", "openblas_get_config")
_found = []


class BlasNotFound(ImportError):
    pass


def _libraries():
    """numpy's extension module (on Linux and macOS, looking a name up there also searches
    the BLAS it links), then the BLAS libraries numpy's wheels carry beside it (Windows)."""
    try:
        from numpy._core import _multiarray_umath as core
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as core
    yield core.__file__
    package = os.path.dirname(os.path.dirname(os.path.abspath(core.__file__)))
    for folder in (package + ".libs", os.path.join(package, ".dylibs")):
        yield from sorted(glob.glob(os.path.join(folder, "*blas*")))


def _numpy_blas():
    """(library handle, name pattern, integer bits) of the CBLAS numpy links."""
    if not _found:
        for path in _libraries():
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            for pattern, bits in _FLAVOURS:
                if all(hasattr(library, pattern.format(t)) for t in "sd"):
                    _found.append((library, pattern, bits))
                    return _found[0]
        raise BlasNotFound(
            "graphnn's cpu back end multiplies matrices with the BLAS that numpy links "
            "(cblas_sgemm), and this numpy exports none; install numpy from PyPI, whose "
            "wheels bundle OpenBLAS")
    return _found[0]


def integer_bits():
    """Width of the BLAS integer arguments (64 for numpy's wheels), or None without BLAS."""
    try:
        return _numpy_blas()[2]
    except BlasNotFound:
        return None


def register(symbol=CBLAS_SYMBOL, bits=64):
    """Point `symbol` (s and d) at numpy's sgemm and dgemm in this process, and the same
    name with gemv for gemm at its sgemv and dgemv. Compiled code generated for
    `bits`-wide BLAS integers calls them by those names."""
    library, pattern, found = _numpy_blas()
    if found != bits:
        raise BlasNotFound(f"compiled code expects a BLAS with {bits}-bit integers; numpy's "
                           f"has {found}-bit integers")
    for t in "sd":
        for kind in ("gemm", "gemv"):
            name = pattern.replace("gemm", kind).format(t)
            if not hasattr(library, name):
                continue  # (a BLAS without gemv: no generated module asks for it)
            address = ctypes.cast(getattr(library, name), ctypes.c_void_p).value
            _llvm.add_symbol(symbol.replace("gemm", kind).format(t), address)


def _function(names):
    library = _numpy_blas()[0]
    return next((getattr(library, n) for n in names if hasattr(library, n)), None)


def set_threads(n):
    """Set the thread count of numpy's OpenBLAS, where graphnn's matmuls run too; False
    when this BLAS has no such control."""
    setter = _function(_THREAD_SETTERS)
    if setter is not None:
        setter(ctypes.c_int(int(n)))
    return setter is not None


def describe():
    """What numpy's BLAS says of itself (OpenBLAS: version and build), or its flavour."""
    getter = _function(_CONFIG_GETTERS)
    if getter is None:
        library, pattern, bits = _numpy_blas()
        return f"{pattern.format('s')} ({bits}-bit integers)"
    getter.restype = ctypes.c_char_p
    return " ".join(getter().decode(errors="replace").split())


def threads():
    """The thread count of numpy's OpenBLAS, or None when this BLAS does not tell."""
    getter = _function(_THREAD_GETTERS)
    return None if getter is None else int(getter())


_CBLAS_BITS = integer_bits() or 64


@intrinsic
def _cblas_gemm(typingctx, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    # Row-major CBLAS gemm on C-contiguous float arrays of one dtype (alpha, beta too).
    arrays = (a, b, c)
    if not all(isinstance(x, _types.Array) and x.layout == "C" for x in arrays) or \
            len({x.dtype for x in arrays} | {alpha, beta}) != 1 or \
            a.dtype not in (_types.float32, _types.float64):
        return None
    sig = _types.void(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        tys = signature.args
        real = context.get_value_type(tys[6].dtype)
        enum, blasint = _llir.IntType(32), _llir.IntType(_CBLAS_BITS)
        int_type = _types.int64 if _CBLAS_BITS == 64 else _types.int32
        fnty = _llir.FunctionType(_llir.VoidType(), [
            enum, enum, enum, blasint, blasint, blasint, real, real.as_pointer(), blasint,
            real.as_pointer(), blasint, real, real.as_pointer(), blasint])
        kind = "s" if tys[6].dtype == _types.float32 else "d"
        fn = _cgutils.get_or_insert_function(builder.module, fnty, CBLAS_SYMBOL.format(kind))

        def data(i):
            array = context.make_array(tys[i])(context, builder, args[i])
            return builder.bitcast(array.data, real.as_pointer())

        def integer(i, to=int_type):
            return context.cast(builder, args[i], tys[i], to)

        row_major = _llir.Constant(enum, 101)
        builder.call(fn, (row_major, integer(0, _types.int32), integer(1, _types.int32),
                          integer(2), integer(3), integer(4), args[5], data(6), integer(7),
                          data(8), integer(9), args[10], data(11), integer(12)))
        return context.get_dummy_value()
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
    # 111: as stored, 112: transposed. Each leading dimension is the physical row length.
    _cblas_gemm(112 if trans_a else 111, 112 if trans_b else 111, m, n, k, alpha,
                a, a.shape[1], b, b.shape[1], beta, c, n)


@intrinsic
def _cblas_gemv(typingctx, trans, m, n, alpha, a, lda, x, beta, y):
    # Row-major CBLAS gemv, unit strides, on C-contiguous float arrays of one dtype:
    # y = alpha * op(a) @ x + beta * y, a stored m x n.
    arrays = (a, x, y)
    if not all(isinstance(v, _types.Array) and v.layout == "C" for v in arrays) or \
            len({v.dtype for v in arrays} | {alpha, beta}) != 1 or \
            a.dtype not in (_types.float32, _types.float64):
        return None
    sig = _types.void(trans, m, n, alpha, a, lda, x, beta, y)

    def codegen(context, builder, signature, args):
        tys = signature.args
        real = context.get_value_type(tys[4].dtype)
        enum, blasint = _llir.IntType(32), _llir.IntType(_CBLAS_BITS)
        int_type = _types.int64 if _CBLAS_BITS == 64 else _types.int32
        fnty = _llir.FunctionType(_llir.VoidType(), [
            enum, enum, blasint, blasint, real, real.as_pointer(), blasint,
            real.as_pointer(), blasint, real, real.as_pointer(), blasint])
        kind = "s" if tys[4].dtype == _types.float32 else "d"
        fn = _cgutils.get_or_insert_function(builder.module, fnty,
                                             CBLAS_SYMBOL.replace("gemm", "gemv").format(kind))

        def data(i):
            array = context.make_array(tys[i])(context, builder, args[i])
            return builder.bitcast(array.data, real.as_pointer())

        def integer(i, to=int_type):
            return context.cast(builder, args[i], tys[i], to)

        unit = _llir.Constant(blasint, 1)
        builder.call(fn, (_llir.Constant(enum, 101), integer(0, _types.int32), integer(1),
                          integer(2), args[3], data(4), integer(5), data(6), unit, args[7],
                          data(8), unit))
        return context.get_dummy_value()
    return sig, codegen


def gemv(trans_a, trans_b, alpha, a, b, beta, c):
    """gemm (same arguments and result) for a product with one row or one column
    (c is 1 x n or m x 1, and the inner size k >= 1): one BLAS gemv, which streams the
    matrix once. (OpenBLAS's gemm packs the matrix first: at batch 1 a fully connected
    layer of 9216 x 4096 float32 weights took 29-34 ms as sgemm, 9.5 ms as sgemv.)"""
    m, n = c.shape
    if m == 1:  # c = x @ op(b), x = op(a)'s one row (contiguous either way)
        rows, cols = b.shape
        _cblas_gemv(111 if trans_b else 112, rows, cols, alpha, b, cols, a.reshape(-1),
                    beta, c.reshape(-1))
    else:  # c = op(a) @ x, x = op(b)'s one column
        rows, cols = a.shape
        _cblas_gemv(112 if trans_a else 111, rows, cols, alpha, a, cols, b.reshape(-1),
                    beta, c.reshape(-1))


def batch_gemm(trans_a, trans_b, one, zero, a, b, c):
    """The BatchMatmul step (kernels/ir.py): for each index i of c's leading (batch) axes,
    c[i] = the sum over the summed positions of op(a[i_a]) @ op(b[i_b]). a, b and c have
    one rank; along a batch axis an operand's dim of 1 is read for every index, and where
    c's dim is 1 and the full size (the larger of a's and b's) is not, products are summed.
    `one` and `zero` are 1 and 0 in c's dtype. Two common stacks are one gemm on the
    stacks seen as tall matrices: (B, n, k) @ (k, m), and the sum over B of
    (B, n, k)^T @ (B, n, m) (the gradient of the weight of (B, n, k) @ (k, m))."""
    rank = c.ndim - 2
    count = 1  # of the full batch
    count_a = 1
    count_b = 1
    count_c = 1
    for d in range(rank):
        count *= max(a.shape[d], b.shape[d])
        count_a *= a.shape[d]
        count_b *= b.shape[d]
        count_c *= c.shape[d]
    a3 = a.reshape((count_a, a.shape[rank], a.shape[rank + 1]))
    b3 = b.reshape((count_b, b.shape[rank], b.shape[rank + 1]))
    c3 = c.reshape((count_c, c.shape[rank], c.shape[rank + 1]))
    if count == 0:  # no products: a sum over nothing is zero
        if count_c:
            for i in range(count_c):
                for r in range(c.shape[rank]):
                    for q in range(c.shape[rank + 1]):
                        c3[i, r, q] = zero
        return
    if not trans_a and count_b == 1 and count_a == count and count_c == count:
        rows = count * c.shape[rank]
        gemm(False, trans_b, one, a.reshape((rows, a.shape[rank + 1])), b3[0], zero,
             c.reshape((rows, c.shape[rank + 1])))
        return
    if trans_a and not trans_b and count_c == 1 and count_a == count and count_b == count:
        rows = count * a.shape[rank]
        gemm(True, False, one, a.reshape((rows, a.shape[rank + 1])),
             b.reshape((rows, b.shape[rank + 1])), zero, c3[0])
        return
    for i in range(count):
        rest = i
        ia = 0
        ib = 0
        ic = 0
        step_a = 1
        step_b = 1
        step_c = 1
        first = True  # the first product added into c[ic]
        for d in range(rank - 1, -1, -1):
            size = max(a.shape[d], b.shape[d])
            k = rest % size
            rest //= size
            if a.shape[d] != 1:
                ia += k * step_a
            if b.shape[d] != 1:
                ib += k * step_b
            if c.shape[d] != 1:
                ic += k * step_c
            elif k != 0:
                first = False
            step_a *= a.shape[d]
            step_b *= b.shape[d]
            step_c *= c.shape[d]
        gemm(trans_a, trans_b, one, a3[ia], b3[ib], zero if first else one, c3[ic])


if integer_bits():
    register(CBLAS_SYMBOL, _CBLAS_BITS)
GEMM = njit(gemm)  # for tests and the benchmark; generated modules get their own copy
GEMV = njit(gemv)  # likewise


@njit
def _cblas_gemm_call(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    _cblas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


# _cblas_gemm callable from Python (kernels/windows.py run as Python, in tests)
CBLAS_GEMM = _cblas_gemm_call
