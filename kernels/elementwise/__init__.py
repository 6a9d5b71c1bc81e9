"""Elementwise arithmetic, reductions and copies behind Tensor's operators.

Shape helpers shared by both backends live here: padding shapes to MAX_DIMS axes and
building broadcast strides (0 on a broadcast axis), which the CUDA kernels index with.
"""
import numpy as np

from nbdl.kernels._checks import check_array

MAX_DIMS = 6

OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3}


def broadcast_shape(op, a, b):
    try:
        return tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together") from None


def check_binary(op, a, b):
    check_array(op, "a", a)
    check_array(op, "b", b)
    if np.dtype(a.dtype) != np.dtype(b.dtype):
        raise TypeError(f"{op}: dtype mismatch: a is {np.dtype(a.dtype)} but b is {np.dtype(b.dtype)}")
    shape = broadcast_shape(op, a, b)
    if len(shape) > MAX_DIMS:
        raise ValueError(f"{op}: at most {MAX_DIMS} dimensions are supported, got shape {shape}")
    return shape


def contiguous_strides(shape):
    """Element strides of a C-contiguous array of ``shape``."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def padded(shape, strides):
    """(shape, strides) left-padded to MAX_DIMS axes with size-1, stride-0 axes."""
    pad = MAX_DIMS - len(shape)
    return (1,) * pad + tuple(shape), (0,) * pad + tuple(strides)


def broadcast_strides(in_shape, out_shape):
    """Element strides that read an ``in_shape`` C-array broadcast to ``out_shape``."""
    base = contiguous_strides(in_shape)
    lead = len(out_shape) - len(in_shape)
    strides = [0] * lead
    for s, st in zip(in_shape, base):
        strides.append(0 if s == 1 else st)
    return tuple(strides)


def reduced_axes_for(shape, target):
    """Axes of ``shape`` to sum so the result broadcasts as ``target`` (sum_to_shape)."""
    lead = len(shape) - len(target)
    if lead < 0:
        raise ValueError(f"sum_to_shape: cannot reduce shape {tuple(shape)} to {tuple(target)}")
    axes = list(range(lead))
    for i, t in enumerate(target):
        if t == 1 and shape[lead + i] != 1:
            axes.append(lead + i)
        elif t != shape[lead + i] and t != 1:
            raise ValueError(f"sum_to_shape: cannot reduce shape {tuple(shape)} to {tuple(target)}")
    return tuple(axes)
