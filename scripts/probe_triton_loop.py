"""Calibration probe for the fused-kernel performance model: a Triton FP8 swap-AB GEMM loop without W4A8 expansion.

The fused W4A8 kernel (dpq/kernels/w4a8_triton.py) is one Triton loop per program: per K step of 128 it stages a
weight tile and a token tile in shared memory with cp.async (``num_stages`` deep), forms the FP8 weight operand and
runs one wgmma. This probe runs *the same loop shape with FP8 weights and no INT4 expansion*, so that the hardware
parameters of the model in sim/perf/fused_kernel.py can be measured on kernels that are not the W4A8 kernel (whose
measurements stay held out). Knobs, each a structural property of a loop:

* tile (block_n weight rows x block_t tokens x 128), warps, stages, split-K parts (sets the programs per SM);
* ``alu``, ``alu_op``: a dependent chain of ``alu`` instructions applied to every 4 weight bytes in registers
  before the dot (0 = no register pass: the dot reads the weight tile straight from shared memory); ``alu_op``
  picks the pipe: "addxor" (integer add/xor), "prmt" (byte permutes), "cvt" (float -> half conversions);
* ``half``: stream 64 bytes per weight row and K step instead of 128 (the tile is formed by repeating them).

Timing as scripts/bench_gpu.py: weights rotate over copies so every call reads HBM, a CUDA graph of back-to-back
calls, median of replays. Every row records the kernel's registers per thread and shared memory per program (from
the compiled kernel). Writes ``probe_triton_loop_<card>.csv``.

    python3 scripts/probe_triton_loop.py --out DIR [--only pipe,spread]                 # on the GPU
    python3 scripts/probe_triton_loop.py --structure results/gpu/probe_triton_loop_h200.csv   # any machine
    python3 scripts/probe_triton_loop.py --fit results/gpu/probe_triton_loop_h200*.csv \
        --fit-bench results/gpu/bench_h200_v4bsweep.csv --spread even                   # any machine

``--structure CSV`` compiles every configuration of a probe CSV for sm_90 with Triton's own ptxas (no GPU) and
writes ``<CSV stem>_structure.csv``: registers, shared memory and main-loop SASS instructions per thread by pipe
(scripts/fused_kernel_structure.py), the structure sim/perf/fused_kernel.py needs next to each measured time.
``--fit CSV...`` fits the profile's loop parameters (``FIT_PARAMETERS``: sections ``triton_loop`` and the ``sm``
issue cycles of the integer and conversion pipes) to the probe rows and, with ``--fit-bench``, to the
``fp8_triton`` rows of scripts/bench_gpu.py (the W4A8 kernel's loop with FP8 weights, no expansion), by least
squares on log time (needs scipy); prints every row's error and the fitted values; the profile's other sections
are used as they are.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.gpu_timing import time_graph  # noqa: E402

BLOCK_K = 128
FIELDS = ["card", "sm_count", "triton", "torch", "date", "experiment", "block_n", "block_t", "warps", "stages", "alu",
          "alu_op", "half", "n", "k", "m", "split_k", "programs", "iterations_per_program", "registers_per_thread",
          "shared_bytes_per_program", "weight_bytes", "latency_s", "spread_rel", "calls_per_graph"]


def build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def loop_kernel(w_ptr, x_ptr, part_ptr, M, N, K, stride_w, stride_x, k_tiles_per_split, zero,
                    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ALU: tl.constexpr,
                    ALU_ASM: tl.constexpr, HALF: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_t = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_k = tl.arange(0, BLOCK_K)
        t_mask = offs_t < M
        k_tiles = K // BLOCK_K
        kt_begin = pid_s * k_tiles_per_split
        kt_end = tl.minimum(kt_begin + k_tiles_per_split, k_tiles)
        w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_w
        x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_x
        z8 = zero.to(tl.uint8)
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for kt in range(kt_begin, kt_end):
            if HALF:
                offs_h = tl.arange(0, BLOCK_K // 2)
                wb = tl.load(w_rows + (kt * (BLOCK_K // 2) + offs_h)[None, :])
            else:
                wb = tl.load(w_rows + (kt * BLOCK_K + offs_k)[None, :])
            if ALU > 0:
                wb = tl.inline_asm_elementwise(ALU_ASM, "=r,r,r", [wb, tl.zeros_like(wb) + z8], dtype=tl.uint8,
                                               is_pure=True, pack=4)
            if HALF:
                wb = tl.reshape(tl.join(wb, wb), (BLOCK_N, BLOCK_K))
            w8 = wb.to(tl.float8e4nv, bitcast=True)
            x8 = tl.load(x_rows + (kt * BLOCK_K + offs_k)[None, :], mask=t_mask[:, None], other=0.0)
            acc = tl.dot(w8, tl.trans(x8), acc)
        out = part_ptr + pid_s.to(tl.int64) * M * N + offs_t[None, :].to(tl.int64) * N + offs_n[:, None]
        tl.store(out, acc, mask=t_mask[None, :])

    return loop_kernel


ALU_OPS = ("addxor", "prmt", "cvt")


def alu_asm(alu: int, op: str = "addxor") -> str:
    """PTX of a dependent chain of ``alu`` instructions on each 4 weight bytes, with a run-time zero operand so
    that the compiler can neither fold nor merge the chain. op: "addxor" alternately adds and xors the zero
    (integer pipe, values unchanged); "prmt" byte permutes selected by the zero (integer pipe; every byte becomes
    byte 0); "cvt" float32 -> packed half conversions (F2FP, the conversion pipe; values change, timing only)."""
    if alu == 0:
        return ""
    if op == "addxor":
        ops = ["add.u32 t, t, $2;" if i % 2 == 0 else "xor.b32 t, t, $2;" for i in range(alu)]
        return "{ .reg .b32 t; mov.b32 t, $1; " + " ".join(ops) + " mov.b32 $0, t; }"
    if op == "prmt":
        return "{ .reg .b32 t; mov.b32 t, $1; " + " prmt.b32 t, t, t, $2;" * alu + " mov.b32 $0, t; }"
    if op == "cvt":
        body = " mov.b32 f, t; cvt.rn.f16x2.f32 t, f, z;" * alu
        return "{ .reg .b32 t; .reg .f32 f, z; mov.b32 t, $1; mov.b32 z, $2;" + body + " mov.b32 $0, t; }"
    raise ValueError(f"op={op!r}: expected one of {ALU_OPS}")


def experiments(quick: bool):
    """(experiment, n, k, m, block_n, block_t, warps, stages, alu, half, split, alu_op) rows to measure."""
    rows = []
    # A: programs per SM (split-K parts) at the decode tile, plain FP8 loop and with a register pass
    for alu in (0, 1, 6):
        for split in (1, 2, 4, 8, 16):
            rows.append(("programs", 8192, 8192, 1, 128, 16, 4, 4, alu, 0, split))
    # B: dependent instructions per 4 weight bytes in the register pass (4 programs/SM and 1 program/SM)
    for alu in (2, 4, 12, 24):
        for split in (1, 8):
            rows.append(("alu", 8192, 8192, 1, 128, 16, 4, 4, alu, 0, split))
    # C: 64 bytes per row and K step (the packed INT4 codes' access pattern, no table, no INT4 format)
    for alu in (0, 6):
        for split in (1, 4, 8):
            rows.append(("half", 8192, 8192, 1, 128, 16, 4, 4, alu, 1, split))
    # D: stages, warps, 64-row and wider-token tiles
    for block_n, block_t, warps, stages in ((128, 16, 4, 2), (128, 16, 4, 3), (128, 16, 4, 6), (128, 16, 8, 4),
                                            (64, 16, 4, 4), (64, 64, 4, 4), (128, 64, 4, 4)):
        m = block_t
        for alu in (0, 6):
            for split in (1, 8):
                rows.append(("tile", 8192, 8192, m, block_n, block_t, warps, stages, alu, 0, split))
    # E: fixed cost (one K step per program) and a long K loop
    for split in (64,):
        rows.append(("fixed", 8192, 8192, 1, 128, 16, 4, 4, 0, 0, split))
        rows.append(("fixed", 8192, 8192, 1, 128, 16, 4, 4, 6, 0, split))
    # F: how programs spread over SMs (1 to 2.3 programs per SM of 64 iterations each)
    for n in (16896, 17920, 25344, 33792, 38400):
        for alu in (0, 6):
            rows.append(("spread", n, 8192, 1, 128, 16, 4, 4, alu, 0, 1))
    # G: the prefill tile (128 x 128 tokens, 8 warps, 3 stages)
    for alu in (0, 6):
        for split in (1, 8):
            rows.append(("tile", 8192, 8192, 128, 128, 128, 8, 3, alu, 0, split))
    rows.append(("long", 57344, 8192, 1, 128, 16, 4, 4, 0, 0, 2))
    rows.append(("long", 57344, 8192, 1, 128, 16, 4, 4, 6, 0, 2))
    rows = [r + ("addxor",) for r in rows]
    # H: the pipe of the register pass (integer permutes, conversions) at 1 and ~4 programs per SM, short and long
    for op, alus in (("prmt", (4, 12)), ("cvt", (2, 6))):
        for alu in alus:
            for n, split in ((8192, 1), (8192, 8), (57344, 2)):
                rows.append(("pipe", n, 8192, 1, 128, 16, 4, 4, alu, 0, split, op))
    if quick:
        rows = rows[:6]
    return rows


def compile_structure(block_n: int, block_t: int, warps: int, stages: int, alu: int, half: int,
                      alu_op: str = "addxor") -> dict:
    """Registers/thread, shared bytes/program and main-loop SASS instructions/thread of one probe configuration,
    compiled for sm_90 here (Triton's ptxas and cuobjdump; no GPU)."""
    import os
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from scripts.fused_kernel_structure import compiled_structure

    sig = {"w_ptr": "*u8", "x_ptr": "*fp8e4nv", "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
           "stride_w": "i32", "stride_x": "i32", "k_tiles_per_split": "i32", "zero": "i32"}
    consts = dict(BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_K=BLOCK_K, ALU=alu, ALU_ASM=alu_asm(alu, alu_op),
                  HALF=bool(half))
    for c in consts:
        sig[c] = "constexpr"
    names = list(sig)
    div = ["w_ptr", "x_ptr", "part_ptr", "N", "K", "stride_w", "stride_x"]  # as the launch specializes them
    attrs = {(names.index(d),): [["tt.divisibility", 16]] for d in div}
    k = triton.compile(ASTSource(fn=build_kernel(), signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "probe.cubin"
        cubin.write_bytes(k.asm["cubin"])
        sass = subprocess.run([tool, "--dump-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([tool, "--dump-resource-usage", str(cubin)], capture_output=True, text=True).stdout
    return compiled_structure(k, sass, usage)


def write_structure(csv_path: Path) -> Path:
    """<csv stem>_structure.csv: the SASS structure of every configuration measured in ``csv_path``."""
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = sorted({(*(int(r[c]) for c in ("block_n", "block_t", "warps", "stages", "alu", "half")),
                    r.get("alu_op") or "addxor") for r in rows})
    out = csv_path.with_name(csv_path.stem + "_structure.csv")
    with open(out, "w", newline="") as f:
        w = None
        for key in keys:
            st = compile_structure(*key)
            if w is None:
                w = csv.DictWriter(f, fieldnames=["block_n", "block_t", "warps", "stages", "alu", "half", "alu_op",
                                                  *st])
                w.writeheader()
            w.writerow(dict(zip(("block_n", "block_t", "warps", "stages", "alu", "half", "alu_op"), key), **st))
            print(key, st, flush=True)
    return out


# (profile key, unit the optimizer works in, start value, lower, upper); a scheduler issues at most one warp
# instruction per cycle, so no pipe's issue cycles go below 1
FIT_PARAMETERS = (
    ("sm.int_issue_cycles", 1.0, 2.0, 1.0, 16.0),
    ("sm.conversion_issue_cycles", 1.0, 2.0, 1.0, 16.0),
    ("iteration_fixed_s", 1e-6, 0.1, 0.0, 2.0),
    ("sm_load_bandwidth_bytes_per_s", 1e9, 45.0, 1.0, 1000.0),
    ("program_fixed_s", 1e-6, 0.2, 0.0, 5.0),
    ("loaded_hbm_latency_s", 1e-6, 1.1, 0.0, 5.0),
    ("kernel_fixed_s", 1e-6, 3.0, 0.0, 20.0),
    ("resident_program_slowdown", 1.0, 0.7, 0.0, 1.0),
    ("mma_wait_latency_s", 1e-9, 30.0, 0.0, 500.0),
    ("dependent_kernel_fixed_s", 1e-6, 1.0, 0.0, 20.0),  # only with --fit-only: no row depends on it but PDL rows
)


def pipe_counts(st: dict) -> dict:
    """fp32/int/conversion instruction counts and the waited warpgroup MMAs of a structure row (absent in older
    structure files: regenerate them with --structure)."""
    return {k: float(st[k]) for k in ("fp32_instructions", "int_instructions", "conversion_instructions",
                                      "waited_mma_instructions", "register_a_mma_instructions",
                                      "mma_macs_per_instruction")
            if st.get(k) not in (None, "")}


def probe_rows(paths: list[Path]) -> list[tuple[dict, object]]:
    """(measured row, LoopStructure) for every row of the probe CSVs (structure from <stem>_structure.csv)."""
    from sim.perf.fused_kernel import LoopStructure

    out = []
    for path in paths:
        cols = ("block_n", "block_t", "warps", "stages", "alu", "half")

        def key(r):
            return (*(int(r[c]) for c in cols), r.get("alu_op") or "addxor")
        with open(path.with_name(path.stem + "_structure.csv"), newline="") as f:
            structure = {key(r): r for r in csv.DictReader(f)}
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                st = structure[key(r)]
                out.append((r, LoopStructure(
                    block_n=int(r["block_n"]), block_t=int(r["block_t"]), block_k=BLOCK_K, split_k=int(r["split_k"]),
                    warps=int(r["warps"]), stages=int(r["stages"]),
                    registers_per_thread=int(r["registers_per_thread"]),
                    shared_bytes_per_program=int(r["shared_bytes_per_program"]),
                    loop_instructions_per_thread=float(st["loop_instructions_per_thread"]),
                    weight_bytes_per_weight=0.5 if int(r["half"]) else 1.0, output_bytes=4.0,
                    split_reduction=False, **pipe_counts(st))))
    return out


def fp8_triton_rows(paths: list[Path]) -> list[tuple[dict, object]]:
    """(measured row, LoopStructure) for the ``fp8_triton`` rows of scripts/bench_gpu.py CSVs: the W4A8 v4 kernel's
    loop with FP8 weights and no expansion (compiled from the kernel code of the commit that added the CSV; its
    registers/shared memory from the row)."""
    from scripts.validate_perf_on_gpu import compile_at_commit, kernel_commit_of, row_config
    from sim.perf.fused_kernel import LoopStructure

    out, cache = [], {}
    for path in paths:
        commit = kernel_commit_of(path)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["scheme"] != "fp8_triton" or not r.get("latency_s"):
                    continue
                cfg = row_config(r)
                key = (commit, cfg["block_n"], cfg["block_t"], cfg["num_warps"], cfg["num_stages"],
                       cfg["groups_per_step"])
                if key not in cache:
                    cache[key] = compile_at_commit(commit, "fp8", cfg)
                st = cache[key]
                out.append((dict(r, experiment="fp8_triton", alu="0", half="0"), LoopStructure(
                    block_n=cfg["block_n"], block_t=cfg["block_t"], block_k=BLOCK_K * cfg["groups_per_step"],
                    split_k=cfg["split_k"], warps=cfg["num_warps"], stages=cfg["num_stages"],
                    registers_per_thread=int(r.get("registers") or st["registers_per_thread"]),
                    shared_bytes_per_program=int(r.get("shared_bytes") or st["shared_bytes_per_program"]),
                    loop_instructions_per_thread=float(st["loop_instructions_per_thread"]),
                    weight_bytes_per_weight=1.0, split_reduction=not cfg["reduce_in_kernel"], **pipe_counts(st))))
    return out


def _sweep_rows(paths: list[Path], scheme: str, variant: str, skip) -> list[tuple[dict, object]]:
    """(measured row, LoopStructure) of a fused variant's rows of scripts/bench_gpu.py sweeps, but those for which
    ``skip(row, config text)`` is true (SASS of the kernel code of the commit that added each CSV)."""
    from scripts.validate_perf_on_gpu import fused_structure, kernel_commit_of, load_structures

    out, structures = [], load_structures()
    for path in paths:
        commit = kernel_commit_of(path)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["scheme"] != scheme or not r.get("latency_s") or skip(r, r.get("config") or ""):
                    continue
                out.append((dict(r, experiment=f"{variant}_tuning", alu="0", half="0", variant=variant),
                            fused_structure(dict(r, variant=variant), variant, structures, commit)))
    return out


def v5_tuning_rows(paths: list[Path]) -> list[tuple[dict, object]]:
    """The W4A8 v5 rows of sweeps (``tuning_<card>*.csv``, scheme ``w4a8_fused`` on a card whose variant is v5):
    configurations whose costs the model has terms for only - no in-kernel split-K reduction (its serial tail is not
    modelled), no register cap (spills, serialised wgmmas), 3 or more stages."""
    return _sweep_rows(paths, "w4a8_fused", "v5", lambda r, c: "reduce_in_kernel=True" in c
                       or "maxnreg=None" not in c or "num_stages=2" in c)


def v6_tuning_rows(paths: list[Path], scheme: str = "w4a8_fused_v6") -> list[tuple[dict, object]]:
    """The Gluon kernel's rows of sweeps (scheme ``w4a8_fused_v6``, or ``w4a8_fused_v6_pdl`` for the sweep with
    programmatic dependent launch, at decode tiles, where it ran rather than v5's tiles on the same layout): one A
    tile, no in-kernel reduction, no register cap (the configurations the launch heuristic and the tuned tables
    use)."""
    rows = _sweep_rows(paths, scheme, "v6", lambda r, c: int(r["m"]) > 64 or "reduce_in_kernel=True" in c
                       or "maxnreg=None" not in c or "a_buffers=2" in c)
    return [(r, s) for r, s in rows if s.launched_warps is not None]


def holds_its_share(hw, r: dict, s) -> bool:
    """Whether a launch's ring lets an SM hold no more than its share of the programs, ceil(programs / SMs), or
    fills the SMs anyway: the dependent launches the 'share' ring depth makes. With room for more, a dependent
    launch's early programs crowd onto the SMs that free first, which the model has no term for."""
    from sim.perf.fused_kernel import launch_programs, resident_programs

    programs = launch_programs(s, int(r["m"]), int(r["n"]), int(r["k"]))
    return resident_programs(hw, s) <= math.ceil(programs / hw.sm.count)


def fit(paths: list[Path], profile: str, spread: str | None, bench: list[Path] | None = None,
        only: list[str] | None = None, tuning: list[Path] | None = None, v6_tuning: list[Path] | None = None,
        v6_pdl_tuning: list[Path] | None = None) -> int:
    """Fit the triton_loop parameters to the probe rows (and the fp8_triton rows of ``bench`` CSVs, the v5 rows of
    ``tuning`` sweeps); or, with ``v6_tuning`` sweeps alone, the gluon_loop parameters (the loop costs of the Gluon
    kernel; the sm section's issue cycles stay the profile's) to those. Print them as YAML and the per-row errors.
    ``only``: fit just these FIT_PARAMETERS (profile keys as printed), keeping the profile's values of the others."""
    import numpy as np
    from scipy.optimize import least_squares

    from sim.perf.fused_kernel import fused_gemm_timing, loop_costs
    from sim.profiles import load_profile

    hw0 = load_profile(profile)
    section = "gluon_loop" if v6_tuning or v6_pdl_tuning else "triton_loop"
    if section == "gluon_loop" and hw0.gluon_loop is None:
        raise SystemExit(f"--fit-v6-tuning: profile {profile!r} has no gluon_loop section to fit (start it as a copy "
                         f"of its triton_loop)")
    spread = spread or getattr(hw0, section).program_spread
    params = FIT_PARAMETERS if section == "triton_loop" else tuple(p for p in FIT_PARAMETERS if "." not in p[0])

    def full(name):
        return name if "." in name else f"{section}.{name}"
    if only:
        unknown = set(only) - {full(p[0]) for p in params}
        if unknown:
            raise SystemExit(f"--fit-only: unknown parameter(s) {sorted(unknown)}; expected some of "
                             f"{[full(p[0]) for p in params]}")
        params = tuple(p for p in params if full(p[0]) in only)
    else:
        params = tuple(p for p in params if p[0] != "dependent_kernel_fixed_s")
    if section == "gluon_loop":
        rows = v6_tuning_rows(v6_tuning or []) + [
            (r, s) for r, s in v6_tuning_rows(v6_pdl_tuning or [], "w4a8_fused_v6_pdl") if holds_its_share(hw0, r, s)]
    else:
        rows = probe_rows(paths) + fp8_triton_rows(bench or []) + v5_tuning_rows(tuning or [])
    measured = np.array([float(r["latency_s"]) for r, _ in rows])

    def profile_with(x):
        sets = {full(name): float(v * unit) for (name, unit, *_), v in zip(params, x)}
        sets[f"{section}.program_spread"] = spread
        return load_profile(profile, sets)

    def residuals(x):
        hw = profile_with(x)
        pred = [fused_gemm_timing(hw, s, int(r["m"]), int(r["n"]), int(r["k"])).time_s for r, s in rows]
        return np.log(np.array(pred) / measured)

    res = least_squares(residuals, [p[2] for p in params], bounds=([p[3] for p in params],
                                                                   [p[4] for p in params]))
    hw = profile_with(res.x)
    for (r, s), e in zip(rows, res.fun):
        t = fused_gemm_timing(hw, s, int(r["m"]), int(r["n"]), int(r["k"]))
        print(f"{r['experiment']:10s} {s.block_n:3d}x{s.block_t:<3d} w={s.warps} s={s.stages} alu={int(r['alu']):2d} "
              f"half={r['half']} n={r['n']:>5s} split={s.split_k:2d} P={t.resident_programs_per_sm} "
              f"measured {float(r['latency_s']) * 1e6:7.2f} us  model {t.time_s * 1e6:7.2f} us  "
              f"{math.expm1(e):+.1%} ({t.bound})")
    rms = float(np.sqrt(np.mean(res.fun ** 2)))
    print(f"# {len(rows)} rows, program_spread {spread}: rms log error {rms:.4f}")
    for (name, unit, *_), v in zip(params, res.x):
        print(f"{full(name)}: {v * unit:.4g}")
    loop = loop_costs(hw, rows[0][1]) if rows else getattr(hw, section)
    print(f"{section}.program_spread: {spread}  (as in the profile: sm.fp32_issue_cycles "
          f"{hw.sm.fp32_issue_cycles:g}, sm.other_issue_cycles {hw.sm.other_issue_cycles:g}, "
          f"{section}.cycles_per_instruction {loop.cycles_per_instruction:g})")
    return 0


UNFUSED_SHAPES = ((57344, 8192, 1), (4096, 4096, 1), (57344, 8192, 64))  # (n, k, m)


def unfused_ops(out: Path) -> int:
    """The CUDA kernels that scripts/bench_gpu.py's ``w4a8_unfused`` path launches (dpq.torch_backend's torch-op
    expansion of the packed weight, the FP8 cast, torch._scaled_mm), one row per kernel launch of two calls: its
    name and duration as the torch profiler's trace reports them. This is the path's structure, which
    the streaming model of scripts/validate_perf_on_gpu.py takes as its op list; the durations are recorded for the
    report only (they are W4A8 measurements and never used for calibration)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from dpq.torch_backend import expanded_weight_values

    card = torch.cuda.get_device_properties(0).name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"probe_unfused_ops_{card.replace(' ', '_')}.csv"
    gen = torch.Generator(device="cuda").manual_seed(0)
    one = torch.tensor(1.0, device="cuda")
    sc = torch.tensor(0.01, device="cuda")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["card", "n", "k", "m", "call", "index", "kernel", "duration_s"])
        w.writeheader()
        for n, k, m in UNFUSED_SHAPES:
            codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
            scales = torch.rand((n, k // 128), device="cuda", generator=gen) * 1.5 + 0.5
            zeros = torch.randint(0, 16, (n, k // 128), dtype=torch.uint8, device="cuda", generator=gen)
            x8 = torch.randn((m, k), device="cuda", generator=gen).to(torch.float8_e4m3fn)

            def call():
                wf = expanded_weight_values(codes, scales, zeros, 128, "float8_e4m3fn")
                return torch._scaled_mm(x8, wf.to(torch.float8_e4m3fn).t(), scale_a=one, scale_b=sc,
                                        out_dtype=torch.bfloat16, use_fast_accum=True)
            call()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    call()
                torch.cuda.synchronize()
            trace = out / f"probe_unfused_ops_{n}x{k}_m{m}.json"
            prof.export_chrome_trace(str(trace))
            import json

            events = json.loads(trace.read_text())["traceEvents"]
            kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
            trace.unlink()
            per_call = max(len(kernels) // 2, 1)
            for i, e in enumerate(kernels):
                w.writerow(dict(card=card, n=n, k=k, m=m, call=i // per_call, index=i % per_call,
                                kernel=e["name"][:160], duration_s=f"{float(e['dur']) * 1e-6:.6e}"))
                print(f"n={n} k={k} m={m} {i:2d} {float(e['dur']):9.1f} us  {e['name'][:110]}", flush=True)
            torch.cuda.synchronize()
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--structure", type=Path, help="probe CSV: write its configurations' SASS structure (no GPU)")
    ap.add_argument("--fit", type=Path, nargs="+", help="probe CSVs: fit the profile's triton_loop parameters")
    ap.add_argument("--profile", default="h200-triton-w4a8", help="profile whose sm/memory sections --fit uses")
    ap.add_argument("--fit-bench", type=Path, nargs="+", default=None,
                    help="bench_gpu.py CSVs whose fp8_triton rows join the --fit calibration")
    ap.add_argument("--fit-tuning", type=Path, nargs="+", default=None,
                    help="bench_gpu.py sweeps (tuning_<card>*.csv) of the v5 kernel whose rows join the --fit "
                         "calibration (those configurations the model has terms for)")
    ap.add_argument("--fit-v6-tuning", type=Path, nargs="+", default=None,
                    help="bench_gpu.py sweeps of the v6 kernel (scheme w4a8_fused_v6): fit the profile's gluon_loop "
                         "section to their decode rows instead (no probe CSVs)")
    ap.add_argument("--fit-v6-pdl-tuning", type=Path, nargs="+", default=None,
                    help="bench_gpu.py sweeps of the v6 kernel with programmatic dependent launch (scheme "
                         "w4a8_fused_v6_pdl): their decode rows join the gluon_loop fit (e.g. --fit-only "
                         "gluon_loop.dependent_kernel_fixed_s)")
    ap.add_argument("--spread", choices=("ceil", "even"), default=None, help="program_spread to fit with")
    ap.add_argument("--fit-only", default=None,
                    help="comma list of the FIT_PARAMETERS to fit (e.g. the memory-side ones); the rest as profiled")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rotate-bytes", type=float, default=2.4e8)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated experiment names to run")
    ap.add_argument("--unfused-ops", action="store_true",
                    help="on the GPU: list the CUDA kernels of scripts/bench_gpu.py's w4a8_unfused path (torch "
                         "profiler) for a few shapes; writes probe_unfused_ops_<card>.csv (structure, not a fit)")
    args = ap.parse_args(argv)
    if args.fit or args.fit_v6_tuning or args.fit_v6_pdl_tuning:
        if args.fit and (args.fit_v6_tuning or args.fit_v6_pdl_tuning):
            ap.error("--fit (triton_loop) and --fit-v6-tuning (gluon_loop) fit different sections: one at a time")
        root = Path(__file__).resolve().parents[1]
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return fit(args.fit or [], args.profile, args.spread, args.fit_bench,
                   args.fit_only.split(",") if args.fit_only else None, args.fit_tuning, args.fit_v6_tuning,
                   args.fit_v6_pdl_tuning)
    if args.structure:
        print(f"wrote {write_structure(args.structure)}")
        return 0
    if args.out is None:
        ap.error("--out is required for a GPU run")
    if args.unfused_ops:
        return unfused_ops(args.out)
    import torch
    import triton

    kernel = build_kernel()
    dev = torch.cuda.get_device_properties(0)
    card, sms = dev.name, dev.multi_processor_count
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    gen = torch.Generator(device="cuda").manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"probe_triton_loop_{card.replace(' ', '_')}.csv"
    weights = {}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        only = set(args.only.split(",")) if args.only else None
        for exp, n, k, m, block_n, block_t, warps, stages, alu, half, split, alu_op in experiments(args.quick):
            if only and exp not in only:
                continue
            row_bytes = k // 2 if half else k
            w_bytes = n * row_bytes
            copies = max(2, math.ceil(args.rotate_bytes / w_bytes))
            key = (n, row_bytes)
            if key not in weights:
                weights[key] = [torch.randint(0, 120, (n, row_bytes), dtype=torch.uint8, device="cuda",
                                              generator=gen) for _ in range(copies)]
            ws = weights[key]
            x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
            k_tiles = k // BLOCK_K
            per = math.ceil(k_tiles / split)
            parts = math.ceil(k_tiles / per)
            part = torch.empty(parts * m * n, dtype=torch.float32, device="cuda")
            grid = (n // block_n, math.ceil(m / block_t), parts)
            compiled = {}

            def call(wt):
                def fn():
                    compiled["k"] = kernel[grid](wt, x, part, m, n, k, wt.stride(0), x.stride(0), per, 0,
                                                 BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_K=BLOCK_K, ALU=alu,
                                                 ALU_ASM=alu_asm(alu, alu_op),
                                                 HALF=bool(half), num_warps=warps, num_stages=stages)
                return fn
            calls_n = max(len(ws), min(400, math.ceil(2e-3 / max(w_bytes / 3e12, 2e-6))))
            calls = [call(ws[i % len(ws)]) for i in range(calls_n)]
            try:
                t, spread = time_graph(torch, calls, args.repeats, warmup=2)
            except Exception as exc:  # a configuration the compiler refuses (e.g. shared memory) is reported
                print(f"{exp} bn={block_n} bt={block_t} w={warps} s={stages} alu={alu} half={half}: {exc}")
                continue
            ck = compiled["k"]
            row = dict(card=card, sm_count=sms, triton=triton.__version__, torch=torch.__version__, date=date,
                       experiment=exp, block_n=block_n, block_t=block_t, warps=warps, stages=stages, alu=alu,
                       alu_op=alu_op,
                       half=half, n=n, k=k, m=m, split_k=parts, programs=grid[0] * grid[1] * grid[2],
                       iterations_per_program=per, registers_per_thread=ck.n_regs,
                       shared_bytes_per_program=ck.metadata.shared, weight_bytes=w_bytes,
                       latency_s=f"{t:.6e}", spread_rel=f"{spread:.4f}", calls_per_graph=calls_n)
            w.writerow(row)
            f.flush()
            print(f"{exp:8s} bn={block_n} bt={block_t} w={warps} s={stages} alu={alu:2d} {alu_op} half={half} "
                  f"split={parts:2d} progs={row['programs']:5d} it={per:3d} regs={ck.n_regs} "
                  f"smem={ck.metadata.shared}: {t * 1e6:8.2f} us  {w_bytes / t / 1e12:.2f} TB/s", flush=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
