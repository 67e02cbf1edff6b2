"""The cpu back end (graphnn/backends/cpu.py): lowering and fusion, memory planning, the
generated module and its on-disk cache, and that user strings cannot change the code (the
passes: test_passes.py)."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnn as gn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def training_step(backend="cpu"):
    x = gn.input("x", (None, 3))
    y = gn.input("y", (None,), dtype="int64")
    W = gn.param("W", shape=(3, 4), seed=0)
    b = gn.param("b", np.zeros(4, np.float32))
    loss = gn.softmax_cross_entropy(gn.tanh(x @ W + b), y)
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, [W, b]), backend=backend)
    return step, (W, b)


def test_fusion_and_memory_planning_report():
    step, _ = training_step()
    stats = step.stats
    assert stats["kernels"] < stats["nodes"]
    assert stats["fused_nodes"] > 0
    names = [p[0] for p in stats["passes"]]
    assert names == ["input", "decompose", "fold_constants", "simplify",
                     "common_subexpressions"]
    temps = {s.out.name for s in step.program.steps if s.out.role == "temp"}
    temp_steps = [s for s in step.program.steps if s.out.role == "temp"]
    assert len(temps) < len(temp_steps)  # some buffers were reused
    assert "<- fused:" in step.source
    assert step.source.count("def program(") == 1


def test_training_step_matches_numpy_backend():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 3)).astype(np.float32)
    Y = rng.integers(0, 4, 6)
    results = {}
    for backend in ("numpy", "cpu"):
        step, params = training_step(backend)
        losses = [float(step(x=X, y=Y)) for _ in range(5)]
        results[backend] = losses, [p.value.copy() for p in params]
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-5)
    for a, b in zip(results["cpu"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert results["cpu"][0][-1] < results["cpu"][0][0]


def test_repeated_steps_share_one_function_and_match_the_numpy_backend():
    # an RNN unrolled over 4 time steps: each step's slice, tanh and gradient loops are the
    # same but for their buffers (and the slice's start), so one function runs them all
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 4, 3)).astype(np.float32)
    Y = rng.uniform(-1, 1, (5, 6)).astype(np.float32)
    results = {}
    for backend in ("numpy", "cpu"):
        x = gn.input("x", (None, 4, 3))
        y = gn.input("y", (None, 6))
        Wx = gn.param("Wx", shape=(3, 6), seed=0)
        Wy = gn.param("Wy", shape=(6, 6), seed=1)
        h = None
        for t in range(4):
            z = gn.reshape(gn.slice_axis(x, 1, t, t + 1), (-1, 3)) @ Wx
            h = gn.tanh(z if h is None else z + h @ Wy)
        loss = gn.mse(h, y)
        step = gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, [Wx, Wy]),
                          backend=backend)
        losses = [float(step(x=X, y=Y)) for _ in range(3)]
        results[backend] = losses, [Wx.value.copy(), Wy.value.copy()]
        if backend == "cpu":
            shared = re.findall(r"^def ((?:elementwise|reduce|place|argmaxmask)_\d+)\(",
                                step.source, re.M)
            assert shared
            for name in shared:  # each is called from program for several steps
                assert len(re.findall(rf"^    {name}\(", step.source, re.M)) >= 2
            assert re.search(r"elementwise_\d+\(d0, in0, b\w+, np\.intp\(3\)\)",
                             step.source)
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-5)
    for got, expected in zip(results["cpu"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_cpu_feed_errors_are_raised_before_running():
    step, (W, b) = training_step()
    before = W.value.copy()
    with pytest.raises(gn.FeedError, match="'x'"):
        step(x=np.ones((2, 5), np.float32), y=np.array([0, 1]))
    with pytest.raises(gn.FeedError, match="'y'"):
        step(x=np.ones((2, 3), np.float32), y=np.array([0, 1, 2]))
    np.testing.assert_array_equal(W.value, before)


def test_cpu_feed_errors_after_the_first_call_are_raised_before_running():
    # After the first call, well-typed feeds take the lean path: their shapes are checked
    # by the generated program before any step, and the full check names the bad feed.
    step, (W, b) = training_step()
    step(x=np.ones((2, 3), np.float32), y=np.array([0, 1]))
    before = W.value.copy()
    for feeds, name in [({"x": np.ones((2, 5), np.float32), "y": np.array([0, 1])}, "'x'"),
                        ({"x": np.ones((2, 3), np.float32), "y": np.array([0, 1, 2])}, "'y'"),
                        ({"x": np.ones((0, 3), np.float32), "y": np.array([], int)}, "empty"),
                        ({"x": np.ones((2, 3), np.float32), "z": np.array([0, 1])}, "'z'")]:
        with pytest.raises(gn.FeedError, match=name):
            step(**feeds)
    np.testing.assert_array_equal(W.value, before)
    # other dtypes, layouts and read-only arrays take the full path and give the same loss
    x, y = np.arange(6, dtype=np.float32).reshape(2, 3) / 6, np.array([0, 2])
    W.value, b.value = before, np.zeros(4, np.float32)
    expected = float(step(x=x, y=y))
    read_only = x.copy()
    read_only.flags.writeable = False
    for feeds in [{"x": x.astype(np.float64), "y": y}, {"x": np.asfortranarray(x), "y": y},
                  {"x": read_only, "y": y.astype(np.int32)}, {"x": x.tolist(), "y": y}]:
        W.value, b.value = before, np.zeros(4, np.float32)
        assert float(step(**feeds)) == pytest.approx(expected, rel=1e-6)


def test_cpu_calls_see_new_parameter_arrays():
    step, (W, b) = training_step()
    x, y = np.ones((2, 3), np.float32), np.array([0, 1])
    step(x=x, y=y)
    W.value = np.zeros((3, 4), np.float32)
    b.value = np.zeros(4, np.float32)
    assert float(step(x=x, y=y)) == pytest.approx(np.log(4), rel=1e-6)  # uniform softmax
    assert np.abs(W.value).sum() > 0  # updated in the new array
    with pytest.raises(gn.ShapeError):
        W.value = np.zeros((4, 4), np.float32)


def test_float32_graph_has_no_float64_arithmetic(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))  # a fresh compile to inspect
    x = gn.input("x", (None, 4))
    W = gn.param("W", shape=(4, 3), seed=0)
    h = gn.elu(gn.tanh(x @ W)) * 0.5 + gn.softplus(x @ W) + gn.sigmoid(x @ W)
    loss = gn.mean(h * h)
    f = gn.compile([loss, gn.grad(loss, W)], backend="cpu")
    f(x=np.ones((2, 4), np.float32))
    llvm = "\n".join(f._fn.inspect_llvm().values())
    assert "fpext" not in llvm
    # (Numba's own reshape size check compares in double; no arithmetic may be double)
    assert not re.search(r"= f(add|sub|mul|div)[a-z ]* double ", llvm)
    assert not re.search(r"call [a-z ]*double @", llvm)  # e.g. exp on doubles


def test_hostile_names_cannot_change_generated_code(tmp_path):
    hostile = 'x"); import os; os.system("echo HACKED > ' + str(tmp_path / "hacked") + '")\n#'
    x = gn.input(hostile, (2,))
    W = gn.param("w\nimport os\nos.system('echo HACKED')", np.ones(2, np.float32))
    y = gn.sum(gn.mul(x, W, name="z\n__import__('os').system('echo HACKED')"))
    f = gn.compile([y, gn.grad(y, W)], backend="cpu")
    out, g = f(**{hostile: np.array([1.0, 2.0], np.float32)})
    assert float(out) == 3.0
    np.testing.assert_array_equal(g, [1.0, 2.0])
    assert not (tmp_path / "hacked").exists()
    for line in f.source.splitlines():
        if "import os" in line or "system" in line:
            assert line.lstrip().startswith("#"), line


GRAPH_SCRIPT = textwrap.dedent("""
    import numpy as np, graphnn as gn
    x = gn.input("x", (None, 3))
    W = gn.param("W", np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    f = gn.compile(gn.sum(gn.tanh(x @ W) * 1.2345), backend="cpu")
    print(float(f(x=np.ones((2, 3), np.float32))), f.stats["cache_hit"], f.path)
""")


def _run_script(cache_dir):
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", GRAPH_SCRIPT], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    value, hit, path = out.stdout.split()
    return float(value), hit == "True", path


def test_second_process_hits_the_cache_and_survives_corruption(tmp_path):
    value, hit, path = _run_script(tmp_path)
    assert not hit
    value2, hit2, path2 = _run_script(tmp_path)
    assert hit2 and value2 == value and path2 == path
    pycache = os.path.join(os.path.dirname(path), "__pycache__")
    damaged = [f for f in os.listdir(pycache) if f.endswith((".nbi", ".nbc"))]
    assert damaged
    for f in damaged:
        with open(os.path.join(pycache, f), "wb") as fh:
            fh.write(b"\x80\x04garbage")
    value3, hit3, _ = _run_script(tmp_path)
    assert value3 == value and not hit3


def test_outputs_are_fresh_arrays_not_parameter_storage():
    W = gn.param("W", np.ones((2, 2), np.float32))
    f = gn.compile([W, W * 2.0], backend="cpu")
    w, w2 = f()
    w[...] = 7
    assert float(W.value[0, 0]) == 1.0
    np.testing.assert_array_equal(w2, 2 * np.ones((2, 2)))


def test_updates_use_old_values_everywhere():
    a = gn.param("a", np.array([1.0], np.float32))
    b = gn.param("b", np.array([10.0], np.float32))
    for backend in ("numpy", "cpu"):
        a.value, b.value = np.array([1.0], np.float32), np.array([10.0], np.float32)
        swap = gn.compile(a + b, updates={a: b * 1.0, b: a * 1.0}, backend=backend)
        assert float(swap()[0]) == 11.0
        assert float(a.value[0]) == 10.0 and float(b.value[0]) == 1.0


def test_parallel_option_gives_the_same_numbers():
    x = gn.input("x", (None,))
    y = gn.sigmoid(x) * gn.tanh(x) + x * x - 0.5 * x
    X = np.linspace(-3, 3, 1001).astype(np.float32)
    serial = gn.compile(y, backend="cpu")(x=X)
    parallel = gn.compile(y, backend="cpu", parallel=True)(x=X)
    np.testing.assert_allclose(parallel, serial, rtol=1e-6)


def test_an_output_that_is_updated_returns_its_value_before_the_update():
    for backend in ("numpy", "cpu"):
        W = gn.param("W", np.ones((2, 2), np.float32))
        x = gn.input("x", (None, 2))
        loss = gn.sum(x @ W)
        step = gn.compile([loss, W], updates=gn.optim.SGD(0.5).updates(loss, [W]),
                          backend=backend)
        _, w_out = step(x=np.ones((1, 2), np.float32))
        np.testing.assert_array_equal(w_out, np.ones((2, 2)))
        np.testing.assert_array_equal(W.value, 0.5 * np.ones((2, 2)))


def _dense_sgd(backend, extra=None, compile_options=None):
    rng = np.random.default_rng(5)
    W = gn.param("W", rng.standard_normal((3, 4)).astype(np.float32))
    b = gn.param("b", np.zeros(4, np.float32))
    x = gn.input("x", (None, 3))
    loss = gn.mean(gn.square(gn.relu(x @ W + b)))
    updates = gn.optim.SGD(lr=0.1).updates(loss, [W, b])
    if extra:
        updates = extra(W, b, x, loss, updates)
    return gn.compile(loss, updates=updates, backend=backend, **(compile_options or {})), \
        (W, b)


def test_an_sgd_step_on_a_weight_matrix_is_one_gemm_accumulating_into_the_weights():
    X = np.random.default_rng(6).standard_normal((8, 3)).astype(np.float32)
    results = {}
    for backend in ("numpy", "cpu"):
        step, params = _dense_sgd(backend)
        results[backend] = [float(step(x=X)) for _ in range(4)], [p.value.copy()
                                                                 for p in params]
    step = _dense_sgd("cpu")[0]
    matmuls = [s for s in step.program.steps if type(s).__name__ == "Matmul"]
    into_w = [s for s in matmuls if s.out.name == "st0"]
    assert len(into_w) == 1 and into_w[0].beta == 1.0
    assert into_w[0].alpha == pytest.approx(-0.1)
    assert "accumulated into st0" in step.source
    assert "np.float32(1.0), st0)" in step.source  # beta = 1: W is read and updated by BLAS
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-5)
    for got, expected in zip(results["cpu"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_an_sgd_step_accumulates_into_weights_read_through_a_flattened_image():
    """The product's operand is a view (the image flattened for a dense layer): the
    weight's SGD step is still one gemm into the weight, and equals the numpy back end."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((5, 4, 4, 2)).astype(np.float32)
    results = {}
    for backend in ("numpy", "cpu"):
        x = gn.input("x", (None, 4, 4, 2))
        W = gn.param("W_flat", (0.3 * rng.standard_normal((32, 3))).astype(np.float32))
        K = gn.param("K_flat", (0.3 * rng.standard_normal((1, 1, 2, 2))).astype(np.float32))
        h = gn.reshape(gn.relu(gn.conv2d(x, K)), (-1, 32))
        loss = gn.mean(gn.square(gn.tanh(h @ W)))
        # (only W trained: nothing reads the old W after its update)
        step = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, [W]),
                          backend=backend)
        results[backend] = [float(step(x=X)) for _ in range(3)], W.value.copy()
        rng = np.random.default_rng(8)
        rng.standard_normal((5, 4, 4, 2))
    assert "accumulated into" in step.source
    into = [s for s in step.program.steps if type(s).__name__ == "Matmul" and s.beta == 1.0]
    assert len(into) == 1 and into[0].a.base is not None  # reads the flattened image
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-5)
    np.testing.assert_allclose(results["cpu"][1], results["numpy"][1], rtol=1e-5, atol=1e-6)


