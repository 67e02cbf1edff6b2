"""Pictures of a small MLP (784-256-10, relu, softmax cross-entropy): its forward graph and
its forward + backward graph, drawn in the Netron style.

Writes out/mlp_forward.{svg,png}, out/mlp_train.{svg,png} (forward and gradient nodes) and
out/mlp_backward.{svg,png} (the gradient nodes alone). Needs Graphviz's `dot`.

Run: python examples/render_mlp.py [output directory, default out]
 or: graphnn render examples/render_mlp.py -o out/mlp.svg --grad   (build() gives the loss)
"""
import sys
from pathlib import Path

import graphnn as gn
import visualize


def build():
    """The loss of the MLP (its parameters: `gn.Graph(loss).params`, W1 b1 W2 b2)."""
    x = gn.input("x", (None, 784))
    y = gn.input("y", (None,), dtype="int64")
    W1 = gn.param("W1", shape=(784, 256), seed=0)
    b1 = gn.param("b1", shape=(256,), init="zeros")
    W2 = gn.param("W2", shape=(256, 10), seed=1)
    b2 = gn.param("b2", shape=(10,), init="zeros")
    h = gn.relu(x @ W1 + b1)
    loss = gn.softmax_cross_entropy(h @ W2 + b2, y, name="loss")
    return loss


def write_pictures(pictures, out, formats=("svg", "png")):
    """Render each (file stem, target, options) to `out` in every format; returns the paths."""
    written = [visualize.render(target, Path(out) / f"{stem}.{fmt}", **options)
               for fmt in formats for stem, target, options in pictures]
    for path in written:
        print("wrote", path)
    return written


def main(out="out"):
    loss = build()
    params = gn.Graph(loss).params
    grads = dict(zip(params, gn.grad(loss, params)))
    return write_pictures([("mlp_forward", loss, {}),
                           ("mlp_train", loss, {"grads": grads}),
                           ("mlp_backward", loss, {"grads": grads, "backward_only": True})], out)


if __name__ == "__main__":
    main(*sys.argv[1:])
