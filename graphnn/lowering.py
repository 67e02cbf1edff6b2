"""Lowering: an optimised graph becomes a kernel-IR Program (kernels/ir.py).

Each node lowers by its op's kind (registry.KINDS): elementwise ops by their scalar
template, pattern ops (transpose, slice, broadcast) as loads at another index, and every
other kind by the lowering function in its stanza (ops.py), which makes its step through
the public methods of `Lowering` (`result_buffer`, `buffer_of`, `add_step`, `reduce`,
`window`, `view`, `matmul_operand`). No list of ops and no dispatch on op names: the
names left are the leaves' roles and two patterns a gemm reads in place (a 2-D transpose,
and an update W - c * (A @ B)).

Decisions made here:
- elementwise fusion: an elementwise node used once, by an elementwise node of the same
  shape or by a reduction over its shape, is computed inside its consumer's loop (no
  buffer); transposes, slices and broadcasts are index patterns, so they fuse too;
- a 2-D transpose read only by matmuls is not materialised: the matmul reads it transposed;
- memory planning: a buffer whose last reader has run is reused for a later buffer of the
  same shape and dtype, and an elementwise step may write in place over an input it reads
  element for element and that dies there.
"""
import bisect
import collections
import functools
import string

import numpy as np

from kernels import ir

from . import shapes as S
from .errors import GraphError
from .graph import topological_order
from .registry import OPS, kind_of

# Kinds computed element by element inside a consumer's loop (see registry.KINDS).
FUSIBLE_KINDS = ("elementwise", "pattern", "size")


_UNKNOWN = object()  # (a memo's miss, where None is an answer)
# A reduction is not finished in the step of a fused group that reads this many values or
# more: such a group is a sum of many terms (the gradient of a bias used at every time step
# of a recurrent layer: T per-step sums added up), which the cpu back end adds in its driver
# with NumPy (kernels/cpu.py, WIDE_SUM) so that one kernel serves every length. Finished in
# a reduction, the sum stayed in the kernel, which grew with T (2.5 s to compile at T=200).
WIDE_GROUP = 8
# A fused group is at most this many nodes deep (see Lowering._decide_chain).
MAX_GROUP_DEPTH = 64


def is_elementwise(node):
    """Whether `node` is computed element by element, so it can fuse into a loop."""
    return kind_of(node) in FUSIBLE_KINDS


# integer dtypes Numba's arithmetic widens (results wrap to these in NumPy)
_NARROW_INTS = frozenset(np.dtype(name) for name in
                         ("int8", "int16", "int32", "uint8", "uint16", "uint32"))
_INT64 = np.dtype("int64")
# int64 ops that can overflow, computed in uint64 (where wrapping is defined)
_WRAPPING = frozenset({"add", "sub", "mul", "square", "neg"})


def read_inputs(node):
    """The inputs whose values `node`'s step reads: none for a size op (it reads only a
    shape), for an elementwise op those its template names (`{0}`, `{1}` ...; a random
    draw reads its counter, not the tensor whose shape it takes), else all of them."""
    opdef = OPS[node.op]
    if opdef.kind == "size":
        return ()
    if opdef.kind == "elementwise" and opdef.scalar is not None:
        unread = _unread_inputs(opdef.scalar, len(node.inputs))
        if unread:
            return tuple(i for k, i in enumerate(node.inputs) if k not in unread)
    return node.inputs


@functools.lru_cache(maxsize=None)
def _unread_inputs(scalar, count):
    """The places of the inputs, of `count`, that the template `scalar` does not name."""
    used = template_fields(scalar)
    return frozenset(k for k in range(count) if str(k) not in used)


@functools.lru_cache(maxsize=None)
def dtype_name(dtype):
    """`dtype.name` (a slow property of NumPy's, asked for every buffer)."""
    return dtype.name


@functools.lru_cache(maxsize=None)
def template_fields(scalar):
    """The names of the fields of a scalar template: "0", "1", "T", attrs, "flat"."""
    return {f for _, f, _, _ in string.Formatter().parse(scalar) if f is not None}


def is_index_const(node):
    """A 1-D integer constant 0, 1, ..., n-1 (class ids, e.g. of a one-hot): inside a loop
    it is the loop index along its axis, so it needs no buffer."""
    if node.op != "const" or node.ndim != 1 or node.dtype.kind not in "iu":
        return False
    value = node.value
    return value.size > 1 and bool(np.array_equal(value, np.arange(value.size)))


def _number_source(value):
    """Python source for a float: repr, with inf and nan spelled as NumPy names."""
    text = repr(float(value))
    return {"inf": "np.inf", "-inf": "-np.inf", "nan": "np.nan"}.get(text, text)


def _float_literal(value, dtype):
    value = np.asarray(value, dtype=dtype).reshape(-1)[0]
    if np.dtype(dtype).kind == "f":
        return f"T({_number_source(value)})"
    return repr(int(value))


class _NotANumber:
    """Stands for a non-numeric attr in a scalar template: formatting it is an error, so an
    attr value (say a string) can never become generated source."""

    def __init__(self, node, key):
        self.node, self.key = node, key

    def __format__(self, spec):
        raise GraphError(f"attr {self.key!r} of {self.node.label()} must be a number to be "
                         f"compiled, got {self.node.attr(self.key)!r}")


def _attr_source(node, key, value):
    """Source text of a numeric attr used by an op's scalar template."""
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, (float, np.floating)):
        return _number_source(value)
    return _NotANumber(node, key)


