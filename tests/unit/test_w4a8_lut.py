"""The table variants of the fused W4A8 kernel, host side: tables, code layouts and the inline asm's plain twins.

The twins (``lut_expand_np`` / ``lut_expand_row_np``: PTX ``prmt`` modelled byte by byte; ``table_build_np``: v5's
in-loop table build lane by lane) must give, for every code, the FP8 code of s_g (q - z) that
``sim.formats.encode`` gives for the packed format's expansion (zero tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

from dpq.kernels.w4a8_triton import expansion_lut_np, lut_expand_np, prmt_np
from sim.formats import encode


def test_prmt_twin_selects_bytes_and_replicates_signs():
    a, b = np.uint32(0x83020100), np.uint32(0x07068504)
    assert prmt_np(a, b, np.uint32(0x3210)) == 0x83020100
    assert prmt_np(a, b, np.uint32(0x7654)) == 0x07068504
    assert prmt_np(a, b, np.uint32(0x0516)) == (0x00 << 24) | (0x85 << 16) | (0x01 << 8) | 0x06
    # sign mode (bit 3): byte 3 of a is 0x83 (negative) -> 0xFF, byte 0 of a is 0x00 -> 0x00
    assert prmt_np(a, b, np.uint32(0x8B00)) == (0x00 << 24) | (0xFF << 16) | (0x00 << 8) | 0x00


@pytest.mark.parametrize("fmt,hi", [("float8_e4m3fn", 4), ("float8_e4m3fn", 7), ("float8_e4m3", 6)])
def test_lut_expansion_equals_the_packed_format(fmt, hi):
    rng = np.random.default_rng(11)
    n, g = 37, 5
    scales = np.exp2(rng.uniform(-8, hi, (n, g))).astype(np.float32)
    zeros = rng.integers(0, 16, (n, g)).astype(np.uint8)
    lut = expansion_lut_np(scales, zeros, fmt)                       # (G, N, 16) uint8
    words = lut.reshape(g, n, 4, 4).astype(np.uint32)
    words = words[..., 0] | (words[..., 1] << 8) | (words[..., 2] << 16) | (words[..., 3] << 24)  # little-endian
    # every 4-code combination of every (group, row): all 16 codes in each position
    q = rng.integers(0, 16, (g, n, 64, 4)).astype(np.uint32)
    q[:, :, :16, 0] = np.arange(16)
    q[:, :, :16, 3] = np.arange(16)[::-1]
    codes16 = q[..., 0] | (q[..., 1] << 4) | (q[..., 2] << 8) | (q[..., 3] << 12)
    got = lut_expand_np(codes16, *(words[:, :, None, i] for i in range(4)))
    got_bytes = np.stack([(got >> (8 * i)) & 0xFF for i in range(4)], axis=-1).astype(np.uint8)
    d = q.astype(np.int32) - zeros.T.astype(np.int32)[:, :, None, None]
    want = encode((scales.T[:, :, None, None] * d.astype(np.float32)).astype(np.float32), fmt, saturate=True)
    assert np.array_equal(got_bytes, want)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_v4_code_layout_round_trips_to_k_order(group_size):
    """The v4 layout (group-major, words reordered per thread) undone as the kernel does it gives the packed codes."""
    from dpq.kernels.w4a8_triton import v4_codes_np, v4_words_np

    rng = np.random.default_rng(group_size)
    n, k = 24, group_size * 5
    codes = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    stored = v4_codes_np(codes, group_size)
    assert stored.shape == (k // group_size, n, group_size // 4) and stored.dtype == np.uint16
    assert np.array_equal(v4_words_np(stored, group_size), codes.view("<u2"))
    # one thread of the tensor-core layout holds words a, a + 4, a + 8, ... of a group: side by side when stored
    w = group_size // 4
    words = codes.view("<u2").reshape(n, k // group_size, w)
    for a in range(4):
        assert np.array_equal(stored[:, :, a * (w // 4):(a + 1) * (w // 4)], words[:, :, a::4].transpose(1, 0, 2))


def test_v4_code_layout_rejects_bad_group():
    from dpq.kernels.w4a8_triton import v4_codes_np

    with pytest.raises(ValueError, match="group_size"):
        v4_codes_np(np.zeros((4, 40), np.uint8), 24)


@pytest.mark.parametrize("fmt,hi", [("float8_e4m3fn", 4), ("float8_e4m3fn", 7), ("float8_e4m3", 6)])
def test_v4_row_asm_twin_equals_the_packed_format(fmt, hi):
    """LUT_ASM_ROW (8 codes of one row per 32-bit word; shifts as mul.hi) gives the packed format's FP8 codes."""
    from dpq.kernels.w4a8_triton import lut_expand_row_np, mulhi_np

    rng = np.random.default_rng(12)
    n, g = 29, 4
    scales = np.exp2(rng.uniform(-8, hi, (n, g))).astype(np.float32)
    zeros = rng.integers(0, 16, (n, g)).astype(np.uint8)
    lut = expansion_lut_np(scales, zeros, fmt)
    words = lut.reshape(g, n, 4, 4).astype(np.uint32)
    words = words[..., 0] | (words[..., 1] << 8) | (words[..., 2] << 16) | (words[..., 3] << 24)
    q = rng.integers(0, 16, (g, n, 64, 8)).astype(np.uint32)
    q[:, :, :16, 0] = np.arange(16)
    q[:, :, :16, 7] = np.arange(16)[::-1]
    codes32 = np.zeros(q.shape[:-1], np.uint32)
    for i in range(8):
        codes32 |= q[..., i] << np.uint32(4 * i)
    lo, hi_ = lut_expand_row_np(codes32, *(words[:, :, None, i] for i in range(4)))
    got = np.stack([(w >> (8 * i)) & 0xFF for w in (lo, hi_) for i in range(4)], axis=-1).astype(np.uint8)
    d = q.astype(np.int32) - zeros.T.astype(np.int32)[:, :, None, None]
    want = encode((scales.T[:, :, None, None] * d.astype(np.float32)).astype(np.float32), fmt, saturate=True)
    assert np.array_equal(got, want)
    x = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(mulhi_np(x, 0x10000), x >> 16) and np.array_equal(mulhi_np(x, 0x80000000), x >> 1)


