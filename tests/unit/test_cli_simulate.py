"""`simulate` through its real entry point (a subprocess running the installed console script's module)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMES = ["bf16", "fp8", "w4a16", "w4a8"]


def simulate(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", "import sys; from sim.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_default_run_prints_one_row_per_scheme_and_layer_speedups():
    out = simulate("--profile", "gaudi3").stdout
    lines = out.splitlines()
    assert "llama-2-7b" in lines[0]
    rows = [ln.split() for ln in lines if ln.startswith("gaudi3 ")]
    assert [r[1] for r in rows] == SCHEMES
    assert rows[0][6] == "1.00x"  # bf16 against itself
    assert "W4A8 vs BF16 per op: gaudi3" in out
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "attention", "decoder layer"):
        assert op in out


def test_json_is_valid_and_states_units():
    proc = simulate("run", "--profile", "h100", "--batch", "1,8", "--scheme", "bf16,w4a8", "--format", "json",
                    "--input-len", "128", "--output-len", "16")
    doc = json.loads(proc.stdout)
    assert doc["units"]["*_s"] == "seconds"
    assert len(doc["summary"]) == 4
    row = {(r["scheme"], r["batch"]): r for r in doc["summary"]}
    assert row[("bf16", 1)]["speedup_vs_bf16"] == 1.0
    assert row[("w4a8", 1)]["weights_bytes"] < row[("bf16", 1)]["weights_bytes"] / 3
    assert row[("w4a8", 8)]["prefill_latency_s"] > 0
    assert doc["simulations"][0]["steps"]["prefill"]["ops"]


def test_csv_matches_json_numbers():
    args = ("run", "--profile", "h200", "--batch", "4", "--input-len", "256", "--output-len", "8", "--quiet")
    rows = list(csv.DictReader(io.StringIO(simulate(*args, "--format", "csv").stdout)))
    doc = json.loads(simulate(*args, "--format", "json").stdout)
    assert [r["scheme"] for r in rows] == SCHEMES
    for r, j in zip(rows, doc["summary"]):
        assert float(r["decode_time_per_token_s"]) == j["decode_time_per_token_s"]


def test_set_override_changes_the_prediction():
    base = json.loads(simulate("run", "--profile", "h100", "--scheme", "bf16", "--batch", "1",
                               "--format", "json").stdout)["summary"][0]
    slow = json.loads(simulate("run", "--profile", "h100", "--scheme", "bf16", "--batch", "1", "--format", "json",
                               "--set", "memory.hbm_bandwidth_bytes_per_s=1.0e12").stdout)["summary"][0]
    assert slow["decode_time_per_token_s"] > 1.5 * base["decode_time_per_token_s"]


def test_out_dir_is_written_and_replotted_without_rerunning(tmp_path: Path):
    out = tmp_path / "run"
    simulate("run", "--profile", "gaudi2,h100", "--batch", "1,16", "--input-len", "256", "--output-len", "16",
             "--out", str(out), "--quiet")
    for name in ("config.json", "results.csv", "results.json", "ops.csv", "profile_gaudi2.json",
                 "speedup_w4a8_vs_bf16.png", "roofline_h100.png", "breakdown_gaudi2_decode.png", "memory_h100.png"):
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["request"]["profiles"] == ["gaudi2", "h100"]
    profile = json.loads((out / "profile_h100.json").read_text())
    assert profile["memory"]["hbm_bandwidth_bytes_per_s"] > 1e12
    for png in out.glob("*.png"):
        png.unlink()
    listed = simulate("plot", str(out)).stdout.split()
    assert len(listed) >= 7 and all(Path(p).exists() for p in listed)


def test_profiles_list_show_validate(tmp_path: Path):
    names = [ln.split()[0] for ln in simulate("profiles", "list").stdout.splitlines()]
    assert {"gaudi2", "gaudi3", "h100", "h200"} <= set(names)
    shown = json.loads(simulate("profiles", "show", "h100", "--format", "json",
                                "--set", "host.step_overhead_s=0.002").stdout)
    assert shown["host"]["step_overhead_s"] == 0.002
    assert "numerics" in shown
    assert "memory:" in simulate("profiles", "show", "gaudi3").stdout
    assert simulate("profiles", "validate").stdout.count("ok ") == len(names)
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: h100\nname: bad\nmemory:\n  hbm_bandwidth_bytes_per_s: 3.35e12\n")
    proc = simulate("profiles", "validate", str(bad), check_rc=1)
    assert "FAIL" in proc.stdout and "memory.hbm_bandwidth_bytes_per_s" in proc.stdout


def test_models_list():
    out = simulate("models", "list").stdout
    for name in ("llama-2-7b", "llama-2-70b", "llama-3-8b", "smollm2-135m"):
        assert name in out


def test_capacity_plan_and_csv(tmp_path: Path):
    proc = simulate("capacity", "--model", "llama-2-7b", "--profile", "h100,gaudi3", "--scheme", "bf16,w4a8",
                    "--tokens-per-s", "3000", "--input-len", "512", "--output-len", "64", "--tpot-ms", "40",
                    "--out", str(tmp_path), "--quiet")
    assert "Capacity plan: llama-2-7b" in proc.stdout
    rows = list(csv.DictReader(io.StringIO((tmp_path / "capacity.csv").read_text())))
    assert len(rows) == 4
    for r in rows:
        assert r["feasible"] == "True"
        assert int(r["devices"]) == int(r["tp"]) * int(r["replicas"])
        assert float(r["tpot_s"]) <= 0.040 and float(r["ttft_s"]) <= 2.0
        assert float(r["system_output_tokens_per_s"]) >= 3000
    doc = json.loads(simulate("capacity", "--model", "llama-2-7b", "--profile", "h100", "--scheme", "w4a8",
                              "--requests-per-s", "2", "--format", "json").stdout)
    assert doc["target"]["required_output_tokens_per_s"] == 2 * 256


def test_capacity_reports_infeasible_targets():
    doc = json.loads(simulate("capacity", "--model", "llama-2-70b", "--profile", "h100", "--scheme", "bf16",
                              "--tokens-per-s", "100", "--tpot-ms", "0.5", "--format", "json").stdout)
    plan = doc["plans"][0]
    assert plan["feasible"] is False and "time per output token" in plan["reason"]


@pytest.mark.parametrize("args, rc, message", [
    (["--profile", "nope"], 1, "unknown profile; expected one of ["),
    (["run", "--model", "gpt-9"], 1, "unknown model; expected one of ["),
    (["run", "--scheme", "int2"], 1, "scheme 'int2': expected one of"),
    (["run", "--batch", "0"], 2, "--batch: '0': expected a positive integer"),
    (["run", "--format", "xml"], 2, "invalid choice: 'xml'"),
    (["run", "--set", "memory.hbm_bandwidth=1"], 1, "memory.hbm_bandwidth: override of an unknown key"),
    (["run", "--set", "nonsense"], 1, "expected KEY=VALUE"),
    (["frobnicate"], 2, "unrecognized arguments"),
    (["profiles"], 2, "arguments are required: {list,show,validate}"),
    (["profiles", "show", "missing.yaml"], 1, "profile file not found"),
    (["capacity", "--model", "llama-2-7b"], 2, "one of the arguments --tokens-per-s --requests-per-s is required"),
    (["run", "--tp", "3"], 1, "tp=3: must divide"),
])
def test_errors_exit_codes_and_messages(args, rc, message):
    proc = simulate(*args, check_rc=rc)
    assert message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_plot_of_a_non_run_directory_is_an_error(tmp_path: Path):
    proc = simulate("plot", str(tmp_path), check_rc=1)
    assert "not a `simulate run --out` directory" in proc.stderr
