"""dpq.packed: nibble packing, field validation, single-file save/load, truncated and tampered files."""

import math

import numpy as np
import pytest

from dpq.packed import (Checkpoint, CheckpointError, PackedLinear, load_checkpoint, pack_nibbles, save_checkpoint,
                        unpack_nibbles)


def _linear(rng, name="blk.0.attn_q", out_f=8, in_f=128, gs=64, act=0.05):
    return PackedLinear(name=name, in_features=in_f, out_features=out_f, weight_bits=4, group_size=gs,
                        weight_encoding="int_asym", expansion="fp8",
                        codes=pack_nibbles(rng.integers(0, 16, (out_f, in_f))),
                        group_scales=rng.uniform(0.5, 10, (out_f, in_f // gs)).astype(np.float32),
                        zeros=rng.integers(0, 16, (out_f, in_f // gs)).astype(np.uint8),
                        tensor_scale=2.0 ** -7, act_scale=act, fp8_format="float8_e4m3")


def test_nibbles_round_trip_and_layout():
    codes = np.array([[1, 2, 15, 0]], dtype=np.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F]]  # column 2j low nibble, 2j+1 high nibble
    rng = np.random.default_rng(0)
    c = rng.integers(0, 16, (5, 64)).astype(np.uint8)
    assert np.array_equal(unpack_nibbles(pack_nibbles(c)), c)
    with pytest.raises(ValueError):
        pack_nibbles(np.full((1, 2), 16))
    with pytest.raises(ValueError):
        pack_nibbles(np.zeros((1, 3)))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    lins = {"a": _linear(rng, "a"), "b": _linear(rng, "b", act=math.nan)}
    ckpt = Checkpoint(linears=lins, metadata={"method": "dpq", "config": {"weight_bits": 4}})
    path = save_checkpoint(tmp_path / "m.dpq", ckpt)
    back = load_checkpoint(path)
    assert back.metadata == ckpt.metadata
    for k, p in lins.items():
        q = back.linears[k]
        for f in ("codes", "group_scales", "zeros"):
            assert np.array_equal(getattr(p, f), getattr(q, f)) and getattr(p, f).dtype == getattr(q, f).dtype
        assert q.tensor_scale == p.tensor_scale and q.fp8_format == p.fp8_format
    assert math.isnan(back.linears["b"].act_scale) and back.linears["a"].act_scale == 0.05
    assert not (tmp_path / "m.dpq.tmp").exists()


def test_truncated_and_tampered_files_fail_clearly(tmp_path):
    rng = np.random.default_rng(2)
    path = save_checkpoint(tmp_path / "m.dpq", Checkpoint({"a": _linear(rng, "a")}, {"method": "dpq"}))
    data = path.read_bytes()
    (tmp_path / "trunc.dpq").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="trunc.dpq: truncated"):
        load_checkpoint(tmp_path / "trunc.dpq")
    (tmp_path / "short.dpq").write_bytes(data[:30])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "short.dpq")
    bad = bytearray(data)
    bad[-5] ^= 0x01
    (tmp_path / "tampered.dpq").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "tampered.dpq")
    (tmp_path / "other.bin").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(CheckpointError, match="not a dpq checkpoint"):
        load_checkpoint(tmp_path / "other.bin")
    ver = bytearray(data)
    ver[8] = 99
    (tmp_path / "ver.dpq").write_bytes(bytes(ver))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "ver.dpq")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.dpq")


@pytest.mark.parametrize("change,msg", [
    ({"group_size": 48}, "does not divide"),
    ({"zeros": np.full((8, 2), 16, np.uint8)}, "zero points"),
    ({"group_scales": np.zeros((8, 2), np.float32)}, "group_scales"),
    ({"codes": np.zeros((8, 10), np.uint8)}, "codes shape"),
    ({"codes": np.zeros((8, 64), np.int8)}, "uint8"),
    ({"fp8_format": ""}, "fp8_format"),
    ({"tensor_scale": float("inf")}, "tensor_scale"),
    ({"act_scale": -1.0}, "act_scale"),
    ({"weight_encoding": "nf4"}, "weight_encoding"),
])
def test_inconsistent_fields_are_rejected(change, msg):
    rng = np.random.default_rng(3)
    base = _linear(rng)
    kw = {f: getattr(base, f) for f in base.__dataclass_fields__}
    kw.update(change)
    with pytest.raises(CheckpointError, match=msg):
        PackedLinear(**kw)
