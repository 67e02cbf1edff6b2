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

Every optimizer takes `lr` as a number, a scalar `gn.variable` (set between calls) or a
schedule from `gn.optim.schedules`, computed inside the step from a step counter variable, so
a changing rate never recompiles; `weight_decay=` (L2: g + wd·p), `clipnorm=` (every gradient
scaled by min(1, clipnorm / global norm), before the weight decay is added) and, for SGD,
`nesterov=True`. `AdamW` decays the weights decoupled from the gradient.
"""
import math

import numpy as np

from .api import variable
from .autodiff import grad
from .errors import GraphError, OptionError, located, user_location
from .node import Node
from .ops import cast, maximum, minimum, sqrt, sum as reduce_sum
from .registry import active_scope, applied_alike, const_node


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
    if value is None or (name == "lr" and isinstance(value, Schedule)):
        return
    if name == "nesterov":
        if not isinstance(value, (bool, np.bool_)):
            raise OptionError(f"{owner}: nesterov must be True or False, got {value!r:.60} "
                              f"(at {user_location()})")
        return
    if isinstance(value, Node):
        if value.shape != () or value.dtype.kind != "f":
            raise OptionError(f"{owner}: {name} must be a number or a scalar float node, got "
                              f"{value.label()} {value.dtype} (at {user_location()})")
        return
    if not isinstance(value, (int, float, np.integer, np.floating)) or \
            isinstance(value, (bool, np.bool_)):
        raise OptionError(f"{owner}: {name} must be a number, got {value!r:.60} "
                          f"(at {user_location()})")


# ---------------------------------------------------------------------------------------
# Learning-rate schedules: graph expressions of the number of steps already taken


def _check_number(owner, name, value, positive=False, integer=False):
    """An OptionError naming `name` unless `value` is a (positive, integral) number."""
    kind = "a positive integer" if integer and positive else "a positive number" if positive \
        else "a number"
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and positive:
        ok = value > 0
    if not ok:
        raise OptionError(f"{owner}: {name} must be {kind}, got {value!r:.60} "
                          f"(at {user_location()})")
    return value


def _floor(q):
    """⌊q⌋ for q >= 0: truncation by a cast to int64 and back (the quotient of two whole
    numbers below 2**23 is never rounded across an integer in float32)."""
    return cast(cast(q, "int64"), q.dtype.name)


def _cos_pi(u):
    """cos(π·u) for 0 <= u <= 1, as a polynomial of graph ops (there is no cos op): the
    Taylor series of cos x in x², 16 terms, exact to 1e-17 on [0, π]."""
    x2 = _scalar(math.pi, u.dtype) * u
    x2 = x2 * x2
    terms = [(-1) ** k / math.factorial(2 * k) for k in range(16)]
    acc = _scalar(terms[-1], u.dtype)
    for coefficient in reversed(terms[:-1]):
        acc = acc * x2 + _scalar(coefficient, u.dtype)
    return acc


class Schedule:
    """A learning rate as a function of the number of steps already taken: an optimizer
    given one as `lr` computes `rate(t)` inside its step from its step counter variable, so
    the rate changes every step without recompiling. `value(step)` is the same rate as a
    Python float (step 0 is the first step).

        sched = gn.optim.schedules.StepDecay(0.1, step_size=10, gamma=0.5)
        sched.value(0), sched.value(10)   # (0.1, 0.05)
        opt = gn.optim.SGD(lr=sched)
    """

    def rate(self, t):
        """The rate at `t` steps taken (a scalar float node, or an array eagerly)."""
        raise NotImplementedError

    def value(self, step):
        """The rate at step `step` (0-based) as a Python float."""
        from .eager import Tensor, reading_state
        _check_number(f"{type(self).__name__}.value", "step", step, integer=True)
        if step < 0:
            raise OptionError(f"{type(self).__name__}.value: step must be >= 0, got {step} "
                              f"(at {user_location()})")
        with reading_state():
            return float(self.rate(np.asarray(step, np.float64).view(Tensor)))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """lr · gamma^⌊step / step_size⌋: the rate multiplied by `gamma` every `step_size` steps.

        gn.optim.schedules.StepDecay(0.1, step_size=30, gamma=0.1).value(30)   # 0.01
    """

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _check_number("StepDecay", "lr", lr)
        self.step_size = _check_number("StepDecay", "step_size", step_size, True, True)
        self.gamma = _check_number("StepDecay", "gamma", gamma, positive=True)

    def rate(self, t):
        periods = _floor(t / _scalar(self.step_size, t.dtype))
        return _scalar(self.lr, t.dtype) * _scalar(self.gamma, t.dtype) ** periods


class ExponentialDecay(Schedule):
    """lr · rate^(step / steps): the rate multiplied by `rate` over every `steps` steps,
    smoothly.

        gn.optim.schedules.ExponentialDecay(0.1, rate=0.5, steps=100).value(50)  # 0.0707...
    """

    def __init__(self, lr, rate, steps):
        self.lr = _check_number("ExponentialDecay", "lr", lr)
        self.decay = _check_number("ExponentialDecay", "rate", rate, positive=True)
        self.steps = _check_number("ExponentialDecay", "steps", steps, positive=True)

    def rate(self, t):
        return _scalar(self.lr, t.dtype) * _scalar(self.decay, t.dtype) ** (
            t / _scalar(self.steps, t.dtype))


class CosineDecay(Schedule):
    """final + (lr − final) · (1 + cos(π · min(step, steps) / steps)) / 2: from `lr` down to
    `final` over `steps` steps along half a cosine, then `final`.

        gn.optim.schedules.CosineDecay(0.1, steps=100).value(50)   # 0.05
    """

    def __init__(self, lr, steps, final=0.0):
        self.lr = _check_number("CosineDecay", "lr", lr)
        self.steps = _check_number("CosineDecay", "steps", steps, positive=True)
        self.final = _check_number("CosineDecay", "final", final)

    def rate(self, t):
        steps = _scalar(self.steps, t.dtype)
        cosine = _cos_pi(minimum(t, steps) / steps)
        return _scalar(self.final, t.dtype) + _scalar((self.lr - self.final) / 2, t.dtype) * (
            _scalar(1, t.dtype) + cosine)


class LinearWarmup(Schedule):
    """min(1, (step + 1) / warmup_steps) · inner(step): the rate of `schedule_or_lr` (a
    schedule or a number) ramped up linearly over the first `warmup_steps` steps.

        sched = gn.optim.schedules.LinearWarmup(gn.optim.schedules.CosineDecay(0.1, 1000), 10)
        sched.value(0)   # 0.01
    """

    def __init__(self, schedule_or_lr, warmup_steps):
        if not isinstance(schedule_or_lr, Schedule):
            _check_number("LinearWarmup", "schedule_or_lr", schedule_or_lr)
        self.schedule_or_lr = schedule_or_lr
        self.warmup_steps = _check_number("LinearWarmup", "warmup_steps", warmup_steps,
                                          True, True)

    def rate(self, t):
        inner = self.schedule_or_lr
        inner = inner.rate(t) if isinstance(inner, Schedule) else _scalar(inner, t.dtype)
        one = _scalar(1, t.dtype)
        return inner * minimum(one, (t + one) / _scalar(self.warmup_steps, t.dtype))


class schedules:  # noqa: N801 - a namespace, read as gn.optim.schedules.StepDecay
    """Learning-rate schedules for any optimizer's `lr` (see `Schedule`):

        lr = gn.optim.schedules.LinearWarmup(gn.optim.schedules.CosineDecay(0.1, 1000), 50)
        step = gn.compile(loss, updates=gn.optim.Adam(lr).updates(loss, params))
    """
    Schedule = Schedule
    StepDecay = StepDecay
    ExponentialDecay = ExponentialDecay
    CosineDecay = CosineDecay
    LinearWarmup = LinearWarmup


# ---------------------------------------------------------------------------------------
# Optimizers


class Optimizer:
    """Base class: `updates` differentiates the loss once, clips the gradients by their
    global norm (`clipnorm`), adds the L2 term (`weight_decay`) and asks
    `rule(p, g, lr, t)` for each parameter's new value and its state variables' new values
    (`lr`: the rate this step, `t`: the steps already taken, both scalars of p's dtype; `t`
    is None unless the optimizer counts steps). New values have their parameter's shape.

        class SignSGD(gn.optim.Optimizer):
            def __init__(self, lr=0.01):
                self.lr = lr
            def rule(self, p, g, lr, t):
                return {p: p - lr * gn.sign(g)}
        step = gn.compile(loss, updates=SignSGD(0.01).updates(loss, params))
    """

    lr = None
    weight_decay = 0.0
    clipnorm = None
    counts_steps = False  # the rule uses t (Adam's bias correction)

    def updates(self, loss, params):
        """{param: new value node, state variable: new value node} for `gn.compile`,
        including the state updates of the layers in the loss's graph (a Dropout's step
        counter, a BatchNorm's running averages: `gn.nn.state_updates(loss)`)."""
        from .nn import state_updates
        updates = self._param_updates(loss, params)
        for state, new in state_updates(loss).items():
            updates.setdefault(state, new)
        return updates

    def apply_updates(self, params, grads):
        """Like `updates`, but from given gradient nodes instead of differentiating a loss,
        e.g. `gn.input` nodes fed with gradients averaged over processes (gn.distributed).

            g = gn.input("gW", W.shape)
            apply = gn.compile([], updates=opt.apply_updates([W], [g]))
        """
        return self._param_updates(None, params, grads)

    def _check_options(self):
        name = type(self).__name__
        for option, value in vars(self).items():
            if not option.startswith("_"):
                _check_hyperparameter(name, option, value)
        if self.clipnorm is not None and not isinstance(self.clipnorm, Node) and \
                not self.clipnorm > 0:
            raise OptionError(f"{name}: clipnorm must be positive, got {self.clipnorm!r} "
                              f"(at {user_location()})")

    @applied_alike()  # (each parameter's update: the same ops on the same shapes)
    @located  # (the nodes it makes: see errors.located)
    def _param_updates(self, loss, params, grads=None):
        owner = f"{type(self).__name__}.updates"
        self._check_options()
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
        if self.clipnorm is not None:
            grads = self._clip_by_global_norm(grads)
        counter = None
        if self.counts_steps or isinstance(self.lr, Schedule):
            counter = self._step_counter(params)
        per_dtype = {}  # the rate and step count, built once per dtype
        updates = {}
        for p, g in zip(params, grads):
            if p.dtype not in per_dtype:
                t = None if counter is None else _scalar(counter, p.dtype)
                lr = self.lr.rate(t) if isinstance(self.lr, Schedule) else \
                    _scalar(self.lr, p.dtype)
                per_dtype[p.dtype] = lr, t
            lr, t = per_dtype[p.dtype]
            if self._decays_gradient() and not _is_zero(self.weight_decay):
                g = g + _scalar(self.weight_decay, p.dtype) * p
            updates.update(self.rule(p, g, lr, t))
        if counter is not None:
            updates[counter] = counter + _scalar(1, counter.dtype)
        return updates

    def _decays_gradient(self):
        return True  # L2 weight decay: added to the gradient (AdamW decays the weights)

    def _clip_by_global_norm(self, grads):
        """Every gradient times min(1, clipnorm / √(Σ g²)) over all the gradients, in the
        first gradient's dtype (written clipnorm / max(norm, clipnorm): no 0/0)."""
        dtype = grads[0].dtype
        squares = [reduce_sum(g * g) for g in grads]
        total = squares[0] if squares[0].dtype == dtype else cast(squares[0], dtype)
        for s in squares[1:]:
            total = total + (s if s.dtype == dtype else cast(s, dtype))
        clipnorm = _scalar(self.clipnorm, dtype)
        scale = clipnorm / maximum(sqrt(total), clipnorm)
        return [g * (scale if g.dtype == dtype else cast(scale, g.dtype)) for g in grads]

    def _step_counter(self, params):
        """One step counter for the parameters trained together (the same counter for every
        step, compiled or eager, that updates this set of parameters; another model trained
        with this optimizer gets its own): the number of steps taken."""
        slots = self.__dict__.setdefault("_slots", {})
        members = tuple(params)
        key = (None, "t", frozenset(map(id, members)))  # (the entry keeps them alive)
        if key not in slots:
            slots[key] = (members, variable(f"{type(self).__name__.lower()}/t",
                                            np.zeros((), np.float32)))
        return slots[key][1]

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


