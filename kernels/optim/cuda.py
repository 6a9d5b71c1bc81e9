"""Optimizer update kernels for CUDA (``@cuda.jit``, one thread per element).

Same host functions, arguments and math as ``cpu.py`` (the per-element code is
shared, see ``nbdl.kernels.optim``); arrays are numba device arrays and every
update happens in place on the device. The gradient norm is a two-kernel
deterministic reduction: one block per NORM_CHUNK elements writes a partial
through a fixed-order shared-memory tree, then one block folds the partials.
No atomics, no host round trip.
"""
import math

import numpy as np
from numba import boolean, config, cuda, float32, float64, int64

from nbdl.kernels import optim as _o
from nbdl.kernels._cuda import grid1d

_NORM_THREADS = 256            # threads per reduction block (a power of two)


def _sim_sqrt(x):
    # The simulator runs kernels as Python, where math.sqrt(float32) returns a
    # double (and raises on x < 0); round back to x's type as sqrtf does.
    return type(x)(math.sqrt(x) if x >= 0 else math.nan)


# inline=True: inlined in Numba IR, so compile_ptx works without a GPU driver
# (a separately compiled device function asks the driver for the device).
_device = cuda.jit(device=True, inline=True)
_lerp = _device(_o.lerp)
_helpers = dict(lerp=_lerp)
if config.ENABLE_CUDASIM:
    _helpers["sqrt"] = _sim_sqrt


def _element(func):
    return _o.bind(func, _device, **_helpers)


_sgd_update = _element(_o.sgd_update)
_adam_update = _element(_o.adam_update)
_rmsprop_update = _element(_o.rmsprop_update)
_adagrad_update = _element(_o.adagrad_update)
_adadelta_update = _element(_o.adadelta_update)
_norm_term = _element(_o.norm_term)
_norm_combine = _element(_o.norm_combine)
_norm_root = _element(_o.norm_root)


# --------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def _sgd(param, grad, buf, lr, momentum, one_minus_dampening, weight_decay,
         nesterov, maximize, first_step):
    i = cuda.grid(1)
    if i < param.shape[0]:
        p, b = _sgd_update(param[i], grad[i], buf[i], lr, momentum, one_minus_dampening,
                           weight_decay, nesterov, maximize, first_step)
        param[i] = p
        if momentum != 0:
            buf[i] = b


@cuda.jit(cache=True)
def _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, w1, one_minus_w1, beta2,
          one_minus_beta2, eps, weight_decay, decay, step_size, bc2_sqrt, amsgrad,
          decoupled, maximize):
    i = cuda.grid(1)
    if i < param.shape[0]:
        p, m, v, vmax = _adam_update(param[i], grad[i], exp_avg[i], exp_avg_sq[i],
                                     max_exp_avg_sq[i], w1, one_minus_w1, beta2,
                                     one_minus_beta2, eps, weight_decay, decay, step_size,
                                     bc2_sqrt, amsgrad, decoupled, maximize)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            max_exp_avg_sq[i] = vmax


@cuda.jit(cache=True)
def _rmsprop(param, grad, square_avg, grad_avg, buf, lr, alpha, w, one_minus_w, eps,
             weight_decay, momentum, centered, maximize):
    i = cuda.grid(1)
    if i < param.shape[0]:
        p, sq, ga, b = _rmsprop_update(param[i], grad[i], square_avg[i], grad_avg[i], buf[i],
                                       lr, alpha, w, one_minus_w, eps, weight_decay,
                                       momentum, centered, maximize)
        param[i] = p
        square_avg[i] = sq
        if centered:
            grad_avg[i] = ga
        if momentum > 0:
            buf[i] = b


@cuda.jit(cache=True)
def _adagrad(param, grad, state_sum, clr, eps, weight_decay, maximize):
    i = cuda.grid(1)
    if i < param.shape[0]:
        p, s = _adagrad_update(param[i], grad[i], state_sum[i], clr, eps, weight_decay, maximize)
        param[i] = p
        state_sum[i] = s


@cuda.jit(cache=True)
def _adadelta(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
              weight_decay, maximize):
    i = cuda.grid(1)
    if i < param.shape[0]:
        p, sq, acc = _adadelta_update(param[i], grad[i], square_avg[i], acc_delta[i], lr, rho,
                                      one_minus_rho, eps, weight_decay, maximize)
        param[i] = p
        square_avg[i] = sq
        acc_delta[i] = acc


@cuda.jit(device=True, inline=True)
def _block_fold(buf, acc, mode):
    """Fixed-order tree over the block's shared slots; returns the result in every thread 0."""
    t = cuda.threadIdx.x
    buf[t] = acc
    cuda.syncthreads()
    stride = _NORM_THREADS // 2
    while stride > 0:
        if t < stride:
            buf[t] = _norm_combine(buf[t], buf[t + stride], mode)
        cuda.syncthreads()
        stride //= 2
    return buf[0]


