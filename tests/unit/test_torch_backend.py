"""CPU tests of the torch backend's input preparation (skipped without torch; GPU bit-equality is in tests/gpu/)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dpq import torch_backend as tb  # noqa: E402
from dpq.packed import PackedLinear, pack_nibbles  # noqa: E402
from sim.formats import encode  # noqa: E402


def _layer(rng, out_f=96, in_f=256, gs=64, fmt="float8_e4m3fn", scale_hi=2.0):
    return PackedLinear(name="t", in_features=in_f, out_features=out_f, weight_bits=4, group_size=gs,
                        weight_encoding="int_asym", expansion="fp8",
                        codes=pack_nibbles(rng.integers(0, 16, (out_f, in_f))),
                        group_scales=rng.uniform(0.01, scale_hi, (out_f, in_f // gs)).astype(np.float32),
                        zeros=rng.integers(0, 16, (out_f, in_f // gs)).astype(np.uint8),
                        tensor_scale=0.125, act_scale=0.037, fp8_format=fmt)





@pytest.mark.parametrize("fmt,scale_hi", [("float8_e4m3fn", 2.0), ("float8_e4m3fn", 60.0), ("float8_e4m3", 40.0)])
def test_weight_expansion_equals_emulator_codes(fmt, scale_hi):
    """torch's clamp + RNE cast gives the codes of sim.formats.encode(saturate=True), overflowing values too."""
    rng = np.random.default_rng(1)
    p = _layer(rng, out_f=256, in_f=512, gs=128, fmt=fmt, scale_hi=scale_hi)
    w8 = tb.weight_fp8(p, "cpu").view(torch.uint8).numpy()
    expected = tb.emulator_inputs(p, np.zeros((1, p.in_features), np.float32))["b"]
    assert np.array_equal(w8, expected)


def test_activation_quantization_equals_emulator_codes():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 1024)) * np.exp2(rng.uniform(-12, 6, (64, 1024)))).astype(np.float32)
    x[0, :4] = [1e6, -1e6, 0.0, -0.0]  # saturation and signed zeros
    a8 = tb.activation_fp8(torch.from_numpy(x), 0.037, "float8_e4m3fn").view(torch.uint8).numpy()
    assert np.array_equal(a8, encode(x / np.float32(0.037), "float8_e4m3fn", saturate=True))


def test_unpack_matches_packed_format():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, (8, 64))
    got = tb.unpack_int_codes(torch.from_numpy(pack_nibbles(q))).numpy()
    assert np.array_equal(got, q)


def test_cpu_linear_matches_reference_backend():
    from dpq.backends import get_backend

    rng = np.random.default_rng(4)
    p = _layer(rng)
    x = rng.standard_normal((5, p.in_features)).astype(np.float32)
    ref = get_backend("reference").linear(p)(x)
    got = tb.TorchLinear(p, "cpu", out_dtype="float32")(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    bf = tb.TorchLinear(p, "cpu")(x)  # bf16 output: within bf16 rounding of the float32 result
    np.testing.assert_allclose(bf, ref, rtol=2 ** -8, atol=1e-6)


def test_backend_registry_and_device_choice(monkeypatch):
    from dpq.backends import get_backend

    monkeypatch.setenv(tb.DEVICE_ENV, "cpu")
    assert tb.resolve_device() == "cpu"
    rng = np.random.default_rng(5)
    p = _layer(rng)
    lin = get_backend("torch").linear(p)
    assert lin.device == "cpu" and lin.kernel == "cublas"
    monkeypatch.setenv(tb.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match=tb.DEVICE_ENV):
        tb.resolve_device()
    with pytest.raises(ValueError, match="device"):
        tb.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            tb.resolve_device("cuda")


def test_rejects_a16_layers_and_bad_options():
    rng = np.random.default_rng(6)
    p = _layer(rng)
    from dataclasses import replace

    with pytest.raises(ValueError, match="not an FP8 GEMM"):
        tb.TorchLinear(replace(p, act_scale=math.nan), "cpu")
    with pytest.raises(ValueError, match="kernel"):
        tb.TorchLinear(p, "cpu", kernel="cutlass")
    with pytest.raises(ValueError, match="triton"):
        tb.TorchLinear(p, "cpu", kernel="triton")
