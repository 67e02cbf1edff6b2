"""Layers: small objects that add graph pieces with named, seeded parameters (`gn.nn`).

A layer is called on a node and returns a node, so the functional style works:

    x = gn.input("x", (None, 64))
    h = gn.nn.Dense(32, "relu")(x)
    logits = gn.nn.Dense(10)(h)

and `Sequential` chains layers. A layer makes its parameters on its first call, when the input
shape is known; calling it again reuses them (shared weights). `.params` lists them.

Eager. Called on a NumPy array instead of a node, a layer computes at once with its
parameters' current values (and inside `gn.eager.step`, records on the tape so the step can
differentiate and update them). One model definition thus runs both ways:

    model = Sequential([Dense(32, "relu"), Dense(10)])
    logits_node = model(gn.input("x", (None, 64)))   # graph
    logits = model(X)                                # eager: an array, same parameters

A layer first called on an array is built as if on a graph input of the array's shape with
the batch dim symbolic, so it gets the same names and initial weights either way.

Names. A layer without a name takes its kind and the next free number in the graph it is
called on: the first Dense below the input is "dense1" (params "dense1/W", "dense1/b"), the
next "dense2", and so on. Names therefore depend only on the model, not on what else the
process built, and parameter names are unique along a chain of layers. Two unnamed layers of
one kind applied side by side to the same node would pick the same name; `gn.compile`
rejects that, so name them (`Dense(8, name="left")`).

Seeds. Without `seed=`, a layer seeds its initialisers from its name, so the same model
starts from the same weights in every run.

Dtype. Parameters take the float dtype of the layer's input (float64 inputs give float64
parameters, handy for gradient checks).

Training and inference. Dropout and BatchNorm behave differently while training. Calling
them on a node builds BOTH behaviours into the graph, joined by a `gn.training_branch`
node: the graph as built is the training graph (dropout masks, batch statistics), and
`inference(outputs)` rewrites it into the inference graph (identity, running averages)
sharing the same parameters. Their state (a dropout's step counter, a batch norm's running
averages) is updated by the training step: `state_updates(outputs)` lists the new values,
and every optimizer's `.updates(loss, params)` includes those of its loss, so

    loss = gn.softmax_cross_entropy(model(x), y)
    step = gn.compile(loss, updates=gn.optim.Adam(0.01).updates(loss, model.params))
    evaluate = gn.compile(gn.nn.inference(loss))          # what gn.fit validates with

Inside `with inference_mode():` layers build (on nodes) or compute (on arrays) their
inference behaviour only; eager calls outside it train (a dropout draws a new mask and a
batch norm updates its running averages at each call, as PyTorch's train mode does).
"""
import contextlib
import contextvars
import copy
import re
import zlib

import numpy as np

from . import ops
from . import shapes as S
from .api import ValueState, param, variable
from .errors import DTypeError, GraphError, ShapeError, user_location
from .graph import topological_order
from .node import Node, make_node

ACTIVATIONS = {
    "sigmoid": ops.sigmoid, "tanh": ops.tanh, "relu": ops.relu, "leaky_relu": ops.leaky_relu,
    "elu": ops.elu, "selu": ops.selu, "silu": ops.silu, "swish": ops.swish,
    "gelu": ops.gelu, "gelu_tanh": lambda x: ops.gelu(x, approximate=True),
    "softplus": ops.softplus, "softsign": ops.softsign, "hard_sigmoid": ops.hard_sigmoid,
    "step": ops.step, "softmax": ops.softmax, "linear": lambda x: x,
}

# Whether layers build (or compute) their inference behaviour only; see inference_mode.
_inference_only = contextvars.ContextVar("graphnn_inference_only", default=False)


@contextlib.contextmanager
def inference_mode():
    """Inside this block, Dropout and BatchNorm build (on nodes) or compute (on arrays) their
    inference behaviour only: identity, running averages; no state is updated.

        with gn.nn.inference_mode():
            probabilities = gn.softmax(model(X_test))        # eager, no dropout
    """
    token = _inference_only.set(True)
    try:
        yield
    finally:
        _inference_only.reset(token)


def is_training():
    """False inside `inference_mode()`, else True.

        with gn.nn.inference_mode():
            assert not gn.nn.is_training()
    """
    return not _inference_only.get()


def _training_branches(outputs):
    return [n for n in topological_order(outputs) if n.op == "training_branch"]


def inference(outputs):
    """The inference graph of `outputs` (a node or a list of nodes): every
    `gn.training_branch` (Dropout, BatchNorm) replaced by its inference value, the rest
    shared. The same parameters; no state updates. Shapes are unchanged.

        loss = gn.softmax_cross_entropy(model(x), y)          # training graph
        val_loss = gn.nn.inference(loss)                      # dropout off, running stats
        evaluate = gn.compile([val_loss, gn.nn.inference(acc)])
    """
    from .passes import rebuild
    single = isinstance(outputs, Node)
    roots = [outputs] if single else list(outputs)
    for root in roots:
        if not isinstance(root, Node):
            raise GraphError(f"gn.nn.inference takes graph nodes, got {type(root).__name__} "
                             f"(at {user_location()})")
    if not _training_branches(roots):
        return outputs if single else roots
    new = rebuild(roots, lambda node, inputs: inputs[1]
                  if node.op == "training_branch" else None)
    return new[0] if single else new


