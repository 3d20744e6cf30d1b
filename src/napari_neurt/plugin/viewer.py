"""Put recordings into a napari viewer from a script or notebook."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..recording import Recording
from .widgets import RECORDING_KEY, TracePlotWidget

if TYPE_CHECKING:
    import napari

TRACE_DOCK_NAME = "NEuRT traces"


def add_recording(
    viewer: napari.viewer.Viewer,
    recording: Recording,
    *,
    movie=None,
    name: str = "neurons",
    show_traces: bool = True,
):
    """Add a recording to `viewer`: its movie (if given), mean image, ROI labels and a trace plot.

    The Labels layer carries the recording in ``metadata["neurt_recording"]`` and one row per
    neuron in its `features` table (``neuron_id`` first), which is how the widgets find it.
    Returns the Labels layer. Nothing is added if the recording has no labels image.
    """
    if recording.labels is None:
        raise ValueError(
            "this recording has no labels image, so its neurons cannot be drawn; "
            "give it one (Recording.labels) or analyse it without the viewer"
        )
    scale = (recording.pixel_size_um,) * 2 if recording.pixel_size_um else (1.0, 1.0)
    if recording.mean_image is not None:
        viewer.add_image(recording.mean_image, name=f"{name} mean image", scale=scale)
    if movie is not None:
        viewer.add_image(movie, name=f"{name} movie", scale=(1.0, *scale))
    features = {"neuron_id": recording.neuron_ids, "centroid_y": recording.centroids[:, 0],
                "centroid_x": recording.centroids[:, 1]}
    labels_layer = viewer.add_labels(
        recording.labels,
        name=name,
        scale=scale,
        opacity=0.5,
        metadata={RECORDING_KEY: recording},
        features=features,
    )
    labels_layer.selected_label = int(recording.neuron_ids[0]) if recording.n_neurons else 1
    if show_traces and TRACE_DOCK_NAME not in viewer.window.dock_widgets:
        viewer.window.add_dock_widget(TracePlotWidget(viewer), name=TRACE_DOCK_NAME, area="bottom")
    return labels_layer
