"""gn.repeat: one block applied n times, traced, differentiated and compiled once."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import graphnn as gn
from graphnn.node import Node


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, WIDTH = 5, 6


def residual(h, W, b):
    return h + gn.relu(h @ W + b)


def _values(seed=0, n=N, width=WIDTH):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((n, width, width)) * 0.4).astype(np.float32),
            (rng.standard_normal((n, width)) * 0.2).astype(np.float32),
            rng.standard_normal((3, width)).astype(np.float32))


def _unrolled(Wv, bv, X, backend):
    """The same stack written as a Python loop: h, loss and the stacked gradients."""
    x = gn.input("x", (None, WIDTH))
    Ws = [gn.param(f"W{k}", Wv[k].copy()) for k in range(len(Wv))]
    bs = [gn.param(f"b{k}", bv[k].copy()) for k in range(len(bv))]
    h = x
    for W, b in zip(Ws, bs):
        h = residual(h, W, b)
    loss = gn.sum(h * h)
    grads = gn.grad(loss, Ws + bs + [x])
    out = gn.compile([h, loss] + grads, backend=backend)(x=X)
    n = len(Wv)
    return out[0], out[1], np.stack(out[2:2 + n]), np.stack(out[2 + n:2 + 2 * n]), out[-1]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_repeat_matches_the_unrolled_stack_values_and_gradients(backend):
    Wv, bv, X = _values()
    x = gn.input("x", (None, WIDTH))
    W, b = gn.param("W", Wv.copy()), gn.param("b", bv.copy())
    h = gn.repeat(residual, N, x, W, b)
    assert h.shape == (None, WIDTH) and h.dtype == np.float32
    loss = gn.sum(h * h)
    gW, gb, gx = gn.grad(loss, [W, b, x])
    assert (gW.shape, gb.shape, gx.shape) == ((N, WIDTH, WIDTH), (N, WIDTH), (None, WIDTH))
    got = gn.compile([h, loss, gW, gb, gx], backend=backend)(x=X)
    want = _unrolled(Wv, bv, X, "numpy")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
    # against NumPy written by hand
    ref = X
    for k in range(N):
        ref = ref + np.maximum(ref @ Wv[k] + bv[k], 0)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)


def test_the_step_is_one_node_whatever_the_depth():
    x = gn.input("x", (None, WIDTH))
    sizes = []
    for n in (3, 300):
        W = gn.param(f"W{n}", shape=(n, WIDTH, WIDTH), seed=1)
        b = gn.param(f"b{n}", shape=(n, WIDTH), init="zeros")
        loss = gn.sum(gn.repeat(residual, n, x, W, b))
        updates = gn.optim.SGD(0.01).updates(loss, [W, b])
        sizes.append(len(gn.Graph([loss] + list(updates.values())).nodes))
    assert sizes[0] == sizes[1]


def test_training_with_sgd_on_cpu_follows_numpy():
    Wv, bv, X = _values(3)
    Y = np.random.default_rng(4).standard_normal((3, WIDTH)).astype(np.float32)
    results = {}
    for backend in ("numpy", "cpu"):
        x, y = gn.input("x", (None, WIDTH)), gn.input("y", (None, WIDTH))
        W, b = gn.param("W", Wv.copy()), gn.param("b", bv.copy())
        loss = gn.mse(gn.repeat(residual, N, x, W, b), y)
        step = gn.compile(loss, updates=gn.optim.SGD(0.05).updates(loss, [W, b]),
                          backend=backend)
        losses = [float(step(x=X, y=Y)) for _ in range(4)]
        results[backend] = losses, W.value.copy(), b.value.copy()
        assert losses[-1] < losses[0]
    for got, want in zip(results["cpu"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_convolutional_block_compiles_its_kernels_with_the_program():
    rng = np.random.default_rng(5)
    Wv = (rng.standard_normal((4, 3, 3, 2, 2)) * 0.2).astype(np.float32)
    X = rng.standard_normal((2, 5, 5, 2)).astype(np.float32)
    got = {}
    for backend in ("numpy", "cpu"):
        x = gn.input("x", (None, 5, 5, 2))
        W = gn.param("W", Wv.copy())
        h = gn.repeat(lambda h, w: h + gn.relu(gn.conv2d(h, w, padding="same")), 4, x, W)
        loss = gn.sum(h * h)
        f = gn.compile([loss, gn.grad(loss, W)], backend=backend)
        got[backend] = f(x=X)
    for g, w in zip(got["cpu"], got["numpy"]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # one conv_gemm module serves the block and its gradient
    body = next(n for n in f.graph.nodes if n.op == "repeat").attr("body")
    forward, backward = body.forward("cpu"), body.backward("cpu", "weights")
    conv = [{path for _, path in function._kernels if "conv_gemm" in open(path).read()}
            for function in (forward, backward)]
    assert len(conv[0]) == 1 and conv[0] == conv[1]


def test_the_blocks_kernels_compile_in_the_programs_two_processes(tmp_path):
    # (a fresh process with an empty cache: nothing is compiled before the first call)
    script = """
