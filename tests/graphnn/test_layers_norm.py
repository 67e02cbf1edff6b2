"""BatchNorm, LayerNorm, GlobalAveragePooling2D and strided/dilated Conv2D: forward values and
gradients against NumPy references (always) and PyTorch (when installed), on numpy, cpu and
the CUDA simulator (tiny shapes), in float64 (1e-10) and float32 (1e-5); BatchNorm's running
averages after several steps, inference with them, and eager calls."""
import numpy as np
import pytest

import graphnn as gn

from helpers import BACKEND_OPTIONS

BACKENDS = ["numpy", "cpu", "cuda"]
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-5, atol=1e-5)}


def _run(outputs, feeds, backend, updates=None):
    f = gn.compile(outputs, updates=updates, backend=backend,
                   **BACKEND_OPTIONS.get(backend, {}))
    return f(**feeds)


def _normalized(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps), np.sqrt(var + eps)


def _norm_reference(x, gamma, beta, G, axes, eps):
    """y = x̂·gamma + beta and the gradients of sum(y * G) by the textbook formulas:
    dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ with dx̂ = G·gamma (means over `axes`)."""
    xhat, sigma = _normalized(x, axes, eps)
    y = xhat * gamma + beta
    dxhat = G * gamma
    dx = (dxhat - dxhat.mean(axis=axes, keepdims=True)
          - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)) / sigma
    kept = tuple(range(x.ndim - np.ndim(gamma)))
    return y, dx, (G * xhat).sum(axis=kept), G.sum(axis=kept)


