"""CUDA softmax, log_softmax, cross entropy and nll loss.

Each softmax row (one (outer, inner) position, L elements with stride inner)
is one block: the threads stride over the row and combine their partial max
and sum with a shared-memory tree, in a fixed order (deterministic, no atomics).
The same block-per-sample scheme computes the cross entropy's log-sum-exp;
gradients are one thread per element; mean/sum reductions are one block.
Target values are checked on the device; only a one-element flag comes back.
"""
import math

import numpy as np
from numba import boolean, config, cuda, float32, float64, int64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.elementwise.cuda import first_out_of_range
from nbdl.kernels.softmax import (check_classification, check_loss_grad, check_saved, check_softmax,
                                  check_softmax_backward, check_target_values, split_axis)

MAX_THREADS = 128   # threads per row block (a power of two: the tree halves it)
# At least a warp per row on a GPU; the simulator runs every thread as a Python
# thread, so there short rows get fewer (the kernels handle any power of two).
MIN_THREADS = 4 if config.ENABLE_CUDASIM else 32


def _row_threads(n):
    """Threads per row block: the next power of two >= n, between MIN_THREADS and MAX_THREADS."""
    t = MIN_THREADS
    while t < n and t < MAX_THREADS:
        t *= 2
    return t


@cuda.jit(device=True, inline="always")   # inlined: compile_ptx needs no driver for it
def _block_reduce(buf, v, is_max):
    """Sum (or max) of v over the block's threads, returned to every thread.

    buf: shared array of >= blockDim.x entries; blockDim.x a power of two.
    The tree pairs the same slots every time, so the result is deterministic.
    """
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            if is_max:
                other = buf[tid + half]
                if other > buf[tid]:
                    buf[tid] = other
            else:
                buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    out = buf[0]
    cuda.syncthreads()   # everyone has read buf[0] before buf is reused
    return out


def _make_kernels(dtype):
    """The block-reduction kernels for one float type (shared arrays need a fixed dtype)."""

    @cuda.jit(device=True, inline="always")
    def row_max_and_sum_exp(buf, x, o, i):
        """(m, sum_l exp(x[o, l, i] - m)) with m = max_l x[o, l, i], over the block's threads."""
        m = dtype(-math.inf)
        for l in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            m = max(m, x[o, l, i])
        m = _block_reduce(buf, dtype(m), True)
        s = dtype(0)
        for l in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            s += math.exp(x[o, l, i] - m)
        return m, _block_reduce(buf, s, False)

    @cuda.jit(cache=True)
    def softmax_fwd(x, y, log):
        """One block per (outer, inner) row of x (outer, L, inner)."""
        buf = cuda.shared.array(MAX_THREADS, dtype)
        inner = x.shape[2]
        o = cuda.blockIdx.x // inner
        i = cuda.blockIdx.x - o * inner
        n = x.shape[1]
        m, s = row_max_and_sum_exp(buf, x, o, i)
        log_s = math.log(s)
        inv = dtype(1) / s
        for l in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            if log:
                y[o, l, i] = (x[o, l, i] - m) - log_s     # exact for huge logits
            else:
                y[o, l, i] = math.exp(x[o, l, i] - m) * inv

    @cuda.jit(cache=True)
    def softmax_bwd(gy, y, gx, log):
        """softmax: gx = y (gy - sum(gy y)); log_softmax: gx = gy - exp(y) sum(gy)."""
        buf = cuda.shared.array(MAX_THREADS, dtype)
        inner = y.shape[2]
        o = cuda.blockIdx.x // inner
        i = cuda.blockIdx.x - o * inner
        n = y.shape[1]
        s = dtype(0)
        for l in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            s += gy[o, l, i] if log else gy[o, l, i] * y[o, l, i]
        s = _block_reduce(buf, s, False)
        for l in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            if log:
                gx[o, l, i] = gy[o, l, i] - math.exp(y[o, l, i]) * s
            else:
                gx[o, l, i] = y[o, l, i] * (gy[o, l, i] - s)

    @cuda.jit(cache=True)
    def cross_entropy_fwd(x, target, weight, ignore_index, eps, loss, wt, stats):
        """One block per sample (n, s) of logits x (N, C, S); see kernels.softmax for the loss."""
        buf = cuda.shared.array(MAX_THREADS, dtype)
        ns = x.shape[2]
        n = cuda.blockIdx.x // ns
        s = cuda.blockIdx.x - n * ns
        c = x.shape[1]
        m, sum_exp = row_max_and_sum_exp(buf, x, n, s)
        log_s = math.log(sum_exp)
        t = target[n, s]
        e = dtype(eps)
        smooth = dtype(0)
        if eps > 0 and t != ignore_index:
            acc = dtype(0)
            for k in range(cuda.threadIdx.x, c, cuda.blockDim.x):
                acc += weight[k] * ((m - x[n, k, s]) + log_s)
            smooth = _block_reduce(buf, acc, False)
        if cuda.threadIdx.x == 0:
            sample = n * ns + s
            stats[0, sample] = m
            stats[1, sample] = log_s
            if t == ignore_index:
                loss[n, s] = 0
                wt[n, s] = 0
            else:
                w = weight[t]
                wt[n, s] = w
                loss[n, s] = (dtype(1) - e) * w * ((m - x[n, t, s]) + log_s) + dtype(eps / c) * smooth

    @cuda.jit(cache=True)
    def reduce_loss(loss, wt, code, out, wsum):
        """One block: wsum[0] = sum(wt); out[0] = sum(loss), divided by wsum[0] for the mean."""
        buf = cuda.shared.array(MAX_THREADS, dtype)
        a = dtype(0)
        b = dtype(0)
        for i in range(cuda.threadIdx.x, loss.size, cuda.blockDim.x):
            a += loss[i]
            b += wt[i]
        a = _block_reduce(buf, a, False)
        b = _block_reduce(buf, b, False)
        if cuda.threadIdx.x == 0:
            wsum[0] = b
            if code == 1:
                a = a / b if b != 0 else dtype(0)
            out[0] = a

    return softmax_fwd, softmax_bwd, cross_entropy_fwd, reduce_loss


