"""Dropout with counter-based random numbers (identical masks on cpu and cuda).

Element i of a call with a 64-bit ``seed`` is kept when the top 24 bits of
splitmix64(seed + (i + 1) * golden) are >= round(p * 2^24), so it is kept with
probability 1 - p (exact to 2^-24). No random state lives on the device: the same
(seed, i) gives the same bit on every backend, thread layout and run.

    y  = x * m,    m = keep / (1 - p)   (m = 0 everywhere when p == 1, like PyTorch)
    gx = gy * m
The forward returns the uint8 keep mask; the backward takes it back.
"""
import numpy as np

from nbdl.kernels._checks import check_array, check_finite, check_float, check_int, check_same_shape

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
RANDOM_BITS = 24


def random_bits(seed, i):
    """24 uniform random bits for element i: splitmix64's output mix of seed + (i+1)*golden.

    seed: uint64, i: integer index. Compiled by both backends (njit and cuda.jit);
    all arithmetic is uint64 and wraps modulo 2^64.
    """
    z = seed + (np.uint64(i) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return z >> _S40


def check_p(op, p):
    """A drop probability in [0, 1] (PyTorch's range)."""
    return check_finite(op, "p", p, minimum=0.0, maximum=1.0)


def check_seed(op, seed):
    """Any int; used modulo 2^64."""
    return np.uint64(check_int(op, "seed", seed) % 2**64)


def threshold_and_scale(p):
    """(keep threshold on the 24 random bits, scale of kept elements)."""
    threshold = int(round(p * 2**RANDOM_BITS))
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    return threshold, scale


def check_forward(op, x, p, seed):
    check_array(op, "x", x, dtype="float")
    p = check_p(op, p)
    return (p, check_seed(op, seed)) + threshold_and_scale(p)


def check_backward(op, gy, mask, p):
    check_array(op, "gy", gy, dtype="float")
    check_array(op, "mask", mask, dtype=np.uint8)
    check_same_shape(op, gy=gy, mask=mask)
    check_float(op, gy=gy)
    return threshold_and_scale(check_p(op, p))[1]
