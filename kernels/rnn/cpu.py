"""CPU recurrent layers: packed GEMMs around one compiled time loop per cell.

GEMMs: the input projection x @ w_ih.T of all T steps, dx and the weight gradients
(sums over all T*B rows) run on the explicit-SIMD micro-kernel of ``nbdl.kernels._simd``
(``_matmul``: the right operand packed once into column panels, the left one packed
per block of rows; rows shared among the threads). Every output is one fixed-order
chain of multiply-adds, so the bits do not depend on the thread count. The two weight
gradients share their left operand, dL/d(pre-activations), and run as one pass; the
LSTM backward writes that operand transposed, (4H, T*B), so its rows are contiguous,
and sums the bias gradient inside the time loop.

LSTM time loops (forward and backward through time): one ``@njit`` call runs the whole
loop, so no step pays Python's call overhead (at B=1 a step takes about 1.5
microseconds). The threads share a step by hidden units: thread k owns units
[u_k, u_k+1) of every gate for all batch rows (cut at cache lines where the rows are
long enough), keeps its slice of W_hh packed for the micro-kernel (in its own core's
cache from step to step), computes
the recurrent product and the gate math of its units, and waits for the other threads'
states through spin-wait counters (see "time loops shared among threads" below). The
forward's product is two partial sums over fixed halves of h, the thread's own half
first, so the wait for the other threads' states overlaps half a product. Batches of one
or two rows use a one-row block (a matrix-vector product, bound by the cache bandwidth
for W_hh), and for inputs up to _PROJ_MAX values their threads compute the input
projection inside the loop, alongside the product (see "the input projection inside
the time loop"). Inside these loops the arrays are views that count no references
(``nbdl.kernels._views``: numba's per-slice reference counting was an atomic operation on
a cache line both cores wrote), and the matrix-vector blocks prefetch their weight panel
2 KiB ahead (the hardware prefetcher alone left the L2 stream ~30% slower).

Vanilla RNN and GRU time loops cut the batch into contiguous row blocks, one per
thread, each running all T steps with no barrier; a step is the recurrent product
h @ w_hh.T of its rows by ``_gemm_nt`` (4 x 4 register blocks) and the fused gate math.

The gate math runs on contiguous 1-D views in small functions, so the polynomial
sigmoid/tanh of ``nbdl.kernels._fastmath`` run as SIMD. Small GEMMs and LSTM loops
(under about a million multiply-adds; RNN/GRU loops under eight million) run on the
calling thread without entering a parallel region. Only numba's thread pool runs: no
BLAS call remains. Large scratch buffers (packed panels, per-step gradients) are kept
between calls, per Python thread.
"""
import math
import os
import sys
import threading

import numpy as np
from llvmlite import ir
from numba import get_num_threads, get_parallel_chunksize, njit, prange, threading_layer, types
from numba.core import cgutils
from numba.np.ufunc import parallel as _parallel
from numba.extending import intrinsic

from nbdl.kernels._fastmath import FASTMATH, FASTMATH_REDUCE, sigmoid, tanh
from nbdl.kernels._views import keep_alive, unmanaged
from nbdl.kernels._simd import MR, NV, VECTOR_BYTES as _VECTOR_BYTES, block_cols, check_cache, \
    compiled_block_cols, gemm_block, lanes, make_gemm_block, make_gemm_pair, prefetch_for_write, transpose_tile
from nbdl.kernels.rnn import (check_backward, check_forward, check_lengths, check_mask_args,
                              check_nonlinearity, splitmix_uniform)

_JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")
_uniform = njit(inline="always")(splitmix_uniform)


# --- scratch buffers -------------------------------------------------------------------

_workspace = threading.local()


_LINE = 64     # bytes in a cache line


