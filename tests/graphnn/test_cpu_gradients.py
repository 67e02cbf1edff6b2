"""The compiled CPU backend computes every op's gradient as the numpy reference does:
relative 1e-12 in float64, 1e-5 in float32 (one compile per op: value and gradients)."""
import numpy as np
import pytest

import graphnn as gn
from helpers import assert_backends_agree

RNG = np.random.default_rng(7)


def arr(*shape, low=-2.0, high=2.0):
    return RNG.uniform(low, high, shape)


def pos(*shape):
    return RNG.uniform(0.5, 2.0, shape)


# name -> (build(*inputs) -> scalar-or-tensor node, feeds)
CASES = {
    "add_broadcast": (lambda a, b: a + b, {"a": arr(3, 4), "b": arr(4)}),
    "sub_broadcast": (lambda a, b: a - b, {"a": arr(3, 1), "b": arr(4)}),
    "mul": (lambda a, b: a * b, {"a": arr(3, 4), "b": arr(3, 4)}),
    "div": (lambda a, b: a / b, {"a": arr(3, 4), "b": pos(4)}),
    "pow": (lambda a, b: a ** b, {"a": pos(3, 4), "b": arr(3, 4)}),
    "maximum_minimum": (lambda a, b: gn.maximum(a, b) + gn.minimum(a, b) * 2.0,
                        {"a": arr(3, 4), "b": arr(3, 4)}),
    "exp_log_sqrt": (lambda a: gn.exp(a) + gn.log(gn.abs(a) + 1.0) + gn.sqrt(gn.square(a) + 1.0),
                     {"a": arr(3, 4)}),
    "activations": (lambda a: gn.sigmoid(a) + gn.tanh(a) + gn.relu(a) + gn.softplus(a)
                    + gn.leaky_relu(a, 0.2) + gn.elu(a, 0.7) + gn.step(a) * a,
                    {"a": arr(3, 4)}),
    "neg_abs_square": (lambda a: -gn.abs(a) + gn.square(a), {"a": arr(5)}),
    "sum_axis": (lambda a: gn.sum(a, axis=0, keepdims=True) * gn.sum(a, axis=1, keepdims=True),
                 {"a": arr(3, 4)}),
    "mean_max": (lambda a: gn.mean(a, axis=1) + gn.max(a, axis=1), {"a": arr(3, 4)}),
    "max_all": (lambda a: gn.max(a) * gn.mean(a), {"a": arr(3, 4)}),
    "matmul": (lambda a, b: gn.tanh(a @ b), {"a": arr(3, 4), "b": arr(4, 5)}),
    "transpose_reshape": (lambda a: gn.reshape(gn.transpose(a), (2, 6)) * arr(2, 6),
                          {"a": arr(3, 4)}),
    "concat_slice": (lambda a, b: gn.slice_axis(gn.concat([a, b], axis=1), 1, 1, 6) ** 2.0,
                     {"a": arr(3, 4), "b": arr(3, 3)}),
    "softmax_log_softmax": (lambda a: gn.softmax(a) * arr(3, 4) + gn.log_softmax(a, axis=0),
                            {"a": arr(3, 4)}),
    "mse": (lambda p, t: gn.mse(gn.sigmoid(p), t), {"p": arr(4, 2), "t": arr(4, 2)}),
    "bce": (lambda p, t: gn.binary_cross_entropy(gn.sigmoid(p), t)
            + gn.binary_cross_entropy(p, t, from_logits=True),
            {"p": arr(4, 2), "t": RNG.uniform(0, 1, (4, 2))}),
    "sce_probabilities": (lambda z, t: gn.softmax_cross_entropy(z, gn.softmax(t)),
                          {"z": arr(4, 3), "t": arr(4, 3)}),
    "conv2d_valid_stride2": (lambda x, w: gn.conv2d(x, w, stride=2) ** 2.0,
                             {"x": arr(2, 5, 5, 2), "w": arr(3, 3, 2, 3)}),
    "conv2d_same": (lambda x, w: gn.conv2d(x, w, padding="same") ** 2.0,
                    {"x": arr(1, 4, 5, 2), "w": arr(2, 3, 2, 2)}),
    "pools": (lambda x: gn.sum(gn.max_pool2d(x, 2) * 3.0) + gn.sum(gn.avg_pool2d(x, 2, 1)),
              {"x": arr(2, 4, 4, 3)}),
    "clip_flatten": (lambda x: gn.clip(gn.flatten(x), -1.0, 1.0) * arr(2, 12),
                     {"x": arr(2, 2, 3, 2)}),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_gradient_matches_numpy(name, dtype):
    if dtype == "float32" and name not in ("activations", "matmul", "softmax_log_softmax",
                                           "conv2d_same", "pools", "bce"):
        pytest.skip("float32 is checked on a representative subset (compile time)")
    build, feeds = CASES[name]
    feeds = {k: v.astype(dtype) for k, v in feeds.items()}
    inputs = [gn.input(f"{name}_{k}", v.shape, dtype=dtype) for k, v in feeds.items()]
    y = build(*inputs)
    scalar = gn.sum(y * gn.const(RNG.uniform(0.5, 1.5, y.shape).astype(dtype))) \
        if y.ndim else y
    outputs = [scalar] + list(gn.grad(scalar, inputs))
    named = {f"{name}_{k}": v for k, v in feeds.items()}
    rtol, atol = (1e-12, 1e-12) if dtype == "float64" else (1e-5, 1e-6)
    assert_backends_agree(outputs, named, backends=("cpu",), rtol=rtol, atol=atol)
