"""Real models: ImageNet architectures imported from ONNX, against onnxruntime.

    python -m graphnn.tools.bench_onnx                         # all nine light models
    python -m graphnn.tools.bench_onnx --models squeezenet,resnet50 --repeat 20

The models are the "light" copies of ImageNet architectures that the onnx package ships
as test data (onnx/backend/test/data/light/light_<name>.onnx, with the reference output
light_<name>_output_0.pb), fed the input onnx's own backend test runner feeds them
(arange(n)/n in the input's shape, float32, batch 1).

For each model, with OPENBLAS_NUM_THREADS=1 (and onnxruntime on one intra-op thread):
  import   seconds of gn.onnx.load (in the first fresh process)
  cold     seconds of gn.compile + the first call, in a fresh process with an empty
           kernel cache (GRAPHNN_CACHE_DIR set to a new temporary directory)
  warm     the same in a second fresh process on the same cache (load, not compile)
  graphnn  median milliseconds of one batch-1 inference (after the first call)
  ort      onnxruntime's median, same input, one thread (skipped when not installed)
  ratio    graphnn / ort
  diff     max |graphnn - reference output| (and vs onnxruntime when installed)

Every measurement runs in a child process with a time limit (--timeout seconds per
process, default 900): a model that compiles longer, or runs out of memory, shows why
instead of stopping the table. Nothing here is a test: no target is asserted.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet",
          "squeezenet", "vgg19", "bvlc_alexnet", "zfnet512"]
TITLES = {"resnet50": "ResNet-50", "densenet121": "DenseNet-121",
          "inception_v1": "Inception v1", "inception_v2": "Inception v2",
          "shufflenet": "ShuffleNet", "squeezenet": "SqueezeNet", "vgg19": "VGG-19",
          "bvlc_alexnet": "AlexNet", "zfnet512": "ZFNet-512"}


def light_dir():
    import onnx
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light_case(name):
    """(path, input name, input array, reference output) of a light model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    path = os.path.join(light_dir(), f"light_{name}.onnx")
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                  for d in vi.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    x = (np.arange(n).reshape(shape) / n).astype(np.float32)
    ref = numpy_helper.to_array(onnx.load_tensor(
        os.path.join(light_dir(), f"light_{name}_output_0.pb")))
    return path, vi.name, x, ref


def _median_ms(fn, repeat, budget):
    times, start = [], time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return 1e3 * statistics.median(times), len(times)


# ---- what the child processes run ------------------------------------------------------

def child_graphnn(name, backend, repeat, budget, out_path):
    """Import, compile + first call, then time; write the output for the parent."""
    import numpy as np
    import graphnn as gn
    path, feed, x, ref = light_case(name)
    t = time.perf_counter()
    outputs, _ = gn.onnx.load(path)
    result = {"import_s": time.perf_counter() - t}
    t = time.perf_counter()
    f = gn.compile(outputs[0], backend=backend)
    y = f(**{feed: x})
    result["first_call_s"] = time.perf_counter() - t
    result["diff_ref"] = float(np.max(np.abs(y.reshape(ref.shape) - ref)))
    np.save(out_path, y)
    if repeat:
        result["median_ms"], result["runs"] = _median_ms(lambda: f(**{feed: x}), repeat,
                                                         budget)
    print("RESULT " + json.dumps(result), flush=True)


