"""Cached, eagerly compiled CUDA kernels.

What each tier can prove:
- simulator: every launch passes exactly the argument types of the kernel's declared
  signature (SIGNATURES, the one the kernels are compiled with eagerly), so a real GPU
  never compiles a kernel at launch; every kernel is declared `cache=True`;
- PTX (no GPU, NVVM present): a second process that builds the same graph compiles no
  kernel to PTX: it reads the PTX the first stored in the kernel cache
  (`numba.cuda.compile_ptx` is made to fail there, and the text is the same);
- GPU (`-m gpu`): a second process loads every kernel from Numba's on-disk cache next to
  the generated module (`stats["kernels_compiled"] == 0`). The simulator has no NVVM and
  no cubin, so this part runs only on a GPU.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SMALL = BACKEND_OPTIONS["cuda"]

GRAPH = """
import json, sys
import numpy as np
import graphnn as gn
x = gn.input("x", (None, 5))
y = gn.input("y", (None,), dtype="int64")
w = gn.param("w", np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3))
loss = gn.softmax_cross_entropy(gn.tanh(x @ w), y)
updates = gn.optim.Adam(0.01).updates(loss, [w])
"""


def run_in_process(code, cache_dir, simulator=False):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["GRAPHNN_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE])
    proc = subprocess.run([sys.executable, "-c", GRAPH + code], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the subprocess failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1])


PTX_RUN = """
import hashlib
from numba import cuda
if sys.argv[-1] == "second":
    def no_compile(*args, **kwargs):
        raise AssertionError("compile_ptx was called")
    cuda.compile_ptx = no_compile
f = gn.compile(loss, updates=updates, backend="cuda", generate_only=True)
try:
    ptx = f.ptx()
except Exception as exc:
    if "NVVM" in str(exc) or "nvvm" in str(exc) or "CudaSupportError" in type(exc).__name__:
        print(json.dumps({"skip": f"the CUDA compiler library (NVVM) cannot be used here: "
                                  f"{str(exc).splitlines()[0]}"}))
        raise SystemExit
    raise
print(json.dumps({"kernels": len(ptx), "compiled": f.stats["ptx_compiled"],
                  "cached": f.stats["ptx_cached"],
                  "hash": hashlib.sha256("".join(sorted(ptx.values())).encode()).hexdigest()}))
"""


def test_a_second_process_compiles_no_kernel_to_ptx(tmp_path):
    first = run_in_process(PTX_RUN.replace("sys.argv[-1]", "'first'"), tmp_path)
    if "skip" in first:
        pytest.skip(first["skip"])
    assert first["kernels"] >= 3 and first["compiled"] == first["kernels"]
    assert first["cached"] == 0
    second = run_in_process(PTX_RUN.replace("sys.argv[-1]", "'second'"), tmp_path)
    assert second["compiled"] == 0 and second["cached"] == second["kernels"]
    assert second["hash"] == first["hash"]
    stored = os.listdir(tmp_path / "ptx")
    assert len(stored) == first["kernels"] and all(f.endswith(".ptx") for f in stored)


@pytest.mark.skipif(not simulator_enabled(), reason="simulator tier: needs "
                    "NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")
def test_every_launch_has_exactly_its_declared_signature(monkeypatch):
    from numba.cuda.simulator import kernel
    seen = {}
    call = kernel.FakeCUDAKernel.__call__

    def typed(arg):
        if isinstance(arg, (int, np.integer)):
            return "int64"
        layout = ", ".join([":"] * (len(arg.shape) - 1) + ["::1"])
        assert arg.is_c_contiguous()
        return f"{np.dtype(arg.dtype).name}[{layout}]"

    def recording(self, *args):
        if not self._device:
            seen[self.fn.__name__] = f"void({', '.join(typed(a) for a in args)})"
        return call(self, *args)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__call__", recording)
    x = gn.input("x", (None, 5))
    y = gn.input("y", (None,), dtype="int64")
    w = gn.param("w_signatures", np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3))
    h = gn.concat([gn.tanh(x @ w), gn.sigmoid(x @ w)], axis=1)
    loss = gn.softmax_cross_entropy(gn.slice_axis(h, 1, 0, 3), y) + gn.mean(gn.square(h))
    step = gn.compile(loss, updates=gn.optim.Adam(0.01).updates(loss, [w]), backend="cuda",
                      **SMALL)
    step(x=np.ones((2, 5), np.float32), y=np.array([0, 2]))
    declared = step.module.SIGNATURES
    assert seen == declared
    for name in declared:
        assert re.search(rf"@cuda.jit\(cache=True\)\ndef {name}\(", step.source), name


@pytest.mark.gpu
@pytest.mark.skipif(simulator_enabled(), reason="needs a CUDA GPU with "
                    "NUMBA_ENABLE_CUDASIM=0 (run: make gpu-check)")
def test_a_second_process_loads_every_kernel_from_the_cache(tmp_path):
    from numba import cuda
    if not cuda.is_available():
        pytest.skip("needs a CUDA GPU with NUMBA_ENABLE_CUDASIM=0 (run: make gpu-check)")
    code = """
f = gn.compile(loss, updates=updates, backend="cuda")
print(json.dumps({k: f.stats[k] for k in ("kernels", "kernels_compiled", "kernels_loaded")}))
"""
    first = run_in_process(code, tmp_path)
    assert first["kernels_compiled"] == first["kernels"]
    second = run_in_process(code, tmp_path)
    assert second["kernels_compiled"] == 0
    assert second["kernels_loaded"] == second["kernels"]
