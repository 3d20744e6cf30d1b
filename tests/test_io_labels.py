"""Label images (TIFF, PNG, NPY) and ImageJ ROIs rasterised to labels."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image
from roifile import ROI_TYPE, ImagejRoi

from napari_neurt.io import ReaderError, read_imagej_rois, read_labels, read_movie

LABELS = np.zeros((12, 17), dtype=np.uint16)
LABELS[2:5, 3:7] = 1
LABELS[7:11, 10:16] = 4


# -- label images ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_label_image_round_trip(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, LABELS)
    elif suffix == ".png":
        Image.fromarray(LABELS.astype(np.uint8)).save(path)
    else:
        np.save(path, LABELS)
    labels = read_labels(path)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, LABELS)


def test_palette_png_keeps_its_indices(tmp_path):
    image = Image.fromarray(LABELS.astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 255] * 254)
    image.save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.png"), LABELS)


def test_whole_valued_float_labels_are_converted(tmp_path):
    np.save(tmp_path / "labels.npy", LABELS.astype(np.float32))
    labels = read_labels(tmp_path / "labels.npy")
    assert np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(labels, LABELS)


def test_leading_singleton_axis_is_dropped(tmp_path):
    tifffile.imwrite(tmp_path / "labels.tif", LABELS[None])
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.tif"), LABELS)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (LABELS * 0.5, "non-integer"),
        (np.stack([LABELS, LABELS]), "3-D"),
        (np.zeros((5, 5), np.uint8), "no ROIs"),
        (LABELS.astype(bool), "boolean mask"),
        (LABELS.astype(np.int32) - 1, "negative"),
        (np.zeros((5, 5, 3), np.uint8), "colour"),
    ],
    ids=["fractional", "3d", "empty", "bool", "negative", "rgb"],
)
def test_bad_label_images_are_refused(tmp_path, array, message):
    np.save(tmp_path / "labels.npy", array)
    with pytest.raises(ValueError, match=message):
        read_labels(tmp_path / "labels.npy")


def test_labels_must_fit_the_movie(tmp_path):
    np.save(tmp_path / "labels.npy", LABELS)
    with pytest.raises(ValueError, match=r"12 x 17 pixels but the movie frames are 12 x 16"):
        read_labels(tmp_path / "labels.npy", shape=(12, 16))


def test_pickled_npy_is_not_loaded(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        read_labels(tmp_path / "labels.npy")


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "labels.csv").write_text("0,1\n")
    with pytest.raises(ValueError, match=r"\.tif.*\.png.*\.npy"):
        read_labels(tmp_path / "labels.csv")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_labels(tmp_path / "absent.png")


# -- ImageJ ROIs -----------------------------------------------------------------------------------
def _rect(left, top, right, bottom, name="") -> ImagejRoi:
    return ImagejRoi(
        roitype=ROI_TYPE.RECT, left=left, top=top, right=right, bottom=bottom, name=name
    )


def _polygon(xy, name="") -> ImagejRoi:
    roi = ImagejRoi.frompoints(np.asarray(xy, dtype=np.float32), name=name)
    roi.roitype = ROI_TYPE.POLYGON
    return roi


def test_rectangle_covers_exactly_its_pixels(tmp_path):
    # A 4 x 3 rectangle at (left, top) = (2, 5): columns 2-5, rows 5-7.
    _rect(2, 5, 6, 8).tofile(tmp_path / "rect.roi")
    labels = read_imagej_rois(tmp_path / "rect.roi", shape=(10, 10))
    expected = np.zeros((10, 10), np.int32)
    expected[5:8, 2:6] = 1
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_polygon_uses_pixel_centres(tmp_path):
    # Right triangle with corners (0, 0), (6, 0), (0, 6): pixel (r, c) is inside when its centre
    # satisfies (c + 0.5) + (r + 0.5) < 6, i.e. r + c <= 4.
    roifile.roiwrite(tmp_path / "set.zip", [_polygon([[0, 0], [6, 0], [0, 6]])])
    labels = read_imagej_rois(tmp_path / "set.zip", shape=(6, 6))
    rows, cols = np.indices((6, 6))
    np.testing.assert_array_equal(labels == 1, rows + cols <= 4)


def test_oval_is_the_inscribed_ellipse(tmp_path):
    ImagejRoi(roitype=ROI_TYPE.OVAL, left=2, top=1, right=12, bottom=7).tofile(
        tmp_path / "oval.roi"
    )
    mask = read_imagej_rois(tmp_path / "oval.roi", shape=(9, 15)) == 1
    rows, cols = np.indices(mask.shape)
    expected = ((cols + 0.5 - 7) / 5) ** 2 + ((rows + 0.5 - 4) / 3) ** 2 <= 1
    np.testing.assert_array_equal(mask, expected)
    assert mask[1:7, 2:12].sum() == mask.sum()  # inside its bounding box
    np.testing.assert_array_equal(mask[1:7], mask[1:7][::-1])  # symmetric about its centre row


def test_composite_roi_keeps_its_hole(tmp_path):
    ring = ImagejRoi(roitype=ROI_TYPE.RECT, left=0, top=0, right=6, bottom=6, name="ring")
    # Shape-ROI path: moveto (0), lineto (1), close (4); an outer square and an inner one.
    path = [0, 0, 0, 1, 6, 0, 1, 6, 6, 1, 0, 6, 4, 0, 2, 2, 1, 4, 2, 1, 4, 4, 1, 2, 4, 4]
    ring.multi_coordinates = np.array(path, dtype=np.float32)
    ring.shape_roi_size = len(path)
    ring.tofile(tmp_path / "ring.roi")
    labels = read_imagej_rois(tmp_path / "ring.roi")
    expected = np.ones((6, 6), np.int32)
    expected[2:4, 2:4] = 0
    np.testing.assert_array_equal(labels, expected)


def test_composite_roi_with_curves(tmp_path):
    # ImageJ keeps the Bezier segments of a shape ROI (rounded rectangles, shapes from other
    # tools): here a disc of radius 5.3 around (8, 8) as four cubic quarter arcs (type 3), every
    # pixel centre at least 0.15 px away from the circle.
    k, r, c = 0.5523, 5.3, 8.0  # a quarter circle's control points lie k * r along the tangents
    path = [0, c + r, c]
    for (x0, y0), (x1, y1) in [((1, 0), (0, 1)), ((0, 1), (-1, 0)), ((-1, 0), (0, -1)),
                               ((0, -1), (1, 0))]:
        path += [3, c + r * (x0 + k * x1), c + r * (y0 + k * y1),
                 c + r * (x1 + k * x0), c + r * (y1 + k * y0), c + r * x1, c + r * y1]
    path.append(4)
    disc = ImagejRoi(roitype=ROI_TYPE.RECT, left=3, top=3, right=14, bottom=14, name="disc")
    disc.multi_coordinates = np.array(path, dtype=np.float32)
    disc.shape_roi_size = len(path)
    disc.tofile(tmp_path / "disc.roi")
    rows, cols = np.indices((17, 17))
    expected = np.hypot(cols + 0.5 - c, rows + 0.5 - c) <= r
    np.testing.assert_array_equal(read_imagej_rois(tmp_path / "disc.roi", (17, 17)) == 1, expected)
    assert read_imagej_rois(tmp_path / "disc.roi").shape == (14, 14)  # drawn on the smallest image


def test_label_order_and_overlaps_first_roi_keeps_shared_pixels(tmp_path):
    rois = [_rect(0, 0, 5, 5, "first"), _rect(3, 3, 8, 8, "second"), _rect(10, 0, 12, 2, "third")]
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    labels = read_imagej_rois(tmp_path / "RoiSet.zip")
    assert labels.shape == (8, 12)  # default: just large enough for every ROI
    assert (labels[0:5, 0:5] == 1).all()  # the first ROI is whole
    second = np.zeros_like(labels, dtype=bool)
    second[3:8, 3:8] = True
    second[3:5, 3:5] = False  # shared with the first, which keeps it
    np.testing.assert_array_equal(labels == 2, second)
    assert (labels[0:2, 10:12] == 3).all()


def test_roi_hidden_by_earlier_ones_warns(tmp_path):
    roifile.roiwrite(tmp_path / "set.zip", [_rect(0, 0, 6, 6, "big"), _rect(1, 1, 3, 3, "inner")])
    with pytest.warns(UserWarning, match="'inner'.*entirely inside earlier ROIs"):
        labels = read_imagej_rois(tmp_path / "set.zip")
    assert set(np.unique(labels)) == {1}


def test_rois_without_area_or_outside_the_image_are_refused(tmp_path):
    line = ImagejRoi(roitype=ROI_TYPE.LINE, x1=0, y1=0, x2=5, y2=5, name="axon", right=5, bottom=5)
    roifile.roiwrite(tmp_path / "line.zip", [_rect(0, 0, 3, 3), line])
    with pytest.raises(ValueError, match="ROI #2 'axon' is a line selection"):
        read_imagej_rois(tmp_path / "line.zip")
    _rect(20, 20, 25, 25).tofile(tmp_path / "far.roi")
    with pytest.raises(ValueError, match="covers no pixel of the 10 x 10 image"):
        read_imagej_rois(tmp_path / "far.roi", shape=(10, 10))


def test_not_an_roi_file(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(ReaderError, match="not a valid ImageJ ROI file"):
        read_imagej_rois(tmp_path / "broken.zip")


def test_read_labels_dispatches_roi_files(tmp_path):
    _rect(1, 1, 3, 4).tofile(tmp_path / "cell.roi")
    labels = read_labels(tmp_path / "cell.roi", shape=(5, 5))
    assert labels.shape == (5, 5) and (labels == 1).sum() == 6


def test_fissa_rois_reproduce_fissa_traces(test_data):
    """Mean inside each rasterised polygon matches FISSA's raw ROI trace (r >= 0.98)."""
    from napari_neurt.extraction import extract_traces

    crop = test_data / "fissa_test_crop"
    # Trusted fixture written by FISSA: an object array [roi, trial] of (5, frames) arrays.
    expected = np.load(crop / "expected_py3.npz", allow_pickle=True)["raw"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ROI may vanish
        labels = read_imagej_rois(crop / "rois.zip", shape=(21, 14))
    assert set(np.unique(labels)) == {0, 1, 2}
    for trial in range(3):
        movie = read_movie(crop / "images" / f"AVG_A0{trial + 1}.tif")
        assert movie.shape == (29, 21, 14)
        traces = extract_traces(movie, labels)
        for roi in range(2):
            r = np.corrcoef(traces[roi], expected[roi, trial][0])[0, 1]
            assert r >= 0.98, f"ROI {roi + 1}, trial {trial + 1}: r = {r:.4f}"


def test_sima_rois_on_their_movie(test_data):
    labels = read_imagej_rois(test_data / "sima_example" / "imageJ_ROIs.zip", shape=(128, 256))
    sizes = np.bincount(labels.ravel())
    assert len(sizes) == 3 and sizes[1] > 100 and sizes[2] > 100
