"""`gn.repeat`: one block applied n times, declared, differentiated and compiled once.

A residual stack of 1000 blocks written as a Python loop is 1000 copies of the block in the
graph: each copy is declared, differentiated, optimised and lowered, and the program
sequences thousands of steps. `gn.repeat(block, n, x, *stacked)` traces `block` once, as a
graph of its own, and makes ONE node that applies it n times:

    h[0] = x,   h[k + 1] = block(h[k], s1[k], s2[k], ...),   the result is h[n]

Each stacked argument holds one value per repeat along its first axis: the weights of 1000
blocks as one parameter of shape (1000, 64, 64), which an optimizer updates as any other,
or a sequence, time first. Any other value the block reads from outside (an RNN's weights,
the same at every step) is shared: every repeat reads it alike, and its gradient is the sum
over the repeats.

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

    # an RNN over a sequence xs (T, batch, features): U, V, c shared by the steps
    h = gn.repeat(lambda h, x_t: gn.tanh(x_t @ U + h @ V + c), T, h0, xs)
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
# Options of the block's functions by back end: on the cpu, library mode, whose kernels are
# compiled alongside the calling program's (Loop.kernels_to_compile; as one fused function
# a small block stepped faster but compiled 0.5-0.7 s longer, docs/BENCHMARKS.md), and no
# output recycling (the loop copies each result at once).
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
                             f"next carry, shaped as the carry {carry.label()} (at {where})")
        if out.dtype != carry.dtype or len(out.sym_shape) != len(carry.sym_shape) or \
                not all(S.dims_equal(a, b) for a, b in zip(out.sym_shape, self.carry.sym_shape)):
            raise ShapeError(f"repeat: the block {self.name} returns "
                             f"{S.format_shape(out.sym_shape)} {out.dtype} from the carry "
                             f"{carry.label()} {carry.dtype}: its result is the next "
                             f"repeat's carry, so both must agree (at {where})")
        self.out, self.shared, self.values = self._share_what_it_reads(out)
        self.size = len(topological_order([self.out]))
        self.differentiated = False  # (set by its gradient rule: see forward)
        self._functions = {}
        self._lock = threading.RLock()

    def _share_what_it_reads(self, out):
        """(result, shared, values): the block's graph with each outside value it reads
        replaced by an argument of its own (`shared`: gn.input nodes w0, w1, ...), and those
        outside values (`values`: what the repeat node reads, the same at every repeat).
        An outside value is a node that does not depend on the block's arguments, is read by
        one that does, and is not made of constants alone (those stay in the block)."""
        from .api import input as declare_input
        from .passes import rebuild
        own = {id(self.carry)} | {id(a) for a in self.args}
        nodes = topological_order([out])
        varies, free = set(own), set()  # (free: reads an input, parameter or variable)
        for node in nodes:
            if id(node) in own:
                continue
            if node.op in ("input", "param", "variable") or \
                    any(id(i) in free for i in node.inputs):
                free.add(id(node))
            if any(id(i) in varies for i in node.inputs):
                varies.add(id(node))
        values = {}  # id -> node, in the order first read
        for node in nodes:
            if id(node) in varies:
                values.update((id(i), i) for i in node.inputs
                              if id(i) not in varies and id(i) in free)
        if id(out) not in varies and id(out) in free:
            values[id(out)] = out  # (a block whose result ignores its arguments)
        values = list(values.values())
        # (the outside node's own symbols: the block's nodes were shaped with them)
        shared = [declare_input(f"w{j}", v.sym_shape, v.dtype.name)
                  for j, v in enumerate(values)]
        if values:
            place = {id(v): w for v, w in zip(values, shared)}
            out = rebuild([out], lambda node, inputs: place.get(id(node)))[0]
        return out, shared, values

    def weights_layout(self):
        """((entries, size), (entries, total)): where the gradients of the stacked
        arguments and of the shared values lie in the "weights" gradient, a vector of
        n * size + total values: n rows of `size` (each repeat's slices' gradients, one
        after the other), then the shared values' gradients summed over the repeats. Each
        entry is (offset in its row or part, size, shape)."""
        packed, _ = self._differentiable()
        parts, start = [], 0
        for values in (self.args, self.shared):
            entries, offset = [], 0
            for k, v in enumerate(values, start):
                size = S.static_size(v.sym_shape) if k in packed else 0
                entries.append((offset, size, v.shape))
                offset += size
            parts.append((entries, offset))
            start += len(values)
        return tuple(parts)

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
        """The block compiled for `backend`: feeds carry, s0, ..., w0, ... -> next carry."""
        options = self._conv_options(backend)
        return self._function(("forward", backend, bool(options)),
                              lambda: self._compile(self.out, backend, **options))

    def _differentiable(self):
        """(packed, apart): the positions (among the stacked arguments, then the shared
        values) of the float values whose gradients go in the packed "weights" gradient
        (static shapes), and of those whose gradients are computed apart (a symbolic dim,
        such as a stacked sequence's batch)."""
        values = self.args + self.shared
        floats = [k for k, v in enumerate(values) if v.dtype.kind == "f"]
        packed = [k for k in floats if S.is_static(values[k].sym_shape)]
        return packed, [k for k in floats if k not in packed]

    def gradient_nodes(self):
        """(g, adjoint of the carry, the packed gradients of the stacked arguments and
        shared values with static shapes, flattened and concatenated (or None), [the
        gradient of each of the others]): the block's derivative graph for an adjoint `g`
        of its result. Integer arguments (indices) have no gradient."""
        from .api import input as declare_input
        from .autodiff import grad

        def make():
            # (the result's own symbols: the adjoint has its shape, dim for dim)
            g = declare_input("g", self.out.sym_shape, self.carry.dtype.name)
            values = self.args + self.shared
            packed, apart = self._differentiable()
            grads = grad(self.out, [self.carry] + [values[k] for k in packed + apart], seed=g)
            flat = [ops.reshape(gi, (-1,)) for gi in grads[1:1 + len(packed)]]
            joined = (ops.concat(flat, axis=0) if len(flat) > 1 else flat[0]) if flat else None
            return g, grads[0], joined, grads[1 + len(packed):]
        return self._function("gradient", make)

    def _gradient_outputs(self, part=None):
        """What the block's derivative function computes for `part` of the gradient (see
        run_gradient): the carry's adjoint, which every backward loop passes on, and the
        part's own gradients (None: every part's, to know its convolutions)."""
        _, carry_grad, packed, apart = self.gradient_nodes()
        if part == "carry":
            return [carry_grad]
        if part == "weights":
            return [carry_grad, packed]
        if part is not None:
            return [carry_grad, apart[self._differentiable()[1].index(int(part[5:]))]]
        return [carry_grad] + ([packed] if packed is not None else []) + list(apart)

    def backward(self, backend, part):
        """The block's derivative compiled for `backend` and one `part` of the gradient:
        feeds carry, s0, ..., w0, ..., g -> [adjoint of the carry, the part's gradients]
        (only what that part needs: an RNN's sequence, an input, gets no gradient in a
        loop that trains its weights)."""
        return self._function(("backward", backend, part), lambda: self._compile(
            self._gradient_outputs(part), backend, **self._conv_options(backend)))

    def _conv_options(self, backend):
        """On the cpu, for a block that is differentiated: the conv_gemm modes of the
        block's function and of all of its derivative's, which each of them then serves
        (one module compiled, not one per function; cpu option conv_code). {} otherwise."""
        if backend != "cpu" or not self.differentiated or \
                not any(node.op == "conv2d" for node in topological_order([self.out])):
            return {}  # (conv2d: the op whose steps, and gradients', conv_gemm computes)

        def make():
            from kernels.cpu import conv_code
            # (lowered and generated only, never called: nothing of them is compiled)
            both = conv_code(self._compile(self.out, backend).program) | \
                conv_code(self._compile(self._gradient_outputs(), backend).program)
            return {"conv_code": both} if both else {}
        return self._function(("conv code", backend), make)

    def _caller(self, f, arrays):
        """(names, arrays_at): the names of f's inputs in order, and arrays_at(k, carry,
        extra) -> their arrays at repeat k, from the repeat node's `arrays` after the carry
        (the stacked ones, then the shared values). A block may ignore some of its
        arguments; `extra` is the adjoint g of the backward loop."""
        names = [node.name for node in f.graph.inputs]
        stacked, shared = arrays[:len(self.args)], arrays[len(self.args):]
        picks = [-1 if name == "carry" else -2 if name == "g" else
                 -3 - int(name[1:]) if name[0] == "w" else int(name[1:]) for name in names]

        def arrays_at(k, carry, extra=None):
            # (s[k, ...]: a 0-d array, not a NumPy scalar, when s is 1-D)
            return [carry if p == -1 else extra if p == -2 else shared[-3 - p] if p < -2
                    else stacked[p][k, ...] for p in picks]
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

    def run(self, backend, out, x, *arrays):
        """The forward loop: out[0] = x, out[k + 1] = block(out[k], slices k, shared)."""
        f = self.forward(backend)
        names, arrays_at = self._caller(f, arrays)
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

    def run_gradient(self, backend, part, last, out, h, g, *arrays):
        """The backward loop from the carries `h` (n + 1) and their adjoints `g` (with
        `last`, the adjoint of h[n] alone: the others are zero): writes the adjoint of h[0]
        (part "carry"), the packed gradients of the stacked arguments and shared values
        (part "weights", see weights_layout), or the gradient of the k-th of them when it
        is computed apart (part "value<k>": (n, *slice shape) for a stacked argument, the
        sum over the repeats for a shared value)."""
        f = self.backward(backend, part)
        names, arrays_at = self._caller(f, arrays)
        n = h.shape[0] - 1
        stacked_rows = summed = None
        index = 1  # (the part's gradient: the function's second result)
        if part == "weights":
            (_, size), _ = self.weights_layout()
            stacked_rows, summed, first = out[:n * size].reshape(n, size), out[n * size:], size
        elif part != "carry":
            k = int(part[len("value"):])
            first = None  # (the whole result: no packed row to cut)
            if k < len(self.args):
                stacked_rows = out
            else:
                summed = out
        if summed is not None:
            summed[...] = 0
        adjoint = np.array(g if last else g[n])
        call = lambda *arrays: f(**dict(zip(names, arrays)))  # noqa: E731
        with f._lock:  # (as in run)
            for k in range(n - 1, -1, -1):
                arrays = arrays_at(k, h[k], adjoint)
                results = call(*arrays)
                if k == n - 1 and k:
                    call = self._looped(f, names, arrays)
                if part != "carry":
                    result = results[index]
                    if stacked_rows is not None:
                        stacked_rows[k] = result if first is None else result[:first]
                    if summed is not None:
                        summed += result if first is None else result[first:]
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
    dim is n); the block gets its k-th slice. Other values the block reads (weights shared
    by every repeat) are read alike by every repeat. The block is traced once, so a stack
    of 1000 blocks is declared, differentiated and compiled in about the time of one (see
    the module's docstring for how it runs and what it refuses).

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
    carries = apply("repeat", (x,) + stacked + tuple(body.values), {"body": body, "n": n})
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
    carry, stacked, shared = specs[0], specs[1:1 + len(body.args)], specs[1 + len(body.args):]
    if len(specs) != 1 + len(body.args) + len(body.shared):
        raise Mismatch(f"the block takes {len(body.args)} stacked arguments and "
                       f"{len(body.shared)} shared values, got {len(specs) - 1}")
    for i, (spec, arg) in enumerate(zip(stacked, body.args)):
        shape = spec.sym_shape
        if not shape or S.resolve(shape[0]) != n or len(shape) != arg.ndim + 1 or \
                spec.dtype != arg.dtype or not all(
                    S.dims_equal(a, b) for a, b in zip(shape[1:], arg.sym_shape)
                    if isinstance(S.resolve(b), int)):
            raise Mismatch(f"stacked argument {i + 1} must be ({n}, ...) with slices "
                           f"{S.format_shape(arg.sym_shape)} {arg.dtype}, got "
                           f"{S.format_shape(shape)} {spec.dtype}")
    for j, (spec, w) in enumerate(zip(shared, body.shared)):
        if spec.dtype != w.dtype or len(spec.sym_shape) != w.ndim or not all(
                S.dims_equal(a, b) for a, b in zip(spec.sym_shape, w.sym_shape)):
            raise Mismatch(f"shared value {j + 1} must be {S.format_shape(w.sym_shape)} "
                           f"{w.dtype}, got {S.format_shape(spec.sym_shape)} {spec.dtype}")
    if carry.dtype != body.carry.dtype or len(carry.sym_shape) != body.carry.ndim:
        raise Mismatch(f"the carry must be {S.format_shape(body.carry.sym_shape)} "
                       f"{body.carry.dtype}, got {S.format_shape(carry.sym_shape)} "
                       f"{carry.dtype}")
    return (n + 1,) + tuple(carry.sym_shape), carry.dtype


def _repeat_impl(x, *arrays, body, n):
    out = np.empty((n + 1,) + x.shape, x.dtype)
    body.run("numpy", out, x, *arrays)
    return out


def _repeat_vjp(g, out, x, *arrays, body, n):
    where = user_location()
    body.differentiated = True
    # the public result's gradient reaches the carries as pad(reshape(adjoint of h[n])):
    # zero but at n, so the backward loop takes that adjoint alone (no (n + 1) array)
    last = g.op == "pad_axis" and g.attr("axis") == 0 and g.attr("before") == n and \
        g.attr("after") == 0 and g.inputs[0].op == "reshape"
    adjoint = ops.reshape(g.inputs[0], x.sym_shape) if last else g

    def gradient(part):
        return apply("repeat_grad", (out, adjoint) + arrays,
                     {"body": body, "n": n, "part": part, "last": last})

    def weights_gradient(k):
        """The gradient of the k-th argument after the carry (stacked, then shared): cut
        from the packed weights gradient, or a backward loop of its own (see
        Block._differentiable)."""
        values = body.args + body.shared
        packed, _ = body._differentiable()
        if k not in packed:
            return gradient(f"value{k}")
        if any(values[j].dtype != x.dtype for j in packed):
            raise GradError(f"repeat: the gradients of the block's stacked arguments and "
                            f"shared values need them all of the carry's dtype {x.dtype} "
                            f"(at {where})")
        (stacked, size), (shared, _) = body.weights_layout()
        weights = gradient("weights")
        if k < len(body.args):
            offset, width, shape = stacked[k]
            rows = ops.reshape(ops.slice_axis(weights, 0, 0, n * size), (n, size))
            return ops.reshape(ops.slice_axis(rows, 1, offset, offset + width), (n,) + shape)
        offset, width, shape = shared[k - len(body.args)]
        start = n * size + offset
        return ops.reshape(ops.slice_axis(weights, 0, start, start + width), shape)
    return (lambda: gradient("carry"),) + tuple(
        (lambda k=k: weights_gradient(k)) if a.dtype.kind == "f" else None
        for k, a in enumerate(arrays))


def _infer_repeat_grad(specs, body, n, part, last):
    h, g = specs[0], specs[1]
    if len(g.sym_shape) != len(h.sym_shape) - (1 if last else 0):
        raise Mismatch(f"the adjoint {S.format_shape(g.sym_shape)} does not go with the "
                       f"carries {S.format_shape(h.sym_shape)}")
    if part == "carry":
        return tuple(h.sym_shape[1:]), h.dtype
    if part == "weights":
        (_, size), (_, total) = body.weights_layout()
        return (n * size + total,), h.dtype
    k = part[len("value"):]
    if not part.startswith("value") or not k.isdigit() or \
            int(k) not in body._differentiable()[1]:
        raise Mismatch(f"part must be 'carry', 'weights' or 'value<k>' of a value whose "
                       f"gradient is computed apart, got {part!r}")
    value = specs[2 + int(k)]
    return tuple(value.sym_shape), value.dtype


def _repeat_grad_impl(h, g, *arrays, body, n, part, last):
    if part == "carry":
        out = np.empty(h.shape[1:], h.dtype)
    elif part == "weights":
        (_, size), (_, total) = body.weights_layout()
        out = np.empty(n * size + total, h.dtype)
    else:
        value = arrays[int(part[len("value"):])]
        out = np.empty(value.shape, value.dtype)
    body.run_gradient("numpy", part, last, out, h, g, *arrays)
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
            f, (carry, *rest) = body.forward(self.backend), arrays
            extra = None
        else:
            f, (h, g, *rest) = body.backward(self.backend, self.part), arrays
            carry, extra = h[0], (g if self.last else g[0])
        if not hasattr(f, "kernels_to_compile"):
            return []
        names, arrays_at = body._caller(f, rest)
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
               doc="gn.repeat's backward loop: the adjoint of h[0], or the gradients of "
                   "the stacked arguments and shared values"))
# (a block may have no stacked argument: the carry alone, and for the gradient the carries
# and their adjoints)
INPUT_COUNTS["repeat"], INPUT_COUNTS["repeat_grad"] = (1, None), (2, None)
