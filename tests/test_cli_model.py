"""`neurt reconstruct`, `neurt classify`, `neurt import-weights`, and a torchrun cohort run."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_neurt.cli import main
from napari_neurt.model import NeurtModel, load_model
from napari_neurt.model.batch import results_path, shard
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.model.published import PUBLISHED


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small classifier checkpoint with a recording head (fast on CPU)."""
    torch.manual_seed(0)
    config = NeurtConfig(
        seq_len=32, n_embd=16, n_head=2, n_layer=2, n_ff=32, n_classes=2, mil_hidden=8
    )
    model = NeurtModel(Neurt(config), class_names=("control", "treated"), device="cpu")
    return model.save(tmp_path_factory.mktemp("models") / "small")


def write_recordings(
    folder: Path, count: int, n_neurons: int = 6, n_frames: int = 90
) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"mouse{i}.npz"
        np.savez(
            path,
            traces=rng.normal(size=(n_neurons, n_frames)).cumsum(1).astype(np.float32),
            centroids=rng.uniform(0, 60, size=(n_neurons, 2)),
            neuron_ids=np.arange(10, 10 + n_neurons),
            frame_rate=np.float64(20.0),
            pixel_size_um=np.float64(1.2),
        )
        paths.append(path)
    return paths


def test_reconstruct_writes_results_next_to_each_recording(tmp_path, checkpoint, capsys):
    paths = write_recordings(tmp_path, 2)
    assert (
        main(["reconstruct", *map(str, paths), "--model", str(checkpoint), "--csv", "--seed", "3"])
        == 0
    )
    for path in paths:
        out = tmp_path / f"{path.stem}.neurt-reconstruct.npz"
        with np.load(out, allow_pickle=False) as results:
            assert results["reconstruction"].shape == (6, 90, 5) and results["hide"].shape == (
                6,
                90,
            )
            assert 0.05 < results["hide"].mean() < 0.2
            np.testing.assert_array_equal(results["neuron_ids"], np.arange(10, 16))
            model = json.loads(str(results["model"]))
            parameters = json.loads(str(results["parameters"]))
        assert len(model["provenance"]["weights_sha256"]) == 64
        assert parameters["seed"] == 3 and parameters["recording"] == str(path)
        with open(out.with_suffix(".csv")) as file:
            rows = list(csv.DictReader(file))
        assert len(rows) == 6 and {"neuron_ids", "r2_hidden", "fallback"} <= set(rows[0])
    assert "median R^2" in capsys.readouterr().out


def test_reconstruct_calibrates_residual_models(tmp_path, capsys):
    torch.manual_seed(0)
    network = Neurt(NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=1, n_ff=32,
                                interpolate=True))
    with torch.no_grad():  # a random correction, far from right
        network.recon_head.weight.normal_(0, 0.5)
    residual = NeurtModel(network, device="cpu").save(tmp_path / "residual")
    [path] = write_recordings(tmp_path, 1)
    shares = {}
    for flags in ([], ["--no-calibrate"]):
        assert main(["reconstruct", str(path), "--model", str(residual), *flags]) == 0
        with np.load(results_path(path, "reconstruct"), allow_pickle=False) as results:
            parameters = json.loads(str(results["parameters"]))
            shares[tuple(flags)] = tuple(
                float(results[f"calibration_{share}"])
                for share in ("cubic", "kriging", "correction")
            )
        assert parameters["calibrate"] is not bool(flags)
        # the shares are on the summary line, as in the panel's status
        assert ("calibrated: cubic" in capsys.readouterr().out) is not bool(flags)
    cubic, kriging, correction = shares[()]
    assert 0.0 <= cubic + kriging <= 1.0 and 0.0 <= correction < 1.0
    assert shares[("--no-calibrate",)] == (0.0, 0.0, 1.0)  # as trained
    # nothing hidden: nothing to score or calibrate, and the line says so without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["reconstruct", str(path), "--model", str(residual),
                     "--hide-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "no hidden frame to score" in out and "calibrated" not in out


