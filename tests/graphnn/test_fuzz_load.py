"""gn.load against mutated files: random small graphs (elementwise, reductions, matmul,
layout ops, conv2d, pooling and their gradients) are saved, their JSON and arrays mutated,
and loaded. gn.load must raise a gn.GraphError, or give a graph whose cpu results equal the
numpy back end's; never another exception, never a crash.

The examples run in a child process (tests/graphnn/load_fuzzer.py) so that a segfault fails
the test with the seed that caused it. `make test` runs min(GRAPHNN_FUZZ_EXAMPLES, 50)
seeds, `make fuzz` GRAPHNN_FUZZ_EXAMPLES (2000).
"""
import os
import subprocess
import sys

import pytest

EXAMPLES = int(os.environ.get("GRAPHNN_FUZZ_EXAMPLES", "200"))
LOAD_EXAMPLES = EXAMPLES if EXAMPLES >= 1000 else min(EXAMPLES, 50)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_fuzzer(first, last):
    """Run seeds first..last-1 in a child process; returns (returncode, stdout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, os.path.join(HERE, "load_fuzzer.py"), str(first),
                          str(last)], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=3600)
    return out.returncode, out.stdout + out.stderr


def last_seed(output):
    started = [line.split()[1] for line in output.splitlines() if line.startswith("seed ")]
    return started[-1] if started else "?"


def failure(returncode, output):
    """What went wrong in a child process that ran the fuzzer, naming the seed it was on
    and how to replay it; None when it finished."""
    if returncode == 0:
        return None
    seed = last_seed(output)
    how = f"signal {-returncode}" if returncode < 0 else f"status {returncode}"
    return (f"the fuzzer stopped with {how} at seed {seed}; replay it with\n"
            f"  PYTHONPATH=. {sys.executable} tests/graphnn/load_fuzzer.py {seed}\n"
            f"{output[-5000:]}")


def test_fuzz_load_refuses_or_matches_numpy():
    returncode, output = run_fuzzer(0, LOAD_EXAMPLES)
    message = failure(returncode, output)
    if message:
        pytest.fail(message)
    outcomes = [line.split()[2] for line in output.splitlines() if line.startswith("ok ")]
    assert len(outcomes) == LOAD_EXAMPLES
    # the mutations leave some files loadable and make others refused: both paths are tested
    assert outcomes.count("loaded") >= LOAD_EXAMPLES // 10, outcomes
    assert outcomes.count("refused") >= LOAD_EXAMPLES // 3, outcomes


def test_fuzz_load_reports_a_crash_with_its_seed():
    """The harness: a child process that dies of a signal is reported with its seed."""
    script = ("import os, signal\nprint('seed 40\\nok 40 loaded\\nseed 41', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGSEGV)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    message = failure(out.returncode, out.stdout)
    assert message.startswith("the fuzzer stopped with signal 11 at seed 41;")
    assert "load_fuzzer.py 41" in message
    assert failure(0, "seed 1\nok 1 refused") is None
