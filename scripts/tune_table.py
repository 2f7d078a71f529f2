"""The fused W4A8 kernel's tuned launch configurations of a card, from the sweeps scripts/bench_gpu.py timed.

For every GEMM (n, k) and token count M a sweep timed (``tuning_<card>*.csv``, scheme ``w4a8_fused``: the card's
kernel variant, or another with ``--scheme``), the fastest configuration is kept when it beat the launch heuristic's
by at least ``--min-gain``. The heuristic's configuration is the row whose ``role`` says "rule" (in sweeps before
that column the first row per case), or with ``--heuristic-now PROFILE`` the one today's ``default_config`` picks
(the card-independent heuristic: a card whose profile runs some tiles deeper, ``heuristic_config_for``, still gets
its rows against this baseline, so a table stays reproducible).
Configurations with a register cap (``maxnreg``: spills) or two A tiles (``a_buffers``) are not taken. A GEMM two
models share is averaged over them. Each kept row covers the token counts that share its token tile and lie above
the next smaller M the sweep measured with that tile (M = 1 alone, 2..16, 33..64 for a sweep of M = 1, 16, 64).
Prints the rows for the profile's ``fused_kernel.tuned_configs`` with the measured times, a comment per row::

    python scripts/tune_table.py results/gpu/tuning_h100_s5small.csv results/gpu/tuning_h100_s5d.csv
    python scripts/tune_table.py results/gpu/tuning_h100_s6b.csv --scheme w4a8_fused_v6 --max-m 64 \
        --heuristic-now h100-triton-w4a8
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


def tuned_rows(paths: list[Path], min_gain: float, scheme: str = "w4a8_fused", max_m: int | None = None,
               heuristic=None) -> list[dict]:
    """One dict per kept case: n, k, m, min_m, max_m, config (dict), measured_s, heuristic_s. Configurations with a
    register cap or two A tiles (KernelConfig.a_buffers: the profile's rows do not hold it) are not taken.
    heuristic: None (the sweep's "rule" rows are the heuristic's configuration), or a function (n, k, m) -> the
    KernelConfig today's heuristic picks, whose row in the sweep is then the baseline."""
    # (n, k, M) -> configuration -> (times, heuristic's?): a GEMM two models share (Llama-2-7B's and Llama-3-8B's
    # o_proj) is timed twice; its configurations' times are averaged
    cases: dict[tuple[int, int, int], dict[str, tuple[list[float], bool]]] = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["scheme"] != scheme or not r.get("latency_s"):
                    continue
                key = (int(r["n"]), int(r["k"]), int(r["m"]))
                if max_m is not None and key[2] > max_m:
                    continue
                rule = "rule" in (r.get("role") or "") if "role" in r else key not in cases
                times, was_rule = cases.setdefault(key, {}).get(r["config"], ([], False))
                cases[key][r["config"]] = (times + [float(r["latency_s"])], was_rule or rule)
    if not cases:
        raise SystemExit(f"{', '.join(map(str, paths))}: no {scheme} rows")
    measured_m = sorted({m for _, _, m in cases})
    out = []
    for (n, k, m), by_config in sorted(cases.items()):
        items = [(parse_config(c), sum(t) / len(t), rule) for c, (t, rule) in by_config.items()]
        if heuristic is not None:
            now = parse_config(repr(heuristic(n, k, m)))
            items = [(c, t, c == now) for c, t, _ in items]
        heuristic_s = [t for _, t, rule in items if rule]
        if len(heuristic_s) != 1:
            raise SystemExit(f"n={n} k={k} M={m}: {len(heuristic_s)} rows of the heuristic's configuration, "
                             f"expected 1")
        heuristic_s = heuristic_s[0]
        config, best_s = min(((c, t) for c, t, _ in items if c.get("maxnreg") is None
                              and c.get("a_buffers", 1) == 1), key=lambda ct: ct[1])
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
    ap.add_argument("--scheme", default="w4a8_fused",
                    help="the sweep's scheme (bench_gpu.py): w4a8_fused (the card's variant), w4a8_fused_v6, ...")
    ap.add_argument("--max-m", type=int, default=None,
                    help="leave out sweeps above this M (e.g. 64: tiles another kernel runs beyond)")
    ap.add_argument("--heuristic-now", metavar="PROFILE",
                    help="compare with the configuration today's default_config picks (variant and SM limits of "
                         "this *-triton-w4a8 profile), not the sweep's rule rows; it must have been swept")
    ap.add_argument("--min-gain", type=float, default=0.03,
                    help="keep a configuration only if it was at least this much faster than the heuristic's "
                         "(default 0.03: below that, run-to-run noise)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.min_gain < 1.0:
        ap.error(f"--min-gain {args.min_gain}: expected a fraction in [0, 1)")
    for path in args.tuning_csv:
        if not path.is_file():
            ap.error(f"{path}: no such file")
    heuristic = None
    if args.heuristic_now:
        from dpq.kernels.w4a8_triton import SMLimits, default_config
        from sim.profiles import load_profile

        hw = load_profile(args.heuristic_now)
        if hw.sm is None or hw.fused_kernel is None:
            ap.error(f"--heuristic-now {args.heuristic_now}: the profile has no sm / fused_kernel section")
        limits = SMLimits.of_profile(hw)

        def heuristic(n, k, m):
            return default_config(m, n, k, limits.num_sms, hw.fused_kernel.block_k, hw.fused_kernel.kernel_variant,
                                  sm_limits=limits)
    rows = tuned_rows(args.tuning_csv, args.min_gain, args.scheme, args.max_m, heuristic)
    print("  tuned_configs:  # [n, k, min_m, max_m, block_n, block_t, split_k, warps, stages, reduce_in_kernel]")
    for r in rows:
        c = r["config"]
        print(f"    - [{r['n']}, {r['k']}, {r['min_m']}, {r['max_m']}, {c['block_n']}, {c['block_t']}, {c['split_k']}, "
              f"{c['num_warps']}, {c['num_stages']}, {int(bool(c['reduce_in_kernel']))}]  "
              f"# M={r['m']}: {r['measured_s'] * 1e6:.2f} us, heuristic {r['heuristic_s'] * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
