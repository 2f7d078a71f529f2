"""Capacity plan comparison: fewest devices per chip and scheme for a traffic and latency target.

    python scripts/capacity_plan.py          # Llama-2-70B on Gaudi 2 / Gaudi 3 / H100 / H200, BF16 / FP8 / W4A8
    python scripts/capacity_plan.py --model llama-3-8b --tokens-per-s 20000 --tpot-ms 30

Writes results/capacity/<model>.csv, .json and .md (the printed table) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim import capacity


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-2-70b")
    p.add_argument("--profiles", default=",".join(capacity.DEFAULT_PROFILES))
    p.add_argument("--schemes", default=",".join(capacity.DEFAULT_SCHEMES))
    p.add_argument("--tokens-per-s", type=float, default=10000.0, help="target output tokens/s (10000)")
    p.add_argument("--input-len", type=int, default=2048)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--ttft-ms", type=float, default=2000.0)
    p.add_argument("--tpot-ms", type=float, default=50.0)
    p.add_argument("--out", type=Path, default=Path("results/capacity"))
    args = p.parse_args(argv)
    target = capacity.CapacityTarget(input_len=args.input_len, output_len=args.output_len,
                                     ttft_s=args.ttft_ms / 1e3, tpot_s=args.tpot_ms / 1e3,
                                     output_tokens_per_s=args.tokens_per_s)
    plans = capacity.plan(args.model, profiles=args.profiles.split(","), schemes=args.schemes.split(","),
                          target=target)
    table = capacity.render_table(plans, target, args.model)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    written = capacity.write_out_dir(plans, target, args.model, args.out)
    for path in written:
        path.rename(args.out / f"{args.model}{path.suffix}")
    (args.out / f"{args.model}.md").write_text("```\n" + table + "\n```\n")
    print(f"wrote {args.out}/{args.model}.csv, .json, .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
