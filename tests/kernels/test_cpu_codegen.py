"""kernels.cpu on hand-built kernel-IR programs: no graphnn involved."""
import numpy as np
import pytest

from kernels import cpu, ir, loader, windows


def _program():
    x = ir.Buffer("in0", ("d0", 3), "float32", "input", 0)
    w = ir.Buffer("st0", (3, 2), "float32", "state", 0)
    h = ir.Buffer("h", ("d0", 2), "float32")
    y = ir.Buffer("y", ("d0", 2), "float32")
    s = ir.Buffer("s", (), "float32")
    steps = [
        ir.Matmul(h, x, w, comment="h = x @ w"),
        ir.Elementwise(y, ir.ScalarExpr({"a": ir.Load(h, ("i0", "i1"))},
                                        [("v", "tanh(a) * T(2.5)")], "v"), "y = 2.5 tanh(h)"),
        ir.Reduce(s, ir.ScalarExpr({"a": ir.Load(y, ("i0", "i1"))}, [("v", "a * a")], "v"),
                  ("d0", 2), (0, 1), "sum", "s = sum(y*y)"),
    ]
    return ir.Program([x], [w], [], steps, [y, s], [], {"d0": (0, 0)})


def test_generated_module_runs_and_matches_numpy():
    source = cpu.generate(_program())
    assert "@njit(cache=True" in source and "np.float32(2.5)" in source
    module, path = loader.load_module(source)
    X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    W = np.ones((3, 2), np.float32)
    y, s = cpu.run(module, X, W)
    expected = 2.5 * np.tanh(X @ W)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(s, np.sum(expected ** 2), rtol=1e-5)
    assert y.dtype == np.float32 and s.dtype == np.float32


def test_same_source_same_module_name():
    a = loader.load_module(cpu.generate(_program()))[1]
    b = loader.load_module(cpu.generate(_program()))[1]
    assert a == b


def test_window_helpers_run_as_plain_python():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 4, 2))
    out = np.empty((1, 2, 2, 2))
    windows.max_pool2d(x, 2, 2, out)
    expected = x.reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4))
    np.testing.assert_allclose(out, expected)
    grad = np.empty_like(x)
    windows.max_pool2d_grad(x, np.ones((1, 2, 2, 2)), 2, 2, grad)
    assert grad.sum() == 8 and set(np.unique(grad)) <= {0.0, 1.0}


def test_steps_alike_but_for_their_buffers_share_a_function():
    x = ir.Buffer("in0", (4, 3), "float32", "input", 0)
    outs = [ir.Buffer(f"b{k}", (4,), "float32") for k in range(3)]
    steps = [ir.Elementwise(out, ir.ScalarExpr({"a": ir.Load(x, ("i0", str(k)))},
                                                [("v", "a * T(2)")], "v"), f"column {k}")
             for k, out in enumerate(outs)]
    source = cpu.generate(ir.Program([x], [], [], steps, outs, []))
    assert source.count("def elementwise_0(buf0, buf1, n0):") == 1
    assert "elementwise_0(in0, b2, np.intp(2))" in source
    module, _ = loader.load_module(source)
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    for k, got in enumerate(cpu.run(module, X)):
        np.testing.assert_array_equal(got, 2 * X[:, k])


def test_a_reshape_of_a_reshape_views_the_first_buffer():
    x = ir.Buffer("in0", (2, 3), "float32", "input", 0)
    row = ir.Buffer("b1_row", (1, 6), "float32", "view")
    back = ir.Buffer("b2_back", (2, 3), "float32", "view")
    out = ir.Buffer("b3_out", (2, 3), "float32")
    steps = [ir.Reshape(row, x), ir.Reshape(back, row),
             ir.Elementwise(out, ir.ScalarExpr({"a": ir.Load(back, ("i0", "i1"))},
                                               [("v", "a + T(1)")], "v"))]
    source = cpu.generate(ir.Program([x], [], [], steps, [out], []))
    assert "b2_back = in0\n" in source and "b1_row =" not in source
    module, _ = loader.load_module(source)
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(cpu.run(module, X)[0], X + 1)


