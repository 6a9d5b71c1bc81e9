"""Optimizer update kernels for the CPU (``@njit``, parallel over elements of large arrays).

Each ``*_step`` host function validates its arrays and hyperparameters, turns
the hyperparameters into element-dtype scalars (see ``nbdl.kernels.optim``) and
runs ONE fused pass that updates the parameter and its state in place. All
arrays are flat 1-D views (``param.ravel()``); the state arrays have the
parameter's length and dtype. Nothing is returned.

No fastmath in the update kernels: the kernels are memory bound, and strict
IEEE arithmetic (no FMA contraction, no reassociation) keeps them bit-identical
to the CUDA kernels run under the simulator and close to torch's rounding.
"""
import numpy as np
from numba import njit, prange

from nbdl.kernels import optim as _o

_lerp = njit(_o.lerp)


def _element(func):
    return _o.bind(func, njit, lerp=_lerp)


_sgd_update = _element(_o.sgd_update)
_adam_update = _element(_o.adam_update)
_rmsprop_update = _element(_o.rmsprop_update)
_adagrad_update = _element(_o.adagrad_update)
_adadelta_update = _element(_o.adadelta_update)
_norm_term = _element(_o.norm_term)
_norm_combine = _element(_o.norm_combine)
_norm_root = _element(_o.norm_root)

# Below this many elements a loop runs on one thread: waking the thread pool costs
# more than it saves (the grain size ATen uses for the same decision).
PARALLEL_MIN = 1 << 15


class _Loop:
    """One prange loop compiled twice: serially for small arrays, in parallel for large ones.

    ``loop(n, *args)`` runs the version that suits n elements. The serial copy gets its
    own name so that numba caches the two compilations in separate files.
    """

    def __init__(self, func):
        self.serial = _o.bind(func, njit(cache=True, error_model="numpy"),
                              qualname=func.__qualname__ + "_serial")
        self.parallel = njit(cache=True, parallel=True, error_model="numpy")(func)

    def __call__(self, n, *args):
        (self.parallel if n >= PARALLEL_MIN else self.serial)(*args)


# --------------------------------------------------------------------------- kernels

@_Loop
def _sgd(param, grad, buf, lr, momentum, one_minus_dampening, weight_decay,
         nesterov, maximize, first_step):
    for i in prange(param.shape[0]):
        p, b = _sgd_update(param[i], grad[i], buf[i], lr, momentum, one_minus_dampening,
                           weight_decay, nesterov, maximize, first_step)
        param[i] = p
        if momentum != 0:
            buf[i] = b


@_Loop
def _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, w1, one_minus_w1, beta2,
          one_minus_beta2, eps, weight_decay, decay, step_size, bc2_sqrt, amsgrad,
          decoupled, maximize):
    for i in prange(param.shape[0]):
        p, m, v, vmax = _adam_update(param[i], grad[i], exp_avg[i], exp_avg_sq[i],
                                     max_exp_avg_sq[i], w1, one_minus_w1, beta2,
                                     one_minus_beta2, eps, weight_decay, decay, step_size,
                                     bc2_sqrt, amsgrad, decoupled, maximize)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            max_exp_avg_sq[i] = vmax


@_Loop
def _rmsprop(param, grad, square_avg, grad_avg, buf, lr, alpha, w, one_minus_w, eps,
             weight_decay, momentum, centered, maximize):
    for i in prange(param.shape[0]):
        p, sq, ga, b = _rmsprop_update(param[i], grad[i], square_avg[i], grad_avg[i], buf[i],
                                       lr, alpha, w, one_minus_w, eps, weight_decay,
                                       momentum, centered, maximize)
        param[i] = p
        square_avg[i] = sq
        if centered:
            grad_avg[i] = ga
        if momentum > 0:
            buf[i] = b


@_Loop
def _adagrad(param, grad, state_sum, clr, eps, weight_decay, maximize):
    for i in prange(param.shape[0]):
        p, s = _adagrad_update(param[i], grad[i], state_sum[i], clr, eps, weight_decay, maximize)
        param[i] = p
        state_sum[i] = s


@_Loop
def _adadelta(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
              weight_decay, maximize):
    for i in prange(param.shape[0]):
        p, sq, acc = _adadelta_update(param[i], grad[i], square_avg[i], acc_delta[i], lr, rho,
                                      one_minus_rho, eps, weight_decay, maximize)
        param[i] = p
        square_avg[i] = sq
        acc_delta[i] = acc


