"""ONNX import: an ONNX model becomes graphnn nodes (`gn.onnx.load`).

    outputs, inputs = gn.onnx.load("model.onnx")    # graphnn nodes, ready to render/compile
    f = gn.compile(outputs, backend="cpu")
    (y,) = f(**{inputs[0].name: x_nchw})

Layout. graphnn images are NHWC with HWIO kernels; ONNX images are NCHW with OIHW kernels.
`load` keeps ONNX's semantics: users feed NCHW as the file says. Inside, the importer
converts a tensor to channels-last once, where a Conv or pool first needs it, keeps it
channels-last through elementwise ops, batch normalization and further convs/pools, and
converts it back only where an NCHW-specific op (Reshape, Flatten, an output ...) needs
it. Conv weights become HWIO parameters. Transposes that cancel are removed as they are
built.

docs/ONNX.md has the op mapping table and the list of what is not supported.
"""
import builtins
from typing import List, NamedTuple

import numpy as np

from .. import ops
from .. import shapes as S
from ..api import input as gn_input, param
from ..errors import GraphError, user_location
from ..graph import Graph
from ..node import Node
from ..registry import OPS, const_node
from .common import require_onnx, same_pads

# =======================================================================================
# Import
# =======================================================================================

class ImportedModel(NamedTuple):
    """What `gn.onnx.load` returns; unpacks as `outputs, inputs = gn.onnx.load(path)`.

    outputs: list of graphnn Nodes, one per ONNX graph output, in the file's order and
             named as in the file.
    inputs:  list of `gn.input` nodes, one per ONNX graph input that is not an
             initializer, in the file's order, named as in the file, in the file's layout
             (NCHW images). Feed them by name: `f(**{inputs[0].name: array})`.
    """
    outputs: List[Node]
    inputs: List[Node]


class _Unsupported(Exception):
    """A node the importer cannot express in graphnn; collected, then reported at once."""


_ONNX_DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64"}


def load(path_or_model, fold_batch_norm=True, frozen=False):
    """Import an ONNX model (a path or an `onnx.ModelProto`) as graphnn nodes.

    Returns an `ImportedModel(outputs, inputs)`. Float initializers become `gn.param`s
    named as in the file (Conv weights converted to HWIO); other constants become
    `gn.const`s. Raises gn.GraphError listing every unsupported op of the file at once,
    and gn.GraphError naming the node for a malformed model (bad attributes, a cycle,
    a tensor larger than MAX_ELEMENTS) or a file that is missing or not an ONNX model.

    fold_batch_norm: a BatchNormalization (and a per-channel constant Mul and Add after
    it) that is the only consumer of a Conv with constant weights is folded into the
    Conv's weights and bias (inference). The folded kernel keeps the Conv weight's name,
    the folded bias takes the name of the BatchNormalization's bias. Pass False to keep
    the four batch-norm vectors as separate parameters (e.g. to fine-tune them).

    frozen: float initializers become `gn.const`s instead of params (inference only: no
    weights to train, save or set). The cpu back end then prepares constant convolution
    kernels once when it compiles (Winograd's transform, packing for its own gemm kernel,
    docs/ARCHITECTURE.md), where a parameter's kernel is used as it is at every call:
    ResNet-50 with trained (all distinct) weights runs about 1.4x faster frozen.
    """
    onnx = require_onnx()
    model = path_or_model
    where = "the model"
    if not isinstance(model, onnx.ModelProto):
        where = str(path_or_model)
        model = _read_model(onnx, where)
    return _Importer(model, where, fold_batch_norm, frozen).run()


# The largest tensor (in elements) the importer builds or lets a graph allocate: 2**28
# elements (1 GiB of float32). Larger pads, Tile repeats, ConstantOfShape ... are refused
# with a GraphError before anything is allocated.
MAX_ELEMENTS = 1 << 28


def _read_model(onnx, path):
    import os
    if not os.path.isfile(path):
        raise GraphError(f"cannot import {path}: "
                         + ("a directory, not a file" if os.path.isdir(path) else "no such file")
                         + f"; at {user_location()}")
    try:
        return onnx.load(path)
    except Exception as exc:  # protobuf's DecodeError, truncated or foreign files
        raise GraphError(f"cannot import {path}: not an ONNX model "
                         f"({type(exc).__name__}: {exc}); at {user_location()}") from None


