"""Parameter initialisers: zeros, ones, normal, uniform, glorot_uniform, he_normal.

Each takes (shape, dtype, rng) and returns an array; every one is seeded through `rng`, so
`gn.param(..., seed=0)` gives the same values on every run and machine.
"""
import math

import numpy as np

from .errors import GraphError, OptionError


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(shape, dtype, rng):
    return np.zeros(shape, dtype)


def ones(shape, dtype, rng):
    return np.ones(shape, dtype)


def normal(shape, dtype, rng, std=0.05):
    return (rng.standard_normal(shape) * std).astype(dtype)


def uniform(shape, dtype, rng, limit=0.05):
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_uniform(shape, dtype, rng):
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def he_normal(shape, dtype, rng):
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


INITIALIZERS = {f.__name__: f for f in (zeros, ones, normal, uniform, glorot_uniform, he_normal)}


def initialize(init, shape, dtype, seed, where, owner="initialize"):
    """Resolve `init` (a name, a (name, kwargs) pair, or a callable) and make the array."""
    if seed is not None and (not isinstance(seed, (int, np.integer)) or
                             isinstance(seed, (bool, np.bool_)) or seed < 0):
        raise OptionError(f"{owner}: seed must be None or an int >= 0, got {seed!r:.60} "
                          f"(at {where})")
    rng = np.random.default_rng(seed)
    kwargs = {}
    if isinstance(init, tuple):
        init, kwargs = init
    if callable(init):
        fn = init
    elif init in INITIALIZERS:
        fn = INITIALIZERS[init]
    else:
        raise GraphError(f"unknown init {init!r}; choose one of {sorted(INITIALIZERS)} "
                         f"(at {where})")
    return np.array(fn(tuple(shape), np.dtype(dtype), rng, **kwargs), dtype=dtype, order="C")
