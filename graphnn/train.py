"""The training loop: `gn.fit` runs a compiled step over mini-batches, `History` keeps score.

graphnn's unit of training is the compiled step: one call runs forward, backward and the
optimizer's update graph. `fit` only slices the data into batches, calls the step, averages
what it returns and draws a progress bar (tqdm). Metrics are graph nodes compiled into the
step (see `gn.metrics`), so they cost no extra pass.

    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    acc = gn.metrics.accuracy(logits, y)
    step = gn.compile([loss, acc], updates=gn.optim.Adam(0.01).updates(loss, model.params))
    history = gn.fit(step, {"x": X_train, "y": y_train}, epochs=10, batch_size=32, seed=0,
                     validation={"x": X_test, "y": y_test})
    history.plot("out/curves.png")

Every batch is used: a last, smaller batch is fed as it is (batch dims are symbolic, so a
compiled step takes any batch size); `drop_last=True` skips it instead.

`fit(..., callbacks=[...])` calls `gn.callbacks` objects (early stopping, checkpoints, the
learning rate on a plateau, CSV and TensorBoard logs) at the Keras points. `evaluate`
returns {name: mean}. Validation and `Layer.predict` compile `inference_outputs(outputs)`:
the graph with training-only nodes (dropout, batch statistics) replaced by their inference
form, as registered with `register_inference_rule`.
"""
import contextlib
import threading
import time

import numpy as np

from .callbacks import TrainingRun, check_callbacks
from .errors import FeedError, GraphError, OptionError, user_location
from .node import Node


