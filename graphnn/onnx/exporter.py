"""ONNX export: a graphnn forward graph becomes an ONNX model (`gn.onnx.export`).

    gn.onnx.export(logits, "mlp.onnx")              # open it in Netron, run it anywhere

`export` keeps graphnn's semantics: an exported model takes NHWC inputs as the graphnn
graph did, and each conv/pool is wrapped in Transposes (ONNX convs are NCHW with OIHW
kernels). docs/ONNX.md has the op mapping table.
"""
import numpy as np

from .. import shapes as S
from ..errors import GraphError
from ..graph import Graph
from ..registry import OPS
from .common import DEFAULT_OPSET, require_onnx, same_pads


def export(outputs_or_graph, path, opset=DEFAULT_OPSET, model_name="graphnn"):
    """Write a forward graph as an ONNX model (opset >= 13); returns `path`.

        gn.onnx.export(logits, "mlp.onnx")                 # or a list of nodes, a gn.Graph

    Inputs, parameters and outputs keep their names; parameters (and variables) become
    initializers holding their current values, constants become Constant nodes. Images
    stay NHWC as in graphnn (each conv/pool is wrapped in Transposes). Derivative-graph
    ops (conv2d_grad_input, max_pool2d_grad, ...) are not exported: export forward graphs.
    Layers with a training mode (Dropout, BatchNorm) are exported in inference mode
    (`gn.nn.inference`: the identity, the running averages).
    """
    onnx = require_onnx()
    if opset < 13:
        raise GraphError(f"gn.onnx.export needs opset 13 or newer, got {opset}")
    from ..nn import inference  # Dropout and BatchNorm are exported as they infer
    outputs = outputs_or_graph.outputs if isinstance(outputs_or_graph, Graph) else \
        outputs_or_graph
    graph = Graph(inference(outputs))
    model = _Exporter(graph, opset).build(model_name)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


_NP_TO_ONNX = {"float32": 1, "float64": 11, "int32": 6, "int64": 7, "bool": 9}


class _Exporter:
    def __init__(self, graph, opset):
        from onnx import helper
        self.helper = helper
        self.graph = graph
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.names = {}   # id(graphnn node) -> ONNX value name
        self.used = set()
        self.next_suffix = {}  # base -> the suffix fresh(base) tries first
        self.unsupported = {}

    def fresh(self, base):
        """`base`, or `base_1`, `base_2`... the first not used yet (each base's count is
        kept: a long sequence exports thousands of constants named alike, and probing
        from 1 each time took seconds)."""
        name, i = base, self.next_suffix.get(base, 1)
        if name in self.used:
            name = f"{base}_{i}"
            while name in self.used:
                i += 1
                name = f"{base}_{i}"
            self.next_suffix[base] = i + 1
        self.used.add(name)
        return name

    def emit(self, op_type, inputs, base, **attrs):
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=self.fresh(f"{out}/{op_type}"), **attrs))
        return out

    def constant(self, array, base="const"):
        """A Constant node (parameters, not constants, become initializers)."""
        from onnx import numpy_helper
        name = self.fresh(base)
        self.nodes.append(self.helper.make_node(
            "Constant", [], [name], name=self.fresh(f"{name}/Constant"),
            value=numpy_helper.from_array(np.asarray(array), name)))
        return name

    def build(self, model_name):
        helper = self.helper
        for node in self.graph.inputs + self.graph.params + self.graph.variables:
            self.names[id(node)] = self.fresh(node.name)
        display = self.graph.display_names()
        inputs = [helper.make_tensor_value_info(self.names[id(n)], _NP_TO_ONNX[n.dtype.name],
                                                _onnx_dims(n.sym_shape))
                  for n in self.graph.inputs]
        for node in self.graph.params + self.graph.variables:
            from onnx import numpy_helper
            self.initializers.append(numpy_helper.from_array(node.value, self.names[id(node)]))
        for node in self.graph.nodes:
            self.export_node(node, display[node])
        if self.unsupported:
            listed = ", ".join(f"{k} ({v})" for k, v in sorted(self.unsupported.items()))
            raise GraphError(f"gn.onnx.export: no ONNX form for these ops: {listed}; export "
                             "the forward graph (before gn.grad)")
        outputs = []
        for out in self.graph.outputs:
            name = self.names[id(out)]
            if out.op in ("input", "param", "variable", "const") or name in (
                    o.name for o in outputs):
                name = self.emit("Identity", [name], out.name or f"{name}_out")
            outputs.append(helper.make_tensor_value_info(
                name, _NP_TO_ONNX[out.dtype.name], _onnx_dims(out.sym_shape)))
        onnx_graph = helper.make_graph(self.nodes, model_name, inputs, outputs,
                                       initializer=self.initializers)
        return helper.make_model(onnx_graph, producer_name="graphnn",
                                 opset_imports=[helper.make_opsetid("", self.opset)])

    def export_node(self, node, display_name):
        if id(node) in self.names:
            return
        if node.op == "const":
            self.names[id(node)] = self.constant(node.value, node.name or "const")
            return
        ins = [self.names[id(i)] for i in node.inputs]
        rule = EXPORTERS.get(node.op)
        if rule is not None:
            self.names[id(node)] = rule(self, node, ins, node.name or display_name,
                                        **node.attrs)
            return
        decompose = OPS[node.op].decompose
        if decompose is None:
            self.unsupported[node.op] = self.unsupported.get(node.op, 0) + 1
            self.names[id(node)] = "?"
            return
        expanded = decompose(*node.inputs, **node.attrs)
        from ..graph import topological_order
        for inner in topological_order([expanded]):
            self.export_node(inner, f"{display_name}/{inner.op}")
        self.names[id(node)] = self.emit("Identity", [self.names[id(expanded)]],
                                         node.name or display_name)