def state_updates(outputs):
    """{state: new value node} that a training step computing `outputs` (a node or a list)
    applies: each Dropout's step counter, each BatchNorm's running averages. Optimizers'
    `.updates(loss, params)` already include those of the loss; pass these yourself when
    you compile a training step without an optimizer.

        step = gn.compile(loss, updates={**my_updates, **gn.nn.state_updates(loss)})
    """
    roots = [outputs] if isinstance(outputs, Node) else list(outputs)
    found = {}
    for branch in _training_branches(roots):
        pairs = branch.inputs[2:]
        for state, new in zip(pairs[::2], pairs[1::2]):
            if found.get(state, new) is not new:
                raise GraphError(f"gn.nn.state_updates: {state.label()} gets two different "
                                 f"new values (a layer's state used by two layers?) "
                                 f"(at {user_location()})")
            found[state] = new
    return found


def _training_value(x, train, infer, updates):
    """A layer's output: `train` joined with `infer` (and the state updates) by a
    training_branch in graph mode; eagerly, the updates are applied at once (in place) and
    `train` is the value."""
    if isinstance(x, Node):
        return ops.training_branch(train, infer, updates)
    for state, new in updates.items():
        np.copyto(state.value, np.asarray(new), casting="same_kind")
    if updates:
        ValueState.host_writes += 1  # device copies of these states are now older
    return train


def activation_fn(activation):
    """`None`/"linear" -> identity, a name from ACTIVATIONS -> that op, a callable -> itself
    (what a layer's `activation=` argument accepts; the function keeps its input's shape).

        gn.nn.activation_fn("relu") is gn.relu        # True
        h = gn.nn.activation_fn("tanh")(z)            # (None, 8) -> (None, 8)
    """
    if activation is None:
        return ACTIVATIONS["linear"]
    if callable(activation):
        return activation
    if activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise GraphError(f"unknown activation {activation!r}; choose one of "
                     f"{', '.join(sorted(ACTIVATIONS))} or pass a function "
                     f"(at {user_location()})")


def _free_name(kind, x, op=None):
    """`kind` + the lowest number above every `kind<n>/...` parameter upstream of `x`; for a
    layer without parameters, 1 + the number of its `op` nodes upstream."""
    upstream = topological_order([x])
    if op is not None:
        return f"{kind}{sum(n.op == op for n in upstream) + 1}"
    pattern = re.compile(rf"(?:.*/)?{re.escape(kind)}(\d+)/")
    used = [int(m.group(1)) for n in upstream if n.op == "param"
            for m in [pattern.match(n.name)] if m]
    return f"{kind}{max(used, default=0) + 1}"


def _eager_array(x, layer):
    if isinstance(x, np.ndarray) or (isinstance(x, (list, tuple)) and x) or \
            isinstance(x, np.generic):
        array = np.asarray(x)
        if array.dtype.kind in "fiu":
            return array
    raise GraphError(f"{type(layer).__name__} is called on graph nodes (gn.input or another "
                     f"layer's output) or, eagerly, on NumPy arrays; got "
                     f"{type(x).__name__} (at {user_location()})")


def _stand_in(array):
    """A graph input (not registered by name) of the array's shape, the batch dim
    symbolic: what a layer first called on an array is built on."""
    shape = S.make_shape((None,) + tuple(array.shape[1:])) if array.ndim else ()
    return make_node("input", {"name": "eager_input"}, (), shape, array.dtype,
                     name="eager_input", intern=False)


def _pair(value, what):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value), int(value)
    try:
        value = tuple(value)
    except TypeError:
        value = (value,)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise GraphError(f"{what} must be an int or a pair of ints, got {value!r} "
                         f"(at {user_location()})")
    return value


