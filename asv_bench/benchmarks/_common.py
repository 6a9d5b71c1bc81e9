"""Shared helpers and conventions for the nbdl asv benchmarks.

Conventions (every ``benchmarks/<family>.py`` follows them):

* A benchmark class subclasses :class:`Benchmark` (timing settings sized so the whole
  suite runs in under 30 minutes on a 2-core machine) and is parametrized by
  ``device`` (:data:`DEVICES`), then algorithm / dtype where they apply, then shape.
  Shapes are tuples of ints so the report can compute FLOP counts from them.
* ``setup`` calls :func:`require_device` (CUDA parameters show as n/a without a GPU;
  the CUDA simulator is never used for timing), builds inputs with :func:`randn`
  (cached, so asv's re-run of ``setup`` before every sample stays cheap), and makes
  one warm-up call (guarded by :func:`first_time`: once per process, not per sample)
  so compilation (or loading numba's on-disk cache) never lands in the timed region.
* Timed methods: ``time_<op>_forward`` (under ``no_grad``), ``time_<op>_forward_backward``
  and ``peakmem_<op>`` (decorated with :func:`largest_shape_only`). CUDA timings end
  with :func:`sync`.
* The PyTorch twin is a class named ``Torch<Op>`` beside ``<Op>`` with the same method
  names and the same parameters (or a subset of them, e.g. without ``algorithm``);
  its ``setup`` calls :func:`require_torch`. The report pairs ``<Op>`` with
  ``Torch<Op>`` by name and joins their results on the parameters they share.
  To write a body once for both, use :class:`Framework` (:func:`nbdl_on` /
  :func:`torch_on`) in a private base class, as ``elementwise.py`` and ``train_step.py`` do.
* Nothing runs at import time (no kernel, no torch op): asv forks every benchmark from
  a process that imported the suite, and a thread pool started there hangs the forks.
* FLOP counts for GFLOP/s are declared with the :func:`flops` decorator on the nbdl
  method; the twin inherits them through the pairing.

Example (``import nbdl, nbdl.functional as F``)::

    class Relu(Benchmark):
        params = (DEVICES, [(1 << 20,)])
        param_names = ("device", "shape")

        def setup(self, device, shape):
            require_device(device)
            self.x = tensor(randn(shape), device)
            if first_time(type(self), device, shape):
                F.relu(self.x)                      # compile / load the cache

        @flops(lambda device, shape: prod(shape))
        def time_relu_forward(self, device, shape):
            with nbdl.no_grad():
                F.relu(self.x)
            sync(device)

        @largest_shape_only(params)
        def peakmem_relu(self, device, shape):
            F.relu(self.x)

    class TorchRelu(Benchmark):
        params, param_names = Relu.params, Relu.param_names

        def setup(self, device, shape):
            torch = require_torch(device)
            ...
"""
import functools
import itertools
import math

import numpy as np

DEVICES = ["cpu", "cuda"]
DTYPES = ["float32"]

try:
    # Imported once here rather than inside each Torch* setup: with asv's forkserver the
    # benchmark processes inherit it, and every peakmem_* carries the same baseline.
    import torch as _torch
except ImportError:  # PyTorch is optional: the Torch* benchmarks show as n/a
    _torch = None


class Benchmark:
    """Default asv settings for nbdl benchmarks (override per class when needed).

    asv re-runs ``setup`` before each sample, so a benchmark costs about
    ``samples * (setup + one call)``; three to ten samples within 4 s keep the
    suite under 30 minutes on two cores while the median stays stable.
    """

    rounds = 1                 # one pass over the suite (asv's default is 2)
    repeat = (3, 10, 4.0)      # (min samples, max samples, max seconds per parameter set)
    warmup_time = 0.05         # the warm-up call in setup already did the compiling
    timeout = 180.0            # seconds per parameter set (a cold numba cache compiles in setup)


_seen = set()


def first_time(*key):
    """True on the first call with ``key`` in this process, False after.

    asv runs each parameter set in a fresh process but re-runs ``setup`` before every
    sample: guard the warm-up call with this so it is paid once, not once per sample.
    """
    if key in _seen:
        return False
    _seen.add(key)
    return True


# --- devices and libraries ------------------------------------------------------------

def require_device(device):
    """Raise NotImplementedError (asv shows n/a) when ``device`` cannot be timed here.

    "cuda" needs a real GPU: the CUDA simulator runs each thread as a Python thread,
    so its timings mean nothing and it is never used for benchmarks.
    """
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ValueError(f"unknown benchmark device {device!r}")
    from nbdl import device as _device
    if _device.simulator_enabled():
        raise NotImplementedError("CUDA simulator enabled (NUMBA_ENABLE_CUDASIM): no GPU timings")
    if not _device.cuda_available():
        raise NotImplementedError("no CUDA GPU available")


