"""Stride-1 3x3 convolutions as Winograd F(2x2, 3x3) and F(4x4, 3x3) (kernels/windows.py,
conv_gemm's Winograd modes): the helper against the direct loops, when the cpu back end
chooses which, and compiled graphs that use them against the numpy back end (the
reference)."""
import re

import numpy as np
import pytest

import graphnn as gn
from graphnn.ops import conv_geometry
from kernels import cpu, windows

# (image NHWC, output channels, padding): odd and even output sizes (partial edge tiles),
# one channel, one output channel, batch > 1, an output of one pixel and of 1 x 2
CASES = {
    "same-odd": ((2, 7, 9, 3), 5, "same"),
    "valid-even": ((1, 8, 8, 4), 6, "valid"),
    "same-odd-height": ((3, 5, 6, 8), 8, "same"),
    "valid-odd": ((2, 6, 5, 2), 3, "valid"),
    "C=1": ((2, 6, 7, 1), 4, "same"),
    "K=1": ((1, 5, 5, 3), 1, "valid"),
    "1x1-output": ((1, 3, 3, 2), 2, "valid"),
    "1x2-output": ((2, 3, 4, 2), 3, "valid"),
    "1x1-image-same": ((1, 1, 1, 2), 2, "same"),
}


def _reference(x, w, padding):
    oh, ph = conv_geometry(x.shape[1], 3, 1, padding)
    ow, pw = conv_geometry(x.shape[2], 3, 1, padding)
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]), x.dtype)
    windows.conv2d(x, w, 1, ph, pw, y)
    return y, ph, pw


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_winograd_mode_equals_the_direct_loops(name, dtype):
    """conv_gemm's Winograd mode as plain Python (BLAS compiled) in rounds of one tile, of
    two (the last round partial), of five and of every tile; the scratch starts as NaN, so
    every item it reads must have been written."""
    image, co, padding = CASES[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal((3, 3, image[3], co)).astype(dtype)
    want, ph, pw = _reference(x, w, padding)
    tiles = image[0] * windows.winograd_tiles(want.shape[1], want.shape[2])
    tol = 1e-13 if dtype == np.float64 else 2e-6
    for block in sorted({1, 2, 5, tiles}):
        scratch = np.full(windows.winograd_scratch_items(image[3], co, min(block, tiles)),
                          np.nan, dtype)
        got = np.full(want.shape, np.nan, dtype)
        windows.conv_gemm(windows.CONV2D_WINOGRAD, x, w, block, ph, pw, scratch, got)
        assert got.dtype == dtype
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"{name} rounds of {block}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_pretransformed_winograd_mode_equals_the_direct_loops(name, dtype):
    """conv_gemm's CONV2D_WINOGRAD_U mode (the kernel transformed beforehand by
    winograd_kernel) likewise, with a NaN scratch of the size it asks for."""
    image, co, padding = CASES[name]
    rng = np.random.default_rng(8)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal((3, 3, image[3], co)).astype(dtype)
    want, ph, pw = _reference(x, w, padding)
    u = windows.winograd_kernel(w)
    tiles = image[0] * windows.winograd_tiles(want.shape[1], want.shape[2])
    tol = 1e-13 if dtype == np.float64 else 2e-6
    for block in sorted({1, 3, tiles}):
        scratch = np.full(windows.winograd_scratch_items(image[3], co, min(block, tiles),
                                                         pretransformed=True), np.nan, dtype)
        got = np.full(want.shape, np.nan, dtype)
        windows.conv_gemm(windows.CONV2D_WINOGRAD_U, x, u, block, ph, pw, scratch, got)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                   err_msg=f"{name} rounds of {block}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_f4_winograd_mode_equals_the_direct_loops(name, dtype):
    """F(4x4, 3x3): conv_gemm's CONV2D_WINOGRAD_U mode with U = winograd_kernel(w, 4), 6 x 6
    x ci x co (4x4 output tiles from 6x6 windows 4 apart, the edge tiles partial), in
    rounds of one tile, two and all, with a NaN scratch of the size it asks for."""
    image, co, padding = CASES[name]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal((3, 3, image[3], co)).astype(dtype)
    want, ph, pw = _reference(x, w, padding)
    u = windows.winograd_kernel(w, 4)
    assert u.shape == (6, 6, image[3], co) and u.dtype == dtype
    tiles = image[0] * windows.winograd_tiles(want.shape[1], want.shape[2], 4)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for block in sorted({1, 2, tiles}):
        scratch = np.full(windows.winograd_scratch_items(
            image[3], co, min(block, tiles), pretransformed=True, taps=36), np.nan, dtype)
        got = np.full(want.shape, np.nan, dtype)
        windows.conv_gemm(windows.CONV2D_WINOGRAD_U, x, u, block, ph, pw, scratch, got)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                   err_msg=f"{name} rounds of {block}")


