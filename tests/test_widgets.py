"""The NEuRT analysis panel under Xvfb: the whole pipeline through its buttons, in workers, with a
tiny random checkpoint picked as "checkpoint file"; the scores layer; cancel; bad input."""

import time

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")

from napari_neurt import simulate  # noqa: E402
from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint  # noqa: E402
from napari_neurt.plugin import models  # noqa: E402
from napari_neurt.plugin.samples import layer_data  # noqa: E402
from napari_neurt.plugin.scores import ANALYSIS_KEY, RECORDING_KEY, SCORES_KEY  # noqa: E402
from napari_neurt.plugin.widgets import AnalysisWidget, TracePlotWidget  # noqa: E402

TINY = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2, mil_hidden=8)
TIMEOUT_MS = 60_000
LEFT = pytest.importorskip("qtpy.QtCore").Qt.MouseButton.LeftButton


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-neurt"
    save_checkpoint(folder, Neurt(TINY), class_names=("quiet", "busy"),
                    provenance={"source": "random test weights"})
    return folder


@pytest.fixture(scope="module")
def sample():
    return simulate.two_photon(shape=(64, 64), n_cells=15, n_frames=300, seed=0)


@pytest.fixture
def panel(make_napari_viewer, sample, checkpoint):
    viewer = make_napari_viewer()
    for data, kwargs, kind in layer_data(sample, "two-photon"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NEuRT analysis")
    widget.set_model(str(checkpoint))
    widget.device_box.setCurrentText("cpu")
    yield viewer, widget
    if widget.job is not None:
        widget.cancel()
    models.clear_cache()


def wait_idle(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: widget.job is None, timeout=timeout)


def layer_state(viewer):
    return [(layer.name, type(layer).__name__, dict(layer.metadata).keys()) for layer in viewer.layers]


def test_inputs_are_prefilled_from_the_sample(panel, sample):
    viewer, widget = panel
    assert widget.movie_box.currentText() == "two-photon movie (simulated)"
    assert widget.rois_box.currentText() == "two-photon ROIs (simulated)"
    assert widget.frame_rate.value() == pytest.approx(sample.frame_rate)
    assert widget.pixel_size.value() == pytest.approx(sample.pixel_size_um, rel=1e-3)


def test_full_pipeline_through_the_buttons(panel, qtbot, sample):
    viewer, widget = panel
    qtbot.mouseClick(widget.extract_button, LEFT)
    assert widget.job is not None  # runs in a worker: the click returns at once
    wait_idle(qtbot, widget)
    roi = viewer.layers["two-photon ROIs (simulated)"]
    recording = roi.metadata[RECORDING_KEY]
    assert recording.n_neurons == sample.n_cells and recording.n_frames == sample.n_frames
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    assert scores.metadata[SCORES_KEY]["column"] == "event_rate_per_min"
    assert any(isinstance(w, TracePlotWidget) for w in viewer.window.dock_widgets.values())

    widget.set_hide("kfold")
    widget.folds.setValue(3)
    qtbot.mouseClick(widget.reconstruct_button, LEFT)
    wait_idle(qtbot, widget)
    assert widget.device_label.text() == "running on: cpu"
    analysis = scores.metadata[ANALYSIS_KEY]
    assert analysis.reconstruction is not None
    assert scores.metadata[SCORES_KEY]["column"] == "predictability_r2"
    assert "predictability_r2" in scores.features.columns

    qtbot.mouseClick(widget.classify_button, LEFT)
    wait_idle(qtbot, widget)
    analysis = scores.metadata[ANALYSIS_KEY]
    assert analysis.classification is not None and analysis.reconstruction is not None
    column = scores.metadata[SCORES_KEY]["column"]
    assert column == "attention_log10_ratio"  # the tiny model has a recording head
    assert widget.colour_box.currentData() == column
    assert roi.metadata[ANALYSIS_KEY] is analysis

    # colours follow the scores' order: position along the colormap rises with the value
    check_colours_follow(scores, "class_probability", widget)


def check_colours_follow(scores, column, widget):
    import matplotlib

    widget.colour_by(column, "viridis")
    table = scores.features[scores.features["index"] != 0]
    values = table[column].to_numpy()
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 1024))
    colours = np.array([scores.colormap.color_dict[int(i)] for i in table["index"]])
    position = np.array([np.argmin(((lut - c) ** 2).sum(axis=1)) for c in colours])
    order = np.argsort(values)
    assert (np.diff(position[order]) >= 0).all()
    low, high = scores.metadata[SCORES_KEY]["limits"]
    assert low == pytest.approx(values.min()) and high == pytest.approx(values.max())
    assert widget.legend.info["column"] == column


