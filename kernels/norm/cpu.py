"""Batch and layer normalization on the CPU.

Batch norm runs one ``prange`` task per channel: the channel's statistics and its
normalization are computed by one thread while the channel's values are still in
its cache, and every reduction has a fixed order (deterministic). Layer norm runs
one task per row; its weight/bias gradients sum fixed blocks of rows into
per-block slots, then add the slots in order (never a shared accumulator).
Sums are float64; ``reassoc`` lets them vectorize with a fixed lane split.
"""
import math

import numpy as np
from numba import njit, prange

from .. import norm as _norm

_JIT = dict(cache=True, parallel=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
_ROWS_PER_BLOCK = 16   # layer-norm parameter-gradient partial sums: fixed, not per thread

__all__ = ["batch_norm_forward", "batch_norm_backward", "layer_norm_forward", "layer_norm_backward"]


# ---- batch norm kernels --------------------------------------------------------------

@njit(**_JIT)
def _bn_forward(x, w, b, has_w, has_b, rmean, rvar, update_running, training, factor, eps,
                y, save_mean, save_invstd):
    """Per channel c: batch (training) or running statistics, then y = x * scale + shift
    with scale = invstd * w, shift = b - mean * scale; running stats updated in training."""
    N, C, L = x.shape
    M = N * L
    t = x.dtype.type
    for c in prange(C):
        if training:
            s = 0.0
            for n in range(N):
                for l in range(L):
                    s += x[n, c, l]
            mean = s / M
            q = 0.0                      # two passes: no cancellation in E[x^2] - E[x]^2
            for n in range(N):
                for l in range(L):
                    d = x[n, c, l] - mean
                    q += d * d
            var = q / M
            invstd = 1.0 / math.sqrt(var + eps)
            if update_running:
                rmean[c] = (1.0 - factor) * rmean[c] + factor * mean
                rvar[c] = (1.0 - factor) * rvar[c] + factor * var * M / (M - 1)
        else:
            mean = float(rmean[c])
            invstd = 1.0 / math.sqrt(rvar[c] + eps)
        save_mean[c] = mean
        save_invstd[c] = invstd
        scale = invstd * (w[c] if has_w else 1.0)
        shift = (b[c] if has_b else 0.0) - mean * scale
        scale_t, shift_t = t(scale), t(shift)     # keep the wide pass in x's precision
        for n in range(N):
            for l in range(L):
                y[n, c, l] = x[n, c, l] * scale_t + shift_t


@njit(**_JIT)
def _bn_backward(gy, x, w, has_w, mean, invstd, training, gx, gw, gb):
    """Per channel: gb = sum gy, gw = sum gy * xhat, and
    gx = w * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)) with batch statistics,
    gx = w * invstd * gy with running statistics (constants of the input)."""
    N, C, L = x.shape
    M = N * L
    t = x.dtype.type
    for c in prange(C):
        mu = float(mean[c])
        sg = 0.0
        sgx = 0.0
        for n in range(N):
            for l in range(L):
                g = gy[n, c, l]
                sg += g
                sgx += g * (x[n, c, l] - mu)
        inv = float(invstd[c])
        gb[c] = sg
        gw[c] = sgx * inv
        a = inv * (w[c] if has_w else 1.0)
        if training:
            k = t(inv * inv * sgx / M)
            mg = t(sg / M)
            mu_t, a_t = t(mu), t(a)
            for n in range(N):
                for l in range(L):
                    gx[n, c, l] = (gy[n, c, l] - mg - (x[n, c, l] - mu_t) * k) * a_t
        else:
            a_t = t(a)
            for n in range(N):
                for l in range(L):
                    gx[n, c, l] = gy[n, c, l] * a_t


# ---- layer norm kernels --------------------------------------------------------------

@njit(**_JIT)
def _ln_forward(x, w, b, eps, y, save_mean, save_invstd):
    """Per row m: y = (x - mean) * invstd * w + b over the row's D values."""
    M, D = x.shape
    t = x.dtype.type
    for m in prange(M):
        s = 0.0
        for d in range(D):
            s += x[m, d]
        mean = s / D
        q = 0.0
        for d in range(D):
            v = x[m, d] - mean
            q += v * v
        invstd = 1.0 / math.sqrt(q / D + eps)
        save_mean[m] = mean
        save_invstd[m] = invstd
        mu_t, inv_t = t(mean), t(invstd)
        for d in range(D):
            y[m, d] = (x[m, d] - mu_t) * inv_t * w[d] + b[d]


@njit(**_JIT)
def _ln_backward(gy, x, w, mean, invstd, gx, part_gw, part_gb):
    """gx per row: g = gy * w, gx = invstd * (g - mean(g) - xhat * mean(g * xhat)).
    part_gw/part_gb[blk] = sums over the rows of block blk of gy * xhat and gy
    (in x's precision; the blocks are added in float64 by _sum_blocks)."""
    M, D = x.shape
    nblk = part_gw.shape[0]
    t = x.dtype.type
    for blk in prange(nblk):
        for d in range(D):
            part_gw[blk, d] = 0.0
            part_gb[blk, d] = 0.0
        for m in range(blk * _ROWS_PER_BLOCK, min(M, (blk + 1) * _ROWS_PER_BLOCK)):
            mu, inv = mean[m], invstd[m]
            sg = t(0.0)     # a row is short: x's precision is enough, and twice as wide
            sgx = t(0.0)
            for d in range(D):
                xhat = (x[m, d] - mu) * inv
                g = gy[m, d] * w[d]
                sg += g
                sgx += g * xhat
                part_gw[blk, d] += gy[m, d] * xhat
                part_gb[blk, d] += gy[m, d]
            mg, mgx = t(sg / D), t(sgx / D)
            for d in range(D):
                xhat = (x[m, d] - mu) * inv
                gx[m, d] = inv * (gy[m, d] * w[d] - mg - xhat * mgx)


@njit(**_JIT)
def _sum_blocks(part, out):
    """out[d] = sum over blocks of part[blk, d], blocks in order."""
    nblk, D = part.shape
    for d in prange(D):
        s = 0.0
        for blk in range(nblk):
            s += part[blk, d]
        out[d] = s


# ---- host functions --------------------------------------------------------------

def _or_dummy(a, dtype):
    return (a, True) if a is not None else (np.empty(1, dtype=dtype), False)


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
    y = np.empty(x.shape, dtype=x.dtype)
    save_mean = np.empty(c, dtype=x.dtype)
    save_invstd = np.empty(c, dtype=x.dtype)
    update = bool(training) and running_mean is not None
    factor = 0.0
    if update and num_batches_tracked is not None:
        num_batches_tracked += 1
        if momentum is None:
            factor = 1.0 / float(num_batches_tracked.reshape(-1)[0])
    if momentum is not None:
        factor = momentum
    if n * l == 0:
        save_mean[:] = 0.0
        save_invstd[:] = 0.0
        return y, save_mean, save_invstd
    w, has_w = _or_dummy(weight, x.dtype)
    b, has_b = _or_dummy(bias, x.dtype)
    rm, _ = _or_dummy(running_mean, x.dtype)
    rv, _ = _or_dummy(running_var, x.dtype)
    _bn_forward(x, w, b, has_w, has_b, rm, rv, update, bool(training), factor, eps,
                y, save_mean, save_invstd)
    return y, save_mean, save_invstd


def batch_norm_backward(gy, x, weight, save_mean, save_invstd, training):
    """Gradients of batch_norm_forward -> (gx (N, C, L), gweight (C,) or None, gbias (C,)).

    training: whether the forward used batch statistics (then they depend on x).
    """
    op = "batch_norm_backward"
    _norm.check_batch_norm_backward(op, gy, x, weight, save_mean, save_invstd, training)
    c = x.shape[1]
    gx = np.empty(x.shape, dtype=x.dtype)
    gw = np.empty(c, dtype=x.dtype)
    gb = np.empty(c, dtype=x.dtype)
    w, has_w = _or_dummy(weight, x.dtype)
    _bn_backward(gy, x, w, has_w, save_mean, save_invstd, bool(training), gx, gw, gb)
    return gx, (gw if weight is not None else None), gb


def layer_norm_forward(x, weight, bias, eps):
    """Layer normalization of each row of x (M, D) -> (y, save_mean (M,), save_invstd (M,)).

    y = (x - mean_row) / sqrt(var_row + eps) * weight + bias; weight/bias (D,) or None.
    """
    op = "layer_norm_forward"
    eps = _norm.check_layer_norm_forward(op, x, weight, bias, eps)
    m, _ = x.shape
    y = np.empty(x.shape, dtype=x.dtype)
    save_mean = np.empty(m, dtype=x.dtype)
    save_invstd = np.empty(m, dtype=x.dtype)
    d = x.shape[1]
    w = weight if weight is not None else np.ones(d, dtype=x.dtype)
    b = bias if bias is not None else np.zeros(d, dtype=x.dtype)
    _ln_forward(x, w, b, eps, y, save_mean, save_invstd)
    return y, save_mean, save_invstd


def layer_norm_backward(gy, x, weight, save_mean, save_invstd):
    """Gradients of layer_norm_forward -> (gx (M, D), gweight (D,) or None, gbias (D,))."""
    op = "layer_norm_backward"
    _norm.check_layer_norm_backward(op, gy, x, weight, save_mean, save_invstd)
    m, d = x.shape
    nblk = max(1, -(-m // _ROWS_PER_BLOCK))
    part_gw = np.empty((nblk, d), dtype=x.dtype)
    part_gb = np.empty((nblk, d), dtype=x.dtype)
    gx = np.empty(x.shape, dtype=x.dtype)
    w = weight if weight is not None else np.ones(d, dtype=x.dtype)
    _ln_backward(gy, x, w, save_mean, save_invstd, gx, part_gw, part_gb)
    gw = np.empty(d, dtype=x.dtype)
    gb = np.empty(d, dtype=x.dtype)
    _sum_blocks(part_gw, gw)
    _sum_blocks(part_gb, gb)
    return gx, (gw if weight is not None else None), gb