def _is_zero(value):
    return not isinstance(value, Node) and value == 0


class SGD(Optimizer):
    """θ ← θ − η∇L; with momentum β: m ← βm − η∇L, θ ← θ + m; with `nesterov=True`
    (PyTorch's form): v ← βv + ∇L, θ ← θ − η(∇L + βv).

        opt = gn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    """

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clipnorm=None):
        if nesterov and _is_zero(momentum):
            raise OptionError(f"SGD: nesterov=True needs a momentum, got momentum={momentum!r}"
                              f" (at {user_location()})")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.clipnorm = weight_decay, clipnorm

    def rule(self, p, g, lr, t):
        if self.nesterov:
            v = self.slot(p, "v")
            momentum = _scalar(self.momentum, p.dtype)
            v_new = momentum * v + g
            return {v: v_new, p: p - lr * (g + momentum * v_new)}
        if _is_zero(self.momentum):
            return {p: p - lr * g}
        m = self.slot(p, "m")
        m_new = _scalar(self.momentum, p.dtype) * m - lr * g
        return {m: m_new, p: p + m_new}


class Adagrad(Optimizer):
    """G ← G + g²; θ ← θ − η g / (√G + ε).

        opt = gn.optim.Adagrad(lr=0.01, weight_decay=1e-4, clipnorm=1.0)
    """

    def __init__(self, lr=0.01, eps=1e-7, weight_decay=0.0, clipnorm=None):
        self.lr, self.eps = lr, eps
        self.weight_decay, self.clipnorm = weight_decay, clipnorm

    def rule(self, p, g, lr, t):
        acc = self.slot(p, "acc")
        acc_new = acc + g * g
        return {acc: acc_new, p: p - lr * g / ((acc_new ** 0.5) + _scalar(self.eps, p.dtype))}


