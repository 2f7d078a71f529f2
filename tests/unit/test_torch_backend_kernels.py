"""Host-side helpers of the fused Triton W4A8 kernel and the torch backend's missing-torch error (no torch needed)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from dpq.kernels.w4a8_triton import GROUP_SIZES, KernelConfig, default_config, output_scale, split_k_parts


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
    # v5 (the default) takes v4's tiles and splits
    for n, k in ((10240, 8192), (57344, 8192), (8192, 28672)):
        for m in (1, 16, 64, 512):
            assert default_config(m, n, k, 132, 128, "v5") == default_config(m, n, k, 132, 128, "v4")


def test_groups_per_step_sets_the_k_step():
    parts = split_k_parts(8192, KernelConfig(split_k=3, groups_per_step=2), 128)
    assert sum(parts) == 8192 and all(p % 256 == 0 for p in parts)
    with pytest.raises(ValueError, match="groups_per_step"):
        KernelConfig(groups_per_step=3)
