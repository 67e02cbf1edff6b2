"""gn.onnx: export to ONNX and import from ONNX, checked against onnx's own reference
evaluator and against the test models the onnx package ships."""
import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.ops import pad_axis  # noqa: E402
from graphnn.tools.cli import main as graphnn_main  # noqa: E402
from kernels import ir  # noqa: E402
from helpers import EXAMPLES, load_example  # noqa: E402

RNG = np.random.default_rng(0)
DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


# ---- graphnn models exported, checked and imported back ----------------------------------

def mlp():
    x = gn.input("x", (None, 6))
    w1 = gn.param("W1", shape=(6, 5), seed=0)
    b1 = gn.param("b1", np.linspace(-0.2, 0.2, 5).astype(np.float32))
    w2 = gn.param("W2", shape=(5, 3), seed=1)
    h = gn.tanh(x @ w1 + b1)
    probs = gn.softmax(gn.leaky_relu(h, 0.1) @ w2, name="probs")
    return [probs], {"x": RNG.standard_normal((4, 6)).astype(np.float32)}


def cnn():
    x = gn.input("image", (None, 8, 8, 3))
    y = gn.input("labels", (None,), dtype="int64")
    w1 = gn.param("conv1", shape=(3, 3, 3, 4), seed=1)
    b1 = gn.param("b1", np.linspace(-0.1, 0.1, 4).astype(np.float32))
    h = gn.max_pool2d(gn.relu(gn.conv2d(x, w1, padding="same") + b1), 2)
    w2 = gn.param("conv2", shape=(3, 3, 4, 6), seed=2)
    h = gn.avg_pool2d(gn.elu(gn.conv2d(h, w2, stride=1)), 2)
    logits = gn.flatten(h) @ gn.param("dense", shape=(6, 5), seed=3)
    probs = gn.softmax(logits, name="probs")
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    feeds = {"image": RNG.standard_normal((2, 8, 8, 3)).astype(np.float32),
             "labels": np.array([1, 3])}
    return [probs, loss], feeds


def lecture():
    x1, x2, x3 = gn.input("x1", ()), gn.input("x2", ()), gn.input("x3", ())
    f1 = gn.add(4 * x2 + x2 ** 2, 3 * x3, name="f1")
    f2 = gn.add(x1 * x2, 3 * x3, name="f2")
    feeds = {k: np.array(v, np.float32) for k, v in (("x1", 1), ("x2", 2), ("x3", 2))}
    return [f1, f2], feeds


def ops_zoo():
    x = gn.input("x", (3, 4))
    z = gn.concat([gn.sqrt(gn.abs(x) + 1), gn.clip(x, -0.5, 0.5), gn.softplus(x)], axis=1)
    z = gn.slice_axis(z, 1, 2, 10) - gn.transpose(gn.mean(x, axis=1, keepdims=True), (0, 1))
    z = pad_axis(gn.log_softmax(z), 0, 1, 0)
    r = gn.sum(gn.reshape(z, (2, 16)), axis=1) + gn.max(z) + gn.mean(gn.sigmoid(z))
    return [gn.maximum(r, 0.0) * gn.minimum(r, 1.0) / 2 - gn.step(r), gn.exp(-z)], \
        {"x": RNG.standard_normal((3, 4)).astype(np.float32)}


def grouped():
    """A ShuffleNet unit: grouped 1x1 convolutions, a channel shuffle, depthwise
    convolutions with explicit (ONNX) and Keras padding."""
    x = gn.input("image", (None, 8, 8, 8))
    h = gn.relu(gn.conv2d(x, gn.param("g1", shape=(1, 1, 2, 12), seed=1), groups=4))
    h = gn.ops.channel_shuffle(h, 4)
    h = gn.depthwise_conv2d(h, gn.param("dw1", shape=(3, 3, 1, 12), seed=2), stride=2,
                            padding=(1, 1, 1, 1))
    h = gn.conv2d(h, gn.param("dw2", shape=(3, 3, 1, 12), seed=3), padding="same",
                  groups=12)
    y = gn.conv2d(h, gn.param("g2", shape=(1, 1, 4, 6), seed=4), groups=3, name="y")
    return [y], {"image": RNG.standard_normal((2, 8, 8, 8)).astype(np.float32)}


