"""dpq.assets: cache location, missing assets, hash verification and unpacking (no network)."""

import hashlib
import zipfile

import pytest

from dpq import assets
from dpq.assets import Asset, AssetFetchError, AssetMissingError


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DPQSIM_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path


def test_missing_asset_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("DPQSIM_CACHE", str(tmp_path))
    with pytest.raises(AssetMissingError, match="dpq assets fetch smollm2"):
        assets.asset_path("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(ValueError, match="unknown asset"):
        assets.asset_path("llama", "x")
    with pytest.raises(ValueError, match="has no file"):
        assets.asset_path("smollm2", "nothing.bin")


def _fake_wheel(tmp_path, monkeypatch, sha=None):
    monkeypatch.setenv("DPQSIM_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    whl = wheels / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("fake/data/a.txt", "hello")
        z.writestr("fake/other.py", "x = 1")
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    asset = Asset("fake", "fake==1.0", whl.name, sha or digest, ("fake/data/a.txt",), "test asset")
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def test_fetch_unpacks_only_the_members_of_a_verified_wheel(tmp_path, monkeypatch):
    _fake_wheel(tmp_path, monkeypatch)
    assets.fetch(["fake"], log=None)
    p = assets.asset_path("fake", "a.txt")
    assert p.read_text() == "hello"
    assert not (p.parents[1] / "other.py").exists()
    assert assets.is_present("fake")
    assets.fetch(["fake"], log=None)  # idempotent


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    _fake_wheel(tmp_path, monkeypatch, sha="0" * 64)
    monkeypatch.setattr(assets, "_download_wheel", lambda a, log, pip_args: tmp_path / "cache" / "wheels" /
                        a.wheel_filename)
    with pytest.raises(AssetFetchError, match="expected 0000"):
        assets.fetch(["fake"], log=None)
    assert not assets.is_present("fake")
    assert not (tmp_path / "cache" / "assets" / "fake").exists()
