"""Reader for GGUF model files (llama.cpp's container) and dequantizers for the tensor types we meet.

GGUF v2/v3 layout (little endian): magic ``b"GGUF"``, uint32 version, uint64 tensor count, uint64 metadata count,
metadata key/value pairs, tensor descriptors (name, dims, type, offset), padding to ``general.alignment``
(default 32), then the tensor data. GGUF lists dims fastest-varying first, so a dims entry ``(in, out)`` is the
numpy array of shape ``(out, in)``.

Only reading is supported; the data section is memory-mapped, so opening a 100 MB file costs nothing until a
tensor is dequantized.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import DpqsimError

GGUF_MAGIC = b"GGUF"

# ggml tensor type ids (ggml.h) for the types this reader dequantizes.
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q4_1 = 3
GGML_TYPE_Q8_0 = 8
GGML_TYPE_Q6_K = 14
GGML_TYPE_BF16 = 30

GGML_TYPE_NAMES = {
    GGML_TYPE_F32: "F32", GGML_TYPE_F16: "F16", GGML_TYPE_Q4_0: "Q4_0", GGML_TYPE_Q4_1: "Q4_1",
    GGML_TYPE_Q8_0: "Q8_0", GGML_TYPE_Q6_K: "Q6_K", GGML_TYPE_BF16: "BF16",
}

# (elements per block, bytes per block)
_BLOCK_LAYOUT = {
    GGML_TYPE_F32: (1, 4),
    GGML_TYPE_F16: (1, 2),
    GGML_TYPE_BF16: (1, 2),
    GGML_TYPE_Q4_0: (32, 18),  # fp16 d, 16 bytes of nibbles
    GGML_TYPE_Q4_1: (32, 20),  # fp16 d, fp16 m, 16 bytes of nibbles
    GGML_TYPE_Q8_0: (32, 34),  # fp16 d, 32 int8
    GGML_TYPE_Q6_K: (256, 210),  # 128 B low nibbles, 64 B high 2 bits, 16 int8 scales, fp16 d
}

# GGUF metadata value types
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_TYPE_STRING = 8
_TYPE_ARRAY = 9


class GGUFError(DpqsimError, ValueError):
    """A GGUF file is malformed, truncated or uses a tensor type this reader does not know."""


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor descriptor: ``shape`` in numpy order (slowest first), ggml type id, byte offset into data."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        per_block, block_bytes = _BLOCK_LAYOUT[self.ggml_type]
        return self.n_elements // per_block * block_bytes


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated header at byte {self.pos} (wanted {n} more bytes, file has "
                            f"{len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _TYPE_STRING:
            return self.string()
        if vtype == _TYPE_ARRAY:
            etype = self.scalar("<I")
            n = self.scalar("<Q")
            if etype in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[etype]
                size = struct.calcsize(fmt)
                return np.frombuffer(self.take(n * size), dtype=np.dtype(fmt)).copy()
            return [self.value(etype) for _ in range(n)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")


class GGUFFile:
    """An opened GGUF file: ``metadata`` (dict key -> value) and ``tensors`` (dict name -> GGUFTensorInfo).

    ``get(name)`` returns the tensor dequantized to float32 with its numpy shape; ``raw(name)`` the stored bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: GGUF file not found")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._mm), str(self.path))
        if bytes(cur.take(4)) != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic bytes are not 'GGUF')")
        self.version = cur.scalar("<I")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version} not supported (expected 2 or 3)")
        n_tensors = cur.scalar("<Q")
        n_kv = cur.scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            ggml_type = cur.scalar("<I")
            offset = cur.scalar("<Q")
            infos.append(GGUFTensorInfo(name, tuple(int(d) for d in reversed(dims)), ggml_type, int(offset)))
        alignment = int(self.metadata.get("general.alignment", 32))
        self.data_offset_bytes = (cur.pos + alignment - 1) // alignment * alignment
        self.tensors = {t.name: t for t in infos}
        for t in infos:
            if t.ggml_type not in _BLOCK_LAYOUT:
                continue  # reported when (if) the tensor is read
            end = self.data_offset_bytes + t.offset_bytes + t.n_bytes
            if end > len(self._mm):
                raise GGUFError(f"{self.path}: tensor {t.name!r} ends at byte {end} but the file has "
                                f"{len(self._mm)} bytes (truncated file)")

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name``, uint8 (n_bytes,), a read-only view of the file."""
        info = self._info(name)
        start = self.data_offset_bytes + info.offset_bytes
        return self._mm[start:start + info.n_bytes]

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32, numpy shape ``info.shape``."""
        info = self._info(name)
        flat = dequantize(self.raw(name), info.ggml_type, info.n_elements)
        return flat.reshape(info.shape)

    def _info(self, name: str) -> GGUFTensorInfo:
        try:
            info = self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None
        if info.ggml_type not in _BLOCK_LAYOUT:
            raise GGUFError(f"{self.path}: tensor {name!r} has ggml type {info.ggml_type}, which this reader "
                            f"cannot dequantize (supported: {sorted(GGML_TYPE_NAMES.values())})")
        return info


