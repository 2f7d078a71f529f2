"""Host-side helpers of the fused Triton W4A8 kernel and the torch backend's missing-torch error (no torch needed)."""

from __future__ import annotations

import importlib
import math

import numpy as np

import pytest

from dpq.kernels.w4a8_triton import (
    GROUP_SIZES,
    V5_KERNEL_RESOURCES,
    KernelConfig,
    SMLimits,
    default_config,
    output_scale,
    resident_programs,
    split_k_parts,
    wave_split_cost,
)

# What torch reports for an H100 SXM (get_device_properties): a card table passed in, as w4a8_matmul does.
H100_LIMITS = SMLimits(num_sms=132, registers_per_sm=65536, shared_bytes_per_sm=233472, max_threads_per_sm=2048)


def test_split_k_parts_cover_k_in_whole_groups():
    for k, gs in ((576, 64), (11008, 128), (28672, 128), (1536, 32)):
        for split in (1, 2, 3, 7, 16, 1000):
            parts = split_k_parts(k, KernelConfig(split_k=split), gs)
            assert sum(parts) == k
            assert all(p % gs == 0 and p > 0 for p in parts)
            assert len(parts) <= split
            assert len(set(parts[:-1])) <= 1 and parts[-1] <= parts[0]


def test_default_config_decode_and_prefill():
    c = default_config(1, 8192, 8192, 132)
    assert c.block_t == 16 and c.split_k > 1
    c = default_config(4096, 8192, 8192, 132)
    assert c.block_t == 128 and c.split_k == 1


@pytest.mark.parametrize("bad", [{"block_n": 32}, {"block_t": 8}, {"split_k": 0},
                                 {"num_warps": True}, {"reduce_in_kernel": 1}, {"groups_per_step": 0}])
def test_kernel_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        KernelConfig(**bad)


def test_output_scale_is_one_float32_product():
    a, b = 0.037, 0.125
    assert output_scale(a, b) == float(np.float32(np.float32(a) * np.float32(b)))
    assert 128 in GROUP_SIZES


