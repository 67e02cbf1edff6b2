"""Matrix products with a constant right operand packed once: graphnn's own gemm kernel.

At batch 1 an image's late layers have few output positions (7x7 = 49 rows in ResNet-50's
last stage) and large kernels (up to 9.4 MB): BLAS copies ("packs") the whole kernel into
its own layout at every call and reads the copy back, so the kernel crosses memory three
times per product. A constant kernel (inference) can be packed once, when the graph is
compiled (`pack_kernel`), and multiplied by a kernel that reads it straight from its
packed layout (`_packed_tile`, used by kernels/windows.py conv_gemm in mode
CONV2D_PACKED).

Layout. The kernel viewed as a K x N matrix (K = kh*kw*ci rows of the patch matrix's
columns, N = co) is cut into blocks of PACK_DEPTH rows, and each block into panels of
`pack_width(itemsize)` columns (two vectors of PACK_VECTOR_BYTES; the last panel padded
with zeros); a panel's rows follow each other, so the kernel below reads one panel row as
two aligned-size vector loads. Block b, panel p starts at b*PACK_DEPTH*Np + p*kc*width
(Np: N rounded up to whole panels, kc: the block's rows).

The tile kernel `_packed_tile(rows, kc, a, ...)` keeps a rows x width tile of the product
in registers (rows <= 12: 24 vector accumulators of the 32 an AVX-512 core has), and for
each of kc steps loads one panel row (2 vectors), broadcasts one element of each of the
tile's rows of `a` and issues 2 fused multiply-adds per row. It is written in LLVM IR (an
intrinsic, so that the accumulators stay in registers; Numba's loops over a small array
would keep them in memory), with `rows` a literal so each tile height is its own loop.

Measured against OpenBLAS's sgemm on one thread (docs/BENCHMARKS.md, "A gemm kernel of
graphnn's own"): 49x4608 @ 4608x512 1.30-1.40 ms against 1.81-1.93 (170-179 GFLOP/s),
196x2304 @ 2304x256 1.13 against 1.43, 784x1152 @ 1152x128 1.2-1.3 against 1.33.
"""
from llvmlite import ir as _llir
from llvmlite import binding as _llvm
from numba import njit
from numba.core import cgutils as _cgutils, types as _types
from numba.extending import intrinsic
import numpy as np

PACK_VECTOR_BYTES = 64  # one vector register of AVX-512
PACK_DEPTH = 512        # kernel rows per block (a block of one panel: 64 KB in float32)
PACK_ROWS = 12          # the tallest tile
PACK_PREFETCH = 2       # llvm.prefetch locality of the next panel (0: no prefetch)
PACK_UNROLL = 4         # steps of the tile kernel per trip of its loop
# The CPU features the tile kernel is written for: 32 vector registers of 64 bytes. On
# other CPUs LLVM splits each vector in two, the tile no longer fits the registers, and
# BLAS is faster: there the cpu back end keeps BLAS (see `available`).
PACK_FEATURES = ("avx512f",)
# Winograd's 16 products (kernels/windows.py CONV2D_WINOGRAD_PACKED) by the tile kernel
# from a packed U against BLAS from U (CONV2D_WINOGRAD_U), one thread, batch 1, float32:
# faster from 128 output channels (27x27 32->128 0.20 against 0.22 ms, 28x28 96->128 0.49
# against 0.58, 14x14 160->224 0.35 against 0.48, 14x14 256->256 0.67 against 0.90),
# slower below (56x56 64->64 0.88 against 0.80, 55x55 16->64 0.33-0.37 against 0.31).
WINOGRAD_MIN_OUTPUTS = 128
# Fewer output channels than this: BLAS (a panel of 32 columns would be half padding).
# 1x1 convolutions, batch 1: 55x55 128->16 0.15 ms packed against 0.12 ms BLAS, 64->16
# 0.071 against 0.059; 56x56 64->24 0.076 against 0.087, 27x27 256->32 0.058 against 0.087.
PACK_MIN_OUTPUTS = 24


def pack_width(itemsize):
    """Columns of one panel: two vectors."""
    return 2 * PACK_VECTOR_BYTES // itemsize


