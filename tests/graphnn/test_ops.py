"""Every public op against an independent NumPy computation, on each backend and in eager mode."""
import math

import numpy as np
import pytest

import graphnn as gn
from helpers import assert_op_matches

rng = np.random.default_rng(1234)


def rand(*shape, dtype="float32", low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# Elementwise binary ops, with broadcasting, float64 and a symbolic batch
# ---------------------------------------------------------------------------------------

BINARY = {
    "add": (gn.add, lambda a, b: a + b),
    "sub": (gn.sub, lambda a, b: a - b),
    "mul": (gn.mul, lambda a, b: a * b),
    "div": (gn.div, lambda a, b: a / b),
    "pow": (gn.pow, lambda a, b: np.exp(b * np.log(a))),
    "maximum": (gn.maximum, lambda a, b: np.where(a >= b, a, b)),
    "minimum": (gn.minimum, lambda a, b: np.where(a <= b, a, b)),
}

# (shape of a, shape of b, declared shape of a, declared shape of b, dtype)
BINARY_CASES = {
    "same": ((3, 4), (3, 4), None, None, "float32"),
    "column_row": ((3, 1), (4,), None, None, "float32"),
    "bias_add": ((6, 5), (5,), (None, 5), None, "float32"),
    "scalar_rhs": ((2, 3), (), None, None, "float32"),
    "float64": ((3, 1), (4,), None, None, "float64"),
    "float64_batch": ((7, 2), (7, 2), ("batch_ops", 2), ("batch_ops", 2), "float64"),
}


@pytest.mark.parametrize("case", list(BINARY_CASES))
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op(op, case):
    fn, ref = BINARY[op]
    shape_a, shape_b, decl_a, decl_b, dtype = BINARY_CASES[case]
    # positive operands keep pow and div well defined
    feeds = {"a": rand(*shape_a, dtype=dtype, low=0.5, high=2.0),
             "b": rand(*shape_b, dtype=dtype, low=0.5, high=2.0)}
    shapes = {k: v for k, v in (("a", decl_a), ("b", decl_b)) if v is not None}
    assert_op_matches(fn, ref, feeds, shapes=shapes)


def test_maximum_minimum_on_ties_and_negative_values():
    feeds = {"a": np.array([-1.0, 2.0, 3.0, -4.0], np.float32),
             "b": np.array([-2.0, 2.0, 5.0, -3.0], np.float32)}
    assert_op_matches(gn.maximum, lambda a, b: np.array([-1.0, 2.0, 5.0, -3.0]), feeds)
    assert_op_matches(gn.minimum, lambda a, b: np.array([-2.0, 2.0, 3.0, -4.0]), feeds)


OPERATORS = {
    "x + y": (lambda x, y: x + y, lambda x, y: x + y),
    "x - y": (lambda x, y: x - y, lambda x, y: x - y),
    "x * y": (lambda x, y: x * y, lambda x, y: x * y),
    "x / y": (lambda x, y: x / y, lambda x, y: x / y),
    "x ** y": (lambda x, y: x ** y, lambda x, y: np.exp(y * np.log(x))),
    "2 + x": (lambda x, y: 2 + x, lambda x, y: 2 + x),
    "3 - x": (lambda x, y: 3 - x, lambda x, y: 3 - x),
    "0.5 * x": (lambda x, y: 0.5 * x, lambda x, y: 0.5 * x),
    "1 / x": (lambda x, y: 1 / x, lambda x, y: 1 / x),
    "2 ** x": (lambda x, y: 2 ** x, lambda x, y: np.exp(x * np.log(2.0))),
    "x ** 2": (lambda x, y: x ** 2, lambda x, y: x * x),
    "-x": (lambda x, y: -x, lambda x, y: 0 - x),
}


@pytest.mark.parametrize("expr", list(OPERATORS))
def test_python_operators_and_reflected_forms(expr):
    build, ref = OPERATORS[expr]
    feeds = {"x": rand(3, 4, low=0.5, high=2.0), "y": rand(3, 4, low=0.5, high=2.0)}
    # Python numbers are weak: they take the float32 of the node, never promote it
    assert_op_matches(build, ref, feeds)


def test_matmul_operator_on_nodes():
    feeds = {"x": rand(5, 3), "w": rand(3, 2)}
    assert_op_matches(lambda x, w: x @ w, lambda x, w: np.einsum("ik,kj->ij", x, w), feeds,
                      shapes={"x": (None, 3)})


# ---------------------------------------------------------------------------------------
# Unary ops and activations
# ---------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "neg": (gn.neg, lambda x: -x, None),
    "exp": (gn.exp, lambda x: np.e ** x, None),
    "log": (gn.log, lambda x: np.log(x), (0.1, 3.0)),
    "sqrt": (gn.sqrt, lambda x: x ** 0.5, (0.0, 3.0)),
    "abs": (gn.abs, lambda x: np.where(x < 0, -x, x), None),
    "square": (gn.square, lambda x: x * x, None),
    "sigmoid": (gn.sigmoid, _sigmoid, None),
    "tanh": (gn.tanh, lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1), None),
    "relu": (gn.relu, lambda x: np.where(x > 0, x, 0.0), None),
    "leaky_relu": (gn.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), None),
    "leaky_relu_alpha": (lambda x: gn.leaky_relu(x, alpha=0.2),
                         lambda x: np.where(x > 0, x, 0.2 * x), None),
    "elu": (gn.elu, lambda x: np.where(x > 0, x, np.exp(x) - 1), None),
    "elu_alpha": (lambda x: gn.elu(x, alpha=0.5),
                  lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), None),
    "softplus": (gn.softplus, lambda x: np.log(1 + np.exp(x)), None),
    "step": (gn.step, lambda x: (x > 0) * 1.0, None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_op(op, dtype):
    fn, ref, bounds = UNARY[op]
    low, high = bounds or (-3.0, 3.0)
    x = rand(4, 5, dtype=dtype, low=low, high=high)
    x[0, :2] = [max(low, 0.0), low]  # the kink at 0 (relu'(0), step(0) = 0) and the bound
    assert_op_matches(fn, ref, {"x": x}, shapes={"x": (None, 5)})


def test_sigmoid_and_softplus_are_stable_for_large_inputs():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32)
    assert_op_matches(gn.sigmoid, lambda x: np.array([0.0, math.exp(-50), 0.5, 1.0, 1.0]),
                      {"x": x}, atol=1e-30)
    assert_op_matches(gn.softplus, lambda x: np.array([0.0, math.exp(-50), math.log(2.0),
                                                       50.0, 1000.0]), {"x": x}, atol=1e-30)


