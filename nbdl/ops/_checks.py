"""Argument checks for differentiable ops: run before any kernel, one clear message."""
import numbers

import numpy as np

from nbdl.tensor import Tensor, float32, float64

FLOATS = (float32, float64)


def as_tensor(x, like=None):
    """``x`` as a Tensor; Python numbers take ``like``'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    from nbdl.tensor import tensor
    if isinstance(x, (numbers.Number, np.generic)) and like is not None:
        return tensor(x, dtype=like.dtype, device=like.device)
    if isinstance(x, np.ndarray):
        return tensor(x, device=like.device if like is not None else None)
    return tensor(x, dtype=like.dtype if like is not None else None,
                  device=like.device if like is not None else None)


def check_tensor(op, name, t, ndim=None, dtype=None, min_ndim=None):
    """``t`` is a Tensor of rank ``ndim`` (or >= ``min_ndim``) and dtype ``dtype``
    ("float" = float32 or float64; a dtype or a tuple of dtypes)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = ndim if isinstance(ndim, tuple) else (ndim,)
        if t.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{op}: {name} must have {want} dimensions, got shape {t.shape}")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dimensions, got shape {t.shape}")
    if dtype is not None:
        allowed = FLOATS if isinstance(dtype, str) and dtype == "float" else tuple(
            np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
        if t.dtype not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise TypeError(f"{op}: {name} must be {want}, got {t.dtype}")
    return t


def check_same_device(op, **tensors):
    """All given tensors (None entries skipped) live on one device; return it."""
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{op}: tensors on different devices: {first[0]} on {first[1]}, "
                             f"{name} on {t.device}")
    return None if first is None else first[1]


def check_same_dtype(op, **tensors):
    """All given tensors (None entries skipped) share one dtype; TypeError naming both otherwise."""
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = (name, t.dtype)
        elif t.dtype != first[1]:
            raise TypeError(f"{op}: dtype mismatch: {first[0]} is {first[1]} but {name} is {t.dtype} "
                            f"(no implicit casting; use .to(dtype))")
    return None if first is None else first[1]


def normalize_axis(op, axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dimensions")
    return int(axis) % max(ndim, 1)
