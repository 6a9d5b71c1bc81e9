"""Pooling: window arithmetic and argument checks shared by the cpu and cuda kernels.

All kernels see a batch of planes ``(P, H, W)`` with ``P = N * C`` (NCHW memory,
one plane per (sample, channel)). Output position ``o`` along an axis covers the
input taps ``o * stride - pad_begin + i * dilation`` for ``i < kernel``; taps outside
``[0, size)`` are padding. Sizes follow PyTorch::

    out = floor_or_ceil((size + 2 * pad - dilation * (kernel - 1) - 1) / stride) + 1

and, with ``ceil_mode``, a last window that would start inside the end padding is
dropped. TensorFlow-style ``padding="valid"`` means no padding; ``padding="same"``
gives ``out = ceil(size / stride)`` and splits the needed padding with the extra
element at the end (``pad_begin = total // 2``).

Adaptive pooling: output ``o`` of ``out`` covers input rows
``[floor(o * size / out), ceil((o + 1) * size / out))``.

The small pure functions at the bottom (``tap_range``, ``avg_divisor``,
``adaptive_start``, ``adaptive_end``) are compiled by both backends (``njit`` inline
on cpu, ``cuda.jit(device=True)`` on cuda), so both compute the same windows.
"""
from collections import namedtuple

from .._checks import check_array, check_int, check_positive_int, check_finite

Pool2dGeometry = namedtuple(
    "Pool2dGeometry",
    "kh kw sh sw ph pw dh dw oh ow eh ew",
)
Pool2dGeometry.__doc__ = """Resolved window of a 2-D pooling.

kh, kw: kernel; sh, sw: stride; ph, pw: padding before the first row/column;
dh, dw: dilation; oh, ow: output size; eh, ew: end of the padded input
(``H + pad_end``), the bound that clips an average-pool window for the
``count_include_pad`` divisor, like PyTorch.
"""


def _pair(op, name, v, check=check_positive_int):
    """An int or a pair of ints -> a checked (h, w) tuple."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        return check(op, name, v[0]), check(op, name, v[1])
    v = check(op, name, v)
    return v, v


def check_input4d(op, x, name="x"):
    """x: (N, C, H, W) float array with C, H, W >= 1 (N may be 0)."""
    check_array(op, name, x, ndim=4, dtype="float")
    _, c, h, w = x.shape
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{op}: {name} must have non-zero channels and spatial sizes, got shape {tuple(x.shape)}")
    return x


def output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling output size along one axis (may be < 1: the caller checks)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1   # the last window would start inside the end padding
    return out


def _same_padding(size, kernel, stride, dilation):
    """TensorFlow 'same': out = ceil(size / stride), padding split begin <= end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return out, total // 2, total - total // 2


