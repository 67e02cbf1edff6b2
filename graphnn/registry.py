"""The op registry and `apply`, the one door through which every op is created or run.

Each op is one `OpDef` stanza (see ops.py): its shape/dtype rule, its NumPy implementation,
its gradient rule (a VJP written with graphnn's own ops), its lowering kind with what that
kind needs (a scalar template, a lowering function or a decomposition into primitive ops;
see KINDS), and its Netron category. `register` checks a stanza and adds it to `OPS`.
`apply` builds a Node when any argument is a Node (graph mode) and otherwise computes at
once on NumPy arrays (eager mode), recording on an active tape.
"""
import contextlib
import contextvars
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import shapes as S
from .shapes import Mismatch  # noqa: F401 - shape rules raise it (see ops.py)
from .errors import DTypeError, GraphError, ShapeError, user_location
from .node import Node, ConstValue, make_node

OPS = {}  # registry, filled at import time by ops.py
INPUT_COUNTS = {}  # registry: op name -> (fewest, most) inputs, see input_count

# The eager tape in force, if any (see eager.py). A context variable, not a global.
active_tape = contextvars.ContextVar("graphnn_active_tape", default=None)
# The eager scope in force, if any (see eager.py): while it is, an op whose graph-node
# arguments are all parameters, variables or constants computes at once on their values
# (a layer or an optimizer's update rule applied eagerly), instead of building a node.
active_scope = contextvars.ContextVar("graphnn_active_scope", default=None)
# An eager profiler (eager.OpProfile), when one is collecting: time per op name.
profiler = None
# While gn.grad or an optimizer builds nodes (see `applied_alike`): what each op applied
# to arguments of the same kind came to, by `_alike_key`. A context variable, not a global.
active_alike = contextvars.ContextVar("graphnn_active_alike", default=None)


class WrongDType(Exception):
    """Raised by dtype rules; `apply` turns it into a DTypeError naming the node."""


# How an op lowers to the kernel IR, by kind. The stanza's `lower` function (if its kind
# needs one) has the signature given here; `lowering` is the `graphnn.lowering.Lowering` of
# the graph being compiled, whose public methods make buffers and steps.
KINDS = {
    "leaf": "input, param, variable or const: a buffer of the program, no step",
    "elementwise": "`scalar`, a template computing one element from elements of the "
                   "inputs at the same (broadcast) index ({0}, {1}, ...; `{flat}` is the "
                   "element's row-major position); fused into its consumer's loop",
    "pattern": "`lower(node, index) -> (input, input_index)`: the element of one input at "
               "another index (transpose, slice, broadcast); fused like an elementwise op",
    "size": "`lower(lowering, node) -> scalar source`: a number known from an input's "
            "shape alone (the input is not read); computed where it is used",
    "reduce": "`lower(lowering, node, comment, finish=None)`: a Reduce step, with the "
              "elementwise group it reads fused in and, as `finish`, the elementwise node "
              "that alone reads its result",
    "arg_reduce": "`lower(lowering, node, comment)`: a step marking each reduction's "
                  "winner (ArgmaxMask)",
    "matmul": "`lower(lowering, node, comment)`: a Matmul step (BLAS gemm); a 2-D "
              "transpose read only by matmuls is read in place",
    "window": "`lower(lowering, node, comment)`: a Window step (convolution, pooling)",
    "view": "`lower(lowering, node, comment)`: a Reshape step, a view of its input",
    "place": "`lower(lowering, node, comment)`: a Place step (copies into a zeroed or "
             "fully covered output: concat, pad)",
    "host": "`lower(lowering, node, comment)`: a HostCall step, a Python function of the "
            "compiled program (gn.repeat's loop over a block compiled on its own); only "
            "the back ends whose programs are Python (numpy, cpu) run it",
    "composite": "`decompose(*inputs, **attrs)`: rewritten in primitive ops by "
                 "passes.decompose before lowering",
}

# Netron's categories (DESIGN.md section 10); visualize/style.py gives each its colour.
CATEGORIES = ("Layer", "Activation", "Pool", "Normalization", "Dropout", "Shape", "Tensor",
              "Transform", "Data")


