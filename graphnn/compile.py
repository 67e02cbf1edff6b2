"""`gn.compile`: turn outputs (and parameter updates) into a callable, on a chosen backend.

Every backend shares this front: the graph is collected, updates are checked, feeds are
checked by name before any kernel runs, and updates are applied after all new values are
computed from the old ones. Backends: "numpy" (interpret node by node, the reference),
"cpu" (generated Numba kernels), "cuda" (generated numba.cuda kernels).
"""
import time

import numpy as np

from . import shapes as S
from .errors import BackendError, GraphError, NumericalError, user_location
from .feeds import FeedChecker
from .graph import Graph, as_node_list
from .node import Node
from .registry import OPS

BACKENDS = ("numpy", "cpu", "cuda")


def compile(outputs, updates=None, backend="cpu", check_finite=False, **options):  # noqa: A001
    """Compile `outputs` (a node or list of nodes) into a function of the graph's inputs.

        f = gn.compile([loss, gW], backend="cpu")
        loss_val, gW_val = f(x=X, y=Y)

    `updates={param: new_value_node}` are applied in place after each call.
    `check_finite=True` raises gn.NumericalError naming the first node that produces NaN/Inf.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} "
                           f"(at {user_location()})")
    if backend == "numpy":
        return NumpyFunction(outputs, updates, check_finite=check_finite, **options)
    if backend == "cpu":
        from .compiler import CpuFunction
        return CpuFunction(outputs, updates, check_finite=check_finite, **options)
    from .cuda_backend import CudaFunction
    return CudaFunction(outputs, updates, check_finite=check_finite, **options)


def check_updates(updates):
    """Validate {param: value node}; return a list of (param, value) pairs."""
    if updates is None:
        return []
    where = user_location()
    if not isinstance(updates, dict):
        raise GraphError(f"updates must be a dict {{param: new value}}, got "
                         f"{type(updates).__name__} (at {where})")
    pairs = []
    for target, value in updates.items():
        if not isinstance(target, Node) or target.op not in ("param", "variable"):
            label = target.label() if isinstance(target, Node) else repr(target)
            raise GraphError(f"updates: {label} is not a parameter or variable; only those can "
                             f"be updated (at {where})")
        if not isinstance(value, Node):
            raise GraphError(f"updates: the new value of '{target.name}' must be a graph node, "
                             f"got {type(value).__name__} (at {where})")
        if value.shape != target.shape or any(d is None for d in value.shape):
            raise GraphError(f"updates: new value {value.label()} does not have the shape "
                             f"{target.shape} of '{target.name}' (at {where})")
        if value.dtype != target.dtype:
            raise GraphError(f"updates: new value of '{target.name}' has dtype {value.dtype}, "
                             f"expected {target.dtype} (at {where})")
        pairs.append((target, value))
    return pairs


class CompiledFunction:
    """What every backend shares: the graph, feed checks, state access and the call."""

    backend = "?"

    def __init__(self, outputs, updates=None, check_finite=False):
        started = time.perf_counter()
        self.outputs, self.single = as_node_list(outputs)
        self.update_pairs = check_updates(updates)
        if not self.outputs and not self.update_pairs:
            raise GraphError(f"compile: nothing to compute: no outputs and no updates "
                             f"(at {user_location()})")
        roots = self.outputs + [v for _, v in self.update_pairs]
        self.graph = Graph(roots)
        targets = [p for p, _ in self.update_pairs]
        self.state_nodes = self.graph.params + self.graph.variables
        for t in targets:
            if t not in self.state_nodes:
                self.state_nodes.append(t)
        Graph._check_unique_names(self.state_nodes, "parameter")
        self.check_finite = check_finite
        self.feeds = FeedChecker(self.graph.inputs)
        self.stats = {"backend": self.backend, "nodes": len(self.graph.nodes)}
        self._state_shapes = {id(p): p.shape for p in self.state_nodes}
        self._state_versions = None
        self.stats["build_seconds"] = time.perf_counter() - started

    @property
    def inputs(self):
        return self.graph.inputs

    def _check_state(self):
        versions = [p.state.version for p in self.state_nodes]
        if versions == self._state_versions:
            return  # nothing was assigned to .value since the last call
        self._state_versions = versions
        for p in self.state_nodes:
            value = p.state.value
            if value.shape != self._state_shapes[id(p)] or value.dtype != p.dtype:
                raise GraphError(f"parameter {p.label()} now holds an array of shape "
                                 f"{value.shape} {value.dtype}; this function was compiled "
                                 f"for {self._state_shapes[id(p)]} {p.dtype}")

    def __call__(self, **feeds):
        arrays = None if self.check_finite else self.feeds.fast_check(feeds)
        binding = None
        if arrays is None:
            arrays, binding = self.feeds.check(feeds, check_finite=self.check_finite)
        self._check_state()
        results = self._run(arrays, binding)
        return results[0] if self.single else tuple(results)

    def _run(self, arrays, binding):
        raise NotImplementedError


class NumpyFunction(CompiledFunction):
    """The reference backend: interpret the graph node by node with each op's NumPy impl."""

    backend = "numpy"

    def _run(self, arrays, binding):
        values = {}
        fed = {id(n): a for n, a in zip(self.graph.inputs, arrays)}
        for node in self.graph.nodes:
            if node.op == "input":
                values[id(node)] = fed[id(node)]
            elif node.op in ("param", "variable"):
                values[id(node)] = node.state.value
            elif node.op == "const":
                values[id(node)] = node.value
            else:
                args = [values[id(i)] for i in node.inputs]
                with np.errstate(all="ignore"):
                    out = np.asarray(OPS[node.op].impl(*args, **node.attrs))
                if out.dtype != node.dtype:
                    out = out.astype(node.dtype)
                values[id(node)] = out
                if self.check_finite and out.dtype.kind == "f" and not np.isfinite(out).all():
                    raise NumericalError(f"{node.label()} produced NaN or Inf "
                                         f"(check_finite=True)")
        results = [np.array(values[id(o)], copy=True) for o in self.outputs]
        new_values = [(p, np.array(values[id(v)], copy=True)) for p, v in self.update_pairs]
        for p, v in new_values:
            p.state.value[...] = v
        return results
