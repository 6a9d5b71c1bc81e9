"""CUDA activations: one thread per element of the flat buffer."""
import math

from numba import cuda, float32, float64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.activation import check_backward, check_forward, check_slope


@cuda.jit(cache=True)
def _relu_fwd(x, y):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = 0 if v < 0 else v      # NaN propagates, like torch.relu


@cuda.jit(cache=True)
def _relu_bwd(gy, y, gx):
    i = cuda.grid(1)
    if i < gy.size:
        gx[i] = gy[i] if y[i] > 0 else 0


@cuda.jit(cache=True)
def _sigmoid_fwd(x, y):
    i = cuda.grid(1)
    if i < x.size:
        one = x.dtype.type(1)        # typed constants keep float32 math in float32
        y[i] = one / (one + math.exp(-x[i]))


@cuda.jit(cache=True)
def _sigmoid_bwd(gy, y, gx):
    i = cuda.grid(1)
    if i < gy.size:
        one = gy.dtype.type(1)
        gx[i] = gy[i] * y[i] * (one - y[i])


@cuda.jit(cache=True)
def _tanh_fwd(x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = math.tanh(x[i])


@cuda.jit(cache=True)
def _tanh_bwd(gy, y, gx):
    i = cuda.grid(1)
    if i < gy.size:
        one = gy.dtype.type(1)
        gx[i] = gy[i] * (one - y[i] * y[i])


@cuda.jit(cache=True)
def _leaky_relu_fwd(x, y, slope):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v if v > 0 else v * x.dtype.type(slope)


@cuda.jit(cache=True)
def _leaky_relu_bwd(gy, x, gx, slope):
    i = cuda.grid(1)
    if i < gy.size:
        g = gy[i]
        gx[i] = g if x[i] > 0 else g * gy.dtype.type(slope)


def _flat(a):
    return a.reshape(a.size)


def _unary(kernel, x, *args):
    y = empty(x.shape, x.dtype)
    if x.size:
        kernel[grid1d(x.size)](_flat(x), _flat(y), *args)
    return y


def _backward(kernel, gy, saved, *args):
    gx = empty(gy.shape, gy.dtype)
    if gy.size:
        kernel[grid1d(gy.size)](_flat(gy), _flat(saved), _flat(gx), *args)
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


def ptx_signatures():
    """Every kernel with the argument types the launchers pass, float32 and float64."""
    sigs = []
    for f in (float32, float64):
        v = f[::1]
        sigs += [(k, (v, v)) for k in (_relu_fwd, _sigmoid_fwd, _tanh_fwd)]
        sigs += [(k, (v, v, v)) for k in (_relu_bwd, _sigmoid_bwd, _tanh_bwd)]
        sigs += [(_leaky_relu_fwd, (v, v, float64)), (_leaky_relu_bwd, (v, v, v, float64))]
    return sigs