def reconstruct_marked(viewer, widget, qtbot, frames="100-129"):
    """Extract, then reconstruct with `frames` marked; the reconstruction in the scores layer."""
    widget.extract()
    wait_idle(qtbot, widget)
    widget.set_hide("marked")
    widget.frames_edit.setText(frames)
    widget.reconstruct()
    wait_idle(qtbot, widget)
    return viewer.layers["two-photon ROIs (simulated) scores"].metadata[ANALYSIS_KEY].reconstruction


def test_marked_and_bad_frames(panel, qtbot):
    viewer, widget = panel
    reconstruction = reconstruct_marked(viewer, widget, qtbot)
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    assert reconstruction.mode == "marked" and reconstruction.hidden_runs == [(100, 129)]

    movie = viewer.layers["two-photon movie (simulated)"]
    movie.data = movie.data.copy()
    movie.data[40] = np.roll(movie.data[40], 20, axis=1)  # a frame out of place
    widget.set_hide("bad")
    widget.reconstruct()
    wait_idle(qtbot, widget)
    reconstruction = scores.metadata[ANALYSIS_KEY].reconstruction
    assert reconstruction.mode == "bad" and 40 in np.flatnonzero(reconstruction.hidden)


def test_adapt_first_adapts_the_model_before_reconstructing(panel, qtbot):
    viewer, widget = panel
    plain = reconstruct_marked(viewer, widget, qtbot)
    assert plain.parameters["adapt_steps"] == 0
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    widget.adapt_steps.setValue(5)
    widget.reconstruct()
    wait_idle(qtbot, widget)
    adapted = scores.metadata[ANALYSIS_KEY].reconstruction
    assert adapted.parameters["adapt_steps"] == 5
    assert not np.allclose(adapted.reconstruction[:, 100:130], plain.reconstruction[:, 100:130])


def test_calibrate_box_calibrates_residual_models(panel, qtbot, tmp_path):
    viewer, widget = panel
    torch.manual_seed(0)
    residual = tmp_path / "residual-neurt"
    config = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, interpolate=True)
    save_checkpoint(residual, Neurt(config), provenance={"source": "random test weights"})
    widget.set_model(str(residual))
    assert widget.calibrate_box.isChecked()  # on by default
    fitted = reconstruct_marked(viewer, widget, qtbot)
    [calibration] = fitted.parameters["calibrations"]
    assert set(calibration) == {"cubic", "kriging", "correction"}
    assert all(0.0 <= share <= 1.0 for share in calibration.values())
    for share, value in calibration.items():
        assert f"{share} {value:.2f}" in widget.status.text()
    widget.calibrate_box.setChecked(False)
    plain = reconstruct_marked(viewer, widget, qtbot)
    assert plain.parameters["calibrations"] is None
    assert "calibrated" not in widget.status.text()


def long_reconstruction(qtbot, viewer, widget):
    """Extract, then start a reconstruction of many small steps and wait for its third step:
    (the job, the layers before it, the scores layer)."""
    widget.extract()
    wait_idle(qtbot, widget)
    before = layer_state(viewer)
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    widget.batch_size = 1  # many small steps
    widget.folds.setValue(50)
    job = widget.reconstruct()
    qtbot.waitUntil(lambda: job.last_progress is not None and job.last_progress.done > 2,
                    timeout=TIMEOUT_MS)
    return job, before, scores


def test_cancel_stops_within_a_second_and_adds_nothing(panel, qtbot):
    viewer, widget = panel
    job, before, scores = long_reconstruction(qtbot, viewer, widget)
    features_before = scores.features.copy()
    started = time.perf_counter()
    qtbot.mouseClick(widget.cancel_button, LEFT)
    wait_idle(qtbot, widget, timeout=5000)
    assert time.perf_counter() - started < 1.0
    assert job.cancelled and job.result is None
    assert layer_state(viewer) == before
    assert scores.metadata[ANALYSIS_KEY].reconstruction is None
    assert scores.features.equals(features_before)
    assert "cancelled" in widget.status.text()


