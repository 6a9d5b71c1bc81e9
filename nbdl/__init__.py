"""nbdl: deep-learning kernels in Python compiled with Numba, under a small PyTorch-like layer.

    import nbdl
    import nbdl.nn as nn
    import nbdl.functional as F

    x = nbdl.randn(8, 3, 28, 28, device="cpu")      # or "cuda"
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    loss = F.cross_entropy(model(x), nbdl.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    loss.backward()

Importing nbdl compiles nothing: every kernel compiles on first use and is cached on disk.
"""
from nbdl import device
from nbdl.device import cuda_available, get_default_device, set_default_device, synchronize
from nbdl.random import manual_seed
from nbdl.serialization import load, save
from nbdl.tensor import (
    Tensor, arange, empty, enable_grad, float32, float64, from_numpy, full, int32, int64,
    is_grad_enabled, is_tensor, no_grad, ones, ones_like, rand, randn, set_grad_enabled,
    tensor, zeros, zeros_like,
)
from nbdl import backends
from nbdl.backends import get_conv_algo, set_conv_algo
from nbdl import functional, nn, optim

__version__ = "0.1.0"
