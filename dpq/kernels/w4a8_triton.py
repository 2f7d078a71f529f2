"""Fused W4A8 GEMM for Hopper in Triton: y = (x8 @ FP8(s_g (q - z))^T) * (s_x s_t), bf16 or float32 out.

The packed INT4 codes are read from HBM once per tile and expanded to FP8 E4M3 in registers; the FP8 tensor-core dot
accumulates in float32 registers; the per-tensor scales are applied in the epilogue. Nothing of full size is written
back. Variants (``variant=``), all with the very same numerics:

* ``"v6"`` (the default on an H100, ``default_variant_for``; dpq/kernels/w4a8_gluon.py): the "v5" weight layout run,
  at decode tiles (128 rows, one warpgroup, up to 64 tokens; N a multiple of 4), by a warp-specialized Gluon kernel
  that expands each thread's whole row into a shared-memory A tile (TMA loads by a load warp, the MMA from shared
  memory while the next step expands: 2.26 SASS instructions per weight in the loop); other tiles run v5's kernel on
  the same layout. 1.65-1.73x FP8 cuBLAS on a Llama-2-70B layer at M <= 16 (v5: 1.50-1.53x, results/gpu/README.md).
* ``"v5"`` (``DEFAULT_VARIANT``: cards without a profile; the torch backend picks the variant per card with
  ``default_variant_for``, results/gpu/README.md): v4's loop
  (codes group-major, 16-byte loads, ``LUT_ASM_ROW`` look-ups) with the tables built in the loop
  instead of streamed: per K step each program reads the group's float32 scales (G, N) and zero bytes (G, N16) -
  0.539 byte per weight at groups of 128 instead of 0.625 - and the 4 lanes of each quad of the tensor-core layout
  (which hold the same rows) build one table word each for their 4 rows (``TABLE_WORD_ASM``: exact 4a - z by the
  2^23 trick, one float32 multiply, ``cvt.rn.satfinite.e4m3x2``), then 4 ``shfl.sync`` per row give every lane all
  4 words (``QUAD_SHFL_ASM``). The row's byte in the 4-row zero word is row % 4 = (laneid / 4) % 4 in that layout;
  the launch checks on the TTGIR that Triton kept the build in that layout (``v5_layout_problem``). About 2.8 SASS
  instructions per weight (FADD/FMUL 32, F2FP 8, SHFL 16 added), 75 registers, no table in shared memory.
* ``"v4"`` (the default on an H200, where it is faster than v5 at decode, ``default_variant_for``; on an H100 still
  faster than v5 at M >= 256, where every 128 x 128 tile builds its tables again): table look-up expansion as "lut"
  below, in a loop rebuilt for latency. When the weight is put on the GPU, the 16 possible expanded values of every
  (row, group), FP8(s_g (j - z)) for j = 0..15, are computed once with torch (the exact float32 multiply and the
  saturating RNE cast of the packed format) into a 16-byte table per group (0.625 byte per weight streamed at groups
  of 128), and the codes are laid out group-major (all rows of a group contiguous: one stretch of HBM per program
  and K step) with the 16-bit words of a row reordered so that the 16 bytes one thread needs are adjacent
  (``v4_codes_np``). In the loop each thread reads its codes and its rows' tables with 16-byte shared-memory loads
  and expands 8 codes of one row per inline PTX block (``LUT_ASM_ROW``: 6 ``prmt``, 2 ``lop3``, 3 ``mul.hi`` that do
  the shifts on the otherwise idle FMA pipe); ``tl.assume`` keeps the zero-trip path out of the loop so that ptxas
  keeps the wgmma pipeline (else it serialises every wgmma, C7515). About 2.2 SASS instructions per weight (1.0 on
  the integer ALU pipe), 74-75 registers at 128 x 16 tiles and 3 stages (scripts/kernel_sass.py). Optional: several
  groups per K step, and the split-K parts added in the same launch (``KernelConfig.reduce_in_kernel``).
* ``"fp8"``: the v4 loop with the weight already expanded to FP8 (1 byte per weight, group-major): no expansion;
  for measuring the loop's own cost (results/gpu/README.md, scheme ``fp8_triton`` of scripts/bench_gpu.py).
* ``"lut"`` (v3): the same tables; codes row-major as packed, read as 16-bit words (4 columns each) and expanded
  with byte permutes (PTX ``prmt``, 12 instructions per 8 weights, ``LUT_ASM``): two 8-entry look-ups on the
  codes' low three bits, then a permute choosing between them on the high bit. Exact by construction: every FP8
  byte the dot sees is a byte of the table. About 2.8 SASS instructions per weight at 128-row tiles.
* ``"v2"``: per weight, q - z is formed exactly in float32 (bit trick 0x4B000000 | q = 2^23 + q), s_g (q - z) is
  one float32 multiply (RNE), and ``cvt.rn.satfinite.e4m3x2.f32`` rounds to nearest even and saturates at +-448.
  Streams 0.5 byte of codes plus 5 bytes per group (float32 scale, uint8 zero). Issue-bound on Hopper (about 7.4
  SASS instructions per weight, results/gpu/README.md).

Layout ("swap AB"): the kernel computes the transposed product y^T = w8 @ x8^T, so that the weight rows fill the
tensor core's M dimension (64 or 128) and the few tokens of a decode step fill its narrow N dimension (16 and up).
Each program owns BLOCK_N weight rows x BLOCK_T tokens and one contiguous slice of K (split-K for small M * N);
one group of the packed format per K step (v4/fp8: ``groups_per_step``). The "v5" split count at decode comes from
the card (``SMLimits.of_device``): whole waves of the programs an SM holds at once, no short tail, few programs per
SM (``wave_split_cost``; since 2026-11-27 10:35 UTC).

Numerics (the data of hw_profiles/h100-triton-w4a8.yaml; see results/gpu/README.md for the measurement), all variants:

* expansion: exactly ``dpq.packed``'s FP8(s_g (q - z)) (float32 multiply, RNE, saturating), the codes of
  ``sim.formats.encode(..., saturate=True)``;
* the dot: Hopper's FP8 tensor-core step (32 products plus the accumulator, 13 fraction bits, truncation), one
  chain over the program's whole K slice with no float32 promotion (like cuBLAS's fast accumulation): Triton 3.6's
  default ``max_num_imprecise_acc`` on sm_90 is 2^30. Measured on an H200: ``max_num_imprecise_acc`` equal to the
  dot's K gives the very same bits (no promotion), and a smaller value fails to compile in the pipelined loop, so
  cuBLAS's promotion every 128 elements is not reachable from Triton 3.6 and the kernel does not offer it;
* the MMA pipeline: the expanded weights are the MMAs' A operand, in registers; each K step ends by waiting for its
  MMAs (``KernelConfig.mma_wait_each_step``), because Triton 3.6's own pipelining lets the next step overwrite those
  registers while MMAs still read them (triton-lang/triton issue 9433: run-to-run differences measured on an H200);
  every compiled kernel's SASS is checked once at its first launch (``dpq.kernels.sass.wgmma_register_hazards``:
  no such write) and refused otherwise;
* split-K: each part writes its float32 chain result; a second kernel adds the parts in order (part 0 first) in
  float32, then multiplies by float32(s_x s_t) once and rounds to bf16 (deterministic). With
  ``reduce_in_kernel`` (v4/fp8) the program that finishes a tile's parts last (an atomic arrival counter decides
  which, nothing else) does the very same ordered sum in the same launch.

Public API::

    PackedW4A8Weight.from_packed(p, device, variant=) / .from_arrays(..., variant=)
    default_variant_for(device_name): the card's variant (the *-triton-w4a8 profile's fused_kernel.kernel_variant)
    w4a8_matmul(x8, weight, act_scale, *, out_dtype="bfloat16", config=None) -> torch (M, N)
    expand_to_fp8(weight) -> torch.float8_e4m3fn (N, K); w4a8_matmul_expanded(x8, weight, act_scale): the prefill
        path (one streaming expansion kernel, then cuBLAS; cuBLAS numerics)
    w4a8_linear(x8, weight, act_scale, *, expand_from_tokens="card"): the fused kernel below the card's
        expand_from_tokens (its *-triton-w4a8 profile), the prefill path from there; uses_prefill_path(m, ...)
        tells which one (and so which numerics) a call of m tokens gets; expand_from_tokens_for(device_name)
    kernel_resources(x8, weight, config) -> registers, shared bytes, spills of the launched kernel
    KernelConfig (tiles, split, stages; pdl: programmatic dependent launch, on for v6 at decode where the card's
    profile asks for it: decode_launch_policy, ring_for_share),
    default_config(m, n, k, num_sms, group_size, variant, sm_limits), split_k_parts(k, config, group_size);
    launch_config(m, n, k, weight, device), launch_config_for(device_name, sm_limits, ...): what a launch without a
    config runs (the card's tuned configuration of the GEMM, tuned_config_for, else default_config; then the card's
    decode_launch_policy)
    SMLimits (.of_device), resident_programs, wave_split_cost, V5_KERNEL_RESOURCES: the "v5" decode split rule
    expansion_lut (torch, on the GPU) and expansion_lut_np; lut_expand_np, lut_expand_row_np, prmt_np, mulhi_np,
    table_build_np: plain twins of the kernels' inline asm (LUT_ASM and LUT_ASM_WORD, LUT_ASM_ROW,
    TABLE_WORD_ASM + QUAD_SHFL_ASM);
    v4_codes / v4_codes_np, v4_words_np: the v4 code layout; v5_zeros / v5_zeros_np: the v5 zero layout;
    v5_layout_problem: the layout check of the v5 table build
"""

from __future__ import annotations

import functools
import math
import subprocess
from dataclasses import dataclass, replace

import numpy as np

from sim.perf.fused_kernel import prefill_split
from sim.perf.fused_kernel import wave_split_cost as _wave_split_cost

GROUP_SIZES = (32, 64, 128)  # whole groups of the packed format per K step of the kernel
VARIANTS = ("v5", "v6", "v4", "lut", "v2", "fp8")
DEFAULT_VARIANT = "v5"
TABLE_VARIANTS = ("v4", "lut")  # the variants that read the 16-byte expansion tables from HBM
EXPAND_VARIANTS = ("v5", "v6", "v4")  # the variants expand_to_fp8 reads (the prefill path)


def default_variant_for(device_name: str) -> str:
    """The variant to run by default on the CUDA card named ``device_name`` (``torch.cuda.get_device_name``).

    Which variant is fastest depends on the card (v5 builds its tables in the loop: fewer bytes, more instructions;
    on an H100 it beats v4, on an H200 v4 wins): the choice is a measured fact kept with the card's hardware profile,
    ``fused_kernel.kernel_variant`` of the profile whose ``fused_kernel.device_name_contains`` occurs in the name
    (hw_profiles/*-triton-w4a8.yaml). Cards without such a profile get ``DEFAULT_VARIANT``.
    """
    if not isinstance(device_name, str):
        raise TypeError(f"device_name={device_name!r}: expected the CUDA device name as a string")
    found = _card_spec(device_name)
    if found is None:
        return DEFAULT_VARIANT
    profile, spec = found
    if spec.kernel_variant not in VARIANTS:
        raise ValueError(f"hw_profiles/{profile}.yaml: fused_kernel.kernel_variant {spec.kernel_variant!r}: expected "
                         f"one of {VARIANTS}")
    return spec.kernel_variant


def expand_from_tokens_for(device_name: str) -> int | None:
    """The token count from which ``w4a8_linear`` runs the prefill path on the CUDA card named ``device_name``:
    ``fused_kernel.expand_from_tokens`` of the card's *-triton-w4a8 profile (the measured crossover), or None
    (always the fused kernel) for a card without one."""
    if not isinstance(device_name, str):
        raise TypeError(f"device_name={device_name!r}: expected the CUDA device name as a string")
    found = _card_spec(device_name)
    return None if found is None else found[1].expand_from_tokens


def tuned_config_for(device_name: str, variant: str, m: int, n: int, k: int,
                     group_size: int = 128) -> "KernelConfig | None":
    """The launch configuration measured fastest on the CUDA card named ``device_name`` for this GEMM, or None.

    From ``fused_kernel.tuned_configs`` of the card's *-triton-w4a8 profile (scripts/tune_table.py: the fastest of
    a bench_gpu.py sweep where it beat the heuristic by 3% or more): the row of (n, k) whose M range holds m, for
    weights of the profile's kernel variant in groups of its block_k. The configuration decides the numerics (its
    split-K parts), so every launch and every emulation of it gets it from here (``launch_config``).
    """
    found = _card_spec(device_name)
    if found is None:
        return None
    spec = found[1]
    if variant != spec.kernel_variant or group_size != spec.block_k:
        return None
    row = spec.tuned_row(n, k, m)
    if row is None:
        return None
    _, _, _, _, block_n, block_t, split, warps, stages, reduce = row
    return KernelConfig(block_n=block_n, block_t=block_t, split_k=split, num_warps=warps, num_stages=stages,
                        reduce_in_kernel=bool(reduce))


def _card_spec(device_name: str):
    """(profile name, FusedKernelSpec) of the first shipped profile whose device_name_contains occurs in the name."""
    for profile, spec in _specs_by_card():
        if spec.device_name_contains in device_name:
            return profile, spec
    return None


