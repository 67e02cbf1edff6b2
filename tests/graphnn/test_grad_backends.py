"""Gradients of every differentiable op against finite differences, on every back end.

For each case below, `gn.grad` of a scalar function of one op (and a fixed random weighting
of its result, so every element of the gradient matters) is compiled on backend "numpy",
"cpu" and "cuda" (the simulator) in float64, and compared with central finite differences
of the *numpy forward* of the same graph (each op's NumPy implementation, not its VJP rule):
a wrong VJP rule fails on every back end, and a back end that computes a right rule wrongly
fails on its own. The loss and the gradients are also compared across back ends at 1e-10.

The cases are awkward on purpose: probability targets whose rows do not sum to 1, extreme
magnitudes, broadcasting in both directions (a broadcast to b and b to a), tied values
(where the gradient is a convention, checked exactly: see TIES), square shapes where a
transpose reads what it aliases.

Every op of the registry (graphnn/registry.py OPS) is either exercised by a case here or
named in SKIP with the reason; `test_every_op_has_a_gradient_check_or_a_reason` fails
otherwise. An elementwise op added later whose public function works with its default
attributes gets a case of its own automatically (`_automatic_cases`).
"""
import functools

import numpy as np
import pytest

import graphnn as gn
from graphnn.registry import INPUT_COUNTS, OPS, apply
from helpers import BACKEND_OPTIONS

BACKENDS = ("numpy", "cpu", "cuda")
# The simulator runs each GPU thread as a Python thread: blocks of 8 halve the time of these
# tiny cases against the suite's 32 and still give multi-block grids and strided reductions.
OPTIONS = dict(BACKEND_OPTIONS)

# Finite differences: Richardson-extrapolated central differences, (4 D(h/2) - D(h)) / 3,
# whose truncation error is O(h**4) (h = 1e-3 * max(|x|, 1)), and whose rounding error is
# about eps * |f| / h = 2e-13 |f|. The agreement that can be asked of them is therefore
# 1e-7 relative (the worst case measured over these cases is 5e-9, and 3e-8 for "cast",
# whose adjoint is rounded to float32 on its way through the float32 value), not the 1e-10
# of two computations of the same formula; back ends are compared with each other at 1e-10.
FD_RTOL = 1e-7
CROSS_RTOL, CROSS_ATOL = 1e-10, 1e-300  # cpu and cuda against numpy, same graph


class Case:
    """A scalar function of graph inputs and its feeds.

    build(**nodes) -> scalar node; feeds {name: array} (each becomes gn.input(name, shape,
    dtype)); wrt: the float feeds to differentiate (default: all of them); expected
    (optional): {name: gradient} for a tie, where the gradient is a convention that finite
    differences cannot see (compared exactly instead); relative_step: h proportional to
    |x| (for values far below 1); step: a fixed h instead; atol: an absolute slack, only
    with a reason.
    """

    def __init__(self, build, feeds, wrt=None, expected=None, relative_step=False, atol=0.0,
                 step=None):
        self.step = step
        self.build, self.feeds = build, {k: np.asarray(v) for k, v in feeds.items()}
        self.wrt = tuple(wrt or [k for k, v in self.feeds.items() if v.dtype.kind == "f"])
        self.expected, self.relative_step, self.atol = expected, relative_step, atol


def rng_for(seed):
    return np.random.default_rng(seed)


def weighted_sum(y, seed=99):
    """A scalar whose adjoint for `y` is random, so every element of y's gradient matters."""
    return gn.sum(y * rng_for(seed).normal(size=y.shape))


def away_from_zero(rng, shape, low=0.2, high=2.0):
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def positive(rng, shape, low=0.5, high=2.0):
    return rng.uniform(low, high, shape)


