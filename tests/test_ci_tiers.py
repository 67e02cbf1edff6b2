"""In CI (CI=true) the Graphviz, MPI and PTX tiers must run: tests/conftest.py turns their
skips into failures that say what to install. Elsewhere they stay skips."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SKIPPING_TESTS = '''
import pytest

def test_graphviz_tier():
    pytest.skip("Graphviz `dot` not installed")

def test_mpi_tier():
    pytest.skip("mpirun not found (install OpenMPI: apt-get install openmpi-bin)")

def test_ptx_tier():
    pytest.skip("NVVM cannot be found: the PTX tier needs the CUDA compiler library")

def test_gpu_tier():
    pytest.skip("needs a CUDA GPU with NUMBA_ENABLE_CUDASIM=0")

def test_other_skip():
    pytest.skip("root can write a read-only directory")
'''


def _run(tmp_path, ci):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_tiers.py").write_text(SKIPPING_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfs", str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    return done.stdout


def test_in_ci_a_skipped_required_tier_fails_and_says_why(tmp_path):
    out = _run(tmp_path, ci=True)
    assert "3 failed, 2 skipped" in out, out
    assert "the Graphviz tier must run in CI" in out
    assert "the MPI tier must run in CI" in out and "apt-get install openmpi-bin" in out
    assert "the PTX tier must run in CI" in out


def test_outside_ci_they_are_skips(tmp_path):
    out = _run(tmp_path, ci=False)
    assert "5 skipped" in out, out
