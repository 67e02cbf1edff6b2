"""Every op of graphnn, one stanza each: shape rule, NumPy implementation, gradient rule
(VJP in graphnn's own ops), how it lowers to the kernel IR (its kind with a scalar template,
a lowering function or a decomposition into primitive ops) and its Netron category.

To add an op: write its stanza here (`define_elementwise(...)` for an elementwise op,
`register(OpDef(...))` otherwise; see registry.KINDS) and its public function. Graph mode,
eager mode, gradients, the compilers and the renderer all read the stanza.

VJP rules take `(g, out, *inputs, **attrs)` and return one entry per input: a zero-argument
function computing that input's adjoint, or None when the input gets no gradient. Because
they are written with the op functions of this module, the same rule builds graph nodes in
graph mode and computes arrays in eager mode.

Choices at kinks: relu'(0) = 0; step has zero gradient everywhere (the perceptron learns
with its own rule); abs'(0) = 0; max/max_pool pass the gradient to ONE winner, the first
maximal element in row-major order; maximum(a, b) sends it to `a` on ties.
"""
import builtins
import math
import string
import sys
import textwrap

import numpy as np

from kernels import ir, random

from . import shapes as S
from .errors import DTypeError, GraphError, ShapeError, user_location
from .node import Node
from .registry import (OpDef, Mismatch, WrongDType, apply, graph_dtype, register,
                       const_node)

# ---------------------------------------------------------------------------------------
# Shape and dtype rules shared by families of ops
# ---------------------------------------------------------------------------------------


def _need_float(specs, opname):
    dtype = graph_dtype(specs)
    if dtype.kind != "f":
        raise WrongDType(f"{opname} needs float inputs, got {dtype}; "
                         "cast first with gn.cast(x, 'float32')")
    return dtype


def infer_broadcast(specs, float_only=False, opname=""):
    shape = S.broadcast_shapes(*[s.sym_shape for s in specs])
    if shape is None:
        raise Mismatch("shapes " + " and ".join(S.format_shape(s.sym_shape) for s in specs)
                       + " do not broadcast")
    dtype = _need_float(specs, opname) if float_only else graph_dtype(specs)
    return shape, dtype


# Attr checks. Every attr a kernel relies on is checked here, whatever built the node (user
# code, gn.load, the ONNX importer, registry.apply): a value of the wrong type or range is a
# Mismatch (a ShapeError naming the node), never an index a kernel would follow.

def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int_attr(name, value, low=None):
    if not _is_int(value):
        raise Mismatch(f"{name} must be an int, got {_shown(value)}")
    if low is not None and value < low:
        raise Mismatch(f"{name} must be >= {low}, got {value}")
    return int(value)


def _axis_in(name, axis, ndim):
    """An int axis of a rank-`ndim` tensor, negative ones counting from the end."""
    _int_attr(name, axis)
    if not -ndim <= axis < ndim:
        raise Mismatch(f"{name} {axis} out of range for rank {ndim}")
    return int(axis) % ndim


def _bool_attr(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise Mismatch(f"{name} must be True or False, got {_shown(value)}")


def _number_attr(name, value):
    if not isinstance(value, (int, float, np.integer, np.floating)) or \
            isinstance(value, (bool, np.bool_)):
        raise Mismatch(f"{name} must be a number, got {_shown(value)}")


# The dtypes every back end computes in (a cast or a one_hot to another is refused).
DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64")


def _dtype_attr(value):
    if not isinstance(value, str) or value not in DTYPES:
        raise WrongDType(f"dtype {_shown(value)} is not supported; use one of "
                         f"{', '.join(DTYPES)}")
    return np.dtype(value)


def reduced_shape(sym_shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(sym_shape))
    return tuple(d for i, d in enumerate(sym_shape) if i not in axes)


def sum_to(g, x):
    """Sum the adjoint `g` back to the shape of `x` (undo broadcasting)."""
    gshape = _shape_of(g)
    xshape = _shape_of(x)
    lead = len(gshape) - len(xshape)
    axes = list(range(lead))
    for i, d in enumerate(xshape):
        gd = gshape[lead + i]
        if S.resolve(d) == 1 and S.resolve(gd) != 1:
            axes.append(lead + i)
    if axes and len(axes) == lead:  # (only leading axes: a bias's gradient) no reshape
        return sum(g, axis=tuple(axes))
    if axes:
        g = sum(g, axis=tuple(axes), keepdims=True)
    if lead or axes:
        g = reshape(g, xshape)
    return g


def _shape_of(v):
    return v.sym_shape if isinstance(v, Node) else np.shape(v)


def _contiguous(a):
    """A C-contiguous copy that keeps 0-d arrays 0-d (np.ascontiguousarray would not)."""
    return np.array(a, order="C", copy=True)


# ---------------------------------------------------------------------------------------
# Leaves: input, param, variable, const (created by graphnn.api, never through apply)
# ---------------------------------------------------------------------------------------

for _leaf in ("input", "param", "variable", "const"):
    register(OpDef(_leaf, "Data", infer=None, impl=None, kind="leaf"))


# ---------------------------------------------------------------------------------------
# Elementwise arithmetic
# ---------------------------------------------------------------------------------------

def define_elementwise(name, impl, vjp, scalar, category=None, float_only=True, doc=""):
    """Define an elementwise op: register its stanza and return its public function.

    `impl(*arrays)` is the NumPy implementation; `vjp(g, out, *inputs)` returns one
    zero-argument function per input computing its adjoint with graphnn's op functions (or
    None: no gradient); `scalar` computes one element for the compiled backends: `{0}`,
    `{1}` ... are the inputs' elements, `{T}` the dtype (`{T}(1)` is a typed one), and the
    functions exp, log, log1p, sqrt, tanh, abs, max, min may be used (kernels/ir.py). Inputs
    broadcast as in NumPy; with `float_only` (the default) integer inputs are refused.
    `category` is the Netron category used when rendering (None: no category).
    The op then works in graph and eager mode, in `gn.grad` and on every backend:

        >>> cube = gn.define_elementwise(
        ...     "cube", lambda x: x ** 3, lambda g, out, x: (lambda: g * 3 * x * x,),
        ...     scalar="{0} * {0} * {0}", doc="x**3")
        >>> x = gn.input("x", (3,))
        >>> gn.compile(cube(x), backend="cpu")(x=np.array([1, 2, 3], np.float32))
        array([ 1.,  8., 27.], dtype=float32)

    An op with attributes, or with its own shape rule, is an `OpDef` given to
    `gn.register_op`; `gn.unregister_op(name)` removes an op again.
    """
    arity = _template_arity(scalar)

    def infer(specs):
        return infer_broadcast(specs, float_only, name)
    register(OpDef(name, category, infer, impl, vjp, scalar=scalar, doc=doc))

    def op_function(*inputs, name=None):
        if len(inputs) != arity:
            raise GraphError(f"{opname} takes {arity} input{'s' if arity != 1 else ''}, "
                             f"got {len(inputs)} (at {user_location()})")
        return apply(opname, inputs, name=name)
    opname = name
    op_function.__name__ = op_function.__qualname__ = name
    # graphnn's own ops (defined in this module) are called as gn.<name> in the example
    prefix = "gn." if sys._getframe(1).f_globals.get("__name__") == __name__ else ""
    op_function.__doc__ = _elementwise_doc(name, doc, arity, float_only, prefix)
    return op_function


def _elementwise_doc(name, doc, arity, float_only, prefix):
    """The public function's docstring: the op's one-line `doc`, its shapes, an example."""
    args = "x" if arity == 1 else ", ".join(f"x{i}" for i in range(arity))
    dtypes = "float inputs" if float_only else "float or integer inputs"
    shapes = ("the result has x's shape and dtype" if arity == 1 else
              "the inputs broadcast as in NumPy; the result has the broadcast shape")
    example = f"{name}(x)" if arity == 1 else f"{name}({', '.join(['x'] * arity)})"
    text = textwrap.fill(f"Shapes: {shapes} ({dtypes}). On nodes it builds a node; on NumPy "
                         "arrays it computes at once (eager mode).", 88)
    return (f"{name}({args}, name=None): {doc or name}, elementwise.\n\n{text}\n\n"
            f"    x = gn.input(\"x\", (None, 3))\n"
            f"    y = {prefix}{example}        # (None, 3) -> (None, 3)\n")


def _template_arity(scalar):
    """How many inputs a scalar template reads: 1 + its largest `{k}`."""
    fields = [f for _, f, _, _ in string.Formatter().parse(scalar) if f and f.isdigit()]
    return 1 + builtins.max((int(f) for f in fields), default=0)


define_elementwise("add", np.add,
                   lambda g, out, a, b: (lambda: sum_to(g, a), lambda: sum_to(g, b)),
                   "{0} + {1}", float_only=False)
define_elementwise("sub", np.subtract,
                   lambda g, out, a, b: (lambda: sum_to(g, a), lambda: sum_to(neg(g), b)),
                   "{0} - {1}", float_only=False)
define_elementwise("mul", np.multiply,
                   lambda g, out, a, b: (lambda: sum_to(g * b, a), lambda: sum_to(g * a, b)),
                   "{0} * {1}", float_only=False)
register(OpDef(
    "div", None,
    lambda specs: _infer_div(specs),
    np.true_divide,
    lambda g, out, a, b: (lambda: sum_to(g / b, a), lambda: sum_to(neg(g) * out / b, b)),
    scalar="{0} / {1}"))


def _infer_div(specs):
    shape, dtype = infer_broadcast(specs, opname="div")
    if dtype.kind != "f":
        raise WrongDType("dividing integers would silently truncate or change dtype; "
                         "cast one side with gn.cast(x, 'float32')")
    return shape, dtype


def _pow_impl(a, b):
    return np.power(a, b)


def _pow_vjp(g, out, a, b):
    return (lambda: sum_to(g * b * a ** (b - 1), a),
            lambda: sum_to(g * out * log(a), b))


define_elementwise("pow", _pow_impl, _pow_vjp, "{0} ** {1}")


def _maximum_vjp(g, out, a, b):
    mask = ge(a, b)
    return (lambda: sum_to(g * mask, a), lambda: sum_to(g * (1 - mask), b))


def _minimum_vjp(g, out, a, b):
    mask = ge(b, a)
    return (lambda: sum_to(g * mask, a), lambda: sum_to(g * (1 - mask), b))


# NaN in either operand gives NaN, as in np.maximum/np.minimum (`{0} != {0}` is NaN's test;
# for integers it folds away)
define_elementwise("maximum", np.maximum, _maximum_vjp,
                   "{0} if {0} >= {1} or {0} != {0} else {1}", float_only=False)
define_elementwise("minimum", np.minimum, _minimum_vjp,
                   "{0} if {0} <= {1} or {0} != {0} else {1}", float_only=False)


# Comparisons give a 0/1 mask in the float dtype; they have no gradient. One of leaves (the
# one-hot mask of integer labels) is recomputed in each consumer's loop, never stored.
def _mask_infer(specs):
    shape, dtype = infer_broadcast(specs)
    return shape, (dtype if dtype.kind == "f" else np.dtype(np.float32))


for _name, _fn, _sym in (("ge", np.greater_equal, ">="), ("gt", np.greater, ">"),
                         ("eq", np.equal, "==")):
    register(OpDef(_name, None, _mask_infer, _fn, lambda g, out, a, b: (None, None),
                   scalar=f"{{T}}(1) if {{0}} {_sym} {{1}} else {{T}}(0)", recompute=True))


# ---------------------------------------------------------------------------------------
# Elementwise unary ops and activations
# ---------------------------------------------------------------------------------------

def _sigmoid_impl(x):
    # Stable for |x| ~ 1000: never exponentiates a large positive number.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus_impl(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


neg = define_elementwise("neg", np.negative, lambda g, out, x: (lambda: neg(g),), "-{0}",
                         float_only=False, doc="-x")
exp = define_elementwise("exp", np.exp, lambda g, out, x: (lambda: g * out,), "exp({0})",
                         doc="e**x")
log = define_elementwise("log", np.log, lambda g, out, x: (lambda: g / x,), "log({0})",
                         doc="natural logarithm")
sqrt = define_elementwise("sqrt", np.sqrt, lambda g, out, x: (lambda: g * 0.5 / out,),
                          "sqrt({0})", doc="square root")
abs = define_elementwise("abs", np.abs, lambda g, out, x: (lambda: g * sign(x),),  # noqa: A001
                         "abs({0})", float_only=False, doc="absolute value; abs'(0) = 0")
sign = define_elementwise(
    "sign", np.sign, lambda g, out, x: (None,),
    "{T}(1) if {0} > {T}(0) else ({T}(-1) if {0} < {T}(0) else ({0} if {0} != {0} else "
    "{T}(0)))", float_only=False, doc="-1, 0 or 1 (no gradient); sign(NaN) is NaN")
square = define_elementwise("square", np.square, lambda g, out, x: (lambda: g * 2 * x,),
                            "{0} * {0}", float_only=False, doc="x*x")
sigmoid = define_elementwise(
    "sigmoid", _sigmoid_impl, lambda g, out, x: (lambda: g * out * (1 - out),),
    # branch-free (a cheap select over one division, which LLVM can merge with a
    # neighbour's, e.g. tanh's) and never exponentiates a positive number
    "({T}(1) if {0} >= {T}(0) else exp(-abs({0}))) / ({T}(1) + exp(-abs({0})))",
    category="Activation", doc="1 / (1 + e**-x), computed stably for large |x|")
tanh = define_elementwise("tanh", np.tanh, lambda g, out, x: (lambda: g * (1 - out * out),),
                          "tanh({0})", category="Activation", doc="hyperbolic tangent")
# relu's mask is read from its output (out > 0 exactly where x > 0), so the pre-activation
# needs no buffer of its own: a bias add fuses into the relu.
relu = define_elementwise("relu", lambda x: np.maximum(x, 0),
                          lambda g, out, x: (lambda: g * gt(out, 0),),
                          "{T}(0) if {0} <= {T}(0) else {0}", category="Activation",
                          doc="max(x, 0); relu'(0) = 0; relu(NaN) is NaN")
softplus = define_elementwise("softplus", _softplus_impl,
                              lambda g, out, x: (lambda: g * sigmoid(x),),
                              "max({0}, {T}(0)) + log1p(exp(-abs({0})))",
                              category="Activation", doc="log(1 + e**x), computed stably")
step = define_elementwise("step", lambda x: (x > 0).astype(x.dtype), lambda g, out, x: (None,),
                          "{T}(1) if {0} > {T}(0) else {T}(0)", category="Activation",
                          doc="1 where x > 0 else 0: the perceptron's activation "
                              "(zero gradient)")


def _with_alpha(name, impl, vjp, scalar):
    def infer(specs, alpha):
        _number_attr("alpha", alpha)
        return infer_broadcast(specs, True, name)
    register(OpDef(name, "Activation", infer, impl, vjp, scalar=scalar))


# exp(x) - 1 for x <= 0 as the kernels compute it: exp(x) - 1 cancels near 0 (ELU of -1e-30
# was 0, NumPy's expm1 gives -1e-30), so above -0.01 a Taylor polynomial (relative error
# about 1e-13 in float64) replaces it; libm's expm1 would keep float32 loops from vectorising
_EXPM1 = ("((exp({0}) - {T}(1)) if {0} < {T}(-0.01) else {0} * ({T}(1) + {0} * ({T}(0.5) + "
          "{0} * ({T}(0.16666666666666666) + {0} * ({T}(0.041666666666666664) + "
          "{0} * {T}(0.008333333333333333))))))")


_with_alpha("leaky_relu", lambda x, alpha: np.where(x > 0, x, x * x.dtype.type(alpha)),
            lambda g, out, x, alpha: (lambda: g * leaky_relu_grad(x, alpha),),
            "{0} if {0} > {T}(0) else {T}({alpha}) * {0}")
_with_alpha("leaky_relu_grad",
            lambda x, alpha: np.where(x > 0, 1, alpha).astype(x.dtype),
            lambda g, out, x, alpha: (None,),
            "{T}(1) if {0} > {T}(0) else {T}({alpha})")
_with_alpha("elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
            lambda g, out, x, alpha: (lambda: g * elu_grad(x, alpha),),
            "{0} if {0} > {T}(0) else {T}({alpha}) * " + _EXPM1)
_with_alpha("elu_grad",
            lambda x, alpha: np.where(x > 0, 1, alpha * np.exp(np.minimum(x, 0))),
            lambda g, out, x, alpha: (lambda: g * (1 - gt(x, 0)) * alpha * exp(
                minimum(x, 0)),),
            "{T}(1) if {0} > {T}(0) else {T}({alpha}) * exp({0})")


# More activations, each with its gradient written in graphnn's ops. Constants are written
# into the templates as {T}(...) literals, so float32 kernels stay float32.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_HALF = 0.7071067811865476            # 1/√2
_INV_SQRT_2PI = 0.3989422804014327         # 1/√(2π)
_TWO_OVER_SQRT_PI = 1.1283791670955126     # 2/√π
_GELU_C = 0.7978845608028654               # √(2/π)
_GELU_K = 0.044715


def _erf_impl(x):
    # NumPy has no erf; libm's, element by element (the compiled back ends call math.erf)
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def _selu_impl(x):
    neg = _SELU_ALPHA * np.expm1(np.minimum(x, 0))
    return (_SELU_SCALE * np.where(x > 0, x, neg)).astype(x.dtype)


def _gelu_impl(x):
    return (0.5 * x * (1 + _erf_impl(x * x.dtype.type(_SQRT_HALF)))).astype(x.dtype)


def _gelu_tanh_impl(x):
    return (0.5 * x * (1 + np.tanh(_GELU_C * (x + _GELU_K * x ** 3)))).astype(x.dtype)


def _gelu_vjp(g, out, x):
    cdf = 0.5 * (1 + erf(x * _SQRT_HALF))
    return (lambda: g * (cdf + x * exp(-0.5 * x * x) * _INV_SQRT_2PI),)


def _gelu_tanh_vjp(g, out, x):
    t = tanh(_GELU_C * (x + _GELU_K * x * x * x))
    return (lambda: g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C
                         * (1 + 3 * _GELU_K * x * x)),)


