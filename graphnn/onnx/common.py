"""What the ONNX importer and exporter share: the default opset, the optional `onnx`
package, and the pads of graphnn's padding="same"."""
import builtins

from ..ops import conv_geometry

DEFAULT_OPSET = 17


def require_onnx():
    """The `onnx` module, or an ImportError saying how to install it (an optional extra)."""
    try:
        import onnx
    except ImportError:
        raise ImportError("graphnn's ONNX support needs the `onnx` package: "
                          "pip install \"graphnn[onnx]\" (or pip install onnx)") from None
    return onnx


def same_pads(h, w, kh, kw, stride):
    """The pads graphnn's padding="same" applies: (top, left, bottom, right)."""
    oh, top = conv_geometry(h, kh, stride, "same")
    ow, left = conv_geometry(w, kw, stride, "same")
    bottom = builtins.max((oh - 1) * stride + kh - h, 0) - top
    right = builtins.max((ow - 1) * stride + kw - w, 0) - left
    return (top, left, bottom, right)
