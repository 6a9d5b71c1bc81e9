"""An explicit-SIMD GEMM micro-kernel for the CPU kernels (conv, rnn).

    C[i, j] (+)= sum_l A[l, i] * B[l, j]      i < MR, j < NR = NV * W

A is a packed panel (L, MR): the MR rows of op(A) interleaved, so step l reads MR
consecutive scalars; B is a packed panel (L, NR): NR consecutive columns per step. The
MR x NR block of C lives in MR * NV vector registers for the whole reduction: each step
loads NV vectors of B, broadcasts MR scalars of A and issues MR * NV fused multiply-adds.
The block is written once at the end (C's rows may have any stride, columns contiguous).

Why not plain numba loops: numba's loop vectorizer only vectorizes the innermost loop,
so loops can keep either the reduction in registers (a dot product per output,
vectorized along l, paying a horizontal sum per output: ~40% of the time when L is ~150)
or the outputs in memory (vectorized along j, paying a load and a store of C per few
multiply-adds); both measured ~110-170 GFLOP/s per thread here against ~230 for this
kernel's form. Numba's SLP vectorizer, which could pack scalar accumulators, is off by
default. So the kernel is written in LLVM vector IR through ``numba.extending.intrinsic``:
portable (LLVM lowers a vector wider than the machine's to several registers), cached
like any njit code, and callable from njit functions.

The block shape follows the vector registers: 32 registers of 64 bytes with AVX-512 (a 6 x
4-vector block, 24 accumulators), 16 of 32 bytes otherwise (6 x 2, 12 accumulators).

Variants read A's or B's rows in place at given offsets (implicit GEMMs: a convolution's
column matrix is never built). Small helpers in the same style move the data around a
block: whole-vector copies (``copy_vectors``), the bias-adding store of a finished block
with a masked tail and optional non-temporal stores (``add_scalar_store``,
``store_fence``), write prefetches (``prefetch_for_write``) and register transposes of
square tiles (``transpose_tile``, for packing transposed weights and for the LSTM
backward's transposed gradient store). Matrix-vector blocks
can prefetch their panel rows ahead (``ahead=``).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bytes():
    """64 where numba compiles for AVX-512 (the host's features by default), else 32."""
    try:
        from numba.core import config
        if config.CPU_NAME:                   # a portable cache was asked for
            return 32
        if config.CPU_FEATURES:               # numba compiles for exactly these features
            return 64 if "+avx512f" in config.CPU_FEATURES.split(",") else 32
        from llvmlite import binding
        return 64 if binding.get_host_cpu_features().get("avx512f") else 32
    except Exception:
        return 32


VECTOR_BYTES = _vector_bytes()
MR = 6                                          # rows of the register block
NV = 4 if VECTOR_BYTES == 64 else 2             # vectors per row of the register block


def lanes(itemsize):
    """Elements per vector for a dtype of `itemsize` bytes."""
    return VECTOR_BYTES // itemsize


def block_cols(itemsize, nv=NV):
    """NR, the columns of a register block of nv vectors, for a dtype of `itemsize` bytes."""
    return nv * lanes(itemsize)


_BLOCKS = {}


def make_gemm_block(mr, nv, rows=False, ahead=0):
    """The micro-kernel intrinsic for an mr x (nv vectors) register block (one per shape).
    ``gemm_block`` (MR x NV) suits GEMMs; a single row (mr=1, nv=8: eight accumulators to
    cover the multiply-add latency) suits matrix-vector products. ``rows=True`` gives the
    variant that reads B's rows in place (see ``gemm_block_rows``). ``ahead`` > 0: each
    step also prefetches B's row that many rows on (see ``_Block.prefetch``)."""
    if rows and ahead:
        raise ValueError("make_gemm_block: ahead is not supported with rows=True")
    key = (mr, nv, rows, ahead)
    if key not in _BLOCKS:
        _BLOCKS[key] = _gemm_block_rows_intrinsic(mr, nv) if rows else _gemm_block_intrinsic(mr, nv, ahead)
    return _BLOCKS[key]


def _is_float_array(*arrays):
    """All numba array types of one dtype, float32 or float64."""
    return (all(isinstance(a, types.Array) for a in arrays)
            and all(a.dtype == arrays[0].dtype for a in arrays) and arrays[0].dtype in (types.float32, types.float64))


def _vector_of(context, ary_ty):
    """(element type, itemsize, lanes W, W-vector type) of a float array type."""
    fty = context.get_value_type(ary_ty.dtype)
    itemsize = context.get_abi_sizeof(fty)
    W = lanes(itemsize)
    return fty, itemsize, W, ir.VectorType(fty, W)


def _element_ptrs(context, builder, signature, args, src, dst):
    """(element type, itemsize, lanes W, W-vector type, pointer to src[s0], pointer to
    dst[d0]) for an intrinsic whose arguments src and dst (positions) are float arrays,
    each followed by its element offset (s0, d0)."""
    sv = context.make_array(signature.args[src])(context, builder, args[src])
    dv = context.make_array(signature.args[dst])(context, builder, args[dst])
    return _vector_of(context, signature.args[src]) + (builder.gep(sv.data, [args[src + 1]]),
                                                       builder.gep(dv.data, [args[dst + 1]]))


class _Block:
    """The IR of one MR x NV-vector register block: accumulators (allocas in the entry
    block, promoted to registers by LLVM), one reduction step, the final store."""

    def __init__(self, context, builder, MR, NV, fty):
        self.builder, self.MR, self.NV, self.fty = builder, MR, NV, fty
        self.itemsize = context.get_abi_sizeof(fty)
        self.W = W = lanes(self.itemsize)
        self.vty = ir.VectorType(fty, W)
        self.accs = [[cgutils.alloca_once_value(builder, ir.Constant(self.vty, None)) for _ in range(NV)]
                     for _ in range(MR)]
        self.fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [self.vty] * 3), f"llvm.fma.v{W}f{8 * self.itemsize}")

    def step(self, arow, brow):
        """acc[i][v] += A_l[i] * B_l[v*W:(v+1)*W]; arow, brow: pointers to row l of A and B."""
        b, W, i64 = self.builder, self.W, ir.IntType(64)
        vptr = self.vty.as_pointer()
        undef = ir.Constant(self.vty, ir.Undefined)
        zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), W), None)
        bvec = [b.load(b.bitcast(b.gep(brow, [ir.Constant(i64, v * W)]), vptr), align=self.itemsize)
                for v in range(self.NV)]
        for i in range(self.MR):
            s = b.load(b.gep(arow, [ir.Constant(i64, i)]))
            splat = b.shuffle_vector(b.insert_element(undef, s, ir.Constant(i64, 0)), undef, zero_mask)
            for v in range(self.NV):
                b.store(b.call(self.fma, [splat, bvec[v], b.load(self.accs[i][v])]), self.accs[i][v])

    def prefetch(self, brow):
        """Ask for the cache lines of a B row (brow: a pointer) before they are read.

        A matrix-vector product streams its matrix from L2 and uses each line once; on
        the 2-core AVX-512 machine this was measured on, the hardware prefetcher alone
        kept ~115 GB/s of it coming to one core, and a prefetch 2 KiB ahead ~165 (a plain
        sum read ~170). The address may lie past B's end: a prefetch never faults."""
        for v in range(0, self.NV * self.W, 64 // self.itemsize):
            _prefetch(self.builder, self.builder.gep(brow, [ir.Constant(ir.IntType(64), v)]), write=False)

    def store(self, c_data, ldc, acc_flag):
        """c[i*ldc + v*W ...] (+)= acc[i][v]."""
        b, W, i64 = self.builder, self.W, ir.IntType(64)
        vptr = self.vty.as_pointer()
        for i in range(self.MR):
            crow = b.gep(c_data, [b.mul(ir.Constant(i64, i), ldc)])
            for v in range(self.NV):
                p = b.bitcast(b.gep(crow, [ir.Constant(i64, v * W)]), vptr)
                val = b.load(self.accs[i][v])
                with b.if_else(acc_flag) as (then, otherwise):
                    with then:
                        b.store(b.fadd(b.load(p, align=self.itemsize), val), p, align=self.itemsize)
                    with otherwise:
                        b.store(val, p, align=self.itemsize)


def _emit_block(context, builder, MR, NV, fty, L, a_row, b_row, c_data, ldc, acc_flag, ahead=0):
    """The IR of one block: for l < L, for i < MR, v < NV: acc[i][v] += A_l[i] * B_l[v*W:(v+1)*W],
    where a_row(l), b_row(l) are pointers to row l of A and B; then c[i*ldc + v*W ...] (+)=
    acc[i][v]. ahead > 0: step l also prefetches B's row l + ahead."""
    block = _Block(context, builder, MR, NV, fty)
    with cgutils.for_range(builder, L) as loop:
        if ahead:
            block.prefetch(b_row(builder.add(loop.index, ir.Constant(ir.IntType(64), ahead))))
        block.step(a_row(loop.index), b_row(loop.index))
    block.store(c_data, ldc, acc_flag)


def _row_stride(context, builder, ary_ty, ary):
    """Elements between two rows of a 2-D array view."""
    itemsize = context.get_abi_sizeof(context.get_value_type(ary_ty.dtype))
    return builder.sdiv(builder.extract_value(ary.strides, 0), ir.Constant(ir.IntType(64), itemsize))


def _strided_rows(builder, data, stride):
    """row(l) -> pointer to row l of a matrix whose rows are `stride` elements apart."""
    return lambda l: builder.gep(data, [builder.mul(l, stride)])


def _offset_rows(builder, base, offsets):
    """row(l) -> pointer base + offsets[l] (rows read in place at arbitrary offsets)."""
    return lambda l: builder.gep(base, [builder.load(builder.gep(offsets, [l]))])


def _gemm_block_intrinsic(MR, NV, ahead=0):
    @intrinsic
    def gemm_block(typingctx, a, b, c, accumulate):
        """gemm_block(a, b, c, accumulate): c[i, j] = (c[i, j] if accumulate else 0) +
        sum_l a[l, i] * b[l, j] for i < MR, j < NR = NV * lanes.

        a (L, >= MR) with contiguous rows (a panel of MR columns, or the first MR columns of a
        wider one); b a C-contiguous panel read as L rows of NR (its own shape and strides
        are not looked at); c a 2-D array of at least MR rows whose rows are contiguous and
        at least NR long. The caller guarantees the shapes: nothing is checked here. All
        three of one dtype, float32 or float64."""
        if not _is_float_array(a, b, c):
            return None
        sig = types.void(a, b, c, types.boolean)

        def codegen(context, builder, signature, args):
            a_ty, b_ty, c_ty, _ = signature.args
            av = context.make_array(a_ty)(context, builder, args[0])
            bv = context.make_array(b_ty)(context, builder, args[1])
            cv = context.make_array(c_ty)(context, builder, args[2])
            fty = context.get_value_type(a_ty.dtype)
            NR = NV * lanes(context.get_abi_sizeof(fty))
            L = builder.extract_value(av.shape, 0)

            a_row = _strided_rows(builder, av.data, _row_stride(context, builder, a_ty, av))
            b_row = _strided_rows(builder, bv.data, ir.Constant(ir.IntType(64), NR))
            _emit_block(context, builder, MR, NV, fty, L, a_row, b_row, cv.data,
                        _row_stride(context, builder, c_ty, cv), args[3], ahead)
            return context.get_dummy_value()

        return sig, codegen

    return gemm_block


def make_gemm_pair(mr1, nv1, mr2, nv2, ahead=0):
    """An intrinsic running two independent register blocks in one loop (see
    ``gemm_pair``); one per pair of shapes. ``ahead`` > 0: the first block prefetches its
    B rows that many rows on (see ``_Block.prefetch``)."""
    key = ("pair", mr1, nv1, mr2, nv2, ahead)
    if key not in _BLOCKS:
        _BLOCKS[key] = _gemm_pair_intrinsic(mr1, nv1, mr2, nv2, ahead)
    return _BLOCKS[key]


def _gemm_pair_intrinsic(MR1, NV1, MR2, NV2, ahead=0):
    @intrinsic
    def gemm_pair(typingctx, a, b, c, acc, a2, b2, c2, acc2):
        """gemm_pair(a, b, c, acc, a2, b2, c2, acc2): gemm_block(a, b, c, acc) with an
        MR1 x NV1 block and gemm_block(a2, b2, c2, acc2) with an MR2 x NV2 block, their
        reduction steps interleaved in one loop (then the longer one's remaining steps).

        Why: a matrix-vector product (MR1 = 1) waits on the cache bandwidth for its matrix
        and leaves most multiply-add slots idle; a GEMM block whose operands sit in L1
        fills them, in the same instruction window (two calls one after the other overlap
        only at their boundary). Operands as in gemm_block; the results are the bits of
        the two separate calls."""
        if not _is_float_array(a, b, c, a2, b2, c2):
            return None
        sig = types.void(a, b, c, types.boolean, a2, b2, c2, types.boolean)

        def codegen(context, builder, signature, args):
            tys = signature.args
            arrs = [context.make_array(tys[i])(context, builder, args[i]) if i not in (3, 7) else None
                    for i in range(8)]
            fty = context.get_value_type(tys[0].dtype)
            W = lanes(context.get_abi_sizeof(fty))
            i64 = ir.IntType(64)
            blocks, rows = [], []
            for k, (mr, nv) in enumerate(((MR1, NV1), (MR2, NV2))):
                av, bv = arrs[4 * k], arrs[4 * k + 1]
                blocks.append(_Block(context, builder, mr, nv, fty))
                rows.append((_strided_rows(builder, av.data, _row_stride(context, builder, tys[4 * k], av)),
                             _strided_rows(builder, bv.data, ir.Constant(i64, nv * W)),
                             builder.extract_value(av.shape, 0)))
            (ar1, br1, L1), (ar2, br2, L2) = rows
            both = builder.select(builder.icmp_signed("<", L1, L2), L1, L2)
            with cgutils.for_range(builder, both) as loop:
                if ahead:
                    blocks[0].prefetch(br1(builder.add(loop.index, ir.Constant(i64, ahead))))
                blocks[0].step(ar1(loop.index), br1(loop.index))
                blocks[1].step(ar2(loop.index), br2(loop.index))
            for k, (block, (ar, br, L)) in enumerate(zip(blocks, rows)):
                with cgutils.for_range(builder, builder.sub(L, both)) as loop:
                    l = builder.add(loop.index, both)
                    if ahead and k == 0:
                        block.prefetch(br(builder.add(l, ir.Constant(i64, ahead))))
                    block.step(ar(l), br(l))
            for k, block in enumerate(blocks):
                cv = arrs[4 * k + 2]
                block.store(cv.data, _row_stride(context, builder, tys[4 * k + 2], cv), args[4 * k + 3])
            return context.get_dummy_value()

        return sig, codegen

    return gemm_pair


def _gemm_block_rows_intrinsic(MR, NV):
    @intrinsic
    def gemm_block_rows(typingctx, a, bflat, boff, base, c, accumulate):
        """gemm_block_rows(a, bflat, boff, base, c, accumulate): like gemm_block with B's row l
        read in place at bflat[base + boff[l] :][:NR] (an implicit GEMM: a convolution's
        column matrix is never packed). a as in gemm_block, bflat 1-D contiguous, boff
        (L,) int64, c as in gemm_block. The caller guarantees every row lies inside bflat."""
        if not (_is_float_array(a, bflat, c) and isinstance(boff, types.Array)
                and boff.dtype == types.int64 and isinstance(base, types.Integer)):
            return None
        sig = types.void(a, bflat, boff, types.int64, c, types.boolean)

        def codegen(context, builder, signature, args):
            a_ty, b_ty, o_ty, _, c_ty, _ = signature.args
            av = context.make_array(a_ty)(context, builder, args[0])
            bv = context.make_array(b_ty)(context, builder, args[1])
            ov = context.make_array(o_ty)(context, builder, args[2])
            cv = context.make_array(c_ty)(context, builder, args[4])
            fty = context.get_value_type(a_ty.dtype)
            L = builder.extract_value(av.shape, 0)
            b0 = builder.gep(bv.data, [args[3]])

            a_row = _strided_rows(builder, av.data, _row_stride(context, builder, a_ty, av))
            b_row = _offset_rows(builder, b0, ov.data)
            _emit_block(context, builder, MR, NV, fty, L, a_row, b_row, cv.data,
                        _row_stride(context, builder, c_ty, cv), args[5])
            return context.get_dummy_value()

        return sig, codegen

    return gemm_block_rows


def _gemm_block_at_intrinsic(MR, NV):
    @intrinsic
    def gemm_block_at(typingctx, aflat, aoff, abase, b, ldb, c, accumulate):
        """gemm_block_at(aflat, aoff, abase, b, ldb, c, accumulate): c[i, j] (+)=
        sum_l aflat[abase + aoff[l] + i] * b[l*ldb + j] for i < MR, j < NR, l < len(aoff).

        Like gemm_block with A's rows read in place (e.g. MR consecutive channels of a
        channels-last image, one row per pixel) and B's rows ldb apart in a flat array. The
        caller guarantees every row lies inside its array."""
        if not (_is_float_array(aflat, b, c) and isinstance(aoff, types.Array)
                and aoff.dtype == types.int64 and aflat.ndim == 1 and b.ndim == 1):
            return None
        sig = types.void(aflat, aoff, types.int64, b, types.int64, c, types.boolean)

        def codegen(context, builder, signature, args):
            a_ty, o_ty, _, b_ty, _, c_ty, _ = signature.args
            av = context.make_array(a_ty)(context, builder, args[0])
            ov = context.make_array(o_ty)(context, builder, args[1])
            bv = context.make_array(b_ty)(context, builder, args[3])
            cv = context.make_array(c_ty)(context, builder, args[5])
            fty = context.get_value_type(a_ty.dtype)
            L = builder.extract_value(ov.shape, 0)
            a0 = builder.gep(av.data, [args[2]])

            a_row = _offset_rows(builder, a0, ov.data)
            b_row = _strided_rows(builder, bv.data, args[4])
            _emit_block(context, builder, MR, NV, fty, L, a_row, b_row, cv.data,
                        _row_stride(context, builder, c_ty, cv), args[6])
            return context.get_dummy_value()

        return sig, codegen

    return gemm_block_at


gemm_block = make_gemm_block(MR, NV)
gemm_block_rows = make_gemm_block(MR, NV, rows=True)
# the last, partial block of rows of a GEMM whose row count leaves a remainder of 2 or 4
# (e.g. 32 or 64 rows): the same panels, fewer accumulators, no multiply-adds on zero rows
gemm_block_2 = make_gemm_block(2, NV)
gemm_block_4 = make_gemm_block(4, NV)
gemm_block_rows_2 = make_gemm_block(2, NV, rows=True)
gemm_block_rows_4 = make_gemm_block(4, NV, rows=True)
gemm_block_at = _gemm_block_at_intrinsic(MR, NV)


@intrinsic
def copy_vectors(typingctx, src, s0, dst, d0, m, exact):
    """copy_vectors(src, s0, dst, d0, m, exact): dst[d0 + e] = src[s0 + e] for e < m in whole
    vectors (lanes elements each): plain vector moves with no remainder loop and no aliasing
    check (a short copy in numba otherwise runs element by element). exact=False copies m
    rounded up to whole vectors (the caller guarantees the extra elements may be read and
    overwritten); exact=True ends with a masked vector instead. src and dst are 1-D
    contiguous arrays of one float dtype, the ranges inside both and not overlapping."""
    if not (_is_float_array(src, dst) and src.ndim == 1 and dst.ndim == 1):
        return None
    sig = types.void(src, types.int64, dst, types.int64, types.int64, types.boolean)

    def codegen(context, builder, signature, args):
        fty, itemsize, W, vty, src0, dst0 = _element_ptrs(context, builder, signature, args, 0, 2)
        vptr = vty.as_pointer()
        i64 = ir.IntType(64)
        m = args[4]
        rounded = builder.sdiv(builder.add(m, ir.Constant(i64, W - 1)), ir.Constant(i64, W))
        nvec = builder.select(args[5], builder.sdiv(m, ir.Constant(i64, W)), rounded)
        with cgutils.for_range(builder, nvec) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, W))
            v = builder.load(builder.bitcast(builder.gep(src0, [off]), vptr), align=itemsize)
            builder.store(v, builder.bitcast(builder.gep(dst0, [off]), vptr), align=itemsize)
        off = builder.mul(nvec, ir.Constant(i64, W))
        rest = builder.sub(m, off)
        with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(i64, 0))):
            mask = _tail_mask(builder, rest, W)
            v = builder.call(_masked_load(builder, fty, W), [builder.bitcast(builder.gep(src0, [off]), vptr),
                                                            ir.Constant(ir.IntType(32), itemsize), mask,
                                                            ir.Constant(ir.VectorType(fty, W), ir.Undefined)])
            builder.call(_masked_store(builder, fty, W), [v, builder.bitcast(builder.gep(dst0, [off]), vptr),
                                                         ir.Constant(ir.IntType(32), itemsize), mask])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def transpose_tile(typingctx, src, s0, lds, dst, d0, ldd):
    """transpose_tile(src, s0, lds, dst, d0, ldd): dst[d0 + c*ldd + r] = src[s0 + r*lds + c]
    for r, c < lanes: one lanes x lanes tile (16 x 16 float32 with AVX-512) transposed in
    registers, lanes vector loads, lanes * log2(lanes) two-source shuffles, lanes vector
    stores, where an element-by-element transpose moves about one element per cycle.
    Offsets count elements from each array's first element, whatever its shape (as for
    the B panel of gemm_block): src and dst are arrays of one float dtype laid out
    contiguously, every row inside both, the two not overlapping; nothing is checked here.

    The shuffles are the butterfly of a recursive transpose: at stage b (1, 2, 4, ...) rows
    i and i + b (i & b == 0) swap their off-diagonal b x b blocks."""
    if not _is_float_array(src, dst):
        return None
    sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        _, itemsize, W, vty, src0, dst0 = _element_ptrs(context, builder, signature, args, 0, 3)
        vptr = vty.as_pointer()
        rows = [builder.load(builder.bitcast(builder.gep(src0, [builder.mul(args[2], ir.Constant(args[2].type, r))]),
                                             vptr), align=itemsize) for r in range(W)]
        b = 1
        while b < W:
            mask_ty = ir.VectorType(ir.IntType(32), W)
            lo = ir.Constant(mask_ty, [k if k & b == 0 else W + k - b for k in range(W)])
            hi = ir.Constant(mask_ty, [k + b if k & b == 0 else W + k for k in range(W)])
            new = list(rows)
            for i in range(W):
                if i & b == 0:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + b], lo)
                    new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], hi)
            rows, b = new, 2 * b
        for c in range(W):
            p = builder.gep(dst0, [builder.mul(args[5], ir.Constant(args[5].type, c))])
            builder.store(rows[c], builder.bitcast(p, vptr), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _tail_mask(builder, rest, W):
    """<W x i1>: lane < rest."""
    i64 = ir.IntType(64)
    vi = ir.VectorType(i64, W)
    undef = ir.Constant(vi, ir.Undefined)
    rvec = builder.shuffle_vector(builder.insert_element(undef, rest, ir.Constant(i64, 0)), undef,
                                  ir.Constant(ir.VectorType(ir.IntType(32), W), None))
    return builder.icmp_unsigned("<", ir.Constant(vi, list(range(W))), rvec)


def _masked_load(builder, fty, W):
    """llvm.masked.load for W lanes of fty (float or double)."""
    vty = ir.VectorType(fty, W)
    bits = 32 if isinstance(fty, ir.FloatType) else 64
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), W), vty]),
        f"llvm.masked.load.v{W}f{bits}.p0")


