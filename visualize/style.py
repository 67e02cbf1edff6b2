"""The Netron look in one place: every op's category, each category's colour, fonts and sizes.

Netron colours a node's header by the op's category and leaves ops without one dark grey.
`OP_CATEGORY` is the one table from op name to category; it lists every op of graphnn (a
test checks it covers `graphnn.registry.OPS`). An op missing from it falls back to the
category its registry stanza declares, then to no category. Categories that Netron does
not colour (graphnn's "Reduce" and "Loss") draw as "no category", as Netron would.
"""
from graphnn.registry import OPS

# Netron's palette (DESIGN.md section 10).
CATEGORY_COLOUR = {
    "Layer": "#335588",          # rgb(51, 85, 136)
    "Activation": "#702921",     # rgb(112, 41, 33)
    "Pool": "#335533",           # rgb(51, 85, 51)
    "Normalization": "#335544",  # rgb(51, 85, 68)
    "Dropout": "#454770",        # rgb(69, 71, 112)
    "Shape": "#6C4F47",          # rgb(108, 79, 71)
    "Tensor": "#59423B",         # rgb(89, 66, 59)
    "Transform": "#335544",      # rgb(51, 85, 68)
    "Data": "#555555",           # rgb(85, 85, 85)
}
NO_CATEGORY_COLOUR = "#333333"

# op -> Netron category (None: no category, drawn #333).
#
#   op                     category        why
OP_CATEGORY = {
    # leaves: inputs and outputs are grey boxes, params and consts rows inside their user
    "input": "Data", "param": "Data", "variable": "Data", "const": "Data",
    # elementwise arithmetic: Netron leaves Add, Mul, Exp ... uncoloured
    "add": None, "sub": None, "mul": None, "div": None, "pow": None, "neg": None,
    "maximum": None, "minimum": None, "ge": None, "gt": None, "eq": None,
    "exp": None, "log": None, "sqrt": None, "abs": None, "sign": None, "square": None,
    # activations, and the masks their gradients use
    "sigmoid": "Activation", "tanh": "Activation", "relu": "Activation",
    "softplus": "Activation", "step": "Activation", "clip": "Activation",
    "leaky_relu": "Activation", "leaky_relu_grad": "Activation",
    "elu": "Activation", "elu_grad": "Activation",
    "softmax": "Activation", "log_softmax": "Activation",
    # reductions and losses: no Netron category
    "sum": None, "max": None, "mean": None, "argmax_mask": None,
    "mse": None, "binary_cross_entropy": None, "softmax_cross_entropy": None,
    # dense and convolution layers, with the convolution's gradient kernels
    "matmul": "Layer", "conv2d": "Layer",
    "conv2d_grad_input": "Layer", "conv2d_grad_filter": "Layer",
    "max_pool2d": "Pool", "max_pool2d_grad": "Pool",
    "avg_pool2d": "Pool", "avg_pool2d_grad": "Pool",
    # layout
    "reshape": "Shape", "broadcast_like": "Shape", "reciprocal_count": "Shape",
    "transpose": "Transform", "cast": "Transform",
    "concat": "Tensor", "slice_axis": "Tensor", "pad_axis": "Tensor", "one_hot": "Tensor",
}


def category_of(op):
    """The Netron category of `op`, or None."""
    if op in OP_CATEGORY:
        return OP_CATEGORY[op]
    category = getattr(OPS.get(op), "category", None)
    return category if category in CATEGORY_COLOUR else None


def header_colour(op):
    """The header colour of `op`'s box: its category's colour, or #333."""
    return CATEGORY_COLOUR.get(category_of(op), NO_CATEGORY_COLOUR)


FONT = "Helvetica"
NODESEP = "0.4"   # inches between boxes of one rank
RANKSEP = "0.35"   # inches between ranks (edge labels sit in this gap)
FONT_SIZE = 11
EDGE_FONT_SIZE = 9
BORDER_COLOUR = "#222222"
EDGE_COLOUR = "#8A8A8A"
EDGE_LABEL_COLOUR = "#555555"
GRAD_EDGE_COLOUR = "#B0603A"    # edges between gradient nodes
TERMINAL_FILL = "#EEEEEE"       # graph inputs and outputs
TERMINAL_BORDER = "#999999"
MUTED_TEXT = "#666666"          # attribute rows, names
CLUSTER_COLOUR = "#7A8FB0"      # fused-kernel clusters

# Shape brackets in parameter rows. Netron writes U+3008/U+3009, which common Latin fonts
# (DejaVu, Liberation) lack; the mathematical angle brackets look the same and render
# everywhere.
SHAPE_OPEN, SHAPE_CLOSE = "\u27e8", "\u27e9"
TIMES = "\u00d7"
NABLA = "\u2207"
PARTIAL = "\u2202"
