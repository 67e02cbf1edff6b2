"""Gradients: every op against central finite differences, second derivatives, node sharing
in derivative graphs, eager vs graph agreement, stability at |x| = 1000, error cases."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.registry import OPS

TOL = 1e-6


def rng_for(seed):
    return np.random.default_rng(seed)


def away_from_zero(rng, shape, low=0.2, high=2.0):
    """Random values with |x| in [low, high]: no kink of relu/abs/leaky_relu/elu nearby."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(rng, shape, gap=0.05):
    """Random values that differ pairwise by at least `gap` (valid finite differences of max)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap - n * gap / 2).reshape(shape).astype(np.float64)


def inp(name, array):
    return gn.input(name, np.shape(array), dtype="float64")


def weighted_sum(y, seed=99):
    """A scalar whose adjoint for `y` is random, so every element of y's gradient matters."""
    weights = rng_for(seed).normal(size=y.shape)  # an array: works in graph and eager mode
    return gn.sum(y * weights)


def assert_grads_match(loss, wrt, feeds):
    errors = gn.testing.check_grad(loss, wrt, feeds)
    assert set(errors) == {w.name for w in wrt}
    assert max(errors.values()) < TOL, errors


# ---------------------------------------------------------------------------------------
# Elementwise ops, with broadcasting
# ---------------------------------------------------------------------------------------

def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


UNARY = {
    "neg": (gn.neg, away_from_zero),
    "exp": (gn.exp, away_from_zero),
    "log": (gn.log, positive),
    "sqrt": (gn.sqrt, positive),
    "abs": (gn.abs, away_from_zero),
    "square": (gn.square, away_from_zero),
    "sigmoid": (gn.sigmoid, away_from_zero),
    "tanh": (gn.tanh, away_from_zero),
    "relu": (gn.relu, away_from_zero),
    "softplus": (gn.softplus, away_from_zero),
    "leaky_relu": (lambda x: gn.leaky_relu(x, alpha=0.1), away_from_zero),
    "elu": (lambda x: gn.elu(x, alpha=0.7), away_from_zero),
    "clip": (lambda x: gn.clip(x, -1.0, 1.5), lambda rng, shape: rng.choice(
        [-1.9, -1.3, -0.6, 0.3, 0.9, 1.2, 1.8], shape) + rng.uniform(-0.05, 0.05, shape)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradient(name):
    fn, sample = UNARY[name]
    x_val = sample(rng_for(1), (3, 4))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(fn(x)), [x], {"x": x_val})


BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)),
                    ((2, 1, 3), (4, 1))]
BINARY = {
    "add": (gn.add, away_from_zero, away_from_zero),
    "sub": (gn.sub, away_from_zero, away_from_zero),
    "mul": (gn.mul, away_from_zero, away_from_zero),
    "div": (gn.div, away_from_zero, away_from_zero),
    "pow": (gn.pow, positive, away_from_zero),
    # a and b drawn from interleaved grids: |a - b| >= 0.1, so no tie in maximum/minimum
    "maximum": (gn.maximum, lambda r, s: grid(r, s), lambda r, s: grid(r, s) + 0.1),
    "minimum": (gn.minimum, lambda r, s: grid(r, s), lambda r, s: grid(r, s) + 0.1),
}


def grid(rng, shape):
    return rng.integers(-5, 5, shape) * 0.2


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gradient_with_broadcasting(name, shapes):
    fn, sample_a, sample_b = BINARY[name]
    rng = rng_for(2)
    a_val, b_val = sample_a(rng, shapes[0]), sample_b(rng, shapes[1])
    a, b = inp("a", a_val), inp("b", b_val)
    assert_grads_match(weighted_sum(fn(a, b)), [a, b], {"a": a_val, "b": b_val})


def test_binary_gradient_with_params_and_python_scalars():
    rng = rng_for(3)
    W = gn.param("W", away_from_zero(rng, (2, 3)))
    c = gn.param("c", positive(rng, (3,)))
    y = 2.5 * W / c - 1.5 + c ** 3 + W * W
    assert W.dtype == np.float64
    assert_grads_match(weighted_sum(y), [W, c], {})


def test_step_and_sign_have_zero_gradient():
    x_val = away_from_zero(rng_for(4), (5,))
    x = inp("x", x_val)
    g_step, g_sign = gn.compile(gn.grad(gn.sum(gn.step(x) + gn.sign(x)), [x, x]),
                                backend="numpy")(x=x_val)
    np.testing.assert_array_equal(g_step, np.zeros(5))
    np.testing.assert_array_equal(g_sign, np.zeros(5))


def test_relu_gradient_at_zero_is_zero():
    x = gn.input("x", (3,), dtype="float64")
    g = gn.compile(gn.grad(gn.sum(gn.relu(x)), x), backend="numpy")(x=np.array([-1., 0., 2.]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1), -1])
