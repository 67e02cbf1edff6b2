"""Declaring graph leaves: inputs (fed at call time), parameters, variables and constants."""
import weakref

import numpy as np

from . import shapes as S
from .errors import DTypeError, GraphError, OptionError, ShapeError, user_location
from .initializers import initialize
from .node import make_node
from .registry import const_node

FLOAT_DTYPES = ("float32", "float64")

# registry of declared inputs by name, so a compiled function can tell an input it does not
# need (ignored) from a name that is no input at all (an error)
declared_inputs = weakref.WeakValueDictionary()
INPUT_DTYPES = FLOAT_DTYPES + ("int32", "int64")
CONST_DTYPES = FLOAT_DTYPES + ("int8", "int16", "int32", "int64",
                               "uint8", "uint16", "uint32", "uint64")


class ValueState:
    """The mutable value of a parameter or variable. The node itself stays immutable.

    `version` counts new values written on the host; a back end that keeps a copy elsewhere
    (the cuda back end keeps parameters on the device) compares it to know when to copy
    again. When a device holds a newer value (a cuda step updated it), `device_copy` is the
    function that brings it to the host: reading `.value` calls it first, so `W.value`, `gn.save`
    and every other back end always see the current values; assigning a new value drops
    the device's newer copy (the host's value wins, and is uploaded by the next cuda call).
    """

    __slots__ = ("_value", "version", "device_copy")
    # Bumped whenever any state gets a new array: a compiled function keeps its list of
    # state arrays (call arguments) until this changes.
    epoch = 0
    # Bumped by every host step that writes states in place (cpu and numpy back ends): a
    # device copy older than such a step is uploaded again.
    host_writes = 0

    def __init__(self, value):
        self._value = value
        self.version = 0
        self.device_copy = None

    @property
    def value(self):
        if self.device_copy is not None:
            fetch, self.device_copy = self.device_copy, None
            fetch(self)
        return self._value

    @value.setter
    def value(self, array):
        self.device_copy = None
        self._value = array

    @property
    def host_array(self):
        """The host array without copying a newer device value into it: its shape and dtype
        are the value's, its numbers may be older."""
        return self._value

    def set(self, node, array):
        array = _real_array(array, f"{node.label()}: the new value")
        if array.shape != node.shape:
            raise ShapeError(f"{node.label()}: new value has shape {array.shape}, "
                             f"expected {node.shape} (at {user_location()})")
        self.value = np.array(array, dtype=node.dtype, order="C")
        self.version += 1
        ValueState.epoch += 1


def _real_array(value, what):
    """`value` as an array of real numbers (bool, int or float), else a typed GraphError:
    strings would be parsed, None would become NaN, complex numbers would lose their
    imaginary part, a ragged list has no shape."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{what} cannot be turned into an array ({exc}) "
                         f"(at {user_location()})") from None
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"{what} has dtype {array.dtype}; it must hold real numbers "
                         f"(at {user_location()})")
    return array


def _check_name(name, what):
    if not isinstance(name, str) or not name:
        raise GraphError(f"{what} needs a non-empty string name, got {name!r} "
                         f"(at {user_location()})")


def _check_dtype(dtype, allowed, what, name):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{what} '{name}': unknown dtype {dtype!r} (at {user_location()})") \
            from None
    if dtype.name not in allowed:
        raise DTypeError(f"{what} '{name}': dtype {dtype} is not supported; use one of "
                         f"{', '.join(allowed)} (at {user_location()})")
    return dtype


def input(name, shape, dtype="float32"):  # noqa: A001 - the public API name
    """A graph input, fed by name when the compiled function is called.

    `None` in the shape is a dim known only at call time (a batch size); a string names a
    symbolic dim shared by every input that uses it. dtype: float32 (default), float64,
    int32 or int64.

        x = gn.input("x", (None, 784))              # shape (None, 784): any batch size
        y = gn.input("y", (None,), dtype="int64")   # class ids
        f = gn.compile(gn.mean(x)); f(x=np.ones((32, 784), np.float32))
    """
    _check_name(name, "gn.input")
    dtype = _check_dtype(dtype, INPUT_DTYPES, "input", name)
    try:
        sym_shape = S.make_shape(shape)
    except ShapeError as exc:
        raise ShapeError(f"input '{name}': {exc} (at {user_location()})") from None
    node = make_node("input", {"name": name}, (), sym_shape, dtype, name=name, intern=False)
    declared_inputs[name] = node
    return node


def param(name, value=None, shape=None, init="glorot_uniform", seed=None, dtype="float32"):
    """A trainable parameter: from an array, or from `shape` + `init` + `seed`.

    Its current value is `node.value` (an array of `shape`; assign a new one with
    `W.value = array`); optimizers update it in place. init: "glorot_uniform", "zeros",
    "ones", "he_normal", ... (graphnn/initializers.py).

        W = gn.param("W", shape=(784, 10), init="glorot_uniform", seed=0)   # (784, 10)
        b = gn.param("b", np.zeros(10, np.float32))                        # (10,)
    """
    return _stateful("param", name, value, shape, init, seed, dtype)


def variable(name, value=None, shape=None, init="zeros", seed=None, dtype="float32"):
    """A non-trainable stateful value: an optimizer's moment estimate, a step counter, a
    learning rate set between calls. Compiled functions read its current `.value` at every
    call (changing it never recompiles); `updates={var: node}` writes it.

        lr = gn.variable("lr", np.float32(0.1))       # shape (), float32
        opt = gn.optim.SGD(lr=lr)
        lr.value = 0.01                               # the next step uses 0.01
    """
    return _stateful("variable", name, value, shape, init, seed, dtype)


def _stateful(op, name, value, shape, init, seed, dtype):
    _check_name(name, f"gn.{op}")
    where = user_location()
    if value is None:
        if shape is None:
            raise GraphError(f"{op} '{name}' needs a value or a shape (at {where})")
        dtype = _check_dtype(dtype, FLOAT_DTYPES, op, name)
        shape = tuple(shape) if not isinstance(shape, int) else (shape,)
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise ShapeError(f"{op} '{name}': shape {shape} must be non-negative ints "
                             f"(at {where})")
        value = initialize(init, shape, dtype, seed, where, f"{op} '{name}'")
    else:
        value = np.array(_real_array(value, f"{op} '{name}': the value"), copy=True)
        if value.dtype.kind in "iu":
            value = value.astype(np.float32)
        elif value.dtype.name not in FLOAT_DTYPES:
            raise DTypeError(f"{op} '{name}': value has dtype {value.dtype}; use one of "
                             f"{', '.join(FLOAT_DTYPES)} (at {where})")
        value = np.array(value, order="C")
    node = make_node(op, {"name": name}, (), value.shape, value.dtype, name=name, intern=False,
                     where=where)
    node.state = ValueState(value)
    return node


def const(value, dtype=None, name=None):
    """A constant node from a number or an array; equal constants are one node. A Python
    number becomes float32; an array keeps its shape and dtype.

        k = gn.const(3.0)                 # shape (), float32
        I = gn.const(np.eye(3))           # shape (3, 3), float64
    """
    if dtype is None and isinstance(value, (int, float)):
        dtype = "float32"
    array = _real_array(value, "gn.const: the value")
    try:
        array = np.asarray(array, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DTypeError(f"gn.const: cannot make an array of dtype {dtype!r} ({exc}) "
                         f"(at {user_location()})") from None
    if array.dtype.name not in CONST_DTYPES:
        raise DTypeError(f"gn.const: dtype {array.dtype} is not supported; use one of "
                         f"{', '.join(CONST_DTYPES)} (at {user_location()})")
    return const_node(array, name)
