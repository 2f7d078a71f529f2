#!/usr/bin/env python3
"""Measure how this CUDA GPU computes FP8 GEMMs (``torch._scaled_mm``) and save the vectors for the emulator's tests.

Usage (on a machine with an H100/H200 and PyTorch):

    python scripts/probe_gpu_numerics.py --out hopper_scaled_mm.npz [--seed 20261127] [--quick]

Then compare with the emulator (no GPU needed):

    python scripts/probe_gpu_numerics.py --check hopper_scaled_mm.npz --profile h100

Output: one compressed npz (a few MB) holding, for every input set ``S``
    ``S_a``: uint8 FP8 codes (M, K); ``S_b``: uint8 FP8 codes (N, K), i.e. B transposed like a weight matrix;
    ``S__R_out``: float32 (m_rows, N), the GPU's C = A[:m_rows] @ B^T for run ``R`` (bf16 outputs widened exactly
        to float32);
and ``meta`` (JSON): card, driver, torch/CUDA/cuBLAS versions, seed, date, and per set its formats, distribution and
shape, per run its ``m_rows``, ``fast_accum``, ``scale_a``, ``scale_b`` (float32 values), ``out_dtype`` and whether
two calls gave identical bits. A ``cast`` entry records torch's float32 -> float8 conversion of random inputs on the
GPU.

The inputs are random codes drawn with numpy from ``--seed`` (and torch's CPU cast); the GPU only multiplies them.
``--check`` tries, for fast-accumulation runs, the split-K partitions cuBLAS has been seen to use and prints which
one matches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time

import numpy as np

# Which finite codes each FP8 flavour has (torch's float8 types: e4m3fn = OCP E4M3, e5m2 = IEEE-like E5M2).
_MAX_FINITE = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}


def _finite_code_mask(fmt: str) -> np.ndarray:
    codes = np.arange(256)
    if fmt == "float8_e4m3fn":
        return (codes & 0x7F) != 0x7F
    return ((codes >> 2) & 0x1F) != 0x1F


def _torch_dtype(torch, fmt: str):
    return {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}[fmt]


def _codes_from_values(torch, x: np.ndarray, fmt: str) -> np.ndarray:
    """Round float32 values to FP8 codes with torch's CPU cast (nearest even); values clipped to +-max first."""
    m = _MAX_FINITE[fmt]
    t = torch.from_numpy(np.clip(x, -m, m).astype(np.float32)).to(_torch_dtype(torch, fmt))
    return t.view(torch.uint8).numpy().copy()