def _masked_store(builder, fty, W):
    """llvm.masked.store for W lanes of fty (float or double)."""
    vty = ir.VectorType(fty, W)
    bits = 32 if isinstance(fty, ir.FloatType) else 64
    return cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), ir.IntType(32), ir.VectorType(ir.IntType(1), W)]),
        f"llvm.masked.store.v{W}f{bits}.p0")


@intrinsic
def add_scalar_store(typingctx, src, s0, b, dst, d0, m, stream):
    """add_scalar_store(src, s0, b, dst, d0, m, stream): dst[d0 + e] = src[s0 + e] + b for e < m,
    in whole vectors and one masked vector for the tail: nothing past m is read or written.
    (numba's own loop runs a short row, e.g. 28 elements, element by element: its vector
    loop handles 64 at a time.) src and dst are 1-D contiguous arrays of one float dtype.

    stream=True writes the whole vectors with non-temporal stores when dst[d0] is aligned to
    a vector and STREAMING holds: an output far larger than the caches then costs one write
    to memory instead of a read (for ownership) and a write. Such stores are weakly ordered:
    call store_fence() before another thread may read them."""
    if not (_is_float_array(src, dst) and src.ndim == 1 and dst.ndim == 1):
        return None
    sig = types.void(src, types.int64, src.dtype, dst, types.int64, types.int64, types.boolean)

    def codegen(context, builder, signature, args):
        fty, itemsize, W, vty, src0, dst0 = _element_ptrs(context, builder, signature, args, 0, 3)
        vptr = vty.as_pointer()
        i64, i32 = ir.IntType(64), ir.IntType(32)
        m = args[5]
        undef = ir.Constant(vty, ir.Undefined)
        zero_mask = ir.Constant(ir.VectorType(i32, W), None)
        bvec = builder.shuffle_vector(builder.insert_element(undef, args[2], ir.Constant(i64, 0)),
                                      undef, zero_mask)
        nfull = builder.sdiv(m, ir.Constant(i64, W))
        vbytes = W * itemsize
        aligned = builder.icmp_unsigned("==", builder.and_(builder.ptrtoint(dst0, i64), ir.Constant(i64, vbytes - 1)),
                                        ir.Constant(i64, 0))
        nt = builder.module.add_metadata([ir.Constant(i32, 1)])
        stream = builder.and_(args[6], ir.Constant(ir.IntType(1), int(STREAMING)))
        with builder.if_else(builder.and_(stream, aligned)) as (streamed, plain):
            for nontemporal in (True, False):
                with (streamed if nontemporal else plain):
                    with cgutils.for_range(builder, nfull) as loop:
                        off = builder.mul(loop.index, ir.Constant(i64, W))
                        v = builder.load(builder.bitcast(builder.gep(src0, [off]), vptr), align=itemsize)
                        st = builder.store(builder.fadd(v, bvec), builder.bitcast(builder.gep(dst0, [off]), vptr),
                                           align=vbytes if nontemporal else itemsize)
                        if nontemporal:
                            st.set_metadata("nontemporal", nt)
        off = builder.mul(nfull, ir.Constant(i64, W))
        rest = builder.sub(m, off)
        with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(i64, 0))):
            mask = _tail_mask(builder, rest, W)
            v = builder.call(_masked_load(builder, fty, W), [builder.bitcast(builder.gep(src0, [off]), vptr),
                                                            ir.Constant(i32, itemsize), mask, undef])
            builder.call(_masked_store(builder, fty, W), [builder.fadd(v, bvec),
                                                         builder.bitcast(builder.gep(dst0, [off]), vptr),
                                                         ir.Constant(i32, itemsize), mask])
        return context.get_dummy_value()

    return sig, codegen


