import json

import pytest

from sim.perf import gemm_timing, predict_gemm, simulate, trace_step
from sim.profiles import load_profile


def test_predict_gemm_regimes_on_h100():
    # decode-sized GEMM: bounded by HBM; FP8 moves half the bytes of BF16
    small_bf16 = gemm_timing("h100", 1, 12288, 4096, "bf16")
    small_fp8 = predict_gemm("h100", 1, 12288, 4096, "fp8")
    assert small_bf16.bound == "hbm"
    assert 1.5 < small_bf16.time_s / small_fp8 < 2.2
    # prefill-sized GEMM: bounded by the matrix engine; FP8 has twice the peak
    big = gemm_timing("h100", 4096, 12288, 4096, "bf16")
    assert big.bound == "compute"
    assert 1.4 < big.time_s / predict_gemm("h100", 4096, 12288, 4096, "fp8") < 2.1
    assert sum(big.split.values()) == pytest.approx(big.time_s, rel=1e-9)


def test_predict_gemm_grows_with_work_and_is_deterministic():
    times = [predict_gemm("h100", m, 4096, 4096, "bf16") for m in (1, 256, 1024, 4096)]
    assert times == sorted(times)
    assert predict_gemm("h100", 333, 4096, 4096, "w4a8") == predict_gemm("h100", 333, 4096, 4096, "w4a8")


def test_w4a8_dequant_placement_is_sweepable_and_costs_what_it_should():
    fused = load_profile("h100", {"dequant.placement": "fused"})
    vpass = load_profile("h100", {"dequant.placement": "vector_pass"})
    # batch 1: INT4 weights read once -> W4A8 fused beats FP8; a separate pass writes and re-reads FP8 weights
    fp8 = predict_gemm(fused, 1, 12288, 4096, "fp8")
    w4_fused = gemm_timing(fused, 1, 12288, 4096, "w4a8")
    w4_pass = gemm_timing(vpass, 1, 12288, 4096, "w4a8")
    assert w4_fused.time_s < 0.75 * fp8
    assert w4_pass.time_s > fp8 and len(w4_pass.kernels) == 2
    # large batch: fused expansion is redone for every row tile -> dequant time shows up
    big = gemm_timing(fused, 8192, 12288, 4096, "w4a8")
    assert big.split["dequant_s"] > 0 and big.time_s > predict_gemm(fused, 8192, 12288, 4096, "fp8")
    free = load_profile("h100", {"dequant.ops_per_weight.fp8": 0.0})
    assert predict_gemm(free, 8192, 12288, 4096, "w4a8") < big.time_s


def test_bad_gemm_arguments():
    with pytest.raises(ValueError, match="m=0"):
        predict_gemm("h100", 0, 10, 10, "bf16")
    with pytest.raises(ValueError, match="scheme"):
        predict_gemm("h100", 1, 10, 10, "int2")
    with pytest.raises(TypeError):
        predict_gemm(3, 1, 10, 10, "bf16")


def test_simulate_result_fields_and_json():
    r = simulate("h100", "llama-2-7b", scheme="bf16", batch=4, input_len=512, output_len=64)
    assert r.prefill_latency_s > 0 and r.decode_time_per_token_s > 0
    assert r.e2e_latency_s == pytest.approx(r.prefill_latency_s + r.decode_total_s)
    assert r.output_tokens_per_s == pytest.approx(4 * 64 / r.e2e_latency_s)
    assert r.bound["decode"] == "hbm"
    assert r.memory.fits and r.memory.total_bytes == pytest.approx(
        r.memory.weights_bytes + r.memory.kv_cache_bytes + r.memory.workspace_bytes)
    d = json.loads(json.dumps(r.to_dict()))
    ops = d["steps"]["decode"]["ops"]
    assert {"op", "phase", "time_s", "flops", "hbm_bytes", "bound", "hbm_s", "matrix_s", "dequant_s", "link_s",
            "overhead_s"} <= set(ops[0])
    assert d["per_layer"]["decode"]["num_layers"] == 32
    assert d["config"]["profile"]["name"] == "h100"
    # the decode step's ops add up to its time
    step = r.decode
    assert sum(o.total_time_s for o in step.ops) + step.host_overhead_s == pytest.approx(step.time_s)


