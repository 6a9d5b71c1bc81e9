"""CUDA recurrent layers: the CPU backend's algorithm as a stream of launches.

Forward: one GEMM for the input projection of all steps, then per step the
recurrent GEMM (``nbdl.kernels.linalg.cuda.matmul`` into a preallocated buffer)
and one fused gate kernel, one thread per (batch row, hidden unit). Backward: per
step one gate-gradient kernel, the recurrent GEMM and one kernel adding its
result into dL/dh; then dx, dw_ih, dw_hh as one GEMM each over all T*B rows.

The host loop only enqueues launches: step indices are kernel arguments and
lengths live on the device, so nothing is copied back to the host inside an op.
"""
import math

import numpy as np
from numba import boolean, config, cuda, float32, float64, int64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.elementwise.cuda import add, copy, copy_into, zeros
from nbdl.kernels.linalg.cuda import matmul, sum_rows
from nbdl.kernels.rnn import (check_backward, check_forward, check_lengths, check_mask_args,
                              check_nonlinearity, splitmix_uniform)


def _splitmix_uniform_quiet(seed, index):
    """The simulator runs device functions as Python on numpy scalars, where the
    wrapping uint64 arithmetic of splitmix64 warns about overflow."""
    with np.errstate(over="ignore"):
        return splitmix_uniform(seed, index)


_uniform = cuda.jit(device=True, inline=True)(_splitmix_uniform_quiet if config.ENABLE_CUDASIM
                                              else splitmix_uniform)


@cuda.jit(device=True, inline=True)
def _sigmoid(x, one):
    return one / (one + math.exp(-x))


@cuda.jit(device=True, inline=True)
def _unit(i, hidden):
    """Thread i -> (batch row, hidden unit)."""
    b = i // hidden
    return b, i - b * hidden


# --- forward step kernels: one thread per (b, j) ----------------------------------

@cuda.jit(cache=True)
def _rnn_step(xw, gh, bias, hs, y, lengths, t, tin, tout, relu):
    i = cuda.grid(1)
    batch, hidden = gh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        zero = hs.dtype.type(0)
        a = xw[t, b, j] + gh[b, j] + bias[j]
        h = (a if a > zero else zero) if relu else math.tanh(a)
        hs[tout, b, j] = h
        y[t, b, j] = h
    else:
        hs[tout, b, j] = hs[tin, b, j]
        y[t, b, j] = 0


@cuda.jit(cache=True)
def _lstm_step(xw, gh, bias, hs, cs, gates, y, lengths, t, tin, tout):
    i = cuda.grid(1)
    batch, hidden = hs.shape[1], hs.shape[2]
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        one = hs.dtype.type(1)
        ig = _sigmoid(xw[t, b, j] + gh[b, j] + bias[j], one)
        k = hidden + j
        fg = _sigmoid(xw[t, b, k] + gh[b, k] + bias[k], one)
        k += hidden
        gg = math.tanh(xw[t, b, k] + gh[b, k] + bias[k])
        k += hidden
        og = _sigmoid(xw[t, b, k] + gh[b, k] + bias[k], one)
        c = fg * cs[tin, b, j] + ig * gg
        h = og * math.tanh(c)
        cs[tout, b, j] = c
        hs[tout, b, j] = h
        y[t, b, j] = h
        gates[t, b, j] = ig
        gates[t, b, hidden + j] = fg
        gates[t, b, 2 * hidden + j] = gg
        gates[t, b, 3 * hidden + j] = og
    else:
        cs[tout, b, j] = cs[tin, b, j]
        hs[tout, b, j] = hs[tin, b, j]
        y[t, b, j] = 0


@cuda.jit(cache=True)
def _gru_reset_gate(xw, gh_rz, bias, hrec, gates, rh, t):
    """reset_after=False, before the n block's product: r = sigmoid(.), rh = r * h (every row)."""
    i = cuda.grid(1)
    batch, hidden = rh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    r = _sigmoid(xw[t, b, j] + gh_rz[b, j] + bias[j], rh.dtype.type(1))
    gates[t, b, j] = r
    rh[b, j] = r * hrec[b, j]


