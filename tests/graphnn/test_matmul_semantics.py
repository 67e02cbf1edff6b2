"""`@` / gn.matmul with NumPy's np.matmul semantics: vectors (matrix-vector, vector-matrix,
the dot product), stacks of matrices with broadcast batch dims, their gradients, on every
back end (numpy, cpu, cuda in the simulator) and in eager mode; the shape rule and its
errors; the lowering (one gemm for (B, n, k) @ (k, m) and for its weight gradient).

References are independent of graphnn: values from np.matmul, gradients of
sum(G * (A @ B)) built from np.matmul one unit matrix at a time (the product is linear, so
that is the exact gradient), and central finite differences through the compiled graph.
"""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS, location
from kernels import ir

RNG = np.random.default_rng(20)

# name -> (shape of a, shape of b); tiny, for the CUDA simulator
CASES = {
    "matrix @ vector": ((3, 4), (4,)),
    "vector @ matrix": ((4,), (4, 3)),
    "vector @ vector": ((4,), (4,)),
    "stack @ matrix": ((2, 3, 4), (4, 5)),
    "stack @ stack": ((2, 3, 4), (2, 4, 5)),
    "broadcast (1, n, k) @ (B, k, m)": ((1, 3, 4), (2, 4, 5)),
    "broadcast over two batch axes": ((2, 1, 3, 2), (1, 3, 2, 2)),
    "vector @ stack": ((4,), (2, 4, 3)),
    "stack @ vector": ((2, 3, 4), (4,)),
    "matrix @ stack": ((3, 4), (2, 4, 5)),
}

BACKENDS = ["numpy", "cpu", "cuda"]
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}


def reference_gradients(a, b, g):
    """d sum(g * (a @ b)) / da and / db, one unit matrix at a time, with np.matmul."""
    grads = []
    for which, x in ((0, a), (1, b)):
        out = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            unit = np.zeros(x.shape)
            unit[idx] = 1.0
            product = np.matmul(unit, b) if which == 0 else np.matmul(a, unit)
            out[idx] = np.sum(g * product)
        grads.append(out)
    return grads


def build_all(dtype):
    """Every case in one graph: outputs a @ b and both gradients of sum(g * (a @ b))."""
    outputs, feeds, expected = [], {}, []
    for k, (sa, sb) in enumerate(CASES.values()):
        A, B = RNG.standard_normal(sa), RNG.standard_normal(sb)
        G = RNG.standard_normal(np.matmul(A, B).shape)
        a, b = gn.input(f"a{k}", sa, dtype=dtype), gn.input(f"b{k}", sb, dtype=dtype)
        g = gn.input(f"g{k}", G.shape, dtype=dtype)
        y = a @ b
        ga, gb = gn.grad(gn.sum(y * g), [a, b])
        outputs += [y, ga, gb]
        feeds.update({f"a{k}": A.astype(dtype), f"b{k}": B.astype(dtype),
                      f"g{k}": G.astype(dtype)})
        A, B, G = (feeds[f"{p}{k}"].astype(np.float64) for p in "abg")
        expected += [np.matmul(A, B), *reference_gradients(A, B, G)]
    return outputs, feeds, expected


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_gradients_match_numpy(backend, dtype):
    if backend == "cuda" and not simulator_enabled():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")
    outputs, feeds, expected = build_all(dtype)
    for node, e in zip(outputs, expected):
        assert node.shape == e.shape and node.dtype == np.dtype(dtype)
    got = gn.compile(outputs, backend=backend, **BACKEND_OPTIONS.get(backend, {}))(**feeds)
    names = [f"{name}: {what}" for name in CASES for what in ("a @ b", "grad a", "grad b")]
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape and g.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(g, e, err_msg=f"{backend}: {name}", **TOLERANCE[dtype])


def test_cpu_library_mode_gives_the_same_results():
    outputs, feeds, expected = build_all("float64")
    got = gn.compile(outputs, backend="cpu", library=True)(**feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **TOLERANCE["float64"])


