"""Hold the performance model to the GPU benchmark: sim.perf's predicted GEMM time next to each measured one.

Reads ``results/gpu/bench_<card>.csv`` (scripts/bench_gpu.py) and predicts every row: bf16 / fp8 cuBLAS rows with
``sim.perf.gemm_timing(profile, m, n, k, scheme)``, w4a8_unfused as what scripts/bench_gpu.py runs for it: the
chain of torch eager kernels of ``dpq.torch_backend.expanded_weight_values`` (``UNFUSED_TORCH_KERNELS``, each a
streaming kernel of the profile, ``sim.perf.gemm.streaming_kernels_time``) and the FP8 cuBLAS GEMM; w4a8_expand
(the prefill path) as one such streaming kernel (reads the variant's bytes per weight, writes 1 byte per weight)
and the FP8 cuBLAS GEMM; and every fused
Triton row (w4a8_fused*, fp8_triton) with the structure model
``sim.perf.fused_kernel.fused_gemm_timing`` on the card's ``<profile>-triton-w4a8`` profile, given the structure of
the configuration that row actually ran: its tile/split/warps/stages (CSV columns, else the ``config`` text), the
registers and shared memory (CSV columns, else the compiled kernel) and the main loop's SASS instructions per
thread by pipe (scripts/fused_kernel_structure.py on the dpq/kernels code of the commit that added the CSV, or
``--kernel-commit``; cached in results/gpu/fused_kernel_structure.csv).
Nothing here is fitted: the profiles' curves come from their own calibration data (results/perf/), and the W4A8
measurements are used only as held-out points. Reports, per scheme, the signed and absolute errors by M range,
and per shape the crossover M where W4A8 stops beating FP8 (measured vs predicted, on the benchmark's M grid).

    python scripts/validate_perf_on_gpu.py results/gpu/bench_h200.csv [--profile h200] [--out results/gpu/]
        [--set dequant.ops_per_weight.fp8=20.5 --label h200_whatif]   # what-if overrides
    python scripts/validate_perf_on_gpu.py --predict v5 --profile h100 --kernel-commit bb65b87 --out results/gpu
        # a kernel variant's time on the bench grid from its structure alone (its heuristic configuration)
    python scripts/validate_perf_on_gpu.py --layer-csv results/gpu/layer_h100_pdl1.csv --kernel-commit 4e90782
        # whole decoder layers (bench_gpu.py --layer-chain): each the sum of its four GEMMs' predictions, a GEMM
        # predicted as a bench row of its scheme and configuration (pdl rows as without pdl: not in the model);
        # writes validation_<stem>_layer.csv/.md next to the CSV (or to --out); combines with a bench CSV
    python scripts/validate_perf_on_gpu.py --tuning-csv results/gpu/tuning_h100_s5small.csv --kernel-commit 6b83b15
        # every configuration a sweep timed, and the measured time of the one the model ranks fastest
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

SCHEME_OF = {"bf16": ("bf16", None), "fp8": ("fp8", None), "w4a8_fused": ("w4a8", None),
             "w4a8_fused_v6": ("w4a8", None),
             "w4a8_fused_v5": ("w4a8", None), "w4a8_fused_v4": ("w4a8", None), "w4a8_fused_v3": ("w4a8", None),
             "w4a8_fused_v2": ("w4a8", None), "fp8_triton": ("fp8", None),
             "w4a8_fused_default": ("w4a8", None), "w4a8_fused_rule": ("w4a8", None),
             "w4a8_fused_reduce": ("w4a8", None),
             "w4a8_fused_v5old": ("w4a8", None),
             "w4a8_unfused": ("fp8", None),  # w4a8_unfused: the FP8 GEMM after the torch expansion chain (below)
             "w4a8_expand": ("fp8", None),  # the prefill path: the FP8 GEMM after one expansion kernel (below)
             # the default configuration with launch changes: dependent launch (the structure's dependent_launch,
             # from the row's pdl column; the v4/v5 kernels' is not modelled), and Triton's wgmma pipelining
             # without the per-step wait (not seen by the structure model: predicted as the default)
             "w4a8_fused_pdl": ("w4a8", None), "w4a8_fused_pdl_late": ("w4a8", None),
             "w4a8_fused_nowait": ("w4a8", None), "w4a8_fused_nopolicy": ("w4a8", None),
             "w4a8_fused_deep": ("w4a8", None), "w4a8_fused_pdl_deep": ("w4a8", None),
             "w4a8_fused_pdl_deep_reduce": ("w4a8", None), "w4a8_fused_v6_pdl": ("w4a8", None)}
# The kernels scripts/bench_gpu.py's w4a8_unfused path launches per call before its torch._scaled_mm (the torch
# profiler's list, results/gpu/probe_unfused_ops_h100.csv): dpq.torch_backend.expanded_weight_values on uint8
# codes (n, k/2), float32 scales and uint8 zeros (n, k/128), then the FP8 cast. (name, read bytes, write bytes)
# as multiples of W = n*k weights and G = n*k/128 groups; the intermediates are int32/float32 (4 bytes).
UNFUSED_TORCH_KERNELS = (
    ("codes uint8 -> int32", 0.5, 0, 2.0, 0),          # c = codes.to(int32): n x k/2 elements
    ("c & 0x0F", 2.0, 0, 2.0, 0),
    ("c >> 4", 2.0, 0, 2.0, 0),
    ("stack (cat) -> q int32", 4.0, 0, 4.0, 0),
    ("zeros uint8 -> int32", 0, 1.0, 0, 4.0),
    ("repeat_interleave z (int32)", 0, 4.0, 4.0, 0),
    ("repeat_interleave s (float32)", 0, 4.0, 4.0, 0),
    ("q - z (int32)", 8.0, 0, 4.0, 0),
    ("int32 -> float32", 4.0, 0, 4.0, 0),
    ("* s (float32)", 8.0, 0, 4.0, 0),
    ("clamp_ (float32)", 4.0, 0, 4.0, 0),
    ("float32 -> float8_e4m3fn", 4.0, 0, 1.0, 0),
)


def unfused_kernels(n: int, k: int) -> list[tuple[str, float, float]]:
    """(name, read bytes, write bytes) of each torch kernel of the w4a8_unfused expansion of an n x k weight."""
    w, g = float(n) * k, float(n) * k / GROUP_SIZE
    return [(name, rw * w + rg * g, ww * w + wg * g) for name, rw, rg, ww, wg in UNFUSED_TORCH_KERNELS]
# bytes per weight each kernel variant streams (dpq/kernels/w4a8_triton.py): INT4 codes 0.5 + a 16-byte FP8 table
# per (group of 128, row) (v3 "lut", v4); + float32 scale and uint8 zero per group (v2; v5, which builds the tables
# in the loop from them); FP8 weights (fp8)
WEIGHT_BYTES = {"v6": 0.5 + 5 / 128, "v5": 0.5 + 5 / 128, "v4": 0.5 + 16 / 128, "lut": 0.5 + 16 / 128,
                "v2": 0.5 + 5 / 128, "fp8": 1.0}
M_RANGES = (("decode M<=16", 1, 16), ("M 17-64", 17, 64), ("M 65-4096", 65, 1 << 30))
GROUP_SIZE = 128
STRUCTURE_CACHE = ROOT / "results" / "gpu" / "fused_kernel_structure.csv"
STRUCTURE_FIELDS = ["kernel_commit", "variant", "block_n", "block_t", "num_warps", "num_stages", "groups_per_step",
                    "registers_per_thread", "shared_bytes_per_program", "loop_instructions_per_thread",
                    "fp32_instructions", "int_instructions", "conversion_instructions", "uniform_instructions",
                    "shared_instructions", "other_instructions", "shared_wavefronts_per_warp", "mma_instructions",
                    "waited_mma_instructions", "register_a_mma_instructions", "mma_macs_per_instruction"]


def default_variant_at(commit: str | None) -> str | None:
    """DEFAULT_VARIANT of dpq/kernels/w4a8_triton.py at ``commit`` (None if it cannot be read)."""
    import re
    import subprocess

    if not commit:
        return None
    src = subprocess.run(["git", "show", f"{commit}:dpq/kernels/w4a8_triton.py"], capture_output=True, text=True,
                         cwd=ROOT).stdout
    hit = re.search(r'^DEFAULT_VARIANT\s*=\s*"(\w+)"', src, re.M)
    return hit.group(1) if hit else None


def variants_of(schemes: set[str], default_variant: str | None = None) -> dict[str, str]:
    """Which kernel variant each fused scheme of a bench CSV ran (the naming of scripts/bench_gpu.py by version;
    rows that carry a ``variant`` column override this per row). default_variant: the kernel module's
    DEFAULT_VARIANT at the measured commit, which plain ``w4a8_fused`` ran once the variants got their own schemes
    and until the default became per card (``default_variant_for``, 637039f); benches since then write the variant
    each row ran, which ``variants_used`` and the predictions take."""
    if schemes & {"w4a8_fused_v6", "w4a8_fused_v5", "w4a8_fused_v4", "w4a8_fused_default", "w4a8_fused_rule",
                  "w4a8_fused_v5old"}:
        out = {"w4a8_fused_v6": "v6", "w4a8_fused_v5": "v5", "w4a8_fused_v4": "v4", "w4a8_fused_v3": "lut",
               "w4a8_fused_v2": "v2", "fp8_triton": "fp8", "w4a8_fused_v5old": "v5", "w4a8_fused_v6_pdl": "v6"}
        out["w4a8_fused"] = default_variant or "v4"
        for same in ("w4a8_fused_default", "w4a8_fused_rule", "w4a8_fused_reduce", "w4a8_fused_pdl",
                     "w4a8_fused_pdl_late", "w4a8_fused_nowait", "w4a8_fused_nopolicy", "w4a8_fused_deep",
                     "w4a8_fused_pdl_deep", "w4a8_fused_pdl_deep_reduce"):
            out[same] = out["w4a8_fused"]
        return out
    if "w4a8_fused_v3" in schemes or "fp8_triton" in schemes:
        return {"w4a8_fused": "v4", "w4a8_fused_v3": "lut", "w4a8_fused_v2": "v2", "fp8_triton": "fp8"}
    if "w4a8_fused_v2" in schemes:
        return {"w4a8_fused": "lut", "w4a8_fused_v2": "v2"}
    return {"w4a8_fused": "v2"}  # bench_h200.csv, before the lut kernel


def variants_used(rows: list[dict], default_variant: str | None = None) -> dict[str, str]:
    """Fused scheme -> the kernel variant(s) its rows are predicted with ('/'-joined if several): each row's
    ``variant`` column where the bench wrote one (since the per-card default, plain ``w4a8_fused`` and
    ``w4a8_fused_default`` run the card's variant, not DEFAULT_VARIANT), else ``variants_of``."""
    base = variants_of({r["scheme"] for r in rows}, default_variant)
    used: dict[str, set[str]] = {}
    for r in rows:
        if r["scheme"] in base:
            used.setdefault(r["scheme"], set()).add(r.get("variant") or base[r["scheme"]])
    return {scheme: "/".join(sorted(v)) for scheme, v in used.items()}


def row_config(r: dict) -> dict:
    """block_n, block_t, split_k, num_warps, num_stages, groups_per_step, reduce_in_kernel (split-K parts summed
    inside the kernel, no second kernel) and pdl (programmatic dependent launch) of the configuration a row ran."""
    import re

    cfg = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", r.get("config") or "")}
    for key in ("block_n", "block_t", "split_k", "num_warps", "num_stages", "groups_per_step"):
        if r.get(key):
            cfg[key] = int(r[key])
    cfg.setdefault("groups_per_step", 1)
    cfg["reduce_in_kernel"] = (r.get("reduce_in_kernel") or "").lower() == "true" or \
        "reduce_in_kernel=True" in (r.get("config") or "")
    cfg["pdl"] = (r.get("pdl") or "").lower() == "true" or "pdl=True" in (r.get("config") or "")
    return cfg


def load_structures() -> dict:
    if not STRUCTURE_CACHE.exists():
        return {}
    with open(STRUCTURE_CACHE, newline="") as f:  # rows of an older layout (fewer fields) are compiled again
        return {tuple(r[k] for k in STRUCTURE_FIELDS[:7]): r for r in csv.DictReader(f)
                if all(r.get(k) not in (None, "") for k in STRUCTURE_FIELDS)}


def kernel_commit_of(bench_csv: Path) -> str:
    """The commit that added ``bench_csv``: the kernel code of that commit is the code that was measured."""
    import subprocess

    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "-1", "--", str(bench_csv)],
                         capture_output=True, text=True, cwd=ROOT).stdout.strip()
    if not out:
        raise SystemExit(f"{bench_csv}: not committed; pass --kernel-commit (the commit of the kernel that ran)")
    return out


