"""`graphnn export FILE.py -o model.onnx` and `graphnn run model.onnx --input NAME=x.npy`."""
import os

import numpy as np

from ..backends import compile as compile_graph
from ..errors import GraphError
from ..graph import Graph
from ..node import Node
from ..onnx import DEFAULT_OPSET, export, load
from .model_file import load_outputs


def add_cli_commands(subparsers):
    """Register `export` and `run` on the `graphnn` command's argparse subparsers."""
    export_cmd = subparsers.add_parser("export", help="write a model file's graph as ONNX")
    export_cmd.add_argument("file", help="a Python file defining build() or `outputs`")
    export_cmd.add_argument("-o", "--output", default=None,
                            help="ONNX file to write (default FILE.onnx)")
    export_cmd.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                            help=f"ONNX opset (13 or newer, default {DEFAULT_OPSET})")
    export_cmd.set_defaults(fn=cli_export)
    run_cmd = subparsers.add_parser("run", help="run an ONNX model with graphnn")
    run_cmd.add_argument("file", help="an ONNX model (.onnx)")
    run_cmd.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                         help="feed input NAME from a .npy file (repeat per input)")
    run_cmd.add_argument("--backend", default="cpu", help="cpu (default) or numpy")
    run_cmd.add_argument("--save", default=None, metavar="DIR",
                         help="also save each output as DIR/OUTPUT_NAME.npy")
    run_cmd.set_defaults(fn=cli_run)


def cli_export(args):
    """`graphnn export FILE.py -o model.onnx`."""
    target = load_outputs(args.file)
    if hasattr(target, "outputs") and not isinstance(target, (Graph, list, Node)):
        target = target.outputs  # a compiled function
    path = args.output or str(args.file).rsplit(".", 1)[0] + ".onnx"
    print(export(target, path, opset=args.opset))
    return 0


def cli_run(args):
    """`graphnn run model.onnx --input NAME=file.npy`: print (and optionally save) outputs.
    Inference only: the weights are imported frozen (constants the cpu back end prepares
    once, see gn.onnx.load)."""
    model = load(args.file, frozen=True)
    feeds = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep:
            raise GraphError(f"--input expects NAME=FILE.npy, got {item!r}")
        feeds[name] = np.load(path)
    missing = [n.name for n in model.inputs if n.name not in feeds]
    if missing:
        raise GraphError(f"{args.file} needs inputs {', '.join(missing)}: pass "
                         "--input NAME=FILE.npy for each")
    results = compile_graph(model.outputs, backend=args.backend)(**feeds)
    results = results if isinstance(results, tuple) else (results,)
    with np.printoptions(precision=5, suppress=True, threshold=200):
        for node, value in zip(model.outputs, results):
            print(f"{node.name} {value.shape} {value.dtype}:\n{value}")
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node.name)
                np.save(os.path.join(args.save, f"{safe}.npy"), value)
    return 0
