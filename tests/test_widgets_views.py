"""Scripted use (add_recording with an Analysis), the trace plot's interactions and speed, the
attention map and the fine-tune panel, under Xvfb."""


from pathlib import Path

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")

from napari_neurt import Recording, analysis, load_model, simulate  # noqa: E402
from napari_neurt.model import ClassificationResult, Neurt, NeurtConfig, NeurtModel, save_checkpoint  # noqa: E402
from napari_neurt.plugin import models  # noqa: E402
from napari_neurt.plugin.scores import SCORES_KEY  # noqa: E402
from napari_neurt.plugin.viewer import add_recording  # noqa: E402
from napari_neurt.plugin.widgets import (  # noqa: E402
    AnalysisWidget,
    AttentionMapWidget,
    FineTuneWidget,
    TracePlotWidget,
)
from napari_neurt.training.finetune import WHOLE_RECORDING_MIN_ANIMALS

TINY = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2, mil_hidden=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-neurt"
    return save_checkpoint(folder, Neurt(TINY), class_names=("quiet", "busy"))


@pytest.fixture(scope="module")
def result(checkpoint):
    sim = simulate.two_photon(shape=(64, 64), n_cells=15, n_frames=300, seed=0)
    recording = sim.recording()
    model = models.get_model(str(checkpoint), "cpu")
    out = analysis.analyse(recording, model, hide="kfold", n_folds=2, span=5)
    out.reconstruction.parameters["model_source"] = str(checkpoint)
    out.classification.parameters["model_source"] = str(checkpoint)
    return sim, out


def dock(viewer, kind):
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, kind))


class Event:
    """What napari passes to mouse callbacks (only what our callbacks read)."""

    def __init__(self, position, modifiers=(), type="mouse_press"):
        self.position, self.modifiers, self.type = position, list(modifiers), type


def test_scripted_use_puts_recording_scores_and_docks_in_the_viewer(make_napari_viewer, result):
    sim, out = result
    viewer = make_napari_viewer()
    roi = add_recording(viewer, movie=sim.movie, analysis=out, name="cells",
                        colour_by="class_probability", cmap="magma")
    scores = viewer.layers["cells scores"]
    assert roi.name == "cells" and scores.metadata[SCORES_KEY]["column"] == "class_probability"
    assert scores.metadata[SCORES_KEY]["cmap"] == "magma"
    plot, panel = dock(viewer, TracePlotWidget), dock(viewer, AnalysisWidget)
    assert plot.labels_layer is scores
    assert panel.rois_box.currentText() == "cells"
    assert panel.legend.info["column"] == "class_probability"
    assert panel.colour_box.currentData() == "class_probability"
    with pytest.raises(ValueError, match="another recording"):
        add_recording(viewer, sim.recording(), analysis=out)


def test_a_second_recording_of_the_same_name_gets_its_own_legend(make_napari_viewer, result):
    # napari names the second ROI layer "cells [1]": the panel must show its scores, not the
    # first layer's legend beside the second layer's colours
    sim, out = result
    viewer = make_napari_viewer()
    add_recording(viewer, analysis=out, name="cells", colour_by="class_probability")
    roi = add_recording(viewer, analysis=analysis.Analysis(sim.recording()), name="cells",
                        cmap="magma")
    scores = viewer.layers.selection.active
    panel = dock(viewer, AnalysisWidget)
    assert roi.name == "cells [1]" and panel.rois_box.currentText() == roi.name
    assert panel.legend.info["cmap"] == "magma"
    assert panel.legend.info["limits"] == scores.metadata[SCORES_KEY]["limits"]


def test_screenshot_shows_the_coloured_labels(make_napari_viewer, result):
    sim, out = result
    viewer = make_napari_viewer(show=True)
    add_recording(viewer, analysis=out, name="cells", show_traces=False, show_panel=False,
                  colour_by="event_rate_per_min", cmap="viridis")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    colours = np.array([c[:3] for k, c in viewer.layers["cells scores"].colormap.color_dict.items()
                        if k not in (None, 0)])
    # most of the scored neurons' colours appear on the canvas (blended with the grey image)
    saturation = shot.max(-1) - shot.min(-1)
    assert (saturation > 60).mean() > 0.03, "the canvas shows no coloured labels"
    hues = shot[saturation > 60] / 255.0
    nearest = ((hues[:, None, :] - colours[None, :, :]) ** 2).sum(-1).min(1)
    assert np.median(nearest) < 0.15