class Layer:
    """Base class: `__call__` names and builds the layer on first use, then runs `forward`.

    Subclasses set `kind` (the prefix of automatic names) and implement `build(x)` (make the
    parameters with `self.add_param`) and `forward(x)`. Shapes: a layer maps a node
    (batch, ...) to a node (batch, ...); `predict(x)` maps an array the same way.

        class Scale(gn.nn.Layer):
            kind = "scale"
            def build(self, x):
                self.s = self.add_param("s", (x.shape[-1],), "ones", x)
            def forward(self, x):
                return x * self.s
        y = Scale()(x)                    # (None, 3) -> (None, 3), param "scale1/s" (3,)
    """

    kind = "layer"
    op = None  # for layers without parameters: the op whose count numbers them

    def __init__(self, name=None, seed=None):
        self.name, self.seed = name, seed
        self._params = []
        self.built = False

    def __call__(self, x):
        if not isinstance(x, Node):
            return self._eager_call(x)
        if not self.built:
            if self.name is None:
                self.name = _free_name(self.kind, x, self.op)
            self.build(x)
            self.built = True
        return self.forward(x)

    def _eager_call(self, x):
        """On an array: build (if need be) on a stand-in graph input of its shape, then
        compute at once with the parameters' current values."""
        from .eager import building_graph, reading_state
        array = _eager_array(x, self)
        if not self.built:
            with building_graph():
                self(_stand_in(array))
        with reading_state():
            return self._eager_forward(x)

    def _eager_forward(self, x):
        return self.forward(x)

    @property
    def params(self):
        """The layer's parameters (made on its first call)."""
        if not self.built:
            raise GraphError(f"{type(self).__name__} has no parameters yet: call it on an "
                             f"input first (at {user_location()})")
        return list(self._params)

    def predict(self, x, batch_size=256, backend="cpu"):
        """The layer's (or model's) output for the samples in `x`, a NumPy array.

        `x` (n, ...) is fed in batches of `batch_size` (the last one may be smaller) to an
        inference function compiled for `backend` on first use and cached on the layer
        (one per feature shape, dtype and backend); training-only nodes (Dropout,
        BatchNorm's batch statistics) take their inference form. Float inputs are cast to
        the parameters' dtype. Returns (n, ...) as `model(x_node)` computes it.

            model = gn.nn.Sequential([gn.nn.Dense(32, "relu"), gn.nn.Dense(10)])
            probs = model.predict(X_test, batch_size=128)   # (359, 64) -> (359, 10)
        """
        from .train import predict
        return predict(self, x, batch_size, backend)

    def add_param(self, short_name, shape, init, x):
        """A parameter named "<layer>/<short_name>" in the dtype of `x`, seeded by name."""
        name = f"{self.name}/{short_name}"
        seed = self.seed if self.seed is not None else zlib.crc32(self.name.encode())
        seed = seed * 1000 + len(self._params)  # distinct streams for W, b, ...
        dtype = x.dtype if x.dtype.kind == "f" else "float32"
        p = param(name, shape=shape, init=init, seed=seed, dtype=dtype)
        self._params.append(p)
        return p

    def build(self, x):
        pass

    def forward(self, x):
        raise NotImplementedError

    def _require_rank(self, x, rank, what):
        if x.ndim != rank:
            raise ShapeError(f"{type(self).__name__} '{self.name}' expects {what}, got "
                             f"{x.label()} of shape {x.shape} (at {user_location()})")

    def _static(self, x, axis):
        size = x.shape[axis]
        if size is None:
            raise ShapeError(f"{type(self).__name__} '{self.name}' needs a known size on axis "
                             f"{axis} of its input, got {x.label()} of shape {x.shape} "
                             f"(at {user_location()})")
        return size

    def __repr__(self):
        return f"{type(self).__name__}({self.name or '?'})"


class Dense(Layer):
    """y = activation(x @ W + b); x of shape (batch, features). Params "<name>/W", "<name>/b".

        h = gn.nn.Dense(64, "relu")(x)
    """

    kind = "dense"

    def __init__(self, units, activation=None, use_bias=True, init="glorot_uniform",
                 name=None, seed=None):
        super().__init__(name, seed)
        self.units, self.use_bias, self.init = int(units), use_bias, init
        self.activation = activation_fn(activation)

    def build(self, x):
        self._require_rank(x, 2, "(batch, features)")
        self.W = self.add_param("W", (self._static(x, 1), self.units), self.init, x)
        self.b = self.add_param("b", (self.units,), "zeros", x) if self.use_bias else None

    def forward(self, x):
        y = ops.matmul(x, self.W)
        if self.b is not None:
            y = y + self.b
        return self.activation(y)


class Conv2D(Layer):
    """2-D convolution of NHWC images with an HWIO kernel "<name>/W", plus bias "<name>/b":
    (batch, h, w, c) -> (batch, h', w', filters).

    `padding="same"` gives h' = ceil(h / strides) (Keras/TensorFlow, the extra pad at the
    bottom/right), "valid" uses whole windows only: h' = floor((h - span) / strides) + 1,
    where span = dilation·(k − 1) + 1. `strides` is an int (or a pair of equal ints);
    `dilation_rate` (an int or a pair) spaces the kernel's taps that many pixels apart
    (atrous convolution: the kernel is dilated with zeros, see `gn.conv2d`).

        y = gn.nn.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
        y = gn.nn.Conv2D(16, 3, dilation_rate=2)(x)   # a 5x5 receptive field, 9 taps
    """

    kind = "conv2d"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, init="glorot_uniform", dilation_rate=1, name=None,
                 seed=None):
        super().__init__(name, seed)
        self.filters, self.kernel_size = int(filters), _pair(kernel_size, "kernel_size")
        sh, sw = _pair(strides, "Conv2D strides") if not isinstance(strides, bool) else (0, 0)
        if sh != sw or sh < 1:
            raise GraphError(f"Conv2D strides must be a positive int (or a pair of equal "
                             f"ints), got {strides!r} (at {user_location()})")
        self.dilation_rate = _pair(dilation_rate, "Conv2D dilation_rate")
        if padding not in ("valid", "same"):
            raise GraphError(f"Conv2D padding must be 'valid' or 'same', got {padding!r:.60} "
                             f"(at {user_location()})")
        self.strides, self.padding, self.use_bias, self.init = sh, padding, use_bias, init
        self.activation = activation_fn(activation)

    def build(self, x):
        self._require_rank(x, 4, "NHWC images (batch, height, width, channels)")
        shape = self.kernel_size + (self._static(x, 3), self.filters)
        self.W = self.add_param("W", shape, self.init, x)
        self.b = self.add_param("b", (self.filters,), "zeros", x) if self.use_bias else None

    def forward(self, x):
        y = ops.conv2d(x, self.W, stride=self.strides, padding=self.padding,
                       dilation=self.dilation_rate)
        if self.b is not None:
            y = y + self.b
        return self.activation(y)