def export_packages_at(commit: str, directory: str) -> None:
    """dpq and sim as they were at ``commit``, extracted into ``directory`` (sim too: dpq imports it since 4e90782)."""
    import subprocess

    archive = subprocess.run(["git", "archive", commit, "dpq", "sim"], capture_output=True, cwd=ROOT,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)


def compile_at_commit(commit: str, variant: str, cfg: dict) -> dict:
    """SASS structure of a kernel configuration as the code of ``commit`` compiles it (dpq/kernels and
    scripts/kernel_sass.py exported from git into a temporary directory, imported in a fresh interpreter)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export_packages_at(commit, tmp)
        (Path(tmp) / "scripts").mkdir()
        sass_tool = subprocess.run(["git", "show", f"{commit}:scripts/kernel_sass.py"], capture_output=True,
                                   text=True, cwd=ROOT)  # absent before it was written: today's compiles the same
        (Path(tmp) / "scripts" / "kernel_sass.py").write_text(
            sass_tool.stdout if sass_tool.returncode == 0 else (ROOT / "scripts" / "kernel_sass.py").read_text())
        (Path(tmp) / "scripts" / "fused_kernel_structure.py").write_text(
            (ROOT / "scripts" / "fused_kernel_structure.py").read_text())
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
                "from scripts.fused_kernel_structure import w4a8_structure; "
                "print(json.dumps(w4a8_structure(*json.loads(sys.argv[2]))))")
        args = [variant, cfg["block_n"], cfg["block_t"], cfg["num_warps"], cfg["num_stages"],
                cfg["groups_per_step"], GROUP_SIZE]
        run = subprocess.run([sys.executable, "-c", code, tmp, json.dumps(args)], capture_output=True, text=True,
                             cwd=tmp)
        if run.returncode:
            raise SystemExit(f"compiling {variant} {cfg} at {commit} failed:\n{run.stderr[-2000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])


def kernel_structure(cache: dict, commit: str, variant: str, cfg: dict) -> dict:
    """Registers, shared memory and main-loop SASS counts of one kernel configuration at one kernel commit
    (compiled on a miss with scripts/fused_kernel_structure.py, then cached in STRUCTURE_CACHE)."""
    key = (commit, variant,
           *(str(cfg[k]) for k in ("block_n", "block_t", "num_warps", "num_stages", "groups_per_step")))
    if key not in cache:
        cache[key] = dict(zip(STRUCTURE_FIELDS, key), **compile_at_commit(commit, variant, cfg))
        STRUCTURE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        with open(STRUCTURE_CACHE, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=STRUCTURE_FIELDS)
            w.writeheader()
            for v in sorted(cache.values(), key=lambda r: tuple(r[k] for k in STRUCTURE_FIELDS[:7])):
                w.writerow(v)
    return cache[key]


def fused_structure(r: dict, variant: str, cache: dict, commit: str):
    """sim.perf.fused_kernel.LoopStructure of the kernel configuration bench row ``r`` ran."""
    from sim.perf.fused_kernel import LoopStructure

    cfg = row_config(r)
    launched = None
    if variant == "v6":  # the Gluon kernel where it applies, v5's kernel on the same layout otherwise
        from dpq.kernels.w4a8_gluon import V6_LAUNCHED_WARPS, gluon_kernel_applies
        from dpq.kernels.w4a8_triton import KernelConfig

        tile = KernelConfig(block_n=cfg["block_n"], block_t=cfg["block_t"], num_warps=cfg["num_warps"])
        if gluon_kernel_applies(tile, int(r["n"])):
            launched = V6_LAUNCHED_WARPS
        else:
            variant = "v5"
    st = kernel_structure(cache, commit, variant, cfg)
    regs = int(r["registers"]) if r.get("registers") else int(st["registers_per_thread"])
    bytes_per_weight = WEIGHT_BYTES.get(variant)
    if r.get("weight_bytes"):  # the packed weight's own size as the bench allocated it (codes + metadata)
        bytes_per_weight = float(r["weight_bytes"]) / (float(r["n"]) * float(r["k"]))
    if bytes_per_weight is None:
        raise SystemExit(f"variant {variant!r}: no weight_bytes column in the row and no WEIGHT_BYTES entry")
    smem = int(r["shared_bytes"]) if r.get("shared_bytes") else int(st["shared_bytes_per_program"])
    return LoopStructure(block_n=cfg["block_n"], block_t=cfg["block_t"], block_k=GROUP_SIZE * cfg["groups_per_step"],
                         split_k=cfg["split_k"], warps=cfg["num_warps"], stages=cfg["num_stages"],
                         registers_per_thread=regs, shared_bytes_per_program=smem,
                         loop_instructions_per_thread=float(st["loop_instructions_per_thread"]),
                         weight_bytes_per_weight=bytes_per_weight,
                         split_reduction=not cfg["reduce_in_kernel"],
                         fp32_instructions=float(st["fp32_instructions"]),
                         int_instructions=float(st["int_instructions"]),
                         conversion_instructions=float(st["conversion_instructions"]),
                         waited_mma_instructions=float(st["waited_mma_instructions"]),
                         register_a_mma_instructions=float(st["register_a_mma_instructions"]),
                         mma_macs_per_instruction=float(st["mma_macs_per_instruction"]), launched_warps=launched,
                         dependent_launch=cfg["pdl"] and launched is not None)


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


def predict_rows(rows: list[dict], profile: str, overrides: dict, fused_profile: str | None = None,
                 kernel_commit: str | None = None) -> list[dict]:
    from sim.perf.fused_kernel import fused_gemm_timing
    from sim.perf.gemm import gemm_timing, streaming_kernels_time
    from sim.perf.ops import resolve_profile

    cache = {}
    structures = load_structures()
    variants = variants_of({r["scheme"] for r in rows}, default_variant_at(kernel_commit))
    fused_hw = resolve_profile(fused_profile or f"{profile}-triton-w4a8", overrides or None)
    out = []
    for r in rows:
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        measured = float(r["latency_s"])
        if r["scheme"] in variants:
            s = fused_structure(r, r.get("variant") or variants[r["scheme"]], structures, kernel_commit)
            t = fused_gemm_timing(fused_hw, s, m, n, k)
            predicted, bound = t.time_s, f"{t.bound} P={t.resident_programs_per_sm}"
        else:
            scheme, extra = SCHEME_OF[r["scheme"]]
            key = tuple(sorted((extra or {}).items()))
            if key not in cache:
                cache[key] = resolve_profile(profile, {**overrides, **(extra or {})} or None)
            t = gemm_timing(cache[key], m, n, k, scheme)
            predicted, bound = t.time_s, t.bound
            if r["scheme"] == "w4a8_unfused":
                chain = streaming_kernels_time(cache[key], unfused_kernels(n, k))
                predicted += sum(sec for _, sec in chain)
                bound = f"{len(chain)} torch kernels + fp8 gemm"
            elif r["scheme"] == "w4a8_expand":  # expand_to_fp8 reads the variant's bytes and writes 1 byte/weight
                (_, sec), = streaming_kernels_time(
                    cache[key], [("expand_to_fp8", WEIGHT_BYTES[r["variant"]] * n * k, float(n) * k)])
                predicted += sec
                bound = f"expansion kernel {sec * 1e6:.1f} us + fp8 gemm"
        out.append({"model": r["model"], "layer": r["layer"], "scheme": r["scheme"], "m": m, "n": n, "k": k,
                    "measured_s": measured, "predicted_s": predicted, "error": predicted / measured - 1.0,
                    "bound": bound})
    return out


def heuristic_configs_at_commit(commit: str, variant: str, cases: list[tuple[int, int, int]], sms: int) -> list:
    """default_config(m, n, k, sms, 128, variant) of dpq/kernels/w4a8_triton.py at ``commit`` for every (m, n, k),
    as dicts (the tile heuristic the bench runs first; exported from git, imported in a fresh interpreter)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export_packages_at(commit, tmp)
        code = ("import dataclasses, json, sys; sys.path.insert(0, sys.argv[1]); "
                "from dpq.kernels.w4a8_triton import default_config; a = json.loads(sys.argv[2]); "
                "print(json.dumps([dataclasses.asdict(default_config(m, n, k, a['sms'], 128, a['variant'])) "
                "for m, n, k in a['cases']]))")
        run = subprocess.run([sys.executable, "-c", code, tmp, json.dumps({"cases": cases, "sms": sms,
                                                                           "variant": variant})],
                             capture_output=True, text=True, cwd=tmp)
        if run.returncode:
            raise SystemExit(f"default_config of {variant} at {commit} failed:\n{run.stderr[-2000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])


def predict_variant(variant: str, profile: str, kernel_commit: str, fused_profile: str | None = None) -> list[dict]:
    """Predicted rows (w4a8_fused at ``variant``'s heuristic configuration, and fp8 cuBLAS) for the shapes and M
    grid of scripts/bench_gpu.py from the structure and the profiles alone (no measured_s)."""
    import importlib.util

    from sim.perf.fused_kernel import fused_gemm_timing
    from sim.perf.gemm import gemm_timing
    from sim.perf.ops import resolve_profile

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fused_hw = resolve_profile(fused_profile or f"{profile}-triton-w4a8")
    hw = resolve_profile(profile)
    cases = [(m, n, k) for _, _, n, k in bench.SHAPES for m in bench.M_VALUES]
    configs = heuristic_configs_at_commit(kernel_commit, variant, cases, fused_hw.sm.count)
    structures = load_structures()
    out = []
    for ((model, layer, n, k), m), cfg in zip(((shape, m) for shape in bench.SHAPES for m in bench.M_VALUES),
                                              configs):
        row = {"config": ", ".join(f"{key}={v}" for key, v in cfg.items()), "n": n, "k": k,
               "weight_bytes": n * k // 2 + n * k // GROUP_SIZE * (5 if variant in ("v5", "v2") else 16)
               if variant != "fp8" else n * k}
        s = fused_structure(row, variant, structures, kernel_commit)
        t = fused_gemm_timing(fused_hw, s, m, n, k)
        out.append({"model": model, "layer": layer, "scheme": "w4a8_fused", "m": m, "n": n, "k": k,
                    "predicted_s": t.time_s, "bound": f"{t.bound} P={t.resident_programs_per_sm}",
                    "config": row["config"]})
        out.append({"model": model, "layer": layer, "scheme": "fp8", "m": m, "n": n, "k": k,
                    "predicted_s": gemm_timing(hw, m, n, k, "fp8").time_s, "bound": "", "config": ""})
    return out


# --layer-csv: a whole decoder layer (scripts/bench_gpu.py --layer-chain) is its four GEMMs in this order
LAYER_GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# the per-GEMM bench scheme whose prediction path a fused layer row's kernel variant takes
FUSED_SCHEME_OF_VARIANT = {"v6": "w4a8_fused_v6", "v5": "w4a8_fused_v5", "v4": "w4a8_fused_v4", "lut": "w4a8_fused_v3",
                           "v2": "w4a8_fused_v2", "fp8": "fp8_triton"}
KERNEL_CONFIG_TILE_KEYS = ("block_n", "block_t", "split_k", "num_warps", "num_stages")
PDL_NOTE = "pdl: the model has no dependent-launch overlap for this kernel variant"


def parse_kernel_config(text: str) -> dict:
    """Keyword arguments of a ``KernelConfig(...)`` repr (dpq.kernels.w4a8_triton), as a dict of Python literals
    (int, bool, str, None), read with ``ast`` (never evaluated). The tile keys block_n, block_t, split_k,
    num_warps and num_stages must be there as positive ints; other keys (pdl, l2_prefetch_steps, ...) are kept
    as they are, so reprs of older and newer KernelConfig layouts both parse. ValueError on anything else."""
    import ast
    import re

    hit = re.fullmatch(r"\s*KernelConfig\((.*)\)\s*", text or "", re.S)
    if not hit:
        raise ValueError(f"kernel config {text!r}: expected a 'KernelConfig(key=value, ...)' repr")
    try:
        call = ast.parse(f"KernelConfig({hit.group(1)})", mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"kernel config {text!r}: not a keyword argument list ({exc.msg})") from None
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"kernel config {text!r}: expected keyword arguments only")
    out = {}
    for kw in call.keywords:
        try:
            value = ast.literal_eval(kw.value)
        except ValueError:
            raise ValueError(f"kernel config {text!r}: {kw.arg}= is not a literal") from None
        if not (value is None or isinstance(value, (bool, int, str))) or kw.arg in out:
            raise ValueError(f"kernel config {text!r}: {kw.arg}= must be given once, as an int, bool, str or None")
        out[kw.arg] = value
    for key in KERNEL_CONFIG_TILE_KEYS:
        v = out.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"kernel config {text!r}: {key} must be a positive int, got {v!r}")
    return out


