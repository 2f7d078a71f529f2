"""Hardware profiles: YAML files in hw_profiles/ -> validated, frozen ``HardwareProfile`` objects.

A profile file holds the performance sections (memory, matrix engine, vector engine, kernel costs, dequantization,
interconnect, host), a ``sources`` mapping that gives the provenance of every number (dotted key -> text), and a
``numerics`` section that ``sim.datapath.parse_numerics`` validates. ``extends: <name or path>`` deep-merges the
file over its parent at the raw-mapping level, before validation, so that every section (numerics too) inherits.
Overrides (``--set memory.hbm_bandwidth_bytes_per_s=3.0e12`` on the CLI) are applied after the merge, also before
validation; an overridden number's source becomes ``override``.

Units: SI everywhere (bytes, seconds, bytes/s, FLOP/s); the unit is part of every key. PyYAML reads ``3.35e12``
(no dot, no exponent sign) as a *string*; files must write ``3.35e+12`` and validation rejects a string where a
number belongs, naming file, key, value and what is expected.

Public API::

    load_profile(name_or_path, overrides=None) -> HardwareProfile
    list_profiles() -> list[str]
    parse_overrides(["memory.hbm_bandwidth_bytes_per_s=3.0e12", ...]) -> dict
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from sim.errors import ConfigError, describe_value

PROFILE_DIR = Path(__file__).resolve().parent.parent / "hw_profiles"

MATRIX_DTYPES = ("bf16", "fp8")
DEQUANT_PLACEMENTS = ("fused", "vector_pass")


def _spec(help_text: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          choices: tuple[str, ...] | None = None):
    """Field metadata: help text and the allowed range/choices (read by the validator and the README)."""
    return field(metadata={"help": help_text, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices})


@dataclass(frozen=True)
class Curve:
    """Piecewise-linear curve y(x), interpolated in log10(x), clamped at both ends.

    points: ((x0, y0), (x1, y1), ...) with x strictly increasing and positive.
    """

    points: tuple[tuple[float, float], ...]

    def __call__(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        lx = math.log10(x)
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x <= x1:
                l0, l1 = math.log10(x0), math.log10(x1)
                return y0 + (y1 - y0) * (lx - l0) / (l1 - l0)
        return pts[-1][1]  # unreachable

    def to_list(self) -> list[list[float]]:
        return [[x, y] for x, y in self.points]


@dataclass(frozen=True)
class MemorySpec:
    capacity_bytes: float = _spec("device memory (HBM) capacity", lo=0, lo_open=True)
    reserved_bytes: float = _spec("memory the runtime, framework and allocator keep for themselves", lo=0)
    hbm_bandwidth_bytes_per_s: float = _spec("peak HBM bandwidth (datasheet), read + write", lo=0, lo_open=True)
    hbm_efficiency_by_transfer_bytes: Curve = _spec(
        "achievable fraction of peak HBM bandwidth for a kernel moving x bytes in total (size-dependent)",
        lo=0, hi=1)
    on_chip_bytes: float = _spec("on-chip memory a kernel can keep data in (L2 / SRAM)", lo=0)


@dataclass(frozen=True)
class MatrixEngineSpec:
    units: int = _spec("independent matrix-engine units that work on output tiles in parallel (SMs, MMEs)", lo=1)
    peak_flops_per_s: Mapping[str, float] = _spec("dense peak matrix FLOP/s by operand dtype (bf16, fp8)",
                                                  lo=0, lo_open=True)
    efficiency_by_flops: Mapping[str, Curve] = _spec(
        "achievable fraction of peak matrix FLOP/s (per active unit) for a GEMM of x FLOP, by dtype", lo=0, hi=1)
    tile_shapes: tuple[tuple[int, int, float], ...] = _spec(
        "output tiles [tile_m, tile_n, relative_efficiency] the GEMM library may pick (rows of activations, "
        "columns of weights, matrix rate of that tile relative to the best); the model picks the fastest, as a "
        "library heuristic does", lo=1)
    work_distribution: str = _spec("how tiles map to units: 'waves' (each tile on one unit; the last wave may "
                                   "leave units idle) or 'stream_k' (persistent kernels share the K loop of the "
                                   "last tiles so every unit stays busy)", choices=("waves", "stream_k"))
    concurrent_tiles_per_unit: int = _spec("tiles resident on one unit at a time, sharing its rate (occupancy); "
                                           "more makes waves finer", lo=1)
    unit_load_bandwidth_bytes_per_s: float = _spec(
        "most bytes/s one unit can pull from HBM (limits small GEMMs that occupy few units)", lo=0, lo_open=True)
    pipeline_buffers: int = _spec("tile buffers in flight per unit (2 = double buffering)", lo=1)
    k_chunks_per_tile: int = _spec("pipeline stages a tile's K loop is split into in the event model", lo=1)
    split_k_max: int = _spec("largest split-K factor the library uses to fill idle units", lo=1)
    split_k_min_k: int = _spec("smallest K slice per split", lo=1)
    split_k_kernel_max_m: Mapping[str, float] = _spec(
        "largest M (activation rows) for which the GEMM library runs split-K as a kernel of its own plus a separate "
        "reduction kernel (one more kernel fixed cost), by dtype; 0 = never", lo=0)
    split_k_kernel_tile_n: Mapping[str, float] = _spec(
        "N width of the library's small-M tiles, by dtype: it runs that separate-reduction split-K only when the "
        "ceil(N / tile_n) tiles, each on one unit pulling unit_load_bandwidth_bytes_per_s, cannot reach the "
        "achievable HBM bandwidth", lo=1)
    split_k_kernel_min_k_over_n: Mapping[str, float] = _spec(
        "the library runs that separate-reduction split-K only when K >= this x N (long K loops), by dtype", lo=0)
    sustained_rate_fraction: float = _spec(
        "fraction of the matrix rate of efficiency_by_flops that a serving run sustains step after step (applied by "
        "simulate, not by predict_gemm): clocks drop under the board power limit in long compute-bound runs, and "
        "serving engines' GEMM tactics differ from a microbenchmark's; 1 = as measured in short GEMM bursts",
        lo=0, hi=1, lo_open=True)


@dataclass(frozen=True)
class VectorEngineSpec:
    peak_flops_per_s: float = _spec("peak vector (non-matrix) BF16 FLOP/s of the whole chip", lo=0, lo_open=True)
    efficiency: float = _spec("achievable fraction of the vector peak in elementwise/dequant kernels", lo=0, hi=1,
                              lo_open=True)


@dataclass(frozen=True)
class KernelSpec:
    launch_overhead_s: float = _spec("fixed cost of one kernel inside a captured graph / compiled recipe "
                                     "(launch, prologue, epilogue, tail)", lo=0)
    split_k_reduction_overhead_s: float = _spec("fixed cost of the extra reduction kernel a split-K GEMM runs",
                                                lo=0)


@dataclass(frozen=True)
class DequantSpec:
    placement: str = _spec("where INT4 weights are expanded: 'fused' (in the GEMM main loop, per tile, on the "
                           "vector units next to the matrix engine) or 'vector_pass' (a separate vector kernel "
                           "that writes expanded weights to HBM, re-read by the GEMM)", choices=DEQUANT_PLACEMENTS)
    ops_per_weight: Mapping[str, float] = _spec(
        "vector operations to expand one INT4 weight (unpack, zero, scale, convert) by target dtype (bf16 for "
        "W4A16, fp8 for W4A8), in units of the vector peak's FLOP", lo=0)
    expand_per_row_tile: bool = _spec(
        "fused placement: true if every output row tile re-expands its weight tile (expansion in registers inside "
        "the GEMM main loop, as on Hopper: cost grows with the rows M); false if each weight is expanded once per "
        "GEMM and kept on chip for all rows (staged in SRAM, as a Gaudi graph can)")
    fused_overlap_fraction: float = _spec("fraction of fused dequant time hidden under matrix work (0: serial with "
                                          "it, 1: fully overlapped on separate units)", lo=0, hi=1)


@dataclass(frozen=True)
class InterconnectSpec:
    link_bandwidth_bytes_per_s: float = _spec("scale-up bandwidth per device per direction", lo=0, lo_open=True)
    link_latency_s: float = _spec("latency of one collective step between devices", lo=0)
    allreduce_efficiency: float = _spec("achievable fraction of link bandwidth in an all-reduce", lo=0, hi=1,
                                        lo_open=True)


@dataclass(frozen=True)
class HostSpec:
    step_overhead_s: float = _spec("host/scheduler time per forward step not hidden behind device work", lo=0)


@dataclass(frozen=True)
class SmSpec:
    count: int = _spec("streaming multiprocessors (SMs) a kernel's programs spread over", lo=1)
    registers_per_sm: int = _spec("32-bit registers in one SM's register file", lo=1)
    register_allocation_unit: int = _spec("registers are granted to a warp in multiples of this many", lo=1)
    shared_bytes_per_sm: float = _spec("shared memory one SM can give its resident programs (bytes)", lo=0,
                                       lo_open=True)
    shared_bytes_reserved_per_program: float = _spec("shared memory the runtime keeps per resident program "
                                                     "(bytes)", lo=0)
    max_warps_per_sm: int = _spec("most warps resident on one SM", lo=1)
    max_programs_per_sm: int = _spec("most programs (thread blocks) resident on one SM", lo=1)
    schedulers_per_sm: int = _spec("warp schedulers per SM, each issuing at most one warp instruction per cycle",
                                   lo=1)
    clock_hz: float = _spec("SM clock under load (cycles per second)", lo=0, lo_open=True)
    fp32_issue_cycles: float = _spec("cycles a scheduler spends per warp instruction on the FMA pipe (FADD, FMUL, "
                                     "FFMA and the IMAD/VIADD forms ptxas puts there)", lo=0, lo_open=True)
    int_issue_cycles: float = _spec("cycles per warp instruction on the integer ALU pipe (IADD3, LOP3, SHF, PRMT, "
                                    "ISETP, SEL, LEA)", lo=0, lo_open=True)
    conversion_issue_cycles: float = _spec("cycles per warp instruction of a type conversion (F2F, F2FP, I2F, F2I)",
                                           lo=0, lo_open=True)
    other_issue_cycles: float = _spec("cycles per warp instruction of every other class (uniform datapath, "
                                      "shared-memory and cp.async, moves, branches, barriers, wgmma)", lo=0,
                                      lo_open=True)
    tensor_macs_per_cycle: float = _spec("dense FP8 multiply-accumulates one SM's tensor cores complete per cycle "
                                         "(a warpgroup MMA of m x n x k takes m n k / this cycles)", lo=0,
                                         lo_open=True)


@dataclass(frozen=True)
class TritonLoopSpec:
    iteration_fixed_s: float = _spec("SM time of one main-loop iteration beyond its loads and its instruction "
                                     "issue (barriers, cp.async waits; a waited MMA is counted apart)", lo=0)
    sm_load_bandwidth_bytes_per_s: float = _spec(
        "bytes per second of weight tiles one SM's cp.async path stages into shared memory for a software-pipelined "
        "Triton loop (the token tile, the same for every program of a token tile, comes from L2 and is not counted)",
        lo=0, lo_open=True)
    cycles_per_instruction: float = _spec("factor on the loop body's issue cycles (per pipe from the sm section); 1 "
                                          "= as the sm section's cycles say", lo=0, lo_open=True)
    program_fixed_s: float = _spec("SM time per program beyond its iterations (prologue, pipeline fill, "
                                   "epilogue store)", lo=0)
    loaded_hbm_latency_s: float = _spec("round trip of a cp.async load under a streaming kernel's load; a "
                                        "program with s stages waits at least this over (s - 1) per iteration, "
                                        "and an SM waits it once before its first program computes", lo=0)
    kernel_fixed_s: float = _spec("fixed cost of one launch of the looping kernel inside a CUDA graph (launch, "
                                  "first wave's ramp, last wave's tail)", lo=0)
    dependent_kernel_fixed_s: float = _spec(
        "fixed cost of one launch that the kernel before it lets start early (programmatic dependent launch, "
        "fused_kernel.dependent_launch): what is left of kernel_fixed_s and of the split-K reduction kernel's "
        "launch when the launch and the first stages' weight loads overlap the kernel before", lo=0)
    mma_wait_latency_s: float = _spec("latency of a warpgroup MMA beyond its tensor-core cycles, paid by a loop "
                                      "that waits on the MMA to completion at once (wgmma wait 0; "
                                      "waited_mma_instructions of the loop's structure); the tensor-core time of "
                                      "a loop's MMAs with A in registers, waited for at the end of each step, "
                                      "follows the step's issue", lo=0)
    resident_program_slowdown: float = _spec(
        "how much longer each program's iterations take per other program running on its SM at the same time: "
        "1 = the SM serves its resident programs one after another, 0 = they overlap completely", lo=0, hi=1)
    program_spread: str = _spec("how the busiest SM's share of the programs is counted: 'ceil' (whole programs, "
                                "ceil(programs / SMs)) or 'even' (programs / SMs, at least one)",
                                choices=("ceil", "even"))


@dataclass(frozen=True)
class FusedKernelSpec:
    kernel_variant: str = _spec("the variant of the fused kernel (dpq/kernels/w4a8_triton.py) this section describes, "
                                "which is also the one dpq's torch backend runs by default on a card whose name "
                                "contains device_name_contains")
    device_name_contains: str = _spec("a substring of the CUDA device name (torch.cuda.get_device_name) that "
                                      "identifies this card")
    block_k: int = _spec("K per main-loop iteration (one quantization group)", lo=1)
    weight_bytes_per_weight: float = _spec("bytes the kernel streams from HBM per weight (codes and expansion "
                                           "metadata)", lo=0, lo_open=True)
    expansion_instructions_per_weight: float = _spec(
        "SASS instructions per weight of the loop that expand INT4 to the matrix dtype (reported as the "
        "dequant share; the time uses the loop's whole count)", lo=0)
    split_policy: str = _spec("the launch heuristic's split-K choice at M <= 64: 'programs_per_sm' (split while "
                              "fewer output tiles than programs_per_sm_target x SMs, keeping min_iterations_per_part "
                              "K steps per part) or 'busiest_sm' (the split minimising (all K steps + "
                              "program_overhead_steps per program) / SMs + one program's steps) or 'waves' (the "
                              "split minimising the busiest SM's waves of resident programs: each wave's K steps, "
                              "slowed when it holds fewer than wave_programs_in_flight programs, + wave_fill_steps "
                              "per wave + wave_program_steps per program, among the splits that leave "
                              "wave_min_steps_per_part K steps per part)",
                              choices=("programs_per_sm", "busiest_sm", "waves"))
    programs_per_sm_target: int = _spec("'programs_per_sm' policy: programs per SM the split aims at", lo=1)
    min_iterations_per_part: int = _spec("'programs_per_sm' policy: fewest K steps per split part", lo=1)
    program_overhead_steps: float = _spec("'busiest_sm' policy: a program's fixed cost in K steps", lo=0)
    wave_programs_in_flight: float = _spec("'waves' policy: programs an SM needs at once to stream at its full "
                                           "rate (a wave holding fewer runs slower in proportion)", lo=0, lo_open=True)
    wave_fill_steps: float = _spec("'waves' policy: pipeline fill and drain per wave, in K steps", lo=0)
    wave_program_steps: float = _spec("'waves' policy: a program's fixed cost (prologue, epilogue), in K steps", lo=0)
    wave_min_steps_per_part: int = _spec("'waves' policy: the splits it weighs leave every part at least this many K "
                                         "steps", lo=1)
    split_reduction: bool = _spec("split-K parts are summed by a second kernel (float32 partials through HBM)")
    dependent_launch: bool = _spec(
        "the decode launches of kernel_variant's warp-specialized kernel use programmatic dependent launch: each "
        "program lets the next kernel start at once, and a program asks for its first stages' weights before it "
        "waits for the kernel before (the token tile and every write after); the loop section's "
        "dependent_kernel_fixed_s then replaces kernel_fixed_s")
    ring_depth: str = _spec(
        "the pipeline depth of those decode launches: 'tile' (the stages of the tile_configs or tuned_configs row) "
        "or 'share' (where that depth lets an SM hold more than its share of the launch, ceil(programs / SMs), "
        "the shallowest ring up to max_ring_stages and a program's K steps that holds no more: "
        "sim.perf.fused_kernel.ring_stages_for_share)", choices=("tile", "share"))
    max_ring_stages: int = _spec("'share' ring depth: the most stages it gives", lo=2)
    prefill_programs_per_sm: int = _spec("above M = 64 ('waves' and 'busiest_sm' policies): the launch heuristic "
                                         "splits K while the programs stay within this many per SM "
                                         "(sim.perf.fused_kernel.prefill_split)", lo=1)
    prefill_max_split: int = _spec("above M = 64: the most split-K parts of that rule; 1 = no split", lo=1)
    expand_from_tokens: int = _spec(
        "token count M from which a W4A8 GEMM runs as the prefill path instead of the fused kernel: the packed "
        "weight expanded to FP8 by one streaming kernel (reading weight_bytes_per_weight, writing 1 byte per "
        "weight), then the base profile's FP8 cuBLAS GEMM (dpq.kernels.w4a8_triton.w4a8_linear; its numerics are "
        "the base profile's)", lo=1)
    tile_configs: tuple[tuple[float, ...], ...] = _spec(
        "the launch heuristic's tiles on this card by token count: [max_m, block_n, block_t, warps, stages, "
        "registers_per_thread, "
        "shared_bytes_per_program, loop_instructions_per_thread, fp32_instructions, int_instructions, "
        "conversion_instructions, register_a_mma_instructions, mma_macs_per_instruction, launched_warps] (main-loop "
        "SASS instructions per thread: all, and those of the FP32/FMA, integer and conversion pipes; the pipelined "
        "warpgroup MMAs with their A operand in registers and each one's m n k; the warps a program holds registers "
        "for, >= warps), rows by increasing max_m; the first row whose max_m >= M is used (the last beyond); "
        "dpq's launch takes each tile's pipeline depth from here (heuristic_config_for)",
        lo=1)
    tuned_tile_structures: tuple[tuple[float, ...], ...] = _spec(
        "the structure of tuned_configs' tiles that tile_configs does not hold: rows of tile_configs' columns "
        "without max_m; may be empty", lo=0)
    tuned_configs: tuple[tuple[int, ...], ...] = _spec(
        "the kernel's launch configurations measured fastest on this card for given GEMMs, used instead of the "
        "launch heuristic there (dpq.kernels.w4a8_triton.launch_config; kernel_variant weights of groups of "
        "block_k): [n, k, min_m, max_m, block_n, block_t, split_k, warps, stages, reduce_in_kernel (0/1)] "
        "(scripts/tune_table.py); may be empty", lo=0)

    def tile_row(self, m: int) -> tuple:
        """The tile_configs row of the launch heuristic's tile for M tokens: the first whose max_m >= M."""
        return next((row for row in self.tile_configs if m <= row[0]), self.tile_configs[-1])

    def tuned_row(self, n: int, k: int, m: int) -> tuple | None:
        """The tuned_configs row of the (n, k) GEMM whose M range holds m, or None."""
        return next((row for row in self.tuned_configs if (row[0], row[1]) == (n, k) and row[2] <= m <= row[3]),
                    None)

    def tile_structure(self, block_n: int, block_t: int, warps: int, stages: int) -> tuple | None:
        """The tile_configs or tuned_tile_structures row (max_m first; 0 for the latter) of this tile, or None."""
        for row in self.tile_configs + self.tuned_tile_structures:
            if tuple(row[1:5]) == (block_n, block_t, warps, stages):
                return row
        return None