def test_clicks_shift_hover_and_overlay(make_napari_viewer, result):
    sim, out = result
    viewer = make_napari_viewer()
    add_recording(viewer, movie=sim.movie, analysis=out, name="cells", show_panel=False)
    plot = dock(viewer, TracePlotWidget)
    scores = viewer.layers["cells scores"]
    recording = out.recording
    px = recording.pixel_size_um  # world coordinates are in micrometres
    y, x = recording.centroids[4] * px
    plot._pick_on_click(scores, Event((150, y, x)))
    assert scores.selected_label == recording.neuron_ids[4]
    np.testing.assert_allclose(plot.trace_line.get_ydata(), recording.traces[4])
    result = out.classification.result  # the neuron's weight against an even share, and the
    ratio = len(result.neuron_attention) * result.neuron_attention[4]  # window classifier's P
    assert f"attention ×{ratio:.2g}" in plot.info.text()
    assert f"window P(busy) {result.neuron_probability[4]:.2f}" in plot.info.text()
    y2, x2 = recording.centroids[9] * px
    plot._on_mouse_move(viewer, Event((150, y2, x2), modifiers=["Shift"], type="mouse_move"))
    np.testing.assert_allclose(plot.preview_line.get_ydata(), recording.traces[9])
    assert scores.selected_label == recording.neuron_ids[4]  # hovering does not select
    plot._on_mouse_move(viewer, Event((150, y2, x2), type="mouse_move"))
    assert len(plot.preview_line.get_ydata()) == 0
    heard = []  # the others listening to the selection hear of it (napari's label box, say)
    scores.events.selected_label.connect(lambda event: heard.append(scores.selected_label))
    plot.show_neurons(recording.neuron_ids[[1, 2, 3]])
    shown = [line for line in plot.overlay_lines if line.get_visible()]
    assert len(shown) == 2 and scores.selected_label == recording.neuron_ids[3]
    assert heard == [recording.neuron_ids[3]]
    np.testing.assert_allclose(shown[0].get_ydata(), recording.traces[1])
    plot.clear_overlay()
    assert not any(line.get_visible() for line in plot.overlay_lines)


def long_analysis(n_neurons=30, n_frames=10_000):
    rng = np.random.default_rng(0)
    labels = np.zeros((60, 60), np.int32)
    for i in range(n_neurons):
        r, c = divmod(i, 6)
        labels[r * 10 + 2 : r * 10 + 8, c * 10 + 2 : c * 10 + 8] = i + 1
    traces = rng.standard_normal((n_neurons, n_frames)).astype(np.float32)
    recording = Recording.from_labels(traces, labels, 30.0, metadata={"trace_kind": "dF/F"})
    info = analysis.TokenInfo(np.zeros(n_neurons, bool), np.full(n_neurons, 5),
                              np.full(n_neurons, 20), 10.0, None)
    hidden = np.zeros(n_frames, bool)
    hidden[::100] = True
    reconstruction = analysis.Reconstruction(
        "marked", traces + 0.1, hidden, None, np.full(n_neurons, 0.5), traces.copy(), info, {}, {}
    )
    classification = analysis.Classification(
        ClassificationResult(("a", "b"), rng.random(n_neurons), rng.random((n_neurons, 2)),
                             rng.random((n_neurons, n_frames)).astype(np.float32),
                             np.full(n_neurons, 1 / n_neurons), 0.5, False, "test",
                             np.zeros((n_neurons, 4))),
        info, {}, {},
    )
    return analysis.Analysis(recording, reconstruction, classification)


