"""npe2 reader contributions: which paths they claim, and the layer data they return."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image
from scipy import sparse

from napari_neurt import Recording
from napari_neurt.plugin.readers import (
    get_caiman_reader,
    get_imagej_roi_reader,
    get_labels_reader,
    get_nwb_reader,
    get_suite2p_reader,
    get_tiff_reader,
)

LABELS = np.zeros((10, 12), np.uint16)
LABELS[1:4, 1:5] = 1
LABELS[6:9, 7:11] = 2


def test_module_imports_neither_napari_nor_qt():
    code = (
        "import sys, napari_neurt.plugin.readers\n"
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')\n"
        "bad = [m for m in gui if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiff_movie_becomes_a_lazy_image_layer(tmp_path):
    movie = np.random.default_rng(0).integers(0, 100, (8, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "session1.tif", movie, compression="zlib")
    reader = get_tiff_reader(str(tmp_path / "session1.tif"))
    [(data, kwargs, kind)] = reader(str(tmp_path / "session1.tif"))
    assert kind == "image" and kwargs["name"] == "session1" and kwargs["rgb"] is False
    assert not isinstance(data, np.ndarray)  # lazy
    assert data.shape == movie.shape
    np.testing.assert_array_equal(data[3], movie[3])


def test_tiff_list_is_one_movie(tmp_path):
    movie = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    paths = []
    for i, part in enumerate([movie[:4], movie[4:]]):
        paths.append(str(tmp_path / f"trial{i}.tif"))
        tifffile.imwrite(paths[-1], part, photometric="minisblack")
    [(data, kwargs, kind)] = get_tiff_reader(paths)(paths)
    assert kind == "image" and data.shape == (6, 4, 5)
    np.testing.assert_array_equal(data[:], movie)


def test_tiff_movie_layer_carries_the_frame_rate_its_metadata_records(tmp_path):
    # the analysis panel prefills the frame rate from the layer's metadata
    movie = np.zeros((8, 10, 12), np.uint16)
    tifffile.imwrite(tmp_path / "timed.tif", movie, imagej=True, metadata={"finterval": 0.05})
    tifffile.imwrite(tmp_path / "untimed.tif", movie)
    path = str(tmp_path / "timed.tif")
    [(_, kwargs, _)] = get_tiff_reader(path)(path)
    assert kwargs["metadata"]["frame_rate"] == pytest.approx(20.0)
    paths = [path, str(tmp_path / "untimed.tif")]
    [(_, kwargs, _)] = get_tiff_reader(paths)(paths)
    assert kwargs["metadata"]["frame_rate"] == pytest.approx(20.0)  # the first file's
    path = str(tmp_path / "untimed.tif")
    [(_, kwargs, _)] = get_tiff_reader(path)(path)
    assert "frame_rate" not in kwargs["metadata"]


def test_two_d_tiffs_become_labels_or_images(tmp_path):
    tifffile.imwrite(tmp_path / "rois.tif", LABELS)
    [(data, kwargs, kind)] = get_tiff_reader(str(tmp_path / "rois.tif"))(str(tmp_path / "rois.tif"))
    assert kind == "labels" and kwargs["name"] == "rois"
    np.testing.assert_array_equal(data, LABELS)

    mean_image = np.random.default_rng(1).integers(100, 2000, (10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "mean.tif", mean_image)
    [(data, _, kind)] = get_tiff_reader(str(tmp_path / "mean.tif"))(str(tmp_path / "mean.tif"))
    assert kind == "image"


def test_tiff_reader_declines_what_it_does_not_handle(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    assert get_tiff_reader(str(tmp_path / "rgb.tif")) is None
    assert get_tiff_reader(str(tmp_path / "absent.tif")) is None
    assert get_tiff_reader(str(tmp_path / "notes.txt")) is None
    # a list (napari's "open as stack") of what it declines one by one: napari stacks them
    assert get_tiff_reader([str(tmp_path / "rgb.tif")] * 2) is None
    for i in range(2):
        tifffile.imwrite(tmp_path / f"frame{i}.tif", np.zeros((8, 8), np.uint16))
    assert get_tiff_reader([str(tmp_path / f"frame{i}.tif") for i in range(2)]) is None


def test_label_image_reader(tmp_path):
    np.save(tmp_path / "labels.npy", LABELS)
    reader = get_labels_reader(str(tmp_path / "labels.npy"))
    [(data, kwargs, kind)] = reader(str(tmp_path / "labels.npy"))
    assert kind == "labels" and kwargs["name"] == "labels"
    np.testing.assert_array_equal(data, LABELS)
    Image.fromarray(LABELS.astype(np.uint8)).save(tmp_path / "labels.png")
    assert get_labels_reader(str(tmp_path / "labels.png")) is not None

    np.save(tmp_path / "F.npy", np.random.default_rng(0).random((3, 50)))  # traces, not labels
    np.save(tmp_path / "stat.npy", np.array([{}], dtype=object), allow_pickle=True)
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    # integer arrays that are pictures, or hold no ROI, are not claimed either
    np.save(tmp_path / "camera.npy", np.random.default_rng(0).integers(1, 4096, (10, 12)))
    np.save(tmp_path / "empty.npy", np.zeros((10, 12), np.int32))
    np.save(tmp_path / "signed.npy", -LABELS.astype(np.int32))
    for name in ("F.npy", "stat.npy", "photo.png", "camera.npy", "empty.npy", "signed.npy"):
        assert get_labels_reader(str(tmp_path / name)) is None, name


def test_imagej_roi_reader(tmp_path):
    roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=1, top=2, right=4, bottom=5)
    roifile.roiwrite(tmp_path / "RoiSet.zip", [roi])
    [(data, kwargs, kind)] = get_imagej_roi_reader(str(tmp_path / "RoiSet.zip"))(
        str(tmp_path / "RoiSet.zip")
    )
    assert kind == "labels" and (data == 1).sum() == 9

    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not ROIs")
    assert get_imagej_roi_reader(str(tmp_path / "other.zip")) is None


def test_imagej_roi_layer_says_its_canvas_is_minimal(tmp_path):
    """A ROI file does not know its image's size: the layer says so, for the analysis panel."""
    from napari_neurt.plugin.readers import IMAGEJ_ROIS_KEY

    path = tmp_path / "RoiSet.zip"
    roifile.roiwrite(path, [
        roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=1, top=2, right=4, bottom=5),
        roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=6, top=3, right=9, bottom=11),
    ])
    [(data, kwargs, kind)] = get_imagej_roi_reader(str(path))(str(path))
    assert kind == "labels" and data.shape == (11, 9)
    assert kwargs["metadata"][IMAGEJ_ROIS_KEY] == {"path": str(path), "canvas": "minimal"}
    assert kwargs["metadata"]["source"] == str(path)


