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


@pytest.fixture
def scanimage_tiff():
    """Write ``write(path, frames, frame_data)``: a ScanImage (2016+) BigTIFF, its settings
    ``{"SI.hRoiManager.scanFrameRate": 30, ...}`` in the header block after the TIFF header and in
    every page's Software tag, as ScanImage lays them out; one page per frame, data before IFD."""
    import struct

    def write(path: Path, frames, frame_data: dict) -> Path:
        text = "".join(f"{key} = {value}\n" for key, value in frame_data.items()).encode()
        settings, rois = text + b"\0", b"{}\0"
        out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
        out += struct.pack("<IIII", 0x07030301, 3, len(settings), len(rois)) + settings + rois
        link = 8  # where the offset of the next IFD goes
        for frame in frames:
            height, width = frame.shape
            data = len(out)
            out += frame.tobytes()
            software = len(out)
            out += settings
            out += b"\0" * (len(out) % 2)
            entries = [  # (tag, type, count, value or offset): 3 SHORT, 2 ASCII, 16 LONG8
                (256, 16, 1, width), (257, 16, 1, height), (258, 3, 1, frame.itemsize * 8),
                (259, 3, 1, 1), (262, 3, 1, 1), (273, 16, 1, data), (277, 3, 1, 1),
                (278, 16, 1, height), (279, 16, 1, frame.nbytes),
                (305, 2, len(settings), software), (339, 3, 1, 2 if frame.dtype.kind == "i" else 1),
            ]  # fmt: skip
            struct.pack_into("<Q", out, link, len(out))
            out += struct.pack("<Q", len(entries))
            for tag, kind, count, value in entries:
                out += struct.pack("<HHQ", tag, kind, count)
                out += struct.pack("<H6x" if kind == 3 else "<Q", value)
            link = len(out)
            out += struct.pack("<Q", 0)
        Path(path).write_bytes(bytes(out))
        return Path(path)

    return write


class _LiveTokens:
    """Counts the recordings whose tokens `training.data` built, and the most alive at once."""

    def __init__(self, monkeypatch):
        import dataclasses
        import gc
        import weakref

        from napari_neurt.training import data

        self.alive, self.built, self.most = {}, 0, 0
        build = data.neighborhood_tokens

        def counted(*args, **kwargs):
            made = build(*args, **kwargs)
            tokens = made.tokens.copy()  # an array of its own, freed when the last user drops it
            key = id(tokens)
            self.alive[key] = weakref.ref(tokens, lambda _, key=key: self.alive.pop(key, None))
            self.built += 1
            gc.collect()
            self.most = max(self.most, len(self.alive))
            return dataclasses.replace(made, tokens=tokens)

        monkeypatch.setattr(data, "neighborhood_tokens", counted)


@pytest.fixture
def live_tokens(monkeypatch) -> _LiveTokens:
    """How many recordings' tokens the training streams built and kept alive at once: what
    streaming bounds (counted, rather than the memory measured)."""
    return _LiveTokens(monkeypatch)