def distinct(rng, shape, gap=0.05):
    """Values that differ pairwise by at least `gap`: no ties for max, pools or maximum."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap - n * gap / 2).reshape(shape)


# ---------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------

CASES = {}


def case(name, build, feeds, **kw):
    assert name not in CASES, name
    CASES[name] = Case(build, feeds, **kw)


def unary(name, fn, values, **kw):
    case(name, lambda x: weighted_sum(fn(x)), {"x": values}, **kw)


R = rng_for(1)
ORDINARY = away_from_zero(R, (3, 4))
POSITIVE = positive(R, (3, 4))
UNARY = {  # op: (function, where it is smooth)
    "neg": (gn.neg, ORDINARY), "exp": (gn.exp, ORDINARY), "log": (gn.log, POSITIVE),
    "sqrt": (gn.sqrt, POSITIVE), "abs": (gn.abs, ORDINARY), "square": (gn.square, ORDINARY),
    "sigmoid": (gn.sigmoid, ORDINARY), "tanh": (gn.tanh, ORDINARY),
    "relu": (gn.relu, ORDINARY), "softplus": (gn.softplus, ORDINARY),
    "leaky_relu": (lambda x: gn.leaky_relu(x, alpha=0.1), ORDINARY),
    "elu": (lambda x: gn.elu(x, alpha=0.7), ORDINARY),
    "elu_grad": (lambda x: gn.ops.elu_grad(x, alpha=0.7), ORDINARY),
    # piecewise constant: the gradient is zero away from the jumps, and so are the FDs
    "leaky_relu_grad": (lambda x: gn.ops.leaky_relu_grad(x, alpha=0.1), ORDINARY),
    "sign": (gn.sign, ORDINARY), "step": (gn.ops.step, ORDINARY),
    "clip": (lambda x: gn.clip(x, -1.0, 1.5), R.choice([-1.9, -1.3, -0.6, 0.3, 0.9, 1.2, 1.8],
                                                      (3, 4)) + R.uniform(-0.05, 0.05, (3, 4))),
}
for _op, (_fn, _values) in UNARY.items():
    unary(_op, _fn, _values)

# Extreme magnitudes: the stable formulas must give finite, right gradients far out. Each
# case keeps its values within a few powers of ten of each other, so that the finite
# differences resolve every element (a sum of 1e150 and 1e-150 terms would hide the second).
unary("exp-huge", gn.exp, np.array([[690.0, 700.0, 695.5], [699.0, 691.0, 705.0]]),
      step=1e-3)
unary("exp-tiny", gn.exp, np.array([[-690.0, -700.0, -695.5], [-699.0, -691.0, -705.0]]),
      step=1e-3)
unary("log-tiny", gn.log, np.array([[1e-300, 3e-200, 1e-8], [2e-12, 5e-7, 1e-100]]),
      relative_step=True)  # (log turns each relative step into the same absolute change)
unary("log-huge", gn.log, np.array([[1e300, 3e200, 1e8], [2e12, 5e7, 1e100]]),
      relative_step=True)
unary("sqrt-tiny", gn.sqrt, np.array([[1e-300, 3e-300, 7e-301], [2e-300, 9e-300, 5e-301]]),
      relative_step=True)
unary("sqrt-huge", gn.sqrt, np.array([[1e300, 3e300, 7e299], [2e300, 9e300, 5e299]]),
      relative_step=True)
unary("square-huge", gn.square, np.array([[1e150, -3e150, 2e149], [-4e150, 5e149, -1e150]]),
      relative_step=True)
unary("square-tiny", gn.square, np.array([[1e-150, -3e-150, 2e-151], [-4e-150, 5e-151,
                                                                       -1e-150]]),
      relative_step=True)
unary("sigmoid-far-negative", gn.sigmoid, np.array([[-45.0, -40.0, -35.0], [-42.0, -38.0,
                                                                            -44.0]]))
unary("softplus-far-negative", gn.softplus, np.array([[-45.0, -40.0, -35.0], [-42.0, -38.0,
                                                                              -44.0]]))
unary("softplus-far-out", gn.softplus, np.array([[-1000.0, 1000.0, 40.0], [1000.0, -700.0,
                                                                            700.0]]),
      step=1e-3)
unary("elu_grad-far-negative", lambda x: gn.ops.elu_grad(x, alpha=0.7),
      np.array([[-40.0, -35.0, -30.0], [-38.0, -33.0, -36.0]]))
# where sigmoid and tanh round to +-1 and elu to -alpha, their gradient is below what finite
# differences of a sum of order 1 can resolve (~1e-13 / h): the check is that it is finite
# and about 0
unary("saturated", lambda x: gn.sigmoid(x) + gn.tanh(x) + gn.elu(x, alpha=0.7),
      np.array([[40.0, 25.0, 700.0], [-25.0, -1000.0, -36.0]]), atol=1e-9)
case("embedding", lambda t: weighted_sum(
    gn.embedding(gn.const(np.array([[0, 2], [2, 1], [1, 1]], np.int64)), t)),
    {"t": ORDINARY})  # repeated ids: their rows' gradients add up
unary("gelu_tanh", lambda x: gn.gelu(x, approximate=True), ORDINARY)
TB_STATE = gn.variable("training_branch_case/count", np.zeros((), np.float64))
case("training_branch", lambda a, b: weighted_sum(
    gn.training_branch(a * a, b * 3.0, {TB_STATE: TB_STATE + 1})),
    {"a": ORDINARY, "b": ORDINARY})  # the training value: b gets no gradient
case("mul-div-huge", lambda a, b: weighted_sum(a * b) + weighted_sum(a / b, seed=3),
     {"a": np.array([[1e100, -3e100], [2e100, -5e99]]),
      "b": np.array([[1e100, 2e99], [-4e100, 1e100]])}, relative_step=True)
case("mul-div-tiny", lambda a, b: weighted_sum(a * b) + weighted_sum(a / b, seed=3) * 1e-200,
     {"a": np.array([[1e-100, -3e-100], [2e-100, -5e-101]]),
      "b": np.array([[1e-100, 2e-101], [-4e-100, 1e-100]])}, relative_step=True)
case("matmul-huge", lambda a, b: weighted_sum(a @ b),
     {"a": R.normal(size=(2, 3)) * 1e100, "b": R.normal(size=(3, 2)) * 1e100},
     relative_step=True)

# Binary ops: each pair of shapes in both directions, all in one graph per op.
BROADCAST = [((3, 4), (4,)), ((4,), (3, 4)), ((3, 1), (1, 4)), ((1, 4), (3, 1)),
             ((), (2, 3)), ((2, 3), ()), ((2, 1, 3), (4, 1)), ((4, 1), (2, 1, 3)),
             ((3, 3), (3, 3))]


def binary(name, fn, sample_a, sample_b, seed=2):
    rng = rng_for(seed)
    feeds = {}
    for k, (sa, sb) in enumerate(BROADCAST):
        feeds[f"a{k}"], feeds[f"b{k}"] = sample_a(rng, sa), sample_b(rng, sb)

    def build(**nodes):
        return sum(weighted_sum(fn(nodes[f"a{k}"], nodes[f"b{k}"]), seed=k)
                   for k in range(len(BROADCAST)))
    case(name, build, feeds)


def grid(rng, shape):
    """Multiples of 0.2; with grid + 0.1 on the other side no two values tie."""
    return rng.integers(-5, 5, shape) * 0.2


def shifted_grid(rng, shape):
    return grid(rng, shape) + 0.1


for _op, _a, _b in (("add", away_from_zero, away_from_zero),
                    ("sub", away_from_zero, away_from_zero),
                    ("mul", away_from_zero, away_from_zero),
                    ("div", away_from_zero, away_from_zero),
                    ("pow", positive, away_from_zero),
                    ("maximum", grid, shifted_grid), ("minimum", grid, shifted_grid),
                    ("ge", grid, shifted_grid), ("gt", grid, shifted_grid),
                    ("eq", grid, shifted_grid)):
    binary(_op, getattr(gn.ops, _op), _a, _b)


# Reductions: several axes and keepdims in one graph per op.
AXES = [None, 0, 1, -1, (0, 1)]


def reductions(name, fn, values):
    def build(x):
        return sum(weighted_sum(fn(x, axis=axis, keepdims=keep), seed=k * 2 + keep)
                   for k, axis in enumerate(AXES) for keep in (False, True))
    case(name, build, {"x": values})


reductions("sum", gn.sum, R.normal(size=(3, 4)))
reductions("mean", gn.mean, R.normal(size=(3, 4)))
reductions("max", gn.max, distinct(R, (3, 4)))
case("max-rank-3", lambda x: weighted_sum(gn.max(x, axis=(0, 2))) +
     weighted_sum(gn.max(x, axis=1, keepdims=True), seed=5), {"x": distinct(R, (2, 3, 4))})
# argmax_mask is piecewise constant: away from ties only the product's own factor counts
case("argmax_mask", lambda x: weighted_sum(gn.ops.argmax_mask(x, axis=1) * x)
     + weighted_sum(gn.ops.argmax_mask(x, axis=None) * x, seed=4), {"x": distinct(R, (3, 4))})
case("broadcast_like", lambda g, x: weighted_sum(gn.ops.broadcast_like(g, x, axis=1)) +
     weighted_sum(gn.ops.broadcast_like(g, x, axis=1, keepdims=False) * x, seed=6),
     {"g": R.normal(size=(3,)), "x": R.normal(size=(3, 4))})
case("reciprocal_count", lambda x: weighted_sum(x * gn.ops.reciprocal_count(x, axis=1)),
     {"x": R.normal(size=(3, 4))})

# Matmul and shape ops, square shapes included (a transpose of a square matrix has its
# shape: a buffer reused in place under its own transpose would be caught here).
case("matmul", lambda a, b, s: weighted_sum(a @ b) + weighted_sum(gn.transpose(s) @ s, seed=3)
     + weighted_sum(s @ gn.transpose(s) @ a, seed=4),
     {"a": R.normal(size=(3, 4)), "b": R.normal(size=(4, 5)), "s": R.normal(size=(3, 3))})
case("transpose", lambda x, s: weighted_sum(gn.transpose(x)) + weighted_sum(
    gn.transpose(x, (1, 2, 0)), seed=3) + weighted_sum(gn.transpose(x, (0, 2, 1)), seed=4)
     + weighted_sum(gn.square(s) + gn.transpose(gn.square(s)), seed=5),
     {"x": R.normal(size=(2, 3, 4)), "s": R.normal(size=(3, 3))})
case("reshape", lambda x: weighted_sum(gn.reshape(x, (6, 4))) + weighted_sum(
    gn.reshape(gn.transpose(x), (4, -1)), seed=3) + weighted_sum(gn.flatten(gn.tanh(x)), seed=4),
     {"x": R.normal(size=(2, 3, 4))})
case("concat", lambda x, y: weighted_sum(gn.concat([x, gn.tanh(x), x], axis=1)) +
     weighted_sum(gn.concat([x, y], axis=0), seed=3) +
     weighted_sum(gn.concat([gn.transpose(y), gn.transpose(x)], axis=-1), seed=4),
     {"x": R.normal(size=(2, 3)), "y": R.normal(size=(4, 3))})
case("slice_axis", lambda x: weighted_sum(gn.slice_axis(x, 0, 1, 3)) + weighted_sum(
    gn.slice_axis(x, 1, 2, 5), seed=3) + weighted_sum(gn.slice_axis(x, -1, 0, 1), seed=4),
     {"x": R.normal(size=(4, 5))})
case("pad_axis", lambda x: weighted_sum(gn.ops.pad_axis(x, 0, 1, 2)) + weighted_sum(
    gn.ops.pad_axis(gn.tanh(x), 1, 0, 3), seed=3), {"x": R.normal(size=(2, 3))})

# Convolution and pooling (and the gradient ops themselves, whose rules give second
# derivatives).
CONVS = [(1, "valid"), (2, "same"), (1, "same"), (2, "valid")]
# gn.repeat: x the carry, w stacked (one matrix per repeat), v read from outside (shared)
case("repeat", lambda x, w, v: weighted_sum(
    gn.repeat(lambda h, wk: gn.tanh(h @ wk + h * v), 3, x, w)),
     {"x": R.normal(size=(2, 3)), "w": R.normal(size=(3, 3, 3)) * 0.5, "v": R.normal(size=3)})
case("conv2d", lambda x, k, j: sum(
    weighted_sum(gn.conv2d(x if s == 1 else j, k, stride=s, padding=p), seed=n)
    for n, (s, p) in enumerate(CONVS)),
     {"x": R.normal(size=(2, 4, 4, 2)), "k": R.normal(size=(3, 3, 2, 3)),
      "j": R.normal(size=(1, 5, 6, 2))})


def _conv_grad_case(op, stride, padding):
    image, kernel = (2, 4, 5, 2), (2, 3, 2, 3)
    out = gn.conv2d(gn.input("shape_of_x", image), gn.input("shape_of_k", kernel),
                    stride=stride, padding=padding).shape
    attrs = {"stride": stride, "padding": padding}
    if op == "conv2d_grad_input":
        return lambda g, w, x: weighted_sum(apply(op, (g, w, x), attrs)), \
            {"g": R.normal(size=out), "w": R.normal(size=kernel), "x": R.normal(size=image)}
    return lambda x, g, w: weighted_sum(apply(op, (x, g, w), attrs)), \
        {"x": R.normal(size=image), "g": R.normal(size=out), "w": R.normal(size=kernel)}


for _op in ("conv2d_grad_input", "conv2d_grad_filter"):
    for _s, _p in ((1, "valid"), (2, "same")):
        case(f"{_op}-{_s}-{_p}", *_conv_grad_case(_op, _s, _p))

# Depthwise convolutions: Keras padding both ways, explicit uneven pads (ONNX), a kernel
# wider than tall, stride 3 that skips input rows.
DEPTHWISE = [(1, "valid"), (2, "same"), (1, (1, 0, 2, 1)), (3, (2, 1, 0, 2))]
case("depthwise_conv2d", lambda x, k: sum(
    weighted_sum(gn.depthwise_conv2d(x, k, stride=s, padding=p), seed=n)
    for n, (s, p) in enumerate(DEPTHWISE)),
     {"x": R.normal(size=(2, 5, 6, 3)), "k": R.normal(size=(2, 3, 1, 3))})


def _depthwise_grad_case(op, stride, padding):
    image, kernel = (2, 5, 4, 3), (3, 2, 1, 3)
    out = gn.depthwise_conv2d(gn.input("shape_of_x", image), gn.input("shape_of_k", kernel),
                              stride=stride, padding=padding).shape
    attrs = {"stride": stride, "padding": padding}
    if op == "depthwise_conv2d_grad_input":
        return lambda g, w, x: weighted_sum(apply(op, (g, w, x), attrs)), \
            {"g": R.normal(size=out), "w": R.normal(size=kernel), "x": R.normal(size=image)}
    return lambda x, g, w: weighted_sum(apply(op, (x, g, w), attrs)), \
        {"x": R.normal(size=image), "g": R.normal(size=out), "w": R.normal(size=kernel)}


for _op in ("depthwise_conv2d_grad_input", "depthwise_conv2d_grad_filter"):
    for _s, _p in ((1, "same"), (2, (1, 1, 0, 1))):
        case(f"{_op}-{_s}-{_p}", *_depthwise_grad_case(_op, _s, _p))

# Grouped 1x1 convolutions (through gn.conv2d's groups: 3 groups of 2 channels into 3
# groups of 4, and 2 groups of 3 channels into 2 of 1) and their gradient ops; the channel
# shuffle both ways (6 channels in 2 and in 3 groups: each the other's inverse).
case("grouped_conv2d", lambda x, k, j: weighted_sum(gn.conv2d(x, k, groups=3))
     + weighted_sum(gn.conv2d(x, j, groups=2), seed=3),
     {"x": R.normal(size=(2, 3, 2, 6)), "k": R.normal(size=(1, 1, 2, 12)),
      "j": R.normal(size=(1, 1, 3, 2))})
for _op, _names in (("grouped_conv2d_grad_input", ("g", "w", "x")),
                    ("grouped_conv2d_grad_filter", ("x", "g", "w"))):
    case(_op, lambda _op=_op, _names=_names, **v: weighted_sum(
        apply(_op, tuple(v[n] for n in _names), {"groups": 3})),
         {"x": R.normal(size=(2, 2, 3, 6)), "g": R.normal(size=(2, 2, 3, 9)),
          "w": R.normal(size=(1, 1, 2, 9))})
case("channel_shuffle", lambda x: weighted_sum(gn.ops.channel_shuffle(x, 2))
     + weighted_sum(gn.ops.channel_shuffle(gn.tanh(x), 3), seed=3),
     {"x": R.normal(size=(2, 2, 3, 6))})

POOLS = [(2, 2), (3, 1), (2, 1), (3, 2)]
case("max_pool2d", lambda x: sum(weighted_sum(gn.max_pool2d(x, size, stride), seed=n)
                                 for n, (size, stride) in enumerate(POOLS)),
     {"x": distinct(R, (2, 5, 5, 2))})
case("max_pool2d_padded", lambda x: sum(
    weighted_sum(gn.max_pool2d(x, size, stride, padding=pads), seed=n)
    for n, (size, stride, pads) in enumerate([(3, 2, (1, 1, 1, 1)), (2, 1, (1, 0, 0, 1)),
                                              (3, 1, (2, 1, 0, 2))])),
     {"x": distinct(R, (2, 5, 4, 2))})
case("avg_pool2d", lambda x: sum(weighted_sum(gn.avg_pool2d(x, size, stride), seed=n)
                                 for n, (size, stride) in enumerate(POOLS)),
     {"x": R.normal(size=(2, 5, 5, 2))})
case("avg_pool2d_grad", lambda g, x: weighted_sum(
    apply("avg_pool2d_grad", (g, x), {"size": 3, "stride": 1})),
     {"g": R.normal(size=(1, 3, 3, 2)), "x": R.normal(size=(1, 5, 5, 2))})

# Softmax and the losses.
LOGITS = R.normal(size=(4, 3)) * 2
BIG_LOGITS = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0],
                       [1e4, 1e4 - 1.0, -1e4]])
for _fn in ("softmax", "log_softmax"):
    case(_fn, lambda x, fn=getattr(gn, _fn): weighted_sum(fn(x)) + weighted_sum(
        fn(x, axis=0), seed=3), {"x": LOGITS})
    case(f"{_fn}-huge-logits", lambda x, fn=getattr(gn, _fn): weighted_sum(fn(x)),
         {"x": BIG_LOGITS}, step=1e-3)
case("mse", lambda p, t, p1, t1, p2, t2: gn.mse(p, t) + gn.mse(p1, t1) + gn.mse(p2, t2),
     {"p": R.normal(size=(4, 3)), "t": R.normal(size=(3,)),       # target broadcast to pred
      "p1": R.normal(size=(3,)), "t1": R.normal(size=(4, 3)),     # pred broadcast to target
      "p2": R.normal(size=(3, 1)), "t2": R.normal(size=(1, 4))})  # both
# targets whose rows do not sum to 1 (0.6, 1.7, 0, and one beyond [0, 1])
SOFT_TARGETS = np.array([[0.1, 0.2, 0.3], [0.9, 0.5, 0.3], [0.0, 0.0, 0.0], [1.2, -0.1, 0.4]])
case("binary_cross_entropy", lambda p, y, z, y2: gn.binary_cross_entropy(p, y) +
     gn.binary_cross_entropy(z, y2, from_logits=True),
     {"p": R.uniform(0.05, 0.95, (4, 3)), "y": SOFT_TARGETS, "z": LOGITS,
      "y2": SOFT_TARGETS[::-1].copy()})
case("binary_cross_entropy-broadcast", lambda p, y, z, y2: gn.binary_cross_entropy(p, y) +
     gn.binary_cross_entropy(z, y2, from_logits=True),
     {"p": R.uniform(0.05, 0.95, (3,)), "y": SOFT_TARGETS,        # p broadcast to y
      "z": LOGITS, "y2": np.array([0.3, 1.0, 0.0])})             # y broadcast to z
case("binary_cross_entropy-huge-logits", lambda z, y: gn.binary_cross_entropy(
    z, y, from_logits=True), {"z": BIG_LOGITS, "y": SOFT_TARGETS[:3]}, step=1e-3)
case("softmax_cross_entropy-soft-targets", lambda z, y: gn.softmax_cross_entropy(z, y),
     {"z": LOGITS, "y": SOFT_TARGETS})
case("softmax_cross_entropy-labels", lambda z, y: gn.softmax_cross_entropy(z, y),
     {"z": LOGITS, "y": np.array([0, 2, 1, 2])})
case("softmax_cross_entropy-huge-logits", lambda z, y, labels: gn.softmax_cross_entropy(z, y)
     + gn.softmax_cross_entropy(z, labels),
     {"z": BIG_LOGITS, "y": SOFT_TARGETS[:3], "labels": np.array([1, 2, 2])}, step=1e-3)
# float64 -> float32 -> float64 on a grid that float32 holds exactly, so the finite
# differences (h = 2**-4 apart, on the grid too) are exact; the gradient of a float32 value
# is float32, so the adjoint is rounded to float32 (3e-8 relative) on its way back
case("cast", lambda x: weighted_sum(gn.cast(gn.cast(x, "float32"), "float64") * 0.5),
     {"x": R.integers(-64, 64, (3, 4)) / 16.0}, step=2.0 ** -4)


# ---------------------------------------------------------------------------------------
# Ties: where finite differences see a kink, the gradient follows graphnn's convention
# (graphnn/ops.py): max and max-pooling send it to the FIRST maximal element (row-major;
# in a pool window, row by row), argmax_mask marks the first winner, maximum(a, b) and
# minimum(a, b) send it to a, relu'(0) = abs'(0) = 0, leaky_relu'(0) = alpha,
# elu'(0) = alpha, clip passes nothing at its bounds, and a probability at binary
# cross-entropy's clip bounds gets no gradient. Every back end must follow it exactly.
# ---------------------------------------------------------------------------------------

def weights_for(shape, seed=99):
    return rng_for(seed).normal(size=shape)


def _first_max_mask(x, axis):
    """1 at the first maximal element along `axis` (all axes for None), else 0."""
    axes = tuple(range(x.ndim)) if axis is None else (axis,)
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + list(axes))
    flat = moved.reshape(moved.shape[:len(keep)] + (-1,))
    mask = np.zeros_like(flat)
    for idx in np.ndindex(flat.shape[:-1]):
        mask[idx + (int(np.argmax(flat[idx])),)] = 1  # np.argmax: the first maximum
    return np.transpose(mask.reshape(moved.shape), np.argsort(keep + list(axes)))


TIED = np.array([[1.0, 3.0, 3.0, -2.0], [5.0, 5.0, 5.0, 5.0], [-1.0, 0.0, -1.0, 0.0]])
TIES = {}
TIES["tie-max"] = Case(
    lambda x: weighted_sum(gn.max(x, axis=1)) + weighted_sum(gn.max(x, axis=0), seed=3)
    + weighted_sum(gn.max(x), seed=4),
    {"x": TIED},
    expected=lambda x: {"x": weights_for(3)[:, None] * _first_max_mask(x, 1)
                        + weights_for(4, 3)[None, :] * _first_max_mask(x, 0)
                        + weights_for((), 4) * _first_max_mask(x, None)})
TIES["tie-argmax_mask"] = Case(  # the mask itself (forward) is compared too: see the test
    lambda x: weighted_sum(gn.ops.argmax_mask(x, axis=1) * x)
    + weighted_sum(gn.ops.argmax_mask(x, axis=0), seed=3),
    {"x": TIED}, expected=lambda x: {"x": weights_for(x.shape) * _first_max_mask(x, 1)})


def _pool_ties(x, size, stride, w):
    """The gradient of sum(w * max_pool2d(x)): each window's weight to its first maximum."""
    n, h, wd, c = x.shape
    oh, ow = (h - size) // stride + 1, (wd - size) // stride + 1
    dx = np.zeros_like(x)
    for b, i, j, ch in np.ndindex(n, oh, ow, c):
        window = x[b, i * stride:i * stride + size, j * stride:j * stride + size, ch]
        r, s = np.unravel_index(int(np.argmax(window)), window.shape)  # row by row
        dx[b, i * stride + r, j * stride + s, ch] += w[b, i, j, ch]
    return dx


