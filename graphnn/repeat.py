"""`gn.repeat`: one block applied n times, declared, differentiated and compiled once.

A residual stack of 1000 blocks written as a Python loop is 1000 copies of the block in the
graph: each copy is declared, differentiated, optimised and lowered, and the program
sequences thousands of steps. `gn.repeat(block, n, x, *stacked)` traces `block` once, as a
graph of its own, and makes ONE node that applies it n times:

    h[0] = x,   h[k + 1] = block(h[k], s1[k], s2[k], ...),   the result is h[n]

Each stacked argument holds one value per repeat along its first axis: the weights of 1000
blocks as one parameter of shape (1000, 64, 64), which an optimizer updates as any other.
The block sees its carry and one slice of each stacked argument, nothing else (a value it
reads from outside is refused: pass it stacked).

How it runs: the block is compiled once per back end as a function of its own (its kernels
are those of any graph with the same ops, so they are shared and cached as usual), and a
loop calls it n times, keeping the n + 1 carries. The gradient is a second loop, backwards
from h[n], over the block's own derivative graph (gn.grad with the carry's adjoint as seed):
at each k it recomputes the block's inside from the kept h[k] (one more forward per block,
as gradient checkpointing does) and gives the adjoint of h[k] and the gradients of the
k-th slices. The numpy and cpu back ends run it; the cuda back end and the ONNX exporter
refuse it with a clear error.

    W = gn.param("W", shape=(1000, 64, 64), seed=0)
    b = gn.param("b", shape=(1000, 64), init="zeros")
    h = gn.repeat(lambda h, W, b: h + gn.relu(h @ W + b), 1000, x, W, b)
"""
import threading

import numpy as np

from . import ops
from .api import const
from . import shapes as S
from .errors import GradError, GraphError, ShapeError, user_location
from .graph import topological_order
from .node import Node
from .registry import INPUT_COUNTS, OpDef, Mismatch, apply, register

# The most repeats one node takes (the carries kept are n + 1 arrays).
MAX_REPEATS = 1 << 24
# Options of the block's functions by back end: on the cpu, no output recycling (the loop
# copies each result at once). Their kernels (a small block's one fused function, else
# library kernels) are compiled alongside the calling program's (Loop.kernels_to_compile).
_OPTIONS = {"cpu": {"library": True, "passes": {"output_recycling": False}}}