class MaxPool2D(Layer):
    """Maximum over pool_size x pool_size windows of NHWC images (stride = pool_size
    unless given; whole windows only).

    Shapes: (batch, h, w, c) -> (batch, h // pool_size, w // pool_size, c) for stride =
    pool_size.

        y = gn.nn.MaxPool2D(2)(x)            # (None, 8, 8, 16) -> (None, 4, 4, 16)
    """

    kind, op = "maxpool", "max_pool2d"

    def __init__(self, pool_size=2, strides=None, name=None):
        super().__init__(name)
        self.pool_size, self.strides = int(pool_size), strides

    def forward(self, x):
        return ops.max_pool2d(x, size=self.pool_size, stride=self.strides)


class AvgPool2D(MaxPool2D):
    """Mean over pool_size x pool_size windows of NHWC images (stride = pool_size unless
    given; whole windows only).

    Shapes: (batch, h, w, c) -> (batch, h // pool_size, w // pool_size, c) for stride =
    pool_size.

        y = gn.nn.AvgPool2D(2)(x)            # (None, 8, 8, 16) -> (None, 4, 4, 16)
    """

    kind, op = "avgpool", "avg_pool2d"

    def forward(self, x):
        return ops.avg_pool2d(x, size=self.pool_size, stride=self.strides)


class Flatten(Layer):
    """Flatten all but the batch axis: (batch, d1, d2, ...) -> (batch, d1*d2*...).

        y = gn.nn.Flatten()(x)               # (None, 4, 4, 16) -> (None, 256)
    """

    kind, op = "flatten", "reshape"

    def forward(self, x):
        return ops.flatten(x)


class GlobalAveragePooling2D(Layer):
    """The mean over height and width of NHWC images: (batch, h, w, c) -> (batch, c).

        x = gn.input("img", (None, 8, 8, 16))
        features = gn.nn.GlobalAveragePooling2D()(x)       # (batch, 16)
    """

    kind, op = "gap", "mean"

    def forward(self, x):
        if isinstance(x, Node):
            self._require_rank(x, 4, "NHWC images (batch, height, width, channels)")
        return ops.mean(x, axis=(1, 2))


class Dropout(Layer):
    """Inverted dropout: while training, each element is kept with probability 1 - rate and
    scaled by 1 / (1 - rate), else zeroed; at inference it is the identity (see the module
    docstring on modes). Any shape; the output has the input's shape.

    The mask is drawn by `gn.random_uniform` (Philox-4x32, a counter-based generator) from
    (`seed`, the layer's step counter "<name>/step", element index): numpy, cpu and cuda
    draw the same mask, and the training step increments the counter (an optimizer's
    `.updates` includes it), so each step draws a new mask without recompiling. Without
    `seed`, the layer seeds itself from its name. Calling the same layer on two inputs of
    one shape draws the same mask for both at a step. The float32 counter counts to 2**24
    steps and then starts again at 0.

        h = gn.nn.Dropout(0.5, seed=1)(gn.nn.Dense(64, "relu")(x))     # (batch, 64)
    """

    kind, op = "dropout", "random_uniform"
    COUNTER_LIMIT = 2 ** 24  # float32 counts exactly up to here

    def __init__(self, rate, seed=None, name=None):
        super().__init__(name, seed)
        if not isinstance(rate, (int, float, np.integer, np.floating)) or \
                isinstance(rate, (bool, np.bool_)) or not 0 <= rate < 1:
            raise GraphError(f"Dropout: rate must be a number in [0, 1), got {rate!r:.60} "
                             f"(at {user_location()})")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or
                                 isinstance(seed, bool) or not 0 <= seed < 2 ** 62):
            raise GraphError(f"Dropout: seed must be an int in [0, 2**62), got {seed!r:.60} "
                             f"(at {user_location()})")
        self.rate = float(rate)

    def __call__(self, x):
        if not self.built and (self.rate == 0 or not is_training()):
            # the identity: nothing to build, and a name chosen now could repeat another
            # dropout's (an identity leaves no node to count)
            if not isinstance(x, Node):
                _eager_array(x, self)  # (a clear error for anything but arrays)
            return x
        return super().__call__(x)

    @property
    def params(self):
        """A dropout has no parameters (its step counter is a variable, `.counter`)."""
        return []

    def build(self, x):
        self.counter = variable(f"{self.name}/step", np.zeros((), np.float32))
        self.stream = self.seed if self.seed is not None else zlib.crc32(self.name.encode())

    def forward(self, x):
        if self.rate == 0 or not is_training():
            return x
        keep = ops.ge(ops.random_uniform(self.counter, x, seed=self.stream), self.rate)
        train = x * keep * (1 / (1 - self.rate))
        # the next step's counter, back to 0 where float32 would stop counting
        counter = self.counter
        new = (counter + 1) * ops.gt(self.COUNTER_LIMIT - 1, counter)
        return _training_value(x, train, x, {counter: new})


def _normalize(x, axes, eps, keepdims=False):
    """((x − μ) / √(σ² + eps), μ, σ²): μ and the biased σ² taken over `axes` (two passes:
    the variance of the centered values)."""
    mean = ops.mean(x, axis=axes, keepdims=keepdims)
    centered = x - mean
    var = ops.mean(centered * centered, axis=axes, keepdims=keepdims)
    return centered / ops.sqrt(var + eps), mean, var


def _scale_shift(y, gamma, beta):
    """y · gamma + beta, each left out when None."""
    y = y * gamma if gamma is not None else y
    return y + beta if beta is not None else y


