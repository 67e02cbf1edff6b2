"""`graphnn bench`: graph vs eager, measured side by side in one run.

Each workload is one training step (forward, loss, backward, SGD update) unless it says
"infer" (or is an elementwise chain). Modes:

  eager   graphnn ops executed at once on NumPy, gradients from the tape (gn.eager)
  numpy   the graph interpreted node by node (backend="numpy")
  cpu     the step compiled by the cpu back end (backend="cpu"): one generated Numba
          function, or for large programs a library of shared kernels and a Python driver
  cpu-fused, cpu-library   the same, forced into one mode (library=False / True), opt-in
  cuda    the same on a GPU (backend="cuda"); skipped without one
  torch   PyTorch eager, when installed (optional peer)
  torch-compile  torch.compile of the loss (forward and backward), opt-in: slow to compile
  jax     jax.jit of the whole step, when installed (optional peer); with --threads N (or
          OPENBLAS_NUM_THREADS) its XLA client starts on N cores (each row prints the cores
          every mode used)
  onnxruntime  the ONNX workloads (onnx-<model>, or `--workloads onnx` for all nine) run by
          onnxruntime, when installed, on as many intra-op threads as graphnn's BLAS has
          (--threads, else OPENBLAS_NUM_THREADS, else one)

Every mode starts from the same initial weights and data. Before timing, each runs two
steps and its two losses (for inference and elementwise workloads: the whole output) are
compared with the reference mode's (eager when present): the first checks the forward pass,
the second the gradients and the update. A mode that differs is flagged DIFFERS, so nothing
is faster by being wrong.

Timing: warm-up rounds, then rounds in which every mode runs one step, in turn
(interleaved), so drift of the shared machine hits all modes alike; up to --repeat rounds or
--budget seconds per workload. The table shows medians, the interquartile range, and the
speed-up over eager as the median of the per-round ratios. References timed in the same
rounds: `np.copyto` on the same array for the elementwise chains (memory bandwidth), and the
step's matmuls alone in one @njit function for the MLPs (the BLAS floor). One step between
steps of other modes finds its code and data evicted from the caches; a training loop runs
the same step back to back. So each workload is also timed "in a training loop": rounds in
which every mode runs 10 steps back to back (interleaved as before, up to half the budget).

Compile time is apart from step time: "cold" is the build and first call of the cpu mode in
a fresh process with an empty cache directory (with --quick or --no-new-process: the first
build and call in this run, whose cache directory is a fresh temporary one unless
--cache-dir, so a workload may find kernels an earlier one compiled); "warm" is a new
process that builds the same step and calls it once, hitting the filled cache.
The same new process (one per workload and mode, skipped with --quick) measures peak memory:
the growth of the process's peak resident set (VmHWM) while it builds the step and runs it,
above the process with its libraries imported and the data made, and the transient peak of
steady-state steps alone.

The ONNX workloads are the ImageNet models the onnx package ships as test data (its light
copies, tools/bench_onnx.py), batch-1 inference of the file's own input; their rows also
give each mode's largest difference from the file's reference output. They need the onnx
package; onnxruntime is skipped when it is not installed. The torchvision workloads
(`--workloads torchvision`, tv-<arch>) are torchvision's models with random weights as
torch.onnx exports them (tools/torchvision_models.py): mode torch runs the same model in
PyTorch, and each mode's output is compared with PyTorch's. They need torch and
torchvision (skipped without them).

    graphnn bench --quick
    graphnn bench --workloads xor,mlp-small --repeat 500 --json out.json --plot out.png
    OPENBLAS_NUM_THREADS=1 graphnn bench --workloads onnx --modes cpu,onnxruntime
    OPENBLAS_NUM_THREADS=1 graphnn bench --workloads torchvision --modes cpu,onnxruntime,torch
"""
import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import graphnn as gn

from . import torchvision_models

LR = 0.1
SCHEMA = "graphnn-bench/1"
RTOL, ATOL = 1e-3, 1e-4
ALL_MODES = ["eager", "numpy", "cpu", "cpu-fused", "cpu-library", "cuda", "torch",
             "torch-compile", "jax", "onnxruntime"]
DEFAULT_MODES = ["eager", "numpy", "cpu", "cuda", "torch", "jax", "onnxruntime"]


class Skip(Exception):
    """A mode that cannot run here (no GPU, peer not installed): listed as skipped."""


# ---------------------------------------------------------------------------------------
# Op namespaces: one model definition runs on graphnn (graph or eager), PyTorch and JAX.


class GraphnnOps:
    """graphnn ops: on nodes they build the graph, on arrays they run at once (eager)."""

    matmul = staticmethod(gn.matmul)
    add = staticmethod(gn.add)
    mul = staticmethod(gn.mul)
    sigmoid = staticmethod(gn.sigmoid)
    tanh = staticmethod(gn.tanh)
    relu = staticmethod(gn.relu)
    flatten = staticmethod(gn.flatten)
    mse = staticmethod(gn.mse)
    softmax_cross_entropy = staticmethod(gn.softmax_cross_entropy)
    repeat = staticmethod(gn.repeat)

    @staticmethod
    def conv2d_same(x, w):
        return gn.conv2d(x, w, padding="same")

    @staticmethod
    def conv2d_valid(x, w):
        return gn.conv2d(x, w)

    @staticmethod
    def max_pool2(x):
        return gn.max_pool2d(x, 2)

    @staticmethod
    def time_step(x, t, features):
        return gn.reshape(gn.slice_axis(x, 1, t, t + 1), (-1, features))

    @staticmethod
    def time_major(x, start):  # steps start.. of a (batch, T, features) sequence, time first
        return gn.transpose(gn.slice_axis(x, 1, start, x.shape[1]), (1, 0, 2))

    @staticmethod
    def concat(xs, axis):
        return gn.concat(xs, axis=axis)

    @staticmethod
    def zero_state(x, width):  # zeros (batch, width) for a (batch, T, features) sequence
        if not isinstance(x, gn.Node):  # (eager)
            return np.zeros((x.shape[0], width), x.dtype)
        return gn.matmul(gn.reshape(gn.slice_axis(x, 1, 0, 1), (-1, x.shape[2])),
                         gn.const(np.zeros((x.shape[2], width), x.dtype)))

    @staticmethod
    def columns(x, start, stop):
        return gn.slice_axis(x, 1, start, stop)


class TorchOps:
    """The same ops in PyTorch, NHWC images and HWIO kernels as in graphnn."""

    def __init__(self):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F
        self.sigmoid, self.tanh, self.relu = torch.sigmoid, torch.tanh, torch.relu

    def matmul(self, a, b):
        return a @ b

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def conv2d_same(self, x, w, padding="same"):
        # NHWC data seen as NCHW is PyTorch's channels_last layout, which its convolutions
        # take as it is
        y = self.F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), padding=padding)
        return y.permute(0, 2, 3, 1)

    def conv2d_valid(self, x, w):
        return self.conv2d_same(x, w, padding="valid")

    def repeat(self, block, n, x, *stacked):
        for k in range(n):
            x = block(x, *[s[k] for s in stacked])
        return x

    def max_pool2(self, x):
        return self.F.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    def flatten(self, x):
        return x.reshape(x.shape[0], -1)

    def time_step(self, x, t, features):
        return x[:, t, :]

    def time_major(self, x, start):
        return x[:, start:].permute(1, 0, 2)

    def concat(self, xs, axis):
        return self.torch.cat(xs, dim=axis)

    def zero_state(self, x, width):
        return self.torch.zeros((x.shape[0], width), dtype=x.dtype)

    def columns(self, x, start, stop):
        return x[:, start:stop]

    def mse(self, p, t):
        return self.F.mse_loss(p, t)

    def softmax_cross_entropy(self, logits, y):
        return self.F.cross_entropy(logits, y)


class JaxOps:
    """The same ops in JAX."""

    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.sigmoid, self.tanh, self.relu = jax.nn.sigmoid, jnp.tanh, jax.nn.relu

    def matmul(self, a, b):
        return a @ b

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def conv2d_same(self, x, w, padding="SAME"):
        return self.jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def conv2d_valid(self, x, w):
        return self.conv2d_same(x, w, padding="VALID")

    def repeat(self, block, n, x, *stacked):  # (jax's own: lax.scan, traced once)
        return self.jax.lax.scan(lambda h, s: (block(h, *s), None), x, stacked)[0]

    def max_pool2(self, x):
        return self.jax.lax.reduce_window(x, -self.jnp.inf, self.jax.lax.max, (1, 2, 2, 1),
                                          (1, 2, 2, 1), "VALID")

    def flatten(self, x):
        return x.reshape(x.shape[0], -1)

    def time_step(self, x, t, features):
        return x[:, t, :]

    def time_major(self, x, start):
        return self.jnp.transpose(x[:, start:], (1, 0, 2))

    def concat(self, xs, axis):
        return self.jnp.concatenate(xs, axis=axis)

    def zero_state(self, x, width):
        return self.jnp.zeros((x.shape[0], width), x.dtype)

    def columns(self, x, start, stop):
        return x[:, start:stop]

    def mse(self, p, t):
        return self.jnp.mean((p - t) ** 2)

    def softmax_cross_entropy(self, logits, y):
        logp = self.jax.nn.log_softmax(logits)
        return -self.jnp.mean(self.jnp.take_along_axis(logp, y[:, None], axis=1))


# ---------------------------------------------------------------------------------------
# Workloads


def _glorot(rng, shape):
    fan_in = int(np.prod(shape[:-1]))
    fan_out = int(shape[-1]) * (int(np.prod(shape[:-2])) if len(shape) > 2 else 1)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