def bench_shapes() -> dict[str, list[tuple[str, int, int]]]:
    """model -> [(layer, n, k)] of the GEMMs of scripts/bench_gpu.py's SHAPES, in its order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shapes: dict[str, list[tuple[str, int, int]]] = {}
    for model, layer, n, k in bench.SHAPES:
        shapes.setdefault(model, []).append((layer, n, k))
    return shapes


def layer_gemm_rows(r: dict, shapes: dict) -> tuple[list[dict], list[str]]:
    """The four per-GEMM bench rows (the dicts ``predict_rows`` reads) a layer-chain row ``r`` is made of, and its
    notes. cuBLAS rows (bf16, fp8) keep their scheme; rows of the prefill path (variant "<v>+expand", the "auto"
    chain from the card's expand_from_tokens) become w4a8_expand rows; fused rows take the bench scheme of their kernel variant and
    the configuration each GEMM ran (``configs``, " | "-joined KernelConfig reprs; dependent launch kept for the
    Gluon kernel "v6", whose structure models it, and turned off for the others, whose does not); each GEMM's packed
    weight bytes are the layer's bytes per weight times n*k.
    latency_s of these rows is NaN: only the layer is measured."""
    where = f"layer row model={r.get('model')} m={r.get('m')} scheme={r.get('scheme')}"
    gemms = shapes.get(r["model"])
    if gemms is None:
        raise ValueError(f"{where}: no GEMM shapes for model {r['model']!r} (known: {sorted(shapes)})")
    if tuple(layer for layer, _, _ in gemms) != LAYER_GEMMS:
        raise ValueError(f"{where}: the model's GEMMs are {[g[0] for g in gemms]}, expected {list(LAYER_GEMMS)}")
    texts = [t.strip() for t in (r.get("configs") or "").split(" | ") if t.strip()]
    weights = sum(n * k for _, n, k in gemms)
    base = {"card": r.get("card", ""), "model": r["model"], "m": r["m"], "latency_s": "nan"}
    if not texts:
        if r["scheme"] not in ("bf16", "fp8"):
            raise ValueError(f"{where}: no configs; only the cuBLAS schemes bf16 and fp8 run without one")
        return [dict(base, layer=layer, scheme=r["scheme"], n=n, k=k) for layer, n, k in gemms], []
    variant = r.get("variant") or ""
    if variant.endswith("+expand"):  # bench_gpu's "auto" chain on the prefill path: expansion kernel + cuBLAS each
        variant = variant[:-len("+expand")]
        if variant not in WEIGHT_BYTES:
            raise ValueError(f"{where}: variant {variant!r}+expand, expected one of {sorted(WEIGHT_BYTES)}")
        return [dict(base, layer=layer, scheme="w4a8_expand", variant=variant, n=n, k=k) for layer, n, k in gemms], []
    if variant not in FUSED_SCHEME_OF_VARIANT:
        raise ValueError(f"{where}: variant {variant!r}, expected one of {sorted(FUSED_SCHEME_OF_VARIANT)}")
    if len(texts) != len(gemms):
        raise ValueError(f"{where}: {len(texts)} KernelConfig reprs in configs, expected {len(gemms)}")
    bytes_per_weight = float(r["layer_weight_bytes"]) / weights if r.get("layer_weight_bytes") else None
    out, pdl, prefetch, nowait = [], False, set(), False
    for (layer, n, k), text in zip(gemms, texts):
        cfg = parse_kernel_config(text)
        pdl = pdl or bool(cfg.get("pdl"))
        nowait = nowait or cfg.get("mma_wait_each_step") is False
        if cfg.get("l2_prefetch_steps"):
            prefetch.add(cfg["l2_prefetch_steps"])
        if variant != "v6":  # dependent launch is modelled for the Gluon kernel only
            cfg.update(pdl=False)
        cfg.update(l2_prefetch_steps=0, pdl_trigger="start")
        row = dict(base, layer=layer, scheme=FUSED_SCHEME_OF_VARIANT[variant], variant=variant, n=n, k=k,
                   config="KernelConfig(" + ", ".join(f"{key}={v!r}" for key, v in cfg.items()) + ")")
        if bytes_per_weight is not None:
            row["weight_bytes"] = str(round(bytes_per_weight * n * k))
        out.append(row)
    notes = [PDL_NOTE] if pdl and variant != "v6" else []
    if prefetch:
        notes.append(f"l2_prefetch_steps={'/'.join(map(str, sorted(prefetch)))}: not in the model either")
    if nowait:
        notes.append("mma_wait_each_step=False: predicted with the structure of the kernel that waits")
    return out, notes


def predict_layer_rows(rows: list[dict], shapes: dict, profile: str, overrides: dict,
                       fused_profile: str | None = None, kernel_commit: str | None = None) -> list[dict]:
    """Predicted time of each layer-chain row: the sum of ``predict_rows``' predictions of its four GEMMs
    (``layer_gemm_rows``), next to the measured layer time."""
    parts, notes = [], []
    for r in rows:
        gemm_rows, note = layer_gemm_rows(r, shapes)
        parts.append(gemm_rows)
        if r.get("bit_equal_outputs") and r["bit_equal_outputs"] != f"{len(gemm_rows)}/{len(gemm_rows)}":
            note = note + [f"outputs bit-equal {r['bit_equal_outputs']} only"]
        notes.append(note)
    flat = predict_rows([g for p in parts for g in p], profile, overrides, fused_profile, kernel_commit)
    out, i = [], 0
    for r, p, note in zip(rows, parts, notes):
        gemms, i = flat[i:i + len(p)], i + len(p)
        measured, predicted = float(r["latency_s"]), sum(g["predicted_s"] for g in gemms)
        out.append({"model": r["model"], "m": int(r["m"]), "scheme": r["scheme"], "variant": r.get("variant") or "",
                    "measured_s": measured, "predicted_s": predicted, "error": predicted / measured - 1.0,
                    "gemm_predicted_s": [g["predicted_s"] for g in gemms], "bounds": [g["bound"] for g in gemms],
                    "note": "; ".join(note)})
    return out


def validate_layers(layer_csv: Path, args, overrides: dict) -> int:
    """--layer-csv: table, CSV and markdown (validation_<stem>_layer.*, in --out or next to the input) of the
    layer-chain rows against the sum of their GEMMs' predictions; prints the mean abs error per scheme."""
    rows = load_rows(layer_csv)
    profile = args.profile or profile_for_card(rows[0]["card"])
    kernel_commit = args.kernel_commit or kernel_commit_of(layer_csv)
    try:
        pred = predict_layer_rows(rows, bench_shapes(), profile, overrides, args.fused_profile, kernel_commit)
    except ValueError as exc:
        raise SystemExit(f"{layer_csv}: {exc}") from None
    tag = profile + ("+" + "+".join(args.set) if args.set else "")
    per_scheme: dict[str, list[float]] = {}
    for p in pred:
        per_scheme.setdefault(p["scheme"], []).append(p["error"])
    lines = [f"# sim.perf vs GPU measurements, whole decoder layers: {rows[0]['card']} (driver {rows[0]['driver']}, "
             f"torch {rows[0]['torch']}, triton {rows[0]['triton']}), profile `{tag}`", "",
             f"Measurements: `{layer_csv}` ({len(rows)} rows, {rows[0]['date']}): the four GEMMs of a layer ("
             f"{', '.join(LAYER_GEMMS)}) back to back in one CUDA graph (scripts/bench_gpu.py --layer-chain). "
             f"Prediction: the sum of the four GEMMs' predictions, each as a bench row of the same scheme with the "
             f"configuration that GEMM ran: cuBLAS `sim.perf.gemm_timing` (profile `{tag}`), fused Triton "
             f"`sim.perf.fused_kernel.fused_gemm_timing` (profile `{args.fused_profile or profile + '-triton-w4a8'}`, "
             f"SASS of dpq/kernels at commit {kernel_commit}). Rows with pdl=True are predicted as the same "
             f"configuration without pdl (the model has no dependent-launch overlap, nor an L2 prefetch term). "
             f"Nothing fitted here. error = predicted / measured - 1.", "",
             "| scheme | rows | mean signed error | mean abs error | max abs error |", "|---|---|---|---|---|"]
    for scheme, errs in per_scheme.items():
        lines.append(f"| {scheme} | {len(errs)} | {sum(errs) / len(errs):+.1%} | "
                     f"{sum(abs(e) for e in errs) / len(errs):.1%} | {max(abs(e) for e in errs):.1%} |")
    lines += ["", "| model | M | scheme | variant | measured us | predicted us | error | " +
              " | ".join(f"{g} us" for g in LAYER_GEMMS) + " | note |", "|---|---|---|---|---|---|---|" +
              "---|" * len(LAYER_GEMMS) + "---|"]
    for p in pred:
        lines.append(f"| {p['model']} | {p['m']} | {p['scheme']} | {p['variant']} | {p['measured_s'] * 1e6:.1f} | "
                     f"{p['predicted_s'] * 1e6:.1f} | {p['error']:+.1%} | " +
                     " | ".join(f"{t * 1e6:.1f}" for t in p["gemm_predicted_s"]) + f" | {p['note']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for scheme, errs in per_scheme.items():
        print(f"{scheme}: mean abs error {sum(abs(e) for e in errs) / len(errs):.1%} over {len(errs)} rows")
    out_dir = args.out or layer_csv.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"validation_{layer_csv.stem}_layer"
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "m", "scheme", "variant", "measured_us", "predicted_us", "error",
                    *(f"{g}_predicted_us" for g in LAYER_GEMMS), "bounds", "note"])
        for p in pred:
            w.writerow([p["model"], p["m"], p["scheme"], p["variant"], f"{p['measured_s'] * 1e6:.3f}",
                        f"{p['predicted_s'] * 1e6:.3f}", f"{p['error']:.6e}",
                        *(f"{t * 1e6:.3f}" for t in p["gemm_predicted_s"]), " | ".join(p["bounds"]), p["note"]])
    (out_dir / f"{stem}.md").write_text(text)
    return 0