class BatchNorm(Layer):
    """Batch normalization over every axis but the last (the features of (batch, features),
    the channels of NHWC images): y = (x − μ) / √(σ² + eps) · gamma + beta.

    While training, μ and σ² are the batch's mean and (biased) variance, and the step
    updates the running averages "<name>/running_mean" and "<name>/running_var" (gn
    variables) as PyTorch does: r ← (1 − momentum)·r + momentum·batch value, the variance
    taken unbiased (n / (n − 1); Keras's `momentum=0.99` is `momentum=0.01` here). At
    inference (`gn.nn.inference`, `inference_mode()`) the running averages are used.
    Parameters "<name>/gamma" (ones) and "<name>/beta" (zeros), of shape (features,).
    Output: the input's shape.

        h = gn.nn.BatchNorm()(gn.nn.Conv2D(16, 3, padding="same")(x))   # (batch, h, w, 16)
    """

    kind = "batchnorm"

    def __init__(self, momentum=0.1, eps=1e-5, center=True, scale=True, name=None):
        super().__init__(name)
        for option, value in (("momentum", momentum), ("eps", eps)):
            if not isinstance(value, (int, float, np.integer, np.floating)) or \
                    isinstance(value, (bool, np.bool_)) or not 0 <= value <= 1:
                raise GraphError(f"BatchNorm: {option} must be a number in [0, 1], got "
                                 f"{value!r:.60} (at {user_location()})")
        self.momentum, self.eps = float(momentum), float(eps)
        self.center, self.scale = bool(center), bool(scale)

    def build(self, x):
        if x.ndim < 2:
            self._require_rank(x, 2, "(batch, ..., features)")
        features = self._static(x, x.ndim - 1)
        self.gamma = self.add_param("gamma", (features,), "ones", x) if self.scale else None
        self.beta = self.add_param("beta", (features,), "zeros", x) if self.center else None
        dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        self.running_mean = variable(f"{self.name}/running_mean", np.zeros(features, dtype))
        self.running_var = variable(f"{self.name}/running_var", np.ones(features, dtype))

    def forward(self, x):
        rm, rv = self.running_mean, self.running_var
        graph = isinstance(x, Node)
        if graph or not is_training():
            infer = _scale_shift((x - rm) / ops.sqrt(rv + self.eps), self.gamma, self.beta)
            if not is_training():
                return infer
        else:
            infer = x  # (eagerly while training it is not needed)
        axes = tuple(range((x.ndim if graph else np.ndim(x)) - 1))
        normalized, mean, var = _normalize(x, axes, self.eps)
        train = _scale_shift(normalized, self.gamma, self.beta)
        r = ops.reciprocal_count(x, axis=axes)  # 1/n: n/(n-1) = 1/(1 - 1/n); n = 1 keeps var
        unbiased = var / ops.maximum(1 - r, r)
        m = self.momentum
        updates = {rm: (1 - m) * rm + m * mean, rv: (1 - m) * rv + m * unbiased}
        return _training_value(x, train, infer, updates)


class LayerNorm(Layer):
    """Layer normalization over the last axis (or the last `len(axis)` axes): each sample's
    features are normalized by their own mean and (biased) variance, y = (x − μ) /
    √(σ² + eps) · gamma + beta, the same in training and inference (PyTorch's
    `nn.LayerNorm(shape)`; Keras's `LayerNormalization(epsilon=1e-5)`). Parameters
    "<name>/gamma" (ones) and "<name>/beta" (zeros) have the normalized axes' shape. Output:
    the input's shape.

        h = gn.nn.LayerNorm()(gn.input("tokens", (None, 10, 32)))      # (batch, 10, 32)
    """

    kind = "layernorm"

    def __init__(self, axis=-1, eps=1e-5, center=True, scale=True, name=None):
        super().__init__(name)
        self.axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        if not isinstance(eps, (int, float, np.integer, np.floating)) or eps < 0:
            raise GraphError(f"LayerNorm: eps must be a non-negative number, got {eps!r:.60} "
                             f"(at {user_location()})")
        self.eps, self.center, self.scale = float(eps), bool(center), bool(scale)

    def build(self, x):
        axes = sorted(a % x.ndim if isinstance(a, (int, np.integer)) and -x.ndim <= a < x.ndim
                      else -1 for a in self.axis)
        if not self.axis or axes[0] < 1 or axes != list(range(x.ndim - len(axes), x.ndim)):
            raise ShapeError(f"LayerNorm '{self.name}': axis={self.axis} must name the last "
                             f"axes (not the batch axis) of its input {x.label()} "
                             f"(at {user_location()})")
        self.axes = tuple(axes)
        shape = tuple(self._static(x, a) for a in self.axes)
        self.gamma = self.add_param("gamma", shape, "ones", x) if self.scale else None
        self.beta = self.add_param("beta", shape, "zeros", x) if self.center else None

    def forward(self, x):
        normalized, _, _ = _normalize(x, self.axes, self.eps, keepdims=True)
        return _scale_shift(normalized, self.gamma, self.beta)