POOL_TIES = rng_for(7).integers(0, 3, (1, 4, 4, 2)).astype(np.float64)  # many ties
TIES["tie-max_pool2d"] = Case(
    lambda x: sum(weighted_sum(gn.max_pool2d(x, size, stride), seed=n)
                  for n, (size, stride) in enumerate([(2, 2), (2, 1), (3, 1)])),
    {"x": POOL_TIES},
    expected=lambda x: {"x": sum(_pool_ties(x, size, stride, weights_for(
        gn.max_pool2d(gn.input("shape", x.shape), size, stride).shape, seed=n))
        for n, (size, stride) in enumerate([(2, 2), (2, 1), (3, 1)]))})

TIE_A = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 2.0, -3.0, 4.0], [1.0, -2.0, 3.0, 0.0]])
TIE_B = np.array([1.0, 2.0, 3.0, 4.0])  # equal to row 0 of a: every element ties there


def _maximum_ties(a, b, take_a):
    w = weights_for(a.shape)
    return {"a": w * take_a, "b": np.sum(w * (1 - take_a), axis=0)}


TIES["tie-maximum"] = Case(lambda a, b: weighted_sum(gn.maximum(a, b)), {"a": TIE_A, "b": TIE_B},
                       expected=lambda a, b: _maximum_ties(a, b, (a >= b).astype(float)))
