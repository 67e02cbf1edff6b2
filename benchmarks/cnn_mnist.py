"""MNIST-size CNN training step: graphnn (cpu back end) against PyTorch eager, one thread.

Model (NHWC in graphnn, NCHW in PyTorch, the same float32 weights and data):
28x28x1 -> conv 32 3x3 relu -> conv 64 3x3 relu -> max-pool 2 -> flatten -> dense 128 relu
-> dense 10 -> softmax cross-entropy (mean over the batch), SGD, batch 64.

Prints: the cold compile time of the graphnn step (a fresh, empty GRAPHNN_CACHE_DIR), the
first-step losses of both (they must agree to 1e-4), then median step times measured
interleaved (graphnn step, PyTorch step, graphnn step, ...) and their ratio. With
--layers it also times ResNet-50-like single convolutions, batch 1: graphnn cpu, graphnn's
numpy back end (the reference) and PyTorch.

Run (one BLAS thread, OpenBLAS choosing its own kernels):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
        python benchmarks/cnn_mnist.py --layers
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# cold compile: graphnn writes and compiles its module in a directory nobody used before
os.environ["GRAPHNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphnn-cnn-bench-")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential  # noqa: E402

BATCH, LR, SEED = 64, 0.01, 0


def data(batch=BATCH, seed=SEED):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    return x, y


def graphnn_step():
    x = gn.input("x", (None, 28, 28, 1))
    y = gn.input("y", (None,), dtype="int64")
    model = Sequential([Conv2D(32, 3, activation="relu", seed=SEED),
                        Conv2D(64, 3, activation="relu", seed=SEED + 1), MaxPool2D(2),
                        Flatten(), Dense(128, activation="relu", seed=SEED + 2),
                        Dense(10, seed=SEED + 3)])
    loss = gn.softmax_cross_entropy(model(x), y)
    # the biases start at zero; give them values so that their gradients matter in the check
    rng = np.random.default_rng(SEED + 10)
    for layer in model.layers:
        if getattr(layer, "b", None) is not None:
            layer.b.value = (0.05 * rng.standard_normal(layer.b.shape)).astype(np.float32)
    step = gn.compile(loss, updates=gn.optim.SGD(LR).updates(loss, model.params), backend="cpu")
    return step, model


def torch_step(model):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    c1, c2, _, _, d1, d2 = model.layers

    def conv(layer):  # HWIO -> OIHW
        return (torch.tensor(layer.W.value.transpose(3, 2, 0, 1).copy(), requires_grad=True),
                torch.tensor(layer.b.value.copy(), requires_grad=True))
    W1, b1 = conv(c1)
    W2, b2 = conv(c2)
    # graphnn flattens (h, w, c), PyTorch (c, h, w): permute the dense rows once
    w3 = d1.W.value.reshape(12, 12, 64, 128).transpose(2, 0, 1, 3).reshape(9216, 128)
    W3 = torch.tensor(w3.T.copy(), requires_grad=True)
    b3 = torch.tensor(d1.b.value.copy(), requires_grad=True)
    W4 = torch.tensor(d2.W.value.T.copy(), requires_grad=True)
    b4 = torch.tensor(d2.b.value.copy(), requires_grad=True)
    params = [W1, b1, W2, b2, W3, b3, W4, b4]
    opt = torch.optim.SGD(params, lr=LR)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        h = F.relu(F.conv2d(x, W1, b1))
        h = F.relu(F.conv2d(h, W2, b2))
        h = F.max_pool2d(h, 2).flatten(1)
        h = F.relu(F.linear(h, W3, b3))
        loss = F.cross_entropy(F.linear(h, W4, b4), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def interleaved(fns, repeats, warmup=3):
    """Median wall-clock seconds of each function, called in turn (fn0, fn1, fn0, ...).
    Also records the median CPU time of this thread (CPU_TIMES): on a shared machine it
    is less disturbed by other processes than wall-clock time (every system here runs
    on this one thread)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            c, t = time.thread_time(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.thread_time() - c)
    CPU_TIMES[:] = [statistics.median(t) for t in cpu]
    return [statistics.median(t) for t in times]


CPU_TIMES = []


