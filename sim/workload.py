"""Model + quantization scheme + batch/lengths + tensor parallelism -> the operations one device runs per step.

Shapes follow a serving engine with fused QKV and gate/up projections, fused residual-add + RMSNorm, fused RoPE +
KV-cache write, flash attention, and logits for the last token of each sequence only. For the FP8 schemes every
linear's input is quantized to FP8 inside the kernel that produces it (norm, attention, SiLU-multiply). Embedding and lm_head stay BF16 in every scheme.

Schemes (``SCHEMES``):
- ``bf16``  : BF16 weights and activations, BF16 matrix math.
- ``fp8``   : W8A8, FP8 E4M3 weights (per-tensor scale) and activations (static per-tensor scale), FP8 math.
- ``w4a16`` : INT4 weights, asymmetric, groups of 128 (scale + zero per group), expanded to BF16; BF16 math.
- ``w4a8``  : DPQ: INT4 g128 weights expanded to FP8 E4M3, FP8 activations, FP8 math.

Tensor parallelism (Megatron-style): QKV and gate/up split by columns, o and down by rows, an all-reduce of the
hidden state after o_proj and after down_proj; KV heads split (replicated when fewer than ``tp``); vocabulary split.

Public API::

    SCHEMES, get_scheme(name) -> Scheme
    prefill_ops(model, scheme, batch, input_len, tp=1, kv_cache_dtype="bf16") -> list[Op]
    decode_ops(model, scheme, batch, context_len, tp=1, kv_cache_dtype="bf16") -> list[Op]
    memory_footprint(model, scheme, batch, input_len, output_len, tp=1, kv_cache_dtype="bf16") -> MemoryFootprint
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.models import ModelConfig, load_model

GROUP_SIZE = 128
_BYTES = {"bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class Scheme:
    """A weight/activation quantization scheme as the performance model sees it.

    weight_bytes_per_element includes group metadata (INT4 g128: 0.5 B + (2 B scale + 0.5 B zero) / 128).
    """

    name: str
    matrix_dtype: str            # dtype of the matrix-engine operands: "bf16" or "fp8"
    weight_bits: int
    weight_bytes_per_element: float
    activation_bytes_per_element: float
    dequant: bool                # INT4 weights that must be expanded before the matrix engine can use them

    @property
    def expanded_weight_bytes_per_element(self) -> float:
        return _BYTES[self.matrix_dtype]


SCHEMES: dict[str, Scheme] = {
    "bf16": Scheme("bf16", "bf16", 16, 2.0, 2.0, False),
    "fp8": Scheme("fp8", "fp8", 8, 1.0, 1.0, False),
    "w4a16": Scheme("w4a16", "bf16", 4, 0.5 + 2.5 / GROUP_SIZE, 2.0, True),
    "w4a8": Scheme("w4a8", "fp8", 4, 0.5 + 2.5 / GROUP_SIZE, 1.0, True),
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r}: expected one of {sorted(SCHEMES)}")
    return SCHEMES[scheme]


@dataclass(frozen=True)
class Op:
    """One kernel of a forward step on one device.

    kind: "gemm" (m x k activations times an n x k weight), "attention", "elementwise", "allreduce".
    scope: "layer" (runs once per decoder layer: ``repeat`` = num_layers) or "model" (once per step).
    read_bytes / write_bytes: HBM traffic of non-GEMM ops (a GEMM's bytes follow from m, n, k and the dtypes).
    matrix_flops / vector_flops: work on the matrix engine / vector units; link_bytes: all-reduce message size.
    """

    name: str
    kind: str
    scope: str
    repeat: int
    m: int = 0
    n: int = 0
    k: int = 0
    matrix_dtype: str = "bf16"
    weight_bytes_per_element: float = 0.0
    activation_bytes_per_element: float = 2.0
    dequant: bool = False
    read_bytes: float = 0.0
    write_bytes: float = 0.0
    matrix_flops: float = 0.0
    vector_flops: float = 0.0
    link_bytes: float = 0.0
    tp: int = 1

    @property
    def flops(self) -> float:
        if self.kind == "gemm":
            return 2.0 * self.m * self.n * self.k
        return self.matrix_flops + self.vector_flops

    @property
    def bytes(self) -> float:
        """Minimum HBM bytes (each input read once, each output written once)."""
        if self.kind == "gemm":
            return (self.m * self.k * self.activation_bytes_per_element + self.n * self.k *
                    self.weight_bytes_per_element + self.m * self.n * 2.0)
        return self.read_bytes + self.write_bytes


@dataclass(frozen=True)
class MemoryFootprint:
    """Device-memory use of one device, bytes."""

    weights_bytes: float
    kv_cache_bytes: float
    workspace_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes


def _check_args(model: ModelConfig, batch: int, tokens: int, tp: int, kv_cache_dtype: str, what: str) -> None:
    for name, value in (("batch", batch), (what, tokens), ("tp", tp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    if model.num_attention_heads % tp or model.intermediate_size % tp:
        raise ValueError(f"tp={tp}: must divide num_attention_heads ({model.num_attention_heads}) and "
                         f"intermediate_size ({model.intermediate_size}) of {model.name}")
    if kv_cache_dtype not in _BYTES:
        raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r}: expected one of {sorted(_BYTES)}")


def _kv_heads_per_device(model: ModelConfig, tp: int) -> int:
    return max(1, model.num_key_value_heads // tp)


def _layer_ops(model: ModelConfig, s: Scheme, m: int, batch: int, q_len: int, ctx: int, tp: int,
               kv_bytes: float, phase: str) -> list[Op]:
    """Ops of one decoder layer for m = batch * q_len new tokens attending to ctx tokens each."""
    h, d = model.hidden_size, model.head_dim
    heads = model.num_attention_heads // tp
    kvh = _kv_heads_per_device(model, tp)
    inter = model.intermediate_size // tp
    a = s.activation_bytes_per_element
    L = model.num_layers
    shapes = {
        "qkv_proj": ((heads + 2 * kvh) * d, h),
        "o_proj": (h, heads * d),
        "gate_up_proj": (2 * inter, h),
        "down_proj": (h, inter),
    }

    def gemm(name):
        n, k = shapes[name]
        return Op(name, "gemm", "layer", L, m=m, n=n, k=k, matrix_dtype=s.matrix_dtype,
                  weight_bytes_per_element=s.weight_bytes_per_element, activation_bytes_per_element=a,
                  dequant=s.dequant, tp=tp)

    def norm(name):  # residual add + RMSNorm (+ FP8 quantization of its output)
        return Op(name, "elementwise", "layer", L, m=m, read_bytes=2 * m * h * 2.0,
                  write_bytes=m * h * (2.0 + a), vector_flops=6.0 * m * h, tp=tp)

    if phase == "prefill":
        # causal flash attention: QK^T and PV over the lower triangle
        att_flops = 2.0 * 2.0 * batch * heads * d * (q_len * (q_len + 1) / 2.0)
        att_read = m * (heads + 2 * kvh) * d * 2.0
    else:
        att_flops = 4.0 * batch * heads * d * ctx
        att_read = m * heads * d * 2.0 + batch * ctx * 2 * kvh * d * kv_bytes
    ops = [
        norm("input_norm"),
        gemm("qkv_proj"),
        Op("rope_kv_write", "elementwise", "layer", L, m=m, read_bytes=m * (heads + 2 * kvh) * d * 2.0,
           write_bytes=m * heads * d * 2.0 + m * 2 * kvh * d * kv_bytes, vector_flops=6.0 * m * (heads + kvh) * d,
           tp=tp),
        Op("attention", "attention", "layer", L, m=m, n=ctx, k=d, matrix_dtype="bf16", read_bytes=att_read,
           write_bytes=m * heads * d * a, matrix_flops=att_flops,
           vector_flops=5.0 * batch * heads * (q_len * (q_len + 1) / 2.0 if phase == "prefill" else ctx), tp=tp),
        gemm("o_proj"),
    ]
    if tp > 1:
        ops.append(Op("attn_allreduce", "allreduce", "layer", L, m=m, link_bytes=m * h * 2.0, tp=tp))
    ops += [
        norm("post_attention_norm"),
        gemm("gate_up_proj"),
        Op("silu_mul", "elementwise", "layer", L, m=m, read_bytes=m * 2 * inter * 2.0, write_bytes=m * inter * a,
           vector_flops=6.0 * m * inter, tp=tp),
        gemm("down_proj"),
    ]
    if tp > 1:
        ops.append(Op("mlp_allreduce", "allreduce", "layer", L, m=m, link_bytes=m * h * 2.0, tp=tp))
    return ops


def _model_ops(model: ModelConfig, m: int, batch: int, tp: int) -> tuple[list[Op], list[Op]]:
    """Embedding (before the layers) and final norm + lm_head + sampling (after), BF16."""
    h, v = model.hidden_size, model.vocab_size // tp
    head = [
        Op("embedding", "elementwise", "model", 1, m=m, read_bytes=m * h * 2.0, write_bytes=m * h * 2.0, tp=tp),
    ]
    tail = [
        Op("final_norm", "elementwise", "model", 1, m=batch, read_bytes=2 * batch * h * 2.0,
           write_bytes=batch * h * 2.0, vector_flops=6.0 * batch * h, tp=tp),
        Op("lm_head", "gemm", "model", 1, m=batch, n=v, k=h, matrix_dtype="bf16", weight_bytes_per_element=2.0,
           activation_bytes_per_element=2.0, tp=tp),
        Op("sampling", "elementwise", "model", 1, m=batch, read_bytes=batch * v * 2.0, write_bytes=batch * 8.0,
           vector_flops=4.0 * batch * v, tp=tp),
    ]
    if tp > 1:
        tail.insert(2, Op("logits_gather", "allreduce", "model", 1, m=batch, link_bytes=batch * v * 2.0, tp=tp))
    return head, tail


def prefill_ops(model: ModelConfig | str, scheme: Scheme | str, batch: int, input_len: int, tp: int = 1,
                kv_cache_dtype: str = "bf16") -> list[Op]:
    """Ops of the prefill step: batch sequences of input_len tokens, processed together."""
    model, s = load_model(model), get_scheme(scheme)
    _check_args(model, batch, input_len, tp, kv_cache_dtype, "input_len")
    m = batch * input_len
    head, tail = _model_ops(model, m, batch, tp)
    return head + _layer_ops(model, s, m, batch, input_len, input_len, tp, _BYTES[kv_cache_dtype], "prefill") + tail


def decode_ops(model: ModelConfig | str, scheme: Scheme | str, batch: int, context_len: int, tp: int = 1,
               kv_cache_dtype: str = "bf16") -> list[Op]:
    """Ops of one decode step: one new token for each of batch sequences, each attending to context_len tokens."""
    model, s = load_model(model), get_scheme(scheme)
    _check_args(model, batch, context_len, tp, kv_cache_dtype, "context_len")
    head, tail = _model_ops(model, batch, batch, tp)
    return head + _layer_ops(model, s, batch, batch, 1, context_len, tp, _BYTES[kv_cache_dtype], "decode") + tail


def memory_footprint(model: ModelConfig | str, scheme: Scheme | str, batch: int, input_len: int, output_len: int,
                     tp: int = 1, kv_cache_dtype: str = "bf16", extra_workspace_bytes: float = 0.0,
                     prefill_batch: int | None = None) -> MemoryFootprint:
    """Weights, KV cache (for input_len + output_len tokens per sequence) and activation workspace per device.

    prefill_batch: sequences prefilled together in one step (default: all ``batch``); sizes the workspace.
    """
    model, s = load_model(model), get_scheme(scheme)
    _check_args(model, batch, input_len, tp, kv_cache_dtype, "input_len")
    if isinstance(output_len, bool) or not isinstance(output_len, int) or output_len < 0:
        raise ValueError(f"output_len={output_len!r}: expected a non-negative integer")
    prefill_batch = batch if prefill_batch is None else min(prefill_batch, batch)
    linear = sum(n * k for n, k in model.linear_shapes().values()) / tp
    embed = model.vocab_size * model.hidden_size * 2.0 / tp
    weights = model.num_layers * (linear * s.weight_bytes_per_element + 2 * model.hidden_size * 2.0)
    weights += embed * (1 if model.tie_word_embeddings else 2) + model.hidden_size * 2.0
    kv = (2.0 * model.num_layers * _kv_heads_per_device(model, tp) * model.head_dim * batch
          * (input_len + output_len) * _BYTES[kv_cache_dtype])
    m = prefill_batch * input_len
    widest = max((model.num_attention_heads + 2 * model.num_key_value_heads) * model.head_dim,
                 2 * model.intermediate_size) / tp
    workspace = m * (widest + 2 * model.hidden_size) * 2.0 + batch * model.vocab_size / tp * 4.0
    return MemoryFootprint(weights, kv, workspace + extra_workspace_bytes)