def test_a_bias_sgd_step_is_finished_in_its_gradient_sum_and_written_into_the_bias():
    """b - lr * sum(g, axis=0): the bias's gradient is one sum over the batch (no keepdims
    and reshape), the update finishes each summed value in that step, and the step writes
    straight into the bias (the kernel sums into rows of its own, since it reads the old
    bias as it finishes): one step, nothing copied at the end, the numpy back end's numbers."""
    X = np.random.default_rng(6).standard_normal((8, 3)).astype(np.float32)
    results = {}
    for backend, library in (("numpy", None), ("cpu", False), ("cpu", True)):
        step, params = _dense_sgd(backend) if library is None else \
            _dense_sgd(backend, compile_options={"library": library})
        results[backend, library] = ([float(step(x=X)) for _ in range(4)],
                                     [p.value.copy() for p in params])
        if backend == "cpu":
            into_b = [s for s in step.program.steps if s.out.name == "st1"]
            assert [type(s).__name__ for s in into_b] == ["Reduce"]
            assert into_b[0].post is not None and into_b[0].axes == (0,)
            assert "written in place into st1" in step.source
            assert "acc_rows = np.empty_like(" in step.source
            assert not step.program.updates  # no copy into a state at the end
            assert not any(type(s).__name__ == "Reshape" for s in step.program.steps)
    for key in (("cpu", False), ("cpu", True)):
        np.testing.assert_allclose(results[key][0], results["numpy", None][0], rtol=1e-5)
        for got, expected in zip(results[key][1], results["numpy", None][1]):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def _residual_step(backend, read_again=False):
    rng = np.random.default_rng(11)
    x = gn.input("x", (None, 4))
    Ws = [gn.param(f"Wres{k}", (0.5 * rng.standard_normal((4, 4))).astype(np.float32))
          for k in range(5)]
    h0 = gn.tanh(x @ Ws[0])
    h1 = h0 + gn.relu(h0 @ Ws[1])
    h2 = h1 + gn.relu(h1 @ Ws[2])
    h3 = h2 + gn.relu(h2 @ Ws[3])
    out = h3 @ Ws[4]
    loss = gn.mean(gn.square(out * h2 if read_again else out))
    return gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, Ws),
                      backend=backend), Ws