_KERNELS = {np.dtype(np.float32): _make_kernels(float32), np.dtype(np.float64): _make_kernels(float64)}


def _kernels(dtype):
    return _KERNELS[np.dtype(dtype)]


@cuda.jit(device=True, inline="always")   # inlined: compile_ptx needs no driver for it
def _grad_factor(g, i, code, wsum):
    """Upstream gradient of sample i: g[i] (none), g[0] (sum), g[0] / wsum[0] (mean, 0 if wsum is 0)."""
    if code == 0:
        return g[i]
    if code == 2:
        return g[0]
    return g[0] / wsum[0] if wsum[0] != 0 else g.dtype.type(0)


@cuda.jit(cache=True)
def _cross_entropy_bwd(g, code, x, target, weight, stats, wsum, ignore_index, eps, gx):
    """One thread per element (n, k, s) of gx; see kernels.softmax for the formula."""
    idx = cuda.grid(1)
    _, c, ns = x.shape
    if idx >= x.size:
        return
    n = idx // (c * ns)
    rem = idx - n * c * ns
    k = rem // ns
    s = rem - k * ns
    t = target[n, s]
    if t == ignore_index:
        gx[n, k, s] = 0
        return
    sample = n * ns + s
    a = _grad_factor(g, sample, code, wsum)
    one = x.dtype.type(1)
    e = x.dtype.type(eps)
    e_c = x.dtype.type(eps / c)
    hit = (one - e) * weight[t]
    p = math.exp((x[n, k, s] - stats[0, sample]) - stats[1, sample])
    v = (hit + e_c * wsum[1]) * p - e_c * weight[k]
    if k == t:
        v -= hit
    gx[n, k, s] = a * v


@cuda.jit(cache=True)
def _nll_fwd(x, target, weight, ignore_index, loss, wt):
    """One thread per sample: loss = -w[t] x[n, t, s], wt = w[t] (0 and 0 when ignored)."""
    i = cuda.grid(1)
    ns = x.shape[2]
    if i < target.size:
        n = i // ns
        s = i - n * ns
        t = target[n, s]
        if t == ignore_index:
            loss[n, s] = 0
            wt[n, s] = 0
        else:
            loss[n, s] = -weight[t] * x[n, t, s]
            wt[n, s] = weight[t]


