"""Every optimizer's update graph against a hand-written NumPy reference, for two steps,
on the numpy and cpu backends."""
import numpy as np
import pytest

import graphnn as gn

BACKENDS = ["numpy", "cpu"]

rng = np.random.default_rng(42)
X = rng.standard_normal((5, 3)).astype(np.float32)
Y = rng.standard_normal((5, 2)).astype(np.float32)
W0 = rng.standard_normal((3, 2)).astype(np.float32)
B0 = np.array([0.1, -0.2], np.float32)


def numpy_grads(W, b):
    """Gradients of mean((X W + b - Y)**2), by hand."""
    d = 2 * (X @ W + b - Y) / Y.size
    return X.T @ d, d.sum(0)


def sgd(lr):
    def update(p, g, state, t):
        return p - lr * g
    return update


def momentum(lr, beta):
    def update(p, g, state, t):
        state["m"] = beta * state.get("m", 0) - lr * g
        return p + state["m"]
    return update


def adagrad(lr, eps):
    def update(p, g, state, t):
        state["G"] = state.get("G", 0) + g * g
        return p - lr * g / (np.sqrt(state["G"]) + eps)
    return update


def rmsprop(lr, rho, eps):
    def update(p, g, state, t):
        state["v"] = rho * state.get("v", 0) + (1 - rho) * g * g
        return p - lr * g / (np.sqrt(state["v"]) + eps)
    return update


def adadelta(lr, rho, eps):
    def update(p, g, state, t):
        state["v"] = rho * state.get("v", 0) + (1 - rho) * g * g
        delta = np.sqrt(state.get("u", 0) + eps) / np.sqrt(state["v"] + eps) * g
        state["u"] = rho * state.get("u", 0) + (1 - rho) * delta * delta
        return p - lr * delta
    return update


def adam(lr, b1, b2, eps):
    def update(p, g, state, t):
        state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
        m_hat = state["m"] / (1 - b1 ** t)
        v_hat = state["v"] / (1 - b2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return update


CASES = {
    "sgd": (lambda: gn.optim.SGD(lr=0.1), sgd(0.1)),
    "momentum": (lambda: gn.optim.SGD(lr=0.1, momentum=0.9), momentum(0.1, 0.9)),
    "adagrad": (lambda: gn.optim.Adagrad(lr=0.1, eps=1e-7), adagrad(0.1, 1e-7)),
    "rmsprop": (lambda: gn.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-7), rmsprop(0.01, 0.9, 1e-7)),
    "adadelta": (lambda: gn.optim.Adadelta(lr=1.0, rho=0.95, eps=1e-6),
                 adadelta(1.0, 0.95, 1e-6)),
    "adam": (lambda: gn.optim.Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7),
             adam(0.01, 0.9, 0.999, 1e-7)),
}


def reference(update, steps, states=None):
    """[(W, b) after each step]; the optimizer's state ends in `states` (for W, for b)."""
    W, b = W0.astype(np.float64), B0.astype(np.float64)
    states = ({}, {}) if states is None else states
    history = []
    for t in range(1, steps + 1):
        gW, gb = numpy_grads(W, b)
        W, b = update(W, gW, states[0], t), update(b, gb, states[1], t)
        history.append((W.copy(), b.copy()))
    return history


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_two_steps_match_numpy_reference(case, backend):
    make_optimizer, update = CASES[case]
    x, y = gn.input("x", (None, 3)), gn.input("y", (None, 2))
    W, b = gn.param("W", W0), gn.param("b", B0)
    loss = gn.mse(x @ W + b, y)
    step = gn.compile(loss, updates=make_optimizer().updates(loss, [W, b]), backend=backend)
    for t, (W_ref, b_ref) in enumerate(reference(update, 2), 1):
        loss_value = step(x=X, y=Y)
        np.testing.assert_allclose(W.value, W_ref, rtol=2e-5, atol=1e-6, err_msg=f"W, step {t}")
        np.testing.assert_allclose(b.value, b_ref, rtol=2e-5, atol=1e-6, err_msg=f"b, step {t}")
    # the step returns the loss computed BEFORE its update
    W_1, b_1 = reference(update, 1)[0]
    assert loss_value == pytest.approx(np.mean((X @ W_1 + b_1 - Y) ** 2), rel=1e-5)


def test_optimizer_state_is_graph_variables_updated_in_place():
    x, y = gn.input("x", (None, 3)), gn.input("y", (None, 2))
    W, b = gn.param("W", W0), gn.param("b", B0)
    loss = gn.mse(x @ W + b, y)
    updates = gn.optim.Adam(lr=0.01).updates(loss, [W, b])
    variables = {n.name: n for n in updates if n.op == "variable"}
    assert set(variables) == {"W/adam_m", "W/adam_v", "b/adam_m", "b/adam_v", "adam/t"}
    step = gn.compile(loss, updates=updates, backend="numpy")
    step(x=X, y=Y)
    step(x=X, y=Y)
    assert variables["adam/t"].value == 2
    states = ({}, {})
    reference(CASES["adam"][1], 2, states)
    for param, state in zip("Wb", states):
        for moment in "mv":
            np.testing.assert_allclose(variables[f"{param}/adam_{moment}"].value, state[moment],
                                       rtol=2e-5, atol=1e-9)


