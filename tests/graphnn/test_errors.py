"""Every user mistake raises a gn.GraphError subclass whose message names the node or input
and the user's file:line; plus the documented dtype policy for feeds."""
import numpy as np
import pytest

import graphnn as gn
from helpers import location


def test_every_error_type_is_a_graph_error():
    for error in (gn.ShapeError, gn.DTypeError, gn.FeedError, gn.GradError,
                  gn.NumericalError, gn.BackendError):
        assert issubclass(error, gn.GraphError)


# ---------------------------------------------------------------------------------------
# Shape mismatches, found when the node is declared
# ---------------------------------------------------------------------------------------

def test_broadcast_mismatch_names_op_both_shapes_and_lines():
    made = location(1)
    x, b = gn.input("x", (None, 3)), gn.input("b", (4,))
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        x + b
    msg = str(err.value)
    assert msg.startswith("add: shapes (?, 3) and (4,) do not broadcast")
    assert f"'x' (?, 3) (made at {made})" in msg and f"'b' (4,) (made at {made})" in msg
    assert msg.endswith(f"at {call}")


def test_failed_declaration_leaves_symbolic_dims_unbound():
    x, y = gn.input("x", (None, 3)), gn.input("y", (5, 4))
    with pytest.raises(gn.ShapeError) as err:
        gn.add(x, y)
    assert "shapes (?, 3) and (5, 4)" in str(err.value)
    assert x.shape == (None, 3)
    labels = gn.input("labels", (None,), dtype="int64")
    logits = gn.input("logits", (None, 3), dtype="int64")
    with pytest.raises(gn.DTypeError):
        gn.softmax_cross_entropy(logits, labels)  # dims unify, then the dtype fails
    assert labels.sym_shape[0].find() is not logits.sym_shape[0].find()
    assert gn.add(x, gn.input("z", (7, 3))).shape == (7, 3)


def test_matmul_inner_dims():
    a, w = gn.input("a", (None, 3)), gn.param("W", shape=(4, 2), seed=0)
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        a @ w
    msg = str(err.value)
    assert msg.startswith("matmul: inner dims differ: (?, 3) @ (4, 2)")
    assert "'a' (?, 3)" in msg and "'W' (4, 2)" in msg and msg.endswith(f"at {call}")


def test_matmul_refuses_scalars_and_names_the_vector_shapes():
    s, w = gn.input("s", ()), gn.input("w", (3, 2))
    with pytest.raises(gn.ShapeError, match=r"matmul takes operands of rank 1 or more, "
                                            r"got \(\) @ \(3, 2\)") as err:
        call = location(1)
        gn.matmul(s, w)
    assert "'s' ()" in str(err.value) and str(err.value).endswith(f"at {call}")
    v = gn.input("v", (2,))  # (3, 2) @ (2,) is fine; (2,) @ (3, 2) is not
    assert (w @ v).shape == (3,)
    with pytest.raises(gn.ShapeError, match=r"inner dims differ: \(2,\) @ \(3, 2\)") as err:
        call = location(1)
        v @ w
    assert "'v' (2,)" in str(err.value) and str(err.value).endswith(f"at {call}")


def test_conv2d_channels():
    images = gn.input("images", (None, 8, 8, 3))
    kernel = gn.param("kernel", shape=(3, 3, 1, 4), seed=0)
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        gn.conv2d(images, kernel, padding="same")
    msg = str(err.value)
    assert msg.startswith("conv2d: input has 3 channels but the kernel expects 1")
    assert "'images' (?, 8, 8, 3)" in msg and "'kernel' (3, 3, 1, 4)" in msg
    assert msg.endswith(f"at {call}")


def test_conv2d_kernel_larger_than_image_and_bad_padding():
    images = gn.input("images", (None, 2, 2, 1))
    with pytest.raises(gn.ShapeError, match="kernel 3x3 is larger than the 2x2 input") as err:
        call = location(1)
        gn.conv2d(images, gn.param("k3", shape=(3, 3, 1, 1), seed=0))
    assert "'images'" in str(err.value) and str(err.value).endswith(f"at {call}")
    with pytest.raises(gn.ShapeError, match="padding must be 'valid' or 'same', got 'full'"):
        gn.conv2d(images, gn.param("k1", shape=(1, 1, 1, 1), seed=0), padding="full")