def test_f4_winograd_is_chosen_for_outputs_at_least_24_wide_and_high():
    assert windows.winograd_side(24, 24) == 4
    assert windows.winograd_side(56, 56) == 4
    assert windows.winograd_side(23, 56) == 2   # (a 6 x 6 U read for too few tiles)
    assert windows.winograd_side(14, 14) == 2
    assert windows.winograd_tiles(13, 11, 4) == 4 * 3
    assert windows.winograd_tiles(24, 25, 4) == 6 * 7


def _f4_graph(rng):
    """Inference convolutions with constant kernels: 26x25 'same' (F(4x4, 3x3), edge tiles
    partial), 24x24 'valid' from 26x26 with 128 outputs (F(4x4, 3x3), U packed where the
    tile kernel runs), and 12x12 (F(2x2, 3x3)); each + bias, relu."""
    outs, feeds = [], {}
    for k, (image, co, padding) in enumerate([((2, 26, 25, 8), 12, "same"),
                                              ((1, 26, 26, 9), 128, "valid"),
                                              ((1, 12, 12, 8), 16, "same")]):
        x = gn.input(f"x{k}", image)
        feeds[f"x{k}"] = rng.standard_normal(image).astype(np.float32)
        w = gn.const((0.3 * rng.standard_normal((3, 3, image[3], co))).astype(np.float32))
        b = gn.const(rng.standard_normal(co).astype(np.float32))
        outs.append(gn.relu(gn.conv2d(x, w, padding=padding) + b))
    return feeds, outs


@pytest.mark.parametrize("library", [False, True])
def test_compiled_f4_winograd_convolutions_equal_the_numpy_backend(library):
    feeds, outs = _f4_graph(np.random.default_rng(12))
    f = gn.compile(outs, backend="cpu", library=library)
    sides = sorted(c.shape[:2] for c in f.program.consts
                   if len(c.shape) == 4 and c.shape[0] != 3)  # (the U, not the kernels)
    assert sides == [(4, 4), (6, 6), (6, 6)], "two 6 x 6 U (F(4x4, 3x3)), one 4 x 4"
    assert "WINOGRAD_F4 = True" in f.source  # (library mode: the kernels' sources too)
    # (no gradient, no kernel transformed at each call: that code is left out too)
    assert "TRAINING_MODES = False" in f.source and "TRAINING_MODES = True" not in f.source
    want = gn.compile(outs, backend="numpy")(**feeds)
    for a, b in zip(f(**feeds), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


# (image, U's side): a constant kernel transformed beforehand (a training step's kernel,
# transformed at each call, keeps F(2x2, 3x3)'s NaNs for an infinity: see conv_gemm)
NONFINITE_CASES = {"f4": ((2, 26, 25, 8), 6), "f2-u": ((2, 13, 12, 8), 4)}


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("case", sorted(NONFINITE_CASES))
def test_winograd_keeps_a_nan_or_infinity_to_the_outputs_whose_windows_hold_it(
        monkeypatch, case, bad, library):
    """Winograd's transforms would spread a non-finite input over its tile (F(4x4, 3x3):
    to outputs whose windows do not hold it; F(2x2, 3x3): an infinity as NaNs); from a U,
    the rounds of tiles with an output that is not finite are computed again directly, so
    exactly the outputs the numpy back end makes non-finite are, NaN or infinite as there,
    and the other rounds' outputs stay Winograd's (rounds of 3-8 tiles: most rounds hold
    no bad value)."""
    image, side = NONFINITE_CASES[case]
    monkeypatch.setattr(windows, "WINOGRAD_BYTES", 0)
    monkeypatch.setattr(windows, "WINOGRAD_MIN_ROUND", 8)
    rng = np.random.default_rng(13)
    x = gn.input("x", image)
    kernel = (0.3 * rng.standard_normal((3, 3, image[3], 10))).astype(np.float32)
    w = gn.const(kernel)
    b = gn.const(rng.standard_normal(10).astype(np.float32))
    y = gn.relu(gn.conv2d(x, w, padding="same") + b)
    f = gn.compile(y, backend="cpu", library=library)
    sides = [c.shape[0] for c in f.program.consts if len(c.shape) == 4 and c.shape[0] != 3]
    assert sides == [side] and "WINOGRAD_U = True" in f.source
    X = rng.standard_normal(image).astype(np.float32)
    if library:  # (a first call with finite inputs: conv2d_direct's kernel not compiled)
        f(x=X)
        uncalled = [e for e in f.stats["kernel_seconds"] if e["seconds"] is None]
        assert len(uncalled) == 1 and not uncalled[0]["compiled"]
        assert f.stats["kernels_compiled"] + f.stats["kernels_cached"] == \
            len(f.stats["kernel_seconds"]) - 1
        assert "slowest first kernel calls" in f.explain()
    X[0, 7, 9, 2] = bad    # inside
    X[1, 0, image[2] - 1, 5] = bad   # a corner
    X[1, 6, 0, 0] = bad   # an edge
    got, want = f(x=X), gn.compile(y, backend="numpy")(x=X)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert (~np.isfinite(want)).any(axis=-1).sum() == 9 + 4 + 6
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-5 * np.abs(want[ok]).max())


