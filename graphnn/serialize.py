"""Saving and loading graphs: `gn.save(outputs, "model.json")`, `gn.load("model.json")`.

A saved graph is two files: a JSON document describing every node (op, attrs, inputs by
index, shape with symbolic dims, dtype, name) and a sibling .npz holding the values of
parameters, variables and constants. The format is documented in docs/SAVE_FORMAT.md.

Loading never unpickles and never evaluates text: the JSON is parsed with `json`, each
node is checked against a fixed schema and rebuilt through the same op functions that
user code calls (so shapes and dtypes are inferred again and must match the file), and the
arrays are read with `np.load(allow_pickle=False)` after their sizes were checked against
the file. Whatever is wrong with a file, `gn.load` raises `gn.GraphError` naming the node
and the file, and builds nothing else.
"""
import hashlib
import inspect
import json
import os
import tempfile
import zipfile

import numpy as np

from . import shapes as S
from .api import FLOAT_DTYPES, _stateful, input as declare_input
from .errors import GraphError, user_location
from .graph import Graph, as_node_list, topological_order
from .node import LEAF_OPS
from .registry import OPS, apply, const_node

FORMAT = "graphnn-graph"
VERSION = 1
MAX_DIM = 2**31 - 1       # any larger dim or int attr in a file is refused
DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64")

# The type of every attr an op may carry. A file with another attr, or another type, is
# refused; an op whose shape rule takes an attr missing here cannot be saved.
ATTR_KINDS = {
    "alpha": "float", "low": "float", "high": "float",
    "axis": "axis", "axes": "ints", "shape": "dims",
    "keepdims": "bool", "from_logits": "bool", "float_only": "bool",
    "stride": "int", "size": "int", "classes": "int", "start": "int", "stop": "int",
    "before": "int", "after": "int", "bits": "int", "seed": "seed", "groups": "int",
    # "valid", "same", or (top, left, bottom, right) (depthwise_conv2d)
    "padding": "padding", "dtype": DTYPES,
}
_FLOAT_WORDS = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def arrays_path(path):
    """The .npz that goes with the JSON file at `path`: same name, suffix .npz."""
    return os.path.splitext(os.fspath(path))[0] + ".npz"


def pending_arrays_path(path):
    """Where `save` puts the new .npz until the JSON has switched to it (see `save`)."""
    return arrays_path(path) + ".new"


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------

def save(graph_or_outputs, path):
    """Write the graph reaching `graph_or_outputs` (a Graph, a node or a list of nodes) to
    `path` (JSON) and its parameter and constant values to the sibling .npz.

        gn.save([loss, gW], "model.json")      # writes model.json and model.npz
        g = gn.load("model.json")              # a gn.Graph; g.outputs in the same order
    """
    where = user_location()
    outputs, _ = as_node_list(graph_or_outputs)
    if not outputs:
        raise GraphError(f"save: nothing to save: no outputs (at {where})")
    path = os.fspath(path)
    if path.endswith(".npz"):
        raise GraphError(f"save: {path!r} is the name of the arrays file; give the .json "
                         f"path (at {where})")
    nodes = topological_order(outputs)
    index = {id(n): i for i, n in enumerate(nodes)}
    symbols = _SymbolNames()
    records, arrays = [], {}
    for i, node in enumerate(nodes):
        record = {"op": node.op, "name": node.name, "dtype": node.dtype.name,
                  "shape": [symbols.encode(d) for d in node.sym_shape]}
        if node.op in LEAF_OPS:
            if node.op != "input":
                arrays[f"node{i}"] = np.array(node.value, order="C")
        else:
            record["inputs"] = [index[id(x)] for x in node.inputs]
            record["attrs"] = {k: _encode_attr(node, k, v, symbols)
                               for k, v in node.attrs.items()}
        records.append(record)
    _write_pair(path, arrays, records, [index[id(o)] for o in outputs])
    return path


