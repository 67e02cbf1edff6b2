"""gn.nn.LSTM, GRU, Bidirectional and Embedding: forward values and gradients against
NumPy references written here (forward pass and backpropagation through time by hand,
always run) and against PyTorch's modules when torch is installed (weights copied in), on
backend numpy, cpu and cuda (the simulator, tiny shapes), and in eager mode.
"""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled
from helpers import BACKEND_OPTIONS, location

RNG = np.random.default_rng(3)
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


# ---- NumPy references: forward and backpropagation through time --------------------------

def lstm_reference(X, Wx, Wh, b, G, return_sequences):
    """h_T (or every h_t), and the gradients of sum(G * that) w.r.t. X, Wx, Wh, b.
    Gates i, f, g, o (PyTorch's order)."""
    B, T, _ = X.shape
    u = Wh.shape[0]
    h, c = np.zeros((B, u)), np.zeros((B, u))
    cache, hs = [], []
    for t in range(T):
        z = X[:, t] @ Wx + h @ Wh + b
        i, f = sigmoid(z[:, :u]), sigmoid(z[:, u:2 * u])
        g, o = np.tanh(z[:, 2 * u:3 * u]), sigmoid(z[:, 3 * u:])
        c_prev, h_prev = c, h
        c = f * c + i * g
        h = o * np.tanh(c)
        cache.append((i, f, g, o, c, c_prev, h_prev))
        hs.append(h)
    out = np.stack(hs, axis=1) if return_sequences else h
    G_seq = G if return_sequences else np.concatenate(
        [np.zeros((B, T - 1, u)), G[:, None]], axis=1)
    dX, dWx, dWh, db = np.zeros_like(X), np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    dh_next, dc_next = np.zeros((B, u)), np.zeros((B, u))
    for t in reversed(range(T)):
        i, f, g, o, c, c_prev, h_prev = cache[t]
        dh = G_seq[:, t] + dh_next
        tc = np.tanh(c)
        do = dh * tc
        dc = dh * o * (1 - tc ** 2) + dc_next
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                             dc * i * (1 - g ** 2), do * o * (1 - o)], axis=1)
        dc_next = dc * f
        dWx += X[:, t].T @ dz
        dWh += h_prev.T @ dz
        db += dz.sum(axis=0)
        dX[:, t] = dz @ Wx.T
        dh_next = dz @ Wh.T
    return out, (dX, dWx, dWh, db)


def gru_reference(X, Wx, Wh, bx, bh, G, return_sequences):
    """As lstm_reference for the GRU, gates r, z, n (PyTorch's order and equations)."""
    B, T, _ = X.shape
    u = Wh.shape[0]
    h = np.zeros((B, u))
    cache, hs = [], []
    for t in range(T):
        a, e = X[:, t] @ Wx + bx, h @ Wh + bh
        r = sigmoid(a[:, :u] + e[:, :u])
        z = sigmoid(a[:, u:2 * u] + e[:, u:2 * u])
        n = np.tanh(a[:, 2 * u:] + r * e[:, 2 * u:])
        cache.append((r, z, n, e, h))
        h = (1 - z) * n + z * h
        hs.append(h)
    out = np.stack(hs, axis=1) if return_sequences else h
    G_seq = G if return_sequences else np.concatenate(
        [np.zeros((B, T - 1, u)), G[:, None]], axis=1)
    grads = [np.zeros_like(v) for v in (X, Wx, Wh, bx, bh)]
    dX, dWx, dWh, dbx, dbh = grads
    dh_next = np.zeros((B, u))
    for t in reversed(range(T)):
        r, z, n, e, h_prev = cache[t]
        dh = G_seq[:, t] + dh_next
        dn = dh * (1 - z) * (1 - n ** 2)
        dr = dn * e[:, 2 * u:] * r * (1 - r)
        dz = dh * (h_prev - n) * z * (1 - z)
        da = np.concatenate([dr, dz, dn], axis=1)
        de = np.concatenate([dr, dz, dn * r], axis=1)
        dWx += X[:, t].T @ da
        dbx += da.sum(axis=0)
        dWh += h_prev.T @ de
        dbh += de.sum(axis=0)
        dX[:, t] = da @ Wx.T
        dh_next = dh * z + de @ Wh.T
    return out, tuple(grads)