def test_a_residual_blocks_input_gradient_is_accumulated_by_its_gemm():
    """dh1 = dh2 + (dr * relu') @ W2^T: the add that sums the gradient skipping the block
    and the one through it is the gemm's beta = 1 into dh2's buffer, as plan_memory wrote
    the add over dh2 (h0's gradient is not a plain add: tanh's derivative is fused into
    it). Same numbers as the numpy back end; with h2 read again by the loss the numbers
    still agree."""
    X = np.random.default_rng(12).standard_normal((6, 4)).astype(np.float32)
    for read_again in (False, True):
        results = {}
        for backend in ("numpy", "cpu"):
            step, Ws = _residual_step(backend, read_again)
            results[backend] = ([float(step(x=X)) for _ in range(3)],
                                [W.value.copy() for W in Ws])
        into_temps = [s for s in step.program.steps if type(s).__name__ == "Matmul" and
                      s.beta == 1.0 and s.out.role == "temp"]
        if not read_again:
            assert len(into_temps) == 2  # h2's and h1's gradients
            assert all(s.alpha == 1.0 for s in into_temps)
            assert f"accumulated into {into_temps[0].out.name}: " in step.source
        np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-5)
        for got, expected in zip(results["cpu"][1], results["numpy"][1]):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # (it rides on memory planning's in-place add: without it, no gemm accumulates a temp)
    step, Ws = _residual_step("cpu")
    planless = gn.compile(step.outputs[0], updates=dict(step.update_pairs), backend="cpu",
                          passes={"memory_planning": False})
    assert not [s for s in planless.program.steps if type(s).__name__ == "Matmul" and
                s.beta == 1.0 and s.out.role == "temp"]


