"""The op registry and `apply`, the one door through which every op is created or run.

Each op is one `OpDef` stanza (see ops.py): its shape/dtype rule, its NumPy implementation,
its gradient rule (a VJP written with graphnn's own ops), an optional decomposition into
primitive ops for the compilers, an optional scalar template for fused elementwise kernels,
and its Netron category. `apply` builds a Node when any argument is a Node (graph mode) and
otherwise computes at once on NumPy arrays (eager mode), recording on an active tape.
"""
import contextvars
import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import shapes as S
from .errors import DTypeError, GraphError, ShapeError, user_location
from .node import Node, ConstValue, make_node

OPS = {}  # registry, filled at import time by ops.py

# The eager tape in force, if any (see eager.py). A context variable, not a global.
active_tape = contextvars.ContextVar("graphnn_active_tape", default=None)


class Mismatch(Exception):
    """Raised by shape rules; `apply` turns it into a ShapeError naming the node."""


class WrongDType(Exception):
    """Raised by dtype rules; `apply` turns it into a DTypeError naming the node."""


@dataclass
class OpDef:
    name: str
    category: str                      # Netron category, see visualize
    infer: Callable                    # (specs, **attrs) -> (sym_shape, dtype)
    impl: Callable                     # (*arrays, **attrs) -> np.ndarray
    vjp: Optional[Callable] = None     # (g, out, *inputs, **attrs) -> tuple of thunks/None
    decompose: Optional[Callable] = None  # (*input_nodes, **attrs) -> Node of primitives
    scalar: Optional[str] = None       # fused-elementwise template, "{0}", "{1}", "{T}"
    kind: str = "elementwise"          # elementwise | reduce | matmul | window | shape | leaf
    doc: str = ""
    extra: dict = field(default_factory=dict)


def register(opdef):
    OPS[opdef.name] = opdef
    return opdef


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
    if isinstance(value, Node):
        return Spec(value.sym_shape, value.dtype)
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
    opdef = OPS[opname]
    attrs = attrs or {}
    fewest, most = input_count(opdef)
    if not fewest <= len(args) <= (most if most is not None else len(args)):
        wanted = f"{fewest} or more" if most is None else str(fewest)
        inputs = ", ".join(_describe(a) for a in args) or "none"
        raise ShapeError(f"{opname}: takes {wanted} inputs, got {len(args)} ({inputs}); at "
                         f"{user_location()}")
    graph_mode = any(isinstance(a, Node) for a in args)
    specs = [spec_of(a) for a in args]
    for spec, arg in zip(specs, args):
        if spec.dtype.kind not in "fiu":
            raise DTypeError(f"{opname}: argument {_describe(arg)} has dtype {spec.dtype}; "
                             f"graphnn computes on float and int arrays (at {user_location()})")
    try:
        with S.undo_unification_on_error(s.sym_shape for s in specs):
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
        return folded if folded is not None else make_node(opname, attrs, nodes, sym_shape,
                                                           dtype, name)
    arrays = [np.asarray(a, dtype=dtype) if s.weak else np.asarray(a)
              for a, s in zip(args, specs)]
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
    if any(p.kind == p.VAR_POSITIONAL for p in arrays):
        return len(arrays), None
    return len(arrays), len(arrays)


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


def check_not_node(value, what):
    if isinstance(value, Node):
        raise GraphError(f"{what} must be a Python value, not a graph node (at {user_location()})")
