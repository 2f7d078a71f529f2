"""The torch backend on a Hopper GPU, bit for bit against sim.mac.fp8_gemm (run with ``pytest -m gpu``).

cuBLAS path: hw="h100"/"h200" (by the card's name). Fused Triton W4A8 path: hw="h100-triton-w4a8" with the
kernel's split-K part lengths. The embedded model's layers are checked by scripts/gpu_bitexact.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                                 reason="bit-exact numerics are modelled for Hopper (sm_90) only")]

from dpq.kernels.w4a8_triton import (KernelConfig, PackedW4A8Weight, SMLimits, default_config,  # noqa: E402
                                     default_variant_for, expansion_lut, expansion_lut_np, fp8_weight_from_lut,
                                     launch_config, split_k_parts, tuned_config_for, v4_codes, v4_codes_np,
                                     w4a8_matmul)
from dpq.torch_backend import weight_fp8  # noqa: E402
from dpq.packed import PackedLinear, pack_nibbles  # noqa: E402
from dpq.torch_backend import TorchLinear, emulator_inputs  # noqa: E402
from sim.mac import fp8_gemm  # noqa: E402


def _hw():
    return "h200" if "H200" in torch.cuda.get_device_name() else "h100"


def _layer(rng, out_f, in_f, gs, scale_log2_hi=4):
    return PackedLinear(name="t", in_features=in_f, out_features=out_f, weight_bits=4, group_size=gs,
                        weight_encoding="int_asym", expansion="fp8",
                        codes=pack_nibbles(rng.integers(0, 16, (out_f, in_f))),
                        group_scales=np.exp2(rng.uniform(-6, scale_log2_hi, (out_f, in_f // gs))).astype(np.float32),
                        zeros=rng.integers(0, 16, (out_f, in_f // gs)).astype(np.uint8),
                        tensor_scale=0.25, act_scale=0.0123, fp8_format="float8_e4m3fn")


def _bits(y):
    return (np.ascontiguousarray(y, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("m,n,k,gs", [(1, 256, 1024, 128), (16, 192, 576, 64), (37, 320, 4096, 128)])
def test_cublas_path_bit_exact(m, n, k, gs):
    rng = np.random.default_rng(m + n)
    p = _layer(rng, n, k, gs)
    x = (rng.standard_normal((m, k)) * np.exp2(rng.uniform(-4, 4, (m, k)))).astype(np.float32)
    got = TorchLinear(p, "cuda")(x)
    want = fp8_gemm(hw=_hw(), out_dtype="bfloat16", **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("variant", ["v6", "v5", "v4", "lut", "v2", "fp8"])
@pytest.mark.parametrize("m,n,k,gs,split,hi", [(1, 256, 8192, 128, None, 4), (16, 192, 576, 64, None, 4),
                                               (16, 256, 8192, 128, 1, 4), (70, 384, 2048, 128, 3, 4),
                                               (8, 128, 1024, 32, None, 7),  # hi=7: s_g (q - z) saturates
                                               (3, 200, 576, 64, None, 4)])  # N not a multiple of the tile
def test_triton_path_bit_exact(m, n, k, gs, split, hi, variant):
    rng = np.random.default_rng(m * 7 + n)
    p = _layer(rng, n, k, gs, hi)
    x = (rng.standard_normal((m, k)) * np.exp2(rng.uniform(-4, 4, (m, k)))).astype(np.float32)
    cfg = launch_config(m, n, k, PackedW4A8Weight.from_packed(p, variant=variant))  # what w4a8_matmul picks
    if split is not None:
        cfg = KernelConfig(**(cfg.__dict__ | {"split_k": split}))
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant=variant)(x)
    want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(k, cfg, gs),
                    **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


def _card_tuned_configs():
    from dpq.kernels.w4a8_triton import _card_spec

    found = _card_spec(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    return [] if found is None else [(found[0],) + row for row in found[1].tuned_configs]


@pytest.mark.parametrize("row", _card_tuned_configs() or [None])
def test_every_tuned_configuration_is_bit_exact(row):
    """Each configuration the card's profile tunes (fused_kernel.tuned_configs) is what a launch of that GEMM picks,
    and gives the emulator's bits with its split-K parts: run at its K and M range with fewer rows (the numerics of
    an output depend on K, the tile and the split, not on N)."""
    if row is None:
        pytest.skip("no tuned configurations for this card")
    profile, n, k, lo_m, hi_m, *_ = row
    variant = default_variant_for(torch.cuda.get_device_name())
    rng = np.random.default_rng(n + k + hi_m)
    for m in sorted({lo_m, hi_m}):
        cfg = tuned_config_for(torch.cuda.get_device_name(), variant, m, n, k, 128)
        assert cfg is not None
        weight = PackedW4A8Weight.from_packed(_layer(rng, 128, k, 128), variant=variant)
        assert launch_config(m, n, k, weight) == cfg  # a launch of the full GEMM runs the tuned configuration
        for rows in (cfg.block_n * 2, cfg.block_n * 2 + 72):  # whole tiles, and a masked last tile
            p = _layer(rng, rows, k, 128)
            x = (rng.standard_normal((m, k)) * np.exp2(rng.uniform(-4, 4, (m, k)))).astype(np.float32)
            got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant=variant)(x)
            want = fp8_gemm(hw=profile, out_dtype="bfloat16", split_k=split_k_parts(k, cfg, 128),
                            **emulator_inputs(p, x))
            assert np.array_equal(_bits(got), _bits(want)), (profile, n, k, m, cfg)


@pytest.mark.parametrize("fp8_max,hi", [(448.0, 7), (240.0, 6)])
def test_expansion_lut_matches_its_numpy_twin(fp8_max, hi):
    rng = np.random.default_rng(5)
    scales = np.exp2(rng.uniform(-8, hi, (300, 7))).astype(np.float32)
    zeros = rng.integers(0, 16, (300, 7)).astype(np.uint8)
    got = expansion_lut(torch.from_numpy(scales).cuda(), torch.from_numpy(zeros).cuda(), fp8_max, rows_per_chunk=128)
    fmt = "float8_e4m3fn" if fp8_max == 448.0 else "float8_e4m3"
    want = expansion_lut_np(scales, zeros, fmt)
    assert np.array_equal(got.cpu().contiguous().view(torch.uint8).numpy().reshape(want.shape), want)


@pytest.mark.parametrize("block_n,warps,stages", [(64, 4, 4), (128, 4, 4), (128, 8, 3)])
def test_lut_and_v2_variants_give_the_same_bits(block_n, warps, stages):
    rng = np.random.default_rng(block_n + warps)
    p = _layer(rng, 384, 4096, 128)
    x = (rng.standard_normal((16, 4096)) * np.exp2(rng.uniform(-4, 4, (16, 4096)))).astype(np.float32)
    cfg = KernelConfig(block_n=block_n, block_t=16, split_k=2, num_warps=warps, num_stages=stages)
    a = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="lut")(x)
    b = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v2")(x)
    assert np.array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("variant", ["v4", "fp8"])
@pytest.mark.parametrize("cfg", [KernelConfig(128, 16, 3, 4, 4, 2), KernelConfig(64, 16, 2, 4, 3, 2),
                                 KernelConfig(128, 16, 1, 4, 3, 4), KernelConfig(128, 64, 5, 4, 4, 1),
                                 KernelConfig(128, 128, 1, 8, 3, 2)])
def test_v4_tiles_and_groups_per_step_bit_exact(cfg, variant):
    rng = np.random.default_rng(cfg.block_n + cfg.split_k)
    m = 100 if cfg.block_t > 16 else 5
    p = _layer(rng, 384, 4096, 128)
    x = (rng.standard_normal((m, 4096)) * np.exp2(rng.uniform(-4, 4, (m, 4096)))).astype(np.float32)
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant=variant)(x)
    want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(4096, cfg, 128),
                    **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


def test_v4_layouts_match_their_numpy_twins():
    rng = np.random.default_rng(3)
    p = _layer(rng, 200, 1024, 64, 7)
    codes = torch.from_numpy(p.codes).cuda()
    assert np.array_equal(v4_codes(codes, 64).cpu().numpy().view(np.uint16), v4_codes_np(p.codes, 64))
    lut = expansion_lut(torch.from_numpy(p.group_scales).cuda(), torch.from_numpy(p.zeros).cuda(), 448.0)
    w = fp8_weight_from_lut(codes, lut, 64, rows_per_chunk=48)           # (G, N, 64) group-major
    want = weight_fp8(p, "cuda").view(torch.uint8)                       # (N, K)
    assert torch.equal(w.permute(1, 0, 2).reshape(200, 1024), want)


def test_v4_rejects_a_k_step_that_does_not_divide_k():
    rng = np.random.default_rng(4)
    p = _layer(rng, 128, 576, 64)
    w = PackedW4A8Weight.from_packed(p, "cuda", "v4")
    x8 = torch.zeros((1, 576), device="cuda").to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="K step"):
        w4a8_matmul(x8, w, 1.0, config=KernelConfig(128, 16, 1, 4, 4, 2))


@pytest.mark.parametrize("variant", ["v6", "v5", "v4", "fp8"])
def test_in_kernel_split_reduction_is_ordered_and_race_free(variant):
    """The last program of a tile adds the parts in order: the same bits as the separate reduction kernel and the
    emulator, on a NaN-poisoned workspace (a part read before it was written would show), many times over."""
    from dpq.torch_backend import activation_fp8

    rng = np.random.default_rng(21)
    p = _layer(rng, 512, 8192, 128)
    x = (rng.standard_normal((3, 8192)) * np.exp2(rng.uniform(-4, 4, (3, 8192)))).astype(np.float32)
    w = PackedW4A8Weight.from_packed(p, "cuda", variant)
    x8 = activation_fp8(torch.from_numpy(x).cuda(), p.act_scale, p.fp8_format)
    for split in (2, 7, 32):
        cfg = KernelConfig(128, 16, split, 4, 3, reduce_in_kernel=True)
        want = _bits(fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(8192, cfg, 128),
                              **emulator_inputs(p, x)))
        sep = w4a8_matmul(x8, w, p.act_scale, config=KernelConfig(128, 16, split, 4, 3))
        assert np.array_equal(_bits(sep.float().cpu().numpy()), want)
        for _ in range(20):
            ws = torch.full((split * 3 * 512,), float("nan"), device="cuda")
            got = w4a8_matmul(x8, w, p.act_scale, config=cfg, workspace=ws)
            assert torch.equal(got.view(torch.int16), sep.view(torch.int16))


@pytest.mark.parametrize("cfg", [KernelConfig(128, 16, 3, 4, 4), KernelConfig(64, 16, 2, 4, 3),
                                 KernelConfig(128, 16, 1, 8, 3), KernelConfig(128, 32, 5, 4, 3),
                                 KernelConfig(128, 64, 2, 4, 3), KernelConfig(128, 128, 1, 8, 3),
                                 KernelConfig(128, 16, 3, 4, 3, maxnreg=64), KernelConfig(128, 16, 4, 4, 2, maxnreg=56),
                                 KernelConfig(128, 16, 4, 4, 3, reduce_in_kernel=True, maxnreg=64),
                                 KernelConfig(64, 16, 4, 4, 3), KernelConfig(64, 64, 2, 4, 3),
                                 KernelConfig(256, 16, 4, 8, 3)])
def test_v5_tiles_bit_exact(cfg):
    """The in-loop table build (quad lanes share rows, row % 4 from the lane id) on every tile shape and launch option
    (register caps, 2 stages, the in-kernel reduction) the bench tries."""
    rng = np.random.default_rng(cfg.block_n + cfg.split_k + cfg.block_t)
    m = 100 if cfg.block_t > 16 else 5
    p = _layer(rng, 388, 4096, 128, 7)  # N = 388: not a multiple of the tile, nor of 8
    x = (rng.standard_normal((m, 4096)) * np.exp2(rng.uniform(-4, 4, (m, 4096)))).astype(np.float32)
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v5")(x)
    want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(4096, cfg, 128),
                    **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("cfg", [KernelConfig(128, 16, 1, 4, 3, a_buffers=1), KernelConfig(128, 16, 3, 4, 4, a_buffers=1),
                                 KernelConfig(128, 16, 5, 4, 2, a_buffers=2), KernelConfig(128, 32, 2, 4, 3, a_buffers=2),
                                 KernelConfig(128, 64, 3, 4, 3, a_buffers=1), KernelConfig(128, 64, 1, 4, 2, a_buffers=2),
                                 KernelConfig(128, 16, 4, 4, 4, a_buffers=2, maxnreg=80),
                                 KernelConfig(128, 16, 3, 4, 2, groups_per_step=2),
                                 KernelConfig(128, 32, 1, 4, 3, groups_per_step=2, a_buffers=2)])
@pytest.mark.parametrize("gs", [128, 64, 32])
def test_v6_tiles_bit_exact(cfg, gs):
    """The Gluon kernel (rows expanded into a shared-memory A tile, TMA loads, MMAs left in flight) at every tile,
    pipeline depth, A-tile count and group size: the emulator's bits, N and M not multiples of the tile (and, for
    N not a multiple of 4, "v5"'s kernel on the same weight)."""
    rng = np.random.default_rng(cfg.block_t + cfg.split_k + gs)
    m = {16: 5, 32: 29, 64: 61}[cfg.block_t]
    # 390 rows (not a multiple of 4): v5's kernel runs, which takes one group per step
    p = _layer(rng, 390 if gs == 32 and cfg.groups_per_step == 1 else 388, 2048, gs, 7)
    x = (rng.standard_normal((m, 2048)) * np.exp2(rng.uniform(-4, 4, (m, 2048)))).astype(np.float32)
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v6")(x)
    want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(2048, cfg, gs),
                    **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e4m3"])