@pytest.mark.parametrize("reduce", [gn.sum, gn.mean, gn.max], ids=lambda f: f.__name__)
def test_reduction_gradient(reduce, axis, keepdims):
    x_val = distinct(rng_for(5), (3, 4))
    x = inp("x", x_val)
    y = reduce(x, axis=axis, keepdims=keepdims)
    assert_grads_match(weighted_sum(y), [x], {"x": x_val})


def test_reduction_gradient_on_rank_3():
    x_val = distinct(rng_for(6), (2, 3, 4))
    x = inp("x", x_val)
    y = weighted_sum(gn.max(x, axis=(0, 2)) * gn.mean(x, axis=(0, 2))) \
        + weighted_sum(gn.sum(x, axis=1, keepdims=True))
    assert_grads_match(y, [x], {"x": x_val})


def test_max_gradient_goes_to_the_first_winner():
    x = gn.input("x", (2, 3), dtype="float64")
    g = gn.compile(gn.grad(gn.sum(gn.max(x, axis=1)), x), backend="numpy")(
        x=np.array([[1.0, 3.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_array_equal(g, [[0, 1, 0], [1, 0, 0]])


# ---------------------------------------------------------------------------------------
# Matmul and shape ops
# ---------------------------------------------------------------------------------------

def test_matmul_gradient():
    rng = rng_for(7)
    a_val, b_val = rng.normal(size=(3, 4)), rng.normal(size=(4, 5))
    a, b = inp("a", a_val), inp("b", b_val)
    assert_grads_match(weighted_sum(a @ b), [a, b], {"a": a_val, "b": b_val})


@pytest.mark.parametrize("axes", [None, (1, 2, 0), (0, 2, 1)], ids=str)
def test_transpose_gradient(axes):
    x_val = rng_for(8).normal(size=(2, 3, 4))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.transpose(x, axes)), [x], {"x": x_val})


@pytest.mark.parametrize("shape", [(6, 4), (4, -1), (24,), (2, 2, 3, 2)], ids=str)
def test_reshape_gradient(shape):
    x_val = rng_for(9).normal(size=(2, 3, 4))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.reshape(x, shape)), [x], {"x": x_val})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_gradient(axis):
    rng = rng_for(10)
    shapes = [(2, 3), (2, 3), (2, 3)]
    shapes = [tuple(d + k if i == axis % 2 else d for i, d in enumerate(s))
              for k, s in enumerate(shapes)]
    vals = [rng.normal(size=s) for s in shapes]
    xs = [inp(f"x{k}", v) for k, v in enumerate(vals)]
    feeds = {f"x{k}": v for k, v in enumerate(vals)}
    assert_grads_match(weighted_sum(gn.concat(xs, axis=axis)), xs, feeds)


def test_concat_of_one_input_used_twice_sums_both_adjoints():
    x_val = rng_for(11).normal(size=(2, 3))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.concat([x, gn.tanh(x), x], axis=1)), [x], {"x": x_val})


@pytest.mark.parametrize("axis,start,stop", [(0, 1, 3), (1, 0, 2), (1, 2, 5)])
def test_slice_axis_gradient(axis, start, stop):
    x_val = rng_for(12).normal(size=(4, 5))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.slice_axis(x, axis, start, stop)), [x], {"x": x_val})


def test_flatten_gradient():
    x_val = rng_for(13).normal(size=(2, 3, 2, 2))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.flatten(x)), [x], {"x": x_val})


# ---------------------------------------------------------------------------------------
# Softmax and losses
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("fn", [gn.softmax, gn.log_softmax], ids=lambda f: f.__name__)
def test_softmax_gradient(fn, axis):
    x_val = rng_for(14).normal(size=(3, 4)) * 2
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(fn(x, axis=axis)), [x], {"x": x_val})


