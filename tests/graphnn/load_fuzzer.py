"""One example of the gn.load fuzzer per seed: build a random small graph, gn.save it, mutate
the saved JSON and arrays, gn.load the result; a load that succeeds must compile on cpu and
give the numpy back end's numbers. Run by tests/graphnn/test_fuzz_load.py in a child process
(so that a crash is caught with its seed); run it by hand to replay a seed:

    PYTHONPATH=. python tests/graphnn/load_fuzzer.py 17        # one seed, shows its files
    PYTHONPATH=. python tests/graphnn/load_fuzzer.py 0 50      # seeds 0..49

Each seed prints "seed <n>" before it starts (flushed), then "ok <n> <outcome>"; on the
first wrong outcome it prints the traceback and exits with status 1.
"""
import copy
import hashlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import traceback

import numpy as np

import graphnn as gn
from graphnn.registry import OPS

DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64"]
GARBAGE = [None, True, False, -1, 0, 1, 2, 3, 7, -7, 2**31, 2**40, -2**63, 1.5, float("inf"),
           "", "?", "?n", "?1", "same", "valid", "nan", "inf", "float32", "int64", [], [0],
           [1, 2], [-1], ["?1"], {}, {"a": 1}]


# ---------------------------------------------------------------------------------------
# Random small graphs, built with gn's ops
# ---------------------------------------------------------------------------------------

def random_graph(rng):
    """Output nodes of a random small graph: a few ops of one family, and sometimes the
    gradient of a scalar loss on top (gradient graphs hold the *_grad ops)."""
    dtype = str(rng.choice(["float32", "float64"]))
    family = str(rng.choice(["elementwise", "reduce", "matmul", "layout", "conv", "pool"]))
    n = lambda shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)  # noqa: E731
    wrt = []
    if family in ("conv", "pool"):
        batch = None if rng.random() < 0.3 else 2
        x = gn.input("x", (batch, int(rng.integers(3, 7)), int(rng.integers(3, 7)), 2), dtype)
        y = x
        if family == "conv":
            w = gn.param("w", n((int(rng.integers(1, 4)), int(rng.integers(1, 4)), 2, 3), 0.5),
                         dtype=dtype)
            wrt.append(w)
            y = gn.conv2d(y, w, int(rng.integers(1, 3)), str(rng.choice(["valid", "same"])))
        pool = gn.max_pool2d if rng.random() < 0.5 else gn.avg_pool2d
        size = int(rng.integers(1, 3))
        if min(y.shape[1], y.shape[2]) >= size:
            y = pool(y, size, int(rng.integers(1, 3)))
        y = gn.relu(y) if rng.random() < 0.5 else gn.tanh(y)
    elif family == "matmul":
        x = gn.input("x", (None if rng.random() < 0.3 else 3, 4), dtype)
        w = gn.param("w", n((4, 2)), dtype=dtype)
        b = gn.const(n((2,)))
        wrt.append(w)
        y = gn.sigmoid(x @ w + b)
    elif family == "layout":
        x = gn.input("x", (2, 3, 4), dtype)
        z = gn.input("z", (2, 3, 4), dtype)
        parts = [gn.transpose(x, (1, 0, 2)), gn.transpose(z * 2.0, (1, 0, 2))]
        y = gn.concat(parts, axis=int(rng.integers(0, 3)))
        y = gn.slice_axis(y, 0, int(rng.integers(0, 2)), int(rng.integers(2, 4)))
        y = gn.reshape(y, (-1, int(rng.choice([2, 4]))))
        y = gn.ops.pad_axis(y, int(rng.integers(0, 2)), int(rng.integers(0, 3)),
                            int(rng.integers(0, 3)))
        y = gn.square(y)
    else:
        x = gn.input("x", (3, 4), dtype)
        z = gn.input("z", (4,), dtype)
        y = gn.maximum(x, z) * gn.exp(gn.tanh(x)) - gn.minimum(x, 0.5)
        if family == "reduce":
            fn = [gn.sum, gn.mean, gn.max][int(rng.integers(0, 3))]
            y = fn(y, axis=[None, 0, 1, -1][int(rng.integers(0, 4))],
                   keepdims=bool(rng.random() < 0.5))
        y = gn.leaky_relu(y, 0.1) + gn.clip(y, -1.0, 1.0)
    outputs = [y]
    if rng.random() < 0.6:
        loss = gn.sum(gn.square(y)) if rng.random() < 0.5 else gn.mean(y)
        outputs = [loss] + gn.grad(loss, [x] + wrt)
    if rng.random() < 0.2:
        outputs.append(outputs[0])  # the same node twice
    return outputs


