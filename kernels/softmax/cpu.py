"""CPU softmax, log_softmax, cross entropy and nll loss.

Softmax over the last axis (inner == 1) runs row by row: a vectorized max
(``fmax``), a vectorized exp-and-sum, a scaling pass; rows run in parallel.
Over another axis (inner > 1) each task takes a block of the inner axis and
sweeps the softmax axis, so every inner loop is contiguous and vectorizes.
Cross entropy over (N, C, d...) logits transposes to rows of C first (one copy).
Loss sums are numpy's pairwise sums of per-sample values: deterministic.
"""
import numpy as np
from numba import njit, prange

from nbdl.kernels.elementwise.cpu import first_out_of_range
from nbdl.kernels._fastmath import FASTMATH, FASTMATH_REDUCE, exp, fmax
from nbdl.kernels.softmax import (check_classification, check_loss_grad, check_saved, check_softmax,
                                  check_softmax_backward, check_target_values, split_axis)

_JIT = dict(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
_BLOCK = 256   # inner-axis block of the strided kernels (two scratch rows of this length per task)


# Row reductions: small helpers compiled with reassociation allowed, so their sums
# vectorize (in a fixed order: still deterministic); LLVM inlines them into the
# kernels, whose own arithmetic stays unreassociated (see nbdl.kernels._fastmath).
_REDUCE = dict(fastmath=FASTMATH_REDUCE, error_model="numpy")


@njit(**_REDUCE)
def _max(v):
    m = v[0]
    for j in range(1, v.size):
        m = fmax(m, v[j])
    return m


@njit(**_REDUCE)
def _sum(v):
    s = v.dtype.type(0)
    for j in range(v.size):
        s += v[j]
    return s


@njit(**_REDUCE)
def _dot(a, b):
    s = a.dtype.type(0)
    for j in range(a.size):
        s += a[j] * b[j]
    return s


@njit(**_REDUCE)
def _sum_exp(v, m):
    """sum(exp(v - m))."""
    s = v.dtype.type(0)
    for j in range(v.size):
        s += exp(v[j] - m)
    return s


@njit(**_REDUCE)
def _store_exp(v, m, out):
    """out = exp(v - m); returns sum(out)."""
    s = v.dtype.type(0)
    for j in range(v.size):
        e = exp(v[j] - m)
        out[j] = e
        s += e
    return s


@njit(**_REDUCE)
def _weighted_gap_sum(w, v, m):
    """sum(w * (m - v))."""
    s = v.dtype.type(0)
    for j in range(v.size):
        s += w[j] * (m - v[j])
    return s


@njit(**_JIT)
def _softmax_rows(x, y, log):
    """y[r] = softmax(x[r]) (or log_softmax when ``log``) for each row of a 2-D x."""
    for r in prange(x.shape[0]):
        xr, yr = x[r], y[r]
        m = _max(xr)
        if log:
            log_s = np.log(_sum_exp(xr, m))
            for j in range(xr.size):
                yr[j] = (xr[j] - m) - log_s      # not x - (m + log s): exact for huge logits
        else:
            inv = x.dtype.type(1) / _store_exp(xr, m, yr)
            for j in range(xr.size):
                yr[j] *= inv


@njit(**_JIT)
def _softmax_rows_backward(gy, y, gx, log):
    """Row-wise softmax backward gx = y (gy - <gy, y>); log: gx = gy - exp(y) sum(gy)."""
    for r in prange(y.shape[0]):
        g, yr, gr = gy[r], y[r], gx[r]
        if log:
            s = _sum(g)
            for j in range(yr.size):
                gr[j] = g[j] - exp(yr[j]) * s
        else:
            s = _dot(g, yr)
            for j in range(yr.size):
                gr[j] = yr[j] * (g[j] - s)


@njit(**_JIT)
def _softmax_strided(x, y, log):
    """Softmax over axis 1 of a 3-D x (outer, L, inner), inner blocks in parallel."""
    outer, n, inner = x.shape
    nblk = (inner + _BLOCK - 1) // _BLOCK
    for task in prange(outer * nblk):
        o = task // nblk
        j0 = (task - o * nblk) * _BLOCK
        w = min(_BLOCK, inner - j0)
        m = x[o, 0, j0:j0 + w].copy()
        s = np.zeros(w, x.dtype)
        for l in range(1, n):
            xl = x[o, l, j0:j0 + w]
            for j in range(w):
                m[j] = fmax(m[j], xl[j])
        for l in range(n):
            xl, yl = x[o, l, j0:j0 + w], y[o, l, j0:j0 + w]
            for j in range(w):
                e = exp(xl[j] - m[j])
                s[j] += e
                if not log:
                    yl[j] = e
        for j in range(w):
            s[j] = np.log(s[j]) if log else x.dtype.type(1) / s[j]
        for l in range(n):
            xl, yl = x[o, l, j0:j0 + w], y[o, l, j0:j0 + w]
            for j in range(w):
                yl[j] = (xl[j] - m[j]) - s[j] if log else yl[j] * s[j]


@njit(**_JIT)
def _softmax_strided_backward(gy, y, gx, log):
    """Backward of _softmax_strided (see _softmax_rows_backward for the formulas)."""
    outer, n, inner = y.shape
    nblk = (inner + _BLOCK - 1) // _BLOCK
    for task in prange(outer * nblk):
        o = task // nblk
        j0 = (task - o * nblk) * _BLOCK
        w = min(_BLOCK, inner - j0)
        s = np.zeros(w, y.dtype)
        for l in range(n):
            gl, yl = gy[o, l, j0:j0 + w], y[o, l, j0:j0 + w]
            for j in range(w):
                s[j] += gl[j] if log else gl[j] * yl[j]
        for l in range(n):
            gl, yl, gxl = gy[o, l, j0:j0 + w], y[o, l, j0:j0 + w], gx[o, l, j0:j0 + w]
            for j in range(w):
                gxl[j] = gl[j] - exp(yl[j]) * s[j] if log else yl[j] * (gl[j] - s[j])


def _softmax(op, x, axis, log):
    axis = check_softmax(op, x, axis)
    y = np.empty_like(x)
    if x.size:
        outer, n, inner = split_axis(x.shape, axis) if x.ndim else (1, 1, 1)
        if inner == 1:
            _softmax_rows(x.reshape(outer, n), y.reshape(outer, n), log)
        else:
            _softmax_strided(x.reshape(outer, n, inner), y.reshape(outer, n, inner), log)
    return y


def _softmax_backward(op, gy, y, axis, log):
    axis = check_softmax_backward(op, gy, y, axis)
    gx = np.empty_like(y)
    if y.size:
        outer, n, inner = split_axis(y.shape, axis) if y.ndim else (1, 1, 1)
        if inner == 1:
            _softmax_rows_backward(gy.reshape(outer, n), y.reshape(outer, n), gx.reshape(outer, n), log)
        else:
            shape = (outer, n, inner)
            _softmax_strided_backward(gy.reshape(shape), y.reshape(shape), gx.reshape(shape), log)
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
    return np.ones(c, dtype) if weight is None else weight


def _rows_of(x, n, c, s):
    """Logits (N, C, d...) as C-contiguous rows (N*S, C) (a copy only when S > 1)."""
    if s == 1:
        return x.reshape(n, c)
    return np.ascontiguousarray(x.reshape(n, c, s).transpose(0, 2, 1)).reshape(n * s, c)


@njit(**_JIT)
def _cross_entropy_rows(x, target, weight, wsum, ignore_index, eps, loss, wt, stats):
    """Per-row loss and target weight of logits x (R, C); stats[:, r] = (max, log-sum-exp - max).

    wsum: sum of the class weights (for the smoothing term).
    """
    rows, c = x.shape
    zero = x.dtype.type(0)
    e = x.dtype.type(eps)
    e_c = x.dtype.type(eps / c)
    for r in prange(rows):
        xr = x[r]
        m = _max(xr)
        log_s = np.log(_sum_exp(xr, m))
        stats[0, r] = m
        stats[1, r] = log_s
        t = target[r]
        if t == ignore_index:
            loss[r] = zero
            wt[r] = zero
            continue
        w = weight[t]
        wt[r] = w
        value = w * ((m - xr[t]) + log_s)       # -w log_softmax(x)[t], exact for huge logits
        if eps > 0:
            smooth = _weighted_gap_sum(weight, xr, m) + wsum * log_s
            value = (1 - e) * value + e_c * smooth
        loss[r] = value


@njit(**_JIT)
def _cross_entropy_rows_backward(g, per_row, x, target, weight, wsum, stats, ignore_index, eps, gx):
    """gx[r] = a_r * dloss_r/dx[r] with a_r = g[r] (per_row) or g[0]; wsum = sum of weight."""
    rows, c = x.shape
    zero = x.dtype.type(0)
    e = x.dtype.type(eps)
    e_c = x.dtype.type(eps / c)
    for r in prange(rows):
        gr = gx[r]
        t = target[r]
        if t == ignore_index:
            for j in range(c):
                gr[j] = zero
            continue
        a = g[r] if per_row else g[0]
        xr = x[r]
        m = stats[0, r]
        log_s = stats[1, r]
        hit = (1 - e) * weight[t]
        scale = a * (hit + e_c * wsum)
        off = a * e_c
        for j in range(c):
            gr[j] = scale * exp((xr[j] - m) - log_s) - off * weight[j]
        gr[t] -= a * hit


def cross_entropy_forward(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Fused log_softmax + nll over class axis 1 (PyTorch's cross_entropy, class-index targets).

    x (N, C, d...) float, target (N, d...) int64, weight (C,) or None.
    Returns (loss, stats, wsum): loss () for mean/sum or (N, d...) for none; stats (2, N*S)
    each sample's max logit and log(sum(exp(x - max))); wsum (2,) = [sum of kept target
    weights, sum of class weights]. stats and wsum are for cross_entropy_backward.
    """
    op = "cross_entropy_forward"
    n, c, s, code, eps = check_classification(op, x, target, weight, ignore_index, reduction, label_smoothing)
    check_target_values(op, first_out_of_range(target.reshape(-1), c, ignore_index), target.shape, c,
                        ignore_index)
    rows = n * s
    w = _weights(weight, c, x.dtype)
    loss = np.empty(rows, x.dtype)
    wt = np.empty(rows, x.dtype)
    stats = np.empty((2, rows), x.dtype)
    if rows:
        _cross_entropy_rows(_rows_of(x, n, c, s), target.reshape(rows), w, w.sum(), ignore_index, eps,
                            loss, wt, stats)
    wsum = np.array([wt.sum(), w.sum()], x.dtype)
    return _reduced(loss, wsum, code, target.shape), stats, wsum


def _reduced(loss, wsum, code, target_shape):
    """loss per sample (none), its sum, or its sum / wsum[0] (mean; 0 when nothing is kept)."""
    if code == 0:
        return loss.reshape(target_shape)
    total = loss.sum()
    if code == 1:
        total = total / wsum[0] if wsum[0] != 0 else 0
    return np.array(total, loss.dtype)


def _loss_grad_scale(gloss, wsum, code):
    """Per-sample factor of the upstream gradient: g (none), g (sum), g / wsum (mean; 0 if wsum == 0)."""
    if code == 0:
        return np.ascontiguousarray(gloss).reshape(-1), True
    g = gloss.reshape(1).astype(wsum.dtype)
    if code == 1:
        g = g / wsum[0] if wsum[0] != 0 else np.zeros(1, wsum.dtype)
    return g, False


def cross_entropy_backward(gloss, x, target, weight, stats, wsum, ignore_index=-100, label_smoothing=0.0,
                           reduction="mean"):
    """Gradient of cross_entropy_forward's loss w.r.t. x (same shape as x)."""
    op = "cross_entropy_backward"
    n, c, s, code, eps = check_classification(op, x, target, weight, ignore_index, reduction, label_smoothing)
    check_loss_grad(op, gloss, x, code, n, s)
    check_saved(op, x, n * s, wsum, stats)
    g, per_row = _loss_grad_scale(gloss, wsum, code)
    rows = n * s
    gx_rows = np.empty((rows, c), x.dtype)
    if rows:
        _cross_entropy_rows_backward(g, per_row, _rows_of(x, n, c, s), target.reshape(rows),
                                     _weights(weight, c, x.dtype), wsum[1], stats, ignore_index, eps, gx_rows)
    if s == 1:
        return gx_rows.reshape(x.shape)
    return np.ascontiguousarray(gx_rows.reshape(n, s, c).transpose(0, 2, 1)).reshape(x.shape)


@njit(**_JIT)
def _nll(x, target, weight, ignore_index, loss, wt):
    """loss[n, s] = -w[t] x[n, t, s] for log-probabilities x (N, C, S), target (N, S)."""
    n_, c, s_ = x.shape
    zero = x.dtype.type(0)
    for n in prange(n_):
        for s in range(s_):
            t = target[n, s]
            if t == ignore_index:
                loss[n, s] = zero
                wt[n, s] = zero
            else:
                loss[n, s] = -weight[t] * x[n, t, s]
                wt[n, s] = weight[t]


@njit(**_JIT)
def _nll_backward(g, per_row, target, weight, ignore_index, gx):
    """gx[n, t, s] = -a w[t] at each kept target, 0 elsewhere."""
    n_, c, s_ = gx.shape
    zero = gx.dtype.type(0)
    for n in prange(n_):
        for k in range(c):
            for s in range(s_):
                gx[n, k, s] = zero
        for s in range(s_):
            t = target[n, s]
            if t != ignore_index:
                gx[n, t, s] = -(g[n * s_ + s] if per_row else g[0]) * weight[t]


def nll_loss_forward(x, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities x (N, C, d...) at int64 targets (N, d...).

    Returns (loss, wsum): loss () for mean/sum or (N, d...) for none; wsum (2,) as in
    cross_entropy_forward (wsum[0] is the mean's denominator).
    """
    op = "nll_loss_forward"
    n, c, s, code, _ = check_classification(op, x, target, weight, ignore_index, reduction)
    check_target_values(op, first_out_of_range(target.reshape(-1), c, ignore_index), target.shape, c,
                        ignore_index)
    w = _weights(weight, c, x.dtype)
    loss = np.empty((n, s), x.dtype)
    wt = np.empty((n, s), x.dtype)
    if n * s:
        _nll(x.reshape(n, c, s), target.reshape(n, s), w, ignore_index, loss, wt)
    wsum = np.array([wt.sum(), w.sum()], x.dtype)
    return _reduced(loss, wsum, code, target.shape), wsum


def nll_loss_backward(gloss, x, target, weight, wsum, ignore_index=-100, reduction="mean"):
    """Gradient of nll_loss_forward's loss w.r.t. x (same shape as x)."""
    op = "nll_loss_backward"
    n, c, s, code, _ = check_classification(op, x, target, weight, ignore_index, reduction)
    check_loss_grad(op, gloss, x, code, n, s)
    check_saved(op, x, n * s, wsum)
    g, per_row = _loss_grad_scale(gloss, wsum, code)
    gx = np.empty(x.shape, x.dtype)
    if n * s:
        _nll_backward(g, per_row, target.reshape(n, s), _weights(weight, c, x.dtype), ignore_index,
                      gx.reshape(n, c, s))
    return gx
