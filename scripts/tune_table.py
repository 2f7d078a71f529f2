"""The fused W4A8 kernel's tuned launch configurations of a card, from the sweeps scripts/bench_gpu.py timed.

For every GEMM (n, k) and token count M a sweep timed (``tuning_<card>*.csv``, scheme ``w4a8_fused``: the card's
kernel variant; the launch heuristic's configuration is the row whose ``role`` says "rule", or in sweeps before that
column the first row per case), the fastest configuration is kept when it beat the heuristic's by at least
``--min-gain``; configurations with a register cap (``maxnreg``: spills)
are not taken. Each kept row covers the token counts that share its token tile and lie above the next smaller M the
sweep measured with that tile (M = 1 alone, 2..16, 33..64 for a sweep of M = 1, 16, 64). Prints the rows for the
profile's ``fused_kernel.tuned_configs`` with the measured times, a comment per row::

    python scripts/tune_table.py results/gpu/tuning_h100_s5small.csv results/gpu/tuning_h100_s5d.csv
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN_TILE_FIRST_M = {16: 1, 32: 17, 64: 33}  # the smallest M the launch heuristic gives each decode token tile


def parse_config(text: str) -> dict:
    """KernelConfig repr -> its fields (ints and bools; maxnreg None or int)."""
    out = {}
    for key, value in re.findall(r"(\w+)=([\w.']+)", text):
        out[key] = {"True": True, "False": False, "None": None}.get(value, value)
        if isinstance(out[key], str) and out[key].isdigit():
            out[key] = int(out[key])
    return out


def tuned_rows(paths: list[Path], min_gain: float) -> list[dict]:
    """One dict per kept case: n, k, m, min_m, max_m, config (dict), measured_s, heuristic_s."""
    cases: dict[tuple[int, int, int], list[tuple[dict, float, bool]]] = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["scheme"] != "w4a8_fused" or not r.get("latency_s"):
                    continue
                key = (int(r["n"]), int(r["k"]), int(r["m"]))
                rule = "rule" in (r.get("role") or "") if "role" in r else key not in cases
                cases.setdefault(key, []).append((parse_config(r["config"]), float(r["latency_s"]), rule))
    if not cases:
        raise SystemExit(f"{', '.join(map(str, paths))}: no w4a8_fused rows")
    measured_m = sorted({m for _, _, m in cases})
    out = []
    for (n, k, m), items in sorted(cases.items()):
        heuristic = [t for _, t, rule in items if rule]
        if len(heuristic) != 1:
            raise SystemExit(f"n={n} k={k} M={m}: {len(heuristic)} rows of the heuristic's configuration, expected 1")
        heuristic_s = heuristic[0]
        config, best_s = min(((c, t) for c, t, _ in items if c.get("maxnreg") is None), key=lambda ct: ct[1])
        if best_s > heuristic_s * (1.0 - min_gain):
            continue
        first = TOKEN_TILE_FIRST_M.get(config["block_t"])
        if first is None or m < first:
            raise SystemExit(f"n={n} k={k} M={m}: token tile {config['block_t']} is not a decode tile the launch "
                             f"heuristic gives M={m} ({TOKEN_TILE_FIRST_M})")
        lower = [x for x in measured_m if first <= x < m]
        out.append({"n": n, "k": k, "m": m, "min_m": (max(lower) + 1) if lower else first, "max_m": m,
                    "config": config, "measured_s": best_s, "heuristic_s": heuristic_s})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tuning_csv", type=Path, nargs="+")
    ap.add_argument("--min-gain", type=float, default=0.03,
                    help="keep a configuration only if it was at least this much faster than the heuristic's "
                         "(default 0.03: below that, run-to-run noise)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.min_gain < 1.0:
        ap.error(f"--min-gain {args.min_gain}: expected a fraction in [0, 1)")
    for path in args.tuning_csv:
        if not path.is_file():
            ap.error(f"{path}: no such file")
    rows = tuned_rows(args.tuning_csv, args.min_gain)
    print("  tuned_configs:  # [n, k, min_m, max_m, block_n, block_t, split_k, warps, stages, reduce_in_kernel]")
    for r in rows:
        c = r["config"]
        print(f"    - [{r['n']}, {r['k']}, {r['min_m']}, {r['max_m']}, {c['block_n']}, {c['block_t']}, {c['split_k']}, "
              f"{c['num_warps']}, {c['num_stages']}, {int(bool(c['reduce_in_kernel']))}]  "
              f"# M={r['m']}: {r['measured_s'] * 1e6:.2f} us, heuristic {r['heuristic_s'] * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
