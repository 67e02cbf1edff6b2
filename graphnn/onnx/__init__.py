"""ONNX interop: export graphnn graphs to ONNX files, import ONNX models as graphnn graphs.

    import graphnn as gn
    gn.onnx.export(logits, "mlp.onnx")              # open it in Netron, run it anywhere
    outputs, inputs = gn.onnx.load("model.onnx")    # graphnn nodes, ready to render/compile
    f = gn.compile(outputs, backend="cpu")
    (y,) = f(**{inputs[0].name: x_nchw})

The `onnx` package is an optional extra (`pip install "graphnn[onnx]"`); it is imported
only when one of these functions runs. importer.py and exporter.py say how each direction
handles layouts (ONNX is NCHW, graphnn NHWC); docs/ONNX.md has the op mapping table.
"""
from .common import DEFAULT_OPSET
from .exporter import export
from .importer import ImportedModel, load

__all__ = ["load", "export", "ImportedModel", "DEFAULT_OPSET"]
