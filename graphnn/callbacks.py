"""Callbacks for `gn.fit` (`gn.callbacks`): early stopping, checkpoints, learning rate on a
plateau, a CSV log and TensorBoard event files.

A callback is an object with some of the methods below; `gn.fit(..., callbacks=[...])` calls
them in list order (the Keras protocol). Epochs and batches passed to them count from 0, as
in Keras; what a callback writes for people (file names, CSV rows, TensorBoard steps) counts
epochs from 1, like `History.epochs`, and steps from 1 (the number of steps taken).

    on_train_begin(logs)          before the first step
    on_epoch_begin(epoch, logs)
    on_batch_begin(batch, logs)
    on_batch_end(batch, logs)     logs: this step's outputs {"loss": .., "accuracy": ..}
    on_epoch_end(epoch, logs)     logs: the epoch's means and "val_*" values
    on_train_end(logs)            logs: the last epoch's values

Before `on_train_begin`, `fit` gives every callback `.run`, a `TrainingRun`: the `step`, the
parameters it trains (`run.params`), the `History` so far, the epoch and global step, and
`run.stop_training`, which a callback sets to True to end training after this epoch.

    cbs = [gn.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True),
           gn.callbacks.CSVLogger("out/log.csv"),
           gn.callbacks.TensorBoard("out/tb")]
    history = gn.fit(step, data, epochs=50, validation=val, callbacks=cbs)

TensorBoard files are written by graphnn itself (TFRecord framing, masked CRC32C, the Event
and Summary protobufs encoded by hand), so the `tensorboard` package is needed only to look
at them; `read_scalars` reads them back and checks every checksum.
"""
import csv
import math
import os
import socket
import struct
import time

import numpy as np

from .errors import GraphError, OptionError, user_location
from .nn import state_updates
from .node import Node

__all__ = ["Callback", "TrainingRun", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
           "CSVLogger", "TensorBoard", "EventFileWriter", "read_events", "read_scalars",
           "crc32c", "masked_crc32c"]


class TrainingRun:
    """What a callback sees of the training in progress (`callback.run`).

    `step` the compiled step; `params` the parameters it trains (its graph's `gn.param`
    nodes; None when the step is not a `gn.compile` result); `layer_states` the variables
    its layers update (BatchNorm's running averages, Dropout's counter); `history` the `History` (None
    before the first step); `epochs` planned; `epoch` the current epoch (0-based);
    `steps_per_epoch`; `global_step` the steps taken so far; `stop_training`: set it to True
    to stop after the current epoch.

        class StopAtLoss(gn.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                self.run.stop_training = logs["loss"] < 0.01
    """

    def __init__(self, step, epochs, steps_per_epoch):
        self.step, self.epochs, self.steps_per_epoch = step, epochs, steps_per_epoch
        graph = getattr(step, "graph", None)
        self.params = list(graph.params) if graph is not None else None
        outputs = getattr(step, "outputs", None)
        # the layers' own state the step updates: BatchNorm's running averages (what
        # inference uses), Dropout's step counter
        self.layer_states = list(state_updates(list(outputs))) if outputs else []
        self.history = None
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False


class Callback:
    """Base class of `gn.fit` callbacks: every method does nothing; override what you need.
    `self.run` is the `TrainingRun` (set by `fit` before `on_train_begin`).

        class PrintLoss(gn.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                print(epoch + 1, logs["loss"])
        gn.fit(step, data, epochs=3, callbacks=[PrintLoss()])
    """

    run = None

    def set_run(self, run):
        """Called by `fit` before `on_train_begin` with the `TrainingRun`."""
        self.run = run

    def on_train_begin(self, logs=None):
        """Before the first step."""

    def on_train_end(self, logs=None):
        """After the last epoch (or the epoch a callback stopped training at)."""

    def on_epoch_begin(self, epoch, logs=None):
        """Before the first step of epoch `epoch` (0-based)."""

    def on_epoch_end(self, epoch, logs=None):
        """After epoch `epoch` (0-based) and its validation: `logs` {name: value}."""

    def on_batch_begin(self, batch, logs=None):
        """Before step `batch` (0-based within the epoch)."""

    def on_batch_end(self, batch, logs=None):
        """After step `batch` (0-based within the epoch): `logs` the step's outputs."""


