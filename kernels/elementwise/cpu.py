"""CPU elementwise family.

These are numpy's own ufuncs and reductions: they are already compiled and
vectorized, their results are deterministic (numpy's pairwise summation runs in a
fixed order), and an @njit copy would add compile time for every
shape/rank/layout combination without making a memory-bound loop faster. The
compute-heavy families (conv, pool, softmax, rnn, ...) are the @njit kernels.
"""
import numpy as np

from nbdl.kernels._checks import check_array
from nbdl.kernels.elementwise import (
    check_axes, check_binary, check_broadcast_to, check_index_values, check_permutation, check_row_indices,
    reduced_axes_for,
)


def add(a, b):
    """a + b, broadcast."""
    check_binary("add", a, b)
    return np.asarray(np.add(a, b))


def sub(a, b):
    """a - b, broadcast."""
    check_binary("sub", a, b)
    return np.asarray(np.subtract(a, b))


def mul(a, b):
    """a * b, broadcast."""
    check_binary("mul", a, b)
    return np.asarray(np.multiply(a, b))


def div(a, b):
    """a / b, broadcast (IEEE: x/0 = inf)."""
    check_binary("div", a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.true_divide(a, b).astype(a.dtype, copy=False))


def scale(x, alpha):
    """alpha * x (a new array of x's dtype)."""
    return np.asarray(np.multiply(x, x.dtype.type(alpha)))


def axpy(alpha, x, y):
    """y += alpha * x, in place."""
    check_binary("axpy", x, y)
    y += x.dtype.type(alpha) * x
    return y


def pow_scalar(x, p):
    """x ** p elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.power(x, x.dtype.type(p)))


def exp(x):
    """e ** x elementwise."""
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(x))


def log(x):
    """Natural log elementwise (log 0 = -inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log(x))


def sqrt(x):
    """Square root elementwise."""
    with np.errstate(invalid="ignore"):
        return np.asarray(np.sqrt(x))


def abs(x):
    """|x| elementwise."""
    return np.asarray(np.abs(x))


def sign(x):
    """sign(x) in {-1, 0, 1} elementwise."""
    return np.asarray(np.sign(x))


def sum_axes(x, axes, keepdims):
    """Sum over ``axes`` (a tuple of ints, negative ones count from the end; none repeated)."""
    check_array("sum_axes", "x", x, contiguous=False)
    axes = check_axes("sum_axes", axes, x.shape)
    return np.asarray(np.sum(x, axis=axes, keepdims=keepdims), order="C")


def sum_to_shape(g, shape):
    """Sum ``g`` over its broadcast axes so the result has ``shape``."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    axes = reduced_axes_for(g.shape, shape)
    return np.asarray(np.sum(g, axis=axes).reshape(shape), order="C")


def broadcast_to(x, shape):
    """A contiguous copy of x broadcast to ``shape``."""
    return np.asarray(np.broadcast_to(x, check_broadcast_to("broadcast_to", x, shape)), order="C")


def permute(x, perm):
    """A contiguous copy with axes reordered by ``perm``."""
    return np.asarray(np.transpose(x, check_permutation("permute", perm, x.shape)), order="C")


def copy(x):
    """A C-contiguous copy of x."""
    return np.array(x, copy=True, order="C")


def copy_into(dst, src):
    """dst[...] = src (same shape and dtype)."""
    check_array("copy_into", "src", src, shape=tuple(dst.shape), dtype=dst.dtype, contiguous=False)
    dst[...] = src
    return dst


def cast(x, dtype):
    """x converted to ``dtype`` (a new array)."""
    return np.asarray(x.astype(dtype))


def fill(x, value):
    """x[...] = value, in place."""
    x[...] = value
    return x


def zeros(shape, dtype):
    """A new zero array of ``shape`` and ``dtype``."""
    return np.zeros(shape, dtype=dtype)


def first_out_of_range(values, n, ignore=None):
    """(i, values[i]) for the first entry of the 1-D int64 array ``values`` outside [0, n)
    that is not ``ignore``, or None when every entry is a valid index into n items.

    Hosts call this before a kernel indexes with ``values`` (no bounds checks in Numba).
    """
    check_array("first_out_of_range", "values", values, ndim=1, dtype=np.int64)
    bad = (values < 0) | (values >= n)
    if ignore is not None:
        bad &= values != ignore
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, int(values[i])


def take_rows(x, idx):
    """x[idx] along axis 0; idx is an int64 array of row indices in [0, x.shape[0])."""
    check_array("take_rows", "x", x, contiguous=False)
    n = check_row_indices("take_rows", idx, x.shape[0] if x.ndim else 0)
    check_index_values("take_rows", first_out_of_range(idx, n), n)
    return np.asarray(np.take(x, idx, axis=0), order="C")


def scatter_add_rows(g, idx, n):
    """The gradient of take_rows: zeros of n rows with g[j] added into row idx[j] (in order)."""
    n = check_row_indices("scatter_add_rows", idx, n)
    check_array("scatter_add_rows", "idx", idx, shape=(g.shape[0],))
    check_index_values("scatter_add_rows", first_out_of_range(idx, n), n)
    out = np.zeros((n,) + tuple(g.shape[1:]), dtype=g.dtype)
    np.add.at(out, idx, g)
    return out
