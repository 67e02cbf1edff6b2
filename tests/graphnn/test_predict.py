"""`Layer.predict`, `gn.evaluate` results by name, and the inference-mode hook that `fit`'s
validation and `predict` compile through, against NumPy references."""
import numpy as np
import pytest

import graphnn as gn
from graphnn import train
from graphnn.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential, SimpleRNN
from helpers import BACKEND_OPTIONS

X, Y = gn.data.moons(n=70, seed=3)


def mlp_reference(model, X):
    W1, b1, W2, b2 = (p.value for p in model.params)
    return np.tanh(X @ W1 + b1) @ W2 + b2


def mlp(dtype="float32"):
    x = gn.input("x", (None, 2), dtype=dtype)
    model = Sequential([Dense(8, "tanh"), Dense(3)])
    return model, x, model(x)


# ---------------------------------------------------------------------------------------
# predict


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_predict_equals_the_compiled_forward_pass_with_a_partial_last_batch(backend):
    model, x, logits = mlp()
    whole = gn.compile(logits, backend=backend)(x=X)
    for batch_size in (16, 64, 70, 1000):  # 70 = 4 x 16 + 6; one batch; more than n
        out = model.predict(X, batch_size=batch_size, backend=backend)
        assert out.shape == (70, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(X, backend=backend), mlp_reference(model, X),
                               rtol=1e-5, atol=1e-6)
    # one compiled function per (feature shape, dtype, backend), reused
    assert len(model._predict_functions) == 1


def test_predict_on_the_cuda_simulator():
    model, x, logits = mlp()
    out = model.predict(X[:5], batch_size=2, backend="cuda")  # batches of 2, 2 and 1
    np.testing.assert_allclose(out, mlp_reference(model, X[:5]), rtol=1e-5, atol=1e-6)


def test_predict_builds_an_unbuilt_model_and_casts_float_inputs():
    model = Sequential([Dense(4, "relu"), Dense(2)])
    out = model.predict(X.astype(np.float64), batch_size=32, backend="numpy")
    assert out.dtype == np.float64  # built on float64 data: float64 parameters
    assert [p.dtype for p in model.params] == [np.float64] * 4
    W1, b1, W2, b2 = (p.value for p in model.params)
    np.testing.assert_allclose(out, np.maximum(X.astype(np.float64) @ W1 + b1, 0) @ W2 + b2,
                               rtol=1e-12)
    model32, _, _ = mlp()
    out = model32.predict(X.astype(np.float64), backend="numpy")  # cast to the params' dtype
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mlp_reference(model32, X), rtol=1e-5, atol=1e-6)


def test_predict_on_images_and_sequences():
    images = np.random.default_rng(0).standard_normal((7, 6, 6, 1)).astype(np.float32)
    cnn = Sequential([Conv2D(2, 3, padding="same", activation="relu"), MaxPool2D(2),
                      Flatten(), Dense(3)])
    whole = gn.compile(cnn(gn.input("img", (None, 6, 6, 1))), backend="numpy")(img=images)
    np.testing.assert_allclose(cnn.predict(images, batch_size=3, backend="cpu"), whole,
                               rtol=1e-5, atol=1e-6)
    sequences = np.random.default_rng(1).standard_normal((5, 4, 3)).astype(np.float32)
    rnn = SimpleRNN(6)
    out = rnn.predict(sequences, batch_size=2, backend="numpy")
    Wx, Wy, b = (p.value for p in rnn.params)
    h = np.zeros((5, 6), np.float32)
    for t in range(4):
        h = np.tanh(sequences[:, t] @ Wx + h @ Wy + b)
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-6)


def test_predict_errors():
    model, _, _ = mlp()
    with pytest.raises(gn.OptionError, match="Sequential.predict: batch_size"):
        model.predict(X, batch_size=0)
    with pytest.raises(gn.FeedError, match="holds no samples"):
        model.predict(X[:0])
    with pytest.raises(gn.FeedError, match="array of numbers.*got str"):
        model.predict("data")
    with pytest.raises(gn.ShapeError):
        model.predict(np.ones((4, 5), np.float32), backend="numpy")  # 5 features, not 2
    with pytest.raises(gn.BackendError, match="unknown backend"):
        model.predict(X, backend="tpu")


