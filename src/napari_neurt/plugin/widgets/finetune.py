"""`FineTuneWidget` (*NEuRT fine-tune*): teach NEuRT to tell groups of animals apart.

Pick labelled recordings (a CSV manifest with columns path, animal, label, or a folder with one
sub-folder per class; see `napari_neurt.training.labelled_recordings`), a model to start from
and an output folder, and run `napari_neurt.training.iter_finetune` in a worker. The training
and validation losses are plotted live; when training ends the held-out animals' accuracy is
shown and the new checkpoint is added to the model picker of every NEuRT analysis panel
(`models.registry`).

*Stop early* ends training after the current step and still evaluates and saves the model;
*Cancel* throws the run away (nothing is saved).

The training API is called through `finetune_steps`, a function with the signature of
`iter_finetune` (``data, out_dir, config, *, base, stop``) that returns a step generator whose
items have ``done``, ``total``, ``stage``, ``loss`` and ``validation_loss`` (NaN where none was
computed; both are plotted) and which returns an object with ``folder`` and ``report``; tests may
replace it.
"""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import models
from ..workers import Job
from .analysis import ProgressBar, _row
from .base import PlotWidget, fill_model_box, unwrap

if TYPE_CHECKING:
    import napari


PLOT_INTERVAL_S = 0.5  # the live loss plot is redrawn at most this often


def _default_finetune_steps(*args, **kwargs):
    from ...training import iter_finetune

    return iter_finetune(*args, **kwargs)