class _Importer:
    def __init__(self, model, where, fold_batch_norm=True, frozen=False):
        self.fold_batch_norm = fold_batch_norm
        self.frozen = bool(frozen)
        self.model = model
        self.graph = model.graph
        self.where = where
        self.opset = builtins.max([o.version for o in model.opset_import
                                   if o.domain in ("", "ai.onnx")] or [1])
        self.static = {}      # name -> np.ndarray known when importing
        self.initializers = set()
        self.values = {}      # name -> Node in ONNX layout
        self.channels_last = {}  # name -> Node in NHWC layout (rank-4 tensors only)
        self.made = {}        # (initializer name, form) -> param/const node
        self.problems = []
        self.missing = set()  # outputs of nodes that could not be imported
        self.aliases = {}     # output name -> input name of a node folded into a Conv
        self.done = set()     # first outputs of nodes imported with an earlier one

    # ---- values -------------------------------------------------------------------------

    def run(self):
        try:
            return self._run()
        except GraphError:
            raise
        except _Unsupported as exc:
            raise self.error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a malformed model, never a raw error
            raise self.error(f"malformed model ({type(exc).__name__}: {exc})") from None

    def error(self, text):
        return GraphError(f"cannot import {self.where} (opset {self.opset}): {text}; "
                          f"at {user_location()}")

    def _run(self):
        from onnx import numpy_helper
        for init in self.graph.initializer:
            try:
                self.static[init.name] = numpy_helper.to_array(init)
            except Exception as exc:
                raise _Unsupported(f"initializer '{init.name}' cannot be read "
                                   f"({type(exc).__name__}: {exc})") from None
            self.initializers.add(init.name)
        self.conv_weights = {n.input[1] for n in self.graph.node
                             if n.op_type == "Conv" and len(n.input) > 1}
        self.consumers = {}
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {vi.name for vi in self.graph.output}
        inputs = [self.declare_input(vi) for vi in self.graph.input
                  if vi.name not in self.initializers]
        self.check_order()
        self.check_op_types()
        for node in self.graph.node:
            if node.op_type not in IMPORTERS or any(
                    name in self.missing for name in node.input if name):
                self.missing.update(node.output)
                continue
            try:
                self.import_node(node)
            except _Unsupported as exc:
                self.problems.append(f"{_describe(node)}: {exc}")
                self.missing.update(node.output)
            except GraphError as exc:
                self.problems.append(f"{_describe(node)}: {str(exc).split('; at ')[0]}")
                self.missing.update(node.output)
            except Exception as exc:  # noqa: BLE001 - a malformed node, never a raw error
                self.problems.append(f"{_describe(node)}: malformed or unsupported "
                                     f"({type(exc).__name__}: {exc})")
                self.missing.update(node.output)
        if self.problems:
            raise self.error("; ".join(dict.fromkeys(self.problems)))
        outputs = []
        for vi in self.graph.output:
            node = self.node(vi.name)
            if node.op not in ("input", "param", "const"):
                node.name = vi.name
            outputs.append(node)
        return ImportedModel(outputs, inputs)

    def check_order(self):
        """Every node input must be a graph input, an initializer or an output of an
        earlier node (ONNX stores nodes in topological order): a cycle or a value used
        before it is made is reported naming the node."""
        if not self.graph.output:
            raise _Unsupported("the graph has no outputs")
        known = set(self.static) | set(self.values)
        for node in self.graph.node:
            again = [n for n in node.output if n and n in known]
            if again:
                raise _Unsupported(f"{_describe(node)}: value '{again[0]}' is produced "
                                   "twice (by an earlier node, an input or an initializer)")
            late = [n for n in node.input if n and n not in known]
            if late:
                made_later = {o for m in self.graph.node for o in m.output}
                what = ("made by a later node (a cycle, or nodes out of topological "
                        "order)" if late[0] in made_later else "never produced")
                raise _Unsupported(f"{_describe(node)}: input '{late[0]}' is {what}")
            known.update(o for o in node.output if o)

    def check_op_types(self):
        unknown = {}
        for node in self.graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            if domain or node.op_type not in IMPORTERS:
                key = f"{domain}::{node.op_type}" if domain else node.op_type
                unknown[key] = unknown.get(key, 0) + 1
        if unknown:
            listed = ", ".join(f"{k} ({n} node{'s' if n > 1 else ''})"
                               for k, n in sorted(unknown.items()))
            self.problems.append(f"unsupported ops: {listed}")
            for node in self.graph.node:
                if node.op_type not in IMPORTERS:
                    self.missing.update(node.output)

    def declare_input(self, vi):
        ttype = vi.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            self.problems.append(f"input '{vi.name}': element type {ttype.elem_type} is not "
                                 "supported (float32, float64, int32, int64 are)")
            dtype = "float32"
        shape = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)
            else:
                shape.append(None)
        node = gn_input(vi.name, tuple(shape), dtype=dtype)
        self.values[vi.name] = node
        return node

    def node(self, name):
        """The graph node for ONNX value `name`, in ONNX layout."""
        if name in self.values:
            return self.values[name]
        if name in self.channels_last:
            node = transpose(self.channels_last[name], (0, 3, 1, 2))
        elif name in self.static:
            node = self.leaf(name, "raw")
        else:
            raise _Unsupported(f"value '{name}' is used but never produced")
        self.values[name] = node
        return node

    def nhwc(self, name):
        """The graph node for rank-4 ONNX value `name`, channels-last."""
        if name not in self.channels_last:
            self.channels_last[name] = transpose(self.node(name), (0, 2, 3, 1))
        return self.channels_last[name]

    def has_nhwc(self, name):
        return name in self.channels_last

    def leaf(self, name, form):
        """A param (float initializer) or const for static value `name`; form "raw"/"hwio"."""
        key = (name, form)
        if key not in self.made:
            array = self.static[name]
            if form == "hwio":
                array = np.transpose(array, (2, 3, 1, 0))
            param_name = name
            if form == "raw" and name in self.conv_weights:
                param_name = f"{name}:oihw"
            array = np.asarray(array, order="C")  # (ascontiguousarray makes 0-d 1-d)
            if array.dtype == bool:  # graphnn's bool tensors are 0/1 float masks
                array = array.astype(np.float32)
            if name in self.initializers and array.dtype.kind == "f" and not self.frozen:
                self.made[key] = param(param_name, array)
            else:
                self.made[key] = const_node(array, name=name)
        return self.made[key]

    def set(self, name, node, channels_last=False):
        if not name:
            return
        if isinstance(node, np.ndarray):
            self.static[name] = node
            return
        _check_size(node.sym_shape, f"value '{name}'")
        if node.name is None and node.op not in ("input", "param", "const", "variable"):
            node.name = name
        (self.channels_last if channels_last else self.values)[name] = node

    def is_static(self, name):
        return name in self.static and name not in self.values

    def static_value(self, node, index, what):
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            return None
        if name not in self.static:
            raise _Unsupported(f"{what} must be a constant known when importing")
        return self.static[name]

    def shape(self, name):
        if name in self.static and name not in self.values and name not in self.channels_last:
            return tuple(self.static[name].shape)
        if name in self.values:
            return self.values[name].sym_shape
        s = self.channels_last[name].sym_shape
        return (s[0], s[3], s[1], s[2])

    # ---- nodes --------------------------------------------------------------------------

    def import_node(self, node):
        if node.output and node.output[0] in self.done:  # (a channel shuffle's nodes)
            return
        if node.output and node.output[0] in self.aliases:  # folded into a Conv
            import_identity(imp=self, node=_NodeView(
                node, [self.aliases[node.output[0]]]), attrs={})
            return
        inputs = [n for n in node.input]
        if (node.op_type in FOLDABLE and inputs
                and all(not n or (n in self.static and not (
                    n in self.initializers and self.static[n].dtype.kind == "f"
                    and node.op_type not in SHAPE_OPS and not self.frozen))
                        for n in inputs)):
            _check_fold_size(node, self.static)
            for name, value in zip(node.output, _fold(node, self.static, self.opset)):
                _check_size(value.shape, "a constant")
                self.static[name] = value
            return
        IMPORTERS[node.op_type](self, node, _attrs(node))

    def only_consumer(self, name):
        """The one node that reads value `name`, or None (several, none, a graph output)."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def static_or_unsqueezed(self, name):
        """The value of `name` if it is known now, or made by an Unsqueeze/Reshape of a
        known value (a per-channel vector shaped to broadcast); else None."""
        if name in self.static:
            return self.static[name]
        maker = self.producer.get(name)
        if maker is None or maker.op_type not in ("Unsqueeze", "Reshape") \
                or maker.input[0] not in self.static:
            return None
        value = self.static[maker.input[0]]
        if maker.op_type == "Reshape":
            shape = (_attrs(maker).get("shape") if self.opset < 5 else
                     self.static.get(maker.input[1]) if len(maker.input) > 1 else None)
            if shape is None or any(int(d) <= 0 for d in shape):
                return None
            return value.reshape([int(d) for d in shape]) \
                if np.prod(shape) == value.size else None
        axes = _attrs(maker).get("axes") if self.opset < 13 else (
            self.static.get(maker.input[1]) if len(maker.input) > 1 else None)
        if axes is None:
            return None
        rank = value.ndim + len(axes)
        try:
            return np.expand_dims(value, tuple(int(a) % rank for a in np.ravel(axes)))
        except (ValueError, np.exceptions.AxisError):
            return None


def _axis(axis, rank, what):
    """An axis attribute in [-rank, rank-1], as a non-negative axis."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise _Unsupported(f"{what} {axis} out of range for rank {rank}")
    return axis % rank


def _describe(node):
    """How an error names an ONNX node: its op type, its name (or first output)."""
    label = node.name or (node.output[0] if node.output else "")
    return f"{node.op_type} node '{label}'" if label else node.op_type


def _check_size(shape, what):
    """Refuse a tensor of more than MAX_ELEMENTS elements before anything allocates it."""
    count = 1
    for d in shape:
        d = S.resolve(d)
        if isinstance(d, (int, np.integer)):
            if d < 0:
                raise _Unsupported(f"{what} with a negative dim {tuple(shape)}")
            count *= int(d)
    if count > MAX_ELEMENTS:
        raise _Unsupported(f"{what} of shape {tuple(shape)} would have {count} elements, "
                           f"more than the importer's limit of {MAX_ELEMENTS} "
                           "(graphnn.onnx.importer.MAX_ELEMENTS)")


def _check_fold_size(node, static):
    """Refuse constant folding that would allocate more than MAX_ELEMENTS."""
    if node.op_type == "ConstantOfShape" and node.input and node.input[0] in static:
        _check_size([int(d) for d in np.ravel(static[node.input[0]])], "ConstantOfShape")
    elif node.op_type == "Range" and len(node.input) == 3:
        start, limit, delta = (float(np.ravel(static[n])[0]) for n in node.input)
        if delta == 0:
            raise _Unsupported("Range with delta 0")
        _check_size([builtins.max(int(np.ceil((limit - start) / delta)), 0)], "Range")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold(node, static, opset):
    """Evaluate a node whose inputs are all known, with ONNX's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    inputs = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
    outputs = [f"out{i}" for i in range(len(node.output))]
    folded = helper.make_node(node.op_type, inputs, outputs)
    folded.attribute.extend(node.attribute)
    feeds = {f"in{i}": static[n] for i, n in enumerate(node.input) if n}
    graph = helper.make_graph(
        [folded], "fold",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, 0, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as exc:  # the reference evaluator's own errors
        raise _Unsupported(f"could not evaluate a constant: {exc}") from None


# ---- helpers that build graphnn nodes --------------------------------------------------

def transpose(x, perm):
    """gn.transpose, cancelling with a transpose below it (identity perms vanish)."""
    perm = tuple(int(p) for p in perm)
    if x.op == "transpose":
        inner = x.attr("axes")
        perm = tuple(inner[p] for p in perm)
        x = x.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    return ops.transpose(x, perm)


def _static_dim(d, what):
    d = S.resolve(d)
    if not isinstance(d, int):
        raise _Unsupported(f"{what} needs a static size, got a symbolic dim")
    return d


def strided(x, axis, start, step, count):
    """Elements start, start+step, ..., start+step*(count-1) along `axis`, from slices and
    reshapes (graphnn's slice_axis has no step)."""
    if step == 1:
        return ops.slice_axis(x, axis, start, start + count)
    length = _static_dim(x.sym_shape[axis], "a strided slice")
    stop = builtins.min(length, start + step * count)
    x = ops.slice_axis(x, axis, start, stop) if (start, stop) != (0, length) else x
    if stop - start < step * count:
        x = ops.pad_axis(x, axis, 0, step * count - (stop - start))
    shape = tuple(x.sym_shape)
    x = ops.reshape(x, shape[:axis] + (count, step) + shape[axis + 1:])
    x = ops.slice_axis(x, axis + 1, 0, 1)
    return ops.reshape(x, shape[:axis] + (count,) + shape[axis + 1:])


def dilate(w, axis, rate):
    """Insert rate-1 zeros between kernel taps along `axis` (a dilated kernel)."""
    _static_dim(w.sym_shape[axis], "a dilated kernel")
    return ops.dilate(w, axis, rate)


def pad_spatial(x, pads, value=0.0):
    """Pad NHWC `x` by pads (top, left, bottom, right); a non-zero `value` fills the pad.
    When `x` is the channels-last transpose of an NCHW value (a model's input image), the
    NCHW value is padded and then transposed: its rows are contiguous there, where the
    channels-last copy moves a few channels at a time."""
    top, left, bottom, right = pads
    n, h, w, c = x.sym_shape
    if x.op == "transpose" and tuple(x.attr("axes")) == (0, 2, 3, 1) and any(pads):
        y = x.inputs[0]
        if top or bottom:
            y = ops.pad_axis(y, 2, top, bottom)
        if left or right:
            y = ops.pad_axis(y, 3, left, right)
        x = transpose(y, (0, 2, 3, 1))
    else:
        if top or bottom:
            x = ops.pad_axis(x, 1, top, bottom)
        if left or right:
            x = ops.pad_axis(x, 2, left, right)
    if value and any(pads):
        hp, wp = h + top + bottom, w + left + right
        mask = np.full((1, hp, wp, 1), value, dtype=x.dtype)
        mask[:, top:top + h, left:left + w, :] = 0
        x = x + const_node(mask)
    return x


def _spatial_attrs(node, attrs, kernel, in_hw):
    """(strides, pads (t, l, b, r), dilations) of a Conv or pool with a 2-D kernel."""
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    if len(strides) != 2 or len(dilations) != 2 or len(kernel) != 2:
        raise _Unsupported("attributes do not describe a 2-D window")
    for what, values in (("strides", strides), ("dilations", dilations),
                         ("kernel_shape", kernel)):
        if builtins.min(values) < 1:
            raise _Unsupported(f"{what}={list(values)} (each must be at least 1)")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = -(-in_hw[i] // strides[i])
            total = builtins.max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                                 - in_hw[i], 0)
            before = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + 2] = before, total - before
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4:
        raise _Unsupported("attributes do not describe a 2-D window")
    if builtins.min(pads) < 0:
        raise _Unsupported("negative pads")
    _check_size([in_hw[0] + pads[0] + pads[2], in_hw[1] + pads[1] + pads[3]], "a padded image")
    return strides, tuple(pads), dilations