TIES["tie-minimum"] = Case(lambda a, b: weighted_sum(gn.minimum(a, b)), {"a": TIE_A, "b": TIE_B},
                       expected=lambda a, b: _maximum_ties(a, b, (a <= b).astype(float)))
# broadcast the other way: b (4,) is the first operand and wins its ties against a's rows
TIES["tie-maximum-b-first"] = Case(
    lambda a, b: weighted_sum(gn.maximum(b, a)), {"a": TIE_A, "b": TIE_B},
    expected=lambda a, b: {"a": weights_for(a.shape) * (a > b),
                           "b": np.sum(weights_for(a.shape) * (b >= a), axis=0)})
KINKS = np.array([[0.0, -0.0, 1.0, -1.5], [-1.0, 1.5, 0.0, 2.0]])
TIES["tie-kinks"] = Case(
    lambda x: weighted_sum(gn.relu(x)) + weighted_sum(gn.abs(x), seed=3)
    + weighted_sum(gn.leaky_relu(x, 0.1), seed=4) + weighted_sum(gn.elu(x, 0.7), seed=5)
    + weighted_sum(gn.clip(x, -1.0, 1.5), seed=6) + weighted_sum(gn.ops.step(x), seed=7)
    + weighted_sum(gn.sign(x), seed=8),
    {"x": KINKS},
    expected=lambda x: {"x": weights_for(x.shape) * (x > 0) + weights_for(x.shape, 3)
                        * np.sign(x) + weights_for(x.shape, 4) * np.where(x > 0, 1, 0.1)
                        + weights_for(x.shape, 5) * np.where(x > 0, 1, 0.7 * np.exp(
                            np.minimum(x, 0))) + weights_for(x.shape, 6)
                        * ((x > -1) & (x < 1.5))})
