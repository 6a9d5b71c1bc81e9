"""Differentiable dropout (torch.nn.functional.dropout semantics).

Each call draws a fresh 64-bit seed from nbdl's global generator on the host; the
kernels derive every element's random bits from (seed, index), so a CPU and a CUDA
run seeded alike drop the same elements. The uint8 keep mask is kept for backward.
"""
from nbdl.device import kernels
from nbdl.kernels.dropout import check_p
from nbdl.ops._checks import as_tensor, check_tensor
from nbdl.random import next_seed
from nbdl.tensor import make_tensor

__all__ = ["dropout"]


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability p and scale the others by 1/(1-p) while training.

    Returns ``input`` itself when not training or p == 0. ``inplace`` is accepted for
    PyTorch compatibility; the result is a new tensor.
    """
    x = as_tensor(input)
    check_tensor("dropout", "input", x, dtype="float")
    p = check_p("dropout", p)
    if not training or p == 0.0:
        return x
    K = kernels("dropout", x.device)
    y, mask = K.dropout_forward(x.array, p, next_seed())
    return make_tensor(y, (x,), lambda gy: (K.dropout_backward(gy, mask, p),))
