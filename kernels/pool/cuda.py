"""Pooling on CUDA: one thread per output (forward) or per input element (backward).

Backward kernels gather instead of scatter: the thread of input (h, w) visits the
outputs whose window holds it, in output order, and sums their gradients (in
float64). Each gradient is written once, with no atomics: deterministic, like
the cpu kernels. Arrays are viewed as ``(P, H, W)`` planes, ``P = N * C``;
indices are flat ``h * W + w`` in the plane.
"""
import math

import numpy as np
from numba import cuda

from .. import pool as _pool
from .._cuda import grid1d

_tap_range = cuda.jit(device=True, inline=True)(_pool.tap_range)
_avg_divisor = cuda.jit(device=True, inline=True)(_pool.avg_divisor)
_adaptive_start = cuda.jit(device=True, inline=True)(_pool.adaptive_start)
_adaptive_end = cuda.jit(device=True, inline=True)(_pool.adaptive_end)


__all__ = [
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "lp_pool2d_forward", "lp_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
]


# ---- device helpers --------------------------------------------------------------

@cuda.jit(device=True, inline=True)
def _unravel(t, rows, cols):
    """Flat thread index -> (plane, row, col) of a (P, rows, cols) array."""
    c = t % cols
    r = (t // cols) % rows
    return t // (cols * rows), r, c


@cuda.jit(device=True, inline=True)
def _covering(pos, pad, dilation, stride, out, k):
    """Output o holding input pos as tap k of its window, or -1.

    Tap k of window o is at o * stride - pad + k * dilation.
    """
    num = pos + pad - k * dilation
    if num < 0 or num % stride != 0:
        return -1
    o = num // stride
    return o if o < out else -1


@cuda.jit(device=True, inline=True)
def _pow(v, p):
    if p == 2.0:
        return v * v
    if p == 1.0:
        return v
    return v ** p


# ---- kernels ---------------------------------------------------------------------

@cuda.jit(cache=True)
def _max_pool_fwd(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw, with_idx):
    """y = window max, idx = flat argmax (first max in (row, col) order; last NaN)."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * OH * OW:
        return
    p, oh, ow = _unravel(t, OH, OW)
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    i0, i1 = _tap_range(h0, dh, kh, H)
    j0, j1 = _tap_range(w0, dw, kw, W)
    best = -math.inf
    arg = (h0 + i0 * dh) * W + w0 + j0 * dw
    for i in range(i0, i1):
        h = h0 + i * dh
        for j in range(j0, j1):
            w = w0 + j * dw
            v = x[p, h, w]
            if v > best or v != v:
                best = v
                arg = h * W + w
    y[p, oh, ow] = best
    if with_idx:
        idx[p, oh, ow] = arg


@cuda.jit(cache=True)
def _max_pool_bwd(gy, idx, gx, kh, kw, sh, sw, ph, pw, dh, dw):
    """gx[p, h, w] = sum of gy over the windows holding (h, w) whose argmax it is."""
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    t = cuda.grid(1)
    if t >= P * H * W:
        return
    p, h, w = _unravel(t, H, W)
    me = h * W + w
    acc = 0.0
    for i in range(kh - 1, -1, -1):          # output rows in increasing order
        oh = _covering(h, ph, dh, sh, OH, i)
        if oh < 0:
            continue
        for j in range(kw - 1, -1, -1):
            ow = _covering(w, pw, dw, sw, OW, j)
            if ow >= 0 and idx[p, oh, ow] == me:
                acc += gy[p, oh, ow]
    gx[p, h, w] = acc


@cuda.jit(cache=True)
def _avg_pool_fwd(x, y, kh, kw, sh, sw, ph, pw, eh, ew, count_include_pad, divisor):
    """y = sum of the window's real taps / divisor."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * OH * OW:
        return
    p, oh, ow = _unravel(t, OH, OW)
    hs = oh * sh - ph
    ws = ow * sw - pw
    s = 0.0
    for h in range(max(hs, 0), min(hs + kh, H)):
        for w in range(max(ws, 0), min(ws + kw, W)):
            s += x[p, h, w]
    y[p, oh, ow] = s / _avg_divisor(hs, ws, kh, kw, H, W, eh, ew, count_include_pad, divisor)


@cuda.jit(cache=True)
def _avg_pool_bwd(gy, gx, kh, kw, sh, sw, ph, pw, eh, ew, count_include_pad, divisor):
    """gx[p, h, w] = sum over windows holding (h, w) of gy / divisor."""
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    t = cuda.grid(1)
    if t >= P * H * W:
        return
    p, h, w = _unravel(t, H, W)
    acc = 0.0
    for i in range(kh - 1, -1, -1):
        oh = _covering(h, ph, 1, sh, OH, i)
        if oh < 0:
            continue
        for j in range(kw - 1, -1, -1):
            ow = _covering(w, pw, 1, sw, OW, j)
            if ow >= 0:
                d = _avg_divisor(oh * sh - ph, ow * sw - pw, kh, kw, H, W, eh, ew, count_include_pad, divisor)
                acc += gy[p, oh, ow] / d
    gx[p, h, w] = acc


@cuda.jit(cache=True)
def _lp_pool_fwd(x, y, p_norm, kh, kw, sh, sw):
    """y = (kh*kw / count * sum x^p) ^ (1/p) over the count real taps of the window."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * OH * OW:
        return
    p, oh, ow = _unravel(t, OH, OW)
    h0, w0 = oh * sh, ow * sw
    h1, w1 = min(h0 + kh, H), min(w0 + kw, W)
    s = 0.0
    for h in range(h0, h1):
        for w in range(w0, w1):
            s += _pow(x[p, h, w], p_norm)
    s *= (kh * kw) / ((h1 - h0) * (w1 - w0))
    y[p, oh, ow] = math.sqrt(s) if p_norm == 2.0 else s ** (1.0 / p_norm)


@cuda.jit(cache=True)
def _lp_pool_bwd(gy, x, y, gx, p_norm, kh, kw, sh, sw):
    """gx = x^(p-1) * sum over windows of gy * (kh*kw/count) * y^(1-p) (0 where y == 0)."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * H * W:
        return
    p, h, w = _unravel(t, H, W)
    xv = _pow(x[p, h, w], p_norm - 1.0)
    acc = 0.0
    for i in range(kh - 1, -1, -1):
        oh = _covering(h, 0, 1, sh, OH, i)
        if oh < 0:
            continue
        for j in range(kw - 1, -1, -1):
            ow = _covering(w, 0, 1, sw, OW, j)
            if ow < 0:
                continue
            yv = y[p, oh, ow]
            if yv != 0.0:
                count = (min(oh * sh + kh, H) - oh * sh) * (min(ow * sw + kw, W) - ow * sw)
                acc += gy[p, oh, ow] * (kh * kw) / count * _pow(yv, 1.0 - p_norm) * xv
    gx[p, h, w] = acc


@cuda.jit(cache=True)
def _adaptive_avg_fwd(x, y):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * OH * OW:
        return
    p, oh, ow = _unravel(t, OH, OW)
    h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
    w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
    s = 0.0
    for h in range(h0, h1):
        for w in range(w0, w1):
            s += x[p, h, w]
    y[p, oh, ow] = s / ((h1 - h0) * (w1 - w0))


@cuda.jit(cache=True)
def _adaptive_avg_bwd(gy, gx):
    """gx[p, h, w] = sum over the adaptive windows holding (h, w) of gy / window size."""
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    t = cuda.grid(1)
    if t >= P * H * W:
        return
    p, h, w = _unravel(t, H, W)
    acc = 0.0
    for oh in range((h * OH) // H, min(OH, ((h + 1) * OH + H - 1) // H)):
        h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
        if h < h0 or h >= h1:
            continue
        for ow in range((w * OW) // W, min(OW, ((w + 1) * OW + W - 1) // W)):
            w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
            if w0 <= w < w1:
                acc += gy[p, oh, ow] / ((h1 - h0) * (w1 - w0))
    gx[p, h, w] = acc


@cuda.jit(cache=True)
def _adaptive_max_fwd(x, y, idx, with_idx):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    t = cuda.grid(1)
    if t >= P * OH * OW:
        return
    p, oh, ow = _unravel(t, OH, OW)
    h0, h1 = _adaptive_start(oh, H, OH), _adaptive_end(oh, H, OH)
    w0, w1 = _adaptive_start(ow, W, OW), _adaptive_end(ow, W, OW)
    best = -math.inf
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


@cuda.jit(cache=True)
def _adaptive_max_bwd(gy, idx, gx):
    """gx[p, h, w] = sum of gy over the adaptive windows whose argmax is (h, w)."""
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    t = cuda.grid(1)
    if t >= P * H * W:
        return
    p, h, w = _unravel(t, H, W)
    me = h * W + w
    acc = 0.0
    for oh in range((h * OH) // H, min(OH, ((h + 1) * OH + H - 1) // H)):
        for ow in range((w * OW) // W, min(OW, ((w + 1) * OW + W - 1) // W)):
            if idx[p, oh, ow] == me:
                acc += gy[p, oh, ow]
    gx[p, h, w] = acc


# ---- host functions --------------------------------------------------------------

def _planes(a):
    """(N, C, H, W) device array -> (N*C, H, W) view."""
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def _launch(kernel, n, *args):
    """One thread per item; small launches get small blocks (a warp at least)."""
    if n > 0:
        blocks, threads = grid1d(n)
        kernel[blocks, threads](*args)


def _dummy_indices():
    return cuda.device_array((1, 1, 1), dtype=np.int64)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       with_indices=True):
    """Max pooling. x: (N, C, H, W) -> (y (N, C, OH, OW), indices int64 or None).

    indices[n, c, oh, ow] = h * W + w of the max (first one on ties; a NaN wins).
    """
    op = "max_pool2d_forward"
    _pool.check_input4d(op, x)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    n, c = x.shape[:2]
    y = cuda.device_array((n, c, g.oh, g.ow), dtype=x.dtype)
    idx = cuda.device_array(y.shape, dtype=np.int64) if with_indices else None
    _launch(_max_pool_fwd, y.size, _planes(x), _planes(y),
            _planes(idx) if with_indices else _dummy_indices(),
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
    gx = cuda.device_array((n, c, h, w), dtype=gy.dtype)
    _launch(_max_pool_bwd, gx.size, _planes(gy), _planes(indices), _planes(gx),
            g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw)
    return gx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    """Average pooling. x: (N, C, H, W) -> y (N, C, OH, OW) = window sum / divisor."""
    op = "avg_pool2d_forward"
    _pool.check_input4d(op, x)
    g = _pool.pool2d_geometry(op, x.shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _pool.check_divisor(op, divisor_override)
    n, c = x.shape[:2]
    y = cuda.device_array((n, c, g.oh, g.ow), dtype=x.dtype)
    _launch(_avg_pool_fwd, y.size, _planes(x), _planes(y), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
            g.eh, g.ew, bool(count_include_pad), divisor)
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """gx (x_shape): every tap of a window gets gy / divisor of that window."""
    op = "avg_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    g = _pool.pool2d_geometry(op, x_shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _pool.check_divisor(op, divisor_override)
    _pool.check_grad_output(op, gy, "float", (n, c, g.oh, g.ow))
    gx = cuda.device_array((n, c, h, w), dtype=gy.dtype)
    _launch(_avg_pool_bwd, gx.size, _planes(gy), _planes(gx), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
            g.eh, g.ew, bool(count_include_pad), divisor)
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
    y = cuda.device_array((n, c, g.oh, g.ow), dtype=x.dtype)
    _launch(_lp_pool_fwd, y.size, _planes(x), _planes(y), p, g.kh, g.kw, g.sh, g.sw)
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
    gx = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_lp_pool_bwd, gx.size, _planes(gy), _planes(x), _planes(y), _planes(gx), p,
            g.kh, g.kw, g.sh, g.sw)
    return gx


def adaptive_avg_pool2d_forward(x, output_size):
    """x: (N, C, H, W) -> (N, C, OH, OW), mean over each adaptive window."""
    op = "adaptive_avg_pool2d_forward"
    _pool.check_input4d(op, x)
    oh, ow = _pool.adaptive_output_size(op, x.shape, output_size)
    y = cuda.device_array(x.shape[:2] + (oh, ow), dtype=x.dtype)
    _launch(_adaptive_avg_fwd, y.size, _planes(x), _planes(y))
    return y


def adaptive_avg_pool2d_backward(gy, x_shape):
    """gx (x_shape): each window's taps get gy / window size."""
    op = "adaptive_avg_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    _pool.check_grad_output(op, gy, "float", (n, c, None, None))
    gx = cuda.device_array((n, c, h, w), dtype=gy.dtype)
    _launch(_adaptive_avg_bwd, gx.size, _planes(gy), _planes(gx))
    return gx


def adaptive_max_pool2d_forward(x, output_size, with_indices=True):
    """x: (N, C, H, W) -> (y (N, C, OH, OW), indices int64 flat in the plane, or None)."""
    op = "adaptive_max_pool2d_forward"
    _pool.check_input4d(op, x)
    oh, ow = _pool.adaptive_output_size(op, x.shape, output_size)
    y = cuda.device_array(x.shape[:2] + (oh, ow), dtype=x.dtype)
    idx = cuda.device_array(y.shape, dtype=np.int64) if with_indices else None
    _launch(_adaptive_max_fwd, y.size, _planes(x), _planes(y),
            _planes(idx) if with_indices else _dummy_indices(), bool(with_indices))
    return y, idx


def adaptive_max_pool2d_backward(gy, indices, x_shape):
    """gx (x_shape): each gy[n, c, o] added at its argmax."""
    op = "adaptive_max_pool2d_backward"
    n, c, h, w = _pool.check_x_shape(op, x_shape)
    _pool.check_grad_output(op, gy, "float", (n, c, None, None))
    _pool.check_indices(op, indices, gy.shape)
    gx = cuda.device_array((n, c, h, w), dtype=gy.dtype)
    _launch(_adaptive_max_bwd, gx.size, _planes(gy), _planes(indices), _planes(gx))
    return gx


def ptx_signatures():
    """(kernel, signature) pairs the launchers use, float32 and float64."""
    from numba import boolean, float32, float64, int64
    i3 = int64[:, :, ::1]
    out = []
    for f in (float32, float64):
        a3 = f[:, :, ::1]
        i = int64
        out += [
            (_max_pool_fwd, (a3, a3, i3, i, i, i, i, i, i, i, i, boolean)),
            (_max_pool_bwd, (a3, i3, a3, i, i, i, i, i, i, i, i)),
            (_avg_pool_fwd, (a3, a3, i, i, i, i, i, i, i, i, boolean, i)),
            (_avg_pool_bwd, (a3, a3, i, i, i, i, i, i, i, i, boolean, i)),
            (_lp_pool_fwd, (a3, a3, float64, i, i, i, i)),
            (_lp_pool_bwd, (a3, a3, a3, a3, float64, i, i, i, i)),
            (_adaptive_avg_fwd, (a3, a3)),
            (_adaptive_avg_bwd, (a3, a3)),
            (_adaptive_max_fwd, (a3, a3, i3, boolean)),
            (_adaptive_max_bwd, (a3, i3, a3)),
        ]
    return out
