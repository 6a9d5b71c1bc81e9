"""Normalization ops: batch_norm and layer_norm, PyTorch's signatures and semantics."""
import math

import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_same_device, check_same_dtype, check_tensor
from nbdl.tensor import make_tensor

__all__ = ["batch_norm", "layer_norm"]


def _array(t):
    return None if t is None else t.array


def _contiguous(a):
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """Batch normalization over the channel axis 1 of (N, C, *) input.

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c. training=True uses the
    batch's statistics (biased variance) and, when running_mean/running_var are
    given, updates them in place: r = (1 - momentum) * r + momentum * stat, with the
    unbiased variance. training=False uses the running statistics.
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                                   eps, None)


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                            num_batches_tracked):
    """batch_norm that also counts batches in ``num_batches_tracked`` (an int64 tensor,
    incremented in place when training updates the running statistics). With
    momentum=None the running statistics are the cumulative average of all batches
    (factor 1 / num_batches_tracked), as in PyTorch's BatchNorm layers."""
    op = "batch_norm"
    x = as_tensor(input)
    check_tensor(op, "input", x, min_ndim=2, dtype="float")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None:
            check_tensor(op, name, t, ndim=1)
    check_same_device(op, input=x, running_mean=running_mean, running_var=running_var, weight=weight,
                      bias=bias, num_batches_tracked=num_batches_tracked)
    check_same_dtype(op, input=x, running_mean=running_mean, running_var=running_var, weight=weight,
                     bias=bias)
    n, c = x.shape[:2]
    l = math.prod(x.shape[2:])
    if training and n * l == 1:
        raise ValueError(f"{op}: Expected more than 1 value per channel when training, got input size {x.shape}")
    a = _contiguous(x.array).reshape(n, c, l)
    K = kernels("norm", x.device)
    y, mean, invstd = K.batch_norm_forward(
        a, _array(weight), _array(bias), _array(running_mean), _array(running_var),
        _array(num_batches_tracked), bool(training), momentum, eps)
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(gy):
        gx, gw, gb = K.batch_norm_backward(_contiguous(gy).reshape(n, c, l), a, _array(weight),
                                           mean, invstd, bool(training))
        grads = {"x": gx.reshape(x.shape), "weight": gw, "bias": gb}
        return tuple(grads[k] for k, t in (("x", x), ("weight", weight), ("bias", bias)) if t is not None)

    return make_tensor(y.reshape(x.shape), parents, backward)


def _normalized_shape(op, normalized_shape, x):
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ValueError(f"{op}: normalized_shape must be a positive int or a non-empty tuple of them, "
                         f"got {normalized_shape!r}")
    if x.shape[x.ndim - len(shape):] != tuple(int(s) for s in shape) or x.ndim < len(shape):
        raise ValueError(f"{op}: Given normalized_shape={list(shape)}, expected input with shape "
                         f"[*, {', '.join(str(s) for s in shape)}], but got input of size {list(x.shape)}")
    return tuple(int(s) for s in shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    y = (x - mean) / sqrt(var + eps) * weight + bias, mean and biased var over the
    last len(normalized_shape) axes; weight/bias have shape normalized_shape.
    """
    op = "layer_norm"
    x = as_tensor(input)
    check_tensor(op, "input", x, dtype="float")
    shape = _normalized_shape(op, normalized_shape, x)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(op, name, t)
            if t.shape != shape:
                raise ValueError(f"{op}: {name} must have shape {shape} (normalized_shape), got {t.shape}")
    check_same_device(op, input=x, weight=weight, bias=bias)
    check_same_dtype(op, input=x, weight=weight, bias=bias)
    d = math.prod(shape)
    m = math.prod(x.shape[:x.ndim - len(shape)])
    a = _contiguous(x.array).reshape(m, d)
    w = None if weight is None else _contiguous(weight.array).reshape(d)
    b = None if bias is None else _contiguous(bias.array).reshape(d)
    K = kernels("norm", x.device)
    y, mean, invstd = K.layer_norm_forward(a, w, b, eps)
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(gy):
        gx, gw, gb = K.layer_norm_backward(_contiguous(gy).reshape(m, d), a, w, mean, invstd)
        grads = {"x": gx.reshape(x.shape), "weight": None if gw is None else gw.reshape(shape),
                 "bias": gb.reshape(shape)}
        return tuple(grads[k] for k, t in (("x", x), ("weight", weight), ("bias", bias)) if t is not None)

    return make_tensor(y.reshape(x.shape), parents, backward)
