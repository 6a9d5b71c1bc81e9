"""CUDA recurrent layers: the whole time loop in one launch.

Forward: one GEMM for the input projection of all steps, then one cooperative
kernel runs every step. Its blocks split the hidden units between them (each
block owns all gate rows of its units, for every batch row), and a step is

1. the recurrent product for the block's gate rows: a group of up to 32 threads
   takes a gate row of W_hh and up to RB batch rows of h_{t-1} (times the dropout
   mask); each thread sums every split-th term in order, so one weight read serves
   RB rows, and the group's partial sums are added in a fixed tree (_split_dots);
2. ``__syncthreads()``; the fused gate math for the block's units (a cell only
   needs its own unit's gate rows, so no other block is waited for);
3. a grid-wide barrier: the next step's products read every unit's new state.

Backward: per step the gate gradients of the block's units, a grid-wide barrier
(the recurrent product dL/dh_{t-1} = dL/dgates W_hh reads every gate row), then
that product for the block's units, from rows of W_hh^T; dx, dw_ih, dw_hh are one
GEMM each over all T*B rows afterwards.

Why one launch: a launch from Python costs tens of microseconds, more than a
small step's arithmetic, so a loop of per-step launches is bound by them.
Every sum is taken in a fixed order, so results are the same bits on every run on
one device (how a sum is split depends on the block size, so on the device's
multiprocessor count).
The grid barrier needs a cooperative launch, which guarantees that all blocks are
resident at once; the simulator supports it for one block only, so it runs one
block there.
"""
import math

import numpy as np
from numba import boolean, config, cuda, float32, float64, int64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels.elementwise.cuda import add, copy, copy_into, zeros
from nbdl.kernels.linalg.cuda import matmul, sum_rows
from nbdl.kernels.rnn import (check_backward, check_forward, check_lengths, check_mask_args,
                              check_nonlinearity, splitmix_uniform)

MAX_THREADS = 1024      # per block of a sequence kernel
RB = 4                  # batch rows a dot-product group takes at once (_split_dots is written for 4)
# at most 64 registers a thread, so that a block of MAX_THREADS fits on a multiprocessor
# (the simulator's jit takes no such option)
_SEQ = dict(cache=True) if config.ENABLE_CUDASIM else dict(cache=True, max_registers=64)


def _splitmix_uniform_quiet(seed, index):
    """The simulator runs device functions as Python on numpy scalars, where the
    wrapping uint64 arithmetic of splitmix64 warns about overflow."""
    with np.errstate(over="ignore"):
        return splitmix_uniform(seed, index)


_uniform = cuda.jit(device=True, inline=True)(_splitmix_uniform_quiet if config.ENABLE_CUDASIM
                                              else splitmix_uniform)


if config.ENABLE_CUDASIM:
    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        cuda.cg.this_grid().sync()
else:
    # The intrinsics behind cuda.cg.this_grid().sync(): the public overloads are compiled
    # for the current device's compute capability, so compile_ptx would need a GPU.
    from numba.cuda.cg import _grid_group_sync, _this_grid

    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        """Wait until every thread of the grid arrives; writes before are visible after."""
        _grid_group_sync(_this_grid())


@cuda.jit(device=True, inline=True)
def _sigmoid(x, one):
    return one / (one + math.exp(-x))


@cuda.jit(device=True, inline=True)
def _unit(i, hidden):
    """Thread i -> (batch row, hidden unit)."""
    b = i // hidden
    return b, i - b * hidden


# --- the sequence kernels' frame ---------------------------------------------------------

@cuda.jit(device=True, inline=True)
def _my_units(hidden):
    """(first unit, unit count) of this block: blocks own equal runs of hidden units."""
    per = (hidden + cuda.gridDim.x - 1) // cuda.gridDim.x
    u0 = cuda.blockIdx.x * per
    return u0, max(0, min(per, hidden - u0))


@cuda.jit(device=True, inline=True)
def _step(s, steps, reverse, backward):
    """The s-th step visited -> (t, slot of the state entering t, slot of the state after t).

    The forward visits t = 0..T-1 (T-1..0 in reverse); the backward the opposite."""
    t = steps - 1 - s if reverse != backward else s
    if reverse:
        return t, t + 1, t
    return t, t, t + 1