class Model:
    """A workload, defined once: `forward(ops, x, params)` and `loss(ops, out, y)` run on any
    op namespace. `param_inits` [(name, array)] and `feeds` {name: array} are the shared
    starting point of every mode; `inputs` {name: (shape with None for the batch, dtype)}."""

    train = True
    loss_kind = None
    mlp_sizes = None  # MLPs also get the BLAS-floor reference
    eltwise = False
    lr = LR  # SGD's step size, the same in every mode

    def __init__(self, name, description):
        self.name, self.description = name, description

    def forward(self, ops, x, params):
        raise NotImplementedError

    def loss(self, ops, out, y):
        if self.loss_kind == "mse_sigmoid":
            return ops.mse(ops.sigmoid(out), y)
        if self.loss_kind == "mse":
            return ops.mse(out, y)
        return ops.softmax_cross_entropy(out, y)


class MLP(Model):
    def __init__(self, name, sizes, act, loss_kind, batch, train=True, xor=False, seed=0):
        kind = "train" if train else "infer"
        super().__init__(name, f"{'-'.join(map(str, sizes))} {act} MLP, "
                               f"{'MSE' if loss_kind.startswith('mse') else 'softmax CE'}, "
                               f"batch {batch}, {kind}")
        self.sizes, self.act, self.loss_kind, self.train = sizes, act, loss_kind, train
        self.mlp_sizes = sizes
        rng = np.random.default_rng(seed)
        self.param_inits = []
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.param_inits += [(f"W{k + 1}", _glorot(rng, (a, b))),
                                 (f"b{k + 1}", np.zeros(b, np.float32))]
        if xor:
            X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
            Y = np.array([[0], [1], [1], [0]], np.float32)
        else:
            X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
            Y = rng.integers(0, sizes[-1], batch).astype(np.int64)
        self.feeds = {"x": X}
        self.inputs = {"x": ((None, sizes[0]), "float32")}
        if train:
            self.feeds["y"] = Y
            self.inputs["y"] = ((None, sizes[-1]), "float32") if xor else ((None,), "int64")

    def forward(self, ops, x, params):
        h, n = x, len(params) // 2
        for k in range(n):
            h = ops.add(ops.matmul(h, params[2 * k]), params[2 * k + 1])
            if k < n - 1:
                h = getattr(ops, self.act)(h)
        return h


class CNN(Model):
    """conv 3x3 (same, bias, relu) -> max pool 2 -> flatten -> dense 10 -> softmax CE."""

    loss_kind = "sce"

    def __init__(self, name="cnn-digits", batch=64, filters=16, seed=0):
        super().__init__(name, f"8x8x1 images, conv3x3x{filters}+relu, maxpool2, dense 10, "
                               f"softmax CE, batch {batch}, train")
        rng = np.random.default_rng(seed)
        self.param_inits = [("Wc", _glorot(rng, (3, 3, 1, filters))),
                            ("bc", np.zeros(filters, np.float32)),
                            ("Wd", _glorot(rng, (16 * filters, 10))),
                            ("bd", np.zeros(10, np.float32))]
        # digit-like: pixels in [0, 1], ten classes (the timing does not depend on the data)
        self.feeds = {"x": rng.uniform(0, 1, (batch, 8, 8, 1)).astype(np.float32),
                      "y": rng.integers(0, 10, batch).astype(np.int64)}
        self.inputs = {"x": ((None, 8, 8, 1), "float32"), "y": ((None,), "int64")}

    def forward(self, ops, x, params):
        Wc, bc, Wd, bd = params
        h = ops.max_pool2(ops.relu(ops.add(ops.conv2d_same(x, Wc), bc)))
        return ops.add(ops.matmul(ops.flatten(h), Wd), bd)


class CNNMnist(Model):
    """The MNIST-size CNN: conv 32 3x3 relu -> conv 64 3x3 relu -> max pool 2 -> flatten ->
    dense 128 relu -> dense 10 -> softmax CE (valid convolutions, as Keras by default)."""

    loss_kind = "sce"

    def __init__(self, name="cnn-mnist", batch=64, seed=0):
        super().__init__(name, f"28x28x1 images, conv3x3x32+relu, conv3x3x64+relu, maxpool2, "
                               f"dense 128+relu, dense 10, softmax CE, batch {batch}, train")
        rng = np.random.default_rng(seed)
        self.param_inits = [("W1", _glorot(rng, (3, 3, 1, 32))), ("b1", np.zeros(32, np.float32)),
                            ("W2", _glorot(rng, (3, 3, 32, 64))), ("b2", np.zeros(64, np.float32)),
                            ("W3", _glorot(rng, (12 * 12 * 64, 128))),
                            ("b3", np.zeros(128, np.float32)),
                            ("W4", _glorot(rng, (128, 10))), ("b4", np.zeros(10, np.float32))]
        self.feeds = {"x": rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32),
                      "y": rng.integers(0, 10, batch).astype(np.int64)}
        self.inputs = {"x": ((None, 28, 28, 1), "float32"), "y": ((None,), "int64")}

    def forward(self, ops, x, params):
        W1, b1, W2, b2, W3, b3, W4, b4 = params
        h = ops.relu(ops.add(ops.conv2d_valid(x, W1), b1))
        h = ops.max_pool2(ops.relu(ops.add(ops.conv2d_valid(h, W2), b2)))
        h = ops.relu(ops.add(ops.matmul(ops.flatten(h), W3), b3))
        return ops.add(ops.matmul(h, W4), b4)


class RNN(Model):
    """y_t = tanh(x_t Wx + y_{t-1} Wy + b), y_0 = 0, unrolled over T steps with shared
    weights; MSE of the last state against a target."""

    loss_kind = "mse"

    def __init__(self, name="rnn", batch=32, steps=10, features=8, units=32, seed=0):
        super().__init__(name, f"simple RNN unrolled over T={steps}, {features} inputs, "
                               f"{units} units, MSE on the last state, batch {batch}, train")
        self.steps, self.features = steps, features
        self.blocks = steps  # (compile at scale: seconds per time step)
        rng = np.random.default_rng(seed)
        self.param_inits = [("Wx", _glorot(rng, (features, units))),
                            ("Wy", _glorot(rng, (units, units))),
                            ("b", np.zeros(units, np.float32))]
        self.feeds = {"x": rng.standard_normal((batch, steps, features)).astype(np.float32),
                      "y": rng.uniform(-1, 1, (batch, units)).astype(np.float32)}
        self.inputs = {"x": ((None, steps, features), "float32"),
                       "y": ((None, units), "float32")}

    def forward(self, ops, x, params):
        Wx, Wy, b = params
        y = None
        for t in range(self.steps):
            z = ops.add(ops.matmul(ops.time_step(x, t, self.features), Wx), b)
            if y is not None:  # y_0 = 0 adds nothing
                z = ops.add(z, ops.matmul(y, Wy))
            y = ops.tanh(z)
        return y



class LSTM(RNN):
    """An LSTM unrolled over T steps: gates i, f, o = sigmoid and g = tanh of x_t Wx_k +
    h_{t-1} Wh_k + b_k (each gate its own weights; the forget gate's bias starts at 1),
    c_t = f c_{t-1} + i g, h_t = o tanh(c_t), h_0 = c_0 = 0; MSE of the last h against a
    target. The recurrent model of the real-models issue: lstm-T times compile at scale."""

    def __init__(self, name="lstm", batch=32, steps=10, features=8, units=32, seed=0):
        super().__init__(name, batch, steps, features, units, seed)
        self.description = (f"LSTM unrolled over T={steps}, {features} inputs, {units} "
                            f"units, MSE on the last state, batch {batch}, train")
        rng = np.random.default_rng(seed)
        self.param_inits = []
        for gate in "ifgo":
            self.param_inits += [
                (f"Wx_{gate}", _glorot(rng, (features, units))),
                (f"Wh_{gate}", _glorot(rng, (units, units))),
                (f"b_{gate}", np.full(units, 1.0 if gate == "f" else 0.0, np.float32))]

    def forward(self, ops, x, params):
        weights = [params[3 * k:3 * k + 3] for k in range(4)]
        h = c = None
        for t in range(self.steps):
            xt = ops.time_step(x, t, self.features)
            z = []
            for Wx, Wh, b in weights:
                zk = ops.add(ops.matmul(xt, Wx), b)
                if h is not None:  # h_0 = 0 adds nothing
                    zk = ops.add(zk, ops.matmul(h, Wh))
                z.append(zk)
            i, f, g, o = ops.sigmoid(z[0]), ops.sigmoid(z[1]), ops.tanh(z[2]), ops.sigmoid(z[3])
            c = ops.mul(i, g) if c is None else ops.add(ops.mul(f, c), ops.mul(i, g))
            h = ops.mul(o, ops.tanh(c))
        return h

class RepeatedRNN(RNN):
    """RNN's recurrence declared with gn.repeat: one traced step from y_0 = 0, its weights
    shared (read from outside the block), the sequence time first. The same numbers as
    the unrolled RNN (0 Wy adds nothing)."""

    def __init__(self, name="rnn-repeat", **kwargs):
        super().__init__(name, **kwargs)
        self.description = self.description.replace("unrolled over", "repeated (gn.repeat) over")

    def forward(self, ops, x, params):
        Wx, Wy, b = params
        return ops.repeat(
            lambda y, xt: ops.tanh(ops.add(ops.add(ops.matmul(xt, Wx), b), ops.matmul(y, Wy))),
            self.steps, ops.zero_state(x, Wy.shape[0]), ops.time_major(x, 0))