def _onnx_dims(sym_shape):
    dims = []
    for d in map(S.resolve, sym_shape):
        if isinstance(d, int):
            dims.append(d)
        else:
            dims.append(f"N{d.label}" if d.label.isdigit() else d.label)
    return dims


def _simple(op_type, **fixed):
    return lambda ex, node, ins, name, **attrs: ex.emit(op_type, ins, name, **fixed)


def _float_mask(op_type):
    def rule(ex, node, ins, name, **attrs):
        mask = ex.emit(op_type, ins, f"{name}/mask")
        return ex.emit("Cast", [mask], name, to=_NP_TO_ONNX[node.dtype.name])
    return rule


def _axes_list(axis, ndim):
    if axis is None:
        return list(range(ndim))
    axes = [axis] if isinstance(axis, int) else list(axis)
    return [a % ndim for a in axes] if ndim else []


def _reduce_rule(op_type, axes_input_from):
    def rule(ex, node, ins, name, axis, keepdims):
        x = node.inputs[0]
        axes = _axes_list(axis, x.ndim)
        if not axes:
            return ex.emit("Identity", ins, name)
        if ex.opset >= axes_input_from:
            return ex.emit(op_type, ins + [ex.constant(np.array(axes, np.int64), "axes")],
                           name, keepdims=int(keepdims))
        return ex.emit(op_type, ins, name, axes=axes, keepdims=int(keepdims))
    return rule


def _export_reshape(ex, node, ins, name, shape):
    x = node.inputs[0]
    target, wild = [], 0
    for i, d in enumerate(shape):
        d = S.resolve(d)
        if isinstance(d, int):
            target.append(d)
        elif i < x.ndim and S.resolve(x.sym_shape[i]) is d:
            target.append(0)
        else:
            target.append(-1)
            wild += 1
    if wild > 1:
        ex.unsupported["reshape moving several symbolic dims"] = 1
    return ex.emit("Reshape", [ins[0], ex.constant(np.array(target, np.int64), "shape")], name)


def _export_slice(ex, node, ins, name, axis, start, stop):
    c = lambda v: ex.constant(np.array([v], np.int64), "slice")  # noqa: E731
    return ex.emit("Slice", [ins[0], c(start), c(stop), c(axis)], name)


def _export_pad(ex, node, ins, name, axis, before, after):
    pads = np.zeros(2 * node.ndim, np.int64)
    pads[axis % node.ndim], pads[node.ndim + axis % node.ndim] = before, after
    return ex.emit("Pad", [ins[0], ex.constant(pads, "pads")], name)


def _nchw(ex, x, name):
    return ex.emit("Transpose", [x], f"{name}/nchw", perm=[0, 3, 1, 2])


def _nhwc(ex, y, name):
    return ex.emit("Transpose", [y], name, perm=[0, 2, 3, 1])


def _export_conv(ex, node, ins, name, stride, padding):
    x, w = node.inputs
    h, wd = S.resolve(x.sym_shape[1]), S.resolve(x.sym_shape[2])
    kh, kw = S.resolve(w.sym_shape[0]), S.resolve(w.sym_shape[1])
    pads = [0, 0, 0, 0] if padding == "valid" else list(same_pads(h, wd, kh, kw, stride))
    oihw = ex.emit("Transpose", [ins[1]], f"{ins[1]}/oihw", perm=[3, 2, 0, 1])
    y = ex.emit("Conv", [_nchw(ex, ins[0], name), oihw], f"{name}/nchw_out",
                kernel_shape=[kh, kw], strides=[stride, stride],
                pads=[pads[0], pads[1], pads[2], pads[3]])
    return _nhwc(ex, y, name)