def test_winograd_from_u_says_when_an_output_is_not_finite_and_conv2d_direct_redoes_it():
    """conv_gemm as plain Python: from U it returns True when an output it wrote is a NaN
    (a NaN input that F(4x4, 3x3) spreads over its tiles), False when all are finite;
    conv2d_direct (bias and relu too, into channels 2.. of a wider output) then gives the
    direct loops' outputs, NaN exactly where their windows hold the NaN."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 9, 10, 3))
    w = rng.standard_normal((3, 3, 3, 5))
    bias = rng.standard_normal(5)
    want, ph, pw = _reference(x, w, "same")
    u = windows.winograd_kernel(w, 4)
    scratch = np.full(windows.winograd_scratch_items(3, 5, 2, True, 36), np.nan)
    got = np.full(want.shape, np.nan)
    assert not windows.conv_gemm(windows.CONV2D_WINOGRAD_U, x, u, 2, ph, pw, scratch, got)
    x[0, 4, 5, 1] = np.nan  # (d1 of its row's tile: F(4x4, 3x3) would spread it to o3)
    want, ph, pw = _reference(x, w, "same")
    want = np.where(np.isnan(want), np.nan, np.maximum(want + bias, 0))
    assert windows.conv_gemm(windows.CONV2D_WINOGRAD_U, x, u, 2, ph, pw, scratch, got, bias,
                             3, 0, 0)
    assert np.isnan(got).any(axis=-1).sum() > 9  # (spread)
    wide = np.full((1, 9, 10, 8), -7.0)
    windows.conv2d_direct(x, w, ph, pw, wide, bias, 3, 5, 2)
    assert (wide[..., :2] == -7).all() and (wide[..., 7:] == -7).all()
    got = wide[..., 2:7]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any(axis=-1).sum() == 9
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-12, atol=1e-12)


def test_programs_without_f4_winograd_leave_its_code_out():
    """A training step's convolutions (kernels that change) and small inference outputs
    run F(2x2, 3x3) or none: their conv_gemm says WINOGRAD_F4 = False (and, with gradients
    and kernels transformed at each call, TRAINING_MODES = True)."""
    feeds, targets = _graph("float32")
    f = gn.compile(targets, backend="cpu")
    assert "WINOGRAD_F4 = False" in f.source and "WINOGRAD_F4 = True" not in f.source
    assert "TRAINING_MODES = True" in f.source and "WINOGRAD_U = False" in f.source
    # (the blocks of the parts left out are not in the generated source at all)
    assert "if WINOGRAD_U:" not in f.source and "if WINOGRAD_F4:" not in f.source
    assert "def conv2d_direct" not in f.source


def test_blocks_of_unused_parts_are_left_out_of_the_source():
    source = "x = 1\nif A:\n    y = 2\n\n    z = 3\nif B:  # (kept)\n    w = 4\nv = 5"
    assert cpu._without_blocks(source, ["A"]) == "x = 1\nif B:  # (kept)\n    w = 4\nv = 5"
    assert cpu._without_blocks(source, []) == source
    with pytest.raises(ValueError, match="else"):
        cpu._without_blocks("if A:\n    y = 2\nelse:\n    y = 3", ["A"])


def test_winograd_is_chosen_for_3x3_stride_1_with_enough_channels_and_tiles():
    use = windows.use_winograd
    assert use(3, 3, 1, 8, 8, 12, 12)          # 36 tiles of 2x2 outputs
    assert use(3, 3, 1, 64, 64, 56, 56)
    assert not use(3, 3, 1, 512, 512, 7, 7)   # 16 tiles: the kernel transform dominates
    assert not use(3, 3, 1, 4, 64, 56, 56)    # too few input channels for the gemms
    assert not use(3, 3, 1, 64, 4, 56, 56)
    assert not use(3, 3, 2, 64, 64, 56, 56)   # strided
    assert not use(5, 5, 1, 64, 64, 56, 56)
    assert not use(1, 1, 1, 64, 64, 56, 56)
    assert windows.winograd_tiles(13, 11) == 7 * 6


def _graph(dtype):
    """Two convolutions the cpu back end runs as Winograd (13x11 'same' output: partial
    tiles on both edges; 12x12 'valid'), one it does not (4 input channels), and the
    gradients of a weighted sum with respect to images and kernels (other modes)."""
    rng = np.random.default_rng(9)
    specs = [((2, 13, 11, 8), 9, "same"), ((3, 14, 14, 10), 8, "valid"),
             ((2, 12, 12, 4), 8, "same")]
    feeds, outs, total, wrt = {}, [], 0, []
    for k, (image, co, padding) in enumerate(specs):
        x = gn.input(f"x{k}", (None,) + image[1:], dtype=dtype)
        feeds[f"x{k}"] = rng.standard_normal(image).astype(dtype)
        w = gn.param(f"wino{k}_w", (0.3 * rng.standard_normal((3, 3, image[3], co)))
                     .astype(dtype))
        y = gn.conv2d(x, w, padding=padding)
        total = total + gn.sum(gn.tanh(y) * gn.const(
            rng.standard_normal(y.shape[1:]).astype(dtype)))
        outs.append(y)
        wrt += [x, w]
    return feeds, outs + gn.grad(total, wrt)


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_winograd_convolutions_equal_the_numpy_backend(dtype, library):
    feeds, targets = _graph(dtype)
    f = gn.compile(targets, backend="cpu", library=library)
    # conv_gemm(np.intp(3), in<k>, ...) in the generated function, K<n>(...) in the driver
    calls = re.findall(rf"\(np\.intp\({windows.CONV2D_WINOGRAD}\), in\d, ", f.source)
    assert len(calls) == 2, "two of the three forward convolutions are Winograd"
    got = f(**feeds)
    want = gn.compile(targets, backend="numpy")(**feeds)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for node, a, b in zip(targets, got, want):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(),
                                   err_msg=str(node))


def test_winograd_rounds_bound_the_scratch(monkeypatch):
    """With rounds of 8 tiles, a batch of 40 images (1440 tiles) runs in 180 rounds; the
    workspace holds the transformed kernel and one round, and the results are the
    reference's."""
    monkeypatch.setattr(windows, "WINOGRAD_BYTES", 0)
    monkeypatch.setattr(windows, "WINOGRAD_MIN_ROUND", 8)
    rng = np.random.default_rng(4)
    x = gn.input("x", (None, 12, 12, 8))
    w = gn.param("wino_bound_w", rng.standard_normal((3, 3, 8, 16)).astype(np.float32))
    y = gn.conv2d(x, w, padding="same")
    f = gn.compile(y, backend="cpu")
    assert f"conv_gemm(np.intp({windows.CONV2D_WINOGRAD}), in0, st0, np.intp(8), " in f.source
    X = rng.standard_normal((40, 12, 12, 8)).astype(np.float32)
    got = f(x=X)
    want = gn.compile(y, backend="numpy")(x=X)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    items = windows.winograd_scratch_items(8, 16, 8)
    assert f.module.workspace_bytes(X) < 4 * items + got.nbytes + 4096