def test_selection_redraws_10000_frame_traces_without_a_full_redraw(make_napari_viewer, qtbot):
    """A selection updates only what changes (no full canvas redraw) and shows the right data.
    How long it takes is measured in benchmarks/gui.py, not asserted here: timings on a shared
    CPU make flaky tests."""
    viewer = make_napari_viewer(show=True)
    out = long_analysis()
    add_recording(viewer, analysis=out, name="long", show_panel=False)
    plot = dock(viewer, TracePlotWidget)
    scores = viewer.layers["long scores"]
    # Let the window settle first: the plot's delayed redraw after the new layers, and the
    # dock's layout (a resize rightly asks for a full redraw), can land late on a busy machine.
    qtbot.waitUntil(lambda: not plot._redraw_timer.isActive())
    size = None
    while size != plot.canvas.size():
        size = plot.canvas.size()
        qtbot.wait(100)
    plot.canvas.draw()
    for label in [5, 9, 14, 21, 3, 28, 11, 17, 6, 25]:
        with scores.events.selected_label.blocker():
            scores.selected_label = label
        plot._on_selected_label()  # what the selected_label event runs
        plot.canvas.repaint()  # and the paint it schedules, now
        assert not plot.canvas._draw_pending  # no full redraw was needed
        np.testing.assert_array_equal(plot.trace_data[1], out.recording.traces[label - 1])
        # drawn as the band between the extremes of each pixel column (min/max decimation)
        assert len(plot.trace_line.get_ydata()) == 0
        band = plot.bands[plot.trace_line]
        assert band.get_visible()
        edge = band.get_paths()[0].vertices[:, 1]
        trace = out.recording.traces[label - 1]
        assert edge.max() == pytest.approx(trace.max(), abs=0.05)
        assert edge.min() == pytest.approx(trace.min(), abs=0.05)
        assert len(edge) <= 2 * max(500, plot.canvas.width()) + 2
    assert plot.hidden_spans is not None
    # and through napari's event, the data follow at once
    scores.selected_label = 8
    np.testing.assert_array_equal(plot.trace_data[1], out.recording.traces[7])


def test_shading_and_attention_strip_are_centred_on_their_frames(make_napari_viewer):
    """Frame i is the sample drawn at i / rate: what is shaded for it (hidden, marked) and its
    column of the attention strip are centred there, as a click there selects frame i."""
    viewer = make_napari_viewer()
    out = long_analysis(n_neurons=6, n_frames=200)  # frames 0 and 100 hidden
    add_recording(viewer, analysis=out, name="short", show_panel=False)
    plot = dock(viewer, TracePlotWidget)
    rate = out.recording.frame_rate
    plot.mark_frames(10, 20)
    plot.draw()
    spans = [p.vertices[:, 0] for p in plot.hidden_spans.get_paths()]
    ends = [end * rate for x in spans for end in (x.min(), x.max())]
    assert ends == pytest.approx([-0.5, 0.5, 99.5, 100.5])
    (marked,) = [p.vertices[:, 0] for p in plot.marked_spans.get_paths()]
    assert (marked.min() * rate, marked.max() * rate) == pytest.approx((9.5, 20.5))
    inside = 0.01 / rate  # a drag across the shade, just inside it, marks what it shades
    plot._on_span(marked.min() + inside, marked.max() - inside)
    assert plot.marks.text == "10-20"
    left, right = plot.strip_image.get_extent()[:2]
    column = (right - left) / out.recording.n_frames
    assert left + 100.5 * column == pytest.approx(100 / rate)  # the middle of frame 100's column


def attention_dock(make_napari_viewer, result):
    """A viewer with the result's recording and movie, and the attention map docked."""
    sim, out = result
    viewer = make_napari_viewer()
    add_recording(viewer, movie=sim.movie, analysis=out, name="cells", show_panel=False)
    widget = AttentionMapWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NEuRT attention map")
    return viewer, widget, viewer.layers["cells scores"]


