"""A picture of an ONNX model collapsed by layer groups: SqueezeNet's light test model from
the onnx package (its `fire2/...` name scopes become the boxes "fire2", "fire3", ...).

Writes out/squeezenet.{svg,png}. Needs Graphviz's `dot` and the onnx package.
Run: python examples/render_onnx.py [output directory, default out]
"""
import os
import sys

import graphnn as gn
from render_mlp import write_pictures


def build():
    """The outputs of onnx's light_squeezenet.onnx, imported with gn.onnx.load."""
    import onnx
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_squeezenet.onnx")
    return gn.onnx.load(path).outputs


def main(out="out"):
    return write_pictures([("squeezenet", build(), {"expand": False})], out)


if __name__ == "__main__":
    main(*sys.argv[1:])