# ---------------------------------------------------------------------------------------
# Mutations of the saved pair
# ---------------------------------------------------------------------------------------

def pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def mutate_value(rng, value):
    """Something near `value` (a nudged int, a list one longer...) or something else."""
    r = rng.random()
    if isinstance(value, bool) or r < 0.3:
        return copy.deepcopy(pick(rng, GARBAGE))
    if isinstance(value, int):
        return int(value + pick(rng, [-2, -1, 1, 2, 5])) if r < 0.8 else -value
    if isinstance(value, float):
        return pick(rng, [0.0, -value, value * 1e30, "nan", "-inf", 1])
    if isinstance(value, str):
        if value in ("valid", "same"):
            return {"valid": "same", "same": "valid"}[value] if r < 0.8 else "full"
        if value in DTYPES:
            return pick(rng, DTYPES)
        return pick(rng, ["?fz", "?1", "?2", value + "x", 3])
    if isinstance(value, list):
        value = list(value)
        if value and r < 0.7:
            i = int(rng.integers(0, len(value)))
            value[i] = mutate_value(rng, value[i])
        elif value and r < 0.85:
            del value[int(rng.integers(0, len(value)))]
        else:
            value.append(pick(rng, [0, 1, 2, -1, "?1", value[-1] if value else 3]))
        return value
    if isinstance(value, dict) and value:
        value = dict(value)
        key = pick(rng, sorted(value))
        value[key] = mutate_value(rng, value[key])
        return value
    return copy.deepcopy(pick(rng, GARBAGE))


PLAUSIBLE = {"axis": [None, 0, 1, -1, [0, 1]], "keepdims": [True, False],
             "from_logits": [True, False], "float_only": [False], "alpha": [0.1, "inf"],
             "low": [-1.0], "high": [1.0, "nan"], "stride": [1, 2, 3], "size": [1, 2, 3],
             "classes": [1, 3], "start": [0, 1], "stop": [1, 2, 9], "before": [0, 1],
             "after": [0, 2], "padding": ["valid", "same"], "dtype": ["float32", "int32"],
             "shape": [[-1], [2, -1], ["?1", 2]]}


def plausible_attrs(rng, op, ndim):
    """Attrs of the right names and types for `op`, with values that often fit."""
    names = [p for p in inspect.signature(OPS[op].infer).parameters
             if p not in ("specs", "attrs", "float_only")]
    attrs = {}
    for name in names:
        if name == "axes":
            attrs[name] = [int(v) for v in rng.permutation(max(ndim, 1))]
        else:
            attrs[name] = copy.deepcopy(pick(rng, PLAUSIBLE.get(name, [0])))
    return attrs


