"""graphnn bench FILE.py (graphnn.tools.bench_model): the user's own model, graph vs eager."""
import subprocess
import sys
import textwrap

import pytest

import graphnn as gn

MODEL = textwrap.dedent('''
    import numpy as np
    import graphnn as gn
    from graphnn.nn import Dense, Sequential

    OFFSET = {offset}

    def bench_model():
        rng = np.random.default_rng(0)
        X = rng.standard_normal((64, 5)).astype(np.float32)
        Y = rng.integers(0, 3, 64)
        model = Sequential([Dense(8, "tanh"), Dense(3)])

        def loss(x, y):
            value = gn.softmax_cross_entropy(model(x), y)
            # a model that computes something else eagerly than as a graph
            return value + OFFSET if not isinstance(x, gn.Node) else value

        def batches():
            for i in range(0, 64, 16):
                yield {{"x": X[i:i + 16], "y": Y[i:i + 16]}}

        return {{"loss": loss, "optimizer": gn.optim.Adam(0.01), "batches": batches}}
''')


def _write(tmp_path, offset):
    path = tmp_path / f"model_{offset}.py".replace(".", "_", 1)
    path.write_text(MODEL.format(offset=offset))
    return str(path)


def test_compare_runs_eager_and_graph_and_reports(tmp_path):
    lines = []
    plot = tmp_path / "out.png"
    result = gn.bench.compare(_write(tmp_path, 0), modes=["eager", "numpy"], repeat=20,
                              budget=2.0, profile=True, plot=str(plot), log=lines.append)
    text = "\n".join(lines)
    assert "| eager |" in text and "| numpy |" in text and "BLAS threads" in text
    assert "dispatch" in text  # the eager profile
    modes = result["modes"]
    assert modes["numpy"]["agrees"] and modes["numpy"]["losses"] == pytest.approx(
        modes["eager"]["losses"], rel=1e-5)
    assert modes["numpy"]["ratio_q1"] <= modes["numpy"]["ratio"] <= modes["numpy"]["ratio_q3"]
    assert plot.stat().st_size > 10_000
    assert result["environment"]["blas_threads"] in (1, "unknown (no BLAS)") or \
        isinstance(result["environment"]["blas_threads"], (int, str))


def test_disagreeing_modes_exit_with_code_1(tmp_path, capsys):
    from graphnn.tools import bench
    code = bench.main([_write(tmp_path, 0.5), "--modes", "eager,numpy", "--budget", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "do not agree" in err and "numpy differs from eager from step 1" in err


def test_missing_bench_model_is_explained(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("def build():\n    pass\n")
    with pytest.raises(gn.GraphError, match="defines no function bench_model"):
        gn.bench.load(str(path))


def test_graphnn_import_does_not_import_the_bench_tools():
    code = ("import sys, graphnn; assert 'graphnn.tools.bench_model' not in sys.modules; "
            "import graphnn as gn; gn.bench.compare; "
            "assert 'graphnn.tools.bench_model' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_note_says_how_much():
    from graphnn.tools.bench_model import load_note
    assert load_note(cores=2, load=0.5) is None
    note = load_note(cores=2, load=5.0)
    assert "3.0x" in note and "load average 5.00" in note
