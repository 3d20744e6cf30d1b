"""Put recordings and NEuRT results into a napari viewer from a script or notebook.

    import napari
    import napari_neurt as nt
    from napari_neurt import analysis
    from napari_neurt.plugin.viewer import add_recording

    result = analysis.analyse(recording, nt.load_model("neurt-microns"),
                              classifier=nt.load_model("neurt-5xfad"))
    viewer = napari.Viewer()
    add_recording(viewer, recording, movie=movie, analysis=result)
    napari.run()

See docs/scripting.md for the whole pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..analysis import Analysis
from ..recording import Recording
from .scores import (
    ANALYSIS_KEY,
    RECORDING_KEY,
    apply_scores,
    scores_layer_data,
)

if TYPE_CHECKING:
    import napari

# The names napari's Plugins menu docks these widgets under ("<display name> (<plugin>)"): the
# menu then shows the dock docked here instead of docking a second panel beside it.
TRACE_DOCK_NAME = "NEuRT traces (napari-neurt)"
ANALYSIS_DOCK_NAME = "NEuRT analysis (napari-neurt)"


def add_recording(
    viewer: napari.viewer.Viewer,
    recording: Recording | None = None,
    *,
    movie=None,
    analysis: Analysis | None = None,
    name: str = "neurons",
    show_traces: bool = True,
    show_scores: bool | None = None,
    colour_by: str | None = None,
    cmap: str = "viridis",
    show_panel: bool | None = None,
):
    """Add a recording, and optionally its NEuRT results, to `viewer`; return the ROI layer.

    Adds the movie (if given), the mean image (if the recording has one), the ROI labels (a
    Labels layer carrying the recording in ``metadata["neurt_recording"]`` and one row per
    label in its ``features``, background first), and the *NEuRT traces* dock.

    With `analysis` (an `napari_neurt.analysis.Analysis` of this recording, as returned by
    `analysis.analyse`), also adds the scores layer: the ROIs coloured by `colour_by` (a column
    of `Analysis.neuron_table`, default the newest result) through `cmap`, with neurons of too
    small a neighbourhood marked, and the *NEuRT analysis* panel, whose legend gives the colour
    range and which recolours, runs the model again or exports. `show_scores` (default: when an
    analysis is given) adds the scores layer with the model-free scores only (event rate);
    `show_panel` (default: with scores) docks the panel.

    Nothing is added if the recording cannot be drawn (no labels image): a ValueError says why.
    """
    if recording is None:
        if analysis is None:
            raise ValueError("give a recording, an analysis, or both")
        recording = analysis.recording
    if analysis is not None and analysis.recording is not recording:
        raise ValueError("the analysis is of another recording than the one given")
    if recording.labels is None:
        raise ValueError(
            "this recording has no labels image, so its neurons cannot be drawn; "
            "give it one (Recording.labels) or analyse it without the viewer"
        )
    if movie is not None and tuple(np.shape(movie)[-2:]) != recording.labels.shape:
        raise ValueError(
            f"the movie's frames {tuple(np.shape(movie)[-2:])} and the labels "
            f"{recording.labels.shape} differ in shape"
        )
    show_scores = analysis is not None if show_scores is None else show_scores
    show_panel = show_scores if show_panel is None else show_panel
    scale = (recording.pixel_size_um,) * 2 if recording.pixel_size_um else (1.0, 1.0)
    # build everything first, then add
    ids = recording.neuron_ids
    features = {
        "index": np.concatenate([[0], ids]),
        "neuron_id": np.concatenate([[0], ids]),
        "centroid_y": np.concatenate([[np.nan], recording.centroids[:, 0]]),
        "centroid_x": np.concatenate([[np.nan], recording.centroids[:, 1]]),
    }
    scores = None
    if show_scores:
        scores = scores_layer_data(
            analysis or Analysis(recording),
            roi_layer_name=name,
            colour_by=colour_by,
            cmap=cmap,
            layer_kwargs={"scale": scale},
        )
    if recording.mean_image is not None:
        viewer.add_image(recording.mean_image, name=f"{name} mean image", scale=scale)
    if movie is not None:
        viewer.add_image(movie, name=f"{name} movie", scale=(1.0, *scale))
    metadata = {RECORDING_KEY: recording}
    if analysis is not None:
        metadata[ANALYSIS_KEY] = analysis
    labels_layer = viewer.add_labels(
        recording.labels.copy(),  # painting the layer must not change the Recording
        name=name,
        scale=scale,
        opacity=0.5,
        metadata=metadata,
        features=features,
    )
    labels_layer.selected_label = int(recording.neuron_ids[0]) if recording.n_neurons else 1
    if scores is not None:
        scores_layer = apply_scores(viewer, scores, labels_layer)
        scores_layer.selected_label = labels_layer.selected_label
        viewer.layers.selection.active = scores_layer
    if show_traces:
        ensure_trace_dock(viewer)
    if show_panel:
        panel = ensure_analysis_dock(viewer)
        panel.rois_box.setCurrentText(labels_layer.name)  # napari renames a taken name
    refresh_plots(viewer)
    return labels_layer


def show_analysis(viewer: napari.viewer.Viewer, analysis: Analysis, **options):
    """`add_recording(viewer, analysis=analysis, **options)`: the recording and its results."""
    return add_recording(viewer, analysis=analysis, **options)


def _docked(viewer, kind):
    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, kind):
            return widget
    return None


def ensure_trace_dock(viewer):
    """The *NEuRT traces* dock of `viewer`, added at the bottom if it is not there yet."""
    from .widgets import TracePlotWidget

    widget = _docked(viewer, TracePlotWidget)
    if widget is None:
        widget = TracePlotWidget(viewer)
        viewer.window.add_dock_widget(widget, name=TRACE_DOCK_NAME, area="bottom")
    return widget


def ensure_analysis_dock(viewer):
    """The *NEuRT analysis* panel of `viewer`, added on the right if it is not there yet."""
    from .widgets.analysis import AnalysisWidget

    widget = _docked(viewer, AnalysisWidget)
    if widget is None:
        widget = AnalysisWidget(viewer)
        viewer.window.add_dock_widget(widget, name=ANALYSIS_DOCK_NAME, area="right")
    return widget


def refresh_plots(viewer) -> None:
    """Redraw the NEuRT plots and panels of `viewer` after results changed."""
    from .widgets import TracePlotWidget
    from .widgets.analysis import AnalysisWidget

    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, TracePlotWidget):
            widget._follow_active_layer()
            widget.refresh()
        elif isinstance(widget, AnalysisWidget):
            widget._refresh_scores_ui()
