"""Shared fixtures. Real recordings and the published NEuRT weights are found through environment
variables (`.ci/run` sets them to ../shared/...); tests that need them skip with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _env_dir(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{what}: set {variable} to its folder (.ci/run points it at ../shared)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{what}: {variable}={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder of real recordings (../shared/data), from NEURT_TEST_DATA."""
    return _env_dir("NEURT_TEST_DATA", "real test recordings")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """Folder of the published NEuRT weights (../shared/neurt_official), from NEURT_WEIGHTS_DIR."""
    return _env_dir("NEURT_WEIGHTS_DIR", "published NEuRT weights")
