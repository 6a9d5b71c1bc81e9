"""CUDA GEMM: a classic shared-memory tiled kernel.

Each block computes a TILE x TILE tile of out; the k loop walks TILE-wide slabs of
op(a) and op(b) through shared memory, each thread accumulating one output element
in registers, in a fixed order (deterministic). Transposes are index swaps on load.
"""
import numpy as np
from numba import boolean, cuda, float32, float64

from nbdl.kernels._cuda import empty, grid1d
from nbdl.kernels._cuda import zeros as _zeros
from nbdl.kernels.linalg import check_bias_rows, check_matmul, check_sum_rows

TILE = 16
MAX_GRID_Y = 65535   # CUDA's limit on gridDim.y


def _make_gemm(dtype):
    @cuda.jit(cache=True)
    def gemm(a, b, out, trans_a, trans_b, beta):
        sa = cuda.shared.array((TILE, TILE), dtype)
        sb = cuda.shared.array((TILE, TILE), dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.x * TILE + ty     # rows on grid x (up to 2^31 - 1 blocks): many-row batches
        col = cuda.blockIdx.y * TILE + tx
        m = out.shape[0]
        n = out.shape[1]
        k = a.shape[0] if trans_a else a.shape[1]
        acc = dtype(0)
        for k0 in range(0, k, TILE):
            ka = k0 + tx
            if row < m and ka < k:
                sa[ty, tx] = a[ka, row] if trans_a else a[row, ka]
            else:
                sa[ty, tx] = 0
            kb = k0 + ty
            if col < n and kb < k:
                sb[ty, tx] = b[col, kb] if trans_b else b[kb, col]
            else:
                sb[ty, tx] = 0
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        if row < m and col < n:
            if beta == 0:
                out[row, col] = acc
            else:
                out[row, col] = acc + beta * out[row, col]
    return gemm


_gemm32 = _make_gemm(float32)
_gemm64 = _make_gemm(float64)


def matmul(a, b, trans_a=False, trans_b=False, out=None, beta=0.0):
    """out = op(a) @ op(b) + beta * out; a, b C-contiguous 2-D float device arrays.

    op(a): (m, k); op(b): (k, n); returns out (m, n), allocated when None.
    """
    m, k, n = check_matmul(a, b, trans_a, trans_b, out, beta)
    if (n + TILE - 1) // TILE > MAX_GRID_Y:
        raise ValueError(f"matmul: op(b) has {n} columns; the CUDA GEMM supports at most {MAX_GRID_Y * TILE}")
    if out is None:
        out = empty((m, n), a.dtype)
        beta = 0.0
    if m and n:
        grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE)
        kernel = _gemm32 if np.dtype(a.dtype) == np.float32 else _gemm64   # not numba's float32 type
        kernel[grid, (TILE, TILE)](a, b, out, bool(trans_a), bool(trans_b), float(beta))
    return out


@cuda.jit(cache=True)
def _add_bias_rows(y, bias):
    i = cuda.grid(1)
    n = y.shape[1]
    if i < y.shape[0] * n:
        r = i // n
        c = i - r * n
        y[r, c] += bias[c]


def add_bias_rows(y, bias):
    """y[i, :] += bias, in place; y (m, n), bias (n,)."""
    check_bias_rows("add_bias_rows", y, bias)
    if y.size:
        blocks, threads = grid1d(y.size)
        _add_bias_rows[blocks, threads](y, bias)
    return y


@cuda.jit(cache=True)
def _sum_rows(g, out):
    j = cuda.grid(1)
    if j < g.shape[1]:
        acc = g[0, j] * 0
        for i in range(g.shape[0]):      # rows in order: deterministic
            acc += g[i, j]
        out[j] = acc


def sum_rows(g):
    """Column sums of g (m, n) -> (n,), summed over rows in order (deterministic)."""
    dtype = check_sum_rows(g)
    if g.shape[0] == 0:
        return _zeros((g.shape[1],), dtype)
    out = empty((g.shape[1],), dtype)
    if g.shape[1]:
        blocks, threads = grid1d(g.shape[1])
        _sum_rows[blocks, threads](g, out)
    return out


def ptx_signatures():
    sigs = []
    for f, gemm in ((float32, _gemm32), (float64, _gemm64)):
        m = f[:, ::1]
        sigs += [
            (gemm, (m, m, m, boolean, boolean, float64)),
            (_add_bias_rows, (m, f[::1])),
            (_sum_rows, (m, f[::1])),
        ]
    return sigs
