"""Counter-based random numbers: Philox-4x32-10 (Salmon et al., "Parallel random numbers:
as easy as 1, 2, 3", SC 2011), the generator of Random123, cuRAND, JAX and PyTorch's CUDA
dropout.

A counter-based generator is a keyed hash: the bits for element `index` of the draw made at
step `counter` with key `seed` are a pure function of those three integers. So every back
end computes the same bits for the same element, in any order, with no generator state to
carry between threads, kernels or calls; a step counter that the training step increments
gives a new draw at every step without recompiling.

`random_bits` is written once, with nothing but uint64 arithmetic (32x32->64-bit products,
shifts, masks and xors: never a product or sum that wraps), so the same source runs:

- in NumPy on uint64 arrays (the reference, `uniform`), with `uint64 = np.uint64`;
- in the CPU back end's generated module (kernels/cpu.py copies it, with `uint64` as
  `np.uint64`) inside the fused elementwise loops;
- in the cuda back end's generated module (kernels/cuda.py copies it as a device function,
  with `uint64` as `numba.uint64`).

Elementwise templates call it as `random_bits(seed, counter, index, bits)`: the top `bits`
(at most 53) of the 64 bits Philox makes for (counter, index) under `seed`; as a float,
times 2**-bits, that is a uniform number in [0, 1) that float32 (bits=24) or float64
(bits=53) holds exactly.
"""
import numpy as np

uint64 = np.uint64  # the generated modules bind their own (see the module docstring)

# Philox-4x32's multipliers and Weyl key increments (Random123, philox.h)
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10


def random_bits(seed, counter, index, bits):
    low = uint64(0xFFFFFFFF)
    half = uint64(32)
    k0 = uint64(seed) & low
    k1 = uint64(seed) >> half
    # the Philox counter block (c0, c1, c2, c3) is (index, counter), 64 bits each
    c0 = uint64(index) & low
    c1 = uint64(index) >> half
    c2 = uint64(counter) & low
    c3 = uint64(counter) >> half
    for _ in range(10):
        p0 = uint64(0xD2511F53) * c0
        p1 = uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> half) ^ c1 ^ k0, p1 & low, (p0 >> half) ^ c3 ^ k1, p0 & low
        k0 = (k0 + uint64(0x9E3779B9)) & low
        k1 = (k1 + uint64(0xBB67AE85)) & low
    return ((c0 << half) | c1) >> (uint64(64) - uint64(bits))


def philox4x32(counter_words, key_words, rounds=ROUNDS):
    """Philox-4x32 of one counter block (4 words) under a key (2 words), as Random123
    defines it: the reference `random_bits` is tested against (Random123's known answers).

        >>> [hex(w) for w in philox4x32((0, 0, 0, 0), (0, 0))]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c = [int(w) & 0xFFFFFFFF for w in counter_words]
    k0, k1 = (int(w) & 0xFFFFFFFF for w in key_words)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & 0xFFFFFFFF, (k1 + PHILOX_W1) & 0xFFFFFFFF
        p0, p1 = PHILOX_M0 * c[0], PHILOX_M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
    return c


def uniform_bits(dtype):
    """How many random bits make one uniform number of `dtype` (its significand's)."""
    return 24 if np.dtype(dtype) == np.float32 else 53


def uniform(seed, counter, shape, dtype):
    """The uniform numbers in [0, 1) of `shape` that the compiled back ends draw for
    (`seed`, `counter`): element i (row-major) is random_bits(seed, counter, i) * 2**-bits."""
    dtype = np.dtype(dtype)
    bits = uniform_bits(dtype)
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    with np.errstate(over="raise"):  # (no step wraps: a wrap would be a bug here)
        drawn = random_bits(seed, np.uint64(counter), index, bits)
    scale = dtype.type(2.0 ** -bits)
    return (drawn.astype(dtype) * scale).reshape(shape)
