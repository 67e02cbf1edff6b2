"""Optimizers as update graphs compiled into the training step (one call per step).

`opt.updates(loss, params)` returns {param: new value node, state variable: new value node};
pass it to `gn.compile(loss, updates=...)`. Moment estimates are `gn.variable`s, updated in
place with the parameters.

    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.1).updates(loss, [W, b]))

The same rules run eagerly: `opt.apply_eager(params, grads)` applies them to the arrays
`grads`, writing the parameters' `.value` and the state variables in place (this is what
`gn.eager.step` calls). An optimizer keeps one set of state variables per parameter
(`opt.variables`), made on first use and shared by every compiled step and eager step it
serves, so a model trained by turns compiled and eager continues one optimizer state.
"""
import numpy as np

from .api import variable
from .autodiff import grad
from .errors import GraphError, OptionError, user_location
from .node import Node
from .ops import cast
from .registry import active_scope, const_node


def _scalar(value, dtype):
    """A hyperparameter as a scalar node of `dtype`: a number becomes a constant; a scalar
    float node (e.g. a `gn.variable` learning rate changed between epochs) is used as is."""
    if isinstance(value, Node):
        return value if value.dtype == dtype else cast(value, dtype)
    if active_scope.get() is not None:
        # applied eagerly (apply_eager): the number as an array, not a new constant node
        # each step; a Tensor, so that Python operators on it still run graphnn ops
        from .eager import Tensor
        return np.asarray(value, dtype=dtype).view(Tensor)
    return const_node(np.asarray(value, dtype=dtype))


def _one_minus(value, dtype):
    return 1 - _scalar(value, dtype) if isinstance(value, Node) else _scalar(1 - value, dtype)


def _check_hyperparameter(owner, name, value):
    if isinstance(value, Node):
        if value.shape != () or value.dtype.kind != "f":
            raise OptionError(f"{owner}: {name} must be a number or a scalar float node, got "
                              f"{value.label()} {value.dtype} (at {user_location()})")
        return
    if not isinstance(value, (int, float, np.integer, np.floating)) or \
            isinstance(value, (bool, np.bool_)):
        raise OptionError(f"{owner}: {name} must be a number, got {value!r:.60} "
                          f"(at {user_location()})")


class Optimizer:
    """Base class: `updates` differentiates the loss once and asks `rule(p, g, **shared)` for
    each parameter's new value and its state variables' new values."""

    def updates(self, loss, params):
        """{param: new value node, state variable: new value node} for `gn.compile`."""
        return self._param_updates(loss, params)

    def apply_updates(self, params, grads):
        """Like `updates`, but from given gradient nodes instead of differentiating a loss,
        e.g. `gn.input` nodes fed with gradients averaged over processes (gn.distributed).

            g = gn.input("gW", W.shape)
            apply = gn.compile([], updates=opt.apply_updates([W], [g]))
        """
        return self._param_updates(None, params, grads)

    def _param_updates(self, loss, params, grads=None, **shared):
        owner = f"{type(self).__name__}.updates"
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            _check_hyperparameter(type(self).__name__, name, value)
        try:
            if isinstance(params, (Node, str)):
                raise TypeError
            params = list(params)
        except TypeError:
            shown = params.label() if isinstance(params, Node) else f"{params!r:.60}"
            raise OptionError(f"{owner}: params must be a list of gn.param nodes, got {shown}"
                              f"; write [W] for one parameter (at {user_location()})") from None
        if not params:
            raise GraphError(f"{type(self).__name__}.updates: no parameters given "
                             f"(at {user_location()})")
        for p in params:
            if getattr(p, "op", None) != "param":
                raise GraphError(f"{type(self).__name__}.updates: {p!r} is not a gn.param "
                                 f"(at {user_location()})")
        if grads is None:
            grads = grad(loss, params)
        grads = list(grads)
        if len(grads) != len(params) or any(g.shape != p.shape for p, g in zip(params, grads)):
            raise GraphError(f"{type(self).__name__}.apply_updates: the gradients' shapes "
                             f"{[g.shape for g in grads]} do not match the parameters' "
                             f"{[p.shape for p in params]} (at {user_location()})")
        updates = {}
        for p, g in zip(params, grads):
            updates.update(self.rule(p, g, **shared))
        return updates

    def apply_eager(self, params, grads):
        """One update, eagerly: the same rules as `updates`, applied to the gradient arrays
        `grads`; writes the new values into the parameters' and state variables' arrays in
        place (so compiled steps that hold them see them too)."""
        from .api import ValueState
        from .eager import reading_state
        with reading_state():
            new = self._param_updates(None, params, grads)
        for node, value in new.items():
            target = node.value
            if np.shape(value) != target.shape:
                raise GraphError(f"{type(self).__name__}.apply_eager: the new value of "
                                 f"{node.label()} has shape {np.shape(value)} "
                                 f"(at {user_location()})")
            np.copyto(target, value, casting="same_kind")
        if new:
            ValueState.host_writes += 1  # device copies of these states are now older

    @property
    def variables(self):
        """The optimizer's state variables made so far (moments, step counters)."""
        return [var for _, var in getattr(self, "_slots", {}).values()]

    def slot(self, p, name, fill=0.0):
        """The state variable `name` of parameter `p`, made on first use (filled with
        `fill`) and the same variable afterwards."""
        slots = self.__dict__.setdefault("_slots", {})
        key = (id(p), name)
        entry = slots.get(key)
        if entry is None or entry[0] is not p:
            var = variable(f"{p.name}/{type(self).__name__.lower()}_{name}",
                           np.full(p.shape, fill, p.dtype))
            slots[key] = entry = (p, var)
        return entry[1]


