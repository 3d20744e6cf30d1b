"""suite2p output folders (``suite2p/plane0``) as a `Recording`.

``stat.npy`` and ``ops.npy`` are pickles; they are read through `load_pickled_npy`, which admits
only numpy arrays and plain Python data, so opening a folder from someone else cannot run code.

Overlaps: suite2p ROIs may share pixels. In the label image a shared pixel goes to the ROI with the
largest weight (``lam``) there; ties go to the ROI with the lower suite2p index. Only the ROIs kept
(cells, with ``cells_only=True``) compete, so a cell never loses a pixel to a discarded ROI.
Every other pixel of a ROI's ``ypix``/``xpix`` carries that ROI's label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..recording import Recording
from ._common import (
    PathLike,
    ReaderError,
    existing_path,
    positive_number,
    smallest_label_dtype,
)
from ._safe_pickle import load_pickled_npy

__all__ = ["is_suite2p_folder", "read_suite2p", "suite2p_labels"]

_PLANE_FOLDER_HELP = (
    "a suite2p plane folder (e.g. suite2p/plane0) holds F.npy, Fneu.npy, spks.npy, iscell.npy, "
    "stat.npy and ops.npy (suite2p 1.x: or db.npy, settings.npy and reg_outputs.npy)"
)
# suite2p 1.x splits ops.npy into these (and writes a merged ops.npy only with save_ops_orig)
_SPLIT_OPS_FILES = ("db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy")


def is_suite2p_folder(path: PathLike) -> bool:
    """Whether `path` is a folder with suite2p's ``F.npy`` and ``stat.npy``."""
    path = Path(path)
    return path.is_dir() and (path / "F.npy").is_file() and (path / "stat.npy").is_file()


def _require(folder: Path, name: str) -> Path:
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no {name}; {_PLANE_FOLDER_HELP}")
    return file