@cuda.jit(cache=True)
def _nll_bwd(g, code, target, weight, wsum, ignore_index, gx):
    """One thread per element (n, k, s): -a w[t] where k is the kept target, else 0."""
    idx = cuda.grid(1)
    _, c, ns = gx.shape
    if idx >= gx.size:
        return
    n = idx // (c * ns)
    rem = idx - n * c * ns
    k = rem // ns
    s = rem - k * ns
    t = target[n, s]
    if t == ignore_index or t != k:
        gx[n, k, s] = 0
    else:
        gx[n, k, s] = -_grad_factor(g, n * ns + s, code, wsum) * weight[t]


@cuda.jit(cache=True)
def _fill(a, v):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = v


@cuda.jit(cache=True)
def _set_class_weight_sum(weight, wsum):
    """wsum[1] = sum of the class weights (one thread, fixed order; C is small)."""
    if cuda.grid(1) == 0:
        acc = weight.dtype.type(0)
        for k in range(weight.size):
            acc += weight[k]
        wsum[1] = acc


def _flat(a):
    return a.reshape(a.size)


def _softmax(op, x, axis, log):
    axis = check_softmax(op, x, axis)
    y = empty(x.shape, x.dtype)
    if x.size:
        shape = split_axis(x.shape, axis) if len(x.shape) else (1, 1, 1)
        fwd = _kernels(x.dtype)[0]
        fwd[shape[0] * shape[2], _row_threads(shape[1])](x.reshape(shape), y.reshape(shape), log)
    return y


def _softmax_backward(op, gy, y, axis, log):
    axis = check_softmax_backward(op, gy, y, axis)
    gx = empty(y.shape, y.dtype)
    if y.size:
        shape = split_axis(y.shape, axis) if len(y.shape) else (1, 1, 1)
        bwd = _kernels(y.dtype)[1]
        bwd[shape[0] * shape[2], _row_threads(shape[1])](gy.reshape(shape), y.reshape(shape),
                                                         gx.reshape(shape), log)
    return gx


def softmax_forward(x, axis):
    """softmax of x along ``axis``; same shape and dtype."""
    return _softmax("softmax_forward", x, axis, False)


def softmax_backward(gy, y, axis):
    """gx = y * (gy - sum(gy * y, axis)), from the forward output y."""
    return _softmax_backward("softmax_backward", gy, y, axis, False)


def log_softmax_forward(x, axis):
    """log_softmax of x along ``axis``; same shape and dtype."""
    return _softmax("log_softmax_forward", x, axis, True)


def log_softmax_backward(gy, y, axis):
    """gx = gy - exp(y) * sum(gy, axis), from the forward output y."""
    return _softmax_backward("log_softmax_backward", gy, y, axis, True)


# --- losses ---------------------------------------------------------------------

def _weights(weight, c, dtype):
    if weight is not None:
        return weight
    w = empty((c,), dtype)
    _fill[grid1d(c)](w, 1.0)
    return w


def _reduce(loss, wt, code, dtype, wsum):
    """The reduced loss () and wsum[0]; loss itself for reduction 'none'."""
    out = empty((), dtype)
    _kernels(dtype)[3][1, MAX_THREADS](_flat(loss), _flat(wt), code, _flat(out), wsum)
    return out