class Block:
    """A block traced for `gn.repeat`: its argument nodes (`carry`, then `args`, one per
    stacked argument: gn.input nodes of the block's own graph), its result `out`, and its
    compiled functions, made on first use per back end (one for the forward loop, one for
    the gradient's). Hashed by identity: two repeats of the same Python function are two
    blocks."""

    def __init__(self, fn, n, carry, stacked, where):
        from .api import input as declare_input
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self.n = n
        self.where = where
        # (fresh symbols for the symbolic dims: the block's graph binds them from its own
        # feeds when it runs)
        self.carry = declare_input("carry", carry.shape, carry.dtype.name)
        self.args = [declare_input(f"s{i}", s.shape[1:], s.dtype.name)
                     for i, s in enumerate(stacked)]
        out = fn(self.carry, *self.args)
        if not isinstance(out, Node):
            raise GraphError(f"repeat: the block {self.name} returned "
                             f"{type(out).__name__}, not a graph node: it must return its "
                             f"next carry, of shape {carry.shape} (at {where})")
        if out.dtype != carry.dtype or len(out.sym_shape) != len(carry.sym_shape) or \
                not all(S.dims_equal(a, b) for a, b in zip(out.sym_shape, self.carry.sym_shape)):
            raise ShapeError(f"repeat: the block {self.name} returns "
                             f"{S.format_shape(out.sym_shape)} {out.dtype} from the carry "
                             f"{carry.label()} {carry.dtype}: its result is the next "
                             f"repeat's carry, so both must agree (at {where})")
        own = {id(self.carry)} | {id(a) for a in self.args}
        nodes = topological_order([out])
        for node in nodes:
            if node.op in ("input", "param", "variable") and id(node) not in own:
                raise GraphError(
                    f"repeat: the block {self.name} reads {node.label()}, which is not "
                    f"one of its arguments; a block sees its carry and the k-th slice of "
                    f"each stacked argument only: pass per-repeat values stacked (first "
                    f"axis {n}) as arguments of gn.repeat (at {where})")
        self.out = out
        self.size = len(nodes)
        self.differentiated = False  # (set by its gradient rule: see forward)
        self._functions = {}
        self._lock = threading.RLock()

    def __repr__(self):  # (in generated comments and pictures: the same text every run)
        return f"<block {self.name}: {self.size} nodes>"

    def _function(self, key, make):
        with self._lock:
            found = self._functions.get(key)
            if found is None:
                found = self._functions[key] = make()
            return found

    def _compile(self, outputs, backend, **options):
        from .backends import compile as compile_graph
        return compile_graph(outputs, backend=backend, **_OPTIONS.get(backend, {}), **options)

    def forward(self, backend):
        """The block compiled for `backend`: feeds carry, s0, s1, ... -> next carry."""
        if self.differentiated and backend == "cpu":
            return self._pair(backend)[0]
        return self._function(("forward", backend), lambda: self._compile(self.out, backend))

    def gradient_nodes(self):
        """(g, adjoint of the carry, the slices' gradients flattened and concatenated or
        None): the block's derivative graph for an adjoint `g` of its result."""
        from .api import input as declare_input
        from .autodiff import grad

        def make():
            # (the result's own symbols: the adjoint has its shape, dim for dim)
            g = declare_input("g", self.out.sym_shape, self.carry.dtype.name)
            grads = grad(self.out, [self.carry] + self.args, seed=g)
            packed = None
            if self.args:
                packed = ops.concat([ops.reshape(gi, (-1,)) for gi in grads[1:]], axis=0) \
                    if len(grads) > 2 else ops.reshape(grads[1], (-1,))
            return g, grads[0], packed
        return self._function("gradient", make)

    def _gradient_outputs(self):
        _, carry_grad, packed = self.gradient_nodes()
        return [carry_grad] + ([packed] if packed is not None else [])

    def backward(self, backend):
        """The block's derivative compiled for `backend`: feeds carry, s0, ..., g ->
        [adjoint of the carry, packed slice gradients] (the second when there are slices)."""
        if backend == "cpu":
            return self._pair(backend)[1]
        return self._function(("backward", backend),
                              lambda: self._compile(self._gradient_outputs(), backend))

    def _pair(self, backend):
        """The block's function and its derivative's, compiled for the cpu so that their
        convolutions share one conv_gemm module (each serves the other's modes too: one
        module compiled instead of two)."""
        def make():
            from kernels.cpu import conv_code
            f = self._compile(self.out, backend)
            b = self._compile(self._gradient_outputs(), backend)
            both = conv_code(f.program) | conv_code(b.program)
            if conv_code(f.program) and conv_code(f.program) != both:
                f = self._compile(self.out, backend, conv_code=both)
            if conv_code(b.program) and conv_code(b.program) != both:
                b = self._compile(self._gradient_outputs(), backend, conv_code=both)
            return f, b
        return self._function(("pair", backend), make)

    @staticmethod
    def _caller(f, stacked):
        """(names, arrays_at): the names of f's inputs in order, and arrays_at(k, carry,
        extra) -> their arrays at repeat k (a block may ignore some of its arguments;
        `extra` is the adjoint g of the backward loop)."""
        names = [node.name for node in f.graph.inputs]
        picks = [-1 if name == "carry" else -2 if name == "g" else int(name[1:])
                 for name in names]

        def arrays_at(k, carry, extra=None):
            # (s[k, ...]: a 0-d array, not a NumPy scalar, when s is 1-D)
            return [carry if p == -1 else extra if p == -2 else stacked[p][k, ...]
                    for p in picks]
        return names, arrays_at

    @staticmethod
    def _looped(f, names, arrays):
        """f's call for the loop, given the arrays of its second repeat: the compiled
        program's direct entry when f has one and the arrays allow it (C-contiguous, as
        the first call had them), else a call by name."""
        entry = getattr(f, "direct_entry", None)
        if entry is not None and all(a.flags.c_contiguous for a in arrays):
            found = entry(arrays)
            if found is not None:
                return found
        return lambda *arrays: f(**dict(zip(names, arrays)))

    def run(self, backend, out, x, *stacked):
        """The forward loop: out[0] = x, out[k + 1] = block(out[k], slices k)."""
        f = self.forward(backend)
        names, arrays_at = self._caller(f, stacked)
        n = out.shape[0] - 1
        out[0] = x
        # (the function's lock held throughout: its workspace serves the whole loop, and
        # another program with this block may call it from another thread)
        with f._lock:
            out[1] = f(**dict(zip(names, arrays_at(0, out[0]))))
            if n > 1:
                call = self._looped(f, names, arrays_at(1, out[1]))
                for k in range(1, n):
                    out[k + 1] = call(*arrays_at(k, out[k]))

    def run_gradient(self, backend, part, last, out, h, g, *stacked):
        """The backward loop from the carries `h` (n + 1) and their adjoints `g` (with
        `last`, the adjoint of h[n] alone: the others are zero): writes the adjoint of h[0]
        (part "carry") or each repeat's packed slice gradients (part "stacked", out of
        shape (n, size))."""
        f = self.backward(backend)
        names, arrays_at = self._caller(f, stacked)
        n = h.shape[0] - 1
        adjoint = np.array(g if last else g[n])
        call = lambda *arrays: f(**dict(zip(names, arrays)))  # noqa: E731
        with f._lock:  # (as in run)
            for k in range(n - 1, -1, -1):
                arrays = arrays_at(k, h[k], adjoint)
                results = call(*arrays)
                if k == n - 1 and k:
                    call = self._looped(f, names, arrays)
                if part == "stacked":
                    out[k] = results[1]
                if last:
                    np.copyto(adjoint, results[0])
                else:
                    np.add(results[0], g[k], out=adjoint)
        if part == "carry":
            out[...] = adjoint


