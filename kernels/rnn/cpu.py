"""CPU recurrent layers: GEMMs around one compiled time loop per cell.

Forward: the input projection x @ w_ih.T of all T steps is one GEMM
(``nbdl.kernels.linalg.cpu.matmul``; one BLAS call on the calling thread when it is
small), written straight into the gates array. Then
one ``@njit`` call runs the whole time loop, so no step pays Python's call
overhead (at B=1 a step takes a few microseconds). Batch rows never interact in a
recurrence, so the batch is cut into contiguous row blocks, one per thread, and
each thread runs all T steps of its block with no barrier between steps. A step
of a block is

- the recurrent product h @ w_hh.T of its rows, by ``_gemm_nt``: 4 x 4 register
  blocks, the reduction axis contiguous in both operands. (A BLAS call would
  repack the whole weight matrix at every step, which costs more than the product
  itself for a few rows.)
- the fused gate math of those rows: pre-activations summed in place in the gate
  row, then one sigmoid/tanh sweep per gate block over contiguous memory, so the
  polynomial sigmoid/tanh of ``nbdl.kernels._fastmath`` run as SIMD.

Backward: the same row-blocked loop walks the steps in reverse and stores every
step's pre-activation gradient (T, B, G); the recurrent product uses w_hh
transposed once per call. Then dx is one GEMM, and dw_ih, dw_hh and the bias
gradients are sums over all T*B rows, cut into a fixed number of row chunks (BLAS
on transposed views, no copies) added in order: deterministic for any thread count.

Work under about 8 million multiply-adds (~0.1 ms) runs on the calling thread
without entering a parallel region. Only numba's thread pool ever runs (the BLAS behind np.dot is
held at one thread), so no second pool spins against it.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from nbdl.kernels._fastmath import FASTMATH, FASTMATH_REDUCE, sigmoid, tanh
from nbdl.kernels.linalg.cpu import _pin_blas_to_one_thread, matmul
from nbdl.kernels.rnn import (check_backward, check_forward, check_lengths, check_mask_args,
                              check_nonlinearity, splitmix_uniform)

_JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
_uniform = njit(inline="always")(splitmix_uniform)


# --- dense pieces ---------------------------------------------------------------------

@njit(inline="always")
def _dot(a, b):
    acc = a.dtype.type(0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


@njit(cache=True, fastmath=FASTMATH_REDUCE, error_model="numpy")
def _gemm_nt(a, b, out):
    """out (m, n) = a (m, k) @ b (n, k).T, in 4 x 4 register blocks.

    Each block keeps 16 accumulators; the k loop vectorizes (its sums may be
    reassociated: FASTMATH_REDUCE) and loads 8 values per 16 multiply-adds.
    Rows of b (the weights) are the outer loop, so b streams through the cache
    once per call while the few rows of a stay in L1 (10-50% faster than rows
    of a outside). Leftover rows and columns fall back to single dot products.
    """
    m = a.shape[0]
    n = b.shape[0]
    k = a.shape[1]
    if m < 4:                   # matrix-vector products: one dot per output
        for i in range(m):
            ai = a[i]
            for j in range(n):
                out[i, j] = _dot(ai, b[j])
        return
    z = a.dtype.type(0)
    m4 = m - m % 4
    n4 = n - n % 4
    for j in range(0, n4, 4):
        b0 = b[j]
        b1 = b[j + 1]
        b2 = b[j + 2]
        b3 = b[j + 3]
        for i in range(0, m4, 4):
            a0 = a[i]
            a1 = a[i + 1]
            a2 = a[i + 2]
            a3 = a[i + 3]
            c00 = c01 = c02 = c03 = z
            c10 = c11 = c12 = c13 = z
            c20 = c21 = c22 = c23 = z
            c30 = c31 = c32 = c33 = z
            for kk in range(k):
                x0 = a0[kk]
                x1 = a1[kk]
                x2 = a2[kk]
                x3 = a3[kk]
                y0 = b0[kk]
                y1 = b1[kk]
                y2 = b2[kk]
                y3 = b3[kk]
                c00 += x0 * y0
                c01 += x0 * y1
                c02 += x0 * y2
                c03 += x0 * y3
                c10 += x1 * y0
                c11 += x1 * y1
                c12 += x1 * y2
                c13 += x1 * y3
                c20 += x2 * y0
                c21 += x2 * y1
                c22 += x2 * y2
                c23 += x2 * y3
                c30 += x3 * y0
                c31 += x3 * y1
                c32 += x3 * y2
                c33 += x3 * y3
            out[i, j] = c00
            out[i, j + 1] = c01
            out[i, j + 2] = c02
            out[i, j + 3] = c03
            out[i + 1, j] = c10
            out[i + 1, j + 1] = c11
            out[i + 1, j + 2] = c12
            out[i + 1, j + 3] = c13
            out[i + 2, j] = c20
            out[i + 2, j + 1] = c21
            out[i + 2, j + 2] = c22
            out[i + 2, j + 3] = c23
            out[i + 3, j] = c30
            out[i + 3, j + 1] = c31
            out[i + 3, j + 2] = c32
            out[i + 3, j + 3] = c33
        for i in range(m4, m):
            for jj in range(j, j + 4):
                out[i, jj] = _dot(a[i], b[jj])
    for j in range(n4, n):
        bj = b[j]
        for i in range(m):
            out[i, j] = _dot(a[i], bj)


@njit(**_JIT)
def _sigmoid_(a):
    """a = sigmoid(a) in place, a 1-D contiguous view: one SIMD sweep.

    (A separate function on a view vectorizes better than a loop over an index
    range of the whole gate row: measured 3x.)
    """
    for j in range(a.shape[0]):
        a[j] = sigmoid(a[j])


@njit(**_JIT)
def _tanh_(a):
    for j in range(a.shape[0]):
        a[j] = tanh(a[j])


@njit(**_JIT)
def _copy(dst, src):
    """dst[:] = src for 1-D arrays (an explicit loop: numba's slice assignment compiles slowly)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(**_JIT)
def _fill(dst, value):
    for j in range(dst.shape[0]):
        dst[j] = value


@njit(inline="always")
def _masked(h, mask, r0, hrec):
    """h * mask[r0:] for the recurrent product (variational dropout), or h itself."""
    if mask.shape[0] == 0:
        return h
    for i in range(h.shape[0]):
        for k in range(h.shape[1]):
            hrec[i, k] = h[i, k] * mask[r0 + i, k]
    return hrec


# --- weight gradients: sums over all T*B rows -------------------------------------------

_PARTS = 4                # row chunks of a weight-gradient sum: fixed, so the result does not
                          # depend on the thread count
_SERIAL_WORK = 1 << 23    # multiply-adds (~0.1 ms on one core) below which one thread does it
                          # all: waking the thread pool costs microseconds on an idle machine and
                          # milliseconds on a busy one, where a parallel region waits for a core


@njit(**_JIT)
def _gemm_rows(a, b, out, trans_b):
    """out = a @ b.T (trans_b) or a @ b, one BLAS call on this thread."""
    if trans_b:
        np.dot(a, b.T, out)
    else:
        np.dot(a, b, out)


def _gemm(a, b, trans_b=False):
    """a @ op(b): ``matmul`` (row blocks on every thread), or one call on this thread for
    small products."""
    n = b.shape[0] if trans_b else b.shape[1]
    if a.shape[0] * a.shape[1] * n >= _SERIAL_WORK:
        return matmul(a, b, trans_b=trans_b)
    out = np.empty((a.shape[0], n), dtype=a.dtype)
    _pin_blas_to_one_thread()
    _gemm_rows(a, b, out, trans_b)
    return out


@njit(**_JIT)
def _tn_rows(g, a, out, r0, r1):
    """out = g[r0:r1].T @ a[r0:r1] (BLAS on the transposed view: no transpose copy)."""
    np.dot(g[r0:r1].T, a[r0:r1], out)


@njit(parallel=True, **_JIT)
def _tn_parts(g, a, partial, bounds):
    for p in prange(partial.shape[0]):
        _tn_rows(g, a, partial[p], bounds[p], bounds[p + 1])


@njit(**_JIT)
def _col_sum_rows(g, out, r0, r1):
    """out = g[r0:r1].sum(0), rows in order."""
    _fill(out, 0)
    for i in range(r0, r1):
        row = g[i]
        for j in range(out.shape[0]):
            out[j] += row[j]


@njit(parallel=True, **_JIT)
def _col_sum_parts(g, partial, bounds):
    for p in prange(partial.shape[0]):
        _col_sum_rows(g, partial[p], bounds[p], bounds[p + 1])


def _chunks(n):
    parts = max(1, min(_PARTS, n))
    return np.array([p * n // parts for p in range(parts + 1)], dtype=np.int64)


def _grad_tn(g, a, out=None):
    """g.T @ a for g (n, m), a (n, k): a weight gradient, summed over all n = T*B rows.

    Large sums are cut into _PARTS row chunks, one BLAS call each (in parallel),
    and the partial products added in order.
    """
    n, m = g.shape
    out = np.empty((m, a.shape[1]), dtype=g.dtype) if out is None else out
    _pin_blas_to_one_thread()
    if n * m * a.shape[1] < _SERIAL_WORK:
        _tn_rows(g, a, out, 0, n)
        return out
    bounds = _chunks(n)
    partial = np.empty((bounds.shape[0] - 1,) + out.shape, dtype=g.dtype)
    _tn_parts(g, a, partial, bounds)
    return np.add.reduce(partial, axis=0, out=out)


def _col_sums(g):
    """Column sums of g (n, m) -> (m,): a bias gradient, chunked like _grad_tn."""
    n, m = g.shape
    if n * m < _SERIAL_WORK:
        out = np.empty(m, dtype=g.dtype)
        _col_sum_rows(g, out, 0, n)
        return out
    bounds = _chunks(n)
    partial = np.empty((bounds.shape[0] - 1, m), dtype=g.dtype)
    _col_sum_parts(g, partial, bounds)
    return np.add.reduce(partial, axis=0)


# --- the time loop's bookkeeping --------------------------------------------------

def _row_bounds(batch, work):
    """Row blocks of the time loop, one per thread: [b_0 = 0, b_1, ..., B].

    work: the loop's multiply-adds (one block below _SERIAL_WORK). Blocks of 4 or
    more rows are rounded to multiples of 4 (the GEMM's register block).
    """
    nblocks = 1 if work < _SERIAL_WORK else max(1, min(get_num_threads(), batch))
    per = -(-batch // nblocks)
    if per >= 4:
        per = -(-per // 4) * 4
    return np.array(list(range(0, batch, per)) + [batch], dtype=np.int64)


def _time_loop(rows_fn, parallel_fn, bounds, *args):
    """Run a time loop: one block directly (no parallel region to wake), else one per thread."""
    if bounds.shape[0] == 2:
        rows_fn(*args, 0, bounds[1])
    else:
        parallel_fn(*args, bounds)


@njit(inline="always")
def _forward_slots(s, steps, reverse):
    """Step s of the forward loop -> (t, slot of the state entering t, slot of the state after t)."""
    if reverse:
        t = steps - 1 - s
        return t, t + 1, t
    return s, s, s + 1


@njit(inline="always")
def _backward_slots(s, steps, reverse):
    """The backward loop visits the forward's steps in the opposite order."""
    return _forward_slots(steps - 1 - s, steps, reverse)


@njit(inline="always")
def _carry(hs, tin, tout, b, y, t):
    """An inactive step (t >= length): the state passes through, the output is zero."""
    _copy(hs[tout, b], hs[tin, b])
    _fill(y[t, b], 0)


@njit(inline="always")
def _add_recurrent_grad(dh, dhr, mask, r0, lengths, t):
    """dh[row] += dhr[row] * mask for rows active at step t; an inactive row's state
    passed through unchanged, so its gradient does too."""
    for i in range(dhr.shape[0]):
        b = r0 + i
        if t < lengths[b]:
            if mask.shape[0] == 0:
                for k in range(dhr.shape[1]):
                    dh[b, k] += dhr[i, k]
            else:
                for k in range(dhr.shape[1]):
                    dh[b, k] += dhr[i, k] * mask[b, k]


# --- vanilla RNN ----------------------------------------------------------------------
#
# Each time loop is a serial function over one block of batch rows [r0, r1) plus a
# small parallel wrapper running one block per thread: numba compiles a large
# prange body several times slower than the same code as a plain function.

@njit(**_JIT)
def _rnn_fwd_rows(xw, w_hh, bias, hs, y, lengths, relu, reverse, r0, r1):
    """xw (T, B, H) = x W_ih^T; may be y itself (a row is read before it is replaced)."""
    steps, _, hidden = xw.shape
    zero = xw.dtype.type(0)
    gh = np.empty((r1 - r0, hidden), xw.dtype)
    for s in range(steps):
        t, tin, tout = _forward_slots(s, steps, reverse)
        _gemm_nt(hs[tin, r0:r1], w_hh, gh)
        for i in range(r1 - r0):
            b = r0 + i
            if t < lengths[b]:
                h = hs[tout, b]
                xr = xw[t, b]
                for j in range(hidden):
                    h[j] = xr[j] + gh[i, j] + bias[j]
                if relu:
                    for j in range(hidden):
                        h[j] = max(h[j], zero)
                else:
                    _tanh_(h)
                _copy(y[t, b], h)
            else:
                _carry(hs, tin, tout, b, y, t)


@njit(parallel=True, **_JIT)
def _rnn_fwd(xw, w_hh, bias, hs, y, lengths, relu, reverse, bounds):
    """_rnn_fwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _rnn_fwd_rows(xw, w_hh, bias, hs, y, lengths, relu, reverse, bounds[blk], bounds[blk + 1])


@njit(**_JIT)
def _rnn_bwd_rows(dy, dh, hs, w_hh_t, dg, lengths, relu, reverse, r0, r1):
    """dh (B, H): in dL/dh_n, out dL/dh0. dg (T, B, H): dL/d(pre-activation)."""
    steps, _, hidden = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    dhr = np.empty((r1 - r0, hidden), dy.dtype)
    no_mask = np.empty((0, hidden), dy.dtype)
    for s in range(steps):
        t, tin, tout = _backward_slots(s, steps, reverse)
        for b in range(r0, r1):
            g = dg[t, b]
            if t < lengths[b]:
                h = hs[tout, b]
                d = dh[b]
                dyr = dy[t, b]
                for j in range(hidden):
                    dj = d[j] + dyr[j]
                    g[j] = (dj if h[j] > zero else zero) if relu else dj * (one - h[j] * h[j])
                    d[j] = zero
            else:
                _fill(g, zero)
        _gemm_nt(dg[t, r0:r1], w_hh_t, dhr)
        _add_recurrent_grad(dh, dhr, no_mask, r0, lengths, t)


@njit(parallel=True, **_JIT)
def _rnn_bwd(dy, dh, hs, w_hh_t, dg, lengths, relu, reverse, bounds):
    """_rnn_bwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _rnn_bwd_rows(dy, dh, hs, w_hh_t, dg, lengths, relu, reverse, bounds[blk], bounds[blk + 1])


# --- LSTM -------------------------------------------------------------------------------

@njit(**_JIT)
def _lstm_fwd_rows(xw, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, r0, r1):
    """xw (T, B, 4H) = x W_ih^T; may be gates itself (each element is read before it is replaced)."""
    steps, _, g4 = xw.shape
    hidden = g4 // 4
    gh = np.empty((r1 - r0, g4), xw.dtype)
    hrec = np.empty((r1 - r0, hidden), xw.dtype)
    for s in range(steps):
        t, tin, tout = _forward_slots(s, steps, reverse)
        _gemm_nt(_masked(hs[tin, r0:r1], mask, r0, hrec), w_hh, gh)
        for i in range(r1 - r0):
            b = r0 + i
            if t < lengths[b]:
                g = gates[t, b]
                xr = xw[t, b]
                ghr = gh[i]
                for j in range(g4):
                    g[j] = xr[j] + ghr[j] + bias[j]
                _sigmoid_(g[0:2 * hidden])         # i, f
                _tanh_(g[2 * hidden:3 * hidden])   # g
                _sigmoid_(g[3 * hidden:])          # o
                c_in = cs[tin, b]
                c = cs[tout, b]
                h = hs[tout, b]
                for j in range(hidden):
                    c[j] = g[hidden + j] * c_in[j] + g[j] * g[2 * hidden + j]
                    h[j] = c[j]
                _tanh_(h)
                for j in range(hidden):
                    h[j] *= g[3 * hidden + j]
                _copy(y[t, b], h)
            else:
                _carry(hs, tin, tout, b, y, t)
                _copy(cs[tout, b], cs[tin, b])


@njit(parallel=True, **_JIT)
def _lstm_fwd(xw, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, bounds):
    """_lstm_fwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _lstm_fwd_rows(xw, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, bounds[blk], bounds[blk + 1])


@njit(**_JIT)
def _lstm_bwd_rows(dy, dh, dc, cs, gates, w_hh_t, dg, lengths, mask, reverse, r0, r1):
    """dh, dc (B, H): in dL/dh_n, dL/dc_n; out dL/dh0, dL/dc0. dg (T, B, 4H)."""
    steps, _, hidden = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    dhr = np.empty((r1 - r0, hidden), dy.dtype)
    tc = np.empty(hidden, dy.dtype)
    for s in range(steps):
        t, tin, tout = _backward_slots(s, steps, reverse)
        for b in range(r0, r1):
            d = dg[t, b]
            if t < lengths[b]:
                g = gates[t, b]
                c_in = cs[tin, b]
                _copy(tc, cs[tout, b])
                _tanh_(tc)
                dhb = dh[b]
                dcb = dc[b]
                dyr = dy[t, b]
                for j in range(hidden):
                    ig = g[j]
                    fg = g[hidden + j]
                    gg = g[2 * hidden + j]
                    og = g[3 * hidden + j]
                    dhj = dhb[j] + dyr[j]
                    dct = dcb[j] + dhj * og * (one - tc[j] * tc[j])
                    d[j] = dct * gg * ig * (one - ig)
                    d[hidden + j] = dct * c_in[j] * fg * (one - fg)
                    d[2 * hidden + j] = dct * ig * (one - gg * gg)
                    d[3 * hidden + j] = dhj * tc[j] * og * (one - og)
                    dcb[j] = dct * fg
                    dhb[j] = zero
            else:
                _fill(d, zero)
        _gemm_nt(dg[t, r0:r1], w_hh_t, dhr)
        _add_recurrent_grad(dh, dhr, mask, r0, lengths, t)


@njit(parallel=True, **_JIT)
def _lstm_bwd(dy, dh, dc, cs, gates, w_hh_t, dg, lengths, mask, reverse, bounds):
    """_lstm_bwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _lstm_bwd_rows(dy, dh, dc, cs, gates, w_hh_t, dg, lengths, mask, reverse, bounds[blk], bounds[blk + 1])


# --- GRU ---------------------------------------------------------------------------------

@njit(**_JIT)
def _gru_reset_first(xw, w_hh, bias, hs, gates, hrec, gh, rh, gh_n, mask, t, tin, r0):
    """reset_after=False: r is needed before the n block's product W_hn (r * h).

    gh (rows, 2H) = hm W_h{r,z}^T; r (into gates) and rh = r * hm; gh_n = rh W_hn^T.
    """
    nb, hidden = rh.shape
    h2 = 2 * hidden
    hm = _masked(hs[tin, r0:r0 + nb], mask, r0, hrec)
    _gemm_nt(hm, w_hh[:h2], gh)
    for i in range(nb):
        g = gates[t, r0 + i]
        xr = xw[t, r0 + i]
        for j in range(hidden):
            g[j] = xr[j] + gh[i, j] + bias[j]
        _sigmoid_(g[0:hidden])
        for j in range(hidden):
            rh[i, j] = g[j] * hm[i, j]
    _gemm_nt(rh, w_hh[h2:], gh_n)


@njit(**_JIT)
def _gru_fwd_rows(xw, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, lengths, mask, reset_after, reverse, r0, r1):
    """gates (T, B, 3H): r, z, n; aux (T, B, H): W_hn h + b_hn (reset_after) or r * h.
    xw (T, B, 3H) = x W_ih^T may be gates itself (each element is read before it is replaced).
    bias = b_ih + b_hh (the r and z blocks use the sum; the n block keeps them apart).
    """
    steps, _, g3 = xw.shape
    hidden = g3 // 3
    h2 = 2 * hidden
    nb = r1 - r0
    hrec = np.empty((nb, hidden), xw.dtype)
    gh = np.empty((nb, g3 if reset_after else h2), xw.dtype)
    gh_n = np.empty((nb, hidden), xw.dtype)
    rh = np.empty((nb, hidden), xw.dtype)
    lo = 0 if reset_after else hidden          # the first gate block still to compute
    for s in range(steps):
        t, tin, tout = _forward_slots(s, steps, reverse)
        if reset_after:
            _gemm_nt(_masked(hs[tin, r0:r1], mask, r0, hrec), w_hh, gh)
        else:
            _gru_reset_first(xw, w_hh, bias, hs, gates, hrec, gh, rh, gh_n, mask, t, tin, r0)
        for i in range(nb):
            b = r0 + i
            a = aux[t, b]
            if t < lengths[b]:
                g = gates[t, b]
                xr = xw[t, b]
                for j in range(lo, h2):
                    g[j] = xr[j] + gh[i, j] + bias[j]
                _sigmoid_(g[lo:h2])
                for j in range(hidden):
                    if reset_after:
                        a[j] = gh[i, h2 + j] + b_hh[h2 + j]
                        g[h2 + j] = xr[h2 + j] + b_ih[h2 + j] + g[j] * a[j]
                    else:
                        a[j] = rh[i, j]
                        g[h2 + j] = xr[h2 + j] + b_ih[h2 + j] + gh_n[i, j] + b_hh[h2 + j]
                _tanh_(g[h2:])
                h = hs[tout, b]
                h_in = hs[tin, b]
                for j in range(hidden):
                    n = g[h2 + j]
                    h[j] = n + g[hidden + j] * (h_in[j] - n)     # (1 - z) n + z h
                _copy(y[t, b], h)
            else:
                _carry(hs, tin, tout, b, y, t)
                _fill(a, 0)        # a GEMM operand of the backward: no stale values


@njit(parallel=True, **_JIT)
def _gru_fwd(xw, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, lengths, mask, reset_after, reverse, bounds):
    """_gru_fwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _gru_fwd_rows(xw, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, lengths, mask, reset_after, reverse,
                      bounds[blk], bounds[blk + 1])


@njit(**_JIT)
def _gru_reset_first_bwd(dh, hs, gates, w_n_t, dg, dgh, dn, dhr, lengths, mask, t, tin, r0):
    """reset_after=False: d(r * hm) = dn @ W_hn gives r's gradient (into dg and dgh)
    and a path to h (added into dh)."""
    nb, hidden = dn.shape
    zero = dh.dtype.type(0)
    one = dh.dtype.type(1)
    _gemm_nt(dn, w_n_t, dhr)                     # dhr = d(r * hm) for now
    for i in range(nb):
        b = r0 + i
        if t < lengths[b]:
            g = gates[t, b]
            d = dg[t, b]
            h_in = hs[tin, b]
            for j in range(hidden):
                m = one if mask.shape[0] == 0 else mask[b, j]
                r = g[j]
                d[j] = dhr[i, j] * h_in[j] * m * r * (one - r)
                dgh[i, j] = d[j]
                dh[b, j] += dhr[i, j] * r * m
        else:
            _fill(dgh[i, :hidden], zero)


@njit(**_JIT)
def _gru_bwd_rows(dy, dh, hs, gates, aux, w_t, w_n_t, dg, dgn_h, lengths, mask, reset_after, reverse, r0, r1):
    """dg (T, B, 3H): dL/d(x-side pre-activations) of r, z, n.
    dgn_h (T, B, H): dL/d(the n block's recurrent product): dn * r (reset_after) or dn.
    w_t: w_hh.T (H, 3H) (reset_after) or w_hh[:2H].T (H, 2H); w_n_t: w_hh[2H:].T (H, H)."""
    steps, _, hidden = dy.shape
    h2 = 2 * hidden
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    nb = r1 - r0
    dgh = np.empty((nb, w_t.shape[1]), dy.dtype)    # the step's gradient w.r.t. the W_hh products
    dn = np.empty((nb, hidden), dy.dtype)
    dhr = np.empty((nb, hidden), dy.dtype)
    for s in range(steps):
        t, tin, tout = _backward_slots(s, steps, reverse)
        for i in range(nb):
            b = r0 + i
            d = dg[t, b]
            if t < lengths[b]:
                g = gates[t, b]
                a = aux[t, b]
                h_in = hs[tin, b]
                dhb = dh[b]
                dyr = dy[t, b]
                for j in range(hidden):
                    r = g[j]
                    z = g[hidden + j]
                    n = g[h2 + j]
                    dhj = dhb[j] + dyr[j]
                    dnj = dhj * (one - z) * (one - n * n)
                    d[j] = dnj * a[j] * r * (one - r)        # reset_after; redone below otherwise
                    d[hidden + j] = dhj * (h_in[j] - n) * z * (one - z)
                    d[h2 + j] = dnj
                    dn[i, j] = dnj * r if reset_after else dnj
                    dhb[j] = dhj * z                           # the direct path h' = ... + z h
            else:
                _fill(d, zero)
                _fill(dn[i], zero)
            _copy(dgn_h[t, b], dn[i])
            for j in range(hidden, h2):
                dgh[i, j] = d[j]
            if reset_after:
                for j in range(hidden):
                    dgh[i, j] = d[j]
                    dgh[i, h2 + j] = dn[i, j]
        if not reset_after:
            _gru_reset_first_bwd(dh, hs, gates, w_n_t, dg, dgh, dn, dhr, lengths, mask, t, tin, r0)
        _gemm_nt(dgh, w_t, dhr)
        _add_recurrent_grad(dh, dhr, mask, r0, lengths, t)


@njit(parallel=True, **_JIT)
def _gru_bwd(dy, dh, hs, gates, aux, w_t, w_n_t, dg, dgn_h, lengths, mask, reset_after, reverse, bounds):
    """_gru_bwd_rows on the row blocks [bounds[k], bounds[k+1]), one per thread."""
    for blk in prange(bounds.shape[0] - 1):
        _gru_bwd_rows(dy, dh, hs, gates, aux, w_t, w_n_t, dg, dgn_h, lengths, mask, reset_after, reverse,
                      bounds[blk], bounds[blk + 1])


# --- recurrent dropout mask -----------------------------------------------------------

@njit(**_JIT)
def _dropout_mask(mask, p, seed):
    scale = 1.0 / (1.0 - p)
    hidden = mask.shape[1]
    for b in range(mask.shape[0]):
        for j in range(hidden):
            keep = _uniform(seed, b * hidden + j) >= p
            mask[b, j] = scale if keep else 0.0


def recurrent_dropout_mask(batch, hidden, p, seed, dtype):
    """Variational dropout mask (batch, hidden): 0 with probability p, else 1 / (1 - p).

    Element (b, j) is kept when splitmix_uniform(seed, b * hidden + j) >= p: the same
    bits on every backend.
    """
    p = check_mask_args("recurrent_dropout_mask", batch, hidden, p, seed)
    mask = np.empty((batch, hidden), dtype=np.dtype(dtype))
    _dropout_mask(mask, p, int(seed))
    return mask


# --- host functions -----------------------------------------------------------------

def _bias_sum(b_ih, b_hh, rows, dtype):
    """b_ih + b_hh, and each of them (zeros for a missing bias)."""
    b_ih = np.zeros(rows, dtype=dtype) if b_ih is None else b_ih
    b_hh = np.zeros(rows, dtype=dtype) if b_hh is None else b_hh
    return b_ih + b_hh, b_ih, b_hh


def _mask_arg(mask, hidden, dtype):
    """The kernels take an empty (0, H) array for 'no mask'."""
    return np.empty((0, hidden), dtype=dtype) if mask is None else mask


def _input_projection(x, w_ih):
    """xw (T, B, G*H) = x @ w_ih.T for all steps in one GEMM."""
    steps, batch, inputs = x.shape
    return _gemm(x.reshape(steps * batch, inputs), w_ih, trans_b=True).reshape(steps, batch, -1)


def _states(steps, batch, hidden, h0, reverse, dtype):
    hs = np.empty((steps + 1, batch, hidden), dtype=dtype)
    hs[steps if reverse else 0] = h0
    return hs


def _final(hs, reverse):
    """The state after the last step: slot 0 in reverse, slot T forward."""
    return hs[0 if reverse else hs.shape[0] - 1].copy()


def _recurrent_inputs(hs, reverse, mask):
    """(T*B, H): the state entering each step (times the mask): the operand of dW_hh."""
    steps = hs.shape[0] - 1
    h = hs[1:] if reverse else hs[:steps]
    if mask is not None:
        h = h * mask
    return h.reshape(steps * h.shape[1], h.shape[2])


def _weight_grads(dg, x, w_ih, hrec, need_dx):
    """dx, dW_ih, dW_hh, db from the stacked pre-activation gradients dg (T, B, G)."""
    steps, batch, g = dg.shape
    dg2 = dg.reshape(steps * batch, g)
    dx = _gemm(dg2, w_ih).reshape(x.shape) if need_dx else None
    dw_ih = _grad_tn(dg2, x.reshape(steps * batch, x.shape[2]))
    dw_hh = _grad_tn(dg2, hrec)
    return dx, dw_ih, dw_hh, _col_sums(dg2)


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", reverse=False, lengths=None):
    """Elman RNN over a sequence: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh).

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih, b_hh (H,) or None.
    Returns y (T, B, H), h_n (B, H) and hs (T+1, B, H) for the backward.
    """
    op = "rnn_forward"
    relu = check_nonlinearity(op, nonlinearity) == "relu"
    steps, batch, _, hidden, dtype = check_forward(op, "rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh)
    lengths = check_lengths(op, lengths, batch, steps)
    y = _input_projection(x, w_ih)        # each step replaces its x W_ih^T row by h
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    bias = _bias_sum(b_ih, b_hh, hidden, dtype)[0]
    _time_loop(_rnn_fwd_rows, _rnn_fwd, _row_bounds(batch, y.size * hidden),
               y, w_hh, bias, hs, y, lengths, relu, bool(reverse))
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
    lengths = check_lengths(op, lengths, batch, steps)
    dh = dh_n.copy()
    dg = np.empty((steps, batch, hidden), dtype=dtype)
    _time_loop(_rnn_bwd_rows, _rnn_bwd, _row_bounds(batch, dg.size * hidden),
               dy, dh, hs, np.ascontiguousarray(w_hh.T), dg, lengths, relu, bool(reverse))
    dx, dw_ih, dw_hh, db = _weight_grads(dg, x, w_ih, _recurrent_inputs(hs, reverse, None), need_dx)
    return dx, dh, dw_ih, dw_hh, db, db.copy()


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False, lengths=None, mask=None):
    """LSTM over a sequence (gates i, f, g, o; see the package docstring).

    x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,) or None,
    mask (B, H) or None. Returns y (T, B, H), h_n, c_n (B, H) and, for the backward,
    hs, cs (T+1, B, H) and gates (T, B, 4H).
    """
    op = "lstm_forward"
    steps, batch, _, hidden, dtype = check_forward(op, "lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask)
    lengths = check_lengths(op, lengths, batch, steps)
    gates = _input_projection(x, w_ih)    # each step turns its x W_ih^T row into gates
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    cs = _states(steps, batch, hidden, c0, reverse, dtype)
    y = np.empty((steps, batch, hidden), dtype=dtype)
    bias = _bias_sum(b_ih, b_hh, 4 * hidden, dtype)[0]
    _time_loop(_lstm_fwd_rows, _lstm_fwd, _row_bounds(batch, gates.size * hidden),
               gates, w_hh, bias, hs, cs, gates, y, lengths, _mask_arg(mask, hidden, dtype), bool(reverse))
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
    lengths = check_lengths(op, lengths, batch, steps)
    dh, dc = dh_n.copy(), dc_n.copy()
    dg = np.empty((steps, batch, 4 * hidden), dtype=dtype)
    _time_loop(_lstm_bwd_rows, _lstm_bwd, _row_bounds(batch, dg.size * hidden),
               dy, dh, dc, cs, gates, np.ascontiguousarray(w_hh.T), dg, lengths, _mask_arg(mask, hidden, dtype),
               bool(reverse))
    dx, dw_ih, dw_hh, db = _weight_grads(dg, x, w_ih, _recurrent_inputs(hs, reverse, mask), need_dx)
    return dx, dh, dc, dw_ih, dw_hh, db, db.copy()


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=True, reverse=False, lengths=None, mask=None):
    """GRU over a sequence (gates r, z, n; both variants, see the package docstring).

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,) or None,
    mask (B, H) or None. Returns y (T, B, H), h_n (B, H) and, for the backward,
    hs (T+1, B, H), gates (T, B, 3H) and aux (T, B, H).
    """
    op = "gru_forward"
    steps, batch, _, hidden, dtype = check_forward(op, "gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, mask)
    lengths = check_lengths(op, lengths, batch, steps)
    gates = _input_projection(x, w_ih)    # each step turns its x W_ih^T row into gates
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    aux = np.empty((steps, batch, hidden), dtype=dtype)
    y = np.empty((steps, batch, hidden), dtype=dtype)
    bias, b_ih, b_hh = _bias_sum(b_ih, b_hh, 3 * hidden, dtype)
    _time_loop(_gru_fwd_rows, _gru_fwd, _row_bounds(batch, gates.size * hidden),
               gates, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, lengths, _mask_arg(mask, hidden, dtype),
               bool(reset_after), bool(reverse))
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
    lengths = check_lengths(op, lengths, batch, steps)
    h2 = 2 * hidden
    dh = dh_n.copy()
    dg = np.empty((steps, batch, 3 * hidden), dtype=dtype)
    dgn_h = np.empty((steps, batch, hidden), dtype=dtype)
    w_t = np.ascontiguousarray((w_hh if reset_after else w_hh[:h2]).T)
    _time_loop(_gru_bwd_rows, _gru_bwd, _row_bounds(batch, dg.size * hidden),
               dy, dh, hs, gates, aux, w_t, np.ascontiguousarray(w_hh[h2:].T), dg, dgn_h, lengths,
               _mask_arg(mask, hidden, dtype), bool(reset_after), bool(reverse))
    hrec = _recurrent_inputs(hs, reverse, mask)
    dx, dw_ih, dw_hh, db_ih = _weight_grads(dg, x, w_ih, hrec, need_dx)
    # the n block meets another recurrent operand: h (reset_after) or r * h, and its own bias
    dgn_h2 = dgn_h.reshape(steps * batch, hidden)
    n_operand = hrec if reset_after else aux.reshape(steps * batch, hidden)
    _grad_tn(dgn_h2, n_operand, out=dw_hh[h2:])
    db_hh = db_ih.copy()
    db_hh[h2:] = _col_sums(dgn_h2)
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh
