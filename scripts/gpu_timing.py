"""CUDA-graph timing shared by the GPU scripts (bench_gpu.py, measure_gpu_gemm.py, probe_triton_loop.py)."""

from __future__ import annotations

import statistics


def time_graph(torch, calls, repeats: int, warmup: int = 3, keep_last: bool = False):
    """Median seconds per call of a CUDA graph running ``calls`` (a list of thunks) back to back, and the relative
    spread (max - min) / median over ``repeats`` replays timed with CUDA events.

    The first ``warmup`` thunks run once on a side stream before capture (compilation, handles, workspaces). Outputs
    are dropped as the graph is captured, so its memory pool reuses them, as a decode loop would; with
    ``keep_last`` a copy of what the last thunk returned (a list of tensors) after the final replay comes third.
    """
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in calls[:warmup]:
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for fn in calls[:-1]:
            fn()
        out = calls[-1]()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3 / len(calls))
    last = [o.clone() for o in out] if keep_last else None
    med = statistics.median(times)
    del g, out
    if keep_last:
        return med, (max(times) - min(times)) / med, last
    return med, (max(times) - min(times)) / med
