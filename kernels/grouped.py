"""Depthwise and grouped convolution kernels for the CPU, written as plain Python that
Numba compiles. Like
kernels/windows.py, the CPU generator copies their source into each generated module, and
they run unchanged as Python for tests. Each takes its output buffer last and fills it
completely.

Depthwise (NHWC images, kernels (kh, kw, 1, c): one filter per channel). Geometry
arguments: stride `s`, top/left padding `ph`, `pw` (the output's shape gives the
rest: a tap outside the image reads zero).

A depthwise convolution does kh*kw multiply-adds per output element, too few for a
matrix product: the loops run over the output positions and the taps, with the channels
innermost (contiguous in NHWC and in the kernel), so each tap is one vectorised
multiply-add of a row of channels. Indices are flat and unsigned (np.uintp): Numba then
drops its negative-index wraparound and the channel loops vectorise (as in
windows.conv_gemm). No helper calls another: Numba would compile a callee twice.
"""
import numpy as np

# generated modules carry their own _cblas_gemm (kernels/blas.py), an intrinsic
from .blas import CBLAS_GEMM as _cblas_gemm


def depthwise_conv2d(x, w, s, ph, pw, out):
    """out[n, y, x0, c] = sum over (i, j) of x[n, y*s + i - ph, x0*s + j - pw, c] * w[i, j, 0, c]."""
    n_, h_, w_, c_ = x.shape
    kh, kw = w.shape[0], w.shape[1]
    oh, ow = out.shape[1], out.shape[2]
    xf, wf, of = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    zero = out.dtype.type(0)
    c = np.uintp(c_)
    r1 = w_ * c_  # the next image row
    taps = ((c_, c_), (2 * c_, 2 * c_), (r1, 3 * c_), (r1 + c_, 4 * c_),
            (r1 + 2 * c_, 5 * c_), (2 * r1, 6 * c_), (2 * r1 + c_, 7 * c_),
            (2 * r1 + 2 * c_, 8 * c_))
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                o = np.uintp(((n * oh + y) * ow + x0) * c_)
                y0, xs = y * s - ph, x0 * s - pw
                if kh == 3 and kw == 3 and y0 >= 0 and xs >= 0 and y0 + 3 <= h_ and \
                        xs + 3 <= w_:
                    # (the window wholly inside the image: its sum over the taps in a
                    # register, each tap (input, kernel offset) in the order of the loops
                    # below, so the same sum)
                    a0 = ((n * h_ + y0) * w_ + xs) * c_
                    for q in range(c_):
                        a = a0 + q
                        acc = zero + xf[np.uintp(a)] * wf[np.uintp(q)]
                        for t, u in taps:
                            acc += xf[np.uintp(a + t)] * wf[np.uintp(q + u)]
                        of[o + np.uintp(q)] = acc
                    continue
                for k in range(c):
                    of[o + k] = zero
                for i in range(kh):
                    yy = y * s + i - ph
                    if yy < 0 or yy >= h_:
                        continue
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        a = np.uintp(((n * h_ + yy) * w_ + xx) * c_)
                        b = np.uintp((i * kw + j) * c_)
                        for k in range(c):
                            of[o + k] += xf[a + k] * wf[b + k]


def depthwise_conv2d_grad_input(g, w, s, ph, pw, out):
    """The gradient of depthwise_conv2d's image (out, shaped like it) from the output
    gradient g: each output's row of channels times each tap's weights, added back where
    the tap read."""
    n_, h_, w_, c_ = out.shape
    kh, kw = w.shape[0], w.shape[1]
    oh, ow = g.shape[1], g.shape[2]
    gf, wf, of = g.reshape(-1), w.reshape(-1), out.reshape(-1)
    zero = out.dtype.type(0)
    for k in range(of.size):
        of[k] = zero
    c = np.uintp(c_)
    for n in range(n_):
        for y in range(oh):
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_:
                    continue
                for x0 in range(ow):
                    o = np.uintp(((n * oh + y) * ow + x0) * c_)
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        a = np.uintp(((n * h_ + yy) * w_ + xx) * c_)
                        b = np.uintp((i * kw + j) * c_)
                        for k in range(c):
                            of[a + k] += gf[o + k] * wf[b + k]