class _Spatial:
    """A 1-D or 2-D Conv/pool operand converted to NHWC (1-D: height 1)."""

    def __init__(self, imp, name):
        shape = imp.shape(name)
        self.rank = len(shape)
        if self.rank == 4:
            self.x = imp.nhwc(name)
        elif self.rank == 3:
            x = transpose(imp.node(name), (0, 2, 1))
            n, length, c = x.sym_shape
            self.x = ops.reshape(x, (n, 1, length, c))
        else:
            raise _Unsupported(f"{self.rank - 2}-D windows (graphnn has 1-D and 2-D)")
        self.h = _static_dim(self.x.sym_shape[1], "a window op")
        self.w = _static_dim(self.x.sym_shape[2], "a window op")

    def store(self, imp, name, y):
        if self.rank == 4:
            imp.set(name, y, channels_last=True)
        else:
            n, _, length, c = y.sym_shape
            imp.set(name, transpose(ops.reshape(y, (n, length, c)), (0, 2, 1)))


def _pair(values, rank, default):
    values = tuple(values) if values is not None else (default,) * (rank - 2)
    return (1,) + values if rank == 3 else values


def _windowed_attrs(attrs, rank):
    """ONNX window attributes of a 1-D op, rewritten for a height-1 2-D op."""
    if rank != 3:
        return attrs
    out = dict(attrs)
    for key in ("strides", "dilations"):
        if key in attrs:
            out[key] = (1,) + tuple(attrs[key])
    if "pads" in attrs:
        b, e = attrs["pads"]
        out["pads"] = (0, b, 0, e)
    return out


def import_conv(imp, node, attrs):
    if len(node.input) < 2 or not node.input[1]:
        raise _Unsupported("a Conv without a weight")
    if len(imp.shape(node.input[1])) not in (3, 4):
        raise _Unsupported(f"{len(imp.shape(node.input[1])) - 2}-D convolution "
                           "(graphnn has 1-D and 2-D)")
    src = _Spatial(imp, node.input[0])
    attrs = _windowed_attrs(attrs, src.rank)
    wname = node.input[1]
    bname = node.input[2] if len(node.input) > 2 and node.input[2] else None
    groups = int(attrs.get("group", 1))
    if groups < 1:
        raise _Unsupported(f"group={groups} (must be at least 1)")
    folded = _fold_batch_norm(imp, node, wname, bname) if imp.fold_batch_norm else None
    if folded is not None:
        wname, bname = folded
    if imp.is_static(wname):
        array = imp.static[wname]
        if array.ndim == 3:
            imp.static[wname] = array = array[:, :, None, :]
        w = imp.leaf(wname, "hwio")
    else:
        w = imp.node(wname)
        if w.ndim == 3:
            w = ops.reshape(w, w.sym_shape[:2] + (1,) + w.sym_shape[2:])
        w = transpose(w, (2, 3, 1, 0))
    kh, kw = (_static_dim(d, "a Conv kernel") for d in w.sym_shape[:2])
    if "kernel_shape" in attrs and _pair(attrs["kernel_shape"], src.rank, 1) != (kh, kw):
        raise _Unsupported(f"kernel_shape {tuple(attrs['kernel_shape'])} differs from the "
                           "weight's")
    strides, pads, dilations = _spatial_attrs(node, attrs, (kh, kw), (src.h, src.w))
    x = src.x
    cin = _static_dim(x.sym_shape[3], "Conv input channels")
    cout = _static_dim(w.sym_shape[3], "Conv output channels")
    wcin = _static_dim(w.sym_shape[2], "Conv kernel channels")
    if cin % groups or cout % groups or wcin * groups != cin or cout == 0:
        raise _Unsupported(f"a weight of {cout} output and {wcin} input channels per group "
                           f"does not fit {cin} input channels in {groups} group(s)")
    span_h, span_w = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    if span_h > src.h + pads[0] + pads[2] or span_w > src.w + pads[1] + pads[3]:
        raise _Unsupported(f"a {kh}x{kw} kernel (dilations {dilations}) larger than the "
                           f"padded {src.h}x{src.w} input")
    if groups > 1 and wcin == 1:
        y = _depthwise_conv(x, w, strides, pads, dilations, groups)
    else:
        y = _conv(x, w, strides, pads, dilations, groups, (src.h, src.w))
    if bname:
        y = y + imp.node(bname)
    src.store(imp, node.output[0], y)


def _conv(x, w, strides, pads, dilations, groups, hw):
    """A Conv as graphnn conv2d(s): dilated kernel, explicit pads, strides, groups."""
    w = dilate(dilate(w, 0, dilations[0]), 1, dilations[1])
    kh, kw = (_static_dim(d, "a Conv kernel") for d in w.sym_shape[:2])
    padding = "valid"
    if strides[0] == strides[1] and pads == same_pads(hw[0], hw[1], kh, kw, strides[0]):
        padding = "same"
    elif any(pads):
        x = pad_spatial(x, pads)
    stride = strides[0] if strides[0] == strides[1] else 1
    # groups: a grouped 1x1 kernel is one op (grouped_conv2d), others a conv2d per group
    y = ops.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    if stride == 1 and strides != (1, 1):
        oh = (_static_dim(x.sym_shape[1], "Conv") - kh) // strides[0] + 1
        ow = (_static_dim(x.sym_shape[2], "Conv") - kw) // strides[1] + 1
        y = strided(strided(y, 1, 0, strides[0], oh), 2, 0, strides[1], ow)
    return y


def _depthwise_conv(x, w, strides, pads, dilations, groups):
    """A depthwise Conv (one input channel per group) on NHWC `x`: graphnn's
    depthwise_conv2d, one step whatever the channel count (as one conv2d per channel,
    ShuffleNet's 544-group convolutions were over 10,000 nodes), with ONNX's explicit pads.
    A dilated kernel is dilated with zeros; unequal strides run at stride 1 and keep every
    sh-th row and sw-th column; a channel multiplier (cout = m * cin) repeats each input
    channel m times first."""
    n, h, wd, c = x.sym_shape
    h, wd = _static_dim(h, "a Conv"), _static_dim(wd, "a Conv")
    cout = _static_dim(w.sym_shape[3], "a Conv kernel")
    mult = cout // groups
    if mult > 1:
        x = ops.reshape(x, (n, h, wd, c, 1)) * const_node(np.ones((1, 1, 1, 1, mult),
                                                                  x.dtype))
        x = ops.reshape(x, (n, h, wd, cout))
    w = dilate(dilate(w, 0, dilations[0]), 1, dilations[1])
    kh, kw = (_static_dim(d, "a Conv kernel") for d in w.sym_shape[:2])
    stride = strides[0] if strides[0] == strides[1] else 1
    y = ops.depthwise_conv2d(x, w, stride=stride, padding=tuple(int(p) for p in pads))
    if stride == 1 and strides != (1, 1):
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kw) // strides[1] + 1
        y = strided(strided(y, 1, 0, strides[0], oh), 2, 0, strides[1], ow)
    return y


