"""npe2 reader contributions (see ``napari.yaml``).

Each ``get_*_reader(path)`` answers quickly, from file names and headers only: it returns a
function that reads `path` into napari layer data, or None when the path is not for it (so that
napari can try another reader). The layer data are plain ``(data, kwargs, layer_type)`` tuples;
this module imports neither napari nor Qt.

An ImageJ ROI set becomes a labels layer drawn on the smallest image that holds its ROIs (a ROI file
does not record the size of the image it was drawn on); ``metadata["neurt_imagej_rois"]`` says so
(`IMAGEJ_ROIS_KEY`), and the analysis panel places such ROIs on its movie's frame when extracting.

Recordings (suite2p, CaImAn, NWB) become a reference image layer (when the file has one) and a
labels layer whose ``metadata["neurt_recording"]`` is the `Recording` and whose ``features`` have
one row per label value, background (0) first, keyed by an ``index`` column as napari expects.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

__all__ = [
    "IMAGEJ_ROIS_KEY",
    "get_caiman_reader",
    "get_imagej_roi_reader",
    "get_labels_reader",
    "get_nwb_reader",
    "get_suite2p_reader",
    "get_tiff_reader",
    "recording_layers",
]

_TIFF = (".tif", ".tiff")

#: Metadata key of a labels layer drawn from an ImageJ ROI file: ``{"path": the file, "canvas":
#: "minimal"}``, the canvas being the smallest image, anchored at (0, 0), that holds every ROI.
IMAGEJ_ROIS_KEY = "neurt_imagej_rois"


def _single(path: str | Sequence[str], suffixes: tuple[str, ...]) -> Path | None:
    """`path` when it is one existing file with one of `suffixes`, else None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(path)
    return path if path.suffix.lower() in suffixes and path.is_file() else None


def _looks_like_labels(image: np.ndarray) -> bool:
    """Integer image whose most frequent value is 0 (background): a label image, not a picture."""
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.integer) or image.size == 0:
        return False
    if image.min() < 0:
        return False
    values, counts = np.unique(image, return_counts=True)
    return bool(values[np.argmax(counts)] == 0 and len(values) > 1)


def _image_layer(data, name: str, metadata: dict, **kwargs) -> LayerData:
    return (data, {"name": name, "metadata": metadata, "rgb": False, **kwargs}, "image")


def _labels_layer(labels: np.ndarray, name: str, metadata: dict, **kwargs) -> LayerData:
    return (labels, {"name": name, "metadata": metadata, **kwargs}, "labels")


