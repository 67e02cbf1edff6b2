"""The counter-based random op (`gn.random_uniform`, Philox-4x32-10 in kernels/random.py) and
`gn.nn.Dropout`: Random123's known answers, bit-identical draws on numpy, cpu and the CUDA
simulator, a new mask at every training step without recompiling, the keep rate, the
scaling of kept units, inference mode, gradients and eager steps."""
import numpy as np
import pytest

import graphnn as gn
from kernels import random as philox

from helpers import BACKEND_OPTIONS

BACKENDS = ["numpy", "cpu", "cuda"]


def _compile(outputs, backend, updates=None):
    return gn.compile(outputs, updates=updates, backend=backend,
                      **BACKEND_OPTIONS.get(backend, {}))


# Random123's known-answer tests for philox4x32_10 (kat_vectors): counter, key -> output
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_gives_random123s_known_answers(counter, key, expected):
    assert tuple(philox.philox4x32(counter, key)) == expected
    # random_bits: the block is (index low, index high, counter low, counter high) under
    # the key (seed low, seed high), and returns the first two output words
    index = counter[0] | counter[1] << 32
    step = counter[2] | counter[3] << 32
    seed = key[0] | key[1] << 32
    bits = philox.random_bits(seed, np.uint64(step), np.array([index], np.uint64), 64)
    assert int(bits[0]) == expected[0] << 32 | expected[1]


def _reference_uniform(seed, counter, shape, bits):
    """Element i: the top `bits` of Philox's first two words for (i, counter) / 2**bits,
    computed with Python integers."""
    out = []
    for i in range(int(np.prod(shape))):
        w = philox.philox4x32((i & 0xffffffff, i >> 32, counter & 0xffffffff, counter >> 32),
                              (seed & 0xffffffff, seed >> 32))
        out.append((w[0] << 32 | w[1]) >> (64 - bits))
    return np.array(out, np.float64).reshape(shape) / 2.0 ** bits


@pytest.mark.parametrize("dtype, bits", [("float32", 24), ("float64", 53)])
def test_draws_are_bit_identical_on_every_backend_and_follow_philox(dtype, bits):
    t = gn.variable("t", np.zeros((), np.float32))
    x = gn.input("x", (None, 3, 2), dtype=dtype)
    u = gn.random_uniform(t, x, seed=2 ** 40 + 17)
    assert u.shape == (None, 3, 2) and u.dtype == np.dtype(dtype)
    X = np.zeros((2, 3, 2), dtype)
    draws = {}
    for backend in BACKENDS:
        t.value = np.zeros((), np.float32)
        f = _compile(u, backend, updates={t: t + 1})
        draws[backend] = [f(x=X) for _ in range(3)]
        assert float(t.value) == 3
    for step in range(3):
        expected = _reference_uniform(2 ** 40 + 17, step, (2, 3, 2), bits)
        np.testing.assert_array_equal(draws["numpy"][step].astype(np.float64), expected)
        for backend in ("cpu", "cuda"):
            np.testing.assert_array_equal(draws[backend][step], draws["numpy"][step],
                                          err_msg=backend)
    assert not np.array_equal(draws["numpy"][0], draws["numpy"][1])


def test_a_draw_fused_into_its_consumer_is_the_same_draw():
    t = gn.variable("t", np.full((), 5.0, np.float32))
    x = gn.input("x", (4, 5))
    u = gn.random_uniform(t, x, seed=3)
    y = gn.maximum(gn.relu(x), u)  # u is computed inside this loop (no buffer)
    X = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    f = gn.compile(y, backend="cpu")
    assert "random_bits(" in f.source and "random_uniform = " not in f.source
    expected = np.maximum(np.maximum(X, 0), philox.uniform(3, 5, (4, 5), np.float32))
    np.testing.assert_array_equal(f(x=X), expected)


def _dropout_graph(rate=0.25, seed=11, shape=(None, 6)):
    x = gn.input("x", shape)
    layer = gn.nn.Dropout(rate, seed=seed)
    return x, layer, layer(x)


