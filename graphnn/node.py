"""Nodes of the computation graph: immutable, hash-consed, shapes inferred on creation.

Creating a node whose (op, attrs, inputs) already exists returns the existing node, so a
subexpression such as the lecture's `3*x3` is one node however often it is written.
Inputs, parameters and variables are never shared this way: each declaration is new.
"""
import contextlib
import gc
import weakref
from _weakref import _remove_dead_weakref

import numpy as np

from . import shapes as S
from .errors import user_location

# registry: (op, attrs, inputs) -> weak reference to the Node, dropped when the node dies.
# (A dict of weak references rather than a WeakValueDictionary, whose Python-level get and
# set cost a deep graph's compile 30 ms: every node is looked up, and most are new.)
_interned = {}


def _intern(key, node):
    # (_remove_dead_weakref drops the entry only while it is still this dead reference, in
    # one step, as WeakValueDictionary does; the callback holds what it uses, so it works
    # while the interpreter shuts down too)
    _interned[key] = weakref.ref(
        node, lambda ref, key=key, table=_interned, remove=_remove_dead_weakref:
        remove(table, key))


LEAF_OPS = ("input", "param", "variable", "const")


class ConstValue:
    """A constant array, hashable by its dtype, shape and bytes (so equal constants share)."""

    __slots__ = ("array", "_key", "_owner")

    def __init__(self, array):
        # (`array`, what node.value gives, is a read-only view of an array only this holds)
        self._owner = np.array(array, order="C", copy=True)
        self.array = self._owner.view()
        self.array.setflags(write=False)
        self._key = (self.array.dtype.str, self.array.shape, self.array.tobytes())

    def argument(self):
        """The constant as compiled code takes it, without a copy: a writeable array (the
        type compiled kernels are made for) that compiled code only reads."""
        return self._owner

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ConstValue) and self._key == other._key

    def __repr__(self):
        if self.array.size == 1:
            return repr(self.array.reshape(()).item())
        return f"array{self.array.shape}"