def training(repeats):
    X, Y = data()
    t, c = time.perf_counter(), time.process_time()
    step, model = graphnn_step()
    initial = [(p, p.value.copy()) for p in model.params]
    first = float(step(x=X, y=Y))  # the first call compiles
    compile_s, compile_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"graphnn cold compile + first step: {compile_s:.2f} s wall, {compile_cpu:.2f} s "
          f"CPU (GRAPHNN_CACHE_DIR={os.environ['GRAPHNN_CACHE_DIR']})")
    for p, value in initial:  # back to the initial weights, for PyTorch too
        p.value = value
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: graphnn only")
        ms = interleaved([lambda: step(x=X, y=Y)], repeats)[0] * 1e3
        print(f"graphnn step: {ms:.2f} ms")
        return
    tstep = torch_step(model)
    xt = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(Y)
    g_loss, t_loss = float(step(x=X, y=Y)), tstep(xt, yt)
    assert abs(g_loss - first) < 1e-6, (g_loss, first)
    print(f"first-step loss: graphnn {g_loss:.6f}  PyTorch {t_loss:.6f}  "
          f"|diff| {abs(g_loss - t_loss):.2e}")
    if abs(g_loss - t_loss) > 1e-4:
        raise SystemExit("first-step losses differ by more than 1e-4")
    g2, t2 = float(step(x=X, y=Y)), tstep(xt, yt)
    print(f"second-step loss: graphnn {g2:.6f}  PyTorch {t2:.6f}  |diff| {abs(g2 - t2):.2e}")
    g_ms, t_ms = (v * 1e3 for v in interleaved([lambda: step(x=X, y=Y),
                                                 lambda: tstep(xt, yt)], repeats))
    g_cpu, t_cpu = (v * 1e3 for v in CPU_TIMES)
    print(f"training step, batch {BATCH}, median of {repeats} (interleaved), "
          "wall clock | thread CPU time:")
    print(f"  graphnn cpu   {g_ms:8.2f} ms | {g_cpu:8.2f} ms")
    print(f"  PyTorch eager {t_ms:8.2f} ms | {t_cpu:8.2f} ms")
    print(f"  graphnn / PyTorch = {g_ms / t_ms:.2f} | {g_cpu / t_cpu:.2f}")


LAYERS = [("3x3, 64->64, 56x56", 56, 64, 64, 3),
          ("3x3, 128->128, 28x28", 28, 128, 128, 3),
          ("1x1, 64->256, 56x56", 56, 64, 256, 1)]


def layers(repeats):
    try:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    print(f"single convolutions, batch 1, 'same' padding, median of {repeats} (interleaved), "
          "ms wall|CPU:")
    print(f"  {'layer':24s} {'graphnn cpu':>12s} {'numpy ref':>12s} {'PyTorch':>12s}"
          f" {'cpu GFLOP/s':>12s}")
    rng = np.random.default_rng(1)
    for label, hw, cin, cout, k in LAYERS:
        X = rng.standard_normal((1, hw, hw, cin), dtype=np.float32)
        Wv = (0.1 * rng.standard_normal((k, k, cin, cout))).astype(np.float32)
        x = gn.input("x", (1, hw, hw, cin))
        W = gn.param(f"W{hw}_{cin}_{cout}_{k}", Wv)
        y = gn.conv2d(x, W, padding="same")
        f_cpu = gn.compile(y, backend="cpu")
        f_np = gn.compile(y, backend="numpy")
        ref = f_np(x=X)
        np.testing.assert_allclose(f_cpu(x=X), ref, rtol=1e-3, atol=1e-3)
        fns = [lambda: f_cpu(x=X), lambda: f_np(x=X)]
        if torch is not None:
            xt = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
            wt = torch.from_numpy(Wv.transpose(3, 2, 0, 1).copy())
            with torch.no_grad():
                got = F.conv2d(xt, wt, padding="same").numpy().transpose(0, 2, 3, 1)
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)

            def torch_conv():
                with torch.no_grad():
                    F.conv2d(xt, wt, padding="same")
            fns.append(torch_conv)
        ms = [t * 1e3 for t in interleaved(fns, repeats)]
        cpu = [t * 1e3 for t in CPU_TIMES]
        flops = 2.0 * hw * hw * cout * k * k * cin
        cells = [f"{m:6.2f}|{c:5.2f}" for m, c in zip(ms, cpu)]
        cells += [f"{'-':>12s}"] if torch is None else []
        print(f"  {label:24s} {' '.join(cells)} {flops / cpu[0] / 1e6:12.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", action="store_true",
                        help="also time ResNet-50-like single convolutions (batch 1)")
    args = parser.parse_args()
    from kernels import blas
    print(f"BLAS: {blas.describe()}; threads {blas.threads()}")
    training(args.repeats)
    if args.layers:
        layers(args.repeats)


if __name__ == "__main__":
    main()
