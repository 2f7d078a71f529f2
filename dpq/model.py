"""Reference Llama-family decoder in numpy (float32), loaded from a GGUF file.

Llama block: x += W_o attn(RoPE(W_q n(x)), RoPE(W_k n(x)), W_v n(x)); x += W_down(silu(W_gate m(x)) * W_up m(x)),
n, m = RMSNorm; grouped-query attention; logits = RMSNorm(x) @ E^T (tied embeddings when the file has no
``output.weight``). Every linear is an object with ``__call__(x (N, in) float32) -> (N, out) float32`` held in
``DecoderLayer.linears`` so that a quantized linear (dpq.backends) can stand in for a float one.

llama.cpp's converter permutes the rows of W_q and W_k so that RoPE rotates adjacent pairs (2i, 2i+1); the
rotation here does the same, so the GGUF weights are used as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dpq.gguf import GGUFFile

LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Linears that read the same input share one Hessian / activation scale: group name -> members.
INPUT_GROUPS = {
    "attn_in": ("attn_q", "attn_k", "attn_v"),
    "attn_out": ("attn_output",),
    "mlp_in": ("ffn_gate", "ffn_up"),
    "mlp_down": ("ffn_down",),
}

# observer(layer_index, group_name, x (N, in) float32): sees the input of every linear group.
Observer = Callable[[int, str, np.ndarray], None]


@dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (read from GGUF ``llama.*`` keys)."""

    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "LlamaConfig":
        md = g.metadata
        arch = md.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{g.path}: general.architecture = {arch!r}: only 'llama' is supported")
        return cls(n_layers=int(md["llama.block_count"]), d_model=int(md["llama.embedding_length"]),
                   d_ff=int(md["llama.feed_forward_length"]), n_heads=int(md["llama.attention.head_count"]),
                   n_kv_heads=int(md["llama.attention.head_count_kv"]),
                   vocab_size=int(md.get("llama.vocab_size", len(md["tokenizer.ggml.tokens"]))),
                   rope_theta=float(md.get("llama.rope.freq_base", 10000.0)),
                   rms_eps=float(md["llama.attention.layer_norm_rms_epsilon"]),
                   context_length=int(md["llama.context_length"]))


class DenseLinear:
    """Float linear layer: y = x @ W^T. ``weight``: float32 (out_features, in_features)."""

    def __init__(self, weight: np.ndarray):
        w = np.ascontiguousarray(weight, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
        self.weight = w

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T


@dataclass
class DecoderLayer:
    """One block: RMSNorm weights (d_model,) float32 and the seven linears by name (LINEAR_NAMES)."""

    attn_norm: np.ndarray
    ffn_norm: np.ndarray
    linears: dict = field(default_factory=dict)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (..., d) float32 -> x / sqrt(mean(x^2) + eps) * weight."""
    var = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.float32(eps))) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (T, head_dim // 2) float32 for integer positions (T,)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of x (B, H, T, D) by the angles in cos/sin (T, D/2)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


class LlamaModel:
    """A Llama decoder on numpy. ``forward(ids (B, T) int) -> logits (B, T, vocab) float32``."""

    def __init__(self, config: LlamaConfig, embed: np.ndarray, layers: list[DecoderLayer], output_norm: np.ndarray,
                 lm_head: np.ndarray | None = None, name: str = "llama"):
        self.config = config
        self.embed = embed
        self.layers = layers
        self.output_norm = output_norm
        self.lm_head = embed if lm_head is None else lm_head
        self.name = name

    @classmethod
    def from_gguf(cls, path: str | Path) -> "LlamaModel":
        """Load and dequantize every tensor to float32 (Q4_1 -> d * q + m exactly)."""
        g = GGUFFile(path)
        cfg = LlamaConfig.from_gguf(g)
        layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            layers.append(DecoderLayer(attn_norm=g.get(p + "attn_norm.weight"), ffn_norm=g.get(p + "ffn_norm.weight"),
                                       linears={n: DenseLinear(g.get(p + n + ".weight")) for n in LINEAR_NAMES}))
        embed = g.get("token_embd.weight")
        lm_head = g.get("output.weight") if "output.weight" in g.tensors else None
        return cls(cfg, embed, layers, g.get("output_norm.weight"), lm_head,
                   name=str(g.metadata.get("general.name", Path(path).stem)))

    def with_layers(self, layers: list[DecoderLayer]) -> "LlamaModel":
        """A model sharing embeddings/head with this one but running ``layers``."""
        return LlamaModel(self.config, self.embed, layers, self.output_norm,
                          None if self.lm_head is self.embed else self.lm_head, self.name)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"token ids must be 2-D (batch, tokens), got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        return self.embed[ids]

    def forward_layer(self, index: int, x: np.ndarray, layer: DecoderLayer | None = None,
                      observer: Observer | None = None) -> np.ndarray:
        """Run block ``index`` (or ``layer`` in its place) on hidden states x (B, T, d) float32."""
        cfg = self.config
        layer = self.layers[index] if layer is None else layer
        lin = layer.linears
        B, T, d = x.shape
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads

        h = rms_norm(x, layer.attn_norm, cfg.rms_eps).reshape(B * T, d)
        if observer is not None:
            observer(index, "attn_in", h)
        q = lin["attn_q"](h).reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = lin["attn_k"](h).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        v = lin["attn_v"](h).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        cos, sin = rope_tables(np.arange(T), hd, cfg.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = nh // nkv
        q = q.reshape(B, nkv, rep * T, hd)  # heads sharing a kv head are stacked along the query axis
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(hd))
        scores = scores.reshape(B, nkv, rep, T, T)
        causal = np.triu(np.ones((T, T), dtype=bool), k=1)
        scores[..., causal] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = (scores.reshape(B, nkv, rep * T, T) @ v).reshape(B, nh, T, hd)
        attn = attn.transpose(0, 2, 1, 3).reshape(B * T, d)
        if observer is not None:
            observer(index, "attn_out", attn)
        x = x + lin["attn_output"](attn).reshape(B, T, d)

        h = rms_norm(x, layer.ffn_norm, cfg.rms_eps).reshape(B * T, d)
        if observer is not None:
            observer(index, "mlp_in", h)
        a = silu(lin["ffn_gate"](h)) * lin["ffn_up"](h)
        if observer is not None:
            observer(index, "mlp_down", a)
        return x + lin["ffn_down"](a).reshape(B, T, d)

    def hidden_states(self, ids: np.ndarray, observer: Observer | None = None) -> np.ndarray:
        """Final normalized hidden states (B, T, d) float32."""
        x = self.embed_tokens(ids)
        for i in range(len(self.layers)):
            x = self.forward_layer(i, x, observer=observer)
        return rms_norm(x, self.output_norm, self.config.rms_eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """(..., d) -> (..., vocab) float32 (the head stays in float: lm_head is not quantized)."""
        return hidden @ self.lm_head.T

    def forward(self, ids: np.ndarray) -> np.ndarray:
        return self.logits(self.hidden_states(ids))


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) for logits (N, V) float32 and targets (N,) int -> (N,) float64."""
    lg = logits.astype(np.float64)
    m = lg.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=-1))
    return lg[np.arange(len(targets)), targets] - lse
