"""Activation functions and their derivatives, the derivatives computed by `gn.grad`.

For each activation f, the graph takes a vector x, computes f(x), and `gn.grad(sum(f(x)), x)`
builds the derivative graph: since f acts elementwise, d sum(f(x)) / dx_i = f'(x_i). One
compiled function returns both curves.

Writes out/activations/activations.png.
Run: python examples/activations.py
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402

ACTIVATIONS = {
    "sigmoid": gn.sigmoid,
    "tanh": gn.tanh,
    "relu": gn.relu,
    "leaky relu (α = 0.1)": lambda x: gn.leaky_relu(x, alpha=0.1),
    "elu (α = 1)": gn.elu,
    "softplus": gn.softplus,
}


def curves(xs, backend="numpy"):
    """{name: (f(xs), f'(xs))} with f' from the derivative graph."""
    x = gn.input("x", (None,))
    result = {}
    for name, f in ACTIVATIONS.items():
        y = f(x)
        dy = gn.grad(gn.sum(y), x)
        result[name] = gn.compile([y, dy], backend=backend)(x=xs)
    return result


def main(out="out/activations", backend="numpy"):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    xs = np.linspace(-4, 4, 801).astype(np.float32)
    results = curves(xs, backend)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    print(f"{'activation':22s} {'f(-2)':>8s} {'f(0)':>8s} {'f(2)':>8s} {'f_(-2)':>8s} "
          f"{'f_(0)':>8s} {'f_(2)':>8s}".replace("f_", "f'"))
    at = [np.searchsorted(xs, v) for v in (-2.0, 0.0, 2.0)]
    for ax, (name, (y, dy)) in zip(axes.ravel(), results.items()):
        ax.axhline(0, color="gray", linewidth=0.6)
        ax.axvline(0, color="gray", linewidth=0.6)
        ax.plot(xs, y, color="tab:blue", linewidth=2, label="f(x)")
        ax.plot(xs, dy, color="tab:red", linewidth=2, linestyle="--", label="f'(x) by gn.grad")
        ax.set_title(name)
        ax.set_ylim(-1.3, 4.2)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
        print(f"{name:22s} " + " ".join(f"{v:8.4f}" for v in [*y[at], *dy[at]]))
    fig.suptitle("activation functions (solid) and their derivatives from the derivative "
                 "graph (dashed)")
    fig.tight_layout()
    fig.savefig(out / "activations.png", dpi=100)
    plt.close(fig)
    print("wrote", out / "activations.png")
    return results


if __name__ == "__main__":
    main(*sys.argv[1:])
