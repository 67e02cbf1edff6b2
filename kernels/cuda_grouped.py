"""Depthwise and grouped 1x1 convolutions for the GPU: each function computes ONE output element (one thread
per element), with the conventions of kernels/cuda_windows.py (inlined by the CUDA
generator: the body ends in its only `return`, no names `e`, `rest` or `out`, `T(`
becomes the dtype). Geometry as kernels/depthwise.py: NHWC images, kernels (kh, kw, 1, c),
stride `s`, top/left padding `ph`, `pw`; grouped 1x1: kernels (1, 1, c / groups, k).
The gradients are gathers.
"""


def depthwise_conv2d_at(x, w, s, ph, pw, n, y, x0, c):
    """out[n, y, x0, c] of depthwise_conv2d(x, w)."""
    kh, kw = w.shape[0], w.shape[1]
    acc = T(0)
    for i in range(kh):
        yy = y * s + i - ph
        if yy < 0 or yy >= x.shape[1]:
            continue
        for j in range(kw):
            xx = x0 * s + j - pw
            if xx < 0 or xx >= x.shape[2]:
                continue
            acc += x[n, yy, xx, c] * w[i, j, 0, c]
    return acc


def depthwise_conv2d_grad_input_at(g, w, s, ph, pw, n, yy, xx, c):
    """out[n, yy, xx, c]: the gradient of depthwise_conv2d's image, from the output
    gradient g."""
    kh, kw = w.shape[0], w.shape[1]
    acc = T(0)
    for i in range(kh):
        ys = yy + ph - i
        if ys < 0 or ys % s != 0 or ys // s >= g.shape[1]:
            continue
        for j in range(kw):
            xs = xx + pw - j
            if xs < 0 or xs % s != 0 or xs // s >= g.shape[2]:
                continue
            acc += g[n, ys // s, xs // s, c] * w[i, j, 0, c]
    return acc


def depthwise_conv2d_grad_filter_at(x, g, s, ph, pw, i, j, z, c):
    """out[i, j, z, c] (z is 0): the gradient of depthwise_conv2d's kernel, from the
    output gradient g."""
    acc = T(0)
    for n in range(x.shape[0]):
        for y in range(g.shape[1]):
            yy = y * s + i - ph
            if yy < 0 or yy >= x.shape[1]:
                continue
            for x0 in range(g.shape[2]):
                xx = x0 * s + j - pw
                if xx < 0 or xx >= x.shape[2]:
                    continue
                acc += x[n, yy, xx, c] * g[n, y, x0, c]
    return acc


def grouped_conv2d_at(x, w, groups, n, y, x0, o):
    """out[n, y, x0, o] of grouped_conv2d(x, w): output channel o reads the input
    channels of its group."""
    gin = w.shape[2]
    base = (o // (w.shape[3] // groups)) * gin
    acc = T(0)
    for c in range(gin):
        acc += x[n, y, x0, base + c] * w[0, 0, c, o]
    return acc


def grouped_conv2d_grad_input_at(g, w, groups, n, y, x0, c):
    """out[n, y, x0, c]: the gradient of grouped_conv2d's image, from the output
    gradient g (the outputs of c's group)."""
    gin, gout = w.shape[2], w.shape[3] // groups
    first = (c // gin) * gout
    acc = T(0)
    for o in range(gout):
        acc += g[n, y, x0, first + o] * w[0, 0, c % gin, first + o]
    return acc


def grouped_conv2d_grad_filter_at(x, g, groups, i, j, c, o):
    """out[i, j, c, o] (i, j are 0): the gradient of grouped_conv2d's kernel."""
    ch = (o // (g.shape[3] // groups)) * (x.shape[3] // groups) + c
    acc = T(0)
    for n in range(x.shape[0]):
        for y in range(x.shape[1]):
            for x0 in range(x.shape[2]):
                acc += x[n, y, x0, ch] * g[n, y, x0, o]
    return acc


def channel_shuffle_at(x, groups, n, y, x0, c):
    """out[n, y, x0, c] of channel_shuffle(x, groups)."""
    return x[n, y, x0, (c % groups) * (x.shape[3] // groups) + c // groups]


def max_pool2d_padded_at(x, k, s, ph, pw, n, y, x0, c):
    """out[n, y, x0, c] of max_pool2d_padded: the maximum of the window's taps inside the
    image."""
    best = T(0)
    found = False
    for i in range(k):
        yy = y * s + i - ph
        if yy < 0 or yy >= x.shape[1]:
            continue
        for j in range(k):
            xx = x0 * s + j - pw
            if xx < 0 or xx >= x.shape[2]:
                continue
            v = x[n, yy, xx, c]
            if not found or v > best:
                best = v
                found = True
    return best


def max_pool2d_padded_grad_at(x, g, k, s, ph, pw, n, yy, xx, c):
    """out[n, yy, xx, c]: the sum of g over the windows whose first maximal tap inside
    the image is here."""
    acc = T(0)
    for i in range(k):
        ys = yy + ph - i
        if ys < 0 or ys % s != 0 or ys // s >= g.shape[1]:
            continue
        y = ys // s
        for j in range(k):
            xs = xx + pw - j
            if xs < 0 or xs % s != 0 or xs // s >= g.shape[2]:
                continue
            x0 = xs // s
            bi, bj = -1, -1
            best = T(0)
            for wi in range(k):
                wy = y * s + wi - ph
                if wy < 0 or wy >= x.shape[1]:
                    continue
                for wj in range(k):
                    wx = x0 * s + wj - pw
                    if wx < 0 or wx >= x.shape[2]:
                        continue
                    v = x[n, wy, wx, c]
                    if bi < 0 or v > best:
                        best = v
                        bi, bj = wi, wj
            if bi == i and bj == j:
                acc += g[n, y, x0, c]
    return acc


# the IR's Window.helper name -> the function computing one element of its output
ELEMENT_HELPERS = {name[:-3]: f for name, f in list(globals().items())
                   if name.endswith("_at") and callable(f)}
