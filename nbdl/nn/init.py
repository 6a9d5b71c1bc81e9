"""Initializers with PyTorch's names, formulas and gains.

Values are drawn on the host from nbdl's global generator (``nbdl.manual_seed``) and
copied into the tensor in its dtype and on its device, so a CPU model and a CUDA model
built after the same seed hold identical weights.

    fan_in  = size(1) * receptive field,  fan_out = size(0) * receptive field
    xavier_uniform_:  U(-a, a),  a = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal_:   N(0, std), std = gain * sqrt(2 / (fan_in + fan_out))
    kaiming_uniform_: U(-b, b),  b = gain(nonlinearity, a) * sqrt(3 / fan_mode)
    kaiming_normal_:  N(0, std), std = gain(nonlinearity, a) / sqrt(fan_mode)
    orthogonal_:      Q from the QR decomposition of a normal matrix, signs fixed by diag(R), times gain
"""
import math

import numpy as np

from nbdl.random import generator
from nbdl.tensor import Tensor, no_grad

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "eye_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
           "orthogonal_", "trunc_normal_"]


def _check(name, tensor):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(tensor).__name__}")
    if tensor.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float tensor, got {tensor.dtype}")


def _assign(tensor, host):
    with no_grad():
        tensor.copy_(np.asarray(host, dtype=tensor.dtype).reshape(tensor.shape))
    return tensor


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
              "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:], dtype=np.int64)) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0):
    _check("uniform_", tensor)
    if not a <= b:
        raise ValueError(f"uniform_: a must be <= b, got a={a}, b={b}")
    return _assign(tensor, generator().uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0):
    _check("normal_", tensor)
    if std < 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    return _assign(tensor, generator().normal(mean, std, size=tensor.shape))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Normal(mean, std) redrawn until inside [a, b] (absolute bounds, like PyTorch)."""
    _check("trunc_normal_", tensor)
    if not (std > 0 and a < b):
        raise ValueError(f"trunc_normal_: need std > 0 and a < b, got std={std}, a={a}, b={b}")
    n = tensor.numel()
    out = np.empty(0)
    for _ in range(1000):
        if out.size >= n:
            return _assign(tensor, out[:n])
        draw = generator().normal(mean, std, size=2 * n + 16)
        out = np.concatenate([out, draw[(draw >= a) & (draw <= b)]])
    raise ValueError(f"trunc_normal_: [a, b] = [{a}, {b}] holds almost none of N({mean}, {std}^2)")


def constant_(tensor, val):
    _check("constant_", tensor)
    return tensor.fill_(val)


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def eye_(tensor):
    _check("eye_", tensor)
    if tensor.ndim != 2:
        raise ValueError(f"eye_: expected a 2-D tensor, got shape {tensor.shape}")
    return _assign(tensor, np.eye(*tensor.shape))


def xavier_uniform_(tensor, gain=1.0):
    _check("xavier_uniform_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor, gain=1.0):
    _check("xavier_normal_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    _check("kaiming_uniform_", tensor)
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    _check("kaiming_normal_", tensor)
    fan = _fan(tensor, mode)
    if fan == 0:
        return tensor
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan))


def orthogonal_(tensor, gain=1.0):
    """A (semi-)orthogonal matrix over the flattened trailing dims, scaled by gain."""
    _check("orthogonal_", tensor)
    if tensor.ndim < 2:
        raise ValueError(f"orthogonal_: expected at least 2 dimensions, got shape {tensor.shape}")
    rows = tensor.shape[0]
    cols = tensor.numel() // rows if rows else 0
    flat = generator().standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))   # make the decomposition unique (uniform over orthogonal matrices)
    if rows < cols:
        q = q.T
    return _assign(tensor, gain * q)