TIES["tie-binary_cross_entropy-clipped"] = Case(
    lambda p, y: gn.binary_cross_entropy(p, y), {"p": np.array([[0.0, 1.0], [0.5, 1e-9]]),
                                                 "y": np.array([[0.3, 0.6], [1.0, 0.2]])},
    wrt=["p"], expected=lambda p, y: {"p": np.array([[0.0, 0.0], [(0.5 - 1.0) / 0.25 / 4,
                                                                  0.0]])})


# ---------------------------------------------------------------------------------------
# Ops without a finite-difference check, and why
# ---------------------------------------------------------------------------------------

SKIP = {
    "input": "a leaf: no op to differentiate",
    "param": "a leaf: no op to differentiate",
    "variable": "a leaf: no op to differentiate",
    "const": "a leaf: no op to differentiate",
    "one_hot": "takes integer labels only: there is nothing to differentiate "
               "(gn.grad refuses an integer wrt: test_one_hot_has_no_gradient)",
    "random_uniform": "a random draw of (seed, counter, index): no gradient to any input "
                      "(the gradient through Dropout, mask x scale, is in test_dropout.py)",
    "max_pool2d_padded_grad": "has no gradient rule (no second derivative through "
                              "max-pooling), as max_pool2d_grad",
    "repeat_grad": "gn.repeat's backward loop (checked through the repeat case); no "
                   "gradient rule of its own: gn.grad raises GradError "
                   "(test_repeat.py, test_back_ends_and_formats_that_cannot_run_it_say_so)",
    "max_pool2d_grad": "has no gradient rule (no second derivative through max-pooling): "
                       "gn.grad raises GradError (test_max_pool2d_grad_refuses_a_gradient)",
}


