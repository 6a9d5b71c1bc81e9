"""Optimizer step time: nbdl's fused kernels vs torch.optim on the same parameter set.

One ``optimizer.step()`` over ``n`` parameter tensors of ``size`` elements each (gradients
already in place). The update is memory bound: Adam reads parameter, gradient and two
moments and writes three of them back (28 bytes per float32 element). nbdl runs one
fused kernel per tensor; torch's single-tensor ("for-loop", ``foreach=False``) path makes
about ten passes over memory, its ``foreach`` path batches them across tensors. The
twin's extra ``torch_impl`` parameter shows both; the report pairs nbdl with the first
("for-loop", torch's default on cpu).
"""
from ._common import DEVICES, Benchmark, first_time, largest_shape_only, nbdl_on, randn, torch_on

# (number of tensors, elements per tensor): 10M elements in big tensors, 1M in small ones
SHAPES = [(100, 10_000), (10, 1_000_000)]
TORCH_IMPLS = ["for-loop", "foreach"]


class _Step(Benchmark):
    """Builds ``n`` parameters with fixed gradients and an optimizer over them."""

    params = (DEVICES, SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape, *impl):
        self.fw = self.framework(device)
        n, size = shape
        self.params = []
        for i in range(n):
            p = self.fw.tensor(randn((size,), seed=i), requires_grad=True)
            p.grad = self.fw.tensor(randn((size,), seed=n + i))
            self.params.append(p)
        self.opt = self.make_optimizer(self.fw.module.optim, *impl)
        if first_time(type(self), device, shape, *impl):
            self.step()

    def make_optimizer(self, optim, *impl):
        raise NotImplementedError

    def step(self):
        self.opt.step()
        self.fw.sync()


class _TorchStep(_Step):
    params = (DEVICES, TORCH_IMPLS, SHAPES)
    param_names = ("device", "torch_impl", "shape")
    framework = staticmethod(torch_on)

    def setup(self, device, torch_impl, shape):
        super().setup(device, shape, torch_impl)


class AdamStep(_Step):
    def make_optimizer(self, optim, *impl):
        return optim.Adam(self.params, lr=1e-3, weight_decay=1e-4)

    def time_adam_step(self, device, shape):
        self.step()

    @largest_shape_only(_Step.params)
    def peakmem_adam_step(self, device, shape):
        self.step()


class TorchAdamStep(_TorchStep):
    def make_optimizer(self, optim, torch_impl):
        return optim.Adam(self.params, lr=1e-3, weight_decay=1e-4, foreach=torch_impl == "foreach")

    def time_adam_step(self, device, torch_impl, shape):
        self.step()

    @largest_shape_only(_TorchStep.params)
    def peakmem_adam_step(self, device, torch_impl, shape):
        self.step()


class SgdMomentumStep(_Step):
    def make_optimizer(self, optim, *impl):
        return optim.SGD(self.params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def time_sgd_momentum_step(self, device, shape):
        self.step()


class TorchSgdMomentumStep(_TorchStep):
    def make_optimizer(self, optim, torch_impl):
        return optim.SGD(self.params, lr=1e-3, momentum=0.9, weight_decay=1e-4,
                         foreach=torch_impl == "foreach")

    def time_sgd_momentum_step(self, device, torch_impl, shape):
        self.step()