def _check_recording_layers(layers, n_neurons, with_image=True):
    kinds = [kind for _, _, kind in layers]
    assert kinds == (["image", "labels"] if with_image else ["labels"])
    labels, kwargs, _ = layers[-1]
    recording = kwargs["metadata"]["neurt_recording"]
    assert isinstance(recording, Recording) and recording.n_neurons == n_neurons
    # equal, but a copy: painting the layer must not change the Recording
    np.testing.assert_array_equal(labels, recording.labels)
    assert labels is not recording.labels and 0 in labels
    features = kwargs["features"]
    assert all(len(column) == n_neurons + 1 for column in features.values())
    assert features["index"][0] == 0  # background row first
    np.testing.assert_array_equal(features["neuron_id"][1:], recording.neuron_ids)
    return recording, features


def test_suite2p_reader(test_data, tmp_path):
    folder = test_data / "fissa_suite2p_outputs"
    layers = get_suite2p_reader(str(folder))(str(folder))
    recording, features = _check_recording_layers(layers, 21)
    np.testing.assert_array_equal(features["iscell"][1:], recording.metadata["iscell"])
    assert layers[0][0].shape == (176, 156)
    assert get_suite2p_reader(str(tmp_path)) is None  # a folder without F.npy
    assert get_suite2p_reader(str(folder / "F.npy")) is None  # not a folder


