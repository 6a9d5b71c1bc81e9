"""2-D convolution on the CPU: direct and im2col algorithms, forward and backward.

Geometry and padding rules: see ``nbdl.kernels.conv`` (NCHW input, OIHW weight).

Both algorithms run as one numba parallel region per call and never call BLAS.
The GEMMs of the im2col path use ``_dot6x4``, a register-blocked micro-kernel
(6 rows x 4 columns of scalar accumulators, the reduction dimension contiguous in
both operands, fastmath so LLVM vectorizes the reduction). Why not OpenBLAS
through ``nbdl.kernels.linalg``: measured here it reaches 110-160 GFLOP/s on one
thread against about 95 for OpenBLAS (whose kernels stop at AVX2), it fuses with
the im2col packing so the column matrix never exceeds an L2-sized tile, and it
keeps a single thread pool (numba's) instead of alternating numba's and BLAS's
pools, which were seen to fight for the two cores (5-100x slowdowns).

Parallel loops hand out whole tasks (an image, an image tile, a block of weight
rows) to workers in a fixed round-robin; every output element is written by
exactly one task and every reduction runs in a fixed order, so results are
identical from run to run. Each worker allocates its scratch tile once.
"""
import contextlib

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads, uint64

from . import check_backward_input_args, check_backward_weight_args, check_col_args, \
    check_forward_args, resolve_algo
from nbdl.kernels._checks import check_array

_JIT = dict(cache=True, fastmath=True, error_model="numpy")

MR, NR = 6, 4        # register block of _dot6x4
_TILE_BYTES = 256 * 1024  # scratch tile per worker: fits the 1 MiB L2 with room for the weights
_KC = 256                 # GEMM reduction chunk: a 4-row block of each operand stays in L1


