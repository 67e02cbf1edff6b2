"""XOR: a single layer cannot learn it, a hidden layer can.

XOR's two classes are not linearly separable, so one sigmoid neuron (a line in the plane)
gets at most 3 of the 4 points right. An MLP 2-4-1 with a tanh hidden layer bends the
boundary and gets all 4. Both are trained the same way: binary cross-entropy, Adam, the
four points as one batch.

Writes out/xor/decision.png (both decision regions) and out/xor/loss.png.
Run: python examples/xor.py
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Dense, Sequential  # noqa: E402

MODELS = {
    "single layer 2-1": lambda: Sequential([Dense(1, "sigmoid", seed=0)]),
    "MLP 2-4-1": lambda: Sequential([Dense(4, "tanh", seed=0), Dense(1, "sigmoid", seed=1)]),
}


def build(make_model=MODELS["MLP 2-4-1"]):
    """One of the MODELS with its nodes; returns (model, prediction, loss, accuracy)."""
    x, y = gn.input("x", (None, 2)), gn.input("y", (None, 1))
    model = make_model()
    p = model(x)
    return model, p, gn.binary_cross_entropy(p, y, name="loss"), gn.metrics.accuracy(p, y)


def train(make_model, epochs=500, lr=0.05, backend="cpu"):
    X, Y = gn.data.xor()
    model, p, loss, acc = build(make_model)
    step = gn.compile([loss, acc], updates=gn.optim.Adam(lr).updates(loss, model.params),
                      backend=backend)
    history = gn.fit(step, {"x": X, "y": Y}, epochs=epochs, batch_size=4, shuffle=False,
                     progress=False)
    predict = gn.compile(p, backend=backend)
    return history, predict


def plot(results, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    X, Y = gn.data.xor()
    grid = np.linspace(-0.5, 1.5, 101)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.4))
    for ax, (name, (history, predict)) in zip(axes, results.items()):
        p = predict(x=points).reshape(gx.shape)
        ax.contourf(gx, gy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
        ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(*X.T, c=Y.ravel(), cmap="RdBu_r", s=150, edgecolor="k", vmin=0, vmax=1)
        ax.set_title(f"{name}: accuracy {history.final('accuracy'):.0%}")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "decision.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (history, _) in results.items():
        ax.plot(history.epochs, history.history["loss"], label=name)
    ax.set_xlabel("step (the 4 points are one batch)")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title("XOR: training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    return [out / "decision.png", out / "loss.png"]


def main(out="out/xor", backend="cpu"):
    print("XOR with one layer and with a hidden layer (binary cross-entropy, Adam)")
    results = {name: train(make, backend=backend) for name, make in MODELS.items()}
    accuracies = {}
    for name, (history, predict) in results.items():
        accuracies[name] = history.final("accuracy")
        p = predict(x=gn.data.xor()[0]).ravel()
        print(f"  {name:17s} loss {history.final('loss'):.4f}  accuracy "
              f"{accuracies[name]:.0%}  outputs {np.round(p, 2)}")
    print("one neuron draws one line, and no line separates XOR: the best it can do under"
          " cross-entropy is p = 0.5 everywhere; the hidden layer separates all four points")
    for path in plot(results, out):
        print("wrote", path)
    return accuracies


if __name__ == "__main__":
    main(*sys.argv[1:])
