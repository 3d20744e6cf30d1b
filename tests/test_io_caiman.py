"""CaImAn ``cnm.save`` HDF5 files: built here in CaImAn's layout, then read back."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import sparse

from napari_neurt.io import ReaderError, read_caiman
from napari_neurt.io.caiman import footprint_labels


def write_cnm_hdf5(path, A, C, dims, *, fr=30.0, F_dff=None, idx_components=None, dxy=(2.0, 2.0)):
    """Write what ``cnm.save`` writes for these estimates (None becomes the string 'NoneType')."""
    A = sparse.csc_matrix(A)
    with h5py.File(path, "w") as file:
        for name in ("data", "indices", "indptr"):
            file[f"estimates/A/{name}"] = getattr(A, name)
        file["estimates/A/shape"] = np.array(A.shape)
        file["estimates/C"] = C
        file["estimates/F_dff"] = "NoneType" if F_dff is None else F_dff
        file["estimates/idx_components"] = "NoneType" if idx_components is None else idx_components
        file["estimates/dims"] = np.array(dims)
        file["dims"] = np.array(dims)
        file["params/data/fr"] = fr
        file["params/data/dxy"] = np.array(dxy)
        file["params/data/dims"] = np.array(dims)
        file["dview"] = "NoneType"


def _gaussian_footprint(shape, y, x, sigma=1.5, scale=1.0):
    yy, xx = np.indices(shape)
    image = scale * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    image[image < 0.01 * scale] = 0
    return image.ravel(order="F")  # CaImAn's pixel order


def test_fortran_pixel_order_and_overlap_rule(tmp_path):
    shape = (12, 20)  # not square, so that a C/Fortran mix-up would show
    A = np.column_stack([
        _gaussian_footprint(shape, 4, 15, scale=100.0),  # big amplitude
        _gaussian_footprint(shape, 4, 12, scale=1.0),  # small amplitude, overlapping the first
        _gaussian_footprint(shape, 7, 4),
    ])  # fmt: skip
    C = np.random.default_rng(0).random((3, 40))
    write_cnm_hdf5(tmp_path / "cnm.hdf5", A, C, shape)
    recording = read_caiman(tmp_path / "cnm.hdf5")

    labels = recording.labels
    assert labels.shape == shape
    assert labels[4, 15] == 1 and labels[4, 12] == 2 and labels[7, 4] == 3  # each owns its peak
    # Relative weights decide, not raw ones: at (4, 13) component 1 weighs 41, component 2 only
    # 0.8, but that is 41% of 1's peak and 80% of 2's.
    assert labels[4, 13] == 2 and labels[4, 14] == 1
    np.testing.assert_allclose(recording.centroids, [[4, 15], [4, 12], [7, 4]], atol=1e-9)
    np.testing.assert_array_equal(recording.traces, C.astype(np.float32))
    assert recording.metadata["trace_kind"] == "C"
    assert recording.frame_rate == 30.0 and recording.pixel_size_um == 2.0


def test_labels_follow_the_threshold():
    shape = (9, 9)
    A = sparse.csc_matrix(_gaussian_footprint(shape, 4, 4, sigma=2.0)[:, None])
    peak = A.max()
    for threshold in (0.1, 0.5, 0.9):
        labels = footprint_labels(A, shape, threshold)
        dense = A.toarray().reshape(shape, order="F")
        np.testing.assert_array_equal(labels == 1, dense >= threshold * peak)
    with pytest.raises(ValueError, match="threshold"):
        footprint_labels(A, shape, 0)


def test_f_dff_is_preferred_and_accepted_components_are_kept(tmp_path):
    shape = (10, 10)
    A = np.column_stack([_gaussian_footprint(shape, y, x) for y, x in [(2, 2), (5, 7), (8, 3)]])
    C = np.ones((3, 20))
    F_dff = np.arange(60, dtype=float).reshape(3, 20)
    write_cnm_hdf5(tmp_path / "cnm.hdf5", A, C, shape, F_dff=F_dff, idx_components=np.array([0, 2]))
    recording = read_caiman(tmp_path / "cnm.hdf5")
    assert recording.metadata["trace_kind"] == "F_dff"
    np.testing.assert_array_equal(recording.neuron_ids, [1, 3])
    np.testing.assert_array_equal(recording.traces, F_dff[[0, 2]])
    assert set(np.unique(recording.labels)) == {0, 1, 3}
    assert read_caiman(tmp_path / "cnm.hdf5", accepted_only=False).n_neurons == 3


@pytest.mark.filterwarnings(
    "ignore:Please import:DeprecationWarning"
)  # the fixture pickles scipy 0.x paths
@pytest.mark.parametrize("name", ["groundtruth_demoMovie", "example"])
def test_real_cnmf_results_round_trip(test_data, tmp_path, name):
    # Trusted fixture (CaImAn's own test data): pickled scipy sparse matrices, latin1 from Python 2.
    results = np.load(
        test_data / "caiman_cnmf_results" / f"{name}.npz", allow_pickle=True, encoding="latin1"
    )
    A = results["A_full"].item().tocsc()
    C = results["C_full"]
    side = {"groundtruth_demoMovie": (60, 80), "example": (170, 170)}[name]
    assert A.shape[0] == side[0] * side[1]
    write_cnm_hdf5(tmp_path / "cnm.hdf5", A, C, side, fr=10.0)

    recording = read_caiman(tmp_path / "cnm.hdf5")
    assert recording.n_neurons == A.shape[1] and recording.n_frames == C.shape[1]
    np.testing.assert_array_equal(recording.traces, C.astype(np.float32))
    assert (recording.metadata["footprints"] != A).nnz == 0  # footprints unchanged
    dense = A.toarray().reshape(*side, A.shape[1], order="F")
    relative = dense / dense.max(axis=(0, 1))
    for k in range(A.shape[1]):
        pixels = recording.labels == k + 1
        assert pixels.any()
        assert (relative[pixels, k] >= 0.2).all()  # only pixels above the threshold
        peak = np.unravel_index(np.argmax(dense[..., k]), side)
        y, x = np.nonzero(dense[..., k])
        w = dense[y, x, k]
        np.testing.assert_allclose(
            recording.centroids[k], [np.average(y, weights=w), np.average(x, weights=w)]
        )
        sharing_the_peak = np.flatnonzero(relative[peak] == 1.0)
        assert recording.labels[peak] == sharing_the_peak[0] + 1
    assigned = recording.labels > 0
    assert (relative[~assigned] < 0.2).all()
    np.testing.assert_array_equal(  # each labelled pixel goes to the relatively strongest component
        recording.labels[assigned] - 1, np.argmax(relative[assigned], axis=1)
    )


def test_missing_parts_are_named(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["data"] = np.zeros(3)
    with pytest.raises(ReaderError, match="no 'estimates' group.*cnm.save"):
        read_caiman(tmp_path / "other.h5")

    shape = (6, 6)
    write_cnm_hdf5(
        tmp_path / "cnm.hdf5", _gaussian_footprint(shape, 3, 3)[:, None], np.ones((1, 5)), shape
    )
    with h5py.File(tmp_path / "cnm.hdf5", "a") as file:
        del file["estimates/A/indptr"]
    with pytest.raises(ReaderError, match="estimates/A lacks indptr"):
        read_caiman(tmp_path / "cnm.hdf5")

    write_cnm_hdf5(
        tmp_path / "cnm.hdf5", _gaussian_footprint(shape, 3, 3)[:, None], np.ones((1, 5)), shape
    )
    with h5py.File(tmp_path / "cnm.hdf5", "a") as file:
        del file["estimates/C"]
    with pytest.raises(ReaderError, match="no traces"):
        read_caiman(tmp_path / "cnm.hdf5")

    write_cnm_hdf5(
        tmp_path / "cnm.hdf5", _gaussian_footprint(shape, 3, 3)[:, None], np.ones((1, 5)), shape
    )
    with h5py.File(tmp_path / "cnm.hdf5", "a") as file:
        del file["params/data/fr"]
    with pytest.raises(ReaderError, match="no frame rate"):
        read_caiman(tmp_path / "cnm.hdf5")
    assert read_caiman(tmp_path / "cnm.hdf5", frame_rate=7.5).frame_rate == 7.5
    with h5py.File(tmp_path / "cnm.hdf5", "a") as file:
        file["params/data/fr"] = np.array([15.0])  # one value in an array is read
    assert read_caiman(tmp_path / "cnm.hdf5").frame_rate == 15.0

    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(ReaderError, match="not a readable HDF5"):
        read_caiman(tmp_path / "text.hdf5")
