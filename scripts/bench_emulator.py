#!/usr/bin/env python3
"""Benchmark the bit-exact FP8 matrix-engine emulator (sim.mac.fp8_gemm) next to numpy float32 matmul.

For each datapath (H100 with and without fast accumulation, Gaudi 2, Gaudi 3) and each shape (M=N=K=512 and the
decode shape M=16, N=4096, K=4096) it times fp8_gemm and a numpy float32 matmul of the same (decoded) operands in
the same run, and prints emulated MAC/s, numpy MAC/s and their ratio. Compilation is measured separately, in fresh
subprocesses: once with an empty Numba cache (compile) and once with that cache filled (load from cache).

    python scripts/bench_emulator.py [--repeats 5] [--seed 0] [--format table|json] [--skip-compile]

Timings are wall-clock minima over --repeats calls after one warm-up call, with the process CPU time of that call
beside it (G MAC per CPU-second: what one core does, less sensitive to other load on a shared machine); load hits
both the emulator and numpy columns of a row, so read the ratio with the load average printed below the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

DATAPATHS = [  # (label, profile, fp8_gemm options)
    ("h100", "h100", {}),
    ("h100 fast_accum", "h100", {"fast_accum": True}),
    ("gaudi2", "gaudi2", {}),
    ("gaudi3", "gaudi3", {}),
]
SHAPES = [(512, 512, 512), (16, 4096, 4096)]

_COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from sim.mac import fp8_gemm
t1 = time.perf_counter()
a = np.full((4, 64), 0x38, np.uint8)
for hw, kw in [("h100", {}), ("h100", {"fast_accum": True}), ("gaudi2", {}), ("gaudi3", {})]:
    fp8_gemm(a, a, hw=hw, **kw)
print(t1 - t0, time.perf_counter() - t1)
"""


def _first_call_seconds(cache_dir: str) -> tuple[float, float]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, capture_output=True, text=True,
                          check=True)
    import_s, first_calls_s = (float(x) for x in done.stdout.split())
    return import_s, first_calls_s


def _best_of(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeats`` calls after a warm-up call."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def run(repeats: int, seed: int, skip_compile: bool) -> dict:
    import numba

    from sim import formats
    from sim.mac import fp8_gemm, resolve_numerics

    rng = np.random.default_rng(seed)
    rows = []
    for label, profile, options in DATAPATHS:
        spec = resolve_numerics(profile)
        fmt = spec.default_fp8_format
        for m, n, k in SHAPES:
            a = formats.encode(rng.standard_normal((m, k)).astype(np.float32), fmt)
            b = formats.encode(rng.standard_normal((n, k)).astype(np.float32), fmt)
            a32, b32 = formats.decode(a, fmt), formats.decode(b, fmt)
            emu_s, emu_cpu_s = _best_of(lambda: fp8_gemm(a, b, hw=spec, **options), repeats)
            numpy_s, _ = _best_of(lambda: a32 @ b32.T, repeats)
            macs = m * n * k
            rows.append({"datapath": label, "m": m, "n": n, "k": k, "emulator_s": emu_s, "numpy_s": numpy_s,
                         "emulator_mac_per_s": macs / emu_s, "emulator_mac_per_cpu_s": macs / emu_cpu_s,
                         "numpy_mac_per_s": macs / numpy_s, "numpy_over_emulator": emu_s / numpy_s})
            print(f"  {label} {m}x{n}x{k}: {macs / emu_s / 1e9:.2f} G MAC/s", file=sys.stderr)
    result = {"rows": rows, "seed": seed, "repeats": repeats, "threads": numba.get_num_threads(),
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "load_average": list(os.getloadavg()), "numpy": np.__version__, "numba": numba.__version__}
    if not skip_compile:
        with tempfile.TemporaryDirectory() as cache:
            _, compile_s = _first_call_seconds(cache)
            _, cached_s = _first_call_seconds(cache)
        result["first_calls_cold_cache_s"] = compile_s
        result["first_calls_warm_cache_s"] = cached_s
    return result


def _print_table(result: dict) -> None:
    print(f"{'datapath':16s} {'M x N x K':>14s} {'emulator G MAC/s':>17s} {'(per CPU-s)':>12s} "
          f"{'numpy G MAC/s':>14s} {'numpy/emulator':>15s}")
    for r in result["rows"]:
        shape = f"{r['m']}x{r['n']}x{r['k']}"
        print(f"{r['datapath']:16s} {shape:>14s} {r['emulator_mac_per_s'] / 1e9:17.2f} "
              f"{r['emulator_mac_per_cpu_s'] / 1e9:12.2f} {r['numpy_mac_per_s'] / 1e9:14.1f} "
              f"{r['numpy_over_emulator']:15.1f}")
    if "first_calls_cold_cache_s" in result:
        print(f"first calls of all four datapaths: {result['first_calls_cold_cache_s']:.1f} s with an empty Numba "
              f"cache (compile), {result['first_calls_warm_cache_s']:.2f} s from the cache")
    print(f"threads {result['threads']}, load average {', '.join(f'{x:.1f}' for x in result['load_average'])}, "
          f"best of {result['repeats']}, seed {result['seed']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--skip-compile", action="store_true", help="do not measure compile time")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    result = run(args.repeats, args.seed, args.skip_compile)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
