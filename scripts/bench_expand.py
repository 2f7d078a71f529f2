"""Benchmark: the INT4 -> FP8 expansion kernel of the prefill path (``expand_to_fp8``), on a CUDA GPU.

For each linear shape of Llama-2-7B, Llama-3-8B and Llama-2-70B (the list of scripts/bench_gpu.py) and each weight
layout ("v5": scale and zero per group; "v4": 16-byte FP8 tables per group), side by side in one run:

* ``torch_ops``: the same expansion by torch ops (``dpq.torch_backend.expanded_weight_values`` and the cast);
* ``expand`` at several kernel configurations (rows per program, warps, program order); the first listed is
  ``expand_to_fp8``'s default;
* ``copy``: a device-to-device copy of an N x K byte tensor (reads and writes N K bytes): what the card's memory
  system gives a plain streaming kernel, for scale.

Every expansion's bytes are checked against the torch expansion before it is timed. TB/s counts the bytes read
(codes and per-group data) plus the N K bytes written. Outputs rotate over enough buffers that each call's reads
and writes reach HBM. Prints each configuration's time as a ratio to the default's and to the copy's bandwidth;
writes ``expand_<card><tag>.csv`` under ``--out``.

    python3 scripts/bench_expand.py --out results/gpu/ [--models llama-2-70b] [--tag _x]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench_gpu import GROUP_SIZE, SHAPES, device_info, log, make_weights  # noqa: E402
from scripts.gpu_timing import time_graph  # noqa: E402

CONFIGS = [  # (block_n, num_warps, groups_fastest); the first is expand_to_fp8's default
    (128, 4, True), (64, 4, True), (32, 4, True), (128, 8, True), (64, 8, True), (64, 4, False), (32, 4, False),
]
FIELDS = ["card", "driver", "torch", "triton", "cuda", "sm_count", "date", "model", "layer", "n", "k", "layout",
          "method", "block_n", "num_warps", "groups_fastest", "latency_s", "spread_rel", "calls_per_graph",
          "copies", "hbm_bytes", "achieved_tb_per_s", "vs_default", "bit_equal"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="llama-2-7b,llama-3-8b,llama-2-70b")
    ap.add_argument("--layouts", default="v5,v4")
    ap.add_argument("--rotate-bytes", type=float, default=2.4e8, help="bytes touched between two uses of a buffer")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import torch

    from dpq.kernels import w4a8_triton as wt
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, expand_to_fp8
    from dpq.torch_backend import expanded_weight_values

    if not torch.cuda.is_available():
        raise SystemExit("bench_expand.py needs a CUDA GPU")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - {s[0] for s in SHAPES}
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; expected some of {sorted({s[0] for s in SHAPES})}")
    layouts = [v for v in args.layouts.split(",") if v]
    if not set(layouts) <= {"v5", "v4"}:
        raise SystemExit(f"--layouts={args.layouts!r}: expected 'v5' and/or 'v4'")
    if CONFIGS[0][0] != wt.EXPAND_BLOCK_N:
        raise SystemExit("CONFIGS[0] must be expand_to_fp8's default")
    info = device_info(torch)
    info.pop("limits")
    args.out.mkdir(parents=True, exist_ok=True)
    card = info["card"].split()[1].lower() if len(info["card"].split()) > 1 else "gpu"
    path = args.out / f"expand_{card}{args.tag}.csv"
    gen = torch.Generator(device="cuda").manual_seed(0)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for model, layer, n, k in SHAPES:
            if model not in models:
                continue
            codes, scales, zeros = make_weights(torch, n, k, gen)
            want = expanded_weight_values(codes, scales, zeros, GROUP_SIZE, "float8_e4m3fn").to(torch.float8_e4m3fn)
            want = want.view(torch.uint8)
            for layout in layouts:
                w = PackedW4A8Weight.from_arrays(codes, scales, zeros, GROUP_SIZE, 1.0, 448.0, "cuda", layout)
                read = w.hbm_bytes
                moved = read + n * k
                copies = max(1, math.ceil(args.rotate_bytes / moved))
                ws = [w] + [PackedW4A8Weight.from_arrays(codes.clone(), scales.clone(), zeros.clone(), GROUP_SIZE,
                                                         1.0, 448.0, "cuda", layout) for _ in range(copies - 1)]
                outs = [torch.empty((n, k), dtype=torch.uint8, device="cuda") for _ in range(copies)]
                calls_n = max(copies, 8)
                rows = []
                for bn, warps, order in CONFIGS:
                    got = expand_to_fp8(w, outs[0], block_n=bn, num_warps=warps, groups_fastest=order)
                    equal = bool(torch.equal(got.view(torch.uint8), want))
                    if not equal:
                        raise RuntimeError(f"{model} {layer} {layout} block_n={bn} warps={warps}: expansion differs "
                                           f"from the torch expansion")
                    calls = [(lambda w=ws[i % copies], o=outs[i % copies], bn=bn, warps=warps, order=order:
                              expand_to_fp8(w, o, block_n=bn, num_warps=warps, groups_fastest=order))
                             for i in range(calls_n)]
                    t, spread = time_graph(torch, calls, args.repeats)
                    rows.append(("expand", bn, warps, order, t, spread, calls_n, moved, equal))
                if layout == layouts[0]:
                    t_ops, sp_ops = time_graph(torch, [lambda c=codes, s=scales, z=zeros: expanded_weight_values(
                        c, s, z, GROUP_SIZE, "float8_e4m3fn").to(torch.float8_e4m3fn)
                        for _ in range(2)], max(3, args.repeats // 3), warmup=1)
                    rows.append(("torch_ops", "", "", "", t_ops, sp_ops, 2, n * k // 2 + scales.numel() * 5 + n * k,
                                 True))
                    src = torch.randint(0, 256, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
                    srcs = [src] + [src.clone() for _ in range(max(1, math.ceil(args.rotate_bytes / (2 * n * k))) - 1)]
                    t_cp, sp_cp = time_graph(torch, [lambda o=outs[i % copies], src=srcs[i % len(srcs)]: o.copy_(src)
                                                     for i in range(calls_n)], args.repeats)
                    rows.append(("copy", "", "", "", t_cp, sp_cp, calls_n, 2 * n * k, ""))
                t_default = rows[0][4]
                for method, bn, warps, order, t, spread, calls, moved_b, equal in rows:
                    writer.writerow(dict(info, model=model, layer=layer, n=n, k=k, layout=layout, method=method,
                                         block_n=bn, num_warps=warps, groups_fastest=order, latency_s=f"{t:.6e}",
                                         spread_rel=f"{spread:.4f}", calls_per_graph=calls, copies=copies,
                                         hbm_bytes=moved_b, achieved_tb_per_s=f"{moved_b / t / 1e12:.3f}",
                                         vs_default=f"{t / t_default:.3f}", bit_equal=equal))
                    log(f"{model} {layer} {layout} {method} bn={bn} w={warps} gf={order}: {t * 1e6:.1f} us "
                        f"{moved_b / t / 1e12:.2f} TB/s, {t / t_default:.2f}x default")
                f.flush()
                del ws, outs
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
