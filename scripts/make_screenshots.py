"""Make the documentation's screenshots from the real napari-neurt widgets.

    xvfb-run -a .venv/bin/python scripts/make_screenshots.py            # -> docs/images/*.png

What it does is what a user does in the GUI tutorial (docs/gui.md): open the simulated two-photon
sample (the one `neurt demo` shows), dock the *NEuRT analysis* panel and the *NEuRT traces* plot,
run Extract traces, Reconstruct (every frame in turn) and Classify with the embedded default
weights, select a neuron, then open the *NEuRT attention map* and run a short *NEuRT fine-tune* on
a small simulated cohort. Each picture is taken from the live widgets, so rerunning the script
after the weights or the widgets change brings the documentation up to date.

Pictures are downscaled to at most ``--max-width`` pixels and quantised to a 256-colour palette,
so that each PNG stays small (about 100-250 KB).

Needs an X display: run it under ``xvfb-run -a`` on a machine without a screen (napari cannot
draw its layers with Qt's offscreen platform).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="folder for the PNG files (default docs/images)")
    parser.add_argument("--model", default="default",
                        help="weights to run (default: the embedded default weights)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--max-width", type=int, default=1400,
                        help="downscale wider pictures to this width (default 1400)")
    parser.add_argument("--no-finetune", action="store_true",
                        help="skip the fine-tune picture (the slowest one, a few minutes)")
    return parser.parse_args(argv)


# -- pictures --------------------------------------------------------------------------------------
def save_png(image, path: Path, max_width: int) -> Path:
    """Save an RGB(A) array or PIL image as a small palette PNG."""
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
          f"  {image.width}x{image.height}  {path.stat().st_size / 1024:.0f} KB")
    return path


def grab(widget, height: int | None = None):
    """A Qt widget (its top `height` pixels, default all) as a PIL image."""
    from PIL import Image
    from qtpy.QtCore import QBuffer, QIODevice, QRect

    if height is None:
        pixmap = widget.grab()
    else:
        pixmap = widget.grab(QRect(0, 0, widget.width(), min(height, widget.height())))
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buffer, "PNG")
    import io

    return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")


def trim_bottom(image, margin: int = 8):
    """Cut the rows of plain background under a widget's content (keeping `margin` of them)."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    differs = np.abs(pixels - pixels[-1, 0]).max(axis=(1, 2)) > 6
    rows = np.flatnonzero(differs)
    if rows.size == 0:
        return image
    return image.crop((0, 0, image.width, min(image.height, rows[-1] + 1 + margin)))


def crop_dark_margins(image, level: int = 8):
    """Cut the black borders around the canvas's image (the canvas is wider than the data)."""
    import numpy as np

    pixels = np.asarray(image.convert("L"))
    rows = np.flatnonzero(pixels.max(axis=1) > level)
    cols = np.flatnonzero(pixels.max(axis=0) > level)
    if rows.size == 0 or cols.size == 0:
        return image
    return image.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))


def side_by_side(left, right, background=(38, 41, 48)):
    """Two PIL images next to each other, the right one scaled to the left one's height."""
    from PIL import Image

    if right.height > left.height:
        width = round(right.width * left.height / right.height)
        right = right.resize((width, left.height), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), background)
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


