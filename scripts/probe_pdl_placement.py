"""What does a grid launched with programmatic dependent launch (PDL) do to the kernel before it? (CUDA, sm_90+)

A primary kernel of ``--primary`` programs runs a chain of dependent float32 multiply-adds (issue- and
latency-bound, like the fused W4A8 loop) and lets its dependents start at once (``griddepcontrol.launch_dependents``);
the secondary kernel of ``--secondary`` programs records the SM each of its programs runs on (``%smid``) and the time
it started, then waits for the primary (``griddepcontrol.wait``). Launched normally, the secondary starts after the
primary ends; launched with PDL its programs sit on the SMs, waiting, while the primary runs. Printed for both:
the primary's duration (first program start to last program end, ``globaltimer``), how early the secondary's
programs started, and how its programs spread over the SMs. ``--out`` writes the numbers as JSON.

    python3 scripts/probe_pdl_placement.py [--primary 264] [--secondary 264] [--iters 20000] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--primary", type=int, default=264, help="programs of the primary kernel")
    ap.add_argument("--secondary", type=int, default=264, help="programs of the dependent kernel")
    ap.add_argument("--iters", type=int, default=20000, help="dependent multiply-adds per thread in the primary")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    for name in ("primary", "secondary", "iters", "warps", "repeats"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name}: expected a positive integer")
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def work(times_ptr, acc_ptr, iters, BLOCK: tl.constexpr):
        tl.extra.cuda.gdc_launch_dependents()
        t0 = tl.extra.cuda.globaltimer()
        x = tl.arange(0, BLOCK).to(tl.float32) * 1e-3
        for _ in range(iters):
            x = x * 0.999 + 1e-3
        tl.store(acc_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), x)
        t1 = tl.extra.cuda.globaltimer()
        tl.store(times_ptr + 2 * tl.program_id(0), t0)
        tl.store(times_ptr + 2 * tl.program_id(0) + 1, t1)

    @triton.jit
    def waiter(sm_ptr, start_ptr):
        tl.store(start_ptr + tl.program_id(0), tl.extra.cuda.globaltimer())
        tl.store(sm_ptr + tl.program_id(0), tl.extra.cuda.smid())
        tl.extra.cuda.gdc_wait()

    block = 32 * a.warps
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    times = torch.zeros(2 * a.primary, dtype=torch.int64, device="cuda")
    acc = torch.zeros(a.primary * block, dtype=torch.float32, device="cuda")
    result = {"card": torch.cuda.get_device_name(), "sms": sms, "primary": a.primary, "secondary": a.secondary,
              "iters": a.iters, "warps": a.warps}
    for pdl in (False, True, False, True):
        smid = torch.full((a.secondary,), -1, dtype=torch.int32, device="cuda")
        start = torch.zeros(a.secondary, dtype=torch.int64, device="cuda")
        durations, early = [], []
        for _ in range(a.repeats + 1):
            work[(a.primary,)](times, acc, a.iters, BLOCK=block, num_warps=a.warps)
            waiter[(a.secondary,)](smid, start, num_warps=a.warps, launch_pdl=pdl)
            torch.cuda.synchronize()
            t = times.view(-1, 2).cpu()
            durations.append(float(t[:, 1].max() - t[:, 0].min()) * 1e-3)
            early.append(float(t[:, 1].max() - start.cpu().min()) * 1e-3)
        durations, early = durations[1:], early[1:]  # the first launch compiles
        per_sm = collections.Counter(smid.cpu().tolist())
        key = "pdl" if pdl else "normal"
        result[key] = {"primary_us_median": statistics.median(durations), "primary_us": durations,
                       "secondary_started_before_primary_end_us_median": statistics.median(early),
                       "sms_used": len(per_sm), "max_programs_per_sm": max(per_sm.values()),
                       "programs_per_sm_histogram": dict(sorted(collections.Counter(per_sm.values()).items()))}
        r = result[key]
        print(f"{key:6s}: primary {r['primary_us_median']:.1f} us (median of {a.repeats}); secondary's first program "
              f"started {r['secondary_started_before_primary_end_us_median']:.1f} us before the primary's end; "
              f"{a.secondary} programs on {len(per_sm)} of {sms} SMs, SMs by programs held: "
              f"{r['programs_per_sm_histogram']}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        tag = result["card"].replace("NVIDIA ", "").split()[0].lower()
        (a.out / f"pdl_probe_{tag}_p{a.primary}_s{a.secondary}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
