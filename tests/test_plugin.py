"""The napari side: manifest, sample data, the trace plot and the demo (under Xvfb)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_neurt import Recording  # noqa: E402
from napari_neurt.plugin.viewer import TRACE_DOCK_NAME, add_recording  # noqa: E402
from napari_neurt.plugin.widgets import TracePlotWidget  # noqa: E402


def test_manifest_validates_and_imports_every_command():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-neurt")
    manifest.validate_imports()
    commands = {c.id for c in manifest.contributions.commands}
    assert {"napari-neurt.sample_two_photon", "napari-neurt.get_suite2p_reader"} <= commands


def small_recording(n_frames=200):
    labels = np.zeros((40, 40), np.int32)
    labels[5:10, 5:10] = 3
    labels[20:26, 20:26] = 8
    t = np.arange(n_frames)
    traces = np.stack([np.sin(t / 10), np.cos(t / 7)]).astype(np.float32)
    return Recording.from_labels(traces, labels, frame_rate=10.0, metadata={"trace_kind": "dF/F"})


def test_selecting_a_label_updates_the_trace_plot(make_napari_viewer):
    viewer = make_napari_viewer()
    recording = small_recording()
    viewer.add_image(np.zeros((recording.n_frames, 40, 40), np.float32), name="movie")
    layer = add_recording(viewer, recording)
    plot = viewer.window.dock_widgets[TRACE_DOCK_NAME]
    assert isinstance(plot, TracePlotWidget)
    layer.selected_label = 8
    np.testing.assert_allclose(plot.trace_line.get_ydata(), recording.traces[1])
    layer.selected_label = 3
    np.testing.assert_allclose(plot.trace_line.get_ydata(), recording.traces[0])
    np.testing.assert_allclose(plot.trace_line.get_xdata(), recording.times)
    layer.selected_label = 5  # not a neuron: the plot empties instead of showing a stale trace
    assert len(plot.trace_line.get_ydata()) == 0


def test_the_plugins_menu_shows_the_panels_already_docked(make_napari_viewer):
    from napari_neurt.plugin.widgets import AnalysisWidget

    viewer = make_napari_viewer()
    add_recording(viewer, small_recording(), show_panel=True)  # as Extract and the demo dock them
    for name, kind in (("NEuRT traces", TracePlotWidget), ("NEuRT analysis", AnalysisWidget)):
        docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, kind)]
        _, widget = viewer.window.add_plugin_dock_widget("napari-neurt", name)
        assert [widget] == docked
        assert [w for w in viewer.window.dock_widgets.values() if isinstance(w, kind)] == docked


def test_frame_line_follows_the_slider_and_clicks_move_it(make_napari_viewer):
    viewer = make_napari_viewer()
    recording = small_recording()
    viewer.add_image(np.zeros((recording.n_frames, 40, 40), np.float32), name="movie")
    add_recording(viewer, recording)
    plot = viewer.window.dock_widgets[TRACE_DOCK_NAME]
    viewer.dims.set_current_step(0, 50)
    assert plot.frame_line.get_xdata()[0] == pytest.approx(50 / recording.frame_rate)

    class Click:  # what matplotlib passes to a button_press_event handler
        inaxes, xdata = plot.axes, 12.34

    plot._on_click(Click)
    assert viewer.dims.current_step[0] == 123


def test_sample_data_open_as_image_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-neurt", "two_photon")
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    movie = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    labels = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels))
    assert movie.data.ndim == 3 and movie.data.shape[1:] == labels.data.shape
    assert labels.data.max() > 10


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint

    torch.manual_seed(0)
    config = NeurtConfig(
        seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2, mil_hidden=8
    )
    folder = tmp_path_factory.mktemp("tiny") / "tiny-neurt"
    return save_checkpoint(folder, Neurt(config), class_names=("quiet", "busy"))


def coloured_fraction(path):
    from skimage.io import imread

    image = imread(path)[..., :3].astype(int)
    assert image.shape[0] > 400 and image.shape[1] > 600
    saturation = image.max(axis=-1) - image.min(axis=-1)
    # napari's chrome is grey; coloured label pixels, the legend and the traces are not
    return (saturation > 80).mean()


def test_demo_screenshot_runs_the_whole_pipeline(tmp_path, qapp, tiny_checkpoint, capsys):
    from napari_neurt.cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(out), "--model", str(tiny_checkpoint)]) == 0
    assert coloured_fraction(out) > 0.02, "screenshot shows no coloured labels or trace"
    log = capsys.readouterr().err
    assert "classified" in log  # extract, reconstruct and classify all ran


def test_a_demo_whose_step_fails_exits_with_an_error(tmp_path, qapp, tiny_checkpoint,
                                                     monkeypatch, capsys):
    from napari_neurt import analysis
    from napari_neurt.cli import main

    def broken(*args, **kwargs):
        raise ValueError("a simulated reconstruction failure")
        yield  # a step generator

    monkeypatch.setattr(analysis, "iter_reconstruct", broken)
    out = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(out), "--model", str(tiny_checkpoint)]) == 1
    assert out.exists()  # the picture is still saved, to see what happened
    assert "did not complete" in capsys.readouterr().err


def test_demo_without_weights_says_so_and_still_shows_scores(tmp_path, qapp, monkeypatch, capsys):
    from napari_neurt.cli import main

    monkeypatch.delenv("NEURT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("NEURT_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("napari_neurt.plugin.demo._default_weights_here", lambda: False)
    out = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(out)]) == 0
    assert coloured_fraction(out) > 0.02  # the labels coloured by event rate
    assert "No NEuRT weights on this machine" in capsys.readouterr().err


def test_demo_prefers_its_own_weights_then_the_published_ones(tmp_path, monkeypatch):
    from napari_neurt.plugin import demo

    monkeypatch.setenv("NEURT_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(demo, "_default_weights_here", lambda: True)
    assert demo.demo_models().reconstruct == "default"
    monkeypatch.setattr(demo, "_default_weights_here", lambda: False)
    weights = tmp_path / "weights"
    (weights / "bert_recon").mkdir(parents=True)
    (weights / "bert_recon" / "model_epoch_20.pth").write_bytes(b"")
    monkeypatch.setenv("NEURT_WEIGHTS_DIR", str(weights))
    choice = demo.demo_models()
    assert (choice.reconstruct, choice.classify) == ("neurt-microns", None)
    assert "published" in choice.message
    monkeypatch.delenv("NEURT_WEIGHTS_DIR")
    assert demo.demo_models().reconstruct is None


def test_the_scripting_examples_run(make_napari_viewer, tiny_checkpoint, monkeypatch, tmp_path):
    """docs/scripting.md's examples in order, with the tiny checkpoint for the published models,
    the test's viewer for napari's and a smaller sample."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "scripting.md").read_text()
    blocks = re.findall(r"```python\n(.+?)```", text, re.S)
    assert len(blocks) == 4
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for code in blocks:
        for name in ("neurt-microns", "neurt-5xfad"):
            code = code.replace(f'"{name}"', repr(str(tiny_checkpoint)))
        code = code.replace("n_cells=50, n_frames=900", "n_cells=15, n_frames=300")
        exec(compile(code, "docs/scripting.md", "exec"), namespace)
    scores = viewer.layers["neurons scores"]
    assert scores.metadata["neurt_scores"]["column"] == "predictability_r2"
    assert "neurons movie" in viewer.layers
    assert namespace["marked"].hidden_runs == [(200, 229), (250, 250)]
    assert namespace["bad"].hidden_runs == [(250, 250)]
    calibration = namespace["calibration"]
    assert 0.0 <= calibration.cubic <= 1.0 and 0.0 <= calibration.correction <= 1.0
    assert namespace["own"].shape == (15, 300)
    assert (tmp_path / "results" / "neurons.provenance.json").is_file()
    assert (tmp_path / "results" / "neurons.nwb").is_file()


