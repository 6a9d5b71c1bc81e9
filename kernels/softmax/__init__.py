"""softmax / log_softmax along an axis, and the losses built on them.

Shapes: any array is viewed as (outer, L, inner) around the softmax axis
(``split_axis``); the classification losses view the logits (N, C, d1, ...) as
(N, C, S) with S = d1*...*dk and the targets (N, d1, ...) as (N, S), class axis 1
like PyTorch.

    softmax       y = exp(x - m) / sum(exp(x - m)),   m = max(x)  (stable for large x)
    log_softmax   y = x - m - log(sum(exp(x - m)))
    backward      softmax:     gx = y * (gy - sum(gy * y))
                  log_softmax: gx = gy - exp(y) * sum(gy)

Cross entropy with class weights w, label smoothing e, C classes, target t
(samples whose target is ``ignore_index`` count nowhere), with lse = log(sum(exp(x)))
(kept as max(x) and log(sum(exp(x - max))), so lse - x[c] stays exact for huge logits):

    loss_i = (1 - e) * w[t] * (lse - x[t]) + e / C * sum_c w[c] * (lse - x[c])
    mean   = sum_i loss_i / sum_i w[t_i]      (0 when no target is kept)
    dloss_i/dx[c] = ((1 - e) w[t] + e/C sum_k w[k]) * softmax(x)[c] - (1 - e) w[t] [c == t] - e/C w[c]

which is PyTorch's cross_entropy, including how it normalizes the smoothing term
by the same sum of target weights. nll_loss is the e = 0 case on log-probabilities.
"""
import numpy as np

from nbdl.kernels._checks import check_array, check_finite, check_float, check_int

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def split_axis(shape, axis):
    """(outer, L, inner) for a softmax over ``axis`` of an array of ``shape``."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def check_axis(op, x, axis):
    """A valid axis of x (negative counts from the end); returns it in [0, ndim)."""
    ndim = len(x.shape)
    check_int(op, "axis", axis)
    if ndim == 0:
        if axis not in (0, -1):
            raise ValueError(f"{op}: axis {axis} is out of range for a 0-d array")
        return 0
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an array with {ndim} dimensions "
                         f"(shape {tuple(x.shape)})")
    return axis % ndim


def check_softmax(op, x, axis):
    check_array(op, "x", x, dtype="float")
    return check_axis(op, x, axis)


def check_softmax_backward(op, gy, y, axis):
    check_array(op, "gy", gy, dtype="float")
    check_array(op, "y", y, dtype="float", shape=tuple(gy.shape))
    check_float(op, gy=gy, y=y)
    return check_axis(op, y, axis)


def check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return REDUCTIONS[reduction]


def check_classification(op, x, target, weight, ignore_index, reduction, label_smoothing=0.0):
    """Validate logits/log-probs x (N, C, d...), int64 target (N, d...), weight (C,).

    Returns (N, C, S, reduction code, label_smoothing). Target values are checked
    by the backends (they may live on the device).
    """
    check_array(op, "input", x, dtype="float")
    if len(x.shape) < 2:
        raise ValueError(f"{op}: input must have shape (N, C) or (N, C, d1, ...), got {tuple(x.shape)}")
    n, c = int(x.shape[0]), int(x.shape[1])
    check_array(op, "target", target, dtype=np.int64)
    want = (n,) + tuple(x.shape[2:])
    if tuple(target.shape) != want:
        raise ValueError(f"{op}: target must have shape {want} for input of shape {tuple(x.shape)}, "
                         f"got {tuple(target.shape)}")
    if weight is not None:
        check_array(op, "weight", weight, dtype="float", shape=(c,))
        check_float(op, input=x, weight=weight)
    check_int(op, "ignore_index", ignore_index)
    code = check_reduction(op, reduction)
    eps = check_finite(op, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
    if c == 0:
        raise ValueError(f"{op}: input has 0 classes (shape {tuple(x.shape)})")
    return n, c, int(np.prod(x.shape[2:], dtype=np.int64)), code, eps


def check_loss_grad(op, gloss, x, code, n, s):
    """The upstream gradient of a loss: shape () for mean/sum, (N, d...) for none."""
    want = (n,) + tuple(x.shape[2:]) if code == 0 else ()
    check_array(op, "grad", gloss, dtype=x.dtype, shape=want)


def check_saved(op, x, samples, wsum, stats=None):
    """What the loss forward saved: wsum (2,) and the per-sample stats (2, N*S)."""
    check_array(op, "wsum", wsum, dtype=x.dtype, shape=(2,))
    if stats is not None:
        check_array(op, "stats", stats, dtype=x.dtype, shape=(2, samples))


def check_target_values(op, bad, target_shape, n_classes, ignore_index):
    """Raise for ``bad`` = (flat index, value) of a target outside [0, C) that is not
    ignore_index (from the elementwise backends' first_out_of_range; None: all valid)."""
    if bad is None:
        return
    flat_index, value = bad
    position = tuple(int(i) for i in np.unravel_index(flat_index, tuple(target_shape)))
    position = position[0] if len(position) == 1 else position
    raise ValueError(f"{op}: target {value} at position {position} is out of bounds for "
                     f"{n_classes} classes (valid: 0..{n_classes - 1}, or ignore_index={ignore_index})")
