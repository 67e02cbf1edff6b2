"""`python -m graphnn.tools.gpu_check`: the cuda back end's step on a real GPU, timed.

For each workload (bench's mlp-medium, cnn-mnist and eltwise by default) it compiles the
step with backend="cuda", puts the feeds on the device (device-resident: no host copy
per step), runs warm-up steps, then times steps with CUDA events, and prints one table:
milliseconds per step, kernel launches per step, the on-paper roofline time of the
workload (docs/BENCHMARKS.md, "GPU") and the three slowest kernels of one profiled step.
`make gpu-check` runs it after the GPU test tier.

    NUMBA_ENABLE_CUDASIM=0 python -m graphnn.tools.gpu_check --steps 50
    NUMBA_ENABLE_CUDASIM=1 python -m graphnn.tools.gpu_check --tiny   # the simulator
"""
import argparse
import sys
import time

import numpy as np

import graphnn as gn

from . import bench

# On-paper assumptions for an H200-class GPU (docs/BENCHMARKS.md, "GPU")
PEAK_FP32_FLOPS = 67e12        # FP32 on the CUDA cores (no tensor cores, no TF32)
PEAK_BYTES = 4.8e12            # HBM3e bandwidth, bytes/s


def _mlp_cost(sizes, batch):
    pairs = list(zip(sizes, sizes[1:]))
    forward = sum(2 * batch * a * b for a, b in pairs)
    grad_inputs = sum(2 * batch * a * b for a, b in pairs[1:])  # no dX for the first layer
    flops = 2 * forward + grad_inputs
    params = sum(a * b + b for a, b in pairs)
    acts = batch * sum(sizes)
    return flops, 4 * (4 * params + 3 * acts)  # weights read 2x, read+written by SGD


def _cnn_cost(batch):
    conv1 = 2 * batch * 26 * 26 * 32 * 9
    conv2 = 2 * batch * 24 * 24 * 64 * 9 * 32
    dense = 2 * batch * (9216 * 128 + 128 * 10)
    flops = (conv1 + conv2 + dense) + (conv1 + 2 * conv2 + 2 * dense)
    params = 9 * 32 + 32 + 9 * 32 * 64 + 64 + 9216 * 128 + 128 + 1280 + 10
    acts = batch * (784 + 26 * 26 * 32 + 24 * 24 * 64 + 9216 + 128 + 10)
    return flops, 4 * (4 * params + 3 * acts)


def workloads(tiny=False):
    """[(name, model, (flops, bytes) per step)]."""
    if tiny:
        return [("mlp-tiny", bench.MLP("mlp-tiny", [6, 5, 4, 3], "relu", "sce", 4),
                 _mlp_cost([6, 5, 4, 3], 4)),
                ("eltwise-tiny", bench.Eltwise("eltwise-tiny", bench._eltwise_chain,
                                               "eltwise", n=64), (64 * 20, 64 * 8))]
    return [("mlp-medium", bench.WORKLOADS["mlp-medium"](), _mlp_cost([784, 512, 256, 10], 256)),
            ("cnn-mnist", bench.WORKLOADS["cnn-mnist"](), _cnn_cost(64)),
            ("eltwise", bench.WORKLOADS["eltwise"](), (4 * 2 ** 20 * 20, 4 * 2 ** 20 * 8))]


def roofline_ms(flops, nbytes):
    return 1e3 * max(flops / PEAK_FP32_FLOPS, nbytes / PEAK_BYTES)


class _TimedKernel:
    """Stands in for a kernel of the generated module: records CUDA events around each
    launch, so one step's time per kernel can be read."""

    def __init__(self, cuda, kernel, name, log):
        self.cuda, self.kernel, self.name, self.log = cuda, kernel, name, log

    def __getitem__(self, config):
        launch = self.kernel[config]

        def run(*args):
            start, end = self.cuda.event(), self.cuda.event()
            start.record()
            launch(*args)
            end.record()
            self.log.append((self.name, start, end))
        return run


def check(model, steps, options):
    from numba import cuda
    feeds_in = {name: gn.input(name, shape, dtype=dtype)
                for name, (shape, dtype) in model.inputs.items()}
    params = [gn.param(f"{model.name}_{name}", value.copy())
              for name, value in model.param_inits]
    out = model.forward(bench.GraphnnOps, feeds_in["x"], params)
    started = time.perf_counter()
    if model.train:
        loss = model.loss(bench.GraphnnOps, out, feeds_in["y"])
        f = gn.compile(loss, updates=gn.optim.SGD(bench.LR).updates(loss, params),
                       backend="cuda", outputs_on="device", **options)
    else:
        f = gn.compile(out, backend="cuda", outputs_on="device", **options)
    build = time.perf_counter() - started
    feeds = {k: cuda.to_device(v) for k, v in model.feeds.items()}
    for _ in range(3):
        f(**feeds)
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(steps):
        f(**feeds)
    end.record()
    end.synchronize()
    per_step = start.elapsed_time(end) / steps
    # one profiled step: events around every launch
    log, module = [], f.module
    kernels = {name: getattr(module, name) for name in module.SIGNATURES}
    try:
        for name, kernel in kernels.items():
            setattr(module, name, _TimedKernel(cuda, kernel, name, log))
        f(**feeds)
        cuda.synchronize()
    finally:
        for name, kernel in kernels.items():
            setattr(module, name, kernel)
    times = {}
    for name, a, b in log:
        times[name] = times.get(name, 0.0) + a.elapsed_time(b)
    return {"ms": per_step, "launches": f.stats["launches_per_call"], "build_s": build,
            "kernels_compiled": f.stats["kernels_compiled"],
            "kernels_loaded": f.stats["kernels_loaded"],
            "profiled_launches": len(log), "kernel_ms": times}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per workload")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny workloads (for the CUDA simulator)")
    args = parser.parse_args(argv)
    from numba import cuda

    from ..backends.cuda import simulator_enabled
    if not cuda.is_available():
        print("gpu-check: no CUDA GPU (numba.cuda.is_available() is False)", file=sys.stderr)
        return 2
    where = "the CUDA SIMULATOR (not a GPU: times mean nothing)" if simulator_enabled() \
        else cuda.get_current_device().name.decode() \
        if isinstance(cuda.get_current_device().name, bytes) else cuda.get_current_device().name
    options = {"block": 32, "tile": 4} if args.tiny else {}
    print(f"graphnn gpu-check on {where}; roofline on paper: {PEAK_FP32_FLOPS / 1e12:g} "
          f"TFLOP/s FP32, {PEAK_BYTES / 1e12:g} TB/s")
    header = ("workload", "ms/step", "roofline ms", "launches", "compile s",
              "kernels compiled/cached", "slowest kernels (ms)")
    rows = []
    for name, model, (flops, nbytes) in workloads(args.tiny):
        r = check(model, 2 if args.tiny else args.steps, options)
        assert r["profiled_launches"] == r["launches"], r
        slow = sorted(r["kernel_ms"].items(), key=lambda kv: -kv[1])[:3]
        rows.append((name, f"{r['ms']:.3f}", f"{roofline_ms(flops, nbytes):.4f}",
                     str(r["launches"]), f"{r['build_s']:.2f}",
                     f"{r['kernels_compiled']}/{r['kernels_loaded']}",
                     ", ".join(f"{k} {v:.3f}" for k, v in slow)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in [header] + rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