def test_the_activity_docks_cancel_button_cancels(panel, qtbot):
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    viewer, widget = panel
    job, before, scores = long_reconstruction(qtbot, viewer, widget)
    bar = next(b for b in viewer.window._qt_window.findChildren(QtLabeledProgressBar)
               if b.progress is job._bar)
    qtbot.mouseClick(bar.cancel_button, LEFT)  # napari's own Cancel, next to its progress bar
    wait_idle(qtbot, widget, timeout=5000)
    assert job.cancelled and job.result is None
    assert layer_state(viewer) == before
    assert scores.metadata[ANALYSIS_KEY].reconstruction is None
    assert "cancelled" in widget.status.text() and widget.reconstruct_button.isEnabled()


def test_bad_input_notifies_and_changes_no_layer(panel, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, widget = panel
    before = layer_state(viewer)
    # no traces yet: reconstruct is refused at once
    seen = len(notification_manager.records)
    widget.reconstruct()
    assert widget.job is None
    assert "no traces yet" in notification_manager.records[-1].message
    # ROIs that do not fit the movie: refused before any worker starts
    viewer.add_labels(np.ones((10, 10), np.int32), name="wrong ROIs")
    widget.rois_box.setCurrentText("wrong ROIs")
    widget.movie_box.setCurrentText("two-photon movie (simulated)")
    widget.extract()
    assert "differs from the movie's frame shape" in notification_manager.records[-1].message
    # a checkpoint that is not one: the worker fails, the notification says why
    widget.rois_box.setCurrentText("two-photon ROIs (simulated)")
    widget.extract()
    wait_idle(qtbot, widget)
    after_extract = layer_state(viewer)
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    features = scores.features.copy()
    widget.set_model(str(viewer.layers[0].name))  # not a path at all
    widget.reconstruct()
    assert "does not exist" in notification_manager.records[-1].message
    bogus = Path_with_garbage()
    widget.set_model(str(bogus))
    widget.reconstruct()
    wait_idle(qtbot, widget)
    assert "reconstruct failed" in notification_manager.records[-1].message
    assert layer_state(viewer) == after_extract
    assert scores.features.equals(features)
    assert len(notification_manager.records) > seen
    assert [l.name for l in viewer.layers][: len(before)] == [n for n, *_ in before]


def Path_with_garbage():
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp()) / "broken-checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(b"nope")
    return folder


def test_selecting_a_label_updates_the_plot_quickly(panel, qtbot):
    viewer, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    widget.folds.setValue(2)
    widget.reconstruct()
    wait_idle(qtbot, widget)
    widget.classify()
    wait_idle(qtbot, widget)
    plot = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, TracePlotWidget))
    scores = viewer.layers["two-photon ROIs (simulated) scores"]
    analysis = scores.metadata[ANALYSIS_KEY]
    recording = analysis.recording
    assert plot.labels_layer is scores
    scores.selected_label = 7
    row = 6
    np.testing.assert_allclose(plot.trace_line.get_ydata(), recording.traces[row])
    np.testing.assert_allclose(
        plot.recon_line.get_ydata(), analysis.reconstruction.reconstruction[row]
    )
    strip = np.asarray(plot.strip_image.get_array())[0]
    np.testing.assert_allclose(strip, analysis.classification.result.temporal_attention[row])
    assert plot.hidden_spans is None  # k-fold: every frame hidden once, nothing to shade