class RMSprop(Optimizer):
    """v ← ρv + (1−ρ)g²; θ ← θ − η g / (√v + ε).

        opt = gn.optim.RMSprop(lr=1e-3, weight_decay=1e-4, clipnorm=1.0)
    """

    def __init__(self, lr=0.001, rho=0.9, eps=1e-7, weight_decay=0.0, clipnorm=None):
        self.lr, self.rho, self.eps = lr, rho, eps
        self.weight_decay, self.clipnorm = weight_decay, clipnorm

    def rule(self, p, g, lr, t):
        v = self.slot(p, "v")
        v_new = _scalar(self.rho, p.dtype) * v + _one_minus(self.rho, p.dtype) * g * g
        return {v: v_new, p: p - lr * g / ((v_new ** 0.5) + _scalar(self.eps, p.dtype))}


class Adadelta(Optimizer):
    """v ← ρv + (1−ρ)g²; Δ = −√(u+ε)/√(v+ε)·g; u ← ρu + (1−ρ)Δ²; θ ← θ + lr·Δ.

        opt = gn.optim.Adadelta(lr=1.0, weight_decay=1e-4, clipnorm=1.0)
    """

    def __init__(self, lr=1.0, rho=0.95, eps=1e-6, weight_decay=0.0, clipnorm=None):
        self.lr, self.rho, self.eps = lr, rho, eps
        self.weight_decay, self.clipnorm = weight_decay, clipnorm

    def rule(self, p, g, lr, t):
        v, u = self.slot(p, "v"), self.slot(p, "u")
        rho, one_minus = _scalar(self.rho, p.dtype), _one_minus(self.rho, p.dtype)
        eps = _scalar(self.eps, p.dtype)
        v_new = rho * v + one_minus * g * g
        delta = -((u + eps) ** 0.5) / ((v_new + eps) ** 0.5) * g
        return {v: v_new, u: rho * u + one_minus * delta * delta, p: p + lr * delta}