@cuda.jit(device=True, inline=True)
def _item(i, blocks, nu):
    """Item i of a phase over (outer index, gate block q, unit) -> (outer index, q, unit
    offset), unit fastest; the outer index is a batch row, or a chunk of them (_chunk)."""
    per_row = blocks * nu
    b = i // per_row
    r = i - b * per_row
    q = r // nu
    return b, q, r - q * nu


@cuda.jit(device=True, inline=True)
def _split(items, n):
    """Threads per dot product of n terms when a phase has ``items`` of them: a power of
    two up to a warp, as large as lets every item have its group in one round, but at
    least 8 (8 neighbouring weights fill a 32-byte sector of a float32 read), that
    divides the block and leaves each thread a term."""
    nt = cuda.blockDim.x
    s = 1
    while s < 32 and (s < 8 or 2 * s * items <= nt) and nt % (2 * s) == 0 and 2 * s <= n:
        s *= 2
    return s


@cuda.jit(device=True, inline=True)
def _term(src, mask, use_mask, b, k):
    return src[b, k] * mask[b, k] if use_mask else src[b, k]


@cuda.jit(device=True, inline=True)
def _split_dots(src, b0, nb, mask, use_mask, w, r, k0, n, split, active, part):
    """The dot products of w[r, k0:k0+n] with src[b] (times mask[b]) for the nb <= RB
    batch rows b = b0, b0+1, ..., by ``split`` neighbouring threads.

    Thread ``lane`` of the group sums k = lane, lane + split, ... in order (neighbouring
    threads read neighbouring weights, and each weight read serves every row); the
    partial sums are then added in a fixed tree through ``part`` (shared, (RB, threads)).
    Every thread of the block calls it (it synchronises the block). Returns RB sums,
    valid in the group's first thread; those past nb mean nothing."""
    tid = cuda.threadIdx.x
    lane = tid % split
    last = src.shape[0] - 1
    r1, r2, r3 = min(b0 + 1, last), min(b0 + 2, last), min(b0 + 3, last)
    a0 = a1 = a2 = a3 = src.dtype.type(0)
    if active:
        if nb == 1:
            for k in range(lane, n, split):
                a0 += _term(src, mask, use_mask, b0, k) * w[r, k0 + k]
        else:
            for k in range(lane, n, split):
                wk = w[r, k0 + k]
                a0 += _term(src, mask, use_mask, b0, k) * wk
                a1 += _term(src, mask, use_mask, r1, k) * wk
                a2 += _term(src, mask, use_mask, r2, k) * wk
                a3 += _term(src, mask, use_mask, r3, k) * wk
    if split == 1:
        return a0, a1, a2, a3
    part[0, tid] = a0
    part[1, tid] = a1
    part[2, tid] = a2
    part[3, tid] = a3
    cuda.syncthreads()
    s = split // 2
    while s > 0:
        if lane < s:
            for m in range(RB):
                part[m, tid] += part[m, tid + s]
        cuda.syncthreads()
        s //= 2
    return part[0, tid], part[1, tid], part[2, tid], part[3, tid]


@cuda.jit(device=True, inline=True)
def _rounds(items, n):
    """(split, group of this thread, groups in the block): items go to groups of
    ``split`` threads, ``groups`` items a round."""
    split = _split(items, n)
    return split, cuda.threadIdx.x // split, cuda.blockDim.x // split


@cuda.jit(device=True, inline=True)
def _chunk(i, items, blocks, nu, batch):
    """Item i of a dot-product phase -> (first batch row, rows, gate block, unit offset):
    items run over (chunk of RB batch rows, gate block, unit), unit fastest. An item past
    the end maps to the last one: its group only joins the tree (inactive, it reads and
    stores nothing)."""
    c, q, u = _item(min(i, items - 1), blocks, nu)
    b0 = c * RB
    return b0, min(RB, batch - b0), q, u


