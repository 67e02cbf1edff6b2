"""The catalogue of user mistakes: each case is a short program whose last line is the
mistake. The test runs it (as the file "example.py") and checks that it raises the listed
gn.GraphError subclass with a message naming the node or input and example.py:<that line>.
docs/ERRORS.md is generated from these cases, so its messages are exactly what graphnn says:

    .venv/bin/python tests/graphnn/test_error_catalogue.py     # rewrites docs/ERRORS.md

Many cases are examined in more detail in test_errors.py, test_serialize.py and
test_reliability.py.
"""
import os
import sys
import textwrap

import numpy as np
import pytest

import graphnn as gn
from graphnn.api import declared_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "ERRORS.md")

# (section, title, program, error type, words the message must contain)
CASES = [
    ("Shapes (found when the node is declared)", "elementwise shapes that do not broadcast", """
        x = gn.input("x", (None, 3))
        b = gn.input("b", (4,))
        y = x + b
     """, gn.ShapeError, ["'x'", "'b'"]),
    (None, "matmul inner dims differ", """
        x = gn.input("x", (None, 3))
        W = gn.param("W", shape=(4, 2), seed=0)
        y = x @ W
     """, gn.ShapeError, ["'x'", "'W'"]),
    (None, "matmul batch dims that do not broadcast", """
        a = gn.input("a", (2, 3, 4))
        b = gn.input("b", (3, 4, 5))
        y = a @ b
     """, gn.ShapeError, ["'a'", "'b'", "(2, 3, 4) @ (3, 4, 5)"]),
    (None, "convolution channels differ", """
        img = gn.input("img", (None, 8, 8, 3))
        K = gn.param("K", shape=(3, 3, 1, 4), seed=0)
        y = gn.conv2d(img, K)
     """, gn.ShapeError, ["'img'", "'K'"]),
    (None, "convolution kernel larger than the image", """
        img = gn.input("img", (None, 2, 2, 1))
        K = gn.param("K", shape=(3, 3, 1, 4), seed=0)
        y = gn.conv2d(img, K)
     """, gn.ShapeError, ["'img'", "'K'"]),
    (None, "unknown convolution padding", """
        img = gn.input("img", (None, 8, 8, 1))
        K = gn.param("K", shape=(3, 3, 1, 4), seed=0)
        y = gn.conv2d(img, K, padding="full")
     """, gn.ShapeError, ["'img'", "full"]),
    (None, "pooling window larger than the input", """
        img = gn.input("img", (None, 2, 2, 1))
        y = gn.max_pool2d(img, size=3)
     """, gn.ShapeError, ["'img'"]),
    (None, "reshape to another number of elements", """
        x = gn.input("x", (2, 6))
        y = gn.reshape(x, (5, 2))
     """, gn.ShapeError, ["'x'"]),
    (None, "concat of shapes that differ off the axis", """
        a = gn.input("a", (2, 3))
        b = gn.input("b", (2, 4))
        y = gn.concat([a, b], axis=0)
     """, gn.ShapeError, ["'a'", "'b'"]),
    (None, "reduction over an axis that does not exist", """
        x = gn.input("x", (2, 3))
        y = gn.sum(x, axis=2)
     """, gn.ShapeError, ["'x'"]),
    (None, "loss of predictions and targets of different shapes", """
        pred = gn.input("pred", (None, 3))
        target = gn.input("target", (None, 2))
        loss = gn.mse(pred, target)
     """, gn.ShapeError, ["'pred'", "'target'"]),
    (None, "class labels of the wrong shape", """
        logits = gn.input("logits", (None, 10))
        labels = gn.input("labels", (None, 3), dtype="int64")
        loss = gn.softmax_cross_entropy(logits, labels)
     """, gn.ShapeError, ["'logits'", "'labels'"]),
    ("Dtypes", "integers into an op that needs floats", """
        n = gn.input("n", (3,), dtype="int64")
        y = gn.exp(n)
     """, gn.DTypeError, ["'n'"]),
    (None, "integer division", """
        a = gn.input("a", (3,), dtype="int64")
        b = gn.input("b", (3,), dtype="int64")
        y = a / b
     """, gn.DTypeError, ["'a'", "'b'"]),
    (None, "a bool input", """
        mask = gn.input("mask", (3,), dtype=bool)
     """, gn.DTypeError, ["'mask'"]),
    (None, "a bool parameter", """
        w = gn.param("w", np.array([True, False]))
     """, gn.DTypeError, ["'w'"]),
    (None, "strings in a graph", """
        x = gn.input("x", (2,))
        y = x + np.array(["a", "b"])
     """, gn.DTypeError, ["add"]),
    (None, "a complex input", """
        z = gn.input("z", (3,), dtype="complex64")
     """, gn.DTypeError, ["'z'"]),
    ("Declarations and graphs", "an unknown initializer", """
        W = gn.param("W", shape=(2, 2), init="glorot_uniformm")
     """, gn.GraphError, ["'glorot_uniformm'"]),
    (None, "a parameter with neither value nor shape", """
        W = gn.param("W")
     """, gn.GraphError, ["'W'"]),
    (None, "an input without a name", """
        x = gn.input("", (3,))
     """, gn.GraphError, ["gn.input"]),
    (None, "a negative dim", """
        x = gn.input("x", (None, -3))
     """, gn.ShapeError, ["'x'"]),
    (None, "two inputs with the same name in one graph", """
        x_train = gn.input("x", (None, 2))
        x_test = gn.input("x", (None, 2))
        f = gn.compile(gn.sum(x_train) + gn.sum(x_test), backend="numpy")
     """, gn.GraphError, ["'x'", "example.py:2", "example.py:3"]),
    (None, "two parameters with the same name in one graph", """
        W1 = gn.param("W", shape=(2, 2), seed=0)
        W2 = gn.param("W", shape=(2, 2), seed=1)
        f = gn.compile(gn.sum(W1 @ W2), backend="numpy")
     """, gn.GraphError, ["'W'", "example.py:2", "example.py:3"]),
    (None, "a graph with no outputs", """
        f = gn.compile([], backend="numpy")
     """, gn.GraphError, ["compile"]),
    (None, "an output that is not a node", """
        x = gn.input("x", (2,))
        f = gn.compile([x * 2, np.ones(2)], backend="numpy")
     """, gn.GraphError, ["outputs[1]"]),
    (None, "an unknown backend", """
        x = gn.input("x", (2,))
        f = gn.compile(x * 2, backend="tpu")
     """, gn.BackendError, ["'tpu'"]),
    (None, "the gradient of a non-scalar", """
        x = gn.input("x", (None, 2))
        W = gn.param("W", shape=(2, 2), seed=0)
        gW = gn.grad(x @ W, W)
     """, gn.GradError, ["matmul"]),
    (None, "the gradient with respect to integers", """
        n = gn.input("n", (3,), dtype="int64")
        w = gn.param("w", np.ones(3, np.float32))
        g = gn.grad(gn.sum(n * w), n)
     """, gn.GradError, ["'n'"]),
    ("Parameter updates", "an update to something that is not a parameter", """
        x = gn.input("x", (3,))
        w = gn.param("w", np.ones(3, np.float32))
        f = gn.compile(gn.sum(x * w), updates={x: x * 2}, backend="numpy")
     """, gn.GraphError, ["'x'"]),
    (None, "an update value of the wrong shape", """
        w = gn.param("w", np.ones(3, np.float32))
        f = gn.compile(gn.sum(w), updates={w: gn.sum(w)}, backend="numpy")
     """, gn.GraphError, ["'w'"]),
    (None, "an update value of the wrong dtype", """
        w = gn.param("w", np.ones(3, np.float32))
        f = gn.compile(gn.sum(w), updates={w: gn.cast(w, "float64")}, backend="numpy")
     """, gn.GraphError, ["'w'"]),
    (None, "an update value that is not a node", """
        w = gn.param("w", np.ones(3, np.float32))
        f = gn.compile(gn.sum(w), updates={w: np.zeros(3)}, backend="numpy")
     """, gn.GraphError, ["'w'"]),
    (None, "a parameter replaced by an array of another shape", """
        W = gn.param("W", np.ones((3, 2), np.float32))
        f = gn.compile(gn.sum(W), backend="cpu")
        W.value = np.ones((2, 3), np.float32)
     """, gn.ShapeError, ["'W'"]),
    ("Feeds (checked when the compiled function is called, before anything runs)",
     "a missing feed", """
        x = gn.input("x", (None, 3))
        y = gn.input("y", (None,), dtype="int64")
        W = gn.param("W", np.ones((3, 2), np.float32))
        f = gn.compile(gn.softmax_cross_entropy(x @ W, y), backend="cpu")
        f(x=np.ones((4, 3)))
     """, gn.FeedError, ["'y'"]),
    (None, "a missing feed, and a feed named like another graph's input", """
        x = gn.input("x", (None, 3))
        y = gn.input("y", (None,), dtype="int64")
        labels = gn.input("labels", (None,), dtype="int64")
        W = gn.param("W", np.ones((3, 2), np.float32))
        f = gn.compile(gn.softmax_cross_entropy(x @ W, y), backend="cpu")
        f(x=np.ones((4, 3)), labels=np.zeros(4, np.int64))
     """, gn.FeedError, ["'y'", "fed also 'labels'"]),
    (None, "an extra feed that no input has", """
        x = gn.input("x", (None, 3))
        f = gn.compile(x * 2, backend="cpu")
        f(x=np.ones((4, 3)), labels=np.zeros(4))
     """, gn.FeedError, ["'labels'"]),
    (None, "feeding a parameter (not an input)", """
        x = gn.input("x", (None, 3))
        W = gn.param("W", np.ones((3, 2), np.float32))
        f = gn.compile(x @ W, backend="cpu")
        f(x=np.ones((4, 3)), W=np.zeros((3, 2)))
     """, gn.FeedError, ["'W'"]),
    (None, "a feed of the wrong rank", """
        x = gn.input("x", (None, 3))
        f = gn.compile(x * 2, backend="cpu")
        f(x=np.ones(3))
     """, gn.FeedError, ["'x'"]),
    (None, "a feed of the wrong size", """
        x = gn.input("x", (None, 3))
        f = gn.compile(x * 2, backend="cpu")
        f(x=np.ones((4, 5)))
     """, gn.FeedError, ["'x'"]),
    (None, "batch sizes that disagree between inputs", """
        x = gn.input("x", (None, 3))
        t = gn.input("t", (None, 3))
        f = gn.compile(gn.mse(x, t), backend="cpu")
        f(x=np.ones((32, 3)), t=np.ones((31, 3)))
     """, gn.FeedError, ["'t'", "'x'"]),
    (None, "an empty batch", """
        x = gn.input("x", (None, 3))
        f = gn.compile(gn.mean(x), backend="cpu")
        f(x=np.ones((0, 3)))
     """, gn.FeedError, ["'x'"]),
    (None, "a label outside the classes of a softmax cross-entropy", """
        x = gn.input("x", (None, 3))
        y = gn.input("y", (None,), dtype="int64")
        f = gn.compile(gn.softmax_cross_entropy(x, y), backend="cpu")
        f(x=np.ones((2, 3)), y=np.array([0, 3]))
     """, gn.FeedError, ["'y'", "[0, 3)"]),
    (None, "float labels into an integer input", """
        y = gn.input("y", (None,), dtype="int64")
        f = gn.compile(y * 2, backend="cpu")
        f(y=np.array([0.0, 1.0]))
     """, gn.FeedError, ["'y'"]),
    (None, "strings as a feed", """
        x = gn.input("x", (None, 3))
        f = gn.compile(x * 2, backend="cpu")
        f(x=np.array([["a", "b", "c"]]))
     """, gn.FeedError, ["'x'"]),
    (None, "a ragged list as a feed", """
        x = gn.input("x", (None, 2))
        f = gn.compile(x * 2, backend="cpu")
        f(x=[[1.0, 2.0], [3.0]])
     """, gn.FeedError, ["'x'"]),
    ("NaN and Inf (with check_finite=True)", "NaN in a feed", """
        x = gn.input("x", (None, 2))
        f = gn.compile(gn.exp(x), backend="cpu", check_finite=True)
        f(x=np.array([[1.0, np.nan]]))
     """, gn.FeedError, ["'x'", "nan"]),
    (None, "the log of a negative number", """
        x = gn.input("x", (None, 2))
        y = gn.log(x, name="log_x")
        f = gn.compile(gn.sum(y), backend="cpu", check_finite=True)
        f(x=np.array([[1.0, -1.0]]))
     """, gn.NumericalError, ["'log_x'", "made at example.py:2"]),
    (None, "a training step that diverges", """
        x = gn.input("x", (None, 2))
        t = gn.input("t", (None, 1))
        W = gn.param("W", np.ones((2, 1), np.float32))
        loss = gn.mse(x @ W, t, name="loss")
        step = gn.compile(loss, updates=gn.optim.SGD(lr=1e3).updates(loss, [W]),
                          backend="cpu", check_finite=True)
        for _ in range(50): step(x=np.full((2, 2), 3.0), t=np.ones((2, 1)))
     """, gn.NumericalError, ["'loss'", "made at example.py:4"]),
    ("Saved graphs", "loading a file that is not there", """
        g = gn.load("no-such-model.json")
     """, gn.GraphError, ["'no-such-model.json'"]),
    ("Attributes and arguments", "an axis that is not an int", """
        x = gn.input("x", (None, 3))
        y = gn.sum(x, axis=1.0)
     """, gn.ShapeError, ["'x'", "axis must be"]),
    (None, "a fractional convolution stride", """
        img = gn.input("img", (None, 8, 8, 1))
        K = gn.param("K", shape=(3, 3, 1, 4), seed=0)
        y = gn.conv2d(img, K, stride=1.5)
     """, gn.ShapeError, ["'img'", "stride must be an int"]),
    (None, "an activation parameter that is not a number", """
        x = gn.input("x", (None, 3))
        y = gn.elu(x, None)
     """, gn.ShapeError, ["'x'", "alpha must be a number"]),
    (None, "a cast to a dtype graphnn does not compute in", """
        x = gn.input("x", (None, 3))
        y = gn.cast(x, "float16")
     """, gn.DTypeError, ["gn.cast", "float16"]),
    (None, "a number too large for the integers it meets", """
        n = gn.input("n", (None,), dtype="int32")
        y = n * 2**40
     """, gn.DTypeError, ["int32"]),
    (None, "a parameter value that is not numbers", """
        W = gn.param("W", shape=(2, 2), seed=0)
        W.value = np.array([["1", "2"], ["3", "4"]])
     """, gn.DTypeError, ["'W'"]),
    (None, "a seed that is not an int", """
        W = gn.param("W", shape=(2, 2), seed="abc")
     """, gn.OptionError, ["seed"]),
    (None, "a learning rate that is not a number", """
        W = gn.param("W", shape=(2, 1), seed=0)
        loss = gn.sum(W * W)
        updates = gn.optim.SGD(lr="0.1").updates(loss, [W])
     """, gn.OptionError, ["lr"]),
    (None, "parameters given as one node instead of a list", """
        W = gn.param("W", shape=(2, 1), seed=0)
        loss = gn.sum(W * W)
        updates = gn.optim.Adam().updates(loss, W)
     """, gn.OptionError, ["'W'", "[W]"]),
    (None, "a batch size of 0", """
        x = gn.input("x", (None, 2))
        f = gn.compile(gn.mean(x), backend="numpy")
        gn.evaluate(f, {"x": np.ones((4, 2), np.float32)}, batch_size=0)
     """, gn.OptionError, ["batch_size"]),
    (None, "a label beyond the range of an int32 input", """
        z = gn.input("z", (None, 3))
        y = gn.input("y", (None,), dtype="int32")
        f = gn.compile(gn.softmax_cross_entropy(z, y), backend="numpy")
        f(z=np.zeros((1, 3), np.float32), y=np.array([2**32]))
     """, gn.FeedError, ["'y'", "outside the range of int32"]),
    ("ONNX import (needs the onnx package)", "an ONNX file that is not there", """
        outputs, inputs = gn.onnx.load("no-such-model.onnx")
     """, gn.GraphError, ["no-such-model.onnx", "no such file"]),
    (None, "an ONNX Conv with strides 0", """
        from onnx import helper as h, numpy_helper
        w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
        conv = h.make_node("Conv", ["x", "w"], ["y"], strides=[0, 0], name="conv0")
        x, y = (h.make_tensor_value_info(n, 1, s) for n, s in [("x", [1, 2, 5, 5]), ("y", None)])
        graph = h.make_graph([conv], "m", [x], [y], [w])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
        outputs, inputs = gn.onnx.load(model)
     """, gn.GraphError, ["Conv node 'conv0'", "strides=[0, 0]"]),
    (None, "an ONNX graph with a cycle", """
        from onnx import helper as h
        nodes = [h.make_node("Relu", ["b"], ["a"], name="first"),
                 h.make_node("Relu", ["a"], ["b"])]
        x, b = (h.make_tensor_value_info(n, 1, s) for n, s in [("x", [2, 3]), ("b", None)])
        model = h.make_model(h.make_graph(nodes, "m", [x], [b]),
                             opset_imports=[h.make_opsetid("", 17)])
        outputs, inputs = gn.onnx.load(model)
     """, gn.GraphError, ["Relu node 'first'", "'b'", "later node"]),
    (None, "an ONNX Reshape copying dims the input does not have", """
        from onnx import helper as h, numpy_helper
        shape = numpy_helper.from_array(np.array([0, 0, 0]), "shape")
        node = h.make_node("Reshape", ["x", "shape"], ["y"])
        x, y = (h.make_tensor_value_info(n, 1, s) for n, s in [("x", [2, 3]), ("y", None)])
        graph = h.make_graph([node], "m", [x], [y], [shape])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
        outputs, inputs = gn.onnx.load(model)
     """, gn.GraphError, ["Reshape node 'y'", "(0, 0, 0)"]),
    (None, "an ONNX Tile larger than the importer's limit", """
        from onnx import helper as h, numpy_helper
        repeats = numpy_helper.from_array(np.array([10**6, 10**6]), "repeats")
        node = h.make_node("Tile", ["x", "repeats"], ["y"])
        x, y = (h.make_tensor_value_info(n, 1, s) for n, s in [("x", [2, 3]), ("y", None)])
        graph = h.make_graph([node], "m", [x], [y], [repeats])
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
        outputs, inputs = gn.onnx.load(model)
     """, gn.GraphError, ["Tile node 'y'", "268435456"]),
    ("Repeated blocks (gn.repeat)", "a block that does not return a graph node", """
        x = gn.input("x", (None, 4))
        W = gn.param("W", shape=(3, 4, 4), seed=0)
        h = gn.repeat(lambda h, w: [h @ w], 3, x, W)
     """, gn.GraphError, ["returned list", "'x' (?, 4)"]),
    (None, "stacked weights for another number of repeats", """
        x = gn.input("x", (None, 4))
        W = gn.param("W", shape=(3, 4, 4), seed=0)
        h = gn.repeat(lambda h, w: gn.tanh(h @ w), 10, x, W)
     """, gn.ShapeError, ["'W'", "first dim must be 10"]),
    (None, "a block whose result is not its next carry", """
        x = gn.input("x", (None, 4))
        W = gn.param("W", shape=(3, 4, 2), seed=0)
        h = gn.repeat(lambda h, w: gn.tanh(h @ w), 3, x, W)
     """, gn.ShapeError, ["(?, 2)", "carry 'x' (?, 4)"]),
    ("Embedding ids (checked with the feeds)", "an embedding id outside the table", """
        ids = gn.input("ids", (None,), dtype="int64")
        f = gn.compile(gn.nn.Embedding(10, 4)(ids), backend="cpu")
        f(ids=np.array([3, 10]))
     """, gn.FeedError, ["'ids'", "[0, 10)"]),
]