def _round_up(v, m):
    return -(-v // m) * m


def _workers(ntasks):
    return max(1, min(get_num_threads(), ntasks))


_SMALL_FLOPS = 4e6    # below this a convolution runs on one thread


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
    run, so packing a patch is R short copies; padding becomes plain zeros."""
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


@njit(inline="always", **_JIT)
def _put(C, i0, ni, j0, nj, blk):
    """C[i0 + i, j0 + j] += blk[i][j] for i < ni, j < nj (constant trip counts when the block
    is full, so the tuple indices fold and the accumulators stay in registers)."""
    if ni == MR and nj == NR:
        for i in range(MR):
            for j in range(NR):
                C[i0 + i, j0 + j] += blk[i][j]
    else:
        for i in range(MR):
            for j in range(NR):
                if i < ni and j < nj:
                    C[i0 + i, j0 + j] += blk[i][j]


@njit(**_JIT)
def _pack_patch_rows(xf, base, Hp_Wp, R, S, Cg, sh, sw, dh, dw, Q, pix0, npix, l0, l1, buf, zero):
    """buf[j, l - l0] = col_T[pix0 + j, l] for l0 <= l < l1, j < npix: rows of the transposed
    column matrix, col_T[p*Q + q, (r*S + s)*Cg + c] = xt[p*sh + r*dh, q*sw + s*dw, c], read from
    one padded channels-last image xt = xf[base:] of shape (Hp, Wp, Cg). Channels-last makes
    each (r, s..) run of the patch contiguous, so packing is a few short copies per pixel.
    The rest of buf (columns past l1 - l0, rows from npix to a multiple of 4) is zeroed."""
    Wp = Hp_Wp[1]
    run = S * Cg if dw == 1 else Cg         # contiguous elements per copy
    Lc = buf.shape[1]
    for j in range(npix):
        p, q = divmod(pix0 + j, Q)
        dst = buf[j]
        for u in range(l0 // run, (l1 - 1) // run + 1):        # the runs overlapping [l0, l1)
            r, s = (u, 0) if dw == 1 else divmod(u, S)
            src = xf[base + ((p * sh + r * dh) * Wp + q * sw + s * dw) * Cg:]
            a = max(l0, u * run)
            b = min(l1, (u + 1) * run)
            d = dst[a - l0:]
            sv = src[a - u * run:]
            for t in range(b - a):
                d[t] = sv[t]
        for t in range(l1 - l0, Lc):
            dst[t] = zero
    for j in range(npix, min(_round4(npix), buf.shape[0])):
        for t in range(Lc):
            buf[j, t] = zero


@njit(inline="always", **_JIT)
def _round4(v):
    return (v + 3) // 4 * 4


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
def _im2col_forward(xt, wpc, bias, has_bias, y, R, S, sh, sw, dh, dw, KC, TP, nw, zero):
    """y[n, g*Kg + k, pix] = bias[g*Kg + k] + sum_l w_g[k, l] * col_T[pix, l]  (a GEMM per image
    and group, l over the R*S*Cg patch entries in (r, s, c) order).

    xt (N, G, Hp, Wp, Cg) padded channels-last input; wpc (nchunks, K, KCp) the weight as
    (K, R*S*Cg) cut into column chunks of KC, each zero-padded to KCp; y (N, K, P, Q).
    Blocking: a task is (image, group, tile of TP output pixels); for each chunk of KC
    patch columns the tile of col_T (TP x KCp) is packed into L2 and multiplied by the
    chunk of weights (Kg x KCp, L2 too) with the 6x4 micro-kernel, accumulating into y."""
    N, G, Hp, Wp, Cg = xt.shape
    nchunks, K, KCp = wpc.shape
    Kg = K // G
    L = R * S * Cg
    P, Q = y.shape[2], y.shape[3]
    PQ = P * Q
    ntiles = (PQ + TP - 1) // TP
    ntasks = N * G * ntiles
    y3 = y.reshape((N, K, PQ))
    xf = xt.reshape(-1)
    hw = (Hp, Wp)
    for wkr in prange(nw):
        buf = np.empty((TP, KCp), dtype=xt.dtype)
        for t in range(wkr, ntasks, nw):
            ng, tile = divmod(t, ntiles)
            n, g = divmod(ng, G)
            pix0 = tile * TP
            npix = min(TP, PQ - pix0)
            yt = y3[n, g * Kg:(g + 1) * Kg, pix0:pix0 + npix]
            for k in range(Kg):
                b = bias[g * Kg + k] if has_bias else zero
                for j in range(npix):
                    yt[k, j] = b
            base = (n * G + g) * Hp * Wp * Cg
            for ch in range(nchunks):
                l0 = ch * KC
                _pack_patch_rows(xf, base, hw, R, S, Cg, sh, sw, dh, dw, Q, pix0, npix,
                                 l0, min(L, l0 + KC), buf, zero)
                A = wpc[ch]
                for k in range(0, Kg, MR):
                    a = g * Kg + k
                    last = g * Kg + Kg - 1               # rows past Kg repeat the last one; not stored
                    a0, a1, a2 = A[a], A[min(a + 1, last)], A[min(a + 2, last)]
                    a3, a4, a5 = A[min(a + 3, last)], A[min(a + 4, last)], A[min(a + 5, last)]
                    for j in range(0, npix, NR):
                        blk = _dot6x4(a0, a1, a2, a3, a4, a5, buf[j], buf[j + 1], buf[j + 2], buf[j + 3],
                                      KCp, zero)
                        _put(yt, k, min(MR, Kg - k), j, min(NR, npix - j), blk)


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
                    for j in range(0, npix, MR):
                        for l in range(0, l1 - l0, NR):
                            b = l0 + l
                            blk = _dot6x4(gyt[j], gyt[j + 1], gyt[j + 2], gyt[j + 3], gyt[j + 4], gyt[j + 5],
                                          wt[g, b], wt[g, b + 1], wt[g, b + 2], wt[g, b + 3], Kp, zero)
                            for jj in range(MR):
                                for ll in range(NR):
                                    gcol[j + jj, l + ll] = blk[jj][ll]
                    for j in range(npix):               # scatter-add, the adjoint of _pack_patch_rows
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
def _im2col_backward_weight(gy, gyk, x, gw2, G, R, S, sh, sw, dh, dw, pt, pl, LB, PC, nw, zero):
    """gw2[g*Kg + k, l] = sum_n sum_pix gy[n, g*Kg + k, pix] * col_n[l, pix]: a GEMM whose reduction
    runs over (image, output pixel), contiguous in gy and in the packed rows of the column
    matrix (l = (c*R + r)*S + s).

    Small images (gyk is gy transposed to (K, N*P*Q)): a chunk of the reduction is PC // PQ
    whole images, so the dot products stay long. Large images (gyk unused): chunks of PC
    pixels of one image. gw2 (K, Cg*R*S), fully written. Tasks: (group, block of LB
    column-matrix rows); a task owns its slice of gw2, packs only its own rows and visits
    the chunks in order (deterministic sums)."""
    N, C, H, W = x.shape
    K = gy.shape[1]
    Kg = K // G
    Cg = C // G
    P, Q = gy.shape[2], gy.shape[3]
    PQ = P * Q
    L = Cg * R * S
    joint = gyk.shape[1] == N * PQ
    ipc = max(1, PC // PQ)                          # whole images per chunk (joint)
    tiles = (PQ + PC - 1) // PC                     # chunks per image (not joint)
    nchunks = (N + ipc - 1) // ipc if joint else N * tiles
    nblk = (L + LB - 1) // LB
    ntasks = G * nblk
    gy3 = gy.reshape((N, K, PQ))
    for wkr in prange(nw):
        buf = np.empty((LB, PC), dtype=x.dtype)
        for t in range(wkr, ntasks, nw):
            g, bi = divmod(t, nblk)
            l0 = bi * LB
            nrows = min(LB, L - l0)
            gwt = gw2[g * Kg:(g + 1) * Kg, l0:l0 + nrows]
            for k in range(Kg):
                for i in range(nrows):
                    gwt[k, i] = zero
            for ch in range(nchunks):
                if joint:
                    n0 = ch * ipc
                    npos = min(ipc, N - n0) * PQ
                    for u in range(npos // PQ):
                        _pack_col_rows(x, n0 + u, g * Cg, R, S, H, W, sh, sw, dh, dw, pt, pl, Q, l0, nrows,
                                       0, PQ, buf, u * PQ, zero)
                    n, j0 = 0, n0 * PQ
                else:
                    n, tile = divmod(ch, tiles)
                    j0 = tile * PC
                    npos = min(PC, PQ - j0)
                    _pack_col_rows(x, n, g * Cg, R, S, H, W, sh, sw, dh, dw, pt, pl, Q, l0, nrows,
                                   j0, npos, buf, 0, zero)
                for i in range(nrows, min(_round4(nrows), LB)):
                    for j in range(npos):
                        buf[i, j] = zero
                for k in range(0, Kg, MR):
                    a = g * Kg + k
                    last = g * Kg + Kg - 1
                    src = gyk if joint else gy3[n]
                    a0, a1, a2 = src[a, j0:], src[min(a + 1, last), j0:], src[min(a + 2, last), j0:]
                    a3, a4, a5 = src[min(a + 3, last), j0:], src[min(a + 4, last), j0:], src[min(a + 5, last), j0:]
                    for i in range(0, nrows, NR):
                        blk = _dot6x4(a0, a1, a2, a3, a4, a5, buf[i], buf[i + 1], buf[i + 2], buf[i + 3],
                                      npos, zero)
                        _put(gwt, k, min(MR, Kg - k), i, min(NR, nrows - i), blk)


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
    so that blocks of MR and of NR rows both tile it)."""
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
    y = np.empty((g.N, g.K, g.P, g.Q), dtype=x.dtype)
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
    L = g.R * g.S * g.Cg
    nchunks = -(-L // _KC)
    KC = _round_up(-(-L // nchunks), 16)            # equal chunks, each a multiple of 16 wide
    wpc = np.zeros((nchunks, g.K, KC), dtype=x.dtype)
    w2 = weight.transpose(0, 2, 3, 1).reshape(g.K, L)                  # (k, r, s, c) order
    for ch in range(nchunks):
        part = w2[:, ch * KC:(ch + 1) * KC]
        wpc[ch, :, :part.shape[1]] = part
    xt = _channels_last(x, g)
    TP = _tile_rows(KC, x.dtype.itemsize)
    nw = _workers(g.N * g.G * -(-g.P * g.Q // TP))
    _im2col_forward(xt, wpc, b, has_bias, y, g.R, g.S, g.sh, g.sw, g.dh, g.dw, KC, TP, nw, zero)
    return y


def _padded_size(g):
    """Rows and columns of the zero-padded input that the output pixels read."""
    return (g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1


def _channels_last(x, g):
    Hp, Wp = _padded_size(g)
    xt = np.empty((g.N, g.G, Hp, Wp, g.Cg), dtype=x.dtype)
    _to_padded_channels_last(x, xt, g.G, g.pt, g.pl, x.dtype.type(0))
    return xt


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
    Lp4 = _round_up(L, NR)
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
    L = g.Cg * g.R * g.S
    PQ = g.P * g.Q
    PC = _KC * 4                               # reduction chunk: LB x PC packed rows in L2
    if PQ <= PC // 2:                          # small images: reduce over whole images at once
        PC = PC // PQ * PQ
        gyk = np.ascontiguousarray(grad_out.reshape(g.N, g.K, PQ).transpose(1, 0, 2)).reshape(g.K, g.N * PQ)
    else:
        PC = min(PC, PQ)
        gyk = np.empty((1, 1), dtype=x.dtype)
    LB = _round_up(min(_blocks(L, g.G, nw), 64), NR)
    _im2col_backward_weight(grad_out, gyk, x, gw.reshape(g.K, L), g.G, g.R, g.S, g.sh, g.sw, g.dh, g.dw,
                            g.pt, g.pl, LB, PC, _workers(g.G * -(-L // LB)), zero)
    return gw


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
