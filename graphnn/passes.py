"""Graph passes: each a pure function from output nodes to new output nodes.

Nodes are immutable, so a pass rebuilds what changes and keeps the rest; rebuilt nodes go
through hash-consing, so two nodes that become equal become one (common subexpressions are
shared). Dead code never survives a pass: only what the outputs reach is kept.
"""
import collections
import operator

import numpy as np

from . import shapes as S
from .errors import OptionError, user_location
from .graph import topological_order
from .node import make_node
from .registry import OPS, const_node, kind_of

FOLD_LIMIT = 1 << 16  # constant folding keeps results up to this many elements


def rebuild(roots, rule, order=None):
    """Apply `rule(node, new_inputs) -> Node or None` bottom-up; None keeps the node (rebuilt
    with new inputs when they changed). Returns the new roots. `order` is
    topological_order(roots) when the caller has it already."""
    # node -> its replacement, for the nodes replaced: most passes change few nodes of a
    # deep graph (this loop runs for every node of every pass), and until the first change
    # every node keeps its inputs
    replaced = {}
    replacement_of = replaced.get
    for node in topological_order(roots) if order is None else order:
        inputs = node.inputs
        if not replaced:
            new_inputs = list(inputs)
            replacement = rule(node, new_inputs)
            if replacement is not None and replacement is not node:
                replaced[node] = replacement
            continue
        new_inputs = [replacement_of(i, i) for i in inputs]
        replacement = rule(node, new_inputs)
        if replacement is None:
            if all(map(operator.is_, new_inputs, inputs)):
                continue
            replacement = make_node(node.op, node._attrs, new_inputs, node.sym_shape,
                                    node.dtype, node.name, where=node.where)
        if replacement is not node:
            replaced[node] = replacement
    return [replacement_of(r, r) for r in roots]


def decompose(roots, order=None):
    """Rewrite composite ops (softmax, losses, mean, one_hot...) into primitive ops."""
    return _decompose(roots, order)[0]


def _decompose(roots, order):
    """decompose(); returns (new roots, their topological order)."""
    # node -> the node in primitive ops it becomes (each of those maps to itself). A
    # rewrite may hold composite ops (softmax_cross_entropy's holds a mean): they are
    # rewritten as soon as they are made, so one walk over the graph rebuilds it. (Keyed
    # by the nodes, not their ids: the nodes a rewrite makes and drops must live on.)
    new_of = {}

    def rewrite(nodes):
        for node in nodes:
            inputs = [new_of[i] for i in node.inputs]
            opdef = OPS.get(node.op)
            if opdef is not None and opdef.decompose is not None:
                out = opdef.decompose(*inputs, **node.attrs)
                if node.name and not out.name:
                    out.name = node.name
                rewrite(_unknown_order(out, new_of))
                new = new_of[out]
            elif all(map(operator.is_, inputs, node.inputs)):
                new = node
            else:
                new = make_node(node.op, node._attrs, inputs, node.sym_shape, node.dtype,
                                node.name, where=node.where)
            new_of[node] = new_of[new] = new
    rewrite(topological_order(roots) if order is None else order)
    roots = [new_of[r] for r in roots]
    return roots, topological_order(roots)


