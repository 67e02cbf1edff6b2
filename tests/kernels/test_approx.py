"""Accuracy of the vectorisable float32 exp/tanh used by float32 CPU modules, measured in
ulps against float64 references through compiled graphs (the way users get them)."""
import re

import numba
import numpy as np
import pytest

import graphnn as gn


def max_ulps(got, reference):
    ref32 = reference.astype(np.float32)
    spacing = np.spacing(np.abs(ref32)).astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - reference) / spacing))


@pytest.fixture(scope="module")
def functions():
    x = gn.input("approx_x", (None,))
    f = gn.compile([gn.exp(x), gn.tanh(x), gn.sigmoid(x)], backend="cpu")
    assert "vectorisable float32 exp, tanh and erf" in f.source
    return lambda values: f(approx_x=values)


@pytest.mark.parametrize("low, high, exp_bound, tanh_bound, sigmoid_bound", [
    (-1, 1, 1.2, 4.0, 3.0),
    (-10, 10, 1.2, 4.7, 3.0),
    (-87, 88, 5.0, 4.7, 5.0),
])
def test_error_bounds(functions, low, high, exp_bound, tanh_bound, sigmoid_bound):
    x = np.linspace(low, high, 400_001).astype(np.float32)
    x64 = x.astype(np.float64)
    e, t, s = functions(x)
    assert max_ulps(e, np.exp(x64)) <= exp_bound
    assert max_ulps(t, np.tanh(x64)) <= tanh_bound
    assert max_ulps(s, 1 / (1 + np.exp(-x64))) <= sigmoid_bound


def test_special_values(functions):
    x = np.array([np.nan, np.inf, -np.inf, 1000, -1000, 0, 1e-30, -1e-30], np.float32)
    e, t, s = functions(x)
    np.testing.assert_array_equal(e[1:], [np.inf, 0, np.inf, 0, 1, 1, 1])
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 1, -1, 0, 1e-30, -1e-30], np.float32))
    np.testing.assert_array_equal(s[1:], [1, 0, 1, 0, 0.5, 0.5, 0.5])
    assert np.isnan(e[0]) and np.isnan(t[0]) and np.isnan(s[0])


def test_sigmoid_uses_the_exp_of_nonpositive_arguments_and_shares_tanhs_division():
    # kernels/cpu.py _nonpositive_exps: sigmoid's exp(-|x|) calls exp_nonpositive (no
    # handling of large arguments); its quotient and tanh's merge into one division per
    # vector loop (fastmath arcp/reassoc), which halves the divider's work
    x = gn.input("share_x", (None,))
    f = gn.compile(gn.sigmoid(x) * gn.tanh(x) + x * x, backend="cpu")
    assert "exp_nonpositive(-abs(x0))" in f.source and " exp(-abs(" not in f.source
    values = np.concatenate([np.linspace(-90, 90, 200_001), [-1e4, 1e4, -0.0]])
    values = values.astype(np.float32)
    x64 = values.astype(np.float64)
    product = 1 / (1 + np.exp(-x64)) * np.tanh(x64)
    # within 5 ulps of the terms' size (the sum cancels near x = -0.1)
    scale = np.spacing((np.abs(product) + x64 * x64).astype(np.float32))
    assert np.all(np.abs(f(share_x=values) - (product + x64 * x64)) <= 5 * scale)
    assert np.isnan(f(share_x=np.array([np.nan], np.float32))[0])
    divisions = re.findall(r"= fdiv [a-z ]*(<\d+ x float>|float) ", _llvm_ir(f.module.program))
    assert divisions and len(divisions) == len(set(divisions))  # one per loop version


