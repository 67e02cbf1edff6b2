"""Learning-rate schedules, weight decay (L2 and AdamW's), clipping by global norm and
Nesterov momentum, each against a NumPy reference written here, for five steps, compiled on
the numpy, cpu and cuda (simulator) backends and applied eagerly."""
import math

import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled

S = gn.optim.schedules

rng = np.random.default_rng(7)
X = rng.standard_normal((4, 3))
Y = rng.standard_normal((4, 2))
W0 = rng.standard_normal((3, 2))
B0 = np.array([0.3, -0.4])


def numpy_grads(W, b):
    """Gradients of mean((X W + b - Y)**2), by hand."""
    d = 2 * (X @ W + b - Y) / Y.size
    return X.T @ d, d.sum(0)


NORM0 = math.sqrt(sum(float(np.sum(g * g)) for g in numpy_grads(W0, B0)))
CLIP = 0.3 * NORM0  # below the gradient norm of every step here: clipping acts


# reference rules: update(p, g, state, lr, t) with t the steps already taken

def sgd(p, g, state, lr, t):
    return p - lr * g


def momentum(beta):
    def update(p, g, state, lr, t):
        state["m"] = beta * state.get("m", 0) - lr * g
        return p + state["m"]
    return update


def nesterov(beta):
    def update(p, g, state, lr, t):
        state["v"] = beta * state.get("v", 0) + g
        return p - lr * (g + beta * state["v"])
    return update


def adagrad(p, g, state, lr, t, eps=1e-7):
    state["G"] = state.get("G", 0) + g * g
    return p - lr * g / (np.sqrt(state["G"]) + eps)


def rmsprop(p, g, state, lr, t, rho=0.9, eps=1e-7):
    state["v"] = rho * state.get("v", 0) + (1 - rho) * g * g
    return p - lr * g / (np.sqrt(state["v"]) + eps)


def adadelta(p, g, state, lr, t, rho=0.95, eps=1e-6):
    state["v"] = rho * state.get("v", 0) + (1 - rho) * g * g
    delta = np.sqrt(state.get("u", 0) + eps) / np.sqrt(state["v"] + eps) * g
    state["u"] = rho * state.get("u", 0) + (1 - rho) * delta * delta
    return p - lr * delta


def adam(decoupled_decay=0.0):
    def update(p, g, state, lr, t, b1=0.9, b2=0.999, eps=1e-7):
        state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
        m_hat = state["m"] / (1 - b1 ** (t + 1))
        v_hat = state["v"] / (1 - b2 ** (t + 1))
        p = p - lr * decoupled_decay * p  # PyTorch's AdamW: decay the weights before the step
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return update


