"""graphnn's own gemm tile kernel for constant kernels packed once (kernels/packed.py) and
conv_gemm's CONV2D_PACKED mode: the layout, the tile kernel against NumPy products, the
mode against the direct loops, and compiled graphs against the numpy back end."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.ops import conv_geometry
from kernels import packed, windows

from test_conv_gemm import CASES


def _product(a, w, rows, dtype):
    """a (rows x K) @ w (K x N) by tiles of the heights conv_gemm uses, through the packed
    layout, as conv_gemm's CONV2D_PACKED does for one block of rows."""
    k, n = w.shape
    width = packed.pack_width(np.dtype(dtype).itemsize)
    b = packed.pack_kernel(w.reshape(1, 1, k, n)).reshape(-1)
    cp = b.size // max(k, 1)
    out = np.full((rows, cp), np.nan, dtype)
    af, of = a.reshape(-1), out.reshape(-1)
    for k0 in range(0, k, packed.PACK_DEPTH):
        kc = min(packed.PACK_DEPTH, k - k0)
        for j in range(0, cp, width):
            i = 0
            while i < rows:
                h = max(t for t in (12, 4, 1) if t <= rows - i)
                packed.PACKED_TILE(h, kc, af, i * k + k0, k, b, k0 * cp + j * kc, of,
                                   i * cp + j, cp, k0)
                i += h
    return out[:, :n]


def test_pack_kernel_lays_out_blocks_of_rows_in_panels_of_two_vectors():
    w = np.arange(2 * 700 * 40, dtype=np.float32).reshape(2, 1, 700, 40)
    p = packed.pack_kernel(w)
    assert p.shape == (2, 1, 700, 64) and p.dtype == np.float32  # 40 -> two 32-panels
    flat, m = p.reshape(-1), w.reshape(1400, 40)
    depth = packed.PACK_DEPTH
    # block 0 (rows 0..511), panel 1 (columns 32..63): row t starts at 512*32 + t*32
    assert np.array_equal(flat[depth * 32:depth * 32 + 8], m[0, 32:40])
    assert np.all(flat[depth * 32 + 8:depth * 32 + 32] == 0)  # the padding
    assert np.array_equal(flat[depth * 32 + 5 * 32:depth * 32 + 5 * 32 + 32][:8], m[5, 32:40])
    # block 1 (rows 512..1023) starts after block 0's 512 x 64 items; panel 0, row 3
    assert np.array_equal(flat[depth * 64 + 3 * 32:depth * 64 + 4 * 32], m[515, :32])
    # the last block holds the 376 remaining rows
    assert np.array_equal(flat[2 * depth * 64:2 * depth * 64 + 32], m[1024, :32])
    assert packed.pack_kernel(w.astype(np.float64)).shape == (2, 1, 700, 48)  # 16-panels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, k, n", [(1, 1, 1), (49, 300, 64), (13, 1100, 40),
                                        (27, 512, 33), (3, 7, 100), (12, 1025, 32)])
def test_tile_kernel_products_equal_numpy(rows, k, n, dtype):
    """Every tile height (12, 4, 1 rows), blocks of kernel rows crossing PACK_DEPTH
    (accumulating into what the tile holds), partial last panels."""
    rng = np.random.default_rng(rows * 1000 + k)
    a = rng.standard_normal((rows, k)).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    got = _product(a, w, rows, dtype)
    want = a.astype(np.float64) @ w.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_tile_kernel_rejects_a_height_it_has_no_loop_for():
    a = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="12, 4 or 1 rows"):
        packed.PACKED_TILE(3, 1, a, 0, 1, a, 0, a, 0, 1, 0)