@pytest.mark.parametrize("name", ["matrix @ vector", "vector @ vector",
                                  "broadcast (1, n, k) @ (B, k, m)", "stack @ matrix"])
def test_gradients_match_finite_differences(name):
    sa, sb = CASES[name]
    a, b = gn.input("a", sa, dtype="float64"), gn.input("b", sb, dtype="float64")
    loss = gn.sum(gn.tanh(a @ b) ** 2)
    feeds = {"a": RNG.standard_normal(sa), "b": RNG.standard_normal(sb)}
    errors = gn.testing.check_grad(loss, [a, b], feeds, backend="cpu")
    assert max(errors.values()) < 1e-7, errors


def test_eager_mode_values_and_gradients():
    for sa, sb in CASES.values():
        A, B = RNG.standard_normal(sa), RNG.standard_normal(sb)
        G = RNG.standard_normal(np.matmul(A, B).shape)
        value, (ga, gb) = gn.eager.value_and_grad(
            lambda x, y: gn.sum(gn.matmul(x, y) * G), argnums=(0, 1))(A, B)
        ra, rb = reference_gradients(A, B, G)
        np.testing.assert_allclose(value, np.sum(np.matmul(A, B) * G), rtol=1e-12)
        np.testing.assert_allclose(ga, ra, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-12)
        assert np.asarray(gn.matmul(A, B)).shape == np.matmul(A, B).shape


def test_a_layer_written_as_in_the_lecture_trains():
    """y = W @ x + b with a vector x: one SGD step equals the NumPy formula."""
    W = gn.param("W", RNG.standard_normal((3, 4)))
    b = gn.param("b", np.zeros(3))
    x, t = gn.input("x", (4,), dtype="float64"), gn.input("t", (3,), dtype="float64")
    loss = gn.sum((gn.tanh(W @ x + b) - t) ** 2)
    W0, X, T = W.value.copy(), RNG.standard_normal(4), RNG.standard_normal(3)
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, [W, b]), backend="cpu")
    step(x=X, t=T)
    h = np.tanh(W0 @ X)
    delta = 2 * (h - T) * (1 - h ** 2)
    np.testing.assert_allclose(W.value, W0 - 0.1 * np.outer(delta, X), rtol=1e-12)
    np.testing.assert_allclose(b.value, -0.1 * delta, rtol=1e-12)


def test_symbolic_batch_dims():
    q = gn.input("q", (None, 3, 4))
    k = gn.input("k", (None, 4, 3))
    w = gn.param("w", RNG.standard_normal((4, 2)).astype(np.float32))
    scores, proj = q @ k, q @ w
    assert scores.shape == (None, 3, 3) and proj.shape == (None, 3, 2)
    loss = gn.sum(scores ** 2) + gn.sum(proj)
    gq, gw = gn.grad(loss, [q, w])
    Q, K = RNG.standard_normal((5, 3, 4)), RNG.standard_normal((5, 4, 3))
    W = w.value.astype(np.float64)
    for backend in ("numpy", "cpu"):
        f = gn.compile([scores, proj, gq, gw], backend=backend)
        s, p, dq, dw = f(q=Q.astype(np.float32), k=K.astype(np.float32))
        S = Q @ K
        np.testing.assert_allclose(s, S, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p, Q @ W, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dq, 2 * S @ K.transpose(0, 2, 1) + np.ones((5, 3, 2)) @ W.T,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw, Q.sum(axis=(0, 1))[:, None] * np.ones((1, 2)),
                                   rtol=1e-5, atol=1e-5)
        # another batch size, same compiled function
        s2 = f(q=Q[:2].astype(np.float32), k=K[:2].astype(np.float32))[0]
        np.testing.assert_allclose(s2, S[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa, sb, message", [
    ((3, 4), (5,), r"inner dims differ: \(3, 4\) @ \(5,\)"),
    ((4,), (3,), r"inner dims differ: \(4,\) @ \(3,\)"),
    ((2, 3, 4), (3, 4, 5), r"batch dims \(2,\) and \(3,\) do not broadcast: "
                           r"\(2, 3, 4\) @ \(3, 4, 5\)"),
    ((), (3,), r"matmul takes operands of rank 1 or more, got \(\) @ \(3,\)"),
])
def test_shape_errors_name_both_shapes_and_the_line(sa, sb, message):
    a, b = gn.input("a", sa), gn.input("b", sb)
    with pytest.raises(gn.ShapeError, match=message) as err:
        line = location(1)
        a @ b
    text = str(err.value)
    assert text.startswith("matmul: ") and text.endswith(f"at {line}")
    assert f"'a' {gn.shapes.format_shape(sa)}" in text
    assert f"'b' {gn.shapes.format_shape(sb)}" in text