class _Recurrent(Layer):
    """What the unrolled recurrent layers share. Input (batch, T, features), T known: the
    loop is unrolled over the T steps and every step uses the SAME weights, so the
    derivative graph sums their T gradient contributions. Subclasses make their weights in
    `build` and compute one step in `cell(x_t, state) -> (output, state)` (state None at
    the first step: a zero initial state adds nothing, so it is left out of the graph).

    Returns the last output (batch, units), or every output (batch, T, units) with
    `return_sequences=True`. With `go_backwards=True` the steps run from the last time step
    to the first, and a returned sequence is in that (reversed) order, as in Keras;
    `Bidirectional` uses it and puts the outputs back in time order.
    """

    def __init__(self, units, return_sequences=False, go_backwards=False, name=None,
                 seed=None):
        super().__init__(name, seed)
        self.units = int(units)
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)

    def _check_input(self, x):
        self._require_rank(x, 3, "(batch, time steps, features)")
        self._static(x, 1)
        return self._static(x, 2)

    def outputs(self, x):
        """The output of every step, in the order the steps ran."""
        steps, features = self._static(x, 1), self._static(x, 2)
        order = range(steps - 1, -1, -1) if self.go_backwards else range(steps)
        state, outputs = None, []
        for t in order:
            x_t = ops.reshape(ops.slice_axis(x, 1, t, t + 1), (-1, features))
            y, state = self.cell(x_t, state)
            outputs.append(y)
        return outputs

    def forward(self, x):
        outputs = self.outputs(x)
        if not self.return_sequences:
            return outputs[-1]
        return _stack_in_time(outputs, self.units)

    def cell(self, x_t, state):
        raise NotImplementedError


def _stack_in_time(outputs, units):
    """[(batch, units)] * T -> (batch, T, units)."""
    return ops.concat([ops.reshape(o, (-1, 1, units)) for o in outputs], axis=1)


class SimpleRNN(_Recurrent):
    """Elman recurrence y_t = activation(x_t @ Wx + y_{t-1} @ Wy + b), y_0 = 0.

    Input (batch, T, features) with T known: the loop is unrolled over T steps, and every
    step uses the SAME Wx, Wy, b, so the derivative graph sums their T gradient
    contributions. Returns the last state (batch, units), or every state (batch, T, units)
    with `return_sequences=True` (`go_backwards`: see `LSTM`).

        h = gn.nn.SimpleRNN(16)(x)                          # (None, 30, 1) -> (None, 16)
        hs = gn.nn.SimpleRNN(16, return_sequences=True)(x)  # (None, 30, 1) -> (None, 30, 16)
    """

    kind = "rnn"

    def __init__(self, units, activation="tanh", return_sequences=False,
                 init="glorot_uniform", name=None, seed=None, go_backwards=False):
        super().__init__(units, return_sequences, go_backwards, name, seed)
        self.init = init
        self.activation = activation_fn(activation)

    def build(self, x):
        features = self._check_input(x)
        self.Wx = self.add_param("Wx", (features, self.units), self.init, x)
        self.Wy = self.add_param("Wy", (self.units, self.units), self.init, x)
        self.b = self.add_param("b", (self.units,), "zeros", x)

    def cell(self, x_t, y):
        z = ops.matmul(x_t, self.Wx) + self.b
        if y is not None:  # y_0 = 0 adds nothing
            z = z + ops.matmul(y, self.Wy)
        y = self.activation(z)
        return y, y


# ---------------------------------------------------------------------------------------
# Embedding, LSTM, GRU, Bidirectional
# ---------------------------------------------------------------------------------------

def orthogonal(shape, dtype, rng):
    """An initializer (for `gn.param(init=...)` and the layers' `recurrent_init`): a matrix
    with orthonormal rows or columns (Saxe et al.; Keras' default for recurrent weights),
    seeded through `rng`. For (units, 4 * units) the rows are orthonormal.

        W = gn.param("Wh", shape=(8, 32), init=gn.nn.orthogonal, seed=0)
    """
    rows, cols = shape[0], int(np.prod(shape[1:]))
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # the sign convention makes it uniform
    q = q.T if rows < cols else q
    return q[:rows, :cols].reshape(shape).astype(dtype)


class Embedding(Layer):
    """A lookup table: integer ids (batch, ...) -> their rows (batch, ..., dim).

    The table "<name>/table" has shape (num, dim) (Keras' and PyTorch's layout; initialised
    uniformly in [-0.05, 0.05] as Keras does, `dtype` float32 unless asked). Its gradient adds
    each output row's gradient into the row it was read from. Ids must lie in [0, num): a
    graph input holding another id is refused before anything runs (`gn.FeedError`), see
    `gn.embedding`. Compiled, a lookup is one_hot(ids) @ table (one gemm forward and one for
    the table's gradient), so its cost grows with `num`: fine for the vocabularies of
    lecture examples (hundreds to a few thousand rows).

        words = gn.input("words", (None, 20), dtype="int64")
        vectors = gn.nn.Embedding(1000, 16)(words)        # (?, 20, 16)
        h = gn.nn.LSTM(32)(vectors)                       # (?, 32)
    """

    kind = "embedding"

    def __init__(self, num, dim, init="uniform", dtype="float32", name=None, seed=None):
        super().__init__(name, seed)
        self.num, self.dim, self.init = int(num), int(dim), init
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f" or self.num < 1 or self.dim < 1:
            raise GraphError(f"Embedding needs num >= 1, dim >= 1 and a float dtype, got "
                             f"num={num!r}, dim={dim!r}, dtype={dtype!r} "
                             f"(at {user_location()})")

    def build(self, x):
        if x.dtype.kind not in "iu":
            raise DTypeError(f"Embedding '{self.name}' takes integer ids, got {x.label()} "
                             f"of dtype {x.dtype} (declare it with dtype=\"int64\") "
                             f"(at {user_location()})")
        self.table = self.add_param("table", (self.num, self.dim), self.init,
                                    np.empty(0, self.dtype))

    def forward(self, x):
        return ops.embedding(x, self.table)