def pool2d_geometry(op, shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Check pooling parameters against an input shape (N, C, H, W) -> Pool2dGeometry.

    kernel_size, stride, dilation: int or (h, w), positive; stride None means
    kernel_size. padding: int or (h, w) with 0 <= pad <= kernel // 2 (PyTorch's
    rule), or "same" / "valid".
    """
    kh, kw = _pair(op, "kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else _pair(op, "stride", stride)
    dh, dw = _pair(op, "dilation", dilation)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    _, c, h, w = shape
    if isinstance(padding, str):
        if padding == "valid":
            ph = pw = 0
            oh = output_size(h, kh, sh, 0, dh, ceil_mode)
            ow = output_size(w, kw, sw, 0, dw, ceil_mode)
            eh, ew = h, w
        elif padding == "same":
            oh, ph, ph_end = _same_padding(h, kh, sh, dh)
            ow, pw, pw_end = _same_padding(w, kw, sw, dw)
            eh, ew = h + ph_end, w + pw_end
        else:
            raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(op, "padding", padding, check=lambda o, n, v: check_int(o, n, v, minimum=0))
        if ph > kh // 2 or pw > kw // 2:
            raise ValueError(
                f"{op}: padding should be at most half of kernel_size, got padding=({ph}, {pw}), "
                f"kernel_size=({kh}, {kw})")
        oh = output_size(h, kh, sh, ph, dh, ceil_mode)
        ow = output_size(w, kw, sw, pw, dw, ceil_mode)
        eh, ew = h + ph, w + pw
    if oh >= 1 and ow >= 1 and (dh > 1 or dw > 1):
        _check_windows_see_input(op, h, w, Pool2dGeometry(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, eh, ew))
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{op}: output size is too small: input ({c}, {h}, {w}) with kernel_size=({kh}, {kw}), "
            f"stride=({sh}, {sw}), padding={padding!r}, dilation=({dh}, {dw}) gives ({c}, {oh}, {ow})")
    return Pool2dGeometry(kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, eh, ew)


def _check_windows_see_input(op, h, w, g):
    """With dilation a window can fall entirely on padding; PyTorch then returns -inf
    and an index outside the plane. Refuse such a configuration instead."""
    for size, k, s, pad, d, out, axis in ((h, g.kh, g.sh, g.ph, g.dh, g.oh, "height"),
                                          (w, g.kw, g.sw, g.pw, g.dw, g.ow, "width")):
        for o in range(out):
            i0, i1 = tap_range(o * s - pad, d, k, size)
            if i0 == i1:
                raise ValueError(
                    f"{op}: window {o} along the {axis} covers only padding (input size {size}, kernel {k}, "
                    f"stride {s}, padding {pad}, dilation {d}); reduce the padding or the dilation")


def check_divisor(op, divisor_override):
    """None or a positive int -> int (0 means 'no override' inside the kernels)."""
    if divisor_override is None:
        return 0
    return check_positive_int(op, "divisor_override", divisor_override)


def check_norm_type(op, norm_type):
    """LP pooling exponent: a finite number > 0."""
    p = check_finite(op, "norm_type", norm_type)
    if p <= 0:
        raise ValueError(f"{op}: norm_type must be > 0, got {norm_type!r}")
    return p


def adaptive_output_size(op, shape, output_size):
    """output_size: int or (h, w); None entries keep the input size. All >= 1."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
        oh, ow = output_size
    else:
        oh = ow = output_size
    oh = shape[2] if oh is None else check_positive_int(op, "output_size", oh)
    ow = shape[3] if ow is None else check_positive_int(op, "output_size", ow)
    return oh, ow


def check_grad_output(op, gy, dtype, shape, name="grad_output"):
    """gy: float array of the forward's output shape and dtype."""
    check_array(op, name, gy, ndim=4, dtype=dtype, shape=tuple(shape))
    return gy


def check_indices(op, indices, shape):
    check_array(op, "indices", indices, ndim=4, dtype="int64", shape=tuple(shape))
    return indices


def check_x_shape(op, x_shape):
    """A forward input shape (N, C, H, W) given back to a backward function."""
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4:
        raise ValueError(f"{op}: x_shape must be a 4-tuple (N, C, H, W), got {x_shape!r}")
    n = check_int(op, "x_shape", x_shape[0], minimum=0)
    c, h, w = (check_positive_int(op, "x_shape", v) for v in x_shape[1:])
    return n, c, h, w


# ---- window helpers, compiled by both backends ----------------------------------

def tap_range(start, dilation, kernel, size):
    """Taps i in [i0, i1) of a window starting at ``start`` that fall inside [0, size)."""
    if dilation == 1:   # no integer division on the common path: it costs more than the taps
        return max(0, -start), max(max(0, -start), min(kernel, size - start))
    i0 = 0
    if start < 0:
        i0 = (-start + dilation - 1) // dilation
    i1 = (size - start + dilation - 1) // dilation
    if i1 > kernel:
        i1 = kernel
    if i1 < i0:
        i1 = i0
    return i0, i1


def avg_divisor(hstart, wstart, kh, kw, h, w, eh, ew, count_include_pad, divisor):
    """PyTorch's average-pool divisor for the window at (hstart, wstart).

    divisor > 0 overrides; count_include_pad counts the window clipped to the
    padded input [.., eh) x [.., ew); otherwise only the real input taps count.
    """
    if divisor > 0:
        return divisor
    hend = min(hstart + kh, eh)
    wend = min(wstart + kw, ew)
    if count_include_pad:
        return (hend - hstart) * (wend - wstart)
    return (min(hend, h) - max(hstart, 0)) * (min(wend, w) - max(wstart, 0))


def adaptive_start(o, size, out):
    """First input row of adaptive window o: floor(o * size / out)."""
    return (o * size) // out


def adaptive_end(o, size, out):
    """One past the last input row of adaptive window o: ceil((o + 1) * size / out)."""
    return ((o + 1) * size + out - 1) // out
