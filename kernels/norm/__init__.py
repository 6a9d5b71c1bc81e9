"""Normalization: argument checks shared by the cpu and cuda kernels.

Batch normalization sees ``x`` as ``(N, C, L)`` (L = 1 for (N, C) input, H*W for
images) and normalizes each channel over its ``M = N * L`` values::

    y = (x - mean_c) * invstd_c * weight_c + bias_c,   invstd_c = 1 / sqrt(var_c + eps)

In training the statistics are the batch's (biased variance), and the running
statistics move towards them with ``momentum`` (the unbiased variance
``var * M / (M - 1)``, like PyTorch); ``momentum=None`` averages all batches
seen (factor ``1 / num_batches_tracked``). In evaluation the running statistics
are used.

Layer normalization sees ``x`` as ``(M, D)`` and normalizes each row over its D
values, with an elementwise weight and bias of D values.

Both save ``(mean, invstd)`` for the backward. Reductions run in float64 in a
fixed order, so results do not depend on the thread count.
"""
import numpy as np

from .._checks import check_array, check_finite, check_float

__all__ = []


def _optional_vector(op, name, a, length, dtype):
    if a is not None:
        check_array(op, name, a, ndim=1, dtype=dtype, shape=(length,))
    return a


def check_eps(op, eps):
    return check_finite(op, "eps", eps, minimum=0.0)


def check_momentum(op, momentum, num_batches_tracked, updating):
    """momentum in [0, 1], or None for a cumulative average (needs the batch counter
    when the running statistics are updated)."""
    if momentum is None:
        if updating and num_batches_tracked is None:
            raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")
        return None
    return check_finite(op, "momentum", momentum, minimum=0.0, maximum=1.0)


def check_batch_norm_forward(op, x, weight, bias, running_mean, running_var, num_batches_tracked,
                             training, momentum, eps):
    """Validate batch_norm_forward's arguments; return (momentum or None, eps)."""
    check_array(op, "x", x, ndim=3, dtype="float")
    n, c, l = x.shape
    if c < 1:
        raise ValueError(f"{op}: x must have at least one channel, got shape {tuple(x.shape)}")
    check_float(op, x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _optional_vector(op, name, a, c, x.dtype)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {training!r}")
    if not training and running_mean is None:
        raise ValueError(f"{op}: running_mean and running_var are required when training=False")
    if training and n * l == 1:
        raise ValueError(f"{op}: Expected more than 1 value per channel when training, "
                         f"got input size {tuple(x.shape)}")
    if num_batches_tracked is not None:
        check_array(op, "num_batches_tracked", num_batches_tracked, dtype="int64")
        if num_batches_tracked.size != 1:
            raise ValueError(f"{op}: num_batches_tracked must hold one value, got shape "
                             f"{tuple(num_batches_tracked.shape)}")
    updating = bool(training) and running_mean is not None
    return check_momentum(op, momentum, num_batches_tracked, updating), check_eps(op, eps)


def check_batch_norm_backward(op, gy, x, weight, save_mean, save_invstd, training):
    check_array(op, "x", x, ndim=3, dtype="float")
    c = x.shape[1]
    check_array(op, "grad_output", gy, dtype=x.dtype, shape=tuple(x.shape))
    _optional_vector(op, "weight", weight, c, x.dtype)
    check_array(op, "save_mean", save_mean, ndim=1, dtype=x.dtype, shape=(c,))
    check_array(op, "save_invstd", save_invstd, ndim=1, dtype=x.dtype, shape=(c,))
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {training!r}")


def check_layer_norm_forward(op, x, weight, bias, eps):
    check_array(op, "x", x, ndim=2, dtype="float")
    check_float(op, x=x, weight=weight, bias=bias)
    if x.shape[1] < 1:
        raise ValueError(f"{op}: x must have at least one value per row, got shape {tuple(x.shape)}")
    _optional_vector(op, "weight", weight, x.shape[1], x.dtype)
    _optional_vector(op, "bias", bias, x.shape[1], x.dtype)
    return check_eps(op, eps)


def check_layer_norm_backward(op, gy, x, weight, mean, invstd):
    check_array(op, "x", x, ndim=2, dtype="float")
    m, d = x.shape
    check_array(op, "grad_output", gy, dtype=x.dtype, shape=(m, d))
    _optional_vector(op, "weight", weight, d, x.dtype)
    check_array(op, "mean", mean, ndim=1, dtype=x.dtype, shape=(m,))
    check_array(op, "invstd", invstd, ndim=1, dtype=x.dtype, shape=(m,))