class Lowering:
    """Lowers one graph; `fusion=False` gives every elementwise, pattern and reduction node
    a step of its own (the "fusion" option of passes.OPTIONAL_PASSES)."""

    def __init__(self, roots, inputs, states, outputs, update_pairs, fusion=True,
                 order=None):
        self.fusion = fusion
        self.nodes = topological_order(roots) if order is None else list(order)
        self.inputs = list(inputs)
        self.states = list(states)
        self._state_index = {}  # state node -> its first position in `states`
        for k, n in enumerate(self.states):
            self._state_index.setdefault(n, k)
        self.outputs = list(outputs)
        self.update_pairs = list(update_pairs)
        self.consumers = {id(n): [] for n in self.nodes}
        self._reads = {}  # node -> read_inputs(node), asked for again and again
        for n in self.nodes:
            reads = self._reads[n] = read_inputs(n)
            for i in reads:
                self.consumers[id(i)].append(n)
        self.dims = {}          # representative Sym -> dim name
        self.dim_sources = {}   # dim name -> (input index, axis)
        self.buffers = {}       # id(node) -> Buffer
        self.steps = []
        self.step_nodes = []    # nodes each step computes (for comments and pictures)
        self.consts = []
        self.pinned = {id(n) for n in self.outputs} | {id(v) for _, v in self.update_pairs}
        self.counter = 0
        self._inlined = {}  # node -> whether it is inlined (see `inlined`)
        self._depths = {}  # inlined node -> how far below its group's root (see there)
        self._groups = {}  # root node -> group_nodes(root)
        self._described = {}  # (name, op, sym_shape) -> _describe(node)
        self._codes = {}  # (op, dtype, argument variables) -> scalar code
        self._shapes = {}  # sym_shape -> shape (see `shape`)
        self._expressions = {}  # _expression_key -> an expression's template (see there)
        self._finishers = None  # the sole_elementwise_reader of each reduction
        self._roots_above = {}  # node -> group_root_above(node)
        self._finished_by = {}  # group root -> reductions_finished_by(root)
        self._group_loads = {}  # group root -> group_loads(root)
        self._transposed = {}  # transpose node -> transposed_view(node)
        self._read_lists = None  # see _reads_of_steps
        self._bind_dims()

    # -- shapes -------------------------------------------------------------------------
    def _bind_dims(self):
        for index, node in enumerate(self.inputs):
            for axis, d in enumerate(node.sym_shape):
                d = S.resolve(d)
                if isinstance(d, S.Sym) and d not in self.dims:
                    name = f"d{len(self.dims)}"
                    self.dims[d] = name
                    self.dim_sources[name] = (index, axis)

    def shape(self, node):
        """`node`'s shape with each symbolic dim named (found once per sym_shape: no dim is
        unified while a graph is lowered)."""
        found = self._shapes.get(node.sym_shape)
        if found is not None:
            return found
        out = []
        for d in node.sym_shape:
            d = S.resolve(d)
            if isinstance(d, int):
                out.append(d)
            elif d in self.dims:
                out.append(self.dims[d])
            else:
                raise GraphError(f"the symbolic dim of {node.label()} is not bound by any input")
        found = self._shapes[node.sym_shape] = tuple(out)
        return found

    def size_expr(self, node, axes):
        shape = self.shape(node)
        parts = [str(shape[a]) for a in axes] or ["1"]
        return " * ".join(parts)

    def reads(self, node):
        """read_inputs(node), looked up for the graph's nodes."""
        found = self._reads.get(node)
        return read_inputs(node) if found is None else found

    # -- fusion decisions ----------------------------------------------------------------
    def inlined(self, node):
        """True when `node` is computed inside its consumer's loop: its single consumer's,
        or every consumer's for a mask of a leaf (see `recomputed`)."""
        # (memoised per node: lowering asks several times per node and per reader, a
        # learning rate has thousands of consumers in a deep graph, and consumers and
        # pinned nodes are fixed once lowering starts)
        known = self._inlined.get(node)
        if known is None:
            if kind_of(node) in ("leaf", "size"):  # (no group below it)
                known = self._inlined[node] = self._decide_inlined(node)
            else:
                known = self._decide_chain(node)
        return known

    def _decide_chain(self, node):
        """Decide `inlined` for `node` and the chain of sole consumers above it that
        `_decide_inlined` would inline, from the top down: a node MAX_GROUP_DEPTH below
        its group's root starts a group of its own. (An expression is built by recursion
        over its group: a chain of 400 inlined adds, the gradient of a bias at every time
        step of a long sequence, went past Python's recursion limit.) Iterative: the chain
        may be thousands of nodes long."""
        chain, n = [], node
        while True:
            decided = self._inlined.get(n)
            if decided is not None:
                depth = self._depths.get(n, 0) if decided else 0
                break
            if not self._decide_inlined(n):
                self._inlined[n], depth = False, 0
                break
            users = self.consumers[id(n)]
            if len(users) != 1:  # (a recomputed mask of leaves: in every consumer)
                self._inlined[n], self._depths[n], depth = True, 1, 1
                break
            chain.append(n)
            n = users[0]
        for n in reversed(chain):  # (top down: each below the one before)
            depth += 1
            if depth > MAX_GROUP_DEPTH:
                depth = 0
            self._inlined[n] = depth > 0
            if depth:
                self._depths[n] = depth
        return self._inlined[node]

    def _decide_inlined(self, node):
        kind = OPS[node.op].kind
        if kind == "size":
            return True
        if node.op == "const" and (node.value.size == 1 or is_index_const(node)):
            return all(is_elementwise(c) for c in self.consumers[id(node)]) \
                and id(node) not in self.pinned
        if kind not in FUSIBLE_KINDS or id(node) in self.pinned or not self.fusion:
            return False
        users = self.consumers[id(node)]
        if len(users) != 1:
            return self.recomputed(node) and all(self.fits_into(node, u) for u in users)
        return self.fits_into(node, users[0])

    def recomputed(self, node):
        """An op its stanza marks `recompute` (a comparison) of a leaf (or a reshaped leaf)
        with a leaf or an inlined constant, e.g. the one-hot mask of integer labels: one
        compare in each consumer's loop costs less than a buffer written once and read by
        every consumer."""
        def leafish(i):
            while kind_of(i) == "view":
                i = i.inputs[0]
            return kind_of(i) == "leaf" and (i.op != "const" or self.inlined(i))
        return OPS[node.op].recompute and all(leafish(i) for i in node.inputs)

    def fits_into(self, node, user):
        """Whether elementwise `node` can be computed inside `user`'s loop."""
        if node.dtype != user.dtype and not OPS[node.op].recompute:
            # a fused group computes in one dtype ({T} in templates is the kernel's): a cast
            # to int inside a float kernel would not truncate, a float constant inside an
            # int kernel would. (A 0/1 comparison mask is exact in any dtype.)
            return False
        if kind_of(user) == "reduce":
            return True
        if not is_elementwise(user) or kind_of(user) == "pattern":
            return False
        return node.sym_shape == user.sym_shape or node.ndim == 0 or all(
            S.dims_equal(a, b) for a, b in zip(node.sym_shape, user.sym_shape)) and \
            node.ndim == user.ndim

    def reduction_finished_in(self, node):
        """The elementwise node in whose step reduction `node` is computed and finished, or
        None (see `sole_elementwise_reader`; one reduction per step: the first its group
        reads)."""
        if not self.fusion:
            return None
        user = self.sole_elementwise_reader(node)
        if user is not None and self.reductions_finished_by(user)[0] is node:
            return user
        return None

    def reductions_finished_by(self, user):
        """The reductions elementwise `user` could finish as their results are stored (see
        `sole_elementwise_reader`), in the order it reads them."""
        if not self.fusion:
            return []
        if self._finishers is None:  # (asked for every elementwise step: found once)
            self._finishers = {self.sole_elementwise_reader(n) for n in self.nodes
                               if kind_of(n) == "reduce"}
        if user not in self._finishers:
            return []
        found = self._finished_by.get(user)  # (each reduction under a group asks: once)
        if found is None:
            found = self._finished_by[user] = [
                i for n in self.group_nodes(user) if is_elementwise(n) for i in self.reads(n)
                if kind_of(i) == "reduce" and self.sole_elementwise_reader(i) is user]
        return found

    def sole_elementwise_reader(self, node):
        """The root of the fused elementwise group, of the same shape and dtype, that alone
        reads the result of reduction `node` (a mean's multiply, say): it can be computed as
        each result is stored, in the reduction's step. None when there is none."""
        if kind_of(node) != "reduce" or node.attr("keepdims") or id(node) in self.pinned or \
                self.summed_product(node.inputs[0]) is node:
            return None
        user = self.group_root_above(node)
        if user is None or self.group_loads(user) >= WIDE_GROUP:
            return None
        if user.dtype != node.dtype or not all(
                S.dims_equal(a, b) for a, b in zip(node.sym_shape, user.sym_shape)) or \
                user.ndim != node.ndim:
            return None
        return user

    def group_loads(self, root):
        """How many values the fused group of `root` reads from outside it (memoised)."""
        found = self._group_loads.get(root)
        if found is None:
            group = self.group_nodes(root)
            inside = {id(n) for n in group}
            found = self._group_loads[root] = len(
                {id(i) for n in group for i in self.reads(n) if id(i) not in inside})
        return found

    def group_root_above(self, node):
        """The root of the fused elementwise group that alone reads `node`: up from its
        sole consumer through inlined consumers, each the sole, elementwise (not pattern)
        consumer of the one before. None when a consumer on the way is not. Memoised with
        every node on the way: a recurrent graph's gradient is a chain of T inlined adds,
        each asked about from below (walked once, not once per reduction under it)."""
        path, found = [], None
        while True:
            known = self._roots_above.get(node, _UNKNOWN)
            if known is not _UNKNOWN:
                found = known
                break
            path.append(node)
            users = self.consumers[id(node)]
            if len(users) != 1 or not is_elementwise(users[0]) or \
                    kind_of(users[0]) == "pattern":
                break
            node = users[0]
            if not self.inlined(node):
                found = node
                break
        for n in path:
            self._roots_above[n] = found
        return found

    def transposed_view(self, node):
        """A transpose of the last two axes (a 2-D transpose, or each matrix of a stack)
        read only by matmuls: the matmul reads its input transposed (the one index pattern
        a BLAS gemm reads in place, through its trans flags)."""
        if not self.fusion or node.op != "transpose" or node.ndim < 2 or \
                id(node) in self.pinned:
            return False
        found = self._transposed.get(node)  # (a weight's transpose, read by the matmul of
        if found is None:                   # every time step, is asked about by each)
            n = node.ndim
            found = self._transposed[node] = \
                node.attr("axes") == tuple(range(n - 2)) + (n - 1, n - 2) and \
                all(kind_of(c) == "matmul" for c in self.consumers[id(node)])
        return found

    def summed_product(self, node):
        """A batched matmul (both operands of rank >= 2) read only by a sum over some of its
        batch axes (a gradient summed over the dims its operand was broadcast along): the
        sum's step computes the products and adds them up as it goes, with no buffer for
        the stack of products. Returns that sum, or None."""
        if not self.fusion or kind_of(node) != "matmul" or node.ndim < 3 or \
                id(node) in self.pinned or any(i.ndim < 2 for i in node.inputs):
            return None
        users = self.consumers[id(node)]
        if len(users) != 1 or users[0].op != "sum":
            return None
        axes = S.normalize_axes(users[0].attr("axis"), node.ndim)
        return users[0] if axes and max(axes) < node.ndim - 2 else None

    def matmul_operand(self, node):
        """(buffer, transposed) for a matmul operand: a transposed view reads its input."""
        if self.transposed_view(node):
            return self.buffer_of(node.inputs[0]), True
        return self.buffer_of(node), False

    # -- buffers ---------------------------------------------------------------------------
    def new_buffer(self, node, role="temp"):
        self.counter += 1
        label = node.name if node.name and node.name.isidentifier() else node.op
        name = f"b{self.counter}_{label}"[:40]
        return ir.Buffer(name, self.shape(node), dtype_name(node.dtype), role)

    def leaf_buffer(self, node):
        if id(node) in self.buffers:
            return self.buffers[id(node)]
        if node.op == "input":
            index = self.inputs.index(node)
            buf = ir.Buffer(f"in{index}", self.shape(node), dtype_name(node.dtype), "input",
                            index)
        elif node.op in ("param", "variable"):
            index = self._state_index[node]
            buf = ir.Buffer(f"st{index}", self.shape(node), dtype_name(node.dtype), "state",
                            index)
        else:
            index = len(self.consts)
            buf = ir.Buffer(f"c{index}", self.shape(node), dtype_name(node.dtype), "const", index)
            self.consts.append(node)
        self.buffers[id(node)] = buf
        return buf

    def buffer_of(self, node):
        """The buffer holding `node`'s value (a leaf's is made on first use)."""
        if kind_of(node) == "leaf":
            return self.leaf_buffer(node)
        return self.buffers[id(node)]

    def result_buffer(self, node):
        """A new temporary for the step that computes `node`, registered as its buffer."""
        out = self.buffers[id(node)] = self.new_buffer(node)
        return out

    # -- scalar expressions for fused elementwise groups -----------------------------------
    def expression(self, root, loopvars, given=None):
        """ScalarExpr computing `root` at loop index `loopvars` (one per axis of root);
        `given` maps nodes to variables that already hold their value there."""
        loads, stmts, memo = {}, [], {}
        for node, var in (given or {}).items():
            memo[(id(node), tuple(loopvars))] = var

        def var(prefix):
            return f"{prefix}{len(loads) + len(stmts)}"

        def value_of(node, index):
            key = (id(node), tuple(index))
            result = memo.get(key)
            if result is not None:
                return result
            if node.op == "const" and node.value.size == 1 and self.inlined(node):
                result = _float_literal(node.value, node.dtype)
            elif node.op == "const" and is_index_const(node) and self.inlined(node):
                result = index[0] if index[0].isidentifier() else f"({index[0]})"  # an int
            elif OPS[node.op].kind == "size":
                result = OPS[node.op].lower(self, node)
            elif node is root or self.inlined(node):
                result = compute(node, index)
            else:
                buf = self.buffer_of(node)
                v = var("x")
                loads[v] = ir.Load(buf, tuple(index) if buf.ndim else ())
                result = v
            memo[key] = result
            return result

        def compute(node, index):
            opdef = OPS[node.op]
            if opdef.kind == "pattern":
                return value_of(*opdef.lower(node, index))
            read = self.reads(node)
            if len(read) == len(node.inputs):  # (reads every input: nearly every op)
                args = [value_of(inp, self.broadcast_index(inp, node, index))
                        for inp in node.inputs]
            else:
                args = [value_of(inp, self.broadcast_index(inp, node, index))
                        if any(inp is r for r in read) else None for inp in node.inputs]
            flat = "flat" in template_fields(opdef.scalar)
            # (an op without attrs on the same variables gives the same code: found once, as
            # a deep graph's blocks number their variables alike)
            key = None if flat or node._attrs else (node.op, node.dtype, tuple(args))
            code = self._codes.get(key) if key is not None else None
            if code is None:
                code = self._code(node, opdef, args, index, flat)
                if key is not None:
                    self._codes[key] = code
            v = var("v")
            stmts.append((v, code))
            return v

        result = value_of(root, loopvars)
        return ir.ScalarExpr(loads, stmts, result)

    def group_expression(self, root, loopvars):
        """`expression(root, loopvars)`, made once per structure: the blocks of a deep
        graph fuse the same ops on the same shapes into their steps, and such an expression
        is the first one's with the buffers of its own loads (`_expression_key`)."""
        key, loaded = self._expression_key(root)
        template = self._expressions.get(key) if key is not None else None
        if template is not None:
            buffers = [self.buffer_of(n) for n in loaded]  # (in the order value_of meets them)
            loads, stmts, result = template
            return ir.ScalarExpr({var: ir.Load(buffers[slot], index)
                                  for var, slot, index in loads}, list(stmts), result)
        expr = self.expression(root, loopvars)
        if key is not None:
            slots = {id(self.buffer_of(n)): k for k, n in enumerate(loaded)}
            if len(slots) == len(loaded) and \
                    all(id(load.buffer) in slots for load in expr.loads.values()):
                self._expressions[key] = (
                    tuple((var, slots[id(load.buffer)], load.index)
                          for var, load in expr.loads.items()),
                    tuple(expr.stmts), expr.result)
        return expr

    def _expression_key(self, root):
        """(key, loaded) for `expression(root, loopvars of root)`: `loaded` the nodes whose
        buffers it loads, in the order it meets them, and `key` everything else it is made
        of, node by node as `value_of` walks them (a loaded node by its place in `loaded`,
        shape and dtype; an inlined constant by itself; a size op by its source; an op by
        its name, attrs, dtype, shape, node name and what it reads). Nodes with one key are
        one node for everything but their loads (nodes are hash-consed), so the expression
        is the same but for the loads' buffers. None when an attr is not hashable."""
        loaded, tokens = [], {}

        def token(node):
            found = tokens.get(node)
            if found is not None:
                return found
            opdef = OPS[node.op]
            if node.op == "const" and self.inlined(node):
                found = ("const", node)
            elif opdef.kind == "size":
                found = ("size", opdef.lower(self, node))
            elif node is root or self.inlined(node):
                attrs = node._attrs
                if attrs and any(isinstance(v, (float, np.floating)) for _, v in attrs):
                    attrs = tuple((k, (type(v), repr(v)) if isinstance(
                        v, (float, np.floating)) else v) for k, v in attrs)
                if opdef.kind == "pattern":
                    reads = (token(opdef.lower(node, ("i",) * node.ndim)[0]),)
                else:
                    read = self.reads(node)
                    reads = tuple([token(i) for i in node.inputs]) \
                        if len(read) == len(node.inputs) else \
                        tuple([token(i) if any(i is r for r in read) else None
                               for i in node.inputs])
                found = (node.op, attrs, node.dtype, node.sym_shape, node.name, reads)
            else:
                loaded.append(node)
                found = ("load", len(loaded) - 1, node.sym_shape, node.dtype)
            tokens[node] = found
            return found
        key = token(root)
        try:
            hash(key)
        except TypeError:
            return None, loaded
        return key, loaded

    def _code(self, node, opdef, args, index, flat):
        """The scalar code of elementwise `node` on the variables `args`."""
        attrs = {k: _attr_source(node, k, v) for k, v in node.attrs.items()}
        if flat:
            attrs["flat"] = self.flat_index(node, index)
        wraps = node.dtype == _INT64 and node.op in _WRAPPING
        if wraps:
            # LLVM may assume a signed int64 product or sum does not overflow (sign(x*x)
            # became 1 for x*x that wraps to 0); unsigned arithmetic wraps as NumPy does
            args = [a if a is None else f"np.uint64({a})" for a in args]
        code = opdef.scalar.format(*args, T="T", **attrs)
        if wraps:
            code = f"np.int64({code})"
        if node.dtype in _NARROW_INTS:
            # Numba widens int32 + int32 to int64; NumPy wraps each result to its
            # dtype, so abs(x + x) must see the wrapped sum, not the wide one
            code = f"np.{node.dtype}({code})"
        return code

    def flat_index(self, node, index):
        """Source of the row-major position of element `index` in `node`'s shape (the
        `{flat}` of a template: what a counter-based random draw hashes)."""
        dims = self.shape(node)
        if not dims:
            return "0"
        flat = f"({index[0]})"
        for dim, i in zip(dims[1:], index[1:]):
            flat = f"({flat} * {dim} + ({i}))"
        return flat

    @staticmethod
    def broadcast_index(inp, user, index):
        """Index of `inp` inside `user`'s loop, NumPy broadcasting (right-aligned)."""
        if inp.sym_shape == user.sym_shape:  # (the same dims: the same index)
            return list(index)
        lead = user.ndim - inp.ndim
        sub = []
        for j, d in enumerate(inp.sym_shape):
            k = lead + j
            ud = user.sym_shape[k]
            if S.resolve(d) == 1 and S.resolve(ud) != 1:
                sub.append("0")
            else:
                sub.append(index[k])
        return sub

    # -- steps -----------------------------------------------------------------------------
    def lower(self):
        for node in self.nodes:
            kind = OPS[node.op].kind
            if kind == "leaf":
                if id(node) in self.pinned or not self.inlined(node):
                    self.leaf_buffer(node)
                continue
            if self.inlined(node) or node.op == "transpose" and self.transposed_view(node) or \
                    kind == "reduce" and self.reduction_finished_in(node) is not None or \
                    kind == "matmul" and self.summed_product(node) is not None:
                continue  # computed in a consumer's step (a finished reduction: in its own)
            self.lower_node(node)
        outputs = [self.buffer_of(n) for n in self.outputs]
        updates = [(self.leaf_buffer(p), self.buffer_of(v)) for p, v in self.update_pairs]
        return outputs, updates

    def describe(self, node):
        """_describe(node), found once per name, op and shape (a deep graph has thousands
        of nodes described alike)."""
        key = (node.name, node.op, node.sym_shape)
        found = self._described.get(key)
        if found is None:
            found = self._described[key] = _describe(node)
        return found

    def add_step(self, step, nodes):
        self.steps.append(step)
        self.step_nodes.append(nodes)
        self._read_lists = None

    def _reads_of_steps(self):
        """step_reads of each step, in order: found once for the passes over the steps
        after lowering (a deep graph has 11,000 steps). accumulate_updates, which replaces
        steps, keeps it up to date; update_in_place changes no step's reads."""
        if self._read_lists is None:
            self._read_lists = list(map(_reads, self.steps))
        return self._read_lists

    def group_nodes(self, root):
        """The nodes fused into root's step (root first): a new list each time, found once
        per root (asked for a step's fusion decisions and again for its step)."""
        found = self._groups.get(root)
        if found is None:
            found, stack = [], [root]
            while stack:
                n = stack.pop()
                found.append(n)
                for i in self.reads(n):
                    if kind_of(i) not in ("leaf", "size") and self.inlined(i):
                        stack.append(i)
            self._groups[root] = found
        return list(found)

    def lower_node(self, node):
        """Add the step computing `node` (and what fuses into it), by its op's kind."""
        opdef = OPS[node.op]
        comment = self.describe(node)
        if opdef.kind in FUSIBLE_KINDS:
            finished = self.reductions_finished_by(node)
            if finished:
                OPS[finished[0].op].lower(self, finished[0], comment, finish=node)
            else:
                self.elementwise(node, comment)
        elif opdef.lower is not None:
            opdef.lower(self, node, comment)
        else:
            raise GraphError(f"the compiled backends cannot lower op '{node.op}' "
                             f"(kind {opdef.kind}) of {node.label()}")

    def elementwise(self, node, comment):
        """The Elementwise step of `node` with every node that fuses into it."""
        out = self.result_buffer(node)
        loopvars = [f"i{k}" for k in range(node.ndim)]
        expr = self.group_expression(node, loopvars)
        nodes = self.group_nodes(node)
        if len(nodes) > 1:
            comment += "  <- fused: " + ", ".join(self.describe(n) for n in nodes[1:][:6]) + (
                " ..." if len(nodes) > 7 else "")
        self.add_step(ir.Elementwise(out, expr, comment), nodes)

    def reduce(self, node, reducer, comment, finish=None):
        """The Reduce step of reduction `node` (`reducer`: sum | max) over its input, with
        the elementwise group it reads fused in; with `finish`, the elementwise node that
        finishes each result (see `reduction_finished_in`), whose buffer the step writes."""
        x = node.inputs[0]
        if reducer == "sum" and self.summed_product(x) is node:
            self.batch_matmul(x, comment, summed=node)
            return
        axes = S.normalize_axes(node.attr("axis"), x.ndim)
        if finish is None:
            reduced = tuple(d for k, d in enumerate(self.shape(x)) if k not in axes)
            out = ir.Buffer(f"b{self.counter + 1}_{node.op}", reduced, dtype_name(node.dtype))
            self.counter += 1
        else:
            out = self.new_buffer(finish)
        loopvars = [f"i{k}" for k in range(x.ndim)]
        if self.inlined(x):
            expr = self.group_expression(x, loopvars)
            nodes = [node] + self.group_nodes(x)
        else:
            buf = self.buffer_of(x)
            expr = ir.ScalarExpr({"x0": ir.Load(buf, tuple(loopvars))}, [], "x0")
            nodes = [node]
        post = None
        if finish is not None:
            kept = [v for k, v in enumerate(loopvars) if k not in axes]
            post = self.expression(finish, kept, given={node: "acc"})
            nodes = [finish] + [n for n in self.group_nodes(finish) if n is not finish] + nodes
            comment = f"{comment}  <- finishes: {self.describe(node)}"
        self.add_step(ir.Reduce(out, expr, self.shape(x), axes, reducer, comment, post), nodes)
        self.buffers[id(finish if finish is not None else node)] = out
        if node.attr("keepdims"):
            self.view(node, out, "keepdims")

    def view(self, node, src, comment):
        """A Reshape step: `node`'s buffer is a view of `src` (of its base, for a view)."""
        view = self.buffers[id(node)] = self.new_buffer(node, "view")
        view.base = src.base or src
        self.add_step(ir.Reshape(view, src, comment), [node])

    def reshaped(self, buf, shape, node, comment):
        """`buf` read with another shape of the same elements (a view; `buf` itself when
        the shape is its own), for the step computing `node`."""
        if tuple(shape) == tuple(buf.shape):
            return buf
        self.counter += 1
        view = ir.Buffer(f"b{self.counter}_view", tuple(shape), buf.dtype, "view",
                         base=buf.base or buf)
        self.add_step(ir.Reshape(view, buf, comment), [node])
        return view

    def batch_matmul(self, node, comment, summed=None):
        """The step of matmul `node` beyond 2-D @ 2-D, as np.matmul computes it: a 1-D
        operand is read as a row (left) or a column (right), operands of lower rank get
        leading dims of 1 (views), and the BatchMatmul step (kernels/ir.py) multiplies
        each matrix of the stack, reading an operand's dim of 1 for every index of a batch
        dim (broadcasting). With `summed` (see `summed_product`), the sum of the products
        over the summed batch axes is computed instead, into the sum's buffer."""
        a_node, b_node = node.inputs
        (a, trans_a), (b, trans_b) = (self.matmul_operand(i) for i in node.inputs)
        a_rows = (1,) + a.shape if a.ndim == 1 else a.shape
        b_cols = b.shape + (1,) if b.ndim == 1 else b.shape
        rank = max(len(a_rows), len(b_cols))
        a = self.reshaped(a, (1,) * (rank - len(a_rows)) + a_rows, node, comment)
        b = self.reshaped(b, (1,) * (rank - len(b_cols)) + b_cols, node, comment)
        n = a.shape[-1] if trans_a else a.shape[-2]
        m = b.shape[-2] if trans_b else b.shape[-1]
        shape = self.shape(node)
        batch = shape[:len(shape) - (a_node.ndim > 1) - (b_node.ndim > 1)]
        batch = (1,) * (rank - 2 - len(batch)) + tuple(batch)
        if summed is not None:  # the summed axes have size 1 (the sum with keepdims)
            axes = S.normalize_axes(summed.attr("axis"), node.ndim)
            batch = tuple(1 if k in axes else d for k, d in enumerate(batch))
        if rank == 2:
            step_out = ir.Buffer(f"b{self.counter + 1}_matmul", (n, m),
                                 dtype_name(node.dtype))
            step = ir.Matmul(step_out, a, b, trans_a, trans_b, comment)
        else:
            step_out = ir.Buffer(f"b{self.counter + 1}_matmul", batch + (n, m),
                                 dtype_name(node.dtype))
            step = ir.BatchMatmul(step_out, a, b, trans_a, trans_b, comment)
        self.counter += 1
        target = summed if summed is not None else node
        nodes = [summed, node] if summed is not None else [node]
        self.add_step(step, nodes)
        if tuple(step_out.shape) == self.shape(target):
            self.buffers[id(target)] = step_out
        else:  # a row, a column or summed axes dropped: a view with the node's shape
            self.view(target, step_out, comment)

    def window(self, node, helper, reads, params, comment):
        """A Window step: kernel helper `helper` (kernels/windows.py) on the buffers of
        `node`'s first `reads` inputs, with integer `params` (strides, pads, sizes)."""
        out = self.result_buffer(node)
        ins = [self.buffer_of(i) for i in node.inputs]
        if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in params):
            raise GraphError(f"window sizes of {node.label()} must be ints, got {params!r}")
        self.add_step(ir.Window(out, helper, ins[:reads], tuple(int(p) for p in params),
                                comment), [node])

    def host_call(self, node, call, comment):
        """A HostCall step: `call(out, *inputs)` writes `node`'s value from the buffers of
        its inputs (see ir.HostCall)."""
        out = self.result_buffer(node)
        ins = [self.buffer_of(i) for i in node.inputs]
        self.add_step(ir.HostCall(out, call, ins, comment), [node])

    # -- memory planning -------------------------------------------------------------------
    def accumulate_updates(self, outputs, updates):
        """An update W - c * (A @ B) whose product nothing else reads becomes one BLAS call
        that accumulates into W (alpha = -c, beta = 1): no product buffer and no pass over W,
        which is what an SGD step on a weight matrix is. The call takes the place of the
        elementwise step, so it runs after every earlier read of the old W. Returns the
        updates still to apply."""
        producer = {id(step.out): s for s, step in enumerate(self.steps)}
        # each update's (state, value, scaled product or None, value's step, product's step)
        candidates = []
        wanted = set()  # the names of the buffers whose readers those need
        for (p, v), (state, value) in zip(self.update_pairs, updates):
            found = self._scaled_product(p, v)
            s = producer.get(id(value))
            m = producer.get(id(self.buffers.get(id(found[1])))) if found else None
            candidates.append((state, value, found, s, m))
            if found is not None and s is not None and m is not None:
                wanted.update((self.steps[m].out.name, value.name, state.name))
        readers = {}  # a wanted buffer's name -> the steps that read it or a view of it
        reads = self._reads_of_steps()
        for s, read in enumerate(reads):
            for buf in read:
                if buf.name in wanted:
                    readers.setdefault(buf.name, []).append(s)
                if buf.base is not None and buf.base.name != buf.name and \
                        buf.base.name in wanted:
                    readers.setdefault(buf.base.name, []).append(s)
        output_names = {b.name for b in outputs} | {b.base.name for b in outputs if b.base}
        remaining, drop = [], set()
        for state, value, found, s, m in candidates:
            if found is None or s is None or m is None or m in drop:
                remaining.append((state, value))
                continue
            scale, product = found
            mm = self.steps[m]
            ok = (isinstance(self.steps[s], ir.Elementwise) and isinstance(mm, ir.Matmul)
                  and value.role == "temp" and mm.out.role == "temp"
                  and value.name not in output_names and state.name not in output_names
                  and mm.out.name not in output_names
                  and readers.get(mm.out.name) == [s] and value.name not in readers
                  and max(readers.get(state.name, [s])) <= s
                  # (an operand may be a view, e.g. a flattened image: its base is read)
                  and all((b.base or b).role in ("input", "temp", "const")
                          for b in (mm.a, mm.b)))
            if not ok:
                remaining.append((state, value))
                continue
            self.steps[s] = ir.Matmul(state, mm.a, mm.b, mm.trans_a, mm.trans_b,
                                      f"{mm.comment}  (accumulated into {state.name}: "
                                      f"{state.name} - {scale!r} * product)",
                                      alpha=-scale, beta=1.0)
            reads[s] = _reads(self.steps[s])
            self.step_nodes[s] = self.step_nodes[m] + self.step_nodes[s]
            drop.add(m)
        keep = [k for k in range(len(self.steps)) if k not in drop]
        self.steps = [self.steps[k] for k in keep]
        self.step_nodes = [self.step_nodes[k] for k in keep]
        self._read_lists = [reads[k] for k in keep]
        return remaining

    def _scaled_product(self, param, value):
        """(c, matmul node) when value is param - c * matmul(...) with a scalar constant c
        and the product (and c * product) used by nothing else and shaped like param."""
        if value.op != "sub" or value.inputs[0] is not param or \
                value.inputs[1].op != "mul" or id(value.inputs[1]) in self.pinned or \
                len(self.consumers[id(value.inputs[1])]) != 1:
            return None
        a, b = value.inputs[1].inputs
        scale, product = (a, b) if a.op == "const" else (b, a)
        if scale.op != "const" or scale.value.size != 1 or kind_of(product) != "matmul" or \
                id(product) in self.pinned or len(self.consumers[id(product)]) != 1 or \
                product.sym_shape != param.sym_shape or product.dtype != param.dtype or \
                not np.isfinite(scale.value).all():
            return None
        return float(scale.value.reshape(-1)[0]), product

    def update_in_place(self, outputs, updates):
        """Let the elementwise step that computes a state's new value (or the reduction it
        finishes: a bias's summed gradient) write straight into the state when nothing
        reads the old value afterwards (an SGD step then touches W once). Later steps that
        read the new value (Adam's parameter step reads the new moments) then read it from
        the state. Returns the updates still to copy at the end."""
        producer = {id(step.out): s for s, step in enumerate(self.steps)}
        last_read = {}
        for s, read in enumerate(self._reads_of_steps()):
            for buf in read:
                last_read[buf.name] = s
                if buf.base is not None:  # a view reads its base's memory
                    last_read[buf.base.name] = s
        output_names = {b.name for b in outputs} | {b.base.name for b in outputs if b.base}
        remaining = []
        for state, value in updates:
            s = producer.get(id(value))
            step = self.steps[s] if s is not None else None
            ok = (_reads_state_at_its_index(step, state) and value.role == "temp"
                  and value.name not in output_names and state.name not in output_names
                  and last_read.get(state.name, -1) <= s
                  and value.shape == state.shape and value.dtype == state.dtype)
            if ok:
                step.out = state
                step.comment += f"  (written in place into {state.name})"
                # Generated code names buffers: the value's readers (and views) now read
                # the state, and as a state it is never handed out as a free temporary.
                value.name, value.role = state.name, state.role
            else:
                remaining.append((state, value))
        return remaining

    def plan_memory(self, outputs, updates):
        """Reuse dead temporaries (same shape and dtype) and write in place where safe."""
        reads = self._reads_of_steps()
        last_use = {}
        for s, read in enumerate(reads):
            for buf in read:
                last_use[buf.name] = s
                if buf.base is not None:
                    last_use[buf.base.name] = s
        end = len(self.steps)
        for buf in outputs + [v for _, v in updates]:
            last_use[buf.name] = end
            if buf.base is not None:
                last_use[buf.base.name] = end
        no_reuse = {b.base.name for step in self.steps for b in [step.out]
                    if b.base is not None}
        # (shape, dtype) -> the dead temporaries of that shape and dtype, oldest first (a
        # long sequence leaves thousands of them: one list searched from the start for
        # each step took seconds)
        free = collections.defaultdict(collections.deque)
        for s, step in enumerate(self.steps):
            out = step.out
            if out.role == "temp" and out.name not in no_reuse and \
                    last_use.get(out.name, -1) < end:
                candidate = None
                if isinstance(step, ir.Elementwise):
                    for load in step.expr.loads.values():
                        b = load.buffer
                        if b.role == "temp" and b.name not in no_reuse and \
                                last_use.get(b.name) == s and b.shape == out.shape and \
                                b.dtype == out.dtype and _only_elementwise_reads(step, b):
                            candidate = b
                            break
                if candidate is None:
                    dead = free.get((tuple(out.shape), out.dtype))
                    if dead:
                        candidate = dead.popleft()
                if candidate is not None:
                    old = out.name
                    out.name = candidate.name
                    last_use[candidate.name] = last_use.get(old, s)
            for buf in dict.fromkeys(b for b in reads[s] if b.role == "temp"):
                if last_use.get(buf.name) == s and buf.name not in no_reuse and \
                        buf is not out and buf.name != out.name:
                    free[(tuple(buf.shape), buf.dtype)].append(buf)


    def accumulate_products(self, outputs, updates):
        """x + A @ B, when the add writes its result over x (plan_memory) and nothing else
        reads the product, becomes one BLAS call that accumulates into x (beta = 1): no
        product buffer and no pass over x. A residual network's backward pass adds each
        block's input gradient to the gradient that skips the block this way. The call takes
        the matmul's place, so nothing may read or write x between the two steps."""
        reads = self._reads_of_steps()
        readers, writers = {}, {}  # a buffer's name -> the steps that read / write it
        for s, (step, read) in enumerate(zip(self.steps, reads)):
            for b in read:
                readers.setdefault(b.name, []).append(s)
                if b.base is not None:
                    readers.setdefault(b.base.name, []).append(s)
            writers.setdefault(step.out.name, []).append(s)
            if step.out.base is not None:
                writers.setdefault(step.out.base.name, []).append(s)
        kept = {b.name for b in outputs} | {v.name for _, v in updates}
        drop = set()
        for s, step in enumerate(self.steps):
            found = _sum_of_two(step)
            if found is None:
                continue
            x, p = found
            # (plan_memory gives names again: the product is the value p's name holds from
            # its last write before s to its next write; the lists are in step order)
            wp, rp = writers.get(p.name, ()), readers.get(p.name, ())
            at = bisect.bisect_left(wp, s)
            m = wp[at - 1] if at else None
            mm = self.steps[m] if m is not None else None
            after = wp[at] if at < len(wp) else len(self.steps)
            product_readers = rp[bisect.bisect_left(rp, m or 0):bisect.bisect_left(rp, after)]
            if not (isinstance(mm, ir.Matmul) and mm.beta == 0 and mm.out.name == p.name
                    and product_readers and all(t == s for t in product_readers)
                    and p.role == "temp" and p.base is None and p.name not in kept
                    and p.shape == step.out.shape and p.dtype == step.out.dtype
                    and x.name not in (mm.a.name, mm.b.name,
                                       getattr(mm.a.base, "name", None),
                                       getattr(mm.b.base, "name", None))
                    and writers.get(x.name, [s])[0] < m
                    and not _any_between(readers.get(x.name, ()), m, s)
                    and not _any_between(writers.get(x.name, ()), m, s)):
                continue
            self.steps[m] = ir.Matmul(step.out, mm.a, mm.b, mm.trans_a, mm.trans_b,
                                      f"{mm.comment}  (accumulated into {x.name}: "
                                      f"{x.name} + product)", alpha=mm.alpha, beta=1.0)
            reads[m] = _reads(self.steps[m])
            self.step_nodes[m] = self.step_nodes[m] + self.step_nodes[s]
            bisect.insort(readers[x.name], m)  # (the name's other entries stay: conservative)
            bisect.insort(writers[x.name], m)
            drop.add(s)
        if drop:
            keep = [k for k in range(len(self.steps)) if k not in drop]
            self.steps = [self.steps[k] for k in keep]
            self.step_nodes = [self.step_nodes[k] for k in keep]
            self._read_lists = [reads[k] for k in keep]


