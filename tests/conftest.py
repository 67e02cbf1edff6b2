"""Test set-up: the CUDA simulator (no GPU here), one BLAS thread, a fixed kernel cache."""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GRAPHNN_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), ".graphnn-cache"))

import pytest  # noqa: E402

# In CI (CI=true) these tiers must run: a skip for want of their tools is a failure that
# says what to install. (The GPU tier needs hardware CI does not have; it stays a skip.)
REQUIRED_IN_CI = {
    "Graphviz": ("graphviz", "dot"),
    "MPI": ("mpirun", "mpi4py", "openmpi"),
    "PTX": ("nvvm", "ptx", "cuda compiler", "libnvvm"),
}


def _required_tier(reason):
    text = reason.lower()
    if "gpu is present" in text or "needs a cuda gpu" in text:
        return None
    for tier, words in REQUIRED_IN_CI.items():
        if any(word in text for word in words):
            return tier
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes") or not report.skipped:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    tier = _required_tier(reason)
    if tier is not None:
        report.outcome = "failed"
        report.longrepr = (f"the {tier} tier must run in CI (CI=true), but it was skipped: "
                           f"{reason}")
