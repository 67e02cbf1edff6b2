"""Every optimisation can be switched off (`gn.compile(..., passes={name: False})`, see
graphnn.passes.OPTIONAL_PASSES), and switching it off must not change a result: the
fuzzer's graphs (tests/graphnn/graph_fuzzer.py) run with each pass off, and with all of
them off, and must give what they give with every pass on (float64 at 1e-10 relative,
integers exactly). A wrong decision of an optimisation (a buffer reused in place while
another step still reads it, a fold that computes something else) then fails here instead
of passing on counts of buffers and steps.

The first tests check that each switch takes effect, so that a switch that did nothing
could not make the comparison pass vacuously.
"""
import os

import numpy as np
import pytest

import graph_fuzzer as F
import graphnn as gn
from graphnn.passes import CPU_ONLY_PASSES, OPTIONAL_PASSES
from helpers import BACKEND_OPTIONS

EXAMPLES = int(os.environ.get("GRAPHNN_FUZZ_EXAMPLES", "200"))
PASSES = list(OPTIONAL_PASSES)
CPU_PASSES = PASSES
CUDA_PASSES = [p for p in PASSES if p not in CPU_ONLY_PASSES]
# half of the fuzz seeds, each with one pass off in turn (every eighth: all of them off)
TOGGLE_SEEDS = [s for s in range(EXAMPLES) if s % 2 == 0]


def switched_off(seed):
    """The passes seed `seed` runs without: one in turn, or all of them."""
    k = (seed // 2) % (len(CPU_PASSES) + 1)
    return CPU_PASSES if k == len(CPU_PASSES) else [CPU_PASSES[k]]


@pytest.mark.parametrize("seed", TOGGLE_SEEDS,
                         ids=lambda s: f"seed={s}-off={'+'.join(switched_off(s))}")
def test_fuzz_graphs_give_the_same_results_with_a_pass_off(seed):
    fg = F.graph(seed)
    off = switched_off(seed)
    got = F.run(fg, "cpu", passes=dict.fromkeys(off, False), **F.cpu_options(seed))
    F.assert_same(fg, F.cpu_result(seed), got, f"cpu without {'+'.join(off)}")
    F.assert_same(fg, F.numpy_result(seed), got, f"cpu without {'+'.join(off)} vs numpy")


@pytest.mark.parametrize("seed", [3, 43], ids=lambda s: f"seed={s}")
def test_fuzz_graphs_give_the_same_results_on_cuda_with_every_pass_off(seed):
    fg = F.graph(seed)
    got = F.run(fg, "cuda", passes=dict.fromkeys(CUDA_PASSES, False),
                **BACKEND_OPTIONS["cuda"])
    F.assert_same(fg, F.numpy_result(seed), got, "cuda with every pass off")


# ---------------------------------------------------------------------------------------
# Each switch takes effect
# ---------------------------------------------------------------------------------------

def _sgd_graph():
    """A square temporary added to its own transpose, constants to fold and to simplify,
    a twin CSE finds after decomposition, and an SGD step on a matmul weight."""
    x = gn.input("x", (3, 3), dtype="float64")
    W = gn.param("W", np.arange(9.0).reshape(3, 3) / 10)
    h = gn.tanh(x @ W)
    folded = gn.const(np.arange(3.0)) * 2.0 + 1.0  # all constants: folded
    y = gn.square(h) + gn.transpose(gn.square(h)) + folded * 1.0
    loss = gn.mean(gn.softmax(y)) + gn.mean(gn.softmax(y, axis=1))
    updates = gn.optim.SGD(lr=0.1).updates(loss, [W])
    return [loss, y], updates, {"x": np.linspace(-1, 1, 9).reshape(3, 3)}, W


def _compiled(passes=None, backend="cpu"):
    outputs, updates, feeds, W = _sgd_graph()
    W.value = np.arange(9.0).reshape(3, 3) / 10
    return gn.compile(outputs, updates=updates, backend=backend, passes=passes,
                      **BACKEND_OPTIONS.get(backend, {})), feeds


def _temporaries(f):
    return {s.out.name for s in f.program.steps if s.out.role == "temp"}


def test_each_switch_changes_the_program():
    on, feeds = _compiled()
    report = dict(on.pass_report)
    for name in ("constant_folding", "simplification", "cse"):
        off, _ = _compiled({name: False})
        graph_pass = {"constant_folding": "fold_constants", "simplification": "simplify",
                      "cse": "common_subexpressions"}[name]
        assert graph_pass in report and graph_pass not in dict(off.pass_report), name
    folded_on = sum(n.op == "const" and n.shape == (3,) for n in on.optimized_graph.nodes)
    off, _ = _compiled({"constant_folding": False})
    assert sum(n.op == "mul" for n in off.optimized_graph.nodes) > \
        sum(n.op == "mul" for n in on.optimized_graph.nodes), "nothing was left unfolded"
    assert folded_on >= 1
    off, _ = _compiled({"fusion": False})
    assert len(off.program.steps) > len(on.program.steps) + 5
    assert not any("fused" in s.comment for s in off.program.steps)
    assert any("fused" in s.comment for s in on.program.steps)
    off, _ = _compiled({"memory_planning": False})
    steps_writing_temps = sum(s.out.role == "temp" for s in off.program.steps)
    assert len(_temporaries(off)) == steps_writing_temps  # no temporary is used twice
    assert len(_temporaries(on)) < sum(s.out.role == "temp" for s in on.program.steps)
    off, _ = _compiled({"update_in_place": False})
    assert not on.program.updates and off.program.updates  # copied at the end when off
    assert "accumulated into" in on.source and "accumulated into" not in off.source


def test_output_recycling_switch():
    """With recycling on, a result the caller dropped is written again by a later call;
    off, every call returns new arrays."""
    for recycling in (True, False):
        f, feeds = _compiled({"output_recycling": recycling})
        seen = set()
        reused = False
        for _ in range(4):
            loss, y = f(**feeds)
            reused |= y.__array_interface__["data"][0] in seen and recycling
            seen.add(y.__array_interface__["data"][0])
            assert f._recycling is recycling
            if not recycling:
                assert not any(f._returned)
            del loss, y
        assert reused is recycling


def test_switched_off_passes_give_the_same_numbers_on_the_sgd_graph():
    reference = None
    for backend, names in (("cpu", CPU_PASSES), ("cuda", CUDA_PASSES)):
        for off in [[]] + [[n] for n in names] + [names]:
            f, feeds = _compiled(dict.fromkeys(off, False), backend)
            results = [np.array(r) for r in f(**feeds)] + [np.array(r) for r in f(**feeds)]
            W = [p for p in f.state_nodes if p.name == "W"][0]
            results.append(np.array(W.value))
            if reference is None:
                reference = results
                continue
            for k, (e, g) in enumerate(zip(reference, results)):
                np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15,
                                           err_msg=f"{backend} without {off}: result {k}")


