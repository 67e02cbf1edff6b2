"""`gn.fit`, `gn.evaluate` and `History`: batches, names, validation, progress bar, plots,
reproducibility."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.nn import Dense, Sequential

X, Y = gn.data.moons(n=70, seed=0)


def classifier(backend="numpy", lr=0.05):
    """A fresh 2-8-2 model (same names, so the same initial weights every time)."""
    x, y = gn.input("x", (None, 2)), gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(8, "tanh"), Dense(2)])
    logits = model(x)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    accuracy = gn.metrics.accuracy(logits, y)
    step = gn.compile([loss, accuracy], updates=gn.optim.Adam(lr).updates(loss, model.params),
                      backend=backend)
    return step, model


def test_fit_returns_a_history_of_epochs_and_steps():
    step, _ = classifier()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=3, batch_size=16, progress=False)
    assert history.epochs == [1, 2, 3]
    assert history.names == ["loss", "accuracy"]
    assert len(history.history["loss"]) == 3 and len(history.seconds) == 3
    assert len(history.steps["loss"]) == 3 * 5  # 70 samples: 4 batches of 16 and one of 6
    assert history.history["loss"][-1] < history.history["loss"][0]
    # the epoch value is the batch-size weighted mean of the steps
    first = np.array(history.steps["loss"][:5])
    sizes = np.array([16, 16, 16, 16, 6])
    assert history.history["loss"][0] == pytest.approx((first * sizes).sum() / 70, rel=1e-6)
    assert history.final("accuracy") == history.history["accuracy"][-1]
    with pytest.raises(KeyError, match="val_loss"):
        history.final("val_loss")
    assert "3 epochs" in repr(history)


def test_drop_last_skips_the_partial_batch():
    step, _ = classifier()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16, drop_last=True,
                     progress=False)
    assert len(history.steps["loss"]) == 2 * 4
    with pytest.raises(gn.GraphError, match="leaves no batch"):
        gn.fit(step, {"x": X, "y": Y}, batch_size=100, drop_last=True, progress=False)


def test_same_seed_same_losses_other_seed_other_losses():
    def losses(seed):
        step, _ = classifier()
        return gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=8, seed=seed,
                      progress=False).steps["loss"]
    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_validation_uses_the_step_outputs_without_updates():
    step, model = classifier()
    history = gn.fit(step, {"x": X[:50], "y": Y[:50]}, epochs=2, batch_size=10,
                     validation={"x": X[50:], "y": Y[50:]}, progress=False)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    weights = [p.value.copy() for p in model.params]
    evaluate = gn.compile(step.outputs, backend="numpy")
    loss, accuracy = evaluate(x=X[50:], y=Y[50:])
    assert history.final("val_loss") == pytest.approx(float(loss), rel=1e-5)
    assert history.final("val_accuracy") == pytest.approx(float(accuracy))
    # batched evaluation weighs batches by size, so it equals the whole-set value
    whole = evaluate(x=X, y=Y)
    assert gn.evaluate(evaluate, {"x": X, "y": Y}, batch_size=16) == pytest.approx(
        {"loss": float(whole[0]), "accuracy": float(whole[1])}, rel=1e-5)
    for p, w in zip(model.params, weights):
        np.testing.assert_array_equal(p.value, w)  # evaluation updated nothing


def test_progress_bar_shows_epochs_loss_and_metric(capsys):
    step, _ = classifier()
    gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=32, validation={"x": X, "y": Y})
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
    assert "loss=" in err and "accuracy=" in err and "val_accuracy=" in err


def test_plain_callable_step_and_names():
    calls = []

    def step(x, y):
        calls.append(len(x))
        return np.float32(len(x))

    history = gn.fit(step, {"x": X, "y": Y}, epochs=1, batch_size=30, shuffle=False,
                     progress=False)
    assert calls == [30, 30, 10] and history.names == ["loss"]
    assert history.steps["loss"] == [30.0, 30.0, 10.0]
    with pytest.raises(gn.GraphError, match="evaluate_fn"):
        gn.fit(step, {"x": X, "y": Y}, validation={"x": X, "y": Y}, progress=False)
    with pytest.raises(gn.GraphError, match="returns 1 values but 2 names"):
        gn.fit(step, {"x": X, "y": Y}, names=["a", "b"], progress=False)


def test_fit_checks_its_data():
    step, _ = classifier()
    with pytest.raises(gn.FeedError, match="same number of samples"):
        gn.fit(step, {"x": X, "y": Y[:10]}, progress=False)
    with pytest.raises(gn.FeedError, match="must be a dict"):
        gn.fit(step, (X, Y), progress=False)
    with pytest.raises(gn.GraphError, match="batch_size"):
        gn.fit(step, {"x": X, "y": Y}, batch_size=0, progress=False)


def test_history_plot_writes_a_png(tmp_path):
    step, _ = classifier()
    history = gn.fit(step, {"x": X, "y": Y}, epochs=3, batch_size=16,
                     validation={"x": X, "y": Y}, progress=False)
    path = history.plot(tmp_path / "sub" / "curves.png", title="moons")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_fit_with_the_cpu_backend_matches_numpy():
    def run(backend):
        step, _ = classifier(backend)
        return gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16, progress=False)
    np.testing.assert_allclose(run("cpu").steps["loss"], run("numpy").steps["loss"],
                               rtol=1e-4)
