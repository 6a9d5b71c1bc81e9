"""2-D convolution on the CPU: direct and im2col algorithms, forward and backward.

Geometry and padding rules: see ``nbdl.kernels.conv`` (NCHW input, OIHW weight).

Both algorithms run as one numba parallel region per call and never call BLAS.

im2col runs as implicit GEMMs on the SIMD register block of ``nbdl.kernels._simd``
(6 output channels x 64 pixels of float32 accumulators, ~230 GFLOP/s per
thread here, against 110-170 for numba's own loops and ~100 for the OpenBLAS behind
numba's np.dot, whose kernels stop at AVX2 on this machine):
- forward (and the input gradient of a stride-1 convolution, which is a forward
  convolution of the output gradient with the flipped kernel): the input is split into
  its stride phases once, so every tap of a tile of output pixels reads a few contiguous
  runs; they are packed per tile into an aligned panel (or, for small images, read in
  place) and the column matrix never exists;
- weight gradient: gw^T = col @ gy^T with the input channels-last, so each pixel's patch
  row is read in place and gy's channels are the vector axis; the pixel reduction is cut
  into slices fixed by the shape and summed in order;
- the input gradient of a strided convolution keeps the older dot-product micro-kernel
  ``_dot6x4`` (W^T gy per tile, then col2im).
One thread pool (numba's) does everything: alternating numba's and a BLAS's pools was
seen to make them fight for the two cores (5-100x slowdowns).

Parallel loops hand out whole tasks (an image, a group of pixel tiles, a slice of the
weight gradient's pixels x a block of channels) to workers in a fixed round-robin; every output element is written by
exactly one task and every reduction runs in a fixed order, so results are
identical from run to run. Each worker allocates its scratch tile once.
"""
import contextlib
import functools
import sys

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads, uint64

from . import check_backward_input_args, check_backward_weight_args, check_col_args, \
    check_forward_args, resolve_algo
from nbdl.kernels._checks import check_array
from nbdl.kernels._simd import MR as _MR, add_scalar_store, block_cols, copy_vectors, gemm_block, gemm_block_2, \
    gemm_block_4, gemm_block_at, gemm_block_rows, gemm_block_rows_2, gemm_block_rows_4, prefetch_for_write, \
    store_fence, STREAMING
from nbdl.kernels._simd import check_cache, compiled_block_cols
from nbdl.kernels._simd import lanes as _simd_lanes

_JIT = dict(cache=True, fastmath=True, error_model="numpy")

# implicit GEMMs (tuning measured on a 2-core AVX-512 machine; tests force each path)
_IMPLICIT_KC = 128          # taps per chunk: a chunk's panel (KC x 64 floats) stays in L1
_COPY_SLACK = _simd_lanes(4)  # >= the lanes of any dtype: slack for whole-vector copies
_ACC_BYTES = 64 << 10       # accumulators of the tiles one forward task computes
_INPLACE_BYTES = 64 << 10   # images up to this size: the forward reads the input in place
_STREAM_BYTES = 16 << 20    # outputs larger than this bypass the caches (non-temporal stores)
_WGRAD_SLICES = 8           # weight gradient: most slices of the pixel reduction (partial sums)
_WGRAD_MIN_PIX = 8192       # ... and fewest pixels per slice
_WGRAD_CHUNK = 256          # pixels per step of a slice: their gy rows stay in L2
# the strided input gradient's dot-product kernel
_DOT_MR, _DOT_NR = 6, 4     # register block of _dot6x4
_TILE_BYTES = 256 * 1024    # scratch tile per worker: fits the 1 MiB L2 with room for the weights
_KC = 256                   # reduction chunk: a 4-row block of each operand stays in L1