def _fold_batch_norm(imp, conv, wname, bname):
    """Fold a BatchNormalization that alone reads this Conv's output (and a per-channel
    constant Mul, then Add, that alone read the result, as Caffe2 exports scale layers)
    into the Conv's weight and bias: w' = w * s, b' = (b - mean) * s + beta, with
    s = gamma / sqrt(var + eps). Returns the names of the folded (weight, bias), or None
    when there is nothing to fold. The folded nodes become aliases of the Conv output."""
    if not imp.is_static(wname) or (bname and not imp.is_static(bname)):
        return None
    w = imp.static[wname]  # scaled in its own dtype: one rounding per weight
    if w.ndim not in (3, 4) or w.dtype.kind != "f":
        return None
    cout = w.shape[0]
    b = imp.static[bname].astype(np.float64) if bname else np.zeros(cout)
    if b.shape != (cout,):
        return None
    out, chain, bias_name = conv.output[0], [], None
    while True:
        user = imp.only_consumer(out)
        if user is None or user.input[0] != out or len(user.output) < 1:
            break
        if user.op_type == "BatchNormalization" and not chain and not any(user.output[1:]):
            params = [imp.static.get(n) if imp.is_static(n) else None for n in user.input[1:5]]
            if len(params) != 4 or any(p is None or p.shape != (cout,) for p in params):
                break
            attrs = _attrs(user)
            if attrs.get("spatial", 1) != 1 or attrs.get("training_mode", 0):
                break
            gamma, beta, mean, var = (p.astype(np.float64) for p in params)
            scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
            w = w * scale.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1))
            b = (b - mean) * scale + beta
            bias_name = user.input[2]
        elif user.op_type in ("Mul", "Add") and len(user.input) == 2 \
                and not _attrs(user).get("broadcast"):
            v = imp.static_or_unsqueezed(user.input[1])
            if v is None or v.ndim > 4 or v.dtype.kind != "f":
                break
            v = v.reshape((1,) * (4 - v.ndim) + v.shape).astype(np.float64)
            if v.shape[0] != 1 or v.shape[2:] != (1, 1) or v.shape[1] not in (1, cout):
                break
            v = np.broadcast_to(v.reshape(-1), (cout,))
            if user.op_type == "Mul":
                w, b = w * v.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1)), b * v
            else:
                if not chain:
                    break  # a bare bias add: nothing gained
                b = b + v
        else:
            break
        chain.append(user)
        out = user.output[0]
    if not chain:
        return None
    dtype = imp.static[wname].dtype
    new_w = wname if len(imp.consumers.get(wname, [])) == 1 else f"{wname}:{out}"
    new_b = bias_name if bias_name and len(imp.consumers.get(bias_name, [])) == 1 \
        else f"{out}:bias"
    imp.made.pop((new_w, "hwio"), None)
    imp.made.pop((new_b, "raw"), None)
    imp.static[new_w], imp.static[new_b] = w.astype(dtype), b.astype(dtype)
    if wname in imp.initializers:
        imp.initializers.update((new_w, new_b))
    for user in chain:
        imp.aliases[user.output[0]] = conv.output[0]
    return new_w, new_b