def test_unary_op_keeps_integer_dtype_where_defined():
    x = np.array([[-3, 0, 2]], np.int64)
    assert_op_matches(gn.abs, lambda x: np.array([[3, 0, 2]]), {"x": x}, dtype="int64")
    assert_op_matches(gn.square, lambda x: np.array([[9, 0, 4]]), {"x": x}, dtype="int64")
    assert_op_matches(gn.neg, lambda x: np.array([[3, 0, -2]]), {"x": x}, dtype="int64")


def test_clip():
    x = np.array([[-2.0, -0.5, 0.0, 0.7, 3.0]], np.float32)
    assert_op_matches(lambda x: gn.clip(x, -1.0, 0.5),
                      lambda x: np.array([[-1.0, -0.5, 0.0, 0.5, 0.5]]), {"x": x})


@pytest.mark.parametrize("src, dst", [("float32", "float64"), ("float64", "float32"),
                                      ("int64", "float32"), ("float32", "int32")])
def test_cast(src, dst):
    x = np.array([[-1.75, 0.0, 2.5, 7.25]]).astype(src)
    expected = {"float64": x.astype(np.float64), "float32": x.astype(np.float64),
                "int32": np.array([[-1, 0, 2, 7]])}[dst]
    node = assert_op_matches(lambda x: gn.cast(x, dst), lambda x: expected, {"x": x}, dtype=dst)
    assert node.op == "cast"


# ---------------------------------------------------------------------------------------
# Softmax family
# ---------------------------------------------------------------------------------------

def _softmax_ref(x, axis):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(axis, dtype):
    x = rand(4, 3, dtype=dtype)
    assert_op_matches(lambda x: gn.softmax(x, axis=axis), lambda x: _softmax_ref(x, axis),
                      {"x": x})
    assert_op_matches(lambda x: gn.log_softmax(x, axis=axis),
                      lambda x: np.log(_softmax_ref(x, axis)), {"x": x})


