"""Pooling ops: max, average, power-average (LP) and adaptive pooling over 2-D planes.

PyTorch's signatures and semantics (window sizes, ``ceil_mode``, the average divisor,
``return_indices`` as flat positions ``h * W + w`` in each plane); ``padding`` also
accepts TensorFlow's ``"same"`` (output ``ceil(size / stride)``, padding split with
the extra element at the end) and ``"valid"`` (no padding). Inputs are
``(N, C, H, W)`` or unbatched ``(C, H, W)``.
"""
import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_tensor
from nbdl.tensor import Tensor, make_tensor, needs_grad

__all__ = ["max_pool2d", "avg_pool2d", "lp_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]


def _batched(op, x):
    """x as a contiguous (N, C, H, W) array, and a function putting x's batch shape back."""
    check_tensor(op, "input", x, ndim=(3, 4), dtype="float")
    a = x.array
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a)
    if x.ndim == 4:
        return a, lambda r: r
    return a.reshape((1,) + tuple(a.shape)), lambda r: r.reshape(tuple(r.shape)[1:])


def _stride(stride, kernel_size):
    """PyTorch: stride None (or an empty list) means the kernel size."""
    return kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride


def _contiguous(a):
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


def _with_indices(y, idx, x, unbatch, return_indices):
    if not return_indices:
        return y
    return y, Tensor(unbatch(idx), device=x.device)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling over (N, C, H, W) or (C, H, W) input.

    y[n, c, oh, ow] = max_{i < kh, j < kw} x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw],
    padding taps ignored. With return_indices, also the flat index ``h * W + w`` of
    each max (int64; first one on ties). The gradient goes to that index.
    """
    x = as_tensor(input)
    a, unbatch = _batched("max_pool2d", x)
    stride = _stride(stride, kernel_size)
    K = kernels("pool", x.device)
    track = needs_grad(x)
    ceil_mode = bool(ceil_mode)
    y, idx = K.max_pool2d_forward(a, kernel_size, stride, padding, dilation, ceil_mode,
                                  with_indices=track or return_indices)

    def backward(gy):
        gy = _contiguous(gy).reshape(y.shape)
        return (unbatch(K.max_pool2d_backward(gy, idx, a.shape, kernel_size, stride, padding,
                                              dilation, ceil_mode)),)

    out = make_tensor(unbatch(y), (x,), backward)
    return _with_indices(out, idx, x, unbatch, return_indices)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling over (N, C, H, W) or (C, H, W) input.

    y = (sum of the window's input taps) / divisor; the divisor is divisor_override
    if given, else the window size clipped to the padded input
    (count_include_pad=True) or the number of real input taps (False), like PyTorch.
    """
    x = as_tensor(input)
    a, unbatch = _batched("avg_pool2d", x)
    stride = _stride(stride, kernel_size)
    K = kernels("pool", x.device)
    ceil_mode, count_include_pad = bool(ceil_mode), bool(count_include_pad)
    y = K.avg_pool2d_forward(a, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override)

    def backward(gy):
        gy = _contiguous(gy).reshape(y.shape)
        return (unbatch(K.avg_pool2d_backward(gy, a.shape, kernel_size, stride, padding, ceil_mode,
                                              count_include_pad, divisor_override)),)

    return make_tensor(unbatch(y), (x,), backward)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    """2-D power-average pooling, PyTorch's lp_pool2d: y = (sum_window x^p)^(1/p).

    norm_type p > 0; p = 2 is L2 pooling (square root of the sum of squares),
    large p approaches max pooling. No padding; a ceil_mode edge window with
    ``count`` real taps is scaled by kh*kw/count, as in PyTorch (which computes
    avg_pool2d(x^p) * kh*kw). The gradient at a window whose output is 0 is 0
    (PyTorch gives NaN there).
    """
    x = as_tensor(input)
    a, unbatch = _batched("lp_pool2d", x)
    stride = _stride(stride, kernel_size)
    K = kernels("pool", x.device)
    ceil_mode = bool(ceil_mode)
    y = K.lp_pool2d_forward(a, norm_type, kernel_size, stride, ceil_mode)

    def backward(gy):
        gy = _contiguous(gy).reshape(y.shape)
        return (unbatch(K.lp_pool2d_backward(gy, a, y, norm_type, kernel_size, stride, ceil_mode)),)

    return make_tensor(unbatch(y), (x,), backward)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size (int or (h, w); None keeps that input size).

    Output row o averages input rows [floor(o*H/OH), ceil((o+1)*H/OH)); likewise for
    columns. output_size=1 is global average pooling.
    """
    x = as_tensor(input)
    a, unbatch = _batched("adaptive_avg_pool2d", x)
    K = kernels("pool", x.device)
    y = K.adaptive_avg_pool2d_forward(a, output_size)

    def backward(gy):
        gy = _contiguous(gy).reshape(y.shape)
        return (unbatch(K.adaptive_avg_pool2d_backward(gy, a.shape)),)

    return make_tensor(unbatch(y), (x,), backward)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max pooling to a fixed output size over the adaptive windows of
    adaptive_avg_pool2d; optionally also the flat argmax indices (int64)."""
    x = as_tensor(input)
    a, unbatch = _batched("adaptive_max_pool2d", x)
    K = kernels("pool", x.device)
    y, idx = K.adaptive_max_pool2d_forward(a, output_size, with_indices=needs_grad(x) or return_indices)

    def backward(gy):
        gy = _contiguous(gy).reshape(y.shape)
        return (unbatch(K.adaptive_max_pool2d_backward(gy, idx, a.shape)),)

    out = make_tensor(unbatch(y), (x,), backward)
    return _with_indices(out, idx, x, unbatch, return_indices)
