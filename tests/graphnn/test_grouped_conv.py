"""Depthwise and grouped convolutions and the channel shuffle (ShuffleNet's layers):
values against plain NumPy loops on every back end and in eager mode, the errors for
kernels that do not fit, their ONNX import (compared with onnx's reference evaluator,
and onnxruntime when installed) and export. Their gradients are checked against finite
differences in test_grad_backends.py."""
import numpy as np
import pytest

import graphnn as gn
from helpers import assert_op_matches

RNG = np.random.default_rng(7)


def rand(*shape, dtype="float32"):
    return RNG.uniform(-2.0, 2.0, shape).astype(dtype)


def _conv_ref(x, w, stride, pads, groups):
    """Grouped cross-correlation, NHWC / HWIO (kernel (kh, kw, c / groups, k)), explicit
    pads (top, left, bottom, right): every output element summed in a loop."""
    n, h, wd, c = x.shape
    kh, kw, gin, k = w.shape
    top, left, bottom, right = pads
    padded = np.zeros((n, h + top + bottom, wd + left + right, c))
    padded[:, top:top + h, left:left + wd, :] = x
    oh = (h + top + bottom - kh) // stride + 1
    ow = (wd + left + right - kw) // stride + 1
    gout = k // groups
    out = np.zeros((n, oh, ow, k))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(k):
                    first = (o // gout) * gin
                    window = padded[b, i * stride:i * stride + kh, j * stride:j * stride + kw,
                                    first:first + gin]
                    out[b, i, j, o] = np.sum(window * w[:, :, :, o])
    return out


def _same(size, k, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


DEPTHWISE_CASES = [
    # (input NHWC, kernel, stride, padding, the pads it means)
    ((2, 5, 6, 3), (3, 3, 1, 3), 1, "valid", (0, 0, 0, 0)),
    ((2, 5, 6, 3), (3, 3, 1, 3), 2, "same", _same(5, 3, 2)[:1] + _same(6, 3, 2)[:1]
     + _same(5, 3, 2)[1:] + _same(6, 3, 2)[1:]),
    ((1, 7, 7, 4), (3, 3, 1, 4), 2, (1, 1, 1, 1), (1, 1, 1, 1)),   # ShuffleNet's
    ((1, 4, 5, 2), (2, 3, 1, 2), 3, (2, 0, 1, 3), (2, 0, 1, 3)),   # uneven, wide stride
    ((1, 3, 3, 5), (3, 3, 1, 5), 1, (2, 2, 2, 2), (2, 2, 2, 2)),   # taps wholly in the pad
    # 3x3 windows mostly wholly inside the image (the kernels' register path), odd channels
    ((2, 9, 8, 19), (3, 3, 1, 19), 1, (1, 1, 1, 1), (1, 1, 1, 1)),
    ((1, 11, 10, 7), (3, 3, 1, 7), 2, (0, 1, 1, 0), (0, 1, 1, 0)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xshape, wshape, stride, padding, pads", DEPTHWISE_CASES)
def test_depthwise_conv2d(xshape, wshape, stride, padding, pads, dtype):
    feeds = {"x": rand(*xshape, dtype=dtype), "w": rand(*wshape, dtype=dtype)}
    node = assert_op_matches(
        lambda x, w: gn.depthwise_conv2d(x, w, stride=stride, padding=padding),
        lambda x, w: _conv_ref(x, w, stride, pads, xshape[3]), feeds,
        shapes={"x": (None,) + xshape[1:]})
    assert node.op == "depthwise_conv2d"


@pytest.mark.parametrize("xshape, wshape, groups, op", [
    ((2, 3, 4, 12), (1, 1, 3, 8), 4, "grouped_conv2d"),     # ShuffleNet's pointwise layers
    ((1, 2, 2, 6), (1, 1, 1, 12), 6, "grouped_conv2d"),     # one channel per group, 2 out
    ((2, 3, 3, 6), (1, 1, 2, 3), 3, "grouped_conv2d"),      # one output per group
    ((1, 5, 5, 4), (3, 3, 1, 4), 4, "depthwise_conv2d"),    # groups = channels = outputs
    ((1, 5, 6, 4), (3, 2, 2, 6), 2, "concat"),              # 3x2 kernels: conv2d per group
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_with_groups(xshape, wshape, groups, op, dtype):
    feeds = {"x": rand(*xshape, dtype=dtype), "w": rand(*wshape, dtype=dtype)}
    node = assert_op_matches(lambda x, w: gn.conv2d(x, w, groups=groups),
                             lambda x, w: _conv_ref(x, w, 1, (0, 0, 0, 0), groups), feeds)
    assert node.op == op


def test_grouped_conv2d_op_directly():
    feeds = {"x": rand(1, 3, 2, 8), "w": rand(1, 1, 4, 6)}
    assert_op_matches(lambda x, w: gn.ops.grouped_conv2d(x, w, 2),
                      lambda x, w: _conv_ref(x, w, 1, (0, 0, 0, 0), 2), feeds)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_channel_shuffle(groups):
    x = rand(2, 2, 3, 6)

    def reference(x):
        out = np.empty_like(x)
        per = 6 // groups
        for i in range(groups):
            for j in range(per):
                out[..., j * groups + i] = x[..., i * per + j]
        return out
    assert_op_matches(lambda x: gn.ops.channel_shuffle(x, groups), reference, {"x": x},
                      shapes={"x": (None, 2, 3, 6)})


def test_channel_shuffle_by_the_other_factor_undoes_it():
    x = np.arange(24.0).reshape(1, 1, 2, 12)
    y = gn.ops.channel_shuffle(gn.ops.channel_shuffle(x, 3), 4)
    np.testing.assert_array_equal(y, x)


def _max_pool_ref(x, k, s, pads):
    t, l, b, r = pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
    oh, ow = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    out = np.empty((x.shape[0], oh, ow, x.shape[3]))
    for y in range(oh):
        for j in range(ow):
            out[:, y, j] = xp[:, y * s:y * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("k, s, pads", [(3, 2, (1, 1, 1, 1)), (3, 1, (1, 1, 1, 1)),
                                        (2, 2, (0, 1, 1, 0)), (3, 2, (2, 0, 1, 2))])
def test_max_pool2d_with_padding(k, s, pads):
    x = rand(2, 7, 6, 3) - 5.0  # all negative: a zero pad would win
    assert_op_matches(lambda x: gn.max_pool2d(x, k, s, padding=pads),
                      lambda x: _max_pool_ref(x, k, s, pads), {"x": x})


def test_padded_max_pool_gradient_goes_to_the_first_maximum_inside_the_image():
    x = np.array([[-2.0, -1.0], [-3.0, -1.0]]).reshape(1, 2, 2, 1)
    node = gn.input("x", (1, 2, 2, 1), dtype="float64")
    g = gn.grad(gn.sum(gn.max_pool2d(node, 2, 1, padding=(1, 1, 0, 0))), [node])[0]
    # the windows' taps inside the image: (0,0): x00 -> x00; (0,1): x00, x01 -> x01;
    # (1,0): x00, x10 -> x00; (1,1): all four, x01 and x11 tie at -1 -> x01 (first)
    for backend in ("numpy", "cpu", "cuda"):
        np.testing.assert_array_equal(gn.compile(g, backend=backend)(x=x).ravel(),
                                      [2.0, 2.0, 0.0, 0.0])


# ---- errors -------------------------------------------------------------------------------

def _raises(error, match, build):
    with pytest.raises(error, match=match) as info:
        build()
    assert "test_grouped_conv.py:" in str(info.value)  # the user's line
    return info.value


def test_groups_that_do_not_divide_the_channels_name_the_problem_and_the_line():
    x = gn.input("x", (None, 8, 8, 6))
    e = _raises(gn.ShapeError, r"conv2d \(groups=4\).*\(\?, 8, 8, 6\).*\(1, 1, 2, 8\).*"
                r"do not split into 4 groups", lambda: gn.conv2d(
                    x, gn.param("w", shape=(1, 1, 2, 8), seed=0), groups=4))
    assert isinstance(e, gn.GraphError)
    _raises(gn.ShapeError, "do not split into 3 groups", lambda: gn.conv2d(
        x, gn.param("w3", shape=(1, 1, 2, 4), seed=0), groups=3))    # 4 outputs
    _raises(gn.ShapeError, "do not split into 2 groups", lambda: gn.conv2d(
        x, gn.param("w2", shape=(3, 3, 2, 4), seed=0), groups=2))    # 2 != 6 / 2
    _raises(gn.GraphError, "groups must be a positive int, got 0", lambda: gn.conv2d(
        x, gn.param("w0", shape=(1, 1, 6, 4), seed=0), groups=0))


def test_depthwise_errors_name_the_node_and_the_line():
    x = gn.input("x", (None, 8, 8, 6))
    _raises(gn.ShapeError, r"depthwise_conv2d.*kernel must be \(kh, kw, 1, channels\)",
            lambda: gn.depthwise_conv2d(x, gn.param("k", shape=(3, 3, 2, 6), seed=0)))
    _raises(gn.ShapeError, "input has 6 channels but the kernel has 5",
            lambda: gn.depthwise_conv2d(x, gn.param("k5", shape=(3, 3, 1, 5), seed=0)))
    _raises(gn.ShapeError, r"padding must be 'valid', 'same' or \(top, left, bottom, right\)",
            lambda: gn.depthwise_conv2d(x, gn.param("k6", shape=(3, 3, 1, 6), seed=0),
                                        padding=(1, 1)))
    _raises(gn.ShapeError, "larger than the padded 8x8 input",
            lambda: gn.depthwise_conv2d(x, gn.param("k9", shape=(9, 9, 1, 6), seed=0)))
    _raises(gn.DTypeError, "float", lambda: gn.depthwise_conv2d(
        gn.input("i", (1, 4, 4, 2), dtype="int32"), gn.input("ik", (3, 3, 1, 2), dtype="int32")))


def test_padded_max_pool_errors():
    x = gn.input("x", (None, 8, 8, 6))
    _raises(gn.ShapeError, r"padding must be \(top, left, bottom, right\), each in "
            r"\[0, size\) = \[0, 3\), got \(3, 0, 0, 0\)",
            lambda: gn.max_pool2d(x, 3, 2, padding=(3, 0, 0, 0)))
    _raises(gn.GraphError, "max_pool2d: padding must be 'valid' or",
            lambda: gn.max_pool2d(x, 3, 2, padding="same"))


def test_grouped_and_shuffle_errors():
    x = gn.input("x", (None, 8, 8, 6))
    _raises(gn.ShapeError, "grouped_conv2d takes 1x1 kernels", lambda: gn.ops.grouped_conv2d(
        x, gn.param("w", shape=(3, 3, 3, 4), seed=0), 2))
    _raises(gn.ShapeError, "6 channels do not split into 4 groups",
            lambda: gn.ops.channel_shuffle(x, 4))
    _raises(gn.ShapeError, "rank 4", lambda: gn.ops.channel_shuffle(gn.input("v", (3, 6)), 2))


# ---- ONNX -----------------------------------------------------------------------------------

def _onnx_model(nodes, inits, x_shape, y_shape):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _check_against_onnx(model, x):
    from onnx.reference import ReferenceEvaluator
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    outputs, _ = gn.onnx.load(model)
    ops = {n.op for n in gn.Graph(outputs).nodes}
    for backend in ("numpy", "cpu"):
        got = gn.compile(outputs[0], backend=backend)(x=x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    try:
        import onnxruntime as ort
    except ImportError:
        return ops
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(gn.compile(outputs[0], backend="cpu")(x=x), theirs,
                               rtol=1e-5, atol=1e-5)
    return ops


def test_onnx_shufflenet_unit_imports_as_grouped_ops():
    """Grouped 1x1 Conv, the NCHW channel shuffle (Reshape, Transpose, Reshape), a
    stride-2 depthwise Conv with ONNX's symmetric pads, a padded AveragePool and MaxPool,
    Concat."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper
    c, g = 8, 4
    inits = {"w1": RNG.standard_normal((c, c // g, 1, 1)).astype(np.float32),
             "dw": RNG.standard_normal((c, 1, 3, 3)).astype(np.float32),
             "s1": np.array([1, g, c // g, 6, 6], np.int64),
             "s2": np.array([1, c, 6, 6], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], group=g),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Reshape", ["r", "s1"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s2"], ["sh"]),
             helper.make_node("Conv", ["sh", "dw"], ["d"], group=c, strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["d", "p", "m"], ["y"], axis=1)]
    model = _onnx_model(nodes, inits, [1, c, 6, 6], [1, 3 * c, 3, 3])
    x = RNG.standard_normal((1, c, 6, 6)).astype(np.float32)
    ops = _check_against_onnx(model, x)
    assert {"grouped_conv2d", "channel_shuffle", "depthwise_conv2d", "max_pool2d_padded"} <= ops
    assert "pad_axis" not in ops and "conv2d" not in ops


@pytest.mark.parametrize("attrs, cout", [
    (dict(group=4, strides=[1, 2], pads=[1, 0, 1, 2]), 4),       # unequal strides
    (dict(group=4, dilations=[2, 2], pads=[2, 2, 2, 2]), 4),     # dilated
    (dict(group=4, pads=[1, 1, 1, 1]), 8),                       # channel multiplier 2
    (dict(group=2, pads=[0, 1, 0, 1]), 4),                       # 3x3 kernel, 2 channels/group
])
def test_onnx_grouped_conv_variants(attrs, cout):
    pytest.importorskip("onnx")
    from onnx import helper
    groups = attrs["group"]
    w = RNG.standard_normal((cout, 4 // groups, 3, 3)).astype(np.float32)
    x = RNG.standard_normal((1, 4, 7, 8)).astype(np.float32)
    model = _onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], {"w": w},
                        [1, 4, 7, 8], ["n", "c", "h", "w"])
    _check_against_onnx(model, x)


# ---- saving -------------------------------------------------------------------------------

def _unit():
    x = gn.input("x", (None, 6, 6, 4))
    y = gn.depthwise_conv2d(x, gn.param("w", shape=(3, 3, 1, 4), seed=0), stride=2,
                            padding=(1, 0, 1, 2))
    y = gn.conv2d(y, gn.param("g", shape=(1, 1, 2, 4), seed=1), groups=2)
    return gn.ops.channel_shuffle(y, 2)


def test_save_and_load_keep_groups_and_explicit_pads(tmp_path):
    y = _unit()
    gn.save([y], tmp_path / "m.json")
    g = gn.load(tmp_path / "m.json")
    x = rand(2, 6, 6, 4)
    np.testing.assert_array_equal(gn.compile(g.outputs[0], backend="numpy")(x=x),
                                  gn.compile(y, backend="numpy")(x=x))
    assert {n.op for n in g.nodes} >= {"depthwise_conv2d", "grouped_conv2d", "channel_shuffle"}
    assert [n.attr("padding") for n in g.nodes if n.op == "depthwise_conv2d"] == [(1, 0, 1, 2)]


@pytest.mark.parametrize("padding", [[1, 0, 1], [1, 0, -1, 2], "full", [1.5, 0, 1, 2]])
def test_load_refuses_a_bad_padding(tmp_path, padding):
    import json
    gn.save([_unit()], tmp_path / "m.json")
    document = json.loads((tmp_path / "m.json").read_text())
    for record in document["nodes"]:
        if record.get("op") == "depthwise_conv2d":
            record["attrs"]["padding"] = padding
    (tmp_path / "m.json").write_text(json.dumps(document))
    with pytest.raises(gn.GraphError, match="attr padding=.* of depthwise_conv2d is not a valid"):
        gn.load(tmp_path / "m.json")


def test_onnx_concat_and_per_channel_scale_stay_channels_last():
    """Conv outputs concatenated along the channels, scaled by a (c, 1, 1) vector and
    shifted by a (1, c, 1, 1) one (a Caffe2 scale layer, as in DenseNet), then a Conv:
    all of it channels-last, so the only 4-D transposes are the input's and the
    output's."""
    pytest.importorskip("onnx")
    from onnx import helper
    inits = {"w1": RNG.standard_normal((3, 4, 1, 1)).astype(np.float32),
             "w2": RNG.standard_normal((5, 4, 3, 3)).astype(np.float32),
             "s": RNG.standard_normal((8, 1, 1)).astype(np.float32),
             "b": RNG.standard_normal((1, 8, 1, 1)).astype(np.float32),
             "w3": RNG.standard_normal((2, 8, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("Conv", ["x", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
             helper.make_node("Mul", ["cat", "s"], ["scaled"]),
             helper.make_node("Add", ["scaled", "b"], ["shifted"]),
             helper.make_node("Relu", ["shifted"], ["r"]),
             helper.make_node("Conv", ["r", "w3"], ["y"])]
    model = _onnx_model(nodes, inits, [1, 4, 5, 5], [1, 2, 5, 5])
    _check_against_onnx(model, RNG.standard_normal((1, 4, 5, 5)).astype(np.float32))
    outputs, _ = gn.onnx.load(model)
    transposes = [n for n in gn.Graph(outputs).nodes if n.op == "transpose" and n.ndim == 4]
    assert len(transposes) == 2, transposes


def test_cuda_simulator_matches_the_references():
    """Each op's element function (kernels/cuda_grouped.py) on tiny shapes."""
    cuda = dict(backends=["cuda"], eager=False)
    x = rand(1, 4, 5, 4, dtype="float64")
    assert_op_matches(lambda x, w: gn.depthwise_conv2d(x, w, stride=2, padding=(1, 0, 1, 2)),
                      lambda x, w: _conv_ref(x, w, 2, (1, 0, 1, 2), 4),
                      {"x": x, "w": rand(3, 3, 1, 4, dtype="float64")}, **cuda)
    assert_op_matches(lambda x, w: gn.conv2d(x, w, groups=2),
                      lambda x, w: _conv_ref(x, w, 1, (0, 0, 0, 0), 2),
                      {"x": x, "w": rand(1, 1, 2, 6, dtype="float64")}, **cuda)
    assert_op_matches(lambda x: gn.ops.channel_shuffle(x, 2),
                      lambda x: x.reshape(1, 4, 5, 2, 2).transpose(0, 1, 2, 4, 3).reshape(x.shape),
                      {"x": x}, **cuda)
    assert_op_matches(lambda x: gn.max_pool2d(x, 3, 2, padding=(1, 1, 1, 1)),
                      lambda x: _max_pool_ref(x, 3, 2, (1, 1, 1, 1)), {"x": x - 5.0}, **cuda)