@pytest.mark.parametrize("target_shape", [(4, 3), (3,), (4, 1)], ids=str)
def test_mse_gradient_with_broadcast_target(target_shape):
    rng = rng_for(15)
    p_val, t_val = rng.normal(size=(4, 3)), rng.normal(size=target_shape)
    p, t = inp("p", p_val), inp("t", t_val)
    loss = gn.mse(p, t)
    assert_grads_match(loss, [p, t], {"p": p_val, "t": t_val})
    value = gn.compile(loss, backend="numpy")(p=p_val, t=t_val)
    np.testing.assert_allclose(value, np.mean((p_val - t_val) ** 2), rtol=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_cross_entropy_gradient(from_logits):
    rng = rng_for(16)
    p_val = rng.normal(size=(5, 2)) * 2 if from_logits else rng.uniform(0.1, 0.9, (5, 2))
    y_val = rng.uniform(0.0, 1.0, (5, 2))
    p, y = inp("p", p_val), inp("y", y_val)
    loss = gn.binary_cross_entropy(p, y, from_logits=from_logits)
    assert_grads_match(loss, [p, y], {"p": p_val, "y": y_val})
    prob = 1 / (1 + np.exp(-p_val)) if from_logits else p_val
    expected = -np.mean(y_val * np.log(prob) + (1 - y_val) * np.log(1 - prob))
    np.testing.assert_allclose(gn.compile(loss, backend="numpy")(p=p_val, y=y_val), expected,
                               rtol=1e-12)


def test_softmax_cross_entropy_gradient_with_int_labels():
    rng = rng_for(17)
    z_val, labels = rng.normal(size=(5, 4)) * 2, np.array([0, 3, 1, 3, 2])
    z, y = inp("z", z_val), gn.input("y", (5,), dtype="int64")
    loss = gn.softmax_cross_entropy(z, y)
    assert_grads_match(loss, [z], {"z": z_val, "y": labels})
    log_p = z_val - np.log(np.exp(z_val).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(gn.compile(loss, backend="numpy")(z=z_val, y=labels),
                               -np.mean(log_p[np.arange(5), labels]), rtol=1e-12)


def test_softmax_cross_entropy_gradient_with_probability_labels():
    rng = rng_for(18)
    z_val = rng.normal(size=(5, 4)) * 2
    y_val = rng.uniform(0.1, 1.0, (5, 4))
    y_val /= y_val.sum(axis=1, keepdims=True)
    z, y = inp("z", z_val), inp("y", y_val)
    assert_grads_match(gn.softmax_cross_entropy(z, y), [z, y], {"z": z_val, "y": y_val})


# ---------------------------------------------------------------------------------------
# Convolution and pooling
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("image,kernel", [((2, 5, 5, 2), (3, 3, 2, 3)),
                                          ((1, 6, 7, 1), (2, 3, 1, 2))], ids=str)
def test_conv2d_gradient_wrt_input_and_kernel(image, kernel, stride, padding):
    rng = rng_for(19)
    x_val, k_val = rng.normal(size=image), rng.normal(size=kernel)
    x = inp("x", x_val)
    k = gn.param("k", k_val)
    y = gn.conv2d(x, k, stride=stride, padding=padding)
    assert_grads_match(weighted_sum(y), [x, k], {"x": x_val})


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 1), (3, 2), (2, 1)])
def test_max_pool2d_gradient(size, stride):
    x_val = distinct(rng_for(20), (2, 5, 5, 2))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.max_pool2d(x, size, stride)), [x], {"x": x_val})


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 1), (3, 2)])
def test_avg_pool2d_gradient(size, stride):
    x_val = rng_for(21).normal(size=(2, 5, 5, 2))
    x = inp("x", x_val)
    assert_grads_match(weighted_sum(gn.avg_pool2d(x, size, stride)), [x], {"x": x_val})


def test_check_grad_reports_a_wrong_gradient_rule(monkeypatch):
    """The checker itself can fail: a square whose rule forgets the factor 2 is caught."""
    monkeypatch.setattr(OPS["square"], "vjp", lambda g, out, x: (lambda: g * x,))
    x_val = np.array([0.5, -1.5, 2.0])
    x = inp("x", x_val)
    errors = gn.testing.check_grad(gn.sum(gn.square(x)), [x], {"x": x_val})
    assert errors["x"] > 0.4


# ---------------------------------------------------------------------------------------
# Gradients of gradients
# ---------------------------------------------------------------------------------------

def _sig(x):
    return 1 / (1 + np.exp(-x))


SECOND = {  # op, its second derivative in closed form, where to sample
    "tanh": (gn.tanh, lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2), away_from_zero),
    "sigmoid": (gn.sigmoid, lambda x: _sig(x) * (1 - _sig(x)) * (1 - 2 * _sig(x)),
                away_from_zero),
    "exp": (gn.exp, np.exp, away_from_zero),
    "log": (gn.log, lambda x: -1 / x ** 2, positive),
    "sqrt": (gn.sqrt, lambda x: -0.25 * x ** -1.5, positive),
    "softplus": (gn.softplus, lambda x: _sig(x) * (1 - _sig(x)), away_from_zero),
    "elu": (lambda x: gn.elu(x, alpha=0.7), lambda x: np.where(x > 0, 0.0, 0.7 * np.exp(x)),
            away_from_zero),
    "square": (gn.square, lambda x: np.full_like(x, 2.0), away_from_zero),
    "pow": (lambda x: x ** 3, lambda x: 6 * x, away_from_zero),
    "product": (lambda x: x * x * x, lambda x: 6 * x, away_from_zero),
    "quotient": (lambda x: 1 / x, lambda x: 2 / x ** 3, away_from_zero),
}


@pytest.mark.parametrize("name", sorted(SECOND))
def test_second_derivative_of_elementwise_op(name):
    fn, second, sample = SECOND[name]
    x_val = sample(rng_for(30), (6,))
    x = inp("x", x_val)
    first = gn.grad(gn.sum(fn(x)), x)
    hessian_diagonal = gn.grad(gn.sum(first), x)
    value = gn.compile(hessian_diagonal, backend="numpy")(x=x_val)
    np.testing.assert_allclose(value, second(x_val), rtol=1e-10, atol=1e-12)
    # and against finite differences of the first gradient
    assert_grads_match(weighted_sum(first), [x], {"x": x_val})


def test_mixed_second_derivatives_of_a_product_and_a_power():
    rng = rng_for(31)
    a_val, b_val = positive(rng, (4,)), away_from_zero(rng, (4,))
    a, b = inp("a", a_val), inp("b", b_val)
    y = gn.sum(a * a * b + a ** b)
    ga, gb = gn.grad(y, [a, b])
    d2_ab, d2_bb = gn.grad(gn.sum(ga), b), gn.grad(gn.sum(gb), b)
    got_ab, got_bb = gn.compile([d2_ab, d2_bb], backend="numpy")(a=a_val, b=b_val)
    # d/db d/da (a^2 b + a^b) = 2a + a^(b-1) (1 + b log a);  d2/db2 a^b = a^b log(a)^2
    np.testing.assert_allclose(got_ab, 2 * a_val + a_val ** (b_val - 1)
                               * (1 + b_val * np.log(a_val)), rtol=1e-10)
    np.testing.assert_allclose(got_bb, a_val ** b_val * np.log(a_val) ** 2, rtol=1e-10)


def test_second_derivative_through_an_mlp_matches_finite_differences():
    rng = rng_for(32)
    x_val, labels = rng.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    x, y = inp("x", x_val), gn.input("y", (4,), dtype="int64")
    W1, W2 = gn.param("W1", rng.normal(size=(3, 5))), gn.param("W2", rng.normal(size=(5, 2)))
    loss = gn.softmax_cross_entropy(gn.tanh(x @ W1) @ W2, y)
    gW1 = gn.grad(loss, W1)
    assert_grads_match(weighted_sum(gW1), [W1, W2], {"x": x_val, "y": labels})


# ---------------------------------------------------------------------------------------
# Node sharing in derivative graphs
# ---------------------------------------------------------------------------------------

def test_gradient_of_the_lecture_graph_keeps_3x3_as_one_node():
    x1, x2, x3 = gn.input("x1", ()), gn.input("x2", ()), gn.input("x3", ())
    f1 = 4 * x2 + x2 ** 2 + 3 * x3
    f2 = x1 * x2 + 3 * x3
    y = f1 + f2
    forward = gn.Graph([y]).lint()
    grads = gn.grad(y, [x1, x2, x3])
    both = gn.Graph([y] + grads).lint()  # lint: no two nodes with the same op and inputs
    assert len(forward.nodes) == 14
    assert all(node in both.nodes for node in forward.nodes)
    times_x3 = [n for n in both.nodes if n.op == "mul" and x3 in n.inputs]
    assert len(times_x3) == 1
    # Factors of 1 vanish and scalar constants fold as the graph is built, so the gradient
    # reads like the lecture slide: dy/dx1 = x2 (the input itself), dy/dx3 = 6 (one new
    # constant: 3*x3 receives two adjoints of 1), dy/dx2 = (x1 + 2*x2) + 4 (three new
    # nodes: 2*x2 from x2**2, and two adds). 4 new nodes in all.
    assert grads[0] is x2
    assert grads[2].op == "const" and float(grads[2].value) == 6.0
    assert len(both.nodes) == 14 + 4
    values = gn.compile(grads, backend="numpy")(x1=1.0, x2=2.0, x3=2.0)
    assert [float(v) for v in values] == [2.0, 4 + 2 * 2.0 + 1.0, 6.0]


def test_mlp_gradient_graph_reuses_forward_activations():
    x = gn.input("x", (None, 3), dtype="float64")
    t = gn.input("t", (None, 2), dtype="float64")
    W1 = gn.param("W1", shape=(3, 5), seed=0, dtype="float64")
    b1 = gn.param("b1", np.zeros(5))
    W2 = gn.param("W2", shape=(5, 2), seed=1, dtype="float64")
    b2 = gn.param("b2", np.zeros(2))
    hidden = gn.sigmoid(x @ W1 + b1)
    out = gn.sigmoid(hidden @ W2 + b2)
    loss = gn.mse(out, t)
    forward = gn.Graph([loss])
    both = gn.Graph([loss] + gn.grad(loss, [W1, b1, W2, b2])).lint()
    new = [n for n in both.nodes if n not in forward.nodes]
    assert not any(n.op == "sigmoid" for n in new)  # activations are never recomputed
    users_of_hidden = [n.op for n in new if hidden in n.inputs]
    users_of_out = [n.op for n in new if out in n.inputs]
    assert sorted(users_of_hidden) == ["mul", "sub", "transpose"]  # h(1-h) and h^T for dW2
    assert sorted(users_of_out) == ["mul", "sub", "sub"]  # out(1-out) and out - t
    # 13 forward nodes; 20 backward: mse (2, out-t, *, 1/count, *: the seed 1 times 2
    # folds to 2); sigmoid (*out, 1, 1-out, *) then (*out, 1-out, *); W2^T and a matmul for
    # dh; h^T and a matmul for dW2; a sum over the batch axis for each bias (no reshape);
    # x^T and a matmul for dW1 (x itself needs no gradient).
    assert len(forward.nodes) == 13
    assert len(both.nodes) == 13 + 20
    bias_grads = [n for n in new if n.op == "sum" and n.sym_shape in ((5,), (2,))]
    assert [n.attr("keepdims") for n in bias_grads] == [False, False]
    assert not any(n.op == "reshape" for n in new)