def test_no_gemm_accumulation_when_the_old_weights_are_read_later():
    # V's new value reads the old W after W's update would run: W is updated separately.
    def extra(W, b, x, loss, updates):
        V = gn.param("V", np.zeros((3, 4), np.float32))
        updates[V] = V + W * 1.0
        return updates
    X = np.random.default_rng(7).standard_normal((8, 3)).astype(np.float32)
    values = {}
    for backend in ("numpy", "cpu"):
        step, (W, b) = _dense_sgd(backend, extra)
        w0 = W.value.copy()
        step(x=X)
        V = [p for p in step.state_nodes if p.name == "V"][0]
        values[backend] = V.value.copy(), W.value.copy()
        np.testing.assert_allclose(V.value, w0, rtol=1e-6)  # V got the OLD W
    np.testing.assert_allclose(values["cpu"][1], values["numpy"][1], rtol=1e-5, atol=1e-7)


def test_mixed_float_widths_are_promoted_before_matmul_and_conv():
    # float32 data and float64 weights: the product is float64 on every back end, as in NumPy
    x = gn.input("x", (None, 3))
    W = gn.param("W", np.arange(6.0).reshape(3, 2))
    y = x @ W
    assert y.dtype == np.float64 and [i.op for i in y.inputs] == ["cast", "param"]
    img = gn.input("img", (None, 5, 5, 1))
    K = gn.param("K", np.linspace(-1, 1, 18).reshape(3, 3, 1, 2))
    c = gn.conv2d(img, K)
    assert c.dtype == np.float64
    loss = gn.sum(y * y) + gn.sum(c * c)
    grads = gn.grad(loss, [W, K])
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 3)).astype(np.float32),
             "img": rng.standard_normal((2, 5, 5, 1)).astype(np.float32)}
    want = gn.compile([y, c] + grads, backend="numpy")(**feeds)
    got = gn.compile([y, c] + grads, backend="cpu")(**feeds)
    for w, g in zip(want, got):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-12)
    exact = feeds["x"].astype(np.float64) @ np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(want[0], exact)


