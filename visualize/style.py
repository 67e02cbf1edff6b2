"""The Netron look in one place: each category's colour, fonts and sizes.

Netron colours a node's header by the op's category and leaves ops without one dark grey.
An op's category is part of its stanza (`OpDef.category` in graphnn/ops.py): this module
only gives each category its colour.
"""
from collections.abc import Mapping

from graphnn.registry import OPS

# Netron's palette (DESIGN.md section 10), one colour per category of graphnn.registry.
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


class _StanzaCategories(Mapping):
    """op name -> its stanza's Netron category (None: no category), read from the registry
    when asked, so ops registered at run time are included."""

    def __getitem__(self, op):
        return OPS[op].category

    def __iter__(self):
        return iter(list(OPS))

    def __len__(self):
        return len(OPS)


OP_CATEGORY = _StanzaCategories()


def category_of(op):
    """The Netron category of `op` (from its stanza), or None."""
    opdef = OPS.get(op)
    return opdef.category if opdef is not None else None


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
REFERENCE = "\u2197"  # a stub naming a forward value drawn elsewhere