def mutate_document(rng, doc, arrays, duplicates):
    """One mutation of the JSON document (in place), of its arrays or of the file's text."""
    nodes = doc["nodes"]
    i = int(rng.integers(0, len(nodes)))
    node = nodes[i]
    ops = [k for k in node if k in ("shape", "dtype", "inputs", "attrs", "op", "name")]
    kind = pick(rng, ["shape", "shape", "attrs", "attrs", "attrs", "dtype", "inputs", "inputs",
                      "op", "drop", "duplicate", "outputs", "array", "array", "order", "top"])
    if kind == "shape":
        node["shape"] = mutate_value(rng, node["shape"])
    elif kind == "attrs" and node.get("attrs"):
        node["attrs"] = mutate_value(rng, node["attrs"])
    elif kind == "attrs" and "attrs" in node:
        node["attrs"] = {pick(rng, ["axis", "stride", "size", "keepdims", "padding", "alpha",
                                    "shape", "axes", "dtype", "bogus"]): pick(rng, GARBAGE)}
    elif kind == "dtype":
        node["dtype"] = mutate_value(rng, node["dtype"])
    elif kind == "inputs" and "inputs" in node:
        node["inputs"] = mutate_value(rng, node["inputs"]) if rng.random() < 0.5 else \
            [int(rng.integers(-1, len(nodes) + 1)) for _ in node["inputs"]]
    elif kind == "op":
        node["op"] = pick(rng, sorted(OPS) + ["input", "param", "variable", "const", "nop"])
        if node["op"] in OPS and "attrs" in node and rng.random() < 0.8:
            node["attrs"] = plausible_attrs(rng, node["op"], len(node.get("shape", [])))
    elif kind == "drop":
        del node[pick(rng, sorted(node))]
    elif kind == "duplicate":
        key = pick(rng, ops or ["op"])
        duplicates.append((i, key, mutate_value(rng, node.get(key))))
    elif kind == "outputs":
        doc["outputs"] = mutate_value(rng, doc["outputs"])
    elif kind == "array" and arrays:
        name = pick(rng, sorted(arrays))
        value = arrays[name]
        r = rng.random()
        if r < 0.3:
            arrays[name] = value.astype(pick(rng, DTYPES))
        elif r < 0.5:
            arrays[name] = value.reshape(-1)
        elif r < 0.7:
            arrays[name] = np.zeros(tuple(int(d) for d in rng.integers(0, 4, value.ndim)),
                                    value.dtype)
        elif r < 0.8:
            arrays[name] = value[..., None]
        elif r < 0.9:
            arrays[name] = np.full_like(value, pick(rng, [np.nan, np.inf, -np.inf, 1e30]))
        else:
            del arrays[name]
    elif kind == "order" and len(nodes) > 1:
        j = int(rng.integers(0, len(nodes)))
        nodes[i], nodes[j] = nodes[j], nodes[i]
    elif kind == "top":
        key = pick(rng, ["format", "version", "arrays_sha256", "nodes", "outputs"])
        if rng.random() < 0.5:
            del doc[key]
        else:
            doc[key] = mutate_value(rng, doc[key])


def dump_with_duplicates(doc, duplicates):
    """The JSON text of `doc`, where a node can hold a key twice (json keeps the last one)."""
    text = json.dumps(doc, indent=1, allow_nan=True)
    if not duplicates:
        return text
    decoded = json.loads(text)
    out = dict(decoded)
    nodes_text = []
    for i, node in enumerate(decoded.get("nodes", []) if isinstance(decoded.get("nodes"),
                                                                        list) else []):
        items = [json.dumps(k) + ": " + json.dumps(v) for k, v in
                 (node.items() if isinstance(node, dict) else [])]
        for j, key, value in duplicates:
            if j == i:
                items.append(json.dumps(key) + ": " + json.dumps(value))
        nodes_text.append("{" + ", ".join(items) + "}")
    out["nodes"] = "@NODES@"
    return json.dumps(out).replace('"@NODES@"', "[" + ",\n".join(nodes_text) + "]")


def write_mutated(rng, directory):
    """Save a random graph in `directory`, mutate the pair; returns the JSON path."""
    path = os.path.join(directory, "model.json")
    gn.save(random_graph(rng), path)
    with open(path) as fh:
        doc = json.load(fh)
    with np.load(os.path.join(directory, "model.npz")) as archive:
        arrays = {k: archive[k] for k in archive.files}
    duplicates = []
    for _ in range(int(rng.choice([0, 1, 1, 1, 2, 2, 3]))):
        try:
            mutate_document(rng, doc, arrays, duplicates)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            pass  # the mutation met a document an earlier one broke: keep what is there
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    with open(os.path.join(directory, "model.npz"), "wb") as fh:
        fh.write(data)
    if isinstance(doc, dict) and "arrays_sha256" in doc and rng.random() < 0.95:
        doc["arrays_sha256"] = hashlib.sha256(data).hexdigest()  # let the arrays be read
    with open(path, "w") as fh:
        fh.write(dump_with_duplicates(doc, duplicates))
    if rng.random() < 0.5:
        repair_shapes(path, doc, duplicates)
    return path


MISMATCH = re.compile(r"node (\d+): the file says \S+ has shape \((.*?)\) (\w+); its inputs "
                      r"give \((.*?)\) (\w+)")


