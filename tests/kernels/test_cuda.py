"""The CUDA back end, tier 1: the CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1). Every op, its gradients and training steps against
backend="numpy", on tiny shapes with 32-thread blocks and 4x4 matmul tiles (the simulator
runs each GPU thread as a Python thread). Tier 2 (PTX) is in test_cuda_ptx.py, tier 3 (a
real GPU) in test_cuda_gpu.py.
"""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS, assert_backends_agree, assert_op_matches
from kernels import cuda_windows, windows

SMALL = BACKEND_OPTIONS["cuda"]  # block=32, tile=4
rng = np.random.default_rng(7)


def rand(*shape, dtype="float32", low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def on_cuda_and_numpy(build, feeds, rtol=2e-5, atol=1e-6):
    """Compare backend="cuda" with the reference backend="numpy" (no independent NumPy
    formula needed: the numpy backend's own tests pin it down)."""
    nodes = {k: gn.input(k, v.shape, dtype=v.dtype.name) for k, v in feeds.items()}
    out = build(*nodes.values())
    outs = out if isinstance(out, list) else [out]
    return assert_backends_agree(outs, feeds, backends=("cuda",), rtol=rtol,
                                 atol=atol)["cuda"]


pytestmark = pytest.mark.skipif(not simulator_enabled(), reason="simulator tier: needs "
                                "NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")


# ---------------------------------------------------------------------------------------
# Tier 1: every op in the simulator
# ---------------------------------------------------------------------------------------

BINARY = {"add": (gn.add, np.add), "sub": (gn.sub, np.subtract), "mul": (gn.mul, np.multiply),
          "div": (gn.div, np.divide), "pow": (gn.pow, np.power),
          "maximum": (gn.maximum, np.maximum), "minimum": (gn.minimum, np.minimum)}


@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op_with_broadcasting(op):
    fn, ref = BINARY[op]
    feeds = {"a": rand(3, 1, low=0.5), "b": rand(4, low=0.5)}
    assert_op_matches(fn, ref, feeds, backends=["cuda"], eager=False)


def test_binary_op_in_float64_with_a_symbolic_batch_and_a_scalar():
    feeds = {"a": rand(5, 2, dtype="float64"), "b": rand(2, dtype="float64"),
             "s": np.float64(1.5)}
    assert_op_matches(lambda a, b, s: (a * b - s) / 3.0, lambda a, b, s: (a * b - s) / 3.0,
                      feeds, shapes={"a": (None, 2)}, backends=["cuda"], eager=False)


UNARY = ["neg", "exp", "log", "sqrt", "abs", "sign", "square", "sigmoid", "tanh", "relu",
         "softplus", "step"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_op(op):
    low = 0.1 if op in ("log", "sqrt") else -3.0
    on_cuda_and_numpy(getattr(gn, op), {"x": rand(2, 5, low=low)})


def test_parametrised_activations_clip_and_cast():
    x = {"x": rand(3, 4, low=-3.0)}
    on_cuda_and_numpy(lambda x: [gn.leaky_relu(x, 0.2), gn.elu(x, 0.7),
                                 gn.clip(x, -1.0, 0.5), gn.cast(x, "float64")], x)
    labels = {"y": np.array([3, 0, 2], np.int64)}
    on_cuda_and_numpy(lambda y: [gn.cast(y, "float32"), gn.one_hot(y, 4)], labels)


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False)])
def test_reduction(op, axis, keepdims):
    on_cuda_and_numpy(lambda x: getattr(gn, op)(x, axis=axis, keepdims=keepdims),
                      {"x": rand(3, 4, 2)})


def test_reduction_longer_than_one_block_uses_the_strided_fold():
    # 70 elements over 32 threads: each thread folds three, then the shared-memory tree
    on_cuda_and_numpy(lambda x: [gn.sum(x), gn.max(x, axis=1)], {"x": rand(2, 35)})


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_with_transposes_and_ragged_tiles(ta, tb):
    a = rand(3, 5) if ta else rand(5, 3)     # 5x3 @ 3x6 with 4x4 tiles: partial tiles
    b = rand(6, 3) if tb else rand(3, 6)
    on_cuda_and_numpy(lambda a, b: (a.T if ta else a) @ (b.T if tb else b), {"a": a, "b": b})