def check_callbacks(callbacks):
    """`callbacks` as a list of objects with the callback methods, or an OptionError."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise OptionError(f"fit: callbacks must be a list of callbacks, got "
                          f"{type(callbacks).__name__}; write callbacks=[cb] "
                          f"(at {user_location()})")
    for cb in callbacks:
        missing = [m for m in ("on_train_begin", "on_epoch_end", "on_batch_end")
                   if not callable(getattr(cb, m, None))]
        if missing:
            raise OptionError(f"fit: {type(cb).__name__} is not a callback (it has no "
                              f"{missing[0]}); subclass gn.callbacks.Callback "
                              f"(at {user_location()})")
    return list(callbacks)


# ---------------------------------------------------------------------------------------
# Watching a measure: shared by EarlyStopping, ModelCheckpoint and ReduceLROnPlateau


class _Monitor:
    """A measure to watch in the epoch logs, and what counts as better: lower for "min",
    higher for "max", by more than `min_delta`; "auto" is "max" for accuracies."""

    def __init__(self, owner, monitor, mode, min_delta):
        if not isinstance(monitor, str) or not monitor:
            raise OptionError(f"{owner}: monitor must be the name of a measure such as "
                              f"'val_loss', got {monitor!r:.60} (at {user_location()})")
        if mode not in ("auto", "min", "max"):
            raise OptionError(f"{owner}: mode must be 'auto', 'min' or 'max', got "
                              f"{mode!r:.60} (at {user_location()})")
        _check_number(owner, "min_delta", min_delta, low=0)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.owner, self.monitor, self.mode = owner, monitor, mode
        self.min_delta = float(abs(min_delta))

    def initial(self):
        return math.inf if self.mode == "min" else -math.inf

    def value(self, logs):
        if self.monitor not in (logs or {}):
            hint = " (pass validation= to gn.fit for 'val_*' measures)" \
                if self.monitor.startswith("val_") else ""
            raise GraphError(f"{self.owner}: monitor {self.monitor!r} is not among this "
                             f"epoch's results {sorted(logs or {})}{hint} "
                             f"(at {user_location()})")
        return float(logs[self.monitor])

    def improved(self, current, best):
        """Whether `current` beats `best` by more than min_delta (NaN never does)."""
        if self.mode == "min":
            return current < best - self.min_delta
        return current > best + self.min_delta


def _check_number(owner, name, value, low=None, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and low is not None:
        ok = value >= low
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f" >= {low}" if low is not None else ""
        raise OptionError(f"{owner}: {name} must be {kind}{bound}, got {value!r:.60} "
                          f"(at {user_location()})")
    return int(value) if integer else float(value)


def _run_params(owner, params, run):
    """The parameters a callback reads and writes: its own `params=`, else the step's."""
    if params is not None:
        return params
    if run.params is None:
        raise OptionError(f"{owner}: the step is not a gn.compile result, so its parameters "
                          f"are unknown; pass params=[...] (the gn.param nodes) "
                          f"(at {user_location()})")
    return run.params


def _check_nodes(owner, params):
    if params is None:
        return None
    if isinstance(params, Node) or not isinstance(params, (list, tuple)) or \
            not all(isinstance(p, Node) and p.op in ("param", "variable") for p in params):
        raise OptionError(f"{owner}: params must be a list of gn.param or gn.variable nodes, "
                          f"got {params!r:.80} (at {user_location()})")
    return list(params)


# ---------------------------------------------------------------------------------------
# EarlyStopping


