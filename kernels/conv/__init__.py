"""2-D convolution: shape arithmetic and argument checks shared by both backends.

Layouts follow PyTorch: activations NCHW, weights OIHW (``K, C/groups, R, S``).
For input ``x (N, C, H, W)`` and weight ``w (K, C/G, R, S)`` with stride
``(sh, sw)``, dilation ``(dh, dw)`` and padding ``(top, bottom, left, right)``::

    P = (H + top + bottom - dh*(R-1) - 1) // sh + 1
    Q = (W + left + right - dw*(S-1) - 1) // sw + 1
    y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s]
                    * x[n, g*C/G + c, p*sh + r*dh - top, q*sw + s*dw - left]

where ``g = k // (K/G)`` and ``x`` reads as zero outside the image.

``padding`` accepts an int, ``(ph, pw)``, ``(top, bottom, left, right)``,
``"valid"`` (no padding) or ``"same"``. ``"same"`` follows TensorFlow's rule,
which also covers stride > 1: ``P = ceil(H / sh)``, the total padding
``max((P-1)*sh + dh*(R-1) + 1 - H, 0)`` is split with the odd pixel at the
bottom/right (for stride 1 this is exactly PyTorch's ``padding="same"``).
"""
from collections import namedtuple

from nbdl.kernels._checks import check_array, check_float, _is_int

ALGOS = ("direct", "im2col")

ConvGeom = namedtuple("ConvGeom", [
    "N", "C", "H", "W",          # input
    "K", "R", "S",               # output channels, kernel height/width
    "G", "Cg", "Kg",             # groups, input/output channels per group
    "sh", "sw", "dh", "dw",      # stride, dilation
    "pt", "pb", "pl", "pr",      # padding top, bottom, left, right
    "P", "Q",                    # output height, width
])


def _pair(op, name, v, minimum):
    """An int or a pair of ints, each >= minimum -> (a, b)."""
    vals = (v, v) if _is_int(v) else v
    if not isinstance(vals, (tuple, list)) or len(vals) != 2 or not all(_is_int(e) for e in vals):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if any(e < minimum for e in vals):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return int(vals[0]), int(vals[1])


def _same_padding(size, k, stride, dilation):
    """TensorFlow's "same": output ceil(size/stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d_padding(op, padding, H, W, R, S, stride, dilation):
    """Normalize any padding form to (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            return _same_padding(H, R, stride[0], dilation[0]) + _same_padding(W, S, stride[1], dilation[1])
        raise ValueError(f"{op}: padding must be 'valid', 'same', an int or a tuple of ints, got {padding!r}")
    if _is_int(padding):
        padding = (padding, padding)
    if not isinstance(padding, (tuple, list)) or len(padding) not in (2, 4) \
            or not all(_is_int(p) for p in padding):
        raise TypeError(f"{op}: padding must be 'valid', 'same', an int, (ph, pw) or "
                        f"(top, bottom, left, right), got {padding!r}")
    if any(p < 0 for p in padding):
        raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
    if len(padding) == 2:
        return int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1])
    return tuple(int(p) for p in padding)