@dataclass
class OpDef:
    """One op's stanza: everything graphnn knows about the op, in one place.

    name       the op's name (`Node.op`)
    category   its Netron category, one of CATEGORIES, or None (drawn dark grey, as Netron
               draws Add, Mul, Exp, ReduceSum ...)
    infer      (specs, **attrs) -> (sym_shape, dtype); raises Mismatch or WrongDType
    impl       (*arrays, **attrs) -> np.ndarray: eager mode, the "numpy" backend, the
               reference every compiled backend is tested against
    vjp        (g, out, *inputs, **attrs) -> one zero-argument function (or None) per input
    kind       how the compiled backends lower it: a key of KINDS
    scalar     for kind "elementwise": "{0} * {1}", "{T}(0)", "{alpha}" (an attr)
    lower      for the kinds that need one, the lowering function described in KINDS
    decompose  for kind "composite": (*input_nodes, **attrs) -> a node of primitive ops
    recompute  an elementwise op of leaves cheap enough to recompute in each consumer's
               loop rather than store (the comparisons that make one-hot masks)

        cube = gn.OpDef("cube", None, lambda specs: (specs[0].sym_shape, specs[0].dtype),
                        lambda x: x ** 3, lambda g, out, x: (lambda: g * 3 * x * x,),
                        scalar="{0} * {0} * {0}")
        gn.register_op(cube)
    """
    name: str
    category: Optional[str]
    infer: Optional[Callable]
    impl: Optional[Callable]
    vjp: Optional[Callable] = None
    decompose: Optional[Callable] = None
    scalar: Optional[str] = None
    kind: str = "elementwise"
    lower: Optional[Callable] = None
    recompute: bool = False
    doc: str = ""


def check_opdef(opdef):
    """Raise GraphError when `opdef` cannot be registered: a name that is not an identifier,
    an unknown kind or category, or a kind whose lowering (scalar template, lower function,
    decomposition) is missing."""
    problem = None
    if not isinstance(opdef.name, str) or not opdef.name.isidentifier():
        # generated code names buffers and comments after ops
        problem = "an op's name must be a Python identifier"
    elif opdef.kind not in KINDS:
        problem = f"kind {opdef.kind!r} is not one of {', '.join(KINDS)}"
    elif opdef.category is not None and opdef.category not in CATEGORIES:
        problem = f"category {opdef.category!r} is not None or one of {', '.join(CATEGORIES)}"
    elif opdef.kind == "elementwise" and not isinstance(opdef.scalar, str):
        problem = "an elementwise op needs a `scalar` template such as \"{0} * {0}\""
    elif opdef.kind == "composite" and opdef.decompose is None:
        problem = "a composite op needs `decompose`"
    elif opdef.kind not in ("leaf", "elementwise", "composite") and opdef.lower is None:
        problem = f"a {opdef.kind} op needs `lower`: {KINDS[opdef.kind]}"
    elif opdef.kind != "leaf" and (opdef.infer is None or opdef.impl is None):
        problem = "an op needs `infer` (its shape rule) and `impl` (its NumPy implementation)"
    if problem:
        raise GraphError(f"op {opdef.name!r}: {problem}")


def register(opdef, replace=False):
    """Add an op's stanza to the registry (`OPS`), after checking it (see `check_opdef`).
    An op of that name already registered is replaced only with `replace=True`.
    For an elementwise op, `graphnn.define_elementwise` writes the stanza for you.

        >>> gn.register_op(gn.OpDef("cube", None, lambda specs: (specs[0].sym_shape,
        ...     specs[0].dtype), lambda x: x ** 3, scalar="{0} * {0} * {0}"))
        >>> def cube(x, name=None):  # its public function
        ...     return gn.registry.apply("cube", (x,), name=name)
    """
    check_opdef(opdef)
    if opdef.name in OPS and not replace:
        raise GraphError(f"op {opdef.name!r} is already registered (pass replace=True to "
                         "replace it)")
    OPS[opdef.name] = opdef
    INPUT_COUNTS[opdef.name] = input_count(opdef)
    return opdef


def unregister(name):
    """Remove op `name` from the registry and return its stanza (nodes already made with it
    can then no longer be compiled or differentiated).

        stanza = gn.unregister_op("cube")       # the OpDef registered as "cube"
    """
    if name not in OPS:
        raise GraphError(f"no op {name!r} is registered")
    INPUT_COUNTS.pop(name, None)
    return OPS.pop(name)


def kind_of(node):
    """The lowering kind of `node`'s op (see KINDS)."""
    return OPS[node.op].kind


