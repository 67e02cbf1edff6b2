"""Model files: the Python file (or ONNX model) a command-line user points graphnn at.

FILE.py describes a graph in one of two ways:
  - a function `build()` returning the outputs: a node, a list of nodes, a gn.Graph, a
    compiled function, or a pair `(inputs, outputs)` as in examples/lecture_graph.py;
  - or a module-level variable `outputs` holding one of those.
`graphnn render`, `graphnn export` and `graphnn bench` read files this way.
"""
import runpy

from ..errors import GraphError
from ..node import Node
from ..onnx import load as load_onnx


def load_outputs(path, build="build"):
    """What FILE.py describes: the result of its build() (or of the function named
    `build`), or its `outputs`; for an ONNX file (model.onnx), the outputs of the imported
    model (see gn.onnx.load)."""
    if str(path).lower().endswith(".onnx"):
        return load_onnx(path).outputs
    namespace = runpy.run_path(path, run_name="graphnn_render")
    if callable(namespace.get(build)):
        result = namespace[build]()
    elif build != "build":
        raise GraphError(f"{path} defines no function {build}()")
    elif "outputs" in namespace:
        result = namespace["outputs"]
    else:
        raise GraphError(f"{path} defines neither build() nor `outputs`")
    if isinstance(result, tuple) and len(result) == 2 and _all_inputs(result[0]):
        result = result[1]  # (inputs, outputs)
    return list(result) if isinstance(result, tuple) else result


def _all_inputs(value):
    nodes = value if isinstance(value, (list, tuple)) else [value]
    return bool(nodes) and all(isinstance(n, Node) and n.op == "input" for n in nodes)
