"""dpq.encoder: safetensors reader, WordPiece, the fp32 BERT encoder and layer-level SQNR (real assets)."""

import json
import struct

import numpy as np
import pytest

from dpq.encoder import erf, read_safetensors


def test_safetensors_reader(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "__metadata__": {"format": "pt"}}).encode()
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + a.tobytes())
    out = read_safetensors(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(out["a"], a)
    (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + a.tobytes()[:10])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_erf_accuracy():
    from math import erf as erf_exact

    x = np.linspace(-5, 5, 2001).astype(np.float32)
    ref = np.array([erf_exact(float(v)) for v in x])
    assert np.abs(erf(x) - ref).max() < 3e-7


@pytest.fixture(scope="module")
def encoder(require_asset):
    require_asset("minilm")
    from dpq.encoder import BertEncoder

    return BertEncoder.from_assets()


def test_wordpiece_known_ids(encoder):
    _, tok = encoder
    assert tok.encode("Hello, world!") == [101, 7592, 1010, 2088, 999, 102]
    assert tok.encode("naïve")[1:-1] == tok.encode("naive")[1:-1]  # accents stripped (uncased model)


def test_encoder_embeddings_rank_paraphrases_first(encoder):
    enc, tok = encoder
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    ids = [tok.encode(t) for t in texts]
    T = max(map(len, ids))
    I = np.zeros((3, T), np.int64)
    M = np.zeros((3, T), bool)
    for r, s in enumerate(ids):
        I[r, :len(s)], M[r, :len(s)] = s, True
    h = enc.forward(I, M)
    e = (h * M[..., None]).sum(1) / M.sum(1, keepdims=True)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]


def test_layer_sqnr_on_real_activations(encoder, require_asset):
    require_asset("cal-data")
    from dpq.encoder import collect_inputs, layer_sqnr, sentence_batches
    from dpq.methods import make_config

    enc, tok = encoder
    ci = collect_inputs(enc, *sentence_batches(tok, "calib", 12, 64))
    ei = collect_inputs(enc, *sentence_batches(tok, "eval", 6, 64))
    rows = layer_sqnr(enc, ci, ei, [make_config("rtn-w4a8", group_size=128), make_config("fp8-w8a8")])
    assert len(rows) == 2 * 36
    mean = {m: np.mean([r["sqnr_db"] for r in rows if r["method"] == m]) for m in ("rtn-w4a8", "fp8-w8a8")}
    assert 12 < mean["rtn-w4a8"] < mean["fp8-w8a8"]  # 4-bit weights lose more than 8-bit ones
