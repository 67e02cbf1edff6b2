"""What the cpu back end does around inference convolutions (kernels/cpu.py,
kernels/windows.py): conv_gemm's epilogue (bias, relu, a concatenation's channels), the
steps folded into it (`fold_conv_epilogues`), parts of concatenations stored in place
(`place_in_concat`), max pools moved before relu and bias (passes.simplify), the
workspace shared by temporaries whose lifetimes do not overlap (`pack_workspace`), and
the faster max-pool loops. Each compiled graph is checked against the numpy back end."""
import re

import numpy as np
import pytest

import graphnn as gn
from graphnn import passes
from graphnn.graph import topological_order
from kernels import cpu, grouped, packed, windows

needs_avx512 = pytest.mark.skipif(not packed.available(),
                                  reason="the tile kernel needs AVX-512 (packed.available)")


def _reference(x, w, stride, ph, pw, oh, ow):
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]), x.dtype)
    windows.conv2d(x, w, stride, ph, pw, out)
    return out


# (mode, image, kernel, stride, padding): each forward mode, the direct path (unpadded,
# outputs at least DIRECT_MIN_WIDTH wide) and partial panels (co not a multiple of 32)
EPILOGUE_CASES = {
    "blas-1x1": (windows.CONV2D, (2, 5, 6, 8), (1, 1, 8, 5), 1, 0),
    "blas-3x3": (windows.CONV2D, (1, 7, 6, 3), (3, 3, 3, 4), 2, 1),
    "winograd": (windows.CONV2D_WINOGRAD, (2, 9, 7, 4), (3, 3, 4, 6), 1, 1),
    "winograd-u": (windows.CONV2D_WINOGRAD_U, (1, 10, 11, 5), (3, 3, 5, 7), 1, 1),
    "packed": (windows.CONV2D_PACKED, (2, 6, 7, 5), (3, 3, 5, 40), 1, 1),
    "packed-direct": (windows.CONV2D_PACKED, (1, 5, 30, 3), (3, 3, 3, 33), 1, 0),
    "winograd-packed": (windows.CONV2D_WINOGRAD_PACKED, (1, 8, 9, 6), (3, 3, 6, 35), 1, 1),
    # F(4x4, 3x3) (a 6 x 6 U): partial 4x4 tiles on both edges
    "winograd-f4-u": (windows.CONV2D_WINOGRAD_U, (2, 10, 11, 5), (3, 3, 5, 7), 1, 1),
    "winograd-f4-packed": (windows.CONV2D_WINOGRAD_PACKED, (1, 9, 7, 6), (3, 3, 6, 35), 1, 1),
}


def _operands(mode, x, w, oh, ow, side=2):
    """(b, s) conv_gemm takes in `mode` for kernel w (a Winograd mode: for output tiles
    side x side), and a scratch large enough."""
    ci, co = w.shape[2], w.shape[3]
    s = 1
    if mode in (windows.CONV2D_WINOGRAD, windows.CONV2D_WINOGRAD_U,
                windows.CONV2D_WINOGRAD_PACKED):
        s = 3  # tiles per round: several rounds, the last partial
        b = w
        t = side + 2
        if mode != windows.CONV2D_WINOGRAD:
            b = windows.winograd_kernel(w, side)
        if mode == windows.CONV2D_WINOGRAD_PACKED:
            b = np.stack([packed.pack_kernel(m.reshape(1, 1, ci, co))
                          for m in b.reshape(t * t, ci, co)]).reshape(t, t, ci, -1)
        items = windows.winograd_scratch_items(ci, co, s, mode != windows.CONV2D_WINOGRAD,
                                               t * t)
    else:
        b = packed.pack_kernel(w) if mode == windows.CONV2D_PACKED else w
        items = 3 * w.shape[0] * w.shape[1] * ci  # three patch rows per block
    return b, s, np.full(items, np.nan, x.dtype)


