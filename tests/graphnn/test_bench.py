"""The benchmark harness's logic on tiny workloads: cross-check, JSON schema, plot, options.
No test here asserts a timing (the cores a step used, CPU time over wall time, are
bounded from above)."""
import copy
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from graphnn.tools import bench


@pytest.fixture
def tiny(monkeypatch):
    """A 3-4-2 MLP train step and a small elementwise chain, registered as workloads."""
    monkeypatch.setitem(bench.WORKLOADS, "tiny", lambda: bench.MLP(
        "tiny", [3, 4, 2], "tanh", "sce", 5))
    monkeypatch.setitem(bench.WORKLOADS, "tiny-eltwise", lambda: bench.Eltwise(
        "tiny-eltwise", bench._eltwise_chain, "sigmoid(x)*tanh(x) + x*x - 0.5*x", n=64))
    return "tiny"


def _quiet(*args, **kwargs):
    pass


def _run(workloads, modes):
    return bench.run(workloads, modes, repeat=3, budget=1.0, warmup=1,
                     subprocess_info=False, log=_quiet)


def _wrong_loss(model):
    """The eager step with its loss off by 0.01: the first-step check must catch it."""
    runner = bench.MODE_BUILDERS["eager"](model)
    return bench.Runner(lambda: np.asarray(runner.step()) + 0.01)


def _wrong_update(model):
    """The eager step with 3x the learning rate: right first loss, wrong second one."""
    saved, model.lr = model.lr, 3 * model.lr
    try:
        return bench.MODE_BUILDERS["eager"](model)
    finally:
        model.lr = saved


def test_modes_agree_and_schema_holds(tiny):
    result = _run([tiny, "tiny-eltwise"], ["eager", "numpy"])
    assert bench.check_schema(result)
    json.loads(json.dumps(result))  # plain JSON types only
    row = result["workloads"][0]
    assert row["reference_mode"] == "eager" and row["train"] is True
    for mode in ("eager", "numpy"):
        r = row["modes"][mode]
        assert r["status"] == "ok" and r["agrees"] is True
        assert r["first_value"] != r["second_value"]  # the update changed the loss
        assert r["samples"] == row["rounds"] >= 1
        assert r["loop_median_s"] > 0 and r["loop_speedup_vs_eager"] > 0
    assert row["loop_block"] == bench.LOOP_BLOCK and row["loop_rounds"] >= 3
    assert row["modes"]["eager"]["loop_speedup_vs_eager"] == 1.0
    assert "in a training loop (10 steps back to back" in bench.format_row(row)
    assert "cpu in a training loop" in bench.format_table(result)
    assert row["modes"]["eager"]["first_value"] == pytest.approx(
        row["modes"]["numpy"]["first_value"], rel=1e-5)
    assert "matmuls only" in row["references"]
    elt = result["workloads"][1]
    assert elt["train"] is False and "np.copyto" in elt["references"]
    assert {"share_of_copyto", "GBps"} <= set(elt["modes"]["numpy"])
    assert elt["bandwidth"]["bytes_moved"] == 2 * 64 * 4
    # each mode's cores: its process CPU time over wall time (every mode here: one thread)
    for r in (*row["modes"].values(), *elt["modes"].values()):
        assert 0 < r["cores_used"] < 1.5


