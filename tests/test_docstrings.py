"""Every public name of graphnn has a docstring worth reading: at least two lines and an
example (an indented code line, or a doctest), and for ops and layers the shapes.

Public names: `gn.__all__`, and in `gn.nn`, `gn.optim` and `gn.callbacks` their `__all__`,
else every function and class the module defines without a leading underscore. A new
public function or layer without such a docstring fails here, on purpose.
"""
import inspect
import re
import types

import pytest

import graphnn as gn
from graphnn.nn import Layer

MODULES = {"gn": gn, "gn.nn": gn.nn, "gn.optim": gn.optim, "gn.callbacks": gn.callbacks}


def public_names(module):
    if module is not gn and hasattr(module, "__all__"):
        return list(module.__all__)
    if module is gn:
        return list(gn.__all__)
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
            and value.__module__ == module.__name__]


PUBLIC = [(f"{prefix}.{name}", getattr(module, name))
          for prefix, module in MODULES.items() for name in public_names(module)]


def example_lines(doc, name):
    """The lines of `doc` that show code: doctest lines, or lines indented deeper than the
    docstring's text that call graphnn (`gn.`) or the name itself."""
    lines = doc.expandtabs().splitlines()
    body = [line for line in lines[1:] if line.strip()]
    if not body:
        return []
    # the text's indentation: that of the closing quotes' line, else the least indented line
    base = len(lines[-1]) if not lines[-1].strip() else min(
        len(line) - len(line.lstrip()) for line in body)
    short = name.rsplit(".", 1)[-1]
    found = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(">>>"):
            found.append(stripped)
        elif line in body and len(line) - len(line.lstrip()) > base and (
                "gn." in stripped or re.search(rf"\b{re.escape(short)}\b", stripped, re.I)):
            found.append(stripped)
    return found


def test_the_public_names_are_found():
    names = [n for n, _ in PUBLIC]
    for expected in ("gn.mean", "gn.one_hot", "gn.fit", "gn.Graph", "gn.nn.Dense",
                     "gn.optim.Adam", "gn.callbacks.EarlyStopping", "gn.callbacks.TensorBoard",
                     "gn.nn", "gn.callbacks"):
        assert expected in names
    # every public function or class imported into gn is in gn.__all__
    missing = [name for name, value in vars(gn).items() if not name.startswith("_")
               and (inspect.isfunction(value) or inspect.isclass(value))
               and name not in gn.__all__]
    assert not missing


def test_the_example_finder_tells_examples_from_prose():
    def documented():
        """Mean over the axis.

            y = gn.mean(x, axis=0)
        """
    def prose_only():
        """Mean over the axis.

        Computes gn.mean(x) over every axis.
        """
    def doctest():
        """Mean.
        >>> gn.mean(np.ones(3))
        """
    assert example_lines(documented.__doc__, "documented") == ["y = gn.mean(x, axis=0)"]
    assert example_lines(prose_only.__doc__, "prose_only") == []
    assert example_lines(doctest.__doc__, "doctest") == [">>> gn.mean(np.ones(3))"]


@pytest.mark.parametrize("name, obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_name_has_a_docstring_with_an_example(name, obj):
    doc = obj.__doc__  # (not inspect.getdoc: a class must not borrow its base's docstring)
    assert doc and doc.strip(), f"{name} has no docstring"
    lines = [line for line in doc.splitlines() if line.strip()]
    assert len(lines) >= 2, f"{name}: a one-line docstring: {doc.strip()!r}"
    assert example_lines(doc, name), f"{name}: no example (an indented code line) in\n{doc}"


SHAPED = [(n, o) for n, o in PUBLIC
          if (callable(o) and getattr(o, "__module__", "") == "graphnn.ops")
          or (inspect.isclass(o) and issubclass(o, Layer))]


@pytest.mark.parametrize("name, obj", SHAPED, ids=[n for n, _ in SHAPED])
def test_ops_and_layers_document_their_shapes(name, obj):
    doc = obj.__doc__ or ""
    assert re.search(r"shape|->|\(batch", doc), f"{name}: no shapes in\n{doc}"


def test_help_shows_the_docstring():
    assert "Example" in gn.mean.__doc__ or "gn.mean(" in gn.mean.__doc__
    assert gn.one_hot.__doc__ is not None and "gn.one_hot(" in gn.one_hot.__doc__
    assert isinstance(gn.nn, types.ModuleType) and "Sequential" in gn.nn.__doc__
