from sim.errors import ConfigError, describe_value


def test_config_error_names_file_key_and_value():
    err = ConfigError("hw_profiles/h100.yaml", "memory.hbm_bandwidth_bytes_per_s",
                      f"value {describe_value('3.35e12')}: expected a number")
    text = str(err)
    assert text.startswith("hw_profiles/h100.yaml: memory.hbm_bandwidth_bytes_per_s: ")
    assert "'3.35e12' (str)" in text
    assert isinstance(err, ValueError)