def _feeds(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    return x, rng.standard_normal(shape).astype(dtype)


def _set_affine(layer, rng, dtype):
    layer.gamma.value = rng.uniform(0.5, 1.5, layer.gamma.shape).astype(dtype)
    layer.beta.value = rng.standard_normal(layer.beta.shape).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_batch_norm_training_forward_and_gradients(backend, dtype, shape):
    X, G = _feeds(shape, 1, dtype)
    x, g = gn.input("x", (None,) + shape[1:], dtype=dtype), gn.input("g", shape, dtype=dtype)
    layer = gn.nn.BatchNorm(eps=1e-3)
    y = layer(x)
    _set_affine(layer, np.random.default_rng(2), dtype)
    grads = gn.grad(gn.sum(y * g), [x, layer.gamma, layer.beta])
    got = _run([y] + grads, {"x": X, "g": G}, backend)
    axes = tuple(range(len(shape) - 1))
    expected = _norm_reference(X.astype(np.float64), layer.gamma.value.astype(np.float64),
                               layer.beta.value.astype(np.float64), G.astype(np.float64),
                               axes, 1e-3)
    for name, a, b in zip(["y", "dx", "dgamma", "dbeta"], got, expected):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape
        np.testing.assert_allclose(a, b, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_running_averages_and_inference(backend):
    dtype, momentum, eps = "float64", 0.2, 1e-5
    x = gn.input("x", (None, 2, 2, 3), dtype=dtype)
    layer = gn.nn.BatchNorm(momentum=momentum, eps=eps)
    y = layer(x)
    updates = gn.nn.state_updates(y)
    assert set(updates) == {layer.running_mean, layer.running_var}
    f = gn.compile(y, updates=updates, backend=backend, **BACKEND_OPTIONS.get(backend, {}))
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(4):
        X = np.random.default_rng(step).standard_normal((3, 2, 2, 3)) * (step + 1) + step
        f(x=X)
        n = X.size // 3
        rm = (1 - momentum) * rm + momentum * X.mean(axis=(0, 1, 2))
        rv = (1 - momentum) * rv + momentum * X.var(axis=(0, 1, 2)) * n / (n - 1)
        np.testing.assert_allclose(layer.running_mean.value, rm, rtol=1e-10)
        np.testing.assert_allclose(layer.running_var.value, rv, rtol=1e-10)
    # inference: the running averages, and no state moves
    X = np.random.default_rng(9).standard_normal((2, 2, 2, 3))
    got = _run(gn.nn.inference(y), {"x": X}, backend)
    np.testing.assert_allclose(got, (X - rm) / np.sqrt(rv + eps), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.running_mean.value, rm, rtol=1e-10)


def test_batch_norm_state_rides_along_with_the_optimizer_and_a_batch_of_one():
    x = gn.input("x", (None, 2), dtype="float64")
    layer = gn.nn.BatchNorm(momentum=0.5)
    loss = gn.sum(layer(x) * np.array([1.0, -2.0]))
    updates = gn.optim.SGD(0.1).updates(loss, layer.params)
    assert {layer.running_mean, layer.running_var} <= set(updates)
    step = gn.compile(loss, updates=updates, backend="cpu")
    step(x=np.array([[1.0, 4.0]]))  # one sample: variance 0, kept (no n/(n-1) = inf)
    np.testing.assert_allclose(layer.running_mean.value, [0.5, 2.0])
    np.testing.assert_allclose(layer.running_var.value, [0.5, 0.5])
    assert np.isfinite(step(x=np.array([[1.0, 4.0], [3.0, 0.0]])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis", [((3, 4), -1), ((2, 3, 4), -1), ((2, 2, 3), (-2, -1))])
def test_layer_norm_forward_and_gradients(backend, dtype, shape, axis):
    X, G = _feeds(shape, 3, dtype)
    x, g = gn.input("x", (None,) + shape[1:], dtype=dtype), gn.input("g", shape, dtype=dtype)
    layer = gn.nn.LayerNorm(axis=axis, eps=1e-4)
    y = layer(x)
    _set_affine(layer, np.random.default_rng(4), dtype)
    grads = gn.grad(gn.sum(y * g), [x, layer.gamma, layer.beta])
    got = _run([y] + grads, {"x": X, "g": G}, backend)
    axes = tuple(range(len(shape) - (1 if axis == -1 else 2), len(shape)))
    expected = _norm_reference(X.astype(np.float64), layer.gamma.value.astype(np.float64),
                               layer.beta.value.astype(np.float64), G.astype(np.float64),
                               axes, 1e-4)
    for name, a, b in zip(["y", "dx", "dgamma", "dbeta"], got, expected):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL[dtype])
    # the same in inference: LayerNorm has no training mode
    assert gn.nn.inference(y) is y


def test_layer_norm_refuses_the_batch_axis():
    with pytest.raises(gn.ShapeError, match="must name the last axes"):
        gn.nn.LayerNorm(axis=0)(gn.input("x", (None, 4)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_average_pooling(backend):
    X, G = _feeds((2, 3, 2, 4), 5, "float64")
    x = gn.input("x", (None, 3, 2, 4), dtype="float64")
    y = gn.nn.GlobalAveragePooling2D()(x)
    assert y.shape == (None, 4)
    out, dx = _run([y, gn.grad(gn.sum(y * G[:, 0, 0, :]), [x])[0]], {"x": X}, backend)
    np.testing.assert_allclose(out, X.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dx, np.broadcast_to(G[:, None, None, 0, 0, :] / 6, X.shape),
                               rtol=1e-12)
    with pytest.raises(gn.ShapeError, match="expects NHWC images"):
        gn.nn.GlobalAveragePooling2D()(gn.input("flat", (None, 4)))


def _conv_reference(x, w, stride, dilation, padding):
    """Direct loops: y[n, i, j, k] = Σ x_padded[n, i·s + a·d, j·s + b·d, c] · w[a, b, c, k]
    (Keras "same": out = ceil(in / s), the extra pad at bottom/right), and the adjoint maps
    giving dx and dw for an upstream G."""
    n, h, wd, c = x.shape
    kh, kw, _, k = w.shape
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    if padding == "valid":
        oh, ow, ph, pw = (h - span_h) // stride + 1, (wd - span_w) // stride + 1, 0, 0
    else:
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + span_h - h, 0) // 2
        pw = max((ow - 1) * stride + span_w - wd, 0) // 2
    xp = np.zeros((n, h + span_h + stride, wd + span_w + stride, c))
    xp[:, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, oh, ow, k))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    y[:, i, j] += xp[:, i * stride + a * dilation, j * stride + b * dilation] @ w[a, b]

    def grads(G):
        dxp, dw = np.zeros_like(xp), np.zeros_like(w)
        for i in range(oh):
            for j in range(ow):
                for a in range(kh):
                    for b in range(kw):
                        r, s = i * stride + a * dilation, j * stride + b * dilation
                        dxp[:, r, s] += G[:, i, j] @ w[a, b].T
                        dw[a, b] += xp[:, r, s].T @ G[:, i, j]
        return dxp[:, ph:ph + h, pw:pw + wd], dw
    return y, grads


CONVS = [(2, 1, "valid"), (2, 1, "same"), (1, 2, "valid"), (1, 2, "same"), (2, 2, "same"),
         (3, 2, "valid")]


@pytest.mark.parametrize("stride, dilation, padding", CONVS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_dilated_conv2d_forward_and_gradients(stride, dilation, padding, backend):
    if backend == "cuda" and (stride, dilation) not in ((2, 1), (2, 2)):
        pytest.skip("the simulator runs two of the cases (tiny shapes, slow threads)")
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 7, 6, 2))
    x = gn.input("x", (None, 7, 6, 2), dtype="float64")
    layer = gn.nn.Conv2D(3, (3, 2), strides=stride, dilation_rate=dilation, padding=padding,
                         seed=0)
    y = layer(x)
    W, b = (p.value for p in layer.params)
    b[:] = rng.standard_normal(3)
    expected, adjoint = _conv_reference(X, W, stride, dilation, padding)
    assert y.shape == (None,) + expected.shape[1:]
    G = rng.standard_normal(expected.shape)
    g = gn.input("g", expected.shape, dtype="float64")
    dx, dw, db = gn.grad(gn.sum(y * g), [x, layer.W, layer.b])
    out, gx, gw, gb = _run([y, dx, dw, db], {"x": X, "g": G}, backend)
    np.testing.assert_allclose(out, expected + b, rtol=1e-10, atol=1e-12)
    ex, ew = adjoint(G)
    np.testing.assert_allclose(gx, ex, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb, G.sum(axis=(0, 1, 2)), rtol=1e-10)


def test_conv2d_refuses_bad_strides_and_dilations():
    with pytest.raises(gn.GraphError, match="strides must be a positive int"):
        gn.nn.Conv2D(2, 3, strides=(1, 2))
    with pytest.raises(gn.GraphError, match="dilation_rate must be an int or a pair"):
        gn.nn.Conv2D(2, 3, dilation_rate=0)
    with pytest.raises(gn.GraphError, match="dilation must be a positive int"):
        gn.conv2d(gn.input("x", (1, 5, 5, 1)), gn.param("k", shape=(3, 3, 1, 1)), dilation=-1)


def test_eager_calls_match_the_graph():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((4, 3, 3, 2))
    model = gn.nn.Sequential([gn.nn.Conv2D(3, 2, strides=1, dilation_rate=2, seed=0),
                              gn.nn.BatchNorm(), gn.nn.LayerNorm(),
                              gn.nn.GlobalAveragePooling2D()])
    eager = model(X)  # builds on a float64 stand-in, updates the running averages
    bn = model.layers[1]
    moved = bn.running_mean.value.copy()
    assert np.any(moved != 0)
    bn.running_mean.value = np.zeros(3)
    bn.running_var.value = np.ones(3)
    x = gn.input("x", (None, 3, 3, 2), dtype="float64")
    y = model(x)
    graph = gn.compile(y, updates=gn.nn.state_updates(y), backend="numpy")(x=X)
    np.testing.assert_allclose(eager, graph, rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean.value, moved, rtol=1e-12)
    with gn.nn.inference_mode():
        np.testing.assert_allclose(model(X), gn.compile(gn.nn.inference(y))(x=X), rtol=1e-12)
    # an eager training step through all of them
    labels = np.array([0, 1, 2, 0])
    step = gn.eager.step(lambda x, y: gn.softmax_cross_entropy(model(x), y), gn.optim.SGD(0.1))
    losses = [float(step(x=X, y=labels)) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3, 5, 5, 2))
    G = rng.standard_normal((3, 3, 3, 4))
    # conv (stride 2, dilation 2, valid) -> batch norm, forward and gradients
    x = gn.input("x", (None, 5, 5, 2), dtype="float64")
    conv = gn.nn.Conv2D(4, 2, strides=1, dilation_rate=2, seed=1)
    bn = gn.nn.BatchNorm(momentum=0.1, eps=1e-5)
    y = bn(conv(x))
    _set_affine(bn, rng, "float64")
    g = gn.input("g", G.shape, dtype="float64")
    wrt = [x, conv.W, conv.b, bn.gamma, bn.beta]
    step = gn.compile([y] + gn.grad(gn.sum(y * g), wrt), updates=gn.nn.state_updates(y),
                      backend="cpu")
    ours = step(x=X, g=G)
    tx = torch.tensor(X.transpose(0, 3, 1, 2), requires_grad=True)
    tconv = torch.nn.Conv2d(2, 4, 2, dilation=2, dtype=torch.float64)
    tbn = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(conv.W.value.transpose(3, 2, 0, 1)))
        tconv.bias.copy_(torch.tensor(conv.b.value))
        tbn.weight.copy_(torch.tensor(bn.gamma.value))
        tbn.bias.copy_(torch.tensor(bn.beta.value))
    ty = tbn(tconv(tx))
    (ty * torch.tensor(G.transpose(0, 3, 1, 2))).sum().backward()
    theirs = [ty.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
              tconv.weight.grad.numpy().transpose(2, 3, 1, 0), tconv.bias.grad.numpy(),
              tbn.weight.grad.numpy(), tbn.bias.grad.numpy()]
    for name, a, b in zip(["y", "dx", "dW", "db", "dgamma", "dbeta"], ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(bn.running_mean.value, tbn.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.value, tbn.running_var.numpy(), rtol=1e-10)
    tbn.eval()
    np.testing.assert_allclose(gn.compile(gn.nn.inference(y), backend="cpu")(x=X),
                               tbn(tconv(tx)).detach().numpy().transpose(0, 2, 3, 1),
                               rtol=1e-10, atol=1e-10)
    # layer norm over the last axis, float32 to 1e-5
    Z = rng.standard_normal((4, 6)).astype(np.float32)
    z = gn.input("z", (None, 6))
    ln = gn.nn.LayerNorm()
    out = ln(z)
    _set_affine(ln, rng, "float32")
    dz = gn.grad(gn.sum(out * out), [z])[0]
    got, got_dz = gn.compile([out, dz], backend="cpu")(z=Z)
    tz = torch.tensor(Z, requires_grad=True)
    tln = torch.nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        tln.weight.copy_(torch.tensor(ln.gamma.value))
        tln.bias.copy_(torch.tensor(ln.beta.value))
    tout = tln(tz)
    (tout * tout).sum().backward()
    np.testing.assert_allclose(got, tout.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dz, tz.grad.numpy(), rtol=1e-5, atol=1e-5)
    # global average pooling and a strided "valid" convolution
    tgap = torch.nn.functional.adaptive_avg_pool2d(tx, 1).detach().numpy()[:, :, 0, 0]
    gap = gn.compile(gn.nn.GlobalAveragePooling2D()(x), backend="cpu")(x=X)
    np.testing.assert_allclose(gap, tgap, rtol=1e-12)
    strided = gn.nn.Conv2D(3, 3, strides=2, seed=4, use_bias=False)
    ys = gn.compile(strided(x), backend="cpu")(x=X)
    tys = torch.nn.functional.conv2d(tx, torch.tensor(strided.W.value.transpose(3, 2, 0, 1)),
                                     stride=2)
    np.testing.assert_allclose(ys, tys.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10)


def test_onnx_export_writes_the_inference_graph(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x = gn.input("x", (None, 4))
    model = gn.nn.Sequential([gn.nn.Dense(6, "gelu", seed=0), gn.nn.BatchNorm(),
                              gn.nn.Dropout(0.5, seed=1), gn.nn.Dense(2, seed=2)])
    h = model(x)
    # every named activation has an ONNX form
    y = gn.concat([h, gn.selu(h), gn.silu(h), gn.gelu(h, approximate=True), gn.softsign(h),
                   gn.hard_sigmoid(h), gn.erf(h)], axis=1)
    bn = model.layers[1]
    bn.running_mean.value = np.linspace(-0.5, 0.5, 6).astype(np.float32)
    bn.running_var.value = np.linspace(0.5, 2.0, 6).astype(np.float32)
    path = gn.onnx.export(y, tmp_path / "m.onnx")
    X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": X})
    expected = gn.compile(gn.nn.inference(y), backend="numpy")(x=X)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
