"""dpq.backends: the reference formula, emulated = sim.mac bit for bit, and clear errors."""

import math

import numpy as np
import pytest

from dpq import quantizers as qz
from dpq.backends import EmulatedLinear, ReferenceLinear, dequantized_operand, get_backend
from dpq.methods import make_config, quantize_linears, with_act_scale
from sim.formats import encode


def _packed(method="dpq", fmt="float8_e4m3", seed=0, out_f=48, in_f=256):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, in_f)).astype(np.float32)
    w = (rng.normal(size=(out_f, in_f)) * 0.05).astype(np.float32)
    kw = {"fp8_format": fmt} if method not in ("rtn-w4a16", "gptq-w4a16") else {}
    if method != "fp8-w8a8":
        kw["group_size"] = 128
    cfg = make_config(method, **kw)
    p = quantize_linears({"w": w}, x.T.astype(np.float64) @ x / 512, cfg)["w"]
    return with_act_scale(p, float(np.abs(x).max()), cfg), x, w


def test_reference_w4a8_is_the_runtime_formula():
    p, x, _ = _packed()
    q = p.int_codes().astype(np.float32)
    s = np.repeat(p.group_scales, 128, axis=1)
    z = np.repeat(p.zeros.astype(np.float32), 128, axis=1)
    w8 = qz.round_fp8(s * (q - z), p.fp8_format)
    x8 = qz.round_fp8(x / np.float32(p.act_scale), p.fp8_format)
    expected = (x8 @ w8.T) * np.float32(p.act_scale * p.tensor_scale)
    np.testing.assert_array_equal(ReferenceLinear(p)(x), expected)


def test_reference_w4a16_uses_float_weights_and_activations():
    p, x, w = _packed("gptq-w4a16")
    assert math.isnan(p.act_scale)
    np.testing.assert_allclose(ReferenceLinear(p)(x), x @ dequantized_operand(p).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,fmt", [("gaudi2", "float8_e4m3"), ("h100", "float8_e4m3fn")])
@pytest.mark.parametrize("method", ["dpq", "fp8-w8a8"])
def test_emulated_is_sim_mac_bit_for_bit_and_close_to_reference(hw, fmt, method):
    from sim.mac import fp8_gemm

    p, x, _ = _packed(method, fmt)
    x = x[:16]
    emu = get_backend("emulated", hw).linear(p)(x)
    if p.weight_encoding == "fp8":
        b = p.codes
    else:
        b = encode(np.repeat(p.group_scales, 128, 1) * (p.int_codes().astype(np.float32) -
                                                       np.repeat(p.zeros.astype(np.float32), 128, 1)), fmt)
    a = encode(x / np.float32(p.act_scale), fmt)
    direct = fp8_gemm(a, b, hw=hw, a_format=fmt, b_format=fmt, scale_a=p.act_scale, scale_b=p.tensor_scale,
                      out_dtype="bfloat16")
    np.testing.assert_array_equal(emu, direct)
    ref = ReferenceLinear(p)(x)
    assert qz.sqnr_db(ref, emu) > 45.0  # differences: accumulation order/width and the BF16 output rounding
    emu32 = get_backend("emulated", hw, out_dtype="float32").linear(p)(x)
    assert qz.sqnr_db(ref, emu32) > qz.sqnr_db(ref, emu)


def test_emulated_refuses_a16_layers_and_needs_a_profile():
    p, _, _ = _packed("rtn-w4a16")
    with pytest.raises(ValueError, match="not an FP8 GEMM"):
        EmulatedLinear(p, "gaudi2")
    with pytest.raises(ValueError, match="needs a hardware profile"):
        get_backend("emulated")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        get_backend("cuda")


def test_torch_backend_slot_says_what_is_missing():
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torch"):
            get_backend("torch")
    else:
        assert get_backend("torch", device="cpu").name == "torch"