@pytest.mark.parametrize("pool", [gn.max_pool2d, gn.avg_pool2d])
def test_pool_window_too_big(pool):
    fmap = gn.input("fmap", (None, 3, 5, 2))
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        pool(fmap, size=4)
    msg = str(err.value)
    assert msg.startswith(f"{pool.__name__}: pool window 4x4 is larger than the 3x5 input")
    assert "'fmap' (?, 3, 5, 2)" in msg and msg.endswith(f"at {call}")


def test_pool_needs_images():
    flat = gn.input("flat", (None, 10))
    with pytest.raises(gn.ShapeError, match=r"pooling takes NHWC images of rank 4, got \(\?, 10\)"):
        gn.max_pool2d(flat)


def test_reshape_size():
    x = gn.input("x", (2, 3))
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        gn.reshape(x, (4, 2))
    msg = str(err.value)
    assert msg.startswith("reshape: cannot reshape (2, 3) (6 elements) to (4, 2) (8 elements)")
    assert "'x' (2, 3)" in msg and msg.endswith(f"at {call}")
    with pytest.raises(gn.ShapeError, match=r"cannot reshape \(2, 3\) to \(4, -1\)"):
        gn.reshape(x, (4, -1))


def test_reshape_cannot_drop_a_symbolic_batch():
    x = gn.input("x", (None, 2, 3))
    with pytest.raises(gn.ShapeError, match="reshape must keep the symbolic dims") as err:
        call = location(1)
        gn.reshape(x, (6, 2))
    assert "'x' (?, 2, 3)" in str(err.value) and str(err.value).endswith(f"at {call}")


def test_concat_off_axis_mismatch_and_bad_axis():
    a, b = gn.input("a", (2, 3)), gn.input("b", (3, 3))
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        gn.concat([a, b], axis=1)
    msg = str(err.value)
    assert msg.startswith("concat: (3, 3) differs from (2, 3) off the concat axis 1")
    assert "'a' (2, 3)" in msg and "'b' (3, 3)" in msg and msg.endswith(f"at {call}")
    with pytest.raises(gn.ShapeError, match="axis 2 out of range for rank 2"):
        gn.concat([a, b], axis=2)
    with pytest.raises(gn.ShapeError, match="all inputs need rank 2"):
        gn.concat([a, gn.input("c", (3,))], axis=0)


def test_reduction_axis_out_of_range():
    x = gn.input("x", (None, 4))
    with pytest.raises(gn.ShapeError, match="axis 2 is out of range for rank 2") as err:
        call = location(1)
        gn.sum(x, axis=2)
    assert "'x' (?, 4)" in str(err.value) and str(err.value).endswith(f"at {call}")


def test_loss_shapes():
    logits, labels = gn.input("logits", (None, 10)), gn.input("labels", (None, 1), "int64")
    with pytest.raises(gn.ShapeError, match=r"integer labels must be \(batch,\)") as err:
        call = location(1)
        gn.softmax_cross_entropy(logits, labels)
    assert "'labels' (?, 1)" in str(err.value) and str(err.value).endswith(f"at {call}")
    with pytest.raises(gn.ShapeError, match=r"shapes \(\?, 10\) and \(3,\) do not broadcast"):
        gn.mse(logits, gn.input("target", (3,)))


def test_shape_error_in_eager_mode_names_the_arrays_and_line():
    with pytest.raises(gn.ShapeError) as err:
        call = location(1)
        gn.matmul(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    msg = str(err.value)
    assert "inner dims differ: (2, 3) @ (2, 3)" in msg and "array(2, 3) float32" in msg
    assert msg.endswith(f"at {call}")


# ---------------------------------------------------------------------------------------
# Dtype errors at declaration
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [gn.exp, gn.log, gn.sqrt, gn.sigmoid, gn.tanh, gn.relu,
                                gn.softplus, gn.softmax])