def test_exp_nonpositive(monkeypatch):
    from kernels import approx
    from kernels.approx import exp_nonpositive
    from kernels.cpu import _nonpositive_exps
    # (generated modules compile exp_reduced beside it; here it is compiled for the test)
    monkeypatch.setattr(approx, "exp_reduced", numba.njit(approx.exp_reduced))
    assert _nonpositive_exps("v = exp(-abs(x0)) + exp(-abs(f(a, b))) * exp(-abs(x0) + 1)") == \
        "v = exp_nonpositive(-abs(x0)) + exp_nonpositive(-abs(f(a, b))) * exp(-abs(x0) + 1)"
    assert _nonpositive_exps("y = np.exp(-abs(x)) + myexp(-abs(x))") == \
        "y = np.exp(-abs(x)) + myexp(-abs(x))"
    compiled = numba.njit(exp_nonpositive)
    x = np.linspace(-87, 0, 100_001).astype(np.float32)
    got = np.array([compiled(v) for v in x[::97]])
    assert max_ulps(got, np.exp(x[::97].astype(np.float64))) <= 1.5
    special = [compiled(np.float32(v)) for v in (-np.inf, -100.0, -87.4, -0.0, 0.0)]
    assert special == [0, 0, 0, 1, 1]
    assert np.isnan(compiled(np.float32(np.nan)))


def test_erf_error_bounds_and_special_values():
    import math
    x = gn.input("approx_erf", (None,))
    f = gn.compile([gn.erf(x), gn.gelu(x)], backend="cpu")
    assert "def erf(x):" in f.source or any(
        "def erf(x):" in open(path).read() for _, path in getattr(f, "_kernels", []))
    for low, high, bound in ((-1, 1, 4.0), (-4, 4, 6.0), (-20, 20, 6.0)):
        values = np.linspace(low, high, 200_001).astype(np.float32)
        x64 = values.astype(np.float64)
        erf, gelu = f(approx_erf=values)
        assert max_ulps(erf, np.array([math.erf(v) for v in x64.tolist()])) <= bound
        exact = x64 * 0.5 * (1 + np.array([math.erf(v) for v in (x64 / math.sqrt(2)).tolist()]))
        np.testing.assert_allclose(gelu, exact, rtol=1e-6, atol=2e-6)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-8, 1e30], np.float32)
    erf, _ = f(approx_erf=special)
    assert np.isnan(erf[0])
    np.testing.assert_array_equal(erf[[1, 2, 3, 4, 7]], [1, -1, 0, 0, 1])
    np.testing.assert_allclose(erf[5:7], [1.1283792e-30, -1.1283792e-08], rtol=3e-7)
    assert np.signbit(erf[4]) and not np.signbit(erf[3])


def test_float64_graphs_keep_libm():
    x = gn.input("approx_x64", (3,), dtype="float64")
    f = gn.compile(gn.tanh(x), backend="cpu")
    assert "vectorisable" not in f.source
    values = np.array([0.1, 1.0, 5.0])
    np.testing.assert_allclose(f(approx_x64=values), np.tanh(values), rtol=1e-15)


def _llvm_ir(dispatcher):
    """The LLVM IR of a compiled generated function, compiled afresh (a function loaded
    from Numba's cache keeps only machine code)."""
    import numba
    options = {k: v for k, v in dispatcher.targetoptions.items()
               if k not in ("cache", "nopython")}
    fresh = numba.njit(**options)(dispatcher.py_func)
    fresh.compile(dispatcher.signatures[0])
    return "\n".join(fresh.inspect_llvm().values())


@pytest.mark.parametrize("library", [False, True])
def test_loops_calling_the_approximations_ask_for_512_bit_vectors(library):
    # kernels/approx.py wide_vectors: the function whose loop calls exp or tanh carries
    # the attribute; a loop of plain arithmetic (memory-bound) and float64 modules do not
    x = gn.input("wide_x", (None,))
    f = gn.compile(gn.sigmoid(x) * gn.tanh(x) + x * x, backend="cpu", library=library)
    values = np.linspace(-6, 6, 1001).astype(np.float32)
    expected = 1 / (1 + np.exp(-values.astype(np.float64))) * np.tanh(values) + values ** 2
    np.testing.assert_allclose(f(wide_x=values), expected, rtol=2e-6, atol=1e-7)
    compiled = f._kernels[0][0].kernel if library else f.module.program
    assert '"prefer-vector-width"="512"' in _llvm_ir(compiled)
    assert f.source.count("    wide_vectors()") == 1

    plain = gn.compile(x * x - 0.5 * x, backend="cpu", library=library)
    assert "wide_vectors" not in plain.source
    y = gn.input("wide_x64", (None,), dtype="float64")
    assert "wide_vectors" not in gn.compile(gn.tanh(y), backend="cpu", library=library).source
