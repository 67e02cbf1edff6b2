"""gn.Graph (order, leaves, lint, summary), node sharing, symbolic dims and Node attributes."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.node import Node
from helpers import location


def softmax_classifier():
    x = gn.input("x", (None, 784))
    y = gn.input("y", (None,), dtype="int64")
    W = gn.param("W", shape=(784, 10), init="glorot_uniform", seed=0)
    b = gn.param("b", np.zeros(10, np.float32))
    logits = x @ W + b
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    return x, y, W, b, logits, loss


# ---------------------------------------------------------------------------------------
# Graph: nodes in topological order, leaves, outputs
# ---------------------------------------------------------------------------------------

def test_nodes_are_in_topological_order_following_the_expression():
    x, y, W, b, logits, loss = softmax_classifier()
    graph = gn.Graph(loss)
    assert [n.op for n in graph.nodes] == ["input", "param", "matmul", "param", "add", "input",
                                           "softmax_cross_entropy"]
    assert graph.nodes == [x, W, logits.inputs[0], b, logits, y, loss]
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        assert all(position[id(i)] < position[id(node)] for i in node.inputs)
    assert len(graph) == 7


def test_inputs_params_outputs():
    x, y, W, b, logits, loss = softmax_classifier()
    graph = gn.Graph([loss, logits])
    assert graph.inputs == [x, y]
    assert graph.params == [W, b]
    assert graph.outputs == [loss, logits]
    assert not graph.single and gn.Graph(loss).single
    assert gn.Graph(graph).outputs == [loss, logits]


def test_graph_holds_only_what_the_outputs_reach():
    x, y, W, b, logits, loss = softmax_classifier()
    unused = gn.input("unused", (3,))
    gn.exp(unused)
    graph = gn.Graph(logits)
    assert y not in graph.inputs and unused not in graph.nodes
    assert [n.op for n in graph.nodes] == ["input", "param", "matmul", "param", "add"]


def test_shared_subexpression_appears_once():
    x = gn.input("x", (2,))
    e = gn.exp(x)
    graph = gn.Graph([e + e, e * 3, e])
    assert sum(1 for n in graph.nodes if n.op == "exp") == 1
    assert [n.op for n in graph.nodes] == ["input", "exp", "add", "const", "mul"]


def test_graph_repr():
    x = gn.input("x", (2,))
    assert repr(gn.Graph([gn.exp(x, name="ex"), x * 2])) == "<Graph 4 nodes, outputs ['ex', 'mul']>"


# ---------------------------------------------------------------------------------------
# lint
# ---------------------------------------------------------------------------------------

def test_lint_passes_on_real_graphs():
    *_, W, b, logits, loss = softmax_classifier()
    graph = gn.Graph(loss)
    assert graph.lint() is graph
    gn.Graph(gn.grad(loss, [W, b])).lint()
    images = gn.input("images", (None, 8, 8, 1))
    k = gn.param("k", shape=(3, 3, 1, 4), seed=0)
    feature = gn.flatten(gn.max_pool2d(gn.relu(gn.conv2d(images, k, padding="same"))))
    gn.Graph([gn.mean(gn.softmax(feature)), gn.concat([feature, feature], axis=1)]).lint()


def test_lint_catches_a_node_whose_shape_disagrees_with_its_rule():
    a = gn.input("a", (2, 3))
    made = location(1)
    doubled = a * 2
    doubled.sym_shape = (3, 2)  # corrupt the node
    with pytest.raises(gn.GraphError) as err:
        gn.Graph(doubled).lint()
    assert str(err.value) == (f"lint: mul (3, 2) (made at {made}) has shape (3, 2) but its rule "
                              "gives (2, 3)")


def test_lint_catches_a_wrong_dtype():
    a = gn.input("a", (2,))
    node = gn.exp(a)
    node.dtype = np.dtype("float64")
    with pytest.raises(gn.GraphError, match="lint: exp .* has dtype float64, rule gives float32"):
        gn.Graph(node).lint()


def test_lint_catches_a_node_built_around_hash_consing():
    a = gn.input("a", (2,))
    first = gn.exp(a)
    twin = Node("exp", first._attrs, (a,), first.sym_shape, first.dtype)
    assert twin is not first
    with pytest.raises(gn.GraphError, match=r"lint: exp \(2,\) .* duplicates exp \(2,\)"):
        gn.Graph([first, twin]).lint()


def test_lint_catches_an_input_listed_after_its_user():
    a = gn.input("a", (2,))
    node = gn.exp(a)
    graph = gn.Graph(node)
    graph.nodes = graph.nodes[::-1]
    with pytest.raises(gn.GraphError, match=r"lint: exp .* comes before its input 'a'"):
        graph.lint()


def test_lint_catches_a_cycle():
    a = gn.input("a", (2,))
    first = gn.exp(a)
    second = gn.log(first)
    first.inputs = (second,)  # nodes are immutable by convention; force a cycle
    graph = gn.Graph.__new__(gn.Graph)
    graph.nodes = [a, first, second]
    with pytest.raises(gn.GraphError, match="lint: the graph has a cycle"):
        graph.lint()


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------

def test_summary_lists_nodes_ops_shapes_and_parameter_totals():
    *_, loss = softmax_classifier()
    lines = gn.Graph(loss).summary().splitlines()
    assert lines[1].split() == ["#", "node", "op", "shape", "dtype", "params"]
    rows = [line.split() for line in lines[3:10]]
    assert rows == [
        ["0", "x", "input", "(?,", "784)", "float32"],
        ["1", "W", "param", "(784,", "10)", "float32", "7840"],
        ["2", "matmul_2", "matmul", "(?,", "10)", "float32"],
        ["3", "b", "param", "(10,)", "float32", "10"],
        ["4", "add_4", "add", "(?,", "10)", "float32"],
        ["5", "y", "input", "(?,)", "int64"],
        ["6", "loss", "softmax_cross_entropy", "()", "float32"],
    ]
    assert lines[-1] == ("nodes: 7   inputs: 2   parameters: 2 (7,850 values)   "
                         "outputs: loss")
    assert set(lines[0]) == {"-"} and lines[0] == lines[2] == lines[-2]


def test_summary_shows_constants_and_named_dims():
    x = gn.input("x", ("batch_summary", 2))
    graph = gn.Graph(x * 3.0)
    text = graph.summary()
    assert "const 3.0" in text and "(?batch_summary, 2)" in text
    assert graph.param_count() == 0 and "parameters: 0 (0 values)" in text


# ---------------------------------------------------------------------------------------
# Hash-consing: equal expressions are one node; leaves never are
# ---------------------------------------------------------------------------------------

def test_same_expression_twice_is_the_same_node():
    x, w = gn.input("x", (None, 3)), gn.param("w", shape=(3, 2), seed=0)
    assert gn.exp(x) is gn.exp(x)
    assert x @ w is gn.matmul(x, w)
    assert 3 * x is 3 * x
    assert gn.sum(x, axis=1) is gn.sum(x, axis=1)
    assert gn.sum(x, axis=1) is not gn.sum(x, axis=0)
    assert gn.sum(x, axis=1) is not gn.sum(x, axis=1, keepdims=True)
    assert gn.leaky_relu(x, 0.1) is gn.leaky_relu(x, alpha=0.1)
    assert gn.leaky_relu(x, 0.1) is not gn.leaky_relu(x, 0.2)
    assert x + 1.0 is not x + 2.0


def test_equal_constants_are_one_node():
    assert gn.const(3.0) is gn.const(3.0)
    assert gn.const(np.eye(2)) is gn.const(np.eye(2))
    assert gn.const(3.0) is not gn.const(3.0, dtype="float64")
    assert gn.const(3.0).dtype == np.float32 and gn.const(3.0).value == 3.0


def test_lecture_graph_has_one_node_for_3_times_x3():
    x1, x2, x3 = gn.input("x1", ()), gn.input("x2", ()), gn.input("x3", ())
    f1 = 4 * x2 + x2 ** 2 + 3 * x3
    f2 = x1 * x2 + 3 * x3
    assert f1.inputs[1] is f2.inputs[1]
    assert f1.inputs[1].op == "mul" and f1.inputs[1].inputs[1] is x3


def test_inputs_and_params_are_never_shared():
    assert gn.input("x", (3,)) is not gn.input("x", (3,))
    w = np.ones(3, np.float32)
    assert gn.param("w", w) is not gn.param("w", w)
    a, b = gn.input("a", (3,)), gn.input("a", (3,))
    assert gn.exp(a) is not gn.exp(b)


def test_a_name_does_not_change_sharing():
    x = gn.input("x", (2,))
    first = gn.exp(x)
    named = gn.exp(x, name="activation")
    assert named is first and first.name == "activation"


# ---------------------------------------------------------------------------------------
# Symbolic dims
# ---------------------------------------------------------------------------------------

def test_none_makes_a_fresh_symbol_per_input():
    a, b = gn.input("a", (None, 2)), gn.input("b", (None, 2))
    assert a.shape == b.shape == (None, 2)
    assert a.sym_shape[0] is not b.sym_shape[0]
    both = gn.input("c", (None, None))
    assert both.sym_shape[0] is not both.sym_shape[1]


def test_string_dims_are_shared_by_name():
    a = gn.input("a", ("n_graph_test", 4))
    b = gn.input("b", ("n_graph_test",), dtype="int64")
    c = gn.input("c", ("m_graph_test",))
    assert a.sym_shape[0] is b.sym_shape[0]
    assert a.sym_shape[0] is not c.sym_shape[0]
    assert a.shape == (None, 4)


def test_combining_symbols_unifies_them():
    a, b = gn.input("a", (None, 2)), gn.input("b", (None, 2))
    total = a + b
    assert a.sym_shape[0].find() is b.sym_shape[0].find()
    assert total.shape == (None, 2)
    f = gn.compile(total, backend="numpy")
    np.testing.assert_array_equal(f(a=np.ones((3, 2)), b=np.ones((3, 2))), np.full((3, 2), 2.0))


def test_a_symbol_combined_with_a_concrete_dim_becomes_that_dim():
    a = gn.input("a", (None, 2))
    out = a + gn.const(np.ones((5, 2), np.float32))
    assert out.shape == (5, 2) and a.shape == (5, 2)


def test_bad_dims_in_an_input_shape():
    with pytest.raises(gn.ShapeError, match=r"input 'x': negative dimension -1"):
        gn.input("x", (-1, 3))
    with pytest.raises(gn.ShapeError, match=r"input 'x': a dimension must be an int, None or "
                                            r"a name, got 2.5"):
        gn.input("x", (2.5,))


# ---------------------------------------------------------------------------------------
# Node attributes
# ---------------------------------------------------------------------------------------

def test_node_attributes():
    made = location(1)
    x = gn.input("x", (None, 3), dtype="float64")
    w = gn.param("w", np.ones((3, 2)))
    made_h = location(1)
    h = gn.tanh(x @ w, name="hidden")
    assert (x.op, x.name, x.inputs, x.shape, x.dtype) == ("input", "x", (), (None, 3),
                                                          np.dtype("float64"))
    assert x.where == made and x.ndim == 2
    assert w.op == "param" and w.shape == (3, 2) and w.dtype == np.float64
    assert h.op == "tanh" and h.name == "hidden" and h.shape == (None, 2)
    assert h.dtype == np.float64 and isinstance(h.dtype, np.dtype)
    assert h.inputs == (x @ w,) and h.inputs[0].inputs == (x, w)
    assert (x @ w).name is None
    assert gn.sum(h, axis=1, keepdims=True).attrs == {"axis": 1, "keepdims": True}
    assert repr(h) == "<Node tanh 'hidden' (?, 2) float64>"
    assert h.where == made_h and h.label() == f"'hidden' (?, 2) (made at {made_h})"


def test_default_dtypes():
    assert gn.input("x", (2,)).dtype == np.float32
    assert gn.param("w", shape=(2,), seed=0).dtype == np.float32
    assert gn.param("n", np.arange(3)).dtype == np.float32  # int values become float32
    assert gn.input("y", (2,), dtype="int64").dtype == np.int64


def test_param_values():
    w = gn.param("w", shape=(784, 10), init="glorot_uniform", seed=0)
    assert w.value.shape == (784, 10) and w.value.dtype == np.float32
    limit = np.sqrt(6 / (784 + 10))
    assert 0 < np.abs(w.value).max() <= limit
    np.testing.assert_array_equal(w.value, gn.param("w2", shape=(784, 10), seed=0).value)
    source = np.zeros(3, np.float32)
    b = gn.param("b", source)
    source[0] = 1.0
    assert b.value[0] == 0.0  # the parameter holds its own copy
    b.value = np.ones(3)
    assert b.value.dtype == np.float32 and b.value.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(gn.ShapeError, match=r"'b' \(3,\) .*new value has shape \(4,\)"):
        b.value = np.ones(4)


def test_nodes_have_no_truth_value_and_no_indexing():
    x = gn.input("x", (2,))
    with pytest.raises(TypeError, match="no truth value"):
        bool(x)
    with pytest.raises(TypeError, match="indexing a Node is not supported"):
        x[0]


def test_numpy_array_on_the_left_builds_a_node():
    x = gn.input("x", (3,))
    out = np.ones(3, np.float32) + x
    assert isinstance(out, gn.Node) and out.op == "add" and out.inputs[1] is x


def test_import_graphnn_leaves_heavy_optional_libraries_for_later():
    # networkx (lint, to_networkx), numba (compiled back ends) and onnx load on first use
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys, graphnn; print(sorted(m for m in ('networkx', 'numba', 'onnx', "
            "'scipy', 'graphviz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    x = gn.input("x", (None, 2))
    gn.Graph([gn.sum(x * x)]).lint()  # networkx imported when needed
