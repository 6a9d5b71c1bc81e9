"""Differentiable 2-D convolution (torch.nn.functional.conv2d, plus TensorFlow-style "same").

    y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s] * x[n, g*C/G + c, p*sh + r*dh - top,
                                                               q*sw + s*dw - left]

The backward runs two more convolution-shaped kernels, each only when needed:
    grad_x = conv_transpose(grad_y, w)       grad_w = correlate(x, grad_y)       grad_b = sum grad_y
Shapes, padding forms and the two algorithms: see ``nbdl.kernels.conv``; how "auto" is
resolved: see ``nbdl.backends``.
"""
import time

import numpy as np

from nbdl import backends
from nbdl.device import kernels, synchronize
from nbdl.kernels.conv import check_algo, conv2d_geometry
from nbdl.ops._checks import as_tensor, check_same_device, check_same_dtype, check_tensor
from nbdl.tensor import make_tensor, needs_grad

__all__ = ["conv2d"]

_OP = "conv2d"


def _check(x, w, b, stride, padding, dilation, groups, algo):
    """Validate everything before any kernel runs; return the ConvGeom."""
    check_tensor(_OP, "input", x, ndim=4, dtype="float")
    check_tensor(_OP, "weight", w, ndim=4, dtype="float")
    if b is not None:
        check_tensor(_OP, "bias", b, ndim=1, dtype="float")
    check_same_device(_OP, input=x, weight=w, bias=b)
    check_same_dtype(_OP, input=x, weight=w, bias=b)
    check_algo(_OP, algo)
    geom = conv2d_geometry(_OP, x.shape, w.shape, stride, padding, dilation, groups)
    if b is not None and b.shape != (geom.K,):
        raise ValueError(f"{_OP}: bias must have shape ({geom.K},) to match weight.shape={w.shape}, "
                         f"got {b.shape}")
    return geom


def _contiguous(t):
    """The tensor's array in C order (kernels index flat memory)."""
    a = t.array
    if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
        return np.ascontiguousarray(a)
    return a


def _resolve_algo(algo, geom, x, w, b, backward):
    """The algorithm to run: the call's choice, else the global one, else a measured
    winner (nbdl.backends.benchmark), else "auto": the shape heuristic, pass by pass."""
    if algo != "auto":
        return algo
    if backends.get_conv_algo() != "auto":
        return backends.get_conv_algo()
    if not backends.benchmark:
        return "auto"               # the kernels pick per pass (see nbdl.kernels.conv.choose_algo)
    key = ("conv2d", x.device, str(x.dtype), geom, b is not None, backward)
    winner = backends.benchmark_winner(key)
    if winner is None:
        winner = _measure(geom, x, w, b, backward)
        backends.record_benchmark_winner(key, winner)
    return winner


def _measure(geom, x, w, b, backward, repeats=3):
    """Time each algorithm on these very arrays (the forward, plus both backward passes when
    the call will need them); the first run of each compiles and is not counted."""
    K = kernels("conv", x.device)
    g = geom
    hyper = ((g.sh, g.sw), (g.pt, g.pb, g.pl, g.pr), (g.dh, g.dw), g.G)
    xa, wa = _contiguous(x), _contiguous(w)
    ba = None if b is None else b.array

    def step(algo):
        y = K.conv2d_forward(xa, wa, ba, *hyper, algo=algo)
        if backward:
            K.conv2d_backward_input(y, wa, x.shape, *hyper, algo=algo)
            K.conv2d_backward_weight(y, xa, w.shape, *hyper, algo=algo)
        synchronize(x.device)

    best, winner = None, None
    for algo in ("im2col", "direct"):
        step(algo)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(algo)
            times.append(time.perf_counter() - t0)
        if best is None or min(times) < best:
            best, winner = min(times), algo
    return winner


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algo="auto"):
    """2-D convolution over an NCHW batch (PyTorch semantics).

    input (N, C, H, W); weight (K, C/groups, R, S); bias (K,) or None -> (N, K, P, Q).
    stride, dilation: int or (h, w). padding: int, (ph, pw), (top, bottom, left, right),
    "valid", or "same" (TensorFlow's rule, so also with stride > 1: P = ceil(H / sh), the
    odd pixel of padding at the bottom/right). groups divides C and K (groups == C:
    depthwise). algo: "direct", "im2col" or "auto" (see nbdl.backends for how "auto" picks).
    """
    x, w = as_tensor(input), as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    geom = _check(x, w, b, stride, padding, dilation, groups, algo)
    g = geom
    # the kernels take the normalized geometry: padding is resolved once, here
    hyper = ((g.sh, g.sw), (g.pt, g.pb, g.pl, g.pr), (g.dh, g.dw), g.G)
    algo = _resolve_algo(algo, geom, x, w, b, needs_grad(x, w, b))
    K = kernels("conv", x.device)
    xa, wa = _contiguous(x), _contiguous(w)
    y = K.conv2d_forward(xa, wa, None if b is None else b.array, *hyper, algo=algo)

    def backward(gy):
        if isinstance(gy, np.ndarray):
            gy = np.ascontiguousarray(gy)
        gx = K.conv2d_backward_input(gy, wa, x.shape, *hyper, algo=algo) if x.requires_grad else None
        gw = K.conv2d_backward_weight(gy, xa, w.shape, *hyper, algo=algo) if w.requires_grad else None
        if b is None:
            return gx, gw
        return gx, gw, (K.conv2d_backward_bias(gy) if b.requires_grad else None)

    parents = (x, w) if b is None else (x, w, b)
    return make_tensor(y, parents, backward)
