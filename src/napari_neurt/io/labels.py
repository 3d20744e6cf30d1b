"""ROI label images: from image files (TIFF, PNG, NPY) and from ImageJ ROI sets.

A label image is an integer (height, width) array: 0 is background and every ROI has its own
positive id.

ImageJ ROIs are rasterised with ImageJ's own convention: vertex coordinates are pixel *corners*,
so pixel (row, col) belongs to an area ROI when its centre, (col + 0.5, row + 0.5), lies inside
the shape. A 4 x 3 rectangle at (left, top) = (2, 5) thus covers exactly columns 2-5, rows 5-7.

Where ROIs of a set overlap, the ROI listed first in the file keeps the shared pixels; a later
ROI gets only the pixels no earlier ROI has. (Label i + 1 is the i-th ROI in file order, so a ROI
entirely inside earlier ones would vanish; a warning names it.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ._common import PathLike, ReaderError, existing_path, smallest_label_dtype

__all__ = ["LABEL_SUFFIXES", "ROI_SUFFIXES", "as_label_image", "read_imagej_rois", "read_labels"]

ROI_SUFFIXES = (".zip", ".roi")
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy", *ROI_SUFFIXES)


# -- label images ----------------------------------------------------------------------------------
def as_label_image(
    image: np.ndarray, shape: tuple[int, int] | None = None, *, source: str = "labels"
) -> np.ndarray:
    """Check that `image` is a usable (H, W) label image and return it as int32 (or int64).

    Parameters
    ----------
    image
        2-D integer image; leading singleton axes, e.g. (1, H, W), are dropped. A float image is
        accepted when all its values are whole numbers.
    shape
        The expected (height, width), e.g. the movie's frame shape.
    source
        How to name the image in error messages (usually its path).

    Raises
    ------
    ValueError
        If the image is not 2-D, not integer-valued, negative, of the wrong shape, or has no ROI.
    """
    image = np.asarray(image)
    while image.ndim > 2 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise ValueError(
            f"{source} is a colour image of shape {image.shape}; a label image has one integer id "
            "per pixel (0 = background). Save the labels as a single-channel image."
        )
    if image.ndim != 2:
        raise ValueError(
            f"{source} is {image.ndim}-D with shape {image.shape}; a label image must be 2-D "
            "(height, width). A movie is read with read_movie; a stack of masks must be merged "
            "into one image first."
        )
    if image.dtype == bool:
        raise ValueError(
            f"{source} is a boolean mask, not a label image: it does not say which pixels form "
            "which ROI. Label its connected regions first, e.g. scipy.ndimage.label(mask)[0]."
        )
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or not np.array_equal(image, np.round(image)):
            raise ValueError(
                f"{source} holds non-integer values (dtype {image.dtype}); a label image holds one "
                "integer id per ROI. If it is a probability or intensity map, threshold and label "
                "it first."
            )
    elif not np.issubdtype(image.dtype, np.integer):
        raise ValueError(f"{source} has dtype {image.dtype}; a label image must hold integers")
    if image.size and image.min() < 0:
        raise ValueError(
            f"{source} holds negative values; ROI ids must be positive (0 = background)"
        )
    if shape is not None and image.shape != tuple(shape):
        raise ValueError(
            f"{source} is {image.shape[0]} x {image.shape[1]} pixels but the movie frames are "
            f"{shape[0]} x {shape[1]}; the labels must be drawn on the same field of view"
        )
    if not image.any():
        raise ValueError(f"{source} has no ROIs: every pixel is 0 (background)")
    return image.astype(smallest_label_dtype(int(image.max())), copy=False)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            # Palette ("P") images keep their indices, which are the labels, not the colours.
            return np.asarray(image)
    except OSError as error:
        raise ReaderError(f"{path} is not a valid PNG image: {error}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path} holds Python objects, not a numeric label image; such files can run code "
                "when loaded and are not read. Save the labels with np.save(path, int_labels)."
            ) from None
        raise ReaderError(f"{path} is not a valid .npy file: {error}") from None
    except (OSError, EOFError) as error:
        raise ReaderError(f"{path} is not a valid .npy file: {error}") from None


def read_labels(path: PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read ROI labels as an integer (height, width) image, 0 being background.

    Parameters
    ----------
    path
        A label image (``.tif``, ``.tiff``, ``.png``, ``.npy``) or ImageJ ROIs (``.zip``, ``.roi``;
        see `read_imagej_rois`).
    shape
        Expected (height, width), e.g. ``movie.shape[1:]``. For ImageJ ROIs it is the size of the
        image to draw them on (default: just large enough to hold them all).

    Returns
    -------
    numpy.ndarray
        int32 labels (int64 only when the ids need it).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a 2-D integer-valued image with at least one ROI, or does not match
        `shape`.
    """
    path = existing_path(path, "label file")
    suffix = path.suffix.lower()
    if suffix in ROI_SUFFIXES:
        return read_imagej_rois(path, shape)
    if suffix in (".tif", ".tiff"):
        from .tiff import read_tiff_image

        image = read_tiff_image(path)
    elif suffix == ".png":
        image = _read_png(path)
    elif suffix == ".npy":
        image = _read_npy(path)
    else:
        raise ValueError(
            f"cannot read labels from {path.name}: supported are {', '.join(LABEL_SUFFIXES)}"
        )
    return as_label_image(image, shape, source=str(path))


