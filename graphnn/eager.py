"""Eager mode: graphnn's ops applied to NumPy arrays compute at once, op by op (TF2 style).

The same model code runs as a graph or eagerly. Layers (`gn.nn`), losses and optimizers are
written with graphnn ops: called on graph nodes they build a graph for `gn.compile`; called
on arrays they compute at once, reading their parameters' current `.value`.

Training step, eagerly. `step(loss_fn, optimizer)` returns a function of the feeds that
runs `loss_fn(**feeds)` on arrays, op by op, records the ops on a tape, replays their
gradient rules backwards (the same VJP rules `gn.grad` uses) and applies the optimizer's
update rules (the same rules its compiled update graph uses) to the parameters' `.value`
and to the optimizer's state variables (e.g. Adam's moments):

    >>> import numpy as np, graphnn as gn
    >>> from graphnn.nn import Dense, Sequential
    >>> model = Sequential([Dense(8, "tanh"), Dense(3)])
    >>> def loss_fn(x, y):
    ...     return gn.softmax_cross_entropy(model(x), y)
    >>> X = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    >>> Y = np.arange(16) % 3
    >>> step = gn.eager.step(loss_fn, gn.optim.Adam(0.01))
    >>> first = step(x=X, y=Y)              # the loss before this step's update
    >>> for _ in range(20):
    ...     last = step(x=X, y=Y)
    >>> bool(last < first), [p.name for p in step.params]
    (True, ['dense1/W', 'dense1/b', 'dense2/W', 'dense2/b'])

The compiled step of the same model is `gn.compile(loss, updates=opt.updates(loss, params))`
with `loss = loss_fn(x=gn.input("x", (None, 4)), y=gn.input("y", (None,), "int64"))`; both
update the same `gn.param` objects, so the two can be trained side by side and their losses
compared step by step (`graphnn bench my_model.py` does so).

Gradients of a function. `value_and_grad(fn, argnums)` wraps `fn(*arrays) -> scalar` to
return `(value, gradients)`: one gradient array for an int `argnums`, a tuple for a tuple:

    >>> def loss_fn(W, x, t):
    ...     return gn.mse(gn.sigmoid(x @ W), t)
    >>> W0 = np.zeros((2, 1), np.float32)
    >>> X = np.array([[0., 1.], [1., 0.]], np.float32)
    >>> T = np.array([[1.], [0.]], np.float32)
    >>> loss, gW = gn.eager.value_and_grad(loss_fn)(W0, X, T)
    >>> float(loss), gW.shape
    (0.25, (2, 1))
    >>> loss, (gW, gX) = gn.eager.value_and_grad(loss_fn, argnums=(0, 1))(W0, X, T)
    >>> gX.shape
    (2, 2)

This is the "TF2 eager" side of graph-vs-eager comparisons: the same ops and gradient rules
as graph mode, with no compilation and Python dispatch per op. `profile()` measures where
an eager step's time goes, per op.
"""
import contextlib
import time

import numpy as np

from . import registry
from .errors import GradError, GraphError, user_location
from . import ops
from .node import Node
from .registry import active_scope, active_tape

STATE_OPS = ("param", "variable")


class Tensor(np.ndarray):
    """An ndarray seen by an eager tape: Python operators on it run graphnn ops, so
    `x @ W + b` is recorded. (Plain NumPy functions such as np.exp are not: use gn.exp.)"""

    def __add__(self, o): return ops.add(self, o)
    def __radd__(self, o): return ops.add(o, self)
    def __sub__(self, o): return ops.sub(self, o)
    def __rsub__(self, o): return ops.sub(o, self)
    def __mul__(self, o): return ops.mul(self, o)
    def __rmul__(self, o): return ops.mul(o, self)
    def __truediv__(self, o): return ops.div(self, o)
    def __rtruediv__(self, o): return ops.div(o, self)
    def __pow__(self, o): return ops.pow(self, o)
    def __rpow__(self, o): return ops.pow(o, self)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __rmatmul__(self, o): return ops.matmul(o, self)
    def __neg__(self): return ops.neg(self)

    @property
    def T(self):
        return ops.transpose(self)


class Tape:
    """The ops executed while active: (opdef, input arrays, attrs, output array)."""

    def __init__(self):
        self.entries = []

    def record(self, opdef, inputs, attrs, out):
        self.entries.append((opdef, inputs, attrs, out))

    @staticmethod
    def wrap(array):
        return array.view(Tensor)