class EarlyStopping(Callback):
    """Stop training when `monitor` has not improved for `patience` epochs.

    An epoch improves when its value beats the best so far by more than `min_delta` (lower
    is better for mode "min", higher for "max"; "auto" picks "max" for names containing
    "acc"). After `patience` epochs in a row without improvement, training stops after that
    epoch (`patience=0`: at the first epoch that does not improve). With
    `restore_best_weights=True` the parameters get back, at the end of training (stopped
    early or not), their values from the end of the best epoch; `params=` chooses which
    nodes (default: the step's `gn.param`s and its layers' state, `run.layer_states`:
    BatchNorm's running averages, which Keras restores with the weights too).
    Afterwards `best`, `best_epoch` and `stopped_epoch` (1-based; 0: did not stop) tell what
    happened.

        stop = gn.callbacks.EarlyStopping("val_loss", patience=5, restore_best_weights=True)
        gn.fit(step, data, epochs=100, validation=val, callbacks=[stop])
        stop.best_epoch, stop.stopped_epoch
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, params=None):
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor = monitor
        self.patience = _check_number("EarlyStopping", "patience", patience, 0, True)
        self.restore_best_weights = bool(restore_best_weights)
        self.params = _check_nodes("EarlyStopping", params)
        self._reset()

    def _reset(self):
        self.wait, self.best_epoch, self.stopped_epoch = 0, 0, 0
        self.best = self._monitor.initial()
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self._reset()
        if self.restore_best_weights:
            self._nodes = _run_params("EarlyStopping", self.params, self.run)
            if self.params is None:  # the model's weights include BatchNorm's averages
                self._nodes = self._nodes + [v for v in self.run.layer_states
                                             if all(v is not p for p in self._nodes)]

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitor.value(logs)
        if self._monitor.improved(current, self.best):
            self.best, self.best_epoch, self.wait = current, epoch + 1, 0
            if self.restore_best_weights:
                self.best_weights = [np.array(p.value, copy=True) for p in self._nodes]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch + 1
            self.run.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            for p, value in zip(self._nodes, self.best_weights):
                p.value = value


# ---------------------------------------------------------------------------------------
# ModelCheckpoint


class ModelCheckpoint(Callback):
    """Save the model with `gn.save` every `every` epochs, or only when `monitor` improved.

    `path` may hold `{epoch}` (1-based) and the names of the epoch's results as format
    fields, e.g. "ckpt/model-{epoch:03d}-{val_loss:.3f}.json"; without fields each save
    replaces the last. What is saved is the graph of `outputs` (default: the step's outputs,
    e.g. [loss, accuracy], which reach every parameter) with the parameters' values at the
    end of that epoch; `gn.load(path).params` reads them back. With `save_best_only=True`
    a checkpoint is written only when `monitor` beats the best value of the earlier
    checkpoint epochs (see `EarlyStopping` for `mode` and `min_delta`). `.saved` lists
    (epoch, path) of every file written.

        ckpt = gn.callbacks.ModelCheckpoint("out/ckpt/epoch{epoch}.json", every=5)
        best = gn.callbacks.ModelCheckpoint("out/best.json", save_best_only=True)
        gn.fit(step, data, epochs=20, validation=val, callbacks=[ckpt, best])
        g = gn.load("out/best.json"); g.params[0].value
    """

    def __init__(self, path, every=1, save_best_only=False, monitor="val_loss", mode="auto",
                 min_delta=0.0, outputs=None):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise OptionError(f"ModelCheckpoint: path must be a file path, got {path!r:.60} "
                              f"(at {user_location()})")
        self.path = os.fspath(path)
        if self.path.endswith(".npz"):
            raise OptionError(f"ModelCheckpoint: {self.path!r} is the name of the arrays "
                              f"file; give the .json path (at {user_location()})")
        self.every = _check_number("ModelCheckpoint", "every", every, 1, True)
        self.save_best_only = bool(save_best_only)
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode, min_delta)
        if outputs is not None and not isinstance(outputs, (Node, list, tuple)):
            raise OptionError(f"ModelCheckpoint: outputs must be a node or a list of nodes, "
                              f"got {type(outputs).__name__} (at {user_location()})")
        self.outputs = outputs
        self.saved = []
        self.best = self._monitor.initial()

    def on_train_begin(self, logs=None):
        self.best = self._monitor.initial()
        if self.outputs is None and getattr(self.run.step, "outputs", None) is None:
            raise OptionError(f"ModelCheckpoint: the step is not a gn.compile result; pass "
                              f"outputs= (the nodes whose graph to save) "
                              f"(at {user_location()})")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if self.save_best_only:
            current = self._monitor.value(logs)
            if not self._monitor.improved(current, self.best):
                return
            self.best = current
        from .serialize import save
        path = self._format_path(epoch, logs or {})
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        outputs = self.outputs if self.outputs is not None else list(self.run.step.outputs)
        save(outputs, path)
        self.saved.append((epoch + 1, path))

    def _format_path(self, epoch, logs):
        try:
            return self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise OptionError(f"ModelCheckpoint: cannot fill in the path {self.path!r} "
                              f"({type(exc).__name__}: {exc}); its fields may be {{epoch}} "
                              f"and {sorted(logs)} (at {user_location()})") from None


# ---------------------------------------------------------------------------------------
# ReduceLROnPlateau


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has not improved for
    `patience` epochs (Keras' rule, including `cooldown` epochs after a reduction during
    which no epoch counts as waiting), never below `min_lr`.

    `lr` is the learning rate the optimizer reads: a scalar `gn.variable`, or the optimizer
    itself when its `lr` is one. The step reads the variable at every call, so the next step
    uses the new rate, without compiling again. A number (a constant compiled into the step)
    or a schedule cannot be changed and is refused. `.reductions` lists (epoch, new rate).

        lr = gn.variable("lr", 0.1)
        opt = gn.optim.SGD(lr=lr, momentum=0.9)
        step = gn.compile(loss, updates=opt.updates(loss, params))
        plateau = gn.callbacks.ReduceLROnPlateau(lr, factor=0.5, patience=2, min_lr=1e-4)
        gn.fit(step, data, epochs=30, validation=val, callbacks=[plateau])
        lr.value, plateau.reductions
    """

    def __init__(self, lr, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4,
                 mode="auto", cooldown=0, min_lr=0.0):
        self.lr = _lr_variable(lr)
        factor = _check_number("ReduceLROnPlateau", "factor", factor)
        if not 0 < factor < 1:
            raise OptionError(f"ReduceLROnPlateau: factor must be between 0 and 1 (the rate "
                              f"is multiplied by it), got {factor} (at {user_location()})")
        self.factor = factor
        self.patience = _check_number("ReduceLROnPlateau", "patience", patience, 0, True)
        self.cooldown = _check_number("ReduceLROnPlateau", "cooldown", cooldown, 0, True)
        self.min_lr = _check_number("ReduceLROnPlateau", "min_lr", min_lr, 0)
        self._monitor = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        self.monitor = monitor
        self.reductions = []
        self._reset()

    def _reset(self):
        self.wait, self.cooldown_counter = 0, 0
        self.best = self._monitor.initial()

    def on_train_begin(self, logs=None):
        self._reset()
        graph = getattr(self.run.step, "graph", None)
        if graph is not None and not any(v is self.lr for v in graph.variables):
            raise OptionError(f"ReduceLROnPlateau: the step does not read the learning rate "
                              f"{self.lr.label()}; give the variable the optimizer was made "
                              f"with (at {user_location()})")

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitor.value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._monitor.improved(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.lr.value)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    self.lr.value = np.asarray(new, self.lr.dtype)
                    self.reductions.append((epoch + 1, float(self.lr.value)))
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


