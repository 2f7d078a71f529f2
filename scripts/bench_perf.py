"""Wall-clock speed of the performance model on the two targets of issue 4 (run on a quiet machine).

    python scripts/bench_perf.py

1. simulate(h100, llama-2-7b, bf16, batch 1, prefill 2048 + 128 decode steps)    target < 1 s
2. simulate(h100, llama-2-70b, fp8, batch 64, tp 8, 2048 + 2048 decode steps)   target < 5 s
Each is timed cold (fresh process state: memo cache cleared) and warm, and once with every decode step simulated
(decode_samples >= output_len) to show what the sampling saves.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sim.perf import ops as perf_ops  # noqa: E402
from sim.perf import simulate  # noqa: E402

CASES = [
    ("llama-2-7b bf16 b1 2048+128", 1.0, dict(hw="h100", model="llama-2-7b", scheme="bf16", batch=1, input_len=2048,
                                              output_len=128)),
    ("llama-2-70b fp8 b64 tp8 2048+2048", 5.0, dict(hw="h100", model="llama-2-70b", scheme="fp8", batch=64,
                                                    input_len=2048, output_len=2048, tp=8)),
]


def timed(kwargs, **extra):
    perf_ops._TIMINGS.clear()
    t0 = time.perf_counter()
    r = simulate(**kwargs, **extra)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate(**kwargs, **extra)
    warm = time.perf_counter() - t0
    return r, cold, warm


def main() -> int:
    print("| case | target s | cold s | warm s | every step: cold s | decode total: sampled vs every step |")
    print("|---|---|---|---|---|---|")
    for name, target, kwargs in CASES:
        r, cold, warm = timed(kwargs)
        r_all, cold_all, _ = timed(kwargs, decode_samples=kwargs["output_len"])
        diff = r.decode_total_s / r_all.decode_total_s - 1.0
        print(f"| {name} | {target} | {cold:.3f} | {warm:.3f} | {cold_all:.2f} | {100 * diff:+.4f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