class Scope:
    """While active, graph leaves used by an op are read instead of becoming graph inputs:
    a gn.param or gn.variable gives its current `.value`, a constant its value. With
    `watch=True` (inside `step`), each parameter is read once per scope as a Tensor the
    tape can differentiate against; `.read_order` lists the parameters in order of first
    use."""

    def __init__(self, watch=False):
        self.watch = watch
        self.bound = {}        # node -> the array standing for it in this scope
        self.read_order = []   # parameters, in order of first use

    def read(self, node):
        array = self.bound.get(node)
        if array is None:
            array = node.value
            if node.op == "param":
                if self.watch:
                    array = array.view(Tensor)
                self.read_order.append(node)
            self.bound[node] = array
        return array

    def resolve(self, opname, args):
        out = []
        for a in args:
            if isinstance(a, Node):
                if a.op == "const":
                    a = a.value
                elif a.op in STATE_OPS:
                    a = self.read(a)
                else:
                    raise GraphError(
                        f"{opname}: eager mode computes on arrays, but got the graph node "
                        f"{a.label()}; feed arrays to the eager function (or build the "
                        f"graph outside gn.eager) (at {user_location()})")
            out.append(a)
        return out


@contextlib.contextmanager
def reading_state(watch=False):
    """Run graphnn code eagerly on the current values of the parameters and variables it
    uses (a new Scope), unless a scope is already active (then that one is used)."""
    scope = active_scope.get()
    if scope is not None:
        yield scope
        return
    scope = Scope(watch)
    token = active_scope.set(scope)
    try:
        yield scope
    finally:
        active_scope.reset(token)


@contextlib.contextmanager
def building_graph():
    """Build graph nodes inside an eager scope (a layer building itself on first use)."""
    token = active_scope.set(None)
    try:
        yield
    finally:
        active_scope.reset(token)