def _write_pair(path, arrays, records, outputs):
    """Write the two files so that a crash at any moment leaves a pair that loads: the old
    one or the new one. The new arrays go to `model.npz.new`; replacing the JSON (which
    names the arrays by their hash) is the one switch; then `model.npz.new` becomes
    `model.npz`. A crash between the two renames leaves the new JSON with `model.npz.new`,
    which `load` recognises by its hash and finishes moving. On an error nothing of the new
    pair is left behind."""
    npz, pending = arrays_path(path), pending_arrays_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    json_tmp = None
    try:
        _write_npz(pending, arrays)
        with open(pending, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        document = {"format": FORMAT, "version": VERSION, "arrays_sha256": digest,
                    "nodes": records, "outputs": outputs}
        fd, json_tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                        dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(json_tmp, path)  # the switch: from here on the new pair is the model
        json_tmp = None
    except BaseException:
        for leftover in (json_tmp, pending):
            if leftover is not None and os.path.exists(leftover):
                os.remove(leftover)
        raise
    os.replace(pending, npz)


class _SymbolNames:
    """Symbolic dims as strings: "?batch" for a named symbol, "?1", "?2"... for anonymous
    ones (numbered in the file, so two dims unified in the graph share one string)."""

    def __init__(self):
        self.names = {}

    def encode(self, dim):
        dim = S.resolve(dim)
        if isinstance(dim, int):
            return dim
        if dim not in self.names:
            label = dim.label if not dim.label.isdigit() else str(len(self.names) + 1)
            self.names[dim] = "?" + label
        return self.names[dim]


def _encode_attr(node, key, value, symbols):
    kind = ATTR_KINDS.get(key)
    if kind is None:
        raise GraphError(f"save: attr {key!r} of {node.label()} has no saved form")
    if isinstance(value, tuple):
        return [symbols.encode(v) if isinstance(v, S.Sym) else _encode_attr(node, key, v, symbols)
                for v in value]
    if isinstance(value, float):
        return repr(value) if repr(value) in _FLOAT_WORDS else value
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    raise GraphError(f"save: attr {key}={value!r} of {node.label()} has no saved form")


def _write_npz(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # stored, not compressed: sizes can be checked before reading
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

def load(path):
    """Read a graph written by `gn.save`; returns a `gn.Graph` whose `.outputs` are the
    saved outputs in order, with `.inputs` and `.params` (values from the .npz).

    Raises gn.GraphError for any malformed, truncated or hostile file.

        g = gn.load("model.json")
        f = gn.compile(g.outputs[0]); f(x=X)
        {p.name: p.value.shape for p in g.params}    # {"dense1/W": (64, 32), ...}
    """
    where = user_location()
    path = os.fspath(path)
    loader = _Loader(path, where)
    return loader.run()


class _Loader:
    def __init__(self, path, where):
        self.path, self.where = path, where
        self.symbols = {}

    def fail(self, message, position=None):
        node = f"node {position}: " if position is not None else ""
        raise GraphError(f"load {self.path!r}: {node}{message} (at {self.where})")

    def run(self):
        document = self.read_json()
        records = self.field(document, "nodes", list)
        outputs = self.field(document, "outputs", list)
        digest = self.field(document, "arrays_sha256", str)
        arrays = self.read_arrays(digest)
        nodes = []
        for position, record in enumerate(records):
            nodes.append(self.build(position, record, nodes, arrays))
        if not outputs:
            self.fail("the file names no outputs")
        picked = [nodes[self.index(o, len(nodes), "output")] for o in outputs]
        return Graph(picked)

    # -- the two files ---------------------------------------------------------------------
    def read_json(self):
        try:
            with open(self.path, "rb") as fh:
                document = json.loads(fh.read().decode("utf-8"),
                                      parse_constant=lambda word: self.fail(
                                          f"{word} is not JSON"))
        except OSError as exc:
            self.fail(f"cannot be read ({exc.strerror or exc})")
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            self.fail(f"is not a graphnn JSON document ({type(exc).__name__}: {exc})")
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            self.fail(f"is not a graphnn graph (no \"format\": \"{FORMAT}\")")
        if document.get("version") != VERSION:
            self.fail(f"has format version {document.get('version')!r}; this graphnn reads "
                      f"version {VERSION}")
        return document

    def read_arrays(self, digest):
        npz = arrays_path(self.path)
        try:
            with open(npz, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            data, error = None, exc
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            # a save interrupted after its switch: the new arrays still wait under .new
            pending = self.pending_arrays(digest)
            if pending is not None:
                npz, data = pending
            elif data is None:
                self.fail(f"its arrays file {npz!r} cannot be read "
                          f"({error.strerror or error})")
            else:
                self.fail(f"its arrays file {npz!r} does not match it (changed or truncated)")
        try:
            with zipfile.ZipFile(npz) as archive:
                for info in archive.infolist():
                    if info.compress_type != zipfile.ZIP_STORED or \
                            info.file_size > len(data):
                        self.fail(f"its arrays file holds a compressed or oversized member "
                                  f"{info.filename!r}")
                    self.check_npy_header(archive, info)
            with np.load(npz, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except GraphError:
            raise
        except Exception as exc:  # BadZipFile, ValueError (pickled objects), EOFError...
            self.fail(f"its arrays file {npz!r} cannot be read "
                      f"({type(exc).__name__}: {exc})")

    def pending_arrays(self, digest):
        """(path, bytes) of the arrays a save left under .new before it could rename them,
        when they are the ones this JSON names; the rename is then finished."""
        pending = pending_arrays_path(self.path)
        try:
            with open(pending, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            return None
        try:
            os.replace(pending, arrays_path(self.path))
            return arrays_path(self.path), data
        except OSError:  # a read-only directory: read it where it is
            return pending, data

    def check_npy_header(self, archive, info):
        """The array a member's .npy header describes must fit in the member: NumPy
        allocates what the header claims before it reads the data."""
        try:
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except GraphError:
            raise
        except Exception as exc:
            self.fail(f"its arrays file holds a member {info.filename!r} that is not an .npy "
                      f"array ({type(exc).__name__}: {exc})"[:300])
        size = dtype.itemsize  # (object arrays are refused by np.load(allow_pickle=False))
        for d in shape:
            size *= d
        if size > info.file_size:
            self.fail(f"its arrays file member {info.filename!r} claims shape {shape} "
                      f"{dtype} ({size} bytes) but holds {info.file_size} bytes"[:300])

    # -- one node --------------------------------------------------------------------------
    def field(self, record, key, kind, position=None):
        if not isinstance(record, dict) or key not in record:
            self.fail(f"the field {key!r} is missing", position)
        value = record[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(f"the field {key!r} must be {_kind_name(kind)}, got {value!r}"[:300],
                      position)
        return value

    def index(self, value, bound, what, position=None):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
            self.fail(f"{what} {value!r} is not the index of an earlier node", position)
        return value

    def dim(self, value, position, allow_minus_one=False):
        if isinstance(value, str) and value.startswith("?") and len(value) > 1:
            if value not in self.symbols:
                label = value[1:]
                self.symbols[value] = S.fresh_sym() if label.isdigit() else S.named_sym(label)
            return self.symbols[value]
        if isinstance(value, int) and not isinstance(value, bool) and \
                (0 <= value <= MAX_DIM or allow_minus_one and value == -1):
            return value
        self.fail(f"dim {value!r} must be an int from 0 to {MAX_DIM} or a symbol \"?name\""
                  [:300], position)

    def build(self, position, record, nodes, arrays):
        op = self.field(record, "op", str, position)
        name = record.get("name") if isinstance(record, dict) else None
        if name is not None and not isinstance(name, str):
            self.fail(f"the name must be a string or null, got {name!r}"[:300], position)
        dtype = self.field(record, "dtype", str, position)
        if dtype not in DTYPES:
            self.fail(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}"[:300], position)
        shape = tuple(self.dim(d, position)
                      for d in self.field(record, "shape", list, position))
        if op in LEAF_OPS:
            node = self.leaf(position, op, name, dtype, shape, arrays)
        elif op in OPS:
            node = self.operation(position, record, op, name, nodes)
        else:
            self.fail(f"unknown op {op!r}"[:300], position)
        if node.dtype.name != dtype or len(node.sym_shape) != len(shape) or not all(
                S.dims_equal(a, b) for a, b in zip(node.sym_shape, shape)):
            self.fail(f"the file says {op} has shape {S.format_shape(shape)} {dtype}; its "
                      f"inputs give {S.format_shape(node.sym_shape)} {node.dtype}", position)
        return node

    def leaf(self, position, op, name, dtype, shape, arrays):
        if op == "input":
            if not name:
                self.fail("an input needs a name", position)
            return declare_input(name, shape, dtype)
        value = arrays.get(f"node{position}")
        if value is None:
            self.fail(f"the arrays file has no value for this {op}", position)
        if value.dtype.name != dtype or value.shape != S.public_shape(shape):
            self.fail(f"its value in the arrays file is {value.shape} {value.dtype}, the file "
                      f"says {S.format_shape(shape)} {dtype}", position)
        if op == "const":
            return const_node(value, name)
        if not name or dtype not in FLOAT_DTYPES:
            self.fail(f"a {op} needs a name and a float dtype", position)
        return _stateful(op, name, value, None, None, None, dtype)

    def operation(self, position, record, op, name, nodes):
        inputs = [nodes[self.index(i, position, "input", position)]
                  for i in self.field(record, "inputs", list, position)]
        attrs = self.field(record, "attrs", dict, position)
        params = inspect.signature(OPS[op].infer).parameters
        names = [p.name for p in list(params.values())[1:] if p.kind == p.POSITIONAL_OR_KEYWORD]
        required = [p.name for p in list(params.values())[1:]
                    if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
        unknown = sorted(set(attrs) - set(names))
        missing = [k for k in required if k not in attrs]
        if unknown or missing:
            self.fail(f"op {op} takes attrs {names}; the file gives {sorted(attrs)}"[:300],
                      position)
        decoded = {k: self.attr(position, op, k, v) for k, v in attrs.items()}
        try:
            return apply(op, tuple(inputs), decoded, name)
        except GraphError as exc:
            self.fail(f"{op}: {exc}", position)
        except Exception as exc:  # a rule meeting values no user call could pass
            self.fail(f"{op} cannot be built from these inputs and attrs "
                      f"({type(exc).__name__}: {exc})"[:400], position)

    def attr(self, position, op, key, value):
        kind = ATTR_KINDS.get(key)

        def bad():
            wanted = kind if isinstance(kind, str) else \
                " or ".join(kind) if isinstance(kind, tuple) else "attr of a saved graph"
            self.fail(f"attr {key}={value!r} of {op} is not a valid {wanted}"[:300], position)

        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_DIM

        if isinstance(kind, tuple):
            return value if value in kind else bad()
        if kind == "bool":
            return value if isinstance(value, bool) else bad()
        if kind == "int":
            return value if whole(value) else bad()
        if kind == "padding":
            if value in ("valid", "same"):
                return value
            return tuple(value) if isinstance(value, list) and len(value) == 4 and all(
                whole(v) and v >= 0 for v in value) else bad()
        if kind == "seed":  # a random draw's key: any int in [0, 2**63)
            return value if isinstance(value, int) and not isinstance(value, bool) and \
                0 <= value < 2 ** 63 else bad()
        if kind == "float":
            if isinstance(value, str) and value in _FLOAT_WORDS:
                return _FLOAT_WORDS[value]
            return float(value) if isinstance(value, (int, float)) and \
                not isinstance(value, bool) else bad()
        if kind == "axis":
            if value is None or whole(value):
                return value
            kind = "ints"
        if kind == "ints":
            if isinstance(value, list) and all(whole(v) for v in value):
                return tuple(value)
            return bad()
        if kind == "dims":
            if isinstance(value, list):
                return tuple(self.dim(v, position, allow_minus_one=True) for v in value)
            return bad()
        return bad()


def _kind_name(kind):
    return {list: "a list", dict: "an object", str: "a string", int: "an int"}.get(kind, "?")
