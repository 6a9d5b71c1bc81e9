"""CPU GEMM: row blocks in parallel on numba's threads, each block one BLAS call.

Why not just numpy's matmul: numpy's BLAS keeps a thread pool of its own, and
alternating it with numba's parallel kernels (im2col, gates, pooling) makes both
pools spin for the same cores, which measured 5-100x slower on 2 cores. So the BLAS
that numba's np.dot calls (scipy's) is held at one thread, and the parallelism comes
from numba's single pool: thread t multiplies rows [r_t, r_{t+1}) of op(a).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from nbdl.kernels.linalg import check_bias_rows, check_matmul, check_sum_rows

_blas_pinned = False


def _pin_blas_to_one_thread():
    """Limit the BLAS behind numba's np.dot (scipy's) to one thread, once."""
    global _blas_pinned
    if _blas_pinned:
        return
    _blas_pinned = True
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library so it can be limited)
        from threadpoolctl import ThreadpoolController
        for lib in ThreadpoolController().lib_controllers:
            if lib.user_api == "blas" and "scipy" in lib.filepath and "numpy" not in lib.filepath:
                lib.set_num_threads(1)
    except Exception:  # no threadpoolctl or an unusual BLAS: correct, only slower
        pass


@njit(parallel=True, cache=True)
def _gemm(a, b, out, beta, nblocks):
    """out = a @ b + beta * out, rows split into nblocks contiguous blocks (one BLAS call each).

    b may be C- or F-contiguous (b.T of a C array: the trans_b case); numba compiles one
    specialization per layout.
    """
    m = a.shape[0]
    for t in prange(nblocks):
        r0 = t * m // nblocks
        r1 = (t + 1) * m // nblocks
        if r1 > r0:
            if beta == 0.0:
                np.dot(a[r0:r1], b, out[r0:r1])
            else:
                tmp = np.dot(a[r0:r1], b)
                for i in range(r1 - r0):
                    for j in range(out.shape[1]):
                        out[r0 + i, j] = tmp[i, j] + beta * out[r0 + i, j]


def matmul(a, b, trans_a=False, trans_b=False, out=None, beta=0.0):
    """out = op(a) @ op(b) + beta * out; a, b C-contiguous 2-D float arrays.

    op(a): (m, k); op(b): (k, n); returns out (m, n), allocated when None.
    """
    m, k, n = check_matmul(a, b, trans_a, trans_b, out, beta)
    _pin_blas_to_one_thread()
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    if k == 0:                          # op(a) @ op(b) is zero; beta == 0 ignores out (BLAS)
        if beta == 0.0:
            out[...] = 0
        else:
            out *= beta
        return out
    if trans_a:
        # rows of a.T are columns of a: not contiguous, so copy once (O(mk) next to O(mkn))
        a = np.ascontiguousarray(a.T)
    # enough rows per block that each BLAS call stays efficient
    nblocks = max(1, min(get_num_threads(), m // 16))
    _gemm(a, b.T if trans_b else b, out, float(beta), nblocks)
    return out


@njit(parallel=True, cache=True)
def _add_bias_rows(y, bias):
    for i in prange(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] += bias[j]


def add_bias_rows(y, bias):
    """y[i, :] += bias, in place; y (m, n), bias (n,)."""
    check_bias_rows("add_bias_rows", y, bias)
    if y.size:
        _add_bias_rows(y, bias)
    return y


@njit(parallel=True, cache=True)
def _sum_rows(g, out, block):
    n = g.shape[1]
    nblocks = (n + block - 1) // block
    for t in prange(nblocks):
        c0 = t * block
        c1 = min(n, c0 + block)
        for j in range(c0, c1):
            out[j] = 0
        for i in range(g.shape[0]):      # rows in order: deterministic
            for j in range(c0, c1):
                out[j] += g[i, j]


def sum_rows(g):
    """Column sums of g (m, n) -> (n,), summed over rows in order (deterministic)."""
    dtype = check_sum_rows(g)
    out = np.zeros(g.shape[1], dtype=dtype)
    if g.size:
        _sum_rows(g, out, 64)
    return out