# ---------------------------------------------------------------------------------------
# The option itself
# ---------------------------------------------------------------------------------------

def test_an_unknown_pass_is_an_option_error_naming_the_valid_ones():
    x = gn.input("x", (2, 2))
    with pytest.raises(gn.OptionError, match=r"unknown pass 'fuse' for backend 'cpu'; its "
                                             r"passes are constant_folding, simplification, "
                                             r"cse, fusion, update_in_place, memory_planning, "
                                             r"output_recycling, packed_kernels, "
                                             r"concat_in_place, conv_epilogues "
                                             r"\(at .*test_pass_toggles"):
        gn.compile(gn.tanh(x), backend="cpu", passes={"fuse": False})
    with pytest.raises(gn.OptionError, match=r"unknown pass 'output_recycling' for backend "
                                             r"'cuda'; its passes are .*memory_planning \("):
        gn.compile(gn.tanh(x), backend="cuda", passes={"output_recycling": False},
                   **BACKEND_OPTIONS["cuda"])
    with pytest.raises(gn.OptionError, match=r"passes must be a dict \{pass name: True or "
                                             r"False\}, got list"):
        gn.compile(gn.tanh(x), backend="cpu", passes=["fusion"])
    with pytest.raises(gn.OptionError, match=r"passes\['fusion'\] must be True or False, "
                                             r"got 'no'"):
        gn.compile(gn.tanh(x), backend="cpu", passes={"fusion": "no"})
    with pytest.raises(gn.GraphError, match="unknown option 'passes' for backend 'numpy'"):
        gn.compile(gn.tanh(x), backend="numpy", passes={"fusion": False})


def test_every_optional_pass_is_described():
    assert set(OPTIONAL_PASSES) == {"constant_folding", "simplification", "cse", "fusion",
                                    "update_in_place", "memory_planning", "output_recycling",
                                    "packed_kernels", "concat_in_place", "conv_epilogues"}
    assert all(len(text) > 20 for text in OPTIONAL_PASSES.values())


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_an_update_read_before_an_old_value_is_not_written_in_place_too_early(backend):
    """The new value of W is computed (for an output) before a step that reads the old W:
    writing it into W at once would give that step the new value. Every pass setting must
    give numpy's numbers."""
    x = gn.input("x", (2, 2), dtype="float64")
    start = np.array([[1.0, -2.0], [0.5, 3.0]])
    W = gn.param("W", start.copy())
    new_W = W - 0.5 * gn.tanh(x @ W)
    outputs = [gn.sum(new_W), gn.exp(W) * 2.0]  # the old W, read after new_W exists
    X = np.array([[0.3, -0.1], [0.2, 0.4]])
    expected = None
    for where, passes in (("numpy", None), (backend, None),
                          (backend, {"update_in_place": False}),
                          (backend, {"memory_planning": False, "fusion": False})):
        W.value = start.copy()
        options = {} if where == "numpy" else {**BACKEND_OPTIONS.get(where, {}),
                                               "passes": passes}
        f = gn.compile(outputs, updates={W: new_W}, backend=where, **options)
        got = [np.array(r) for r in f(x=X)] + [np.array(W.value)]
        if expected is None:
            expected = got
            np.testing.assert_allclose(got[1], np.exp(start) * 2.0, rtol=1e-15)
            continue
        for k, (e, g) in enumerate(zip(expected, got)):
            np.testing.assert_allclose(g, e, rtol=1e-12, err_msg=f"{where} {passes}: {k}")
