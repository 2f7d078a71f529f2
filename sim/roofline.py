"""Roofline twin of the event model: time = fixed cost + max(work / achievable rate) over the resources.

No pipelines, tiles or waves: each op costs its launch overhead plus the largest of its HBM time (bytes over the
profile's best achievable bandwidth), its matrix time (FLOP over the best achievable matrix rate) and its vector
and link times. The event model must agree with it where the roofline is exact (a long pure stream, a large
square GEMM) and improve on it elsewhere (small transfers, wave quantization, overlap of dequantization).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.profiles import HardwareProfile
from sim.workload import Op, get_scheme


@dataclass(frozen=True)
class RooflineRates:
    """Achievable rates a roofline uses. ``from_profile`` takes the best point of each efficiency curve."""

    launch_s: float
    hbm_bytes_per_s: float
    matrix_flops_per_s: dict
    vector_flops_per_s: float
    link_bytes_per_s: float
    link_latency_s: float

    @classmethod
    def from_profile(cls, hw: HardwareProfile) -> "RooflineRates":
        me, mem = hw.matrix_engine, hw.memory
        best_hbm = max(y for _, y in mem.hbm_efficiency_by_transfer_bytes.points)
        matrix = {d: me.peak_flops_per_s[d] * max(y for _, y in me.efficiency_by_flops[d].points)
                  for d in me.peak_flops_per_s}
        ic = hw.interconnect
        return cls(hw.kernel.launch_overhead_s, mem.hbm_bandwidth_bytes_per_s * best_hbm, matrix,
                   hw.vector_engine.peak_flops_per_s * hw.vector_engine.efficiency,
                   ic.link_bandwidth_bytes_per_s * ic.allreduce_efficiency, ic.link_latency_s)


def roofline_op(rates: RooflineRates, op: Op, dequant_ops_per_weight: dict | float = 0.0,
                dequant_placement: str = "fused") -> float:
    """Roofline seconds of one invocation of ``op``.

    dequant_ops_per_weight: vector ops to expand one INT4 weight, by target dtype (or one number for all).
    """
    if isinstance(dequant_ops_per_weight, dict):
        dequant_ops_per_weight = dequant_ops_per_weight.get(op.matrix_dtype, 0.0)
    if op.kind == "allreduce":
        wire = 2.0 * (op.tp - 1) / op.tp * op.link_bytes
        return rates.launch_s + rates.link_latency_s + wire / rates.link_bytes_per_s
    if op.kind == "gemm":
        flops = 2.0 * op.m * op.n * op.k
        matrix_s = flops / rates.matrix_flops_per_s[op.matrix_dtype]
        if op.dequant and dequant_placement == "vector_pass":
            expanded = {"bf16": 2.0, "fp8": 1.0}[op.matrix_dtype]
            w = float(op.n) * op.k
            pass_s = rates.launch_s + max(w * (op.weight_bytes_per_element + expanded) / rates.hbm_bytes_per_s,
                                          w * dequant_ops_per_weight / rates.vector_flops_per_s)
            gemm_bytes = op.m * op.k * op.activation_bytes_per_element + w * expanded + op.m * op.n * 2.0
            return pass_s + rates.launch_s + max(matrix_s, gemm_bytes / rates.hbm_bytes_per_s)
        vector_s = float(op.n) * op.k * dequant_ops_per_weight / rates.vector_flops_per_s if op.dequant else 0.0
        return rates.launch_s + max(matrix_s, op.bytes / rates.hbm_bytes_per_s, vector_s)
    matrix_s = op.matrix_flops / rates.matrix_flops_per_s[op.matrix_dtype] if op.matrix_flops else 0.0
    return rates.launch_s + max(op.bytes / rates.hbm_bytes_per_s, matrix_s, op.vector_flops / rates.vector_flops_per_s)


def roofline_gemm(hw: HardwareProfile | RooflineRates, m: int, n: int, k: int, scheme: str) -> float:
    """Roofline seconds of one GEMM (same arguments as sim.perf.predict_gemm)."""
    from sim.perf.gemm import gemm_op
    from sim.perf.ops import resolve_profile

    if isinstance(hw, RooflineRates):
        return roofline_op(hw, gemm_op(m, n, k, scheme))
    hw = resolve_profile(hw)
    return roofline_op(RooflineRates.from_profile(hw), gemm_op(m, n, k, get_scheme(scheme).name),
                       hw.dequant.ops_per_weight, hw.dequant.placement)