def test_v4_32bit_units_hold_one_row_and_chunk():
    """Read as 32-bit units, the v4 layout's unit (a, i) of a row holds words 8 i + a (low) and 8 i + 4 + a (high)."""
    from dpq.kernels.w4a8_triton import v4_codes_np

    rng = np.random.default_rng(2)
    n, gs = 6, 128
    codes = rng.integers(0, 256, (n, gs * 3 // 2), dtype=np.uint8)
    units = v4_codes_np(codes, gs).view("<u4").reshape(3, n, 4, gs // 32)     # [g, n, a, i]
    words = codes.view("<u2").reshape(n, 3, gs // 4)
    for a in range(4):
        for i in range(gs // 32):
            assert np.array_equal(units[:, :, a, i] & 0xFFFF, words[:, :, 8 * i + a].T)
            assert np.array_equal(units[:, :, a, i] >> 16, words[:, :, 8 * i + 4 + a].T)


@pytest.mark.parametrize("fmt,fp8_max,hi", [("float8_e4m3fn", 448.0, 4), ("float8_e4m3fn", 448.0, 7),
                                            ("float8_e4m3", 240.0, 6)])
def test_v5_table_build_twin_equals_the_packed_format(fmt, fp8_max, hi):
    """TABLE_WORD_ASM + QUAD_SHFL_ASM (lane a of a quad builds word a; zero picked from a 4-row word by row % 4)
    give the 16 FP8 codes of every (row, group), incl. saturation, subnormals and -0 for q < z at tiny scales."""
    from dpq.kernels.w4a8_triton import table_build_np, v5_zeros_np

    n, g = 41, 6
    scales, zeros = _edge_scales_and_zeros(13, n, g, hi)
    zb = v5_zeros_np(zeros)                                              # (G, N16) bytes
    words = zb.reshape(g, -1, 4).view("<u4")[..., 0]                     # (G, N16 / 4): rows 4m..4m+3 per word
    rows = np.arange(n)
    lw = table_build_np(scales.T, words[:, rows // 4], 0, fp8_max)      # selector per row below
    for r in range(4):                                                   # lanes whose rows have n % 4 == r
        sel = rows % 4 == r
        part = table_build_np(scales.T[:, sel], words[:, rows[sel] // 4], r, fp8_max)
        for i in range(4):
            lw[i][:, sel] = part[i]
    assert_tables_are_the_packed_format(lw, scales, zeros, fmt, fp8_max)


def _edge_scales_and_zeros(seed: int, n: int, g: int, hi: float):
    """Random (N, G) scales with +-0, subnormal and saturating products mixed in, and zeros covering 0..15."""
    rng = np.random.default_rng(seed)
    scales = np.exp2(rng.uniform(-8, hi, (n, g))).astype(np.float32)
    scales[::7] = np.float32(2.0 ** -149)      # products +-tiny: FP8 +0 and -0
    scales[3::7] = np.float32(2.0 ** -12)      # FP8 subnormals
    scales[5::7] = np.float32(2.0 ** 30)       # saturation
    zeros = rng.integers(0, 16, (n, g)).astype(np.uint8)
    zeros[0, :] = [0, 15, 7, 8, 1, 14][:g]
    return scales, zeros


def assert_tables_are_the_packed_format(words, scales, zeros, fmt: str, fp8_max: float) -> None:
    """words: the 4 table words of every (group, row), 4 x (G, N) uint32; byte b of word a must be the FP8 E4M3FN
    code of float32(s_g (4 a + b - z)) (clamped to +-fp8_max first for the smaller format, as the torch path does)."""
    got = np.stack([(words[a] >> (8 * b)) & 0xFF for a in range(4) for b in range(4)], axis=-1).astype(np.uint8)
    want = expansion_lut_np(scales, zeros, fmt)                          # (G, N, 16)
    if fmt == "float8_e4m3":   # the kernel's table holds E4M3FN codes of the clamped value (the torch path's)
        d = np.arange(16)[None, None, :] - zeros.T.astype(np.int32)[:, :, None]
        v = np.clip((scales.T[:, :, None] * d.astype(np.float32)).astype(np.float32), -fp8_max, fp8_max)
        want = encode(v.astype(np.float32), "float8_e4m3fn", saturate=True)
    assert np.array_equal(got, want)
    top = encode(np.float32(fp8_max), "float8_e4m3fn")
    assert np.any(got == 0x80) and np.any(got == top)  # -0 and the saturated maximum were exercised


@pytest.mark.parametrize("fmt,fp8_max,hi", [("float8_e4m3fn", 448.0, 4), ("float8_e4m3fn", 448.0, 7),
                                            ("float8_e4m3", 240.0, 6)])
def test_v6_table_twin_equals_the_packed_format(fmt, fp8_max, hi):
    """TABLE_ROW_ASM (one thread builds its whole row's table) gives the 16 FP8 codes of every (row, group)."""
    from dpq.kernels.w4a8_gluon import table_row_np

    scales, zeros = _edge_scales_and_zeros(17, 53, 5, hi)
    assert_tables_are_the_packed_format(table_row_np(scales.T, zeros.T, fp8_max), scales, zeros, fmt, fp8_max)


def test_v5_zero_layout_pads_rows_to_16_bytes():
    from dpq.kernels.w4a8_triton import v5_zeros_np

    z = np.arange(30, dtype=np.uint8).reshape(10, 3) % 16
    out = v5_zeros_np(z)
    assert out.shape == (3, 16) and np.array_equal(out[:, :10], z.T) and not out[:, 10:].any()


def test_v5_layout_guard_on_the_compiled_kernel():
    """The table build compiles into the tensor-core layout (quad lanes share rows; row % 4 = (lane / 4) % 4) on
    the tiles the bench tries, and the guard rejects a layout that maps lanes 0-1 to rows."""
    pytest.importorskip("triton")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from kernel_sass import compile_kernel

    from dpq.kernels.w4a8_triton import v5_layout_problem

    for block_n, block_t, warps in ((128, 16, 4), (64, 16, 4), (128, 16, 8), (128, 64, 4)):
        k, _, _ = compile_kernel("v5", block_n, block_t, 128, 2, warps, 3)
        ttgir = k.asm["ttgir"]
        assert v5_layout_problem(ttgir) == "", (block_n, block_t, warps)
    bad = ttgir.replace("lane = [[0, 1, 0], [0, 2, 0], [1, 0, 0]", "lane = [[1, 0, 0], [0, 2, 0], [0, 1, 0]")
    assert bad != ttgir and "maps lanes to rows" in v5_layout_problem(bad)
