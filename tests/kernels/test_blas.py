"""kernels/blas.py: c = alpha * op(a) @ op(b) + beta * c through BLAS."""
import numpy as np
import pytest

from kernels.blas import GEMM, GEMV


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_matches_numpy_for_every_transpose_and_scale(dtype, ta, tb):
    rng = np.random.default_rng(3)
    m, n, k = 5, 7, 3
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    product = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for alpha, beta in [(1.0, 0.0), (-0.25, 1.0), (2.0, 0.5)]:
        c = c0.copy()
        GEMM(ta, tb, dtype(alpha), a, b, dtype(beta), c)
        np.testing.assert_allclose(c, alpha * product + beta * c0, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m, n, k", [(1, 7, 5), (6, 1, 5), (1, 1, 3), (1, 300, 200)])
def test_gemv_is_gemm_for_one_row_or_one_column(dtype, ta, tb, m, n, k):
    """gemv (the batch-1 dense layer's product) against NumPy in float64, every transpose
    and scale, with what c held read when beta is not 0."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    product = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for alpha, beta in [(1.0, 0.0), (-0.25, 1.0), (2.0, 0.5)]:
        c = c0.copy() if beta else np.full_like(c0, np.nan)
        GEMV(ta, tb, dtype(alpha), a, b, dtype(beta), c)
        np.testing.assert_allclose(c, alpha * product + beta * c0, rtol=tol,
                                   atol=tol * np.abs(product).max())


def test_beta_zero_ignores_what_c_held_and_empty_products_are_zero():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    c = np.full((2, 4), np.nan, np.float32)
    GEMM(False, False, np.float32(1), a, b, np.float32(0), c)
    np.testing.assert_array_equal(c, np.full((2, 4), 3.0))
    empty = np.full((2, 4), np.nan, np.float32)
    GEMM(False, False, np.float32(1), np.ones((2, 0), np.float32),
         np.ones((0, 4), np.float32), np.float32(0), empty)
    np.testing.assert_array_equal(empty, np.zeros((2, 4)))
    kept = np.full((2, 4), 2.0, np.float32)
    GEMM(False, False, np.float32(1), np.ones((2, 0), np.float32),
         np.ones((0, 4), np.float32), np.float32(1), kept)
    np.testing.assert_array_equal(kept, np.full((2, 4), 2.0))


def test_blas_is_numpys_own_and_its_threads_can_be_set():
    from kernels import blas
    assert blas.integer_bits() in (32, 64)
    before = blas.threads()
    if before is None:
        pytest.skip("this BLAS does not report its threads")
    try:
        assert blas.set_threads(1) is True
        assert blas.threads() == 1
    finally:
        blas.set_threads(before)


def test_code_generated_for_another_blas_integer_width_is_refused():
    from kernels import blas
    other = 32 if blas.integer_bits() == 64 else 64
    with pytest.raises(blas.BlasNotFound, match=f"{other}-bit integers"):
        blas.register(blas.CBLAS_SYMBOL, other)


def test_compiled_matmuls_need_no_scipy(tmp_path):
    # scipy made unimportable: the cpu back end multiplies with numpy's own BLAS
    import os
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import numpy as np, graphnn as gn\n"
        "x = gn.input('x', (None, 3)); W = gn.param('W', np.arange(6.0).reshape(3, 2))\n"
        "f = gn.compile(gn.matmul(x, W), backend='cpu')\n"
        "print(np.asarray(f(x=np.ones((4, 3), np.float32))).tolist())\n"
        "print('scipy' in sys.modules and sys.modules['scipy'] is not None)\n")
    env = dict(os.environ, GRAPHNN_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == [str([[6.0, 9.0]] * 4), "False"]


def test_the_blas_describes_itself():
    from kernels import blas
    text = blas.describe()
    assert isinstance(text, str) and ("OpenBLAS" in text or "gemm" in text)


def test_a_numpy_without_blas_is_a_clear_backend_error(monkeypatch):
    import graphnn as gn
    from kernels import blas

    def missing():
        raise blas.BlasNotFound("this numpy exports no cblas_sgemm")
    monkeypatch.setattr(blas, "integer_bits", lambda: None)
    monkeypatch.setattr(blas, "_numpy_blas", missing)
    x = gn.input("x", (None, 3))
    with pytest.raises(gn.BackendError, match=r"no cblas_sgemm \(at .*test_blas.py:\d+\)"):
        gn.compile(x @ np.ones((3, 2), np.float32), backend="cpu")


def test_the_blas_library_beside_numpy_is_found_directly_too():
    # where the extension module does not search its dependencies (Windows), the BLAS
    # library numpy's wheels carry is opened by its path
    import ctypes
    from kernels import blas
    paths = list(blas._libraries())[1:]
    if not paths:
        pytest.skip("this numpy carries no BLAS library of its own")
    library, pattern, bits = blas._numpy_blas()
    assert any(hasattr(ctypes.CDLL(p), pattern.format("s")) for p in paths)