def test_attention_map_of_the_selected_neuron(make_napari_viewer, result, qtbot, monkeypatch):
    viewer, widget, scores = attention_dock(make_napari_viewer, result)
    asked = []
    get_model = models.get_model
    monkeypatch.setattr(models, "get_model",
                        lambda source, device: asked.append(device) or get_model(source, device))
    viewer.dims.set_current_step(0, 200)
    scores.selected_label = 3
    widget.update_maps()
    qtbot.waitUntil(lambda: widget.window is not None and widget.job is None, timeout=30_000)
    assert asked == ["cpu"]  # where the analysis ran, not "auto" (another GPU, a second copy)
    assert widget.window == (3, 168, 64)  # centred on frame 200, clipped to the recording
    assert widget.maps.shape == (1, 2, 64, 64)
    np.testing.assert_allclose(widget.maps.sum(-1), 1.0, rtol=1e-4)  # softmax rows
    widget.head_spin.setValue(2)
    np.testing.assert_allclose(widget.image.get_array(), widget.maps[0, 1])
    widget.timer.stop()  # no map left to compute when the viewer closes
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)


def test_attention_map_clears_when_the_selection_leaves_during_a_job(
    make_napari_viewer, result, qtbot
):
    _, widget, scores = attention_dock(make_napari_viewer, result)
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
    widget._tokens.clear()  # the next map takes a moment
    scores.selected_label = 3
    widget.timer.stop()
    widget.update_maps()
    assert widget.job is not None
    scores.selected_label = 0  # the background: no neuron while the map is computed
    widget.timer.stop()
    widget.update_maps()
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
    qtbot.wait(400)  # the queued update, if any
    widget.timer.stop()
    assert widget.window is None and not widget.image.get_visible()
    assert "not a neuron" in widget.axes.get_title()


def test_a_closed_attention_dock_computes_no_maps(make_napari_viewer, result, qtbot):
    viewer, widget, scores = attention_dock(make_napari_viewer, result)
    qtbot.waitUntil(lambda: widget.job is None and not widget.timer.isActive(), timeout=30_000)
    shown = widget.window
    viewer.window.remove_dock_widget(widget)  # the user closes the dock
    jobs = []
    real_update = widget.update_maps
    widget.timer.timeout.disconnect()
    widget.timer.timeout.connect(lambda: (real_update(), jobs.append(widget.job)))
    scores.selected_label = 5
    viewer.dims.set_current_step(0, 100)
    qtbot.wait(400)  # past the debounce
    assert widget.job is None and not any(jobs) and widget.window == shown
    viewer.window.add_dock_widget(widget, name="again")  # docked again: it follows again
    qtbot.waitUntil(lambda: (widget.window or (0,))[0] == 5 and widget.job is None,
                    timeout=30_000)
    widget.timer.stop()


def test_attention_map_of_neuron_3_in_another_layer_is_its_own(
    make_napari_viewer, result, checkpoint, qtbot
):
    _, out = result
    other_sim = simulate.two_photon(shape=(64, 64), n_cells=15, n_frames=300, seed=5)
    other = analysis.analyse(other_sim.recording(), models.get_model(str(checkpoint), "cpu"),
                             hide="kfold", n_folds=2, span=5)
    other.classification.parameters["model_source"] = str(checkpoint)
    viewer = make_napari_viewer()
    add_recording(viewer, analysis=out, name="a", show_panel=False)
    add_recording(viewer, analysis=other, name="b", show_panel=False)
    widget = AttentionMapWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NEuRT attention map")
    for name in ("a scores", "b scores"):
        viewer.layers.selection.active = viewer.layers[name]
        viewer.layers[name].selected_label = 3
        widget.timer.stop()
        widget.update_maps()
        qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
        qtbot.wait(400)  # a queued update, if any
        qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
    widget.timer.stop()
    assert widget.labels_layer is viewer.layers["b scores"]
    expected = models.get_model(str(checkpoint), "cpu")
    tokens = expected.tokens_for(other.recording).tokens
    row = int(np.flatnonzero(other.recording.neuron_ids == 3)[0])
    np.testing.assert_allclose(
        widget.maps, expected.attention_maps(tokens[row], start=widget.window[1]), rtol=1e-5
    )


def toy_recording(kind, seed, n_neurons=10, n_frames=96):
    rng = np.random.default_rng(seed)
    frames = np.arange(n_frames)
    if kind == "calm":
        traces = np.sin(2 * np.pi * frames / 30 + rng.uniform(0, 6.3, (n_neurons, 1)))
    else:
        traces = (rng.random((n_neurons, n_frames)) < 0.04) * 5.0
        traces[:, 0] = 5.0
    return traces + 0.05 * rng.standard_normal((n_neurons, n_frames)), rng.uniform(0, 80, (n_neurons, 2))