def test_int_input_into_float_only_op(op):
    counts = gn.input("counts", (None, 3), dtype="int64")
    with pytest.raises(gn.DTypeError) as err:
        call = location(1)
        op(counts)
    msg = str(err.value)
    assert "needs float inputs, got int64" in msg and "gn.cast(x, 'float32')" in msg
    assert f"'counts' (?, 3)" in msg and msg.endswith(f"at {call}")


def test_integer_division():
    a, b = gn.input("a", (3,), dtype="int64"), gn.input("b", (3,), dtype="int32")
    with pytest.raises(gn.DTypeError) as err:
        call = location(1)
        a / b
    msg = str(err.value)
    assert msg.startswith("div: dividing integers would silently truncate")
    assert "'a' (3,)" in msg and "'b' (3,)" in msg and msg.endswith(f"at {call}")
    # a float on either side is fine and gives float32
    assert (a / 2.0).dtype == np.float32 and (gn.cast(a, "float32") / b).dtype == np.float32


def test_non_numeric_array_in_a_graph():
    x = gn.input("x", (2,))
    with pytest.raises(gn.DTypeError) as err:
        call = location(1)
        x + np.array(["a", "b"])
    msg = str(err.value)
    assert msg.startswith("add: argument array(2,) <U1 has dtype <U1")
    assert msg.endswith(f"(at {call})")


def test_unknown_dtype_for_an_input():
    with pytest.raises(gn.DTypeError) as err:
        call = location(1)
        gn.input("x", (3,), dtype="complex64")
    msg = str(err.value)
    assert msg.startswith("input 'x': dtype complex64 is not supported")
    assert msg.endswith(f"(at {call})")


# ---------------------------------------------------------------------------------------
# Declarations and graphs
# ---------------------------------------------------------------------------------------

def test_unknown_init_name():
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.param("W", shape=(2, 2), init="glorot_uniformm")
    msg = str(err.value)
    assert msg.startswith("unknown init 'glorot_uniformm'; choose one of")
    assert "'glorot_uniform'" in msg and msg.endswith(f"(at {call})")


def test_param_without_value_or_shape():
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.param("W")
    assert str(err.value) == f"param 'W' needs a value or a shape (at {call})"


def test_duplicate_input_names_in_one_graph():
    first = location(1)
    x_train = gn.input("x", (None, 2))
    second = location(1)
    x_test = gn.input("x", (None, 2))
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.Graph([x_train + x_test])
    assert str(err.value) == (f"two different inputs are named 'x': one made at {first}, "
                              f"one at {second} (at {call})")
    with pytest.raises(gn.GraphError, match="two different inputs are named 'x'"):
        gn.compile(gn.sum(x_train) + gn.sum(x_test), backend="numpy")


def test_duplicate_parameter_names_in_one_graph():
    first = location(1)
    w1 = gn.param("W", shape=(2, 2), seed=0)
    second = location(1)
    w2 = gn.param("W", shape=(2, 2), seed=1)
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.Graph([w1 @ w2])
    assert str(err.value) == (f"two different parameters are named 'W': one made at {first}, "
                              f"one at {second} (at {call})")


def test_updates_to_a_non_parameter():
    made = location(1)
    x = gn.input("x", (3,))
    w = gn.param("w", np.ones(3, np.float32))
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.compile(gn.sum(x * w), updates={x: x * 2}, backend="numpy")
    assert str(err.value) == (f"updates: 'x' (3,) (made at {made}) is not a parameter or "
                              f"variable; only those can be updated (at {call})")
    with pytest.raises(gn.GraphError, match=r"updates: mul \(3,\) .* is not a parameter"):
        gn.compile(gn.sum(x * w), updates={w * 2: w}, backend="numpy")


def test_updates_with_a_wrong_shape_or_a_non_node():
    w = gn.param("w", np.ones(3, np.float32))
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.compile(gn.sum(w), updates={w: gn.sum(w)}, backend="numpy")
    assert str(err.value) == (f"updates: new value sum () (made at {call}) does not have the "
                              f"shape (3,) of 'w' (at {call})")
    with pytest.raises(gn.GraphError, match="the new value of 'w' must be a graph node"):
        gn.compile(gn.sum(w), updates={w: np.zeros(3)}, backend="numpy")