TUNED_CONFIG_COLUMNS = ("n", "k", "min_m", "max_m", "block_n", "block_t", "split_k", "warps", "stages",
                        "reduce_in_kernel")
TILE_CONFIG_COLUMNS = ("max_m", "block_n", "block_t", "warps", "stages", "registers_per_thread",
                       "shared_bytes_per_program", "loop_instructions_per_thread", "fp32_instructions",
                       "int_instructions", "conversion_instructions", "register_a_mma_instructions",
                       "mma_macs_per_instruction", "launched_warps")


@dataclass(frozen=True)
class HardwareProfile:
    """One accelerator, validated. Every number is SI with its unit in its name; ``sources`` gives provenance.

    ``numerics`` is whatever ``sim.datapath.parse_numerics`` returns (None when the file has no numerics section).
    """

    name: str
    description: str
    source: str
    memory: MemorySpec
    matrix_engine: MatrixEngineSpec
    vector_engine: VectorEngineSpec
    kernel: KernelSpec
    dequant: DequantSpec
    interconnect: InterconnectSpec
    host: HostSpec
    sources: Mapping[str, str]
    numerics: Any = None
    raw: Mapping[str, Any] = field(default=None, repr=False, compare=False)
    sm: SmSpec | None = None
    triton_loop: TritonLoopSpec | None = None
    # the same costs for the Gluon kernel ("v6": TMA loads by a load warp, MMAs from shared memory), where they differ
    gluon_loop: TritonLoopSpec | None = None
    fused_kernel: FusedKernelSpec | None = None

    def to_dict(self) -> dict:
        """The resolved profile as plain data (for writing next to results): performance sections, sources, and
        the numerics section as merged from the file(s)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "source": self.source}
        for sec_name, _ in _SECTIONS + _OPTIONAL_SECTIONS:
            if getattr(self, sec_name) is not None:
                out[sec_name] = _to_plain(getattr(self, sec_name))
        out["sources"] = dict(self.sources)
        out["numerics"] = (self.raw or {}).get("numerics")
        return out


_SECTIONS = (
    ("memory", MemorySpec),
    ("matrix_engine", MatrixEngineSpec),
    ("vector_engine", VectorEngineSpec),
    ("kernel", KernelSpec),
    ("dequant", DequantSpec),
    ("interconnect", InterconnectSpec),
    ("host", HostSpec),
)
# present only in profiles of hardware running the fused Triton kernel (sim/perf/fused_kernel.py)
_OPTIONAL_SECTIONS = (
    ("sm", SmSpec),
    ("triton_loop", TritonLoopSpec),
    ("gluon_loop", TritonLoopSpec),
    ("fused_kernel", FusedKernelSpec),
)
_TOP_KEYS = ({"name", "description", "extends", "sources", "numerics"} | {s for s, _ in _SECTIONS}
             | {s for s, _ in _OPTIONAL_SECTIONS})


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, Curve):
        return obj.to_list()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- loading

def list_profiles() -> list[str]:
    """Names of the profiles shipped in hw_profiles/ (file stems), sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _resolve_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
            path = relative_to / path
        if not path.exists():
            raise ConfigError(text, "", "profile file not found")
        return path
    path = PROFILE_DIR / f"{text}.yaml"
    if not path.exists():
        raise ConfigError(text, "", f"unknown profile; expected one of {list_profiles()} or a path to a .yaml file")
    return path


