"""Optimizer update kernels: what both backends share.

Every optimizer step is one fused elementwise pass over flat 1-D views of the
parameter, its gradient and its state arrays (``param.ravel()`` etc.). The
per-element math lives here once, as plain Python functions that ``cpu.py``
wraps with ``@njit`` and ``cuda.py`` with inlined ``@cuda.jit(device=True)``, so the
two backends run the same expression tree and give the same bits under the CUDA
simulator; a real GPU contracts multiply-adds into FMAs where the CPU's compiler may not,
so there they agree to float32 rounding (a few units in the last place, more where an
update brings a value near zero).

Rounding follows ``torch.optim``'s single-tensor code: every scalar (lr, the
bias corrections, ``1 - beta``) is computed in double precision on the host,
exactly as torch computes it in Python, then rounded ONCE to the parameter
dtype (``*_scalars`` below); the element math then runs in the parameter
dtype, op by op in torch's order. Nothing here compiles at import time.

Unused state slots: an optimizer whose options need no buffer (SGD without
momentum, Adam without amsgrad, RMSprop neither centered nor with momentum)
gets another array of the right size passed in that slot by the host
function; the kernel reads it but never writes it.
"""
import math
import types

import numpy as np

from nbdl.kernels._checks import check_array, check_finite, check_float, check_int

# Elements per CPU chunk / CUDA block in the gradient-norm reduction. Fixed (not
# derived from the thread count) so the summation order, hence the result, is the
# same on every run and every machine.
NORM_CHUNK = 4096

# vector_norm modes (how |x| is accumulated)
NORM_L2, NORM_L1, NORM_LP, NORM_INF = 0, 1, 2, 3


# --------------------------------------------------------------------------- checks

def check_step_arrays(op, param, grad, **state):
    """param, grad and every non-None state array: 1-D, C-contiguous, one float dtype, one length.

    Returns the dtype. Numba does no bounds checking, so a state array shorter
    than param would be read and written past its end: this check is what
    prevents that.
    """
    check_array(op, "param", param, ndim=1, dtype="float")
    n = param.shape[0]
    check_array(op, "grad", grad, ndim=1, dtype="float", shape=(n,))
    for name, a in state.items():
        if a is not None:
            check_array(op, name, a, ndim=1, dtype="float", shape=(n,))
    return check_float(op, param=param, grad=grad, **state)


def _nonneg(op, name, v):
    return check_finite(op, name, v, minimum=0.0)


def _unit(op, name, v, open_max=False):
    return check_finite(op, name, v, minimum=0.0, maximum=1.0, open_max=open_max)


def _cast(dtype, *values):
    """Round host doubles to the parameter dtype once (what torch does with a Python scalar)."""
    return tuple(dtype.type(v) for v in values)


def _lerp_weights(dtype, weight):
    """(w, 1 - w) in the array dtype; ``1 - w`` is computed in that dtype like ATen's lerp."""
    w = dtype.type(weight)
    return w, dtype.type(1) - w


# --------------------------------------------------------------------------- host scalars

def sgd_scalars(op, dtype, lr, momentum, dampening, weight_decay):
    """(lr, momentum, 1 - dampening, weight_decay) in ``dtype`` after validation."""
    lr = _nonneg(op, "lr", lr)
    momentum = _nonneg(op, "momentum", momentum)
    dampening = check_finite(op, "dampening", dampening)
    weight_decay = _nonneg(op, "weight_decay", weight_decay)
    return _cast(dtype, lr, momentum, 1.0 - dampening, weight_decay)


def adam_scalars(op, dtype, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay):
    """Scalars of one Adam/AdamW step at ``step`` (1 for the first update).

    Host doubles, as in torch:  bc1 = 1 - beta1**step,  bc2 = 1 - beta2**step,
    step_size = lr / bc1,  bc2_sqrt = bc2**0.5,  decay = 1 - lr * weight_decay.
    Returns (w1, 1 - w1, beta2, 1 - beta2, eps, weight_decay, decay, step_size,
    bc2_sqrt) in ``dtype``, where w1 = 1 - beta1 is the lerp weight of exp_avg.
    """
    step = check_int(op, "step", step, minimum=1)
    lr = _nonneg(op, "lr", lr)
    beta1 = _unit(op, "beta1", beta1, open_max=True)
    beta2 = _unit(op, "beta2", beta2, open_max=True)
    eps = _nonneg(op, "eps", eps)
    weight_decay = _nonneg(op, "weight_decay", weight_decay)
    step_size = lr / (1.0 - beta1 ** step)
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    decay = 1.0 - lr * weight_decay if decoupled_weight_decay else 1.0
    w1, one_minus_w1 = _lerp_weights(dtype, 1.0 - beta1)
    return (w1, one_minus_w1) + _cast(dtype, beta2, 1.0 - beta2, eps, weight_decay,
                                      decay, step_size, bc2_sqrt)