import json, numpy as np, graphnn as gn
x = gn.input("x", (None, 5, 5, 2))
W = gn.param("W", shape=(4, 3, 3, 2, 2), seed=0)
h = gn.repeat(lambda h, w: h + gn.relu(gn.conv2d(h, w, padding="same")), 4, x, W)
loss = gn.sum(h * h)
f = gn.compile(loss, updates=gn.optim.SGD(0.01).updates(loss, [W]), backend="cpu")
f(x=np.ones((2, 5, 5, 2), np.float32))
body = next(n for n in f.graph.nodes if n.op == "repeat").attr("body")
print(json.dumps([f.stats["compile_processes"], f.stats["kernels_compiled"]] +
                 [g.stats["kernels_compiled"] for g in (body.forward("cpu"),
                                                        body.backward("cpu", "weights"))]))
"""
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(tmp_path), GRAPHNN_QUIET="1",
               GRAPHNN_JOBS="2")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    processes, own, forward, backward = json.loads(out.stdout.strip().splitlines()[-1])
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: kernels compile in one process")
    # the blocks' kernels went into the program's queue: none left for their first calls
    assert processes == 2 and own > 0 and forward == 0 and backward == 0


def test_eager_repeat_applies_the_block_n_times_and_records_on_the_tape():
    Wv, bv, X = _values(6)
    out = gn.repeat(residual, N, X, Wv, bv)
    assert isinstance(out, np.ndarray) and not isinstance(out, Node)
    want = _unrolled(Wv, bv, X, "numpy")
    np.testing.assert_allclose(out, want[0], rtol=1e-5, atol=1e-5)
    loss, (gW, gb) = gn.eager.value_and_grad(
        lambda W, b: gn.sum(gn.square(gn.repeat(residual, N, X, W, b))), argnums=(0, 1))(Wv, bv)
    np.testing.assert_allclose(gW, want[2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gb, want[3], rtol=1e-4, atol=1e-5)


def test_a_block_that_ignores_an_argument_and_a_carry_only_block():
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    for backend in ("numpy", "cpu"):
        x = gn.input("x", (None, 3))
        s = gn.param("s", np.ones((4, 3), np.float32))
        h = gn.repeat(lambda h, unused: h * 2.0, 4, x, s)
        twice = gn.repeat(lambda h: h + 1.0, 3, x)
        loss = gn.sum(h)
        out = gn.compile([h, twice, gn.grad(loss, s), gn.grad(loss, x)], backend=backend)(x=X)
        np.testing.assert_array_equal(out[0], X * 16)
        np.testing.assert_array_equal(out[1], X + 3)
        np.testing.assert_array_equal(out[2], np.zeros((4, 3), np.float32))
        np.testing.assert_array_equal(out[3], np.full((2, 3), 16, np.float32))


def test_bad_blocks_and_arguments_are_refused_naming_the_user_line():
    x = gn.input("x", (None, 4))
    W = gn.param("W", shape=(3, 4, 4), seed=0)
    with pytest.raises(gn.ShapeError, match=r"returns \(\?, 5\).*carry 'x' \(\?, 4\).*"
                                            r"test_repeat\.py:\d+"):
        gn.repeat(lambda h, w: gn.concat([h @ w, h[:, :1] if False else
                                          gn.slice_axis(h, 1, 0, 1)], axis=1), 3, x, W)
    with pytest.raises(gn.ShapeError, match=r"first dim must be 4.*test_repeat\.py:\d+"):
        gn.repeat(lambda h, w: h @ w, 4, x, W)
    with pytest.raises(gn.GraphError, match=r"returned int, not a graph node.*carry 'x'"):
        gn.repeat(lambda h, w: 3, 3, x, W)
    for n in (0, -1, 2.0, True):
        with pytest.raises(gn.GraphError, match=r"n must be"):
            gn.repeat(lambda h, w: h @ w, n, x, W)
    with pytest.raises(gn.GraphError, match=r"block must be a function"):
        gn.repeat("block", 3, x, W)


def test_back_ends_and_formats_that_cannot_run_it_say_so(tmp_path):
    x = gn.input("x", (None, 4))
    W = gn.param("W", shape=(3, 4, 4), seed=0)
    h = gn.repeat(lambda h, w: gn.tanh(h @ w), 3, x, W)
    with pytest.raises(gn.BackendError, match=r"library=False.*gn\.repeat"):
        gn.compile(h, backend="cpu", library=False)
    with pytest.raises(gn.GraphError, match=r"save: attr"):
        gn.save(h, tmp_path / "h.json")
    with pytest.raises(gn.GradError, match=r"repeat_grad.*no gradient rule"):
        g = gn.grad(gn.sum(h), W)
        gn.grad(gn.sum(g), W)
    assert not (tmp_path / "h.json").exists()


def test_a_nan_in_a_block_is_named_with_check_finite():
    x = gn.input("x", (None, 2))
    W = gn.param("W", np.ones((3, 2, 2), np.float32))
    h = gn.repeat(lambda h, w: gn.log(h @ w), 3, x, W)
    f = gn.compile(h, backend="cpu", check_finite=True)
    with pytest.raises(gn.NumericalError):
        f(x=-np.ones((1, 2), np.float32))


def test_the_cuda_back_end_and_onnx_export_refuse_it_naming_the_node(tmp_path):
    x = gn.input("x", (None, 4))
    W = gn.param("W", shape=(3, 4, 4), seed=0)
    h = gn.repeat(lambda h, w: gn.tanh(h @ w), 3, x, W)
    with pytest.raises(gn.BackendError, match=r"repeat \(4, \?, 4\) \(made at .*"
                                              r"test_repeat\.py:\d+\) is a gn\.repeat "
                                              r"loop.*numpy and cpu"):
        gn.compile(h, backend="cuda", generate_only=True)
    pytest.importorskip("onnx")
    with pytest.raises(gn.GraphError, match=r"no ONNX form for these ops: repeat"):
        gn.onnx.export(h, tmp_path / "h.onnx")


def test_conv_code_takes_only_the_names_of_conv_gemm_parts():
    x = gn.input("x", (None, 4, 4, 1))
    w = gn.param("w", shape=(3, 3, 1, 2), seed=0)
    with pytest.raises(gn.OptionError, match=r"conv_code takes names of .*conv2d_grad_input"
                                             r".*got 'print\(1\)'"):
        gn.compile(gn.conv2d(x, w), backend="cpu", conv_code=["print(1)"])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_every_carry_read_gets_its_adjoint_in_the_backward_loop(backend):
    # the carries node itself (h[0] .. h[n]) read by a loss: the backward loop adds each
    # carry's own adjoint, not only the last one's
    Wv, bv, X = _values(8)
    x = gn.input("x", (None, WIDTH))
    W, b = gn.param("W", Wv.copy()), gn.param("b", bv.copy())
    h = gn.repeat(residual, N, x, W, b)
    carries = h.inputs[0].inputs[0]
    assert carries.op == "repeat" and carries.shape == (N + 1, None, WIDTH)
    loss = gn.sum(carries * carries) + gn.sum(h)
    got = gn.compile([loss] + gn.grad(loss, [W, b, x]), backend=backend)(x=X)
    # unrolled: every carry squared and summed, plus the last
    x2 = gn.input("x", (None, WIDTH))
    Wp = gn.param("Wp", Wv.copy())
    bp = gn.param("bp", bv.copy())
    hs = [x2]
    for k in range(N):
        Wk = gn.reshape(gn.slice_axis(Wp, 0, k, k + 1), (WIDTH, WIDTH))
        bk = gn.reshape(gn.slice_axis(bp, 0, k, k + 1), (WIDTH,))
        hs.append(residual(hs[-1], Wk, bk))
    want_loss = sum(gn.sum(c * c) for c in hs) + gn.sum(hs[-1])
    want = gn.compile([want_loss] + gn.grad(want_loss, [Wp, bp, x2]), backend="numpy")(x=X)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_two_programs_with_one_block_run_from_two_threads():
    # they share the block's compiled function (its workspace too): each thread must get
    # its own program's numbers
    import threading
    Wv, bv, _ = _values(9, n=40)
    # (a batch whose temporaries live in the function's workspace: 32 KB and more)
    X = np.random.default_rng(9).standard_normal((2048, WIDTH)).astype(np.float32)
    x = gn.input("x", (None, WIDTH))
    W, b = gn.param("W", Wv.copy()), gn.param("b", bv.copy())
    h = gn.repeat(residual, 40, x, W, b)
    X2 = X[::-1].copy()  # (each thread its own feed: a race would mix their values)
    first, second = gn.compile(h, backend="cpu"), gn.compile(gn.sum(h), backend="cpu")
    want = first(x=X)
    want_sum = float(second(x=X2))
    results, errors = [], []

    def work(f, feed, check):
        try:
            for _ in range(10):
                results.append(check(f(x=feed)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(first, X, lambda r: np.array_equal(r, want))),
               threading.Thread(target=work, args=(second, X2, lambda r: float(r) == want_sum))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (the threads take turns inside the loops)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors and len(results) == 20 and all(results)


def test_the_picture_says_how_often_which_block_runs():
    visualize = pytest.importorskip("visualize")
    x = gn.input("x", (None, WIDTH))
    W = gn.param("W", shape=(7, WIDTH, WIDTH), seed=0)
    b = gn.param("b", shape=(7, WIDTH), init="zeros")
    h = gn.repeat(residual, 7, x, W, b)
    dot = visualize.to_dot([h], grads={W: gn.grad(gn.sum(h), W)})
    assert "repeat \u00d77: residual" in dot and "repeat_grad \u00d77: residual" in dot


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_nested_repeats_per_block_scalars_and_integer_carries(backend):
    rng = np.random.default_rng(10)
    Wv = (rng.standard_normal((3, 2, 4, 4)) * 0.3).astype(np.float32)
    av = np.array([0.5, 2.0, -1.0], np.float32)
    X = rng.standard_normal((2, 4)).astype(np.float32)
    x = gn.input("x", (None, 4))
    W, a = gn.param("W", Wv.copy()), gn.param("a", av.copy())
    # each outer block: two inner tanh layers, then a per-block scalar (slices of shape ())
    h = gn.repeat(lambda h, w, s: gn.repeat(lambda c, v: gn.tanh(c @ v), 2, h, w) * s,
                  3, x, W, a)
    loss = gn.sum(h * h)
    got = gn.compile([h, loss] + gn.grad(loss, [W, a]), backend=backend)(x=X)
    ref = X
    for k in range(3):
        for j in range(2):
            ref = np.tanh(ref @ Wv[k, j])
        ref = ref * av[k]
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-6)
    # the gradients against the same stack written as a loop
    x2 = gn.input("x", (None, 4))
    W2, a2 = gn.param("W2", Wv.copy()), gn.param("a2", av.copy())
    h2 = x2
    for k in range(3):
        for j in range(2):
            w = gn.reshape(gn.slice_axis(gn.slice_axis(W2, 0, k, k + 1), 1, j, j + 1), (4, 4))
            h2 = gn.tanh(h2 @ w)
        h2 = h2 * gn.reshape(gn.slice_axis(a2, 0, k, k + 1), ())
    loss2 = gn.sum(h2 * h2)
    want = gn.compile([loss2] + gn.grad(loss2, [W2, a2]), backend="numpy")(x=X)
    for g, w in zip(got[1:], want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # an integer carry with per-repeat integers given as an array
    i = gn.input("i", (None,), dtype="int64")
    doubled = gn.repeat(lambda h, s: h * 2 + s, 4, i, np.arange(4, dtype=np.int64))
    np.testing.assert_array_equal(
        gn.compile(doubled, backend=backend)(i=np.array([1, 2], np.int64)), [27, 43])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_values_the_block_reads_from_outside_are_shared_by_every_repeat(backend):
    # an RNN: h[t + 1] = tanh(x[t] U + h[t] V + c), U, V and c the same at every step, the
    # sequence stacked along the first axis; their gradients sum over the steps
    rng = np.random.default_rng(11)
    T, F, H = 6, 3, 5
    Uv, Vv = (rng.standard_normal((F, H)) * 0.5).astype(np.float32), \
        (rng.standard_normal((H, H)) * 0.5).astype(np.float32)
    cv = (rng.standard_normal(H) * 0.1).astype(np.float32)
    Xv = rng.standard_normal((T, 2, F)).astype(np.float32)
    xs, h0 = gn.input("xs", (T, None, F)), gn.input("h0", (None, H))
    U, V, c = gn.param("U", Uv.copy()), gn.param("V", Vv.copy()), gn.param("c", cv.copy())
    h = gn.repeat(lambda h, x: gn.tanh(x @ U + h @ V + c), T, h0, xs)
    carries = h.inputs[0].inputs[0]
    assert carries.op == "repeat" and set(carries.inputs[2:]) == {U, V, c}
    loss = gn.sum(h * h)
    got = gn.compile([loss] + gn.grad(loss, [U, V, c, xs, h0]), backend=backend)(
        xs=Xv, h0=np.zeros((2, H), np.float32))
    # the same recurrence unrolled
    xs2, h02 = gn.input("xs", (T, None, F)), gn.input("h0", (None, H))
    U2, V2, c2 = gn.param("U2", Uv.copy()), gn.param("V2", Vv.copy()), gn.param("c2", cv.copy())
    h2 = h02
    for t in range(T):
        h2 = gn.tanh(gn.reshape(gn.slice_axis(xs2, 0, t, t + 1), (-1, F)) @ U2 + h2 @ V2 + c2)
    loss2 = gn.sum(h2 * h2)
    want = gn.compile([loss2] + gn.grad(loss2, [U2, V2, c2, xs2, h02]), backend="numpy")(
        xs=Xv, h0=np.zeros((2, H), np.float32))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
