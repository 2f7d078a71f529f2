"""Structure-based time of a fused Triton GEMM kernel (a software-pipelined K loop per program, split-K).

The fused W4A8 kernels of dpq/kernels/w4a8_triton.py are not cuBLAS-like GEMMs whose time follows from bytes and
FLOP: each program runs a K loop whose every iteration is a chain (cp.async of the next stages, wait, barrier,
shared-memory loads, the in-register expansion, one wgmma and its wait). This module predicts such a kernel from

* its **structure** (``LoopStructure``), read from the kernel and its launch configuration, never fitted: tile
  (block_n weight rows x block_t tokens x block_k), warps, pipeline stages, split-K parts, registers per thread
  and shared memory per program (-> resident programs per SM), bytes per weight it streams, and the SASS
  instructions per thread of one main-loop iteration by pipe (scripts/fused_kernel_structure.py);
* the **SM's resources** (profile section ``sm``: datasheet numbers, and the issue cycles per warp instruction of
  each pipe), and
* the **loop's hardware costs** (profile section ``triton_loop``), fitted on Triton loops that are not the W4A8
  kernel (scripts/probe_triton_loop.py: the same loop with FP8 weights and a synthetic register pass, and the W4A8
  kernel's own loop with FP8 weights, bench scheme ``fp8_triton``) and, where a card has them, on sweeps of the
  W4A8 kernel's configurations (``--fit-tuning``); the W4A8 rows a profile's errors are reported on are never in
  its fit. The warp-specialized Gluon kernel ("v6": TMA loads by a load warp, MMAs from shared memory) has the same
  terms with its own costs (section ``gluon_loop``, fitted on a sweep of its configurations, ``--fit-v6-tuning``)
  where a profile has them.

Model (times in seconds; per launch of an m x n x k GEMM)::

    k_steps   = k / block_k,  per = ceil(k_steps / split),  parts = ceil(k_steps / per)
    programs  = ceil(n / block_n) * ceil(m / block_t) * parts
    resident  = min(register file, shared memory, warp slots, block slots) / one program's use
                (registers and warp slots of its launched warps: v6's load warp counts as a warpgroup)
    bytes_it  = block_n * block_k * weight_bytes_per_weight        (one step's weight tile;
                + block_t * block_k * activation_bytes for the Gluon kernel: its token tile)
    issue     = (fp32 * fp32_issue_cycles + int * int_issue_cycles + conversion * conversion_issue_cycles
                 + other * other_issue_cycles) * ceil(warps / schedulers_per_sm) * cycles_per_instruction
    mma_s     = mma_wait_latency_s + mma_macs / (tensor_macs_per_cycle * clock_hz)   one MMA, issue to done
    chain     = register_a_mma * warpgroups * mma_macs / (tensor_macs_per_cycle * clock_hz)
    t_it      = iteration_fixed_s + bytes_it / sm_load_bandwidth_bytes_per_s
                + issue / clock_hz + chain + waited_mma * mma_s          (warpgroups = ceil(warps / 4))
    q         = programs / sms (at least 1; 'ceil': rounded up)       programs on the busiest SM
    round(p)  = steps * t_it * (1 + resident_program_slowdown * (p - 1)) + program_fixed_s   p programs together,
                steps = k_steps / parts (the parts' mean: the last one is shorter where split does not divide)
    sm_s      = loaded_hbm_latency_s + floor(q / resident) * round(resident) + round(r) [* r if r < 1],
                r = q - floor(q / resident) * resident
    latency_s = ceil(programs / (sms * resident)) * per * loaded_hbm_latency_s / (stages - 1)
    hbm_s     = bytes / (hbm peak * hbm efficiency(bytes))
    time      = kernel_fixed_s + max(sm_s, latency_s, hbm_s)
                [+ reduction kernel: launch_overhead_s + its bytes at the HBM rate]
    dependent launch (``dependent_launch``: programmatic dependent launch, the first stages' weights asked for
    before the kernel before has finished): dependent_kernel_fixed_s replaces kernel_fixed_s and the reduction
    kernel's launch_overhead_s, and sm_s has no fill (loaded_hbm_latency_s); fitted on the rows of a sweep with
    dependent launch whose ring holds no more than the share (H100: rms log error 0.099 with the fill dropped, 0.105
    with it kept; H200 0.101 and 0.103)

``sm_s``: programs sharing an SM share its issue slots and its load path; a slowdown of 1 means the SM serves
them one after another, 0 that they overlap completely (the fits give about 0.8). The weight tile is what a step
streams through the SM's load path; the token tile is the same for every program of a token tile and comes from
L2 (it counts in the launch's HBM bytes only) - except in the Gluon kernel, whose load warp brings weight and
token tiles by TMA into the same ring of shared-memory slots, so both take the SM's load path (on the v6 sweeps of
the H100, 1,680 rows: rms log error 0.0799 with the token tile counted, 0.0858 without, and no more bias on the
64-token tiles: mean log error -0.02 to +0.00 against -0.04 to -0.08). The busiest SM runs
its q programs in waves of ``resident`` (the block scheduler starts a program when one finishes): the last, partial
wave of r programs runs at r programs' pace, not at the full waves' throughput. Before the SM's first program
computes anything, its first K step's loads make one loaded HBM round trip; later programs start while others
compute, so that fill is paid once per launch (it decides short kernels: 7B/8B GEMMs at decode run 4-8 K steps
per program). A loop that waits on its warpgroup
MMAs to completion at once (SASS ``WARPGROUP.DEPBAR.LE gsb0, 0x0``: ``waited_mma``) has their latency on its critical
path; MMAs whose wait leaves groups in flight (Triton's pipelined wgmma) overlap the loop's other work, but those
whose A operand is in registers (``register_a_mma``: the fused kernels' expanded weights) start only after their
expansion, and the kernels wait for them at the end of every K step (``KernelConfig.mma_wait_each_step``, the
register hazard fix), so their tensor-core time (``chain``: one warpgroup's MMAs in sequence, the program's
warpgroups sharing the SM's tensor cores) follows the expansion on the program's critical path.
``latency_s``: a program keeps ``stages - 1`` steps in flight, so each step waits at least a loaded HBM round trip
over that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.profiles import HardwareProfile


@dataclass(frozen=True)
class LoopStructure:
    """One compiled fused kernel at one launch configuration (read from the kernel, not fitted).

    block_n: weight rows per program; block_t: tokens per program; block_k: K per loop iteration (the group size);
    split_k: K parts requested (the launch makes every part non-empty); warps, stages: launch options;
    registers_per_thread, shared_bytes_per_program: from the compiled kernel; loop_instructions_per_thread: SASS
    instructions of one main-loop iteration per thread, of which fp32_instructions, int_instructions and
    conversion_instructions issue on those pipes (None: all counted at ``sm.other_issue_cycles``, e.g. when only
    the total is known); weight_bytes_per_weight: bytes streamed from HBM per
    weight (codes + expansion metadata); activation_bytes: bytes per activation element; split_reduction: the
    split-K parts are summed by a second kernel; waited_mma_instructions: warpgroup MMAs per iteration the loop
    waits on to completion at once (0 for a pipelined wgmma), register_a_mma_instructions: pipelined MMAs whose A
    operand is in registers, each of mma_macs_per_instruction (m n k); launched_warps: warps a program holds
    registers and warp slots for, when more than the ``warps`` that run the loop (None: the same; the "v6" kernel's
    load warp, padded to a warpgroup by setmaxnreg: 8 for its 4 MMA warps).
    """

    block_n: int
    block_t: int
    block_k: int
    split_k: int
    warps: int
    stages: int
    registers_per_thread: int
    shared_bytes_per_program: int
    loop_instructions_per_thread: float
    weight_bytes_per_weight: float
    activation_bytes: float = 1.0
    output_bytes: float = 2.0
    split_reduction: bool = True
    fp32_instructions: float | None = None
    int_instructions: float | None = None
    conversion_instructions: float | None = None
    waited_mma_instructions: float = 0.0
    register_a_mma_instructions: float = 0.0
    mma_macs_per_instruction: float = 0.0
    launched_warps: int | None = None
    dependent_launch: bool = False

    @property
    def warp_specialized(self) -> bool:
        """The Gluon kernel: its load warp holds warps beyond those that run the loop."""
        return (self.launched_warps or self.warps) > self.warps

    @property
    def ring_slot_bytes(self) -> float:
        """Shared memory of one pipeline stage of the Gluon kernel: one K step's weight tile (codes and metadata)
        and token tile."""
        return self.block_k * (self.block_n * self.weight_bytes_per_weight + self.block_t * self.activation_bytes)

    def __post_init__(self):
        if not isinstance(self.dependent_launch, bool):
            raise ValueError(f"LoopStructure.dependent_launch={self.dependent_launch!r}: expected a bool")
        for name in ("block_n", "block_t", "block_k", "split_k", "warps", "stages", "registers_per_thread"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LoopStructure.{name}={v!r}: expected a positive integer")
        if self.launched_warps is not None and (isinstance(self.launched_warps, bool)
                                                or not isinstance(self.launched_warps, int)
                                                or self.launched_warps < self.warps):
            raise ValueError(f"LoopStructure.launched_warps={self.launched_warps!r}: expected None or an integer "
                             f">= warps ({self.warps})")
        for name in ("shared_bytes_per_program", "loop_instructions_per_thread", "weight_bytes_per_weight",
                     "activation_bytes", "output_bytes", "waited_mma_instructions", "register_a_mma_instructions",
                     "mma_macs_per_instruction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"LoopStructure.{name}={v!r}: expected a non-negative number")
        by_pipe = 0.0
        for name in ("fp32_instructions", "int_instructions", "conversion_instructions"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"LoopStructure.{name}={v!r}: expected None or a non-negative number")
            by_pipe += v
        if by_pipe > self.loop_instructions_per_thread:
            # the rest is issued at sm.other_issue_cycles: it cannot be negative
            raise ValueError(f"LoopStructure: fp32_instructions + int_instructions + conversion_instructions = "
                             f"{by_pipe:g} exceeds loop_instructions_per_thread={self.loop_instructions_per_thread:g}"
                             " (they are a part of it)")
        if self.stages < 2:
            raise ValueError(f"LoopStructure.stages={self.stages}: a pipelined loop needs at least 2 stages")


@dataclass(frozen=True)
class FusedTiming:
    """Predicted time of one fused-kernel GEMM and its parts (seconds) with the quantities behind them."""

    time_s: float
    sm_s: float
    latency_s: float
    hbm_s: float
    fixed_s: float
    reduction_s: float
    bound: str
    programs: int
    resident_programs_per_sm: int
    iterations_per_program: int
    iteration_s: float
    expansion_share: float
    hbm_bytes: float


def resident_programs(hw: HardwareProfile, s: LoopStructure) -> int:
    """Programs one SM holds at once: the tightest of its warp slots, register file, shared memory and block
    slots (registers are allocated per warp in units of ``register_allocation_unit``)."""
    sm = hw.sm
    unit = sm.register_allocation_unit
    regs_per_warp = math.ceil(s.registers_per_thread * 32 / unit) * unit
    warps = s.launched_warps or s.warps
    by_regs = sm.registers_per_sm // (regs_per_warp * warps)
    by_smem = int(sm.shared_bytes_per_sm // (s.shared_bytes_per_program + sm.shared_bytes_reserved_per_program))
    by_warps = sm.max_warps_per_sm // warps
    p = min(by_regs, by_smem, by_warps, sm.max_programs_per_sm)
    if p < 1:
        raise ValueError(f"kernel structure {s} does not fit one SM of profile {hw.name!r} "
                         f"(registers {by_regs}, shared memory {by_smem}, warps {by_warps} programs)")
    return p


def issue_cycles_per_warp(hw: HardwareProfile, s: LoopStructure) -> float:
    """Scheduler cycles one warp's main-loop iteration takes to issue: its SASS instructions by pipe, each at the
    profile's cycles per warp instruction of that pipe (``sm.*_issue_cycles``)."""
    sm = hw.sm
    classified = 0.0
    cycles = 0.0
    for count, per in ((s.fp32_instructions, sm.fp32_issue_cycles), (s.int_instructions, sm.int_issue_cycles),
                       (s.conversion_instructions, sm.conversion_issue_cycles)):
        if count:
            classified += count
            cycles += count * per
    return cycles + (s.loop_instructions_per_thread - classified) * sm.other_issue_cycles