def test_suite2p_reader_opens_every_plane_of_a_suite2p_folder(test_data, tmp_path):
    for plane in ("plane0", "plane1"):
        shutil.copytree(test_data / "fissa_suite2p_outputs", tmp_path / "suite2p" / plane)
    layers = get_suite2p_reader(str(tmp_path / "suite2p"))(str(tmp_path / "suite2p"))
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "suite2p plane0 reference image",
        "suite2p plane0 ROIs",
        "suite2p plane1 reference image",
        "suite2p plane1 ROIs",
    ]


def test_caiman_and_nwb_readers(tmp_path):
    A = sparse.csc_matrix((LABELS == 2).ravel(order="F").astype(float)[:, None])
    with h5py.File(tmp_path / "cnm.hdf5", "w") as file:
        for name in ("data", "indices", "indptr"):
            file[f"estimates/A/{name}"] = getattr(A, name)
        file["estimates/A/shape"] = A.shape
        file["estimates/C"] = np.ones((1, 7))
        file["dims"] = LABELS.shape
        file["params/data/fr"] = 30.0
        file["params/data/dxy"] = [0.5, 0.5]
    layers = get_caiman_reader(str(tmp_path / "cnm.hdf5"))(str(tmp_path / "cnm.hdf5"))
    _check_recording_layers(layers, 1, with_image=False)
    assert layers[0][1]["scale"] == (0.5, 0.5)

    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file["data"] = np.zeros(3)
    assert get_caiman_reader(str(tmp_path / "plain.h5")) is None
    assert get_nwb_reader(str(tmp_path / "plain.h5")) is None
    (tmp_path / "empty.nwb").write_bytes(b"")
    assert get_nwb_reader(str(tmp_path / "empty.nwb")) is None


def test_layer_data_are_accepted_by_napari(test_data, tmp_path):
    layers_module = pytest.importorskip("napari.layers")
    folder = test_data / "fissa_suite2p_outputs"
    tifffile.imwrite(tmp_path / "movie.tif", np.zeros((5, 6, 7), np.uint16), compression="zlib")
    layer_data = get_suite2p_reader(str(folder))(str(folder))
    layer_data += get_tiff_reader(str(tmp_path / "movie.tif"))(str(tmp_path / "movie.tif"))
    layers = [layers_module.Layer.create(*data) for data in layer_data]
    labels = layers[1]
    assert isinstance(labels, layers_module.Labels)
    # napari looks features up by label value through the "index" column.
    recording = labels.metadata["neurt_recording"]
    y, x = np.round(recording.centroids[0]).astype(int)
    value = int(labels.data[y, x])
    assert value in recording.neuron_ids
    status = labels.get_status((y, x))
    assert f"neuron_id: {value}" in str(status)
    assert layers[2].data.shape == (5, 6, 7)


def test_only_folders_are_offered_to_the_suite2p_reader(tmp_path):
    # napari's File > Open asks which plugin to use whenever more than one claims a path: a
    # reader matching every file name would ask for every picture, CSV, ... the user opens
    from pathlib import Path

    from npe2 import PluginManager, PluginManifest

    import napari_neurt.plugin

    manifest = PluginManifest.from_file(Path(napari_neurt.plugin.__file__).parent.parent / "napari.yaml")
    manager = PluginManager()
    manager.register(manifest)
    (tmp_path / "points.csv").write_text("x,y\n")
    commands = lambda path: {r.command for r in manager.iter_compatible_readers([str(path)])}
    assert commands(tmp_path / "points.csv") == set()
    assert commands(tmp_path) == {"napari-neurt.get_suite2p_reader"}
