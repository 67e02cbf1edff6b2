"""`gn.data`: shapes, dtypes, reproducibility and the train/test split."""
import numpy as np
import pytest

import graphnn as gn


def test_digits_split_is_reproducible_and_stratified():
    (X_train, y_train), (X_test, y_test) = gn.data.digits()
    assert X_train.shape == (1438, 64) and X_test.shape == (359, 64)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # about 20 % of every class
    (X_again, y_again), _ = gn.data.digits()
    np.testing.assert_array_equal(X_train, X_again)
    np.testing.assert_array_equal(y_train, y_again)
    (_, y_other), _ = gn.data.digits(seed=1)
    assert not np.array_equal(y_train, y_other)


def test_digits_as_images_and_no_overlap_between_train_and_test():
    (X_train, _), (X_test, _) = gn.data.digits(images=True)
    assert X_train.shape[1:] == (8, 8, 1)
    train_rows = {row.tobytes() for row in X_train.reshape(len(X_train), -1)}
    test_rows = [row.tobytes() for row in X_test.reshape(len(X_test), -1)]
    assert sum(row in train_rows for row in test_rows) <= 2  # the set has a few duplicates


def test_train_test_split_keeps_pairs_together():
    X = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50) % 5
    (X_train, y_train), (X_test, y_test) = gn.data.train_test_split(X, y, 0.2, seed=3)
    assert len(X_test) == 10 and len(X_train) == 40
    np.testing.assert_array_equal(X_train[:, 0] % 5, y_train)
    np.testing.assert_array_equal(np.sort(np.concatenate([X_train, X_test])[:, 0]), X[:, 0])
    assert np.bincount(y_test).tolist() == [2] * 5
    with pytest.raises(ValueError, match="test_fraction"):
        gn.data.train_test_split(X, y, 1.5)
    with pytest.raises(ValueError, match="50 samples but 3 labels"):
        gn.data.train_test_split(X, y[:3])


def test_xor():
    X, y = gn.data.xor()
    assert X.shape == (4, 2) and y.shape == (4, 1)
    np.testing.assert_array_equal(y.ravel(), np.logical_xor(X[:, 0], X[:, 1]))


@pytest.mark.parametrize("make", [lambda s: gn.data.moons(100, seed=s),
                                  lambda s: gn.data.spirals(50, classes=2, seed=s)])
def test_moons_and_spirals(make):
    X, y = make(0)
    assert X.shape == (100, 2) and X.dtype == np.float32
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [50, 50]
    np.testing.assert_array_equal(X, make(0)[0])
    assert not np.array_equal(X, make(1)[0])


def test_spirals_three_classes():
    X, y = gn.data.spirals(20, classes=3)
    assert X.shape == (60, 2) and sorted(set(y.tolist())) == [0, 1, 2]


def test_apples_oranges_is_tiny_and_linearly_separable():
    X, y = gn.data.apples_oranges()
    assert X.shape == (20, 2) and y.dtype == np.float32 and y.sum() == 10
    roughness = X[:, 1]
    assert roughness[y == 0].max() < roughness[y == 1].min()  # a line separates them
