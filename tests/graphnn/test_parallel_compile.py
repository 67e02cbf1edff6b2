"""A first call in library mode compiles its kernels in two processes (backends/cpu.py
_compile_in_parallel): the types recorded by running the driver once must be the ones the
real call compiles for, that run must leave the parameters alone, and the results must be
those of one process."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import graphnn as gn
from graphnn.backends import cpu as cpu_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# how many processes a first call compiles in on this machine (one CPU, or not Linux: one)
PROCESSES = 2 if sys.platform.startswith("linux") and hasattr(os, "sched_getaffinity") \
    and len(os.sched_getaffinity(0)) >= 2 else 1


def conv_step(seed=0):
    """conv 3x3 relu, max-pool 2, dense, softmax cross-entropy, SGD: a training step with a
    convolution's three modes, pooling and its gradient, gemm and loops."""
    rng = np.random.default_rng(seed)
    x = gn.input("x", (None, 8, 8, 2))
    y = gn.input("y", (None,), dtype="int64")
    w = gn.param("w", (rng.standard_normal((3, 3, 2, 4)) * 0.3).astype(np.float32))
    b = gn.param("b", np.zeros(4, np.float32))
    v = gn.param("v", (rng.standard_normal((36, 3)) * 0.3).astype(np.float32))
    h = gn.max_pool2d(gn.relu(gn.conv2d(x, w) + b), 2)
    loss = gn.softmax_cross_entropy(gn.reshape(h, (-1, 36)) @ v, y)
    params = [w, b, v]
    feeds = {"x": rng.standard_normal((3, 8, 8, 2)).astype(np.float32),
             "y": np.array([0, 2, 1])}
    return loss, params, feeds


def residual_step(blocks=3, seed=0):
    rng = np.random.default_rng(seed)
    x = gn.input("x", (None, 6))
    y = gn.input("y", (None,), dtype="int64")
    h, params = x, []
    for k in range(blocks):
        W = gn.param(f"W{k}", (rng.standard_normal((6, 6)) * 0.2).astype(np.float32))
        c = gn.param(f"c{k}", np.zeros(6, np.float32))
        params += [W, c]
        h = h + gn.tanh(h @ W + c)
    loss = gn.softmax_cross_entropy(h, y)
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32),
             "y": np.array([0, 5, 1, 3])}
    return loss, params, feeds


@pytest.mark.parametrize("make", [conv_step, residual_step])
def test_recorded_types_are_those_compiled_and_parameters_are_untouched(make):
    loss, params, feeds = make()
    f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params),
                   backend="cpu", library=True, progress=False)
    first = f(**feeds)
    kernels = [module.kernel for module, _ in f._kernels]
    arrays = [feeds[name] for name, _, _ in f._feed_types]
    tail = [s.value for s in f._states] + f._const_arrays
    before = [p.value.copy() for p in params]
    types, hosted = f._kernel_argument_types(arrays, tail, kernels)
    assert hosted == []  # (no Python step: no other function's kernels)
    on_demand = set(f.module.ON_DEMAND)
    called = [k for k in range(len(kernels)) if k not in on_demand]
    assert sorted(types) == called
    for k in called:
        # a signature the real call compiled (or loaded) this kernel for (kernels are
        # shared: other graphs of this process may have added others)
        assert types[k] in kernels[k].signatures, f"K{k}"
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)
    # the driver's kernels are the real ones again
    second = f(**feeds)
    assert float(second) < float(first)


SCRIPT = """
import json, sys
import numpy as np
import graphnn as gn
sys.path.insert(0, {tests!r})
from test_parallel_compile import conv_step
loss, params, feeds = conv_step()
f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params), backend="cpu",
               library=True)
losses = [float(f(**feeds)) for _ in range(3)]
print(json.dumps({{"losses": losses, "w": params[0].value.tolist(),
                  "stats": {{k: f.stats[k] for k in ("compile_processes", "kernels_compiled",
                                                  "kernels_cached", "library_kernels")}},
                  "seconds": [e["seconds"] for e in f.stats["kernel_seconds"]],
                  "explain": f.explain()}}))
"""


