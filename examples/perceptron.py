"""The perceptron: tell apples from oranges by weight and skin roughness.

One neuron with the step activation, ŷ = step(x·w + b), trained by the perceptron rule
θ ← θ + α(y − ŷ)x, one fruit at a time. The rule is not a gradient (step has none): it is
written directly as an update graph and compiled into the step, like any optimizer.
The data are linearly separable, so the rule stops making mistakes after a few epochs.

Writes out/perceptron/fruit.png (the fruit and the learned boundary) and
out/perceptron/errors.png (mistakes per epoch).
Run: python examples/perceptron.py
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402

ALPHA = 0.1


def build(alpha=ALPHA):
    """The perceptron for one sample at a time: returns (prediction node, rule updates)."""
    x = gn.input("x", (1, 2))
    y = gn.input("y", (1, 1))
    w = gn.param("w", np.zeros((2, 1), np.float32))
    b = gn.param("b", np.zeros((1,), np.float32))
    y_hat = gn.step(x @ w + b, name="y_hat")
    error = y - y_hat                                  # +1, 0 or -1
    updates = {w: w + alpha * gn.transpose(x) @ error,  # θ ← θ + α(y − ŷ)x
               b: b + alpha * gn.sum(error, axis=0)}    # the bias sees x0 = 1
    return y_hat, updates, (w, b)


def train(epochs=20, backend="cpu", seed=0):
    X, y = gn.data.apples_oranges()
    y_hat, updates, (w, b) = build()
    learn = gn.compile(y_hat, updates=updates, backend=backend)  # returns ŷ before the update
    rng = np.random.default_rng(seed)
    mistakes = []
    for epoch in range(epochs):
        wrong = 0
        for i in rng.permutation(len(y)):
            prediction = learn(x=X[i:i + 1], y=y[i:i + 1, None])
            wrong += int(prediction[0, 0] != y[i])
        mistakes.append(wrong)
        if wrong == 0:
            break
    return X, y, w.value.ravel().copy(), float(b.value[0]), mistakes


def plot(X, y, w, b, mistakes, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, name, colour in ((0, "apple", "tab:red"), (1, "orange", "tab:orange")):
        ax.scatter(*X[y == label].T, s=60, color=colour, edgecolor="k", label=name)
    xs = np.linspace(X[:, 0].min() - 0.1, X[:, 0].max() + 0.1, 50)
    if abs(w[1]) > 1e-9:  # boundary x·w + b = 0
        ax.plot(xs, -(w[0] * xs + b) / w[1], "k--", label="decision boundary")
    ax.set_xlabel(gn.data.FRUIT_FEATURES[0])
    ax.set_ylabel(gn.data.FRUIT_FEATURES[1])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Perceptron: apples vs oranges")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "fruit.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(np.arange(1, len(mistakes) + 1), mistakes, color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mistakes")
    ax.set_title("Perceptron rule: mistakes per epoch")
    ax.set_xticks(np.arange(1, len(mistakes) + 1))
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=100)
    plt.close(fig)
    return [out / "fruit.png", out / "errors.png"]


def main(out="out/perceptron", backend="cpu"):
    X, y, w, b, mistakes = train(backend=backend)
    print("Perceptron, step activation, rule θ ← θ + α(y − ŷ)x with α =", ALPHA)
    print(f"{len(y)} fruit, features: {', '.join(gn.data.FRUIT_FEATURES)}")
    for epoch, wrong in enumerate(mistakes, 1):
        print(f"  epoch {epoch}: {wrong} mistakes")
    print(f"learned w = {np.round(w, 3)}, b = {b:.3f}: orange when "
          f"{w[0]:.2f}·weight {w[1]:+.2f}·roughness {b:+.2f} > 0")
    for path in plot(X, y, w, b, mistakes, out):
        print("wrote", path)
    return {"mistakes": mistakes, "w": w, "b": b}


if __name__ == "__main__":
    main(*sys.argv[1:])
