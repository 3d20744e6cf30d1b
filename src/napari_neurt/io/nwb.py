"""Optical physiology in NWB files (``processing/ophys``) as a `Recording`.

Needs ``pynwb`` (``pip install 'napari-neurt[nwb]'``), imported only when a file is read.

What is read: one RoiResponseSeries (from a DfOverF container if there is one, else from a
Fluorescence container), its PlaneSegmentation's ``image_mask`` or ``pixel_mask`` for the labels
(pixel masks do not give the image's shape: that of the module's largest summary image holding
every ROI pixel, else the smallest that holds them),
its ``rate`` (or the median interval of its ``timestamps``) for the frame rate, and the imaging
plane's ``grid_spacing`` for the pixel size. Centroids are the masks' weighted centres, or the
table's ``centroid_y`` and ``centroid_x`` columns where it has them (napari-neurt's export).

Axes: NWB names the first image axis *x*, the second *y* (``image_mask`` is (num_x, num_y) and a
TwoPhotonSeries is (time, x, y)), and suite2p's NWB export writes ``pixel_mask`` as
(ypix, xpix, lam). So ``image_mask`` is taken as a (rows, cols) image as stored, and a
``pixel_mask`` entry (x, y, weight) is pixel (row = x, col = y).

Overlaps: a pixel in several ROIs goes to the ROI with the largest mask weight there (ties: the
ROI in the lower row of the PlaneSegmentation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..recording import Recording
from ._common import PathLike, ReaderError, existing_path, smallest_label_dtype

__all__ = ["read_nwb"]

CENTROID_COLUMNS = ("centroid_y", "centroid_x")  # PlaneSegmentation columns our export writes
LABELS_IMAGE = "labels"  # the ROI label image napari-neurt's export writes beside the masks
_NEEDS_PYNWB = "reading NWB files needs pynwb: pip install 'napari-neurt[nwb]'"

_UNIT_TO_UM = {
    "meters": 1e6, "meter": 1e6, "m": 1e6,
    "millimeters": 1e3, "millimeter": 1e3, "mm": 1e3,
    "micrometers": 1.0, "micrometer": 1.0, "microns": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0,
    "nanometers": 1e-3, "nanometer": 1e-3, "nm": 1e-3,
}  # fmt: skip


def _import_pynwb():
    try:
        import pynwb
    except ImportError as error:
        raise ImportError(_NEEDS_PYNWB) from error
    return pynwb


def _response_series(nwbfile) -> list[tuple[str, object]]:
    """Every RoiResponseSeries under DfOverF/Fluorescence containers, best candidate first."""
    from pynwb.ophys import DfOverF, Fluorescence

    found = []
    modules = sorted(nwbfile.processing.values(), key=lambda m: m.name != "ophys")
    for module in modules:
        for interface in module.data_interfaces.values():
            if not isinstance(interface, (DfOverF, Fluorescence)):
                continue
            for series in interface.roi_response_series.values():
                name = f"{module.name}/{interface.name}/{series.name}"
                # DfOverF first; then a container called "Fluorescence" before suite2p's
                # "Neuropil" and "Deconvolved", which are Fluorescence containers too.
                side_product = any(w in name.lower() for w in ("neuropil", "deconvolved", "spike"))
                rank = (
                    not isinstance(interface, DfOverF),
                    side_product,
                    interface.name != "Fluorescence",
                )
                found.append((rank, name, series))
    found.sort(key=lambda item: item[0])
    return [(name, series) for _, name, series in found]


def _pick_series(candidates: list[tuple[str, object]], wanted: str | None, path: Path):
    if not candidates:
        raise ReaderError(
            f"{path} has no RoiResponseSeries in a DfOverF or Fluorescence container; it holds no "
            "ROI traces (an NWB file with only a TwoPhotonSeries movie needs segmenting first)"
        )
    if wanted is None:
        return candidates[0]
    for name, series in candidates:
        if wanted in (name, series.name) or name.endswith("/" + wanted) or f"/{wanted}/" in name:
            return name, series
    raise ValueError(
        f"{path} has no response series {wanted!r}; it has: {', '.join(n for n, _ in candidates)}"
    )


def _frame_rate(series, path: Path) -> tuple[float, str]:
    if series.rate is not None and float(series.rate) > 0:
        return float(series.rate), "rate"
    if series.timestamps is not None:
        timestamps = np.asarray(series.timestamps[:], dtype=np.float64)
        steps = np.diff(timestamps)
        if len(steps) and np.median(steps) > 0:
            return float(1.0 / np.median(steps)), "timestamps"
    raise ReaderError(
        f"{path}: the series {series.name!r} has neither a rate nor usable timestamps; "
        "pass frame_rate=..."
    )


def _pixel_size_um(imaging_plane) -> float | None:
    spacing = getattr(imaging_plane, "grid_spacing", None)
    if spacing is None:
        return None
    spacing = np.asarray(spacing[:], dtype=np.float64).ravel()[:2]
    unit = str(getattr(imaging_plane, "grid_spacing_unit", "meters") or "meters").strip().lower()
    if unit not in _UNIT_TO_UM or len(spacing) == 0 or not np.all(spacing > 0):
        return None
    if not np.allclose(spacing, spacing[0]):
        return None  # anisotropic pixels: one number cannot describe them
    return float(spacing[0] * _UNIT_TO_UM[unit])


def _masks(
    table, rows: np.ndarray, path: Path
) -> tuple[list[tuple[np.ndarray, ...]], tuple | None]:
    """Per ROI (rows_px, cols_px, weights), and the image shape when the masks say it."""
    columns = set(table.colnames)
    if "image_mask" in columns:
        data = table["image_mask"].data
        if len(data.shape) != 3:
            raise ReaderError(
                f"{path}: image_mask has shape {data.shape}; only 2-D ROIs are supported"
            )
        images = np.asarray(data[np.sort(rows).tolist()])
        images = images[np.argsort(np.argsort(rows))]  # back to the series' order
        masks = []
        for image in images:
            r, c = np.nonzero(image)
            masks.append((r, c, image[r, c].astype(np.float64)))
        return masks, tuple(data.shape[1:])
    if "pixel_mask" in columns:
        masks = []
        column = table["pixel_mask"]
        for row in rows:
            entries = column[int(row)]
            x = np.array([e[0] for e in entries], dtype=np.int64)
            y = np.array([e[1] for e in entries], dtype=np.int64)
            w = np.array([e[2] for e in entries], dtype=np.float64)
            masks.append((x, y, w))
        return masks, None
    if "voxel_mask" in columns:
        raise ValueError(
            f"{path} holds volumetric ROIs (voxel_mask); only single planes are supported"
        )
    raise ReaderError(
        f"{path}: the PlaneSegmentation {table.name!r} has no image_mask or pixel_mask"
    )


def _summary_images(module) -> list[tuple[str, object]]:
    """(name, image) of every 2-D image in the module's Images containers."""
    from pynwb.base import Images

    if module is None:
        return []
    return [
        (name, image)
        for interface in module.data_interfaces.values() if isinstance(interface, Images)
        for name, image in interface.images.items() if len(image.data.shape) == 2
    ]


