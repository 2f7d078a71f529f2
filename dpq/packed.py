"""Packed quantized linear layers (the W4A8 checkpoint) and their single-file container.

One format for every method; every backend (reference, emulated, torch) reads it unchanged.

``PackedLinear`` fields (out = out_features, in = in_features, G = in / group_size):

=================  ==============  =============  ================================================================
field              dtype           shape          meaning
=================  ==============  =============  ================================================================
name               str             -              e.g. ``blk.3.attn_q``
in_features        int             -              columns of W
out_features       int             -              rows of W
weight_bits        int             -              3 or 4 (INT codes) or 8 (FP8 codes)
group_size         int             -              columns per group (``in`` for FP8 weights: one "group" per row)
weight_encoding    str             -              ``int_asym``: codes q in [0, 2^bits - 1] with zero points;
                                                  ``fp8``: codes are FP8 bit patterns of W / s_t in ``fp8_format``
expansion          str             -              int_asym only: ``fp8`` -> the kernel multiplies FP8(s_g (q - z))
                                                  (W4A8); ``float`` -> it multiplies s_g (q - z) in 16-bit float
                                                  (W4A16); ``none`` for fp8 weights
codes              uint8           (out, in / 2)  int_asym: two codes per byte, column 2j in the low nibble and 2j+1
                                                  in the high nibble (INT3 codes use the same 4-bit slots)
                                   (out, in)      fp8: one FP8 code per byte
group_scales       float32         (out, G)       s_g, in the FP8 domain (W ~ s_t * s_g * (q - z)); (out, 0) for fp8
zeros              uint8           (out, G)       integer zero point z in [0, 2^bits - 1]; (out, 0) for fp8
tensor_scale       float32         ()             s_t, one per tensor (1.0 for W4A16 methods); folds into the GEMM's
                                                  output scale
act_scale          float32         ()             s_x, static per-tensor activation scale (x8 = FP8(x / s_x));
                                                  NaN when activations stay in 16-bit float (A16 methods)
fp8_format         str             -              sim.formats name of the FP8 format of weights and activations
                                                  (``float8_e4m3`` Gaudi 2, ``float8_e4m3fn`` Gaudi 3 / Hopper),
                                                  ``""`` for A16 methods
=================  ==============  =============  ================================================================

Runtime (W4A8): w8 = FP8(s_g (q - z)); x8 = FP8(x / s_x); y = (x8 @ w8^T) * (s_x * s_t).

File container (``save_checkpoint``/``load_checkpoint``): magic ``b"DPQCKPT\\0"``, uint32 format version, uint64
header length, a UTF-8 JSON header (metadata, and for every array its name, dtype, shape, byte offset and length,
plus the sha256 of the payload), then the payload of raw little-endian arrays. Loading checks magic, version, sizes
and the hash, so a truncated or tampered file fails with a message naming the file and the problem. Saving writes
to a temporary file and renames it, so nothing is left half-written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.errors import DpqsimError

FORMAT_VERSION = 1
MAGIC = b"DPQCKPT\0"
WEIGHT_ENCODINGS = ("int_asym", "fp8")
EXPANSIONS = ("fp8", "float", "none")


class CheckpointError(DpqsimError, ValueError):
    """A checkpoint file is truncated, tampered with, or of an unknown version."""


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8-valued codes (out, in) in [0, 15], in even -> uint8 (out, in / 2), low nibble = even column."""
    c = np.asarray(codes)
    if c.shape[1] % 2:
        raise ValueError(f"in_features must be even to pack two codes per byte, got {c.shape[1]}")
    c = c.astype(np.uint8)
    if c.max(initial=0) > 15:
        raise ValueError("codes must lie in [0, 15] to pack as nibbles")
    return (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 (out, in / 2) -> uint8 codes (out, in)."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = p & 0x0F
    out[:, 1::2] = p >> 4
    return out


@dataclass(frozen=True)
class PackedLinear:
    """One quantized linear layer; see the module docstring for every field's dtype and shape."""

    name: str
    in_features: int
    out_features: int
    weight_bits: int
    group_size: int
    weight_encoding: str
    expansion: str
    codes: np.ndarray = field(repr=False)
    group_scales: np.ndarray = field(repr=False)
    zeros: np.ndarray = field(repr=False)
    tensor_scale: float
    act_scale: float
    fp8_format: str

    def __post_init__(self):
        self.validate()

    @property
    def quantizes_activations(self) -> bool:
        return not math.isnan(self.act_scale)

    def validate(self) -> None:
        """Raise CheckpointError if fields disagree with each other (shapes, dtypes, ranges)."""
        def bad(msg):
            raise CheckpointError(f"packed linear {self.name!r}: {msg}")
        o, i = self.out_features, self.in_features
        if self.weight_encoding not in WEIGHT_ENCODINGS:
            bad(f"weight_encoding {self.weight_encoding!r} (expected one of {WEIGHT_ENCODINGS})")
        if self.expansion not in EXPANSIONS:
            bad(f"expansion {self.expansion!r} (expected one of {EXPANSIONS})")
        if self.group_size <= 0 or i % self.group_size:
            bad(f"group_size {self.group_size} does not divide in_features {i}")
        for fname, arr, dtype in (("codes", self.codes, np.uint8), ("group_scales", self.group_scales, np.float32),
                                  ("zeros", self.zeros, np.uint8)):
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                bad(f"{fname} must be a numpy {np.dtype(dtype).name} array, got "
                    f"{getattr(arr, 'dtype', type(arr).__name__)}")
        if self.weight_encoding == "int_asym":
            if self.weight_bits not in (2, 3, 4):
                bad(f"weight_bits {self.weight_bits} (int_asym supports 2, 3, 4)")
            if self.expansion == "none":
                bad("int_asym weights need expansion 'fp8' or 'float'")
            g = i // self.group_size
            if self.codes.shape != (o, i // 2):
                bad(f"codes shape {self.codes.shape}, expected {(o, i // 2)}")
            if self.group_scales.shape != (o, g) or self.zeros.shape != (o, g):
                bad(f"group_scales/zeros shapes {self.group_scales.shape}/{self.zeros.shape}, expected {(o, g)}")
            if self.zeros.max(initial=0) > (1 << self.weight_bits) - 1:
                bad(f"zero points exceed {(1 << self.weight_bits) - 1}")
            if not np.all(np.isfinite(self.group_scales)) or np.any(self.group_scales <= 0):
                bad("group_scales must be finite and > 0")
        else:
            if self.weight_bits != 8 or self.expansion != "none":
                bad("fp8 weights need weight_bits 8 and expansion 'none'")
            if self.codes.shape != (o, i):
                bad(f"codes shape {self.codes.shape}, expected {(o, i)}")
        needs_fp8 = self.expansion == "fp8" or self.weight_encoding == "fp8" or self.quantizes_activations
        if needs_fp8 and not self.fp8_format:
            bad("fp8_format is required when weights or activations are FP8")
        if not (math.isfinite(self.tensor_scale) and self.tensor_scale > 0):
            bad(f"tensor_scale must be finite and > 0, got {self.tensor_scale}")
        if self.quantizes_activations and not (math.isfinite(self.act_scale) and self.act_scale > 0):
            bad(f"act_scale must be NaN (A16) or finite and > 0, got {self.act_scale}")

    def int_codes(self) -> np.ndarray:
        """Unpacked INT codes uint8 (out, in) (int_asym only)."""
        return unpack_nibbles(self.codes)

    @property
    def n_weight_bytes(self) -> int:
        """Bytes of codes + group scales + zeros (what a serving kernel streams from memory)."""
        return int(self.codes.nbytes + self.group_scales.nbytes + self.zeros.nbytes)


_ARRAY_FIELDS = ("codes", "group_scales", "zeros")
_SCALAR_FIELDS = ("name", "in_features", "out_features", "weight_bits", "group_size", "weight_encoding", "expansion",
                  "tensor_scale", "act_scale", "fp8_format")


@dataclass(frozen=True)
class Checkpoint:
    """A quantized model: ``linears`` name -> PackedLinear, ``metadata`` (method, config, base model, calibration)."""

    linears: dict
    metadata: dict


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file + rename). Returns the path."""
    path = Path(path)
    entries, chunks, offset = [], [], 0
    for name, lin in ckpt.linears.items():
        lin.validate()
        meta = {k: getattr(lin, k) for k in _SCALAR_FIELDS}
        meta["act_scale"] = None if math.isnan(lin.act_scale) else lin.act_scale
        arrays = {}
        for f in _ARRAY_FIELDS:
            a = np.ascontiguousarray(getattr(lin, f))
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            arrays[f] = {"dtype": a.dtype.str.replace(">", "<"), "shape": list(a.shape), "offset": offset,
                         "nbytes": len(raw)}
            chunks.append(raw)
            offset += len(raw)
        entries.append({"key": name, "fields": meta, "arrays": arrays})
    payload = b"".join(chunks)
    header = json.dumps({"metadata": ckpt.metadata, "linears": entries, "payload_bytes": len(payload),
                         "payload_sha256": hashlib.sha256(payload).hexdigest()}, sort_keys=True).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + header + payload)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; raises CheckpointError naming the file on any inconsistency."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    data = path.read_bytes()

    def bad(msg):
        raise CheckpointError(f"{path}: {msg}")
    fixed = len(MAGIC) + 12
    if len(data) < fixed or data[:len(MAGIC)] != MAGIC:
        bad("not a dpq checkpoint (bad magic bytes or file too short)")
    version, header_len = struct.unpack("<IQ", data[len(MAGIC):fixed])
    if version != FORMAT_VERSION:
        bad(f"format version {version}, this dpqsim reads version {FORMAT_VERSION}")
    if fixed + header_len > len(data):
        bad(f"truncated: header needs {header_len} bytes, file has {len(data) - fixed} after the preamble")
    try:
        header = json.loads(data[fixed:fixed + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad(f"header is not valid JSON ({e})")
    payload = data[fixed + header_len:]
    if len(payload) != header.get("payload_bytes"):
        bad(f"truncated or padded: payload has {len(payload)} bytes, header says {header.get('payload_bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        bad("payload sha256 does not match the header (file corrupted or tampered with)")
    linears = {}
    for entry in header["linears"]:
        kw = dict(entry["fields"])
        kw["act_scale"] = float("nan") if kw["act_scale"] is None else float(kw["act_scale"])
        kw["tensor_scale"] = float(kw["tensor_scale"])
        for f in _ARRAY_FIELDS:
            spec = entry["arrays"][f]
            raw = payload[spec["offset"]:spec["offset"] + spec["nbytes"]]
            kw[f] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
        linears[entry["key"]] = PackedLinear(**kw)
    return Checkpoint(linears=linears, metadata=header["metadata"])
