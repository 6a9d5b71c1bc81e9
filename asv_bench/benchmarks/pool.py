"""Pooling: max_pool2d, avg_pool2d and adaptive_avg_pool2d, nbdl vs PyTorch.

ResNet-stem shapes: (32, 64, 56, 56) float32 with a 2x2 stride-2 window and a 3x3
stride-2 window with padding 1; global average pooling of a (64, 512, 7, 7) feature
map (adaptive_avg_pool2d to 1x1). Pooling is memory bound: the numbers show how
close each one runs to reading the input once.
"""
import numpy as np

from ._common import DEVICES, Benchmark, first_time, largest_shape_only, nbdl_on, randn, torch_on

# window name -> (kernel_size, stride, padding)
WINDOWS = {"k2s2": (2, 2, 0), "k3s2p1": (3, 2, 1)}
SHAPES = [(32, 64, 56, 56)]
GLOBAL_SHAPES = [(64, 512, 7, 7)]


class _Pool(Benchmark):
    """An op on a float32 (N, C, H, W) input and its backward."""

    windows = WINDOWS     # parameter "window" -> the op's arguments after x
    params = (DEVICES, list(WINDOWS), SHAPES)
    param_names = ("device", "window", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, window, shape):
        self.fw = self.framework(device)
        self.args = self.windows[window]
        self.x = self.fw.tensor(randn(shape), requires_grad=True)
        out = self.op(self.x)
        self.grad = self.fw.tensor(np.ones(tuple(out.shape), np.float32))
        if first_time(type(self), device, window, shape):
            self.forward()
            self.forward_backward()

    def op(self, x):
        raise NotImplementedError

    def forward(self):
        with self.fw.no_grad():
            self.op(self.x)
        self.fw.sync()

    def forward_backward(self):
        self.op(self.x).backward(self.grad)
        self.fw.sync()


class _MaxPool2d(_Pool):
    def op(self, x):
        return self.fw.F.max_pool2d(x, *self.args)

    def time_max_pool2d_forward(self, device, window, shape):
        self.forward()

    def time_max_pool2d_forward_backward(self, device, window, shape):
        self.forward_backward()

    @largest_shape_only(_Pool.params)
    def peakmem_max_pool2d(self, device, window, shape):
        self.forward_backward()


class _AvgPool2d(_Pool):
    def op(self, x):
        return self.fw.F.avg_pool2d(x, *self.args)

    def time_avg_pool2d_forward(self, device, window, shape):
        self.forward()

    def time_avg_pool2d_forward_backward(self, device, window, shape):
        self.forward_backward()

    @largest_shape_only(_Pool.params)
    def peakmem_avg_pool2d(self, device, window, shape):
        self.forward_backward()


class _AdaptiveAvgPool2d(_Pool):
    """Global average pooling (output 1x1)."""

    windows = {"out1x1": (1,)}   # output_size
    params = (DEVICES, list(windows), GLOBAL_SHAPES)

    def op(self, x):
        return self.fw.F.adaptive_avg_pool2d(x, *self.args)

    def time_adaptive_avg_pool2d_forward(self, device, window, shape):
        self.forward()

    def time_adaptive_avg_pool2d_forward_backward(self, device, window, shape):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_adaptive_avg_pool2d(self, device, window, shape):
        self.forward_backward()


class MaxPool2d(_MaxPool2d):
    pass


class TorchMaxPool2d(_MaxPool2d):
    framework = staticmethod(torch_on)


class AvgPool2d(_AvgPool2d):
    pass


class TorchAvgPool2d(_AvgPool2d):
    framework = staticmethod(torch_on)


class AdaptiveAvgPool2d(_AdaptiveAvgPool2d):
    pass


class TorchAdaptiveAvgPool2d(_AdaptiveAvgPool2d):
    framework = staticmethod(torch_on)