class History:
    """What `fit` measured. `.epochs` (1, 2, ...), `.history` {name: one value per epoch}
    (training values are batch-size weighted means over the epoch; "val_<name>" values come
    from the validation data after the epoch), `.steps` {name: one value per step}, and
    `.seconds` of training per epoch.

        history.history["loss"][-1], history.final("val_accuracy")
    """

    def __init__(self, names):
        self.names = list(names)
        self.epochs = []
        self.history = {}
        self.steps = {n: [] for n in self.names}
        self.seconds = []

    def final(self, name):
        """The last epoch's value of `name` (e.g. "loss", "val_accuracy")."""
        if name not in self.history:
            raise KeyError(f"no {name!r} in this history; it has {sorted(self.history)}")
        return self.history[name][-1]

    def _record_epoch(self, values, seconds):
        self.epochs.append(len(self.epochs) + 1)
        self.seconds.append(seconds)
        for name, value in values.items():
            self.history.setdefault(name, []).append(float(value))

    def plot(self, path, title=None):
        """Save the curves as a PNG (or any matplotlib format): one panel per measure, the
        training curve per step (faint) and per epoch, validation per epoch; a log scale when
        values span more than a factor 30. Returns the path."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from pathlib import Path

        panels = [n for n in self.names if n in self.history]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        steps_per_epoch = len(self.steps[self.names[0]]) / max(len(self.epochs), 1)
        for ax, name in zip(axes[0], panels):
            per_step = self.steps.get(name, [])
            if per_step:
                ax.plot(np.arange(1, len(per_step) + 1) / steps_per_epoch, per_step,
                        color="tab:blue", alpha=0.25, linewidth=0.8, label=f"{name} (step)")
            ax.plot(self.epochs, self.history[name], "o-", color="tab:blue", markersize=3,
                    label=f"{name} (epoch mean)")
            if f"val_{name}" in self.history:
                ax.plot(self.epochs, self.history[f"val_{name}"], "s-", color="tab:orange",
                        markersize=3, label=f"val_{name}")
            values = np.concatenate([per_step, self.history[name],
                                     self.history.get(f"val_{name}", [])])
            bounded = "acc" in name.lower() and values.max() <= 1  # accuracies: linear
            if not bounded and values.min() > 0 and values.max() / values.min() > 30:
                ax.set_yscale("log")  # losses falling by decades
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"History({len(self.epochs)} epochs: {last})"


def _output_names(fn, names):
    """Names for what `fn` returns: `names` if given, else the compiled outputs' node names
    (an unnamed first output is "loss", later ones "out<i>")."""
    if names is not None:
        return [names] if isinstance(names, str) else list(names)
    outputs = getattr(fn, "outputs", None)
    if outputs is None:
        return None  # decided from the first result
    return [o.name or ("loss" if i == 0 else f"out{i}") for i, o in enumerate(outputs)]


def _as_values(result):
    if isinstance(result, tuple):
        return [float(np.asarray(r)) for r in result]
    return [float(np.asarray(result))]


def _check_data(data, what):
    if not isinstance(data, dict) or not data:
        raise FeedError(f"{what} must be a dict {{input name: array}}, got "
                        f"{type(data).__name__} (at {user_location()})")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    sizes = {k: len(v) if v.ndim else None for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise FeedError(f"{what}: every array needs the same number of samples on axis 0, got "
                        + ", ".join(f"{k}: {s}" for k, s in sizes.items())
                        + f" (at {user_location()})")
    n = next(iter(sizes.values()))
    if n == 0:
        raise FeedError(f"{what}: the arrays hold no samples; there is nothing to compute "
                        f"(at {user_location()})")
    return arrays, n


def _check_batch_size(what, batch_size):
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or \
            batch_size < 1:
        raise OptionError(f"{what}: batch_size must be a positive int, got {batch_size!r:.60} "
                          f"(at {user_location()})")


def _batches(n, batch_size, order, drop_last):
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def evaluate(fn, data, batch_size=1024, names=None):
    """Run `fn` over `data` in batches; returns {name: batch-size weighted mean} of each of
    its outputs (exact for means over the batch, such as losses and accuracy).

    fn:    a compiled function of scalar outputs without updates, e.g.
           `gn.compile([loss, accuracy])`, or any function of the inputs returning scalars.
    data:  {input name: array}, all with the same number of samples on axis 0.
    names: names for the outputs (default: the output nodes' names; an unnamed first output
           is "loss", later ones "out<i>").

        scores = gn.evaluate(gn.compile([loss, accuracy]), {"x": X_test, "y": y_test})
        scores["loss"], scores["accuracy"]          # {"loss": 0.12, "accuracy": 0.97}
    """
    arrays, n = _check_data(data, "evaluate: data")
    _check_batch_size("evaluate", batch_size)
    values = _batched_means(fn, arrays, n, batch_size)
    names = _output_names(fn, names) or ["loss"] + [f"out{i}" for i in range(1, len(values))]
    if len(names) != len(values):
        raise GraphError(f"evaluate: the function returns {len(values)} values but "
                         f"{len(names)} names were given: {names} (at {user_location()})")
    return dict(zip(names, values))


def _batched_means(fn, arrays, n, batch_size):
    totals = None
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in arrays.items()}
        values = np.array(_as_values(fn(**chunk))) * len(next(iter(chunk.values())))
        totals = values if totals is None else totals + values
    return [float(v) for v in totals / n]


def fit(step, data, epochs=1, batch_size=32, shuffle=True, seed=0, validation=None,
        evaluate_fn=None, names=None, drop_last=False, progress=True, callbacks=None):
    """Train: call the compiled `step` on mini-batches of `data` for `epochs` epochs.

    step:        a compiled function with updates, e.g.
                 `gn.compile([loss, acc], updates=opt.updates(loss, params))`; it may return
                 one scalar (the loss) or several (loss first, then metrics).
    data:        {input name: array}, all with the same number of samples on axis 0.
    shuffle:     a new order every epoch, drawn from `np.random.default_rng(seed)`, so the
                 same seed (and the same initial parameters) gives the same losses.
    validation:  {input name: array} evaluated after each epoch as "val_<name>".
    evaluate_fn: the validation function (any function of the inputs returning scalars,
                 e.g. `gn.compile([loss, acc])`); None: `step`'s outputs in inference mode
                 (`inference_outputs`: no dropout, BatchNorm's running averages) compiled
                 again WITHOUT the updates, same backend.
    names:       names of the step's outputs (default: the output nodes' names).
    progress:    a tqdm bar per epoch showing the running loss and metrics; while the first
                 call compiles it says "compiling…" with the elapsed time.
    callbacks:   a list of `gn.callbacks` objects (EarlyStopping, ModelCheckpoint,
                 ReduceLROnPlateau, CSVLogger, TensorBoard, or your own `Callback`).

    Returns a `History`, also when a callback stopped training early.

        stop = gn.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True)
        history = gn.fit(step, {"x": X, "y": y}, epochs=50, batch_size=32,
                         validation={"x": X_val, "y": y_val}, callbacks=[stop])
    """
    arrays, n = _check_data(data, "fit: data")
    _check_batch_size("fit", batch_size)
    if drop_last and n < batch_size:
        raise GraphError(f"fit: drop_last=True with {n} samples and batch_size {batch_size} "
                         f"leaves no batch (at {user_location()})")
    callbacks = check_callbacks(callbacks)
    names = _output_names(step, names)
    val_names = None  # the validation function's names; None: the step's
    if validation is not None:
        val_arrays, val_n = _check_data(validation, "fit: validation")
        if evaluate_fn is None:
            evaluate_fn = _evaluator_for(step)
        else:
            val_names = _output_names(evaluate_fn, None)
    rng = np.random.default_rng(seed)
    steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    run = TrainingRun(step, epochs, steps_per_epoch)
    for cb in callbacks:
        cb.set_run(run)
    for cb in callbacks:
        cb.on_train_begin({})
    history, results = None, {}
    for epoch in range(epochs):
        run.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        order = rng.permutation(n) if shuffle else np.arange(n)
        batches = list(_batches(n, batch_size, order, drop_last))
        bar = _progress_bar(len(batches), f"epoch {epoch + 1}/{epochs}", progress)
        totals, seen = None, 0
        started = time.perf_counter()
        for k, index in enumerate(batches):
            for cb in callbacks:
                cb.on_batch_begin(k, {})
            feeds = {name: a[index] for name, a in arrays.items()}
            if bar is not None and run.global_step == 0 and _compiles_on_first_call(step):
                values = _as_values(_first_call(step, feeds, bar))
            else:
                values = _as_values(step(**feeds))
            if history is None:
                names = names or ["loss"] + [f"out{i}" for i in range(1, len(values))]
                if len(names) != len(values):
                    raise GraphError(f"fit: the step returns {len(values)} values but "
                                     f"{len(names)} names were given: {names}")
                history = run.history = History(names)
            for name, value in zip(names, values):
                history.steps[name].append(value)
            weighted = np.array(values) * len(index)
            totals = weighted if totals is None else totals + weighted
            seen += len(index)
            run.global_step += 1
            if bar is not None:
                bar.update(1)
                if k % 10 == 0 or k == len(batches) - 1:
                    bar.set_postfix_str(_format(names, totals / seen), refresh=False)
            for cb in callbacks:
                cb.on_batch_end(k, dict(zip(names, values)))
        seconds = time.perf_counter() - started
        results = {name: float(v) for name, v in zip(names, totals / seen)}
        if validation is not None:
            val = _validate(evaluate_fn, val_arrays, val_n, bar)
            results.update({f"val_{name}": v for name, v in zip(val_names or names, val)})
        history._record_epoch(results, seconds)
        if bar is not None:
            bar.set_postfix_str(_format(list(results), list(results.values())))
            bar.close()
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(results))
        if run.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(dict(results))
    return history


# Ops whose inference form differs from their training form (dropout masks, batch
# statistics): op name -> rule(node, new_inputs) returning the node's inference form.
# Filled at import time by the modules that define such ops (`register_inference_rule`).
INFERENCE_RULES = {}


def register_inference_rule(op, rule):
    """Make `inference_outputs` replace every `op` node by `rule(node, new_inputs)`, its
    inference form (e.g. dropout -> its input; batch norm -> normalisation by the running
    statistics). Returns `rule`.

        register_inference_rule("dropout", lambda node, inputs: inputs[0])
    """
    INFERENCE_RULES[op] = rule
    return rule


def inference_outputs(outputs):
    """`outputs` (a list of nodes) in inference mode: every node with an inference rule
    (`register_inference_rule`) replaced by its inference form, then every
    `gn.training_branch` (Dropout, BatchNorm) by its inference value (`gn.nn.inference`),
    the rest rebuilt on top.
    What `fit` compiles for validation and `Layer.predict` for predictions; without such
    nodes, the same nodes.

        val_fn = gn.compile(inference_outputs([loss, accuracy]), backend="cpu")
    """
    from .nn import inference  # Dropout and BatchNorm: their training_branch's other value
    outputs = list(outputs)
    if INFERENCE_RULES:
        from .passes import rebuild

        def rule(node, inputs):
            form = INFERENCE_RULES.get(node.op)
            return None if form is None else form(node, inputs)
        outputs = rebuild(outputs, rule)
    return inference(outputs)


def _evaluator_for(step):
    outputs = getattr(step, "outputs", None)
    if outputs is None:
        raise GraphError(f"fit: validation needs evaluate_fn= when the step is not a "
                         f"gn.compile result (at {user_location()})")
    from .backends import compile
    return compile(inference_outputs(outputs), backend=step.backend)


def _compiles_on_first_call(step):
    """Whether calling `step` now compiles it first: a cpu function before its first call
    (Numba compiles its code, or loads it from the disk cache), a cuda function that has
    not run yet (its kernels compile at their first launch)."""
    backend = getattr(step, "backend", None)
    if backend == "cpu":
        return getattr(step, "_compiled", True) is False
    if backend == "cuda":
        return getattr(step, "stats", {}).get("host_to_device", 1) == 0
    return False


@contextlib.contextmanager
def _showing(bar, label, at_once=True):
    """While the body runs (a call that compiles, a validation), the bar reads
    "<desc>: <label> <seconds>" instead of a rate and an ETA (a helper thread redraws it
    twice a second; from the start, or with `at_once=False` only once the body has run half
    a second); afterwards the bar's own format comes back. Yields nothing."""
    saved, started = bar.bar_format, time.perf_counter()

    def show():
        seconds = bar.format_interval(time.perf_counter() - started)
        bar.bar_format = f"{{desc}}: {label} {seconds}"
        bar.refresh()

    done = threading.Event()

    def redraw():
        while not done.wait(0.5):
            show()
    if at_once:
        show()
    thread = threading.Thread(target=redraw, name="graphnn-fit-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.bar_format = saved


def _first_call(step, feeds, bar):
    """The first call of a step that compiles, shown as "compiling…" and its elapsed time;
    then the bar's clock starts again, so its rate and ETA count the steps only."""
    started = time.perf_counter()
    with _showing(bar, "compiling…"):
        result = step(**feeds)
    bar.reset(total=bar.total)
    bar.set_description_str(f"{bar.desc} (compiled in {time.perf_counter() - started:.1f} s)",
                            refresh=False)
    return result


def _validate(evaluate_fn, arrays, n, bar):
    """The validation means; the bar (if any) says "validating…" meanwhile (or "compiling
    the validation function…" at its first call) and its clock skips that time, so the
    elapsed time and rate it shows are the training steps'."""
    if bar is None:
        return _batched_means(evaluate_fn, arrays, n, 1024)
    compiles = _compiles_on_first_call(evaluate_fn)
    label = "compiling the validation function…" if compiles else "validating…"
    started = time.perf_counter()
    with _showing(bar, label, at_once=compiles):
        values = _batched_means(evaluate_fn, arrays, n, 1024)
    bar.start_t += time.perf_counter() - started
    return values


def predict(model, x, batch_size=256, backend="cpu"):
    """`model(x)` computed by a compiled inference function, batch by batch (see
    `gn.nn.Layer.predict`, which calls this). Returns a NumPy array."""
    from .nn import Layer
    if not isinstance(model, Layer):
        raise OptionError(f"predict: the model must be a gn.nn layer or Sequential, got "
                          f"{type(model).__name__} (at {user_location()})")
    _check_batch_size(f"{type(model).__name__}.predict", batch_size)
    what = f"{type(model).__name__}.predict: x"
    array = np.asarray(x) if isinstance(x, (np.ndarray, list, tuple, np.generic)) else None
    if array is None or array.dtype.kind not in "fiu" or array.ndim == 0:
        shown = f"{type(x).__name__}" if array is None else f"{array.dtype} {array.shape}"
        raise FeedError(f"{what} must be an array of numbers with the samples on axis 0, "
                        f"got {shown} (at {user_location()})")
    if len(array) == 0:
        raise FeedError(f"{what} holds no samples; there is nothing to compute "
                        f"(at {user_location()})")
    array = array.astype(_predict_dtype(model, array), copy=False)
    functions = model.__dict__.setdefault("_predict_functions", {})
    key = (array.shape[1:], array.dtype.str, backend)
    fn = functions.get(key)
    if fn is None:
        fn = functions[key] = _compile_predict(model, array, backend)
    return np.concatenate([np.asarray(fn(x=array[start:start + batch_size]))
                           for start in range(0, len(array), batch_size)])


def _predict_dtype(model, array):
    """Integer arrays stay integers (class ids for Embedding), as int32 or int64; float
    arrays take the float dtype of the model's parameters (made in the dtype of the first
    input), else stay float32/float64."""
    if array.dtype.kind in "iu":
        return array.dtype if array.dtype.name in ("int32", "int64") else np.dtype("int64")
    if model.built:
        for p in model.params:
            return p.dtype
    return array.dtype if array.dtype.name in ("float32", "float64") else np.dtype("float32")


def _compile_predict(model, array, backend):
    from . import shapes as S
    from .backends import compile
    from .node import make_node
    x = make_node("input", {"name": "x"}, (), S.make_shape((None,) + array.shape[1:]),
                  array.dtype, name="x", intern=False)
    out = model(x)
    if not isinstance(out, Node) or out.ndim == 0:
        raise GraphError(f"{type(model).__name__}.predict: the model's output must have the "
                         f"samples on axis 0, got {out!r:.80} (at {user_location()})")
    return compile(inference_outputs([out])[0], backend=backend)


def _format(names, values):
    return ", ".join(f"{n}={v:.4f}" for n, v in zip(names, values))


def _progress_bar(total, desc, progress):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
