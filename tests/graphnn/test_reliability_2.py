"""Bad input, part 2: numbers the compiled back ends must get right (integer maxima, NaN,
masked logits, exp near float32's limit), shape rules that refuse what kernels cannot
run (whatever built the graph: user code, a saved file, the registry), declarations and
options refused with a typed error, saving that cannot lose a model, and threads calling
one compiled function."""
import os
import signal
import threading
import time

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


# ---------------------------------------------------------------------------------------
# Shape rules check every attr and input shape a kernel relies on, however the graph is built
# ---------------------------------------------------------------------------------------

def write_graph(directory, nodes, outputs, arrays=None):
    """A hand-written gn.save file pair: `nodes` as in docs/SAVE_FORMAT.md."""
    import hashlib
    import json
    path = directory / "model.json"
    np.savez(directory / "model.npz", **(arrays or {}))
    digest = hashlib.sha256((directory / "model.npz").read_bytes()).hexdigest()
    path.write_text(json.dumps({"format": "graphnn-graph", "version": 1,
                                "arrays_sha256": digest, "nodes": nodes,
                                "outputs": outputs}))
    return path


def op_record(op, inputs, shape, attrs, dtype="float32"):
    return {"op": op, "name": None, "dtype": dtype, "shape": shape, "inputs": inputs,
            "attrs": attrs}


IMAGE = {"op": "input", "name": "img", "dtype": "float32", "shape": [2, 4, 4, 1]}
BIG = {"op": "input", "name": "big", "dtype": "float32", "shape": [2, 64, 64, 1]}
KERNEL = {"op": "input", "name": "k", "dtype": "float32", "shape": [2, 2, 1, 1]}

# (what, nodes after IMAGE, BIG and KERNEL, words of the message)
HOSTILE_FILES = [
    ("avg_pool2d_grad whose adjoint is larger than the pooled image",
     [op_record("avg_pool2d_grad", [1, 0], [2, 4, 4, 1], {"size": 2, "stride": 2})],
     "the adjoint has shape (2, 64, 64, 1)"),
    ("max_pool2d_grad whose adjoint is larger than the pooled image",
     [op_record("max_pool2d_grad", [0, 1], [2, 4, 4, 1], {"size": 2, "stride": 2})],
     "the adjoint has shape"),
    ("conv2d_grad_input whose adjoint does not fit",
     [op_record("conv2d_grad_input", [1, 2, 0], [2, 4, 4, 1],
                {"stride": 1, "padding": "valid"})], "the adjoint has shape"),
    ("conv2d_grad_filter whose adjoint does not fit",
     [op_record("conv2d_grad_filter", [0, 1, 2], [2, 2, 1, 1],
                {"stride": 1, "padding": "valid"})], "the adjoint has shape"),
    ("pad_axis with a negative padding",
     [op_record("pad_axis", [0], [2, 1, 4, 1], {"axis": 1, "before": -3, "after": 0})],
     "before must be >= 0"),
    ("pad_axis on an axis out of range",
     [op_record("pad_axis", [0], [2, 4, 4, 1], {"axis": 9, "before": 1, "after": 1})],
     "axis 9 out of range"),
    ("argmax_mask on an axis out of range",
     [op_record("argmax_mask", [0], [2, 4, 4, 1], {"axis": 7})], "axis 7 is out of range"),
    ("a pooling stride of 0", [op_record("max_pool2d", [0], [2, 2, 2, 1],
                                         {"size": 2, "stride": 0})], "stride must be >= 1"),
    ("a convolution stride of -1", [op_record("conv2d", [0, 2], [2, 3, 3, 1],
                                              {"stride": -1, "padding": "valid"})],
     "stride must be >= 1"),
    ("slice_axis on an axis out of range",
     [op_record("slice_axis", [0], [2, 1, 4, 1], {"axis": -5, "start": 0, "stop": 1})],
     "out of range"),
    ("one_hot with a negative class count",
     [{"op": "input", "name": "lab", "dtype": "int64", "shape": [3]},
      op_record("one_hot", [3], [3, -1], {"classes": -1, "dtype": "float32"})], None),
]


@pytest.mark.parametrize("what, records, words", HOSTILE_FILES,
                         ids=[case[0] for case in HOSTILE_FILES])
def test_a_hand_written_file_cannot_make_a_kernel_write_out_of_bounds(tmp_path, what,
                                                                      records, words):
    path = write_graph(tmp_path, [IMAGE, BIG, KERNEL] + records, [2 + len(records)])
    with pytest.raises(gn.GraphError) as err:
        gn.load(path)
    assert f"node {2 + len(records)}" in str(err.value) or "node 4" in str(err.value)
    if words:
        assert words in str(err.value)