def test_adam_float64_parameters():
    x, y = gn.input("x", (None, 3), dtype="float64"), gn.input("y", (None, 2), dtype="float64")
    W, b = gn.param("W", W0.astype(np.float64)), gn.param("b", B0.astype(np.float64))
    loss = gn.mse(x @ W + b, y)
    step = gn.compile(loss, updates=gn.optim.Adam(lr=0.01).updates(loss, [W, b]),
                      backend="numpy")
    for _ in range(2):
        step(x=X, y=Y)
    W_ref, b_ref = reference(CASES["adam"][1], 2)[-1]
    np.testing.assert_allclose(W.value, W_ref, rtol=1e-12)
    np.testing.assert_allclose(b.value, b_ref, rtol=1e-12)
    assert W.value.dtype == np.float64


def test_updates_refuses_non_parameters_and_empty_lists():
    x = gn.input("x", (None, 3))
    W = gn.param("W", W0)
    loss = gn.sum(x @ W)
    with pytest.raises(gn.GraphError, match="is not a gn.param"):
        gn.optim.SGD(0.1).updates(loss, [x])
    with pytest.raises(gn.GraphError, match="no parameters given"):
        gn.optim.Adam().updates(loss, [])


def test_params_must_be_a_list_even_for_one_parameter():
    x = gn.input("x", (None, 3))
    W = gn.param("W", W0)
    loss = gn.sum(x @ W)
    for params, shown in ((W, "'W' (3, 2)"), ("W", "'W'")):
        with pytest.raises(gn.OptionError) as err:
            gn.optim.SGD(0.1).updates(loss, params)
        assert f"SGD.updates: params must be a list of gn.param nodes, got {shown}" in \
            str(err.value)
        assert "write [W] for one parameter" in str(err.value)


class SignSGD(gn.optim.Optimizer):
    """A user-defined rule: only `lr` and `rule`; the other options keep their defaults."""

    def __init__(self, lr):
        self.lr = lr

    def rule(self, p, g, lr, t):
        return {p: p - lr * gn.sign(g)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_user_defined_optimizer_needs_only_lr_and_rule(backend):
    x, y = gn.input("x", (None, 3)), gn.input("y", (None, 2))
    W, b = gn.param("W", W0.copy()), gn.param("b", B0.copy())
    loss = gn.mean(gn.square(x @ W + b - y))
    step = gn.compile(loss, updates=SignSGD(0.25).updates(loss, [W, b]), backend=backend)
    W_ref, b_ref = W0.copy(), B0.copy()
    for _ in range(2):
        step(x=X, y=Y)
        gW, gb = numpy_grads(W_ref, b_ref)
        W_ref, b_ref = W_ref - 0.25 * np.sign(gW), b_ref - 0.25 * np.sign(gb)
        np.testing.assert_array_equal(W.value, W_ref)
        np.testing.assert_array_equal(b.value, b_ref)


def adamw(lr, b1, b2, eps, wd):
    inner = adam(lr, b1, b2, eps)

    def update(p, g, state, t):
        return inner(p, g, state, t) - lr * wd * p
    return update


# every optimizer with its documented default hyperparameters
DEFAULTS = {
    "sgd": (gn.optim.SGD, sgd(0.01)),
    "adagrad": (gn.optim.Adagrad, adagrad(0.01, 1e-7)),
    "rmsprop": (gn.optim.RMSprop, rmsprop(0.001, 0.9, 1e-7)),
    "adadelta": (gn.optim.Adadelta, adadelta(1.0, 0.95, 1e-6)),
    "adam": (gn.optim.Adam, adam(0.001, 0.9, 0.999, 1e-7)),
    "adamw": (gn.optim.AdamW, adamw(0.001, 0.9, 0.999, 1e-7, 0.01)),
}


@pytest.mark.parametrize("case", list(DEFAULTS))
def test_default_hyperparameters_in_float64(case):
    make_optimizer, update = DEFAULTS[case]
    x = gn.input("x", (None, 3), dtype="float64")
    y = gn.input("y", (None, 2), dtype="float64")
    W, b = gn.param("W", W0.astype(np.float64)), gn.param("b", B0.astype(np.float64))
    loss = gn.mse(x @ W + b, y)
    step = gn.compile(loss, updates=make_optimizer().updates(loss, [W, b]), backend="numpy")
    for t, (W_ref, b_ref) in enumerate(reference(update, 3), 1):
        step(x=X.astype(np.float64), y=Y.astype(np.float64))
        np.testing.assert_allclose(W.value, W_ref, rtol=1e-12, err_msg=f"W, step {t}")
        np.testing.assert_allclose(b.value, b_ref, rtol=1e-12, err_msg=f"b, step {t}")
