"""The named activations (selu, silu/swish, gelu exact and tanh, softsign, hard_sigmoid, erf,
and the older leaky_relu, elu, softplus): values and gradients against NumPy formulas on
every back end and eagerly, finite differences in float64, PyTorch's functions when torch
is installed, and their names in `gn.nn.ACTIVATIONS` (`Dense(.., "gelu")`)."""
import math

import numpy as np
import pytest

import graphnn as gn

from helpers import BACKEND_OPTIONS, assert_backends_agree, assert_op_matches

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
erf_np = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _gelu_tanh_grad(x):
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x * x)


# name -> (graph function, NumPy value, NumPy derivative)
CASES = {
    "selu": (gn.selu, lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)),
             lambda x: SELU_SCALE * np.where(x > 0, 1, SELU_ALPHA * np.exp(x))),
    "silu": (gn.silu, lambda x: x * _sigmoid(x),
             lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "gelu": (gn.gelu, lambda x: 0.5 * x * (1 + erf_np(x / np.sqrt(2))),
             lambda x: 0.5 * (1 + erf_np(x / np.sqrt(2))) + x * np.exp(-x * x / 2)
             / np.sqrt(2 * np.pi)),
    "gelu_tanh": (lambda x: gn.gelu(x, approximate=True), _gelu_tanh, _gelu_tanh_grad),
    "softsign": (gn.softsign, lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2),
    "hard_sigmoid": (gn.hard_sigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1),
                     lambda x: np.where((x > -3) & (x < 3), 1 / 6, 0.0)),
    "erf": (gn.erf, erf_np, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
    "elu": (gn.elu, lambda x: np.where(x > 0, x, np.expm1(x)),
            lambda x: np.where(x > 0, 1, np.exp(x))),
    "leaky_relu": (gn.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x),
                   lambda x: np.where(x > 0, 1, 0.01)),
    "softplus": (gn.softplus, lambda x: np.log1p(np.exp(x)), _sigmoid),
}

# points away from the kinks (0 and ±3) so finite differences are clean
X = np.array([[-7.5, -3.4, -2.2, -1.1, -0.35, 0.2], [0.7, 1.3, 2.6, 3.3, 5.1, 9.0]])


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_value_matches_numpy_formula(name, dtype):
    fn, value, _ = CASES[name]
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (1e-5, 1e-6)
    assert_op_matches(fn, value, {"x": X.astype(dtype)}, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_numpy_derivative_and_finite_differences(name):
    fn, _, derivative = CASES[name]
    w = np.linspace(-1.5, 2.0, X.size).reshape(X.shape)

    def build(x, w_in):
        if isinstance(x, gn.Node):
            return gn.grad(gn.sum(fn(x) * w_in), [x])[0]
        return gn.eager.value_and_grad(lambda a: gn.sum(fn(a) * w_in))(x)[1]
    assert_op_matches(build, lambda x, w_in: w_in * derivative(x), {"x": X, "w": w},
                      rtol=1e-10, atol=1e-12)
    x = gn.input("x", X.shape, dtype="float64")
    errors = gn.testing.check_grad(gn.sum(fn(x) * w), [x], {"x": X}, eps=1e-6)
    assert errors["x"] < 1e-7, errors


def test_every_activation_and_gradient_agree_on_the_cuda_simulator():
    x = gn.input("x", (2, 6), dtype="float32")
    outs = []
    for name in sorted(CASES):
        y = CASES[name][0](x)
        outs += [y, gn.grad(gn.sum(y * y), [x])[0]]
    assert_backends_agree(outs, {"x": X.astype(np.float32)}, backends=("cuda",))


def test_gelu_is_exact_by_default_and_checks_its_flag():
    x = gn.input("x", (None, 3))
    assert gn.gelu(x).op == "gelu" and gn.gelu(x, approximate=True).op == "gelu_tanh"
    assert gn.swish is gn.silu
    with pytest.raises(gn.GraphError, match="approximate must be True or False"):
        gn.gelu(x, approximate="tanh")


def test_integer_inputs_are_refused_with_the_op_named():
    with pytest.raises(gn.DTypeError, match="selu needs float inputs"):
        gn.selu(gn.input("n", (3,), dtype="int64"))


def test_against_torch_functions():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    theirs = {"selu": F.selu, "silu": F.silu, "gelu": F.gelu,
              "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "softsign": F.softsign,
              "hard_sigmoid": F.hardsigmoid, "erf": torch.erf, "elu": F.elu,
              "leaky_relu": F.leaky_relu, "softplus": F.softplus}
    w = np.linspace(-1.5, 2.0, X.size).reshape(X.shape)
    for name, torch_fn in theirs.items():
        t = torch.tensor(X, requires_grad=True)
        out = torch_fn(t)
        (out * torch.tensor(w)).sum().backward()
        x = gn.input("x", X.shape, dtype="float64")
        y = CASES[name][0](x)
        value, grad = gn.compile([y, gn.grad(gn.sum(y * w), [x])[0]], backend="cpu")(x=X)
        np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
        # (PyTorch's hardsigmoid backward multiplies by 1/6 rounded to float32: 3e-8 off)
        rtol = 1e-7 if name == "hard_sigmoid" else 1e-10
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=rtol, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", ["selu", "silu", "swish", "gelu", "gelu_tanh", "softsign",
                                  "hard_sigmoid", "leaky_relu", "elu", "softplus"])
def test_dense_takes_the_activation_by_name(name):
    x = gn.input("x", (None, 6), dtype="float64")
    layer = gn.nn.Dense(4, name, name=f"d_{name}", seed=0)
    y = layer(x)
    W, b = (p.value for p in layer.params)
    fn = CASES["silu" if name == "swish" else name][1]
    got = gn.compile(y, backend="cpu")(x=X)
    np.testing.assert_allclose(got, fn(X @ W + b), rtol=1e-10, atol=1e-12)


def test_an_unknown_activation_name_lists_the_known_ones():
    with pytest.raises(gn.GraphError, match="unknown activation 'gelu2'.*gelu, gelu_tanh"):
        gn.nn.Dense(3, "gelu2")


def test_public_names_have_docstrings_with_an_example():
    for fn in (gn.selu, gn.silu, gn.gelu, gn.softsign, gn.hard_sigmoid, gn.erf,
               gn.random_uniform, gn.training_branch, gn.conv2d):
        assert fn.__doc__ and ">>>" in fn.__doc__, fn.__name__
