"""`neurt demo`: the simulated two-photon sample, its extracted traces, in napari."""

from __future__ import annotations

from pathlib import Path


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


def run_demo(screenshot: str | None = None, seed: int = 0) -> int:
    """Open napari with the demo; with `screenshot`, save the whole window to that PNG and exit."""
    import os
    import sys

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise RuntimeError(
            "no display to open napari on (DISPLAY is not set). On a machine without a screen run "
            "`xvfb-run -a neurt demo --screenshot demo.png` to save a picture of the demo instead"
        )
    import napari

    from .viewer import add_recording

    sample, recording = demo_recording(seed)
    viewer = napari.Viewer(title="napari-neurt demo")
    add_recording(viewer, recording, movie=sample.movie, name="simulated neurons")
    viewer.dims.set_current_step(0, recording.n_frames // 2)
    if screenshot is None:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(1400, 900)
    for _ in range(5):  # let Qt lay out and paint the window and the dock
        QApplication.processEvents()
    path = Path(screenshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    print(f"saved {path}")
    return 0