def _any_between(steps, first, last):
    """Whether the sorted list `steps` holds a step strictly between first and last."""
    return bisect.bisect_right(steps, first) < bisect.bisect_left(steps, last)


def _sum_of_two(step):
    """(x, p) when `step` is the elementwise out = x + p (either order, both read at the
    index written, same shape and dtype) and writes its result over x; else None."""
    if type(step) is not ir.Elementwise or step.placed is not None or \
            step.inplace_of is not None or len(step.expr.loads) != 2 or \
            len(step.expr.stmts) != 1 or step.out.role != "temp" or step.out.base is not None:
        return None
    (var, code), = step.expr.stmts
    (a, la), (b, lb) = step.expr.loads.items()
    index = tuple(f"i{k}" for k in range(step.out.ndim))
    if var != step.expr.result or code not in (f"{a} + {b}", f"{b} + {a}") or \
            tuple(la.index) != index or tuple(lb.index) != index:
        return None
    for x, p in ((la.buffer, lb.buffer), (lb.buffer, la.buffer)):
        if x.name == step.out.name and p.name != x.name and x.role == "temp" and \
                x.base is None and x.shape == step.out.shape and x.dtype == step.out.dtype:
            return x, p
    return None


def _only_elementwise_reads(step, buf):
    loops = tuple(f"i{k}" for k in range(step.out.ndim))
    return all(tuple(l.index) == loops for l in step.expr.loads.values() if l.buffer is buf)