def rnn_reference(X, Wx, Wy, b):
    h, hs = np.zeros((X.shape[0], Wy.shape[0])), []
    for t in range(X.shape[1]):
        h = np.tanh(X[:, t] @ Wx + h @ Wy + b)
        hs.append(h)
    return np.stack(hs, axis=1)


def reference(layer, X, G, return_sequences):
    values = [p.value.astype(np.float64) for p in layer.params]
    fn = lstm_reference if isinstance(layer, gn.nn.LSTM) else gru_reference
    return fn(X, *values, G, return_sequences)


# ---- helpers ----------------------------------------------------------------------------

def build(kind, shape, return_sequences, dtype, **kwargs):
    """A layer of `kind` on input (None,) + shape[1:], its params randomised (biases too),
    the output y and the gradients of sum(G * y) w.r.t. the input and every param."""
    x = gn.input("x", (None,) + shape[1:], dtype=dtype)
    layer = getattr(gn.nn, kind)(3, return_sequences=return_sequences, **kwargs)
    y = layer(x)
    for p in layer.params:
        p.value = (RNG.standard_normal(p.value.shape) * 0.7).astype(dtype)
    g = gn.input("g", (None,) + y.shape[1:], dtype=dtype)
    grads = gn.grad(gn.sum(y * g), [x] + layer.params)
    return layer, x, y, g, grads


def feeds_for(shape, y, dtype):
    X = RNG.standard_normal(shape).astype(dtype)
    G = RNG.standard_normal((shape[0],) + y.shape[1:]).astype(dtype)
    return X, G


def run(outputs, backend, **feeds):
    return gn.compile(outputs, backend=backend, **BACKEND_OPTIONS.get(backend, {}))(**feeds)


def needs_cuda(backend):
    if backend == "cuda" and not simulator_enabled():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (set by tests/conftest.py)")


# (backend, dtype, shape): float64 on every back end but the simulator; the simulator runs
# float32 on the tiniest shapes
SETTINGS = [("numpy", "float64", (2, 4, 2)), ("cpu", "float64", (3, 5, 2)),
            ("cpu", "float32", (3, 5, 2)), ("cuda", "float32", (2, 2, 2))]


# ---- LSTM and GRU against the NumPy references -------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("backend, dtype, shape", SETTINGS)
def test_recurrent_values_and_gradients_match_numpy(kind, return_sequences, backend, dtype,
                                                    shape):
    needs_cuda(backend)
    layer, x, y, g, grads = build(kind, shape, return_sequences, dtype)
    X, G = feeds_for(shape, y, dtype)
    expected, expected_grads = reference(layer, X.astype(np.float64), G.astype(np.float64),
                                         return_sequences)
    got = run([y, *grads], backend, x=X, g=G)
    assert y.shape == (None,) + expected.shape[1:]
    names = ["output", "x"] + [p.name for p in layer.params]
    for name, value, e in zip(names, got, (expected,) + expected_grads):
        assert value.shape == e.shape and value.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(value, e, err_msg=f"{backend} {kind}: {name}", **TOL[dtype])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_eager_call_matches_the_compiled_graph(kind):
    layer, x, y, g, grads = build(kind, (2, 4, 2), True, "float64")
    X, G = feeds_for((2, 4, 2), y, "float64")
    np.testing.assert_allclose(layer(X), run(y, "numpy", x=X), **TOL["float64"])
    expected = reference(layer, X, G, True)[0]
    np.testing.assert_allclose(layer(X), expected, **TOL["float64"])


# ---- against PyTorch ---------------------------------------------------------------------

