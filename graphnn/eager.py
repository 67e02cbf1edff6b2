"""Eager mode: graphnn's op functions applied to NumPy arrays compute at once, op by op,
and `value_and_grad` records them on a tape and replays the same VJP rules backwards.

    def loss_fn(W, x, t):
        return gn.mse(gn.sigmoid(x @ W), t)
    loss, (gW,) = gn.eager.value_and_grad(loss_fn)(W0, X, T)

This is the "TF2 eager" side of graph-vs-eager comparisons: the same ops and gradient rules
as graph mode, with no compilation and Python dispatch per op.
"""
import numpy as np

from .errors import GradError, user_location
from . import ops
from .registry import active_tape


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


def value_and_grad(fn, argnums=0):
    """Wrap `fn(*arrays) -> scalar` to return `(value, gradients)`.

    `argnums` (int or tuple) picks the arguments to differentiate; gradients come back as
    one array (int argnums) or a tuple of arrays.
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
    wrt_ids = {id(w) for w in wrt}
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
