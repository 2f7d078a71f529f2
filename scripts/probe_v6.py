"""First runs of the "v6" fused W4A8 kernel (Gluon; weights expanded into shared memory) on a Hopper GPU.

Three stages, each written as it finishes:
1. ``--check``: v6 against v5 at the same split-K parts, bit for bit (v5 equals the emulator's ``h100-triton-w4a8``
   datapath: results/gpu/README.md), on small shapes that cover the edges (N not a multiple of 128, M not a multiple
   of the token tile, groups of 32/64/128, float8_e4m3's smaller range) and on the Llama-2-70B shapes.
2. ``--sweep``: v6 configurations (split-K, pipeline stages, A tiles, register cap) against v5 at its launch
   configuration, per Llama-2-70B GEMM and M, CUDA-graph timed as ``bench_gpu.py`` does (``sweep_v6.csv``).
3. ``--chain``: one Llama-2-70B decoder layer's four GEMMs back to back: BF16 and FP8 cuBLAS, v5 at its launch
   configuration, v6 at the fastest configuration of stage 2 (``chain_v6.csv``).

    python scripts/probe_v6.py --out DIR [--check] [--sweep] [--chain] [--m 1,16,64]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_gpu import SHAPES, device_info  # noqa: E402
from gpu_timing import time_graph  # noqa: E402

GS = 128


def log(msg: str) -> None:
    print(msg, flush=True)


def weights(torch, n: int, k: int, gs: int, gen):
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
    scales = (torch.rand((n, k // gs), device="cuda", generator=gen) * 1.5 + 0.5).float() * 0.01
    zeros = torch.randint(0, 16, (n, k // gs), dtype=torch.uint8, device="cuda", generator=gen)
    return codes, scales, zeros


def v5_config_like(cfg):
    """The v5 configuration with the same split-K parts as the v6 one (the same numerics)."""
    from dpq.kernels.w4a8_triton import KernelConfig

    return KernelConfig(block_n=128, block_t=min(cfg.block_t, 64), split_k=cfg.split_k, num_warps=4, num_stages=3)


def check(torch, out_dir: Path) -> bool:
    from dpq.kernels.w4a8_triton import KernelConfig, PackedW4A8Weight, w4a8_matmul

    gen = torch.Generator(device="cuda")
    gen.manual_seed(7)
    cases = [(388, 1024, 64, 5, 448.0), (256, 512, 32, 16, 448.0), (200, 2048, 128, 33, 448.0),
             (128, 1024, 128, 1, 240.0), (8192, 8192, 128, 16, 448.0), (10240, 8192, 128, 1, 448.0),
             (57344, 8192, 128, 4, 448.0), (8192, 28672, 128, 64, 448.0)]
    results, ok = [], True
    for n, k, gs, m, fmax in cases:
        codes, scales, zeros = weights(torch, n, k, gs, gen)
        x8 = (torch.randn((m, k), device="cuda", generator=gen) * 32).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
        w5 = PackedW4A8Weight.from_arrays(codes, scales, zeros, gs, 0.5, fmax, "cuda", "v5")
        w6 = PackedW4A8Weight.from_arrays(codes, scales, zeros, gs, 0.5, fmax, "cuda", "v6")
        bt = 16 if m <= 16 else 32 if m <= 32 else 64
        for split in (1, 3, 4):
            for stages, abufs in ((3, 2), (2, 1), (4, 1)):
                cfg = KernelConfig(block_n=128, block_t=bt, split_k=split, num_warps=4, num_stages=stages,
                                   a_buffers=abufs)
                t0 = time.time()
                y6 = w4a8_matmul(x8, w6, 1.0, out_dtype="float32", config=cfg)
                torch.cuda.synchronize()
                y5 = w4a8_matmul(x8, w5, 1.0, out_dtype="float32", config=v5_config_like(cfg))
                yb6 = w4a8_matmul(x8, w6, 1.0, out_dtype="bfloat16", config=cfg)
                yb5 = w4a8_matmul(x8, w5, 1.0, out_dtype="bfloat16", config=v5_config_like(cfg))
                torch.cuda.synchronize()
                eq = int((y6.view(torch.int32) == y5.view(torch.int32)).sum())
                eqb = int((yb6.view(torch.int16) == yb5.view(torch.int16)).sum())
                good = eq == y5.numel() and eqb == yb5.numel()
                ok &= good
                results.append(dict(n=n, k=k, group_size=gs, m=m, fp8_max=fmax, split=split, stages=stages,
                                    a_buffers=abufs, equal_f32=eq, equal_bf16=eqb, outputs=y5.numel(),
                                    seconds=round(time.time() - t0, 2)))
                log(f"check n={n} k={k} gs={gs} m={m} max={fmax} split={split} stages={stages} abufs={abufs}: "
                    f"{eq}/{y5.numel()} f32, {eqb}/{yb5.numel()} bf16 equal to v5{'' if good else '  MISMATCH'}")
    (out_dir / "check_v6.json").write_text(json.dumps({"all_equal": ok, "cases": results}, indent=1))
    return ok


def sweep_configs(m: int, k: int, v5cfg):
    from dpq.kernels.w4a8_triton import KernelConfig

    bt = 16 if m <= 16 else 32 if m <= 32 else 64
    steps = k // GS
    out = []
    for split in sorted({1, 2, 3, 4, 6, 8, v5cfg.split_k}):
        if split > max(1, steps // 2):
            continue
        for stages, abufs, reg in ((3, 2, 64), (3, 1, 64), (4, 1, 64), (2, 1, 64), (4, 2, 80)):
            out.append(KernelConfig(block_n=128, block_t=bt, split_k=split, num_warps=4, num_stages=stages,
                                    a_buffers=abufs, maxnreg=reg))
    return out


def sweep(torch, info, out_dir: Path, m_values, models) -> dict:
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, kernel_resources, launch_config, w4a8_matmul

    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    best = {}
    f = open(out_dir / "sweep_v6.csv", "w", newline="")
    wr = csv.DictWriter(f, ["card", "model", "layer", "m", "n", "k", "variant", "config", "latency_s", "spread_rel",
                            "registers", "shared_bytes", "achieved_tb_per_s"])
    wr.writeheader()
    for model, layer, n, k in SHAPES:
        if model not in models:
            continue
        codes, scales, zeros = weights(torch, n, k, GS, gen)
        copies = max(1, math.ceil(2.4e8 / (n * k / 2)))
        arrays = [(codes, scales, zeros)] + [(codes.clone(), scales.clone(), zeros.clone()) for _ in range(copies - 1)]
        packed = {v: [PackedW4A8Weight.from_arrays(c, s, z, GS, 0.5, 448.0, "cuda", v) for c, s, z in arrays]
                  for v in ("v5", "v6")}
        for m in m_values:
            x8 = (torch.randn((m, k), device="cuda", generator=gen) * 32).clamp(-448, 448).to(torch.float8_e4m3fn)
            v5cfg = launch_config(m, n, k, packed["v5"][0])
            runs = [("v5", v5cfg)] + [("v6", c) for c in sweep_configs(m, k, v5cfg)]
            for variant, cfg in runs:
                ws = packed[variant]
                try:
                    res = kernel_resources(x8, ws[0], cfg)
                    calls_n = max(len(ws), min(200, math.ceil(2e-3 / max(n * k * 0.54 / 3e12, 5e-6))))
                    calls = [(lambda w=ws[i % len(ws)], c=cfg: w4a8_matmul(x8, w, 1.0, config=c))
                             for i in range(calls_n)]
                    t, spread = time_graph(torch, calls, 10)
                except Exception as exc:  # noqa: BLE001 - record, go on
                    torch.cuda.synchronize()
                    log(f"  {layer} m={m} {variant} {cfg}: FAILED {type(exc).__name__}: {exc}")
                    continue
                tb = (ws[0].hbm_bytes + m * k + m * n * 2) / t / 1e12
                wr.writerow(dict(card=info["card"], model=model, layer=layer, m=m, n=n, k=k, variant=variant,
                                 config=repr(cfg), latency_s=f"{t:.6e}", spread_rel=f"{spread:.4f}",
                                 registers=res["registers"], shared_bytes=res["shared_bytes"],
                                 achieved_tb_per_s=f"{tb:.3f}"))
                f.flush()
                log(f"  {layer} m={m} {variant}: {t * 1e6:.1f} us {tb:.2f} TB/s regs {res['registers']} "
                    f"smem {res['shared_bytes']} {cfg if variant == 'v6' else ''}")
                key = (model, layer, m, variant)
                if key not in best or t < best[key][0]:
                    best[key] = (t, cfg)
        del packed
        torch.cuda.empty_cache()
    f.close()
    for (model, layer, m, variant), (t, cfg) in sorted(best.items()):
        log(f"best {model} {layer} m={m} {variant}: {t * 1e6:.1f} us {cfg}")
    return best


def chain(torch, info, out_dir: Path, m_values, best, models) -> None:
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, launch_config, w4a8_matmul
    from dpq.torch_backend import expanded_weight_values

    f = open(out_dir / "chain_v6.csv", "w", newline="")
    wr = csv.DictWriter(f, ["card", "model", "m", "scheme", "latency_s", "spread_rel", "configs"])
    wr.writeheader()
    for model in models:
        shapes = [(layer, n, k) for mdl, layer, n, k in SHAPES if mdl == model]
        gen = torch.Generator(device="cuda")
        gen.manual_seed(4321)
        packed = [weights(torch, n, k, GS, gen) for _, n, k in shapes]
        w8s = [expanded_weight_values(c, s, z, GS, "float8_e4m3fn").to(torch.float8_e4m3fn) for c, s, z in packed]
        one = torch.tensor(1.0, device="cuda")
        for m in m_values:
            xs = [(torch.randn((m, k), device="cuda", generator=gen) * 32).clamp(-448, 448) for _, _, k in shapes]
            x8s = [x.to(torch.float8_e4m3fn) for x in xs]
            xbf = [x.to(torch.bfloat16) for x in xs]
            for scheme in ("bf16", "fp8", "v5", "v6"):
                if scheme == "bf16":
                    wl = [(w.to(torch.float32) * 0.01).to(torch.bfloat16) for w in w8s]
                    nbytes = sum(w.numel() * 2 for w in wl)
                    fn = lambda ws, i: torch.matmul(xbf[i], ws[i].t())  # noqa: E731
                    cfgs = []
                elif scheme == "fp8":
                    wl = w8s
                    nbytes = sum(w.numel() for w in wl)
                    fn = lambda ws, i: torch._scaled_mm(x8s[i], ws[i].t(), scale_a=one, scale_b=one,  # noqa: E731
                                                        out_dtype=torch.bfloat16, use_fast_accum=True)
                    cfgs = []
                else:
                    wl = [PackedW4A8Weight.from_arrays(c, s, z, GS, 0.5, 448.0, "cuda", scheme) for c, s, z in packed]
                    nbytes = sum(w.hbm_bytes for w in wl)
                    if scheme == "v5":
                        cfgs = [launch_config(m, n, k, w)
                                for (_, n, k), w in zip(shapes, wl)]
                    else:
                        cfgs = [best.get((model, layer, m, "v6"), (None, None))[1] for layer, _, _ in shapes]
                        if any(c is None for c in cfgs):
                            log(f"  chain {model} m={m} v6: no swept configuration, skipped")
                            continue
                    fn = lambda ws, i, cs=cfgs: w4a8_matmul(x8s[i], ws[i], 1.0, config=cs[i])  # noqa: E731
                copies = max(1, math.ceil(2.4e8 / nbytes))
                sets = [wl] + [[w.clone() for w in wl] for _ in range(copies - 1)] if scheme in ("bf16", "fp8") \
                    else [wl] + [[PackedW4A8Weight.from_arrays(c.clone(), s.clone(), z.clone(), GS, 0.5, 448.0,
                                                               "cuda", scheme) for c, s, z in packed]
                                 for _ in range(copies - 1)]
                n_layers = max(copies, min(200, math.ceil(2e-3 / max(nbytes / 3e12, 5e-6))))
                t, spread = time_graph(torch, [(lambda c=j % copies: [fn(sets[c], i) for i in range(4)])
                                               for j in range(n_layers)], 10)
                wr.writerow(dict(card=info["card"], model=model, m=m, scheme=scheme, latency_s=f"{t:.6e}",
                                 spread_rel=f"{spread:.4f}", configs=" | ".join(repr(c) for c in cfgs)))
                f.flush()
                log(f"chain {model} m={m} {scheme}: {t * 1e6:.1f} us")
                del sets
            torch.cuda.empty_cache()
    f.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--chain", action="store_true")
    ap.add_argument("--m", default="1,16,64")
    ap.add_argument("--models", default="llama-2-70b")
    a = ap.parse_args(argv)
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    info = device_info(torch)
    log(f"{info['card']} torch {info['torch']} triton {info['triton']}")
    m_values = [int(v) for v in a.m.split(",")]
    models = a.models.split(",")
    if a.check and not check(torch, a.out):
        log("v6 differs from v5: no timing")
        return 1
    best = sweep(torch, info, a.out, m_values, models) if a.sweep or a.chain else {}
    if a.chain:
        chain(torch, info, a.out, [m for m in m_values if m <= 16] or m_values, best, models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