def test_loading_a_model_imports_no_compiler(tmp_path):
    """The first model a job loads must not pull in torch._dynamo / sympy (2-3 s of Python that
    holds the GIL in the worker and froze the viewer for up to 0.75 s): checked in a fresh
    interpreter, as the viewer's first job would."""
    import subprocess
    import sys

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint

    config = NeurtConfig(seq_len=32, n_embd=8, n_head=2, n_layer=1, n_ff=16, n_classes=2,
                         mil_hidden=4)
    save_checkpoint(tmp_path / "tiny", Neurt(config), class_names=("a", "b"))
    code = (
        "import sys\n"
        "from napari_neurt.plugin.models import get_model\n"
        f"model = get_model({str(tmp_path / 'tiny')!r}, 'cpu')\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_model_cache_keeps_one_version_of_a_rewritten_checkpoint(tmp_path):
    import os

    import torch

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint
    from napari_neurt.plugin import models

    models.clear_cache()
    folder = tmp_path / "neurt-finetuned"
    config = NeurtConfig(seq_len=16, n_embd=8, n_head=2, n_layer=1, n_ff=16)
    for version in range(3):  # fine-tuned into the same folder three times
        torch.manual_seed(version)
        save_checkpoint(folder, Neurt(config))
        for file in folder.iterdir():  # a later modification time, whatever the clock's grain
            os.utime(file, ns=(10**9 * (version + 1),) * 2)
        models.get_model(str(folder), "cpu")
    assert len(models._cache) == 1
    models.clear_cache()


def test_a_checkpoint_folder_written_to_meanwhile_still_loads(tmp_path, monkeypatch):
    """Writing a checkpoint (fine-tuning, pretraining's saves) puts temporary files beside it and
    renames them: one listed and gone before its time is read must not fail the load."""
    from pathlib import Path

    from napari_neurt.model import Neurt, NeurtConfig, save_checkpoint
    from napari_neurt.plugin import models

    models.clear_cache()
    folder = tmp_path / "neurt-finetuned"
    save_checkpoint(folder, Neurt(NeurtConfig(seq_len=16, n_embd=8, n_head=2, n_layer=1, n_ff=16)))
    listed = [*folder.glob("*"), folder / ".model.safetensors.0123abcd.tmp.safetensors"]
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed))
    assert models.get_model(str(folder), "cpu").config.seq_len == 16
    models.clear_cache()


