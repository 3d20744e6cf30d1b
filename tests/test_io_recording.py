"""`read_recording`: one entry point for every supported input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from scipy import sparse

from napari_neurt import Recording
from napari_neurt.io import ReaderError, read_recording
from napari_neurt.io.recording_io import tiff_frame_rate

LABELS = np.zeros((10, 12), np.int32)
LABELS[1:4, 1:5] = 3
LABELS[6:9, 7:11] = 8


@pytest.fixture
def movie() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 1000, (25, 10, 12)).astype(np.uint16)


def test_npz_round_trip(tmp_path):
    traces = np.random.default_rng(0).random((2, 30)).astype(np.float32)
    np.savez(
        tmp_path / "rec.npz",
        traces=traces,
        centroids=[[2.0, 2.5], [7.0, 8.5]],
        neuron_ids=[3, 8],
        labels=LABELS,
        frame_rate=12.5,
        pixel_size_um=0.8,
    )
    recording = read_recording(tmp_path / "rec.npz")
    assert isinstance(recording, Recording)
    np.testing.assert_array_equal(recording.traces, traces)
    np.testing.assert_array_equal(recording.neuron_ids, [3, 8])
    np.testing.assert_array_equal(recording.labels, LABELS)
    assert (recording.frame_rate, recording.pixel_size_um) == (12.5, 0.8)


def test_npz_centroids_from_labels_and_frame_rate_argument(tmp_path):
    np.savez(tmp_path / "rec.npz", traces=np.zeros((2, 5)), labels=LABELS)
    with pytest.raises(ValueError, match="no 'frame_rate'; pass frame_rate="):
        read_recording(tmp_path / "rec.npz")
    recording = read_recording(tmp_path / "rec.npz", frame_rate=4.0)
    np.testing.assert_array_equal(recording.neuron_ids, [3, 8])
    np.testing.assert_allclose(recording.centroids, [[2.0, 2.5], [7.0, 8.5]])
    assert recording.frame_rate == 4.0


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "no_traces.npz", centroids=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no 'traces' array"):
        read_recording(tmp_path / "no_traces.npz", frame_rate=1)
    np.savez(tmp_path / "no_centroids.npz", traces=np.zeros((2, 5)), frame_rate=1.0)
    with pytest.raises(ValueError, match="needs 'centroids'"):
        read_recording(tmp_path / "no_centroids.npz")
    np.savez(tmp_path / "pickled.npz", traces=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects"):
        read_recording(tmp_path / "pickled.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ReaderError, match="not a valid .npz"):
        read_recording(tmp_path / "junk.npz")


def test_npz_numbers_saved_in_one_element_arrays(tmp_path):
    traces = np.zeros((2, 10), np.float32)
    np.savez(tmp_path / "r.npz", traces=traces, centroids=np.zeros((2, 2)),
             frame_rate=np.array([30.0]), pixel_size_um=np.array([1.5]))
    recording = read_recording(tmp_path / "r.npz")
    assert (recording.frame_rate, recording.pixel_size_um) == (30.0, 1.5)
    np.savez(tmp_path / "r.npz", traces=traces, centroids=np.zeros((2, 2)),
             frame_rate=np.array([30.0, 15.0]))
    with pytest.raises(ValueError, match="'frame_rate' must be one positive number"):
        read_recording(tmp_path / "r.npz")


def test_tiff_movie_with_labels_extracts_mean_traces(tmp_path, movie):
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    recording = read_recording(tmp_path / "movie.tif", labels=LABELS, frame_rate=30.0)
    np.testing.assert_array_equal(recording.neuron_ids, [3, 8])
    for row, value in enumerate([3, 8]):
        np.testing.assert_allclose(
            recording.traces[row], movie[:, LABELS == value].mean(axis=1), rtol=1e-5
        )
    assert recording.frame_rate == 30.0 and recording.metadata["frame_rate_from"] == "argument"

    np.save(tmp_path / "labels.npy", LABELS)
    from_file = read_recording(
        tmp_path / "movie.tif", labels=tmp_path / "labels.npy", frame_rate=30.0
    )
    np.testing.assert_array_equal(from_file.traces, recording.traces)


def test_tiff_frame_rate_from_imagej_metadata(tmp_path, movie):
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"finterval": 0.05})
    assert tiff_frame_rate(tmp_path / "movie.tif") == pytest.approx(20.0)
    recording = read_recording(tmp_path / "movie.tif", labels=LABELS)
    assert recording.frame_rate == pytest.approx(20.0)
    assert recording.metadata["frame_rate_from"] == "tiff metadata"


@pytest.mark.parametrize(
    "metadata, rate",
    [
        ({"finterval": 33.3, "tunit": "ms"}, 1000 / 33.3),  # ImageJ names a unit unless "sec"
        ({"finterval": 0.5, "tunit": "min"}, 1 / 30),
        ({"finterval": 0.1, "tunit": "sec"}, 10.0),
        ({"finterval": 0.1, "fps": 7.0}, 10.0),  # the acquisition, not the playback rate
        ({"fps": 7.0}, 7.0),
        ({"finterval": 2.0, "tunit": "frames"}, None),  # a unit that is not time: unknown
    ],
)
def test_tiff_frame_rate_in_imagej_time_units(tmp_path, movie, metadata, rate):
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata=metadata)
    found = tiff_frame_rate(tmp_path / "movie.tif")
    assert found == (None if rate is None else pytest.approx(rate))


@pytest.mark.parametrize("average, rate", [(1, 30.0), (3, 10.0)])
def test_tiff_frame_rate_from_scanimage_metadata(tmp_path, movie, scanimage_tiff, average, rate):
    # ScanImage logs the mean of every `logAverageFactor` frames it scans
    path = scanimage_tiff(
        tmp_path / "si.tif",
        movie,
        {"SI.hRoiManager.scanFrameRate": 30.0, "SI.hScan2D.logAverageFactor": average},
    )
    assert tiff_frame_rate(path) == pytest.approx(rate)


def test_a_folder_of_trials_takes_its_frame_rate_from_their_metadata(tmp_path, movie):
    (tmp_path / "trials").mkdir()
    for trial in ("trial1.tif", "trial2.tif"):
        tifffile.imwrite(tmp_path / "trials" / trial, movie, imagej=True,
                         metadata={"finterval": 0.1})
    recording = read_recording(tmp_path / "trials", labels=LABELS)
    assert recording.frame_rate == pytest.approx(10.0)
    assert recording.n_frames == 2 * len(movie)


def test_tiff_without_frame_rate_or_labels(tmp_path, movie):
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    with pytest.raises(ValueError, match="does not record its frame rate; pass frame_rate="):
        read_recording(tmp_path / "movie.tif", labels=LABELS)
    with pytest.raises(ValueError, match="is a movie: pass labels="):
        read_recording(tmp_path / "movie.tif", frame_rate=10)
    with pytest.raises(ValueError, match="frames are 10 x 12"):
        read_recording(tmp_path / "movie.tif", labels=LABELS[:5], frame_rate=10)


def test_caiman_file_and_overrides(tmp_path):
    A = sparse.csc_matrix((LABELS == 3).ravel(order="F").astype(float)[:, None])
    with h5py.File(tmp_path / "cnm.hdf5", "w") as file:
        for name in ("data", "indices", "indptr"):
            file[f"estimates/A/{name}"] = getattr(A, name)
        file["estimates/A/shape"] = A.shape
        file["estimates/C"] = np.ones((1, 7))
        file["dims"] = LABELS.shape
        file["params/data/fr"] = 30.0
    recording = read_recording(tmp_path / "cnm.hdf5", frame_rate=15.0, pixel_size_um=0.5)
    assert recording.frame_rate == 15.0 and recording.pixel_size_um == 0.5
    assert recording.metadata["frame_rate_from"] == "argument"
    assert recording.metadata["pixel_size_from"] == "argument"
    np.testing.assert_array_equal(recording.labels == 1, LABELS == 3)


def test_suite2p_folder_with_overrides(test_data):
    folder = test_data / "fissa_suite2p_outputs"
    recording = read_recording(folder, frame_rate=30.0, cells_only=False)
    assert recording.n_neurons == 23 and recording.frame_rate == 30.0
    assert recording.metadata["frame_rate_from"] == "argument"
    with pytest.raises(ValueError, match="labels are only used with a TIFF movie"):
        read_recording(folder, labels=LABELS)


def test_fissa_trials_folder_with_imagej_rois(test_data):
    crop = test_data / "fissa_test_crop"
    recording = read_recording(crop / "images", labels=crop / "rois.zip", frame_rate=1.0)
    assert recording.traces.shape == (2, 87)


def test_unsupported_and_missing_inputs(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"(?s)supported are:.*suite2p.*CaImAn.*NWB.*\.npz.*TIFF"):
        read_recording(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="no F.npy and stat.npy"):
        read_recording(tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.nwb"):
        read_recording(tmp_path / "gone.nwb")
