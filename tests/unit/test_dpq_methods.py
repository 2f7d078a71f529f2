"""dpq.methods: configs, every method on one layer, bad input."""

import math

import numpy as np
import pytest

from dpq.backends import effective_weight
from dpq.methods import METHODS, DPQConfig, make_config, quantize_linears, with_act_scale
from dpq.quantizers import sqnr_db


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 128)).astype(np.float32)
    h = x.T.astype(np.float64) @ x / len(x)
    w = {"q": (rng.normal(size=(32, 128)) * 0.05).astype(np.float32),
         "k": (rng.normal(size=(16, 128)) * 0.2).astype(np.float32)}
    return w, h


@pytest.mark.parametrize("method,bits", [(m, b) for m in METHODS for b in (4, 3) if m != "fp8-w8a8"]
                         + [("fp8-w8a8", 8)])
def test_every_method_produces_valid_packed_layers(layer, method, bits):
    w, h = layer
    cfg = make_config(method) if method == "fp8-w8a8" else make_config(method, weight_bits=bits, group_size=64)
    out = quantize_linears(w, h, cfg)
    assert set(out) == {"q", "k"}
    floor = {4: 15.0, 3: 9.0, 8: 25.0}[bits]
    for name, p in out.items():
        assert (p.out_features, p.in_features) == w[name].shape
        assert sqnr_db(w[name], effective_weight(p)) > floor
        a16 = not cfg.quantizes_activations
        assert p.expansion == ("float" if a16 else "none" if method == "fp8-w8a8" else "fp8")
        p2 = with_act_scale(p, 12.0, cfg)
        assert math.isnan(p2.act_scale) == a16
        if not a16:
            assert p2.act_scale == pytest.approx(12.0 / 240.0)
    # linears that share an input keep their own per-tensor scale
    if cfg.quantizes_activations:
        assert out["q"].tensor_scale != out["k"].tensor_scale


def test_method_names_and_presets():
    assert make_config("dpq-gar").gar and make_config("dpq-gar").method == "dpq-gar"
    assert make_config("dpq-pow2").pow2_group_scales and make_config("dpq-pow2").method == "dpq-pow2"
    assert make_config("dpq").method == "dpq"
    assert isinstance(make_config("dpq", fp8_format="float8_e4m3fn"), DPQConfig)


@pytest.mark.parametrize("kwargs,msg", [
    ({"weight_bits": 5}, "weight_bits"),
    ({"group_size": 0}, "group_size"),
    ({"damp": 0.0}, "damp"),
    ({"fp8_format": "float8_e9m9"}, "float8_e9m9"),
    ({"tensor_scale": "hw"}, "hw_scales"),
    ({"act_scale": "max"}, "act_scale"),
])
def test_bad_config_values(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        make_config("dpq", **kwargs)


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match="unknown method 'awq'"):
        make_config("awq")
    with pytest.raises(ValueError, match="no option 'gar'"):
        make_config("rtn-w4a16", gar=True)


def test_bad_weights_are_rejected(layer):
    w, h = layer
    cfg = make_config("dpq", group_size=64)
    bad = dict(w, q=w["q"].copy())
    bad["q"][0, 0] = np.nan
    with pytest.raises(ValueError, match="q: weight contains NaN or inf"):
        quantize_linears(bad, h, cfg)
    bad["q"][0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_linears(bad, h, cfg)
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features 128"):
        quantize_linears(w, h, make_config("dpq", group_size=48))
    with pytest.raises(ValueError, match="in_features 64 differs"):
        quantize_linears({"q": w["q"], "v": np.zeros((4, 64), np.float32)}, h, cfg)
    with pytest.raises(ValueError, match="Hessian shape"):
        quantize_linears(w, np.eye(64), cfg)
    with pytest.raises(ValueError, match="needs the Hessian"):
        quantize_linears(w, None, cfg)
    with pytest.raises(ValueError, match="2-D"):
        quantize_linears({"q": np.zeros(128, np.float32)}, h, cfg)


def test_gaudi2_and_hopper_ranges_give_different_scales(layer):
    w, h = layer
    p240 = quantize_linears(w, h, make_config("dpq", group_size=64))["q"]
    p448 = quantize_linears(w, h, make_config("dpq", group_size=64, fp8_format="float8_e4m3fn"))["q"]
    assert p240.fp8_format == "float8_e4m3" and p448.fp8_format == "float8_e4m3fn"
    assert p448.tensor_scale < p240.tensor_scale
    # operands stay inside the protective range of each format
    from dpq.backends import dequantized_operand
    assert np.abs(dequantized_operand(p240)).max() <= 240
    assert np.abs(dequantized_operand(p448)).max() <= 448