class Spec:
    """The static type of an argument: shape (ints and Syms), dtype, and whether it is a
    weak Python scalar (which adopts the dtype of the other operands, as in NumPy 2)."""

    __slots__ = ("sym_shape", "dtype", "weak")

    def __init__(self, sym_shape, dtype, weak=False):
        self.sym_shape = tuple(sym_shape)
        self.dtype = np.dtype(dtype)
        self.weak = weak

    @property
    def ndim(self):
        return len(self.sym_shape)


def spec_of(value):
    if isinstance(value, Node):  # (a node's shape is a tuple and its dtype a numpy.dtype)
        spec = Spec.__new__(Spec)
        spec.sym_shape, spec.dtype, spec.weak = value.sym_shape, value.dtype, False
        return spec
    if isinstance(value, (bool, np.bool_)):
        return Spec((), np.bool_)
    # Only Python numbers are weak; NumPy scalars (np.float64 subclasses float) keep their
    # dtype, as in NumPy 2 (a VJP rule's 0-d result may come back as a NumPy scalar).
    if isinstance(value, (int, float)) and not isinstance(value, np.generic):
        return Spec((), np.float64 if isinstance(value, float) else np.int64, weak=True)
    arr = np.asarray(value)
    return Spec(arr.shape, arr.dtype)


def _describe(value):
    if isinstance(value, Node):
        return value.label()
    if isinstance(value, (int, float)):
        return repr(value)
    arr = np.asarray(value)
    return f"array{S.format_shape(arr.shape)} {arr.dtype}"


def graph_dtype(specs):
    """The dtype of an arithmetic result: the widest strong float, else int; weak scalars
    adopt it. Integer inputs mixed with float ones take the float dtype."""
    strong = [s.dtype for s in specs if not s.weak]
    floats = [d for d in strong if d.kind == "f"]
    if floats:
        return max(floats, key=lambda d: d.itemsize)
    if any(s.weak and s.dtype.kind == "f" for s in specs):
        return np.dtype(np.float32)
    ints = [d for d in strong if d.kind in "iu"]
    return max(ints, key=lambda d: d.itemsize) if ints else np.dtype(np.int64)


def as_const(value, dtype):
    """A constant node for a Python number or array used beside graph nodes."""
    if isinstance(value, (int, float, bool)):
        try:
            return const_node(np.asarray(value, dtype=dtype))
        except OverflowError:  # int32_input * 2**40: the number does not fit
            raise DTypeError(f"the number {value!r:.40} does not fit in {np.dtype(dtype)}, the "
                             f"dtype of the other operand (at {user_location()})") from None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"cannot use an array of dtype {arr.dtype} in a graph "
                         f"(at {user_location()})")
    return const_node(arr)


def const_node(array, name=None):
    array = np.asarray(array)
    return make_node("const", {"value": ConstValue(array)}, (), array.shape, array.dtype, name)


def apply(opname, args, attrs=None, name=None):
    """Create the node for `opname(*args, **attrs)`, or compute it eagerly on arrays."""
    if profiler is not None:
        return profiler.timed(_apply, opname, args, attrs, name)
    return _apply(opname, args, attrs, name)