def _prefetch(builder, ptr, write):
    """IR asking for the cache line of ptr into L1 (llvm.prefetch: never faults)."""
    i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
    pf = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
    builder.call(pf, [builder.bitcast(ptr, i8p), ir.Constant(i32, int(write)), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])


@intrinsic
def prefetch_for_write(typingctx, arr, start, m):
    """prefetch_for_write(arr, start, m): ask for the cache lines of arr[start:start + m] (1-D,
    contiguous) in a writable state ahead of time. Issued before a tile's arithmetic, the
    lines of its outputs arrive while it computes instead of stalling the stores after it
    (writing an output larger than the caches is otherwise bound by those misses)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        return None
    sig = types.void(arr, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        av = context.make_array(signature.args[0])(context, builder, args[0])
        itemsize = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
        i64 = ir.IntType(64)
        step = 64 // itemsize
        base = builder.gep(av.data, [args[1]])
        nlines = builder.sdiv(builder.add(args[2], ir.Constant(i64, step - 1)), ir.Constant(i64, step))
        with cgutils.for_range(builder, nlines) as loop:
            _prefetch(builder, builder.gep(base, [builder.mul(loop.index, ir.Constant(i64, step))]), write=True)
        return context.get_dummy_value()

    return sig, codegen


# non-temporal output stores: with AVX-512 (x86: sfence orders them), where one vector is a
# whole 64-byte cache line
STREAMING = VECTOR_BYTES == 64


@intrinsic
def store_fence(typingctx):
    """Orders the non-temporal stores before it (see add_scalar_store): sfence on x86, where
    LLVM's own fence (a locked instruction) does not cover them; a plain fence elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if STREAMING:
            sfence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse.sfence")
            builder.call(sfence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def compiled_block_cols(typingctx, x):
    """compiled_block_cols(x): NR for x's dtype as it was when the calling function was
    compiled (see check_cache)."""
    if not _is_float_array(x):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        itemsize = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
        return ir.Constant(ir.IntType(64), NV * lanes(itemsize))

    return sig, codegen


def check_cache(probe, dtype, module):
    """Guard against kernels cached with another block shape.

    Numba's disk cache keys a function on its own source file only, so kernels that inline
    these intrinsics keep the block shape of the _simd.py they were compiled with, while
    their host code sizes buffers with the current one: after an edit of this file they
    would read and write out of bounds. probe: a cached njit function of the kernel module
    returning compiled_block_cols(x). On a mismatch the module's disk cache is cleared and a
    RuntimeError asks for a restart (the stale code is already loaded in this process)."""
    if probe(np.empty(1, dtype)) == block_cols(np.dtype(dtype).itemsize):
        return
    for obj in vars(module).values():
        cache = getattr(obj, "_cache", None)
        if hasattr(cache, "flush"):
            cache.flush()
    raise RuntimeError(f"{module.__name__}: its cached kernels were compiled against an older "
                       "nbdl.kernels._simd; the cache was cleared, restart Python")
