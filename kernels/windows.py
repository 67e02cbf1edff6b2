"""Convolution and pooling kernels (NHWC images, HWIO kernels), written as plain Python
loops that Numba compiles. The CPU generator copies their source into each generated
module (so a cached module never depends on this file), and they run unchanged as Python
for tests. Each takes its output buffer last and fills it completely.

Geometry arguments: stride `s`, top/left padding `ph`, `pw`; pooling window `k`.

Convolutions run as matrix products in the BLAS the matmuls call (`conv_gemm` below; the
direct loops `conv2d`, `conv2d_grad_input`, `conv2d_grad_filter` stay as its reference).
A 1x1 stride-1 unpadded convolution of NHWC data is a plain product
(N*H*W, C) @ (C, K). Other convolutions copy the input's patches into a block of the patch
matrix ("im2col": row (n, y, x) of the output, columns (i, j, c) of the window, so the
HWIO kernel viewed as (KH*KW*C, K) is the right operand) and multiply that block; the
blocks cover at most `scratch.size // (KH*KW*C)` rows each, so the patch matrix of a large
batch is never held whole (`col_block_rows` gives the block the CPU generator plans for).
Gradients: input = col2im(dY @ W^T) (a scatter-add of each block of columns), filter =
sum over blocks of im2col(X)^T @ dY (gemm's transpose flags, no transposed copies).
Stride-1 3x3 convolutions with enough channels and outputs (`use_winograd`) run as
Winograd F(2x2, 3x3) instead: 16 gemms per round of 2x2 output tiles, 2.25x fewer
multiplies (conv_gemm's CONV2D_WINOGRAD mode); with a constant kernel transformed
beforehand and outputs at least 24 wide and high (`winograd_side`), as F(4x4, 3x3): 36
gemms per round of 4x4 output tiles, 4x fewer multiplies.
"""
import numpy as np

# generated modules carry their own _cblas_gemm (kernels/blas.py) and _packed_tile
# (kernels/packed.py), intrinsics; these are their versions callable from Python
from .blas import CBLAS_GEMM as _cblas_gemm
from .packed import PACK_DEPTH, PACK_VECTOR_BYTES, PACKED_TILE as _packed_tile

# The patch-matrix block the CPU generator plans for: about COL_BYTES, at least
# COL_MIN_ROWS rows (BLAS wants some rows to work on), never more rows than the output has.
COL_BYTES = 1 << 20
COL_MIN_ROWS = 64