def validate_tuning(tuning_csv: Path, args, overrides: dict) -> int:
    """--tuning-csv: every fused-kernel configuration a bench_gpu.py sweep timed (tuning_<card>*.csv), predicted
    from its structure; per (model, layer, M) the measured time of the heuristic's configuration (the sweep's first
    row), of the fastest, and of the configuration the model ranks fastest. Writes validation_<stem>.csv/.md."""
    from dpq.kernels.w4a8_triton import VARIANTS, default_variant_for

    if args.tuning_variant is not None and args.tuning_variant not in VARIANTS:
        raise SystemExit(f"--tuning-variant: {args.tuning_variant!r} is not one of {VARIANTS}")
    rows = [r for r in load_rows(tuning_csv) if r["scheme"] in ("w4a8_fused", "w4a8_fused_v6", "w4a8_fused_v5",
                                                                 "w4a8_fused_v4")]
    if not rows:
        raise SystemExit(f"{tuning_csv}: no w4a8_fused rows")
    profile = args.profile or profile_for_card(rows[0]["card"])
    kernel_commit = args.kernel_commit or kernel_commit_of(tuning_csv)
    variant = args.tuning_variant or default_variant_for(rows[0]["card"])
    named = {"w4a8_fused_v6": "v6", "w4a8_fused_v5": "v5", "w4a8_fused_v4": "v4"}
    rows = [dict(r, variant=r.get("variant") or named.get(r["scheme"], variant)) for r in rows]
    pred = predict_rows(rows, profile, overrides, args.fused_profile, kernel_commit)
    cases: dict[tuple, list[tuple[dict, dict]]] = {}
    for r, p in zip(rows, pred):
        cases.setdefault((r["model"], r["layer"], int(r["m"]), r["variant"]), []).append((r, p))
    lines = [f"# sim.perf ranking the fused kernel's configurations: {rows[0]['card']}, profile "
             f"`{args.fused_profile or profile + '-triton-w4a8'}`", "",
             f"Measurements: `{tuning_csv}` ({len(rows)} timed configurations). Each predicted from its structure "
             f"(SASS of dpq/kernels at commit {kernel_commit}); nothing fitted here. Per case: the measured time of "
             f"the heuristic's configuration (the sweep's first), of the fastest measured, and of the one the model "
             f"predicts fastest (its regret = measured / fastest - 1).", "",
             "| model | layer | M | variant | configs | heuristic us | fastest us | fastest config | model's pick us | "
             "model's pick | regret | mean abs error |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    totals = [0.0, 0.0, 0.0]
    errors = []
    for (model, layer, m, var), items in cases.items():
        best = min(items, key=lambda it: it[1]["measured_s"])
        pick = min(items, key=lambda it: it[1]["predicted_s"])
        heur = items[0]
        errs = [abs(p["error"]) for _, p in items]
        errors += errs
        for i, it in enumerate((heur, best, pick)):
            totals[i] += it[1]["measured_s"]
        lines.append(f"| {model} | {layer} | {m} | {var} | {len(items)} | {heur[1]['measured_s'] * 1e6:.2f} | "
                     f"{best[1]['measured_s'] * 1e6:.2f} | {short_config(best[0])} | "
                     f"{pick[1]['measured_s'] * 1e6:.2f} | {short_config(pick[0])} | "
                     f"{pick[1]['measured_s'] / best[1]['measured_s'] - 1:+.1%} | {sum(errs) / len(errs):.1%} |")
    lines += ["", f"All cases summed: heuristic {totals[0] * 1e6:.1f} us, fastest {totals[1] * 1e6:.1f} us, "
              f"model's picks {totals[2] * 1e6:.1f} us; every configuration: mean abs error "
              f"{sum(errors) / len(errors):.1%}, {sum(e <= 0.10 for e in errors)}/{len(errors)} within 10%."]
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir = args.out or tuning_csv.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    write_validation(out_dir, tuning_csv.stem, pred, text)
    return 0


def short_config(r: dict) -> str:
    """'128x16 s4 st3' (+ ' rik' for the in-kernel reduction, ' reg64' for a register cap) of a row's config."""
    import re

    c = row_config(r)
    cap = re.search(r"maxnreg=(\d+)", r.get("config") or "")
    return (f"{c['block_n']}x{c['block_t']} s{c['split_k']} st{c['num_stages']}"
            + (" rik" if c["reduce_in_kernel"] else "") + (f" reg{cap.group(1)}" if cap else ""))


def crossover(rows: list[dict], key: str) -> dict:
    """Per (model, layer): the smallest M of the grid where the default fused kernel (``w4a8_fused_default`` when
    the bench ran it, else ``w4a8_fused``) is no faster than fp8 (None: never)."""
    fused = "w4a8_fused_default" if any(r["scheme"] == "w4a8_fused_default" for r in rows) else "w4a8_fused"
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["layer"], r["m"])][r["scheme"]] = r[key]
    res = {}
    for (model, layer, m), v in sorted(by.items(), key=lambda kv: kv[0]):
        if fused in v and "fp8" in v:
            res.setdefault((model, layer), None)
            if res[(model, layer)] is None and v[fused] >= v["fp8"]:
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


