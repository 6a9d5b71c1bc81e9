"""CUDA elementwise family: broadcasting arithmetic, reductions and copies.

Every kernel indexes a flat output with one thread per element. Arrays of up to
MAX_DIMS axes are described by (shape, strides) tuples padded to MAX_DIMS axes, with
stride 0 on a broadcast axis, so one compiled kernel serves every rank and
broadcast pattern. Reductions give each output element to one thread, which sums
its inputs in a fixed order: deterministic, no atomics. A few outputs of many inputs
each (a loss summed to a scalar) are first cut into partial sums, a split fixed by the
shapes alone, so the bits do not depend on the GPU (see _sum_into).
"""
import math

import numpy as np
from numba import cuda, float32, float64, int64, types

from nbdl.kernels._checks import check_array
from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.elementwise import (
    MAX_DIMS, OPS, broadcast_strides, check_axes, check_binary, check_broadcast_to, check_permutation,
    check_index_values, check_rank, check_row_indices, contiguous_strides, padded, reduced_axes_for,
)

_UNARY = {"exp": 0, "log": 1, "sqrt": 2, "abs": 3, "sign": 4, "pow": 5, "scale": 6, "copy": 7}


@cuda.jit(device=True, inline=True)
def _offset(i, shape, strides):
    """Memory offset of flat index i of a C-ordered ``shape`` read through ``strides``."""
    off = 0
    for d in range(MAX_DIMS - 1, -1, -1):
        n = shape[d]
        off += (i % n) * strides[d]
        i //= n
    return off


@cuda.jit(cache=True)
def _binary(out, a, b, shape, astr, bstr, op):
    i = cuda.grid(1)
    if i < out.size:
        x = a[_offset(i, shape, astr)]
        y = b[_offset(i, shape, bstr)]
        if op == 0:
            out[i] = x + y
        elif op == 1:
            out[i] = x - y
        elif op == 2:
            out[i] = x * y
        else:
            out[i] = x / y


@cuda.jit(cache=True)
def _strided_copy(out, a, shape, astr):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[_offset(i, shape, astr)]


@cuda.jit(cache=True)
def _unary(out, x, op, p):
    i = cuda.grid(1)
    if i < out.size:
        v = x[i]
        if op == 0:
            out[i] = math.exp(v)
        elif op == 1:
            out[i] = math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)
        elif op == 2:
            out[i] = math.sqrt(v) if v >= 0 else math.nan
        elif op == 3:
            out[i] = math.fabs(v)
        elif op == 4:
            out[i] = 1 if v > 0 else (-1 if v < 0 else v)     # sign; keeps 0 and NaN like numpy
        elif op == 5:
            out[i] = v ** p
        elif op == 6:
            out[i] = v * p
        else:
            out[i] = v


@cuda.jit(cache=True)
def _axpy(y, x, alpha):
    i = cuda.grid(1)
    if i < y.size:
        y[i] += alpha * x[i]


@cuda.jit(cache=True)
def _fill(x, value):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = value


@cuda.jit(cache=True)
def _reduce_sum(out, x, kshape, kstr, rshape, rstr, nred):
    """out[o] = sum over the reduced sub-space of x, in index order (one thread per o)."""
    o = cuda.grid(1)
    if o < out.size:
        base = _offset(o, kshape, kstr)
        acc = x[base] * 0
        for r in range(nred):
            acc += x[base + _offset(r, rshape, rstr)]
        out[o] = acc


@cuda.jit(cache=True)
def _reduce_sum_parts(part, x, kshape, kstr, rshape, rstr, nred, parts):
    """part[o * parts + p] = the sum of output o's reduced values p, p + parts, p + 2 parts,
    ..., in that order: neighbouring threads read neighbouring values."""
    i = cuda.grid(1)
    if i < part.size:
        o = i // parts
        p = i - o * parts
        base = _offset(o, kshape, kstr)
        acc = x[base] * 0
        for r in range(p, nred, parts):
            acc += x[base + _offset(r, rshape, rstr)]
        part[i] = acc