def repair_shapes(path, doc, duplicates):
    """Write into the file the shapes and dtypes gn.load infers, node after node, so that a
    mutated attr or input reaches the kernels instead of being refused as a shape mismatch.
    Anonymous dims ("?" in messages) become the file's first anonymous symbol "?1"."""
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list):
        return
    for _ in range(len(nodes)):
        try:
            gn.load(path)
            return
        except gn.GraphError as exc:
            found = MISMATCH.search(str(exc))
            if found is None:
                return
        position, dims, dtype = int(found[1]), found[4], found[5]
        nodes[position]["shape"] = [
            int(d) if d.lstrip("-").isdigit() else ("?1" if d == "?" else d)
            for d in dims.replace(" ", "").split(",") if d]
        nodes[position]["dtype"] = dtype
        with open(path, "w") as fh:
            fh.write(dump_with_duplicates(doc, duplicates))


# ---------------------------------------------------------------------------------------
# One example
# ---------------------------------------------------------------------------------------

def random_feeds(rng, graph):
    """Values of the declared shapes and dtypes; a symbolic dim gets one size per symbol."""
    sizes, feeds = {}, {}
    for node in graph.inputs:
        shape = []
        for dim in node.sym_shape:
            if isinstance(dim, int):
                shape.append(dim)
            else:
                shape.append(sizes.setdefault(id(gn.shapes.resolve(dim)),
                                              int(rng.integers(1, 5))))
        if node.dtype.kind == "f":
            feeds[node.name] = rng.standard_normal(shape).astype(node.dtype)
        else:
            feeds[node.name] = rng.integers(0, 3, shape).astype(node.dtype)
    return feeds


def run_backend(backend, graph, feeds):
    """The results on `backend`, or the GraphError it raised."""
    try:
        return gn.compile(graph.outputs, backend=backend)(**feeds)
    except gn.GraphError as exc:
        return exc


def check_seed(seed, keep=None):
    """Run one example; returns a word for the outcome. Raises AssertionError (or whatever
    graphnn raised that is not a GraphError) when the outcome is wrong."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as directory:
        path = write_mutated(rng, keep or directory)
        try:
            graph = gn.load(path)
        except gn.GraphError as exc:
            return "refused " + re.sub(r"\s+", " ", str(exc).split(": ", 1)[-1])[:120]
    feeds = random_feeds(rng, graph)
    expected = run_backend("numpy", graph, feeds)
    got = run_backend("cpu", graph, feeds)
    if isinstance(expected, Exception) or isinstance(got, Exception):
        assert type(expected) is type(got), f"numpy: {expected!r}\ncpu: {got!r}"
        return "refused-feeds"
    assert len(got) == len(expected)
    for k, (e, g) in enumerate(zip(expected, got)):
        e, g = np.asarray(e), np.asarray(g)
        assert g.dtype == e.dtype and g.shape == e.shape, \
            f"output {k}: cpu {g.dtype}{g.shape}, numpy {e.dtype}{e.shape}"
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"output {k}: NaNs")
        tol = (1e-4, 1e-5) if e.dtype == np.float32 else (1e-9, 1e-12)
        np.testing.assert_allclose(g, e, rtol=tol[0], atol=tol[1] if e.dtype.kind == "f"
                                   else 0, equal_nan=True, err_msg=f"output {k}")
    for k in range(len(got)):
        for j in range(k):
            assert not np.shares_memory(got[k], got[j]), f"outputs {j} and {k} share memory"
    return "loaded"


def main(argv):
    first = int(argv[0])
    last = int(argv[1]) if len(argv) > 1 else first + 1
    keep = tempfile.mkdtemp(prefix=f"graphnn-load-fuzz-{first}-") if last == first + 1 \
        else None
    if keep:
        print(f"the files are in {keep}", flush=True)
    for seed in range(first, last):
        print(f"seed {seed}", flush=True)
        try:
            outcome = check_seed(seed, keep)
        except Exception:
            traceback.print_exc(file=sys.stdout)
            print(f"FAILED seed {seed}", flush=True)
            return 1
        print(f"ok {seed} {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