def _pool(imp, node, attrs, kind):
    if len(node.output) > 1 and node.output[1]:
        raise _Unsupported("the Indices output")
    src = _Spatial(imp, node.input[0])
    attrs = _windowed_attrs(attrs, src.rank)
    if "kernel_shape" not in attrs:
        raise _Unsupported("no kernel_shape")
    kernel = _pair(attrs.get("kernel_shape"), src.rank, 1)
    strides, pads, dilations = _spatial_attrs(node, attrs, kernel, (src.h, src.w))
    if kind == "avg" and dilations != (1, 1):
        raise _Unsupported("AveragePool with dilations")
    size = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    if any(pads[i] >= size[i % 2] for i in range(4)):
        raise _Unsupported(f"pads {list(pads)} not smaller than the {size[0]}x{size[1]} "
                           "window (a window could lie wholly in the padding)")
    hw = (src.h, src.w)
    out, pads = list(pads[:2]), list(pads)
    for i in range(2):
        span = hw[i] + pads[i] + pads[i + 2] - size[i]
        if span < 0:
            raise _Unsupported(f"a {kernel[0]}x{kernel[1]} window (dilations {dilations}) "
                               f"larger than the padded {hw[0]}x{hw[1]} input")
        if attrs.get("ceil_mode", 0):
            out[i] = -(-span // strides[i]) + 1
            if (out[i] - 1) * strides[i] >= hw[i] + pads[i]:
                out[i] -= 1  # a window may not start in the end padding
            pads[i + 2] += builtins.max((out[i] - 1) * strides[i] + size[i] - hw[i]
                                        - pads[i] - pads[i + 2], 0)
        else:
            out[i] = span // strides[i] + 1
    x = src.x
    include_pad = kind == "avg" and attrs.get("count_include_pad", 0)
    fill = float(np.finfo(x.dtype).min) if kind == "max" else 0.0
    native = (kernel[0] == kernel[1] and strides[0] == strides[1] and dilations == (1, 1))
    channels = S.resolve(x.sym_shape[3])
    if native and kind == "avg" and any(pads) and isinstance(channels, int):
        # a padded average: a depthwise convolution by 1/(k*k) reads the zero padding
        # where it lies (no padded copy), then the count correction below
        w = np.full((kernel[0], kernel[1], 1, channels), 1.0 / (kernel[0] * kernel[1]),
                    x.dtype)
        y = ops.depthwise_conv2d(x, const_node(w), stride=strides[0], padding=tuple(pads))
    elif native and kind == "max":  # (the pads are smaller than the window: see above)
        y = ops.max_pool2d(x, kernel[0], strides[0], padding=tuple(int(p) for p in pads))
    elif native:
        y = ops.avg_pool2d(pad_spatial(x, pads, fill), kernel[0], strides[0])
    else:  # separable: along the width, then along the height
        y = pad_spatial(x, pads, fill)
        for axis in (2, 1):
            i = axis - 1
            y = window_reduce(y, axis, kernel[i], dilations[i], strides[i], out[i], kind)
        if kind == "avg":
            y = y * (1.0 / (kernel[0] * kernel[1]))
    if kind == "avg" and any(pads):
        counts = _window_counts(hw, pads, kernel, strides, out, include_pad,
                                attrs.get("pads", (0,) * 4))
        scale = kernel[0] * kernel[1] / counts
        if not np.all(scale == 1):
            y = y * const_node(scale.reshape(1, out[0], out[1], 1).astype(x.dtype))
    src.store(imp, node.output[0], y)


def window_reduce(x, axis, k, dilation, stride, count, kind):
    """The max (kind "max") or sum of the k taps `dilation` apart of `count` windows
    `stride` apart along `axis`: y[p] = reduce(x[p*stride + i*dilation] for i < k).

    Built by doubling: m_2w[q] = combine(m_w[q], m_w[q + w*dilation]) covers 2w taps, so a
    window of k taps takes about log2(k) slices and maxima/sums (a max is the max of two
    overlapping halves; a sum adds the power-of-two blocks of k's binary digits), then
    one strided slice keeps every stride-th position. A 60x80 window is ~30 nodes, not
    4800 taps of strided slices."""
    length = _static_dim(x.sym_shape[axis], "a window op")
    if k == 1:
        return x if (stride, count) == (1, length) else strided(x, axis, 0, stride, count)
    n = length - (k - 1) * dilation  # positions where a whole window fits

    def shift(m, offset, size):
        return ops.slice_axis(m, axis, offset, offset + size)

    combine = ops.maximum if kind == "max" else ops.add
    blocks, m, width = {1: x}, x, 1  # blocks[w][q] combines taps q, q+d, ..., q+(w-1)d
    while 2 * width <= k:
        size = _static_dim(m.sym_shape[axis], "a window op") - width * dilation
        m = combine(shift(m, 0, size), shift(m, width * dilation, size))
        width *= 2
        blocks[width] = m
    if kind == "max":
        y = combine(shift(m, 0, n), shift(m, (k - width) * dilation, n)) if width < k \
            else shift(m, 0, n)
    else:
        y, offset = None, 0
        for w in sorted(blocks, reverse=True):
            if k - offset >= w:
                part = shift(blocks[w], offset * dilation, n)
                y = part if y is None else y + part
                offset += w
    return strided(y, axis, 0, stride, count)


def _window_counts(hw, pads, kernel, strides, out, include_pad, explicit_pads):
    """How many elements each average-pool window divides by (ONNX's count_include_pad)."""
    hp, wp = hw[0] + pads[0] + pads[2], hw[1] + pads[1] + pads[3]
    valid = np.zeros((hp, wp))
    if include_pad:  # the explicit pads count, the extra ceil_mode pad does not
        ep = list(explicit_pads) + [0] * (4 - len(explicit_pads))
        valid[:hw[0] + pads[0] + ep[2], :hw[1] + pads[1] + ep[3]] = 1
    else:
        valid[pads[0]:pads[0] + hw[0], pads[1]:pads[1] + hw[1]] = 1
    counts = np.zeros(out)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            counts += valid[i:i + strides[0] * (out[0] - 1) + 1:strides[0],
                            j:j + strides[1] * (out[1] - 1) + 1:strides[1]]
    return np.maximum(counts, 1)


def import_global_pool(imp, node, attrs, reducer):
    name = node.input[0]
    rank = len(imp.shape(name))
    if rank == 4 and imp.has_nhwc(name):
        y = reducer(imp.nhwc(name), axis=(1, 2), keepdims=True)
        imp.set(node.output[0], y, channels_last=True)
    else:
        imp.set(node.output[0], reducer(imp.node(name), axis=tuple(range(2, rank)),
                                        keepdims=True))


def _channel_vector(imp, name, rank, channels_last):
    """A per-channel (C,) operand shaped to broadcast against a rank-`rank` tensor."""
    v = imp.node(name)
    if channels_last:
        return v
    return ops.reshape(v, (v.sym_shape[0],) + (1,) * (rank - 2))


def import_batch_norm(imp, node, attrs):
    if any(node.output[1:]):
        raise _Unsupported("training mode (running statistics outputs)")
    name = node.input[0]
    rank = len(imp.shape(name))
    last = rank == 4 and imp.has_nhwc(name)
    x = imp.nhwc(name) if last else imp.node(name)
    scale, bias, mean, var = (_channel_vector(imp, n, rank, last) for n in node.input[1:5])
    eps = float(attrs.get("epsilon", 1e-5))
    y = (x - mean) * (scale / ops.sqrt(var + eps)) + bias
    imp.set(node.output[0], y, channels_last=last)


def import_instance_norm(imp, node, attrs):
    x = imp.node(node.input[0])
    axes = tuple(range(2, x.ndim))
    scale, bias = (_channel_vector(imp, n, x.ndim, False) for n in node.input[1:3])
    centred = x - ops.mean(x, axis=axes, keepdims=True)
    var = ops.mean(ops.square(centred), axis=axes, keepdims=True)
    eps = float(attrs.get("epsilon", 1e-5))
    imp.set(node.output[0], centred / ops.sqrt(var + eps) * scale + bias)


def _per_channel(shape):
    """The channel count when a value of this shape broadcasts against an NCHW image as
    one number per channel, (C, 1, 1) or (1, C, 1, 1) (1 for a scalar-like value), else
    None."""
    shape = tuple(shape)
    full = (1,) * (4 - len(shape)) + shape
    if len(shape) > 4 or not isinstance(full[1], int) or \
            any(d != 1 for k, d in enumerate(full) if k != 1):
        return None
    return full[1]


def _elementwise(fn):
    """An elementwise op: computed channels-last when every image operand is available
    so and the others are scalars or per-channel vectors (keeps conv -> relu -> pool
    chains, and DenseNet's batch norms after a concat, free of transposes)."""
    def importer(imp, node, attrs):
        names = [n for n in node.input if n]
        shapes = [imp.shape(n) for n in names]
        images = [n for n, s in zip(names, shapes)
                  if len(s) == 4 and (_per_channel(s) in (None, 1) or imp.has_nhwc(n))]
        others = all(_per_channel(s) is not None
                     for n, s in zip(names, shapes) if n not in images)
        last = bool(images) and all(imp.has_nhwc(n) for n in images) and others
        args = []
        for n, s in zip(names, shapes):
            if n in images and last:
                args.append(imp.nhwc(n))
            elif last and len(s):
                channels = _per_channel(s)  # (C,): broadcasts along NHWC's last axis
                args.append(ops.reshape(imp.node(n), (channels,) if channels > 1 else ()))
            else:
                args.append(imp.node(n))
        imp.set(node.output[0], fn(*args, **_clean(attrs)), channels_last=last)
    return importer


def _clean(attrs):
    return {k: v for k, v in attrs.items() if k not in ("consumed_inputs", "broadcast",
                                                         "axis", "is_test")}


def _variadic(fn):
    def combine(*xs):
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return y
    return combine


def _needs_float_pair(fn):
    def apply(a, b):
        if a.dtype.kind != "f" and b.dtype.kind == "f":
            a = ops.cast(a, b.dtype)
        if b.dtype.kind != "f" and a.dtype.kind == "f":
            b = ops.cast(b, a.dtype)
        return fn(a, b)
    return apply


def _legacy_broadcast(imp, node, attrs):
    """Opset < 7 binary ops may broadcast B from `axis` on (attribute broadcast=1)."""
    if imp.opset >= 7 or not attrs.get("broadcast") or "axis" not in attrs:
        return None
    a, b = imp.shape(node.input[0]), imp.shape(node.input[1])
    axis = attrs["axis"] % len(a)
    trailing = len(a) - axis - len(b)
    if trailing:
        return ops.reshape(imp.node(node.input[1]), tuple(b) + (1,) * trailing)
    return None


def _binary(fn):
    base = _elementwise(fn)

    def importer(imp, node, attrs):
        b = _legacy_broadcast(imp, node, attrs)
        if b is None:
            return base(imp, node, attrs)
        imp.set(node.output[0], fn(imp.node(node.input[0]), b))
    return importer


def import_clip(imp, node, attrs):
    if imp.opset < 11:
        low, high = attrs.get("min"), attrs.get("max")
    else:
        low, high = (imp.static_value(node, i, "Clip's bound") for i in (1, 2))
        low = None if low is None else float(low)
        high = None if high is None else float(high)

    def clip(x):
        if low is not None and high is not None:
            return ops.clip(x, low, high)
        if low is not None:
            return ops.maximum(x, low)
        return ops.minimum(x, high) if high is not None else x
    _elementwise(clip)(imp, _first_input_only(node), {})


class _NodeView:
    def __init__(self, node, inputs, outputs=None):
        self.input, self.op_type, self.name = inputs, node.op_type, node.name
        self.output = node.output if outputs is None else outputs


def _first_input_only(node):
    return _NodeView(node, [node.input[0]])


def _softmax(fn, composite):
    def importer(imp, node, attrs):
        x = imp.node(node.input[0])
        if imp.opset >= 13:
            imp.set(node.output[0], fn(x, axis=int(attrs.get("axis", -1))))
            return
        axis = _axis(attrs.get("axis", 1), builtins.max(x.ndim, 1), "axis")
        if axis == x.ndim - 1:
            imp.set(node.output[0], fn(x, axis=axis))
        else:  # opsets < 13 flatten to 2-D at `axis`: normalise over all trailing axes
            imp.set(node.output[0], composite(x, tuple(range(axis, x.ndim))))
    return importer


def import_matmul(imp, node, attrs):
    a, b = imp.node(node.input[0]), imp.node(node.input[1])
    imp.set(node.output[0], _matmul(a, b))


def _matmul(a, b):
    # ONNX MatMul is np.matmul, and so is gn.matmul (vectors, batched stacks, broadcasting)
    return ops.matmul(a, b)


def import_gemm(imp, node, attrs):
    a, b = imp.node(node.input[0]), imp.node(node.input[1])
    if attrs.get("transA", 0):
        a = transpose(a, (1, 0))
    if attrs.get("transB", 0):
        b = transpose(b, (1, 0))
    y = ops.matmul(a, b)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if len(node.input) > 2 and node.input[2]:
        c = imp.node(node.input[2])
        y = y + (c * beta if beta != 1.0 else c)
    imp.set(node.output[0], y)


def import_transpose(imp, node, attrs):
    x = imp.node(node.input[0])
    perm = attrs.get("perm", tuple(reversed(range(x.ndim))))
    imp.set(node.output[0], transpose(x, perm))


def _target_shape(x, target, allowzero=False):
    dims = []
    target = [int(v) for v in np.ravel(target)]
    if sum(d == -1 for d in target) > 1 or any(d < -1 for d in target):
        raise _Unsupported(f"reshape to {tuple(target)}: at most one -1 and no other "
                           "negative dims")
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= x.ndim:
                raise _Unsupported(f"reshape to {tuple(target)}: a 0 at position {i} copies "
                                   f"a dim the rank-{x.ndim} input does not have")
            d = x.sym_shape[i]
        dims.append(d)
    _check_size([d for d in dims if not isinstance(d, int) or d >= 0], "a reshape")
    return tuple(dims)


def _reshape_target(imp, node, attrs):
    if imp.opset < 5:
        return attrs["shape"]
    return imp.static_value(node, 1, "Reshape's shape")


def _channel_shuffle(imp, node, target):
    """A channel shuffle (ShuffleNet): Reshape (n, c, h, w) -> (n, g, c/g, h, w), then
    Transpose (0, 2, 1, 3, 4), then Reshape back to (n, c, h, w), of a value the importer
    holds channels-last: graphnn's channel_shuffle, one copy in order, where the NCHW form
    costs a transpose to NCHW, the shuffle and a transpose back. Returns True when it imported the three
    nodes (the Transpose and the second Reshape are then skipped), else False."""
    name = node.input[0]
    if not imp.has_nhwc(name) or name in imp.values:
        return False
    x = imp.channels_last[name]
    n, h, w, c = (S.resolve(d) for d in x.sym_shape)
    if not all(isinstance(d, int) for d in (h, w, c)):
        return False
    transpose_node = imp.only_consumer(node.output[0])
    if transpose_node is None or transpose_node.op_type != "Transpose" \
            or tuple(_attrs(transpose_node).get("perm", ())) != (0, 2, 1, 3, 4):
        return False
    back = imp.only_consumer(transpose_node.output[0])
    if back is None or back.op_type != "Reshape" or back.input[0] != transpose_node.output[0]:
        return False
    try:
        second = _reshape_target(imp, back, _attrs(back))
    except _Unsupported:
        return False

    def dims(target, rest):  # the target's dims after the batch dim (0: copied, -1: c)
        target = [int(d) for d in np.ravel(target)]
        if not target or target[0] not in (0, -1) and target[0] != n or \
                target[0] == -1 and not isinstance(n, int):
            return None
        out = [rest[k] if d == 0 and k < len(rest) else d for k, d in enumerate(target[1:])]
        return tuple(out)
    first = dims(target, (c, h, w))
    if first is None or len(first) != 4 or first[2:] != (h, w) or first[0] < 1 \
            or first[0] * first[1] != c:
        return False
    groups = first[0]
    if dims(second, (c // groups, groups, h, w)) not in ((c, h, w), (-1, h, w)):
        return False
    imp.set(back.output[0], ops.channel_shuffle(x, groups), channels_last=True)
    imp.done.update((transpose_node.output[0], back.output[0]))
    return True


def import_reshape(imp, node, attrs):
    target = _reshape_target(imp, node, attrs)
    if _channel_shuffle(imp, node, target):
        return
    x = imp.node(node.input[0])
    imp.set(node.output[0], _reshape(x, _target_shape(x, target, attrs.get("allowzero", 0))))


def _reshape(x, shape):
    try:
        return ops.reshape(x, shape)
    except GraphError as exc:
        raise _Unsupported(f"reshape to {tuple(shape)}: {str(exc).split(';')[0]}") from None


def _product(dims):
    """The product of dims: an int, or the one symbolic dim when it is alone."""
    dims = [S.resolve(d) for d in dims]
    if len(dims) == 1:
        return dims[0]
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims, dtype=np.int64))
    raise _Unsupported("flattening a symbolic dim together with others")


def import_flatten(imp, node, attrs):
    x = imp.node(node.input[0])
    axis = _axis(attrs.get("axis", 1), x.ndim + 1, "axis") if x.ndim else 0
    shape = (_product(x.sym_shape[:axis]) if axis else 1,
             _product(x.sym_shape[axis:]) if axis < x.ndim else 1)
    imp.set(node.output[0], _reshape(x, shape))


def import_concat(imp, node, attrs):
    """Concat; of rank-4 values that are all channels-last (Inception's and DenseNet's
    channel concats of conv outputs), computed channels-last, so no transpose is made to
    NCHW and back."""
    names = [n for n in node.input if n]
    axis = int(attrs.get("axis", 0))
    if len(names) > 1 and all(len(imp.shape(n)) == 4 and imp.has_nhwc(n) for n in names):
        last = {0: 0, 1: 3, 2: 1, 3: 2}[axis % 4]  # the NCHW axis in NHWC
        imp.set(node.output[0], ops.concat([imp.nhwc(n) for n in names], axis=last),
                channels_last=True)
        return
    xs = [imp.node(n) for n in names]
    imp.set(node.output[0], ops.concat(xs, axis=axis) if len(xs) > 1 else xs[0])


def _axes(imp, node, attrs, index, attr_until):
    """Reduction/squeeze axes: an attribute before opset `attr_until`, an input after."""
    if imp.opset < attr_until:
        axes = attrs.get("axes")
    else:
        axes = imp.static_value(node, index, "the axes")
    return None if axes is None else tuple(int(a) for a in np.ravel(axes))


def _reduce(fn, attr_until):
    def importer(imp, node, attrs):
        x = imp.node(node.input[0])
        axes = _axes(imp, node, attrs, 1, attr_until)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                imp.set(node.output[0], x)
                return
            axes = None
        imp.set(node.output[0], fn(x, axis=axes, keepdims=keep))
    return importer


def import_squeeze(imp, node, attrs):
    x = imp.node(node.input[0])
    axes = _axes(imp, node, attrs, 1, 13)
    shape = x.sym_shape
    if axes is None:
        axes = [i for i, d in enumerate(shape) if S.resolve(d) == 1]
    axes = {_axis(a, x.ndim, "Squeeze axis") for a in axes}
    imp.set(node.output[0], _reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes)))