def loop_costs(hw: HardwareProfile, s: LoopStructure):
    """The profile's loop costs for this kernel: ``gluon_loop`` for the warp-specialized Gluon kernel (a structure
    that launches more warps than run its loop) where the profile has that section, else ``triton_loop``."""
    return hw.gluon_loop if s.warp_specialized and hw.gluon_loop is not None else hw.triton_loop


def iteration_time_s(hw: HardwareProfile, s: LoopStructure, with_issue: bool = True) -> float:
    """SM time of one main-loop iteration of one program (the t_it of the module docstring)."""
    sm, loop = hw.sm, loop_costs(hw, s)
    bytes_it = s.block_n * s.block_k * s.weight_bytes_per_weight  # the token tile comes from L2 (module docstring)
    if s.warp_specialized:  # the Gluon kernel: its load warp brings the token tile too
        bytes_it += s.block_t * s.block_k * s.activation_bytes
    issue_s = 0.0
    if with_issue:
        issue_s = (issue_cycles_per_warp(hw, s) * math.ceil(s.warps / sm.schedulers_per_sm)
                   * loop.cycles_per_instruction / sm.clock_hz)
    tensor_s = s.mma_macs_per_instruction / (sm.tensor_macs_per_cycle * sm.clock_hz)  # one MMA alone on the SM
    mma_s = loop.mma_wait_latency_s + tensor_s
    if with_issue:
        # register-A MMAs, waited for at the end of each step: their tensor time follows the expansion
        warpgroups = math.ceil(s.warps / sm.schedulers_per_sm)
        issue_s += s.register_a_mma_instructions * warpgroups * tensor_s
    return (loop.iteration_fixed_s + bytes_it / loop.sm_load_bandwidth_bytes_per_s + issue_s
            + s.waited_mma_instructions * mma_s)