def _load_numeric(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except ValueError as error:
        raise ReaderError(f"{file} is not a numeric .npy array: {error}") from None


def suite2p_labels(stat: np.ndarray, shape: tuple[int, int], which: np.ndarray) -> np.ndarray:
    """Label image of the suite2p ROIs `which` (indices into `stat`); label = index + 1.

    A pixel claimed by several of these ROIs goes to the one with the largest ``lam`` there (the
    lower index on ties).
    """
    height, width = shape
    labels = np.zeros(shape, dtype=smallest_label_dtype(len(stat)))
    best_weight = np.full(shape, -np.inf, dtype=np.float64)
    for index in which:  # ascending, so that on ties the lower index (first come) keeps the pixel
        roi = stat[index]
        ypix = np.asarray(roi["ypix"], dtype=np.int64)
        xpix = np.asarray(roi["xpix"], dtype=np.int64)
        lam = np.asarray(roi.get("lam", np.ones(len(ypix))), dtype=np.float64)
        inside = (ypix >= 0) & (ypix < height) & (xpix >= 0) & (xpix < width)
        ypix, xpix, lam = ypix[inside], xpix[inside], lam[inside]
        wins = lam > best_weight[ypix, xpix]
        labels[ypix[wins], xpix[wins]] = index + 1
        best_weight[ypix[wins], xpix[wins]] = lam[wins]
    return labels


def _centroid(roi: dict) -> tuple[float, float]:
    """suite2p's ``med`` (y, x), else the lam-weighted centre of the ROI's pixels."""
    if "med" in roi and np.size(roi["med"]) == 2:
        return float(roi["med"][0]), float(roi["med"][1])
    lam = np.asarray(roi.get("lam", np.ones(len(roi["ypix"]))), dtype=np.float64)
    return (
        float(np.average(roi["ypix"], weights=lam)),
        float(np.average(roi["xpix"], weights=lam)),
    )


def read_suite2p(
    folder: PathLike, *, cells_only: bool = True, frame_rate: float | None = None
) -> Recording:
    """Read a suite2p plane folder as a `Recording` of its fluorescence traces ``F.npy``.

    Parameters
    ----------
    folder
        The plane folder, e.g. ``.../suite2p/plane0``.
    cells_only
        Keep only the ROIs suite2p classified as cells (``iscell[:, 0] == 1``); False keeps all.
    frame_rate
        Frames per second, overriding ``ops["fs"]``, which is only what was typed into suite2p's
        settings (often its default when the true rate was not given).

    Returns
    -------
    Recording
        ``traces`` are the kept rows of ``F.npy``; ``neuron_ids`` are suite2p ROI index + 1, which
        are also the values in ``labels`` (so ``metadata["suite2p_index"] = neuron_ids - 1`` are
        the rows of ``F.npy``); ``centroids`` are suite2p's ``med``; ``mean_image`` is
        ``ops["meanImg"]``; ``frame_rate`` is ``ops["fs"]``. ``metadata`` holds ``"neuropil"``
        (the kept rows of ``Fneu.npy``), ``"spikes"`` (``spks.npy``), ``"iscell"`` (classifier
        probabilities), ``"trace_kind"`` (``"F"``) and ``"frame_rate_from"``. suite2p does not store
        a pixel size; pass one to `read_recording` if you need distances in micrometres.

    Raises
    ------
    FileNotFoundError
        If the folder or one of ``F.npy``, ``stat.npy``, ``ops.npy`` is missing (for suite2p
        1.x without ``ops.npy``: all of ``db.npy``, ``settings.npy``, ``reg_outputs.npy``).
    ValueError
        If the files disagree (number of ROIs or frames), or a pickle holds anything but data
        (`UnsafePickleError`).
    """
    folder = existing_path(folder, "suite2p folder")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; {_PLANE_FOLDER_HELP}")
    f_file = _require(folder, "F.npy")
    stat_file = _require(folder, "stat.npy")
    ops, ops_name = _read_ops(folder)

    traces = _load_numeric(f_file)
    if traces.ndim != 2:
        raise ReaderError(f"{f_file} should be (ROIs, frames); it has shape {traces.shape}")
    n_rois = traces.shape[0]
    stat = load_pickled_npy(stat_file)
    if stat.ndim != 1 or len(stat) != n_rois or not all(isinstance(s, dict) for s in stat):
        raise ReaderError(
            f"{stat_file} should hold one dict per ROI of F.npy ({n_rois}); got {stat.shape}"
        )
    for index, roi in enumerate(stat):
        if "ypix" not in roi or "xpix" not in roi or len(roi["ypix"]) != len(roi["xpix"]):
            raise ReaderError(f"{stat_file}: ROI {index} has no valid ypix/xpix pixel lists")

    extra = {}
    for name in ("Fneu", "spks"):
        file = folder / f"{name}.npy"
        if file.is_file():
            extra[name] = _load_numeric(file)
            if extra[name].shape != traces.shape:
                raise ReaderError(
                    f"{file} has shape {extra[name].shape} but F.npy has {traces.shape}"
                )
    iscell_file = folder / "iscell.npy"
    if iscell_file.is_file():
        iscell = _load_numeric(iscell_file).astype(np.float64)
        if iscell.ndim == 1:  # hand-made files: the 0/1 column alone
            iscell = iscell[:, None]
        if iscell.ndim != 2 or iscell.shape[0] != n_rois:
            raise ReaderError(f"{iscell_file} has shape {iscell.shape} but F.npy has {n_rois} ROIs")
        is_cell, probability = iscell[:, 0] == 1, iscell[:, -1]
    elif cells_only:
        raise FileNotFoundError(
            f"{folder} has no iscell.npy, so cells cannot be told from other ROIs; "
            "read it with cells_only=False to keep every ROI"
        )
    else:
        is_cell, probability = np.ones(n_rois, dtype=bool), np.full(n_rois, np.nan)

    keep = np.flatnonzero(is_cell) if cells_only else np.arange(n_rois)
    if len(keep) == 0:
        raise ValueError(
            f"{folder}: suite2p classified none of its {n_rois} ROIs as a cell; "
            "read it with cells_only=False to keep every ROI"
        )

    shape = _plane_shape(ops, stat)
    labels = suite2p_labels(stat, shape, keep)
    frame_rate_from = "argument"
    if frame_rate is None:
        frame_rate = positive_number(ops.get("fs"))
        frame_rate_from = f"{ops_name.removesuffix('.npy')}.fs"
        if frame_rate is None:
            raise ReaderError(
                f"{folder / ops_name} has no valid frame rate 'fs' ({ops.get('fs')!r}); pass "
                "frame_rate=..."
            )
    mean_image = ops.get("meanImg")
    if mean_image is not None and np.shape(mean_image) != shape:
        mean_image = None  # suite2p versions differ; a misfit image is worse than none

    metadata = {
        "trace_kind": "F",
        "suite2p_index": keep.astype(np.int64),
        "iscell": probability[keep],
        "is_cell": is_cell[keep],
        "frame_rate_from": frame_rate_from,
        "n_rois_in_folder": n_rois,
        "cells_only": cells_only,
    }
    if "Fneu" in extra:
        metadata["neuropil"] = extra["Fneu"][keep].astype(np.float32, copy=False)
        extraction = ops.get("extraction")  # suite2p 1.x keeps it in a section of its own
        if "neucoeff" not in ops and isinstance(extraction, dict):
            ops["neucoeff"] = extraction.get("neuropil_coefficient", 0.7)
        coefficient = np.asarray(ops.get("neucoeff", 0.7), dtype=np.float64).ravel()
        metadata["neucoeff"] = float(coefficient[0]) if coefficient.size == 1 else 0.7
    if "spks" in extra:
        metadata["spikes"] = extra["spks"][keep].astype(np.float32, copy=False)
    return Recording(
        traces=traces[keep],
        neuron_ids=keep + 1,
        centroids=np.array([_centroid(stat[i]) for i in keep], dtype=np.float64).reshape(-1, 2),
        frame_rate=frame_rate,
        labels=labels,
        mean_image=None if mean_image is None else np.asarray(mean_image, dtype=np.float32),
        source=str(folder),
        metadata=metadata,
    )


def _read_ops(folder: Path) -> tuple[dict, str]:
    """suite2p's settings and outputs for the plane, one dict, and the file its frame rate is in.

    ``ops.npy``; where suite2p 1.x did not write it, its split files merged (``db.npy``: the frame
    size; ``settings.npy``: ``fs`` and sections such as ``extraction``; ``reg_outputs.npy``:
    ``meanImg``)."""
    files = [folder / "ops.npy"] if (folder / "ops.npy").is_file() else [
        folder / name for name in _SPLIT_OPS_FILES if (folder / name).is_file()
    ]
    if not files:
        raise FileNotFoundError(f"{folder} has no ops.npy; {_PLANE_FOLDER_HELP}")
    ops = {}
    for file in files:
        part = load_pickled_npy(file)
        part = part.item() if part.dtype == object and part.ndim == 0 else part
        if not isinstance(part, dict):
            raise ReaderError(f"{file} should hold a dict of suite2p settings")
        ops.update(part)
    has_rate = next((f.name for f in files if f.name in ("ops.npy", "settings.npy")), None)
    return ops, has_rate or files[0].name


def _plane_shape(ops: dict, stat: np.ndarray) -> tuple[int, int]:
    if "Ly" in ops and "Lx" in ops:
        sizes = [np.asarray(ops[key]).ravel() for key in ("Ly", "Lx")]
        if all(size.size == 1 for size in sizes):  # a number, or one in an array
            return int(sizes[0][0]), int(sizes[1][0])
    # Old or hand-made folders: the smallest frame that holds every ROI pixel.
    rows = [np.max(s["ypix"]) for s in stat if np.size(s["ypix"])]
    cols = [np.max(s["xpix"]) for s in stat if np.size(s["xpix"])]
    if not rows or not cols:
        raise ReaderError(
            "ops.npy has no frame size (Ly, Lx) and no ROI in stat.npy has pixels to infer it from"
        )
    return int(max(rows)) + 1, int(max(cols)) + 1