erf = define_elementwise(
    "erf", _erf_impl, lambda g, out, x: (lambda: g * _TWO_OVER_SQRT_PI * exp(neg(x * x)),),
    "erf({0})", doc="""The error function erf(x) = 2/√π ∫₀ˣ e^(-t²) dt, elementwise (any shape).

        >>> gn.erf(np.array([0.0, 1.0]))
        array([0.        , 0.84270079])
    """)
selu = define_elementwise(
    "selu", _selu_impl,
    # d/dx for x <= 0 is scale·alpha·eˣ = out + scale·alpha
    lambda g, out, x: (lambda: g * (gt(x, 0) * _SELU_SCALE
                                    + (1 - gt(x, 0)) * (out + _SELU_SCALE * _SELU_ALPHA)),),
    f"{{T}}({_SELU_SCALE!r}) * {{0}} if {{0}} > {{T}}(0) else "
    f"{{T}}({_SELU_SCALE * _SELU_ALPHA!r}) * " + _EXPM1,
    category="Activation", doc="""Scaled ELU (Klambauer et al. 2017): scale·x for x > 0, else
    scale·alpha·(eˣ − 1), with alpha ≈ 1.67326 and scale ≈ 1.05070 (PyTorch's and Keras's
    constants). Elementwise, any shape.

        >>> gn.selu(np.array([-1.0, 2.0]))
        array([-1.11133074,  2.10140197])
    """)
silu = define_elementwise(
    "silu", lambda x: (x * _sigmoid_impl(x)).astype(x.dtype),
    lambda g, out, x: (lambda: g * (sigmoid(x) + out * (1 - sigmoid(x))),),
    "{0} * (({T}(1) if {0} >= {T}(0) else exp(-abs({0}))) / ({T}(1) + exp(-abs({0}))))",
    category="Activation", doc="""x·sigmoid(x), also called swish (`gn.swish` is the same op).
    Elementwise, any shape.

        >>> gn.silu(np.array([-1.0, 0.0, 2.0]))
        array([-0.26894142,  0.        ,  1.76159416])
    """)
swish = silu
_gelu_exact = define_elementwise(
    "gelu", _gelu_impl, _gelu_vjp,
    f"{{T}}(0.5) * {{0}} * ({{T}}(1) + erf({{0}} * {{T}}({_SQRT_HALF!r})))",
    category="Activation", doc="x·Φ(x), Φ the standard normal CDF (exact, with erf)")
_gelu_tanh = define_elementwise(
    "gelu_tanh", _gelu_tanh_impl, _gelu_tanh_vjp,
    f"{{T}}(0.5) * {{0}} * ({{T}}(1) + tanh({{T}}({_GELU_C!r}) * ({{0}} + "
    f"{{T}}({_GELU_K!r}) * {{0}} * {{0}} * {{0}})))",
    category="Activation", doc="gelu's tanh approximation")
softsign = define_elementwise(
    "softsign", lambda x: (x / (1 + np.abs(x))).astype(x.dtype),
    lambda g, out, x: (lambda: g / square(1 + abs(x)),),
    "{0} / ({T}(1) + abs({0}))", category="Activation",
    doc="""x / (1 + |x|), elementwise (any shape).

        >>> gn.softsign(np.array([-3.0, 1.0]))
        array([-0.75,  0.5 ])
    """)
hard_sigmoid = define_elementwise(
    "hard_sigmoid", lambda x: np.clip(x / x.dtype.type(6) + x.dtype.type(0.5), 0, 1),
    lambda g, out, x: (lambda: g * gt(x, -3) * gt(3, x) * (1 / 6),),
    # (NaN stays NaN: both comparisons are false)
    "{T}(0) if {0} <= {T}(-3) else ({T}(1) if {0} >= {T}(3) else "
    "{0} / {T}(6) + {T}(0.5))",
    category="Activation", doc="""clip(x/6 + 1/2, 0, 1): Keras 3's and PyTorch's hard sigmoid
    (older tf.keras used slope 0.2: clip(0.2·x + 0.5, 0, 1)). Its gradient is 1/6 on
    (−3, 3) and 0 elsewhere. Elementwise, any shape.

        >>> gn.hard_sigmoid(np.array([-4.0, 0.0, 1.5]))
        array([0.  , 0.5 , 0.75])
    """)


def gelu(x, approximate=False, name=None):
    """GELU, x·Φ(x) with Φ the standard normal CDF: exact (with erf) by default, or its tanh
    approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) with `approximate=True` (as
    PyTorch's `approximate="tanh"` and Keras's `approximate=True`). Elementwise, any shape.

        >>> gn.gelu(np.array([-1.0, 1.0]))
        array([-0.15865525,  0.84134475])
        >>> h = gn.gelu(gn.input("z", (None, 8)), approximate=True)   # (batch, 8)
    """
    if not isinstance(approximate, (bool, np.bool_)):
        raise GraphError(f"gelu: approximate must be True or False, got {approximate!r:.60} "
                         f"(at {user_location()})")
    return (_gelu_tanh if approximate else _gelu_exact)(x, name=name)


def _infer_cast(specs, dtype):
    return specs[0].sym_shape, _dtype_attr(dtype)


register(OpDef("cast", "Transform", _infer_cast, lambda x, dtype: x.astype(dtype),
               lambda g, out, x, dtype: (
                   (lambda: cast(g, x.dtype)) if np.dtype(_dtype_of(x)).kind == "f" else None,),
               scalar="{T}({0})"))


def _dtype_of(v):
    return v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype


# ---------------------------------------------------------------------------------------
# Reductions and broadcasting back
# ---------------------------------------------------------------------------------------

def _infer_reduce(specs, axis, keepdims, float_only=False):
    (x,) = specs
    axes = S.normalize_axes(axis, x.ndim)
    _bool_attr("keepdims", keepdims)
    dtype = _need_float(specs, "reduction") if float_only else x.dtype
    return reduced_shape(x.sym_shape, axes, keepdims), dtype


def _sum_vjp(g, out, x, axis, keepdims):
    return (lambda: broadcast_like(g, x, axis=axis, keepdims=keepdims),)


def _reduction(reducer):
    """The lowering of a reduction: a Reduce step of `reducer` (sum | max, kernels/ir.py)."""
    def lower(lowering, node, comment, finish=None):
        lowering.reduce(node, reducer, comment, finish)
    return lower


register(OpDef("sum", None, _infer_reduce,
               lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
               _sum_vjp, kind="reduce", lower=_reduction("sum")))


def _max_vjp(g, out, x, axis, keepdims):
    return (lambda: broadcast_like(g, x, axis=axis, keepdims=keepdims)
            * argmax_mask(x, axis=axis),)


def _max_infer(specs, axis, keepdims):
    shape, dtype = _infer_reduce(specs, axis, keepdims)
    axes = S.normalize_axes(axis, specs[0].ndim)
    for a in axes:
        if S.resolve(specs[0].sym_shape[a]) == 0:
            raise Mismatch("max over an empty axis has no value")
    return shape, dtype


register(OpDef("max", None, _max_infer,
               lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
               _max_vjp, kind="reduce", lower=_reduction("max")))


def _mean_decompose(x, axis, keepdims):
    return sum(x, axis=axis, keepdims=keepdims) * reciprocal_count(x, axis=axis)


register(OpDef("mean", None,
               lambda specs, axis, keepdims: _infer_reduce(specs, axis, keepdims, True),
               lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
               lambda g, out, x, axis, keepdims: (
                   lambda: broadcast_like(g, x, axis=axis, keepdims=keepdims)
                   * reciprocal_count(x, axis=axis),),
               decompose=_mean_decompose, kind="composite"))


def _argmax_mask_impl(x, axis):
    axes = tuple(range(x.ndim)) if axis is None else (
        (axis,) if isinstance(axis, int) else tuple(axis))
    axes = tuple(a % x.ndim for a in axes)
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + list(axes))
    flat = moved.reshape(moved.shape[:len(keep)] + (-1,))
    winner = np.argmax(flat, axis=-1)
    mask = np.zeros_like(flat)
    np.put_along_axis(mask, winner[..., None], 1, axis=-1)
    mask = mask.reshape(moved.shape)
    return np.transpose(mask, np.argsort(keep + list(axes)))


def _infer_argmax_mask(specs, axis):
    S.normalize_axes(axis, specs[0].ndim)
    return specs[0].sym_shape, _need_float(specs, "argmax_mask")


def _lower_argmax_mask(lowering, node, comment):
    out = lowering.result_buffer(node)
    x = node.inputs[0]
    axes = S.normalize_axes(node.attr("axis"), x.ndim)
    lowering.add_step(ir.ArgmaxMask(out, lowering.buffer_of(x), axes, comment), [node])


register(OpDef("argmax_mask", None, _infer_argmax_mask,
               _argmax_mask_impl, lambda g, out, x, axis: (None,), kind="arg_reduce",
               lower=_lower_argmax_mask))


def _infer_broadcast_like(specs, axis, keepdims):
    g, x = specs
    axes = S.normalize_axes(axis, x.ndim)
    _bool_attr("keepdims", keepdims)
    expect = reduced_shape(x.sym_shape, axes, keepdims)
    if len(expect) != g.ndim or not all(S.unify_dims(a, b) for a, b in zip(expect, g.sym_shape)):
        raise Mismatch(f"cannot broadcast {S.format_shape(g.sym_shape)} back over axes {axes} "
                       f"of {S.format_shape(x.sym_shape)}")
    return x.sym_shape, g.dtype


def _broadcast_like_impl(g, x, axis, keepdims):
    axes = tuple(range(x.ndim)) if axis is None else (
        (axis,) if isinstance(axis, int) else tuple(axis))
    if not keepdims:
        g = np.expand_dims(g, tuple(a % x.ndim for a in axes))
    return _contiguous(np.broadcast_to(g, x.shape))