def _round_up(v, m):
    return -(-v // m) * m


def _workers(ntasks):
    return max(1, min(get_num_threads(), ntasks))


_SMALL_FLOPS = 1e6    # below this a convolution runs on one thread


@contextlib.contextmanager
def _thread_budget(g):
    """Run a small convolution's kernels on one thread: numba wakes every thread of its pool
    for each parallel region, which costs more than ~50 us of work saves (and much more when
    the cores are busy and a sleeping worker must wait for its turn)."""
    prev = get_num_threads()
    small = 2.0 * g.N * g.K * g.P * g.Q * g.Cg * g.R * g.S < _SMALL_FLOPS
    if small and prev > 1:
        set_num_threads(1)
    try:
        yield
    finally:
        if small and prev > 1:
            set_num_threads(prev)


# ---------------------------------------------------------------------------------------------
# micro-kernel and packing helpers
# ---------------------------------------------------------------------------------------------

@njit(inline="always", **_JIT)
def _dot6x4(a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, L, zero):
    """The 6x4 block C[i, j] = sum_{l < L} a_i[l] * b_j[l] of ten 1-D rows, as nested tuples.

    24 scalar accumulators, 4 loaded b values and one a value at a time fit the 32 vector
    registers; with fastmath LLVM vectorizes the l loop (each scalar becomes a vector
    accumulator, summed once at the end). 24 FMAs per 10 loads: measured ~15% faster than
    a 4x4 block on long rows. The rows must be C-contiguous 1-D views (a runtime stride or
    an index of unknown sign blocks the vectorizer), and ``zero`` a typed zero: an
    accumulator started from an expression such as ``a0[0] * 0`` also defeats it.
    """
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = zero
    c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = zero
    for l in range(L):
        y0 = b0[l]
        y1 = b1[l]
        y2 = b2[l]
        y3 = b3[l]
        x = a0[l]
        c00 += x * y0
        c01 += x * y1
        c02 += x * y2
        c03 += x * y3
        x = a1[l]
        c10 += x * y0
        c11 += x * y1
        c12 += x * y2
        c13 += x * y3
        x = a2[l]
        c20 += x * y0
        c21 += x * y1
        c22 += x * y2
        c23 += x * y3
        x = a3[l]
        c30 += x * y0
        c31 += x * y1
        c32 += x * y2
        c33 += x * y3
        x = a4[l]
        c40 += x * y0
        c41 += x * y1
        c42 += x * y2
        c43 += x * y3
        x = a5[l]
        c50 += x * y0
        c51 += x * y1
        c52 += x * y2
        c53 += x * y3
    return ((c00, c01, c02, c03), (c10, c11, c12, c13), (c20, c21, c22, c23),
            (c30, c31, c32, c33), (c40, c41, c42, c43), (c50, c51, c52, c53))


@njit(parallel=True, **_JIT)
def _to_padded_channels_last(x, xt, G, pt, pl, zero):
    """xt[n, g, i, j, c] = x[n, g*Cg + c, i - pt, j - pl], zero outside the image.

    Channels-last makes a receptive-field row (S pixels x Cg channels) one contiguous
    run (the weight gradient reads patch rows in place; the strided input gradient
    scatters into them); padding becomes plain zeros. Also transposes the output gradient
    to channels-last (G = 1, no padding)."""
    N, C, H, W = x.shape
    Hp, Wp, Cg = xt.shape[2], xt.shape[3], xt.shape[4]
    for n in prange(N):
        for g in range(G):
            for i in range(Hp):
                ih = i - pt
                for j in range(Wp):
                    iw = j - pl
                    if 0 <= ih < H and 0 <= iw < W:
                        for c in range(Cg):
                            xt[n, g, i, j, c] = x[n, g * Cg + c, ih, iw]
                    else:
                        for c in range(Cg):
                            xt[n, g, i, j, c] = zero


@njit(**_JIT)
def _pack_col_rows(x, n, c0, R, S, H, W, sh, sw, dh, dw, pt, pl, Q, l0, nrows, pix0, npix, buf, col0, zero):
    """buf[i, col0 + j] = col[l0 + i, pix0 + j] for i < nrows, j < npix: rows of the plain
    column matrix of image n (output pixels contiguous), col[(c*R + r)*S + s, p*Q + q] =
    x[n, c0+c, p*sh + r*dh - pt, q*sw + s*dw - pl] (0 outside)."""
    for i in range(nrows):
        c, rs = divmod(l0 + i, R * S)
        r, s = divmod(rs, S)
        off = s * dw - pl
        # output columns q whose input column q*sw + off lies inside [0, W)
        qa = min(Q, max(0, -(off // sw)))
        qb = max(qa, min(Q, (W - 1 - off) // sw + 1)) if W - 1 - off >= 0 else qa
        dst = buf[i, col0:]
        j = 0
        while j < npix:                         # one output row (p, q0..q1) per pass
            p, q0 = divmod(pix0 + j, Q)
            q1 = min(Q, q0 + npix - j)
            ih = p * sh + r * dh - pt
            qs, qe = max(q0, qa), min(q1, qb)   # the pixels that read inside the image
            if ih < 0 or ih >= H or qe <= qs:
                qs = qe = q1
            for e in range(j, j + qs - q0):
                dst[e] = zero
            if qe > qs:
                d = dst[j + qs - q0:]
                xs = x[n, c0 + c, ih, qs * sw + off:]
                if sw == 1:
                    for e in range(qe - qs):
                        d[e] = xs[e]
                else:
                    for e in range(qe - qs):
                        d[e] = xs[e * sw]
            for e in range(j + qe - q0, j + q1 - q0):
                dst[e] = zero
            j += q1 - q0


@njit(parallel=True, **_JIT)
def _to_phase_planes(x, xph, sh, sw, Hph, Wph, pt, pl, zero):
    """xph[n, c, a, b, i, j] = xpad[n, c, i*sh + a, j*sw + b] with xpad = x zero-padded by (pt, pl)
    (zero past the image), xph flat. Splitting each plane into its sh*sw stride phases makes
    every tap of a strided convolution read consecutive pixels of one phase plane."""
    N, C = x.shape[0], x.shape[1]
    img = C * sh * sw * Hph * Wph
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        _channel_phase_planes(x, n, c, xph, n * img + c * sh * sw * Hph * Wph, sh, sw, Hph, Wph, pt, pl, zero)


@njit(inline="always", **_JIT)
def _channel_phase_planes(x, n, c, xph, base, sh, sw, Hph, Wph, pt, pl, zero):
    """The sh*sw phase planes of channel c of image n, written from xph[base] on."""
    H, W = x.shape[2], x.shape[3]
    for a in range(sh):
        for b in range(sw):
            pbase = base + (a * sw + b) * Hph * Wph
            for i in range(Hph):
                ih = i * sh + a - pt
                row = xph[pbase + i * Wph:pbase + (i + 1) * Wph]
                if ih < 0 or ih >= H:
                    for j in range(Wph):
                        row[j] = zero
                    continue
                xr = x[n, c, ih]
                # columns j with 0 <= j*sw + b - pl < W: [ja, jb); branch-free runs vectorize
                ja = min(Wph, max(0, -((b - pl) // sw)))
                jb = max(ja, min(Wph, (W - 1 - (b - pl)) // sw + 1)) if W - 1 - (b - pl) >= 0 else ja
                for j in range(ja):
                    row[j] = zero
                if sw == 1:
                    src = xr[ja + b - pl:]
                    dst = row[ja:jb]
                    for j in range(jb - ja):
                        dst[j] = src[j]
                else:
                    for j in range(ja, jb):
                        row[j] = xr[j * sw + b - pl]
                for j in range(jb, Wph):
                    row[j] = zero


@njit(parallel=True, **_JIT)
def _implicit_forward(xph, img, wp, boff, bias, has_bias, y, Wph, TG, stream, panels, nw, zero):
    """y[n, g*Kg + k, p, q] = bias + sum_l w_g[k, l] * xph[n*img + boff[g, l] + p*Wph + q]: the
    im2col GEMM, its column matrix packed tile by tile straight from the input.

    xph the phase planes of the padded input (see _to_phase_planes) plus _COPY_SLACK elements of
    slack, img elements per image; boff[g, l] where tap l = (c, r, s) of group g starts, so
    output pixel (p, q) of image n reads xph[n*img + boff[g, l] + p*Wph + q] (a stride-1 read
    whatever the stride). wp (G, KB, L, MR) the weight packed in blocks of MR output channels.

    The GEMM's columns are the batch's output pixels j = (n*P + p)*Q + q, cut into tiles of
    NR (a tile may span two images, so small images waste no columns). A tile is a few runs
    of pixels contiguous in xph (one per output row it touches), the same for every tap, so
    packing its column panel is a few vector copies per tap. A task is (group, TG tiles).
    The taps go KC at a time: for each chunk, each tile's panel is packed into the worker's
    panel (panels (nw, KC, NR), 64-byte aligned) and multiplied by every weight block
    into the tile's accumulator, which is then written out with the bias (one contiguous
    segment of y per image; stream: non-temporal stores). Each task owns its outputs."""
    N, K, P, Q = y.shape
    G, KB, L, MR = wp.shape
    KC, NR = panels.shape[1], panels.shape[2]
    Kg = K // G
    PQ = P * Q
    yf = y.reshape(-1)
    ntiles = (N * PQ + NR - 1) // NR
    ngroups = (ntiles + TG - 1) // TG
    ntasks = G * ngroups
    for wkr in prange(nw):
        cs = np.empty((TG, KB, MR, NR), dtype=y.dtype)
        cf = cs.reshape(-1)
        runs = np.empty((TG, NR, 4), dtype=np.int64)      # (column, xph offset, length, pixel j)
        nruns = np.empty(TG, dtype=np.int64)
        panel = panels[wkr]
        pf = panel.reshape(-1)
        for t in range(wkr, ntasks, nw):
            g, grp = divmod(t, ngroups)
            tile0 = grp * TG
            ntg = min(TG, ntiles - tile0)
            for u in range(ntg):
                j0 = (tile0 + u) * NR
                nruns[u] = _tile_runs(j0, min(NR, N * PQ - j0), P, Q, Wph, img, runs[u])
                if not stream:                           # the outputs' cache lines, while computing
                    for v in range(nruns[u]):
                        n, pix = divmod(runs[u, v, 3], PQ)
                        for k in range(g * Kg, (g + 1) * Kg):
                            prefetch_for_write(yf, (n * K + k) * PQ + pix, runs[u, v, 2])
            for l0 in range(0, L, KC):
                l1 = min(L, l0 + KC)
                for u in range(ntg):
                    _pack_panel(xph, boff[g, l0:l1], runs[u], nruns[u], pf, NR)
                    for kb in range(KB):
                        _block(wp[g, kb, l0:l1], panel[:l1 - l0], cs[u, kb], l0 > 0, Kg - kb * MR)
            for u in range(ntg):
                for kb in range(KB):
                    k0 = g * Kg + kb * MR
                    for i in range(min(MR, Kg - kb * MR)):
                        b = bias[k0 + i] if has_bias else zero
                        crow = ((u * KB + kb) * MR + i) * NR
                        a = 0
                        while a < nruns[u]:              # one segment of y per image
                            e = a
                            n = runs[u, a, 3] // PQ
                            while e + 1 < nruns[u] and runs[u, e + 1, 3] // PQ == n:
                                e += 1
                            m = runs[u, e, 0] + runs[u, e, 2] - runs[u, a, 0]
                            add_scalar_store(cf, crow + runs[u, a, 0], b, yf,
                                             (n * K + k0 + i) * PQ + runs[u, a, 3] - n * PQ, m, stream)
                            a = e + 1
            if stream:
                store_fence()


@njit(parallel=True, **_JIT)
def _implicit_forward_inplace(x, xlen, wp, boff, bias, has_bias, y, sh, sw, Hph, Wph, pt, pl, NR, nw, zero):
    """_implicit_forward for small images: no packing. A task is one image: its phase planes
    (see _to_phase_planes) go into the worker's buffer of xlen elements (it stays in L1),
    and the GEMM's columns are the image's "virtual" pixels j = p*Wph + q, q < Wph, so tap
    l of a tile of NR of them is the contiguous buffer[boff[g, l] + j0:][:NR], read in
    place; the columns with q >= Q are computed and dropped."""
    N, C = x.shape[0], x.shape[1]
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G, KB, L, MR = wp.shape
    Kg = K // G
    PQ = P * Q
    yf = y.reshape(-1)
    PV = P * Wph
    plane = sh * sw * Hph * Wph
    for wkr in prange(nw):
        xi = np.empty(xlen, dtype=x.dtype)
        for e in range(C * plane, xlen):              # slack read by the last tiles
            xi[e] = zero
        cs = np.empty((KB, MR, NR), dtype=y.dtype)
        cf = cs.reshape(-1)
        segs = np.empty((NR, 3), dtype=np.int64)      # (column, p*Q + q, length) of real outputs
        for n in range(wkr, N, nw):
            for c in range(C):
                _channel_phase_planes(x, n, c, xi, c * plane, sh, sw, Hph, Wph, pt, pl, zero)
            for j0 in range(0, PV, NR):
                nseg = 0
                j = j0
                while j < min(j0 + NR, PV):              # the row segments q < Q
                    p, q = divmod(j, Wph)
                    e = min(Wph - q, j0 + NR - j)
                    if q < Q:
                        segs[nseg, 0], segs[nseg, 1], segs[nseg, 2] = j - j0, p * Q + q, min(e, Q - q)
                        nseg += 1
                    j += e
                for g in range(G):
                    for kb in range(KB):
                        _block_rows(wp[g, kb], xi, boff[g], j0, cs[kb], Kg - kb * MR)
                    for kb in range(KB):
                        k0 = g * Kg + kb * MR
                        for i in range(min(MR, Kg - kb * MR)):
                            b = bias[k0 + i] if has_bias else zero
                            crow = (kb * MR + i) * NR
                            ybase = (n * K + k0 + i) * PQ
                            for v in range(nseg):
                                add_scalar_store(cf, crow + segs[v, 0], b, yf, ybase + segs[v, 1], segs[v, 2],
                                                 False)


@njit(inline="always", **_JIT)
def _block(a, b, c, accumulate, rows):
    """gemm_block on a weight block with `rows` real rows: a last block of 2 or 4 rows runs
    the smaller micro-kernel instead of multiplying zero rows."""
    if rows == 2:
        gemm_block_2(a, b, c, accumulate)
    elif rows == 4:
        gemm_block_4(a, b, c, accumulate)
    else:
        gemm_block(a, b, c, accumulate)


@njit(inline="always", **_JIT)
def _block_rows(a, bflat, boff, base, c, rows):
    """gemm_block_rows (overwriting c) with the same choice of micro-kernel as _block."""
    if rows == 2:
        gemm_block_rows_2(a, bflat, boff, base, c, False)
    elif rows == 4:
        gemm_block_rows_4(a, bflat, boff, base, c, False)
    else:
        gemm_block_rows(a, bflat, boff, base, c, False)


@njit(**_JIT)
def _tile_runs(j0, npix, P, Q, Wph, img, runs):
    """The runs of output pixels j0 .. j0 + npix - 1 (j = (n*P + p)*Q + q): runs[i] = (column in
    the tile, n*img + p*Wph + q, length, j of its first pixel). Returns their number."""
    nrun = 0
    j = 0
    while j < npix:
        npp, q = divmod(j0 + j, Q)
        n, p = divmod(npp, P)
        m = min(Q - q, npix - j)
        runs[nrun, 0], runs[nrun, 1], runs[nrun, 2], runs[nrun, 3] = j, n * img + p * Wph + q, m, j0 + j
        nrun += 1
        j += m
    return nrun


@njit(inline="always", **_JIT)
def _pack_panel(src, offs, runs, nrun, dst, NR):
    """dst[l*NR + a + e] = src[offs[l] + v + e] for each tap l and run (a, v, m, _), e < m: a
    tile's column panel, run by run. A run is copied in whole vectors, its overshoot landing
    in the columns of the runs after it, which are written later; a run whose overshoot
    could leave the row (into the next row, already written) is copied exactly. (src has
    _COPY_SLACK elements of slack for the overreads.)"""
    for i in range(nrun):
        a, v, m = runs[i, 0], runs[i, 1], runs[i, 2]
        exact = i == nrun - 1 or a + m + _COPY_SLACK > NR
        for l in range(offs.shape[0]):
            copy_vectors(src, offs[l] + v, dst, l * NR + a, m, exact)


@njit(parallel=True, **_JIT)
def _im2col_backward_input(gy, wt, gxt, R, S, sh, sw, dh, dw, LC, TP, nw, zero):
    """gxt = col2im(W^T gy) in padded channels-last layout: per tile of TP output pixels,
    gcol_T[j, l] = sum_k gy_T[j, k] * w_g[k, l]   (a GEMM, reduction over the Kg channels),
    then every gcol_T entry is added to the input pixel it was read from. (Used for strides
    > 1; with stride 1 the host runs the transposed convolution as a forward one.)

    gy (N, K, P, Q); wt (G, Lp, Kp) the weight per group as (R*S*Cg, Kg) in (r, s, c) order,
    zero-padded; gxt (N, G, Hp, Wp, Cg), fully written. Tasks: (image, group); a task owns
    gxt[n, g], so the scatter-add never races. The patch columns go LC at a time (wt chunk
    and the gcol_T tile stay in L2)."""
    N, G, Hp, Wp, Cg = gxt.shape
    K = gy.shape[1]
    Kg = K // G
    P, Q = gy.shape[2], gy.shape[3]
    PQ = P * Q
    L = R * S * Cg
    Kp = wt.shape[2]
    run = S * Cg if dw == 1 else Cg
    ntasks = N * G
    gy3 = gy.reshape((N, K, PQ))
    gxf = gxt.reshape(-1)
    for wkr in prange(nw):
        gyt = np.empty((TP, Kp), dtype=gy.dtype)
        gcol = np.empty((TP, LC), dtype=gy.dtype)
        for t in range(wkr, ntasks, nw):
            n, g = divmod(t, G)
            base = (n * G + g) * Hp * Wp * Cg
            for i in range(Hp * Wp * Cg):
                gxf[base + i] = zero
            for pix0 in range(0, PQ, TP):
                npix = min(TP, PQ - pix0)
                for j in range(TP):                     # gy_T tile, zero-padded
                    for k in range(Kp):
                        gyt[j, k] = gy3[n, g * Kg + k, pix0 + j] if (j < npix and k < Kg) else zero
                for l0 in range(0, L, LC):
                    l1 = min(L, l0 + LC)
                    for j in range(0, npix, _DOT_MR):
                        for l in range(0, l1 - l0, _DOT_NR):
                            b = l0 + l
                            blk = _dot6x4(gyt[j], gyt[j + 1], gyt[j + 2], gyt[j + 3], gyt[j + 4], gyt[j + 5],
                                          wt[g, b], wt[g, b + 1], wt[g, b + 2], wt[g, b + 3], Kp, zero)
                            for jj in range(_DOT_MR):
                                for ll in range(_DOT_NR):
                                    gcol[j + jj, l + ll] = blk[jj][ll]
                    for j in range(npix):               # scatter-add: the adjoint of packing patch rows
                        p, q = divmod(pix0 + j, Q)
                        src = gcol[j]
                        for u in range(l0 // run, (l1 - 1) // run + 1):
                            r, s = (u, 0) if dw == 1 else divmod(u, S)
                            dst = gxf[base + ((p * sh + r * dh) * Wp + q * sw + s * dw) * Cg:]
                            a = max(l0, u * run)
                            b = min(l1, (u + 1) * run)
                            d = dst[a - u * run:]
                            sv = src[a - l0:]
                            for e in range(b - a):
                                d[e] += sv[e]


@njit(parallel=True, **_JIT)
def _implicit_backward_weight(xtf, aoff_img, tapoff, gyt, K, N, P, Q, G, sh, sw, Wp, img_g, CH, parts, nw):
    """parts[s, g, kb, tb, i, j] = sum over the pixels of slice s of x_tap(tb, i) * gy[k = g*Kg +
    kb*NR + j]: the weight gradient's GEMM, gw^T (taps x channels) = col (taps x pixels) @ gy^T,
    its reduction over the batch's pixels cut into fixed slices (summed in order by the host,
    so the result does not depend on the thread count).

    xtf the padded channels-last input, flat: image n, group g at (n*G + g)*img_g, pixel
    (h, w) at (h*Wp + w)*Cg; a tap block tb is MR consecutive taps (r, s, c) of one
    contiguous run, starting tapoff[tb] past the pixel its output pixel reads first, so A's
    row for output pixel (p, q) is MR consecutive values of xtf, read in place. gyt the output
    gradient channels-last (N*P*Q, K) flat, so B's row for a pixel is NR consecutive channels.
    Tasks: (slice, group, channel block); each owns its part."""
    S_, _, KBn, TB, MR, NR = parts.shape
    Kg = K // G
    PQ = P * Q
    npix = N * PQ
    per = (npix + S_ - 1) // S_
    ntasks = S_ * G * KBn
    for wkr in prange(nw):
        aoff = np.empty(CH, dtype=np.int64)
        for t in range(wkr, ntasks, nw):
            sg, kb = divmod(t, KBn)
            sl, g = divmod(sg, G)
            acc = parts[sl, g, kb]
            first = True
            for j0 in range(sl * per, min(npix, (sl + 1) * per), CH):
                m = min(CH, min(npix, (sl + 1) * per) - j0)
                for u in range(m):                       # where each pixel's patch starts
                    n, pq = divmod(j0 + u, PQ)
                    p, q = divmod(pq, Q)
                    aoff[u] = (n * G + g) * img_g + aoff_img[p * sh * Wp + q * sw]
                b = gyt[j0 * K + g * Kg + kb * NR:]
                for tb in range(TB):
                    gemm_block_at(xtf, aoff[:m], tapoff[tb], b, K, acc[tb], not first)
                first = False
            if first:                                    # an empty slice
                acc[...] = 0


@njit(**_JIT)
def _im2col_full(x, col, R, S, sh, sw, dh, dw, pt, pl, P, Q, zero):
    """col[n, (c*R + r)*S + s, p*Q + q] = x[n, c, p*sh + r*dh - pt, q*sw + s*dw - pl] (0 outside).
    (A utility; the convolution kernels pack tiles of it on the fly.)"""
    N, C, H, W = x.shape
    for n in range(N):
        _pack_col_rows(x, n, 0, R, S, H, W, sh, sw, dh, dw, pt, pl, Q, 0, col.shape[1], 0, P * Q, col[n], 0, zero)


@njit(**_JIT)
def _col2im_full(col, gx, R, S, sh, sw, dh, dw, pt, pl, P, Q, zero):
    """The adjoint of _im2col_full: gx[n, c, ih, iw] = sum of the col entries read from it."""
    N, C, H, W = gx.shape
    for n in range(N):
        for c in range(C):
            for ih in range(H):
                for iw in range(W):
                    gx[n, c, ih, iw] = zero
        for c in range(C):
            for r in range(R):
                for s in range(S):
                    l = (c * R + r) * S + s
                    for p in range(P):
                        ih = p * sh + r * dh - pt
                        if ih < 0 or ih >= H:
                            continue
                        for q in range(Q):
                            iw = q * sw + s * dw - pl
                            if 0 <= iw < W:
                                gx[n, c, ih, iw] += col[n, l, p * Q + q]


# ---------------------------------------------------------------------------------------------
# direct algorithm (specialized on the kernel size)
# ---------------------------------------------------------------------------------------------

@njit(**_JIT)
def _pad_plane(x, n, c, pt, pl, xp, zero):
    """xp[i, j] = x[n, c, i - pt, j - pl], zero outside the image (xp may be cropped)."""
    H, W = x.shape[2], x.shape[3]
    Hp, Wp = xp.shape
    for i in range(Hp):
        ih = i - pt
        if ih < 0 or ih >= H:
            for j in range(Wp):
                xp[i, j] = zero
            continue
        for j in range(min(pl, Wp)):
            xp[i, j] = zero
        for j in range(max(pl, 0), min(Wp, W + pl)):
            xp[i, j] = x[n, c, ih, j - pl]
        for j in range(max(W + pl, 0), Wp):
            xp[i, j] = zero


_DIRECT = {}


def _direct_kernels(R, S, sh, sw, dh, dw):
    """(forward, backward_input, backward_weight) compiled for one kernel size, stride and
    dilation. These are compile-time constants of the closures: the receptive-field loops
    unroll and every index is provably non-negative, which is what lets LLVM vectorize
    the loop over the output row (measured: 50-80 GFLOP/s per thread for 3x3 against
    2-8 with runtime sizes)."""
    key = (R, S, sh, sw, dh, dw)
    if key not in _DIRECT:
        _DIRECT[key] = _make_direct_kernels(*key)
    return _DIRECT[key]


def _make_direct_kernels(R, S, sh, sw, dh, dw):
    @njit(parallel=True, **_JIT)
    def forward(x, w, bias, has_bias, y, G, pt, pl, KB, nw, zero):
        """y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s] * xpad[c, p*sh + r*dh, q*sw + s*dw]
        (any stride). Tasks: (image, group, pair of output channels); the pair shares every
        input load. One zero-padded input plane at a time; KB is unused (pairs)."""
        N = x.shape[0]
        K, Cg = w.shape[0], w.shape[1]
        Kg = K // G
        P, Q = y.shape[2], y.shape[3]
        Hp = (P - 1) * sh + (R - 1) * dh + 1
        Wp = (Q - 1) * sw + (S - 1) * dw + 1
        npairs = (Kg + 1) // 2
        ntasks = N * G * npairs
        for wkr in prange(nw):
            xp = np.empty((Hp, Wp), dtype=x.dtype)
            for t in range(wkr, ntasks, nw):
                ng, pair = divmod(t, npairs)
                n, g = divmod(ng, G)
                k0 = g * Kg + 2 * pair
                k1 = min(k0 + 1, (g + 1) * Kg - 1)     # an odd last channel is computed twice
                b0 = bias[k0] if has_bias else zero
                b1 = bias[k1] if has_bias else zero
                for p in range(P):
                    for q in range(Q):
                        y[n, k0, p, q] = b0
                        y[n, k1, p, q] = b1
                for c in range(Cg):
                    _pad_plane(x, n, g * Cg + c, pt, pl, xp, zero)
                    for p in range(P):
                        y0 = y[n, k0, p]
                        y1 = y[n, k1, p]
                        for q in range(Q):
                            a0 = y0[q]
                            a1 = y1[q]
                            for r in range(R):
                                xr = xp[p * sh + r * dh]
                                for s in range(S):
                                    v = xr[q * sw + s * dw]
                                    a0 += w[k0, c, r, s] * v
                                    a1 += w[k1, c, r, s] * v
                            y0[q] = a0
                            y1[q] = a1

    @njit(parallel=True, **_JIT)
    def backward_input(gy, w, gx, G, pt, pl, nw, zero):
        """gx[n, c, ih, iw] = sum over the (k, p, q, r, s) with p*sh + r*dh - pt = ih and
        q*sw + s*dw - pl = iw of w[k, c, r, s] * gy[n, k, p, q]: scattered into a padded
        plane, then cropped. Tasks: (image, input channel); each owns gx[n, c]. (With stride 1
        the host runs a forward convolution instead, unless a padding exceeds the kernel.)"""
        N, C, H, W = gx.shape
        K, Cg = w.shape[0], w.shape[1]
        Kg = K // G
        P, Q = gy.shape[2], gy.shape[3]
        Hp = (P - 1) * sh + (R - 1) * dh + 1
        Wp = (Q - 1) * sw + (S - 1) * dw + 1
        ntasks = N * C
        for wkr in prange(nw):
            gxp = np.empty((Hp, Wp), dtype=gy.dtype)
            for t in range(wkr, ntasks, nw):
                n, c = divmod(t, C)
                g, ci = divmod(c, Cg)
                for i in range(Hp):
                    for j in range(Wp):
                        gxp[i, j] = zero
                for k in range(g * Kg, (g + 1) * Kg):
                    for p in range(P):
                        gyr = gy[n, k, p]
                        for r in range(R):
                            row = gxp[p * sh + r * dh]
                            for s in range(S):
                                wv = w[k, ci, r, s]
                                for q in range(Q):
                                    row[q * sw + s * dw] += wv * gyr[q]
                for ih in range(H):
                    for iw in range(W):
                        i, j = ih + pt, iw + pl
                        gx[n, c, ih, iw] = gxp[i, j] if (i < Hp and j < Wp) else zero

    @njit(parallel=True, **_JIT)
    def backward_weight(gy, x, gw, G, pt, pl, KB, nw, zero):
        """gw[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw].
        Tasks: (input channel, block of KB output channels of its group); images in order."""
        N, C = x.shape[0], x.shape[1]
        K, Cg = gw.shape[0], gw.shape[1]
        Kg = K // G
        P, Q = gy.shape[2], gy.shape[3]
        Hp = (P - 1) * sh + (R - 1) * dh + 1
        Wp = (Q - 1) * sw + (S - 1) * dw + 1
        nkb = (Kg + KB - 1) // KB
        ntasks = C * nkb
        for wkr in prange(nw):
            xp = np.empty((Hp, Wp), dtype=x.dtype)
            for t in range(wkr, ntasks, nw):
                c, kb = divmod(t, nkb)
                g, ci = divmod(c, Cg)
                k0 = g * Kg + kb * KB
                k1 = min(k0 + KB, (g + 1) * Kg)
                for k in range(k0, k1):
                    for r in range(R):
                        for s in range(S):
                            gw[k, ci, r, s] = zero
                for n in range(N):
                    _pad_plane(x, n, c, pt, pl, xp, zero)
                    for k in range(k0, k1):
                        for r in range(R):
                            for s in range(S):
                                acc = zero
                                for p in range(P):
                                    gyr = gy[n, k, p]
                                    xr = xp[p * sh + r * dh]
                                    for q in range(Q):
                                        acc += gyr[q] * xr[q * sw + s * dw]
                                gw[k, ci, r, s] += acc

    if sh == 1 and sw == 1:
        forward, backward_weight = _make_direct_flat_kernels(R, S, dh, dw)
    return forward, backward_input, backward_weight


def _make_direct_flat_kernels(R, S, dh, dw):
    """Stride-1 direct kernels on "full-width" rows: with the input plane zero-padded to width
    Wp = Q + dw*(S-1), output pixel f = p*Wp + q reads xp[f + r*dh*Wp + s*dw], so one flat
    loop over f (computing Wp - Q throw-away columns per row) replaces the short q loops:
    the loop is long, the offsets constant per tap, and it vectorizes (measured ~90 GFLOP/s
    per thread for 3x3 and 5x5 against 8-50 for row-by-row loops)."""

    @njit(parallel=True, **_JIT)
    def forward(x, w, bias, has_bias, y, G, pt, pl, KB, nw, zero):
        """y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s] * xpad[c, p + r*dh, q + s*dw].
        Tasks: (image, group, block of KB output channels); per worker one padded input plane
        and KB full-width output planes."""
        N = x.shape[0]
        K, Cg = w.shape[0], w.shape[1]
        Kg = K // G
        P, Q = y.shape[2], y.shape[3]
        Wp = Q + (S - 1) * dw
        Hp = P + (R - 1) * dh
        F = P * Wp                                   # full-width outputs per plane
        nkb = (Kg + KB - 1) // KB
        ntasks = N * G * nkb
        for wkr in prange(nw):
            # the last taps of the last row run (S-1)*dw elements past the plane: zeros
            xp = np.empty((Hp * Wp + (S - 1) * dw,), dtype=x.dtype)
            yf = np.empty((KB, F), dtype=x.dtype)
            for t in range(wkr, ntasks, nw):
                ng, kb = divmod(t, nkb)
                n, g = divmod(ng, G)
                k0 = g * Kg + kb * KB
                nk = min(KB, (g + 1) * Kg - k0)
                for i in range(nk):
                    b = bias[k0 + i] if has_bias else zero
                    for f in range(F):
                        yf[i, f] = b
                for c in range(Cg):
                    _pad_plane_flat(x, n, g * Cg + c, pt, pl, Hp, Wp, xp, zero)
                    for i in range(nk):
                        yk = yf[i]
                        for f in range(F):
                            acc = yk[f]
                            for r in range(R):
                                for s in range(S):
                                    acc += w[k0 + i, c, r, s] * xp[uint64(f) + uint64(r * dh * Wp + s * dw)]
                            yk[f] = acc
                for i in range(nk):
                    for p in range(P):
                        for q in range(Q):
                            y[n, k0 + i, p, q] = yf[i, p * Wp + q]

    @njit(parallel=True, **_JIT)
    def backward_weight(gy, x, gw, G, pt, pl, KB, nw, zero):
        """gw[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * xpad[n, c, p + r*dh, q + s*dw]: per tap a
        flat dot product of the full-width gy plane (zeros in the throw-away columns) and the
        shifted padded input plane. Tasks: (group, block of KB output channels); images in order."""
        N = x.shape[0]
        K, Cg = gw.shape[0], gw.shape[1]
        Kg = K // G
        P, Q = gy.shape[2], gy.shape[3]
        Wp = Q + (S - 1) * dw
        Hp = P + (R - 1) * dh
        F = P * Wp
        nkb = (Kg + KB - 1) // KB
        ntasks = G * nkb
        for wkr in prange(nw):
            xp = np.empty((Hp * Wp + (S - 1) * dw,), dtype=x.dtype)
            gf = np.empty((KB, F), dtype=x.dtype)
            for t in range(wkr, ntasks, nw):
                g, kb = divmod(t, nkb)
                k0 = g * Kg + kb * KB
                nk = min(KB, (g + 1) * Kg - k0)
                for i in range(nk):
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                gw[k0 + i, c, r, s] = zero
                for n in range(N):
                    for i in range(nk):
                        for p in range(P):
                            for q in range(Wp):
                                gf[i, p * Wp + q] = gy[n, k0 + i, p, q] if q < Q else zero
                    for c in range(Cg):
                        _pad_plane_flat(x, n, g * Cg + c, pt, pl, Hp, Wp, xp, zero)
                        for i in range(nk):
                            gk = gf[i]
                            for r in range(R):
                                for s in range(S):
                                    xs = xp[r * dh * Wp + s * dw:]
                                    acc = zero
                                    for f in range(F):
                                        acc += gk[f] * xs[f]
                                    gw[k0 + i, c, r, s] += acc

    return forward, backward_weight


@njit(**_JIT)
def _pad_plane_flat(x, n, c, pt, pl, Hp, Wp, xp, zero):
    """xp[i*Wp + j] = x[n, c, i - pt, j - pl] for i < Hp, j < Wp (zero outside the image);
    the tail of xp past Hp*Wp is zeroed too."""
    H, W = x.shape[2], x.shape[3]
    for i in range(Hp):
        ih = i - pt
        row = xp[i * Wp:]
        if ih < 0 or ih >= H:
            for j in range(Wp):
                row[j] = zero
            continue
        xr = x[n, c, ih]
        for j in range(Wp):
            iw = j - pl
            row[j] = xr[iw] if 0 <= iw < W else zero
    for j in range(Hp * Wp, xp.shape[0]):
        xp[j] = zero


# ---------------------------------------------------------------------------------------------
# host functions (public; same names and signatures in cuda.py)
# ---------------------------------------------------------------------------------------------

def _geom_args(geom):
    return (geom.sh, geom.sw, geom.dh, geom.dw, geom.pt, geom.pl)


def _tile_rows(row_len, itemsize, lo=24, hi=516):
    """Rows of a per-worker tile of row_len elements that fit _TILE_BYTES (a multiple of 12,
    so that blocks of _DOT_MR and of _DOT_NR rows both tile it)."""
    rows = _TILE_BYTES // max(1, row_len * itemsize)
    return max(lo, min(hi, rows)) // 12 * 12


def _blocks(total, tasks_outside, nw):
    """Block size splitting `total` so that tasks_outside * blocks gives every worker a few
    tasks (a round-robin split of few tasks leaves a worker idle at the end)."""
    want = max(1, -(-4 * nw // max(1, tasks_outside)))
    return max(1, -(-total // want))


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algo="im2col"):
    """y = conv2d(x, weight) + bias: x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None
    -> y (N, K, P, Q). algo: "direct", "im2col" or "auto" (see nbdl.kernels.conv.choose_algo)."""
    op = "conv2d_forward"
    g = check_forward_args(op, x, weight, bias, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cpu")
    with _thread_budget(g):
        return _forward(x, weight, bias, g, algo)


def _forward(x, weight, bias, g, algo):
    """conv2d_forward after validation (g: the ConvGeom)."""
    y = _aligned_empty((g.N, g.K, g.P, g.Q), x.dtype)     # aligned rows can be streamed
    if y.size == 0:
        return y
    zero = x.dtype.type(0)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    if algo == "direct":
        fwd = _direct_kernels(g.R, g.S, g.sh, g.sw, g.dh, g.dw)[0]
        KB = _blocks(g.Kg, g.N * g.G, get_num_threads())
        fwd(x, weight, b, has_bias, y, g.G, g.pt, g.pl, KB, _workers(g.N * g.G * -(-g.Kg // KB)), zero)
        return y
    return _implicit(x, weight, b, has_bias, y, g, zero)


@njit(**_JIT)
def _compiled_block_cols(x):
    return compiled_block_cols(x)


_cache_checked = set()


def _check_simd_cache(dtype):
    """Once per dtype: the cached kernels match nbdl.kernels._simd (see its check_cache)."""
    if dtype not in _cache_checked:
        check_cache(_compiled_block_cols, dtype, sys.modules[__name__])
        _cache_checked.add(dtype)


def _implicit(x, weight, b, has_bias, y, g, zero):
    """The im2col forward as an implicit GEMM (see _implicit_forward)."""
    _check_simd_cache(x.dtype)
    Hph, Wph, img, boff = _phase_layout(g)
    NR = block_cols(x.dtype.itemsize)
    wp = _weight_blocks(weight, g, _MR)
    if img * x.dtype.itemsize <= _INPLACE_BYTES and g.N >= 2 * get_num_threads():
        # one image's planes, plus the slack the last tile reads past them
        xlen = max(img, int(boff.max()) + -(-g.P * Wph // NR) * NR) + _COPY_SLACK
        _implicit_forward_inplace(x, xlen, wp, boff, b, has_bias, y, g.sh, g.sw, Hph, Wph, g.pt, g.pl, NR,
                                  _workers(g.N), zero)
        return y
    xph = np.empty(g.N * img + _COPY_SLACK, dtype=x.dtype)
    xph[g.N * img:] = 0
    _to_phase_planes(x, xph, g.sh, g.sw, Hph, Wph, g.pt, g.pl, zero)
    # tiles per task: their accumulators fit _ACC_BYTES, and every worker gets a few tasks
    ntiles = -(-g.N * g.P * g.Q // NR)
    TG = max(1, min(_ACC_BYTES // (wp.shape[1] * _MR * NR * x.dtype.itemsize), ntiles,
                    g.G * ntiles // (4 * get_num_threads())))
    nw = _workers(g.G * -(-ntiles // TG))
    panels = _aligned_empty((nw, _IMPLICIT_KC, NR), x.dtype)
    panels[...] = 0        # a partial tile's unused columns: finite (and not denormal)
    stream = STREAMING and y.nbytes > _STREAM_BYTES
    _implicit_forward(xph, img, wp, boff, b, has_bias, y, Wph, TG, stream, panels, nw, zero)
    return y


@functools.lru_cache(maxsize=256)
def _phase_layout(g):
    """(Hph, Wph, img, boff): the phase planes' size (each input channel's padded plane split
    into its sh*sw stride phases, see _to_phase_planes), the elements per image, and
    boff[grp, l], where tap l = (c, r, s) of group grp starts in an image's planes. Cached
    per geometry (a training loop asks for the same few); boff is read-only."""
    Hp, Wp = _padded_size(g)
    Hph, Wph = -(-Hp // g.sh), -(-Wp // g.sw)
    c, r, s = np.meshgrid(np.arange(g.Cg), np.arange(g.R) * g.dh, np.arange(g.S) * g.dw, indexing="ij")
    tap = (((c * g.sh + r % g.sh) * g.sw + s % g.sw) * Hph + r // g.sh) * Wph + s // g.sw
    plane = g.sh * g.sw * Hph * Wph
    boff = (np.arange(g.G)[:, None] * (g.Cg * plane) + tap.reshape(1, -1)).astype(np.int64)
    boff.flags.writeable = False
    return Hph, Wph, g.C * plane, boff


def _weight_blocks(weight, g, MR):
    """wp (G, KB, L, MR): each group's weight (Kg, L = Cg*R*S) cut into blocks of MR rows,
    each stored tap-major (the micro-kernel reads MR consecutive values per tap); zero rows
    past Kg."""
    L = g.Cg * g.R * g.S
    KB = -(-g.Kg // MR)
    wp = np.zeros((g.G, KB * MR, L), dtype=weight.dtype)
    wp[:, :g.Kg] = weight.reshape(g.G, g.Kg, L)
    return np.ascontiguousarray(wp.reshape(g.G, KB, MR, L).transpose(0, 1, 3, 2))


def _aligned_empty(shape, dtype, align=64):
    """np.empty whose data starts on an `align`-byte boundary (numpy guarantees only 16)."""
    n = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n + align // itemsize, dtype=dtype)
    off = (-raw.ctypes.data % align) // itemsize
    return raw[off:off + n].reshape(shape)


def _padded_size(g):
    """Rows and columns of the zero-padded input that the output pixels read."""
    return (g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1


def conv2d_backward_input(grad_out, weight, x_shape, stride=1, padding=0, dilation=1, groups=1,
                          algo="im2col"):
    """grad_x (N, C, H, W) of y = conv2d(x, weight) given grad_out = dL/dy (N, K, P, Q)."""
    op = "conv2d_backward_input"
    g = check_backward_input_args(op, grad_out, weight, x_shape, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cpu")
    with _thread_budget(g):
        return _backward_input(grad_out, weight, g, algo)


def _backward_input(grad_out, weight, g, algo):
    """conv2d_backward_input after validation."""
    transposed = _transposed_as_forward(g)
    if transposed is not None and g.N:
        # the long reduction (Kg*R*S) of a forward GEMM beats a W^T dy GEMM over Kg alone
        wf = _flipped_weight(weight, g)
        gt = check_forward_args("conv2d_backward_input", grad_out, wf, None, 1, transposed, (g.dh, g.dw), g.G)
        return _forward(grad_out, wf, None, gt, algo)
    gx = np.empty((g.N, g.C, g.H, g.W), dtype=grad_out.dtype)
    if gx.size == 0:
        return gx
    zero = grad_out.dtype.type(0)
    if algo == "direct":
        bwd = _direct_kernels(g.R, g.S, g.sh, g.sw, g.dh, g.dw)[1]
        bwd(grad_out, weight, gx, g.G, g.pt, g.pl, _workers(g.N * g.C), zero)
        return gx
    L = g.R * g.S * g.Cg
    Kp = _round_up(g.Kg, 16)
    Lp4 = _round_up(L, _DOT_NR)
    wt = np.zeros((g.G, Lp4, Kp), dtype=weight.dtype)
    wt[:, :L, :g.Kg] = weight.reshape(g.G, g.Kg, g.Cg, g.R, g.S).transpose(0, 3, 4, 2, 1).reshape(g.G, L, g.Kg)
    Hp, Wp = _padded_size(g)
    gxt = np.empty((g.N, g.G, Hp, Wp, g.Cg), dtype=grad_out.dtype)
    LC = min(Lp4, _KC)
    TP = _tile_rows(Kp + LC, grad_out.dtype.itemsize)
    _im2col_backward_input(grad_out, wt, gxt, g.R, g.S, g.sh, g.sw, g.dh, g.dw, LC, TP,
                           _workers(g.N * g.G), zero)
    # back to NCHW, dropping the padding (rows/columns past Hp, Wp were never read: zero)
    gx[...] = 0
    h, w = max(0, min(g.H, Hp - g.pt)), max(0, min(g.W, Wp - g.pl))
    gx.reshape(g.N, g.G, g.Cg, g.H, g.W)[:, :, :, :h, :w] = \
        gxt[:, :, g.pt:g.pt + h, g.pl:g.pl + w, :].transpose(0, 1, 4, 2, 3)
    return gx


def _transposed_as_forward(g):
    """With stride 1, grad_x[n, c, i, j] = sum_{k, r, s} w[k, c, r, s] * grad_y[n, k, i + top - r*dh,
    j + left - s*dw] is a forward convolution of grad_y with the flipped, transposed kernel and
    padding (kh - top, kh - bottom, kw - left, kw - right), kh = dh*(R-1), kw = dw*(S-1).
    Returns that padding, or None (stride > 1, or a padding wider than the kernel)."""
    kh, kw = g.dh * (g.R - 1), g.dw * (g.S - 1)
    if g.sh != 1 or g.sw != 1 or max(g.pt, g.pb) > kh or max(g.pl, g.pr) > kw:
        return None
    return kh - g.pt, kh - g.pb, kw - g.pl, kw - g.pr


def _flipped_weight(weight, g):
    """w'[g*Cg + c, k, r, s] = w[g*Kg + k, c, R-1-r, S-1-s] (C, Kg, R, S): the kernel of the
    transposed convolution, group by group."""
    wf = weight.reshape(g.G, g.Kg, g.Cg, g.R, g.S)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(wf.transpose(0, 2, 1, 3, 4).reshape(g.C, g.Kg, g.R, g.S))


def conv2d_backward_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                           algo="im2col"):
    """grad_weight (K, C/groups, R, S) of y = conv2d(x, weight) given grad_out (N, K, P, Q)."""
    op = "conv2d_backward_weight"
    g = check_backward_weight_args(op, grad_out, x, weight_shape, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cpu")
    with _thread_budget(g):
        return _backward_weight(grad_out, x, g, algo)


def _backward_weight(grad_out, x, g, algo):
    """conv2d_backward_weight after validation."""
    gw = np.empty((g.K, g.Cg, g.R, g.S), dtype=x.dtype)
    zero = x.dtype.type(0)
    if g.N == 0:
        gw[...] = 0
        return gw
    nw = get_num_threads()
    if algo == "direct":
        # tasks: (group, channel block) for stride 1, (input channel, channel block) otherwise
        outer = g.G if (g.sh == 1 and g.sw == 1) else g.C
        KB = _blocks(g.Kg, outer, nw)
        bwd = _direct_kernels(g.R, g.S, g.sh, g.sw, g.dh, g.dw)[2]
        bwd(grad_out, x, gw, g.G, g.pt, g.pl, KB, _workers(outer * -(-g.Kg // KB)), zero)
        return gw
    return _implicit_weight_grad(grad_out, x, g, gw)


def _implicit_weight_grad(gy, x, g, gw):
    """The im2col weight gradient as an implicit GEMM (see _implicit_backward_weight)."""
    _check_simd_cache(x.dtype)
    MR, NR = _MR, block_cols(x.dtype.itemsize)
    Hp, Wp = _padded_size(g)
    img_g = Hp * Wp * g.Cg
    # padded channels-last input, flat, with room for a tap block's overshoot at the end
    xtf = np.empty(g.N * g.G * img_g + MR, dtype=x.dtype)
    xtf[g.N * g.G * img_g:] = 0
    _to_padded_channels_last(x, xtf[:g.N * g.G * img_g].reshape(g.N, g.G, Hp, Wp, g.Cg), g.G, g.pt, g.pl,
                             x.dtype.type(0))
    # tap blocks: runs of taps contiguous in xtf (a row of S*Cg when dw == 1, else Cg), cut
    # into blocks of MR (a run's last block reads past it: those rows are dropped)
    run = g.S * g.Cg if g.dw == 1 else g.Cg
    starts = [(r, 0) for r in range(g.R)] if g.dw == 1 else [(r, s) for r in range(g.R) for s in range(g.S)]
    blocks = [(r, s, e) for r, s in starts for e in range(0, run, MR)]
    tapoff = np.array([(r * g.dh * Wp + s * g.dw) * g.Cg + e for r, s, e in blocks], dtype=np.int64)
    aoff_img = (np.arange(Hp * Wp, dtype=np.int64) * g.Cg)    # pixel (h, w) -> its offset
    npix = g.N * g.P * g.Q
    gyt = np.empty(npix * g.K + NR, dtype=gy.dtype)         # channels-last output gradient
    gyt[npix * g.K:] = 0
    _to_padded_channels_last(gy, gyt[:npix * g.K].reshape(g.N, 1, g.P, g.Q, g.K), 1, 0, 0, x.dtype.type(0))
    KBn = -(-g.Kg // NR)
    S_ = max(1, min(_WGRAD_SLICES, npix // _WGRAD_MIN_PIX))   # from the shape only: deterministic
    parts = np.empty((S_, g.G, KBn, len(blocks), MR, NR), dtype=x.dtype)
    CH = min(_WGRAD_CHUNK, npix)
    _implicit_backward_weight(xtf, aoff_img, tapoff, gyt, g.K, g.N, g.P, g.Q, g.G, g.sh, g.sw, Wp, img_g, CH,
                              parts, _workers(S_ * g.G * KBn))
    total = parts[0] if S_ == 1 else _sum_parts(parts)
    # total[g, kb, block, i, j] -> gw[g*Kg + kb*NR + j, c, r, s] for tap (r, s, c) of (block, i)
    t = total.transpose(0, 1, 4, 2, 3).reshape(g.G, KBn * NR, len(blocks) * MR)[:, :g.Kg]
    blocks_per_start = -(-run // MR)
    t = t.reshape(g.G, g.Kg, len(starts), blocks_per_start * MR)[..., :run]    # taps in (r, s, c) order
    gw[...] = t.reshape(g.G, g.Kg, g.R, g.S, g.Cg).transpose(0, 1, 4, 2, 3).reshape(g.K, g.Cg, g.R, g.S)
    return gw


@njit(**_JIT)
def _sum_parts(parts):
    """parts.sum(0) in slice order (fixed, so the bits never depend on the thread count)."""
    out = parts[0].copy()
    flat = out.reshape(-1)
    for s in range(1, parts.shape[0]):
        src = parts[s].reshape(-1)
        for i in range(flat.shape[0]):
            flat[i] += src[i]
    return out


def conv2d_backward_bias(grad_out):
    """grad_bias (K,) = grad_out.sum over (N, P, Q)."""
    op = "conv2d_backward_bias"
    check_array(op, "grad_out", grad_out, ndim=4, dtype="float")
    # numpy's pairwise sum: deterministic, and memory bound either way
    return grad_out.sum(axis=(0, 2, 3)).astype(grad_out.dtype, copy=False)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Column matrix of x (N, C, H, W) -> (N, C*R*S, P*Q), like torch.nn.functional.unfold:
    col[n, (c*R + r)*S + s, p*Q + q] = x[n, c, p*sh + r*dh - top, q*sw + s*dw - left]."""
    op = "im2col"
    check_array(op, "x", x, ndim=4, dtype="float")
    g = check_col_args(op, x.shape, kernel_size, stride, padding, dilation)
    col = np.empty((g.N, g.C * g.R * g.S, g.P * g.Q), dtype=x.dtype)
    if col.size:
        _im2col_full(x, col, g.R, g.S, *_geom_args(g), g.P, g.Q, x.dtype.type(0))
    return col


def col2im(col, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of im2col, like torch.nn.functional.fold: sums every column entry back
    into the input pixel it was read from -> (N, C, H, W)."""
    op = "col2im"
    g = check_col_args(op, x_shape, kernel_size, stride, padding, dilation)
    check_array(op, "col", col, dtype="float", shape=(g.N, g.C * g.R * g.S, g.P * g.Q))
    gx = np.empty((g.N, g.C, g.H, g.W), dtype=col.dtype)
    if gx.size:
        _col2im_full(col, gx, g.R, g.S, *_geom_args(g), g.P, g.Q, col.dtype.type(0))
    return gx
