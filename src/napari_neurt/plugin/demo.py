"""`neurt demo`: the simulated two-photon sample through the whole NEuRT pipeline, in napari.

The demo opens napari with the sample movie and its ROIs, docks the *NEuRT analysis* panel and
the *NEuRT traces* plot, and runs the panel's own actions one after the other, in workers, as a
user would: Extract traces, Reconstruct (every frame in turn), Classify. The scores layer shows
the results, coloured, with its legend; the plot shows the selected neuron.

Weights: the ones that ship with napari-neurt when they exist; until then the published NEuRT
weights when they are already on this machine (in $NEURT_WEIGHTS_DIR or the download cache):
MICrONS to reconstruct, the 5xFAD classifier to classify. Without any, the demo says so in the
window and on the console and shows the traces and the model-free scores (event rate).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_TIMEOUT_S = 900


def demo_recording(seed: int = 0):
    """Simulate the two-photon sample and extract its neuropil-corrected dF/F traces."""
    from .. import simulate
    from ..extraction import delta_f_over_f, extract_traces
    from ..recording import Recording

    sample = simulate.two_photon(seed=seed)
    traces = extract_traces(sample.movie, sample.labels, neuropil=True)
    recording = Recording.from_labels(
        delta_f_over_f(traces, sample.frame_rate),
        sample.labels,
        sample.frame_rate,
        pixel_size_um=sample.pixel_size_um,
        source=f"simulated two-photon sample (seed {seed})",
        metadata={"trace_kind": "dF/F"},
    )
    return sample, recording


@dataclass(frozen=True)
class DemoModels:
    """Which weights the demo reconstructs and classifies with, and what to tell the user."""

    reconstruct: str | None
    classify: str | None
    message: str


def _published_here(name: str) -> bool:
    """Whether published weights are on this machine already (no download is tried)."""
    from ..model.published import PUBLISHED, WEIGHTS_DIR_ENV, cache_dir

    weights = PUBLISHED[name]
    if os.environ.get(WEIGHTS_DIR_ENV):
        if (Path(os.environ[WEIGHTS_DIR_ENV]) / weights.relative_path).is_file():
            return True
    return (cache_dir() / "weights" / f"{name}-{weights.sha256[:12]}.pth").is_file()


def _default_weights_here() -> bool:
    from importlib.resources import files

    from ..model.checkpoint import CONFIG_NAME

    return (files("napari_neurt.model") / "weights" / "default" / CONFIG_NAME).is_file()


def demo_models(model: str | None = None) -> DemoModels:
    """The weights the demo uses (see the module docstring); `model` forces one source."""
    if model is not None:
        from . import models

        loaded = models.get_model(model)
        classifier = model if loaded.config.n_classes >= 2 else None
        return DemoModels(model, classifier, f"NEuRT weights: {model}")
    if _default_weights_here():
        return DemoModels("default", "default", "NEuRT weights: napari-neurt's own")
    recon = "neurt-microns" if _published_here("neurt-microns") else None
    classify = "neurt-5xfad" if _published_here("neurt-5xfad") else None
    if recon or classify:
        used = " and ".join(
            f"{name} ({task})"
            for name, task in ((recon, "reconstruction"), (classify, "classification"))
            if name
        )
        return DemoModels(
            recon,
            classify,
            "napari-neurt's own weights are missing from this installation: using the published "
            "NEuRT weights "
            f"{used}",
        )
    return DemoModels(
        None,
        None,
        "No NEuRT weights on this machine: showing traces and event rates only. napari-neurt's "
        "own weights are missing from this installation (reinstall napari-neurt); or set "
        "NEURT_WEIGHTS_DIR to a folder of the published weights, or pick a checkpoint in the "
        "NEuRT analysis panel, to run the model.",
    )


def _require_napari_and_qt() -> None:
    """napari and a Qt binding, or a RuntimeError that says how to install them: the package
    brings napari but no Qt binding (the user picks one), so `pip install napari-neurt` alone
    gives a napari that cannot open a window."""
    try:
        import napari  # noqa: F401
        import qtpy  # noqa: F401  (raises QtBindingsNotFoundError, an ImportError, without one)
    except ImportError as error:
        raise RuntimeError(
            f"the demo needs napari with a Qt binding ({error}): install them with "
            '`pip install "napari[pyqt6]"` (or PySide6, or conda\'s pyqt) in this environment'
        ) from error


def run_demo(screenshot: str | None = None, seed: int = 0, model: str | None = None) -> int:
    """Open napari with the demo; with `screenshot`, save the whole window to that PNG and exit."""
    _require_napari_and_qt()
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise RuntimeError(
            "no display to open napari on (DISPLAY is not set). On a machine without a screen run "
            "`xvfb-run -a neurt demo --screenshot demo.png` to save a picture of the demo instead"
        )
    import napari

    from .. import simulate
    from .samples import layer_data
    from .scores import analysis_of
    from .viewer import ensure_analysis_dock, ensure_trace_dock

    choice = demo_models(model)
    print(f"neurt demo: {choice.message}", file=sys.stderr)
    sample = simulate.two_photon(seed=seed)
    viewer = napari.Viewer(title="napari-neurt demo")
    for data, kwargs, kind in layer_data(sample, "two-photon"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    panel = ensure_analysis_dock(viewer)
    plot = ensure_trace_dock(viewer)
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    overlay = overlays["text"] if overlays is not None else viewer.text_overlay
    overlay.text = textwrap.fill(choice.message, 70)
    overlay.visible = True
    overlay.font_size = 9
    overlay.color = "white" if (choice.reconstruct or choice.classify) else "orange"
    steps: list[tuple[str, dict]] = [("extract", {})]
    if choice.reconstruct:
        steps.append(("reconstruct", {"model": choice.reconstruct}))
    if choice.classify:
        steps.append(("classify", {"model": choice.classify}))
    panel.set_hide("kfold")
    panel.run_pipeline(steps)
    viewer.dims.set_current_step(0, sample.n_frames // 2)
    if screenshot is None:
        napari.run()
        return 0

    from qtpy.QtWidgets import QApplication

    viewer.window.resize(1600, 1000)
    started, finished = time.perf_counter(), True
    while panel.job is not None or panel._pipeline:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - started > DEMO_TIMEOUT_S:
            print("neurt demo: the pipeline did not finish in time; cancelling", file=sys.stderr)
            panel.cancel()
            finished = False
            break
    if panel.status.text():
        print(f"neurt demo: {panel.status.text()}", file=sys.stderr)
    scores = panel.scores_layer()
    done = analysis_of(scores) if scores is not None else None
    # the screenshot is a check for machines without a screen: a step that failed fails it
    complete = finished and done is not None and (
        (done.reconstruction is not None or not choice.reconstruct)
        and (done.classification is not None or not choice.classify)
    )
    if scores is not None:
        recording = panel._recording()[1]
        busiest = int(recording.neuron_ids[recording.traces.std(axis=1).argmax()])
        scores.selected_label = busiest
        viewer.layers.selection.active = scores
    viewer.reset_view()
    plot.draw()
    panel.show_legend()
    for _ in range(10):  # let Qt lay out and paint the window and the docks
        QApplication.processEvents()
        time.sleep(0.02)
    path = Path(screenshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    print(f"saved {path}")
    if not complete:
        print("neurt demo: the pipeline did not complete (see above)", file=sys.stderr)
        return 1
    return 0