def test_dropout_masks_are_identical_on_every_backend_step_by_step():
    x, layer, y = _dropout_graph()
    updates = gn.nn.state_updates(y)
    assert list(updates) == [layer.counter]
    X = np.arange(1, 31, dtype=np.float32).reshape(5, 6)
    masks = {}
    for backend in BACKENDS + ["cpu library"]:
        layer.counter.value = np.zeros((), np.float32)
        if backend == "cpu library":  # kernels compiled one by one (large graphs' mode)
            f = gn.compile(y, updates=updates, backend="cpu", library=True)
            assert f.stats["mode"] == "library"
        else:
            f = _compile(y, backend, updates=updates)
        masks[backend] = [f(x=X) != 0 for _ in range(3)]
    for backend in ("cpu", "cuda", "cpu library"):
        for step in range(3):
            np.testing.assert_array_equal(masks[backend][step], masks["numpy"][step])
    # each step draws a new mask (the counter advanced): the chance that two 30-element
    # masks at keep rate 0.75 agree everywhere is below 0.63**30 ~ 1e-6
    assert not np.array_equal(masks["numpy"][0], masks["numpy"][1])
    assert not np.array_equal(masks["numpy"][1], masks["numpy"][2])
    # the mask of step k is the reference draw at counter k compared with the rate
    for step in range(3):
        expected = philox.uniform(11, step, (5, 6), np.float32) >= np.float32(0.25)
        np.testing.assert_array_equal(masks["numpy"][step], expected)


def test_keep_rate_and_scaling():
    x, layer, y = _dropout_graph(rate=0.3, seed=5, shape=(None, 1000))
    f = gn.compile(y, updates=gn.nn.state_updates(y), backend="cpu")
    X = np.ones((200, 1000), np.float32)
    kept = []
    for _ in range(2):
        out = f(x=X)
        # kept units are scaled by 1 / (1 - rate); the others are 0
        assert set(np.unique(out)) == {np.float32(0), np.float32(1 / 0.7)}
        kept.append(np.mean(out != 0))
    # 200,000 Bernoulli(0.7) draws per step: the standard deviation of the kept fraction
    # is sqrt(0.7 * 0.3 / 2e5) ~ 0.001; allow 5 of them
    for fraction in kept:
        assert abs(fraction - 0.7) < 0.005, kept
    # and the expected value of the output stays the input's (inverted dropout)
    assert abs(np.mean(out) - 1.0) < 0.01


def test_inference_turns_dropout_off_graph_rewrite_and_mode():
    x, layer, y = _dropout_graph(rate=0.5)
    assert y.op == "training_branch"
    X = np.arange(12, dtype=np.float32).reshape(2, 6)
    for backend in BACKENDS:
        np.testing.assert_array_equal(_compile(gn.nn.inference(y), backend)(x=X), X)
    infer = gn.nn.inference([y, y * 2])
    assert all(n.op != "training_branch" for n in gn.Graph(infer).nodes)
    assert gn.nn.state_updates(infer) == {}
    with gn.nn.inference_mode():
        assert layer(x) is x
        np.testing.assert_array_equal(layer(X), X)  # eagerly too
    assert gn.nn.is_training()


def test_gradient_is_the_mask_times_the_scale():
    x, layer, y = _dropout_graph(rate=0.5, seed=2)
    w = gn.input("w", (None, 6))
    loss = gn.sum(y * w)
    X = np.ones((3, 6), np.float32)
    W = np.arange(18, dtype=np.float32).reshape(3, 6)
    for backend in BACKENDS:
        layer.counter.value = np.full((), 4.0, np.float32)
        out, gx = _compile([y, gn.grad(loss, [x])[0]], backend)(x=X, w=W)
        mask = philox.uniform(2, 4, (3, 6), np.float32) >= 0.5
        np.testing.assert_array_equal(out, mask * np.float32(2))
        np.testing.assert_array_equal(gx, W * mask * np.float32(2))


def test_an_optimizer_step_advances_the_counter_without_recompiling():
    x = gn.input("x", (None, 4))
    model = gn.nn.Sequential([gn.nn.Dense(8, "relu", seed=0), gn.nn.Dropout(0.5, seed=9),
                              gn.nn.Dense(1, seed=1)])
    loss = gn.mean(model(x))
    updates = gn.optim.SGD(0.0).updates(loss, model.params)  # lr 0: only the counter moves
    counter = model.layers[1].counter
    assert updates[counter] is gn.nn.state_updates(loss)[counter]
    step = gn.compile(loss, updates=updates, backend="cpu")
    X = np.ones((8, 4), np.float32)
    losses = [float(step(x=X))]
    compiled = step._fn, step.module
    losses += [float(step(x=X)) for _ in range(3)]
    assert float(counter.value) == 4
    assert len(set(losses)) == 4  # a new mask each step: four different losses
    # the same compiled function served every step, compiled once (one signature)
    assert (step._fn, step.module) == compiled and len(step._fn.signatures) == 1


