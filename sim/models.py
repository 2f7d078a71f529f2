"""Decoder-only transformer architectures (Llama family and relatives) as package data: sim/models/<name>.yaml.

All shipped models are pre-norm decoders with RMSNorm, rotary position embeddings, SwiGLU MLPs
(``down(silu(gate(x)) * up(x))``) and grouped-query attention (``num_key_value_heads`` <= heads).

Public API::

    load_model(name_or_path) -> ModelConfig
    list_models() -> list[str]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from sim.errors import ConfigError, describe_value

MODEL_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only model (no weights).

    head_dim defaults to hidden_size // num_attention_heads.
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool
    max_position_embeddings: int
    head_dim: int
    source: str = ""

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Per-layer linear weights as (out_features n, in_features k), QKV and gate/up fused, no parallelism."""
        return {
            "qkv_proj": (self.q_size + 2 * self.kv_size, self.hidden_size),
            "o_proj": (self.hidden_size, self.q_size),
            "gate_up_proj": (2 * self.intermediate_size, self.hidden_size),
            "down_proj": (self.hidden_size, self.intermediate_size),
        }

    def num_parameters(self) -> int:
        """Total parameters: linears, embeddings (and an untied lm_head), norms, QKV bias."""
        per_layer = sum(n * k for n, k in self.linear_shapes().values()) + 2 * self.hidden_size
        if self.attention_bias:
            per_layer += self.q_size + 2 * self.kv_size
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return self.num_layers * per_layer + embed + head + self.hidden_size


_INT_FIELDS = ("hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias")
_ALL_FIELDS = {"name", "family", "head_dim", *_INT_FIELDS, *_BOOL_FIELDS}


def list_models() -> list[str]:
    """Names of the shipped model configs, sorted."""
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


def load_model(name_or_path: str | Path) -> ModelConfig:
    """Load and validate a model config by shipped name (``"llama-2-7b"``) or YAML path."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
    else:
        path = MODEL_DIR / f"{text}.yaml"
        if not path.exists():
            raise ConfigError(text, "", f"unknown model; expected one of {list_models()} or a path to a .yaml file")
    if not path.exists():
        raise ConfigError(text, "", "model file not found")
    source = str(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    return parse_model(raw, source)


def parse_model(raw: dict, source: str) -> ModelConfig:
    """Validate a raw mapping into a ModelConfig; errors name the file, key, value and what was expected."""
    for key in raw:
        if key not in _ALL_FIELDS:
            raise ConfigError(source, str(key), f"unknown key; expected one of {sorted(_ALL_FIELDS)}")
    values = {}
    for key in ("name", "family"):
        v = raw.get(key)
        if not isinstance(v, str) or not v:
            raise ConfigError(source, key, f"value {describe_value(v)}: expected a non-empty string")
        values[key] = v
    for key in _INT_FIELDS:
        if key not in raw:
            raise ConfigError(source, key, "missing; expected a positive integer")
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(source, key, f"value {describe_value(v)}: expected a positive integer")
        values[key] = v
    for key in _BOOL_FIELDS:
        v = raw.get(key)
        if not isinstance(v, bool):
            raise ConfigError(source, key, f"value {describe_value(v)}: expected true or false")
        values[key] = v
    heads, kv_heads = values["num_attention_heads"], values["num_key_value_heads"]
    if heads % kv_heads:
        raise ConfigError(source, "num_key_value_heads",
                          f"value {kv_heads}: expected a divisor of num_attention_heads ({heads})")
    head_dim = raw.get("head_dim", values["hidden_size"] // heads)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        raise ConfigError(source, "head_dim", f"value {describe_value(head_dim)}: expected a positive integer")
    if "head_dim" not in raw and values["hidden_size"] % heads:
        raise ConfigError(source, "hidden_size", "not divisible by num_attention_heads; give head_dim explicitly")
    return ModelConfig(head_dim=head_dim, source=source, **values)
