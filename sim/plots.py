"""Figures drawn from result tables (lists of row dicts, as written to CSV/JSON), never from live simulations.

Every function takes rows and a path, draws one PNG with matplotlib's Agg backend, and returns the path. Because
they read only saved rows, a `--out` directory can be re-plotted without re-running anything.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CATEGORY_COLORS = {
    "hbm_s": "#4C72B0", "matrix_s": "#DD8452", "dequant_s": "#C44E52", "vector_s": "#8172B3",
    "link_s": "#55A868", "overhead_s": "#937860",
}
CATEGORY_LABELS = {
    "hbm_s": "HBM transfer", "matrix_s": "matrix engine", "dequant_s": "INT4 dequant", "vector_s": "vector engine",
    "link_s": "scale-up link", "overhead_s": "launch / fixed overhead",
}
MARKERS = "osD^vP*X"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedup_vs_batch(rows: Iterable[Mapping], path: Path, *, scheme: str = "w4a8", baseline: str = "bf16",
                          title: str | None = None) -> Path:
    """Speedup of ``scheme`` over ``baseline`` against batch, one line per chip, prefill and decode panels.

    rows: dicts with profile, scheme, batch, prefill_latency_s, decode_time_per_token_s (one per point).
    """
    times: dict[tuple, dict] = {}
    for r in rows:
        times[(r["profile"], r["scheme"], int(r["batch"]))] = r
    chips = sorted({k[0] for k in times})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, (key, label) in zip(axes, (("prefill_latency_s", "prefill"), ("decode_time_per_token_s", "decode"))):
        for i, chip in enumerate(chips):
            batches = sorted(b for (c, s, b) in times if c == chip and s == scheme and (c, baseline, b) in times)
            if not batches:
                continue
            speedup = [times[(chip, baseline, b)][key] / times[(chip, scheme, b)][key] for b in batches]
            ax.plot(batches, speedup, marker=MARKERS[i % len(MARKERS)], label=chip)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (sequences)")
        ax.set_ylabel(f"{scheme.upper()} speedup over {baseline.upper()} (x)")
        ax.set_title(f"{label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"{scheme.upper()} vs {baseline.upper()}: speedup against batch")
    return _save(fig, path)


def plot_roofline(ops: Sequence[Mapping], peaks: Mapping[str, float], hbm_bandwidth_bytes_per_s: float, path: Path,
                  *, title: str) -> Path:
    """Ops placed on a roofline: arithmetic intensity (FLOP/byte) against achieved FLOP/s.

    ops: dicts with name, flops (per invocation), bytes (minimum HBM bytes), time_s (per invocation), and
    optionally scheme and phase for the legend. peaks: matrix peak FLOP/s by dtype name.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    pts = [o for o in ops if o.get("flops", 0) > 0 and o.get("bytes", 0) > 0 and o.get("time_s", 0) > 0]
    if pts:
        lo = min(o["flops"] / o["bytes"] for o in pts) / 2
        hi = max(o["flops"] / o["bytes"] for o in pts) * 2
    else:
        lo, hi = 0.1, 1e4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for dtype, peak in sorted(peaks.items()):
        ax.plot(xs, [min(peak, x * hbm_bandwidth_bytes_per_s) for x in xs], lw=1.5,
                label=f"roof: {dtype} {peak / 1e12:.0f} TFLOP/s, HBM {hbm_bandwidth_bytes_per_s / 1e12:.2f} TB/s")
    groups: dict[str, list] = defaultdict(list)
    for o in pts:
        groups[" ".join(str(o[k]) for k in ("scheme", "phase") if o.get(k))].append(o)
    for i, (label, group) in enumerate(sorted(groups.items())):
        ax.scatter([o["flops"] / o["bytes"] for o in group], [o["flops"] / o["time_s"] for o in group],
                   marker=MARKERS[i % len(MARKERS)], s=28, label=label or "ops", alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel("achieved (FLOP/s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_time_breakdown(panels: Mapping[str, Sequence[Mapping]], path: Path, *, title: str) -> Path:
    """Stacked bars of one decoder layer's ops by resource (hbm_s, matrix_s, dequant_s, ...), in µs.

    panels: panel title (e.g. the scheme) -> ops, each a dict with ``op`` (bar name) and the category keys of
    CATEGORY_COLORS (seconds per invocation). Panels share the y axis so that schemes compare at a glance.
    """
    all_ops = [o for ops in panels.values() for o in ops]
    cats = [c for c in CATEGORY_COLORS if any(float(o.get(c, 0) or 0) for o in all_ops)]
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.5, 4.8), sharey=True, squeeze=False)
    for ax, (name, ops) in zip(axes[0], panels.items()):
        labels = [str(o["op"]) for o in ops]
        bottom = [0.0] * len(ops)
        for c in cats:
            values = [float(o.get(c, 0.0) or 0.0) * 1e6 for o in ops]
            ax.bar(labels, values, bottom=bottom, color=CATEGORY_COLORS[c], label=CATEGORY_LABELS[c])
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{name}: {sum(bottom):.0f} µs / layer", fontsize=10)
        ax.tick_params(axis="x", rotation=70, labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("time per layer invocation (µs)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_memory_vs_batch(rows: Iterable[Mapping], path: Path, *, title: str) -> Path:
    """Device memory (weights + KV cache + workspace) against batch per scheme, with the usable capacity line.

    rows: dicts with scheme, batch, weights_bytes, kv_cache_bytes, workspace_bytes, capacity_bytes.
    """
    by_scheme: dict[str, list] = defaultdict(list)
    capacity = None
    for r in rows:
        by_scheme[r["scheme"]].append(r)
        capacity = r.get("capacity_bytes", capacity)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, (scheme, group) in enumerate(sorted(by_scheme.items())):
        group = sorted(group, key=lambda r: int(r["batch"]))
        total = [(r["weights_bytes"] + r["kv_cache_bytes"] + r["workspace_bytes"]) / 2**30 for r in group]
        ax.plot([int(r["batch"]) for r in group], total, marker=MARKERS[i % len(MARKERS)], label=scheme)
    if capacity:
        ax.axhline(capacity / 2**30, color="black", ls="--", lw=1, label="usable capacity")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (sequences)")
    ax.set_ylabel("memory per device (GiB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_emulation_error(rows: Iterable[Mapping], path: Path, *, title: str, metric: str = "sqnr_db") -> Path:
    """Per-layer error of the bit-exact emulated layer against the float reference, one line per chip.

    rows: dicts with layer (name or index), profile, and ``metric`` (default SQNR in dB).
    """
    by_chip: dict[str, list] = defaultdict(list)
    for r in rows:
        by_chip[r["profile"]].append(r)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    layers: list = []
    for r in rows:
        if r["layer"] not in layers:
            layers.append(r["layer"])
    pos = {name: i for i, name in enumerate(layers)}
    for i, (chip, group) in enumerate(sorted(by_chip.items())):
        ax.plot([pos[r["layer"]] for r in group], [float(r[metric]) for r in group], marker=MARKERS[i % len(MARKERS)],
                ls="-", lw=0.8, ms=4, label=chip)
    if len(layers) <= 40:
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=75, fontsize=6)
    ax.set_xlabel("layer" if len(layers) <= 40 else "linear, in model order (decoder layer by layer)")
    ax.set_ylabel("SQNR vs float reference (dB)" if metric == "sqnr_db" else metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