class RepeatedLSTM(LSTM):
    """LSTM's recurrence declared with gn.repeat: one traced step from h_0 = c_0 = 0 whose
    carry is [h, c] side by side, the weights shared. The same numbers as the unrolled
    LSTM."""

    def __init__(self, name="lstm-repeat", steps=10, **kwargs):
        super().__init__(name, steps=steps, **kwargs)
        self.description = self.description.replace("unrolled over", "repeated (gn.repeat) over")

    def _step(self, ops, xt, weights, h, c):
        z = []
        for Wx, Wh, b in weights:
            zk = ops.add(ops.matmul(xt, Wx), b)
            z.append(zk if h is None else ops.add(zk, ops.matmul(h, Wh)))
        i, f, g, o = ops.sigmoid(z[0]), ops.sigmoid(z[1]), ops.tanh(z[2]), ops.sigmoid(z[3])
        c = ops.mul(i, g) if c is None else ops.add(ops.mul(f, c), ops.mul(i, g))
        return ops.mul(o, ops.tanh(c)), c

    def forward(self, ops, x, params):
        weights = [params[3 * k:3 * k + 3] for k in range(4)]
        units = self.param_inits[2][1].shape[0]

        def block(hc, xt):
            h, c = self._step(ops, xt, weights, ops.columns(hc, 0, units),
                              ops.columns(hc, units, 2 * units))
            return ops.concat([h, c], 1)
        hc = ops.repeat(block, self.steps, ops.zero_state(x, 2 * units), ops.time_major(x, 0))
        return ops.columns(hc, 0, units)


class Eltwise(Model):
    """An elementwise chain on a large float32 vector (no parameters, no training)."""

    train, eltwise = False, True

    def __init__(self, name, chain, text, n=4 * 1024 * 1024):
        super().__init__(name, f"{text} on {n / 2 ** 20:g}M float32")
        self.chain, self.param_inits = chain, []
        self.feeds = {"x": np.random.default_rng(0).standard_normal(n).astype(np.float32)}
        self.inputs = {"x": ((None,), "float32")}

    def forward(self, ops, x, params):
        return self.chain(ops, x)


class ResidualMLP(Model):
    """`blocks` residual blocks h = h + relu(h @ W_k + b_k) at one width, then a dense
    layer to 10 classes, softmax CE, SGD: a deep graph built from ONE layer type."""

    loss_kind = "sce"

    def __init__(self, blocks, width=64, batch=32, seed=0):
        super().__init__(f"resmlp-{blocks}", f"{blocks} residual blocks h + relu(h W + b), "
                                             f"width {width}, softmax CE, batch {batch}, train")
        self.blocks = blocks
        # SGD's step divided by the depth too: each block's update adds to the residual
        # sum, and at 0.1 the 1000-block stack's loss went from 3.4 to 6e6 in one step
        self.lr = LR / blocks
        rng = np.random.default_rng(seed)
        scale = 1.0 / blocks  # keeps h and its gradient bounded through the residual sum
        self.param_inits = []
        for k in range(blocks):
            self.param_inits += [(f"W{k}", _glorot(rng, (width, width)) * np.float32(scale)),
                                 (f"b{k}", np.zeros(width, np.float32))]
        self.param_inits.append(("Wo", _glorot(rng, (width, 10))))
        self.feeds = {"x": rng.standard_normal((batch, width)).astype(np.float32),
                      "y": rng.integers(0, 10, batch).astype(np.int64)}
        self.inputs = {"x": ((None, width), "float32"), "y": ((None,), "int64")}

    def forward(self, ops, x, params):
        h = x
        for k in range(self.blocks):
            h = ops.add(h, ops.relu(ops.add(ops.matmul(h, params[2 * k]), params[2 * k + 1])))
        return ops.matmul(h, params[-1])


def _stacked(param_inits, families, blocks, kept):
    """`param_inits` of a residual stack for gn.repeat: each family's per-block arrays
    (W0, W1, ...) stacked into one (blocks, ...) array named after the family, then the
    `kept` ones as they are."""
    inits = dict(param_inits)
    return [(f, np.stack([inits[f"{f}{k}"] for k in range(blocks)])) for f in families] + \
        [(name, inits[name]) for name in kept]


class RepeatedMLP(ResidualMLP):
    """ResidualMLP's stack declared with gn.repeat: the block traced once, its weights
    stacked in two parameters W (blocks, width, width) and b (blocks, width), the same
    initial values (jax: lax.scan; torch: a Python loop over the slices)."""

    def __init__(self, blocks, **kwargs):
        super().__init__(blocks, **kwargs)
        self.name = f"resmlp-repeat-{blocks}"
        self.description = self.description.replace("residual blocks", "repeated blocks")
        self.param_inits = _stacked(self.param_inits, ("W", "b"), blocks, ("Wo",))

    def forward(self, ops, x, params):
        W, b, Wo = params
        h = ops.repeat(lambda h, w, c: ops.add(h, ops.relu(ops.add(ops.matmul(h, w), c))),
                       self.blocks, x, W, b)
        return ops.matmul(h, Wo)


class ResidualCNN(Model):
    """`blocks` residual 3x3 convolutions h = h + relu(conv2d(h, W_k, "same")) on tiny
    images (8x8, 8 channels), then flatten, dense 10, softmax CE, SGD."""

    loss_kind = "sce"

    def __init__(self, blocks, size=8, channels=8, batch=8, seed=0):
        super().__init__(f"resconv-{blocks}", f"{blocks} residual blocks h + relu(conv3x3(h)),"
                                              f" {size}x{size}x{channels}, dense 10, "
                                              f"softmax CE, batch {batch}, train")
        self.blocks = blocks
        self.lr = LR / blocks  # (as ResidualMLP's: at 0.1 the 1000-block loss was NaN)
        rng = np.random.default_rng(seed)
        scale = np.float32(1.0 / blocks)
        self.param_inits = [(f"W{k}", _glorot(rng, (3, 3, channels, channels)) * scale)
                            for k in range(blocks)]
        self.param_inits.append(("Wd", _glorot(rng, (size * size * channels, 10))))
        self.feeds = {"x": rng.standard_normal((batch, size, size, channels))
                      .astype(np.float32),
                      "y": rng.integers(0, 10, batch).astype(np.int64)}
        self.inputs = {"x": ((None, size, size, channels), "float32"),
                       "y": ((None,), "int64")}

    def forward(self, ops, x, params):
        h = x
        for k in range(self.blocks):
            h = ops.add(h, ops.relu(ops.conv2d_same(h, params[k])))
        return ops.matmul(ops.flatten(h), params[-1])


class RepeatedCNN(ResidualCNN):
    """ResidualCNN's stack declared with gn.repeat: one block traced, the kernels stacked
    in one parameter W (blocks, 3, 3, channels, channels), the same initial values."""

    def __init__(self, blocks, **kwargs):
        super().__init__(blocks, **kwargs)
        self.name = f"resconv-repeat-{blocks}"
        self.description = self.description.replace("residual blocks", "repeated blocks")
        self.param_inits = _stacked(self.param_inits, ("W",), blocks, ("Wd",))

    def forward(self, ops, x, params):
        W, Wd = params
        h = ops.repeat(lambda h, w: ops.add(h, ops.relu(ops.conv2d_same(h, w))),
                       self.blocks, x, W)
        return ops.matmul(ops.flatten(h), Wd)


class OnnxModel(Model):
    """An ImageNet model from an ONNX file: the onnx package's light test copy of
    `model` (tools/bench_onnx.py light_case), batch-1 inference of the file's input. Built
    by gn.onnx.load for the graph modes, run by onnxruntime in mode "onnxruntime"; the
    file (and the onnx package) is read at the first build."""

    train = False
    frozen = False  # (gn.onnx.load's: the light models' weights are constants anyway)

    def __init__(self, model):
        from .bench_onnx import TITLES
        super().__init__(f"onnx-{model}", f"{TITLES[model]} from its ONNX file, batch 1, "
                                          "infer")
        self.onnx_model = model
        self.param_inits = []
        self._case = self._outputs = None

    def case(self):
        """(path, input name, input, reference output), read once."""
        if self._case is None:
            if importlib.util.find_spec("onnx") is None:
                raise Skip("the onnx package is not installed (pip install onnx)")
            from .bench_onnx import light_case
            self._case = light_case(self.onnx_model)
        return self._case

    @property
    def feeds(self):
        _, name, x, _ = self.case()
        return {name: x}

    def prepare(self, mode):
        """Read the file (and for the graph modes, import it with gn.onnx.load) before
        the build is timed: importing is not compiling (tools/bench_onnx.py times it
        apart)."""
        with contextlib.suppress(Skip):
            path = self.case()[0]
            if mode not in ("onnxruntime", "eager", "torch", "torch-compile", "jax") and \
                    self._outputs is None:
                self._outputs = gn.onnx.load(path, frozen=self.frozen)[0]

    def graph(self):
        """The model's output node (gn.onnx.load, once)."""
        self.prepare("cpu")
        return self._outputs[0]


class TorchvisionModel(OnnxModel):
    """torchvision's `arch` exported to ONNX with random weights (tools/
    torchvision_models.py), batch-1 inference; imported frozen (inference: its weights
    constants, so convolution kernels are prepared once). Mode "torch" runs the same model
    in PyTorch, eager, under no_grad."""

    frozen = True

    def __init__(self, arch):
        Model.__init__(self, f"tv-{arch}", f"torchvision {arch} (random weights) exported "
                                           "to ONNX, batch 1, infer")
        self.onnx_model = self.arch = arch
        self.param_inits = []
        self._case = self._outputs = None

    def case(self):
        if self._case is None:
            if importlib.util.find_spec("onnx") is None or not torchvision_models.available():
                raise Skip("needs torch, torchvision and onnx (pip install torchvision onnx)")
            self._case = torchvision_models.case(self.arch)
        return self._case