def test_v6_tables_equal_v4_tables_on_edge_scales(fmt):
    """TABLE_ROW_ASM on tiny (+0 / -0), subnormal-producing and saturating scales: v4's torch-built tables' bits."""
    rng = np.random.default_rng(37)
    p = _layer(rng, 256, 1024, 128, 7)
    s = p.group_scales.copy()
    s[::5] = np.float32(2.0 ** -149)
    s[1::5] = np.float32(2.0 ** -140)
    s[2::5] = np.float32(2.0 ** 20)
    s[3::5] = np.float32(2.0 ** -10)
    p = PackedLinear(**(p.__dict__ | {"group_scales": s, "fp8_format": fmt}))
    x = (rng.standard_normal((4, 1024)) * np.exp2(rng.uniform(-4, 4, (4, 1024)))).astype(np.float32)
    cfg = KernelConfig(128, 16, 2, 4, 3, a_buffers=1)
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v6")(x)
    ref = TorchLinear(p, "cuda", kernel="triton", triton_config=replace_cfg(cfg, a_buffers=2), triton_variant="v4")(x)
    assert np.array_equal(_bits(got), _bits(ref))


def replace_cfg(cfg, **changes):
    return KernelConfig(**(cfg.__dict__ | changes))


def test_v6_is_race_free_under_repeats():
    """The load warp and the MMA warpgroup hand slots over by mbarriers: 30 launches of a 2-stage ring with many
    K steps per part (every slot reused often) and one A tile give the same bits each time, eager and in a graph."""
    rng = np.random.default_rng(41)
    p = _layer(rng, 512, 8192, 128)
    w = PackedW4A8Weight.from_packed(p, "cuda", "v6")
    x8 = (torch.from_numpy(rng.standard_normal((16, 8192)).astype(np.float32)).cuda() * 8).to(torch.float8_e4m3fn)
    cfg = KernelConfig(128, 16, 2, 4, 2, a_buffers=1)
    first = w4a8_matmul(x8, w, 0.01, config=cfg)
    for _ in range(30):
        assert torch.equal(w4a8_matmul(x8, w, 0.01, config=cfg).view(torch.int16), first.view(torch.int16))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [w4a8_matmul(x8, w, 0.01, config=cfg) for _ in range(8)]
    g.replay()
    torch.cuda.synchronize()
    for o in outs:
        assert torch.equal(o.view(torch.int16), first.view(torch.int16))


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e4m3"])
def test_v5_tables_equal_v4_tables_on_edge_scales(fmt):
    """Tiny scales (products that round to +0 and, for q < z, to -0), huge (saturating) and subnormal-producing
    scales: v5's in-loop tables give the very bits of v4's torch-built tables (and of the emulator for E4M3FN;
    float8_e4m3 runs the clamped path, TABLE_WORD_ASM_CLAMP)."""
    rng = np.random.default_rng(31)
    p = _layer(rng, 256, 1024, 128, 7)
    s = p.group_scales.copy()
    s[::5] = np.float32(2.0 ** -149)           # the smallest float32: s (j - z) is +-tiny -> FP8 +0 / -0
    s[1::5] = np.float32(2.0 ** -140)          # s (j - z) far below E4M3's smallest subnormal: +-0
    s[2::5] = np.float32(2.0 ** 20)            # saturates at +-fp8 max
    s[3::5] = np.float32(2.0 ** -10)           # subnormal FP8 products
    p = PackedLinear(**(p.__dict__ | {"group_scales": s, "fp8_format": fmt}))
    x = (rng.standard_normal((4, 1024)) * np.exp2(rng.uniform(-4, 4, (4, 1024)))).astype(np.float32)
    cfg = KernelConfig(128, 16, 2, 4, 3)
    got = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v5")(x)
    ref = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant="v4")(x)
    assert np.array_equal(_bits(got), _bits(ref))
    if fmt == "float8_e4m3fn":  # the Hopper profiles take E4M3FN operands only
        want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(1024, cfg, 128),
                        **emulator_inputs(p, x))
        assert np.array_equal(_bits(got), _bits(want))


