"""Testing helpers (`gn.testing`): gradient checks against central finite differences,
backend comparison.

    errors = gn.testing.check_grad(loss, [W, b], {"x": X})   # {name: worst relative error}
"""
import numpy as np

from .autodiff import grad
from .backends import compile
from .errors import GraphError


def check_grad(y, wrt, feeds=None, eps=1e-6, backend="numpy"):
    """Compare `gn.grad(y, wrt)` with central finite differences, in the graph's dtype
    (build the graph in float64 for tight checks). Parameters in `wrt` are perturbed through
    their values; inputs through `feeds`. Returns {name: worst relative error}.

        errors = gn.testing.check_grad(loss, [W, b], {"x": X})
        assert max(errors.values()) < 1e-6
    """
    feeds = dict(feeds or {})
    wrt = [wrt] if not isinstance(wrt, (list, tuple)) else list(wrt)
    if y.ndim != 0:
        raise GraphError("check_grad: y must be a scalar")
    grads = grad(y, wrt)
    f = compile(y, backend=backend)
    g_fn = compile(list(grads), backend=backend)
    analytic = g_fn(**feeds)
    report = {}
    for w, g in zip(wrt, analytic):
        if w.op in ("param", "variable"):
            base = w.value.copy()
            def evaluate(arr, w=w):
                w.state.value[...] = arr
                return float(f(**feeds))
        elif w.op == "input":
            base = np.array(feeds[w.name], dtype=w.dtype, copy=True)
            def evaluate(arr, w=w):
                return float(f(**{**feeds, w.name: arr}))
        else:
            raise GraphError(f"check_grad: {w.label()} is not a param or input")
        numeric = np.zeros(base.shape, np.float64)
        for idx in np.ndindex(base.shape):
            plus = base.copy(); plus[idx] += eps
            minus = base.copy(); minus[idx] -= eps
            numeric[idx] = (evaluate(plus) - evaluate(minus)) / (2 * eps)
        if w.op in ("param", "variable"):
            w.state.value[...] = base
        diff = np.abs(numeric - g)
        scale = np.maximum(np.maximum(np.abs(numeric), np.abs(g)), 1.0)
        report[w.name] = float(np.max(diff / scale)) if diff.size else 0.0
    return report