def depthwise_conv2d_grad_filter(x, g, s, ph, pw, out):
    """The gradient of depthwise_conv2d's kernel (out, (kh, kw, 1, c)) from the image x and
    the output gradient g."""
    n_, h_, w_, c_ = x.shape
    kh, kw = out.shape[0], out.shape[1]
    oh, ow = g.shape[1], g.shape[2]
    xf, gf, of = x.reshape(-1), g.reshape(-1), out.reshape(-1)
    zero = out.dtype.type(0)
    for k in range(of.size):
        of[k] = zero
    c = np.uintp(c_)
    for n in range(n_):
        for y in range(oh):
            for i in range(kh):
                yy = y * s + i - ph
                if yy < 0 or yy >= h_:
                    continue
                for x0 in range(ow):
                    o = np.uintp(((n * oh + y) * ow + x0) * c_)
                    for j in range(kw):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        a = np.uintp(((n * h_ + yy) * w_ + xx) * c_)
                        b = np.uintp((i * kw + j) * c_)
                        for k in range(c):
                            of[b + k] += xf[a + k] * gf[o + k]


# Grouped 1x1 convolutions (ShuffleNet): images (n, h, w, c), kernels (1, 1, c / groups, k),
# `groups` groups. Seen as matrices, NHWC images are (n*h*w, c) and the kernel (c/groups, k):
# group g multiplies the image's columns [g c/groups, (g+1) c/groups) by the kernel's
# columns [g k/groups, (g+1) k/groups) into the same columns of the output. Each group is
# one BLAS gemm reading those column blocks in place (the leading dimensions are the full
# row lengths c and k; a block starts at a flat offset), so nothing is copied or sliced.

def grouped_conv2d(x, w, groups, out):
    """out = the grouped 1x1 convolution of x by w (see above)."""
    m = x.shape[0] * x.shape[1] * x.shape[2]
    c, k = x.shape[3], w.shape[3]
    gin, gout = c // groups, k // groups
    xf, wf, of = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    one, zero = out.dtype.type(1), out.dtype.type(0)
    if m == 0 or gout == 0 or gin == 0:
        for q in range(of.size):
            of[q] = zero
        return
    for g in range(groups):
        _cblas_gemm(111, 111, m, gout, gin, one, xf[g * gin:], c, wf[g * gout:], k,
                    zero, of[g * gout:], k)


def grouped_conv2d_grad_input(dy, w, groups, out):
    """out (the image's shape) = the gradient of grouped_conv2d's image: group g of the
    output gradient times the transpose of its kernel block."""
    m = out.shape[0] * out.shape[1] * out.shape[2]
    c, k = out.shape[3], w.shape[3]
    gin, gout = c // groups, k // groups
    gf, wf, of = dy.reshape(-1), w.reshape(-1), out.reshape(-1)
    one, zero = out.dtype.type(1), out.dtype.type(0)
    if m == 0 or gout == 0 or gin == 0:
        for q in range(of.size):
            of[q] = zero
        return
    for g in range(groups):
        _cblas_gemm(111, 112, m, gin, gout, one, gf[g * gout:], k, wf[g * gout:], k,
                    zero, of[g * gin:], c)


def grouped_conv2d_grad_filter(x, dy, groups, out):
    """out (the kernel's shape) = the gradient of grouped_conv2d's kernel: the transpose of
    the image's group g times the output gradient's group g."""
    m = x.shape[0] * x.shape[1] * x.shape[2]
    c, k = x.shape[3], out.shape[3]
    gin, gout = c // groups, k // groups
    xf, gf, of = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
    one, zero = out.dtype.type(1), out.dtype.type(0)
    if m == 0 or gout == 0 or gin == 0:
        for q in range(of.size):
            of[q] = zero
        return
    for g in range(groups):
        _cblas_gemm(112, 111, gin, gout, m, one, xf[g * gin:], c, gf[g * gout:], k,
                    zero, of[g * gout:], k)