# -- ImageJ ROIs -----------------------------------------------------------------------------------
def _roi_description(roi, index: int) -> str:
    return f"ROI #{index + 1} {roi.name!r}" if roi.name else f"ROI #{index + 1}"


def _fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (rows, cols) whose centres lie inside the polygon with corner coordinates `xy`.

    Even-odd scanline fill at pixel centres. A centre exactly on the outline counts as inside
    only on a left or top edge (Java's and thus ImageJ's insideness rule), so that two ROIs
    sharing an edge never both claim the pixels along it.
    """
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    sloped = y0 != y1  # horizontal edges never cross a scanline
    x0, y0, x1, y1 = x0[sloped], y0[sloped], x1[sloped], y1[sloped]
    if len(x0) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = max(int(np.floor(y0.min() - 0.5)), 0)
    last = min(int(np.ceil(y0.max() + 0.5)), shape[0])
    rows = np.arange(first, last)
    centre_y = rows[:, None] + 0.5
    # Half-open in y: an edge crosses the scanline at its lower end, not its upper one.
    crosses = (np.minimum(y0, y1) <= centre_y) & (centre_y < np.maximum(y0, y1))
    crossing_x = np.where(crosses, x0 + (centre_y - y0) * (x1 - x0) / (y1 - y0), np.inf)
    crossing_x.sort(axis=1)
    n_crossings = crosses.sum(axis=1)
    span_rows, span_starts, span_stops = [], [], []
    for k in range(0, int(n_crossings.max(initial=0)) - 1, 2):
        has_span = n_crossings >= k + 2
        span_rows.append(rows[has_span])
        # Centres c + 0.5 in [left, right): columns ceil(left - 0.5) .. ceil(right - 0.5) - 1.
        span_starts.append(np.ceil(crossing_x[has_span, k] - 0.5))
        span_stops.append(np.ceil(crossing_x[has_span, k + 1] - 0.5))
    if not span_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    span_rows = np.concatenate(span_rows)
    starts = np.clip(np.concatenate(span_starts), 0, shape[1]).astype(np.int64)
    stops = np.clip(np.concatenate(span_stops), 0, shape[1]).astype(np.int64)
    lengths = np.maximum(stops - starts, 0)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(span_rows, lengths), np.repeat(starts, lengths) + offsets


def _fill_oval(roi, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if roi.subpixelrect:
        left, top, width, height = roi.xd, roi.yd, roi.widthd, roi.heightd
    else:
        left, top, width, height = roi.left, roi.top, roi.right - roi.left, roi.bottom - roi.top
    rows = np.arange(max(int(np.floor(top)), 0), min(int(np.ceil(top + height)), shape[0]))
    cols = np.arange(max(int(np.floor(left)), 0), min(int(np.ceil(left + width)), shape[1]))
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    inside = ((xx + 0.5 - (left + width / 2)) / (width / 2)) ** 2 + (
        (yy + 0.5 - (top + height / 2)) / (height / 2)
    ) ** 2 <= 1
    return yy[inside], xx[inside]


_CURVE_STEPS = 16  # line segments per Bezier segment of a shape ROI
# numbers per segment of a Java PathIterator path: moveto, lineto, quadto, cubicto, close
_SEGMENT_SIZES = {0: 3, 1: 3, 2: 5, 3: 7, 4: 1}


def _paths(roi) -> list[np.ndarray]:
    """The paths (x, y corner coordinates) of a ROI. A shape ROI's quadratic and cubic Bezier
    segments, which ImageJ keeps (rounded rectangles, shapes from other tools), become
    `_CURVE_STEPS` line segments each (roifile refuses them)."""
    if roi.multi_coordinates is None:
        return roi.coordinates(multi=True)
    path = np.asarray(roi.multi_coordinates, dtype=np.float64)
    t = np.linspace(0.0, 1.0, _CURVE_STEPS + 1)[1:, None]
    paths, points, start, n = [], [], None, 0
    while n < len(path):
        kind = int(path[n])
        size = _SEGMENT_SIZES.get(kind)
        if size is None or n + size > len(path) or (kind in (1, 2, 3) and start is None):
            raise ValueError(f"ROI {roi.name!r} has a damaged shape path (segment type {kind})")
        xy = path[n + 1 : n + size].reshape(-1, 2)
        if kind == 0:
            if len(points) > 1:
                paths.append(np.array(points))
            points, start = [xy[0]], xy[0]
        elif kind == 4 and len(points) > 1:
            paths.append(np.array(points))
            points = []
        elif kind in (1, 2, 3):
            p0 = points[-1] if points else start
            points = points or [start]
            if kind == 1:
                points.append(xy[0])
            elif kind == 2:
                points.extend((1 - t) ** 2 * p0 + 2 * (1 - t) * t * xy[0] + t**2 * xy[1])
            else:
                points.extend(
                    (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * xy[0]
                    + 3 * (1 - t) * t**2 * xy[1] + t**3 * xy[2]
                )
        n += size
    if len(points) > 1:
        paths.append(np.array(points))
    return paths


def _roi_pixels(roi, shape: tuple[int, int], description: str) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, cols) an area ROI covers; a ValueError for lines and points."""
    from roifile import ROI_SUBTYPE, ROI_TYPE

    if roi.composite or roi.multi_coordinates is not None:
        # A composite (shape) ROI is a set of closed paths; holes are paths inside paths, so the
        # paths combine by the even-odd rule.
        inside = np.zeros(shape, dtype=bool)
        for path in _paths(roi):
            if len(path) >= 3:
                rows, cols = _fill_polygon(np.asarray(path, dtype=np.float64), shape)
                inside[rows, cols] ^= True
        return np.nonzero(inside)
    if roi.roitype == ROI_TYPE.OVAL:
        return _fill_oval(roi, shape)
    if roi.roitype == ROI_TYPE.RECT and roi.subtype == ROI_SUBTYPE.ROTATED_RECT:
        raise ValueError(
            f"{description} is a rotated rectangle, which is not supported; "
            "convert it to a polygon in ImageJ (Edit > Selection > Interpolate)"
        )
    if roi.roitype in (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED, ROI_TYPE.RECT):
        # Rounded-rectangle corners are ignored: the full rectangle is used.
        return _fill_polygon(np.asarray(roi.coordinates(), dtype=np.float64), shape)
    kind = getattr(roi.roitype, "name", str(roi.roitype)).lower()
    raise ValueError(
        f"{description} is a {kind} selection, which has no area; only polygon, freehand, traced, "
        "rectangle, oval and composite ROIs can be turned into labels. Remove it from the ROI set."
    )