def test_v5_layouts_match_their_numpy_twins():
    from dpq.kernels.w4a8_triton import v5_zeros, v5_zeros_np

    rng = np.random.default_rng(6)
    z = rng.integers(0, 16, (203, 9)).astype(np.uint8)
    assert np.array_equal(v5_zeros(torch.from_numpy(z).cuda()).cpu().numpy(), v5_zeros_np(z))


def test_default_config_reads_the_card():
    """w4a8_matmul's default (config=None) is the wave rule with this card's SM limits, and gives its bits."""
    limits = SMLimits.of_device(0)
    assert limits.num_sms == torch.cuda.get_device_properties(0).multi_processor_count
    rng = np.random.default_rng(11)
    p = _layer(rng, 1024, 8192, 128)
    x = (rng.standard_normal((1, 8192)) * np.exp2(rng.uniform(-4, 4, (1, 8192)))).astype(np.float32)
    cfg = default_config(1, 1024, 8192, limits.num_sms, 128, "v5", sm_limits=limits)
    got = TorchLinear(p, "cuda", kernel="triton", triton_variant="v5")(x)
    want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(8192, cfg, 128),
                    **emulator_inputs(p, x))
    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("variant,changes",
                         [(v, c) for v in ("v5", "v4", "fp8")
                          for c in ({"pdl": True}, {"pdl": True, "l2_prefetch_steps": 2},
                                    {"pdl": True, "l2_prefetch_steps": 4, "reduce_in_kernel": True},
                                    {"pdl": True, "pdl_trigger": "after_loop", "l2_prefetch_steps": 1})]
                         + [("v6", {"pdl": True}), ("v6", {"pdl": True, "reduce_in_kernel": True}),
                            ("v6", {"pdl": True, "num_stages": 6}), ("v6", {"pdl": True, "num_stages": 9}),
                            ("v6", {"pdl": True, "num_stages": 12})])
