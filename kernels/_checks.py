"""Argument checks shared by every kernel host function.

Numba does no bounds checking, so a wrong shape that reaches a kernel reads or
writes foreign memory. Host functions call these before launching anything;
each raises one TypeError/ValueError that names the op, the argument and the
values it got.
"""
import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _dtypes(dtype):
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype == "float":     # (np.dtype("float64") == "float" too)
        return FLOAT_DTYPES
    if isinstance(dtype, (tuple, list)):
        return tuple(np.dtype(d) for d in dtype)
    return (np.dtype(dtype),)


def check_array(op, name, a, ndim=None, dtype=None, shape=None, contiguous=True):
    """Check one array argument.

    ndim: required rank; dtype: a dtype, a tuple of dtypes, or "float"
    (float32 or float64); shape: a tuple whose None entries match anything;
    contiguous: require C order (kernels index flat memory).
    """
    if type(a) is np.ndarray and _ndarray_ok(a, ndim, dtype, shape, contiguous):
        return a                 # the common case, without building any message
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if ndim is not None and len(a.shape) != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    allowed = _dtypes(dtype)
    if allowed is not None and np.dtype(a.dtype) not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{op}: {name} must be {names}, got {np.dtype(a.dtype)}")
    if shape is not None:
        if len(shape) != len(a.shape) or any(
                want is not None and want != got for want, got in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(a.shape)}")
    if contiguous and not _is_c_contiguous(a):
        raise ValueError(f"{op}: {name} must be C-contiguous")
    return a


def _ndarray_ok(a, ndim, dtype, shape, contiguous):
    """Whether a numpy array passes check_array (which then has nothing to say)."""
    if ndim is not None and a.ndim != ndim:
        return False
    if isinstance(dtype, str) and dtype == "float":
        if a.dtype not in FLOAT_DTYPES:
            return False
    elif dtype is not None:
        return False             # other dtype specs: the general path
    if shape is not None and (len(shape) != a.ndim or any(w is not None and w != g for w, g in zip(shape, a.shape))):
        return False
    return not contiguous or a.flags.c_contiguous


def _is_c_contiguous(a):
    flags = getattr(a, "flags", None)
    if flags is None:
        return True
    try:
        return bool(flags["C_CONTIGUOUS"])
    except (KeyError, TypeError):
        return bool(getattr(flags, "c_contiguous", True))


def check_float(op, **arrays):
    """All arrays share one float dtype (float32 or float64); return it."""
    dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        d = np.dtype(a.dtype)
        if d not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {d}")
        if dtype is None:
            dtype, first = d, name
        elif d != dtype:
            raise TypeError(f"{op}: dtype mismatch: {first} is {dtype} but {name} is {d}")
    return dtype


def check_same_shape(op, **arrays):
    """All arrays have one shape."""
    shape = None
    first = None
    for name, a in arrays.items():
        if shape is None:
            shape, first = tuple(a.shape), name
        elif tuple(a.shape) != shape:
            raise ValueError(f"{op}: shape mismatch: {first} has shape {shape} but {name} has shape {tuple(a.shape)}")
    return shape


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(op, name, v, minimum=None):
    if not _is_int(v):
        raise TypeError(f"{op}: {name} must be an int, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    return int(v)


def check_positive_int(op, name, v):
    return check_int(op, name, v, minimum=1)


def check_finite(op, name, v, minimum=None, maximum=None, open_max=False):
    """A finite real number, optionally within [minimum, maximum] (or [minimum, maximum))."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    if maximum is not None and (v >= maximum if open_max else v > maximum):
        rel = "<" if open_max else "<="
        raise ValueError(f"{op}: {name} must be {rel} {maximum}, got {v}")
    return v