# -- Qt helpers ------------------------------------------------------------------------------------
def settle(seconds: float = 0.3) -> None:
    """Let Qt process events, lay out and paint for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_until(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    from qtpy.QtWidgets import QApplication

    started = time.perf_counter()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")


def floating_dock(viewer, widget, name: str, size: tuple[int, int]):
    """Dock `widget` as a floating window of `size` (napari's theme applies to it)."""
    dock = viewer.window.add_dock_widget(widget, name=name, area="right")
    dock.setFloating(True)
    dock.resize(*size)
    settle(0.3)
    return dock


# -- the tour ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("no X display: run `xvfb-run -a .venv/bin/python scripts/make_screenshots.py`",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    import napari
    import numpy as np

    from napari_neurt import simulate
    from napari_neurt.plugin.samples import layer_data
    from napari_neurt.plugin.viewer import ensure_analysis_dock, ensure_trace_dock
    from napari_neurt.plugin.widgets import AttentionMapWidget, FineTuneWidget

    out = args.out
    width = args.max_width
    print(f"screenshots -> {out}")

    # 1. The sample, the panel and the plot, before anything ran.
    sample = simulate.two_photon(seed=args.seed)
    viewer = napari.Viewer(title="napari-neurt")
    viewer.window.resize(1500, 950)
    for data, kwargs, kind in layer_data(sample, "two-photon"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    panel = ensure_analysis_dock(viewer)
    plot = ensure_trace_dock(viewer)
    viewer.dims.set_current_step(0, sample.n_frames // 2)
    settle(0.5)  # the window and its docks take their sizes first, then the view fits the canvas
    viewer.reset_view()
    settle(1.0)
    save_png(viewer.screenshot(canvas_only=False), out / "sample-opened.png", width)

    # 2. Extract, reconstruct (k-fold), classify: the panel's own actions, in its workers.
    panel.set_hide("kfold")
    panel.run_pipeline([
        ("extract", {}),
        ("reconstruct", {"model": args.model}),
        ("classify", {"model": args.model}),
    ])
    wait_until(lambda: panel.job is None and not panel._pipeline, "the analysis pipeline")
    print(f"  pipeline done after {time.perf_counter() - started:.0f} s: {panel.status.text()}")
    scores = panel.scores_layer()
    if scores is None:
        raise RuntimeError(f"no scores layer after the pipeline: {panel.status.text()}")
    recording = panel._recording()[1]
    busiest = int(recording.neuron_ids[np.argmax(recording.traces.std(axis=1))])
    viewer.layers.selection.active = scores
    scores.selected_label = busiest
    viewer.dims.set_current_step(0, sample.n_frames // 2)
    panel.colour_by("attention_log10_ratio", "viridis")
    viewer.reset_view()
    plot.draw()
    panel.show_legend()
    settle(1.0)
    save_png(viewer.screenshot(canvas_only=False), out / "overview.png", width)
    save_png(grab(panel.scroll.widget()), out / "analysis-panel.png", width)  # all of it
    save_png(grab(plot), out / "trace-plot.png", width)

    # 3. The scores layer coloured by predictability R^2, with the panel's legend beside it.
    panel.colour_by("predictability_r2", "viridis")
    settle(0.8)
    canvas = viewer.screenshot(canvas_only=True)
    from PIL import Image

    group = panel.legend.parentWidget()  # the "Scores" group: colour by, legend, export
    legend = grab(group, panel.export_button.geometry().bottom() + 8)
    canvas = crop_dark_margins(Image.fromarray(np.asarray(canvas)).convert("RGB"))
    save_png(side_by_side(canvas, legend), out / "scores-legend.png", width)
    panel.colour_by("attention_log10_ratio", "viridis")

    # 4. The attention map of the selected neuron, around the current frame.
    attention = AttentionMapWidget(viewer)
    floating_dock(viewer, attention, "NEuRT attention map", (520, 560))
    scores.selected_label = busiest
    attention.update_maps()
    wait_until(lambda: attention.window is not None and attention.job is None, "attention maps",
               timeout=300)
    attention.draw()
    settle(0.3)
    attention.canvas.relayout()  # the title came after the first layout
    attention.canvas.draw()
    settle(0.5)
    save_png(trim_bottom(grab(attention)), out / "attention-map.png", width)
    attention.timer.stop()

    # 5. Fine-tuning on a small simulated cohort (a few animals per group, short recordings).
    if not args.no_finetune:
        tmp = Path(tempfile.gettempdir()) / "neurt-example"  # a short path for the picture
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            animals = simulate.cohort(3, seed=args.seed, n_neurons=40, n_frames=600)
            manifest = simulate.write_cohort(tmp / "cohort", animals)
            tune = FineTuneWidget(viewer)
            floating_dock(viewer, tune, "NEuRT fine-tune", (620, 560))
            tune.data_edit.setText(str(manifest))
            if tune.load_data() is None:
                raise RuntimeError(f"the fine-tune panel refused the cohort: {tune.status.text()}")
            tune.set_base(args.model)
            tune.out_edit.setText(str(tmp / "classifier"))
            tune.steps_spin.setValue(60)
            # small bags: a picture of the live plot, not a useful classifier (minutes on 2 cores)
            tune.config_overrides = dict(bags_per_step=2, bag_size=8, eval_every=15,
                                         patience=100, validation_bags=4)
            job = tune.start()
            if job is None:
                raise RuntimeError(f"fine-tuning did not start: {tune.status.text()}")
            wait_until(lambda: tune.job is None, "fine-tuning", timeout=600)
            if job.error is not None:
                raise RuntimeError(f"fine-tuning failed: {job.error}")
            tune.plot.draw()
            settle(0.3)
            tune.plot.canvas.relayout()
            tune.plot.canvas.draw()
            settle(0.5)
            save_png(trim_bottom(grab(tune)), out / "finetune.png", width)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    viewer.close()
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
