"""The "v6" fused W4A8 kernel for Hopper, written in Gluon: the weights are expanded into shared memory.

The Triton kernels ("v4", "v5") expand the INT4 codes straight into the registers of the tensor-core operand. That
layout gives each thread 4 rows of 32 weights per K step, so the 4 lanes of a quad must build and trade the same
tables (shuffles), and each K step must wait for its MMAs before the registers are written again. "v6" reads the
"v5" weight layout (codes group-major with v4's per-thread word order, float32 scales (G, N), zero bytes (G, N16))
and gives each thread one whole weight row of the K step instead (128 threads, 128 rows, one group each):

1. a load warp (a ``gl.warp_specialize`` partition) brings the step's codes, scales, zero bytes and FP8 token tile
   by TMA into a ring of ``STAGES`` shared-memory slots, each with a ``ready`` and an ``empty`` mbarrier;
2. the MMA warpgroup builds each row's 16-entry table (``TABLE_ROW_ASM``: exact 4a + b - z, one float32 multiply by
   s_g, ``cvt.rn.satfinite.e4m3x2``, as the packed format defines the expansion; no shuffles) and looks up its
   codes with the same byte permutes as "v4"/"v5" (``LUT_ASM_ROW``); the v4 word order is undone at compile time
   (a thread holds its whole row, so the permutation moves no data);
3. the FP8 row is stored to a shared-memory A tile (NVMMA swizzle), and the warpgroup MMA reads it from there
   asynchronously: the MMA of step j runs while the threads expand step j + 1 (with one A tile, the default, the
   store of step j + 1 waits for it; with two, the MMA may run a step longer); no register of a running MMA is
   ever rewritten.

The MMA instructions, their order and the split-K parts are the "v5" kernel's (wgmma m64nBLOCK_Tk32, K steps in
order, parts summed in order by the same reduction kernel or, with ``reduce_in_kernel``, by the tile's last
program), so the numerics are those of the ``h100-triton-w4a8`` profile. ``dpq.kernels.w4a8_triton._launch`` runs
this kernel for "v6" weights at decode tiles (``gluon_kernel_applies``) and "v5"'s Triton kernel otherwise.
"""

from __future__ import annotations

import numpy as np

from dpq.kernels.w4a8_triton import LUT_ASM_ROW, LUT_ROW_CONSTRAINTS

V6_BLOCK_N = 128  # weight rows per program = threads of its one warpgroup (one row each)
V6_NUM_WARPS = 4  # the MMA warpgroup (Triton's num_warps)
V6_LAUNCHED_WARPS = 8  # with the load warp's partition, which setmaxnreg pads to a warpgroup


def _table_row_asm(clamp: bool) -> str:
    # $0..$3: the row's table words (byte b of word a = FP8(s_g (4 a + b - z))); $4 = s_g (float32 bits); $5 = z;
    # with the clamp, $6 = +fp8_max and $7 = -fp8_max. 0x4B000000 | z is the float 2^23 + z, and the float with bits
    # 0x4B000000 + 4a is 2^23 + 4a, so their difference 4a - z is exact; so are the + 1.0 steps.
    lines = ["{", ".reg .b32 zb;", ".reg .f32 zf, d, p0, p1, p2, p3;", ".reg .b16 h0, h1;",
             "or.b32 zb, $5, 0x4B000000;", "mov.b32 zf, zb;"]
    for a in range(4):
        lines.append(f"sub.f32 d, 0f4B0000{4 * a:02X}, zf;")
        for t in range(4):
            if t:
                lines.append("add.f32 d, d, 0f3F800000;")
            lines.append(f"mul.rn.f32 p{t}, d, $4;")
            if clamp:
                lines += [f"min.f32 p{t}, p{t}, $6;", f"max.f32 p{t}, p{t}, $7;"]
        lines += ["cvt.rn.satfinite.e4m3x2.f32 h0, p1, p0;", "cvt.rn.satfinite.e4m3x2.f32 h1, p3, p2;",
                  f"mov.b32 ${a}, {{h0, h1}};"]
    return "\n".join(lines + ["}"])


