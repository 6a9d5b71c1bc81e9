"""Batch and layer normalization on CUDA.

Reductions are one block per channel (batch norm) or per row (layer norm): each
thread sums a fixed strided slice in float64, then a shared-memory tree adds the
partial sums in a fixed order. No atomics, so results are deterministic. The
elementwise passes are one thread per element; layer norm's weight/bias
gradients are one thread per column looping over the rows in order.
"""
import math

import numpy as np
from numba import config, cuda, float64

from .. import norm as _norm
from .._cuda import grid1d

# Threads per reduction block (a power of two: the tree halves it). The simulator
# runs every thread as a Python thread, so it gets small blocks; the code is the same.
_T = 8 if config.ENABLE_CUDASIM else 128

__all__ = ["batch_norm_forward", "batch_norm_backward", "layer_norm_forward", "layer_norm_backward"]


@cuda.jit(device=True, inline=True)
def _block_sum(buf, tid, v):
    """Sum of v over the block's _T threads, returned to every thread (fixed tree order)."""
    buf[tid] = v
    cuda.syncthreads()
    step = _T // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()   # everyone has read buf[0] before the buffer is reused
    return total


# ---- batch norm ------------------------------------------------------------------

@cuda.jit(cache=True)
def _bn_batch_stats(x, rmean, rvar, counter, update_running, cumulative, momentum, eps,
                    save_mean, save_invstd):
    """Block c: mean and biased variance of channel c over (N, L) (two passes);
    updates the running statistics (factor momentum, or 1 / (counter + 1))."""
    N, C, L = x.shape
    M = N * L
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(_T, float64)
    s = 0.0
    for k in range(tid, M, _T):
        s += x[k // L, c, k % L]
    mean = _block_sum(buf, tid, s) / M
    q = 0.0
    for k in range(tid, M, _T):
        d = x[k // L, c, k % L] - mean
        q += d * d
    var = _block_sum(buf, tid, q) / M
    if tid == 0:
        save_mean[c] = mean
        save_invstd[c] = 1.0 / math.sqrt(var + eps)
        if update_running:
            f = 1.0 / (counter[0] + 1) if cumulative else momentum
            rmean[c] = (1.0 - f) * rmean[c] + f * mean
            rvar[c] = (1.0 - f) * rvar[c] + f * var * M / (M - 1)


@cuda.jit(cache=True)
def _bn_running_stats(rmean, rvar, eps, save_mean, save_invstd):
    """Evaluation: the running statistics, one thread per channel."""
    c = cuda.grid(1)
    if c < rmean.shape[0]:
        save_mean[c] = rmean[c]
        save_invstd[c] = 1.0 / math.sqrt(rvar[c] + eps)


@cuda.jit(cache=True)
def _increment(counter):
    if cuda.grid(1) == 0:
        counter[0] += 1


@cuda.jit(cache=True)
def _bn_normalize(x, w, b, has_w, has_b, save_mean, save_invstd, y):
    """y = (x - mean_c) * invstd_c * w_c + b_c, one thread per element."""
    N, C, L = x.shape
    t = cuda.grid(1)
    if t >= N * C * L:
        return
    l = t % L
    c = (t // L) % C
    n = t // (L * C)
    v = (x[n, c, l] - save_mean[c]) * save_invstd[c]
    if has_w:
        v *= w[c]
    if has_b:
        v += b[c]
    y[n, c, l] = v


@cuda.jit(cache=True)
def _bn_grad_sums(gy, x, save_mean, save_invstd, sums, gw, gb):
    """Block c: sums[0, c] = sum gy, sums[1, c] = sum gy * (x - mean); gb, gw from them."""
    N, C, L = x.shape
    M = N * L
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(_T, float64)
    mu = save_mean[c]
    sg = 0.0
    sgx = 0.0
    for k in range(tid, M, _T):
        g = gy[k // L, c, k % L]
        sg += g
        sgx += g * (x[k // L, c, k % L] - mu)
    sg = _block_sum(buf, tid, sg)
    sgx = _block_sum(buf, tid, sgx)
    if tid == 0:
        sums[0, c] = sg
        sums[1, c] = sgx
        gb[c] = sg
        gw[c] = sgx * save_invstd[c]


@cuda.jit(cache=True)
def _bn_grad_input(gy, x, w, has_w, save_mean, save_invstd, sums, training, gx):
    """gx = w * invstd * (gy - mean(gy) - (x - mean) * invstd^2 * mean(gy * (x - mean)))
    with batch statistics; w * invstd * gy with running statistics."""
    N, C, L = x.shape
    M = N * L
    t = cuda.grid(1)
    if t >= N * C * L:
        return
    l = t % L
    c = (t // L) % C
    n = t // (L * C)
    inv = save_invstd[c]
    a = inv * w[c] if has_w else inv
    g = gy[n, c, l]
    if training:
        g = g - sums[0, c] / M - (x[n, c, l] - save_mean[c]) * (inv * inv * sums[1, c] / M)
    gx[n, c, l] = g * a


# ---- layer norm ------------------------------------------------------------------

@cuda.jit(cache=True)
def _ln_forward(x, w, b, has_w, has_b, eps, y, save_mean, save_invstd):
    """Block m: mean and variance of row m (two passes), then y for the row."""
    M, D = x.shape
    m = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(_T, float64)
    s = 0.0
    for d in range(tid, D, _T):
        s += x[m, d]
    mean = _block_sum(buf, tid, s) / D
    q = 0.0
    for d in range(tid, D, _T):
        v = x[m, d] - mean
        q += v * v
    invstd = 1.0 / math.sqrt(_block_sum(buf, tid, q) / D + eps)
    for d in range(tid, D, _T):
        v = (x[m, d] - mean) * invstd
        if has_w:
            v *= w[d]
        if has_b:
            v += b[d]
        y[m, d] = v
    if tid == 0:
        save_mean[m] = mean
        save_invstd[m] = invstd


@cuda.jit(cache=True)
def _ln_grad_input(gy, x, w, has_w, save_mean, save_invstd, gx):
    """Block m: g = gy * w; gx = invstd * (g - mean(g) - xhat * mean(g * xhat))."""
    M, D = x.shape
    m = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(_T, float64)
    mu = save_mean[m]
    inv = save_invstd[m]
    sg = 0.0
    sgx = 0.0
    for d in range(tid, D, _T):
        g = gy[m, d] * w[d] if has_w else gy[m, d]
        sg += g
        sgx += g * (x[m, d] - mu) * inv
    mg = _block_sum(buf, tid, sg) / D
    mgx = _block_sum(buf, tid, sgx) / D
    for d in range(tid, D, _T):
        g = gy[m, d] * w[d] if has_w else gy[m, d]
        gx[m, d] = inv * (g - mg - (x[m, d] - mu) * inv * mgx)


@cuda.jit(cache=True)
def _ln_grad_params(gy, x, save_mean, save_invstd, gw, gb):
    """Thread d: gw[d] = sum_m gy * xhat, gb[d] = sum_m gy, rows in order."""
    M, D = x.shape
    d = cuda.grid(1)
    if d >= D:
        return
    sw = 0.0
    sb = 0.0
    for m in range(M):
        g = gy[m, d]
        sb += g
        sw += g * (x[m, d] - save_mean[m]) * save_invstd[m]
    gw[d] = sw
    gb[d] = sb


# ---- host functions --------------------------------------------------------------

def _or_dummy(a, dtype):
    return (a, True) if a is not None else (cuda.device_array(1, dtype=dtype), False)


def _launch(kernel, n, *args):
    """One thread per item; small launches get small blocks (a warp at least)."""
    if n > 0:
        blocks, threads = grid1d(n)
        kernel[blocks, threads](*args)


def batch_norm_forward(x, weight, bias, running_mean, running_var, num_batches_tracked, training,
                       momentum, eps):
    """Batch normalization of x (N, C, L) per channel -> (y, save_mean (C,), save_invstd (C,)).

    training=True: batch statistics (biased variance); when running_mean/running_var
    are given they are updated in place, r = (1 - f) * r + f * batch_stat with the
    unbiased variance, f = momentum, or 1 / num_batches_tracked when momentum is
    None. num_batches_tracked (int64, one value, or None) is incremented in place.
    training=False: the running statistics normalize. weight/bias (C,) or None.
    """
    op = "batch_norm_forward"
    momentum, eps = _norm.check_batch_norm_forward(op, x, weight, bias, running_mean, running_var,
                                                   num_batches_tracked, training, momentum, eps)
    n, c, l = x.shape
    y = cuda.device_array(x.shape, dtype=x.dtype)
    save_mean = cuda.device_array(c, dtype=x.dtype)
    save_invstd = cuda.device_array(c, dtype=x.dtype)
    update = bool(training) and running_mean is not None
    counter = num_batches_tracked.reshape(1) if num_batches_tracked is not None else None
    if n * l == 0:
        if update and counter is not None:
            _increment[1, 1](counter)
        return y, save_mean, save_invstd
    if training:
        rm, _ = _or_dummy(running_mean, x.dtype)
        rv, _ = _or_dummy(running_var, x.dtype)
        cnt = counter if counter is not None else cuda.device_array(1, dtype=np.int64)
        _bn_batch_stats[c, _T](x, rm, rv, cnt, update, momentum is None,
                               0.0 if momentum is None else momentum, eps, save_mean, save_invstd)
        if update and counter is not None:
            _increment[1, 1](counter)   # after the stats kernel read it (stream order)
    else:
        _launch(_bn_running_stats, c, running_mean, running_var, eps, save_mean, save_invstd)
    w, has_w = _or_dummy(weight, x.dtype)
    b, has_b = _or_dummy(bias, x.dtype)
    _launch(_bn_normalize, y.size, x, w, b, has_w, has_b, save_mean, save_invstd, y)
    return y, save_mean, save_invstd


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, training):
    """Gradients of batch_norm_forward -> (gx (N, C, L), gweight (C,) or None, gbias (C,)).

    training: whether the forward used batch statistics (then they depend on x).
    """
    op = "batch_norm_backward"
    _norm.check_batch_norm_backward(op, gy, x, weight, save_mean, save_invstd, training)
    c = x.shape[1]
    gx = cuda.device_array(x.shape, dtype=x.dtype)
    gw = cuda.device_array(c, dtype=x.dtype)
    gb = cuda.device_array(c, dtype=x.dtype)
    sums = cuda.device_array((2, c), dtype=np.float64)
    _bn_grad_sums[c, _T](gy, x, save_mean, save_invstd, sums, gw, gb)
    w, has_w = _or_dummy(weight, x.dtype)
    _launch(_bn_grad_input, gx.size, gy, x, w, has_w, save_mean, save_invstd, sums, bool(training), gx)
    return gx, (gw if weight is not None else None), gb


def layer_norm_forward(x, weight, bias, eps):
    """Layer normalization of each row of x (M, D) -> (y, save_mean (M,), save_invstd (M,)).

    y = (x - mean_row) / sqrt(var_row + eps) * weight + bias; weight/bias (D,) or None.
    """
    op = "layer_norm_forward"
    eps = _norm.check_layer_norm_forward(op, x, weight, bias, eps)
    m, _ = x.shape
    y = cuda.device_array(x.shape, dtype=x.dtype)
    save_mean = cuda.device_array(m, dtype=x.dtype)
    save_invstd = cuda.device_array(m, dtype=x.dtype)
    w, has_w = _or_dummy(weight, x.dtype)
    b, has_b = _or_dummy(bias, x.dtype)
    if m > 0:
        _ln_forward[m, _T](x, w, b, has_w, has_b, eps, y, save_mean, save_invstd)
    return y, save_mean, save_invstd


def layer_norm_backward(gy, x, weight, save_mean, save_invstd):
    """Gradients of layer_norm_forward -> (gx (M, D), gweight (D,) or None, gbias (D,))."""
    op = "layer_norm_backward"
    _norm.check_layer_norm_backward(op, gy, x, weight, save_mean, save_invstd)
    m, d = x.shape
    gx = cuda.device_array(x.shape, dtype=x.dtype)
    gw = cuda.device_array(d, dtype=x.dtype)
    gb = cuda.device_array(d, dtype=x.dtype)
    w, has_w = _or_dummy(weight, x.dtype)
    if m > 0:
        _ln_grad_input[m, _T](gy, x, w, has_w, save_mean, save_invstd, gx)
    _launch(_ln_grad_params, d, gy, x, save_mean, save_invstd, gw, gb)
    return gx, (gw if weight is not None else None), gb


def ptx_signatures():
    """(kernel, signature) pairs the launchers use, float32 and float64."""
    from numba import boolean, float32, int64
    out = [(_increment, (int64[::1],))]
    for f in (float32, float64):
        a1, a2, a3 = f[::1], f[:, ::1], f[:, :, ::1]
        out += [
            (_bn_batch_stats, (a3, a1, a1, int64[::1], boolean, boolean, float64, float64, a1, a1)),
            (_bn_running_stats, (a1, a1, float64, a1, a1)),
            (_bn_normalize, (a3, a1, a1, boolean, boolean, a1, a1, a3)),
            (_bn_grad_sums, (a3, a3, a1, a1, float64[:, ::1], a1, a1)),
            (_bn_grad_input, (a3, a3, a1, boolean, a1, a1, float64[:, ::1], boolean, a3)),
            (_ln_forward, (a2, a1, a1, boolean, boolean, float64, a2, a1, a1)),
            (_ln_grad_input, (a2, a2, a1, boolean, a1, a1, a2)),
            (_ln_grad_params, (a2, a2, a1, a1, a1, a1)),
        ]
    return out