def test_dependent_launch_is_race_free(variant, changes):
    """Programmatic dependent launch lets each kernel start before the one before it ends: 12 launches back to back
    (eagerly and replayed from a CUDA graph) on two layers, each split-K reduction reading parts that the kernel
    before it writes, must give the emulator's bits every time (a part read early, or a workspace or arrival counter
    overwritten while still in use, would show; the inputs are fixed here, so an activation read before the kernel
    that writes it has finished is not covered)."""
    from dataclasses import replace

    from dpq.torch_backend import activation_fp8

    rng = np.random.default_rng(23)
    layers = [_layer(rng, 1024, 8192, 128), _layer(rng, 256, 4096, 128)]
    x = [(rng.standard_normal((5, p.in_features)) * np.exp2(rng.uniform(-4, 4, (5, p.in_features))))
         .astype(np.float32) for p in layers]
    limits = SMLimits.of_device(0)
    ws = [PackedW4A8Weight.from_packed(p, "cuda", variant) for p in layers]
    x8 = [activation_fp8(torch.from_numpy(xi).cuda(), p.act_scale, p.fp8_format) for xi, p in zip(x, layers)]
    cfgs = [replace(default_config(5, p.out_features, p.in_features, limits.num_sms, 128, variant, sm_limits=limits),
                    split_k=3, **changes) for p in layers]
    want = [_bits(fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16",
                           split_k=split_k_parts(p.in_features, c, 128), **emulator_inputs(p, xi)))
            for p, c, xi in zip(layers, cfgs, x)]

    def chain():
        return [w4a8_matmul(x8[i % 2], ws[i % 2], layers[i % 2].act_scale, config=cfgs[i % 2]) for i in range(12)]

    outs = chain()
    torch.cuda.synchronize()
    for i, y in enumerate(outs):
        assert np.array_equal(_bits(y.float().cpu().numpy()), want[i % 2]), f"eager launch {i}"
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        outs = chain()
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        for i, y in enumerate(outs):
            assert np.array_equal(_bits(y.float().cpu().numpy()), want[i % 2]), f"graph launch {i}"


