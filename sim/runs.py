"""A `simulate run`: every (profile, scheme, batch) of a request simulated, summarised, rendered and saved.

``run`` calls sim.perf.simulate; everything else here works on plain rows (dicts with units in their keys), so a
saved ``--out`` directory holds all that the tables and figures need (``plot_out_dir`` re-draws them).
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from sim.report import Column, fmt_bool, fmt_gib, fmt_ratio, format_table, read_csv, to_csv, to_json

SPLIT_KEYS = ("hbm_s", "matrix_s", "vector_s", "dequant_s", "link_s", "overhead_s")
OUT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunRequest:
    """What to simulate: the cross product of profiles x schemes x batches for one model and workload."""

    profiles: tuple[str, ...]
    model: str
    schemes: tuple[str, ...]
    batches: tuple[int, ...]
    input_len: int
    output_len: int
    tp: int = 1
    overrides: tuple[str, ...] = ()


@dataclass
class RunOutput:
    """Rows of a run. summary: one per (profile, scheme, batch); ops: one per op of the prefill step and of the
    representative decode step of each; profiles: resolved profile data by name; model: the model config."""

    request: RunRequest
    summary: list[dict]
    ops: list[dict]
    profiles: dict
    model: dict
    simulations: list[dict] = field(default_factory=list)


def run(request: RunRequest, progress: Callable[[int, int, str], None] | None = None) -> RunOutput:
    """Simulate every point of ``request``; raises ConfigError / ValueError on a bad name or value."""
    from sim.models import load_model
    from sim.perf import simulate
    from sim.profiles import load_profile, parse_overrides
    from sim.workload import get_scheme

    overrides = parse_overrides(list(request.overrides))
    for scheme in request.schemes:
        get_scheme(scheme)
    model = load_model(request.model)
    hws = {name: load_profile(name, overrides or None) for name in request.profiles}
    points = [(p, s, b) for p in request.profiles for s in request.schemes for b in request.batches]
    summary, ops, sims = [], [], []
    for i, (profile, scheme, batch) in enumerate(points, start=1):
        if progress:
            progress(i, len(points), f"{profile} {scheme} batch {batch}")
        r = simulate(hws[profile], model, scheme=scheme, batch=batch, input_len=request.input_len,
                     output_len=request.output_len, tp=request.tp)
        summary.append(summary_row(r, profile))
        key = {"profile": profile, "scheme": scheme, "batch": batch}
        ops.extend({**key, **o.to_dict()} for o in r.ops())
        d = r.to_dict()
        d.pop("config", None)
        sims.append(d)
    add_speedups(summary)
    profiles = {name: _profile_data(hw) for name, hw in hws.items()}
    return RunOutput(request, summary, ops, profiles, dict(model.__dict__), sims)


def _profile_data(hw) -> dict:
    data = hw.to_dict()
    if hw.raw is not None and "numerics" in hw.raw:
        data["numerics"] = hw.raw["numerics"]
    return data


def summary_row(r, profile: str) -> dict:
    """The headline numbers of one SimulationResult, units in the keys."""
    m = r.memory
    return {
        "profile": profile, "model": r.model, "scheme": r.scheme, "batch": r.batch, "tp": r.tp,
        "input_len_tokens": r.input_len, "output_len_tokens": r.output_len,
        "prefill_latency_s": r.prefill_latency_s, "decode_time_per_token_s": r.decode_time_per_token_s,
        "e2e_latency_s": r.e2e_latency_s, "output_tokens_per_s": r.output_tokens_per_s,
        "weights_bytes": m.weights_bytes, "kv_cache_bytes": m.kv_cache_bytes, "workspace_bytes": m.workspace_bytes,
        "total_bytes": m.total_bytes, "capacity_bytes": m.capacity_bytes, "fits": m.fits,
        "bound_prefill": r.bound.get("prefill"), "bound_decode": r.bound.get("decode"),
        "dequant_placement": r.options.get("dequant_placement"),
    }


def add_speedups(rows: list[dict], baseline: str = "bf16") -> None:
    """Add speedup_vs_bf16 (output tokens/s), prefill_speedup_vs_bf16 and decode_speedup_vs_bf16 in place."""
    base = {(r["profile"], r["batch"]): r for r in rows if r["scheme"] == baseline}
    for r in rows:
        b = base.get((r["profile"], r["batch"]))
        ok = b is not None
        r["speedup_vs_bf16"] = r["output_tokens_per_s"] / b["output_tokens_per_s"] if ok else None
        r["prefill_speedup_vs_bf16"] = b["prefill_latency_s"] / r["prefill_latency_s"] if ok else None
        r["decode_speedup_vs_bf16"] = (b["decode_time_per_token_s"] / r["decode_time_per_token_s"]
                                       if ok and r["decode_time_per_token_s"] > 0 else None)


# ------------------------------------------------------------------------------------------------ render

SUMMARY_COLUMNS = [
    Column("profile", "chip", align="<"),
    Column("scheme", "scheme", align="<"),
    Column("batch", "batch"),
    Column("prefill_latency_s", "prefill ms", lambda v: f"{v * 1e3:.2f}"),
    Column("decode_time_per_token_s", "decode ms/tok", lambda v: f"{v * 1e3:.3f}"),
    Column("output_tokens_per_s", "out tok/s", lambda v: f"{v:,.0f}"),
    Column("speedup_vs_bf16", "vs bf16", fmt_ratio),
    Column("prefill_speedup_vs_bf16", "prefill x", fmt_ratio),
    Column("decode_speedup_vs_bf16", "decode x", fmt_ratio),
    Column("weights_bytes", "weights GiB", fmt_gib),
    Column("kv_cache_bytes", "KV GiB", fmt_gib),
    Column("fits", "fits", fmt_bool),
    Column("bound_prefill", "prefill bound", align="<"),
    Column("bound_decode", "decode bound", align="<"),
]


def layer_speedup_rows(ops: Sequence[dict], profile: str, batch: int, scheme: str = "w4a8",
                       baseline: str = "bf16") -> list[dict]:
    """Per decoder-layer op: baseline and scheme time (per invocation) and speedup, for prefill and decode."""
    index = {(o["scheme"], o["phase"], o["op"]): o for o in ops
             if o["profile"] == profile and o["batch"] == batch and o["scope"] == "layer"}
    names = [o["op"] for o in ops if o["profile"] == profile and o["batch"] == batch and o["scheme"] == baseline
             and o["phase"] == "prefill" and o["scope"] == "layer"]
    rows = []
    for name in names + ["decoder layer"]:
        row = {"op": name}
        for phase in ("prefill", "decode"):
            if name == "decoder layer":
                b = sum(o["time_s"] for (s, p, _), o in index.items() if s == baseline and p == phase)
                q = sum(o["time_s"] for (s, p, _), o in index.items() if s == scheme and p == phase)
                bound = ""
            else:
                bo, qo = index.get((baseline, phase, name)), index.get((scheme, phase, name))
                if bo is None or qo is None:
                    continue
                b, q, bound = bo["time_s"], qo["time_s"], qo["bound"]
            row.update({f"{phase}_{baseline}_s": b, f"{phase}_{scheme}_s": q,
                        f"{phase}_speedup": b / q if q > 0 else None, f"{phase}_{scheme}_bound": bound})
        rows.append(row)
    return rows


def render_table(out: RunOutput, layers: bool = True) -> str:
    req = out.request
    placements = sorted({f"{r['profile']}: {r['dequant_placement']}" for r in out.summary})
    title = (f"{req.model} | {req.input_len} in / {req.output_len} out tokens per sequence | tp {req.tp} | "
             f"INT4 dequant placement {', '.join(placements)}"
             + (f" | overrides: {', '.join(req.overrides)}" if req.overrides else ""))
    parts = [format_table(out.summary, SUMMARY_COLUMNS, title)]
    if layers and "w4a8" in req.schemes and "bf16" in req.schemes:
        us = lambda v: "-" if v is None else f"{v * 1e6:.1f}"  # noqa: E731
        cols = [Column("op", "op (one decoder layer)", align="<")]
        for phase in ("prefill", "decode"):
            cols += [Column(f"{phase}_bf16_s", f"{phase} bf16 us", us),
                     Column(f"{phase}_w4a8_s", "w4a8 us", us),
                     Column(f"{phase}_speedup", "x", fmt_ratio),
                     Column(f"{phase}_w4a8_bound", "w4a8 bound", lambda v: v or "", align="<")]
        for profile in req.profiles:
            for batch in req.batches:
                rows = layer_speedup_rows(out.ops, profile, batch)
                parts.append(format_table(rows, cols, f"\nW4A8 vs BF16 per op: {profile}, batch {batch}"))
    return "\n".join(parts)


def render_csv(out: RunOutput) -> str:
    return to_csv(out.summary)


def render_json(out: RunOutput) -> str:
    return to_json(_json_doc(out))


def _json_doc(out: RunOutput, with_ops: bool = True) -> dict:
    """The JSON document of a run; without ops (they are in ops.csv) for the files of an --out directory."""
    doc = {
        "format_version": OUT_FORMAT_VERSION,
        "units": {"*_s": "seconds", "*_bytes": "bytes", "*_tokens_per_s": "output tokens per second, whole system",
                  "*_speedup*": "ratio to bf16 (higher is faster)"},
        "request": asdict(out.request),
        "summary": out.summary,
    }
    if with_ops:
        doc["simulations"] = out.simulations
    return doc


# -------------------------------------------------------------------------------------------- out dir

def write_out_dir(out: RunOutput, directory: Path) -> list[Path]:
    """Write config.json, profile_<name>.json (resolved), results.csv, results.json, ops.csv and the figures."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def put(name: str, text: str) -> None:
        path = directory / name
        path.write_text(text)
        written.append(path)

    config = {"format_version": OUT_FORMAT_VERSION, "request": asdict(out.request), "model": out.model,
              "command": sys.argv, "python": platform.python_version()}
    put("config.json", to_json(config))
    for name, data in out.profiles.items():
        put(f"profile_{Path(name).stem}.json", to_json(data))
    put("results.csv", to_csv(out.summary))
    put("results.json", to_json(_json_doc(out, with_ops=False)))
    put("ops.csv", to_csv(out.ops, _op_keys(out.ops)))
    written += plot_out_dir(directory)
    return written