def _onnx_graph_runner(model, backend, **options):
    _, name, x, reference = model.case()
    out = model.graph()
    t0 = time.perf_counter()
    f = gn.compile(out, backend=backend, **options)
    feeds = {name: x}
    return Runner(lambda: f(**feeds), info={"build_s": time.perf_counter() - t0,
                                            "function": f, "reference": reference})


def _onnxruntime_runner(model):
    if not isinstance(model, OnnxModel):
        raise Skip("runs the ONNX workloads only")
    _peer_missing("onnxruntime")
    import onnxruntime as ort
    path, name, x, reference = model.case()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = _thread_count(None) or 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {name: x}
    return Runner(lambda: session.run(None, feeds)[0], info={"reference": reference})


def _eltwise_chain(ops, x):
    return ops.sigmoid(x) * ops.tanh(x) + x * x - 0.5 * x


def _arith_chain(ops, x):
    return x * x - 0.5 * x + 0.25


WORKLOADS = {
    "xor": lambda: MLP("xor", [2, 2, 1], "sigmoid", "mse_sigmoid", 4, xor=True),
    "mlp-small": lambda: MLP("mlp-small", [64, 64, 10], "tanh", "sce", 32),
    "mlp-medium": lambda: MLP("mlp-medium", [784, 512, 256, 10], "relu", "sce", 256),
    "mlp-medium-infer": lambda: MLP("mlp-medium-infer", [784, 512, 256, 10], "relu", "sce",
                                    256, train=False),
    "cnn-digits": CNN,
    "cnn-mnist": CNNMnist,
    "rnn": RNN,
    "eltwise": lambda: Eltwise("eltwise", _eltwise_chain, "sigmoid(x)*tanh(x) + x*x - 0.5*x"),
    "eltwise-arith": lambda: Eltwise("eltwise-arith", _arith_chain, "x*x - 0.5*x + 0.25"),
}
# what `--workloads all` runs; the compile-at-scale workloads below are asked for by name
DEFAULT_WORKLOADS = list(WORKLOADS)
SCALE_WORKLOADS = {
    "rnn-100": lambda: RNN("rnn-100", steps=100),
    **{f"lstm-{n}": (lambda n=n: LSTM(f"lstm-{n}", steps=n)) for n in (10, 100, 1000)},
    # the recurrences declared with gn.repeat: one step traced, its weights shared
    **{f"rnn-repeat-{n}": (lambda n=n: RepeatedRNN(f"rnn-repeat-{n}", steps=n))
       for n in (10, 100)},
    **{f"lstm-repeat-{n}": (lambda n=n: RepeatedLSTM(f"lstm-repeat-{n}", steps=n))
       for n in (10, 100, 1000)},
    **{f"resmlp-{n}": (lambda n=n: ResidualMLP(n)) for n in (10, 100, 1000)},
    **{f"resconv-{n}": (lambda n=n: ResidualCNN(n)) for n in (10, 100, 1000)},
    # the same stacks declared with gn.repeat: one block traced, differentiated, compiled
    **{f"resmlp-repeat-{n}": (lambda n=n: RepeatedMLP(n)) for n in (10, 100, 1000)},
    **{f"resconv-repeat-{n}": (lambda n=n: RepeatedCNN(n)) for n in (10, 100, 1000)},
}
WORKLOADS.update(SCALE_WORKLOADS)
# the ImageNet models from ONNX files (`--workloads onnx`: all nine), asked for by name
ONNX_WORKLOADS = {f"onnx-{m}": (lambda m=m: OnnxModel(m)) for m in (
    "resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
    "vgg19", "bvlc_alexnet", "zfnet512")}
WORKLOADS.update(ONNX_WORKLOADS)
# torchvision's models exported by torch.onnx (`--workloads torchvision`: all of them)
TORCHVISION_WORKLOADS = {f"tv-{a}": (lambda a=a: TorchvisionModel(a))
                         for a in torchvision_models.ARCHS}
WORKLOADS.update(TORCHVISION_WORKLOADS)


# ---------------------------------------------------------------------------------------
# Modes: each builder returns a Runner (a step callable and what its build cost) or raises
# Skip. Every runner owns its state (its own copy of the initial weights).


class Runner:
    def __init__(self, step, to_numpy=np.asarray, info=None):
        self.step, self.to_numpy, self.info = step, to_numpy, info or {}

    def value(self):
        """One step; its loss (or output) as a NumPy array."""
        return np.array(self.to_numpy(self.step()), dtype=np.float64, copy=True)


def _graph_runner(model, backend, **options):
    if isinstance(model, OnnxModel):
        if backend == "numpy":  # (VGG-19: seconds per image)
            raise Skip("an ImageNet model interpreted node by node takes seconds per call")
        return _onnx_graph_runner(model, backend, **options)
    feeds_in = {name: gn.input(name, shape, dtype=dtype)
                for name, (shape, dtype) in model.inputs.items()}
    params = [gn.param(name, value.copy()) for name, value in model.param_inits]
    out = model.forward(GraphnnOps, feeds_in["x"], params)
    t0 = time.perf_counter()
    if model.train:
        loss = model.loss(GraphnnOps, out, feeds_in["y"])
        f = gn.compile(loss, updates=gn.optim.SGD(lr=model.lr).updates(loss, params),
                       backend=backend, **options)
    else:
        f = gn.compile(out, backend=backend, **options)
    build = time.perf_counter() - t0
    feeds = dict(model.feeds)
    return Runner(lambda: f(**feeds), info={"build_s": build, "function": f})


def _eager_runner(model):
    if isinstance(model, OnnxModel):
        raise Skip("an ONNX file is a graph: no eager form")
    values = [v.copy() for _, v in model.param_inits]
    X, Y = model.feeds["x"], model.feeds.get("y")
    if not model.train:
        return Runner(lambda: model.forward(GraphnnOps, X, values))

    def loss_fn(*ps):
        return model.loss(GraphnnOps, model.forward(GraphnnOps, X, list(ps)), Y)

    grad_fn = gn.eager.value_and_grad(loss_fn, argnums=tuple(range(len(values))))
    lr = np.float32(model.lr)

    def step():
        loss, grads = grad_fn(*values)
        for v, g in zip(values, grads):
            v -= lr * g
        return loss
    return Runner(step)


def _cuda_runner(model):
    try:
        from numba import cuda
        from ..backends.cuda import simulator_enabled
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        raise Skip(f"numba.cuda not importable ({exc})")
    if simulator_enabled():
        raise Skip("the CUDA simulator is not a GPU (NUMBA_ENABLE_CUDASIM=1)")
    if not cuda.is_available():
        raise Skip("no GPU (numba.cuda.is_available() is False)")
    return _graph_runner(model, "cuda")


def _peer_missing(module):
    if importlib.util.find_spec(module) is None:
        raise Skip("not installed")


def _torch_runner(model, compiled=False):
    if isinstance(model, TorchvisionModel) and not compiled:
        return _torchvision_runner(model)
    if isinstance(model, OnnxModel):
        raise Skip("an ONNX file: see mode onnxruntime")
    _peer_missing("torch")
    import torch
    ops = TorchOps()
    params = [torch.tensor(v.copy(), requires_grad=model.train) for _, v in model.param_inits]
    x = torch.from_numpy(model.feeds["x"].copy())
    y = torch.from_numpy(model.feeds["y"].copy()) if model.train else None
    info = {}
    if not model.train:
        def forward():
            with torch.no_grad():
                return model.forward(ops, x, params)
        fn = torch.compile(forward) if compiled else forward
        return Runner(fn, lambda t: t.numpy(), info)

    def loss_fn():
        return model.loss(ops, model.forward(ops, x, params), y)
    loss_of = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        loss = loss_of()
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= model.lr * p.grad
                p.grad = None
        return loss.detach()
    return Runner(step, lambda t: t.numpy(), info)


def _torchvision_runner(model):
    _, _, x, reference = model.case()  # (Skip without torch, torchvision or onnx)
    import torch
    net = torchvision_models.build(model.arch)
    image = torch.from_numpy(x.copy())

    def forward():
        with torch.no_grad():
            return net(image)
    return Runner(forward, lambda t: t.numpy(), {"reference": reference})