def _run(cache_dir, jobs):
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(cache_dir), GRAPHNN_QUIET="1",
               GRAPHNN_JOBS=str(jobs))
    out = subprocess.run([sys.executable, "-c",
                          SCRIPT.format(tests=os.path.join(ROOT, "tests", "graphnn"))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_processes_compile_what_one_does_with_the_same_results(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert one["stats"]["compile_processes"] == 1
    assert two["stats"]["compile_processes"] == PROCESSES
    for run in (one, two):
        stats = run["stats"]
        assert stats["kernels_compiled"] == stats["library_kernels"] >= 4
        assert stats["kernels_cached"] == 0
        assert all(s is not None and s > 0 for s in run["seconds"])
    assert ("kernels compiled in 2 processes" in two["explain"]) == (PROCESSES == 2)
    assert two["losses"] == one["losses"]
    assert two["w"] == one["w"]
    # a new process finds every kernel in the cache the two processes filled
    again = _run(tmp_path / "two", 2)
    assert again["stats"]["kernels_compiled"] == 0
    assert again["stats"]["compile_processes"] == 1
    assert again["losses"] == one["losses"]


def test_compile_jobs_reads_the_environment_and_stays_in_one_process_when_unsafe(
        monkeypatch):
    if not sys.platform.startswith("linux"):
        assert cpu_backend.compile_jobs() == 1
        return
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert cpu_backend.compile_jobs() == 1  # another thread runs
    finally:
        stop.set()
        other.join()
    # a thread that only redraws gn.fit's progress bar is no reason to stay in one process
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("GRAPHNN_JOBS", raising=False)
    alone = [threading.current_thread()]
    bar = threading.Thread(target=stop.wait, name="graphnn-fit-progress")
    monkeypatch.setattr(threading, "enumerate", lambda: alone + [bar])
    assert cpu_backend.compile_jobs() == 2
    # (whatever other tests of this process left running)
    monkeypatch.setattr(threading, "enumerate", lambda: alone)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv("GRAPHNN_JOBS", "1")
    assert cpu_backend.compile_jobs() == 1
    monkeypatch.setenv("GRAPHNN_JOBS", "8")
    assert cpu_backend.compile_jobs() == 2  # (one forked process at most)
    monkeypatch.setenv("GRAPHNN_JOBS", "two")
    assert cpu_backend.compile_jobs() == cpu_backend.COMPILE_JOBS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_backend.compile_jobs() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu_backend.compile_jobs() == 2
    monkeypatch.setattr(threading, "enumerate", lambda: alone + [other])
    assert cpu_backend.compile_jobs() == 1
    monkeypatch.setattr(threading, "enumerate", lambda: alone)
    assert cpu_backend.compile_jobs() == 2
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())
    assert cpu_backend.compile_jobs() == 1
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delitem(sys.modules, "mpi4py.MPI")
    assert cpu_backend.compile_jobs() == 1


def test_a_compiling_process_that_stalls_is_killed_and_its_report_is_empty(monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("the compiling process is forked on Linux only")
    monkeypatch.setattr(cpu_backend, "STALLED_SECONDS", 1.0)
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             pass_fds=(write,))
    os.close(write)
    try:
        started = time.monotonic()
        assert cpu_backend._report_of(child.pid, read) == b""
        assert time.monotonic() - started < 30
        assert child.wait(timeout=30) == -9  # (killed)
    finally:
        os.close(read)
        if child.poll() is None:
            child.kill()
            child.wait()
    # a process that writes its report and exits: the report
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", f"import os; os.write({write}, b'{{\"3\": 0.5}}')"],
                             pass_fds=(write,))
    os.close(write)
    try:
        assert cpu_backend._report_of(child.pid, read) == b'{"3": 0.5}'
    finally:
        os.close(read)
        child.wait()


def test_a_driver_that_cannot_run_ahead_compiles_in_one_process(monkeypatch):
    loss, params, feeds = residual_step(blocks=2, seed=3)
    f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params),
                   backend="cpu", library=True, progress=False)
    kernels = [module.kernel for module, _ in f._kernels]

    def broken(*arrays):
        raise RuntimeError("no plan")
    monkeypatch.setattr(f.module, "workspace_bytes", broken)
    arrays = [feeds[name] for name, _, _ in f._feed_types]
    tail = [s.value for s in f._states] + f._const_arrays
    assert f._kernel_argument_types(arrays, tail, kernels) == ({}, [])
    ready = [False] * len(kernels)
    assert f._compile_in_parallel(arrays, tail, ready, lambda: None) == ({}, set(), 1)
    assert ready == [False] * len(kernels)