def rmsprop_scalars(op, dtype, lr, alpha, eps, weight_decay, momentum):
    """(lr, alpha, w, 1 - w, eps, weight_decay, momentum) in ``dtype``; w = 1 - alpha."""
    lr = _nonneg(op, "lr", lr)
    alpha = _nonneg(op, "alpha", alpha)
    eps = _nonneg(op, "eps", eps)
    weight_decay = _nonneg(op, "weight_decay", weight_decay)
    momentum = _nonneg(op, "momentum", momentum)
    w, one_minus_w = _lerp_weights(dtype, 1.0 - alpha)
    return (dtype.type(lr), dtype.type(alpha), w, one_minus_w) + _cast(dtype, eps, weight_decay, momentum)


def adagrad_scalars(op, dtype, step, lr, lr_decay, eps, weight_decay):
    """(clr, eps, weight_decay) in ``dtype``; clr = lr / (1 + (step - 1) * lr_decay) in doubles."""
    step = check_int(op, "step", step, minimum=1)
    lr = _nonneg(op, "lr", lr)
    lr_decay = _nonneg(op, "lr_decay", lr_decay)
    eps = _nonneg(op, "eps", eps)
    weight_decay = _nonneg(op, "weight_decay", weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    return _cast(dtype, clr, eps, weight_decay)


def adadelta_scalars(op, dtype, lr, rho, eps, weight_decay):
    """(lr, rho, 1 - rho, eps, weight_decay) in ``dtype``."""
    lr = _nonneg(op, "lr", lr)
    rho = _unit(op, "rho", rho)
    eps = _nonneg(op, "eps", eps)
    weight_decay = _nonneg(op, "weight_decay", weight_decay)
    return _cast(dtype, lr, rho, 1.0 - rho, eps, weight_decay)


def norm_mode(op, norm_type):
    """(mode, p) for vector_norm: the accumulation mode and p as a float."""
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: norm_type must be a number, got {norm_type!r}")
    p = float(norm_type)
    if p == math.inf:
        return NORM_INF, p
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"{op}: norm_type must be > 0 or inf, got {norm_type}")
    if p == 2.0:
        return NORM_L2, p
    if p == 1.0:
        return NORM_L1, p
    return NORM_LP, p


def check_norm_out(op, x, out, index):
    """x: 1-D float array; out: 1-D float64 array; 0 <= index < len(out)."""
    check_array(op, "x", x, ndim=1, dtype="float")
    check_array(op, "out", out, ndim=1, dtype=np.float64)
    index = check_int(op, "index", index, minimum=0)
    if index >= out.shape[0]:
        raise ValueError(f"{op}: index {index} is out of range for out of shape {tuple(out.shape)}")
    return index


def check_scale_args(op, x, total_norm, max_norm):
    """x: 1-D float; total_norm: (1,) float64; max_norm >= 0 (inf allowed). Returns float(max_norm)."""
    check_array(op, "x", x, ndim=1, dtype="float")
    check_array(op, "total_norm", total_norm, ndim=1, dtype=np.float64, shape=(1,))
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: max_norm must be a number, got {max_norm!r}")
    if not float(max_norm) >= 0:
        raise ValueError(f"{op}: max_norm must be >= 0, got {max_norm}")
    return float(max_norm)


def clamp_bounds(op, x, clip_value):
    """(-clip_value, clip_value) in x's dtype after checking x (1-D float) and clip_value >= 0."""
    check_array(op, "x", x, ndim=1, dtype="float")
    c = check_finite(op, "clip_value", clip_value, minimum=0.0)
    return _cast(np.dtype(x.dtype), -c, c)