# rows of 24 outputs and more: unpadded ones read the windows in place (DIRECT_MIN_WIDTH)
WIDE = {
    "3x3-valid-stride2-wide": ((1, 11, 52, 3), (3, 3, 3, 40), 2, "valid"),   # ow 25
    "7x7-valid-stride2-wide": ((2, 13, 60, 3), (7, 7, 3, 64), 2, "valid"),   # ow 27
    "1x1-stride2-wide": ((1, 6, 61, 40), (1, 1, 40, 33), 2, "valid"),        # ow 31
    "3x3-valid-wide": ((1, 5, 30, 8), (3, 3, 8, 7), 1, "valid"),             # ow 28
    "3x3-same-wide": ((1, 5, 30, 8), (3, 3, 8, 20), 1, "same"),              # padded
    "2x2-same-wide": ((1, 5, 30, 4), (2, 2, 4, 9), 1, "same"),   # pads bottom/right only
    "3x3-valid-deep": ((1, 4, 28, 64), (3, 3, 64, 32), 1, "valid"),  # 576 > PACK_DEPTH
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES) + sorted(WIDE))
def test_packed_mode_equals_the_direct_loops(name, dtype):
    """conv_gemm's CONV2D_PACKED (the helper as Python, its tile kernel compiled) with a
    NaN scratch of one row, a few rows and every row: 1x1, strided, padded, one input or
    output channel."""
    image, kernel, stride, padding = {**CASES, **WIDE}[name]
    oh, ph = conv_geometry(image[1], kernel[0], stride, padding)
    ow, pw = conv_geometry(image[2], kernel[1], stride, padding)
    rng = np.random.default_rng(9)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal(kernel).astype(dtype)
    want = np.zeros((image[0], oh, ow, kernel[3]), dtype)
    windows.conv2d(x, w, stride, ph, pw, want)
    b = packed.pack_kernel(w)
    cols = kernel[0] * kernel[1] * kernel[2]
    rows = image[0] * oh * ow
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for block in sorted({1, 3, rows}):
        scratch = np.full(block * cols, np.nan, dtype)
        got = np.full(want.shape, np.nan, dtype)
        windows.conv_gemm(windows.CONV2D_PACKED, x, b, stride, ph, pw, scratch, got)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol,
                                   err_msg=f"{name} block {block}")


needs_avx512 = pytest.mark.skipif(not packed.available(),
                                  reason="the cpu back end packs kernels on AVX-512 CPUs")


