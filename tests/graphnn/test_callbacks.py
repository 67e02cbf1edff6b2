"""`gn.callbacks` with `gn.fit`: the callback protocol, EarlyStopping, ModelCheckpoint,
ReduceLROnPlateau, CSVLogger and TensorBoard event files, checked against scripted measure
sequences, recorded weights and NumPy references."""
import csv
import os
import struct

import numpy as np
import pytest

import graphnn as gn
from graphnn.nn import Dense, Sequential
from helpers import BACKEND_OPTIONS

X, Y = gn.data.moons(n=40, seed=1)
X64 = X.astype(np.float64)


def classifier(backend="numpy", lr=0.05, optimizer=None, dtype=np.float32):
    """A fresh 2-4-2 model (same names, so the same initial weights every time)."""
    x = gn.input("x", (None, 2), dtype=dtype)
    y = gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(4, "tanh"), Dense(2)])
    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    accuracy = gn.metrics.accuracy(logits, y)
    optimizer = optimizer or gn.optim.Adam(lr)
    step = gn.compile([loss, accuracy], updates=optimizer.updates(loss, model.params),
                      backend=backend, **BACKEND_OPTIONS.get(backend, {}))
    return step, model, loss


class Recorder(gn.callbacks.Callback):
    """Records every call, and the parameters' values at the end of every epoch."""

    def __init__(self):
        self.calls, self.weights = [], {}

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, self.run.global_step, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))
        self.weights[epoch + 1] = {p.name: p.value.copy() for p in self.run.params}

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))


def scripted(values):
    """A validation function returning the next value of `values` at each call (the whole
    validation set is one batch), as "loss"."""
    values = iter(values)

    def evaluate(x, y):
        return np.float64(next(values))
    return evaluate


def scripted_step(W, losses):
    """A plain step: sets W to the number of steps taken and returns the next loss."""
    losses = iter(losses)
    count = [0]

    def step(x, y):
        count[0] += 1
        W.value = np.full(W.shape, float(count[0]), np.float32)
        return np.float32(next(losses))
    return step


# ---------------------------------------------------------------------------------------
# the protocol


def test_callbacks_are_called_in_keras_order_with_the_step_and_epoch_values():
    step, model, _ = classifier()
    recorder = Recorder()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16, progress=False,
                     validation={"x": X, "y": Y}, callbacks=[recorder])
    kinds = [c[0] for c in recorder.calls]
    per_epoch = ["epoch_begin"] + ["batch_begin", "batch_end"] * 3 + ["epoch_end"]
    assert kinds == ["train_begin"] + per_epoch * 2 + ["train_end"]
    batch_ends = [c for c in recorder.calls if c[0] == "batch_end"]
    assert [c[1] for c in batch_ends] == [0, 1, 2] * 2
    assert [c[2] for c in batch_ends] == [1, 2, 3, 4, 5, 6]  # global steps taken
    assert [c[3]["loss"] for c in batch_ends] == history.steps["loss"]
    assert [c[3]["accuracy"] for c in batch_ends] == history.steps["accuracy"]
    epoch_ends = [c for c in recorder.calls if c[0] == "epoch_end"]
    for epoch, (_, index, logs) in enumerate(epoch_ends):
        assert index == epoch
        assert logs == {k: v[epoch] for k, v in history.history.items()}
    assert recorder.calls[-1][1] == {k: v[-1] for k, v in history.history.items()}
    # the last epoch's weights are the model's weights after fit
    for p in model.params:
        np.testing.assert_array_equal(recorder.weights[2][p.name], p.value)


def test_a_callback_stops_training_after_the_epoch():
    class StopAfterTwo(gn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.run.stop_training = epoch == 1

    step, _, _ = classifier()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=10, batch_size=16, progress=False,
                     callbacks=[StopAfterTwo()])
    assert history.epochs == [1, 2] and len(history.steps["loss"]) == 6


