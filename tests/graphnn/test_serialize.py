"""gn.save / gn.load: round trips give the same numbers, and a malformed, truncated or
hostile file raises gn.GraphError and runs nothing."""
import json
import os
import zipfile

import numpy as np
import pytest

import graphnn as gn
from graphnn.serialize import arrays_path
from helpers import location

rng = np.random.default_rng(3)


def _mlp():
    x = gn.input("x", (None, 4))
    y = gn.input("y", (None,), dtype="int64")
    W1 = gn.param("W1", shape=(4, 8), seed=1)
    b1 = gn.param("b1", np.zeros(8, np.float32))
    W2 = gn.param("W2", shape=(8, 3), seed=2)
    h = gn.leaky_relu(x @ W1 + b1, alpha=0.2, name="hidden")
    loss = gn.softmax_cross_entropy(h @ W2, y, name="loss")
    return loss, [W1, b1, W2]


def _feeds(batch=5):
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "y": rng.integers(0, 3, batch)}


def test_round_trip_of_a_trained_model_and_its_gradient_graph(tmp_path):
    loss, params = _mlp()
    step = gn.compile(loss, updates=gn.optim.SGD(lr=0.5).updates(loss, params), backend="cpu")
    feeds = _feeds()
    for _ in range(5):
        step(**feeds)
    grads = gn.grad(loss, params)
    path = gn.save([loss] + grads, tmp_path / "model.json")
    assert os.path.exists(tmp_path / "model.npz")

    g = gn.load(path)
    assert isinstance(g, gn.Graph) and len(g.outputs) == 4
    assert [p.name for p in g.params] == ["W1", "b1", "W2"]
    for old, new in zip(params, g.params):
        np.testing.assert_array_equal(new.value, old.value)  # the trained values
        assert new is not old and new.value is not old.value
    assert g.outputs[0].name == "loss" and g.outputs[0].shape == ()
    assert [i.shape for i in g.inputs] == [(None, 4), (None,)]
    expected = gn.compile([loss] + grads, backend="numpy")(**feeds)
    for backend in ("numpy", "cpu"):
        got = gn.compile(g.outputs, backend=backend)(**feeds)
        for e, o in zip(expected, got):
            assert o.dtype == e.dtype and o.shape == e.shape
            np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)
    g.lint()
    # a loaded model trains on, independently of the original
    loaded_loss, loaded_params = g.outputs[0], g.params
    step2 = gn.compile(loaded_loss, updates=gn.optim.SGD(lr=0.5).updates(
        loaded_loss, loaded_params), backend="numpy")
    assert float(step2(**feeds)) == pytest.approx(float(expected[0]), rel=1e-5)
    assert not np.array_equal(loaded_params[0].value, params[0].value)


def test_round_trip_of_convolutions_reshapes_casts_and_named_dims(tmp_path):
    img = gn.input("img", ("batch", 6, 6, 2))
    labels = gn.input("labels", ("batch",), dtype="int64")
    K = gn.param("K", shape=(3, 3, 2, 4), seed=0)
    h = gn.max_pool2d(gn.relu(gn.conv2d(img, K, stride=1, padding="same")), size=2)
    flat = gn.flatten(h)
    z = gn.reshape(flat, (-1, 36)) * gn.const(np.float32(0.5))
    out = [gn.softmax(z), gn.mean(gn.cast(labels, "float32")), gn.clip(z, -np.inf, 1.0),
           gn.sum(z, axis=(0, 1), keepdims=True)]
    gn.save(out, tmp_path / "cnn.json")
    g = gn.load(tmp_path / "cnn.json")
    feeds = {"img": rng.standard_normal((2, 6, 6, 2)).astype(np.float32),
             "labels": np.array([1, 2])}
    expected = gn.compile(out, backend="numpy")(**feeds)
    got = gn.compile(g.outputs, backend="cpu")(**feeds)
    for e, o in zip(expected, got):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)
    assert g.inputs[0].shape == (None, 6, 6, 2)
    text = (tmp_path / "cnn.json").read_text()
    assert '"?batch"' in text and '"same"' in text and '"-inf"' in text


