"""The cpu back end's library mode (large programs: kernels compiled one by one and shared
across layers and graphs, sequenced by a Python driver) against the numpy back end, and
the pool of recycled outputs in both modes."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnn as gn
from graphnn.backends import cpu as cpu_backend
from kernels import ir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def residual_mlp(blocks, width=16, classes=5, seed=0, prefix="", scale=0.1):
    """h = h + relu(h @ W_k + b_k), then logits h @ Wo: a softmax cross-entropy step."""
    rng = np.random.default_rng(seed)
    x = gn.input(prefix + "x", (None, width))
    y = gn.input(prefix + "y", (None,), dtype="int64")
    h, params = x, []
    for k in range(blocks):
        W = gn.param(f"{prefix}W{k}", (rng.standard_normal((width, width)) * scale)
                     .astype(np.float32))
        b = gn.param(f"{prefix}b{k}", (rng.standard_normal(width) * scale).astype(np.float32))
        params += [W, b]
        h = h + gn.relu(h @ W + b)
    Wo = gn.param(prefix + "Wo", (rng.standard_normal((width, classes)) * scale)
                  .astype(np.float32))
    params.append(Wo)
    logits = h @ Wo
    loss = gn.softmax_cross_entropy(logits, y)
    return x, y, h, logits, loss, params


def _feeds(n, width=16, classes=5, seed=1, prefix=""):
    rng = np.random.default_rng(seed)
    return {prefix + "x": rng.standard_normal((n, width)).astype(np.float32),
            prefix + "y": rng.integers(0, classes, n).astype(np.int64)}


def _values(params):
    return [p.value.copy() for p in params]


def test_a_large_training_step_runs_in_library_mode_and_matches_numpy():
    blocks = 6  # ~75 steps: over the threshold, so library mode is chosen by itself
    x, y, h, logits, loss, params = residual_mlp(blocks)
    start = _values(params)
    updates = gn.optim.SGD(lr=0.05, momentum=0.9).updates(loss, params)
    f = gn.compile([loss, logits], updates=updates, backend="cpu")
    assert len(f.program.steps) >= cpu_backend.library_steps()
    assert f.library and f.stats["mode"] == "library"
    # far fewer kernels than steps: every block runs the same ones
    assert f.stats["library_kernels"] < 30 < len(f.program.steps)
    ref = gn.compile([loss, logits], updates=updates, backend="numpy")
    variables = [n for n in f.state_nodes if n not in params]  # the momenta

    def reset():
        for p, v in zip(params, start):
            p.value = v.copy()
        for v in variables:
            v.value = np.zeros_like(v.value)
    got, want = [], []
    for fn, out in ((f, got), (ref, want)):
        reset()
        # small batches (temporaries allocated), then a larger one: the workspace grows
        for n in (4, 4, 600, 4):
            loss_v, logits_v = fn(**_feeds(n, seed=n))
            out.append((float(loss_v), logits_v.copy()))
        out.append(_values(params))
    for (l1, g1), (l2, g2) in zip(got[:-1], want[:-1]):
        assert l1 == pytest.approx(l2, rel=2e-4)
        np.testing.assert_allclose(g1, g2, rtol=2e-4, atol=2e-5)
    for a, b in zip(got[-1], want[-1]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert f._workspace.size >= 600 * 16 * 4  # grown for the batch of 600
    assert f.stats["kernels_compiled"] + f.stats["kernels_cached"] == \
        f.stats["library_kernels"]
    assert len(f.stats["kernel_seconds"]) == f.stats["library_kernels"]
    # what the user can read: the driver, then every kernel module
    assert "def program(" in f.source and f.source.count("def kernel(") >= 5
    assert "K0(" in f.source and "library kernels" in f.explain()


def test_library_mode_checks_feeds_before_any_step_and_keeps_parameters():
    x, y, h, logits, loss, params = residual_mlp(3)
    f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params),
                   backend="cpu", library=True)
    f(**_feeds(4))
    before = _values(params)
    bad = _feeds(4)
    bad["x"] = np.ones((4, 7), np.float32)  # wrong width
    with pytest.raises(gn.FeedError):
        f(**bad)
    bad = _feeds(4)
    bad["y"][2] = 5  # a label outside [0, 5)
    with pytest.raises(gn.FeedError):
        f(**bad)
    for a, b in zip(before, _values(params)):
        np.testing.assert_array_equal(a, b)


def test_library_mode_check_finite_names_the_node_and_restores_parameters():
    x = gn.input("x", (None, 3))
    W = gn.param("W", np.ones((3, 3), np.float32))
    out = gn.log(x @ W)
    loss = gn.sum(out)
    f = gn.compile(loss, updates={W: W - 0.1 * gn.grad(loss, W)}, backend="cpu",
                   library=True, check_finite=True)
    f(x=np.ones((2, 3), np.float32))
    before = W.value.copy()
    with pytest.raises(gn.NumericalError, match="log"):
        f(x=-np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(W.value, before)


def test_two_graphs_of_the_same_layer_types_share_their_kernels():
    # another depth, width, learning rate and parameter names: the same kernels (sizes
    # and constants are arguments)
    *_, loss1, params1 = residual_mlp(4, width=16, prefix="a_")
    f1 = gn.compile(loss1, updates=gn.optim.SGD(lr=0.1).updates(loss1, params1),
                    backend="cpu", library=True)
    f1(**_feeds(4, prefix="a_"))
    *_, loss2, params2 = residual_mlp(9, width=24, prefix="b_", seed=3)
    f2 = gn.compile(loss2, updates=gn.optim.SGD(lr=0.03).updates(loss2, params2),
                    backend="cpu", library=True)
    f2(**_feeds(4, width=24, prefix="b_"))
    paths1 = {p for _, p in f1._kernels}
    paths2 = {p for _, p in f2._kernels}
    assert paths2 <= paths1
    assert f2.stats["kernels_compiled"] == 0
    assert f2.stats["kernels_cached"] == f2.stats["library_kernels"] > 0


LIBRARY_SCRIPT = textwrap.dedent("""
    import numpy as np, graphnn as gn
    rng = np.random.default_rng(0)
    x = gn.input("x", (None, 8))
    h = x
    for k in range({blocks}):
        W = gn.param(f"W{{k}}", (rng.standard_normal((8, 8)) * 0.1).astype(np.float32))
        h = h + gn.tanh(h @ W) * 0.731
    f = gn.compile(gn.sum(h), backend="cpu", library=True)
    value = float(f(x=np.ones((2, 8), np.float32)))
    print(value, f.stats["kernels_compiled"], f.stats["kernels_cached"], f.path)
