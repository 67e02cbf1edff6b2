"""Differential fuzzing: random DAGs of elementwise, broadcast, reduction and matmul ops
must give the same numbers on the compiled CPU backend as on the numpy reference; their
gradients (with losses on top) must match finite differences in float64; and a few run in
the CUDA simulator against numpy.

`make test` runs GRAPHNN_FUZZ_EXAMPLES (default 200) examples; `make fuzz` runs more.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import assert_backends_agree

EXAMPLES = int(os.environ.get("GRAPHNN_FUZZ_EXAMPLES", "200"))

UNARY = [gn.tanh, gn.sigmoid, gn.relu, gn.square, gn.abs, gn.neg, gn.softplus,
         lambda x: gn.leaky_relu(x, 0.1), gn.elu, lambda x: gn.exp(gn.tanh(x)),
         lambda x: gn.sqrt(gn.square(x) + 1.0), lambda x: gn.log(gn.sigmoid(x) + 0.5)]
BINARY = [gn.add, gn.sub, gn.mul, gn.maximum, gn.minimum,
          lambda a, b: a / (gn.square(b) + 1.0), lambda a, b: a * 0.5 - b * 2.0]
SHAPES = [(3, 4), (4,), (1, 4), (3, 1), ()]


@st.composite
def random_dags(draw):
    """A list of output nodes and the feeds they need."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))
    nodes, feeds = [], {}
    for k, shape in enumerate(shapes):
        name = f"fz{k}"
        nodes.append(gn.input(name, shape, dtype="float64"))
        feeds[name] = rng.standard_normal(shape)
    weight = gn.param("fzW", rng.standard_normal((4, 2)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "matmul"]))
        a = draw(st.sampled_from(nodes))
        if kind == "unary":
            nodes.append(draw(st.sampled_from(UNARY))(a))
        elif kind == "binary":
            b = draw(st.sampled_from(nodes))
            try:
                nodes.append(draw(st.sampled_from(BINARY))(a, b))
            except gn.ShapeError:
                continue  # shapes that do not broadcast: try another op
        elif kind == "reduce" and a.ndim:
            fn = draw(st.sampled_from([gn.sum, gn.mean, gn.max]))
            axis = draw(st.sampled_from([None, 0, a.ndim - 1]))
            nodes.append(fn(a, axis=axis, keepdims=draw(st.booleans())))
        elif kind == "matmul" and a.ndim == 2 and a.shape[1] == 4:
            nodes.append(a @ weight)
    outputs = nodes[-draw(st.integers(1, min(2, len(nodes)))):]
    return outputs, feeds


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_dags())
def test_fuzz_cpu_matches_numpy(case):
    outputs, feeds = case
    needed = {n.name for n in gn.Graph(outputs).inputs}
    feeds = {k: v for k, v in feeds.items() if k in needed}
    assert_backends_agree(outputs, feeds, backends=("cpu",), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Gradients against finite differences, and the CUDA simulator against numpy
# ---------------------------------------------------------------------------------------

LOSSES = ["sum", "mse", "bce_logits", "softmax_xent"]


@st.composite
def random_losses(draw):
    """A random DAG reduced to a scalar loss: (loss, feeds, float64 inputs and params)."""
    outputs, feeds = draw(random_dags())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    terms = []
    for k, out in enumerate(outputs):
        weights = gn.const(rng.standard_normal(out.shape or ()))
        kind = draw(st.sampled_from(LOSSES))
        if kind == "mse":
            terms.append(gn.mse(out, weights))
        elif kind == "bce_logits":
            terms.append(gn.binary_cross_entropy(out, gn.const(rng.uniform(0, 1, out.shape)),
                                                 from_logits=True))
        elif kind == "softmax_xent" and out.ndim == 2:
            name = f"fzlabels{k}"
            labels = gn.input(name, (out.shape[0],), dtype="int64")
            feeds[name] = rng.integers(0, out.shape[1], out.shape[0])
            terms.append(gn.softmax_cross_entropy(out, labels))
        else:
            terms.append(gn.sum(out * weights))
    loss = terms[0]
    for term in terms[1:]:
        loss = loss + term
    graph = gn.Graph([loss])
    wrt = [n for n in graph.inputs if n.dtype.kind == "f"] + graph.params
    feeds = {n.name: feeds[n.name] for n in graph.inputs}
    return loss, feeds, wrt


def finite_difference(f, feeds, node, eps=1e-6):
    """Central differences of scalar f(**feeds) with respect to an input or a parameter."""
    base = feeds[node.name] if node.op == "input" else node.value
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        values = []
        for sign in (1, -1):
            moved = base.copy()
            moved[index] += sign * eps
            if node.op == "input":
                values.append(float(f(**dict(feeds, **{node.name: moved}))))
            else:
                node.value = moved
                values.append(float(f(**feeds)))
        grad[index] = (values[0] - values[1]) / (2 * eps)
    if node.op != "input":
        node.value = base
    return grad


@settings(max_examples=max(EXAMPLES // 5, 5), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_losses())
def test_fuzz_gradients_match_finite_differences(case):
    loss, feeds, wrt = case
    f = gn.compile(loss, backend="numpy")
    grads = gn.compile(gn.grad(loss, wrt), backend="numpy")(**feeds)
    for node, g in zip(wrt, grads):
        assert g.shape == (feeds[node.name].shape if node.op == "input" else node.shape)
        np.testing.assert_allclose(g, finite_difference(f, feeds, node), rtol=1e-5, atol=1e-6,
                                   err_msg=node.label())


CUDA_EXAMPLES = max(EXAMPLES // 50, 3)


@pytest.mark.skipif(not simulator_enabled(), reason="needs NUMBA_ENABLE_CUDASIM=1")
@settings(max_examples=CUDA_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_losses())
def test_fuzz_cuda_simulator_matches_numpy(case):
    loss, feeds, wrt = case
    outputs = [loss] + gn.grad(loss, wrt)
    assert_backends_agree(outputs, feeds, backends=("cuda",), rtol=1e-9, atol=1e-11)


def test_fuzz_soak_memory_stays_flat():
    """graphnn/soak.py in a fresh process: 10,000 training steps per back end under
    `make fuzz` (GRAPHNN_FUZZ_EXAMPLES >= 1000), 1,000 otherwise; RSS must stay flat."""
    steps = 10_000 if EXAMPLES >= 1000 else 1_000
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "graphnn.tools.soak", "--steps", str(steps),
                          "--max-growth-mb", "4"], capture_output=True, text=True, cwd=root,
                         timeout=1800)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" ok") == 2