def _op_keys(ops: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for o in ops:
        for k in o:
            if k not in keys:
                keys.append(k)
    return keys


def load_out_dir(directory: Path) -> tuple[dict, list[dict], list[dict], dict]:
    """(config, summary rows, op rows, profiles) read back from a `--out` directory."""
    directory = Path(directory)
    needed = ["config.json", "results.csv", "ops.csv"]
    missing = [n for n in needed if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: not a `simulate run --out` directory (missing {', '.join(missing)})")
    config = json.loads((directory / "config.json").read_text())
    summary = read_csv((directory / "results.csv").read_text())
    ops = read_csv((directory / "ops.csv").read_text())
    profiles = {p.stem[len("profile_"):]: json.loads(p.read_text()) for p in sorted(directory.glob("profile_*.json"))}
    return config, summary, ops, profiles


def plot_out_dir(directory: Path) -> list[Path]:
    """Draw every figure a run directory supports, from its saved files only."""
    from sim import plots

    config, summary, ops, profiles = load_out_dir(directory)
    req = config["request"]
    model = req["model"]
    written = []
    schemes = {r["scheme"] for r in summary}
    batches = sorted({int(r["batch"]) for r in summary})
    if {"bf16", "w4a8"} <= schemes:
        written.append(plots.plot_speedup_vs_batch(
            summary, directory / "speedup_w4a8_vs_bf16.png",
            title=f"W4A8 over BF16 speedup, {model}, {req['input_len']} in / {req['output_len']} out, tp {req['tp']}"))
    for profile, data in profiles.items():
        prow = [r for r in summary if Path(str(r["profile"])).stem == profile]
        pops = [o for o in ops if Path(str(o["profile"])).stem == profile]
        if not prow:
            continue
        written.append(plots.plot_memory_vs_batch(
            prow, directory / f"memory_{profile}.png",
            title=f"Memory per device, {model} on {profile} ({req['input_len']}+{req['output_len']} tokens)"))
        b0 = batches[0]
        placed = [o for o in pops if int(o["batch"]) == b0 and o["scope"] == "layer"]
        for o in placed:
            o["bytes"] = o["hbm_bytes"]
        written.append(plots.plot_roofline(
            placed, data["matrix_engine"]["peak_flops_per_s"], data["memory"]["hbm_bandwidth_bytes_per_s"],
            directory / f"roofline_{profile}.png",
            title=f"Roofline of {profile}: decoder-layer ops of {model}, batch {b0}"))
        for phase in ("prefill", "decode"):
            panels = {}
            for scheme in [s for s in ("bf16", "fp8", "w4a16", "w4a8") if s in schemes]:
                panels[scheme] = [o for o in pops if o["scheme"] == scheme and o["phase"] == phase
                                  and int(o["batch"]) == b0 and o["scope"] == "layer"]
            panels = {k: v for k, v in panels.items() if v}
            if panels:
                written.append(plots.plot_time_breakdown(
                    panels, directory / f"breakdown_{profile}_{phase}.png",
                    title=f"{profile}, {model}, {phase}, batch {b0}: one decoder layer by resource"))
    return written
