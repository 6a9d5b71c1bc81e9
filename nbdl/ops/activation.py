"""Differentiable activations: relu, sigmoid, tanh, leaky_relu, softmax, log_softmax.

Same names, arguments and semantics as torch.nn.functional. The backward of
relu/sigmoid/tanh/softmax/log_softmax is computed from the forward output, so
only the output is kept for it.
"""
import warnings

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_tensor, normalize_axis
from nbdl.tensor import as_dtype, make_tensor

__all__ = ["relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax"]


def _float_input(op, x):
    x = as_tensor(x)
    check_tensor(op, "input", x, dtype="float")
    return x


def _from_output(x, forward, backward):
    """y = forward(x); gx = backward(gy, y)."""
    y = forward(x.array)
    return make_tensor(y, (x,), lambda gy: (backward(gy, y),))


def relu(input, inplace=False):
    """max(input, 0). ``inplace`` is accepted for PyTorch compatibility; the result is a new tensor."""
    x = _float_input("relu", input)
    K = kernels("activation", x.device)
    return _from_output(x, K.relu_forward, K.relu_backward)


def sigmoid(input):
    """1 / (1 + exp(-input))."""
    x = _float_input("sigmoid", input)
    K = kernels("activation", x.device)
    return _from_output(x, K.sigmoid_forward, K.sigmoid_backward)


def tanh(input):
    """Hyperbolic tangent."""
    x = _float_input("tanh", input)
    K = kernels("activation", x.device)
    return _from_output(x, K.tanh_forward, K.tanh_backward)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """input where input > 0, negative_slope * input elsewhere (``inplace``: see relu)."""
    x = _float_input("leaky_relu", input)
    K = kernels("activation", x.device)
    y = K.leaky_relu_forward(x.array, negative_slope)
    return make_tensor(y, (x,), lambda gy: (K.leaky_relu_backward(gy, x.array, negative_slope),))


def _softmax_dim(op, dim, ndim):
    """PyTorch's legacy choice when dim is None (with its deprecation warning)."""
    if dim is not None:
        return normalize_axis(op, dim, ndim)
    warnings.warn(f"Implicit dimension choice for {op} has been deprecated. "
                  "Change the call to include dim=X as an argument.", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_family(op, input, dim, dtype, log):
    x = _float_input(op, input)
    if dtype is not None:
        x = x.to(as_dtype(dtype))
        check_tensor(op, "dtype", x, dtype="float")
    axis = _softmax_dim(op, dim, x.ndim)
    K = kernels("softmax", x.device)
    if log:
        return _from_output(x, lambda a: K.log_softmax_forward(a, axis),
                            lambda gy, y: K.log_softmax_backward(gy, y, axis))
    return _from_output(x, lambda a: K.softmax_forward(a, axis),
                        lambda gy, y: K.softmax_backward(gy, y, axis))


def softmax(input, dim=None, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim`` (stable for large inputs); ``dtype`` casts first."""
    return _softmax_family("softmax", input, dim, dtype, log=False)


def log_softmax(input, dim=None, dtype=None):
    """x - log(sum(exp(x))) along ``dim``; ``dtype`` casts first."""
    return _softmax_family("log_softmax", input, dim, dtype, log=True)