def test_hostile_names_round_trip_as_plain_data(tmp_path):
    canary = tmp_path / "hacked"
    evil = f"__import__('os').system('touch {canary}')"
    x = gn.input(evil, (2,))
    w = gn.param('"""\n' + evil, np.ones(2, np.float32))
    y = gn.mul(x, w, name="é" * 10_000)
    gn.save(y, tmp_path / "evil.json")
    g = gn.load(tmp_path / "evil.json")
    assert g.inputs[0].name == evil and g.outputs[0].name == "é" * 10_000
    np.testing.assert_array_equal(gn.compile(g.outputs[0], backend="cpu")(
        **{evil: np.array([1.0, 2.0])}), [1.0, 2.0])
    assert not canary.exists()


# ---------------------------------------------------------------------------------------
# Malformed, truncated and hostile files
# ---------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """A saved small model: (path, its JSON document)."""
    x = gn.input("x", (None, 3))
    W = gn.param("W", np.arange(6, dtype=np.float32).reshape(3, 2))
    path = gn.save(gn.sum(gn.tanh(x @ W), axis=1, name="out"), tmp_path / "m.json")
    with open(path) as fh:
        return path, json.load(fh)


def test_round_trip_of_grouped_and_depthwise_convolutions_and_padded_pooling(tmp_path):
    # the ops ShuffleNet-like models import as (their attrs: groups, stride, padding)
    img = gn.input("img", (None, 6, 6, 4))
    dw = gn.param("dw", shape=(3, 3, 1, 4), seed=1)
    gw = gn.param("gw", shape=(1, 1, 2, 6), seed=2)
    h = gn.depthwise_conv2d(img, dw, stride=2, padding=(1, 1, 1, 1))
    h = gn.ops.channel_shuffle(gn.ops.grouped_conv2d(h, gw, groups=2), groups=3)
    out = gn.max_pool2d(gn.relu(h), 3, 2, padding=(1, 1, 1, 1))
    gn.save(out, tmp_path / "grouped.json")
    g = gn.load(tmp_path / "grouped.json")
    assert [n.op for n in g.nodes if n.op not in ("input", "param")] == \
        [n.op for n in gn.Graph([out]).nodes if n.op not in ("input", "param")]
    feeds = {"img": rng.standard_normal((2, 6, 6, 4)).astype(np.float32)}
    expected = gn.compile(out, backend="numpy")(**feeds)
    got = gn.compile(g.outputs[0], backend="cpu")(**feeds)
    assert got.shape == expected.shape == (2, 2, 2, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # an attr the op's shape rule names but no file may carry is refused, not a crash
    document = json.loads((tmp_path / "grouped.json").read_text())
    document["nodes"][_nodes(document)["max_pool2d_padded"]]["attrs"]["what"] = 7
    _rewrite(tmp_path / "grouped.json", document)
    _load_fails(tmp_path / "grouped.json", "op max_pool2d_padded takes attrs "
                "['size', 'stride', 'padding']")


def _rewrite(path, document):
    with open(path, "w") as fh:
        json.dump(document, fh)


def _load_fails(path, *fragments):
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.load(path)
    msg = str(err.value)
    assert msg.startswith(f"load {str(path)!r}: ") and msg.endswith(f"(at {call})"), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def _nodes(document):
    return {record["op"]: k for k, record in enumerate(document["nodes"])}


EDITS = {
    "unknown op": (lambda d: d["nodes"][_nodes(d)["tanh"]].update(op="__import__"),
                   "unknown op '__import__'"),
    "input index too large": (lambda d: d["nodes"][_nodes(d)["matmul"]].update(inputs=[0, 99]),
                              "input 99 is not the index of an earlier node"),
    "cycle through a later node": (
        lambda d: d["nodes"][_nodes(d)["matmul"]].update(inputs=[0, _nodes(d)["sum"]]),
        "is not the index of an earlier node"),
    "self reference": (lambda d: d["nodes"][_nodes(d)["tanh"]].update(
        inputs=[_nodes(d)["tanh"]]), "is not the index of an earlier node"),
    "negative index": (lambda d: d["nodes"][_nodes(d)["tanh"]].update(inputs=[-1]),
                       "input -1 is not the index"),
    "inputs not a list": (lambda d: d["nodes"][_nodes(d)["tanh"]].update(inputs="0"),
                          "the field 'inputs' must be a list"),
    "attr of the wrong type": (lambda d: d["nodes"][_nodes(d)["sum"]]["attrs"].update(
        axis="1) or __import__('os') or (1"), "attr axis="),
    "unknown attr": (lambda d: d["nodes"][_nodes(d)["sum"]]["attrs"].update(evil=1),
                     "op sum takes attrs"),
    "missing attr": (lambda d: d["nodes"][_nodes(d)["sum"]]["attrs"].pop("keepdims"),
                     "op sum takes attrs"),
    "wrong shape recorded": (lambda d: d["nodes"][_nodes(d)["tanh"]].update(shape=["?1", 5]),
                             "the file says tanh has shape (?, 5) float32"),
    "huge shape": (lambda d: d["nodes"][_nodes(d)["param"]].update(shape=[10**12, 2]),
                   "dim 1000000000000 must be an int from 0 to"),
    "shape not matching the stored value": (
        lambda d: d["nodes"][_nodes(d)["param"]].update(shape=[300000, 2]),
        "its value in the arrays file is (3, 2) float32"),
    "bad dtype": (lambda d: d["nodes"][_nodes(d)["input"]].update(dtype="object"),
                  "dtype 'object' is not one of"),
    "name not a string": (lambda d: d["nodes"][0].update(name={"$eval": 1}),
                          "the name must be a string or null"),
    "inputs that do not fit the op": (
        lambda d: d["nodes"][_nodes(d)["matmul"]].update(
            inputs=[_nodes(d)["param"], _nodes(d)["param"]]),
        ": matmul: matmul: "),
    "param without a name": (lambda d: d["nodes"][_nodes(d)["param"]].update(name=None),
                             "a param needs a name and a float dtype"),
    "no outputs": (lambda d: d.update(outputs=[]), "the file names no outputs"),
    "output index": (lambda d: d.update(outputs=[1.5]), "output 1.5 is not the index"),
    "wrong format": (lambda d: d.update(format="pickle"), "is not a graphnn graph"),
    "future version": (lambda d: d.update(version=99), "has format version 99"),
    "nodes not a list": (lambda d: d.update(nodes={"0": 1}), "the field 'nodes' must be"),
    "arrays of another file": (lambda d: d.update(arrays_sha256="0" * 64),
                               "does not match it (changed or truncated)"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_malformed_file_raises_graph_error(saved, case):
    path, document = saved
    edit, fragment = EDITS[case]
    edit(document)
    _rewrite(path, document)
    _load_fails(path, fragment)


def test_truncated_and_garbage_json(saved):
    path, _ = saved
    text = open(path).read()
    with open(path, "w") as fh:
        fh.write(text[: len(text) // 2])
    _load_fails(path, "is not a graphnn JSON document (JSONDecodeError")
    with open(path, "wb") as fh:
        fh.write(b"\xff\xfe\x00garbage")
    _load_fails(path, "is not a graphnn JSON document (UnicodeDecodeError")
    with open(path, "w") as fh:
        fh.write("[" * 100_000 + "]" * 100_000)
    _load_fails(path, "is not a graphnn JSON document")
    with open(path, "w") as fh:
        fh.write('{"format": "graphnn-graph", "version": NaN}')
    _load_fails(path, "NaN is not JSON")
    _load_fails(str(path) + ".missing", "cannot be read")


def test_truncated_or_pickled_arrays_file(saved):
    path, document = saved
    npz = arrays_path(path)
    data = open(npz, "rb").read()
    with open(npz, "wb") as fh:
        fh.write(data[: len(data) // 2])
    _load_fails(path, "does not match it (changed or truncated)")
    # an arrays file holding a pickled object array (matching hash): refused, not unpickled
    canary = os.path.join(os.path.dirname(path), "unpickled")
    evil = np.empty(1, dtype=object)
    evil[0] = _Canary(canary)
    np.savez(npz, node1=evil)
    _rewrite_hash(path, document)
    _load_fails(path, "cannot be read (ValueError: Object arrays cannot be loaded")
    assert not os.path.exists(canary)
    # a compressed member claiming a huge size (a zip bomb) is refused before reading
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("node1.npy", b"\0" * 10_000_000)
    _rewrite_hash(path, document)
    _load_fails(path, "compressed or oversized member 'node1.npy'")
    os.remove(npz)
    _load_fails(path, "its arrays file", "cannot be read")


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_hash(path, document):
    import hashlib
    document["arrays_sha256"] = hashlib.sha256(open(arrays_path(path), "rb").read()).hexdigest()
    _rewrite(path, document)


def test_save_refuses_an_npz_path_and_nothing(tmp_path):
    x = gn.input("x", (2,))
    with pytest.raises(gn.GraphError, match="is the name of the arrays file"):
        gn.save(x * 2, tmp_path / "m.npz")
    with pytest.raises(gn.GraphError, match="nothing to save"):
        gn.save([], tmp_path / "m.json")


def test_anonymous_dims_are_numbered_in_the_file_and_stay_independent(tmp_path):
    # docs/SAVE_FORMAT.md: named symbols keep their name, anonymous ones are "?1", "?2"...
    a = gn.input("a", (None, 3))
    b = gn.input("b", (None, 2))
    c = gn.input("c", ("batch", 2))
    path = gn.save([gn.sum(a), gn.sum(b), gn.sum(c)], tmp_path / "dims.json")
    with open(path) as fh:
        shapes = {r["name"]: r["shape"] for r in json.load(fh)["nodes"] if r["op"] == "input"}
    assert shapes == {"a": ["?1", 3], "b": ["?2", 2], "c": ["?batch", 2]}
    g = gn.load(path)
    got = gn.compile(g.outputs, backend="numpy")(a=np.ones((4, 3)), b=np.ones((1, 2)),
                                                 c=np.ones((5, 2)))
    np.testing.assert_array_equal(got, [12.0, 2.0, 10.0])


def test_numpy_integer_attrs_are_saved_as_plain_ints(tmp_path):
    # nodes built through the registry (the ONNX importer does) may carry NumPy integers
    from graphnn.registry import apply
    x = gn.input("x", (2, 6))
    r = apply("reshape", (x,), {"shape": (np.int64(3), np.int64(4))})
    y = apply("sum", (r,), {"axis": np.int64(1), "keepdims": False})
    path = gn.save(y, tmp_path / "ints.json")
    with open(path) as fh:
        attrs = {r["op"]: r["attrs"] for r in json.load(fh)["nodes"] if "attrs" in r}
    assert attrs == {"reshape": {"shape": [3, 4]}, "sum": {"axis": 1, "keepdims": False}}
    g = gn.load(path)
    X = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(gn.compile(g.outputs, backend="numpy")(x=X)[0],
                                  X.reshape(3, 4).sum(axis=1))


def test_a_zero_dim_round_trips(tmp_path):
    empty = gn.const(np.zeros((0, 3), np.float32))
    w = gn.input("w", (2, 3))
    path = gn.save(gn.concat([empty, w], axis=0), tmp_path / "zero.json")
    with open(path) as fh:
        assert json.load(fh)["nodes"][0]["shape"] == [0, 3]
    g = gn.load(path)
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(gn.compile(g.outputs, backend="numpy")(w=W)[0], W)


def test_a_float_attr_is_a_number_or_one_of_the_words_inf_and_nan(tmp_path):
    x = gn.input("x", (2,))
    path = gn.save(gn.leaky_relu(x, alpha=0.25), tmp_path / "alpha.json")
    with open(path) as fh:
        document = json.load(fh)
    record = document["nodes"][_nodes(document)["leaky_relu"]]
    X = np.array([-2.0, 3.0], np.float32)
    for text in ("1e999", "0.5", "Infinity", ""):
        record["attrs"]["alpha"] = text
        _rewrite(path, document)
        _load_fails(path, f"attr alpha={text!r} of leaky_relu is not a valid float")
    record["attrs"]["alpha"] = "-inf"  # how save writes a non-finite float
    _rewrite(path, document)
    g = gn.load(path)
    assert g.outputs[0].attrs["alpha"] == float("-inf")
    record["attrs"]["alpha"] = 2
    _rewrite(path, document)
    got = gn.compile(gn.load(path).outputs, backend="numpy")(x=X)[0]
    np.testing.assert_array_equal(got, [-4.0, 3.0])