def dequantize(raw: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """Dequantize ``raw`` (uint8 bytes) of a ggml tensor type to float32 (n_elements,)."""
    raw = np.asarray(raw, dtype=np.uint8)
    if ggml_type == GGML_TYPE_F32:
        return raw.view("<f4").astype(np.float32)
    if ggml_type == GGML_TYPE_F16:
        return raw.view("<f2").astype(np.float32)
    if ggml_type == GGML_TYPE_BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if ggml_type == GGML_TYPE_Q4_1:
        return _dequantize_q4_1(raw, n_elements)
    if ggml_type == GGML_TYPE_Q4_0:
        return _dequantize_q4_0(raw, n_elements)
    if ggml_type == GGML_TYPE_Q8_0:
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].copy().view("<f2").astype(np.float32)
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)[:n_elements]
    if ggml_type == GGML_TYPE_Q6_K:
        return _dequantize_q6_k(raw, n_elements)
    raise GGUFError(f"ggml type {ggml_type} cannot be dequantized (supported: {sorted(GGML_TYPE_NAMES.values())})")


def q4_1_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split Q4_1 bytes into (d float32 (B,), m float32 (B,), q uint8 (B, 32)): value = d * q + m.

    Within a block, byte j holds element j in its low nibble and element j + 16 in its high nibble.
    """
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, 20)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)[:, 0]
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)[:, 0]
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    return d, m, q


def _dequantize_q4_1(raw: np.ndarray, n_elements: int) -> np.ndarray:
    d, m, q = q4_1_blocks(raw)
    return (d[:, None] * q.astype(np.float32) + m[:, None]).reshape(-1)[:n_elements]


def _dequantize_q4_0(raw: np.ndarray, n_elements: int) -> np.ndarray:
    blocks = raw.reshape(-1, 18)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (d * q).reshape(-1)[:n_elements]


def _dequantize_q6_k(raw: np.ndarray, n_elements: int) -> np.ndarray:
    blocks = raw.reshape(-1, 210)
    ql = blocks[:, 0:128].astype(np.int32)
    qh = blocks[:, 128:192].astype(np.int32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = blocks[:, 208:210].copy().view("<f2").astype(np.float32)
    out = np.empty((blocks.shape[0], 256), dtype=np.float32)
    for half in range(2):  # two halves of 128 values
        l_ = ql[:, 64 * half:64 * half + 64]
        h_ = qh[:, 32 * half:32 * half + 32]
        s_ = sc[:, 8 * half:8 * half + 8]
        base = 128 * half
        for l in range(32):
            is_ = l // 16
            q1 = ((l_[:, l] & 0xF) | (((h_[:, l] >> 0) & 3) << 4)) - 32
            q2 = ((l_[:, l + 32] & 0xF) | (((h_[:, l] >> 2) & 3) << 4)) - 32
            q3 = ((l_[:, l] >> 4) | (((h_[:, l] >> 4) & 3) << 4)) - 32
            q4 = ((l_[:, l + 32] >> 4) | (((h_[:, l] >> 6) & 3) << 4)) - 32
            out[:, base + l] = d[:, 0] * s_[:, is_ + 0] * q1
            out[:, base + l + 32] = d[:, 0] * s_[:, is_ + 2] * q2
            out[:, base + l + 64] = d[:, 0] * s_[:, is_ + 4] * q3
            out[:, base + l + 96] = d[:, 0] * s_[:, is_ + 6] * q4
    return out.reshape(-1)[:n_elements]
