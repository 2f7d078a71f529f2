"""sim.formats: exhaustive and randomized checks at zero tolerance, against ml_dtypes and the plain-Python twin."""

import math

import ml_dtypes
import numpy as np
import pytest

from sim import formats as F

ML_DTYPES_FORMATS = ["float8_e4m3fn", "float8_e4m3", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
                     "float8_e5m2fnuz", "float8_e3m4", "bfloat16"]
BIAS_VARIANTS = ["float8_e4m3_b3", "float8_e4m3_b11", "float8_e4m3_b15", "float8_e4m3fn_b0", "float8_e4m3fn_b5",
                 "float8_e4m3fn_b62", "float8_e5m2_b3", "float8_e5m2_b40", "float8_e4m3fnuz_b20"]


def _ml(name):
    return getattr(ml_dtypes, name)


def _same_bits(a, b):
    """float32 arrays equal bit for bit, any NaN equal to any NaN."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | both_nan))


def _all_codes(fmt):
    return np.arange(1 << fmt.bits, dtype=fmt.code_dtype)


def _finite_positive_values(fmt):
    v = F.decode(_all_codes(fmt), fmt).astype(np.float64)
    return np.unique(v[np.isfinite(v) & (v >= 0)])


def _midpoints_and_neighbours(fmt):
    """Every value, every midpoint between neighbours (and past max), and the float32 numbers next to them."""
    v = _finite_positive_values(fmt)
    top_step = v[-1] - v[-2]
    edges = np.concatenate([v, [v[-1] + top_step, v[-1] + 2 * top_step]])
    mids = (edges[:-1] + edges[1:]) / 2
    pts = np.concatenate([v, mids, [v[0] / 4]]).astype(np.float32)
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    return np.concatenate([pts, -pts]).astype(np.float32)


def _random_float32(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)


# ------------------------------------------------------------------ the format table


@pytest.mark.parametrize("name,max_finite,min_subnormal,has_inf,neg_zero", [
    ("float8_e4m3fn", 448.0, 2.0**-9, False, True),
    ("float8_e4m3", 240.0, 2.0**-9, True, True),
    ("float8_e4m3_b3", 3840.0, 2.0**-5, True, True),
    ("float8_e4m3_b11", 15.0, 2.0**-13, True, True),
    ("float8_e4m3_b15", 0.9375, 2.0**-17, True, True),
    ("float8_e4m3fnuz", 240.0, 2.0**-10, False, False),
    ("float8_e5m2", 57344.0, 2.0**-16, True, True),
    ("float8_e4m3fn_b9", 112.0, 2.0**-11, False, True),
    ("bfloat16", float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 2.0**-133, True, True),
])
def test_format_table(name, max_finite, min_subnormal, has_inf, neg_zero):
    f = F.get_format(name)
    assert f.max_finite == max_finite
    assert f.min_subnormal == min_subnormal
    assert f.has_inf is has_inf
    assert f.has_negative_zero is neg_zero
    assert float(F.decode(np.array([f.max_code]), f)[0]) == max_finite


def test_names_are_canonical_and_cached():
    assert F.get_format("float8_e4m3_b7") == F.get_format("float8_e4m3")
    assert F.get_format("float8_e4m3_b7").name == "float8_e4m3"
    assert F.get_format("float8_e4m3_b11").name == "float8_e4m3_b11"
    assert F.get_format(F.get_format("float8_e5m2")) is F.get_format("float8_e5m2")
    for name in ML_DTYPES_FORMATS:
        f = F.get_format(name)
        assert f.max_finite == float(ml_dtypes.finfo(_ml(name)).max)
        assert f.min_normal == float(ml_dtypes.finfo(_ml(name)).smallest_normal)


@pytest.mark.parametrize("bad,exc,text", [
    ("float8_e4m4", ValueError, "unknown float format"),
    ("float8_e4m3_b63", ValueError, "bias 63"),
    ("bfloat16_b3", ValueError, "only allowed on 8-bit"),
    ("", ValueError, "unknown float format"),
    (7, TypeError, "format must be"),
])
def test_bad_format_names(bad, exc, text):
    with pytest.raises(exc, match=text):
        F.get_format(bad)


# ------------------------------------------------------------------ decode


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_decode_all_codes_equals_ml_dtypes(name):
    f = F.get_format(name)
    codes = _all_codes(f)
    assert _same_bits(F.decode(codes, f), codes.view(_ml(name)).astype(np.float32))


@pytest.mark.parametrize("name", BIAS_VARIANTS)
def test_decode_bias_variant_is_base_scaled(name):
    f = F.get_format(name)
    base = F.get_format(f.base_name)
    codes = _all_codes(f)
    expected = F.decode(codes, base).astype(np.float64) * 2.0 ** (base.bias - f.bias)
    assert _same_bits(F.decode(codes, f), expected.astype(np.float32))


def test_decode_keeps_shape_and_rejects_bad_codes():
    codes = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert F.decode(codes, "float8_e4m3fn").shape == (2, 3, 4)
    assert F.decode(codes.astype(np.int64), "float8_e4m3fn").dtype == np.float32
    with pytest.raises(TypeError, match="integer array"):
        F.decode(np.zeros(3, np.float32), "float8_e4m3fn")
    with pytest.raises(ValueError, match="0..255"):
        F.decode(np.array([256]), "float8_e4m3fn")


# ------------------------------------------------------------------ encode vs ml_dtypes


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_encode_unsaturated_equals_ml_dtypes_on_midpoints_and_random_bits(name):
    f = F.get_format(name)
    x = np.concatenate([_midpoints_and_neighbours(f) if f.bits == 8 else np.zeros(0, np.float32),
                        _random_float32(200_000, seed=1),
                        (np.random.default_rng(2).standard_normal(100_000) * f.max_finite / 16).astype(np.float32),
                        np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(_ml(name)).view(f.code_dtype)
    got = F.encode(x, f, saturate=False)
    assert got.dtype == f.code_dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_encode_float64_input_matches_ml_dtypes(name):
    # ml_dtypes converts float64 through float32; encode documents and does the same.
    f = F.get_format(name)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50_000) * f.max_finite / 4
    with np.errstate(over="ignore"):
        expected = x.astype(_ml(name)).view(f.code_dtype)
    np.testing.assert_array_equal(F.encode(x, f, saturate=False), expected)


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS + BIAS_VARIANTS)
def test_every_code_round_trips(name):
    f = F.get_format(name)
    codes = _all_codes(f)
    values = F.decode(codes, f)
    keep = ~np.isnan(values)
    if f.special_values == "fnuz":
        keep &= codes != 0x80
    np.testing.assert_array_equal(F.encode(values[keep], f, saturate=False), codes[keep])


@pytest.mark.parametrize("name", BIAS_VARIANTS)
def test_bias_variant_encode_is_scaled_ml_dtypes(name):
    f = F.get_format(name)
    base = F.get_format(f.base_name)
    x = np.concatenate([_midpoints_and_neighbours(base), _random_float32(50_000, seed=4)])
    x = x[np.abs(x) < 2.0**60]  # keep the power-of-two rescale exact in float32
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(_ml(base.name)).view(np.uint8)
    scaled = (x.astype(np.float64) * 2.0 ** (base.bias - f.bias)).astype(np.float32)
    np.testing.assert_array_equal(F.encode(scaled, f, saturate=False), expected)


# ------------------------------------------------------------------ saturation, specials


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e4m3", "float8_e5m2", "float8_e4m3fnuz", "float8_e4m3_b11"])
def test_saturation(name):
    f = F.get_format(name)
    big = np.array([f.max_finite * 1.1, f.max_finite * 1e3, np.inf], np.float32)
    x = np.concatenate([big, -big, [np.nan]]).astype(np.float32)
    got = F.decode(F.encode(x, f, saturate=True), f)
    np.testing.assert_array_equal(got[:6], np.array([f.max_finite] * 3 + [-f.max_finite] * 3, np.float32))
    assert np.isnan(got[6])
    unsat = F.decode(F.encode(x, f, saturate=False), f)
    if f.has_inf:
        np.testing.assert_array_equal(unsat[:6], np.array([np.inf] * 3 + [-np.inf] * 3, np.float32))
    else:
        assert np.isnan(unsat[:6]).all()
    # Values that round down to max finite are not overflow in either mode.
    v = _finite_positive_values(f)
    just_below_tie = np.float32(np.nextafter(np.float32((v[-1] + (v[-1] - v[-2]) / 2)), np.float32(0)))
    assert F.decode(F.encode(np.array([just_below_tie]), f, saturate=False), f)[0] == f.max_finite


def test_e4m3fn_tie_above_max_rounds_to_max_even():
    # 464 lies halfway between 448 (mantissa 110, even) and 480 (would be the NaN pattern): ties go to 448.
    f = F.get_format("float8_e4m3fn")
    assert F.decode(F.encode(np.array([464.0, 464.5]), f, saturate=False), f)[0] == 448.0
    assert np.isnan(F.decode(F.encode(np.array([464.5]), f, saturate=False), f)[0])


def test_signed_zero_and_nan_codes():
    x = np.array([0.0, -0.0, np.nan, -np.nan, -1e-30], np.float32)
    np.testing.assert_array_equal(F.encode(x, "float8_e4m3fn"), [0x00, 0x80, 0x7F, 0xFF, 0x80])
    np.testing.assert_array_equal(F.encode(x, "float8_e4m3fnuz"), [0x00, 0x00, 0x80, 0x80, 0x00])
    np.testing.assert_array_equal(F.encode(x, "float8_e5m2"), [0x00, 0x80, 0x7E, 0xFE, 0x80])


# ------------------------------------------------------------------ kernel vs plain-Python twin


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e4m3", "float8_e5m2", "float8_e4m3fnuz",
                                  "float8_e4m3_b15", "float8_e5m2_b40", "float8_e4m3fn_b0", "bfloat16"])
@pytest.mark.parametrize("saturate", [True, False])
def test_encode_kernel_equals_python_twin(name, saturate):
    f = F.get_format(name)
    rng = np.random.default_rng(5)
    x = np.concatenate([
        (rng.standard_normal(3000) * f.max_finite / 8).astype(np.float32),
        (rng.standard_normal(2000) * f.min_normal).astype(np.float32),
        _random_float32(2000, seed=6),
        _midpoints_and_neighbours(f)[:3000] if f.bits == 8 else np.zeros(0, np.float32),
    ])
    np.testing.assert_array_equal(F.encode(x, f, saturate=saturate), F.encode_reference(x, f, saturate=saturate))


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e4m3", "float8_e5m2", "float8_e4m3fnuz"])
def test_stochastic_kernel_equals_python_twin(name):
    f = F.get_format(name)
    x = (np.random.default_rng(7).standard_normal(5000) * f.max_finite / 4).astype(np.float32)
    got = F.encode(x, f, rounding="stochastic", seed=11)
    np.testing.assert_array_equal(got, F.encode_reference(x, f, rounding="stochastic", seed=11))


def test_stochastic_rounding_is_reproducible_and_unbiased():
    f = F.get_format("float8_e4m3fn")
    x = np.full(200_000, 1.0 + 0.3 * 0.125, np.float32)  # 30% of the way from 1.0 to 1.125
    a = F.encode(x, f, rounding="stochastic", seed=123)
    np.testing.assert_array_equal(a, F.encode(x, f, rounding="stochastic", seed=np.random.default_rng(123)))
    assert not np.array_equal(a, F.encode(x, f, rounding="stochastic", seed=124))
    values = F.decode(a, f)
    assert set(np.unique(values).tolist()) == {1.0, 1.125}
    frac_up = float(np.mean(values == 1.125))
    assert abs(frac_up - 0.3) < 0.005  # 200k Bernoulli(0.3) draws: sd ~ 0.001
    exact = np.array([1.0, 1.125, -2.5], np.float32)
    np.testing.assert_array_equal(F.encode(exact, f, rounding="stochastic", seed=1), F.encode(exact, f))


def test_encode_argument_errors():
    with pytest.raises(ValueError, match="explicit seed"):
        F.encode(np.ones(3), "float8_e4m3fn", rounding="stochastic")
    with pytest.raises(ValueError, match="rounding must be"):
        F.encode(np.ones(3), "float8_e4m3fn", rounding="up")
    with pytest.raises(TypeError, match="real numeric"):
        F.encode(np.array(["a"]), "float8_e4m3fn")
    with pytest.raises(TypeError, match="real numeric"):
        F.round_to_format(np.ones(2, np.complex64), "float8_e4m3fn")
    with pytest.raises(TypeError, match="format must be"):
        F.round_to_format(np.ones(2, np.float32), ["float8_e4m3fn"])
    with pytest.raises(ValueError, match="unknown float format"):
        F.round_to_format(np.ones(2, np.float32), "float8_e4m3x")


# ------------------------------------------------------------------ round_to_format, bfloat16, ints


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS + BIAS_VARIANTS)
@pytest.mark.parametrize("saturate", [True, False])
def test_round_to_format_equals_decode_of_encode(name, saturate):
    f = F.get_format(name)
    x = np.concatenate([_random_float32(100_000, seed=8),
                        (np.random.default_rng(9).standard_normal(50_000) * f.max_finite / 8).astype(np.float32),
                        (np.random.default_rng(10).standard_normal(20_000) * f.min_normal).astype(np.float32),
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)])
    got = F.round_to_format(x, f, saturate=saturate)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert _same_bits(got, F.decode(F.encode(x, f, saturate=saturate), f))


def test_round_to_format_shapes_and_inputs():
    x = np.linspace(-500, 500, 24).reshape(2, 3, 4)
    got = F.round_to_format(x, "float8_e4m3fn")
    assert got.shape == (2, 3, 4) and got.dtype == np.float32
    assert _same_bits(got, F.round_to_format(np.asfortranarray(x.astype(np.float32)), "float8_e4m3fn"))
    assert F.round_to_format(3.3, "float8_e4m3fn").shape == ()
    assert _same_bits(F.round_to_format(x[:, ::2], "float8_e4m3fn"), got[:, ::2])


def test_round_to_bfloat16_equals_ml_dtypes():
    x = np.concatenate([_random_float32(300_000, seed=12), np.array([3.4e38, -3.4e38, 1e-40], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert _same_bits(F.round_to_bfloat16(x), expected)


def test_int_formats():
    assert (F.get_int_format("int4").min_code, F.get_int_format("int4").max_code) == (-8, 7)
    assert (F.get_int_format("uint4").min_code, F.get_int_format("uint4").max_code) == (0, 15)
    assert (F.get_int_format("int8").min_code, F.get_int_format("int8").max_code) == (-128, 127)
    np.testing.assert_array_equal(F.round_to_int([-9.0, -2.5, 0.5, 1.5, 6.6, 20.0], "int4"),
                                  [-8, -2, 0, 2, 7, 7])
    np.testing.assert_array_equal(F.round_to_int([-3.0, 14.5, 15.5], "uint4"), [0, 14, 15])
    with pytest.raises(ValueError, match="unknown integer format"):
        F.get_int_format("int3")
    with pytest.raises(ValueError, match="NaN"):
        F.round_to_int([np.nan], "int8")


def test_min_subnormal_halfway_rounds_to_zero_even():
    for name in ["float8_e4m3fn", "float8_e5m2", "float8_e4m3_b15"]:
        f = F.get_format(name)
        half = np.float32(f.min_subnormal / 2)
        got = F.decode(F.encode(np.array([half, np.nextafter(half, np.float32(1))]), f), f)
        assert got[0] == 0.0 and got[1] == f.min_subnormal
        assert math.copysign(1.0, float(F.round_to_format(np.array([-half]), f)[0])) == -1.0