# ---------------------------------------------------------------------------------------
# evaluate


def test_evaluate_returns_results_by_name_equal_to_numpy():
    model, x, logits = mlp()
    y = gn.input("y", (None,), dtype="int64")
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    accuracy = gn.metrics.accuracy(logits, y)
    fn = gn.compile([loss, accuracy], backend="cpu")
    z = mlp_reference(model, X).astype(np.float64)
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected_loss = -log_softmax[np.arange(len(Y)), Y].mean()
    expected_accuracy = (z.argmax(1) == Y).mean()
    for batch_size in (7, 32, 1024):
        scores = gn.evaluate(fn, {"x": X, "y": Y}, batch_size=batch_size)
        assert list(scores) == ["loss", "accuracy"]
        assert scores["loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert scores["accuracy"] == pytest.approx(expected_accuracy, rel=1e-6)  # float32 mean
    renamed = gn.evaluate(fn, {"x": X, "y": Y}, names=["ce", "acc"])
    assert renamed == {"ce": scores["loss"], "acc": scores["accuracy"]}
    with pytest.raises(gn.GraphError, match="returns 2 values but 1 names"):
        gn.evaluate(fn, {"x": X, "y": Y}, names=["ce"])


def test_evaluate_names_unnamed_outputs_and_plain_functions():
    x = gn.input("x", (None, 2))
    fn = gn.compile([gn.mean(x), gn.max(x)], backend="numpy")
    scores = gn.evaluate(fn, {"x": X}, batch_size=70)
    assert scores == pytest.approx({"loss": X.mean(), "out1": X.max()}, rel=1e-6)
    plain = gn.evaluate(lambda x: (np.float32(len(x)), np.float32(1)), {"x": X},
                        batch_size=30)
    # batch-size weighted means: (30*30 + 30*30 + 10*10) / 70
    assert plain == {"loss": pytest.approx(1900 / 70), "out1": pytest.approx(1.0)}


# ---------------------------------------------------------------------------------------
# inference mode: what fit's validation and predict compile


@pytest.fixture
def doubled_in_training(monkeypatch):
    """An op that doubles its input in training and is the identity in inference."""
    double = gn.define_elementwise("test_train_double", lambda x: x * 2,
                                   lambda g, out, x: (lambda: g * 2,), "{0} * {T}(2)")
    monkeypatch.setitem(train.INFERENCE_RULES, "test_train_double",
                        lambda node, inputs: inputs[0])
    yield double
    gn.unregister_op("test_train_double")


def test_validation_and_predict_compile_the_inference_form(doubled_in_training):
    x = gn.input("x", (None, 2))
    y = gn.input("y", (None,), dtype="int64")
    model = Sequential([Dense(4, "tanh"), Dense(2)])
    logits = model(x)
    loss = gn.softmax_cross_entropy(doubled_in_training(logits), y, name="loss")
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, model.params),
                      backend="numpy")
    history = gn.fit(step, {"x": X, "y": Y}, epochs=1, batch_size=70, progress=False,
                     validation={"x": X, "y": Y})
    inference = gn.compile(gn.softmax_cross_entropy(logits, y), backend="numpy")
    training = gn.compile(loss, backend="numpy")
    assert history.final("val_loss") == pytest.approx(float(inference(x=X, y=Y)), rel=1e-6)
    assert float(training(x=X, y=Y)) != pytest.approx(float(inference(x=X, y=Y)), rel=1e-3)
    # predict of a layer that doubles in training: the inference form (no doubling)

    class Doubling(Dense):
        def forward(self, x):
            return doubled_in_training(super().forward(x))
    layer = Doubling(3)
    out = layer.predict(X, backend="cpu")
    W, b = (p.value for p in layer.params)
    np.testing.assert_allclose(out, X @ W + b, rtol=1e-5, atol=1e-6)
    assert train.inference_outputs([loss])[0] is not loss
    assert train.inference_outputs([inference.outputs[0]])[0] is inference.outputs[0]
