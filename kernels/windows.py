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
"""
import numpy as np

from .blas import GEMM as gemm  # generated modules carry their own copy of gemm

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
    unsigned indices (see _im2col); the maximum as a select, which compiles quicker than
    a conditional store."""
    n_, h_, w_, c_ = x.shape
    _, oh, ow, _ = out.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                dst = ((n * oh + y) * ow + x0) * c_
                src = ((n * h_ + y * s) * w_ + x0 * s) * c_ - dst
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
    n_, oh, ow, c_ = out.shape
    scale = 1.0 / (k * k)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                for c in range(c_):
                    acc = x[n, y * s, x0 * s, c] * 0
                    for i in range(k):
                        for j in range(k):
                            acc += x[n, y * s + i, x0 * s + j, c]
                    out[n, y, x0, c] = acc * scale


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


def _first_row(r0, oh, ow):
    """(n, y, x) of patch-matrix row r0: its image, output row and output column."""
    n = r0 // (oh * ow)
    y = (r0 - n * oh * ow) // ow
    return n, y, r0 - (n * oh + y) * ow


def _next_row(n, y, x0, oh, ow):
    """(n, y, x) of the row after (n, y, x0), by increments, not divisions."""
    x0 += 1
    if x0 == ow:
        x0 = 0
        y += 1
        if y == oh:
            y = 0
            n += 1
    return n, y, x0


def _im2col(x, s, ph, pw, kh, kw, oh, ow, r0, rows, col):
    """col[r] = the window of output row r0 + r ((n, y, x) in row-major order) as
    (i, j, c), zeros where the window hangs over the padding. x and col are C-contiguous.
    Flat indices are unsigned (np.uintp): Numba then drops its negative-index wraparound
    and the copies vectorise (4-6x faster than signed indexing); (n, y, x) advance by
    increments, not divisions. Two loops only (zeros, copy): Numba's compile time grows
    with every loop it vectorises, here and again in each program that calls it."""
    n_, h_, w_, c_ = x.shape
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    zero = cf.dtype.type(0)
    seg = kw * c_
    cols = kh * seg
    n, y, x0 = _first_row(r0, oh, ow)
    for r in range(rows):
        xs = x0 * s - pw                      # the window's first input column
        j0 = max(0, -xs)
        j1 = min(kw, w_ - xs)                 # window columns j0 .. j1-1 are inside
        for i in range(kh):
            yy = y * s + i - ph
            base = r * cols + i * seg
            inside = yy >= 0 and yy < h_ and j1 > j0
            if not inside or j0 > 0 or j1 < kw:   # over the padding: zeros first
                for t in range(base, base + seg):
                    cf[np.uintp(t)] = zero
            if inside:
                src = ((n * h_ + yy) * w_ + xs) * c_ - base
                for t in range(base + j0 * c_, base + j1 * c_):
                    cf[np.uintp(t)] = xf[np.uintp(src + t)]
        n, y, x0 = _next_row(n, y, x0, oh, ow)


def _col2im(col, s, ph, pw, kh, kw, oh, ow, r0, rows, x):
    """x += the columns of rows r0 .. r0+rows-1 put back where _im2col took them from
    (the padding's share is dropped). x and col are C-contiguous."""
    n_, h_, w_, c_ = x.shape
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    seg = kw * c_
    cols = kh * seg
    n, y, x0 = _first_row(r0, oh, ow)
    for r in range(rows):
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
        n, y, x0 = _next_row(n, y, x0, oh, ow)


CONV2D, CONV2D_GRAD_INPUT, CONV2D_GRAD_FILTER = 0, 1, 2  # conv_gemm's modes


def conv_gemm(mode, a, b, s, ph, pw, scratch, out):
    """A convolution or one of its gradients as BLAS products, block by block of output
    rows (one function for the three, so Numba compiles it once per dtype):

    CONV2D              a = x, b = w, out = y:  y = im2col(x) @ w
    CONV2D_GRAD_INPUT   a = dy, b = w, out = dx: dx = col2im(dy @ w^T)
    CONV2D_GRAD_FILTER  a = x, b = dy, out = dw: dw = sum over blocks of im2col(x)^T @ dy
                        (gemm reads the block transposed and accumulates with beta = 1)

    `scratch` (1-D, out's dtype) holds one block of the patch matrix; a 1x1 stride-1
    unpadded convolution needs none: the NHWC data viewed as (N*H*W, C) is the patch
    matrix, one block. One gemm call site: each is compiled again in every caller."""
    if mode == 0:
        x, w, g = a, b, out
    elif mode == 1:
        x, w, g = out, b, a
    else:
        x, w, g = a, out, b
    kh, kw, ci, co = w.shape
    oh, ow = g.shape[1], g.shape[2]
    cols = kh * kw * ci
    total = x.shape[0] * oh * ow
    one, zero = out.dtype.type(1), out.dtype.type(0)
    no, yes = np.bool_(False), np.bool_(True)
    w2 = w.reshape((cols, co))
    g2 = g.reshape((total, co))
    x2 = x.reshape((-1, ci))  # the patch matrix when pointwise
    pointwise = kh == 1 and kw == 1 and s == 1 and ph == 0 and pw == 0
    block = total if pointwise else min(total, scratch.size // cols)
    if mode == 1 and not pointwise:
        xf = x.reshape(-1)
        for k in range(xf.size):
            xf[k] = zero
    for r0 in range(0, total, block):
        rows = min(block, total - r0)
        gy = g2[r0:r0 + rows]
        if pointwise:
            col = x2[r0:r0 + rows]
        else:
            col = scratch[:rows * cols].reshape((rows, cols))
            if mode != 1:
                _im2col(x, s, ph, pw, kh, kw, oh, ow, r0, rows, col)
        if mode == 0:
            ta, tb, p, q, c, beta = no, no, col, w2, gy, zero
        elif mode == 1:
            ta, tb, p, q, c, beta = no, yes, gy, w2, col, zero
        else:
            ta, tb, p, q, c, beta = yes, no, col, gy, w2, zero if r0 == 0 else one
        gemm(ta, tb, one, p, q, beta, c)
        if mode == 1 and not pointwise:
            _col2im(col, s, ph, pw, kh, kw, oh, ow, r0, rows, x)


HELPERS = {f.__name__: f for f in (conv2d, conv2d_grad_input, conv2d_grad_filter, max_pool2d,
                                   max_pool2d_grad, avg_pool2d, avg_pool2d_grad)}
# the convolutions the CPU generator emits as conv_gemm(mode, ...) (BLAS products), and
# the functions conv_gemm calls (copied into the generated module with it)
GEMM_HELPERS = {"conv2d": CONV2D, "conv2d_grad_input": CONV2D_GRAD_INPUT,
                "conv2d_grad_filter": CONV2D_GRAD_FILTER}
GEMM_SUPPORT = (_first_row, _next_row, _im2col, _col2im, conv_gemm)