@_Loop
def _vector_norm(x, mode, p, out, index):
    # Fixed-size chunks reduced in parallel into their own slots, then the chunk
    # results summed in order: the same answer whatever the thread count.
    n = x.shape[0]
    nchunks = max(1, (n + _o.NORM_CHUNK - 1) // _o.NORM_CHUNK)
    partial = np.zeros(nchunks, dtype=np.float64)
    for c in prange(nchunks):
        acc = 0.0
        for i in range(c * _o.NORM_CHUNK, min(n, (c + 1) * _o.NORM_CHUNK)):
            acc = _norm_combine(acc, _norm_term(x[i], mode, p), mode)
        partial[c] = acc
    total = 0.0
    for c in range(nchunks):
        total = _norm_combine(total, partial[c], mode)
    out[index] = _norm_root(total, mode, p)


@_Loop
def _scale_by_norm(x, total_norm, max_norm):
    # coef = min(max_norm / (total + 1e-6), 1) in float64; one rounding per element
    c = min(max_norm / (total_norm[0] + 1e-6), 1.0)
    for i in prange(x.shape[0]):
        x[i] = x[i] * c


@_Loop
def _clamp(x, lo, hi):
    for i in prange(x.shape[0]):
        v = x[i]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        x[i] = v


# --------------------------------------------------------------------------- host functions

def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False, first_step=False):
    """One SGD step in place (torch.optim.SGD). param, grad, momentum_buffer: (n,).

    momentum_buffer may be None only when momentum == 0; on ``first_step`` it is
    set to the (weight-decayed) gradient, as torch does when it creates the buffer.
    """
    op = "sgd_step"
    dtype = _o.check_step_arrays(op, param, grad, momentum_buffer=momentum_buffer)
    scalars = _o.sgd_scalars(op, dtype, lr, momentum, dampening, weight_decay)
    if momentum_buffer is None:
        if momentum != 0:
            raise ValueError(f"{op}: momentum={momentum} needs a momentum_buffer")
        momentum_buffer = grad              # never written
    _sgd(param.shape[0], param, grad, momentum_buffer, *scalars,
         bool(nesterov), bool(maximize), bool(first_step))


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
              weight_decay=0.0, decoupled_weight_decay=False, maximize=False):
    """One Adam (or AdamW with decoupled_weight_decay) step in place. All arrays (n,).

    ``step`` counts this update (1 on the first); max_exp_avg_sq given means amsgrad.
    """
    op = "adam_step"
    dtype = _o.check_step_arrays(op, param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                                 max_exp_avg_sq=max_exp_avg_sq)
    scalars = _o.adam_scalars(op, dtype, step, lr, beta1, beta2, eps, weight_decay,
                              decoupled_weight_decay)
    amsgrad = max_exp_avg_sq is not None
    _adam(param.shape[0], param, grad, exp_avg, exp_avg_sq,
          max_exp_avg_sq if amsgrad else exp_avg_sq,
          *scalars, amsgrad, bool(decoupled_weight_decay), bool(maximize))


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, maximize=False):
    """One RMSprop step in place. All arrays (n,).

    grad_avg given means centered; momentum_buffer is required when momentum > 0.
    """
    op = "rmsprop_step"
    dtype = _o.check_step_arrays(op, param, grad, square_avg=square_avg, grad_avg=grad_avg,
                                 momentum_buffer=momentum_buffer)
    scalars = _o.rmsprop_scalars(op, dtype, lr, alpha, eps, weight_decay, momentum)
    if momentum_buffer is None and momentum > 0:
        raise ValueError(f"{op}: momentum={momentum} needs a momentum_buffer")
    centered = grad_avg is not None
    _rmsprop(param.shape[0], param, grad, square_avg, grad_avg if centered else square_avg,
             square_avg if momentum_buffer is None else momentum_buffer,
             *scalars, centered, bool(maximize))


def adagrad_step(param, grad, state_sum, step, lr, lr_decay=0.0, eps=1e-10, weight_decay=0.0,
                 maximize=False):
    """One Adagrad step in place. All arrays (n,); ``step`` counts this update (1 first)."""
    op = "adagrad_step"
    dtype = _o.check_step_arrays(op, param, grad, state_sum=state_sum)
    scalars = _o.adagrad_scalars(op, dtype, step, lr, lr_decay, eps, weight_decay)
    _adagrad(param.shape[0], param, grad, state_sum, *scalars, bool(maximize))


def adadelta_step(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay=0.0,
                  maximize=False):
    """One Adadelta step in place. All arrays (n,)."""
    op = "adadelta_step"
    dtype = _o.check_step_arrays(op, param, grad, square_avg=square_avg, acc_delta=acc_delta)
    scalars = _o.adadelta_scalars(op, dtype, lr, rho, eps, weight_decay)
    _adadelta(param.shape[0], param, grad, square_avg, acc_delta, *scalars, bool(maximize))


def vector_norm(x, norm_type, out, index):
    """out[index] = ||x||_p (float64). x: (n,) float32/float64; out: (k,) float64.

    p > 0 or inf. Accumulates in float64 over fixed chunks (deterministic).
    Calling it on the array of per-tensor norms gives the norm of the
    concatenation, which is how clip_grad_norm_ combines parameters.
    """
    op = "vector_norm"
    index = _o.check_norm_out(op, x, out, index)
    mode, p = _o.norm_mode(op, norm_type)
    _vector_norm(x.shape[0], x, mode, p, out, index)


def scale_by_norm(x, total_norm, max_norm):
    """x *= min(max_norm / (total_norm[0] + 1e-6), 1) in place. x: (n,); total_norm: (1,) float64.

    max_norm >= 0 (inf allowed: no clipping). The product is formed in float64.
    """
    max_norm = _o.check_scale_args("scale_by_norm", x, total_norm, max_norm)
    _scale_by_norm(x.shape[0], x, total_norm, max_norm)


def clamp_(x, clip_value):
    """x = min(max(x, -clip_value), clip_value) in place. x: (n,) float; clip_value >= 0."""
    lo, hi = _o.clamp_bounds("clamp_", x, clip_value)
    _clamp(x.shape[0], x, lo, hi)
