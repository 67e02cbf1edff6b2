"""Convolutions on the cpu back end as im2col blocks + BLAS gemm (kernels/windows.py,
conv_gemm): the helper against the direct loops, and compiled graphs against the numpy
back end (the reference) and finite differences."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.ops import conv_geometry
from kernels import loader, windows

# (image NHWC, kernel HWIO, stride, padding): 1x1, 3x3 valid/same, stride 2, even kernel
# sizes, batch > 1, one input channel, one output channel
CASES = {
    "1x1": ((2, 4, 5, 3), (1, 1, 3, 4), 1, "valid"),
    "1x1-same": ((1, 4, 4, 2), (1, 1, 2, 3), 1, "same"),
    "1x1-stride2": ((2, 5, 4, 3), (1, 1, 3, 2), 2, "valid"),
    "3x3-valid": ((2, 6, 5, 2), (3, 3, 2, 3), 1, "valid"),
    "3x3-same": ((3, 5, 6, 2), (3, 3, 2, 4), 1, "same"),
    "3x3-same-stride2": ((2, 7, 6, 3), (3, 3, 3, 2), 2, "same"),
    "3x3-valid-stride2": ((2, 7, 8, 2), (3, 3, 2, 3), 2, "valid"),
    "2x2-same": ((2, 5, 5, 2), (2, 2, 2, 3), 1, "same"),
    "4x4-same-stride2": ((1, 9, 7, 2), (4, 4, 2, 2), 2, "same"),
    "2x3-valid": ((2, 6, 7, 1), (2, 3, 1, 2), 1, "valid"),
    "C=1": ((3, 6, 6, 1), (3, 3, 1, 4), 1, "same"),
    "K=1": ((2, 6, 5, 3), (3, 3, 3, 1), 1, "valid"),
    "5x5-same": ((1, 6, 6, 2), (5, 5, 2, 2), 1, "same"),
}


def _geometry(image, kernel, stride, padding):
    oh, ph = conv_geometry(image[1], kernel[0], stride, padding)
    ow, pw = conv_geometry(image[2], kernel[1], stride, padding)
    return (image[0], oh, ow, kernel[3]), ph, pw


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_gemm_equals_the_direct_loops(name, dtype):
    """The helper as plain Python (gemm compiled) in each of its three modes, with a
    scratch of one row, of a few rows (the last block partial) and of every row."""
    image, kernel, stride, padding = CASES[name]
    out_shape, ph, pw = _geometry(image, kernel, stride, padding)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal(kernel).astype(dtype)
    g = rng.standard_normal(out_shape).astype(dtype)
    cols = kernel[0] * kernel[1] * kernel[2]
    expected = {}
    for mode, args, shape in [(0, (x, w), out_shape), (1, (g, w), image), (2, (x, g), kernel)]:
        ref = np.zeros(shape, dtype)
        [windows.conv2d, windows.conv2d_grad_input, windows.conv2d_grad_filter][mode](
            *args, stride, ph, pw, ref)
        expected[mode] = ref
    rows = out_shape[0] * out_shape[1] * out_shape[2]
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for block in sorted({1, 3, rows}):
        scratch = np.full(block * cols, np.nan, dtype)  # garbage: every read must be written
        for mode, args, shape in [(0, (x, w), out_shape), (1, (g, w), image),
                                  (2, (x, g), kernel)]:
            out = np.full(shape, np.nan, dtype)
            windows.conv_gemm(mode, *args, stride, ph, pw, scratch, out)
            assert out.dtype == dtype
            np.testing.assert_allclose(out, expected[mode], rtol=tol, atol=tol,
                                       err_msg=f"{name} mode {mode} block {block}")


def _conv_graph(cases, dtype):
    """One graph holding every case: outputs, and the gradients of a weighted sum of them
    with respect to each image and kernel."""
    rng = np.random.default_rng(11)
    feeds, outs, total, wrt = {}, [], 0, []
    for k, (name, (image, kernel, stride, padding)) in enumerate(sorted(cases.items())):
        x = gn.input(f"x{k}", (None,) + image[1:], dtype=dtype)
        feeds[f"x{k}"] = rng.standard_normal(image).astype(dtype)
        w = gn.param(f"conv{k}_w_{name}", rng.standard_normal(kernel).astype(dtype))
        y = gn.conv2d(x, w, stride=stride, padding=padding)
        weights = gn.const(rng.standard_normal(_geometry(image, kernel, stride,
                                                         padding)[0][1:]).astype(dtype))
        total = total + gn.sum(y * weights)
        outs.append(y)
        wrt += [x, w]
    return feeds, outs, total, wrt


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_convolutions_and_gradients_equal_the_numpy_backend(dtype):
    feeds, outs, total, wrt = _conv_graph(CASES, dtype)
    targets = outs + gn.grad(total, wrt)
    f = gn.compile(targets, backend="cpu")
    assert "conv_gemm(" in f.source and "\ndef conv2d(" not in f.source
    got = f(**feeds)
    want = gn.compile(targets, backend="numpy")(**feeds)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for node, a, b in zip(targets, got, want):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=str(node))


@pytest.mark.parametrize("name", ["3x3-same-stride2", "2x2-same", "1x1", "K=1"])
def test_compiled_convolution_gradients_match_finite_differences(name):
    image, kernel, stride, padding = CASES[name]
    rng = np.random.default_rng(3)
    x_val = rng.standard_normal(image)
    x = gn.input("x", image, dtype="float64")
    w = gn.param("w_fd", rng.standard_normal(kernel))
    y = gn.conv2d(x, w, stride=stride, padding=padding)
    weights = gn.const(rng.standard_normal(y.shape))
    loss = gn.sum(gn.tanh(y) * weights)
    errors = gn.testing.check_grad(loss, [x, w], {"x": x_val}, backend="cpu")
    assert max(errors.values()) < 1e-6, errors


def test_row_blocks_of_the_patch_matrix_bound_the_scratch(monkeypatch):
    """With small blocks, a batch's patch matrix is cut into many row blocks (the last one
    partial); results still equal the reference and the scratch stays one block."""
    monkeypatch.setattr(windows, "COL_BYTES", 4096)
    monkeypatch.setattr(windows, "COL_MIN_ROWS", 8)
    cases = {k: CASES[k] for k in ("3x3-same-stride2", "2x2-same", "C=1", "1x1")}
    feeds, outs, total, wrt = _conv_graph(cases, "float64")
    targets = outs + gn.grad(total, wrt)
    f = gn.compile(targets, backend="cpu")
    assert "min(d" in f.source  # the block rows are capped in the generated source
    got = f(**feeds)
    want = gn.compile(targets, backend="numpy")(**feeds)
    for node, a, b in zip(targets, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(node))


def test_a_large_batch_runs_in_blocks_within_a_bounded_workspace():
    """A 3x3 convolution over 20 000 output rows: the patch matrix would take 11.5 MB, the
    scratch holds one block of about windows.COL_BYTES."""
    rng = np.random.default_rng(5)
    x = gn.input("x", (None, 12, 12, 16), dtype="float32")
    w = gn.param("w_big", (0.1 * rng.standard_normal((3, 3, 16, 8))).astype(np.float32))
    y = gn.conv2d(x, w, padding="same")
    gw, gx = gn.grad(gn.sum(y * y), [w, x])
    f = gn.compile([y, gw, gx], backend="cpu")
    X = rng.standard_normal((139, 12, 12, 16)).astype(np.float32)   # 20 016 rows
    got = f(x=X)
    want = gn.compile([y, gw, gx], backend="numpy")(x=X)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3 * np.abs(b).max())
    module, _ = loader.load_module(f.source)
    rows = windows.col_block_rows(3 * 3 * 16, 4)
    assert rows < 139 * 144
    patch_matrix = 139 * 144 * 3 * 3 * 16 * 4
    own = 2 * 139 * 144 * 8 * 4 + 139 * 144 * 16 * 4  # y, y*y's gradient, gx (at most)
    assert module.workspace_bytes(X) < own + windows.COL_BYTES + 4096 < patch_matrix


def test_pointwise_convolution_needs_no_scratch():
    x = gn.input("x", (None, 5, 5, 8))
    w = gn.param("w_1x1", np.ones((1, 1, 8, 4), np.float32))
    f = gn.compile(gn.conv2d(x, w), backend="cpu")
    assert "conv_scratch" not in f.source and "np.empty(0, np.float32)" in f.source
    X = np.random.default_rng(0).standard_normal((3, 5, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(f(x=X), X @ np.ones((8, 4), np.float32), rtol=1e-5)


@pytest.mark.parametrize("shape,size,stride", [((2, 5, 4, 3), 2, 2), ((2, 7, 7, 2), 2, 3),
                                               ((1, 7, 6, 1), 3, 3), ((2, 5, 5, 3), 3, 1),
                                               ((1, 6, 6, 2), 2, 1)])
def test_max_pool_gradient_loops_equal_the_reference(shape, size, stride):
    """Disjoint windows (stride >= size, with cells no window covers) write each cell once;
    overlapping ones accumulate. Ties go to the first maximal element, row-major."""
    from graphnn.ops import _max_pool_grad_impl, _max_pool_impl
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal(shape), 1)  # ties
    pooled = _max_pool_impl(x, size, stride)
    out = np.full(pooled.shape, np.nan)
    windows.max_pool2d(x, size, stride, out)
    np.testing.assert_array_equal(out, pooled)
    g = rng.standard_normal(pooled.shape)
    grad = np.full(shape, np.nan)
    windows.max_pool2d_grad(x, g, size, stride, grad)
    np.testing.assert_allclose(grad, _max_pool_grad_impl(x, g, size, stride), atol=1e-15)


def test_channels_bound_at_run_time():
    """Channels declared None: the patch-matrix block is sized in the generated source."""
    rng = np.random.default_rng(4)
    x = gn.input("x", (None, 6, 5, "c"), dtype="float64")
    w = gn.input("w", (3, 3, "c", 2), dtype="float64")
    y = gn.conv2d(x, w, stride=2, padding="same")
    gx, gw = gn.grad(gn.sum(y * y), [x, w])
    feeds = {"x": rng.standard_normal((2, 6, 5, 3)), "w": rng.standard_normal((3, 3, 3, 2))}
    got = gn.compile([y, gx, gw], backend="cpu")(**feeds)
    want = gn.compile([y, gx, gw], backend="numpy")(**feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
