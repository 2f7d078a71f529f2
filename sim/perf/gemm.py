"""One GEMM on one device: ``predict_gemm`` (seconds) and ``gemm_timing`` (with its time split)."""

from __future__ import annotations

from sim.perf.ops import OpTiming, resolve_profile, time_op
from sim.profiles import HardwareProfile
from sim.workload import Op, get_scheme


def gemm_op(m: int, n: int, k: int, scheme: str) -> Op:
    """The workload op of y (m x n) = x (m x k) @ W.T with W (n x k) stored in ``scheme``."""
    for name, value in (("m", m), ("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    s = get_scheme(scheme)
    return Op("gemm", "gemm", "model", 1, m=m, n=n, k=k, matrix_dtype=s.matrix_dtype,
              weight_bytes_per_element=s.weight_bytes_per_element,
              activation_bytes_per_element=s.activation_bytes_per_element, dequant=s.dequant)


def gemm_timing(hw: HardwareProfile | str, m: int, n: int, k: int, scheme: str) -> OpTiming:
    """Simulated GEMM with its split into hbm / matrix / dequant / overhead time and the bounding resource."""
    return time_op(resolve_profile(hw), gemm_op(m, n, k, scheme))


def predict_gemm(hw: HardwareProfile | str, m: int, n: int, k: int, scheme: str) -> float:
    """Seconds for one GEMM of an (m x k) activation with an (n x k) weight on one device.

    hw: profile name (``"h100"``) or HardwareProfile; scheme: "bf16", "fp8", "w4a16" or "w4a8" (INT4 weights are
    expanded as the profile's ``dequant.placement`` says; a 'vector_pass' adds its separate kernel's time).
    """
    return gemm_timing(hw, m, n, k, scheme).time_s


def streaming_kernels_time(hw: HardwareProfile | str, kernels) -> list[tuple[str, float]]:
    """Seconds of each streaming kernel of an explicit list run back to back (elementwise ops, copies).

    kernels: iterable of (name, read_bytes, write_bytes); each is one launch of a kernel that streams its bytes
    through HBM at the profile's efficiency for that transfer size after the profile's launch cost
    (``sim.perf.kernels.stream_plan`` with no vector work, simulated by the event engine). Returns
    [(name, seconds)] in order.
    """
    from sim.perf.engine import run_kernel
    from sim.perf.kernels import stream_plan

    hw = resolve_profile(hw)
    out = []
    for name, read_bytes, write_bytes in kernels:
        for label, v in (("read_bytes", read_bytes), ("write_bytes", write_bytes)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"kernel {name!r}: {label}={v!r}: expected a non-negative number")
        out.append((name, run_kernel(stream_plan(hw, name, float(read_bytes), float(write_bytes), 0.0)).time_s))
    return out
