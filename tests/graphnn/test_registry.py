"""The op registry (graphnn/registry.py): every stanza is complete, `register` checks new
ones, and an elementwise op added at run time works everywhere an op of graphnn does."""
import re

import numpy as np
import pytest

import graphnn as gn
from graphnn.registry import CATEGORIES, KINDS, OPS, OpDef, check_opdef

from helpers import BACKEND_OPTIONS


def _same_shape(specs):
    return specs[0].sym_shape, specs[0].dtype


def test_every_op_declares_a_known_kind_and_netron_category():
    assert len(OPS) > 50
    for name, opdef in OPS.items():
        assert opdef.name == name
        assert opdef.kind in KINDS, name
        assert opdef.category is None or opdef.category in CATEGORIES, name
        check_opdef(opdef)  # what register() checked at import time still holds


def test_each_kind_has_what_its_lowering_needs():
    by_kind = {}
    for opdef in OPS.values():
        by_kind.setdefault(opdef.kind, []).append(opdef.name)
        if opdef.kind == "elementwise":
            assert isinstance(opdef.scalar, str) and "{0}" in opdef.scalar, opdef.name
        elif opdef.kind == "composite":
            assert opdef.decompose is not None and opdef.lower is None, opdef.name
        elif opdef.kind != "leaf":
            assert callable(opdef.lower), opdef.name
    assert sorted(by_kind["leaf"]) == ["const", "input", "param", "variable"]
    assert sorted(by_kind["reduce"]) == ["max", "sum"]
    assert sorted(by_kind["pattern"]) == ["broadcast_like", "slice_axis", "transpose"]
    assert sorted(by_kind["place"]) == ["concat", "pad_axis"]
    assert by_kind["view"] == ["reshape"] and by_kind["matmul"] == ["matmul"]
    assert sorted(by_kind["window"]) == sorted([
        "conv2d", "conv2d_grad_input", "conv2d_grad_filter", "max_pool2d", "max_pool2d_grad",
        "avg_pool2d", "avg_pool2d_grad", "depthwise_conv2d", "depthwise_conv2d_grad_input",
        "depthwise_conv2d_grad_filter", "grouped_conv2d", "grouped_conv2d_grad_input",
        "grouped_conv2d_grad_filter", "channel_shuffle", "max_pool2d_padded",
        "max_pool2d_padded_grad"])
    assert {"softmax", "mean", "mse", "one_hot"} <= set(by_kind["composite"])
    assert set(by_kind) <= set(KINDS)


def test_categories_are_the_ones_rendering_used():
    assert OPS["relu"].category == "Activation" and OPS["conv2d"].category == "Layer"
    assert OPS["max_pool2d"].category == "Pool" and OPS["reshape"].category == "Shape"
    assert OPS["concat"].category == "Tensor" and OPS["transpose"].category == "Transform"
    assert OPS["input"].category == "Data"
    # Netron leaves arithmetic, reductions and losses uncoloured
    assert OPS["add"].category is None and OPS["sum"].category is None
    assert OPS["softmax_cross_entropy"].category is None


def test_pattern_lowerings_name_the_index_they_read():
    x = gn.input("x", (2, 3, 4))
    transposed = gn.transpose(x, (2, 0, 1))
    assert OPS["transpose"].lower(transposed, ["i0", "i1", "i2"]) == (x, ["i1", "i2", "i0"])
    sliced = gn.slice_axis(x, 1, 1, 3)
    assert OPS["slice_axis"].lower(sliced, ["i0", "i1", "i2"]) == (x, ["i0", "i1 + 1", "i2"])
    g = gn.input("g", (2, 4))
    spread = gn.ops.broadcast_like(g, x, axis=1)
    assert OPS["broadcast_like"].lower(spread, ["i0", "i1", "i2"]) == (g, ["i0", "i2"])


