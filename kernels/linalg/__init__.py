"""Dense linear algebra: GEMM and the bias helpers of a linear layer.

    matmul(a, b, trans_a, trans_b, out, beta):  out = op(a) @ op(b) + beta * out
        op(a) = a.T if trans_a else a; op(a): (m, k), op(b): (k, n), out: (m, n)
"""
import numpy as np

from nbdl.kernels._checks import check_array, check_finite, check_float


def check_matmul(a, b, trans_a, trans_b, out, beta):
    """Validate a GEMM call; return (m, k, n)."""
    op = "matmul"
    check_array(op, "a", a, ndim=2)
    check_array(op, "b", b, ndim=2)
    dtype = check_float(op, a=a, b=b, out=out)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is ({m}, {k}), op(b) is ({k2}, {n}) "
                         f"(a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}, trans_a={trans_a}, trans_b={trans_b})")
    if out is not None:
        check_array(op, "out", out, shape=(m, n), dtype=dtype)
    check_finite(op, "beta", beta)
    return m, k, n


def check_bias_rows(op, y, bias):
    check_array(op, "y", y, ndim=2, dtype="float")
    check_array(op, "bias", bias, shape=(y.shape[1],), dtype=y.dtype)


def check_sum_rows(g):
    check_array("sum_rows", "g", g, ndim=2, dtype="float")
    return np.dtype(g.dtype)