@cuda.jit(cache=True)
def _gru_step(xw, gh, gh_n, bias, b_ih, b_hh, hs, gates, aux, rh, y, lengths, t, tin, tout, reset_after):
    """gh: W_h{r,z,n} h (reset_after, (B, 3H)) or W_h{r,z} h ((B, 2H)) with gh_n = W_hn (r h)."""
    i = cuda.grid(1)
    batch, hidden = hs.shape[1], hs.shape[2]
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        one = hs.dtype.type(1)
        h2 = 2 * hidden
        k = hidden + j
        z = _sigmoid(xw[t, b, k] + gh[b, k] + bias[k], one)
        k += hidden
        if reset_after:
            r = _sigmoid(xw[t, b, j] + gh[b, j] + bias[j], one)
            hn = gh[b, k] + b_hh[k]
            n = math.tanh(xw[t, b, k] + b_ih[k] + r * hn)
            gates[t, b, j] = r
            aux[t, b, j] = hn
        else:
            n = math.tanh(xw[t, b, k] + b_ih[k] + gh_n[b, j] + b_hh[k])
            aux[t, b, j] = rh[b, j]
        h = n + z * (hs[tin, b, j] - n)          # (1 - z) n + z h
        gates[t, b, hidden + j] = z
        gates[t, b, h2 + j] = n
        hs[tout, b, j] = h
        y[t, b, j] = h
    else:
        hs[tout, b, j] = hs[tin, b, j]
        y[t, b, j] = 0
        aux[t, b, j] = 0       # a GEMM operand of the backward: no stale values


@cuda.jit(cache=True)
def _mask_rows(h, mask, out):
    """out = h * mask (B, H): the recurrent operand under variational dropout."""
    i = cuda.grid(1)
    batch, hidden = h.shape
    if i < batch * hidden:
        b, j = _unit(i, hidden)
        out[b, j] = h[b, j] * mask[b, j]


# --- backward step kernels --------------------------------------------------------------

@cuda.jit(cache=True)
def _rnn_step_bwd(dy, dh, hs, dg, lengths, t, tout, relu):
    i = cuda.grid(1)
    batch, hidden = dh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        zero = dh.dtype.type(0)
        h = hs[tout, b, j]
        d = dh[b, j] + dy[t, b, j]
        dg[t, b, j] = (d if h > zero else zero) if relu else d * (dh.dtype.type(1) - h * h)
        dh[b, j] = 0
    else:
        dg[t, b, j] = 0


@cuda.jit(cache=True)
def _lstm_step_bwd(dy, dh, dc, cs, gates, dg, lengths, t, tin, tout):
    i = cuda.grid(1)
    batch, hidden = dh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    h1, h2, h3 = hidden + j, 2 * hidden + j, 3 * hidden + j
    if t < lengths[b]:
        one = dh.dtype.type(1)
        ig = gates[t, b, j]
        fg = gates[t, b, h1]
        gg = gates[t, b, h2]
        og = gates[t, b, h3]
        tc = math.tanh(cs[tout, b, j])
        d = dh[b, j] + dy[t, b, j]
        dct = dc[b, j] + d * og * (one - tc * tc)
        dg[t, b, j] = dct * gg * ig * (one - ig)
        dg[t, b, h1] = dct * cs[tin, b, j] * fg * (one - fg)
        dg[t, b, h2] = dct * ig * (one - gg * gg)
        dg[t, b, h3] = d * tc * og * (one - og)
        dc[b, j] = dct * fg
        dh[b, j] = 0
    else:
        dg[t, b, j] = 0
        dg[t, b, h1] = 0
        dg[t, b, h2] = 0
        dg[t, b, h3] = 0


@cuda.jit(cache=True)
def _gru_step_bwd(dy, dh, hs, gates, aux, dg, dgn_h, dgh, lengths, t, tin, reset_after):
    """dg (T, B, 3H): x-side pre-activation gradients; dgn_h (T, B, H): gradient of the
    n block's recurrent product; dgh (B, 3H or 2H): this step's W_hh-side gradient
    (its r block is filled by _gru_reset_bwd when reset_after is False)."""
    i = cuda.grid(1)
    batch, hidden = dh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    h1, h2 = hidden + j, 2 * hidden + j
    if t < lengths[b]:
        one = dh.dtype.type(1)
        r = gates[t, b, j]
        z = gates[t, b, h1]
        n = gates[t, b, h2]
        d = dh[b, j] + dy[t, b, j]
        dn = d * (one - z) * (one - n * n)
        dz = d * (hs[tin, b, j] - n) * z * (one - z)
        dg[t, b, h1] = dz
        dg[t, b, h2] = dn
        dgh[b, h1] = dz
        if reset_after:
            dr = dn * aux[t, b, j] * r * (one - r)
            dg[t, b, j] = dr
            dgh[b, j] = dr
            dgh[b, h2] = dn * r
            dgn_h[t, b, j] = dn * r
        else:
            dgn_h[t, b, j] = dn
        dh[b, j] = d * z                       # the direct path h' = ... + z h
    else:
        dg[t, b, j] = 0
        dg[t, b, h1] = 0
        dg[t, b, h2] = 0
        dgh[b, j] = 0
        dgh[b, h1] = 0
        if reset_after:
            dgh[b, h2] = 0
        dgn_h[t, b, j] = 0