def torch_module(layer, features, bidirectional=False):
    """A torch LSTM/GRU holding `layer`'s weights (PyTorch's layout: W.T, two biases)."""
    torch = pytest.importorskip("torch")
    inner = layer.forward_layer if bidirectional else layer
    cls = torch.nn.LSTM if isinstance(inner, gn.nn.LSTM) else torch.nn.GRU
    module = cls(features, inner.units, batch_first=True, bidirectional=bidirectional).double()
    pairs = [("", inner)] + ([("_reverse", layer.backward_layer)] if bidirectional else [])
    with torch.no_grad():
        for suffix, part in pairs:
            getattr(module, f"weight_ih_l0{suffix}").copy_(torch.tensor(part.Wx.value.T))
            getattr(module, f"weight_hh_l0{suffix}").copy_(torch.tensor(part.Wh.value.T))
            if isinstance(part, gn.nn.LSTM):
                getattr(module, f"bias_ih_l0{suffix}").copy_(torch.tensor(part.b.value))
                getattr(module, f"bias_hh_l0{suffix}").zero_()
            else:
                getattr(module, f"bias_ih_l0{suffix}").copy_(torch.tensor(part.bx.value))
                getattr(module, f"bias_hh_l0{suffix}").copy_(torch.tensor(part.bh.value))
    return module


def torch_grads(module, layer_params, bidirectional):
    """The torch module's gradients in graphnn's layout, in the layer's params order."""
    out = []
    for suffix in ["", "_reverse"] if bidirectional else [""]:
        ih = getattr(module, f"weight_ih_l0{suffix}").grad.numpy().T
        hh = getattr(module, f"weight_hh_l0{suffix}").grad.numpy().T
        bi = getattr(module, f"bias_ih_l0{suffix}").grad.numpy()
        bh = getattr(module, f"bias_hh_l0{suffix}").grad.numpy()
        # graphnn's LSTM has one bias (b = bias_ih + bias_hh; bias_hh was 0), the GRU two
        out += [ih, hh, bi] if type(module).__name__ == "LSTM" else [ih, hh, bi, bh]
    assert len(out) == len(layer_params)
    return out


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_matches_pytorch(kind, bidirectional, return_sequences):
    torch = pytest.importorskip("torch")
    shape = (3, 5, 2)
    x = gn.input("x", (None, 5, 2), dtype="float64")
    layer = getattr(gn.nn, kind)(4, return_sequences=return_sequences)
    if bidirectional:
        layer = gn.nn.Bidirectional(layer)
    y = layer(x)
    for p in layer.params:
        p.value = RNG.standard_normal(p.value.shape) * 0.7
    g = gn.input("g", (None,) + y.shape[1:], dtype="float64")
    grads = gn.grad(gn.sum(y * g), [x] + layer.params)
    X = RNG.standard_normal(shape)
    G = RNG.standard_normal((3,) + y.shape[1:])
    got = run([y, *grads], "cpu", x=X, g=G)

    module = torch_module(layer, 2, bidirectional)
    xt = torch.tensor(X, requires_grad=True)
    seq, state = module(xt)
    h_n = state[0] if kind == "LSTM" else state
    final = torch.cat([h_n[0], h_n[1]], dim=1) if bidirectional else h_n[0]
    out = seq if return_sequences else final
    (out * torch.tensor(G)).sum().backward()
    np.testing.assert_allclose(got[0], out.detach().numpy(), **TOL["float64"])
    np.testing.assert_allclose(got[1], xt.grad.numpy(), **TOL["float64"])
    for p, value, e in zip(layer.params, got[2:], torch_grads(module, layer.params,
                                                              bidirectional)):
        np.testing.assert_allclose(value, e, err_msg=p.name, **TOL["float64"])


# ---- Bidirectional against the NumPy references ------------------------------------------

# (the simulator is slow: the final states are checked on cpu only)
@pytest.mark.parametrize("return_sequences, backend, dtype, shape", [
    (False,) + SETTINGS[1], (True,) + SETTINGS[1], (True,) + SETTINGS[3]])
