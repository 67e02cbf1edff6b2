"""Differential fuzzing with hard values: random DAGs of at least three ops, fed with NaN,
+-inf, -0.0, huge and tiny magnitudes mixed into ordinary numbers, in float32, float64,
int32 and int64 (integer graphs use every op that takes integers), must give on the
compiled cpu back end the numpy back end's NaNs exactly and its values closely (integers
exactly); results that are the same node twice, views of one another or an input must not
share memory with each other or with the feeds. A few run in the CUDA simulator.

`make test` runs min(GRAPHNN_FUZZ_EXAMPLES, 40) examples, `make fuzz` GRAPHNN_FUZZ_EXAMPLES.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS

EXAMPLES = int(os.environ.get("GRAPHNN_FUZZ_EXAMPLES", "200"))
VALUE_EXAMPLES = EXAMPLES if EXAMPLES >= 1000 else min(EXAMPLES, 40)
CUDA_EXAMPLES = max(EXAMPLES // 100, 3)
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SHAPES = [(3, 4), (4,), (1, 4), (3, 1), ()]
DTYPES = ["float32", "float64", "int32", "int64"]

# ops that take integers (as found by trying every op of graphnn.ops on int32 and int64)
INT_UNARY = [gn.neg, gn.abs, gn.square, gn.sign, lambda x: gn.clip(x, -3, 5)]
INT_BINARY = [gn.add, gn.sub, gn.mul, gn.maximum, gn.minimum]
INT_REDUCE = [gn.sum, gn.max]
# float-only ops, with domains that NaN, inf and huge values reach
FLOAT_UNARY = INT_UNARY + [gn.tanh, gn.sigmoid, gn.relu, gn.softplus, gn.exp, gn.log, gn.sqrt,
                           lambda x: gn.leaky_relu(x, 0.1), gn.elu, gn.ops.step,
                           lambda x: gn.softmax(x, axis=-1) if x.ndim else gn.exp(x)]
FLOAT_BINARY = INT_BINARY + [gn.div, lambda a, b: gn.pow(gn.abs(a), b)]
FLOAT_REDUCE = INT_REDUCE + [gn.mean]


def hard_values(rng, shape, dtype, huge=True):
    """Ordinary numbers of `dtype`, with a random share replaced by hard ones (without
    `huge`, no finite value near the overflow threshold: a matmul's weights, since whether
    a sum of products of such values overflows to inf, and then meets -inf as NaN,
    depends on the order BLAS adds them in, which NumPy does not fix either)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = rng.standard_normal(shape) * rng.choice([1.0, 1e-3, 1e3])
        specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.tiny), -float(info.tiny),
                    float(info.smallest_subnormal), 1e-30]
        if huge:
            specials += [info.max, -info.max, float(info.max) ** 0.5, 1e30, -1e30]
    else:
        info = np.iinfo(dtype)
        values = rng.integers(-5, 6, shape)
        specials = [info.min, info.max, info.min + 1, info.max - 1, 0, -1, 1,
                    int(np.sqrt(info.max)) + 1, -(2**20)]
    values = np.asarray(values, dtype=dtype)
    share = rng.choice([0.0, 0.2, 0.5, 1.0])
    mask = rng.random(values.shape) < share
    picked = np.asarray(rng.choice(np.asarray(specials, dtype=np.float64 if dtype.kind == "f"
                                              else dtype), size=values.shape), dtype)
    return np.where(mask, picked, values).astype(dtype)


