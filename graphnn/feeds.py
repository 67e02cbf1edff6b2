"""Checking the arrays fed to a compiled function, before anything runs.

Dtype policy: a float input accepts any real numeric array (float64 data into a float32
input is cast, as are ints and bools); an integer input accepts integer or bool arrays and
refuses floats (labels must be whole numbers); strings, objects and complex numbers are
refused. A symbolic dim (a batch size) must be at least 1: an empty batch is refused, since
a mean or a maximum over no examples has no honest value. A feed named after a declared
input that this function does not need is ignored; a name that no input has is an error
(a parameter's name too). Non-contiguous and read-only arrays are accepted (copied when
needed). Symbolic dims are bound from the first input that has them and must agree
everywhere else.
"""
import numpy as np

from . import shapes as S
from .errors import FeedError, user_location


def label_bounds(nodes):
    """{input name: (classes, node)} for the integer inputs that are the labels of a
    softmax cross-entropy or the ids of an embedding: their values must lie in
    [0, classes) (the logits' classes, the table's rows). (Compiled code reads the logits
    at the label, so a label out of range is refused, never silently read.)"""
    bounds = {}
    for node in nodes:
        if node.op in ("softmax_cross_entropy", "embedding"):
            labels = node.inputs[1 if node.op == "softmax_cross_entropy" else 0]
            table = node.inputs[0 if node.op == "softmax_cross_entropy" else 1]
            classes = S.resolve(table.sym_shape[1 if node.op == "softmax_cross_entropy" else 0])
            if labels.op == "input" and labels.dtype.kind in "iu" and isinstance(classes, int):
                if labels.name not in bounds or classes < bounds[labels.name][0]:
                    bounds[labels.name] = (classes, node)
    return bounds


class FeedChecker:
    def __init__(self, inputs, params=(), bounds=None):
        self.inputs = list(inputs)
        self.params = {p.name: p for p in params}
        self.bounds = dict(bounds or {})
        self.by_name = {n.name: n for n in self.inputs}
        self._fast = [(n.name, n.dtype, n.ndim, tuple(S.resolve(d) for d in n.sym_shape))
                      for n in self.inputs]

    def fast_check(self, feeds):
        """The common case in one pass: exactly the right names, C-contiguous arrays of the
        right dtype and rank, consistent dims. Returns the arrays, or None to take the slow
        path (which converts, or explains what is wrong)."""
        if len(feeds) != len(self._fast):
            return None
        sizes = {}
        arrays = []
        for name, dtype, ndim, dims in self._fast:
            a = feeds.get(name)
            if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != ndim \
                    or not a.flags.c_contiguous:
                return None
            for dim, size in zip(dims, a.shape):
                if dim.__class__ is int:
                    if dim != size:
                        return None
                elif size == 0 or sizes.setdefault(dim, size) != size:
                    return None
            if name in self.bounds and a.size and \
                    (a.min() < 0 or a.max() >= self.bounds[name][0]):
                return None
            arrays.append(a)
        return arrays

    def check(self, feeds, check_finite=False):
        """Return (list of arrays in input order, Binding) or raise FeedError."""
        where = user_location()
        from .api import declared_inputs
        unknown = sorted(k for k in set(feeds) - set(self.by_name) if k not in declared_inputs)
        for name in unknown:
            if name in self.params:
                raise FeedError(f"feed '{name}': {self.params[name].label()} is a parameter, "
                                "not an input; assign its .value to change it "
                                f"(call at {where})")
        if unknown:
            expected = ", ".join(sorted(self.by_name)) or "nothing"
            raise FeedError(f"unknown feed {', '.join(map(repr, unknown))}: no input has that "
                            f"name; this function takes "
                            f"{expected} (call at {where})")
        missing = [n for n in self.inputs if n.name not in feeds]
        if missing:
            # (feeds named like another graph's inputs pass without error, but when one is
            # missing here, such a feed may be the typo: name it too)
            others = sorted(k for k in feeds if k not in self.by_name)
            also = f"; fed also {', '.join(map(repr, others))}, which this function does " \
                "not take" if others else ""
            raise FeedError("missing feed " + ", ".join(
                f"'{n.name}' {S.format_shape(n.sym_shape)} {n.dtype} (declared at {n.where})"
                for n in missing) + f"{also} (call at {where})")
        binding = S.Binding()
        arrays = []
        for node in self.inputs:
            arrays.append(self._convert(node, feeds[node.name], binding, where, check_finite))
        return arrays, binding

    def _convert(self, node, value, binding, where, check_finite):
        def fail(msg):
            raise FeedError(f"feed '{node.name}' (declared at {node.where} as "
                            f"{S.format_shape(node.sym_shape)} {node.dtype}): {msg} "
                            f"(call at {where})")
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            fail(f"cannot be turned into an array ({exc})")
        kind = array.dtype.kind
        if kind not in "biuf":
            fail(f"has dtype {array.dtype}; feeds must be real numbers")
        if node.dtype.kind in "iu" and kind == "f":
            fail(f"has float dtype {array.dtype}; this input holds integers (labels): "
                 "convert with .astype(int)")
        if array.ndim != node.ndim:
            fail(f"has shape {array.shape} of rank {array.ndim}, expected rank {node.ndim}")
        for axis, (dim, size) in enumerate(zip(node.sym_shape, array.shape)):
            if size == 0 and not isinstance(S.resolve(dim), int):
                fail(f"has shape {array.shape}: axis {axis} is empty; a batch needs at least "
                     "one example")
            problem = binding.bind(dim, size, f"'{node.name}' axis {axis}")
            if problem:
                fail(f"has shape {array.shape}: axis {axis} is {size}, {problem}")
        if node.dtype.kind in "iu" and kind in "iu" and array.size and \
                not np.can_cast(array.dtype, node.dtype):
            # checked before narrowing: 2**32 into int32 would wrap to 0, a valid label
            info = np.iinfo(node.dtype)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                fail(f"holds values from {low} to {high}, outside the range of {node.dtype} "
                     f"[{info.min}, {info.max}]")
        if array.dtype != node.dtype or not array.flags.c_contiguous:
            array = np.array(array, dtype=node.dtype, order="C", copy=None)
        if node.name in self.bounds and array.size:
            classes, loss = self.bounds[node.name]
            low, high = array.min(), array.max()
            if low < 0 or high >= classes:
                what = "ids" if loss.op == "embedding" else "labels"
                fail(f"holds {what} from {low} to {high}; {loss.label()} needs {what} in "
                     f"[0, {classes})")
        if check_finite and kind == "f" and not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array))[0]
            fail(f"holds {array[tuple(bad)]} at index {tuple(int(i) for i in bad)} "
                 "(check_finite=True)")
        return array
