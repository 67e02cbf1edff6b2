"""The cpu back end's inference paths for constant weights (kernels/cpu.py): 3x3 kernels
transformed for Winograd once, before code is generated (`winograd_constants`, conv_gemm's
CONV2D_WINOGRAD_U), and batch-1 dense layers as BLAS gemv (`uses_gemv`). Each compiled
graph is checked against the numpy back end (the reference) and shown to take the path."""
import re

import numpy as np
import pytest

import graphnn as gn
from kernels import cpu, windows


def _close(got, want, dtype, what):
    tol = 1e-10 if dtype == "float64" else 1e-5
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                               err_msg=what)


def _conv_graph(dtype):
    """Five 3x3 stride-1 convolutions: a constant kernel read by two of them (13x11 'same'
    output, partial tiles on both edges; 12x12 'valid' of a 14x14 image), a constant with
    a batch of 2 (14x14 'same'), one whose output has too few tiles (6x6: im2col), and
    one whose kernel is a parameter (a training graph's: transformed at every call)."""
    rng = np.random.default_rng(11)

    def kernel(ci, co):
        return (0.3 * rng.standard_normal((3, 3, ci, co))).astype(dtype)
    shared = gn.const(kernel(8, 9))
    cases = [("x0", (2, 13, 11, 8), shared, "same"),
             ("x1", (1, 14, 14, 8), shared, "valid"),
             ("x2", (2, 14, 14, 10), gn.const(kernel(10, 12)), "same"),
             ("x3", (1, 6, 6, 8), gn.const(kernel(8, 8)), "same"),
             ("x4", (1, 12, 12, 8), gn.param("pre_w4", kernel(8, 8)), "same")]
    feeds, outs = {}, []
    for name, shape, w, padding in cases:
        x = gn.input(name, (None,) + shape[1:], dtype=dtype)
        feeds[name] = rng.standard_normal(shape).astype(dtype)
        outs.append(gn.relu(gn.conv2d(x, w, padding=padding)))
    return feeds, outs


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_constant_kernels_are_transformed_once_and_give_the_numpy_backends_numbers(
        dtype, library):
    feeds, outs = _conv_graph(dtype)
    f = gn.compile(outs, backend="cpu", library=library)
    # (these kernels have too few output channels to be packed for graphnn's own tile
    # kernel: tests/kernels/test_packed.py)
    mode = windows.CONV2D_WINOGRAD_U
    # conv_gemm(np.intp(4), in<k>, c<j>, ...) in the function, K<n>(np.intp(4), ...) in
    # the driver: x0, x1 (one transformed kernel between them) and x2
    calls = re.findall(rf"\(np\.intp\({mode}\), (in\d), (c\d+), ", f.source)
    assert sorted(x for x, _ in calls) == ["in0", "in1", "in2"]
    assert calls[0][1] == calls[1][1] != calls[2][1]
    assert f.stats["winograd_pretransformed"] == 3
    # the parameter's kernel is transformed in the call (mode 3); x3's 6x6 output: im2col
    assert re.search(rf"\(np\.intp\({windows.CONV2D_WINOGRAD}\), in4, st0, ", f.source)
    assert re.search(rf"\(np\.intp\({windows.CONV2D}\), in3, c\d+, ", f.source)
    assert f.stats["packed_kernels"] == 0
    got = f(**feeds)
    want = gn.compile(outs, backend="numpy")(**feeds)
    for k, (a, b) in enumerate(zip(got, want)):
        _close(a, b, dtype, f"convolution {k}")
    again = f(**feeds)  # the transformed constants are not written by a call
    for a, b in zip(again, want):
        _close(a, b, dtype, "second call")


def test_the_transformed_kernel_is_g_w_g_transposed_per_channel_pair():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 3, 4, 5))
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = windows.winograd_kernel(w)
    assert u.shape == (4, 4, 4, 5) and u.dtype == np.float64 and u.flags.c_contiguous
    for c in range(4):
        for o in range(5):
            np.testing.assert_allclose(u[:, :, c, o], g @ w[:, :, c, o] @ g.T, rtol=1e-14,
                                       atol=1e-14)
    assert windows.winograd_kernel(w.astype(np.float32)).dtype == np.float32


