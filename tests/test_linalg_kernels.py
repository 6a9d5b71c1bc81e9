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
    s = np.array([-2.0, 0.0, 3.0, np.nan])
    np.testing.assert_array_equal(dev.to_host(E.sign(put(s, device))), np.sign(s))
    np.testing.assert_array_equal(dev.to_host(E.cast(put(s[:3], device), np.float32)), s[:3].astype(np.float32))


def test_long_sums_against_numpy(device, rng):
    """Sums of thousands of values per output (on CUDA cut into partial sums first: a loss
    summed to a scalar, a column sum of a tall matrix, two trailing axes), against numpy,
    and the same bits on a second call."""
    E = K("elementwise", device)
    if device == "cuda":
        assert E._SPLIT_MIN <= 4200            # every case below takes the partial sums
    for shape, axes in [((5000,), (0,)), ((2, 4500), (1,)), ((4200, 3), (0,)), ((3, 70, 70), (1, 2))]:
        x = rng.standard_normal(shape)
        got = E.sum_axes(put(x, device), axes, False)
        np.testing.assert_allclose(dev.to_host(got), x.sum(axis=axes), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(dev.to_host(E.sum_axes(put(x, device), axes, False)), dev.to_host(got))


def test_cuda_gemm_runs_in_the_arrays_dtype(monkeypatch, rng):
    """float32 arrays must get the float32 kernel (float64 shared tiles are 2x the memory
    and, on most GPUs, many times slower)."""
    if not dev.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    L = K("linalg", "cuda")

    class Refuse:
        def __getitem__(self, launch):
            raise AssertionError("the float64 GEMM kernel ran on float32 arrays")
    monkeypatch.setattr(L, "_gemm64", Refuse())
    a, b = rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    got = dev.to_host(L.matmul(put(a, "cuda"), put(b, "cuda")))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a @ b, rtol=1e-6)


def test_elementwise_kernels_reject_bad_arguments_before_launching(device):
    """Numba does not bounds-check: each of these would read or write outside an array."""
    E = K("elementwise", device)
    x = put(np.arange(6.0).reshape(2, 3), device)
    with pytest.raises(ValueError, match=r"sum_axes: axis 2 is out of range for an array with 2 dimensions"):
        E.sum_axes(x, (2,), False)
    with pytest.raises(ValueError, match=r"sum_axes: repeated axis in \(1, -1\)"):
        E.sum_axes(x, (1, -1), False)
    np.testing.assert_allclose(dev.to_host(E.sum_axes(x, (-1,), True)), [[3.0], [12.0]])
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(2, 3\) to \(2, 4\)"):
        E.broadcast_to(x, (2, 4))
    with pytest.raises(ValueError, match=r"permute: \(0, 0\) is not a permutation of 2 axes"):
        E.permute(x, (0, 0))
    with pytest.raises(ValueError, match=r"permute: .* is not a permutation of 2 axes"):
        E.permute(x, (0, 1, 2))
    deep = put(np.zeros((1,) * 7), device)
    with pytest.raises(ValueError, match=r"at most 6 dimensions"):
        E.permute(deep, tuple(range(7))[::-1])
    rows = put(np.arange(3, dtype=np.int64), device)
    with pytest.raises(ValueError, match=r"take_rows: idx\[2\] = 2 is out of range for 2 rows"):
        E.take_rows(x, rows)
    with pytest.raises(ValueError, match=r"scatter_add_rows: idx\[2\] = 2 is out of range for 2 rows"):
        E.scatter_add_rows(put(np.ones((3, 3)), device), rows, 2)
    with pytest.raises(ValueError, match=r"scatter_add_rows: n must be >= 0, got -1"):
        E.scatter_add_rows(put(np.ones((3, 3)), device), rows, -1)


def test_matmul_with_empty_inner_dimension_is_zero(device):
    """k == 0: op(a) @ op(b) is a zero matrix; beta == 0 ignores what out held (NaN included)."""
    L = K("linalg", device)
    a, b = put(np.zeros((3, 0)), device), put(np.zeros((0, 2)), device)
    np.testing.assert_array_equal(dev.to_host(L.matmul(a, b)), np.zeros((3, 2)))
    out = put(np.full((3, 2), np.nan), device)
    np.testing.assert_array_equal(dev.to_host(L.matmul(a, b, out=out, beta=0.0)), np.zeros((3, 2)))
    out = put(np.full((3, 2), 2.0), device)
    np.testing.assert_array_equal(dev.to_host(L.matmul(a, b, out=out, beta=0.5)), np.ones((3, 2)))


def test_cuda_gemm_refuses_more_columns_than_its_grid_covers():
    if not dev.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    L = K("linalg", "cuda")
    n = L.MAX_GRID_Y * L.TILE + 1
    with pytest.raises(ValueError, match=rf"matmul: op\(b\) has {n} columns"):
        L.matmul(put(np.zeros((1, 1), np.float32), "cuda"), put(np.zeros((1, n), np.float32), "cuda"))