def test_one_hot_has_no_gradient():
    labels = gn.input("labels", (3,), dtype="int64")
    with pytest.raises(gn.GradError, match="int64 is not float"):
        gn.grad(gn.sum(gn.ops.one_hot(labels, 4, "float64")), labels)


def test_max_pool2d_grad_refuses_a_gradient():
    x = gn.input("x", (1, 4, 4, 1), dtype="float64")
    g = gn.grad(gn.sum(gn.square(gn.max_pool2d(x, 2))), x)
    with pytest.raises(gn.GradError, match="'max_pool2d_grad'.* has no gradient rule"):
        gn.grad(gn.sum(g), x)


def _automatic_cases():
    """A case for each elementwise op of the registry that no case above exercises, built
    with its public function (gn.<name> or gn.ops.<name>) and default attributes, on
    values in [0.5, 2] (inside the domain of log, sqrt, pow ...), with broadcasting."""
    covered = set().union(*(ops_of(c) for c in list(CASES.values()) + list(TIES.values())))
    made = {}
    for name, opdef in OPS.items():
        fn = getattr(gn, name, None) or getattr(gn.ops, name, None)
        if name in covered or name in SKIP or opdef.kind != "elementwise" or \
                not callable(fn):
            continue
        arity = INPUT_COUNTS[name][0]
        rng = rng_for(11)
        shapes = [(3, 4), (4,), (3, 1)][:arity]
        feeds = {f"x{k}": positive(rng, s) for k, s in enumerate(shapes)}
        made[f"auto-{name}"] = Case(lambda fn=fn, **nodes: weighted_sum(fn(*nodes.values())),
                                    feeds)
    return made