def test_fit_refuses_what_is_not_a_list_of_callbacks():
    step, _, _ = classifier()
    with pytest.raises(gn.OptionError, match=r"callbacks=\[cb\]"):
        gn.fit(step, {"x": X, "y": Y}, progress=False,
               callbacks=gn.callbacks.CSVLogger("never.csv"))
    with pytest.raises(gn.OptionError, match="int is not a callback"):
        gn.fit(step, {"x": X, "y": Y}, progress=False, callbacks=[3])
    assert not os.path.exists("never.csv")


# ---------------------------------------------------------------------------------------
# EarlyStopping


VAL = [1.0, 0.8, 0.9, 0.79, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]


@pytest.mark.parametrize("min_delta, stopped, best_epoch", [
    # 0.79 is not below 0.8 - 0.02: epochs 3 and 4 do not improve, patience 2 ends at 4
    (0.02, 4, 2),
    # without min_delta epoch 4 improves (0.79 < 0.8); epochs 5 and 6 do not
    (0.0, 6, 4)])
def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best(
        min_delta, stopped, best_epoch):
    W = gn.param("early/W", np.zeros((2, 3), np.float32))
    stop = gn.callbacks.EarlyStopping("val_loss", patience=2, min_delta=min_delta,
                                      restore_best_weights=True, params=[W])
    history = gn.fit(scripted_step(W, np.linspace(1, 0, 10)), {"x": X, "y": Y}, epochs=10,
                     batch_size=len(X), progress=False, validation={"x": X, "y": Y},
                     evaluate_fn=scripted(VAL), callbacks=[stop])
    assert history.epochs == list(range(1, stopped + 1))
    assert history.history["val_loss"] == VAL[:stopped]
    assert (stop.stopped_epoch, stop.best_epoch, stop.best) == (stopped, best_epoch,
                                                                VAL[best_epoch - 1])
    # one step per epoch: the step set W to the epoch number; the best epoch's W is back
    np.testing.assert_array_equal(W.value, np.full((2, 3), float(best_epoch), np.float32))