# ---------------------------------------------------------------------------------------
# Eager and graph gradients agree
# ---------------------------------------------------------------------------------------

def mlp_model(x, W1, b1, W2, b2, labels):
    return gn.softmax_cross_entropy(gn.tanh(x @ W1 + b1) @ W2 + b2, labels)


def conv_model(images, kernel, W, labels):
    features = gn.max_pool2d(gn.relu(gn.conv2d(images, kernel, stride=1, padding="same")), 2)
    return gn.softmax_cross_entropy(gn.flatten(features) @ W, labels)


def elementwise_model(a, b, c):
    y = gn.sigmoid(a * b) + gn.exp(-a) * gn.softplus(b) / gn.sqrt(c) + gn.tanh(a - c) ** 2
    return gn.mean(y + gn.log(c) * gn.elu(b) - gn.leaky_relu(a, 0.2) + gn.maximum(a, b))


def _model_args(name):
    rng = rng_for(40)
    if name == "mlp":
        return mlp_model, [rng.normal(size=(6, 3)), rng.normal(size=(3, 4)),
                           rng.normal(size=4), rng.normal(size=(4, 3)), rng.normal(size=3),
                           np.array([0, 2, 1, 1, 0, 2])], (1, 2, 3, 4)
    if name == "conv":
        return conv_model, [rng.normal(size=(2, 6, 6, 1)), rng.normal(size=(3, 3, 1, 2)),
                            rng.normal(size=(18, 3)), np.array([2, 0])], (0, 1, 2)
    return elementwise_model, [rng.normal(size=(3, 4)), rng.normal(size=(4,)),
                               positive(rng, (3, 1))], (0, 1, 2)


@pytest.mark.parametrize("name", ["mlp", "conv", "elementwise"])
def test_eager_and_graph_gradients_agree(name):
    fn, arrays, argnums = _model_args(name)
    graph_grads = assert_eager_matches_graph(fn, arrays, argnums)
    for i, graph_g in zip(argnums, graph_grads):
        assert graph_g.shape == arrays[i].shape
        assert np.abs(graph_g).max() > 0


def assert_eager_matches_graph(fn, arrays, argnums):
    """Run `fn` eagerly with value_and_grad and as a compiled graph with gn.grad; assert the
    values and gradients agree; return the graph's gradients."""
    value, grads = gn.eager.value_and_grad(fn, argnums=argnums)(*arrays)
    inputs = [gn.input(f"arg{i}", a.shape, dtype=a.dtype.name) for i, a in enumerate(arrays)]
    loss = fn(*inputs)
    compiled = gn.compile([loss] + gn.grad(loss, [inputs[i] for i in argnums]),
                          backend="numpy")
    graph_value, *graph_grads = compiled(**{f"arg{i}": a for i, a in enumerate(arrays)})
    assert len(grads) == len(graph_grads) == len(argnums)
    np.testing.assert_allclose(value, graph_value, rtol=1e-12)
    for eager_g, graph_g in zip(grads, graph_grads):
        np.testing.assert_allclose(eager_g, graph_g, rtol=1e-12, atol=1e-14)
    return graph_grads


def test_eager_gradient_of_one_argument_is_an_array():
    value, g = gn.eager.value_and_grad(lambda x: gn.sum(x * x * 3.0))(np.array([1.0, -2.0]))
    assert float(value) == 15.0
    np.testing.assert_array_equal(g, [6.0, -12.0])


def test_eager_gradient_through_a_numpy_scalar_keeps_float64():
    """A 0-d intermediate of a VJP rule can be a NumPy float64 scalar; it must not be taken
    for a weak Python float (which would round the gradient to float32)."""
    assert gn.neg(np.float64(0.1)).dtype == np.float64
    z, t = np.array([[0.1234567891234, -2.0]]), np.array([[0.3, 0.6]])
    _, (_, g_t) = gn.eager.value_and_grad(
        lambda a, b: gn.binary_cross_entropy(a, b, from_logits=True), argnums=(0, 1))(z, t)
    np.testing.assert_allclose(g_t, -z / 2, rtol=1e-15)