@pytest.mark.parametrize("variant", ["v4", "v5"])
@pytest.mark.parametrize("cfg,m,n,k", [(KernelConfig(128, 128, 1, 8, 3), 1024, 4096, 4096),
                                       (KernelConfig(128, 64, 8, 4, 3), 64, 8192, 8192)])
def test_register_a_mma_pipeline_is_deterministic(variant, cfg, m, n, k):
    """Triton 3.6 may overwrite the expanded weights of a wgmma still in flight (issue 9433): without the per-step
    wait these tiles gave different bits from run to run for v4 on an H200. With it, every run equals the first and
    the other variant (same numerics)."""
    from dpq.torch_backend import activation_fp8

    rng = np.random.default_rng(41)
    p = _layer(rng, n, k, 128)
    x = (rng.standard_normal((m, k)) * np.exp2(rng.uniform(-2, 2, (m, k)))).astype(np.float32)
    x8 = activation_fp8(torch.from_numpy(x).cuda(), p.act_scale, p.fp8_format)
    w = PackedW4A8Weight.from_packed(p, "cuda", variant)
    other = PackedW4A8Weight.from_packed(p, "cuda", "v5" if variant == "v4" else "v4")
    first = w4a8_matmul(x8, other, p.act_scale, config=cfg)
    for _ in range(8):
        got = w4a8_matmul(x8, w, p.act_scale, config=cfg)
        assert torch.equal(got.view(torch.int16), first.view(torch.int16))


