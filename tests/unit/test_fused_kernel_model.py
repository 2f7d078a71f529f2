"""sim.perf.fused_kernel: the structure model of a fused Triton GEMM kernel, its profile sections and its plan."""

import csv
import dataclasses

import pytest
import yaml

from sim.errors import ConfigError
from sim.perf.engine import run_kernel
from sim.perf.fused_kernel import (LoopStructure, default_structure, fused_gemm_plan, fused_gemm_timing,
                                   resident_programs)
from sim.perf.gemm import gemm_timing
from sim.profiles import load_profile, load_raw

PROFILE = "h200-triton-w4a8"


@pytest.fixture(scope="module")
def hw():
    return load_profile(PROFILE)


def lut_decode(**kw) -> LoopStructure:
    base = dict(block_n=128, block_t=16, block_k=128, split_k=2, warps=4, stages=4, registers_per_thread=118,
                shared_bytes_per_program=38912, loop_instructions_per_thread=362.0, weight_bytes_per_weight=0.625,
                fp32_instructions=0.0, int_instructions=243.0, conversion_instructions=0.0)
    base.update(kw)
    return LoopStructure(**base)


def test_resident_programs_follow_registers_shared_memory_and_warps(hw):
    # 118 registers -> 120 per thread -> 3840 per warp -> 15360 per program: 4 fit 65536
    assert resident_programs(hw, lut_decode()) == 4
    # 80 registers x 4 warps = 10240 -> 6 programs; 21 KB of shared memory would allow 10
    assert resident_programs(hw, lut_decode(registers_per_thread=80, shared_bytes_per_program=21248)) == 6
    # shared memory binds: 100 KB + 1 KB reserved -> 2 programs in 228 KB
    assert resident_programs(hw, lut_decode(registers_per_thread=56, shared_bytes_per_program=102400)) == 2
    with pytest.raises(ValueError, match="does not fit one SM"):
        resident_programs(hw, lut_decode(shared_bytes_per_program=300000))


def test_a_profile_without_the_fused_kernel_section_is_named():
    with pytest.raises(ValueError, match=r"profile 'h200' has no 'fused_kernel' section"):
        fused_gemm_plan(load_profile("h200"), 1, 8192, 8192, structure=lut_decode())
    with pytest.raises(ValueError, match=r"profile 'h200' has no 'fused_kernel' section"):
        default_structure(load_profile("h200"), 1, 8192, 8192)


def test_loop_structure_rejects_pipe_counts_beyond_the_loop():
    with pytest.raises(ValueError, match="exceeds loop_instructions_per_thread"):
        lut_decode(loop_instructions_per_thread=200.0)  # 243 integer instructions of 200
    with pytest.raises(ValueError, match=r"LoopStructure\.int_instructions=-1\.0"):
        lut_decode(int_instructions=-1.0)
    assert lut_decode(fp32_instructions=None, int_instructions=None, conversion_instructions=None).int_instructions \
        is None


def test_time_follows_structure(hw):
    t = fused_gemm_timing(hw, lut_decode(), 1, 57344, 8192)
    more_instr = fused_gemm_timing(hw, lut_decode(loop_instructions_per_thread=700.0, int_instructions=581.0),
                                   1, 57344, 8192)
    fewer_bytes = fused_gemm_timing(hw, lut_decode(weight_bytes_per_weight=0.5), 1, 57344, 8192)
    assert more_instr.time_s > 1.3 * t.time_s
    # the integer pipe issues slower than the others: the same count all on it takes longer
    other = fused_gemm_timing(hw, lut_decode(int_instructions=0.0), 1, 57344, 8192)
    assert other.time_s < t.time_s
    assert fewer_bytes.time_s < t.time_s
    assert t.programs == 448 * 2 and t.iterations_per_program == 32 and t.resident_programs_per_sm == 4
    assert t.time_s == pytest.approx(t.fixed_s + max(t.sm_s, t.latency_s, t.hbm_s) + t.reduction_s)
    # one split part: no reduction kernel
    one = fused_gemm_timing(hw, lut_decode(split_k=1), 1, 57344, 8192)
    assert one.reduction_s == 0.0 and t.reduction_s > 0.0


def test_two_stages_wait_on_memory_latency(hw):
    s2 = fused_gemm_timing(hw, lut_decode(stages=2, split_k=1, shared_bytes_per_program=20480), 1, 8192, 8192)
    s4 = fused_gemm_timing(hw, lut_decode(stages=4, split_k=1), 1, 8192, 8192)
    assert s2.bound == "latency" and s2.time_s > s4.time_s


def test_split_parts_as_the_launch_makes_them(hw):
    t = fused_gemm_timing(hw, lut_decode(split_k=10), 1, 8192, 28672)  # 224 steps: 23 per part -> 10 parts
    assert t.iterations_per_program == 23 and t.programs == 64 * 10
    with pytest.raises(ValueError, match="multiple of block_k"):
        fused_gemm_timing(hw, lut_decode(), 1, 8192, 1000)
    with pytest.raises(ValueError, match="positive integer"):
        fused_gemm_timing(hw, lut_decode(), 0, 8192, 8192)
    with pytest.raises(ValueError, match="stages"):
        lut_decode(stages=1)


# The v4 kernel's tiles as the H200 profile held them while v4 was its default (SASS at commit e1b6bba): the
# busiest_sm split policy is v4's heuristic.
V4_TILE_CONFIGS = [[16, 128, 16, 4, 3, 75, 26624, 279, 65, 134, 0, 8, 32768, 4],
                   [32, 128, 32, 4, 3, 96, 32768, 293, 74, 137, 0, 8, 65536, 4],
                   [64, 128, 64, 4, 3, 168, 45056, 298, 73, 155, 0, 8, 131072, 4],
                   [1000000000, 128, 128, 8, 3, 142, 69632, 198, 46, 92, 0, 4, 262144, 8]]


def test_default_structure_is_the_kernels_heuristic():
    v4 = load_profile(PROFILE, {"fused_kernel.split_policy": "busiest_sm", "fused_kernel.tuned_configs": [],
                                "fused_kernel.tile_configs": V4_TILE_CONFIGS})
    # busiest_sm policy (the v4 kernel's default_config): the split minimising the busiest SM's steps
    assert default_structure(v4, 1, 57344, 8192).split_k == 3
    assert default_structure(v4, 1, 8192, 28672).split_k == 16
    s = default_structure(v4, 1, 8192, 8192)
    assert (s.block_n, s.block_t, s.warps, s.stages) == (128, 16, 4, 3) and s.int_instructions > 0
    big = default_structure(v4, 4096, 8192, 8192)
    assert (big.block_t, big.warps, big.stages, big.split_k) == (128, 8, 3, 1)
    # above M = 64: split while the programs stay within 2 per SM
    assert default_structure(v4, 128, 8192, 28672).split_k == 4    # 64 tiles
    assert default_structure(v4, 256, 8192, 28672).split_k == 2    # 128 tiles
    assert default_structure(v4, 128, 57344, 8192).split_k == 1    # 448 tiles: more than 2 per SM already
    # programs_per_sm policy (the lut/v2 kernels): split while fewer tiles than 4 programs per SM
    lut = load_profile(PROFILE, {"fused_kernel.split_policy": "programs_per_sm", "fused_kernel.tuned_configs": [],
                                 "fused_kernel.tile_configs": V4_TILE_CONFIGS})
    assert default_structure(lut, 1, 8192, 8192).split_k == 9  # ceil(528 / 64 tiles), <= 64 steps // 4


