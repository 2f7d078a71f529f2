"""Operations (sim.workload.Op) -> kernel plans -> simulated timings, memoized per (profile, op shape)."""

from __future__ import annotations

from dataclasses import dataclass

from sim.perf.engine import CATEGORIES, KernelTiming, run_kernel
from sim.perf.fused_kernel import fused_gemm_plan
from sim.perf.kernels import GemmShape, KernelPlan, allreduce_plan, gemm_plan, stream_plan
from sim.profiles import HardwareProfile, load_profile
from sim.workload import Op

_CACHE_LIMIT = 200_000
_HW_KEYS: dict[int, tuple[HardwareProfile, int]] = {}
_TIMINGS: dict[tuple, "OpTiming"] = {}


def resolve_profile(hw: HardwareProfile | str, overrides: dict | None = None) -> HardwareProfile:
    """A profile object from a name/path (with optional overrides) or the object itself."""
    if isinstance(hw, HardwareProfile):
        if overrides:
            from sim.profiles import apply_overrides, validate_profile

            return validate_profile(apply_overrides(dict(hw.raw), overrides, hw.source), hw.source)
        return hw
    if isinstance(hw, str):
        return load_profile(hw, overrides)
    raise TypeError(f"hw: expected a profile name or HardwareProfile, got {type(hw).__name__}")


def _hw_key(hw: HardwareProfile) -> int:
    entry = _HW_KEYS.get(id(hw))
    if entry is None or entry[0] is not hw:
        if len(_HW_KEYS) > 256:
            _HW_KEYS.clear()
            _TIMINGS.clear()
        entry = (hw, len(_HW_KEYS) + 1 + max((v[1] for v in _HW_KEYS.values()), default=0))
        _HW_KEYS[id(hw)] = entry
    return entry[1]


@dataclass(frozen=True)
class OpTiming:
    """Time of one invocation of an op (all its kernels), split by category; ``kernels`` names them."""

    time_s: float
    split: dict
    bound: str
    kernels: tuple[str, ...]
    info: dict


def op_plans(hw: HardwareProfile, op: Op) -> list[KernelPlan]:
    """The kernels one op runs. A GEMM on INT4 weights with dequant placement 'vector_pass' runs two."""
    if op.kind == "gemm":
        if op.dequant and hw.dequant.placement == "vector_pass":
            return _expand_then_gemm(hw, op, op.weight_bytes_per_element)
        if op.dequant and hw.fused_kernel is not None and op.matrix_dtype == "fp8":
            if op.m >= hw.fused_kernel.expand_from_tokens:  # the prefill path: expansion kernel + cuBLAS
                return _expand_then_gemm(hw, op, hw.fused_kernel.weight_bytes_per_weight)
            return [fused_gemm_plan(hw, op.m, op.n, op.k, op.name)]  # structure model (sim.perf.fused_kernel)
        shape = GemmShape(op.m, op.n, op.k, op.matrix_dtype, op.activation_bytes_per_element,
                          op.weight_bytes_per_element, fused_dequant=op.dequant)
        return [gemm_plan(hw, shape, op.name)]
    if op.kind in ("elementwise", "attention"):
        return [stream_plan(hw, op.name, op.read_bytes, op.write_bytes, op.vector_flops, op.matrix_flops,
                            op.matrix_dtype)]
    if op.kind == "allreduce":
        return [allreduce_plan(hw, op.name, op.link_bytes, op.tp)]
    raise ValueError(f"op {op.name!r}: unknown kind {op.kind!r}")


def _expand_then_gemm(hw: HardwareProfile, op: Op, read_bytes_per_weight: float) -> list[KernelPlan]:
    """A streaming kernel that expands the INT4 weight to the matrix dtype (reads ``read_bytes_per_weight``, writes
    the expanded weight), then the GEMM on the expanded weight."""
    expanded = {"bf16": 2.0, "fp8": 1.0}[op.matrix_dtype]
    weights = float(op.n) * op.k
    expand = stream_plan(hw, f"{op.name}.dequant", read_bytes=weights * read_bytes_per_weight,
                         write_bytes=weights * expanded, vector_flops=0.0, matrix_dtype=op.matrix_dtype,
                         dequant_weights=weights)
    shape = GemmShape(op.m, op.n, op.k, op.matrix_dtype, op.activation_bytes_per_element, expanded)
    return [expand, gemm_plan(hw, shape, op.name)]


def _op_key(op: Op) -> tuple:
    return (op.kind, op.m, op.n, op.k, op.matrix_dtype, op.weight_bytes_per_element, op.activation_bytes_per_element,
            op.dequant, op.read_bytes, op.write_bytes, op.matrix_flops, op.vector_flops, op.link_bytes, op.tp)


def time_op(hw: HardwareProfile, op: Op) -> OpTiming:
    """Simulated time of one invocation of ``op`` (memoized: identical ops are simulated once)."""
    key = (_hw_key(hw), _op_key(op))
    hit = _TIMINGS.get(key)
    if hit is not None:
        return hit
    timings: list[KernelTiming] = []
    plans = op_plans(hw, op)
    for plan in plans:
        timings.append(run_kernel(plan))
    split = {f"{c}_s": sum(getattr(t, f"{c}_s") for t in timings) for c in CATEGORIES}
    total = sum(t.time_s for t in timings)
    from sim.perf.engine import BOUND_NAMES

    bound = BOUND_NAMES[max(CATEGORIES, key=lambda c: split[f"{c}_s"])]
    info = dict(plans[-1].info)
    if len(plans) > 1:
        info["dequant_pass_s"] = timings[0].time_s
    result = OpTiming(total, split, bound, tuple(p.name for p in plans), info)
    if len(_TIMINGS) > _CACHE_LIMIT:
        _TIMINGS.clear()
    _TIMINGS[key] = result
    return result