def test_decode_interpolation_matches_every_step():
    kw = dict(scheme="fp8", batch=8, input_len=100, output_len=40)
    exact = simulate("h200", "llama-3-8b", decode_samples=64, **kw)
    sampled = simulate("h200", "llama-3-8b", decode_samples=4, **kw)
    assert len(exact.decode_samples) == 39 and len(sampled.decode_samples) == 4
    assert sampled.decode_total_s == pytest.approx(exact.decode_total_s, rel=2e-3)


def test_memory_capacity_and_tensor_parallel():
    one = simulate("h100", "llama-2-70b", scheme="bf16", batch=1, input_len=128, output_len=16)
    assert not one.memory.fits
    tp8 = simulate("h100", "llama-2-70b", scheme="bf16", batch=1, input_len=128, output_len=16, tp=8)
    assert tp8.memory.fits
    assert any(o.name == "mlp_allreduce" and o.split["link_s"] > 0 for o in tp8.decode.ops)


def test_w4a8_vs_bf16_decode_on_gaudi2_and_placement_override():
    kw = dict(batch=1, input_len=128, output_len=8)
    bf16 = simulate("gaudi2", "llama-2-7b", scheme="bf16", **kw)
    fused = simulate("gaudi2", "llama-2-7b", scheme="w4a8", overrides={"dequant.placement": "fused"}, **kw)
    vpass = simulate("gaudi2", "llama-2-7b", scheme="w4a8", overrides={"dequant.placement": "vector_pass"}, **kw)
    assert fused.decode_time_per_token_s < bf16.decode_time_per_token_s
    assert vpass.decode_time_per_token_s > fused.decode_time_per_token_s
    # with ~11 TFLOP/s of TPC, expanding 6.7e9 weights per token is what bounds Gaudi 2's W4A8 linears
    assert {o.bound for o in fused.decode.ops if o.kind == "gemm" and o.name != "lm_head"} == {"dequant"}
    no_cost = simulate("gaudi2", "llama-2-7b", scheme="w4a8", overrides={"dequant.placement": "fused",
                                                                         "dequant.ops_per_weight.fp8": 0.0}, **kw)
    assert no_cost.decode_time_per_token_s < 0.6 * bf16.decode_time_per_token_s
    assert vpass.options["dequant_placement"] == "vector_pass"


def test_trace_export_has_resource_tracks():
    tr = trace_step("h100", "llama-2-7b", scheme="w4a8", batch=2, context_len=256, phase="decode", layers=1)
    json.dumps(tr)
    cats = {e.get("cat") for e in tr["traceEvents"] if e["ph"] == "X"}
    assert {"hbm", "matrix", "overhead"} <= cats
    assert all(e["dur"] >= 0 for e in tr["traceEvents"] if e["ph"] == "X")


def test_every_op_has_a_roofline_view_close_to_the_event_model():
    r = simulate("h100", "llama-2-7b", scheme="fp8", batch=8, input_len=1024, output_len=16)
    for step in (r.prefill, r.decode):
        assert step.roofline_time_s > 0
        # the event model adds pipeline fill, wave tails and small-transfer effects; it is never far below
        assert step.time_s == pytest.approx(step.roofline_time_s, rel=0.35)
        assert step.time_s >= 0.9 * step.roofline_time_s
    assert "roofline_time_s" in r.to_dict()["steps"]["decode"]["ops"][0]


def test_w4a16_expansion_is_cheaper_than_w4a8_per_weight():
    hw = load_profile("h100")
    assert hw.dequant.ops_per_weight["bf16"] < hw.dequant.ops_per_weight["fp8"]
    big16 = gemm_timing(hw, 4096, 12288, 4096, "w4a16")
    assert big16.split["dequant_s"] > 0 and big16.time_s > predict_gemm(hw, 4096, 12288, 4096, "bf16")