# schedules written out with math
def step_decay(lr, size, gamma):
    return lambda t: lr * gamma ** (t // size)


def exponential(lr, rate, steps):
    return lambda t: lr * rate ** (t / steps)


def cosine(lr, steps, final):
    return lambda t: final + (lr - final) * (1 + math.cos(math.pi * min(t, steps) / steps)) / 2


def warmup(inner, steps):
    return lambda t: inner(t) * min(1.0, (t + 1) / steps)


def constant(lr):
    return lambda t: lr


# name: (optimizer, reference rule, reference rate, L2 weight decay, clipnorm)
CASES = {
    "sgd-step-decay": (lambda: gn.optim.SGD(S.StepDecay(0.5, step_size=2, gamma=0.3)),
                       sgd, step_decay(0.5, 2, 0.3), 0, None),
    "momentum-exponential": (
        lambda: gn.optim.SGD(S.ExponentialDecay(0.2, rate=0.5, steps=3), momentum=0.9),
        momentum(0.9), exponential(0.2, 0.5, 3), 0, None),
    "adam-cosine": (lambda: gn.optim.Adam(S.CosineDecay(0.05, steps=3, final=0.01)),
                    adam(), cosine(0.05, 3, 0.01), 0, None),
    "rmsprop-warmup": (lambda: gn.optim.RMSprop(S.LinearWarmup(S.StepDecay(0.02, 2, 0.5), 3)),
                       rmsprop, warmup(step_decay(0.02, 2, 0.5), 3), 0, None),
    "sgd-warmup-number": (lambda: gn.optim.SGD(S.LinearWarmup(0.4, 4)),
                          sgd, warmup(constant(0.4), 4), 0, None),
    "sgd-l2": (lambda: gn.optim.SGD(0.1, weight_decay=0.5), sgd, constant(0.1), 0.5, None),
    "momentum-l2": (lambda: gn.optim.SGD(0.1, momentum=0.8, weight_decay=0.5),
                    momentum(0.8), constant(0.1), 0.5, None),
    "adagrad-l2": (lambda: gn.optim.Adagrad(0.1, weight_decay=0.5),
                   adagrad, constant(0.1), 0.5, None),
    "rmsprop-l2": (lambda: gn.optim.RMSprop(0.01, weight_decay=0.5),
                   rmsprop, constant(0.01), 0.5, None),
    "adadelta-l2": (lambda: gn.optim.Adadelta(1.0, weight_decay=0.5),
                    adadelta, constant(1.0), 0.5, None),
    "adam-l2": (lambda: gn.optim.Adam(0.05, weight_decay=0.5), adam(), constant(0.05), 0.5,
                None),
    "adamw": (lambda: gn.optim.AdamW(0.05, weight_decay=0.3), adam(0.3), constant(0.05), 0,
              None),
    "adamw-cosine": (lambda: gn.optim.AdamW(S.CosineDecay(0.05, 4), weight_decay=0.3),
                     adam(0.3), cosine(0.05, 4, 0.0), 0, None),
    "sgd-clipnorm": (lambda: gn.optim.SGD(0.5, clipnorm=CLIP), sgd, constant(0.5), 0, CLIP),
    "adam-clipnorm-l2": (lambda: gn.optim.Adam(0.05, weight_decay=0.5, clipnorm=CLIP),
                         adam(), constant(0.05), 0.5, CLIP),
    "adagrad-clipnorm": (lambda: gn.optim.Adagrad(0.1, clipnorm=CLIP), adagrad, constant(0.1),
                         0, CLIP),
    "nesterov": (lambda: gn.optim.SGD(0.1, momentum=0.9, nesterov=True),
                 nesterov(0.9), constant(0.1), 0, None),
    "nesterov-step-decay-clip": (
        lambda: gn.optim.SGD(S.StepDecay(0.1, 2, 0.5), momentum=0.9, nesterov=True,
                             clipnorm=CLIP),
        nesterov(0.9), step_decay(0.1, 2, 0.5), 0, CLIP),
}
CUDA_CASES = ["adam-cosine", "rmsprop-warmup", "adamw", "adam-clipnorm-l2",
              "nesterov-step-decay-clip"]
STEPS = 5


def reference(case):
    """[(W, b) after each of STEPS steps]."""
    _, update, rate, weight_decay, clipnorm = CASES[case]
    W, b = W0.copy(), B0.copy()
    states, history = ({}, {}), []
    for t in range(STEPS):
        grads = numpy_grads(W, b)
        if clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            assert norm > clipnorm, "the test's clipnorm must clip"
            grads = [g * min(1.0, clipnorm / norm) for g in grads]
        grads = [g + weight_decay * p for g, p in zip(grads, (W, b))]
        W, b = (update(p, g, state, rate(t), t) for p, g, state in zip((W, b), grads, states))
        history.append((W, b))
    return history


def model():
    x, y = gn.input("x", (None, 3), dtype="float64"), gn.input("y", (None, 2), dtype="float64")
    W, b = gn.param("W", W0.copy()), gn.param("b", B0.copy())
    return x, y, W, b, gn.mse(x @ W + b, y)


def compile_on(backend, loss, updates):
    if backend == "cuda":
        if not simulator_enabled():
            pytest.skip("the CUDA tests run on Numba's simulator")
        return gn.compile(loss, updates=updates, backend="cuda", block=32, tile=4)
    return gn.compile(loss, updates=updates, backend=backend)


@pytest.mark.parametrize("case, backend", [(case, backend) for backend in ("numpy", "cpu")
                                           for case in CASES] +
                         [(case, "cuda") for case in CUDA_CASES])  # the simulator is slow
def test_five_steps_match_numpy_reference(case, backend):
    x, y, W, b, loss = model()
    step = compile_on(backend, loss, CASES[case][0]().updates(loss, [W, b]))
    rtol = 1e-10 if backend != "cuda" else 1e-9
    for t, (W_ref, b_ref) in enumerate(reference(case), 1):
        step(x=X, y=Y)
        np.testing.assert_allclose(W.value, W_ref, rtol=rtol, atol=1e-13, err_msg=f"W, step {t}")
        np.testing.assert_allclose(b.value, b_ref, rtol=rtol, atol=1e-13, err_msg=f"b, step {t}")


@pytest.mark.parametrize("case", list(CASES))
def test_five_eager_steps_match_numpy_reference(case):
    _, _, W, b, _ = model()
    optimizer = CASES[case][0]()
    for t, (W_ref, b_ref) in enumerate(reference(case), 1):
        optimizer.apply_eager([W, b], list(numpy_grads(W.value, b.value)))
        np.testing.assert_allclose(W.value, W_ref, rtol=1e-10, atol=1e-13, err_msg=f"W, step {t}")
        np.testing.assert_allclose(b.value, b_ref, rtol=1e-10, atol=1e-13, err_msg=f"b, step {t}")


def test_compiled_and_eager_steps_share_the_schedule_counter():
    x, y, W, b, loss = model()
    optimizer = CASES["adam-cosine"][0]()
    step = gn.compile(loss, updates=optimizer.updates(loss, [W, b]), backend="numpy")
    step(x=X, y=Y)
    optimizer.apply_eager([W, b], list(numpy_grads(W.value, b.value)))
    step(x=X, y=Y)
    counter, = [v for v in optimizer.variables if v.name == "adam/t"]
    assert counter.value == 3
    np.testing.assert_allclose(W.value, reference("adam-cosine")[2][0], rtol=1e-10)


def test_eager_steps_between_simulated_device_steps_reach_the_device():
    # the device back end keeps parameters on the device between its steps; an eager step
    # in between changes them on the host, and the next device step must start from there
    x, y, W, b, loss = model()
    optimizer = gn.optim.SGD(0.3)
    step = compile_on("cuda", loss, optimizer.updates(loss, [W, b]))
    expected = [(W0, B0)]
    for _ in range(3):
        W_ref, b_ref = expected[-1]
        gW, gb = numpy_grads(W_ref, b_ref)
        expected.append((W_ref - 0.3 * gW, b_ref - 0.3 * gb))
    step(x=X, y=Y)
    optimizer.apply_eager([W, b], list(numpy_grads(W.value, b.value)))
    np.testing.assert_allclose(W.value, expected[2][0], rtol=1e-10)
    step(x=X, y=Y)
    np.testing.assert_allclose(W.value, expected[3][0], rtol=1e-10)
    np.testing.assert_allclose(b.value, expected[3][1], rtol=1e-10)


def test_schedule_values():
    assert S.StepDecay(0.1, step_size=10, gamma=0.5).value(9) == pytest.approx(0.1)
    assert S.StepDecay(0.1, step_size=10, gamma=0.5).value(10) == pytest.approx(0.05)
    assert S.ExponentialDecay(0.1, rate=0.5, steps=100).value(50) == \
        pytest.approx(0.1 * 0.5 ** 0.5, rel=1e-12)
    cos = S.CosineDecay(0.1, steps=100, final=0.02)
    for t in (0, 1, 17, 50, 99, 100, 250):
        assert cos.value(t) == pytest.approx(cosine(0.1, 100, 0.02)(t), rel=1e-13, abs=1e-15)
    warm = S.LinearWarmup(S.CosineDecay(0.1, 1000), warmup_steps=10)
    assert warm.value(0) == pytest.approx(0.01) and warm.value(9) == pytest.approx(
        cosine(0.1, 1000, 0)(9))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_changing_a_variable_learning_rate_does_not_recompile(backend):
    x, y, W, b, loss = model()
    lr = gn.variable("lr", np.float64(0.1), dtype="float64")
    step = compile_on(backend, loss, gn.optim.SGD(lr, weight_decay=0.5).updates(loss, [W, b]))
    compiled = getattr(step, "_fn", None), getattr(step, "module", None), dict(step.stats)
    expected_W, expected_b = W0.copy(), B0.copy()
    for rate in (0.1, 0.0, 0.7):
        lr.value = np.float64(rate)
        step(x=X, y=Y)
        gW, gb = numpy_grads(expected_W, expected_b)
        expected_W = expected_W - rate * (gW + 0.5 * expected_W)
        expected_b = expected_b - rate * (gb + 0.5 * expected_b)
        np.testing.assert_allclose(W.value, expected_W, rtol=1e-10)
        np.testing.assert_allclose(b.value, expected_b, rtol=1e-10)
    assert getattr(step, "_fn", None) is compiled[0] and getattr(step, "module", None) is \
        compiled[1]
    assert step.stats.get("module") == compiled[2].get("module")


@pytest.mark.parametrize("make, words", [
    (lambda: S.StepDecay("0.1", 10), "StepDecay: lr must be a number"),
    (lambda: S.StepDecay(0.1, -3), "StepDecay: step_size must be a positive integer"),
    (lambda: S.StepDecay(0.1, 2.5), "StepDecay: step_size must be a positive integer"),
    (lambda: S.StepDecay(0.1, 10, gamma=0), "StepDecay: gamma must be a positive number"),
    (lambda: S.ExponentialDecay(0.1, 0.5, steps=-1), "ExponentialDecay: steps must be"),
    (lambda: S.ExponentialDecay(None, 0.5, 10), "ExponentialDecay: lr must be a number"),
    (lambda: S.CosineDecay(0.1, steps=0), "CosineDecay: steps must be a positive number"),
    (lambda: S.CosineDecay(0.1, 10, final=float("nan")), "CosineDecay: final must be"),
    (lambda: S.LinearWarmup("fast", 10), "LinearWarmup: schedule_or_lr must be a number"),
    (lambda: S.LinearWarmup(0.1, -5), "LinearWarmup: warmup_steps must be a positive"),
    (lambda: S.CosineDecay(0.1, 10).value(-1), "step must be >= 0"),
    (lambda: gn.optim.SGD(0.1, nesterov=True), "nesterov=True needs a momentum"),
])
def test_nonsense_schedule_and_option_arguments_raise_option_error(make, words):
    with pytest.raises(gn.OptionError, match=words) as err:
        make()
    assert __file__.rsplit("/", 1)[-1] in str(err.value)


@pytest.mark.parametrize("optimizer, words", [
    (lambda: gn.optim.Adam(0.1, clipnorm=-1.0), "Adam: clipnorm must be positive"),
    (lambda: gn.optim.SGD(0.1, weight_decay="lots"), "SGD: weight_decay must be a number"),
    (lambda: gn.optim.SGD(0.1, momentum=0.9, nesterov="yes"), "nesterov must be True or False"),
])
def test_bad_options_raise_option_error_when_updates_are_built(optimizer, words):
    x, y, W, b, loss = model()
    with pytest.raises(gn.OptionError, match=words):
        optimizer().updates(loss, [W, b])