def _program(code):
    return textwrap.dedent(code).strip("\n")


def run_case(code):
    """Run a catalogue program as example.py, as the only program of its process: inputs
    that earlier tests declared (and that garbage collection has not yet removed from
    graphnn's registry) are hidden from it. Returns the exception it raised (or None)."""
    namespace = {"np": np, "gn": gn}
    earlier = dict(declared_inputs.items())  # (items: skips entries dying meanwhile)
    declared_inputs.clear()
    try:
        exec(compile(_program(code), "example.py", "exec"), namespace)
    except gn.GraphError as exc:
        return exc
    finally:
        declared_inputs.update(earlier)
    return None


def test_the_catalogue_has_at_least_30_distinct_mistakes():
    titles = [case[1] for case in CASES]
    assert len(set(titles)) == len(titles) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case[1] for case in CASES])
def test_each_mistake_raises_its_error_naming_the_node_and_the_line(case):
    _, title, code, error, words = case
    if "onnx" in code:
        pytest.importorskip("onnx")
    exc = run_case(code)
    assert exc is not None, f"{title}: no error"
    assert type(exc) is error, f"{title}: {type(exc).__name__}: {exc}"
    message = str(exc)
    last_line = len(_program(code).splitlines())
    assert f"example.py:{last_line}" in message, message
    for word in words:
        assert word in message, message