def cross_entropy_forward(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Fused log_softmax + nll over class axis 1 (PyTorch's cross_entropy, class-index targets).

    x (N, C, d...) float, target (N, d...) int64, weight (C,) or None.
    Returns (loss, stats, wsum): loss () for mean/sum or (N, d...) for none; stats (2, N*S)
    each sample's max logit and log(sum(exp(x - max))); wsum (2,) = [sum of kept target
    weights, sum of class weights]. stats and wsum are for cross_entropy_backward.
    """
    op = "cross_entropy_forward"
    n, c, s, code, eps = check_classification(op, x, target, weight, ignore_index, reduction, label_smoothing)
    check_target_values(op, first_out_of_range(_flat(target), c, ignore_index), target.shape, c,
                        ignore_index)
    w = _weights(weight, c, x.dtype)
    loss = empty((n, s), x.dtype)
    wt = empty((n, s), x.dtype)
    stats = empty((2, n * s), x.dtype)
    wsum = empty((2,), x.dtype)
    _set_class_weight_sum[1, 1](w, wsum)
    if n * s:
        _kernels(x.dtype)[2][n * s, _row_threads(c)](x.reshape((n, c, s)), target.reshape((n, s)), w,
                                                      ignore_index, eps, loss, wt, stats)
    out = _reduce(loss, wt, code, x.dtype, wsum)
    return (loss.reshape(tuple(target.shape)) if code == 0 else out), stats, wsum


def cross_entropy_backward(gloss, x, target, weight, stats, wsum, ignore_index=-100, label_smoothing=0.0,
                           reduction="mean"):
    """Gradient of cross_entropy_forward's loss w.r.t. x (same shape as x)."""
    op = "cross_entropy_backward"
    n, c, s, code, eps = check_classification(op, x, target, weight, ignore_index, reduction, label_smoothing)
    check_loss_grad(op, gloss, x, code, n, s)
    check_saved(op, x, n * s, wsum, stats)
    gx = empty(x.shape, x.dtype)
    if x.size:
        _cross_entropy_bwd[grid1d(x.size)](_flat(gloss), code, x.reshape((n, c, s)), target.reshape((n, s)),
                                           _weights(weight, c, x.dtype), stats, wsum,
                                           ignore_index, eps, gx.reshape((n, c, s)))
    return gx


def nll_loss_forward(x, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities x (N, C, d...) at int64 targets (N, d...).

    Returns (loss, wsum): loss () for mean/sum or (N, d...) for none; wsum (2,) as in
    cross_entropy_forward (wsum[0] is the mean's denominator).
    """
    op = "nll_loss_forward"
    n, c, s, code, _ = check_classification(op, x, target, weight, ignore_index, reduction)
    check_target_values(op, first_out_of_range(_flat(target), c, ignore_index), target.shape, c,
                        ignore_index)
    w = _weights(weight, c, x.dtype)
    loss = empty((n, s), x.dtype)
    wt = empty((n, s), x.dtype)
    wsum = empty((2,), x.dtype)
    _set_class_weight_sum[1, 1](w, wsum)
    if n * s:
        _nll_fwd[grid1d(n * s)](x.reshape((n, c, s)), target.reshape((n, s)), w, ignore_index, loss, wt)
    out = _reduce(loss, wt, code, x.dtype, wsum)
    return (loss.reshape(tuple(target.shape)) if code == 0 else out), wsum


def nll_loss_backward(gloss, x, target, weight, wsum, ignore_index=-100, reduction="mean"):
    """Gradient of nll_loss_forward's loss w.r.t. x (same shape as x)."""
    op = "nll_loss_backward"
    n, c, s, code, _ = check_classification(op, x, target, weight, ignore_index, reduction)
    check_loss_grad(op, gloss, x, code, n, s)
    check_saved(op, x, n * s, wsum)
    gx = empty(x.shape, x.dtype)
    if x.size:
        _nll_bwd[grid1d(x.size)](_flat(gloss), code, target.reshape((n, s)), _weights(weight, c, x.dtype),
                                 wsum, ignore_index, gx.reshape((n, c, s)))
    return gx


def ptx_signatures():
    """Every kernel with the argument types the launchers pass, float32 and float64."""
    sigs = []
    for f in (float32, float64):
        v, m3, t2 = f[::1], f[:, :, ::1], int64[:, ::1]
        fwd, bwd, ce, red = _KERNELS[np.dtype(f.name)]
        sigs += [
            (fwd, (m3, m3, boolean)),
            (bwd, (m3, m3, m3, boolean)),
            (ce, (m3, t2, v, int64, float64, f[:, ::1], f[:, ::1], f[:, ::1])),   # stats (2, N*S)
            (red, (v, v, int64, v, v)),
            (_cross_entropy_bwd, (v, int64, m3, t2, v, f[:, ::1], v, int64, float64, m3)),
            (_nll_fwd, (m3, t2, v, int64, f[:, ::1], f[:, ::1])),
            (_nll_bwd, (v, int64, t2, v, v, int64, m3)),
            (_fill, (v, float64)),
            (_set_class_weight_sum, (v, v)),
        ]
    return sigs