@pytest.mark.parametrize("variant", ["v6", "v5", "v4"])
@pytest.mark.parametrize("fmt,hi", [("float8_e4m3fn", 7), ("float8_e4m3", 6)])
@pytest.mark.parametrize("group_size,block_n,warps,groups_fastest",
                         [(128, 64, 4, True), (128, 32, 4, False), (64, 128, 8, True), (32, 16, 4, True)])
def test_expand_to_fp8_equals_the_torch_expansion(variant, fmt, hi, group_size, block_n, warps, groups_fastest):
    """The prefill path's expansion kernel gives the packed format's FP8 codes, saturation and -0 included, for
    N not a multiple of its row tile, at every group size and kernel configuration."""
    from dpq.kernels.w4a8_triton import expand_to_fp8

    rng = np.random.default_rng(51)
    p = _layer(rng, 388, 1024, group_size, hi)
    s = p.group_scales.copy()
    s[::7] = np.float32(2.0 ** -140)  # products far below the smallest subnormal: +0 / -0
    p = PackedLinear(**(p.__dict__ | {"group_scales": s, "fp8_format": fmt}))
    got = expand_to_fp8(PackedW4A8Weight.from_packed(p, "cuda", variant), block_n=block_n, num_warps=warps,
                        groups_fastest=groups_fastest)
    want = weight_fp8(p, "cuda")
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("variant", ["v6", "v5", "v4"])
def test_expanded_matmul_is_the_cublas_path(variant):
    """w4a8_matmul_expanded = expansion kernel + cuBLAS with promotion: the bits of the torch backend's cuBLAS kernel
    and of the emulator's cuBLAS profile."""
    from dpq.kernels.w4a8_triton import w4a8_matmul_expanded
    from dpq.torch_backend import activation_fp8

    rng = np.random.default_rng(53)
    p = _layer(rng, 384, 4096, 128)
    x = (rng.standard_normal((300, 4096)) * np.exp2(rng.uniform(-4, 4, (300, 4096)))).astype(np.float32)
    x8 = activation_fp8(torch.from_numpy(x).cuda(), p.act_scale, p.fp8_format)
    got = w4a8_matmul_expanded(x8, PackedW4A8Weight.from_packed(p, "cuda", variant), p.act_scale)
    ref = TorchLinear(p, "cuda", kernel="cublas").run(torch.from_numpy(x).cuda())
    assert torch.equal(got.view(torch.int16), ref.view(torch.int16))
    want = fp8_gemm(hw=_hw(), out_dtype="bfloat16", **emulator_inputs(p, x))
    assert np.array_equal(_bits(got.float().cpu().numpy()), _bits(want))


