"""Tensor arithmetic: broadcasting + - * /, powers, exp/log, reductions, reshapes, indexing.

These are the ops behind Tensor's operators. Each validates, runs a kernel of the
``elementwise`` (or ``linalg``) family on the tensors' device, and records a backward
closure. Broadcasting follows numpy; the gradient of a broadcast operand is summed
back to its shape (``sum_to_shape``).
"""
import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_same_device, check_same_dtype, check_tensor, normalize_axis
from nbdl.tensor import Tensor, _is_scalar, as_dtype, make_tensor, needs_grad

__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "abs", "matmul",
           "sum", "mean", "reshape", "flatten", "transpose", "permute", "getitem", "clone", "argmax"]


def _pair(op, a, b):
    """Two tensors of one dtype and device; a Python number takes the tensor's dtype."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"{op}: at least one operand must be a Tensor")
    if not isinstance(a, Tensor):
        a = _scalar_operand(op, a, b)
    if not isinstance(b, Tensor):
        b = _scalar_operand(op, b, a)
    check_same_device(op, a=a, b=b)
    check_same_dtype(op, a=a, b=b)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together") from None
    return a, b


def _scalar_operand(op, x, like):
    """A Python number (or array) as a tensor of ``like``'s dtype and device, refusing the
    conversions that would change its value (0.5 into an int tensor's 0, 2 into a bool's True)."""
    if _is_scalar(x) or isinstance(x, bool):
        kind = like.dtype.kind
        is_bool = isinstance(x, (bool, np.bool_))
        lossy = (kind in "iu" and isinstance(x, (float, np.floating))) or (kind == "b" and not is_bool)
        if lossy:
            raise TypeError(f"{op}: the {type(x).__name__} {x!r} does not fit a tensor of dtype {like.dtype} "
                            f"(no implicit casting; convert the tensor first, e.g. with .to(nbdl.float32))")
    return as_tensor(x, like=like)


def add(a, b):
    """a + b with broadcasting."""
    a, b = _pair("add", a, b)
    K = kernels("elementwise", a.device)

    def backward(gy):
        return K.sum_to_shape(gy, a.shape), K.sum_to_shape(gy, b.shape)
    return make_tensor(K.add(a.array, b.array), (a, b), backward)


def sub(a, b):
    """a - b with broadcasting."""
    a, b = _pair("sub", a, b)
    K = kernels("elementwise", a.device)

    def backward(gy):
        return K.sum_to_shape(gy, a.shape), K.sum_to_shape(K.scale(gy, -1.0), b.shape)
    return make_tensor(K.sub(a.array, b.array), (a, b), backward)


def mul(a, b):
    """a * b with broadcasting; d/da = gy * b, d/db = gy * a."""
    a, b = _pair("mul", a, b)
    K = kernels("elementwise", a.device)

    def backward(gy):
        ga = K.sum_to_shape(K.mul(gy, b.array), a.shape) if a.requires_grad else None
        gb = K.sum_to_shape(K.mul(gy, a.array), b.shape) if b.requires_grad else None
        return ga, gb
    return make_tensor(K.mul(a.array, b.array), (a, b), backward)


def div(a, b):
    """a / b with broadcasting; d/da = gy / b, d/db = -gy * y / b."""
    a, b = _pair("div", a, b)
    if a.dtype.kind != "f":
        raise TypeError(f"div: true division needs float tensors, got {a.dtype}")
    K = kernels("elementwise", a.device)
    y = K.div(a.array, b.array)

    def backward(gy):
        ga = K.sum_to_shape(K.div(gy, b.array), a.shape) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            gb = K.sum_to_shape(K.scale(K.div(K.mul(gy, y), b.array), -1.0), b.shape)
        return ga, gb
    return make_tensor(y, (a, b), backward)


def neg(x):
    """-x; d/dx = -1."""
    if x.dtype == np.bool_:
        raise TypeError("neg: negation of a bool tensor is not supported; use logical operations")
    K = kernels("elementwise", x.device)
    return make_tensor(K.scale(x.array, -1.0), (x,), lambda gy: (K.scale(gy, -1.0),))


def pow(x, exponent):
    """x ** p for a Python number p; d/dx = p * x^(p-1)."""
    check_tensor("pow", "x", x, dtype="float")
    if not _is_scalar(exponent):
        raise TypeError(f"pow: exponent must be a number, got {type(exponent).__name__}")
    p = float(exponent)
    K = kernels("elementwise", x.device)

    def backward(gy):
        if p == 0.0:                   # x^0 = 1: zero gradient, also at x = 0 where x^-1 is inf
            return (K.zeros(x.shape, x.dtype),)
        return (K.mul(gy, K.scale(K.pow_scalar(x.array, p - 1.0), p)),)
    return make_tensor(K.pow_scalar(x.array, p), (x,), backward)


def exp(x):
    """e^x; d/dx = e^x (the output, kept for the backward)."""
    check_tensor("exp", "x", x, dtype="float")
    K = kernels("elementwise", x.device)
    y = K.exp(x.array)
    return make_tensor(y, (x,), lambda gy: (K.mul(gy, y),))


def log(x):
    """Natural logarithm; d/dx = 1 / x."""
    check_tensor("log", "x", x, dtype="float")
    K = kernels("elementwise", x.device)
    return make_tensor(K.log(x.array), (x,), lambda gy: (K.div(gy, x.array),))


def sqrt(x):
    """Square root; d/dx = 0.5 / sqrt(x)."""
    check_tensor("sqrt", "x", x, dtype="float")
    K = kernels("elementwise", x.device)
    y = K.sqrt(x.array)
    return make_tensor(y, (x,), lambda gy: (K.scale(K.div(gy, y), 0.5),))


def abs(x):
    """|x|; d/dx = sign(x) (0 at 0, like PyTorch)."""
    check_tensor("abs", "x", x, dtype="float")
    K = kernels("elementwise", x.device)
    return make_tensor(K.abs(x.array), (x,), lambda gy: (K.mul(gy, K.sign(x.array)),))


def matmul(a, b):
    """a @ b: (n, k) @ (k, m), or (..., k) @ (k, m) with the leading axes flattened.

    A 1-D b (k,) is a column vector whose axis is dropped from the result, like torch.matmul:
    (..., k) @ (k,) -> (...), and (k,) @ (k,) -> () (a dot product).
    """
    a, b = as_tensor(a), as_tensor(b)
    check_tensor("matmul", "a", a, min_ndim=1)
    check_tensor("matmul", "b", b, ndim=(1, 2))
    check_same_device("matmul", a=a, b=b)
    check_same_dtype("matmul", a=a, b=b)
    check_tensor("matmul", "a", a, dtype="float")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a.shape={a.shape}, b.shape={b.shape}")
    if b.ndim == 1:
        return matmul(a, b.reshape(b.shape[0], 1)).reshape(*a.shape[:-1])
    lead = a.shape[:-1]
    a2 = a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
    L = kernels("linalg", a.device)

    def backward(gy):
        ga = L.matmul(gy, b.array, trans_b=True) if a2.requires_grad else None
        gb = L.matmul(a2.array, gy, trans_a=True) if b.requires_grad else None
        return ga, gb
    y = make_tensor(L.matmul(a2.array, b.array), (a2, b), backward)
    return y.reshape(*lead, b.shape[1]) if a.ndim != 2 else y


# --- reductions ---------------------------------------------------------------------

def _axes(op, axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = tuple(sorted({normalize_axis(op, a, ndim) for a in axes}))
    if len(out) != len(axes):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return out


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (int, tuple or None for all); the gradient broadcasts back."""
    check_tensor("sum", "x", x)
    axes = _axes("sum", axis, x.ndim)
    K = kernels("elementwise", x.device)
    y = K.sum_axes(x.array, axes, keepdims)
    kept = _kept_shape(x.shape, axes)

    def backward(gy):
        return (K.broadcast_to(gy.reshape(kept), x.shape),)
    return make_tensor(y, (x,), backward)