@cuda.jit(cache=True)
def _take_rows(out, x, idx):
    """out[j, c] = x[idx[j], c] for 2-D views (rows, row_len)."""
    i = cuda.grid(1)
    row_len = out.shape[1]
    if i < out.shape[0] * row_len:
        j = i // row_len
        c = i - j * row_len
        out[j, c] = x[idx[j], c]


@cuda.jit(cache=True)
def _scatter_add_rows(out, g, idx):
    """out[idx[j], c] += g[j, c]; one thread per column c walks j in order (no races)."""
    c = cuda.grid(1)
    if c < out.shape[1]:
        for j in range(g.shape[0]):
            out[idx[j], c] += g[j, c]


@cuda.jit(cache=True)
def _find_out_of_range(values, n, has_ignore, ignore, first_bad):
    """first_bad[0] = smallest i with values[i] outside [0, n) and not the ignored value
    (an integer atomic min: the result does not depend on the order)."""
    i = cuda.grid(1)
    if i < values.size:
        v = values[i]
        if (v < 0 or v >= n) and not (has_ignore and v == ignore):
            cuda.atomic.min(first_bad, 0, i)


def _flat(a):
    return a.reshape(a.size) if a.size else a.reshape(0)


def _launch_binary(op, a, b):
    shape = check_binary(op, a, b)
    out = empty(shape, a.dtype)
    if out.size:
        pshape, astr = padded(shape, broadcast_strides(a.shape, shape))
        _, bstr = padded(shape, broadcast_strides(b.shape, shape))
        blocks, threads = grid1d(out.size)
        _binary[blocks, threads](_flat(out), _flat(a), _flat(b), pshape, astr, bstr, OPS[op])
    return out


def add(a, b):
    """a + b, broadcast."""
    return _launch_binary("add", a, b)


def sub(a, b):
    """a - b, broadcast."""
    return _launch_binary("sub", a, b)


def mul(a, b):
    """a * b, broadcast."""
    return _launch_binary("mul", a, b)


def div(a, b):
    """a / b, broadcast (IEEE: x/0 = inf)."""
    return _launch_binary("div", a, b)


def _launch_unary(x, op, p=0.0, dtype=None):
    check_array(op, "x", x)
    out = empty(x.shape, dtype or x.dtype)
    if out.size:
        blocks, threads = grid1d(out.size)
        _unary[blocks, threads](_flat(out), _flat(x), _UNARY[op], float(p))
    return out


def scale(x, alpha):
    """alpha * x (a new array of x's dtype)."""
    return _launch_unary(x, "scale", alpha)


def axpy(alpha, x, y):
    """y += alpha * x, in place."""
    check_binary("axpy", x, y)
    check_array("axpy", "x", x, shape=tuple(y.shape))
    if y.size:
        blocks, threads = grid1d(y.size)
        _axpy[blocks, threads](_flat(y), _flat(x), float(alpha))
    return y


def pow_scalar(x, p):
    """x ** p elementwise."""
    return _launch_unary(x, "pow", p)


def exp(x):
    """e ** x elementwise."""
    return _launch_unary(x, "exp")


def log(x):
    """Natural log elementwise (log 0 = -inf)."""
    return _launch_unary(x, "log")


def sqrt(x):
    """Square root elementwise."""
    return _launch_unary(x, "sqrt")


def abs(x):
    """|x| elementwise."""
    return _launch_unary(x, "abs")


def sign(x):
    """sign(x) in {-1, 0, 1} elementwise."""
    return _launch_unary(x, "sign")