@pytest.mark.parametrize("variant", ["v6", "v5", "v4"])
def test_triton_kernel_switches_to_the_prefill_path_at_its_threshold(variant):
    """TorchLinear(kernel="triton") runs the fused kernel below expand_from_tokens (the fused profile's bits, with
    the default configuration's split-K parts) and expansion + cuBLAS from there (the cuBLAS profile's bits)."""
    rng = np.random.default_rng(57)
    p = _layer(rng, 320, 2048, 128)
    lin = TorchLinear(p, "cuda", kernel="triton", triton_variant=variant, expand_from_tokens=64)
    fused_only = TorchLinear(p, "cuda", kernel="triton", triton_variant=variant, expand_from_tokens=None)
    for m, prefill in ((63, False), (64, True), (200, True), (200, False)):  # 200 fused: the split-K prefill tiles
        x = (rng.standard_normal((m, 2048)) * np.exp2(rng.uniform(-4, 4, (m, 2048)))).astype(np.float32)
        lin = lin if prefill or m < 64 else fused_only
        assert lin.prefill_path(m) is prefill
        got = lin.run(torch.from_numpy(x).cuda())
        if prefill:
            want = fp8_gemm(hw=_hw(), out_dtype="bfloat16", **emulator_inputs(p, x))
        else:
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            cfg = default_config(m, 320, 2048, sms, 128, variant, sm_limits=SMLimits.of_device(0))
            want = fp8_gemm(hw="h100-triton-w4a8", out_dtype="bfloat16", split_k=split_k_parts(2048, cfg, 128),
                            **emulator_inputs(p, x))
        assert np.array_equal(_bits(got.float().cpu().numpy()), _bits(want)), (m, prefill)


def test_triton_kernel_prefill_threshold_defaults_to_the_cards():
    from dpq.kernels.w4a8_triton import expand_from_tokens_for

    rng = np.random.default_rng(59)
    p = _layer(rng, 128, 1024, 128)
    lin = TorchLinear(p, "cuda", kernel="triton")
    threshold = expand_from_tokens_for(torch.cuda.get_device_name(0))
    if threshold is None:
        assert not lin.prefill_path(1 << 20)
    else:
        assert not lin.prefill_path(threshold - 1) and lin.prefill_path(threshold)
    assert not TorchLinear(p, "cuda", kernel="triton", expand_from_tokens=None).prefill_path(1 << 20)
