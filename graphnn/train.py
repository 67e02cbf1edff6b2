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
"""
import time

import numpy as np

from .errors import FeedError, GraphError, OptionError, user_location


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


def evaluate(fn, data, batch_size=1024):
    """Run `fn` (a compiled function of scalar outputs, no updates) over `data` in batches;
    returns the batch-size weighted mean of each output, a list (exact for means such as
    losses and accuracy)."""
    arrays, n = _check_data(data, "evaluate: data")
    _check_batch_size("evaluate", batch_size)
    totals = None
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in arrays.items()}
        values = np.array(_as_values(fn(**chunk))) * len(next(iter(chunk.values())))
        totals = values if totals is None else totals + values
    return list(totals / n)


def fit(step, data, epochs=1, batch_size=32, shuffle=True, seed=0, validation=None,
        evaluate_fn=None, names=None, drop_last=False, progress=True):
    """Train: call the compiled `step` on mini-batches of `data` for `epochs` epochs.

    step:        a compiled function with updates, e.g.
                 `gn.compile([loss, acc], updates=opt.updates(loss, params))`; it may return
                 one scalar (the loss) or several (loss first, then metrics).
    data:        {input name: array}, all with the same number of samples on axis 0.
    shuffle:     a new order every epoch, drawn from `np.random.default_rng(seed)`, so the
                 same seed (and the same initial parameters) gives the same losses.
    validation:  {input name: array} evaluated after each epoch as "val_<name>", with
                 `evaluate_fn`, or when that is None with `step`'s outputs compiled again
                 in inference mode (`gn.nn.inference`: no dropout, BatchNorm's running
                 averages) and WITHOUT the updates (same backend).
    names:       names of the step's outputs (default: the output nodes' names).
    progress:    a tqdm bar per epoch showing the running loss and metrics.

    Returns a `History`.
    """
    arrays, n = _check_data(data, "fit: data")
    _check_batch_size("fit", batch_size)
    if drop_last and n < batch_size:
        raise GraphError(f"fit: drop_last=True with {n} samples and batch_size {batch_size} "
                         f"leaves no batch (at {user_location()})")
    names = _output_names(step, names)
    if validation is not None:
        _check_data(validation, "fit: validation")
        if evaluate_fn is None:
            evaluate_fn = _evaluator_for(step)
    rng = np.random.default_rng(seed)
    history = None
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        batches = list(_batches(n, batch_size, order, drop_last))
        bar = _progress_bar(len(batches), f"epoch {epoch + 1}/{epochs}", progress)
        totals, seen = None, 0
        started = time.perf_counter()
        for k, index in enumerate(batches):
            feeds = {name: a[index] for name, a in arrays.items()}
            values = _as_values(step(**feeds))
            if history is None:
                names = names or ["loss"] + [f"out{i}" for i in range(1, len(values))]
                if len(names) != len(values):
                    raise GraphError(f"fit: the step returns {len(values)} values but "
                                     f"{len(names)} names were given: {names}")
                history = History(names)
            for name, value in zip(names, values):
                history.steps[name].append(value)
            weighted = np.array(values) * len(index)
            totals = weighted if totals is None else totals + weighted
            seen += len(index)
            if bar is not None:
                bar.update(1)
                if k % 10 == 0 or k == len(batches) - 1:
                    bar.set_postfix_str(_format(names, totals / seen), refresh=False)
        seconds = time.perf_counter() - started
        results = dict(zip(names, totals / seen))
        if validation is not None:
            val = evaluate(evaluate_fn, validation)
            results.update({f"val_{name}": v for name, v in zip(names, val)})
        history._record_epoch(results, seconds)
        if bar is not None:
            bar.set_postfix_str(_format(list(results), list(results.values())))
            bar.close()
    return history


def _evaluator_for(step):
    outputs = getattr(step, "outputs", None)
    if outputs is None:
        raise GraphError(f"fit: validation needs evaluate_fn= when the step is not a "
                         f"gn.compile result (at {user_location()})")
    from .backends import compile
    from .nn import inference  # validation runs the inference graph (Dropout off, etc.)
    return compile(inference(list(outputs)), backend=step.backend)


def _format(names, values):
    return ", ".join(f"{n}={v:.4f}" for n, v in zip(names, values))


def _progress_bar(total, desc, progress):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
