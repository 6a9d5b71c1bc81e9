"""Pointwise activations: relu, sigmoid, tanh, leaky_relu (forward and backward).

Both backends treat an array of any shape as its flat C-order buffer.
Forward functions return the output; backward functions take the upstream
gradient ``gy`` and what the forward saved:

    relu        y = max(x, 0)                   gx = gy * (y > 0)
    sigmoid     y = 1 / (1 + e^-x)              gx = gy * y * (1 - y)
    tanh        y = tanh(x)                     gx = gy * (1 - y^2)
    leaky_relu  y = x if x > 0 else s * x       gx = gy if x > 0 else s * gy   (takes x)

The x > 0 tests follow PyTorch, so the gradient at 0 is 0 (relu) or s (leaky_relu).
"""
from nbdl.kernels._checks import check_array, check_finite, check_float, check_same_shape


def check_forward(op, x):
    """x: a C-contiguous float32/float64 array of any shape."""
    check_array(op, "x", x, dtype="float")


def check_backward(op, gy, saved, saved_name):
    """gy and the saved array share one float dtype and one shape."""
    check_array(op, "gy", gy, dtype="float")
    check_array(op, saved_name, saved, dtype="float")
    check_float(op, gy=gy, **{saved_name: saved})
    check_same_shape(op, gy=gy, **{saved_name: saved})


def check_slope(op, negative_slope):
    return check_finite(op, "negative_slope", negative_slope)
