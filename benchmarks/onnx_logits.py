"""How closely graphnn's cpu back end follows onnxruntime on the onnx package's light
ImageNet models with weights like a trained network's: each ConstantOfShape weight
replaced by He-scaled random numbers (conv and dense kernels N(0, 2 / fan-in), batch-norm
scales near 1, biases and means near 0, variances near 1), the final Softmax cut off so
the logits are compared (a softmax of large logits would hide differences), and a random
normal input. Prints each model's logit scale and the largest difference, absolute and
relative to that scale.

    OPENBLAS_NUM_THREADS=1 python benchmarks/onnx_logits.py [squeezenet,resnet50,...]
"""
import os
import sys
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphnn as gn  # noqa: E402
from graphnn.tools.bench_onnx import MODELS, light_case  # noqa: E402


def realistic(path, seed=0):
    """A copy of the light model at `path` (a temporary file): trained-like weights, no
    final Softmax."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    users = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, k))
    rng = np.random.default_rng(seed)
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else \
            np.zeros(1, np.float32)
        op, k = users.get(node.output[0], [(None, -1)])[0]
        if op == "Conv" and k == 1:
            array = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif op in ("Gemm", "MatMul") and k == 1:
            array = rng.standard_normal(shape) * np.sqrt(1.0 / max(shape))
        elif op == "BatchNormalization":
            array = {1: 1 + 0.1 * rng.standard_normal(shape),
                     2: 0.1 * rng.standard_normal(shape), 3: 0.1 * rng.standard_normal(shape),
                     4: 1 + 0.1 * rng.uniform(0, 1, shape)}[k]
        elif op == "Add" or (op in ("Conv", "Gemm") and k == 2):
            array = 0.05 * rng.standard_normal(shape)
        else:
            array = np.broadcast_to(value.reshape(-1)[0], shape)
        graph.initializer.append(numpy_helper.from_array(
            np.asarray(array).astype(value.dtype), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    if graph.node[-1].op_type == "Softmax":
        graph.output[0].name = graph.node[-1].input[0]
        del graph.node[-1]
    out = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False).name
    onnx.save(model, out)
    return out


def main(names):
    import onnxruntime as ort
    for name in names:
        path, inp, x, _ = light_case(name)
        path = realistic(path)
        x = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        theirs = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) \
            .run(None, {inp: x})[0]
        outs, _ = gn.onnx.load(path, frozen=True)
        ours = np.asarray(gn.compile(outs[0], backend="cpu", progress=False)(**{inp: x}))
        diff = float(np.abs(ours.reshape(theirs.shape) - theirs).max())
        scale = float(np.abs(theirs).max())
        print(f"{name:14s} logits up to {scale:9.3g}  largest difference {diff:.2e} "
              f"({diff / scale:.1e} of the scale)", flush=True)
        os.unlink(path)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else MODELS)