def test_finetune_panel_trains_and_offers_the_new_model(make_napari_viewer, tmp_path, qtbot):
    rows = []
    for k, label in enumerate(("calm", "bursty")):
        for a in range(3):
            traces, centroids = toy_recording(label, 100 * k + a)
            path = tmp_path / f"{label}{a}.npz"
            np.savez(path, traces=traces, centroids=centroids, frame_rate=10.0)
            rows.append(f"{path.name},{label}-{a},{label}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,animal,label\n" + "\n".join(rows) + "\n")
    torch.manual_seed(0)
    base = save_checkpoint(tmp_path / "base", Neurt(NeurtConfig(seq_len=32, n_embd=16, n_head=2,
                                                                n_layer=2, n_ff=32)))
    viewer = make_napari_viewer()
    panel = AnalysisWidget(viewer)
    widget = FineTuneWidget(viewer)
    widget.data_edit.setText(str(manifest))
    assert widget.load_data() is not None
    assert "6 recordings" in widget.data_summary.text()
    widget.set_base(str(base))
    widget.out_edit.setText(str(tmp_path / "tuned"))
    shown = widget._config()  # the panel starts from FinetuneConfig's recipe: encoder frozen
    assert (shown.steps, shown.lr, shown.head_lr, shown.bag_size) == (1200, 0.0, 3e-3, 32)
    assert widget.lr_spin.text() == "0 (encoder frozen)"
    widget.steps_spin.setValue(12)
    widget.device_box.setCurrentText("cpu")
    widget.config_overrides = dict(bags_per_step=2, bag_size=4, mil_hidden=8, eval_every=6,
                                   patience=2, validation_bags=2, lr=3e-3, head_lr=1e-2)
    assert widget.statistics_box.isChecked()  # on by default
    assert widget.pooling_box.currentData() == "evidence"
    # the whole-recording fit: by default only with enough animals, as FinetuneConfig
    assert widget._config().whole_recording_fit is None
    assert str(WHOLE_RECORDING_MIN_ANIMALS) in widget.whole_fit_box.currentText()
    widget.whole_fit_box.setCurrentIndex(widget.whole_fit_box.findData(False))
    assert widget._config().whole_recording_fit is False
    widget.pooling_box.setCurrentIndex(widget.pooling_box.findData("gated"))
    assert not widget.whole_fit_box.isEnabled()  # a gated head has no such term
    job = widget.start()
    assert job is not None
    qtbot.waitUntil(lambda: widget.job is None, timeout=120_000)
    assert job.error is None, job.error
    assert widget.plot.losses and len(widget.plot.steps) == len(widget.plot.losses)
    steps, values = widget.plot.validation_line.get_data()  # every 6 steps, and plotted
    assert len(steps) and all(step % 6 == 0 for step in steps) and np.isfinite(values).all()
    assert widget.plot.axes.get_legend() is not None
    tuned = load_model(tmp_path / "tuned", device="cpu")
    assert tuned.config.neuron_stats == 5 and tuned.config.recording_pooling == "gated"
    sources = [panel.model_box.itemData(i) for i in range(panel.model_box.count())]
    assert str(tmp_path / "tuned") in sources
    assert "held-out accuracy" in widget.status.text()
    panel.set_model(str(tmp_path / "tuned"))
    assert panel.model_source() == str(tmp_path / "tuned")


