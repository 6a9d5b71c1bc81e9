"""Elementwise arithmetic, reductions and copies behind Tensor's operators.

Shape helpers shared by both backends live here: padding shapes to MAX_DIMS axes and
building broadcast strides (0 on a broadcast axis), which the CUDA kernels index with.
"""
import numpy as np

from nbdl.kernels._checks import check_array, check_int

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
    check_rank(op, shape)
    return shape


def check_rank(op, shape):
    """The CUDA kernels index through (shape, strides) tuples of MAX_DIMS axes."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"{op}: at most {MAX_DIMS} dimensions are supported, got shape {tuple(shape)}")


def check_axes(op, axes, shape):
    """Axes of an array of ``shape`` to reduce over: ints in [-ndim, ndim), none repeated;
    returned sorted and non-negative."""
    check_rank(op, shape)
    ndim = len(shape)
    out = []
    for a in axes:
        a = check_int(op, "axis", a)
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of range for an array with {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def check_permutation(op, perm, shape):
    """``perm`` reorders all axes of an array of ``shape`` (each exactly once); returned as ints."""
    check_rank(op, shape)
    ndim = len(shape)
    perm = tuple(perm)
    if sorted(int(p) for p in perm) != list(range(ndim)):
        raise ValueError(f"{op}: {perm} is not a permutation of {ndim} axes")
    return tuple(int(p) for p in perm)


def check_broadcast_to(op, x, shape):
    """``x`` broadcasts (numpy rules) to exactly ``shape``."""
    shape = tuple(int(s) for s in shape)
    check_rank(op, shape)
    try:
        ok = np.broadcast_shapes(tuple(x.shape), shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{op}: cannot broadcast shape {tuple(x.shape)} to {shape}")
    return shape


def check_row_indices(op, idx, n):
    """idx: a 1-D int64 array of row indices into ``n`` rows (values are checked by the backends)."""
    check_array(op, "idx", idx, ndim=1, dtype=np.int64)
    return check_int(op, "n", n, minimum=0)


def check_index_values(op, bad, n):
    """Raise for ``bad`` = (i, idx[i]) from first_out_of_range (None: all indices valid)."""
    if bad is not None:
        raise ValueError(f"{op}: idx[{bad[0]}] = {bad[1]} is out of range for {n} rows")


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
