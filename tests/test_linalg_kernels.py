"""kernels/linalg (GEMM, bias rows) and kernels/elementwise against numpy, called directly."""
import numpy as np
import pytest

from nbdl import device as dev
from nbdl.kernels import backend


def K(family, device):
    return backend(family, "cpu" if device == "cpu" else "cuda")


def put(a, device):
    return dev.from_host(np.array(a, copy=True, order="C"), "cpu" if device == "cpu" else "cuda:0")


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_against_numpy(device, rng, trans_a, trans_b, dtype):
    m, k, n = (37, 19, 23) if device == "cpu" else (5, 18, 7)   # not multiples of the CUDA tile
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    L = K("linalg", device)
    got = dev.to_host(L.matmul(put(a, device), put(b, device), trans_a=trans_a, trans_b=trans_b))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # beta accumulates into out
    c = rng.standard_normal((m, n)).astype(dtype)
    out = put(c, device)
    L.matmul(put(a, device), put(b, device), trans_a=trans_a, trans_b=trans_b, out=out, beta=1.0)
    np.testing.assert_allclose(dev.to_host(out), want + c, rtol=tol, atol=tol)


def test_matmul_many_rows_uses_every_block(rng):
    a = rng.standard_normal((1000, 64))
    b = rng.standard_normal((64, 33))
    np.testing.assert_allclose(K("linalg", "cpu").matmul(a, b), a @ b, rtol=1e-12)


def test_bias_rows_and_column_sums(device, rng):
    y = rng.standard_normal((9, 130))
    bias = rng.standard_normal(130)
    L = K("linalg", device)
    yd = put(y, device)
    L.add_bias_rows(yd, put(bias, device))
    np.testing.assert_allclose(dev.to_host(yd), y + bias)
    np.testing.assert_allclose(dev.to_host(L.sum_rows(put(y, device))), y.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(dev.to_host(L.sum_rows(put(np.zeros((0, 3)), device))), np.zeros(3))


def test_matmul_errors(device):
    L = K("linalg", device)
    a = put(np.zeros((2, 3)), device)
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ.*\(2, 3\).*\(4, 5\)"):
        L.matmul(a, put(np.zeros((4, 5)), device))
    with pytest.raises(TypeError, match="dtype mismatch"):
        L.matmul(a, put(np.zeros((3, 2), np.float32), device))
    with pytest.raises(ValueError, match="2 dimensions"):
        L.matmul(put(np.zeros(3), device), a)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\)"):
        L.matmul(a, put(np.zeros((3, 2)), device), out=put(np.zeros((3, 3)), device))
    with pytest.raises(TypeError, match="float32 or float64"):
        L.matmul(put(np.zeros((2, 3), np.int64), device), put(np.zeros((3, 2), np.int64), device))


def test_elementwise_kernels_direct(device, rng):
    E = K("elementwise", device)
    a = rng.standard_normal((2, 3, 4))
    b = rng.standard_normal((3, 1))
    np.testing.assert_allclose(dev.to_host(E.add(put(a, device), put(b, device))), a + b)
    np.testing.assert_allclose(dev.to_host(E.sum_to_shape(put(a, device), (3, 1))),
                               a.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_allclose(dev.to_host(E.permute(put(a, device), (2, 0, 1))), a.transpose(2, 0, 1))
    np.testing.assert_allclose(dev.to_host(E.broadcast_to(put(b, device), (2, 3, 4))), np.broadcast_to(b, (2, 3, 4)))
    idx = np.array([2, 0, 2, 1], dtype=np.int64)
    g = rng.standard_normal((4, 5))
    want = np.zeros((3, 5))
    np.add.at(want, idx, g)
    np.testing.assert_allclose(dev.to_host(E.scatter_add_rows(put(g, device), put(idx, device), 3)), want)
    np.testing.assert_allclose(dev.to_host(E.take_rows(put(g, device), put(idx[:2], device))), g[[2, 0]])
    y = put(np.ones(4), device)
    E.axpy(0.5, put(np.arange(4.0), device), y)
    np.testing.assert_allclose(dev.to_host(y), 1 + 0.5 * np.arange(4.0))
    np.testing.assert_array_equal(dev.to_host(E.sum_axes(put(np.zeros((0, 3)), device), (0,), False)), np.zeros(3))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        E.add(put(a, device), put(np.zeros(5), device))