def test_expansion_shared_across_row_tiles_costs_less_at_large_m():
    per_tile = load_profile("gaudi3", {"dequant.placement": "fused", "dequant.expand_per_row_tile": True})
    once = load_profile("gaudi3", {"dequant.placement": "fused", "dequant.expand_per_row_tile": False})
    big_per_tile = gemm_timing(per_tile, 4096, 12288, 4096, "w4a8")
    big_once = gemm_timing(once, 4096, 12288, 4096, "w4a8")
    assert big_once.split["dequant_s"] < 0.5 * big_per_tile.split["dequant_s"]
    # a single row tile: nothing to share, same cost
    assert predict_gemm(per_tile, 1, 12288, 4096, "w4a8") == pytest.approx(predict_gemm(once, 1, 12288, 4096, "w4a8"))


def test_prefill_in_bounded_steps_shrinks_workspace_not_work():
    kw = dict(scheme="bf16", batch=64, input_len=1024, output_len=4)
    whole = simulate("h100", "llama-2-7b", **kw)
    steps = simulate("h100", "llama-2-7b", max_prefill_tokens=8192, **kw)
    assert steps.options["prefill_steps"] == 8 and whole.options["prefill_steps"] == 1
    assert steps.memory.workspace_bytes < whole.memory.workspace_bytes / 6
    # same work in 8 compute-bound steps: within 10 % of one big step, plus 7 more host overheads
    assert steps.prefill_latency_s == pytest.approx(whole.prefill_latency_s, rel=0.10)
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        simulate("h100", "llama-2-7b", max_prefill_tokens=0, **kw)


def test_attention_softmax_is_vector_time_not_dequant():
    r = simulate("h100", "llama-2-7b", scheme="bf16", batch=1, input_len=4096, output_len=2)
    att = next(o for o in r.prefill.ops if o.name == "attention")
    assert att.split["dequant_s"] == 0.0 and att.bound == "compute"


def test_prefill_only_runs():
    one = simulate("h200", "smollm2-135m", scheme="bf16", batch=2, input_len=64, output_len=1)
    assert one.decode is None and one.decode_time_per_token_s == 0.0
    assert one.e2e_latency_s == pytest.approx(one.prefill_latency_s)
    assert one.output_tokens_per_s == pytest.approx(2 / one.prefill_latency_s)
    zero = simulate("h200", "smollm2-135m", scheme="bf16", batch=2, input_len=64, output_len=0)
    assert zero.output_tokens_per_s == 0.0
    with pytest.raises(ValueError, match="output_len"):
        simulate("h200", "smollm2-135m", scheme="bf16", batch=2, input_len=64, output_len=-1)
    with pytest.raises(ValueError, match="tp=2"):
        simulate("h200", "smollm2-135m", scheme="bf16", batch=2, input_len=64, output_len=4, tp=2)


def test_few_tiles_run_alone_on_their_units():
    # fewer tiles than units: each tile has a whole unit, so occupancy (tiles per unit) does not change its time
    base = load_profile("h100", {"matrix_engine.split_k_max": 1})
    one = load_profile("h100", {"matrix_engine.split_k_max": 1, "matrix_engine.concurrent_tiles_per_unit": 1})
    t_few = [predict_gemm(hw, 16, 4096, 4096, "fp8") for hw in (base, one)]
    assert gemm_timing(base, 16, 4096, 4096, "fp8").info["tiles"] < base.matrix_engine.units
    assert t_few[0] == pytest.approx(t_few[1], rel=1e-9)