def write_validation(out_dir: Path, label: str, rows: list[dict], text: str) -> None:
    """validation_<label>.csv (the rows, floats as %.6e) and validation_<label>.md (the report) under out_dir."""
    with open(out_dir / f"validation_{label}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6e}" if isinstance(v, float) else v) for k, v in r.items()})
    (out_dir / f"validation_{label}.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_csv", type=Path, nargs="?")
    ap.add_argument("--predict", default=None, metavar="VARIANT",
                    help="predict this kernel variant on the bench grid (needs --profile and --kernel-commit)")
    ap.add_argument("--profile", default=None, help="hardware profile (default: from the card name)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="profile override for a what-if run (sim.profiles syntax)")
    ap.add_argument("--out", type=Path, default=None, help="write validation_<label>.csv and .md here")
    ap.add_argument("--label", default=None, help="file label (default: the profile name)")
    ap.add_argument("--kernel-commit", default=None,
                    help="commit of dpq/kernels whose SASS the fused rows are predicted with (default: the commit "
                         "that added the bench CSV)")
    ap.add_argument("--layer-csv", type=Path, default=None,
                    help="also (or only) validate a layer-chain CSV (scripts/bench_gpu.py --layer-chain): each layer "
                         "predicted as the sum of its four GEMMs; writes validation_<stem>_layer.csv/.md to --out, "
                         "else next to it")
    ap.add_argument("--tuning-csv", type=Path, default=None,
                    help="validate every configuration of a bench_gpu.py sweep (tuning_<card>*.csv) and say how the "
                         "model's fastest-ranked configuration measured; writes validation_<stem>.csv/.md to --out, "
                         "else next to it")
    ap.add_argument("--tuning-variant", default=None,
                    help="kernel variant of the sweep's w4a8_fused rows (default: the card's, default_variant_for)")
    ap.add_argument("--fused-profile", default=None,
                    help="profile of the fused Triton kernels (default: <profile>-triton-w4a8)")
    args = ap.parse_args(argv)
    from sim.profiles import parse_overrides

    if args.predict:
        if not (args.profile and args.kernel_commit):
            ap.error("--predict needs --profile and --kernel-commit")
        pred = predict_variant(args.predict, args.profile, args.kernel_commit, args.fused_profile)
        cp = crossover(pred, "predicted_s")
        lines = [f"# Prediction from structure: kernel variant {args.predict} (dpq/kernels at "
                 f"{args.kernel_commit}) on profile `{args.fused_profile or args.profile + '-triton-w4a8'}`", "",
                 "Heuristic configuration (default_config) of each shape and M of scripts/bench_gpu.py; FP8 cuBLAS "
                 f"from profile `{args.profile}`. From the kernel's structure and the profiles alone: no measured row "
                 "of the variant is read.", "",
                 "| model | layer | M | W4A8 us | FP8 us | W4A8 / FP8 | bound | config |",
                 "|---|---|---|---|---|---|---|---|"]
        for w, f in zip(pred[::2], pred[1::2]):
            lines.append(f"| {w['model']} | {w['layer']} | {w['m']} | {w['predicted_s'] * 1e6:.1f} | "
                         f"{f['predicted_s'] * 1e6:.1f} | {w['predicted_s'] / f['predicted_s']:.2f} | {w['bound']} | "
                         f"{w['config']} |")
        lines += ["", "Predicted crossover (smallest M where W4A8 is no faster than FP8): " + ", ".join(
            f"{a} {b} {v if v is not None else 'never'}" for (a, b), v in sorted(cp.items()))]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            label = args.label or f"{args.profile}_{args.predict}_prediction"
            write_validation(args.out, label, pred, text)
        return 0
    overrides = parse_overrides(args.set) if args.set else {}
    if args.tuning_csv is not None:
        if args.bench_csv is not None or args.layer_csv is not None:
            ap.error("--tuning-csv: give it alone (no bench CSV, no --layer-csv)")
        return validate_tuning(args.tuning_csv, args, overrides)
    if args.bench_csv is None:
        if args.layer_csv is None:
            ap.error("a bench CSV is required (or --predict, --layer-csv or --tuning-csv)")
        return validate_layers(args.layer_csv, args, overrides)
    rows = load_rows(args.bench_csv)
    profile = args.profile or profile_for_card(rows[0]["card"])
    kernel_commit = args.kernel_commit or kernel_commit_of(args.bench_csv)
    pred = predict_rows(rows, profile, overrides, args.fused_profile, kernel_commit)
    summary = summarize(pred)
    cm, cp = crossover(pred, "measured_s"), crossover(pred, "predicted_s")
    grid = sorted({p["m"] for p in pred})

    def step(m):
        return len(grid) if m is None else grid.index(m)
    tag = profile + ("+" + "+".join(args.set) if args.set else "")
    lines = [f"# sim.perf vs GPU measurements: {rows[0]['card']} (driver {rows[0]['driver']}, torch "
             f"{rows[0]['torch']}, triton {rows[0]['triton']}), profile `{tag}`", "",
             f"Measurements: `{args.bench_csv}` ({len(rows)} rows, {rows[0]['date']}). Predictions: cuBLAS rows "
             f"`sim.perf.gemm_timing` (profile `{tag}`); fused Triton rows `sim.perf.fused_kernel.fused_gemm_timing` "
             f"(profile `{args.fused_profile or profile + '-triton-w4a8'}`) with the structure of the configuration "
             f"each row ran (kernel variants: "
             f"{variants_used(rows, default_variant_at(kernel_commit))}; SASS of dpq/kernels at "
             f"commit {kernel_commit}). Nothing fitted here; "
             f"the W4A8 rows are held out of every calibration"
             + (" (the fp8_triton rows, the W4A8 kernel's loop with FP8 weights, are part of the loop calibration "
                "of the fused profile: scripts/probe_triton_loop.py --fit-bench)" if any(
                    r["scheme"] == "fp8_triton" for r in rows) else "")
             + ". error = predicted / measured - 1.", "",
             "| scheme | M range | points | mean signed error | mean abs error | max abs error |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['scheme']} | {s['m_range']} | {s['points']} | {s['mean_signed_error']:+.1%} | "
                     f"{s['mean_abs_error']:.1%} | {s['max_abs_error']:.1%} |")
    fused = sorted({p["scheme"] for p in pred if p["scheme"].startswith("w4a8_fused")})
    if fused:
        lines += ["", "Fused kernels at M <= 64, per layer: mean signed (mean abs) error over the M grid.", "",
                  "| model | layer | " + " | ".join(fused) + " |", "|---|---|" + "---|" * len(fused)]
        for model, layer in sorted({(p["model"], p["layer"]) for p in pred}):
            cells = []
            for sch in fused:
                e = [p["error"] for p in pred if (p["model"], p["layer"], p["scheme"]) == (model, layer, sch)
                     and p["m"] <= 64]
                cells.append(f"{sum(e) / len(e):+.1%} ({sum(abs(x) for x in e) / len(e):.1%})" if e else "")
            lines.append(f"| {model} | {layer} | " + " | ".join(cells) + " |")
        lines.append("")
        for sch in fused:
            e = [p["error"] for p in pred if p["scheme"] == sch and p["m"] <= 64]
            if e:
                lines.append(f"- {sch}, all rows at M <= 64: mean abs error {sum(abs(x) for x in e) / len(e):.1%}, "
                             f"{sum(abs(x) <= 0.10 for x in e)}/{len(e)} within 10%")
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
        write_validation(args.out, safe, pred, text)
    if args.layer_csv is not None:
        validate_layers(args.layer_csv, args, overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
