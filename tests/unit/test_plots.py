"""sim.plots draws from saved rows alone; each figure is a readable PNG."""

from sim import plots


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_emulation_error_plot_handles_identical_layers_and_many_linears(tmp_path):
    rows = [{"profile": chip, "layer": f"blk.{i // 7}.l{i % 7}", "sqnr_db": min(200.0, 60.0 + i % 9 + off)}
            for chip, off in (("gaudi2", 90.0), ("h100", 0.0)) for i in range(210)]
    assert _png_ok(plots.plot_emulation_error(rows, tmp_path / "e.png", title="t"))


def test_speedup_plot_skips_chips_without_baseline(tmp_path):
    rows = []
    for chip in ("gaudi2", "h100"):
        for scheme in ("bf16", "w4a8"):
            for b in (1, 4, 16):
                t = 1.0 if scheme == "bf16" else 0.5
                rows.append({"profile": chip, "scheme": scheme, "batch": b, "prefill_latency_s": t * b,
                             "decode_time_per_token_s": t})
    rows.append({"profile": "h200", "scheme": "w4a8", "batch": 1, "prefill_latency_s": 1.0,
                 "decode_time_per_token_s": 1.0})
    assert _png_ok(plots.plot_speedup_vs_batch(rows, tmp_path / "s.png"))


def test_roofline_breakdown_and_memory_plots(tmp_path):
    ops = [{"op": "qkv_proj", "scheme": "w4a8", "phase": "decode", "flops": 2e9, "bytes": 1e7, "time_s": 1e-5,
            "hbm_s": 8e-6, "matrix_s": 1e-6, "dequant_s": 1e-6, "overhead_s": 0.0},
           {"op": "silu_mul", "scheme": "w4a8", "phase": "decode", "flops": 0.0, "bytes": 1e6, "time_s": 2e-6,
            "hbm_s": 2e-6}]
    assert _png_ok(plots.plot_roofline(ops, {"bf16": 1e15, "fp8": 2e15}, 3e12, tmp_path / "r.png", title="t"))
    assert _png_ok(plots.plot_time_breakdown({"w4a8": ops, "bf16": ops}, tmp_path / "b.png", title="t"))
    mem = [{"scheme": s, "batch": b, "weights_bytes": w, "kv_cache_bytes": 1e9 * b, "workspace_bytes": 1e8,
            "capacity_bytes": 80e9} for s, w in (("bf16", 14e9), ("w4a8", 4e9)) for b in (1, 8, 64)]
    assert _png_ok(plots.plot_memory_vs_batch(mem, tmp_path / "m.png", title="t"))
