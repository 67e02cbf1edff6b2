"""Pictures of the lecture graph f(x1, x2, x3) = (4*x2 + x2**2 + 3*x3, x1*x2 + 3*x3).

`3*x3` is used by both outputs and is ONE node (graphnn shares identical nodes), so the
picture shows one `mul` box with `const = 3` feeding both sums. The second picture adds
the derivative graph of f1 with respect to x1, x2 and x3.

Writes out/lecture.{svg,png} and out/lecture_grad.{svg,png}. Needs Graphviz's `dot`.

Run: python examples/render_lecture.py [output directory, default out]
"""
import sys

import graphnn as gn
from lecture_graph import build
from render_mlp import write_pictures


def main(out="out"):
    (x1, x2, x3), (f1, f2) = build()
    names = {f1: "f1", f2: "f2"}
    grads = dict(zip((x1, x2, x3), gn.grad(f1, [x1, x2, x3])))
    return write_pictures([("lecture", [f1, f2], {"names": names}),
                           ("lecture_grad", f1, {"names": names, "grads": grads})], out)


if __name__ == "__main__":
    main(*sys.argv[1:])