def test_a_recording_from_a_reader_needs_no_extraction(make_napari_viewer, qtbot, sample,
                                                        checkpoint):
    """A labels layer as the suite2p / CaImAn / NWB readers make it: traces already there, the
    reader's own columns (iscell) kept in the scores and offered for colouring."""
    from napari_neurt.plugin.readers import recording_layers

    recording = sample.recording()
    recording.metadata["iscell"] = np.linspace(0, 1, recording.n_neurons)
    recording.source = "suite2p/plane0"
    viewer = make_napari_viewer()
    for data, kwargs, kind in recording_layers(recording, "suite2p plane0"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnalysisWidget(viewer)
    widget.set_model(str(checkpoint))
    assert widget.rois_box.currentText() == "suite2p plane0 ROIs"
    assert widget.movie_box.currentText() == "(none)"
    assert widget.frame_rate.value() == pytest.approx(recording.frame_rate)
    widget.folds.setValue(2)
    widget.reconstruct()
    wait_idle(qtbot, widget)
    scores = viewer.layers["suite2p plane0 ROIs scores"]
    np.testing.assert_allclose(scores.features["iscell"].to_numpy()[1:], np.linspace(0, 1, 15))
    assert "iscell" in [widget.colour_box.itemData(i) for i in range(widget.colour_box.count())]
    widget.colour_by("iscell")
    assert scores.metadata[SCORES_KEY]["column"] == "iscell"
    # without a movie, bad frames come from the traces
    widget.set_hide("bad")
    widget.reconstruct()
    wait_idle(qtbot, widget)
    assert "no bad frames were found" in widget.status.text()


def test_cancel_reaches_inside_token_building(qtbot, monkeypatch):
    """A job step that builds tokens (a plain call, no yields of its own) still stops after the
    chunk of frames it is in when the job is cancelled, and nothing is returned."""
    from napari_neurt.model import tokens as tokens_module
    from napari_neurt.plugin.workers import Job
    from napari_neurt.progress import Progress

    chunks = []
    plain = tokens_module._mean_and_sample_std

    def slow_chunk(*args):  # a slow chunk of frames, counted (called twice per chunk)
        chunks.append(1)
        time.sleep(0.005)
        return plain(*args)

    monkeypatch.setattr(tokens_module, "_mean_and_sample_std", slow_chunk)
    rng = np.random.default_rng(0)
    traces = rng.standard_normal((20, 64 * 400)).astype(np.float32)
    centroids = rng.random((20, 2)) * 100
    total = 2 * 400
    done = []

    def steps():
        yield Progress(0, 1, "tokens")
        built = tokens_module.neighborhood_tokens(traces, centroids, 30.0, chunk_frames=64)
        yield Progress(1, 1, "tokens")
        return built

    job = Job(steps, description="tokens", on_done=done.append, notify_errors=False).start()
    qtbot.waitUntil(lambda: len(chunks) >= 4, timeout=TIMEOUT_MS)
    job.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=TIMEOUT_MS)
    assert job.cancelled and job.error is None
    assert job.result is None and done == []
    assert len(chunks) < total // 2  # stopped inside the token building, not after it


def test_stop_scope_cancels_plain_step_runs():
    from napari_neurt.progress import Cancelled, Progress, run_steps, stop_when

    def steps():
        for i in range(10):
            yield Progress(i + 1, 10, "counting")
        return "finished"

    assert run_steps(steps()) == "finished"
    seen = []
    with stop_when(lambda: len(seen) >= 3), pytest.raises(Cancelled, match="counting at 3/10"):
        run_steps(steps(), progress=seen.append)
    assert run_steps(steps()) == "finished"  # the scope ended with its block