def test_sustained_rate_fraction_slows_serving_steps_not_single_gemms():
    full = {"matrix_engine.sustained_rate_fraction": 1.0}
    half = {"matrix_engine.sustained_rate_fraction": 0.5}
    kw = dict(scheme="fp8", batch=8, input_len=1024, output_len=2)
    r_full = simulate("h100", "llama-2-7b", overrides=full, **kw)
    r_half = simulate("h100", "llama-2-7b", overrides=half, **kw)
    assert r_full.bound["prefill"] == "compute"
    # compute-bound prefill: its matrix time doubles; the result keeps the profile as given
    assert r_half.prefill.split()["matrix_s"] == pytest.approx(2 * r_full.prefill.split()["matrix_s"], rel=0.05)
    assert r_half.profile.matrix_engine.sustained_rate_fraction == 0.5
    assert r_half.to_dict()["config"]["profile"]["matrix_engine"]["sustained_rate_fraction"] == 0.5
    assert predict_gemm(load_profile("h100", half), 4096, 4096, 4096, "fp8") == \
        predict_gemm(load_profile("h100", full), 4096, 4096, 4096, "fp8")


def test_split_k_kernel_rule_follows_the_library_and_costs_one_more_kernel():
    """cuBLAS (kernels_h100.csv) splits the Llama-2-7B down projection (4096 x 11008) into a split-K kernel plus a
    reduction kernel for FP8 only at M <= 16 and for BF16 up to M = 128; Gaudi profiles never do."""
    from sim.perf.kernels import GemmShape, gemm_plan
    from sim.profiles import load_profile

    hw = load_profile("h100")
    fp8_16 = gemm_plan(hw, GemmShape(16, 4096, 11008, "fp8", 1.0, 1.0))
    fp8_32 = gemm_plan(hw, GemmShape(32, 4096, 11008, "fp8", 1.0, 1.0))
    assert fp8_16.info["split_k_kernel"] and not fp8_32.info["split_k_kernel"]
    assert gemm_plan(hw, GemmShape(64, 4096, 11008, "bf16", 2.0, 2.0)).info["split_k_kernel"]
    assert not gemm_plan(hw, GemmShape(16, 8192, 28672, "fp8", 1.0, 1.0)).info["split_k_kernel"]  # 70B down
    assert not gemm_plan(hw, GemmShape(1, 5120, 5120, "bf16", 2.0, 2.0)).info["split_k_kernel"]  # K < 2N
    assert fp8_16.fixed_s - fp8_32.fixed_s >= hw.kernel.launch_overhead_s * (1 - 1e-9)
    gaudi = load_profile("gaudi3")
    assert not gemm_plan(gaudi, GemmShape(16, 4096, 11008, "fp8", 1.0, 1.0)).info["split_k_kernel"]
    # faster memory needs more units pulling: 80 FP8 tiles of the 13B down projection suffice on the H100, not on
    # the H200 (which cuBLAS splits there, kernels_h200.csv)
    shape_13b_down = GemmShape(16, 5120, 13824, "fp8", 1.0, 1.0)
    assert not gemm_plan(hw, shape_13b_down).info["split_k_kernel"]
    assert gemm_plan(load_profile("h200"), shape_13b_down).info["split_k_kernel"]


def test_validate_perf_mean_of_runs_averages_only_cards_measured_twice():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "validate_perf.py"
    spec = importlib.util.spec_from_file_location("validate_perf_under_test", path)
    vp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vp)
    base = {"model": "llama-2-13b", "layer": "o", "scheme": "bf16", "m": 64, "m_run": 64, "n": 5120, "k": 5120}
    rows = [dict(base, profile="h100", file="gemm_h100_run1.csv", measured_s=2.0e-5),
            dict(base, profile="h100", file="gemm_h100_run2.csv", measured_s=3.0e-5),
            dict(base, profile="h200", file="gemm_h200_run1.csv", measured_s=1.0e-5)]
    mean = vp.mean_of_runs(rows)
    assert len(mean) == 1
    assert mean[0]["profile"] == "h100" and mean[0]["measured_s"] == 2.5e-5
    assert mean[0]["file"] == "mean of gemm_h100_run1.csv + gemm_h100_run2.csv"