def test_default_structure_follows_the_cards_tuned_configurations(hw):
    """The H200 runs v6 (the Gluon kernel: 8 launched warps) with its measured table where it has a row, else v6's
    heuristic (the waves rule) at the depth its profile gives the tile: 5 stages for 16 and 64 tokens, 4 for 32 -
    what dpq's launch takes on that card (heuristic_config_for); then the card's decode launch policy (dependent
    launch, the 'share' ring depth), which both apply the same."""
    from dpq.kernels.w4a8_triton import SMLimits, decode_launch_policy, default_config, heuristic_config_for

    tile = dataclasses.replace(hw, fused_kernel=dataclasses.replace(hw.fused_kernel, ring_depth="tile",
                                                                    dependent_launch=False))
    tuned = default_structure(tile, 1, 57344, 8192)  # tuned row [57344, 8192, 1, 1, 128, 16, 4, 4, 3, 0]
    assert (tuned.block_t, tuned.split_k, tuned.stages, tuned.launched_warps) == (16, 4, 3, 8)
    assert default_structure(tile, 16, 57344, 8192).stages == 5  # M 5-16: its own row, 5 stages
    limits = SMLimits.of_profile(hw)
    for m, stages in ((1, 5), (20, 4), (64, 5)):
        rule = default_structure(tile, m, 8192, 4096)  # no tuned row: the heuristic
        want = heuristic_config_for("NVIDIA H200", limits, m, 8192, 4096, 128, "v6")
        assert (rule.block_t, rule.split_k, rule.stages, rule.launched_warps) == \
            (want.block_t, want.split_k, want.num_stages, 8)
        assert rule.stages == stages
        launched = default_structure(hw, m, 8192, 4096)
        policy = decode_launch_policy("NVIDIA H200", limits, want, m, 8192, 4096, 128, "v6")
        assert (launched.split_k, launched.stages, launched.dependent_launch) == \
            (policy.split_k, policy.num_stages, policy.pdl) == (want.split_k, launched.stages, True)
        assert launched.stages >= stages
    # a weight the Gluon kernel cannot take (N not a multiple of 4: v5's Triton kernel runs) keeps default_config
    assert heuristic_config_for("NVIDIA H200", limits, 1, 8190, 4096, 128, "v6").num_stages == 4
    # the H100's heuristic tiles stay at 4 stages; a card without a profile gets default_config as it is
    assert heuristic_config_for("NVIDIA H100 80GB HBM3", limits, 1, 8192, 4096, 128, "v6").num_stages == 4
    assert heuristic_config_for("NVIDIA A100-SXM4-80GB", limits, 1, 8192, 4096, 128, "v6").num_stages == 4
    assert heuristic_config_for("NVIDIA H200", limits, 1, 8192, 4096, 128, "v5") == \
        default_config(1, 8192, 4096, limits.num_sms, 128, "v5", sm_limits=limits)  # not the card's variant


def test_engine_plan_matches_closed_form_and_simulate_uses_it(hw):
    for m in (1, 64, 1024):
        plan = fused_gemm_plan(hw, m, 28672, 8192, "gate_up")
        engine = run_kernel(plan).time_s
        assert engine == pytest.approx(plan.info["closed_form_s"], rel=0.03)
    t = gemm_timing(hw, 16, 28672, 8192, "w4a8")
    assert t.info["kernel"] == "fused" and t.split["dequant_s"] > 0.0
    # profiles without the fused_kernel section keep the generic dequant model
    assert "kernel" not in gemm_timing("h200", 16, 28672, 8192, "w4a8").info