@cuda.jit(device=True, inline=True)
def _products(src, mask, use_mask, w, gh, q0, q1, hidden, u0, nu, part):
    """gh[b, q*H + u] = h[b] . W_hh[q*H + u] (h = src times the mask) for this block's
    units u, gate blocks q0..q1-1 and every batch row."""
    batch = gh.shape[0]
    blocks = q1 - q0
    items = (batch + RB - 1) // RB * blocks * nu
    split, g, groups = _rounds(items, hidden)
    for i0 in range(0, items, groups):
        i = i0 + g
        b0, nb, q, u = _chunk(i, items, blocks, nu, batch)
        c = (q0 + q) * hidden + u0 + u
        v = _split_dots(src, b0, nb, mask, use_mask, w, c, 0, hidden, split, i < items, part)
        if i < items and cuda.threadIdx.x % split == 0:
            for m in range(RB):
                if m < nb:
                    gh[b0 + m, c] = v[m]


@cuda.jit(device=True, inline=True)
def _add_recurrent(dh, src, w_t, k0, n, mask, use_mask, lengths, t, u0, nu, part):
    """dh[b, u] += (src[b] . W_hh[k0:k0+n, u]) * mask[b, u] (w_t = W_hh^T) on rows active
    at step t, for this block's units u; inactive rows passed their state through."""
    batch = dh.shape[0]
    items = (batch + RB - 1) // RB * nu
    split, g, groups = _rounds(items, n)
    for i0 in range(0, items, groups):
        i = i0 + g
        b0, nb, _, u = _chunk(i, items, 1, nu, batch)
        j = u0 + u
        v = _split_dots(src, b0, nb, mask, False, w_t, j, k0, n, split, i < items, part)
        if i < items and cuda.threadIdx.x % split == 0:
            for m in range(RB):
                b = b0 + m
                if m < nb and t < lengths[b]:
                    dh[b, j] += v[m] * mask[b, j] if use_mask else v[m]


# --- one cell (batch row b, unit j) of a step: the gate math -----------------------------

@cuda.jit(device=True, inline=True)
def _rnn_cell(xw, gh, bias, hs, y, lengths, t, tin, tout, relu, b, j):
    if t < lengths[b]:
        zero = hs.dtype.type(0)
        a = xw[t, b, j] + gh[b, j] + bias[j]
        h = (a if a > zero else zero) if relu else math.tanh(a)
        hs[tout, b, j] = h
        y[t, b, j] = h
    else:
        hs[tout, b, j] = hs[tin, b, j]
        y[t, b, j] = 0


@cuda.jit(device=True, inline=True)
def _lstm_cell(xw, gh, bias, hs, cs, gates, y, lengths, t, tin, tout, b, j):
    hidden = hs.shape[2]
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


@cuda.jit(device=True, inline=True)
def _gru_reset_gate(xw, gh, bias, h, mask, use_mask, gates, rh, t, b, j):
    """reset_after=False, before the n block's product: r = sigmoid(.), rh = r * h * mask
    (every row: inactive rows' values are never used)."""
    r = _sigmoid(xw[t, b, j] + gh[b, j] + bias[j], rh.dtype.type(1))
    gates[t, b, j] = r
    rh[b, j] = r * (h[b, j] * mask[b, j] if use_mask else h[b, j])


@cuda.jit(device=True, inline=True)
def _gru_cell(xw, gh, gh_n, bias, b_ih, b_hh, hs, gates, aux, rh, y, lengths, t, tin, tout, reset_after, b, j):
    """gh: W_h{r,z,n} h (reset_after) or W_h{r,z} h in its first 2H columns, with gh_n = W_hn (r h)."""
    hidden = hs.shape[2]
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


@cuda.jit(device=True, inline=True)
def _rnn_cell_bwd(dy, dh, hs, dg, lengths, t, tout, relu, b, j):
    if t < lengths[b]:
        zero = dh.dtype.type(0)
        h = hs[tout, b, j]
        d = dh[b, j] + dy[t, b, j]
        dg[t, b, j] = (d if h > zero else zero) if relu else d * (dh.dtype.type(1) - h * h)
        dh[b, j] = 0
    else:
        dg[t, b, j] = 0


@cuda.jit(device=True, inline=True)
def _lstm_cell_bwd(dy, dh, dc, cs, gates, dg, lengths, t, tin, tout, b, j):
    hidden = dh.shape[1]
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


@cuda.jit(device=True, inline=True)
def _gru_cell_bwd(dy, dh, hs, gates, aux, dg, dgn_h, dgh, lengths, t, tin, reset_after, b, j):
    """dg (T, B, 3H): x-side pre-activation gradients; dgn_h (T, B, H): gradient of the
    n block's recurrent product; dgh (B, 3H): this step's W_hh-side gradient (its r
    block is filled by _gru_reset_bwd when reset_after is False)."""
    hidden = dh.shape[1]
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
        dgh[b, h2] = 0
        dgn_h[t, b, j] = 0


