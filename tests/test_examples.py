"""The examples reproduce the lecture's published numbers."""
import os
import subprocess
import sys

import pytest

from helpers import EXAMPLES, load_example


@pytest.fixture(scope="module")
def backprop():
    return load_example("backprop_step_by_step")


def test_backprop_forward_values(backprop):
    forward, _, _ = backprop.backprop_step()
    published = {"net_h1": 0.3775, "out_h1": 0.593269992, "out_h2": 0.596884378,
                 "net_o1": 1.105905967, "out_o1": 0.75136507, "out_o2": 0.772928465,
                 "E_o1": 0.274811083, "E_o2": 0.023560026, "E_total": 0.298371109}
    for name, value in published.items():
        assert forward[name] == pytest.approx(value, abs=1e-6), name


def test_backprop_gradients(backprop):
    _, gradients, _ = backprop.backprop_step()
    published = {"out_o1": 0.74136507, "net_o1": 0.138498562, "w5": 0.082167041,
                 "out_h1": 0.036350306, "net_h1": 0.008771354, "w1": 0.000438568}
    for name, value in published.items():
        assert gradients[name] == pytest.approx(value, abs=1e-6), name


def test_backprop_weights_after_one_step(backprop):
    _, _, new_weights = backprop.backprop_step()
    published = {"w1": 0.149780716, "w2": 0.19956143, "w3": 0.24975114, "w4": 0.29950229,
                 "w5": 0.35891648, "w6": 0.408666186, "w7": 0.511301270, "w8": 0.561370121}
    assert set(new_weights) == set(published)
    for name, value in published.items():
        assert new_weights[name] == pytest.approx(value, abs=1e-6), name


def test_lecture_graph_parameter_gradients(backprop):
    result = backprop.lecture_graph_gradients(x=(1.0, 2.0, 2.0), targets=(17.0, 10.0))
    assert (result["f1"], result["f2"], result["E"]) == (18.0, 8.0, 2.5)
    # dE/dp1 = (f1 - t1) x2 = 1 * 2;  dE/dp2 = (f1 - t1) x3 + (f2 - t2) x3 = 2 - 4
    assert result["dE/dp1"] == pytest.approx(2.0, abs=1e-12)
    assert result["dE/dp2"] == pytest.approx(-2.0, abs=1e-12)
    assert result["dE/dp1"] == pytest.approx(result["hand dE/dp1"], abs=1e-12)
    assert result["dE/dp2"] == pytest.approx(result["hand dE/dp2"], abs=1e-12)
    assert result["nodes computing p2*x3"] == 1
    other = backprop.lecture_graph_gradients(x=(0.5, -1.0, 3.0), targets=(1.0, 2.0),
                                             p=(2.0, -1.5))
    assert other["dE/dp1"] == pytest.approx(other["hand dE/dp1"], abs=1e-12)
    assert other["dE/dp2"] == pytest.approx(other["hand dE/dp2"], abs=1e-12)


def test_backprop_example_prints_the_hand_computation():
    root = os.path.dirname(EXAMPLES)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "backprop_step_by_step.py")],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "E_total      = E_o1 + E_o2" in run.stdout
    assert "= 0.298371109" in run.stdout
    assert "dE/dw5       = dE/dnet_o1 * out_h1                    = 0.082167041" in run.stdout
    assert "= 0.358916480" in run.stdout and "= 0.149780716" in run.stdout
    assert run.stdout.count("(agrees)") == 2
