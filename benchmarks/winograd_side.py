"""Winograd F(4x4, 3x3) against F(2x2, 3x3) for inference convolutions (a constant kernel
transformed beforehand, kernels/windows.py `winograd_side`), batch 1, one thread, both
compiled in ONE process and timed interleaved (each round calls every variant once).

    OPENBLAS_NUM_THREADS=1 python benchmarks/winograd_side.py layers
    OPENBLAS_NUM_THREADS=1 python benchmarks/winograd_side.py models --models squeezenet,resnet50

`layers`: one 3x3 'same' convolution + bias + relu per output size and channels, compiled
with F(4x4, 3x3) from 12x12 outputs up and with F(2x2, 3x3) only; prints the medians and
their ratio. Called alone, a layer's U stays in the caches between calls.

`models`: the onnx package's light ImageNet models with every weight distinct
(onnx_interleaved.varied_weights), compiled with windows.WINOGRAD_F4_MIN_SIDE at each of
--sides (default 12, 24 and 1000: F(4x4, 3x3) from 12x12 outputs, from 24x24, never);
prints each variant's median time per call. Between two calls of one variant the others
run, so a layer's U is read from beyond L2 as in a network's own sequence of layers.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GRAPHNN_CACHE_DIR", tempfile.mkdtemp(prefix="graphnn-winograd-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from kernels import windows  # noqa: E402

LAYERS = [(13, 48, 192), (13, 64, 256), (14, 96, 128), (14, 192, 256), (14, 256, 256),
          (28, 64, 96), (28, 128, 128), (55, 16, 64), (56, 64, 64)]


def compiled_with(side, build):
    """`build()`'s (function, feeds), compiled with WINOGRAD_F4_MIN_SIDE = side."""
    old = windows.WINOGRAD_F4_MIN_SIDE
    windows.WINOGRAD_F4_MIN_SIDE = side
    try:
        return build()
    finally:
        windows.WINOGRAD_F4_MIN_SIDE = old


def interleaved(variants, rounds):
    """Median seconds per call of each (function, feeds), the calls interleaved."""
    times = [[] for _ in variants]
    for _ in range(rounds):
        for k, (f, feeds) in enumerate(variants):
            t = time.perf_counter()
            f(**feeds)
            times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def layer(h, ci, co, rng):
    def build():
        x = gn.input("x", (1, h, h, ci))
        w = gn.const((0.1 * rng.standard_normal((3, 3, ci, co))).astype(np.float32))
        b = gn.const(rng.standard_normal(co).astype(np.float32))
        f = gn.compile(gn.relu(gn.conv2d(x, w, padding="same") + b), backend="cpu",
                       progress=False)
        feeds = {"x": rng.standard_normal((1, h, h, ci)).astype(np.float32)}
        f(**feeds)
        return f, feeds
    return build


def model(name):
    from graphnn.tools.bench_onnx import light_case
    from onnx_interleaved import varied_weights
    path, inp, x, _ = light_case(name)
    path = varied_weights(path)

    def build():
        outs, _ = gn.onnx.load(path, frozen=True)
        f = gn.compile(outs[0], backend="cpu", progress=False)
        f(**{inp: x})
        return f, {inp: x}
    return build


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["layers", "models"])
    parser.add_argument("--models", default="squeezenet,resnet50,densenet121,inception_v1,"
                                            "inception_v2,vgg19")
    parser.add_argument("--sides", default="12,24,1000")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.what == "layers":
        for h, ci, co in LAYERS:
            build = layer(h, ci, co, rng)
            f4, f2 = interleaved([compiled_with(12, build), compiled_with(10 ** 9, build)],
                                 args.rounds)
            print(f"{h}x{h} {ci}->{co}: F(4x4, 3x3) {f4 * 1e6:7.0f} us  F(2x2, 3x3) "
                  f"{f2 * 1e6:7.0f} us  ratio {f4 / f2:.2f}", flush=True)
        return
    sides = [int(s) for s in args.sides.split(",")]
    for name in args.models.split(","):
        build = model(name)
        medians = interleaved([compiled_with(side, build) for side in sides], args.rounds)
        print(f"{name:14s} " + "  ".join(f"from {side}: {m * 1e3:7.2f} ms"
                                         for side, m in zip(sides, medians)), flush=True)


if __name__ == "__main__":
    main()