class LossPlot(PlotWidget):
    """Training loss (each step and its running mean) and validation loss against steps."""

    def __init__(self, viewer, parent=None):
        super().__init__(viewer, parent, figsize=(4, 2.2), min_height=160)
        (self.loss_line,) = self.axes.plot([], [], lw=0.6, color="#3fa7ff", alpha=0.5)
        (self.smooth_line,) = self.axes.plot([], [], lw=1.2, color="#3fa7ff", label="training")
        (self.validation_line,) = self.axes.plot(
            [], [], "o-", ms=3, lw=1.0, color="#ff9f1c", label="validation"
        )
        self.axes.set_xlabel("step")
        self.axes.set_ylabel("loss")
        self._apply_theme()
        self.reset()

    def on_theme(self) -> None:
        legend = self.axes.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(self.background_color)
            for text in legend.get_texts():
                text.set_color(self.text_color)

    def reset(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validation: list[tuple[int, float]] = []
        legend = self.axes.get_legend()
        if legend is not None:
            legend.remove()
        self.draw()

    def add(self, item) -> None:
        loss = getattr(item, "loss", None)
        if loss is not None and np.isfinite(loss):
            self.steps.append(int(item.done))
            self.losses.append(float(loss))
        validation = getattr(item, "validation_loss", None)
        if validation is not None and np.isfinite(validation):
            self.validation.append((int(item.done), float(validation)))

    def draw(self) -> None:
        steps, losses = np.asarray(self.steps), np.asarray(self.losses)
        self.loss_line.set_data(steps, losses)
        if len(losses):
            k = max(1, min(25, len(losses) // 10))
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            self.smooth_line.set_data(steps[k - 1 :], smooth)
            values = np.concatenate([losses, [v for _, v in self.validation]])
            self.axes.set_xlim(0, max(int(steps.max()), 1))
            low, high = float(values.min()), float(values.max())
            pad = 0.05 * (high - low or 1.0)
            self.axes.set_ylim(low - pad, high + pad)
        else:
            self.smooth_line.set_data([], [])
        if self.validation:
            v = np.asarray(self.validation)
            self.validation_line.set_data(v[:, 0], v[:, 1])
            if self.axes.get_legend() is None:
                self.axes.legend(loc="upper right", fontsize=7, framealpha=0.6)
                self.on_theme()
        else:
            self.validation_line.set_data([], [])
        self.canvas.draw_idle()


class FineTuneWidget(QWidget):
    """Fine-tune a NEuRT classifier on labelled recordings (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = unwrap(viewer)
        self.job: Job | None = None
        self.stop_flag = threading.Event()
        self.items: list | None = None
        self.result: Any = None
        self.finetune_steps = _default_finetune_steps
        self.config_overrides: dict[str, Any] = {}

        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("manifest.csv (path, animal, label) or class folders")
        csv_button = QPushButton("CSV…")
        csv_button.clicked.connect(lambda: self._browse_data(folder=False))
        folder_button = QPushButton("folder…")
        folder_button.clicked.connect(lambda: self._browse_data(folder=True))
        form.addRow("Recordings", _row((self.data_edit, 1), csv_button, folder_button))
        self.data_summary = QLabel("")
        self.data_summary.setWordWrap(True)
        form.addRow(self.data_summary)
        self.data_edit.editingFinished.connect(lambda: self.load_data())

        self.base_box = QComboBox()
        self.base_edit = QLineEdit()
        self.base_edit.setPlaceholderText("checkpoint folder or .pth to start from")
        form.addRow("Start from", self.base_box)
        form.addRow(self.base_edit)
        self.out_edit = QLineEdit()
        out_button = QPushButton("…")
        out_button.setFixedWidth(28)
        out_button.clicked.connect(self._browse_out)
        form.addRow("Save to", _row((self.out_edit, 1), out_button))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(1200)  # FinetuneConfig's defaults
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setSpecialValueText("0 (encoder frozen)")
        self.lr_spin.setValue(0.0)
        self.lr_spin.setToolTip(
            "learning rate of the encoder's top block (lower blocks decayed as published). 0 "
            "keeps the pretrained encoder frozen and trains the classifier heads only: the "
            "recipe measured in the quality report, and the model's reconstructions stay as "
            "they were. Above 0 (for example 1e-4, the earlier default) the encoder learns too"
        )
        form.addRow("Steps", _row(self.steps_spin, QLabel("encoder lr"), self.lr_spin))
        self.evaluation_box = QComboBox()
        self.evaluation_box.addItem("hold out one animal per class", "split")
        self.evaluation_box.addItem("leave one animal out (small cohorts)", "leave-one-animal-out")
        form.addRow("Evaluation", self.evaluation_box)
        self.pooling_box = QComboBox()
        self.pooling_box.addItem("neurons' evidence (weights argue for the class)", "evidence")
        self.pooling_box.addItem("gated attention next to the mean neuron", "gated")
        self.pooling_box.setToolTip(
            "how the recording head pools its neurons. Evidence: each neuron argues for a class "
            "and a neuron's weight is its share of the evidence, so the painted weights point "
            "at the neurons that make the recording look like that class. Gated: the weights "
            "say what the head looked at, on either side (docs: Fine-tuning)"
        )
        form.addRow("Recording head", self.pooling_box)
        self.statistics_box = QCheckBox("recording head also reads activity statistics")
        self.statistics_box.setToolTip(
            "each neuron's event rate and correlations (with the other neurons and with its "
            "neighbourhood), and its neighbourhood's event rate, next to its embedding "
            "(docs: Fine-tuning)"
        )
        self.statistics_box.setChecked(True)
        form.addRow("", self.statistics_box)
        self.whole_fit_box = QComboBox()
        self.whole_fit_box.addItem("with 8 or more animals per class", None)
        self.whole_fit_box.addItem("always", True)
        self.whole_fit_box.addItem("never", False)
        self.whole_fit_box.setToolTip(
            "after training on bags of neurons, fit the evidence head's weighing of the pooled "
            "evidence and of the mean neuron to the whole training recordings (the neuron "
            "attention stays as trained). On simulated cohorts it helped with 8 animals per "
            "class and cost with 4, so by default it is made only with 8 or more "
            "(docs: Fine-tuning)"
        )
        form.addRow("Whole-recording fit", self.whole_fit_box)
        self.pooling_box.currentIndexChanged.connect(
            lambda _: self.whole_fit_box.setEnabled(self.pooling_box.currentData() == "evidence")
        )
        self.device_box = QComboBox()
        self.device_box.addItems(models.device_choices())
        form.addRow("Device", self.device_box)

        self.run_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop early")
        self.stop_button.setToolTip("end after this step; the model so far is evaluated and saved")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop now and keep nothing")
        self.run_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(lambda: self.stop_early())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        layout.addWidget(_row(self.run_button, self.stop_button, self.cancel_button))
        self.progress_bar = ProgressBar()
        self.progress_bar.setRange(0, 1)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.plot = LossPlot(self.viewer)
        layout.addWidget(self.plot)
        self._set_running(False)
        models.registry.changed.connect(self._fill_models)
        self._fill_models()
        self.base_box.currentIndexChanged.connect(self._show_base_edit)
        self._show_base_edit()

    # -- pickers -----------------------------------------------------------------------------------
    def _fill_models(self) -> None:
        # not neurt-5xfad: a classifier already; fine-tuning starts from an encoder
        choices = [c for c in models.model_choices() if c.source != "neurt-5xfad"]
        if not fill_model_box(self.base_box, choices, "neurt-microns"):  # Qt deleted this panel
            models.registry.changed.disconnect(self._fill_models)

    def _show_base_edit(self, *args) -> None:
        self.base_edit.setVisible(self.base_box.currentData() == models.CHECKPOINT)

    def set_base(self, source: str) -> None:
        index = self.base_box.findData(str(source))
        if index < 0:
            index = self.base_box.findData(models.CHECKPOINT)
            self.base_edit.setText(str(source))
        self.base_box.setCurrentIndex(index)

    def _browse_data(self, folder: bool) -> None:
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Folder with one sub-folder per class")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Manifest", "", "CSV (*.csv)")
        if path:
            self.data_edit.setText(path)
            self.load_data()

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the fine-tuned model")
        if path:
            self.out_edit.setText(path)

    def load_data(self) -> list | None:
        """Read the manifest or class folders and summarise them; None (and a message) if bad."""
        from ...training import labelled_recordings

        text = self.data_edit.text().strip()
        if not text:
            self.items = None
            self.data_summary.setText("")
            return None
        try:
            items = labelled_recordings(text)
        except (ValueError, OSError, TypeError, csv.Error) as error:
            self.items = None
            self.data_summary.setText(f"cannot use these recordings: {error}")
            return None
        by_class: dict[str, set] = {}
        for item in items:
            by_class.setdefault(item.label, set()).add(item.animal)
        classes = ", ".join(f"{label}: {len(a)} animals" for label, a in sorted(by_class.items()))
        self.items = items
        self.data_summary.setText(f"{len(items)} recordings; {classes}")
        if not self.out_edit.text().strip():
            base = Path(text)
            self.out_edit.setText(str((base if base.is_dir() else base.parent) / "neurt-finetuned"))
        return items

    # -- running -----------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.cancel_button.setEnabled(running)

    def _config(self):
        from ...training import FinetuneConfig

        values = {
            "steps": self.steps_spin.value(),
            "lr": self.lr_spin.value(),
            "evaluation": self.evaluation_box.currentData(),
            "activity_statistics": self.statistics_box.isChecked(),
            "whole_recording_fit": self.whole_fit_box.currentData(),
            "recording_pooling": self.pooling_box.currentData(),
            "device": self.device_box.currentText(),
            **self.config_overrides,
        }
        known = {f.name for f in fields(FinetuneConfig)}
        return FinetuneConfig(**{k: v for k, v in values.items() if k in known})

    def start(self) -> Job | None:
        """Start fine-tuning with the settings shown."""
        from napari.utils.notifications import show_error

        try:
            if self.job is not None:
                raise ValueError("fine-tuning is already running")
            items = self.items if self.items is not None else self.load_data()
            if items is None:
                raise ValueError(
                    self.data_summary.text()
                    or "choose the labelled recordings (a manifest CSV or class folders)"
                )
            out = self.out_edit.text().strip()
            if not out:
                raise ValueError("choose a folder to save the fine-tuned model in")
            base = self.base_box.currentData()
            if base == models.CHECKPOINT:
                base = self.base_edit.text().strip()
                if not base or not Path(base).exists():
                    raise FileNotFoundError(f"the checkpoint to start from {base!r} does not exist")
            config = self._config()
        except (ValueError, OSError, TypeError, csv.Error) as error:
            self.status.setText(str(error))
            show_error(str(error))
            return None
        self.stop_flag = threading.Event()
        stop = self.stop_flag
        run = self.finetune_steps
        self._stage, self._last_plot = None, 0.0
        self.plot.reset()
        self.result = None

        def steps():
            return (yield from run(items, out, config, base=base, stop=stop))

        self.job = Job(steps, description="NEuRT fine-tune", on_done=self._done,
                       on_progress=self._on_progress, on_finished=self._finished,
                       keeps_late_result=True, owner=self)
        self._set_running(True)
        self.status.setText("fine-tuning…")
        self.progress_bar.set_later(0, 0, 0)
        return self.job.start()

    def stop_early(self) -> None:
        """End training after the current step; the model so far is evaluated and saved."""
        if self.job is not None:
            self.stop_flag.set()
            self.status.setText("stopping after this step…")

    def cancel(self) -> None:
        """Stop now; nothing is saved or added (unless the model is being saved already: a
        cancel after the last step cannot undo that, and the panel says it was saved)."""
        if self.job is not None:
            self.status.setText("cancelling…")
            self.job.cancel()

    def _on_progress(self, item) -> None:
        # runs on the main thread during training: keep it cheap (no relayout, few redraws)
        total = max(int(item.total), 1)
        self.progress_bar.set_later(0, total, min(int(item.done), total))
        self.plot.add(item)
        now = time.perf_counter()
        if now - self._last_plot > PLOT_INTERVAL_S or item.done >= item.total:
            self._last_plot = now
            self.plot.draw()
        stage = (item.stage or "").split(" loss")[0]
        if stage != self._stage:
            self._stage = stage
            self.progress_bar.set_later(format=f"{stage}: %v/%m" if stage else "%v/%m")

    def _done(self, result) -> None:
        from napari.utils.notifications import show_info

        self.result = result
        folder = Path(result.folder)
        choice = models.registry.add(folder)  # named apart from other folders of its name
        summary = getattr(getattr(result, "report", None), "summary", None) or {}
        accuracy = next(
            (summary[k] for k in ("animal_accuracy", "recording_accuracy", "accuracy")
             if isinstance(summary.get(k), (int, float))),
            None,
        )
        text = f"saved {folder}" + (f"; held-out accuracy {accuracy:.2f}" if accuracy is not None
                                    else "")
        if getattr(result, "stopped", False):
            text += " (stopped early)"
        if self.job is not None and self.job.cancelled:
            text += " (Cancel came after it was saved)"
        self.status.setText(text + f"; pick it as “{choice.label}” in NEuRT analysis")
        show_info(f"NEuRT fine-tune: {text}")

    def _finished(self, job) -> None:
        self.job = None
        self._set_running(False)
        self.plot.draw()
        saved = job.error is None and (job.late or not job.cancelled)
        self.progress_bar.set_later(0, 1, 1 if saved else 0, "%p%")
        if job.cancelled and not job.late:
            self.status.setText("cancelled: nothing was saved")
        elif job.error:
            self.status.setText(job.error)
