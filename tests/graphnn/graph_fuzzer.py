"""Random graphs that look like real ones, built from a seed (`build(seed)`), and the run that
compares back ends on them (`run`). Used by test_fuzz_graphs.py and test_pass_toggles.py.

A graph starts from one to three inputs (matrices, square ones often, vectors, or NHWC
images) and grows by op families until it has its drawn number of ops (3 to 14, median
about 7): elementwise unary and binary ops with broadcasting (a binary op whose operands do
not broadcast takes a unary op of its first operand instead, so nodes get several
readers), reductions, matmuls with parameters, layout ops (reshape, transpose, slice_axis,
concat, pad_axis), conv2d with parameter kernels, depthwise and grouped 1x1 convolutions
and channel shuffles, max (also padded) and average pooling, softmax, and a
square node added to (or multiplied by) its own transpose, where a transpose reads what
an in-place write would alias. Then it ends one of four ways:

    forward   several outputs (sometimes one node twice, or a node and a view of it)
    grad      a loss and its gradients with respect to every parameter and float input
    train     a loss and an optimizer step (SGD, momentum, Nesterov, Adam, AdamW, RMSprop,
              Adagrad; weight decay, clipnorm), run for several steps
    int       an int64 forward graph (the ops that take integers), compared exactly

Everything is float64 except the int graphs. `describe(graph)` lists the nodes, for a
failure message; a failure names its seed, and `build(seed)` rebuilds that graph.
"""
import numpy as np

import graphnn as gn

MATRIX_SHAPES = [(3, 3), (4, 4), (3, 4), (4, 3), (2, 3)]
SIDE_SHAPES = [(4,), (1, 4), (3, 1), (3,), ()]
IMAGE_SHAPES = [(2, 5, 5, 2), (1, 6, 6, 1), (2, 4, 4, 3)]
ENDINGS = ["forward", "grad", "train", "train", "int"]
ENDING_WEIGHTS = [0.22, 0.28, 0.20, 0.20, 0.10]

UNARY = {
    "tanh": gn.tanh, "sigmoid": gn.sigmoid, "relu": gn.relu, "square": gn.square,
    "abs": gn.abs, "neg": gn.neg, "softplus": gn.softplus, "elu": gn.elu,
    "leaky_relu": lambda x: gn.leaky_relu(x, 0.1), "exp-tanh": lambda x: gn.exp(gn.tanh(x)),
    "sqrt": lambda x: gn.sqrt(gn.square(x) + 1.0),
    "log": lambda x: gn.log(gn.sigmoid(x) + 0.5), "clip": lambda x: gn.clip(x, -1.0, 1.5),
}
BINARY = {
    "add": gn.add, "sub": gn.sub, "mul": gn.mul, "maximum": gn.maximum,
    "minimum": gn.minimum, "div": lambda a, b: a / (gn.square(b) + 1.0),
}
INT_UNARY = {"neg": gn.neg, "abs": gn.abs, "square": gn.square,
             "clip": lambda x: gn.clip(x, -3, 5)}
INT_BINARY = {"add": gn.add, "sub": gn.sub, "mul": gn.mul, "maximum": gn.maximum,
              "minimum": gn.minimum}
LAYOUT = ("reshape", "transpose", "slice_axis", "concat", "pad_axis")


class FuzzGraph:
    """A built graph: outputs, updates ({param: node}, for "train"), feeds, the state nodes
    (params and optimizer variables) with their initial values, and what it is made of."""

    def __init__(self, seed, ending, outputs, feeds, updates=None, steps=3, optimizer=None):
        self.seed, self.ending, self.outputs = seed, ending, outputs
        self.updates = updates or {}
        self.steps, self.optimizer = steps, optimizer
        graph = gn.Graph(list(outputs) + list(self.updates.values()))
        self.feeds = {n.name: feeds[n.name] for n in graph.inputs}
        self.states = graph.params + graph.variables + [
            p for p in self.updates if p not in graph.params + graph.variables]
        self.initial = {id(s): np.array(s.value, copy=True) for s in self.states}
        forward = gn.Graph(list(outputs[:1]) if ending in ("grad", "train") else outputs)
        self.forward_nodes = [n for n in forward.nodes if n.inputs]
        self.ops = {n.op for n in self.forward_nodes}
        # nodes of the forward graph read by two or more nodes of it
        readers = {}
        for n in self.forward_nodes:
            for i in set(map(id, n.inputs)):
                readers[i] = readers.get(i, 0) + 1
        self.shared = sum(1 for n in forward.nodes if readers.get(id(n), 0) >= 2)
        self.square_transpose = any(
            n.op == "transpose" and n.ndim == 2 and n.shape[0] == n.shape[1]
            for n in self.forward_nodes)
        self.param_grads = ending in ("grad", "train") and bool(graph.params)

    @property
    def size(self):
        """The number of ops of the forward graph (leaves left out)."""
        return len(self.forward_nodes)

    def reset_states(self):
        """Give every parameter and optimizer variable its initial value again."""
        for s in self.states:
            s.value = self.initial[id(s)].copy()