def _unknown_order(root, known):
    """topological_order([root]) but for the nodes in `known` (and the nodes only they
    reach)."""
    order, done = [], set()
    if root in known:
        return order
    stack = [(root, iter(root.inputs))]
    done.add(root)
    while stack:
        node, pending = stack[-1]
        for inp in pending:
            if inp not in done and inp not in known:
                done.add(inp)
                stack.append((inp, iter(inp.inputs)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def fold_constants(roots, order=None):
    """Evaluate ops whose inputs are all constants (results up to FOLD_LIMIT elements)."""
    def foldable(node, inputs):  # (what `rule` checks before it computes)
        if kind_of(node) == "leaf" or not inputs or not all(i.op == "const" for i in inputs):
            return False
        if OPS[node.op].impl is None:
            return False
        size = S.static_size(node.sym_shape)
        return size is not None and size <= FOLD_LIMIT  # (known before computing: a
        # transposed 100M-element weight is not copied)

    def rule(node, inputs):
        if not foldable(node, inputs):
            return None
        with np.errstate(all="ignore"):
            value = np.asarray(OPS[node.op].impl(*[i.value for i in inputs], **node.attrs))
        if value.size > FOLD_LIMIT or value.shape != node.shape:
            return None
        return const_node(value.astype(node.dtype))
    if order is None:
        order = topological_order(roots)
    # Most graphs have nothing left to fold (`apply` folds ops of scalar constants as it
    # makes them): until a node is folded, every node keeps its inputs, so when none is
    # foldable with those, the graph stays as it is, with no walk that rebuilds it.
    if not any(foldable(n, n.inputs) for n in order if n.inputs and n.inputs[0].op == "const"):
        return list(roots)
    return rebuild(roots, rule, order)


def _const_equals(node, number):
    return node.op == "const" and node.value.size == 1 and \
        float(node.value.reshape(-1)[0]) == number


def _all_axes(node, ndim):
    return S.normalize_axes(node.attr("axis"), ndim) == tuple(range(ndim))


def simplify(roots, order=None):
    """x*1, 1*x, x+0, 0+x, x-0, x/1, x**1 -> x; --x -> x (when shape and dtype stay);
    the count of a reduction's result is counted on its input; a sum of all of a sum read
    by nothing else is one sum (a mean of row sums, as in a loss, is one reduction); a max
    pool goes before the relu and per-channel bias it reads (see _pool_first); a
    concatenation of parts the graph concatenates anyway adds to that concatenation (see
    _concat_of_prefix)."""
    if order is None:
        order = topological_order(roots)
    # id(node) -> nodes that read its values (a count reads only its shape)
    readers = collections.Counter(id(i) for n in order if OPS[n.op].kind != "size"
                                  for i in n.inputs)

    def keeps(node, x):
        return x.sym_shape == node.sym_shape and x.dtype == node.dtype

    concats = {}  # (axis, dtype, its parts) -> the concatenation in the new graph

    def rule(node, inputs):
        op = node.op
        if op == "concat":
            return _concat_of_prefix(node, inputs, concats)
        if op == "neg" and inputs[0].op == "neg" and keeps(node, inputs[0].inputs[0]):
            return inputs[0].inputs[0]
        if op == "reciprocal_count" and kind_of(inputs[0]) == "reduce" and \
                not inputs[0].attr("keepdims"):
            x = inputs[0]
            src = x.inputs[0]
            reduced = S.normalize_axes(x.attr("axis"), src.ndim)
            kept = [k for k in range(src.ndim) if k not in reduced]
            axes = tuple(kept[a] for a in S.normalize_axes(node.attr("axis"), x.ndim))
            if src.dtype == x.dtype:
                return make_node(op, {"axis": axes[0] if len(axes) == 1 else axes}, [src],
                                 node.sym_shape, node.dtype, node.name)
        if op == "sum" and inputs[0].op == "sum" and not node.attr("keepdims") and \
                not inputs[0].attr("keepdims") and _all_axes(node, inputs[0].ndim) and \
                readers.get(id(node.inputs[0])) == 1:
            src = inputs[0].inputs[0]
            return make_node(op, {"axis": None, "keepdims": False}, [src], node.sym_shape,
                             node.dtype, node.name)
        if op in _POOLS:
            return _pool_first(node, node.inputs[0], inputs[0], readers)
        if len(inputs) != 2:
            return None
        a, b = inputs
        if op == "mul":
            if _const_equals(b, 1) and keeps(node, a):
                return a
            if _const_equals(a, 1) and keeps(node, b):
                return b
        if op == "add":
            if _const_equals(b, 0) and keeps(node, a):
                return a
            if _const_equals(a, 0) and keeps(node, b):
                return b
        if op in ("sub", "div", "pow"):
            unit = 0 if op == "sub" else 1
            if _const_equals(b, unit) and keeps(node, a):
                return a
        if op == "pow" and _const_equals(b, 2):
            return make_node("square", (), [a], node.sym_shape, node.dtype, node.name) \
                if keeps(node, a) else None
        return None
    return rebuild(roots, rule, order)


_POOLS = ("max_pool2d", "max_pool2d_padded")


def _pool_first(pool, old, x, readers):
    """max_pool(relu(y)) -> relu(max_pool(y)), max_pool(y + b) -> max_pool(y) + b for a
    per-channel b, repeatedly (max_pool(relu(conv + bias)) -> relu(max_pool(conv) + bias)):
    the same numbers (relu and adding b never change which element is largest, and a
    rounded sum keeps their order), with the relu and the bias over the pooled image, 4x
    smaller after a 2x2 or stride-2 pool. Only through nodes nothing else reads (`readers`
    counts them in the graph before the pass: `old` is the pool's input there, `x` its
    rebuilt version); None when nothing moves."""
    moved = []
    if np.dtype(pool.dtype).kind != "f":  # (an integer sum may wrap around)
        return None
    while readers.get(id(old)) == 1 and x.op == old.op and x.dtype == pool.dtype and \
            len(x.inputs) == len(old.inputs):
        if x.op == "relu":
            moved.append((x, None))
            x, old = x.inputs[0], old.inputs[0]
        elif x.op == "add" and len(x.inputs) == 2:
            y, b = x.inputs
            if _per_channel(y, b, x):
                moved.append((x, b))
                x, old = y, old.inputs[0]
            elif _per_channel(b, y, x):
                moved.append((x, y))
                x, old = b, old.inputs[1]
            else:
                break
        else:
            break
    if not moved:
        return None
    out = make_node(pool.op, pool._attrs, [x], pool.sym_shape, pool.dtype, pool.name,
                    where=pool.where)
    for node, b in reversed(moved):
        out = make_node(node.op, node._attrs, [out] if b is None else [out, b],
                        pool.sym_shape, pool.dtype, node.name, where=node.where)
    return out


def _concat_of_prefix(node, inputs, concats):
    """concat(a1, ..., ak, b) -> concat(concat(a1, ..., ak), b) when the graph has
    concat(a1, ..., ak) (along the same axis, of the same dtype): the same numbers, in one
    copy of that concatenation and one of b. A DenseNet as torchvision writes it
    concatenates all the earlier features at each layer: each count of parts was a kernel
    of its own (24 in the third dense block, each compiled), every feature was copied again
    at every later layer, and none could be written in place (kernels/cpu.py
    place_in_concat). `concats` maps (axis, dtype, parts) to the concatenation of those
    parts in the new graph (this node's entry is added). Returns the replacement or None."""
    axis = node.attr("axis") % node.ndim
    parts = tuple(inputs)
    prefix = concats.get((axis, node.dtype, parts[:-1])) if len(parts) > 2 else None
    if prefix is not None:
        new = make_node("concat", node._attrs, [prefix, parts[-1]], node.sym_shape,
                        node.dtype, node.name, where=node.where)
    elif all(map(operator.is_, inputs, node.inputs)):
        new = node
    else:
        new = make_node("concat", node._attrs, inputs, node.sym_shape, node.dtype,
                        node.name, where=node.where)
    concats[(axis, node.dtype, parts)] = new
    return new if prefix is not None else None


def _per_channel(y, b, total):
    """True when y has `total`'s shape and b is constant along all but the last axis."""
    shape, dims = b.sym_shape, total.sym_shape
    return y.sym_shape == dims and y.dtype == total.dtype and b.dtype == total.dtype and \
        0 < len(shape) <= len(dims) and shape[-1] == dims[-1] and \
        all(d == 1 for d in shape[:-1])


def common_subexpressions(roots, order=None):
    """Share nodes with equal (op, attrs, inputs) that hash-consing did not catch."""
    seen = {}

    def rule(node, inputs):
        if node.op in ("input", "param", "variable"):
            return None
        key = (node.op, node._attrs, *inputs)  # (nodes hash and compare by identity)
        found = seen.get(key)
        if found is None:
            same = all(map(operator.is_, inputs, node.inputs))
            found = seen[key] = node if same else make_node(
                node.op, node._attrs, inputs, node.sym_shape, node.dtype, node.name)
        return found
    return rebuild(roots, rule, order)


PIPELINE = (("decompose", decompose), ("fold_constants", fold_constants),
            ("simplify", simplify), ("common_subexpressions", common_subexpressions))

# The optimisations a compiled back end can be asked to leave out, each by its name in
# `gn.compile(..., passes={name: False})`. Every one of them only makes the program faster
# or smaller: a result that changes when one is switched off is a bug in that optimisation
# (tests/graphnn/test_pass_toggles.py runs the fuzzer's graphs with each one off).
# `decompose` is not among them: the compiled back ends lower only primitive ops.
OPTIONAL_PASSES = {
    "constant_folding": "evaluate ops whose inputs are all constants at compile time "
                        "(passes.fold_constants)",
    "simplification": "x*1, x+0, --x ... -> x, sums of sums (passes.simplify)",
    "cse": "share nodes with equal op, attrs and inputs (passes.common_subexpressions)",
    "fusion": "compute elementwise ops inside their consumer's loop, reductions with their "
              "prologue and finishing op, and 2-D transposes read in place by a matmul "
              "(lowering.Lowering.inlined)",
    "update_in_place": "write a parameter's new value straight into the parameter (also "
                       "from the reduction that finishes it: a bias's summed gradient), "
                       "and W - c * (A @ B) as one gemm accumulating into W "
                       "(lowering.Lowering.update_in_place, accumulate_updates)",
    "memory_planning": "reuse dead temporaries and write an elementwise step over an input "
                       "that dies there (lowering.Lowering.plan_memory); with fusion, x + "
                       "A @ B written over x as one gemm accumulating into x "
                       "(accumulate_products)",
    "output_recycling": "cpu only: write a new result into an earlier result the caller no "
                        "longer holds (backends/cpu.py, CpuFunction._recycle)",
    "packed_kernels": "cpu only: pack each constant float32 convolution kernel once and "
                      "multiply by it with graphnn's own gemm tile kernel, on CPUs with "
                      "AVX-512 (kernels/packed.py, cpu.packed_constants)",
    "concat_in_place": "cpu only: an elementwise step whose result is only a part of a "
                       "concatenation stores it straight into the concatenated buffer "
                       "(kernels/cpu.py place_in_concat)",
    "conv_epilogues": "cpu only: add a convolution's bias and apply its relu as the "
                      "convolution writes its result, and write it where the step after "
                      "it would (kernels/cpu.py fold_conv_epilogues)",
}
# the optional passes only the cpu back end has
CPU_ONLY_PASSES = ("output_recycling", "packed_kernels", "concat_in_place", "conv_epilogues")
# graph passes of PIPELINE switched by an optional pass's name
_GRAPH_PASSES = {"fold_constants": "constant_folding", "simplify": "simplification",
                 "common_subexpressions": "cse"}


def pass_options(passes, backend, valid=tuple(OPTIONAL_PASSES)):
    """Check a compile option `passes` ({name: bool}, None for all on) and return the full
    {name: bool} of the back end's optional passes (`valid`, see OPTIONAL_PASSES).

        >>> pass_options({"fusion": False}, "cpu")["fusion"]
        False
    """
    chosen = dict.fromkeys(valid, True)
    if passes is None:
        return chosen
    if not isinstance(passes, dict):
        raise OptionError(f"gn.compile: passes must be a dict {{pass name: True or False}}, "
                          f"got {type(passes).__name__}; the passes of backend {backend!r} "
                          f"are {', '.join(valid)} (at {user_location()})")
    for name, on in passes.items():
        if name not in chosen:
            raise OptionError(f"gn.compile: unknown pass {name!r} for backend {backend!r}; "
                              f"its passes are {', '.join(valid)} (at {user_location()})")
        if not isinstance(on, (bool, np.bool_)):
            raise OptionError(f"gn.compile: passes[{name!r}] must be True or False, got "
                              f"{on!r:.60} (at {user_location()})")
        chosen[name] = bool(on)
    return chosen


def optimize(roots, passes=PIPELINE, enabled=None, order=None):
    """Run the pass pipeline; return (new roots, [(pass name, node count after)]).
    `enabled` ({optional pass name: bool}, see OPTIONAL_PASSES) leaves out the graph passes
    switched off. Each pass gets `order=` the topological order of its roots, found once
    per pass (a deep graph has tens of thousands of nodes); `order` is topological_order(
    roots) when the caller has it already."""
    roots, report, _ = optimize_in_order(roots, passes, enabled, order)
    return roots, report


def optimize_in_order(roots, passes=PIPELINE, enabled=None, order=None):
    """optimize(); returns (new roots, report, topological_order(new roots))."""
    if order is None:
        order = topological_order(roots)
    report = [("input", len(order))]
    for name, fn in passes:
        if enabled is not None and not enabled.get(_GRAPH_PASSES.get(name), True):
            continue
        if fn is decompose:
            roots, order = _decompose(roots, order)
        else:
            new_roots = fn(roots, order=order)
            if any(a is not b for a, b in zip(new_roots, roots)):  # (else the same graph)
                order = topological_order(new_roots)
            roots = new_roots
        report.append((name, len(order)))
    return roots, report, order