def _apply(opname, args, attrs=None, name=None):
    opdef = OPS[opname]
    attrs = attrs or {}
    fewest, most = INPUT_COUNTS[opname]
    if not fewest <= len(args) <= (most if most is not None else len(args)):
        wanted = f"{fewest} or more" if most is None else \
            str(fewest) if fewest == most else f"{fewest} to {most}"
        inputs = ", ".join(_describe(a) for a in args) or "none"
        raise ShapeError(f"{opname}: takes {wanted} inputs, got {len(args)} ({inputs}); at "
                         f"{user_location()}")
    graph_mode = False
    for a in args:
        if isinstance(a, Node):
            graph_mode = True
            break
    alike = key = None
    if graph_mode:
        scope = active_scope.get()
        if scope is not None:  # eager: parameters, variables and constants are read
            args = scope.resolve(opname, args)
            graph_mode = False
        else:
            alike = active_alike.get()
            if alike is not None and name is None:
                key = _alike_key(opname, args, attrs)
                found = alike.get(key) if key is not None else None
                if found is not None and found.holds():
                    return found.node(opname, args, attrs)
    specs = [spec_of(a) for a in args]
    for spec in specs:
        if spec.dtype.kind not in "fiu":
            arg = args[specs.index(spec)]
            raise DTypeError(f"{opname}: argument {_describe(arg)} has dtype {spec.dtype}; "
                             f"graphnn computes on float and int arrays (at {user_location()})")
    try:
        with S.undo_unification_on_error(s.sym_shape for s in specs) as unification:
            sym_shape, dtype = opdef.infer(specs, **attrs)
    except Mismatch as exc:
        inputs = ", ".join(_describe(a) for a in args)
        raise ShapeError(f"{opname}: {exc}; inputs: {inputs}; at {user_location()}") from None
    except WrongDType as exc:
        inputs = ", ".join(_describe(a) for a in args)
        raise DTypeError(f"{opname}: {exc}; inputs: {inputs}; at {user_location()}") from None
    if graph_mode:
        nodes = [a if isinstance(a, Node) else as_const(a, dtype if s.weak else None)
                 for a, s in zip(args, specs)]
        if opdef.kind in ("matmul", "window"):
            # Their kernels (BLAS gemm, conv loops) take operands of one dtype: as NumPy
            # promotes, the narrower operand is cast to the result's dtype first.
            nodes = [n if n.dtype == dtype else apply("cast", (n,), {"dtype": dtype.name})
                     for n in nodes]
        folded = _fold_scalar_constants(opdef, nodes, attrs, sym_shape, dtype, name)
        if folded is None:
            folded = _identity(opname, nodes, sym_shape, dtype, name)
        if key is not None:
            _Alike.remember(alike, key, args, nodes, unification.roots, sym_shape, dtype,
                            folded)
        return folded if folded is not None else make_node(opname, attrs, nodes, sym_shape,
                                                           dtype, name)
    arrays = [np.asarray(a, dtype=dtype) if s.weak else np.asarray(a)
              for a, s in zip(args, specs)]
    if profiler is not None:
        out = np.asarray(profiler.impl(opdef.impl, arrays, attrs))
    else:
        out = np.asarray(opdef.impl(*arrays, **attrs))
    if out.dtype != dtype:
        out = out.astype(dtype)
    tape = active_tape.get()
    if tape is None:
        return out
    # While a tape records, results are eager Tensors (ndarray views) whose identity the
    # tape tracks; the arguments are recorded as the caller passed them.
    out = tape.wrap(out.copy() if any(out is a for a in arrays) else out)
    tape.record(opdef, [a if isinstance(a, np.ndarray) else t for a, t in zip(args, arrays)],
                attrs, out)
    return out


@contextlib.contextmanager
def applied_alike():
    """For the block, ops applied to arguments of the same kind skip what they found once.

    A derivative graph repeats a few patterns thousands of times (every residual block's
    gradient is the same ops on inputs of the same shapes), and most of `apply`'s work is
    the same for each: checking and promoting the arguments, the shape rule, turning
    Python numbers into constants, folding and identities. Inside this block, an op whose
    name, attrs and arguments (each node by its shape and dtype, a constant node and a
    Python number by itself) are those of an earlier call makes its node straight from
    what that call found (`_Alike`); the node is the one `apply` would make, interned
    alike. gn.grad and the optimizers' updates run inside it. (Blocks nest: the outer one
    keeps its memo.)"""
    if active_alike.get() is not None:
        yield
        return
    token = active_alike.set({})
    try:
        yield
    finally:
        active_alike.reset(token)


def _alike_key(opname, args, attrs):
    """What `apply`'s result depends on besides the identity of the (non-constant) node
    arguments, or None when an argument or attr is of a kind not looked up (an array, an
    unhashable value). Numbers go in with their type and repr (0.0 and -0.0, 1 and True
    are different constants)."""
    parts = []
    for a in args:
        if isinstance(a, Node):
            parts.append(a if a.op == "const" else (a.sym_shape, a.dtype))
        elif isinstance(a, (int, float)) and not isinstance(a, np.generic):
            parts.append((type(a), repr(a)))
        else:
            return None
    items = []
    for k, v in attrs.items():
        if isinstance(v, (float, np.floating)):
            v = (type(v), repr(v))
        items.append((k, v))
    key = (opname, tuple(items), tuple(parts))
    try:
        hash(key)
    except TypeError:
        return None
    return key