def _eager_cases():
    """One small model per op family: eager and graph gradients must agree for each."""
    rng = rng_for(60)
    a, b = away_from_zero(rng, (3, 4)), away_from_zero(rng, (4,))
    cases = {f"unary-{name}": (lambda x, fn=fn: weighted_sum(fn(x)), [sample(rng, (3, 4))])
             for name, (fn, sample) in UNARY.items()}
    cases.update({f"binary-{name}": (lambda x, y, fn=fn: weighted_sum(fn(x, y)),
                                     [positive(rng, (3, 4)) if name == "pow" else a, b])
                  for name, (fn, _, _) in BINARY.items()})
    images, kernel = rng.normal(size=(2, 6, 6, 2)), rng.normal(size=(3, 3, 2, 2))
    z, labels = rng.normal(size=(3, 4)), np.array([3, 0, 1])
    cases.update({
        "reductions": (lambda x: weighted_sum(gn.max(x, axis=0, keepdims=True)
                                              * gn.mean(x, axis=1, keepdims=True)
                                              + gn.sum(x, axis=(0, 1))), [distinct(rng, (3, 4))]),
        "shapes": (lambda x: weighted_sum(gn.concat([gn.reshape(gn.transpose(x), (3, 4)),
                                                     gn.slice_axis(x, 1, 1, 3)], axis=1)),
                   [rng.normal(size=(3, 4))]),
        "conv-stride-2-same": (lambda x, k: weighted_sum(gn.conv2d(x, k, 2, "same")),
                               [images, kernel]),
        "pools": (lambda x: weighted_sum(gn.max_pool2d(x, 2)) + weighted_sum(
            gn.avg_pool2d(x, 3, 1)), [distinct(rng, (2, 6, 6, 2))]),
        "softmax": (lambda x: weighted_sum(gn.softmax(x) + gn.log_softmax(x, axis=0)), [z]),
        "losses": (lambda x, t: gn.mse(x, t) + gn.binary_cross_entropy(x, t, from_logits=True)
                   + gn.binary_cross_entropy(gn.sigmoid(x), t)
                   + gn.softmax_cross_entropy(x, gn.softmax(t)), [z, rng.uniform(0, 1, (3, 4))]),
        "int-labels": (lambda x, y: gn.softmax_cross_entropy(x, y), [z, labels]),
    })
    return cases


EAGER_CASES = _eager_cases()


@pytest.mark.parametrize("name", sorted(EAGER_CASES))
def test_eager_and_graph_gradients_agree_op_by_op(name):
    fn, arrays = EAGER_CASES[name]
    assert_eager_matches_graph(fn, arrays, [i for i, a in enumerate(arrays) if a.dtype.kind == "f"])


# ---------------------------------------------------------------------------------------
# Stability at |inputs| = 1000
# ---------------------------------------------------------------------------------------

BIG = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]])
BIG_TARGETS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
BIG_LABELS = np.array([1, 2])

def _reference_log_softmax(z):
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


STABLE = {  # loss of the big logits, its exact value from NumPy's stable logaddexp
    "sigmoid": (lambda z, t, y: gn.sum(gn.sigmoid(z)), np.sum(np.exp(-np.logaddexp(0, -BIG)))),
    "softplus": (lambda z, t, y: gn.sum(gn.softplus(z)), np.sum(np.logaddexp(0, BIG))),
    "log_softmax": (lambda z, t, y: gn.sum(gn.log_softmax(z) * t),
                    np.sum(_reference_log_softmax(BIG) * BIG_TARGETS)),
    "softmax_cross_entropy": (lambda z, t, y: gn.softmax_cross_entropy(z, y),
                              -np.mean(_reference_log_softmax(BIG)[[0, 1], BIG_LABELS])),
    "binary_cross_entropy": (lambda z, t, y: gn.binary_cross_entropy(z, t, from_logits=True),
                             np.mean(np.logaddexp(0, BIG) - BIG * BIG_TARGETS)),
}


@pytest.mark.parametrize("name", sorted(STABLE))
def test_large_inputs_give_finite_values_and_gradients(name):
    fn, expected = STABLE[name]
    z, t = inp("z", BIG), inp("t", BIG_TARGETS)
    y = gn.input("y", (2,), dtype="int64")
    loss = fn(z, t, y)
    value, g = gn.compile([loss, gn.grad(loss, z)], backend="numpy")(
        z=BIG, t=BIG_TARGETS, y=BIG_LABELS)
    eager_value, eager_g = gn.eager.value_and_grad(fn)(BIG, BIG_TARGETS, BIG_LABELS)
    for v, grad_v in ((value, g), (eager_value, eager_g)):
        assert np.isfinite(v) and np.isfinite(grad_v).all()
        np.testing.assert_allclose(v, expected, rtol=1e-12)
    np.testing.assert_allclose(g, eager_g, rtol=1e-12, atol=1e-300)