class _Gated(_Recurrent):
    """LSTM and GRU: `gates` blocks of `units` columns in Wx (features, gates * units) and
    Wh (units, gates * units), an activation and a recurrent (gate) activation."""

    gates = 1

    def __init__(self, units, return_sequences=False, activation="tanh",
                 recurrent_activation="sigmoid", go_backwards=False, init="glorot_uniform",
                 recurrent_init=orthogonal, name=None, seed=None):
        super().__init__(units, return_sequences, go_backwards, name, seed)
        self.activation = activation_fn(activation)
        self.recurrent_activation = activation_fn(recurrent_activation)
        self.init, self.recurrent_init = init, recurrent_init

    def build(self, x):
        """Make Wx and Wh; returns the width of a step's pre-activations."""
        features, width = self._check_input(x), self.gates * self.units
        self.Wx = self.add_param("Wx", (features, width), self.init, x)
        self.Wh = self.add_param("Wh", (self.units, width), self.recurrent_init, x)
        return width


class LSTM(_Gated):
    """Long short-term memory, unrolled over the T steps of (batch, T, features).

    PyTorch's and Keras' equations, gates in their order i, f, g, o (input, forget, cell,
    output), with z_t = x_t @ Wx + h_{t-1} @ Wh + b of shape (batch, 4 * units):

        i = sigmoid(z[:, 0:u])          f = sigmoid(z[:, u:2u])
        g = tanh(z[:, 2u:3u])           o = sigmoid(z[:, 3u:4u])
        c_t = f * c_{t-1} + i * g       h_t = o * tanh(c_t)           (h_0 = c_0 = 0)

    Parameters: "<name>/Wx" (features, 4u), "<name>/Wh" (u, 4u), "<name>/b" (4u,): Keras'
    kernel, recurrent_kernel and bias as they are; PyTorch's weight_ih_l0 = Wx.T,
    weight_hh_l0 = Wh.T, bias_ih_l0 + bias_hh_l0 = b. The forget gate's bias starts at 1
    (`unit_forget_bias`, as in Keras), the others at 0; Wx is glorot-uniform and Wh
    orthogonal (Keras' defaults). `activation` (tanh) and `recurrent_activation`
    (sigmoid) may be changed as in Keras.

    Returns h_T (batch, units), or (batch, T, units) with `return_sequences=True`.
    `go_backwards=True` runs from the last step to the first (and returns the sequence in
    that order, as Keras does); see `Bidirectional`.

        x = gn.input("x", (None, 30, 1))
        h = gn.nn.LSTM(32)(x)                                 # (?, 32)
        seq = gn.nn.LSTM(32, return_sequences=True)(x)        # (?, 30, 32)
    """

    kind = "lstm"
    gates = 4

    def __init__(self, units, return_sequences=False, activation="tanh",
                 recurrent_activation="sigmoid", unit_forget_bias=True, go_backwards=False,
                 init="glorot_uniform", recurrent_init=orthogonal, name=None, seed=None):
        super().__init__(units, return_sequences, activation, recurrent_activation,
                         go_backwards, init, recurrent_init, name, seed)
        self.unit_forget_bias = bool(unit_forget_bias)

    def build(self, x):
        width = super().build(x)
        self.b = self.add_param("b", (width,), "zeros", x)
        if self.unit_forget_bias:
            value = self.b.value.copy()
            value[self.units:2 * self.units] = 1
            self.b.value = value

    def _gate(self, z, k):
        return ops.slice_axis(z, 1, k * self.units, (k + 1) * self.units)

    def cell(self, x_t, state):
        z = ops.matmul(x_t, self.Wx) + self.b
        if state is not None:
            z = z + ops.matmul(state[0], self.Wh)
        i = self.recurrent_activation(self._gate(z, 0))
        g = self.activation(self._gate(z, 2))
        o = self.recurrent_activation(self._gate(z, 3))
        if state is None:  # c_0 = 0: f * c_0 adds nothing
            c = i * g
        else:
            c = self.recurrent_activation(self._gate(z, 1)) * state[1] + i * g
        h = o * self.activation(c)
        return h, (h, c)


