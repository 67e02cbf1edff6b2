"""The CUDA back end without the simulator, on a machine without a GPU: the error a user
gets, and tier 2, `cuda.compile_ptx` on every generated kernel with no float64 instruction
in float32 graphs. Both run in a subprocess, because the test process has the simulator
switched on (tests/conftest.py) and Numba cannot switch it off once numba.cuda is imported.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_without_simulator(code):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_without_gpu_or_simulator_the_error_says_how_to_use_the_simulator():
    proc = run_without_simulator(
        "import graphnn as gn\n"
        "from numba import cuda\n"
        "if cuda.is_available(): print('GPU'); raise SystemExit\n"
        "try:\n"
        "    gn.compile(gn.input('x', (2,)) * 2, backend='cuda')\n"
        "except gn.GraphError as e:\n"
        "    print(type(e).__name__, e)\n")
    if proc.stdout.startswith("GPU"):
        pytest.skip("a CUDA GPU is present")
    assert proc.stdout.startswith("BackendError"), proc.stdout + proc.stderr
    assert "no CUDA GPU was found" in proc.stdout and "NUMBA_ENABLE_CUDASIM=1" in proc.stdout


def test_every_kernel_compiles_to_ptx_without_float64():
    proc = run_without_simulator("import ptx_check; ptx_check.main()")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the PTX check crashed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1])
    if "skip" in result:
        print(f"PTX tier skipped: {result['skip']}")
        pytest.skip(result["skip"])
    graphs = result["graphs"]
    assert set(graphs) == set(result["expected"])
    for graph, kernels in graphs.items():
        assert kernels, graph
        if graph.endswith("float64"):
            assert sum(kernels.values()) > 0, "the check must see float64 where it is"
            continue
        for kernel, f64 in kernels.items():
            assert f64 == 0, f"{graph}/{kernel}: {f64} float64 instructions in its PTX"
