"""visualize/style.py: colours per Netron category; the categories come from the stanzas."""
import graphnn as gn
from graphnn.registry import CATEGORIES, OPS
from visualize import style
from visualize.draw import to_dot


def test_every_category_of_the_registry_has_a_colour():
    assert set(style.CATEGORY_COLOUR) == set(CATEGORIES)


def test_header_colours_follow_the_stanza():
    assert style.header_colour("relu") == "#702921" and style.category_of("relu") == "Activation"
    assert style.header_colour("conv2d") == "#335588"
    assert style.header_colour("add") == style.NO_CATEGORY_COLOUR
    assert style.category_of("graphnn_test_unknown_op") is None
    assert dict(style.OP_CATEGORY) == {name: op.category for name, op in OPS.items()}


def test_an_op_registered_at_run_time_is_drawn_in_its_category():
    gn.define_elementwise("graphnn_test_halve", lambda x: x / 2, lambda g, out, x: (
        lambda: g / 2,), "{0} / {T}(2)", category="Pool")
    try:
        assert style.header_colour("graphnn_test_halve") == "#335533"
        assert style.OP_CATEGORY["graphnn_test_halve"] == "Pool"
        x = gn.input("x", (2,))
        halve = gn.registry.apply("graphnn_test_halve", (gn.exp(x),))
        assert "#335533" in to_dot(halve)
    finally:
        gn.unregister_op("graphnn_test_halve")
    assert "graphnn_test_halve" not in style.OP_CATEGORY
