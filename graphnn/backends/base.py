"""What every back end shares: `CompiledFunction` (the graph, update checks, feed checks,
parameter state, check_finite, stats) and `LoweredFunction` (the compiled back ends' common
start: graph passes, then lowering to the kernel IR).

Every back end shares this front: the graph is collected, updates are checked, feeds are
checked by name before any kernel runs, and updates are applied after all new values are
computed from the old ones.
"""
import os
import threading
import time
import weakref

import numpy as np

from ..errors import FeedError, GraphError, NumericalError, user_location
from ..feeds import FeedChecker, label_bounds
from ..graph import Graph, as_node_list
from ..node import Node
from ..passes import CPU_ONLY_PASSES, OPTIONAL_PASSES, optimize_in_order, pass_options
from ..lowering import lower
from ..registry import OPS


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


# Every compiled function, for _new_locks_after_fork
_FUNCTIONS = weakref.WeakSet()


def _new_locks_after_fork():
    """In a forked child, every compiled function gets a new lock: one that a thread of the
    parent held at the fork would never be released in the child (no such thread runs
    there), and the child's first call would wait for ever."""
    for f in list(_FUNCTIONS):
        f._lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # (POSIX)
    os.register_at_fork(after_in_child=_new_locks_after_fork)


class CompiledFunction:
    """What every backend shares: the graph, feed checks, state access and the call."""

    backend = "?"
    math_errors = ()  # exceptions a back end raises where IEEE arithmetic gives NaN or Inf

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
        known = {id(p) for p in self.state_nodes}  # (a set: thousands of parameters)
        for t in targets:
            if id(t) not in known:
                known.add(id(t))
                self.state_nodes.append(t)
        Graph._check_unique_names(self.state_nodes, "parameter")
        self.check_finite = check_finite
        self.feeds = FeedChecker(self.graph.inputs, self.state_nodes,
                                 label_bounds(self.graph.nodes))
        self.stats = {"backend": self.backend, "nodes": len(self.graph.nodes)}
        self._state_shapes = {id(p): p.shape for p in self.state_nodes}
        self._state_versions = None
        # One call at a time: a call uses memory the function keeps (its workspace of
        # temporaries, recycled outputs, device buffers), and a library-mode driver lets
        # other threads run between its kernels, so two threads calling at once got each
        # other's temporaries. Reentrant: a call may call again (after growing the workspace).
        self._lock = threading.RLock()
        _FUNCTIONS.add(self)
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
            value = p.state.host_array  # (shape and dtype only: no copy from a device)
            if value.shape != self._state_shapes[id(p)] or value.dtype != p.dtype:
                raise GraphError(f"parameter {p.label()} now holds an array of shape "
                                 f"{value.shape} {value.dtype}; this function was compiled "
                                 f"for {self._state_shapes[id(p)]} {p.dtype}")

    def __call__(self, *args, **feeds):
        if args:
            raise_positional(self, args)
        with self._lock:
            return self._locked_call(feeds)

    def _locked_call(self, feeds):
        """The call's work, with the function's lock held."""
        arrays = None if self.check_finite else self.feeds.fast_check(feeds)
        binding = None
        if arrays is None:
            arrays, binding = self.feeds.check(feeds, check_finite=self.check_finite)
        self._check_state()
        if self.check_finite:
            results = self._run_checked(arrays, binding)
        else:
            results = self._run(arrays, binding)
        return results[0] if self.single else tuple(results)

    def _run(self, arrays, binding):
        raise NotImplementedError

    # -- check_finite on compiled back ends -------------------------------------------------
    # The compiled program runs as usual; when an output or a new parameter value holds NaN
    # or Inf, the parameters get back their values from before the call and the same feeds
    # are interpreted node by node (the numpy back end) to name the first bad node.

    def _run_checked(self, arrays, binding):
        before = self._save_updated_states()
        try:
            results = self._run(arrays, binding)
        except self.math_errors as exc:
            bad = [f"a kernel that raised {type(exc).__name__}: {exc}"]
        else:
            new_values = self._updated_state_values()
            bad = [f"output {o.label()}" for o, r in zip(self.outputs, results)
                   if not _finite(r)]
            bad += [f"the new value of {p.label()}" for (p, _), v
                    in zip(self.update_pairs, new_values) if not _finite(v)]
            if not bad:
                return results
        self._restore_states(before)
        node = first_non_finite(self.graph.nodes, self.graph.inputs, arrays,
                                self._state_values(before))
        if node is not None:
            raise NumericalError(non_finite_message(node))
        raise NumericalError(f"{bad[0]}: NaN or Inf on the {self.backend} back end, but "
                             "no node does on the numpy back end (check_finite=True; call "
                             f"at {user_location()}); parameters keep their values from "
                             "before this call")

    def _save_updated_states(self):
        """Copies of the values of the parameters this function updates."""
        return [np.array(p.state.value, copy=True) for p, _ in self.update_pairs]

    def _updated_state_values(self):
        return [p.state.value for p, _ in self.update_pairs]

    def _restore_states(self, saved):
        for (p, _), value in zip(self.update_pairs, saved):
            p.state.value[...] = value

    def _state_values(self, saved):
        """{id(state node): value before the call} for every state node of the graph."""
        values = {id(p): p.state.value for p in self.state_nodes}
        values.update((id(p), v) for (p, _), v in zip(self.update_pairs, saved))
        return values