def ops_of(c):
    """The ops of a case's function (its forward graph, leaves left out)."""
    nodes = {k: gn.input(k, v.shape, dtype=v.dtype.name) for k, v in c.feeds.items()}
    return {n.op for n in gn.Graph([c.build(**nodes)]).nodes if n.inputs}


CASES.update(_automatic_cases())


def test_every_op_has_a_gradient_check_or_a_reason():
    """An op added to the registry needs a case above (or an automatic one) or a reason in
    SKIP; a SKIP entry for an op that no longer exists, or that a case covers, is stale."""
    covered = set().union(*(ops_of(c) for c in list(CASES.values()) + list(TIES.values())))
    registered = set(OPS)
    missing = sorted(registered - covered - set(SKIP))
    assert not missing, (f"ops without a finite-difference gradient check: {missing}; add a "
                         "case to tests/graphnn/test_grad_backends.py (or a reason to SKIP)")
    assert not set(SKIP) - registered, f"SKIP names unknown ops: {set(SKIP) - registered}"
    assert not (set(SKIP) & covered) - {"input", "param", "variable", "const"}, \
        f"SKIP names ops that a case covers: {set(SKIP) & covered}"


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def graph_of(name):
    """(loss, gradients, wrt nodes) of case `name`, built once."""
    c = CASES.get(name) or TIES[name]  # (tie cases are named tie-...)
    nodes = {k: gn.input(k, v.shape, dtype=v.dtype.name) for k, v in c.feeds.items()}
    loss = c.build(**nodes)
    assert loss.shape == () and loss.dtype == np.float64, (loss.shape, loss.dtype)
    wrt = [nodes[k] for k in c.wrt]
    return loss, gn.grad(loss, wrt), wrt