def test_graph_with_no_outputs():
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.Graph([])
    assert str(err.value) == f"a graph needs at least one output (at {call})"
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.compile([], backend="numpy")
    assert str(err.value) == f"compile: nothing to compute: no outputs and no updates (at {call})"


def test_outputs_that_are_not_nodes():
    with pytest.raises(gn.GraphError) as err:
        call = location(1)
        gn.Graph([gn.input("x", (2,)), np.ones(2)])
    assert str(err.value) == f"outputs[1] is ndarray, not a graph node (at {call})"


def test_unknown_backend():
    x = gn.input("x", (2,))
    with pytest.raises(gn.BackendError) as err:
        call = location(1)
        gn.compile(x * 2, backend="tpu")
    assert str(err.value).startswith("unknown backend 'tpu'")
    assert str(err.value).endswith(f"(at {call})")


# ---------------------------------------------------------------------------------------
# Feeds, checked when the compiled function is called
# ---------------------------------------------------------------------------------------

@pytest.fixture
def classifier():
    """x (?, 3) float32 and y (?,) int64 sharing a batch dim: (fn, {name: where declared})."""
    made = {"x": location(1)}
    x = gn.input("x", (None, 3))
    made["y"] = location(1)
    y = gn.input("y", (None,), dtype="int64")
    w = gn.param("w", np.ones((3, 2), np.float32))
    return gn.compile(gn.softmax_cross_entropy(x @ w, y), backend="numpy"), made


def test_good_feeds_run(classifier):
    f, _ = classifier
    loss = f(x=np.zeros((4, 3)), y=np.array([0, 1, 1, 0]))
    assert loss.dtype == np.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


def test_missing_feed(classifier):
    f, made = classifier
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(x=np.zeros((4, 3), np.float32))
    assert str(err.value) == (f"missing feed 'y' (?,) int64 (declared at {made['y']}) "
                              f"(call at {call})")


def test_missing_feed_names_a_feed_of_another_graphs_input_given_instead(classifier):
    # 'labels' is an input of another graph, so feeding it here is no error by itself; with
    # 'y' missing it may be the typo, and the message names it too
    f, made = classifier
    other = gn.input("labels", (None,), dtype="int64")  # (kept: a dropped input is forgotten)
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(x=np.zeros((4, 3), np.float32), labels=np.array([0, 1, 1, 0]))
    assert str(err.value) == (f"missing feed 'y' (?,) int64 (declared at {made['y']}); "
                              f"fed also 'labels', which this function does not take "
                              f"(call at {call})")
    del other


def test_unknown_feed_name(classifier):
    f, _ = classifier
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(x=np.zeros((4, 3)), y=np.zeros(4, int), no_input_has_this_name=np.zeros(4))
    assert str(err.value) == (f"unknown feed 'no_input_has_this_name': no input has that name; "
                              f"this function takes x, y (call at {call})")


DECLARED = {"x": "(?, 3) float32", "y": "(?,) int64"}
BAD_FEEDS = {
    "wrong_rank": ("x", np.zeros(3), np.zeros(4, int),
                   "has shape (3,) of rank 1, expected rank 2"),
    "wrong_concrete_dim": ("x", np.zeros((4, 5)), np.zeros(4, int),
                           "has shape (4, 5): axis 1 is 5, expected 3"),
    "inconsistent_batch": ("y", np.zeros((32, 3)), np.zeros(31, int),
                           "has shape (31,): axis 0 is 31, expected 32 (bound by 'x' axis 0)"),
    "strings": ("x", np.array([["a", "b", "c"]]), np.zeros(1, int),
                "has dtype <U1; feeds must be real numbers"),
    "objects": ("x", np.array([[object(), 1.0, 2.0]], dtype=object), np.zeros(1, int),
                "has dtype object; feeds must be real numbers"),
    "complex": ("x", np.array([[1j, 2.0, 3.0]]), np.zeros(1, int),
                "has dtype complex128; feeds must be real numbers"),
    "float_into_int": ("y", np.zeros((2, 3)), np.array([0.0, 1.0]),
                       "has float dtype float64; this input holds integers (labels): "
                       "convert with .astype(int)"),
}


