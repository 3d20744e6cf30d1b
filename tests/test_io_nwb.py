"""NWB optical physiology: files written here with pynwb, then read back."""

from __future__ import annotations

import datetime
import sys

import numpy as np
import pytest

from napari_neurt.io import ReaderError, read_nwb

pynwb = pytest.importorskip("pynwb")
from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel  # noqa: E402

# hdmf warns while a file is being assembled, before the ROI table is attached to it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The linked table for DynamicTableRegion:UserWarning"
)

SHAPE = (14, 19)


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[1:4, 2:6] = 1
    labels[6:11, 3:5] = 2
    labels[2:7, 12:17] = 3
    labels[11:13, 14:18] = 4
    return labels


def write_nwb(
    path,
    labels,
    traces,
    *,
    masks="image",
    rate=20.0,
    grid_spacing=(1.5e-6, 1.5e-6),
    grid_spacing_unit="meters",
    dff=True,
    with_rois=True,
):
    nwbfile = pynwb.NWBFile(
        session_description="simulated",
        identifier="neurt-test",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )
    device = nwbfile.create_device(name="microscope")
    plane = nwbfile.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel(name="green", description="GCaMP", emission_lambda=510.0),
        description="simulated plane",
        device=device,
        excitation_lambda=920.0,
        imaging_rate=rate or 20.0,
        indicator="GCaMP6s",
        location="V1",
        grid_spacing=list(grid_spacing),
        grid_spacing_unit=grid_spacing_unit,
    )
    ophys = nwbfile.create_processing_module(name="ophys", description="processed")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    table = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="ROIs", imaging_plane=plane
    )
    for value in range(1, labels.max() + 1):
        rows, cols = np.nonzero(labels == value)
        weights = 1.0 + 0.1 * np.arange(len(rows))
        if masks == "image":
            mask = np.zeros(labels.shape)
            mask[rows, cols] = weights
            table.add_roi(image_mask=mask)
        else:  # NWB's pixel_mask is (x, y, weight) with x the first image axis
            table.add_roi(
                pixel_mask=[
                    (int(r), int(c), float(w)) for r, c, w in zip(rows, cols, weights, strict=True)
                ]
            )
    if with_rois:
        region = table.create_roi_table_region(region=list(range(labels.max())), description="all")
        timing = {"rate": rate} if rate else {"timestamps": np.arange(traces.shape[1]) / 8.0}
        fluorescence = Fluorescence()
        fluorescence.create_roi_response_series(
            name="RoiResponseSeries", data=traces.T * 100, rois=region, unit="a.u.", **timing
        )
        ophys.add(fluorescence)
        if dff:
            df_over_f = DfOverF()
            df_over_f.create_roi_response_series(
                name="RoiResponseSeries", data=traces.T, rois=region, unit="n.a.", **timing
            )
            ophys.add(df_over_f)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


@pytest.fixture
def traces() -> np.ndarray:
    return np.random.default_rng(3).random((4, 60)).astype(np.float32)


@pytest.mark.parametrize("masks", ["image", "pixel"])
def test_round_trip(tmp_path, traces, masks):
    labels = _labels()
    write_nwb(tmp_path / "session.nwb", labels, traces, masks=masks)
    recording = read_nwb(tmp_path / "session.nwb")
    np.testing.assert_array_equal(recording.traces, traces)  # DfOverF preferred, (T, N) transposed
    assert recording.metadata["trace_kind"] == "DfOverF"
    assert recording.metadata["series"] == "ophys/DfOverF/RoiResponseSeries"
    np.testing.assert_array_equal(recording.neuron_ids, [1, 2, 3, 4])
    if masks == "pixel":
        assert recording.labels.shape == (13, 18)  # no image size in the file: the ROIs' extent
        np.testing.assert_array_equal(recording.labels, labels[:13, :18])
    else:
        np.testing.assert_array_equal(recording.labels, labels)
    assert recording.frame_rate == 20.0 and recording.metadata["frame_rate_from"] == "rate"
    assert recording.pixel_size_um == pytest.approx(1.5)
    rows, cols = np.nonzero(labels == 3)
    weights = 1.0 + 0.1 * np.arange(len(rows))
    np.testing.assert_allclose(
        recording.centroids[2],
        [np.average(rows, weights=weights), np.average(cols, weights=weights)],
    )