def test_shape_ops_reshape_transpose_concat_slice_flatten():
    feeds = {"a": rand(2, 3, 2), "b": rand(2, 1, 2)}
    on_cuda_and_numpy(lambda a, b: [gn.reshape(a, (3, 4)), gn.transpose(a, (2, 0, 1)),
                                    gn.concat([a, b, a], axis=1), gn.flatten(a),
                                    gn.slice_axis(a, 1, 1, 3)], feeds)


def test_softmax_losses():
    logits = rand(4, 3)
    feeds = {"z": logits, "y": np.array([0, 2, 1, 2], np.int64),
             "p": rng.dirichlet(np.ones(3), 4).astype(np.float32)}
    on_cuda_and_numpy(lambda z, y, p: [gn.softmax(z), gn.log_softmax(z, axis=0),
                                       gn.softmax_cross_entropy(z, y),
                                       gn.softmax_cross_entropy(z, p), gn.mse(z, p),
                                       gn.binary_cross_entropy(gn.sigmoid(z), p)], feeds)


@pytest.mark.parametrize("stride,padding", [(1, "valid"), (1, "same"), (2, "same")])
def test_conv2d(stride, padding):
    feeds = {"x": rand(1, 5, 5, 2), "w": rand(3, 3, 2, 2)}
    on_cuda_and_numpy(lambda x, w: gn.conv2d(x, w, stride=stride, padding=padding), feeds)


@pytest.mark.parametrize("size,stride", [(2, None), (3, 1)])
def test_pooling(size, stride):
    on_cuda_and_numpy(lambda x: [gn.max_pool2d(x, size, stride), gn.avg_pool2d(x, size, stride)],
                      {"x": rand(1, 4, 4, 2)})


# ---------------------------------------------------------------------------------------
# Tier 1: gradients (argmax masks, zero-filled places, conv/pool gradient windows)
# ---------------------------------------------------------------------------------------

def gradients(loss_of, feeds):
    """The loss and its gradient with respect to every float feed, on cuda and numpy."""
    def build(*nodes):
        loss = loss_of(*nodes)
        return [loss] + gn.grad(loss, [n for n in nodes if n.dtype.kind == "f"])
    return on_cuda_and_numpy(build, feeds, rtol=1e-4, atol=1e-5)


def test_gradient_of_a_dense_layer_with_softmax_cross_entropy():
    feeds = {"x": rand(4, 3), "w": rand(3, 5), "b": rand(5), "y": np.array([0, 4, 2, 1])}
    gradients(lambda x, w, b, y: gn.softmax_cross_entropy(gn.tanh(x @ w + b), y), feeds)


def test_gradient_of_max_concat_slice_and_reshape():
    feeds = {"a": rand(2, 3), "b": rand(2, 2)}
    gradients(lambda a, b: gn.sum(gn.max(gn.concat([a, b], axis=1), axis=1) *
                                  gn.sum(gn.slice_axis(gn.reshape(a, (3, 2)), 0, 1, 3))), feeds)


def test_gradient_of_conv_and_pooling():
    feeds = {"x": rand(1, 6, 6, 1), "w": rand(3, 3, 1, 2)}
    gradients(lambda x, w: gn.sum(gn.max_pool2d(gn.relu(gn.conv2d(x, w, padding="same")), 2))
              + gn.mean(gn.avg_pool2d(gn.conv2d(x, w, stride=2), 2, 1)), feeds)