def import_unsqueeze(imp, node, attrs):
    x = imp.node(node.input[0])
    axes = _axes(imp, node, attrs, 1, 13)
    rank = x.ndim + len(axes)
    axes = {_axis(a, rank, "Unsqueeze axis") for a in axes}
    if len(axes) != rank - x.ndim:
        raise _Unsupported("repeated Unsqueeze axes")
    dims = iter(x.sym_shape)
    imp.set(node.output[0], _reshape(x, tuple(1 if i in axes else next(dims)
                                              for i in range(rank))))


def import_split(imp, node, attrs):
    x = imp.node(node.input[0])
    axis = _axis(attrs.get("axis", 0), x.ndim, "axis")
    length = _static_dim(x.sym_shape[axis], "Split")
    if imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = [int(s) for s in imp.static_value(node, 1, "Split's sizes")]
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        parts = len(node.output)
        chunk = -(-length // parts)
        sizes = [builtins.min(chunk, length - i * chunk) for i in range(parts)]
    start = 0
    for name, size in zip(node.output, sizes):
        imp.set(name, ops.slice_axis(x, axis, start, start + size)
                if (start, size) != (0, length) else x)
        start += size


def import_slice(imp, node, attrs):
    x = imp.node(node.input[0])
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = (imp.static_value(node, i, "Slice's bounds") for i in (1, 2))
        axes, steps = (imp.static_value(node, i, "Slice's axes/steps") for i in (3, 4))
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    y = x
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis, step = int(axis) % x.ndim, int(step)
        if step < 1:
            raise _Unsupported("negative Slice steps")
        length = _static_dim(x.sym_shape[axis], "Slice")
        start, end, _ = slice(int(start), int(end)).indices(length)
        count = -(-(end - start) // step)
        if count <= 0:
            raise _Unsupported("an empty slice")
        if (start, count, step) != (0, length, 1):
            y = strided(y, axis, start, step, count)
    imp.set(node.output[0], y)


def import_pad(imp, node, attrs):
    x = imp.node(node.input[0])
    if imp.opset < 11:
        pads, value = list(attrs.get("pads", attrs.get("paddings"))), attrs.get("value", 0.0)
        axes = None
    else:
        pads = [int(p) for p in imp.static_value(node, 1, "Pad's pads")]
        value = imp.static_value(node, 2, "Pad's value")
        value = 0.0 if value is None else float(np.ravel(value)[0]) if np.size(value) else 0.0
        axes = imp.static_value(node, 3, "Pad's axes")
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    half = len(pads) // 2
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        raise _Unsupported(f"{len(pads)} pads for {len(axes)} axes")
    out = list(x.sym_shape)
    for i, axis in enumerate(axes):
        d = S.resolve(out[axis])
        if isinstance(d, int):
            out[axis] = d + int(pads[i]) + int(pads[i + half])
            if out[axis] < 1:
                raise _Unsupported(f"pads {list(pads)} leave axis {axis} empty")
        elif pads[i] or pads[i + half]:
            out[axis] = None
    _check_size([d if d is not None else 1 for d in out], "Pad's output")
    y = x
    for i, axis in enumerate(axes):
        before, after = int(pads[i]), int(pads[i + half])
        if before < 0 or after < 0:
            length = _static_dim(y.sym_shape[axis], "Pad")
            y = ops.slice_axis(y, axis, builtins.max(-before, 0),
                               length - builtins.max(-after, 0))
            before, after = builtins.max(before, 0), builtins.max(after, 0)
        if before or after:
            y = _pad_one_axis(y, axis, before, after, mode)
    if value and mode == "constant":
        y = y + _pad_mask(y, axes, pads, value)
    imp.set(node.output[0], y)


def _pad_mask(y, axes, pads, value):
    half = len(pads) // 2
    shape, index = [], []
    for a in range(y.ndim):
        if a in axes and (pads[axes.index(a)] or pads[axes.index(a) + half]):
            size = _static_dim(y.sym_shape[a], "Pad with a value")
            b = builtins.max(int(pads[axes.index(a)]), 0)
            shape.append(size)
            index.append(slice(b, size - builtins.max(int(pads[axes.index(a) + half]), 0)))
        else:
            shape.append(1)
            index.append(slice(None))
    mask = np.full(shape, value, dtype=y.dtype)
    mask[tuple(index)] = 0
    return const_node(mask)


def _pad_one_axis(x, axis, before, after, mode):
    if mode == "constant":
        return ops.pad_axis(x, axis, before, after)
    length = _static_dim(x.sym_shape[axis], "Pad")

    def piece(i):
        return ops.slice_axis(x, axis, i, i + 1)
    if mode == "edge":  # the first/last element broadcast over the pad
        def block(i, count):
            zeros = np.zeros(tuple(count if a == axis else 1 for a in range(x.ndim)),
                             x.dtype)
            return [ops.add(piece(i), const_node(zeros))] if count > 1 else [piece(i)]
        head = block(0, before) if before else []
        tail = block(length - 1, after) if after else []
    elif mode == "reflect":
        if before >= length or after >= length:
            raise _Unsupported("reflect padding wider than the axis")
        head = [piece(i) for i in range(before, 0, -1)]
        tail = [piece(length - 2 - i) for i in range(after)]
    else:
        raise _Unsupported(f"Pad mode {mode!r}")
    return ops.concat(head + [x] + tail, axis=axis)


def import_tile(imp, node, attrs):
    x = imp.node(node.input[0])
    repeats = [int(v) for v in np.ravel(imp.static_value(node, 1, "Tile's repeats"))]
    if len(repeats) != x.ndim or builtins.min(repeats, default=1) < 1:
        raise _Unsupported(f"repeats {repeats} for a rank-{x.ndim} input (one positive "
                           "count per axis)")
    _check_size([S.resolve(d) * r if isinstance(S.resolve(d), int) else d
                 for d, r in zip(x.sym_shape, repeats)], "Tile's output")
    for axis, r in enumerate(repeats):
        if 1 < r <= 4:
            x = ops.concat([x] * r, axis=axis)
        elif r > 4:
            x = _repeat_block(x, axis, r)
    imp.set(node.output[0], x)


def _repeat_block(x, axis, r):
    """x repeated r times along `axis` ([x, x, ..., x] concatenated) as one broadcast:
    reshape to (..., 1, d, ...), add zeros of shape (..., r, 1, ...), reshape back."""
    shape = tuple(x.sym_shape)
    d = _static_dim(shape[axis], "Tile")
    y = ops.reshape(x, shape[:axis] + (1,) + shape[axis:])
    zeros = np.zeros((1,) * axis + (r,) + (1,) * (x.ndim - axis), x.dtype)
    y = ops.add(y, const_node(zeros))
    return ops.reshape(y, shape[:axis] + (r * d,) + shape[axis + 1:])


# A Gather with indices known when importing is made of at most this many slices
GATHER_SLICES = 64


def import_gather(imp, node, attrs):
    """Gather along axis 0 of a 2-D table (an embedding): one_hot(indices) @ table; along
    any axis of any tensor with indices known when importing (a transformer's q, k, v =
    qkv[0], qkv[1], qkv[2]): slices of runs of consecutive indices, joined."""
    data = imp.node(node.input[0])
    axis = int(attrs.get("axis", 0))
    if not -builtins.max(data.ndim, 1) <= axis < builtins.max(data.ndim, 1):
        raise _Unsupported(f"axis={axis} outside a rank-{data.ndim} input")
    if data.ndim and imp.is_static(node.input[1]) and (data.ndim != 2 or axis % 2 != 0):
        imp.set(node.output[0], _gather_slices(data, axis % data.ndim,
                                               imp.static[node.input[1]]))
        return
    if axis % builtins.max(data.ndim, 1) != 0 or data.ndim != 2:
        raise _Unsupported("Gather other than rows of a 2-D table, or at indices known "
                           "when importing")
    rows = _static_dim(data.sym_shape[0], "Gather")
    if imp.is_static(node.input[1]):
        idx = _known_indices(imp.static[node.input[1]], rows)
        hot = const_node((idx[..., None] == np.arange(rows)).astype(data.dtype))
    else:
        hot = ops.one_hot(imp.node(node.input[1]), rows, data.dtype)
    imp.set(node.output[0], _matmul(hot, data))


def _known_indices(idx, size):
    """Gather's indices known when importing, checked against an axis of `size` and made
    non-negative."""
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise _Unsupported(f"indices of dtype {idx.dtype} (int32 or int64 only)")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise _Unsupported(f"indices outside [-{size}, {size - 1}]")
    return idx % size if size else idx


def _gather_slices(data, axis, idx):
    """data gathered along `axis` at the known indices `idx`."""
    size = _static_dim(data.sym_shape[axis], "Gather")
    idx = _known_indices(idx, size)
    flat = idx.reshape(-1)
    runs = []  # (start, stop) of consecutive indices
    for i in flat.tolist():
        if runs and runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, i + 1])
    if not runs:
        raise _Unsupported("no indices (an empty result)")
    if len(runs) > GATHER_SLICES:
        raise _Unsupported(f"{flat.size} indices in {len(runs)} runs (graphnn joins at most "
                           f"{GATHER_SLICES} slices)")
    parts = [data if (a, b) == (0, size) else ops.slice_axis(data, axis, a, b)
             for a, b in runs]
    out = parts[0] if len(parts) == 1 else ops.concat(parts, axis=axis)
    shape = data.sym_shape
    return _reshape(out, tuple(shape[:axis]) + tuple(idx.shape) + tuple(shape[axis + 1:]))