def norm_chunks(n):
    """Number of NORM_CHUNK-element chunks covering n elements (at least 1)."""
    return max(1, (n + NORM_CHUNK - 1) // NORM_CHUNK)


# --------------------------------------------------------------------------- element math
# Plain Python, typed by the caller's jit. Every scalar argument already has the
# element dtype, so float32 stays float32 (no promotion to double).

# Typed by the jit of the caller (njit on CPU, a CUDA device function on GPU):
# every scalar argument already has the element dtype, so float32 stays float32.
# ``lerp`` and ``sqrt`` are looked up as globals; ``bind`` below makes each
# backend's copy of these functions see its own jitted versions of them.

sqrt = math.sqrt


def lerp(start, end, w, one_minus_w):
    """ATen's lerp: start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w)."""
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * one_minus_w


def bind(func, jit, qualname=None, **helpers):
    """``jit`` applied to a copy of ``func`` whose globals map helper names to ``helpers``.

    A jitted function resolves the functions it calls through its globals, and
    here those would be the plain Python versions; each backend passes its own
    jitted ``lerp`` (and, under the CUDA simulator, a dtype-preserving ``sqrt``).
    ``qualname`` renames the copy: numba names its on-disk cache after it, so two
    compilations of one function (serial and parallel) need two names.
    """
    env = dict(func.__globals__)
    env.update(helpers)
    copy = types.FunctionType(func.__code__, env, func.__name__, func.__defaults__, func.__closure__)
    copy.__qualname__ = qualname or func.__qualname__
    copy.__doc__ = func.__doc__
    return jit(copy)


def sgd_update(p, g, buf, lr, momentum, one_minus_dampening, weight_decay,
               nesterov, maximize, first_step):
    """One SGD element; returns (p, buf).

    g <- -g if maximize;  g <- g + wd * p;
    buf <- g on the first step, else buf * momentum + (1 - dampening) * g;
    g <- g + momentum * buf (nesterov) or buf;   p <- p - lr * g.
    The buffer part is skipped when momentum == 0.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if first_step:
            buf = g
        else:
            buf = buf * momentum + one_minus_dampening * g
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    return p - lr * g, buf


def adam_update(p, g, m, v, vmax, w1, one_minus_w1, beta2, one_minus_beta2, eps,
                weight_decay, decay, step_size, bc2_sqrt, amsgrad, decoupled, maximize):
    """One Adam/AdamW element; returns (p, m, v, vmax).

    Adam:  g <- g + wd * p.   AdamW:  p <- p * (1 - lr * wd).
    m <- lerp(m, g, 1 - beta1);  v <- v * beta2 + (1 - beta2) * g * g;
    vmax <- max(vmax, v) (amsgrad, then used in place of v);
    p <- p - step_size * m / (sqrt(v) / bc2_sqrt + eps).
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled:
            p = p * decay
        else:
            g = g + weight_decay * p
    m = lerp(m, g, w1, one_minus_w1)
    v = v * beta2 + one_minus_beta2 * g * g
    second = v
    if amsgrad:
        if v > vmax:
            vmax = v
        second = vmax
    denom = sqrt(second) / bc2_sqrt + eps
    return p - step_size * (m / denom), m, v, vmax


def rmsprop_update(p, g, sq, gavg, buf, lr, alpha, w, one_minus_w, eps, weight_decay,
                   momentum, centered, maximize):
    """One RMSprop element; returns (p, square_avg, grad_avg, momentum_buffer).

    sq <- alpha * sq + (1 - alpha) * g * g;
    centered: gavg <- lerp(gavg, g, 1 - alpha), avg = sqrt(sq - gavg^2) + eps,
    else avg = sqrt(sq) + eps;
    momentum > 0: buf <- momentum * buf + g / avg, p <- p - lr * buf;
    else p <- p - lr * g / avg.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    sq = sq * alpha + w * g * g
    if centered:
        gavg = lerp(gavg, g, w, one_minus_w)
        avg = sqrt(sq - gavg * gavg) + eps
    else:
        avg = sqrt(sq) + eps
    if momentum > 0:
        buf = buf * momentum + g / avg
        return p - lr * buf, sq, gavg, buf
    return p - lr * (g / avg), sq, gavg, buf


def adagrad_update(p, g, s, clr, eps, weight_decay, maximize):
    """One Adagrad element; returns (p, sum).  s <- s + g * g;  p <- p - clr * g / (sqrt(s) + eps)."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    s = s + g * g
    std = sqrt(s) + eps
    return p - clr * (g / std), s


def adadelta_update(p, g, sq, acc, lr, rho, one_minus_rho, eps, weight_decay, maximize):
    """One Adadelta element; returns (p, square_avg, acc_delta).

    sq <- rho * sq + (1 - rho) * g * g;
    delta = sqrt(acc + eps) / sqrt(sq + eps) * g;
    acc <- rho * acc + (1 - rho) * delta * delta;   p <- p - lr * delta.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    sq = sq * rho + one_minus_rho * g * g
    std = sqrt(sq + eps)
    delta = sqrt(acc + eps) / std * g
    acc = acc * rho + one_minus_rho * delta * delta
    return p - lr * delta, sq, acc


def norm_term(x, mode, p):
    """What |x| contributes to the accumulator of a p-norm (in float64)."""
    a = abs(float(x))
    if mode == NORM_L2:
        return a * a
    if mode == NORM_LP:
        return a ** p
    return a


def norm_combine(acc, term, mode):
    """Accumulate: max for the inf-norm, sum otherwise."""
    if mode == NORM_INF:
        return acc if acc >= term else term
    return acc + term


def norm_root(acc, mode, p):
    """From the accumulator to the norm: sqrt for L2, ^(1/p) for Lp."""
    if mode == NORM_L2:
        return sqrt(acc)
    if mode == NORM_LP:
        return acc ** (1.0 / p)
    return acc
