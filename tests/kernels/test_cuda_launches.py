"""Kernel launches per training step on the cuda back end, counted by an instrumented
launcher in the CUDA simulator, against the budgets of a fused step: an MLP 784-512-256-10
takes at most 12 launches with SGD and 16 with Adam, the MNIST-size CNN at most 20.

The simulator cannot run the full sizes, and it need not: the launches are fixed when the
module is generated (`program()` has no loop or branch around a launch), so the full-size
graphs are counted in their generated module (`stats["launches_per_call"]`, no device) and
the same graphs at tiny sizes are run in the simulator, where every launch is counted and
the step's values are checked against the numpy back end."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from graphnn.tools import bench
from helpers import BACKEND_OPTIONS

pytestmark = pytest.mark.skipif(not simulator_enabled(), reason="simulator tier: needs "
                                "NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")
SMALL = BACKEND_OPTIONS["cuda"]
BUDGETS = {"sgd": 12, "adam": 16, "cnn": 20}


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch in the simulator, by kernel name."""
    from numba.cuda.simulator import kernel
    seen = []
    call = kernel.FakeCUDAKernel.__call__

    def counted(self, *args):
        if not self._device:
            seen.append(self.fn.__name__)
        return call(self, *args)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__call__", counted)
    return seen


def _optimizer(name):
    return gn.optim.SGD(lr=0.1) if name == "sgd" else gn.optim.Adam(lr=0.01)


def _mlp(tag, sizes):
    x = gn.input("x", (None, sizes[0]))
    y = gn.input("y", (None,), dtype="int64")
    h, params = x, []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = gn.param(f"w{k}_{tag}", shape=(a, b), init="glorot_uniform", seed=k)
        bias = gn.param(f"b{k}_{tag}", np.linspace(-0.1, 0.1, b).astype(np.float32))
        h = h @ w + bias
        h = gn.relu(h) if k < len(sizes) - 2 else h
        params += [w, bias]
    return gn.softmax_cross_entropy(h, y), params


def _cnn(tag, image, filters, hidden, classes=10):
    """bench's cnn-mnist at any size: conv 3x3 relu, conv 3x3 relu, max pool 2, dense
    relu, dense, softmax cross-entropy (valid convolutions)."""
    rng = np.random.default_rng(0)
    x = gn.input("x", (None, image, image, 1))
    y = gn.input("y", (None,), dtype="int64")
    side = (image - 4) // 2
    shapes = [(3, 3, 1, filters[0]), (filters[0],), (3, 3, filters[0], filters[1]),
              (filters[1],), (side * side * filters[1], hidden), (hidden,),
              (hidden, classes), (classes,)]
    params = [gn.param(f"cnn{k}_{tag}", (rng.normal(size=s) * 0.3).astype(np.float32))
              for k, s in enumerate(shapes)]
    model = bench.CNNMnist()
    logits = model.forward(bench.GraphnnOps, x, params)
    return gn.softmax_cross_entropy(logits, y), params


def _step(loss, params, optimizer, backend, **options):
    return gn.compile(loss, updates=_optimizer(optimizer).updates(loss, params),
                      backend=backend, **options)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mlp_784_512_256_10_step_launches(optimizer, launches):
    loss, params = _mlp(f"full_{optimizer}", (784, 512, 256, 10))
    full = _step(loss, params, optimizer, "cuda", generate_only=True)
    count = full.stats["launches_per_call"]
    assert count <= BUDGETS[optimizer]

    # the same graph, tiny, run: every launch counted, values as on numpy
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(5, 6)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    results = {}
    for backend in ("numpy", "cuda"):
        loss, params = _mlp(f"tiny_{optimizer}_{backend}", (6, 5, 4, 3))
        options = SMALL if backend == "cuda" else {}
        step = _step(loss, params, optimizer, backend, **options)
        launches.clear()
        losses = [float(step(x=X, y=Y)) for _ in range(2)]
        if backend == "cuda":
            assert len(launches) == 2 * count == 2 * step.stats["launches_per_call"], launches
        results[backend] = losses, [p.value.copy() for p in params]
    np.testing.assert_allclose(results["cuda"][0], results["numpy"][0], rtol=1e-5)
    for got, expected in zip(results["cuda"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    print(f"MLP 784-512-256-10 {optimizer}: {count} launches per step")


def test_mnist_cnn_step_launches(launches):
    loss, params = _cnn("full", 28, (32, 64), 128)
    count = _step(loss, params, "sgd", "cuda", generate_only=True).stats["launches_per_call"]
    assert count <= BUDGETS["cnn"]

    rng = np.random.default_rng(2)
    X = rng.uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    Y = np.array([1, 2])
    results = {}
    for backend in ("numpy", "cuda"):
        loss, params = _cnn(f"tiny_{backend}", 8, (2, 3), 4, classes=3)
        step = _step(loss, params, "sgd", backend, **(SMALL if backend == "cuda" else {}))
        launches.clear()
        value = float(step(x=X, y=Y))
        if backend == "cuda":
            assert len(launches) == count == step.stats["launches_per_call"], launches
        results[backend] = value, [p.value.copy() for p in params]
    assert results["cuda"][0] == pytest.approx(results["numpy"][0], rel=1e-5)
    for got, expected in zip(results["cuda"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    print(f"cnn-mnist: {count} launches per step")


def test_the_gpu_check_tool_runs_in_the_simulator(capsys):
    """`make gpu-check`'s table, on tiny workloads in the simulator (its times mean
    nothing there; the launches per step and the profiled launches are checked)."""
    from graphnn.tools import gpu_check
    assert gpu_check.main(["--tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "SIMULATOR" in lines[0]
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")]
            for line in lines[2:]}
    assert rows["mlp-tiny"][3] == "12" and rows["eltwise-tiny"][3] == "1"