@pytest.mark.parametrize("case", list(BAD_FEEDS))
def test_bad_feed_names_the_input_its_declaration_and_the_call(classifier, case):
    f, made = classifier
    name, x, y, problem = BAD_FEEDS[case]
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(x=x, y=y)
    assert str(err.value) == (f"feed '{name}' (declared at {made[name]} as {DECLARED[name]}): "
                              f"{problem} (call at {call})")


def test_inconsistent_named_dims_without_an_op_combining_them():
    made = location(1)
    a, b = gn.input("a", ("n_feed_test", 2)), gn.input("b", ("n_feed_test",))
    f = gn.compile([gn.sum(a), gn.sum(b)], backend="numpy")
    np.testing.assert_allclose(f(a=np.ones((3, 2)), b=np.ones(3)), [6.0, 3.0])
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(a=np.ones((3, 2)), b=np.ones(4))
    assert str(err.value) == (f"feed 'b' (declared at {made} as (?n_feed_test,) float32): "
                              "has shape (4,): axis 0 is 4, expected 3 (bound by 'a' axis 0) "
                              f"(call at {call})")


def test_independent_none_dims_may_differ():
    a, b = gn.input("a", (None, 2)), gn.input("b", (None,))
    f = gn.compile([gn.sum(a), gn.sum(b)], backend="numpy")
    np.testing.assert_allclose(f(a=np.ones((3, 2)), b=np.ones(5)), [6.0, 5.0])


def test_ragged_feed():
    made = location(1)
    x = gn.input("x", (None, 2))
    f = gn.compile(x * 2, backend="numpy")
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(x=[[1.0, 2.0], [3.0]])
    msg = str(err.value)
    assert msg.startswith(f"feed 'x' (declared at {made} as (?, 2) float32): cannot be turned "
                          "into an array")
    assert msg.endswith(f"(call at {call})")


# ---------------------------------------------------------------------------------------
# The feed dtype policy (see graphnn/feeds.py)
# ---------------------------------------------------------------------------------------

def test_float64_int_and_bool_data_into_a_float32_input_are_cast():
    x = gn.input("x", (None, 2))
    f = gn.compile(x * 1, backend="numpy")
    for data in (np.array([[0.1, 0.2]], np.float64), np.array([[1, 2]], np.int64),
                 np.array([[True, False]]), [[0.1, 0.2]]):
        out = f(x=data)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, np.asarray(data, dtype=np.float32))


def test_int32_and_bool_labels_into_an_int64_input_are_cast():
    y = gn.input("y", (None,), dtype="int64")
    f = gn.compile(y * 2, backend="numpy")
    assert f(y=np.array([1, 2], np.int32)).dtype == np.int64
    np.testing.assert_array_equal(f(y=np.array([True, False])), [2, 0])


def test_non_contiguous_and_read_only_feeds_work():
    x = gn.input("x", (None, 2))
    f = gn.compile(gn.matmul(x, gn.const(np.array([[1.0], [10.0]], np.float32))), backend="numpy")
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    strided = data[:, ::2]  # columns 0 and 2: not contiguous
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(f(x=strided), [[20.0], [64.0], [108.0]])
    fortran = np.asfortranarray(data[:, :2])
    np.testing.assert_array_equal(f(x=fortran), [[10.0], [54.0], [98.0]])
    frozen = np.array([[1.0, 2.0]], np.float32)
    frozen.setflags(write=False)
    np.testing.assert_array_equal(f(x=frozen), [[21.0]])
    assert f(x=frozen) is not frozen


def test_feed_is_not_modified_by_the_call():
    x = gn.input("x", (2,))
    data = np.array([1.0, 2.0], np.float32)
    gn.compile(gn.exp(x), backend="numpy")(x=data)
    np.testing.assert_array_equal(data, [1.0, 2.0])


def test_feed_of_an_input_the_function_does_not_need_is_ignored():
    x, extra = gn.input("x", (2,)), gn.input("extra", (2,))
    f = gn.compile(x * 2, backend="numpy")
    np.testing.assert_array_equal(f(x=np.ones(2), extra=np.ones(2)), [2.0, 2.0])
    assert extra.op == "input"