class Node:
    """One value in the graph: the result of `op` applied to `inputs` with `attrs`.

    Attributes: `.op` (str), `.inputs` (tuple of Nodes), `.attrs` (dict), `.shape` (tuple;
    None for a symbolic dim), `.dtype` (numpy.dtype), `.name`, `.where` (the user's file:line).
    Nodes are made by `gn.input`, `gn.param`, `gn.const` and the ops, never directly; the
    operators + - * / ** @ and unary - build op nodes.

        x = gn.input("x", (None, 3))
        h = x @ gn.param("W", shape=(3, 2), seed=0)   # a gn.Node
        h.op, h.shape, h.dtype                       # ('matmul', (None, 2), float32)
    """

    __slots__ = ("op", "_attrs", "inputs", "sym_shape", "dtype", "name", "where",
                 "state", "__weakref__")
    __array_ufunc__ = None  # make NumPy defer `array + node` to Node.__radd__

    def __init__(self, op, attrs, inputs, sym_shape, dtype, name=None, where=None):
        self.op = op
        self._attrs = attrs
        self.inputs = tuple(inputs)
        self.sym_shape = tuple(sym_shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self.where = where or user_location()
        self.state = None  # a parameter's or variable's value holder

    @property
    def attrs(self):
        return dict(self._attrs)

    def attr(self, key, default=None):
        for k, v in self._attrs:
            if k == key:
                return v
        return default

    @property
    def shape(self):
        return S.public_shape(self.sym_shape)

    @property
    def ndim(self):
        return len(self.sym_shape)

    @property
    def value(self):
        """Current value of a parameter, variable or constant (np.ndarray)."""
        if self.op == "const":
            return self.attr("value").array
        if self.state is None:
            raise AttributeError(f"{self.label()} has no value: only params, variables "
                                 "and constants hold one")
        return self.state.value

    @value.setter
    def value(self, array):
        if self.state is None:
            raise AttributeError(f"{self.label()} has no value to set")
        self.state.set(self, array)

    def label(self):
        """How errors name this node: its name or op, shape and where it was made."""
        ident = f"'{self.name}'" if self.name else f"{self.op}"
        return f"{ident} {S.format_shape(self.sym_shape)} (made at {self.where})"

    def __repr__(self):
        name = f" {self.name!r}" if self.name else ""
        return f"<Node {self.op}{name} {S.format_shape(self.sym_shape)} {self.dtype}>"

    def __bool__(self):
        raise TypeError("a graph Node has no truth value; compare values after compiling")

    # Python operators build graph nodes; definitions live in ops.py.
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().sub(self, o)
    def __rsub__(self, o): return _ops().sub(o, self)
    def __mul__(self, o): return _ops().mul(self, o)
    def __rmul__(self, o): return _ops().mul(o, self)
    def __truediv__(self, o): return _ops().div(self, o)
    def __rtruediv__(self, o): return _ops().div(o, self)
    def __pow__(self, o): return _ops().pow(self, o)
    def __rpow__(self, o): return _ops().pow(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self

    @property
    def T(self):
        return _ops().transpose(self)

    def __getitem__(self, index):
        raise TypeError("indexing a Node is not supported; use reshape/concat/sum")


def _ops():
    from . import ops
    return ops


def make_node(op, attrs, inputs, sym_shape, dtype, name=None, intern=True, where=None):
    """Create a node, or return the existing one with the same (op, attrs, inputs); a named
    constant is shared only with constants of its name (two ONNX tensors that happen to be
    equal stay two named values, each drawn in its own layer). `where` is the user's
    file:line for a new node (by default found on the stack; a pass that rebuilds a node
    with new inputs gives the old node's)."""
    # (a deep graph makes tens of thousands of nodes: most have no attrs)
    if isinstance(attrs, dict):
        attrs = tuple(sorted(attrs.items())) if attrs else ()
    else:
        attrs = tuple(attrs)
    inputs = tuple(inputs)
    if not intern:
        return Node(op, attrs, inputs, sym_shape, dtype, name, where)
    key = (op, attrs, inputs) if not (op == "const" and name) else (op, attrs, (), name)
    ref = _interned.get(key)
    existing = None if ref is None else ref()
    if existing is not None:
        if name and not existing.name:
            existing.name = name
        return existing
    node = Node(op, attrs, inputs, sym_shape, dtype, name, where)
    _intern(key, node)
    return node


# Objects made in a `collector_paused` block from which they go to the oldest generation
PROMOTE_OBJECTS = 50_000


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector held off for the block (as it was, after).

    Each full collection walks every tracked object, and building the derivative graph or
    compiling a graph of tens of thousands of nodes, all of them long-lived, sets off
    dozens of full collections (0.3 s of a 1.6 s compile of 11,000 steps) that find
    nothing to free: nodes are freed by reference counting. gn.grad and gn.compile run
    inside this block (or under it as a decorator, `@collector_paused()`); the collector
    sees what they leave at its next run. When the block leaves PROMOTE_OBJECTS or more
    young objects (a deep graph: 170,000 for 1000 residual blocks), they go at once to the
    oldest generation (gc.freeze, then gc.unfreeze), which only full collections walk:
    the youngest generation's next collection, and the next older one's, would otherwise
    each walk all of them (25 ms each), to keep them all. Garbage cycles among them wait
    for the next full collection (gc.collect() frees them at once)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_count()[0] >= PROMOTE_OBJECTS and not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


@contextlib.contextmanager
def collector_spares_existing():
    """The cyclic collector kept running for the block, but blind to every object alive at
    its start (gc.freeze, undone after). For work that makes garbage cycles among a deep
    graph's nodes: a compiled function's first call, in which Numba's compiler makes
    (and drops) many, would otherwise walk the nodes again at each full collection.
    Young garbage is collected first, as it would have been soon: what is frozen goes to
    the oldest generation when thawed (a dead graph there would wait for a full
    collection, and with it the names of its inputs, which feeds are checked against).
    Does nothing special when objects are frozen already or the collector is off."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