def _jax_runner(model):
    if isinstance(model, OnnxModel):
        raise Skip("an ONNX file: see mode onnxruntime")
    _peer_missing("jax")
    import jax
    import jax.numpy as jnp
    ops = JaxOps()
    x = jnp.asarray(model.feeds["x"])
    if not model.train:
        params = [jnp.asarray(v) for _, v in model.param_inits]
        fwd = jax.jit(lambda ps, x: model.forward(ops, x, ps))
        return Runner(lambda: fwd(params, x).block_until_ready(), np.asarray)
    y = jnp.asarray(model.feeds["y"])

    def loss_fn(ps, x, y):
        return model.loss(ops, model.forward(ops, x, ps), y)

    @jax.jit
    def train(ps, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(ps, x, y)
        return loss, [p - model.lr * g for p, g in zip(ps, grads)]

    state = [[jnp.asarray(v) for _, v in model.param_inits]]

    def step():
        loss, state[0] = train(state[0], x, y)
        return loss.block_until_ready()
    return Runner(step, np.asarray)


MODE_BUILDERS = {
    "eager": _eager_runner,
    "numpy": lambda m: _graph_runner(m, "numpy"),
    "cpu": lambda m: _graph_runner(m, "cpu"),
    "cpu-fused": lambda m: _graph_runner(m, "cpu", library=False),
    "cpu-library": lambda m: _graph_runner(m, "cpu", library=True),
    "cuda": _cuda_runner,
    "torch": _torch_runner,
    "torch-compile": lambda m: _torch_runner(m, compiled=True),
    "jax": _jax_runner,
    "onnxruntime": _onnxruntime_runner,
}


# ---------------------------------------------------------------------------------------
# References timed in the same rounds


_MATMULS = None


def _matmuls_fn():
    """An @njit function doing exactly an MLP step's matmuls into preallocated arrays."""
    global _MATMULS
    if _MATMULS is None:
        from numba import njit

        from kernels.blas import GEMM

        @njit(cache=False)
        def matmuls(x, Ws, hs, gs, dWs, train):
            one, zero = np.float32(1), np.float32(0)
            n = len(Ws)
            GEMM(False, False, one, x, Ws[0], zero, hs[0])
            for k in range(1, n):
                GEMM(False, False, one, hs[k - 1], Ws[k], zero, hs[k])
            if train:
                for k in range(n - 1, -1, -1):
                    inp = x if k == 0 else hs[k - 1]
                    GEMM(True, False, one, inp, gs[k], zero, dWs[k])
                    if k > 0:
                        GEMM(False, True, one, gs[k], Ws[k], zero, gs[k - 1])
        _MATMULS = matmuls
    return _MATMULS


def _references(model):
    """{name: (callable, description)} timed beside the modes."""
    refs = {}
    if not (model.eltwise or model.mlp_sizes):
        return refs
    x = model.feeds["x"]
    if model.eltwise:
        dst = np.empty_like(x)
        refs["np.copyto"] = (lambda: np.copyto(dst, x),
                             "np.copyto of the same array: the memory-bandwidth reference")
    if model.mlp_sizes:
        fn = _matmuls_fn()
        batch = x.shape[0]
        Ws = tuple(v for name, v in model.param_inits if name.startswith("W"))
        hs = tuple(np.empty((batch, W.shape[1]), np.float32) for W in Ws)
        gs = tuple(np.full((batch, W.shape[1]), 1e-3, np.float32) for W in Ws)
        dWs = tuple(np.empty_like(W) for W in Ws)
        train = model.train
        fn(x, Ws, hs, gs, dWs, train)  # compile now, not in the rounds
        count = len(Ws) * (3 if train else 1) - (1 if train else 0)
        refs["matmuls only"] = (lambda: fn(x, Ws, hs, gs, dWs, train),
                                f"the step's {count} matmuls alone in one @njit function "
                                "(gemm into preallocated arrays): the BLAS floor")
    return refs


# ---------------------------------------------------------------------------------------
# Measuring


def _summary(times):
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "q1_s": q[0], "q3_s": q[2], "samples": len(times)}


def _agrees(value, reference):
    return bool(value.shape == reference.shape
                and np.allclose(value, reference, rtol=RTOL, atol=ATOL))


def _flat_first(a):
    return float(a.reshape(-1)[0]) if a.size else float("nan")


def run_workload(name, modes, repeat=200, budget=20.0, warmup=3, subprocess_info=True,
                 threads=None, log=print):
    """Measure one workload in every mode; returns its result row (see `check_schema`)."""
    model = WORKLOADS[name]()
    row = {"workload": name, "description": model.description, "train": model.train,
           "lr": model.lr, "modes": {}, "references": {}}
    runners = {}
    checks = {}
    for mode in modes:
        entry = row["modes"][mode] = {"status": "ok"}
        try:
            if hasattr(model, "prepare"):  # (an ONNX file: read and imported untimed)
                model.prepare(mode)
            t0 = time.perf_counter()
            runner = MODE_BUILDERS[mode](model)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = runner.value()
            first_call = time.perf_counter() - t0
            second = runner.value() if model.train else first
        except Skip as exc:
            entry.update(status="skipped", reason=str(exc))
            continue
        except Exception as exc:  # a peer that fails must not stop the benchmark
            entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:300])
            continue
        runners[mode] = runner
        checks[mode] = (first, second)
        if runner.info.get("reference") is not None:  # (an ONNX file's reference output)
            reference = runner.info["reference"]
            entry["max_abs_diff_vs_file"] = float(np.max(np.abs(
                np.asarray(first, np.float64) - reference))) \
                if np.shape(first) == reference.shape else float("inf")
        entry["first_value"] = _flat_first(first)
        entry["second_value"] = _flat_first(second)
        entry["compile"] = {"build_s": built, "first_call_s": first_call,
                            "total_s": built + first_call}
        f = runner.info.get("function")
        if f is not None and mode.startswith("cpu"):
            entry["compile"]["cache_hit"] = bool(f.stats.get("cache_hit"))
            entry["compile"]["kernels"] = f.stats.get("kernels")
            entry["compile"]["mode"] = f.stats.get("mode")
            entry["compile"]["kernels_compiled"] = f.stats.get("kernels_compiled")
    ok = list(runners)
    reference = "eager" if "eager" in ok else (ok[0] if ok else None)
    row["reference_mode"] = reference
    for mode in ok:
        first, second = checks[mode]
        ref_first, ref_second = checks[reference]
        row["modes"][mode]["agrees"] = (_agrees(first, ref_first)
                                        and _agrees(second, ref_second))
    refs = _references(model) if ok else {}
    row["references"] = {r: {"description": d} for r, (_, d) in refs.items()}
    calls = [(m, runners[m].step) for m in ok] + [(r, fn) for r, (fn, _) in refs.items()]
    times = {key: [] for key, _ in calls}
    for _ in range(warmup):
        for _, fn in calls:
            fn()
    started = time.perf_counter()
    # the process's CPU time per mode (all its threads) against the wall time around it
    cpu, wall = dict.fromkeys(times, 0.0), dict.fromkeys(times, 0.0)
    for r in range(max(repeat, 1)):
        for key, fn in calls:
            w0, c0 = time.perf_counter(), time.process_time()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            cpu[key] += time.process_time() - c0
            times[key].append(t1 - t0)
            wall[key] += time.perf_counter() - w0
        if r >= 4 and time.perf_counter() - started > budget:
            break
    row["rounds"] = len(times[calls[0][0]]) if calls else 0
    for key, samples in times.items():
        target = row["modes"][key] if key in runners else row["references"][key]
        target.update(_summary(samples))
        target["cores_used"] = cpu[key] / wall[key] if wall[key] else None
    if "eager" in ok:
        for m in ok:
            ratios = [e / t for e, t in zip(times["eager"], times[m])]
            row["modes"][m]["speedup_vs_eager"] = statistics.median(ratios)
    if "onnxruntime" in ok:  # (an ONNX workload: each mode's time against onnxruntime's)
        for m in ok:
            ratios = [t / o for t, o in zip(times[m], times["onnxruntime"])]
            row["modes"][m]["time_vs_onnxruntime"] = statistics.median(ratios)
    if LOOP_BLOCK > 1 and ok:
        _time_in_a_loop(row, [(m, runners[m].step) for m in ok], repeat, budget)
    if model.eltwise and "np.copyto" in row["references"]:
        copy_s = row["references"]["np.copyto"]["median_s"]
        nbytes = 2 * model.feeds["x"].nbytes  # one read and one write of the array
        row["bandwidth"] = {"bytes_moved": nbytes, "copyto_GBps": nbytes / copy_s / 1e9}
        for m in ok:
            row["modes"][m]["GBps"] = nbytes / row["modes"][m]["median_s"] / 1e9
            row["modes"][m]["share_of_copyto"] = copy_s / row["modes"][m]["median_s"]
    if model.eltwise and "cpu" in runners:
        row["held_results"] = _time_held_results(runners["cpu"].info["function"],
                                                 dict(model.feeds))
    if subprocess_info and "cpu" in ok:
        row["compile_at_scale"] = measure_compile_at_scale(name, threads)
    if subprocess_info:
        for m in ok:
            info = measure_in_new_process(name, m, threads)
            if m.startswith("cpu") and "error" not in info:  # warm load: median of 3
                samples = [info] + [measure_in_new_process(name, m, threads, steps=0)
                                    for _ in range(2)]
                samples = [x for x in samples if "error" not in x]
                info["warm_samples_s"] = [x["warm_total_s"] for x in samples]
                info["warm_total_s"] = statistics.median(info["warm_samples_s"])
                info["cache_hit"] = all(x["cache_hit"] for x in samples)
            row["modes"][m]["new_process"] = info
    log(format_row(row))
    return row


LOOP_BLOCK = 10  # steps run back to back per mode and round in the training-loop timing


