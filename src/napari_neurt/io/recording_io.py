"""`read_recording`: one entry point that turns any supported input into a `Recording`."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..recording import Recording, label_centroids
from ._common import PathLike, ReaderError, existing_path, positive_number
from .caiman import read_caiman
from .labels import as_label_image, read_labels
from .nwb import read_nwb
from .suite2p import is_suite2p_folder, read_suite2p
from .tiff import TIFF_SUFFIXES, _tiffs_in, read_movie

__all__ = ["SUPPORTED_INPUTS", "read_recording", "read_recording_npz", "tiff_frame_rate"]

SUPPORTED_INPUTS = (
    "a suite2p plane folder (F.npy, stat.npy, ops.npy)",
    "CaImAn results saved with cnm.save (.hdf5, .h5)",
    "an NWB file with ROI response series (.nwb)",
    "an .npz with 'traces' (N, T) and 'centroids' (N, 2) (optional: neuron_ids, labels, "
    "frame_rate, pixel_size_um, mean_image)",
    "a TIFF movie (.tif, .tiff, or a folder or list of them) together with labels=",
)


def _unsupported(path: object) -> ValueError:
    listing = "\n  - ".join(SUPPORTED_INPUTS)
    return ValueError(f"cannot read a recording from {path}; supported are:\n  - {listing}")


def read_recording_npz(path: PathLike, *, frame_rate: float | None = None) -> Recording:
    """Read a recording saved as ``.npz`` arrays (no pickles are loaded).

    Required arrays: ``traces`` (N, T) and ``centroids`` (N, 2) as (y, x), unless ``labels``
    (H, W) is present to compute them from. Optional: ``neuron_ids`` (N,) (default 1..N, or the
    label values in ascending order when there are labels), ``labels``, ``frame_rate`` (scalar;
    else pass `frame_rate`), ``pixel_size_um``, ``mean_image``.
    """
    path = existing_path(path, "recording file")
    if not zipfile.is_zipfile(path):
        raise ReaderError(f"{path} is not a valid .npz file (it is not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path} holds pickled Python objects, which are not loaded (they can run code); "
                "save plain numeric arrays with np.savez"
            ) from None
        raise ReaderError(f"{path} is not a valid .npz file: {error}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ReaderError(f"{path} is not a valid .npz file: {error}") from None
    if "traces" not in arrays:
        raise ValueError(
            f"{path} has no 'traces' array (N neurons, T frames); it has {sorted(arrays)}"
        )
    traces = arrays["traces"]
    if traces.ndim != 2:
        raise ValueError(f"{path}: 'traces' must be (neurons, frames); got shape {traces.shape}")
    labels = arrays.get("labels")
    if labels is not None:
        labels = as_label_image(labels, source=f"{path} 'labels'")
    if "neuron_ids" in arrays:
        neuron_ids = arrays["neuron_ids"]
    elif labels is not None:
        neuron_ids = np.unique(labels[labels > 0])
    else:
        neuron_ids = np.arange(1, traces.shape[0] + 1)
    if "centroids" in arrays:
        centroids = arrays["centroids"]
    elif labels is not None:
        centroids = label_centroids(labels, np.asarray(neuron_ids))
    else:
        raise ValueError(
            f"{path} needs 'centroids' (N, 2) as (y, x), or 'labels' to compute them from"
        )

    if frame_rate is None:
        if "frame_rate" not in arrays:
            raise ValueError(f"{path} has no 'frame_rate'; pass frame_rate=... (frames per second)")
        frame_rate, frame_rate_from = _stored_number(arrays, "frame_rate", path), "npz"
    else:
        frame_rate_from = "argument"
    pixel_size = None
    if "pixel_size_um" in arrays:
        pixel_size = _stored_number(arrays, "pixel_size_um", path)
    return Recording(
        traces=traces,
        neuron_ids=neuron_ids,
        centroids=centroids,
        frame_rate=frame_rate,
        labels=labels,
        pixel_size_um=pixel_size,
        mean_image=arrays.get("mean_image"),
        source=os.fspath(path),
        metadata={
            "trace_kind": str(arrays.get("trace_kind", "traces")),
            "frame_rate_from": frame_rate_from,
        },
    )


def _stored_number(arrays, key: str, path) -> float:
    """The positive number an .npz stores under `key` (one element of an array will do)."""
    value = positive_number(arrays[key])
    if value is None:
        raise ValueError(f"{path}: {key!r} must be one positive number; got {arrays[key]!r}")
    return value


def tiff_frame_rate(path: PathLike) -> float | None:
    """Frame rate recorded in a TIFF's metadata (ScanImage, ImageJ or OME), or None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            frame_data = (tif.scanimage_metadata or {}).get("FrameData") or {}
            rate = frame_data.get("SI.hRoiManager.scanFrameRate")
            if rate:  # the scanning rate; each frame saved is the mean of logAverageFactor
                average = positive_number(frame_data.get("SI.hScan2D.logAverageFactor")) or 1.0
                return float(rate) / average
            imagej = tif.imagej_metadata or {}
            if imagej.get("finterval"):  # the acquisition's frame interval, in `tunit`
                seconds = _SECONDS_PER.get(str(imagej.get("tunit", "sec")).strip().lower())
                return 1.0 / (float(imagej["finterval"]) * seconds) if seconds else None
            if imagej.get("fps"):  # ImageJ's playback rate, often set to the acquisition's
                return float(imagej["fps"])
            if tif.is_ome:
                return _ome_frame_rate(tif.ome_metadata)
    except (tifffile.TiffFileError, OSError, ValueError, TypeError, ZeroDivisionError):
        return None
    return None


# seconds per time unit, as OME and ImageJ (whose default is "sec") spell them
_SECONDS_PER = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "µs": 1e-6, "us": 1e-6, "usec": 1e-6,
    "min": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
}  # fmt: skip


