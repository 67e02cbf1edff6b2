"""A recurrent network predicts the next value of a noisy sine wave.

Each sample is a window of T = 12 consecutive values; the target is the value after it.
`gn.nn.SimpleRNN(16)` unrolls y_t = tanh(x_t Wx + y_{t-1} Wy + b) over the 12 steps with ONE
set of weights, so the derivative graph adds up 12 gradient contributions for each of Wx,
Wy and b. A Dense layer reads the last state. The loss (mean squared error) falls from about
the signal's variance to about the noise's.

Writes out/rnn_sequence/curves.png and out/rnn_sequence/prediction.png.
Run: python examples/rnn_sequence.py
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.nn import Dense, Sequential, SimpleRNN  # noqa: E402

STEPS, NOISE, EPOCHS, SEED = 12, 0.05, 20, 0


def noisy_sine(n=1000, noise=NOISE, seed=SEED):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(0.15 * t) + noise * rng.standard_normal(n)).astype(np.float32)


def windows(series, steps=STEPS):
    """(samples, steps, 1) inputs and (samples, 1) next values."""
    X = np.stack([series[i:i + steps] for i in range(len(series) - steps)])[..., None]
    return X, series[steps:, None]


def build():
    """The model, its prediction and loss nodes; returns (model, prediction, loss)."""
    x = gn.input("x", (None, STEPS, 1))
    y = gn.input("y", (None, 1))
    model = Sequential([SimpleRNN(16), Dense(1)])
    prediction = model(x)
    return model, prediction, gn.mse(prediction, y, name="loss")


def main(out="out/rnn_sequence", backend="cpu", progress=True, pictures=True):
    out = Path(out)
    series = noisy_sine()
    X, Y = windows(series)
    split = int(0.8 * len(X))  # the test part is the END of the series
    model, prediction, loss = build()
    params = model.params
    step = gn.compile(loss, updates=gn.optim.Adam(0.01).updates(loss, params), backend=backend)
    print(f"SimpleRNN(16) over {STEPS} steps, params: "
          + ", ".join(f"{p.name} {p.shape}" for p in params))
    history = gn.fit(step, {"x": X[:split], "y": Y[:split]}, epochs=EPOCHS, batch_size=32,
                     seed=SEED, validation={"x": X[split:], "y": Y[split:]}, progress=progress)
    losses = history.history["loss"]
    print(f"training loss {losses[0]:.4f} (epoch 1) -> {losses[-1]:.4f} (epoch {EPOCHS}); "
          f"test loss {history.final('val_loss'):.4f}; noise variance {NOISE ** 2:.4f}")
    if pictures:
        print("wrote", history.plot(out / "curves.png", title="SimpleRNN: next value of a sine"))
        predicted = gn.compile(prediction, backend=backend)(x=X[split:]).ravel()
        fig, ax = plt.subplots(figsize=(8, 3.4))
        t = np.arange(split, len(X)) + STEPS
        ax.plot(t, Y[split:].ravel(), ".", color="gray", markersize=3, label="noisy series")
        ax.plot(t, predicted, color="tab:orange", label="RNN prediction of the next value")
        ax.set_xlabel("time step")
        ax.set_title("test part of the series (not seen in training)")
        ax.set_ylim(-1.35, 1.75)
        ax.legend(loc="upper right", ncol=2)
        fig.tight_layout()
        fig.savefig(out / "prediction.png", dpi=100)
        plt.close(fig)
        print("wrote", out / "prediction.png")
    return {"losses": losses, "val_loss": history.final("val_loss")}


if __name__ == "__main__":
    main(*sys.argv[1:])