def _plane_shape(module, masks) -> tuple[int, int]:
    """The image shape for pixel masks, which do not say it: the largest summary image that
    holds every ROI pixel (a mean image, or the labels our export writes), else the smallest
    shape that does."""
    extent = tuple(
        int(max((m[k].max() + 1 for m in masks if len(m[k])), default=1)) for k in (0, 1)
    )
    shapes = [tuple(int(n) for n in image.data.shape) for _, image in _summary_images(module)]
    shapes = [s for s in shapes if s[0] >= extent[0] and s[1] >= extent[1]]
    return max(shapes, key=lambda s: s[0] * s[1]) if shapes else extent


def _mean_image(module, shape: tuple[int, int]) -> np.ndarray | None:
    """A summary image of the plane's shape from an Images container, preferring a mean image
    (never the ROI labels our export writes)."""
    images = [
        ("mean" not in name.lower(), name, image)
        for name, image in _summary_images(module)
        if tuple(image.data.shape) == tuple(shape) and name != LABELS_IMAGE
    ]
    if not images:
        return None
    return np.asarray(sorted(images, key=lambda i: i[:2])[0][2].data[:], dtype=np.float32)


def read_nwb(
    path: PathLike, *, series: str | None = None, frame_rate: float | None = None
) -> Recording:
    """Read ROI traces and masks from an NWB file as a `Recording`.

    Parameters
    ----------
    path
        An ``.nwb`` (HDF5) file with a ``processing`` module holding ROI response series.
    series
        Name of the RoiResponseSeries or of its container (e.g. ``"DfOverF"``, ``"Neuropil"``).
        Default: the first DfOverF series, else the Fluorescence one.
    frame_rate
        Frames per second, overriding the series' rate or timestamps.

    Returns
    -------
    Recording
        ``neuron_ids`` are the ROIs' row in the PlaneSegmentation + 1 (the label values);
        ``metadata["nwb_roi_id"]`` holds the NWB ids, ``metadata["trace_kind"]`` ``"DfOverF"`` or
        ``"Fluorescence"``, ``metadata["series"]`` the series read.

    Raises
    ------
    ImportError
        If pynwb is not installed.
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file has no ROI traces or masks, or they disagree (`ReaderError`).
    """
    pynwb = _import_pynwb()
    from pynwb.ophys import DfOverF

    path = existing_path(path, "NWB file")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
    except Exception as error:  # h5py/hdmf raise OSError, KeyError, ValueError... on non-NWB files
        raise ReaderError(
            f"{path} is not a readable NWB file ({type(error).__name__}: {error})"
        ) from None
    with io:
        try:
            nwbfile = io.read()
        except Exception as error:
            raise ReaderError(
                f"{path} is not a valid NWB file ({type(error).__name__}: {error})"
            ) from None
        name, chosen = _pick_series(_response_series(nwbfile), series, path)
        data = np.asarray(chosen.data[:], dtype=np.float32)
        traces = data[:, None].T if data.ndim == 1 else data.T  # NWB stores (time, ROIs)
        region = chosen.rois
        rows = np.asarray(region.data[:], dtype=np.int64)
        table = region.table
        if len(rows) != traces.shape[0]:
            raise ReaderError(f"{path}: {name} has {traces.shape[0]} traces but {len(rows)} ROIs")
        if len(np.unique(rows)) != len(rows):
            raise ReaderError(f"{path}: {name} refers to the same ROI twice")
        masks, shape = _masks(table, rows, path)
        module = nwbfile.processing.get(name.split("/")[0])
        if shape is None:
            shape = _plane_shape(module, masks)
        rate, rate_from = (
            (float(frame_rate), "argument") if frame_rate else _frame_rate(chosen, path)
        )
        pixel_size = _pixel_size_um(table.imaging_plane)
        mean_image = _mean_image(module, shape)
        roi_ids = np.asarray(table.id[:], dtype=np.int64)[rows]
        iscell = None
        if "iscell" in table.colnames:  # suite2p's export: (is cell, probability) per ROI
            iscell = np.asarray(table["iscell"].data[:], dtype=np.float64)[rows]
        kind = "DfOverF" if isinstance(chosen.parent, DfOverF) else "Fluorescence"
        stored = None  # napari-neurt's export keeps the recording's own centroids (suite2p's med)
        if set(CENTROID_COLUMNS) <= set(table.colnames):
            stored = np.stack(
                [np.asarray(table[k].data[:], dtype=np.float64)[rows] for k in CENTROID_COLUMNS],
                axis=1,
            )

    labels = np.zeros(shape, dtype=smallest_label_dtype(int(rows.max()) + 1 if len(rows) else 1))
    best = np.full(shape, -np.inf)
    centroids = np.full((len(rows), 2), np.nan)
    for order in np.argsort(rows, kind="stable"):  # ties go to the lower ROI row
        r, c, w = masks[order]
        inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1]) & (w != 0)
        r, c, w = r[inside], c[inside], np.abs(w[inside])
        if len(r):
            centroids[order] = np.average(r, weights=w), np.average(c, weights=w)
        wins = w > best[r, c]
        labels[r[wins], c[wins]] = rows[order] + 1
        best[r[wins], c[wins]] = w[wins]
    if stored is not None:
        centroids = np.where(np.isfinite(stored), stored, centroids)

    metadata = {
        "trace_kind": kind,
        "series": name,
        "nwb_roi_id": roi_ids,
        "frame_rate_from": rate_from,
    }
    if iscell is not None:
        metadata["iscell"] = iscell[:, -1] if iscell.ndim == 2 else iscell
    return Recording(
        traces=traces,
        neuron_ids=rows + 1,
        centroids=centroids,
        frame_rate=rate,
        labels=labels,
        pixel_size_um=pixel_size,
        mean_image=mean_image,
        source=os.fspath(path),
        metadata=metadata,
    )