def test_large_logits_gradient_values():
    z = inp("z", BIG)
    y = gn.input("y", (2,), dtype="int64")
    g = gn.compile(gn.grad(gn.softmax_cross_entropy(z, y), z), backend="numpy")(
        z=BIG, y=BIG_LABELS)
    # row 0 predicts class 0 with certainty but the label is 1; row 1 splits 1 : e^-1
    p1 = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(g, [[0.5, -0.5, 0.0], [0.0, p1 / 2, (1 - p1) / 2 - 0.5]],
                               atol=1e-15)


# ---------------------------------------------------------------------------------------
# Error cases and seeds
# ---------------------------------------------------------------------------------------

def test_non_scalar_y_without_seed_is_a_grad_error():
    x = gn.input("x", (3,), dtype="float64")
    with pytest.raises(gn.GradError, match=r"not a scalar; pass seed= .* shape \(3,\)"):
        gn.grad(gn.tanh(x), x)


def test_seed_of_the_wrong_shape_is_a_grad_error():
    x = gn.input("x", (3,), dtype="float64")
    with pytest.raises(gn.GradError, match=r"seed must be a node of shape \(3,\)"):
        gn.grad(gn.tanh(x), x, seed=gn.const(np.ones(2)))


def test_grad_with_respect_to_an_integer_input_is_an_error():
    x = gn.input("x", (3,), dtype="float64")
    labels = gn.input("labels", (3,), dtype="int64")
    loss = gn.sum(x * gn.cast(labels, "float64"))
    with pytest.raises(gn.GradError, match=r"'labels'.*int64 is not float"):
        gn.grad(loss, labels)
    with pytest.raises(gn.GradError, match="argument 1 has dtype int64"):
        gn.eager.value_and_grad(lambda a, b: gn.sum(a * b), argnums=1)(
            np.ones(3), np.arange(3))


def test_wrt_not_reached_gets_zeros_of_its_shape():
    x = gn.input("x", (3,), dtype="float64")
    W = gn.param("W", np.ones((2, 4)))
    loss = gn.sum(gn.square(x))
    gx, gW = gn.grad(loss, [x, W])
    assert gW.shape == (2, 4)
    got_x, got_W = gn.compile([gx, gW], backend="numpy")(x=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(got_W, np.zeros((2, 4)))
    np.testing.assert_array_equal(got_x, [2.0, 4.0, 6.0])
    _, (eager_gx, eager_gW) = gn.eager.value_and_grad(
        lambda a, b: gn.sum(gn.square(a)), argnums=(0, 1))(np.ones(3), np.ones((2, 4)))
    np.testing.assert_array_equal(eager_gW, np.zeros((2, 4)))


def test_seed_gives_a_vector_jacobian_product_for_a_non_scalar_y():
    x_val, s_val = np.array([0.5, -1.0, 2.0]), np.array([1.0, 10.0, -3.0])
    x, s = inp("x", x_val), inp("s", s_val)
    vjp = gn.grad(gn.tanh(x), x, seed=s)
    got = gn.compile(vjp, backend="numpy")(x=x_val, s=s_val)
    np.testing.assert_allclose(got, s_val * (1 - np.tanh(x_val) ** 2), rtol=1e-14)


def test_wrt_as_tuple_returns_a_tuple():
    x = gn.input("x", (2,), dtype="float64")
    grads = gn.grad(gn.sum(x * x), (x, x))
    assert isinstance(grads, tuple) and grads[0] is grads[1]


# ---------------------------------------------------------------------------------------
# dtypes and symbolic dims
# ---------------------------------------------------------------------------------------

def test_gradients_of_a_float32_graph_stay_float32():
    x = gn.input("x", (None, 3))
    labels = gn.input("labels", (None,), dtype="int64")
    W = gn.param("W", shape=(3, 4), seed=0)
    b = gn.param("b", np.zeros(4, np.float32))
    z = gn.elu(x @ W + b)
    loss = gn.softmax_cross_entropy(gn.softplus(z) + gn.sqrt(gn.sigmoid(z)), labels) \
        + gn.mse(gn.tanh(z), 0.5) + gn.mean(gn.max(gn.log_softmax(z), axis=1))
    grads = gn.grad(loss, [W, b])
    assert {n.dtype.name for n in gn.Graph(grads).nodes if n.op != "input"} == {"float32"}
    gW, gb = gn.compile(grads, backend="numpy")(
        x=np.ones((2, 3), np.float32), labels=np.array([0, 3]))
    assert gW.dtype == gb.dtype == np.float32 and gW.shape == (3, 4) and gb.shape == (4,)


def test_gradient_with_a_symbolic_batch_dim():
    rng = rng_for(50)
    x = gn.input("x", (None, 3), dtype="float64")
    W, b = gn.param("W", rng.normal(size=(3, 2))), gn.param("b", rng.normal(size=2))
    loss = gn.mean(gn.tanh(x @ W + b))
    for batch in (1, 4):
        assert_grads_match(loss, [W, b], {"x": rng.normal(size=(batch, 3))})


# -- ops applied alike (registry.applied_alike): gn.grad and the optimizers make each node
# of a repeated pattern from what the first one found; the graph is the one made without --

def _graph_text(roots):
    """Every node of the graph reachable from `roots`, in order: op, attrs, inputs (by
    place), shape, dtype and name."""
    from graphnn.graph import topological_order
    order = topological_order(roots)
    place = {id(n): k for k, n in enumerate(order)}
    return [(n.op, repr(n._attrs), [place[id(i)] for i in n.inputs],
             gn.shapes.format_shape(n.sym_shape), str(n.dtype), n.name) for n in order]


def _residual_training_graph(blocks, width=6):
    rng = rng_for(3)
    x = gn.input("x", (None, width), dtype="float32")
    y = gn.input("y", (None,), dtype="int64")
    params, h = [], x
    for k in range(blocks):
        W = gn.param(f"W{k}", rng.normal(size=(width, width)).astype(np.float32) * 0.3)
        b = gn.param(f"b{k}", rng.normal(size=width).astype(np.float32) * 0.1)
        params += [W, b]
        h = h + gn.relu(h @ W + b) * 0.5 - 0.0 * h  # (Python numbers: constants by value)
    Wo = gn.param("Wo", rng.normal(size=(width, 3)).astype(np.float32))
    params.append(Wo)
    loss = gn.softmax_cross_entropy(h @ Wo, y)
    updates = gn.optim.SGD(lr=0.1, weight_decay=1e-3).updates(loss, params)
    return loss, params, updates


@pytest.mark.parametrize("blocks", [1, 5])
def test_grad_makes_the_same_graph_with_and_without_the_alike_memo(monkeypatch, blocks):
    import graphnn.registry as registry
    made = []
    remember = registry._Alike.node
    monkeypatch.setattr(registry._Alike, "node",
                        lambda self, *a: made.append(a[0]) or remember(self, *a))
    loss, params, updates = _residual_training_graph(blocks)
    with_memo = _graph_text([loss] + [updates[p] for p in params])
    assert len(made) >= 10 * (blocks - 1)  # (the memo was used: each block after the first)
    monkeypatch.setattr(registry, "_alike_key", lambda *a: None)  # (never looked up)
    loss, params, updates = _residual_training_graph(blocks)
    without = _graph_text([loss] + [updates[p] for p in params])
    assert with_memo == without
    assert len(with_memo) > 30 * blocks


def test_grad_with_the_alike_memo_computes_the_values_it_computed_without(monkeypatch):
    import graphnn.registry as registry
    feeds = {"x": rng_for(4).normal(size=(5, 6)).astype(np.float32),
             "y": np.array([0, 2, 1, 1, 0])}
    results = []
    for memo in (True, False):
        if not memo:
            monkeypatch.setattr(registry, "_alike_key", lambda *a: None)
        loss, params, updates = _residual_training_graph(4)
        f = gn.compile(loss, updates=updates, backend="numpy")
        losses = [float(f(**feeds)) for _ in range(2)]
        results.append((losses, [p.value.copy() for p in params]))
    (l1, p1), (l2, p2) = results
    assert l1 == l2 and l1[1] < l1[0]
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))