def _export_depthwise(ex, node, ins, name, stride, padding):
    x, w = node.inputs
    h, wd = S.resolve(x.sym_shape[1]), S.resolve(x.sym_shape[2])
    kh, kw, _, c = (S.resolve(d) for d in w.sym_shape)
    if isinstance(padding, str):
        pads = [0, 0, 0, 0] if padding == "valid" else list(same_pads(h, wd, kh, kw, stride))
    else:
        top, left, bottom, right = padding
        pads = [top, left, bottom, right]
    oihw = ex.emit("Transpose", [ins[1]], f"{ins[1]}/oihw", perm=[3, 2, 0, 1])
    y = ex.emit("Conv", [_nchw(ex, ins[0], name), oihw], f"{name}/nchw_out",
                kernel_shape=[kh, kw], strides=[stride, stride], pads=pads, group=c)
    return _nhwc(ex, y, name)


def _export_grouped(ex, node, ins, name, groups):
    oihw = ex.emit("Transpose", [ins[1]], f"{ins[1]}/oihw", perm=[3, 2, 0, 1])
    y = ex.emit("Conv", [_nchw(ex, ins[0], name), oihw], f"{name}/nchw_out",
                kernel_shape=[1, 1], group=groups)
    return _nhwc(ex, y, name)


def _export_channel_shuffle(ex, node, ins, name, groups):
    _, h, w, c = (S.resolve(d) for d in node.inputs[0].sym_shape)
    split = ex.emit("Reshape", [ins[0], ex.constant(
        np.array([0, h, w, groups, c // groups], np.int64), "shape")], f"{name}/groups")
    swapped = ex.emit("Transpose", [split], f"{name}/swapped", perm=[0, 1, 2, 4, 3])
    return ex.emit("Reshape", [swapped, ex.constant(np.array([0, h, w, c], np.int64),
                                                    "shape")], name)


def _export_max_pool_padded(ex, node, ins, name, size, stride, padding):
    y = ex.emit("MaxPool", [_nchw(ex, ins[0], name)], f"{name}/nchw_out",
                kernel_shape=[size, size], strides=[stride, stride], pads=list(padding))
    return _nhwc(ex, y, name)


def _pool_rule(op_type):
    def rule(ex, node, ins, name, size, stride):
        y = ex.emit(op_type, [_nchw(ex, ins[0], name)], f"{name}/nchw_out",
                    kernel_shape=[size, size], strides=[stride, stride])
        return _nhwc(ex, y, name)
    return rule


def _export_clip(ex, node, ins, name, low, high):
    dtype = node.dtype
    return ex.emit("Clip", [ins[0], ex.constant(np.array(low, dtype), "low"),
                            ex.constant(np.array(high, dtype), "high")], name)


def _export_broadcast_like(ex, node, ins, name, axis, keepdims):
    g, x = node.inputs
    src = ins[0]
    if not keepdims:
        axes = _axes_list(axis, x.ndim)
        src = ex.emit("Unsqueeze", [src, ex.constant(np.array(axes, np.int64), "axes")],
                      f"{name}/keep")
    shape = ex.emit("Shape", [ins[1]], f"{name}/shape")
    return ex.emit("Expand", [src, shape], name)


def _export_reciprocal_count(ex, node, ins, name, axis):
    x = node.inputs[0]
    axes = _axes_list(axis, x.ndim)
    dims = [S.resolve(x.sym_shape[a]) for a in axes]
    if all(isinstance(d, int) for d in dims):
        n = int(np.prod(dims, dtype=np.int64))
        return ex.constant(np.array(1.0 / n if n else np.nan, node.dtype), name)
    shape = ex.emit("Shape", [ins[0]], f"{name}/shape")
    picked = ex.emit("Gather", [shape, ex.constant(np.array(axes, np.int64), "axes")],
                     f"{name}/dims")
    count = ex.emit("ReduceProd", [picked], f"{name}/count", keepdims=0)
    count = ex.emit("Cast", [count], f"{name}/float", to=_NP_TO_ONNX[node.dtype.name])
    return ex.emit("Reciprocal", [count], name)


def _export_step(ex, node, ins, name):
    zero = ex.constant(np.array(0, node.dtype), "zero")
    mask = ex.emit("Greater", [ins[0], zero], f"{name}/mask")
    return ex.emit("Cast", [mask], name, to=_NP_TO_ONNX[node.dtype.name])


def _export_silu(ex, node, ins, name):
    return ex.emit("Mul", [ins[0], ex.emit("Sigmoid", ins, f"{name}/sigmoid")], name)


def _export_gelu(ex, node, ins, name):
    """0.5·x·(1 + erf(x/√2)) (ONNX's Gelu op needs opset 20)."""
    c = lambda v: ex.constant(np.array(v, node.dtype), "c")  # noqa: E731
    scaled = ex.emit("Mul", [ins[0], c(0.7071067811865476)], f"{name}/scaled")
    cdf = ex.emit("Add", [ex.emit("Erf", [scaled], f"{name}/erf"), c(1.0)], f"{name}/cdf")
    return ex.emit("Mul", [ex.emit("Mul", [ins[0], cdf], f"{name}/x_cdf"), c(0.5)], name)


def _export_gelu_tanh(ex, node, ins, name):
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    c = lambda v: ex.constant(np.array(v, node.dtype), "c")  # noqa: E731
    x = ins[0]
    cube = ex.emit("Mul", [ex.emit("Mul", [x, x], f"{name}/x2"), x], f"{name}/x3")
    inner = ex.emit("Add", [x, ex.emit("Mul", [cube, c(0.044715)], f"{name}/k_x3")],
                    f"{name}/inner")
    t = ex.emit("Tanh", [ex.emit("Mul", [inner, c(0.7978845608028654)], f"{name}/u")],
                f"{name}/tanh")
    half_x = ex.emit("Mul", [x, c(0.5)], f"{name}/half_x")
    return ex.emit("Mul", [half_x, ex.emit("Add", [t, c(1.0)], f"{name}/one_plus")], name)


EXPORTERS = {
    "add": _simple("Add"), "sub": _simple("Sub"), "mul": _simple("Mul"),
    "div": _simple("Div"), "pow": _simple("Pow"), "maximum": _simple("Max"),
    "minimum": _simple("Min"), "neg": _simple("Neg"), "exp": _simple("Exp"),
    "log": _simple("Log"), "sqrt": _simple("Sqrt"), "abs": _simple("Abs"),
    "sign": _simple("Sign"), "sigmoid": _simple("Sigmoid"), "tanh": _simple("Tanh"),
    "relu": _simple("Relu"), "softplus": _simple("Softplus"),
    "erf": _simple("Erf"), "softsign": _simple("Softsign"), "silu": _export_silu,
    "selu": lambda ex, node, ins, name: ex.emit("Selu", ins, name, alpha=1.6732632423543772,
                                                gamma=1.0507009873554805),
    "hard_sigmoid": lambda ex, node, ins, name: ex.emit("HardSigmoid", ins, name,
                                                        alpha=1 / 6, beta=0.5),
    "gelu": _export_gelu, "gelu_tanh": _export_gelu_tanh,
    "square": lambda ex, node, ins, name: ex.emit("Mul", [ins[0], ins[0]], name),
    "step": _export_step,
    "ge": _float_mask("GreaterOrEqual"), "gt": _float_mask("Greater"),
    "eq": _float_mask("Equal"),
    "leaky_relu": lambda ex, node, ins, name, alpha: ex.emit("LeakyRelu", ins, name,
                                                             alpha=alpha),
    "elu": lambda ex, node, ins, name, alpha: ex.emit("Elu", ins, name, alpha=alpha),
    "cast": lambda ex, node, ins, name, dtype: ex.emit("Cast", ins, name,
                                                       to=_NP_TO_ONNX[dtype]),
    "clip": _export_clip,
    "sum": _reduce_rule("ReduceSum", 13), "mean": _reduce_rule("ReduceMean", 18),
    "max": _reduce_rule("ReduceMax", 18),
    "matmul": _simple("MatMul"),
    "embedding": lambda ex, node, ins, name: ex.emit("Gather", [ins[1], ins[0]], name, axis=0),
    "transpose": lambda ex, node, ins, name, axes: ex.emit("Transpose", ins, name,
                                                           perm=list(axes)),
    "reshape": _export_reshape,
    "concat": lambda ex, node, ins, name, axis: ex.emit("Concat", ins, name, axis=axis),
    "slice_axis": _export_slice, "pad_axis": _export_pad,
    "conv2d": _export_conv, "max_pool2d": _pool_rule("MaxPool"),
    "depthwise_conv2d": _export_depthwise, "grouped_conv2d": _export_grouped,
    "channel_shuffle": _export_channel_shuffle, "max_pool2d_padded": _export_max_pool_padded,
    "avg_pool2d": _pool_rule("AveragePool"),
    "softmax": lambda ex, node, ins, name, axis: ex.emit("Softmax", ins, name, axis=axis),
    "log_softmax": lambda ex, node, ins, name, axis: ex.emit("LogSoftmax", ins, name,
                                                             axis=axis),
    "broadcast_like": _export_broadcast_like, "reciprocal_count": _export_reciprocal_count,
}