_YAML_CACHE: dict[str, tuple[str, dict]] = {}


def _read_yaml(path: Path) -> dict:
    # parsed files are cached by their text: simulate() loads its profile on every call and parsing dominates
    text = path.read_text()
    hit = _YAML_CACHE.get(str(path))
    if hit is not None and hit[0] == text:
        return copy.deepcopy(hit[1])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {type(data).__name__}")
    _YAML_CACHE[str(path)] = (text, copy.deepcopy(data))
    return data


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Recursive merge of mappings: keys of ``over`` win; nested mappings merge; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(name_or_path: str | Path, _chain: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """The raw mapping of a profile with its ``extends`` chain merged in (no validation yet)."""
    path = _resolve_path(name_or_path, relative_to=PROFILE_DIR)
    key = str(path.resolve())
    if key in _chain:
        raise ConfigError(str(path), "extends", f"circular 'extends' chain: {' -> '.join(_chain + (key,))}")
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(str(path), "extends", f"value {describe_value(parent)}: expected a profile name")
        base, _ = load_raw(_resolve_path(parent, relative_to=path.parent), _chain + (key,))
        base.pop("name", None)
        data = deep_merge(base, {k: v for k, v in data.items() if k != "extends"})
    return data, path


_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_override_value(text: str) -> Any:
    """A CLI override value: YAML semantics, plus scientific notation without a dot (``3e12``) as a number."""
    stripped = text.strip()
    if _NUMBER_RE.match(stripped):
        number = float(stripped)
        return int(number) if re.match(r"^[-+]?\d+$", stripped) else number
    try:
        return yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        raise ConfigError("--set", stripped, f"cannot parse value: {exc}") from exc


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=1e9", "dequant.placement=fused"]`` -> ``{"a.b": 1e9, "dequant.placement": "fused"}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", item, "expected KEY=VALUE with a dotted key, e.g. "
                                             "memory.hbm_bandwidth_bytes_per_s=3.0e12")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_override_value(value)
    return out