def test_early_stopping_against_a_direct_reading_of_the_rule():
    """Stop at the first epoch e that is not the best so far and comes `patience` or more
    epochs after the best so far (the first minimum of the values up to e)."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        values = [float(v) for v in np.round(rng.uniform(0, 1, 12), 1)]  # ties happen
        patience = int(rng.integers(0, 4))
        expected = len(values)
        for e in range(1, len(values) + 1):
            best_at = int(np.argmin(values[:e])) + 1
            if best_at != e and e - best_at >= patience:
                expected = e
                break
        stop = gn.callbacks.EarlyStopping("val_loss", patience=patience)
        history = gn.fit(lambda x, y: np.float32(0), {"x": X, "y": Y}, epochs=len(values),
                         batch_size=len(X), progress=False, validation={"x": X, "y": Y},
                         evaluate_fn=scripted(values), callbacks=[stop])
        assert len(history.epochs) == expected, (trial, values, patience)
        assert stop.best_epoch == int(np.argmin(values[:expected])) + 1
        assert stop.stopped_epoch == (expected if expected < len(values) or
                                      int(np.argmin(values)) + 1 != expected and
                                      expected - int(np.argmin(values)) - 1 >= patience
                                      else 0)


def test_early_stopping_mode_max_and_auto_for_accuracy():
    accuracies = [0.5, 0.7, 0.6, 0.65, 0.9]
    for mode in ("max", "auto"):
        stop = gn.callbacks.EarlyStopping("val_accuracy", patience=2, mode=mode)
        evaluate = scripted(accuracies)
        history = gn.fit(lambda x, y: (np.float32(0), np.float32(0)), {"x": X, "y": Y},
                         epochs=5, batch_size=len(X), progress=False,
                         validation={"x": X, "y": Y}, names=["loss", "accuracy"],
                         evaluate_fn=lambda x, y: (np.float32(0), evaluate(x, y)),
                         callbacks=[stop])
        assert history.epochs == [1, 2, 3, 4] and stop.best == 0.7 and stop.best_epoch == 2


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_early_stopping_restores_trained_weights(backend):
    step, model, loss = classifier(backend, lr=0.3)
    recorder = Recorder()
    stop = gn.callbacks.EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    history = gn.fit(step, {"x": X[:20], "y": Y[:20]}, epochs=8, batch_size=8,
                     progress=False, validation={"x": X[20:], "y": Y[20:]},
                     callbacks=[recorder, stop])
    val = history.history["val_loss"]
    assert stop.best_epoch == int(np.argmin(val)) + 1 and stop.best == min(val)
    for p in model.params:
        np.testing.assert_array_equal(p.value, recorder.weights[stop.best_epoch][p.name])
    reference = gn.compile(loss, backend="numpy")(x=X[20:], y=Y[20:])
    assert float(reference) == pytest.approx(stop.best, rel=1e-6)


def test_early_stopping_restores_batchnorm_running_averages_with_the_weights():
    # inference uses the running averages: restoring only the parameters would evaluate
    # the best weights with the last epoch's statistics
    x = gn.input("x", (None, 2))
    y = gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(4, "tanh"), gn.nn.BatchNorm(), Dense(2)])
    loss = gn.softmax_cross_entropy(model(x), y, name="loss")
    step = gn.compile(loss, updates=gn.optim.SGD(0.3).updates(loss, model.params),
                      backend="cpu")
    norm = model.layers[1]
    seen = {}

    class Stats(gn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            seen[epoch + 1] = norm.running_mean.value.copy()
    stop = gn.callbacks.EarlyStopping("val_loss", patience=5, restore_best_weights=True)
    gn.fit(step, {"x": X[:24], "y": Y[:24]}, epochs=3, batch_size=8, progress=False,
           validation={"x": X[24:], "y": Y[24:]}, evaluate_fn=scripted([0.4, 0.9, 0.8]),
           callbacks=[Stats(), stop])
    assert stop.best_epoch == 1 and not np.array_equal(seen[1], seen[3])
    np.testing.assert_array_equal(norm.running_mean.value, seen[1])
    assert any(v is norm.running_var for v in stop._nodes)


def test_early_stopping_restores_weights_held_on_the_cuda_device():
    # (the CUDA simulator takes seconds per call: two steps and one evaluation)
    step, model, loss = classifier("cuda", lr=0.3)
    recorder = Recorder()
    stop = gn.callbacks.EarlyStopping("val_loss", restore_best_weights=True)
    gn.fit(step, {"x": X[:8], "y": Y[:8]}, epochs=2, batch_size=8, progress=False,
           validation={"x": X[:8], "y": Y[:8]}, evaluate_fn=scripted([0.5, 0.9]),
           callbacks=[recorder, stop])
    assert stop.best_epoch == 1 and stop.stopped_epoch == 2
    assert not np.array_equal(recorder.weights[1]["dense1/W"], recorder.weights[2]["dense1/W"])
    for p in model.params:
        np.testing.assert_array_equal(p.value, recorder.weights[1][p.name])
    # the device computes with the restored weights
    on_device = gn.compile(loss, backend="cuda", **BACKEND_OPTIONS["cuda"])(x=X[8:16], y=Y[8:16])
    reference = gn.compile(loss, backend="numpy")(x=X[8:16], y=Y[8:16])
    assert float(on_device) == pytest.approx(float(reference), rel=1e-5)


def test_early_stopping_errors_name_the_problem():
    with pytest.raises(gn.OptionError, match="patience must be an integer >= 0"):
        gn.callbacks.EarlyStopping(patience=-1)
    with pytest.raises(gn.OptionError, match="mode must be"):
        gn.callbacks.EarlyStopping(mode="lowest")
    stop = gn.callbacks.EarlyStopping("val_loss")
    with pytest.raises(gn.GraphError,
                       match=r"'val_loss' is not among.*pass validation=.*test_callbacks.py:\d+"):
        gn.fit(lambda x, y: np.float32(0), {"x": X, "y": Y}, progress=False,
               callbacks=[stop])
    restore = gn.callbacks.EarlyStopping("loss", restore_best_weights=True)
    with pytest.raises(gn.OptionError, match="pass params="):
        gn.fit(lambda x, y: np.float32(0), {"x": X, "y": Y}, progress=False,
               callbacks=[restore])


# ---------------------------------------------------------------------------------------
# ModelCheckpoint


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_checkpoints_every_two_epochs_load_back_with_that_epochs_weights(tmp_path, backend):
    step, model, loss = classifier(backend)
    recorder = Recorder()
    ckpt = gn.callbacks.ModelCheckpoint(tmp_path / "ckpt" / "epoch{epoch:02d}.json", every=2)
    gn.fit(step, {"x": X, "y": Y}, epochs=5, batch_size=16, progress=False,
           callbacks=[recorder, ckpt])
    assert [e for e, _ in ckpt.saved] == [2, 4]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["epoch02.json", "epoch02.npz",
                                                     "epoch04.json", "epoch04.npz"]
    for epoch, path in ckpt.saved:
        graph = gn.load(path)
        assert sorted(p.name for p in graph.params) == sorted(p.name for p in model.params)
        for p in graph.params:
            np.testing.assert_array_equal(p.value, recorder.weights[epoch][p.name])
        assert [o.name for o in graph.outputs] == ["loss", "accuracy"]
    # epoch 2's file computes epoch 2's loss
    graph = gn.load(ckpt.saved[0][1])
    loaded = gn.compile(graph.outputs[0], backend="numpy")(x=X, y=Y)
    for p in model.params:
        p.value = recorder.weights[2][p.name]
    assert float(loaded) == float(gn.compile(loss, backend="numpy")(x=X, y=Y))


def test_checkpoint_save_best_only_saves_when_the_measure_improves(tmp_path):
    step, model, _ = classifier()
    recorder = Recorder()
    ckpt = gn.callbacks.ModelCheckpoint(tmp_path / "best-{epoch}-{val_loss:.2f}.json",
                                        save_best_only=True)
    gn.fit(step, {"x": X, "y": Y}, epochs=6, batch_size=16, progress=False,
           validation={"x": X, "y": Y}, evaluate_fn=scripted([0.9, 0.7, 0.8, 0.6, 0.6, 0.65]),
           callbacks=[recorder, ckpt])
    assert ckpt.saved == [(1, str(tmp_path / "best-1-0.90.json")),
                          (2, str(tmp_path / "best-2-0.70.json")),
                          (4, str(tmp_path / "best-4-0.60.json"))]
    for p in gn.load(tmp_path / "best-4-0.60.json").params:
        np.testing.assert_array_equal(p.value, recorder.weights[4][p.name])


def test_checkpoint_errors(tmp_path):
    step, _, _ = classifier()
    with pytest.raises(gn.OptionError, match="every must be an integer >= 1"):
        gn.callbacks.ModelCheckpoint(tmp_path / "m.json", every=0)
    with pytest.raises(gn.OptionError, match="arrays file"):
        gn.callbacks.ModelCheckpoint(tmp_path / "m.npz")
    bad = gn.callbacks.ModelCheckpoint(tmp_path / "m-{accuracy_typo}.json")
    with pytest.raises(gn.OptionError, match=r"accuracy_typo.*\['accuracy', 'loss'\]"):
        gn.fit(step, {"x": X, "y": Y}, progress=False, callbacks=[bad])
    plain = gn.callbacks.ModelCheckpoint(tmp_path / "m.json")
    with pytest.raises(gn.OptionError, match="pass outputs="):
        gn.fit(lambda x, y: np.float32(0), {"x": X, "y": Y}, progress=False,
               callbacks=[plain])


# ---------------------------------------------------------------------------------------
# ReduceLROnPlateau


@pytest.mark.parametrize("backend, values, patience, reductions, rates", [
    # epochs 3 and 4 do not improve on 0.9: the rate halves after epoch 4; epochs 5 and 6
    # again: 0.025 is below min_lr, so 0.03; after that the rate is min_lr and stays
    ("numpy", [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0], 2, [(4, 0.05), (6, 0.03)],
     [0.1] * 4 + [0.05] * 2 + [0.03] * 2),
    ("cpu", [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0], 2, [(4, 0.05), (6, 0.03)],
     [0.1] * 4 + [0.05] * 2 + [0.03] * 2),
    # patience 0: every epoch that does not improve halves the rate (three steps: the
    # CUDA simulator takes seconds per call)
    ("cuda", [1.0, 1.1, 1.2], 0, [(2, 0.05), (3, 0.03)], [0.1, 0.1, 0.05])])
def test_plateau_reduces_the_lr_variable_and_the_next_step_uses_it(
        backend, values, patience, reductions, rates):
    n = 12 if backend == "cuda" else len(X)
    data = {"x": X64[:n], "y": Y[:n]}
    lr = gn.variable("plateau/lr", np.float64(0.1), dtype="float64")
    step, model, loss = classifier(backend, optimizer=gn.optim.SGD(lr=lr), dtype=np.float64)
    gradients = gn.compile(gn.grad(loss, model.params), backend="numpy")

    class CheckStep(gn.callbacks.Callback):
        """At every step: the parameters before, the gradient, the rate, the values after."""
        seen = []

        def on_batch_begin(self, batch, logs=None):
            self.before = [p.value.copy() for p in model.params]
            self.grads = gradients(**data)
            self.rate = float(lr.value)

        def on_batch_end(self, batch, logs=None):
            for p, w, g in zip(model.params, self.before, self.grads):
                np.testing.assert_allclose(p.value, w - self.rate * g, rtol=1e-12, atol=1e-14)
            self.seen.append(self.rate)

    plateau = gn.callbacks.ReduceLROnPlateau(lr, factor=0.5, patience=patience, min_lr=0.03)
    gn.fit(step, data, epochs=len(values), batch_size=n, shuffle=False, progress=False,
           validation=data, evaluate_fn=scripted(values), callbacks=[plateau, CheckStep()])
    assert plateau.reductions == reductions
    assert CheckStep.seen == rates
    assert float(lr.value) == 0.03


def test_plateau_cooldown_and_an_optimizer_holding_the_variable():
    lr = gn.variable("cool/lr", np.float32(1.0))
    optimizer = gn.optim.SGD(lr=lr)
    step, _, _ = classifier(optimizer=optimizer)
    plateau = gn.callbacks.ReduceLROnPlateau(optimizer, factor=0.1, patience=1, cooldown=2)
    gn.fit(step, {"x": X, "y": Y}, epochs=7, batch_size=len(X), progress=False,
           validation={"x": X, "y": Y}, evaluate_fn=scripted([1.0] * 7),
           callbacks=[plateau])
    # Keras' rule: epoch 2 waits 1 -> reduce (cooldown 2); epoch 3 counts the cooldown down
    # to 1, epoch 4 to 0, and being out of cooldown waits 1 -> reduce; likewise epoch 6
    assert [e for e, _ in plateau.reductions] == [2, 4, 6]
    assert float(lr.value) == pytest.approx(0.001, rel=1e-6)


def test_plateau_refuses_a_constant_learning_rate():
    with pytest.raises(gn.OptionError, match=r"scalar gn.variable.*got 0.1.*cannot change"):
        gn.callbacks.ReduceLROnPlateau(0.1)
    with pytest.raises(gn.OptionError, match=r"got SGD\(lr=0.1\)"):
        gn.callbacks.ReduceLROnPlateau(gn.optim.SGD(lr=0.1))
    with pytest.raises(gn.OptionError, match="got .*const"):
        gn.callbacks.ReduceLROnPlateau(gn.const(0.1))
    lr = gn.variable("unused/lr", np.float32(0.1))
    with pytest.raises(gn.OptionError, match="factor must be between 0 and 1"):
        gn.callbacks.ReduceLROnPlateau(lr, factor=2)
    step, _, _ = classifier()  # Adam(0.05): does not read `lr`
    with pytest.raises(gn.OptionError, match="does not read the learning rate 'unused/lr'"):
        gn.fit(step, {"x": X, "y": Y}, progress=False,
               callbacks=[gn.callbacks.ReduceLROnPlateau(lr, monitor="loss")])


# ---------------------------------------------------------------------------------------
# CSVLogger


def test_csv_logger_writes_one_row_per_epoch_with_full_precision(tmp_path):
    step, _, _ = classifier()
    path = tmp_path / "logs" / "training.csv"
    history = gn.fit(step, {"x": X, "y": Y}, epochs=3, batch_size=16, progress=False,
                     validation={"x": X, "y": Y},
                     callbacks=[gn.callbacks.CSVLogger(path)])
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert len(rows) == 4
    for epoch, row in enumerate(rows[1:]):
        assert int(row[0]) == epoch + 1
        for name, cell in zip(rows[0][1:], row[1:]):
            assert float(cell) == history.history[name][epoch]  # exact: repr round-trips
    # append: more rows, no second header
    gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16, progress=False,
           validation={"x": X, "y": Y},
           callbacks=[gn.callbacks.CSVLogger(path, append=True)])
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 6 and [r[0] for r in rows[1:]] == ["1", "2", "3", "1", "2"]


# ---------------------------------------------------------------------------------------
# TensorBoard


def test_crc32c_matches_the_standard_check_values():
    # CRC-32C check value (RFC 3720 / iSCSI): "123456789" -> 0xE3069283
    assert gn.callbacks.crc32c(b"123456789") == 0xE3069283
    assert gn.callbacks.crc32c(b"") == 0
    assert gn.callbacks.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert gn.callbacks.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xff
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert gn.callbacks.masked_crc32c(b"123456789") == masked


def test_crc32c_agrees_with_tensorboards_own():
    stub = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 64, 1000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert gn.callbacks.masked_crc32c(data) == stub.masked_crc32c(data)


def fit_with_tensorboard(tmp_path, update_freq="batch"):
    step, _, _ = classifier()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=3, batch_size=16, progress=False,
                     validation={"x": X[:20], "y": Y[:20]},
                     callbacks=[gn.callbacks.TensorBoard(tmp_path / "tb", update_freq)])
    return history


def test_tensorboard_event_files_hold_epoch_and_step_scalars(tmp_path):
    history = fit_with_tensorboard(tmp_path)
    train = gn.callbacks.read_scalars(tmp_path / "tb" / "train")
    assert set(train) == {"epoch_loss", "epoch_accuracy", "batch_loss", "batch_accuracy"}
    f32 = np.float32
    for name in ("loss", "accuracy"):
        assert train[f"epoch_{name}"] == [(e, f32(v)) for e, v in
                                          zip([1, 2, 3], history.history[name])]
        assert train[f"batch_{name}"] == [(s + 1, f32(v)) for s, v in
                                          enumerate(history.steps[name])]
    val = gn.callbacks.read_scalars(tmp_path / "tb" / "validation")
    assert set(val) == {"epoch_loss", "epoch_accuracy"}
    assert val["epoch_loss"] == [(e, f32(v)) for e, v in
                                 zip([1, 2, 3], history.history["val_loss"])]
    # the first record of a file is the version event
    path, = (tmp_path / "tb" / "train").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    events = gn.callbacks.read_events(path)
    assert events[0]["file_version"] == "brain.Event:2" and "scalars" not in events[0]
    assert all(e["wall_time"] > 1.6e9 for e in events)


def test_tensorboard_update_freq(tmp_path):
    fit_with_tensorboard(tmp_path, update_freq=2)
    train = gn.callbacks.read_scalars(tmp_path / "tb" / "train")
    assert [s for s, _ in train["batch_loss"]] == [2, 4, 6, 8]  # 3 epochs of 3 steps
    fit_with_tensorboard(tmp_path / "e", update_freq="epoch")
    assert set(gn.callbacks.read_scalars(tmp_path / "e" / "tb" / "train")) == {
        "epoch_loss", "epoch_accuracy"}


def test_tensorboard_reads_the_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    history = fit_with_tensorboard(tmp_path)
    train = EventAccumulator(str(tmp_path / "tb" / "train"))
    train.Reload()
    assert set(train.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy", "batch_loss",
                                            "batch_accuracy"}
    epoch_loss = train.Scalars("epoch_loss")
    assert [e.step for e in epoch_loss] == [1, 2, 3]
    np.testing.assert_allclose([e.value for e in epoch_loss], history.history["loss"],
                               rtol=1e-7)  # stored as float32
    batch_accuracy = train.Scalars("batch_accuracy")
    assert [e.step for e in batch_accuracy] == list(range(1, 10))
    np.testing.assert_allclose([e.value for e in batch_accuracy], history.steps["accuracy"],
                               rtol=1e-7)
    validation = EventAccumulator(str(tmp_path / "tb" / "validation"))
    validation.Reload()
    np.testing.assert_allclose([e.value for e in validation.Scalars("epoch_accuracy")],
                               history.history["val_accuracy"], rtol=1e-7)


def test_read_events_checks_every_crc(tmp_path):
    fit_with_tensorboard(tmp_path)
    path, = (tmp_path / "tb" / "validation").iterdir()
    data = bytearray(path.read_bytes())
    first_length = struct.unpack("<Q", data[:8])[0]
    second = 12 + first_length + 4  # where the second record starts
    damaged = bytearray(data)
    damaged[second + 12 + 3] ^= 0x01  # a bit of the second record's data
    (tmp_path / "data.tfevents").write_bytes(bytes(damaged))
    with pytest.raises(gn.GraphError, match=f"record at byte {second}: the data's CRC"):
        gn.callbacks.read_events(tmp_path / "data.tfevents")
    damaged = bytearray(data)
    damaged[second] ^= 0x01  # the second record's length
    (tmp_path / "length.tfevents").write_bytes(bytes(damaged))
    with pytest.raises(gn.GraphError, match="the length's CRC"):
        gn.callbacks.read_events(tmp_path / "length.tfevents")
    (tmp_path / "short.tfevents").write_bytes(bytes(data[:-3]))
    with pytest.raises(gn.GraphError, match="truncated"):
        gn.callbacks.read_events(tmp_path / "short.tfevents")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gn.GraphError, match="no event files"):
        gn.callbacks.read_scalars(tmp_path / "empty")


# ---------------------------------------------------------------------------------------
# the progress bar while the first call compiles


def test_progress_bar_says_compiling_during_the_first_call(capsys):
    step, _, _ = classifier("cpu")
    gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16)
    err = capsys.readouterr().err
    assert "epoch 1/2: compiling…" in err and "epoch 1/2 (compiled in " in err
    assert "epoch 2/2: compiling" not in err and "epoch 2/2 (compiled" not in err
    gn.fit(step, {"x": X, "y": Y}, epochs=1, batch_size=16)  # compiled already
    assert "compil" not in capsys.readouterr().err
    step, _, _ = classifier("numpy")  # nothing to compile
    gn.fit(step, {"x": X, "y": Y}, epochs=1, batch_size=16)
    assert "compil" not in capsys.readouterr().err


def test_read_scalars_of_a_missing_path_names_it(tmp_path):
    missing = tmp_path / "no-such-log"
    with pytest.raises(gn.GraphError, match="no-such-log' is neither an event file nor a "
                                            "directory"):
        gn.callbacks.read_scalars(missing)
    with pytest.raises(gn.GraphError, match="read_events: cannot read .*no-such-log"):
        gn.callbacks.read_events(missing)
