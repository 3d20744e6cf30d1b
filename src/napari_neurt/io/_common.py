"""Errors and small checks shared by the readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike


class ReaderError(ValueError):
    """A file exists but is damaged or is not what its name says (truncated TIFF, bad HDF5, ...)."""


def existing_path(path: PathLike, what: str = "file") -> Path:
    """`path` as a Path, or FileNotFoundError naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def smallest_label_dtype(max_label: int) -> np.dtype:
    """int32 when the ids fit (napari and most tools expect it), else int64."""
    return np.dtype(np.int32) if max_label <= np.iinfo(np.int32).max else np.dtype(np.int64)


def positive_number(value: object) -> float | None:
    """A stored rate or size as a float when it is one positive finite number (a Python or
    numpy scalar, or an array of one element, as MATLAB-minded tools save them), else None."""
    try:
        values = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if values.size != 1 or not np.isfinite(values[0]) or values[0] <= 0:
        return None
    return float(values[0])
