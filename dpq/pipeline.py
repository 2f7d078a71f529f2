"""The embedded default: SmolLM2-135M-Instruct (Q4_1-dequantized) with its tokenizer, from the asset cache.

Shared by the ``dpq`` CLI, scripts/eval_accuracy.py and the tests, so all of them run one protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpq.assets import asset_path
from dpq.gguf import GGUFFile
from dpq.model import LlamaModel
from dpq.tokenizer import BPETokenizer

MODEL_ASSET = ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_LABEL = "SmolLM2-135M-Instruct (Q4_1-dequantized)"


@dataclass(frozen=True)
class Protocol:
    """Sizes of one accuracy run (defaults: what results/accuracy.md was made with)."""

    calib_sequences: int = 64
    calib_tokens: int = 256
    ppl_window: int = 512
    ppl_windows: int = 8
    zero_shot_examples: int = 12
    zero_shot_max_tokens: int = 384
    seed: int = 0

    def __post_init__(self):
        for k in ("calib_sequences", "calib_tokens", "ppl_window", "ppl_windows", "zero_shot_max_tokens"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        if self.zero_shot_examples < 0:
            raise ValueError(f"zero_shot_examples must be >= 0, got {self.zero_shot_examples}")


def load_default_model() -> tuple[LlamaModel, BPETokenizer]:
    """The embedded model and its tokenizer; AssetMissingError (saying how to fetch) when not cached."""
    path = asset_path(*MODEL_ASSET)
    model = LlamaModel.from_gguf(path)
    model.name = MODEL_LABEL
    return model, BPETokenizer.from_gguf(GGUFFile(path))
