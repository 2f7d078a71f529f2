import dataclasses

import pytest
import yaml

from sim.errors import ConfigError
from sim.profiles import (PROFILE_DIR, list_profiles, load_profile, numeric_keys, parse_override_value,
                          parse_overrides)

SHIPPED = ["gaudi2", "gaudi3", "h100", "h200"]


def _write(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _perf_only(name):
    """A shipped profile's raw mapping without its numerics section (owned by sim.datapath)."""
    raw = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
    raw.pop("numerics", None)
    return raw


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_with_units_and_facts(name):
    p = load_profile(name)
    assert p.name == name and p.source.endswith(f"{name}.yaml")
    assert p.memory.hbm_bandwidth_bytes_per_s > 1e12
    assert set(p.matrix_engine.peak_flops_per_s) == {"bf16", "fp8"}
    assert p.dequant.placement in ("fused", "vector_pass")


def test_list_profiles_includes_the_four_chips():
    assert set(SHIPPED) <= set(list_profiles())


def test_facts_file_numbers():
    h100, h200, g2, g3 = (load_profile(n) for n in ("h100", "h200", "gaudi2", "gaudi3"))
    assert h100.memory.hbm_bandwidth_bytes_per_s == 3.35e12 and h200.memory.hbm_bandwidth_bytes_per_s == 4.8e12
    assert h100.matrix_engine.peak_flops_per_s == {"bf16": 9.89e14, "fp8": 1.979e15}
    assert g2.matrix_engine.peak_flops_per_s["fp8"] == 8.65e14
    assert g3.matrix_engine.peak_flops_per_s["fp8"] == g3.matrix_engine.peak_flops_per_s["bf16"] == 1.835e15
    assert g3.memory.capacity_bytes == 1.28e11 and g2.memory.on_chip_bytes == 4.8e7


def test_every_number_has_a_source():
    for name in list_profiles():
        p = load_profile(name)
        for key in numeric_keys(p.raw):
            assert p.sources[key].strip(), (name, key)


def test_extends_inherits_and_overrides():
    h100, h200 = load_profile("h100"), load_profile("h200")
    assert h200.memory.capacity_bytes == 143771 * 2**20
    # inherited, except the efficiency curves fitted on the H200's own GEMMs (deep merge of the section)
    assert h200.matrix_engine.efficiency_by_flops != h100.matrix_engine.efficiency_by_flops
    assert dataclasses.replace(h200.matrix_engine, efficiency_by_flops=h100.matrix_engine.efficiency_by_flops) \
        == h100.matrix_engine
    assert h200.kernel == h100.kernel and h200.host == h100.host
    assert h200.raw.get("numerics") == h100.raw.get("numerics") or "numerics" in h200.raw


def test_extends_deep_merges_numerics_too(tmp_path):
    base = _perf_only("h100")
    base["numerics"] = {"a": {"b": 1, "c": 2}}
    _write(tmp_path, "base", yaml.safe_dump(base))
    child = _write(tmp_path, "child", "name: child\nextends: base.yaml\nnumerics: {a: {c: 3}}\n")
    from sim.profiles import load_raw
    raw, _ = load_raw(child)
    assert raw["numerics"] == {"a": {"b": 1, "c": 3}} and raw["name"] == "child"


def test_overrides_parse_scientific_notation_and_set_source():
    assert parse_override_value("3e12") == 3e12 and parse_override_value("7") == 7
    assert parse_override_value("fused") == "fused"
    p = load_profile("h100", parse_overrides(["memory.hbm_bandwidth_bytes_per_s=3.0e12",
                                              "dequant.placement=vector_pass"]))
    assert p.memory.hbm_bandwidth_bytes_per_s == 3.0e12 and p.dequant.placement == "vector_pass"
    assert p.sources["memory.hbm_bandwidth_bytes_per_s"] == "override"


@pytest.mark.parametrize("override,fragment", [
    ({"memory.hbm_bandwidth_bytes_per_s": "fast"}, "expected a number"),
    ({"memory.hbm_bandwidth_bytes_per_s": -1.0}, "expected > 0"),
    ({"dequant.placement": "somewhere"}, "expected one of ['fused', 'vector_pass']"),
    ({"memory.no_such_key": 1.0}, "unknown key"),
    ({"nosection.x": 1.0}, "unknown section"),
    ({"vector_engine.efficiency": 1.5}, "expected <= 1"),
])
def test_bad_overrides_name_key_and_expectation(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_profile("h100", override)
    assert fragment in str(err.value) and "h100.yaml" in str(err.value)


def test_string_where_number_belongs_names_file_key_value(tmp_path):
    raw = _perf_only("h100")
    text = yaml.safe_dump(raw).replace("hbm_bandwidth_bytes_per_s: 3350000000000.0",
                                       "hbm_bandwidth_bytes_per_s: 3.35e12")
    path = _write(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg and "memory.hbm_bandwidth_bytes_per_s" in msg and "'3.35e12' (str)" in msg
    assert "expected a number" in msg


def test_unknown_and_missing_keys_and_missing_source(tmp_path):
    raw = _perf_only("h100")
    raw["memory"]["hbm_speed"] = 1.0
    with pytest.raises(ConfigError, match=r"memory\.hbm_speed: unknown key"):
        load_profile(_write(tmp_path, "a", yaml.safe_dump(raw)))
    raw = _perf_only("h100")
    del raw["kernel"]["launch_overhead_s"]
    with pytest.raises(ConfigError, match=r"kernel\.launch_overhead_s: missing"):
        load_profile(_write(tmp_path, "b", yaml.safe_dump(raw)))
    raw = _perf_only("h100")
    del raw["sources"]["kernel.launch_overhead_s"]
    with pytest.raises(ConfigError, match="missing provenance"):
        load_profile(_write(tmp_path, "c", yaml.safe_dump(raw)))


def test_bad_curve_and_tiles(tmp_path):
    raw = _perf_only("h100")
    raw["memory"]["hbm_efficiency_by_transfer_bytes"] = [[1.0e6, 0.5], [1.0e5, 0.6]]
    with pytest.raises(ConfigError, match="strictly increasing"):
        load_profile(_write(tmp_path, "a", yaml.safe_dump(raw)))
    raw = _perf_only("h100")
    raw["matrix_engine"]["tile_shapes"] = [[128, 128]]
    with pytest.raises(ConfigError, match=r"tile_shapes\[0\]"):
        load_profile(_write(tmp_path, "b", yaml.safe_dump(raw)))


def test_unknown_profile_and_circular_extends(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("tpu9000")
    a = _write(tmp_path, "x", "name: x\nextends: y.yaml\n")
    _write(tmp_path, "y", "name: y\nextends: x.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_profile(a)


def test_profile_is_frozen_and_serialisable():
    import json
    p = load_profile("gaudi3")
    with pytest.raises(Exception):
        p.name = "other"
    d = p.to_dict()
    json.dumps(d)
    assert d["memory"]["hbm_bandwidth_bytes_per_s"] == 3.67e12


def test_readme_explains_every_field():
    from dataclasses import fields

    from sim.profiles import _OPTIONAL_SECTIONS, _SECTIONS
    text = (PROFILE_DIR / "README.md").read_text()
    for sec, cls in _SECTIONS + _OPTIONAL_SECTIONS:
        assert f"### `{sec}`" in text
        for f in fields(cls):
            assert f"| `{f.name}` |" in text, (sec, f.name)


def test_booleans_and_stale_sources_are_checked(tmp_path):
    raw = _perf_only("h100")
    raw["dequant"]["expand_per_row_tile"] = "yes"
    with pytest.raises(ConfigError, match=r"dequant\.expand_per_row_tile.*expected true or false"):
        load_profile(_write(tmp_path, "a", yaml.safe_dump(raw)))
    raw = _perf_only("h100")
    raw["sources"]["memory.hbm_speed"] = "datasheet"
    with pytest.raises(ConfigError, match=r"sources\.memory\.hbm_speed"):
        load_profile(_write(tmp_path, "b", yaml.safe_dump(raw)))
