"""The onnx package's ImageNet test models, batch-1 inference: graphnn (cpu back end) and
onnxruntime in ONE process, timed interleaved (graphnn, onnxruntime, graphnn, ...), one
thread each (OPENBLAS_NUM_THREADS=1, onnxruntime's intra-op threads 1).

graphnn.tools.bench_onnx measures each system in its own process, one after the other;
on a shared machine the load changes between them. Here both run in the same rounds,
so drift hits both alike, and each call's CPU time on its thread (time.thread_time: both
run on the calling thread) is recorded beside its wall-clock time; waiting for a core
does not count in it.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/onnx_interleaved.py --models resnet50,vgg19 --rounds 20

Prints one line per model: cold compile + first call (an empty GRAPHNN_CACHE_DIR), the
medians (and min-max) of wall and CPU time of both, the ratios, and the largest
difference between the two outputs.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GRAPHNN_CACHE_DIR", tempfile.mkdtemp(prefix="graphnn-onnx-bench-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.tools.bench_onnx import MODELS, light_case  # noqa: E402


def varied_weights(path, seed=0):
    """A copy of a light model (a temporary file) whose weights differ element by element.
    The light models build each weight with ConstantOfShape, one value repeated, so equal
    shapes give equal weights, which graphnn shares (one constant) and onnxruntime may
    not; here each such weight is an initializer of its value times uniform(0.9, 1.1)
    (signs kept: batch-norm variances stay positive), so both read as many distinct
    weights as a trained network has."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else \
                np.zeros(1, np.float32)
            array = (np.broadcast_to(value.reshape(-1)[0], shape) *
                     rng.uniform(0.9, 1.1, shape)).astype(value.dtype)
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    fd, out = tempfile.mkstemp(suffix=".onnx", prefix=f"varied-{os.path.basename(path)}-")
    os.close(fd)
    onnx.save(model, out)
    return out


def measure(name, rounds, budget, off=None, varied=False, frozen=False):
    import onnxruntime as ort
    path, input_name, x, _ = light_case(name)
    if varied:
        path = varied_weights(path)
    outputs, _ = gn.onnx.load(path, frozen=frozen)
    t = time.perf_counter()
    f = gn.compile(outputs[0], backend="cpu", progress=False)
    ours = f(**{input_name: x})
    cold = time.perf_counter() - t
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {input_name: x})[0]
    diff = float(np.abs(np.asarray(ours).reshape(theirs.shape) - theirs).max())
    systems = {"graphnn": lambda: f(**{input_name: x}),
               "ort": lambda: session.run(None, {input_name: x})}
    if off:  # the same model compiled with an optional pass off, in the same rounds
        g = gn.compile(outputs[0], backend="cpu", progress=False, passes={off: False})
        systems["graphnn -" + off] = lambda: g(**{input_name: x})
    for run in systems.values():  # warm-up
        run()
    wall = {k: [] for k in systems}
    cpu = {k: [] for k in systems}
    start = time.perf_counter()
    for _ in range(rounds):
        for key, run in systems.items():
            c, t = time.thread_time(), time.perf_counter()
            run()
            wall[key].append(time.perf_counter() - t)
            cpu[key].append(time.thread_time() - c)
        if time.perf_counter() - start > budget and len(wall["ort"]) >= 5:
            break
    return cold, wall, cpu, diff


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per model")
    parser.add_argument("--off", default=None, metavar="PASS",
                        help="also time graphnn with this optional pass off (e.g. "
                             "packed_kernels), interleaved in the same rounds")
    parser.add_argument("--varied-weights", action="store_true",
                        help="every weight distinct (see varied_weights), not the light "
                             "models' repeated values")
    parser.add_argument("--frozen", action="store_true",
                        help="gn.onnx.load(..., frozen=True): initializers as constants")
    args = parser.parse_args()

    def ms(values):
        return (f"{1e3 * statistics.median(values):7.1f} "
                f"[{1e3 * min(values):.1f}-{1e3 * max(values):.1f}]")
    print(f"{'model':14s} {'cold s':>6s}  {'graphnn wall ms':>22s} {'ort wall ms':>22s} "
          f"{'ratio':>5s}  {'graphnn cpu ms':>22s} {'ort cpu ms':>22s} {'ratio':>5s}  diff")
    for name in args.models.split(","):
        cold, wall, cpu, diff = measure(name, args.rounds, args.budget, args.off,
                                          args.varied_weights, args.frozen)
        rw = statistics.median(wall["graphnn"]) / statistics.median(wall["ort"])
        rc = statistics.median(cpu["graphnn"]) / statistics.median(cpu["ort"])
        print(f"{name:14s} {cold:6.1f}  {ms(wall['graphnn']):>22s} {ms(wall['ort']):>22s} "
              f"{rw:5.2f}  {ms(cpu['graphnn']):>22s} {ms(cpu['ort']):>22s} {rc:5.2f}  "
              f"{diff:.1e}  ({len(wall['ort'])} rounds)", flush=True)
        if args.off:
            other = "graphnn -" + args.off
            print(f"{'  -' + args.off:14s} {'':6s}  {ms(wall[other]):>22s} {'':22s} "
                  f"{statistics.median(wall[other]) / statistics.median(wall['ort']):5.2f}  "
                  f"{ms(cpu[other]):>22s} {'':22s} "
                  f"{statistics.median(cpu[other]) / statistics.median(cpu['ort']):5.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
