"""CPU dropout: one parallel pass; the random bits come from (seed, index) alone."""
import numpy as np
from numba import njit, prange

from nbdl.kernels.dropout import check_backward, check_forward, random_bits

_JIT = dict(cache=True, parallel=True, error_model="numpy")
_random_bits = njit(inline="always")(random_bits)


@njit(**_JIT)
def _dropout_fwd(x, seed, threshold, scale, y, mask):
    s = x.dtype.type(scale)
    zero = x.dtype.type(0)
    t = np.uint64(threshold)
    for i in prange(x.size):
        keep = _random_bits(seed, i) >= t
        mask[i] = keep
        y[i] = x[i] * (s if keep else zero)   # a product, so inf/NaN in a dropped slot give NaN like PyTorch


@njit(**_JIT)
def _dropout_bwd(gy, mask, scale, gx):
    s = gy.dtype.type(scale)
    zero = gy.dtype.type(0)
    for i in prange(gy.size):
        gx[i] = gy[i] * (s if mask[i] else zero)


def dropout_forward(x, p, seed):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    x: float array of any shape; seed: int (the same seed gives the same mask on
    every backend). Returns (y, mask): y like x, mask uint8 (1 = kept) of x's shape.
    """
    _, seed, threshold, scale = check_forward("dropout_forward", x, p, seed)
    y = np.empty_like(x)
    mask = np.empty(x.shape, np.uint8)
    if x.size:
        _dropout_fwd(x.reshape(-1), seed, threshold, scale, y.reshape(-1), mask.reshape(-1))
    return y, mask


def dropout_backward(gy, mask, p):
    """gx = gy * mask / (1 - p) (0 when p == 1)."""
    scale = check_backward("dropout_backward", gy, mask, p)
    gx = np.empty_like(gy)
    if gy.size:
        _dropout_bwd(gy.reshape(-1), mask.reshape(-1), scale, gx.reshape(-1))
    return gx
