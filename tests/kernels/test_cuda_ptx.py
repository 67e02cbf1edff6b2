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


def _ptx_report():
    proc = run_without_simulator("import ptx_check; ptx_check.main()")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the PTX check crashed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1])
    if "skip" in result:
        print(f"PTX tier skipped: {result['skip']}")
        pytest.skip(result["skip"])
    return result


def test_every_kernel_compiles_to_ptx_with_the_instructions_it_should_use():
    """One compile of every kernel of the graphs in ptx_check.py (it takes a while), then:
    no float64 instruction in float32 graphs; every reduction and row kernel reduces with
    warp shuffles; every float32 matmul is register-blocked (at least 4 FMAs per
    shared-memory load in its inner loop); `x ** c` for c = 0.5, 2, -1, -0.5 compiles to
    exactly the instructions of sqrt(x), square(x), 1 / x, 1 / sqrt(x) (no powf)."""
    result = _ptx_report()
    graphs = result["graphs"]
    assert set(graphs) == set(result["expected"])
    matmuls = 0
    for graph, kernels in graphs.items():
        assert kernels, graph
        if graph.endswith("float64"):
            assert sum(k["f64"] for k in kernels.values()) > 0, \
                "the check must see float64 where it is"
            continue
        for kernel, found in kernels.items():
            assert found["f64"] == 0, f"{graph}/{kernel}: {found['f64']} float64 instructions"
            if kernel.endswith(("_reduce", "_rows")):
                assert found["shfl"] >= 5, f"{graph}/{kernel}: no warp-shuffle reduction"
            if kernel.endswith("_matmul"):
                matmuls += 1
                fma, loads = found["inner_fma"], found["inner_shared_loads"]
                assert loads > 0 and fma >= 4 * loads, \
                    f"{graph}/{kernel}: {fma} FMAs for {loads} shared loads in the inner loop"
    assert matmuls >= 4
    control = result["powers"].pop("0.75")
    assert control[0] > control[1] + 50, f"a real power should cost a powf: {control}"
    for c, (power, reference) in result["powers"].items():
        assert power == reference, f"x ** {c}: {power} instructions, its reference {reference}"