JAX_CORES = """
import os, time
import graphnn.tools.bench as bench
bench._start_jax(1)
import jax, jax.numpy as jnp
assert os.sched_getaffinity(0) == AFFINITY, os.sched_getaffinity(0)  # restored
x = jnp.ones(1 << 22)
f = jax.jit(lambda v: jnp.tanh(v) * 2.0 + v)
f(x).block_until_ready()
c0, w0 = time.process_time(), time.perf_counter()
for _ in range(40):
    f(x).block_until_ready()
print((time.process_time() - c0) / (time.perf_counter() - w0))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core")
def test_jax_starts_on_the_bench_thread_count():
    # XLA_FLAGS alone left XLA's loop pool at every core (an eltwise step on 1.8 cores)
    script = JAX_CORES.replace("AFFINITY", repr(os.sched_getaffinity(0)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 1.2


def test_a_wrong_loss_is_flagged(tiny, monkeypatch):
    monkeypatch.setitem(bench.MODE_BUILDERS, "wrong",
                        _wrong_loss)
    row = _run([tiny], ["eager", "numpy", "wrong"])["workloads"][0]
    assert row["modes"]["numpy"]["agrees"] is True
    assert row["modes"]["wrong"]["agrees"] is False
    assert "DIFFERS" in bench.format_row(row)


def test_a_wrong_update_is_flagged_by_the_second_step(tiny, monkeypatch):
    monkeypatch.setitem(bench.MODE_BUILDERS, "wrong-update",
                        _wrong_update)
    row = _run([tiny], ["eager", "wrong-update"])["workloads"][0]
    wrong = row["modes"]["wrong-update"]
    assert wrong["first_value"] == pytest.approx(row["modes"]["eager"]["first_value"])
    assert wrong["agrees"] is False


def test_main_returns_1_when_a_mode_differs(tiny, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(bench.MODE_BUILDERS, "wrong",
                        _wrong_loss)
    code = bench.main(["--quick", "--workloads", tiny, "--modes", "eager,wrong",
                       "--cache-dir", str(tmp_path)])
    assert code == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_skipped_and_failed_modes_are_listed_not_fatal(tiny, monkeypatch):
    def skip(model):
        raise bench.Skip("not installed")

    def fail(model):
        raise RuntimeError("broken peer")
    monkeypatch.setitem(bench.MODE_BUILDERS, "absent", skip)
    monkeypatch.setitem(bench.MODE_BUILDERS, "broken", fail)
    result = _run([tiny], ["eager", "absent", "broken"])
    bench.check_schema(result)
    modes = result["workloads"][0]["modes"]
    assert modes["absent"] == {"status": "skipped", "reason": "not installed"}
    assert modes["broken"]["status"] == "failed" and "broken peer" in modes["broken"]["reason"]
    assert "absent: skipped (not installed)" in bench.format_table(result)


def test_check_schema_rejects_broken_documents(tiny):
    result = _run([tiny], ["eager"])
    for breaking in (lambda r: r.pop("schema"),
                     lambda r: r.__setitem__("schema", "other/9"),
                     lambda r: r["workloads"][0]["modes"]["eager"].pop("median_s"),
                     lambda r: r["workloads"][0]["modes"]["eager"].__setitem__("agrees", "yes"),
                     lambda r: r["workloads"][0]["modes"]["eager"].__setitem__("status", "?"),
                     lambda r: r["workloads"][0].__setitem__("reference_mode", "nothing"),
                     lambda r: r["workloads"][0]["references"]["matmuls only"].pop(
                         "median_s")):
        broken = copy.deepcopy(result)
        breaking(broken)
        with pytest.raises(ValueError):
            bench.check_schema(broken)


def test_json_and_plot_files_are_written(tiny, tmp_path, capsys):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    code = bench.main(["--quick", "--workloads", f"{tiny},tiny-eltwise", "--modes",
                       "eager,numpy", "--json", str(out_json), "--plot", str(out_png),
                       "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads(out_json.read_text())
    assert bench.check_schema(result)
    assert [r["workload"] for r in result["workloads"]] == [tiny, "tiny-eltwise"]
    assert result["options"]["new_process"] is False
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| workload | eager | numpy |" in printed


def test_cpu_mode_reports_its_compile(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    row = _run([tiny], ["eager", "cpu"])["workloads"][0]
    cpu = row["modes"]["cpu"]
    assert cpu["agrees"] is True
    assert cpu["compile"]["cache_hit"] is False and cpu["compile"]["kernels"] > 0
    assert "compile cpu: first build + call" in bench.format_row(row)


def test_quick_options():
    args = bench.parse_args(["--quick"])
    assert args.workload_list == list(bench.DEFAULT_WORKLOADS)
    assert {"cnn-digits", "rnn", "eltwise", "mlp-medium-infer"} <= set(args.workload_list)
    assert args.repeat == 10 and args.budget == 1.0 and args.new_process is False
    full = bench.parse_args(["--workloads", "xor,rnn", "--modes", "eager,cpu", "--repeat", "7",
                             "--threads", "1"])
    assert full.workload_list == ["xor", "rnn"] and full.mode_list == ["eager", "cpu"]
    assert full.repeat == 7 and full.budget == 20.0 and full.new_process is True
    assert full.threads == 1
    assert bench.parse_args(["--no-new-process"]).new_process is False


@pytest.mark.parametrize("argv, word", [(["--workloads", "xor,resnet"], "resnet"),
                                        (["--modes", "eager,tpu"], "tpu")])
def test_unknown_workload_or_mode_is_an_error(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert word in capsys.readouterr().err


def test_peers_share_the_model_definition():
    """Peers start from copies of the same weights; a missing one is skipped, not an error."""
    model = bench.WORKLOADS["rnn"]()
    for mode in ("torch", "jax"):
        try:
            runner = bench.MODE_BUILDERS[mode](model)
        except bench.Skip as exc:
            assert str(exc) == "not installed"
            continue
        eager = bench.MODE_BUILDERS["eager"](model)
        np.testing.assert_allclose(runner.value(), eager.value(), rtol=1e-4)


def test_new_process_reports_load_time_and_memory():
    info = bench.measure_in_new_process("xor", "eager", steps=2)
    assert "error" not in info, info
    assert {"numba_import_s", "build_s", "first_call_s", "warm_total_s", "peak_MB",
            "baseline_MB", "step_transient_MB"} <= set(info)
    assert info["cache_hit"] is None and info["baseline_MB"] > 0


def test_scale_workloads_agree_across_modes_and_report_held_results(monkeypatch):
    """The compile-at-scale models (residual stacks) on tiny shapes: eager, the numpy back
    end and the cpu library mode agree; the eltwise row times held and dropped results."""
    monkeypatch.setitem(bench.WORKLOADS, "tiny-resmlp",
                        lambda: bench.ResidualMLP(2, width=8, batch=4))
    monkeypatch.setitem(bench.WORKLOADS, "tiny-resconv",
                        lambda: bench.ResidualCNN(2, size=4, channels=2, batch=2))
    monkeypatch.setitem(bench.WORKLOADS, "tiny-eltwise", lambda: bench.Eltwise(
        "tiny-eltwise", bench._eltwise_chain, "sigmoid(x)*tanh(x) + x*x - 0.5*x", n=64))
    result = _run(["tiny-resmlp", "tiny-resconv"], ["eager", "numpy", "cpu-library"])
    assert bench.check_schema(result)
    for row in result["workloads"]:
        for mode, r in row["modes"].items():
            assert r["status"] == "ok" and r["agrees"], (row["workload"], mode, r)
        assert row["modes"]["cpu-library"]["compile"]["mode"] == "library"
    row = _run(["tiny-eltwise"], ["cpu"])["workloads"][0]
    held = row["held_results"]
    assert held["held_s"] > 0 and held["held_two_s"] > 0 and held["dropped_s"] > 0
    assert "out = f(x=x)" in bench.format_row(row)
    assert bench.WORKLOADS["resmlp-1000"]().blocks == 1000
    assert "resconv-10" not in bench.DEFAULT_WORKLOADS


def test_the_mnist_cnn_workload_computes_the_same_loss_in_every_mode():
    """cnn-mnist: valid 3x3 convolutions 28 -> 26 -> 24, pool to 12, dense 9216 -> 128 -> 10;
    eager, the numpy back end (and PyTorch, when installed) give the first step's loss."""
    model = bench.WORKLOADS["cnn-mnist"]()
    assert [p.shape for _, p in model.param_inits] == [
        (3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (9216, 128), (128,), (128, 10), (10,)]
    eager = bench.MODE_BUILDERS["eager"](model).value()
    assert np.isfinite(eager) and 1.5 < float(eager) < 4.0  # about log(10) at the start
    np.testing.assert_allclose(bench.MODE_BUILDERS["numpy"](model).value(), eager, rtol=1e-5)
    try:
        torch = bench.MODE_BUILDERS["torch"](model)
    except bench.Skip:
        return
    np.testing.assert_allclose(torch.value(), eager, rtol=1e-4)


@pytest.mark.parametrize("name", ["resmlp-100", "resconv-100"])
def test_deep_stacks_take_steps_divided_by_their_depth(name):
    # at SGD's 0.1 a deep residual stack's loss grew after one step (1000 blocks: to 6e6,
    # or NaN): each block's update adds to the residual sum
    model = bench.WORKLOADS[name]()
    assert model.lr == pytest.approx(bench.LR / 100)
    runner = bench.MODE_BUILDERS["numpy"](model)
    first, second = float(runner.value()), float(runner.value())
    assert np.isfinite(second) and second < first


def test_onnx_workloads_check_the_file_and_compare_with_onnxruntime_when_installed():
    pytest.importorskip("onnx")
    result = _run(["onnx-squeezenet"], ["eager", "numpy", "cpu", "torch", "onnxruntime"])
    bench.check_schema(result)
    (row,) = result["workloads"]
    modes = row["modes"]
    assert modes["eager"]["status"] == "skipped" and "no eager form" in modes["eager"]["reason"]
    assert modes["numpy"]["status"] == "skipped" and modes["torch"]["status"] == "skipped"
    assert modes["cpu"]["status"] == "ok" and modes["cpu"]["agrees"]
    assert row["reference_mode"] == "cpu"
    assert modes["cpu"]["max_abs_diff_vs_file"] < 1e-3
    text = bench.format_row(row)
    assert "largest difference from the file's reference output: cpu" in text
    if importlib.util.find_spec("onnxruntime") is not None:
        assert modes["onnxruntime"]["status"] == "ok" and modes["onnxruntime"]["agrees"]
        assert modes["onnxruntime"]["max_abs_diff_vs_file"] < 1e-3
        assert modes["cpu"]["time_vs_onnxruntime"] > 0
        assert "time / onnxruntime's (median of per-round ratios): cpu " in text
    else:
        assert modes["onnxruntime"] == {"status": "skipped", "reason": "not installed"}


def test_onnx_workloads_are_named_together_and_need_the_onnx_package(monkeypatch):
    args = bench.parse_args(["--workloads", "xor,onnx", "--modes", "cpu,onnxruntime"])
    assert args.workload_list == ["xor"] + list(bench.ONNX_WORKLOADS)
    assert len(bench.ONNX_WORKLOADS) == 9
    assert "onnxruntime" in bench.DEFAULT_MODES
    # onnxruntime only runs ONNX files
    row = _run(["xor"], ["onnxruntime"])["workloads"][0]
    assert row["modes"]["onnxruntime"] == {"status": "skipped",
                                           "reason": "runs the ONNX workloads only"}
    real = importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    row = _run(["onnx-resnet50"], ["cpu"])["workloads"][0]
    assert row["modes"]["cpu"]["status"] == "skipped"
    assert "onnx package is not installed" in row["modes"]["cpu"]["reason"]


def test_torchvision_workloads_need_torchvision_and_compare_with_pytorch(monkeypatch,
                                                                          tmp_path):
    args = bench.parse_args(["--workloads", "torchvision", "--modes", "cpu"])
    assert args.workload_list == list(bench.TORCHVISION_WORKLOADS)
    assert "tv-densenet121" in args.workload_list and "tv-vit_b_16" in args.workload_list
    from graphnn.tools import torchvision_models
    installed = torchvision_models.available() and importlib.util.find_spec("onnx") is not None
    with monkeypatch.context() as m:
        m.setattr(torchvision_models, "available", lambda: False)
        row = _run(["tv-squeezenet1_1"], ["cpu", "torch"])["workloads"][0]
    for mode in ("cpu", "torch"):  # (skipped, not failed, without torchvision)
        assert row["modes"][mode]["status"] == "skipped"
        assert "needs torch, torchvision and onnx" in row["modes"][mode]["reason"]
    if not installed:
        return
    monkeypatch.setattr(torchvision_models, "case", lambda arch, d=None, case=torchvision_models
                        .case: case(arch, str(tmp_path)))
    result = _run(["tv-squeezenet1_1"], ["eager", "cpu", "torch", "onnxruntime"])
    bench.check_schema(result)
    modes = result["workloads"][0]["modes"]
    assert modes["eager"]["status"] == "skipped"
    assert modes["cpu"]["status"] == "ok" and modes["torch"]["status"] == "ok"
    assert modes["cpu"]["agrees"] and modes["torch"]["agrees"]
    # the reference is PyTorch's own output: torch matches it exactly, graphnn closely
    assert modes["torch"]["max_abs_diff_vs_file"] == 0
    assert 0 < modes["cpu"]["max_abs_diff_vs_file"] < 1e-4
    assert len(list(tmp_path.glob("squeezenet1_1-*.onnx"))) == 1


def test_the_scale_table_compares_depths_of_one_family():
    """format_scale_table: one row per family measured at two depths or more, with the
    deepest against the shallowest and the time each block adds (from the cold compiles)."""
    def row(name, blocks, cold, kernels, rss):
        return {"workload": name, "compile_at_scale": {
            "blocks": blocks, "cold_s": cold, "kernels_compiled": kernels, "peak_rss_MB": rss}}
    result = {"workloads": [row("resmlp-10", 10, 1.0, 12, 180.0),
                            row("resmlp-1000", 1000, 1.99, 12, 281.0),
                            row("resconv-10", 10, 2.5, 15, 200.0),  # (one depth: no row)
                            {"workload": "xor", "compile_at_scale": None}]}
    table = bench.format_scale_table(result)
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].startswith("| stack |")
    assert lines[2] == ("| resmlp | 10: 1.00 s, 1000: 1.99 s | 1.99x | 1.00 ms | "
                        "12 at every depth | 281 MB |")
    result["workloads"][1]["compile_at_scale"]["kernels_compiled"] = 13
    assert "10: 12, 1000: 13" in bench.format_scale_table(result)
    assert bench.format_scale_table({"workloads": result["workloads"][2:]}) == ""


@pytest.mark.parametrize("loop, repeated", [("resmlp-10", "resmlp-repeat-10"),
                                            ("resconv-10", "resconv-repeat-10"),
                                            ("rnn", "rnn-repeat-10"),
                                            ("lstm-10", "lstm-repeat-10")])
def test_the_repeated_workloads_are_their_loops_declared_with_gn_repeat(loop, repeated):
    # the same starting weights and the same numbers, step after step (numpy back end)
    a = bench.MODE_BUILDERS["numpy"](bench.WORKLOADS[loop]())
    b = bench.MODE_BUILDERS["numpy"](bench.WORKLOADS[repeated]())
    first = [float(a.value()) for _ in range(2)]
    second = [float(b.value()) for _ in range(2)]
    assert first[1] != first[0]
    np.testing.assert_allclose(second, first, rtol=2e-6)
    graph = b.info["function"].graph
    assert [n.op for n in graph.nodes].count("repeat") == 1