def _ome_frame_rate(xml: str) -> float | None:
    from xml.etree import ElementTree

    for element in ElementTree.fromstring(xml).iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            increment = element.get("TimeIncrement")
            unit = element.get("TimeIncrementUnit", "s")
            if increment and float(increment) > 0 and unit in _SECONDS_PER:
                return 1.0 / (float(increment) * _SECONDS_PER[unit])
    return None


def _recording_from_movie(
    movie_path: PathLike | Sequence[PathLike],
    labels: PathLike | np.ndarray,
    frame_rate: float | None,
    options: dict,
) -> Recording:
    from ..extraction import extract_traces

    movie = read_movie(movie_path)
    frame_shape = tuple(movie.shape[1:])
    if isinstance(labels, (str, os.PathLike)):
        label_image = read_labels(labels, shape=frame_shape)
        labels_from = os.fspath(labels)
    else:
        label_image = as_label_image(labels, frame_shape)
        labels_from = "array"
    first_file = Path(movie_path if isinstance(movie_path, (str, os.PathLike)) else movie_path[0])
    if first_file.expanduser().is_dir():  # a folder of trials: their first file's metadata
        first_file = _tiffs_in(first_file.expanduser())[0]
    frame_rate_from = "argument"
    if frame_rate is None:
        frame_rate = tiff_frame_rate(first_file) if first_file.is_file() else None
        frame_rate_from = "tiff metadata"
        if frame_rate is None:
            raise ValueError(
                f"{first_file} does not record its frame rate; "
                "pass frame_rate=... (frames per second)"
            )
    traces = extract_traces(movie, label_image, **options)
    return Recording.from_labels(
        traces,
        label_image,
        frame_rate,
        source=os.fspath(movie_path)
        if isinstance(movie_path, (str, os.PathLike))
        else str(first_file),
        metadata={
            "trace_kind": "neuropil-corrected mean" if options.get("neuropil") else "mean",
            "labels_from": labels_from,
            "frame_rate_from": frame_rate_from,
            "extraction_options": dict(options),
        },
    )


def read_recording(
    path: PathLike | Sequence[PathLike],
    *,
    labels: PathLike | np.ndarray | None = None,
    frame_rate: float | None = None,
    pixel_size_um: float | None = None,
    **options,
) -> Recording:
    """Read a `Recording` from any supported source.

    Parameters
    ----------
    path
        A suite2p plane folder; CaImAn results (``.hdf5``/``.h5``); an ``.nwb`` file; an ``.npz``
        of arrays (see `read_recording_npz`); or a TIFF movie (a file, a folder or a list of
        files, see `read_movie`), which needs `labels`.
    labels
        For a movie only: the ROIs, as a label image or a file `read_labels` reads (label image
        or ImageJ ROIs). The traces are then the mean of each ROI in every frame.
    frame_rate
        Frames per second; overrides what the file says (suite2p often leaves ``fs`` at 1).
    pixel_size_um
        Micrometres per pixel; overrides what the file says.
    **options
        Passed on to the format's reader (e.g. ``cells_only=False`` for suite2p,
        ``accepted_only=False`` for CaImAn, ``series="DfOverF"`` for NWB) or, for a movie, to
        `napari_neurt.extraction.extract_traces` (e.g. ``neuropil=True``).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the format is not supported (the message lists those that are), or the reader rejects
        the file.
    """
    is_list = not isinstance(path, (str, os.PathLike))
    if not is_list:
        path = existing_path(path, "recording")
        suffix = path.suffix.lower()
    movie = (
        is_list
        or suffix in TIFF_SUFFIXES
        or (Path(path).is_dir() and not is_suite2p_folder(path) and labels is not None)
    )
    if labels is not None and not movie:
        raise ValueError(
            f"labels are only used with a TIFF movie; {path} brings its own ROIs. Drop labels=."
        )
    if movie:
        if labels is None:
            raise ValueError(
                f"{path} is a movie: pass labels=... (a label image or ImageJ ROIs) to extract "
                "one trace per ROI"
            )
        recording = _recording_from_movie(path, labels, frame_rate, options)
    elif path.is_dir():
        planes = sorted(p for p in path.glob("plane*") if is_suite2p_folder(p))
        if not is_suite2p_folder(path) and len(planes) == 1:  # suite2p's own folder, one plane
            path = planes[0]
        elif not is_suite2p_folder(path) and planes:
            raise ValueError(
                f"{path} holds {len(planes)} suite2p planes ({', '.join(p.name for p in planes)}); "
                "a recording is one plane: pass its folder, e.g. "
                f"{planes[0]}"
            )
        if not is_suite2p_folder(path):
            raise _unsupported(f"the folder {path} (no F.npy and stat.npy)")
        recording = read_suite2p(path, frame_rate=frame_rate, **options)
    elif suffix in (".hdf5", ".h5"):
        recording = read_caiman(path, frame_rate=frame_rate, **options)
    elif suffix == ".nwb":
        recording = read_nwb(path, frame_rate=frame_rate, **options)
    elif suffix == ".npz":
        if options:
            raise TypeError(f"unexpected options for an .npz recording: {sorted(options)}")
        recording = read_recording_npz(path, frame_rate=frame_rate)
    else:
        raise _unsupported(path)

    metadata = dict(recording.metadata)
    changes = {}
    if frame_rate is not None and recording.frame_rate != float(frame_rate):
        changes["frame_rate"] = frame_rate
        metadata["frame_rate_from"] = "argument"
    if pixel_size_um is not None:
        changes["pixel_size_um"] = pixel_size_um
        metadata["pixel_size_from"] = "argument"
    if changes:
        recording = replace(recording, metadata=metadata, **changes)
    return recording
