"""Benchmark W4A8 on one CUDA GPU against BF16 and FP8 cuBLAS, side by side in one run.

For Llama-2-7B, Llama-3-8B and Llama-2-70B linear shapes (fused QKV and gate/up, as ``sim.models`` lists them) and
M in 1, 4, 16, 64, 256, 1024, 4096 tokens, four ways to compute y = x @ W^T (bf16 output):

* ``bf16``          torch.matmul, BF16 weights (cuBLAS);
* ``fp8``           torch._scaled_mm, FP8 E4M3 weights and activations, per-tensor scales (cuBLAS, fast accum);
* ``w4a8_fused``    the fused kernel of dpq/kernels reading packed INT4 (groups of 128), variant
                    ``--fused-variant`` (default: the card's, ``default_variant_for``);
* ``w4a8_fused_default`` that variant with the default configuration only (what ``w4a8_matmul`` runs
                    when given no config: the card's tuned configuration of the GEMM if its profile has one,
                    else the tile heuristic with the card's SM limits);
* ``w4a8_fused_rule`` that variant with the tile heuristic only (no tuned configuration);
* ``w4a8_fused_reduce`` that configuration with the split-K parts added in the kernel (``reduce_in_kernel``);
* ``w4a8_fused_pdl`` that configuration launched with programmatic dependent launch and 2 K steps of L2
                    prefetch (``KernelConfig.pdl``): back-to-back calls overlap one's tail with the next one's start;
* ``w4a8_fused_nowait`` that configuration without the wait for each K step's wgmmas (``mma_wait_each_step``:
                    Triton's own pipelining, which has a register hazard; only to measure what the wait costs);
* ``w4a8_fused_v6`` variant "v6" (the v5 layout; at decode tiles the Gluon kernel of dpq/kernels/w4a8_gluon.py,
                    which expands each row into a shared-memory A tile; v5's kernel elsewhere);
* ``w4a8_fused_v5`` variant "v5" (codes group-major + float32 scale and zero byte per group, the 16-entry tables
                    built in the loop: 0.539 byte per weight);
* ``w4a8_fused_v5old`` variant "v5" with the split rule it had before the wave rule (``default_config`` without
                    ``sm_limits``), that configuration only;
* ``w4a8_fused_v4`` variant "v4" (codes group-major + a 16-byte FP8 table per group, 0.625 byte per weight);
* ``w4a8_fused_v3`` its earlier variant "lut" (v3: the same bytes, codes row-major, 2-byte shared loads);
* ``w4a8_fused_v2`` the variant "v2" (codes + float32 scale and uint8 zero per group, expanded with float32
                    arithmetic per weight; 0.539 byte per weight);
* ``fp8_triton``    the v4 kernel's loop with weights already FP8 (1 byte per weight, no expansion; variant "fp8",
                    the same tile heuristic): the cost of the Triton loop itself, for calibrating the perf model;
* ``w4a8_unfused``  the same packed weights expanded to FP8 by torch ops on every call, then torch._scaled_mm;
* ``w4a8_expand``   the card's variant expanded to FP8 by one Triton kernel on every call (``expand_to_fp8``), then
                    torch._scaled_mm (``w4a8_matmul_expanded``: the prefill path; cuBLAS numerics).

Activations are already FP8 for the FP8 schemes (their quantization is a separate elementwise op in every scheme).

Method (the same as scripts/measure_gpu_gemm.py, so the numbers are comparable): random data (never zeros);
weights rotate over enough copies that more than ``--rotate-bytes`` are touched between two uses of one copy (each
call reads its weights from HBM, as a decode step does); each timing replays a CUDA graph of back-to-back calls
timed with CUDA events; the median of ``--repeats`` replays divided by the calls per graph is reported. For the
fused kernel a few tile configurations are tried per (shape, M) and the fastest is kept (all are listed in the
tuning CSV); each tried configuration is first checked against a float64 reference of the same FP8 operands.

``--layer-chain`` also times whole decoder layers: one CUDA graph runs the layer's four GEMMs in order (QKV, O,
gate/up, down), layer after layer over enough weight copies, for BF16 and FP8 cuBLAS and the fused kernels with and
without programmatic dependent launch (``--chain-schemes``: ``KernelConfig.pdl``, where each kernel's start
overlaps the tail of the one before), and ``auto``: ``w4a8_linear``, the fused kernel below the card's
``expand_from_tokens`` and the prefill path from it (what ``TorchLinear(kernel="triton")`` runs); the last layer's outputs are compared bit for bit with the same GEMMs run one
at a time (what that covers: a kernel's split-K parts read before they are written, a reused workspace or arrival
counter overwritten while still in use; not activations produced by the kernel before - every GEMM here reads a
fixed input - nor the norm, attention and activation kernels of a real layer, which the chain leaves out). Written
to ``layer_<card>.csv``.

Writes ``bench_<card>.csv`` and ``tuning_<card>.csv`` under ``--out``; every row carries card, driver, torch,
triton, CUDA and the date. Prints a decode summary (speed-ups of the tuned w4a8_fused and of its default
configuration at M <= 64 on each shape and per decoder layer) last.

    python3 scripts/bench_gpu.py --out results/gpu/ [--models llama-2-70b] [--m 1,4,16] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.gpu_timing import time_graph  # noqa: E402

# (model, layer, n, k): sim.models' linear_shapes() of each model (QKV and gate/up fused), one GPU.
SHAPES = [
    ("llama-2-7b", "qkv_proj", 12288, 4096), ("llama-2-7b", "o_proj", 4096, 4096),
    ("llama-2-7b", "gate_up_proj", 22016, 4096), ("llama-2-7b", "down_proj", 4096, 11008),
    ("llama-3-8b", "qkv_proj", 6144, 4096), ("llama-3-8b", "o_proj", 4096, 4096),
    ("llama-3-8b", "gate_up_proj", 28672, 4096), ("llama-3-8b", "down_proj", 4096, 14336),
    ("llama-2-70b", "qkv_proj", 10240, 8192), ("llama-2-70b", "o_proj", 8192, 8192),
    ("llama-2-70b", "gate_up_proj", 57344, 8192), ("llama-2-70b", "down_proj", 8192, 28672),
]
M_VALUES = (1, 4, 16, 64, 256, 1024, 4096)
SCHEMES = ("bf16", "fp8", "w4a8_fused", "w4a8_fused_default", "w4a8_fused_rule", "w4a8_fused_reduce", "w4a8_fused_pdl",
           "w4a8_fused_pdl_late", "w4a8_fused_nowait", "w4a8_expand", "w4a8_fused_v5", "w4a8_fused_v5old",
           "w4a8_fused_v6", "w4a8_fused_v4", "w4a8_fused_v3", "w4a8_fused_v2", "fp8_triton", "w4a8_unfused",
           "w4a8_fused_deep", "w4a8_fused_pdl_deep", "w4a8_fused_pdl_deep_reduce", "w4a8_fused_nopolicy",
           "w4a8_fused_v6_pdl")
FUSED_VARIANTS = {"w4a8_fused": None, "w4a8_fused_default": None, "w4a8_fused_rule": None, "w4a8_fused_reduce": None,
                  "w4a8_fused_pdl": None, "w4a8_fused_pdl_late": None, "w4a8_fused_deep": None,
                  "w4a8_fused_pdl_deep": None, "w4a8_fused_pdl_deep_reduce": None, "w4a8_fused_nopolicy": None,
                  "w4a8_fused_v6_pdl": "v6", "w4a8_fused_nowait": None, "w4a8_fused_v5": "v5",
                  "w4a8_fused_v5old": "v5", "w4a8_fused_v6": "v6",
                  "w4a8_fused_v4": "v4", "w4a8_fused_v3": "lut", "w4a8_fused_v2": "v2",
                  "fp8_triton": "fp8"}  # None: --fused-variant (the card's)
OLD_RULE_SCHEMES = ("w4a8_fused_v5old",)  # the split rule without the card's SM limits
RULE_SCHEMES = ("w4a8_fused_rule", "w4a8_fused_v5old")  # the heuristic, never the card's tuned configuration
HEURISTIC_ONLY_SCHEMES = ("w4a8_fused_default", "w4a8_fused_rule", "w4a8_fused_reduce", "w4a8_fused_v5old",
                          "w4a8_fused_pdl", "w4a8_fused_deep", "w4a8_fused_pdl_deep", "w4a8_fused_pdl_deep_reduce",
                          "w4a8_fused_nopolicy",
                          "w4a8_fused_pdl_late", "w4a8_fused_nowait")
# the default configuration with these KernelConfig changes
CONFIG_SCHEMES = {"w4a8_fused_reduce": {"reduce_in_kernel": True},
                  "w4a8_fused_pdl": {"pdl": True, "l2_prefetch_steps": 2},
                  "w4a8_fused_pdl_late": {"pdl": True, "l2_prefetch_steps": 2, "pdl_trigger": "after_loop"},
                  "w4a8_fused_nowait": {"mma_wait_each_step": False},
                  # "deep": the launch without the card's decode policy, its ring as deep as its share of
                  # programs per SM allows (ring_for_share(deepest=True); session 8's first experiment)
                  "w4a8_fused_deep": {"deep": True, "policy": False},
                  "w4a8_fused_pdl_deep": {"deep": True, "pdl": True, "policy": False},
                  "w4a8_fused_pdl_deep_reduce": {"deep": True, "pdl": True, "reduce_in_kernel": True,
                                                 "policy": False}}  # default configuration with these changes
GROUP_SIZE = 128
FIELDS = ["card", "driver", "torch", "triton", "cuda", "sm_count", "date", "model", "layer", "scheme", "m", "n", "k",
          "latency_s", "spread_rel", "calls_per_graph", "weight_copies", "weight_bytes", "hbm_bytes",
          "achieved_tb_per_s", "achieved_tflop_per_s", "variant", "config", "block_n", "block_t", "split_k",
          "num_warps", "num_stages", "groups_per_step", "reduce_in_kernel", "maxnreg", "registers", "shared_bytes",
          "pdl", "l2_prefetch_steps", "pdl_trigger", "mma_wait_each_step", "a_buffers"]
CONFIG_FIELDS = ("block_n", "block_t", "split_k", "num_warps", "num_stages", "groups_per_step", "reduce_in_kernel",
                 "maxnreg", "pdl", "l2_prefetch_steps", "pdl_trigger", "mma_wait_each_step", "a_buffers")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def device_info(torch) -> dict:
    import triton

    from dpq.kernels.w4a8_triton import SMLimits

    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return {"card": props.name, "driver": driver, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "sm_count": props.multi_processor_count,
            "limits": SMLimits.of_device(0),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def make_weights(torch, n: int, k: int, gen):
    """Random packed INT4 weight (codes, scales, zeros) with FP8-safe scales, on the GPU."""
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    scales = (torch.rand((n, k // GROUP_SIZE), device="cuda", generator=gen) * 1.5 + 0.5).float()
    zeros = torch.randint(0, 16, (n, k // GROUP_SIZE), dtype=torch.uint8, device="cuda", generator=gen)
    return codes, scales, zeros


V5_SWEEP_SPLITS = (1, 2, 3, 4, 5, 6, 8, 12, 16)  # split-K counts every v5 decode shape is also timed at


def launch_or_rule(m: int, n: int, k: int, limits, variant: str, device_name: str, rule: bool = False,
                   policy: bool = True):
    """What ``w4a8_matmul`` launches without a config (the card's tuned configuration, else the heuristic), or with
    ``rule`` the card's heuristic alone; both with the card's decode launch policy (dependent launch, ring depth)
    unless ``policy`` is False."""
    from dpq.kernels.w4a8_triton import decode_launch_policy, heuristic_config_for, tuned_config_for

    cfg = None if rule else tuned_config_for(device_name, variant, m, n, k, GROUP_SIZE)
    cfg = cfg or heuristic_config_for(device_name, limits, m, n, k, GROUP_SIZE, variant)
    return decode_launch_policy(device_name, limits, cfg, m, n, k, GROUP_SIZE, variant) if policy else cfg


def fused_candidates(m: int, n: int, k: int, limits, quick: bool, variant: str, old_rule: bool = False,
                     changes: dict | None = None, device_name: str = "", rule: bool = False, policy: bool = True,
                     dependent_sweep: bool = False):
    """Tile configurations tried for the fused kernel at this shape, what a launch runs first (the card's tuned
    configuration for ``device_name``, else the heuristic; ``rule``: the heuristic). ``limits``: the card's
    SMLimits; ``old_rule``: the heuristic without them (v5's split rule before the wave rule); ``changes``:
    KernelConfig changes applied to the first configuration; ``policy``: the first configuration with the card's
    decode launch policy. The sweep around it is built on the heuristic's; ``dependent_sweep``: every
    configuration of the sweep with programmatic dependent launch, each also at its 'share' rings, the shallowest
    and the deepest (ring_for_share; the calibration rows of the model's dependent_kernel_fixed_s)."""
    from dpq.kernels.w4a8_triton import KernelConfig, default_config

    base = default_config(m, n, k, limits.num_sms, GROUP_SIZE, variant, sm_limits=None if old_rule else limits)
    changes = dict(changes or {})
    deep = changes.pop("deep", False)
    policy = changes.pop("policy", policy)
    first = base if old_rule else launch_or_rule(m, n, k, limits, variant, device_name, rule, policy)
    if changes or deep:
        first = replace(first, **changes)
        if deep:
            from dpq.kernels.w4a8_triton import ring_for_share

            first = ring_for_share(first, m, n, k, GROUP_SIZE, limits, deepest=True)
    cands = [first, base]  # what a launch runs, then the heuristic's configuration (the same without a tuned one)
    if quick:
        return cands[:1]
    s = base.split_k
    if m <= 64 and variant == "v6":
        # split counts at 3, 4 and 5 stages (one A tile: 4, 3 and 3 programs per SM at 16 tokens), two A tiles at
        # 3 stages, and the in-kernel reduction at each depth (at M <= 4 it was 2-3 % faster on the 70B GEMMs at 4
        # stages, sessions 6 and 7)
        steps = k // GROUP_SIZE
        for v in (1, 2, 3, 4, 5, 6, 8, 12):
            if v <= max(1, steps // 2):
                cands += [replace(base, split_k=v, num_stages=st, a_buffers=1) for st in (3, 4, 5)]
        cands += [replace(base, num_stages=3, a_buffers=2)]
        cands += [replace(base, reduce_in_kernel=True, num_stages=st) for st in (3, 4, 5)]
    elif m <= 64 and variant == "v5":
        # the split rules (this one and the one before), a sweep of split counts, the in-kernel split-K reduction
        # (fewer parts now), pipeline depth, and register caps for more resident programs (maxnreg: 64 -> 8
        # programs of 4 warps per SM, 56 -> 9; ptxas then serialises the wgmmas, C7512, and spills a few bytes)
        old = default_config(m, n, k, limits.num_sms, GROUP_SIZE, variant)
        steps = k // GROUP_SIZE
        cands += [old] + [replace(base, split_k=v) for v in V5_SWEEP_SPLITS if v <= max(1, steps // 2)]
        cands += [replace(base, reduce_in_kernel=True), replace(base, num_stages=4), replace(base, num_stages=2)]
        # 64-row tiles: twice the programs for short GEMMs (3.58 instead of 2.84 loop instructions per weight)
        cands += [replace(base, block_n=64, split_k=v) for v in (1, 2, 4, 8) if v <= max(1, steps // 2)]
        if base.block_t == 16:
            cands += [replace(base, maxnreg=64), replace(base, maxnreg=56), replace(base, maxnreg=56, num_stages=2)]
    elif m <= 64 and variant in ("v5", "v4", "fp8"):
        # v4 (74 registers, 6 programs per SM at 3 stages): stages, split around the heuristic's, the in-kernel
        # split-K reduction, 8 warps (the rest of the earlier sweeps' candidates never won: results/gpu/README.md)
        cands += [replace(base, num_stages=4), replace(base, split_k=2 * s), replace(base, split_k=max(1, s // 2)),
                  replace(base, reduce_in_kernel=True), replace(base, num_warps=8),
                  replace(base, groups_per_step=2)]
    elif m <= 64 and variant == "lut":
        cands += [replace(base, split_k=2 * s), replace(base, split_k=max(1, s // 2)),
                  replace(base, block_n=64, num_stages=3)]
    elif m <= 64:
        other_n = 64 if base.block_n == 128 else 128
        cands += [replace(base, block_n=other_n), replace(base, split_k=base.split_k * 2)]
    else:
        # prefill tiles: 128 x 128 with split-K (the heuristic does not split above M = 64, leaving the SMs
        # under-filled when N / 128 * M / 128 is below their count), and 128 x 64 tiles with and without it
        wide = KernelConfig(block_n=128, block_t=64, split_k=1, num_warps=4, num_stages=3)
        cands += [replace(base, split_k=v) for v in (1, 2, 3, 4)]
        cands += [wide, replace(wide, split_k=2), replace(wide, split_k=4),
                  KernelConfig(block_n=128, block_t=64, split_k=1, num_warps=4, num_stages=4)]
        # 256-token tiles (each weight expanded once up to M = 256; 210 registers, one program per SM) and
        # 256-row tiles (half the expansion instructions per weight of 128-row ones), both 8 warps, 2 stages
        tall = KernelConfig(block_n=128, block_t=256, split_k=1, num_warps=8, num_stages=2)
        rows256 = KernelConfig(block_n=256, block_t=128, split_k=1, num_warps=8, num_stages=2)
        cands += [tall, replace(tall, split_k=2), replace(tall, split_k=4), rows256, replace(rows256, split_k=2)]
    if dependent_sweep:
        from dpq.kernels.w4a8_triton import ring_for_share

        cands = [replace(c, pdl=True) for c in cands]
        cands += [ring_for_share(c, m, n, k, GROUP_SIZE, limits, deepest=d) for c in cands for d in (False, True)]
    seen, out = set(), []
    steps = k // GROUP_SIZE
    for c in cands:
        per = math.ceil(steps // c.groups_per_step / c.split_k)
        c = replace(c, split_k=math.ceil(steps // c.groups_per_step / per))  # the parts the kernel really runs
        if (c not in seen and (k // GROUP_SIZE) % c.groups_per_step == 0
                and (variant != "v5" or c.groups_per_step == 1)):
            seen.add(c)
            out.append(c)
    return out


def bench_shape(torch, info, model, layer, n, k, m_values, schemes, args, writer, tune_writer, summary):
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, kernel_resources, w4a8_matmul
    from dpq.torch_backend import expanded_weight_values

    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    codes, scales, zeros = make_weights(torch, n, k, gen)
    fused_variant = args.fused_variant
    table_bytes, packed_bytes = codes.numel() + scales.numel() * 16, codes.numel() + scales.numel() * 5
    variant_bytes = {"v5": packed_bytes, "v6": packed_bytes, "v4": table_bytes, "lut": table_bytes,
                     "v2": packed_bytes, "fp8": n * k}
    w_bytes = {"bf16": n * k * 2, "fp8": n * k, "w4a8_fused_v4": table_bytes, "w4a8_fused_v5": packed_bytes,
               "w4a8_fused_v6": packed_bytes, "w4a8_fused_v6_pdl": packed_bytes,
               **{sch: variant_bytes[fused_variant] for sch in ("w4a8_fused_deep", "w4a8_fused_pdl_deep",
                                                                "w4a8_fused_pdl_deep_reduce", "w4a8_fused_nopolicy")},
               "w4a8_fused": variant_bytes[fused_variant], "w4a8_fused_default": variant_bytes[fused_variant],
               "w4a8_fused_rule": variant_bytes[fused_variant], "w4a8_fused_reduce": variant_bytes[fused_variant],
               "w4a8_fused_pdl": variant_bytes[fused_variant], "w4a8_fused_pdl_late": variant_bytes[fused_variant],
               "w4a8_fused_nowait": variant_bytes[fused_variant], "w4a8_expand": variant_bytes[fused_variant],
               "w4a8_fused_v5old": packed_bytes,
               "w4a8_fused_v3": codes.numel() + scales.numel() * 16, "fp8_triton": n * k,
               "w4a8_fused_v2": codes.numel() + scales.numel() * 5, "w4a8_unfused": codes.numel() + scales.numel() * 5}
    fp8_max = 448.0
    w8 = expanded_weight_values(codes, scales, zeros, GROUP_SIZE, "float8_e4m3fn").to(torch.float8_e4m3fn)
    wbf = (w8.to(torch.float32) * 0.01).to(torch.bfloat16)
    one = torch.tensor(1.0, device="cuda")
    sc = torch.tensor(0.01, device="cuda")
    for m in m_values:
        x = torch.randn((m, k), device="cuda", generator=gen)
        x8 = (x * 32).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
        xbf = x.to(torch.bfloat16)
        for scheme in schemes:
            try:
                copies = max(1, math.ceil(args.rotate_bytes / w_bytes[scheme]))
                # enough back-to-back calls for a graph of ~2 ms (launch gaps and timer resolution negligible)
                est_s = max(w_bytes[scheme] / 3e12, 2 * m * n * k / 6e14, 5e-6)
                calls_n = max(copies, min(args.max_calls, math.ceil(2e-3 / est_s)))
                config_used, cfg, res, variant = "", None, {}, ""
                if scheme == "bf16":
                    ws = [wbf] + [wbf.clone() for _ in range(copies - 1)]
                    calls = [(lambda w=ws[i % copies]: torch.matmul(xbf, w.t())) for i in range(calls_n)]
                elif scheme == "fp8":
                    ws = [w8] + [w8.clone() for _ in range(copies - 1)]
                    calls = [(lambda w=ws[i % copies]: torch._scaled_mm(x8, w.t(), scale_a=one, scale_b=sc,
                                                                        out_dtype=torch.bfloat16, use_fast_accum=True))
                             for i in range(calls_n)]
                elif scheme == "w4a8_expand":
                    from dpq.kernels.w4a8_triton import w4a8_matmul_expanded

                    variant = fused_variant
                    ws = [PackedW4A8Weight.from_arrays(codes.clone() if i else codes, scales, zeros, GROUP_SIZE, 0.01,
                                                       fp8_max, "cuda", variant) for i in range(copies)]
                    ref8 = w4a8_matmul_expanded(x8, ws[0], 1.0, out_dtype="float32")
                    want = torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=sc, out_dtype=torch.float32,
                                            use_fast_accum=False)
                    if not torch.equal(ref8.view(torch.int32), want.view(torch.int32)):
                        raise RuntimeError(f"{model} {layer} m={m}: expand-then-cuBLAS differs from cuBLAS on the "
                                           f"torch-expanded weight")
                    calls = [(lambda w=ws[i % copies]: w4a8_matmul_expanded(x8, w, 1.0)) for i in range(calls_n)]
                elif scheme == "w4a8_unfused":
                    ws = [(codes, scales, zeros)] + [(codes.clone(), scales.clone(), zeros.clone())
                                                     for _ in range(copies - 1)]

                    def unfused(w):
                        wf = expanded_weight_values(w[0], w[1], w[2], GROUP_SIZE, "float8_e4m3fn")
                        return torch._scaled_mm(x8, wf.to(torch.float8_e4m3fn).t(), scale_a=one, scale_b=sc,
                                                out_dtype=torch.bfloat16, use_fast_accum=True)
                    calls_n = copies  # slow: one pass over the copies is enough
                    calls = [(lambda w=ws[i % copies]: unfused(w)) for i in range(calls_n)]
                else:
                    variant = FUSED_VARIANTS[scheme] or fused_variant
                    pw = PackedW4A8Weight.from_arrays(codes, scales, zeros, GROUP_SIZE, 0.01, fp8_max, "cuda", variant)
                    if pw.hbm_bytes != w_bytes[scheme]:
                        raise RuntimeError(f"{scheme}: weight holds {pw.hbm_bytes} bytes, expected {w_bytes[scheme]}")
                    ws = [pw] + [PackedW4A8Weight.from_arrays(codes.clone(), scales.clone(), zeros.clone(), GROUP_SIZE,
                                                              0.01, fp8_max, "cuda", variant)
                                 for _ in range(copies - 1)]
                    ref = (x8.double() @ w8.double().t()) * 0.01
                    best = None
                    quick = {"w4a8_fused_v2": args.quick_v2, "fp8_triton": args.quick_fp8_triton,
                             "w4a8_fused_v3": args.quick_v3}.get(scheme, args.quick)
                    quick = quick or scheme in HEURISTIC_ONLY_SCHEMES or scheme in args.heuristic_only
                    cands = fused_candidates(m, n, k, info["limits"], quick, variant,
                                             old_rule=scheme in OLD_RULE_SCHEMES, changes=CONFIG_SCHEMES.get(scheme),
                                             device_name=info["card"], rule=scheme in RULE_SCHEMES,
                                             policy=scheme != "w4a8_fused_nopolicy",
                                             dependent_sweep=scheme == "w4a8_fused_v6_pdl")
                    rule_cfg = launch_or_rule(m, n, k, info["limits"], variant, info["card"], rule=True)
                    for j, cfg in enumerate(cands):
                        # tune_table.py compares the fastest with the heuristic's configuration: the row marked "rule"
                        role = "+".join((["launch"] if j == 0 else []) + (["rule"] if cfg == rule_cfg else []))
                        res = kernel_resources(x8, pw, cfg)
                        y = w4a8_matmul(x8, pw, 1.0, out_dtype="float32", config=cfg)
                        err = float((y.double() - ref).norm() / ref.norm())
                        if not err < 1e-2:
                            raise RuntimeError(f"{model} {layer} m={m} {cfg}: relative error {err:.3g} vs float64")
                        ccalls = [(lambda w=ws[i % copies], c=cfg: w4a8_matmul(x8, w, 1.0, config=c))
                                  for i in range(calls_n)]
                        t, spread = time_graph(torch, ccalls, args.repeats)
                        tune_writer.writerow({"card": info["card"], "scheme": scheme, "model": model, "layer": layer,
                                              "m": m, "n": n,
                                              "k": k, "config": repr(cfg), "latency_s": f"{t:.6e}",
                                              "rel_error_vs_f64": f"{err:.2e}", **res, "role": role})
                        if best is None or t < best[0]:
                            best = (t, spread, cfg, res)
                    t, spread, cfg, res = best
                    config_used = repr(cfg)
                    calls = None
                if calls is not None:
                    t, spread = time_graph(torch, calls, args.repeats)
                act_bytes = m * k * (2 if scheme == "bf16" else 1) + m * n * 2
                hbm = w_bytes[scheme] + act_bytes + (2 * n * k if scheme == "w4a8_expand" else 0)  # FP8 out, in
                row = dict(info, model=model, layer=layer, scheme=scheme, m=m, n=n, k=k, latency_s=f"{t:.6e}",
                           spread_rel=f"{spread:.4f}", calls_per_graph=calls_n, weight_copies=copies,
                           weight_bytes=w_bytes[scheme], hbm_bytes=hbm, achieved_tb_per_s=f"{hbm / t / 1e12:.3f}",
                           achieved_tflop_per_s=f"{2 * m * n * k / t / 1e12:.2f}", variant=variant,
                           config=config_used,
                           registers=res.get("registers", ""), shared_bytes=res.get("shared_bytes", ""),
                           **{f: (getattr(cfg, f) if cfg is not None else "") for f in CONFIG_FIELDS})
                row = {f: row[f] for f in FIELDS}
                writer.writerow(row)
                summary[(model, layer, m, scheme)] = t
                log(f"  {model} {layer} m={m} {scheme}: {t * 1e6:.1f} us  {row['achieved_tb_per_s']} TB/s  "
                    f"{row['achieved_tflop_per_s']} TFLOP/s {config_used}")
                del ws
            except Exception as exc:  # noqa: BLE001 - record, keep measuring the other schemes
                torch.cuda.synchronize()
                log(f"  {model} {layer} m={m} {scheme}: FAILED {type(exc).__name__}: {exc}")
        torch.cuda.empty_cache()


# Layer-chain schemes: cuBLAS, or the fused kernel (variant; None = the card's) at its default configuration with
# these KernelConfig changes.
CHAIN_SCHEMES = {
    "bf16": None, "fp8": None,
    "fp8_triton": ("fp8", {}), "fp8_triton_pdl": ("fp8", {"pdl": True}),
    "default": (None, {}), "pdl": (None, {"pdl": True}),
    "auto": (None, {}),  # w4a8_linear: the fused kernel below the card's expand_from_tokens, the prefill path from it
    "auto_rule": (None, {}),  # the same with the tile heuristic instead of the card's tuned configurations
    "pdl_pf1": (None, {"pdl": True, "l2_prefetch_steps": 1}),
    "pdl_pf2": (None, {"pdl": True, "l2_prefetch_steps": 2}),
    "pdl_pf4": (None, {"pdl": True, "l2_prefetch_steps": 4}),
    "pdl_reduce": (None, {"pdl": True, "reduce_in_kernel": True}),
    "pdl_pf2_reduce": (None, {"pdl": True, "l2_prefetch_steps": 2, "reduce_in_kernel": True}),
    "v4": ("v4", {}), "v4_pdl": ("v4", {"pdl": True}), "v4_pdl_pf2": ("v4", {"pdl": True, "l2_prefetch_steps": 2}),
    "v5": ("v5", {}), "v5_pdl": ("v5", {"pdl": True}), "v5_pdl_pf2": ("v5", {"pdl": True, "l2_prefetch_steps": 2}),
    "v6": ("v6", {}),
    "pdl_late": (None, {"pdl": True, "pdl_trigger": "after_loop"}),
    "pdl_late_pf2": (None, {"pdl": True, "pdl_trigger": "after_loop", "l2_prefetch_steps": 2}),
    "v6_reduce": ("v6", {"reduce_in_kernel": True}),
    "v6_gps2_st2": ("v6", {"groups_per_step": 2, "num_stages": 2}),
    "v6_gps2_st3": ("v6", {"groups_per_step": 2, "num_stages": 3}),
    # "deep": the launch without the card's decode policy, each GEMM's ring as deep as its share of programs per
    # SM allows (ring_for_share(deepest=True); session 8's first experiment)
    "deep": ("v6", {"deep": True, "policy": False}), "pdl_deep": ("v6", {"deep": True, "pdl": True, "policy": False}),
    "pdl_deep_reduce": ("v6", {"deep": True, "pdl": True, "reduce_in_kernel": True, "policy": False}),
    "pdl_deep_r16": ("v6", {"deep": True, "pdl": True, "reduce16": True, "policy": False}),
    "nopolicy": (None, {"policy": False}),  # the tuned or heuristic configuration without the decode launch policy
    "pdl_cap": ("v6", {"policy": False, "pdl": True, "deep": "cap"}),  # the shallowest ring that caps the share
    "pdl_tile": ("v6", {"policy": False, "pdl": True}),  # dependent launch at the tile's own depth
    "pdl_deep_rule": ("v6", {"deep": True, "pdl": True, "policy": False}),
    "pdl_deeper": ("v6", {"deep": "full", "pdl": True, "policy": False}),
    "v6_st5": ("v6", {"num_stages": 5}), "v6_st3": ("v6", {"num_stages": 3}),
    "nowait": (None, {"mma_wait_each_step": False}), "v4_nowait": ("v4", {"mma_wait_each_step": False}),
    "v5_nowait": ("v5", {"mma_wait_each_step": False}),
}
LAYER_FIELDS = ["card", "driver", "torch", "triton", "cuda", "sm_count", "date", "model", "m", "scheme", "variant",
                "pdl", "l2_prefetch_steps", "reduce_in_kernel", "pdl_trigger", "mma_wait_each_step", "latency_s",
                "spread_rel", "layers_per_graph",
                "weight_copies", "layer_weight_bytes", "achieved_tb_per_s", "bit_equal_outputs", "configs"]


def bench_layer_chain(torch, info, model, m_values, chain_schemes, args, writer, summary):
    """Time one decoder layer's four GEMMs run back to back in one CUDA graph (per scheme and M); check the
    graph's last layer against the same calls run one by one, bit for bit."""
    from dpq.kernels.w4a8_triton import (PackedW4A8Weight, SMLimits, ring_for_share,
                                         uses_prefill_path, w4a8_linear, w4a8_matmul)
    from dpq.torch_backend import expanded_weight_values

    shapes = [(layer, n, k) for mdl, layer, n, k in SHAPES if mdl == model]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(4321)
    packed = [make_weights(torch, n, k, gen) for _, n, k in shapes]
    w8s = [expanded_weight_values(c, s_, z, GROUP_SIZE, "float8_e4m3fn").to(torch.float8_e4m3fn)
           for c, s_, z in packed]
    one = torch.tensor(1.0, device="cuda")
    sc = torch.tensor(0.01, device="cuda")
    limits = SMLimits.of_device(0)
    for m in m_values:
        xs = [torch.randn((m, k), device="cuda", generator=gen) for _, _, k in shapes]
        x8s = [(x * 32).clamp(-448, 448).to(torch.float8_e4m3fn) for x in xs]
        xbfs = [x.to(torch.bfloat16) for x in xs]
        for scheme in chain_schemes:
            try:
                spec = CHAIN_SCHEMES[scheme]
                variant, cfgs = "", [None] * 4
                if scheme == "bf16":
                    wbf = [(w.to(torch.float32) * 0.01).to(torch.bfloat16) for w in w8s]
                    layer_bytes = sum(w.numel() * 2 for w in wbf)
                    copies = max(1, math.ceil(args.rotate_bytes / layer_bytes))
                    ws = [wbf] + [[w.clone() for w in wbf] for _ in range(copies - 1)]

                    def gemm(c, i):
                        return torch.matmul(xbfs[i], ws[c][i].t())
                elif scheme == "fp8":
                    layer_bytes = sum(w.numel() for w in w8s)
                    copies = max(1, math.ceil(args.rotate_bytes / layer_bytes))
                    ws = [w8s] + [[w.clone() for w in w8s] for _ in range(copies - 1)]

                    def gemm(c, i):
                        return torch._scaled_mm(x8s[i], ws[c][i].t(), scale_a=one, scale_b=sc,
                                                out_dtype=torch.bfloat16, use_fast_accum=True)
                else:
                    variant = spec[0] or args.fused_variant
                    first = [PackedW4A8Weight.from_arrays(c, s_, z, GROUP_SIZE, 0.01, 448.0, "cuda", variant)
                             for c, s_, z in packed]
                    layer_bytes = sum(w.hbm_bytes for w in first)
                    copies = max(1, math.ceil(args.rotate_bytes / layer_bytes))
                    ws = [first] + [[PackedW4A8Weight.from_arrays(c.clone(), s_.clone(), z.clone(), GROUP_SIZE, 0.01,
                                                                  448.0, "cuda", variant) for c, s_, z in packed]
                                    for _ in range(copies - 1)]
                    changes = dict(spec[1])
                    deep = changes.pop("deep", False)
                    if changes.pop("reduce16", False):
                        changes["reduce_in_kernel"] = m <= 16
                    rule = scheme in ("auto_rule", "pdl_deep_rule")
                    policy = changes.pop("policy", True)
                    cfgs = [replace(launch_or_rule(m, n, k, limits, variant, info["card"], rule=rule, policy=policy),
                                    **changes) for _, n, k in shapes]
                    if deep:
                        cfgs = [ring_for_share(c, m, n, k, GROUP_SIZE, limits, deepest=deep != "cap",
                                               full_grids_too=deep == "full")
                                for c, (_, n, k) in zip(cfgs, shapes)]

                    def gemm(c, i):
                        if scheme in ("auto", "auto_rule"):
                            return w4a8_linear(x8s[i], ws[c][i], 1.0, config=cfgs[i])
                        return w4a8_matmul(x8s[i], ws[c][i], 1.0, config=cfgs[i])

                    if scheme in ("auto", "auto_rule"):
                        variant += "+expand" if uses_prefill_path(m, first[0]) else ""
                n_layers = max(copies, min(args.max_calls, math.ceil(2e-3 / max(layer_bytes / 3e12, 5e-6))))
                # reference: the graph's last layer's calls one at a time, synchronised in between (no overlap)
                ref = []
                for i in range(4):
                    ref.append(gemm((n_layers - 1) % copies, i))
                    torch.cuda.synchronize()
                t, spread, last = time_graph(
                    torch, [(lambda c=j % copies: [gemm(c, i) for i in range(4)]) for j in range(n_layers)],
                    args.repeats, keep_last=True)
                equal = sum(int(torch.equal(a.view(torch.int16), b.view(torch.int16))) for a, b in zip(last, ref))
                row = dict(info, model=model, m=m, scheme=scheme, variant=variant,
                           pdl=bool(cfgs[0] and cfgs[0].pdl), l2_prefetch_steps=cfgs[0].l2_prefetch_steps if cfgs[0]
                           else "", reduce_in_kernel=bool(cfgs[0] and cfgs[0].reduce_in_kernel),
                           pdl_trigger=cfgs[0].pdl_trigger if cfgs[0] else "",
                           mma_wait_each_step=cfgs[0].mma_wait_each_step if cfgs[0] else "",
                           latency_s=f"{t:.6e}", spread_rel=f"{spread:.4f}", layers_per_graph=n_layers,
                           weight_copies=copies, layer_weight_bytes=layer_bytes,
                           achieved_tb_per_s=f"{layer_bytes / t / 1e12:.3f}", bit_equal_outputs=f"{equal}/4",
                           configs=" | ".join(repr(c) for c in cfgs) if cfgs[0] else "")
                writer.writerow({f: row[f] for f in LAYER_FIELDS})
                summary[(model, m, scheme)] = t
                log(f"  {model} layer m={m} {scheme}: {t * 1e6:.1f} us  {row['achieved_tb_per_s']} TB/s  "
                    f"bit-equal {equal}/4")
                if equal != 4:
                    log(f"  {model} layer m={m} {scheme}: OUTPUTS DIFFER from the one-at-a-time run")
                del ws
            except Exception as exc:  # noqa: BLE001 - record, keep measuring the other schemes
                torch.cuda.synchronize()
                log(f"  {model} layer m={m} {scheme}: FAILED {type(exc).__name__}: {exc}")
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="llama-2-7b,llama-3-8b,llama-2-70b")
    ap.add_argument("--m", default=",".join(map(str, M_VALUES)))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--rotate-bytes", type=float, default=2.4e8, help="bytes touched between two uses of a copy")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-calls", type=int, default=48)
    ap.add_argument("--quick", action="store_true", help="fused kernel: the heuristic configuration only")
    ap.add_argument("--tune-models", default=None,
                    help="comma list: try several fused-kernel tile configurations only for these models "
                         "(default: all models unless --quick)")
    ap.add_argument("--tune-v2-models", default=None,
                    help="comma list: the same for w4a8_fused_v2 only (default: as --tune-models)")
    ap.add_argument("--tune-aux", action="store_true",
                    help="also tune w4a8_fused_v3 and fp8_triton (default: their heuristic configuration only)")
    ap.add_argument("--fused-variant", default=None,
                    help="kernel variant of the scheme w4a8_fused (default: the card's, default_variant_for)")
    ap.add_argument("--heuristic-only", default="",
                    help="comma list of fused schemes to run at their heuristic configuration only")
    ap.add_argument("--tag", default="", help="suffix of the output file names (bench_<card><tag>.csv)")
    ap.add_argument("--layer-chain", action="store_true",
                    help="also time whole decoder layers (the four GEMMs back to back in one graph): layer_<card>.csv")
    ap.add_argument("--chain-schemes", default="bf16,fp8,default,pdl,pdl_pf2",
                    help=f"comma list of layer-chain schemes, of {tuple(CHAIN_SCHEMES)}")
    ap.add_argument("--chain-m", default="1,4,16,64", help="M values of the layer chain")
    ap.add_argument("--skip-gemms", action="store_true", help="only the layer chain (no per-GEMM rows)")
    args = ap.parse_args(argv)
    import torch

    info = device_info(torch)
    from dpq.kernels.w4a8_triton import VARIANTS, default_variant_for

    args.fused_variant = args.fused_variant or default_variant_for(torch.cuda.get_device_name())
    if args.fused_variant not in VARIANTS:
        raise SystemExit(f"--fused-variant: {args.fused_variant!r} is not one of {VARIANTS}")
    args.heuristic_only = [v for v in args.heuristic_only.split(",") if v]
    models = args.models.split(",")
    m_values = [int(v) for v in args.m.split(",")]
    schemes = args.schemes.split(",")
    for s in schemes:
        if s not in SCHEMES:
            raise SystemExit(f"--schemes: unknown scheme {s!r} (expected {SCHEMES})")
    chain_schemes = [v for v in args.chain_schemes.split(",") if v]
    for s in chain_schemes:
        if s not in CHAIN_SCHEMES:
            raise SystemExit(f"--chain-schemes: unknown scheme {s!r} (expected {tuple(CHAIN_SCHEMES)})")
    try:
        chain_m = [int(v) for v in args.chain_m.split(",")]
    except ValueError:
        raise SystemExit(f"--chain-m: expected a comma list of positive integers, got {args.chain_m!r}") from None
    if any(v < 1 for v in chain_m):
        raise SystemExit(f"--chain-m: expected positive integers, got {args.chain_m!r}")
    if args.skip_gemms and not args.layer_chain:
        raise SystemExit("--skip-gemms: only with --layer-chain (else nothing would be measured)")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = info["card"].replace("NVIDIA ", "").split()[0].lower()
    summary = {}
    if args.layer_chain:
        chain_summary = {}
        with open(args.out / f"layer_{tag}{args.tag}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LAYER_FIELDS)
            writer.writeheader()
            for model in models:
                bench_layer_chain(torch, info, model, chain_m, chain_schemes, args, writer, chain_summary)
                f.flush()
        print(f"# one decoder layer, four GEMMs back to back in one graph ({info['card']}; w4a8 variant "
              f"{args.fused_variant} unless named); microseconds, then speed-up over BF16 / FP8 cuBLAS")
        for model in models:
            for m in chain_m:
                bf, f8 = chain_summary.get((model, m, "bf16")), chain_summary.get((model, m, "fp8"))
                cells = []
                for sch in chain_schemes:
                    t = chain_summary.get((model, m, sch))
                    if t is None:
                        continue
                    cells.append(f"{sch} {t * 1e6:.1f}" + (f" ({bf / t:.2f}x/{f8 / t:.2f}x)" if bf and f8 else ""))
                print(f"{model:12s} m={m:<4d} " + "; ".join(cells))
    if args.skip_gemms:
        return 0
    with open(args.out / f"bench_{tag}{args.tag}.csv", "w", newline="") as f, \
            open(args.out / f"tuning_{tag}{args.tag}.csv", "w", newline="") as ft:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        tune = csv.DictWriter(ft, fieldnames=["card", "scheme", "model", "layer", "m", "n", "k", "config", "latency_s",
                                              "rel_error_vs_f64", "registers", "shared_bytes", "spills", "role"])
        tune.writeheader()
        for model, layer, n, k in sorted(SHAPES, key=lambda r: models.index(r[0]) if r[0] in models else 99):
            if model in models:
                args_m = argparse.Namespace(**vars(args))
                if args.tune_models is not None:
                    args_m.quick = args.quick or model not in args.tune_models.split(",")
                tune_v2 = args.tune_v2_models if args.tune_v2_models is not None else args.tune_models
                args_m.quick_v2 = args_m.quick if tune_v2 is None else (args.quick or model not in tune_v2.split(","))
                args_m.quick_v3 = args_m.quick_fp8_triton = args_m.quick or not args.tune_aux
                bench_shape(torch, info, model, layer, n, k, m_values, schemes, args_m, writer, tune, summary)
                f.flush()
                ft.flush()
    print(f"# {info['card']} driver {info['driver']} torch {info['torch']} triton {info['triton']}")
    nan = float("nan")
    print(f"# w4a8_fused = variant {args.fused_variant}")
    cols = ("bf16", "fp8", "fp8_triton", "w4a8_fused_v4", "w4a8_fused_v5old", "w4a8_fused_default", "w4a8_fused")
    print(f"{'model':12s} {'layer':13s} {'m':>5s} {'bf16 us':>9s} {'fp8 us':>9s} {'fp8tri':>9s} {'v4 us':>9s} "
          f"{'v5old us':>9s} {'default':>9s} {'tuned us':>9s} {'x bf16':>7s} {'x fp8':>7s} {'dflt/bf16':>9s} "
          f"{'dflt/fp8':>8s}")
    layer_sums = {}
    for (model, layer, m, scheme), t in summary.items():
        layer_sums.setdefault((model, m, scheme), []).append(t)
        if scheme != "w4a8_fused" or m > 64:
            continue
        v = [summary.get((model, layer, m, sc), nan) for sc in cols]
        print(f"{model:12s} {layer:13s} {m:5d} " + " ".join(f"{x * 1e6:9.1f}" for x in v)
              + f" {v[0] / t:7.2f} {v[1] / t:7.2f} {v[0] / v[5]:9.2f} {v[1] / v[5]:8.2f}")
    print("# one decoder layer (the four GEMMs summed)")
    for (model, m, scheme), ts in layer_sums.items():
        if scheme != "w4a8_fused" or len(ts) != 4:
            continue
        tot = {sc: sum(layer_sums[(model, m, sc)]) if len(layer_sums.get((model, m, sc), [])) == 4 else nan
               for sc in cols}
        t, d = tot["w4a8_fused"], tot["w4a8_fused_default"]
        print(f"{model:12s} {'layer':13s} {m:5d} " + " ".join(f"{tot[sc] * 1e6:9.1f}" for sc in cols)
              + f" {tot['bf16'] / t:7.2f} {tot['fp8'] / t:7.2f} {tot['bf16'] / d:9.2f} {tot['fp8'] / d:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