def test_a_neuron_without_a_finite_value_is_reconstructed_as_unknown(tmp_path, checkpoint):
    [path] = write_recordings(tmp_path, 1)
    arrays = dict(np.load(path))
    arrays["traces"][2] = np.nan  # an ROI outside the field of view in this session, say
    np.savez(path, **arrays)
    assert main(["reconstruct", str(path), "--model", str(checkpoint)]) == 0
    with np.load(results_path(path, "reconstruct"), allow_pickle=False) as results:
        assert np.isnan(results["reconstruction"][2]).all()
        assert np.isfinite(np.delete(results["reconstruction"], 2, axis=0)).all()


def test_r2_hidden_scores_recorded_frames_only(tmp_path, checkpoint):
    from napari_neurt.analysis import r_squared
    from napari_neurt.io import read_recording
    from napari_neurt.model.batch import reconstruct_recording

    [path] = write_recordings(tmp_path, 1)
    arrays = dict(np.load(path))
    arrays["traces"][:, 30:60] = np.nan  # dropped frames: the tokens interpolate across them
    np.savez(path, **arrays)
    recording = read_recording(path)
    results = reconstruct_recording(load_model(checkpoint, device="cpu"), recording,
                                    hide_ratio=0.4, seed=1)
    recorded = results["hide"] & np.isfinite(recording.traces)
    assert (results["hide"] & ~recorded).any()
    # the interpolated frames were never recorded: no truth to score the model against
    np.testing.assert_allclose(
        results["r2_hidden"],
        r_squared(results["tokens"][..., 0], results["reconstruction"][..., 0], recorded),
        rtol=1e-6,
    )


