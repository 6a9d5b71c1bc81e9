"""Normalization layers: BatchNorm1d, BatchNorm2d, LayerNorm (PyTorch's names, defaults,
state_dict keys: weight, bias, running_mean, running_var, num_batches_tracked)."""
import numbers

import nbdl
from nbdl.nn import init
from nbdl.nn.module import Module, Parameter
from nbdl.ops.norm import _batch_norm, layer_norm
from nbdl.tensor import int64

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm"]


class _BatchNorm(Module):
    """Shared by BatchNorm1d/2d: per-channel normalization over the batch (and space).

    Training uses the batch's statistics and updates running_mean/running_var
    (momentum; None = cumulative average over num_batches_tracked batches);
    eval() uses the running statistics, unless track_running_stats=False.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(nbdl.empty(num_features, dtype=dtype, device=device))
            self.bias = Parameter(nbdl.empty(num_features, dtype=dtype, device=device))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", nbdl.zeros(num_features, dtype=dtype, device=device))
            self.register_buffer("running_var", nbdl.ones(num_features, dtype=dtype, device=device))
            self.register_buffer("num_batches_tracked", nbdl.zeros((), dtype=int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check_input_dim(self, input):
        raise NotImplementedError

    def forward(self, input):
        self._check_input_dim(input)
        # PyTorch: eval() without running statistics still normalizes with the batch's.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        counting = self.training and self.track_running_stats
        return _batch_norm(input, self.running_mean if use_running else None,
                           self.running_var if use_running else None, self.weight, self.bias,
                           use_batch_stats, self.momentum, self.eps,
                           self.num_batches_tracked if counting else None)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input over N (and L) per channel."""

    def _check_input_dim(self, input):
        if input.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d: expected 2D or 3D input (got {input.ndim}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) input over N, H, W per channel."""

    def _check_input_dim(self, input):
        if input.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4D input (got {input.ndim}D input)")


class LayerNorm(Module):
    """Normalization over the trailing normalized_shape dimensions of each sample,
    with an elementwise weight (ones) and bias (zeros) of that shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
                 dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(nbdl.empty(self.normalized_shape, dtype=dtype, device=device))
            if bias:
                self.bias = Parameter(nbdl.empty(self.normalized_shape, dtype=dtype, device=device))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