class Builder:
    def __init__(self, seed):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.nodes, self.feeds, self.count = [], {}, 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def input(self, shape, dtype="float64"):
        node = gn.input(self.name("x"), shape, dtype=dtype)
        self.feeds[node.name] = self.values(shape, dtype)
        self.nodes.append(node)
        return node

    def values(self, shape, dtype="float64"):
        if dtype == "int64":
            return self.rng.integers(-4, 5, shape).astype(np.int64)
        return self.rng.standard_normal(shape)

    def param(self, shape, scale=0.5):
        return gn.param(self.name("W"), self.rng.standard_normal(shape) * scale)

    def pick(self, ndim=None, square=False):
        pool = [n for n in self.nodes if (ndim is None or n.ndim == ndim) and
                (not square or (n.ndim == 2 and n.shape[0] == n.shape[1]))]
        return self.choice(pool) if pool else None

    def add(self, node):
        self.nodes.append(node)
        return node

    # -- op families ----------------------------------------------------------------------
    def unary(self, table):
        return self.add(self.choice(list(table.values()))(self.pick()))

    def binary(self, table, unary_table):
        a, b = self.pick(), self.pick()
        fn = self.choice(list(table.values()))
        try:
            return self.add(fn(a, b))
        except gn.ShapeError:  # no broadcast: a binary op of a and a unary op of a
            return self.add(fn(a, self.choice(list(unary_table.values()))(a)))

    def reduce(self, integer=False):
        x = self.pick()
        if x.ndim == 0:
            return None
        fn = self.choice([gn.sum, gn.max] + ([] if integer else [gn.mean]))
        axis = self.choice([None, 0, x.ndim - 1, -1] + ([(0, 1)] if x.ndim >= 2 else []))
        return self.add(fn(x, axis=axis, keepdims=bool(self.rng.integers(2))))

    def matmul(self):
        a = self.pick(2)
        if a is None:
            return None
        kind = self.choice(["param", "param", "nodes", "self"])
        partners = [n for n in self.nodes if n.ndim == 2 and n.shape[0] == a.shape[1]]
        if kind == "self":  # a @ a^T: square, and both operands read one buffer
            return self.add(a @ gn.transpose(a))
        if kind == "nodes" and partners:
            return self.add(a @ self.choice(partners))
        return self.add(a @ self.param((a.shape[1], self.choice([2, 3, 4]))))

    def layout(self, op=None):
        x = self.pick()
        if x.ndim == 0:
            return None
        op = op or self.choice(LAYOUT)
        if op == "reshape":
            size = int(np.prod(x.shape))
            targets = [(size,), (1, size)] + [(d, size // d) for d in (2, 3, 4)
                                              if size % d == 0 and (d, size // d) != x.shape]
            if x.ndim == 4:
                targets.append((x.shape[0], size // x.shape[0]))  # flatten
            return self.add(gn.reshape(x, self.choice(targets)))
        if op == "transpose":
            axes = None if self.rng.integers(2) else tuple(self.rng.permutation(x.ndim))
            return self.add(gn.transpose(x, axes))
        if op == "slice_axis":
            axes = [a for a in range(x.ndim) if x.shape[a] >= 2]
            if not axes:
                return None
            axis = self.choice(axes)
            start = int(self.rng.integers(x.shape[axis] - 1))
            stop = int(self.rng.integers(start + 1, x.shape[axis] + 1))
            return self.add(gn.slice_axis(x, self.choice([axis, axis - x.ndim]), start, stop))
        if op == "concat":
            axis = int(self.rng.integers(x.ndim))
            partners = [n for n in self.nodes if n.ndim == x.ndim and n.dtype == x.dtype and all(
                a == b for k, (a, b) in enumerate(zip(n.shape, x.shape)) if k != axis)]
            return self.add(gn.concat([x, self.choice(partners), x][:int(self.rng.integers(2,
                                                                                     4))],
                                      axis=axis))
        axis = int(self.rng.integers(x.ndim))
        before, after = int(self.rng.integers(3)), int(self.rng.integers(3))
        return self.add(gn.ops.pad_axis(x, self.choice([axis, axis - x.ndim]), before,
                                        after or (0 if before else 1)))

    def conv(self):
        x = self.pick(4)
        if x is None:
            return None
        k = int(self.choice([1, 2, 3]))
        k = min(k, x.shape[1], x.shape[2])
        kernel = self.param((k, k, x.shape[3], self.choice([1, 2, 3])))
        return self.add(gn.conv2d(x, kernel, stride=self.choice([1, 2]),
                                  padding=self.choice(["valid", "same"])))

    def grouped_conv(self):
        """A depthwise convolution (Keras or explicit pads), a grouped 1x1 convolution, a
        channel shuffle (on an image whose channels split into groups) or a max pool with
        explicit pads."""
        x = self.pick(4)
        if x is None:
            return None
        c = x.shape[3]
        kind = self.choice(["depthwise", "grouped", "shuffle", "padded_max_pool"])
        if kind == "padded_max_pool":
            size = int(self.choice([2, 3]))
            pads = tuple(int(p) for p in self.rng.integers(0, size, 4))
            return self.add(gn.max_pool2d(x, size, self.choice([1, 2]), padding=pads))
        if kind == "depthwise":
            k = min(int(self.choice([1, 2, 3])), x.shape[1], x.shape[2])
            pad = self.choice(["valid", "same", "explicit"])
            if pad == "explicit":
                pad = tuple(int(p) for p in self.rng.integers(0, k, 4))
            return self.add(gn.depthwise_conv2d(x, self.param((k, k, 1, c)),
                                                stride=self.choice([1, 2]), padding=pad))
        groups = int(self.choice([g for g in (1, 2, 3) if c % g == 0]))
        if kind == "shuffle":
            return self.add(gn.ops.channel_shuffle(x, groups))
        out = groups * int(self.choice([1, 2]))
        return self.add(gn.conv2d(x, self.param((1, 1, c // groups, out)), groups=groups))

    def pool(self):
        x = self.pick(4)
        if x is None or min(x.shape[1:3]) < 2:
            return None
        size = self.choice([s for s in (2, 3) if s <= min(x.shape[1:3])])
        fn = self.choice([gn.max_pool2d, gn.avg_pool2d])
        return self.add(fn(x, size, self.choice([None, 1, 2])))

    def softmax(self):
        x = self.pick()
        if x.ndim == 0:
            return None
        fn = self.choice([gn.softmax, gn.log_softmax])
        return self.add(fn(x, axis=self.choice([-1, 0])))

    def square_alias(self):
        a = self.pick(square=True)
        if a is None:  # make one: m @ m^T is square
            m = self.pick(2)
            if m is None:
                return None
            a = self.add(m @ gn.transpose(m))
        u = self.choice([gn.square, gn.tanh, gn.neg, lambda v: v * 2.0])(a)
        return self.add(self.choice([gn.add, gn.mul, gn.sub])(u, gn.transpose(u)))


FLOAT_FAMILIES = {  # family: (weight, method)
    "unary": (3, lambda b: b.unary(UNARY)),
    "binary": (3, lambda b: b.binary(BINARY, UNARY)),
    "reduce": (1.5, lambda b: b.reduce()),
    "matmul": (2, lambda b: b.matmul()),
    "layout": (3, lambda b: b.layout()),
    "conv": (2, lambda b: b.conv()),
    "pool": (2, lambda b: b.pool()),
    "grouped_conv": (1.5, lambda b: b.grouped_conv()),
    "softmax": (1, lambda b: b.softmax()),
    "square_alias": (1.5, lambda b: b.square_alias()),
}
INT_FAMILIES = {
    "unary": (3, lambda b: b.unary(INT_UNARY)),
    "binary": (3, lambda b: b.binary(INT_BINARY, INT_UNARY)),
    "reduce": (1.5, lambda b: b.reduce(integer=True)),
    "layout": (3, lambda b: b.layout()),
}


def build(seed):
    """The graph of `seed` (deterministic: the same seed gives the same graph)."""
    b = Builder(seed)
    ending = ENDINGS[int(b.rng.choice(len(ENDINGS), p=ENDING_WEIGHTS))]
    dtype = "int64" if ending == "int" else "float64"
    if ending != "int" and b.rng.random() < 0.45:
        b.input(b.choice(IMAGE_SHAPES))
    else:
        b.input(b.choice(MATRIX_SHAPES), dtype)
    for _ in range(int(b.rng.integers(0, 3))):
        b.input(b.choice(MATRIX_SHAPES + SIDE_SHAPES), dtype)
    families = INT_FAMILIES if ending == "int" else FLOAT_FAMILIES
    names = list(families)
    weights = np.array([families[f][0] for f in names], float)
    target = int(b.rng.integers(3, 9))
    for _ in range(200):
        size = len([n for n in gn.Graph(b.nodes).nodes if n.inputs])
        if size >= target:
            break
        family = names[int(b.rng.choice(len(names), p=weights / weights.sum()))]
        try:
            families[family][1](b)
        except gn.ShapeError:
            pass  # a shape the op does not take (a window larger than the image ...)
    # every op reaches an output: the nodes nothing reads (the last one made among them)
    # are the outputs of a forward graph, or each adds a term to the loss
    built = list({id(n): n for n in b.nodes if n.inputs}.values()) or b.nodes[-1:]
    read = {id(i) for n in built for i in n.inputs}
    sinks = [n for n in built if id(n) not in read]
    last = b.nodes[-1] if b.nodes[-1] in sinks else sinks[-1]
    others = [n for n in sinks if n is not last]
    if ending in ("forward", "int"):
        outputs = others + [last]
        extra = b.choice(["none", "earlier", "same", "view"])
        if extra == "earlier":
            outputs.append(b.choice(b.nodes))
        elif extra == "same":
            outputs.append(last)
        elif extra == "view" and last.ndim:
            outputs.append(gn.reshape(last, (-1,)))
        return FuzzGraph(seed, ending, outputs, b.feeds)
    loss = _loss(b, last)
    if not gn.Graph([loss] + others).params:  # every loss trains something
        loss = _loss(b, last * b.param(last.shape[-1:] if last.ndim else ()))
    for n in others:
        loss = loss + gn.mean(gn.square(n)) * 0.1
    graph = gn.Graph([loss])
    params = graph.params
    if ending == "grad":
        wrt = params + [n for n in graph.inputs if n.dtype.kind == "f"]
        return FuzzGraph(seed, ending, [loss] + gn.grad(loss, wrt), b.feeds)
    kind, optimizer = _optimizer(b)
    updates = optimizer.updates(loss, params)
    outputs = [loss] + ([gn.grad(loss, params[0])] if b.rng.random() < 0.3 else [])
    return FuzzGraph(seed, ending, outputs, b.feeds, updates, optimizer=kind)


def _loss(b, out):
    kind = b.choice(["weighted", "mse", "bce", "sce", "mean"])
    if kind == "sce" and out.ndim == 2 and out.shape[1] >= 2:
        if b.rng.random() < 0.5:
            labels = gn.input(b.name("labels"), (out.shape[0],), dtype="int64")
            b.feeds[labels.name] = b.rng.integers(0, out.shape[1], out.shape[0])
            return gn.softmax_cross_entropy(out, labels)
        # probability targets whose rows need not sum to 1
        return gn.softmax_cross_entropy(out, b.rng.uniform(0, 1, out.shape))
    if kind == "mse":
        return gn.mse(out, b.rng.standard_normal(out.shape[-1:] if out.ndim else ()))
    if kind == "bce":
        return gn.binary_cross_entropy(out, b.rng.uniform(0, 1, out.shape), from_logits=True)
    if kind == "mean":
        return gn.mean(gn.square(out))
    return gn.sum(out * b.rng.standard_normal(out.shape))


def _optimizer(b):
    kind = b.choice(["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"])
    extra = {}
    if b.rng.random() < 0.3:
        extra["weight_decay"] = 0.01
    if b.rng.random() < 0.2:
        extra["clipnorm"] = 0.5
    if kind == "sgd":
        return kind, gn.optim.SGD(lr=0.1, **extra)
    if kind in ("momentum", "nesterov"):
        return kind, gn.optim.SGD(lr=0.05, momentum=0.9, nesterov=kind == "nesterov", **extra)
    if kind == "adam":
        return kind, gn.optim.Adam(lr=0.01, **extra)
    if kind == "adamw":
        return kind, gn.optim.AdamW(lr=0.01, clipnorm=extra.get("clipnorm"))
    if kind == "rmsprop":
        return kind, gn.optim.RMSprop(lr=0.01, **extra)
    return kind, gn.optim.Adagrad(lr=0.1, **extra)


def describe(fg):
    """The graph as lines "i: op(inputs) attrs -> shape dtype", to print with a failure."""
    roots = list(fg.outputs) + list(fg.updates.values())
    nodes = gn.Graph(roots).nodes
    index = {id(n): i for i, n in enumerate(nodes)}
    lines = [f"seed {fg.seed}: {fg.ending}, {fg.size} ops ({', '.join(sorted(fg.ops))})"]
    for i, n in enumerate(nodes):
        attrs = {k: v for k, v in n.attrs.items() if k != "value"}
        args = ", ".join(str(index[id(x)]) for x in n.inputs) if n.inputs else n.name or ""
        lines.append(f"  {i}: {n.op}({args}) {attrs or ''} -> {n.shape} {n.dtype}")
    lines.append(f"  outputs: {[index[id(o)] for o in fg.outputs]}")
    if fg.updates:
        lines.append("  updates: " + ", ".join(f"{p.name} <- {index[id(v)]}"
                                               for p, v in fg.updates.items()))
    return "\n".join(lines)


def run(fg, backend, **options):
    """Compile `fg` on `backend` and call it `fg.steps` times (3) from the initial parameter
    values. Returns ([each call's outputs], [the final values of the parameters and optimizer
    variables]). The first call's arrays are held while the others run and must not change
    (the cpu back end writes a new result into an earlier one only when nobody holds it:
    the second call's, dropped at once, is written again by the third)."""
    fg.reset_states()
    f = gn.compile(list(fg.outputs), updates=fg.updates or None, backend=backend, **options)
    got, held = [], None
    for call in range(fg.steps):
        with np.errstate(all="ignore"):
            out = f(**fg.feeds)
        got.append([np.array(o, copy=True) for o in out])
        if call == 0:
            held = out
        del out
    for k, (kept, copy) in enumerate(zip(held, got[0])):
        np.testing.assert_array_equal(kept, copy, err_msg=f"{backend}: output {k} of the "
                                      f"first call changed under a later call (seed {fg.seed})")
    states = [np.array(s.value, copy=True) for s in fg.states]
    fg.reset_states()
    return got, states


def cpu_options(seed):
    """Most examples run in library mode, whose kernels are shared between graphs (a cold
    cache compiles about half as much); one in four runs as one fused function."""
    return {"library": seed % 4 != 0, "progress": False}


_CACHE = {}


def cached(kind, seed, compute):
    """compute() once per (kind, seed) in a test session: the graph of a seed and its numpy
    and cpu results serve the fuzz test and the pass-toggle test."""
    if (kind, seed) not in _CACHE:
        _CACHE[(kind, seed)] = compute()
    return _CACHE[(kind, seed)]


def graph(seed):
    return cached("graph", seed, lambda: build(seed))


def numpy_result(seed):
    return cached("numpy", seed, lambda: run(graph(seed), "numpy"))


def cpu_result(seed):
    return cached("cpu", seed, lambda: run(graph(seed), "cpu", **cpu_options(seed)))


def _magnitude(a):
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max()) if finite.size else 0.0


def assert_same(fg, expected, got, where, rtol=1e-10):
    """Equal NaNs and dtypes, integers exactly, floats at `rtol` relative, with an absolute
    slack of rtol times the largest magnitude of the array: sums, matmuls and convolutions
    add in another order on each back end, so an element that cancels to near zero differs
    by rounding of its terms, not of its value (for a one-element result, the terms are
    as large as the largest output)."""
    (e_calls, e_states), (g_calls, g_states) = expected, got
    pairs = [(f"call {c} output {k}", e, g) for c, (ec, gc) in enumerate(zip(e_calls, g_calls))
             for k, (e, g) in enumerate(zip(ec, gc))]
    pairs += [(f"state {s.name} after {fg.steps} steps", e, g)
              for s, e, g in zip(fg.states, e_states, g_states)]
    assert len(e_calls) == len(g_calls)
    for what, e, g in pairs:
        message = f"{where}: {what} (seed {fg.seed})\n{describe(fg)}"
        assert e.dtype == g.dtype and e.shape == g.shape, \
            f"{message}\n{g.dtype}{g.shape} vs {e.dtype}{e.shape}"
        if e.dtype.kind != "f":
            np.testing.assert_array_equal(g, e, err_msg=message)
            continue
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"{message}: NaNs")
        scale = _magnitude(e)
        if e.size == 1:
            # a full reduction that cancels to about zero (the sum of log_softmax's
            # gradient, seed 352) differs by rounding of its terms, whose size is that of
            # the arrays it sums: the call's largest output, not its own value
            scale = max([scale] + [_magnitude(o) for _, o, _ in pairs
                                   if o.dtype.kind == "f"])
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale + 1e-300,
                                   equal_nan=True, err_msg=message)