def test_classify_to_an_output_folder(tmp_path, checkpoint):
    paths = write_recordings(tmp_path, 1)
    assert (
        main(
            ["classify", str(paths[0]), "--model", str(checkpoint), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    with np.load(tmp_path / "out" / "mouse0.neurt-classify.npz", allow_pickle=False) as results:
        assert list(results["class_names"]) == ["control", "treated"]
        assert results["neuron_attention"].sum() == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(  # the same weights on a log scale, 0 for an even share
            10 ** results["attention_log10_ratio"], 6 * results["neuron_attention"], rtol=1e-6
        )
        assert results["temporal_attention"].shape == (6, 90)
        assert bool(results["recording_head"])
        assert 0 <= float(results["recording_probability"]) <= 1


def test_classify_with_three_classes_gives_the_recordings_probability_of_each(
    tmp_path, capsys
):
    torch.manual_seed(0)
    names = ("wild type", "sham", "AD")
    for mil_hidden in (8, 0):  # a recording head, and the published rule of windows
        config = NeurtConfig(
            seq_len=32, n_embd=16, n_head=2, n_layer=2, n_ff=32, n_classes=3, mil_hidden=mil_hidden
        )
        model = NeurtModel(Neurt(config), class_names=names, device="cpu")
        folder = model.save(tmp_path / f"three-{mil_hidden}")
        path = write_recordings(tmp_path, 1)[0]
        assert main(["classify", str(path), "--model", str(folder), "--out", str(folder)]) == 0
        with np.load(folder / "mouse0.neurt-classify.npz", allow_pickle=False) as results:
            assert list(results["class_names"]) == list(names)
            p = results["recording_class_probability"]
            assert p.shape == (3,) and p.sum() == pytest.approx(1, abs=1e-6)
            assert p[1] == pytest.approx(float(results["recording_probability"]), abs=1e-6)
        verdict = names[int(np.argmax(p))]
        assert f"{path}: {verdict} (P(wild type) = {p[0]:.3f}," in capsys.readouterr().out


def test_a_bad_recording_does_not_stop_the_others(tmp_path, checkpoint, capsys):
    good = write_recordings(tmp_path, 1)[0]
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    assert main(["reconstruct", str(bad), str(good), "--model", str(checkpoint)]) == 1
    assert (tmp_path / "mouse0.neurt-reconstruct.npz").exists()
    assert "broken.npz: error:" in capsys.readouterr().err


def test_an_unexpected_error_in_one_recording_does_not_stop_the_others(
    tmp_path, checkpoint, capsys, monkeypatch
):
    from napari_neurt import io

    good, odd = write_recordings(tmp_path, 2)
    read = io.read_recording

    def read_or_fail(source, **options):
        if Path(source) == odd:
            raise TypeError("an odd frame_rate array")
        return read(source, **options)

    monkeypatch.setattr(io, "read_recording", read_or_fail)
    assert main(["classify", str(odd), str(good), "--model", str(checkpoint)]) == 1
    assert (tmp_path / "mouse0.neurt-classify.npz").exists()
    assert "mouse1.npz: error: TypeError: an odd frame_rate array" in capsys.readouterr().err


def test_recordings_that_would_share_a_results_file_are_refused_first(
    tmp_path, checkpoint, capsys
):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = write_recordings(tmp_path / "a", 1)[0], write_recordings(tmp_path / "b", 1)[0]
    out = tmp_path / "out"
    assert main(["classify", str(first), str(second), "--model", str(checkpoint),
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "would all write" in error and "leave out --out" in error
    assert not out.exists()  # refused before any work
    assert main(["classify", str(first), str(first), "--model", str(checkpoint)]) == 2
    assert "list each recording once" in capsys.readouterr().err
    twin = first.with_suffix(".nwb")  # another file of the same name: its own recording
    twin.write_bytes(b"")
    assert main(["classify", str(first), str(twin), "--model", str(checkpoint)]) == 2
    assert "they share a name" in capsys.readouterr().err
    twin.unlink()
    assert main(["classify", str(first), str(second), "--model", str(checkpoint)]) == 0
    assert (tmp_path / "a" / "mouse0.neurt-classify.npz").exists()
    assert (tmp_path / "b" / "mouse0.neurt-classify.npz").exists()
    (tmp_path / "taken").write_text("a file")
    assert main(["classify", str(first), "--model", str(checkpoint),
                 "--out", str(tmp_path / "taken")]) == 2
    assert "is a file; name a folder" in capsys.readouterr().err


def test_unknown_model_is_one_clear_line(tmp_path, capsys):
    paths = write_recordings(tmp_path, 1)
    assert main(["classify", str(paths[0]), "--model", "neurt-5xfda"]) == 2
    assert "neurt-5xfad" in capsys.readouterr().err


def test_shard_and_results_path(tmp_path, monkeypatch):
    files = [f"f{i}" for i in range(5)]
    assert shard(files, 0, 2) == ["f0", "f2", "f4"] and shard(files, 1, 2) == ["f1", "f3"]
    with pytest.raises(ValueError, match="RANK"):
        shard(files, 2, 2)
    (tmp_path / "plane0").mkdir()
    assert results_path(tmp_path / "plane0", "classify") == tmp_path / "plane0.neurt-classify.npz"
    monkeypatch.chdir(tmp_path / "plane0")  # "." is the folder, named as it is
    assert results_path(".", "classify") == tmp_path / "plane0.neurt-classify.npz"
    (tmp_path / "store").mkdir()  # a linked recording keeps its own name and place
    (tmp_path / "store" / "SHA256E-s10--abc.npz").write_bytes(b"")
    (tmp_path / "mouse1.npz").symlink_to(tmp_path / "store" / "SHA256E-s10--abc.npz")
    assert results_path(tmp_path / "mouse1.npz", "classify") == (
        tmp_path / "mouse1.neurt-classify.npz"
    )
    assert (
        results_path(tmp_path / "a.nwb", "reconstruct", tmp_path / "o")
        == tmp_path / "o" / "a.neurt-reconstruct.npz"
    )


def test_torchrun_ranks_share_the_cohort(tmp_path, checkpoint, torchrun):
    paths = write_recordings(tmp_path, 3)
    done = torchrun("-m", "napari_neurt.cli", "reconstruct", *paths, "--model", checkpoint,
                    "--out", tmp_path / "out", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == [
        "mouse0.neurt-reconstruct.npz",
        "mouse1.neurt-reconstruct.npz",
        "mouse2.neurt-reconstruct.npz",
    ]
    lines = done.stdout.splitlines()
    assert sum("[rank 0] [1/2]" in line for line in lines) == 1  # rank 0: mouse0 and mouse2
    assert sum("[rank 1] [1/1]" in line and "mouse1" in line for line in lines) == 1


def test_import_weights(weights_dir, tmp_path, capsys):
    pth = weights_dir / "bert_recon" / "model_epoch_20.pth"
    out = tmp_path / "neurt-microns"
    assert main(["import-weights", str(pth), "-o", str(out)]) == 0
    assert PUBLISHED["neurt-microns"].sha256 in capsys.readouterr().out
    imported, original = load_model(out, device="cpu"), load_model(pth, device="cpu")
    assert imported.provenance["imported_from_sha256"] == PUBLISHED["neurt-microns"].sha256
    assert imported.provenance["source"] == "neurt-microns"
    tokens = np.random.default_rng(0).random((2, 100, 5), dtype=np.float32)
    np.testing.assert_array_equal(imported.reconstruct(tokens), original.reconstruct(tokens))


def test_import_weights_refuses_a_code_running_pickle(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"module.x": Payload()}, tmp_path / "evil.pth")
    assert main(["import-weights", str(tmp_path / "evil.pth")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "evil.neurt").exists()


def test_import_weights_refuses_to_write_over_a_file(tmp_path, capsys):
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"weights")
    assert main(["import-weights", str(pth), "-o", str(pth)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert pth.read_bytes() == b"weights"
    assert main(["import-weights", str(tmp_path)]) == 2  # a folder given for the .pth
    assert "is a folder; give the published .pth" in capsys.readouterr().err


def test_reconstruct_refuses_spans_of_no_frame_in_one_line(tmp_path, checkpoint, capsys):
    path = write_recordings(tmp_path, 1)[0]
    assert main(["reconstruct", str(path), "--model", str(checkpoint), "--max-span", "0"]) == 1
    err = capsys.readouterr().err
    assert "max_span must be at least 1 frame; got 0" in err and "OverflowError" not in err


def test_classify_with_a_reconstruction_model_is_refused_first(tmp_path, capsys):
    torch.manual_seed(0)
    config = NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=1, n_ff=32)
    folder = NeurtModel(Neurt(config), device="cpu").save(tmp_path / "recon")
    paths = write_recordings(tmp_path, 2)
    assert main(["classify", *map(str, paths), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("has no classifier") == 1 and "[1/2]" not in err


def test_ctrl_c_while_writing_leaves_no_file_and_no_traceback(
    tmp_path, checkpoint, capsys, monkeypatch
):
    path = write_recordings(tmp_path, 1)[0]

    def interrupted(file, **arrays):
        file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["reconstruct", str(path), "--model", str(checkpoint), "--out", "out"])
    except KeyboardInterrupt:
        code = None
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_a_failed_table_leaves_the_earlier_results_pair_as_it_was(
    tmp_path, checkpoint, capsys, monkeypatch
):
    path = write_recordings(tmp_path, 1)[0]
    run = ["reconstruct", str(path), "--model", str(checkpoint), "--csv"]
    assert main([*run, "--seed", "1"]) == 0
    results = results_path(path, "reconstruct")
    before = results.read_bytes(), results.with_suffix(".csv").read_bytes()

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(csv, "writer", failing)
    assert main([*run, "--seed", "2"]) == 1
    assert (results.read_bytes(), results.with_suffix(".csv").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, results.name, results.with_suffix(".csv").name]
    )


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_under_torchrun_each_process_takes_its_own_gpu(tmp_path, monkeypatch, capsys, device):
    """`torchrun ... neurt classify --device cuda` put every process on GPU 0, while
    `neurt pretrain --device cuda` gives each its own (LOCAL_RANK), as the docs say both do."""
    from napari_neurt import model

    asked = []

    def load(source, device="auto"):
        asked.append(device)
        raise ValueError("stop here")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(model, "load_model", load)
    monkeypatch.setenv("LOCAL_RANK", "1")
    (path,) = write_recordings(tmp_path, 1)
    assert main(["classify", str(path), "--device", device]) == 2
    assert asked == ["cuda:1"]