def test_large_temporaries_of_every_dtype_are_workspace_views():
    """Temporaries of 32 KiB and more, of a dynamic or a static shape and of integer or
    float dtypes, are views of the workspace; the program asks for a larger one when the
    workspace it is given is too small, before any step."""
    x = ir.Buffer("in0", ("d0", 4096), "float64", "input", 0)
    mask = ir.Buffer("mask", ("d0", 4096), "int64")
    col = ir.Buffer("col", (4096,), "float32")          # static: 16 KiB, allocated
    wide = ir.Buffer("wide", (8, 4096), "int32")        # static: 128 KiB, a view
    out = ir.Buffer("out", (), "float64")
    one = ir.ScalarExpr({"a": ir.Load(x, ("i0", "i1"))}, [("v", "T(1) if a > T(0) else T(0)")], "v")
    steps = [
        ir.Elementwise(mask, one),
        ir.Elementwise(col, ir.ScalarExpr({"a": ir.Load(x, ("0", "i0"))}, [("v", "T(2) * a")], "v")),
        ir.Elementwise(wide, ir.ScalarExpr({"m": ir.Load(mask, ("0", "i1"))}, [("v", "T(3) * m")], "v")),
        ir.Reduce(out, ir.ScalarExpr({"m": ir.Load(mask, ("i0", "i1")), "c": ir.Load(col, ("i1",)),
                                      "w": ir.Load(wide, ("0", "i1"))},
                                     [("v", "T(m) * T(c) + T(w)")], "v"),
                  ("d0", 4096), (0, 1), "sum"),
    ]
    source = cpu.generate(ir.Program([x], [], [], steps, [out], [], {"d0": (0, 0)}))
    assert "mask = workspace[" in source and ".view(np.int64)" in source
    assert "wide = workspace[" in source and "col = np.empty((4096,), np.float32)" in source
    module, _ = loader.load_module(source)
    X = np.random.default_rng(0).standard_normal((16, 4096))
    assert module.workspace_bytes(X) >= 16 * 4096 * 8 + 8 * 4096 * 4
    (got,) = cpu.run(module, X)
    m = (X > 0).astype(np.int64)
    expected = np.sum(m * (2 * X[0]).astype(np.float32)) + 16 * np.sum(3 * m[0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="workspace is too small"):
        module.program(X, np.empty(16, np.uint8))


def _program_of(dtype):
    x = ir.Buffer("in0", (4,), dtype, "input", 0)
    y = ir.Buffer("y", (4,), dtype)
    step = ir.Elementwise(y, ir.ScalarExpr({"a": ir.Load(x, ("i0",))}, [("v", "exp(a)")], "v"),
                          "y = exp(x)")
    return ir.Program([x], [], [], [step], [y], [], {})


APPROX_MARK = "# vectorisable float32 exp, tanh and erf (kernels/approx.py) replace libm's"


def test_float32_programs_use_the_vectorisable_exp_and_float64_ones_libm():
    f32, f64 = cpu.generate(_program_of("float32")), cpu.generate(_program_of("float64"))
    assert APPROX_MARK in f32 and "parallel=False" in f32
    assert APPROX_MARK not in f64 and "parallel=False" in f64
    assert APPROX_MARK not in cpu.generate(_program_of("float32"), approximate=False)
    assert "parallel=True" in cpu.generate(_program_of("float32"), parallel=True)
    X = np.array([-3.0, -0.5, 0.25, 4.0])
    for source, dtype, rtol in ((f32, np.float32, 2e-6), (f64, np.float64, 1e-15)):
        module, _ = loader.load_module(source)
        (y,) = cpu.run(module, X.astype(dtype))
        assert y.dtype == dtype
        np.testing.assert_allclose(y, np.exp(X), rtol=rtol)
