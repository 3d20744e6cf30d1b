"""Does napari stay responsive while NEuRT runs? Event-loop stalls during a reconstruction, and
the cost of a selection in the trace plot.

    xvfb-run -a .venv/bin/python benchmarks/gui.py                       # tiny random model
    NEURT_WEIGHTS_DIR=../shared/neurt_official \\
        xvfb-run -a .venv/bin/python benchmarks/gui.py --model neurt-microns

A QTimer fires every `--tick` ms on the main thread and records when it really ran. Any gap
longer than the tick is time the event loop could not run (a stall): the viewer would not
repaint or answer the mouse. The probe runs first with nothing to do (the baseline: what the
machine itself costs), then while the *NEuRT analysis* panel reconstructs the simulated
two-photon sample (every frame in turn, k-fold) in its worker, as a user would start it.

Each reconstruction is split into its start (from the click until the first batch, the model
loaded), its run, and its end (from the job's end until a second later: the results shown).

Then the selection cost on a 10,000-frame recording: the trace plot's own work (its handler and
the repaint of its canvas), the whole path from setting `selected_label` until the plot's canvas
is painted, and napari's own reaction to `selected_label` without the plot.

Target: the longest stall under 100 ms; a selection under 50 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tiny_checkpoint(folder: Path) -> str:
    import torch

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint

    torch.manual_seed(0)
    config = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2,
                         mil_hidden=8)
    return str(save_checkpoint(folder / "tiny", Neurt(config), class_names=("a", "b")))


class Probe:
    """Records the real times at which a `tick_ms` QTimer fires."""

    def __init__(self, tick_ms: int):
        from qtpy.QtCore import QTimer

        self.tick = tick_ms / 1000
        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self) -> None:
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        self.times.append(time.perf_counter())
        return self.summary()

    def summary(self, first: float | None = None, last: float | None = None) -> dict:
        """Stalls that began between `first` and `last` (perf_counter times; default: all)."""
        times = np.asarray(self.times)
        gaps = np.diff(times)
        stalls = np.maximum(gaps - self.tick, 0)
        began = times[:-1]
        keep = np.ones(len(gaps), bool)
        if first is not None:
            keep &= began >= first
        if last is not None:
            keep &= began < last
        if not keep.any():
            return {"seconds": 0.0, "ticks": 0, "longest_stall_ms": 0.0, "longest_at_s": 0.0,
                    "p99_stall_ms": 0.0, "stalls_over_50ms": 0, "stalls_over_100ms": 0}
        stalls, began = stalls[keep], began[keep]
        worst = int(stalls.argmax())
        return {
            "seconds": float(began[-1] + self.tick - began[0]) if len(began) else 0.0,
            "ticks": len(stalls),
            "longest_stall_ms": 1000 * float(stalls.max()),
            "longest_at_s": float(began[worst] - times[0]),
            "p99_stall_ms": 1000 * float(np.percentile(stalls, 99)),
            "stalls_over_50ms": int((stalls > 0.05).sum()),
            "stalls_over_100ms": int((stalls > 0.1).sum()),
        }


def spin(seconds: float | None = None, until=None, timeout: float = 1800) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while True:
        QApplication.processEvents()
        now = time.perf_counter() - start
        if seconds is not None and now >= seconds:
            return
        if until is not None and until():
            return
        if now > timeout:
            raise TimeoutError("the job did not finish in time")
        time.sleep(0.001)


def stalls_during_reconstruction(args, model: str) -> None:
    import napari

    from napari_neurt import simulate
    from napari_neurt.plugin.samples import layer_data
    from napari_neurt.plugin.viewer import ensure_analysis_dock, ensure_trace_dock

    sample = simulate.two_photon(shape=(128, 128), n_cells=args.cells, n_frames=args.frames,
                                 seed=0)
    viewer = napari.Viewer(show=True)
    for data, kwargs, kind in layer_data(sample, "two-photon"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    panel = ensure_analysis_dock(viewer)
    ensure_trace_dock(viewer)
    panel.device_box.setCurrentText(args.device)
    spin(1.0)
    probe = Probe(args.tick)

    probe.start()
    spin(3.0)
    baseline = probe.stop()

    # napari's own cost of adding a layer (the first results add the scores and marker layers)
    from napari.components import LayerList

    insert, added = LayerList.insert, []

    def timed_insert(self, index, layer):
        start = time.perf_counter()
        try:
            return insert(self, index, layer)
        finally:
            added.append((type(layer).__name__, time.perf_counter() - start))

    LayerList.insert = timed_insert
    probe.start()
    panel.extract()
    spin(until=lambda: panel.job is None)
    spin(1.0)  # what the results cost to show
    extract = probe.stop()
    LayerList.insert = insert

    panel.set_model(model)
    panel.set_hide("kfold")
    panel.folds.setValue(args.folds)
    runs = []
    for _ in range(2):  # the first run also loads the model (and torch's lazy imports)
        # one probe over the whole job and the second after it (redraws after the results);
        # its stalls split by when they began: start (from the click to the first progress
        # after the model is loaded), run, end (from the job's end on)
        marks = {}
        apply = panel._apply

        def timed_apply(result):  # the job's end: its results start to be shown
            marks["ended"] = time.perf_counter()
            return apply(result)

        panel._apply = timed_apply  # (the job takes panel._apply when it starts)
        probe.start()
        clicked = probe.times[0]
        job = panel.reconstruct()

        def note():
            progress = job.last_progress
            if "running" not in marks and progress is not None and progress.stage not in (
                "loading model", "model loaded"
            ):
                marks["running"] = time.perf_counter()
            return panel.job is None

        spin(until=note)
        spin(1.0)
        del panel._apply
        marks.setdefault("ended", time.perf_counter())
        whole = probe.stop()
        running = marks.get("running", marks["ended"])
        runs.append({
            "whole": whole,
            "start": probe.summary(clicked, running),
            "run": probe.summary(running, marks["ended"]),
            "end": probe.summary(marks["ended"]),
        })
        if job.error:  # e.g. the model could not be loaded: its message, not a traceback
            viewer.close()
            sys.exit(f"benchmarks/gui.py: {job.error}")
    scores = panel.scores_layer()
    probe.start()
    for label in sample.labels.max() // 2 + np.arange(20) % 7:
        scores.selected_label = int(label)
        spin(0.05)
    selecting = probe.stop()
    device = panel.device_label.text()
    viewer.close()

    print(f"\nevent-loop stalls (QTimer every {args.tick} ms), {sample.n_cells} cells x "
          f"{sample.n_frames} frames, model {model}, {device}")
    print("| phase | seconds | longest stall (ms) | at (s) | 99th pct (ms) | stalls > 50 ms "
          "| > 100 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("idle (baseline)", baseline), ("extract traces (first job)", extract)]
    for number, run in enumerate(runs):
        name = f"reconstruct ({args.folds}-fold), " + ("first run" if number == 0 else "again")
        rows += [(name, run["whole"]), ("  start (click to first batch)", run["start"]),
                 ("  running", run["run"]), ("  end (results shown, 1 s after)", run["end"])]
    rows.append(("selecting neurons", selecting))
    for name, row in rows:
        print(f"| {name} | {row['seconds']:.1f} | {row['longest_stall_ms']:.0f} | "
              f"{row['longest_at_s']:.1f} | {row['p99_stall_ms']:.0f} | {row['stalls_over_50ms']} | "
              f"{row['stalls_over_100ms']} |")
    print("napari adding a layer at the end of the extraction: " + ", ".join(
        f"{kind} {1000 * seconds:.0f} ms" for kind, seconds in added))


def selection_cost(args) -> None:
    import napari
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_widgets_views import long_analysis  # a 30-neuron x 10,000-frame analysis

    from napari_neurt.plugin.viewer import add_recording, ensure_trace_dock

    viewer = napari.Viewer(show=True)
    out = long_analysis()
    add_recording(viewer, analysis=out, name="long", show_panel=False)
    plot = ensure_trace_dock(viewer)
    scores = viewer.layers["long scores"]
    viewer.window.resize(args.width, 900)
    spin(1.0)
    labels = [5, 9, 14, 21, 3, 28, 11, 17, 6, 25] * 3

    class PaintWatch(QObject):
        """Notes when the plot's canvas is painted."""

        painted = False

        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                self.painted = True
            return False

    watch = PaintWatch()
    plot.canvas.installEventFilter(watch)

    # 1. the plot alone: its handler, then the paint it asks for, forced at once
    handler, paint = [], []
    for label in labels:
        with scores.events.selected_label.blocker():
            scores.selected_label = label
        start = time.perf_counter()
        plot._on_selected_label()
        middle = time.perf_counter()
        plot.canvas.repaint()
        handler.append(middle - start)
        paint.append(time.perf_counter() - middle)
    spin(0.3)

    # 2. end to end, as a click on a neuron does it: from setting selected_label until the
    # event loop has painted the plot's canvas (napari's own reaction, its canvas included)
    in_handler = []
    draw = plot.draw

    def timed_draw(*a, **k):
        start = time.perf_counter()
        try:
            return draw(*a, **k)
        finally:
            in_handler.append(time.perf_counter() - start)

    plot.draw = timed_draw
    end_to_end = []
    for label in labels:
        watch.painted = False
        start = time.perf_counter()
        scores.selected_label = label + 1
        while not watch.painted and time.perf_counter() - start < 2:
            QApplication.processEvents()
        end_to_end.append(time.perf_counter() - start)
        spin(0.05)
    plot.draw = draw

    # 3. napari's reaction alone (the plot disconnected): until the event loop is idle again
    scores.events.selected_label.disconnect(plot._on_selected_label)
    napari_only = []
    for label in labels:
        start = time.perf_counter()
        scores.selected_label = label
        QApplication.processEvents()
        napari_only.append(time.perf_counter() - start)
        spin(0.05)
    size = f"{plot.canvas.width()} x {plot.canvas.height()}"
    viewer.close()
    print(f"\nselection on 10,000-frame traces (plot canvas {size} px), median / max over "
          f"{len(labels)} selections (ms):")
    print("| what | median | max |")
    print("|---|---:|---:|")
    for name, values in (
        ("trace plot's handler (new data, blit into its buffer)", handler),
        ("repaint of the plot's canvas, forced at once", paint),
        ("end to end: selected_label set -> plot painted", end_to_end),
        ("  of which the plot's handler", in_handler),
        ("napari alone (plot disconnected): selected_label set -> idle", napari_only),
    ):
        values = np.asarray(values)
        print(f"| {name} | {1000 * np.median(values):.0f} | {1000 * values.max():.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model source (default: a tiny random checkpoint)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--tick", type=int, default=10, help="probe interval in ms")
    parser.add_argument("--skip-selection", action="store_true")
    parser.add_argument("--skip-stalls", action="store_true")
    parser.add_argument("--width", type=int, default=1400, help="window width for the selection")
    args = parser.parse_args()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("needs a display: run it under xvfb-run -a", file=sys.stderr)
        return 2
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f}")
    if not args.skip_stalls:
        with tempfile.TemporaryDirectory() as folder:
            model = args.model or tiny_checkpoint(Path(folder))
            stalls_during_reconstruction(args, model)
    if not args.skip_selection:
        selection_cost(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
