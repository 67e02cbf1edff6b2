"""Error types for user mistakes, and where in the user's code a node was made.

Every error graphnn raises for a mistake in a user's graph or feed is a subclass of
`GraphError`; its message names the node or input and the user's file:line.
"""
import os
import sys

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(__file__)).rsplit(os.sep, 1)[0] + os.sep + pkg + os.sep
    for pkg in ("graphnn", "kernels", "visualize")
)


class GraphError(Exception):
    """Base class of every error caused by a user's graph, feed or option."""


class ShapeError(GraphError, ValueError):
    """Shapes that do not fit an op (found when the node is declared or when fed)."""


class DTypeError(GraphError, TypeError):
    """A dtype an op cannot take (e.g. integers into `exp`)."""


class FeedError(GraphError, ValueError):
    """A missing, unknown or ill-shaped feed to a compiled function."""


class GradError(GraphError):
    """A gradient that cannot be formed (integer input, non-scalar loss without seed...)."""


class NumericalError(GraphError, ArithmeticError):
    """NaN or Inf found in a node's output when `check_finite=True`."""


class OptionError(GraphError, ValueError):
    """An argument of the wrong type or value (batch_size=0, a string learning rate...)."""


class BackendError(GraphError, RuntimeError):
    """A backend that cannot run here (no GPU, missing library) or an unknown backend."""


def user_location():
    """Return "file:line" of the first stack frame outside graphnn's own packages."""
    frame = sys._getframe(1)
    while frame is not None:
        code_file = frame.f_code.co_filename
        inside = _INSIDE.get(code_file)
        if inside is None:  # every node asks: abspath once per file, not once per frame
            filename = os.path.abspath(code_file)
            inside = _INSIDE[code_file] = \
                filename.startswith(_PACKAGE_DIRS) or "importlib" in filename
        if not inside:
            return f"{code_file}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


_INSIDE = {}  # code file name -> whether it is one of graphnn's own (or importlib's)
