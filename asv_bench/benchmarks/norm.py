"""Normalization layers in training mode: BatchNorm2d and LayerNorm, nbdl vs PyTorch.

BatchNorm2d(64) on a ResNet-stem activation (32, 64, 56, 56): batch statistics,
running-statistics update, normalization, and the backward with its two
per-channel reductions. LayerNorm(512) on (32, 128, 512) token activations.
All float32.
"""
import numpy as np

from ._common import DEVICES, Benchmark, first_time, largest_shape_only, nbdl_on, randn, torch_on

BN_SHAPES = [(32, 64, 56, 56)]
LN_SHAPES = [(32, 128, 512)]


class _Norm(Benchmark):
    """A normalization layer in training mode on a float32 input, and its backward."""

    params = (DEVICES, BN_SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        self.fw = self.framework(device)
        self.layer = self.make_layer(shape).to(device)
        self.x = self.fw.tensor(randn(shape), requires_grad=True)
        self.grad = self.fw.tensor(np.ones(shape, np.float32))
        if first_time(type(self), device, shape):
            self.forward()
            self.forward_backward()

    def make_layer(self, shape):
        raise NotImplementedError

    def forward(self):
        with self.fw.no_grad():
            self.layer(self.x)
        self.fw.sync()

    def forward_backward(self):
        self.layer(self.x).backward(self.grad)
        self.fw.sync()


class _BatchNorm2d(_Norm):
    def make_layer(self, shape):
        return self.fw.nn.BatchNorm2d(shape[1])

    def time_batch_norm_forward(self, device, shape):
        self.forward()

    def time_batch_norm_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Norm.params)
    def peakmem_batch_norm(self, device, shape):
        self.forward_backward()


class _LayerNorm(_Norm):
    params = (DEVICES, LN_SHAPES)

    def make_layer(self, shape):
        return self.fw.nn.LayerNorm(shape[-1])

    def time_layer_norm_forward(self, device, shape):
        self.forward()

    def time_layer_norm_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_layer_norm(self, device, shape):
        self.forward_backward()


class BatchNorm(_BatchNorm2d):
    pass


class TorchBatchNorm(_BatchNorm2d):
    framework = staticmethod(torch_on)


class LayerNorm(_LayerNorm):
    pass


class TorchLayerNorm(_LayerNorm):
    framework = staticmethod(torch_on)