def test_a_program_that_ignores_sigchld_still_compiles_in_two_processes(tmp_path):
    # (the system then reaps the forked process itself: waiting for it finds no child)
    script = f"""
import json, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
import graphnn as gn
sys.path.insert(0, {os.path.join(ROOT, "tests", "graphnn")!r})
from test_parallel_compile import residual_step
loss, params, feeds = residual_step()
f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params), backend="cpu",
               library=True)
print(json.dumps([float(f(**feeds)), float(f(**feeds)), f.stats["compile_processes"]]))
"""
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(tmp_path), GRAPHNN_QUIET="1",
               GRAPHNN_JOBS="2")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second, processes = json.loads(out.stdout.strip().splitlines()[-1])
    loss, params, feeds = residual_step()
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params),
                      backend="numpy")
    expected = [float(step(**feeds)), float(step(**feeds))]
    np.testing.assert_allclose([first, second], expected, rtol=1e-5)
    assert processes == PROCESSES


def test_gn_fit_compiles_its_first_call_in_two_processes_under_its_progress_bar(tmp_path):
    # (gn.fit redraws its bar from a thread while the first call compiles: that thread and
    # tqdm's monitor only draw the bar, which the forked copy never touches)
    script = f"""
import json, sys
import numpy as np
import graphnn as gn
sys.path.insert(0, {os.path.join(ROOT, "tests", "graphnn")!r})
from test_parallel_compile import residual_step
loss, params, feeds = residual_step()
f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params), backend="cpu",
               library=True)
data = {{"x": np.tile(feeds["x"], (4, 1)), "y": np.tile(feeds["y"], 4)}}
history = gn.fit(f, data, epochs=2, batch_size=8, shuffle=False, progress=True)
print(json.dumps([f.stats["compile_processes"], f.stats["kernels_compiled"],
                  f.stats["library_kernels"]]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("GRAPHNN_QUIET", "GRAPHNN_JOBS")}
    env["GRAPHNN_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    processes, compiled, kernels = json.loads(out.stdout.strip().splitlines()[-1])
    assert processes == PROCESSES
    assert compiled == kernels
    assert "compiled in" in out.stderr  # (gn.fit's bar after the first call)


HELPER_SCRIPT = """
import json, os, sys, time
import graphnn as gn
from graphnn.backends import compile_helper, cpu
sys.path.insert(0, {tests!r})
from test_parallel_compile import residual_step
cpu.EARLY_HELPER_NODES = 20
compile_helper.IDLE_SECONDS = {idle!r}
loss, params, feeds = residual_step(blocks=4)
f = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params), backend="cpu",
               library=True)
forked = f._helper is not None and f._helper.pid is not None
time.sleep({wait!r})
losses = [float(f(**feeds)) for _ in range(3)]
for _ in range(100):  # (the helper exits once it has reported)
    compile_helper._reap()
    if not compile_helper._UNREAPED:
        break
    time.sleep(0.05)
print(json.dumps({{"forked": forked, "losses": losses, "open": compile_helper.pending(),
                  "unreaped": len(compile_helper._UNREAPED),
                  "stats": {{k: f.stats.get(k) for k in (
                      "compile_helper", "compile_processes", "kernels_compiled",
                      "library_kernels")}}}}))
