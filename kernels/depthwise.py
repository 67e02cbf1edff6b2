"""Depthwise convolution kernels for the CPU (NHWC images, kernels (kh, kw, 1, c): one
filter per channel), written as plain Python loops that Numba compiles. Like
kernels/windows.py, the CPU generator copies their source into each generated module, and
they run unchanged as Python for tests. Each takes its output buffer last and fills it
completely.

Geometry arguments: stride `s`, top/left padding `ph`, `pw` (the output's shape gives the
rest: a tap outside the image reads zero).

A depthwise convolution does kh*kw multiply-adds per output element, too few for a
matrix product: the loops run over the output positions and the taps, with the channels
innermost (contiguous in NHWC and in the kernel), so each tap is one vectorised
multiply-add of a row of channels. Indices are flat and unsigned (np.uintp): Numba then
drops its negative-index wraparound and the channel loops vectorise (as in
windows.conv_gemm). No helper calls another: Numba would compile a callee twice.
"""
import numpy as np


def depthwise_conv2d(x, w, s, ph, pw, out):
    """out[n, y, x0, c] = sum over (i, j) of x[n, y*s + i - ph, x0*s + j - pw, c] * w[i, j, 0, c]."""
    n_, h_, w_, c_ = x.shape
    kh, kw = w.shape[0], w.shape[1]
    oh, ow = out.shape[1], out.shape[2]
    xf, wf, of = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    zero = out.dtype.type(0)
    c = np.uintp(c_)
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                o = np.uintp(((n * oh + y) * ow + x0) * c_)
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


HELPERS = {f.__name__: f for f in (depthwise_conv2d, depthwise_conv2d_grad_input,
                                   depthwise_conv2d_grad_filter)}