def _check_repeats(n, where):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise GraphError(f"repeat: n must be an int, got {type(n).__name__} (at {where})")
    if not 1 <= n <= MAX_REPEATS:
        raise GraphError(f"repeat: n must be between 1 and {MAX_REPEATS}, got {n} "
                         f"(at {where})")
    return int(n)


def repeat(block, n, x, *stacked, name=None):
    """Apply `block` n times: h[0] = x, h[k + 1] = block(h[k], s1[k], s2[k], ...); returns
    h[n]. Each stacked argument holds one value per repeat along its first axis (its first
    dim is n); the block gets its k-th slice. The block is traced once, so a stack of 1000
    blocks is declared, differentiated and compiled in about the time of one (see the
    module's docstring for how it runs and what it refuses).

    Shapes: x (None, 64), W (1000, 64, 64), b (1000, 64) -> (None, 64).

        W = gn.param("W", shape=(1000, 64, 64), seed=0)
        b = gn.param("b", shape=(1000, 64), init="zeros")
        h = gn.repeat(lambda h, W, b: h + gn.relu(h @ W + b), 1000, x, W, b)

    On arrays (eager mode) the block is applied n times at once, op by op."""
    where = user_location()
    n = _check_repeats(n, where)
    if not callable(block):
        raise GraphError(f"repeat: block must be a function of the carry and one slice of "
                         f"each stacked argument, got {type(block).__name__} (at {where})")
    if not isinstance(x, Node) and not any(isinstance(s, Node) for s in stacked):
        return _eager_repeat(block, n, x, stacked, where)
    # (arrays beside nodes: constants of the graph)
    x = x if isinstance(x, Node) else const(x)
    stacked = tuple(s if isinstance(s, Node) else const(s) for s in stacked)
    for i, s in enumerate(stacked):
        first = S.resolve(s.sym_shape[0]) if s.ndim else None
        if first != n:
            raise ShapeError(f"repeat: stacked argument {i + 1}, {s.label()}, must hold one "
                             f"value per repeat along its first axis: its first dim must be "
                             f"{n} (at {where})")
    body = Block(block, n, x, stacked, where)
    carries = apply("repeat", (x,) + stacked, {"body": body, "n": n})
    last = ops.slice_axis(carries, 0, n, n + 1)
    return ops.reshape(last, x.sym_shape, name=name)