def test_pretransformed_threshold_and_scratch():
    use = windows.use_winograd
    assert use(3, 3, 1, 64, 64, 12, 12, pretransformed=True)
    assert not use(3, 3, 1, 512, 512, 7, 7, pretransformed=True)
    assert not use(3, 3, 2, 64, 64, 28, 28, pretransformed=True)
    assert windows.winograd_scratch_items(8, 16, 10, pretransformed=True) == 16 * 24 * 10
    assert windows.winograd_scratch_items(8, 16, 10) == \
        16 * (8 * 16 + 16) + 144 + 16 * 24 * 10


def _dense_graph(dtype):
    """Batch-1 dense layers whose weights are large enough for gemv: x @ W (1024 x 512),
    x @ V^T (V 600 x 1024, read transposed), and a column: A @ v (A 1024 x 520); and one
    too small for it (64 x 32: gemm)."""
    rng = np.random.default_rng(6)
    x = gn.input("x", (1, 1024), dtype=dtype)
    v = gn.input("v", (520, 1), dtype=dtype)
    w = gn.const(rng.standard_normal((1024, 512)).astype(dtype))
    vt = gn.const(rng.standard_normal((600, 1024)).astype(dtype))
    a = gn.const(rng.standard_normal((1024, 520)).astype(dtype))
    small = gn.const(rng.standard_normal((64, 32)).astype(dtype))
    h = gn.relu(gn.matmul(x, w) + gn.const(np.full((512,), 0.1, dtype)))
    outs = [h, gn.matmul(x, gn.transpose(vt, (1, 0))), gn.matmul(a, v),
            gn.matmul(gn.input("s", (1, 64), dtype=dtype), small)]
    feeds = {"x": rng.standard_normal((1, 1024)).astype(dtype),
             "v": rng.standard_normal((520, 1)).astype(dtype),
             "s": rng.standard_normal((1, 64)).astype(dtype)}
    return feeds, outs


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_1_dense_layers_run_as_gemv_with_the_numpy_backends_numbers(dtype, library):
    feeds, outs = _dense_graph(dtype)
    f = gn.compile(outs, backend="cpu", library=library)
    matmuls = [s for s in f.program.steps if type(s).__name__ == "Matmul"]
    assert [cpu.uses_gemv(s) for s in matmuls] == [True, True, True, False]
    if library:
        assert f.source.count("\nkernel = gemv\n") == 1  # one kernel serves the three
        assert f.source.count("\nkernel = gemm\n") == 1
    else:
        assert len(re.findall(r"^\s+gemv\(", f.source, re.M)) == 3
        assert len(re.findall(r"^\s+gemm\(", f.source, re.M)) == 1
    got = f(**feeds)
    want = gn.compile(outs, backend="numpy")(**feeds)
    for k, (a, b) in enumerate(zip(got, want)):
        _close(a, b, dtype, f"product {k}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_average_pooling_with_channels_inside_equals_the_numpy_backend(dtype):
    """avg_pool2d's loops (channels innermost, kernels/windows.py): 3x3 stride 1 with 192
    channels, a global 7x7 pool, and 2x2 stride 2 over an odd-sized image (its last row
    and column not covered), against a NumPy formula and the numpy back end."""
    rng = np.random.default_rng(4)
    cases = [((1, 9, 9, 192), 3, 1), ((2, 7, 7, 40), 7, 7), ((2, 9, 11, 5), 2, 2)]
    for shape, size, stride in cases:
        x = gn.input("x", shape, dtype=dtype)
        y = gn.avg_pool2d(x, size=size, stride=stride)
        X = rng.standard_normal(shape).astype(dtype)
        got = gn.compile(y, backend="cpu")(x=X)
        oh, ow = (shape[1] - size) // stride + 1, (shape[2] - size) // stride + 1
        want = np.zeros((shape[0], oh, ow, shape[3]))
        for i in range(oh):
            for j in range(ow):
                want[:, i, j] = X[:, i * stride:i * stride + size,
                                  j * stride:j * stride + size].astype(np.float64).mean((1, 2))
        _close(got, want.astype(dtype), dtype, f"{shape} pool {size} stride {stride}")
        _close(got, gn.compile(y, backend="numpy")(x=X), dtype, "numpy back end")


def _padded_conv_graph(dtype):
    """ONNX-style explicit padding in front of convolutions: a 7x7 stride-2 conv of an
    image padded by 3 on every side (pads of both axes: two pad steps), a 3x3 stride-2 one
    padded asymmetrically (1 on top, 2 at the bottom, 0 left, 1 right), and a padded
    image that a second op reads too (its pad must stay)."""
    from graphnn.ops import pad_axis
    rng = np.random.default_rng(13)
    x = gn.input("x", (None, 15, 14, 3), dtype=dtype)
    w1 = gn.const((0.2 * rng.standard_normal((7, 7, 3, 8))).astype(dtype))
    w2 = gn.const((0.2 * rng.standard_normal((3, 3, 8, 8))).astype(dtype))
    p1 = pad_axis(pad_axis(x, axis=1, before=3, after=3), axis=2, before=3, after=3)
    y1 = gn.relu(gn.conv2d(p1, w1, stride=2, padding="valid"))
    p2 = pad_axis(pad_axis(y1, axis=1, before=1, after=2), axis=2, before=0, after=1)
    y2 = gn.conv2d(p2, w2, stride=2, padding="valid")
    p3 = pad_axis(y1, axis=1, before=1, after=1)
    y3 = gn.conv2d(p3, w2, stride=1, padding="valid")
    outs = [y2, y3, gn.sum(p3, axis=(1, 2))]
    return {"x": rng.standard_normal((2, 15, 14, 3)).astype(dtype)}, outs


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zero_padding_in_front_of_a_convolution_is_folded_into_it(dtype, library):
    feeds, outs = _padded_conv_graph(dtype)
    f = gn.compile(outs, backend="cpu", library=library)
    assert f.stats["conv_pads_folded"] == 4  # p1's two steps and p2's; p3 is read twice
    places = [s for s in f.program.steps if type(s).__name__ == "Place"]
    assert len(places) == 1
    convs = [s for s in f.program.steps if type(s).__name__ == "Window"]
    assert [c.params for c in convs] == [(2, 3, 3), (2, 1, 0), (1, 0, 0)]
    assert convs[0].args[0].name == "in0"
    # the kernels list follows the steps; the first convolution's step computes the pads
    assert len(f.kernels) == len(f.program.steps)
    first = next(k for k in f.kernels if k["buffer"] == convs[0].out.name)
    assert [n.op for n in first["nodes"]] == ["conv2d", "pad_axis", "pad_axis"]
    got = f(**feeds)
    want = gn.compile(outs, backend="numpy")(**feeds)
    for k, (a, b) in enumerate(zip(got, want)):
        _close(a, b, dtype, f"output {k}")


def test_a_padded_image_a_gradient_reads_keeps_its_pad():
    """In training the padded image is read again by the kernel's gradient: nothing is
    folded, and the gradients equal the numpy back end's."""
    from graphnn.ops import pad_axis
    rng = np.random.default_rng(14)
    x = gn.input("x", (2, 9, 9, 3), dtype="float64")
    w = gn.param("pad_fold_w", rng.standard_normal((3, 3, 3, 4)))
    loss = gn.sum(gn.tanh(gn.conv2d(pad_axis(x, axis=1, before=1, after=1), w, stride=2,
                                    padding="valid")))
    targets = [loss] + gn.grad(loss, [w, x])
    f = gn.compile(targets, backend="cpu")
    assert f.stats["conv_pads_folded"] == 0
    X = rng.standard_normal((2, 9, 9, 3))
    for a, b in zip(f(x=X), gn.compile(targets, backend="numpy")(x=X)):
        _close(np.asarray(a), np.asarray(b), "float64", "training")