def test_window_gathers_equal_the_cpu_scatters():
    """The one-element-per-thread window functions, run as plain Python."""
    cuda_windows.T = np.float64
    x, w = rand(2, 5, 4, 2).astype(np.float64), rand(3, 2, 2, 3).astype(np.float64)
    g = rand(2, 3, 2, 3).astype(np.float64)     # conv output grad, stride 2, pads (1, 0)
    cases = [("conv2d", (x, w, 2, 1, 0), (2, 3, 2, 3)),
             ("conv2d_grad_input", (g, w, 2, 1, 0), x.shape),
             ("conv2d_grad_filter", (x, g, 2, 1, 0), w.shape),
             ("max_pool2d", (x, 2, 1), (2, 4, 3, 2)),
             ("max_pool2d_grad", (x, rand(2, 4, 3, 2), 2, 1), x.shape),
             ("avg_pool2d", (x, 2, 2), (2, 2, 2, 2)),
             ("avg_pool2d_grad", (rand(2, 2, 2, 2), 2, 2), x.shape)]
    for name, args, shape in cases:
        expected = np.zeros(shape)
        windows.HELPERS[name](*args, expected)
        got = np.zeros(shape)
        for index in np.ndindex(*shape):
            got[index] = cuda_windows.ELEMENT_HELPERS[name](*args, *index)
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)


def test_fused_launches_at_their_edges():
    """Launch fusion (kernels/cuda_fusion.py) where it is easy to get wrong: a reduction
    finished through a keepdims view, row kernels with two row reductions whose
    intermediate results are outputs too, a scalar step between reductions, a transposed
    matmul with an epilogue, and a row kernel whose rows outnumber the block's warps."""
    def build(x, a, b, c):
        mu = gn.mean(x, axis=1, keepdims=True)
        centred = x - mu
        norm = centred / gn.sqrt(gn.mean(gn.square(centred), axis=1, keepdims=True) + 1e-5)
        return [gn.sum(x, axis=1, keepdims=True) * 2.0 + 1.0, norm, mu,
                gn.log_softmax(x, axis=1), gn.softmax(x),
                gn.sum(x) * gn.max(x) + gn.sum(norm),
                gn.tanh(a.T @ b + c), gn.max(gn.sigmoid(a.T @ b), axis=0)]
    feeds = {"x": rand(37, 5), "a": rand(3, 4), "b": rand(3, 6), "c": rand(6)}
    on_cuda_and_numpy(build, feeds, rtol=1e-5, atol=1e-6)
    nodes = [gn.input(k, v.shape) for k, v in feeds.items()]
    f = gn.compile(build(*nodes), backend="cuda", generate_only=True, **SMALL)
    kinds = [name.split("_", 1)[1] for name in f.module.SIGNATURES]
    assert "rows" in kinds and f.stats["launches_per_call"] < f.stats["steps"]


# ---------------------------------------------------------------------------------------
# Tier 1: training steps, device-resident parameters, transfers
# ---------------------------------------------------------------------------------------

def tiny_mlp(tag):
    x = gn.input("x", (None, 3))
    y = gn.input("y", (None,), dtype="int64")
    w1 = gn.param(f"w1_{tag}", shape=(3, 4), init="glorot_uniform", seed=1)
    b1 = gn.param(f"b1_{tag}", np.zeros(4, np.float32))
    w2 = gn.param(f"w2_{tag}", shape=(4, 2), init="glorot_uniform", seed=2)
    loss = gn.softmax_cross_entropy(gn.relu(x @ w1 + b1) @ w2, y)
    return loss, [w1, b1, w2]


BATCHES = [(rand(4, 3), np.array([0, 1, 1, 0])), (rand(3, 3), np.array([1, 0, 1])),
           (rand(4, 3), np.array([1, 1, 0, 0]))]


@pytest.mark.parametrize("optimizer", [gn.optim.SGD(lr=0.5), gn.optim.SGD(lr=0.3, momentum=0.9),
                                       gn.optim.Adam(lr=0.05)], ids=["sgd", "momentum", "adam"])
