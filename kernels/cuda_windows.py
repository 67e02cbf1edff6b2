"""Convolution and pooling for the GPU: each function computes ONE output element, so a
kernel runs one thread per element (the CPU versions in kernels/windows.py scatter into
the whole output instead, which would race on a GPU).

The CUDA generator inlines each body into a kernel (parameter names kept, `T(` replaced
by `numba.float32(` or float64, the final `return` turned into a store into the output);
each function must therefore end in its only `return`, and may not use the names `e`,
`rest` or `out`. They also run as plain Python for tests, with `T = np.float64`. Same geometry as kernels/windows.py:
NHWC images, HWIO kernels, stride `s`, top/left padding `ph`, `pw`, pooling window `k`.
Gradients are written as gathers (each output element sums what points at it).
"""


def conv2d_at(x, w, s, ph, pw, n, y, x0, o):
    """out[n, y, x0, o] of conv2d(x, w)."""
    kh, kw, ci = w.shape[0], w.shape[1], w.shape[2]
    acc = T(0)
    for i in range(kh):
        yy = y * s + i - ph
        if yy < 0 or yy >= x.shape[1]:
            continue
        for j in range(kw):
            xx = x0 * s + j - pw
            if xx < 0 or xx >= x.shape[2]:
                continue
            for c in range(ci):
                acc += x[n, yy, xx, c] * w[i, j, c, o]
    return acc


def conv2d_grad_input_at(g, w, s, ph, pw, n, yy, xx, c):
    """out[n, yy, xx, c]: the gradient of conv2d's image, from the output gradient g."""
    kh, kw, co = w.shape[0], w.shape[1], w.shape[3]
    acc = T(0)
    for i in range(kh):
        ys = yy + ph - i
        if ys < 0 or ys % s != 0 or ys // s >= g.shape[1]:
            continue
        for j in range(kw):
            xs = xx + pw - j
            if xs < 0 or xs % s != 0 or xs // s >= g.shape[2]:
                continue
            for o in range(co):
                acc += g[n, ys // s, xs // s, o] * w[i, j, c, o]
    return acc


def conv2d_grad_filter_at(x, g, s, ph, pw, i, j, c, o):
    """out[i, j, c, o]: the gradient of conv2d's kernel, from the output gradient g."""
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
                acc += x[n, yy, xx, c] * g[n, y, x0, o]
    return acc


def max_pool2d_at(x, k, s, n, y, x0, c):
    best = x[n, y * s, x0 * s, c]
    for i in range(k):
        for j in range(k):
            v = x[n, y * s + i, x0 * s + j, c]
            if v > best:
                best = v
    return best


def max_pool2d_grad_at(x, g, k, s, n, yy, xx, c):
    """out[n, yy, xx, c]: the sum of g over the windows whose first maximum is here."""
    acc = T(0)
    for i in range(k):
        ys = yy - i
        if ys < 0 or ys % s != 0 or ys // s >= g.shape[1]:
            continue
        y = ys // s
        for j in range(k):
            xs = xx - j
            if xs < 0 or xs % s != 0 or xs // s >= g.shape[2]:
                continue
            x0 = xs // s
            bi, bj = 0, 0
            best = x[n, y * s, x0 * s, c]
            for wi in range(k):
                for wj in range(k):
                    v = x[n, y * s + wi, x0 * s + wj, c]
                    if v > best:
                        best = v
                        bi, bj = wi, wj
            if bi == i and bj == j:
                acc += g[n, y, x0, c]
    return acc


def avg_pool2d_at(x, k, s, n, y, x0, c):
    acc = T(0)
    for i in range(k):
        for j in range(k):
            acc += x[n, y * s + i, x0 * s + j, c]
    return acc * (T(1) / T(k * k))


def avg_pool2d_grad_at(g, k, s, n, yy, xx, c):
    acc = T(0)
    for i in range(k):
        ys = yy - i
        if ys < 0 or ys % s != 0 or ys // s >= g.shape[1]:
            continue
        for j in range(k):
            xs = xx - j
            if xs < 0 or xs % s != 0 or xs // s >= g.shape[2]:
                continue
            acc += g[n, ys // s, xs // s, c]
    return acc * (T(1) / T(k * k))


# the IR's Window.helper name -> the function computing one element of its output
ELEMENT_HELPERS = {name[:-3]: f for name, f in list(globals().items())
                   if name.endswith("_at") and callable(f)}
