"""kernels/blas.py: c = alpha * op(a) @ op(b) + beta * c through BLAS."""
import numpy as np
import pytest

from kernels.blas import GEMM


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
