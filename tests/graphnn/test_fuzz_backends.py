"""Differential fuzzing: random DAGs of elementwise, broadcast, reduction and matmul ops
must give the same numbers on the compiled CPU backend as on the numpy reference.

`make test` runs GRAPHNN_FUZZ_EXAMPLES (default 200) examples; `make fuzz` runs more.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import graphnn as gn

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
    expected = gn.compile(outputs, backend="numpy")(**feeds)
    got = gn.compile(outputs, backend="cpu")(**feeds)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