@functools.lru_cache(maxsize=1)
def _specs_by_card() -> tuple:
    """(profile, FusedKernelSpec) of every shipped profile with a fused_kernel section."""
    from sim.profiles import list_profiles, load_profile

    rows = ((name, load_profile(name).fused_kernel) for name in list_profiles())
    return tuple((name, fk) for name, fk in rows if fk is not None)


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch parameters of one w4a8_matmul call.

    block_n: weight rows per program (the tensor core's M: 64 or 128); block_t: tokens per program (16..256);
    split_k: parts K is cut into (contiguous, whole K steps; parts then summed in order); num_warps, num_stages:
    Triton launch options; groups_per_step: groups of the packed format per K step (the "v4" and "fp8" variants
    take 1, 2 or 4, "v6"'s Gluon kernel 1 or 2 (2 measured slower); "lut", "v2" and "v5" only 1); reduce_in_kernel: "v4"/"fp8" with split-K add the parts (in order)
    in the same launch (the last program of a tile to finish does it) instead of in a second kernel (same bits;
    off by default: no faster on the H200, results/gpu/README.md); maxnreg: Triton's register cap per thread (None:
    none; more resident programs per SM, but below 75 ptxas serialises the v5 wgmmas (C7512) and spills: slower on an
    H100, results/gpu/README.md); pdl: "v5"/"v4"/"fp8" (and their split-K reduction kernel) are launched with
    programmatic dependent launch (sm_90+): each program lets the next kernel of the stream be scheduled at once
    (``griddepcontrol.launch_dependents``) and waits for the kernel before it to finish (``griddepcontrol.wait``)
    before it reads any operand or writes anything, so a chain of such launches overlaps one kernel's tail and the
    next one's start (same bits; off by default: on an H100 the decode layer got 17-50% slower with it, the GEMMs of
    fewer programs than the GPU holds 1.3-2.3x slower); "v6" (its Gluon kernel) asks for its first stages' weights
    before it waits, its token tiles after: at the tile's own depth the 70B layer got 5-10% slower on an H100 (a
    dependent launch's early programs crowd onto the SMs that free first), with a ring that holds no more than
    the launch's share of programs per SM (ring_for_share) 2-5% faster, which the card's decode launch policy
    gives it (decode_launch_policy; results/gpu/README.md, session 8);
    l2_prefetch_steps: with pdl ("v5"/"v4"/"fp8"), each program first asks the L2 for the weight bytes of its first
    that many K steps
    (``cp.async.bulk.prefetch.L2``, a hint: the loads proper come after the wait; an L2 prefetch cannot return stale
    data; the first token tile of each weight tile asks, and none when N is not a multiple of block_n);
    pdl_trigger: where a program lets the next kernel start, "start" or "after_loop" (before its epilogue);
    mma_wait_each_step: "v5"/"v4"/"lut" wait for all of a K step's wgmmas at the end of the step. Triton 3.6 leaves
    up to 3 register-A wgmmas in flight into the next step, whose code may then overwrite the expanded weights they
    still read (triton-lang/triton issue 9433; ``scripts/kernel_sass.py`` finds such writes in the SASS: 132 in v5,
    89 in v4 at 128 x 16 tiles without the wait, none with it); measured as run-to-run differences of v4 at 128 x 128
    tiles with 8 warps on an H200 (results/gpu/race_v4_h200*.log). False only to measure what the wait costs.
    a_buffers: "v6"'s Gluon kernel, expanded A tiles in shared memory: 1 (the next step's store waits for the MMA)
    or 2 (the MMA may run a step longer; measured no faster on an H100, results/gpu/README.md).
    """

    block_n: int = 64
    block_t: int = 16
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4
    groups_per_step: int = 1
    reduce_in_kernel: bool = False
    maxnreg: int | None = None
    pdl: bool = False
    l2_prefetch_steps: int = 0
    pdl_trigger: str = "start"
    mma_wait_each_step: bool = True
    a_buffers: int = 1

    def __post_init__(self):
        for name in ("block_n", "block_t", "split_k", "num_warps", "num_stages", "groups_per_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"KernelConfig.{name}={v!r}: expected a positive integer")
        if self.block_n not in (64, 128, 256) or self.block_t not in (16, 32, 64, 128, 256):
            raise ValueError(f"KernelConfig: block_n {self.block_n} must be 64/128/256 and block_t {self.block_t} "
                             f"16/32/64/128/256 (tensor-core tile sizes)")
        for name in ("reduce_in_kernel", "pdl", "mma_wait_each_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"KernelConfig.{name}={getattr(self, name)!r}: expected a bool")
        if isinstance(self.l2_prefetch_steps, bool) or not isinstance(self.l2_prefetch_steps, int) \
                or not 0 <= self.l2_prefetch_steps <= 8:
            raise ValueError(f"KernelConfig.l2_prefetch_steps={self.l2_prefetch_steps!r}: expected an integer in 0..8")
        if self.pdl_trigger not in ("start", "after_loop"):
            raise ValueError(f"KernelConfig.pdl_trigger={self.pdl_trigger!r}: expected 'start' or 'after_loop'")
        if self.l2_prefetch_steps and not self.pdl:
            raise ValueError("KernelConfig.l2_prefetch_steps > 0 needs pdl=True (the prefetch is what a program does "
                             "while it waits for the kernel before it)")
        if self.pdl_trigger != "start" and not self.pdl:
            raise ValueError(f"KernelConfig.pdl_trigger={self.pdl_trigger!r} needs pdl=True")
        if self.groups_per_step not in (1, 2, 4):
            raise ValueError(f"KernelConfig.groups_per_step={self.groups_per_step}: expected 1, 2 or 4")
        if self.maxnreg is not None and (isinstance(self.maxnreg, bool) or not isinstance(self.maxnreg, int)
                                         or not 24 <= self.maxnreg <= 255):
            raise ValueError(f"KernelConfig.maxnreg={self.maxnreg!r}: expected None or an integer in 24..255")
        if self.a_buffers not in (1, 2) or isinstance(self.a_buffers, bool):
            raise ValueError(f"KernelConfig.a_buffers={self.a_buffers!r}: expected 1 or 2 (\"v6\": expanded weight "
                             f"tiles in shared memory)")


@dataclass(frozen=True)
class SMLimits:
    """The card's streaming multiprocessors as torch reports them (``torch.cuda.get_device_properties``): how many,
    and what one of them holds - which decides how many programs of a kernel are resident on an SM at once."""

    num_sms: int
    registers_per_sm: int
    shared_bytes_per_sm: int
    max_threads_per_sm: int

    def __post_init__(self):
        for name in ("num_sms", "registers_per_sm", "shared_bytes_per_sm", "max_threads_per_sm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SMLimits.{name}={v!r}: expected a positive integer")

    @classmethod
    def of_profile(cls, hw) -> "SMLimits":
        """The limits a hardware profile's ``sm`` section gives (sim.profiles.HardwareProfile): a card's heuristic
        without the card."""
        if hw.sm is None:
            raise ValueError(f"profile {hw.name!r} has no 'sm' section")
        return cls(num_sms=int(hw.sm.count), registers_per_sm=int(hw.sm.registers_per_sm),
                   shared_bytes_per_sm=int(hw.sm.shared_bytes_per_sm),
                   max_threads_per_sm=32 * int(hw.sm.max_warps_per_sm))

    @classmethod
    def of_device(cls, device=None) -> "SMLimits":
        """The limits of a CUDA device (default: the current one)."""
        import torch

        p = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
        return cls(num_sms=p.multi_processor_count, registers_per_sm=p.regs_per_multiprocessor,
                   shared_bytes_per_sm=p.shared_memory_per_multiprocessor,
                   max_threads_per_sm=p.max_threads_per_multi_processor)


# Registers per thread and shared bytes per program of the "v5" kernel at 128-row tiles and 4 warps, by (group size,
# token tile, stages): what Triton 3.6 compiles for sm_90 (scripts/kernel_sass.py; the bench CSVs record the launched
# kernels' numbers, which match). A property of the compiled code, not of the card: resident_programs combines it
# with the card's SMLimits.
V5_KERNEL_RESOURCES = {(128, 16, 2): (77, 13312), (128, 16, 3): (75, 24576), (128, 16, 4): (75, 35840),
                       (128, 16, 5): (79, 47104), (128, 32, 3): (95, 30720), (128, 64, 3): (156, 43008),
                       (128, 64, 4): (156, 60416), (64, 16, 3): (63, 13312), (64, 32, 3): (74, 16384),
                       (64, 64, 3): (120, 22528), (32, 16, 3): (56, 8192), (32, 32, 3): (72, 16384),
                       (32, 64, 3): (128, 16384)}


def resident_programs(registers: int, shared_bytes: int, num_warps: int, limits: SMLimits) -> int:
    """Programs of one kernel an SM holds at once: the fewest the register file, shared memory and thread slots
    allow (register and shared-memory allocation granularities ignored: exact for the v5 tiles above)."""
    threads = 32 * num_warps
    return max(1, min(limits.registers_per_sm // (registers * threads),
                      limits.shared_bytes_per_sm // max(1, shared_bytes),
                      limits.max_threads_per_sm // threads))


# Programs per SM the decode heuristic plans for, per variant (from the tuning runs, results/gpu/README.md).
_PROGRAMS_PER_SM = {"v5": 4, "v4": 4, "fp8": 4, "lut": 4, "v2": 2}
# Fixed cost of one program (pipeline fill, epilogue) in K steps, for choosing the split (v4 and fp8). With 2 the
# heuristic picks, for Llama-2-70B at M=1, the split that was fastest or within 5% of the fastest in both H200
# sweeps (results/gpu/tuning_h200_v4sweep.csv, tuning_h200_v4bsweep.csv: qkv 8, o 8, gate_up 3, down 16).
_PROGRAM_OVERHEAD_STEPS = 2


# The "v5" split rule at decode ("waves"), in K steps of one program (fitted to the H100 v5 tuning sweep,
# results/gpu/tuning_h100_v5.csv; checked against a new sweep in tuning_h100_v6.csv):
_PROGRAMS_IN_FLIGHT = 2  # programs an SM needs at once to stream at its share of the bandwidth (fewer: slower)
_WAVE_FILL_STEPS = 8  # per wave of resident programs on the busiest SM (pipeline fill and drain)
_PROGRAM_COST_STEPS = 1  # per program on the busiest SM (prologue, epilogue, split-K part store)
# ... among the splits that leave every part at least this many K steps: on an H100 the 8 parts of 4 steps the rule
# chose for Llama-2-7B / Llama-3-8B o_proj (K = 4096, 32 output tiles) ran 8-9% slower than 4 parts of 8 steps in two
# sweeps (results/gpu/tuning_h100_s5small.csv, tuning_h100_s5b.csv: each program pays its pipeline fill over fewer
# steps); the one other choice it changes, Llama-3-8B qkv_proj, lost 3-4% at M <= 16 and gained 2% at M = 64
_WAVE_MIN_STEPS_PER_PART = 8


# Above M = 64 (128 x 128 tiles, 8 warps): split K into up to 4 parts while the programs stay within 2 per SM
# (prefill_split; the v4 tile holds 1 program per SM by registers, v5's 2, and both gained). Chosen on the H200 sweep
# results/gpu/tuning_h200_splitsweep.csv (Llama-2-7B/3-8B/70B, M = 128 and 256): the rule's pick was the fastest
# of the 8 configurations tried or within 6% of it on 23 of 24 (shape, M) cases (70B qkv at M = 256: 18% slower
# than 3 parts); the 24 GEMMs took 1569 us in all with it, 1995 us without a split, 1552 us at the best of each.
_PREFILL_MAX_SPLIT = 4
_PREFILL_PROGRAMS_PER_SM = 2


def wave_split_cost(tiles: int, k_steps: int, split: int, resident: int, num_sms: int) -> tuple[float, int]:
    """(cost in K steps, parts) of cutting K into ``split`` parts: the busiest SM runs ceil(programs / SMs) programs
    in waves of ``resident``; each wave streams its programs' steps, at a slower rate when it holds fewer than
    _PROGRAMS_IN_FLIGHT programs (a short last wave: the tail), plus a fill cost per wave and a cost per program."""
    return _wave_split_cost(tiles, k_steps, split, resident, num_sms, programs_in_flight=_PROGRAMS_IN_FLIGHT,
                fill_steps=_WAVE_FILL_STEPS, program_steps=_PROGRAM_COST_STEPS)


def default_config(m: int, n: int, k: int, num_sms: int, group_size: int = 128,
                   variant: str = DEFAULT_VARIANT, sm_limits: SMLimits | None = None) -> KernelConfig:
    """The tile heuristic: narrow token tiles and split-K at decode, 128 x 128 tiles for prefill.

    Decode: 128-row tiles for the table variants (the loop's fixed overhead spreads over 128 weights per thread).
    "v5" with ``sm_limits`` (what ``w4a8_matmul`` passes: ``SMLimits.of_device``; ``num_sms`` is then ignored): the
    split-K count minimises ``wave_split_cost`` - whole waves of the programs an SM holds at once
    (``resident_programs`` of the compiled kernel on this card), no tail of too few programs, few programs per SM.
    "v5" without ``sm_limits`` (the rule before 2026-11-27 10:35 UTC), "v4"/"fp8": the split-K count minimises the
    busiest SM's work, (all steps + a fixed cost per program) / SMs + one program's steps (the tail);
    "lut"/"v2": enough parts for about 4 (lut) or 2 (v2) programs per SM.
    Prefill (M > 64; "v5", "v4", "fp8"): up to 4 split-K parts while the programs stay within 2 per SM
    (``sim.perf.fused_kernel.prefill_split``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    if isinstance(num_sms, bool) or not isinstance(num_sms, int) or num_sms < 1:
        raise ValueError(f"num_sms={num_sms!r}: expected the card's SM count, a positive integer "
                         f"(torch.cuda.get_device_properties(d).multi_processor_count)")
    if variant == "v6":
        return _v6_default_config(m, n, k, num_sms, group_size, sm_limits)
    gps = 1
    if m <= 64:
        block_t = 16 if m <= 16 else 32 if m <= 32 else 64
        # v4/fp8: 3 stages (78 registers, 27 KB of shared memory: 6 programs per SM) were faster than 4 on 3 of
        # the 4 Llama-2-70B shapes in the H200 sweep
        block_n, warps, stages = {"v2": (64, 4, 4), "lut": (128, 4, 4)}.get(variant, (128, 4, 3))
    else:
        block_t, block_n, warps, stages = 128, 128, 8, 3
    tiles = math.ceil(n / block_n) * math.ceil(m / block_t)
    k_steps = k // (group_size * gps)
    split = 1
    resources = V5_KERNEL_RESOURCES.get((group_size, block_t, stages)) if block_n == 128 and warps == 4 else None
    if variant == "v5" and m <= 64 and sm_limits is not None and resources is not None:
        resident = resident_programs(resources[0], resources[1], warps, sm_limits)
        scored = [wave_split_cost(tiles, k_steps, s, resident, sm_limits.num_sms)
                  for s in range(1, max(1, k_steps // _WAVE_MIN_STEPS_PER_PART) + 1)]
        split = min(scored)[1]  # ties: fewer parts
    elif variant in ("v5", "v4", "fp8"):
        if m > 64:
            split = prefill_split(tiles, k_steps, num_sms, _PREFILL_PROGRAMS_PER_SM, _PREFILL_MAX_SPLIT)
        else:
            best = None
            for s in range(1, max(1, k_steps // 2) + 1):
                per = math.ceil(k_steps / s)
                progs = tiles * math.ceil(k_steps / per)
                cost = (tiles * k_steps + progs * _PROGRAM_OVERHEAD_STEPS) / num_sms + per + _PROGRAM_OVERHEAD_STEPS
                if best is None or cost < best[0] - 1e-9:
                    best = (cost, s)
            split = best[1]
    else:
        target = _PROGRAMS_PER_SM[variant] * num_sms
        if tiles < target:
            split = max(1, min(math.ceil(target / tiles), k_steps // 4 or 1))
    return KernelConfig(block_n=block_n, block_t=block_t, split_k=split, num_warps=warps, num_stages=stages,
                        groups_per_step=gps)


# "v6" (dpq/kernels/w4a8_gluon.py) at decode: 4 stages, one A tile; the split from the wave rule with the programs
# its registers and shared memory leave resident. On the first H100 sweep (results/gpu/sweep_h100_s6a.csv,
# Llama-2-70B, M = 1 and 16) this picked the fastest of 30 configurations on 6 of 8 GEMMs and summed to 374.7 us
# against 359.9 us for the fastest of each (gate_up: one part, 448 programs, ran 7-12% faster than the rule's 4
# parts); on the second (results/gpu/tuning_h100_s6b.csv, three models) 4 stages beat 3 on every GEMM at M = 64.
_V6_PROGRAMS_PER_SM = 4  # without the card's limits: 64 registers x 256 threads per program, 4 per 64K registers


def v6_shared_bytes(group_size: int, block_t: int, stages: int, a_buffers: int) -> int:
    """Shared memory of one "v6" program (an upper bound: the compiled kernels used 196-228 bytes less than this
    for barriers and alignment): per stage the codes, scales, zeros and token tile of one K step, plus the A tiles."""
    from dpq.kernels.w4a8_gluon import V6_BLOCK_N

    step = V6_BLOCK_N * (group_size // 2 + 4 + 1) + block_t * group_size
    return stages * step + a_buffers * V6_BLOCK_N * group_size + 256


def _v6_default_config(m: int, n: int, k: int, num_sms: int, group_size: int,
                       sm_limits: SMLimits | None) -> KernelConfig:
    from dpq.kernels.w4a8_gluon import V6_BLOCK_N, V6_DEFAULT_MAXNREG, V6_NUM_WARPS, V6_LAUNCHED_WARPS

    if m > 64:  # "v5"'s prefill tiles, on the same layout (the Gluon kernel's 64-token tiles were slower at M = 256)
        return default_config(m, n, k, num_sms, group_size, "v5", sm_limits)
    block_t = 16 if m <= 16 else 32 if m <= 32 else 64
    tiles = math.ceil(n / V6_BLOCK_N) * math.ceil(m / block_t)
    k_steps = k // group_size
    stages = 4
    if sm_limits is None:
        resident, sms = _V6_PROGRAMS_PER_SM, num_sms
    else:
        resident = resident_programs(V6_DEFAULT_MAXNREG * V6_LAUNCHED_WARPS // V6_NUM_WARPS,
                                     v6_shared_bytes(group_size, block_t, stages, 1), V6_NUM_WARPS, sm_limits)
        sms = sm_limits.num_sms
    scored = [wave_split_cost(tiles, k_steps, s, resident, sms)
              for s in range(1, max(1, k_steps // _WAVE_MIN_STEPS_PER_PART) + 1)]
    return KernelConfig(block_n=V6_BLOCK_N, block_t=block_t, split_k=min(scored)[1], num_warps=V6_NUM_WARPS,
                        num_stages=stages, a_buffers=1)


def ring_for_share(config: KernelConfig, m: int, n: int, k: int, group_size: int, sm_limits: SMLimits,
                   max_stages: int = 12, deepest: bool = False, full_grids_too: bool = False) -> KernelConfig:
    """A "v6" decode configuration at the 'share' ring depth (``sim.perf.fused_kernel.ring_stages_for_share``):
    where its depth lets an SM hold more than its share of the launch, ceil(programs / SMs), the shallowest ring
    (up to ``max_stages`` and a program's K steps) that holds no more; ``deepest``: the deepest that holds the
    share. Same tiles and split, so the same numerics. ``full_grids_too`` (with ``deepest``): a grid that fills
    its SMs gets the deepest ring that keeps as many programs per SM (an experiment of scripts/bench_gpu.py).
    Configurations the Gluon kernel does not run come back unchanged."""
    from sim.perf.fused_kernel import ring_stages_for_share

    from dpq.kernels.w4a8_gluon import V6_BLOCK_N, V6_DEFAULT_MAXNREG, V6_LAUNCHED_WARPS, V6_NUM_WARPS, \
        gluon_kernel_applies

    if not gluon_kernel_applies(config, n) or config.maxnreg not in (None, V6_DEFAULT_MAXNREG):
        return config
    k_steps = k // k_step(config, group_size)
    per = math.ceil(k_steps / config.split_k)
    programs = math.ceil(n / V6_BLOCK_N) * math.ceil(m / config.block_t) * math.ceil(k_steps / per)

    def resident(stages: int) -> int:
        return resident_programs(V6_DEFAULT_MAXNREG * V6_LAUNCHED_WARPS // V6_NUM_WARPS,
                                 v6_shared_bytes(group_size * config.groups_per_step, config.block_t, stages,
                                                 config.a_buffers), V6_NUM_WARPS, sm_limits)

    if full_grids_too and math.ceil(programs / sm_limits.num_sms) >= resident(config.num_stages):
        programs = resident(config.num_stages) * sm_limits.num_sms
    stages = ring_stages_for_share(programs, sm_limits.num_sms, config.num_stages, min(max_stages, per), resident,
                                   deepest)
    return replace(config, num_stages=stages)


def decode_launch_policy(device_name: str, sm_limits: SMLimits, config: KernelConfig, m: int, n: int, k: int,
                         group_size: int, variant: str) -> KernelConfig:
    """``config`` as the card's profile launches it at decode (``fused_kernel.dependent_launch``, ``ring_depth``
    and ``max_ring_stages``): for the card's kernel variant where the Gluon kernel runs (M <= 64), with
    programmatic dependent launch and the ring depth the profile asks for. Neither changes the numerics. The
    performance model applies the same (``sim.perf.fused_kernel.decode_launch_structure``)."""
    from dpq.kernels.w4a8_gluon import gluon_kernel_applies

    found = _card_spec(device_name)
    if found is None or variant != found[1].kernel_variant or variant != "v6" or m > 64:
        return config
    if not gluon_kernel_applies(config, n):
        return config
    spec = found[1]
    if spec.ring_depth == "share":
        config = ring_for_share(config, m, n, k, group_size, sm_limits, spec.max_ring_stages)
    return replace(config, pdl=True) if spec.dependent_launch else config


def heuristic_config_for(device_name: str, sm_limits: SMLimits, m: int, n: int, k: int, group_size: int,
                         variant: str) -> KernelConfig:
    """The launch heuristic on the card named ``device_name``: ``default_config``, at the pipeline depth the card's
    profile gives that tile (``fused_kernel.tile_configs``, the structure of the heuristic's tiles on that card:
    the H200 runs v6's 16- and 64-token tiles at 5 stages, measured faster there; the H100 at 4). The depth does not
    change the numerics, only the split does."""
    from dpq.kernels.w4a8_gluon import gluon_kernel_applies

    cfg = default_config(m, n, k, sm_limits.num_sms, group_size, variant, sm_limits=sm_limits)
    found = _card_spec(device_name)
    if found is None or variant != found[1].kernel_variant:
        return cfg
    if variant == "v6" and cfg.block_t <= 64 and not gluon_kernel_applies(cfg, n):
        return cfg  # the launch runs v5's Triton kernel on this weight, not the tile the profile describes
    _, block_n, block_t, warps, stages, *_ = found[1].tile_row(m)
    if (block_n, block_t, warps) == (cfg.block_n, cfg.block_t, cfg.num_warps) and stages != cfg.num_stages:
        cfg = replace(cfg, num_stages=stages)
    return cfg


def launch_config_for(device_name: str, sm_limits: SMLimits, m: int, n: int, k: int, group_size: int,
                      variant: str) -> KernelConfig:
    """What a launch without a configuration runs on the card named ``device_name`` with ``sm_limits``: the card's
    tuned configuration for this GEMM if it has one (``tuned_config_for``), else ``heuristic_config_for``; then
    the card's decode launch policy (``decode_launch_policy``: dependent launch and ring depth)."""
    cfg = (tuned_config_for(device_name, variant, m, n, k, group_size)
           or heuristic_config_for(device_name, sm_limits, m, n, k, group_size, variant))
    return decode_launch_policy(device_name, sm_limits, cfg, m, n, k, group_size, variant)


def launch_config(m: int, n: int, k: int, weight: "PackedW4A8Weight", device=None) -> KernelConfig:
    """The configuration ``w4a8_matmul`` launches without an explicit one on CUDA ``device`` (default: the current
    one): ``launch_config_for`` that card."""
    import torch

    return launch_config_for(torch.cuda.get_device_name(device), SMLimits.of_device(device), m, n, k,
                             weight.group_size, weight.variant)


def k_step(config: KernelConfig, group_size: int) -> int:
    """K elements per loop iteration of the kernel."""
    return group_size * config.groups_per_step


def split_k_parts(k: int, config: KernelConfig, group_size: int = 128) -> tuple[int, ...]:
    """Lengths along K of the parts the kernel sums in order (what ``sim.mac.fp8_gemm(split_k=...)`` takes)."""
    step = k_step(config, group_size)
    k_steps = k // step
    per = math.ceil(k_steps / config.split_k)
    parts = []
    t = 0
    while t < k_steps:
        parts.append(min(per, k_steps - t) * step)
        t += per
    return tuple(parts)


def expansion_lut_np(group_scales: np.ndarray, zeros: np.ndarray, fp8_format: str = "float8_e4m3fn") -> np.ndarray:
    """uint8 (G, N, 16): entry j of (group g, row n) = the FP8 code of s_g (j - z) (float32 multiply, saturating)."""
    from sim.formats import encode

    s = np.asarray(group_scales, dtype=np.float32).T  # (G, N)
    d = (np.arange(16, dtype=np.int32)[None, None, :] - np.asarray(zeros, dtype=np.int32).T[:, :, None])
    return encode((s[:, :, None] * d.astype(np.float32)).astype(np.float32), fp8_format, saturate=True)


def prmt_np(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """PTX ``prmt.b32 d, a, b, sel`` (default mode) on uint32 arrays: byte i of d is byte sel[4i..4i+2] of {b, a},
    or that byte's sign replicated when bit 4i+3 of sel is set."""
    a, b, sel = (np.asarray(v, dtype=np.uint64) for v in (a, b, sel))
    src = a | (b << np.uint64(32))
    d = np.zeros(np.broadcast(a, b, sel).shape, dtype=np.uint64)
    for i in range(4):
        nib = (sel >> np.uint64(4 * i)) & np.uint64(0xF)
        byte = (src >> ((nib & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
        byte = np.where(nib & np.uint64(8), np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        d |= byte << np.uint64(8 * i)
    return d.astype(np.uint32)


def lut_expand_np(codes16: np.ndarray, l0, l1, l2, l3) -> np.ndarray:
    """Plain twin of one element of the "lut" kernel's inline asm (``LUT_ASM``) and of the prefill expansion's
    (``LUT_ASM_WORD``, where the mask-and-or of the select word is one lop3), instruction for instruction.

    codes16: uint32 array holding 16 bits of packed codes (4 columns 4j..4j+3, column 4j in the low nibble);
    l0..l3: uint32 arrays, the (row, group)'s 16-byte table as 4 little-endian words (entries 4i..4i+3 in l_i).
    Returns uint32: the 4 FP8 bytes of those columns, column 4j in the low byte.
    """
    c = np.asarray(codes16, dtype=np.uint32)
    s = c & np.uint32(0x7777)                               # the three low bits of each code
    lo, hi = prmt_np(l0, l1, s), prmt_np(l2, l3, s)        # entries 0..7 and 8..15
    t = ((c >> np.uint32(1)) & np.uint32(0x4444)) | np.uint32(0x3210)  # byte i from lo (i) or hi (4 + i): bit 3
    return prmt_np(lo, hi, t)


def mulhi_np(a: np.ndarray, b: int) -> np.ndarray:
    """PTX ``mul.hi.u32 d, a, b``: the high 32 bits of the 64-bit product (uint32 arrays)."""
    return ((np.asarray(a, dtype=np.uint64) * np.uint64(b)) >> np.uint64(32)).astype(np.uint32)


def lut_expand_row_np(codes32: np.ndarray, l0, l1, l2, l3) -> tuple[np.ndarray, np.ndarray]:
    """Plain twin of ``LUT_ASM_ROW`` (the "v4" kernel's inline asm), instruction for instruction.

    codes32: uint32 array, two 16-bit code words of one row (low word first, 4 codes each, low nibble first);
    l0..l3: uint32 arrays, that row's table words. Returns (uint32, uint32): the FP8 bytes of the low and the
    high word's 4 columns, the first column in the low byte.
    """
    c = np.asarray(codes32, dtype=np.uint32)
    s0 = c & np.uint32(0x77777777)
    s1 = mulhi_np(s0, 0x10000)                                   # s0 >> 16
    lo0, hi0 = prmt_np(l0, l1, s0), prmt_np(l2, l3, s0)
    lo1, hi1 = prmt_np(l0, l1, s1), prmt_np(l2, l3, s1)
    t = (mulhi_np(c, 0x80000000) & np.uint32(0x44444444)) | np.uint32(0x32103210)  # lop3 0xEA: (a & b) | c
    u = mulhi_np(t, 0x10000)
    return prmt_np(lo0, hi0, t), prmt_np(lo1, hi1, u)


# The inline PTX of the "lut" variant: two elements (8 weights) per invocation. Operands: $0, $1 = the outputs of
# elements 0 and 1 (uint32: 4 FP8 bytes, the first column in the low byte); $2 = the two uint16 code elements
# (element 0 in the low half, 4 codes each); then the table words l0 ($3, $4 for elements 0, 1), l1 ($5, $6),
# l2 ($7, $8), l3 ($9, $10): 32-bit operands are not packed, so each element has its own table and the two
# elements may lie in different rows (they do: the layout Triton picks pairs rows r and r + 8).
LUT_ASM = """{
.reg .b32 s0, s1, l0, h0, l1, h1, t, u;
and.b32 s0, $2, 0x77777777;
shr.b32 s1, s0, 16;
prmt.b32 l0, $3, $5, s0;
prmt.b32 h0, $7, $9, s0;
prmt.b32 l1, $4, $6, s1;
prmt.b32 h1, $8, $10, s1;
shr.b32 t, $2, 1;
and.b32 t, t, 0x44444444;
or.b32 t, t, 0x32103210;
shr.b32 u, t, 16;
prmt.b32 $0, l0, h0, t;
prmt.b32 $1, l1, h1, u;
}"""
LUT_CONSTRAINTS = "=r,=r," + ",".join(["r"] * 9)  # 2 outputs, the packed codes, 8 table words

# One row's version (the "v4" kernel): $2 = 8 codes of one row (two 16-bit words, the low one first), $3..$6 = that
# row's table words l0..l3; $0, $1 = the FP8 bytes of the low and the high word. The same bytes as LUT_ASM
# (lut_expand_np is the twin of each half), fewer integer-ALU instructions: the shifts are mul.hi.u32 by
# 2^16 / 2^31 (IMAD.HI, on the FMA pipe, which is otherwise idle; the ALU pipe runs PRMT/LOP3/SHF) and the
# mask-and-or of the select word is one lop3 ((a & b) | c = 0xEA).
LUT_ASM_ROW = """{
.reg .b32 s0, s1, l0, h0, l1, h1, t, u;
and.b32 s0, $2, 0x77777777;
mul.hi.u32 s1, s0, 0x10000;
prmt.b32 l0, $3, $4, s0;
prmt.b32 h0, $5, $6, s0;
prmt.b32 l1, $3, $4, s1;
prmt.b32 h1, $5, $6, s1;
mul.hi.u32 t, $2, 0x80000000;
lop3.b32 t, t, 0x44444444, 0x32103210, 0xEA;
mul.hi.u32 u, t, 0x10000;
prmt.b32 $0, l0, h0, t;
prmt.b32 $1, l1, h1, u;
}"""
LUT_ROW_CONSTRAINTS = "=r,=r," + ",".join(["r"] * 5)  # 2 outputs, 8 codes, 4 table words

# One 16-bit code word per invocation (the prefill path's expansion kernel, "v4" tables): $1 = 4 codes of one row
# (low 16 bits), $2..$5 = that row's table words l0..l3; $0 = the 4 FP8 bytes, the first column in the low byte.
# The instructions of lut_expand_np (its twin), with the select word's mask-and-or as one lop3.
LUT_ASM_WORD = """{
.reg .b32 s, l, h, t;
and.b32 s, $1, 0x7777;
prmt.b32 l, $2, $3, s;
prmt.b32 h, $4, $5, s;
shr.b32 t, $1, 1;
lop3.b32 t, t, 0x4444, 0x3210, 0xEA;
prmt.b32 $0, l, h, t;
}"""
LUT_WORD_CONSTRAINTS = "=r," + ",".join(["r"] * 5)  # the output, the code word, 4 table words

# The "v5" kernel builds the tables in the loop from each group's float32 scale and uint8 zero (0.539 byte per weight
# streamed at groups of 128 instead of v4's 0.625), split over the 4 lanes of a quad: in the tensor-core layout the 4
# lanes of a quad hold the same rows, so lane a (= laneid % 4) computes word a (entries 4a..4a+3) of each of its
# rows, and 4 shuffles per row (shfl.sync.idx within the quad) hand every lane all 4 words. Per row: prmt puts the
# zero under the bits of 2^23 (0x4B00_00zz is the float 2^23 + z), d = (2^23 + 4a) - (2^23 + z) = 4a - z exactly,
# d + 1, d + 2, d + 3 (exact small integers), one float32 multiply by s_g each, rounded to nearest even (mul.rn:
# never contracted), and cvt.rn.satfinite.e4m3x2 rounds two products to FP8 E4M3 (nearest even, saturating at
# +-448, the sign of zero kept): exactly sim.formats.encode(float32(s_g (j - z)), saturate=True). Formats with a
# smaller largest value clamp first (TABLE_WORD_ASM_CLAMP), as the torch-built tables do.
QUAD_SHFL_C = 0x1C1F  # shfl.sync c operand for segments of 4 lanes: ((32 - 4) << 8) | 31


def _table_word_asm(clamp: bool) -> str:
    lines = ["{", ".reg .b32 lane, zb, base, sel;", ".reg .f32 zf, d, p0, p1, p2, p3;", ".reg .b16 h0, h1;",
             "mov.u32 lane, %laneid;", "bfe.u32 sel, lane, 2, 2;", "or.b32 sel, sel, 0x7650;",
             "and.b32 lane, lane, 3;", "mad.lo.u32 base, lane, 4, 0x4B000000;"]
    for e in range(4):
        lines += [f"prmt.b32 zb, ${8 + e}, 0x4B000000, sel;", "mov.b32 zf, zb;",
                  "sub.f32 d, base, zf;"]
        for t in range(4):
            if t:
                lines.append("add.f32 d, d, 0f3F800000;")  # + 1.0, exact
            lines.append(f"mul.rn.f32 p{t}, d, ${4 + e};")
            if clamp:
                lines += [f"min.f32 p{t}, p{t}, ${12 + e};", f"max.f32 p{t}, p{t}, ${16 + e};"]
        lines += ["cvt.rn.satfinite.e4m3x2.f32 h0, p1, p0;", "cvt.rn.satfinite.e4m3x2.f32 h1, p3, p2;",
                  f"mov.b32 ${e}, {{h0, h1}};"]
    return "\n".join(lines + ["}"])


# one invocation = a thread's 4 rows (pack=4): $0..$3 = this lane's word of each row; $4..$7 = s_g (float32 bits);
# $8..$11 = the 32-bit words holding the rows' zeros (zeros stored as bytes, group-major, rows 4m..4m+3 of a group
# in one word); with the clamp, $12..$15 = +fp8_max and $16..$19 = -fp8_max. The byte of row n is n % 4, and in
# the tensor-core layout n % 4 = (laneid / 4) % 4 for all 4 rows of a thread (rows = 8 x register bits + laneid / 4
# + 16 x warp bits), so the selector comes from %laneid: an operand computed from the loop counter or the row
# index would stop Triton from keeping the table build in the tensor-core layout (it would instead convert the
# expanded weights through shared memory, 16 barriers per K step)
TABLE_WORD_ASM = _table_word_asm(False)
TABLE_WORD_ASM_CLAMP = _table_word_asm(True)
TABLE_WORD_CONSTRAINTS = ",".join(["=r"] * 4 + ["r"] * 8)
TABLE_WORD_CONSTRAINTS_CLAMP = TABLE_WORD_CONSTRAINTS + "," + ",".join(["f"] * 8)
# then word i of a row: lane i's word, from within the quad (one asm per i, each with one result: Triton keeps
# single-result inline asm in the tensor-core layout, a multi-result one it would not rematerialise there)
QUAD_SHFL_ASM = tuple(f"shfl.sync.idx.b32 $0, $1, {i}, {QUAD_SHFL_C:#x}, 0xffffffff;" for i in range(4))


def table_build_np(scales: np.ndarray, zero_words: np.ndarray, row_in_word: int,
                   fp8_max: float = 448.0) -> tuple[np.ndarray, ...]:
    """Plain twin of ``TABLE_WORD_ASM`` then ``QUAD_SHFL_ASM`` (the "v5" table build), instruction for instruction.

    scales: float32 array (s_g of each row); zero_words: uint32 array of the same shape, the word of ``v5_zeros_np``
    holding the row's zero (rows 4m..4m+3 of a group, row 4m + i in byte i); row_in_word: the row's index % 4 (the
    kernel's (laneid / 4) % 4). Lane a of a quad computes word a; the shuffles give every lane the 4 words. Returns
    the 4 table words l0..l3 (uint32 arrays): byte b of word a = the FP8 E4M3FN code of float32(s_g (4 a + b - z)),
    clamped to +-fp8_max.
    """
    from sim.formats import encode

    s = np.asarray(scales, dtype=np.float32)
    zb = prmt_np(np.asarray(zero_words, dtype=np.uint32), np.uint32(0x4B000000), np.uint32(0x7650 | row_in_word))
    zf = zb.view(np.float32)
    words = []
    for lane in range(4):                                      # the quad's lanes
        base = np.array(0x4B000000 + 4 * lane, np.uint32).view(np.float32)
        d = (base - zf).astype(np.float32)                     # sub.f32: 4 a - z, exact
        bytes_ = []
        for t in range(4):
            if t:
                d = (d + np.float32(1.0)).astype(np.float32)   # add.f32, exact
            p = (d * s).astype(np.float32)                     # mul.rn.f32
            if fp8_max != 448.0:
                p = np.maximum(np.minimum(p, np.float32(fp8_max)), np.float32(-fp8_max))
            bytes_.append(encode(p, "float8_e4m3fn", saturate=True).astype(np.uint32))  # cvt.rn.satfinite
        words.append(bytes_[0] | (bytes_[1] << 8) | (bytes_[2] << 16) | (bytes_[3] << 24))  # mov.b32 {h0, h1}
    return tuple(words)                                        # shfl.sync.idx: lane i's word to every lane


def v5_zeros_np(zeros: np.ndarray) -> np.ndarray:
    """uint8 (G, N16): the "v5" kernel's zeros, group-major, rows padded with 0 to N16 = N rounded up to 16 (the
    kernel reads rows 4m..4m+3 of a group as one 32-bit word and picks byte n % 4; the "v6" kernel loads a group's
    rows by TMA, which needs them 16-byte aligned)."""
    z = np.asarray(zeros, dtype=np.uint8)
    n, g = z.shape
    out = np.zeros((g, -(-n // 16) * 16), np.uint8)
    out[:, :n] = z.T
    return out


def v5_zeros(zeros):
    """torch twin of ``v5_zeros_np`` (on the zeros' device): uint8 (G, N16)."""
    import torch

    n, g = zeros.shape
    out = torch.zeros((g, -(-n // 16) * 16), dtype=torch.uint8, device=zeros.device)
    out[:, :n] = zeros.t()
    return out


def v4_codes_np(codes: np.ndarray, group_size: int) -> np.ndarray:
    """uint16 (G, N, group_size / 4): the "v4" kernel's layout of packed codes (N, K / 2) uint8.

    Group-major (all rows of one group are one contiguous block, so a program's K step reads one stretch of HBM),
    and within each (group, row) the 16-bit words (4 codes each, column 4w in the low nibble) reordered so that
    the words one thread of the tensor-core layout needs, w = a, a + 4, a + 8, ..., lie side by side: stored
    word a * (W / 4) + j holds word 4 j + a (W = group_size / 4). The kernel undoes the reorder with a
    reshape/permute of the loaded tile, so the values it expands are the packed codes unchanged.
    """
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    n, kb = c.shape
    k = kb * 2
    if group_size % 16 or k % group_size:
        raise ValueError(f"v4_codes_np: K={k} and group_size={group_size} (a multiple of 16 dividing K) expected")
    w = group_size // 4
    words = c.view("<u2").reshape(n, k // group_size, w // 4, 4)       # [n, g, j, a] = word 4 j + a
    return np.ascontiguousarray(words.transpose(1, 0, 3, 2)).reshape(k // group_size, n, w)


def v4_words_np(stored: np.ndarray, group_size: int) -> np.ndarray:
    """Inverse of the reorder as the kernel does it: (G, N, W) stored words -> (N, K / 4) words in K order."""
    g, n, w = stored.shape
    t = stored.reshape(g, n, 4, w // 4).transpose(0, 1, 3, 2)           # the kernel's permute((0, 2, 1))
    return np.ascontiguousarray(t.reshape(g, n, w).transpose(1, 0, 2)).reshape(n, g * w)


def v4_codes(codes, group_size: int):
    """torch twin of ``v4_codes_np`` (on the codes' device): int16 (G, N, group_size / 4)."""
    import torch

    n, kb = codes.shape
    k = kb * 2
    w = group_size // 4
    words = codes.contiguous().view(torch.int16).reshape(n, k // group_size, w // 4, 4)
    return words.permute(1, 0, 3, 2).contiguous().reshape(k // group_size, n, w)


def fp8_weight_from_lut(codes, lut, group_size: int, rows_per_chunk: int = 2048):
    """uint8 (G, N, group_size): the expanded FP8 weight, group-major, by table look-up (the "fp8" variant's input).

    codes uint8 (N, K / 2), lut int32 (G, N, 4) (``expansion_lut``). Byte (g, n, c) = entry q(n, g * gs + c) of
    table (g, n): the very bytes the table variants feed the dot.
    """
    import torch

    n, kb = codes.shape
    g = kb * 2 // group_size
    lut8 = lut.view(torch.uint8).reshape(g, n, 16)
    out = torch.empty((g, n, group_size), dtype=torch.uint8, device=codes.device)
    for r0 in range(0, n, rows_per_chunk):
        c = codes[r0:r0 + rows_per_chunk]
        q = torch.stack((c & 0xF, c >> 4), dim=-1).reshape(c.shape[0], g, group_size).to(torch.int64)
        t = lut8[:, r0:r0 + rows_per_chunk].permute(1, 0, 2)                # (rows, G, 16)
        out[:, r0:r0 + rows_per_chunk] = torch.gather(t, 2, q).permute(1, 0, 2)
    return out


@dataclass(frozen=True)
class PackedW4A8Weight:
    """A W4A8 weight on the GPU, in the layout one kernel variant reads (fields as in ``dpq.packed.PackedLinear``).

    variant "v4": codes torch.int16 (G, N, group_size / 4) (``v4_codes``: group-major, words reordered per
    thread); lut torch.int32 (G, N, 4) = the 16 FP8 codes of FP8(s_g (j - z)), j = 0..15, of each (group, row),
    4 per little-endian word.
    variant "lut": codes torch.uint8 (N, K / 2) as packed (column 2j in the low nibble); lut as for "v4".
    variant "v2": codes as for "lut"; group_scales torch.float32 (N, K / group_size); zeros torch.uint8.
    variant "v5": codes as for "v4"; group_scales torch.float32 (G, N) (group-major); zeros torch.uint8 (G, N16),
    N16 = N rounded up to a multiple of 16 (``v5_zeros``: group-major bytes, read 4 rows to a 32-bit word; rows
    16-byte aligned for the "v6" kernel's TMA loads).
    variant "v6": the "v5" layout; decode tiles run the Gluon kernel (dpq/kernels/w4a8_gluon.py), the others v5's.
    variant "fp8": codes torch.uint8 (G, N, group_size) = the expanded FP8 weight, group-major (no INT4: the
    same loop with 1-byte weights, for measuring the loop's cost; bit-equal to the table variants).
    tensor_scale: s_t; fp8_max: the FP8 format's largest finite value; n, k: the weight's shape (N rows of K).
    """

    codes: object
    group_scales: object
    zeros: object
    group_size: int
    tensor_scale: float
    fp8_max: float
    variant: str = DEFAULT_VARIANT
    lut: object = None
    n: int = 0
    k: int = 0

    @property
    def hbm_bytes(self) -> int:
        """Bytes one call reads of this weight (codes plus per-group data)."""
        if self.variant in TABLE_VARIANTS:
            return int(self.codes.numel() * self.codes.element_size() + self.lut.numel() * 4)
        if self.variant in ("v5", "v6"):  # codes + float32 scale + the zero byte per (group, row) (no padding rows)
            return int(self.codes.numel() * self.codes.element_size() + self.group_scales.numel() * 5)
        if self.variant == "fp8":
            return int(self.codes.numel())
        return int(self.codes.numel() + self.group_scales.numel() * 5)

    @classmethod
    def from_arrays(cls, codes, group_scales, zeros, group_size: int, tensor_scale: float, fp8_max: float,
                    device: str = "cuda", variant: str | None = None) -> "PackedW4A8Weight":
        """From numpy (or torch) arrays of the packed format; checks shapes and the group size.

        variant: one of VARIANTS, or None for the card's own (``default_variant_for`` of ``device``'s name).
        For the table variants the tables are computed here on ``device`` (float32 s_g * (j - z), clamped to
        +-fp8_max, cast to float8_e4m3fn with round to nearest even: the packed format's expansion).
        """
        import torch

        if variant is None:
            variant = default_variant_for(torch.cuda.get_device_name(device))
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")

        def dev(a, dtype):
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            if t.dtype != dtype:
                raise TypeError(f"expected {dtype}, got {t.dtype}")
            return t.to(device).contiguous()
        c, s, z = dev(codes, torch.uint8), dev(group_scales, torch.float32), dev(zeros, torch.uint8)
        n, k = c.shape[0], c.shape[1] * 2
        if group_size not in GROUP_SIZES:
            raise ValueError(f"group_size={group_size}: the Triton W4A8 kernel expands whole groups per K step and "
                             f"takes group sizes {GROUP_SIZES} (use the cublas kernel for others)")
        if k % group_size or s.shape != (n, k // group_size) or z.shape != s.shape:
            raise ValueError(f"codes {tuple(c.shape)}, group_scales {tuple(s.shape)}, zeros {tuple(z.shape)}: "
                             f"expected (N, K/2), (N, K/{group_size}), (N, K/{group_size})")
        common = dict(group_size=int(group_size), tensor_scale=float(tensor_scale), fp8_max=float(fp8_max),
                      variant=variant, n=int(n), k=int(k))
        if variant == "v2":
            return cls(c, s, z, **common)
        if variant in ("v5", "v6"):
            return cls(v4_codes(c, group_size), s.t().contiguous(), v5_zeros(z), **common)
        lut = expansion_lut(s, z, float(fp8_max))
        if variant == "lut":
            return cls(c, None, None, lut=lut, **common)
        if variant == "fp8":
            return cls(fp8_weight_from_lut(c, lut, group_size), None, None, **common)
        return cls(v4_codes(c, group_size), None, None, lut=lut, **common)

    @classmethod
    def from_packed(cls, p, device: str = "cuda", variant: str | None = None) -> "PackedW4A8Weight":
        """From a ``dpq.packed.PackedLinear`` with int_asym weights and FP8 expansion (variant: as ``from_arrays``)."""
        from sim.formats import get_format

        if p.weight_encoding != "int_asym" or p.expansion != "fp8":
            raise ValueError(f"layer {p.name!r}: the W4A8 kernel needs int_asym weights with FP8 expansion")
        fmt = get_format(p.fp8_format)
        return cls.from_arrays(p.codes, p.group_scales, p.zeros, p.group_size, p.tensor_scale,
                               float(fmt.max_finite), device, variant)


def expansion_lut(group_scales, zeros, fp8_max: float, rows_per_chunk: int = 4096):
    """torch int32 (G, N, 4): the 16 FP8 codes FP8(s_g (j - z)) of each (group, row), 4 per little-endian word.

    group_scales float32 (N, G), zeros uint8 (N, G), on the GPU. One float32 multiply of s_g by the exact
    float32 (j - z), clamped to +-fp8_max, cast with round to nearest even: ``dpq.torch_backend``'s expansion.
    """
    import torch

    n, g = group_scales.shape
    out = torch.empty((g, n, 16), dtype=torch.uint8, device=group_scales.device)
    j = torch.arange(16, dtype=torch.int32, device=group_scales.device)
    for r0 in range(0, n, rows_per_chunk):
        s = group_scales[r0:r0 + rows_per_chunk].t()                      # (G, rows)
        d = (j[None, None, :] - zeros[r0:r0 + rows_per_chunk].t().to(torch.int32)[:, :, None]).to(torch.float32)
        w = (s[:, :, None] * d).clamp_(-fp8_max, fp8_max)
        out[:, r0:r0 + rows_per_chunk] = w.to(torch.float8_e4m3fn).view(torch.uint8)
    return out.view(torch.int32).contiguous()  # (G, N, 4)


# Programmatic dependent launch (KernelConfig.pdl): L2 prefetches a program issues before it waits for the kernel
# before it. Both are hints (nothing reaches the program's registers); the bulk form is only given 16-byte aligned
# stretches of whole rows inside the weight buffers (checked at launch), the line form addresses inside a row stretch.
# Every thread of the program runs the asm; only thread 0 issues the request.
L2_BULK_PREFETCH_ASM = ("{ .reg .pred first; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 first, t, 0; "
                        "@first cp.async.bulk.prefetch.L2.global [$1], $2; } // dummy $0")
L2_LINE_PREFETCH_ASM = ("{ .reg .pred first; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 first, t, 0; "
                        "@first prefetch.global.L2 [$1]; } // dummy $0")

# Triton 3.6 pipelines register-A wgmmas with up to 3 left in flight across loop iterations; the next iteration's
# code may then overwrite registers an in-flight wgmma still reads (triton-lang/triton issue 9433, fixed after 3.6).
# Measured here as run-to-run differences of v4 at 128x128 tiles with 8 warps (results/gpu/race_v4_h200*.log). The
# kernels therefore wait for all of a step's wgmmas at the end of the step (KernelConfig.mma_wait_each_step).
WGMMA_WAIT_ALL_ASM = "wgmma.wait_group.sync.aligned 0; // dummy $0"

_KERNELS = {}


def _kernels():
    """Compile-on-first-use: triton is imported only when the kernel runs."""
    if _KERNELS:
        return _KERNELS
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        raise ImportError("the fused W4A8 kernel needs Triton (installed with CUDA builds of torch): "
                          'pip install -e ".[torch]"') from exc

    wgmma_wait_all_asm = tl.constexpr(WGMMA_WAIT_ALL_ASM)
    bulk_prefetch_asm = tl.constexpr(L2_BULK_PREFETCH_ASM)
    line_prefetch_asm = tl.constexpr(L2_LINE_PREFETCH_ASM)

    @triton.jit
    def wgmma_wait_all():
        tl.inline_asm_elementwise(wgmma_wait_all_asm, "=r", [], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def l2_prefetch(byte_ptr, nbytes):
        # byte_ptr 16-byte aligned, nbytes a multiple of 16 (whole rows of a 128-row tile)
        tl.inline_asm_elementwise(bulk_prefetch_asm, "=r,l,r", [byte_ptr, nbytes], dtype=tl.int32, is_pure=False,
                                  pack=1)

    @triton.jit
    def l2_prefetch_lines(first_byte_ptr, NBYTES: tl.constexpr):
        # any alignment: every 128-byte line the NBYTES from first_byte_ptr touch (one address per line, then the
        # last byte's)
        for i in tl.static_range((NBYTES + 127) // 128):
            tl.inline_asm_elementwise(line_prefetch_asm, "=r,l", [first_byte_ptr + i * 128], dtype=tl.int32,
                                      is_pure=False, pack=1)
        tl.inline_asm_elementwise(line_prefetch_asm, "=r,l", [first_byte_ptr + (NBYTES - 1)], dtype=tl.int32,
                                  is_pure=False, pack=1)

    @triton.jit
    def store_result(acc, out_ptr, part_ptr, count_ptr, offs_n, offs_t, n_mask, t_mask, M, N, stride_om, out_scale,
                     pid_n, pid_t, pid_s, n_parts, SPLIT_K: tl.constexpr, OUT_BF16: tl.constexpr,
                     REDUCE: tl.constexpr):
        # the kernels' epilogue: y = acc * (s_x s_t) stored, or the split-K part stored (and, with REDUCE, the
        # ordered in-kernel reduction: the program that finishes a tile's parts last - an arrival counter per tile -
        # adds all parts in order, part 0 first, in float32, as the separate reduction kernel does; the counter is
        # reset for the next launch; the "v2" and "lut" kernels store through it without REDUCE)
        out_offs = offs_t[None, :].to(tl.int64) * stride_om + offs_n[:, None]
        out_mask = n_mask[:, None] & t_mask[None, :]
        if SPLIT_K == 1:
            y = acc * out_scale
            if OUT_BF16:
                tl.store(out_ptr + out_offs, y.to(tl.bfloat16), mask=out_mask)
            else:
                tl.store(out_ptr + out_offs, y, mask=out_mask)
        else:
            tl.store(part_ptr + pid_s.to(tl.int64) * M * N + out_offs, acc, mask=out_mask)
            if REDUCE:
                tl.debug_barrier()  # every thread's part stored before the release below
                tile = pid_t * tl.num_programs(0) + pid_n
                arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
                if arrived == n_parts - 1:
                    total = tl.load(part_ptr + out_offs, mask=out_mask, other=0.0, cache_modifier=".cg")
                    for ps in range(1, n_parts):
                        total = total + tl.load(part_ptr + ps * M * N + out_offs, mask=out_mask, other=0.0,
                                                cache_modifier=".cg")
                    y = total * out_scale
                    if OUT_BF16:
                        tl.store(out_ptr + out_offs, y.to(tl.bfloat16), mask=out_mask)
                    else:
                        tl.store(out_ptr + out_offs, y, mask=out_mask)
                    tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")

    @triton.jit
    def w4a8_kernel(x_ptr, codes_ptr, scales_ptr, zeros_ptr, out_ptr, part_ptr,
                    M, N, K, stride_xm, stride_cn, stride_sn, stride_zn, stride_om,
                    out_scale, k_tiles_per_split,
                    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                    FP8_MAX: tl.constexpr, OUT_BF16: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_kb = tl.arange(0, BLOCK_K // 2)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        t_mask = offs_t < M
        k_tiles = K // BLOCK_K
        kt_begin = pid_s * k_tiles_per_split
        kt_end = kt_begin + k_tiles_per_split
        if kt_end > k_tiles:
            kt_end = k_tiles
        code_rows = codes_ptr + offs_n[:, None].to(tl.int64) * stride_cn
        x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_xm
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for kt in range(kt_begin, kt_end):
            byte0 = kt * (BLOCK_K // 2)
            packed = tl.load(code_rows + (byte0 + offs_kb)[None, :], mask=n_mask[:, None], other=0)
            s_g = tl.load(scales_ptr + offs_n.to(tl.int64) * stride_sn + kt, mask=n_mask, other=1.0)
            z = tl.load(zeros_ptr + offs_n.to(tl.int64) * stride_zn + kt, mask=n_mask, other=0).to(tl.int32)
            # q -> float32 without an int->float convert: the bits 0x4B000000 | q are the float 2^23 + q, and
            # (2^23 + q) - (2^23 + z) = q - z exactly; then one float32 multiply by s_g (RNE) as the format defines.
            c = packed.to(tl.int32)
            lo = ((c & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)  # even columns
            hi = ((c >> 4) | 0x4B000000).to(tl.float32, bitcast=True)  # odd columns
            z_f = (z + 8388608).to(tl.float32)
            w = (tl.interleave(lo, hi) - z_f[:, None]) * s_g[:, None]  # interleaving restores K order
            if FP8_MAX != 448.0:  # the e4m3fn conversion (cvt.rn.satfinite) saturates at +-448 by itself
                w = tl.minimum(tl.maximum(w, -FP8_MAX), FP8_MAX)
            w8 = w.to(tl.float8e4nv)
            x8 = tl.load(x_rows + (kt * BLOCK_K + offs_k)[None, :], mask=t_mask[:, None], other=0.0)
            acc = tl.dot(w8, tl.trans(x8), acc)
        store_result(acc, out_ptr, part_ptr, part_ptr, offs_n, offs_t, n_mask, t_mask, M, N, stride_om, out_scale,
                     pid_n, pid_t, pid_s, 1, SPLIT_K, OUT_BF16, False)

    lut_asm, lut_constraints = tl.constexpr(LUT_ASM), tl.constexpr(LUT_CONSTRAINTS)
    lut_asm_row, lut_row_constraints = tl.constexpr(LUT_ASM_ROW), tl.constexpr(LUT_ROW_CONSTRAINTS)
    lut_asm_word, lut_word_constraints = tl.constexpr(LUT_ASM_WORD), tl.constexpr(LUT_WORD_CONSTRAINTS)

    @triton.jit
    def w4a8_lut_kernel(x_ptr, codes_ptr, lut_ptr, out_ptr, part_ptr,
                        M, N, K, stride_xm, stride_cw, stride_om, out_scale, k_tiles_per_split,
                        BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                        OUT_BF16: tl.constexpr, EVEN_N: tl.constexpr, MMA_WAIT: tl.constexpr = True):
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        t_mask = offs_t < M
        k_tiles = K // BLOCK_K
        kt_begin = pid_s * k_tiles_per_split
        kt_end = kt_begin + k_tiles_per_split
        if kt_end > k_tiles:
            kt_end = k_tiles
        # codes as uint16: 4 columns (4j..4j+3, low nibble first) per element; stride_cw in uint16 elements
        code_rows = codes_ptr.to(tl.pointer_type(tl.uint16)) + offs_n[:, None].to(tl.int64) * stride_cw
        offs_kw = tl.arange(0, BLOCK_K // 4)
        x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_xm
        lut_rows = lut_ptr + offs_n * 4
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for kt in range(kt_begin, kt_end):
            lut_g = lut_rows + kt.to(tl.int64) * N * 4
            if EVEN_N:
                c16 = tl.load(code_rows + (kt * (BLOCK_K // 4) + offs_kw)[None, :])
                l0 = tl.load(lut_g)
                l1 = tl.load(lut_g + 1)
                l2 = tl.load(lut_g + 2)
                l3 = tl.load(lut_g + 3)
            else:  # rows past N read table 0 (FP8 +0), so their products vanish
                c16 = tl.load(code_rows + (kt * (BLOCK_K // 4) + offs_kw)[None, :], mask=n_mask[:, None], other=0)
                l0 = tl.load(lut_g, mask=n_mask, other=0)
                l1 = tl.load(lut_g + 1, mask=n_mask, other=0)
                l2 = tl.load(lut_g + 2, mask=n_mask, other=0)
                l3 = tl.load(lut_g + 3, mask=n_mask, other=0)
            quads = tl.inline_asm_elementwise(
                lut_asm, lut_constraints, [c16, l0[:, None], l1[:, None], l2[:, None], l3[:, None]],
                dtype=tl.uint32, is_pure=True, pack=2)  # (BLOCK_N, BLOCK_K / 4): FP8 bytes of columns 4j..4j+3
            b0, b1 = quads.to(tl.uint8), (quads >> 8).to(tl.uint8)
            b2, b3 = (quads >> 16).to(tl.uint8), (quads >> 24).to(tl.uint8)
            w8 = tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (BLOCK_N, BLOCK_K))  # bytes back in K order
            w8 = w8.to(tl.float8e4nv, bitcast=True)
            x8 = tl.load(x_rows + (kt * BLOCK_K + offs_k)[None, :], mask=t_mask[:, None], other=0.0)
            acc = tl.dot(w8, tl.trans(x8), acc)
            if MMA_WAIT:
                wgmma_wait_all()
        store_result(acc, out_ptr, part_ptr, part_ptr, offs_n, offs_t, n_mask, t_mask, M, N, stride_om, out_scale,
                     pid_n, pid_t, pid_s, 1, SPLIT_K, OUT_BF16, False)

    @triton.jit
    def program_tile(M, N, K, k_steps_per_split, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, STEP: tl.constexpr):
        # the "v5"/"v4" program's weight rows, tokens (with their masks) and slice [ks_begin, ks_end) of K steps
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        k_steps = K // STEP
        ks_begin = pid_s * k_steps_per_split
        ks_end = ks_begin + k_steps_per_split
        if ks_end > k_steps:
            ks_end = k_steps
        # every part is non-empty (the host makes it so); telling the compiler keeps the zero-trip path (and its
        # accumulator initialisation) out of the loop's wgmma pipeline, which ptxas would otherwise serialise
        tl.assume(ks_end > ks_begin)
        return pid_n, pid_t, pid_s, offs_n, offs_t, offs_n < N, offs_t < M, ks_begin, ks_end

    @triton.jit
    def w4a8_v4_kernel(x_ptr, w_ptr, lut_ptr, out_ptr, part_ptr, count_ptr,
                       M, N, K, stride_xm, stride_om, out_scale, k_steps_per_split, n_parts,
                       BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, GROUP: tl.constexpr, GPS: tl.constexpr,
                       SPLIT_K: tl.constexpr, OUT_BF16: tl.constexpr, EVEN_N: tl.constexpr, FP8_W: tl.constexpr,
                       REDUCE: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                       PDL_LATE: tl.constexpr = False, MMA_WAIT: tl.constexpr = True):
        # v4 (and, with FP8_W, the same loop on 1-byte FP8 weights): GPS groups per K step; weights group-major
        # (one contiguous block of HBM per group and program); codes read 16 bytes per thread (words reordered
        # at load time, see v4_codes_np); tables read as one (BLOCK_N, 4) tile.
        pid_n, pid_t, pid_s, offs_n, offs_t, n_mask, t_mask, ks_begin, ks_end = program_tile(
            M, N, K, k_steps_per_split, BLOCK_N, BLOCK_T, GROUP * GPS)
        offs_g = tl.arange(0, GROUP)
        x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_xm
        if FP8_W:
            w_tile = offs_n[:, None] * GROUP + offs_g[None, :]                     # (BLOCK_N, GROUP) bytes
            w_base = w_ptr.to(tl.pointer_type(tl.float8e4nv))
        else:
            W: tl.constexpr = GROUP // 4                                            # 16-bit words per row
            offs_a = tl.arange(0, 4)
            offs_i = tl.arange(0, W // 8)
            # 32-bit units of the stored words: unit (a, i) of a row = words 8 i + a (low) and 8 i + 4 + a (high)
            w_tile = (offs_n[:, None, None] * (W // 2) + offs_a[None, :, None] * (W // 8)
                      + offs_i[None, None, :])                                      # (BLOCK_N, 4, W / 8)
            w_base = w_ptr.to(tl.pointer_type(tl.uint32))
            lut_tile = offs_n[:, None] * 4 + tl.arange(0, 4)[None, :]              # (BLOCK_N, 4) words
        if PDL:
            if not PDL_LATE:
                tl.extra.cuda.gdc_launch_dependents()
            if EVEN_N and pid_t == 0:  # the token tiles of a weight tile share its bytes: one of them asks
                for p in tl.static_range(PREFETCH * GPS):
                    if ks_begin * GPS + p < ks_end * GPS:
                        rows = (ks_begin * GPS + p).to(tl.int64) * N + pid_n * BLOCK_N
                        if FP8_W:
                            l2_prefetch(w_ptr.to(tl.pointer_type(tl.uint8)) + rows * GROUP, BLOCK_N * GROUP)
                        else:
                            l2_prefetch(w_ptr.to(tl.pointer_type(tl.uint8)) + rows * (GROUP // 2),
                                        BLOCK_N * (GROUP // 2))
                            l2_prefetch(lut_ptr.to(tl.pointer_type(tl.uint8)) + rows * 16, BLOCK_N * 16)
            tl.extra.cuda.gdc_wait()  # from here on the kernel before this one has finished
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for ks in range(ks_begin, ks_end):
            for gi in tl.static_range(GPS):
                g = (ks * GPS + gi).to(tl.int64)
                if FP8_W:
                    if EVEN_N:
                        w8 = tl.load(w_base + g * N * GROUP + w_tile)
                    else:
                        w8 = tl.load(w_base + g * N * GROUP + w_tile, mask=n_mask[:, None], other=0.0)
                else:
                    if EVEN_N:
                        c3 = tl.load(w_base + g * N * (W // 2) + w_tile)
                        lw = tl.load(lut_ptr + g * N * 4 + lut_tile)
                    else:  # rows past N read code 0 and table 0 (FP8 +0), so their products vanish
                        c3 = tl.load(w_base + g * N * (W // 2) + w_tile, mask=n_mask[:, None, None], other=0)
                        lw = tl.load(lut_ptr + g * N * 4 + lut_tile, mask=n_mask[:, None], other=0)
                    l02, l13 = tl.split(tl.reshape(lw, (BLOCK_N, 2, 2)))           # [n, i, j] = word 2 i + j
                    l0, l2 = tl.split(l02)
                    l1, l3 = tl.split(l13)
                    q_lo, q_hi = tl.inline_asm_elementwise(
                        lut_asm_row, lut_row_constraints,
                        [c3, l0[:, None, None], l1[:, None, None], l2[:, None, None], l3[:, None, None]],
                        dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)  # [n, a, i]: words 8i+a, 8i+4+a
                    # quads[n, w] = FP8 bytes of columns 4w..4w+3, w = 8 i + 4 h + a
                    quads = tl.reshape(tl.permute(tl.join(q_lo, q_hi), (0, 2, 3, 1)), (BLOCK_N, W))
                    b0, b1 = quads.to(tl.uint8), (quads >> 8).to(tl.uint8)
                    b2, b3 = (quads >> 16).to(tl.uint8), (quads >> 24).to(tl.uint8)
                    w8 = tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (BLOCK_N, GROUP))
                    w8 = w8.to(tl.float8e4nv, bitcast=True)
                x8 = tl.load(x_rows + (g * GROUP + offs_g)[None, :], mask=t_mask[:, None], other=0.0)
                acc = tl.dot(w8, tl.trans(x8), acc)
            if MMA_WAIT:
                wgmma_wait_all()
        if PDL and PDL_LATE:
            tl.extra.cuda.gdc_launch_dependents()
        store_result(acc, out_ptr, part_ptr, count_ptr, offs_n, offs_t, n_mask, t_mask, M, N, stride_om, out_scale,
                     pid_n, pid_t, pid_s, n_parts, SPLIT_K, OUT_BF16, REDUCE)

    word_asm, word_constraints = tl.constexpr(TABLE_WORD_ASM), tl.constexpr(TABLE_WORD_CONSTRAINTS)
    word_asm_clamp = tl.constexpr(TABLE_WORD_ASM_CLAMP)
    word_constraints_clamp = tl.constexpr(TABLE_WORD_CONSTRAINTS_CLAMP)
    shfl0, shfl1, shfl2, shfl3 = (tl.constexpr(a) for a in QUAD_SHFL_ASM)

    @triton.jit
    def w4a8_v5_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, part_ptr, count_ptr,
                       M, N, K, stride_xm, stride_om, stride_zg, out_scale, k_steps_per_split, n_parts,
                       BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, GROUP: tl.constexpr,
                       SPLIT_K: tl.constexpr, OUT_BF16: tl.constexpr, EVEN_N: tl.constexpr, REDUCE: tl.constexpr,
                       FP8_MAX: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                       PDL_LATE: tl.constexpr = False, MMA_WAIT: tl.constexpr = True):
        # v5: v4's loop (codes group-major, 16-byte loads, LUT_ASM_ROW look-ups) with the tables built in the loop
        # from the group's float32 scales (G, N) and zero bytes (G, N16, read 4 rows to a word): each lane of a quad
        # builds one word of its 4 rows' tables (TABLE_WORD_ASM), shuffles within the quad hand out the other 3.
        pid_n, pid_t, pid_s, offs_n, offs_t, n_mask, t_mask, ks_begin, ks_end = program_tile(
            M, N, K, k_steps_per_split, BLOCK_N, BLOCK_T, GROUP)
        offs_g = tl.arange(0, GROUP)
        x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_xm
        W: tl.constexpr = GROUP // 4
        offs_a = tl.arange(0, 4)
        offs_i = tl.arange(0, W // 8)
        w_tile = (offs_n[:, None, None] * (W // 2) + offs_a[None, :, None] * (W // 8) + offs_i[None, None, :])
        w_base = w_ptr.to(tl.pointer_type(tl.uint32))
        z_words = z_ptr.to(tl.pointer_type(tl.int32))
        if PDL:
            if not PDL_LATE:
                tl.extra.cuda.gdc_launch_dependents()
            if EVEN_N and pid_t == 0:  # the token tiles of a weight tile share its bytes: one of them asks
                for p in tl.static_range(PREFETCH):
                    if ks_begin + p < ks_end:
                        gp = (ks_begin + p).to(tl.int64)
                        rows = gp * N + pid_n * BLOCK_N
                        l2_prefetch(w_ptr.to(tl.pointer_type(tl.uint8)) + rows * (GROUP // 2), BLOCK_N * (GROUP // 2))
                        l2_prefetch(s_ptr.to(tl.pointer_type(tl.uint8)) + rows * 4, BLOCK_N * 4)
                        l2_prefetch_lines(z_ptr.to(tl.pointer_type(tl.uint8)) + gp * stride_zg + pid_n * BLOCK_N,
                                          BLOCK_N)
            tl.extra.cuda.gdc_wait()  # from here on the kernel before this one has finished
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for ks in range(ks_begin, ks_end):
            g = ks.to(tl.int64)
            if EVEN_N:
                c3 = tl.load(w_base + g * N * (W // 2) + w_tile)
                sg = tl.load(s_ptr + g * N + offs_n)
                zw = tl.load(z_words + (g * stride_zg + offs_n) // 4)
            else:  # rows past N: code 0, scale 0, zero 0 -> table of +0, products vanish
                c3 = tl.load(w_base + g * N * (W // 2) + w_tile, mask=n_mask[:, None, None], other=0)
                sg = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0)
                zw = tl.load(z_words + (g * stride_zg + offs_n) // 4, mask=n_mask, other=0)
            if FP8_MAX == 448.0:
                mine = tl.inline_asm_elementwise(word_asm, word_constraints, [sg.to(tl.int32, bitcast=True), zw],
                                                 dtype=tl.uint32, is_pure=True, pack=4)
            else:
                hi = tl.full((BLOCK_N,), FP8_MAX, tl.float32)
                mine = tl.inline_asm_elementwise(word_asm_clamp, word_constraints_clamp,
                                                 [sg.to(tl.int32, bitcast=True), zw, hi, -hi],
                                                 dtype=tl.uint32, is_pure=True, pack=4)
            l0 = tl.inline_asm_elementwise(shfl0, "=r,r", [mine], dtype=tl.uint32, is_pure=True, pack=1)
            l1 = tl.inline_asm_elementwise(shfl1, "=r,r", [mine], dtype=tl.uint32, is_pure=True, pack=1)
            l2 = tl.inline_asm_elementwise(shfl2, "=r,r", [mine], dtype=tl.uint32, is_pure=True, pack=1)
            l3 = tl.inline_asm_elementwise(shfl3, "=r,r", [mine], dtype=tl.uint32, is_pure=True, pack=1)
            q_lo, q_hi = tl.inline_asm_elementwise(
                lut_asm_row, lut_row_constraints,
                [c3, l0[:, None, None], l1[:, None, None], l2[:, None, None], l3[:, None, None]],
                dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)
            quads = tl.reshape(tl.permute(tl.join(q_lo, q_hi), (0, 2, 3, 1)), (BLOCK_N, W))
            b0, b1 = quads.to(tl.uint8), (quads >> 8).to(tl.uint8)
            b2, b3 = (quads >> 16).to(tl.uint8), (quads >> 24).to(tl.uint8)
            w8 = tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (BLOCK_N, GROUP))
            w8 = w8.to(tl.float8e4nv, bitcast=True)
            x8 = tl.load(x_rows + (g * GROUP + offs_g)[None, :], mask=t_mask[:, None], other=0.0)
            acc = tl.dot(w8, tl.trans(x8), acc)
            if MMA_WAIT:
                wgmma_wait_all()
        if PDL and PDL_LATE:
            tl.extra.cuda.gdc_launch_dependents()
        store_result(acc, out_ptr, part_ptr, count_ptr, offs_n, offs_t, n_mask, t_mask, M, N, stride_om, out_scale,
                     pid_n, pid_t, pid_s, n_parts, SPLIT_K, OUT_BF16, REDUCE)

    @triton.jit
    def splitk_reduce_kernel(part_ptr, out_ptr, MN, out_scale, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
                             OUT_BF16: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        total = tl.load(part_ptr + offs, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLIT_K):  # in order: ((p0 + p1) + p2) + ...
            total = total + tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
        y = total * out_scale
        if OUT_BF16:
            tl.store(out_ptr + offs, y.to(tl.bfloat16), mask=mask)
        else:
            tl.store(out_ptr + offs, y, mask=mask)

    @triton.jit
    def expand_kernel(w_ptr, s_ptr, z_ptr, lut_ptr, out_ptr, N, K, stride_zg, BLOCK_N: tl.constexpr,
                      GROUP: tl.constexpr, FP8_MAX: tl.constexpr, TABLES: tl.constexpr,
                      GROUPS_FASTEST: tl.constexpr):
        # one (BLOCK_N rows, group) tile of the FP8 weight (N, K) from the "v5" (scales, zeros) or "v4" (tables)
        # layout. The tile's codes are one contiguous stretch (group-major), read once as 16-bit words; the
        # per-thread reorder of v4_codes_np (stored word j W/4 + i holds word 4 i + j) is undone in registers.
        # GROUPS_FASTEST: consecutive programs write consecutive 128-byte pieces of the same rows.
        if GROUPS_FASTEST:
            g = tl.program_id(0)
            pid_n = tl.program_id(1)
        else:
            pid_n = tl.program_id(0)
            g = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        W: tl.constexpr = GROUP // 4
        rows = g.to(tl.int64) * N + offs_n
        stored = tl.load(w_ptr + rows[:, None] * W + tl.arange(0, W)[None, :], mask=n_mask[:, None], other=0)
        words = tl.reshape(tl.permute(tl.reshape(stored, (BLOCK_N, 4, W // 4)), (0, 2, 1)), (BLOCK_N, W))
        words = words.to(tl.int32) & 0xFFFF
        if TABLES:  # 4 FP8 bytes per code word by byte permutes on the row's table (LUT_ASM_WORD)
            t0 = tl.broadcast_to(tl.load(lut_ptr + rows * 4, mask=n_mask, other=0)[:, None], (BLOCK_N, W))
            t1 = tl.broadcast_to(tl.load(lut_ptr + rows * 4 + 1, mask=n_mask, other=0)[:, None], (BLOCK_N, W))
            t2 = tl.broadcast_to(tl.load(lut_ptr + rows * 4 + 2, mask=n_mask, other=0)[:, None], (BLOCK_N, W))
            t3 = tl.broadcast_to(tl.load(lut_ptr + rows * 4 + 3, mask=n_mask, other=0)[:, None], (BLOCK_N, W))
            w32 = tl.inline_asm_elementwise(lut_asm_word, lut_word_constraints, [words, t0, t1, t2, t3],
                                            dtype=tl.int32, is_pure=True, pack=1)
            out32 = out_ptr.to(tl.pointer_type(tl.int32))
            cw = tl.arange(0, W)
            tl.store(out32 + offs_n[:, None].to(tl.int64) * (K // 4) + (g * W + cw)[None, :], w32,
                     mask=n_mask[:, None])
        else:
            # word t holds columns 4 t + u in bits 4 u .. 4 u + 3: interleave u = 0, 2 with u = 1, 3
            even = tl.join(words & 0xF, (words >> 8) & 0xF)
            odd = tl.join((words >> 4) & 0xF, words >> 12)
            q = tl.reshape(tl.join(even, odd), (BLOCK_N, GROUP))
            sg = tl.load(s_ptr + rows, mask=n_mask, other=0.0)
            zg = tl.load(z_ptr + g.to(tl.int64) * stride_zg + offs_n, mask=n_mask, other=0)
            w = (q.to(tl.float32) - zg.to(tl.float32)[:, None]) * sg[:, None]  # exact q - z, one RNE multiply
            if FP8_MAX != 448.0:  # the saturating cast clamps at E4M3FN's 448 by itself; smaller formats clamp first
                w = tl.minimum(tl.maximum(w, -FP8_MAX), FP8_MAX)
            w8 = w.to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # cvt.rn.satfinite: RNE, saturating at +-448
            c = tl.arange(0, GROUP)
            tl.store(out_ptr + offs_n[:, None].to(tl.int64) * K + (g * GROUP + c)[None, :], w8,
                     mask=n_mask[:, None])

    _KERNELS.update({"v2": w4a8_kernel, "lut": w4a8_lut_kernel, "v4": w4a8_v4_kernel, "fp8": w4a8_v4_kernel,
                     "v5": w4a8_v5_kernel,
                     "reduce": splitk_reduce_kernel, "expand": expand_kernel})
    return _KERNELS


def output_scale(act_scale: float, tensor_scale: float) -> float:
    """float32(s_x) * float32(s_t) rounded to float32: the single epilogue multiplier (as cuBLAS forms it)."""
    return float(np.float32(np.float32(act_scale) * np.float32(tensor_scale)))


def w4a8_matmul(x8, weight: PackedW4A8Weight, act_scale: float, *, out_dtype: str = "bfloat16",
                config: KernelConfig | None = None, workspace=None):
    """y (M, N) = (x8 @ FP8(s_g (q - z))^T) * float32(s_x s_t) on the GPU.

    Args:
        x8: torch.float8_e4m3fn (M, K) on CUDA, rows contiguous: FP8(x / s_x).
        weight: the packed weight (N rows of K).
        act_scale: s_x.
        out_dtype: "bfloat16" or "float32".
        config: tile/launch parameters; None = ``launch_config`` (the card's tuned one, else ``default_config``).
        workspace: optional float32 tensor of at least split_k * M * N elements for split-K parts.
    Returns:
        torch tensor (M, N) of ``out_dtype``.
    """
    return _launch(x8, weight, act_scale, out_dtype=out_dtype, config=config, workspace=workspace)[0]


def _launch(x8, weight: PackedW4A8Weight, act_scale: float, *, out_dtype: str, config: KernelConfig | None,
            workspace=None):
    """w4a8_matmul's work; returns (y, the main kernel's CompiledKernel)."""
    import torch

    kernels = _kernels()
    if x8.dtype != torch.float8_e4m3fn or x8.dim() != 2 or x8.shape[1] != weight.k:
        raise ValueError(f"x8: expected float8_e4m3fn (M, {weight.k}), got {x8.dtype} {tuple(x8.shape)}")
    if x8.stride(1) != 1:
        x8 = x8.contiguous()
    if out_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"out_dtype={out_dtype!r}: expected 'bfloat16' or 'float32'")
    m, k, n = x8.shape[0], weight.k, weight.n
    if config is None:
        config = launch_config(m, n, k, weight, x8.device)
    step = k_step(config, weight.group_size)
    if weight.variant in ("lut", "v2") and config.groups_per_step != 1:
        raise ValueError(f"variant {weight.variant!r} takes groups_per_step=1, got {config.groups_per_step}")
    if k % step:
        raise ValueError(f"K={k} is not a multiple of the K step {step} (group_size {weight.group_size} x "
                         f"groups_per_step {config.groups_per_step})")
    k_steps = k // step
    per = math.ceil(k_steps / config.split_k)
    split = math.ceil(k_steps / per)  # every part non-empty
    out = torch.empty((m, n), dtype=torch.bfloat16 if out_dtype == "bfloat16" else torch.float32, device=x8.device)
    if split > 1:
        need = split * m * n
        part = workspace if workspace is not None and workspace.numel() >= need else \
            torch.empty(need, dtype=torch.float32, device=x8.device)
    else:
        part = out
    scale = output_scale(act_scale, weight.tensor_scale)
    grid = (triton_cdiv(n, config.block_n), triton_cdiv(m, config.block_t), split)
    launch = dict(BLOCK_N=config.block_n, BLOCK_T=config.block_t, OUT_BF16=out_dtype == "bfloat16",
                  num_warps=config.num_warps, num_stages=config.num_stages)
    if config.maxnreg is not None:
        launch["maxnreg"] = config.maxnreg
    if config.pdl and weight.variant not in ("v5", "v6", "v4", "fp8"):
        raise ValueError(f"KernelConfig.pdl: variant {weight.variant!r} has no dependent-launch support "
                         f"(only 'v5', 'v4', 'fp8' and 'v6' on v5's tiles)")
    pdl = config.pdl
    if config.l2_prefetch_steps:
        for name in ("codes", "lut", "group_scales"):
            t = getattr(weight, name)
            if t is not None and t.data_ptr() % 16:
                raise ValueError(f"KernelConfig.l2_prefetch_steps: PackedW4A8Weight.{name} must start 16-byte aligned "
                                 f"(the bulk L2 prefetch needs it), got address {t.data_ptr():#x}")
    if pdl:
        launch.update(launch_pdl=True, PDL=True, PREFETCH=config.l2_prefetch_steps,
                      PDL_LATE=config.pdl_trigger == "after_loop")
    if weight.variant in ("v5", "v6", "v4", "fp8", "lut"):
        # "fp8" reads its A operand from shared memory: no register hazard, its loop stays Triton's
        launch["MMA_WAIT"] = config.mma_wait_each_step and weight.variant != "fp8"
    # SPLIT_K is only tested against 1 in the lut/v4 kernels: 1 or 2 keeps one compilation for every split count
    reduce_in_kernel = split > 1 and config.reduce_in_kernel and weight.variant in ("v5", "v6", "v4", "fp8")
    gluon = False
    if weight.variant == "v6":
        from dpq.kernels.w4a8_gluon import gluon_kernel_applies, launch_v6

        gluon = gluon_kernel_applies(config, n)
    if gluon:
        counters = _tile_counters(x8.device, grid[0] * grid[1]) if reduce_in_kernel else part
        compiled = launch_v6(x8, weight, out, part, counters, scale, config, k_steps, per, split, reduce_in_kernel)
    elif weight.variant in ("v5", "v6"):
        if config.groups_per_step != 1:
            raise ValueError(f"variant {weight.variant!r}: this launch runs v5's Triton kernel (block_n "
                             f"{config.block_n}, block_t {config.block_t}, {config.num_warps} warps, N {n}), which "
                             f"takes groups_per_step=1, got {config.groups_per_step}")
        counters = _tile_counters(x8.device, grid[0] * grid[1]) if reduce_in_kernel else part
        compiled = kernels["v5"][grid](x8, weight.codes, weight.group_scales, weight.zeros, out, part, counters,
                                       m, n, k, x8.stride(0), out.stride(0), weight.zeros.stride(0), scale, per, split,
                                       GROUP=weight.group_size, SPLIT_K=min(split, 2), EVEN_N=n % config.block_n == 0,
                                       REDUCE=reduce_in_kernel, FP8_MAX=weight.fp8_max, **launch)
        _check_v5_layout(compiled)
    elif weight.variant in ("v4", "fp8"):
        counters = _tile_counters(x8.device, grid[0] * grid[1]) if reduce_in_kernel else part
        compiled = kernels["v4"][grid](x8, weight.codes, weight.lut if weight.lut is not None else weight.codes, out,
                                       part, counters, m, n, k, x8.stride(0), out.stride(0), scale, per, split,
                                       GROUP=weight.group_size, GPS=config.groups_per_step, SPLIT_K=min(split, 2),
                                       EVEN_N=n % config.block_n == 0, FP8_W=weight.variant == "fp8",
                                       REDUCE=reduce_in_kernel, **launch)
    elif weight.variant == "lut":
        compiled = kernels["lut"][grid](x8, weight.codes, weight.lut, out, part, m, n, k, x8.stride(0),
                             weight.codes.stride(0) // 2, out.stride(0), scale, per, SPLIT_K=min(split, 2),
                             EVEN_N=n % config.block_n == 0, BLOCK_K=weight.group_size, **launch)
    else:
        compiled = kernels["v2"][grid](x8, weight.codes, weight.group_scales, weight.zeros, out, part,
                            m, n, k, x8.stride(0), weight.codes.stride(0), weight.group_scales.stride(0),
                            weight.zeros.stride(0), out.stride(0), scale, per, SPLIT_K=split, FP8_MAX=weight.fp8_max,
                            BLOCK_K=weight.group_size, **launch)
    if config.mma_wait_each_step and not gluon:  # the Gluon kernel's MMAs read their A tile from shared memory
        _check_mma_pipeline(compiled)
    if split > 1 and not reduce_in_kernel:
        block = 1024
        extra = dict(launch_pdl=True, PDL=True) if pdl else {}
        kernels["reduce"][(triton_cdiv(m * n, block),)](part, out, m * n, scale, SPLIT_K=split, BLOCK=block,
                                                        OUT_BF16=out_dtype == "bfloat16", num_warps=4, **extra)
    return out, compiled


_V5_CHECKED = set()
_MMA_CHECKED = set()


def _check_mma_pipeline(compiled) -> None:
    """Once per compiled kernel: its main loop writes no register a warpgroup MMA may still read (the SASS, by
    ``dpq.kernels.sass.wgmma_register_hazards``). Triton 3.6 needed the per-step wait for that (issue 9433); another
    Triton or ptxas could schedule differently, and its results would then not be reproducible."""
    key = id(compiled)
    if key in _MMA_CHECKED:
        return
    from dpq.kernels.sass import cuobjdump_path, disassemble, wgmma_register_hazards

    if cuobjdump_path() is None:
        import warnings

        warnings.warn("w4a8 kernel: this Triton has no cuobjdump; the compiled kernel's MMA pipeline is not checked",
                      RuntimeWarning, stacklevel=3)
    else:
        try:
            hazards = wgmma_register_hazards(disassemble(compiled.asm["cubin"]))
        except (OSError, subprocess.CalledProcessError, KeyError, AttributeError) as exc:  # no verdict, no hazard
            import warnings

            warnings.warn(f"w4a8 kernel: could not disassemble the compiled kernel ({exc}); its MMA pipeline is not "
                          f"checked", RuntimeWarning, stacklevel=3)
            hazards = []
        if hazards:
            a, op, reg, mma = hazards[0]
            raise RuntimeError(f"w4a8 kernel: the compiled main loop writes {len(hazards)} time(s) to registers that a "
                               f"warpgroup MMA may still be reading (first: {op} {reg} at {a}, MMA at {mma}); its "
                               f"results would not be reproducible with this Triton/ptxas. Use kernel='cublas'.")
    _MMA_CHECKED.add(key)


def _check_v5_layout(compiled) -> None:
    """The "v5" table build is only right where Triton placed it in the tensor-core layout (the 4 lanes of a quad
    hold the same rows, and row % 4 = (laneid / 4) % 4): checked once per compiled kernel on its TTGIR."""
    key = id(compiled)
    if key in _V5_CHECKED:
        return
    problem = v5_layout_problem(compiled.asm["ttgir"])
    if problem:
        raise RuntimeError(f"w4a8 v5 kernel: {problem}; this Triton version or tile configuration does not keep the "
                           f"table build in the tensor-core layout (use variant 'v4')")
    _V5_CHECKED.add(key)


def v5_layout_problem(ttgir: str) -> str:
    """'' if the TTGIR's %laneid table-build asm runs in a layout whose lanes 0-1 do not move along the rows and
    whose lanes 2-3 step rows by 1 and 2 (and whose registers never step rows by less than 4); else what is wrong."""
    import re

    line = next((ln for ln in ttgir.splitlines() if "elementwise_inline_asm" in ln and "%laneid" in ln), None)
    if line is None:
        return "no table-build asm found in the TTGIR"
    m = re.search(r"->\s*tensor<\d+xi32,\s*#ttg\.slice<\{dim = (\d+), parent = #ttg\.slice<\{dim = (\d+), "
                  r"parent = #(\w+)\}>\}>>", line)
    if not m or {m.group(1), m.group(2)} != {"1", "2"}:
        return "the table-build asm's result layout is not a row slice of the look-up layout"
    d = re.search(r"^#" + re.escape(m.group(3)) + r" = (.*)$", ttgir, re.M)
    if d is None:
        return f"layout #{m.group(3)} not found"
    def bases(kind):
        b = re.search(kind + r" = \[(.*?)\]\](?:,|\})", d.group(1))
        return [[int(v) for v in x.split(",")] for x in re.findall(r"\[([-\d, ]+)\]", b.group(1) + "]")] if b else None
    lane, reg = bases("lane"), bases("register")
    if not lane or len(lane) != 5 or not reg:
        return f"layout #{m.group(3)} is not a linear layout with 5 lane bases"
    if lane[0][0] != 0 or lane[1][0] != 0 or lane[2][0] != 1 or lane[3][0] != 2 or any(0 < r[0] < 4 for r in reg):
        return f"layout #{m.group(3)} maps lanes to rows as {[b[0] for b in lane]}"
    return ""


_COUNTERS = {}


def _tile_counters(device, tiles: int):
    """int32 arrival counters (zero between launches: the last program of a tile resets its own), one set per
    (device, stream) so that launches on different streams never share one; grown by doubling, old sets kept alive
    (a captured CUDA graph may still point at them)."""
    import torch

    key = (str(device), torch.cuda.current_stream(device).cuda_stream)
    held = _COUNTERS.setdefault(key, [])
    if not held or held[-1].numel() < tiles:
        held.append(torch.zeros(max(tiles, 2 * held[-1].numel() if held else 1024), dtype=torch.int32, device=device))
    return held[-1]


EXPAND_BLOCK_N = 128  # rows per program of the expansion kernel (one group each): results/gpu/expand_*_s4b.csv


def expand_to_fp8(weight: PackedW4A8Weight, out=None, *, block_n: int = EXPAND_BLOCK_N, num_warps: int = 4,
                  groups_fastest: bool = True):
    """The weight's FP8 values FP8(s_g (q - z)) as torch.float8_e4m3fn (N, K), row-major, computed on the GPU by
    one Triton kernel from the packed layout of a "v5" or "v4" weight (bit-equal to
    ``dpq.torch_backend.weight_fp8`` of the same layer). out: optional uint8 or float8_e4m3fn (N, K) buffer.

    block_n (rows per program, one group each; a power of two), num_warps and groups_fastest (program order:
    the groups of a row block first, else the row blocks of a group first) only change the speed.
    """
    import torch

    if weight.variant not in EXPAND_VARIANTS:
        raise ValueError(f"expand_to_fp8: variant {weight.variant!r}; expected one of {EXPAND_VARIANTS}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"expand_to_fp8: block_n={block_n}; expected a power of two >= 16")
    n, k, gs = weight.n, weight.k, weight.group_size
    if out is None:
        out = torch.empty((n, k), dtype=torch.uint8, device=weight.codes.device)
    if tuple(out.shape) != (n, k) or out.dtype not in (torch.uint8, torch.float8_e4m3fn) or not out.is_contiguous():
        raise ValueError(f"expand_to_fp8: out must be a contiguous uint8 or float8_e4m3fn ({n}, {k}) tensor, got "
                         f"{out.dtype} {tuple(out.shape)}")
    tables = weight.variant == "v4"
    row_blocks = triton_cdiv(n, block_n)
    grid = (k // gs, row_blocks) if groups_fastest else (row_blocks, k // gs)
    _kernels()["expand"][grid](
        weight.codes, weight.group_scales if not tables else weight.codes,
        weight.zeros if not tables else weight.codes, weight.lut if tables else weight.codes, out.view(torch.uint8),
        n, k, 0 if tables else weight.zeros.stride(0), BLOCK_N=block_n, GROUP=gs, FP8_MAX=weight.fp8_max,
        TABLES=tables, GROUPS_FASTEST=groups_fastest, num_warps=num_warps)
    return out.view(torch.float8_e4m3fn)


def w4a8_matmul_expanded(x8, weight: PackedW4A8Weight, act_scale: float, *, out_dtype: str = "bfloat16"):
    """y (M, N) for prefill: the weight expanded to FP8 by ``expand_to_fp8`` (N x K bytes written, read once by
    the GEMM), then cuBLAS ``torch._scaled_mm`` with the per-tensor scales s_x and s_t and float32 promotion
    (``use_fast_accum=False``): the numerics of ``dpq.torch_backend``'s "cublas" kernel and of
    ``sim.mac.fp8_gemm(hw="h100"/"h200")``, not those of ``w4a8_matmul``.

    Args as ``w4a8_matmul``; the weight must be a "v5" or "v4" one.
    """
    import torch

    if x8.dtype != torch.float8_e4m3fn or x8.dim() != 2 or x8.shape[1] != weight.k:
        raise ValueError(f"x8: expected float8_e4m3fn (M, {weight.k}), got {x8.dtype} {tuple(x8.shape)}")
    if out_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"out_dtype={out_dtype!r}: expected 'bfloat16' or 'float32'")
    w8 = expand_to_fp8(weight)
    # filled on the device (no host copy: capturable in a CUDA graph)
    scale_a = torch.full((), float(np.float32(act_scale)), dtype=torch.float32, device=x8.device)
    scale_b = torch.full((), float(np.float32(weight.tensor_scale)), dtype=torch.float32, device=x8.device)
    return torch._scaled_mm(x8.contiguous(), w8.t(), scale_a=scale_a, scale_b=scale_b,
                            out_dtype=torch.bfloat16 if out_dtype == "bfloat16" else torch.float32,
                            use_fast_accum=False)


def uses_prefill_path(m: int, weight: PackedW4A8Weight, expand_from_tokens="card") -> bool:
    """Whether ``w4a8_linear`` runs a call of ``m`` tokens on ``weight`` as the prefill path (``expand_to_fp8`` +
    cuBLAS, numerics of ``sim.mac.fp8_gemm(hw="h100"/"h200")``) rather than the fused kernel (numerics of the
    *-triton-w4a8 profile with ``split_k_parts``).

    expand_from_tokens: "card" (the threshold of the weight's card, ``expand_from_tokens_for``), a positive int,
    or None (never). Weights of variants without an expansion kernel ("lut", "v2", "fp8") always run fused.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m={m!r}: expected a positive token count")
    if expand_from_tokens == "card":
        expand_from_tokens = _device_threshold(str(weight.codes.device))
    elif expand_from_tokens is not None and (isinstance(expand_from_tokens, bool)
                                             or not isinstance(expand_from_tokens, int) or expand_from_tokens < 1):
        raise ValueError(f"expand_from_tokens={expand_from_tokens!r}: expected 'card', a positive int or None")
    return weight.variant in EXPAND_VARIANTS and expand_from_tokens is not None and m >= expand_from_tokens


@functools.lru_cache(maxsize=None)
def _device_threshold(device: str) -> int | None:
    """expand_from_tokens_for the card at ``device`` ("cuda:0"), looked up once per device (called per GEMM)."""
    import torch

    return expand_from_tokens_for(torch.cuda.get_device_name(device))


def w4a8_linear(x8, weight: PackedW4A8Weight, act_scale: float, *, out_dtype: str = "bfloat16",
                config: KernelConfig | None = None, expand_from_tokens="card"):
    """y (M, N) by the faster path for M tokens: ``w4a8_matmul`` (fused) or ``w4a8_matmul_expanded`` (prefill:
    the FP8 weight, N x K bytes, is a temporary of the call) as ``uses_prefill_path`` decides; the two differ in
    their last bits (no promotion and the fused kernel's split-K parts vs cuBLAS's promotion every 128).

    Args as ``w4a8_matmul``; config applies to the fused path only; expand_from_tokens as ``uses_prefill_path``.
    """
    if uses_prefill_path(int(x8.shape[0]), weight, expand_from_tokens):
        return w4a8_matmul_expanded(x8, weight, act_scale, out_dtype=out_dtype)
    return w4a8_matmul(x8, weight, act_scale, out_dtype=out_dtype, config=config)


def kernel_resources(x8, weight: PackedW4A8Weight, config: KernelConfig | None = None) -> dict:
    """Registers per thread, shared memory per program and spills of the main kernel one call would launch (the
    call runs once to compile it)."""
    _, k = _launch(x8, weight, 1.0, out_dtype="float32", config=config)
    return {"registers": int(k.n_regs), "shared_bytes": int(k.metadata.shared), "spills": int(k.n_spills)}


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
