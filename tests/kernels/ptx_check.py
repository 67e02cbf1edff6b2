"""Compile every kernel of a few graphs (together using every kernel-IR step kind) to PTX
and measure per kernel: float64 instructions, warp shuffles, and for matmuls the FMAs and
shared-memory loads of the inner loop. Also compiles `x ** c` for the cheap constant
powers next to the ops they become. Run by test_cuda_ptx.py in a process without the CUDA
simulator; prints one JSON line: {"graphs": {graph: {kernel: {"f64": n, "shfl": n,
"inner_fma": n, "inner_shared_loads": n}}}, "powers": {c: [instructions of x ** c,
instructions of its reference]}, "expected": [...]} or {"skip": reason}.
"""
import json
import re

import numpy as np

import graphnn as gn

F64 = re.compile(r"\.f64\b")
FMA = re.compile(r"^\s*fma\.rn\.f32\b")
LD_SHARED = re.compile(r"^\s*ld\.shared\.")
SHFL = re.compile(r"\bshfl\.sync\.bfly\b")


def instructions(ptx):
    """The PTX instruction lines of a kernel (no directives, labels, braces or comments)."""
    out = []
    for line in ptx.splitlines():
        text = line.strip()
        if text and not text.startswith(("//", ".", "{", "}", "$")) and \
                not text.endswith(":") and not text.startswith(("ret;",)):
            out.append(text)
    return out


def inner_loop(ptx):
    """(FMAs, shared loads) between two barriers: the stretch with the most shared loads
    (a tiled matmul's multiply loop runs between the barriers after and before staging)."""
    best = (0, 0)
    for part in ptx.split("bar.sync")[1:-1]:
        lines = part.splitlines()
        loads = sum(1 for l in lines if LD_SHARED.match(l))
        fmas = sum(1 for l in lines if FMA.match(l))
        if loads > best[1]:
            best = (fmas, loads)
    return best


def report(ptx):
    fmas, loads = inner_loop(ptx)
    return {"f64": len(F64.findall(ptx)), "shfl": len(SHFL.findall(ptx)),
            "inner_fma": fmas, "inner_shared_loads": loads}


# x ** c and the op it must compile to (the same instructions: no powf call)
# (0.75 is the control: a real power, which costs far more than a sqrt)
POWERS = {"0.5": gn.sqrt, "2.0": gn.square, "-1.0": lambda x: 1.0 / x,
          "-0.5": lambda x: 1.0 / gn.sqrt(x), "0.75": gn.sqrt}


def power_report():
    out = {}
    for c, reference in POWERS.items():
        counts = []
        for build in (lambda x: x ** float(c), reference):
            x = gn.input("x", (None,))
            f = gn.compile(build(x), backend="cuda", generate_only=True)
            (ptx,) = f.ptx().values()
            counts.append(len(instructions(ptx)))
        out[c] = counts
    return out


def mlp_adam():
    x, y = gn.input("x", (None, 6)), gn.input("y", (None,), dtype="int64")
    w1 = gn.param("w1", shape=(6, 8), init="glorot_uniform", seed=0)
    b1 = gn.param("b1", np.zeros(8, np.float32))
    w2 = gn.param("w2", shape=(8, 3), init="glorot_uniform", seed=1)
    h = gn.concat([gn.tanh(x @ w1 + b1), gn.sigmoid(x @ w1)], axis=1)
    loss = gn.softmax_cross_entropy(gn.slice_axis(h, 1, 0, 8) @ w2, y) + gn.mean(gn.softplus(h))
    return [loss], gn.optim.Adam(lr=0.01).updates(loss, [w1, b1, w2])


def conv_sgd():
    x, y = gn.input("img", (None, 6, 6, 1)), gn.input("t", (None, 2))
    k = gn.param("k", shape=(3, 3, 1, 2), init="he_normal", seed=2)
    h = gn.max_pool2d(gn.relu(gn.conv2d(x, k, padding="same")), 2)
    h = gn.avg_pool2d(gn.elu(gn.conv2d(h, gn.param("k2", shape=(2, 2, 2, 2), seed=3), stride=1)), 2)
    loss = gn.mse(gn.flatten(h), y)
    return [loss], gn.optim.SGD(lr=0.1, momentum=0.9).updates(loss, [k])


def shapes():
    a = gn.input("a", (None, 3, 4))
    m = gn.max(gn.transpose(a, (0, 2, 1)), axis=2)
    loss = gn.sum(m * gn.reshape(gn.log_softmax(gn.mean(a, axis=1)), (-1, 4)))
    return [loss] + gn.grad(loss, [a]), None


def matmul_float64():
    a, b = gn.input("p", (4, 5), dtype="float64"), gn.input("q", (5, 2), dtype="float64")
    out = gn.exp(a @ b) * 0.5
    return [out] + gn.grad(gn.sum(out), [a, b]), None


GRAPHS = {"mlp_adam": mlp_adam, "conv_sgd": conv_sgd, "shapes": shapes,
          "matmul_float64": matmul_float64}


def main():
    from numba import cuda
    reports = {}
    for name, build in GRAPHS.items():
        outputs, updates = build()
        f = gn.compile(outputs, updates=updates, backend="cuda", generate_only=True)
        try:
            ptx = f.ptx()
        except Exception as exc:  # NVVM or the CUDA toolkit missing
            text = f"{type(exc).__name__}: {exc}"
            if any(w in text for w in ("NVVM", "nvvm", "CudaSupportError", "cannot be found")):
                print(json.dumps({"skip": "the CUDA compiler library (NVVM) cannot be used "
                                          f"here: {text.splitlines()[0]}"}))
                return
            raise
        reports[name] = {kernel: report(text) for kernel, text in ptx.items()}
    assert cuda is not None
    print(json.dumps({"graphs": reports, "powers": power_report(), "expected": list(GRAPHS)}))


if __name__ == "__main__":
    main()
