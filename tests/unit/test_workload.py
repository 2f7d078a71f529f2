import pytest

from sim.models import load_model
from sim.workload import SCHEMES, decode_ops, memory_footprint, prefill_ops


def _ops(ops):
    return {o.name: o for o in ops}


def test_decode_linear_shapes_and_weight_bytes_per_scheme():
    ops = _ops(decode_ops("llama-2-7b", "w4a8", batch=8, context_len=100))
    qkv = ops["qkv_proj"]
    assert (qkv.m, qkv.n, qkv.k, qkv.repeat) == (8, 3 * 4096, 4096, 32)
    assert qkv.matrix_dtype == "fp8" and qkv.dequant
    assert qkv.weight_bytes_per_element == pytest.approx(0.5 + 2.5 / 128)
    assert ops["lm_head"].weight_bytes_per_element == 2.0 and not ops["lm_head"].dequant
    bf16 = _ops(decode_ops("llama-2-7b", "bf16", 8, 100))["qkv_proj"]
    assert bf16.bytes > 3.5 * qkv.bytes


def test_attention_kv_reads_grow_with_context():
    a = _ops(decode_ops("llama-3-8b", "bf16", 4, 1000))["attention"]
    b = _ops(decode_ops("llama-3-8b", "bf16", 4, 2000))["attention"]
    kv_bytes_per_token = 4 * 2 * 8 * 128 * 2.0  # batch * (K,V) * kv heads * head_dim * bf16
    assert b.read_bytes - a.read_bytes == pytest.approx(1000 * kv_bytes_per_token)
    fp8 = _ops(decode_ops("llama-3-8b", "bf16", 4, 2000, kv_cache_dtype="fp8"))["attention"]
    assert fp8.read_bytes < b.read_bytes


def test_prefill_attention_is_causal_and_lm_head_only_last_token():
    ops = _ops(prefill_ops("llama-2-7b", "bf16", batch=2, input_len=1024))
    att = ops["attention"]
    assert att.matrix_flops == pytest.approx(4.0 * 2 * 32 * 128 * 1024 * 1025 / 2)
    assert ops["lm_head"].m == 2 and ops["qkv_proj"].m == 2048


def test_tensor_parallel_shards_and_allreduces():
    ops = decode_ops("llama-2-70b", "fp8", batch=16, context_len=512, tp=8)
    names = [o.name for o in ops]
    assert names.count("attn_allreduce") == 1 and names.count("mlp_allreduce") == 1
    d = _ops(ops)
    assert d["gate_up_proj"].n == 2 * 28672 // 8 and d["down_proj"].k == 28672 // 8
    assert d["qkv_proj"].n == (64 // 8 + 2 * 1) * 128
    assert d["attn_allreduce"].link_bytes == 16 * 8192 * 2.0
    assert "attn_allreduce" not in [o.name for o in decode_ops("llama-2-70b", "fp8", 16, 512, tp=1)]


def test_memory_footprint():
    m = load_model("llama-2-7b")
    fp = memory_footprint(m, "bf16", batch=1, input_len=2048, output_len=128)
    assert fp.weights_bytes == pytest.approx(2 * m.num_parameters(), rel=1e-6)
    assert fp.kv_cache_bytes == 2 * 32 * 32 * 128 * 2176 * 2.0
    w4 = memory_footprint(m, "w4a8", 1, 2048, 128)
    assert w4.weights_bytes < 0.4 * fp.weights_bytes
    tp = memory_footprint("llama-2-70b", "bf16", 1, 128, 128, tp=8)
    assert tp.weights_bytes < memory_footprint("llama-2-70b", "bf16", 1, 128, 128).weights_bytes / 7


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheme"):
        decode_ops("llama-2-7b", "int3", 1, 10)
    with pytest.raises(ValueError, match="tp=3"):
        decode_ops("llama-2-7b", "bf16", 1, 10, tp=3)
    with pytest.raises(ValueError, match="batch"):
        decode_ops("llama-2-7b", "bf16", 0, 10)
    assert set(SCHEMES) == {"bf16", "fp8", "w4a16", "w4a8"}