"""


def _run_helper(cache_dir, idle=120.0, wait=0.0):
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(cache_dir), GRAPHNN_QUIET="1",
               GRAPHNN_JOBS="2")
    script = HELPER_SCRIPT.format(tests=os.path.join(ROOT, "tests", "graphnn"), idle=idle,
                                  wait=wait)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _numpy_losses(blocks=4, steps=3):
    loss, params, feeds = residual_step(blocks=blocks)
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, params),
                      backend="numpy")
    return [float(step(**feeds)) for _ in range(steps)]


@pytest.mark.skipif(PROCESSES == 1, reason="the helper is forked on Linux with 2 CPUs")
def test_a_large_graph_forks_its_compile_helper_while_it_is_lowered(tmp_path):
    run = _run_helper(tmp_path)
    assert run["forked"]
    stats = run["stats"]
    assert stats["compile_helper"] == "forked by gn.compile"
    assert stats["compile_processes"] == 2
    assert stats["kernels_compiled"] == stats["library_kernels"] >= 4
    np.testing.assert_allclose(run["losses"], _numpy_losses(), rtol=1e-5)
    assert run["open"] == 0 and run["unreaped"] == 0  # (nothing left behind)


@pytest.mark.skipif(PROCESSES == 1, reason="the helper is forked on Linux with 2 CPUs")
def test_a_helper_whose_idle_time_is_up_is_replaced_by_one_the_first_call_forks(tmp_path):
    run = _run_helper(tmp_path, idle=0.2, wait=2.5)
    assert run["forked"]
    assert run["stats"]["compile_helper"] == "forked by the first call"
    assert run["stats"]["compile_processes"] == 2
    np.testing.assert_allclose(run["losses"], _numpy_losses(), rtol=1e-5)
    assert run["open"] == 0 and run["unreaped"] == 0


def _gone(pid, seconds=20.0):
    """Whether process `pid`, a child of this one, exits within `seconds` (reaped here)."""
    from graphnn.backends import compile_helper
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        compile_helper._reap()
        if pid not in compile_helper._UNREAPED and not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(PROCESSES == 1, reason="the helper is forked on Linux with 2 CPUs")
def test_a_helper_nobody_needs_exits(monkeypatch):
    import gc

    from graphnn.backends import compile_helper
    monkeypatch.setattr(cpu_backend, "EARLY_HELPER_NODES", 20)
    monkeypatch.setenv("GRAPHNN_JOBS", "2")
    monkeypatch.setattr(cpu_backend, "_other_threads", lambda: False)
    loss, params, feeds = residual_step(blocks=4, seed=5)
    updates = gn.optim.SGD(lr=0.1).updates(loss, params)
    # a function never called: its helper goes when the function does
    f = gn.compile(loss, updates=updates, backend="cpu", library=True)
    pid = f._helper.pid
    assert compile_helper.pending() == 1
    del f
    gc.collect()
    assert compile_helper.pending() == 0
    assert _gone(pid)
    # one that runs fused: no helper (asked for, or chosen for a short program)
    g = gn.compile(loss, updates=updates, backend="cpu", library=False)
    assert g._helper is None
    monkeypatch.setattr(cpu_backend, "LIBRARY_STEPS", 10_000)
    monkeypatch.delenv("GRAPHNN_LIBRARY_STEPS", raising=False)
    h = gn.compile(loss, updates=updates, backend="cpu")
    assert h.stats["mode"] == "fused" and h._helper is None
    assert compile_helper.pending() == 0
    # a build that fails after the fork kills its helper
    started = []
    real = compile_helper.CompileHelper

    def spy(early):
        helper = real(early)
        started.append(helper.pid)
        return helper
    monkeypatch.setattr(cpu_backend, "CompileHelper", spy)
    monkeypatch.setattr(cpu_backend.cpu_codegen, "generate_library",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no driver")))
    with pytest.raises(RuntimeError, match="no driver"):
        gn.compile(loss, updates=updates, backend="cpu", library=True)
    assert len(started) == 1 and compile_helper.pending() == 0
    assert _gone(started[0])
    # one whose kernels are all in the cache by its first call: its helper goes then
    monkeypatch.undo()
    monkeypatch.setattr(cpu_backend, "EARLY_HELPER_NODES", 20)
    monkeypatch.setenv("GRAPHNN_JOBS", "2")
    monkeypatch.setattr(cpu_backend, "_other_threads", lambda: False)
    first = gn.compile(loss, backend="cpu", library=True)
    before = float(first(**feeds))  # (its kernels compiled, or found)
    again = gn.compile(loss, backend="cpu", library=True)
    pid = again._helper.pid
    assert float(again(**feeds)) == before
    np.testing.assert_allclose(before, float(gn.compile(loss, backend="numpy")(**feeds)),
                               rtol=1e-5)
    assert again.stats["kernels_compiled"] == 0 and again._helper is None
    assert compile_helper.pending() == 0 and _gone(pid)