def _eager_repeat(block, n, x, stacked, where):
    # (the arrays as given: the eager tape tracks them by identity)
    for i, s in enumerate(stacked):
        if np.ndim(s) == 0 or np.shape(s)[0] != n:
            raise ShapeError(f"repeat: stacked argument {i + 1} of shape {np.shape(s)} must hold "
                             f"one value per repeat along its first axis: its first dim "
                             f"must be {n} (at {where})")
    h = x
    for k in range(n):
        h = block(h, *[ops.reshape(ops.slice_axis(s, 0, k, k + 1), np.shape(s)[1:])
                       for s in stacked])
    return h


# -- the ops ------------------------------------------------------------------------------
def _infer_repeat(specs, body, n):
    carry, stacked = specs[0], specs[1:]
    if len(stacked) != len(body.args):
        raise Mismatch(f"the block takes {len(body.args)} stacked arguments, got "
                       f"{len(stacked)}")
    for i, (spec, arg) in enumerate(zip(stacked, body.args)):
        shape = spec.sym_shape
        if not shape or S.resolve(shape[0]) != n or len(shape) != arg.ndim + 1 or \
                spec.dtype != arg.dtype or not all(
                    S.dims_equal(a, b) for a, b in zip(shape[1:], arg.sym_shape)
                    if isinstance(S.resolve(b), int)):
            raise Mismatch(f"stacked argument {i + 1} must be ({n}, ...) with slices "
                           f"{S.format_shape(arg.sym_shape)} {arg.dtype}, got "
                           f"{S.format_shape(shape)} {spec.dtype}")
    if carry.dtype != body.carry.dtype or len(carry.sym_shape) != body.carry.ndim:
        raise Mismatch(f"the carry must be {S.format_shape(body.carry.sym_shape)} "
                       f"{body.carry.dtype}, got {S.format_shape(carry.sym_shape)} "
                       f"{carry.dtype}")
    return (n + 1,) + tuple(carry.sym_shape), carry.dtype


def _repeat_impl(x, *stacked, body, n):
    out = np.empty((n + 1,) + x.shape, x.dtype)
    body.run("numpy", out, x, *stacked)
    return out


def _packed_layout(body):
    """(offset, size, shape) of each stacked argument's slice gradient in the packed row."""
    layout, offset = [], 0
    for arg in body.args:
        size = S.static_size(arg.sym_shape)
        layout.append((offset, size, arg.shape))
        offset += size
    return layout, offset


def _repeat_vjp(g, out, x, *stacked, body, n):
    where = user_location()
    body.differentiated = True

    # the public result's gradient reaches the carries as pad(reshape(adjoint of h[n])):
    # zero but at n, so the backward loop takes that adjoint alone (no (n + 1) array)
    last = g.op == "pad_axis" and g.attr("axis") == 0 and g.attr("before") == n and \
        g.attr("after") == 0 and g.inputs[0].op == "reshape"
    adjoint = ops.reshape(g.inputs[0], x.sym_shape) if last else g

    def gradient(part):
        return apply("repeat_grad", (out, adjoint) + stacked,
                     {"body": body, "n": n, "part": part, "last": last})

    def slice_gradient(i):
        layout, _ = _packed_layout(body)
        offset, size, shape = layout[i]
        packed = gradient("stacked")
        return ops.reshape(ops.slice_axis(packed, 1, offset, offset + size), (n,) + shape)

    def checked(i):
        arg = body.args[i]
        if not S.is_static(arg.sym_shape):
            raise GradError(f"repeat: the gradient of stacked argument {i + 1} needs static "
                            f"slice shapes, got {S.format_shape(arg.sym_shape)} (at {where})")
        if any(a.dtype != x.dtype for a in body.args):
            raise GradError(f"repeat: the gradients of the stacked arguments need them all "
                            f"of the carry's dtype {x.dtype} (at {where})")
        return slice_gradient(i)
    return (lambda: gradient("carry"),) + tuple(
        (lambda i=i: checked(i)) if s.dtype.kind == "f" else None
        for i, s in enumerate(stacked))