def _lr_variable(lr):
    """The scalar gn.variable behind `lr` (a variable, or an optimizer holding one)."""
    shown = lr
    if not isinstance(lr, Node) and hasattr(lr, "lr") and hasattr(lr, "updates"):
        shown = f"{type(lr).__name__}(lr={lr.lr!r:.40})"
        lr = lr.lr
    if isinstance(lr, Node) and lr.op == "variable" and lr.shape == () and \
            lr.dtype.kind == "f":
        return lr
    if isinstance(shown, Node):
        shown = shown.label()
    elif not isinstance(shown, str):
        shown = f"{shown!r:.80}"
    raise OptionError(f"ReduceLROnPlateau: the learning rate must be a scalar gn.variable "
                      f"that the optimizer reads, e.g. lr = gn.variable('lr', 0.1); "
                      f"gn.optim.SGD(lr=lr); got {shown}: a number or a constant is "
                      f"compiled into the step and cannot change (at {user_location()})")


# ---------------------------------------------------------------------------------------
# CSVLogger


class CSVLogger(Callback):
    """Write one row per epoch to a CSV file: "epoch" (1-based), then every result of the
    epoch (the step's outputs' means, then "val_*"), full float precision. The columns
    come from the first epoch; `append=True` adds to an existing file (without a second
    header). The file is flushed after every row.

        gn.fit(step, data, epochs=10, validation=val,
               callbacks=[gn.callbacks.CSVLogger("out/training.csv")])
        # epoch,loss,accuracy,val_loss,val_accuracy
        # 1,0.6931...,0.52,...
    """

    def __init__(self, path, separator=",", append=False):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise OptionError(f"CSVLogger: path must be a file path, got {path!r:.60} "
                              f"(at {user_location()})")
        self.path, self.separator, self.append = os.fspath(path), separator, bool(append)
        self.columns = None
        self._file = self._writer = None

    def on_train_begin(self, logs=None):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        existing = self.append and os.path.exists(self.path) and os.path.getsize(self.path)
        self.columns = None
        if existing:
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.columns = next(csv.reader(fh, delimiter=self.separator), None)
        self._file = open(self.path, "a" if self.append else "w", newline="",
                          encoding="utf-8")
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.columns is None:
            self.columns = ["epoch"] + list(logs)
            self._writer.writerow(self.columns)
        row = {"epoch": epoch + 1, **{k: repr(float(v)) for k, v in logs.items()}}
        self._writer.writerow([row.get(c, "") for c in self.columns])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