class _Alike:
    """What `apply` found for one `_alike_key`: the result's shape and dtype, the constant
    nodes that stand for its Python-number arguments, and whether the result was one of
    its arguments (an identity such as x * 1) or a folded constant. Valid while the
    symbols of the arguments' shapes are not unified with others (`holds`)."""

    __slots__ = ("roots", "sym_shape", "dtype", "consts", "result")

    @staticmethod
    def remember(memo, key, args, nodes, roots, sym_shape, dtype, folded):
        """Keep what `apply` found for `key`, unless the shape rule unified symbols, made
        a new one, or casts were added (those are made again each time)."""
        if any(root.parent is not None for root in roots):
            return  # (the rule unified symbols: the next call may not)
        known = {d for d in roots} | {d for a in nodes for d in a.sym_shape
                                      if isinstance(d, S.Sym)}
        if any(isinstance(d, S.Sym) and d not in known for d in sym_shape):
            return  # (a new symbol: each call makes its own)
        consts = [None if isinstance(a, Node) else n for a, n in zip(args, nodes)]
        if any(a is not n for a, n in zip(args, nodes) if isinstance(a, Node)):
            return  # (a cast was added)
        entry = _Alike()
        entry.roots, entry.sym_shape, entry.dtype, entry.consts = roots, sym_shape, dtype, \
            consts
        entry.result = None
        if folded is not None:
            # an identity: the argument at its place; a folded constant: that constant
            # (its arguments are all constants, each in the key by itself)
            entry.result = next((k for k, n in enumerate(nodes) if n is folded), folded)
        memo[key] = entry

    def holds(self):
        return all(root.parent is None for root in self.roots)

    def node(self, opname, args, attrs):
        """`apply(opname, args, attrs)` for arguments of this entry's key."""
        result = self.result
        if result is not None:
            if not isinstance(result, int):
                return result
            const = self.consts[result]
            return args[result] if const is None else const
        nodes = [a if c is None else c for a, c in zip(args, self.consts)]
        return make_node(opname, attrs, nodes, self.sym_shape, self.dtype)


def input_count(opdef):
    """(fewest, most) inputs `opdef` takes (most is None for concat): its implementation's
    array parameters, the ones that are not attrs of its shape rule. A node built with
    another count (a hand-written file, registry.apply) would have a kernel read inputs
    that are not there."""
    if opdef.impl is None:  # leaves
        return 0, 0
    if isinstance(opdef.impl, np.ufunc):
        return opdef.impl.nin, opdef.impl.nin
    attrs = set(inspect.signature(opdef.infer).parameters)
    arrays = [p for p in inspect.signature(opdef.impl).parameters.values()
              if p.name not in attrs and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                    p.VAR_POSITIONAL)]
    # (a parameter with a default, np.ravel's `order` say, may be left out; *xs takes one
    # or more)
    required = [p for p in arrays if p.default is p.empty]
    if any(p.kind == p.VAR_POSITIONAL for p in arrays):
        return len(required), None
    return len(required), len(arrays)


def _fold_scalar_constants(opdef, nodes, attrs, sym_shape, dtype, name):
    """An op on scalar constants is computed at once (so the derivative graph of `x**2`
    shows `2 * x**1`, not `x**(2 - 1)`); larger constant expressions are left to the
    compiler's constant-folding pass."""
    if opdef.kind == "leaf" or opdef.impl is None or not nodes or sym_shape != () or \
            not all(n.op == "const" and n.value.size == 1 for n in nodes):
        return None
    try:
        with np.errstate(all="ignore"):
            value = np.asarray(opdef.impl(*[n.value for n in nodes], **attrs), dtype=dtype)
    except Exception:  # an impl that refuses constants: keep the node
        return None
    return const_node(value.reshape(()), name) if value.size == 1 else None


_IDENTITIES = {"mul": (1.0, (0, 1)), "add": (0.0, (0, 1)), "sub": (0.0, (1,)),
               "div": (1.0, (1,)), "pow": (1.0, (1,))}


def _identity(opname, nodes, sym_shape, dtype, name):
    """x*1, 1*x, x+0, 0+x, x-0, x/1 and x**1 are x itself (when that changes neither shape
    nor dtype, and the result is not being named): the chain rule's factors of 1 then never
    appear in derivative graphs."""
    if opname not in _IDENTITIES or name is not None or len(nodes) != 2:
        return None
    unit, positions = _IDENTITIES[opname]
    for k in positions:
        c, x = nodes[k], nodes[1 - k]
        if c.op == "const" and c.value.size == 1 and float(c.value.reshape(-1)[0]) == unit \
                and x.sym_shape == tuple(sym_shape) and x.dtype == dtype:
            return x
    return None
