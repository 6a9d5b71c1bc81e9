"""Conv2d (torch.nn.Conv2d names, arguments, initialization and state_dict keys)."""
import math

import nbdl
from nbdl.kernels.conv import check_algo, conv2d_padding
from nbdl.nn import init
from nbdl.nn.module import Module, Parameter
from nbdl.ops.conv import conv2d

__all__ = ["Conv2d"]


def _pair(name, v):
    """An int or a pair of positive ints -> (a, b) (ValueError naming the argument)."""
    vals = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(vals, (tuple, list)) or len(vals) != 2 or \
            not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in vals):
        raise ValueError(f"Conv2d: {name} must be a positive int or a pair of positive ints, got {v!r}")
    return tuple(vals)


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"Conv2d: {name} must be a positive int, got {v!r}")
    return v


class Conv2d(Module):
    """2-D convolution layer over NCHW input: y = conv2d(x, weight, bias, ...).

    weight (out_channels, in_channels/groups, kH, kW), bias (out_channels,). Initialized
    like PyTorch: weight ~ kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with fan_in = in_channels/groups * kH * kW, and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    so a torch.nn.Conv2d state_dict loads and gives the same output.

    padding: int, (ph, pw), (top, bottom, left, right), "valid" or "same" (also with
    stride > 1, TensorFlow's rule; see nbdl.functional.conv2d). padding_mode: "zeros" only.
    algo: "direct", "im2col" or "auto" (see nbdl.backends).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", algo="auto", device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive("in_channels", in_channels)
        self.out_channels = _positive("out_channels", out_channels)
        self.groups = _positive("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.dilation = _pair("dilation", dilation)
        # validates every padding form now (the image size only matters for "same")
        conv2d_padding("Conv2d", padding, 1, 1, *self.kernel_size, self.stride, self.dilation)
        self.padding = padding if isinstance(padding, str) else \
            ((padding, padding) if isinstance(padding, int) else tuple(padding))
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode must be 'zeros' (the only one implemented), "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.algo = check_algo("Conv2d", algo)
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(nbdl.empty(shape, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(nbdl.empty((out_channels,), dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups, self.algo)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), (0, 0, 0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        return s