def _random_codes(torch, rng: np.random.Generator, shape, fmt: str, dist: str) -> np.ndarray:
    """FP8 codes of the given shape.

    normal: N(0, 1) values (typical activations/weights after scaling);
    wide: every finite code equally likely (all exponents, subnormals, both signs, exact zeros);
    spread: N(0, 1) times 2^U{-8..8}, a wide dynamic range within each dot product (stresses the alignment);
    cancel: normal values whose second half of each row is the negated first half, in shuffled order, so dot
        products cancel to a small remainder (stresses truncation of the running accumulator).
    """
    if dist == "normal":
        return _codes_from_values(torch, rng.standard_normal(shape).astype(np.float32), fmt)
    if dist == "spread":
        x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 9, size=shape))
        return _codes_from_values(torch, x.astype(np.float32), fmt)
    if dist == "wide":
        finite = np.nonzero(_finite_code_mask(fmt))[0].astype(np.uint8)
        return np.ascontiguousarray(rng.choice(finite, size=shape))
    if dist == "cancel":
        rows, k = shape
        half = _codes_from_values(torch, rng.standard_normal((rows, k // 2)).astype(np.float32), fmt)
        full = np.concatenate([half, half ^ np.uint8(0x80)], axis=1)
        perm = rng.permutation(k)
        return np.ascontiguousarray(full[:, perm])  # torch needs row-major codes
    raise ValueError(f"unknown distribution {dist!r}")


def _plan(quick: bool):
    """(set name, a_format, b_format, dist, (M, N, K), runs).

    A run is (fast_accum, scale_a, scale_b, out_dtype, m_rows): it multiplies the first ``m_rows`` rows of A (all rows
    when None), so decode shapes M = 1..16 share one stored A.
    """
    e4, e5 = "float8_e4m3fn", "float8_e5m2"
    both = [(False, 1.0, 1.0, "float32", None), (True, 1.0, 1.0, "float32", None)]
    full = both + [(False, 1.0, 1.0, "bfloat16", None), (True, 1.0, 1.0, "bfloat16", None),
                   (False, 0.0123, 3.7, "float32", None), (True, 0.0123, 3.7, "bfloat16", None),
                   (False, 2.0**-7, 0.5, "bfloat16", None)]
    decode_rows = [(fast, 1.0, 1.0, "float32", m) for m in (1, 2, 4, 8, 16) for fast in (False, True)]
    plan = []
    for dist in ("normal", "wide", "spread", "cancel"):
        plan.append((f"e4e4_{dist}_64x64x1024", e4, e4, dist, (64, 64, 1024), full))
    for dist in ("normal", "wide"):
        plan.append((f"e4e5_{dist}_64x64x1024", e4, e5, dist, (64, 64, 1024),
                     both + [(False, 0.37, 1.9, "bfloat16", None)]))
        plan.append((f"e5e4_{dist}_64x64x1024", e5, e4, dist, (64, 64, 1024),
                     both + [(True, 0.37, 1.9, "bfloat16", None)]))
    plan.append(("e5e5_normal_32x32x256", e5, e5, "normal", (32, 32, 256), both))  # cuBLAS may refuse e5m2 x e5m2
    # K not a multiple of the 32-product step or of the 128-element promotion interval.
    for k in (16, 48, 208, 1040):
        plan.append((f"e4e4_wide_32x32x{k}", e4, e4, "wide", (32, 32, k), both))
    # Decode shapes (M = 1..16) and a wide-range K = 4096 square.
    plan.append(("e4e4_normal_16x32x4096", e4, e4, "normal", (16, 32, 4096), decode_rows))
    plan.append(("e4e4_spread_32x32x4096", e4, e4, "spread", (32, 32, 4096), both))
    plan.append(("e4e4_normal_256x256x256", e4, e4, "normal", (256, 256, 256), both))  # a larger-tile kernel
    if not quick:
        # Small M*N with large K: where cuBLAS has been seen to split K under fast accumulation.
        for k in (8192, 14336, 16384, 28672):
            plan.append((f"e4e4_normal_16x16x{k}", e4, e4, "normal", (16, 16, k),
                         both + [(False, 1.0, 1.0, "float32", 1), (True, 1.0, 1.0, "float32", 1)]))
    return plan


def _versions(torch) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "card": torch.cuda.get_device_name(0),
        "compute_capability": list(torch.cuda.get_device_capability(0)),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["cublas"] = str(torch._C._cuda_getCublasVersion()) if hasattr(torch._C, "_cuda_getCublasVersion") else None
    except Exception:  # version helpers differ between torch builds; the others suffice
        info["cublas"] = None
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def probe(out_path: str, seed: int, quick: bool) -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("probe: no CUDA device visible to torch")
    dev = torch.device("cuda")
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    meta = {"tool": "torch._scaled_mm", "seed": seed, "versions": _versions(torch), "sets": {}, "failures": []}
    print(json.dumps(meta["versions"]), file=sys.stderr)
    t0 = time.time()
    for name, a_fmt, b_fmt, dist, (m, n, k), runs in _plan(quick):
        a = _random_codes(torch, rng, (m, k), a_fmt, dist)
        b = _random_codes(torch, rng, (n, k), b_fmt, dist)
        a_dev = torch.from_numpy(a).to(dev).view(_torch_dtype(torch, a_fmt))
        b_dev = torch.from_numpy(b).to(dev).view(_torch_dtype(torch, b_fmt))
        set_meta = {"a_format": a_fmt, "b_format": b_fmt, "dist": dist, "shape": [m, n, k], "runs": {}}
        for fast, sa, sb, out_dtype, m_rows in runs:
            sa32, sb32 = float(np.float32(sa)), float(np.float32(sb))
            rows = m if m_rows is None else m_rows
            run = f"m{rows}_fast{int(fast)}_sa{sa32:.6g}_sb{sb32:.6g}_{out_dtype}"
            kwargs = dict(scale_a=torch.tensor(sa32, dtype=torch.float32, device=dev),
                          scale_b=torch.tensor(sb32, dtype=torch.float32, device=dev),
                          out_dtype=getattr(torch, out_dtype), use_fast_accum=fast)
            try:
                c1 = torch._scaled_mm(a_dev[:rows], b_dev.t(), **kwargs).float().cpu().numpy()
                c2 = torch._scaled_mm(a_dev[:rows], b_dev.t(), **kwargs).float().cpu().numpy()
            except Exception as exc:  # record what this stack refuses (e.g. e5m2 x e5m2) and go on
                meta["failures"].append({"set": name, "run": run, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            arrays[f"{name}__{run}_out"] = c1
            set_meta["runs"][run] = {"m_rows": rows, "fast_accum": fast, "scale_a": sa32, "scale_b": sb32,
                                     "out_dtype": out_dtype,
                                     "repeatable": bool(np.array_equal(c1.view(np.uint32), c2.view(np.uint32)))}
        if set_meta["runs"]:
            arrays[f"{name}_a"], arrays[f"{name}_b"] = a, b
            meta["sets"][name] = set_meta
        print(f"{name}: {len(set_meta['runs'])} runs", file=sys.stderr)
    # torch's float32 -> FP8 cast on the GPU, on random bit patterns and on values spread around the FP8 range.
    x = np.concatenate([rng.integers(0, 2**32, size=1 << 15, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        (rng.standard_normal(1 << 15) * 300).astype(np.float32)])
    arrays["cast_x"] = x
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        y = torch.from_numpy(x).to(dev).to(_torch_dtype(torch, fmt)).view(torch.uint8).cpu().numpy()
        arrays[f"cast_{fmt}"] = y
    meta["cast"] = {"input": "cast_x", "formats": ["float8_e4m3fn", "float8_e5m2"]}
    meta["probe_seconds"] = round(time.time() - t0, 1)
    np.savez_compressed(out_path, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {out_path}: {len(meta['sets'])} sets, "
          f"{sum(len(s['runs']) for s in meta['sets'].values())} runs, {len(meta['failures'])} refused",
          file=sys.stderr)


def cublas_split_candidates(k: int) -> list:
    """Split-K partitions to try against a fast-accumulation run: none, equal contiguous parts, and n parts of
    ceil(K / n) rounded up to a multiple of 128 with the remainder last — the rule behind every partition measured
    by scripts/probe_split_k.py on an H200 (K=8192 -> 3 parts 2816+2816+2560, 14336 -> 4x2944+2560,
    16384 -> 5x2816+2304, 28672 -> 10x2688+1792; tests/golden/hopper_split_k_probe.npz)."""
    out: list = [1] + [p for p in (2, 3, 4, 8, 16) if k % p == 0]
    quantum = 128
    for parts in range(2, 33):
        size = -(-(-(-k // parts)) // quantum) * quantum
        last = k - (parts - 1) * size
        if 0 < last < size:
            out.append((size,) * (parts - 1) + (last,))
    return out


def check(path: str, profile: str) -> int:
    """Compare every run in a probe file with sim.mac.fp8_gemm; print a table; 0 when all outputs are bit-exact."""
    from sim.formats import decode, encode
    from sim.mac import fp8_gemm

    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    total = exact = 0
    for name, s in meta["sets"].items():
        a_all, b = data[f"{name}_a"], data[f"{name}_b"]
        for run, r in s["runs"].items():
            a = a_all[: r["m_rows"]]
            got = data[f"{name}__{run}_out"]
            matched = None
            splits = cublas_split_candidates(a.shape[1]) if r["fast_accum"] else [1]
            for split in splits:
                emu = fp8_gemm(a, b, hw=profile, a_format=s["a_format"], b_format=s["b_format"],
                               scale_a=r["scale_a"], scale_b=r["scale_b"], fast_accum=r["fast_accum"],
                               split_k=split, out_dtype=r["out_dtype"])
                if np.array_equal(emu.view(np.uint32), got.view(np.uint32)):
                    matched = split
                    break
            total += got.size
            exact += got.size if matched is not None else 0
            print(f"{name:34s} {run:44s} {'split_k=' + str(matched) if matched else 'MISMATCH'}")
    x = data["cast_x"]
    for fmt in meta.get("cast", {}).get("formats", []):
        ours, gpu = encode(x, fmt, saturate=False), data[f"cast_{fmt}"]
        nan = np.isnan(decode(ours, fmt)) & np.isnan(decode(gpu, fmt))
        print(f"cast float32 -> {fmt}: {int(np.sum((ours == gpu) | nan))}/{x.size} equal as values "
              f"({int(np.sum(ours == gpu))} equal as codes; NaN codes may differ)")
    print(f"{exact}/{total} outputs bit-exact")
    return 0 if exact == total else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write a probe file here (needs a CUDA GPU and torch)")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--quick", action="store_true", help="skip the large-K shapes")
    parser.add_argument("--check", metavar="NPZ", help="compare a probe file with the emulator instead")
    parser.add_argument("--profile", default="h100", help="hardware profile for --check (default h100)")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check, args.profile)
    if not args.out:
        parser.error("give --out (probe the GPU) or --check (compare a probe file with the emulator)")
    probe(args.out, args.seed, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
