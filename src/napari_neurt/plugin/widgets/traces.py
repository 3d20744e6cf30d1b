"""`TracePlotWidget`: the selected neuron's dF/F trace, NEuRT's reconstruction and attention.

For the neuron selected in the active NEuRT labels layer (a ROI layer carrying a recording, or
its scores layer): its trace, the reconstruction (orange), the frames hidden from the model
(shaded; in k-fold mode every frame was hidden once, so nothing is shaded) and, in a strip under
the trace, the classifier's temporal attention. A vertical line marks the viewer's current frame
and follows the time slider; a click in the plot moves the viewer to that frame. With "mark
frames" on, dragging across the plot marks those frames to hide (shaded yellow), in sync with
the analysis panel's marked-frames text (`marks.MarkedFrames`).

Selecting: clicking a neuron in the labels (in pan/zoom mode), setting `selected_label`, or a
row of napari's features table (which selects the label numbered as the row: the row's neuron
when the ids run 1, 2, 3, ...). Holding Shift while hovering previews the neuron under the
cursor. With "overlay" on, each selected neuron is added to the plot (up to `MAX_OVERLAY`).

Drawing is incremental: the artists are made once and their data replaced, and the canvas is
redrawn on the next idle moment, so a selection costs a few milliseconds of work plus one draw.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.transforms import offset_copy
from matplotlib.widgets import SpanSelector
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QWidget

from ..scores import analysis_of, recording_of
from .base import Margins, PlotWidget
from .marks import marked_frames

if TYPE_CHECKING:
    import napari

    from ...analysis import Analysis
    from ...recording import Recording

TRACE_COLOUR = "#3fa7ff"
RECON_COLOUR = "#ff9f1c"
PREVIEW_COLOUR = "#bbbbbb"
FRAME_COLOUR = "#ff5050"
MARK_COLOUR = "#ffd166"  # frames marked to hide
REDRAW_DELAY_MS = 100  # after new results or another layer (a selection redraws at once)
OVERLAY_COLOURS = ("#3fa7ff", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MAX_OVERLAY = len(OVERLAY_COLOURS)
# y tick labels of up to 6 characters at 8 pt and the y label 40 pt left of the axes; the title
# above; the x tick labels and label below
MARGINS = Margins(left=54, right=10, top=16, bottom=30, between=4)


def envelope(times: np.ndarray, values: np.ndarray, columns: int):
    """The trace as `columns` pixel columns can show it: ``(x, lowest, highest)`` of `columns`
    equal runs of samples, or None when there are no more samples than twice that (then the line
    itself is drawn). Filled between each run's extremes, the band covers the pixels the whole
    line would (min/max decimation) and costs a few milliseconds to draw, where the 10,000-point
    line or a line zig-zagging through the extremes costs 40 to 80 ms (measured on the 2-core test
    machine)."""
    n = len(values)
    if n <= 2 * columns:
        return None
    starts = np.linspace(0, n, columns + 1).astype(np.int64)[:-1]
    with warnings.catch_warnings():  # fmin/fmax skip NaN samples; a run of only NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lowest = np.fmin.reduceat(values, starts)
        highest = np.fmax.reduceat(values, starts)
    ends = np.r_[starts[1:], n] - 1
    return times[(starts + ends) // 2], lowest, highest


def band_polygons(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[np.ndarray]:
    """The band between `low` and `high` over `x` as one polygon per stretch of finite runs: a
    single polygon with NaN corners would be closed by straight lines across the gaps."""
    finite = np.isfinite(low) & np.isfinite(high)
    edges = np.flatnonzero(np.diff(np.r_[0, finite.astype(np.int8), 0]))
    return [
        np.column_stack([np.r_[x[a:b], x[a:b][::-1]], np.r_[low[a:b], high[a:b][::-1]]])
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def nice_limits(low: float, high: float) -> tuple[float, float]:
    """Limits around [low, high] that end on round ticks (1, 2, 2.5, 5 x 10^k steps), so that
    neurons of similar amplitude share their axes and the plot only needs redrawing in full when
    the scale really changes."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return 0.0, 1.0
    span = high - low
    if span <= 0:
        span = abs(high) or 1.0
    raw = span / 4
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return float(np.floor(low / step) * step), float(np.ceil(high / step) * step)