def _time_in_a_loop(row, calls, repeat, budget):
    """The same modes timed as a training loop runs them: each round, every mode runs
    LOOP_BLOCK steps back to back (its code and data stay in the caches between steps), and
    the rounds interleave the modes as before. Per-step medians and per-round ratios."""
    times = {key: [] for key, _ in calls}
    started = time.perf_counter()
    for r in range(max(repeat // LOOP_BLOCK, 3)):
        for key, fn in calls:
            t0 = time.perf_counter()
            for _ in range(LOOP_BLOCK):
                fn()
            times[key].append((time.perf_counter() - t0) / LOOP_BLOCK)
        if r >= 2 and time.perf_counter() - started > budget / 2:
            break
    row["loop_block"] = LOOP_BLOCK
    row["loop_rounds"] = len(times[calls[0][0]])
    for key, samples in times.items():
        entry = row["modes"][key]
        entry["loop_median_s"] = statistics.median(samples)
        if "eager" in times:
            entry["loop_speedup_vs_eager"] = statistics.median(
                e / t for e, t in zip(times["eager"], samples))


def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak():
    """Reset VmHWM to the current resident size (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_in_new_process(workload, mode, threads=None, steps=20, timeout=600,
                           cache_dir=None):
    """Run `_child` in a fresh interpreter: warm build + first call time, and memory
    (with `cache_dir`, that kernel cache directory instead of this process's)."""
    args = json.dumps({"workload": workload, "mode": mode, "threads": threads,
                       "steps": steps})
    code = "import sys, graphnn.tools.bench as b; b._child(sys.argv[1])"
    env = dict(os.environ, GRAPHNN_QUIET="1")
    if cache_dir:
        env["GRAPHNN_CACHE_DIR"] = cache_dir
    try:
        out = subprocess.run([sys.executable, "-c", code, args], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["exit code %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(args_json):
    """In a new process: import times, build + first call (the warm load for cpu, which hits
    the cache the parent filled), and peak memory of building and running the step."""
    args = json.loads(args_json)
    t0 = time.perf_counter()
    importlib.import_module("numba")  # imported before the baseline by every mode alike
    numba_import = time.perf_counter() - t0
    peer = {"torch": "torch", "torch-compile": "torch", "jax": "jax",
            "onnxruntime": "onnxruntime"}.get(args["mode"])
    if peer == "jax" and _thread_count(args["threads"]):
        _start_jax(_thread_count(args["threads"]))
    elif peer:
        __import__(peer)
    _limit_threads(args["threads"])
    model = WORKLOADS[args["workload"]]()
    if hasattr(model, "prepare"):  # (an ONNX file: read and imported untimed)
        model.prepare(args["mode"])
    base_kib = _rss_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    runner = MODE_BUILDERS[args["mode"]](model)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.step()
    first_call = time.perf_counter() - t0
    build_peak = _rss_kib("VmHWM")
    steady = _rss_kib("VmRSS")
    resettable = _reset_peak()
    for _ in range(args["steps"]):
        runner.step()
    step_peak = _rss_kib("VmHWM")
    f = runner.info.get("function")
    result = {"numba_import_s": numba_import, "build_s": built, "first_call_s": first_call,
              "warm_total_s": built + first_call,
              "cache_hit": bool(f.stats.get("cache_hit")) if f is not None and
              args["mode"].startswith("cpu") else None,
              "baseline_MB": base_kib / 1024,
              "peak_rss_MB": max(build_peak, step_peak) / 1024,
              "peak_MB": (max(build_peak, step_peak) - base_kib) / 1024,
              "step_transient_MB": (step_peak - steady) / 1024 if resettable else None}
    if f is not None and args["mode"].startswith("cpu"):
        result.update({k: f.stats.get(k) for k in (
            "mode", "kernels", "library_kernels", "kernels_compiled", "kernels_cached")})
        # (and the kernels of gn.repeat's blocks it compiled with its own)
        if result["kernels_compiled"] is not None:
            result["kernels_compiled"] += f.stats.get("block_kernels_compiled") or 0
    print(json.dumps(result))


def measure_compile_at_scale(workload, threads=None, timeout=1800):
    """Cold and warm compile of the cpu mode, each in a fresh process: cold with an empty
    kernel cache directory (build + first call, and the process's peak resident set),
    warm with the cache the cold one filled."""
    cache = tempfile.mkdtemp(prefix="graphnn-bench-cold-")
    try:
        cold = measure_in_new_process(workload, "cpu", threads, steps=0, timeout=timeout,
                                      cache_dir=cache)
        if "error" in cold:
            return cold
        warm = measure_in_new_process(workload, "cpu", threads, steps=0, timeout=timeout,
                                      cache_dir=cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    blocks = getattr(WORKLOADS[workload](), "blocks", None)
    return {"cold_s": cold["warm_total_s"], "cold_build_s": cold["build_s"],
            "blocks": blocks,
            "cold_s_per_block": cold["warm_total_s"] / blocks if blocks else None,
            "peak_rss_MB": cold["peak_rss_MB"], "mode": cold.get("mode"),
            "steps": cold.get("kernels"), "library_kernels": cold.get("library_kernels"),
            "kernels_compiled": cold.get("kernels_compiled"),
            "warm_s": warm.get("warm_total_s"), "warm_error": warm.get("error"),
            "warm_kernels_compiled": warm.get("kernels_compiled")}


def _time_held_results(f, feeds, repeat=40):
    """An elementwise step timed as loops call it: `out = f(x=x)` (the caller holds the
    previous result during the call), `prev, out = out, f(x=x)` (two held), and the result
    dropped at once. Medians per call."""
    def held():
        out = f(**feeds)
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = f(**feeds)
            yield time.perf_counter() - t0
        del out

    def held_two():
        prev = out = f(**feeds)
        for _ in range(repeat):
            t0 = time.perf_counter()
            prev, out = out, f(**feeds)
            yield time.perf_counter() - t0
        del prev, out

    def dropped():
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(**feeds)
            yield time.perf_counter() - t0
    times = {"held_s": [], "held_two_s": [], "dropped_s": []}
    for _ in range(3):  # interleaved rounds
        for key, loop in (("held_s", held), ("held_two_s", held_two), ("dropped_s", dropped)):
            times[key] += list(loop())
    return {key: statistics.median(v) for key, v in times.items()}


# ---------------------------------------------------------------------------------------
# Output


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def format_row(row):
    lines = [f"\n{row['workload']}: {row['description']}  "
             f"({row['rounds']} interleaved rounds; reference for the check: "
             f"{row['reference_mode']})"]
    for m, r in row["modes"].items():
        if r["status"] != "ok":
            lines.append(f"  {m:14s} {r['status']} ({r['reason']})")
            continue
        ratio = f"{r['speedup_vs_eager']:8.2f}x eager" if "speedup_vs_eager" in r else ""
        check = "ok" if r["agrees"] else "DIFFERS"
        extra = ""
        if "share_of_copyto" in r:
            extra = f"  {r['GBps']:.1f} GB/s = {100 * r['share_of_copyto']:.0f}% of copyto"
        if r.get("cores_used") and r["median_s"] >= CORES_SHOWN_FROM_S:
            extra += f"  on {r['cores_used']:.1f} cores"
        lines.append(f"  {m:14s} median {_fmt_time(r['median_s']):>10s}  IQR "
                     f"[{_fmt_time(r['q1_s'])} .. {_fmt_time(r['q3_s'])}]  {ratio}  "
                     f"loss/out {r['first_value']:.6g}, {r['second_value']:.6g} {check}{extra}")
    loops = [(m, r) for m, r in row["modes"].items() if "loop_median_s" in r]
    if loops:
        lines.append(f"  in a training loop ({row['loop_block']} steps back to back per mode "
                     f"and round, {row['loop_rounds']} rounds): " + ", ".join(
                         f"{m} {_fmt_time(r['loop_median_s'])}"
                         + (f" ({r['loop_speedup_vs_eager']:.1f}x)"
                            if "loop_speedup_vs_eager" in r and m != "eager" else "")
                         for m, r in loops))
    for name, r in row["references"].items():
        lines.append(f"  {name:14s} median {_fmt_time(r['median_s']):>10s}  ({r['description']})")
    versus = [(m, r) for m, r in row["modes"].items()
              if "time_vs_onnxruntime" in r and m != "onnxruntime"]
    if versus:
        lines.append("  time / onnxruntime's (median of per-round ratios): " + ", ".join(
            f"{m} {r['time_vs_onnxruntime']:.2f}x" for m, r in versus))
    diffs = [(m, r) for m, r in row["modes"].items() if "max_abs_diff_vs_file" in r]
    if diffs:
        lines.append("  largest difference from the file's reference output: " + ", ".join(
            f"{m} {r['max_abs_diff_vs_file']:.1e}" for m, r in diffs))
    if "bandwidth" in row:
        lines.append(f"  np.copyto moves {row['bandwidth']['copyto_GBps']:.1f} GB/s "
                     "(read + write)")
    for m, r in row["modes"].items():
        c = r.get("compile")
        if r["status"] != "ok" or m not in ("cpu", "cpu-fused", "cpu-library", "cuda", "jax",
                                            "torch-compile"):
            continue
        text = f"  compile {m}: first build + call {c['total_s']:.2f} s"
        if "cache_hit" in c:
            text += f" (cache {'hit' if c['cache_hit'] else 'miss: cold'})"
        n = r.get("new_process")
        if n and "error" not in n:
            text += (f"; new process: build {n['build_s']:.2f} s + first call "
                     f"{n['first_call_s']:.2f} s")
            if "warm_samples_s" in n:
                text += (f", median of {len(n['warm_samples_s'])} processes "
                         f"{n['warm_total_s']:.2f} s")
            else:
                text += f" = {n['warm_total_s']:.2f} s"
            if n.get("cache_hit") is not None:
                text += f" (cache {'hit' if n['cache_hit'] else 'MISS'})"
            text += f", numba import {n['numba_import_s']:.2f} s"
        lines.append(text)
    held = row.get("held_results")
    if held:
        lines.append(f"  cpu in an ordinary loop: out = f(x=x) {_fmt_time(held['held_s'])}, "
                     f"prev, out = out, f(x=x) {_fmt_time(held['held_two_s'])}, "
                     f"result dropped {_fmt_time(held['dropped_s'])}")
    scale = row.get("compile_at_scale")
    if scale and "error" not in scale:
        per = (f" = {scale['cold_s_per_block'] * 1e3:.1f} ms per block"
               if scale.get("cold_s_per_block") else "")
        warm = (f"{scale['warm_s']:.2f} s" if scale.get("warm_s") is not None
                else f"failed ({scale.get('warm_error')})")
        lines.append(f"  compile cpu in a fresh process, empty cache: {scale['cold_s']:.2f} s"
                     f"{per}, peak RSS {scale['peak_rss_MB']:.0f} MB ({scale['mode']} mode, "
                     f"{scale['steps']} steps, {scale['kernels_compiled']} kernels "
                     f"compiled); warm (new process, cache filled) {warm}")
    elif scale:
        lines.append(f"  compile cpu in a fresh process failed: {scale['error']}")
    mem = [(m, r["new_process"]) for m, r in row["modes"].items()
           if r.get("new_process") and "error" not in r["new_process"]]
    if mem:
        lines.append("  peak memory above baseline (build + run / steps alone): " + ", ".join(
            f"{m} {n['peak_MB']:.0f}/{(n['step_transient_MB'] or 0):.0f} MB" for m, n in mem))
    errors = [(m, r["new_process"]["error"]) for m, r in row["modes"].items()
              if r.get("new_process") and "error" in r["new_process"]]
    for m, e in errors:
        lines.append(f"  new process for {m} failed: {e}")
    return "\n".join(lines)


def format_table(result):
    """A Markdown table: median step time per workload (rows) and mode (columns), with the
    speed-up over eager."""
    modes = []
    for row in result["workloads"]:
        for m, r in row["modes"].items():
            if m not in modes and r["status"] == "ok":
                modes.append(m)
    lines = ["| workload | " + " | ".join(modes) + " | reference | cpu in a training loop "
             "| cpu compile cold / warm |",
             "|---|" + "---|" * len(modes) + "---|---|---|"]
    for row in result["workloads"]:
        cells = []
        for m in modes:
            r = row["modes"].get(m)
            if not r or r["status"] != "ok":
                cells.append("skipped" if r and r["status"] == "skipped" else "–")
                continue
            cell = _fmt_time(r["median_s"])
            if "speedup_vs_eager" in r and m != "eager":
                cell += f" ({r['speedup_vs_eager']:.1f}x)"
            if "time_vs_onnxruntime" in r and m != "onnxruntime":
                cell += f" ({r['time_vs_onnxruntime']:.2f}x onnxruntime's time)"
            if not r["agrees"]:
                cell += " DIFFERS"
            cells.append(cell)
        cpu = row["modes"].get("cpu", {})
        loop = "–"
        if "loop_median_s" in cpu:
            loop = _fmt_time(cpu["loop_median_s"])
            if "loop_speedup_vs_eager" in cpu:
                loop += f" ({cpu['loop_speedup_vs_eager']:.1f}x)"
        comp = "–"
        if cpu.get("status") == "ok":
            # cold: a fresh process with an empty cache when it was measured; else the first
            # build in this run (which may find kernels an earlier workload compiled)
            scale = row.get("compile_at_scale") or {}
            cold = scale.get("cold_s") if "error" not in scale else None
            comp = f"{cpu['compile']['total_s'] if cold is None else cold:.2f} s"
            n = cpu.get("new_process")
            if n and "error" not in n:
                comp += f" / {n['warm_total_s']:.2f} s"
        ref = ", ".join(f"{k} {_fmt_time(r['median_s'])}" for k, r in row["references"].items()
                        if "median_s" in r) or "–"
        lines.append(f"| {row['workload']} | " + " | ".join(cells)
                     + f" | {ref} | {loop} | {comp} |")
    skipped = {}
    for row in result["workloads"]:
        for m, r in row["modes"].items():
            if r["status"] != "ok":
                skipped.setdefault(f"{m}: {r['status']} ({r['reason']})", None)
    return "\n".join(lines + [f"\n{s}" for s in skipped])


def format_scale_table(result):
    """A Markdown table of the residual stacks' cold compiles, one row per family measured
    at two depths or more (resmlp-10, resmlp-100, ...): each depth's time, the deepest
    against the shallowest, the time each block adds between them, the kernels compiled
    at each depth and the largest peak RSS. "" when no family has two depths."""
    families = {}
    for row in result["workloads"]:
        scale = row.get("compile_at_scale") or {}
        if "error" in scale or not scale.get("blocks") or scale.get("cold_s") is None:
            continue
        family = row["workload"].rsplit("-", 1)[0]
        families.setdefault(family, []).append((scale["blocks"], scale))
    lines = []
    for family, depths in families.items():
        if len(depths) < 2:
            continue
        depths.sort(key=lambda d: d[0])
        (n0, first), (n1, last) = depths[0], depths[-1]
        added = (last["cold_s"] - first["cold_s"]) / (n1 - n0)
        kernels = sorted({d["kernels_compiled"] for _, d in depths if d.get("kernels_compiled")
                          is not None})
        lines.append(f"| {family} | " + ", ".join(f"{n}: {d['cold_s']:.2f} s" for n, d in depths)
                     + f" | {last['cold_s'] / first['cold_s']:.2f}x | {added * 1e3:.2f} ms | "
                     + (f"{kernels[0]} at every depth" if len(kernels) == 1 else
                        ", ".join(f"{n}: {d.get('kernels_compiled')}" for n, d in depths))
                     + f" | {max(d['peak_rss_MB'] for _, d in depths):.0f} MB |")
    if not lines:
        return ""
    return "\n".join(["| stack | cold compile (blocks: fresh process, empty cache) | deepest / "
                      "shallowest | added per block | kernels compiled | peak RSS |",
                      "|---|---|---|---|---|---|"] + lines)


def plot(result, path):
    """Bar chart (log scale) of the median step time per workload and mode; the whiskers
    span the interquartile range."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["workloads"]
    modes = []
    for row in rows:
        for m, r in row["modes"].items():
            if r["status"] == "ok" and m not in modes:
                modes.append(m)
    refs = []
    for row in rows:
        for name in row["references"]:
            if name not in refs:
                refs.append(name)
    series = modes + refs
    colors = dict(zip(series, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(rows) + 2), 5.2))
    drawn = set()
    for j, row in enumerate(rows):
        present = []  # the bars of this workload, side by side and centred on its tick
        for key in series:
            r = row["modes"].get(key) or row["references"].get(key)
            if r and r.get("status", "ok") == "ok" and "median_s" in r:
                present.append((key, r))
        width = 0.8 / max(len(present), 1)
        for i, (key, r) in enumerate(present):
            x, y = j - 0.4 + width * (i + 0.5), r["median_s"]
            err = [[y - r["q1_s"]], [r["q3_s"] - y]]
            hatch = "//" if key in refs else None
            ax.bar([x], [y], width, yerr=err, color=colors[key], hatch=hatch,
                   edgecolor="white" if hatch else None, capsize=2, error_kw={"lw": 0.8},
                   label=None if key in drawn else key)
            drawn.add(key)
            ax.text(x, r["q3_s"] * 1.12, _fmt_time(y).replace(" ", "\u2009"), rotation=90,
                    ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row["workload"] for row in rows], rotation=20, ha="right")
    ax.set_ylabel("median time per step (s, log scale)")
    smallest = min((r["median_s"] for row in rows
                    for r in list(row["modes"].values()) + list(row["references"].values())
                    if "median_s" in r), default=1e-6)
    ax.set_ylim(smallest / 3, ax.get_ylim()[1] * 8)  # bars visible; room for the labels
    env = result.get("environment", {})
    ax.set_title(f"graphnn bench: step time per workload and mode "
                 f"({env.get('cpu', '?')}, BLAS threads {env.get('blas_threads', '?')})",
                 fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(ncol=min(len(series), 4), fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# The JSON document


def check_schema(result):
    """Raise ValueError unless `result` has the shape `graphnn bench --json` writes:

    {"schema": "graphnn-bench/1", "environment": {...}, "options": {...},
     "workloads": [{"workload", "description", "train", "lr", "rounds", "reference_mode",
                    "modes": {mode: {"status": "ok", "median_s", "min_s", "max_s", "q1_s",
                                     "q3_s", "samples", "first_value", "second_value",
                                     "agrees", "compile": {...}, ["speedup_vs_eager"],
                                     ["loop_median_s", "loop_speedup_vs_eager"],
                                     ["new_process"]}
                                   | {"status": "skipped" | "failed", "reason"}},
                    "references": {name: {"description", "median_s", ...}},
                    ["bandwidth": {"bytes_moved", "copyto_GBps"}]}]}
    """
    def need(obj, key, types, where):
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: missing {key!r}")
        if not isinstance(obj[key], types):
            raise ValueError(f"{where}.{key}: expected {types}, got {type(obj[key]).__name__}")
        return obj[key]

    number = (int, float)
    if need(result, "schema", str, "result") != SCHEMA:
        raise ValueError(f"result.schema: expected {SCHEMA!r}")
    need(result, "environment", dict, "result")
    need(result, "options", dict, "result")
    for i, row in enumerate(need(result, "workloads", list, "result")):
        where = f"workloads[{i}]"
        for key, types in (("workload", str), ("description", str), ("train", bool),
                           ("rounds", int), ("modes", dict), ("references", dict)):
            need(row, key, types, where)
        if row.get("reference_mode") is not None and row["reference_mode"] not in row["modes"]:
            raise ValueError(f"{where}.reference_mode names no mode")
        for mode, r in row["modes"].items():
            w = f"{where}.modes.{mode}"
            status = need(r, "status", str, w)
            if status in ("skipped", "failed"):
                need(r, "reason", str, w)
                continue
            if status != "ok":
                raise ValueError(f"{w}.status: {status!r}")
            for key in ("median_s", "min_s", "max_s", "q1_s", "q3_s", "first_value",
                        "second_value"):
                need(r, key, number, w)
            need(r, "samples", int, w)
            need(r, "agrees", bool, w)
            need(need(r, "compile", dict, w), "total_s", number, w + ".compile")
            if not r["min_s"] <= r["median_s"] <= r["max_s"]:
                raise ValueError(f"{w}: median outside [min, max]")
            for key in ("speedup_vs_eager", "loop_median_s", "loop_speedup_vs_eager"):
                if key in r:
                    need(r, key, number, w)
        for name, r in row["references"].items():
            need(r, "description", str, f"{where}.references.{name}")
            need(r, "median_s", number, f"{where}.references.{name}")
        if "bandwidth" in row:
            need(row["bandwidth"], "copyto_GBps", number, where + ".bandwidth")
    return True


def _blas_description():
    from kernels import blas
    try:
        text = blas.describe()
    except blas.BlasNotFound:
        return "none found"
    # set in the environment, these override OpenBLAS's own choice of kernels for the CPU
    forced = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
              if k in os.environ]
    return text + (f" (set by the environment: {', '.join(forced)})" if forced else "")


def _blas_threads():
    from kernels import blas
    count = blas.threads()
    return os.environ.get("OPENBLAS_NUM_THREADS", "unset") if count is None else count


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment():
    import numba
    env = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "numba": numba.__version__,
           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
           "blas_threads": _blas_threads(), "blas": _blas_description()}
    with contextlib.suppress(OSError):
        env["load_average"] = list(os.getloadavg())
    for peer in ("torch", "jax"):
        if importlib.util.find_spec(peer) is not None:
            with contextlib.suppress(Exception):
                env[peer] = __import__(peer).__version__
    return env


JAX_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
# A mode's cores (its process CPU time over wall time while it runs) are printed for steps
# of at least this long (shorter ones are dominated by the timers' own cost)
CORES_SHOWN_FROM_S = 1e-4


def _start_jax(threads):
    """Import jax and start its CPU client on `threads` cores. XLA_FLAGS reach only Eigen's
    threads (matmuls, convolutions); XLA also splits large elementwise loops over a pool it
    sizes from the CPU affinity when the client starts (an eltwise step ran on 1.8 cores
    with the flags alone). So the affinity is narrowed while the client starts, then
    restored: the pool keeps its size."""
    os.environ.setdefault("XLA_FLAGS", JAX_ONE_THREAD)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    narrowed = bool(allowed) and len(allowed) > threads
    if narrowed:
        os.sched_setaffinity(0, sorted(allowed)[:threads])
    try:
        import jax
        jax.numpy.zeros(1).block_until_ready()  # (creates the client and its pool)
    finally:
        if narrowed:
            os.sched_setaffinity(0, allowed)


def _thread_count(threads):
    """The thread count in force: `threads`, else OPENBLAS_NUM_THREADS, else None."""
    if threads:
        return threads
    env = os.environ.get("OPENBLAS_NUM_THREADS")
    return int(env) if env and env.isdigit() else None


def _limit_threads(threads):
    """BLAS threads (numpy's OpenBLAS, shared by eager and compiled steps) and PyTorch's."""
    threads = _thread_count(threads)
    if not threads:
        return
    from kernels import blas
    blas.set_threads(threads)  # numpy's OpenBLAS, which graphnn's compiled matmuls call too
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def run(workloads, modes, repeat=200, budget=20.0, warmup=3, subprocess_info=True,
        threads=None, log=print):
    """Measure `workloads` x `modes`; returns the JSON-ready result (see `check_schema`)."""
    t0 = time.perf_counter()
    importlib.import_module("numba")  # not to be counted in the first cold compile
    numba_import = time.perf_counter() - t0
    jax_threads = None
    if "jax" in modes and "jax" not in sys.modules and _thread_count(threads) \
            and importlib.util.find_spec("jax") is not None:
        # XLA sizes its threads once, when its client starts: as many as the rest
        with contextlib.suppress(Exception):
            _start_jax(_thread_count(threads))
            jax_threads = _thread_count(threads)
    for peer, module in (("torch", "torch"), ("torch-compile", "torch"), ("jax", "jax")):
        if peer in modes and importlib.util.find_spec(module) is not None:
            with contextlib.suppress(Exception):
                __import__(module)
    _limit_threads(threads)
    if "jax" in modes and "jax" in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        log(f"jax: XLA_FLAGS={flags!r}, " + (
            f"its client started on {jax_threads} core(s)" if jax_threads else
            "XLA's own thread count (may use every core)"))
    env = environment()
    env["numba_import_s"] = numba_import
    log(f"graphnn bench on {env['cpu']} ({env['cores']} cores), numpy {env['numpy']}, "
        f"numba {env['numba']}, {env['blas']}, BLAS threads {env['blas_threads']}, "
        f"load average {env.get('load_average')}")
    result = {"schema": SCHEMA, "environment": env,
              "options": {"workloads": list(workloads), "modes": list(modes),
                          "repeat": repeat, "budget_s": budget, "warmup": warmup,
                          "new_process": subprocess_info, "threads": threads,
                          "cache_dir": os.environ.get("GRAPHNN_CACHE_DIR"),
                          "rtol": RTOL, "atol": ATOL,
                          "lr": LR},  # (each workload's own: its "lr")
              "workloads": []}
    for name in workloads:
        result["workloads"].append(run_workload(name, modes, repeat, budget, warmup,
                                                subprocess_info, threads, log))
    with contextlib.suppress(OSError):
        env["load_average_end"] = list(os.getloadavg())
    env["seconds"] = time.perf_counter() - t0
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="graphnn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="all",
                        help=f"comma-separated, or 'all': {','.join(DEFAULT_WORKLOADS)}; "
                             f"compile at scale: {','.join(SCALE_WORKLOADS)}; ImageNet "
                             f"models from ONNX files: 'onnx' or {','.join(ONNX_WORKLOADS)}; "
                             f"torchvision's exports: 'torchvision' or "
                             f"{','.join(TORCHVISION_WORKLOADS)}")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated from {','.join(ALL_MODES)} "
                             f"(default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--repeat", type=int, default=None,
                        help="interleaved rounds per workload at most (default 200)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per workload at most (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS (and PyTorch) threads; default: OPENBLAS_NUM_THREADS "
                             "if set, else the libraries' own")
    parser.add_argument("--quick", action="store_true",
                        help="few rounds, 1 s budget, no new processes (no warm-load time "
                             "and no memory): the whole run in under a minute")
    parser.add_argument("--no-new-process", action="store_true",
                        help="skip the new-process warm load and memory measurement")
    parser.add_argument("--cache-dir", default=None,
                        help="compile cache directory (default: a fresh temporary one, "
                             "removed afterwards, so the first compile is cold; with --quick "
                             "the usual one, $GRAPHNN_CACHE_DIR or ~/.cache/graphnn)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--plot", default=None, help="write a bar chart (PNG) to this file")
    parser.add_argument("--load", default=None, metavar="JSON",
                        help="measure nothing: print the table (and --plot) of a saved result")
    args = parser.parse_args(argv)
    workloads = list(DEFAULT_WORKLOADS) if args.workloads == "all" else \
        [w for w in args.workloads.split(",") if w]
    groups = {"onnx": ONNX_WORKLOADS, "torchvision": TORCHVISION_WORKLOADS}
    workloads = [n for w in workloads for n in groups.get(w, [w])]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODE_BUILDERS]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODE_BUILDERS)}")
    args.workload_list, args.mode_list = workloads, modes
    if args.repeat is None:
        args.repeat = 10 if args.quick else 200
    if args.budget is None:
        args.budget = 1.0 if args.quick else 20.0
    args.warmup = 1 if args.quick else 3
    args.new_process = not (args.quick or args.no_new_process)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].endswith(".py"):  # graphnn bench my_model.py: the user's own model
        from . import bench_model
        return bench_model.main(argv)
    args = parse_args(argv)
    if args.load:
        with open(args.load) as fh:
            result = json.load(fh)
        check_schema(result)
        return _report(result, args)
    fresh, previous = None, os.environ.get("GRAPHNN_CACHE_DIR")
    if args.cache_dir:
        os.environ["GRAPHNN_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    elif not args.quick:
        fresh = tempfile.mkdtemp(prefix="graphnn-bench-cache-")
        os.environ["GRAPHNN_CACHE_DIR"] = fresh
    try:
        result = run(args.workload_list, args.mode_list, args.repeat, args.budget,
                     args.warmup, args.new_process, args.threads)
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)
        # the benchmark's cache directory is for the benchmark only
        if previous is None:
            os.environ.pop("GRAPHNN_CACHE_DIR", None)
        else:
            os.environ["GRAPHNN_CACHE_DIR"] = previous
    check_schema(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return _report(result, args)


def _report(result, args):
    print("\nmedian step time (speed-up over eager, median of per-round ratios):\n")
    print(format_table(result))
    scale = format_scale_table(result)
    if scale:
        print("\ncompile at scale (cold compile against depth):\n")
        print(scale)
    print(_trust_note(result))
    if args.json and not args.load:
        print("wrote", args.json)
    if args.plot:
        print("wrote", plot(result, args.plot))
    return 1 if any(not r.get("agrees", True) for row in result["workloads"]
                    for r in row["modes"].values()) else 0


def _trust_note(result):
    """The BLAS thread count the run used, and a warning when the machine was loaded."""
    from .bench_model import load_note
    env = result.get("environment", {})
    def loads(key):
        return ", ".join(f"{x:.2f}" for x in env[key]) if env.get(key) else "?"
    lines = [f"\nBLAS threads: {env.get('blas_threads', '?')} for every graphnn mode "
             f"(OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS', 'unset')}); load average "
             f"{loads('load_average')} at the start, {loads('load_average_end')} at the end"]
    if env.get("OPENBLAS_NUM_THREADS", "unset") == "unset" and not result.get(
            "options", {}).get("threads"):
        lines.append("WARNING: BLAS threads were left to the libraries (no --threads and no "
                     "OPENBLAS_NUM_THREADS): thread pools that spin fight over the cores, "
                     "which can slow a peer's step by 100x on a loaded machine; rerun with "
                     "--threads 1")
    load = env.get("load_average")
    if load is not None:
        note = load_note(env.get("cores"), load[0])
        if note:
            lines.append(note)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