def col_block_rows(cols, itemsize):
    """Rows of one patch-matrix block with `cols` columns of `itemsize` bytes (before
    capping at the output's row count)."""
    return max(COL_MIN_ROWS, COL_BYTES // max(1, cols * itemsize))


def is_pointwise(kh, kw, s, ph, pw):
    """A 1x1 stride-1 unpadded convolution: a plain matrix product, no patch matrix."""
    return kh == 1 and kw == 1 and s == 1 and ph == 0 and pw == 0


def conv2d(x, w, s, ph, pw, out):
    n_, h_, w_, c_ = x.shape
    kh, kw, ci, co = w.shape
    oh, ow = out.shape[1], out.shape[2]
    out[...] = 0
    for n in range(n_):
        for y in range(oh):
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_:
                    continue
                for x0 in range(ow):
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        for c in range(ci):
                            v = x[n, yy, xx, c]
                            for o in range(co):
                                out[n, y, x0, o] += v * w[i, j, c, o]


def conv2d_direct(x, w, ph, pw, out, bias, act, cout, off):
    """A stride-1 convolution with conv_gemm's epilogue (`bias`, `act`, `cout`, `off`, as
    there), by the direct loops: what a Winograd convolution from U is computed with again
    when its outputs were not all finite (conv_gemm returned True), so that exactly the
    outputs whose windows hold a NaN or an infinity are not finite, as the numpy back end
    makes them. Compiled only if it is ever called."""
    n_, h_, w_, c_ = x.shape
    kh, kw, ci = w.shape[0], w.shape[1], w.shape[2]
    oh, ow, pitch = out.shape[1], out.shape[2], out.shape[3]
    co = cout if cout > 0 else pitch
    zero, six = out.dtype.type(0), out.dtype.type(6)  # (six: ReLU6's bound, act >= 4)
    nzero = out.dtype.type(-0.0)  # (x + -0.0 is x, -0.0 included: no bias)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                for k in range(co):
                    v = zero
                    for i in range(kh):
                        yy = y + i - ph
                        for j in range(kw if yy >= 0 and yy < h_ else 0):
                            xx = x0 + j - pw
                            if xx >= 0 and xx < w_:
                                for c in range(ci):
                                    v += x[n, yy, xx, c] * w[i, j, c, k]
                    v += bias[k] if act & 2 else nzero
                    v = zero if act % 2 == 1 and v <= zero else v
                    v = zero if act >= 4 and v < zero else v
                    v = six if act >= 4 and v > six else v
                    out[n, y, x0, off + k] = v


def conv2d_grad_input(g, w, s, ph, pw, out):
    n_, h_, w_, c_ = out.shape
    kh, kw, ci, co = w.shape
    oh, ow = g.shape[1], g.shape[2]
    out[...] = 0
    for n in range(n_):
        for y in range(oh):
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_:
                    continue
                for x0 in range(ow):
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        for c in range(ci):
                            acc = out[n, yy, xx, c]
                            for o in range(co):
                                acc += g[n, y, x0, o] * w[i, j, c, o]
                            out[n, yy, xx, c] = acc


def conv2d_grad_filter(x, g, s, ph, pw, out):
    n_, h_, w_, c_ = x.shape
    kh, kw, ci, co = out.shape
    oh, ow = g.shape[1], g.shape[2]
    out[...] = 0
    for n in range(n_):
        for y in range(oh):
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_:
                    continue
                for x0 in range(ow):
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        for c in range(ci):
                            v = x[n, yy, xx, c]
                            for o in range(co):
                                out[i, j, c, o] += v * g[n, y, x0, o]


def max_pool2d(x, k, s, out):
    """The channels are the inner loop (contiguous in NHWC, so it vectorises); flat
    unsigned indices (see conv_gemm); the maximum as a select, which compiles quicker than
    a conditional store. 3x3 and 2x2 windows keep each maximum in a register over their
    taps, written out once (1.3-2x quicker than updating the output tap by tap)."""
    n_, h_, w_, c_ = x.shape
    _, oh, ow, _ = out.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    r1 = w_ * c_  # the next image row
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                dst = ((n * oh + y) * ow + x0) * c_
                src = ((n * h_ + y * s) * w_ + x0 * s) * c_ - dst
                if k == 3:
                    for c in range(dst, dst + c_):
                        a = src + c
                        m = xf[np.uintp(a)]
                        for t in (c_, 2 * c_, r1, r1 + c_, r1 + 2 * c_, 2 * r1,
                                  2 * r1 + c_, 2 * r1 + 2 * c_):
                            v = xf[np.uintp(a + t)]
                            m = v if v > m else m
                        of[np.uintp(c)] = m
                    continue
                if k == 2:
                    for c in range(dst, dst + c_):
                        a = src + c
                        m = xf[np.uintp(a)]
                        for t in (c_, r1, r1 + c_):
                            v = xf[np.uintp(a + t)]
                            m = v if v > m else m
                        of[np.uintp(c)] = m
                    continue
                for c in range(dst, dst + c_):
                    of[np.uintp(c)] = xf[np.uintp(src + c)]
                for i in range(k):
                    for j in range(k):
                        at = src + (i * w_ + j) * c_
                        for c in range(dst, dst + c_):
                            v = xf[np.uintp(at + c)]
                            o = of[np.uintp(c)]
                            of[np.uintp(c)] = v if v > o else o


def max_pool2d_grad(x, g, k, s, out):
    """Each window's gradient goes to its first maximal element (row-major). Per output
    position, the maxima and their flat indices are found for all channels at once
    (`best`, `at`: the channels are the vectorised inner loop), then scattered."""
    n_, h_, w_, c_ = x.shape
    _, oh, ow, _ = g.shape
    xf = x.reshape(-1)
    gf = g.reshape(-1)
    of = out.reshape(-1)
    for t in range(of.size):
        of[t] = 0
    best = np.empty(c_, x.dtype)
    at = np.empty(c_, np.intp)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                src = ((n * h_ + y * s) * w_ + x0 * s) * c_
                for c in range(c_):
                    best[c] = xf[np.uintp(src + c)]
                    at[c] = src + c
                for i in range(k):
                    for j in range(k):
                        off = src + (i * w_ + j) * c_
                        for c in range(c_):
                            v = xf[np.uintp(off + c)]
                            b = best[c]
                            at[c] = off + c if v > b else at[c]
                            best[c] = v if v > b else b
                dst = ((n * oh + y) * ow + x0) * c_
                for c in range(c_):
                    of[np.uintp(at[c])] += gf[np.uintp(dst + c)]


def avg_pool2d(x, k, s, out):
    """As max_pool2d: the channels are the inner loop, over flat unsigned indices (7-25x
    faster than a window loop per channel); the window summed in row-major order from
    its first element, then scaled by 1 / k^2."""
    n_, h_, w_, c_ = x.shape
    _, oh, ow, _ = out.shape
    scale = 1.0 / (k * k)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                dst = ((n * oh + y) * ow + x0) * c_
                src = ((n * h_ + y * s) * w_ + x0 * s) * c_ - dst
                for c in range(dst, dst + c_):
                    of[np.uintp(c)] = xf[np.uintp(src + c)]
                for t in range(1, k * k):
                    at = src + (t // k * w_ + t % k) * c_
                    for c in range(dst, dst + c_):
                        of[np.uintp(c)] += xf[np.uintp(at + c)]
                for c in range(dst, dst + c_):
                    of[np.uintp(c)] = of[np.uintp(c)] * scale


def avg_pool2d_grad(g, k, s, out):
    n_, oh, ow, c_ = g.shape
    scale = 1.0 / (k * k)
    out[...] = 0
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                for c in range(c_):
                    v = g[n, y, x0, c] * scale
                    for i in range(k):
                        for j in range(k):
                            out[n, y * s + i, x0 * s + j, c] += v


CONV2D, CONV2D_GRAD_INPUT, CONV2D_GRAD_FILTER = 0, 1, 2  # conv_gemm's modes
CONV2D_WINOGRAD = 3  # a stride-1 3x3 convolution as Winograd F(2x2, 3x3)
CONV2D_WINOGRAD_U = 4  # the same with the kernel transformed beforehand (winograd_kernel)
CONV2D_PACKED = 5  # a convolution whose constant kernel was packed beforehand (packed.py)
CONV2D_WINOGRAD_PACKED = 6  # CONV2D_WINOGRAD_U with U packed (packed.py) after its transform
# Whether conv_gemm holds modes 5 and 6 (graphnn's tile kernel): a generated module that
# uses neither says False, and Numba leaves their code out (1.5 s less compile time)
PACKED = True
# CONV2D_PACKED reads the windows of an unpadded convolution in place (no patch matrix) for
# outputs at least this wide: a tile's rows are outputs of one row
DIRECT_MIN_WIDTH = 24
EPILOGUE_ROWS = 256  # rows per block at most, when an epilogue finishes each block
# a generated module whose convolutions have no epilogue says EPILOGUES = False, and Numba
# leaves the epilogues' code out of conv_gemm (0.3 s of compile time; see PACKED)
EPILOGUES = True
# a generated module with no F(4x4, 3x3) Winograd convolution (a U of 6 x 6 x ci x co)
# says WINOGRAD_F4 = False, and Numba leaves that code out of conv_gemm (see PACKED)
WINOGRAD_F4 = True
# a generated module none of whose convolutions is a gradient (modes CONV2D_GRAD_INPUT,
# CONV2D_GRAD_FILTER) or transforms its kernel at each call (CONV2D_WINOGRAD) says
# TRAINING_MODES = False, and Numba leaves their code out of conv_gemm (see PACKED)
TRAINING_MODES = True
# a generated module with no Winograd convolution from a U transformed beforehand says
# WINOGRAD_U = False, and Numba leaves out the direct recomputation of a round whose
# outputs are not all finite (0.75 s of cnn-mnist's compile time; see PACKED)
WINOGRAD_U = True


def conv_gemm(mode, a, b, s, ph, pw, scratch, out, bias=None, act=0, cout=0, off=0):
    """A convolution or one of its gradients as BLAS products, block by block of output
    rows:

    CONV2D              a = x, b = w, out = y:  y = im2col(x) @ w
    CONV2D_GRAD_INPUT   a = dy, b = w, out = dx: dx = col2im(dy @ w^T)
    CONV2D_GRAD_FILTER  a = x, b = dy, out = dw: dw = sum over blocks of im2col(x)^T @ dy
                        (gemm reads the block transposed and accumulates with beta = 1)
    CONV2D_WINOGRAD     a = x, b = w, out = y, a 3x3 kernel and stride 1, as Winograd
                        F(2x2, 3x3) in rounds of `s` tiles (below)
    CONV2D_WINOGRAD_U   the same, b = U = winograd_kernel(w) (4 x 4 x ci x co), the
                        kernel transformed once beforehand (a constant kernel); with
                        U = winograd_kernel(w, 4) (6 x 6 x ci x co), as F(4x4, 3x3)
    CONV2D_PACKED       a = x, b = pack_kernel(w) (kernels/packed.py), out = y: the
                        forward product by graphnn's own tile kernel, reading the kernel
                        in the layout it was packed into once beforehand
    CONV2D_WINOGRAD_PACKED  CONV2D_WINOGRAD_U with each of U's 16 matrices packed
                        (pack_kernel(U viewed as 16 kernels 1 x 1 x ci x co)), the 16
                        products by the tile kernel

    `scratch` (1-D, out's dtype) holds one block of the patch matrix; a 1x1 stride-1
    unpadded convolution needs none: the NHWC data viewed as (N*H*W, C) is the patch
    matrix, one block.

    One function with no callees but the BLAS call, so that Numba compiles it once per
    dtype and compiles nothing twice: a called @njit function is compiled on its own and
    then optimised again inside its caller (as separate functions, the copies into and
    out of the patch matrix cost about 0.5 s more compile time, the Winograd transforms
    about 1 s more). So the copies into the patch matrix ("im2col") and back ("col2im")
    are written out here, one loop nest each, over unsigned flat indices (Numba then
    drops its negative-index wraparound and the copies vectorise: 4-6x faster than
    signed indexing), and the position (n, y, x) of a patch-matrix row advances by
    increments, not divisions.

    Winograd F(2x2, 3x3): each 2x2 tile of outputs is A^T [U . V] A, where V = B^T d B
    transforms the tile's 4x4 input window d and U = G g G^T the kernel g (once per call,
    as one gemm: U = (G kron G) @ w viewed as 9 x (ci co)); the products are summed over
    the input channels as 16 gemms per round of tiles: 2.25x fewer multiplies than im2col
    + gemm. scratch holds U (16 matrices ci x co, 16 items more than their size apart, so
    that their rows do not fall into one cache set; in mode CONV2D_WINOGRAD_U, b is U and
    the scratch starts with the windows), G kron G, then one round's windows
    (tiles x 16 x ci: the patch matrix of 4x4 windows 2 apart, transformed in place) and
    products (tiles x 16 x co); the gemms read these with leading dimensions of 16 channel
    rows, so nothing is copied for them. F(4x4, 3x3) (a 6 x 6 U, modes CONV2D_WINOGRAD_U
    and CONV2D_WINOGRAD_PACKED) is the same with 6x6 windows 4 apart, B^T and A^T of
    Lavin and Gray's F(4x4, 3x3), 36 products per round, and each output of a tile copied
    out (with the epilogue) once A^T M A is in the scratch.

    The forward modes finish their result as they write it (an epilogue, `act`, bits:
    2 bias, then 1 relu or 4 ReLU6; 0 none): `bias` (1-D, co items; not read without
    act's 2) is added per channel, then relu applied (as graphnn's relu: zero where
    x <= 0, NaN kept) or ReLU6 (as graphnn's clip(x, 0, 6): zero where x < 0, six where
    x > 6, NaN and -0.0 kept), while the rows are still in cache; and
    with `cout` > 0 the result has `cout` channels that go to channels off .. off + cout of
    `out` (a concatenation's buffer: out.shape[3] channels per position, kernels/cpu.py
    fold_conv_epilogues). The gradient modes take neither.

    Winograd's transforms would spread a NaN or an infinity of a window over its tile
    (their terms cancel only for finite numbers; F(2x2, 3x3) turns an infinity into NaNs,
    F(4x4, 3x3) spreads both to outputs whose windows do not hold them): from a U, each
    output is checked as it is written (no pass of its own), and conv_gemm returns True
    when one is a NaN or an infinity; the caller then computes the convolution again with
    conv2d_direct. (Mode CONV2D_WINOGRAD, a training step's, keeps F(2x2, 3x3)'s NaNs for
    an infinity.) Otherwise it returns False."""
    if not PACKED and mode >= 5:
        raise ValueError("conv_gemm: modes 5 and 6 are left out of this module (PACKED)")
    if mode == 1:
        x, w, g = out, b, a
    elif mode == 2:
        x, w, g = a, out, b
    else:
        x, w, g = a, b, out
    n_, h_, w_, c_ = x.shape
    kh, kw, ci, co = w.shape
    oh, ow = g.shape[1], g.shape[2]
    # (a packed kernel's last dim is co rounded up to whole panels: co is the output's)
    pitch = g.shape[3]  # channels per position of the output (a concatenation's or co)
    co = cout if cout > 0 else pitch
    cols = kh * kw * ci
    total = n_ * oh * ow
    one, zero, six = out.dtype.type(1), out.dtype.type(0), out.dtype.type(6)
    nzero = out.dtype.type(-0.0)  # (x + -0.0 is x, -0.0 included: no bias)
    xf = x.reshape(-1)
    pointwise = kh == 1 and kw == 1 and s == 1 and ph == 0 and pw == 0
    # mode 5 reading the windows in place, an output row at a time ("direct"): unpadded
    # windows inside the image, a kernel of one block, rows long enough for whole tiles
    direct = False
    if PACKED:
        direct = mode == 5 and not pointwise and ph == 0 and pw == 0 and \
            (oh - 1) * s + kh <= h_ and (ow - 1) * s + kw <= w_ and \
            kh * kw * ci <= PACK_DEPTH and ow >= DIRECT_MIN_WIDTH
    empty = total == 0 or co == 0 or cols == 0  # (BLAS wants sizes >= 1)
    if empty or (TRAINING_MODES and mode == 1 and not pointwise):  # zeros: the result, or
        # col2im's start
        of = out.reshape(-1)
        for k in range(of.size):
            of[k] = zero
        if empty:
            return False
    w2 = w.reshape((cols, w.shape[3]))
    g2 = g.reshape((total, pitch))
    # (direct: a block is one output row)
    block = total if pointwise else ow if direct else min(total, scratch.size // cols)
    finish = act != 0  # an epilogue to apply
    if EPILOGUES and finish and mode != 1 and mode != 2:  # blocks whose rows are still in cache after
        block = min(block, max(EPILOGUE_ROWS, ow))  # their products
    # the windows im2col copies: kh x kw, s apart, one per output (th x tw of them);
    # Winograd: 4 x 4, 2 apart, one per 2x2 tile of outputs
    wh, ww, ws, th, tw, at = kh, kw, s, oh, ow, 0
    uf, us, taps = scratch, 0, 0  # the transformed kernel: where, how far apart, how many
    winograd = mode == 3 or mode == 4 or mode == 6
    wt, tm = 4, 2  # a Winograd window's side and its tile's (below)
    yf = out.reshape(-1)
    bv = yf if bias is None else bias  # (the bias: not read without act's 2)
    width = 2 * PACK_VECTOR_BYTES // out.itemsize  # a packed kernel's panel (mode 5)
    whole = co // width * width                    # columns in whole panels
    if winograd:
        half = out.dtype.type(0.5)
        # F(2x2, 3x3): 4x4 windows 2 apart; F(4x4, 3x3), when U is 6 x 6 x ci x co: 6x6
        # windows 4 apart (mode CONV2D_WINOGRAD transforms its kernel for F(2x2, 3x3))
        if WINOGRAD_F4:
            if mode != 3 and w.shape[0] == 6:
                wt, tm = 6, 4
        wh, ww, ws, th, tw = wt, wt, tm, (oh + tm - 1) // tm, (ow + tm - 1) // tm
        total = n_ * th * tw
        block = max(1, min(s, total))
        cols = wt * wt * ci
        plane = ci * co
        # (loop bounds read from arrays, not literals: LLVM would unroll the loops)
        if mode == 4 or mode == 6 or not TRAINING_MODES:
            uf, us, taps = w.reshape(-1), plane, w.shape[0] * w.shape[1]
        else:
            us = plane + 16
            gg = scratch[16 * us:16 * us + 144]
            at = 16 * us + 144  # where the windows are
            taps = gg.size // 9
            for r in range(gg.size):  # G kron G (16 x 9); G's rows (1 0 0), (.5 .5 .5),
                e = one               # (.5 -.5 .5), (0 0 1)
                for a_, i in ((r // 36, r % 9 // 3), (r // 9 % 4, r % 3)):
                    e *= (one if i == a_ // 3 * 2 else zero) if a_ % 3 == 0 else \
                        (-half if a_ == 2 and i == 1 else half)
                gg[r] = e
            _cblas_gemm(111, 111, 16, plane, 9, one, gg, 9, w.reshape(-1), plane, zero,
                        scratch, us)  # U = (G kron G) @ w as 9 x (ci co)
        mt = at + block * cols  # where the products are
    edge = np.empty(max(block, ow) * width if PACKED and mode >= 5 and whole < co else 0,
                    out.dtype)
    seg = ww * c_
    nonfinite = False  # (a Winograd output that is a NaN or an infinity: see the docstring)
    for r0 in range(0, total, block):
        rows = min(block, total - r0)
        n = r0 // (th * tw)  # (n, y, x) of row r0: image, output (or tile) row and column
        y = (r0 - n * th * tw) // tw
        x0 = r0 - (n * th + y) * tw
        if pointwise:
            col = x.reshape((-1, ci))[r0:r0 + rows]
        elif direct:  # (no patch matrix)
            col = scratch[:0].reshape((0, cols))
        else:
            col = scratch[at:at + rows * cols].reshape((rows, cols))
        cf = col.reshape(-1)
        for r in range(rows if mode != 1 and not pointwise and not direct else 0):  # im2col
            # col[r] = the window of output (n, y, x0) as (i, j, c), zeros where it hangs
            # over the padding; unsigned flat indices let Numba drop its negative-index
            # wraparound, and the copies vectorise (4-6x faster than signed indexing)
            xs = x0 * ws - pw                     # the window's first input column
            j0 = max(0, -xs)
            j1 = min(ww, w_ - xs)                 # window columns j0 .. j1-1 are inside
            for i in range(wh):
                yy = y * ws + i - ph
                base = r * cols + i * seg
                inside = yy >= 0 and yy < h_ and j1 > j0
                if not inside or j0 > 0 or j1 < ww:   # over the padding: zeros first
                    for t in range(base, base + seg):
                        cf[np.uintp(t)] = zero
                if inside:
                    src = ((n * h_ + yy) * w_ + xs) * c_ - base
                    for t in range(base + j0 * c_, base + j1 * c_):
                        cf[np.uintp(t)] = xf[np.uintp(src + t)]
            x0 += 1  # the next (n, y, x0), by increments, not divisions
            if x0 == tw:
                x0, y = 0, y + 1
                if y == th:
                    y, n = 0, n + 1
        if WINOGRAD_F4:
            if winograd and wt == 6:
                # F(4x4, 3x3)'s V = B^T d B in place: B^T's rows (4 0 -5 0 1 0),
                # (0 -4 -4 1 1 0), (0 4 -4 -1 1 0), (0 -2 -1 2 1 0), (0 2 -1 -2 1 0),
                # (0 4 0 -5 0 1) down the columns of each window (6 apart), then along its rows
                f2, f4, f5 = out.dtype.type(2), out.dtype.type(4), out.dtype.type(5)
                for step in range(rows * 12):
                    rw, k = step // 12, step % 12
                    apart = ci if k >= 6 else 6 * ci
                    first = at + rw * cols + (6 * (k - 6) * ci if k >= 6 else k * ci)
                    for c in range(first, first + ci):
                        d0, d1 = scratch[np.uintp(c)], scratch[np.uintp(c + apart)]
                        d2, d3 = scratch[np.uintp(c + 2 * apart)], scratch[np.uintp(c + 3 * apart)]
                        d4, d5 = scratch[np.uintp(c + 4 * apart)], scratch[np.uintp(c + 5 * apart)]
                        scratch[np.uintp(c)] = f4 * d0 - f5 * d2 + d4
                        scratch[np.uintp(c + apart)] = d3 + d4 - f4 * (d1 + d2)
                        scratch[np.uintp(c + 2 * apart)] = f4 * (d1 - d2) + d4 - d3
                        scratch[np.uintp(c + 3 * apart)] = f2 * (d3 - d1) + d4 - d2
                        scratch[np.uintp(c + 4 * apart)] = f2 * (d1 - d3) + d4 - d2
                        scratch[np.uintp(c + 5 * apart)] = f4 * d1 - f5 * d3 + d5
        if winograd and wt == 4:
            # V = B^T d B in place: B^T's rows (1 0 -1 0), (0 1 1 0), (0 -1 1 0), (0 1 0 -1)
            # applied down the columns of each window (4 apart), then along its rows
            for step in range(rows * 8):
                rw, k = step // 8, step % 8
                apart = ci if k >= 4 else 4 * ci
                first = at + rw * cols + (4 * (k - 4) * ci if k >= 4 else k * ci)
                for c in range(first, first + ci):
                    d0, d1 = scratch[np.uintp(c)], scratch[np.uintp(c + apart)]
                    d2, d3 = scratch[np.uintp(c + 2 * apart)], scratch[np.uintp(c + 3 * apart)]
                    scratch[np.uintp(c)] = d0 - d2
                    scratch[np.uintp(c + apart)] = d1 + d2
                    scratch[np.uintp(c + 2 * apart)] = d2 - d1
                    scratch[np.uintp(c + 3 * apart)] = d1 - d3
        if PACKED and mode >= 5:
            # products by graphnn's tile kernel from a packed kernel (kernels/packed.py),
            # one job per panel of `width` columns and block of PACK_DEPTH kernel rows: in
            # mode 5 of y's rows = col @ w (or, `direct`, of one output row of y read from
            # the windows in place, a run of kw*ci items per kernel row), in mode 6 of each
            # Winograd product M[k] = V[k] @ U[k] (U packed per k); tiles of up to 12 rows
            # kept in registers; a tile of the last, partial panel goes to `edge`, whose
            # columns are copied out once the panel's last block is done
            cp, wf = w.shape[3], w.reshape(-1)
            panels = cp // width
            depth = cols if mode == 5 else ci
            blocks = (depth + PACK_DEPTH - 1) // PACK_DEPTH
            groups = 1 if mode == 5 else taps
            for job in range(groups * blocks * panels):
                p, k0 = job % panels * width, job // panels % blocks * PACK_DEPTH
                g = job // (panels * blocks)  # Winograd's k, or (direct) the output row
                kb = min(PACK_DEPTH, depth - k0)
                bo = (g * depth * cp if mode == 6 else 0) + k0 * cp + p * kb
                src, lda, kc, runs, apart, count = cf, cols, kb, 1, 0, rows
                a0, dst0, d0, ldd = k0, yf, r0 * pitch + off, pitch
                if direct:  # (the block's output row: r0 // ow)
                    src, lda, kc, runs, apart, count = xf, s * c_, kw * c_, kh, w_ * c_, ow
                    a0 = (r0 // ow // oh * h_ + r0 // ow % oh * s) * w_ * c_
                elif mode == 6:
                    src, a0, dst0, d0, ldd = scratch, at + g * ci + k0, scratch, mt + g * co, \
                        taps * co
                dst, o, ld = (dst0, d0 + p, ldd) if p < whole else (edge, 0, width)
                # the epilogue (mode 5) by the tile kernel on the panel's last block, in its
                # registers; a partial panel's as its columns are copied out of `edge`
                fin = act if mode == 5 and p < whole and k0 + kb >= depth else 0
                i = 0
                while i < count:
                    ao, oi, left = a0 + i * lda, o + i * ld, count - i
                    if left >= 12:
                        _packed_tile(12, kc, src, ao, lda, wf, bo, dst, oi, ld, k0, runs, apart,
                                     fin, bv, p)
                        i += 12
                    elif left >= 4:
                        _packed_tile(4, kc, src, ao, lda, wf, bo, dst, oi, ld, k0, runs, apart,
                                     fin, bv, p)
                        i += 4
                    else:
                        _packed_tile(1, kc, src, ao, lda, wf, bo, dst, oi, ld, k0, runs, apart,
                                     fin, bv, p)
                        i += 1
                for r in range(count if p >= whole and k0 + kb >= depth else 0):
                    for q in range(co - whole):
                        v = edge[np.uintp(r * width + q)]
                        if mode == 5 and act & 2:
                            v += bv[whole + q]
                        if mode == 5 and act % 2 == 1 and v <= zero:
                            v = zero
                        if mode == 5 and act >= 4:
                            v = zero if v < zero else (six if v > six else v)
                        dst0[np.uintp(d0 + r * ldd + whole + q)] = v
            if mode == 5:
                continue
        if winograd:
            for k in range(taps if mode != 6 else 0):  # products[k] = V[k] @ U[k]
                _cblas_gemm(111, 111, rows, co, ci, one, scratch[at + k * ci:], cols,
                            uf[k * us:], co, zero, scratch[mt + k * co:], taps * co)
        if WINOGRAD_F4:
            if winograd and wt == 6:
                # F(4x4, 3x3)'s 4x4 tile = A^T M A: A^T's rows (1 1 1 1 1 0), (0 1 -1 2 -2 0),
                # (0 1 1 4 4 0), (0 1 -1 8 -8 1) down the columns of M (6 apart, into its first
                # four rows), then along those rows (into their first four entries), in place;
                # then each output copied out (with the epilogue), those past y's edge left
                f2, f4, f8 = out.dtype.type(2), out.dtype.type(4), out.dtype.type(8)
                for step in range(rows * 10):
                    rw, k = step // 10, step % 10
                    apart = co if k >= 6 else 6 * co
                    first = mt + rw * 36 * co + (6 * (k - 6) * co if k >= 6 else k * co)
                    for c in range(first, first + co):
                        e0, e1 = scratch[np.uintp(c)], scratch[np.uintp(c + apart)]
                        e2, e3 = scratch[np.uintp(c + 2 * apart)], scratch[np.uintp(c + 3 * apart)]
                        e4, e5 = scratch[np.uintp(c + 4 * apart)], scratch[np.uintp(c + 5 * apart)]
                        s12, d12, s34, d34 = e1 + e2, e1 - e2, e3 + e4, e3 - e4
                        scratch[np.uintp(c)] = e0 + s12 + s34
                        scratch[np.uintp(c + apart)] = d12 + f2 * d34
                        scratch[np.uintp(c + 2 * apart)] = s12 + f4 * s34
                        scratch[np.uintp(c + 3 * apart)] = d12 + f8 * d34 + e5
                n = r0 // (th * tw)
                y = (r0 - n * th * tw) // tw
                x0 = r0 - (n * th + y) * tw
                bad = zero  # (NaN when an output is a NaN or an infinity: x * 0 is NaN)
                for step in range(rows * 16):
                    i, j = step % 16 // 4, step % 4
                    if 4 * y + i < oh and 4 * x0 + j < ow:
                        src = mt + (step // 16 * 36 + i * 6 + j) * co
                        dst = ((n * oh + 4 * y + i) * ow + 4 * x0 + j) * pitch + off
                        for k in range(co):
                            v = scratch[np.uintp(src + k)]
                            if WINOGRAD_U:
                                bad += v * zero
                            if EPILOGUES:  # (the epilogue)
                                v += bias[k] if act & 2 else nzero
                                v = zero if act % 2 == 1 and v <= zero else v
                                v = zero if act >= 4 and v < zero else v
                                v = six if act >= 4 and v > six else v
                            yf[np.uintp(dst + k)] = v
                    if step % 16 == 15:
                        x0 += 1
                        if x0 == tw:
                            x0, y = 0, y + 1
                            if y == th:
                                y, n = 0, n + 1
                if WINOGRAD_U:
                    nonfinite = nonfinite or bad != bad
                continue
        if winograd and wt == 4:
            # y's 2x2 tile = A^T M A: A^T's rows (1 1 1 0), (0 1 -1 -1) applied down the
            # columns of M (4 apart, in place), then along its first two rows into y; a
            # tile's outputs past y's edge go to its first output, which is written last
            for step in range(rows * 4):
                first = mt + step // 4 * 16 * co + step % 4 * co
                for k in range(first, first + co):
                    e0, e1 = scratch[np.uintp(k)], scratch[np.uintp(k + 4 * co)]
                    e2, e3 = scratch[np.uintp(k + 8 * co)], scratch[np.uintp(k + 12 * co)]
                    scratch[np.uintp(k)] = e0 + e1 + e2
                    scratch[np.uintp(k + 4 * co)] = e1 - e2 - e3
            n = r0 // (th * tw)
            y = (r0 - n * th * tw) // tw
            x0 = r0 - (n * th + y) * tw
            bad = zero  # (as F(4x4, 3x3)'s)
            for step in range(rows * 2):
                if step % 2 == 0:
                    p00 = ((n * oh + 2 * y) * ow + 2 * x0) * pitch + off
                    down = 2 * y + 1 < oh
                    a_, p0 = 1, p00 + ow * pitch if down else p00  # the tile's second row first
                else:
                    a_, p0 = 0, p00
                p1 = p0 + pitch if 2 * x0 + 1 < ow and (a_ == 0 or down) else p0
                first = mt + step // 2 * 16 * co + 4 * a_ * co
                for k in range(co):
                    e0, e1 = scratch[np.uintp(first + k)], scratch[np.uintp(first + k + co)]
                    e2 = scratch[np.uintp(first + k + 2 * co)]
                    e3 = scratch[np.uintp(first + k + 3 * co)]
                    v1, v0 = e1 - e2 - e3, e0 + e1 + e2
                    if WINOGRAD_U:
                        bad += (v0 + v1) * zero
                    if EPILOGUES:  # (the epilogue)
                        ep = bias[k] if act & 2 else nzero
                        v1, v0 = v1 + ep, v0 + ep
                        v1 = zero if act % 2 == 1 and v1 <= zero else v1
                        v0 = zero if act % 2 == 1 and v0 <= zero else v0
                        v1 = zero if act >= 4 and v1 < zero else v1
                        v1 = six if act >= 4 and v1 > six else v1
                        v0 = zero if act >= 4 and v0 < zero else v0
                        v0 = six if act >= 4 and v0 > six else v0
                    yf[np.uintp(p1 + k)] = v1
                    yf[np.uintp(p0 + k)] = v0
                if step % 2 == 1:
                    x0 += 1
                    if x0 == tw:
                        x0, y = 0, y + 1
                        if y == th:
                            y, n = 0, n + 1
            if WINOGRAD_U:
                nonfinite = nonfinite or bad != bad
            continue
        gy = g2[r0:r0 + rows]
        # (one BLAS call site for the three modes; the product is written through a flat
        # view: in mode 0 its rows are `pitch` apart, from channel `off`)
        if mode == 0:
            ta, tb, p, q, beta = 111, 111, col, w2, zero
            c, m_, n_c, ldc = yf[r0 * pitch + off:], rows, co, pitch
        elif mode == 1:
            ta, tb, p, q, beta = 111, 112, gy, w2, zero
            c, m_, n_c, ldc = cf, rows, cols, cols
        else:
            ta, tb, p, q, beta = 112, 111, col, gy, zero if r0 == 0 else one
            c, m_, n_c, ldc = w.reshape(-1), cols, co, co
        _cblas_gemm(ta, tb, m_, n_c, p.shape[0] if ta == 112 else p.shape[1],
                    one, p, p.shape[1], q, q.shape[1], beta, c, ldc)
        if EPILOGUES:
            for r in range(r0, r0 + rows if mode == 0 and finish else r0):  # the epilogue
                base = r * pitch + off
                for q_ in range(co):
                    v = yf[np.uintp(base + q_)] + (bias[q_] if act & 2 else nzero)
                    v = zero if act % 2 == 1 and v <= zero else v
                    v = zero if act >= 4 and v < zero else v
                    v = six if act >= 4 and v > six else v
                    yf[np.uintp(base + q_)] = v
        for r in range(rows if TRAINING_MODES and mode == 1 and not pointwise else 0):  # col2im
            # x += col[r] put back where im2col took it from (the padding's share dropped)
            xs = x0 * s - pw
            j0 = max(0, -xs)
            j1 = min(kw, w_ - xs)
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_ or j1 <= j0:
                    continue
                base = r * cols + i * seg
                dst = ((n * h_ + yy) * w_ + xs) * c_ - base
                for t in range(base + j0 * c_, base + j1 * c_):
                    xf[np.uintp(dst + t)] += cf[np.uintp(t)]
            x0 += 1
            if x0 == tw:
                x0, y = 0, y + 1
                if y == th:
                    y, n = 0, n + 1
    return nonfinite


# Winograd F(2x2, 3x3) for stride-1 3x3 convolutions (see conv_gemm). Measured against
# im2col + gemm on one thread (docs/BENCHMARKS.md, "Winograd"): 0.53-0.66x the time from
# 196 tiles of 2x2 outputs per image up, 0.57-0.88x at 49 tiles, 1.6x slower at 16 tiles
# (7x7 outputs, where transforming the kernel at every call costs more than it saves).
WINOGRAD_BYTES = 1 << 20   # transformed windows + products per gemm round, about ...
WINOGRAD_MIN_ROUND = 64    # ... but at least this many tiles (rounds of fewer tiles read
#                            the transformed kernel too often for what they multiply)
WINOGRAD_MIN_CHANNELS = 8  # fewer channels: the 16 products are too thin for BLAS
WINOGRAD_MIN_TILES = 36    # fewer tiles per image: the kernel's transform dominates
# A constant kernel transformed beforehand (CONV2D_WINOGRAD_U, inference): against
# im2col + gemm, one thread, float32, batch 1 (thread CPU time, median of 11): 56x56
# 64->64 0.50x, 28x28 128->128 0.60x, 14x14 256->256 0.57x, 13x13 384->384 0.57x,
# 12x12 192->192 0.64x, 7x7 512->512 0.92x, 7x7 192->384 0.95x alone; but inside
# ResNet-50 its 7x7 512->512 layers took 2.8 ms as Winograd against 2.3-2.5 ms as im2col
# (U, 16/9 of the kernel's size, is read from the last-level cache at batch 1), so the
# same 36 tiles (12x12 outputs) as for CONV2D_WINOGRAD.
WINOGRAD_MIN_TILES_U = 36
# F(4x4, 3x3) from outputs this wide and high (winograd_side). Its U is 36/16 of F(2x2,
# 3x3)'s, and at batch 1 a network's U is read from beyond L2 at each call: alone, a
# 13x13 or 14x14 layer was 0.79-0.90x F(2x2, 3x3)'s time, but inside SqueezeNet,
# DenseNet-121, ResNet-50 and VGG-19 (other layers' weights read in between) the whole
# model was as fast or 2-4% faster with F(2x2, 3x3) there; from 28x28 up F(4x4, 3x3) takes
# 0.66-0.70x the time (docs/BENCHMARKS.md, "Winograd F(4x4, 3x3)")
WINOGRAD_F4_MIN_SIDE = 24


def winograd_tiles(oh, ow, side=2):
    """Tiles of side x side outputs covering an oh x ow output, per image."""
    return ((oh + side - 1) // side) * ((ow + side - 1) // side)


def winograd_side(oh, ow):
    """The output tile of a Winograd convolution whose kernel is transformed beforehand
    (CONV2D_WINOGRAD_U, see use_winograd): 4 (F(4x4, 3x3), 4x fewer multiplies than im2col
    + gemm, and 6x6 transformed windows per 16 outputs instead of 4x4 per 4) when the
    output is at least WINOGRAD_F4_MIN_SIDE each way, else 2."""
    return 4 if min(oh, ow) >= WINOGRAD_F4_MIN_SIDE else 2


def use_winograd(kh, kw, s, ci, co, oh, ow, pretransformed=False):
    """Whether a convolution runs as Winograd F(2x2, 3x3) (conv_gemm's CONV2D_WINOGRAD) rather than
    im2col + gemm: 3x3, stride 1, enough channels each way and enough tiles per image
    (the kernel is transformed at every call, 16/9 of its size). `pretransformed`: the
    kernel is a constant transformed once (CONV2D_WINOGRAD_U), so fewer tiles pay."""
    least = WINOGRAD_MIN_TILES_U if pretransformed else WINOGRAD_MIN_TILES
    return (kh == 3 and kw == 3 and s == 1 and min(ci, co) >= WINOGRAD_MIN_CHANNELS
            and winograd_tiles(oh, ow) >= least)


def winograd_kernel(w, tile=2):
    """U = G g G^T for each (input, output) channel pair of a 3x3 HWIO kernel `w`: the
    4 x 4 x ci x co array conv_gemm's CONV2D_WINOGRAD_U mode reads for F(2x2, 3x3), in w's
    dtype (the same product CONV2D_WINOGRAD computes at every call); with `tile` 4, the
    6 x 6 x ci x co array it reads for F(4x4, 3x3)."""
    w = np.ascontiguousarray(w)
    if tile == 4:  # (G's entries 1/4, 1/6, 1/12, 1/24, rounded to w's dtype: in float32,
        # U within 3e-8 of its float64 product, and a 512x512 kernel's in 15 ms, not 40)
        g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
        u = np.kron(g, g).astype(w.dtype) @ w.reshape(9, -1)
        return u.reshape((6, 6) + w.shape[2:])
    g = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    # (G kron G) @ w as 9 x (ci co): one BLAS product in w's dtype, as CONV2D_WINOGRAD
    # computes it (G's entries are 0, +-1/2 and 1: exact in float32; a 512x512 kernel
    # takes about 10 ms; einsum's loop took 0.1 s, which every gn.compile of VGG-19 would
    # pay for each of its 3x3 layers)
    u = np.kron(g, g).astype(w.dtype) @ w.reshape(9, -1)
    return u.reshape((4, 4) + w.shape[2:])


def winograd_block_tiles(ci, co, itemsize, taps=16):
    """Tiles per gemm round of a Winograd convolution (before capping at the tiles there
    are); `taps`: 16 for F(2x2, 3x3), 36 for F(4x4, 3x3)."""
    return max(WINOGRAD_MIN_ROUND * 16 // taps, WINOGRAD_BYTES // (taps * (ci + co) * itemsize))


def winograd_scratch_items(ci, co, tiles, pretransformed=False, taps=16):
    """Items of scratch conv_gemm's Winograd mode needs for rounds of `tiles` tiles: the
    transformed kernel (16 matrices ci x co, 16 items apart), G kron G (16 x 9), and one
    round's transformed windows and products (`taps` per tile, see winograd_block_tiles);
    with `pretransformed` (CONV2D_WINOGRAD_U) only the round's."""
    fixed = 0 if pretransformed else 16 * (ci * co + 16) + 144
    return fixed + taps * (ci + co) * tiles


HELPERS = {f.__name__: f for f in (conv2d, conv2d_grad_input, conv2d_grad_filter, max_pool2d,
                                   max_pool2d_grad, avg_pool2d, avg_pool2d_grad,
                                   conv2d_direct)}
# the convolutions the CPU generator emits as conv_gemm(mode, ...) (BLAS products), and
# the functions conv_gemm calls (copied into the generated module with it)
GEMM_HELPERS = {"conv2d": CONV2D, "conv2d_grad_input": CONV2D_GRAD_INPUT,
                "conv2d_grad_filter": CONV2D_GRAD_FILTER,
                # a conv2d whose constant kernel the cpu back end transformed beforehand
                "conv2d_winograd": CONV2D_WINOGRAD_U,
                # a conv2d whose constant kernel the cpu back end packed (kernels/packed.py)
                "conv2d_packed": CONV2D_PACKED,
                # a conv2d_winograd whose transformed kernel the cpu back end also packed
                "conv2d_winograd_packed": CONV2D_WINOGRAD_PACKED}
GEMM_SUPPORT = (conv_gemm,)
# the helpers that need conv_gemm's modes 5 and 6 (PACKED)
PACKED_HELPERS = ("conv2d_packed", "conv2d_winograd_packed")
