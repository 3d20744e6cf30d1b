"""Write an `Analysis` (traces, reconstruction, per-neuron scores) with its provenance.

Two formats, chosen by the file's suffix in `export_analysis`:

CSV (`write_csv`, ``results.csv``): a set of plain tables next to each other, all sharing the
stem of the given path:

- ``results.csv``: one row per neuron, every column of `Analysis.neuron_table` (neuron id,
  centroid, event rate, neighbourhood, predictability R^2, class probabilities, attention);
- ``results.traces.csv``: one row per frame (``frame``, ``time_s``), one column per neuron
  (``neuron_<id>``), the recording's traces;
- ``results.reconstruction.csv`` (after a reconstruction): the same layout, plus ``hidden``
  (the frame was hidden from the model) and, in k-fold mode, ``fold``;
- ``results.imputed.csv`` (marked or bad frames): the traces with the hidden frames replaced;
- ``results.attention.csv`` (after a classification): the temporal attention;
- ``results.provenance.json``: the models (weights sha256, config, class names, device) and
  every parameter, with the recording's description and the napari-neurt version.

NWB (`write_nwb`, needs pynwb: ``pip install 'napari-neurt[nwb]'``): an NWB file whose
``processing/ophys`` module holds the ROIs (a PlaneSegmentation with pixel masks, the ROI ids as
NWB ids and every per-neuron column), the label image and mean image (``SummaryImages``, which
give the reader the image's shape) and the traces (a RoiResponseSeries in ``DfOverF`` for dF/F
traces, else in ``Fluorescence``), which `napari_neurt.io.read_nwb` reads back; a ``neurt``
module with the reconstruction (same container type), the hidden frames and the temporal
attention; the provenance as JSON in the file's ``notes``.

Writes are atomic: every file is written to a temporary sibling first and renamed into place
only when all of them are complete, so a failed export leaves no partial file and earlier
exports as they were. A CSV export that succeeds removes the tables an earlier export to the same
name wrote and it does not (an old reconstruction would pass for the new one's).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..analysis import Analysis
from .atomic import atomic_files
from .nwb import LABELS_IMAGE

CSV_PARTS = ("traces", "reconstruction", "imputed", "attention")
CSV_FRAMES = 4096  # frames made into text at once


def export_analysis(path: str | os.PathLike, analysis: Analysis) -> list[Path]:
    """Write `analysis` as CSV tables (``.csv``) or an NWB file (``.nwb``); return the paths."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return write_csv(path, analysis)
    if suffix == ".nwb":
        return [write_nwb(path, analysis)]
    raise ValueError(f"export to .csv or .nwb; got {path.name!r}")


def _is_dff(trace_kind: object) -> bool:
    """Whether a recording's ``trace_kind`` names dF/F traces: "dff", "dF/F", NWB's "DfOverF",
    CaImAn's "F_dff"."""
    name = "".join(c for c in str(trace_kind).lower() if c.isalnum())
    return name in ("dff", "dfoverf", "fdff")


def csv_paths(path: str | os.PathLike, analysis: Analysis) -> list[Path]:
    """The files `write_csv` writes for `analysis` at `path`, in order."""
    path = Path(path)
    paths = [path, _part(path, "traces.csv")]
    reconstruction = analysis.reconstruction
    if reconstruction is not None:
        paths.append(_part(path, "reconstruction.csv"))
        if reconstruction.imputed is not None:
            paths.append(_part(path, "imputed.csv"))
    if analysis.classification is not None:
        paths.append(_part(path, "attention.csv"))
    paths.append(_part(path, "provenance.json"))
    return paths


def _part(path: Path, part: str) -> Path:
    """The file of `part` beside the neuron table `path`: ``<stem>.<part>``."""
    stem = path.with_suffix("")
    return stem.with_name(f"{stem.name}.{part}")


def _write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        values = [np.asarray(columns[n]) for n in names]
        formatted = [_format_column(v) for v in values]
        writer.writerows(zip(*formatted, strict=True))


def _format_column(values: np.ndarray) -> list[str]:
    if values.dtype == bool:
        return ["true" if v else "false" for v in values]
    if np.issubdtype(values.dtype, np.integer):
        return [str(int(v)) for v in values]
    if np.issubdtype(values.dtype, np.floating):
        return ["" if not np.isfinite(v) else f"{v:.7g}" for v in values.tolist()]
    return [str(v) for v in values]


