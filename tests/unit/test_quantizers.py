"""dpq.quantizers: scales, protective range, asymmetric groups, INT -> FP8 expansion."""

import math

import numpy as np
import pytest

from dpq import quantizers as qz
from sim.formats import decode, get_format


def test_fp8_ranges_come_from_sim_formats():
    assert qz.fp8_max("float8_e4m3") == 240.0
    assert qz.fp8_max("float8_e4m3fn") == 448.0


def test_protective_range_matches_the_paper():
    assert qz.protective_range(240.0, 15) == 224.0
    assert qz.protective_range(448.0, 15) == pytest.approx(448 - 448 / 15)


@pytest.mark.parametrize("absmax,limit,mode,expected", [
    (3.0, 224.0, "pow2", 2.0 ** -6),  # 3/224 = 0.0134 -> 2^-6 = 0.0156
    (224.0, 224.0, "pow2", 1.0),
    (0.0, 224.0, "pow2", 1.0),
    (3.0, 224.0, "float", float(np.float32(3.0 / 224.0))),
    (3.0, 224.0, "hw", 2.0 ** -4),  # smallest of {2^-8, 2^-4, 2^0, 2^4} >= 0.0134
    (1e5, 224.0, "hw", 2.0 ** 4),  # none fits: the largest (the tensor gets clipped)
])
def test_tensor_scale(absmax, limit, mode, expected):
    s = qz.tensor_scale(absmax, limit, mode, hw_scales=(2.0 ** 4, 1.0, 2.0 ** -4, 2.0 ** -8))
    assert s == expected
    if mode != "hw" or absmax < 1e4:
        assert absmax / s <= limit


def test_tensor_scale_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        qz.tensor_scale(1.0, 224.0, "log")
    with pytest.raises(ValueError, match="finite"):
        qz.tensor_scale(float("nan"), 224.0)
    with pytest.raises(ValueError, match="hw_scales"):
        qz.tensor_scale(1.0, 224.0, "hw")


def test_activation_scale():
    assert qz.activation_scale(480.0, 240.0) == 2.0
    assert qz.activation_scale(300.0, 240.0, "pow2") == 2.0
    with pytest.raises(ValueError):
        qz.activation_scale(1.0, 240.0, "int")


def test_group_params_cover_the_range_and_include_zero():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 256)).astype(np.float32)
    w[3, :64] = 0.0  # an all-zero group
    w[4, 64:128] = np.abs(w[4, 64:128])  # an all-positive group: lo must be 0
    s, z = qz.group_params(w, 64, 15)
    assert s.shape == z.shape == (16, 4) and s.dtype == np.float32
    assert s[3, 0] == pytest.approx(2 / 15, rel=1e-6) and z[3, 0] in (7, 8)  # range [-1, 1]
    assert z[4, 1] == 0
    q = qz.quantize_int(w, qz.expand_groups(s, 64), qz.expand_groups(z, 64), 15)
    assert q.min() >= 0 and q.max() <= 15 and np.all(q == np.rint(q))
    err = np.abs(qz.dequantize_int(q, qz.expand_groups(s, 64), qz.expand_groups(z, 64)) - w)
    assert np.all(err <= qz.expand_groups(s, 64) * 0.5 + 1e-6)  # RTN inside the range: at most half a step


def test_group_params_reject_non_dividing_group():
    with pytest.raises(ValueError, match="does not divide"):
        qz.group_params(np.zeros((2, 576), np.float32), 128, 15)


def test_pow2_group_scales_make_the_fp8_expansion_exact():
    rng = np.random.default_rng(1)
    w8 = rng.uniform(-224, 224, size=(64, 128)).astype(np.float32)
    s, z = qz.group_params(w8, 128, 15, pow2_scales=True)
    assert np.all(np.log2(s) == np.round(np.log2(s)))
    q = qz.quantize_int(w8, s, z, 15)
    exact = qz.dequantize_int(q, s, z)
    assert np.array_equal(qz.expand_fp8(q, s, z, "float8_e4m3"), exact)
    # arbitrary scales generally are not exact: that rounding is what DPQ models
    s2, z2 = qz.group_params(w8, 128, 15)
    q2 = qz.quantize_int(w8, s2, z2, 15)
    assert not np.array_equal(qz.expand_fp8(q2, s2, z2, "float8_e4m3"), qz.dequantize_int(q2, s2, z2))


def test_expand_fp8_is_the_formats_rounding():
    rng = np.random.default_rng(2)
    q = rng.integers(0, 16, size=(8, 64)).astype(np.float32)
    s = rng.uniform(0.5, 14, size=(8, 1)).astype(np.float32)
    z = np.full((8, 1), 8, np.float32)
    for fmt in ("float8_e4m3", "float8_e4m3fn"):
        got = qz.expand_fp8(q, s, z, fmt)
        # every value is an FP8 value of the format (decode of some code), and saturates at R
        table = decode(np.arange(256, dtype=np.uint8), fmt)
        assert np.isin(got, table[np.isfinite(table)]).all()
        assert np.abs(got).max() <= get_format(fmt).max_finite


def test_sqnr_db():
    a = np.ones(100)
    assert qz.sqnr_db(a, a) == math.inf
    assert qz.sqnr_db(a, a * 1.1) == pytest.approx(20.0)