def value_and_grad(fn, argnums=0):
    """Wrap `fn(*arrays) -> scalar` to return `(value, gradients)`.

    `argnums` (int or tuple) picks the arguments to differentiate; gradients come back as
    one array (int argnums) or a tuple of arrays:

        loss, gW = gn.eager.value_and_grad(loss_fn)(W0, X, T)
        loss, (gW, gX) = gn.eager.value_and_grad(loss_fn, argnums=(0, 1))(W0, X, T)
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args):
        arrays = [np.array(a, copy=True) for a in args]
        arrays = [a.view(Tensor) if a.dtype.kind == "f" else a for a in arrays]
        for i in nums:
            if arrays[i].dtype.kind != "f":
                raise GradError(f"value_and_grad: argument {i} has dtype {arrays[i].dtype}; "
                                f"only float arguments have gradients (at {user_location()})")
        tape = Tape()
        token = active_tape.set(tape)
        try:
            out = fn(*arrays)
        finally:
            active_tape.reset(token)
        if np.ndim(out) != 0:
            raise GradError(f"value_and_grad: fn must return a scalar, got shape {np.shape(out)} "
                            f"(at {user_location()})")
        grads = backward(tape, out, [arrays[i] for i in nums])
        grads = [np.asarray(g) for g in grads]
        return np.asarray(out), (grads[0] if single else tuple(grads))

    return wrapped


def backward(tape, out, wrt):
    """Replay the tape backwards from scalar `out`; return d out / d each array of `wrt`."""
    live = {id(w) for w in wrt}
    for opdef, inputs, attrs, result in tape.entries:
        if any(id(i) in live for i in inputs):
            live.add(id(result))
    adjoints = {id(out): np.ones((), np.asarray(out).dtype)}
    for opdef, inputs, attrs, result in reversed(tape.entries):
        g = adjoints.pop(id(result), None)
        if g is None:
            continue
        thunks = opdef.vjp(g, result, *inputs, **attrs)
        for inp, thunk in zip(inputs, thunks):
            if thunk is not None and id(inp) in live:
                contribution = np.asarray(thunk())
                prev = adjoints.get(id(inp))
                adjoints[id(inp)] = contribution if prev is None else prev + contribution
    # The wrt arrays are leaves of the tape: their adjoints are never popped above.
    return [adjoints.get(id(w), np.zeros_like(w)) for w in wrt]


class Step:
    """An eager training step (see `step`): `step(**feeds)` returns the loss (a NumPy
    scalar) computed before the update. `.params` are the parameters it trains (known after
    the first call when not given), `.optimizer` its optimizer."""

    def __init__(self, loss_fn, optimizer, params=None):
        if not callable(loss_fn):
            raise GraphError(f"gn.eager.step: loss_fn must be a function of the feeds, got "
                             f"{type(loss_fn).__name__} (at {user_location()})")
        if optimizer is None or not hasattr(optimizer, "apply_eager"):
            raise GraphError(f"gn.eager.step: optimizer must be a gn.optim optimizer, got "
                             f"{optimizer!r:.60} (at {user_location()})")
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.params = list(params) if params is not None else None

    def __call__(self, *args, **feeds):
        if args:
            raise GraphError(f"an eager step takes its feeds by name, as a compiled step "
                             f"does: step(x=X, y=Y) (at {user_location()})")
        prof = registry.profiler
        tape, scope = Tape(), Scope(watch=True)
        tape_token, scope_token = active_tape.set(tape), active_scope.set(scope)
        try:
            if prof is not None:
                prof.phase = "forward"
            loss = self.loss_fn(**feeds)
        finally:
            active_scope.reset(scope_token)
            active_tape.reset(tape_token)
        if isinstance(loss, Node):
            raise GraphError(f"gn.eager.step: loss_fn returned the graph node {loss.label()}; "
                             f"it must compute on the arrays it is given "
                             f"(at {user_location()})")
        if np.ndim(loss) != 0:
            raise GradError(f"gn.eager.step: loss_fn must return a scalar, got shape "
                            f"{np.shape(loss)} (at {user_location()})")
        if self.params is None:
            self.params = list(scope.read_order)
            if not self.params:
                raise GraphError(f"gn.eager.step: the loss reads no gn.param, so there is "
                                 f"nothing to train (at {user_location()})")
        if prof is not None:
            prof.phase = "backward"
        watched = [scope.bound.get(p) for p in self.params]
        leaves = [w if w is not None else p.value for w, p in zip(watched, self.params)]
        grads = backward(tape, loss, leaves)
        if prof is not None:
            prof.phase = "update"
        self.optimizer.apply_eager(self.params, [np.asarray(g) for g in grads])
        if prof is not None:
            prof.phase = None
        return np.asarray(loss)


def step(loss_fn, optimizer, params=None):
    """An eager training step: `step(**feeds)` runs `loss_fn(**feeds)` op by op on the
    arrays fed, differentiates it with the tape and applies `optimizer`'s update rules to
    `params` (gn.param nodes; default: every parameter the loss reads, in order of first
    use), writing their `.value` and the optimizer's state variables in place. Returns the
    loss before the update. See the module docstring."""
    return Step(loss_fn, optimizer, params)


# ---------------------------------------------------------------------------------------
# Profiling: where an eager step's time goes


class OpProfile:
    """Time per op name while collecting (see `profile`): `.ops` {(phase, op): [calls,
    seconds in graphnn's dispatch and NumPy, seconds in the op's NumPy implementation]}.
    The phase is "forward", "backward" (the VJP rules' ops) or "update" (the optimizer's
    rules) inside an eager `step`, else "-". An op's time excludes the ops it dispatched
    itself (composite functions), which are counted for themselves."""

    def __init__(self):
        self.ops = {}
        self.phase = None
        self._stack = []

    def timed(self, fn, opname, args, attrs, name):
        self._stack.append([0.0, 0.0])  # [time of nested ops, this op's NumPy time]
        t0 = time.perf_counter()
        try:
            return fn(opname, args, attrs, name)
        finally:
            elapsed = time.perf_counter() - t0
            nested, impl = self._stack.pop()
            if self._stack:
                self._stack[-1][0] += elapsed
            entry = self.ops.setdefault((self.phase or "-", opname), [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += elapsed - nested
            entry[2] += impl

    def impl(self, fn, arrays, attrs):
        t0 = time.perf_counter()
        try:
            return fn(*arrays, **attrs)
        finally:
            if self._stack:
                self._stack[-1][1] += time.perf_counter() - t0

    def rows(self):
        """[(phase, op, calls, total_s, numpy_s)], largest total first."""
        return sorted(((ph, op, c, t, n) for (ph, op), (c, t, n) in self.ops.items()),
                      key=lambda r: -r[3])


@contextlib.contextmanager
def profile():
    """Collect time per op while the block runs (eager ops only; a compiled step is one
    call and is not seen here):

        with gn.eager.profile() as prof:
            for _ in range(100):
                step(x=X, y=Y)
        for phase, op, calls, total_s, numpy_s in prof.rows(): ...

    `total_s` is the time in graphnn's `apply` (shape and dtype rules, tape recording and
    the NumPy call), `numpy_s` the NumPy implementation alone: the difference is dispatch."""
    if registry.profiler is not None:
        raise GraphError("gn.eager.profile: a profile is already collecting")
    prof = OpProfile()
    registry.profiler = prof
    try:
        yield prof
    finally:
        registry.profiler = None