@pytest.mark.parametrize("act", [0, 1, 4])
@pytest.mark.parametrize("name", sorted(EPILOGUE_CASES))
def test_conv_gemm_epilogue_writes_bias_and_relu_into_its_channels_of_a_larger_output(
        name, act):
    """conv_gemm (plain Python, its tile kernel and gemm compiled) with bias, relu (act 1)
    or ReLU6 (act 4) and cout/off: the convolution's channels of a wider output hold
    act(conv + bias), the others keep what they held."""
    mode, image, kernel, stride, pad = EPILOGUE_CASES[name]
    if mode >= windows.CONV2D_PACKED and not packed.available():
        pytest.skip("the tile kernel needs AVX-512")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(image).astype(np.float32)
    w = (3 * rng.standard_normal(kernel)).astype(np.float32)
    bias = rng.standard_normal(kernel[3]).astype(np.float32)
    oh = (image[1] + 2 * pad - kernel[0]) // stride + 1
    ow = (image[2] + 2 * pad - kernel[1]) // stride + 1
    want = _reference(x, w, stride, pad, pad, oh, ow) + bias
    largest = np.abs(want).max()
    if act == 1:
        want = np.where(want <= 0, 0, want)
    elif act == 4:
        assert (want > 6).any() and (want < 0).any()  # both bounds met
        want = np.clip(want, 0, 6)
    co, before, after = kernel[3], 3, 5
    b, s, scratch = _operands(mode, x, w, oh, ow, 4 if "-f4" in name else 2)
    if mode in (windows.CONV2D, windows.CONV2D_PACKED):
        s = stride
    out = np.full((image[0], oh, ow, before + co + after), -7.0, np.float32)
    windows.conv_gemm(mode, x, b, s, pad, pad, scratch, out, bias, act + 2, co, before)
    # (F(4x4, 3x3)'s transforms multiply by up to 8 and 1/24: float32 rounding relative to
    # the largest output)
    tol = 1e-5 * largest if "-f4" in name else 2e-5
    np.testing.assert_allclose(out[..., before:before + co], want, rtol=2e-5, atol=tol)
    assert (out[..., :before] == -7).all() and (out[..., before + co:] == -7).all()
    # no epilogue, the whole output: the plain convolution
    plain = np.full((image[0], oh, ow, co), np.nan, np.float32)
    windows.conv_gemm(mode, x, b, s, pad, pad, scratch, plain)
    np.testing.assert_allclose(plain, _reference(x, w, stride, pad, pad, oh, ow),
                               rtol=2e-5, atol=tol)


