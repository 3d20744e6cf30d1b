"""CaImAn CNMF results saved with ``cnm.save("results.hdf5")``, as a `Recording`.

Layout read (as written by CaImAn's ``save_dict_to_hdf5``)::

    estimates/A/{data,indices,indptr,shape}   spatial footprints, CSC sparse (pixels x components);
                                              pixel p is (p % height, p // height): Fortran order
    estimates/C                               denoised traces (components x frames)
    estimates/F_dff                           dF/F traces, or the string "NoneType" if not computed
    estimates/idx_components                  accepted components, when evaluate_components ran
    estimates/Cn                              correlation image (optional)
    dims, estimates/dims or params/data/dims  (height, width)
    params/data/fr                            frame rate (Hz);  params/data/dxy: um per pixel

Labels: footprints are sparse, overlapping weights, not masks. Each footprint is divided by its own
maximum; a pixel belongs to the components whose relative weight there is at least `threshold`,
and among those to the one with the largest relative weight (ties: lower index). Dividing by the
maximum makes the rule independent of how CaImAn splits the scale between A and C, and lets every
component keep its own peak pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import sparse

from ..recording import Recording
from ._common import (
    PathLike,
    ReaderError,
    existing_path,
    positive_number,
    smallest_label_dtype,
)

__all__ = ["footprint_labels", "is_caiman_file", "read_caiman"]

DEFAULT_THRESHOLD = 0.2


def is_caiman_file(path: PathLike) -> bool:
    """Whether `path` is an HDF5 file with CaImAn's ``estimates`` group."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return isinstance(file.get("estimates"), h5py.Group)
    except (OSError, ValueError):
        return False


def _value(file, name: str):
    """The dataset `name` as numpy, or None when absent or saved as CaImAn's "NoneType" string."""
    import h5py

    item = file.get(name)
    if not isinstance(item, h5py.Dataset):
        return None
    value = item[()]
    if isinstance(value, (bytes, str)) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "OSU"
    ):
        return None
    return np.asarray(value)


def _footprints(file, path: Path) -> sparse.csc_matrix:
    import h5py

    item = file.get("estimates/A")
    if isinstance(item, h5py.Group):
        parts = {name: _value(item, name) for name in ("data", "indices", "indptr", "shape")}
        missing = [name for name, value in parts.items() if value is None]
        if missing:
            raise ReaderError(
                f"{path}: estimates/A lacks {', '.join(missing)}; CaImAn saves the footprints as a "
                "sparse matrix with data, indices, indptr and shape"
            )
        try:
            return sparse.csc_matrix(
                (parts["data"], parts["indices"], parts["indptr"]),
                shape=tuple(int(n) for n in parts["shape"]),
            )
        except ValueError as error:
            raise ReaderError(
                f"{path}: estimates/A is not a valid sparse matrix: {error}"
            ) from None
    dense = _value(file, "estimates/A")
    if dense is None:
        raise ReaderError(
            f"{path} has no footprints (estimates/A); is it a CaImAn file saved with cnm.save() "
            "after fitting?"
        )
    if dense.ndim != 2:
        raise ReaderError(f"{path}: estimates/A should be (pixels, components); got {dense.shape}")
    return sparse.csc_matrix(dense)


def _dims(file, n_pixels: int, path: Path) -> tuple[int, int]:
    for name in ("dims", "estimates/dims", "params/data/dims"):
        dims = _value(file, name)
        if dims is not None and dims.size >= 2:
            dims = tuple(int(d) for d in dims.ravel()[:2])
            if dims[0] * dims[1] == n_pixels:
                return dims
            raise ReaderError(f"{path}: {name} = {dims} does not match the {n_pixels} pixels of A")
    raise ReaderError(f"{path} has no image dimensions (dims, estimates/dims or params/data/dims)")


