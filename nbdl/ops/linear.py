"""Differentiable linear map y = x @ weight.T + bias (torch.nn.functional.linear).

x (..., in) is viewed as a matrix (M, in); weight is (out, in) like PyTorch. The
forward is one GEMM (+ a bias pass); the backward is
    gx = gy @ weight        gweight = gy.T @ x        gbias = column sums of gy
with each GEMM skipped when its input does not need a gradient.
"""
import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_same_device, check_same_dtype, check_tensor
from nbdl.tensor import make_tensor

__all__ = ["linear"]


def _check(x, weight, bias):
    op = "linear"
    check_tensor(op, "input", x, dtype="float", min_ndim=1)
    check_tensor(op, "weight", weight, ndim=2)
    check_same_device(op, input=x, weight=weight, bias=bias)
    check_same_dtype(op, input=x, weight=weight, bias=bias)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but weight expects {weight.shape[1]} "
                         f"(input.shape={x.shape}, weight.shape={weight.shape})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")


def linear(input, weight, bias=None):
    """input (..., in) @ weight.T + bias -> (..., out); weight (out, in), bias (out,) or None."""
    x, w = as_tensor(input), as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    _check(x, w, b)
    L = kernels("linalg", x.device)
    n_out, n_in = w.shape
    rows = x.numel() // n_in if n_in else int(np.prod(x.shape[:-1]))
    x2 = x.array.reshape(rows, n_in) if x.ndim != 2 else x.array
    y = L.matmul(x2, w.array, trans_b=True)
    if b is not None:
        L.add_bias_rows(y, b.array)
    out_shape = x.shape[:-1] + (n_out,)

    def backward(gy):
        g2 = gy.reshape(rows, n_out) if gy.ndim != 2 else gy
        gx = L.matmul(g2, w.array).reshape(x.shape) if x.requires_grad else None
        gw = L.matmul(g2, x2, trans_a=True) if w.requires_grad else None
        gb = L.sum_rows(g2) if b is not None and b.requires_grad else None
        return (gx, gw) if b is None else (gx, gw, gb)
    parents = (x, w) if b is None else (x, w, b)
    return make_tensor(y.reshape(out_shape) if x.ndim != 2 else y, parents, backward)