def test_applied_alike_tells_numbers_apart_by_type_and_sign():
    from graphnn.registry import applied_alike
    x = gn.input("x", (3,), dtype="float64")
    with applied_alike():
        nodes = [x * 0.0, x * -0.0, x * 1, x * 1.0, x + 0, x * 2, x * 2.0]
    assert nodes[2] is x and nodes[3] is x and nodes[4] is x  # (identities, as without)
    zero, minus_zero = nodes[0].inputs[1].value, nodes[1].inputs[1].value
    assert np.signbit(minus_zero) and not np.signbit(zero)
    assert nodes[5] is nodes[6]  # (2 and 2.0 become the same float64 constant)
    assert nodes[5].inputs[1].value == 2.0 and nodes[5].shape == (3,)


def test_applied_alike_forgets_a_shape_whose_symbols_were_unified_since():
    from graphnn.registry import applied_alike
    # a and c share one named batch symbol; b has a symbol of its own
    a = gn.input("a", ("alike_test_batch", 2), dtype="float64")
    c = gn.input("c", ("alike_test_batch", 2), dtype="float64")
    b = gn.input("b", (None, 2), dtype="float64")
    with applied_alike():
        first = gn.relu(a)  # (its shape rule gives the batch symbol's representative)
        assert first.sym_shape[0] is gn.shapes.resolve(a.sym_shape[0])
        a + b  # unifies the batch symbol with b's: the representative changes
        fresh = gn.relu(c)  # (same key as relu(a): the shape must not be the old one)
    assert gn.shapes.resolve(a.sym_shape[0]) is not first.sym_shape[0]
    assert fresh.sym_shape[0] is gn.shapes.resolve(c.sym_shape[0])
    assert fresh.sym_shape[0] is gn.shapes.resolve(b.sym_shape[0])
