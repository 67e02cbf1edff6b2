"""gn.eager: one model definition (layers, loss, optimizer) runs compiled or op by op."""
import doctest

import numpy as np
import pytest

import graphnn as gn
from graphnn.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential, SimpleRNN


def test_module_docstring_examples_run():
    result = doctest.testmod(gn.eager, verbose=False)
    assert result.attempted >= 10 and result.failed == 0


def test_value_and_grad_returns_what_its_docstring_says():
    def loss_fn(W, x, t):
        return gn.mse(gn.sigmoid(x @ W), t)
    W0 = np.zeros((2, 1), np.float32)
    X = np.array([[0., 1.], [1., 0.]], np.float32)
    T = np.array([[1.], [0.]], np.float32)
    loss, gW = gn.eager.value_and_grad(loss_fn)(W0, X, T)
    assert gW.shape == W0.shape and loss.shape == ()
    loss2, (gW2, gX) = gn.eager.value_and_grad(loss_fn, argnums=(0, 1))(W0, X, T)
    np.testing.assert_array_equal(gW, gW2)
    assert gX.shape == X.shape


def _mlp():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    model = Sequential([Dense(7, "tanh"), Dense(5, "relu"), Dense(3)])
    return model, gn.softmax_cross_entropy, {"x": X, "y": Y}


def _cnn():
    rng = np.random.default_rng(2)
    X, Y = rng.uniform(0, 1, (6, 6, 6, 1)), rng.integers(0, 4, 6)
    model = Sequential([Conv2D(3, 3, padding="same", activation="relu"), MaxPool2D(2),
                        Conv2D(4, 3, activation="tanh"), Flatten(), Dense(4)])
    return model, gn.softmax_cross_entropy, {"x": X, "y": Y}


def _rnn():
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((8, 5, 2)), rng.standard_normal((8, 1))
    model = Sequential([SimpleRNN(4), Dense(1)])
    return model, gn.mse, {"x": X, "y": Y}


def _inputs(feeds):
    return {k: gn.input(k, (None,) + v.shape[1:], dtype=v.dtype.name) for k, v in feeds.items()}


@pytest.mark.parametrize("make", [_mlp, _cnn, _rnn], ids=["mlp", "cnn", "rnn"])
def test_same_model_and_adam_train_alike_eager_and_compiled(make):
    """Same Sequential, same gn.param objects, same Adam (same state variables): 10 steps
    compiled, then back to the initial state and 10 steps eager, agree to 1e-10 (float64)."""
    model, loss_of, feeds = make()
    opt = gn.optim.Adam(0.01)

    def loss_fn(x, y):
        return loss_of(model(x), y)

    loss = loss_fn(**_inputs(feeds))
    params = model.params
    assert all(p.dtype == np.float64 for p in params)
    compiled = gn.compile(loss, updates=opt.updates(loss, params), backend="cpu")
    state = params + opt.variables
    assert len(opt.variables) == 2 * len(params) + 1  # m and v per param, one step counter
    start = [s.value.copy() for s in state]
    batches = [{k: v[i::2] for k, v in feeds.items()} for i in range(2)]

    graph_losses = [float(compiled(**batches[k % 2])) for k in range(10)]
    graph_state = [s.value.copy() for s in state]
    for s, v in zip(state, start):
        s.value = v
    step = gn.eager.step(loss_fn, opt, params)
    eager_losses = [float(step(**batches[k % 2])) for k in range(10)]

    np.testing.assert_allclose(eager_losses, graph_losses, rtol=1e-10, atol=1e-12)
    assert graph_losses[8] < graph_losses[0]  # the same batch, 8 steps later
    for s, g in zip(state, graph_state):
        np.testing.assert_allclose(s.value, g, rtol=1e-10, atol=1e-12, err_msg=s.name)
    counter = [v for v in opt.variables if v.name == "adam/t"]
    assert float(counter[0].value) == 10  # Adam's step counter, shared by both


def test_eager_step_finds_the_parameters_the_loss_reads():
    W = gn.param("W", np.ones((3, 2)))
    b = gn.param("b", np.zeros(2))
    X, T = np.eye(3), np.zeros((3, 2))

    def loss_fn(x, t):
        return gn.mse(x @ W + b, t)
    step = gn.eager.step(loss_fn, gn.optim.SGD(0.5))
    before = float(step(x=X, t=T))
    assert step.params == [W, b]
    assert before == pytest.approx(1.0) and float(step(x=X, t=T)) < before
    # the same as the compiled SGD step from the same values
    W2, b2 = gn.param("W", np.ones((3, 2))), gn.param("b", np.zeros(2))
    x, t = gn.input("x", (None, 3), "float64"), gn.input("t", (None, 2), "float64")
    loss = gn.mse(x @ W2 + b2, t)
    f = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W2, b2]), backend="numpy")
    f(x=X, t=T), f(x=X, t=T)
    np.testing.assert_allclose(W.value, W2.value)
    np.testing.assert_allclose(b.value, b2.value)


def test_layers_on_arrays_compute_at_once_with_current_values():
    model = Sequential([Dense(4, "relu"), Dense(2)])
    X = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    out = model(X)
    assert isinstance(out, np.ndarray) and out.shape == (3, 2) and out.dtype == np.float32
    f = gn.compile(model(gn.input("x", (None, 5))), backend="numpy")
    np.testing.assert_allclose(out, f(x=X), rtol=1e-6)
    model.layers[1].b.value = np.ones(2, np.float32)
    np.testing.assert_allclose(model(X), out + 1, rtol=1e-6)


def test_eager_errors_are_clear():
    x = gn.input("x", (None, 2))
    with pytest.raises(gn.GraphError, match="optimizer"):
        gn.eager.step(lambda x: x, None)
    W = gn.param("W", np.ones((2, 1)))
    step = gn.eager.step(lambda x: gn.mean(x @ W), gn.optim.SGD(0.1))
    with pytest.raises(gn.GraphError, match="eager mode computes on arrays"):
        step(x=x)
    with pytest.raises(gn.GraphError, match="by name"):
        step(np.ones((1, 2)))
    with pytest.raises(gn.GraphError, match="NumPy arrays"):
        Dense(3)("not an array")


def test_profile_counts_ops_per_phase():
    model = Sequential([Dense(4, "tanh"), Dense(3)])
    X, Y = np.ones((8, 5), np.float32), np.arange(8) % 3

    def loss_fn(x, y):
        return gn.softmax_cross_entropy(model(x), y)
    step = gn.eager.step(loss_fn, gn.optim.Adam())
    step(x=X, y=Y)
    with gn.eager.profile() as prof:
        for _ in range(3):
            step(x=X, y=Y)
    rows = {(ph, op): (calls, total, numpy_s) for ph, op, calls, total, numpy_s in prof.rows()}
    assert rows[("forward", "matmul")][0] == 6
    assert ("backward", "matmul") in rows and ("update", "sqrt") in rows or \
        any(ph == "update" for ph, _ in rows)
    assert all(total >= numpy_s >= 0 for _, total, numpy_s in rows.values())
    assert gn.registry.profiler is None


def test_readme_worked_example_runs():
    from pathlib import Path
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("### Your own model, compiled and eager")[1]
    code = block.split("```python")[1].split("```")[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["eager_losses"]) == 5