def conv2d_geometry(op, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Validate a convolution's hyperparameters against the shapes; return a ConvGeom.

    Raises ValueError/TypeError naming the argument and the shapes for: a rank
    other than 4, a channel mismatch, groups not dividing the channels, a
    non-positive stride/dilation, negative padding, or a (dilated) kernel
    larger than the padded input.
    """
    x_shape, w_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in w_shape)
    shapes = f"(x.shape={x_shape}, weight.shape={w_shape})"
    if len(x_shape) != 4:
        raise ValueError(f"{op}: x must have 4 dimensions (N, C, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"{op}: weight must have 4 dimensions (out_channels, in_channels/groups, kH, kW), "
                         f"got shape {w_shape}")
    if not _is_int(groups):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    if min(w_shape) < 1 or min(x_shape[1:]) < 1:
        raise ValueError(f"{op}: empty channel or kernel dimension {shapes}")
    if C % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the {C} input channels {shapes}")
    if K % groups:
        raise ValueError(f"{op}: groups={groups} does not divide the {K} output channels {shapes}")
    if Cg * groups != C:
        raise ValueError(f"{op}: weight has {Cg} input channels per group but x has {C // groups} "
                         f"(groups={groups}) {shapes}")
    sh, sw = _pair(op, "stride", stride, 1)
    dh, dw = _pair(op, "dilation", dilation, 1)
    pt, pb, pl, pr = conv2d_padding(op, padding, H, W, R, S, (sh, sw), (dh, dw))
    eff_r, eff_s = dh * (R - 1) + 1, dw * (S - 1) + 1
    if eff_r > H + pt + pb or eff_s > W + pl + pr:
        raise ValueError(f"{op}: kernel size ({eff_r}, {eff_s}) (dilated) is larger than the padded input "
                         f"({H + pt + pb}, {W + pl + pr}) {shapes}")
    P = (H + pt + pb - eff_r) // sh + 1
    Q = (W + pl + pr - eff_s) // sw + 1
    return ConvGeom(N, C, H, W, K, R, S, groups, Cg, K // groups, sh, sw, dh, dw, pt, pb, pl, pr, P, Q)


def check_algo(op, algo):
    """algo is "direct", "im2col" or "auto"."""
    if algo not in ALGOS + ("auto",):
        raise ValueError(f"{op}: algo must be 'direct', 'im2col' or 'auto', got {algo!r}")
    return algo


def choose_algo(geom, device, op="conv2d_forward"):
    """The algorithm "auto" uses for one pass of a convolution (a heuristic; see also
    nbdl.backends). op: "conv2d_forward", "conv2d_backward_input" or "conv2d_backward_weight".

    CPU: "im2col" (implicit GEMMs on a SIMD register block, ~200 GFLOP/s per thread)
    unless its blocks would be mostly padding, for stride 1 only (the direct kernels
    vectorize along output rows, which a stride breaks):
    - forward: the block spans 6 output channels, so "direct" for at most 4 per group
      (e.g. depthwise), and for a patch of at most 32 values (e.g. LeNet's first layer,
      one channel with 5x5 filters), where the GEMM's fixed costs dominate;
    - input gradient: a forward convolution whose outputs are the input channels, so
      "direct" for at most 4 input channels per group (e.g. RGB or grey images);
    - weight gradient: the block spans 64 float32 output channels (AVX-512), so "direct"
      for at most 16.

    CUDA: "im2col" (tiled shared-memory GEMM) when the GEMM is deep enough to
    fill its tiles (input channels per group x kernel area >= 16 and output
    channels per group >= 16); "direct" (one thread per output) otherwise,
    e.g. depthwise convolutions and first layers with one output group of few filters.
    """
    if device == "cpu":
        if geom.sh != 1 or geom.sw != 1:
            return "im2col"
        few = {"conv2d_forward": geom.Kg <= 4 or geom.Cg * geom.R * geom.S <= 32,
               "conv2d_backward_input": geom.Cg <= 4,
               "conv2d_backward_weight": geom.Kg <= 16}
        return "direct" if few[op] else "im2col"
    deep = geom.Cg * geom.R * geom.S >= 16 and geom.Kg >= 16
    return "im2col" if deep else "direct"


def resolve_algo(op, algo, geom, device):
    """"auto" -> choose_algo(geom, device, op); other names are checked and returned."""
    check_algo(op, algo)
    return choose_algo(geom, device, op) if algo == "auto" else algo


def check_forward_args(op, x, weight, bias, stride, padding, dilation, groups):
    """Validate conv2d_forward's arguments; return the ConvGeom."""
    check_array(op, "x", x, ndim=4, dtype="float")
    check_array(op, "weight", weight, ndim=4, dtype="float")
    check_float(op, x=x, weight=weight, bias=bias)
    geom = conv2d_geometry(op, x.shape, weight.shape, stride, padding, dilation, groups)
    if bias is not None:
        check_array(op, "bias", bias, dtype="float", shape=(geom.K,))
    return geom


def check_grad_out(op, grad_out, geom):
    """grad_out has the forward output's shape (N, K, P, Q)."""
    check_array(op, "grad_out", grad_out, ndim=4, dtype="float",
                shape=(geom.N, geom.K, geom.P, geom.Q))


def check_shape_arg(op, name, shape):
    """A 4-tuple of ints."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4 or not all(_is_int(d) for d in shape):
        raise TypeError(f"{op}: {name} must be a tuple of 4 ints, got {shape!r}")
    return tuple(int(d) for d in shape)


def check_backward_input_args(op, grad_out, weight, x_shape, stride, padding, dilation, groups):
    """Validate conv2d_backward_input's arguments; return the ConvGeom."""
    x_shape = check_shape_arg(op, "x_shape", x_shape)
    check_array(op, "weight", weight, ndim=4, dtype="float")
    check_float(op, grad_out=grad_out, weight=weight)
    geom = conv2d_geometry(op, x_shape, weight.shape, stride, padding, dilation, groups)
    check_grad_out(op, grad_out, geom)
    return geom


def check_backward_weight_args(op, grad_out, x, weight_shape, stride, padding, dilation, groups):
    """Validate conv2d_backward_weight's arguments; return the ConvGeom."""
    weight_shape = check_shape_arg(op, "weight_shape", weight_shape)
    check_array(op, "x", x, ndim=4, dtype="float")
    check_float(op, grad_out=grad_out, x=x)
    geom = conv2d_geometry(op, x.shape, weight_shape, stride, padding, dilation, groups)
    check_grad_out(op, grad_out, geom)
    return geom


def check_col_args(op, x_shape, kernel_size, stride, padding, dilation):
    """Geometry for im2col/col2im (one group, a kernel of kernel_size)."""
    x_shape = check_shape_arg(op, "x_shape", x_shape)
    R, S = _pair(op, "kernel_size", kernel_size, 1)
    return conv2d_geometry(op, x_shape, (1, x_shape[1], R, S), stride, padding, dilation, 1)
