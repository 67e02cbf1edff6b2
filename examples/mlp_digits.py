"""An MLP reads handwritten digits: 64 pixels -> 128 relu units -> 10 classes.

The data are the 8x8 handwritten digits shipped with graphnn (no download), split 80/20
per class with a fixed seed. The model is two `gn.nn.Dense` layers; loss and accuracy are
graph nodes compiled with Adam's update graph into ONE training step, and `gn.fit` runs it
over mini-batches with a progress bar. The test accuracy reaches at least 95 %.

Writes out/mlp_digits/: graph.png (the forward graph, Netron style), graph_grad.png (forward
and derivative graph), curves.png (loss and accuracy per epoch), predictions.png (test
digits with the predicted class).
Run: python examples/mlp_digits.py
Draw: graphnn render examples/mlp_digits.py --build loss_graph -o mlp.png [--grad]
Benchmark, graph vs eager: graphnn bench examples/mlp_digits.py [--profile] [--plot mlp.png]
  (bench_model() below: the same layers, loss and Adam run op by op and compiled)
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Dense, Sequential  # noqa: E402

EPOCHS, BATCH, LR, SEED = 25, 32, 0.002, 0


def build():
    """The model, its loss and accuracy nodes; returns (model, x, logits, loss, accuracy)."""
    x = gn.input("x", (None, 64))
    y = gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(128, "relu"), Dense(10)])
    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    return model, x, logits, loss, gn.metrics.accuracy(logits, y)


def bench_model(batches=20):
    """For `graphnn bench`: the model, a loss function of the feeds (graph inputs or arrays),
    Adam, and the first `batches` training batches of BATCH digits."""
    (X_train, y_train), _ = gn.data.digits(seed=SEED)
    model = Sequential([Dense(128, "relu"), Dense(10)])

    def loss(x, y):
        return gn.softmax_cross_entropy(model(x), y)

    def feeds():
        for i in range(0, batches * BATCH, BATCH):
            yield {"x": X_train[i:i + BATCH], "y": y_train[i:i + BATCH]}

    return {"loss": loss, "optimizer": gn.optim.Adam(LR), "batches": feeds,
            "params": lambda: model.params}


def loss_graph():
    """The loss node alone: `graphnn render examples/mlp_digits.py --build loss_graph`."""
    return build()[3]


def render(model, loss, out):
    """The forward graph and the forward + derivative graph, as PNGs; returns the paths."""
    import visualize
    grads = dict(zip(model.params, gn.grad(loss, model.params)))
    return [visualize.render(loss, Path(out) / "graph.png"),
            visualize.render(loss, Path(out) / "graph_grad.png", grads=grads)]


def plot_predictions(X, y, predicted, path, count=24):
    fig, axes = plt.subplots(3, count // 3, figsize=(count // 3 * 1.1, 3 * 1.3))
    for ax, image, label, guess in zip(axes.ravel(), X, y, predicted):
        ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{guess}" if guess == label else f"{guess} (is {label})", fontsize=9,
                     color="black" if guess == label else "red")
        ax.axis("off")
    fig.suptitle("test digits: predicted class (red: wrong)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(out="out/mlp_digits", backend="cpu", progress=True, pictures=True):
    out = Path(out)
    (X_train, y_train), (X_test, y_test) = gn.data.digits(seed=SEED)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels")
    model, x, logits, loss, accuracy = build()
    print(model.summary())
    if pictures:
        for path in render(model, loss, out):
            print("wrote", path)
    step = gn.compile([loss, accuracy], updates=gn.optim.Adam(LR).updates(loss, model.params),
                      backend=backend)
    history = gn.fit(step, {"x": X_train, "y": y_train}, epochs=EPOCHS, batch_size=BATCH,
                     seed=SEED, validation={"x": X_test, "y": y_test}, progress=progress)
    test_accuracy = history.final("val_accuracy")
    later = sum(history.seconds[1:]) / max(len(history.seconds) - 1, 1)
    print(f"test accuracy {test_accuracy:.2%} (loss {history.final('val_loss'):.4f}) after "
          f"{EPOCHS} epochs; first epoch {history.seconds[0]:.1f} s (compiles the step unless "
          f"cached), then {later * 1e3:.0f} ms per epoch")
    if pictures:
        print("wrote", history.plot(out / "curves.png", title="MLP 64-128-10 on the digits"))
        predicted = np.argmax(gn.compile(logits, backend=backend)(x=X_test[:24]), axis=1)
        print("wrote", plot_predictions(X_test, y_test, predicted, out / "predictions.png"))
    return {"test_accuracy": test_accuracy, "history": history}


if __name__ == "__main__":
    main(*sys.argv[1:])