def test_missing_torch_message_names_the_extra(monkeypatch):
    from dpq import torch_backend

    real = importlib.import_module

    def fake(name, *args):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real(name, *args)
    monkeypatch.setattr(torch_backend.importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
        torch_backend.import_torch()


def test_v4_split_heuristic_balances_the_sms():
    """v4/fp8 decode: the split minimises (steps + fixed cost per program) / SMs + one program's steps."""
    for n, k in ((10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (4096, 4096)):
        c = default_config(1, n, k, 132, 128, "v4")
        assert c.block_n == 128 and c.block_t == 16 and c.groups_per_step == 1
        parts = split_k_parts(k, c, 128)
        assert sum(parts) == k and len(parts) == c.split_k
        tiles = -(-n // 128)
        # tiles that leave most SMs idle get split; at most ~3 waves of programs (6 per SM fit)
        assert len(parts) > 1 or tiles >= 2 * 132
        assert tiles * len(parts) <= 18 * 132
    # the Llama-2-70B sweeps on an H200 (tuning_h200_v4*sweep.csv): within 5% of the fastest split tried
    assert [default_config(1, n, k, 132, 128, "v4").split_k for n, k in
            ((10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672))] == [8, 8, 3, 16]
    assert default_config(4096, 8192, 8192, 132, 128, "fp8").split_k == 1
    # v5 without the card's SM limits (the rule before the wave rule) takes v4's tiles and splits
    for n, k in ((10240, 8192), (57344, 8192), (8192, 28672)):
        for m in (1, 16, 64, 512):
            assert default_config(m, n, k, 132, 128, "v5") == default_config(m, n, k, 132, 128, "v4")


def test_groups_per_step_sets_the_k_step():
    parts = split_k_parts(8192, KernelConfig(split_k=3, groups_per_step=2), 128)
    assert sum(parts) == 8192 and all(p % 256 == 0 for p in parts)
    with pytest.raises(ValueError, match="groups_per_step"):
        KernelConfig(groups_per_step=3)


def test_resident_programs_from_registers_and_shared_memory():
    regs, smem = V5_KERNEL_RESOURCES[(128, 16, 3)]
    assert resident_programs(regs, smem, 4, H100_LIMITS) == 6  # 75 registers: the register file limits
    assert resident_programs(64, smem, 4, H100_LIMITS) == 8  # maxnreg 64
    assert resident_programs(64, V5_KERNEL_RESOURCES[(128, 16, 4)][1], 4, H100_LIMITS) == 6  # shared memory limits
    assert resident_programs(32, 1024, 4, H100_LIMITS) == 16  # thread slots limit
    assert resident_programs(*V5_KERNEL_RESOURCES[(128, 64, 3)], 4, H100_LIMITS) == 3


def test_v5_wave_split_rule():
    """v5 at decode with the card's limits: whole waves of resident programs, no short tail, few programs."""
    picks = [default_config(1, n, k, 132, 128, "v5", sm_limits=H100_LIMITS).split_k
             for n, k in ((10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672))]
    assert picks == [8, 4, 4, 4]
    # K = 4096 over few output tiles (Llama-2-7B / Llama-3-8B o_proj): 4 parts of 8 K steps, not 8 of 4
    assert default_config(1, 4096, 4096, 132, 128, "v5", sm_limits=H100_LIMITS).split_k == 4
    for m in (1, 4, 16, 32, 64):
        for n, k in ((10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (576, 1536), (192, 1536)):
            c = default_config(m, n, k, 132, 128, "v5", sm_limits=H100_LIMITS)
            tiles = -(-n // c.block_n) * -(-m // c.block_t)
            steps = k // 128
            resident = resident_programs(*V5_KERNEL_RESOURCES[(128, c.block_t, 3)], 4, H100_LIMITS)
            assert resident == {16: 6, 32: 5, 64: 3}[c.block_t]
            best = min(wave_split_cost(tiles, steps, s, resident, 132)[0] for s in range(1, max(1, steps // 8) + 1))
            assert wave_split_cost(tiles, steps, c.split_k, resident, 132)[0] == best
            assert c.split_k == 1 or math.ceil(steps / c.split_k) >= 8  # parts of at least 8 K steps
            assert (c.block_n, c.num_warps, c.num_stages, c.maxnreg) == (128, 4, 3, None)
    # a program per SM alone pays for too few loads in flight; a tail of one program per SM is avoided
    cost_one, _ = wave_split_cost(64, 64, 2, 6, 132)  # 128 programs: 1 per SM
    cost_two, _ = wave_split_cost(64, 64, 4, 6, 132)  # 256 programs: 2 per SM, same steps on the busiest SM
    assert cost_one > cost_two
    # prefill and the other variants ignore the limits
    assert default_config(4096, 8192, 8192, 132, 128, "v5", sm_limits=H100_LIMITS) == \
        default_config(4096, 8192, 8192, 132, 128, "v5")
    assert default_config(1, 8192, 8192, 132, 128, "v4", sm_limits=H100_LIMITS) == \
        default_config(1, 8192, 8192, 132, 128, "v4")


@pytest.mark.parametrize("bad", [{"num_sms": 0}, {"registers_per_sm": -1}, {"shared_bytes_per_sm": 1.5},
                                 {"max_threads_per_sm": True}])
def test_sm_limits_reject_bad_values(bad):
    args = {"num_sms": 132, "registers_per_sm": 65536, "shared_bytes_per_sm": 233472, "max_threads_per_sm": 2048} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        SMLimits(**args)


@pytest.mark.parametrize("bad", [16, 300, 64.0, True])
def test_kernel_config_rejects_a_bad_register_cap(bad):
    with pytest.raises(ValueError, match="maxnreg"):
        KernelConfig(maxnreg=bad)
    assert KernelConfig(maxnreg=64).maxnreg == 64


@pytest.mark.parametrize("bad,match", [({"pdl": 1}, "pdl"), ({"pdl": True, "l2_prefetch_steps": 9}, "l2_prefetch"),
                                       ({"pdl": True, "l2_prefetch_steps": -1}, "l2_prefetch"),
                                       ({"l2_prefetch_steps": 2}, "needs pdl"),
                                       ({"pdl": True, "pdl_trigger": "end"}, "pdl_trigger")])
def test_kernel_config_rejects_bad_dependent_launch_options(bad, match):
    with pytest.raises(ValueError, match=match):
        KernelConfig(**bad)
    c = KernelConfig(pdl=True, l2_prefetch_steps=2, pdl_trigger="after_loop")
    assert (c.pdl, c.l2_prefetch_steps, c.pdl_trigger) == (True, 2, "after_loop")


def test_default_variant_follows_the_cards_profile():
    from dpq.kernels import w4a8_triton as W
    from sim.profiles import load_profile

    # the measured best per card lives in hw_profiles/*-triton-w4a8.yaml (fused_kernel.kernel_variant)
    assert W.default_variant_for("NVIDIA H100 80GB HBM3") == load_profile("h100-triton-w4a8").fused_kernel.kernel_variant
    assert W.default_variant_for("NVIDIA H200") == load_profile("h200-triton-w4a8").fused_kernel.kernel_variant
    assert W.default_variant_for("NVIDIA A100-SXM4-80GB") == W.DEFAULT_VARIANT  # no profile for it
    with pytest.raises(TypeError, match="device_name"):
        W.default_variant_for(None)


def test_default_variant_rejects_an_unknown_variant_naming_the_profile(monkeypatch):
    from dpq.kernels import w4a8_triton as W

    from dataclasses import replace

    from sim.profiles import load_profile

    spec = replace(load_profile("h100-triton-w4a8").fused_kernel, device_name_contains="X100", kernel_variant="v9")
    monkeypatch.setattr(W, "_specs_by_card", lambda: (("x100-triton-w4a8", spec),))
    with pytest.raises(ValueError, match=r"x100-triton-w4a8\.yaml.*kernel_variant 'v9'"):
        W.default_variant_for("NVIDIA X100")


def test_prefill_threshold_follows_the_cards_profile():
    from dpq.kernels import w4a8_triton as W
    from sim.profiles import load_profile

    h100 = load_profile("h100-triton-w4a8").fused_kernel.expand_from_tokens
    assert W.expand_from_tokens_for("NVIDIA H100 80GB HBM3") == h100
    assert W.expand_from_tokens_for("NVIDIA H200") == load_profile("h200-triton-w4a8").fused_kernel.expand_from_tokens
    assert W.expand_from_tokens_for("NVIDIA A100-SXM4-80GB") is None  # no profile: always the fused kernel
    with pytest.raises(TypeError, match="device_name"):
        W.expand_from_tokens_for(3)


@pytest.mark.parametrize("variant,m,threshold,want", [
    ("v5", 511, 512, False), ("v5", 512, 512, True), ("v4", 4096, 512, True), ("v5", 4096, None, False),
    ("lut", 4096, 1, False), ("fp8", 4096, 1, False), ("v2", 4096, 1, False)])
def test_prefill_path_is_chosen_by_token_count_and_variant(variant, m, threshold, want):
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, uses_prefill_path

    w = PackedW4A8Weight(codes=None, group_scales=None, zeros=None, group_size=128, tensor_scale=1.0, fp8_max=448.0,
                         variant=variant, n=256, k=1024)
    assert uses_prefill_path(m, w, threshold) is want


@pytest.mark.parametrize("m,threshold,match", [(0, 512, "m=0"), (True, 512, "m=True"), (8, 0, "expand_from_tokens=0"),
                                               (8, "auto", "expand_from_tokens='auto'"),
                                               (8, 2.5, "expand_from_tokens=2.5")])
def test_prefill_path_rejects_bad_arguments(m, threshold, match):
    from dpq.kernels.w4a8_triton import PackedW4A8Weight, uses_prefill_path

    w = PackedW4A8Weight(codes=None, group_scales=None, zeros=None, group_size=128, tensor_scale=1.0, fp8_max=448.0,
                         variant="v5", n=256, k=1024)
    with pytest.raises(ValueError, match=match):
        uses_prefill_path(m, w, threshold)


def test_default_config_needs_the_cards_sm_count():
    with pytest.raises(TypeError):
        default_config(1, 8192, 8192)  # no built-in SM count: the card's comes from torch
    with pytest.raises(ValueError, match="num_sms=0"):
        default_config(1, 8192, 8192, 0)


def _kernel_sass_module(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "scripts"))
    import kernel_sass

    return kernel_sass


def _sass(lines):
    """Synthetic cuobjdump lines: (address, instruction text)."""
    return "\n".join(f"        /*{a:04x}*/                   {text} ;" for a, text in lines)


@pytest.mark.parametrize("template,width", [
    ("MOV R{r}, R2", 1), ("SHFL.IDX PT, R{r}, R3, 0x1, 0x1f", 1),   # destination after a predicate
    ("LDS.128 R{r}, [R9]", 4), ("IMAD.WIDE R{r}, R2, 0x4, R6", 2), ("CS2R R{r}, SRZ", 2),
    ("ATOMG.E.ADD.STRONG.GPU PT, R{r}, [R4], R5", 1), ("STS [R{r}], R1", 0)])  # a store writes no register
@pytest.mark.parametrize("r", [57, 59, 61, 63, 64, 66])
def test_wgmma_register_hazard_finder(template, width, r):
    """The SASS check of the register-A wgmma hazard: a write to an A register (4 per MMA) while its group is in
    flight counts, whatever the instruction's form and width; a write to the A registers of a group a wait has
    retired does not."""
    from dpq.kernels import sass as ks

    written = template.format(r=r)
    touched = set(range(r, r + width))
    # an open group: the write comes after its first MMA (A = R60..R63) and before the MMA that closes it
    open_group = [(0x100, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R60, gdesc[UR4], R24"), (0x108, written),
                  (0x110, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R68, gdesc[UR4], R24, gsb0"),
                  (0x120, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), (0x130, "BRA 0x100")]
    assert bool(ks.wgmma_register_hazards(_sass(open_group))) == bool(touched & set(range(60, 64)))
    # two groups; the wait for <= 1 retires the first (R60..R63), the second (R64..R67) is in flight at the write
    # and stays in flight around the back edge
    retired = [(0x100, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R60, gdesc[UR4], R24, gsb0"),
               (0x110, "WARPGROUP.DEPBAR.LE gsb0, 0x3"),   # fewer groups than 3 in flight: none retires
               (0x120, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R64, gdesc[UR4], R24, gsb0"),
               (0x130, "WARPGROUP.DEPBAR.LE gsb0, 0x1"), (0x140, written), (0x150, "BRA 0x100")]
    assert bool(ks.wgmma_register_hazards(_sass(retired))) == bool(touched & set(range(64, 68)))
    # a wait for <= 3 with only 2 groups in flight retires neither
    both = [(0x100, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R60, gdesc[UR4], R24, gsb0"),
            (0x110, "QGMMA.64x16x32.F32.E4M3.E4M3 R24, R64, gdesc[UR4], R24, gsb0"),
            (0x120, "WARPGROUP.DEPBAR.LE gsb0, 0x3"), (0x130, written),
            (0x140, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), (0x150, "BRA 0x100")]
    assert bool(ks.wgmma_register_hazards(_sass(both))) == bool(touched & set(range(60, 68)))


@pytest.mark.parametrize("variant", ["v5", "v4", "fp8", "lut"])
@pytest.mark.parametrize("tile", [(128, 16, 4, 4, 3), (128, 64, 8, 4, 3), (128, 128, 1, 8, 3)])
def test_compiled_loops_never_overwrite_operands_of_mmas_in_flight(variant, tile, monkeypatch):
    """The SASS of every variant's main loop (Triton 3.6's ptxas, sm_90; no GPU needed) writes no register that a
    register-A wgmma may still read (KernelConfig.mma_wait_each_step); without the wait v5/v4 do (issue 9433)."""
    pytest.importorskip("triton")
    ks = _kernel_sass_module(monkeypatch)
    compile_kernel, wgmma_register_hazards = ks.compile_kernel, ks.wgmma_register_hazards

    block_n, block_t, split, warps, stages = tile
    if variant == "lut" and block_t > 16:
        pytest.skip("the lut variant runs decode tiles only")
    _, sass, _ = compile_kernel(variant, block_n, block_t, 128, split, warps, stages)
    assert wgmma_register_hazards(sass) == []
    if variant in ("v5", "v4") and block_t == 16:
        _, sass, _ = compile_kernel(variant, block_n, block_t, 128, split, warps, stages, mma_wait=False)
        assert wgmma_register_hazards(sass), "the check finds the hazard it is there for"


@pytest.mark.parametrize("variant", ["v5", "v4"])
def test_launch_refuses_a_kernel_whose_mma_pipeline_is_unsafe(variant, monkeypatch):
    """w4a8_matmul checks each compiled kernel's SASS once (another Triton or ptxas may schedule differently): the
    waited loop passes, the loop without the wait is refused with a clear error."""
    pytest.importorskip("triton")
    from dpq.kernels import w4a8_triton as W

    ks = _kernel_sass_module(monkeypatch)
    safe, _, _ = ks.compile_kernel(variant, 128, 16, 128, 4, 4, 3)
    W._check_mma_pipeline(safe)
    unsafe, _, _ = ks.compile_kernel(variant, 128, 16, 128, 4, 4, 3, mma_wait=False)
    with pytest.raises(RuntimeError, match="not be reproducible"):
        W._check_mma_pipeline(unsafe)