def test_the_counter_starts_again_before_float32_stops_counting():
    x, layer, y = _dropout_graph()
    f = gn.compile(y, updates=gn.nn.state_updates(y), backend="cpu")
    layer.counter.value = np.full((), 2 ** 24 - 2, np.float32)
    f(x=np.ones((1, 6), np.float32))
    assert float(layer.counter.value) == 2 ** 24 - 1
    f(x=np.ones((1, 6), np.float32))
    assert float(layer.counter.value) == 0


def test_fit_validates_in_inference_mode():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int64)
    x, y = gn.input("x", (None, 4)), gn.input("y", (None,), dtype="int64")
    model = gn.nn.Sequential([gn.nn.Dense(16, "relu", seed=0), gn.nn.Dropout(0.8, seed=1),
                              gn.nn.Dense(2, seed=2)])
    loss = gn.softmax_cross_entropy(model(x), y)
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, model.params),
                      backend="cpu")
    history = gn.fit(step, {"x": X, "y": Y}, epochs=2, batch_size=16, progress=False,
                     validation={"x": X, "y": Y})
    counter = model.layers[1].counter
    before = float(counter.value)
    inference_loss = float(gn.compile(gn.nn.inference(loss), backend="numpy")(x=X, y=Y))
    training_loss = float(gn.compile(loss, backend="numpy")(x=X, y=Y))
    assert history.final("val_loss") == pytest.approx(inference_loss, rel=1e-5)
    assert abs(training_loss - inference_loss) > 1e-3  # dropout 0.8 changes the loss
    assert float(counter.value) == before == 4  # validation updated no state


def test_eager_dropout_and_eager_step():
    layer = gn.nn.Dropout(0.5, seed=4)
    X = np.ones((3, 4), np.float32)
    first, second = layer(X), layer(X)  # eager calls train: the counter advances
    np.testing.assert_array_equal(first != 0, philox.uniform(4, 0, (3, 4), np.float32) >= 0.5)
    np.testing.assert_array_equal(second != 0, philox.uniform(4, 1, (3, 4), np.float32) >= 0.5)
    assert float(layer.counter.value) == 2
    model = gn.nn.Sequential([gn.nn.Dense(4, "tanh", seed=0), gn.nn.Dropout(0.25, seed=3),
                              gn.nn.Dense(2, seed=1)])
    step = gn.eager.step(lambda x, y: gn.softmax_cross_entropy(model(x), y), gn.optim.Adam(0.05))
    Y = np.array([0, 1, 0])
    losses = [float(step(x=X, y=Y)) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert float(model.layers[1].counter.value) == 30


@pytest.mark.parametrize("rate", [1.0, -0.1, "0.5", True])
def test_bad_rates_are_refused(rate):
    with pytest.raises(gn.GraphError, match="rate must be a number in \\[0, 1\\)"):
        gn.nn.Dropout(rate)


def test_bad_random_arguments_are_shape_errors_naming_the_op():
    t = gn.variable("t2", np.zeros(3, np.float32))
    x = gn.input("x", (2, 2))
    with pytest.raises(gn.ShapeError, match="random_uniform: the counter must be a scalar"):
        gn.random_uniform(t, x)
    with pytest.raises(gn.ShapeError, match="seed must be >= 0"):
        gn.random_uniform(gn.variable("t3", np.zeros((), np.float32)), x, seed=-1)
    with pytest.raises(gn.DTypeError, match="random numbers come in a float dtype"):
        gn.random_uniform(gn.variable("t4", np.zeros((), np.float32)),
                          gn.input("n", (2,), dtype="int64"))
    with pytest.raises(gn.GraphError, match="keyed by a gn.variable"):
        gn.training_branch(x, x, {x: x})


def test_a_saved_dropout_graph_loads_with_its_seed_and_counter(tmp_path):
    x, layer, y = _dropout_graph(rate=0.5, seed=2 ** 40 + 3)
    layer.counter.value = np.full((), 7.0, np.float32)
    gn.save(y, tmp_path / "dropout")
    loaded = gn.load(tmp_path / "dropout").outputs[0]
    X = np.ones((2, 6), np.float32)
    expected = (philox.uniform(2 ** 40 + 3, 7, (2, 6), np.float32) >= 0.5) * np.float32(2)
    np.testing.assert_array_equal(gn.compile(loaded, backend="cpu")(x=X), expected)
    np.testing.assert_array_equal(gn.compile(gn.nn.inference(loaded))(x=X), X)
    (counter,) = gn.nn.state_updates(loaded)
    assert counter.name == "dropout1/step" and float(counter.value) == 7