TABLE_ROW_ASM = _table_row_asm(False)
TABLE_ROW_ASM_CLAMP = _table_row_asm(True)
TABLE_ROW_CONSTRAINTS = "=r,=r,=r,=r,r,r"
TABLE_ROW_CONSTRAINTS_CLAMP = TABLE_ROW_CONSTRAINTS + ",f,f"


def table_row_np(scales: np.ndarray, zeros: np.ndarray, fp8_max: float = 448.0) -> tuple[np.ndarray, ...]:
    """Plain twin of ``TABLE_ROW_ASM`` (and ``TABLE_ROW_ASM_CLAMP`` when fp8_max != 448), instruction for instruction.

    scales: float32 array (s_g of each row); zeros: uint8 array of the same shape. Returns the 4 table words
    (uint32 arrays): byte b of word a = the FP8 E4M3FN code of float32(s_g (4 a + b - z)), clamped to +-fp8_max.
    """
    from sim.formats import encode

    s = np.asarray(scales, dtype=np.float32)
    zf = (np.asarray(zeros, dtype=np.uint32) | np.uint32(0x4B000000)).view(np.float32)
    words = []
    for a in range(4):
        d = (np.array(0x4B000000 + 4 * a, np.uint32).view(np.float32) - zf).astype(np.float32)  # sub.f32, exact
        word = np.zeros(s.shape, np.uint32)
        for t in range(4):
            if t:
                d = (d + np.float32(1.0)).astype(np.float32)   # add.f32, exact
            p = (d * s).astype(np.float32)                     # mul.rn.f32
            if fp8_max != 448.0:
                p = np.maximum(np.minimum(p, np.float32(fp8_max)), np.float32(-fp8_max))
            word |= encode(p, "float8_e4m3fn", saturate=True).astype(np.uint32) << np.uint32(8 * t)
        words.append(word)
    return tuple(words)


_KERNELS = {}