def _broadcast_like_reads(node, index):
    """Element `index` of broadcast_like(g, x) is g's element at index without the axes."""
    g, x = node.inputs
    axes = S.normalize_axes(node.attr("axis"), x.ndim)
    if node.attr("keepdims"):
        return g, ["0" if k in axes else index[k] for k in range(x.ndim)]
    return g, [index[k] for k in range(x.ndim) if k not in axes]


register(OpDef("broadcast_like", "Shape", _infer_broadcast_like, _broadcast_like_impl,
               lambda gg, out, g, x, axis, keepdims: (
                   lambda: sum(gg, axis=axis, keepdims=keepdims), None),
               kind="pattern", lower=_broadcast_like_reads))


def _infer_reciprocal_count(specs, axis):
    (x,) = specs
    S.normalize_axes(axis, x.ndim)
    return (), _need_float(specs, "mean")


def _reciprocal_count_impl(x, axis):
    axes = _norm_axes_concrete(axis, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    return np.asarray(1.0 / n if n else np.nan, dtype=x.dtype)


def _norm_axes_concrete(axis, ndim):
    try:
        return S.normalize_axes(axis, ndim)
    except Mismatch as exc:
        raise GraphError(str(exc)) from None


def _reciprocal_count_source(lowering, node):
    x = node.inputs[0]
    axes = S.normalize_axes(node.attr("axis"), x.ndim)
    return f"(T(1) / T({lowering.size_expr(x, axes)}))"


register(OpDef("reciprocal_count", "Shape", _infer_reciprocal_count, _reciprocal_count_impl,
               lambda g, out, x, axis: (None,), kind="size", lower=_reciprocal_count_source,
               doc="1 / (number of elements of x over the given axes), known at run time"))


# ---------------------------------------------------------------------------------------
# Matmul, transpose, reshape, concat
# ---------------------------------------------------------------------------------------

def _promoted(a_shape, b_shape):
    """np.matmul's view of its operands: a 1-D left operand is a row (1, k), a 1-D right
    operand a column (k, 1); those added dims are dropped from the result."""
    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)
    return a2, b2


def _infer_matmul(specs):
    """np.matmul's shape rule: (..., n, k) @ (..., k, m) -> (..., n, m), the leading (batch)
    dims broadcast; a 1-D operand is a row (left) or a column (right) whose dim is dropped."""
    a, b = specs

    def shown():  # (the operands' shapes in a message: as they were before any unification)
        return f"{S.format_shape(a.sym_shape)} @ {S.format_shape(b.sym_shape)}"
    if a.ndim == 0 or b.ndim == 0:
        raise Mismatch(f"matmul takes operands of rank 1 or more, got {shown()} (multiply a "
                       "scalar with *)")
    a2, b2 = _promoted(a.sym_shape, b.sym_shape)
    batched = len(a2) > 2 or len(b2) > 2
    shown_before = shown() if batched else None  # (the inner dims are unified next)
    if not S.unify_dims(a2[-1], b2[-2]):
        raise Mismatch(f"inner dims differ: {shown()}")
    batch = S.broadcast_shapes(a2[:-2], b2[:-2]) if batched else ()
    if batch is None:
        raise Mismatch(f"batch dims {S.format_shape(a2[:-2])} and {S.format_shape(b2[:-2])} "
                       f"do not broadcast: {shown_before}")
    shape = batch + (a2[-2],) * (a.ndim > 1) + (b2[-1],) * (b.ndim > 1)
    return shape, _need_float(specs, "matmul")


def _lower_matmul(lowering, node, comment):
    a_node, b_node = node.inputs
    if a_node.ndim == 2 and b_node.ndim == 2:
        out = lowering.result_buffer(node)
        (a, trans_a), (b, trans_b) = (lowering.matmul_operand(i) for i in node.inputs)
        lowering.add_step(ir.Matmul(out, a, b, trans_a, trans_b, comment), [node])
    else:  # 1-D operands as rows/columns, batch dims broadcast (see Lowering.batch_matmul)
        lowering.batch_matmul(node, comment)


def _swap_last(x):
    """x with its last two axes swapped (a 2-D transpose for a matrix)."""
    ndim = len(_shape_of(x))
    return transpose(x, tuple(range(ndim - 2)) + (ndim - 1, ndim - 2))


def _matmul_vjp(g, out, a, b):
    a_shape, b_shape = _shape_of(a), _shape_of(b)
    if len(a_shape) == 2 and len(b_shape) == 2:
        return (lambda: g @ transpose(b), lambda: transpose(a) @ g)
    # 1-D operands as a row / a column (and the adjoint with those dims back), then the
    # batched rule, each adjoint summed over the batch dims its operand was broadcast along
    a2_shape, b2_shape = _promoted(a_shape, b_shape)
    g_shape = _shape_of(g)
    g2_shape = tuple(g_shape[:len(g_shape) - (len(b_shape) > 1) - (len(a_shape) > 1)]) + \
        (a2_shape[-2], b2_shape[-1])
    a2 = a if len(a_shape) > 1 else reshape(a, a2_shape)
    b2 = b if len(b_shape) > 1 else reshape(b, b2_shape)
    g2 = g if tuple(g2_shape) == tuple(g_shape) else reshape(g, g2_shape)

    def grad_a():
        ga = sum_to(g2 @ _swap_last(b2), a2)
        return ga if len(a_shape) > 1 else reshape(ga, a_shape)

    def grad_b():
        gb = sum_to(_swap_last(a2) @ g2, b2)
        return gb if len(b_shape) > 1 else reshape(gb, b_shape)
    return (grad_a, grad_b)


register(OpDef("matmul", "Layer", _infer_matmul, np.matmul, _matmul_vjp,
               kind="matmul", lower=_lower_matmul))


def _infer_transpose(specs, axes):
    (x,) = specs
    if not isinstance(axes, (tuple, list)) or not all(_is_int(a) for a in axes) or \
            sorted(axes) != list(range(x.ndim)):
        raise Mismatch(f"axes {axes} are not a permutation of rank {x.ndim}")
    return tuple(x.sym_shape[a] for a in axes), x.dtype


def _transpose_reads(node, index):
    """Element `index` of transpose(x, axes) is x's element at the permuted index."""
    axes = node.attr("axes")
    sub = [None] * len(axes)
    for k, a in enumerate(axes):
        sub[a] = index[k]
    return node.inputs[0], sub


register(OpDef("transpose", "Transform", _infer_transpose,
               lambda x, axes: _contiguous(np.transpose(x, axes)),
               lambda g, out, x, axes: (lambda: transpose(g, tuple(np.argsort(axes))),),
               kind="pattern", lower=_transpose_reads))


def _infer_reshape(specs, shape):
    (x,) = specs
    return _reshape_target(x.sym_shape, shape), x.dtype


def _reshape_target(src, target):
    """Resolve -1 and check sizes; a symbolic dim may pass through unchanged."""
    src = tuple(S.resolve(d) for d in src)
    if not isinstance(target, (tuple, list)) or not all(
            isinstance(d, S.Sym) or _is_int(d) and d >= -1 for d in target):
        raise Mismatch(f"a shape is a tuple of ints >= 0, symbolic dims and one -1, "
                       f"got {_shown(target)}")
    target = [d if isinstance(d, S.Sym) else int(d) for d in target]
    if target.count(-1) > 1:
        raise Mismatch(f"at most one -1 in shape {tuple(target)}")
    src_syms = [d for d in src if isinstance(d, S.Sym)]
    tgt_syms = [d for d in target if isinstance(S.resolve(d), S.Sym)]
    known_src = S.static_size([d for d in src if isinstance(d, int)])
    known_tgt = S.static_size([d for d in target if isinstance(S.resolve(d), int) and d != -1])
    if -1 in target:
        if len(src_syms) == 1 and not tgt_syms:
            if known_tgt == 0 or known_src % known_tgt:
                raise Mismatch(f"cannot reshape {S.format_shape(src)} to {tuple(target)}")
            rest = known_src // known_tgt
            if rest != 1:
                raise Mismatch(f"cannot reshape {S.format_shape(src)} to {tuple(target)}: "
                               "the -1 would mix a symbolic dim with others")
            target[target.index(-1)] = src_syms[0]
            tgt_syms = src_syms
        elif src_syms and len(src_syms) == len(tgt_syms):
            target[target.index(-1)] = known_src // builtins.max(known_tgt, 1)
        elif not src_syms:
            if known_tgt == 0 or known_src % known_tgt:
                raise Mismatch(f"cannot reshape {S.format_shape(src)} to {tuple(target)}")
            target[target.index(-1)] = known_src // known_tgt
        else:
            raise Mismatch(f"cannot infer -1 in {tuple(target)} from {S.format_shape(src)}")
        known_tgt = S.static_size([d for d in target if isinstance(S.resolve(d), int)])
    if sorted(id(S.resolve(d)) for d in src_syms) != sorted(id(S.resolve(d)) for d in tgt_syms):
        raise Mismatch(f"reshape must keep the symbolic dims of {S.format_shape(src)}")
    if known_src != known_tgt:
        raise Mismatch(f"cannot reshape {S.format_shape(src)} ({known_src} elements) to "
                       f"{S.format_shape(target)} ({known_tgt} elements)")
    return tuple(target)


def _reshape_impl(x, shape):
    return np.reshape(x, tuple(-1 if isinstance(d, S.Sym) else d for d in shape)).copy()


def _reshape_vjp(g, out, x, shape):
    return (lambda: reshape(g, _shape_of(x)),)


def _lower_reshape(lowering, node, comment):
    lowering.view(node, lowering.buffer_of(node.inputs[0]), comment)


register(OpDef("reshape", "Shape", _infer_reshape, _reshape_impl, _reshape_vjp, kind="view",
               lower=_lower_reshape))


def _infer_concat(specs, axis):
    first = specs[0]
    axis = _axis_in("axis", axis, first.ndim)
    total = 0
    for s in specs:
        if s.ndim != first.ndim:
            raise Mismatch(f"all inputs need rank {first.ndim}")
        for i, (a, b) in enumerate(zip(first.sym_shape, s.sym_shape)):
            if i != axis and not S.unify_dims(a, b):
                raise Mismatch(f"{S.format_shape(s.sym_shape)} differs from "
                               f"{S.format_shape(first.sym_shape)} off the concat axis {axis}")
        d = S.resolve(s.sym_shape[axis])
        if not isinstance(d, int):
            raise Mismatch("cannot concat along a symbolic dim")
        total += d
    shape = list(first.sym_shape)
    shape[axis] = total
    return tuple(shape), graph_dtype(specs)


def _concat_vjp(g, out, *xs, axis):
    offsets, start = [], 0
    for x in xs:
        size = _shape_of(x)[axis]
        offsets.append((start, start + S.resolve(size)))
        start += S.resolve(size)
    return tuple((lambda a=a, b=b: slice_axis(g, axis=axis, start=a, stop=b)) for a, b in offsets)


def _lower_concat(lowering, node, comment):
    out = lowering.result_buffer(node)
    axis = node.attr("axis") % node.ndim
    parts, start = [], 0
    for inp in node.inputs:
        parts.append((lowering.buffer_of(inp), axis, start))
        start += S.resolve(inp.sym_shape[axis])
    lowering.add_step(ir.Place(out, parts, False, comment), [node])


register(OpDef("concat", "Tensor", _infer_concat,
               lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_vjp, kind="place",
               lower=_lower_concat))


def _infer_slice(specs, axis, start, stop):
    (x,) = specs
    axis = _axis_in("axis", axis, x.ndim)
    _int_attr("start", start)
    _int_attr("stop", stop)
    d = S.resolve(x.sym_shape[axis])
    if not isinstance(d, int) or not 0 <= start < stop <= d:
        raise Mismatch(f"slice {start}:{stop} does not fit axis {axis} of size {d}")
    shape = list(x.sym_shape)
    shape[axis] = stop - start
    return tuple(shape), x.dtype


def _slice_impl(x, axis, start, stop):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return _contiguous(x[tuple(index)])


def _pad_impl(x, axis, before, after):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths)


def _slice_reads(node, index):
    """Element `index` of slice_axis(x, axis, start, stop) is x's, `start` further on."""
    axis, start = node.attr("axis"), node.attr("start")
    sub = list(index)
    sub[axis] = f"{index[axis]} + {start}"
    return node.inputs[0], sub


register(OpDef("slice_axis", "Tensor", _infer_slice, _slice_impl,
               lambda g, out, x, axis, start, stop: (
                   lambda: pad_axis(g, axis=axis, before=start,
                                    after=S.resolve(_shape_of(x)[axis]) - stop),),
               kind="pattern", lower=_slice_reads))


def _infer_pad(specs, axis, before, after):
    (x,) = specs
    axis = _axis_in("axis", axis, x.ndim)
    before, after = _int_attr("before", before, 0), _int_attr("after", after, 0)
    d = S.resolve(x.sym_shape[axis])
    if not isinstance(d, int):
        raise Mismatch(f"cannot pad along a symbolic dim (axis {axis})")
    if d + before + after > _MAX_DIM:
        raise Mismatch(f"padding axis {axis} of size {d} by {before} and {after} is too large")
    shape = list(x.sym_shape)
    shape[axis] = d + before + after
    return tuple(shape), x.dtype


def _lower_pad(lowering, node, comment):
    out = lowering.result_buffer(node)
    # (a negative axis counts from the end: the Place step takes it from the start)
    part = (lowering.buffer_of(node.inputs[0]), node.attr("axis") % node.ndim,
            node.attr("before"))
    lowering.add_step(ir.Place(out, [part], True, comment), [node])


register(OpDef("pad_axis", "Tensor", _infer_pad, _pad_impl,
               lambda g, out, x, axis, before, after: (
                   lambda: slice_axis(g, axis=axis, start=before,
                                      stop=before + S.resolve(_shape_of(x)[axis])),),
               kind="place", lower=_lower_pad))