# -- TIFF ------------------------------------------------------------------------------------------
def get_tiff_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for a TIFF movie (lazy image layer) or a 2-D TIFF (labels if it looks like labels).

    A list of TIFF files is read as one movie, the files joined along time.
    """
    from ..io.tiff import tiff_info

    if not isinstance(path, (str, os.PathLike)):
        paths = [Path(p) for p in path]
        if not paths or not all(p.suffix.lower() in _TIFF and p.is_file() for p in paths):
            return None
        for p in paths:  # movies only, as for one file: napari stacks single frames itself
            try:
                info = tiff_info(p)
            except ValueError:
                return _read_tiff_movie_list  # damaged: let the reader raise its clear error
            if len(info.shape) != 3 or "S" in info.axes:
                return None
        return _read_tiff_movie_list
    single = _single(path, _TIFF)
    if single is None:
        return None
    try:
        info = tiff_info(single)
    except ValueError:
        return _read_tiff  # damaged: let the reader raise its clear error
    if len(info.shape) not in (2, 3) or "S" in info.axes:
        return None  # colour or hyperstack: napari's own reader shows it
    return _read_tiff


def _movie_metadata(source, first_file: Path) -> dict:
    """The layer's metadata: its source and, when the first file records it, the frame rate
    (which the analysis panel prefills)."""
    from ..io.recording_io import tiff_frame_rate

    metadata = {"source": source}
    rate = tiff_frame_rate(first_file)
    if rate is not None:
        metadata["frame_rate"] = rate
    return metadata


def _read_tiff(path: str) -> list[LayerData]:
    from ..io.labels import as_label_image
    from ..io.tiff import read_movie, read_tiff_image, tiff_info

    path = Path(path)
    if len(tiff_info(path).shape) == 3:
        return [_image_layer(read_movie(path), path.stem, _movie_metadata(str(path), path))]
    image = read_tiff_image(path)
    if _looks_like_labels(image):
        return [
            _labels_layer(as_label_image(image, source=str(path)), path.stem, {"source": str(path)})
        ]
    return [_image_layer(image, path.stem, {"source": str(path)})]


def _read_tiff_movie_list(paths: Sequence[str]) -> list[LayerData]:
    from ..io.tiff import read_movie

    paths = [Path(p) for p in paths]
    name = f"{paths[0].stem} (+{len(paths) - 1} files)" if len(paths) > 1 else paths[0].stem
    metadata = _movie_metadata([str(p) for p in paths], paths[0])
    return [_image_layer(read_movie(paths), name, metadata)]


# -- label images and ImageJ ROIs ------------------------------------------------------------------
def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as file:
            version = npy_format.read_magic(file)
            read_header = (
                npy_format.read_array_header_1_0
                if version == (1, 0)
                else npy_format.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
    except (OSError, ValueError):
        return None
    return tuple(shape), dtype


def get_labels_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for a label image saved as ``.npy`` (2-D integer) or ``.png`` (single channel,
    mostly background); other arrays and pictures are left to napari's own readers."""
    single = _single(path, (".npy", ".png"))
    if single is None:
        return None
    if single.suffix.lower() == ".npy":
        header = _npy_header(single)
        if header is None:
            return None
        shape, dtype = header
        while len(shape) > 2 and shape[0] == 1:  # read_labels drops leading singleton axes
            shape = shape[1:]
        if dtype.hasobject or not np.issubdtype(dtype, np.integer) or len(shape) != 2:
            return None
        try:  # an integer picture is no label image: look at the values, as for PNG
            looks = _looks_like_labels(np.load(single, mmap_mode="r", allow_pickle=False)
                                       .reshape(shape))
        except (OSError, ValueError):
            return None
        return _read_label_image if looks else None
    try:
        from PIL import Image

        with Image.open(single) as image:
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                return None
            if not _looks_like_labels(np.asarray(image)):
                return None
    except OSError:
        return None
    return _read_label_image


def _read_label_image(path: str) -> list[LayerData]:
    from ..io.labels import read_labels

    path = Path(path)
    return [_labels_layer(read_labels(path), path.stem, {"source": str(path)})]