def test_a_panel_of_a_closed_viewer_does_not_fail_a_fine_tune(make_napari_viewer, tmp_path,
                                                              qtbot):
    from types import SimpleNamespace

    from napari_neurt.progress import Progress

    closed = make_napari_viewer()
    old_panel, old_tuner = AnalysisWidget(closed), FineTuneWidget(closed)
    closed.window.add_dock_widget(old_panel, name="NEuRT analysis")
    closed.window.add_dock_widget(old_tuner, name="NEuRT fine-tune")
    closed.close()  # Qt deletes the panels; a notebook still holds them
    qtbot.wait(10)
    viewer = make_napari_viewer()
    panel, widget = AnalysisWidget(viewer), FineTuneWidget(viewer)
    out = tmp_path / "tuned"

    def finetune_steps(items, out_dir, config, *, base, stop):
        yield Progress(1, 1, "train")
        return SimpleNamespace(folder=out_dir, report=None)

    widget.finetune_steps = finetune_steps
    widget.items = []
    widget.out_edit.setText(str(out))
    job = widget.start()
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
    assert job.error is None, job.error
    assert panel.model_box.findData(str(out)) >= 0  # offered by the living panels
    assert widget.base_box.findData(str(out)) >= 0


def test_a_cancel_after_the_model_is_saved_says_it_was_saved(make_napari_viewer, tmp_path,
                                                           qtbot):
    # after the last step a fine-tune classifies the held-out animals and saves, with no step
    # left to stop at: a cancel then cannot undo the saving, and must not say "nothing saved"
    import threading
    from types import SimpleNamespace

    from napari_neurt.progress import Progress

    viewer = make_napari_viewer()
    panel, widget = AnalysisWidget(viewer), FineTuneWidget(viewer)
    out, past_last_step, cancelled = tmp_path / "tuned", threading.Event(), threading.Event()

    def finetune_steps(items, out_dir, config, *, base, stop):
        yield Progress(1, 1, "train")
        past_last_step.set()
        cancelled.wait(10)  # the held-out animals, while the user presses Cancel
        Path(out_dir).mkdir()
        (Path(out_dir) / "model.safetensors").write_bytes(b"saved")
        return SimpleNamespace(folder=out_dir, report=None)

    widget.finetune_steps = finetune_steps
    widget.items = []
    widget.out_edit.setText(str(out))
    job = widget.start()
    qtbot.waitUntil(past_last_step.is_set, timeout=30_000)
    widget.cancel()
    cancelled.set()
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
    assert job.cancelled and job.late and job.error is None
    assert "saved" in widget.status.text() and "nothing was saved" not in widget.status.text()
    assert "Cancel came after it was saved" in widget.status.text()
    assert panel.model_box.findData(str(out)) >= 0  # offered, as after any fine-tune


def test_two_fine_tunes_into_folders_of_one_name_are_told_apart(make_napari_viewer, tmp_path,
                                                                qtbot):
    from types import SimpleNamespace

    from napari_neurt.progress import Progress

    viewer = make_napari_viewer()
    panel, widget = AnalysisWidget(viewer), FineTuneWidget(viewer)

    def finetune_steps(items, out_dir, config, *, base, stop):
        yield Progress(1, 1, "train")
        return SimpleNamespace(folder=out_dir, report=None)

    widget.finetune_steps = finetune_steps
    widget.items = []
    outs = [tmp_path / cohort / "neurt-finetuned" for cohort in ("wt-vs-ad", "pilot")]
    for out in outs:  # the panel's default folder for each cohort
        widget.out_edit.setText(str(out))
        job = widget.start()
        qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)
        assert job.error is None, job.error
    labels = [panel.model_box.itemText(panel.model_box.findData(str(out))) for out in outs]
    assert labels[0] != labels[1] and "pilot/neurt-finetuned" in labels[1]
    assert labels[1] in widget.status.text()


def test_finetune_panel_refuses_bad_input(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer)
    widget.data_edit.setText(str(tmp_path / "absent.csv"))
    assert widget.start() is None
    assert "does not exist" in notification_manager.records[-1].message


def test_unscored_and_low_context_neurons_are_marked(make_napari_viewer):
    out = long_analysis(n_neurons=12, n_frames=200)
    info = out.reconstruction.tokens
    info.fallback[[2, 7]] = True
    out.reconstruction.predictability[[4]] = np.nan
    viewer = make_napari_viewer()
    add_recording(viewer, analysis=out, name="few", colour_by="predictability_r2",
                  show_panel=False)
    scores = viewer.layers["few scores"]
    markers = viewer.layers["few low-context neurons"]
    np.testing.assert_allclose(markers.data, out.recording.centroids[[2, 7]])
    assert scores.features["fallback"].sum() == 2
    np.testing.assert_allclose(scores.colormap.color_dict[5], [0.55, 0.55, 0.55, 1.0])  # NaN
    legend = scores.metadata[SCORES_KEY]
    assert legend["n_missing"] == 1 and legend["n_fallback"] == 2