""")


def _run_library_script(cache_dir, blocks):
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(cache_dir), GRAPHNN_QUIET="1")
    out = subprocess.run([sys.executable, "-c", LIBRARY_SCRIPT.format(blocks=blocks)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    value, compiled, cached, path = out.stdout.split()
    return float(value), int(compiled), int(cached), path


def test_kernels_are_cached_on_disk_one_by_one_and_survive_corruption(tmp_path):
    value, compiled, cached, path = _run_library_script(tmp_path, 3)
    assert compiled > 0 and cached == 0
    # a new process with another graph of the same layers: nothing new to compile
    value5, compiled5, cached5, _ = _run_library_script(tmp_path, 5)
    assert compiled5 == 0 and cached5 == compiled
    pycache = os.path.join(os.path.dirname(path), "__pycache__")
    damaged = [f for f in os.listdir(pycache) if f.endswith((".nbi", ".nbc"))]
    assert damaged
    for f in damaged:
        with open(os.path.join(pycache, f), "wb") as fh:
            fh.write(b"\x80\x04garbage")
    value2, compiled2, cached2, _ = _run_library_script(tmp_path, 3)
    assert value2 == value and compiled2 == compiled and cached2 == 0


def test_progress_is_reported_when_compiling_and_silenced_by_graphnn_quiet(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_backend, "PROGRESS_DELAY", 0.0)
    x = gn.input("x", (None, 6))
    # constants no other test uses: kernels this process has not compiled yet
    y = gn.sum(gn.tanh(x * 0.6180339) + x * 0.3183099)
    monkeypatch.delenv("GRAPHNN_QUIET", raising=False)
    f = gn.compile(y, backend="cpu", library=True)
    f(x=np.ones((2, 6), np.float32))
    n = f.stats["kernels_compiled"]
    assert n > 0
    assert f"compiling {n} kernels (0 cached)" in capsys.readouterr().err
    g = gn.compile(y, backend="cpu", library=True)  # everything cached: quiet
    g(x=np.ones((2, 6), np.float32))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("GRAPHNN_QUIET", "1")
    z = gn.sum(gn.tanh(x * 0.5772156) - x * 0.1428571)
    h = gn.compile(z, backend="cpu", library=True)
    h(x=np.ones((2, 6), np.float32))
    assert h.stats["kernels_compiled"] > 0 and capsys.readouterr().err == ""


def test_a_new_process_with_every_kernel_cached_reports_no_compiling(tmp_path):
    # the kernels Numba loads from its disk cache are counted as cached, not compiled
    script = ("import graphnn.backends.cpu as c; c.PROGRESS_DELAY = 0.0\n" +
              LIBRARY_SCRIPT.format(blocks=3))
    env = {k: v for k, v in os.environ.items() if k != "GRAPHNN_QUIET"}
    env["GRAPHNN_CACHE_DIR"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    compiled = int(runs[0].stdout.split()[1])
    assert compiled > 0
    assert f"compiling {compiled} kernels (0 cached)" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
    assert runs[1].stdout.split()[1:3] == ["0", str(compiled)]


@pytest.mark.parametrize("library", [False, True])
def test_recycled_outputs_never_write_an_array_the_caller_holds(library):
    x = gn.input("x", (None,))
    f = gn.compile(x * x - 0.5 * x, backend="cpu", library=library)
    data = [np.full(50000, v, np.float32) for v in (1.0, 2.0, 3.0, 4.0)]

    def expected(v):
        return v * v - 0.5 * v
    first = f(x=data[0])
    second = f(x=data[1])  # the caller holds both results
    for k in range(6):
        third = f(x=data[2 + k % 2])
        np.testing.assert_array_equal(first, expected(data[0]))
        np.testing.assert_array_equal(second, expected(data[1]))
        np.testing.assert_array_equal(third, expected(data[2 + k % 2]))
        assert third.ctypes.data not in (first.ctypes.data, second.ctypes.data)
    # a loop that keeps the previous result (`prev, out = out, f(...)`) holds two arrays
    # during each call: the third kept array is written again, no fresh allocation
    prev, out = first, second
    del first, second, third
    addresses = set()
    for k in range(8):
        prev, out = out, f(x=data[k % 4])
        addresses.add(out.ctypes.data)
        np.testing.assert_array_equal(prev, expected(data[(k - 1) % 4]) if k else
                                      expected(data[1]))
        np.testing.assert_array_equal(out, expected(data[k % 4]))
    assert len(addresses) <= cpu_backend.KEEP_RESULTS


@pytest.mark.parametrize("library", [False, True])
def test_large_recycled_outputs_are_numpys_arrays(library):
    # graphnn/backends/cpu.py HUGE_PAGE_BYTES: from the second call on, a recycled output
    # of 4 MiB or more is an array NumPy allocated (huge pages), never one the caller holds
    x = gn.input("x", (None,))
    f = gn.compile(x * x - 0.5 * x, backend="cpu", library=library)
    data = [np.full(cpu_backend.HUGE_PAGE_BYTES // 4, v, np.float32) for v in (1.0, 2.0, 3.0)]
    out = f(x=data[0])
    addresses = set()
    for k in range(1, 7):  # the loop rebinds `out`: one result held during each call
        out = f(x=data[k % 3])
        np.testing.assert_array_equal(out, data[k % 3] * data[k % 3] - 0.5 * data[k % 3])
        assert out.flags.owndata and out.base is None
        addresses.add(out.ctypes.data)
    assert len(addresses) <= cpu_backend.KEEP_RESULTS
    held = [f(x=data[k % 3]) for k in range(4)]  # every result held: each one new
    assert len({a.ctypes.data for a in held}) == 4 and all(a.flags.owndata for a in held)
    for k, a in enumerate(held):
        np.testing.assert_array_equal(a, data[k % 3] * data[k % 3] - 0.5 * data[k % 3])
    small = f(x=data[0][:1000])  # a different shape: the program allocates its own
    np.testing.assert_array_equal(small, np.full(1000, 0.5, np.float32))


def test_a_sum_of_many_arrays_is_added_by_the_driver_in_library_mode():
    # kernels/cpu.py _wide_sum: from WIDE_SUM terms on, the driver adds the arrays with
    # NumPy (in order) and the step's kernel reads the sum; a short sum stays in the kernel
    from kernels.cpu import WIDE_SUM
    n = WIDE_SUM + 2
    xs = [gn.input(f"wide_x{k}", (5,)) for k in range(n)]
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    f = gn.compile(gn.tanh(total), backend="cpu", library=True)
    short = gn.compile(gn.tanh(xs[0] + xs[1] + xs[2]), backend="cpu", library=True)
    assert re.search(r"\bwide\d+_f = \S+ \+ \S+", f.source)
    assert len(re.findall(r"\bwide\d+_f \+= ", f.source)) == n - 2
    assert not re.search(r"\bwide\d+", short.source)
    rng = np.random.default_rng(9)
    feeds = {f"wide_x{k}": rng.standard_normal(5).astype(np.float32) for k in range(n)}
    expected = np.tanh(sum(v.astype(np.float64) for v in feeds.values()))
    np.testing.assert_allclose(f(**feeds), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(short(**{k: feeds[k] for k in ("wide_x0", "wide_x1", "wide_x2")}),
                               np.tanh(sum(feeds[f"wide_x{k}"].astype(np.float64)
                                           for k in range(3))), rtol=1e-5, atol=1e-6)



def _lstm_step(steps, seed):
    rng = np.random.default_rng(seed)
    x = gn.input("x", (None, steps, 5))
    y = gn.input("y", (None, 1))
    out = gn.nn.Dense(1, seed=seed)(gn.nn.LSTM(12, seed=seed)(x))
    loss = gn.mean(gn.square(out - y))
    params = gn.Graph(loss).params
    feeds = {"x": rng.standard_normal((4, steps, 5)).astype(np.float32),
             "y": rng.standard_normal((4, 1)).astype(np.float32)}
    return loss, params, feeds


def test_an_lstm_of_any_length_is_served_by_the_kernels_of_a_shorter_one():
    # The gradient of a bias used at every time step is a sum of T per-step sums: it was
    # finished in one of them, in a kernel that grew with T (2.5 s to compile at T=200),
    # and a wide sum's kernel numbered its values by T. Both are one kernel for every T.
    counts = {}
    for steps in (10, 30):
        loss, params, feeds = _lstm_step(steps, seed=steps)
        grads = gn.grad(loss, params)
        f = gn.compile([loss] + grads, backend="cpu", library=True, progress=False)
        got = f(**feeds)
        counts[steps] = f.stats["kernels_compiled"]
        expected = gn.compile([loss] + grads, backend="numpy")(**feeds)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
    assert counts[30] == 0  # (every kernel of T=30 was compiled for T=10)


def _train_step(blocks, prefix):
    # (small weights and steps: 60 residual blocks of 0.1 diverge at once)
    x, y, h, logits, loss, params = residual_mlp(blocks, prefix=prefix, scale=0.02)
    updates = gn.optim.SGD(lr=0.01).updates(loss, params)
    return loss, updates, params


def test_a_deep_stack_runs_its_repeated_steps_as_calls_of_one_function(monkeypatch):
    # kernels/cpu.py _fold_repeats: 70 blocks repeat the same driver lines (but for the
    # variables' names) 70 times forward, backward and in the update (two steps a block
    # there: at least FOLD_STEPS * FOLD_REPEATS = 128 steps fold); each run becomes
    # calls of a function of FOLD_STEPS steps or more. Same numbers as the unfolded driver
    # (bit for bit) and as the numpy back end.
    from kernels import cpu as kernels_cpu
    repeats = kernels_cpu.FOLD_REPEATS
    loss, updates, params = _train_step(70, "fold_")
    folded = gn.compile(loss, updates=updates, backend="cpu")
    monkeypatch.setattr(kernels_cpu, "FOLD_REPEATS", 10 ** 9)  # nothing repeats that often
    loss2, updates2, params2 = _train_step(70, "plain_")
    plain = gn.compile(loss2, updates=updates2, backend="cpu")
    ref = gn.compile(loss, updates=updates, backend="numpy")
    driver, plain_driver = (f.source.split("# K0: kernel module")[0] for f in (folded, plain))
    calls = re.findall(r"= (_steps\d+)\(|^    (_steps\d+)\(", driver, re.MULTILINE)
    functions = set(re.findall(r"^def (_steps\d+)\(", driver, re.MULTILINE))
    assert functions and "_steps" not in plain_driver
    assert len(calls) >= repeats
    assert {a or b for a, b in calls} == functions  # each function is called
    def code_lines(text):  # (the workspace's offsets, a line per temporary, are not steps)
        return [line for line in text.splitlines() if line.strip()[:1] not in ("", "#")
                and not re.match(r"\s*_w\d+ = _w\d+ \+ _room\d+$", line)]
    assert len(code_lines(driver)) < 0.4 * len(code_lines(plain_driver))
    # every step's comment is still in the program, in order
    numbers = [int(n) for n in re.findall(r"^    # step (\d+):", driver, re.MULTILINE)]
    assert numbers == list(range(len(folded.program.steps)))
    start = _values(params)
    for p, v in zip(params2, start):
        p.value = v.copy()
    got, again, want = [], [], []
    for n in (4, 600, 4):
        got.append(float(folded(**_feeds(n, seed=n, prefix="fold_"))))
        again.append(float(plain(**_feeds(n, seed=n, prefix="plain_"))))
    assert got == again and np.isfinite(got).all() and got[2] != got[0]
    for a, b in zip(_values(params), _values(params2)):
        np.testing.assert_array_equal(a, b)
    for p, v in zip(params, start):
        p.value = v.copy()
    for n in (4, 600, 4):
        want.append(float(ref(**_feeds(n, seed=n, prefix="fold_"))))
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_the_driver_of_repeated_steps_is_the_same_found_once_or_step_by_step(monkeypatch):
    # kernels/cpu.py generate_library: a step whose loops have the structure of an earlier
    # one (_loops_key), or a gemm or convolution whose call has that of an earlier one
    # (_library_call_key), gets that step's kernel and call with its own buffers; the
    # driver and kernels must be those made step by step, byte for byte
    from kernels import cpu as kernels_cpu
    rng = np.random.default_rng(3)
    images = gn.input("memo_images", (None, 6, 6, 4))
    labels = gn.input("memo_labels", (None,), dtype="int64")
    h, params = images, []
    for k in range(6):
        W = gn.param(f"memo_K{k}", (rng.standard_normal((3, 3, 4, 4)) * 0.1).astype(np.float32))
        params.append(W)
        h = h + gn.relu(gn.conv2d(h, W, padding="same"))
    Wd = gn.param("memo_Wd", (rng.standard_normal((6 * 6 * 4, 3)) * 0.1).astype(np.float32))
    loss = gn.softmax_cross_entropy(gn.flatten(h) @ Wd, labels)
    conv = gn.compile(loss, updates=gn.optim.Adam(1e-3).updates(loss, params + [Wd]),
                      backend="cpu", library=True)
    mlp_loss, mlp_updates, _ = _train_step(12, "memo_")
    mlp = gn.compile(mlp_loss, updates=mlp_updates, backend="cpu", library=True)
    made = [kernels_cpu.generate_library(f.program) for f in (conv, mlp)]
    # the blocks' convolutions (and their gradients) and products share their call's key
    for f, kind in ((conv, ir.Window), (mlp, ir.Matmul)):
        keys = [kernels_cpu._library_call_key(s)[0] for s in f.program.steps
                if isinstance(s, kind)]
        assert max(keys.count(k) for k in keys) >= 6
    monkeypatch.setattr(kernels_cpu, "_loops_key", lambda step, loop: (None, ()))
    monkeypatch.setattr(kernels_cpu, "_library_call_key", lambda step: (None, ()))
    assert [kernels_cpu.generate_library(f.program) for f in (conv, mlp)] == made
    assert made[1][0].count("K1(") >= 12  # (the relu kernel, called by every block)


def test_a_program_that_trains_convolutions_runs_in_library_mode():
    # (fused, a convolution's three modes compile inside one function: cnn-mnist's 37
    # steps took 7.5-8.4 s cold, against 2.5-3 s as a library for the same step time)
    import graphnn.tools.bench as bench
    model = bench.WORKLOADS["cnn-mnist"]()
    x = gn.input("x", (None, 28, 28, 1))
    y = gn.input("y", (None,), dtype="int64")
    params = [gn.param(f"cnn_{name}", value.copy()) for name, value in model.param_inits]
    loss = model.loss(bench.GraphnnOps, model.forward(bench.GraphnnOps, x, params), y)
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.01).updates(loss, params),
                      backend="cpu")
    assert len(step.program.steps) < cpu_backend.library_steps()  # (short, yet a library)
    assert step.stats["mode"] == "library"
    assert gn.compile(loss, updates=gn.optim.SGD(lr=0.01).updates(loss, params),
                      backend="cpu", library=False).stats["mode"] == "fused"  # (asked for)
    # an inference with a convolution keeps the fused function
    infer = gn.compile(model.forward(bench.GraphnnOps, x, params), backend="cpu")
    assert infer.stats["mode"] == "fused"
