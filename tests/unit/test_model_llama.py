"""dpq.gguf, dpq.tokenizer, dpq.model: a synthetic GGUF file, and the real SmolLM2 file when cached."""

import struct

import numpy as np
import pytest

from dpq.gguf import GGML_TYPE_F32, GGML_TYPE_Q4_1, GGUFError, GGUFFile, q4_1_blocks
from dpq.model import LlamaModel, apply_rope, log_softmax_at, rope_tables
from dpq.tokenizer import BPETokenizer


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _write_gguf(path, tensors, metadata):
    """Minimal GGUF v3 writer for tests: tensors = [(name, numpy_shape, ggml_type, raw bytes)]."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for k, v in metadata.items():
        out += _gguf_string(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + _gguf_string(v)
        else:
            out += struct.pack("<I", 4) + struct.pack("<I", v)
    offset = 0
    for name, shape, t, raw in tensors:
        out += _gguf_string(name) + struct.pack("<I", len(shape))
        for d in reversed(shape):
            out += struct.pack("<Q", d)
        out += struct.pack("<IQ", t, offset)
        offset += (len(raw) + 31) // 32 * 32
    out += b"\0" * ((-len(out)) % 32)
    for _, _, _, raw in tensors:
        out += raw + b"\0" * ((-len(raw)) % 32)
    path.write_bytes(bytes(out))


def _q4_1_block(d, m, q):
    q = np.asarray(q, dtype=np.uint8)
    return np.float16(d).tobytes() + np.float16(m).tobytes() + bytes((q[:16] | (q[16:] << 4)).tolist())


def test_gguf_reader_dequantizes_q4_1_and_f32(tmp_path):
    q = np.arange(32) % 16
    raw = _q4_1_block(0.5, -2.0, q) + _q4_1_block(0.25, 1.0, q[::-1])
    f32 = np.arange(6, dtype=np.float32)
    _write_gguf(tmp_path / "t.gguf", [("w", (2, 32), GGML_TYPE_Q4_1, raw), ("n", (2, 3), GGML_TYPE_F32, f32.tobytes())],
                {"general.architecture": "llama", "general.alignment": 32})
    g = GGUFFile(tmp_path / "t.gguf")
    assert g.metadata["general.architecture"] == "llama"
    w = g.get("w")
    assert w.shape == (2, 32)
    np.testing.assert_array_equal(w[0], 0.5 * q - 2.0)
    np.testing.assert_array_equal(w[1], 0.25 * q[::-1] + 1.0)
    np.testing.assert_array_equal(g.get("n"), f32.reshape(2, 3))
    d, m, codes = q4_1_blocks(g.raw("w"))
    assert d.tolist() == [0.5, 0.25] and codes[0].tolist() == q.tolist()
    with pytest.raises(KeyError, match="no tensor named 'x'"):
        g.get("x")


def test_gguf_reader_rejects_truncated_and_foreign_files(tmp_path):
    raw = _q4_1_block(0.5, 0.0, np.zeros(32))
    _write_gguf(tmp_path / "t.gguf", [("w", (1, 32), GGML_TYPE_Q4_1, raw)], {})
    data = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-20])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(tmp_path / "cut.gguf")
    (tmp_path / "cut2.gguf").write_bytes(data[:30])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(tmp_path / "cut2.gguf")
    (tmp_path / "x.gguf").write_bytes(b"PK\3\4" + data[4:])
    with pytest.raises(GGUFError, match="not a GGUF"):
        GGUFFile(tmp_path / "x.gguf")


def test_bpe_merges_by_rank_and_round_trips():
    from dpq.tokenizer import byte_to_unicode

    b2u = byte_to_unicode()
    sp = b2u[ord(" ")]
    base = [b2u[b] for b in range(256)]
    tokens = base + ["lo", "low", sp + "low", "er", sp + "l"]
    merges = ["l o", "lo w", sp + " l", sp + "l ow", "e r"]
    tok = BPETokenizer(tokens, merges, pre="smollm")
    ids = tok.encode("lower low 42")
    # " low": "l o" (rank 0) and "lo w" (1) come before "Ġ l" (2), so Ġ stays alone
    assert [tok.tokens[i] for i in ids] == ["low", "er", sp, "low", sp, "4", "2"]
    for s in ["lower low 42", "héllo wörld\n\n  x", "日本語 😀"]:
        assert tok.decode(tok.encode(s)) == s
    with pytest.raises(ValueError):
        BPETokenizer(tokens, merges, pre="llama-bpe-unknown")


def test_rope_rotates_adjacent_pairs_and_keeps_norms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 5, 8)).astype(np.float32)
    cos, sin = rope_tables(np.arange(5), 8, 10000.0)
    y = apply_rope(x, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_array_equal(y[..., 0, :], x[..., 0, :])  # position 0: no rotation


def test_log_softmax_at():
    logits = np.log(np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32))
    np.testing.assert_allclose(log_softmax_at(logits, np.array([1, 0])), np.log([0.75, 0.5]), rtol=1e-6)


# ---------------------------------------------------------------- the real model (skipped when not cached)


def test_real_tokenizer_known_ids(smollm2):
    _, tok = smollm2
    assert tok.encode("Hello world") == [19556, 905]
    assert [tok.tokens[i] for i in tok.encode(" 2024")] == ["Ġ", "2", "0", "2", "4"]  # digits split one by one
    text = "Café crème, naïve: 3.14 — ok?\n\nNew paragraph."
    assert tok.decode(tok.encode(text)) == text


def test_real_model_architecture_and_greedy_answer(smollm2):
    model, tok = smollm2
    c = model.config
    assert (c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.vocab_size) == (30, 576, 1536, 9, 3, 49152)
    ids = np.array([tok.encode("The capital of France is")])
    for _ in range(2):
        nxt = model.forward(ids)[0, -1].argmax()
        ids = np.concatenate([ids, [[nxt]]], axis=1)
    assert "Paris" in tok.decode(ids[0])


def test_real_model_right_padding_does_not_change_earlier_positions(smollm2):
    model, tok = smollm2
    ids = np.array([tok.encode("A quick check of causal attention.")])
    padded = np.concatenate([ids, np.zeros((1, 3), dtype=ids.dtype)], axis=1)
    a = model.hidden_states(ids)
    b = model.hidden_states(padded)[:, :ids.shape[1]]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