def _write_frames(path: Path, analysis: Analysis, data: np.ndarray, extra=None) -> None:
    """Frames as rows (frame, time_s, extra columns, then neuron_<id>), written with numpy."""
    recording = analysis.recording
    n_frames = recording.n_frames
    header = ["frame", "time_s", *(extra or {}), *(f"neuron_{i}" for i in recording.neuron_ids)]
    columns = [np.arange(n_frames), recording.times, *[np.asarray(v) for v in (extra or {}).values()]]
    n_fixed = len(columns)
    fmt = ["%d"] + ["%.7g"] * (1) + ["%d"] * (n_fixed - 2) + ["%.7g"] * len(recording.neuron_ids)
    with open(path, "w", newline="") as file:
        file.write(",".join(header) + "\n")
        for first in range(0, n_frames, CSV_FRAMES):  # float64 rows of a block, not of all
            rows = slice(first, first + CSV_FRAMES)
            block = np.column_stack([*(np.asarray(c[rows], np.float64) for c in columns),
                                     np.asarray(data[:, rows], np.float64).T])
            np.savetxt(file, block, fmt=fmt, delimiter=",")


def write_csv(path: str | os.PathLike, analysis: Analysis) -> list[Path]:
    """Write `analysis` as CSV tables and a provenance JSON (module docstring); atomic."""
    paths = csv_paths(path, analysis)
    table = analysis.neuron_table()
    reconstruction, classification = analysis.reconstruction, analysis.classification
    with atomic_files(paths) as temps:
        it = iter(temps)
        _write_table(next(it), table)
        _write_frames(next(it), analysis, analysis.recording.traces)
        if reconstruction is not None:
            extra = {"hidden": reconstruction.hidden.astype(np.int64)}
            if reconstruction.folds is not None:
                extra["fold"] = reconstruction.folds
            _write_frames(next(it), analysis, reconstruction.reconstruction, extra)
            if reconstruction.imputed is not None:
                _write_frames(next(it), analysis, reconstruction.imputed)
        if classification is not None:
            _write_frames(next(it), analysis, classification.result.temporal_attention)
        provenance = analysis.provenance()
        provenance["files"] = [p.name for p in paths]
        next(it).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    # tables of an earlier export to this name that this one has no results for would pass for
    # this one's (an old reconstruction beside new traces): they go
    for part in CSV_PARTS:
        stale = _part(paths[0], f"{part}.csv")
        if stale not in paths:
            stale.unlink(missing_ok=True)
    return paths