def apply_overrides(raw: dict, overrides: Mapping[str, Any], source: str) -> dict:
    """Set dotted keys in a copy of ``raw``; the key must already exist (a typo is an error, not a new field)."""
    out = deep_merge(raw, {})
    sources = dict(out.get("sources") or {})
    for dotted, value in overrides.items():
        if isinstance(value, str):
            value = parse_override_value(value)
        parts = dotted.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise ConfigError(source, dotted, f"override of an unknown section '{'.'.join(parts[:i + 1])}'")
            child = dict(child)
            node[part] = child
            node = child
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(source, dotted, "override of an unknown key; keys are dotted paths of the profile "
                                              "file, e.g. memory.hbm_bandwidth_bytes_per_s")
        node[parts[-1]] = value
        sources[dotted] = "override"
    out["sources"] = sources
    return out


def load_profile(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> HardwareProfile:
    """Load, merge (``extends``), override and validate a hardware profile.

    name_or_path: a shipped profile name (``"h100"``) or a path to a YAML file.
    overrides: dotted keys -> values (numbers, strings; strings are parsed like ``--set`` values).
    Raises ConfigError naming the file, key, value and what was expected.
    """
    raw, path = load_raw(name_or_path)
    source = str(path)
    if overrides:
        raw = apply_overrides(raw, overrides, source)
    return validate_profile(raw, source)


# ---------------------------------------------------------------------------------------------- validation

def _check_number(value: Any, source: str, key: str, meta: Mapping, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            hint = " (PyYAML reads '1e9' as a string: write 1.0e+9)"
        raise ConfigError(source, key, f"value {describe_value(value)}: expected "
                                       f"{'an integer' if integer else 'a number'}{hint}")
    if integer and not isinstance(value, int):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected an integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a finite number")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected "
                                       f"{'>' if meta.get('lo_open') else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(source, key, f"value {describe_value(value)}: expected <= {hi}")
    return value if integer else float(value)


def _check_curve(value: Any, source: str, key: str, meta: Mapping) -> Curve:
    if not isinstance(value, list) or not value:
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a non-empty list of [x, y] pairs")
    points = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(source, f"{key}[{i}]", f"value {describe_value(pair)}: expected an [x, y] pair")
        x = _check_number(pair[0], source, f"{key}[{i}][0]", {"lo": 0, "lo_open": True})
        y = _check_number(pair[1], source, f"{key}[{i}][1]", meta)
        if points and x <= points[-1][0]:
            raise ConfigError(source, f"{key}[{i}][0]", f"value {describe_value(pair[0])}: expected x values "
                                                        "strictly increasing")
        points.append((x, y))
    return Curve(tuple(points))


def _check_dtype_map(value: Any, source: str, key: str, meta: Mapping, item) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a mapping by dtype "
                                       f"{list(MATRIX_DTYPES)}")
    unknown = sorted(set(value) - set(MATRIX_DTYPES))
    if unknown:
        raise ConfigError(source, f"{key}.{unknown[0]}", f"unknown dtype; expected one of {list(MATRIX_DTYPES)}")
    missing = [d for d in MATRIX_DTYPES if d not in value]
    if missing:
        raise ConfigError(source, f"{key}.{missing[0]}", "missing; every matrix dtype needs a value")
    return {d: item(value[d], source, f"{key}.{d}", meta) for d in MATRIX_DTYPES}


def _check_tiles(value: Any, source: str, key: str, meta: Mapping) -> tuple:
    expected = "[tile_m, tile_n, relative_efficiency]"
    if not isinstance(value, list) or not value:
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a list of {expected}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 3:
            raise ConfigError(source, f"{key}[{i}]", f"value {describe_value(item)}: expected {expected}")
        tm = _check_number(item[0], source, f"{key}[{i}][0]", meta, integer=True)
        tn = _check_number(item[1], source, f"{key}[{i}][1]", meta, integer=True)
        eff = _check_number(item[2], source, f"{key}[{i}][2]", {"lo": 0, "hi": 1, "lo_open": True})
        out.append((tm, tn, eff))
    return tuple(out)


def _check_tile_configs(value: Any, source: str, key: str, with_max_m: bool = True) -> tuple:
    """tile_configs rows (with_max_m) or tuned_tile_structures rows (the same columns without max_m, may be empty);
    the rows come back with max_m first either way (0 for the latter)."""
    columns = TILE_CONFIG_COLUMNS if with_max_m else TILE_CONFIG_COLUMNS[1:]
    expected = "[" + ", ".join(columns) + "]"
    if not isinstance(value, list) or (with_max_m and not value):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a list of {expected}")
    out = []
    skip = 0 if with_max_m else 1
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != len(columns):
            raise ConfigError(source, f"{key}[{i}]", f"value {describe_value(item)}: expected {expected}")
        row = [] if with_max_m else [0]
        for j, col in enumerate(columns):
            integer = not col.endswith("instructions") and col != "loop_instructions_per_thread"
            lo = 0 if col.endswith("_instructions") and col != "loop_instructions_per_thread" else 1
            row.append(_check_number(item[j], source, f"{key}[{i}][{j}] ({col})", {"lo": lo}, integer=integer))
        if with_max_m and out and row[0] <= out[-1][0]:
            raise ConfigError(source, f"{key}[{i}][0] (max_m)", f"value {row[0]}: expected max_m increasing")
        if row[4] < 2:
            raise ConfigError(source, f"{key}[{i}][{4 - skip}] (stages)", f"value {row[4]}: expected >= 2")
        if row[13] < row[3]:
            raise ConfigError(source, f"{key}[{i}][{13 - skip}] (launched_warps)",
                              f"value {row[13]}: expected >= warps ({row[3]})")
        if row[8] + row[9] + row[10] > row[7]:
            raise ConfigError(source, f"{key}[{i}][{8 - skip}:{11 - skip}] (fp32, int, conversion instructions)",
                              f"values {row[8]}, {row[9]}, {row[10]}: expected their sum <= "
                              f"loop_instructions_per_thread {row[7]} (they are a part of it)")
        out.append(tuple(row))
    return tuple(out)


def _check_tuned_configs(value: Any, source: str, key: str) -> tuple:
    expected = "[" + ", ".join(TUNED_CONFIG_COLUMNS) + "]"
    if not isinstance(value, list):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected a (possibly empty) list of {expected}")
    out, seen = [], {}
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) != len(TUNED_CONFIG_COLUMNS):
            raise ConfigError(source, f"{key}[{i}]", f"value {describe_value(item)}: expected {expected}")
        row = tuple(_check_number(v, source, f"{key}[{i}][{j}] ({col})", {"lo": 0 if col == "reduce_in_kernel" else 1},
                                  integer=True) for j, (col, v) in enumerate(zip(TUNED_CONFIG_COLUMNS, item)))
        n, k, lo_m, hi_m, block_n, block_t, split, warps, stages, reduce = row
        if lo_m > hi_m:
            raise ConfigError(source, f"{key}[{i}][2:4] (min_m, max_m)",
                              f"values {lo_m}, {hi_m}: expected min_m <= max_m")
        if block_n not in (64, 128, 256) or block_t not in (16, 32, 64, 128, 256) or stages < 2 or reduce > 1:
            raise ConfigError(source, f"{key}[{i}]", f"value {list(row)}: expected block_n 64/128/256, block_t "
                              f"16..256, stages >= 2, reduce_in_kernel 0 or 1")
        for j, (a, b) in seen.get((n, k), {}).items():
            if lo_m <= b and a <= hi_m:
                raise ConfigError(source, f"{key}[{i}]", f"M range {lo_m}..{hi_m} of n={n}, k={k} overlaps row {j}'s "
                                  f"{a}..{b}")
        seen.setdefault((n, k), {})[i] = (lo_m, hi_m)
        out.append(row)
    return tuple(out)