@pytest.mark.parametrize("changes, message", [
    ({"kind": "fancy"}, "kind 'fancy' is not one of leaf, elementwise"),
    ({"category": "Loss"}, "category 'Loss' is not None or one of Layer"),
    ({"scalar": None}, "an elementwise op needs a `scalar` template"),
    ({"kind": "reduce"}, "a reduce op needs `lower`"),
    ({"kind": "composite"}, "a composite op needs `decompose`"),
    ({"name": "my-op"}, "an op's name must be a Python identifier"),
    ({"impl": None}, "an op needs `infer` (its shape rule) and `impl`"),
])
def test_register_refuses_an_incomplete_stanza(changes, message):
    fields = dict(name="graphnn_test_half_op", category=None, infer=_same_shape,
                  impl=lambda x: x, scalar="{0}")
    fields.update(changes)
    with pytest.raises(gn.GraphError) as info:
        gn.register_op(OpDef(**fields))
    assert message in str(info.value)
    assert fields["name"] not in OPS


def test_register_does_not_replace_an_op_unless_asked():
    before = OPS["exp"]
    with pytest.raises(gn.GraphError, match="'exp' is already registered"):
        gn.register_op(OpDef("exp", None, _same_shape, np.exp, scalar="exp({0})"))
    assert OPS["exp"] is before
    with pytest.raises(gn.GraphError, match="no op 'graphnn_test_never_registered'"):
        gn.unregister_op("graphnn_test_never_registered")


@pytest.fixture
def cube():
    """A throwaway elementwise op, registered through the public API and removed after."""
    fn = gn.define_elementwise(
        "cube", lambda x: x ** 3, lambda g, out, x: (lambda: g * 3 * gn.square(x),),
        scalar="{0} * {0} * {0}", category="Activation", doc="x**3")
    try:
        yield fn
    finally:
        gn.unregister_op("cube")
    assert "cube" not in OPS


def test_an_elementwise_op_added_at_run_time_compiles_and_differentiates(cube):
    assert cube.__name__ == "cube"
    assert cube.__doc__.startswith("cube(x, name=None): x**3, elementwise.\n")
    assert "y = cube(x)" in cube.__doc__
    assert OPS["cube"].kind == "elementwise" and OPS["cube"].category == "Activation"
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.5, 1.5, (5, 3)).astype(np.float32)
    W0 = rng.uniform(-1, 1, 3).astype(np.float32)
    x = gn.input("x", (None, 3))
    W = gn.param("W", W0.copy())
    y = cube(x * W, name="y")
    loss = gn.sum(y)
    (gW,) = gn.grad(loss, [W])
    assert y.op == "cube" and y.shape == (None, 3) and y.dtype == np.float32
    X64, W64 = X.astype(np.float64), W0.astype(np.float64)
    expect_y = (X64 * W64) ** 3
    expect_gW = (3 * (X64 * W64) ** 2 * X64).sum(axis=0)
    for backend in ("numpy", "cpu", "cuda"):
        f = gn.compile([y, gW], backend=backend, **BACKEND_OPTIONS.get(backend, {}))
        got_y, got_gW = f(x=X)
        np.testing.assert_allclose(got_y, expect_y, rtol=1e-5, atol=1e-6, err_msg=backend)
        np.testing.assert_allclose(got_gW, expect_gW, rtol=1e-5, atol=1e-5, err_msg=backend)
        if backend != "numpy":  # the template, fused with the multiply, is in the kernel
            assert re.search(r"\n +(?:s\d+_)?v\d+ = (\w+) \* \1 \* \1\n", f.source), backend
    # eager mode and the tape use the same stanza
    np.testing.assert_allclose(cube(X), X ** 3, rtol=1e-6)
    value, grad = gn.eager.value_and_grad(lambda w: gn.sum(cube(X * w)))(W0)
    np.testing.assert_allclose(grad, expect_gW, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, expect_y.sum(), rtol=1e-5)


def test_gradient_of_the_run_time_op_matches_finite_differences(cube):
    x = gn.input("x", (4,), dtype="float64")
    p = gn.param("p", np.array([0.5, -1.0, 2.0, 0.1]))
    errors = gn.testing.check_grad(gn.sum(cube(x * p)), [p], {"x": np.array([1.0, 2, -1, 3])})
    assert max(errors.values()) < 1e-6


def test_an_elementwise_op_checks_its_number_of_inputs(cube):
    with pytest.raises(gn.GraphError, match="cube takes 1 input, got 2"):
        cube(gn.input("a", (2,)), gn.input("b", (2,)))
    assert gn.ops._template_arity("{T}(1) if {0} >= {1} else {T}(0)") == 2