def test_a_loaded_model_is_not_kept_waiting_by_another_ones_load(monkeypatch):
    """A job that wants a model already loaded (the attention map's) gets it while another job
    loads another model (downloads published weights), which is loaded once for all its users."""
    import threading

    import napari_neurt.model
    from napari_neurt.plugin import models

    models.clear_cache()
    loaded = models.get_model("default", "cpu")
    download, loads = threading.Event(), []

    def load_model(source, device="auto"):
        loads.append(source)
        download.wait(10)
        return loaded

    monkeypatch.setattr(napari_neurt.model, "load_model", load_model)
    others = [threading.Thread(target=models.get_model, args=("neurt-microns", "cpu"))
              for _ in range(2)]
    for other in others:
        other.start()
    try:
        got = []
        asking = threading.Thread(target=lambda: got.append(models.get_model("default", "cpu")))
        asking.start()
        asking.join(5)
        assert got == [loaded]
    finally:
        download.set()
        for other in others:
            other.join()
    assert loads == ["neurt-microns"]
    models.clear_cache()


def test_two_fine_tuned_folders_of_one_name_are_told_apart():
    from napari_neurt.plugin.models import ModelRegistry

    registry = ModelRegistry()
    first = registry.add("/data/wt-vs-ad/neurt-finetuned")
    second = registry.add("/data/pilot/neurt-finetuned")
    third = registry.add("/scratch/pilot/neurt-finetuned")
    assert first.label == "Fine-tuned: neurt-finetuned"
    assert second.label == "Fine-tuned: pilot/neurt-finetuned"
    assert third.label == "Fine-tuned: scratch/pilot/neurt-finetuned"


def test_a_features_table_row_selects_the_label_of_its_number(make_napari_viewer, qtbot):
    # what docs/gui.md says of napari's Features table widget: row k selects label k, the row's
    # neuron only when the ids have no gaps (small_recording's are 3 and 8)
    viewer = make_napari_viewer()
    layer = add_recording(viewer, small_recording(), show_traces=False)
    viewer.layers.selection = {layer}
    _, widget = viewer.window.add_plugin_dock_widget("napari", "Features table widget")
    table = widget.table
    assert table.model().rowCount() == 3  # background, neuron 3, neuron 8
    table.selectRow(1)
    assert layer.features["neuron_id"].iloc[1] == 3 and layer.selected_label == 1
