"""The explicit-SIMD CPU micro-kernels (nbdl.kernels._simd) against numpy, float32 and float64."""
import platform

import numpy as np
import pytest
from numba import njit

from nbdl.kernels import _simd
from nbdl.kernels._simd import (MR, NV, add_scalar_store, block_cols, check_cache, copy_vectors, gemm_block_at,
                                lanes, make_gemm_block, make_gemm_pair, transpose_tile)

DTYPES = [np.float32, np.float64]


def _panels(rng, dtype, L, MR, NR):
    return rng.standard_normal((L, MR)).astype(dtype), rng.standard_normal((L, NR)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(MR, NV), (8, 3), (1, 8)])
def test_gemm_block_matches_numpy(dtype, shape, rng):
    mr, nv = shape
    kernel = make_gemm_block(mr, nv)

    @njit
    def run(a, b, c, acc):
        kernel(a, b, c, acc)

    NR = block_cols(np.dtype(dtype).itemsize, nv)
    for L in (1, 7, 75):
        a, b = _panels(rng, dtype, L, mr, NR)
        c = rng.standard_normal((mr + 2, NR + 5)).astype(dtype)    # rows longer than the block
        before = c.copy()
        run(a, b, c[1:], True)
        expect = before.copy()
        expect[1:mr + 1, :NR] += a.T @ b
        np.testing.assert_allclose(c, expect, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        run(a, b, c[1:], False)                                 # overwrite
        expect[1:mr + 1, :NR] = a.T @ b
        np.testing.assert_allclose(c, expect, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_block_rows_and_at_read_in_place(dtype, rng):
    """B rows at arbitrary offsets of a flat array; A rows at arbitrary offsets, B rows ldb apart."""
    mr, nv = MR, NV
    rows = make_gemm_block(mr, nv, rows=True)

    @njit
    def run(a, bflat, boff, base, af, aoff, abase, b2, ldb, c1, c2):
        rows(a, bflat, boff, base, c1, False)
        gemm_block_at(af, aoff, abase, b2, ldb, c2, False)

    NR = block_cols(np.dtype(dtype).itemsize, nv)
    L = 13
    a = rng.standard_normal((L, mr)).astype(dtype)
    bflat = rng.standard_normal(500).astype(dtype)
    boff = rng.integers(0, 300, L).astype(np.int64)
    af = rng.standard_normal(400).astype(dtype)
    aoff = rng.integers(0, 300, L).astype(np.int64)
    ldb = NR + 3
    b2 = rng.standard_normal(L * ldb).astype(dtype)
    c1, c2 = np.zeros((mr, NR), dtype), np.zeros((mr, NR), dtype)
    run(a, bflat, boff, 7, af, aoff, 5, b2, ldb, c1, c2)
    B1 = np.stack([bflat[7 + o:7 + o + NR] for o in boff])
    A2 = np.stack([af[5 + o:5 + o + mr] for o in aoff])
    B2 = b2.reshape(L, ldb)[:, :NR]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(c1, a.T @ B1, **tol)
    np.testing.assert_allclose(c2, A2.T @ B2, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_and_store_helpers(dtype):
    @njit
    def copy(src, s0, dst, d0, m, exact):
        copy_vectors(src, s0, dst, d0, m, exact)

    @njit
    def store(src, s0, b, dst, d0, m, stream):
        add_scalar_store(src, s0, b, dst, d0, m, stream)
        _simd.store_fence()

    W = lanes(np.dtype(dtype).itemsize)
    src = np.arange(200, dtype=dtype)
    raw = np.full(200 + 64, -1, dtype)                     # dst: a 64-byte aligned view
    start = (-raw.ctypes.data % 64) // raw.itemsize
    for m in (0, 1, W - 1, W, W + 1, 3 * W + 5):
        for exact in (True, False):
            dst = np.full(200, -1, dtype)
            copy(src, 3, dst, 7, m, exact)
            n = m if exact else -(-m // W) * W
            expect = np.full(200, -1, dtype)
            expect[7:7 + n] = src[3:3 + n]
            np.testing.assert_array_equal(dst, expect)
        for stream in (False, True):
            for d0 in (0, W, 3):                   # aligned and not (streaming needs alignment)
                dst = raw[start:start + 200]
                dst[:] = -1
                store(src, 3, dtype(0.5), dst, d0, m, stream)
                expect = np.full(200, -1, dtype)
                expect[d0:d0 + m] = src[3:3 + m] + 0.5
                np.testing.assert_array_equal(dst, expect)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_tile(dtype, rng):
    @njit
    def run(src, s0, lds, dst, d0, ldd):
        transpose_tile(src, s0, lds, dst, d0, ldd)

    W = lanes(np.dtype(dtype).itemsize)
    for lds, ldd, s0, d0 in ((W, W, 0, 0), (W + 3, 2 * W + 1, 5, 7)):
        src = rng.standard_normal(s0 + W * lds + 4).astype(dtype)
        dst = np.full(d0 + W * ldd + 4, -7, dtype)
        run(src, s0, lds, dst, d0, ldd)
        tile = np.stack([src[s0 + r * lds:s0 + r * lds + W] for r in range(W)])
        expect = np.full_like(dst, -7)
        for c in range(W):
            expect[d0 + c * ldd:d0 + c * ldd + W] = tile[:, c]
        np.testing.assert_array_equal(dst, expect)        # a move: exact, nothing else touched


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_pair_gives_the_bits_of_two_blocks(dtype, rng):
    pair = make_gemm_pair(1, 8, 4, NV)
    one, four = make_gemm_block(1, 8), make_gemm_block(4, NV)

    @njit
    def together(a, b, c, acc, a2, b2, c2, acc2):
        pair(a, b, c, acc, a2, b2, c2, acc2)

    @njit
    def apart(a, b, c, acc, a2, b2, c2, acc2):
        one(a, b, c, acc)
        four(a2, b2, c2, acc2)

    W = lanes(np.dtype(dtype).itemsize)
    for L1, L2 in ((64, 32), (5, 40), (0, 3), (9, 0)):        # either one longer, either one empty
        a, b = _panels(rng, dtype, L1, 1, 8 * W)
        a2, b2 = _panels(rng, dtype, L2, 4, NV * W)
        for acc in (False, True):
            c, c2 = rng.standard_normal((1, 8 * W)).astype(dtype), rng.standard_normal((4, NV * W)).astype(dtype)
            ref, ref2, start2 = c.copy(), c2.copy(), c2.astype(np.float64)
            together(a, b, c, acc, a2, b2, c2, not acc)
            apart(a, b, ref, acc, a2, b2, ref2, not acc)
            np.testing.assert_array_equal(c, ref)
            np.testing.assert_array_equal(c2, ref2)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(c2, (0 if acc else start2) + a2.T.astype(np.float64) @ b2, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefetching_blocks_give_the_same_bits(dtype, rng):
    """ahead > 0 only adds prefetches (some past the panel's end): same results."""
    plain, ahead = make_gemm_block(1, 8), make_gemm_block(1, 8, ahead=4)
    pair, pair_ahead = make_gemm_pair(1, 8, 4, NV), make_gemm_pair(1, 8, 4, NV, ahead=4)

    @njit
    def blocks(a, b, c, c_ahead, a2, b2, c2, c2_ahead):
        plain(a, b, c, False)
        ahead(a, b, c_ahead, False)
        pair(a, b, c, True, a2, b2, c2, False)
        pair_ahead(a, b, c_ahead, True, a2, b2, c2_ahead, False)

    W = lanes(np.dtype(dtype).itemsize)
    for L, L2 in ((1, 3), (3, 1), (64, 66), (40, 7)):      # either block longer
        a, b = _panels(rng, dtype, L, 1, 8 * W)
        a2, b2 = _panels(rng, dtype, L2, 4, NV * W)
        c, c_ahead = np.empty((1, 8 * W), dtype), np.empty((1, 8 * W), dtype)
        c2, c2_ahead = np.empty((4, NV * W), dtype), np.empty((4, NV * W), dtype)
        blocks(a, b, c, c_ahead, a2, b2, c2, c2_ahead)
        np.testing.assert_array_equal(c_ahead, c)
        np.testing.assert_array_equal(c2_ahead, c2)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, 2 * (a.T.astype(np.float64) @ b), **tol)
    sig = blocks.signatures[0]
    if "x86" in platform.machine().lower() or platform.machine() in ("AMD64", "x86_64"):
        assert "prefetch" in blocks.inspect_asm(sig)          # the prefetches are there
    with pytest.raises(ValueError, match="rows=True"):
        make_gemm_block(1, 8, rows=True, ahead=4)


def test_check_cache_detects_kernels_cached_with_another_block_shape():
    """A kernel module whose cached code reports another block width: its disk cache is
    cleared and the error asks for a restart; a matching one passes."""
    import types

    class Cache:
        flushed = False

        def flush(self):
            self.flushed = True

    module = types.ModuleType("kernels_under_test")
    module.kernel = types.SimpleNamespace(_cache=Cache())
    with pytest.raises(RuntimeError, match="restart Python"):
        check_cache(lambda x: block_cols(4) * 2, np.float32, module)
    assert module.kernel._cache.flushed
    check_cache(lambda x: block_cols(8), np.float64, module)
