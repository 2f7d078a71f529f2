"""A BERT encoder in numpy (all-MiniLM-L6-v2: genuine fp32 weights) and layer-level SQNR of quantization methods.

The decoder we evaluate end to end ships already on a 4-bit grid (Q4_1); this encoder's weights are plain fp32,
so it shows how each method treats float weights with real activations. Protocol of ``layer_sqnr``: Wikipedia
sentences from the calibration half give each linear's Hessian and activation max; sentences from the evaluation
half give held-out inputs X; per linear, SQNR = 20 log10(||Y|| / ||Y - Y_q||) with Y = X W^T + b from the float
layer and Y_q from the quantized layer on the reference backend (FP8 activations for A8 methods). Layers are
quantized independently, each on the float model's inputs.
"""

from __future__ import annotations

import json
import struct
import unicodedata
from pathlib import Path

import numpy as np

from dpq.assets import asset_path

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense")
ENCODER_GROUPS = {"attn_in": ENCODER_LINEARS[:3], "attn_out": ("attention.output.dense",),
                  "ffn_in": ("intermediate.dense",), "ffn_out": ("output.dense",)}


def read_safetensors(path: str | Path) -> dict:
    """name -> numpy array for a .safetensors file (8-byte header length, JSON header, raw data)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} exceeds the file size (truncated file)")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {spec['dtype']} (supported: "
                             f"{sorted(_SAFETENSORS_DTYPES)})")
        a, b = spec["data_offsets"]
        if base + b > len(data):
            raise ValueError(f"{path}: tensor {name!r} runs past the end of the file (truncated file)")
        out[name] = np.frombuffer(data[base + a:base + b], dtype=_SAFETENSORS_DTYPES[spec["dtype"]]).reshape(
            spec["shape"]).copy()
    return out


class WordPieceTokenizer:
    """BERT uncased tokenization: lower-case, strip accents, split on whitespace/punctuation, greedy WordPiece."""

    def __init__(self, vocab: list[str], max_chars_per_word: int = 100):
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.max_chars = max_chars_per_word
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def basic_tokens(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words, cur = [], []
        for ch in text:
            if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf"):
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif self._is_punct(ch) or 0x4E00 <= ord(ch) <= 0x9FFF:
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def encode(self, text: str, max_tokens: int = 128) -> list[int]:
        """[CLS] pieces [SEP], truncated to max_tokens."""
        ids = [self.cls]
        for word in self.basic_tokens(text):
            if len(word) > self.max_chars:
                ids.append(self.unk)
                continue
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = ("##" if start else "") + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.unk]
                    break
                start = end
            ids.extend(pieces)
        return ids[:max_tokens - 1] + [self.sep]


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below float32 resolution near 1), float32."""
    x64 = x.astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x64))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x64) * (1.0 - poly * np.exp(-x64 * x64))).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as BERT uses it."""
    return 0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))


class BertEncoder:
    """BERT encoder (post-LN). ``forward(ids (B, T), observer)`` -> hidden (B, T, d) float32.

    ``observer(layer, group, x (N, in))`` sees each linear group's input (groups: ENCODER_GROUPS);
    ``linears[layer][name]`` are callables x (N, in) -> (N, out) without bias; ``biases[layer][name]`` (out,).
    """

    def __init__(self, tensors: dict, config: dict):
        self.cfg = config
        self.t = tensors
        self.n_layers = int(config["num_hidden_layers"])
        self.n_heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        from dpq.model import DenseLinear

        self.linears = [{n: DenseLinear(tensors[f"encoder.layer.{i}.{n}.weight"]) for n in ENCODER_LINEARS}
                        for i in range(self.n_layers)]
        self.biases = [{n: tensors[f"encoder.layer.{i}.{n}.bias"] for n in ENCODER_LINEARS}
                       for i in range(self.n_layers)]

    @classmethod
    def from_assets(cls) -> tuple["BertEncoder", WordPieceTokenizer]:
        st = read_safetensors(asset_path("minilm", "model.safetensors"))
        cfg = json.loads(asset_path("minilm", "config.json").read_text())
        vocab = asset_path("minilm", "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab = vocab[:-1]  # trailing newline; line number = token id
        return cls(st, cfg), WordPieceTokenizer(vocab)

    def forward(self, ids: np.ndarray, mask: np.ndarray, observer=None) -> np.ndarray:
        t = self.t
        B, T = ids.shape
        x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:T] + \
            t["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], self.eps)
        d = x.shape[-1]
        hd = d // self.n_heads
        neg = np.where(mask[:, None, None, :], 0.0, -1e9).astype(np.float32)
        valid = mask.reshape(-1)
        for i in range(self.n_layers):
            lin, bias = self.linears[i], self.biases[i]

            def run(name, h):
                return lin[name](h) + bias[name]
            h = x.reshape(B * T, d)
            if observer is not None:
                observer(i, "attn_in", h[valid])
            q = run("attention.self.query", h).reshape(B, T, self.n_heads, hd).transpose(0, 2, 1, 3)
            k = run("attention.self.key", h).reshape(B, T, self.n_heads, hd).transpose(0, 2, 1, 3)
            v = run("attention.self.value", h).reshape(B, T, self.n_heads, hd).transpose(0, 2, 1, 3)
            s = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + neg
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(B * T, d)
            if observer is not None:
                observer(i, "attn_out", a[valid])
            x = layer_norm(x + run("attention.output.dense", a).reshape(B, T, d),
                           t[f"encoder.layer.{i}.attention.output.LayerNorm.weight"],
                           t[f"encoder.layer.{i}.attention.output.LayerNorm.bias"], self.eps)
            h = x.reshape(B * T, d)
            if observer is not None:
                observer(i, "ffn_in", h[valid])
            f = gelu(run("intermediate.dense", h))
            if observer is not None:
                observer(i, "ffn_out", f[valid])
            x = layer_norm(x + run("output.dense", f).reshape(B, T, d),
                           t[f"encoder.layer.{i}.output.LayerNorm.weight"],
                           t[f"encoder.layer.{i}.output.LayerNorm.bias"], self.eps)
        return x


def sentence_batches(tokenizer: WordPieceTokenizer, split: str, n_sentences: int, max_tokens: int = 128):
    """(ids int64 (n, T), mask bool (n, T)) of the first n Wikipedia paragraphs of a split, right-padded."""
    from dpq.data import load_documents, split_documents

    paras = []
    for doc in split_documents(load_documents("wiki"), split):
        paras.extend(p for p in doc.split("\n") if len(p) > 80)
        if len(paras) >= n_sentences:
            break
    seqs = [tokenizer.encode(p, max_tokens) for p in paras[:n_sentences]]
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = True
    return ids, mask


def collect_inputs(encoder: BertEncoder, ids: np.ndarray, mask: np.ndarray) -> dict:
    """(layer, group) -> stacked inputs float32 (tokens, in) of the float encoder."""
    acts: dict = {}
    encoder.forward(ids, mask, observer=lambda i, g, h: acts.setdefault((i, g), []).append(h.copy()))
    return {k: np.concatenate(v) for k, v in acts.items()}


def layer_sqnr(encoder: BertEncoder, calib_inputs: dict, eval_inputs: dict, configs: list) -> list[dict]:
    """Per method config and linear: output SQNR (dB) on held-out inputs. Rows: method, bits, group, layer, sqnr_db."""
    from dpq.backends import ReferenceLinear
    from dpq.gptq import HessianAccumulator
    from dpq.methods import quantize_linears, with_act_scale
    from dpq.quantizers import sqnr_db

    rows = []
    for cfg in configs:
        for i in range(encoder.n_layers):
            for group, names in ENCODER_GROUPS.items():
                xc, xe = calib_inputs[(i, group)], eval_inputs[(i, group)]
                acc = HessianAccumulator(xc.shape[1])
                acc.add(xc)
                weights = {n: encoder.linears[i][n].weight for n in names}
                packed = quantize_linears(weights, acc.hessian if cfg.uses_hessian else None, cfg)
                for n in names:
                    p = with_act_scale(packed[n], acc.absmax, cfg)
                    y = xe @ weights[n].T
                    yq = ReferenceLinear(p)(xe)
                    rows.append({"method": cfg.method, "weight_bits": getattr(cfg, "weight_bits", 8),
                                 "group_size": cfg.group_size, "layer": f"{i}.{n}", "sqnr_db": sqnr_db(y, yq)})
    return rows