class GRU(_Gated):
    """Gated recurrent unit, unrolled over the T steps of (batch, T, features), with
    PyTorch's equations (Keras' GRU with its default reset_after=True computes the same),
    gates in PyTorch's order r, z, n (reset, update, new):

        a = x_t @ Wx + bx               e = h_{t-1} @ Wh + bh      (batch, 3 * units)
        r = sigmoid(a[:, 0:u] + e[:, 0:u])
        z = sigmoid(a[:, u:2u] + e[:, u:2u])
        n = tanh(a[:, 2u:3u] + r * e[:, 2u:3u])      (the reset gate applied after Wh)
        h_t = (1 - z) * n + z * h_{t-1}                                (h_0 = 0)

    Parameters: "<name>/Wx" (features, 3u), "<name>/Wh" (u, 3u), "<name>/bx" (3u,),
    "<name>/bh" (3u,): PyTorch's weight_ih_l0 = Wx.T, weight_hh_l0 = Wh.T,
    bias_ih_l0 = bx, bias_hh_l0 = bh. (Keras orders the gates z, r, n: swap the first two
    blocks of columns; its bias of shape (2, 3u) is [bx, bh].) Wx is glorot-uniform, Wh
    orthogonal, the biases 0.

    Returns h_T (batch, units), or (batch, T, units) with `return_sequences=True`;
    `go_backwards` as in `LSTM`.

        h = gn.nn.GRU(32)(gn.input("x", (None, 30, 1)))      # (?, 32)
    """

    kind = "gru"
    gates = 3

    def build(self, x):
        width = super().build(x)
        self.bx = self.add_param("bx", (width,), "zeros", x)
        self.bh = self.add_param("bh", (width,), "zeros", x)

    def cell(self, x_t, h):
        u = self.units
        a = ops.matmul(x_t, self.Wx) + self.bx
        # h_0 = 0: e is the bias bh alone at the first step
        e = self.bh if h is None else ops.matmul(h, self.Wh) + self.bh
        axis = 0 if h is None else 1

        def block(v, k, ax):
            return ops.slice_axis(v, ax, k * u, (k + 1) * u)
        r = self.recurrent_activation(block(a, 0, 1) + block(e, 0, axis))
        z = self.recurrent_activation(block(a, 1, 1) + block(e, 1, axis))
        n = self.activation(block(a, 2, 1) + r * block(e, 2, axis))
        h_new = (1 - z) * n if h is None else (1 - z) * n + z * h
        return h_new, h_new


class Bidirectional(Layer):
    """A recurrent layer run over the sequence both ways: `layer` forwards, a copy of it
    (same settings, its own weights) backwards, their outputs joined on the last axis.

    With `return_sequences=True` (taken from `layer`), output t is
    [forward output after x_0..x_t, backward output after x_{T-1}..x_t]:
    (batch, T, 2 * units); otherwise [forward h after x_{T-1}, backward h after x_0]:
    (batch, 2 * units), as Keras' Bidirectional and PyTorch's bidirectional=True give.
    The two layers are named "<name>/forward" and "<name>/backward" (parameters
    "bidirectional1/forward/Wx", ...), `.forward_layer` and `.backward_layer`.

        x = gn.input("x", (None, 30, 8))
        h = gn.nn.Bidirectional(gn.nn.LSTM(16))(x)                           # (?, 32)
        s = gn.nn.Bidirectional(gn.nn.GRU(16, return_sequences=True))(x)     # (?, 30, 32)
    """

    kind = "bidirectional"

    def __init__(self, layer, name=None):
        super().__init__(name)
        if not isinstance(layer, _Recurrent):
            raise GraphError(f"Bidirectional wraps a recurrent layer (SimpleRNN, LSTM, GRU), "
                             f"got {type(layer).__name__} (at {user_location()})")
        if layer.built:
            raise GraphError(f"Bidirectional needs a layer that was not called yet (its "
                             f"copy gets its own weights); got {layer!r} "
                             f"(at {user_location()})")
        self.forward_layer = layer
        self.backward_layer = copy.copy(layer)
        self.backward_layer._params = []
        self.backward_layer.go_backwards = not layer.go_backwards
        if layer.seed is not None:  # its own weights
            self.backward_layer.seed = layer.seed + 1
        self.return_sequences = layer.return_sequences

    def build(self, x):
        ahead, back = self.forward_layer, self.backward_layer
        if ahead.name is None:
            ahead.name, back.name = f"{self.name}/forward", f"{self.name}/backward"
        else:  # a name the user gave the layer
            back.name = f"{ahead.name}_backward"
        for layer in (ahead, back):
            layer.build(x)
            layer.built = True

    @property
    def params(self):
        return self.forward_layer.params + self.backward_layer.params

    def forward(self, x):
        ahead = self.forward_layer.outputs(x)
        back = self.backward_layer.outputs(x)
        units = self.forward_layer.units
        if not self.return_sequences:
            return ops.concat([ahead[-1], back[-1]], axis=1)
        back = back[::-1]  # to time order
        return ops.concat([_stack_in_time(ahead, units), _stack_in_time(back, units)], axis=2)


class Sequential(Layer):
    """Layers applied one after the other; the output shape is the last layer's.

    `.params` lists every layer's parameters in order; `.summary()` a table of them;
    `.predict(X)` computes the output for an array, batch by batch.

        model = gn.nn.Sequential([gn.nn.Dense(64, "relu"), gn.nn.Dense(10)])
        logits = model(x)                     # (None, 784) -> (None, 10)
        print(model.summary())
    """

    kind = "sequential"

    def __init__(self, layers, name=None):
        super().__init__(name)
        self.layers = list(layers)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise GraphError(f"Sequential takes layers, got {type(layer).__name__} "
                                 f"(at {user_location()})")
        self._outputs = []

    def __call__(self, x):
        if not isinstance(x, Node):
            return self._eager_call(x)
        self.built = True
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        self._outputs = outputs
        return x

    def _eager_forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]

    def summary(self):
        """A table: each layer, its output shape and its parameter count (after a call)."""
        if not self._outputs:
            raise GraphError(f"Sequential.summary: call the model on an input first "
                             f"(at {user_location()})")
        rows = [("layer", "output shape", "params")]
        total = 0
        for layer, out in zip(self.layers, self._outputs):
            count = sum(p.value.size for p in layer.params)
            total += count
            shape = "(" + ", ".join("?" if d is None else str(d) for d in out.shape) + ")"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, str(count)))
        rows.append(("total", "", str(total)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}"
                         for a, b, c in rows)
