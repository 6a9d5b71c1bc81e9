"""Pointwise activations through the Tensor API: nbdl vs PyTorch.

Memory-bound, except that sigmoid and tanh cost a polynomial exp per element: the
numbers show whether that exp vectorizes (nbdl.kernels._fastmath) and the
framework overhead at the small shape.
"""
import numpy as np

from ._common import DEVICES, Benchmark, first_time, flops, largest_shape_only, nbdl_on, prod, randn, torch_on

SHAPES = [(256, 1024), (2048, 2048)]


class _Activation(Benchmark):
    """y = f(x) and its backward with an all-ones upstream gradient."""

    params = (DEVICES, SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        self.fw = self.framework(device)
        self.x = self.fw.tensor(randn(shape), requires_grad=True)
        self.grad = self.fw.tensor(np.ones(shape, np.float32))
        if first_time(type(self), device, shape):
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


class _Relu(_Activation):
    def op(self, x):
        return self.fw.F.relu(x)

    @flops(lambda device, shape: prod(shape))
    def time_relu_forward(self, device, shape):
        self.forward()

    @flops(lambda device, shape: 2 * prod(shape))
    def time_relu_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Activation.params)
    def peakmem_relu(self, device, shape):
        self.forward_backward()


class _Sigmoid(_Activation):
    def op(self, x):
        return self.fw.F.sigmoid(x)

    def time_sigmoid_forward(self, device, shape):
        self.forward()

    def time_sigmoid_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Activation.params)
    def peakmem_sigmoid(self, device, shape):
        self.forward_backward()


class _Tanh(_Activation):
    def op(self, x):
        return self.fw.F.tanh(x)

    def time_tanh_forward(self, device, shape):
        self.forward()

    def time_tanh_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Activation.params)
    def peakmem_tanh(self, device, shape):
        self.forward_backward()


class Relu(_Relu):
    pass


class TorchRelu(_Relu):
    framework = staticmethod(torch_on)


class Sigmoid(_Sigmoid):
    pass


class TorchSigmoid(_Sigmoid):
    framework = staticmethod(torch_on)


class Tanh(_Tanh):
    pass


class TorchTanh(_Tanh):
    framework = staticmethod(torch_on)
