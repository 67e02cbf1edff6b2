"""Write pictures: `render` to a file (SVG, PNG, PDF or DOT) and `to_svg` for notebooks.

Only this module runs Graphviz's `dot` program. When it is missing, `render` still writes
the DOT source next to the requested file and raises `GraphvizNotFound`, which says how to
install Graphviz.
"""
from pathlib import Path

import graphviz

from .draw import build_digraph

FORMATS = ("svg", "png", "pdf", "dot", "html")
PNG_DPI = 110  # Graphviz's 72 makes 9-point edge labels hard to read
INSTALL_HINT = ("install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), "
                "`brew install graphviz` (macOS) or `conda install graphviz`")


class GraphvizNotFound(graphviz.ExecutableNotFound):
    """Graphviz's `dot` program is not installed (or not on PATH)."""

    def __init__(self, message):
        RuntimeError.__init__(self, message)


def render(target, path, format=None, **options):  # noqa: A002 - the documented name
    """Draw `target` in the Netron style and write it to `path`; returns the path (str).

    `target`: a node, a list of nodes, a `gn.Graph`, or a compiled function (its `.graph`
    is drawn, and its `.kernels`, when it has them, as clusters).
    `format`: "svg", "png", "pdf", "dot" or "html"; by default taken from the suffix of
    `path`. "html" writes the interactive viewer (visualize/viewer.py): one self-contained
    page with pan, zoom, search and a panel of details per box.

    Options:
      grads={W1: gW1, ...}  gradient nodes to draw with the forward graph: each key is the
                            node (or a name) differentiated against, each value the node
                            `gn.grad` returned. Nodes reached only from these are gradient
                            nodes: dashed, "∇" in the header, outputs named `∂loss/∂W1`.
      backward_only=False   draw only the gradient nodes (forward values they use appear
                            as dotted "forward" boxes); needs grads.
      show_names=False      the node's name under the op name.
      show_attrs=False      attribute rows such as `axis = -1`, `stride = 2`.
      show_shapes=True      tensor shapes on the edges (`?×256`).
      rankdir="TB"          "LR" lays the graph out left to right.
      names={node: "f1"}    display names for nodes (output boxes, ∂ labels, show_names).
      kernels=[...]         fused kernels (objects or dicts with `name` and `nodes`) to draw
                            as clusters; defaults to the compiled function's `.kernels`.
      legend=None           the forward/gradient legend; by default shown when there are
                            gradient nodes.
      expand=True           layer groups (nodes named "dense1/...", ONNX name scopes; see
                            visualize/groups.py) drawn as clusters of their ops; False draws
                            each as one box ("dense1", "∇ dense1"), a list of scopes
                            (["dense1"]) expands those and collapses the others.
      groups=True           False: no layer groups at all (every op a box, no clusters).
      max_edge_span=6       a forward value read by a gradient node more than this many
                            ranks below is drawn as a stub "↗ relu_12" beside the reader
                            (None: always an edge).

        loss = gn.softmax_cross_entropy(logits, y)
        visualize.render(loss, "mlp.svg")
        visualize.render(loss, "mlp_grad.png", grads=dict(zip(params, gn.grad(loss, params))))
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"cannot tell the picture format of '{path}': use a suffix or "
                         f"format= among {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        from .viewer import write_html
        try:
            return write_html(target, path, **options)
        except graphviz.ExecutableNotFound as exc:
            raise GraphvizNotFound(f"cannot write {path}: Graphviz's `dot` program was not "
                                   f"found; {INSTALL_HINT}.") from exc
    dot = build_digraph(target, **options)
    if fmt == "dot":
        path.write_text(dot.source, encoding="utf-8")
        return str(path)
    if fmt == "png":
        dot.attr(dpi=str(PNG_DPI))
    try:
        picture = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        source = path.with_suffix(".dot")
        source.write_text(dot.source, encoding="utf-8")
        raise GraphvizNotFound(
            f"cannot write {path}: Graphviz's `dot` program was not found; {INSTALL_HINT}. "
            f"The DOT source is in {source}; once Graphviz is installed, "
            f"`dot -T{fmt} {source} -o {path}` draws it.") from exc
    path.write_bytes(picture)
    return str(path)


def to_svg(target, **options):
    """The SVG picture (str) of `target`, as `render` would draw it; used by
    `gn.Graph._repr_svg_` so graphs display in notebooks."""
    try:
        return build_digraph(target, **options).pipe(format="svg").decode("utf-8")
    except graphviz.ExecutableNotFound as exc:
        raise GraphvizNotFound(f"cannot draw SVG: Graphviz's `dot` program was not found; "
                               f"{INSTALL_HINT}.") from exc
