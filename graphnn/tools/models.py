"""Small models the tools train: an MLP classifier built from raw graphnn ops."""
import numpy as np

import graphnn as gn


def mlp_classifier(sizes, activation=gn.relu, seed=0):
    """An MLP over `sizes` (e.g. (784, 512, 256, 10)) with softmax cross-entropy.

    Returns (loss, logits, params); its inputs are x (batch, sizes[0]) float32 and y
    (batch,) int64 labels. Hidden layers use `activation`; weights are seeded per layer."""
    x = gn.input("x", (None, sizes[0]))
    y = gn.input("y", (None,), dtype="int64")
    h, params = x, []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = gn.param(f"W{k}", shape=(fan_in, fan_out), seed=seed + k)
        b = gn.param(f"b{k}", np.zeros(fan_out, np.float32))
        h = h @ W + b
        h = activation(h) if k < len(sizes) - 2 else h
        params += [W, b]
    return gn.softmax_cross_entropy(h, y), h, params
