"""2-D convolution on CUDA: direct and im2col algorithms, forward and backward.

Same public functions and signatures as ``cpu.py``; geometry and padding rules in
``nbdl.kernels.conv``.

direct  one thread per output element for the forward and the input gradient (the
        input gradient gathers over the (k, r, s) that read each input pixel, so no
        two threads write one address); one block per weight element for the weight
        gradient, a fixed-order shared-memory tree reduction over (n, p, q).
im2col  the column matrix of a chunk of images (an im2col kernel), then a tiled
        shared-memory GEMM (batched over images and groups through strides);
        the input gradient is the GEMM W^T dy followed by a gathering col2im; the weight
        gradient is the GEMM dy col^T with the reduction over (image, pixel) walked in
        order by each thread.

No float atomics anywhere: every output element is written by one thread (or one block
reduction) in a fixed order, so two runs give identical bits.
"""
from collections import namedtuple

import numpy as np
from numba import boolean, cuda, float32, float64, int64
from numba.core.types import UniTuple

from nbdl.kernels._cuda import grid1d
from . import check_backward_input_args, check_backward_weight_args, check_col_args, \
    check_forward_args, resolve_algo
from nbdl.kernels._checks import check_array

TILE = 16                      # GEMM tile: TILE x TILE threads, one output each
RED_THREADS = 128              # threads of one reduction block (power of two)
_COL_BUDGET = 1 << 26          # elements of the column buffer (256 MiB in float32)