def test_jobs_that_end_in_either_order_leave_torchs_threads_as_they_were(monkeypatch):
    """torch's thread count is kept per thread, and the workers' threads are reused: two jobs
    that overlap and end first-started-first must leave no thread with the lowered count, nor
    let a later job take that count as the one to go back to."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_neurt.plugin import workers

    monkeypatch.setattr(workers.os, "cpu_count", lambda: 2)  # jobs lower torch to 1 thread
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    pools = [ThreadPoolExecutor(1) for _ in range(3)]  # each runs everything on one thread
    first, second, fresh = (lambda f, pool=pool: pool.submit(f).result() for pool in pools)
    try:
        one, other = workers.spare_a_core(), workers.spare_a_core()
        first(one.__enter__)
        second(other.__enter__)
        assert first(torch.get_num_threads) == second(torch.get_num_threads) == 1
        first(lambda: one.__exit__(None, None, None))
        second(lambda: other.__exit__(None, None, None))
        later = workers.spare_a_core()  # on the thread of the job that ended first
        first(later.__enter__)
        assert first(torch.get_num_threads) == 1
        first(lambda: later.__exit__(None, None, None))
        assert first(torch.get_num_threads) == second(torch.get_num_threads) == 2
        assert fresh(torch.get_num_threads) == 2
    finally:
        for pool in pools:
            pool.shutdown()
        torch.set_num_threads(threads)


def test_a_failing_progress_callback_closes_the_step_generator_at_once():
    # A training run saves when its generator is closed; a failing progress callback must not
    # leave that to the garbage collector (pytest.raises keeps the traceback, and so the frame).
    from napari_neurt.progress import Progress, run_steps

    closed = []

    def steps():
        try:
            for i in range(10):
                yield Progress(i + 1, 10, "training")
        finally:
            closed.append(True)

    def progress(item):
        raise OSError("the log file's disk is full")

    with pytest.raises(OSError, match="disk is full") as failure:
        run_steps(steps(), progress=progress)
    assert closed == [True]
    assert failure.value.__traceback__ is not None  # still held here

def drag(canvas, axes, start_s, stop_s):
    """Press, move and release the left button across `axes` from one time to another."""
    from matplotlib.backend_bases import MouseEvent

    y = np.mean(axes.get_ylim())
    (x0, y0), (x1, _) = axes.transData.transform([(start_s, y), (stop_s, y)])
    MouseEvent("button_press_event", canvas, x0, y0, button=1)._process()
    MouseEvent("motion_notify_event", canvas, (x0 + x1) / 2, y0, button=1)._process()
    MouseEvent("motion_notify_event", canvas, x1, y0, button=1)._process()
    MouseEvent("button_release_event", canvas, x1, y0, button=1)._process()


def test_frames_marked_by_dragging_in_the_plot_follow_the_text_field(panel, qtbot):
    from napari_neurt.analysis import parse_frames

    viewer, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    plot = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, TracePlotWidget))
    recording = plot.recording
    rate = recording.frame_rate
    # the plot redraws a moment after results arrive; the drags need the trace's time axis
    qtbot.waitUntil(lambda: plot.axes.get_xlim()[1] >= 220 / rate, timeout=5000)
    plot.canvas.draw()
    assert widget.hide_box.currentData() == "kfold"

    # without "mark frames", a drag marks nothing (a click moves the time slider instead)
    drag(plot.canvas, plot.axes, 30 / rate, 60 / rate)
    assert widget.frames_edit.text() == ""

    plot.mark_button.setChecked(True)
    drag(plot.canvas, plot.axes, 30 / rate, 60 / rate)
    marked = parse_frames(widget.frames_edit.text(), recording.n_frames)
    first, last = np.flatnonzero(marked)[[0, -1]]
    assert abs(first - 30) <= 1 and abs(last - 60) <= 1
    assert widget.hide_box.currentData() == "marked"  # what Reconstruct will now hide
    # an overlapping drag extends the same span; another one adds a span
    drag(plot.canvas, plot.axes, 50 / rate, 80 / rate)
    drag(plot.canvas, plot.axes, 200 / rate, 210 / rate)
    runs = widget.frames_edit.text().split(", ")
    assert len(runs) == 2 and abs(int(runs[0].split("-")[1]) - 80) <= 1
    qtbot.waitUntil(lambda: plot.marked_spans is not None and
                    len(plot.marked_spans.get_paths()) == 2, timeout=5000)

    # and typing in the text field shades those frames in the plot
    widget.frames_edit.setText("10-12, 100, 150-160")
    assert plot.marks.text == "10-12, 100, 150-160"
    qtbot.waitUntil(lambda: plot.marked_spans is not None and
                    len(plot.marked_spans.get_paths()) == 3, timeout=5000)
    widget.frames_edit.setText("")
    qtbot.waitUntil(lambda: plot.marked_spans is None, timeout=5000)
    # spans wholly outside the recording mark nothing; one across an end is clipped to it
    n_frames = plot.recording.n_frames
    plot.mark_frames(-10, -5)
    plot.mark_frames(n_frames + 10, n_frames + 20)
    assert plot.marks.text == ""
    plot.mark_frames(n_frames - 3, n_frames + 20)
    assert plot.marks.text == f"{n_frames - 3}-{n_frames - 1}"
    widget.frames_edit.setText("")
    plot.mark_button.setChecked(False)
    assert plot.span_selector is None


def _movie_and_roi_set(tmp_path):
    """A 40-frame 48 x 56 TIFF movie and an ImageJ RoiSet.zip whose ROIs reach 30 x 41 pixels."""
    import roifile
    import tifffile

    rng = np.random.default_rng(0)
    movie = (100 + 10 * rng.standard_normal((40, 48, 56))).astype(np.float32)
    rois = [
        roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=3, top=4, right=10, bottom=12),
        roifile.ImagejRoi.frompoints([[20, 5], [30, 6], [26, 16]]),  # polygon
        roifile.ImagejRoi(roitype=roifile.ROI_TYPE.OVAL, left=33, top=20, right=41, bottom=30),
    ]
    for k, roi in enumerate(rois):
        roi.name = f"cell {k + 1}"
    movie[:, 4:12, 3:10] += 40 * (np.arange(40) % 10 == 0)[:, None, None]
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    return tmp_path / "movie.tif", tmp_path / "RoiSet.zip"


def test_imagej_rois_opened_alone_are_placed_on_the_movie_frame(make_napari_viewer, qtbot,
                                                                 tmp_path):
    """File > Open draws a ROI set on the smallest image that holds it; the panel pairs it with a
    movie whose frame holds every ROI and extracts on the movie's frame, leaving the layer as is."""
    from napari_neurt.io.labels import read_imagej_rois

    movie_path, roi_path = _movie_and_roi_set(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(movie_path), plugin="napari-neurt")
    viewer.open(str(roi_path), plugin="napari-neurt")
    roi = viewer.layers["RoiSet"]
    assert roi.data.shape == (30, 41)  # smaller than the movie's 48 x 56 frame
    drawn = np.array(roi.data, copy=True)
    widget = AnalysisWidget(viewer)
    assert widget.rois_box.currentText() == "RoiSet"
    assert widget.movie_box.currentText() == "movie"
    job = widget.extract()
    assert job is not None, widget.status.text()
    wait_idle(qtbot, widget)
    recording = roi.metadata[RECORDING_KEY]
    expected = read_imagej_rois(roi_path, shape=(48, 56))
    np.testing.assert_array_equal(recording.labels, expected)
    np.testing.assert_array_equal(recording.neuron_ids, [1, 2, 3])
    assert recording.traces.shape == (3, 40)
    np.testing.assert_array_equal(viewer.layers["RoiSet scores"].data, expected)
    np.testing.assert_array_equal(roi.data, drawn)  # the user's layer is left as it was
    assert "placed on the movie's 48 × 56 frame" in widget.status.text()