def test_profile_sections_are_validated(tmp_path):
    raw, _ = load_raw(PROFILE)
    raw.pop("extends", None)

    def write(data, name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["split_policy"] = "round_robin"
    with pytest.raises(ConfigError, match=r"fused_kernel\.split_policy.*expected one of"):
        load_profile(write(bad, "p"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["tile_configs"][0] = [16, 128, 16, 4]
    with pytest.raises(ConfigError, match=r"fused_kernel\.tile_configs\[0\].*expected \[max_m"):
        load_profile(write(bad, "a"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["tile_configs"][0][13] = 2  # fewer launched warps than the loop's
    with pytest.raises(ConfigError, match=r"fused_kernel\.tile_configs\[0\]\[13\] \(launched_warps\).*>= warps"):
        load_profile(write(bad, "t_launched"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["tile_configs"][1][0] = 8
    with pytest.raises(ConfigError, match="max_m increasing"):
        load_profile(write(bad, "b"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["tile_configs"][0][9] = bad["fused_kernel"]["tile_configs"][0][7] + 1
    with pytest.raises(ConfigError, match=r"fused_kernel\.tile_configs\[0\]\[8:11\].*sum <= loop_instructions"):
        load_profile(write(bad, "f"))
    good = [[4096, 4096, 1, 1, 128, 16, 4, 4, 3, 0], [4096, 4096, 2, 16, 128, 16, 4, 4, 3, 1]]
    for name, rows, match in (("t1", [good[0][:9]], r"tuned_configs\[0\].*expected \[n, k, min_m"),
                              ("t2", good + [[4096, 4096, 8, 20, 128, 16, 4, 4, 3, 0]],
                               r"tuned_configs\[2\].*M range 8\.\.20 of n=4096, k=4096 overlaps row 1"),
                              ("t3", [good[0][:4] + [96] + good[0][5:]], r"tuned_configs\[0\].*block_n 64/128/256"),
                              ("t4", [good[0][:2] + [16, 2] + good[0][4:]], r"min_m <= max_m")):
        bad = yaml.safe_load(yaml.safe_dump(raw))
        bad["fused_kernel"]["tuned_configs"] = rows
        with pytest.raises(ConfigError, match=match):
            load_profile(write(bad, name))
    ok = yaml.safe_load(yaml.safe_dump(raw))
    ok["fused_kernel"]["tuned_configs"] = good
    assert load_profile(write(ok, "t5")).fused_kernel.tuned_configs == tuple(map(tuple, good))
    # a tuned tile needs its structure: from tile_configs (above) or tuned_tile_structures
    ok["fused_kernel"]["tuned_configs"] = [[4096, 4096, 1, 1, 64, 16, 4, 4, 3, 0]]
    with pytest.raises(ConfigError, match=r"tuned_configs\[0\]: tile 64 x 16, 4 warps, 3 stages: no row"):
        load_profile(write(ok, "t6"))
    ok["fused_kernel"]["tuned_tile_structures"] = [[64, 16, 4, 3, 51, 15360, 229, 60, 83, 4, 4, 32768, 4]]
    assert load_profile(write(ok, "t7")).fused_kernel.tile_structure(64, 16, 4, 3)[5] == 51
    ok["fused_kernel"]["tuned_tile_structures"] = [[64, 16, 4, 3, 51, 15360, 229, 60, 83, 4, 4, 32768]]
    with pytest.raises(ConfigError, match=r"tuned_tile_structures\[0\].*expected \[block_n, block_t"):
        load_profile(write(ok, "t8"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["fused_kernel"]["device_name_contains"] = ""  # would claim every card
    with pytest.raises(ConfigError, match=r"fused_kernel\.device_name_contains.*non-empty string"):
        load_profile(write(bad, "g"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    del bad["sm"]
    with pytest.raises(ConfigError, match="needs the 'sm' and 'triton_loop'"):
        load_profile(write(bad, "c"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    del bad["sources"]["triton_loop.cycles_per_instruction"]
    with pytest.raises(ConfigError, match=r"sources\.triton_loop\.cycles_per_instruction"):
        load_profile(write(bad, "d"))
    bad = yaml.safe_load(yaml.safe_dump(raw))
    bad["triton_loop"]["resident_program_slowdown"] = 1.5
    with pytest.raises(ConfigError, match=r"resident_program_slowdown.*<= 1"):
        load_profile(write(bad, "e"))
    hw = load_profile(PROFILE, {"triton_loop.cycles_per_instruction": 2.0})
    assert hw.triton_loop.cycles_per_instruction == 2.0
    slower = fused_gemm_timing(hw, lut_decode(), 1, 57344, 8192)
    assert slower.iteration_s > fused_gemm_timing(load_profile(PROFILE), lut_decode(), 1, 57344, 8192).iteration_s
    assert dataclasses.asdict(hw.sm)["count"] == 132
    assert "fused_kernel" in hw.to_dict()


def _script(name: str):
    """A module of scripts/ loaded by path (scripts/ is not an installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sass_loop_structure_by_pipe():
    fks = _script("fused_kernel_structure")
    issue_class, loop_structure, shared_wavefronts = fks.issue_class, fks.loop_structure, fks.shared_wavefronts

    sass = "\n".join([
        "        /*0100*/                   LDS.U16 R4, [R2] ;",
        "        /*0110*/                   PRMT R5, R4, R6, R7 ;",
        "        /*0120*/                   LOP3.LUT R5, R5, 0x7, RZ, 0xc0, !PT ;",
        "        /*0130*/                   IMAD.MOV.U32 R8, RZ, RZ, R5 ;",
        "        /*0140*/                   F2FP.F16.F32.PACK_AB R9, R8, R8 ;",
        "        /*0150*/                   LDGSTS.E.BYPASS.128 [R10], desc[UR4][R12.64] ;",
        "        /*0160*/                   QGMMA.64x16x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24 ;",
        "        /*0170*/                   UIADD3 UR4, UR4, 0x1, URZ ;",
        "        /*0180*/               @P0 BRA 0x100 ;",
        "        /*0190*/                   EXIT ;",
    ])
    st = loop_structure(sass)
    assert st["loop_instructions_per_thread"] == 9  # 0x100 .. the backward branch
    assert (st["int_instructions"], st["fp32_instructions"], st["conversion_instructions"]) == (2, 1, 1)
    assert (st["shared_instructions"], st["uniform_instructions"], st["other_instructions"]) == (2, 1, 2)
    assert st["shared_wavefronts_per_warp"] == 1 + 4
    assert issue_class("VIADD") == "fp32" and issue_class("SHF.R.U32.HI") == "int"
    assert shared_wavefronts("LDSM.16.M88") == 1 and shared_wavefronts("LDSM.16.MT88.4") == 4


def test_validate_script_reads_the_configuration_each_row_ran():
    v = _script("validate_perf_on_gpu")
    row = {"config": "KernelConfig(block_n=128, block_t=16, split_k=4, num_warps=4, num_stages=3, groups_per_step=1, "
                     "reduce_in_kernel=True)", "block_n": "128", "split_k": "4"}
    cfg = v.row_config(row)
    assert (cfg["block_n"], cfg["block_t"], cfg["split_k"], cfg["num_warps"], cfg["num_stages"]) == (128, 16, 4, 4, 3)
    assert cfg["reduce_in_kernel"] and cfg["groups_per_step"] == 1
    assert not v.row_config({"config": "KernelConfig(block_n=64, block_t=16, split_k=2, num_warps=4, "
                                       "num_stages=4)"})["reduce_in_kernel"]
    assert v.variants_of({"bf16", "w4a8_fused", "w4a8_fused_v3", "fp8_triton"})["w4a8_fused"] == "v4"
    assert v.variants_of({"w4a8_fused", "w4a8_fused_v2"}) == {"w4a8_fused": "lut", "w4a8_fused_v2": "v2"}
    assert v.variants_of({"w4a8_fused", "w4a8_unfused"}) == {"w4a8_fused": "v2"}


def test_validate_script_names_the_v5_variant_and_its_bytes():
    v = _script("validate_perf_on_gpu")
    schemes = {"fp8", "w4a8_fused", "w4a8_fused_v5", "w4a8_fused_v4", "fp8_triton"}
    assert v.variants_of(schemes, "v5") == {"w4a8_fused": "v5", "w4a8_fused_v5": "v5", "w4a8_fused_v4": "v4",
                                            "w4a8_fused_v6": "v6", "w4a8_fused_reduce": "v5",
                                            "w4a8_fused_v3": "lut", "w4a8_fused_v2": "v2", "fp8_triton": "fp8",
                                            "w4a8_fused_v5old": "v5", "w4a8_fused_default": "v5",
                                            "w4a8_fused_rule": "v5", "w4a8_fused_pdl": "v5",
                                            "w4a8_fused_pdl_late": "v5",
                                            "w4a8_fused_nowait": "v5", "w4a8_fused_nopolicy": "v5",
                                            "w4a8_fused_deep": "v5", "w4a8_fused_pdl_deep": "v5",
                                            "w4a8_fused_pdl_deep_reduce": "v5", "w4a8_fused_v6_pdl": "v6"}
    assert v.variants_of(schemes, None)["w4a8_fused"] == "v4"
    # a bench of the default kernel only (bench_h200_final.csv): its rows are fused rows of the measured default
    final = v.variants_of({"bf16", "fp8", "fp8_triton", "w4a8_fused_default"}, "v5")
    assert final["w4a8_fused_default"] == "v5" and final["fp8_triton"] == "fp8"
    # the report names what each row ran (rows of an H200 from when v4 was its default, whatever DEFAULT_VARIANT says)
    rows = [{"scheme": "w4a8_fused_default", "variant": "v4"}, {"scheme": "w4a8_fused_v5", "variant": "v5"},
            {"scheme": "fp8_triton", "variant": ""}, {"scheme": "bf16"}]
    assert v.variants_used(rows, "v5") == {"w4a8_fused_default": "v4", "w4a8_fused_v5": "v5", "fp8_triton": "fp8"}
    assert v.WEIGHT_BYTES["v5"] == pytest.approx(0.5 + 5 / 128)  # codes + float32 scale + uint8 zero per group


def test_unfused_torch_chain_bytes_and_streaming_time():
    from sim.perf.gemm import streaming_kernels_time

    v = _script("validate_perf_on_gpu")
    n, k = 4096, 4096
    chain = v.unfused_kernels(n, k)
    assert len(chain) == 12
    w, g = n * k, n * k / 128
    # int32/float32 intermediates: 36.5 W read + 35 W written, 9 G read + 4 G written (group scales and zeros)
    assert sum(r + wr for _, r, wr in chain) == pytest.approx(71.5 * w + 13 * g)
    hw = load_profile("h100")
    times = dict(streaming_kernels_time(hw, chain))
    assert times["c & 0x0F"] == pytest.approx(times["c >> 4"])  # same bytes, same time
    assert times["* s (float32)"] > times["int32 -> float32"] > times["codes uint8 -> int32"]
    assert min(times.values()) >= hw.kernel.launch_overhead_s
    with pytest.raises(ValueError, match="read_bytes"):
        streaming_kernels_time(hw, [("bad", -1.0, 0.0)])


def test_sass_mma_waits_and_the_k_loop_over_a_longer_epilogue_loop():
    fks = _script("fused_kernel_structure")

    def ins(addr, text):
        return f"        /*{addr:04x}*/                   {text} ;"

    # K loop 0x100..0x1a0: two MMA groups, the first waited on at once (wait 0), the second left in flight (<= 1)
    lines = [ins(0x100, "WARPGROUP.ARRIVE"), ins(0x110, "QGMMA.64x64x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24"),
             ins(0x120, "QGMMA.64x64x32.F32.E4M3.E4M3 R56, gdesc[UR8], R56, gsb0"),
             ins(0x130, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), ins(0x140, "WARPGROUP.ARRIVE"),
             ins(0x150, "QGMMA.64x64x32.F32.E4M3.E4M3 R24, R88, gdesc[UR8], R24, gsb0"),
             ins(0x160, "WARPGROUP.DEPBAR.LE gsb0, 0x1"), ins(0x170, "BAR.SYNC.DEFER_BLOCKING 0x0"),
             ins(0x1a0, "@P0 BRA 0x100")]
    # a longer loop after it without MMAs (a split-K reduction in the epilogue)
    lines += [ins(0x200 + 16 * i, "FADD R1, R1, R2") for i in range(20)] + [ins(0x400, "@P1 BRA 0x200"),
                                                                             ins(0x410, "EXIT")]
    st = fks.loop_structure("\n".join(lines))
    assert st["loop_instructions_per_thread"] == 9  # the K loop, not the 21-instruction epilogue loop
    assert (st["mma_instructions"], st["waited_mma_instructions"]) == (3, 2)
    assert st["mma_macs_per_instruction"] == 64 * 64 * 32


def test_waited_mma_and_partial_last_wave(hw):
    base = lut_decode(split_k=1)
    waited = dataclasses.replace(base, waited_mma_instructions=8.0, mma_macs_per_instruction=64 * 16 * 32)
    extra = (fused_gemm_timing(hw, waited, 1, 8192, 8192).iteration_s
             - fused_gemm_timing(hw, base, 1, 8192, 8192).iteration_s)
    assert extra == pytest.approx(8 * (hw.triton_loop.mma_wait_latency_s
                                       + 64 * 16 * 32 / (hw.sm.tensor_macs_per_cycle * hw.sm.clock_hz)))
    # 5 programs per SM with 4 resident: a full wave of 4, then the 5th alone at one program's pace
    ceil = load_profile(PROFILE, {"triton_loop.program_spread": "ceil"})
    t = fused_gemm_timing(ceil, base, 1, 132 * 5 * 128, 8192)
    assert t.resident_programs_per_sm == 4
    per, slow, fixed = t.iterations_per_program, ceil.triton_loop.resident_program_slowdown, \
        ceil.triton_loop.program_fixed_s
    wave4 = per * t.iteration_s * (1 + slow * 3) + fixed
    wave1 = per * t.iteration_s + fixed
    assert t.sm_s == pytest.approx(ceil.triton_loop.loaded_hbm_latency_s + wave4 + wave1)


def test_register_a_mma_time_follows_the_expansion(hw):
    """The kernels wait for a step's register-A MMAs at its end (mma_wait_each_step): their tensor time adds to the
    step after the expansion's issue, one warpgroup's MMAs in sequence, the program's warpgroups sharing the SM's
    tensor cores; and a step streams only its weight tile through the SM's load path (the token tile is L2's)."""
    small = lut_decode(loop_instructions_per_thread=40.0, fp32_instructions=0.0, int_instructions=0.0)
    chained = dataclasses.replace(small, register_a_mma_instructions=8.0, mma_macs_per_instruction=64 * 64 * 32)
    tensor_s = 64 * 64 * 32 / (hw.sm.tensor_macs_per_cycle * hw.sm.clock_hz)
    base = fused_gemm_timing(hw, small, 1, 8192, 8192).iteration_s
    assert fused_gemm_timing(hw, chained, 1, 8192, 8192).iteration_s == pytest.approx(base + 8 * tensor_s)
    eight = dataclasses.replace(chained, warps=8, registers_per_thread=64)
    base8 = fused_gemm_timing(hw, dataclasses.replace(eight, register_a_mma_instructions=0.0), 1, 8192,
                              8192).iteration_s
    assert fused_gemm_timing(hw, eight, 1, 8192, 8192).iteration_s == pytest.approx(base8 + 8 * 2 * tensor_s)
    # a busy loop does not hide it: the wait comes after the expansion
    busy = dataclasses.replace(chained, loop_instructions_per_thread=2000.0)
    assert fused_gemm_timing(hw, busy, 1, 8192, 8192).iteration_s == pytest.approx(
        fused_gemm_timing(hw, dataclasses.replace(busy, register_a_mma_instructions=0.0), 1, 8192, 8192).iteration_s
        + 8 * tensor_s)
    # the token tile costs the SM's load path nothing (same step time at 16 and 64 tokens without MMAs)
    wide = dataclasses.replace(small, block_t=64, registers_per_thread=64)
    assert fused_gemm_timing(hw, wide, 64, 8192, 8192).iteration_s == pytest.approx(base)


def test_validate_script_takes_bytes_per_weight_from_the_row():
    v = _script("validate_perf_on_gpu")
    cache = {("c0", "v5", "128", "16", "4", "3", "1"): {
        "registers_per_thread": "75", "shared_bytes_per_program": "24576", "loop_instructions_per_thread": "363",
        "fp32_instructions": "99", "int_instructions": "156", "conversion_instructions": "8",
        "waited_mma_instructions": "0", "register_a_mma_instructions": "8", "mma_macs_per_instruction": "32768"}}
    row = {"config": "KernelConfig(block_n=128, block_t=16, split_k=4, num_warps=4, num_stages=3)", "n": "8192",
           "k": "8192", "weight_bytes": str(8192 * 4096 + 8192 * 64 * 5)}
    s = v.fused_structure(row, "v5", cache, "c0")
    assert s.weight_bytes_per_weight == pytest.approx(0.5 + 5 / 128)
    assert (s.register_a_mma_instructions, s.mma_macs_per_instruction) == (8.0, 32768.0)


def test_waves_split_policy_follows_the_kernels_launch_heuristic():
    # the H100 profile describes v6, whose launch heuristic cuts K by the wave rule at M <= 64 and runs v5's prefill
    # tiles above (dpq/kernels/w4a8_triton.py); the model's 'waves' policy must pick the same tile and split for every
    # shape, and follow the card's tuned configurations where it has them
    from dpq.kernels.w4a8_triton import SMLimits, decode_launch_policy, default_config, launch_config_for

    hw = load_profile("h100-triton-w4a8")
    assert hw.fused_kernel.split_policy == "waves" and hw.fused_kernel.kernel_variant == "v6"
    h100 = SMLimits(num_sms=132, registers_per_sm=65536, shared_bytes_per_sm=233472, max_threads_per_sm=2048)
    shapes = [(10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (12288, 4096), (4096, 4096),
              (22016, 4096), (4096, 11008), (6144, 4096), (28672, 4096), (4096, 14336)]
    plain = dataclasses.replace(hw, fused_kernel=dataclasses.replace(hw.fused_kernel, tuned_configs=()))
    for m in (1, 4, 16, 32, 64, 200):
        for n, k in shapes:
            model = default_structure(plain, m, n, k)
            # the heuristic's configuration with the card's decode launch policy (dependent launch, ring depth)
            kernel = decode_launch_policy("NVIDIA H100 80GB HBM3", h100,
                                          default_config(m, n, k, 132, 128, "v6", sm_limits=h100), m, n, k, 128, "v6")
            assert (model.block_n, model.block_t, model.split_k, model.stages, model.warps) == (
                kernel.block_n, kernel.block_t, kernel.split_k, kernel.num_stages, kernel.num_warps), (m, n, k)
            assert model.dependent_launch == kernel.pdl == (m <= 64)
            assert model.launched_warps == (8 if m <= 64 else kernel.num_warps)  # v6's load warp partition
            # with the card's tuned configurations, the model follows what a launch runs
            launch = launch_config_for("NVIDIA H100 80GB HBM3", h100, m, n, k, 128, "v6")
            tuned = default_structure(hw, m, n, k)
            assert (tuned.block_n, tuned.block_t, tuned.split_k, tuned.stages, tuned.split_reduction,
                    tuned.dependent_launch) == (launch.block_n, launch.block_t, launch.split_k, launch.num_stages,
                                                not launch.reduce_in_kernel, launch.pdl), (m, n, k)
    # Llama-2-70B qkv / o / gate_up / down: the splits v6's rule chose in the H100 runs (results/gpu/tuning_h100_s6b.csv)
    assert [default_structure(plain, 1, n, k).split_k for n, k in shapes[:4]] == [3, 4, 4, 4]
    assert [default_structure(plain, 64, n, k).split_k for n, k in shapes[:4]] == [3, 4, 1, 4]


def test_validate_script_parses_kernel_config_reprs():
    from dpq.kernels.w4a8_triton import KernelConfig

    v = _script("validate_perf_on_gpu")
    cfg = KernelConfig(block_n=128, block_t=16, split_k=8, num_warps=4, num_stages=3, pdl=True, l2_prefetch_steps=2,
                       mma_wait_each_step=False)
    assert KernelConfig(**v.parse_kernel_config(repr(cfg))) == cfg
    # a repr as scripts/bench_gpu.py --layer-chain writes it (results/gpu/layer_h100_pdl2.csv), whatever the
    # KernelConfig of this checkout has
    text = ("KernelConfig(block_n=128, block_t=16, split_k=4, num_warps=4, num_stages=3, groups_per_step=1, "
            "reduce_in_kernel=False, maxnreg=None, pdl=True, l2_prefetch_steps=2, pdl_trigger='after_loop')")
    assert v.parse_kernel_config(text) == {
        "block_n": 128, "block_t": 16, "split_k": 4, "num_warps": 4, "num_stages": 3, "groups_per_step": 1,
        "reduce_in_kernel": False, "maxnreg": None, "pdl": True, "l2_prefetch_steps": 2, "pdl_trigger": "after_loop"}
    for bad, what in [("garbage", "expected a 'KernelConfig"), ("KernelConfig(128, block_t=16)", "keyword"),
                      ("KernelConfig(block_n=__import__('os').getcwd(), block_t=16)", "not a literal"),
                      ("KernelConfig(block_n=128, block_t=16, split_k=1, num_warps=4)", "num_stages"),
                      ("KernelConfig(block_n=128, block_t=16, split_k=0, num_warps=4, num_stages=3)", "split_k"),
                      ("KernelConfig(block_n=1), f(block_t=2)", "keyword"), ("KernelConfig(block_n=", "expected a")]:
        with pytest.raises(ValueError, match=what):
            v.parse_kernel_config(bad)


def _cache_v5_decode_structure(v, monkeypatch):
    """The validate script's structure cache holding one kernel: v5 at 128 x 16 tiles, 4 warps, 3 stages (its SASS
    counts at commit "c0"), so the tests compile nothing."""
    structure = {"registers_per_thread": "75", "shared_bytes_per_program": "24576",
                 "loop_instructions_per_thread": "363", "fp32_instructions": "99", "int_instructions": "156",
                 "conversion_instructions": "8", "waited_mma_instructions": "0", "register_a_mma_instructions": "8",
                 "mma_macs_per_instruction": "32768"}
    monkeypatch.setattr(v, "load_structures", lambda: {("c0", "v5", "128", "16", "4", "3", "1"): structure})


def test_validate_script_predicts_a_layer_as_the_sum_of_its_gemms(monkeypatch):
    v = _script("validate_perf_on_gpu")
    _cache_v5_decode_structure(v, monkeypatch)
    shapes = {"tiny": [("qkv_proj", 3072, 1024), ("o_proj", 1024, 1024), ("gate_up_proj", 5632, 1024),
                       ("down_proj", 1024, 2816)]}
    splits = (1, 2, 4, 8)

    def config(split, pdl):
        return (f"KernelConfig(block_n=128, block_t=16, split_k={split}, num_warps=4, num_stages=3, groups_per_step=1, "
                f"reduce_in_kernel=False, maxnreg=None, pdl={pdl}, l2_prefetch_steps={2 if pdl else 0})")

    weights = sum(n * k for _, n, k in shapes["tiny"])
    layer = {"card": "NVIDIA H100 80GB HBM3", "model": "tiny", "m": "4", "scheme": "default", "variant": "v5",
             "latency_s": "2e-5", "layer_weight_bytes": str(weights // 2 + weights // 128 * 5),
             "bit_equal_outputs": "4/4", "configs": " | ".join(config(s, False) for s in splits)}
    pdl = dict(layer, scheme="pdl_pf2", configs=" | ".join(config(s, True) for s in splits))
    fp8 = dict(layer, scheme="fp8", variant="", configs="", layer_weight_bytes=str(weights))
    got = v.predict_layer_rows([layer, pdl, fp8], shapes, "h100", {}, kernel_commit="c0")

    gemms = [{"model": "tiny", "layer": name, "scheme": "w4a8_fused_v5", "variant": "v5", "m": "4", "n": n, "k": k,
              "latency_s": "1e-5", "config": config(s, False), "weight_bytes": str(n * k // 2 + n * k // 128 * 5)}
             for (name, n, k), s in zip(shapes["tiny"], splits)]
    per_gemm = v.predict_rows(gemms, "h100", {}, kernel_commit="c0")
    cublas = v.predict_rows([dict(g, scheme="fp8", variant="", config="") for g in gemms], "h100", {},
                            kernel_commit="c0")
    assert len({p["predicted_s"] for p in per_gemm}) == 4  # four different GEMMs, not one repeated
    assert got[0]["predicted_s"] == pytest.approx(sum(p["predicted_s"] for p in per_gemm), rel=1e-12)
    assert got[0]["gemm_predicted_s"] == pytest.approx([p["predicted_s"] for p in per_gemm], rel=1e-12)
    assert got[0]["error"] == pytest.approx(got[0]["predicted_s"] / 2e-5 - 1) and got[0]["note"] == ""
    # pdl: predicted as the same configuration without it, and said so
    assert got[1]["predicted_s"] == got[0]["predicted_s"] and got[1]["note"].startswith(v.PDL_NOTE)
    assert got[2]["predicted_s"] == pytest.approx(sum(p["predicted_s"] for p in cublas), rel=1e-12)
    with pytest.raises(ValueError, match="3 KernelConfig reprs"):
        v.predict_layer_rows([dict(layer, configs=" | ".join(config(s, False) for s in splits[:3]))], shapes,
                             "h100", {}, kernel_commit="c0")


@pytest.mark.parametrize("tiles,k_steps,max_split,want", [
    (64, 224, 4, 4), (128, 224, 4, 2), (80, 64, 4, 3), (448, 64, 4, 1), (32, 32, 4, 4), (32, 32, 1, 1),
    (32, 8, 4, 2), (265, 64, 4, 1)])
def test_prefill_split_fills_the_sms_without_short_parts(tiles, k_steps, max_split, want):
    from sim.perf.fused_kernel import prefill_split

    assert prefill_split(tiles, k_steps, 132, 2, max_split) == want


@pytest.mark.parametrize("m,n,k", [(128, 8192, 28672), (256, 10240, 8192), (512, 4096, 4096), (100, 57344, 8192)])
def test_prefill_split_of_the_model_is_the_kernels(hw, m, n, k):
    from dpq.kernels.w4a8_triton import default_config

    for profile, variant in ((hw, "v4"), (load_profile("h100-triton-w4a8"), "v5")):
        assert default_structure(profile, m, n, k).split_k == default_config(m, n, k, 132, 128, variant).split_k


def test_validate_script_predicts_the_prefill_path_as_expansion_plus_cublas():
    from sim.perf.gemm import gemm_timing, streaming_kernels_time
    from sim.profiles import load_profile as load

    v = _script("validate_perf_on_gpu")
    n, k, m = 8192, 8192, 1024
    row = {"model": "x", "layer": "o_proj", "scheme": "w4a8_expand", "variant": "v4", "m": str(m), "n": n, "k": k,
           "latency_s": "1e-3"}
    got = v.predict_rows([row], "h100", {})[0]["predicted_s"]
    h100 = load("h100")
    (_, expand_s), = streaming_kernels_time(h100, [("e", 0.625 * n * k, float(n) * k)])
    assert got == pytest.approx(gemm_timing(h100, m, n, k, "fp8").time_s + expand_s, rel=1e-12)
    # the same path in sim.perf on the fused profile from its expand_from_tokens on: expansion pass + FP8 GEMM
    fused = load("h100-triton-w4a8")
    t = gemm_timing(fused, fused.fused_kernel.expand_from_tokens, n, k, "w4a8")
    assert t.kernels == ("gemm.dequant", "gemm") and t.info["dequant_pass_s"] > 0
    assert gemm_timing(fused, fused.fused_kernel.expand_from_tokens - 1, n, k, "w4a8").kernels == ("gemm",)
    # a layer-chain row of bench_gpu's "auto" scheme on the prefill path: four w4a8_expand GEMMs
    shapes = {"tiny": [("qkv_proj", 3072, 1024), ("o_proj", 1024, 1024), ("gate_up_proj", 5632, 1024),
                       ("down_proj", 1024, 2816)]}
    layer = {"model": "tiny", "m": "1024", "scheme": "auto", "variant": "v5+expand", "latency_s": "1e-4",
             "configs": "KernelConfig(block_n=128, block_t=128, split_k=1, num_warps=8, num_stages=3)"}
    gemms, notes = v.layer_gemm_rows(layer, shapes)
    assert [g["scheme"] for g in gemms] == ["w4a8_expand"] * 4 and {g["variant"] for g in gemms} == {"v5"}
    assert notes == []
    with pytest.raises(ValueError, match=r"variant 'v9'\+expand"):
        v.layer_gemm_rows(dict(layer, variant="v9+expand"), shapes)


def test_validate_script_ranks_a_sweeps_configurations(monkeypatch, tmp_path):
    """--tuning-csv: every configuration of a sweep predicted; per case the heuristic (first row), the fastest
    measured, and the measured time of the configuration the model ranks fastest."""
    v = _script("validate_perf_on_gpu")
    _cache_v5_decode_structure(v, monkeypatch)
    fields = ["card", "scheme", "model", "layer", "m", "n", "k", "config", "latency_s", "rel_error_vs_f64",
              "registers", "shared_bytes", "spills"]
    measured = {1: 30e-6, 2: 20e-6, 4: 25e-6}  # the heuristic (1 part) first; 2 parts measured fastest
    path = tmp_path / "tuning_h100_x.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for split, t in measured.items():
            w.writerow({"card": "NVIDIA H100 80GB HBM3", "scheme": "w4a8_fused", "model": "llama-2-7b",
                        "layer": "o_proj", "m": "1", "n": "4096", "k": "4096", "latency_s": repr(t),
                        "config": f"KernelConfig(block_n=128, block_t=16, split_k={split}, num_warps=4, "
                                  f"num_stages=3, groups_per_step=1, reduce_in_kernel=False, maxnreg=None)",
                        "registers": "75", "shared_bytes": "24576", "rel_error_vs_f64": "", "spills": "0"})
    args = v.argparse.Namespace(profile=None, kernel_commit="c0", tuning_variant="v5", fused_profile=None,
                                out=tmp_path, set=[])
    assert v.validate_tuning(path, args, {}) == 0
    text = (tmp_path / "validation_tuning_h100_x.md").read_text()
    pred = {int(r["config"].split("split_k=")[1].split(",")[0]): float(p["predicted_s"]) for r, p in zip(
        csv.DictReader(open(path)), csv.DictReader(open(tmp_path / "validation_tuning_h100_x.csv")))}
    pick = min(pred, key=pred.get)
    row = next(line for line in text.splitlines() if line.startswith("| llama-2-7b | o_proj | 1 | v5 | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:8] == ["30.00", "20.00", "128x16 s2 st3"]
    assert cells[8] == f"{measured[pick] * 1e6:.2f}" and cells[9] == f"128x16 s{pick} st3"
    assert cells[10] == f"{measured[pick] / 20e-6 - 1:+.1%}"


def test_tune_table_keeps_the_fastest_where_it_beats_the_heuristic(tmp_path):
    """scripts/tune_table.py: the fastest configuration per (n, k, M) if it beat the heuristic's ("rule" row, or the
    first row of a sweep without the role column) by --min-gain; register-capped ones are not taken; M ranges by
    token tile."""
    t = _script("tune_table")
    fields = ["card", "scheme", "model", "layer", "m", "n", "k", "config", "latency_s", "role"]

    def cfg(block_n, block_t, split, maxnreg=None):
        return (f"KernelConfig(block_n={block_n}, block_t={block_t}, split_k={split}, num_warps=4, num_stages=3, "
                f"groups_per_step=1, reduce_in_kernel=False, maxnreg={maxnreg})")
    rows = [(1, cfg(128, 16, 8), 10e-6, "launch+rule"), (1, cfg(64, 16, 4), 9e-6, ""),
            (1, cfg(128, 16, 8, 56), 5e-6, ""),                       # faster, but register-capped: not taken
            (16, cfg(128, 16, 8), 10e-6, "launch+rule"), (16, cfg(64, 16, 4), 9.9e-6, ""),   # 1% gain: not kept
            (64, cfg(64, 64, 2), 11e-6, "launch"), (64, cfg(128, 64, 8), 13e-6, "rule"),
            (64, cfg(128, 64, 4), 12e-6, "")]
    path = tmp_path / "tuning.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for m, c, sec, role in rows:
            w.writerow({"card": "c", "scheme": "w4a8_fused", "model": "x", "layer": "o_proj", "m": m, "n": 4096,
                        "k": 4096, "config": c, "latency_s": repr(sec), "role": role})
    got = t.tuned_rows([path], 0.03)
    assert [(r["m"], r["min_m"], r["max_m"], r["config"]["block_n"], r["config"]["split_k"]) for r in got] == \
        [(1, 1, 1, 64, 4), (64, 33, 64, 64, 2)]
    assert got[1]["heuristic_s"] == 13e-6  # the "rule" row, not the first (a tuned launch configuration)
    legacy = tmp_path / "legacy.csv"  # no role column: the first row of a case is the heuristic's
    with open(legacy, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields[:-1])
        w.writeheader()
        for m, c, sec, _ in rows[:5]:
            w.writerow({"card": "c", "scheme": "w4a8_fused", "model": "x", "layer": "o_proj", "m": m, "n": 4096,
                        "k": 4096, "config": c, "latency_s": repr(sec)})
    assert [(r["m"], r["min_m"], r["max_m"]) for r in t.tuned_rows([legacy], 0.03)] == [(1, 1, 1)]


def test_tuned_configs_of_the_card_and_what_a_launch_looks_up():
    """The H100's tuned configurations come back for its kernel variant and group size only; other cards none."""
    from dpq.kernels.w4a8_triton import KernelConfig, tuned_config_for

    hw = load_profile("h100-triton-w4a8")
    name = "NVIDIA H100 80GB HBM3"
    assert hw.fused_kernel.tuned_configs, "the H100 profile ships measured configurations"
    for n, k, lo_m, hi_m, block_n, block_t, split, warps, stages, reduce in hw.fused_kernel.tuned_configs:
        want = KernelConfig(block_n=block_n, block_t=block_t, split_k=split, num_warps=warps, num_stages=stages,
                            reduce_in_kernel=bool(reduce))
        for m in {lo_m, hi_m}:
            assert tuned_config_for(name, "v6", m, n, k, 128) == want
        assert tuned_config_for(name, "v5", hi_m, n, k, 128) is None  # another variant: the heuristic
        assert tuned_config_for(name, "v6", hi_m, n, k, 64) is None   # another group size
        assert tuned_config_for(name, "v6", hi_m, n + 128, k, 128) is None
    assert tuned_config_for(name, "v6", 20, 57344, 8192, 128) is None  # M 17-32: not measured
    assert tuned_config_for("NVIDIA H200", "v4", 1, 4096, 4096, 128) is None  # its table is v6's
    assert tuned_config_for("NVIDIA A100-SXM4-80GB", "v6", 1, 4096, 4096, 128) is None


def test_fit_takes_only_the_sweep_configurations_the_model_has_terms_for(monkeypatch, tmp_path):
    """probe_triton_loop.py --fit-tuning: the v5 sweep rows join the calibration except in-kernel reductions,
    register caps and 2-stage pipelines (no term in the model), each with the structure of what it ran."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    ptl = _script("probe_triton_loop")
    import scripts.validate_perf_on_gpu as v

    _cache_v5_decode_structure(v, monkeypatch)
    monkeypatch.setattr(v, "kernel_commit_of", lambda path: "c0")

    def cfg(**kw):
        c = dict(block_n=128, block_t=16, split_k=4, num_warps=4, num_stages=3, groups_per_step=1,
                 reduce_in_kernel=False, maxnreg=None) | kw
        return "KernelConfig(" + ", ".join(f"{k}={val}" for k, val in c.items()) + ")"
    rows = [("w4a8_fused", cfg()), ("w4a8_fused", cfg(split_k=2)), ("w4a8_fused", cfg(reduce_in_kernel=True)),
            ("w4a8_fused", cfg(maxnreg=64)), ("w4a8_fused", cfg(num_stages=2)), ("fp8", "")]
    path = tmp_path / "tuning.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["card", "scheme", "model", "layer", "m", "n", "k", "config", "latency_s",
                                          "registers", "shared_bytes"])
        w.writeheader()
        for scheme, c in rows:
            w.writerow({"card": "NVIDIA H100 80GB HBM3", "scheme": scheme, "model": "x", "layer": "o_proj", "m": 1,
                        "n": 4096, "k": 4096, "config": c, "latency_s": "1e-5", "registers": "75",
                        "shared_bytes": "24576"})
    got = ptl.v5_tuning_rows([path])
    assert [s.split_k for _, s in got] == [4, 2]
    assert all(s.loop_instructions_per_thread == 363 and s.register_a_mma_instructions == 8 for _, s in got)


def test_launched_warps_hold_registers_and_warp_slots():
    """v6's tile: 4 MMA warps run the loop, 8 warps are launched (the load warp's partition padded to a warpgroup),
    64 registers each: 4 programs per SM by registers, 3 by its 60 KB of shared memory at 4 stages."""
    hw = load_profile("h100-triton-w4a8")
    import dataclasses
    hw = dataclasses.replace(hw, fused_kernel=dataclasses.replace(hw.fused_kernel, ring_depth="tile"))
    s = default_structure(hw, 1, 8192, 8192)
    assert (s.warps, s.launched_warps, s.registers_per_thread, s.stages) == (4, 8, 64, 4)
    assert resident_programs(hw, s) == 3
    import dataclasses
    small = dataclasses.replace(s, shared_bytes_per_program=40000)
    assert resident_programs(hw, small) == 4  # registers: 65536 / (64 x 32 x 8)
    assert resident_programs(hw, dataclasses.replace(small, launched_warps=None)) == 5  # smem: 233472 / 41024
    with pytest.raises(ValueError, match="launched_warps"):
        dataclasses.replace(s, launched_warps=2)


def test_gluon_kernel_takes_the_profiles_gluon_loop_costs():
    """A structure with launched warps (the Gluon kernel) is timed with the profile's gluon_loop section where it has
    one, the Triton kernels with triton_loop; a profile without gluon_loop times both with triton_loop."""
    import dataclasses

    from sim.perf.fused_kernel import loop_costs

    hw = load_profile("h100-triton-w4a8")
    assert hw.gluon_loop is not None and hw.gluon_loop != hw.triton_loop
    v6 = default_structure(hw, 1, 8192, 8192)
    v5_tile = default_structure(hw, 512, 8192, 8192)  # v5's prefill tile on the same layout
    assert loop_costs(hw, v6) is hw.gluon_loop and loop_costs(hw, v5_tile) is hw.triton_loop
    plain = dataclasses.replace(hw, gluon_loop=None)
    assert loop_costs(plain, v6) is hw.triton_loop
    assert fused_gemm_timing(plain, v6, 1, 8192, 8192).time_s != fused_gemm_timing(hw, v6, 1, 8192, 8192).time_s


def test_gluon_kernel_streams_its_token_tile_through_the_sm():
    """The Gluon kernel's load warp brings the token tile into the same shared-memory ring as the weight tile: a
    wider token tile costs its bytes at the SM load rate; the Triton kernels read it from L2 (no SM cost)."""
    from sim.perf.fused_kernel import iteration_time_s

    hw = load_profile("h100-triton-w4a8")
    v6 = default_structure(hw, 1, 8192, 8192)
    wide = dataclasses.replace(v6, block_t=64)
    extra_bytes = (64 - v6.block_t) * v6.block_k * v6.activation_bytes
    assert iteration_time_s(hw, wide) - iteration_time_s(hw, v6) == pytest.approx(
        extra_bytes / hw.gluon_loop.sm_load_bandwidth_bytes_per_s)
    v5 = dataclasses.replace(v6, launched_warps=None)
    assert iteration_time_s(hw, dataclasses.replace(v5, block_t=64)) == pytest.approx(iteration_time_s(hw, v5))


def test_uneven_split_parts_cost_their_mean_length():
    """32 K steps in 6 parts (6+6+6+6+6+2) and 36 in 6 (6 each) launch the same programs of at most 6 steps, but the
    first does less work: the SM time follows the parts' mean length, not the longest part's."""
    hw = load_profile("h100-triton-w4a8")
    s = dataclasses.replace(default_structure(hw, 1, 6144, 4096), split_k=6)
    short = fused_gemm_timing(hw, s, 1, 6144, 32 * 128)
    full = fused_gemm_timing(hw, s, 1, 6144, 36 * 128)
    assert short.programs == full.programs and short.iterations_per_program == full.iterations_per_program == 6
    assert short.sm_s < full.sm_s


def test_share_ring_depth_caps_the_programs_an_sm_can_take():
    """'share' ring depth: where the tile's depth lets an SM hold more programs than its share of the launch, the
    shallowest ring that holds no more (deepest=True: the deepest that still holds the share); grids that fill
    their SMs keep their depth."""
    from sim.perf.fused_kernel import ring_stages_for_share

    def resident(stages):  # 228 KB over programs of 17 KB + 11 KB per stage
        return 233472 // (17000 + 11000 * stages)

    assert [resident(st) for st in range(3, 13)] == [4, 3, 3, 2, 2, 2, 2, 1, 1, 1]
    assert ring_stages_for_share(256, 132, 4, 12, resident) == 6  # share 2: the shallowest ring holding 2
    assert ring_stages_for_share(256, 132, 4, 12, resident, deepest=True) == 9
    assert ring_stages_for_share(256, 132, 4, 5, resident) == 5  # no ring up to max_stages holds 2: the deepest
    assert ring_stages_for_share(400, 132, 4, 12, resident) == 4  # share 4 >= 3 resident: unchanged
    assert ring_stages_for_share(100, 132, 4, 12, resident) == 10  # share 1
    assert ring_stages_for_share(100, 132, 4, 12, resident, deepest=True) == 12


def test_decode_launch_policy_of_the_profile_reaches_model_and_launch():
    """The H100 profile launches v6 at decode with dependent launch and the 'share' ring depth: the model's
    structure and dpq's launch agree on it for every Llama GEMM, the ring holds no more than the share, its
    shared memory grows by the ring slot's bytes per stage, and the dependent launch's fixed cost replaces the
    kernel's and the reduction kernel's launch costs; prefill tiles are left as they were."""
    import math

    from dpq.kernels.w4a8_triton import SMLimits, launch_config_for, v6_shared_bytes

    hw = load_profile("h100-triton-w4a8")
    fk = hw.fused_kernel
    assert fk.dependent_launch and fk.ring_depth == "share"
    limits = SMLimits.of_profile(hw)
    tile = dataclasses.replace(hw, fused_kernel=dataclasses.replace(fk, ring_depth="tile", dependent_launch=False))
    for m in (1, 16, 64):
        for n, k in [(10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (4096, 4096), (4096, 14336)]:
            s = default_structure(hw, m, n, k)
            base = default_structure(tile, m, n, k)
            launch = launch_config_for("NVIDIA H100 80GB HBM3", limits, m, n, k, 128, "v6")
            assert (s.stages, s.dependent_launch) == (launch.num_stages, launch.pdl) == (s.stages, True)
            assert s.shared_bytes_per_program - base.shared_bytes_per_program == \
                (s.stages - base.stages) * s.ring_slot_bytes
            assert s.ring_slot_bytes == v6_shared_bytes(128, s.block_t, 2, 1) - v6_shared_bytes(128, s.block_t, 1, 1)
            programs = math.ceil(n / 128) * math.ceil(m / s.block_t) * s.split_k
            share = math.ceil(programs / hw.sm.count)
            if s.stages > base.stages:  # the share, or the deepest ring a program's K steps allow
                assert share < resident_programs(hw, base)
                assert resident_programs(hw, s) == share or s.stages == min(fk.max_ring_stages,
                                                                           math.ceil(k / 128 / s.split_k))
            t, t0 = fused_gemm_timing(hw, s, m, n, k), fused_gemm_timing(tile, s.__class__(
                **{**s.__dict__, "dependent_launch": False}), m, n, k)
            assert t.fixed_s == hw.gluon_loop.dependent_kernel_fixed_s and t0.fixed_s == hw.gluon_loop.kernel_fixed_s
            # its first stages' weights are asked for while the kernel before runs: no fill
            assert t0.sm_s - t.sm_s == pytest.approx(hw.gluon_loop.loaded_hbm_latency_s)
            if s.split_k > 1 and s.split_reduction:
                assert t0.reduction_s - t.reduction_s == pytest.approx(
                    hw.kernel.launch_overhead_s - hw.gluon_loop.dependent_kernel_fixed_s)
    prefill = default_structure(hw, 256, 8192, 8192)
    assert not prefill.dependent_launch and prefill == default_structure(tile, 256, 8192, 8192)


def test_decode_launch_policy_leaves_other_launches_alone():
    """The policy applies to the card's own variant where its Gluon kernel runs (M <= 64, N a multiple of 4), on a
    card whose profile asks for it; everything else keeps its configuration (and so never launches dependently)."""
    from dpq.kernels.w4a8_triton import SMLimits, decode_launch_policy, default_config

    limits = SMLimits(num_sms=132, registers_per_sm=65536, shared_bytes_per_sm=233472, max_threads_per_sm=2048)
    h100 = "NVIDIA H100 80GB HBM3"
    cfg = default_config(1, 8192, 8192, 132, 128, "v6", sm_limits=limits)
    got = decode_launch_policy(h100, limits, cfg, 1, 8192, 8192, 128, "v6")
    assert got.pdl and got.num_stages > cfg.num_stages and got.split_k == cfg.split_k
    for card, m, n, variant in (("NVIDIA A100-SXM4-80GB", 1, 8192, "v6"), (h100, 1, 8192, "v5"),
                                (h100, 256, 8192, "v6"), (h100, 1, 8190, "v6")):
        c = default_config(m, n, 8192, 132, 128, variant, sm_limits=limits)
        assert decode_launch_policy(card, limits, c, m, n, 8192, 128, variant) == c, (card, m, n, variant)