def _infer_repeat_grad(specs, body, n, part, last):
    h, g = specs[0], specs[1]
    if len(g.sym_shape) != len(h.sym_shape) - (1 if last else 0):
        raise Mismatch(f"the adjoint {S.format_shape(g.sym_shape)} does not go with the "
                       f"carries {S.format_shape(h.sym_shape)}")
    if part == "carry":
        return tuple(h.sym_shape[1:]), h.dtype
    if part != "stacked":
        raise Mismatch(f"part must be 'carry' or 'stacked', got {part!r}")
    return (n, _packed_layout(body)[1]), h.dtype


def _repeat_grad_impl(h, g, *stacked, body, n, part, last):
    out = np.empty(h.shape[1:] if part == "carry" else (n, _packed_layout(body)[1]), h.dtype)
    body.run_gradient("numpy", part, last, out, h, g, *stacked)
    return out


class Loop:
    """The Python step of a repeat node in a compiled program: `loop(out, *arrays)` runs
    the forward loop (part None) or the backward one for `part`, calling the block's
    function for `backend` once per repeat. `kernels_to_compile` names the kernels that
    function's first call would compile, so that the program compiles them alongside its
    own (see CpuFunction.kernels_to_compile)."""

    __slots__ = ("body", "backend", "part", "last")

    def __init__(self, body, backend, part=None, last=False):
        self.body, self.backend, self.part, self.last = body, backend, part, last

    def __call__(self, out, *arrays):
        if self.part is None:
            self.body.run(self.backend, out, *arrays)
        else:
            self.body.run_gradient(self.backend, self.part, self.last, out, *arrays)

    def kernels_to_compile(self, out, *arrays):
        body = self.body
        if self.part is None:
            f, (carry, *stacked) = body.forward(self.backend), arrays
            extra = None
        else:
            f, (h, g, *stacked) = body.backward(self.backend), arrays
            carry, extra = h[0], (g if self.last else g[0])
        if not hasattr(f, "kernels_to_compile"):
            return []
        names, arrays_at = body._caller(f, stacked)
        return f.kernels_to_compile(dict(zip(names, arrays_at(0, carry, extra))))


def _lower_repeat(lowering, node, comment):
    lowering.host_call(node, Loop(node.attr("body"), "cpu"), comment)


def _lower_repeat_grad(lowering, node, comment):
    lowering.host_call(node, Loop(node.attr("body"), "cpu", node.attr("part"), node.attr("last")),
                       comment)


register(OpDef("repeat", "Layer", _infer_repeat, _repeat_impl, _repeat_vjp, kind="host",
               lower=_lower_repeat,
               doc="h[k + 1] = block(h[k], slices k) for k < n: the n + 1 carries"))
register(OpDef("repeat_grad", "Layer", _infer_repeat_grad, _repeat_grad_impl, kind="host",
               lower=_lower_repeat_grad,
               doc="gn.repeat's backward loop: the adjoint of h[0] or the slices' gradients"))
# (a block may have no stacked argument: the carry alone, and for the gradient the carries
# and their adjoints)
INPUT_COUNTS["repeat"], INPUT_COUNTS["repeat_grad"] = (1, None), (2, None)