def test_integer_matmul_is_refused_when_declared():
    a = gn.input("a", (2, 3), dtype="int64")
    with pytest.raises(gn.DTypeError, match="matmul needs float inputs"):
        a @ np.ones((3, 2), np.int64)


def test_adam_writes_every_state_in_place_and_matches_numpy():
    # the moments' new values are read again by the parameter step: that step reads them
    # from the moment states, so no state is copied at the end of the program
    def build():
        x = gn.input("x", (None, 3))
        y = gn.input("y", (None,), dtype="int64")
        W = gn.param("W", np.linspace(-1, 1, 12).reshape(3, 4))
        b = gn.param("b", np.zeros(4))
        loss = gn.softmax_cross_entropy(gn.log_softmax(x @ W + b), y)
        return loss, gn.optim.Adam(0.01).updates(loss, [W, b]), [W, b]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((8, 3)).astype(np.float32)
    Y = rng.integers(0, 4, 8)
    runs = {}
    for backend in ("numpy", "cpu"):
        loss, updates, params = build()
        f = gn.compile(loss, updates=updates, backend=backend)
        runs[backend] = ([float(f(x=X, y=Y)) for _ in range(3)],
                         [p.value.copy() for p in params], f)
    source = runs["cpu"][2].source
    program = source[source.index("def program("):]
    assert not re.search(r"^\s+st\d+\[\.\.\.\] = ", program, re.M), program
    assert program.count("written in place into") == 2 * 3 + 1  # W, b, their moments, t
    np.testing.assert_allclose(runs["cpu"][0], runs["numpy"][0], rtol=1e-5)
    for got, want in zip(runs["cpu"][1], runs["numpy"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_states_swapped_by_their_updates_are_copied_by_loops_not_array_assignment():
    # Numba compiles `state[...] = array` through its broadcasting machinery (seconds);
    # the generator copies with flat loops
    a = gn.param("a", np.arange(6.0).reshape(2, 3))
    b = gn.param("b", -np.arange(6.0).reshape(2, 3))
    c = gn.param("c", np.float32(2.0))
    x = gn.input("x", (2, 3))
    f = gn.compile(gn.sum(a * x), updates={a: b, b: a, c: c * 2}, backend="cpu")
    assert float(f(x=np.ones((2, 3), np.float32))) == 15.0
    np.testing.assert_array_equal(a.value, -np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(b.value, np.arange(6.0).reshape(2, 3))
    assert float(c.value) == 4.0
    assert float(f(x=np.ones((2, 3), np.float32))) == -15.0
    program = f.source[f.source.index("def program("):]
    assert not re.search(r"\[\.\.\.\] = [a-z]", program), program


def test_large_temporaries_live_in_a_workspace_kept_between_calls():
    x = gn.input("x", (None, 1024))
    w = gn.param("w", np.linspace(-1, 1, 1024 * 8, dtype=np.float32).reshape(1024, 8))
    h = gn.tanh(x * 2.0 + 1.0)  # (batch, 1024): 256 KiB at batch 64, a temporary
    loss = gn.sum(gn.matmul(h, w) * gn.matmul(h, w))
    f = gn.compile(loss, backend="cpu")
    ref = gn.compile(loss, backend="numpy")
    assert "workspace[" in f.source and "WORKSPACE_TOO_SMALL" not in f.source
    rng = np.random.default_rng(0)
    xs = {n: rng.standard_normal((n, 1024)).astype(np.float32) for n in (64, 128, 2, 64)}
    np.testing.assert_allclose(f(x=xs[64]), ref(x=xs[64]), rtol=1e-5)
    first = f._workspace
    assert first.size >= 64 * 1024 * 4
    memory = f.stats["buffer_bytes"]
    assert memory["workspace"] == first.nbytes and memory["outputs"] == 4
    assert memory["temporaries"] >= 64 * 1024 * 4
    assert "workspace kept between calls 256.0 KiB" in f.explain()
    np.testing.assert_allclose(f(x=xs[64]), ref(x=xs[64]), rtol=1e-5)
    assert f._workspace is first  # kept, not made again
    np.testing.assert_allclose(f(x=xs[128]), ref(x=xs[128]), rtol=1e-5)
    assert f._workspace.size >= 128 * 1024 * 4  # grown for the larger batch
    for n in (2, 64):  # smaller batches run in the larger workspace (or allocate)
        np.testing.assert_allclose(f(x=xs[n]), ref(x=xs[n]), rtol=1e-5)


def test_an_output_nobody_holds_is_written_again_and_held_ones_never_are():
    x = gn.input("x", (None,))
    f = gn.compile(x * x - 0.5 * x, backend="cpu")
    a, b, c = (np.full(50000, v, np.float32) for v in (1.0, 2.0, 3.0))
    y = f(x=a)
    address = y.ctypes.data
    del y  # nobody holds the first result: the next call may write it again
    z = f(x=b)
    assert z.ctypes.data == address and np.all(z == 3.0)
    held = f(x=c)  # z is still held: a new array
    assert held.ctypes.data != z.ctypes.data
    np.testing.assert_array_equal(z, np.full(50000, 3.0, np.float32))
    np.testing.assert_array_equal(held, np.full(50000, 7.5, np.float32))
    view = held[:10]
    del held
    again = f(x=a)  # `view` keeps the array it views: not written
    np.testing.assert_array_equal(view, np.full(10, 7.5, np.float32))
    import weakref
    watched = weakref.ref(again)
    kept = again.copy()
    del again
    f(x=b)  # a weak reference to a result keeps it from being written too
    if watched() is not None:
        np.testing.assert_array_equal(watched(), kept)
    # the rebinding loop: y's old array is free once the new one is bound
    addresses = set()
    for v in (a, b, c, a, b, c):
        y = f(x=v)
        addresses.add(y.ctypes.data)
        np.testing.assert_array_equal(y, v * v - 0.5 * v)
    assert len(addresses) <= 3


def test_a_generated_module_states_its_workspace_and_recycled_outputs():
    x = gn.input("x", (None, 4096))
    f = gn.compile([gn.sum(gn.exp(x) * 3.0), gn.exp(x) + 1.0], backend="cpu")
    assert f.module.RECYCLED == (1,)  # the 0-d sum is not recycled
    X = np.zeros((16, 4096), np.float32)
    assert f.module.workspace_bytes(X) >= 16 * 4096 * 4
    s, e = f(x=X)
    assert s == pytest.approx(3 * 16 * 4096) and np.all(e == 2.0)


def test_an_index_constant_in_an_elementwise_step_is_its_loop_index():
    # 0, 1, 2, 3 is read as the loop index i0 inside the loop: that loop cannot be flat
    x = gn.input("x", (4,))
    y = gn.exp(x) * gn.const(np.arange(4))
    X = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    got = gn.compile(y, backend="cpu")(x=X)
    np.testing.assert_allclose(got, np.exp(X.astype(np.float64)) * np.arange(4), rtol=2e-6)


def _conv_reference(X, K):
    """'same' convolution (stride 1, odd kernel) of NHWC X with HWIO K, in float64 loops."""
    kh, kw = K.shape[:2]
    padded = np.pad(X.astype(np.float64), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    out = np.zeros(X.shape[:3] + (K.shape[3],))
    for i in range(X.shape[1]):
        for j in range(X.shape[2]):
            patch = padded[:, i:i + kh, j:j + kw, :]
            out[:, i, j, :] = np.tensordot(patch, K, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_a_convolution_whose_channels_are_bound_at_run_time():
    # the patch-matrix block size is then computed in the generated code
    x = gn.input("x", (None, 5, 5, "ch_run_time"))
    k = gn.input("k", (3, 3, "ch_run_time", 2))
    f = gn.compile(gn.conv2d(x, k, padding="same"), backend="cpu")
    rng = np.random.default_rng(4)
    for channels in (3, 1):
        X = rng.standard_normal((2, 5, 5, channels)).astype(np.float32)
        K = rng.standard_normal((3, 3, channels, 2)).astype(np.float32)
        np.testing.assert_allclose(f(x=X, k=K), _conv_reference(X, K), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_narrow_integer_steps_wrap_like_numpy_before_the_next_op(backend):
    """Numba adds two int32 as int64; NumPy wraps the sum to int32 first, so abs(x + x)
    of 2**31 - 1 is 2 in NumPy (the sum wraps to -2), and was -2 when the wide sum went
    through abs and was truncated only when stored."""
    x = gn.input("x", (2, 3), dtype="int32")
    outs = [gn.ops.abs(x + x), gn.ops.abs(x * x - x) * x]
    xv = np.array([[2147483647, -2147483647, -2147483648], [4, -5, 46341]], np.int32)
    with np.errstate(all="ignore"):
        want = [np.abs(xv + xv), np.abs(xv * xv - xv) * xv]
        got = gn.compile(outs, backend=backend)(x=xv)
    assert want[0][0].tolist() == [2, 2, 0]
    for w, g in zip(want, got):
        g = np.asarray(g)
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_int64_overflow_wraps_like_numpy(backend):
    """x*x of 2**32 wraps to 0 in NumPy; with signed arithmetic LLVM may assume it cannot
    overflow, and sign(x*x) came out 1. graphnn computes int64 +, -, * in uint64."""
    x = gn.input("x", (4,), dtype="int64")
    outs = [gn.ops.sign(gn.ops.square(x)), gn.ops.sign(x * x + x - x), gn.ops.abs(-x)]
    xv = np.array([-2 ** 63, 3, 2 ** 32, -7], np.int64)
    with np.errstate(all="ignore"):
        want = [np.sign(xv * xv), np.sign(xv * xv + xv - xv), np.abs(-xv)]
        got = gn.compile(outs, backend=backend)(x=xv)
    assert want[0].tolist() == [0, 1, 0, 1]
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(g), w)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_elu_and_selu_of_tiny_negatives_match_expm1(backend):
    """exp(x) - 1 cancels near 0: ELU of -1e-30 was 0 in the kernels, NumPy's expm1 gives
    -1e-30; over -10 .. -1e-30 the kernels now agree with expm1 to 1e-12 (float64)."""
    xs = -np.concatenate([np.logspace(-30, 1, 300), [0.0, 0.01, 0.0099999, 0.0100001]])
    x = gn.input("x", (None,), dtype="float64")
    for f in (gn.ops.elu, gn.ops.selu):
        want = gn.compile(f(x), backend="numpy")(x=xs)
        got = gn.compile(f(x), backend=backend)(x=xs)
        scale = 1.0 if f is gn.ops.elu else 1.7580993408473766  # selu: scale * alpha
        assert abs(want[0] / (-1e-30 * scale) - 1) < 1e-12
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("enabled", [True, False])
def test_grad_compile_and_first_call_leave_the_garbage_collector_as_they_found_it(enabled):
    import gc
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        step, _ = training_step()  # gn.grad and gn.compile hold the collector off
        step(x=np.ones((2, 3), np.float32), y=np.zeros(2, np.int64))  # the first call
        # freezes the objects alive before it, and thaws them after
        assert gc.isenabled() is enabled and gc.get_freeze_count() == 0
    finally:
        (gc.enable if was else gc.disable)()


def test_a_paused_block_that_leaves_many_objects_moves_them_to_the_oldest_generation(
        monkeypatch):
    # node.collector_paused: a deep graph's objects are not walked by the next collections
    # of the young generations; a garbage cycle among them waits for a full collection
    import gc
    import weakref
    from graphnn import node
    monkeypatch.setattr(node, "PROMOTE_OBJECTS", 2000)

    class Cycle:
        pass
    gc.collect()
    with node.collector_paused():
        kept = [[k] for k in range(5000)]
        garbage = Cycle()
        garbage.itself = garbage
        probe = weakref.ref(garbage)
        del garbage
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.get_count()[0] < 500 and len(kept) == 5000  # (moved on, and kept)
    assert probe() is not None
    gc.collect()
    assert probe() is None
    with node.collector_paused():  # (fewer objects: left to the young generation)
        few = [[k] for k in range(100)]
    assert gc.get_count()[0] >= len(few)


def test_constants_are_passed_without_a_copy_and_stay_read_only():
    # (a large model's weights are not doubled in memory by compiling it)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((64, 32)).astype(np.float32)
    w = gn.const(weights)
    x = gn.input("x", (None, 64))
    f = gn.compile(gn.relu(x @ w), backend="cpu")
    data = rng.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(f(x=data), np.maximum(data @ weights, 0), rtol=1e-5,
                               atol=1e-5)
    assert any(np.shares_memory(a, w.value) for a in f._const_arrays)
    assert not w.value.flags.writeable
    with pytest.raises(ValueError):
        w.value[0, 0] = 1.0
    weights[0, 0] = 100.0  # the caller's array was copied once, when the node was made
    np.testing.assert_allclose(f(x=data), np.maximum(data @ w.value, 0), rtol=1e-5,
                               atol=1e-5)