class TracePlotWidget(PlotWidget):
    """The selected neuron's trace, reconstruction and attention, with the current frame."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        # fixed margins: a full redraw (new recording, results, resize) skips measuring the
        # tick labels, which cost as much as the drawing itself
        super().__init__(viewer, parent, figsize=(6, 2.8), min_height=200, margins=MARGINS)
        self.labels_layer = None
        self.pinned: list[int] = []
        self._showing = False  # show_neurons is selecting the last of its neurons
        self.preview_label: int | None = None
        self._spans_key = None
        self._runs_of = (None, ())  # (reconstruction, its hidden runs)
        self._layout_key = None
        self._legend_key = None
        self.trace_data: tuple[np.ndarray, np.ndarray] | None = None  # the selected neuron's
        self._strip_key = None
        self.hidden_spans = None

        axes, strip = self.axes, self.strip_axes
        (self.trace_line,) = axes.plot([], [], lw=0.8, color=TRACE_COLOUR, label="trace")
        (self.recon_line,) = axes.plot(
            [], [], lw=0.8, alpha=0.6, color=RECON_COLOUR, label="reconstruction"
        )
        (self.preview_line,) = axes.plot([], [], lw=0.7, color=PREVIEW_COLOUR, alpha=0.9)
        self.overlay_lines = [
            # the selected neuron's trace has the first colour, the others the rest
            axes.plot([], [], lw=0.8, color=c, visible=False)[0] for c in OVERLAY_COLOURS[1:]
        ]
        # long traces are drawn as the band between each pixel column's extremes (`envelope`)
        self.bands = {
            line: axes.add_collection(PolyCollection(
                [], facecolors=line.get_color(), edgecolors="none", alpha=line.get_alpha(),
                zorder=line.get_zorder(),
            ))
            # drawn in this order: the selected neuron and its reconstruction on top
            for line in (*self.overlay_lines, self.preview_line, self.trace_line, self.recon_line)
        }
        self.frame_line = axes.axvline(0, color=FRAME_COLOUR, lw=1, alpha=0.8)
        self.strip_frame_line = strip.axvline(0, color=FRAME_COLOUR, lw=1, alpha=0.8)
        self.strip_image = strip.imshow(
            np.zeros((1, 1)), aspect="auto", extent=(0, 1, 0, 1), cmap="magma",
            interpolation="nearest", origin="lower",
        )
        self.strip_text = strip.text(
            0.5, 0.5, "", transform=strip.transAxes, ha="center", va="center", fontsize=7
        )
        strip.set_yticks([])
        strip.set_ylabel("attn.", fontsize=7, rotation=0, ha="right", va="center")
        # What changes with the selection is drawn over a saved background (blitting); axes,
        # ticks and legend are redrawn only when they change (`_static_key`).
        self.title = axes.set_title("", fontsize=9)
        # the y axis too (its scale follows the neuron): the background then only changes when
        # the recording, the legend or the size does. Its label sits at a fixed distance from
        # the axes (an animated axis never places it itself before the layout measures it).
        axes.yaxis.set_label_coords(
            0, 0.5, transform=offset_copy(axes.transAxes, fig=self.figure, x=-40, units="points")
        )
        axes.tick_params(axis="y", labelsize=8)
        self.animated = [
            self.axes.yaxis,
            *self.bands.values(),
            self.trace_line, self.recon_line, self.preview_line, *self.overlay_lines,
            self.frame_line, self.strip_image, self.strip_text, self.strip_frame_line, self.title,
        ]
        for artist in self.animated:
            artist.set_animated(True)
        self._background = None
        self._background_key = None
        self._content = None  # the last blit without the current-frame lines
        self._yaxis_cache: dict = {}
        self.canvas.mpl_connect("draw_event", self._on_draw_event)

        # controls: overlay several neurons
        bar = QWidget()
        row = QHBoxLayout(bar)
        row.setContentsMargins(4, 0, 4, 0)
        self.overlay_box = QCheckBox("overlay selected neurons")
        self.overlay_box.setToolTip(
            "keep the neurons you select on the plot (up to "
            f"{MAX_OVERLAY}); Shift-hover over the labels previews a neuron"
        )
        self.overlay_box.toggled.connect(self._on_overlay_toggled)
        clear = QPushButton("clear")
        clear.clicked.connect(self.clear_overlay)
        self.mark_button = QPushButton("mark frames")
        self.mark_button.setCheckable(True)
        self.mark_button.setToolTip(
            "drag across the plot to mark frames to hide from the model (they go into the "
            "analysis panel's marked frames; Reconstruct then hides them)"
        )
        self.mark_button.toggled.connect(self._on_mark_toggled)
        self.info = QLabel("")
        self.legend_label = QLabel("")
        row.addWidget(self.overlay_box)
        row.addWidget(clear)
        row.addWidget(self.mark_button)
        row.addStretch(1)
        row.addWidget(self.legend_label)
        row.addSpacing(12)
        row.addWidget(self.info)
        self.layout_.insertWidget(0, bar)

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        # a little later than "at once": results arrive with napari's own work on the new
        # layers, and the viewer should repaint between that and this plot's redraw
        self._redraw_timer.setInterval(REDRAW_DELAY_MS)
        self._redraw_timer.timeout.connect(self.draw)
        self.canvas.mpl_connect("button_press_event", self._on_click)

        # marking frames to hide by dragging across the plot, in sync with the panel's text
        self.marks = marked_frames(self.viewer)
        self.marked_spans = None
        self._marks_key = None
        self.span_selector: SpanSelector | None = None  # while "mark frames" is on
        self.attached = False
        self.attach()

    # -- following the viewer while docked ---------------------------------------------------------
    def _viewer_hooks(self) -> list:
        viewer = self.viewer
        return [
            (viewer.layers.selection.events.active, self._follow_active_layer),
            (viewer.layers.events.inserted, self._follow_active_layer),
            (viewer.layers.events.removed, self._follow_active_layer),
            (viewer.dims.events.current_step, self._move_frame_line),
            (viewer.events.theme, self._apply_theme),
            (self.marks.changed, self._on_marks_changed),
        ]

    def attach(self) -> None:
        """Follow the viewer: its layers, selection, time and theme (done when made)."""
        if self.attached:
            return
        self.attached = True
        for emitter, callback in self._viewer_hooks()[:-1]:  # napari's connect once at most
            emitter.connect(callback)
        self.marks.changed.connect(self._on_marks_changed, unique=True)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._apply_theme()  # it may have changed while detached
        self._follow_active_layer()

    def detach(self) -> None:
        """Stop following the viewer: its dock was closed (napari keeps the widget, unparented;
        left attached, it would redraw unseen and answer clicks beside a newer plot)."""
        if not self.attached:
            return
        self.attached = False
        self._redraw_timer.stop()
        for emitter, callback in self._viewer_hooks():
            emitter.disconnect(callback)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        if self.labels_layer is not None:
            self._disconnect(self.labels_layer)
            self.labels_layer = None

    def on_docked(self, docked: bool) -> None:
        if docked:
            self.attach()
        else:
            self.detach()

    def make_axes(self):
        axes, strip = self.figure.subplots(2, 1, sharex=True, height_ratios=(5, 1))
        self.strip_axes = strip
        return axes

    # -- wiring ------------------------------------------------------------------------------------
    def _follow_active_layer(self, event=None) -> None:
        candidates = [self.viewer.layers.selection.active, *reversed(self.viewer.layers)]
        layer = next((l for l in candidates if l is not None and recording_of(l) is not None), None)
        if layer is self.labels_layer:
            return
        if self.labels_layer is not None:
            self._disconnect(self.labels_layer)
        self.labels_layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._on_selected_label)
            layer.events.metadata.connect(self.refresh)
            if self._pick_on_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._pick_on_click)
        self.pinned = []
        self._redraw_timer.start()

    def _disconnect(self, layer) -> None:
        layer.events.selected_label.disconnect(self._on_selected_label)
        layer.events.metadata.disconnect(self.refresh)
        if self._pick_on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._pick_on_click)

    def _pick_on_click(self, layer, event):
        """In pan/zoom mode a click on a neuron selects it (painting modes are left alone)."""
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom" or event.type != "mouse_press":
            return
        value = layer.get_value(event.position, world=True)
        if isinstance(value, (int, np.integer)) and value > 0:
            layer.selected_label = int(value)

    def _on_selected_label(self, event=None) -> None:
        if self._showing:
            return
        if self.overlay_box.isChecked():
            self._pin(self.labels_layer.selected_label)
        self.draw()

    def _on_overlay_toggled(self, on: bool) -> None:
        self.pinned = []
        if on and self.labels_layer is not None:
            self._pin(self.labels_layer.selected_label)
        self.draw()

    def _pin(self, label: int) -> None:
        recording = self.recording
        if recording is None or label not in set(recording.neuron_ids.tolist()):
            return
        if label in self.pinned:
            return
        self.pinned = [*self.pinned, int(label)][-MAX_OVERLAY:]

    def show_neurons(self, labels) -> None:
        """Overlay these neurons (label values), as if selected one after the other."""
        self.overlay_box.blockSignals(True)
        self.overlay_box.setChecked(True)
        self.overlay_box.blockSignals(False)
        self.pinned = []
        for label in labels:
            self._pin(int(label))
        if self.pinned and self.labels_layer is not None:
            # the event goes out (napari's label box, the attention map follow); this plot,
            # which draws once below, lets it pass
            self._showing = True
            try:
                self.labels_layer.selected_label = self.pinned[-1]
            finally:
                self._showing = False
        self.draw()

    def clear_overlay(self) -> None:
        self.pinned = []
        self.draw()

    def refresh(self, event=None) -> None:
        """Redraw after the recording or its analysis changed (once, however many changes come
        in the same pass of the event loop)."""
        self._spans_key = self._strip_key = None
        self._redraw_timer.start()

    @property
    def recording(self) -> Recording | None:
        return recording_of(self.labels_layer) if self.labels_layer is not None else None

    @property
    def analysis(self) -> Analysis | None:
        analysis = analysis_of(self.labels_layer) if self.labels_layer is not None else None
        if analysis is not None and analysis.recording is not self.recording:
            return None  # results of an older recording of this layer
        return analysis

    def _frame_rate(self) -> float:
        return self.recording.frame_rate if self.recording is not None else 1.0

    def current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 3 else 0

    def _move_frame_line(self, event=None) -> None:
        x = self.current_frame() / self._frame_rate()
        self.frame_line.set_xdata([x, x])
        self.strip_frame_line.set_xdata([x, x])
        if event is not None:
            self._render_frame_lines()

    # -- rendering: blit what changed, redraw in full only when the axes changed --------------------
    def _static_key(self):
        return (
            self.axes.get_xlim(), self.canvas.width(), self.canvas.height(), self._spans_key,
            self._marks_key, getattr(self, "text_color", None),
        )

    def _on_draw_event(self, event) -> None:
        """After a full draw (animated artists left out): keep it as the background."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._background_key = self._static_key()
        self._yaxis_cache.clear()
        self._draw_animated()

    def _draw_animated(self) -> None:
        """Draw the animated artists over the background just restored; keep the result without
        the current-frame lines (`_content`) so that moving them costs a copy and two lines."""
        self._draw_yaxis()
        frame_lines = (self.frame_line, self.strip_frame_line)
        for artist in self.animated:
            if artist.get_visible() and artist is not self.axes.yaxis and artist not in frame_lines:
                self.figure.draw_artist(artist)
        self._content = self.canvas.copy_from_bbox(self.figure.bbox)
        for artist in frame_lines:
            self.figure.draw_artist(artist)

    def _draw_yaxis(self) -> None:
        """The y axis, from a copy made the first time these limits were drawn: its ticks and
        labels cost as much as the lines, and neurons of similar amplitude share their limits
        (`nice_limits`). Drawn first, so the copy holds only the background and the axis."""
        key = (self.axes.get_ylim(), self.axes.yaxis.label.get_text())
        region = self._yaxis_cache.get(key)
        if region is not None:
            self.canvas.restore_region(region)
            return
        self.figure.draw_artist(self.axes.yaxis)
        if len(self._yaxis_cache) >= 64:
            self._yaxis_cache.clear()
        self._yaxis_cache[key] = self.canvas.copy_from_bbox(self._yaxis_bbox())

    def _yaxis_bbox(self):
        """The strip left of the axes where the y ticks, their labels and the y label are."""
        from matplotlib.transforms import Bbox

        box, figure = self.axes.bbox, self.figure.bbox
        return Bbox.from_extents(
            figure.x0, max(box.y0 - 12, figure.y0), min(box.x0 + 2, figure.x1),
            min(box.y1 + 12, figure.y1),
        )

    def render(self) -> None:
        """Show the current state: a blit when only the animated artists changed, else a full
        redraw at the next idle moment."""
        if (
            self._background is None
            or self.canvas.layout_dirty
            or self._static_key() != self._background_key
            or not self.isVisible()
        ):
            self._content = None
            self.canvas.draw_idle()
            return
        self.canvas.restore_region(self._background)
        self._draw_animated()
        # paint with the rest of the window on the next pass of the event loop (a synchronous
        # blit would paint the window twice)
        self.canvas.update()

    def _render_frame_lines(self) -> None:
        """Only the current-frame lines moved: put them over the last drawn content."""
        if self._content is None or self.canvas.layout_dirty or not self.isVisible():
            self.render()
            return
        self.canvas.restore_region(self._content)
        self.figure.draw_artist(self.frame_line)
        self.figure.draw_artist(self.strip_frame_line)
        self.canvas.update()

    # -- marking frames ----------------------------------------------------------------------------
    def _on_mark_toggled(self, on: bool) -> None:
        # Made only while marking: a blitting SpanSelector draws the whole figure a second time
        # after every full draw (to keep itself out of its background).
        if on and self.span_selector is None:
            self.span_selector = SpanSelector(
                self.axes, self._on_span, "horizontal", useblit=True, minspan=0.0, button=1,
                props={"facecolor": MARK_COLOUR, "alpha": 0.3},
            )
        elif not on and self.span_selector is not None:
            self.span_selector.disconnect_events()
            self.span_selector = None
            self.canvas.draw_idle()

    def _on_span(self, start_s: float, stop_s: float) -> None:
        """A span dragged across the plot (seconds): mark its frames."""
        recording = self.recording
        if recording is None:
            return
        rate, last = recording.frame_rate, recording.n_frames - 1
        first, final = np.ceil(start_s * rate - 0.5), np.floor(stop_s * rate + 0.5)
        if final < 0 or first > last or final < first:
            return  # wholly before the first frame or after the last: nothing to mark
        self.marks.add(int(max(first, 0)), int(min(final, last)), recording.n_frames)

    def mark_frames(self, first: int, last: int) -> None:
        """Mark frames `first` to `last` as a drag from one to the other would."""
        rate = self._frame_rate()
        self._on_span(first / rate, last / rate)

    def _on_marks_changed(self, text: str) -> None:
        try:
            self._marks_key = None
            self._redraw_timer.start()
        except RuntimeError:  # Qt deleted this widget
            self.marks.changed.disconnect(self._on_marks_changed)

    def _draw_marked(self, recording) -> None:
        """Shade the frames marked to hide (part of the background: they change rarely)."""
        key = (self.marks.text, id(recording))
        if key == self._marks_key:
            return
        self._marks_key = key
        if self.marked_spans is not None:
            self.marked_spans.remove()
            self.marked_spans = None
        mask = None if recording is None else self.marks.mask(recording.n_frames)
        if mask is None or not mask.any():
            return
        edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        rate = recording.frame_rate
        self.marked_spans = self.axes.broken_barh(  # frame i is drawn at i / rate: centred on it
            [((a - 0.5) / rate, (b - a) / rate) for a, b in zip(starts, stops)], (0, 1),
            transform=self.axes.get_xaxis_transform(), facecolor=MARK_COLOUR, alpha=0.25,
            edgecolor="none",
        )

    def _on_click(self, event) -> None:
        if self.mark_button.isChecked():  # the drag marks frames instead
            return
        if event.inaxes not in (self.axes, self.strip_axes) or event.xdata is None:
            return
        if self.recording is None:
            return
        frame = int(np.clip(round(event.xdata * self._frame_rate()), 0, self.recording.n_frames - 1))
        if self.viewer.dims.ndim >= 3:
            self.viewer.dims.set_current_step(0, frame)

    def _on_mouse_move(self, viewer, event) -> None:
        try:
            layer = self.labels_layer
            if layer is None:
                return
            if "Shift" not in event.modifiers:
                if self.preview_label is not None:
                    self.preview_label = None
                    self.draw()
                return
            value = layer.get_value(event.position, world=True)
            label = int(value) if isinstance(value, (int, np.integer)) and value > 0 else None
            if label != self.preview_label:
                self.preview_label = label
                self.draw()
        except RuntimeError:  # this widget was deleted with its dock
            if self._on_mouse_move in viewer.mouse_move_callbacks:
                viewer.mouse_move_callbacks.remove(self._on_mouse_move)

    # -- drawing -----------------------------------------------------------------------------------
    def row_of(self, label) -> int | None:
        recording = self.recording
        if recording is None or label is None:
            return None
        rows = np.flatnonzero(recording.neuron_ids == label)
        return int(rows[0]) if rows.size else None

    def selected_row(self) -> int | None:
        """Row of the selected neuron in the recording, or None when nothing valid is selected."""
        if self.labels_layer is None:
            return None
        return self.row_of(self.labels_layer.selected_label)

    def draw(self, event=None) -> None:
        recording, row = self.recording, self.selected_row()
        analysis = self.analysis
        if row is None:
            for line, band in self.bands.items():
                line.set_data([], [])
                band.set_visible(False)
            message = "select a neuron in a NEuRT labels layer" if recording is None else (
                f"label {self.labels_layer.selected_label} is not a neuron of this recording"
            )
            self.title.set_text(message)
            self._draw_spans(None, None)
            self._draw_marked(recording)
            self._draw_strip(None, None, None)
            self.trace_data = None
            self.info.setText("")
            self._move_frame_line()
            self.render()
            return

        times = recording.times
        trace = recording.traces[row]
        self.trace_data = (times, trace)
        overlay = (
            [label for label in self.pinned if label != recording.neuron_ids[row]]
            if self.overlay_box.isChecked() else []
        )
        preview = self.row_of(self.preview_label)
        if preview == row:
            preview = None
        reconstruction = analysis.reconstruction if analysis is not None else None

        # what each line shows this time (None: nothing)
        series = {self.trace_line: trace}
        for line, label in zip(self.overlay_lines, [*overlay, *[None] * MAX_OVERLAY]):
            other = self.row_of(label)
            series[line] = None if other is None else recording.traces[other]
        series[self.preview_line] = None if preview is None else recording.traces[preview]
        series[self.recon_line] = (
            None if reconstruction is None else reconstruction.reconstruction[row]
        )
        shown = [values for values in series.values() if values is not None]

        xlim = (0.0, max(recording.duration_s, 1e-9))
        if xlim != tuple(self.axes.get_xlim()):
            self.axes.set_xlim(*xlim)
        low = min(float(np.nanmin(s)) for s in shown)
        high = max(float(np.nanmax(s)) for s in shown)
        limits = nice_limits(low, high)
        if limits != self.axes.get_ylim():
            self.axes.set_ylim(*limits)

        columns = max(500, int(self.axes.bbox.width))
        unit_px = self.axes.bbox.height / max(limits[1] - limits[0], 1e-12)  # pixels per y unit
        for line, values in series.items():
            band = self.bands[line]
            if line in self.overlay_lines:
                line.set_visible(values is not None)
            if values is None:
                line.set_data([], [])
                band.set_visible(False)
                continue
            decimated = envelope(times, values, columns)
            if decimated is None:
                line.set_data(times, values)
                band.set_visible(False)
                continue
            x, lowest, highest = decimated
            # a run whose extremes are closer than the line is thick still shows as a line
            thickness = line.get_linewidth() * self.figure.dpi / 72 / max(unit_px, 1e-12)
            centre, half = (lowest + highest) / 2, np.maximum((highest - lowest) / 2, thickness / 2)
            band.set_verts(band_polygons(x, centre - half, centre + half))
            band.set_visible(True)
            line.set_data([], [])
        self._draw_spans(reconstruction, recording)
        self._draw_marked(recording)
        classification = analysis.classification if analysis is not None else None
        self._draw_strip(classification, recording, row)

        neuron = int(recording.neuron_ids[row])
        title = f"neuron {neuron}"
        if overlay:
            title += " + " + ", ".join(map(str, overlay))
        if preview is not None:
            title += f"  (preview: {int(recording.neuron_ids[preview])})"
        self.title.set_text(title)
        ylabel = recording.metadata.get("trace_kind", "fluorescence")
        self.axes.set_ylabel(ylabel)
        self.strip_axes.set_xlabel("time (s)")
        # tick labels of another magnitude need other margins: lay the figure out again
        layout_key = (ylabel, max(len(f"{v:g}") for v in limits))
        if layout_key != self._layout_key:
            self._layout_key = layout_key
            self.canvas.relayout()
        self.info.setText(self._scores_text(analysis, row))
        self._update_legend(reconstruction)
        self._move_frame_line()
        self.render()

    def _scores_text(self, analysis, row: int) -> str:
        if analysis is None:
            return ""
        parts = []
        if analysis.reconstruction is not None:
            r2 = analysis.reconstruction.predictability[row]
            if np.isfinite(r2):
                parts.append(f"R² {r2:.2f}")
        if analysis.classification is not None:
            result = analysis.classification.result
            name = result.class_names[1] if len(result.class_names) > 1 else "class 1"
            if result.recording_head:  # its weight in the verdict, against an even share
                ratio = len(result.neuron_attention) * float(result.neuron_attention[row])
                parts.append(f"attention ×{ratio:.2g}")
            parts.append(f"window P({name}) {result.neuron_probability[row]:.2f}")
        info = analysis.token_info
        if info is not None and info.fallback[row]:
            parts.append("too few neighbours")
        return " · ".join(parts)

    def _draw_spans(self, reconstruction, recording) -> None:
        # keyed on what is shaded, not on the result object: new results with the same hidden
        # frames (always, in k-fold mode: none) need no full redraw when they arrive
        if reconstruction is None or recording is None:
            runs = ()
        elif self._runs_of[0] is reconstruction:
            runs = self._runs_of[1]
        else:
            runs = tuple(reconstruction.hidden_runs)
            self._runs_of = (reconstruction, runs)
        key = (runs, recording.frame_rate if recording is not None else None)
        if key == self._spans_key:
            return
        self._spans_key = key
        if self.hidden_spans is not None:
            self.hidden_spans.remove()
            self.hidden_spans = None
        if not runs:
            return
        rate = recording.frame_rate
        ranges = [((a - 0.5) / rate, (b - a + 1) / rate) for a, b in runs]  # centred on frames
        self.hidden_spans = self.axes.broken_barh(
            ranges, (0, 1), transform=self.axes.get_xaxis_transform(),
            facecolor="#888888", alpha=0.3, edgecolor="none", label="hidden frames",
        )

    def _draw_strip(self, classification, recording, row) -> None:
        key = (id(classification), id(recording), row)
        if key + (self.canvas.width(),) == self._strip_key:
            return
        self._strip_key = key + (self.canvas.width(),)
        if classification is None or recording is None or row is None:
            self.strip_image.set_visible(False)
            self.strip_text.set_text(
                "" if recording is None else "temporal attention: classify to see it"
            )
            self.strip_text.set_color(getattr(self, "text_color", "white"))
            return
        attention = np.asarray(classification.result.temporal_attention[row], dtype=np.float32)
        points = max(500, self.canvas.width())
        if len(attention) > points:  # a column per pixel or so, keeping each run's peak
            attention = np.maximum.reduceat(
                attention, np.linspace(0, len(attention), points + 1).astype(np.int64)[:-1]
            )
        self.strip_image.set_data(attention[None, :])
        # each frame's column centred on its sample, i / rate, as the trace draws it
        half = 0.5 / recording.frame_rate
        self.strip_image.set_extent((-half, recording.duration_s - half, 0, 1))
        finite = attention[np.isfinite(attention)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.strip_image.set_clim(low, high if high > low else low + 1e-9)
        self.strip_image.set_visible(True)
        self.strip_text.set_text("")

    def _update_legend(self, reconstruction) -> None:
        """The key to the lines, as coloured text beside the plot (a matplotlib legend would
        cost a full redraw whenever it changes)."""
        parts = [(TRACE_COLOUR, "━", "trace")]
        if reconstruction is not None:
            what = (
                "every frame predicted unseen" if reconstruction.mode == "kfold"
                else f"{reconstruction.mode} frames hidden, shaded"
            )
            parts.append((RECON_COLOUR, "━", f"reconstruction ({what})"))
        key = tuple(parts)
        if key == self._legend_key:
            return
        self._legend_key = key
        self.legend_label.setText(
            " &nbsp; ".join(f'<span style="color:{c}">{m}</span> {t}' for c, m, t in parts)
        )

    def on_theme(self) -> None:
        if hasattr(self, "strip_text"):
            self.strip_text.set_color(self.text_color)