def channel_shuffle(x, groups, out):
    """out[..., j * groups + i] = x[..., i * (c / groups) + j]: each pixel's channels are
    read in order and written `groups` apart (reading in order measured 2-3x faster than
    writing in order, for ShuffleNet's 4 groups)."""
    c = x.shape[3]
    per = c // groups
    xf, of = x.reshape(-1), out.reshape(-1)
    for p in range(xf.size // c if c else 0):
        base = np.uintp(p * c)
        for i in range(groups):
            src = base + np.uintp(i * per)
            dst = base + np.uintp(i)
            for j in range(per):
                of[dst + np.uintp(j * groups)] = xf[src + np.uintp(j)]


# Max pooling with explicit pads (ops.py, max_pool2d_padded): the maximum over a window's
# taps inside the image; size `k`, stride `s`, top/left pads `ph`, `pw`; channels inner.

def max_pool2d_padded(x, k, s, ph, pw, out):
    """(A 3x3 window wholly inside the image keeps its maximum in a register over its
    taps, as in windows.max_pool2d.)"""
    n_, h_, w_, c_ = x.shape
    oh, ow = out.shape[1], out.shape[2]
    xf, of = x.reshape(-1), out.reshape(-1)
    c = np.uintp(c_)
    r1 = w_ * c_  # the next image row
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                o = np.uintp(((n * oh + y) * ow + x0) * c_)
                y0, xs = y * s - ph, x0 * s - pw
                if k == 3 and y0 >= 0 and xs >= 0 and y0 + 3 <= h_ and xs + 3 <= w_:
                    a0 = ((n * h_ + y0) * w_ + xs) * c_
                    for q in range(c_):
                        a = a0 + q
                        m = xf[np.uintp(a)]
                        for t in (c_, 2 * c_, r1, r1 + c_, r1 + 2 * c_, 2 * r1,
                                  2 * r1 + c_, 2 * r1 + 2 * c_):
                            v = xf[np.uintp(a + t)]
                            m = v if v > m else m
                        of[o + np.uintp(q)] = m
                    continue
                first = True
                for i in range(k):
                    yy = y * s + i - ph
                    if yy < 0 or yy >= h_:
                        continue
                    for j in range(k):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        a = np.uintp(((n * h_ + yy) * w_ + xx) * c_)
                        if first:
                            for q in range(c):
                                of[o + q] = xf[a + q]
                            first = False
                        else:
                            for q in range(c):
                                v = xf[a + q]
                                b = of[o + q]
                                of[o + q] = v if v > b else b


def max_pool2d_padded_grad(x, g, k, s, ph, pw, out):
    """Each window's gradient goes to its first (row-major) maximal tap inside the image:
    per output position the maxima and their flat indices for all channels at once, then
    scattered."""
    n_, h_, w_, c_ = x.shape
    oh, ow = g.shape[1], g.shape[2]
    xf, gf, of = x.reshape(-1), g.reshape(-1), out.reshape(-1)
    for t in range(of.size):
        of[t] = 0
    best = np.empty(c_, x.dtype)
    at = np.empty(c_, np.intp)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                first = True
                for i in range(k):
                    yy = y * s + i - ph
                    if yy < 0 or yy >= h_:
                        continue
                    for j in range(k):
                        xx = x0 * s + j - pw
                        if xx < 0 or xx >= w_:
                            continue
                        a = ((n * h_ + yy) * w_ + xx) * c_
                        if first:
                            for q in range(c_):
                                best[q] = xf[np.uintp(a + q)]
                                at[q] = a + q
                            first = False
                        else:
                            for q in range(c_):
                                v = xf[np.uintp(a + q)]
                                b = best[q]
                                at[q] = a + q if v > b else at[q]
                                best[q] = v if v > b else b
                d = ((n * oh + y) * ow + x0) * c_
                for q in range(c_):
                    of[np.uintp(at[q])] += gf[np.uintp(d + q)]


HELPERS = {f.__name__: f for f in (depthwise_conv2d, depthwise_conv2d_grad_input,
                                   depthwise_conv2d_grad_filter, grouped_conv2d,
                                   grouped_conv2d_grad_input, grouped_conv2d_grad_filter,
                                   channel_shuffle, max_pool2d_padded,
                                   max_pool2d_padded_grad)}
# the helpers that call BLAS: a module that copies one also carries _cblas_gemm
BLAS_HELPERS = ("grouped_conv2d", "grouped_conv2d_grad_input", "grouped_conv2d_grad_filter")