class Adam(Optimizer):
    """m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²; θ ← θ − η m̂ / (√v̂ + ε), bias-corrected
    with the step number t + 1 (the counter variable "adam/t" holds the steps taken).

        opt = gn.optim.Adam(lr=1e-3, weight_decay=1e-4, clipnorm=1.0)
    """

    counts_steps = True

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0,
                 clipnorm=None):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.clipnorm = weight_decay, clipnorm

    def rule(self, p, g, lr, t):
        dt = p.dtype
        t = t + _scalar(1, dt)
        m, v = self.slot(p, "m"), self.slot(p, "v")
        b1, b2 = _scalar(self.beta1, dt), _scalar(self.beta2, dt)
        m_new = b1 * m + _one_minus(self.beta1, dt) * g
        v_new = b2 * v + _one_minus(self.beta2, dt) * g * g
        m_hat = m_new / (1 - b1 ** t)
        v_hat = v_new / (1 - b2 ** t)
        return {m: m_new, v: v_new,
                p: self._decayed(p, lr) - lr * m_hat / (v_hat ** 0.5 + _scalar(self.eps, dt))}

    def _decayed(self, p, lr):
        return p


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's AdamW): the weights
    shrink by η·wd·θ beside the Adam step, θ ← θ − η·wd·θ − η m̂ / (√v̂ + ε), instead of
    wd·θ being added to the gradient.

        opt = gn.optim.AdamW(lr=1e-3, weight_decay=0.01)
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.01,
                 clipnorm=None):
        super().__init__(lr, beta1, beta2, eps, weight_decay, clipnorm)

    def _decays_gradient(self):
        return False

    def _decayed(self, p, lr):
        if _is_zero(self.weight_decay):
            return p
        return p - lr * _scalar(self.weight_decay, p.dtype) * p