_reads = ir.step_reads


def _reads_state_at_its_index(step, state):
    """Whether `step` may write its result into `state` in place: an elementwise step
    that reads the state only at the index it writes, or a reduction that reads it only
    as it finishes each result, at that result's index (kernels/cpu.py then sums into rows
    of its own)."""
    if isinstance(step, ir.Elementwise):
        expr, index = step.expr, tuple(f"i{k}" for k in range(state.ndim))
    elif isinstance(step, ir.Reduce) and step.post is not None:
        if any(l.buffer is state for l in step.expr.loads.values()):
            return False
        expr = step.post
        index = tuple(f"i{k}" for k in range(len(step.domain)) if k not in step.axes)
    else:
        return False
    return all(tuple(l.index) == index for l in expr.loads.values() if l.buffer is state)


def _describe(node):
    """How a generated-code comment names a node: user names (and names of symbolic dims)
    are repr'd unless they are plain identifiers, so no name can end the comment line."""
    name = ""
    if node.name:
        name = (node.name if node.name.isidentifier() else repr(node.name)) + "="
    shape = S.format_shape(node.sym_shape)  # a named symbolic dim is user text too
    return f"{name}{node.op}{shape if shape.isprintable() else ascii(shape)}"


def lower(roots, inputs, states, outputs, update_pairs, plan_memory=True, fusion=True,
          update_in_place=True, order=None):
    """Lower the graph to a kernel-IR Program; returns (program, lowering). `fusion`,
    `update_in_place` and `plan_memory` switch those optimisations (passes.OPTIONAL_PASSES);
    the program computes the same numbers without them. `order` is
    topological_order(roots) when the caller has it already."""
    lowering = Lowering(roots, inputs, states, outputs, update_pairs, fusion=fusion,
                        order=order)
    out_bufs, updates = lowering.lower()
    if update_in_place:
        updates = lowering.accumulate_updates(out_bufs, updates)
        updates = lowering.update_in_place(out_bufs, updates)
    if plan_memory:
        lowering.plan_memory(out_bufs, updates)
        if fusion:
            lowering.accumulate_products(out_bufs, updates)
    in_bufs = [lowering.leaf_buffer(n) for n in lowering.inputs]
    state_bufs = [lowering.leaf_buffer(n) for n in lowering.states]
    const_bufs = [lowering.leaf_buffer(n) for n in list(lowering.consts)]
    program = ir.Program(in_bufs, state_bufs, const_bufs, lowering.steps, out_bufs, updates,
                         dict(lowering.dim_sources))
    return program, lowering