def _make_kernels(dtype):
    """Every kernel of this module for one float dtype (shared-memory tiles and typed zeros
    need the dtype as a compile-time constant)."""
    zero = dtype(0)

    @cuda.jit(cache=True)
    def direct_forward(x, w, bias, has_bias, y, G, sh, sw, dh, dw, pt, pl):
        """y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s] * x[n, g*Cg + c, p*sh + r*dh - pt,
        q*sw + s*dw - pl]; one thread per output element."""
        i = cuda.grid(1)
        N, K, P, Q = y.shape
        if i >= N * K * P * Q:
            return
        q = i % Q
        p = (i // Q) % P
        k = (i // (P * Q)) % K
        n = i // (K * P * Q)
        H, W = x.shape[2], x.shape[3]
        Cg, R, S = w.shape[1], w.shape[2], w.shape[3]
        c0 = (k // (K // G)) * Cg
        acc = bias[k] if has_bias else zero
        for c in range(Cg):
            for r in range(R):
                ih = p * sh + r * dh - pt
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    iw = q * sw + s * dw - pl
                    if 0 <= iw < W:
                        acc += w[k, c, r, s] * x[n, c0 + c, ih, iw]
        y[n, k, p, q] = acc

    @cuda.jit(cache=True)
    def direct_backward_input(gy, w, gx, G, sh, sw, dh, dw, pt, pl):
        """gx[n, c, ih, iw] = sum over the (k, r, s) with ih + pt - r*dh = p*sh and
        iw + pl - s*dw = q*sw inside the output of w[k, c - g*Cg, r, s] * gy[n, k, p, q];
        one thread per input element (a gather: no two threads write one address)."""
        i = cuda.grid(1)
        N, C, H, W = gx.shape
        if i >= N * C * H * W:
            return
        iw = i % W
        ih = (i // W) % H
        c = (i // (H * W)) % C
        n = i // (C * H * W)
        K, P, Q = gy.shape[1], gy.shape[2], gy.shape[3]
        Cg, R, S = w.shape[1], w.shape[2], w.shape[3]
        Kg = K // G
        g = c // Cg
        ci = c - g * Cg
        acc = zero
        for r in range(R):
            ph = ih + pt - r * dh
            if ph < 0 or ph % sh != 0 or ph // sh >= P:
                continue
            p = ph // sh
            for s in range(S):
                qw = iw + pl - s * dw
                if qw < 0 or qw % sw != 0 or qw // sw >= Q:
                    continue
                q = qw // sw
                for k in range(g * Kg, (g + 1) * Kg):
                    acc += w[k, ci, r, s] * gy[n, k, p, q]
        gx[n, c, ih, iw] = acc

    @cuda.jit(cache=True)
    def direct_backward_weight_serial(gy, x, gw, G, sh, sw, dh, dw, pt, pl):
        """gw[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * x[n, g*Cg + c, p*sh + r*dh - pt,
        q*sw + s*dw - pl]; one thread per weight element sums (n, p, q) in order."""
        i = cuda.grid(1)
        K, Cg, R, S = gw.shape
        if i >= K * Cg * R * S:
            return
        N, P, Q = gy.shape[0], gy.shape[2], gy.shape[3]
        H, W = x.shape[2], x.shape[3]
        s = i % S
        r = (i // S) % R
        c = (i // (S * R)) % Cg
        k = i // (S * R * Cg)
        xc = (k // (K // G)) * Cg + c
        acc = zero
        for n in range(N):
            for p in range(P):
                ih = p * sh + r * dh - pt
                if ih < 0 or ih >= H:
                    continue
                for q in range(Q):
                    iw = q * sw + s * dw - pl
                    if 0 <= iw < W:
                        acc += gy[n, k, p, q] * x[n, xc, ih, iw]
        gw[k, c, r, s] = acc

    @cuda.jit(cache=True)
    def direct_backward_weight_tree(gy, x, gw, G, sh, sw, dh, dw, pt, pl):
        """The same sums for few weights and long reductions: one block per weight element,
        each thread sums a strided slice of (n, p, q), then a fixed-order tree in shared
        memory (deterministic, no atomics)."""
        part = cuda.shared.array(RED_THREADS, dtype)
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        K, Cg, R, S = gw.shape
        N, P, Q = gy.shape[0], gy.shape[2], gy.shape[3]
        H, W = x.shape[2], x.shape[3]
        s = b % S
        r = (b // S) % R
        c = (b // (S * R)) % Cg
        k = b // (S * R * Cg)
        xc = (k // (K // G)) * Cg + c
        acc = zero
        for j in range(t, N * P * Q, RED_THREADS):
            q = j % Q
            p = (j // Q) % P
            n = j // (P * Q)
            ih = p * sh + r * dh - pt
            iw = q * sw + s * dw - pl
            if 0 <= ih < H and 0 <= iw < W:
                acc += gy[n, k, p, q] * x[n, xc, ih, iw]
        part[t] = acc
        cuda.syncthreads()
        half = RED_THREADS // 2
        while half > 0:
            if t < half:
                part[t] += part[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            gw[k, c, r, s] = part[0]

    @cuda.jit(cache=True)
    def bias_grad_serial(gy, gb):
        """gb[k] = sum_{n, p, q} gy[n, k, p, q]; one thread per channel, in order."""
        k = cuda.grid(1)
        N, K, P, Q = gy.shape
        if k >= K:
            return
        acc = zero
        for n in range(N):
            for p in range(P):
                for q in range(Q):
                    acc += gy[n, k, p, q]
        gb[k] = acc

    @cuda.jit(cache=True)
    def bias_grad_tree(gy, gb):
        """The same sums for long reductions: one block per channel, fixed-order tree."""
        part = cuda.shared.array(RED_THREADS, dtype)
        k = cuda.blockIdx.x
        t = cuda.threadIdx.x
        N, K, P, Q = gy.shape
        acc = zero
        for j in range(t, N * P * Q, RED_THREADS):
            n = j // (P * Q)
            pq = j - n * P * Q
            acc += gy[n, k, pq // Q, pq % Q]
        part[t] = acc
        cuda.syncthreads()
        half = RED_THREADS // 2
        while half > 0:
            if t < half:
                part[t] += part[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            gb[k] = part[0]

    @cuda.jit(cache=True)
    def im2col(x, col, n0, R, S, sh, sw, dh, dw, pt, pl, Q):
        """col[b, (c*R + r)*S + s, p*Q + q] = x[n0 + b, c, p*sh + r*dh - pt, q*sw + s*dw - pl]
        (0 outside the image); col (nb, C*R*S, P*Q); one thread per col element."""
        i = cuda.grid(1)
        nb, L, PQ = col.shape
        if i >= nb * L * PQ:
            return
        pq = i % PQ
        l = (i // PQ) % L
        b = i // (L * PQ)
        s = l % S
        r = (l // S) % R
        c = l // (R * S)
        p = pq // Q
        q = pq - p * Q
        ih = p * sh + r * dh - pt
        iw = q * sw + s * dw - pl
        if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
            col[b, l, pq] = x[n0 + b, c, ih, iw]
        else:
            col[b, l, pq] = zero

    @cuda.jit(cache=True)
    def col2im(col, gx, n0, R, S, sh, sw, dh, dw, pt, pl, P, Q):
        """gx[n0 + b, c, ih, iw] = sum of the col[b, (c*R + r)*S + s, p*Q + q] read from that
        pixel; one thread per input element gathers its (r, s) taps (no two threads write
        one address)."""
        i = cuda.grid(1)
        nb = col.shape[0]
        C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
        if i >= nb * C * H * W:
            return
        iw = i % W
        ih = (i // W) % H
        c = (i // (H * W)) % C
        b = i // (C * H * W)
        acc = zero
        for r in range(R):
            ph = ih + pt - r * dh
            if ph < 0 or ph % sh != 0 or ph // sh >= P:
                continue
            p = ph // sh
            for s in range(S):
                qw = iw + pl - s * dw
                if qw < 0 or qw % sw != 0 or qw // sw >= Q:
                    continue
                acc += col[b, (c * R + r) * S + s, p * Q + qw // sw]
        gx[n0 + b, c, ih, iw] = acc

    @cuda.jit(cache=True)
    def gemm(A, B, C, bias, M, N, L, nred, Z2, sa, sb, sc, accumulate, has_bias):
        """Batched, strided C[z][i, j] (+)= sum_{u < nred} sum_{l < L} A[z][u][i, l] * B[z][u][l, j]
        (+ bias[z2*M + i]). Flat arrays; the batch index blockIdx.z = z1*Z2 + z2 and the strides
        come in sa = (z1, z2, u, i, l), sb = (z1, z2, u, l, j), sc = (z1, z2, i, j), so one kernel
        serves the forward (batch = image x group), W^T dy (strides swap i and l) and dy col^T
        (reduction over the images u). TILE x TILE tiles through shared memory; each thread
        owns one output and sums in a fixed order (deterministic)."""
        ta = cuda.shared.array((TILE, TILE), dtype)
        tb = cuda.shared.array((TILE, TILE), dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i = cuda.blockIdx.y * TILE + ty
        j = cuda.blockIdx.x * TILE + tx
        z1 = cuda.blockIdx.z // Z2
        z2 = cuda.blockIdx.z - z1 * Z2
        a0 = z1 * sa[0] + z2 * sa[1]
        b0 = z1 * sb[0] + z2 * sb[1]
        acc = zero
        for u in range(nred):
            au = a0 + u * sa[2]
            bu = b0 + u * sb[2]
            for l0 in range(0, L, TILE):
                la = l0 + tx
                if i < M and la < L:
                    ta[ty, tx] = A[au + i * sa[3] + la * sa[4]]
                else:
                    ta[ty, tx] = zero
                lb = l0 + ty
                if j < N and lb < L:
                    tb[ty, tx] = B[bu + lb * sb[3] + j * sb[4]]
                else:
                    tb[ty, tx] = zero
                cuda.syncthreads()
                for kk in range(TILE):
                    acc += ta[ty, kk] * tb[kk, tx]
                cuda.syncthreads()
        if i < M and j < N:
            ci = z1 * sc[0] + z2 * sc[1] + i * sc[2] + j * sc[3]
            if has_bias:
                acc += bias[z2 * M + i]
            if accumulate:
                acc += C[ci]
            C[ci] = acc

    return _Kernels(direct_forward, direct_backward_input, direct_backward_weight_serial,
                    direct_backward_weight_tree, bias_grad_serial, bias_grad_tree, im2col, col2im, gemm)


_Kernels = namedtuple("_Kernels", [
    "direct_forward", "direct_backward_input", "direct_backward_weight_serial",
    "direct_backward_weight_tree", "bias_grad_serial", "bias_grad_tree", "im2col", "col2im", "gemm"])
_K32 = _make_kernels(float32)
_K64 = _make_kernels(float64)
# module-level names, so the PTX check can see that every kernel is listed in ptx_signatures()
(_direct_forward32, _direct_backward_input32, _direct_backward_weight_serial32,
 _direct_backward_weight_tree32, _bias_grad_serial32, _bias_grad_tree32,
 _im2col32, _col2im32, _gemm32) = _K32
(_direct_forward64, _direct_backward_input64, _direct_backward_weight_serial64,
 _direct_backward_weight_tree64, _bias_grad_serial64, _bias_grad_tree64,
 _im2col64, _col2im64, _gemm64) = _K64


def _kernels(dtype):
    return _K32 if np.dtype(dtype) == np.float32 else _K64


def _launch_gemm(A, B, C, M, N, L, Z1, Z2, sa, sb, sc, nred=1, accumulate=False, bias=None):
    """C (+)= A @ B for Z1*Z2 batches; see _gemm for the stride tuples."""
    if M == 0 or N == 0:
        return
    kernel = _kernels(C.dtype).gemm
    has_bias = bias is not None
    b = bias if has_bias else _dummy(C.dtype)
    grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE, Z1 * Z2)
    kernel[grid, (TILE, TILE)](A, B, C, b, M, N, L, nred, Z2, sa, sb, sc, accumulate, has_bias)


def _dummy(dtype):
    """A 1-element array standing in for an absent bias (never read: has_bias is False)."""
    return cuda.device_array(1, dtype=dtype)


def _tree_pays(length, outputs):
    """Reduce with one block per output (a shared-memory tree) rather than one thread per
    output when each sum is long next to the number of sums (too few threads otherwise)."""
    return length >= 64 * outputs


def _grid(n):
    """(blocks, threads) for n one-thread-per-item tasks; small launches get small blocks."""
    return grid1d(n)


def _chunk(g):
    """Images per column-matrix chunk: the column buffer stays under _COL_BUDGET elements."""
    per_image = g.C * g.R * g.S * g.P * g.Q
    return max(1, min(g.N, _COL_BUDGET // max(1, per_image)))


def _geom(g):
    return g.sh, g.sw, g.dh, g.dw, g.pt, g.pl


# ---------------------------------------------------------------------------------------------
# host functions (public; same names and signatures as cpu.py)
# ---------------------------------------------------------------------------------------------

def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algo="im2col"):
    """y = conv2d(x, weight) + bias: x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None
    -> y (N, K, P, Q) on the device. algo: "direct", "im2col" or "auto"."""
    op = "conv2d_forward"
    g = check_forward_args(op, x, weight, bias, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cuda")
    y = cuda.device_array((g.N, g.K, g.P, g.Q), dtype=x.dtype)
    if y.size == 0:
        return y
    K = _kernels(x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else _dummy(x.dtype)
    if algo == "direct":
        blocks, threads = _grid(y.size)
        K.direct_forward[blocks, threads](x, weight, b, has_bias, y, g.G, *_geom(g))
        return y
    L, PQ = g.Cg * g.R * g.S, g.P * g.Q
    nb = _chunk(g)
    col = cuda.device_array((nb, g.C * g.R * g.S, PQ), dtype=x.dtype)
    wf, yf = weight.reshape(-1), y.reshape(-1)
    for n0 in range(0, g.N, nb):
        m = min(nb, g.N - n0)
        blocks, threads = _grid(m * col.shape[1] * PQ)
        K.im2col[blocks, threads](x, col[:m], n0, g.R, g.S, *_geom(g), g.Q)
        # y[n0 + z1, z2*Kg + i, j] = sum_l w[z2*Kg + i, l] * col[z1, z2*L + l, j]
        _launch_gemm(wf, col.reshape(-1), yf[n0 * g.K * PQ:], g.Kg, PQ, L, m, g.G,
                     sa=(0, g.Kg * L, 0, L, 1), sb=(g.C * g.R * g.S * PQ, L * PQ, 0, PQ, 1),
                     sc=(g.K * PQ, g.Kg * PQ, PQ, 1), bias=bias)
    return y


def conv2d_backward_input(grad_out, weight, x_shape, stride=1, padding=0, dilation=1, groups=1,
                          algo="im2col"):
    """grad_x (N, C, H, W) of y = conv2d(x, weight) given grad_out = dL/dy (N, K, P, Q)."""
    op = "conv2d_backward_input"
    g = check_backward_input_args(op, grad_out, weight, x_shape, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cuda")
    gx = cuda.device_array((g.N, g.C, g.H, g.W), dtype=grad_out.dtype)
    if gx.size == 0:
        return gx
    K = _kernels(grad_out.dtype)
    if algo == "direct":
        blocks, threads = _grid(gx.size)
        K.direct_backward_input[blocks, threads](grad_out, weight, gx, g.G, *_geom(g))
        return gx
    L, PQ = g.Cg * g.R * g.S, g.P * g.Q
    nb = _chunk(g)
    gcol = cuda.device_array((nb, g.C * g.R * g.S, PQ), dtype=grad_out.dtype)
    wf, gyf = weight.reshape(-1), grad_out.reshape(-1)
    for n0 in range(0, g.N, nb):
        m = min(nb, g.N - n0)
        # gcol[z1, z2*L + l, j] = sum_k w[z2*Kg + k, l] * gy[n0 + z1, z2*Kg + k, j]
        _launch_gemm(wf, gyf[n0 * g.K * PQ:], gcol.reshape(-1), L, PQ, g.Kg, m, g.G,
                     sa=(0, g.Kg * L, 0, 1, L), sb=(g.K * PQ, g.Kg * PQ, 0, PQ, 1),
                     sc=(g.C * g.R * g.S * PQ, L * PQ, PQ, 1))
        blocks, threads = _grid(m * g.C * g.H * g.W)
        K.col2im[blocks, threads](gcol[:m], gx, n0, g.R, g.S, *_geom(g), g.P, g.Q)
    return gx


def conv2d_backward_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                           algo="im2col"):
    """grad_weight (K, C/groups, R, S) of y = conv2d(x, weight) given grad_out (N, K, P, Q)."""
    op = "conv2d_backward_weight"
    g = check_backward_weight_args(op, grad_out, x, weight_shape, stride, padding, dilation, groups)
    algo = resolve_algo(op, algo, g, "cuda")
    gw = cuda.device_array((g.K, g.Cg, g.R, g.S), dtype=x.dtype)
    if g.N == 0:
        from nbdl.kernels.elementwise.cuda import fill
        fill(gw, 0.0)
        return gw
    K = _kernels(x.dtype)
    if algo == "direct":
        if _tree_pays(g.N * g.P * g.Q, gw.size):
            K.direct_backward_weight_tree[gw.size, RED_THREADS](grad_out, x, gw, g.G, *_geom(g))
        else:
            K.direct_backward_weight_serial[_grid(gw.size)](grad_out, x, gw, g.G, *_geom(g))
        return gw
    L, PQ = g.Cg * g.R * g.S, g.P * g.Q
    nb = _chunk(g)
    col = cuda.device_array((nb, g.C * g.R * g.S, PQ), dtype=x.dtype)
    gyf, gwf = grad_out.reshape(-1), gw.reshape(-1)
    for n0 in range(0, g.N, nb):
        m = min(nb, g.N - n0)
        blocks, threads = _grid(m * col.shape[1] * PQ)
        K.im2col[blocks, threads](x, col[:m], n0, g.R, g.S, *_geom(g), g.Q)
        # gw[z2*Kg + i, l] (+)= sum_u sum_j gy[n0 + u, z2*Kg + i, j] * col[u, z2*L + l, j]
        _launch_gemm(gyf[n0 * g.K * PQ:], col.reshape(-1), gwf, g.Kg, L, PQ, 1, g.G,
                     sa=(0, g.Kg * PQ, g.K * PQ, PQ, 1), sb=(0, L * PQ, g.C * g.R * g.S * PQ, 1, PQ),
                     sc=(0, g.Kg * L, L, 1), nred=m, accumulate=n0 > 0)
    return gw


def conv2d_backward_bias(grad_out):
    """grad_bias (K,) = grad_out.sum over (N, P, Q)."""
    check_array("conv2d_backward_bias", "grad_out", grad_out, ndim=4, dtype="float")
    gb = cuda.device_array(grad_out.shape[1], dtype=grad_out.dtype)
    if gb.size:
        N, K, P, Q = grad_out.shape
        kern = _kernels(grad_out.dtype)
        if _tree_pays(N * P * Q, K):
            kern.bias_grad_tree[K, RED_THREADS](grad_out, gb)
        else:
            kern.bias_grad_serial[_grid(K)](grad_out, gb)
    return gb


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Column matrix of x (N, C, H, W) -> (N, C*R*S, P*Q), like torch.nn.functional.unfold."""
    op = "im2col"
    check_array(op, "x", x, ndim=4, dtype="float")
    g = check_col_args(op, x.shape, kernel_size, stride, padding, dilation)
    col = cuda.device_array((g.N, g.C * g.R * g.S, g.P * g.Q), dtype=x.dtype)
    if col.size:
        blocks, threads = _grid(col.size)
        _kernels(x.dtype).im2col[blocks, threads](x, col, 0, g.R, g.S, *_geom(g), g.Q)
    return col


def col2im(col, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of im2col, like torch.nn.functional.fold -> (N, C, H, W)."""
    op = "col2im"
    g = check_col_args(op, x_shape, kernel_size, stride, padding, dilation)
    check_array(op, "col", col, dtype="float", shape=(g.N, g.C * g.R * g.S, g.P * g.Q))
    gx = cuda.device_array((g.N, g.C, g.H, g.W), dtype=col.dtype)
    if gx.size:
        blocks, threads = _grid(gx.size)
        _kernels(col.dtype).col2im[blocks, threads](col, gx, 0, g.R, g.S, *_geom(g), g.P, g.Q)
    return gx


def ptx_signatures():
    """(kernel, signature) for every kernel of this module, float32 and float64."""
    i = int64
    geom = (i, i, i, i, i, i)
    sigs = []
    for f, K in ((float32, _K32), (float64, _K64)):
        a4, a3, a1 = f[:, :, :, ::1], f[:, :, ::1], f[::1]
        sigs += [
            (K.direct_forward, (a4, a4, a1, boolean, a4, i) + geom),
            (K.direct_backward_input, (a4, a4, a4, i) + geom),
            (K.direct_backward_weight_serial, (a4, a4, a4, i) + geom),
            (K.direct_backward_weight_tree, (a4, a4, a4, i) + geom),
            (K.bias_grad_serial, (a4, a1)),
            (K.bias_grad_tree, (a4, a1)),
            (K.im2col, (a4, a3, i, i, i) + geom + (i,)),
            (K.col2im, (a3, a4, i, i, i) + geom + (i, i)),
            (K.gemm, (a1, a1, a1, a1, i, i, i, i, i, UniTuple(i, 5), UniTuple(i, 5), UniTuple(i, 4),
                      boolean, boolean)),
        ]
    return sigs