def test_imagej_rois_outside_the_movie_frame_are_refused_clearly(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    movie_path, roi_path = _movie_and_roi_set(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(roi_path), plugin="napari-neurt")
    viewer.add_image(np.zeros((20, 32, 28), np.float32), name="small movie")
    widget = AnalysisWidget(viewer)
    assert widget.movie_box.currentText() == "(none)"  # not paired: the ROIs do not fit
    widget.movie_box.setCurrentText("small movie")
    before = layer_state(viewer)
    assert widget.extract() is None
    message = notification_manager.records[-1].message
    assert "ROIs labelled 2, 3 in 'RoiSet'" in message
    assert "outside the movie's 32 × 28 frame" in message
    assert layer_state(viewer) == before
    assert RECORDING_KEY not in viewer.layers["RoiSet"].metadata


# -- what a lab user does meanwhile: type values, rename layers, select, paint -----------------------
def test_a_typed_frame_rate_survives_the_layers_an_extract_adds(panel, qtbot):
    viewer, widget = panel
    widget.frame_rate.setValue(15.0)  # the metadata said otherwise
    widget.pixel_size.setValue(1.1)
    widget.extract()
    wait_idle(qtbot, widget)
    assert (widget.frame_rate.value(), widget.pixel_size.value()) == (15.0, 1.1)
    widget.frame_rate.setValue(20.0)  # typed after the Extract, then any layer comes and goes
    viewer.add_points(name="notes")
    viewer.layers.move(len(viewer.layers) - 1, 0)
    assert widget.frame_rate.value() == 20.0
    widget.frame_rate.setValue(15.0)
    widget.set_hide("kfold")
    widget.folds.setValue(2)
    widget.reconstruct()
    wait_idle(qtbot, widget)
    recording = viewer.layers["two-photon ROIs (simulated)"].metadata[RECORDING_KEY]
    assert (recording.frame_rate, recording.pixel_size_um) == (15.0, 1.1)


def test_values_the_boxes_round_do_not_count_as_changes(make_napari_viewer, sample, qtbot):
    from dataclasses import replace

    from napari_neurt import analysis
    from napari_neurt.plugin.viewer import add_recording

    viewer = make_napari_viewer()
    recording = replace(sample.recording(), frame_rate=29.7597, pixel_size_um=0.78125)
    prior = analysis.Analysis(recording)
    add_recording(viewer, analysis=prior, name="rounded")
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, AnalysisWidget))
    _, kept = widget._recording()
    assert kept is recording  # earlier results still apply


