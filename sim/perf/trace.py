"""Chrome-trace export of one simulated step (open in chrome://tracing or https://ui.perfetto.dev).

Every busy interval of the event engine becomes a complete event ("ph": "X") on the track of its resource
(hbm, matrix, vector/dequant, link) with the kernel's name; fixed costs go on an "overhead" track.
Times in microseconds, as the trace format wants.
"""

from __future__ import annotations

import json

from sim.models import load_model
from sim.perf.engine import run_sequence
from sim.perf.ops import op_plans, resolve_profile
from sim.perf.simulate import sustained_profile
from sim.workload import decode_ops, get_scheme, prefill_ops

_TRACKS = {"overhead": 0, "hbm": 1, "matrix": 2, "vector": 3, "dequant": 3, "link": 4}


def trace_step(hw, model, *, scheme: str, batch: int, context_len: int, phase: str = "decode", tp: int = 1,
               layers: int = 2, kv_cache_dtype: str = "bf16") -> dict:
    """Simulate one step (its model-level ops and ``layers`` decoder layers) and return a Chrome trace dict.

    phase "prefill": context_len is the prompt length; "decode": the KV length the new token attends to.
    """
    hw = sustained_profile(resolve_profile(hw))  # the step as simulate() runs it
    model = load_model(model)
    s = get_scheme(scheme)
    if phase == "prefill":
        ops = prefill_ops(model, s, batch, context_len, tp, kv_cache_dtype)
    elif phase == "decode":
        ops = decode_ops(model, s, batch, context_len, tp, kv_cache_dtype)
    else:
        raise ValueError(f"phase={phase!r}: expected 'prefill' or 'decode'")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers={layers!r}: expected a positive integer")
    plans = []
    layer_ops = [op for op in ops if op.scope == "layer"]
    before = [op for op in ops if op.scope == "model" and ops.index(op) < ops.index(layer_ops[0])]
    after = [op for op in ops if op.scope == "model" and op not in before]
    sequence = before + [op for _ in range(min(layers, model.num_layers)) for op in layer_ops] + after
    for op in sequence:
        for plan in op_plans(hw, op):
            plans.append(plan)
    end, dev = run_sequence(plans)
    events = [{"name": name, "ph": "M", "pid": 0, "tid": tid, "args": {"name": track}}
              for track, tid in _TRACKS.items() for name in ("thread_name",) if track != "dequant"]
    events.append({"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"{hw.name} {model.name} "
                                                                                 f"{s.name} {phase}"}})
    for cat, start, stop, kernel in dev.intervals:
        events.append({"name": kernel, "cat": cat, "ph": "X", "pid": 0, "tid": _TRACKS[cat],
                       "ts": start * 1e6, "dur": (stop - start) * 1e6})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"hardware": hw.name, "model": model.name, "scheme": s.name, "phase": phase,
                          "batch": batch, "context_len_tokens": context_len, "tp": tp, "layers_traced": layers,
                          "simulated_time_s": end}}


def write_trace(path: str, trace: dict) -> None:
    with open(path, "w") as fh:
        json.dump(trace, fh)