@cuda.jit(cache=True)
def _norm_partials(x, mode, p, partial):
    # block b: x[b * NORM_CHUNK : (b + 1) * NORM_CHUNK] -> partial[b]
    buf = cuda.shared.array(_NORM_THREADS, float64)
    t = cuda.threadIdx.x
    start = cuda.blockIdx.x * _o.NORM_CHUNK
    stop = min(x.shape[0], start + _o.NORM_CHUNK)
    acc = 0.0
    for i in range(start + t, stop, _NORM_THREADS):
        acc = _norm_combine(acc, _norm_term(x[i], mode, p), mode)
    total = _block_fold(buf, acc, mode)
    if t == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def _norm_finish(partial, mode, p, out, index):
    # one block: out[index] = root(fold(partial))
    buf = cuda.shared.array(_NORM_THREADS, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for i in range(t, partial.shape[0], _NORM_THREADS):
        acc = _norm_combine(acc, partial[i], mode)
    total = _block_fold(buf, acc, mode)
    if t == 0:
        out[index] = _norm_root(total, mode, p)


@cuda.jit(cache=True)
def _scale_by_norm(x, total_norm, max_norm):
    i = cuda.grid(1)
    if i < x.shape[0]:
        c = min(max_norm / (total_norm[0] + 1e-6), 1.0)
        x[i] = x[i] * c


@cuda.jit(cache=True)
def _clamp(x, lo, hi):
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = x[i]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        x[i] = v


def _launch(kernel, n, *args):
    # Small tensors (biases) get one warp-multiple block instead of 256 idle threads.
    blocks, threads = grid1d(n)
    kernel[blocks, threads](*args)


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
    _launch(_sgd, param.shape[0], param, grad, momentum_buffer, *scalars,
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
    _launch(_adam, param.shape[0], param, grad, exp_avg, exp_avg_sq,
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
    _launch(_rmsprop, param.shape[0], param, grad, square_avg,
            grad_avg if centered else square_avg,
            square_avg if momentum_buffer is None else momentum_buffer,
            *scalars, centered, bool(maximize))


def adagrad_step(param, grad, state_sum, step, lr, lr_decay=0.0, eps=1e-10, weight_decay=0.0,
                 maximize=False):
    """One Adagrad step in place. All arrays (n,); ``step`` counts this update (1 first)."""
    op = "adagrad_step"
    dtype = _o.check_step_arrays(op, param, grad, state_sum=state_sum)
    scalars = _o.adagrad_scalars(op, dtype, step, lr, lr_decay, eps, weight_decay)
    _launch(_adagrad, param.shape[0], param, grad, state_sum, *scalars, bool(maximize))


def adadelta_step(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay=0.0,
                  maximize=False):
    """One Adadelta step in place. All arrays (n,)."""
    op = "adadelta_step"
    dtype = _o.check_step_arrays(op, param, grad, square_avg=square_avg, acc_delta=acc_delta)
    scalars = _o.adadelta_scalars(op, dtype, lr, rho, eps, weight_decay)
    _launch(_adadelta, param.shape[0], param, grad, square_avg, acc_delta, *scalars,
            bool(maximize))


def vector_norm(x, norm_type, out, index):
    """out[index] = ||x||_p (float64). x: (n,) float32/float64; out: (k,) float64.

    p > 0 or inf. Accumulates in float64 over fixed chunks (deterministic).
    Calling it on the array of per-tensor norms gives the norm of the
    concatenation, which is how clip_grad_norm_ combines parameters.
    """
    op = "vector_norm"
    index = _o.check_norm_out(op, x, out, index)
    mode, p = _o.norm_mode(op, norm_type)
    nblocks = _o.norm_chunks(x.shape[0])
    partial = cuda.device_array(nblocks, dtype=np.float64)
    _norm_partials[nblocks, _NORM_THREADS](x, mode, p, partial)
    _norm_finish[1, _NORM_THREADS](partial, mode, p, out, index)


def scale_by_norm(x, total_norm, max_norm):
    """x *= min(max_norm / (total_norm[0] + 1e-6), 1) in place. x: (n,); total_norm: (1,) float64.

    max_norm >= 0 (inf allowed: no clipping). The product is formed in float64.
    """
    max_norm = _o.check_scale_args("scale_by_norm", x, total_norm, max_norm)
    _launch(_scale_by_norm, x.shape[0], x, total_norm, max_norm)


def clamp_(x, clip_value):
    """x = min(max(x, -clip_value), clip_value) in place. x: (n,) float; clip_value >= 0."""
    lo, hi = _o.clamp_bounds("clamp_", x, clip_value)
    _launch(_clamp, x.shape[0], x, lo, hi)


# --------------------------------------------------------------------------- PTX signatures

def ptx_signatures():
    """(kernel, argument types) for every kernel above, float32 and float64."""
    sigs = []
    for f in (float32, float64):
        a = f[::1]
        b = boolean
        sigs += [
            (_sgd, (a, a, a, f, f, f, f, b, b, b)),
            (_adam, (a, a, a, a, a) + (f,) * 9 + (b, b, b)),
            (_rmsprop, (a, a, a, a, a) + (f,) * 7 + (b, b)),
            (_adagrad, (a, a, a, f, f, f, b)),
            (_adadelta, (a, a, a, a, f, f, f, f, f, b)),
            (_norm_partials, (a, int64, float64, float64[::1])),
            (_scale_by_norm, (a, float64[::1], float64)),
            (_clamp, (a, f, f)),
        ]
    sigs.append((_norm_finish, (float64[::1], int64, float64, float64[::1], int64)))
    return sigs