def split_parts(k: int, s: LoopStructure) -> tuple[int, int]:
    """(iterations per program, non-empty K parts) for the requested split, as the launch computes them."""
    if k % s.block_k:
        raise ValueError(f"k={k} is not a multiple of block_k={s.block_k}")
    k_steps = k // s.block_k
    per = math.ceil(k_steps / s.split_k)
    return per, math.ceil(k_steps / per)


def launch_programs(s: LoopStructure, m: int, n: int, k: int) -> int:
    """Programs of one launch of an m x n x k GEMM: output tiles times non-empty K parts."""
    return math.ceil(n / s.block_n) * math.ceil(m / s.block_t) * split_parts(k, s)[1]


def fused_gemm_timing(hw: HardwareProfile, s: LoopStructure, m: int, n: int, k: int,
                      expansion_instructions_per_thread: float = 0.0) -> FusedTiming:
    """Predicted time of y (m x n) = x (m x k) @ W.T on the fused kernel of structure ``s`` (module docstring).

    expansion_instructions_per_thread: how many of the loop's instructions expand weights (reported as the
    expansion share of the SM time; the time itself uses the loop's whole count).
    """
    for name, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: expected a positive integer")
    if hw.sm is None or hw.triton_loop is None:
        raise ValueError(f"profile {hw.name!r} has no 'sm' and 'triton_loop' sections: the fused-kernel model "
                         "needs them (see hw_profiles/h200-triton-w4a8.yaml)")
    sm, loop = hw.sm, loop_costs(hw, s)
    per, parts = split_parts(k, s)
    steps = (k // s.block_k) / parts  # a program's mean K steps: the last part is shorter where the split is uneven
    programs = launch_programs(s, m, n, k)
    resident = resident_programs(hw, s)
    t_it = iteration_time_s(hw, s)
    if loop.program_spread == "ceil":
        q = math.ceil(programs / sm.count)
    else:
        q = max(1.0, programs / sm.count)

    def round_s(together: float) -> float:  # one wave of `together` programs on one SM
        return steps * t_it * (1.0 + loop.resident_program_slowdown * (max(together, 1.0) - 1.0)) + loop.program_fixed_s
    full = math.floor(q / resident + 1e-9)  # full waves of the busiest SM
    rest = q - full * resident  # programs of its last, partial wave ('even' spread: may be a fraction)
    # the fill, then the waves; a dependent launch asks for its first stages' weights while the kernel before
    # still runs, so its fill overlaps that kernel
    fill_s = 0.0 if s.dependent_launch else loop.loaded_hbm_latency_s
    sm_s = fill_s + (full * round_s(resident) if full else 0.0)
    if rest > 1e-9:
        sm_s += round_s(rest) * min(rest, 1.0)
    latency_s = math.ceil(programs / (sm.count * resident)) * per * loop.loaded_hbm_latency_s / (s.stages - 1)
    weights = float(n) * k
    main_bytes = weights * s.weight_bytes_per_weight + float(m) * k * s.activation_bytes
    out_bytes = float(m) * n * (4.0 * parts if parts > 1 else s.output_bytes)
    hbm_bytes = main_bytes + out_bytes
    mem = hw.memory
    hbm_s = hbm_bytes / (mem.hbm_bandwidth_bytes_per_s * mem.hbm_efficiency_by_transfer_bytes(hbm_bytes))
    fixed_s = loop.dependent_kernel_fixed_s if s.dependent_launch else loop.kernel_fixed_s
    main_s = max(sm_s, latency_s, hbm_s)
    reduction_s = 0.0
    if parts > 1 and s.split_reduction:
        red_bytes = float(m) * n * (4.0 * parts + s.output_bytes)
        launch_s = loop.dependent_kernel_fixed_s if s.dependent_launch else hw.kernel.launch_overhead_s
        reduction_s = launch_s + red_bytes / (
            mem.hbm_bandwidth_bytes_per_s * mem.hbm_efficiency_by_transfer_bytes(red_bytes))
    bound = max((("sm", sm_s), ("latency", latency_s), ("hbm", hbm_s)), key=lambda kv: kv[1])[0]
    share = 0.0
    if s.loop_instructions_per_thread > 0 and expansion_instructions_per_thread > 0:
        issue_part = t_it - iteration_time_s(hw, s, with_issue=False)
        share = issue_part * min(1.0, expansion_instructions_per_thread / s.loop_instructions_per_thread) / t_it
    return FusedTiming(time_s=fixed_s + main_s + reduction_s, sm_s=sm_s, latency_s=latency_s, hbm_s=hbm_s,
                       fixed_s=fixed_s, reduction_s=reduction_s, bound=bound, programs=programs,
                       resident_programs_per_sm=resident, iterations_per_program=per, iteration_s=t_it,
                       expansion_share=share, hbm_bytes=hbm_bytes)


def ring_stages_for_share(programs: int, sms: int, stages: int, max_stages: int, resident_at,
                          deepest: bool = False) -> int:
    """Pipeline stages of a launch of ``programs`` programs on ``sms`` SMs under the 'share' ring depth: when
    ``stages`` would let an SM hold more than its share, ceil(programs / sms), the shallowest ring from ``stages``
    up to ``max_stages`` at which it holds no more than that (``resident_at(stages)``: programs an SM holds at
    that depth; where none does, the deepest that still holds the share); else ``stages``. ``deepest``: the
    deepest ring that still holds the share instead.

    Why: with programmatic dependent launch a kernel's programs are placed while the kernel before still runs,
    on whichever SMs have room first; with room for more than its share an SM can take more, and an under-filled
    GEMM then runs at the pace of its most crowded SMs. On an H100 the Llama-2-70B layer at M <= 16 ran 5-10 %
    slower with dependent launch at the tiles' own depths than without it, and 2-5 % faster with the shallowest
    ring that caps the share (the deepest gained less: it leaves no room for the next kernel's early programs;
    results/gpu/README.md, session 8)."""
    needed = math.ceil(programs / sms)
    if needed >= resident_at(stages):
        return stages
    fits = [st for st in range(stages, max(stages, max_stages) + 1) if resident_at(st) >= needed]
    if deepest:
        return fits[-1]
    return next((st for st in fits if resident_at(st) == needed), fits[-1])


def wave_split_cost(tiles: int, k_steps: int, split: int, resident: int, sms: int, *,
                    programs_in_flight: float, fill_steps: float, program_steps: float) -> tuple[float, int]:
    """(cost in K steps, parts) of cutting K into ``split`` parts under the 'waves' launch heuristic: the busiest
    SM runs ceil(programs / sms) programs in waves of ``resident``; a wave costs its programs' K steps, at a rate
    slowed by programs_in_flight / (programs in the wave) when it holds fewer, plus ``fill_steps``; each program
    adds ``program_steps``. The profile's fused_kernel.wave_* values give the constants (and dpq's v5 launch
    heuristic calls this with its own)."""
    per = math.ceil(k_steps / split)
    parts = math.ceil(k_steps / per)
    per_sm = math.ceil(tiles * parts / sms)
    waves = math.ceil(per_sm / resident)
    cost = 0.0
    for w in range(waves):
        in_wave = min(resident, per_sm - w * resident)
        cost += in_wave * per * max(1.0, programs_in_flight / in_wave)
    return cost + fill_steps * waves + program_steps * per_sm, parts


def prefill_split(tiles: int, k_steps: int, sms: int, programs_per_sm: int, max_split: int) -> int:
    """Split-K parts of the launch heuristic above M = 64 (128 x 128 tiles): the most parts, up to ``max_split``
    and at least 4 K steps each, that keep the programs within ``programs_per_sm`` x ``sms`` (without a split,
    fewer output tiles than that leave SMs idle or short of loads in flight; more parts only add partial sums)."""
    split = 1
    for parts in range(2, max_split + 1):
        if tiles * parts <= programs_per_sm * sms and k_steps // parts >= 4:
            split = parts
    return split


def default_structure(hw: HardwareProfile, m: int, n: int, k: int) -> LoopStructure:
    """The structure the profile's fused kernel launches for an m x n x k GEMM: the card's tuned configuration of
    the GEMM if ``fused_kernel.tuned_configs`` has one (its tile's structure from ``tile_configs`` or
    ``tuned_tile_structures``), else the tile row of ``fused_kernel.tile_configs`` for M and the split-K parts of
    the kernel's launch heuristic (``fused_kernel.split_policy``)."""
    fk = hw.fused_kernel
    if fk is None or hw.sm is None:
        raise ValueError(f"profile {hw.name!r} has no 'fused_kernel' section (see hw_profiles/h200-triton-w4a8.yaml)")
    tuned = fk.tuned_row(n, k, m)
    if tuned is not None:  # the profile's loader checked that its tile has a structure row
        row = fk.tile_structure(tuned[4], tuned[5], tuned[7], tuned[8])
    else:
        row = fk.tile_row(m)
    _, block_n, block_t, warps, stages, regs, smem, instr, fp32, integer, conversion, register_a, macs, launched = row
    tiles = math.ceil(n / block_n) * math.ceil(m / block_t)
    k_steps = math.ceil(k / fk.block_k)
    split = 1
    if tuned is not None:
        split = tuned[6]
    elif m > 64 and fk.split_policy != "programs_per_sm":
        split = prefill_split(tiles, k_steps, hw.sm.count, fk.prefill_programs_per_sm, fk.prefill_max_split)
    elif fk.split_policy == "programs_per_sm":
        target = fk.programs_per_sm_target * hw.sm.count
        if tiles < target:
            split = max(1, min(math.ceil(target / tiles), k_steps // fk.min_iterations_per_part or 1))
    elif fk.split_policy == "waves":
        probe = LoopStructure(block_n=int(block_n), block_t=int(block_t), block_k=fk.block_k, split_k=1,
                              warps=int(warps), stages=int(stages), registers_per_thread=int(regs),
                              shared_bytes_per_program=int(smem), loop_instructions_per_thread=float(instr),
                              weight_bytes_per_weight=fk.weight_bytes_per_weight, split_reduction=fk.split_reduction,
                              launched_warps=int(launched))
        resident = resident_programs(hw, probe)
        split = min(wave_split_cost(tiles, k_steps, parts, resident, hw.sm.count,
                                    programs_in_flight=fk.wave_programs_in_flight, fill_steps=fk.wave_fill_steps,
                                    program_steps=fk.wave_program_steps)
                    for parts in range(1, max(1, k_steps // fk.wave_min_steps_per_part) + 1))[1]  # ties: fewer
    else:  # busiest_sm
        best = None
        for parts in range(1, max(1, k_steps // 2) + 1):
            per = math.ceil(k_steps / parts)
            programs = tiles * math.ceil(k_steps / per)
            cost = ((tiles * k_steps + programs * fk.program_overhead_steps) / hw.sm.count + per
                    + fk.program_overhead_steps)
            if best is None or cost < best[0] - 1e-9:
                best = (cost, parts)
        split = best[1]
    in_kernel_reduction = tuned is not None and bool(tuned[9])
    s = LoopStructure(block_n=int(block_n), block_t=int(block_t), block_k=fk.block_k, split_k=int(split),
                      warps=int(warps), stages=int(stages), registers_per_thread=int(regs),
                      shared_bytes_per_program=int(smem), loop_instructions_per_thread=float(instr),
                      weight_bytes_per_weight=fk.weight_bytes_per_weight,
                      split_reduction=fk.split_reduction and not in_kernel_reduction,
                      fp32_instructions=float(fp32), int_instructions=float(integer),
                      conversion_instructions=float(conversion), register_a_mma_instructions=float(register_a),
                      mma_macs_per_instruction=float(macs), launched_warps=int(launched))
    return decode_launch_structure(hw, s, m, n, k)


def decode_launch_structure(hw: HardwareProfile, s: LoopStructure, m: int, n: int, k: int) -> LoopStructure:
    """``s`` as the profile's launch runs it at decode: for the warp-specialized kernel at M <= 64, with the
    profile's dependent launch and ring depth (``fused_kernel.dependent_launch``, ``ring_depth``); other
    structures unchanged. dpq's launch applies the same (dpq.kernels.w4a8_triton.launch_config_for)."""
    fk = hw.fused_kernel
    if m > 64 or not s.warp_specialized:
        return s
    if fk.ring_depth == "share":
        k_padded = math.ceil(k / s.block_k) * s.block_k
        per, _ = split_parts(k_padded, s)
        programs = launch_programs(s, m, n, k_padded)

        def at(stages: int) -> LoopStructure:
            smem = s.shared_bytes_per_program + round((stages - s.stages) * s.ring_slot_bytes)
            return replace(s, stages=stages, shared_bytes_per_program=smem)

        stages = ring_stages_for_share(programs, hw.sm.count, s.stages, min(fk.max_ring_stages, per),
                                       lambda st: resident_programs(hw, at(st)))
        s = at(stages)
    return replace(s, dependent_launch=fk.dependent_launch)


PLAN_CHUNKS = 32


def fused_gemm_plan(hw: HardwareProfile, m: int, n: int, k: int, name: str = "gemm",
                    structure: LoopStructure | None = None):
    """The fused kernel as a plan for the simpy engine (sim.perf.engine): its fixed costs (launch, split-K
    reduction kernel), then ``PLAN_CHUNKS`` steps whose loads take the HBM-bound time in total and whose SM work
    (``max(sm_s, latency_s)``, the expansion's share charged as dequantization) runs on the matrix resource, with
    ``stages`` buffers in flight; the engine's time is then ``fused_gemm_timing``'s up to one chunk of fill."""
    from sim.perf.kernels import Chunk, KernelPlan

    fk = hw.fused_kernel
    if fk is None:
        raise ValueError(f"profile {hw.name!r} has no 'fused_kernel' section (see hw_profiles/h200-triton-w4a8.yaml)")
    k_eff = math.ceil(k / fk.block_k) * fk.block_k  # the packed format pads K to whole groups
    s = structure or default_structure(hw, m, n, k_eff)
    expansion = fk.expansion_instructions_per_weight * s.block_n * s.block_k / (32 * s.warps)
    t = fused_gemm_timing(hw, s, m, n, k_eff, expansion_instructions_per_thread=expansion)
    work_s = max(t.sm_s, t.latency_s) / PLAN_CHUNKS
    rate = t.hbm_bytes / t.hbm_s
    chunk = Chunk(load_bytes=t.hbm_bytes / PLAN_CHUNKS, load_rate_bytes_per_s=rate, dequant_hidden_s=0.0,
                  dequant_serial_s=work_s * t.expansion_share, compute_s=work_s * (1.0 - t.expansion_share),
                  compute_resource="matrix", write_bytes=0.0, write_rate_bytes_per_s=rate)
    info = {"kernel": "fused", "tile_m": s.block_t, "tile_n": s.block_n, "split_k": s.split_k,
            "programs": t.programs, "resident_programs_per_sm": t.resident_programs_per_sm,
            "iterations_per_program": t.iterations_per_program, "fused_bound": t.bound,
            "hbm_bytes": t.hbm_bytes, "flops": 2.0 * m * n * k, "closed_form_s": t.time_s}
    return KernelPlan(name, t.fixed_s + t.reduction_s, (chunk,) * PLAN_CHUNKS, buffers=s.stages, info=info)
