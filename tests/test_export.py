"""napari_neurt.io.export and the npe2 writers: CSV and NWB with provenance, atomically.
No Qt: the writers take napari's layer data and attributes."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_neurt import analysis, simulate
from napari_neurt.io import export
from napari_neurt.model import Neurt, NeurtConfig, NeurtModel

TINY = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2, mil_hidden=8)


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    model = NeurtModel(Neurt(TINY), class_names=("quiet", "busy"), device="cpu",
                       provenance={"source": "random test weights", "weights_sha256": "ab" * 32})
    sim = simulate.two_photon(shape=(48, 48), n_cells=8, n_frames=160, seed=2)
    recording = sim.recording()
    recording.metadata["trace_kind"] = "dF/F"
    return analysis.analyse(recording, model, hide="marked", frames="40-59")


def test_csv_tables_and_provenance(tmp_path, result):
    paths = export.export_analysis(tmp_path / "out.csv", result)
    names = [p.name for p in paths]
    assert names == [
        "out.csv", "out.traces.csv", "out.reconstruction.csv", "out.imputed.csv",
        "out.attention.csv", "out.provenance.json",
    ]
    recording = result.recording
    scores = pd.read_csv(paths[0])
    np.testing.assert_array_equal(scores["neuron_id"], recording.neuron_ids)
    np.testing.assert_allclose(
        scores["predictability_r2"], result.reconstruction.predictability, rtol=1e-6
    )
    assert scores["fallback"].dtype == bool
    traces = pd.read_csv(paths[1])
    assert list(traces.columns[:2]) == ["frame", "time_s"]
    np.testing.assert_allclose(
        traces[[f"neuron_{i}" for i in recording.neuron_ids]].to_numpy().T,
        recording.traces, rtol=1e-6, atol=1e-7,
    )
    reconstruction = pd.read_csv(paths[2])
    assert reconstruction["hidden"].sum() == 20
    np.testing.assert_allclose(
        reconstruction.iloc[:, 3:].to_numpy().T, result.reconstruction.reconstruction,
        rtol=1e-6, atol=1e-7,
    )
    provenance = json.loads(paths[-1].read_text())
    model = provenance["reconstruction"]["model"]
    assert model["provenance"]["weights_sha256"] == "ab" * 32
    assert model["config"]["n_embd"] == 16
    assert provenance["reconstruction"]["parameters"]["hidden_frames"] == "40-59"
    assert provenance["classification"]["parameters"]["recording_rule"]
    assert provenance["recording"]["frame_rate"] == recording.frame_rate


def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(tmp_path, result, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_frames", broken)
    with pytest.raises(OSError, match="disk full"):
        export.write_csv(target, result)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_nwb_round_trip_through_our_reader(tmp_path, result):
    pytest.importorskip("pynwb")
    from pynwb import NWBHDF5IO

    from napari_neurt.io import read_nwb

    path = export.export_analysis(tmp_path / "out.nwb", result)[0]
    back = read_nwb(path)
    recording = result.recording
    np.testing.assert_allclose(back.traces, recording.traces, rtol=1e-6)
    np.testing.assert_array_equal(back.metadata["nwb_roi_id"], recording.neuron_ids)
    assert back.frame_rate == pytest.approx(recording.frame_rate)
    assert back.pixel_size_um == pytest.approx(recording.pixel_size_um)
    assert back.metadata["trace_kind"] == "DfOverF"
    # label values are the table rows + 1, here the same as the ids (1..N)
    np.testing.assert_array_equal(back.labels, recording.labels)
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        provenance = json.loads(nwbfile.notes)
        assert provenance["classification"]["model"]["class_names"] == ["quiet", "busy"]
        table = nwbfile.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        np.testing.assert_allclose(
            table["class_probability"].data[:], result.classification.result.neuron_probability,
            rtol=1e-6,
        )
        neurt = nwbfile.processing["neurt"]
        reconstruction = neurt["NEuRTReconstruction"]["Reconstruction"].data[:]
        np.testing.assert_allclose(reconstruction.T, result.reconstruction.reconstruction)
        assert neurt["HiddenFrames"].data[:].sum() == 20


def test_npe2_writers_take_layer_attributes(tmp_path, result):
    from napari_neurt.plugin import writers
    from napari_neurt.plugin.scores import ANALYSIS_KEY, RECORDING_KEY

    attributes = {"metadata": {RECORDING_KEY: result.recording, ANALYSIS_KEY: result}}
    written = writers.write_csv(str(tmp_path / "w.csv"), result.recording.labels, attributes)
    assert [p.split("/")[-1] for p in written][0] == "w.csv"
    only_traces = {"metadata": {RECORDING_KEY: result.recording}}
    written = writers.write_csv(str(tmp_path / "t.csv"), result.recording.labels, only_traces)
    assert len(written) == 3  # scores, traces, provenance
    with pytest.raises(ValueError, match="carries no NEuRT recording"):
        writers.write_csv(str(tmp_path / "x.csv"), result.recording.labels, {"metadata": {}})


@pytest.mark.parametrize(
    "trace_kind, is_dff",
    [("dF/F", True), ("DfOverF", True), ("F_dff", True), ("dff", True), ("F", False),
     ("C", False), ("Fluorescence", False), ("fluorescence", False), ("", False)],
)
def test_dff_traces_are_told_apart_by_their_kind(trace_kind, is_dff):
    # CaImAn's detrended dF/F ("F_dff") must land in NWB's DfOverF, not in Fluorescence
    assert export._is_dff(trace_kind) is is_dff


def test_nwb_round_trip_keeps_the_image_shape_and_mean_image(tmp_path, result):
    # pixel masks do not say the image's shape: ROIs away from the bottom and right edges came
    # back in a cropped labels image that no longer fitted the movie, without the mean image
    pytest.importorskip("pynwb")
    from dataclasses import replace

    from napari_neurt.io import read_nwb

    labels = np.zeros((100, 120), np.int32)
    labels[10:15, 10:15], labels[30:35, 40:45] = 3, 7
    recording = replace(
        result.recording.select([0, 1]), labels=labels, centroids=[[12, 12], [32, 42]],
        neuron_ids=[3, 7], mean_image=np.arange(12000, dtype=np.float32).reshape(100, 120),
    )
    back = read_nwb(export.export_analysis(tmp_path / "out.nwb", analysis.Analysis(recording))[0])
    assert back.labels.shape == (100, 120)
    np.testing.assert_array_equal(back.labels > 0, labels > 0)
    np.testing.assert_array_equal(back.mean_image, recording.mean_image)
    no_mean = replace(recording, mean_image=None)
    back = read_nwb(export.export_analysis(tmp_path / "plain.nwb", analysis.Analysis(no_mean))[0])
    assert back.labels.shape == (100, 120) and back.mean_image is None


def test_a_second_csv_export_leaves_no_table_of_the_first(tmp_path, result):
    # exporting the traces alone over an export with results left the old reconstruction,
    # imputed traces and attention beside the new tables, as if they were the new run's
    first = export.export_analysis(tmp_path / "out.csv", result)
    assert len(first) == 6
    again = export.export_analysis(tmp_path / "out.csv", analysis.Analysis(result.recording))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in again)


def test_nwb_round_trip_keeps_the_recordings_centroids(tmp_path, result):
    # suite2p's centroids (med) are not the centres of the label pixels: they came back as the
    # centres of the masks, moving neurons between a neighbourhood's near and far groups
    pytest.importorskip("pynwb")
    from dataclasses import replace

    from napari_neurt.io import read_nwb

    recording = replace(result.recording, centroids=result.recording.centroids + [[1.5, -2.0]])
    back = read_nwb(export.export_analysis(tmp_path / "out.nwb", analysis.Analysis(recording))[0])
    np.testing.assert_allclose(back.centroids, recording.centroids)


def test_nwb_export_of_a_neuron_without_pixels(tmp_path, result):
    # a ROI that lost every pixel to overlapping ones (suite2p, ImageJ sets) failed the export
    # with hdmf's "incorrect shape for pixel_mask"
    pytest.importorskip("pynwb")
    from dataclasses import replace

    from napari_neurt.io import read_nwb

    recording = result.recording
    labels = np.where(recording.labels == recording.neuron_ids[0], 0, recording.labels)
    hidden = replace(recording, labels=labels)
    back = read_nwb(export.export_analysis(tmp_path / "out.nwb", analysis.Analysis(hidden))[0])
    assert not (back.labels == back.neuron_ids[0]).any()
    np.testing.assert_allclose(back.centroids, recording.centroids)
    np.testing.assert_allclose(back.traces, recording.traces)