# ---------------------------------------------------------------------------------------
# Convolution and pooling (NHWC images, HWIO kernels, Keras/TensorFlow padding)
# ---------------------------------------------------------------------------------------

def conv_geometry(in_size, k, stride, padding):
    """(out_size, pad_before) along one spatial axis, as Keras/TensorFlow compute it."""
    if padding == "valid":
        return (in_size - k) // stride + 1, 0
    out = -(-in_size // stride)
    total = builtins.max((out - 1) * stride + k - in_size, 0)
    return out, total // 2


_MAX_DIM = 2**31 - 1


def _check_padding(padding):
    if not isinstance(padding, str) or padding not in ("valid", "same"):
        raise Mismatch(f"padding must be 'valid' or 'same', got {padding!r}")


def _spatial(x, what):
    if x.ndim != 4:
        raise Mismatch(f"{what} takes NHWC images of rank 4, got {S.format_shape(x.sym_shape)}")
    h, w = S.resolve(x.sym_shape[1]), S.resolve(x.sym_shape[2])
    if not isinstance(h, int) or not isinstance(w, int):
        raise Mismatch(f"{what} needs static height and width")
    return h, w


def _infer_conv2d(specs, stride, padding):
    x, w = specs
    _check_padding(padding)
    _int_attr("stride", stride, 1)
    h, wd = _spatial(x, "conv2d")
    if w.ndim != 4:
        raise Mismatch(f"kernel must be HWIO of rank 4, got {S.format_shape(w.sym_shape)}")
    kh, kw, cin, cout = (S.resolve(d) for d in w.sym_shape)
    if not all(isinstance(d, int) and d >= 1 for d in (kh, kw)):
        raise Mismatch(f"kernel height and width must be static and >= 1, got "
                       f"{S.format_shape(w.sym_shape)}")
    if not S.unify_dims(x.sym_shape[3], cin):
        raise Mismatch(f"input has {S.resolve(x.sym_shape[3])} channels but the kernel "
                       f"expects {cin}")
    _int_attr("stride", stride, 1)
    oh, _ = conv_geometry(h, kh, stride, padding)
    ow, _ = conv_geometry(wd, kw, stride, padding)
    if oh < 1 or ow < 1:
        raise Mismatch(f"kernel {kh}x{kw} is larger than the {h}x{wd} input")
    return (x.sym_shape[0], oh, ow, cout), _need_float(specs, "conv2d")


def _pad_hw(x, kh, kw, stride, padding):
    n, h, w, c = x.shape
    oh, ph = conv_geometry(h, kh, stride, padding)
    ow, pw = conv_geometry(w, kw, stride, padding)
    need_h = (oh - 1) * stride + kh
    need_w = (ow - 1) * stride + kw
    xp = np.zeros((n, builtins.max(need_h, h + ph), builtins.max(need_w, w + pw), c), x.dtype)
    xp[:, ph:ph + h, pw:pw + w, :] = x
    return xp, oh, ow, ph, pw


def _conv2d_impl(x, w, stride, padding):
    kh, kw, cin, cout = w.shape
    xp, oh, ow, _, _ = _pad_hw(x, kh, kw, stride, padding)
    out = np.zeros((x.shape[0], oh, ow, cout), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += patch @ w[i, j]
    return out


def _conv2d_grad_input_impl(g, w, x_like, stride, padding):
    kh, kw, cin, cout = w.shape
    xp, oh, ow, ph, pw = _pad_hw(np.zeros_like(x_like), kh, kw, stride, padding)
    for i in range(kh):
        for j in range(kw):
            xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += \
                g @ w[i, j].T
    h, wd = x_like.shape[1:3]
    return _contiguous(xp[:, ph:ph + h, pw:pw + wd, :])


def _conv2d_grad_filter_impl(x, g, w_like, stride, padding):
    kh, kw, cin, cout = w_like.shape
    xp, oh, ow, _, _ = _pad_hw(x, kh, kw, stride, padding)
    dw = np.zeros_like(w_like)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            dw[i, j] = np.tensordot(patch, g, axes=([0, 1, 2], [0, 1, 2]))
    return dw


def _conv_lowering(image_at, kernel_at):
    """The lowering of a convolution whose image and kernel (or their likes, for the
    gradients) are inputs `image_at` and `kernel_at`: a Window step computing the helper of
    the op's name (kernels/windows.py) on the first two inputs, with (stride, pad top,
    pad left)."""
    def lower(lowering, node, comment):
        stride, padding = node.attr("stride"), node.attr("padding")
        image, kernel = node.inputs[image_at], node.inputs[kernel_at]
        h, w = S.resolve(image.sym_shape[1]), S.resolve(image.sym_shape[2])
        kh, kw = S.resolve(kernel.sym_shape[0]), S.resolve(kernel.sym_shape[1])
        _, ph = conv_geometry(h, kh, stride, padding)
        _, pw = conv_geometry(w, kw, stride, padding)
        lowering.window(node, node.op, 2, (stride, ph, pw), comment)
    return lower


def _pool_lowering(reads):
    """The lowering of a pooling op (or its gradient) that reads its first `reads` inputs: a
    Window step computing the helper of the op's name with (size, stride)."""
    def lower(lowering, node, comment):
        lowering.window(node, node.op, reads, (node.attr("size"), node.attr("stride")),
                        comment)
    return lower


register(OpDef("conv2d", "Layer", _infer_conv2d, _conv2d_impl,
               lambda g, out, x, w, stride, padding: (
                   lambda: apply("conv2d_grad_input", (g, w, x),
                                 {"stride": stride, "padding": padding}),
                   lambda: apply("conv2d_grad_filter", (x, g, w),
                                 {"stride": stride, "padding": padding})),
               kind="window", lower=_conv_lowering(0, 1)))
def _check_adjoint(g, shape):
    """The adjoint g of a window op must have the shape of the op's output: the gradient
    kernels walk g's windows and write them into the input's (or kernel's) shape."""
    if g.ndim != len(shape) or not all(S.unify_dims(a, b) for a, b in zip(g.sym_shape, shape)):
        raise Mismatch(f"the adjoint has shape {S.format_shape(g.sym_shape)}, but the forward "
                       f"op's output has shape {S.format_shape(shape)}")


def _infer_conv2d_grad_input(specs, stride, padding):
    g, w, x_like = specs
    shape, _ = _infer_conv2d([x_like, w], stride, padding)
    _check_adjoint(g, shape)
    return x_like.sym_shape, _need_float(specs, "conv2d_grad_input")


def _infer_conv2d_grad_filter(specs, stride, padding):
    x, g, w_like = specs
    shape, _ = _infer_conv2d([x, w_like], stride, padding)
    _check_adjoint(g, shape)
    return w_like.sym_shape, _need_float(specs, "conv2d_grad_filter")


register(OpDef("conv2d_grad_input", "Layer", _infer_conv2d_grad_input,
               _conv2d_grad_input_impl,
               lambda gg, out, g, w, x, stride, padding: (
                   lambda: conv2d(gg, w, stride=stride, padding=padding),
                   lambda: apply("conv2d_grad_filter", (gg, g, w),
                                 {"stride": stride, "padding": padding}),
                   None),
               kind="window", lower=_conv_lowering(2, 1)))
register(OpDef("conv2d_grad_filter", "Layer", _infer_conv2d_grad_filter,
               _conv2d_grad_filter_impl,
               lambda gg, out, x, g, w, stride, padding: (
                   lambda: apply("conv2d_grad_input", (g, gg, x),
                                 {"stride": stride, "padding": padding}),
                   lambda: conv2d(x, gg, stride=stride, padding=padding),
                   None),
               kind="window", lower=_conv_lowering(0, 2)))


# Depthwise convolution: one kh x kw filter per channel, kernel (kh, kw, 1, c), the
# channels never mixed (conv2d with groups = channels; ShuffleNet, MobileNet). Its own
# op, because as conv2d per channel (or a sum of shifted slices) a 544-channel layer is
# hundreds of steps. `padding` is "valid", "same", or explicit (top, left, bottom, right)
# as ONNX gives it (an ONNX model pads symmetrically where Keras' "same" would not).

def _depthwise_pads(padding, h, w, kh, kw, stride):
    """(out_h, out_w, pad_top, pad_left) of a depthwise convolution."""
    if isinstance(padding, str):
        _check_padding(padding)
        oh, ph = conv_geometry(h, kh, stride, padding)
        ow, pw = conv_geometry(w, kw, stride, padding)
        return oh, ow, ph, pw
    if not (isinstance(padding, tuple) and len(padding) == 4
            and all(_is_int(p) and 0 <= p < _MAX_DIM for p in padding)):
        raise Mismatch(f"padding must be 'valid', 'same' or (top, left, bottom, right) of "
                       f"non-negative ints, got {_shown(padding)}")
    top, left, bottom, right = padding
    return ((h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1,
            top, left)


def _infer_depthwise(specs, stride, padding, *, what="depthwise_conv2d"):
    x, w = specs
    _int_attr("stride", stride, 1)
    h, wd = _spatial(x, what)
    if w.ndim != 4:
        raise Mismatch(f"kernel must be (kh, kw, 1, channels), got {S.format_shape(w.sym_shape)}")
    kh, kw, one, c = (S.resolve(d) for d in w.sym_shape)
    if not all(isinstance(d, int) and d >= 1 for d in (kh, kw)) or one != 1:
        raise Mismatch(f"kernel must be (kh, kw, 1, channels) with static kh, kw >= 1, got "
                       f"{S.format_shape(w.sym_shape)}")
    if not S.unify_dims(x.sym_shape[3], c):
        raise Mismatch(f"input has {S.resolve(x.sym_shape[3])} channels but the kernel has "
                       f"{c}")
    oh, ow, _, _ = _depthwise_pads(padding, h, wd, kh, kw, stride)
    if oh < 1 or ow < 1:
        raise Mismatch(f"kernel {kh}x{kw} is larger than the padded {h}x{wd} input")
    return (x.sym_shape[0], oh, ow, x.sym_shape[3]), _need_float(specs, what)


def _depthwise_windows(x, kh, kw, stride, padding):
    """(the zero-padded image, out_h, out_w, pad_top, pad_left, the taps' slice function)."""
    n, h, w, c = x.shape
    oh, ow, ph, pw = _depthwise_pads(padding, h, w, kh, kw, stride)
    xp = np.zeros((n, builtins.max(h + ph, (oh - 1) * stride + kh),
                   builtins.max(w + pw, (ow - 1) * stride + kw), c), x.dtype)
    xp[:, ph:ph + h, pw:pw + w, :] = x

    def tap(i, j):
        return (slice(None), slice(i, i + stride * (oh - 1) + 1, stride),
                slice(j, j + stride * (ow - 1) + 1, stride))
    return xp, oh, ow, ph, pw, tap


def _depthwise_impl(x, w, stride, padding):
    kh, kw = w.shape[:2]
    xp, oh, ow, _, _, tap = _depthwise_windows(x, kh, kw, stride, padding)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += xp[tap(i, j)] * w[i, j, 0]
    return out


def _depthwise_grad_input_impl(g, w, x_like, stride, padding):
    kh, kw = w.shape[:2]
    xp, _, _, ph, pw, tap = _depthwise_windows(np.zeros_like(x_like), kh, kw, stride, padding)
    for i in range(kh):
        for j in range(kw):
            xp[tap(i, j)] += g * w[i, j, 0]
    h, wd = x_like.shape[1:3]
    return _contiguous(xp[:, ph:ph + h, pw:pw + wd, :])


def _depthwise_grad_filter_impl(x, g, w_like, stride, padding):
    kh, kw = w_like.shape[:2]
    xp, _, _, _, _, tap = _depthwise_windows(x, kh, kw, stride, padding)
    dw = np.zeros_like(w_like)
    for i in range(kh):
        for j in range(kw):
            dw[i, j, 0] = np.sum(xp[tap(i, j)] * g, axis=(0, 1, 2))
    return dw


def _depthwise_lowering(image_at, kernel_at):
    """A Window step of the helper of the op's name (kernels/depthwise.py) on the first two
    inputs, with (stride, pad top, pad left)."""
    def lower(lowering, node, comment):
        stride, padding = node.attr("stride"), node.attr("padding")
        image, kernel = node.inputs[image_at], node.inputs[kernel_at]
        h, w = S.resolve(image.sym_shape[1]), S.resolve(image.sym_shape[2])
        kh, kw = S.resolve(kernel.sym_shape[0]), S.resolve(kernel.sym_shape[1])
        _, _, ph, pw = _depthwise_pads(padding, h, w, kh, kw, stride)
        lowering.window(node, node.op, 2, (stride, ph, pw), comment)
    return lower


def _infer_depthwise_grad_input(specs, stride, padding):
    g, w, x_like = specs
    shape, _ = _infer_depthwise([x_like, w], stride, padding)
    _check_adjoint(g, shape)
    return x_like.sym_shape, _need_float(specs, "depthwise_conv2d_grad_input")


def _infer_depthwise_grad_filter(specs, stride, padding):
    x, g, w_like = specs
    shape, _ = _infer_depthwise([x, w_like], stride, padding)
    _check_adjoint(g, shape)
    return w_like.sym_shape, _need_float(specs, "depthwise_conv2d_grad_filter")


def _depthwise_attrs(stride, padding):
    return {"stride": stride, "padding": padding}


register(OpDef("depthwise_conv2d", "Layer", _infer_depthwise, _depthwise_impl,
               lambda g, out, x, w, stride, padding: (
                   lambda: apply("depthwise_conv2d_grad_input", (g, w, x),
                                 _depthwise_attrs(stride, padding)),
                   lambda: apply("depthwise_conv2d_grad_filter", (x, g, w),
                                 _depthwise_attrs(stride, padding))),
               kind="window", lower=_depthwise_lowering(0, 1)))
register(OpDef("depthwise_conv2d_grad_input", "Layer", _infer_depthwise_grad_input,
               _depthwise_grad_input_impl,
               lambda gg, out, g, w, x, stride, padding: (
                   lambda: apply("depthwise_conv2d", (gg, w),
                                 _depthwise_attrs(stride, padding)),
                   lambda: apply("depthwise_conv2d_grad_filter", (gg, g, w),
                                 _depthwise_attrs(stride, padding)),
                   None),
               kind="window", lower=_depthwise_lowering(2, 1)))
register(OpDef("depthwise_conv2d_grad_filter", "Layer", _infer_depthwise_grad_filter,
               _depthwise_grad_filter_impl,
               lambda gg, out, x, g, w, stride, padding: (
                   lambda: apply("depthwise_conv2d_grad_input", (g, gg, x),
                                 _depthwise_attrs(stride, padding)),
                   lambda: apply("depthwise_conv2d", (x, gg),
                                 _depthwise_attrs(stride, padding)),
                   None),
               kind="window", lower=_depthwise_lowering(0, 2)))


# Grouped 1x1 convolution (ShuffleNet's pointwise layers): kernel (1, 1, c / groups, k),
# output channels [g k/groups, (g+1) k/groups) computed from input channels
# [g c/groups, (g+1) c/groups) only. One op (on the cpu: one gemm per group on the column
# blocks in place), where slices, a conv2d per group and a concat copied every block.

def _infer_grouped(specs, groups, *, what="grouped_conv2d"):
    x, w = specs
    _int_attr("groups", groups, 1)
    _spatial(x, what)
    if w.ndim != 4:
        raise Mismatch(f"kernel must be (1, 1, channels / groups, k), got "
                       f"{S.format_shape(w.sym_shape)}")
    kh, kw, gin, k = (S.resolve(d) for d in w.sym_shape)
    c = S.resolve(x.sym_shape[3])
    if (kh, kw) != (1, 1):
        raise Mismatch(f"{what} takes 1x1 kernels, got {S.format_shape(w.sym_shape)} "
                       f"(gn.conv2d(..., groups=g) runs larger ones as one conv2d per group)")
    if not all(isinstance(d, int) for d in (c, gin, k)) or c % groups or k % groups \
            or gin * groups != c:
        raise Mismatch(f"images of {c} channels and a kernel {S.format_shape(w.sym_shape)} "
                       f"do not split into {groups} groups (channels and kernel outputs "
                       f"must be static multiples of groups, the kernel's third dim "
                       f"channels / groups)")
    return tuple(x.sym_shape[:3]) + (k,), _need_float(specs, what)


def _grouped_views(x, k, groups):
    return x.reshape(-1, groups, x.shape[3] // groups), k // groups


def _grouped_impl(x, w, groups):
    xs, gout = _grouped_views(x, w.shape[3], groups)
    ws = w.reshape(w.shape[2], groups, gout)
    out = np.einsum("mgi,igo->mgo", xs, ws)
    return _contiguous(out.reshape(x.shape[:3] + (w.shape[3],)).astype(x.dtype))


def _grouped_grad_input_impl(g, w, x_like, groups):
    k = w.shape[3]
    gs = g.reshape(-1, groups, k // groups)
    ws = w.reshape(w.shape[2], groups, k // groups)
    out = np.einsum("mgo,igo->mgi", gs, ws)
    return _contiguous(out.reshape(x_like.shape).astype(x_like.dtype))


def _grouped_grad_filter_impl(x, g, w_like, groups):
    xs, gout = _grouped_views(x, w_like.shape[3], groups)
    gs = g.reshape(-1, groups, gout)
    out = np.einsum("mgi,mgo->igo", xs, gs)
    return _contiguous(out.reshape(w_like.shape).astype(w_like.dtype))


def _infer_grouped_grad_input(specs, groups):
    g, w, x_like = specs
    shape, _ = _infer_grouped([x_like, w], groups, what="grouped_conv2d_grad_input")
    _check_adjoint(g, shape)
    return x_like.sym_shape, _need_float(specs, "grouped_conv2d_grad_input")


def _infer_grouped_grad_filter(specs, groups):
    x, g, w_like = specs
    shape, _ = _infer_grouped([x, w_like], groups, what="grouped_conv2d_grad_filter")
    _check_adjoint(g, shape)
    return w_like.sym_shape, _need_float(specs, "grouped_conv2d_grad_filter")


def _grouped_lowering(lowering, node, comment):
    """A Window step of the helper of the op's name (kernels/grouped.py) on the first two
    inputs, with (groups,)."""
    lowering.window(node, node.op, 2, (node.attr("groups"),), comment)


register(OpDef("grouped_conv2d", "Layer", _infer_grouped, _grouped_impl,
               lambda g, out, x, w, groups: (
                   lambda: apply("grouped_conv2d_grad_input", (g, w, x), {"groups": groups}),
                   lambda: apply("grouped_conv2d_grad_filter", (x, g, w), {"groups": groups})),
               kind="window", lower=_grouped_lowering))
register(OpDef("grouped_conv2d_grad_input", "Layer", _infer_grouped_grad_input,
               _grouped_grad_input_impl,
               lambda gg, out, g, w, x, groups: (
                   lambda: apply("grouped_conv2d", (gg, w), {"groups": groups}),
                   lambda: apply("grouped_conv2d_grad_filter", (gg, g, w), {"groups": groups}),
                   None),
               kind="window", lower=_grouped_lowering))
register(OpDef("grouped_conv2d_grad_filter", "Layer", _infer_grouped_grad_filter,
               _grouped_grad_filter_impl,
               lambda gg, out, x, g, w, groups: (
                   lambda: apply("grouped_conv2d_grad_input", (g, gg, x), {"groups": groups}),
                   lambda: apply("grouped_conv2d", (x, gg), {"groups": groups}),
                   None),
               kind="window", lower=_grouped_lowering))


# Channel shuffle (ShuffleNet): channel j * groups + i of the output is channel
# i * (c / groups) + j of the input, (n, h, w, c) -> (n, h, w, c). As reshape (n, h, w,
# groups, c / groups), transpose of the last two axes and reshape it was a 5-D transpose
# loop whose inner loop ran over `groups` elements; the cpu kernel reads each pixel's
# channels in order instead.

def _infer_channel_shuffle(specs, groups):
    (x,) = specs
    _int_attr("groups", groups, 1)
    if x.ndim != 4:
        raise Mismatch(f"channel_shuffle takes NHWC images of rank 4, got "
                       f"{S.format_shape(x.sym_shape)}")
    c = S.resolve(x.sym_shape[3])
    if not isinstance(c, int) or c % groups:
        raise Mismatch(f"{c} channels do not split into {groups} groups (channels must be "
                       f"a static multiple of groups)")
    return x.sym_shape, x.dtype


def _channel_shuffle_impl(x, groups):
    n, h, w, c = x.shape
    return _contiguous(x.reshape(n, h, w, groups, c // groups).transpose(0, 1, 2, 4, 3)
                       .reshape(x.shape))


register(OpDef("channel_shuffle", "Shape", _infer_channel_shuffle, _channel_shuffle_impl,
               lambda g, out, x, groups: (
                   lambda: channel_shuffle(g, S.resolve(_shape_of(x)[3]) // groups),),
               kind="window",
               lower=lambda lowering, node, comment: lowering.window(
                   node, node.op, 1, (node.attr("groups"),), comment)))


# Max pooling with explicit pads (top, left, bottom, right): the maximum over the taps of
# each window that lie inside the image (as if the pad held -inf), so a padded max pool
# (ResNet's and ShuffleNet's stems, Inception's 3x3 stride-1 pools) needs no padded copy
# and no mask. Every window must hold an image element: each pad is smaller than `size`.

def _infer_max_pool_padded(specs, size, stride, padding, *,
                           what="max_pool2d_padded"):
    (x,) = specs[:1]
    h, w = _spatial(x, what)
    _int_attr("size", size, 1)
    _int_attr("stride", stride, 1)
    if not (isinstance(padding, tuple) and len(padding) == 4
            and all(_is_int(p) and 0 <= p < size for p in padding)):
        raise Mismatch(f"padding must be (top, left, bottom, right), each in [0, size) = "
                       f"[0, {size}), got {_shown(padding)}")
    oh, ow, _, _ = _depthwise_pads(padding, h, w, size, size, stride)
    if oh < 1 or ow < 1:
        raise Mismatch(f"pool window {size}x{size} is larger than the padded {h}x{w} input")
    return (x.sym_shape[0], oh, ow, x.sym_shape[3]), _need_float(specs, what)


def _padded_taps(x, size, stride, padding):
    """(x padded with -inf, its mask of image elements, out_h, out_w, pad_top, pad_left, the
    row-major taps' slices)."""
    n, h, w, c = x.shape
    oh, ow, ph, pw = _depthwise_pads(padding, h, w, size, size, stride)
    shape = (n, builtins.max(h + ph, (oh - 1) * stride + size),
             builtins.max(w + pw, (ow - 1) * stride + size), c)
    xp = np.full(shape, -np.inf, x.dtype)
    xp[:, ph:ph + h, pw:pw + w, :] = x
    inside = np.zeros(shape[1:3], bool)
    inside[ph:ph + h, pw:pw + w] = True
    taps = [(slice(None), slice(i, i + stride * (oh - 1) + 1, stride),
             slice(j, j + stride * (ow - 1) + 1, stride))
            for i in range(size) for j in range(size)]
    return xp, inside, oh, ow, ph, pw, taps


def _first_maxima(x, size, stride, padding):
    """For each window, the index of its first (row-major) maximal tap inside the image,
    and the maximum."""
    xp, inside, oh, ow, _, _, taps = _padded_taps(x, size, stride, padding)
    best = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf, x.dtype)
    first = np.full(best.shape, -1)
    for t, tap in enumerate(taps):
        v = xp[tap]
        take = inside[tap[1:]][None, :, :, None] & ((first < 0) | (v > best))
        best = np.where(take, v, best)
        first = np.where(take, t, first)
    return first, best, xp, taps


def _max_pool_padded_impl(x, size, stride, padding):
    return _contiguous(_first_maxima(x, size, stride, padding)[1])


def _max_pool_padded_grad_impl(x, g, size, stride, padding):
    first, _, xp, taps = _first_maxima(x, size, stride, padding)
    dxp = np.zeros(xp.shape, x.dtype)
    for t, tap in enumerate(taps):
        dxp[tap] += np.where(first == t, g, 0)
    _, _, ph, pw = _depthwise_pads(padding, x.shape[1], x.shape[2], size, size, stride)
    return _contiguous(dxp[:, ph:ph + x.shape[1], pw:pw + x.shape[2], :])


def _infer_max_pool_padded_grad(specs, size, stride, padding):
    x, g = specs
    shape, _ = _infer_max_pool_padded([x], size, stride, padding,
                                      what="max_pool2d_padded_grad")
    _check_adjoint(g, shape)
    return x.sym_shape, _need_float(specs, "max_pool2d_padded_grad")


def _max_pool_padded_lowering(reads):
    def lower(lowering, node, comment):
        x = node.inputs[0]
        h, w = S.resolve(x.sym_shape[1]), S.resolve(x.sym_shape[2])
        size, stride = node.attr("size"), node.attr("stride")
        _, _, ph, pw = _depthwise_pads(node.attr("padding"), h, w, size, size, stride)
        lowering.window(node, node.op, reads, (size, stride, ph, pw), comment)
    return lower


register(OpDef("max_pool2d_padded", "Pool", _infer_max_pool_padded, _max_pool_padded_impl,
               lambda g, out, x, size, stride, padding: (
                   lambda: apply("max_pool2d_padded_grad", (x, g),
                                 {"size": size, "stride": stride, "padding": padding}),),
               kind="window", lower=_max_pool_padded_lowering(1)))
register(OpDef("max_pool2d_padded_grad", "Pool", _infer_max_pool_padded_grad,
               _max_pool_padded_grad_impl, None, kind="window",
               lower=_max_pool_padded_lowering(2)))


def _infer_pool(specs, size, stride):
    (x,) = specs
    h, w = _spatial(x, "pooling")
    _int_attr("size", size, 1)
    _int_attr("stride", stride, 1)
    if size > h or size > w:
        raise Mismatch(f"pool window {size}x{size} is larger than the {h}x{w} input")
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    return (x.sym_shape[0], oh, ow, x.sym_shape[3]), _need_float(specs, "pooling")


def _windows(x, size, stride):
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    for i in range(size):
        for j in range(size):
            yield i, j, (slice(None), slice(i, i + stride * (oh - 1) + 1, stride),
                         slice(j, j + stride * (ow - 1) + 1, stride))


def _max_pool_impl(x, size, stride):
    out = None
    for _, _, idx in _windows(x, size, stride):
        out = x[idx].copy() if out is None else np.maximum(out, x[idx])
    return out


def _max_pool_grad_impl(x, g, size, stride):
    """Send each window's gradient to its first maximal element (row-major)."""
    out = _max_pool_impl(x, size, stride)
    dx = np.zeros_like(x)
    taken = np.zeros(out.shape, bool)
    for _, _, idx in _windows(x, size, stride):
        win = (x[idx] == out) & ~taken
        dx[idx] += np.where(win, g, 0)
        taken |= win
    return dx


def _avg_pool_impl(x, size, stride):
    out = 0
    for _, _, idx in _windows(x, size, stride):
        out = out + x[idx]
    return (out / (size * size)).astype(x.dtype)


def _avg_pool_grad_impl(g, x_like, size, stride):
    dx = np.zeros_like(x_like)
    for _, _, idx in _windows(x_like, size, stride):
        dx[idx] += g / (size * size)
    return dx


register(OpDef("max_pool2d", "Pool", _infer_pool, _max_pool_impl,
               lambda g, out, x, size, stride: (
                   lambda: apply("max_pool2d_grad", (x, g), {"size": size, "stride": stride}),),
               kind="window", lower=_pool_lowering(1)))
def _infer_max_pool_grad(specs, size, stride):
    x, g = specs
    shape, _ = _infer_pool([x], size, stride)
    _check_adjoint(g, shape)
    return x.sym_shape, _need_float(specs, "max_pool2d_grad")


def _infer_avg_pool_grad(specs, size, stride):
    g, x_like = specs
    shape, _ = _infer_pool([x_like], size, stride)
    _check_adjoint(g, shape)
    return x_like.sym_shape, _need_float(specs, "avg_pool2d_grad")


register(OpDef("max_pool2d_grad", "Pool", _infer_max_pool_grad,
               _max_pool_grad_impl, None, kind="window", lower=_pool_lowering(2)))
register(OpDef("avg_pool2d", "Pool", _infer_pool, _avg_pool_impl,
               lambda g, out, x, size, stride: (
                   lambda: apply("avg_pool2d_grad", (g, x), {"size": size, "stride": stride}),),
               kind="window", lower=_pool_lowering(1)))
register(OpDef("avg_pool2d_grad", "Pool", _infer_avg_pool_grad,
               _avg_pool_grad_impl,
               lambda gg, out, g, x, size, stride: (
                   lambda: avg_pool2d(gg, size=size, stride=stride), None),
               kind="window", lower=_pool_lowering(1)))


# ---------------------------------------------------------------------------------------
# Softmax and losses (composites: the compilers use their decompositions)
# ---------------------------------------------------------------------------------------

def _softmax_impl(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax_impl(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _infer_softmax(specs, axis):
    _axis_in("axis", axis, specs[0].ndim)
    return specs[0].sym_shape, _need_float(specs, "softmax")


def _softmax_decompose(x, axis):
    e = exp(x - max(x, axis=axis, keepdims=True))
    return e / sum(e, axis=axis, keepdims=True)


def _log_softmax_decompose(x, axis):
    z = x - max(x, axis=axis, keepdims=True)
    return z - log(sum(exp(z), axis=axis, keepdims=True))


register(OpDef("softmax", "Activation", _infer_softmax, _softmax_impl,
               lambda g, out, x, axis: (
                   lambda: out * (g - sum(g * out, axis=axis, keepdims=True)),),
               decompose=_softmax_decompose, kind="composite"))
register(OpDef("log_softmax", "Activation", _infer_softmax, _log_softmax_impl,
               lambda g, out, x, axis: (
                   lambda: g - exp(out) * sum(g, axis=axis, keepdims=True),),
               decompose=_log_softmax_decompose, kind="composite"))


def _infer_loss_pair(specs, name, from_logits=False):
    _bool_attr("from_logits", from_logits)
    shape, dtype = infer_broadcast(specs, True, name)
    return (), dtype


def _mse_decompose(pred, target):
    return mean(square(pred - target))


register(OpDef("mse", None, lambda specs: _infer_loss_pair(specs, "mse"),
               lambda p, t: np.mean(np.square(p - t)),
               lambda g, out, p, t: (
                   lambda: sum_to(g * 2 * (p - t) * reciprocal_count(p - t), p),
                   lambda: sum_to(g * 2 * (t - p) * reciprocal_count(p - t), t)),
               decompose=_mse_decompose, kind="composite"))

_BCE_EPS = 1e-7


def _bce_impl(p, y, from_logits):
    if from_logits:
        loss = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
    else:
        q = np.clip(p, _BCE_EPS, 1 - _BCE_EPS)
        loss = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return np.mean(loss)


def _bce_decompose(p, y, from_logits):
    if from_logits:
        return mean(softplus(p) - p * y)
    q = clip(p, _BCE_EPS, 1 - _BCE_EPS)
    return mean(neg(y * log(q) + (1 - y) * log(1 - q)))


def _bce_vjp(g, out, p, y, from_logits):
    scale = g * reciprocal_count(p - y)

    def of_y(v):  # v, of p's shape, as y's adjoint (p broadcast to y: v broadcast too)
        return sum_to(v if _shape_of(v) == _shape_of(y) else v + zeros_like(p - y), y)
    if from_logits:
        return (lambda: sum_to(scale * (sigmoid(p) - y), p),
                lambda: of_y(neg(scale) * p))
    q = clip(p, _BCE_EPS, 1 - _BCE_EPS)
    inside = gt(p, _BCE_EPS) * gt(1 - _BCE_EPS, p)
    return (lambda: sum_to(scale * inside * (q - y) / (q * (1 - q)), p),
            lambda: of_y(scale * (log(1 - q) - log(q))))


register(OpDef("binary_cross_entropy", None,
               lambda specs, from_logits: _infer_loss_pair(specs, "binary_cross_entropy",
                                                           from_logits),
               _bce_impl, _bce_vjp, decompose=_bce_decompose, kind="composite"))


def _infer_sce(specs):
    z, y = specs
    if z.ndim != 2:
        raise Mismatch(f"logits must be (batch, classes), got {S.format_shape(z.sym_shape)}")
    if y.dtype.kind in "iu":
        if y.ndim != 1 or not S.unify_dims(y.sym_shape[0], z.sym_shape[0]):
            raise Mismatch(f"integer labels must be (batch,) matching logits "
                           f"{S.format_shape(z.sym_shape)}, got {S.format_shape(y.sym_shape)}")
    elif y.ndim != 2 or not all(S.unify_dims(a, b) for a, b in zip(y.sym_shape, z.sym_shape)):
        raise Mismatch(f"probability labels must have the logits' shape "
                       f"{S.format_shape(z.sym_shape)}, got {S.format_shape(y.sym_shape)}")
    if z.dtype.kind != "f":
        raise WrongDType(f"logits must be float, got {z.dtype}")
    return (), z.dtype


def _sce_targets(z, y):
    """Labels as a (batch, classes) float array: one-hot for integer labels."""
    if _dtype_of(y).kind in "iu":
        classes = S.resolve(_shape_of(z)[1])
        return one_hot(y, classes, _dtype_of(z))
    return y


def _sce_impl(z, y):
    lse = np.log(np.sum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)) + z.max(axis=1)
    if y.dtype.kind in "iu":
        if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
            raise GraphError(f"softmax_cross_entropy: labels must lie in [0, {z.shape[1]}), "
                             f"got values from {y.min()} to {y.max()}")
        picked = z[np.arange(z.shape[0]), y]
        return np.mean(lse - picked)
    return np.mean(lse * y.sum(axis=1) - np.sum(z * y, axis=1))


def _sce_decompose(z, y):
    # exp(z - m) and its row sums are those of softmax(z) in the gradient (shared), and
    # z - m is used once (fused into the exp)
    t = _sce_targets(z, y)
    m = max(z, axis=1, keepdims=True)
    lse = log(sum(exp(z - m), axis=1, keepdims=True)) + m
    if _dtype_of(y).kind in "iu":
        # t is one-hot: min(lse - z, t / (1 - t)) is lse - z at the label (t / 0 = inf) and
        # 0 elsewhere, where t * (lse - z) would be 0 * inf = NaN for a masked (-inf) logit
        return mean(sum(minimum(lse - z, t / (1 - t)), axis=1))
    return mean(sum(t * (lse - z), axis=1))


def _sce_vjp(g, out, z, y):
    t = _sce_targets(z, y)
    scale = g * reciprocal_count(z, axis=0)
    if _dtype_of(y).kind in "iu":  # a one-hot row sums to 1
        return (lambda: scale * (softmax(z, axis=1) - t), None)
    grad_z = lambda: scale * (softmax(z, axis=1) * sum(t, axis=1, keepdims=True) - t)
    grad_y = None
    if _dtype_of(y).kind == "f":
        grad_y = lambda: scale * (neg(log_softmax(z, axis=1)))
    return (grad_z, grad_y)


register(OpDef("softmax_cross_entropy", None, _infer_sce, _sce_impl, _sce_vjp,
               decompose=_sce_decompose, kind="composite"))


def _infer_one_hot(specs, classes, dtype):
    (y,) = specs
    if y.dtype.kind not in "iu":
        raise WrongDType(f"one_hot needs integer labels, got {y.dtype}")
    classes = _int_attr("classes", classes, 1)
    if classes > _MAX_DIM:
        raise Mismatch(f"classes must be <= {_MAX_DIM}, got {classes}")
    return y.sym_shape + (classes,), _dtype_attr(dtype)


def _one_hot_decompose(y, classes, dtype):
    # integer labels compared with integer class ids: a 0/1 mask (float32, see eq)
    mask = eq(reshape(y, y.sym_shape + (1,)), const_node(np.arange(classes, dtype=y.dtype)))
    return mask if mask.dtype == np.dtype(dtype) else cast(mask, dtype)


register(OpDef("one_hot", "Tensor", _infer_one_hot,
               lambda y, classes, dtype: (y[..., None] == np.arange(classes)).astype(dtype),
               lambda g, out, y, classes, dtype: (None,), decompose=_one_hot_decompose,
               kind="composite"))


def _infer_embedding(specs):
    ids, table = specs
    if ids.dtype.kind not in "iu":
        raise WrongDType(f"embedding needs integer ids, got {ids.dtype}")
    if table.dtype.kind != "f":
        raise WrongDType(f"embedding needs a float table, got {table.dtype}")
    if table.ndim != 2:
        raise Mismatch(f"the table must be 2-D (rows, dim), got {S.format_shape(table.sym_shape)}")
    if not isinstance(S.resolve(table.sym_shape[0]), int):
        raise Mismatch(f"the table needs a known number of rows, got "
                       f"{S.format_shape(table.sym_shape)}")
    return ids.sym_shape + (table.sym_shape[1],), table.dtype


def _embedding_impl(ids, table):
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise GraphError(f"embedding: ids must lie in [0, {table.shape[0]}), got values from "
                         f"{ids.min()} to {ids.max()}")
    return np.take(table, ids, axis=0)


def _embedding_one_hot(ids, table):
    rows = S.resolve(_shape_of(table)[0])
    return one_hot(ids, rows, _dtype_of(table).name)


def _embedding_decompose(ids, table):
    # one_hot(ids) @ table: an id outside [0, rows) matches no row and reads nothing (its
    # row is zeros); compiled steps refuse such ids first when they are a graph input
    return matmul(_embedding_one_hot(ids, table), table)


def _embedding_vjp(g, out, ids, table):
    # the table's gradient adds each output row's gradient into the row it was read from:
    # one_hot(ids)^T @ g, summed over the batch dims (one gemm, see Lowering.batch_matmul)
    return (None, lambda: _matmul_vjp(g, out, _embedding_one_hot(ids, table), table)[1]())


register(OpDef("embedding", "Transform", _infer_embedding, _embedding_impl, _embedding_vjp,
               decompose=_embedding_decompose, kind="composite",
               doc="rows of a table picked by integer ids"))


# minimum(maximum(x, low), high), each keeping NaN as NumPy does
_CLIP_LOW = "({0} if {0} >= {T}({low}) or {0} != {0} else {T}({low}))"
_CLIP_TEMPLATE = (f"{_CLIP_LOW} if {_CLIP_LOW} <= {{T}}({{high}}) or {_CLIP_LOW} != {_CLIP_LOW} "
                  "else {T}({high})")


def _infer_clip(specs, low, high):
    _number_attr("low", low)
    _number_attr("high", high)
    return infer_broadcast(specs, False, "clip")


register(OpDef("clip", "Activation", _infer_clip,
               lambda x, low, high: np.clip(x, low, high),
               lambda g, out, x, low, high: (lambda: g * gt(x, low) * gt(high, x),),
               scalar=_CLIP_TEMPLATE))


# ---------------------------------------------------------------------------------------
# Random numbers and training/inference branches
# ---------------------------------------------------------------------------------------

def _infer_random_uniform(specs, seed, bits):
    counter, like = specs
    if counter.ndim != 0 or counter.dtype.kind not in "fiu":
        raise Mismatch(f"the counter must be a scalar step count, got "
                       f"{S.format_shape(counter.sym_shape)}")
    _int_attr("seed", seed, 0)
    if seed >= 2 ** 63:  # (an int64 literal in the generated code)
        raise Mismatch(f"seed must be below 2**63, got {seed}")
    if like.dtype.kind != "f":
        raise WrongDType(f"random numbers come in a float dtype; `like` has {like.dtype}")
    if _int_attr("bits", bits) != random.uniform_bits(like.dtype):
        raise Mismatch(f"bits must be {random.uniform_bits(like.dtype)} for {like.dtype}, "
                       f"got {bits}")
    return like.sym_shape, like.dtype


def _random_uniform_impl(counter, like, seed, bits):
    return random.uniform(seed, counter, like.shape, like.dtype)


# Element i (row-major) of the draw is random_bits(seed, counter, i) / 2**bits: Philox-4x32
# (kernels/random.py), the same bits on every back end. Only the counter is read ({0}); the
# second input gives the shape and dtype.
register(OpDef("random_uniform", "Dropout", _infer_random_uniform, _random_uniform_impl,
               lambda g, out, counter, like, seed, bits: (None, None),
               scalar="{T}(random_bits({seed}, {0}, {flat}, {bits})) / {T}(1 << {bits})",
               doc="uniform numbers in [0, 1) of like's shape, a function of (seed, counter, "
                   "element index)"))


def _infer_training_branch(specs):
    train, infer, *pairs = specs
    if len(train.sym_shape) != len(infer.sym_shape) or not all(
            S.unify_dims(a, b) for a, b in zip(train.sym_shape, infer.sym_shape)):
        raise Mismatch(f"the training value {S.format_shape(train.sym_shape)} and the "
                       f"inference value {S.format_shape(infer.sym_shape)} differ in shape")
    if train.dtype != infer.dtype:
        raise WrongDType(f"the training value is {train.dtype}, the inference value "
                         f"{infer.dtype}")
    if len(pairs) % 2:
        raise Mismatch("state updates come in pairs (state, new value)")
    for state, new in zip(pairs[::2], pairs[1::2]):
        if state.sym_shape != new.sym_shape and not all(
                S.unify_dims(a, b) for a, b in zip(state.sym_shape, new.sym_shape)):
            raise Mismatch(f"a state of shape {S.format_shape(state.sym_shape)} cannot take "
                           f"a new value of shape {S.format_shape(new.sym_shape)}")
    return train.sym_shape, train.dtype


# training_branch(train, infer, state1, new1, ...) is `train` (and its gradient goes there
# alone); `graphnn.nn.inference` rewrites it into `infer`, and `graphnn.nn.state_updates`
# collects the states' new values a training step applies (a dropout's step counter, a
# batch norm's running averages).
register(OpDef("training_branch", None, _infer_training_branch,
               lambda train, infer, *states: train,
               lambda g, out, train, infer, *states: (lambda: g,) + (None,) * (1 + len(states)),
               decompose=lambda train, infer, *states: train, kind="composite",
               doc="the training value; the inference value and state updates ride along"))


# ---------------------------------------------------------------------------------------
# Public op functions
# ---------------------------------------------------------------------------------------

def add(a, b, name=None):
    """a + b, elementwise with NumPy broadcasting (the `+` operator on nodes).

    Shapes: a (2, 3) and b (3,) -> (2, 3); either side may be a number or an array.

        y = gn.add(x, b)               # x (None, 3), b (3,) -> y (None, 3); same as x + b
        gn.add(np.ones(2), 1.0)        # eagerly: array([2., 2.])
    """
    return apply("add", (a, b), name=name)


def sub(a, b, name=None):
    """a - b, elementwise with NumPy broadcasting (the `-` operator on nodes).

    Shapes: a (2, 3) and b (3,) -> (2, 3); either side may be a number or an array.

        y = gn.sub(x, mu)              # x (None, 3), mu (3,) -> y (None, 3); same as x - mu
    """
    return apply("sub", (a, b), name=name)


def mul(a, b, name=None):
    """a * b, elementwise with NumPy broadcasting (the `*` operator on nodes; for the
    matrix product see `gn.matmul`).

    Shapes: a (2, 3) and b (2, 1) -> (2, 3); either side may be a number or an array.

        y = gn.mul(x, 0.5)             # x (None, 3) -> y (None, 3); same as x * 0.5
    """
    return apply("mul", (a, b), name=name)


def div(a, b, name=None):
    """a / b, elementwise with NumPy broadcasting, on floats (the `/` operator on nodes;
    dividing integers is refused: cast one side with `gn.cast` first).

    Shapes: a (2, 3) and b (3,) -> (2, 3).

        y = gn.div(x, gn.sum(x, axis=1, keepdims=True))   # (None, 3) -> rows summing to 1
    """
    return apply("div", (a, b), name=name)


def pow(a, b, name=None):  # noqa: A001 - mirrors the operator
    """a ** b, elementwise with NumPy broadcasting, on floats (the `**` operator on nodes).

    Shapes: a (2, 3) and b () -> (2, 3).

        y = gn.pow(x, 3.0)             # x (None, 3) -> y (None, 3); same as x ** 3.0
    """
    return apply("pow", (a, b), name=name)


def maximum(a, b, name=None):
    """The larger of a and b, elementwise with NumPy broadcasting (NaN if either is NaN;
    on ties the gradient goes to `a`).

    Shapes: a (2, 3) and b () -> (2, 3).

        y = gn.maximum(x, 0.0)         # x (None, 3) -> y (None, 3): relu without the op
    """
    return apply("maximum", (a, b), name=name)


def minimum(a, b, name=None):
    """The smaller of a and b, elementwise with NumPy broadcasting (NaN if either is NaN;
    on ties the gradient goes to `a`).

    Shapes: a (2, 3) and b () -> (2, 3).

        y = gn.minimum(x, 6.0)         # x (None, 3) -> y (None, 3)
    """
    return apply("minimum", (a, b), name=name)


def ge(a, b):
    """1 where a >= b else 0, in the float dtype (no gradient)."""
    return apply("ge", (a, b))


def gt(a, b):
    return apply("gt", (a, b))


def eq(a, b):
    return apply("eq", (a, b))


def leaky_relu(x, alpha=0.01, name=None):
    """x where x > 0 else alpha*x, elementwise (a small slope for negative inputs).

    Shapes: the result has x's shape and dtype (floats).

        h = gn.leaky_relu(x, alpha=0.1)                 # (None, 8) -> (None, 8)
        gn.leaky_relu(np.array([-2.0, 3.0]), 0.1)       # eagerly: array([-0.2,  3. ])
    """
    return apply("leaky_relu", (x,), {"alpha": _number(alpha)}, name)


def leaky_relu_grad(x, alpha=0.01):
    return apply("leaky_relu_grad", (x,), {"alpha": _number(alpha)})


def elu(x, alpha=1.0, name=None):
    """x where x > 0 else alpha*(e**x - 1), elementwise (smooth, saturating at -alpha).

    Shapes: the result has x's shape and dtype (floats).

        h = gn.elu(x)                  # (None, 8) -> (None, 8)
    """
    return apply("elu", (x,), {"alpha": _number(alpha)}, name)


def elu_grad(x, alpha=1.0):
    return apply("elu_grad", (x,), {"alpha": _number(alpha)})


def cast(x, dtype, name=None):
    """Convert to another dtype (float to integer truncates toward zero, as NumPy's astype).

    Shapes: the result has x's shape, in `dtype` (float32, float64 or an integer type).

        t = gn.cast(labels, "float32")     # labels (None,) int64 -> (None,) float32
    """
    return apply("cast", (x,), {"dtype": _dtype_name(dtype, "gn.cast")}, name)


def _dtype_name(dtype, what):
    """The name of a dtype the back ends support, or a DTypeError naming the argument."""
    try:
        name = np.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in DTYPES:
        raise DTypeError(f"{what}: dtype={_shown(dtype)} is not supported; use one of "
                         f"{', '.join(DTYPES)} (at {user_location()})")
    return name


def clip(x, low, high, name=None):
    """x limited to [low, high], elementwise (the gradient is zero where x is clipped).

    Shapes: the result has x's shape and dtype.

        p = gn.clip(probs, 1e-7, 1 - 1e-7)     # (None, 10) -> (None, 10)
    """
    return apply("clip", (x,), {"low": _number(low), "high": _number(high)}, name)


def _int(value):
    """An int attr as an int; anything else unchanged, for the shape rule to refuse
    (int(1.5) would silently be 1)."""
    return int(value) if _is_int(value) else value


def _number(value):
    """A float attr as a float; anything else unchanged, for the shape rule to refuse."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))
    return float(value) if ok else value


def _flag(value):
    return bool(value) if isinstance(value, (bool, np.bool_, int, np.integer)) else value


def _axis_attr(axis):
    if axis is None or _is_int(axis):
        return _int(axis)
    if isinstance(axis, (tuple, list)):
        return tuple(_int(a) for a in axis)
    return axis


def sum(x, axis=None, keepdims=False, name=None):  # noqa: A001
    """Sum over `axis` (an int, a tuple of ints, or None: all axes), as `np.sum`.

    Shapes: x (2, 3) -> () with axis=None, (3,) with axis=0, (2, 1) with axis=1 and
    keepdims=True.

        total = gn.sum(x)                      # (None, 3) -> ()
        rows = gn.sum(x, axis=1)               # (None, 3) -> (None,)
    """
    return apply("sum", (x,), {"axis": _axis_attr(axis), "keepdims": _flag(keepdims)}, name)


def mean(x, axis=None, keepdims=False, name=None):
    """Mean over `axis` (an int, a tuple of ints, or None: all axes), as `np.mean`; the
    count of a symbolic axis (the batch) is known when the graph runs.

    Shapes: x (2, 3) -> () with axis=None, (3,) with axis=0, (2, 1) with axis=1 and
    keepdims=True.

        loss = gn.mean(gn.square(pred - target))   # (None, 1) -> ()
        gn.mean(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=0)   # eagerly: array([2., 3.])
    """
    return apply("mean", (x,), {"axis": _axis_attr(axis), "keepdims": _flag(keepdims)}, name)


def max(x, axis=None, keepdims=False, name=None):  # noqa: A001
    """Maximum over `axis` (an int, a tuple of ints, or None: all axes), as `np.max`; its
    gradient goes to the first maximal element.

    Shapes: x (2, 3) -> () with axis=None, (2,) with axis=1, (2, 1) with keepdims=True.

        best = gn.max(scores, axis=-1)          # (None, 10) -> (None,)
    """
    return apply("max", (x,), {"axis": _axis_attr(axis), "keepdims": _flag(keepdims)}, name)


def argmax_mask(x, axis=None):
    return apply("argmax_mask", (x,), {"axis": _axis_attr(axis)})


def broadcast_like(g, x, axis=None, keepdims=False):
    """Broadcast `g`, a reduction of `x` over `axis`, back to x's shape."""
    return apply("broadcast_like", (g, x),
                 {"axis": _axis_attr(axis), "keepdims": _flag(keepdims)})


def reciprocal_count(x, axis=None):
    """1 / the number of elements of x over `axis`; known when the graph runs."""
    return apply("reciprocal_count", (x,), {"axis": _axis_attr(axis)})


def matmul(a, b, name=None):
    """Matrix product with NumPy's `np.matmul` semantics (also the `@` operator).

    (n, k) @ (k, m) -> (n, m); a 1-D operand is a vector: (n, k) @ (k,) -> (n,),
    (k,) @ (k, m) -> (m,), (k,) @ (k,) -> () (the dot product). Operands of rank > 2 are
    stacks of matrices whose leading (batch) dims broadcast: (B, n, k) @ (k, m) ->
    (B, n, m), (B, n, k) @ (B, k, m) -> (B, n, m), (1, n, k) @ (B, k, m) -> (B, n, m).
    Gradients flow to both operands (summed over the dims an operand was broadcast along).

        W = gn.param("W", shape=(3, 4), seed=0)
        v = gn.input("v", (4,))
        y = W @ v                                  # (3,)
        q = gn.input("q", (None, 5, 8))
        k = gn.input("k", (None, 8, 5))
        scores = gn.matmul(q, k)                   # (?, 5, 5)
    """
    return apply("matmul", (a, b), name=name)


def transpose(x, axes=None, name=None):
    """Permute the axes, as `np.transpose` (default: reverse them; `x.T` for a matrix).

    Shapes: x (2, 3) -> (3, 2); x (2, 3, 4) with axes=(0, 2, 1) -> (2, 4, 3).

        Wt = gn.transpose(W)                    # (784, 10) -> (10, 784)
    """
    ndim = len(_shape_of(x))
    axes = tuple(reversed(range(ndim))) if axes is None else _axis_attr(axes)
    return apply("transpose", (x,), {"axes": axes}, name)


def reshape(x, shape, name=None):
    """The same elements in another shape, as `np.reshape` (row-major); one -1 is inferred,
    so a symbolic dim (the batch) may be kept as -1.

    Shapes: x (None, 8, 8, 1) with shape (-1, 64) -> (None, 64).

        flat = gn.reshape(images, (-1, 64))      # (None, 8, 8, 1) -> (None, 64)
    """
    shape = (shape,) if isinstance(shape, (int, S.Sym)) else tuple(shape)
    shape = tuple(d if isinstance(d, S.Sym) else _int(d) for d in shape)
    if not isinstance(x, Node):
        shape = tuple(-1 if isinstance(d, S.Sym) else d for d in shape)
    return apply("reshape", (x,), {"shape": shape}, name)


def flatten(x, name=None):
    """Keep the first (batch) axis, flatten the rest (whose dims must be known).

    Shapes: (n, h, w, c) -> (n, h*w*c).

        features = gn.flatten(feature_maps)    # (None, 4, 4, 16) -> (None, 256)
    """
    shape = _shape_of(x)
    rest = S.static_size(shape[1:])
    if rest is None:
        raise GraphError(f"flatten needs static dims after the first, got "
                         f"{S.format_shape(shape)} (at {user_location()})")
    return reshape(x, (shape[0] if isinstance(x, Node) else -1, rest), name=name)


def concat(xs, axis=0, name=None):
    """Join a list of nodes along an existing axis, as `np.concatenate`.

    Shapes: (None, 3) and (None, 5) with axis=1 -> (None, 8); the other dims must agree.

        both = gn.concat([left, right], axis=1)     # (None, 3), (None, 5) -> (None, 8)
    """
    xs = list(xs)
    if not xs:
        raise GraphError(f"concat needs at least one input (at {user_location()})")
    return apply("concat", tuple(xs), {"axis": _int(axis)}, name)


def slice_axis(x, axis, start, stop, name=None):
    """x[..., start:stop, ...] along one axis, with static bounds (the gradient is zero
    outside the slice).

    Shapes: x (None, 30, 4) with axis=1, start=0, stop=1 -> (None, 1, 4).

        first = gn.slice_axis(sequence, 1, 0, 1)    # (None, 30, 4) -> (None, 1, 4)
    """
    return apply("slice_axis", (x,), {"axis": _int(axis), "start": _int(start),
                                      "stop": _int(stop)}, name)


def pad_axis(x, axis, before, after):
    return apply("pad_axis", (x,), {"axis": _int(axis), "before": _int(before),
                                    "after": _int(after)})


def conv2d(x, w, stride=1, padding="valid", dilation=1, groups=1, name=None):
    """2-D convolution (cross-correlation) of NHWC images x (batch, h, w, c) with an HWIO
    kernel w (kh, kw, c / groups, k): (batch, h', w', k). "same" padding gives
    h' = ceil(h / stride) (Keras/TensorFlow, the extra pad at bottom/right); "valid"
    h' = (h - span) // stride + 1 with span = dilation·(kh − 1) + 1. `dilation` (an int or
    a pair (dh, dw)) spaces the kernel's taps: the kernel is dilated with zeros (`dilate`),
    so the gradient reaches its taps through the same graph ops.

    `groups` splits the channels into that many groups convolved separately (c and k
    divisible by it): output channels [g k/groups, (g+1) k/groups) see input channels
    [g c/groups, (g+1) c/groups) only. groups == c == k is a depthwise convolution
    (`depthwise_conv2d`, one op); other groups are one conv2d per group and a concat.

        >>> x = gn.input("img", (None, 28, 28, 1))
        >>> k = gn.param("k", shape=(3, 3, 1, 8), seed=0)
        >>> gn.conv2d(x, k, stride=2, padding="same").shape
        (None, 14, 14, 8)
        >>> gn.conv2d(x, k, dilation=2).shape
        (None, 24, 24, 8)
        >>> h = gn.input("h", (None, 8, 8, 16))
        >>> gn.conv2d(h, gn.param("dw", shape=(3, 3, 1, 16), seed=0), groups=16).shape
        (None, 6, 6, 16)
    """
    rates = (dilation, dilation) if _is_int(dilation) else tuple(dilation) \
        if isinstance(dilation, (tuple, list)) else None
    if rates is None or len(rates) != 2 or not all(_is_int(r) and r >= 1 for r in rates):
        raise GraphError(f"conv2d: dilation must be a positive int or a pair of them, got "
                         f"{dilation!r:.60} (at {user_location()})")
    if not _is_int(groups) or groups < 1:
        raise GraphError(f"conv2d: groups must be a positive int, got {groups!r:.60} "
                         f"(at {user_location()})")
    if rates != (1, 1):
        w = dilate(dilate(w, 0, int(rates[0])), 1, int(rates[1]))
    if groups == 1:
        return apply("conv2d", (x, w), {"stride": _int(stride), "padding": padding}, name)
    return _grouped_conv2d(x, w, stride, padding, int(groups), name)


def _grouped_conv2d(x, w, stride, padding, groups, name):
    xs, ws = _shape_of(x), _shape_of(w)
    c = S.resolve(xs[3]) if len(xs) == 4 else None
    k = S.resolve(ws[3]) if len(ws) == 4 else None
    if not isinstance(c, int) or not isinstance(k, int) or c % groups or k % groups \
            or S.resolve(ws[2]) != c // groups:
        raise ShapeError(f"conv2d (groups={groups}): images {S.format_shape(xs)} and kernel "
                         f"{S.format_shape(ws)} do not split into {groups} groups (the "
                         f"channels c and the kernel's outputs k must be static multiples of "
                         f"groups, and the kernel (kh, kw, c / groups, k)) (at "
                         f"{user_location()})")
    if c == groups and k == groups:
        return depthwise_conv2d(x, w, stride=stride, padding=padding, name=name)
    if S.resolve(ws[0]) == 1 and S.resolve(ws[1]) == 1 and _int(stride) == 1 \
            and padding in ("valid", "same"):  # (1x1, stride 1: "same" pads nothing)
        return grouped_conv2d(x, w, groups, name=name)
    gin, gout = c // groups, k // groups
    parts = [apply("conv2d", (slice_axis(x, 3, g * gin, (g + 1) * gin),
                              slice_axis(w, 3, g * gout, (g + 1) * gout)),
                   {"stride": _int(stride), "padding": padding})
             for g in range(groups)]
    return concat(parts, axis=3, name=name)


def grouped_conv2d(x, w, groups, name=None):
    """Grouped 1x1 convolution of NHWC images x (batch, h, w, c) with a kernel w
    (1, 1, c / groups, k): (batch, h, w, k), output channels [g k/groups, (g+1) k/groups)
    computed from input channels [g c/groups, (g+1) c/groups) only (conv2d with a 1x1
    kernel and `groups`, as ShuffleNet's pointwise layers; `gn.conv2d(x, w, groups=g)`
    picks it for 1x1 stride-1 kernels).

        >>> x = gn.input("img", (None, 8, 8, 12))
        >>> w = gn.param("w", shape=(1, 1, 3, 16), seed=0)
        >>> gn.ops.grouped_conv2d(x, w, groups=4).shape
        (None, 8, 8, 16)
    """
    return apply("grouped_conv2d", (x, w), {"groups": _int(groups)}, name)


def channel_shuffle(x, groups, name=None):
    """The channel shuffle of ShuffleNet on NHWC images x (n, h, w, c), c a multiple of
    `groups`: output channel j * groups + i is input channel i * (c / groups) + j (the
    groups' channels interleaved), same shape. Its inverse is channel_shuffle(y,
    c // groups).

        >>> gn.ops.channel_shuffle(np.arange(6.0).reshape(1, 1, 1, 6), 2).ravel()
        array([0., 3., 1., 4., 2., 5.])
    """
    return apply("channel_shuffle", (x,), {"groups": _int(groups)}, name)


def depthwise_conv2d(x, w, stride=1, padding="valid", name=None):
    """Depthwise 2-D convolution of NHWC images x (batch, h, w, c) with one kh x kw filter
    per channel, w (kh, kw, 1, c): (batch, h', w', c), out[..., ch] the cross-correlation
    of channel ch with w[:, :, 0, ch] (conv2d with groups = c). `padding`: "valid",
    "same" (as conv2d) or explicit (top, left, bottom, right), then
    h' = (h + top + bottom - kh) // stride + 1.

        >>> x = gn.input("img", (None, 16, 16, 32))
        >>> w = gn.param("w", shape=(3, 3, 1, 32), seed=0)
        >>> gn.depthwise_conv2d(x, w, stride=2, padding=(1, 1, 1, 1)).shape
        (None, 8, 8, 32)
    """
    if isinstance(padding, list):
        padding = tuple(padding)
    if isinstance(padding, tuple):
        padding = tuple(_int(p) for p in padding)
    return apply("depthwise_conv2d", (x, w), {"stride": _int(stride), "padding": padding},
                 name)


def dilate(w, axis, rate):
    """`w` with rate-1 zeros inserted between its entries along `axis` (a static axis): a
    dilated convolution kernel, made of slices, pads and a concat (so gradients flow back to
    the taps). Shape: k along `axis` becomes rate·(k − 1) + 1.

        >>> gn.ops.dilate(np.array([1.0, 2.0, 3.0]), 0, 2)
        array([1., 0., 2., 0., 3.])
    """
    k = S.resolve(_shape_of(w)[axis])
    if not isinstance(k, int):
        raise GraphError(f"dilate: axis {axis} must have a static size (at {user_location()})")
    if rate == 1 or k == 1:
        return w
    taps = []
    for i in range(k):
        tap = slice_axis(w, axis, i, i + 1)
        taps.append(pad_axis(tap, axis, 0, rate - 1) if i < k - 1 else tap)
    return concat(taps, axis=axis)


def max_pool2d(x, size=2, stride=None, padding="valid", name=None):
    """Maximum over size x size windows of NHWC images ("valid": whole windows only, the
    output size floors); `stride` defaults to `size`. The gradient goes to the first
    maximal element of each window. `padding` (top, left, bottom, right), each smaller
    than `size`, pads the image with -inf (a window's maximum over its taps inside the
    image; op max_pool2d_padded).

    Shapes: (n, h, w, c) -> (n, (h - size) // stride + 1, (w - size) // stride + 1, c),
    with h + top + bottom and w + left + right when padded.

        y = gn.max_pool2d(x, 2)               # (None, 8, 8, 16) -> (None, 4, 4, 16)
        y = gn.max_pool2d(x, 3, 2, padding=(1, 1, 1, 1))   # -> (None, 4, 4, 16)
    """
    stride = _int(size if stride is None else stride)
    if isinstance(padding, list):
        padding = tuple(padding)
    if isinstance(padding, tuple) and any(padding):
        return apply("max_pool2d_padded", (x,), {
            "size": _int(size), "stride": stride,
            "padding": tuple(_int(p) for p in padding)}, name)
    if padding not in ("valid", (0, 0, 0, 0)):
        raise GraphError(f"max_pool2d: padding must be 'valid' or (top, left, bottom, right), "
                         f"got {padding!r:.60} (at {user_location()})")
    return apply("max_pool2d", (x,), {"size": _int(size), "stride": stride}, name)


def avg_pool2d(x, size=2, stride=None, name=None):
    """Mean over size x size windows of NHWC images ("valid": whole windows only, the
    output size floors); `stride` defaults to `size`.

    Shapes: (n, h, w, c) -> (n, (h - size) // stride + 1, (w - size) // stride + 1, c).

        y = gn.avg_pool2d(x, 2)               # (None, 8, 8, 16) -> (None, 4, 4, 16)
    """
    return apply("avg_pool2d", (x,), {"size": _int(size),
                                                "stride": _int(size if stride is None else stride)}, name)


def softmax(x, axis=-1, name=None):
    """e**x / sum(e**x) along `axis` (computed stably, the maximum subtracted first).

    Shapes: the result has x's shape; it sums to 1 along `axis`.

        probs = gn.softmax(logits)             # (None, 10) -> (None, 10)
    """
    return apply("softmax", (x,), {"axis": _int(axis)}, name)


def log_softmax(x, axis=-1, name=None):
    """log(softmax(x)) along `axis`, computed stably (x - max - log sum e**(x - max)).

    Shapes: the result has x's shape.

        logp = gn.log_softmax(logits)          # (None, 10) -> (None, 10)
    """
    return apply("log_softmax", (x,), {"axis": _int(axis)}, name)


def one_hot(labels, classes, dtype="float32"):
    """1 at each integer label's class, 0 elsewhere (labels outside [0, classes) give a row
    of zeros); no gradient.

    Shapes: labels (n,) int -> (n, classes) in `dtype`.

        targets = gn.one_hot(y, 10)            # y (None,) int64 -> (None, 10) float32
        gn.one_hot(np.array([0, 2]), 3)        # eagerly: [[1, 0, 0], [0, 0, 1]]
    """
    return apply("one_hot", (labels,),
                 {"classes": _int(classes), "dtype": _dtype_name(dtype, "one_hot")})


def embedding(ids, table, name=None):
    """Rows of `table` picked by integer `ids`: `table[ids]`, of shape ids.shape + (dim,).

    ids: integers of any shape, each in [0, rows); table: (rows, dim) floats (a parameter).
    The table's gradient adds each output row's gradient into the row it came from. Ids
    outside [0, rows) are refused: a graph input holding one is a FeedError before
    anything runs, eager mode and backend="numpy" raise GraphError; ids computed inside
    a compiled graph give a row of zeros (no memory outside the table is read).

        table = gn.param("emb", shape=(1000, 16), init="normal", seed=0)
        words = gn.input("words", (None, 20), dtype="int64")
        vectors = gn.embedding(words, table)      # (?, 20, 16)
    """
    return apply("embedding", (ids, table), name=name)


def mse(pred, target, name=None):
    """Mean squared error: mean((pred - target)**2) over every element.

    Shapes: pred and target of the same shape, e.g. (None, 1) -> a scalar ().

        loss = gn.mse(model(x), y)             # (None, 1), (None, 1) -> ()
    """
    return apply("mse", (pred, target), name=name)


def binary_cross_entropy(p, y, from_logits=False, name=None):
    """Mean binary cross-entropy of probabilities `p` (clipped to [1e-7, 1-1e-7]) or of
    logits with `from_logits=True` (exact and stable for large |logits|), against 0/1
    targets `y`.

    Shapes: p and y of the same shape, e.g. (None, 1) -> a scalar ().

        loss = gn.binary_cross_entropy(gn.sigmoid(z), y)       # (None, 1) -> ()
        loss = gn.binary_cross_entropy(z, y, from_logits=True)  # the same, stabler
    """
    return apply("binary_cross_entropy", (p, y), {"from_logits": bool(from_logits)}, name)


def softmax_cross_entropy(logits, labels, name=None):
    """Mean over the batch of -log softmax(logits)[label]; labels are integer class ids
    (batch,) or probabilities (batch, classes). Stable for large logits.

    Shapes: logits (batch, classes) and labels (batch,) int or (batch, classes) -> ().

        loss = gn.softmax_cross_entropy(logits, y, name="loss")   # (None, 10), (None,) -> ()
    """
    return apply("softmax_cross_entropy", (logits, labels), name=name)


def zeros_like(x):
    return const_node(np.zeros(S.public_shape(_shape_of(x)), _dtype_of(x))) \
        if S.is_static(_shape_of(x)) else x * 0


def random_uniform(counter, like, seed=0, name=None):
    """Uniform random numbers in [0, 1) with the shape and float dtype of `like`, drawn by a
    counter-based generator (Philox-4x32-10, kernels/random.py): element i (row-major) is a
    function of (`seed`, the value of the scalar `counter`, i) alone, so numpy, cpu and cuda
    give bit-identical numbers, and a counter the step increments (a `gn.variable` updated
    by the step) gives a new draw at every call without recompiling. float32 numbers carry
    24 random bits, float64 ones 53. `like` is not read, only its shape. No gradient.

        >>> t = gn.variable("t", np.zeros((), np.float64))
        >>> x = gn.input("x", (None, 4))
        >>> u = gn.random_uniform(t, x, seed=7)          # (batch, 4) float32
        >>> f = gn.compile(u, updates={t: t + 1})          # a new draw each call
    """
    bits = random.uniform_bits(_dtype_of(like)) if _dtype_of(like).kind == "f" else 0
    return apply("random_uniform", (counter, like), {"seed": _int(seed), "bits": bits}, name)


def training_branch(train, infer, state_updates=None, name=None):
    """A value that is `train` in the training graph and `infer` in the inference graph
    (`gn.nn.inference` chooses), with the state updates `{state: new value}` the training
    step must apply (found by `gn.nn.state_updates`; optimizers add them to their
    updates). Layers with a training mode (Dropout, BatchNorm) are built on it. The
    gradient goes to `train` alone. The shape of train and infer alike; each new value like its
    state.

        >>> t = gn.variable("t", np.zeros((), np.float64))
        >>> y = gn.training_branch(x * 2, x, {t: t + 1})   # x * 2 while training, x after
    """
    pairs = []
    for state, new in (state_updates or {}).items():
        if getattr(state, "op", None) not in ("param", "variable"):
            raise GraphError(f"training_branch: a state update must be keyed by a gn.variable "
                             f"or gn.param, got {state!r:.60} (at {user_location()})")
        pairs += [state, new]
    return apply("training_branch", (train, infer, *pairs), name=name)
