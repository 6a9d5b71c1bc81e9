"""Pooling on the CPU: one ``prange`` task per (sample, channel) plane.

Pooling is memory bound: each plane is read once, in order, by one thread, and
the backward scatters into a plane that the same thread zeroed a moment before
(so it is still in cache and the sums run in a fixed order: deterministic).
Inputs are viewed as ``(P, H, W)`` planes, ``P = N * C``. Indices are flat
positions ``h * W + w`` in the input plane, like PyTorch's ``return_indices``.
"""
import math

import numpy as np
from numba import njit, prange

from .. import pool as _pool

_tap_range = njit(inline="always")(_pool.tap_range)
_avg_divisor = njit(inline="always")(_pool.avg_divisor)
_adaptive_start = njit(inline="always")(_pool.adaptive_start)
_adaptive_end = njit(inline="always")(_pool.adaptive_end)

_JIT = dict(cache=True, parallel=True, error_model="numpy")

__all__ = [
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "lp_pool2d_forward", "lp_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
]


# ---- kernels ---------------------------------------------------------------------

@njit(inline="always")
def _column_span(off, out, size, stride):
    """Outputs o in [lo, hi) whose tap o * stride + off lies inside [0, size)."""
    lo = 0
    if off < 0:
        lo = (-off + stride - 1) // stride
    hi = min(out, (size - 1 - off) // stride + 1)
    return lo, max(lo, hi)


@njit(**_JIT)
def _max_pool_fwd(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw, with_idx):
    """y[p, oh, ow] = max over the window's real taps; idx = flat argmax.

    PyTorch scans a window's taps in (row, col) order and keeps the first max,
    or the last NaN: the smallest flat index h * W + w holding the max, or the
    largest holding a NaN. Per output row, separable passes with long inner loops
    (loops over the 2 or 3 taps of one output cost more than the taps):
      1. column pass: max over the window's rows for each input column, and the
         row it came from (first max / last NaN), contiguous;
      2. value pass: for each window column j, a strided max over all outputs;
      3. index pass: min flat index among column maxima equal to the output (and
         max flat index among NaN columns), again one long loop per j.
    """
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    none = H * W
    for p in prange(P):
        col_max = np.empty(W, x.dtype)
        col_base = np.empty(W, np.int64)     # h * W of the row holding col_max
        best = np.empty(OW, x.dtype)
        first = np.empty(OW, np.int64)
        last_nan = np.empty(OW, np.int64)
        for oh in range(OH):
            h0 = oh * sh - ph
            i0, i1 = _tap_range(h0, dh, kh, H)
            xr = x[p, h0 + i0 * dh]
            for w in range(W):
                col_max[w] = xr[w]
                col_base[w] = (h0 + i0 * dh) * W
            for i in range(i0 + 1, i1):
                xr = x[p, h0 + i * dh]
                base = (h0 + i * dh) * W
                for w in range(W):
                    v, b, r = xr[w], col_max[w], col_base[w]
                    better = (v > b) | (v != v)      # selects, not branches: the compares are random
                    col_max[w] = v if better else b
                    col_base[w] = base if better else r
            for ow in range(OW):
                best[ow] = -np.inf
            for j in range(kw):
                off = j * dw - pw
                lo, hi = _column_span(off, OW, W, sw)
                for ow in range(lo, hi):
                    v, b = col_max[ow * sw + off], best[ow]
                    best[ow] = v if (v > b) | (v != v) else b
            for ow in range(OW):
                y[p, oh, ow] = best[ow]
            if not with_idx:
                continue
            for ow in range(OW):
                first[ow] = none
                last_nan[ow] = -1
            for j in range(kw):
                off = j * dw - pw
                lo, hi = _column_span(off, OW, W, sw)
                for ow in range(lo, hi):
                    w = ow * sw + off
                    v = col_max[w]
                    flat = col_base[w] + w
                    first[ow] = min(first[ow], flat if v == best[ow] else none)
                    last_nan[ow] = max(last_nan[ow], flat if v != v else -1)
            for ow in range(OW):
                idx[p, oh, ow] = last_nan[ow] if best[ow] != best[ow] else first[ow]


_LOW32 = (1 << 32) - 1


@njit(inline="always")
def _f32_key(bits, flat):
    """An int64 whose max picks what PyTorch's max scan picks among float32 taps.

    High 32 bits: the float's bits made order-preserving as a signed int (negative
    floats flip their magnitude bits; -0.0 ties +0.0 and comes out as +0.0), every
    NaN above +inf. Low 32 bits: 2^32 - 1 - flat for numbers (ties: the smaller
    flat index wins, i.e. the first tap in (row, col) order), flat for NaN (the
    last NaN wins). Needs H * W < 2^32.
    """
    b = np.int64(bits)
    isnan = (b & 0x7FFFFFFF) > 0x7F800000
    hi = b ^ ((b >> 31) & 0x7FFFFFFF)
    hi = hi + (hi == -1)
    hi = 0x7FFFFFFF if isnan else hi
    low = flat if isnan else _LOW32 - flat
    return (hi << 32) | low


@njit(**_JIT)
def _max_pool_fwd_f32(xbits, ybits, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """float32 max pooling with indices, on the inputs' bits (xbits, ybits: int32 views).

    Max and argmax become one integer max over _f32_key, so the separable
    passes (column max over the window's rows, then one strided pass per window
    column) are plain max reductions that vectorize; about twice as fast as
    carrying the index beside the value.
    """
    P, H, W = xbits.shape
    OH, OW = ybits.shape[1], ybits.shape[2]
    for p in prange(P):
        col = np.empty(W, np.int64)
        acc = np.empty(OW, np.int64)
        for oh in range(OH):
            h0 = oh * sh - ph
            i0, i1 = _tap_range(h0, dh, kh, H)
            h = h0 + i0 * dh
            for w in range(W):
                col[w] = _f32_key(xbits[p, h, w], h * W + w)
            for i in range(i0 + 1, i1):
                h = h0 + i * dh
                for w in range(W):
                    col[w] = max(col[w], _f32_key(xbits[p, h, w], h * W + w))
            for ow in range(OW):
                acc[ow] = np.iinfo(np.int64).min
            for j in range(kw):
                off = j * dw - pw
                lo, hi = _column_span(off, OW, W, sw)
                for ow in range(lo, hi):
                    acc[ow] = max(acc[ow], col[ow * sw + off])
            for ow in range(OW):
                hi32 = np.int32(acc[ow] >> 32)
                low = acc[ow] & _LOW32
                isnan = hi32 == 0x7FFFFFFF
                idx[p, oh, ow] = low if isnan else _LOW32 - low
                ybits[p, oh, ow] = np.int32(0x7FC00000) if isnan else hi32 ^ ((hi32 >> 31) & 0x7FFFFFFF)


@njit(**_JIT)
def _scatter_by_index(gy, idx, gx):
    """gx[p, idx[p, o]] += gy[p, o] in output order; gx: (P, H*W), one plane per task."""
    P, OH, OW = gy.shape
    HW = gx.shape[1]
    for p in prange(P):
        for k in range(HW):
            gx[p, k] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                k = idx[p, oh, ow]
                if 0 <= k < HW:   # guards memory against indices not made by the forward
                    gx[p, k] += gy[p, oh, ow]


@njit(**_JIT)
def _avg_pool_fwd(x, y, kh, kw, sh, sw, ph, pw, eh, ew, count_include_pad, divisor):
    """y = sum of the window's real taps / divisor (see avg_divisor).

    Separable: a column sum over the window's rows, then for each window column
    j a strided pass over all outputs (long loops that vectorize; a loop over
    the 2 or 3 taps of one output costs more than the taps).
    """
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        col_sum = np.empty(W, x.dtype)
        acc = np.empty(OW, x.dtype)
        for oh in range(OH):
            hs = oh * sh - ph
            h0, h1 = max(hs, 0), min(hs + kh, H)
            for w in range(W):
                col_sum[w] = x[p, h0, w]
            for h in range(h0 + 1, h1):
                for w in range(W):
                    col_sum[w] += x[p, h, w]
            for ow in range(OW):
                acc[ow] = 0.0
            for j in range(kw):
                lo, hi = _column_span(j - pw, OW, W, sw)
                for ow in range(lo, hi):
                    acc[ow] += col_sum[ow * sw + j - pw]
            for ow in range(OW):
                d = _avg_divisor(hs, ow * sw - pw, kh, kw, H, W, eh, ew, count_include_pad, divisor)
                y[p, oh, ow] = acc[ow] / d


@njit(**_JIT)
def _avg_pool_bwd(gy, gx, kh, kw, sh, sw, ph, pw, eh, ew, count_include_pad, divisor):
    """gx[window taps] += gy / divisor: per output row, the gradients of one input
    row are gathered in col_grad, then added to each of the window's rows."""
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    for p in prange(P):
        col_grad = np.empty(W, gx.dtype)
        g = np.empty(OW, gx.dtype)
        for h in range(H):
            for w in range(W):
                gx[p, h, w] = 0.0
        for oh in range(OH):
            hs = oh * sh - ph
            h0, h1 = max(hs, 0), min(hs + kh, H)
            for ow in range(OW):
                d = _avg_divisor(hs, ow * sw - pw, kh, kw, H, W, eh, ew, count_include_pad, divisor)
                g[ow] = gy[p, oh, ow] / d
            for w in range(W):
                col_grad[w] = 0.0
            for j in range(kw):
                lo, hi = _column_span(j - pw, OW, W, sw)
                for ow in range(lo, hi):
                    col_grad[ow * sw + j - pw] += g[ow]
            for h in range(h0, h1):
                for w in range(W):
                    gx[p, h, w] += col_grad[w]


@njit(inline="always")
def _pow(v, p):
    """v ** p with the two common exponents exact and fast."""
    if p == 2.0:
        return v * v
    if p == 1.0:
        return v
    return v ** p


@njit(**_JIT)
def _lp_pool_fwd(x, y, p_norm, kh, kw, sh, sw):
    """y = (sum x^p * kh*kw / count) ^ (1/p) over the window's count real taps (PyTorch)."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0 = oh * sh
            h1 = min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw
                w1 = min(w0 + kw, W)
                s = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += _pow(x[p, h, w], p_norm)
                s *= (kh * kw) / ((h1 - h0) * (w1 - w0))
                y[p, oh, ow] = math.sqrt(s) if p_norm == 2.0 else s ** (1.0 / p_norm)


@njit(**_JIT)
def _lp_pool_bwd(gy, x, y, gx, p_norm, kh, kw, sh, sw):
    """gx += gy * (kh*kw/count) * y^(1-p) * x^(p-1); zero where y == 0."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for h in range(H):
            for w in range(W):
                gx[p, h, w] = 0.0
        for oh in range(OH):
            h0 = oh * sh
            h1 = min(h0 + kh, H)
            for ow in range(OW):
                yv = y[p, oh, ow]
                if yv == 0.0:
                    continue   # d(s^(1/p))/ds is infinite at 0: PyTorch gives NaN, we give 0
                w0 = ow * sw
                w1 = min(w0 + kw, W)
                g = gy[p, oh, ow] * (kh * kw) / ((h1 - h0) * (w1 - w0)) * _pow(yv, 1.0 - p_norm)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        gx[p, h, w] += g * _pow(x[p, h, w], p_norm - 1.0)


@njit(cache=True, parallel=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _plane_mean(x, y):
    """Global average pooling: y[p] = mean(x[p, :]), x: (P, H*W). reassoc lets the
    sum vectorize (several partial sums, a fixed order: still deterministic)."""
    P, L = x.shape
    for p in prange(P):
        s = np.float32(0.0)   # unifies with x's dtype: float32 or float64 accumulation
        for k in range(L):
            s += x[p, k]
        y[p] = s / L


@njit(**_JIT)
def _plane_mean_bwd(gy, gx):
    """Backward of _plane_mean: gx[p, :] = gy[p] / (H*W), gx: (P, H*W)."""
    P, L = gx.shape
    for p in prange(P):
        g = gy[p] / L
        for k in range(L):
            gx[p, k] = g


@njit(**_JIT)
def _adaptive_avg_fwd(x, y):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
            for ow in range(OW):
                w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
                s = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[p, h, w]
                y[p, oh, ow] = s / ((h1 - h0) * (w1 - w0))


@njit(**_JIT)
def _adaptive_avg_bwd(gy, gx):
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    for p in prange(P):
        for h in range(H):
            for w in range(W):
                gx[p, h, w] = 0.0
        for oh in range(OH):
            h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
            for ow in range(OW):
                w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
                g = gy[p, oh, ow] / ((h1 - h0) * (w1 - w0))
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        gx[p, h, w] += g


@njit(**_JIT)
def _adaptive_max_fwd(x, y, idx, with_idx):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
            for ow in range(OW):
                w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
                best = -np.inf
                arg = h0 * W + w0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = x[p, h, w]
                        if v > best or v != v:
                            best = v
                            arg = h * W + w
                y[p, oh, ow] = best
                if with_idx:
                    idx[p, oh, ow] = arg


# ---- host functions --------------------------------------------------------------

def _planes(a):
    """(N, C, H, W) -> (N*C, H, W) view."""
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def _dummy_indices():
    return np.empty((1, 1, 1), dtype=np.int64)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       with_indices=True):
    """Max pooling. x: (N, C, H, W) -> (y (N, C, OH, OW), indices int64 or None).

    indices[n, c, oh, ow] = h * W + w of the max (first one on ties; a NaN wins).
    """
    op = "max_pool2d_forward"
    _pool.check_input4d(op, x)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    n, c = x.shape[:2]
    y = np.empty((n, c, g.oh, g.ow), dtype=x.dtype)
    idx = np.empty(y.shape, dtype=np.int64) if with_indices else None
    if with_indices and x.dtype == np.float32 and x.shape[2] * x.shape[3] < _LOW32:
        _max_pool_fwd_f32(_planes(x).view(np.int32), _planes(y).view(np.int32), _planes(idx),
                          g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    else:
        _max_pool_fwd(_planes(x), _planes(y), _planes(idx) if with_indices else _dummy_indices(),
                      g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, bool(with_indices))
    return y, idx


def max_pool2d_backward(gy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """gx (x_shape): each gy[n, c, o] added to gx[n, c].flat[indices[n, c, o]]."""
    op = "max_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    g = _pool.pool2d_geometry(op, x_shape, kernel_size, stride, padding, dilation, ceil_mode)
    _pool.check_grad_output(op, gy, "float", (n, c, g.oh, g.ow))
    _pool.check_indices(op, indices, gy.shape)
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    _scatter_by_index(_planes(gy), _planes(indices), gx.reshape(n * c, h * w))
    return gx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    """Average pooling. x: (N, C, H, W) -> y (N, C, OH, OW) = window sum / divisor."""
    op = "avg_pool2d_forward"
    _pool.check_input4d(op, x)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _pool.check_divisor(op, divisor_override)
    n, c = x.shape[:2]
    y = np.empty((n, c, g.oh, g.ow), dtype=x.dtype)
    _avg_pool_fwd(_planes(x), _planes(y), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.eh, g.ew,
                  bool(count_include_pad), divisor)
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """gx (x_shape): every tap of a window gets gy / divisor of that window."""
    op = "avg_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    g = _pool.pool2d_geometry(op, x_shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _pool.check_divisor(op, divisor_override)
    _pool.check_grad_output(op, gy, "float", (n, c, g.oh, g.ow))
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    _avg_pool_bwd(_planes(gy), _planes(gx), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.eh, g.ew,
                  bool(count_include_pad), divisor)
    return gx


def lp_pool2d_forward(x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Power-average pooling, PyTorch's lp_pool2d (no padding).

    y = (kh*kw / count * sum_window x^p) ^ (1/p), count = real taps in the window
    (kh*kw except for ceil_mode edge windows); p = 2 is L2 pooling.
    """
    op = "lp_pool2d_forward"
    _pool.check_input4d(op, x)
    p = _pool.check_norm_type(op, norm_type)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, 0, 1, ceil_mode)
    n, c = x.shape[:2]
    y = np.empty((n, c, g.oh, g.ow), dtype=x.dtype)
    _lp_pool_fwd(_planes(x), _planes(y), p, g.kh, g.kw, g.sh, g.sw)
    return y


def lp_pool2d_backward(gy, x, y, norm_type, kernel_size, stride=None, ceil_mode=False):
    """gx = sum over windows of gy * (kh*kw/count) * y^(1-p) * x^(p-1) (0 where y == 0)."""
    op = "lp_pool2d_backward"
    _pool.check_input4d(op, x)
    p = _pool.check_norm_type(op, norm_type)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, 0, 1, ceil_mode)
    shape = (x.shape[0], x.shape[1], g.oh, g.ow)
    _pool.check_grad_output(op, gy, x.dtype, shape)
    _pool.check_grad_output(op, y, x.dtype, shape, name="y")
    gx = np.empty(x.shape, dtype=x.dtype)
    _lp_pool_bwd(_planes(gy), _planes(x), _planes(y), _planes(gx), p, g.kh, g.kw, g.sh, g.sw)
    return gx


def adaptive_avg_pool2d_forward(x, output_size):
    """x: (N, C, H, W) -> (N, C, OH, OW), mean over each adaptive window."""
    op = "adaptive_avg_pool2d_forward"
    _pool.check_input4d(op, x)
    oh, ow = _pool.adaptive_output_size(op, x.shape, output_size)
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    if oh == 1 and ow == 1:
        _plane_mean(x.reshape(n * c, h * w), y.reshape(n * c))
    else:
        _adaptive_avg_fwd(_planes(x), _planes(y))
    return y


def adaptive_avg_pool2d_backward(gy, x_shape):
    """gx (x_shape): each window's taps get gy / window size."""
    op = "adaptive_avg_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    _pool.check_grad_output(op, gy, "float", (n, c, None, None))
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    if gy.shape[2] == 1 and gy.shape[3] == 1:
        _plane_mean_bwd(gy.reshape(n * c), gx.reshape(n * c, h * w))
    else:
        _adaptive_avg_bwd(_planes(gy), _planes(gx))
    return gx


def adaptive_max_pool2d_forward(x, output_size, with_indices=True):
    """x: (N, C, H, W) -> (y (N, C, OH, OW), indices int64 flat in the plane, or None)."""
    op = "adaptive_max_pool2d_forward"
    _pool.check_input4d(op, x)
    oh, ow = _pool.adaptive_output_size(op, x.shape, output_size)
    y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    idx = np.empty(y.shape, dtype=np.int64) if with_indices else None
    _adaptive_max_fwd(_planes(x), _planes(y), _planes(idx) if with_indices else _dummy_indices(),
                      bool(with_indices))
    return y, idx


def adaptive_max_pool2d_backward(gy, indices, x_shape):
    """gx (x_shape): each gy[n, c, o] added at its argmax."""
    op = "adaptive_max_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    _pool.check_grad_output(op, gy, "float", (n, c, None, None))
    _pool.check_indices(op, indices, gy.shape)
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    _scatter_by_index(_planes(gy), _planes(indices), gx.reshape(n * c, h * w))
    return gx
