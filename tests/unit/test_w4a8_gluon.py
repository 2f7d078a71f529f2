"""The "v6" Gluon W4A8 kernel, host side: its table asm, when it runs, its shared memory and launch heuristic.

Its table twin (``table_row_np``) is checked against the packed format in test_w4a8_lut.py with the other variants'.
The kernel itself runs on a Hopper GPU only (tests/gpu: bit-equal to the emulator).
"""

from __future__ import annotations

import pytest

from dpq.kernels.w4a8_gluon import TABLE_ROW_ASM, TABLE_ROW_ASM_CLAMP
from dpq.kernels.w4a8_triton import KernelConfig, SMLimits, default_config, split_k_parts, v6_shared_bytes


def test_v6_table_asm_has_the_twins_instructions():
    """One row's 16 entries: 4 exact subtractions, 12 exact + 1.0 steps, 16 float32 multiplies, 8 pair conversions
    (and, clamped, 16 min and 16 max): what table_row_np does step by step."""
    for asm, clamps in ((TABLE_ROW_ASM, 0), (TABLE_ROW_ASM_CLAMP, 16)):
        assert asm.count("sub.f32") == 4 and asm.count("add.f32") == 12 and asm.count("mul.rn.f32") == 16
        assert asm.count("cvt.rn.satfinite.e4m3x2.f32") == 8
        assert asm.count("min.f32") == clamps and asm.count("max.f32") == clamps


def test_gluon_kernel_runs_decode_tiles_of_aligned_weights():
    """A "v6" weight is in the "v5" layout; the Gluon kernel takes 128-row, 4-warp tiles of at most 64 tokens when
    the group's scale rows start 16-byte aligned for TMA (N a multiple of 4); "v5"'s Triton kernel the rest."""
    from dpq.kernels.w4a8_gluon import gluon_kernel_applies

    decode = KernelConfig(block_n=128, block_t=16, split_k=4, num_warps=4, num_stages=4, a_buffers=1)
    assert gluon_kernel_applies(decode, 8192) and gluon_kernel_applies(decode, 388)
    assert not gluon_kernel_applies(decode, 390)
    assert not gluon_kernel_applies(KernelConfig(block_n=128, block_t=128, num_warps=8, num_stages=3), 8192)
    assert not gluon_kernel_applies(KernelConfig(block_n=64, block_t=16, num_warps=4, num_stages=3), 8192)


def test_v6_shared_bytes_bounds_the_compiled_kernels():
    """Shared memory the H100 run reported for the compiled 128 x 16 tiles (results/gpu/sweep_h100_s6a.csv):
    the estimate is at most 256 bytes above, never below (so the resident count it gives is never too high)."""
    compiled = {(3, 1): 49244, (4, 1): 60132, (2, 1): 38340, (3, 2): 65628, (4, 2): 76516}
    for (stages, a_buffers), used in compiled.items():
        assert 0 <= v6_shared_bytes(128, 16, stages, a_buffers) - used <= 256


def test_v6_default_config():
    limits = SMLimits(num_sms=132, registers_per_sm=65536, shared_bytes_per_sm=233472, max_threads_per_sm=2048)
    for m, n, k in ((1, 57344, 8192), (16, 10240, 8192), (30, 4096, 11008), (64, 8192, 28672), (300, 8192, 8192)):
        cfg = default_config(m, n, k, 132, 128, "v6", sm_limits=limits)
        assert cfg.block_n == 128 and cfg.groups_per_step == 1 and not cfg.reduce_in_kernel
        assert cfg.block_t == (16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128)
        assert sum(split_k_parts(k, cfg, 128)) == k and len(split_k_parts(k, cfg, 128)) == cfg.split_k
        if m <= 64:
            assert cfg.a_buffers == 1 and cfg.num_stages == 4
            assert k // 128 // cfg.split_k >= 8 or cfg.split_k == 1
        else:  # "v5"'s prefill tiles on the same layout
            assert cfg == default_config(m, n, k, 132, 128, "v5", sm_limits=limits)
    # the first H100 sweep's fastest splits for o_proj / down_proj / qkv_proj at 4 stages
    assert default_config(1, 8192, 28672, 132, 128, "v6", sm_limits=limits).split_k == 4
    assert default_config(1, 8192, 8192, 132, 128, "v6", sm_limits=limits).split_k == 4
    assert default_config(1, 10240, 8192, 132, 128, "v6", sm_limits=limits).split_k == 3


def test_kernel_config_a_buffers_is_checked():
    with pytest.raises(ValueError, match="a_buffers"):
        KernelConfig(a_buffers=3)
    with pytest.raises(ValueError, match="a_buffers"):
        KernelConfig(a_buffers=True)