def get_imagej_roi_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for ImageJ ROIs: a ``.roi`` file or a ``.zip`` of them (ImageJ's RoiSet.zip)."""
    single = _single(path, (".zip", ".roi"))
    if single is None:
        return None
    try:
        if single.suffix.lower() == ".roi":
            with open(single, "rb") as file:
                if file.read(4) != b"Iout":
                    return None
        else:
            with zipfile.ZipFile(single) as archive:
                names = archive.namelist()
            if not names or not all(
                n.lower().endswith(".roi") for n in names if not n.endswith("/")
            ):
                return None
    except (OSError, zipfile.BadZipFile):
        return None
    return _read_imagej_rois


def _read_imagej_rois(path: str) -> list[LayerData]:
    from ..io.labels import read_imagej_rois

    path = Path(path)
    # Drawn on the smallest image that holds the ROIs: the movie is not known here (npe2 readers
    # do not see the viewer). The analysis panel places them on the movie's frame.
    metadata = {"source": str(path), IMAGEJ_ROIS_KEY: {"path": str(path), "canvas": "minimal"}}
    return [_labels_layer(read_imagej_rois(path), path.stem, metadata)]


# -- recordings ------------------------------------------------------------------------------------
def recording_layers(recording, name: str) -> list[LayerData]:
    """Layer data for a `Recording`: its reference image (if any) and its labels.

    The labels layer carries the recording in ``metadata["neurt_recording"]`` and per-label
    ``features`` (row 0 is the background): ``index`` and ``neuron_id`` (the label value), the
    centroid, and suite2p/NWB ``iscell`` probabilities when known.
    """
    scale = (recording.pixel_size_um,) * 2 if recording.pixel_size_um else (1.0, 1.0)
    layers: list[LayerData] = []
    if recording.mean_image is not None:
        layers.append(
            _image_layer(
                recording.mean_image,
                f"{name} reference image",
                {"source": recording.source},
                scale=scale,
                colormap="gray",
            )
        )
    if recording.labels is None:
        return layers
    ids = recording.neuron_ids
    features: dict[str, np.ndarray] = {
        "index": np.concatenate([[0], ids]),
        "neuron_id": np.concatenate([[0], ids]),
        "centroid_y": np.concatenate([[np.nan], recording.centroids[:, 0]]),
        "centroid_x": np.concatenate([[np.nan], recording.centroids[:, 1]]),
    }
    iscell = recording.metadata.get("iscell")
    if iscell is not None and np.shape(iscell) == ids.shape:
        features["iscell"] = np.concatenate([[np.nan], np.asarray(iscell, dtype=np.float64)])
    layers.append(
        _labels_layer(
            recording.labels.copy(),  # painting the layer must not change the Recording
            f"{name} ROIs",
            {"neurt_recording": recording, "source": recording.source},
            features=features,
            scale=scale,
        )
    )
    return layers


def _suite2p_planes(path: Path) -> list[Path]:
    from ..io.suite2p import is_suite2p_folder

    if is_suite2p_folder(path):
        return [path]
    # The "suite2p" folder itself: one plane folder per imaging plane.
    planes = sorted(p for p in path.glob("plane*") if is_suite2p_folder(p))
    return planes


def get_suite2p_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for a suite2p plane folder (``F.npy`` + ``stat.npy``), or a ``suite2p`` folder
    holding ``plane*`` folders."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return None
    return _read_suite2p if _suite2p_planes(Path(path)) else None


def _read_suite2p(path: str) -> list[LayerData]:
    from ..io.suite2p import read_suite2p

    layers = []
    for plane in _suite2p_planes(Path(path)):
        layers += recording_layers(read_suite2p(plane), f"suite2p {plane.name}")
    return layers


def get_caiman_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for CaImAn results (HDF5 with an ``estimates`` group)."""
    from ..io.caiman import is_caiman_file

    single = _single(path, (".hdf5", ".h5"))
    return _read_caiman if single is not None and is_caiman_file(single) else None


def _read_caiman(path: str) -> list[LayerData]:
    from ..io.caiman import read_caiman

    return recording_layers(read_caiman(path), Path(path).stem)


def _has_roi_traces(path: Path) -> bool:
    """Whether an NWB (HDF5) file has a RoiResponseSeries under /processing; no pynwb needed."""
    import h5py

    found = []

    def visit(name: str, item) -> bool | None:
        kind = item.attrs.get("neurodata_type")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "RoiResponseSeries":
            found.append(name)
            return True
        return None

    try:
        with h5py.File(path, "r") as file:
            processing = file.get("processing")
            if processing is not None:
                processing.visititems(visit)
    except (OSError, ValueError):
        return False
    return bool(found)


def get_nwb_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for an NWB file with ROI traces (needs pynwb when reading)."""
    single = _single(path, (".nwb",))
    return _read_nwb if single is not None and _has_roi_traces(single) else None


def _read_nwb(path: str) -> list[LayerData]:
    from ..io.nwb import read_nwb

    return recording_layers(read_nwb(path), Path(path).stem)
