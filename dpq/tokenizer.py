"""GPT-2 style byte-level BPE tokenizer built from a GGUF file's vocabulary and merges.

Text -> pre-tokenize (each digit on its own, then the GPT-2 split regex: contractions, optional space + letters,
optional space + numbers, optional space + punctuation, whitespace) -> UTF-8 bytes mapped to printable unicode
characters (the GPT-2 byte alphabet) -> merges applied lowest rank first -> token ids. This is the pre-tokenizer
GGUF calls ``smollm`` (and ``gpt2`` without the digit split). Special tokens inside the text are not parsed:
evaluation text is plain text.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

try:
    import regex as _regex
except ImportError:  # pragma: no cover - exercised only when the eval extra is missing
    _regex = None

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRE_TOKENIZERS = {"gpt2": False, "smollm": True}  # name -> digits split one by one first


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class BPETokenizer:
    """Byte-level BPE. ``encode(text) -> list[int]``, ``decode(ids) -> str``.

    Args:
        tokens: vocabulary, index = token id.
        merges: "left right" strings, rank = position.
        pre: GGUF pre-tokenizer name, ``smollm`` or ``gpt2``.
        bos_id / eos_id: special ids (None if absent).
    """

    def __init__(self, tokens: list[str], merges: list[str], *, pre: str = "gpt2", bos_id: int | None = None,
                 eos_id: int | None = None):
        if _regex is None:
            raise ImportError("the tokenizer needs the 'regex' package (Unicode classes \\p{L}, \\p{N}): "
                              "pip install -e '.[eval]'")
        if pre not in _PRE_TOKENIZERS:
            raise ValueError(f"pre-tokenizer {pre!r} not supported (expected one of {sorted(_PRE_TOKENIZERS)})")
        self.tokens = list(tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.merge_ranks = {}
        for rank, m in enumerate(merges):
            left, _, right = m.partition(" ")
            self.merge_ranks[(left, right)] = rank
        self.split_digits = _PRE_TOKENIZERS[pre]
        self._split = _regex.compile(_GPT2_SPLIT)
        self._digits = _regex.compile(r"\p{N}")
        self.bos_id, self.eos_id = bos_id, eos_id
        self._b2u = byte_to_unicode()
        self._u2b = {u: b for b, u in self._b2u.items()}
        self._bpe_cached = lru_cache(maxsize=65536)(self._bpe)

    @classmethod
    def from_gguf(cls, gguf) -> "BPETokenizer":
        """Build from an opened ``dpq.gguf.GGUFFile`` (keys ``tokenizer.ggml.*``)."""
        md = gguf.metadata
        model = md.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{gguf.path}: tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') is "
                             f"supported")
        return cls(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"],
                   pre=md.get("tokenizer.ggml.pre", "gpt2"),
                   bos_id=md.get("tokenizer.ggml.bos_token_id"), eos_id=md.get("tokenizer.ggml.eos_token_id"))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def pretokenize(self, text: str) -> list[str]:
        """Split text into the pieces BPE works on independently."""
        pieces = []
        chunks = [text]
        if self.split_digits:
            chunks = []
            last = 0
            for m in self._digits.finditer(text):
                if m.start() > last:
                    chunks.append(text[last:m.start()])
                chunks.append(m.group())
                last = m.end()
            if last < len(text):
                chunks.append(text[last:])
        for chunk in chunks:
            pieces.extend(self._split.findall(chunk))
        return pieces

    def _bpe(self, word: str) -> tuple[int, ...]:
        parts = list(word)
        ranks = self.merge_ranks
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        try:
            return tuple(self.token_to_id[p] for p in parts)
        except KeyError as e:
            raise ValueError(f"BPE produced a piece {e.args[0]!r} missing from the vocabulary") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in self.pretokenize(text):
            mapped = "".join(self._b2u[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe_cached(mapped))
        return ids

    def decode(self, ids) -> str:
        """Text of ``ids`` (inverse of encode for any UTF-8 text)."""
        data = bytearray()
        for i in np.asarray(ids, dtype=np.int64).tolist():
            tok = self.tokens[i]
            if all(ch in self._u2b for ch in tok):
                data.extend(self._u2b[ch] for ch in tok)
            else:  # special / control tokens are stored verbatim
                data.extend(tok.encode("utf-8"))
        return data.decode("utf-8", errors="replace")