def sum_axes(x, axes, keepdims):
    """Sum over ``axes`` (a tuple of ints, negative ones count from the end; none repeated)."""
    check_array("sum_axes", "x", x)
    shape = tuple(x.shape)
    axes = check_axes("sum_axes", axes, shape)
    strides = contiguous_strides(shape)
    kept = [d for d in range(len(shape)) if d not in axes]
    out_shape = tuple(1 if d in axes else s for d, s in enumerate(shape)) if keepdims \
        else tuple(shape[d] for d in kept)
    out = empty(out_shape, x.dtype)
    if out.size and x.size == 0:       # sum over an empty axis
        return fill(out, 0)
    if out.size:
        nred = int(np.prod([shape[d] for d in axes], dtype=np.int64))
        kshape, kstr = padded([shape[d] for d in kept], [strides[d] for d in kept])
        rshape, rstr = padded([shape[d] for d in axes], [strides[d] for d in axes])
        _sum_into(_flat(out), _flat(x), kshape, kstr, rshape, rstr, nred)
    return out


_SPLIT_MIN = 4096        # values per output from which a sum is first cut into partial sums
_PART_MIN = 64           # values per partial sum, at least
_SPLIT_THREADS = 1 << 16  # threads the partial sums of all outputs aim at


def _sum_into(out, x, kshape, kstr, rshape, rstr, nred):
    """out (flat, n) = the sums of x's reduced sub-spaces. One thread per output; but an
    output of many values gets `parts` threads first, each summing every parts-th value
    (one thread summing a 400,000-value loss took 0.3 s on an H100: a chain of dependent
    memory reads), and the partial sums are summed the same way in turn. The split
    depends on the shapes only: the same bits on every GPU."""
    n = out.size
    parts = min(nred // _PART_MIN, _SPLIT_THREADS // n) if nred >= _SPLIT_MIN else 1
    if parts < 2:
        blocks, threads = grid1d(n)
        _reduce_sum[blocks, threads](out, x, kshape, kstr, rshape, rstr, nred)
        return
    part = empty((n * parts,), x.dtype)
    blocks, threads = grid1d(part.size)
    _reduce_sum_parts[blocks, threads](part, x, kshape, kstr, rshape, rstr, nred, parts)
    pk, pks = padded([n], [parts])
    pr, prs = padded([parts], [1])
    _sum_into(out, part, pk, pks, pr, prs, parts)


def sum_to_shape(g, shape):
    """Sum ``g`` over its broadcast axes so the result has ``shape``."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    axes = reduced_axes_for(g.shape, shape)
    return sum_axes(g, axes, keepdims=False).reshape(shape)


def broadcast_to(x, shape):
    """A contiguous copy of x broadcast to ``shape``."""
    check_array("broadcast_to", "x", x)
    shape = check_broadcast_to("broadcast_to", x, shape)
    out = empty(shape, x.dtype)
    if out.size:
        pshape, xstr = padded(shape, broadcast_strides(x.shape, shape))
        blocks, threads = grid1d(out.size)
        _strided_copy[blocks, threads](_flat(out), _flat(x), pshape, xstr)
    return out


def permute(x, perm):
    """A contiguous copy with axes reordered by ``perm``."""
    check_array("permute", "x", x)
    perm = check_permutation("permute", perm, tuple(x.shape))
    strides = contiguous_strides(x.shape)
    shape = tuple(x.shape[p] for p in perm)
    out = empty(shape, x.dtype)
    if out.size:
        pshape, xstr = padded(shape, [strides[p] for p in perm])
        blocks, threads = grid1d(out.size)
        _strided_copy[blocks, threads](_flat(out), _flat(x), pshape, xstr)
    return out


def copy(x):
    """A C-contiguous copy of x."""
    return _launch_unary(x, "copy")


def copy_into(dst, src):
    """dst[...] = src (same shape and dtype)."""
    check_array("copy_into", "src", src, shape=tuple(dst.shape), dtype=dst.dtype)
    check_array("copy_into", "dst", dst)
    check_rank("copy_into", tuple(dst.shape))
    if dst.size:
        pshape, sstr = padded(tuple(dst.shape), contiguous_strides(dst.shape))
        blocks, threads = grid1d(dst.size)
        _strided_copy[blocks, threads](_flat(dst), _flat(src), pshape, sstr)
    return dst


def cast(x, dtype):
    """x converted to ``dtype`` (a new array)."""
    return _launch_unary(x, "copy", dtype=np.dtype(dtype))


def fill(x, value):
    """x[...] = value, in place."""
    check_array("fill", "x", x)
    if x.size:
        blocks, threads = grid1d(x.size)
        _fill[blocks, threads](_flat(x), value)
    return x


def zeros(shape, dtype):
    """A new zero array of ``shape`` and ``dtype``."""
    return fill(empty(shape, dtype), 0)


def _rows2d(a, n):
    return a.reshape(n, a.size // n if n else 0)


def first_out_of_range(values, n, ignore=None):
    """(i, values[i]) for the first entry of the 1-D int64 array ``values`` outside [0, n)
    that is not ``ignore``, or None when every entry is a valid index into n items.

    Hosts call this before a kernel indexes with ``values`` (no bounds checks in Numba);
    one int comes back from the device (two when an entry is bad).
    """
    check_array("first_out_of_range", "values", values, ndim=1, dtype=np.int64)
    if values.size == 0:
        return None
    first_bad = cuda.to_device(np.array([values.size], np.int64))
    _find_out_of_range[grid1d(values.size)](values, n, ignore is not None, 0 if ignore is None else ignore,
                                            first_bad)
    i = int(first_bad.copy_to_host()[0])
    if i == values.size:
        return None
    return i, int(values[i:i + 1].copy_to_host()[0])


def take_rows(x, idx):
    """x[idx] along axis 0; idx is an int64 device array of row indices in [0, x.shape[0])."""
    check_array("take_rows", "x", x)
    n = check_row_indices("take_rows", idx, x.shape[0] if len(x.shape) else 0)
    check_index_values("take_rows", first_out_of_range(idx, n), n)
    out = empty((idx.shape[0],) + tuple(x.shape[1:]), x.dtype)
    if out.size:
        blocks, threads = grid1d(out.size)
        _take_rows[blocks, threads](_rows2d(out, out.shape[0]), _rows2d(x, x.shape[0]), idx)
    return out


def scatter_add_rows(g, idx, n):
    """The gradient of take_rows: zeros of n rows with g[j] added into row idx[j] (in order)."""
    n = check_row_indices("scatter_add_rows", idx, n)
    check_array("scatter_add_rows", "idx", idx, shape=(g.shape[0],))
    check_array("scatter_add_rows", "g", g)
    check_index_values("scatter_add_rows", first_out_of_range(idx, n), n)
    out = zeros((n,) + tuple(g.shape[1:]), g.dtype)
    if g.size:
        row_len = g.size // g.shape[0]
        blocks, threads = grid1d(row_len)
        _scatter_add_rows[blocks, threads](_rows2d(out, n), _rows2d(g, g.shape[0]), idx)
    return out


def ptx_signatures():
    """(kernel, signature) for every kernel above, as the launchers call them."""
    tup = types.UniTuple(int64, MAX_DIMS)
    sigs = []
    for f in (float32, float64):
        v = f[::1]
        m = f[:, ::1]
        sigs += [
            (_binary, (v, v, v, tup, tup, tup, int64)),
            (_strided_copy, (v, v, tup, tup)),
            (_unary, (v, v, int64, float64)),
            (_axpy, (v, v, float64)),
            (_fill, (v, float64)),
            (_fill, (v, int64)),
            (_reduce_sum, (v, v, tup, tup, tup, tup, int64)),
            (_reduce_sum_parts, (v, v, tup, tup, tup, tup, int64, int64)),
            (_take_rows, (m, m, int64[::1])),
            (_scatter_add_rows, (m, m, int64[::1])),
        ]
    sigs.append((_find_out_of_range, (int64[::1], int64, types.boolean, int64, int64[::1])))
    sigs.append((_unary, (float32[::1], float64[::1], int64, float64)))
    sigs.append((_unary, (float64[::1], float32[::1], int64, float64)))
    return sigs
