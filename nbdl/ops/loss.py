"""Differentiable losses: cross_entropy, nll_loss, mse_loss (torch.nn.functional semantics).

cross_entropy with class-index targets runs one fused kernel (log_softmax + nll +
label smoothing + class weights + ignore_index) and keeps only two numbers per
sample (max logit, log-sum-exp) for the backward. Class-probability targets (a float target shaped
like the input) are composed from log_softmax and elementwise ops.
The mean over targets that are all ignore_index is 0 (not NaN), with a zero gradient.
"""
import warnings

import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import as_tensor, check_same_device, check_same_dtype, check_tensor
from nbdl.tensor import Tensor, make_tensor

__all__ = ["cross_entropy", "nll_loss", "mse_loss"]

_REDUCTIONS = ("none", "mean", "sum")


def _reduction(op, size_average, reduce, reduction):
    """PyTorch's legacy size_average/reduce arguments, folded into ``reduction``."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = "none" if not reduce else ("mean" if size_average else "sum")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def _on_device_of(x, v):
    """A Tensor (or None) as it is; a numpy array or list as a tensor on x's device, keeping its dtype."""
    if v is None or isinstance(v, Tensor):
        return v
    return as_tensor(np.asarray(v), like=x)


def _class_inputs(op, input, target, weight):
    """Validated (input, target, weight) with an unbatched (C,) input promoted to (1, C)."""
    x = as_tensor(input)
    check_tensor(op, "input", x, dtype="float")
    if x.ndim == 0:
        raise ValueError(f"{op}: input must have shape (C,), (N, C) or (N, C, d1, ...), got ()")
    t, w = _on_device_of(x, target), _on_device_of(x, weight)
    check_same_device(op, input=x, target=t, weight=w)
    if w is not None:
        check_same_dtype(op, input=x, weight=w)
        if w.shape != (x.shape[0 if x.ndim == 1 else 1],):
            raise ValueError(f"{op}: weight must have shape (C,) = ({x.shape[0 if x.ndim == 1 else 1]},), "
                             f"got {w.shape}")
    return x, t, w


def _index_target(op, x, t):
    check_tensor(op, "target", t, dtype=np.int64)
    want = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
    if t.shape != want:
        raise ValueError(f"{op}: target must have shape {want} for input of shape {x.shape}, got {t.shape}")


def _unbatched(x, t):
    """(C,) input with () target as a batch of one."""
    return x.reshape(1, x.shape[0]), t.reshape(1)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Cross entropy between logits ``input`` (N, C, d...) and ``target``.

    target: int64 class indices (N, d...) (entries equal to ignore_index are skipped), or
    class probabilities shaped like input. weight: (C,) class weights (no gradient).
    """
    op = "cross_entropy"
    reduction = _reduction(op, size_average, reduce, reduction)
    x, t, w = _class_inputs(op, input, target, weight)
    if t.dtype.kind == "f":
        return _cross_entropy_probs(op, x, t, w, reduction, label_smoothing)
    _index_target(op, x, t)
    unbatched = x.ndim == 1
    if unbatched:
        x, t = _unbatched(x, t)
    K = kernels("softmax", x.device)
    wa = None if w is None else w.array
    loss, stats, wsum = K.cross_entropy_forward(x.array, t.array, wa, ignore_index, label_smoothing, reduction)

    def backward(gy):
        return (K.cross_entropy_backward(gy, x.array, t.array, wa, stats, wsum, ignore_index,
                                         label_smoothing, reduction),)
    out = make_tensor(loss, (x,), backward)
    return out.reshape(()) if unbatched and reduction == "none" else out


def _cross_entropy_probs(op, x, t, w, reduction, label_smoothing):
    """-sum_c w_c q_c log_softmax(x)_c with q = (1 - e) t + e / C per sample.

    The mean divides by the number of samples N * d1 * ... (input.numel() / C), like PyTorch.
    """
    from nbdl.ops.activation import log_softmax
    check_same_dtype(op, input=x, target=t)
    if t.shape != x.shape:
        raise ValueError(f"{op}: probability target must have the input's shape {x.shape}, got {t.shape}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    class_dim = 0 if x.ndim == 1 else 1
    c = x.shape[class_dim]
    q = t if label_smoothing == 0 else t * (1.0 - label_smoothing) + label_smoothing / c
    logp = log_softmax(x, class_dim)
    if w is not None:
        view = (c,) + (1,) * (x.ndim - class_dim - 1)
        logp = logp * w.reshape(*view)
    per_sample = -(logp * q).sum(class_dim)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total * (1.0 / max(per_sample.numel(), 1))


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (N, C, d...) at int64 ``target`` (N, d...)."""
    op = "nll_loss"
    reduction = _reduction(op, size_average, reduce, reduction)
    x, t, w = _class_inputs(op, input, target, weight)
    _index_target(op, x, t)
    unbatched = x.ndim == 1
    if unbatched:
        x, t = _unbatched(x, t)
    K = kernels("softmax", x.device)
    wa = None if w is None else w.array
    loss, wsum = K.nll_loss_forward(x.array, t.array, wa, ignore_index, reduction)

    def backward(gy):
        return (K.nll_loss_backward(gy, x.array, t.array, wa, wsum, ignore_index, reduction),)
    out = make_tensor(loss, (x,), backward)
    return out.reshape(()) if unbatched and reduction == "none" else out


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """(input - target)^2, averaged, summed or per element; target broadcasts like PyTorch."""
    op = "mse_loss"
    reduction = _reduction(op, size_average, reduce, reduction)
    x = as_tensor(input)
    check_tensor(op, "input", x, dtype="float")
    y = as_tensor(target, like=x)
    check_same_device(op, input=x, target=y)
    check_same_dtype(op, input=x, target=y)
    if x.shape != y.shape:
        warnings.warn(f"Using a target size ({y.shape}) that is different to the input size ({x.shape}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", UserWarning, stacklevel=2)
    d = x - y
    sq = d * d
    if reduction == "none":
        return sq
    return sq.mean() if reduction == "mean" else sq.sum()