@cuda.jit(device=True, inline=True)
def _gru_reset_bwd(drh, hs, gates, mask, dg, dgh, dh, lengths, t, tin, use_mask, b, j):
    """reset_after=False: drh = d(r * hm) = (dn @ W_hn)[b, j] gives r's gradient and a path to h."""
    if t < lengths[b]:
        one = dh.dtype.type(1)
        m = mask[b, j] if use_mask else one
        r = gates[t, b, j]
        dr = drh * hs[tin, b, j] * m * r * (one - r)
        dg[t, b, j] = dr
        dgh[b, j] = dr
        dh[b, j] += drh * r * m


@cuda.jit(device=True, inline=True)
def _reset_grads(dn, w_t, hs, gates, mask, use_mask, dg, dgh, dh, lengths, t, tin, u0, nu, part):
    """reset_after=False: drh = dn @ W_hn (w_t = W_hh^T), then _gru_reset_bwd, for this
    block's units on rows active at step t."""
    batch, hidden = dh.shape
    items = (batch + RB - 1) // RB * nu
    split, g, groups = _rounds(items, hidden)
    for i0 in range(0, items, groups):
        i = i0 + g
        b0, nb, _, u = _chunk(i, items, 1, nu, batch)
        j = u0 + u
        drh = _split_dots(dn, b0, nb, mask, False, w_t, j, 2 * hidden, hidden, split, i < items, part)
        if i < items and cuda.threadIdx.x % split == 0:
            for m in range(RB):
                if m < nb:
                    _gru_reset_bwd(drh[m], hs, gates, mask, dg, dgh, dh, lengths, t, tin, use_mask, b0 + m, j)


# --- the sequence kernels: every step of one layer and direction -------------------------

@cuda.jit(**_SEQ)
def _rnn_seq(xw, w_hh, bias, hs, y, gh, lengths, relu, reverse):
    """Forward over all steps. gh (B, H) scratch."""
    steps, batch, hidden = y.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=y.dtype)
    for s in range(steps):
        t, tin, tout = _step(s, steps, reverse, False)
        _products(hs[tin], gh, False, w_hh, gh, 0, 1, hidden, u0, nu, part)    # no mask: gh stands in, unread
        cuda.syncthreads()
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _rnn_cell(xw, gh, bias, hs, y, lengths, t, tin, tout, relu, b, u0 + u)
        _grid_sync()


@cuda.jit(**_SEQ)
def _lstm_seq(xw, w_hh, bias, hs, cs, gates, y, gh, lengths, mask, use_mask, reverse):
    """Forward over all steps. gh (B, 4H) scratch."""
    steps, batch, hidden = y.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=y.dtype)
    for s in range(steps):
        t, tin, tout = _step(s, steps, reverse, False)
        _products(hs[tin], mask, use_mask, w_hh, gh, 0, 4, hidden, u0, nu, part)
        cuda.syncthreads()
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _lstm_cell(xw, gh, bias, hs, cs, gates, y, lengths, t, tin, tout, b, u0 + u)
        _grid_sync()


@cuda.jit(**_SEQ)
def _gru_seq(xw, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, gh, gh_n, rh, lengths, mask, use_mask, reset_after,
             reverse):
    """Forward over all steps. gh (B, 3H), gh_n and rh (B, H) scratch.

    reset_after=False needs r before the n block's product W_hn (r h), which reads
    every unit's r h: a second grid barrier in the step."""
    steps, batch, hidden = y.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=y.dtype)
    h2 = 2 * hidden
    for s in range(steps):
        t, tin, tout = _step(s, steps, reverse, False)
        h = hs[tin]
        _products(h, mask, use_mask, w_hh, gh, 0, 3 if reset_after else 2, hidden, u0, nu, part)
        cuda.syncthreads()
        if not reset_after:
            for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
                b, _, u = _item(i, 1, nu)
                _gru_reset_gate(xw, gh, bias, h, mask, use_mask, gates, rh, t, b, u0 + u)
            _grid_sync()
            _products(rh, mask, False, w_hh[h2:], gh_n, 0, 1, hidden, u0, nu, part)
            cuda.syncthreads()
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _gru_cell(xw, gh, gh_n, bias, b_ih, b_hh, hs, gates, aux, rh, y, lengths, t, tin, tout, reset_after,
                      b, u0 + u)
        _grid_sync()


