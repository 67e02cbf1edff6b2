"""Small data sets that need no download (`gn.data`), and a reproducible train/test split.

Every function is seeded: the same arguments give the same arrays on every run. Features
are float32; class labels are int64 (for softmax_cross_entropy) unless said otherwise.

    (X_train, y_train), (X_test, y_test) = gn.data.digits()
"""
import os

import numpy as np


def train_test_split(X, y, test_fraction=0.2, seed=0, stratify=True):
    """Split into ((X_train, y_train), (X_test, y_test)), shuffled with `seed`.

    With `stratify=True` (and integer labels) every class keeps its share in both parts.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"train_test_split: {len(X)} samples but {len(y)} labels")
    if not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1), "
                         f"got {test_fraction}")
    rng = np.random.default_rng(seed)
    if stratify and y.ndim == 1 and y.dtype.kind in "iu":
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    else:
        groups = [np.arange(len(y))]
    test = []
    for members in groups:
        members = rng.permutation(members)
        test.append(members[:int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    train, test = rng.permutation(train), rng.permutation(test)
    return (X[train], y[train]), (X[test], y[test])


def digits(images=False, test_fraction=0.2, seed=0):
    """The 8x8 handwritten digits shipped with graphnn (1797 images, classes 0-9; UCI's
    Optical Recognition of Handwritten Digits, CC BY 4.0, see graphnn/datasets/README.md).

    Pixels scaled to [0, 1]. `images=False`: X of shape (n, 64); `images=True`: NHWC images
    (n, 8, 8, 1) for convolutions. Returns ((X_train, y_train), (X_test, y_test)), split
    per class with `seed` (default 80 % / 20 %: 1438 / 359).
    """
    with np.load(os.path.join(os.path.dirname(__file__), "datasets", "digits.npz")) as data:
        X = (data["pixels"] / np.float32(16)).astype(np.float32)
        y = data["labels"].astype(np.int64)
    if images:
        X = X.reshape(-1, 8, 8, 1)
    return train_test_split(X, y, test_fraction, seed)


def xor():
    """The four XOR points: X (4, 2) and targets y (4, 1) in float32 (for sigmoid + bce/mse)."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    return X, np.array([[0], [1], [1], [0]], np.float32)


def moons(n=200, noise=0.1, seed=0):
    """Two interleaving half circles: X (n, 2) float32, y (n,) int64 in {0, 1}."""
    rng = np.random.default_rng(seed)
    upper = n // 2
    t_up, t_down = np.pi * rng.random(upper), np.pi * rng.random(n - upper)
    X = np.concatenate([np.stack([np.cos(t_up), np.sin(t_up)], 1),
                        np.stack([1 - np.cos(t_down), 0.5 - np.sin(t_down)], 1)])
    y = np.concatenate([np.zeros(upper), np.ones(n - upper)]).astype(np.int64)
    X = X + noise * rng.standard_normal(X.shape)
    order = rng.permutation(n)
    return X[order].astype(np.float32), y[order]


def spirals(n_per_class=100, classes=2, noise=0.2, turns=1.0, seed=0):
    """Interleaved spiral arms, one per class: X (classes*n_per_class, 2), y int64."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(classes):
        r = np.linspace(0.1, 1.0, n_per_class)
        angle = (2 * np.pi * turns * r + 2 * np.pi * c / classes
                 + noise * rng.standard_normal(n_per_class))
        X.append(np.stack([r * np.cos(angle), r * np.sin(angle)], 1))
        y.append(np.full(n_per_class, c))
    X, y = np.concatenate(X), np.concatenate(y).astype(np.int64)
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


FRUIT_FEATURES = ("weight (100 g)", "skin roughness (0 smooth .. 1 rough)")


def apples_oranges(n_per_class=10, seed=0):
    """A tiny, linearly separable fruit set for the perceptron.

    X (2*n_per_class, 2) float32 with columns FRUIT_FEATURES; y float32, 0 = apple,
    1 = orange. Apples are lighter and smooth-skinned, oranges heavier and rough.
    """
    rng = np.random.default_rng(seed)
    apples = np.stack([rng.uniform(1.2, 1.9, n_per_class), rng.uniform(0.05, 0.4, n_per_class)], 1)
    oranges = np.stack([rng.uniform(1.6, 2.4, n_per_class), rng.uniform(0.6, 0.95, n_per_class)],
                       1)
    X = np.concatenate([apples, oranges]).astype(np.float32)
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)]).astype(np.float32)
    order = rng.permutation(len(y))
    return X[order], y[order]