@needs_avx512
@pytest.mark.parametrize("library", [False, True])
def test_compiled_constant_kernels_are_packed_and_equal_the_numpy_backend(library):
    """An inference graph: constant float32 kernels (one read by two convolutions) are
    packed once; a parameter kernel, a float64 constant and a kernel with fewer than
    PACK_MIN_OUTPUTS outputs keep BLAS; results equal the numpy back end's, and with the
    pass off nothing is packed."""
    rng = np.random.default_rng(3)
    x = gn.input("x", (None, 9, 9, 5))
    shared = gn.const(rng.standard_normal((3, 3, 5, 40)).astype(np.float32))
    y1 = gn.relu(gn.conv2d(x, shared, padding="same"))
    y2 = gn.conv2d(x, shared, stride=2, padding="same")
    y3 = gn.conv2d(y1, gn.const(rng.standard_normal((1, 1, 40, 70)).astype(np.float32)))
    y4 = gn.conv2d(x, gn.param("w", rng.standard_normal((3, 3, 5, 8)).astype(np.float32)))
    y6 = gn.conv2d(x, gn.const(rng.standard_normal((1, 1, 5, packed.PACK_MIN_OUTPUTS - 1))
                               .astype(np.float32)))  # too few output channels: BLAS
    x64 = gn.input("x64", (2, 6, 6, 3), dtype="float64")
    y5 = gn.conv2d(x64, gn.const(rng.standard_normal((3, 3, 3, 4))))
    outs = [y2, y3, y4, y5, y6]
    feeds = {"x": rng.standard_normal((2, 9, 9, 5)).astype(np.float32),
             "x64": rng.standard_normal((2, 6, 6, 3))}
    f = gn.compile(outs, backend="cpu", library=library)
    assert f.stats["packed_kernels"] == 3  # y1, y2 (one packed constant), y3
    assert f.source.count(f"np.intp({windows.CONV2D_PACKED})") == 3  # calls or driver lines
    want = gn.compile(outs, backend="numpy")(**feeds)
    for got in (f(**feeds), f(**feeds)):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    off = gn.compile(outs, backend="cpu", library=library, passes={"packed_kernels": False})
    assert off.stats["packed_kernels"] == 0
    assert f"np.intp({windows.CONV2D_PACKED})" not in off.source
    for a, b in zip(off(**feeds), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@needs_avx512
def test_compiled_winograd_kernels_are_packed_from_enough_output_channels():
    rng = np.random.default_rng(4)
    x = gn.input("x", (1, 12, 12, 8))
    wide = gn.const(rng.standard_normal((3, 3, 8, packed.WINOGRAD_MIN_OUTPUTS))
                    .astype(np.float32))
    narrow = gn.const(rng.standard_normal((3, 3, 8, 64)).astype(np.float32))
    outs = [gn.conv2d(x, wide, padding="same"), gn.conv2d(x, narrow, padding="same")]
    f = gn.compile(outs, backend="cpu")
    assert f.stats["winograd_pretransformed"] == 2 and f.stats["packed_kernels"] == 1
    assert f"np.intp({windows.CONV2D_WINOGRAD_PACKED}), in0, " in f.source
    assert f"np.intp({windows.CONV2D_WINOGRAD_U}), in0, " in f.source
    feeds = {"x": rng.standard_normal((1, 12, 12, 8)).astype(np.float32)}
    for a, b in zip(f(**feeds), gn.compile(outs, backend="numpy")(**feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_the_back_end_packs_only_where_the_cpu_has_avx512(monkeypatch):
    monkeypatch.setattr(packed, "available", lambda: False)
    x = gn.input("x", (1, 5, 5, 3))
    y = gn.conv2d(x, gn.const(np.ones((3, 3, 3, 4), np.float32)))
    f = gn.compile(y, backend="cpu")
    assert f.stats["packed_kernels"] == 0
    np.testing.assert_allclose(f(x=np.ones((1, 5, 5, 3), np.float32)), np.full((1, 3, 3, 4), 27))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("image, co", [((1, 14, 14, 8), 140), ((2, 13, 11, 16), 32),
                                       ((1, 12, 12, 9), 7)])
def test_winograd_with_packed_kernel_equals_the_direct_loops(image, co, dtype):
    """CONV2D_WINOGRAD_PACKED: U's 16 matrices packed, the products by the tile kernel
    (partial panels, odd output sizes), in rounds of 1, 3 and every tile."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(image).astype(dtype)
    w = rng.standard_normal((3, 3, image[3], co)).astype(dtype)
    want = np.zeros(image[:3] + (co,), dtype)
    windows.conv2d(x, w, 1, 1, 1, want)
    u = windows.winograd_kernel(w)
    ci = image[3]
    b = np.stack([packed.pack_kernel(m.reshape(1, 1, ci, co)) for m in u.reshape(16, ci, co)])
    b = b.reshape(4, 4, ci, -1)
    tiles = image[0] * windows.winograd_tiles(image[1], image[2])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for block in sorted({1, 3, tiles}):
        scratch = np.full(windows.winograd_scratch_items(ci, co, min(block, tiles),
                                                         pretransformed=True), np.nan, dtype)
        got = np.full(want.shape, np.nan, dtype)
        windows.conv_gemm(windows.CONV2D_WINOGRAD_PACKED, x, b, block, 1, 1, scratch, got)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                   err_msg=f"rounds of {block}")


@pytest.mark.parametrize("name", ["3x3-valid-stride2-wide", "7x7-valid-stride2-wide",
                                  "1x1-stride2-wide", "3x3-valid-wide"])
def test_unpadded_wide_convolutions_read_their_windows_in_place(name):
    """No patch matrix: with an empty scratch the packed mode still gives the direct loops'
    numbers (a mode that copied windows would have no room for a single row)."""
    image, kernel, stride, padding = WIDE[name]
    oh, ow = (image[1] - kernel[0]) // stride + 1, (image[2] - kernel[1]) // stride + 1
    assert ow >= windows.DIRECT_MIN_WIDTH
    rng = np.random.default_rng(10)
    x = rng.standard_normal(image).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    want = np.zeros((image[0], oh, ow, kernel[3]), np.float32)
    windows.conv2d(x, w, stride, 0, 0, want)
    got = np.full(want.shape, np.nan, np.float32)
    windows.conv_gemm(windows.CONV2D_PACKED, x, packed.pack_kernel(w), stride, 0, 0,
                      np.empty(0, np.float32), got)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@needs_avx512
def test_only_modules_with_packed_convolutions_compile_the_tile_kernel(monkeypatch):
    """A module whose convolutions are all BLAS says PACKED = False (Numba leaves modes 5
    and 6 out), one with a packed kernel PACKED = True; conv_gemm refuses mode 5 where the
    modes are left out instead of computing something else."""
    rng = np.random.default_rng(6)
    x = gn.input("x", (1, 6, 6, 4))
    trained = gn.conv2d(x, gn.param("w", rng.standard_normal((3, 3, 4, 32))
                                    .astype(np.float32)))
    frozen = gn.conv2d(x, gn.const(rng.standard_normal((3, 3, 4, 32)).astype(np.float32)))
    assert "\nPACKED = False\n" in gn.compile(trained, backend="cpu").source
    assert "\nPACKED = True\n" in gn.compile(frozen, backend="cpu").source
    monkeypatch.setattr(windows, "PACKED", False)
    w = rng.standard_normal((1, 1, 4, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="modes 5 and 6 are left out"):
        windows.conv_gemm(windows.CONV2D_PACKED, np.ones((1, 2, 2, 4), np.float32),
                          packed.pack_kernel(w), 1, 0, 0, np.empty(0, np.float32),
                          np.empty((1, 2, 2, 32), np.float32))


@needs_avx512
def test_the_tile_kernel_keeps_its_tile_in_registers_and_prefetches_the_next_panel():
    """The 12-row tile's loop: 24 fused multiply-adds a step on 512-bit registers, no
    accumulator spilled to memory, and the next panel prefetched into L2 (prefetcht1)."""
    from numba import njit

    @njit
    def tile(a, b, c, kc):
        packed._packed_tile(12, kc, a, 0, 101, b, 0, c, 0, 32, 0, 1, 0, 0, c, 0)

    a, b, c = (np.ones(n, np.float32) for n in (1212, 6464, 384))
    tile(a, b, c, 101)  # (101 steps: 25 trips of the unrolled loop, then one more)
    assert np.all(c == 101)
    asm = next(iter(tile.inspect_asm().values()))
    fmas = [line for line in asm.splitlines() if "vfmadd" in line]
    # (PACK_UNROLL steps per trip of the loop, then one step at a time)
    assert len(fmas) == 24 * (packed.PACK_UNROLL + 1)
    assert all("zmm" in line and "(%" not in line.split(",")[-1] for line in fmas)
    assert "prefetcht1" in asm


@needs_avx512
@pytest.mark.parametrize("act", [1, 2, 3])
def test_the_tile_kernel_applies_a_convolutions_epilogue_in_its_registers(act):
    """act 2: + bias[at + j]; act 1: relu (zero where <= 0, NaN kept); 3: both."""
    rng = np.random.default_rng(act)
    kc, width = 7, packed.pack_width(4)
    a = rng.standard_normal((12, kc)).astype(np.float32)
    a[3, 0] = np.nan
    b = rng.standard_normal((kc, width)).astype(np.float32)
    bias = rng.standard_normal(width + 5).astype(np.float32)
    c = np.full((12, width), 99.0, np.float32)
    packed.PACKED_TILE(12, kc, a.reshape(-1), 0, kc, b.reshape(-1), 0, c.reshape(-1), 0,
                       width, 0, 1, 0, act, bias, 5)
    want = a.astype(np.float64) @ b
    if act >= 2:
        want = want + bias[5:]
    if act % 2:
        want = np.where(want <= 0, 0, want)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(c[3]).all()