@cuda.jit(**_SEQ)
def _rnn_seq_bwd(dy, dh, hs, dg, w_t, lengths, relu, reverse):
    """Backward over all steps; dh (B, H) holds dL/dh_n on entry and dL/dh_0 on return.
    w_t = W_hh^T."""
    steps, batch, hidden = dy.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=dy.dtype)
    for s in range(steps):
        t, _, tout = _step(s, steps, reverse, True)
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _rnn_cell_bwd(dy, dh, hs, dg, lengths, t, tout, relu, b, u0 + u)
        _grid_sync()
        _add_recurrent(dh, dg[t], w_t, 0, hidden, dh, False, lengths, t, u0, nu, part)  # no mask: dh, unread
        cuda.syncthreads()


@cuda.jit(**_SEQ)
def _lstm_seq_bwd(dy, dh, dc, cs, gates, dg, w_t, lengths, mask, use_mask, reverse):
    """Backward over all steps; dh, dc (B, H) hold dL/dh_n, dL/dc_n on entry and the
    gradients of h0, c0 on return. w_t = W_hh^T."""
    steps, batch, hidden = dy.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=dy.dtype)
    for s in range(steps):
        t, tin, tout = _step(s, steps, reverse, True)
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _lstm_cell_bwd(dy, dh, dc, cs, gates, dg, lengths, t, tin, tout, b, u0 + u)
        _grid_sync()
        _add_recurrent(dh, dg[t], w_t, 0, 4 * hidden, mask, use_mask, lengths, t, u0, nu, part)
        cuda.syncthreads()


@cuda.jit(**_SEQ)
def _gru_seq_bwd(dy, dh, hs, gates, aux, dg, dgn_h, dgh2, w_t, lengths, mask, use_mask, reset_after, reverse):
    """Backward over all steps; dh as in _lstm_seq_bwd; w_t = W_hh^T. dgh2 (2, B, 3H): the
    step's W_hh-side gradient, in two buffers taken in turn, so a block writing the next
    step's never overwrites what another block still reads for this one."""
    steps, batch, hidden = dy.shape
    u0, nu = _my_units(hidden)
    part = cuda.shared.array((RB, MAX_THREADS), dtype=dy.dtype)
    for s in range(steps):
        t, tin, _ = _step(s, steps, reverse, True)
        dgh = dgh2[s % 2]
        for i in range(cuda.threadIdx.x, batch * nu, cuda.blockDim.x):
            b, _, u = _item(i, 1, nu)
            _gru_cell_bwd(dy, dh, hs, gates, aux, dg, dgn_h, dgh, lengths, t, tin, reset_after, b, u0 + u)
        _grid_sync()
        if reset_after:
            _add_recurrent(dh, dgh, w_t, 0, 3 * hidden, mask, use_mask, lengths, t, u0, nu, part)
        else:
            _reset_grads(dgn_h[t], w_t, hs, gates, mask, use_mask, dg, dgh, dh, lengths, t, tin, u0, nu, part)
            _grid_sync()
            _add_recurrent(dh, dgh, w_t, 0, 2 * hidden, mask, use_mask, lengths, t, u0, nu, part)
        cuda.syncthreads()


@cuda.jit(cache=True)
def _transpose(a, out):
    """out = a^T (2-D)."""
    i = cuda.grid(1)
    rows, cols = a.shape
    if i < rows * cols:
        r = i // cols
        c = i - r * cols
        out[c, r] = a[r, c]


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

_SMS = {}       # device id -> multiprocessor count


def _multiprocessors():
    """The current device's multiprocessor count (asked once per device)."""
    dev = cuda.get_current_device()
    if dev.id not in _SMS:
        _SMS[dev.id] = dev.MULTIPROCESSOR_COUNT
    return _SMS[dev.id]


