"""softmax, log_softmax and cross_entropy over the last axis: nbdl vs PyTorch.

Shapes are (rows, classes): a classifier head (256, 1000) and a wide one
(32*32 rows, 10000 classes). Each element costs one exp in the forward; the
numbers show the vectorized exp and row reductions of the CPU kernels.
"""
import numpy as np

from ._common import DEVICES, Benchmark, first_time, largest_shape_only, nbdl_on, randn, torch_on

SHAPES = [(256, 1000), (32 * 32, 10000)]


class _Rows(Benchmark):
    """An op on float32 logits (rows, classes) and its backward."""

    params = (DEVICES, SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        self.fw = self.framework(device)
        self.x = self.fw.tensor(randn(shape) * 4, requires_grad=True)
        self.target = self.fw.tensor(np.random.default_rng(0).integers(0, shape[1], shape[0]))
        out_shape = self.out_shape(shape)
        # a scalar loss takes the implicit gradient 1
        self.grad = self.fw.tensor(np.ones(out_shape, np.float32)) if out_shape else None
        if first_time(type(self), device, shape):
            self.forward_backward()

    def out_shape(self, shape):
        return shape

    def op(self, x):
        raise NotImplementedError

    def forward(self):
        with self.fw.no_grad():
            self.op(self.x)
        self.fw.sync()

    def forward_backward(self):
        self.op(self.x).backward(self.grad)
        self.fw.sync()


class _Softmax(_Rows):
    def op(self, x):
        return self.fw.F.softmax(x, 1)

    def time_softmax_forward(self, device, shape):
        self.forward()

    def time_softmax_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Rows.params)
    def peakmem_softmax(self, device, shape):
        self.forward_backward()


class _LogSoftmax(_Rows):
    def op(self, x):
        return self.fw.F.log_softmax(x, 1)

    def time_log_softmax_forward(self, device, shape):
        self.forward()

    def time_log_softmax_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Rows.params)
    def peakmem_log_softmax(self, device, shape):
        self.forward_backward()


class _CrossEntropy(_Rows):
    """Mean cross entropy with label smoothing (the fused kernel's full path)."""

    def out_shape(self, shape):
        return ()

    def op(self, x):
        return self.fw.F.cross_entropy(x, self.target, label_smoothing=0.1)

    def time_cross_entropy_forward(self, device, shape):
        self.forward()

    def time_cross_entropy_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Rows.params)
    def peakmem_cross_entropy(self, device, shape):
        self.forward_backward()


class Softmax(_Softmax):
    pass


class TorchSoftmax(_Softmax):
    framework = staticmethod(torch_on)


class LogSoftmax(_LogSoftmax):
    pass


class TorchLogSoftmax(_LogSoftmax):
    framework = staticmethod(torch_on)


class CrossEntropy(_CrossEntropy):
    pass


class TorchCrossEntropy(_CrossEntropy):
    framework = staticmethod(torch_on)
