"""Capacity planning: the fewest devices, and the batch, that meet a traffic target and a latency target.

For each (chip, scheme) the planner tries every tensor-parallel degree ``tp``. One replica is ``tp`` devices serving
requests in static batches: a batch of ``b`` prompts is prefilled together (its time is the time to first token),
then decoded for ``output_len`` steps (the mean step time is the time per output token). A replica therefore
delivers ``b * output_len / (prefill_s + output_len * tpot_s)`` output tokens/s. The largest batch that fits in
memory (weights + KV cache for ``input_len + output_len`` tokens + workspace) and meets both latency limits gives
the replica's best throughput; the number of replicas follows from the target, and the plan with the fewest devices
wins (ties: the higher throughput per device).

Latency and throughput are monotone in the batch in this model (a larger batch never lowers a step's time), so the
largest feasible batch is found by bisection over a batch grid instead of simulating every batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_PROFILES = ("gaudi2", "gaudi3", "h100", "h200")
DEFAULT_SCHEMES = ("bf16", "fp8", "w4a8")
DEFAULT_TP = (1, 2, 4, 8)
BATCH_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


@dataclass(frozen=True)
class CapacityTarget:
    """What the deployment must deliver. Give output_tokens_per_s, or requests_per_s (then tokens/s follow)."""

    input_len: int
    output_len: int
    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None

    def __post_init__(self) -> None:
        if (self.output_tokens_per_s is None) == (self.requests_per_s is None):
            raise ValueError("CapacityTarget: give exactly one of output_tokens_per_s and requests_per_s")
        for name in ("input_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CapacityTarget.{name}={value!r}: expected a positive integer")
        for name in ("ttft_s", "tpot_s", "output_tokens_per_s", "requests_per_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"CapacityTarget.{name}={value!r}: expected a positive number")

    @property
    def required_tokens_per_s(self) -> float:
        if self.output_tokens_per_s is not None:
            return float(self.output_tokens_per_s)
        return float(self.requests_per_s) * self.output_len

    def to_dict(self) -> dict:
        out = asdict(self)
        out["required_output_tokens_per_s"] = self.required_tokens_per_s
        return out


@dataclass(frozen=True)
class ReplicaPoint:
    """One simulated (tp, batch) operating point of a replica."""

    tp: int
    batch: int
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    memory_total_bytes: float
    memory_capacity_bytes: float
    fits: bool
    bound_decode: str

    def meets(self, target: CapacityTarget) -> bool:
        return self.fits and self.ttft_s <= target.ttft_s and self.tpot_s <= target.tpot_s


@dataclass(frozen=True)
class CapacityPlan:
    """The answer for one (profile, scheme): ``point`` is None when no tp/batch meets the target."""

    profile: str
    scheme: str
    model: str
    point: ReplicaPoint | None
    replicas: int
    devices: int
    reason: str

    @property
    def feasible(self) -> bool:
        return self.point is not None

    def to_row(self) -> dict:
        p = self.point
        return {
            "profile": self.profile, "scheme": self.scheme, "model": self.model, "feasible": self.feasible,
            "devices": self.devices if p else None, "tp": p.tp if p else None, "replicas": self.replicas if p else None,
            "batch_per_replica": p.batch if p else None,
            "ttft_s": p.ttft_s if p else None, "tpot_s": p.tpot_s if p else None,
            "replica_output_tokens_per_s": p.tokens_per_s if p else None,
            "system_output_tokens_per_s": p.tokens_per_s * self.replicas if p else None,
            "memory_per_device_bytes": p.memory_total_bytes if p else None,
            "memory_capacity_bytes": p.memory_capacity_bytes if p else None,
            "bound_decode": p.bound_decode if p else None,
            "reason": self.reason,
        }


SimulatePoint = Callable[[str, str, int, int], ReplicaPoint]


def make_point_simulator(model: str, target: CapacityTarget, overrides: Sequence[str] = ()) -> Callable:
    """(profile, scheme, tp, batch) -> ReplicaPoint, through sim.perf.simulate (profiles loaded once each)."""
    from sim.perf import simulate
    from sim.profiles import load_profile, parse_overrides

    parsed = parse_overrides(list(overrides))
    loaded: dict[str, object] = {}

    def point(profile: str, scheme: str, tp: int, batch: int) -> ReplicaPoint:
        if profile not in loaded:
            loaded[profile] = load_profile(profile, parsed or None)
        r = simulate(loaded[profile], model, scheme=scheme, batch=batch, input_len=target.input_len,
                     output_len=target.output_len, tp=tp)
        return ReplicaPoint(tp=tp, batch=batch, ttft_s=r.prefill_latency_s, tpot_s=r.decode_time_per_token_s,
                            tokens_per_s=r.output_tokens_per_s, memory_total_bytes=r.memory.total_bytes,
                            memory_capacity_bytes=r.memory.capacity_bytes, fits=r.memory.fits,
                            bound_decode=r.bound.get("decode", ""))

    return point


def best_replica_point(point: Callable[[int], ReplicaPoint], target: CapacityTarget,
                       grid: Sequence[int] = BATCH_GRID) -> tuple[ReplicaPoint | None, str]:
    """The feasible point with the largest batch on ``grid`` (bisection: feasibility is monotone in the batch)."""
    first = point(grid[0])
    if not first.fits:
        return None, "weights + KV cache do not fit at batch 1"
    if first.ttft_s > target.ttft_s:
        return None, f"time to first token {first.ttft_s * 1e3:.0f} ms > limit at batch 1"
    if first.tpot_s > target.tpot_s:
        return None, f"time per output token {first.tpot_s * 1e3:.1f} ms > limit at batch 1"
    lo, hi = 0, len(grid) - 1
    best = first
    last = point(grid[hi])
    if last.meets(target):
        return last, "largest batch on the grid"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = point(grid[mid])
        if p.meets(target):
            lo, best = mid, p
        else:
            hi = mid
    return best, "largest batch meeting memory and latency"


def plan_one(profile: str, scheme: str, model: str, target: CapacityTarget, tp_options: Sequence[int],
             max_devices: int, point: Callable[[str, str, int, int], ReplicaPoint]) -> CapacityPlan:
    """Fewest devices for one (profile, scheme) over the tp options."""
    from sim.models import load_model

    cfg = load_model(model)
    candidates: list[tuple[int, float, ReplicaPoint, int]] = []
    reasons = []
    for tp in sorted(set(tp_options)):
        if cfg.num_attention_heads % tp or cfg.intermediate_size % tp:
            reasons.append(f"tp={tp}: does not divide the heads/FFN")
            continue
        best, why = best_replica_point(lambda b: point(profile, scheme, tp, b), target)
        if best is None:
            reasons.append(f"tp={tp}: {why}")
            continue
        replicas = math.ceil(target.required_tokens_per_s / best.tokens_per_s)
        devices = replicas * tp
        candidates.append((devices, -best.tokens_per_s / tp, best, replicas))
    if not candidates:
        return CapacityPlan(profile, scheme, model, None, 0, 0, "; ".join(reasons) or "no tp option")
    devices, _, best, replicas = min(candidates, key=lambda c: (c[0], c[1]))
    if devices > max_devices:
        return CapacityPlan(profile, scheme, model, None, 0, 0, f"needs {devices} devices > --max-devices")
    return CapacityPlan(profile, scheme, model, best, replicas, devices, "ok")


def plan(model: str, *, profiles: Sequence[str], schemes: Sequence[str], target: CapacityTarget,
         tp_options: Sequence[int] = DEFAULT_TP, max_devices: int = 1024, overrides: Sequence[str] = (),
         progress: Callable[[int, int, str], None] | None = None,
         point: Callable[[str, str, int, int], ReplicaPoint] | None = None) -> list[CapacityPlan]:
    """A CapacityPlan per (profile, scheme), in the order given."""
    point = point or make_point_simulator(model, target, overrides)
    plans = []
    total = len(profiles) * len(schemes)
    for i, (profile, scheme) in enumerate(((p, s) for p in profiles for s in schemes), start=1):
        if progress:
            progress(i, total, f"capacity {profile} {scheme}")
        plans.append(plan_one(profile, scheme, model, target, tp_options, max_devices, point))
    return plans


def render_table(plans: Sequence[CapacityPlan], target: CapacityTarget, model: str) -> str:
    from sim.report import Column, fmt_gib, format_table

    rows = [p.to_row() for p in plans]
    for row in rows:
        row["ttft_ms"] = None if row["ttft_s"] is None else row["ttft_s"] * 1e3
        row["tpot_ms"] = None if row["tpot_s"] is None else row["tpot_s"] * 1e3
    dash = lambda f: (lambda v: "-" if v is None else f(v))  # noqa: E731
    cols = [
        Column("profile", "chip", align="<"), Column("scheme", "scheme", align="<"),
        Column("devices", "devices", dash(str)), Column("tp", "tp", dash(str)),
        Column("replicas", "replicas", dash(str)), Column("batch_per_replica", "batch", dash(str)),
        Column("ttft_ms", "TTFT ms", dash(lambda v: f"{v:.0f}")),
        Column("tpot_ms", "TPOT ms", dash(lambda v: f"{v:.1f}")),
        Column("system_output_tokens_per_s", "out tok/s", dash(lambda v: f"{v:,.0f}")),
        Column("memory_per_device_bytes", "mem GiB/dev", dash(fmt_gib)),
        Column("reason", "note", align="<"),
    ]
    title = (f"Capacity plan: {model}, {target.required_tokens_per_s:,.0f} output tok/s, "
             f"{target.input_len} in / {target.output_len} out, TTFT <= {target.ttft_s * 1e3:.0f} ms, "
             f"TPOT <= {target.tpot_s * 1e3:.0f} ms")
    return format_table(rows, cols, title)


def write_out_dir(plans: Sequence[CapacityPlan], target: CapacityTarget, model: str, out: Path) -> list[Path]:
    """capacity.csv and capacity.json (with the target) in ``out``."""
    from sim.report import to_csv, to_json

    out.mkdir(parents=True, exist_ok=True)
    rows = [p.to_row() for p in plans]
    csv_path = out / "capacity.csv"
    csv_path.write_text(to_csv(rows))
    json_path = out / "capacity.json"
    json_path.write_text(to_json({"model": model, "target": target.to_dict(), "plans": rows}))
    return [csv_path, json_path]
