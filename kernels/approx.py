"""Vectorisable float32 versions of exp, tanh and erf for the CPU back end.

Numba calls libm's scalar expf/tanhf/erff one element at a time (no vector math library here),
which keeps fused loops from vectorising. These versions use only arithmetic, floor,
comparisons and a bit cast, so LLVM turns a fused loop into SIMD code. The CPU generator
copies them into float32 modules under the names `exp`, `exp_nonpositive`, `tanh` and
`erf` (with `exp_reduced`, the two exps' polynomial); float64 modules keep libm's.
tests/kernels/test_approx.py measures their error against float64 references:

- exp: Cephes' expf scheme (range reduction by ln 2 in two parts, degree-6 polynomial,
  2**k built from the float's exponent bits). Measured max error 1.1 ulp on [-10, 10] and
  4.5 ulp on [-87, 88]; finite up to 88.72283 (FLT_MAX is exp(88.722839)), inf above;
  0 below -87.34 (no subnormal results).
- exp_nonpositive: the same scheme for arguments that are never positive (the CPU generator
  calls it for each exp(-abs(e)): sigmoid's, softplus's, silu's), without the handling
  of large arguments, and k found by the 1.5 * 2**23 shift (no floor or conversion):
  half the vector instructions of exp; measured max error 1.0 ulp on [-87.3, 0].
- tanh: the rational approximation of Eigen's ptanh_float (odd degree-13 numerator over
  even degree-6 denominator) on |x| < 7.905, x itself below 0.0004, +-1 above 7.905: one
  division and no exp. Measured max error 3.8 ulp on [-1, 1] and 4.6 ulp on [-10, 10]
  (on [3, 7.9]); exactly +-1 at +-inf. The edge cases pick the numerator and denominator
  rather than the quotient, so the quotient stays a division LLVM can merge with another
  (fastmath 'arcp' and 'reassoc': a/b * c/d becomes (a*c)/(b*d)).
- sigmoid, written as (1 if x >= 0 else exp(-|x|)) / (1 + exp(-|x|)), then has max 2.6 ulp
  on [-10, 10]; sigmoid(x) * tanh(x) is one division.
- erf: the rational approximation of Eigen's generic_fast_erf_float (odd degree-13
  numerator over even degree-8 denominator) on [-4, 4], +-1 beyond: one division and no
  exp (GELU's erf ran at 7 ns an element through libm's erff, 20% of a ConvNeXt's time).
  Measured max error 3.7 ulp on [-1, 1] and 5.5 ulp on [-4, 4] (3.3e-7 absolute, where
  erf(x) is within 1e-5 of +-1); exactly +-1 at +-inf.
All return NaN for NaN.

A loop that calls them is compute-bound: the 4M-element chain sigmoid(x) * tanh(x) + x*x
- 0.5*x takes about 60 vector instructions per 16 elements besides loads, and a 512-bit
division, the slowest of them (sharing one division between sigmoid and tanh took the
chain from 2.9 to 2.55 ms). So `wide_vectors()`, called first in a generated function
that uses them, lets LLVM vectorise that function's loops with 512-bit registers on a CPU
with AVX-512 (LLVM's default for such CPUs is 256-bit): the chain runs 1.2x faster
(docs/BENCHMARKS.md, "Vectorisable float32 exp and tanh"). Elsewhere the
attribute changes nothing: LLVM never uses registers wider than the CPU has.
"""
import numpy as np
from numba.core import types as _types
from numba.extending import intrinsic


def exp_reduced(t, k):
    # e**(t - k ln 2), |t - k ln 2| <= ln 2 / 2: Cephes' degree-6 polynomial (exp's and
    # exp_nonpositive's)
    r = t - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return p * z + r + np.float32(1.0)


def exp(x):
    if x != x:
        return x
    t = min(max(x, np.float32(-87.33654)), np.float32(88.72283))
    k = np.floor(t * np.float32(1.4426950408889634) + np.float32(0.5))
    y = exp_reduced(t, k)
    # 2**k overflows float32 for k = 128 (x from 88.38 to 88.72, where exp(x) is finite):
    # for k > 0 the scale is 2**(k - 1) and y is doubled (exact)
    high = k > np.float32(0.0)
    y = y + y if high else y
    e = np.int32(k) - np.int32(1) if high else np.int32(k)
    y = y * np.int32((e + np.int32(127)) << np.int32(23)).view(np.float32)
    if x > np.float32(88.72283):
        return np.float32(np.inf)
    if x < np.float32(-87.33654):
        return np.float32(0.0)
    return y


def exp_nonpositive(x):
    # exp for x <= 0 (or NaN), as in sigmoid's exp(-|x|): exp's scheme without the
    # handling of large arguments. k = round(t / ln 2) is found by adding 1.5 * 2**23, whose
    # float then holds k in its low bits (t / ln 2 >= -126): no floor and no conversion.
    # (LLVM keeps the addition and the subtraction: the modules' fastmath has no 'nsz'.)
    t = max(x, np.float32(-87.33654))
    shifted = t * np.float32(1.4426950408889634) + np.float32(12582912.0)
    k = shifted - np.float32(12582912.0)
    y = exp_reduced(t, k)
    # 2**k: the exponent field k + 127, from the low bits of shifted (0x4B400000 + k)
    field = (np.float32(shifted).view(np.int32) - np.int32(0x4B400000 - 127)) << np.int32(23)
    y = y * np.int32(field).view(np.float32)
    if x < np.float32(-87.33654):
        return np.float32(0.0)
    return y


def tanh(x):
    t = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = t * t
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * t
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    # The edge cases choose the numerator and the denominator, not the quotient, so the
    # result stays one division that LLVM can merge with a neighbour's (see above).
    # Where |x| >= 7.905 (tanh within 4.6 ulp of +-1) t is +-7.905 and t / 7.905 is +-1;
    # below 0.0004 the result is x itself. A NaN goes through the clamp and the quotient.
    a = abs(x)
    big = a >= np.float32(7.90531110763549805)
    tiny = a < np.float32(0.0004)
    p = t if big else (x if tiny else p)
    q = np.float32(7.90531110763549805) if big else (np.float32(1.0) if tiny else q)
    return p / q


def erf(x):
    if x != x:
        return x
    t = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = t * t
    p = np.float32(-2.72614225801306e-10)
    p = p * x2 + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    p = p * t
    q = np.float32(-1.45660718464996e-05)
    q = q * x2 + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return p / q


@intrinsic
def wide_vectors(typingctx):
    # Marks the calling function "prefer-vector-width"="512" (a string attribute, which
    # llvmlite's attribute set does not list, so added past its check).
    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, WIDE_VECTORS_ATTRIBUTE)
        return context.get_dummy_value()
    return _types.none(), codegen


WIDE_VECTORS_ATTRIBUTE = '"prefer-vector-width"="512"'
APPROXIMATIONS = {"exp_reduced": exp_reduced, "exp": exp, "exp_nonpositive": exp_nonpositive,
                  "tanh": tanh, "erf": erf}
# What a generated module needs to define wide_vectors (its source is copied in)
WIDE_VECTORS_IMPORTS = ["from numba.core import types as _types",
                        "from numba.extending import intrinsic"]
