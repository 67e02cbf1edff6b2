"""Test helpers shared by every test package: the op-comparison helpers and `location`.

`assert_op_matches` builds an expression on graph inputs, checks its declared shape and
dtype, runs it on every backend in BACKENDS and in eager mode, and compares each result
with a reference computed independently in NumPy by the test. A new backend joins every
op test by being added to BACKENDS.

`assert_backends_agree` compiles the same outputs on the numpy back end (the reference,
pinned down by the tests of each op) and on each compiled back end asked for ("cpu",
"cuda" in the simulator), and compares every output: for graphs too large for an
independent NumPy formula (gradients, training steps).
"""
import importlib.util
import inspect
import os

import numpy as np

import graphnn as gn

BACKENDS = ["numpy", "cpu"]  # "cuda" runs in the simulator: see tests/kernels/test_cuda.py
# compile options per backend: small CUDA blocks and tiles keep the simulator fast
BACKEND_OPTIONS = {"cuda": {"block": 32, "tile": 4}}

# default tolerances per result dtype (the reference is computed in float64)
TOLERANCES = {np.dtype("float32"): (2e-5, 1e-6), np.dtype("float64"): (1e-11, 1e-13)}


def location(offset=0):
    """The caller's "file:line", `offset` lines further on: what graphnn puts in messages."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno + offset}"


def _reference_inputs(feeds):
    """Feeds for the reference: floats widened to float64, other arrays unchanged."""
    return {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}


def assert_op_matches(build, reference, feeds, rtol=None, atol=None, shapes=None,
                      dtype=None, backends=None, eager=True):
    """Check `build` against `reference` in graph mode on each backend and in eager mode.

    build(*values) -> result: called once with graph inputs (Nodes) and once with the
        feeds as NumPy arrays (eager mode, wrapped as gn.eager.Tensor so that Python
        operators also run graphnn's ops), in the order of `feeds`.
    reference(*arrays) -> expected array: written in plain NumPy by the test; it gets the
        float feeds widened to float64, in the order of `feeds`.
    feeds: {name: np.ndarray}; each becomes `gn.input(name, shape, dtype=array.dtype)`.
    shapes: {name: shape spec} to declare some inputs with symbolic dims (None or a name);
        by default each input is declared with its array's concrete shape.
    dtype: the expected result dtype; by default the widest float dtype among the feeds.
    Returns the graph node built, for further checks.
    """
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    shapes = shapes or {}
    expected = np.asarray(reference(*_reference_inputs(feeds).values()))
    if dtype is None:
        floats = [v.dtype for v in feeds.values() if v.dtype.kind == "f"]
        dtype = max(floats, key=lambda d: d.itemsize) if floats else expected.dtype
    dtype = np.dtype(dtype)
    default_rtol, default_atol = TOLERANCES.get(dtype, (0, 0))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol

    nodes = {k: gn.input(k, shapes.get(k, v.shape), dtype=v.dtype.name) for k, v in feeds.items()}
    out = build(*nodes.values())
    assert isinstance(out, gn.Node), f"graph mode gave {type(out).__name__}, not a Node"
    assert out.dtype == dtype, f"declared dtype {out.dtype}, expected {dtype}"
    assert len(out.shape) == expected.ndim, f"declared shape {out.shape} vs {expected.shape}"
    for declared, actual in zip(out.shape, expected.shape):
        assert declared in (None, actual), f"declared shape {out.shape} vs {expected.shape}"
    if not shapes:
        assert out.shape == expected.shape
    gn.Graph([out]).lint()

    results = {}
    for backend in backends or BACKENDS:
        results[backend] = gn.compile(out, backend=backend,
                                      **BACKEND_OPTIONS.get(backend, {}))(**feeds)
    if eager:
        values = {k: (v.view(gn.eager.Tensor) if v.dtype.kind == "f" else v)
                  for k, v in feeds.items()}
        result = build(*values.values())
        assert not isinstance(result, gn.Node)
        results["eager"] = np.asarray(result)
    for where, got in results.items():
        got = np.asarray(got)
        assert got.dtype == dtype, f"{where}: result dtype {got.dtype}, expected {dtype}"
        assert got.shape == expected.shape, f"{where}: shape {got.shape} vs {expected.shape}"
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)
    return out


def assert_backends_agree(outputs, feeds, backends=("cpu",), rtol=None, atol=None):
    """Compile `outputs` (a node or list of nodes) on backend "numpy" and on each of
    `backends`, call each with `feeds`, and require the same dtypes, shapes and values.
    Default tolerances follow the outputs' dtype (TOLERANCES, relaxed 10x for float32,
    whose compiled kernels round differently). Returns {backend: results}."""
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    results = {"numpy": gn.compile(list(outs), backend="numpy")(**feeds)}
    for backend in backends:
        results[backend] = gn.compile(list(outs), backend=backend,
                                      **BACKEND_OPTIONS.get(backend, {}))(**feeds)
    for backend in backends:
        for node, e, g in zip(outs, results["numpy"], results[backend]):
            e, g = np.asarray(e), np.asarray(g)
            where = f"{backend}: {node.label()}"
            assert g.dtype == e.dtype and g.shape == e.shape, \
                f"{where}: {g.dtype}{g.shape} vs numpy's {e.dtype}{e.shape}"
            default_rtol, default_atol = TOLERANCES.get(g.dtype, (0, 0))
            if g.dtype == np.float32:
                default_rtol, default_atol = 10 * default_rtol, 10 * default_atol
            np.testing.assert_allclose(
                g, e, err_msg=where, rtol=default_rtol if rtol is None else rtol,
                atol=default_atol if atol is None else atol)
    return results


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    """Import examples/NAME.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
