"""CUDA dropout: one thread per element; bits from (seed, index), as on the CPU."""
import numpy as np
from numba import config, cuda, float32, float64, int64, uint8, uint64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.dropout import check_backward, check_forward, random_bits


def _random_bits_simulated(seed, i):
    """random_bits for the simulator, which runs it on numpy uint64 scalars: those
    warn on the wrap-around modulo 2^64 that the hash relies on."""
    with np.errstate(over="ignore"):
        return random_bits(seed, i)


_random_bits = cuda.jit(device=True, inline="always")(
    _random_bits_simulated if config.ENABLE_CUDASIM else random_bits)


@cuda.jit(cache=True)
def _dropout_fwd(x, seed, threshold, scale, y, mask):
    i = cuda.grid(1)
    if i < x.size:
        keep = _random_bits(seed, i) >= np.uint64(threshold)
        mask[i] = keep
        y[i] = x[i] * (x.dtype.type(scale) if keep else x.dtype.type(0))


@cuda.jit(cache=True)
def _dropout_bwd(gy, mask, scale, gx):
    i = cuda.grid(1)
    if i < gy.size:
        gx[i] = gy[i] * (gy.dtype.type(scale) if mask[i] else gy.dtype.type(0))


def _flat(a):
    return a.reshape(a.size)


def dropout_forward(x, p, seed):
    """Zero each element with probability p, scale the rest by 1/(1-p).

    x: float array of any shape; seed: int (the same seed gives the same mask on
    every backend). Returns (y, mask): y like x, mask uint8 (1 = kept) of x's shape.
    """
    _, seed, threshold, scale = check_forward("dropout_forward", x, p, seed)
    y = empty(x.shape, x.dtype)
    mask = empty(x.shape, np.uint8)
    if x.size:
        _dropout_fwd[grid1d(x.size)](_flat(x), seed, threshold, scale, _flat(y), _flat(mask))
    return y, mask


def dropout_backward(gy, mask, p):
    """gx = gy * mask / (1 - p) (0 when p == 1)."""
    scale = check_backward("dropout_backward", gy, mask, p)
    gx = empty(gy.shape, gy.dtype)
    if gy.size:
        _dropout_bwd[grid1d(gy.size)](_flat(gy), _flat(mask), scale, _flat(gx))
    return gx


def ptx_signatures():
    """Every kernel with the argument types the launchers pass, float32 and float64."""
    sigs = []
    for f in (float32, float64):
        v = f[::1]
        sigs += [(_dropout_fwd, (v, uint64, int64, float64, v, uint8[::1])),
                 (_dropout_bwd, (v, uint8[::1], float64, v))]
    return sigs
