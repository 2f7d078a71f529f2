"""End-to-end simulation of one batch of requests: prefill, then output_len decode steps (static batching).

Each distinct kernel is simulated once by the event engine and memoized; a step's time is its kernels back to back
on one stream (as a CUDA graph or a Gaudi recipe runs them) plus the profile's per-step host overhead. Across decode
steps only attention changes (its KV reads grow with the context), so ``decode_samples`` steps spread over the
decode are simulated and the rest interpolated linearly between them (exact when decode_samples >= output_len).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from sim.models import ModelConfig, load_model
from sim.perf.engine import BOUND_NAMES, CATEGORIES
from sim.perf.ops import resolve_profile, time_op
from sim.profiles import HardwareProfile
from sim.roofline import RooflineRates, roofline_op
from sim.workload import Op, decode_ops, get_scheme, memory_footprint, prefill_ops

SPLIT_KEYS = tuple(f"{c}_s" for c in CATEGORIES)


@dataclass(frozen=True)
class OpResult:
    """One op of one step: per-invocation time and its split; ``repeat`` invocations per step.

    time_s is the event model's; roofline_time_s the roofline twin's (sim.roofline) for the same op.
    """

    phase: str
    name: str
    kind: str
    scope: str
    repeat: int
    time_s: float
    flops: float
    bytes: float
    bound: str
    split: dict
    roofline_time_s: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def total_time_s(self) -> float:
        return self.time_s * self.repeat

    def to_dict(self) -> dict:
        return {"phase": self.phase, "op": self.name, "kind": self.kind, "scope": self.scope, "repeat": self.repeat,
                "time_s": self.time_s, "total_time_s": self.total_time_s, "flops": self.flops,
                "hbm_bytes": self.bytes, "bound": self.bound, **self.split, "roofline_time_s": self.roofline_time_s,
                **{k: v for k, v in self.info.items() if k in ("tile_m", "tile_n", "split_k", "waves")}}


@dataclass(frozen=True)
class StepResult:
    """One forward step (prefill, or a decode step at ``context_len``)."""

    phase: str
    context_len: int
    time_s: float
    host_overhead_s: float
    ops: tuple[OpResult, ...]

    @property
    def bound(self) -> str:
        return _bound_of(self.ops, self.host_overhead_s)

    @property
    def roofline_time_s(self) -> float:
        """The same step by the roofline twin (ops' roofline times plus the host overhead)."""
        return sum(o.roofline_time_s * o.repeat for o in self.ops) + self.host_overhead_s

    def split(self) -> dict:
        out = {k: sum(o.split[k] * o.repeat for o in self.ops) for k in SPLIT_KEYS}
        out["overhead_s"] += self.host_overhead_s
        return out


def _bound_of(ops, host_s: float) -> str:
    totals = {k: sum(o.split[k] * o.repeat for o in ops) for k in SPLIT_KEYS}
    totals["overhead_s"] += host_s
    best = max(totals, key=totals.get)
    return BOUND_NAMES[best[:-2]]


@dataclass(frozen=True)
class MemoryUse:
    weights_bytes: float
    kv_cache_bytes: float
    workspace_bytes: float
    total_bytes: float
    capacity_bytes: float
    fits: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SimulationResult:
    """Result of ``simulate``. Times in seconds; throughput in tokens/s; memory in bytes, per device.

    prefill_latency_s: time to first token (prefill step incl. host overhead).
    decode_time_per_token_s: mean decode step time (each step emits one token per sequence).
    e2e_latency_s: prefill + all decode steps; output_tokens_per_s: batch * output_len / e2e_latency_s (whole
    system: all tp devices together); decode_tokens_per_s: batch / decode_time_per_token_s.
    prefill / decode: a representative step each (prefill: the first prefill step, which is the whole prefill
    unless max_prefill_tokens splits it; decode: at the mean context), with per-op breakdowns.
    """

    hardware: str
    model: str
    scheme: str
    batch: int
    input_len: int
    output_len: int
    tp: int
    options: dict
    prefill_latency_s: float
    decode_time_per_token_s: float
    decode_total_s: float
    e2e_latency_s: float
    output_tokens_per_s: float
    decode_tokens_per_s: float
    prefill: StepResult
    decode: StepResult | None
    decode_samples: tuple[tuple[int, float], ...]
    memory: MemoryUse
    profile: HardwareProfile = field(repr=False, compare=False)
    model_config: ModelConfig = field(repr=False, compare=False)

    @property
    def bound(self) -> dict:
        """Which resource bounds each phase: compute / hbm / dequant / vector / link / overhead."""
        out = {"prefill": self.prefill.bound}
        if self.decode is not None:
            out["decode"] = self.decode.bound
        return out

    def ops(self) -> list[OpResult]:
        return list(self.prefill.ops) + (list(self.decode.ops) if self.decode else [])

    def per_layer(self) -> dict:
        """Time of one decoder layer per phase (all layers are identical), with its ops."""
        out = {}
        for step in (self.prefill, self.decode):
            if step is None:
                continue
            layer_ops = [o for o in step.ops if o.scope == "layer"]
            out[step.phase] = {"num_layers": self.model_config.num_layers,
                               "time_per_layer_s": sum(o.time_s for o in layer_ops),
                               "all_layers_s": sum(o.total_time_s for o in layer_ops),
                               "ops": [o.name for o in layer_ops]}
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable result; units in key names; the resolved profile goes along (``config``)."""
        steps = {}
        for step in (self.prefill, self.decode):
            if step is None:
                continue
            steps[step.phase] = {"context_len_tokens": step.context_len, "step_time_s": step.time_s,
                                 "roofline_step_time_s": step.roofline_time_s,
                                 "host_overhead_s": step.host_overhead_s, "bound": step.bound,
                                 "split": step.split(), "ops": [o.to_dict() for o in step.ops]}
        return {
            "hardware": self.hardware, "model": self.model, "scheme": self.scheme, "batch": self.batch,
            "input_len_tokens": self.input_len, "output_len_tokens": self.output_len, "tp": self.tp,
            "options": dict(self.options),
            "prefill_latency_s": self.prefill_latency_s, "time_to_first_token_s": self.prefill_latency_s,
            "decode_time_per_token_s": self.decode_time_per_token_s, "decode_total_s": self.decode_total_s,
            "e2e_latency_s": self.e2e_latency_s, "output_tokens_per_s": self.output_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s, "bound": self.bound,
            "memory": self.memory.to_dict(), "per_layer": self.per_layer(), "steps": steps,
            "decode_samples": [{"context_len_tokens": c, "step_time_s": t} for c, t in self.decode_samples],
            "config": {"profile": self.profile.to_dict(), "model": dict(self.model_config.__dict__)},
        }


_SUSTAINED: dict[int, tuple[HardwareProfile, HardwareProfile]] = {}


def sustained_profile(hw: HardwareProfile) -> HardwareProfile:
    """The profile a serving run sees: matrix efficiency curves times ``matrix_engine.sustained_rate_fraction``."""
    fraction = hw.matrix_engine.sustained_rate_fraction
    if fraction >= 1.0:
        return hw
    hit = _SUSTAINED.get(id(hw))
    if hit is not None and hit[0] is hw:
        return hit[1]
    from sim.profiles import validate_profile

    raw = copy.deepcopy(dict(hw.raw))
    me = raw["matrix_engine"]
    me["efficiency_by_flops"] = {d: [[x, y * fraction] for x, y in curve]
                                 for d, curve in me["efficiency_by_flops"].items()}
    me["sustained_rate_fraction"] = 1.0
    derived = validate_profile(raw, hw.source)
    if len(_SUSTAINED) > 64:
        _SUSTAINED.clear()
    _SUSTAINED[id(hw)] = (hw, derived)
    return derived


def simulate_step(hw: HardwareProfile, ops: list[Op], phase: str, context_len: int) -> StepResult:
    """Simulate one step's ops (memoized per distinct op) and add the host overhead."""
    results = []
    rates = RooflineRates.from_profile(hw)
    for op in ops:
        t = time_op(hw, op)
        roof = roofline_op(rates, op, hw.dequant.ops_per_weight, hw.dequant.placement)
        results.append(OpResult(phase, op.name, op.kind, op.scope, op.repeat, t.time_s, op.flops, op.bytes,
                                t.bound, t.split, roof, t.info))
    host = hw.host.step_overhead_s
    return StepResult(phase, context_len, sum(r.total_time_s for r in results) + host, host, tuple(results))


def _sample_points(first: int, last: int, samples: int) -> list[int]:
    if last - first + 1 <= samples:
        return list(range(first, last + 1))
    pts = {first + round(i * (last - first) / (samples - 1)) for i in range(samples)}
    return sorted(pts)


def simulate(hw: HardwareProfile | str, model: ModelConfig | str, *, scheme: str, batch: int, input_len: int,
             output_len: int, tp: int = 1, kv_cache_dtype: str = "bf16", decode_samples: int = 16,
             max_prefill_tokens: int | None = None, overrides: dict | None = None) -> SimulationResult:
    """Simulate a batch of ``batch`` requests of input_len prompt tokens and output_len generated tokens.

    hw: profile name or HardwareProfile (``overrides``: dotted profile keys -> values, as ``--set``);
    model: model name or ModelConfig; scheme: bf16 | fp8 | w4a16 | w4a8; tp: tensor-parallel degree (each device
    simulated, all-reduces on the scale-up link); kv_cache_dtype: bf16 | fp8; decode_samples: decode steps
    simulated exactly (others interpolated; >= output_len simulates every step); max_prefill_tokens: prefill in
    steps of at most this many tokens (whole prompts per step, at least one prompt), as serving engines bound
    their batched tokens; None prefills the whole batch in one step. The prefill latency is then the sum of the
    steps (the batch's first tokens come after the last one) and the workspace is sized for one step.
    """
    hw = resolve_profile(hw, overrides)
    profile = hw
    hw = sustained_profile(hw)
    model = load_model(model)
    s = get_scheme(scheme)
    for name, value in (("batch", batch), ("input_len", input_len), ("tp", tp), ("decode_samples", decode_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    if isinstance(output_len, bool) or not isinstance(output_len, int) or output_len < 0:
        raise ValueError(f"output_len={output_len!r}: expected a non-negative integer")
    if decode_samples < 2:
        raise ValueError("decode_samples: expected at least 2")

    if max_prefill_tokens is not None and (isinstance(max_prefill_tokens, bool) or
                                           not isinstance(max_prefill_tokens, int) or max_prefill_tokens < 1):
        raise ValueError(f"max_prefill_tokens={max_prefill_tokens!r}: expected a positive integer or None")
    seqs_per_step = batch if max_prefill_tokens is None else max(1, min(batch, max_prefill_tokens // input_len))
    full_steps, rest = divmod(batch, seqs_per_step)
    prefill = simulate_step(hw, prefill_ops(model, s, seqs_per_step, input_len, tp, kv_cache_dtype), "prefill",
                            input_len)
    prefill_total = full_steps * prefill.time_s
    if rest:
        prefill_total += simulate_step(hw, prefill_ops(model, s, rest, input_len, tp, kv_cache_dtype), "prefill",
                                       input_len).time_s
    samples: list[tuple[int, float]] = []
    decode_step = None
    decode_total = 0.0
    if output_len > 1:
        # decode step i (1..output_len-1) feeds token i and attends to input_len + i tokens
        first, last = input_len + 1, input_len + output_len - 1
        pts = _sample_points(first, last, decode_samples)
        times = {c: simulate_step(hw, decode_ops(model, s, batch, c, tp, kv_cache_dtype), "decode", c).time_s
                 for c in pts}
        samples = sorted(times.items())
        for (c0, t0), (c1, t1) in zip(samples, samples[1:]):
            # trapezoid over the integer contexts c0..c1-1 of a linear segment
            n = c1 - c0
            decode_total += n * t0 + (t1 - t0) * (n - 1) / 2.0
        decode_total += samples[-1][1]
        mid = (first + last) // 2
        decode_step = simulate_step(hw, decode_ops(model, s, batch, mid, tp, kv_cache_dtype), "decode", mid)
    n_decode = max(output_len - 1, 0)
    per_token = decode_total / n_decode if n_decode else 0.0
    e2e = prefill_total + decode_total
    extra = 0.0
    if s.dequant and hw.dequant.placement == "vector_pass":
        extra = max(n * k for n, k in model.linear_shapes().values()) / tp * s.expanded_weight_bytes_per_element
    fp = memory_footprint(model, s, batch, input_len, output_len, tp, kv_cache_dtype, extra, seqs_per_step)
    capacity = hw.memory.capacity_bytes - hw.memory.reserved_bytes
    memory = MemoryUse(fp.weights_bytes, fp.kv_cache_bytes, fp.workspace_bytes, fp.total_bytes, capacity,
                       fp.total_bytes <= capacity)
    return SimulationResult(
        hardware=hw.name, model=model.name, scheme=s.name, batch=batch, input_len=input_len, output_len=output_len,
        tp=tp, options={"kv_cache_dtype": kv_cache_dtype, "decode_samples": decode_samples,
                        "max_prefill_tokens": max_prefill_tokens, "prefill_steps": full_steps + (1 if rest else 0),
                        "dequant_placement": hw.dequant.placement, "overrides": dict(overrides or {})},
        prefill_latency_s=prefill_total, decode_time_per_token_s=per_token, decode_total_s=decode_total,
        e2e_latency_s=e2e, output_tokens_per_s=batch * output_len / e2e if e2e > 0 else math.inf,
        decode_tokens_per_s=batch / per_token if per_token else 0.0, prefill=prefill, decode=decode_step,
        decode_samples=tuple(samples), memory=memory, profile=profile, model_config=model)
