"""Device-resident data on the cuda back end (simulator): feeds that are already device
arrays are used without a copy, `outputs_on="device"` returns device arrays, and a device
feed that does not fit its input is refused with a FeedError naming it."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS

pytestmark = pytest.mark.skipif(not simulator_enabled(), reason="simulator tier: needs "
                                "NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")
SMALL = BACKEND_OPTIONS["cuda"]
rng = np.random.default_rng(5)
X = rng.normal(size=(4, 3)).astype(np.float32)
Y = np.array([0, 2, 1, 2])


def _classifier(tag):
    x = gn.input("x", (None, 3))
    y = gn.input("y", (None,), dtype="int64")
    w = gn.param(f"w_{tag}", shape=(3, 3), init="glorot_uniform", seed=4)
    logits = x @ w
    return gn.softmax_cross_entropy(logits, y), logits, w


def _reference(w0):
    """The loss, logits and SGD step (lr 0.5) in NumPy."""
    z = X @ w0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(4), Y]))
    onehot = np.eye(3)[Y]
    return loss, z, w0 - 0.5 * X.T @ (p - onehot) / 4


def test_device_feeds_are_used_without_a_copy_and_outputs_stay_on_the_device():
    from numba import cuda
    loss, logits, w = _classifier("device")
    w0 = w.value.copy()
    step = gn.compile([loss, logits], updates={w: w - 0.5 * gn.grad(loss, [w])[0]},
                      backend="cuda", outputs_on="device", **SMALL)
    xd, yd = cuda.to_device(X), cuda.to_device(Y)
    got_loss, got_logits = step(x=xd, y=yd)
    assert not isinstance(got_loss, np.ndarray) and not isinstance(got_logits, np.ndarray)
    assert step.stats["host_to_device"] == 0           # both feeds were on the device
    assert step.stats["device_to_host"] == 1           # the labels' range check only
    ref_loss, ref_logits, ref_w = _reference(w0)
    first = got_logits.copy_to_host()
    np.testing.assert_allclose(first, ref_logits, rtol=1e-5, atol=1e-6)
    assert float(got_loss.copy_to_host()) == pytest.approx(ref_loss, rel=1e-5)
    step(x=X, y=Y)                                     # host feeds again: copied in
    assert step.stats["host_to_device"] == 2
    # the first call's outputs are copies: the second call did not overwrite them
    np.testing.assert_array_equal(got_logits.copy_to_host(), first)
    # one step from w0, device x and host y, matches the NumPy SGD step
    loss2, _, w2 = _classifier("device_one_step")
    w2.value = w0.copy()
    one = gn.compile(loss2, updates={w2: w2 - 0.5 * gn.grad(loss2, [w2])[0]},
                     backend="cuda", **SMALL)
    assert float(one(x=cuda.to_device(X), y=Y)) == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(w2.value, ref_w, rtol=1e-5, atol=1e-6)
    assert one.stats["host_to_device"] == 1            # y only


def test_a_device_feed_that_does_not_fit_is_refused():
    from numba import cuda
    loss, _, _ = _classifier("refused")
    f = gn.compile(loss, backend="cuda", **SMALL)
    with pytest.raises(gn.FeedError, match=r"feed 'x'.*device array has dtype float64"):
        f(x=cuda.to_device(X.astype(np.float64)), y=Y)
    with pytest.raises(gn.FeedError, match=r"feed 'x'.*rank 1, expected rank 2"):
        f(x=cuda.to_device(X.reshape(-1)), y=Y)
    with pytest.raises(gn.FeedError, match=r"feed 'y'.*axis 0 is 3"):
        f(x=cuda.to_device(X), y=cuda.to_device(Y[:3]))
    with pytest.raises(gn.FeedError, match=r"feed 'y'.*labels from 0 to 7"):
        f(x=cuda.to_device(X), y=cuda.to_device(np.array([0, 7, 1, 2])))
    with pytest.raises(gn.FeedError, match="missing feed 'y'"):
        f(x=cuda.to_device(X))


def test_outputs_on_is_checked_and_is_a_cuda_option_only():
    x = gn.input("x", (2,))
    with pytest.raises(gn.GraphError, match="outputs_on must be 'host' or 'device'"):
        gn.compile(x * 2, backend="cuda", outputs_on="gpu")
    with pytest.raises(gn.GraphError, match="unknown option 'outputs_on' for backend 'cpu'"):
        gn.compile(x * 2, backend="cpu", outputs_on="device")