def child_onnxruntime(name, repeat, budget, out_path):
    import numpy as np
    import onnxruntime as ort
    path, feed, x, _ = light_case(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    t = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    result = {"load_s": time.perf_counter() - t}
    y = session.run(None, {feed: x})[0]
    np.save(out_path, y)
    result["median_ms"], result["runs"] = _median_ms(lambda: session.run(None, {feed: x}),
                                                     repeat, budget)
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(args, env, timeout):
    """Run this module as a child; its RESULT line, or {"error": why}."""
    cmd = [sys.executable, "-m", "graphnn.tools.bench_onnx", "--child"] + args
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            result["wall_s"] = time.perf_counter() - t
            return result
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    if proc.returncode < 0:
        tail = f"killed by signal {-proc.returncode} ({tail})"
    return {"error": tail}


def bench_model(name, backend, repeat, budget, timeout, keep_cache=None):
    import numpy as np
    cache = keep_cache or tempfile.mkdtemp(prefix=f"graphnn-bench-{name}-")
    work = tempfile.mkdtemp(prefix="graphnn-bench-out-")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", GRAPHNN_CACHE_DIR=cache)
    env.pop("OPENBLAS_CORETYPE", None)
    row = {"model": name, "backend": backend}
    try:
        out_g = os.path.join(work, "graphnn.npy")
        cold = _run_child(["graphnn", name, backend, str(repeat), str(budget), out_g], env,
                          timeout)
        row.update({k: cold.get(k) for k in ("import_s", "diff_ref", "median_ms", "error")})
        row["cold_s"] = cold.get("first_call_s")
        if "error" not in cold:
            warm = _run_child(["graphnn", name, backend, "0", "0",
                               os.path.join(work, "warm.npy")], env, timeout)
            row["warm_s"] = warm.get("first_call_s")
            if "error" in warm:
                row["error"] = "warm: " + warm["error"]
        try:
            import onnxruntime  # noqa: F401 - optional peer
        except ImportError:
            row["ort_ms"] = None
        else:
            out_o = os.path.join(work, "ort.npy")
            ort = _run_child(["ort", name, str(repeat), str(budget), out_o], env, timeout)
            row["ort_ms"] = ort.get("median_ms")
            if row.get("median_ms") and row["ort_ms"]:
                row["ratio"] = row["median_ms"] / row["ort_ms"]
            if os.path.exists(out_g) and os.path.exists(out_o):
                a, b = np.load(out_g), np.load(out_o)
                row["diff_ort"] = float(np.max(np.abs(a.reshape(b.shape) - b)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if keep_cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    return row


def _fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def table(rows):
    lines = ["| model | import (s) | cold compile + 1st call (s) | warm load + 1st call (s) "
             "| graphnn (ms) | onnxruntime (ms) | ratio | max abs diff vs reference "
             "(vs onnxruntime) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = _fmt(r.get("diff_ref"), ".1e")
        if r.get("diff_ort") is not None:
            diff += f" ({r['diff_ort']:.1e})"
        ratio = f"{r['ratio']:.1f}x" if r.get("ratio") else "–"
        cold = _fmt(r.get("cold_s"), ".1f")
        if r.get("error"):
            cold = f"{cold} ({r['error']})" if r.get("cold_s") else r["error"]
        lines.append(f"| {TITLES.get(r['model'], r['model'])} | {_fmt(r.get('import_s'), '.2f')}"
                     f" | {cold} | {_fmt(r.get('warm_s'), '.2f')} "
                     f"| {_fmt(r.get('median_ms'), '.1f')} | {_fmt(r.get('ort_ms'), '.1f')} "
                     f"| {ratio} | {diff} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        if argv[1] == "graphnn":
            name, backend, repeat, budget, out = argv[2:7]
            return child_graphnn(name, backend, int(repeat), float(budget), out)
        name, repeat, budget, out = argv[2:6]
        return child_onnxruntime(name, int(repeat), float(budget), out)
    parser = argparse.ArgumentParser(prog="python -m graphnn.tools.bench_onnx",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--backend", default="cpu", choices=["cpu", "numpy"])
    parser.add_argument("--repeat", type=int, default=30, help="timed inferences at most")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed inferences per model and system at most")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per child process (import + compile + timing)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed (pip install onnxruntime to compare)"
    import numpy
    import onnx
    print(f"graphnn ONNX models, backend {args.backend}, 1 thread each; python "
          f"{sys.version.split()[0]}, numpy {numpy.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort_version}; {os.cpu_count()} cpus", flush=True)
    rows = []
    for name in names:
        t = time.perf_counter()
        rows.append(bench_model(name, args.backend, args.repeat, args.budget, args.timeout))
        print(f"  {name}: {time.perf_counter() - t:.0f} s  {json.dumps(rows[-1])}",
              flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