def import_constant(imp, node, attrs):
    from onnx import numpy_helper
    if "value" in attrs:
        value = numpy_helper.to_array(attrs["value"])
    elif "value_float" in attrs:
        value = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        value = np.array(attrs["value_floats"], np.float32)
    elif "value_int" in attrs:
        value = np.array(attrs["value_int"], np.int64)
    elif "value_ints" in attrs:
        value = np.array(attrs["value_ints"], np.int64)
    else:
        raise _Unsupported("a Constant without a numeric value")
    imp.set(node.output[0], value)


def import_constant_of_shape(imp, node, attrs):
    from onnx import numpy_helper
    shape = imp.static_value(node, 0, "ConstantOfShape's shape")
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    shape = tuple(int(d) for d in np.ravel(shape))
    _check_size(shape, "ConstantOfShape")
    imp.set(node.output[0], np.full(shape, fill.ravel()[0], fill.dtype))


def import_shape(imp, node, attrs):
    shape = [S.resolve(d) for d in imp.shape(node.input[0])]
    if not all(isinstance(d, int) for d in shape):
        raise _Unsupported("Shape of a tensor with a symbolic dim")
    shape = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
    imp.set(node.output[0], np.array(shape, np.int64))


def import_identity(imp, node, attrs):
    name = node.input[0]
    if imp.is_static(name):
        imp.set(node.output[0], imp.static[name])
    elif imp.has_nhwc(name):
        imp.set(node.output[0], imp.nhwc(name), channels_last=True)
    else:
        imp.set(node.output[0], imp.node(name))


def import_layer_norm(imp, node, attrs):
    """LayerNormalization: (x - mean) / sqrt(var + epsilon) * scale + bias, the mean and
    the biased variance over the axes from `axis` on (ViT, ConvNeXt)."""
    if len([o for o in node.output if o]) > 1:
        raise _Unsupported("only its first output (Y): its Mean and InvStdDev outputs are "
                           "not computed")
    if len(node.input) < 2 or not node.input[1]:
        raise _Unsupported("no Scale input (it needs X and Scale)")
    x = imp.node(node.input[0])
    axis = int(attrs.get("axis", -1))
    if not -x.ndim <= axis < x.ndim:
        raise _Unsupported(f"axis={axis} outside a rank-{x.ndim} input")
    axes = tuple(range(axis % x.ndim, x.ndim))
    eps = float(attrs.get("epsilon", 1e-5))
    centred = x - ops.mean(x, axis=axes, keepdims=True)
    var = ops.mean(ops.square(centred), axis=axes, keepdims=True)
    y = centred / ops.sqrt(var + eps) * imp.node(node.input[1])
    if len(node.input) > 2 and node.input[2]:
        y = y + imp.node(node.input[2])
    imp.set(node.output[0], y)


