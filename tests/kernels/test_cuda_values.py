"""`W.value` is never stale with the cuda back end: a step that updates parameters on the
device makes the next read copy them back (once), assignments are uploaded, `gn.save` and
other compiled functions see the current values; no explicit sync call anywhere."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS

pytestmark = pytest.mark.skipif(not simulator_enabled(), reason="simulator tier: needs "
                                "NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")
SMALL = BACKEND_OPTIONS["cuda"]

# The lecture's 2-2-2 network after one step of gradient descent (learning rate 0.5),
# the published values of the worked example
UPDATED_W1 = [[0.149780716, 0.24975114], [0.19956143, 0.29950229]]
UPDATED_W2 = [[0.35891648, 0.511301270], [0.408666186, 0.561370121]]


def _worked_example(tag):
    x = gn.input("x", (1, 2), dtype="float64")
    t = gn.input("t", (1, 2), dtype="float64")
    W1 = gn.param(f"W1_{tag}", np.array([[0.15, 0.25], [0.20, 0.30]]))
    W2 = gn.param(f"W2_{tag}", np.array([[0.40, 0.50], [0.45, 0.55]]))
    out = gn.sigmoid(gn.sigmoid(x @ W1 + 0.35) @ W2 + 0.60)
    loss = gn.sum(0.5 * gn.square(t - out))
    return loss, [W1, W2]


FEEDS = {"x": np.array([[0.05, 0.10]]), "t": np.array([[0.01, 0.99]])}


def test_after_one_sgd_step_value_holds_the_published_weights():
    loss, (W1, W2) = _worked_example("read")
    step = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W1, W2]),
                      backend="cuda", **SMALL)
    assert float(step(**FEEDS)) == pytest.approx(0.298371109, abs=1e-9)
    copied = step.stats["device_to_host"]
    np.testing.assert_allclose(W2.value, UPDATED_W2, atol=1e-8)
    np.testing.assert_allclose(W1.value, UPDATED_W1, atol=1e-8)
    assert step.stats["device_to_host"] == copied + 2  # one copy per parameter ...
    W1.value, W2.value  # noqa: B018
    assert step.stats["device_to_host"] == copied + 2  # ... and none for further reads


def test_steps_without_reads_copy_nothing_back():
    loss, params = _worked_example("loop")
    step = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, params),
                      backend="cuda", **SMALL)
    for _ in range(3):
        step(**FEEDS)
    assert step.stats["device_to_host"] == 3  # the loss of each call, no parameter
    reference_loss, reference_params = _worked_example("loop_ref")
    ref = gn.compile(reference_loss, updates=gn.optim.SGD(0.5).updates(
        reference_loss, reference_params), backend="numpy")
    for _ in range(3):
        ref(**FEEDS)
    for p, r in zip(params, reference_params):
        np.testing.assert_allclose(p.value, r.value, rtol=1e-12)


def test_an_assigned_value_is_used_by_the_next_step():
    loss, (W1, W2) = _worked_example("write")
    step = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W1, W2]),
                      backend="cuda", **SMALL)
    step(**FEEDS)
    W1.value = np.array([[0.15, 0.25], [0.20, 0.30]])  # back to the start, on the host
    W2.value = np.array([[0.40, 0.50], [0.45, 0.55]])
    step(**FEEDS)  # the same first step again
    np.testing.assert_allclose(W1.value, UPDATED_W1, atol=1e-8)
    np.testing.assert_allclose(W2.value, UPDATED_W2, atol=1e-8)


def test_save_after_a_step_writes_the_trained_values(tmp_path):
    loss, (W1, W2) = _worked_example("save")
    step = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W1, W2]),
                      backend="cuda", **SMALL)
    step(**FEEDS)
    gn.save(loss, tmp_path / "model")
    loaded = gn.load(tmp_path / "model")
    values = {p.name: p.value for p in gn.Graph(loaded).params}
    np.testing.assert_allclose(values["W1_save"], UPDATED_W1, atol=1e-8)
    np.testing.assert_allclose(values["W2_save"], UPDATED_W2, atol=1e-8)


def test_two_compiled_functions_share_a_parameter():
    loss, (W1, W2) = _worked_example("shared")
    train = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W1, W2]),
                       backend="cuda", **SMALL)
    evaluate = gn.compile(loss, backend="cuda", **SMALL)
    on_cpu = gn.compile(loss, backend="cpu")
    first = float(evaluate(**FEEDS))
    train(**FEEDS)
    after_cuda = float(evaluate(**FEEDS))  # sees the trained weights without a sync
    assert after_cuda < first
    assert float(on_cpu(**FEEDS)) == pytest.approx(after_cuda, rel=1e-12)
    # a host step on the cpu back end, then the device functions see its result
    cpu_train = gn.compile(loss, updates=gn.optim.SGD(0.5).updates(loss, [W1, W2]),
                           backend="cpu")
    cpu_train(**FEEDS)
    after_cpu = float(on_cpu(**FEEDS))
    assert after_cpu < after_cuda
    assert float(evaluate(**FEEDS)) == pytest.approx(after_cpu, rel=1e-12)
    train(**FEEDS)  # continues from the cpu step's weights
    assert float(on_cpu(**FEEDS)) == pytest.approx(float(evaluate(**FEEDS)), rel=1e-12)
    assert float(on_cpu(**FEEDS)) < after_cpu


def _residual_dense_step(backend, tag):
    """Two residual blocks with biases, SGD: the bias updates are reductions written into
    the biases, and the gradient that skips a block is accumulated by the block's gemm
    (lowering.py update_in_place and accumulate_products, shared by the compiled back ends)."""
    rng = np.random.default_rng(21)
    x = gn.input("x", (None, 4))
    params = [gn.param(f"{tag}W{k}", (0.5 * rng.standard_normal((4, 4))).astype(np.float32))
              for k in range(4)] + [gn.param(f"{tag}b{k}", np.full(4, 0.1 * k, np.float32))
                                    for k in range(3)]
    W, b = params[:4], params[4:]
    h = gn.tanh(x @ W[0] + b[0])
    h = h + gn.relu(h @ W[1] + b[1])
    h = h + gn.relu(h @ W[2] + b[2])
    loss = gn.mean(gn.square(h @ W[3]))
    kw = SMALL if backend == "cuda" else {}
    return gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, params), backend=backend,
                      **kw), params


def test_bias_updates_in_their_sums_and_residual_gemms_accumulating_agree_with_numpy():
    X = np.random.default_rng(22).standard_normal((2, 4)).astype(np.float32)
    results = {}
    for backend in ("numpy", "cuda"):
        step, params = _residual_dense_step(backend, backend)
        results[backend] = [float(step(x=X)) for _ in range(2)], [p.value.copy()
                                                                 for p in params]
    kinds = {s.out.name: type(s).__name__ for s in step.program.steps if s.out.role == "state"}
    buffer_of = {p.name: f"st{k}" for k, p in enumerate(step.state_nodes)}
    assert [kinds[buffer_of[f"cudab{k}"]] for k in range(3)] == ["Reduce"] * 3  # in place
    assert not step.program.updates
    assert any(type(s).__name__ == "Matmul" and s.beta == 1.0 and s.out.role == "temp"
               for s in step.program.steps)
    np.testing.assert_allclose(results["cuda"][0], results["numpy"][0], rtol=1e-5)
    for got, expected in zip(results["cuda"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