def render():
    """docs/ERRORS.md, from running every case."""
    out = ["# Errors graphnn raises for mistakes",
           "",
           "Every error graphnn raises for a mistake in a graph, a feed or an option is a "
           "subclass of `gn.GraphError`:",
           "",
           "| class | also a | raised for |",
           "|---|---|---|"]
    for cls in (gn.GraphError, gn.ShapeError, gn.DTypeError, gn.FeedError, gn.GradError,
                gn.NumericalError, gn.OptionError, gn.BackendError):
        bases = ", ".join(b.__name__ for b in cls.__bases__ if b is not gn.GraphError)
        doc = cls.__doc__.strip().splitlines()[0]
        out.append(f"| `gn.{cls.__name__}` | {bases or '-'} | {doc} |")
    out += ["",
            "Each message names the node or input (its name, shape and the file:line where it "
            "was made) and the line of the user's code that made the mistake. Below, each "
            "example is a program saved as `example.py` after "
            "`import numpy as np, graphnn as gn`; its last line is the "
            "mistake, and the message shown is exactly what graphnn prints (generated by "
            "`tests/graphnn/test_error_catalogue.py`, which also checks every case).",
            ""]
    number = 0
    for section, title, code, error, _ in CASES:
        if section:
            out += [f"## {section}", ""]
        number += 1
        exc = run_case(code)
        out += [f"### {number}. {title[0].upper() + title[1:]}", "",
                "```python", _program(code), "```", "",
                f"`gn.{type(exc).__name__}`:", "", "```", str(exc), "```", ""]
    return "\n".join(out)


def test_errors_doc_is_up_to_date():
    with open(DOC, encoding="utf-8") as fh:
        assert fh.read() == render(), ("docs/ERRORS.md is out of date: run "
                                       ".venv/bin/python tests/graphnn/test_error_catalogue.py")


if __name__ == "__main__":
    text = render()
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {DOC} ({len(CASES)} cases)", file=sys.stderr)