def test_window_gradients_built_through_the_registry_are_checked():
    from graphnn.registry import apply
    img, big = gn.input("img", (2, 4, 4, 1)), gn.input("big", (2, 64, 64, 1))
    k = gn.param("k", shape=(2, 2, 1, 1), seed=0)
    cases = [("avg_pool2d_grad", (big, img), {"size": 2, "stride": 2}),
             ("max_pool2d_grad", (img, big), {"size": 2, "stride": 2}),
             ("conv2d_grad_input", (big, k, img), {"stride": 1, "padding": "valid"}),
             ("conv2d_grad_filter", (img, big, k), {"stride": 1, "padding": "valid"}),
             ("conv2d_grad_input", (img, k, img), {"stride": 1.5, "padding": "valid"}),
             ("pad_axis", (img,), {"axis": 1, "before": 2.5, "after": 0}),
             ("transpose", (img,), {"axes": (0.0, 1.0, 2.0, 3.0)}),
             ("reshape", (img,), {"shape": (-2, -16)}),
             ("sum", (img,), {"axis": 1, "keepdims": "yes"}),
             ("clip", (img,), {"low": "0", "high": 1.0})]
    for op, args, attrs in cases:
        with pytest.raises(gn.ShapeError, match=op):
            apply(op, args, attrs)
    # the gradients graphnn builds itself still pass
    x = gn.input("x", (None, 6, 6, 2))
    w = gn.param("w", shape=(3, 3, 2, 4), seed=0)
    for padding, stride in (("valid", 1), ("same", 2)):
        y = gn.avg_pool2d(gn.max_pool2d(gn.conv2d(x, w, stride, padding), 1), 1)
        assert len(gn.grad(gn.sum(y), [x, w])) == 2


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_argmax_mask_axis_is_checked_when_declared(backend):
    x = gn.input("x", (2, 3))
    with pytest.raises(gn.ShapeError, match="axis 2 is out of range for rank 2"):
        gn.ops.argmax_mask(x, axis=2)
    got = compile_on(backend, gn.ops.argmax_mask(x, axis=-1))(
        x=np.float32([[1, 3, 2], [5, 4, 5]]))
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 0, 0]])


# ---------------------------------------------------------------------------------------
# Saving over a model cannot lose it; loading never allocates what a header merely claims
# ---------------------------------------------------------------------------------------

def _model(value):
    x = gn.input("x", (None, 2))
    W = gn.param("W", np.full((2, 1), value, np.float32))
    return x @ W, W


def _weight_of(path):
    graph = gn.load(path)
    return float(graph.params[0].value[0, 0])


@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_save_that_fails_midway_leaves_a_model_that_loads(tmp_path, monkeypatch, failing_call):
    import os
    path = tmp_path / "model.json"
    y, _ = _model(1.0)
    gn.save(y, path)
    y2, _ = _model(2.0)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        gn.save(y2, path)
    monkeypatch.setattr(os, "replace", real_replace)
    # a crash before the switch keeps the old model (and leaves no temporary file); a crash
    # after it gives the new one
    assert _weight_of(path) == (1.0 if failing_call == 1 else 2.0)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["model.json", "model.npz"], left