def test_fluorescence_series_timestamps_and_units(tmp_path, traces):
    write_nwb(tmp_path / "s.nwb", _labels(), traces, rate=None, dff=False, grid_spacing=(2.0, 2.0),
              grid_spacing_unit="micrometers")  # fmt: skip
    recording = read_nwb(tmp_path / "s.nwb")
    assert recording.metadata["trace_kind"] == "Fluorescence"
    np.testing.assert_allclose(recording.traces, traces * 100, rtol=1e-6)
    assert recording.frame_rate == pytest.approx(8.0)
    assert recording.metadata["frame_rate_from"] == "timestamps"
    assert recording.pixel_size_um == 2.0
    assert read_nwb(tmp_path / "s.nwb", frame_rate=30.0).frame_rate == 30.0


def test_choosing_a_series_by_name(tmp_path, traces):
    write_nwb(tmp_path / "s.nwb", _labels(), traces)
    recording = read_nwb(tmp_path / "s.nwb", series="Fluorescence")
    np.testing.assert_allclose(recording.traces, traces * 100, rtol=1e-6)
    with pytest.raises(ValueError, match="no response series 'Spikes'; it has: ophys/DfOverF"):
        read_nwb(tmp_path / "s.nwb", series="Spikes")


def test_overlapping_masks_go_to_the_larger_weight(tmp_path):
    nwbfile = pynwb.NWBFile(
        session_description="s",
        identifier="id",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )
    plane = nwbfile.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel(name="c", description="d", emission_lambda=500.0),
        description="d",
        device=nwbfile.create_device(name="m"),
        excitation_lambda=900.0,
        imaging_rate=10.0,
        indicator="g",
        location="V1",
    )
    segmentation = ImageSegmentation()
    ophys = nwbfile.create_processing_module(name="ophys", description="p")
    ophys.add(segmentation)
    table = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="d", imaging_plane=plane
    )
    # ROIs 1 and 2 share (1, 1), where 2 weighs more; 2 and 3 tie at (2, 2): 2 comes first.
    table.add_roi(pixel_mask=[(0, 0, 1.0), (1, 1, 0.5), (0, 1, 1.0)])
    table.add_roi(pixel_mask=[(1, 1, 2.0), (2, 2, 1.0)])
    table.add_roi(pixel_mask=[(2, 2, 1.0), (3, 3, 1.0)])
    region = table.create_roi_table_region(region=[0, 1, 2], description="all")
    fluorescence = Fluorescence()
    fluorescence.create_roi_response_series(
        name="RoiResponseSeries", data=np.zeros((5, 3)), unit="a.u.", rois=region, rate=10.0
    )
    ophys.add(fluorescence)
    with pynwb.NWBHDF5IO(str(tmp_path / "overlap.nwb"), "w") as io:
        io.write(nwbfile)
    recording = read_nwb(tmp_path / "overlap.nwb")
    np.testing.assert_array_equal(
        recording.labels, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 3]]
    )


def test_file_without_roi_traces(tmp_path, traces):
    write_nwb(tmp_path / "s.nwb", _labels(), traces, with_rois=False)
    with pytest.raises(ReaderError, match="no RoiResponseSeries"):
        read_nwb(tmp_path / "s.nwb")
    (tmp_path / "bad.nwb").write_text("not hdf5")
    with pytest.raises(ReaderError, match="not a readable NWB file"):
        read_nwb(tmp_path / "bad.nwb")


def test_missing_pynwb_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "s.nwb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pynwb", None)  # makes `import pynwb` fail
    with pytest.raises(ImportError, match=r"pip install 'napari-neurt\[nwb\]'"):
        read_nwb(tmp_path / "s.nwb")
