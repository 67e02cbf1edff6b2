"""The CUDA back end on a real GPU (tier 3): larger shapes and the default launch sizes.

Skipped unless a GPU is present and the simulator is off. tests/conftest.py switches the
simulator on by default, so run these with:  NUMBA_ENABLE_CUDASIM=0 pytest -m gpu
"""
import numpy as np
import pytest

import graphnn as gn
from graphnn.backends.cuda import simulator_enabled


def _real_gpu():
    if simulator_enabled():
        return False
    from numba import cuda
    return cuda.is_available()


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU with "
                                 "NUMBA_ENABLE_CUDASIM=0 (run: NUMBA_ENABLE_CUDASIM=0 "
                                 "pytest -m gpu)")]
rng = np.random.default_rng(3)


def mlp(tag, sizes=(784, 256, 10)):
    x = gn.input("x", (None, sizes[0]))
    y = gn.input("y", (None,), dtype="int64")
    params, h = [], x
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = gn.param(f"w{k}_{tag}", shape=(a, b), init="glorot_uniform", seed=k)
        bias = gn.param(f"b{k}_{tag}", np.zeros(b, np.float32))
        params += [w, bias]
        h = h @ w + bias
        if k < len(sizes) - 2:
            h = gn.relu(h)
    return gn.softmax_cross_entropy(h, y), params


def test_mlp_training_on_the_gpu_matches_the_cpu_backend():
    X = rng.normal(size=(256, 784)).astype(np.float32)
    Y = rng.integers(0, 10, 256)
    results = {}
    for backend in ("cpu", "cuda"):
        loss, params = mlp(backend)
        step = gn.compile(loss, updates=gn.optim.SGD(0.1, momentum=0.9).updates(loss, params),
                          backend=backend)
        losses = [float(step(x=X, y=Y)) for _ in range(5)]
        if backend == "cuda":
            step.params_to_host()
        results[backend] = losses, [p.value.copy() for p in params]
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-4)
    for got, expected in zip(results["cuda"][1], results["cpu"][1]):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("block,tile", [(128, 16), (256, 32), (32, 8)])
def test_matmul_reduce_and_conv_with_several_launch_sizes(block, tile):
    a, b = rng.normal(size=(130, 70)).astype(np.float32), rng.normal(size=(70, 50)).astype(np.float32)
    img = rng.normal(size=(8, 28, 28, 3)).astype(np.float32)
    ker = rng.normal(size=(3, 3, 3, 16)).astype(np.float32)
    A, B = gn.input("a", a.shape), gn.input("b", b.shape)
    I, K = gn.input("img", img.shape), gn.input("ker", ker.shape)
    conv = gn.max_pool2d(gn.relu(gn.conv2d(I, K, padding="same")), 2)
    outs = [A @ B, A.T.T @ B, gn.sum(A, axis=0), gn.max(A, axis=1), conv] + \
        gn.grad(gn.sum(conv), [I, K])
    feeds = dict(a=a, b=b, img=img, ker=ker)
    expected = gn.compile(outs, backend="cpu")(**feeds)
    got = gn.compile(outs, backend="cuda", block=block, tile=tile)(**feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_adam_transcendentals_places_strided_convolutions_and_wide_reductions():
    """Adam (its scalar steps ride along other kernels), exp/log/tanh/sigmoid/softplus,
    concat and pad (place kernels), a stride-2 convolution and its gradients, and a
    reduction with more than 1,024 outputs (grid-stride over output blocks), against the
    cpu back end."""
    img = rng.normal(size=(4, 9, 9, 2)).astype(np.float32)
    wide = rng.normal(size=(3, 2500)).astype(np.float32)
    results = {}
    for backend in ("cpu", "cuda"):
        I = gn.input("img", img.shape)
        A = gn.input("wide", wide.shape)
        k = gn.param(f"k_{backend}", shape=(3, 3, 2, 4), init="he_normal", seed=3)
        h = gn.conv2d(I, k, stride=2, padding="same")             # (4, 5, 5, 4)
        h = gn.concat([gn.tanh(h), gn.ops.pad_axis(gn.sigmoid(h), 3, 1, 1)], axis=3)
        feats = gn.flatten(h)
        loss = gn.mean(gn.softplus(feats)) + gn.mean(gn.log(1.0 + gn.exp(-gn.abs(feats))))
        loss = loss + gn.mean(gn.sum(A * A, axis=0)) * 1e-3        # 2500 outputs
        step = gn.compile([loss, gn.sum(A, axis=0)],
                          updates=gn.optim.Adam(0.01).updates(loss, [k]), backend=backend)
        values = [step(img=img, wide=wide) for _ in range(3)]
        results[backend] = ([float(v[0]) for v in values], values[-1][1], k.value.copy())
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-4)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results["cuda"][2], results["cpu"][2], rtol=1e-3, atol=1e-5)


def test_the_gpu_check_tool_prints_one_table(capsys):
    from graphnn.tools import gpu_check
    assert gpu_check.main(["--steps", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp-medium", "cnn-mnist", "eltwise"):
        assert name in out
