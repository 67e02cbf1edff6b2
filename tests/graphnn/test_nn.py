"""Layers (`gn.nn`): shapes, parameters, names, seeds, values, and the RNN's shared weights."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.nn import (AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, Sequential, SimpleRNN)

rng = np.random.default_rng(0)


def run(node, **feeds):
    return gn.compile(node, backend="numpy")(**feeds)


def test_dense_shapes_params_and_values():
    x = gn.input("x", (None, 5))
    layer = Dense(3, "relu")
    h = layer(x)
    assert h.shape == (None, 3)
    assert [(p.name, p.shape) for p in layer.params] == [("dense1/W", (5, 3)),
                                                         ("dense1/b", (3,))]
    assert np.all(layer.b.value == 0)
    limit = np.sqrt(6 / (5 + 3))  # glorot_uniform
    assert np.abs(layer.W.value).max() <= limit and layer.W.value.std() > 0
    X = rng.standard_normal((4, 5)).astype(np.float32)
    layer.b.value = np.array([0.5, -0.5, 0.0], np.float32)
    np.testing.assert_allclose(run(h, x=X), np.maximum(X @ layer.W.value + layer.b.value, 0),
                               rtol=1e-6)


def test_dense_without_bias_and_with_a_function_activation():
    x = gn.input("x", (None, 2))
    layer = Dense(4, activation=lambda z: z * 2, use_bias=False, init="ones")
    y = layer(x)
    assert [p.name for p in layer.params] == ["dense1/W"]
    np.testing.assert_allclose(run(y, x=np.ones((1, 2), np.float32)), np.full((1, 4), 4.0))


def test_functional_layers_get_unique_names_along_the_chain():
    x = gn.input("x", (None, 4))
    first, second, third = Dense(8), Dense(8), Dense(2, name="head")
    third(second(first(x)))
    assert (first.name, second.name, third.name) == ("dense1", "dense2", "head")
    assert third.params[0].name == "head/W"


def test_side_by_side_unnamed_layers_collide_at_compile_time():
    x = gn.input("x", (None, 4))
    left, right = Dense(2)(x), Dense(2)(x)
    with pytest.raises(gn.GraphError, match="dense1/W"):
        gn.compile(left + right, backend="numpy")


def test_same_names_give_same_initial_weights_and_seed_changes_them():
    a, b, c = Dense(3), Dense(3), Dense(3, seed=7)
    for layer in (a, b, c):
        layer(gn.input("x", (None, 6)))
    np.testing.assert_array_equal(a.W.value, b.W.value)
    assert not np.allclose(a.W.value, c.W.value)


def test_parameters_take_the_input_float_dtype():
    layer = Dense(2)
    layer(gn.input("x", (None, 3), dtype="float64"))
    assert all(p.dtype == np.float64 for p in layer.params)


def test_layer_errors():
    with pytest.raises(gn.GraphError, match="unknown activation 'relux'"):
        Dense(3, "relux")
    with pytest.raises(gn.GraphError, match="call it on an input first"):
        Dense(3).params
    with pytest.raises(gn.GraphError, match="called on graph nodes"):
        Dense(3)("x")  # (on an array a layer computes eagerly: tests/graphnn/test_eager.py)
    with pytest.raises(gn.ShapeError, match=r"expects \(batch, features\)"):
        Dense(3)(gn.input("img", (None, 8, 8, 1)))
    with pytest.raises(gn.ShapeError, match="needs a known size on axis 1"):
        Dense(3)(gn.input("v", (None, None)))
    with pytest.raises(gn.GraphError, match="kernel_size"):
        Conv2D(4, (3, 3, 3))


def test_calling_a_layer_twice_shares_its_weights():
    layer = Dense(3)
    x1, x2 = gn.input("a", (None, 2)), gn.input("b", (None, 2))
    y = gn.sum(layer(x1)) + gn.sum(layer(x2))
    assert len(gn.Graph(y).params) == 2
    assert len(layer.params) == 2


@pytest.mark.parametrize("padding,strides,expected", [("same", 1, (None, 8, 8, 4)),
                                                      ("valid", 1, (None, 6, 6, 4)),
                                                      ("same", 2, (None, 4, 4, 4))])
def test_conv2d_shapes_params_and_values(padding, strides, expected):
    x = gn.input("x", (None, 8, 8, 2))
    layer = Conv2D(4, 3, strides=strides, padding=padding, activation="tanh")
    y = layer(x)
    assert y.shape == expected
    assert [(p.name, p.shape) for p in layer.params] == [("conv2d1/W", (3, 3, 2, 4)),
                                                         ("conv2d1/b", (4,))]
    X = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    layer.b.value = np.arange(4, dtype=np.float32) / 10
    reference = np.tanh(gn.conv2d(X, layer.W.value, stride=strides, padding=padding)
                        + layer.b.value)
    np.testing.assert_allclose(run(y, x=X), reference, rtol=1e-5, atol=1e-6)


def test_conv2d_rectangular_kernel():
    layer = Conv2D(2, (1, 3))
    assert layer(gn.input("x", (None, 5, 5, 3))).shape == (None, 5, 3, 2)
    assert layer.W.shape == (1, 3, 3, 2)


def test_pooling_and_flatten():
    x = gn.input("x", (None, 4, 6, 3))
    X = rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
    pooled_max, pooled_avg = MaxPool2D(2)(x), AvgPool2D(2)(x)
    assert pooled_max.shape == pooled_avg.shape == (None, 2, 3, 3)
    windows = X.reshape(2, 2, 2, 3, 2, 3)
    np.testing.assert_allclose(run(pooled_max, x=X), windows.max(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_allclose(run(pooled_avg, x=X), windows.mean(axis=(2, 4)), rtol=1e-6)
    flat = Flatten()(pooled_max)
    assert flat.shape == (None, 18)
    np.testing.assert_allclose(run(flat, x=X), windows.max(axis=(2, 4)).reshape(2, 18))
    layer = MaxPool2D(2)
    layer(x)
    assert layer.params == []


def numpy_rnn(X, Wx, Wy, b):
    y = np.zeros((X.shape[0], Wx.shape[1]))
    states = []
    for t in range(X.shape[1]):
        y = np.tanh(X[:, t] @ Wx + y @ Wy + b)
        states.append(y)
    return np.stack(states, 1)


def test_simple_rnn_shapes_params_and_values():
    x = gn.input("x", (None, 5, 3))
    rnn = SimpleRNN(4)
    last = rnn(x)
    assert last.shape == (None, 4)
    assert [(p.name, p.shape) for p in rnn.params] == [
        ("rnn1/Wx", (3, 4)), ("rnn1/Wy", (4, 4)), ("rnn1/b", (4,))]
    sequences = SimpleRNN(4, return_sequences=True, name="seq")(x)
    assert sequences.shape == (None, 5, 4)
    X = rng.standard_normal((2, 5, 3)).astype(np.float32)
    rnn.b.value = np.full(4, 0.1, np.float32)
    expected = numpy_rnn(X, rnn.Wx.value, rnn.Wy.value, rnn.b.value)
    np.testing.assert_allclose(run(last, x=X), expected[:, -1], rtol=1e-5, atol=1e-6)


def test_simple_rnn_uses_one_set_of_weights_and_accumulates_their_gradients():
    x = gn.input("x", (None, 4, 2), dtype="float64")
    rnn = SimpleRNN(3, return_sequences=True)
    out = rnn(x)
    loss = gn.sum(out * out)
    assert len(gn.Graph(loss).params) == 3  # unrolled 4 steps, still three parameters
    X = rng.standard_normal((2, 4, 2))
    errors = gn.testing.check_grad(loss, rnn.params, {"x": X})
    assert max(errors.values()) < 1e-6, errors
    # dL/dWy sums a contribution from every step after the first: not just the last one
    gWy = gn.compile(gn.grad(loss, rnn.Wy), backend="numpy")(x=X)
    last_only = gn.grad(gn.sum(gn.slice_axis(out, 1, 3, 4) ** 2), rnn.Wy)
    assert not np.allclose(gWy, gn.compile(last_only, backend="numpy")(x=X))


def test_sequential_params_summary_and_reuse():
    x = gn.input("x", (None, 8, 8, 1))
    model = Sequential([Conv2D(4, 3, padding="same", activation="relu"), MaxPool2D(2),
                        Flatten(), Dense(10)])
    logits = model(x)
    assert logits.shape == (None, 10)
    assert [p.name for p in model.params] == ["conv2d1/W", "conv2d1/b", "dense1/W", "dense1/b"]
    table = model.summary()
    assert "conv2d1 (Conv2D)" in table and "(?, 4, 4, 4)" in table
    assert "maxpool1 (MaxPool2D)" in table and "flatten1 (Flatten)" in table
    assert table.splitlines()[-1].split()[-1] == str(3 * 3 * 4 + 4 + 64 * 10 + 10)
    again = model(gn.input("x2", (None, 8, 8, 1)))
    assert len(gn.Graph([logits, again]).params) == 4


def test_sequential_refuses_non_layers_and_summary_before_call():
    with pytest.raises(gn.GraphError, match="Sequential takes layers"):
        Sequential([Dense(3), gn.relu])
    with pytest.raises(gn.GraphError, match="call the model on an input first"):
        Sequential([Dense(3)]).summary()