def available():
    """Whether this CPU runs the packed kernel faster than BLAS (AVX-512)."""
    features = _llvm.get_host_cpu_features()
    return all(features.get(f, False) for f in PACK_FEATURES)


def pack_kernel(w):
    """`w` (kh, kw, ci, co), an HWIO kernel, packed for `_packed_tile` (module docstring),
    returned as (kh, kw, ci, co rounded up to whole panels), the dtype kept."""
    w = np.asarray(w)
    kh, kw, ci, co = w.shape
    width = pack_width(w.dtype.itemsize)
    cp = -(-co // width) * width
    k = kh * kw * ci
    b = np.zeros((k, cp), w.dtype)
    b[:, :co] = w.reshape(k, co)
    parts = [b[k0:k0 + PACK_DEPTH].reshape(-1, cp // width, width).transpose(1, 0, 2)
             .reshape(-1) for k0 in range(0, k, PACK_DEPTH)]
    return np.ascontiguousarray(np.concatenate(parts) if parts else b.reshape(-1)) \
        .reshape(kh, kw, ci, cp)


@intrinsic
def _packed_tile(typingctx, rows, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step, act,
                 bias, at):
    # c[co + r*ldc + j] (+ what it holds when keep != 0) = sum over s < segs, t < kc of
    # a[ao + s*step + r*lda + t] * b[bo + (s*kc + t)*width + j], r < rows (a literal),
    # j < width (two vectors): `segs` runs of kc columns of a, `step` apart (one run: a
    # block of a patch matrix's rows; several: a convolution's windows read in place, one
    # run per kernel row); then, with act != 0, a convolution's epilogue on the tile in
    # its registers: + bias[at + j] when act & 2, relu (zero where <= 0, NaN kept) when
    # act is odd, ReLU6 (zero where < 0, six where > 6) when act >= 4 (kernels/windows.py
    # conv_gemm)
    if not isinstance(rows, _types.IntegerLiteral):
        return None
    height = rows.literal_value

    def codegen(context, builder, signature, args):
        _, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step_, act, bias, at = args
        ty = signature.args
        ap = _cgutils.gep(builder, context.make_array(ty[2])(context, builder, a).data, ao)
        bp = _cgutils.gep(builder, context.make_array(ty[5])(context, builder, b).data, bo)
        cp = _cgutils.gep(builder, context.make_array(ty[7])(context, builder, c).data, co)
        item = context.get_data_type(ty[7].dtype)
        bits = 32 if item == _llir.FloatType() else 64
        width = PACK_VECTOR_BYTES * 8 // bits
        vt = _llir.VectorType(item, width)
        i64, i32 = _llir.IntType(64), _llir.IntType(32)
        kc, lda, ldc, segs, step_, act, at = (builder.sext(v, i64) if v.type.width < 64
                                              else v for v in (kc, lda, ldc, segs, step_,
                                                               act, at))
        fma = _cgutils.get_or_insert_function(
            builder.module, _llir.FunctionType(vt, [vt] * 3), f"llvm.fma.v{width}f{bits}")
        bytes_at = _llir.IntType(8).as_pointer()
        prefetch = _cgutils.get_or_insert_function(builder.module, _llir.FunctionType(
            _llir.VoidType(), [bytes_at] + [i32] * 3),
            f"llvm.prefetch.{bytes_at.intrinsic_name}")  # (p0i8, or p0 in opaque-pointer IR)

        def vector(p, at):
            return builder.bitcast(builder.gep(p, [_llir.Constant(i64, at)]),
                                   vt.as_pointer())

        def count(v):
            return _llir.Constant(i64, v)

        def joined(phis, firsts, first_block, laters, later_block):
            for phi, first, later in zip(phis, firsts, laters):
                phi.add_incoming(first, first_block)
                phi.add_incoming(later, later_block)

        rowp = [builder.gep(cp, [builder.mul(ldc, count(r))]) for r in range(height)]
        kept = builder.icmp_signed("!=", keep, keep.type(0))
        start = [builder.select(kept, builder.load(vector(rowp[r], h * width), align=4),
                                _llir.Constant(vt, None))
                 for r in range(height) for h in (0, 1)]
        panel = builder.mul(builder.mul(kc, segs), count(2 * width))  # items of b read
        broadcast = _llir.Constant(_llir.VectorType(i32, width), None)

        def step(a_run, b_run, t, acc):
            """One step: a panel row times a column of the tile's rows of a, added."""
            bt = builder.gep(b_run, [builder.mul(t, count(2 * width))])
            b0 = builder.load(vector(bt, 0), align=4)
            b1 = builder.load(vector(bt, width), align=4)
            # the same row of the next panel (it follows this one) on its way to the L2
            # cache while this panel's tiles run: the first tile of each panel would
            # otherwise wait for memory (a constant kernel is read from memory once a call)
            if PACK_PREFETCH:
                ahead = builder.bitcast(builder.gep(bt, [panel]), bytes_at)
                for line in range(0, 2 * width * (bits // 8), 64):
                    builder.call(prefetch, [builder.gep(ahead, [count(line)]), i32(0),
                                            i32(PACK_PREFETCH), i32(1)])
            out = []
            for r in range(height):
                x = builder.load(builder.gep(a_run, [builder.add(builder.mul(lda, count(r)),
                                                                 t)]))
                x = builder.insert_element(_llir.Constant(vt, _llir.Undefined), x, i32(0))
                x = builder.shuffle_vector(x, _llir.Constant(vt, _llir.Undefined), broadcast)
                out += [builder.call(fma, [x, b0, acc[2 * r]]),
                        builder.call(fma, [x, b1, acc[2 * r + 1]])]
            return out

        def phis(incoming):
            """Phi nodes of the accumulators: `incoming` pairs (values, block)."""
            made = [builder.phi(vt) for _ in start]
            for values, block in incoming:
                for phi, value in zip(made, values):
                    phi.add_incoming(value, block)
            return made

        # runs (s < segs) of kc steps: PACK_UNROLL steps per trip of the loop, then the
        # kc % PACK_UNROLL left one at a time
        entry = builder.block
        outer = builder.append_basic_block("tile.run")
        inner = builder.append_basic_block("tile.loop")
        mid = builder.append_basic_block("tile.rest")
        tail = builder.append_basic_block("tile.tail")
        ran = builder.append_basic_block("tile.ran")
        done = builder.append_basic_block("tile.done")
        some = builder.and_(builder.icmp_signed(">", kc, count(0)),
                            builder.icmp_signed(">", segs, count(0)))
        builder.cbranch(some, outer, done)
        builder.position_at_end(outer)
        s = builder.phi(i64)
        acc_run = [builder.phi(vt) for _ in start]
        a_run = builder.gep(ap, [builder.mul(s, step_)])
        b_run = builder.gep(bp, [builder.mul(builder.mul(s, kc), count(2 * width))])
        main = builder.sub(kc, builder.srem(kc, count(PACK_UNROLL)))
        builder.cbranch(builder.icmp_signed(">", main, count(0)), inner, mid)
        builder.position_at_end(inner)
        t = builder.phi(i64)
        acc = [builder.phi(vt) for _ in start]
        nxt = acc
        for u in range(PACK_UNROLL):
            nxt = step(a_run, b_run, builder.add(t, count(u)), nxt)
        t_next = builder.add(t, count(PACK_UNROLL))
        builder.cbranch(builder.icmp_signed("<", t_next, main), inner, mid)
        t.add_incoming(count(0), outer)
        t.add_incoming(t_next, inner)
        joined(acc, acc_run, outer, nxt, inner)
        builder.position_at_end(mid)
        t_mid = builder.phi(i64)
        t_mid.add_incoming(count(0), outer)
        t_mid.add_incoming(t_next, inner)
        acc_mid = phis([(acc_run, outer), (nxt, inner)])
        builder.cbranch(builder.icmp_signed("<", t_mid, kc), tail, ran)
        builder.position_at_end(tail)
        t_tail = builder.phi(i64)
        acc_tail = [builder.phi(vt) for _ in start]
        one = step(a_run, b_run, t_tail, acc_tail)
        t1 = builder.add(t_tail, count(1))
        builder.cbranch(builder.icmp_signed("<", t1, kc), tail, ran)
        t_tail.add_incoming(t_mid, mid)
        t_tail.add_incoming(t1, tail)
        joined(acc_tail, acc_mid, mid, one, tail)
        builder.position_at_end(ran)
        acc_end = phis([(acc_mid, mid), (one, tail)])
        s1 = builder.add(s, count(1))
        builder.cbranch(builder.icmp_signed("<", s1, segs), outer, done)
        s.add_incoming(count(0), entry)
        s.add_incoming(s1, ran)
        joined(acc_run, start, entry, acc_end, ran)
        builder.position_at_end(done)
        final = phis([(start, entry), (acc_end, ran)])
        # the tile stored as it is, or after the epilogue (no instruction is added to the
        # tiles without one)
        plain = builder.append_basic_block("tile.store")
        finish = builder.append_basic_block("tile.epilogue")
        biased = builder.append_basic_block("tile.bias")
        finished = builder.append_basic_block("tile.finished")
        end = builder.append_basic_block("tile.end")
        builder.cbranch(builder.icmp_signed("!=", act, count(0)), finish, plain)
        builder.position_at_end(plain)
        for k, phi in enumerate(final):
            builder.store(phi, vector(rowp[k // 2], k % 2 * width), align=4)
        builder.branch(end)
        builder.position_at_end(finish)
        builder.cbranch(builder.icmp_signed("!=", builder.and_(act, count(2)), count(0)),
                        biased, finished)
        builder.position_at_end(biased)
        bp_ = _cgutils.gep(builder, context.make_array(ty[14])(context, builder, bias).data,
                           at)
        loaded = [builder.load(vector(bp_, h * width), align=4) for h in (0, 1)]
        builder.branch(finished)
        builder.position_at_end(finished)
        zero = _llir.Constant(vt, None)
        # (no bias: -0.0 added, which leaves every value as it is, -0.0 included)
        nzero = _llir.Constant(vt, [_llir.Constant(item, -0.0)] * width)
        added = []
        for h in (0, 1):
            phi = builder.phi(vt)
            phi.add_incoming(nzero, finish)
            phi.add_incoming(loaded[h], biased)
            added.append(phi)
        # relu's flag (act odd) and ReLU6's (act >= 4) in every lane
        flags = _llir.VectorType(_llir.IntType(1), width)

        def lanes(flag):
            one = builder.insert_element(_llir.Constant(flags, _llir.Undefined), flag, i32(0))
            return builder.shuffle_vector(one, _llir.Constant(flags, _llir.Undefined),
                                          broadcast)
        relu = lanes(builder.icmp_signed("!=", builder.and_(act, count(1)), count(0)))
        relu6 = lanes(builder.icmp_signed(">=", act, count(4)))
        six = _llir.Constant(vt, [_llir.Constant(item, 6.0)] * width)
        for k, phi in enumerate(final):
            v = builder.fadd(phi, added[k % 2])
            low = builder.fcmp_ordered("<=", v, zero)
            v = builder.select(builder.and_(low, relu), zero, v)
            below = builder.fcmp_ordered("<", v, zero)
            v = builder.select(builder.and_(below, relu6), zero, v)
            above = builder.fcmp_ordered(">", v, six)
            v = builder.select(builder.and_(above, relu6), six, v)
            builder.store(v, vector(rowp[k // 2], k % 2 * width), align=4)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return _types.none(rows, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step, act, bias,
                       at), codegen


@njit
def _packed_tile_call(rows, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs=1, step=0, act=0,
                      bias=None, at=0):
    # (each tile height the kernels use is its own literal)
    if bias is None:
        tb = c  # (not read: act without its 2)
    else:
        tb = bias
    if rows == 12:
        _packed_tile(12, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step, act, tb, at)
    elif rows == 4:
        _packed_tile(4, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step, act, tb, at)
    elif rows == 1:
        _packed_tile(1, kc, a, ao, lda, b, bo, c, co, ldc, keep, segs, step, act, tb, at)
    else:
        raise ValueError("a packed tile has 12, 4 or 1 rows")


# _packed_tile callable from Python (kernels/windows.py run as Python, in tests)
PACKED_TILE = _packed_tile_call