def test_training_steps_match_the_numpy_backend(optimizer):
    runs = {}
    for backend in ("numpy", "cuda"):
        loss, params = tiny_mlp(backend)
        options = SMALL if backend == "cuda" else {}
        step = gn.compile(loss, updates=optimizer.updates(loss, params), backend=backend,
                          **options)
        losses = [float(step(x=x, y=y)) for x, y in BATCHES]
        if backend == "cuda":  # no parameter was copied to the host during the steps
            assert step.stats["device_to_host"] == len(BATCHES)
        runs[backend] = losses, [p.value.copy() for p in params]
    (ref_losses, ref_params), (losses, params) = runs["numpy"], runs["cuda"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] != losses[0]
    for got, expected in zip(params, ref_params):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_call_copies_feeds_in_and_outputs_out_only():
    loss, params = tiny_mlp("transfers")
    grads = gn.grad(loss, params)
    step = gn.compile([loss, grads[0]], updates=gn.optim.SGD(0.1).updates(loss, params),
                      backend="cuda", **SMALL)
    for x, y in BATCHES:
        step(x=x, y=y)
    assert step.stats["host_to_device"] == 2 * len(BATCHES)    # x and y per call
    assert step.stats["device_to_host"] == 2 * len(BATCHES)    # loss and dW1 per call
    assert step.stats["param_uploads"] == 3                    # once, at the first call
    assert len(step._temps) == 2                               # batch sizes 4 and 3


def test_params_to_host_sync_option_and_host_assignment():
    loss, (w1, b1, w2) = tiny_mlp("sync")
    start = w1.value.copy()
    step = gn.compile(loss, updates={w1: w1 - 0.5 * gn.grad(loss, [w1])[0]},
                      backend="cuda", sync_params=True, **SMALL)
    read = gn.compile(gn.sum(w1), backend="cuda", **SMALL)
    assert np.isclose(read(), start.sum())
    step(x=BATCHES[0][0], y=BATCHES[0][1])
    assert not np.array_equal(w1.value, start)                  # synced after the call
    assert np.isclose(read(), w1.value.sum(), rtol=1e-6)        # the other function re-uploads
    w1.value = np.ones((3, 4), np.float32)                      # host assignment wins
    assert np.isclose(read(), 12.0)
    assert step.stats["device_to_host"] == 2                    # loss + one param sync


def test_an_output_that_is_updated_shows_the_value_before_the_update():
    a = gn.variable("swap_a", np.array([1.0, 2.0], np.float32))
    b = gn.variable("swap_b", np.array([3.0, 4.0], np.float32))
    f = gn.compile([a, b], updates={a: b, b: a}, backend="cuda", **SMALL)
    old_a, old_b = f()
    assert old_a.tolist() == [1.0, 2.0] and old_b.tolist() == [3.0, 4.0]
    f.params_to_host()
    assert a.value.tolist() == [3.0, 4.0] and b.value.tolist() == [1.0, 2.0]


def test_source_shows_cuda_kernels_with_math_functions_and_typed_constants():
    x = gn.input("x", (2, 3))
    f = gn.compile(gn.sum(gn.sigmoid(x) * 0.5 + gn.exp(x)), backend="cuda", **SMALL)
    kernels = f.source.split("\ndef allocate(")[0]
    assert "@cuda.jit" in kernels and "cuda.shfl_sync_intrinsic(0xffffffff, 3, acc, 16, 31)[0]" in kernels
    assert "exp(" in kernels and "np." not in kernels
    assert "numba.float32(0.5)" in kernels
    assert f.stats["kernels"] == len(f.module.SIGNATURES) == 1   # all fused into the sum


def test_block_size_must_be_a_power_of_two():
    with pytest.raises(gn.BackendError, match="power of two"):
        gn.compile(gn.input("x", (2,)) * 2, backend="cuda", block=24)


def test_an_sgd_weight_update_is_accumulated_by_the_matmul_kernel():
    loss, params = tiny_mlp("accumulate")
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.5).updates(loss, params),
                      backend="cuda", **SMALL)
    lines = [line.strip() for line in step.source.splitlines()]
    assert "st0[row, col] = numba.float32(-0.5) * c0_0 + st0[row, col]" in lines
