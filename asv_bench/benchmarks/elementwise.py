"""Elementwise ops and reductions through the Tensor API: nbdl vs PyTorch.

One of each kind: a binary op (add), a broadcast whose backward reduces (bias add),
a transcendental (exp) and a full reduction (sum).

Each op is written once in a private base class and run by two subclasses, ``<Op>``
(nbdl) and ``Torch<Op>``. These ops are memory-bound, so the interesting numbers are
the framework overhead at the small shape and the bandwidth at the large one.
"""
import numpy as np

from ._common import (
    DEVICES, Benchmark, first_time, flops, largest_shape_only, nbdl_on, prod, randn, torch_on,
)

SHAPES = [(256, 1024), (2048, 2048)]


class _Unary(Benchmark):
    """y = op(x) and its backward with an all-ones upstream gradient."""

    params = (DEVICES, SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        self.fw = self.framework(device)
        self.make_inputs(shape)
        if first_time(type(self), device, shape):
            self.forward_backward()  # compiles (or loads) every kernel involved

    def make_inputs(self, shape):
        self.x = self.fw.tensor(randn(shape), requires_grad=True)
        self.grad = self.fw.tensor(np.ones(self.out_shape(shape), np.float32))

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


class _Binary(_Unary):
    """z = op(a, b); ``b_shape`` gives b's shape from a's (broadcasting)."""

    def make_inputs(self, shape):
        super().make_inputs(shape)
        self.b = self.fw.tensor(randn(self.b_shape(shape), seed=1), requires_grad=True)

    def b_shape(self, shape):
        return shape


# --- the ops -------------------------------------------------------------------------

class _Add(_Binary):
    def op(self, x):
        return x + self.b

    @flops(lambda device, shape: prod(shape))
    def time_add_forward(self, device, shape):
        self.forward()

    @flops(lambda device, shape: prod(shape))
    def time_add_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Unary.params)
    def peakmem_add(self, device, shape):
        self.forward_backward()


class _AddBias(_Binary):
    """(rows, cols) + (cols,): the backward sums the gradient over rows."""

    def b_shape(self, shape):
        return shape[-1:]

    def op(self, x):
        return x + self.b

    @flops(lambda device, shape: prod(shape))
    def time_add_bias_forward(self, device, shape):
        self.forward()

    @flops(lambda device, shape: 2 * prod(shape))
    def time_add_bias_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Unary.params)
    def peakmem_add_bias(self, device, shape):
        self.forward_backward()


class _Exp(_Unary):
    def op(self, x):
        return x.exp()

    def time_exp_forward(self, device, shape):
        self.forward()

    def time_exp_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Unary.params)
    def peakmem_exp(self, device, shape):
        self.forward_backward()


class _Sum(_Unary):
    """Sum of all elements; the backward broadcasts the scalar gradient back."""

    def out_shape(self, shape):
        return ()

    def op(self, x):
        return x.sum()

    @flops(lambda device, shape: prod(shape))
    def time_sum_forward(self, device, shape):
        self.forward()

    @flops(lambda device, shape: prod(shape))
    def time_sum_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(_Unary.params)
    def peakmem_sum(self, device, shape):
        self.forward_backward()


# --- nbdl and its PyTorch twins ----------------------------------------------------------

class Add(_Add):
    pass


class TorchAdd(_Add):
    framework = staticmethod(torch_on)


class AddBias(_AddBias):
    pass


class TorchAddBias(_AddBias):
    framework = staticmethod(torch_on)


class Exp(_Exp):
    pass


class TorchExp(_Exp):
    framework = staticmethod(torch_on)


class Sum(_Sum):
    pass


class TorchSum(_Sum):
    framework = staticmethod(torch_on)
