"""Gradient clipping (torch.nn.utils): clip_grad_norm_, clip_grad_value_, get_total_norm,
clip_grads_with_norm_.

The norm is a deterministic reduction on the gradients' device (``nbdl.kernels.optim``):
one kernel call per gradient writes its norm into a float64 vector on the device, a
last call takes the norm of that vector, and the scaling kernels read the result
from device memory. Nothing goes through the host unless ``error_if_nonfinite``
asks for the value.
"""
import math
import numbers

import numpy as np

from nbdl import device as _dev
from nbdl.optim.optimizer import flat
from nbdl.tensor import Tensor, float64, no_grad, tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]


def _tensors(op, tensors):
    if isinstance(tensors, Tensor):
        return [tensors]
    tensors = list(tensors)
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected Tensors, got {type(t).__name__}")
    return tensors


def _grads(op, parameters):
    return [p.grad for p in _tensors(op, parameters) if p.grad is not None]


def _one_device(op, tensors):
    devices = sorted({t.device for t in tensors})
    if len(devices) > 1:
        raise ValueError(f"{op}: tensors on different devices: {', '.join(devices)}")
    return devices[0]


def _check_norm_type(op, norm_type):
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        norm_type = math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"{op}: norm_type must be a number or 'inf', got {norm_type!r}")
    norm_type = float(norm_type)
    if not (norm_type > 0):
        raise ValueError(f"{op}: norm_type must be > 0 or inf, got {norm_type}")
    return norm_type


def _total_norm64(op, tensors, norm_type):
    """(float64 array of shape (1,) on the device holding ||concat(tensors)||_p, device)."""
    device = _one_device(op, tensors)
    K = _dev.kernels("optim", device)
    norms = _dev.zeros((len(tensors),), np.float64, device)
    for i, t in enumerate(tensors):
        if t.numel():
            K.vector_norm(flat(t), norm_type, norms, i)
    total = _dev.zeros((1,), np.float64, device)
    K.vector_norm(norms, norm_type, total, 0)
    return total, device


def _raise_if_nonfinite(total, norm_type):
    value = float(_dev.to_host(total)[0])
    if not math.isfinite(value):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is "
                           f"non-finite ({value}), so it cannot be clipped. To disable this error and "
                           f"scale the gradients by the non-finite norm anyway, set "
                           f"`error_if_nonfinite=False`")


def _as_result(total, device, dtype):
    """The (1,) float64 device array as a 0-d Tensor of ``dtype`` (like torch's returned norm)."""
    return Tensor(total, device=device).to(dtype=dtype).reshape(())


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """||concat(tensors)||_p as a 0-d Tensor on the tensors' device (dtype of the first tensor).

    Computed as the p-norm of the per-tensor p-norms, like PyTorch. ``foreach`` is
    accepted for PyTorch compatibility and ignored. An empty list gives tensor(0.).
    """
    op = "get_total_norm"
    tensors = _tensors(op, tensors)
    norm_type = _check_norm_type(op, norm_type)
    if not tensors:
        return tensor(0.0)
    total, device = _total_norm64(op, tensors, norm_type)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    return _as_result(total, device, tensors[0].dtype)


def _check_max_norm(op, max_norm):
    if isinstance(max_norm, Tensor):
        max_norm = max_norm.item()
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not (max_norm >= 0):
        raise ValueError(f"{op}: max_norm must be a number >= 0 (inf: no clipping), got {max_norm!r}")
    return float(max_norm)


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """grad *= min(max_norm / (total_norm + 1e-6), 1) for every parameter with a grad (in place)."""
    op = "clip_grads_with_norm_"
    max_norm = _check_max_norm(op, max_norm)
    grads = _grads(op, parameters)
    if not grads:
        return
    if not isinstance(total_norm, Tensor):
        total_norm = tensor(float(total_norm), dtype=float64)
    device = _one_device(op, grads)
    total = total_norm.to(device=device, dtype=float64).reshape(1).array
    _scale(grads, total, max_norm, device)


def _scale(grads, total, max_norm, device):
    K = _dev.kernels("optim", device)
    with no_grad():
        for g in grads:
            if g.numel():
                K.scale_by_norm(flat(g), total, max_norm)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients together so that their joint p-norm is at most ``max_norm``.

    total = ||concat(grads)||_p;  grad *= min(max_norm / (total + 1e-6), 1), in place.
    Returns ``total`` (before clipping) as a 0-d Tensor on the gradients' device, like
    torch.nn.utils.clip_grad_norm_. ``error_if_nonfinite=True`` raises RuntimeError
    when total is NaN or inf (this reads the value back to the host).
    """
    op = "clip_grad_norm_"
    max_norm = _check_max_norm(op, max_norm)
    norm_type = _check_norm_type(op, norm_type)
    grads = _grads(op, parameters)
    if not grads:
        return tensor(0.0)
    total, device = _total_norm64(op, grads, norm_type)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    _scale(grads, total, max_norm, device)
    return _as_result(total, device, grads[0].dtype)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient to [-clip_value, clip_value] in place (clip_value >= 0)."""
    op = "clip_grad_value_"
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) \
            or not (0 <= clip_value < math.inf):
        raise ValueError(f"{op}: clip_value must be a finite number >= 0, got {clip_value!r}")
    grads = _grads(op, parameters)
    with no_grad():
        for g in grads:
            if g.numel():
                _dev.kernels("optim", g.device).clamp_(flat(g), float(clip_value))
