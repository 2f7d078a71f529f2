"""Per-layer agreement of the bit-exact emulated chips with the float reference backend, on the embedded model.

For each chip, a W4A8 checkpoint in that chip's FP8 format runs every linear of SmolLM2-135M on the same real
inputs (recorded while the reference model reads a short slice of held-out Wikipedia text) through the
`reference` backend (float32 accumulation of the same FP8 operands) and the `emulated` backend (the chip's matrix
engine, bit for bit). The SQNR of emulated against reference, per linear, is written to CSV and drawn.

    dpq assets fetch                                             # once
    dpq quantize --method dpq --hw gaudi2 --out /tmp/g2.dpq      # a checkpoint in Gaudi 2's E4M3
    dpq quantize --method dpq --hw h100 --out /tmp/h100.dpq      # a checkpoint in OCP E4M3 (Hopper, Gaudi 3)
    python scripts/plot_emulation_error.py --checkpoint gaudi2=/tmp/g2.dpq --checkpoint gaudi3=/tmp/h100.dpq \
        --checkpoint h100=/tmp/h100.dpq

Writes results/emulation_error.csv and results/figures/emulation_error.png (or under --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

IDENTICAL_SQNR_DB = 200.0  # where identical outputs (infinite SQNR) are drawn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="PROFILE=PATH",
                   help="a chip profile and a checkpoint in its FP8 format (repeat for each chip)")
    p.add_argument("--window", type=int, default=64, help="tokens per window (64)")
    p.add_argument("--windows", type=int, default=1, help="windows of held-out text (1)")
    p.add_argument("--gemm-output", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)

    from dpq.backends import get_backend
    from dpq.data import load_documents, split_documents, token_windows
    from dpq.eval import compare_linears
    from dpq.packed import load_checkpoint
    from dpq.pipeline import load_default_model
    from sim import plots
    from sim.report import to_csv

    pairs = []
    for item in args.checkpoint:
        if "=" not in item:
            p.error(f"--checkpoint {item!r}: expected PROFILE=PATH")
        profile, path = item.split("=", 1)
        pairs.append((profile, Path(path)))
    model, tok = load_default_model()
    windows = token_windows(tok, split_documents(load_documents("wiki"), "eval"), args.window, args.windows)
    rows = []
    for profile, path in pairs:
        ckpt = load_checkpoint(path)
        print(f"{profile}: {path} ({ckpt.metadata.get('method')}, {len(ckpt.linears)} linears)", file=sys.stderr)
        result = compare_linears(model, ckpt, get_backend("emulated", profile).hw, windows,
                                 out_dtype=args.gemm_output)
        for entry in result["per_linear"]:
            rows.append({"profile": profile, "checkpoint": str(path), "method": ckpt.metadata.get("method"),
                         "gemm_output": args.gemm_output, "tokens": int(np.asarray(windows).size),
                         "layer": entry["linear"], "sqnr_db": entry["sqnr_db"],
                         "identical": bool(np.isinf(entry["sqnr_db"]))})
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "emulation_error.csv"
    csv_path.write_text(to_csv(rows))
    drawn = [{**r, "sqnr_db": min(r["sqnr_db"], IDENTICAL_SQNR_DB)} for r in rows]
    png = plots.plot_emulation_error(
        drawn, args.out / "figures" / "emulation_error.png",
        title=f"Emulated chip vs float32 reference, each linear of SmolLM2-135M\n"
              f"({args.windows}x{args.window} held-out tokens, {args.gemm_output} GEMM output; "
              f"identical outputs drawn at {IDENTICAL_SQNR_DB:.0f} dB)")
    for profile, _ in pairs:
        vals = np.array([r["sqnr_db"] for r in rows if r["profile"] == profile])
        finite = vals[np.isfinite(vals)]
        print(f"{profile:8s} linears {vals.size}  identical {int(np.isinf(vals).sum())}  "
              f"min SQNR {vals.min():.1f} dB  mean of finite {finite.mean() if finite.size else float('inf'):.1f} dB")
    print(f"wrote {csv_path} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