def footprint_labels(
    footprints: sparse.spmatrix, shape: tuple[int, int], threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Label image of CaImAn footprints (pixels in Fortran order); label = component index + 1.

    A pixel goes to the component with the largest footprint weight relative to that footprint's
    maximum, among those where this relative weight is at least `threshold` (ties: lower index).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    coo = sparse.csc_matrix(footprints).tocoo()
    peak = np.asarray(abs(coo).max(axis=0).todense()).ravel() if coo.nnz else np.zeros(coo.shape[1])
    pixel, component = coo.row.astype(np.int64), coo.col.astype(np.int64)
    relative = np.divide(
        coo.data, peak[component], out=np.zeros(coo.nnz), where=peak[component] > 0
    )
    keep = relative >= threshold
    pixel, component, relative = pixel[keep], component[keep], relative[keep]
    # For each pixel the first entry after sorting by (pixel, -weight, component) wins.
    order = np.lexsort((component, -relative, pixel))
    pixel, component = pixel[order], component[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    labels = np.zeros(shape[0] * shape[1], dtype=smallest_label_dtype(footprints.shape[1]))
    labels[pixel[first]] = component[first] + 1
    return labels.reshape(shape, order="F")


def _weighted_centres(footprints: sparse.csc_matrix, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) centre of each footprint, weighted by its (absolute) weights."""
    pixels = np.arange(footprints.shape[0])
    y, x = pixels % shape[0], pixels // shape[0]
    weights = abs(footprints)
    total = np.asarray(weights.sum(axis=0)).ravel()
    total[total == 0] = np.nan
    return np.column_stack([weights.T @ y / total, weights.T @ x / total]).astype(np.float64)


def read_caiman(
    path: PathLike,
    *,
    accepted_only: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    frame_rate: float | None = None,
) -> Recording:
    """Read CaImAn CNMF results (``cnm.save(...)`` HDF5) as a `Recording`.

    Parameters
    ----------
    path
        The ``.hdf5``/``.h5`` file written by ``cnm.save``.
    accepted_only
        Keep only the components CaImAn accepted (``estimates/idx_components``), when its quality
        evaluation ran; otherwise every component is kept.
    threshold
        Fraction of each footprint's maximum above which a pixel can belong to that component in
        the label image.
    frame_rate
        Frames per second, when the file has none (``params/data/fr``) or it is wrong.

    Returns
    -------
    Recording
        ``traces``: ``F_dff`` when CaImAn computed it, else the denoised ``C``
        (``metadata["trace_kind"]`` says which); ``neuron_ids`` = component index + 1 = label
        value; ``centroids``: weighted centres of the footprints. ``metadata["footprints"]`` holds
        the kept columns of A (CSC, Fortran pixel order), ``metadata["component_index"]`` their
        indices. ``pixel_size_um`` comes from ``params/data/dxy`` when its two values agree; note
        that CaImAn's default there is 1 um, so pass the true size to `read_recording` if unsure.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If it is not HDF5, or lacks the footprints, traces, dimensions or frame rate
        (`ReaderError`).
    """
    import h5py

    path = existing_path(path, "CaImAn file")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ReaderError(f"{path} is not a readable HDF5 file ({error})") from None
    with file:
        if not isinstance(file.get("estimates"), h5py.Group):
            raise ReaderError(
                f"{path} has no 'estimates' group, so it is not CaImAn results; save them with "
                "cnm.save('results.hdf5')"
            )
        footprints = _footprints(file, path)
        n_components = footprints.shape[1]
        shape = _dims(file, footprints.shape[0], path)
        traces, trace_kind = _value(file, "estimates/F_dff"), "F_dff"
        if traces is None:
            traces, trace_kind = _value(file, "estimates/C"), "C"
        if traces is None:
            raise ReaderError(f"{path} has no traces: neither estimates/F_dff nor estimates/C")
        traces = np.atleast_2d(traces)
        if traces.shape[0] != n_components:
            raise ReaderError(
                f"{path}: estimates/{trace_kind} has {traces.shape[0]} rows but A has "
                f"{n_components} components"
            )
        accepted = _value(file, "estimates/idx_components")
        fr = _value(file, "params/data/fr")
        dxy = _value(file, "params/data/dxy")
        image = _value(file, "estimates/Cn")

    if frame_rate is not None:
        frame_rate_from = "argument"
    elif positive_number(fr) is not None:
        frame_rate, frame_rate_from = positive_number(fr), "params.data.fr"
    else:
        raise ReaderError(f"{path} has no frame rate (params/data/fr); pass frame_rate=...")

    keep = np.arange(n_components)
    if accepted_only and accepted is not None:
        accepted = np.asarray(accepted, dtype=np.int64).ravel()
        if accepted.size and (accepted.min() < 0 or accepted.max() >= n_components):
            raise ReaderError(f"{path}: estimates/idx_components refers to components beyond A")
        keep = np.unique(accepted)
        if len(keep) == 0:
            raise ValueError(
                f"{path}: CaImAn accepted none of its {n_components} components; "
                "read it with accepted_only=False to keep them all"
            )
    kept = footprints[:, keep]
    labels = np.zeros(shape, dtype=np.int32)
    label_image = footprint_labels(kept, shape, threshold)
    labels[label_image > 0] = keep[label_image[label_image > 0] - 1] + 1

    pixel_size = None
    if (
        dxy is not None
        and dxy.size >= 1
        and np.allclose(dxy, dxy.ravel()[0])
        and dxy.ravel()[0] > 0
    ):
        pixel_size = float(dxy.ravel()[0])
    mean_image = image if image is not None and image.shape == shape else None
    return Recording(
        traces=traces[keep],
        neuron_ids=keep + 1,
        centroids=_weighted_centres(kept, shape),
        frame_rate=frame_rate,
        labels=labels,
        pixel_size_um=pixel_size,
        mean_image=None if mean_image is None else mean_image.astype(np.float32),
        source=os.fspath(path),
        metadata={
            "trace_kind": trace_kind,
            "component_index": keep,
            "footprints": kept,
            "label_threshold": threshold,
            "frame_rate_from": frame_rate_from,
            "pixel_size_from": "params.data.dxy" if pixel_size is not None else None,
            "mean_image_kind": "correlation image (estimates/Cn)"
            if mean_image is not None
            else None,
        },
    )
