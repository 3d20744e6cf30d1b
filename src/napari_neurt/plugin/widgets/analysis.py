"""`AnalysisWidget` (*NEuRT analysis*): from a movie and its ROIs to coloured per-neuron scores.

Inputs: a movie (Image layer with time) and ROI labels (Labels layer), or a Labels layer that
already carries a `Recording` (the suite2p / CaImAn / NWB readers, `add_recording`, a previous
extraction). ImageJ ROIs opened alone come on the smallest image that holds them; they pair with
any movie whose frame holds them all, and are placed on its frame to extract (the layer is left
as it is). Frame rate and pixel size are prefilled from the recording or the layers' metadata.

Actions, each a `Job` over a core step generator (so the viewer stays interactive and Cancel
stops it at the next batch):

- *Extract traces*: `iter_extract` (neuropil-corrected) then `delta_f_over_f`; the ROI layer
  gets the `Recording`, and the scores layer appears with the model-free scores (event rate).
- *Reconstruct*: `analysis.iter_reconstruct` with the chosen hiding (every frame in turn, marked
  frames, or bad frames detected from the movie or the traces).
- *Classify*: `analysis.iter_classify`.

Everything a job shows is built in the job (the `ScoresLayerData`); the main thread only applies
it, after the job ran to the end. A failed or cancelled job changes no layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ... import analysis as core
from ...progress import Progress
from ...recording import Recording
from .. import models
from ..scores import (
    ANALYSIS_KEY,
    COLORMAPS,
    RECORDING_KEY,
    SCORES_KEY,
    analysis_of,
    apply_scores,
    colour_columns,
    column_label,
    recolour,
    recording_of,
    scores_layer_data,
    scores_layer_of,
)
from ..workers import Job
from .base import fill_model_box, unwrap
from .legend import ScoresLegend
from .marks import marked_frames

if TYPE_CHECKING:
    import napari

HIDE_CHOICES = (
    ("every frame in turn (k-fold)", "kfold"),
    ("frames I mark", "marked"),
    ("bad frames (detected), imputed", "bad"),
)


@dataclass(frozen=True)
class ModelLoaded(Progress):
    """Yielded once the model is loaded: which device it really runs on."""

    device: str = ""


@dataclass
class JobResult:
    """What a job hands to the main thread: everything to apply, built beforehand."""

    roi_layer: Any  # the napari Labels layer the job ran on (followed through renames)
    analysis: core.Analysis
    scores: Any  # ScoresLayerData
    message: str = ""
    roi_features: Any = None
    device: str | None = None


def _shown_as(box, value: float) -> bool:
    """Whether the spin box `box` shows `value`, to its decimals."""
    return abs(box.value() - value) <= 0.5 * 10.0 ** -box.decimals() + 1e-12


def _with_suffix_of(path: str, chosen_filter: str) -> str:
    """`path` from a save dialog, given the suffix of the file type chosen there when it has none
    of its own (Qt's own dialog adds none)."""
    if Path(path).suffix or "(*." not in chosen_filter:
        return path
    return path + chosen_filter.split("(*", 1)[1].split(")", 1)[0]


def _index_of(box, layer) -> int:
    """The item of a layer picker that holds `layer` (-1: none)."""
    return next((k for k in range(box.count()) if box.itemData(k) is layer), -1)


def _still_there(layer, viewer):
    """`layer` if it is still in `viewer`, else None."""
    return layer if layer is not None and layer in viewer.layers else None


def _is_scores_layer(layer) -> bool:
    return bool(getattr(layer, "metadata", {}).get(SCORES_KEY))


class AnalysisWidget(QWidget):
    """The NEuRT analysis panel (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = unwrap(viewer)
        self.job: Job | None = None
        self._stage: str | None = None
        self.batch_size: int | None = None  # windows per batch (None: the device's default)
        self._pipeline: list[tuple[str, dict]] = []
        self._pipeline_roi = None
        self._updating = False
        self._prefilled_for: tuple | None = None  # the inputs the boxes were last filled for

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        # -- inputs --------------------------------------------------------------------------------
        inputs = QGroupBox("Input")
        form = QFormLayout(inputs)
        self.movie_box = QComboBox()
        self.movie_box.setToolTip("the movie (an Image layer with time first); needed to extract")
        self.rois_box = QComboBox()
        self.rois_box.setToolTip(
            "the ROIs (a Labels layer); a recording opened by the suite2p, CaImAn or NWB reader "
            "already carries its traces"
        )
        self.frame_rate = QDoubleSpinBox()
        self.frame_rate.setRange(0.001, 100000)
        self.frame_rate.setDecimals(3)
        self.frame_rate.setValue(30.0)
        self.frame_rate.setSuffix(" Hz")
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setRange(0, 10000)
        self.pixel_size.setDecimals(4)
        self.pixel_size.setSpecialValueText("unknown")
        self.pixel_size.setSuffix(" µm")
        self.prefill_note = QLabel("")
        self.prefill_note.setWordWrap(True)
        self.neuropil = QCheckBox("subtract neuropil (0.7 × annulus)")
        self.neuropil.setChecked(True)
        form.addRow("Movie", self.movie_box)
        form.addRow("ROIs", self.rois_box)
        form.addRow("Frame rate", _row(self.frame_rate, QLabel("pixel"), self.pixel_size))
        form.addRow(self.prefill_note)
        form.addRow(self.neuropil)
        layout.addWidget(inputs)

        # -- model ---------------------------------------------------------------------------------
        model_group = QGroupBox("Model")
        form = QFormLayout(model_group)
        self.model_box = QComboBox()
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("checkpoint folder, config.json or .pth")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse_checkpoint)
        self.checkpoint_row = _row(self.checkpoint_edit, browse)
        self.device_box = QComboBox()
        self.device_box.addItems(models.device_choices())
        self.device_label = QLabel("running on: –")
        form.addRow("Model", self.model_box)
        form.addRow(self.checkpoint_row)
        form.addRow("Device", _row(self.device_box, self.device_label))
        layout.addWidget(model_group)

        # -- actions -------------------------------------------------------------------------------
        actions = QGroupBox("Run")
        form = QFormLayout(actions)
        buttons = QHBoxLayout()
        self.extract_button = QPushButton("Extract traces")
        self.reconstruct_button = QPushButton("Reconstruct")
        self.classify_button = QPushButton("Classify")
        for button in (self.extract_button, self.reconstruct_button, self.classify_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.hide_box = QComboBox()
        for text, value in HIDE_CHOICES:
            self.hide_box.addItem(text, value)
        self.folds = QSpinBox()
        self.folds.setRange(2, 50)
        self.folds.setValue(core.DEFAULT_FOLDS)
        self.span = QSpinBox()
        self.span.setRange(1, 1000)
        self.span.setValue(core.DEFAULT_SPAN)
        self.span.setSuffix(" frames")
        self.kfold_row = _row(QLabel("folds"), self.folds, QLabel("spans of"), self.span)
        self.frames_edit = QLineEdit()
        self.frames_edit.setPlaceholderText("frames to hide, e.g. 100-120, 300")
        self.frames_edit.setToolTip(
            "frame numbers and ranges, from 0; or drag across the NEuRT traces plot with "
            "\"mark frames\" on"
        )
        mark = QPushButton("+ current frame")
        mark.clicked.connect(lambda: self.mark_current_frame())
        self.marked_row = _row(self.frames_edit, mark)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(1.0, 50.0)
        self.threshold.setValue(5.0)
        self.threshold.setToolTip(
            "each frame is compared with its two neighbours in the movie: it is bad when it "
            "resembles neither, or is darker or brighter than both, by more than this many "
            "robust standard deviations from what is usual in the movie (without a movie: from "
            "the traces)"
        )
        self.bad_row = _row(QLabel("bad: beyond"), self.threshold, QLabel("robust SD"))
        self.adapt_steps = QSpinBox()
        self.adapt_steps.setRange(0, 5000)
        self.adapt_steps.setSingleStep(100)
        self.adapt_steps.setSpecialValueText("off")
        self.adapt_steps.setSuffix(" steps")
        self.adapt_steps.setToolTip(
            "before reconstructing, adapt a copy of the model to this recording by masked "
            "reconstruction of its own frames (the frames each pass hides are kept out). "
            "200 steps raised R² on real recordings by up to 0.22 (docs: Quality), most on "
            "denoised traces such as CaImAn's; it takes that many training steps per k-fold pass"
        )
        form.addRow("Hide", self.hide_box)
        form.addRow(self.kfold_row)
        form.addRow(self.marked_row)
        form.addRow(self.bad_row)
        form.addRow("Adapt first", self.adapt_steps)
        self.calibrate_box = QCheckBox("calibrate the fill to this recording")
        self.calibrate_box.setChecked(True)
        self.calibrate_box.setToolTip(
            "interpolation-residual models (the default weights) fill hidden frames by linear "
            "interpolation plus a learned correction; this fits on the recording itself (the "
            "same hiding shifted in time, the hidden frames never scored) how far to bend the "
            "straight line towards a shape-preserving cubic (PCHIP) and towards a kriging fill "
            "(which averages away the noise at a gap's edges), and how much of the correction "
            "to keep, each in [0, 1]. One extra reconstruction per pass; no effect on the "
            "published models"
        )
        form.addRow("", self.calibrate_box)
        self.progress_bar = ProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        form.addRow(_row((self.progress_bar, 1), self.cancel_button))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form.addRow(self.status)
        layout.addWidget(actions)

        # -- scores --------------------------------------------------------------------------------
        scores = QGroupBox("Scores")
        form = QFormLayout(scores)
        self.colour_box = QComboBox()
        self.cmap_box = QComboBox()
        self.cmap_box.addItems(COLORMAPS)
        self.legend = ScoresLegend()
        self.export_button = QPushButton("Export… (CSV or NWB)")
        form.addRow("Colour by", _row((self.colour_box, 2), self.cmap_box))
        form.addRow(self.legend)
        form.addRow(self.export_button)
        layout.addWidget(scores)
        layout.addStretch(1)

        # -- wiring --------------------------------------------------------------------------------
        # (clicked passes a `checked` flag: call the actions without it)
        self.extract_button.clicked.connect(lambda: self.extract())
        self.reconstruct_button.clicked.connect(lambda: self.reconstruct())
        self.classify_button.clicked.connect(lambda: self.classify())
        self.export_button.clicked.connect(lambda: self.export_dialog())
        self.hide_box.currentIndexChanged.connect(self._show_hide_options)
        self.model_box.currentIndexChanged.connect(self._show_checkpoint_row)
        self.rois_box.currentIndexChanged.connect(self._inputs_changed)
        self.movie_box.currentIndexChanged.connect(self._inputs_changed)
        self.colour_box.currentIndexChanged.connect(self._recolour)
        self.cmap_box.currentIndexChanged.connect(self._recolour)
        models.registry.changed.connect(self._fill_models)
        layers = self.viewer.layers
        layers.events.inserted.connect(self._layers_changed)
        layers.events.removed.connect(self._layers_changed)
        layers.events.moved.connect(self._layers_changed)
        for layer in layers:
            layer.events.name.connect(self._layers_changed)
        layers.events.inserted.connect(self._watch_name)
        # the marked frames are shared with the trace plot, where they can be dragged out
        self.marks = marked_frames(self.viewer)
        self.frames_edit.setText(self.marks.text)
        self.frames_edit.textChanged.connect(self.marks.set_text)
        self.marks.changed.connect(self._on_marks_changed)
        self._fill_models()
        self._show_hide_options()
        self._layers_changed()

    def _on_marks_changed(self, text: str) -> None:
        """Frames marked in the trace plot: show them here and hide them on Reconstruct."""
        try:
            if self.frames_edit.text() != text:
                self.frames_edit.setText(text)
                if text:
                    self.set_hide("marked")
        except RuntimeError:  # Qt deleted this panel
            self.marks.changed.disconnect(self._on_marks_changed)

    # -- layer pickers -----------------------------------------------------------------------------
    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self._layers_changed)

    def _layers_changed(self, event=None) -> None:
        from napari.layers import Image, Labels

        self._updating = True
        try:
            # the pickers hold the layers themselves: a chosen layer stays chosen when renamed
            movie, rois = self.movie_layer(), self.roi_layer()
            movies = [
                l for l in reversed(self.viewer.layers)
                if isinstance(l, Image) and l.ndim == 3 and not l.rgb and not l.multiscale
            ]
            roi_layers = [
                l for l in reversed(self.viewer.layers)
                if isinstance(l, Labels) and not _is_scores_layer(l)
            ]
            self.movie_box.clear()
            self.movie_box.addItem("(none)", None)
            for layer in movies:
                self.movie_box.addItem(layer.name, layer)
            self.rois_box.clear()
            for layer in roi_layers:
                self.rois_box.addItem(layer.name, layer)
            if rois is None and roi_layers:  # prefer a layer with traces
                rois = ([l for l in roi_layers if recording_of(l)] or roi_layers)[0]
            if rois is not None:
                self.rois_box.setCurrentIndex(_index_of(self.rois_box, rois))
            if movie is None:
                movie = self._matching_movie(movies)
            self.movie_box.setCurrentIndex(max(0, _index_of(self.movie_box, movie)))
        finally:
            self._updating = False
        self._inputs_changed()

    def _matching_movie(self, movies: list):
        roi = self.roi_layer()
        if roi is None:
            return movies[0] if movies else None
        shape = tuple(np.shape(roi.data)[-2:])
        for movie in movies:
            if tuple(movie.data.shape[1:]) == shape:
                return movie
        if _imagej_rois(roi) is not None:  # drawn on a minimal canvas: any frame that holds them
            for movie in movies:
                if _fits_frame(roi.data, tuple(movie.data.shape[1:])):
                    return movie
        return None

    def roi_layer(self):
        return _still_there(self.rois_box.currentData(), self.viewer)

    def movie_layer(self):
        return _still_there(self.movie_box.currentData(), self.viewer)

    def scores_layer(self):
        roi = self.roi_layer()
        return scores_layer_of(self.viewer, roi) if roi is not None else None

    def _inputs_changed(self, event=None) -> None:
        if self._updating:
            return
        # prefill only for other inputs: a layer added, renamed or moved (the scores layer an
        # Extract adds) must not undo the frame rate or pixel size typed in meanwhile
        roi, movie = self.roi_layer(), self.movie_layer()
        inputs = (id(roi), id(movie), id(recording_of(roi)) if roi is not None else None)
        if inputs != self._prefilled_for:
            self._prefilled_for = inputs
            self._prefill()
        self._refresh_scores_ui()

    def _prefill(self) -> None:
        """Frame rate and pixel size from the recording, else from the layers' metadata."""
        roi, movie = self.roi_layer(), self.movie_layer()
        recording = recording_of(roi) if roi is not None else None
        found: dict[str, tuple[float | None, str]] = {}
        if recording is not None:
            found["frame_rate"] = (recording.frame_rate, "the recording")
            found["pixel_size_um"] = (recording.pixel_size_um, "the recording")
        for layer, where in ((movie, "the movie's metadata"), (roi, "the ROI layer's metadata")):
            if layer is None:
                continue
            metadata = dict(layer.metadata)
            truth = metadata.get("neurt_ground_truth")
            for key in ("frame_rate", "pixel_size_um"):
                value = metadata.get(key, getattr(truth, key, None))
                if key not in found and value:
                    found[key] = (float(value), where)
        notes = []
        if "frame_rate" in found:
            self.frame_rate.setValue(found["frame_rate"][0])
        else:
            notes.append("frame rate not in the metadata: check it")
        if found.get("pixel_size_um", (None,))[0]:
            self.pixel_size.setValue(found["pixel_size_um"][0])
        else:
            self.pixel_size.setValue(0)
            notes.append("pixel size unknown: neighbourhoods in pixels")
        sources = sorted({where for _, where in found.values()})
        if sources:
            notes.insert(0, "from " + " and ".join(sources))
        self.prefill_note.setText("; ".join(notes))

    # -- model picker ------------------------------------------------------------------------------
    def _fill_models(self) -> None:
        if not fill_model_box(self.model_box, models.model_choices()):  # Qt deleted this panel
            models.registry.changed.disconnect(self._fill_models)
            return
        self._show_checkpoint_row()

    def _show_checkpoint_row(self, *args) -> None:
        self.checkpoint_row.setVisible(self.model_box.currentData() == models.CHECKPOINT)

    def _browse_checkpoint(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "NEuRT checkpoint folder")
        if path:
            self.checkpoint_edit.setText(path)

    def set_model(self, source: str) -> None:
        """Pick a model: a built-in or session source, or a checkpoint path."""
        index = self.model_box.findData(str(source))
        if index >= 0:
            self.model_box.setCurrentIndex(index)
        else:
            self.model_box.setCurrentIndex(self.model_box.findData(models.CHECKPOINT))
            self.checkpoint_edit.setText(str(source))

    def model_source(self) -> str:
        source = self.model_box.currentData()
        if source == models.CHECKPOINT:
            path = self.checkpoint_edit.text().strip()
            if not path:
                raise ValueError("choose a checkpoint file or folder for the model")
            if not Path(path).exists():
                raise FileNotFoundError(f"the checkpoint {path} does not exist")
            return path
        return source

    # -- hide options ------------------------------------------------------------------------------
    def _show_hide_options(self, *args) -> None:
        mode = self.hide_box.currentData()
        self.kfold_row.setVisible(mode == "kfold")
        self.marked_row.setVisible(mode == "marked")
        self.bad_row.setVisible(mode == "bad")

    def set_hide(self, mode: str) -> None:
        self.hide_box.setCurrentIndex(self.hide_box.findData(mode))

    def mark_current_frame(self) -> None:
        frame = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 3 else 0
        text = self.frames_edit.text().strip()
        self.frames_edit.setText(f"{text}, {frame}" if text else str(frame))

    # -- state -------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None

    def _recording(self) -> tuple[Any, Recording]:
        """The ROI layer and its recording with the frame rate / pixel size as set here."""
        roi = self.roi_layer()
        if roi is None:
            raise ValueError("choose the ROIs: a Labels layer (open or draw one first)")
        recording = recording_of(roi)
        if recording is None:
            raise ValueError(
                f"{roi.name!r} has no traces yet: choose its movie and click Extract traces, or "
                "open a suite2p, CaImAn or NWB recording"
            )
        frame_rate, pixel = self.frame_rate.value(), self.pixel_size.value() or None
        # the boxes round (29.7597 Hz shows as 29.760): a value they show as it is, is unchanged
        if _shown_as(self.frame_rate, recording.frame_rate):
            frame_rate = recording.frame_rate
        if pixel is not None and recording.pixel_size_um is not None and _shown_as(
            self.pixel_size, recording.pixel_size_um
        ):
            pixel = recording.pixel_size_um
        if frame_rate != recording.frame_rate or pixel != recording.pixel_size_um:
            recording = replace(
                recording, frame_rate=frame_rate, pixel_size_um=pixel,
                metadata=dict(recording.metadata),
            )
        return roi, recording

    def _prior_analysis(self, roi, recording: Recording) -> core.Analysis:
        """The results so far for `recording`; none when its traces, frame rate or pixel size
        changed (earlier results no longer apply)."""
        previous = analysis_of(roi)
        if previous is not None and previous.recording is recording:
            return previous
        return core.Analysis(recording)

    def _layer_kwargs(self, roi) -> dict[str, Any]:
        return {"scale": tuple(roi.scale[-2:]), "translate": tuple(roi.translate[-2:])}

    def _start(self, name: str, make_steps, on_done) -> Job | None:
        if self.job is not None:
            from napari.utils.notifications import show_warning

            show_warning(f"{self.job.description} is still running: wait, or cancel it")
            return None
        self.job = Job(
            make_steps,
            description=f"NEuRT: {name}",
            on_done=on_done,
            on_progress=self._on_progress,
            on_finished=self._on_finished,
            owner=self,
        )
        self._set_running(True, name)
        return self.job.start()

    def _set_running(self, running: bool, name: str = "") -> None:
        for button in (self.extract_button, self.reconstruct_button, self.classify_button,
                       self.export_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self._stage = None
        if running:
            self.progress_bar.set_later(0, 0, 0)  # busy until the first step
            self.status.setText(f"{name}…")
        else:
            self.progress_bar.set_later(format="%p%")

    def _on_progress(self, item: Progress) -> None:
        # Cheap on purpose: this runs on the main thread during the job. A label whose text
        # changes size relays the whole panel out (and the window with it), so the counts go
        # into the bar's own text and the labels change only with the stage.
        if isinstance(item, ModelLoaded):
            self.device_label.setText(f"running on: {item.device}")
        total = max(int(item.total), 1)
        format = None
        if item.stage and item.stage != self._stage:
            self._stage = item.stage
            format = f"{item.stage}: %v/%m"
        self.progress_bar.set_later(0, total, min(int(item.done), total), format)

    def _on_finished(self, job: Job) -> None:
        self.job = None
        self._set_running(False)
        self.progress_bar.set_later(0, 1, 1 if job.error is None and not job.cancelled else 0)
        if job.cancelled:
            self.status.setText("cancelled: nothing was changed")
            self._pipeline = []
        elif job.error is not None:
            self.status.setText(job.error)
            self._pipeline = []
        elif self._pipeline:
            action, options = self._pipeline.pop(0)
            if self.roi_layer() is not self._pipeline_roi:  # each step reads the ROIs picker
                self.status.setText(
                    f"{self.status.text()}; stopped before {action}: the ROIs picker was changed "
                    "while the steps ran"
                )
                self._pipeline = []
            elif getattr(self, action)(**options) is None:
                self._pipeline = []

    def cancel(self) -> None:
        """Stop the running job at its next step; no layer is changed."""
        self._pipeline = []
        if self.job is not None:
            self.status.setText("cancelling…")
            self.job.cancel()

    def _refuse(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        from ..workers import describe_error

        message = describe_error(error)
        self.status.setText(message)
        show_error(message)

    def run_pipeline(self, steps: list[tuple[str, dict]]) -> Job | None:
        """Run actions one after the other, e.g. ``[("extract", {}), ("reconstruct",
        {"model": "neurt-microns"}), ("classify", {"model": "neurt-5xfad"})]``, all on the ROI
        layer chosen now; a failure, a cancel or another ROI layer chosen meanwhile stops the
        rest."""
        steps = list(steps)
        if not steps:
            return None
        action, options = steps[0]
        self._pipeline = steps[1:]
        self._pipeline_roi = self.roi_layer()  # the layer every step is for
        job = getattr(self, action)(**options)
        if job is None:
            self._pipeline = []
        return job

    def _apply(self, result: JobResult) -> None:
        """Put a job's results into the viewer (main thread, after the job ran to the end)."""
        from ..viewer import ensure_trace_dock, refresh_plots

        roi = result.roi_layer
        if roi not in self.viewer.layers:
            raise ValueError(f"the ROI layer {roi.name!r} was removed while NEuRT ran")
        apply_scores(self.viewer, result.scores, roi)
        metadata = {**roi.metadata, RECORDING_KEY: result.analysis.recording,
                    ANALYSIS_KEY: result.analysis}
        if result.roi_features is not None:
            roi.features = result.roi_features
        roi.metadata = metadata
        if self._prefilled_for is not None and self._prefilled_for[0] == id(roi):
            # the boxes hold what this recording was made with: no prefill for it
            self._prefilled_for = (*self._prefilled_for[:2], id(result.analysis.recording))
        if result.device:
            self.device_label.setText(f"running on: {result.device}")
        ensure_trace_dock(self.viewer)
        self._refresh_scores_ui()
        refresh_plots(self.viewer)
        self.status.setText(result.message)

    # -- actions -----------------------------------------------------------------------------------
    def extract(self) -> Job | None:
        """Extract dF/F traces of the ROIs from the movie."""
        from ...extraction import check_labels, check_movie

        try:
            roi, movie_layer = self.roi_layer(), self.movie_layer()
            if roi is None or movie_layer is None:
                raise ValueError(
                    "Extract traces needs a movie (an Image layer with time first) and its ROIs "
                    "(a Labels layer): choose both under Input"
                )
            movie = movie_layer.data
            n_frames, height, width = check_movie(movie)
            if np.ndim(roi.data) == 3 and np.shape(roi.data) == (n_frames, height, width):
                labels = _painted_over_time(np.asarray(roi.data), roi.name)
            else:
                labels = np.array(roi.data, copy=True)
            if labels.ndim != 2:
                raise ValueError(
                    f"the ROIs must be one 2-D label image (or a layer of the movie's shape, as "
                    f"napari's New labels layer makes, with each ROI painted once); {roi.name!r} "
                    f"has shape {labels.shape}"
                )
            placed = ""
            if labels.shape != (height, width) and _imagej_rois(roi) is not None:
                labels = _place_on_frame(labels, (height, width), roi.name)
                placed = f" (ROIs of {roi.name!r} placed on the movie's {height} × {width} frame)"
            labels = check_labels(labels, (height, width))
        except (ValueError, FileNotFoundError) as error:
            self._refuse(error)
            return None
        frame_rate = self.frame_rate.value()
        pixel = self.pixel_size.value() or None
        neuropil = self.neuropil.isChecked()
        source = f"{movie_layer.name} with ROIs {roi.name}"
        roi_name, layer_kwargs = roi.name, self._layer_kwargs(roi)
        extra = _extra_features(roi)
        colour, cmap = self.colour_box.currentData(), self.cmap_box.currentText()

        def steps():
            from ...extraction import delta_f_over_f, iter_extract

            extraction = yield from iter_extract(movie, labels, neuropil=neuropil)
            yield Progress(0, 1, "dF/F")
            dff = delta_f_over_f(extraction.traces, frame_rate)
            recording = Recording.from_labels(
                dff, labels, frame_rate, pixel_size_um=pixel, source=source,
                metadata={"trace_kind": "dF/F", "neuropil": neuropil},
            )
            analysis = core.Analysis(recording)
            data = scores_layer_data(
                analysis, roi_layer_name=roi_name, extra_features=extra, colour_by=colour,
                cmap=cmap, layer_kwargs=layer_kwargs,
            )
            yield Progress(1, 1, "dF/F")
            return JobResult(
                roi, analysis, data,
                message=f"extracted {recording.n_neurons} neurons × {recording.n_frames} frames"
                + placed,
                roi_features=_roi_features(recording, extra),
            )

        return self._start("extract traces", steps, self._apply)

    def reconstruct(self, model: str | None = None) -> Job | None:
        """Reconstruct with the chosen hiding; `model` overrides the picker."""
        try:
            if model is not None:
                self.set_model(model)
            roi, recording = self._recording()
            source, device = self.model_source(), self.device_box.currentText()
            mode = self.hide_box.currentData()
            frames = None
            if mode == "marked":
                frames = core.parse_frames(self.frames_edit.text(), recording.n_frames)
                if not frames.any():
                    raise ValueError("mark the frames to hide (e.g. 100-120, 300) first")
            movie = None
            if mode == "bad":
                movie_layer = self.movie_layer()
                if movie_layer is not None and movie_layer.data.shape[0] == recording.n_frames:
                    movie = movie_layer.data
        except (ValueError, FileNotFoundError) as error:
            self._refuse(error)
            return None
        prior = self._prior_analysis(roi, recording)
        options = dict(n_folds=self.folds.value(), span=self.span.value(),
                       batch_size=self.batch_size, adapt_steps=self.adapt_steps.value(),
                       calibrate=self.calibrate_box.isChecked())
        threshold = self.threshold.value()
        roi_name, layer_kwargs = roi.name, self._layer_kwargs(roi)
        extra = _extra_features(roi)
        cmap = self.cmap_box.currentText()

        def steps():
            model_ = yield from _load(source, device)
            hidden = frames
            if mode == "bad":
                if movie is not None:
                    quality = yield from core.iter_frame_quality(movie, threshold=threshold)
                    hidden = quality.bad
                else:
                    hidden = core.bad_frames_from_traces(recording.traces, threshold=threshold)
                if not hidden.any():
                    raise ValueError(
                        "no bad frames were found (lower the threshold to flag more)"
                    )
            result = yield from core.iter_reconstruct(
                model_, recording, hide=mode, frames=hidden, **options
            )
            result.parameters["model_source"] = source
            analysis = prior.with_results(reconstruction=result)
            data = scores_layer_data(
                analysis, roi_layer_name=roi_name, extra_features=extra, colour_by=None,
                cmap=cmap, layer_kwargs=layer_kwargs,
            )
            r2 = result.predictability
            summary = (
                f"median predictability R² {np.nanmedian(r2):.3f}" if np.isfinite(r2).any()
                else f"imputed {int(result.hidden.sum())} bad frames"
            )
            if calibrations := result.parameters["calibrations"]:
                from ...model import Calibration  # loaded with the model by now

                mean = {name: np.mean([c[name] for c in calibrations]) for name in calibrations[0]}
                summary += f"; calibrated: {Calibration(**mean).describe()}"
            return JobResult(roi, analysis, data, message=f"reconstructed: {summary}",
                             device=str(model_.device))

        return self._start("reconstruct", steps, self._apply)

    def classify(self, model: str | None = None) -> Job | None:
        """Classify the neurons and the recording; `model` overrides the picker."""
        try:
            if model is not None:
                self.set_model(model)
            roi, recording = self._recording()
            source, device = self.model_source(), self.device_box.currentText()
        except (ValueError, FileNotFoundError) as error:
            self._refuse(error)
            return None
        prior = self._prior_analysis(roi, recording)
        batch_size = self.batch_size
        roi_name, layer_kwargs = roi.name, self._layer_kwargs(roi)
        extra = _extra_features(roi)
        cmap = self.cmap_box.currentText()

        def steps():
            model_ = yield from _load(source, device)
            result = yield from core.iter_classify(model_, recording, batch_size=batch_size)
            result.parameters["model_source"] = source
            analysis = prior.with_results(classification=result)
            data = scores_layer_data(
                analysis, roi_layer_name=roi_name, extra_features=extra, colour_by=None,
                cmap=cmap, layer_kwargs=layer_kwargs,
            )
            from ...model.inference import verdict  # loaded with the model by now

            outcome = result.result
            probabilities = outcome.recording_class_probability
            message = f"classified: {verdict(outcome.class_names, probabilities)}"
            return JobResult(roi, analysis, data, message=message, device=str(model_.device))

        return self._start("classify", steps, self._apply)

    # -- scores ------------------------------------------------------------------------------------
    def _refresh_scores_ui(self) -> None:
        layer = self.scores_layer()
        self.colour_box.blockSignals(True)
        self.cmap_box.blockSignals(True)
        try:
            self.colour_box.clear()
            if layer is None:
                self.legend.show_info(None)
                return
            info = layer.metadata.get(SCORES_KEY, {})
            analysis = analysis_of(layer)
            for column in colour_columns(layer.features):
                self.colour_box.addItem(column_label(column, layer.features, analysis), column)
            self.colour_box.setCurrentIndex(max(self.colour_box.findData(info.get("column")), 0))
            if info.get("cmap"):
                self.cmap_box.setCurrentText(info["cmap"])
            self.legend.show_info(info)
        finally:
            self.colour_box.blockSignals(False)
            self.cmap_box.blockSignals(False)

    def _recolour(self, *args) -> None:
        layer = self.scores_layer()
        column = self.colour_box.currentData()
        if layer is None or column is None:
            return
        try:
            colours = recolour(layer, column, self.cmap_box.currentText())
        except ValueError as error:
            self._refuse(error)
            return
        self.legend.show_info(colours.legend())

    def colour_by(self, column: str, cmap: str | None = None) -> None:
        """Colour the scores layer by `column` (a features column) and optionally `cmap`."""
        if cmap is not None:
            self.cmap_box.setCurrentText(cmap)
        index = self.colour_box.findData(column)
        if index < 0:
            raise ValueError(f"no scores column {column!r} to colour by")
        self.colour_box.setCurrentIndex(index)
        self._recolour()

    def show_legend(self) -> None:
        """Scroll the panel so that the scores' legend is in view."""
        self.scroll.ensureWidgetVisible(self.legend)

    # -- export ------------------------------------------------------------------------------------
    def export_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export NEuRT results", "", "CSV tables (*.csv);;NWB file (*.nwb)"
        )
        if path:
            self.export(_with_suffix_of(path, chosen))

    def export(self, path: str | Path) -> Job | None:
        """Write traces, reconstruction and scores (with provenance) to `path` (.csv or .nwb)."""
        roi = self.roi_layer()
        analysis = analysis_of(roi) if roi is not None else None
        if analysis is None and roi is not None and recording_of(roi) is not None:
            analysis = core.Analysis(recording_of(roi))
        if analysis is None:
            self._refuse(ValueError("nothing to export yet: extract traces or open a recording"))
            return None

        def steps():
            from ...io.export import export_analysis

            yield Progress(0, 1, "writing")
            written = export_analysis(path, analysis)
            yield Progress(1, 1, "writing")
            return written

        def done(written) -> None:
            from napari.utils.notifications import show_info

            names = ", ".join(Path(p).name for p in written)
            self.status.setText(f"exported {names}")
            show_info(f"NEuRT results written to {Path(written[0]).parent}: {names}")

        return self._start("export", steps, done)


class ProgressBar(QProgressBar):
    """A QProgressBar whose value can change without painting at once.

    QProgressBar.setValue repaints synchronously; during a job, where values arrive several times
    a second, that costs a whole-window paint each time (tens of ms with software OpenGL).
    `set_later` lets the paint join the window's next one instead.
    """

    def set_later(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        value: int | None = None,
        format: str | None = None,
    ) -> None:
        """Change range, value and text; paint with the window's next paint."""
        self.setUpdatesEnabled(False)
        try:
            if maximum is not None and (self.minimum(), self.maximum()) != (minimum, maximum):
                self.setRange(minimum, maximum)
            if format is not None and self.format() != format:
                self.setFormat(format)
            if value is not None:
                self.setValue(value)
        finally:
            self.setUpdatesEnabled(True)
        self.update()

    def set_value_later(self, value: int) -> None:
        self.set_later(value=value)


def _row(*items) -> QWidget:
    """Widgets side by side (an item may be ``(widget, stretch)``)."""
    widget = QWidget()
    row = QHBoxLayout(widget)
    row.setContentsMargins(0, 0, 0, 0)
    for item in items:
        child, stretch = item if isinstance(item, tuple) else (item, 0)
        row.addWidget(child, stretch)
    return widget


def _load(source: str, device: str):
    """Step generator: load (or reuse) the model, then say which device it runs on."""
    yield Progress(0, 1, "loading model")
    model = models.get_model(source, device)
    yield ModelLoaded(1, 1, "model loaded", device=str(model.device))
    return model


def _imagej_rois(layer) -> str | None:
    """The ROI file of a labels layer drawn from ImageJ ROIs on their minimal canvas, else None."""
    from ..readers import IMAGEJ_ROIS_KEY

    info = dict(getattr(layer, "metadata", {}) or {}).get(IMAGEJ_ROIS_KEY)
    if isinstance(info, dict) and info.get("canvas") == "minimal":
        return str(info.get("path", ""))
    return None


def _fits_frame(labels, frame_shape: tuple[int, ...]) -> bool:
    """Whether 2-D `labels` anchored at (0, 0) have no ROI pixel outside `frame_shape`."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(frame_shape) != 2:
        return False
    height, width = frame_shape
    return not (labels[height:].any() or labels[:height, width:].any())


def _painted_over_time(labels: np.ndarray, name: str) -> np.ndarray:
    """ROIs painted into a Labels layer of the movie's shape (T, H, W), as napari's *New labels
    layer* button makes one over a movie: the 2-D image of the frames painted on.

    A ROI may be painted on any frame, or on several; a pixel that holds two different ROIs on
    different frames is an error, since the ROIs are the same in every frame.
    """
    painted = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    if len(painted) == 0:
        return np.zeros(labels.shape[1:], dtype=labels.dtype)
    frames = labels[painted]
    highest = frames.max(axis=0)
    lowest = np.where(frames != 0, frames, highest).min(axis=0)
    clash = np.argwhere(lowest != highest)
    if len(clash):
        y, x = clash[0]
        raise ValueError(
            f"{name!r} gives pixel ({y}, {x}) the ROIs {lowest[y, x]} and {highest[y, x]} on "
            f"different frames; ROIs are the same in every frame: paint each ROI once, or on "
            f"one frame only"
        )
    return highest


def _place_on_frame(labels: np.ndarray, frame_shape: tuple[int, int], name: str) -> np.ndarray:
    """ImageJ ROIs drawn on their minimal canvas (the reader's), placed on the movie's frame.

    Both canvases are anchored at (0, 0) and a pixel belongs to a ROI by its centre alone, so
    this is, pixel for pixel, what ``read_imagej_rois(path, shape=frame_shape)`` draws; unlike
    drawing again, it keeps what was painted into the layer and needs no file. The layer itself is
    not changed. A ValueError names the labels that lie (partly) outside the frame.
    """
    height, width = frame_shape
    if not _fits_frame(labels, frame_shape):
        outside = labels.copy()
        outside[:height, :width] = 0
        ids = np.unique(outside[outside > 0])
        rows, cols = np.nonzero(labels)
        shown = ", ".join(str(int(i)) for i in ids[:10]) + (", …" if len(ids) > 10 else "")
        raise ValueError(
            f"{'the ROIs labelled' if len(ids) > 1 else 'the ROI labelled'} {shown} in {name!r} "
            f"{'lie' if len(ids) > 1 else 'lies'} partly or wholly outside the movie's "
            f"{height} × {width} frame: the ROIs reach {int(rows.max()) + 1} × "
            f"{int(cols.max()) + 1} pixels. Were they drawn on this movie? Choose the movie they "
            "belong to, or remove those ROIs."
        )
    placed = np.zeros(frame_shape, dtype=labels.dtype)
    rows, cols = min(labels.shape[0], height), min(labels.shape[1], width)
    placed[:rows, :cols] = labels[:rows, :cols]
    return placed


def _extra_features(layer):
    """The ROI layer's own per-label columns (e.g. suite2p's iscell), or None."""
    features = getattr(layer, "features", None)
    if features is None or not len(features) or "index" not in features.columns:
        return None
    return features.copy()


def _roi_features(recording: Recording, extra):
    """The ROI layer's features after an extraction: like the readers' (background first)."""
    import pandas as pd

    ids = recording.neuron_ids
    frame = pd.DataFrame({
        "index": np.concatenate([[0], ids]),
        "neuron_id": np.concatenate([[0], ids]),
        "centroid_y": np.concatenate([[np.nan], recording.centroids[:, 0]]),
        "centroid_x": np.concatenate([[np.nan], recording.centroids[:, 1]]),
    })
    if extra is not None:
        others = [c for c in extra.columns if c not in frame.columns]
        if others:
            frame = frame.join(extra.drop_duplicates("index").set_index("index")[others], on="index")
    return frame