@st.composite
def hard_dags(draw, cuda=False):
    """(outputs, feeds): a random DAG of at least three ops on hard values. With cuda=True,
    only ops whose simulated kernels follow NumPy on any value (the simulator runs Python's
    math functions, which raise on exp(1000) or log(-1))."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from(DTYPES))
    integer_ops = dtype.startswith("int") or cuda
    unary = INT_UNARY if integer_ops else FLOAT_UNARY
    binary = INT_BINARY if integer_ops else FLOAT_BINARY
    reduce = INT_REDUCE if integer_ops else FLOAT_REDUCE
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))
    nodes, feeds = [], {}
    for k, shape in enumerate(shapes):
        name = f"fv{k}"
        nodes.append(gn.input(name, shape, dtype=dtype))
        feeds[name] = hard_values(rng, shape, dtype)
    inputs = list(nodes)
    wanted, attempts = draw(st.integers(3, 8)), 0
    while len(nodes) - len(inputs) < wanted and attempts < 40:
        attempts += 1
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "layout", "matmul"]))
        a = draw(st.sampled_from(nodes))
        try:
            if kind == "unary":
                nodes.append(draw(st.sampled_from(unary))(a))
            elif kind == "binary":
                nodes.append(draw(st.sampled_from(binary))(a, draw(st.sampled_from(nodes))))
            elif kind == "reduce" and a.ndim:
                axis = draw(st.sampled_from([None, 0, a.ndim - 1]))
                nodes.append(draw(st.sampled_from(reduce))(a, axis=axis,
                                                          keepdims=draw(st.booleans())))
            elif kind == "layout" and a.ndim:
                nodes.append(draw(st.sampled_from(LAYOUT))(a, draw))
            elif kind == "matmul" and a.ndim == 2 and not integer_ops:
                w = gn.param(f"fvW{len(nodes)}",
                             hard_values(rng, (a.shape[1], 2), dtype, huge=False), dtype=dtype)
                # the left operand clipped to +-1e30 (NaN stays NaN): a product of a value
                # near the overflow threshold overflows to inf on its own but not inside
                # a fused multiply-add, so whether such a row's sum meets -inf (NaN)
                # depends on which BLAS kernel runs; bounded products cannot overflow
                nodes.append(gn.clip(a, -1e30, 1e30) @ w)
        except gn.ShapeError:
            continue  # shapes that do not fit the op: try another
    outputs = nodes[-draw(st.integers(1, min(2, len(nodes)))):]
    extra = draw(st.sampled_from(["none", "same", "view", "input"]))
    if extra == "same":
        outputs.append(outputs[0])
    elif extra == "view" and outputs[0].ndim:
        outputs.append(draw(st.sampled_from(LAYOUT))(outputs[0], draw))
    elif extra == "input":
        outputs.append(draw(st.sampled_from(inputs)))
    return outputs, feeds


LAYOUT = [
    lambda x, draw: gn.reshape(x, (-1,)),
    lambda x, draw: gn.transpose(x),
    lambda x, draw: gn.slice_axis(x, x.ndim - 1, 0, max(x.shape[-1] - 1, 1)),
    lambda x, draw: gn.concat([x, x], axis=draw(st.integers(0, x.ndim - 1))),
    lambda x, draw: gn.ops.pad_axis(x, 0, draw(st.integers(0, 2)), draw(st.integers(0, 2))),
]


def describe(outputs):
    """The graph as lines "i: op(inputs) attrs -> shape dtype", to print with a failure."""
    nodes = gn.Graph(outputs).nodes
    index = {id(n): i for i, n in enumerate(nodes)}
    lines = []
    for i, n in enumerate(nodes):
        attrs = {k: v for k, v in n.attrs.items() if k != "value"}
        args = ", ".join(str(index[id(x)]) for x in n.inputs) if n.inputs else \
            (n.name or repr(n.attr("value")) if n.op == "const" else n.name)
        lines.append(f"{i}: {n.op}({args}) {attrs or ''} -> {n.shape} {n.dtype}")
    lines.append(f"outputs: {[index[id(o)] for o in outputs]}")
    return "\n".join(lines)


def compare(outputs, feeds, backend):
    """Run `outputs` on numpy and on `backend`: equal NaNs, close values, exact integers,
    no result sharing memory with another or with a feed."""
    graph = gn.Graph(outputs)
    note(describe(outputs))
    feeds = {n.name: feeds[n.name] for n in graph.inputs}
    originals = {k: v.copy() for k, v in feeds.items()}
    with np.errstate(all="ignore"):
        expected = gn.compile(outputs, backend="numpy")(**feeds)
        got = gn.compile(outputs, backend=backend, **BACKEND_OPTIONS.get(backend, {}))(**feeds)
    for k, (node, e, g) in enumerate(zip(outputs, expected, got)):
        e, g = np.asarray(e), np.asarray(g)
        where = f"output {k}: {node.label()}"
        assert g.dtype == e.dtype and g.shape == e.shape, \
            f"{where}: {backend} {g.dtype}{g.shape}, numpy {e.dtype}{e.shape}"
        if e.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"{where}: NaNs")
            rtol, atol = (2e-4, 1e-30) if e.dtype == np.float32 else (1e-9, 1e-300)
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=where)
        else:
            np.testing.assert_array_equal(g, e, err_msg=where)
    for k, g in enumerate(got):
        for j in range(k):
            assert not np.shares_memory(g, got[j]), f"{backend}: results {j} and {k} share"
        for name, fed in feeds.items():
            assert not np.shares_memory(g, fed), f"{backend}: result {k} shares feed {name}"
    for name, fed in feeds.items():
        np.testing.assert_array_equal(fed, originals[name], err_msg=f"feed {name} changed")


@settings(max_examples=VALUE_EXAMPLES, **SETTINGS)
@given(hard_dags())
def test_fuzz_cpu_matches_numpy_on_hard_values(case):
    compare(*case, backend="cpu")


@pytest.mark.skipif(not simulator_enabled(), reason="needs NUMBA_ENABLE_CUDASIM=1")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # simulated threads: errstate is per thread
@settings(max_examples=CUDA_EXAMPLES, **SETTINGS)
@given(hard_dags(cuda=True))
def test_fuzz_cuda_simulator_matches_numpy_on_hard_values(case):
    compare(*case, backend="cuda")