def test_bidirectional_lstm_matches_numpy(return_sequences, backend, dtype, shape):
    needs_cuda(backend)
    x = gn.input("xb", (None,) + shape[1:], dtype=dtype)
    bi = gn.nn.Bidirectional(gn.nn.LSTM(3, return_sequences=return_sequences))
    y = bi(x)
    assert y.shape == ((None, shape[1], 6) if return_sequences else (None, 6))
    for p in bi.params:
        p.value = (RNG.standard_normal(p.value.shape) * 0.7).astype(dtype)
    g = gn.input("gb", (None,) + y.shape[1:], dtype=dtype)
    grads = gn.grad(gn.sum(y * g), [x] + bi.params)
    X, G = feeds_for(shape, y, dtype)
    X64, G64 = X.astype(np.float64), G.astype(np.float64)
    if return_sequences:
        Gf, Gb = G64[..., :3], G64[:, ::-1, 3:]  # the backward half, in its own step order
    else:
        Gf, Gb = G64[:, :3], G64[:, 3:]
    out_f, grads_f = reference(bi.forward_layer, X64, Gf, return_sequences)
    out_b, grads_b = reference(bi.backward_layer, X64[:, ::-1], Gb, return_sequences)
    expected = np.concatenate([out_f, out_b[:, ::-1] if return_sequences else out_b], axis=-1)
    expected_grads = [grads_f[0] + grads_b[0][:, ::-1], *grads_f[1:], *grads_b[1:]]
    got = run([y, *grads], backend, xb=X, gb=G)
    np.testing.assert_allclose(got[0], expected, **TOL[dtype])
    for name, value, e in zip(["x"] + [p.name for p in bi.params], got[1:], expected_grads):
        np.testing.assert_allclose(value, e, err_msg=name, **TOL[dtype])


def test_bidirectional_names_copies_and_simple_rnn():
    x = gn.input("x", (None, 4, 2), dtype="float64")
    bi = gn.nn.Bidirectional(gn.nn.SimpleRNN(3, return_sequences=True))
    y = bi(x)
    assert [p.name for p in bi.params] == [
        f"bidirectional1/{way}/{w}" for way in ("forward", "backward") for w in ("Wx", "Wy", "b")]
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert not np.array_equal(bi.forward_layer.Wx.value, bi.backward_layer.Wx.value)
    X = RNG.standard_normal((2, 4, 2))
    f, b = bi.forward_layer, bi.backward_layer
    expected = np.concatenate([rnn_reference(X, f.Wx.value, f.Wy.value, f.b.value),
                               rnn_reference(X[:, ::-1], b.Wx.value, b.Wy.value,
                                             b.b.value)[:, ::-1]], axis=2)
    np.testing.assert_allclose(run(y, "cpu", x=X), expected, **TOL["float64"])
    # a named layer keeps its name; its copy is "<name>_backward"
    named = gn.nn.Bidirectional(gn.nn.GRU(2, name="enc", seed=5))
    named(x)
    assert {p.name.split("/")[0] for p in named.params} == {"enc", "enc_backward"}
    assert not np.array_equal(named.forward_layer.Wx.value, named.backward_layer.Wx.value)


def test_go_backwards_returns_the_steps_in_reversed_order():
    x = gn.input("x", (None, 4, 2), dtype="float64")
    layer = gn.nn.SimpleRNN(3, return_sequences=True, go_backwards=True)
    y = layer(x)
    X = RNG.standard_normal((2, 4, 2))
    expected = rnn_reference(X[:, ::-1], *[p.value for p in layer.params])
    np.testing.assert_allclose(run(y, "numpy", x=X), expected, **TOL["float64"])


def test_recurrent_layer_errors():
    x = gn.input("x", (None, 4, 2))
    with pytest.raises(gn.GraphError, match="Bidirectional wraps a recurrent layer"):
        gn.nn.Bidirectional(gn.nn.Dense(3))
    used = gn.nn.LSTM(3)
    used(x)
    with pytest.raises(gn.GraphError, match="not called yet"):
        gn.nn.Bidirectional(used)
    with pytest.raises(gn.ShapeError, match=r"LSTM 'lstm1' expects \(batch, time steps, "
                                            r"features\)") as err:
        line = location(1)
        gn.nn.LSTM(3)(gn.input("flat", (None, 8)))
    assert str(err.value).endswith(f"(at {line})")
    with pytest.raises(gn.ShapeError, match="needs a known size on axis 1"):
        gn.nn.GRU(3)(gn.input("ragged", (None, None, 2)))