def test_check_finite_names_the_node():
    x = gn.input("x", (2,))
    made = location(1)
    y = gn.log(x, name="log_x")
    f = gn.compile(y, check_finite=True, backend="numpy")
    with pytest.raises(gn.NumericalError) as err:
        call = location(1)
        f(x=np.array([1.0, 0.0]))
    assert str(err.value) == (f"'log_x' (2,) (made at {made}) produced NaN or Inf "
                              f"(check_finite=True; call at {call})")
    with pytest.raises(gn.FeedError, match=r"feed 'x' .*holds nan at index \(1,\)"):
        f(x=np.array([1.0, np.nan]))


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda"])
def test_labels_outside_the_classes_are_refused_on_every_backend(backend):
    x = gn.input("x", (None, 3))
    y = gn.input("y", (None,), dtype="int64")
    step = gn.compile(gn.softmax_cross_entropy(x, y), backend=backend)
    X = np.zeros((2, 3), np.float32)
    for _ in range(3):  # the cpu back end takes its lean path from the second call on
        assert float(step(x=X, y=np.array([0, 2]))) == pytest.approx(np.log(3), rel=1e-6)
    for bad, shown in (([0, 3], "from 0 to 3"), ([-1, 1], "from -1 to 1")):
        with pytest.raises(gn.FeedError, match=r"feed 'y' .*holds labels " + shown +
                           r"; softmax_cross_entropy.* needs labels in \[0, 3\) "
                           r"\(call at .*test_errors.py:\d+\)"):
            step(x=X, y=np.array(bad))


# ---------------------------------------------------------------------------------------
# Shape rules at their edges
# ---------------------------------------------------------------------------------------

def test_max_over_an_empty_axis_is_refused():
    empty = gn.const(np.zeros((0, 3), np.float32))
    with pytest.raises(gn.ShapeError, match="max: max over an empty axis has no value"):
        gn.max(empty, axis=0)
    assert gn.max(empty, axis=1).shape == (0,)  # the empty axis is not reduced


def test_reshape_takes_at_most_one_minus_one():
    x = gn.input("x", (4, 6))
    with pytest.raises(gn.ShapeError, match=r"at most one -1 in shape \(-1, -1\)"):
        gn.reshape(x, (-1, -1))
    assert gn.reshape(x, (-1, 3)).shape == (8, 3)


def test_sizes_up_to_two_to_the_31_minus_one():
    from graphnn.ops import pad_axis  # (an op of graphnn.ops, not exported as gn.*)
    x = gn.input("x", (3,))
    assert pad_axis(x, 0, 0, 2**31 - 4).shape == (2**31 - 1,)
    with pytest.raises(gn.ShapeError, match="padding axis 0 of size 3 by 0 and 2147483645 is "
                                            "too large"):
        pad_axis(x, 0, 0, 2**31 - 3)
    y = gn.input("y", (2,), dtype="int64")
    assert gn.one_hot(y, 2**31 - 1).shape == (2, 2**31 - 1)
    with pytest.raises(gn.ShapeError, match="classes must be <= 2147483647, got 2147483648"):
        gn.one_hot(y, 2**31)


@pytest.mark.parametrize("kernel_shape", [(None, 3, 1, 2), (3, None, 1, 2), (0, 3, 1, 2)])
def test_conv2d_kernel_height_and_width_are_static_and_positive(kernel_shape):
    x = gn.input("x", (None, 8, 8, 1))
    k = gn.input("k", kernel_shape) if None in kernel_shape else \
        gn.const(np.zeros(kernel_shape, np.float32))
    with pytest.raises(gn.ShapeError, match="kernel height and width must be static and >= 1"):
        gn.conv2d(x, k)


def test_probability_labels_must_have_the_logits_shape():
    logits = gn.input("logits", (None, 3))
    for shape, shown in (((None, 5), r"\(\?, 5\)"), ((4,), r"\(4,\)")):
        with pytest.raises(gn.ShapeError, match=r"probability labels must have the logits' "
                                                r"shape \(\?, 3\), got " + shown):
            gn.softmax_cross_entropy(logits, gn.input("p", shape))
    assert gn.softmax_cross_entropy(logits, gn.input("q", (None, 3))).shape == ()
