"""Pictures of graphnn graphs in the style of Netron, drawn with Graphviz.

    import visualize
    visualize.render(loss, "mlp.svg")                          # forward graph
    visualize.render(loss, "mlp_grad.png", grads={W: gW})      # with its derivative graph
    visualize.render(compiled, "kernels.svg")                  # fused kernels as clusters
    print(visualize.to_dot(loss))                              # DOT text, no Graphviz needed
    visualize.render(loss, "mlp.html", grads={W: gW})          # the interactive viewer

Modules: `style` (op -> category -> colour, the one table), `draw` (graph -> DOT),
`groups` (layer groups), `render` (DOT -> SVG/PNG/PDF files), `viewer` (the HTML viewer),
`cli` (the `render` and `view` command-line entries).
"""
from .style import CATEGORY_COLOUR, OP_CATEGORY, category_of, header_colour
from .draw import build_digraph, to_dot
from .render import GraphvizNotFound, render, to_svg
from .cli import add_render_arguments, add_view_arguments, cli_render, cli_view

from graphnn.graph import register_svg_renderer

register_svg_renderer(to_svg)  # gn.Graph(...)._repr_svg_() in notebooks

__all__ = ["render", "to_svg", "to_dot", "build_digraph", "cli_render", "add_render_arguments",
           "cli_view", "add_view_arguments",
           "GraphvizNotFound", "CATEGORY_COLOUR", "OP_CATEGORY", "category_of", "header_colour"]