def test_generator_sizes_the_scratch_for_the_rounds_it_asks_for():
    """The generator's scratch expression and the rounds it passes agree with the
    helper's layout (a 3x3 8->16 'same' convolution of 12x12 images)."""
    x = gn.input("x", (None, 12, 12, 8))
    w = gn.param("wino_size_w", np.zeros((3, 3, 8, 16), np.float32))
    f = gn.compile(gn.conv2d(x, w, padding="same"), backend="cpu")
    (step,) = [s for s in f.program.steps if type(s).__name__ == "Window"]
    block, items = cpu._winograd(step)
    assert block == windows.winograd_block_tiles(8, 16, 4)
    tiles = 36
    assert eval(items.replace(step.out.shape[0], "1")) == \
        windows.winograd_scratch_items(8, 16, min(block, tiles))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_3x3_input_gradient_runs_as_a_winograd_convolution_of_the_output_gradient(padding):
    # 16 -> 24 channels, 12x12 images: the input gradient pays as Winograd (channels
    # swapped); as a conv2d step of the output gradient with the kernel turned, it agrees
    # with the numpy back end's col2im sum, and a stride-2 gradient keeps its own step
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 12, 12, 16)).astype(np.float32)
    Wv = (rng.standard_normal((3, 3, 16, 24)) * 0.2).astype(np.float32)
    got = {}
    for backend in ("numpy", "cpu"):
        x, w = gn.input("x", (None, 12, 12, 16)), gn.param("w", Wv.copy())
        loss = gn.sum(gn.square(gn.conv2d(x, w, padding=padding))) + \
            gn.sum(gn.square(gn.conv2d(x, w, stride=2, padding=padding)))
        f = gn.compile([loss] + gn.grad(loss, [x, w]), backend=backend)
        got[backend] = f(x=X)
    helpers = [getattr(s, "helper", None) for s in f.program.steps]
    assert helpers.count("conv2d_grad_input") == 1  # (the stride-2 one)
    assert helpers.count("conv2d") == 3  # (two forwards, one input gradient)
    for a, b in zip(got["cpu"], got["numpy"]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())
