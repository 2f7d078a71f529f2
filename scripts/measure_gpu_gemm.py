"""Measure BF16 and FP8 GEMM latency and device copy bandwidth on one CUDA GPU (calibration data for sim.perf).

Run on a machine with an NVIDIA GPU and torch:

    python3 scripts/measure_gpu_gemm.py --out results/perf/ [--quick]

Writes ``gemm_<card>.csv`` and ``copy_<card>.csv``; every row carries the card, driver, torch version and date.

Method (see results/validation.md):
- GEMM ``y = x @ W.T`` with x of shape (m, k) and W of shape (n, k): BF16 through ``torch.matmul``; FP8 E4M3 through
  ``torch._scaled_mm`` with per-tensor float32 scales and a BF16 output.
- Weights and activations rotate over enough copies that the bytes touched between two uses of one copy exceed
  ``--rotate-bytes`` (default 4x the L2 size), so each call reads its weights from HBM as in a real decode step.
- Each timing replays a CUDA graph of ``calls_per_graph`` back-to-back GEMMs (the launch gaps of eager mode
  removed, as serving engines do) timed with CUDA events; the median over ``--repeats`` replays, divided by the
  number of calls, is reported.
- Inputs are random normal data (never zeros).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.gpu_timing import time_graph  # noqa: E402

# Linear-layer shapes (n = output features, k = input features) of the Llama family, one device, no tensor
# parallelism. Fused QKV and fused gate/up projections as serving engines run them.
SHAPES = [
    # model, layer, n, k
    ("llama-2-7b", "qkv", 12288, 4096),
    ("llama-2-7b", "o", 4096, 4096),
    ("llama-2-7b", "gate_up", 22016, 4096),
    ("llama-2-7b", "down", 4096, 11008),
    ("llama-2-13b", "qkv", 15360, 5120),
    ("llama-2-13b", "o", 5120, 5120),
    ("llama-2-13b", "gate_up", 27648, 5120),
    ("llama-2-13b", "down", 5120, 13824),
    ("llama-2-70b", "qkv", 10240, 8192),
    ("llama-2-70b", "o", 8192, 8192),
    ("llama-2-70b", "gate_up", 57344, 8192),
    ("llama-2-70b", "down", 8192, 28672),
    ("llama-3-8b", "qkv", 6144, 4096),
    ("llama-3-8b", "gate_up", 28672, 4096),
    ("llama-3-8b", "down", 4096, 14336),
    ("llama-3-8b", "lm_head", 128256, 4096),
]
M_VALUES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
COPY_BYTES = [2**p for p in range(20, 32)]  # 1 MiB .. 2 GiB


def _device_info(torch):
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - informational only
        driver = f"unknown ({type(exc).__name__})"
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    return {
        "card": props.name,
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sm_count": props.multi_processor_count,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }, l2


def _copies_for(bytes_per_copy, rotate_bytes):
    return max(2, math.ceil(rotate_bytes / max(bytes_per_copy, 1)))


def measure_gemm(torch, shapes, m_values, schemes, rotate_bytes, repeats, max_calls, writer, info):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    for model, layer, n, k in shapes:
        for scheme in schemes:
            w_bytes = n * k * (2 if scheme == "bf16" else 1)
            n_w = _copies_for(w_bytes, rotate_bytes)
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(n_w)]
            if scheme == "fp8":
                ws = [(w * 0.5).to(torch.float8_e4m3fn) for w in ws]
                w_ts = [w.t() for w in ws]  # column-major (k, n) view, as _scaled_mm wants
                scale_a = torch.tensor(1.0, device=dev, dtype=torch.float32)
                scale_b = torch.tensor(1.0, device=dev, dtype=torch.float32)
            for m in m_values:
                x_bytes = m * k * (2 if scheme == "bf16" else 1)
                n_x = min(_copies_for(x_bytes + w_bytes, rotate_bytes), 64)
                m_run = m
                xs = [torch.randn(m_run, k, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(n_x)]
                flops = 2.0 * m * n * k
                calls = int(max(len(ws), min(max_calls, max(len(ws), 2e-3 / max(flops / 6e14, 2e-6)))))
                calls = max(calls, len(ws))
                if scheme == "bf16":
                    outs = [torch.empty(m_run, n, device=dev, dtype=torch.bfloat16) for _ in range(2)]
                    fns = [
                        (lambda i=i: torch.matmul(xs[i % n_x], ws[i % n_w].t(), out=outs[i % 2]))
                        for i in range(calls)
                    ]
                else:
                    xs8 = [x.to(torch.float8_e4m3fn) for x in xs]

                    def fp8_call(i, m_pad=None):
                        return torch._scaled_mm(xs8[i % n_x], w_ts[i % n_w], scale_a=scale_a, scale_b=scale_b,
                                                out_dtype=torch.bfloat16)

                    try:
                        fp8_call(0)
                    except RuntimeError:
                        # cuBLASLt FP8 needs dimensions divisible by 16: pad the rows, as serving engines do.
                        m_run = 16 * math.ceil(m / 16)
                        xs8 = [torch.randn(m_run, k, device=dev, dtype=torch.bfloat16, generator=gen)
                               .to(torch.float8_e4m3fn) for _ in range(n_x)]
                    fns = [(lambda i=i: fp8_call(i)) for i in range(calls)]
                try:
                    median_s, spread = time_graph(torch, fns, repeats)
                    status = "ok"
                except Exception as exc:  # noqa: BLE001 - record and continue
                    median_s, spread, status = float("nan"), float("nan"), f"error:{type(exc).__name__}"
                    torch.cuda.synchronize()
                writer.writerow({
                    **info, "model": model, "layer": layer, "scheme": scheme, "m": m, "m_run": m_run,
                    "n": n, "k": k, "latency_s": f"{median_s:.6e}", "spread_rel": f"{spread:.4f}",
                    "calls_per_graph": calls, "weight_copies": n_w, "status": status,
                    "tflops_per_s": f"{flops / median_s / 1e12:.2f}" if median_s == median_s else "",
                    "weight_gb_per_s": f"{w_bytes / median_s / 1e9:.1f}" if median_s == median_s else "",
                })
                del xs, fns
                if scheme == "fp8":
                    del xs8
                print(f"{model:12s} {layer:8s} {scheme:4s} m={m:5d} {median_s * 1e6:10.2f} us {status}",
                      flush=True)
            del ws
            torch.cuda.empty_cache()


def measure_copy(torch, sizes, repeats, writer, info, l2_bytes):
    dev = torch.device("cuda")
    for nbytes in sizes:
        n_buf = _copies_for(2 * nbytes, 4 * l2_bytes)
        n_buf = min(n_buf, 32)
        srcs = [torch.randn(nbytes // 2, device=dev, dtype=torch.bfloat16) for _ in range(n_buf)]
        dsts = [torch.empty_like(s) for s in srcs]
        calls = max(n_buf, min(200, int(2e-3 / max(nbytes / 3e12, 2e-6))))
        fns = [(lambda i=i: dsts[i % n_buf].copy_(srcs[i % n_buf])) for i in range(calls)]
        median_s, spread = time_graph(torch, fns, repeats)
        writer.writerow({**info, "bytes_copied": nbytes, "bytes_moved": 2 * nbytes, "latency_s": f"{median_s:.6e}",
                         "spread_rel": f"{spread:.4f}", "bandwidth_bytes_per_s": f"{2 * nbytes / median_s:.4e}"})
        print(f"copy {nbytes / 2**20:8.1f} MiB {median_s * 1e6:10.2f} us {2 * nbytes / median_s / 1e12:6.3f} TB/s",
              flush=True)
        del srcs, dsts, fns
        torch.cuda.empty_cache()


def dump_kernels(torch, shapes, m_values, writer, info):
    """Which cuBLAS kernels each GEMM launches (name, grid, block, shared memory, registers, duration), read from a
    torch.profiler trace of one call after warm-up: the ground truth for the tile/split-K model's choices."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda")
    scale = torch.tensor(1.0, device=dev, dtype=torch.float32)
    for model, layer, n, k in shapes:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        w8t = (w * 0.5).to(torch.float8_e4m3fn).t()
        for scheme in ("bf16", "fp8"):
            for m in m_values:
                m_run = m if scheme == "bf16" or m % 16 == 0 else 16 * math.ceil(m / 16)
                x = torch.randn(m_run, k, device=dev, dtype=torch.bfloat16)
                if scheme == "bf16":
                    def fn():
                        return torch.matmul(x, w.t())
                else:
                    x8 = x.to(torch.float8_e4m3fn)
                    try:
                        torch._scaled_mm(x8, w8t, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
                    except RuntimeError:
                        m_run = 16 * math.ceil(m / 16)
                        x8 = torch.randn(m_run, k, device=dev, dtype=torch.bfloat16).to(torch.float8_e4m3fn)

                    def fn():
                        return torch._scaled_mm(x8, w8t, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    fn()
                    torch.cuda.synchronize()
                with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                    prof.export_chrome_trace(tmp.name)
                    events = json.load(open(tmp.name))["traceEvents"]
                for e in events:
                    if e.get("cat") != "kernel":
                        continue
                    a = e.get("args", {})
                    writer.writerow({**info, "model": model, "layer": layer, "scheme": scheme, "m": m,
                                     "m_run": m_run, "n": n, "k": k, "kernel": e["name"],
                                     "grid": "x".join(map(str, a.get("grid", []))),
                                     "block": "x".join(map(str, a.get("block", []))),
                                     "shared_memory_bytes": a.get("shared memory", ""),
                                     "registers_per_thread": a.get("registers per thread", ""),
                                     "duration_us": e.get("dur", "")})
                print(f"{model:12s} {layer:8s} {scheme:4s} m={m:5d} kernels listed", flush=True)
        del w, w8t
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for the CSV files")
    parser.add_argument("--repeats", type=int, default=15, help="graph replays per point (median taken)")
    parser.add_argument("--max-calls", type=int, default=64, help="GEMMs captured per graph, at most")
    parser.add_argument("--quick", action="store_true", help="a few shapes only (smoke test)")
    parser.add_argument("--kernels", action="store_true",
                        help="only list the cuBLAS kernels (name, grid, block) each GEMM launches -> kernels_<card>.csv")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("measure_gpu_gemm: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    info, l2_bytes = _device_info(torch)
    card = info["card"].replace(" ", "_").replace("/", "_")
    os.makedirs(args.out, exist_ok=True)
    shapes = SHAPES[:2] if args.quick else SHAPES
    m_values = [1, 64, 4096] if args.quick else M_VALUES
    print(info, "L2", l2_bytes, flush=True)
    if args.kernels:
        fields = list(info) + ["model", "layer", "scheme", "m", "m_run", "n", "k", "kernel", "grid", "block",
                               "shared_memory_bytes", "registers_per_thread", "duration_us"]
        with open(os.path.join(args.out, f"kernels_{card}.csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            dump_kernels(torch, shapes, m_values, writer, info)
        return 0

    copy_fields = list(info) + ["bytes_copied", "bytes_moved", "latency_s", "spread_rel", "bandwidth_bytes_per_s"]
    with open(os.path.join(args.out, f"copy_{card}.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=copy_fields)
        writer.writeheader()
        measure_copy(torch, COPY_BYTES[:3] if args.quick else COPY_BYTES, args.repeats, writer, info, l2_bytes)

    gemm_fields = list(info) + ["model", "layer", "scheme", "m", "m_run", "n", "k", "latency_s", "spread_rel",
                                "calls_per_graph", "weight_copies", "status", "tflops_per_s", "weight_gb_per_s"]
    with open(os.path.join(args.out, f"gemm_{card}.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=gemm_fields)
        writer.writeheader()
        measure_gemm(torch, shapes, m_values, ["bf16", "fp8"], 4 * l2_bytes, args.repeats, args.max_calls,
                     writer, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