def test_result_shapes_follow_numpy():
    for sa, sb in list(CASES.values()) + [((5, 1, 2, 3), (4, 3, 6)), ((1,), (1, 7))]:
        a, b = gn.input("a", sa), gn.input("b", sb)
        assert (a @ b).shape == np.matmul(np.ones(sa), np.ones(sb)).shape


def test_stack_times_matrix_and_its_weight_gradient_are_single_gemms():
    """(B, n, k) @ (k, m): one BatchMatmul step each for the product, the input gradient
    and the weight gradient (summed over B inside the step: no (B, k, m) stack, no
    reduction), and the cpu module calls batch_gemm, whose fast paths make each one gemm."""
    x = gn.input("x", (None, 3, 4))
    w = gn.param("w", shape=(4, 5), seed=0)
    loss = gn.sum(gn.tanh(x @ w))
    gw, gx = gn.grad(loss, [w, x])
    f = gn.compile([gw, gx], backend="cpu")
    kinds = [type(s).__name__ for s in f.program.steps]
    products = [s for s in f.program.steps if isinstance(s, ir.BatchMatmul)]
    assert len(products) == 3 and "Matmul" not in kinds
    assert not [s for s in f.program.steps if isinstance(s, ir.Reduce) and s.domain[-1] == 5
                and len(s.domain) == 3 and s.axes == (0,)]
    (weight,) = [s for s in products if s.out.shape == (1, 4, 5)]
    assert weight.trans_a and not weight.trans_b and weight.a.shape == ("d0", 3, 4)
    assert "batch_gemm(" in f.source
    X = RNG.standard_normal((6, 3, 4)).astype(np.float32)
    e_gw, e_gx = gn.compile([gw, gx], backend="numpy")(x=X)
    got_gw, got_gx = f(x=X)
    np.testing.assert_allclose(got_gw, e_gw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_gx, e_gx, rtol=1e-5, atol=1e-5)


def test_onnx_export_and_import_of_batched_matmul(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator
    x = gn.input("x", (None, 3, 4))
    v = gn.input("v", (4,))
    k = gn.const(RNG.standard_normal((2, 1, 4, 3)).astype(np.float32))
    y = gn.matmul(x, k, name="y")  # (?, 3, 4) @ (2, 1, 4, 3) -> (2, ?, 3, 3)
    z = gn.matmul(x, v, name="z")
    feeds = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32),
             "v": RNG.standard_normal(4).astype(np.float32)}
    path = gn.onnx.export([y, z], tmp_path / "matmul.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    got = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_allclose(got[0], np.matmul(feeds["x"], k.value), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], feeds["x"] @ feeds["v"], rtol=1e-5, atol=1e-6)
    imported = gn.onnx.load(path)
    assert [n.op for n in gn.Graph(imported.outputs).nodes].count("matmul") == 2
    back = gn.compile(imported.outputs, backend="cpu")(**feeds)
    for g, e in zip(back, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