@cuda.jit(cache=True)
def _gru_reset_bwd(drh, hs, gates, mask, dg, dgh, dh, lengths, t, tin, use_mask):
    """reset_after=False: drh = d(r * hm) = dn @ W_hn gives r's gradient and a path to h."""
    i = cuda.grid(1)
    batch, hidden = dh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        one = dh.dtype.type(1)
        m = mask[b, j] if use_mask else one
        r = gates[t, b, j]
        dr = drh[b, j] * hs[tin, b, j] * m * r * (one - r)
        dg[t, b, j] = dr
        dgh[b, j] = dr
        dh[b, j] += drh[b, j] * r * m


@cuda.jit(cache=True)
def _add_recurrent_grad(dh, dhr, mask, lengths, t, use_mask):
    """dh += dhr * mask on rows active at step t; inactive rows passed their state through."""
    i = cuda.grid(1)
    batch, hidden = dh.shape
    if i >= batch * hidden:
        return
    b, j = _unit(i, hidden)
    if t < lengths[b]:
        dh[b, j] += dhr[b, j] * mask[b, j] if use_mask else dhr[b, j]


@cuda.jit(cache=True)
def _mask_states(hs, mask, out):
    """out[t] = hs[t] * mask for every step: the dW_hh operand under dropout."""
    i = cuda.grid(1)
    steps, batch, hidden = out.shape
    if i < steps * batch * hidden:
        t = i // (batch * hidden)
        b, j = _unit(i - t * batch * hidden, hidden)
        out[t, b, j] = hs[t, b, j] * mask[b, j]


@cuda.jit(cache=True)
def _dropout_mask(mask, p, seed):
    i = cuda.grid(1)
    batch, hidden = mask.shape
    if i < batch * hidden:
        b, j = _unit(i, hidden)
        mask[b, j] = 1.0 / (1.0 - p) if _uniform(seed, i) >= p else 0.0


def recurrent_dropout_mask(batch, hidden, p, seed, dtype):
    """Variational dropout mask (batch, hidden): 0 with probability p, else 1 / (1 - p).

    Element (b, j) is kept when splitmix_uniform(seed, b * hidden + j) >= p: the same
    bits on every backend.
    """
    p = check_mask_args("recurrent_dropout_mask", batch, hidden, p, seed)
    mask = empty((batch, hidden), dtype)
    blocks, threads = grid1d(batch * hidden)
    _dropout_mask[blocks, threads](mask, p, int(seed))
    return mask


# --- host helpers -----------------------------------------------------------------------

def _launch(kernel, batch, hidden, *args):
    """One thread per (batch row, hidden unit); blocks of up to 256 threads (a warp
    multiple, smaller for tiny layers: fewer idle threads)."""
    n = batch * hidden
    blocks, threads = grid1d(n)
    kernel[blocks, threads](*args)


def _bias_sum(b_ih, b_hh, rows, dtype):
    """b_ih + b_hh, and each of them (zeros for a missing bias)."""
    b_ih = zeros((rows,), dtype) if b_ih is None else b_ih
    b_hh = zeros((rows,), dtype) if b_hh is None else b_hh
    return add(b_ih, b_hh), b_ih, b_hh


def _mask_arg(mask, dtype):
    """The kernels read mask only when use_mask; pass a 1 x 1 stand-in otherwise."""
    return (empty((1, 1), dtype), False) if mask is None else (mask, True)


def _input_projection(x, w_ih):
    steps, batch, inputs = x.shape
    return matmul(x.reshape(steps * batch, inputs), w_ih, trans_b=True).reshape(steps, batch, w_ih.shape[0])


def _states(steps, batch, hidden, h0, reverse, dtype):
    hs = empty((steps + 1, batch, hidden), dtype)
    copy_into(hs[steps if reverse else 0], h0)
    return hs


def _final(hs, reverse):
    return copy(hs[0 if reverse else hs.shape[0] - 1])


def _slots(t, reverse):
    """(slot of the state entering step t, slot of the state after it); see the package doc."""
    return (t + 1, t) if reverse else (t, t + 1)


