"""A regularised convolutional network on the digits: what a practitioner adds to the plain
CNN (examples/cnn_digits.py) so it generalises and trains by itself.

conv 3x3 (16) -> BatchNorm -> relu -> max pool 2 -> conv 3x3 (32) -> BatchNorm -> relu ->
max pool 2 -> flatten -> Dropout(0.3) -> dense 10, trained with

- BatchNorm: each batch normalised by its own statistics while training; the step updates
  running averages that inference uses (gn.nn.BatchNorm);
- Dropout: a new random mask per step (a counter-based generator inside the compiled step),
  off at inference (gn.nn.Dropout);
- weight decay (decoupled, AdamW) and a cosine learning-rate schedule computed inside the
  step from its step counter, so it never recompiles (gn.optim.schedules.CosineDecay);
- early stopping on the validation loss, restoring the best weights
  (gn.callbacks.EarlyStopping); validation runs the inference graph (dropout off, running
  averages);
- TensorBoard event files of every step and epoch (gn.callbacks.TensorBoard; view them with
  `tensorboard --logdir out/cnn_regularised/tensorboard`), and the curves as a picture.

Writes out/cnn_regularised/curves.png and out/cnn_regularised/tensorboard/.
Run: python examples/cnn_regularised.py
"""
import sys
from pathlib import Path

import graphnn as gn
from graphnn.nn import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D

EPOCHS, BATCH, LR, WEIGHT_DECAY, SEED = 30, 32, 0.01, 1e-3, 0


class Model:
    """The layers, called on images (batch, 8, 8, 1) -> logits (batch, 10)."""

    def __init__(self):
        self.conv1, self.bn1 = Conv2D(16, 3, padding="same"), BatchNorm()
        self.conv2, self.bn2 = Conv2D(32, 3, padding="same"), BatchNorm()
        self.pool1, self.pool2 = MaxPool2D(2), MaxPool2D(2)
        self.drop, self.dense = Dropout(0.3, seed=SEED), Dense(10)
        self.layers = [self.conv1, self.bn1, self.conv2, self.bn2, self.dense]

    def __call__(self, x):
        h = self.pool1(gn.relu(self.bn1(self.conv1(x))))
        h = self.pool2(gn.relu(self.bn2(self.conv2(h))))
        return self.dense(self.drop(Flatten()(h)))

    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]


def main(out="out/cnn_regularised", backend="cpu", progress=True, pictures=True,
         epochs=EPOCHS):
    out = Path(out)
    (X_train, y_train), (X_test, y_test) = gn.data.digits(images=True, seed=SEED)
    x = gn.input("x", (None, 8, 8, 1))
    y = gn.input("y", (None,), dtype="int64")
    model = Model()
    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    accuracy = gn.metrics.accuracy(logits, y)
    steps = epochs * -(-len(X_train) // BATCH)
    schedule = gn.optim.schedules.CosineDecay(LR, steps=steps, final=LR / 20)
    optimizer = gn.optim.AdamW(lr=schedule, weight_decay=WEIGHT_DECAY)
    # the updates hold the parameters', the optimizer's and the layers' state (BatchNorm's
    # running averages, Dropout's step counter)
    step = gn.compile([loss, accuracy], updates=optimizer.updates(loss, model.params),
                      backend=backend)
    stop = gn.callbacks.EarlyStopping("val_loss", patience=6, restore_best_weights=True)
    board = gn.callbacks.TensorBoard(out / "tensorboard")
    history = gn.fit(step, {"x": X_train, "y": y_train}, epochs=epochs, batch_size=BATCH,
                     seed=SEED, validation={"x": X_test, "y": y_test}, progress=progress,
                     callbacks=[stop, board])
    best = min(range(len(history.epochs)), key=lambda e: history.history["val_loss"][e])
    test = gn.evaluate(gn.compile(gn.nn.inference([loss, accuracy]), backend=backend),
                       {"x": X_test, "y": y_test})
    print(f"trained {len(history.epochs)} of {epochs} epochs (early stopping, patience 6); "
          f"best validation loss at epoch {best + 1}: {history.history['val_loss'][best]:.4f}")
    print(f"test accuracy with the restored best weights {test['accuracy']:.2%} "
          f"(loss {test['loss']:.4f}); learning rate {schedule.value(0):.4g} -> "
          f"{schedule.value(steps):.4g} along a cosine")
    print(f"TensorBoard event files in {out / 'tensorboard'} "
          f"(tensorboard --logdir {out / 'tensorboard'})")
    if pictures:
        print("wrote", history.plot(out / "curves.png",
                                    title="CNN + BatchNorm + Dropout + AdamW + cosine"))
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "history": history,
            "epochs": len(history.epochs)}


if __name__ == "__main__":
    main(*sys.argv[1:])
