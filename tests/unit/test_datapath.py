"""sim.datapath: strict validation of a profile's numerics section."""

import copy

import pytest
import yaml

from sim.datapath import DatapathSpec, NumericsSpec, parse_numerics
from sim.errors import ConfigError
from sim.formats import get_format
from sim.profiles import PROFILE_DIR, load_profile


def _raw(chip):
    return yaml.safe_load((PROFILE_DIR / f"{chip}.yaml").read_text())["numerics"]


@pytest.mark.parametrize("chip,default,max_finite,step", [
    ("h100", "float8_e4m3fn", 448.0, 32),
    ("h200", "float8_e4m3fn", 448.0, 32),
    ("gaudi2", "float8_e4m3", 240.0, 16),
    ("gaudi3", "float8_e4m3fn", 448.0, 8),
])
def test_shipped_profiles_load(chip, default, max_finite, step):
    spec = load_profile(chip).numerics
    assert isinstance(spec, NumericsSpec) and isinstance(spec.datapath, DatapathSpec)
    assert spec.default_fp8_format == default
    assert get_format(spec.default_fp8_format).max_finite == max_finite
    assert spec.datapath.products_per_step == step
    assert all(text.strip() for text in spec.provenance.values())


def test_h200_inherits_h100_datapath_with_its_own_provenance():
    h100, h200 = load_profile("h100").numerics, load_profile("h200").numerics
    assert h200.datapath == h100.datapath and h200.epilogue == h100.epilogue
    assert "H200" in h200.provenance["datapath"]


def test_gaudi_bias_rules():
    g2, g3 = load_profile("gaudi2").numerics, load_profile("gaudi3").numerics
    assert g2.operand_biases["float8_e4m3"] == frozenset({3, 7, 11, 15})
    assert g2.operands_same_flavour and not g3.operands_same_flavour
    assert g3.operand_biases["float8_e4m3fn"] == frozenset(range(63))


def _mutated(path, value, chip="h100"):
    raw = copy.deepcopy(_raw(chip))
    node = raw
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize("path,value,key,text", [
    (("datapath", "products_per_step"), "32", "numerics.datapath.products_per_step", "expected an integer"),
    (("datapath", "products_per_step"), 1e9, "numerics.datapath.products_per_step", "expected an integer"),
    (("datapath", "products_per_step"), True, "numerics.datapath.products_per_step", "expected an integer"),
    (("datapath", "products_per_step"), 0, "numerics.datapath.products_per_step", "1..1024"),
    (("datapath", "accumulator_in_alignment"), "yes", "numerics.datapath.accumulator_in_alignment", "true or false"),
    (("datapath", "step_rounding"), "up", "numerics.datapath.step_rounding", "nearest_even"),
    (("datapath", "promotion_interval_k"), 100, "numerics.datapath.promotion_interval_k", "multiple of"),
    (("datapath", "alignment_fraction_bits"), 4, "numerics.datapath.alignment_fraction_bits", "at least 6"),
    (("datapath", "accumulator_significand_bits"), 20, "numerics.datapath.accumulator_significand_bits",
     "at most"),
    (("datapath", "warp_size"), 32, "numerics.datapath.warp_size", "unknown key"),
    (("datapath", "flush_subnormals"), _DELETE, "numerics.datapath.flush_subnormals", "missing"),
    (("default_fp8_format",), "float8_e4m3", "numerics.default_fp8_format", "operand_formats"),
    (("default_fp8_format",), "float8_e9m9", "numerics.default_fp8_format", "unknown float format"),
    (("operand_formats", "float8_e4m3fn"), {"biases": [70]}, "numerics.operand_formats.float8_e4m3fn.biases",
     "0..62"),
    (("operand_formats", "float8_e4m3fn"), {"bias": 7}, "numerics.operand_formats.float8_e4m3fn", "exactly"),
    (("operand_formats", "float8_e4m3fn_b3"), {"biases": [3]}, "numerics.operand_formats.float8_e4m3fn_b3",
     "without a bias suffix"),
    (("unsupported_format_pairs",), [["float8_e5m2"]], "numerics.unsupported_format_pairs[0]", "[a, b]"),
    (("epilogue", "scale_rule"), "magic", "numerics.epilogue.scale_rule", "float32_multiply"),
    (("provenance", "datapath"), _DELETE, "numerics.provenance.datapath", "needs a source"),
    (("provenance", "datapath"), "", "numerics.provenance.datapath", "non-empty"),
    (("provenance", "datapath.color"), "x", "numerics.provenance.datapath.color", "unknown key"),
    (("tensor_cores",), 4, "numerics.tensor_cores", "unknown key"),
])
def test_bad_numerics_name_file_and_key(path, value, key, text):
    with pytest.raises(ConfigError) as info:
        parse_numerics(_mutated(path, value), source="hw_profiles/test.yaml")
    assert info.value.source == "hw_profiles/test.yaml"
    assert info.value.key == key
    assert text in str(info.value)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_numerics([1, 2], source="x.yaml")


def test_optional_floors_accept_null_and_integers():
    spec = parse_numerics(_mutated(("datapath", "operand_exponent_floor"), -14), source="x.yaml")
    assert spec.datapath.operand_exponent_floor == -14
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_numerics(_mutated(("datapath", "operand_exponent_floor"), "-14"), source="x.yaml")


def test_check_operand_formats_messages():
    spec = load_profile("gaudi2").numerics
    spec.check_operand_formats(get_format("float8_e4m3_b11"), get_format("float8_e4m3_b3"))
    with pytest.raises(ValueError, match="same FP8 flavour"):
        spec.check_operand_formats(get_format("float8_e4m3"), get_format("float8_e5m2"))
    with pytest.raises(ValueError, match=r"allowed: \[3, 7, 11, 15\]"):
        spec.check_operand_formats(get_format("float8_e4m3_b9"), get_format("float8_e4m3"))