class SGD(Optimizer):
    """θ ← θ − η∇L; with momentum β: m ← βm − η∇L, θ ← θ + m."""

    def __init__(self, lr=0.01, momentum=0.0):
        self.lr, self.momentum = lr, momentum

    def rule(self, p, g):
        lr = _scalar(self.lr, p.dtype)
        if not self.momentum:
            return {p: p - lr * g}
        m = self.slot(p, "m")
        m_new = _scalar(self.momentum, p.dtype) * m - lr * g
        return {m: m_new, p: p + m_new}


class Adagrad(Optimizer):
    """G ← G + g²; θ ← θ − η g / (√G + ε)."""

    def __init__(self, lr=0.01, eps=1e-7):
        self.lr, self.eps = lr, eps

    def rule(self, p, g):
        acc = self.slot(p, "acc")
        acc_new = acc + g * g
        return {acc: acc_new, p: p - _scalar(self.lr, p.dtype) * g / (
            (acc_new ** 0.5) + _scalar(self.eps, p.dtype))}


class RMSprop(Optimizer):
    """v ← ρv + (1−ρ)g²; θ ← θ − η g / (√v + ε)."""

    def __init__(self, lr=0.001, rho=0.9, eps=1e-7):
        self.lr, self.rho, self.eps = lr, rho, eps

    def rule(self, p, g):
        v = self.slot(p, "v")
        v_new = _scalar(self.rho, p.dtype) * v + _one_minus(self.rho, p.dtype) * g * g
        return {v: v_new, p: p - _scalar(self.lr, p.dtype) * g / (
            (v_new ** 0.5) + _scalar(self.eps, p.dtype))}


class Adadelta(Optimizer):
    """v ← ρv + (1−ρ)g²; Δ = −√(u+ε)/√(v+ε)·g; u ← ρu + (1−ρ)Δ²; θ ← θ + lr·Δ."""

    def __init__(self, lr=1.0, rho=0.95, eps=1e-6):
        self.lr, self.rho, self.eps = lr, rho, eps

    def rule(self, p, g):
        v, u = self.slot(p, "v"), self.slot(p, "u")
        rho, one_minus = _scalar(self.rho, p.dtype), _one_minus(self.rho, p.dtype)
        eps = _scalar(self.eps, p.dtype)
        v_new = rho * v + one_minus * g * g
        delta = -((u + eps) ** 0.5) / ((v_new + eps) ** 0.5) * g
        return {v: v_new, u: rho * u + one_minus * delta * delta,
                p: p + _scalar(self.lr, p.dtype) * delta}


class Adam(Optimizer):
    """m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; θ ← θ − η m̂ / (√v̂ + ε), bias-corrected."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def _param_updates(self, loss, params, grads=None):
        # one step counter for the parameters trained together (the same counter for every
        # step, compiled or eager, that updates this set of parameters; another model
        # trained with this optimizer gets its own); the bias correction uses t + 1
        slots = self.__dict__.setdefault("_slots", {})
        members = tuple(params) if isinstance(params, (list, tuple)) else (params,)
        key = (None, "t", frozenset(map(id, members)))  # (the entry keeps them alive)
        if key not in slots:
            slots[key] = (members, variable("adam/t", np.zeros((), np.float32)))
        t = slots[key][1]
        t_next = t + _scalar(1, t.dtype)
        ups = super()._param_updates(loss, params, grads, t_next=t_next)
        ups[t] = t_next
        return ups

    def rule(self, p, g, t_next):
        dt = p.dtype
        t = t_next if t_next.dtype == dt else cast(t_next, dt)
        m, v = self.slot(p, "m"), self.slot(p, "v")
        b1, b2 = _scalar(self.beta1, dt), _scalar(self.beta2, dt)
        m_new = b1 * m + _one_minus(self.beta1, dt) * g
        v_new = b2 * v + _one_minus(self.beta2, dt) * g * g
        m_hat = m_new / (1 - b1 ** t)
        v_hat = v_new / (1 - b2 ** t)
        return {m: m_new, v: v_new,
                p: p - _scalar(self.lr, dt) * m_hat / (v_hat ** 0.5 + _scalar(self.eps, dt))}
