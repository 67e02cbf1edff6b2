"""The feed checker's two paths (graphnn/feeds.py).

Every call first tries `FeedChecker.fast_check`: feeds that are exactly right (the right
names, C-contiguous arrays of the declared dtype and rank, consistent dims, labels in
range) are passed on as they are, without a copy; anything else goes to the slow path,
which converts or raises a FeedError. These tests feed arrays of the exact declared dtypes,
so they reach the fast path (float64 data into a float32 input never does), and check both
that it takes the right arrays and that it declines every wrong feed.
"""
import numpy as np
import pytest

import graphnn as gn

from tests.helpers import location


def _classifier(backend="numpy"):
    x = gn.input("x", (None, 3))
    y = gn.input("y", (None,), dtype="int64")
    w = gn.param("w_feeds", np.ones((3, 3), np.float32))
    return gn.compile(gn.softmax_cross_entropy(x @ w, y), backend=backend)


def _good():
    return {"x": np.zeros((4, 3), np.float32), "y": np.array([0, 1, 2, 0], np.int64)}


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_exact_feeds_take_the_fast_path_without_a_copy(backend):
    f = _classifier(backend)
    feeds = _good()  # labels include 0 and classes - 1: the ends of the allowed range
    arrays = f.feeds.fast_check(feeds)
    assert arrays is not None
    assert arrays[0] is feeds["x"] and arrays[1] is feeds["y"]
    # every x row is 0: uniform probabilities over 3 classes
    assert float(f(**feeds)) == pytest.approx(np.log(3.0), rel=1e-6)


def test_two_inputs_sharing_a_batch_dim_take_the_fast_path():
    a, b = gn.input("a", ("n_fast", 2)), gn.input("b", ("n_fast",))
    f = gn.compile([gn.sum(a), gn.sum(b)], backend="numpy")
    feeds = {"a": np.ones((3, 2), np.float32), "b": np.full(3, 2.0, np.float32)}
    arrays = f.feeds.fast_check(feeds)
    assert arrays is not None and arrays[0] is feeds["a"] and arrays[1] is feeds["b"]
    np.testing.assert_array_equal(f(**feeds), [6.0, 6.0])


# (feeds changed from _good(), what the FeedError says)
DECLINED = {
    "unknown_extra_name": (
        {"bogus": np.zeros(4, np.float32)},
        "unknown feed 'bogus': no input has that name; this function takes x, y"),
    "parameter_name": (
        {"w_feeds": np.zeros((3, 3), np.float32)},
        "is a parameter, not an input; assign its .value to change it"),
    "inconsistent_batch": (
        {"y": np.array([0, 1, 2], np.int64)},
        "feed 'y' (declared at"),
    "empty_batch": (
        {"x": np.zeros((0, 3), np.float32), "y": np.zeros(0, np.int64)},
        "axis 0 is empty; a batch needs at least one example"),
    "label_too_large": (
        {"y": np.array([0, 1, 3, 0], np.int64)},
        "holds labels from 0 to 3; softmax_cross_entropy"),
    "negative_label": (
        {"y": np.array([0, -1, 2, 0], np.int64)},
        "holds labels from -1 to 2; softmax_cross_entropy"),
}


@pytest.mark.parametrize("case", list(DECLINED))
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_the_fast_path_declines_wrong_feeds_and_the_slow_path_explains(backend, case):
    f = _classifier(backend)
    changes, message = DECLINED[case]
    feeds = dict(_good(), **changes)
    assert f.feeds.fast_check(feeds) is None
    with pytest.raises(gn.FeedError) as err:
        call = location(1)
        f(**feeds)
    assert message in str(err.value)
    assert str(err.value).endswith(f"(call at {call})")
    assert float(f(**_good())) == pytest.approx(np.log(3.0), rel=1e-6)  # still usable


def test_inconsistent_batch_message():
    f = _classifier()
    with pytest.raises(gn.FeedError, match=r"feed 'y' .*: has shape \(3,\): axis 0 is 3, "
                                           r"expected 4 \(bound by 'x' axis 0\)"):
        f(x=np.zeros((4, 3), np.float32), y=np.array([0, 1, 2], np.int64))


@pytest.mark.parametrize("order", ["three_first", "five_first"])
def test_labels_read_by_two_losses_are_bounded_by_the_smaller_class_count(order):
    x3, x5 = gn.input("x3", (None, 3)), gn.input("x5", (None, 5))
    y = gn.input("y", (None,), dtype="int64")
    loss3 = gn.softmax_cross_entropy(x3, y, name="loss3")
    loss5 = gn.softmax_cross_entropy(x5, y, name="loss5")
    outputs = [loss3, loss5] if order == "three_first" else [loss5, loss3]
    f = gn.compile(outputs, backend="numpy")
    X3, X5 = np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32)
    got = f(x3=X3, x5=X5, y=np.array([2, 0], np.int64))
    expected = [np.log(3.0), np.log(5.0)] if order == "three_first" else \
        [np.log(5.0), np.log(3.0)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # label 4 is a class of loss5 but not of loss3: refused, naming loss3
    with pytest.raises(gn.FeedError, match=r"holds labels from 0 to 4; .*loss3.* needs "
                                           r"labels in \[0, 3\)"):
        f(x3=X3, x5=X5, y=np.array([4, 0], np.int64))


def test_wide_integers_into_a_narrow_input_are_checked_before_narrowing():
    n = gn.input("n", (None,), dtype="int32")
    f = gn.compile(n * 1, backend="numpy")
    # int64 cannot always be cast to int32, so the values are checked: these fit
    fits = np.array([-2**31, -7, 5, 2**31 - 1], np.int64)
    got = f(n=fits)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [-2**31, -7, 5, 2**31 - 1])
    for bad, shown in ((np.array([0, 2**31], np.int64), "from 0 to 2147483648"),
                       (np.array([-2**31 - 1, 0], np.int64), "from -2147483649 to 0")):
        with pytest.raises(gn.FeedError, match=r"feed 'n' .*holds values " + shown +
                           r", outside the range of int32 \[-2147483648, 2147483647\]"):
            f(n=bad)