@functools.lru_cache(maxsize=None)
def results(name, backend):
    """(loss, *gradients) of case `name` computed on `backend` (compiled once)."""
    c = CASES.get(name) or TIES[name]
    loss, grads, _ = graph_of(name)
    try:
        f = gn.compile([loss] + list(grads), backend=backend,
                       **OPTIONS.get(backend, {}))
    except gn.BackendError as exc:  # cuda without the simulator and without a GPU
        pytest.skip(str(exc))
    return f(**c.feeds)


@functools.lru_cache(maxsize=None)
def finite_differences(name):
    """{wrt name: Richardson-extrapolated central differences of the numpy forward}."""
    c = CASES[name]
    loss, _, _ = graph_of(name)
    f = gn.compile(loss, backend="numpy")
    out = {}
    for k in c.wrt:
        base = c.feeds[k]
        fd = np.zeros(base.shape)
        for idx in np.ndindex(base.shape):
            x = base[idx]
            h = c.step or (1e-3 * abs(x) if c.relative_step else 1e-3 * max(abs(x), 1.0))

            def central(step):
                plus, minus = base.copy(), base.copy()
                plus[idx] += step
                minus[idx] -= step
                return (float(f(**{**c.feeds, k: plus})) - float(f(**{**c.feeds, k: minus}))) \
                    / (plus[idx] - minus[idx])
            fd[idx] = (4 * central(h / 2) - central(h)) / 3
        out[k] = fd
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name, backend):
    c = CASES[name]
    got = results(name, backend)
    expected = finite_differences(name)
    reference = results(name, "numpy")
    for k, g, ref in zip(c.wrt, got[1:], reference[1:]):
        fd = expected[k]
        assert g.shape == fd.shape and g.dtype == np.float64, (k, g.shape, g.dtype)
        assert np.isfinite(g).all(), f"{name}: d/d{k} on {backend} is not finite: {g}"
        scale = np.abs(fd).max()
        np.testing.assert_allclose(g, fd, rtol=FD_RTOL, atol=FD_RTOL * scale + c.atol,
                                   err_msg=f"{name}: d/d{k} on {backend} vs finite differences")
        np.testing.assert_allclose(g, ref, rtol=CROSS_RTOL, atol=CROSS_ATOL,
                                   err_msg=f"{name}: d/d{k} on {backend} vs numpy")
    np.testing.assert_allclose(got[0], reference[0], rtol=CROSS_RTOL, atol=CROSS_ATOL,
                               err_msg=f"{name}: the loss on {backend} vs numpy")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(TIES))
def test_gradient_at_ties_follows_the_convention(name, backend):
    c = TIES[name]
    got = results(name, backend)
    expected = c.expected(**c.feeds)
    for k, g in zip(c.wrt, got[1:]):
        np.testing.assert_allclose(g, expected[k], rtol=1e-12, atol=1e-15,
                                   err_msg=f"{name}: d/d{k} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_mask_marks_the_first_winner_on_every_backend(backend):
    """The forward of argmax_mask at ties (max's gradient follows it)."""
    x = gn.input("x", TIED.shape, dtype="float64")
    outs = [gn.ops.argmax_mask(x, axis=a) for a in (0, 1, None)]
    try:
        got = gn.compile(outs, backend=backend, **OPTIONS.get(backend, {}))(x=TIED)
    except gn.BackendError as exc:
        pytest.skip(str(exc))
    for a, g in zip((0, 1, None), got):
        np.testing.assert_array_equal(g, _first_max_mask(TIED, a), err_msg=f"axis {a}")


def test_the_check_fails_for_a_wrong_rule(monkeypatch):
    """The finite differences are independent of the rules: softmax cross-entropy's rule
    for probability targets with the factor of the row sums left out (right only for rows
    that sum to 1) is caught."""
    name = "softmax_cross_entropy-soft-targets"
    fd = finite_differences(name)["z"]
    ops = gn.ops

    def wrong_vjp(g, out, z, y):
        scale = g * ops.reciprocal_count(z, axis=0)
        return (lambda: scale * (ops.softmax(z, axis=1) - y), None)
    monkeypatch.setattr(OPS["softmax_cross_entropy"], "vjp", wrong_vjp)
    c = CASES[name]
    nodes = {k: gn.input(k, v.shape, dtype=v.dtype.name) for k, v in c.feeds.items()}
    g = gn.compile(gn.grad(c.build(**nodes), nodes["z"]), backend="cpu")(**c.feeds)
    assert np.abs(g - fd).max() > 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_with_a_negative_axis_on_every_backend(backend):
    """slice_axis(x, -1, ...)'s gradient is pad_axis(g, -1, ...): its Place step once took
    the axis as it was, and the cpu back end generated an index `i-1` (found by the
    slice_axis case above)."""
    X = np.arange(6.0).reshape(2, 3)
    x = gn.input("x", X.shape, dtype="float64")
    outs = [gn.ops.pad_axis(x, -1, 1, 2) * 2.0, gn.ops.pad_axis(x, -2, 0, 1) * 2.0]
    got = gn.compile(outs, backend=backend, **OPTIONS.get(backend, {}))(x=X)
    np.testing.assert_array_equal(got[0], np.pad(X, [(0, 0), (1, 2)]) * 2)
    np.testing.assert_array_equal(got[1], np.pad(X, [(0, 1), (0, 0)]) * 2)
