"""Bad input, part 2: numbers the compiled back ends must get right (integer maxima, NaN,
masked logits, exp near float32's limit), shape rules that refuse what kernels cannot
run (whatever built the graph: user code, a saved file, the registry), declarations and
options refused with a typed error, and saving that cannot lose a model."""
import numpy as np
import pytest
from numba.core import config as numba_config

import graphnn as gn
from helpers import BACKEND_OPTIONS, location

BACKENDS = ["numpy", "cpu"] + (["cuda"] if numba_config.ENABLE_CUDASIM else [])


def compile_on(backend, outputs, **options):
    return gn.compile(outputs, backend=backend, **BACKEND_OPTIONS.get(backend, {}), **options)


def run_everywhere(outputs, **feeds):
    """{backend: results} for the same graph on every back end."""
    return {b: compile_on(b, outputs)(**feeds) for b in BACKENDS}


# ---------------------------------------------------------------------------------------
# Reductions: the identity of max for every dtype, and NaN
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint32",
                                   "float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_of_every_dtype_starts_from_its_lowest_value(backend, dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    low = info.min
    values = np.array([[low, low + 1, low + 2], [low, low, low]], dtype)
    if np.dtype(dtype).kind != "u":
        values = np.concatenate([values, np.array([[-5, -1, -7]], dtype)])
    # narrower integers than the inputs' int32/int64 come from a cast
    fed = "int64" if dtype in ("int8", "int16", "uint8", "uint32") else dtype
    x = gn.input("x", values.shape, dtype=fed)
    y = x if fed == dtype else gn.cast(x, dtype)
    outs = [gn.max(y), gn.max(y, axis=1), gn.max(y, axis=0)]
    got = compile_on(backend, outs)(x=values.astype(fed))
    for g, e in zip(got, [values.max(), values.max(axis=1), values.max(axis=0)]):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_flows_through_activations_and_reductions_as_in_numpy(backend):
    x = gn.input("x", (2, 4))
    # (the CUDA simulator runs kernels as Python, whose math.log(-1) raises)
    first = gn.mean(gn.relu(gn.log(x) if backend != "cuda" else x))
    outs = [first, gn.relu(x), gn.sign(x), gn.max(x), gn.max(x, axis=1),
            gn.max(x, axis=0), gn.maximum(x, 0.5), gn.minimum(0.5, x), gn.clip(x, -1, 1),
            gn.softplus(x), gn.leaky_relu(x), gn.abs(x), gn.ops.argmax_mask(x, axis=1)]
    feeds = {"x": np.array([[-1.0, np.nan, 3.0, 0.25], [2.0, -3.0, 0.0, np.nan]], np.float32)}
    expected = gn.compile(outs, backend="numpy")(**feeds)
    assert np.isnan(expected[0])  # mean(relu(log(-1))) and mean(relu(NaN)) are NaN, not 0
    for e, g in zip(expected, compile_on(backend, outs)(**feeds)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
        np.testing.assert_allclose(g, e, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_keeps_nan_wherever_it_is(backend):
    x = gn.input("x", (3, 5))
    rng = np.random.default_rng(0)
    for position in range(15):
        values = rng.standard_normal((3, 5)).astype(np.float32)
        values.reshape(-1)[position] = np.nan
        got = compile_on(backend, [gn.max(x), gn.max(x, axis=0), gn.max(x, axis=1)])(x=values)
        for g, e in zip(got, [values.max(), values.max(axis=0), values.max(axis=1)]):
            np.testing.assert_array_equal(g, e)


def test_relu_stays_a_float32_loop_without_double_arithmetic():
    x = gn.input("x", (None,))
    source = gn.compile(gn.relu(x), backend="cpu").source
    assert "np.float32(0)" in source and "float64" not in source


# ---------------------------------------------------------------------------------------
# Softmax cross-entropy with masked (-inf) logits
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_cross_entropy_with_masked_logits_is_finite(backend):
    z = gn.input("z", (None, 4))
    labels = gn.input("labels", (None,), dtype="int64")
    loss = gn.softmax_cross_entropy(z, labels)
    g = gn.grad(loss, [z])[0]
    logits = np.array([[0.0, -np.inf, 1.0, 2.0], [-np.inf, -np.inf, 3.0, -1.0]], np.float32)
    ys = np.array([0, 2])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -np.mean(log_p[np.arange(2), ys])
    got_loss, got_grad = compile_on(backend, [loss, g])(z=logits, labels=ys)
    np.testing.assert_allclose(got_loss, expected, rtol=1e-6)
    assert np.isfinite(got_grad).all()
    # a masked label's logit makes the loss infinite (not NaN), as in NumPy
    inf_loss = compile_on(backend, loss)(z=logits, labels=np.array([1, 2]))
    assert inf_loss == np.inf


# ---------------------------------------------------------------------------------------
# float32 exp over float32's whole finite range
# ---------------------------------------------------------------------------------------

def test_float32_exp_is_finite_wherever_float32_is():
    x = gn.input("x", (None,))
    f = gn.compile([gn.exp(x), gn.softmax(x, axis=0)], backend="cpu")
    assert "vectorisable" in f.source
    top = np.float32(88.72283)  # exp(88.72283) < FLT_MAX < exp(next float32)
    values = np.concatenate([np.linspace(88.0, top, 10_001, dtype=np.float32),
                             np.float32([88.38, 88.5, 88.7])])
    e, _ = f(x=values)
    assert np.isfinite(e).all()
    reference = np.exp(values.astype(np.float64))
    spacing = np.spacing(reference.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(e - reference) / spacing) <= 5.0
    assert f(x=np.float32([np.nextafter(top, np.float32(np.inf))]))[0][0] == np.inf
    # exp(z) / sum(exp(z)) with a sum still below FLT_MAX: as in NumPy, no inf / inf = NaN
    z = np.float32([88.5, 80.0, 70.0])
    manual = gn.compile(gn.exp(x) / gn.sum(gn.exp(x)), backend="cpu")(x=z)
    np.testing.assert_allclose(manual, np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Integer feeds are range-checked before they are narrowed
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_an_integer_feed_outside_the_inputs_dtype_is_refused_not_wrapped(backend):
    z = gn.input("z", (None, 3))
    labels = gn.input("labels", (None,), dtype="int32")
    f = compile_on(backend, gn.softmax_cross_entropy(z, labels))
    logits = np.zeros((2, 3), np.float32)
    for bad in (np.array([0, 2**32], np.int64), np.array([1, 2**31], np.uint64),
                np.array([-2**40, 0], np.int64)):
        call = location(2)
        with pytest.raises(gn.FeedError, match="outside the range of int32") as err:
            f(z=logits, labels=bad)
        assert f"call at {call}" in str(err.value)
    assert np.isfinite(f(z=logits, labels=np.array([0, 2], np.int64)))  # in range: fine
    plain = gn.input("counts", (2,), dtype="int64")
    g = compile_on(backend, plain * 2)
    with pytest.raises(gn.FeedError, match="outside the range of int64"):
        g(counts=np.array([2**63, 1], np.uint64))