# ---------------------------------------------------------------------------------------
# TensorBoard: event files written and read without tensorflow


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()  # Castagnoli polynomial, reflected


def crc32c(data):
    """The CRC-32C (Castagnoli) checksum of `data` (bytes), as TFRecord files use it.

        gn.callbacks.crc32c(b"123456789") == 0xE3069283
    """
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TFRecord's masked checksum: the CRC-32C rotated right by 15 bits plus 0xa282ead8.

        gn.callbacks.masked_crc32c(b"") == 0xA282EAD8   # the CRC of no bytes is 0
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire, payload):
    key = _varint((number << 3) | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _event(wall_time, step, file_version=None, scalars=None):
    """An Event protobuf: wall_time (1, double), step (2, int64), file_version (3, string)
    or summary (5, Summary of Values: tag (1, string), simple_value (2, float))."""
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        body += _field(3, 2, file_version.encode())
    if scalars:
        summary = b"".join(
            _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars.items())
        body += _field(5, 2, summary)
    return body


def _record(data):
    """One TFRecord: length (uint64), its masked CRC, the data, the data's masked CRC."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


class EventFileWriter:
    """Scalars to a TensorBoard event file in `directory` (made if need be), one
    `events.out.tfevents.<time>.<host>.<pid>.<n>` file per writer.

        writer = gn.callbacks.EventFileWriter("out/tb/train")
        writer.add_scalars({"loss": 0.5, "accuracy": 0.8}, step=1)
        writer.close()
    """

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}." \
               f"{os.getpid()}"
        n = 0
        while os.path.exists(os.path.join(directory, f"{stem}.{n}")):
            n += 1
        self.path = os.path.join(directory, f"{stem}.{n}")
        self._file = open(self.path, "wb")
        self._file.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, scalars, step):
        """One event at `step` (an int >= 0) holding {tag: float value}."""
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise OptionError(f"EventFileWriter: step must be an int >= 0, got {step!r:.40}")
        values = {str(tag): float(value) for tag, value in scalars.items()}
        self._file.write(_record(_event(time.time(), int(step), scalars=values)))

    def flush(self):
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()


class TensorBoard(Callback):
    """Write TensorBoard event files: scalars per epoch and per step.

    Layout as in Keras, so `tensorboard --logdir <log_dir>` draws training and validation
    on one chart: `<log_dir>/train` holds "epoch_<name>" at step = epoch (1-based) for each
    training result, and "batch_<name>" at step = the number of steps taken, every
    `update_freq` steps ("batch": every step, "epoch" or 0: none); `<log_dir>/validation`
    holds "epoch_<name>" of each "val_<name>". The files are written by graphnn (no
    tensorflow needed); `gn.callbacks.read_scalars(path)` reads them back, and the
    `tensorboard` package shows them.

        gn.fit(step, data, epochs=10, validation=val,
               callbacks=[gn.callbacks.TensorBoard("out/tb")])
        gn.callbacks.read_scalars("out/tb/train")["epoch_loss"]   # [(1, 0.69), (2, 0.41)...]
        # $ tensorboard --logdir out/tb
    """

    def __init__(self, log_dir, update_freq="batch"):
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise OptionError(f"TensorBoard: log_dir must be a directory path, got "
                              f"{log_dir!r:.60} (at {user_location()})")
        if update_freq == "batch":
            update_freq = 1
        elif update_freq == "epoch":
            update_freq = 0
        self.update_freq = _check_number("TensorBoard", "update_freq", update_freq, 0, True)
        self.log_dir = os.fspath(log_dir)
        self._train = self._validation = None

    def on_train_begin(self, logs=None):
        self._train = EventFileWriter(os.path.join(self.log_dir, "train"))
        self._validation = None

    def on_batch_end(self, batch, logs=None):
        step = self.run.global_step
        if self.update_freq and logs and step % self.update_freq == 0:
            self._train.add_scalars({f"batch_{k}": v for k, v in logs.items()}, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {f"epoch_{k}": v for k, v in logs.items() if not k.startswith("val_")}
        val = {f"epoch_{k[4:]}": v for k, v in logs.items() if k.startswith("val_")}
        self._train.add_scalars(train, epoch + 1)
        self._train.flush()
        if val:
            if self._validation is None:
                self._validation = EventFileWriter(os.path.join(self.log_dir, "validation"))
            self._validation.add_scalars(val, epoch + 1)
            self._validation.flush()

    def on_train_end(self, logs=None):
        for writer in (self._train, self._validation):
            if writer is not None:
                writer.close()


def _parse_fields(data, what):
    """The fields of a protobuf message: [(number, wire type, value)], value an int for
    varints, bytes otherwise."""
    fields, i = [], 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise GraphError(f"{what}: truncated protobuf")
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result
    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i:i + size], i + size
        elif wire == 2:
            size = varint()
            value, i = data[i:i + size], i + size
        else:
            raise GraphError(f"{what}: protobuf wire type {wire} is not supported")
        if i > len(data):
            raise GraphError(f"{what}: truncated protobuf")
        fields.append((number, wire, value))
    return fields


def read_events(path):
    """The events of one TensorBoard event file, checking both masked CRC32Cs of every
    record: a list of {"wall_time", "step", "file_version" or "scalars": {tag: value}}.
    Raises gn.GraphError naming the file and offset of a damaged or truncated record.

        events = gn.callbacks.read_events("out/tb/train/events.out.tfevents.1700000000.host.1.0")
        events[1]["step"], events[1]["scalars"]
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise GraphError(f"read_events: cannot read {path!r}: {exc.strerror} "
                         f"(at {user_location()})") from None
    events, offset = [], 0
    while offset < len(data):
        where = f"read_events {path!r}: record at byte {offset}"
        if offset + 12 > len(data):
            raise GraphError(f"{where}: truncated header")
        header = data[offset:offset + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), \
            struct.unpack("<I", data[offset + 8:offset + 12])
        if masked_crc32c(header) != header_crc:
            raise GraphError(f"{where}: the length's CRC does not match")
        start, stop = offset + 12, offset + 12 + length
        if stop + 4 > len(data):
            raise GraphError(f"{where}: truncated data ({length} bytes announced)")
        body = data[start:stop]
        if masked_crc32c(body) != struct.unpack("<I", data[stop:stop + 4])[0]:
            raise GraphError(f"{where}: the data's CRC does not match")
        events.append(_decode_event(body, where))
        offset = stop + 4
    return events


def _decode_event(body, where):
    event = {"wall_time": None, "step": 0}
    for number, wire, value in _parse_fields(body, where):
        if number == 1 and wire == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2 and wire == 0:
            event["step"] = value
        elif number == 3 and wire == 2:
            event["file_version"] = value.decode()
        elif number == 5 and wire == 2:
            scalars = event.setdefault("scalars", {})
            for vnum, vwire, val in _parse_fields(value, where):
                if vnum != 1 or vwire != 2:
                    continue
                tag, simple = None, None
                for fnum, fwire, f in _parse_fields(val, where):
                    if fnum == 1 and fwire == 2:
                        tag = f.decode()
                    elif fnum == 2 and fwire == 5:
                        simple = struct.unpack("<f", f)[0]
                if tag is not None and simple is not None:
                    scalars[tag] = simple
    return event


def read_scalars(path):
    """{tag: [(step, value), ...]} of the scalars in an event file, or in every event file
    of a directory (in file-name order), each record's CRCs checked (see `read_events`).

        gn.callbacks.read_scalars("out/tb/validation")["epoch_loss"]   # [(1, 0.52), ...]
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if "tfevents" in f)
        if not files:
            raise GraphError(f"read_scalars: no event files in {path!r} "
                             f"(at {user_location()})")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise GraphError(f"read_scalars: {path!r} is neither an event file nor a directory "
                         f"of them (at {user_location()})")
    scalars = {}
    for file in files:
        for event in read_events(file):
            for tag, value in event.get("scalars", {}).items():
                scalars.setdefault(tag, []).append((event["step"], value))
    return scalars