def require_torch(device="cpu"):
    """The torch module, or NotImplementedError when PyTorch (or its CUDA) is missing."""
    if _torch is None:
        raise NotImplementedError("PyTorch is not installed")
    if device != "cpu" and not _torch.cuda.is_available():
        raise NotImplementedError("PyTorch has no CUDA device")
    return _torch


def sync(device):
    """Wait for queued GPU work so the timing covers it (no-op on cpu)."""
    if device != "cpu":
        from numba import cuda
        cuda.synchronize()


def torch_sync(device):
    """Same as :func:`sync` for PyTorch work."""
    if device != "cpu":
        _torch.cuda.synchronize()


class Framework:
    """nbdl or PyTorch on one device behind one interface, so that a benchmark body is
    written once and run by both classes of a pair (``fw.F.conv2d``, ``fw.nn.LSTM``...).

    ``module``: nbdl or torch; ``F``: its functional namespace; ``nn``: its layers.
    """

    def __init__(self, module, functional, nn, device):
        self.module, self.F, self.nn, self.device = module, functional, nn, device
        self.name = module.__name__

    def tensor(self, array, requires_grad=False):
        """A copy of the numpy ``array`` on this device."""
        return self.module.tensor(array, device=self.device, requires_grad=requires_grad)

    def no_grad(self):
        return self.module.no_grad()

    def sync(self):
        """Wait for queued GPU work (no-op on cpu)."""
        if self.device != "cpu":
            if self.module is _torch:
                _torch.cuda.synchronize()
            else:
                sync(self.device)


def nbdl_on(device):
    """:class:`Framework` for nbdl on ``device``; NotImplementedError where it cannot run."""
    require_device(device)
    import nbdl
    import nbdl.functional
    import nbdl.nn
    return Framework(nbdl, nbdl.functional, nbdl.nn, device)


def torch_on(device):
    """:class:`Framework` for PyTorch on ``device``; NotImplementedError where it cannot run."""
    torch = require_torch(device)
    return Framework(torch, torch.nn.functional, torch.nn, device)


# --- inputs --------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _randn_master(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def randn(shape, dtype="float32", seed=0):
    """A fresh standard-normal numpy array; drawing is cached, so repeated setups only copy."""
    return _randn_master(tuple(shape), np.dtype(dtype).name, seed).copy()


def to_device(array, device):
    """A raw array on ``device`` for kernel-level benchmarks (numpy on cpu, device array on cuda)."""
    if device == "cpu":
        return np.ascontiguousarray(array)
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(array))


def tensor(array, device, requires_grad=False):
    """An nbdl Tensor holding a copy of ``array`` on ``device``."""
    import nbdl
    return nbdl.tensor(array, device=device, requires_grad=requires_grad)


def torch_tensor(array, device, requires_grad=False):
    """A torch tensor holding a copy of ``array`` on ``device``."""
    return _torch.tensor(array, device=device, requires_grad=requires_grad)


def largest_shape_only(params):
    """Decorator for ``peakmem_*``: run only with the last listed shape (the last entry of
    ``params``; asv shows the other shapes as n/a without running their setup)."""
    largest = params[-1][-1]
    skipped = [combo for combo in itertools.product(*params) if combo[-1] != largest]

    def mark(method):
        method.skip_params = skipped
        return method
    return mark


# --- FLOP accounting for the report ------------------------------------------------------

def flops(count):
    """Declare the floating-point operations of one call of a timed method.

    ``count`` takes the benchmark's parameters (same order as ``param_names``) and
    returns a number; ``python asv_bench/report.py`` divides it by the measured time.
    """
    def mark(method):
        method.flops = count
        return method
    return mark


def sgemm_reference(n):
    """Mark the benchmark timing a float32 numpy ``(n, n) @ (n, n)`` product: the
    machine's practical peak, which the report divides every GFLOP/s by."""
    def mark(method):
        method.sgemm_reference = True
        method.flops = lambda *params: matmul_flops(n, n, n)
        return method
    return mark


def gflops(count, seconds):
    """GFLOP/s of ``count`` operations done in ``seconds``."""
    return count / seconds / 1e9


def prod(shape):
    return math.prod(shape)


def matmul_flops(m, n, k):
    """(m, k) @ (k, n): one multiply and one add per term."""
    return 2 * m * n * k


def conv2d_flops(x_shape, w_shape, stride=1, padding=0, dilation=1):
    """Forward FLOPs of conv2d(x (N, C, H, W), w (O, C/groups, KH, KW)): 2 per MAC."""
    n, _, h, w = x_shape
    o, cg, kh, kw = w_shape
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    return 2 * n * o * oh * ow * cg * kh * kw