def test_napari_saves_the_scores_layer_through_our_writer(make_napari_viewer, result, tmp_path):
    sim, out = result
    viewer = make_napari_viewer()
    add_recording(viewer, analysis=out, name="cells", show_panel=False, show_traces=False)
    written = napari.save_layers(str(tmp_path / "cells.csv"), [viewer.layers["cells scores"]],
                                 plugin="napari-neurt")
    names = sorted(p.split("/")[-1] for p in written)
    assert "cells.csv" in names and "cells.provenance.json" in names


def test_a_canvas_deleted_before_or_during_its_draw_skips_it(qtbot):
    from matplotlib.figure import Figure
    from qtpy import sip
    from qtpy.QtWidgets import QVBoxLayout, QWidget

    from napari_neurt.plugin.widgets.base import Canvas

    def canvas_in_a_panel():
        panel = QWidget()
        canvas = Canvas(Figure())
        QVBoxLayout(panel).addWidget(canvas)
        canvas.figure.add_subplot().plot([0, 1])
        return panel, canvas

    # closed before a queued draw fires
    panel, canvas = canvas_in_a_panel()
    sip.delete(panel)
    canvas.draw()
    # deleted in the middle of the draw (as garbage collection of a closed panel can do)
    panel, canvas = canvas_in_a_panel()
    canvas.mpl_connect("draw_event", lambda event: sip.delete(panel))
    canvas.draw()
    assert sip.isdeleted(canvas)
    # a live canvas still reports a failure of its own
    from matplotlib.artist import Artist

    class Broken(Artist):
        def draw(self, renderer):
            raise RuntimeError("broken artist")

    panel, canvas = canvas_in_a_panel()
    canvas.figure.add_artist(Broken())
    with pytest.raises(RuntimeError, match="broken artist"):
        canvas.draw()


def test_a_nan_frame_breaks_the_trace_band_instead_of_bridging_it():
    from napari_neurt.plugin.widgets.traces import band_polygons, envelope

    times = np.arange(12_000) / 20.0
    values = np.sin(times / 30)
    values[6000:6100] = np.nan  # a gap of many columns
    values[3000] = np.nan  # one bad frame among good ones: its run keeps its finite samples
    x, low, high = envelope(times, values, 1000)
    polygons = band_polygons(x, low, high)
    assert len(polygons) == 2  # split at the gap, not closed across it
    assert all(np.isfinite(p).all() for p in polygons)
    assert sum(len(p) for p in polygons) // 2 == np.isfinite(low).sum()


def test_a_closed_trace_dock_stops_following_the_viewer(make_napari_viewer, result, qtbot):
    from napari_neurt.plugin.viewer import TRACE_DOCK_NAME, ensure_trace_dock

    _, out = result
    viewer = make_napari_viewer()
    layer = add_recording(viewer, analysis=out, name="cells", show_panel=False)
    closed = viewer.window.dock_widgets[TRACE_DOCK_NAME]
    viewer.window.remove_dock_widget(closed)  # the user closes the dock
    newer = ensure_trace_dock(viewer)  # the next Extract docks a new one
    assert newer is not closed and not closed.attached and closed.labels_layer is None
    assert closed._on_mouse_move not in viewer.mouse_move_callbacks
    drawn = []
    closed.draw = lambda *args: drawn.append(args)
    layer.selected_label = 4
    viewer.dims.set_current_step(0, 20)
    qtbot.wait(250)  # past the redraw delay
    assert not drawn
    viewer.theme = "light" if viewer.theme == "dark" else "dark"  # changed meanwhile
    viewer.window.add_dock_widget(closed, name="again")  # docked again: it follows again
    assert closed.attached and closed.labels_layer is not None
    assert closed.figure.get_facecolor() == newer.figure.get_facecolor()  # the new theme