def test_conv_gemm_epilogue_relu_keeps_nan_as_graphnns_relu_does():
    x = np.ones((1, 4, 4, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    w = np.ones((1, 1, 2, 3), np.float32)
    out = np.zeros((1, 4, 4, 3), np.float32)
    windows.conv_gemm(windows.CONV2D, x, w, 1, 0, 0, np.zeros(8, np.float32), out,
                      np.array([-5, 0, 1], np.float32), 3, 0, 0)
    assert np.isnan(out[0, 1, 1]).all()
    assert (out[0, 0, 0] == [0, 2, 3]).all()


def test_the_relu6_pattern_is_graphnns_clip_template():
    # kernels/ does not import graphnn: its copy of clip's scalar code must stay the same
    from graphnn import ops
    assert cpu._RELU6 == ops._CLIP_TEMPLATE.format("{0}", T="T", low="0.0", high="6.0")


@pytest.mark.parametrize("kernel, padding, library", [((1, 1), "valid", False),
                                                     ((3, 3), "same", True)])
def test_relu6_after_a_convolution_is_its_epilogue_as_clip_computes_it(kernel, padding,
                                                                       library):
    # MobileNet's ReLU6 as exported (Clip(x, 0, 6)) folds into conv_gemm: bit for bit the
    # unfused steps' numbers, NaN, infinities and -0.0 included
    rng = np.random.default_rng(11)
    x = gn.input("x", (1, 9, 9, 8))
    w = gn.const((2 * rng.standard_normal(kernel + (8, 40))).astype(np.float32))
    b = rng.standard_normal(40).astype(np.float32)
    b[:3] = [-0.0, 0.0, np.inf]
    y = gn.clip(gn.conv2d(x, w, padding=padding) + gn.const(b), 0, 6)
    z = gn.clip(gn.conv2d(x, w * 0.5, padding=padding), 0, 6)  # no bias
    # (each read by a 1x1 convolution that picks channels out, as a block's next layer)
    pick = np.zeros((1, 1, 40, 80), np.float32)
    pick[0, 0, np.arange(40), np.arange(40)] = pick[0, 0, np.arange(40), 40 + np.arange(40)] = 1
    outs = [gn.conv2d(y, gn.const(pick[..., :40])), gn.conv2d(z, gn.const(pick[..., 40:]))]
    feed = rng.standard_normal((1, 9, 9, 8)).astype(np.float32)
    feed[0, 4, 4, 2], feed[0, 0, 0, 0] = np.nan, -np.inf
    f = gn.compile(outs, backend="cpu", library=library)
    off = gn.compile(outs, backend="cpu", library=library, passes={"conv_epilogues": False})
    assert f.stats["conv_epilogues"] == 2 and off.stats["conv_epilogues"] == 0
    assert sorted(s.epilogue[1] for s in f.program.steps if getattr(s, "epilogue", None)) \
        == [4, 4]
    got, plain = f(x=feed), off(x=feed)
    want = gn.compile(outs, backend="numpy")(x=feed)
    for g, p, n in zip(got, plain, want):
        assert np.isnan(g).any() and (g == 6).any() and (g == 0).any()
        np.testing.assert_array_equal(g, p)  # (NaN where NaN)
        np.testing.assert_allclose(g, n, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("library", [True])  # (fused: the test above)
def test_a_mobilenet_block_runs_its_activations_in_its_convolutions(library):
    # expand 1x1 + bias + ReLU6, depthwise 3x3 + bias + ReLU6, project 1x1 + bias + the
    # residual (an inverted residual block as torchvision exports it): the expansion's
    # bias and ReLU6 are its epilogue; the depthwise convolution's stay a step (an
    # epilogue in grouped.depthwise_conv2d measured no faster than the step after it),
    # and so do the projection's bias and the residual; the unfused numbers bit for bit
    rng = np.random.default_rng(12)
    x = gn.input("x", (1, 10, 10, 8))

    def const(*shape, scale=1.0):
        return gn.const((scale * rng.standard_normal(shape)).astype(np.float32))
    h = gn.clip(gn.conv2d(x, const(1, 1, 8, 48)) + const(48), 0, 6)
    h = gn.clip(gn.depthwise_conv2d(h, const(3, 3, 1, 48), padding="same") + const(48), 0, 6)
    y = x + gn.conv2d(h, const(1, 1, 48, 8, scale=0.2)) + const(8)
    feed = (2 * rng.standard_normal((1, 10, 10, 8))).astype(np.float32)
    f = gn.compile(y, backend="cpu", library=library)
    off = gn.compile(y, backend="cpu", library=library, passes={"conv_epilogues": False})
    assert f.stats["conv_epilogues"] == 1 and off.stats["conv_epilogues"] == 0
    assert [getattr(s, "epilogue", None) and s.epilogue[1] for s in f.program.steps
            if isinstance(s, cpu.ir.Window)] == [4, None, None]
    assert [type(s).__name__ for s in f.program.steps].count("Elementwise") == 2
    got = f(x=feed)
    np.testing.assert_array_equal(got, off(x=feed))
    np.testing.assert_allclose(got, gn.compile(y, backend="numpy")(x=feed), rtol=2e-5,
                               atol=2e-5)


def _fire(dtype, rng, squeeze=4, expand=16, image=(1, 12, 12, 6)):
    """A SqueezeNet fire module on a constant image size: squeeze 1x1 + bias + relu, two
    expands (1x1 and 3x3 'same', each + bias + relu) concatenated on channels, then a
    3x3 stride-2 max pool of the concatenation and one of relu(conv + bias) directly."""
    def const(*shape):
        return gn.const((0.4 * rng.standard_normal(shape)).astype(dtype))
    x = gn.input("x", image, dtype=dtype)
    s = gn.relu(gn.conv2d(x, const(1, 1, image[3], squeeze)) + const(squeeze))
    e1 = gn.relu(gn.conv2d(s, const(1, 1, squeeze, expand)) + const(expand))
    e3 = gn.relu(gn.conv2d(s, const(3, 3, squeeze, expand), padding="same") + const(expand))
    cat = gn.concat([e1, e3], axis=3)
    pooled = gn.max_pool2d(cat, 3, 2)
    stem = gn.max_pool2d(gn.relu(gn.conv2d(x, const(3, 3, image[3], 8)) + const(8)), 3, 2)
    return x, [pooled, stem], rng.standard_normal(image).astype(dtype)


@pytest.mark.parametrize("library", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fire_module_folds_its_epilogues_and_concat_and_equals_the_numpy_backend(
        dtype, library):
    rng = np.random.default_rng(7)
    x, outs, feed = _fire(dtype, rng)
    f = gn.compile(outs, backend="cpu", library=library)
    want = gn.compile(outs, backend="numpy")(x=feed)
    got = f(x=feed)
    tol = 1e-10 if dtype == "float64" else 2e-5
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    # squeeze, both expands: bias + relu in the convolution; the two expands write into
    # the concatenation, which no step copies
    assert f.stats["conv_epilogues"] == 3
    assert not any(isinstance(s, cpu.ir.Place) for s in f.program.steps)
    cat = [s for s in f.program.steps if getattr(s, "epilogue", None) and s.epilogue[2]]
    assert sorted(s.epilogue[3] for s in cat) == [0, 16]
    assert len({s.out.name for s in cat}) == 1 and cat[0].out.shape[3] == 32
    # with the passes off: the same numbers, and the separate steps are back
    off = gn.compile(outs, backend="cpu", library=library,
                     passes={"conv_epilogues": False, "concat_in_place": False})
    assert off.stats["conv_epilogues"] == 0 and off.stats["concat_parts_in_place"] == 0
    assert any(isinstance(s, cpu.ir.Place) for s in off.program.steps)
    for a, b in zip(off(x=feed), want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_concat_parts_are_stored_in_place_by_the_elementwise_steps_that_make_them():
    """Without conv epilogues, the bias + relu steps store into the concatenation."""
    rng = np.random.default_rng(8)
    x, outs, feed = _fire("float32", rng)
    f = gn.compile(outs, backend="cpu", passes={"conv_epilogues": False})
    assert f.stats["concat_parts_in_place"] == 2
    placed = [s for s in f.program.steps
              if isinstance(s, cpu.ir.Elementwise) and s.placed is not None]
    assert sorted(s.placed[2] for s in placed) == [0, 16]
    assert "np.uintp(" in f.source  # stored through the flat view
    want = gn.compile(outs, backend="numpy")(x=feed)
    for a, b in zip(f(x=feed), want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_a_part_read_elsewhere_or_a_concat_buffer_busy_in_between_is_copied():
    """A part that something else reads stays a copy (its values are needed apart from the
    concatenation), and so does one whose concatenation is an output of the graph."""
    rng = np.random.default_rng(9)
    x = gn.input("x", (1, 6, 6, 3))
    a = gn.relu(gn.conv2d(x, gn.const(rng.standard_normal((1, 1, 3, 4)).astype("f4"))))
    b = gn.tanh(gn.conv2d(x, gn.const(rng.standard_normal((1, 1, 3, 5)).astype("f4"))))
    cat = gn.concat([a, b], axis=3)
    outs = [gn.sum(cat * 2.0, axis=3), a]  # a is also an output
    f = gn.compile(outs, backend="cpu", passes={"conv_epilogues": False})
    feed = rng.standard_normal((1, 6, 6, 3)).astype("f4")
    want = gn.compile(outs, backend="numpy")(x=feed)
    for got, ref in zip(f(x=feed), want):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    placed = [s for s in f.program.steps
              if isinstance(s, cpu.ir.Elementwise) and s.placed is not None]
    assert [s.placed[2] for s in placed] == [4]  # b's tanh only
    assert f.stats["concat_parts_in_place"] == 1


def test_max_pool_goes_before_relu_and_a_per_channel_bias():
    x = gn.input("x", (1, 8, 8, 4))
    b = gn.const(np.arange(4, dtype="f4") - 1.5)
    y = gn.max_pool2d(gn.relu(x + b), 2)
    z = gn.max_pool2d(gn.relu(x), 3, 1, padding=(1, 1, 1, 1))
    roots = passes.simplify([y, z])
    ops = [n.op for n in topological_order(roots[:1])]
    assert ops.index("max_pool2d") < ops.index("add") < ops.index("relu")
    assert roots[1].op == "relu" and roots[1].inputs[0].op == "max_pool2d_padded"
    feed = np.random.default_rng(1).standard_normal((1, 8, 8, 4)).astype("f4")
    got = gn.compile([y, z], backend="cpu")(x=feed)
    want = gn.compile([y, z], backend="numpy")(x=feed)
    for a, w in zip(got, want):
        np.testing.assert_array_equal(a, w)


def test_max_pool_stays_after_a_relu_something_else_reads():
    x = gn.input("x", (1, 8, 8, 4))
    r = gn.relu(x)
    y = gn.max_pool2d(r, 2)
    roots = passes.simplify([y, gn.sum(r)])
    assert roots[0].op == "max_pool2d" and roots[0].inputs[0].op == "relu"
    # a bias that is not per channel (varies along the width) stays too
    b = gn.const(np.arange(8, dtype="f4").reshape(1, 1, 8, 1))
    roots = passes.simplify([gn.max_pool2d(x + b, 2)])
    assert roots[0].op == "max_pool2d" and roots[0].inputs[0].op == "add"


@pytest.mark.parametrize("k, s, pad", [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 2, 1),
                                       (4, 3, 0), (3, 1, 2)])
def test_max_pool_loops_equal_numpy_with_nan_and_inf(k, s, pad):
    rng = np.random.default_rng(k * 10 + s)
    x = rng.standard_normal((2, 11, 9, 5)).astype(np.float32)
    x[0, 3, 4, 1] = np.nan
    x[1, 0, 0, 2] = np.inf
    x[1, 5, 5, 3] = -np.inf
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    oh, ow = (11 + 2 * pad - k) // s + 1, (9 + 2 * pad - k) // s + 1
    taps = [xp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s]
            for i in range(k) for j in range(k)]
    want = taps[0].copy()  # the first NaN met is kept, as the loops keep it
    for t in taps[1:]:
        want = np.where(t > want, t, want)
    got = np.full((2, oh, ow, 5), 99.0, np.float32)
    if pad:
        grouped.max_pool2d_padded(x, k, s, pad, pad, got)
    else:
        windows.max_pool2d(x, k, s, got)
    np.testing.assert_array_equal(got, want)


def test_workspace_temporaries_share_memory_only_when_their_lifetimes_do_not_overlap():
    rng = np.random.default_rng(4)
    for trial in range(200):
        parts = []
        for _ in range(rng.integers(1, 12)):
            first = int(rng.integers(0, 20))
            parts.append((int(rng.integers(1, 5000)), (first, first + int(rng.integers(0, 6)))))
        offsets, top = cpu.pack_workspace(parts)
        spans = [(o, o + size, f, l) for o, (size, (f, l)) in zip(offsets, parts)]
        align = cpu.WORKSPACE_ALIGN
        assert top == max(o + (size + align - 1) // align * align
                          for o, (size, _) in zip(offsets, parts))
        for k, (o, e, f, l) in enumerate(spans):
            assert o % cpu.WORKSPACE_ALIGN == 0
            for o2, e2, f2, l2 in spans[k + 1:]:
                if f <= l2 and f2 <= l:  # alive at one step: apart in memory
                    assert e <= o2 or e2 <= o, (trial, parts)
    # a temporary goes where the one that was touched last used to be
    offsets, top = cpu.pack_workspace([(64, (0, 1)), (64, (0, 2)), (64, (3, 4))])
    assert offsets[2] == offsets[1] and top == 128


def test_the_generated_workspace_shares_memory_between_dead_temporaries(monkeypatch):
    x, outs, feed = _fire("float32", np.random.default_rng(2), image=(1, 40, 40, 16))
    f = gn.compile(outs, backend="cpu", library=True)
    offsets = [int(v) for v in re.findall(r"^\s+_w\d+ = (\d+)$", f.source, re.M)]
    assert len(offsets) >= 3 and len(set(offsets)) < len(offsets)  # reused offsets
    want = gn.compile(outs, backend="numpy")(x=feed)
    for a, b in zip(f(x=feed), want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)

    def one_after_another(parts):  # every temporary memory of its own
        ends = np.cumsum([0] + [(size + 63) // 64 * 64 for size, _ in parts])
        return [int(e) for e in ends[:-1]], int(ends[-1])
    monkeypatch.setattr(cpu, "pack_workspace", one_after_another)
    g = gn.compile(outs, backend="cpu", library=True)
    assert f.module.workspace_bytes(feed) < g.module.workspace_bytes(feed)


def test_convolutions_alike_but_for_their_epilogues_keep_their_own_calls():
    """In library mode the driver writes a convolution's call once per call structure;
    the epilogue (bias, relu, channels) is part of that structure."""
    rng = np.random.default_rng(12)
    x = gn.input("x", (1, 9, 9, 6))
    w = gn.const(rng.standard_normal((3, 3, 6, 6)).astype("f4"))
    b = gn.const(rng.standard_normal(6).astype("f4"))
    xs = [gn.tanh(x * float(k + 1)) for k in range(4)]  # four images, one shape
    outs = [gn.relu(gn.conv2d(xs[0], w, padding="same") + b),
            gn.conv2d(xs[1], w, padding="same") * 2.0 + 1.0,
            gn.conv2d(xs[2], w, padding="same") + b,
            gn.relu(gn.conv2d(xs[3], w, padding="same"))]
    f = gn.compile(outs, backend="cpu", library=True)
    assert sorted(s.epilogue[1] for s in f.program.steps
                  if getattr(s, "epilogue", None)) == [0, 1, 1]
    feed = rng.standard_normal((1, 9, 9, 6)).astype("f4")
    want = gn.compile(outs, backend="numpy")(x=feed)
    for got, ref in zip(f(x=feed), want):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


@needs_avx512
def test_one_conv_gemm_module_serves_packed_and_other_convolutions_of_a_program():
    """conv_gemm is the costliest kernel to compile (seconds): a program whose
    convolutions are partly packed compiles it once, with the packed modes, for all."""
    rng = np.random.default_rng(13)
    x = gn.input("x", (1, 10, 10, 4))
    wide = gn.const(rng.standard_normal((3, 3, 4, 40)).astype("f4"))  # packed
    thin = gn.const(rng.standard_normal((1, 1, 40, 8)).astype("f4"))   # BLAS (co < 24)
    y = gn.conv2d(gn.relu(gn.conv2d(x, wide, padding="same")), thin)
    f = gn.compile(y, backend="cpu", library=True)
    assert f.stats["packed_kernels"] == 1
    modules = [m for m, _ in f._kernels if hasattr(m, "conv_gemm")]
    assert len(modules) == 1 and modules[0].PACKED
    feed = rng.standard_normal((1, 10, 10, 4)).astype("f4")
    np.testing.assert_allclose(f(x=feed), gn.compile(y, backend="numpy")(x=feed),
                               rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("library", [False, True])
def test_dense_block_convolutions_write_their_new_channels_into_the_concatenation(library):
    """DenseNet's layers: concat([h, conv(relu(h))]) three times; each convolution writes
    its new channels into the concatenation (its epilogue's channels), only h is copied."""
    rng = np.random.default_rng(14)
    x = gn.input("x", (1, 9, 9, 8))
    h = x
    for k in range(3):
        c = h.shape[3]
        w = gn.const((0.3 * rng.standard_normal((3, 3, c, 4))).astype("f4"))
        h = gn.concat([h, gn.conv2d(gn.relu(h * 0.5), w, padding="same")], axis=3)
    out = gn.max_pool2d(h, 3, 2)
    f = gn.compile(out, backend="cpu", library=library)
    placed = [s for s in f.program.steps if getattr(s, "epilogue", None)]
    assert [(s.epilogue[2], s.epilogue[3], s.out.shape[3]) for s in placed] == \
        [(4, 8, 12), (4, 12, 16), (4, 16, 20)]
    assert f.stats["concat_parts_in_place"] == 3
    feed = rng.standard_normal((1, 9, 9, 8)).astype("f4")
    np.testing.assert_allclose(f(x=feed), gn.compile(out, backend="numpy")(x=feed),
                               rtol=2e-5, atol=2e-5)


def test_training_steps_keep_their_bias_and_relu_steps_and_compile_no_epilogue_code():
    """Epilogues are for inference programs: a training step's conv_gemm module says
    EPILOGUES = False (Numba leaves the epilogues' code out), an inference one's True."""
    rng = np.random.default_rng(15)
    x = gn.input("x", (2, 8, 8, 3))
    w = gn.param("w", (0.3 * rng.standard_normal((3, 3, 3, 4))).astype("f4"))
    b = gn.param("b", np.zeros(4, "f4"))
    y = gn.relu(gn.conv2d(x, w, padding="same") + b)
    loss = gn.sum(y * y)
    train = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, [w, b]),
                       backend="cpu", library=True)
    infer = gn.compile(y, backend="cpu", library=True)
    assert train.stats["conv_epilogues"] == 0 and infer.stats["conv_epilogues"] == 1
    flags = [[m.EPILOGUES for m, _ in f._kernels if hasattr(m, "conv_gemm")]
             for f in (train, infer)]
    assert flags == [[False], [True]]
    feed = rng.standard_normal((2, 8, 8, 3)).astype("f4")
    np.testing.assert_allclose(infer(x=feed), gn.compile(y, backend="numpy")(x=feed),
                               rtol=2e-5, atol=2e-5)


@needs_avx512
def test_a_short_program_with_packed_kernels_runs_in_library_mode():
    """Fused, conv_gemm's packed modes compile inside the one function (ZFNet-512's 36
    steps: 9.6 s); with packed kernels the program is a library whatever its length,
    unless the caller chose."""
    rng = np.random.default_rng(16)
    x = gn.input("x", (1, 10, 10, 4))
    y = gn.conv2d(x, gn.const(rng.standard_normal((3, 3, 4, 40)).astype("f4")))
    auto = gn.compile(y, backend="cpu")
    assert auto.stats["packed_kernels"] == 1 and auto.stats["mode"] == "library"
    assert gn.compile(y, backend="cpu", library=False).stats["mode"] == "fused"
    unpacked = gn.compile(y, backend="cpu", passes={"packed_kernels": False})
    assert unpacked.stats["mode"] == "fused"
    feed = rng.standard_normal((1, 10, 10, 4)).astype("f4")
    np.testing.assert_allclose(auto(x=feed), unpacked(x=feed), rtol=2e-5, atol=2e-4)