def _order(steps, reverse, backward=False):
    """The forward visits t = 0..T-1 (T-1..0 in reverse); the backward the opposite."""
    forward = range(steps - 1, -1, -1) if reverse else range(steps)
    return forward[::-1] if backward else forward


def _recurrent_operand(hs, t, reverse, mask, scratch):
    """The state entering step t, times the mask when there is one."""
    h = hs[_slots(t, reverse)[0]]
    if mask is None:
        return h
    _launch(_mask_rows, h.shape[0], h.shape[1], h, mask, scratch)
    return scratch


def _recurrent_inputs(hs, reverse, mask):
    """(T*B, H): the state entering each step (times the mask): the operand of dW_hh."""
    steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    h = hs[1:] if reverse else hs[:steps]
    if mask is not None:
        out = empty((steps, batch, hidden), hs.dtype)
        blocks, threads = grid1d(steps * batch * hidden)
        _mask_states[blocks, threads](h, mask, out)
        h = out
    return h.reshape(steps * batch, hidden)


def _weight_grads(dg, x, w_ih, hrec, need_dx):
    steps, batch, g = dg.shape
    dg2 = dg.reshape(steps * batch, g)
    dx = matmul(dg2, w_ih).reshape(x.shape) if need_dx else None
    dw_ih = matmul(dg2, x.reshape(steps * batch, x.shape[2]), trans_a=True)
    dw_hh = matmul(dg2, hrec, trans_a=True)
    return dx, dw_ih, dw_hh, sum_rows(dg2)


# --- public host functions (same names and signatures as cpu.py) ---------------------

