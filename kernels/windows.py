"""Convolution and pooling kernels (NHWC images, HWIO kernels), written as plain Python
loops that Numba compiles. The CPU generator copies their source into each generated
module (so a cached module never depends on this file), and they run unchanged as Python
for tests. Each takes its output buffer last and fills it completely.

Geometry arguments: stride `s`, top/left padding `ph`, `pw`; pooling window `k`.
"""


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
    n_, oh, ow, c_ = out.shape
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                for c in range(c_):
                    best = x[n, y * s, x0 * s, c]
                    for i in range(k):
                        for j in range(k):
                            v = x[n, y * s + i, x0 * s + j, c]
                            if v > best:
                                best = v
                    out[n, y, x0, c] = best


def max_pool2d_grad(x, g, k, s, out):
    """Each window's gradient goes to its first maximal element (row-major)."""
    n_, oh, ow, c_ = g.shape
    out[...] = 0
    for n in range(n_):
        for y in range(oh):
            for x0 in range(ow):
                for c in range(c_):
                    bi, bj = 0, 0
                    best = x[n, y * s, x0 * s, c]
                    for i in range(k):
                        for j in range(k):
                            v = x[n, y * s + i, x0 * s + j, c]
                            if v > best:
                                best = v
                                bi, bj = i, j
                    out[n, y * s + bi, x0 * s + bj, c] += g[n, y, x0, c]


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


HELPERS = {f.__name__: f for f in (conv2d, conv2d_grad_input, conv2d_grad_filter, max_pool2d,
                                   max_pool2d_grad, avg_pool2d, avg_pool2d_grad)}