def _finite(array):
    array = np.asarray(array)
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def non_finite_message(node):
    return f"{node.label()} produced NaN or Inf (check_finite=True; call at {user_location()})"


def interpret(nodes, inputs, arrays, state_values, check_finite=False):
    """Run `nodes` (topologically ordered) one by one with each op's NumPy implementation.
    Returns {id(node): value}; with `check_finite`, raises NumericalError at the first node
    whose value holds NaN or Inf."""
    values = {id(n): a for n, a in zip(inputs, arrays)}
    for node in nodes:
        if node.op == "input":
            continue
        if node.op in ("param", "variable"):
            values[id(node)] = state_values[id(node)]
        elif node.op == "const":
            values[id(node)] = node.value
        else:
            args = [values[id(i)] for i in node.inputs]
            with np.errstate(all="ignore"):
                out = np.asarray(OPS[node.op].impl(*args, **node.attrs))
            if out.dtype != node.dtype:
                out = out.astype(node.dtype)
            values[id(node)] = out
            if check_finite and not _finite(out):
                error = NumericalError(non_finite_message(node))
                error.node = node
                raise error
    return values


def first_non_finite(nodes, inputs, arrays, state_values):
    """The first node (in `nodes` order) whose value holds NaN or Inf, or None."""
    try:
        interpret(nodes, inputs, arrays, state_values, check_finite=True)
    except NumericalError as exc:
        return exc.node
    return None


def raise_positional(compiled, args):
    """A compiled function takes its feeds by input name: say so, with the names."""
    names = ", ".join(f"{n.name}=..." for n in compiled.graph.inputs) or "no arguments"
    raise FeedError(f"a compiled function takes its feeds by input name, not by position: "
                    f"got {len(args)} positional argument(s); call it as f({names}) "
                    f"(at {user_location()})")


class LoweredFunction(CompiledFunction):
    """The compiled back ends' common start: the graph passes (passes.py), then lowering to
    a kernel-IR Program (lowering.py), which a code generator in kernels/ turns into code.

    `passes` ({name: bool}, see passes.OPTIONAL_PASSES) switches single optimisations off;
    `.passes` holds the full choice. (`optimize_graph=False` leaves out every graph pass,
    even the decomposition of composite ops, which then cannot be lowered.)

    Sets `.optimized_outputs`, `.optimized_graph`, `.program` and `.kernels` (each step's
    name, the graph nodes it computes and its buffer, for explain() and pictures)."""

    # the optional passes (passes.OPTIONAL_PASSES) this back end has
    optional_passes = tuple(name for name in OPTIONAL_PASSES if name not in CPU_ONLY_PASSES)

    def __init__(self, outputs, updates=None, check_finite=False, optimize_graph=True,
                 passes=None):
        self.passes = pass_options(passes, self.backend, self.optional_passes)
        super().__init__(outputs, updates, check_finite)
        self._graph_ready()
        roots = self.outputs + [v for _, v in self.update_pairs]
        self.pass_report = []
        order = self.graph.nodes  # (the order of these roots: topological_order(roots))
        if optimize_graph:
            roots, self.pass_report, order = optimize_in_order(roots, enabled=self.passes,
                                                               order=order)
        n_out = len(self.outputs)
        self.optimized_outputs = roots[:n_out]
        self.optimized_graph = Graph(roots, order=order)
        opt_updates = [(p, v) for (p, _), v in zip(self.update_pairs, roots[n_out:])]
        self.program, self.lowering = lower(
            roots, self.graph.inputs, self.state_nodes, self.optimized_outputs, opt_updates,
            plan_memory=self.passes["memory_planning"], fusion=self.passes["fusion"],
            update_in_place=self.passes["update_in_place"], order=self.optimized_graph.nodes)
        self.program.index_checks = [
            (k, self.feeds.bounds[n.name][0]) for k, n in enumerate(self.graph.inputs)
            if n.name in self.feeds.bounds]
        self.kernels = [{"name": f"step {k}: {type(step).__name__.lower()}",
                         "nodes": nodes, "buffer": step.out.name}
                        for k, (step, nodes) in enumerate(zip(self.lowering.steps,
                                                              self.lowering.step_nodes))]

    def _graph_ready(self):
        """Called once the graph is known, before the passes and lowering (a back end may
        start work that runs alongside them)."""