def _sequence_grid(hidden, gates, batch):
    """(blocks, threads) of a sequence kernel whose widest dot-product phase covers
    ``gates`` gate blocks of every unit for every batch row.

    One block per multiprocessor at most (all must be resident: a cooperative launch
    refuses more than fit), and never more blocks than units; threads: a warp for each
    dot-product group (RB batch rows of one gate row) of the block's widest phase, at
    most MAX_THREADS (see _split). The simulator runs one block, and two threads a
    group: its threads are Python threads."""
    sim = config.ENABLE_CUDASIM
    blocks = 1 if sim else min(_multiprocessors(), hidden)
    per = (hidden + blocks - 1) // blocks
    blocks = (hidden + per - 1) // per
    items = gates * ((batch + RB - 1) // RB) * per
    return blocks, (min(64, 2 * items) if sim else min(MAX_THREADS, 32 * items))


def _launch_sequence(kernel, hidden, gates, batch, *args):
    blocks, threads = _sequence_grid(hidden, gates, batch)
    kernel[blocks, threads](*args)


def _transposed(w):
    out = empty((w.shape[1], w.shape[0]), w.dtype)
    blocks, threads = grid1d(w.shape[0] * w.shape[1])
    _transpose[blocks, threads](w, out)
    return out


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
    _launch_sequence(_rnn_seq, hidden, 1, batch, xw, w_hh, bias, hs, y, gh, d_lengths, relu, bool(reverse))
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
    _launch_sequence(_rnn_seq_bwd, hidden, 1, batch, dy, dh, hs, dg, _transposed(w_hh), d_lengths, relu, bool(reverse))
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
    m, use_mask = _mask_arg(mask, dtype)
    _launch_sequence(_lstm_seq, hidden, 4, batch, xw, w_hh, bias, hs, cs, gates, y, gh, d_lengths,
                     m, use_mask, bool(reverse))
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
    m, use_mask = _mask_arg(mask, dtype)
    _launch_sequence(_lstm_seq_bwd, hidden, 1, batch, dy, dh, dc, cs, gates, dg, _transposed(w_hh), d_lengths, m,
                     use_mask, bool(reverse))
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
    xw = _input_projection(x, w_ih)
    hs = _states(steps, batch, hidden, h0, reverse, dtype)
    gates = empty((steps, batch, 3 * hidden), dtype)
    aux = empty((steps, batch, hidden), dtype)
    y = empty((steps, batch, hidden), dtype)
    bias, b_ih, b_hh = _bias_sum(b_ih, b_hh, 3 * hidden, dtype)
    gh = empty((batch, 3 * hidden), dtype)
    gh_n, rh = empty((batch, hidden), dtype), empty((batch, hidden), dtype)
    m, use_mask = _mask_arg(mask, dtype)
    reset_after = bool(reset_after)
    widest = 3 if reset_after else 2       # gate blocks of the step's first product
    _launch_sequence(_gru_seq, hidden, widest, batch, xw, w_hh, bias, b_ih, b_hh, hs, gates, aux, y, gh, gh_n, rh,
                     d_lengths, m, use_mask, reset_after, bool(reverse))
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
    dgh2 = empty((2, batch, 3 * hidden), dtype)
    m, use_mask = _mask_arg(mask, dtype)
    _launch_sequence(_gru_seq_bwd, hidden, 1, batch, dy, dh, hs, gates, aux, dg, dgn_h, dgh2, _transposed(w_hh),
                     d_lengths, m, use_mask, reset_after, bool(reverse))
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
            (_rnn_seq, (a3, m, v, a3, a3, m, i64, boolean, boolean)),
            (_lstm_seq, (a3, m, v, a3, a3, a3, a3, m, i64, m, boolean, boolean)),
            (_gru_seq, (a3, m, v, v, v, a3, a3, a3, a3, m, m, m, i64, m, boolean, boolean, boolean)),
            (_rnn_seq_bwd, (a3, m, a3, a3, m, i64, boolean, boolean)),
            (_lstm_seq_bwd, (a3, m, m, a3, a3, a3, m, i64, m, boolean, boolean)),
            (_gru_seq_bwd, (a3, m, a3, a3, a3, a3, a3, a3, m, i64, m, boolean, boolean, boolean)),
            (_transpose, (m, m)),
            (_mask_states, (a3, m, a3)),
            (_dropout_mask, (m, float64, int64)),
        ]
    return sigs