def test_a_save_killed_between_its_writes_leaves_a_model_that_loads(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "model.json"
    y, _ = _model(1.0)
    gn.save(y, path)
    # the process dies (os._exit) right after the first of its two renames
    script = f"""
import os, sys, numpy as np, graphnn as gn
real = os.replace
def replace(src, dst):
    real(src, dst)
    os._exit(3)
os.replace = replace
x = gn.input("x", (None, 2))
W = gn.param("W", np.full((2, 1), 2.0, np.float32))
gn.save(x @ W, {str(path)!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert done.returncode == 3, done.stderr
    assert _weight_of(path) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.npz"]


def test_load_never_allocates_an_array_a_header_only_claims(tmp_path):
    import hashlib
    import io
    import json
    import tracemalloc
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**29,)})
    npz = tmp_path / "model.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("node0.npy", header.getvalue() + b"\0" * 64)
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    path = tmp_path / "model.json"
    path.write_text(json.dumps({
        "format": "graphnn-graph", "version": 1, "arrays_sha256": digest,
        "nodes": [{"op": "const", "name": None, "dtype": "float32", "shape": [2**29]}],
        "outputs": [0]}))
    assert npz.stat().st_size < 400
    tracemalloc.start()
    try:
        with pytest.raises(gn.GraphError, match="claims shape"):
            gn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak  # not the 2 GiB the header claims


# ---------------------------------------------------------------------------------------
# Rendering never crashes on a name
# ---------------------------------------------------------------------------------------

HOSTILE_NAMES = ["nul\0byte", "bell\x07 and escape\x1b[31m", "lone \udc80 surrogate",
                 "line\u2028separator", "x" * 20_000, "<b>&amp;\"quotes'</b>\n{}|"]


@pytest.mark.parametrize("fmt", ["dot", "svg"])
def test_render_draws_any_name(tmp_path, fmt):
    import shutil
    import visualize
    if fmt != "dot" and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    x = gn.input(HOSTILE_NAMES[0], (None, 3))
    W = gn.param(HOSTILE_NAMES[1], shape=(3, 2), seed=0)
    y = gn.relu(x @ W, name=HOSTILE_NAMES[2])
    z = gn.sum(gn.tanh(y, name=HOSTILE_NAMES[3]), name=HOSTILE_NAMES[4])
    out = gn.mul(z, 2.0, name=HOSTILE_NAMES[5])
    path = visualize.render(out, tmp_path / f"g.{fmt}", show_names=True,
                            kernels=[{"name": HOSTILE_NAMES[0] * 3, "nodes": [y]}])
    text = open(path, encoding="utf-8").read()
    assert "\0" not in text and "\udc80" not in text and "x" * 200 not in text
    assert "nul\\x00byte" in text and "\\udc80" in text


# ---------------------------------------------------------------------------------------
# Ordinary mistakes: a typed GraphError naming the argument and the caller's line
# ---------------------------------------------------------------------------------------

def _mistakes():
    W = gn.param("W", shape=(2, 2), seed=0)
    x = gn.input("x", (None, 2))
    n = gn.input("n", (None,), dtype="int32")
    loss = gn.mean(x @ W)
    f = gn.compile(loss, backend="numpy")
    step = gn.compile(loss, backend="numpy", updates=gn.optim.SGD(0.1).updates(loss, [W]))
    return [
        (lambda: setattr(W, "value", np.array([["1", "2"], ["3", "4"]])), gn.DTypeError, "<U1"),
        (lambda: setattr(W, "value", [[1.0, 2.0], [3.0]]), gn.ShapeError, "cannot be turned"),
        (lambda: setattr(W, "value", np.full((2, 2), None)), gn.DTypeError, "object"),
        (lambda: setattr(W, "value", np.ones((2, 2), complex)), gn.DTypeError, "complex128"),
        (lambda: gn.sum(x, axis=1.0), gn.ShapeError, "axis must be"),
        (lambda: gn.elu(x, None), gn.ShapeError, "alpha must be a number"),
        (lambda: gn.cast(x, "floaty"), gn.DTypeError, "dtype='floaty'"),
        (lambda: gn.cast(x, np.float16), gn.DTypeError, "float16"),
        (lambda: gn.cast(x, "datetime64"), gn.DTypeError, "datetime64"),
        (lambda: gn.cast(x, object), gn.DTypeError, "object"),
        (lambda: gn.const(np.ones(2, np.float16)), gn.DTypeError, "float16"),
        (lambda: gn.param("H", np.ones(2, np.float16)), gn.DTypeError, "float16"),
        (lambda: gn.param("V", shape=(2,), seed="abc"), gn.OptionError, "seed"),
        (lambda: gn.optim.Adam().updates(loss, W), gn.OptionError, "write [W]"),
        (lambda: gn.evaluate(f, {"x": np.ones((3, 2))}, batch_size=0), gn.OptionError,
         "batch_size"),
        (lambda: gn.fit(step, {"x": np.ones((0, 2))}, progress=False), gn.FeedError,
         "no samples"),
        (lambda: n * 2**40, gn.DTypeError, "does not fit in int32"),
        (lambda: gn.conv2d(gn.input("im", (1, 4, 4, 1)), gn.param("K", shape=(2, 2, 1, 1)),
                           stride=1.5), gn.ShapeError, "stride must be an int, got 1.5"),
        (lambda: gn.max_pool2d(gn.input("im2", (1, 4, 4, 1)), size=2.5), gn.ShapeError,
         "size must be an int"),
        (lambda: gn.optim.SGD(lr="0.1").updates(loss, [W]), gn.OptionError, "lr must be"),
        (lambda: gn.optim.Adam(lr=gn.const(np.ones(3, np.float32))).updates(loss, [W]),
         gn.OptionError, "scalar float node"),
    ]


def test_ordinary_mistakes_are_typed_errors_naming_the_callers_line():
    for make_mistake, error, words in _mistakes():
        call = location(1)
        with pytest.raises(gn.GraphError) as err:
            make_mistake()
        assert type(err.value) is error, (words, err.value)
        assert words in str(err.value) and f"{call.rsplit(':', 1)[0]}:" in str(err.value)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_scalar_variable_learning_rate_can_change_between_steps(backend):
    x = gn.input("x", (None, 2))
    W = gn.param("W", np.ones((2, 1), np.float32))
    lr = gn.variable("lr", np.float32(0.5))
    loss = gn.mean(x @ W)
    for optimizer in (gn.optim.SGD(lr=lr), gn.optim.Adam(lr=lr, beta1=gn.const(0.9))):
        step = compile_on(backend, loss, updates=optimizer.updates(loss, [W]))
        lr.value = np.float32(0.0)
        before = W.value.copy()
        step(x=np.ones((1, 2), np.float32))
        np.testing.assert_array_equal(W.value, before)
        lr.value = np.float32(0.5)
        step(x=np.ones((1, 2), np.float32))
        assert (W.value < before).all()


# ---------------------------------------------------------------------------------------
# Two threads calling one compiled function


def _threaded_results(f, feeds_list, calls=40, threads=4):
    """Each thread calls f with its own feeds `calls` times; the results that differ from
    one call made alone, per thread."""
    expected = [np.array(f(**feeds), copy=True) for feeds in feeds_list]
    wrong = [0] * threads

    def worker(i):
        for _ in range(calls):
            if not np.array_equal(f(**feeds_list[i]), expected[i]):
                wrong[i] += 1
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return wrong


@pytest.mark.parametrize("library", [True, False])
def test_threads_calling_one_function_get_their_own_results(library):
    """A library-mode driver lets other threads run between its kernels, and every call
    uses the workspace the function keeps: without one call at a time, threads read each
    other's temporaries (every thread got wrong numbers). Fused programs too, whether
    they recycle their output (the large one here) or not (the sums)."""
    rng = np.random.default_rng(3)
    x = gn.input("x", (None, 64))
    h = x
    for _ in range(20):
        h = h + gn.tanh(h @ gn.const((0.1 * rng.standard_normal((64, 64))).astype(np.float32)))
    for out in (gn.sum(h * h, axis=1), h * 2.0):
        f = gn.compile(out, backend="cpu", library=library)
        feeds = [{"x": rng.standard_normal((256, 64)).astype(np.float32)} for _ in range(4)]
        assert _threaded_results(f, feeds) == [0, 0, 0, 0]
        assert f.stats["mode"] == ("library" if library else "fused")


def test_threads_training_one_step_apply_every_update_once():
    """Calls that update parameters run one at a time: after 4 threads x 10 SGD steps the
    weights are those of 40 steps in one thread (the same feeds every step, so the order of
    the calls does not matter)."""
    rng = np.random.default_rng(4)
    W0 = (0.3 * rng.standard_normal((8, 8))).astype(np.float32)
    X = rng.standard_normal((16, 8)).astype(np.float32)
    weights = []
    for threads, calls in ((1, 40), (4, 10)):
        W = gn.param(f"W_threads{threads}", W0.copy())
        x = gn.input("x", (None, 8))
        loss = gn.mean(gn.square(gn.tanh(x @ W)))
        step = gn.compile(loss, updates=gn.optim.SGD(0.1).updates(loss, [W]),
                          backend="cpu", library=True)
        pool = [threading.Thread(target=lambda: [step(x=X) for _ in range(calls)])
                for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        weights.append(W.value.copy())
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_process_forked_while_another_thread_calls_can_call_too():
    """A thread inside a call holds the function's lock when the process forks; no such
    thread runs in the child, so the child gets a new lock (os.register_at_fork) instead of
    waiting for ever at its first call."""
    x = gn.input("x", (None, 4))
    f = gn.compile(gn.sum(gn.tanh(x) * 2.0), backend="cpu")
    X = np.ones((3, 4), np.float32)
    expected = float(f(x=X))
    held, release = threading.Event(), threading.Event()

    def holder():
        with f._lock:  # (as a thread in the middle of a call)
            held.set()
            release.wait()
    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one call, its result on the pipe
        try:
            os.write(write, repr(float(f(x=X))).encode())
        finally:
            os._exit(0)
    release.set()
    t.join()
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's call waited for a lock no thread would release")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as fh:
        assert float(fh.read()) == pytest.approx(expected, rel=1e-6)
