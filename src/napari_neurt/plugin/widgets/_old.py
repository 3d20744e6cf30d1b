"""Dock widgets. Thin layers over the core API: they read a `Recording` from a Labels layer's
``metadata["neurt_recording"]`` and draw it; all computing happens in the core."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..recording import Recording

if TYPE_CHECKING:
    import napari

RECORDING_KEY = "neurt_recording"


def recording_of(layer) -> Recording | None:
    """The `Recording` a layer carries in its metadata, if any."""
    value = getattr(layer, "metadata", {}).get(RECORDING_KEY)
    return value if isinstance(value, Recording) else None


class PlotWidget(QWidget):
    """A matplotlib canvas that follows the napari theme; subclasses implement `draw`."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.figure = Figure(figsize=(6, 2.5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.axes = self.figure.add_subplot()
        viewer.events.theme.connect(self._apply_theme)
        self._apply_theme()

    def _apply_theme(self, event=None) -> None:
        from napari.utils.theme import get_theme

        theme = get_theme(self.viewer.theme)
        background, text = theme.canvas.as_hex(), theme.text.as_hex()
        self.figure.set_facecolor(theme.background.as_hex())
        self.axes.set_facecolor(background)
        self.axes.tick_params(colors=text, which="both")
        for spine in self.axes.spines.values():
            spine.set_color(text)
        self.axes.xaxis.label.set_color(text)
        self.axes.yaxis.label.set_color(text)
        self.axes.title.set_color(text)
        self.text_color = text
        self.canvas.draw_idle()

    def draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class TracePlotWidget(PlotWidget):
    """The selected neuron's trace, with a line at the viewer's current frame.

    Follows the active Labels layer that carries a recording: clicking a neuron (or setting
    `selected_label`) shows its trace; moving the time slider moves the line; clicking in the
    plot moves the viewer to that frame.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(viewer, parent)
        self.labels_layer = None
        self.trace_line = None
        self.frame_line = self.axes.axvline(0, color="#ff9900", lw=1, alpha=0.8)
        viewer.layers.selection.events.active.connect(self._follow_active_layer)
        viewer.layers.events.inserted.connect(self._follow_active_layer)
        viewer.dims.events.current_step.connect(self._move_frame_line)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self._follow_active_layer()

    # -- wiring ------------------------------------------------------------------------------------
    def _follow_active_layer(self, event=None) -> None:
        candidates = [self.viewer.layers.selection.active, *reversed(self.viewer.layers)]
        layer = next((l for l in candidates if l is not None and recording_of(l) is not None), None)
        if layer is self.labels_layer:
            return
        if self.labels_layer is not None:
            self.labels_layer.events.selected_label.disconnect(self.draw)
        self.labels_layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self.draw)
        self.draw()

    @property
    def recording(self) -> Recording | None:
        return recording_of(self.labels_layer) if self.labels_layer is not None else None

    def _frame_rate(self) -> float:
        return self.recording.frame_rate if self.recording is not None else 1.0

    def _move_frame_line(self, event=None) -> None:
        frame = self.viewer.dims.current_step[0] if self.viewer.dims.ndim >= 3 else 0
        self.frame_line.set_xdata([frame / self._frame_rate()] * 2)
        self.canvas.draw_idle()

    def _on_click(self, event) -> None:
        if event.inaxes is not self.axes or event.xdata is None or self.recording is None:
            return
        frame = int(np.clip(round(event.xdata * self._frame_rate()), 0, self.recording.n_frames - 1))
        if self.viewer.dims.ndim >= 3:
            self.viewer.dims.set_current_step(0, frame)

    # -- drawing -----------------------------------------------------------------------------------
    def selected_row(self) -> int | None:
        """Row of the selected neuron in the recording, or None when nothing valid is selected."""
        recording = self.recording
        if recording is None:
            return None
        rows = np.flatnonzero(recording.neuron_ids == self.labels_layer.selected_label)
        return int(rows[0]) if rows.size else None

    def draw(self, event=None) -> None:
        recording, row = self.recording, self.selected_row()
        if row is None:
            if self.trace_line is not None:
                self.trace_line.set_data([], [])
            message = "select a neuron in a NEuRT labels layer" if recording is None else (
                f"label {self.labels_layer.selected_label} is not a neuron of this recording"
            )
            self.axes.set_title(message, fontsize=9)
        else:
            trace = recording.traces[row]
            times = recording.times
            if self.trace_line is None:
                (self.trace_line,) = self.axes.plot(times, trace, lw=0.8, color="#3fa7ff")
            else:
                self.trace_line.set_data(times, trace)
            self.axes.set_xlim(0, max(recording.duration_s, 1e-9))
            low, high = float(np.nanmin(trace)), float(np.nanmax(trace))
            pad = 0.05 * (high - low or 1.0)
            self.axes.set_ylim(low - pad, high + pad)
            kind = recording.metadata.get("trace_kind", "fluorescence")
            self.axes.set_title(f"neuron {recording.neuron_ids[row]}", fontsize=9)
            self.axes.set_xlabel("time (s)")
            self.axes.set_ylabel(kind)
        self._move_frame_line()
