"""`graphnn render FILE.py -o out.svg`: the command-line door to `visualize.render`.

FILE may also be an ONNX model (`graphnn render model.onnx -o model.svg`), imported with
gn.onnx.load. FILE.py describes the graph in one of two ways:
  - a function `build()` returning the outputs: a node, a list of nodes, a gn.Graph, a
    compiled function, or a pair `(inputs, outputs)` as in examples/lecture_graph.py;
  - or a module-level variable `outputs` holding one of those.
`--build NAME` calls the function NAME instead of build() (e.g. `--build loss_graph` for
examples/mlp_digits.py, whose build() also returns the model).

With `--grad` the first output (a scalar, such as a loss) is differentiated with respect
to the graph's parameters (or, in a graph without parameters, its float inputs) and the
gradient nodes are drawn too; `--backward-only` draws only them. `--compiled` compiles
the outputs first (`--backend`, default cpu) and draws the fused kernels as clusters.

To wire it into an argparse CLI:

    p = subparsers.add_parser("render", help="draw a graph")
    visualize.add_render_arguments(p)
    p.set_defaults(fn=visualize.cli_render)
"""
import graphnn as gn
from graphnn.tools.model_file import load_outputs


def add_render_arguments(parser):
    """Add the `render` command's arguments to an argparse parser."""
    parser.add_argument("file", help="a Python file defining build() or `outputs`, "
                        "or an ONNX model (.onnx)")
    parser.add_argument("--build", default="build", metavar="NAME",
                        help="the function of FILE.py returning the graph (default: build)")
    parser.add_argument("-o", "--output", default=None,
                        help="picture to write (.svg .png .pdf .dot); default FILE.svg")
    parser.add_argument("--format", choices=("svg", "png", "pdf", "dot", "html"), default=None,
                        help="picture format (default: from the output's suffix)")
    parser.add_argument("--grad", action="store_true",
                        help="also draw the derivative graph of the first output")
    parser.add_argument("--backward-only", action="store_true",
                        help="with --grad, draw only the gradient nodes")
    parser.add_argument("--compiled", action="store_true",
                        help="compile first and draw the fused kernels as clusters")
    parser.add_argument("--backend", default="cpu", help="backend for --compiled")
    parser.add_argument("--names", action="store_true", help="show node names")
    parser.add_argument("--attrs", action="store_true", help="show op attributes")
    parser.add_argument("--lr", action="store_true", help="lay out left to right")
    return parser


def add_view_arguments(parser):
    """Add the `view` command's arguments (those of `render`, output .html) to a parser."""
    add_render_arguments(parser)
    parser.set_defaults(format="html")
    parser.add_argument("--collapse", action="store_true",
                        help="start with the layer groups collapsed (one box per layer)")
    return parser


def cli_view(args):
    """Run the `view` command: write FILE.html, the interactive viewer; returns 0."""
    args.format = "html"
    if args.output is None:
        args.output = str(args.file).rsplit(".", 1)[0] + ".html"
    return cli_render(args)


def gradient_pairs(outputs):
    """{wrt: gradient} for the first output, against the params or else the float inputs."""
    graph = gn.Graph(outputs)
    loss = graph.outputs[0]
    wrt = graph.params or [n for n in graph.inputs if n.dtype.kind == "f"]
    return dict(zip(wrt, gn.grad(loss, wrt))), loss


def cli_render(args):
    """Run the `render` command for parsed `args` (see add_render_arguments); returns 0."""
    from .render import render
    target = load_outputs(args.file, getattr(args, "build", "build"))
    options = {"show_names": args.names, "show_attrs": args.attrs,
               "rankdir": "LR" if args.lr else "TB"}
    if getattr(args, "collapse", False):
        options["expand"] = False
    if args.grad or args.backward_only:
        grads, loss = gradient_pairs(target)
        options.update(grads=grads, backward_only=args.backward_only)
        target = loss
        if args.compiled:
            target = gn.compile([loss, *grads.values()], backend=args.backend)
    elif args.compiled:
        target = gn.compile(target, backend=args.backend)
    output = args.output or str(args.file).rsplit(".", 1)[0] + "." + (args.format or "svg")
    print(render(target, output, format=args.format, **options))
    return 0
