"""Hold the performance model to the GPU benchmark: sim.perf's predicted GEMM time next to each measured one.

Reads ``results/gpu/bench_<card>.csv`` (scripts/bench_gpu.py) and predicts every row with
``sim.perf.gemm_timing(profile, m, n, k, scheme)``: bf16 -> "bf16", fp8 -> "fp8", w4a8_fused -> "w4a8" (the profile's
dequant placement ``fused``), w4a8_unfused -> "w4a8" with ``dequant.placement=vector_pass`` (expand, then GEMM).
Nothing here is fitted: the profiles' curves come from their own calibration data (results/perf/), and the W4A8
measurements are used only as held-out points. Reports, per scheme, the signed and absolute errors by M range,
and per shape the crossover M where W4A8 stops beating FP8 (measured vs predicted, on the benchmark's M grid).

    python scripts/validate_perf_on_gpu.py results/gpu/bench_h200.csv [--profile h200] [--out results/gpu/]
        [--set dequant.ops_per_weight.fp8=20.5 --label h200_whatif]   # what-if overrides
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The model has one fused-W4A8 kernel per profile; both fused variants (lut = v3, v2) are held to it.
SCHEME_OF = {"bf16": ("bf16", None), "fp8": ("fp8", None), "w4a8_fused": ("w4a8", None),
             "w4a8_fused_v2": ("w4a8", None),
             "w4a8_unfused": ("w4a8", {"dequant.placement": "vector_pass"})}
M_RANGES = (("decode M<=16", 1, 16), ("M=64", 17, 64), ("M 256-4096", 65, 1 << 30))


def profile_for_card(card: str) -> str:
    if "H200" in card:
        return "h200"
    if "H100" in card:
        return "h100"
    raise SystemExit(f"card {card!r}: pass --profile (no default profile for it)")


def load_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("latency_s") and math.isfinite(float(r["latency_s"]))]
    if not rows:
        raise SystemExit(f"{path}: no measured rows")
    return rows


def predict_rows(rows: list[dict], profile: str, overrides: dict) -> list[dict]:
    from sim.perf.gemm import gemm_timing
    from sim.perf.ops import resolve_profile

    cache = {}
    out = []
    for r in rows:
        scheme, extra = SCHEME_OF[r["scheme"]]
        key = tuple(sorted((extra or {}).items()))
        if key not in cache:
            cache[key] = resolve_profile(profile, {**overrides, **(extra or {})} or None)
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        t = gemm_timing(cache[key], m, n, k, scheme)
        measured = float(r["latency_s"])
        out.append({"model": r["model"], "layer": r["layer"], "scheme": r["scheme"], "m": m, "n": n, "k": k,
                    "measured_s": measured, "predicted_s": t.time_s, "error": t.time_s / measured - 1.0,
                    "bound": t.bound})
    return out


def crossover(rows: list[dict], key: str) -> dict:
    """Per (model, layer): the smallest M of the grid where w4a8_fused is no faster than fp8 (None: never)."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["layer"], r["m"])][r["scheme"]] = r[key]
    res = {}
    for (model, layer, m), v in sorted(by.items(), key=lambda kv: kv[0]):
        if "w4a8_fused" in v and "fp8" in v:
            res.setdefault((model, layer), None)
            if res[(model, layer)] is None and v["w4a8_fused"] >= v["fp8"]:
                res[(model, layer)] = m
    return res


def summarize(pred: list[dict]) -> list[dict]:
    out = []
    for scheme in SCHEME_OF:
        for label, lo, hi in M_RANGES:
            errs = [p["error"] for p in pred if p["scheme"] == scheme and lo <= p["m"] <= hi]
            if errs:
                out.append({"scheme": scheme, "m_range": label, "points": len(errs),
                            "mean_signed_error": sum(errs) / len(errs),
                            "mean_abs_error": sum(abs(e) for e in errs) / len(errs),
                            "max_abs_error": max(abs(e) for e in errs)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_csv", type=Path)
    ap.add_argument("--profile", default=None, help="hardware profile (default: from the card name)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="profile override for a what-if run (sim.profiles syntax)")
    ap.add_argument("--out", type=Path, default=None, help="write validation_<label>.csv and .md here")
    ap.add_argument("--label", default=None, help="file label (default: the profile name)")
    args = ap.parse_args(argv)
    from sim.profiles import parse_overrides

    rows = load_rows(args.bench_csv)
    profile = args.profile or profile_for_card(rows[0]["card"])
    overrides = parse_overrides(args.set) if args.set else {}
    pred = predict_rows(rows, profile, overrides)
    summary = summarize(pred)
    cm, cp = crossover(pred, "measured_s"), crossover(pred, "predicted_s")
    grid = sorted({p["m"] for p in pred})

    def step(m):
        return len(grid) if m is None else grid.index(m)
    tag = profile + ("+" + "+".join(args.set) if args.set else "")
    lines = [f"# sim.perf vs GPU measurements: {rows[0]['card']} (driver {rows[0]['driver']}, torch "
             f"{rows[0]['torch']}, triton {rows[0]['triton']}), profile `{tag}`", "",
             f"Measurements: `{args.bench_csv}` ({len(rows)} rows, {rows[0]['date']}). Predictions: "
             f"`sim.perf.gemm_timing`; nothing fitted here, W4A8 rows held out of every calibration. "
             f"error = predicted / measured - 1.", "",
             "| scheme | M range | points | mean signed error | mean abs error | max abs error |", "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['scheme']} | {s['m_range']} | {s['points']} | {s['mean_signed_error']:+.1%} | "
                     f"{s['mean_abs_error']:.1%} | {s['max_abs_error']:.1%} |")
    lines += ["", "Crossover: smallest M of the grid where the fused W4A8 kernel is no faster than FP8 cuBLAS "
              "(`never` = W4A8 faster at every M; `1` = slower already at M = 1).", "",
              "| model | layer | measured | predicted | steps apart |", "|---|---|---|---|---|"]
    for key in sorted(cm):
        a, b = cm[key], cp.get(key)
        lines.append(f"| {key[0]} | {key[1]} | {a if a is not None else 'never'} | "
                     f"{b if b is not None else 'never'} | {abs(step(a) - step(b))} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        safe = args.label or profile
        with open(args.out / f"validation_{safe}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(pred[0]))
            w.writeheader()
            for p in pred:
                w.writerow({k: (f"{v:.6e}" if isinstance(v, float) else v) for k, v in p.items()})
        (args.out / f"validation_{safe}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