def _roi_extent(roi) -> tuple[float, float]:
    """(bottom, right) of a ROI in corner coordinates."""
    from roifile import ROI_TYPE

    if roi.roitype in (ROI_TYPE.OVAL, ROI_TYPE.RECT) and roi.subpixelrect:
        return roi.yd + roi.heightd, roi.xd + roi.widthd
    paths = _paths(roi)
    if paths and any(len(p) for p in paths):
        xy = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in paths])
        return max(float(xy[:, 1].max()), roi.bottom), max(float(xy[:, 0].max()), roi.right)
    return roi.bottom, roi.right


def read_imagej_rois(path: PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Rasterise an ImageJ ROI set (``.zip``) or a single ``.roi`` file into int32 labels.

    Label ``i + 1`` is the ``i``-th ROI in file order (the order of ImageJ's ROI Manager). A pixel
    belongs to a ROI when its centre lies inside the ROI's outline, as in ImageJ. Where ROIs
    overlap, the ROI that comes first keeps the shared pixels.

    Parameters
    ----------
    path
        ``RoiSet.zip`` (from ImageJ's ROI Manager) or one ``.roi`` file.
    shape
        (height, width) of the image to draw on, e.g. ``movie.shape[1:]``. Default: the smallest
        image, anchored at (0, 0), that holds every ROI.

    Returns
    -------
    numpy.ndarray
        int32 (height, width) labels.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file holds no ROI, a ROI without area (line, point, angle), or a ROI lying entirely
        outside `shape`; `ReaderError` (a ValueError) if the file is not a valid ImageJ ROI file.
    """
    import roifile

    path = existing_path(path, "ImageJ ROI file")
    try:
        rois = roifile.ImagejRoi.fromfile(path)
    except Exception as error:  # roifile raises ValueError, zipfile.BadZipFile, struct.error...
        raise ReaderError(
            f"{path} is not a valid ImageJ ROI file ({type(error).__name__}: {error}); save the "
            "ROIs from ImageJ's ROI Manager (More > Save...)"
        ) from None
    if not isinstance(rois, list):
        rois = [rois]
    if not rois:
        raise ValueError(f"{path} holds no ROIs")

    if shape is None:
        extents = np.array([_roi_extent(roi) for roi in rois], dtype=np.float64)
        shape = (int(np.ceil(extents[:, 0].max())), int(np.ceil(extents[:, 1].max())))
    shape = (int(shape[0]), int(shape[1]))
    if shape[0] <= 0 or shape[1] <= 0:
        raise ValueError(f"cannot draw the ROIs of {path} on an image of shape {shape}")

    labels = np.zeros(shape, dtype=np.int32)
    vanished = []
    for index, roi in enumerate(rois):
        description = _roi_description(roi, index)
        rows, cols = _roi_pixels(roi, shape, description)
        if len(rows) == 0:
            raise ValueError(
                f"{description} of {path} covers no pixel of the {shape[0]} x {shape[1]} image; "
                "were these ROIs drawn on an image of this size?"
            )
        free = labels[rows, cols] == 0
        if not free.any():
            vanished.append(description)
        labels[rows[free], cols[free]] = index + 1
    if vanished:
        warnings.warn(
            f"{', '.join(vanished)} of {path} lie entirely inside earlier ROIs and have no pixel "
            "of their own in the label image",
            stacklevel=2,
        )
    return labels