def test_softmax_default_axis_with_symbolic_batch_and_large_logits():
    x = np.array([[1000.0, 1000.0, 999.0], [-5.0, 0.0, 5.0]], np.float32)
    shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    assert_op_matches(gn.softmax, lambda x: _softmax_ref(shifted, 1), {"x": x},
                      shapes={"x": (None, 3)})
    assert_op_matches(gn.log_softmax, lambda x: np.log(_softmax_ref(shifted, 1)), {"x": x},
                      shapes={"x": (None, 3)}, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Matmul and shape ops
# ---------------------------------------------------------------------------------------

def _matmul_ref(a, b):
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul(dtype):
    feeds = {"a": rand(6, 4, dtype=dtype), "b": rand(4, 3, dtype=dtype)}
    node = assert_op_matches(gn.matmul, _matmul_ref, feeds, shapes={"a": (None, 4)})
    assert node.shape == (None, 3)


def test_matmul_then_bias_add_is_a_dense_layer():
    feeds = {"x": rand(5, 4), "w": rand(4, 3), "b": rand(3)}
    assert_op_matches(lambda x, w, b: gn.add(gn.matmul(x, w), b),
                      lambda x, w, b: _matmul_ref(x, w) + b, feeds, shapes={"x": (None, 4)})


@pytest.mark.parametrize("axes, ref_axes", [(None, (2, 1, 0)), ((0, 2, 1), (0, 2, 1)),
                                            ((1, 0, 2), (1, 0, 2))])
def test_transpose(axes, ref_axes):
    x = rand(2, 3, 4, dtype="float64")
    def ref(x):
        out = np.empty(tuple(x.shape[a] for a in ref_axes))
        for idx in np.ndindex(x.shape):
            out[tuple(idx[a] for a in ref_axes)] = x[idx]
        return out
    assert_op_matches(lambda x: gn.transpose(x, axes), ref, {"x": x})


def test_transpose_property_T():
    x = rand(2, 5)
    assert_op_matches(lambda x: x.T, lambda x: np.array([list(col) for col in zip(*x)]),
                      {"x": x})


@pytest.mark.parametrize("shape, target", [((2, 3, 4), (6, 4)), ((2, 3, 4), (4, -1)),
                                           ((2, 3, 4), (24,)), ((6,), (2, 1, 3))])
def test_reshape(shape, target):
    x = rand(*shape)
    flat = [float(v) for v in x.astype(np.float64).ravel()]
    def ref(x):
        size = len(flat)
        dims = [d if d != -1 else size // -math.prod(target) for d in target]
        return np.array(flat).reshape(dims)
    assert_op_matches(lambda x: gn.reshape(x, target), ref, {"x": x})


def test_reshape_keeps_a_symbolic_batch():
    x = rand(3, 2, 4)
    node = assert_op_matches(lambda x: gn.reshape(x, (-1, 8)), lambda x: x.reshape(3, 8),
                             {"x": x}, shapes={"x": (None, 2, 4)})
    assert node.shape == (None, 8)


def test_flatten_keeps_the_batch_axis():
    x = rand(2, 3, 2, 2)
    def ref(x):
        return np.array([[x[n, h, w, c] for h in range(3) for w in range(2) for c in range(2)]
                         for n in range(2)])
    node = assert_op_matches(gn.flatten, ref, {"x": x}, shapes={"x": (None, 3, 2, 2)})
    assert node.shape == (None, 12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    feeds = {"a": rand(2, 3), "b": rand(2, 3), "c": rand(2, 3)}
    def ref(a, b, c):
        if axis == 0:
            return np.array(list(a) + list(b) + list(c))
        return np.array([list(a[i]) + list(b[i]) + list(c[i]) for i in range(2)])
    assert_op_matches(lambda a, b, c: gn.concat([a, b, c], axis=axis), ref, feeds)


def test_concat_along_features_with_symbolic_batch_and_mixed_widths():
    feeds = {"a": rand(4, 2), "b": rand(4, 3, dtype="float64")}
    node = assert_op_matches(lambda a, b: gn.concat([a, b], axis=1),
                             lambda a, b: np.hstack([a, b]), feeds,
                             shapes={"a": ("n_concat", 2), "b": ("n_concat", 3)})
    assert node.shape == (None, 5)
    assert node.dtype == np.float64


@pytest.mark.parametrize("axis, start, stop", [(0, 1, 3), (1, 0, 2), (1, 3, 4), (-1, 1, 4)])
def test_slice_axis(axis, start, stop):
    x = rand(3, 4)
    def ref(x):
        rows = [[x[i, j] for j in range(4) if (axis == 0 or start <= j < stop)]
                for i in range(3) if (axis != 0 or start <= i < stop)]
        return np.array(rows)
    assert_op_matches(lambda x: gn.slice_axis(x, axis, start, stop), ref, {"x": x})


# ---------------------------------------------------------------------------------------
# Reductions: sum, mean, max with axis and keepdims
# ---------------------------------------------------------------------------------------

def _reduce_ref(x, combine, axis, keepdims):
    """Reduce with Python loops over the kept positions."""
    ndim = x.ndim
    axes = tuple(range(ndim)) if axis is None else tuple(
        a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    kept = [a for a in range(ndim) if a not in axes]
    out = {}
    for idx in np.ndindex(x.shape):
        key = tuple(idx[a] for a in kept)
        out.setdefault(key, []).append(x[idx])
    shape = tuple(x.shape[a] for a in kept)
    result = np.empty(shape)
    for key, values in out.items():
        result[key] = combine(values)
    if keepdims:
        result = result.reshape(tuple(1 if a in axes else x.shape[a] for a in range(ndim)))
    return result


REDUCERS = {
    "sum": (gn.sum, lambda v: math.fsum(v)),
    "mean": (gn.mean, lambda v: math.fsum(v) / len(v)),
    "max": (gn.max, lambda v: max(v)),
}


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("op", list(REDUCERS))
def test_reduction(op, axis, keepdims):
    fn, combine = REDUCERS[op]
    x = rand(3, 4, 2)
    assert_op_matches(lambda x: fn(x, axis=axis, keepdims=keepdims),
                      lambda x: _reduce_ref(x, combine, axis, keepdims), {"x": x})


@pytest.mark.parametrize("op", list(REDUCERS))
def test_reduction_over_symbolic_batch_in_float64(op):
    fn, combine = REDUCERS[op]
    x = rand(5, 3, dtype="float64")
    node = assert_op_matches(lambda x: fn(x, axis=1), lambda x: _reduce_ref(x, combine, 1, False),
                             {"x": x}, shapes={"x": (None, 3)})
    assert node.shape == (None,)
    whole = assert_op_matches(lambda x: fn(x), lambda x: _reduce_ref(x, combine, None, False),
                              {"x": x}, shapes={"x": (None, 3)})
    assert whole.shape == ()


# ---------------------------------------------------------------------------------------
# Convolution and pooling, against naive loops
# ---------------------------------------------------------------------------------------

def _same_padding(size, k, stride):
    """Keras/TensorFlow 'same': out = ceil(size / stride), the odd pad at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _conv2d_ref(x, w, stride, padding):
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    if padding == "same":
        oh, top, bottom = _same_padding(h, kh, stride)
        ow, left, right = _same_padding(wd, kw, stride)
    else:
        oh, top, bottom = (h - kh) // stride + 1, 0, 0
        ow, left, right = (wd - kw) // stride + 1, 0, 0
    padded = np.zeros((n, h + top + bottom, wd + left + right, cin))
    padded[:, top:top + h, left:left + wd, :] = x
    out = np.zeros((n, oh, ow, cout))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(cout):
                    total = 0.0
                    for di in range(kh):
                        for dj in range(kw):
                            for c in range(cin):
                                total += (padded[b, i * stride + di, j * stride + dj, c]
                                          * w[di, dj, c, o])
                    out[b, i, j, o] = total
    return out


CONV_CASES = [
    # (input NHWC, kernel HWIO, stride, padding, expected output H, W)
    ((2, 5, 6, 3), (3, 3, 3, 4), 1, "valid", (3, 4)),
    ((2, 5, 6, 3), (3, 3, 3, 4), 2, "valid", (2, 2)),
    ((2, 5, 6, 3), (3, 3, 3, 4), 1, "same", (5, 6)),
    ((2, 5, 6, 3), (3, 3, 3, 4), 2, "same", (3, 3)),
    ((1, 4, 4, 2), (2, 2, 2, 1), 1, "same", (4, 4)),
    ((1, 7, 4, 1), (2, 3, 1, 2), 2, "same", (4, 2)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xshape, wshape, stride, padding, out_hw", CONV_CASES)
def test_conv2d(xshape, wshape, stride, padding, out_hw, dtype):
    feeds = {"x": rand(*xshape, dtype=dtype), "w": rand(*wshape, dtype=dtype)}
    node = assert_op_matches(lambda x, w: gn.conv2d(x, w, stride=stride, padding=padding),
                             lambda x, w: _conv2d_ref(x, w, stride, padding), feeds,
                             shapes={"x": (None,) + xshape[1:]})
    assert node.shape == (None,) + out_hw + (wshape[3],)


def test_conv2d_same_padding_puts_the_extra_zero_at_the_end():
    # width 2, kernel width 2, stride 1: one zero of padding, on the right
    x = np.array([1.0, 2.0], np.float32).reshape(1, 1, 2, 1)
    w = np.array([10.0, 100.0], np.float32).reshape(1, 2, 1, 1)
    assert_op_matches(lambda x, w: gn.conv2d(x, w, padding="same"),
                      lambda x, w: np.array([210.0, 20.0]).reshape(1, 1, 2, 1),
                      {"x": x, "w": w})


def _pool_ref(x, size, stride, combine):
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    out = np.zeros((n, oh, ow, c))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    window = [x[b, i * stride + di, j * stride + dj, ch]
                              for di in range(size) for dj in range(size)]
                    out[b, i, j, ch] = combine(window)
    return out


POOL_CASES = [
    # (input NHWC, size, stride, expected output H, W)
    ((2, 4, 4, 3), 2, None, (2, 2)),
    ((2, 5, 5, 1), 2, None, (2, 2)),
    ((1, 5, 7, 2), 3, 2, (2, 3)),
    ((1, 3, 4, 2), 2, 1, (2, 3)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xshape, size, stride, out_hw", POOL_CASES)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pooling(op, xshape, size, stride, out_hw, dtype):
    fn = getattr(gn, op)
    combine = max if op == "max_pool2d" else (lambda v: math.fsum(v) / len(v))
    node = assert_op_matches(lambda x: fn(x, size=size, stride=stride),
                             lambda x: _pool_ref(x, size, stride or size, combine),
                             {"x": rand(*xshape, dtype=dtype)},
                             shapes={"x": (None,) + xshape[1:]})
    assert node.shape == (None,) + out_hw + (xshape[3],)


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mse(dtype):
    feeds = {"p": rand(6, 2, dtype=dtype), "t": rand(6, 2, dtype=dtype)}
    node = assert_op_matches(gn.mse, lambda p, t: math.fsum(((p - t) ** 2).ravel()) / 12, feeds,
                             shapes={"p": ("n_mse", 2), "t": ("n_mse", 2)})
    assert node.shape == ()


def test_mse_broadcasts_target():
    feeds = {"p": rand(4, 3), "t": rand(3)}
    assert_op_matches(gn.mse, lambda p, t: np.mean([(p[i, j] - t[j]) ** 2 for i in range(4)
                                                    for j in range(3)]), feeds)


def _bce_ref(p, y, dtype):
    # the clip bounds 1e-7 and 1 - 1e-7 as the graph's dtype holds them
    low, high = np.array([1e-7, 1 - 1e-7], dtype).astype(np.float64)
    q = np.clip(p, low, high)
    return np.mean(-y * np.log(q) - (1 - y) * np.log(1 - q))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_on_probabilities(dtype):
    p = rand(8, 1, dtype=dtype, low=0.01, high=0.99)
    p[0, 0], p[1, 0] = 0.0, 1.0  # clipped to [1e-7, 1 - 1e-7], never log(0)
    y = (rng.uniform(size=(8, 1)) > 0.5).astype(dtype)
    y[0, 0], y[1, 0] = 1.0, 0.0
    assert_op_matches(gn.binary_cross_entropy, lambda p, y: _bce_ref(p, y, dtype),
                      {"p": p, "y": y},
                      shapes={"p": (None, 1), "y": (None, 1)}, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_from_logits(dtype):
    z = rand(8, 1, dtype=dtype, low=-5.0, high=5.0)
    y = (rng.uniform(size=(8, 1)) > 0.5).astype(dtype)
    assert_op_matches(lambda z, y: gn.binary_cross_entropy(z, y, from_logits=True),
                      lambda z, y: np.mean(-y * np.log(_sigmoid(z))
                                           - (1 - y) * np.log(1 - _sigmoid(z))),
                      {"z": z, "y": y}, shapes={"z": (None, 1), "y": (None, 1)})


def test_binary_cross_entropy_from_logits_is_exact_for_large_logits():
    z = np.array([200.0, -200.0, 200.0, -200.0], np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    # the two confident-and-right terms are ~0, the two wrong ones cost 200 each
    assert_op_matches(lambda z, y: gn.binary_cross_entropy(z, y, from_logits=True),
                      lambda z, y: np.float64(100.0), {"z": z, "y": y})


def _sce_int_ref(z, labels):
    losses = []
    for row, label in zip(z, labels):
        top = max(row)
        losses.append(-(row[label] - top - math.log(math.fsum(math.exp(v - top) for v in row))))
    return math.fsum(losses) / len(losses)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_with_integer_labels(dtype):
    feeds = {"z": rand(6, 4, dtype=dtype), "labels": np.array([0, 3, 1, 1, 2, 3], np.int64)}
    node = assert_op_matches(gn.softmax_cross_entropy, _sce_int_ref, feeds,
                             shapes={"z": (None, 4), "labels": (None,)})
    assert node.shape == ()


def test_softmax_cross_entropy_with_large_logits():
    z = np.array([[1000.0, 0.0], [0.0, 1000.0]], np.float32)
    assert_op_matches(gn.softmax_cross_entropy, lambda z, labels: np.float64(500.0),
                      {"z": z, "labels": np.array([0, 0], np.int64)})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_with_probability_labels(dtype):
    z = rand(5, 3, dtype=dtype)
    t = rng.uniform(size=(5, 3))
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    def ref(z, t):
        log_p = np.log(_softmax_ref(z, 1))
        return -np.sum(t * log_p) / z.shape[0]
    assert_op_matches(gn.softmax_cross_entropy, ref, {"z": z, "t": t},
                      shapes={"z": (None, 3), "t": (None, 3)})


def test_softmax_cross_entropy_one_hot_labels_equal_integer_labels():
    z = rand(4, 3, dtype="float64")
    labels = np.array([2, 0, 1, 2], np.int64)
    one_hot = np.eye(3)[labels]
    as_int = assert_op_matches(gn.softmax_cross_entropy, _sce_int_ref, {"z": z, "labels": labels})
    as_prob = assert_op_matches(gn.softmax_cross_entropy,
                                lambda z, t: _sce_int_ref(z, labels), {"z": z, "t": one_hot})
    assert as_int.inputs[1].dtype.kind == "i" and as_prob.inputs[1].dtype.kind == "f"


# ---------------------------------------------------------------------------------------
# Eager mode on plain NumPy arrays
# ---------------------------------------------------------------------------------------

def test_eager_op_functions_on_plain_arrays_compute_at_once():
    x = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    w = np.array([[0.5], [-1.0]], np.float32)
    h = gn.relu(gn.matmul(x, w))
    assert type(h) is np.ndarray and h.dtype == np.float32
    np.testing.assert_allclose(h, [[2.5], [1.0]])
    loss = gn.mean(gn.square(gn.sub(h, 2.0)))
    np.testing.assert_allclose(loss, ((2.5 - 2) ** 2 + (1.0 - 2) ** 2) / 2, rtol=1e-6)


def test_eager_python_scalars_do_not_promote_float32():
    x = np.ones(3, np.float32)
    assert gn.mul(x, 2.5).dtype == np.float32
    assert gn.add(1, x).dtype == np.float32
    assert gn.div(np.arange(3.0), 2.0).dtype == np.float64
