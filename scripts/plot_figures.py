"""Draw the figures the README shows: W4A8 vs BF16 speedup against batch on every chip, rooflines, per-layer time
breakdowns and memory against batch, from one `simulate run` sweep saved under results/figures/<model>/.

    python scripts/plot_figures.py                       # llama-2-7b, 2048 in / 128 out, batch 1..256
    python scripts/plot_figures.py --model llama-3-8b --input-len 128 --out results/figures/llama-3-8b-short

The sweep's rows (results.csv, ops.csv, resolved profiles) are written next to the figures, so
`simulate plot DIR` re-draws them without simulating again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.runs import RunRequest, render_table, run, write_out_dir

PROFILES = ("gaudi2", "gaudi3", "h100", "h200")
SCHEMES = ("bf16", "fp8", "w4a16", "w4a8")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def plot_dequant_placement_sweep(args, out_dir: Path) -> Path:
    """W4A8 over BF16 on every chip with the INT4 -> FP8 expansion fused in the GEMM and as a separate vector pass."""
    from sim import plots
    from sim.report import to_csv

    rows = []
    for placement in ("fused", "vector_pass"):
        request = RunRequest(profiles=PROFILES, model=args.model, schemes=("bf16", "w4a8"), batches=BATCHES,
                             input_len=args.input_len, output_len=args.output_len, tp=args.tp,
                             overrides=(f"dequant.placement={placement}",))
        for row in run(request).summary:
            rows.append({**row, "profile": f"{row['profile']} {placement}"})
    (out_dir / "dequant_placement_sweep.csv").write_text(to_csv(rows))
    return plots.plot_speedup_vs_batch(
        rows, out_dir / "speedup_w4a8_vs_bf16_by_dequant_placement.png",
        title=f"W4A8 over BF16, {args.model}, {args.input_len} in / {args.output_len} out: "
              "INT4 expansion fused in the GEMM vs a separate vector pass")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--input-len", type=int, default=2048)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--out", type=Path, help="output directory (default results/figures/<model>)")
    args = p.parse_args(argv)
    out_dir = args.out or Path("results/figures") / args.model
    request = RunRequest(profiles=PROFILES, model=args.model, schemes=SCHEMES, batches=BATCHES,
                         input_len=args.input_len, output_len=args.output_len, tp=args.tp)
    result = run(request, progress=lambda i, n, what: print(f"[{i}/{n}] {what}", file=sys.stderr)
                 if i == n or i % 16 == 0 else None)
    written = write_out_dir(result, out_dir)
    written.append(plot_dequant_placement_sweep(args, out_dir))
    print(render_table(result, layers=False))
    for path in written:
        print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
