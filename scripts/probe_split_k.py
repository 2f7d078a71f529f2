"""Map how cuBLAS partitions K under fast accumulation (torch._scaled_mm, use_fast_accum=True) for one shape.

Row 0 of A holds one large product at position p and tiny products everywhere else; every other row holds only
tiny products. In a truncating chain (fraction bits below the running maximum, see the numerics facts), tiny terms
that come after the large one in the *same* chain are truncated away, while chains (K parts) that never see the
large term sum their tiny terms exactly. So, with t the tiny product and L the large one,

    out[0, 0](p) = L + t * (K - |part(p)|) + trunc(t * (elements of part(p) before p))

and sweeping p over every 32-element step reveals which elements share a chain with p and in what order.
Products: tiny = 2^-6 * 2^-2 = 2^-8, large = 2^8 * 2^-2 = 2^6 (E4M3FN codes; exact while a chain stays < 2^5).

    python3 scripts/probe_split_k.py --out $OUT        # on a CUDA machine
Writes split_k_probe.npz: for each shape (M, N, K) the swept positions and out[0, 0] (float32), plus versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHAPES = ((16, 16, 14336), (16, 16, 16384), (16, 16, 28672), (1, 16, 14336), (1, 16, 16384), (1, 16, 28672),
          (16, 16, 8192))


def sweep(torch, m: int, n: int, k: int, step: int = 32):
    dev = "cuda"
    f8 = torch.float8_e4m3fn
    a = torch.full((m, k), 2.0 ** -6, dtype=torch.float32, device=dev).to(f8)
    b = torch.full((n, k), 2.0 ** -2, dtype=torch.float32, device=dev).to(f8)
    one = torch.ones((), dtype=torch.float32, device=dev)
    positions = np.arange(0, k, step)
    out0 = np.empty(positions.size, dtype=np.float32)
    rest = None
    big = torch.tensor(2.0 ** 8, dtype=torch.float32, device=dev).to(f8)
    tiny = torch.tensor(2.0 ** -6, dtype=torch.float32, device=dev).to(f8)
    for i, p in enumerate(positions):
        a[0, p] = big
        c = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=True)
        out0[i] = c[0, 0].item()
        if rest is None and m > 1:
            rest = c[1:, 0].cpu().numpy()
        a[0, p] = tiny
    return positions, out0, rest


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for m, n, k in SHAPES:
        pos, out0, rest = sweep(torch, m, n, k)
        tag = f"m{m}_n{n}_k{k}"
        arrays[f"{tag}_positions"] = pos
        arrays[f"{tag}_out00"] = out0
        if rest is not None:
            arrays[f"{tag}_other_rows"] = rest
        print(tag, "distinct outputs", np.unique(out0).size, "min", out0.min(), "max", out0.max(), flush=True)
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "tiny_product": 2.0 ** -8, "large_product": 2.0 ** 6, "step": 32, "shapes": SHAPES}
    np.savez_compressed(args.out / "split_k_probe.npz", meta=json.dumps(meta), **arrays)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
