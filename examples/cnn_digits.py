"""A small convolutional network reads handwritten digits (8x8 images, NHWC).

conv 3x3 (16 filters, same padding, relu) -> max pool 2 -> conv 3x3 (32 filters, relu) ->
max pool 2 -> flatten -> dense 10. About 6 000 parameters; the convolutions share their
kernels over every position, which is why so few weights suffice. With the cpu backend the
whole step (conv loops, pooling, backward pass, Adam) is one compiled call; training takes a
few seconds once compiled. The test accuracy reaches at least 97 %.

Writes out/cnn_digits/curves.png and out/cnn_digits/filters.png (the first layer's kernels).
Run: python examples/cnn_digits.py
Benchmark, graph vs eager: graphnn bench examples/cnn_digits.py (bench_model() below)
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential  # noqa: E402

EPOCHS, BATCH, LR, SEED = 15, 32, 0.005, 0


def make_model():
    return Sequential([
        Conv2D(16, 3, padding="same", activation="relu"), MaxPool2D(2),
        Conv2D(32, 3, padding="same", activation="relu"), MaxPool2D(2),
        Flatten(), Dense(10)])


def build():
    x = gn.input("x", (None, 8, 8, 1))
    y = gn.input("y", (None,), dtype="int64")
    model = make_model()
    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    return model, loss, gn.metrics.accuracy(logits, y)


def bench_model(batches=10):
    """For `graphnn bench`: the model, a loss function of the feeds (graph inputs or arrays),
    Adam, and the first `batches` training batches of BATCH images."""
    (X_train, y_train), _ = gn.data.digits(images=True, seed=SEED)
    model = make_model()

    def loss(x, y):
        return gn.softmax_cross_entropy(model(x), y)

    def feeds():
        for i in range(0, batches * BATCH, BATCH):
            yield {"x": X_train[i:i + BATCH], "y": y_train[i:i + BATCH]}

    return {"loss": loss, "optimizer": gn.optim.Adam(LR), "batches": feeds,
            "params": lambda: model.params}


def plot_filters(kernels, path):
    """kernels: HWIO with I = 1; one small image per output channel."""
    count = kernels.shape[-1]
    fig, axes = plt.subplots(2, count // 2, figsize=(count // 2 * 0.9, 2.2))
    limit = abs(kernels).max()
    for k, ax in enumerate(axes.ravel()):
        ax.imshow(kernels[:, :, 0, k], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.axis("off")
    fig.suptitle("first-layer 3x3 kernels (red +, blue −)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(out="out/cnn_digits", backend="cpu", progress=True, pictures=True):
    out = Path(out)
    (X_train, y_train), (X_test, y_test) = gn.data.digits(images=True, seed=SEED)
    model, loss, accuracy = build()
    print(model.summary())
    step = gn.compile([loss, accuracy], updates=gn.optim.Adam(LR).updates(loss, model.params),
                      backend=backend)
    history = gn.fit(step, {"x": X_train, "y": y_train}, epochs=EPOCHS, batch_size=BATCH,
                     seed=SEED, validation={"x": X_test, "y": y_test}, progress=progress)
    test_accuracy = history.final("val_accuracy")
    print(f"test accuracy {test_accuracy:.2%} after {EPOCHS} epochs; first epoch (with "
          f"compiling) {history.seconds[0]:.1f} s, later epochs "
          f"{sum(history.seconds[1:]) / max(len(history.seconds) - 1, 1) * 1e3:.0f} ms each")
    if pictures:
        print("wrote", history.plot(out / "curves.png", title="CNN on the digits"))
        print("wrote", plot_filters(model.layers[0].W.value, out / "filters.png"))
    return {"test_accuracy": test_accuracy, "history": history}


if __name__ == "__main__":
    main(*sys.argv[1:])