def test_parameters_shapes_and_initial_values():
    x = gn.input("x", (None, 6, 5))
    lstm, gru = gn.nn.LSTM(4), gn.nn.GRU(4)
    lstm(x), gru(x)
    assert [(p.name, p.shape) for p in lstm.params] == [
        ("lstm1/Wx", (5, 16)), ("lstm1/Wh", (4, 16)), ("lstm1/b", (16,))]
    assert [(p.name, p.shape) for p in gru.params] == [
        ("gru1/Wx", (5, 12)), ("gru1/Wh", (4, 12)), ("gru1/bx", (12,)), ("gru1/bh", (12,))]
    # the forget gate's bias starts at 1 (Keras' unit_forget_bias), the others at 0
    np.testing.assert_array_equal(lstm.b.value, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    # orthogonal recurrent weights: orthonormal rows
    for W in (lstm.Wh.value, gru.Wh.value):
        np.testing.assert_allclose(W @ W.T, np.eye(4), atol=1e-6)
    again = gn.nn.LSTM(4)
    again(gn.input("x2", (None, 6, 5)))
    np.testing.assert_array_equal(again.Wh.value, lstm.Wh.value)  # seeded by name


# ---- Embedding ---------------------------------------------------------------------------

def embedding_reference(ids, table, G):
    grad = np.zeros_like(table)
    np.add.at(grad, ids, G)
    return table[ids], grad


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("cpu", "float64"),
                                            ("cpu", "float32"), ("cuda", "float32")])
@pytest.mark.parametrize("ids_shape", [(5,), (2, 3)])
def test_embedding_values_and_gradients(backend, dtype, ids_shape):
    needs_cuda(backend)
    ids = gn.input("ids", (None,) + ids_shape[1:], dtype="int64")
    layer = gn.nn.Embedding(6, 3, dtype=dtype)
    y = layer(ids)
    assert y.shape == (None,) + ids_shape[1:] + (3,) and y.dtype == np.dtype(dtype)
    layer.table.value = RNG.standard_normal((6, 3)).astype(dtype)
    g = gn.input("g", y.shape, dtype=dtype)
    (grad,) = gn.grad(gn.sum(y * g), [layer.table])
    I = np.array([1, 4, 1, 0, 5, 1][:int(np.prod(ids_shape))]).reshape(ids_shape)  # repeats
    G = RNG.standard_normal(ids_shape + (3,)).astype(dtype)
    expected, expected_grad = embedding_reference(I, layer.table.value.astype(np.float64),
                                                  G.astype(np.float64))
    value, got_grad = run([y, grad], backend, ids=I, g=G)
    np.testing.assert_allclose(value, expected, **TOL[dtype])
    np.testing.assert_allclose(got_grad, expected_grad, **TOL[dtype])
    assert not got_grad[[2, 3]].any()  # rows never read get no gradient


def test_embedding_matches_pytorch():
    torch = pytest.importorskip("torch")
    ids = gn.input("ids", (None, 4), dtype="int64")
    layer = gn.nn.Embedding(7, 3, dtype="float64")
    y = layer(ids)
    (grad,) = gn.grad(gn.sum(gn.tanh(y)), [layer.table])
    I = np.array([[0, 6, 6, 2], [3, 0, 1, 6]])
    value, got = run([y, grad], "cpu", ids=I)
    module = torch.nn.Embedding(7, 3).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor(layer.table.value))
    out = module(torch.tensor(I))
    torch.tanh(out).sum().backward()
    np.testing.assert_allclose(value, out.detach().numpy(), **TOL["float64"])
    np.testing.assert_allclose(got, module.weight.grad.numpy(), **TOL["float64"])


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda"])
def test_embedding_refuses_ids_out_of_range(backend):
    needs_cuda(backend)
    ids = gn.input("ids", (None,), dtype="int64")
    y = gn.nn.Embedding(4, 2)(ids)
    f = gn.compile(y, backend=backend, **BACKEND_OPTIONS.get(backend, {}))
    for bad in ([0, 4], [-1, 2]):
        with pytest.raises(gn.FeedError, match=r"feed 'ids' .*holds ids from -?\d to \d; "
                                               r"embedding.* needs ids in \[0, 4\)") as err:
            line = location(1)
            f(ids=np.array(bad))
        assert str(err.value).endswith(f"(call at {line})")
    assert f(ids=np.array([3, 0])).shape == (2, 2)