def _empty(shape, dtype, zero=False):
    """np.empty (or zeros) starting on a cache line. The threads of a time loop write
    neighbouring unit ranges of the same rows (states, gates, outputs); numpy starts large
    arrays 16 bytes past a line, so two threads' ranges would share a line at every
    boundary, written by both cores at every step. (At B=1 and H=128 the difference was
    within this machine's noise; the packed panels, read by one core, measured ~3% faster
    aligned.) Written out, not through _empties: a microsecond less per call."""
    dtype = np.dtype(dtype)
    n, q = math.prod(shape), _LINE // dtype.itemsize
    buf = (np.zeros if zero else np.empty)(-(-n // q) * q + q, dtype=dtype)     # its last line its own
    start = (-_address(buf) % _LINE) // dtype.itemsize
    return buf[start:start + n].reshape(shape)


def _empties(shapes, dtype, zero=False):
    """Arrays of the given shapes, each starting on a cache line (see _empty), carved from
    one allocation: for arrays that live and die together (what a forward saves), one
    allocation costs a microsecond less per array."""
    dtype = np.dtype(dtype)
    q = _LINE // dtype.itemsize
    sizes = [math.prod(shape) for shape in shapes]
    buf = (np.zeros if zero else np.empty)(sum(-(-n // q) * q for n in sizes) + q, dtype=dtype)
    start = (-_address(buf) % _LINE) // dtype.itemsize
    out = []
    for shape, n in zip(shapes, sizes):
        out.append(buf[start:start + n].reshape(shape))
        start += -(-n // q) * q
    return out


@njit(cache=True)
def _address(a):
    """a's data address (ten times faster than a.ctypes.data, which builds an object)."""
    return a.ctypes.data


def _scratch(name, shape, dtype, zero=False):
    """A scratch array that never leaves a call (packed panels, per-step gradients), kept
    per Python thread between calls: fresh multi-megabyte arrays were page-faulted in
    on every call (measured 0.2-0.4 ms per megabyte-sized array)."""
    dtype = np.dtype(dtype)
    views = _workspace.__dict__.setdefault("views", {})    # the last view of each buffer
    last = views.get((name, dtype))
    if last is not None and last[0] == shape:
        out = last[1]
    else:
        arrays = _workspace.__dict__.setdefault("arrays", {})
        size = math.prod(shape)
        buf = arrays.get((name, dtype))
        if buf is None or buf.size < size:
            buf = arrays[name, dtype] = _empty((size,), dtype)
        out = buf[:size].reshape(shape)
        views[name, dtype] = (shape, out)
    if zero:
        out.fill(0)
    return out


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


# --- packed GEMMs on the SIMD micro-kernel ----------------------------------------------
#
# out (M, N) (+)= a (M, K) @ b (K, N), with b packed once into column panels
# bp (P, K, NR), bp[p, l, j] = b[l, p*NR + j] (zero past column N), and a packed per
# block of MR rows into ap (K, MR), ap[l, i] = a[i0 + i, l]. The micro-kernel keeps an
# MR x NR block of out in registers for a whole run over l, so every output is one
# fixed-order chain of multiply-adds over l: the bits do not depend on how rows or
# panels are shared among threads.

_PARALLEL_WORK = 1 << 20   # multiply-adds (~5 us on one core) below which a product or a
                           # time loop runs on the calling thread (a parallel region costs
                           # ~2 us to start on an idle machine)
_KC = 512        # reduction chunk: a (KC, NR) panel slice (64 KiB float32) stays in L1/L2
_ROW_CHUNK = 8   # blocks of MR rows packed together and run against each panel slice


@njit(**_JIT)
def _compiled_block_cols(x):
    return compiled_block_cols(x)


_cache_checked = set()


def _block_cols(dtype):
    """NR, the micro-kernel's columns, for a dtype; the first call per dtype also checks that
    the cached kernels were compiled with this block shape (see _simd.check_cache)."""
    dtype = np.dtype(dtype)
    if dtype not in _cache_checked:
        check_cache(_compiled_block_cols, dtype, sys.modules[__name__])
        _cache_checked.add(dtype)
    return block_cols(dtype.itemsize)


def _panel_count(n, nr):
    return -(-n // nr)


@njit(**_JIT)
def _pack_panels(b, bp, p0, p1):
    """bp[p, l, j] = b[l, p*NR + j] for panels p0 <= p < p1 (zero past b's last column).

    b (K, N) any layout: rows are copied where contiguous; a transposed C-contiguous
    matrix (a weight read as w.T) moves in register-transposed tiles (_pack_run), any
    other layout element by element (unsigned indices: no negative-index wrap-around
    test, so the copy loops vectorize)."""
    k, n = b.shape
    nr = bp.shape[2]
    z = bp.dtype.type(0)
    transposed = b.strides[0] == b.itemsize and b.strides[1] == k * b.itemsize
    for p in range(p0, p1):
        j0 = np.uint64(p * nr)
        jn = min(nr, n - p * nr)
        if transposed:
            _pack_run(b.T, p * nr, jn, bp, p, 0)
        for l in range(np.uint64(k)):
            row = bp[p, l]
            if not transposed:
                for j in range(np.uint64(jn)):
                    row[j] = b[l, j0 + j]
            for j in range(jn, nr):
                row[j] = z


@njit(**_JIT)
def _pack_run(w, row0, n, wp, p, j0):
    """wp[p, l, j0 + i] = w[row0 + i, l] for i < n and every l < K: n rows of w (.., K),
    C-contiguous, become n columns of panel p of wp (P, K, NR). Whole lanes x lanes tiles
    are transposed in registers (transpose_tile); the edges element by element."""
    lds = w.shape[1]
    k = min(lds, wp.shape[1])
    nr = wp.shape[2]
    lanes_ = _VECTOR_BYTES // w.itemsize
    n_full = n - n % lanes_
    k_full = k - k % lanes_
    base = p * wp.shape[1] * nr + j0
    for i0 in range(0, n_full, lanes_):
        for l0 in range(0, k_full, lanes_):
            transpose_tile(w, (row0 + i0) * lds + l0, lds, wp, base + l0 * nr + i0, nr)
    for i in range(n):
        src = w[row0 + i]
        l_start = k_full if i < n_full else 0
        for l in range(l_start, k):
            wp[p, l, j0 + i] = src[l]


@njit(parallel=True, **_JIT)
def _pack_panels_par(b, bp, nthreads):
    """_pack_panels with the panels shared among nthreads threads."""
    n = bp.shape[0]
    for t in prange(nthreads):
        _pack_panels(b, bp, t * n // nthreads, (t + 1) * n // nthreads)


def _pack(b, dtype, name="b"):
    """Column panels (P, K, NR) of b (K, N) (see above), in the scratch buffer ``name``."""
    k, n = b.shape
    nr = _block_cols(dtype)
    return _pack_into(b, _scratch(name, (_panel_count(n, nr), k, nr), dtype))


def _pack_into(b, bp):
    """bp (P, K, NR) = the column panels of b (K, N), on every thread when large."""
    nthreads = get_num_threads()
    if nthreads > 1 and bp.size >= 1 << 16:
        _pack_panels_par(b, bp, nthreads)
    else:
        _pack_panels(b, bp, 0, bp.shape[0])
    return bp


@njit(inline="always")
def _pack_rows(a, ap, i0, nblk, m):
    """ap[blk, l, i] = a[i0 + blk*MR + i, l] for blk < nblk, i < MR (zero rows past m).

    Reads a where it is contiguous: along its rows, or for a transposed view along its
    columns (nblk*MR values at a time). Unsigned indices: no negative-index test."""
    mr = ap.shape[2]
    k = a.shape[1]
    n = min(nblk * mr, m - i0)
    if a.strides[0] < a.strides[1]:
        umr = np.uint64(mr)
        u0 = np.uint64(i0)
        for l in range(np.uint64(k)):
            for r in range(np.uint64(n)):
                ap[r // umr, l, r % umr] = a[u0 + r, l]
    else:
        for r in range(n):
            src = a[i0 + r]
            dst = ap[r // mr]
            i = np.uint64(r % mr)
            for l in range(np.uint64(k)):
                dst[l, i] = src[l]
    for r in range(n, nblk * mr):
        _fill(ap[r // mr, :, r % mr], 0)


@njit(inline="always")
def _store_block(ap, bp, out, i, j, tile, accumulate):
    """out[i:i+MR, j:j+NR] (+)= ap.T @ bp, through ``tile`` where the block overhangs out."""
    mr, nr = tile.shape
    if i + mr <= out.shape[0] and j + nr <= out.shape[1]:
        gemm_block(ap, bp, out[i:i + mr, j:j + nr], accumulate)
        return
    m = min(mr, out.shape[0] - i)
    n = min(nr, out.shape[1] - j)
    if accumulate:
        for r in range(m):
            for c in range(n):
                tile[r, c] = out[i + r, j + c]
    gemm_block(ap, bp, tile, accumulate)
    for r in range(m):
        for c in range(n):
            out[i + r, j + c] = tile[r, c]


@njit(**_JIT)
def _gemm_packed_rows(a, bp, out, np1, out2, r0, r1, accumulate):
    """out[r0:r1] (+)= a[r0:r1] @ b, b given as panels bp (P, K, NR); out (M, N), N <= P*NR.

    Two products with one left operand: panels from np1 on belong to a second b, whose
    product goes to out2 (np1 = P and an empty out2 for one product). a is packed once."""
    k = a.shape[1]
    npan, _, nr = bp.shape
    mr = MR
    ap = np.empty((_ROW_CHUNK, k, mr), a.dtype)
    tile = np.empty((mr, nr), a.dtype)
    for c0 in range(r0, r1, _ROW_CHUNK * mr):
        nblk = min(_ROW_CHUNK, -(-(r1 - c0) // mr))
        _pack_rows(a, ap, c0, nblk, r1)
        for k0 in range(0, max(k, 1), _KC):
            k1 = min(k, k0 + _KC)
            acc = accumulate or k0 > 0
            for p in range(npan):
                dst = out[:r1] if p < np1 else out2[:r1]
                j = p * nr if p < np1 else (p - np1) * nr
                for blk in range(nblk):
                    _store_block(ap[blk, k0:k1], bp[p, k0:k1], dst, c0 + blk * mr, j, tile, acc)


@njit(parallel=True, **_JIT)
def _gemm_packed_par(a, bp, out, np1, out2, bounds, accumulate):
    """_gemm_packed_rows on the row blocks [bounds[t], bounds[t+1]), one per thread."""
    for t in prange(bounds.shape[0] - 1):
        _gemm_packed_rows(a, bp, out, np1, out2, bounds[t], bounds[t + 1], accumulate)


def _gemm_packed(a, bp, out, np1=None, out2=None, accumulate=False):
    """out (M, N) (+)= a (M, K) @ b for b packed by _pack (and out2 from panels np1 on,
    see _gemm_packed_rows); rows shared among the threads in multiples of MR (one call on
    this thread for small products)."""
    m, k = a.shape
    if np1 is None:
        np1, out2 = bp.shape[0], out[:, :0]
    n = out.shape[1] + out2.shape[1]
    if m == 0 or n == 0:
        return out
    nthreads = 1 if m * k * n < _PARALLEL_WORK else max(1, min(get_num_threads(), -(-m // MR)))
    if nthreads == 1:
        _gemm_packed_rows(a, bp, out, np1, out2, 0, m, accumulate)
        return out
    blocks = -(-m // MR)
    bounds = np.array([min(m, (t * blocks // nthreads) * MR) for t in range(nthreads + 1)], dtype=np.int64)
    _gemm_packed_par(a, bp, out, np1, out2, bounds, accumulate)
    return out


_TILE = 32       # transposes move 32 x 32 tiles: whole cache lines on both sides


@njit(**_JIT)
def _transpose_cols(src, out, c0, c1):
    """out[c, r] = src[r, c] for columns c0 <= c < c1 of src (m, n), tile by tile."""
    m = src.shape[0]
    for cb in range(c0, c1, _TILE):
        for rb in range(0, m, _TILE):
            for c in range(cb, min(c1, cb + _TILE)):
                dst = out[c]
                for r in range(np.uint64(rb), np.uint64(min(m, rb + _TILE))):
                    dst[r] = src[r, c]


@njit(parallel=True, **_JIT)
def _transpose_par(src, out, nthreads):
    n = src.shape[1]
    for t in prange(nthreads):
        _transpose_cols(src, out, t * n // nthreads, (t + 1) * n // nthreads)


def _rows_contiguous(a):
    """a, or a C-contiguous copy of a (scratch) when a is a transposed view: packing the
    left operand reads a row at a time, and a transposed weight-gradient operand (T*B
    rows, one cache line per row per block) measured 2x slower than copying it first."""
    if a.strides[1] == a.itemsize or a.size < 1 << 14 or not a.T.flags.c_contiguous:
        return a
    out = _scratch("a", a.shape, a.dtype)
    nthreads = get_num_threads() if a.size * a.itemsize >= 1 << 20 else 1
    _transpose_par(a.T, out, nthreads) if nthreads > 1 else _transpose_cols(a.T, out, 0, a.shape[0])
    return out


def _matmul(a, b, out=None, accumulate=False):
    """out (M, N) (+)= a (M, K) @ b (K, N); a and b any layout (transposed views are read
    in place)."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return _gemm_packed(_rows_contiguous(a), _pack(b, a.dtype), out, accumulate=accumulate)


def _matmul_pair(a, b1, b2):
    """(a @ b1, a @ b2) in one pass over a (K, N1), (K, N2): both weight gradients are
    sums over the same pre-activation gradients."""
    nr = _block_cols(a.dtype)
    np1 = _panel_count(b1.shape[1], nr)
    bp = _scratch("b", (np1 + _panel_count(b2.shape[1], nr), a.shape[1], nr), a.dtype)
    _pack_into(b1, bp[:np1])
    _pack_into(b2, bp[np1:])
    out1 = np.empty((a.shape[0], b1.shape[1]), dtype=a.dtype)
    out2 = np.empty((a.shape[0], b2.shape[1]), dtype=a.dtype)
    _gemm_packed(_rows_contiguous(a), bp, out1, np1, out2)
    return out1, out2


# --- bias gradients: column sums over all T*B rows ---------------------------------------

_PARTS = 4                # row chunks of a bias-gradient sum: fixed, so the result does not
                          # depend on the thread count
_SERIAL_WORK = 1 << 23    # multiply-adds (~0.1 ms on one core) below which one thread does it
                          # all: waking the thread pool costs microseconds on an idle machine and
                          # milliseconds on a busy one, where a parallel region waits for a core


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


def _col_sums(g):
    """Column sums of g (n, m) -> (m,): a bias gradient. Large sums are cut into _PARTS
    row chunks (in parallel) and the partial sums added in order."""
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


# --- time loops shared among threads by hidden units ----------------------------------
#
# Thread k of n owns the hidden units [u_k, u_k+1) of every gate, for all batch rows: it
# keeps its slice of W_hh packed in panels for the micro-kernel (a fixed set of weights,
# so they stay in its core's cache from step to step) and computes the recurrent product
# and the gate math of its units only. A step needs the whole previous state, so the
# threads meet at a barrier once per step: each publishes a step counter and waits for
# the others' (spin-waiting: a step can take under a microsecond, far less than a wake-up
# through the OS). The forward waits in two parts: its product is the sum of two partial
# products over fixed halves of h, [0, H/2) and [H/2, H); a thread first computes the
# half holding its own units (its own states, just written, and those of the threads
# sharing the half), then waits for the rest. Every value is computed by one thread in a
# fixed order (a + b == b + a for the two halves), so the bits do not depend on the
# thread count.
#
# The operand of the next product goes into micro-kernel row panels as it is made (the
# state times the dropout mask forward; backward, the pre-activation gradients, copied
# from their transposed store in runs of mr values), double-buffered: a thread writes
# buffer (s+1) % 2 only after every thread has published the state entering step s
# (count s + 1: it has finished reading buffer (s+1) % 2 = (s-1) % 2), and no thread can
# get two steps ahead of another. The states, outputs and gates the threads write side by
# side start on a cache line and the unit ranges end on one where H fills whole lines, so
# the threads' writes to them then share no line (the bias-gradient sums of the backward
# and the gates made by the separate projection of larger batches are not so arranged).

_FLAG_STRIDE = 16      # int64 slots between two threads' step counters (separate cache lines)
_SPINS = 1000          # polls of a counter before each further poll first yields the core
_GEMV_NV = 8           # vectors per row of the one-row block (8 accumulators cover the
                       # multiply-add latency); used for batches of one or two rows
_AHEAD = 2048          # bytes of weight panel a matrix-vector block prefetches ahead of its reads
_FULL_AHEAD = _AHEAD // (_GEMV_NV * _VECTOR_BYTES)           # in rows of the full one-row block
_HALF_AHEAD = 2 * _FULL_AHEAD                                 # and of the half-width one
# the one-row blocks: 8 vectors, or 4 for thread slices under 8 vectors wide
_gemv_block = make_gemm_block(1, _GEMV_NV, ahead=_FULL_AHEAD)
_gemv_half = make_gemm_block(1, _GEMV_NV // 2, ahead=_HALF_AHEAD)
_MR8 = 8 if NV == 4 else 0     # an 8 x 3-vector block (24 accumulators, AVX-512 only): a batch
                               # of 8k rows without the padding rows of MR = 6 (-8% at B=32)
_gemm8_block = make_gemm_block(8, 3)


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] read with acquire ordering: later reads see what its writer wrote before it."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(arr.data, [args[1]]), "acquire", 8)

    return types.int64(flags, types.intp), codegen


@intrinsic
def _store_release(typingctx, flags, i, value):
    """flags[i] = value with release ordering: everything written before is visible first."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(arr.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return types.void(flags, types.intp, types.int64), codegen


@intrinsic
def _yield_core(typingctx):
    """sched_yield(): let another runnable thread have this core (a busy machine). POSIX
    only: elsewhere the barrier just keeps polling."""
    def codegen(context, builder, signature, args):
        if os.name == "posix":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always")
def _prefetch_range(a, lo, hi):
    """Prefetch a[lo:hi] of a 1-D contiguous array for writing, one request per 64-byte line."""
    if hi > lo:
        prefetch_for_write(a, lo, hi - lo)


@njit(inline="always")
def _signal(flags, k, count):
    """Thread k has finished phase ``count`` (1, 2, ...)."""
    _store_release(flags, k * _FLAG_STRIDE, count)


@njit(inline="always")
def _wait(flags, j, count):
    """Wait until thread j has finished phase ``count``."""
    spins = 0
    while _load_acquire(flags, j * _FLAG_STRIDE) < count:
        spins += 1
        if spins > _SPINS:
            _yield_core()


@njit(inline="always")
def _barrier(flags, k, count):
    """Thread k has finished phase ``count``; wait until every thread has."""
    _signal(flags, k, count)
    for j in range(flags.shape[0] // _FLAG_STRIDE):
        _wait(flags, j, count)


@njit(inline="always")
def _wait_for(flags, units, lo, hi, count):
    """Wait until every thread owning a unit in [lo, hi) (thread j owns [units[j],
    units[j+1])) has finished phase ``count``."""
    for j in range(units.shape[0] - 1):
        if units[j] < hi and units[j + 1] > lo:
            _wait(flags, j, count)


@njit(inline="always")
def _panel_product(ap, wp, npan, out, lo, hi, acc):
    """out[blk*mr + i, p*nr + j] (+)= sum_{lo <= l < hi} ap[blk, l, i] * wp[p, l, j] for
    p < npan: the row blocks ap (nblk, K, mr) times the weight panels wp (P, K, nr) over
    the reduction range [lo, hi), added to out if acc; mr is 1, 8 or MR."""
    nblk, _, mr = ap.shape
    nr = wp.shape[2]
    lanes_ = _VECTOR_BYTES // wp.itemsize
    for p in range(npan):
        for blk in range(nblk):
            a = ap[blk, lo:hi]
            w = wp[p, lo:hi]
            c = out[blk * mr:(blk + 1) * mr, p * nr:(p + 1) * nr]
            if mr == 1 and nr < _GEMV_NV * lanes_:
                _gemv_half(a, w, c, acc)
            elif mr == 1:
                _gemv_block(a, w, c, acc)
            elif mr == 8:
                _gemm8_block(a, w, c, acc)
            else:
                gemm_block(a, w, c, acc)


@njit(**_JIT)
def _pack_gate_panels(w, gates, u0, u1, wp):
    """Forward weights of units [u0, u1): wp (P, K, NR) panels of the (K, gates*nu) matrix
    whose column q*nu + u is row q*H + u0 + u of w (G*H, K), C-contiguous (zero past the
    last column): one run of rows per gate, cut at the panel edges."""
    hidden = w.shape[0] // gates
    nu = u1 - u0
    npan, k, nr = wp.shape
    for q in range(gates):
        c = q * nu                    # the run's first column, and its rows' first row
        row = q * hidden + u0
        while c < (q + 1) * nu:
            p = c // nr
            m = min((q + 1) * nu - c, (p + 1) * nr - c)
            _pack_run(w, row, m, wp, p, c - p * nr)
            c += m
            row += m
    last = gates * nu - (npan - 1) * nr
    for l in range(k):
        _fill(wp[npan - 1, l, last:], 0)


@njit(inline="always")
def _pack_state(h, mask, b, ap, u0, u1):
    """Row panel entry of row b: ap[b // mr, u, b % mr] = h[u] (* mask[b, u]), u in [u0, u1)."""
    mr = ap.shape[2]
    blk = ap[b // mr]
    i = np.uint64(b % mr)
    o = np.uint64(u0)
    if mask.shape[0] == 0:
        for u in range(np.uint64(u1 - u0)):
            blk[o + u, i] = h[o + u]
    else:
        m = mask[b]
        for u in range(np.uint64(u1 - u0)):
            blk[o + u, i] = h[o + u] * m[o + u]


@njit(inline="always")
def _add_row(d, r):
    for j in range(d.shape[0]):
        d[j] += r[j]


@njit(inline="always")
def _add_row_masked(d, r, m):
    for j in range(d.shape[0]):
        d[j] += r[j] * m[j]


@njit(**_JIT)
def _add_recurrent_units(dh, dhr, mask, lengths, t, u0, u1):
    """dh[b, u] += dhr[b, u - u0] (* mask) for rows active at step t (an inactive row's
    state passed through unchanged, so its gradient does too)."""
    for b in range(dh.shape[0]):
        if t < lengths[b]:
            if mask.shape[0] == 0:
                _add_row(dh[b, u0:u1], dhr[b, :u1 - u0])
            else:
                _add_row_masked(dh[b, u0:u1], dhr[b, :u1 - u0], mask[b, u0:u1])


@njit(inline="always")
def _pack_gate_row(d, b, ap, gates, hidden, u0, u1):
    """Row panel entry of row b for the backward product: ap[b // mr, q*H + u, b % mr] =
    d[q*H + u] for every gate q and unit u in [u0, u1)."""
    mr = ap.shape[2]
    blk = ap[b // mr]
    i = np.uint64(b % mr)
    for q in range(gates):
        o = np.uint64(q * hidden + u0)
        for j in range(np.uint64(u1 - u0)):
            blk[o + j, i] = d[o + j]


def _unit_bounds(hidden, nthreads, itemsize):
    """Unit ranges of the threads: equal shares, cut at whole cache lines of a state row
    (so no line of a state, output or gate row is written by two threads) where every
    share spans at least four lines; shorter rows are cut evenly."""
    even = [k * hidden // nthreads for k in range(nthreads + 1)]
    q = _LINE // itemsize
    if hidden < 4 * nthreads * q:            # short rows: the balance matters more
        return np.array(even, dtype=np.int64)
    cut = [0] + [(b + q // 2) // q * q for b in even[1:-1]] + [hidden]
    return np.array(cut, dtype=np.int64)


_layer_checked = []


def _thread_settings():
    """numba's thread count and parallel chunk size, for the calling thread. The public
    getters take two process-wide locks on every call (together about 2 us, some 2% of a
    batch-1 sequence of 100 steps); once numba's thread pool runs, the raw getters they
    wrap give the same answers in a tenth of that. Before, or where a numba version lacks
    them, the public ones (which start the pool)."""
    raw_n = getattr(_parallel, "_get_num_threads", None)
    raw_chunk = getattr(_parallel, "_get_parallel_chunksize", None)
    if callable(raw_n) and callable(raw_chunk):
        try:
            return int(raw_n()), int(raw_chunk())
        except (TypeError, ValueError):     # a numba whose raw getters changed shape
            pass
    return get_num_threads(), get_parallel_chunksize()


def _barrier_threads():
    """Threads a time loop may share through spin barriers: numba's thread count where a
    parallel region's threads all run at once (the OpenMP and workqueue layers) with one
    iteration each (the default chunk size: a larger one could queue two barrier parties on
    one thread, which would then wait for itself forever), else 1."""
    n, chunk = _thread_settings()
    if n < 2 or chunk != 0:
        return 1
    if not _layer_checked:
        _fill_par(np.empty(2))                  # starts the pool, so the layer is known
        _layer_checked.append(threading_layer() in ("omp", "workqueue"))
    return n if _layer_checked[0] else 1


@njit(parallel=True, **_JIT)
def _fill_par(a):
    for i in prange(a.shape[0]):
        a[i] = 0


class _Plan:
    """How a time loop runs: one thread per unit range (``units``), row blocks of height
    mr (1 for one or two batch rows: matrix-vector products; 8 or MR) against weight
    panels nr wide, and the buffers the threads share: the row panels ap (2, nblk, K, mr)
    (zero rows past the batch), the weight panels wp (threads, P, K, nr), each thread
    packing its own, and the step counters. Built once per shape and Python thread (see
    _plan); wp is scratch, taken again for every call."""

    def __init__(self, batch, hidden, k, per_unit, n, dtype):
        itemsize = dtype.itemsize
        # units and the step counters each on lines of their own: a counter is written at
        # every step, and a neighbour sharing its line would be pulled between the cores
        self.units = _empty((n + 1,), np.int64)
        self.units[:] = _unit_bounds(hidden, n, itemsize)
        self.cols = per_unit * int(np.diff(self.units).max())  # a thread's product columns
        self.mr, nv = (1, _GEMV_NV) if batch < 3 else (MR, NV)
        if batch < 3 and self.cols <= _GEMV_NV // 2 * lanes(itemsize):
            nv = _GEMV_NV // 2                                  # no half-empty panel
        if batch >= 3 and _MR8 and -(-batch // 8) * 8 <= -(-batch // MR) * MR:
            self.mr, nv = 8, 3
        self.nr = nv * lanes(itemsize)
        self.proj_nr = block_cols(itemsize)                     # the input projection's panels
        self.k, self.dtype = k, dtype
        self.ap = _empty((2, -(-batch // self.mr), k, self.mr), dtype, zero=True)
        self.flags = _empty((n * _FLAG_STRIDE,), np.int64, zero=True)

    def input_panels(self, inputs):
        """Scratch for each thread's panels of its columns of the input weight (G*H, inputs)."""
        nr = self.proj_nr
        return _scratch("input panels", (self.units.shape[0] - 1, -(-self.cols // nr), inputs, nr), self.dtype)

    def run(self, serial_fn, parallel_fn, *args):
        """serial_fn(*args, ap, wp, flags, units, 0) on one thread, or parallel_fn(*args,
        ap, wp, flags, units), thread k taking the units [units[k], units[k+1])."""
        n = self.units.shape[0] - 1
        wp = _scratch("panels", (n, -(-self.cols // self.nr), self.k, self.nr), self.dtype)
        self.flags.fill(0)
        if n == 1:
            serial_fn(*args, self.ap, wp, self.flags, self.units, 0)
        else:
            parallel_fn(*args, self.ap, wp, self.flags, self.units)


def _plan(batch, hidden, k, per_unit, work, dtype):
    """The _Plan of a time loop over (batch, hidden) whose product has k rows and
    per_unit columns per hidden unit; work: its multiply-adds (small loops run on one
    thread). Plans are kept per shape and Python thread: building one costs several
    microseconds of Python, a few percent of a short sequence at batch 1."""
    dtype = np.dtype(dtype)
    n = min(_barrier_threads(), max(1, hidden // 8)) if work >= _PARALLEL_WORK else 1
    key = (batch, hidden, k, per_unit, n, dtype)
    plans = _workspace.__dict__.setdefault("plans", {})
    plan = plans.get(key)
    if plan is None:
        _block_cols(dtype)          # the cache check, before the dtype's first loop
        if len(plans) >= 16:        # each holds its row panels
            plans.clear()
        plan = plans[key] = _Plan(batch, hidden, k, per_unit, n, dtype)
    return plan


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
#
# The gate math of a step runs in small functions on 1-D contiguous views, indexed from
# 0: loops over an offset range of a larger array stayed scalar (LLVM cannot rule out
# negative-index wrap-around). Each call is one SIMD sweep whose set-up and latency cost
# about as much as a few vectors of math, so the sweeps are made few and long: row by row
# where rows are long, over all rows at once where they are short.

_ROW_SWEEP = 512   # bytes of a state row (all H units) from which the gate math goes row by row


@njit(inline="always")
def _row_by_row(batch, hidden, itemsize):
    """Whether the gate math goes row by row (see _lstm_cells). Decided on the whole row,
    not on a thread's share of it, so that every thread count takes the same form: the two
    forms share one expression per value, but on some CPUs (Intel Emerald Rapids, float32)
    the compiled forms still differed in the last bit. With two threads the line falls at
    256 bytes of a thread's units, where row by row measured faster (batch 32)."""
    return batch <= 2 or hidden * itemsize >= _ROW_SWEEP


@njit(inline="always")
def _lstm_cells(g, gh, bias, c_in, c, h, y, hidden, u0, u1, z, tc):
    """One step of units [u0, u1), every row: g (B, 4H) holds x W_ih^T on entry, the gate
    activations i, f, g, o on return; gh (>=B, >=4nu) the recurrent products of these
    units (gate q at columns [q*nu, (q+1)*nu)); c_in, c, h, y (B, H); z (4, B, nu) and
    tc (B, nu) C-contiguous scratch (unused, and may be empty, row by row).
    c = f c_in + i g;  h = y = o tanh(c).

    Rows of at least _ROW_SWEEP bytes (all H units), or batches of one or two rows, go row
    by row in six SIMD sweeps (_lstm_row). Shorter rows of larger batches first gather the
    pre-activations into z gate by gate, so each activation is one long sweep over every
    row (sigmoid over i and f together, tanh over g, sigmoid over o, tanh over c): per row
    and gate, their loops were short enough that their set-up cost as much as the math."""
    nu = u1 - u0
    batch = g.shape[0]
    if _row_by_row(batch, hidden, g.itemsize):
        for b in range(batch):
            _lstm_row(g[b], gh[b], bias, c_in[b], c[b], h[b], y[b], hidden, u0, u1)
        return
    for q in range(4):
        for b in range(batch):
            _preactivation(z[q, b], g[b, q * hidden + u0:q * hidden + u1], gh[b, q * nu:(q + 1) * nu],
                           bias[q * hidden + u0:q * hidden + u1])
    n = batch * nu
    zf = z.reshape(4 * n)
    _sigmoid_(zf[:2 * n])
    _tanh_(zf[2 * n:3 * n])
    _sigmoid_(zf[3 * n:])
    for b in range(batch):
        _lstm_cell_state(z[0, b], z[1, b], z[2, b], c_in[b, u0:u1], c[b, u0:u1], tc[b])
    _tanh_(tc.reshape(n))
    for b in range(batch):
        _lstm_output(z[3, b], tc[b], h[b, u0:u1], y[b, u0:u1])
    for q in range(4):
        for b in range(batch):
            _copy(g[b, q * hidden + u0:q * hidden + u1], z[q, b])


@njit(inline="always")
def _lstm_row(g, r, bias, c_in, c, h, y, hidden, u0, u1):
    """_lstm_cells of one row: g (4H,) turns into the activations in place, gate by gate
    (each activation reads x W_ih^T, the recurrent product r (>=4nu,) and the bias in the
    same sweep), then c and h. Six sweeps, the first four independent of each other. On
    their own, the gathered form (z: 16 loops, each a few vectors long, one after another)
    measured 30% slower at batch 1 and at batch 32 with 128 units per thread; inside the
    batch-1 time loop, bound by the stream of W_hh, the difference did not show."""
    nu = u1 - u0
    i, f = g[u0:u1], g[hidden + u0:hidden + u1]
    gg, o = g[2 * hidden + u0:2 * hidden + u1], g[3 * hidden + u0:3 * hidden + u1]
    _sigmoid_sum(i, r[:nu], bias[u0:u1])
    _sigmoid_sum(f, r[nu:2 * nu], bias[hidden + u0:hidden + u1])
    _tanh_sum(gg, r[2 * nu:3 * nu], bias[2 * hidden + u0:2 * hidden + u1])
    _sigmoid_sum(o, r[3 * nu:4 * nu], bias[3 * hidden + u0:3 * hidden + u1])
    _cell_update(i, f, gg, c_in[u0:u1], c[u0:u1])
    _cell_output(o, c[u0:u1], h[u0:u1], y[u0:u1])


# One expression each for both forms of the gate math (row by row, gathered), so the two
# compute the same thing; which form runs follows the shape alone (see _row_by_row).

@njit(inline="always")
def _gate_input(g, r, b):
    """A gate's pre-activation: x W_ih^T + the recurrent product + the bias."""
    return g + r + b


@njit(inline="always")
def _cell_value(i, f, gg, c_in):
    """c = f c_in + i g."""
    return f * c_in + i * gg


@njit(inline="always")
def _hidden_value(o, tc):
    """h = o tanh(c), tc = tanh(c)."""
    return o * tc


@njit(**_JIT)
def _sigmoid_sum(a, r, bias):
    """a = sigmoid(a + r + bias) in place: x W_ih^T, the recurrent product, the bias."""
    for j in range(a.shape[0]):
        a[j] = sigmoid(_gate_input(a[j], r[j], bias[j]))


@njit(**_JIT)
def _tanh_sum(a, r, bias):
    """a = tanh(a + r + bias) in place."""
    for j in range(a.shape[0]):
        a[j] = tanh(_gate_input(a[j], r[j], bias[j]))


@njit(**_JIT)
def _cell_update(i, f, gg, c_in, c):
    """c = f c_in + i g."""
    for j in range(c.shape[0]):
        c[j] = _cell_value(i[j], f[j], gg[j], c_in[j])


@njit(**_JIT)
def _cell_output(o, c, h, y):
    """h = y = o tanh(c)."""
    for j in range(h.shape[0]):
        hj = _hidden_value(o[j], tanh(c[j]))
        h[j] = hj
        y[j] = hj


@njit(inline="always")
def _preactivation(z, g, r, bias):
    """z = g + r + bias: x W_ih^T, the recurrent product, the bias."""
    for j in range(z.shape[0]):
        z[j] = _gate_input(g[j], r[j], bias[j])


@njit(inline="always")
def _lstm_cell_state(i, f, gg, c_in, c, tc):
    """c = tc = f c_in + i g."""
    for j in range(c.shape[0]):
        cj = _cell_value(i[j], f[j], gg[j], c_in[j])
        c[j] = cj
        tc[j] = cj


@njit(inline="always")
def _lstm_output(o, tc, h, y):
    """h = y = o tanh(c), tc holding tanh(c)."""
    for j in range(h.shape[0]):
        hj = _hidden_value(o[j], tc[j])
        h[j] = hj
        y[j] = hj


@njit(inline="always")
def _carry_rows(hs, cs, y, lengths, t, tin, tout, u0, u1):
    """Rows inactive at step t (t >= length): the states pass through, the output is zero
    (the gate math ran for them too; its results are discarded)."""
    for b in range(hs.shape[1]):
        if t >= lengths[b]:
            _copy(hs[tout, b, u0:u1], hs[tin, b, u0:u1])
            if cs.shape[0] > 0:
                _copy(cs[tout, b, u0:u1], cs[tin, b, u0:u1])
            _fill(y[t, b, u0:u1], 0)


@njit(inline="always")
def _pack_states(h, mask, ap, u0, u1):
    """Row panels of the next product: ap[b // mr, u, b % mr] = h[b, u] (* mask[b, u])."""
    for b in range(h.shape[0]):
        _pack_state(h[b], mask, b, ap, u0, u1)


@njit(inline="always")
def _prefetch_rows(g, y, c, h, gates, hidden, u0, u1):
    """Prefetch what a step's gate math of units [u0, u1) reads and writes, so it arrives
    during the recurrent product: the gate rows (written by the input projection, often
    on the other core) and the output rows (c may be empty: GRU)."""
    for b in range(g.shape[0]):
        gb = g[b]
        for q in range(gates):
            _prefetch_range(gb, q * hidden + u0, q * hidden + u1)
        _prefetch_range(y[b], u0, u1)
        _prefetch_range(h[b], u0, u1)
        if c.shape[0] > 0:
            _prefetch_range(c[b], u0, u1)


# --- the input projection inside the time loop (batches of one or two) ----------------
#
# At batch 1 or 2 a step's recurrent product is a matrix-vector product: it waits on the
# L2 cache for W_hh and leaves most multiply-add slots idle. So there each thread computes
# its own columns of x W_ih^T inside the loop: the projection is cut into units (a block
# of _PROJ_MR rows of x times one panel of the thread's W_ih columns, over one chunk of
# the input features) and each matrix-vector block of the product runs together with one
# unit (gemm_pair: the two interleaved in one loop). The units go in the order the steps
# need their rows, and before a step's gate math any unit its rows still lack runs alone.

_PROJ_MR = 4 if NV == 4 else 2         # rows of a unit: _PROJ_MR * NV accumulators (16, or
                                       # 4 with AVX2) next to the matrix-vector block's 8
_PROJ_GROUP = 4                        # row blocks sharing each chunk of W_ih panel (a power of 2)
_PROJ_MAX = 1 << 22                    # inputs (T*B*I values) up to which it is done so: each
                                       # thread packs all of x (a copy per thread)
_PROJ_UNITS = 1 << 16                  # and units per thread (a table row each)
_proj_block = make_gemm_block(_PROJ_MR, NV)
_pair_full = make_gemm_pair(1, _GEMV_NV, _PROJ_MR, NV, ahead=_FULL_AHEAD)
_pair_half = make_gemm_pair(1, _GEMV_NV // 2, _PROJ_MR, NV, ahead=_HALF_AHEAD)


def _proj_chunk_of(hidden):
    """Input features per unit: a unit's multiply-adds about those of the matrix-vector
    block it runs with (half of h: H/2 rows of 8 vectors). A function of the shape only,
    so the bits do not depend on the thread count."""
    return max(8, hidden * _GEMV_NV // (2 * _PROJ_MR * NV))


_proj_chunk = njit(inline="always")(_proj_chunk_of)


def _in_loop_projection(plan, x, hidden):
    """Whether the time loop's threads compute x W_ih^T (batches of one or two rows, a
    non-empty input of at most _PROJ_MAX values, a unit table of at most _PROJ_UNITS rows)."""
    steps, batch, inputs = x.shape
    if plan.mr != 1 or not 0 < x.size <= _PROJ_MAX:
        return False
    units = -(-steps * batch // _PROJ_MR) * -(-plan.cols // plan.proj_nr) * \
        -(-inputs // _proj_chunk_of(hidden))
    return units <= _PROJ_UNITS


@njit(inline="always")
def _group_end(pos, nrb):
    """The end of the group of row blocks holding position pos (in the order the blocks
    run). Groups end at 1, 2, 4, ... up to _PROJ_GROUP (a power of two), then every
    _PROJ_GROUP blocks: the first steps need their rows before the units run alongside
    the product can have made them, and a whole group's units finish together."""
    if pos >= _PROJ_GROUP:
        return min(nrb, (pos // _PROJ_GROUP + 1) * _PROJ_GROUP)
    end = 1
    while end <= pos:
        end *= 2
    return min(end, nrb)


@njit(**_JIT)
def _unit_table(nrb, npx, nch, m, mr, nr, hidden, u0, nu, reverse):
    """The projection units in the order they run: rows (row block, panel, chunk, column
    of the gates' block or -1 for the tile, index of the tile). Units go group by group
    of row blocks (see _group_end; the last rows first in reverse); inside a group, panel by
    panel and chunk by chunk, the group's row blocks in turn, so a chunk of W_ih panel
    comes from L2 once and serves the group from L1. A unit writes into the gates where
    the panel's columns are one run of one gate and the block has all its rows, else into
    its row block's tile (copied out when done). Made once per call: the divisions would
    cost more than a unit's arithmetic in the loop."""
    tab = np.empty((nrb * npx * nch, 5), np.int64)
    v = 0
    g0 = 0
    while g0 < nrb:
        size = _group_end(g0, nrb) - g0
        for p in range(npx):
            c0 = p * nr
            q = c0 // nu
            for c in range(nch):
                for i in range(size):
                    rb = nrb - 1 - (g0 + i) if reverse else g0 + i
                    direct = min(mr, m - rb * mr) == mr and c0 + nr <= (q + 1) * nu
                    tab[v, 0] = rb
                    tab[v, 1] = p
                    tab[v, 2] = c
                    tab[v, 3] = q * hidden + u0 + c0 - q * nu if direct else -1
                    tab[v, 4] = i
                    v += 1
        g0 += size
    return tab


@njit(inline="always")
def _unit(v, tab, apx, xpan, g2, tiles, kcp):
    """Operands of projection unit v (see _unit_table): (a, b, out, accumulate, done,
    direct, r0, rows, c0, tile). The projection's arrays, here and in the functions
    below: the unit table tab, x's rows packed in blocks apx (nrb, I, _PROJ_MR), the
    thread's W_ih panels xpan (npx, I, NR), the gates g2 (T*B, 4H), the tiles; kcp the
    chunk of input features. (Passed one by one: as a tuple of arrays the loop measured
    slower.)"""
    k = apx.shape[1]
    mr = apx.shape[2]
    nr = xpan.shape[2]
    rb, p, c, col, i = tab[v, 0], tab[v, 1], tab[v, 2], tab[v, 3], tab[v, 4]
    r0 = rb * mr
    k0 = c * kcp
    k1 = min(k, k0 + kcp)
    tile = tiles[i]
    direct = col >= 0
    out = g2[r0:r0 + mr, col:col + nr] if direct else tile
    return (apx[rb, k0:k1], xpan[p, k0:k1], out, c > 0, k1 == k, direct, r0, min(mr, g2.shape[0] - r0),
            p * nr, tile)


@njit(inline="always")
def _unit_done(tile, r0, rows, c0, g2, hidden, u0, nu):
    """Copy a finished tile into the gates: one run per gate and row."""
    nr = tile.shape[1]
    c1 = min(c0 + nr, 4 * nu)
    c = c0
    while c < c1:
        q = c // nu
        end = min(c1, (q + 1) * nu)
        dst = q * hidden + u0 + c - q * nu
        for i in range(rows):
            _copy(g2[r0 + i, dst:dst + end - c], tile[i, c - c0:end - c0])
        c = end


@njit(inline="always")
def _units_alone(v, need, tab, apx, xpan, g2, tiles, hidden, u0, nu, kcp):
    """Run units v, v+1, ... up to need (exclusive) on their own; returns the next unit."""
    while v < need:
        a, b, out, acc, done, direct, r0, rows, c0, tile = _unit(v, tab, apx, xpan, g2, tiles, kcp)
        _proj_block(a, b, out, acc)
        if done and not direct:
            _unit_done(tile, r0, rows, c0, g2, hidden, u0, nu)
        v += 1
    return v


@njit(inline="always")
def _paired_product(ap, wp, npan, out, lo, hi, acc, v, tab, apx, xpan, g2, tiles, hidden, u0, nu, kcp):
    """_panel_product for one-row blocks (mr = 1), each block run together with the next
    projection unit while any is left (gemm_pair); returns the next unit."""
    nblk = ap.shape[0]
    nr = wp.shape[2]
    half = nr < _GEMV_NV * _VECTOR_BYTES // wp.itemsize
    for p in range(npan):
        for blk in range(nblk):
            a = ap[blk, lo:hi]
            w = wp[p, lo:hi]
            c = out[blk:blk + 1, p * nr:(p + 1) * nr]
            if v < tab.shape[0]:
                a2, b2, o2, acc2, done, direct, r0, rows, c0, tile = _unit(v, tab, apx, xpan, g2, tiles, kcp)
                if half:
                    _pair_half(a, w, c, acc, a2, b2, o2, acc2)
                else:
                    _pair_full(a, w, c, acc, a2, b2, o2, acc2)
                if done and not direct:
                    _unit_done(tile, r0, rows, c0, g2, hidden, u0, nu)
                v += 1
            elif half:
                _gemv_half(a, w, c, acc)
            else:
                _gemv_block(a, w, c, acc)
    return v


@njit(inline="always")
def _units_needed(t, batch, tab, apx, reverse):
    """Units that must have run before step t's gate math: those of every group up to
    the one holding step t's rows (in the units' order)."""
    nrb, mr = apx.shape[0], apx.shape[2]
    per_block = tab.shape[0] // max(nrb, 1)
    pos = nrb - 1 - (t * batch) // mr if reverse else ((t + 1) * batch - 1) // mr
    return _group_end(pos, nrb) * per_block


@njit(inline="always")
def _product(ap, wp, npan, out, lo, hi, acc, v, tab, apx, xpan, g2, tiles, hidden, u0, nu, kcp):
    """The recurrent product over h's units [lo, hi) (see _panel_product); one-row blocks
    run together with projection units (see _paired_product). Returns the next unit."""
    if ap.shape[2] == 1:
        return _paired_product(ap, wp, npan, out, lo, hi, acc, v, tab, apx, xpan, g2, tiles, hidden, u0, nu, kcp)
    _panel_product(ap, wp, npan, out, lo, hi, acc)
    return v


@njit(**_JIT)
def _lstm_fwd_units(x, w_ih, xp, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, ap, wp, flags, units, k):
    """Thread k's share of the forward: units [units[k], units[k+1]) of every gate, all rows.
    gates (T, B, 4H) holds x W_ih^T on entry, the gate activations on return; or, when x
    (T, B, I) is not empty (batches of one or two rows, see _in_loop_projection), the
    thread computes its own columns of x W_ih^T inside the loop, in units run alongside
    the recurrent product (xp: scratch for its W_ih panels (threads, P, I, NR)).

    The recurrent product is two partial sums, over h's units [0, H/2) and [H/2, H), the
    second added onto the first: a thread starts on the half holding its own units, whose
    states it has just written, while the other threads finish theirs (with two threads
    the wait for the other one's states is hidden behind half a product). The halves do
    not depend on the thread count, and a + b == b + a: the same bits in either order."""
    # views that count no references (see nbdl.kernels._views): the threads slice these
    # shared arrays at every step
    x, w_ih, xp, w_hh, bias, hs, cs = (unmanaged(x), unmanaged(w_ih), unmanaged(xp), unmanaged(w_hh),
                                       unmanaged(bias), unmanaged(hs), unmanaged(cs))
    gates, y, lengths, mask, ap, wp, flags, units = (unmanaged(gates), unmanaged(y), unmanaged(lengths),
                                                     unmanaged(mask), unmanaged(ap), unmanaged(wp),
                                                     unmanaged(flags), unmanaged(units))
    u0, u1 = units[k], units[k + 1]
    nu = u1 - u0
    steps, batch, g4 = gates.shape
    hidden = g4 // 4
    mr = ap.shape[3]
    nr = wp.shape[3]
    npan = -(-4 * (u1 - u0) // nr)
    # the projection (when x is given; else no units): x's rows packed in blocks, this
    # thread's W_ih panels, the unit table
    m = x.shape[0] * x.shape[1]
    nrb = -(-m // _PROJ_MR)
    npx = -(-4 * nu // xp.shape[3]) if m > 0 else 0
    kcp = _proj_chunk(hidden)
    zn = 0 if _row_by_row(batch, hidden, gates.itemsize) else nu     # the gathered gate math's units
    # this thread's buffers, kept alive to the end (their views count no references)
    own = (np.empty((nrb, x.shape[2], _PROJ_MR), gates.dtype),
           _unit_table(nrb, npx, -(-x.shape[2] // kcp), m, _PROJ_MR, xp.shape[3], hidden, u0, nu, reverse),
           np.empty((_PROJ_GROUP, _PROJ_MR, xp.shape[3]), gates.dtype),
           np.empty((ap.shape[1] * mr, npan * nr), gates.dtype),        # the recurrent product
           np.empty((4, batch, zn), gates.dtype),                       # gate math scratch
           np.empty((batch, zn), gates.dtype))
    apx, tab, tiles, gh = unmanaged(own[0]), unmanaged(own[1]), unmanaged(own[2]), unmanaged(own[3])
    z, tc = unmanaged(own[4]), unmanaged(own[5])
    xpan = xp[k, :npx]
    g2 = gates.reshape(steps * batch, g4)
    v = 0                                   # the next projection unit
    if m > 0:
        _pack_rows(x.reshape(m, x.shape[2]), apx, 0, nrb, m)
        _pack_gate_panels(w_ih, 4, u0, u1, xpan)
    wk = wp[k, :npan]
    _pack_gate_panels(w_hh, 4, u0, u1, wk)
    half = hidden // 2
    first = (0, half) if u0 < half else (half, hidden)      # the half holding u0
    second = (half, hidden) if u0 < half else (0, half)
    _pack_states(hs[steps if reverse else 0], mask, ap[0], u0, u1)
    _signal(flags, k, 1)
    _wait_for(flags, units, first[0], first[1], 1)
    v = _product(ap[0], wk, npan, gh, first[0], first[1], False, v, tab, apx, xpan, g2, tiles, hidden, u0, nu,
                 kcp)
    for s in range(steps):
        t, tin, tout = _forward_slots(s, steps, reverse)
        _prefetch_rows(gates[t], y[t], cs[tout], hs[tout], 4, hidden, u0, u1)
        _wait_for(flags, units, second[0], second[1], s + 1)
        v = _product(ap[s % 2], wk, npan, gh, second[0], second[1], True, v, tab, apx, xpan, g2, tiles, hidden,
                     u0, nu, kcp)
        if m > 0:           # rows this step needs and no unit has made yet
            v = _units_alone(v, _units_needed(t, batch, tab, apx, reverse), tab, apx, xpan, g2, tiles, hidden,
                             u0, nu, kcp)
        _lstm_cells(gates[t], gh, bias, cs[tin], cs[tout], hs[tout], y[t], hidden, u0, u1, z, tc)
        _carry_rows(hs, cs, y, lengths, t, tin, tout, u0, u1)
        if s + 1 < steps:
            _pack_states(hs[tout], mask, ap[(s + 1) % 2], u0, u1)
            _signal(flags, k, s + 2)
            _wait_for(flags, units, first[0], first[1], s + 2)
            v = _product(ap[(s + 1) % 2], wk, npan, gh, first[0], first[1], False, v, tab, apx, xpan, g2, tiles,
                         hidden, u0, nu, kcp)
    keep_alive(own)


@njit(parallel=True, **_JIT)
def _lstm_fwd(x, w_ih, xp, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, ap, wp, flags, units):
    """_lstm_fwd_units of the unit ranges [units[k], units[k+1]), one per thread."""
    for k in prange(units.shape[0] - 1):
        _lstm_fwd_units(x, w_ih, xp, w_hh, bias, hs, cs, gates, y, lengths, mask, reverse, ap, wp, flags,
                        units, k)


# The backward's gate math runs in sweeps: each over every row of the thread's units, and
# each of at most four arrays. One loop over all fourteen arrays stayed scalar (LLVM's
# checks that the arrays do not overlap grow with their pairs); a sweep per row, a few
# vectors long, spent as much on its start and latency as on its math (one step of 32 rows
# by 128 units: 9.0 us in sweeps per row, 7.2 us in sweeps over all rows). The sweeps stop
# after the last row active at the step and run on the inactive rows before it too (rows
# past their length, whose gates the forward also computed): their dh, dc are set aside
# first and put back after, their d is zeroed, so the sweeps need no test per row (which
# measured twice as slow). With rows in order of decreasing length, as PyTorch packs
# them, no inactive row takes the gate math; in the worst order (one long row last) all do.

_ROWS_AHEAD = 4     # rows of a backward step whose operands are asked for ahead of their math


@njit(inline="always")
def _prefetch_grad_row(g, dy, c_in, c, hidden, u0, u1):
    """Prefetch what one row's backward step of units [u0, u1) reads: its gate activations,
    dy and the two cell states. (_prefetch_rows on a one-row slice measured 3% slower in
    the backward: a slice of a managed array counts references, twice as many slices.)"""
    for q in range(4):
        _prefetch_range(g, q * hidden + u0, q * hidden + u1)
    _prefetch_range(dy, u0, u1)
    _prefetch_range(c_in, u0, u1)
    _prefetch_range(c, u0, u1)


@njit(**_JIT)
def _tanh_rows(tc, c, g, dy, c_in, hidden, u0, u1):
    """tc[r, u] = tanh(c[r, u]) for u in [u0, u1); tc, c, dy, c_in (B, H), g (B, 4H), all
    of one step. The step's first sweep, so each row first asks for the operands of the row
    _ROWS_AHEAD on: the step's rows were prefetched before the recurrent product, but that
    product streams half a megabyte of weight panels per thread through the caches in
    between (at B=32, H=256 waiting for them was about half of the gate math; the row-ahead
    requests took 3-5% off the backward)."""
    for r in range(tc.shape[0]):
        a = r + _ROWS_AHEAD
        if a < tc.shape[0]:
            _prefetch_grad_row(g[a], dy[a], c_in[a], c[a], hidden, u0, u1)
        tr, cr = tc[r, u0:u1], c[r, u0:u1]
        for j in range(tr.shape[0]):
            tr[j] = tanh(cr[j])


@njit(**_JIT)
def _add_rows(a, b, u0, u1):
    """a[r, u] += b[r, u] for u in [u0, u1)."""
    for r in range(a.shape[0]):
        ar, br = a[r, u0:u1], b[r, u0:u1]
        for j in range(ar.shape[0]):
            ar[j] += br[j]


@njit(**_JIT)
def _sigmoid_grad_rows(d, dq, a, b, bq, s, sq, u0, u1):
    """d[r, dq+u] = a[r, u] b[r, bq+u] s[r, sq+u] (1 - s[r, sq+u]) for u in [u0, u1): the
    gradient of a sigmoid gate s (columns from sq on), times what it multiplies."""
    one = d.dtype.type(1)
    for r in range(d.shape[0]):
        dr, ar = d[r, dq + u0:dq + u1], a[r, u0:u1]
        br, sr = b[r, bq + u0:bq + u1], s[r, sq + u0:sq + u1]
        for j in range(dr.shape[0]):
            dr[j] = ar[j] * br[j] * sr[j] * (one - sr[j])


@njit(**_JIT)
def _cell_grad_rows(dc, dh, g, oq, tc, u0, u1):
    """dc += dh o (1 - tanh(c)^2), o = g[:, oq + u]."""
    one = dc.dtype.type(1)
    for r in range(dc.shape[0]):
        dcr, dhr, o, tr = dc[r, u0:u1], dh[r, u0:u1], g[r, oq + u0:oq + u1], tc[r, u0:u1]
        for j in range(dcr.shape[0]):
            dcr[j] = dcr[j] + dhr[j] * o[j] * (one - tr[j] * tr[j])


@njit(**_JIT)
def _candidate_grad_rows(d, dc, g, iq, gq, u0, u1):
    """dg = dc i (1 - g^2) into d[:, gq + u], with i = g[:, iq + u] and g = g[:, gq + u]."""
    one = d.dtype.type(1)
    for r in range(d.shape[0]):
        dr, dcr = d[r, gq + u0:gq + u1], dc[r, u0:u1]
        i, gg = g[r, iq + u0:iq + u1], g[r, gq + u0:gq + u1]
        for j in range(dr.shape[0]):
            dr[j] = dcr[j] * i[j] * (one - gg[j] * gg[j])


@njit(**_JIT)
def _carry_cell_grad_rows(dc, dh, g, fq, u0, u1):
    """dc = dc f (the gradient reaching c_in), f = g[:, fq + u]; dh = 0."""
    for r in range(dc.shape[0]):
        dcr, dhr, f = dc[r, u0:u1], dh[r, u0:u1], g[r, fq + u0:fq + u1]
        for j in range(dcr.shape[0]):
            dcr[j] = dcr[j] * f[j]
            dhr[j] = 0


@njit(**_JIT)
def _bias_grad_rows(dbias, d, lengths, t, hidden, u0, u1):
    """dbias[q*H + u] += d[r, q*H + u] over the rows active at step t, in row order; the
    rows inactive at t get d = 0."""
    for q in range(4):
        lo, hi = q * hidden + u0, q * hidden + u1
        for r in range(d.shape[0]):
            if t < lengths[r]:
                _add_row(dbias[lo:hi], d[r, lo:hi])
            else:
                _fill(d[r, lo:hi], 0)


@njit(inline="always")
def _rows_through_last_active(lengths, t):
    """1 + the last row active at step t (0 if none): with rows in order of decreasing
    length (PyTorch's packed sequences), only active rows take the gate math."""
    n = lengths.shape[0]
    while n > 0 and t >= lengths[n - 1]:
        n -= 1
    return n


@njit(**_JIT)
def _set_aside(dh, dc, kept, lengths, t, u0, u1):
    """kept[0, r], kept[1, r] = dh[r], dc[r] (units [u0, u1)) for the rows inactive at t."""
    for r in range(dh.shape[0]):
        if t >= lengths[r]:
            _copy(kept[0, r, u0:u1], dh[r, u0:u1])
            _copy(kept[1, r, u0:u1], dc[r, u0:u1])


@njit(**_JIT)
def _put_back(dh, dc, kept, lengths, t, u0, u1):
    """The inverse of _set_aside: an inactive row's state gradients pass through unchanged."""
    for r in range(dh.shape[0]):
        if t >= lengths[r]:
            _copy(dh[r, u0:u1], kept[0, r, u0:u1])
            _copy(dc[r, u0:u1], kept[1, r, u0:u1])


@njit(**_JIT)
def _lstm_grads(d, g, dy, c_in, c, dh, dc, dbias, lengths, t, tc, kept, hidden, u0, u1):
    """One backward step of units [u0, u1), every row, from the step's gate activations
    g (B, 4H), output gradient dy (B, H) and cell states c_in, c (B, H) entering and leaving
    it: d (B, 4H) = dL/d(pre-activations) (zero for rows inactive at t), also summed into
    the bias gradient dbias (4H,) (steps in backward order, rows in order); dh, dc (B, H)
    become the gradients w.r.t. the step's input states (dh: its direct part, zero; the
    recurrent part comes later). Scratch: tc (B, H) for tanh(c), kept (2, B, H) for the
    inactive rows' dh, dc. The sweeps run through the last row active at t, inactive rows
    before it included (see above)."""
    h1, h2, h3 = hidden, 2 * hidden, 3 * hidden
    n = _rows_through_last_active(lengths, t)      # the rows after those need no gate math
    g, dy, c_in, c, dh, dc, tc, dn = g[:n], dy[:n], c_in[:n], c[:n], dh[:n], dc[:n], tc[:n], d[:n]
    _set_aside(dh, dc, kept, lengths, t, u0, u1)
    _tanh_rows(tc, c, g, dy, c_in, hidden, u0, u1)
    _add_rows(dh, dy, u0, u1)                               # dL/dh, the output's part included
    _sigmoid_grad_rows(dn, h3, dh, tc, 0, g, h3, u0, u1)    # do = dh tanh(c) o (1 - o)
    _cell_grad_rows(dc, dh, g, h3, tc, u0, u1)              # dL/dc
    _sigmoid_grad_rows(dn, 0, dc, g, h2, g, 0, u0, u1)      # di = dc g i (1 - i)
    _sigmoid_grad_rows(dn, h1, dc, c_in, 0, g, h1, u0, u1)  # df = dc c_in f (1 - f)
    _candidate_grad_rows(dn, dc, g, 0, h2, u0, u1)          # dg = dc i (1 - g^2)
    _carry_cell_grad_rows(dc, dh, g, h1, u0, u1)
    _bias_grad_rows(dbias, d, lengths, t, hidden, u0, u1)   # every row: the inactive ones get d = 0
    _put_back(dh, dc, kept, lengths, t, u0, u1)


@njit(**_JIT)
def _prefetch_cols(dgt, c0, n, gates, hidden, u0, u1):
    """Prefetch dgt[q*H + u, c0:c0 + n] for the units [u0, u1) of every gate (what
    _store_cols writes next)."""
    for q in range(gates):
        for j in range(q * hidden + u0, q * hidden + u1):
            _prefetch_range(dgt[j], c0, c0 + n)


@njit(inline="always")
def _store_rect(d, dgt, c0, j0, j1, b0, b1):
    """dgt[j, c0 + b] = d[b, j] for j0 <= j < j1, b0 <= b < b1, value by value, in runs of
    _TILE columns (so the rows of d and dgt involved stay in L1)."""
    base = np.uint64(c0)
    for jt in range(j0, j1, _TILE):
        for b in range(b0, b1):
            src = d[b]
            ub = base + np.uint64(b)
            for j in range(np.uint64(jt), np.uint64(min(j1, jt + _TILE))):
                dgt[j, ub] = src[j]


@njit(**_JIT)
def _store_cols(d, dgt, c0, gates, hidden, u0, u1):
    """dgt[q*H + u, c0 + b] = d[b, q*H + u] for the units [u0, u1) of every gate: a step's
    gradients d (B, gates*H) into the transposed layout dgt (gates*H, T*B) the weight-
    gradient products read row by row; both C-contiguous (transpose_tile addresses them by
    flat offsets). Whole lanes x lanes tiles are transposed in registers (a vector store per
    row of dgt and tile; value by value this copy took 5% of the backward at B=32 and
    H=256); the edges value by value."""
    batch, width = d.shape
    ldd = dgt.shape[1]
    lanes_ = _VECTOR_BYTES // d.itemsize
    nu = u1 - u0
    b_full = batch - batch % lanes_
    j_full = nu - nu % lanes_
    for q in range(gates):
        j0 = q * hidden + u0
        for jt in range(0, j_full, lanes_):
            for bt in range(0, b_full, lanes_):
                transpose_tile(d, bt * width + j0 + jt, width, dgt, (j0 + jt) * ldd + c0 + bt, ldd)
        _store_rect(d, dgt, c0, j0, j0 + j_full, b_full, batch)      # rows past the tiles
        _store_rect(d, dgt, c0, j0 + j_full, j0 + nu, 0, batch)      # columns past the tiles


@njit(**_JIT)
def _pack_from_cols(dgt, c0, batch, ap, gates, hidden, u0, u1):
    """Row panels of the backward product from a step's transposed gradients:
    ap[b // mr, j, b % mr] = dgt[j, c0 + b] for the gate columns j of units [u0, u1)
    (runs of mr contiguous values; rows past the batch stay zero)."""
    nblk, _, mr = ap.shape
    for q in range(gates):
        for j in range(q * hidden + u0, q * hidden + u1):
            src = dgt[j]
            uj = np.uint64(j)
            for blk in range(nblk):
                base = np.uint64(c0 + blk * mr)
                for i in range(np.uint64(min(mr, batch - blk * mr))):
                    ap[blk, uj, i] = src[base + i]


@njit(**_JIT)
def _lstm_bwd_units(dy, dh, dc, cs, gates, w_hh, dgt, dbias, lengths, mask, reverse, ap, wp, flags, units, k):
    """Thread k's share of the backward: units [u0, u1). dh, dc (B, H): in dL/dh_n,
    dL/dc_n; out dL/dh0, dL/dc0. dgt (4H, T*B): dL/d(pre-activations), column t*B + b
    for row b at step t; dbias (4H,), zero on entry: their sum over steps and rows."""
    dy, dh, dc, cs, gates, w_hh, dgt = (unmanaged(dy), unmanaged(dh), unmanaged(dc), unmanaged(cs),
                                        unmanaged(gates), unmanaged(w_hh), unmanaged(dgt))
    dbias, lengths, mask, ap, wp, flags, units = (unmanaged(dbias), unmanaged(lengths), unmanaged(mask),
                                                  unmanaged(ap), unmanaged(wp), unmanaged(flags),
                                                  unmanaged(units))   # see _lstm_fwd_units
    u0, u1 = units[k], units[k + 1]
    steps, batch, hidden = dy.shape
    mr = ap.shape[3]
    nr = wp.shape[3]
    nu = u1 - u0
    npan = -(-nu // nr)
    wk = wp[k, :npan]
    _pack_panels(w_hh[:, u0:u1], wk, 0, npan)
    own = (np.empty((ap.shape[1] * mr, npan * nr), dy.dtype),     # the recurrent product
           np.empty((batch, 4 * hidden), dy.dtype),                # this step's gradients (own units only)
           np.empty((batch, hidden), dy.dtype),                    # tanh(c) (own units only)
           np.empty((2, batch, hidden), dy.dtype))                 # inactive rows' dh, dc (own units only)
    dhr, d, tc, kept = unmanaged(own[0]), unmanaged(own[1]), unmanaged(own[2]), unmanaged(own[3])
    for s in range(steps):
        t, tin, tout = _backward_slots(s, steps, reverse)
        _lstm_grads(d, gates[t], dy[t], cs[tin], cs[tout], dh, dc, dbias, lengths, t, tc, kept, hidden,
                    u0, u1)
        _store_cols(d, dgt, t * batch, 4, hidden, u0, u1)
        if mr == 1:                  # one value per row of dgt: scatter the rows of d instead
            for b in range(batch):
                _pack_gate_row(d[b], b, ap[s % 2], 4, hidden, u0, u1)
        else:
            _pack_from_cols(dgt, t * batch, batch, ap[s % 2], 4, hidden, u0, u1)
        _barrier(flags, k, s + 1)
        if s + 1 < steps:            # the next step's operands arrive during the product
            tn, tnin, tnout = _backward_slots(s + 1, steps, reverse)
            _prefetch_rows(gates[tn], dy[tn], cs[tnin], cs[tnout], 4, hidden, u0, u1)
            if batch * dgt.itemsize >= 64:    # a cache line or more per row of dgt and step
                _prefetch_cols(dgt, tn * batch, batch, 4, hidden, u0, u1)
        _panel_product(ap[s % 2], wk, npan, dhr, 0, wk.shape[1], False)
        _add_recurrent_units(dh, dhr, mask, lengths, t, u0, u1)
    keep_alive(own)


@njit(parallel=True, **_JIT)
def _lstm_bwd(dy, dh, dc, cs, gates, w_hh, dgt, dbias, lengths, mask, reverse, ap, wp, flags, units):
    """_lstm_bwd_units of the unit ranges [units[k], units[k+1]), one per thread."""
    for k in prange(units.shape[0] - 1):
        _lstm_bwd_units(dy, dh, dc, cs, gates, w_hh, dgt, dbias, lengths, mask, reverse, ap, wp, flags,
                        units, k)


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
    return _matmul(x.reshape(steps * batch, inputs), w_ih.T).reshape(steps, batch, -1)


def _states(steps, batch, hidden, h0, reverse, dtype):
    hs = _empty((steps + 1, batch, hidden), dtype)
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
    dx = _matmul(dg2, w_ih).reshape(x.shape) if need_dx else None
    dw_ih, dw_hh = _matmul_pair(dg2.T, x.reshape(steps * batch, x.shape[2]), hrec)
    return dx, dw_ih, dw_hh, _col_sums(dg2)


def _weight_grads_t(dgt, x, w_ih, hrec, need_dx):
    """dx (None unless need_dx), dW_ih, dW_hh from the pre-activation gradients in the
    transposed layout dgt (G, T*B)."""
    steps, batch, inputs = x.shape
    dx = _matmul(dgt.T, w_ih).reshape(x.shape) if need_dx else None
    dw_ih, dw_hh = _matmul_pair(dgt, x.reshape(steps * batch, inputs), hrec)
    return dx, dw_ih, dw_hh


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
    plan = _plan(batch, hidden, hidden, 4, steps * batch * 4 * hidden * hidden, dtype)
    in_loop = _in_loop_projection(plan, x, hidden)  # one or two rows: the loop's threads project x too
    state, gate_rows = (steps + 1, batch, hidden), (steps, batch, 4 * hidden)
    saved = _empties([state, state] + ([gate_rows] if in_loop else []), dtype)   # kept for the backward
    hs, cs = saved[0], saved[1]
    hs[steps if reverse else 0] = h0
    cs[steps if reverse else 0] = c0
    y = _empty((steps, batch, hidden), dtype)
    bias = _bias_sum(b_ih, b_hh, 4 * hidden, dtype)[0]
    if in_loop:
        gates = saved[2]
        x, w_ih = np.ascontiguousarray(x), np.ascontiguousarray(w_ih)
        xp = plan.input_panels(x.shape[2])
    else:                   # each step turns its x W_ih^T row into gates
        gates = _input_projection(x, w_ih)
        x, xp = x[:0], np.empty((plan.units.shape[0] - 1, 0, 0, 1), dtype)
    plan.run(_lstm_fwd_units, _lstm_fwd, x, w_ih, xp, np.ascontiguousarray(w_hh), bias, hs, cs, gates, y,
             lengths, _mask_arg(mask, hidden, dtype), bool(reverse))
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
    dh, dc = _empty(dh_n.shape, dtype), _empty(dc_n.shape, dtype)
    dh[...], dc[...] = dh_n, dc_n
    dgt = _scratch("dgt", (4 * hidden, steps * batch), dtype)
    plan = _plan(batch, hidden, 4 * hidden, 1, dgt.size * hidden, dtype)
    db = np.zeros(4 * hidden, dtype=dtype)
    plan.run(_lstm_bwd_units, _lstm_bwd, dy, dh, dc, cs, gates, w_hh, dgt, db, lengths,
             _mask_arg(mask, hidden, dtype), bool(reverse))
    dx, dw_ih, dw_hh = _weight_grads_t(dgt, x, w_ih, _recurrent_inputs(hs, reverse, mask), need_dx)
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
    _matmul(dgn_h2.T, n_operand, out=dw_hh[h2:])
    db_hh = db_ih.copy()
    db_hh[h2:] = _col_sums(dgn_h2)
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh
