"""CPU activations: one parallel, vectorized pass over the flat buffer.

float32 sigmoid/tanh use the polynomial helpers of ``nbdl.kernels._fastmath``
(SIMD; libm's expf/tanhf would keep the loop scalar); float64 stays exact.
"""
import numpy as np
from numba import njit, prange

from nbdl.kernels._fastmath import FASTMATH, sigmoid as _sigmoid, tanh as _tanh
from nbdl.kernels.activation import check_backward, check_forward, check_slope

_JIT = dict(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")


@njit(**_JIT)
def _relu_fwd(x, y):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        y[i] = zero if v < zero else v      # NaN propagates, like torch.relu


@njit(**_JIT)
def _relu_bwd(gy, y, gx):
    zero = gy.dtype.type(0)
    for i in prange(gy.size):
        gx[i] = gy[i] if y[i] > zero else zero


@njit(**_JIT)
def _sigmoid_fwd(x, y):
    for i in prange(x.size):
        y[i] = _sigmoid(x[i])


@njit(**_JIT)
def _sigmoid_bwd(gy, y, gx):
    one = gy.dtype.type(1)
    for i in prange(gy.size):
        gx[i] = gy[i] * y[i] * (one - y[i])


@njit(**_JIT)
def _tanh_fwd(x, y):
    for i in prange(x.size):
        y[i] = _tanh(x[i])


@njit(**_JIT)
def _tanh_bwd(gy, y, gx):
    one = gy.dtype.type(1)
    for i in prange(gy.size):
        gx[i] = gy[i] * (one - y[i] * y[i])


@njit(**_JIT)
def _leaky_relu_fwd(x, y, slope):
    s = x.dtype.type(slope)
    zero = x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > zero else v * s


@njit(**_JIT)
def _leaky_relu_bwd(gy, x, gx, slope):
    s = gy.dtype.type(slope)
    zero = gy.dtype.type(0)
    for i in prange(gy.size):
        gx[i] = gy[i] if x[i] > zero else gy[i] * s


def _unary(kernel, x, *args):
    y = np.empty_like(x)
    kernel(x.reshape(-1), y.reshape(-1), *args)
    return y


def _backward(kernel, gy, saved, *args):
    gx = np.empty_like(gy)
    kernel(gy.reshape(-1), saved.reshape(-1), gx.reshape(-1), *args)
    return gx


def relu_forward(x):
    """y = max(x, 0), same shape and dtype as x."""
    check_forward("relu_forward", x)
    return _unary(_relu_fwd, x)


def relu_backward(gy, y):
    """gx = gy * (y > 0), from the forward output y."""
    check_backward("relu_backward", gy, y, "y")
    return _backward(_relu_bwd, gy, y)


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x))."""
    check_forward("sigmoid_forward", x)
    return _unary(_sigmoid_fwd, x)


def sigmoid_backward(gy, y):
    """gx = gy * y * (1 - y), from the forward output y."""
    check_backward("sigmoid_backward", gy, y, "y")
    return _backward(_sigmoid_bwd, gy, y)


def tanh_forward(x):
    """y = tanh(x)."""
    check_forward("tanh_forward", x)
    return _unary(_tanh_fwd, x)


def tanh_backward(gy, y):
    """gx = gy * (1 - y^2), from the forward output y."""
    check_backward("tanh_backward", gy, y, "y")
    return _backward(_tanh_bwd, gy, y)


def leaky_relu_forward(x, negative_slope=0.01):
    """y = x where x > 0, negative_slope * x elsewhere."""
    check_forward("leaky_relu_forward", x)
    s = check_slope("leaky_relu_forward", negative_slope)
    return _unary(_leaky_relu_fwd, x, s)


def leaky_relu_backward(gy, x, negative_slope=0.01):
    """gx = gy where x > 0, negative_slope * gy elsewhere (from the forward input x)."""
    check_backward("leaky_relu_backward", gy, x, "x")
    s = check_slope("leaky_relu_backward", negative_slope)
    return _backward(_leaky_relu_bwd, gy, x, s)