def test_the_scores_layer_follows_its_rois_through_a_rename(panel, qtbot):
    viewer, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    viewer.layers["two-photon ROIs (simulated)"].name = "cells"
    qtbot.wait(50)
    assert widget.scores_layer() is not None
    widget.set_hide("kfold")
    widget.folds.setValue(2)
    job = widget.reconstruct()
    viewer.layers["cells"].name = "my cells"  # renamed again while the job runs
    wait_idle(qtbot, widget)
    assert job.error is None and "reconstructed" in widget.status.text()
    scores = [layer for layer in viewer.layers
              if layer.metadata.get(SCORES_KEY) and hasattr(layer, "selected_label")]
    assert len(scores) == 1 and ANALYSIS_KEY in scores[0].metadata
    assert scores[0].metadata[ANALYSIS_KEY].reconstruction is not None


def test_a_duplicated_roi_layer_gets_scores_of_its_own(panel, qtbot):
    viewer, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    original = viewer.layers["two-photon ROIs (simulated)"]
    first = widget.scores_layer()
    n_first = first.metadata[RECORDING_KEY].n_neurons
    copy = viewer.add_labels(np.where(original.data <= 5, original.data, 0),
                             name="five cells", metadata=dict(original.metadata))
    widget.rois_box.setCurrentText(copy.name)
    widget.extract()
    wait_idle(qtbot, widget)
    assert widget.scores_layer() is not first
    assert widget.scores_layer().metadata[RECORDING_KEY].n_neurons == 5
    assert first.metadata[RECORDING_KEY].n_neurons == n_first  # the original's, untouched



def test_rois_painted_into_a_movie_shaped_labels_layer_are_extracted(panel, qtbot):
    # napari's "New labels layer" button over a movie makes a (T, H, W) layer
    from napari.utils.notifications import notification_manager

    viewer, widget = panel
    movie = viewer.layers["two-photon movie (simulated)"]
    drawn = np.zeros(movie.data.shape, np.int32)
    drawn[10, 5:10, 5:10] = 1  # one ROI painted on frame 10, another on frames 20 and 30
    drawn[[20, 30], 30:36, 40:44] = 2
    layer = viewer.add_labels(drawn, name="drawn")
    widget.rois_box.setCurrentText("drawn")
    widget.movie_box.setCurrentText(movie.name)
    widget.extract()
    wait_idle(qtbot, widget)
    recording = widget.scores_layer().metadata[RECORDING_KEY]
    assert recording.n_neurons == 2 and recording.n_frames == movie.data.shape[0]
    np.testing.assert_array_equal(recording.labels, drawn[10] + drawn[20])

    clashing = drawn.copy()
    clashing[40, 6, 6] = 2  # pixel (6, 6) is ROI 1 on frame 10 and ROI 2 on frame 40
    layer.data = clashing
    before = [l.name for l in viewer.layers]
    widget.extract()
    assert widget.job is None and [l.name for l in viewer.layers] == before
    assert "pixel (6, 6) the ROIs 1 and 2" in notification_manager.records[-1].message


def test_the_export_dialog_adds_the_suffix_of_the_chosen_file_type(panel, monkeypatch):
    from napari_neurt.plugin.widgets import analysis as panel_module

    _, widget = panel
    asked = []
    monkeypatch.setattr(widget, "export", asked.append)
    for typed, chosen in (("results", "NWB file (*.nwb)"), ("results", "CSV tables (*.csv)"),
                          ("results.csv", "NWB file (*.nwb)")):
        monkeypatch.setattr(panel_module.QFileDialog, "getSaveFileName",
                            lambda *args, typed=typed, chosen=chosen: (typed, chosen))
        widget.export_dialog()
    assert asked == ["results.nwb", "results.csv", "results.csv"]  # a typed suffix wins


