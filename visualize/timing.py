"""How long a large graph takes to draw: `python -m visualize.timing [--nodes 1000] [--grad]`.

Graphs measured:
  mlp     a deep residual MLP, h <- h + tanh(h @ W_k + b_k), with as many blocks as it takes
          to draw at least `--nodes` forward op boxes (4 per block: matmul, add, tanh, add;
          W_k and b_k are rows inside them), or `--blocks` blocks;
  resnet  a ResNet-like conv net built with gn ops: 16 bottleneck blocks (1x1, 3x3, 1x1
          convolutions, relu, a residual add), 53 convolutions, as in ResNet-50;
  onnx    onnx's light_resnet50.onnx (backend test data of the onnx package), imported with
          gn.onnx.load; skipped when onnx is not installed.
With `--grad` the loss (for the ONNX model: the sum of its output) is differentiated with
respect to every parameter and the derivative graph is drawn too. Printed per graph: its
size, the time to build the DOT source (pure Python) and the time Graphviz's `dot` takes to
lay it out and write SVG. See docs/BENCHMARKS.md, "Rendering".
"""
import argparse
import math
import os
import time

import graphnn as gn

from .draw import Scene


def residual_mlp(boxes=None, width=32, blocks=None):
    """The loss of a residual MLP drawing at least `boxes` op boxes (or of `blocks` blocks)."""
    h = gn.input("x", (None, width))
    for k in range(blocks if blocks is not None else math.ceil(boxes / 4)):
        W = gn.param(f"block{k}/W", shape=(width, width), seed=k)
        b = gn.param(f"block{k}/b", shape=(width,), init="zeros")
        h = h + gn.tanh(h @ W + b)
    return gn.mean(h, name="loss")


def resnet_like(stages=(3, 4, 6, 3), width=8):
    """The loss of a ResNet-50-shaped conv net (NHWC): a stem convolution, bottleneck blocks
    of 1x1 -> 3x3 -> 1x1 convolutions with relu and a residual add (a 1x1 projection on the
    first block of each stage), global average pooling and a dense layer: 53 convolutions."""
    x = gn.input("image", (None, 32, 32, 3))
    labels = gn.input("labels", (None,), dtype="int64")
    h = gn.nn.Conv2D(4 * width, 3, padding="same", activation="relu", name="stem")(x)
    channels = 4 * width
    for s, blocks in enumerate(stages):
        for b in range(blocks):
            name = f"res{s + 2}_{b}"
            out = 4 * width * 2 ** s
            y = gn.nn.Conv2D(width * 2 ** s, 1, activation="relu", name=f"{name}_a")(h)
            y = gn.nn.Conv2D(width * 2 ** s, 3, padding="same", activation="relu",
                             name=f"{name}_b")(y)
            y = gn.nn.Conv2D(out, 1, name=f"{name}_c")(y)
            shortcut = h if channels == out else gn.nn.Conv2D(out, 1, name=f"{name}_proj")(h)
            h = gn.relu(y + shortcut)
            channels = out
    pooled = gn.mean(h, axis=(1, 2))
    logits = gn.nn.Dense(10, name="fc")(pooled)
    return gn.softmax_cross_entropy(logits, labels, name="loss")


def onnx_resnet50():
    """sum(output) of onnx's light_resnet50.onnx, or None without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_resnet50.onnx")
    if not os.path.exists(path):
        return None
    model = gn.onnx.load(path)
    return gn.sum(model.outputs[0], name="sum_output")


def measure(target, grad=False, repeat=1):
    """{"graph nodes", "boxes", "edges", "svg bytes", "dot_source_s", "svg_s"} for drawing
    `target` (with its derivative graph when `grad`)."""
    options = {}
    if grad:
        params = gn.Graph(target).params
        options["grads"] = dict(zip(params, gn.grad(target, params)))
    best_dot = best_svg = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        scene = Scene(target, **options)
        digraph = scene.digraph()
        source = digraph.source
        best_dot = min(best_dot, time.perf_counter() - start)
        start = time.perf_counter()
        svg = digraph.pipe(format="svg")
        best_svg = min(best_svg, time.perf_counter() - start)
    boxes = (sum(1 for n in scene.nodes if scene.role.get(id(n)) and id(n) not in scene.collapsed)
             + len({g.key for g in scene.collapsed.values()}) + len(scene.output_boxes())
             + len(scene.stubs))
    return {"graph nodes": len(scene.nodes), "boxes": boxes, "edges": source.count(" -> "),
            "svg bytes": len(svg), "dot_source_s": best_dot, "svg_s": best_svg,
            "collapsed": bool(scene.collapsed), "stubs": len(scene.stubs)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m visualize.timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000,
                        help="forward op boxes of the residual MLP, at least")
    parser.add_argument("--blocks", type=int, default=None,
                        help="blocks of the residual MLP (instead of --nodes)")
    parser.add_argument("--grad", action="store_true", help="draw the derivative graph too")
    parser.add_argument("--graphs", default="mlp,resnet,onnx",
                        help="comma-separated among mlp, resnet, onnx (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is printed")
    args = parser.parse_args(argv)
    makers = {"mlp": lambda: residual_mlp(args.nodes, blocks=args.blocks),
              "resnet": resnet_like, "onnx": onnx_resnet50}
    results = {}
    for name in args.graphs.split(","):
        target = makers[name.strip()]()
        if target is None:
            print(f"{name}: skipped (pip install onnx)")
            continue
        r = results[name] = measure(target, args.grad, args.repeat)
        print(f"{name}: {r['graph nodes']} graph nodes, {r['boxes']} boxes "
              f"({'layers collapsed, ' if r['collapsed'] else ''}{r['stubs']} stubs), "
              f"{r['edges']} edges{' (forward + gradient)' if args.grad else ''}: DOT source "
              f"{r['dot_source_s']:.2f} s, dot -Tsvg {r['svg_s']:.2f} s "
              f"({r['svg bytes'] / 1e6:.1f} MB of SVG)", flush=True)
    return results


if __name__ == "__main__":
    main()
