"""GEMM and the Linear layer: nbdl vs PyTorch, and numpy's sgemm as the machine's peak.

* ``Sgemm``: float32 numpy (2048, 2048) @ (2048, 2048), the reference rate the report
  divides every GFLOP/s by (``sgemm_reference``).
* ``Matmul``: ``a @ b`` on Tensors (nbdl.kernels.linalg: BLAS on cpu, a tiled
  shared-memory kernel on cuda), forward and forward + backward.
* ``Linear``: F.linear(x, weight, bias) with PyTorch's (out, in) weight; the backward
  is three GEMM-sized pieces (input, weight and bias gradients).
"""
import numpy as np

from ._common import (
    DEVICES, Benchmark, first_time, flops, largest_shape_only, matmul_flops, nbdl_on, randn,
    sgemm_reference, torch_on,
)

SGEMM_N = 2048
MATMUL_SHAPES = [(512, 512, 512), (2048, 2048, 2048)]       # (m, k, n)
LINEAR_SHAPES = [(128, 784, 256), (1024, 1024, 1024)]       # (batch, in_features, out_features)


class Sgemm(Benchmark):
    """numpy float32 GEMM: the practical peak of this machine."""

    def setup(self):
        self.a = randn((SGEMM_N, SGEMM_N))
        self.b = randn((SGEMM_N, SGEMM_N), seed=1)
        self.out = np.empty((SGEMM_N, SGEMM_N), np.float32)

    @sgemm_reference(SGEMM_N)
    def time_sgemm(self):
        np.matmul(self.a, self.b, out=self.out)


class _Matmul(Benchmark):
    params = (DEVICES, MATMUL_SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        m, k, n = shape
        self.fw = self.framework(device)
        self.a = self.fw.tensor(randn((m, k)), requires_grad=True)
        self.b = self.fw.tensor(randn((k, n), seed=1), requires_grad=True)
        self.grad = self.fw.tensor(np.ones((m, n), np.float32))
        if first_time(type(self), device, shape):
            self.forward_backward()

    def forward_backward(self):
        (self.a @ self.b).backward(self.grad)
        self.fw.sync()

    @flops(lambda device, shape: matmul_flops(*shape))
    def time_matmul_forward(self, device, shape):
        with self.fw.no_grad():
            self.a @ self.b
        self.fw.sync()

    @flops(lambda device, shape: 3 * matmul_flops(*shape))
    def time_matmul_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_matmul(self, device, shape):
        self.forward_backward()


def _linear_flops(device, shape):
    batch, n_in, n_out = shape
    return matmul_flops(batch, n_out, n_in)


class _Linear(Benchmark):
    params = (DEVICES, LINEAR_SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, shape):
        batch, n_in, n_out = shape
        self.fw = self.framework(device)
        self.x = self.fw.tensor(randn((batch, n_in)), requires_grad=True)
        self.w = self.fw.tensor(randn((n_out, n_in), seed=1) * 0.03, requires_grad=True)
        self.b = self.fw.tensor(randn((n_out,), seed=2), requires_grad=True)
        self.grad = self.fw.tensor(np.ones((batch, n_out), np.float32))
        if first_time(type(self), device, shape):
            self.forward_backward()

    def forward_backward(self):
        self.fw.F.linear(self.x, self.w, self.b).backward(self.grad)
        self.fw.sync()

    @flops(_linear_flops)
    def time_linear_forward(self, device, shape):
        with self.fw.no_grad():
            self.fw.F.linear(self.x, self.w, self.b)
        self.fw.sync()

    @flops(lambda device, shape: 3 * _linear_flops(device, shape))
    def time_linear_forward_backward(self, device, shape):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_linear(self, device, shape):
        self.forward_backward()


class Matmul(_Matmul):
    pass


class TorchMatmul(_Matmul):
    framework = staticmethod(torch_on)


class Linear(_Linear):
    pass


class TorchLinear(_Linear):
    framework = staticmethod(torch_on)