def test_embedding_eager_and_computed_ids():
    table = gn.param("table", RNG.standard_normal((4, 2)))
    np.testing.assert_allclose(gn.embedding(np.array([3, 1]), table.value),
                               table.value[[3, 1]], rtol=1e-12)
    with pytest.raises(gn.GraphError, match=r"embedding: ids must lie in \[0, 4\), got "
                                            r"values from 1 to 7"):
        gn.embedding(np.array([1, 7]), table.value)
    # ids computed inside a graph (not a feed): the numpy back end refuses one out of
    # range, a compiled step reads no memory outside the table and gives a row of zeros
    ids = gn.input("ids", (None,), dtype="int64")
    y = gn.embedding(ids + 2, table)
    with pytest.raises(gn.GraphError, match="ids must lie in"):
        gn.compile(y, backend="numpy")(ids=np.array([0, 1, 2]))
    got = gn.compile(y, backend="cpu")(ids=np.array([0, 1, 2]))
    np.testing.assert_allclose(got, np.r_[table.value[[2, 3]], np.zeros((1, 2))], rtol=1e-12)


def test_embedding_errors():
    with pytest.raises(gn.DTypeError, match="Embedding 'embedding1' takes integer ids"):
        gn.nn.Embedding(5, 2)(gn.input("x", (None, 3)))
    with pytest.raises(gn.GraphError, match="num >= 1"):
        gn.nn.Embedding(0, 2)
    table = gn.param("t", shape=(5, 2), seed=0)
    with pytest.raises(gn.DTypeError, match="embedding needs integer ids"):
        gn.embedding(gn.input("f", (3,)), table)
    with pytest.raises(gn.ShapeError, match=r"the table must be 2-D"):
        gn.embedding(gn.input("i", (3,), dtype="int64"), gn.param("t3", shape=(5, 2, 1),
                                                                    seed=0))


def test_embedding_feeds_an_lstm_and_trains():
    """Embedding -> LSTM -> Dense, a few Adam steps on the cpu back end: the loss falls."""
    ids = gn.input("ids", (None, 6), dtype="int64")
    labels = gn.input("labels", (None,), dtype="int64")
    logits = gn.nn.Dense(2)(gn.nn.LSTM(8)(gn.nn.Embedding(5, 4)(ids)))
    loss = gn.softmax_cross_entropy(logits, labels)
    params = gn.Graph(loss).params
    step = gn.compile(loss, updates=gn.optim.Adam(0.05).updates(loss, params), backend="cpu")
    I = RNG.integers(0, 5, (32, 6))
    L = (I[:, 0] >= 3).astype(np.int64)  # the class is in the first token
    first = float(step(ids=I, labels=L))
    for _ in range(30):
        last = float(step(ids=I, labels=L))
    assert last < 0.5 * first


def test_embedding_and_lstm_export_to_onnx_and_back(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator
    ids = gn.input("ids", (None, 4), dtype="int64")
    out = gn.nn.Dense(2)(gn.nn.LSTM(3)(gn.nn.Embedding(6, 2)(ids)))
    I = np.array([[0, 5, 2, 2], [1, 1, 3, 4]])
    expected = gn.compile(out, backend="numpy")(ids=I)
    path = gn.onnx.export([out], tmp_path / "embedding_lstm.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert "Gather" in {n.op_type for n in model.graph.node}
    (got,) = ReferenceEvaluator(model).run(None, {"ids": I})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    back = gn.onnx.load(path)
    (value,) = gn.compile(back.outputs, backend="cpu")(ids=I)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
