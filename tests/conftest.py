"""Shared fixtures. Real recordings and the published NEuRT weights are found through environment
variables (`.ci/run` sets them to ../shared/...); tests that need them skip with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


@pytest.fixture
def torchrun():
    """Run ``torchrun --standalone --nproc_per_node=2 ARGS`` (gloo on CPU, one torch thread per
    process, a free port of its own); returns the finished process, output captured."""
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if path is None:  # it comes with torch: a missing one is a broken environment, not a skip
        pytest.fail(f"no torchrun next to {sys.executable}; reinstall torch")

    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [path, "--standalone", "--nproc_per_node=2", *map(str, args)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    return run
