"""How long a large graph takes to draw: `python -m visualize.timing [--nodes 1000]`.

The graph is a deep residual MLP, h <- h + tanh(h @ W_k + b_k), with as many blocks as it
takes to draw at least `--nodes` op boxes (each block draws 4: matmul, add, tanh, add; its
W_k and b_k are rows inside them). Printed: the graph's size, the time to build the DOT
source (graph -> Netron-style DOT, pure Python) and the time Graphviz's `dot` takes to lay
it out and write SVG. Needs `dot` for the second time. With `--grad` the derivative graph
is drawn too; its layout is much slower (see docs/BENCHMARKS.md, "Rendering").
"""
import argparse
import math
import time

import graphnn as gn

from .draw import Scene
from .render import to_svg


def residual_mlp(boxes, width=32):
    """The loss of a residual MLP drawing at least `boxes` op boxes."""
    h = gn.input("x", (None, width))
    for k in range(math.ceil(boxes / 4)):
        W = gn.param(f"block{k}/W", shape=(width, width), seed=k)
        b = gn.param(f"block{k}/b", shape=(width,), init="zeros")
        h = h + gn.tanh(h @ W + b)
    return gn.mean(h, name="loss")


def measure(boxes=1000, grad=False, repeat=1):
    """{"graph nodes", "boxes", "edges", "dot_source_s", "svg_s"} for one large graph."""
    loss = residual_mlp(boxes)
    options = {}
    if grad:
        params = gn.Graph(loss).params
        options["grads"] = dict(zip(params, gn.grad(loss, params)))
    best_dot = best_svg = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        scene = Scene(loss, **options)
        source = scene.digraph().source
        best_dot = min(best_dot, time.perf_counter() - start)
        start = time.perf_counter()
        svg = to_svg(loss, **options)
        best_svg = min(best_svg, time.perf_counter() - start)
    return {"graph nodes": len(scene.nodes),
            "boxes": sum(1 for role in scene.role.values() if role) + len(scene.output_boxes()),
            "edges": source.count(" -> "), "svg bytes": len(svg),
            "dot_source_s": best_dot, "svg_s": best_svg}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m visualize.timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000, help="op boxes to draw, at least")
    parser.add_argument("--grad", action="store_true", help="draw the derivative graph too")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is printed")
    args = parser.parse_args(argv)
    r = measure(args.nodes, args.grad, args.repeat)
    print(f"{r['graph nodes']} graph nodes, {r['boxes']} boxes, {r['edges']} edges"
          f"{' (forward + gradient)' if args.grad else ''}: DOT source "
          f"{r['dot_source_s']:.2f} s, dot -Tsvg {r['svg_s']:.2f} s "
          f"({r['svg bytes'] / 1e6:.1f} MB of SVG)")
    return r


if __name__ == "__main__":
    main()
