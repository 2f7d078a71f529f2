"""Event-level performance model (simpy): HBM, matrix engine, vector units and links as resources.

Public API::

    predict_gemm(hw, m, n, k, scheme) -> float seconds
    gemm_timing(hw, m, n, k, scheme) -> OpTiming (time, split into hbm/matrix/vector/dequant/link/overhead, bound)
    simulate(hw, model, *, scheme, batch, input_len, output_len, tp=1, kv_cache_dtype="bf16",
             decode_samples=16, max_prefill_tokens=None, overrides=None) -> SimulationResult
    trace_step(hw, model, *, scheme, batch, context_len, phase="decode", tp=1, layers=2) -> dict (Chrome trace)
"""

from sim.perf.gemm import gemm_timing, predict_gemm
from sim.perf.simulate import MemoryUse, OpResult, SimulationResult, StepResult, simulate
from sim.perf.trace import trace_step, write_trace

__all__ = ["predict_gemm", "gemm_timing", "simulate", "SimulationResult", "StepResult", "OpResult", "MemoryUse",
           "trace_step", "write_trace"]
