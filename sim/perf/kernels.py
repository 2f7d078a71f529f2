"""Kernel plans: how one operation becomes a stream of tile chunks for the event engine.

A plan is pure data computed from the hardware profile: the kernel's fixed cost, and an ordered list of chunks;
each chunk is loaded from HBM, optionally expanded (INT4 dequantization) on the vector units, processed on the
matrix engine (or the vector units), and optionally written back. The engine (sim.perf.engine) runs the chunks
through simpy resources with a bounded number of buffers in flight, so overlap, pipeline fill/drain, wave
quantization and contention come out of the simulation.

GEMM tiling follows a GPU/MME library: output tiles (tile_m x tile_n, each with a relative efficiency) are spread
over ``units x concurrent_tiles_per_unit`` tile slots in waves, and the fastest tiling is picked, as a library
heuristic would. With ``work_distribution: stream_k`` the last, partial wave is shared by all slots (persistent
kernels); with ``waves`` it leaves slots idle. When there are fewer tiles than slots, K is split (split-K) and a
reduction adds the partial sums (in on-chip memory when they fit). All slots of a wave work in lockstep, so a
wave is simulated as one aggregate over its active slots; identical full waves in the middle of a long GEMM are
merged (their chunks grow; the pipeline's fill and drain stay exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.profiles import HardwareProfile

MAX_MIDDLE_WAVE_GROUPS = 4
STREAM_CHUNKS = 4


@dataclass(frozen=True)
class Chunk:
    """One pipeline step of a kernel (aggregated over the units active in it).

    load_bytes arrive from HBM at load_rate_bytes_per_s; dequant_hidden_s is vector-unit work in a pipeline stage
    of its own that overlaps matrix work (INT4 expansion, or softmax for attention: ``side_category`` says which);
    dequant_serial_s is expansion that cannot overlap and holds
    the compute resource; compute_s is the work on compute_resource ("matrix", "vector" or "dequant" for a
    separate expansion pass); write_bytes go back to HBM after the step.
    """

    load_bytes: float
    load_rate_bytes_per_s: float
    dequant_hidden_s: float
    dequant_serial_s: float
    compute_s: float
    compute_resource: str
    write_bytes: float
    write_rate_bytes_per_s: float
    side_category: str = "dequant"


@dataclass(frozen=True)
class KernelPlan:
    """What the engine runs for one kernel. ``info`` carries the tiling choice etc. for reports."""

    name: str
    fixed_s: float
    chunks: tuple[Chunk, ...]
    link_s: float = 0.0
    buffers: int = 2
    info: dict = field(default_factory=dict, compare=False)


def _hbm_rate(hw: HardwareProfile, total_bytes: float) -> float:
    mem = hw.memory
    return mem.hbm_bandwidth_bytes_per_s * mem.hbm_efficiency_by_transfer_bytes(max(total_bytes, 1.0))


def _vector_rate(hw: HardwareProfile) -> float:
    return hw.vector_engine.peak_flops_per_s * hw.vector_engine.efficiency


def _split_k(hw: HardwareProfile, tiles_mn: int, k: int) -> int:
    me = hw.matrix_engine
    slots = me.units * me.concurrent_tiles_per_unit
    if tiles_mn >= slots:
        return 1
    return max(1, min(me.split_k_max, slots // tiles_mn, k // me.split_k_min_k))


def _split_k_kernel(hw: HardwareProfile, m: int, n: int, k: int, dtype: str) -> bool:
    """Whether the GEMM library runs this GEMM as split-K with a separate reduction kernel (a second kernel, so a
    second fixed cost). cuBLAS on Hopper does this for small-M GEMMs with a long K loop whose N tiles are too few to
    pull the memory's bandwidth: ceil(N / tile_n) units at ``unit_load_bandwidth_bytes_per_s`` each below the best
    achievable HBM rate. So a card with faster memory splits more shapes (the H200 splits a 5120-row FP8 GEMV that
    the H100 does not). Profile ``matrix_engine.split_k_kernel_*``: the M limit, K/N limit and tile width by dtype
    (FP8 kernels take 64-wide, 16-row tiles; BF16 ones split with 128-wide tiles)."""
    me, mem = hw.matrix_engine, hw.memory
    if m > me.split_k_kernel_max_m[dtype] or k < me.split_k_kernel_min_k_over_n[dtype] * n:
        return False
    best_hbm_bytes_per_s = mem.hbm_bandwidth_bytes_per_s * max(y for _, y in mem.hbm_efficiency_by_transfer_bytes.points)
    n_tiles = math.ceil(n / me.split_k_kernel_tile_n[dtype])
    return n_tiles * me.unit_load_bandwidth_bytes_per_s < best_hbm_bytes_per_s


def _units_load_rate(hw: HardwareProfile, active_tiles: int) -> float:
    """Load rate of the units that hold ``active_tiles`` tiles: the scheduler spreads tiles one per unit first,
    so a kernel of few tiles pulls through as many units as it has tiles (each unit at its full rate)."""
    me = hw.matrix_engine
    return min(active_tiles, me.units) * me.unit_load_bandwidth_bytes_per_s


def _unit_share(hw: HardwareProfile, active_tiles: float) -> float:
    """Fraction of one unit's matrix rate each of ``active_tiles`` tiles gets: tiles are spread one per unit
    first, so up to ``units`` tiles run alone on their unit; beyond that they share it (occupancy)."""
    me = hw.matrix_engine
    return 1.0 / min(me.concurrent_tiles_per_unit, max(1, math.ceil(active_tiles / me.units)))


def _wave_groups(waves: int) -> list[int]:
    """Waves per simulated group: the first and last alone, the middle merged into a few groups."""
    if waves <= 2 + MAX_MIDDLE_WAVE_GROUPS:
        return [1] * waves
    middle = waves - 2
    base, extra = divmod(middle, MAX_MIDDLE_WAVE_GROUPS)
    return [1] + [base + (1 if i < extra else 0) for i in range(MAX_MIDDLE_WAVE_GROUPS)] + [1]


@dataclass(frozen=True)
class GemmShape:
    """y (m x n) = x (m x k) @ W.T (W: n x k). Bytes per element of each operand as stored in HBM."""

    m: int
    n: int
    k: int
    matrix_dtype: str
    activation_bytes: float
    weight_bytes: float
    output_bytes: float = 2.0
    fused_dequant: bool = False


def _tile_estimate(hw: HardwareProfile, g: GemmShape, tm: int, tn: int, tile_eff: float) -> tuple[float, dict]:
    """Closed-form time of one tiling (used only to pick the tile, as a library heuristic would)."""
    me = hw.matrix_engine
    units = me.units * me.concurrent_tiles_per_unit
    mt, nt = math.ceil(g.m / tm), math.ceil(g.n / tn)
    split = _split_k(hw, mt * nt, g.k)
    tiles = mt * nt * split
    waves = math.ceil(tiles / units)
    if me.work_distribution == "stream_k":
        waves = tiles / units if tiles > units else 1
    kk = g.k / split
    flops = 2.0 * g.m * g.n * g.k
    unit_rate = (me.peak_flops_per_s[g.matrix_dtype] / me.units * me.efficiency_by_flops[g.matrix_dtype](flops)
                 * tile_eff * _unit_share(hw, min(units, tiles)))
    tile_compute_s = 2.0 * tm * tn * kk / unit_rate
    dequant_s = 0.0
    if g.fused_dequant:
        per_unit_vec = _vector_rate(hw) / units
        dequant_s = tn * kk * hw.dequant.ops_per_weight[g.matrix_dtype] / per_unit_vec
        if not hw.dequant.expand_per_row_tile:
            dequant_s /= mt  # each weight tile expanded once and shared by the mt row tiles
    tile_s = tile_compute_s + dequant_s * (1.0 - hw.dequant.fused_overlap_fraction)
    tile_s = max(tile_s, dequant_s)
    total_bytes = g.m * g.k * g.activation_bytes + g.n * g.k * g.weight_bytes + g.m * g.n * g.output_bytes
    active = min(units, tiles)
    rate = min(_hbm_rate(hw, total_bytes), _units_load_rate(hw, active))
    est = max(waves * tile_s, total_bytes / rate)
    if split > 1:
        est += hw.kernel.split_k_reduction_overhead_s
    info = {"tile_m": tm, "tile_n": tn, "tile_efficiency": tile_eff, "split_k": split, "tiles": tiles,
            "waves": waves}
    return est, info


def gemm_plan(hw: HardwareProfile, g: GemmShape, name: str = "gemm") -> KernelPlan:
    """Plan of one GEMM on one device (tiling picked by the fastest closed-form estimate)."""
    me = hw.matrix_engine
    best = min((_tile_estimate(hw, g, tm, tn, eff) for tm, tn, eff in me.tile_shapes), key=lambda e: e[0])
    info = dict(best[1])
    tm, tn, split, tiles = info["tile_m"], info["tile_n"], info["split_k"], info["tiles"]
    slots_per_unit = me.concurrent_tiles_per_unit
    units = me.units * slots_per_unit
    flops = 2.0 * g.m * g.n * g.k
    unit_rate = (me.peak_flops_per_s[g.matrix_dtype] / me.units * me.efficiency_by_flops[g.matrix_dtype](flops)
                 * info["tile_efficiency"])
    kk = g.k / split
    kc = max(1, min(me.k_chunks_per_tile, math.ceil(kk / 64)))
    in_bytes = g.m * g.k * g.activation_bytes + g.n * g.k * g.weight_bytes
    partial_bytes = g.m * g.n * 4.0 * split if split > 1 else 0.0
    if partial_bytes <= hw.memory.on_chip_bytes:
        partial_bytes = 0.0  # split-K partial sums small enough to be reduced in on-chip memory (L2 / SRAM)
    out_bytes = g.m * g.n * g.output_bytes if not partial_bytes else partial_bytes
    total_bytes = in_bytes + out_bytes + (partial_bytes + g.m * g.n * g.output_bytes if partial_bytes else 0.0)
    hbm_rate = _hbm_rate(hw, total_bytes)
    per_unit_vec = _vector_rate(hw) / units
    overlap = hw.dequant.fused_overlap_fraction
    row_tiles_sharing = 1 if hw.dequant.expand_per_row_tile else math.ceil(g.m / tm)

    chunks = []
    remaining = tiles
    stream_k = me.work_distribution == "stream_k" and tiles > units
    for group in _wave_groups(math.ceil(tiles / units)):
        active = min(units, remaining)
        remaining -= active * group
        if group > 1:
            active = units
        share = active * group / tiles
        if stream_k and active < units:
            # the last partial wave's K loops are shared by all units: same work, all units busy
            group = active / units
            active = units
        rate = min(hbm_rate, _units_load_rate(hw, active))
        compute_s = group * 2.0 * tm * tn * kk / kc / (unit_rate * _unit_share(hw, active))
        dequant_s = (group * tn * (kk / kc) * hw.dequant.ops_per_weight[g.matrix_dtype] / per_unit_vec
                     / row_tiles_sharing if g.fused_dequant else 0.0)
        for c in range(kc):
            chunks.append(Chunk(
                load_bytes=in_bytes * share / kc, load_rate_bytes_per_s=rate,
                dequant_hidden_s=dequant_s * overlap, dequant_serial_s=dequant_s * (1.0 - overlap),
                compute_s=compute_s, compute_resource="matrix",
                write_bytes=out_bytes * share if c == kc - 1 else 0.0, write_rate_bytes_per_s=rate))
    fixed = hw.kernel.launch_overhead_s
    library_split = _split_k_kernel(hw, g.m, g.n, g.k, g.matrix_dtype)
    if library_split:
        # the library's reduction runs as a kernel of its own after the GEMM kernel: one more launch and the
        # reduction's fixed cost (cuBLAS: nvjet ..._splitK_... then cublasLt::splitKreduce_kernel)
        fixed += hw.kernel.launch_overhead_s + hw.kernel.split_k_reduction_overhead_s
    if split > 1:
        # reduction kernel: its own fixed cost, then read the fp32 partials and write the output
        fixed += hw.kernel.split_k_reduction_overhead_s
        if partial_bytes:
            chunks.append(Chunk(partial_bytes, hbm_rate, 0.0, 0.0, 0.0, "vector", g.m * g.n * g.output_bytes,
                                hbm_rate))
    info.update({"hbm_bytes": total_bytes, "flops": flops, "k_chunks": kc, "split_k_kernel": library_split})
    return KernelPlan(name, fixed, tuple(chunks), buffers=me.pipeline_buffers, info=info)


def stream_plan(hw: HardwareProfile, name: str, read_bytes: float, write_bytes: float, vector_flops: float,
                matrix_flops: float = 0.0, matrix_dtype: str = "bf16", dequant_weights: float = 0.0) -> KernelPlan:
    """Plan of a streaming kernel (elementwise ops, attention, a separate dequantization pass).

    dequant_weights: INT4 weights this kernel expands to ``matrix_dtype`` (a separate dequantization pass).
    """
    total = read_bytes + write_bytes
    rate = _hbm_rate(hw, total)
    vec_s = vector_flops / _vector_rate(hw)
    if dequant_weights:
        vec_s += dequant_weights * hw.dequant.ops_per_weight[matrix_dtype] / _vector_rate(hw)
    me = hw.matrix_engine
    mat_s = 0.0
    if matrix_flops:
        mat_s = matrix_flops / (me.peak_flops_per_s[matrix_dtype] * me.efficiency_by_flops[matrix_dtype](matrix_flops))
    chunks = []
    for _ in range(STREAM_CHUNKS):
        if mat_s:
            # attention: softmax/rescale on the vector units overlaps the matrix work of the next block
            chunks.append(Chunk(read_bytes / STREAM_CHUNKS, rate, vec_s / STREAM_CHUNKS, 0.0,
                                mat_s / STREAM_CHUNKS, "matrix", write_bytes / STREAM_CHUNKS, rate,
                                side_category="vector"))
        else:
            chunks.append(Chunk(read_bytes / STREAM_CHUNKS, rate, 0.0, 0.0, vec_s / STREAM_CHUNKS,
                                "dequant" if dequant_weights else "vector", write_bytes / STREAM_CHUNKS, rate))
    return KernelPlan(name, hw.kernel.launch_overhead_s, tuple(chunks), buffers=2,
                      info={"hbm_bytes": total, "flops": vector_flops + matrix_flops})


def allreduce_plan(hw: HardwareProfile, name: str, message_bytes: float, tp: int) -> KernelPlan:
    """Ring-style all-reduce of message_bytes across tp devices: 2 (tp - 1) / tp of the message on each link."""
    ic = hw.interconnect
    wire = 2.0 * (tp - 1) / tp * message_bytes
    link_s = ic.link_latency_s + wire / (ic.link_bandwidth_bytes_per_s * ic.allreduce_efficiency)
    return KernelPlan(name, hw.kernel.launch_overhead_s, (), link_s=link_s,
                      info={"link_bytes": wire, "hbm_bytes": 2.0 * message_bytes})
