"""Error types for user mistakes, and where in the user's code a node was made.

Every error graphnn raises for a mistake in a user's graph or feed is a subclass of
`GraphError`; its message names the node or input and the user's file:line.
"""
import contextlib
import functools
import os
import sys

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(__file__)).rsplit(os.sep, 1)[0] + os.sep + pkg + os.sep
    for pkg in ("graphnn", "kernels", "visualize")
)


class GraphError(Exception):
    """Base class of every error caused by a user's graph, feed or option.
    Its message names the node or input and the user's file:line.

        try:
            step(x=X_wrong)
        except gn.GraphError as error:    # any of the errors below
            print(error)
    """


class ShapeError(GraphError, ValueError):
    """Shapes that do not fit an op (found when the node is declared or when fed).

        x = gn.input("x", (None, 3))
        gn.matmul(x, gn.param("W", shape=(4, 2)))   # raises gn.ShapeError: 3 vs 4
    """


class DTypeError(GraphError, TypeError):
    """A dtype an op cannot take (e.g. integers into `exp`).

        labels = gn.input("labels", (None,), dtype="int64")
        gn.exp(labels)             # raises gn.DTypeError; gn.cast(labels, "float32") first
    """


class FeedError(GraphError, ValueError):
    """A missing, unknown or ill-shaped feed to a compiled function.

        f = gn.compile(gn.mean(gn.input("x", (None, 3))))
        f(x=np.ones((4, 2)))       # raises gn.FeedError: x needs (?, 3), got (4, 2)
    """


class GradError(GraphError):
    """A gradient that cannot be formed (integer input, non-scalar loss without seed...).

        y = gn.input("y", (None,), dtype="int64")
        gn.grad(gn.sum(gn.cast(y, "float32")), [y])   # raises gn.GradError: integer input
    """


class NumericalError(GraphError, ArithmeticError):
    """NaN or Inf found in a node's output when `check_finite=True`.
    The message names the first node that produced it.

        f = gn.compile(gn.log(x), check_finite=True)
        f(x=np.array([-1.0], np.float32))    # raises gn.NumericalError naming the log node
    """


class OptionError(GraphError, ValueError):
    """An argument of the wrong type or value (batch_size=0, a string learning rate...).

        gn.fit(step, data, batch_size=0)     # raises gn.OptionError: batch_size must be ...
    """


class BackendError(GraphError, RuntimeError):
    """A backend that cannot run here (no GPU, missing library) or an unknown backend.

        gn.compile(loss, backend="tpu")      # raises gn.BackendError: unknown backend
    """


def user_location():
    """Return "file:line" of the first stack frame outside graphnn's own packages."""
    return _location_from(sys._getframe(1))


def _location_from(frame):
    """user_location() from `frame` up."""
    while frame is not None:
        code = frame.f_code
        if code is _LOCATED_CALL:
            return _LOCATED[frame]
        code_file = code.co_filename
        inside = _INSIDE.get(code_file)
        if inside is None:  # every node asks: abspath once per file, not once per frame
            filename = os.path.abspath(code_file)
            inside = _INSIDE[code_file] = filename.startswith(_PACKAGE_DIRS) or \
                "importlib" in filename or filename == _CONTEXTLIB  # (ContextDecorator)
        if not inside:
            return f"{code_file}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def located(function):
    """Decorate a graphnn function that makes many nodes (gn.grad, an optimizer's updates):
    `user_location()` under a call of it stops at the call, whose answer is found once, as
    the call starts, instead of walking on up the stack for each node (20,000 nodes of a
    deep graph's gradient and updates, each 14 frames deep). The same answer: the frames
    above the call stay where they are while it runs, and a user's frame under it (a
    gradient rule of the user's, say) is found first, as before."""
    @functools.wraps(function)
    def located_call(*args, **kwargs):
        frame = sys._getframe()
        _LOCATED[frame] = _location_from(frame.f_back)
        try:
            return function(*args, **kwargs)
        finally:
            del _LOCATED[frame]
    return located_call


_INSIDE = {}  # code file name -> whether it is one of graphnn's own (or importlib's)
# graphnn functions decorated with a context manager (node.collector_paused) run under a
# frame of contextlib's: never the user's line
_CONTEXTLIB = os.path.abspath(contextlib.__file__)
_LOCATED = {}  # the frame of a `located` call running -> the user's location of the call
_LOCATED_CALL = located(lambda: None).__code__  # (the code of every `located` call's frame)