def import_expand(imp, node, attrs):
    """Expand: x broadcast against a shape known when importing (times ones of that
    shape: the same numbers, NaN and -0.0 included)."""
    x = imp.node(node.input[0])
    shape = imp.static_value(node, 1, "Expand's shape")
    if shape is None or shape.dtype.kind not in "iu":
        raise _Unsupported("its shape must be int64")
    shape = tuple(int(d) for d in shape.reshape(-1))
    if any(d < 0 for d in shape):
        raise _Unsupported(f"a negative dim in its shape {shape}")
    _check_size(shape, "Expand's shape")
    imp.set(node.output[0], x * const_node(np.ones(shape, dtype=x.dtype)))


def _hard_sigmoid(x, alpha=0.2, beta=0.5):
    if np.dtype(x.dtype).kind != "f":
        raise _Unsupported(f"an input of dtype {x.dtype} (float only)")
    return ops.clip(x * alpha + beta, 0.0, 1.0)


def _hard_swish(x):  # (ONNX's alpha 1/6 and beta 1/2)
    return x * _hard_sigmoid(x, 1.0 / 6.0, 0.5)


def import_dropout(imp, node, attrs):
    """Dropout at inference: the output is the input; the optional mask is all true (a
    constant of ones, graphnn's 0/1 mask form of a bool tensor)."""
    if imp.opset >= 12 and len(node.input) > 2 and node.input[2]:
        training = imp.static_value(node, 2, "Dropout's training_mode")
        if bool(np.ravel(training)[0]) if np.size(training) else False:
            raise _Unsupported("training_mode=1 (graphnn runs Dropout as inference)")
    import_identity(imp, _NodeView(node, [node.input[0]], node.output[:1]), {})
    if len(node.output) > 1 and node.output[1]:
        shape = [S.resolve(d) for d in imp.shape(node.input[0])]
        if all(isinstance(d, int) for d in shape):
            _check_size(shape, "Dropout's mask")
            imp.set(node.output[1], np.ones(shape, bool))
        elif imp.consumers.get(node.output[1]) or node.output[1] in imp.graph_outputs:
            raise _Unsupported("the mask output of a tensor with a symbolic dim")


def import_lrn(imp, node, attrs):
    """Local response normalization across channels:
    y = x / (bias + alpha/size * sum of x^2 over `size` neighbouring channels)^beta,
    the window from c - floor((size-1)/2) to c + ceil((size-1)/2), clipped at the ends.
    Channels-last images sum along the last axis: square, a zero pad of the channel axis,
    the window sum by doubling (window_reduce), pow, mul."""
    if "size" not in attrs:
        raise _Unsupported("no size attribute")
    size = int(attrs["size"])
    if size < 1:
        raise _Unsupported(f"size={size} (must be at least 1)")
    alpha, beta = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    name = node.input[0]
    rank = len(imp.shape(name))
    if rank < 3:
        raise _Unsupported(f"a rank-{rank} input (LRN takes N x C x D1 ...)")
    last = rank == 4 and imp.has_nhwc(name)
    x = imp.nhwc(name) if last else imp.node(name)
    axis = 3 if last else 1
    channels = _static_dim(x.sym_shape[axis], "LRN channels")
    before = (size - 1) // 2
    squares = ops.pad_axis(ops.square(x), axis, before, size - 1 - before)
    window = window_reduce(squares, axis, size, 1, 1, channels, "sum")
    y = x * ops.pow(window * (alpha / size) + bias, -beta)
    imp.set(node.output[0], y, channels_last=last)


def import_cast(imp, node, attrs):
    dtype = _ONNX_DTYPES.get(attrs["to"])
    if dtype is None:
        raise _Unsupported(f"Cast to element type {attrs['to']}")
    _elementwise(lambda x: ops.cast(x, dtype) if x.dtype != dtype else x)(imp, node, {})


def import_prelu(imp, node, attrs):
    x, slope = imp.node(node.input[0]), imp.node(node.input[1])
    if imp.opset < 7 and slope.ndim == 1 and x.ndim > 2 and slope.sym_shape[0] != 1:
        slope = ops.reshape(slope, (slope.sym_shape[0],) + (1,) * (x.ndim - 2))
    imp.set(node.output[0], ops.relu(x) - slope * ops.relu(ops.neg(x)))


def _selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return ops.elu(x, alpha) * gamma


def _pow(a, b):
    if b.dtype != a.dtype:
        b = ops.cast(b, a.dtype)
    return ops.pow(a, b)


IMPORTERS = {
    "Add": _binary(_needs_float_pair(ops.add)), "Sub": _binary(_needs_float_pair(ops.sub)),
    "Mul": _binary(_needs_float_pair(ops.mul)), "Div": _binary(_needs_float_pair(ops.div)),
    "Pow": _binary(_pow),
    "Neg": _elementwise(ops.neg), "Sqrt": _elementwise(ops.sqrt),
    "Exp": _elementwise(ops.exp), "Log": _elementwise(ops.log), "Abs": _elementwise(ops.abs),
    "Reciprocal": _elementwise(lambda x: 1.0 / x), "Sign": _elementwise(ops.sign),
    "Relu": _elementwise(ops.relu),
    "LeakyRelu": _elementwise(lambda x, alpha=0.01: ops.leaky_relu(x, alpha)),
    "Elu": _elementwise(lambda x, alpha=1.0: ops.elu(x, alpha)),
    "Selu": _elementwise(_selu),
    "Sigmoid": _elementwise(ops.sigmoid), "Tanh": _elementwise(ops.tanh),
    "Softplus": _elementwise(ops.softplus), "Erf": _elementwise(ops.erf),
    "HardSigmoid": _elementwise(_hard_sigmoid), "HardSwish": _elementwise(_hard_swish),
    "LayerNormalization": import_layer_norm, "Expand": import_expand,
    # opsets < 13 normalise over all trailing axes: the decompositions take a tuple of axes
    "Softmax": _softmax(ops.softmax, ops._softmax_decompose),
    "LogSoftmax": _softmax(ops.log_softmax, ops._log_softmax_decompose),
    "MatMul": import_matmul, "Gemm": import_gemm, "Transpose": import_transpose,
    "Reshape": import_reshape, "Flatten": import_flatten, "Concat": import_concat,
    "Sum": _elementwise(_variadic(ops.add)), "Max": _elementwise(_variadic(ops.maximum)),
    "Min": _elementwise(_variadic(ops.minimum)), "Mean": _elementwise(
        lambda *xs: _variadic(ops.add)(*xs) * (1.0 / len(xs))),
    "ReduceSum": _reduce(ops.sum, 13), "ReduceMean": _reduce(ops.mean, 18),
    "ReduceMax": _reduce(ops.max, 18),
    "Conv": import_conv,
    "MaxPool": lambda imp, node, attrs: _pool(imp, node, attrs, "max"),
    "AveragePool": lambda imp, node, attrs: _pool(imp, node, attrs, "avg"),
    "GlobalAveragePool": lambda imp, node, attrs: import_global_pool(imp, node, attrs,
                                                                     ops.mean),
    "GlobalMaxPool": lambda imp, node, attrs: import_global_pool(imp, node, attrs, ops.max),
    "BatchNormalization": import_batch_norm, "InstanceNormalization": import_instance_norm,
    "Dropout": import_dropout, "LRN": import_lrn, "Identity": import_identity,
    "Constant": import_constant,
    "ConstantOfShape": import_constant_of_shape, "Clip": import_clip,
    "Squeeze": import_squeeze, "Unsqueeze": import_unsqueeze, "Split": import_split,
    "Slice": import_slice, "Pad": import_pad, "Tile": import_tile, "Gather": import_gather,
    "Shape": import_shape, "Cast": import_cast, "PRelu": import_prelu,
    # comparisons give graphnn's 0/1 masks in the float dtype (a Cast to float keeps them)
    "Equal": _elementwise(ops.eq), "Greater": _elementwise(ops.gt),
    "GreaterOrEqual": _elementwise(ops.ge), "Less": _elementwise(lambda a, b: ops.gt(b, a)),
    "LessOrEqual": _elementwise(lambda a, b: ops.ge(b, a)),
}

# Ops evaluated at import time when all their inputs are known constants (shape
# arithmetic such as Shape -> Gather -> Concat -> Reshape). Float initializers stay
# parameters unless the op only rearranges a shape.
FOLDABLE = {"Add", "Sub", "Mul", "Div", "Neg", "Cast", "Concat", "Gather", "Unsqueeze",
            "Squeeze", "Slice", "Reshape", "Range", "Equal", "Where", "Transpose", "Sqrt",
            "ConstantOfShape", "Identity", "Floor", "Ceil", "Min", "Max", "Abs", "Mod",
            "Expand"}
SHAPE_OPS = {"Shape", "Size"}


def _only_constant(imp, node, attrs):
    raise _Unsupported("only on constants known when importing (graphnn has no such op)")


IMPORTERS.update({op: _only_constant for op in ("Range", "Where", "Floor", "Ceil", "Mod")})
