"""Results and feeds never share memory in surprising ways, on every back end: a feed that
is a parameter's own array is read as it was before the step's update, and no two results
of one call are the same array or views of one another."""
import numpy as np
import pytest

import graphnn as gn
from helpers import BACKEND_OPTIONS

BACKENDS = ["numpy", "cpu", "cuda"]


def _compile(outputs, backend, **kw):
    if backend == "cuda":  # W.value on the host follows the device after every call
        kw["sync_params"] = True
    return gn.compile(outputs, backend=backend, **BACKEND_OPTIONS.get(backend, {}), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_feed_that_is_a_parameters_own_array_is_read_before_the_update(backend):
    W = gn.param(f"W_alias_{backend}", np.ones((2, 3), np.float32))
    x = gn.input("x", (3,))
    f = _compile([x, x * 2.0, gn.reshape(x, (1, 3)), x + W], backend,
                 updates={W: W * 0.5})
    got = f(x=W.value[0])  # a view of the parameter that this call halves in place
    np.testing.assert_array_equal(got[0], [1, 1, 1])
    np.testing.assert_array_equal(got[1], [2, 2, 2])
    np.testing.assert_array_equal(got[2], [[1, 1, 1]])
    np.testing.assert_array_equal(got[3], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(W.value, np.full((2, 3), 0.5))
    got = f(x=W.value[1])  # the fast path of a compiled back end
    np.testing.assert_array_equal(got[0], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(got[3], np.full((2, 3), 1.0))
    got = f(x=W.value.reshape(-1)[:3])  # a view of a view
    np.testing.assert_array_equal(got[1], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(W.value, np.full((2, 3), 0.125))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_fed_whole_to_a_step_that_updates_it(backend):
    W = gn.param(f"W_whole_{backend}", np.full((2, 2), 4.0, np.float32))
    x = gn.input("x", (2, 2))
    f = _compile(gn.sum(x) + gn.sum(W) * 0.0, backend, updates={W: W - x})
    assert float(f(x=W.value)) == 16.0
    np.testing.assert_array_equal(W.value, np.zeros((2, 2)))  # W - (old W), not W - new W


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_two_results_share_memory(backend):
    x = gn.input("x", (3,))
    e = gn.exp(x)
    outputs = [e * 2.0, e * 2.0, x, e * 1.0, e, gn.reshape(e * 3.0, (3, 1)), e * 3.0]
    f = _compile(outputs, backend)
    X = np.array([0.0, 1.0, 2.0], np.float32)
    for _ in range(3):  # the first call, then the fast path
        results = f(x=X)
        assert not any(np.shares_memory(results[i], results[j])
                       for i in range(len(results)) for j in range(i))
        assert not any(np.shares_memory(r, X) for r in results)
        results[0][...] = -1.0
        np.testing.assert_allclose(results[1], 2 * np.exp(X), rtol=1e-6)
        np.testing.assert_allclose(results[4], np.exp(X), rtol=1e-6)
        np.testing.assert_allclose(results[6], 3 * np.exp(X), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_result_does_not_share_memory_with_a_parameter(backend):
    W = gn.param(f"W_out_{backend}", np.ones(3, np.float32))
    f = _compile([W, W * 1.0], backend)
    a, b = f()
    a[...] = 7.0
    b[...] = 8.0
    np.testing.assert_array_equal(W.value, [1, 1, 1])