def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", reverse=False, lengths=None):
    """Elman RNN over a sequence: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh).

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih, b_hh (H,) or None.
    Returns y (T, B, H), h_n (B, H) and hs (T+1, B, H) for the backward.
    """
    op = "rnn_forward"
    relu = check_nonlinearity(op, nonlinearity) == "relu"
    steps, batch, _, hidden, dtype = check_forward(op, "rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh)
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    xw = _input_projection(x, w_ih)
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    y = empty((steps, batch, hidden), dtype)
    bias = _bias_sum(b_ih, b_hh, hidden, dtype)[0]
    gh = empty((batch, hidden), dtype)
    for t in _order(steps, reverse):
        tin, tout = _slots(t, reverse)
        matmul(hs[tin], w_hh, trans_b=True, out=gh)
        _launch(_rnn_step, batch, hidden, xw, gh, bias, hs, y, d_lengths, t, tin, tout, relu)
    return y, _final(hs, reverse), hs


def rnn_backward(dy, dh_n, x, w_ih, w_hh, hs, nonlinearity="tanh", reverse=False, lengths=None,
                 need_dx=True):
    """Backward through time of rnn_forward.

    dy (T, B, H), dh_n (B, H). Returns dx (T, B, I) (None unless need_dx), dh0 (B, H),
    dw_ih, dw_hh, db_ih, db_hh (the two bias gradients are equal).
    """
    op = "rnn_backward"
    relu = check_nonlinearity(op, nonlinearity) == "relu"
    steps, batch, _, hidden, dtype = check_forward(op, "rnn", x, dh_n, None, w_ih, w_hh, None, None,
                                                    states=("dh_n", "dc_n"))
    check_backward(op, dy, dh_n, None, x, {"hs": hs}, {"hs": (steps + 1, batch, hidden)})
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    dh = copy(dh_n)
    dg = empty((steps, batch, hidden), dtype)
    dhr = empty((batch, hidden), dtype)
    no_mask, _ = _mask_arg(None, dtype)
    for t in _order(steps, reverse, backward=True):
        tout = _slots(t, reverse)[1]
        _launch(_rnn_step_bwd, batch, hidden, dy, dh, hs, dg, d_lengths, t, tout, relu)
        matmul(dg[t], w_hh, out=dhr)
        _launch(_add_recurrent_grad, batch, hidden, dh, dhr, no_mask, d_lengths, t, False)
    dx, dw_ih, dw_hh, db = _weight_grads(dg, x, w_ih, _recurrent_inputs(hs, reverse, None), need_dx)
    return dx, dh, dw_ih, dw_hh, db, copy(db)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False, lengths=None, mask=None):
    """LSTM over a sequence (gates i, f, g, o; see the package docstring).

    x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,) or None,
    mask (B, H) or None. Returns y (T, B, H), h_n, c_n (B, H) and, for the backward,
    hs, cs (T+1, B, H) and gates (T, B, 4H).
    """
    op = "lstm_forward"
    steps, batch, _, hidden, dtype = check_forward(op, "lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask)
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    xw = _input_projection(x, w_ih)
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    cs = _states(steps, batch, hidden, c0, reverse, dtype)
    gates = empty((steps, batch, 4 * hidden), dtype)
    y = empty((steps, batch, hidden), dtype)
    bias = _bias_sum(b_ih, b_hh, 4 * hidden, dtype)[0]
    gh = empty((batch, 4 * hidden), dtype)
    hrec = empty((batch, hidden), dtype)
    for t in _order(steps, reverse):
        tin, tout = _slots(t, reverse)
        matmul(_recurrent_operand(hs, t, reverse, mask, hrec), w_hh, trans_b=True, out=gh)
        _launch(_lstm_step, batch, hidden, xw, gh, bias, hs, cs, gates, y, d_lengths, t, tin, tout)
    return y, _final(hs, reverse), _final(cs, reverse), hs, cs, gates


def lstm_backward(dy, dh_n, dc_n, x, w_ih, w_hh, hs, cs, gates, reverse=False, lengths=None, mask=None,
                  need_dx=True):
    """Backward through time of lstm_forward.

    Returns dx (T, B, I) (None unless need_dx), dh0, dc0 (B, H), dw_ih (4H, I),
    dw_hh (4H, H), db_ih, db_hh (4H,) (equal: both biases enter the same sums).
    """
    op = "lstm_backward"
    steps, batch, _, hidden, dtype = check_forward(op, "lstm", x, dh_n, dc_n, w_ih, w_hh, None, None, mask,
                                                    states=("dh_n", "dc_n"))
    state = (steps + 1, batch, hidden)
    check_backward(op, dy, dh_n, dc_n, x, {"hs": hs, "cs": cs, "gates": gates},
                   {"hs": state, "cs": state, "gates": (steps, batch, 4 * hidden)})
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    dh, dc = copy(dh_n), copy(dc_n)
    dg = empty((steps, batch, 4 * hidden), dtype)
    dhr = empty((batch, hidden), dtype)
    m, use_mask = _mask_arg(mask, dtype)
    for t in _order(steps, reverse, backward=True):
        tin, tout = _slots(t, reverse)
        _launch(_lstm_step_bwd, batch, hidden, dy, dh, dc, cs, gates, dg, d_lengths, t, tin, tout)
        matmul(dg[t], w_hh, out=dhr)
        _launch(_add_recurrent_grad, batch, hidden, dh, dhr, m, d_lengths, t, use_mask)
    dx, dw_ih, dw_hh, db = _weight_grads(dg, x, w_ih, _recurrent_inputs(hs, reverse, mask), need_dx)
    return dx, dh, dc, dw_ih, dw_hh, db, copy(db)


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=True, reverse=False, lengths=None, mask=None):
    """GRU over a sequence (gates r, z, n; both variants, see the package docstring).

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,) or None,
    mask (B, H) or None. Returns y (T, B, H), h_n (B, H) and, for the backward,
    hs (T+1, B, H), gates (T, B, 3H) and aux (T, B, H).
    """
    op = "gru_forward"
    steps, batch, _, hidden, dtype = check_forward(op, "gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, mask)
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    reset_after = bool(reset_after)
    h2 = 2 * hidden
    xw = _input_projection(x, w_ih)
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    gates = empty((steps, batch, 3 * hidden), dtype)
    aux = empty((steps, batch, hidden), dtype)
    y = empty((steps, batch, hidden), dtype)
    bias, b_ih, b_hh = _bias_sum(b_ih, b_hh, 3 * hidden, dtype)
    gh = empty((batch, 3 * hidden if reset_after else h2), dtype)
    gh_n = empty((batch, hidden), dtype)
    hrec = empty((batch, hidden), dtype)
    rh = empty((batch, hidden), dtype)
    for t in _order(steps, reverse):
        tin, tout = _slots(t, reverse)
        h = _recurrent_operand(hs, t, reverse, mask, hrec)
        if reset_after:
            matmul(h, w_hh, trans_b=True, out=gh)
        else:
            # r is needed before the n block's product W_hn (r * h)
            matmul(h, w_hh[:h2], trans_b=True, out=gh)
            _launch(_gru_reset_gate, batch, hidden, xw, gh, bias, h, gates, rh, t)
            matmul(rh, w_hh[h2:], trans_b=True, out=gh_n)
        _launch(_gru_step, batch, hidden, xw, gh, gh_n, bias, b_ih, b_hh, hs, gates, aux, rh, y, d_lengths,
                t, tin, tout, reset_after)
    return y, _final(hs, reverse), hs, gates, aux


def gru_backward(dy, dh_n, x, w_ih, w_hh, hs, gates, aux, reset_after=True, reverse=False, lengths=None,
                 mask=None, need_dx=True):
    """Backward through time of gru_forward.

    Returns dx (T, B, I) (None unless need_dx), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H),
    db_ih, db_hh (3H,).
    """
    op = "gru_backward"
    steps, batch, _, hidden, dtype = check_forward(op, "gru", x, dh_n, None, w_ih, w_hh, None, None, mask,
                                                    states=("dh_n", "dc_n"))
    check_backward(op, dy, dh_n, None, x, {"hs": hs, "gates": gates, "aux": aux},
                   {"hs": (steps + 1, batch, hidden), "gates": (steps, batch, 3 * hidden),
                    "aux": (steps, batch, hidden)})
    d_lengths = cuda.to_device(check_lengths(op, lengths, batch, steps))
    reset_after = bool(reset_after)
    h2 = 2 * hidden
    dh = copy(dh_n)
    dg = empty((steps, batch, 3 * hidden), dtype)
    dgn_h = empty((steps, batch, hidden), dtype)
    dgh = empty((batch, 3 * hidden if reset_after else h2), dtype)
    dhr = empty((batch, hidden), dtype)
    drh = empty((batch, hidden), dtype)
    m, use_mask = _mask_arg(mask, dtype)
    for t in _order(steps, reverse, backward=True):
        tin = _slots(t, reverse)[0]
        _launch(_gru_step_bwd, batch, hidden, dy, dh, hs, gates, aux, dg, dgn_h, dgh, d_lengths, t, tin,
                reset_after)
        if reset_after:
            matmul(dgh, w_hh, out=dhr)
        else:
            matmul(dgn_h[t], w_hh[h2:], out=drh)
            _launch(_gru_reset_bwd, batch, hidden, drh, hs, gates, m, dg, dgh, dh, d_lengths, t, tin, use_mask)
            matmul(dgh, w_hh[:h2], out=dhr)
        _launch(_add_recurrent_grad, batch, hidden, dh, dhr, m, d_lengths, t, use_mask)
    hrec = _recurrent_inputs(hs, reverse, mask)
    dx, dw_ih, dw_hh, db_ih = _weight_grads(dg, x, w_ih, hrec, need_dx)
    # the n block meets another recurrent operand: h (reset_after) or r * h, and its own bias
    dgn_h2 = dgn_h.reshape(steps * batch, hidden)
    n_operand = hrec if reset_after else aux.reshape(steps * batch, hidden)
    matmul(dgn_h2, n_operand, trans_a=True, out=dw_hh[h2:])
    db_hh = copy(db_ih)
    copy_into(db_hh[h2:], sum_rows(dgn_h2))
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh


def ptx_signatures():
    """(kernel, signature) for every kernel above, float32 and float64, as launched."""
    sigs = []
    i64 = int64[::1]
    for f in (float32, float64):
        v, m, a3 = f[::1], f[:, ::1], f[:, :, ::1]
        sigs += [
            (_rnn_step, (a3, m, v, a3, a3, i64, int64, int64, int64, boolean)),
            (_lstm_step, (a3, m, v, a3, a3, a3, a3, i64, int64, int64, int64)),
            (_gru_reset_gate, (a3, m, v, m, a3, m, int64)),
            (_gru_step, (a3, m, m, v, v, v, a3, a3, a3, m, a3, i64, int64, int64, int64, boolean)),
            (_mask_rows, (m, m, m)),
            (_rnn_step_bwd, (a3, m, a3, a3, i64, int64, int64, boolean)),
            (_lstm_step_bwd, (a3, m, m, a3, a3, a3, i64, int64, int64, int64)),
            (_gru_step_bwd, (a3, m, a3, a3, a3, a3, a3, m, i64, int64, int64, boolean)),
            (_gru_reset_bwd, (m, a3, a3, m, a3, m, m, i64, int64, int64, boolean)),
            (_add_recurrent_grad, (m, m, m, i64, int64, boolean)),
            (_mask_states, (a3, m, a3)),
            (_dropout_mask, (m, float64, int64)),
        ]
    return sigs