def mean(x, axis=None, keepdims=False):
    """sum(x, axis) / (number of elements reduced); float tensors only."""
    check_tensor("mean", "x", x, dtype="float")
    axes = _axes("mean", axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if count == 0:
        raise ValueError(f"mean: reducing over an empty axis (shape {x.shape})")
    return mul(sum(x, axis, keepdims), 1.0 / count)


def argmax(x, axis=None):
    """Index of the largest value (ties: the first), as an int64 tensor; no gradient."""
    check_tensor("argmax", "x", x)
    host = x.numpy()
    idx = np.argmax(host) if axis is None else np.argmax(host, axis=normalize_axis("argmax", axis, x.ndim))
    from nbdl.tensor import tensor
    return tensor(np.asarray(idx, dtype=np.int64), device=x.device)


# --- shapes -------------------------------------------------------------------------

def _resolve_shape(op, shape, numel):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = [int(s) for s in shape]
    if shape.count(-1) > 1:
        raise ValueError(f"{op}: only one dimension can be -1, got {tuple(shape)}")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if rest == 0 or numel % rest:
            raise ValueError(f"{op}: cannot reshape {numel} elements into {tuple(shape)}")
        shape[shape.index(-1)] = numel // rest
    if int(np.prod(shape, dtype=np.int64)) != numel or any(s < 0 for s in shape):
        raise ValueError(f"{op}: cannot reshape {numel} elements into {tuple(shape)}")
    return tuple(shape)


def reshape(x, *shape):
    """A view with a new shape (one entry may be -1)."""
    new = _resolve_shape("reshape", shape, x.numel())
    if new == x.shape:
        return x
    return make_tensor(x.array.reshape(new), (x,), lambda gy: (gy.reshape(x.shape),))


def flatten(x, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim into one (a 0-d tensor becomes shape (1,))."""
    if x.ndim == 0:
        return reshape(x, 1)
    s = normalize_axis("flatten", start_dim, x.ndim)
    e = normalize_axis("flatten", end_dim, x.ndim)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    return reshape(x, *x.shape[:s], -1, *x.shape[e + 1:])


def permute(x, *dims):
    """Reorder the axes (a contiguous copy)."""
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    perm = tuple(normalize_axis("permute", d, x.ndim) for d in dims)
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"permute: {dims!r} is not a permutation of {x.ndim} axes")
    if perm == tuple(range(x.ndim)):
        return x
    K = kernels("elementwise", x.device)
    inverse = tuple(np.argsort(perm))
    return make_tensor(K.permute(x.array, perm), (x,), lambda gy: (K.permute(gy, inverse),))


def transpose(x, dim0, dim1):
    """Swap two axes (a contiguous copy)."""
    perm = list(range(x.ndim))
    d0, d1 = normalize_axis("transpose", dim0, x.ndim), normalize_axis("transpose", dim1, x.ndim)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return permute(x, *perm)


def getitem(x, key):
    """Index the first (batch) axis: an int, a slice, or an integer array/list/Tensor."""
    if x.ndim == 0:
        raise IndexError("getitem: a 0-d tensor cannot be indexed")
    n = x.shape[0]
    if isinstance(key, tuple):
        if len(key) != 1:
            raise IndexError("getitem: only the first axis can be indexed (x[i], x[a:b], x[idx])")
        key = key[0]
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not -n <= key < n:
            raise IndexError(f"getitem: index {key} is out of range for axis 0 of size {n}")
        i = int(key) % n
        return reshape(_rows(x, slice(i, i + 1)), *x.shape[1:])
    if isinstance(key, slice):
        return _rows(x, key)
    idx = key.numpy() if isinstance(key, Tensor) else np.asarray(key)
    if idx.size == 0 and idx.ndim == 1:
        idx = idx.astype(np.int64)     # x[[]]: np.asarray([]) is float64
    if idx.dtype.kind == "b":
        if idx.shape != (n,):
            raise IndexError(f"getitem: boolean mask of shape {idx.shape} for axis 0 of size {n}")
        idx = np.flatnonzero(idx)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise IndexError(f"getitem: unsupported index {key!r}; use an int, a slice or a 1-D integer array")
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"getitem: index out of range for axis 0 of size {n}")
    return _gather(x, np.asarray(idx % n if n else idx, dtype=np.int64, order="C"))


def _rows(x, key):
    start, stop, step = key.indices(x.shape[0])
    if step == 1:
        stop = max(stop, start)
        K = kernels("elementwise", x.device)

        def backward(gy):
            g = K.zeros(x.shape, x.dtype)
            K.copy_into(g[start:stop], gy)
            return (g,)
        return make_tensor(x.array[start:stop], (x,), backward)
    return _gather(x, np.arange(start, stop, step, dtype=np.int64))


def _gather(x, idx):
    K = kernels("elementwise", x.device)
    from nbdl.device import from_host
    idx_dev = from_host(idx, x.device)
    y = K.take_rows(x.array, idx_dev)
    return make_tensor(y, (x,), lambda gy: (K.scatter_add_rows(gy, idx_dev, x.shape[0]),))


# --- copies -------------------------------------------------------------------------

def clone(x):
    """A copy with its own storage; the gradient passes through unchanged."""
    K = kernels("elementwise", x.device)
    return make_tensor(K.copy(x.array), (x,), lambda gy: (gy,))


def to(x, device=None, dtype=None):
    """x moved to ``device`` and/or cast to ``dtype``; differentiable; x itself when unchanged."""
    from nbdl import device as dev
    device = dev.require(device) if device is not None else x.device
    dtype = as_dtype(dtype) if dtype is not None else x.dtype
    if device == x.device and dtype == x.dtype:
        return x
    src_dtype, src_device = x.dtype, x.device
    if dtype.kind != "f" and needs_grad(x):
        raise TypeError(f"to: casting a tensor that requires grad to {dtype} would drop its gradient")
    arr = _convert(x.array, src_device, device, dtype)

    def backward(gy):
        return (_convert(gy, device, src_device, src_dtype),)
    return make_tensor(arr, (x,), backward, device=device)


def _convert(a, src, dst, dtype):
    from nbdl import device as dev
    if src == dst and src != "cpu":
        return kernels("elementwise", src).cast(a, dtype)
    host = dev.to_host(a).astype(dtype, copy=(src == dst))
    return dev.from_host(host, dst) if dst != "cpu" else np.asarray(host, order="C")