def write_nwb(path: str | os.PathLike, analysis: Analysis) -> Path:
    """Write `analysis` to an NWB file (module docstring); atomic. Needs pynwb."""
    try:
        import pynwb  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "writing NWB files needs pynwb: pip install 'napari-neurt[nwb]'"
        ) from error
    from datetime import datetime, timezone
    from uuid import uuid4

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel

    recording = analysis.recording
    if recording.labels is None:
        raise ValueError("an NWB export needs the ROIs: this recording has no labels image")
    path = Path(path)
    provenance = analysis.provenance()
    nwbfile = NWBFile(
        session_description=f"NEuRT results for {recording.source or 'a recording'}",
        identifier=str(uuid4()),
        session_start_time=datetime.now(timezone.utc),
        notes=json.dumps(provenance, default=str),
        source_script=f"napari-neurt {provenance.get('napari_neurt', '')}",
        source_script_file_name="napari_neurt.io.export",
    )
    device = nwbfile.create_device(name="Microscope", description="as recorded (see source)")
    channel = OpticalChannel(name="OpticalChannel", description="unknown", emission_lambda=float("nan"))
    plane_options = {}
    if recording.pixel_size_um:
        spacing = recording.pixel_size_um * 1e-6
        plane_options = {"grid_spacing": [spacing, spacing], "grid_spacing_unit": "meters"}
    plane = nwbfile.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=channel,
        imaging_rate=float(recording.frame_rate),
        description=recording.source or "imaging plane",
        device=device,
        excitation_lambda=float("nan"),
        indicator=str(recording.metadata.get("indicator", "unknown")),
        location="unknown",
        **plane_options,
    )
    ophys = nwbfile.create_processing_module("ophys", "ROIs and their traces")
    segmentation = ImageSegmentation(name="ImageSegmentation")
    ophys.add(segmentation)
    rois = segmentation.create_plane_segmentation(
        name="PlaneSegmentation",
        description="ROIs (label image values as ids)",
        imaging_plane=plane,
    )
    labels = recording.labels
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_values = flat[order]
    for neuron in recording.neuron_ids:
        lo, hi = np.searchsorted(sorted_values, [neuron, neuron + 1])
        r, c = np.unravel_index(order[lo:hi], labels.shape)
        # a ROI can lose every pixel to overlapping ones: an empty mask (its centroid is a column)
        mask = list(zip(r.tolist(), c.tolist(), [1.0] * len(r))) or np.zeros((0, 3))
        rois.add_roi(pixel_mask=mask, id=int(neuron))
    table = analysis.neuron_table()
    for name, values in table.items():
        values = np.asarray(values)
        rois.add_column(name=name, description=_COLUMN_DOCS.get(name, name), data=values.tolist())
    # pixel masks do not give the image's shape: the labels (and the mean image) carry it
    summary = Images(name="SummaryImages", description="the ROI label image and the mean image")
    summary.add_image(GrayscaleImage(name=LABELS_IMAGE, data=labels,
                                     description="ROI label image (0: background, else the id)"))
    if recording.mean_image is not None and recording.mean_image.shape == labels.shape:
        summary.add_image(GrayscaleImage(name="mean", data=recording.mean_image,
                                         description="mean image"))
    ophys.add(summary)
    region = rois.create_roi_table_region(
        region=list(range(recording.n_neurons)), description="every ROI, in neuron_id order"
    )
    is_dff = _is_dff(recording.metadata.get("trace_kind", ""))
    container_type = DfOverF if is_dff else Fluorescence
    unit = "dF/F" if is_dff else "a.u."
    traces = container_type(name="DfOverF" if is_dff else "Fluorescence")
    ophys.add(traces)
    traces.create_roi_response_series(
        name="RoiResponseSeries",
        data=recording.traces.T,
        rois=region,
        unit=unit,
        rate=float(recording.frame_rate),
        description=f"{recording.metadata.get('trace_kind', 'traces')} of each ROI",
    )
    neurt = nwbfile.create_processing_module("neurt", "NEuRT results (see the file's notes)")
    reconstruction = analysis.reconstruction
    if reconstruction is not None:
        container = container_type(name="NEuRTReconstruction")
        neurt.add(container)
        container.create_roi_response_series(
            name="Reconstruction",
            data=reconstruction.reconstruction.T,
            rois=region,
            unit=unit,
            rate=float(recording.frame_rate),
            description=f"NEuRT reconstruction, {reconstruction.mode} hiding",
        )
        neurt.add(
            TimeSeries(
                name="HiddenFrames",
                data=reconstruction.hidden.astype(np.uint8),
                unit="1",
                rate=float(recording.frame_rate),
                description="1 where the frame was hidden from the model",
            )
        )
        if reconstruction.imputed is not None:
            container.create_roi_response_series(
                name="Imputed",
                data=reconstruction.imputed.T,
                rois=region,
                unit=unit,
                rate=float(recording.frame_rate),
                description="the traces with the hidden frames replaced by the reconstruction",
            )
    if analysis.classification is not None:
        neurt.add(
            TimeSeries(
                name="TemporalAttention",
                data=np.asarray(analysis.classification.result.temporal_attention).T,
                unit="1",
                rate=float(recording.frame_rate),
                description="the classifier's pooling weights over time (frames x neurons)",
            )
        )
    with atomic_files([path]) as (temp,):
        with NWBHDF5IO(str(temp), "w") as io:
            io.write(nwbfile)
    return path


_COLUMN_DOCS = {
    "neuron_id": "the ROI's value in the label image",
    "centroid_y": "centre of mass, row (pixels)",
    "centroid_x": "centre of mass, column (pixels)",
    "event_rate_per_min": "calcium events per minute (threshold crossings of the trace)",
    "fallback": "too few neighbours: the model's context for this neuron was filled in",
    "n_near": "neurons nearer than the neighbourhood radius",
    "n_far": "neurons farther than the neighbourhood radius",
    "predictability_r2": "R^2 of NEuRT's prediction of the hidden frames against the trace",
    "class_probability": "probability of class 1 (mean over the neuron's windows)",
    "neuron_attention": "weight of the neuron in the recording's classification",
    "attention_log10_ratio": "log10 of neuron_attention over an even share (1 / neurons)",
}