def _gluon_kernels():
    """Compile-on-first-use: Gluon is imported only when the kernel runs (or is compiled for inspection)."""
    # the kernels resolve these names as module globals when they are compiled
    global gluon, gl, fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    if _KERNELS:
        return _KERNELS
    try:
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                       warpgroup_mma, warpgroup_mma_wait)
    except ImportError as exc:
        raise ImportError("the 'v6' W4A8 kernel needs Triton's Gluon (Triton 3.6, installed with CUDA builds of "
                          'torch: pip install -e ".[torch]"); or run the same weights with variant "v5" '
                          "(triton_variant='v5' or DPQ_TRITON_VARIANT=v5: the same numerics, slower at "
                          "decode)") from exc

    table_asm, table_constraints = gl.constexpr(TABLE_ROW_ASM), gl.constexpr(TABLE_ROW_CONSTRAINTS)
    table_asm_clamp = gl.constexpr(TABLE_ROW_ASM_CLAMP)
    table_constraints_clamp = gl.constexpr(TABLE_ROW_CONSTRAINTS_CLAMP)
    lut_asm_row, lut_row_constraints = gl.constexpr(LUT_ASM_ROW), gl.constexpr(LUT_ROW_CONSTRAINTS)
    gdc_wait_asm = gl.constexpr("griddepcontrol.wait; // dummy $0")
    gdc_launch_asm = gl.constexpr("griddepcontrol.launch_dependents; // dummy $0")

    @gluon.jit
    def load_weights(w_desc, s_desc, z_desc, w_smem, s_smem, z_smem, bar, slot, ks, N, stride_zg, n0):
        # one K step's codes, scales and zero bytes into ring slot ``slot``, completing on ``bar``
        tma.async_copy_global_to_shared(w_desc, [ks * N + n0, 0], bar, w_smem.index(slot))
        tma.async_copy_global_to_shared(s_desc, [ks * N + n0], bar, s_smem.index(slot))
        tma.async_copy_global_to_shared(z_desc, [ks * stride_zg + n0], bar, z_smem.index(slot))

    @gluon.jit
    def load_step(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, bar, slot, it, N, stride_zg, n0,
                  t0, GROUP: gl.constexpr, GPS: gl.constexpr, WITH_X: gl.constexpr):
        # loop iteration ``it``'s GPS groups (and, WITH_X, their token tiles) into ring slot ``slot``
        for gi in gl.static_range(GPS):
            ks = it * GPS + gi
            if WITH_X:
                tma.async_copy_global_to_shared(x_desc, [t0, ks * GROUP], bar, x_smem.index(slot * GPS + gi))
            else:
                load_weights(w_desc, s_desc, z_desc, w_smem, s_smem, z_smem, bar, slot * GPS + gi, ks, N, stride_zg,
                             n0)

    @gluon.jit
    def load_partition(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, ready, empty,
                       ks_begin, n_steps, N, stride_zg, n0, t0, GROUP: gl.constexpr, STAGES: gl.constexpr,
                       GPS: gl.constexpr, PDL: gl.constexpr):
        # one warp: the TMA loads of every loop iteration (GPS groups) into the ring, a slot as soon as the MMA warps
        # free it. With PDL the first slots' weights (which no kernel before writes) are asked for before waiting for
        # the kernel before this one, and their token tiles after.
        nbytes: gl.constexpr = GPS * (w_desc.block_type.nbytes + s_desc.block_type.nbytes
                                      + z_desc.block_type.nbytes + x_desc.block_type.nbytes)
        first = 0
        if PDL:
            first = gl.minimum(n_steps, STAGES)
            for i in gl.static_range(STAGES):
                if i < n_steps:
                    mbarrier.expect(ready.index(i), nbytes)
                    load_step(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, ready.index(i), i,
                              ks_begin + i, N, stride_zg, n0, t0, GROUP, GPS, False)
            gl.inline_asm_elementwise(gdc_wait_asm, "=r", [], dtype=gl.int32, is_pure=False, pack=1)
            for i in gl.static_range(STAGES):
                if i < n_steps:
                    load_step(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, ready.index(i), i,
                              ks_begin + i, N, stride_zg, n0, t0, GROUP, GPS, True)
        for j in range(first, n_steps):
            slot = j % STAGES
            if j >= STAGES:
                mbarrier.wait(empty.index(slot), ((j // STAGES) - 1) & 1)
            bar = ready.index(slot)
            mbarrier.expect(bar, nbytes)
            load_step(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, bar, slot, ks_begin + j, N,
                      stride_zg, n0, t0, GROUP, GPS, False)
            load_step(w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, bar, slot, ks_begin + j, N,
                      stride_zg, n0, t0, GROUP, GPS, True)

    @gluon.jit
    def expand_group(w_smem, s_smem, z_smem, buf, BLOCK_N: gl.constexpr, GROUP: gl.constexpr,
                     FP8_MAX: gl.constexpr, num_warps: gl.constexpr):
        # one group's rows (one per thread) in the slot's buffer ``buf``: the rows' tables, the look-up, and the FP8
        # words in K order, [BLOCK_N, GROUP / 4] in a layout that gives each thread its whole row
        WORDS: gl.constexpr = GROUP // 8  # 32-bit code words of one row and group (8 codes each)
        row_layout: gl.constexpr = gl.BlockedLayout([1, WORDS], [32, 1], [num_warps, 1], [1, 0])
        fp8_words_layout: gl.constexpr = gl.BlockedLayout([1, GROUP // 4], [32, 1], [num_warps, 1], [1, 0])
        vec_layout: gl.constexpr = gl.SliceLayout(1, row_layout)
        words = w_smem.index(buf).load(row_layout)                        # [BLOCK_N, WORDS] codes
        sg = s_smem.index(buf).load(vec_layout)                           # [BLOCK_N] float32
        zg = z_smem.index(buf).load(vec_layout).to(gl.uint32)             # [BLOCK_N]
        if FP8_MAX == 448.0:  # cvt.rn.satfinite saturates at E4M3FN's 448 by itself
            l0, l1, l2, l3 = gl.inline_asm_elementwise(
                table_asm, table_constraints, [sg.to(gl.uint32, bitcast=True), zg],
                dtype=(gl.uint32, gl.uint32, gl.uint32, gl.uint32), is_pure=True, pack=1)
        else:
            hi = gl.full([BLOCK_N], FP8_MAX, gl.float32, vec_layout)
            l0, l1, l2, l3 = gl.inline_asm_elementwise(
                table_asm_clamp, table_constraints_clamp, [sg.to(gl.uint32, bitcast=True), zg, hi, -hi],
                dtype=(gl.uint32, gl.uint32, gl.uint32, gl.uint32), is_pure=True, pack=1)
        q_lo, q_hi = gl.inline_asm_elementwise(
            lut_asm_row, lut_row_constraints,
            [words, l0[:, None], l1[:, None], l2[:, None], l3[:, None]],
            dtype=(gl.uint32, gl.uint32), is_pure=True, pack=1)          # columns 8w..8w+3, 8w+4..8w+7
        # FP8 words in stored order (16-bit code word s = a W/4 + j holds K word 4 j + a, W = GROUP / 4: the
        # v4/v5 layout's reorder); each thread holds its whole row, so putting them in K order moves no data
        stored = gl.reshape(gl.join(q_lo, q_hi), [BLOCK_N, 4, GROUP // 16])
        return gl.convert_layout(gl.reshape(gl.permute(stored, [0, 2, 1]), [BLOCK_N, GROUP // 4]), fp8_words_layout)

    @gluon.jit
    def mma_partition(w_smem, s_smem, z_smem, x_smem, a_smem, ready, empty, n_steps,
                      BLOCK_N: gl.constexpr, BLOCK_T: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr,
                      A_BUFS: gl.constexpr, GPS: gl.constexpr, FP8_MAX: gl.constexpr, num_warps: gl.constexpr):
        # the warpgroup: expand each iteration's GPS groups (a row per thread) into A tiles, MMA them with the token
        # tiles, in K order
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                             instr_shape=[16, BLOCK_T, 32])
        a_words_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=a_smem.type.layout.swizzle_byte_width,
                                                            element_bitwidth=32, rank=2)
        acc = gl.zeros([BLOCK_N, BLOCK_T], gl.float32, mma_layout)
        for j in range(n_steps):
            slot = j % STAGES
            mbarrier.wait(ready.index(slot), (j // STAGES) & 1)
            for gi in gl.static_range(GPS):
                fp8_words = expand_group(w_smem, s_smem, z_smem, slot * GPS + gi, BLOCK_N, GROUP, FP8_MAX, num_warps)
                if A_BUFS == 1 and gi == 0:  # the MMAs of iteration j - 1 still read the A tiles
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
                # with 2 sets of A tiles: iteration j - 2's MMAs, the last to read this set, finished below
                a_buf = a_smem.index((j % A_BUFS) * GPS + gi)
                a_buf._reinterpret(gl.uint32, [BLOCK_N, GROUP // 4], a_words_layout).store(fp8_words)
            fence_async_shared()
            gl.thread_barrier()  # every row stored
            for gi in gl.static_range(GPS):
                acc = warpgroup_mma(a_smem.index((j % A_BUFS) * GPS + gi),
                                    x_smem.index(slot * GPS + gi).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=GPS, deps=(acc, ))
            if j > 0:  # iteration j - 1's MMAs are done: its slot (codes read before the barrier above) is free
                mbarrier.arrive(empty.index((j - 1) % STAGES))
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        return (acc, )

    @gluon.jit
    def w4a8_v6_kernel(x_desc, w_desc, s_desc, z_desc, out_ptr, part_ptr, count_ptr, M, N, stride_zg, stride_om,
                       out_scale, k_steps, k_steps_per_split, n_parts,
                       BLOCK_N: gl.constexpr, BLOCK_T: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr,
                       A_BUFS: gl.constexpr, SPLIT_K: gl.constexpr, OUT_BF16: gl.constexpr, FP8_MAX: gl.constexpr,
                       REDUCE: gl.constexpr, PDL: gl.constexpr = False, GPS: gl.constexpr = 1,
                       num_warps: gl.constexpr = 4):
        if PDL:  # the next kernel may be scheduled now: it waits for this one before it reads what this writes
            gl.inline_asm_elementwise(gdc_launch_asm, "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        pid_n = gl.program_id(0)
        pid_t = gl.program_id(1)
        pid_s = gl.program_id(2)
        n0 = pid_n * BLOCK_N
        t0 = pid_t * BLOCK_T
        ks_begin = pid_s * k_steps_per_split
        n_steps = gl.minimum(k_steps - ks_begin, k_steps_per_split)
        # >= 1 (the host makes every part non-empty); saying so keeps the zero-trip path's accumulator out of the
        # MMA pipeline, which ptxas would otherwise serialise (C7515)
        gl.assume(n_steps > 0)
        WORDS: gl.constexpr = GROUP // 8
        a_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=x_desc.layout.swizzle_byte_width,
                                                      element_bitwidth=8, rank=2)
        w_smem = gl.allocate_shared_memory(w_desc.dtype, [STAGES * GPS, BLOCK_N, WORDS], w_desc.layout)
        s_smem = gl.allocate_shared_memory(s_desc.dtype, [STAGES * GPS, BLOCK_N], s_desc.layout)
        z_smem = gl.allocate_shared_memory(z_desc.dtype, [STAGES * GPS, BLOCK_N], z_desc.layout)
        x_smem = gl.allocate_shared_memory(x_desc.dtype, [STAGES * GPS, BLOCK_T, GROUP], x_desc.layout)
        a_smem = gl.allocate_shared_memory(gl.float8e4nv, [A_BUFS * GPS, BLOCK_N, GROUP], a_layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        (acc, ) = gl.warp_specialize(
            [(mma_partition, (w_smem, s_smem, z_smem, x_smem, a_smem, ready, empty, n_steps, BLOCK_N, BLOCK_T,
                              GROUP, STAGES, A_BUFS, GPS, FP8_MAX, num_warps)),
             (load_partition, (w_desc, s_desc, z_desc, x_desc, w_smem, s_smem, z_smem, x_smem, ready, empty,
                               ks_begin, n_steps, N, stride_zg, n0, t0, GROUP, STAGES, GPS, PDL))],
            [1], [24])
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                             instr_shape=[16, BLOCK_T, 32])
        offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma_layout))
        offs_t = t0 + gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, mma_layout))
        out_offs = offs_t[None, :].to(gl.int64) * stride_om + offs_n[:, None]
        out_mask = (offs_n < N)[:, None] & (offs_t < M)[None, :]
        if SPLIT_K == 1:
            y = acc * out_scale
            if OUT_BF16:
                gl.store(out_ptr + out_offs, y.to(gl.bfloat16), mask=out_mask)
            else:
                gl.store(out_ptr + out_offs, y, mask=out_mask)
        else:  # the split-K part, summed in order by the "v5" reduction kernel or, with REDUCE, here
            gl.store(part_ptr + pid_s.to(gl.int64) * M * N + out_offs, acc, mask=out_mask)
            if REDUCE:
                # the program that stores a tile's last part adds all parts in order, part 0 first, in float32 (the
                # reduction kernel's sum): an arrival counter per tile, reset for the next launch
                gl.thread_barrier()  # every thread's part stored before the release below
                tile = pid_t * gl.num_programs(0) + pid_n
                arrived = gl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
                if arrived == n_parts - 1:
                    total = gl.load(part_ptr + out_offs, mask=out_mask, other=0.0, cache_modifier=".cg")
                    for ps in range(1, n_parts):
                        total = total + gl.load(part_ptr + ps * M * N + out_offs, mask=out_mask, other=0.0,
                                                cache_modifier=".cg")
                    y = total * out_scale
                    if OUT_BF16:
                        gl.store(out_ptr + out_offs, y.to(gl.bfloat16), mask=out_mask)
                    else:
                        gl.store(out_ptr + out_offs, y, mask=out_mask)
                    gl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")

    _KERNELS.update(v6=w4a8_v6_kernel)
    return _KERNELS


V6_DEFAULT_MAXNREG = 64  # registers per thread at launch: 4 programs of 256 threads per SM; the MMA warps then
# take 104 each (setmaxnreg), the load warp 24


def _swizzle_bytes(row_bytes: int) -> int:
    """The widest NVMMA shared-memory swizzle a tile with rows of ``row_bytes`` bytes takes (TMA and wgmma)."""
    return next(w for w in (128, 64, 32, 0) if row_bytes >= w and (w == 0 or row_bytes % w == 0))


def gluon_kernel_applies(config, n: int) -> bool:
    """Whether a "v6" launch of this configuration on a weight of ``n`` rows runs the Gluon kernel (else the "v5"
    Triton kernel on the same layout, with the same numerics): decode tiles (128 rows, one warpgroup, at most 64
    tokens) and scale rows that start 16-byte aligned for TMA (n a multiple of 4)."""
    return (config.block_n == V6_BLOCK_N and config.num_warps == V6_NUM_WARPS and config.block_t <= 64
            and n % 4 == 0)


def launch_v6(x8, weight, out, part, counters, out_scale: float, config, k_steps: int, k_steps_per_split: int,
              split: int, reduce_in_kernel: bool):
    """Launch the Gluon kernel for ``dpq.kernels.w4a8_triton._launch`` (which checked x8, made out / part /
    counters and checked ``gluon_kernel_applies``) on a weight in the "v5" layout; returns the compiled kernel. The
    split-K parts are summed in the kernel (``reduce_in_kernel``) or by the caller's reduction kernel."""
    import torch
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if config.groups_per_step not in (1, 2) or config.l2_prefetch_steps or config.pdl_trigger != "start":
        raise ValueError(f"variant 'v6' takes groups_per_step 1 or 2, and with pdl no l2_prefetch_steps (its load "
                         f"warp asks for its first steps' weights before it waits) and pdl_trigger 'start'; got "
                         f"{config}")
    if x8.data_ptr() % 16 or x8.stride(0) % 16 or x8.stride(1) != 1:
        raise ValueError(f"variant 'v6': x8 must be 16-byte aligned with rows a multiple of 16 bytes apart (TMA), "
                         f"got strides {tuple(x8.stride())}")
    gs = weight.group_size
    m, n, groups = x8.shape[0], weight.n, weight.k // gs
    nvmma = gl.NVMMASharedLayout
    codes = weight.codes.view(torch.int32).reshape(groups * n, gs // 8)  # (G, N, gs / 4) 16-bit words, group-major
    scales = weight.group_scales.reshape(-1)                              # (G, N)
    zeros = weight.zeros.reshape(-1)                                      # (G, N16)
    x_desc = TensorDescriptor(x8, list(x8.shape), list(x8.stride()), [config.block_t, gs],
                              nvmma(_swizzle_bytes(gs), 8))
    w_desc = TensorDescriptor(codes, list(codes.shape), list(codes.stride()), [V6_BLOCK_N, gs // 8],
                              nvmma(_swizzle_bytes(gs // 2), 32))
    s_desc = TensorDescriptor(scales, [scales.numel()], [1], [V6_BLOCK_N], nvmma(0, 32, rank=1))
    z_desc = TensorDescriptor(zeros, [zeros.numel()], [1], [V6_BLOCK_N], nvmma(0, 8, rank=1))
    grid = (-(-n // V6_BLOCK_N), -(-m // config.block_t), split)
    return _gluon_kernels()["v6"][grid](
        x_desc, w_desc, s_desc, z_desc, out, part, counters, m, n, weight.zeros.stride(0), out.stride(0), out_scale,
        k_steps, k_steps_per_split, split, BLOCK_N=V6_BLOCK_N, BLOCK_T=config.block_t, GROUP=gs,
        STAGES=config.num_stages, A_BUFS=config.a_buffers, SPLIT_K=min(split, 2), OUT_BF16=out.dtype.itemsize == 2,
        FP8_MAX=weight.fp8_max, REDUCE=reduce_in_kernel, PDL=config.pdl, GPS=config.groups_per_step,
        num_warps=V6_NUM_WARPS,
        maxnreg=config.maxnreg or V6_DEFAULT_MAXNREG, launch_pdl=config.pdl)
