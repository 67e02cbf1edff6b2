"""Gradient descent and its variants on the same problem, from the same starting weights.

An MLP 2-16-16-2 (tanh) classifies the two moons (full batch, 300 steps). Every optimizer is
an update graph compiled into the step: plain SGD (θ ← θ − η∇L), SGD with momentum
(m ← βm − η∇L, θ ← θ + m), RMSprop and Adam (per-parameter step sizes from running moments).
Layers seed their weights from their names, so all four runs start from the same point.

Writes out/optimizers/losses.png (the four loss curves in one plot).
Run: python examples/optimizers.py
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Dense, Sequential  # noqa: E402

STEPS = 300
OPTIMIZERS = {
    "SGD (η = 0.1)": lambda: gn.optim.SGD(lr=0.1),
    "SGD + momentum (η = 0.1, β = 0.9)": lambda: gn.optim.SGD(lr=0.1, momentum=0.9),
    "RMSprop (η = 0.01)": lambda: gn.optim.RMSprop(lr=0.01),
    "Adam (η = 0.01)": lambda: gn.optim.Adam(lr=0.01),
}


def build():
    """The classifier every optimizer trains; returns (model, x, labels, logits)."""
    x = gn.input("x", (None, 2))
    labels = gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(16, "tanh"), Dense(16, "tanh"), Dense(2)])
    return model, x, labels, model(x)


def train(make_optimizer, X, y, backend="cpu"):
    model, x, labels, logits = build()
    loss = gn.softmax_cross_entropy(logits, labels, name="loss")
    accuracy = gn.metrics.accuracy(logits, labels)
    step = gn.compile([loss, accuracy], updates=make_optimizer().updates(loss, model.params),
                      backend=backend)
    return gn.fit(step, {"x": X, "y": y}, epochs=STEPS, batch_size=len(y), shuffle=False,
                  progress=False)


def main(out="out/optimizers", backend="cpu"):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    X, y = gn.data.moons(n=200, noise=0.15, seed=0)
    print(f"two moons, {len(y)} points, MLP 2-16-16-2, full batch, {STEPS} steps")
    histories = {name: train(make, X, y, backend) for name, make in OPTIMIZERS.items()}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, history in histories.items():
        losses = history.history["loss"]
        ax.plot(history.epochs, losses, linewidth=2, label=name)
        print(f"  {name:34s} loss {losses[0]:.4f} -> {losses[49]:.4f} (step 50) -> "
              f"{losses[-1]:.4f} (step {STEPS}), accuracy {history.final('accuracy'):.1%}")
    ax.set_xlabel("step")
    ax.set_ylabel("softmax cross-entropy")
    ax.set_yscale("log")
    ax.set_title("the same model and start, four optimizers")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)
    plt.close(fig)
    print("wrote", out / "losses.png")
    return {name: h.history["loss"] for name, h in histories.items()}


if __name__ == "__main__":
    main(*sys.argv[1:])
