"""`AttentionMapWidget` (*NEuRT attention map*): what the model looks at, time by time.

For the neuron selected in the active NEuRT labels layer, the self-attention of the chosen layer
and head over one window of the model's input (`NeurtModel.attention_maps`): row q is how much
time step q attends to every other step. The window is centred on the viewer's current frame
(clipped to the recording). The model is the one that made the layer's latest results.

The maps of all layers and heads are computed together in a worker (tokens once per recording),
so changing the layer or head only redraws; a new neuron or window is computed again, the newest
request replacing any waiting one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QWidget

from ...progress import Progress
from .. import models
from ..scores import analysis_of, recording_of
from ..workers import Job
from .base import PlotWidget

if TYPE_CHECKING:
    import napari

DEBOUNCE_MS = 150


class AttentionMapWidget(PlotWidget):
    """Time-by-time self-attention of a layer and head for the selected neuron's window."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(viewer, parent, figsize=(4, 4), min_height=260)
        self.labels_layer = None
        self.job: Job | None = None
        self.maps: np.ndarray | None = None  # (n_layer, n_head, W, W)
        self.window: tuple[int, int, int] | None = None  # (neuron id, start, width)
        self._shown_for: tuple | None = None  # (recording id, model, neuron) of the maps shown
        self._pending = False
        self._tokens: dict = {}  # (recording id, model) -> (recording, its tokens)
        self._shown_recording = None
        self.closed = False  # its dock was closed (napari keeps the widget, unparented)

        bar = QWidget()
        row = QHBoxLayout(bar)
        row.setContentsMargins(4, 0, 4, 0)
        self.layer_spin = QSpinBox()
        self.layer_spin.setRange(1, 1)
        self.head_spin = QSpinBox()
        self.head_spin.setRange(1, 1)
        self.status = QLabel("")
        row.addWidget(QLabel("layer"))
        row.addWidget(self.layer_spin)
        row.addWidget(QLabel("head"))
        row.addWidget(self.head_spin)
        row.addStretch(1)
        row.addWidget(self.status)
        self.layout_.insertWidget(0, bar)
        self.image = self.axes.imshow(np.zeros((2, 2)), cmap="magma", interpolation="nearest")
        self.axes.set_xlabel("attended frame")
        self.axes.set_ylabel("query frame")

        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.update_maps)
        self.layer_spin.valueChanged.connect(lambda *_: self.draw())
        self.head_spin.valueChanged.connect(lambda *_: self.draw())
        viewer = self.viewer
        viewer.layers.selection.events.active.connect(self._follow_active_layer)
        viewer.layers.events.inserted.connect(self._follow_active_layer)
        viewer.layers.events.removed.connect(self._follow_active_layer)
        viewer.dims.events.current_step.connect(self._schedule)
        self._follow_active_layer()

    # -- wiring ------------------------------------------------------------------------------------
    def on_docked(self, docked: bool) -> None:
        self.closed = not docked
        if self.closed:  # no maps computed unseen
            self.timer.stop()
        else:
            self._follow_active_layer()
            self._schedule()

    def _follow_active_layer(self, event=None) -> None:
        candidates = [self.viewer.layers.selection.active, *reversed(self.viewer.layers)]
        layer = next((l for l in candidates if l is not None and recording_of(l) is not None), None)
        if layer is self.labels_layer:
            return
        if self.labels_layer is not None:
            self.labels_layer.events.selected_label.disconnect(self._schedule)
            self.labels_layer.events.metadata.disconnect(self._schedule)
        self.labels_layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._schedule)
            layer.events.metadata.connect(self._schedule)
        self._schedule()

    def _schedule(self, event=None) -> None:
        self.timer.start()

    def model_used(self) -> tuple[str, str] | None:
        """(source, device) of the model of the layer's last classification, else its last
        reconstruction: the map is that model's attention, computed where it ran."""
        analysis = analysis_of(self.labels_layer) if self.labels_layer is not None else None
        if analysis is None:
            return None
        for part in (analysis.classification, analysis.reconstruction):
            if part is not None and part.parameters.get("model_source"):
                return part.parameters["model_source"], part.model.get("device", "auto")
        return None

    def request(self):
        """(recording, row, neuron, (source, device)) of the map to show, or why there is none."""
        layer = self.labels_layer
        recording = recording_of(layer) if layer is not None else None
        if recording is None:
            return "select a neuron in a NEuRT labels layer"
        rows = np.flatnonzero(recording.neuron_ids == layer.selected_label)
        if not rows.size:
            return f"label {layer.selected_label} is not a neuron of this recording"
        used = self.model_used()
        if used is None:
            return "run Reconstruct or Classify first: the map shows that model's attention"
        return recording, int(rows[0]), int(layer.selected_label), used

    # -- computing ---------------------------------------------------------------------------------
    def update_maps(self) -> None:
        if self.closed:
            return
        request = self.request()
        if isinstance(request, str):
            if self.job is not None:  # what the running job brings is no longer wanted
                self._pending = True
            self.maps, self.window = None, None
            self.status.setText("")
            self.axes.set_title(request, fontsize=8)
            self.image.set_visible(False)
            self.canvas.draw_idle()
            return
        if self.job is not None:
            self._pending = True
            return
        recording, row, neuron, (source, device) = request
        for_what = _map_of(request)
        frame = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 3 else 0
        tokens_cache = self._tokens

        def steps():
            yield Progress(0, 2, "attention: loading model")
            model = models.get_model(source, device)
            width = min(model.config.seq_len, recording.n_frames)
            start = int(np.clip(frame - width // 2, 0, recording.n_frames - width))
            shown = self.window == (neuron, start, width) and self._shown_for == for_what
            if shown and self.maps is not None:
                return None  # already shown
            key = (id(recording), source)
            kept = tokens_cache.get(key)
            if kept is not None:
                tokens = kept[1]
            else:
                tokens = model.tokens_for(recording)
                tokens_cache.clear()
                # the recording is kept with its tokens: its id cannot go to a new one meanwhile
                tokens_cache[key] = (recording, tokens)
            yield Progress(1, 2, "attention: computing")
            maps = model.attention_maps(tokens.tokens[row], start=start)
            return maps, (neuron, start, width), for_what

        self.status.setText("computing…")
        self.job = Job(steps, description="NEuRT attention map", on_done=self._show,
                       on_finished=self._finished, owner=self)
        self.job.start()

    def _show(self, result) -> None:
        if result is None:
            return
        request = self.request()
        maps, window, for_what = result
        if isinstance(request, str) or for_what != _map_of(request):
            return  # the selection moved on while it was computed
        self.maps, self.window, self._shown_for = maps, window, for_what
        self._shown_recording = request[0]  # keeps the id in _shown_for its own
        n_layer, n_head = self.maps.shape[:2]
        self.layer_spin.setRange(1, n_layer)
        self.head_spin.setRange(1, n_head)
        self.draw()

    def _finished(self, job) -> None:
        self.job = None
        if job.error:
            self.status.setText("failed (see the notification)")
        elif self.window is not None:
            self.status.setText("")
        if self._pending:
            self._pending = False
            self.timer.start()

    # -- drawing -----------------------------------------------------------------------------------
    def draw(self) -> None:
        if self.maps is None or self.window is None:
            return
        layer, head = self.layer_spin.value() - 1, self.head_spin.value() - 1
        neuron, start, width = self.window
        image = self.maps[layer, head]
        self.image.set_data(image)
        self.image.set_extent((start - 0.5, start + width - 0.5, start + width - 0.5, start - 0.5))
        self.image.set_clim(float(image.min()), float(image.max()) or 1.0)
        self.image.set_visible(True)
        self.axes.set_xlim(start - 0.5, start + width - 0.5)
        self.axes.set_ylim(start + width - 0.5, start - 0.5)
        self.axes.set_title(
            f"neuron {neuron}, layer {layer + 1}, head {head + 1}, frames {start}–{start + width - 1}",
            fontsize=8,
        )
        self.canvas.draw_idle()


def _map_of(request) -> tuple:
    """What a map is of: the recording, the model and the neuron (another layer may have a
    neuron 3 too)."""
    recording, _, neuron, (source, _) = request
    return id(recording), source, neuron