MODELS = {"mlp": mlp, "cnn": cnn, "lecture": lecture, "ops": ops_zoo, "grouped": grouped}


@pytest.mark.parametrize("name", MODELS)
def test_export_passes_checker_and_reference_evaluator_agrees(name, tmp_path):
    outputs, feeds = MODELS[name]()
    path = gn.onnx.export(outputs, tmp_path / f"{name}.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 13
    expected = gn.compile(outputs, backend="numpy")(**feeds)
    got = ReferenceEvaluator(model).run(None, feeds)
    assert [o.name for o in model.graph.output] == [
        n.name or o.name for n, o in zip(outputs, model.graph.output)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    params = gn.Graph(outputs).params
    assert {i.name for i in model.graph.initializer} == {p.name for p in params}


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_gives_the_same_outputs(name, tmp_path):
    outputs, feeds = MODELS[name]()
    path = gn.onnx.export(outputs, tmp_path / f"{name}.onnx")
    imported = gn.onnx.load(path)
    assert [n.name for n in imported.inputs] == [n.name for n in gn.Graph(outputs).inputs]
    assert [n.name for n in imported.outputs] == [o.name for o in onnx.load(path).graph.output]
    backend = "cpu" if name in ("cnn", "grouped") else "numpy"
    got = gn.compile(imported.outputs, backend=backend)(**feeds)
    expected = gn.compile(outputs, backend="numpy")(**feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    # the exported NHWC<->NCHW transposes cancel on import, and parameters keep their names
    graph = gn.Graph(imported.outputs)
    assert not [n for n in graph.nodes if n.op == "transpose" and n.ndim == 4]
    assert {p.name for p in graph.params} == {p.name for p in gn.Graph(outputs).params}


# ---- every example model: exported and imported back ------------------------------------

def _activations(module):
    x = gn.input("x", (None,))
    return [f(x) for f in module.ACTIVATIONS.values()]


def _outputs_of(nodes, *names):
    return [nodes[name] for name in names]


# The inference outputs of the model each example builds (with the example's own builder).
EXAMPLE_FORWARD = {
    "activations": _activations,  # its model is the ACTIVATIONS table, applied to one input
    "backprop_step_by_step": lambda m: _outputs_of(m.build_network(), "out_o1", "out_o2"),
    "cnn_digits": lambda m: [m.build()[1].inputs[0]],  # the logits under the loss
    # (in inference mode: dropout off, BatchNorm's running averages)
    "cnn_regularised": lambda m: [gn.nn.inference(m.Model()(gn.input("x", (None, 8, 8, 1))))],
    "lecture_graph": lambda m: list(m.build()[1]),
    "lstm_sequence": lambda m: [m.build(m.LSTM)[1]],
    "mlp_digits": lambda m: [m.build()[2]],
    "optimizers": lambda m: [m.build()[3]],
    "perceptron": lambda m: [m.build()[0]],
    "render_mlp": lambda m: [m.build().inputs[0]],  # the logits under the loss
    "rnn_sequence": lambda m: [m.build()[1]],
    "xor": lambda m: [m.build()[1]],
}
# Examples with no model of their own.
EXAMPLE_SKIPPED = {
    "mlp_digits_distributed": "trains the model of mlp_digits.py (imports its build())",
    "render_lecture": "draws the graph of lecture_graph.py (imports its build())",
    "render_onnx": "draws a model imported from ONNX (SqueezeNet's test model)",
}


def test_every_example_is_round_tripped_or_skipped_with_a_reason():
    names = {f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py")}
    assert names == set(EXAMPLE_FORWARD) | set(EXAMPLE_SKIPPED)


@pytest.mark.parametrize("name", sorted(EXAMPLE_FORWARD))
def test_example_model_round_trip(name, tmp_path):
    """Export the example's forward graph, check it, import it back: same outputs."""
    outputs = EXAMPLE_FORWARD[name](load_example(name))
    rng = np.random.default_rng(3)
    graph = gn.Graph(outputs)
    for p in graph.params:  # random values (not zeros), carried by the file's initializers
        p.value = rng.standard_normal(p.shape).astype(p.dtype)
    feeds = {}
    for node in graph.inputs:
        shape = tuple(3 if d is None else d for d in node.shape)
        feeds[node.name] = rng.standard_normal(shape).astype(node.dtype)
    path = gn.onnx.export(outputs, tmp_path / f"{name}.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    imported = gn.onnx.load(path)
    assert [n.name for n in imported.inputs] == [n.name for n in graph.inputs]
    expected = gn.compile(outputs, backend="numpy")(**feeds)
    got = gn.compile(imported.outputs, backend="numpy")(**feeds)
    reference = ReferenceEvaluator(model).run(None, feeds)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected) == len(reference) == len(outputs)
    for g, e, r in zip(got, expected, reference):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-6)


def test_export_refuses_derivative_graph_ops(tmp_path):
    x = gn.input("x", (None, 4, 4, 1))
    loss = gn.sum(gn.max_pool2d(x, 2))
    (gx,) = gn.grad(loss, [x])
    with pytest.raises(gn.GraphError, match="max_pool2d_grad"):
        gn.onnx.export(gx, tmp_path / "grad.onnx")


# ---- ONNX models (NCHW) imported --------------------------------------------------------

def onnx_cnn_model(batch="N"):
    """A small NCHW classifier written directly in ONNX, as another framework would."""
    rng = np.random.default_rng(1)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)
    inits = [init("conv1.weight", 8, 3, 3, 3), init("conv1.bias", 8),
             init("bn.scale", 8), init("bn.bias", 8), init("bn.mean", 8),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.var"),
             init("conv2.weight", 16, 4, 3, 3), init("fc.weight", 10, 16), init("fc.bias", 10)]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"],
                         pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean",
                                                "bn.var"], ["bn1"], epsilon=1e-5),
        helper.make_node("Relu", ["bn1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight"], ["c2"], group=2, pads=[0, 0, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "onnx_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_import_nchw_model_matches_reference_and_keeps_layout_inside():
    model = onnx_cnn_model()
    outputs, inputs = gn.onnx.load(model)
    assert [i.name for i in inputs] == ["input"] and inputs[0].shape == (None, 3, 12, 12)
    assert outputs[0].name == "probs" and outputs[0].shape == (None, 10)
    x = RNG.standard_normal((3, 3, 12, 12)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"input": x})
    got = gn.compile(outputs[0], backend="numpy")(input=x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    graph = gn.Graph(outputs)
    # one transpose into channels-last at the input, one out before Flatten: no others
    assert len([n for n in graph.nodes if n.op == "transpose" and n.ndim == 4]) == 2
    # the batch norm is folded into conv1's weight and bias (its bias takes bn.bias's name)
    assert graph.param_count() == 8 * 27 + 8 + 16 * 36 + 170
    assert {p.name for p in graph.params} == {"conv1.weight", "bn.bias", "conv2.weight",
                                              "fc.weight", "fc.bias"}
    unfolded = gn.onnx.load(model, fold_batch_norm=False).outputs
    assert gn.Graph(unfolded).param_count() == 8 * 27 + 8 * 5 + 16 * 36 + 170
    np.testing.assert_allclose(gn.compile(unfolded[0], backend="numpy")(input=x), expected,
                               rtol=1e-4, atol=1e-6)
    assert next(p for p in graph.params if p.name == "conv1.weight").shape == (3, 3, 3, 8)


def test_frozen_import_makes_weights_constants_the_cpu_back_end_prepares_once():
    """frozen=True: no params (every initializer a constant, batch norm still folded), so
    the cpu back end's convolutions read constant kernels (which it may pack or transform
    when it compiles: tests/kernels/test_packed.py); the numbers equal the reference
    evaluator's."""
    model = onnx_cnn_model()
    x = RNG.standard_normal((2, 3, 12, 12)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"input": x})
    outputs, inputs = gn.onnx.load(model, frozen=True)
    graph = gn.Graph(outputs)
    assert graph.param_count() == 0 and not graph.params
    assert [i.name for i in inputs] == ["input"]
    f = gn.compile(outputs[0], backend="cpu")
    trainable = gn.compile(gn.onnx.load(model).outputs[0], backend="cpu")
    for function, frozen in ((f, True), (trainable, False)):
        convs = [s for s in function.program.steps if isinstance(s, ir.Window)
                 and s.helper.startswith("conv2d")]
        assert len(convs) == 3  # conv1, conv2's two groups
        assert [s.args[1].role == "const" for s in convs] == [frozen] * 3
    for backend_fn in (f, gn.compile(outputs[0], backend="numpy")):
        np.testing.assert_allclose(backend_fn(input=x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trainable(input=x), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("axis", [1, -3, 2])
def test_channel_concat_of_conv_branches_stays_channels_last(axis):
    """Inception's pattern: two conv branches concatenated along the channels (axis 1, or
    -3, of NCHW) are concatenated channels-last, and scaled and shifted by per-channel
    values (shapes (C, 1, 1) and (1, C, 1, 1)), with no transposes to NCHW and back;
    along another axis (2, the height) likewise, on the matching NHWC axis. Numbers
    against onnx's reference evaluator, on the numpy and cpu back ends."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal(s)).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (5, 3, 1, 1)), ("w3", (6, 9, 3, 3)))]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["input", "w2"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["cat"], axis=axis)]
    if axis % 4 == 1:  # then DenseNet's batch norm as Mul and Add by per-channel values
        inits += [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                  for n, s in (("scale", (9, 1, 1)), ("shift", (1, 9, 1, 1)))]
        nodes.append(helper.make_node("Mul", ["cat", "scale"], ["scaled"]))
        nodes.append(helper.make_node("Add", ["scaled", "shift"], ["shifted"]))
        nodes.append(helper.make_node("Conv", ["shifted", "w3"], ["c"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", ["c"], ["out"]))
        out_shape = [2, 6, 8, 8]
    else:
        inits.pop()
        inits[1] = numpy_helper.from_array(
            (0.3 * rng.standard_normal((4, 3, 1, 1))).astype(np.float32), "w2")
        nodes.append(helper.make_node("Relu", ["cat"], ["out"]))
        out_shape = [2, 4, 16, 8]
    graph = helper.make_graph(
        nodes, "branches",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    outputs, _ = gn.onnx.load(model)
    g = gn.Graph(outputs)
    # one transpose into channels-last at the input, one out at the output: no others
    assert len([n for n in g.nodes if n.op == "transpose" and n.ndim == 4]) == 2
    (concat,) = [n for n in g.nodes if n.op == "concat"]
    assert concat.attr("axis") == {1: 3, 2: 1}[axis % 4]
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"input": x})
    for backend in ("numpy", "cpu"):
        got = gn.compile(outputs[0], backend=backend)(input=x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(),
                                   err_msg=backend)


def test_unsupported_ops_are_all_listed_at_once():
    nodes = [helper.make_node("Hardmax", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("LpNormalization", ["b"], ["c"]),
             helper.make_node("Hardmax", ["c"], ["d"]), helper.make_node("Relu", ["x"], ["e"])]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(gn.GraphError, match=r"Hardmax \(2 nodes\), LpNormalization \(1 node\)"):
        gn.onnx.load(model)


def test_unsupported_attributes_are_reported_with_the_ops():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]),
             helper.make_node("Tanh", ["y"], ["z"]), helper.make_node("Celu", ["z"], ["o"])]
    w = numpy_helper.from_array(np.ones((2, 1, 2, 2, 2), np.float32), "w")
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3, 3])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(gn.GraphError) as info:
        gn.onnx.load(model)
    assert "Celu (1 node)" in str(info.value) and "3-D convolution" in str(info.value)


def test_missing_onnx_package_gives_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"graphnn\[onnx\]"):
        gn.onnx.load("model.onnx")


# ---- the test models shipped with the onnx package ----------------------------------------

# Not expressible in graphnn (see docs/ONNX.md): 3-D convolution and pooling, ConvTranspose.
UNSUPPORTED = {"test_AvgPool3d", "test_AvgPool3d_stride", "test_AvgPool3d_stride1_pad0_gpu_input",
               "test_Conv3d", "test_Conv3d_dilated", "test_Conv3d_dilated_strided",
               "test_Conv3d_groups", "test_Conv3d_no_bias", "test_Conv3d_stride",
               "test_Conv3d_stride_padding", "test_MaxPool3d", "test_MaxPool3d_stride",
               "test_MaxPool3d_stride_padding", "test_ConvTranspose2d",
               "test_ConvTranspose2d_no_bias", "test_operator_convtranspose"}


def shipped_models():
    return sorted(glob.glob(os.path.join(DATA, "pytorch-converted", "*"))
                  + glob.glob(os.path.join(DATA, "pytorch-operator", "*")))


def run_shipped_model(folder, imported, library=None):
    outputs, inputs = imported
    data = os.path.join(folder, "test_data_set_0")
    read = lambda pattern: [numpy_helper.to_array(onnx.load_tensor(f))  # noqa: E731
                            for f in sorted(glob.glob(os.path.join(data, pattern)))]
    feeds = {node.name: array for node, array in zip(inputs, read("input_*.pb"))}
    # one cpu compile per model (models whose graphs are identical share the module)
    got = gn.compile(outputs, backend="cpu", library=library, progress=False)(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    expected = read("output_*.pb")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4)  # NaN where PyTorch has NaN


def test_onnx_shipped_test_models():
    """Every supported model is imported, compiled with the cpu back end (library mode
    or one fused function) and run."""
    folders = shipped_models()
    assert len(folders) > 100
    supported, passed, failures, refused = 0, 0, [], set()
    for k, folder in enumerate(folders):
        name = os.path.basename(folder)
        try:
            imported = gn.onnx.load(os.path.join(folder, "model.onnx"))
        except gn.GraphError:
            refused.add(name)
            continue
        supported += 1
        try:
            # three in four run in library mode, whose kernels are shared between models
            # (a cold cache compiles a quarter as much: 20 s against 74 s), the others as
            # one fused function, so both cpu modes import every kind of op in turn
            run_shipped_model(folder, imported, library=k % 4 != 0)
        except Exception as exc:  # collect every failure, report them together
            failures.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            continue
        passed += 1
    print(f"\nonnx shipped test models: {len(folders)}, supported {supported}, passed "
          f"{passed} (all compiled with the cpu backend), unsupported {len(refused)}")
    assert not failures, "\n".join(failures)
    assert refused == UNSUPPORTED
    assert passed == supported == len(folders) - len(UNSUPPORTED)


def test_large_dilated_pool_imports_as_a_small_graph():
    """A 60x80 MaxPool window with dilation 10 is a few dozen nodes (doubling maxima along
    each axis), not one strided tap per window element, so it compiles in seconds."""
    folder = os.path.join(DATA, "pytorch-converted", "test_MaxPool2d_stride_padding_dilation")
    outputs, _ = gn.onnx.load(os.path.join(folder, "model.onnx"))
    assert len(gn.Graph(outputs).nodes) < 100


def pool_reference(x, kind, kernel, strides, dilations, pads, ceil):
    """MaxPool / AveragePool (count_include_pad=0) of NCHW `x`, window by window: the taps
    that fall inside the image, as PyTorch and the ONNX spec define them."""
    size = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    out = []
    for i, n in enumerate(x.shape[2:]):
        span = n + pads[i] + pads[i + 2] - size[i]
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        out.append(o - 1 if ceil and (o - 1) * strides[i] >= n + pads[i] else o)
    y = np.zeros(x.shape[:2] + tuple(out), x.dtype)
    for r in range(out[0]):
        for c in range(out[1]):
            rows = [r * strides[0] - pads[0] + i * dilations[0] for i in range(kernel[0])]
            cols = [c * strides[1] - pads[1] + j * dilations[1] for j in range(kernel[1])]
            window = x[:, :, [t for t in rows if 0 <= t < x.shape[2]]][
                :, :, :, [t for t in cols if 0 <= t < x.shape[3]]]
            y[:, :, r, c] = window.max(axis=(2, 3)) if kind == "max" else \
                window.mean(axis=(2, 3))
    return y


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel,strides,dilations,pads,ceil", [
    ((3, 5), (2, 1), (1, 1), (0, 1, 2, 1), 0), ((7, 1), (3, 3), (1, 1), (3, 0, 3, 0), 1),
    ((6, 4), (4, 3), (2, 3), (1, 2, 0, 3), 0), ((5, 5), (1, 2), (3, 1), (0, 0, 0, 0), 1),
    ((13, 2), (2, 1), (1, 1), (6, 0, 6, 1), 0)])
def test_windowed_pools_match_a_direct_computation(kind, kernel, strides, dilations, pads,
                                                    ceil):
    """Windows graphnn's square pools do not cover (rectangular, dilated, unequal strides)
    are reduced along each axis in turn; checked against a window-by-window loop."""
    dilations = dilations if kind == "max" else (1, 1)  # AveragePool has no dilations
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil)
    if kind == "max":
        attrs["dilations"] = dilations
    graph = helper.make_graph(
        [helper.make_node("MaxPool" if kind == "max" else "AveragePool", ["x"], ["y"],
                          **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 23, 19])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((2, 3, 23, 19)).astype(np.float32)
    outputs, _ = gn.onnx.load(model)
    got = gn.compile(outputs[0], backend="numpy")(x=x)
    np.testing.assert_allclose(got, pool_reference(x, kind, kernel, strides, dilations, pads,
                                                   ceil), rtol=1e-5, atol=1e-6)


# ---- command line ---------------------------------------------------------------------------

def test_cli_export_render_and_run(tmp_path, capsys):
    source = tmp_path / "model.py"
    source.write_text("import numpy as np, graphnn as gn\n"
                      "x = gn.input('x', (None, 3))\n"
                      "W = gn.param('W', np.arange(6, dtype=np.float32).reshape(3, 2))\n"
                      "outputs = gn.relu(x @ W - 4, name='y')\n")
    onnx_path = tmp_path / "model.onnx"
    assert graphnn_main(["export", str(source), "-o", str(onnx_path)]) == 0
    onnx.checker.check_model(onnx.load(onnx_path))
    np.save(tmp_path / "x.npy", np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    capsys.readouterr()
    assert graphnn_main(["run", str(onnx_path), "--input", f"x={tmp_path / 'x.npy'}",
                         "--backend", "numpy", "--save", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("y (2, 2) float32")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), [[0, 2], [0, 0]])
    picture = tmp_path / "model.dot"
    assert graphnn_main(["render", str(onnx_path), "-o", str(picture)]) == 0
    assert "matmul" in picture.read_text()


def test_export_names_values_alike_in_linear_time():
    # (a long sequence exports thousands of constants named "const": each name probed
    # const_1, const_2, ... from the start, 4 s for an LSTM over 500 steps)
    from graphnn.onnx.exporter import _Exporter

    class Counting(set):
        asked = 0

        def __contains__(self, name):
            Counting.asked += 1
            return super().__contains__(name)
    ex = _Exporter(gn.Graph(gn.input("x", (2,)) * 2.0), opset=17)
    ex.used = Counting({"c_2"})  # (taken by another base)
    names = [ex.fresh("c") for _ in range(2000)]
    assert names[:4] == ["c", "c_1", "c_3", "c_4"]  # (the first free, as before)
    assert len(set(names)) == 2000 and "c_2" not in names
    assert Counting.asked < 3 * 2000


def test_a_long_lstm_exports_and_comes_back_with_the_same_outputs(tmp_path):
    x = gn.input("x", (None, 300, 3))
    out = gn.nn.Dense(1, seed=1)(gn.nn.LSTM(4, seed=2)(x))
    path = str(tmp_path / "lstm.onnx")
    gn.onnx.export(out, path)
    (back,), _ = gn.onnx.load(path)[:2]
    feeds = {"x": np.random.default_rng(3).random((2, 300, 3)).astype(np.float32)}
    expected = gn.compile(out, backend="numpy")(**feeds)
    got = gn.compile(back, backend="numpy")(**{gn.Graph(back).inputs[0].name: feeds["x"]})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
