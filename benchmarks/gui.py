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

Then the selection cost on a 10,000-frame recording: the trace plot's own work (its handler and
the repaint of its canvas), and the whole of napari's reaction to `selected_label` with and
without the plot.

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
        gaps = np.diff(self.times)
        stalls = np.maximum(gaps - self.tick, 0)
        worst = int(stalls.argmax())
        return {
            "seconds": self.times[-1] - self.times[0],
            "ticks": len(gaps),
            "longest_stall_ms": 1000 * float(stalls.max()),
            "longest_at_s": self.times[worst] - self.times[0],
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

    panel.extract()
    probe.start()
    spin(until=lambda: panel.job is None)
    extract = probe.stop()

    panel.set_model(model)
    panel.set_hide("kfold")
    panel.folds.setValue(args.folds)
    runs = []
    for _ in range(2):  # the first run also loads the model (and torch's lazy imports)
        probe.start()
        job = panel.reconstruct()
        spin(until=lambda: panel.job is None)
        runs.append(probe.stop())
        if job.error:
            raise RuntimeError(job.error)
        spin(1.0)
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
    for name, row in (("idle (baseline)", baseline), ("extract traces (first job)", extract),
                      (f"reconstruct ({args.folds}-fold), first run", runs[0]),
                      (f"reconstruct ({args.folds}-fold), again", runs[1]),
                      ("selecting neurons", selecting)):
        print(f"| {name} | {row['seconds']:.1f} | {row['longest_stall_ms']:.0f} | "
              f"{row['longest_at_s']:.1f} | {row['p99_stall_ms']:.0f} | {row['stalls_over_50ms']} | "
              f"{row['stalls_over_100ms']} |")


def selection_cost(args) -> None:
    import napari
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

    handler, paint = [], []

    def measure(connected: bool):
        own, total = [], []
        for label in labels:
            if connected:
                with scores.events.selected_label.blocker():
                    scores.selected_label = label
                start = time.perf_counter()
                plot._on_selected_label()
                middle = time.perf_counter()
                plot.canvas.repaint()
                own.append(time.perf_counter() - start)
                handler.append(middle - start)
                paint.append(time.perf_counter() - middle)
            start = time.perf_counter()
            scores.selected_label = label + 1
            QApplication.processEvents()
            total.append(time.perf_counter() - start)
        return np.array(own), np.array(total)

    own, with_plot = measure(True)
    scores.events.selected_label.disconnect(plot._on_selected_label)
    _, without_plot = measure(False)
    size = f"{plot.canvas.width()} x {plot.canvas.height()}"
    viewer.close()
    print(f"\nselection on 10,000-frame traces (plot canvas {size} px), median / max over "
          f"{len(labels)} selections (ms):")
    print("| what | median | max |")
    print("|---|---:|---:|")
    for name, values in (("trace plot's own update (handler + repaint)", own),
                         ("  of which the handler (data, blit into the buffer)", np.array(handler)),
                         ("  of which the repaint of the window region", np.array(paint)),
                         ("napari's reaction to selected_label, with the plot", with_plot),
                         ("napari's reaction to selected_label, without the plot",
                          without_plot)):
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