def test_a_chosen_layer_stays_chosen_when_renamed(panel, qtbot):
    viewer, widget = panel
    widget.extract()  # the sample's ROIs get traces: the picker's favourite
    wait_idle(qtbot, widget)
    original = viewer.layers["two-photon ROIs (simulated)"]
    drawn = viewer.add_labels(np.where(original.data <= 5, original.data, 0), name="five cells")
    widget.rois_box.setCurrentText(drawn.name)
    widget.frame_rate.setValue(15.0)
    drawn.name = "five cells, renamed"
    assert widget.roi_layer() is drawn and widget.rois_box.currentText() == drawn.name
    assert widget.frame_rate.value() == 15.0  # not prefilled again from another layer
    movie = widget.movie_layer()
    movie.name = "the movie, renamed"
    assert widget.movie_layer() is movie and widget.movie_box.currentText() == movie.name


def test_a_pipeline_stays_on_its_roi_layer_when_the_picker_changes(panel, qtbot):
    viewer, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    original = viewer.layers["two-photon ROIs (simulated)"]
    copy = viewer.add_labels(np.where(original.data <= 5, original.data, 0), name="five cells")
    widget.rois_box.setCurrentText(copy.name)
    widget.set_hide("kfold")
    assert widget.run_pipeline([("extract", {}), ("reconstruct", {})]) is not None
    widget.rois_box.setCurrentText(original.name)  # while the extraction runs
    qtbot.waitUntil(lambda: widget.job is None and not widget._pipeline, timeout=TIMEOUT_MS)
    assert original.metadata[ANALYSIS_KEY].reconstruction is None  # not the layer it was for
    assert "stopped before reconstruct" in widget.status.text()

def test_show_selected_label_outlasts_a_recolouring(panel, qtbot):
    _, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    scores = widget.scores_layer()
    scores.show_selected_label = True
    scores.selected_label = int(scores.metadata[RECORDING_KEY].neuron_ids[2])
    before = scores.colormap
    widget.colour_by(widget.colour_box.currentData(), "magma")  # a new colormap
    assert scores.colormap is not before
    assert scores.colormap.use_selection and scores.colormap.selection == scores.selected_label


def test_painting_a_layer_leaves_the_recording_as_it_was(panel, qtbot):
    _, widget = panel
    widget.extract()
    wait_idle(qtbot, widget)
    scores = widget.scores_layer()
    recording = scores.metadata[RECORDING_KEY]
    before = recording.labels.copy()
    scores.data[:] = 0  # a user's bucket fill, say
    np.testing.assert_array_equal(recording.labels, before)


def test_the_scores_layer_starts_on_a_neuron(make_napari_viewer, checkpoint, qtbot):
    sample = simulate.two_photon(shape=(64, 64), n_cells=6, n_frames=120, seed=1)
    viewer = make_napari_viewer()
    for data, kwargs, kind in layer_data(sample, "shifted"):
        if kind == "labels":
            data = np.where(data > 0, data + 14, 0)  # ids 15, 16, ...: no label 1
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NEuRT analysis")
    heard = []  # what listeners to the new layer's selection (napari's label box) hear

    def listen(event):
        layer = event.value
        layer.events.selected_label.connect(lambda e: heard.append(layer.selected_label))

    viewer.layers.events.inserted.connect(listen)
    widget.extract()
    wait_idle(qtbot, widget)
    scores = widget.scores_layer()
    assert scores.selected_label in scores.metadata[RECORDING_KEY].neuron_ids
    assert heard[-1] == scores.selected_label


def test_the_bad_frame_threshold_describes_the_detector_it_sets(panel):
    """analysis.iter_frame_quality compares each frame with its neighbours (decorrelation,
    darker or brighter than both); there is no reference image in it."""
    _, widget = panel
    tip = widget.threshold.toolTip()
    assert "neighbour" in tip and "darker or brighter" in tip
    assert "reference image" not in tip


def test_errors_are_described_for_users():
    from napari_neurt.plugin.workers import describe_error

    assert describe_error(ValueError("the ROIs must be 2-D")) == "the ROIs must be 2-D"
    assert describe_error(KeyError("iscell")) == "KeyError: 'iscell'"  # not a bare 'iscell'
    assert describe_error(ZeroDivisionError()) == "ZeroDivisionError"  # no message: its type