def _validate_section(cls, value: Any, source: str, prefix: str):
    if not isinstance(value, dict):
        raise ConfigError(source, prefix, f"value {describe_value(value)}: expected a mapping")
    names = {f.name for f in fields(cls)}
    for key in value:
        if key not in names:
            raise ConfigError(source, f"{prefix}.{key}", f"unknown key; expected one of {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}"
        meta = f.metadata
        if f.name not in value:
            raise ConfigError(source, key, f"missing ({meta['help']})")
        v = value[f.name]
        if f.type in ("float", float):
            kwargs[f.name] = _check_number(v, source, key, meta)
        elif f.type in ("int", int):
            kwargs[f.name] = _check_number(v, source, key, meta, integer=True)
        elif f.type in ("Curve", Curve):
            kwargs[f.name] = _check_curve(v, source, key, meta)
        elif f.type in ("Mapping[str, float]",):
            kwargs[f.name] = _check_dtype_map(v, source, key, meta, _check_number)
        elif f.type == "Mapping[str, Curve]":
            kwargs[f.name] = _check_dtype_map(v, source, key, meta, _check_curve)
        elif f.type == "tuple[tuple[int, int, float], ...]":
            kwargs[f.name] = _check_tiles(v, source, key, meta)
        elif f.type == "tuple[tuple[float, ...], ...]" and f.name == "tuned_tile_structures":
            kwargs[f.name] = _check_tile_configs(v, source, key, with_max_m=False)
        elif f.type == "tuple[tuple[float, ...], ...]":
            kwargs[f.name] = _check_tile_configs(v, source, key)
        elif f.type == "tuple[tuple[int, ...], ...]":
            kwargs[f.name] = _check_tuned_configs(v, source, key)
        elif f.type in ("bool", bool):
            if not isinstance(v, bool):
                raise ConfigError(source, key, f"value {describe_value(v)}: expected true or false")
            kwargs[f.name] = v
        elif f.type in ("str", str):
            if not isinstance(v, str) or not v.strip():
                # an empty device_name_contains would match every card's name
                raise ConfigError(source, key, f"value {describe_value(v)}: expected a non-empty string")
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(source, key, f"value {describe_value(v)}: expected one of {list(meta['choices'])}")
            kwargs[f.name] = v
        else:  # pragma: no cover - schema error, not user error
            raise TypeError(f"unsupported field type {f.type!r} in {cls.__name__}")
    return cls(**kwargs)


def numeric_keys(raw: Mapping) -> list[str]:
    """Dotted keys of the performance sections whose values are numbers or curves (need a source)."""
    out = []
    for sec, _ in _SECTIONS + _OPTIONAL_SECTIONS:
        for key, value in (raw.get(sec) or {}).items():
            if isinstance(value, (int, float, list, dict)) and not isinstance(value, bool):
                out.append(f"{sec}.{key}")
    return out


def validate_profile(raw: Mapping, source: str) -> HardwareProfile:
    """Validate a merged raw mapping into a HardwareProfile (see load_profile)."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(source, str(key), f"unknown top-level key; expected one of {sorted(_TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(source, "name", f"value {describe_value(name)}: expected a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(source, "description", f"value {describe_value(description)}: expected a string")
    sections = {}
    for sec_name, cls in _SECTIONS:
        if sec_name not in raw:
            raise ConfigError(source, sec_name, "missing section")
        sections[sec_name] = _validate_section(cls, raw[sec_name], source, sec_name)
    sources = raw.get("sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise ConfigError(source, "sources", "expected a mapping of dotted key -> provenance text")
    optional = {}
    for sec_name, cls in _OPTIONAL_SECTIONS:
        if raw.get(sec_name) is not None:
            optional[sec_name] = _validate_section(cls, raw[sec_name], source, sec_name)
    if "fused_kernel" in optional and ("sm" not in optional or "triton_loop" not in optional):
        raise ConfigError(source, "fused_kernel", "the fused-kernel model needs the 'sm' and 'triton_loop' "
                                                  "sections too")
    fk = optional.get("fused_kernel")
    for i, row in enumerate(fk.tuned_configs if fk is not None else ()):
        if fk.tile_structure(*row[4:6], *row[7:9]) is None:
            raise ConfigError(source, f"fused_kernel.tuned_configs[{i}]",
                              f"tile {row[4]} x {row[5]}, {row[7]} warps, {row[8]} stages: no row of tile_configs or "
                              f"tuned_tile_structures gives its structure")
    known = {f"{sec}.{f.name}" for sec, cls in _SECTIONS + _OPTIONAL_SECTIONS for f in fields(cls)}
    for key in sources:
        if ".".join(str(key).split(".")[:2]) not in known:
            raise ConfigError(source, f"sources.{key}", "provenance for a key the profile does not have")
    for key in numeric_keys(raw):
        if key not in sources:
            raise ConfigError(source, f"sources.{key}", "missing provenance: every number needs a source "
                                                        "(datasheet, paper, measured here with date and card, "
                                                        "or assumed)")
    numerics = None
    if raw.get("numerics") is not None:
        try:
            from sim import datapath  # imported lazily: the numerics schema belongs to sim.datapath
        except ModuleNotFoundError as exc:  # the numerics owner's module is absent: keep only the raw section
            if exc.name != "sim.datapath":
                raise
        else:
            numerics = datapath.parse_numerics(raw["numerics"], source=source)
    return HardwareProfile(name=name, description=description, source=source, numerics=numerics, raw=raw,
                           sources=dict(sources), **sections, **optional)
