"""graphnn: a symbolic computation-graph compiler for neural networks.

Declare a static DAG of inputs, parameters, constants and ops; graphnn infers shapes as you
go, shares identical nodes, builds the derivative graph, and compiles forward pass, backward
pass and parameter updates to generated Numba kernels. See README.md and docs/.

    import numpy as np, graphnn as gn
    x = gn.input("x", (None, 2))
    W = gn.param("W", shape=(2, 1), seed=0)
    loss = gn.mean(gn.sigmoid(x @ W))
    f = gn.compile(loss, backend="numpy")
"""
from .errors import (GraphError, ShapeError, DTypeError, FeedError, GradError, NumericalError,
                     OptionError, BackendError)
from .node import Node
from .api import input, param, variable, const
from .ops import (add, sub, mul, div, neg, pow, exp, log, sqrt, abs, square, maximum, minimum,
                  sigmoid, tanh, relu, leaky_relu, elu, softplus, step, sign, softmax,
                  log_softmax, matmul, transpose, reshape, concat, sum, mean, max, conv2d,
                  depthwise_conv2d,
                  max_pool2d, avg_pool2d, flatten, mse, binary_cross_entropy,
                  softmax_cross_entropy, cast, clip, one_hot, slice_axis, define_elementwise,
                  selu, silu, swish, gelu, softsign, hard_sigmoid, erf, random_uniform,
                  training_branch)
from .ops import embedding
from .repeat import repeat
from .registry import OpDef, register as register_op, unregister as unregister_op
from .graph import Graph
from .autodiff import grad
from .backends import compile
from .serialize import save, load
from . import eager, optim, testing, onnx
from . import data, metrics, nn, callbacks
from .train import fit, evaluate, History

__version__ = "0.1.0"

# The public names: every function, class and error imported above, and the submodules
# meant for users (tests/test_docstrings.py checks each has a docstring with an example).
_PUBLIC_MODULES = ("eager", "optim", "testing", "onnx", "data", "metrics", "nn", "callbacks")
__all__ = sorted(
    [name for name, value in globals().items()
     if not name.startswith("_") and not isinstance(value, type(eager))]  # no modules
    + list(_PUBLIC_MODULES))


def __getattr__(name):
    # gn.distributed is imported on first use (it looks for MPI); gn.bench (graph vs eager
    # for your own model, graphnn.tools.bench_model) too: the core never imports tools
    import importlib
    if name == "distributed":
        return importlib.import_module(".distributed", __name__)
    if name == "bench":
        return importlib.import_module(".tools.bench_model", __name__)
    raise AttributeError(f"module 'graphnn' has no attribute {name!r}")
