"""Static shapes: integer dims and symbolic dims, broadcasting, and binding at call time.

A symbolic dim (`Sym`) stands for a size known only when the compiled function is called,
such as a batch size. `None` in an input's shape makes a fresh symbol; a string names a
symbol shared by every input that uses the same string. When an op combines two symbolic
dims (for example `pred - target`, both with a batch dim), the two symbols are unified:
they must then be bound to the same size at call time. A symbol is never broadcast: a
symbolic dim is assumed not to be 1 (feed it with a concrete 1 in the shape instead).
"""
import itertools

import numpy as np

from .errors import ShapeError

_fresh_ids = itertools.count(1)
_named_symbols = {}  # registry: a named symbol is one object per name


class Mismatch(Exception):
    """Raised by shape rules (see ops.py); `registry.apply` turns it into a ShapeError that
    names the node and the user's line."""


class Sym:
    """A symbolic dim. Unified symbols share one representative (union-find)."""

    __slots__ = ("label", "parent")

    def __init__(self, label):
        self.label = label
        self.parent = None  # another Sym, or an int once the symbol is fixed to a size

    def find(self):
        root = self
        while isinstance(root, Sym) and root.parent is not None:
            root = root.parent
        return root

    def __repr__(self):
        root = self.find()
        return repr(root) if isinstance(root, int) else f"?{root.label}"


def fresh_sym():
    return Sym(str(next(_fresh_ids)))


def named_sym(name):
    if name not in _named_symbols:
        _named_symbols[name] = Sym(name)
    return _named_symbols[name]


def resolve(dim):
    """An int, or the representative Sym of a symbolic dim."""
    return dim.find() if isinstance(dim, Sym) else dim


def is_static(shape):
    return all(isinstance(resolve(d), int) for d in shape)


def public_shape(shape):
    """The user-facing shape: ints, and None for each symbolic dim."""
    return tuple(d if isinstance(d, int) else None for d in map(resolve, shape))


def format_shape(shape):
    """`(?, 784)` style, with `?name` for named symbols."""
    parts = []
    for d in map(resolve, shape):
        if isinstance(d, int):
            parts.append(str(d))
        elif d.label.isdigit():
            parts.append("?")
        else:
            parts.append(f"?{d.label}")
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def make_shape(spec):
    """Turn a user's shape spec (ints, None, strings) into a tuple of ints and Syms."""
    if isinstance(spec, (int, str)) or spec is None:
        spec = (spec,)
    dims = []
    for d in spec:
        if d is None:
            dims.append(fresh_sym())
        elif isinstance(d, str):
            dims.append(named_sym(d))
        elif isinstance(d, Sym):
            dims.append(d)
        elif isinstance(d, (int,)) or hasattr(d, "__index__"):
            d = int(d)
            if d < 0:
                raise ShapeError(f"negative dimension {d} in shape {spec!r}")
            dims.append(d)
        else:
            raise ShapeError(f"a dimension must be an int, None or a name, got {d!r}")
    return tuple(dims)


def unify_dims(a, b):
    """Make two dims equal, or return False when two different ints clash."""
    a, b = resolve(a), resolve(b)
    if a is b or a == b:
        return True
    if isinstance(a, int) and isinstance(b, int):
        return False
    if isinstance(a, Sym):
        a.parent = b
    else:
        b.parent = a
    return True


class undo_unification_on_error:
    """Undo what the block unified among the symbols of `shapes` if it raises, so that a
    declaration that fails leaves the shapes of the nodes it looked at as they were.
    (Unification only ever sets the `parent` of a representative symbol.) A class, not a
    generator: every node a graph is built of enters it once."""

    __slots__ = ("roots",)

    def __init__(self, shapes):
        self.roots = [d for shape in shapes for d in map(resolve, shape) if isinstance(d, Sym)]

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is not None and issubclass(kind, Exception):
            for root in self.roots:
                root.parent = None
        return False


def dims_equal(a, b):
    a, b = resolve(a), resolve(b)
    return a is b or a == b


def broadcast_shapes(*shapes):
    """NumPy broadcasting over static and symbolic dims. Returns the result or None on clash."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):  # (the same dims: nothing to unify)
        return tuple(map(resolve, first))
    rank = max(map(len, shapes))
    columns = list(zip(*[(1,) * (rank - len(s)) + tuple(s) if len(s) < rank else s
                         for s in shapes]))
    # Look for a clash of sizes before unifying anything: a failed broadcast changes no symbol.
    for dims in columns:
        size = 1
        for d in dims:
            if d.__class__ is Sym:
                d = d.find()
            if isinstance(d, int) and d != 1:
                if size == 1:
                    size = d
                elif d != size:
                    return None
    result = []
    for dims in columns:
        out = 1
        for d in dims:
            d = resolve(d)
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(out, int) and out == 1:
                out = d
            elif not unify_dims(out, d):
                return None
            else:
                out = resolve(out)
        result.append(out)
    return tuple(result)


def normalize_axes(axis, ndim):
    """An axis argument (None: every axis, an int or a tuple; negative counts from the end)
    as a sorted tuple of non-negative axes. Raises Mismatch when one is out of range or
    repeated.

        >>> normalize_axes(-1, 3), normalize_axes(None, 2), normalize_axes((2, 0), 3)
        ((2,), (0, 1), (0, 2))
    """
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    def shown(v):
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."
    if axis is None:
        return tuple(range(ndim))
    if not is_int(axis) and not isinstance(axis, (tuple, list)):
        raise Mismatch(f"axis must be None, an int or a tuple of ints, got {shown(axis)}")
    axes = (axis,) if is_int(axis) else tuple(axis)
    out = []
    for a in axes:
        if not is_int(a):
            raise Mismatch(f"axis must be an int, got {shown(a)}")
        a = int(a)
        if not -ndim <= a < ndim:
            raise Mismatch(f"axis {a} is out of range for rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise Mismatch(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def static_size(shape):
    """Number of elements, or None when a dim is symbolic."""
    n = 1
    for d in map(resolve, shape):
        if not isinstance(d, int):
            return None
        n *= d
    return n


class Binding:
    """Sizes bound to symbols for one call, with the input that first bound each."""

    def __init__(self):
        self.sizes = {}
        self.sources = {}

    def bind(self, dim, size, source):
        """Bind `dim` to `size`; return None if fine, else a description of the conflict."""
        dim = resolve(dim)
        if isinstance(dim, int):
            return None if dim == size else f"expected {dim}"
        if dim in self.sizes:
            if self.sizes[dim] != size:
                return f"expected {self.sizes[dim]} (bound by {self.sources[dim]})"
            return None
        self.sizes[dim] = size
        self.sources[dim] = source
        return None

    def size_of(self, dim):
        dim = resolve(dim)
        return dim if isinstance(dim, int) else self.sizes.get(dim)

    def concrete(self, shape):
        return tuple(self.size_of(d) for d in shape)
