"""Bugs the fuzzers (test_fuzz_load.py, test_fuzz_values.py) found, each pinned down by the
smallest case that showed it."""
import numpy as np
import pytest

import graphnn as gn
from graphnn.registry import apply
from test_reliability_2 import write_graph  # a hand-written gn.save pair


X = {"op": "input", "name": "x", "dtype": "float32", "shape": [2, 3]}


@pytest.mark.parametrize("op, inputs, attrs", [
    ("minimum", [0], {}),                      # a binary op given one input (load fuzz seed 82)
    ("add", [0, 0, 0], {}),
    ("tanh", [0, 0], {}),
    ("transpose", [0, 0], {"axes": [1, 0]}),
    ("sum", [], {"axis": None, "keepdims": False}),
    ("concat", [], {"axis": 0}),
])
def test_a_file_giving_an_op_the_wrong_number_of_inputs_is_refused(tmp_path, op, inputs, attrs):
    node = {"op": op, "name": None, "dtype": "float32", "shape": [2, 3], "inputs": inputs,
            "attrs": attrs}
    path = write_graph(tmp_path, [X, node], [1])
    with pytest.raises(gn.GraphError, match=f"node 1: {op}: {op}: takes .* inputs, got "
                                            f"{len(inputs)}"):
        gn.load(path)


def test_registry_apply_checks_the_number_of_inputs():
    x = gn.input("x", (2, 3))
    with pytest.raises(gn.ShapeError, match=r"minimum: takes 2 inputs, got 1 \('x' \(2, 3\)"):
        apply("minimum", (x,))
    with pytest.raises(gn.ShapeError, match="conv2d_grad_input: takes 3 inputs, got 2"):
        apply("conv2d_grad_input", (x, x), {"stride": 1, "padding": "valid"})
    with pytest.raises(gn.ShapeError, match="concat: takes 1 or more inputs, got 0"):
        apply("concat", (), {"axis": 0})
    # the right counts still build
    assert apply("minimum", (x, x)).shape == (2, 3)
    assert apply("concat", (x, x, x), {"axis": 0}).shape == (6, 3)


# kernels/cpu.py's fastmath flags once held both 'reassoc' and 'nsz', which together let
# LLVM factor a loop-invariant operand out of a sum of products: inf*0 never happened and
# numpy's NaN became inf (found by the values fuzz)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_sum_of_products_keeps_the_nan_of_inf_times_zero(dtype):
    x, y = gn.input("x", (3, 1), dtype), gn.input("y", (1, 4), dtype)
    feeds = {"x": np.array([[1.0], [2.0], [np.inf]], dtype),
             "y": np.array([[0.0, 1.0, 2.0, 3.0]], dtype)}
    for output, expected in ((gn.sum(x * y), np.nan),  # inf * 0 is NaN, and so the sum
                             (gn.sum(x * y, axis=1), [6.0, 12.0, np.nan])):
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(gn.compile(output, backend="numpy")(**feeds),
                                          np.array(expected, dtype))
        np.testing.assert_array_equal(gn.compile(output, backend="cpu")(**feeds),
                                      np.array(expected, dtype))
