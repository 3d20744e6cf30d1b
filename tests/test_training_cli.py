"""`neurt pretrain`, `neurt finetune` and `neurt reconstruct --adapt`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from napari_neurt import load_model
from napari_neurt.cli import main
from napari_neurt.model import NeurtModel
from napari_neurt.model.neurt import Neurt, NeurtConfig

SHAPE = {"seq_len": 32, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 32}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_recording(path, kind: str = "calm", seed: int = 0, n_frames: int = 96):
    rng = np.random.default_rng(seed)
    frames = np.arange(n_frames)
    if kind == "calm":
        traces = np.sin(2 * np.pi * frames / 30 + rng.uniform(0, 6.3, (8, 1)))
    else:
        traces = (rng.random((8, n_frames)) < 0.05) * 5.0
        traces[:, 0] = 5.0
    traces = traces + 0.05 * rng.standard_normal(traces.shape)
    np.savez(path, traces=traces, centroids=rng.uniform(0, 80, (8, 2)), frame_rate=10.0)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = NeurtModel(Neurt(NeurtConfig(**SHAPE)), device="cpu")
    return model.save(tmp_path / "tiny")


def test_pretrain_command_trains_and_resumes(tmp_path, capsys):
    paths = [str(write_recording(tmp_path / f"r{k}.npz", seed=k)) for k in range(2)]
    listing = tmp_path / "recordings.txt"
    listing.write_text(f"# training data\n{paths[1]}\n")
    out = tmp_path / "run"
    common = ["--out", str(out), "--shape", json.dumps(SHAPE), "--batch-size", "4"]
    common += ["--device", "cpu", "--log-every", "1"]
    assert main(["pretrain", paths[0], "--list", str(listing), "--steps", "3", *common]) == 0
    captured = capsys.readouterr()
    assert "step 3/3" in captured.err and "done at step 3/3" in captured.out
    assert main(["pretrain", *paths, "--steps", "5", *common]) == 0  # resumes, longer
    assert load_model(out, device="cpu").provenance["step"] == 5
    # resuming needs no --shape: the run's own is used
    shapeless = [arg for arg in common if arg not in ("--shape", json.dumps(SHAPE))]
    assert main(["pretrain", *paths, "--steps", "6", *shapeless]) == 0
    assert load_model(out, device="cpu").config == NeurtConfig(**SHAPE)
    assert main(["pretrain", "--out", str(out)]) == 2
    assert "no recordings" in capsys.readouterr().err
    # a misspelt or malformed --shape is a one-line error, not a traceback
    for shape, message in (('{"n_layers": 3}', "unknown NeurtConfig field(s): n_layers"),
                           ("[2]", "JSON object")):
        assert main(["pretrain", *paths, "--out", str(tmp_path / "bad"), "--shape", shape]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_pretrain_reads_tiff_movies_with_the_labels_given(tmp_path, capsys):
    import tifffile

    rng = np.random.default_rng(0)
    labels = np.zeros((24, 24), dtype=np.uint16)
    for k, (y, x) in enumerate([(3, 3), (3, 15), (12, 8), (18, 18), (18, 3)], start=1):
        labels[y : y + 4, x : x + 4] = k
    frames = np.arange(96)[:, None, None]
    movie = 100 + 20 * np.sin(2 * np.pi * frames / 30 + labels[None] / 2.0)
    movie = (movie + rng.normal(0, 1, (96, 24, 24))).astype(np.float32)
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    npz = str(write_recording(tmp_path / "r0.npz"))
    common = ["--shape", json.dumps(SHAPE), "--batch-size", "4", "--device", "cpu",
              "--steps", "2", "--frame-rate", "10"]
    movie_path = str(tmp_path / "movie.tif")
    assert main(["pretrain", movie_path, npz, "--labels", str(tmp_path / "labels.tif"),
                 "--out", str(tmp_path / "run"), *common]) == 0
    assert load_model(tmp_path / "run", device="cpu").provenance["step"] == 2
    capsys.readouterr()
    assert main(["pretrain", movie_path, "--out", str(tmp_path / "no"), *common]) == 2
    assert "pass labels" in capsys.readouterr().err  # a movie without its ROIs
    assert main(["pretrain", npz, "--labels", str(tmp_path / "labels.tif"),
                 "--out", str(tmp_path / "no"), *common]) == 2
    assert "none of the recordings is one" in capsys.readouterr().err
    # each movie with its own ROIs: a tab after the movie in the --list file
    listing = tmp_path / "movies.txt"
    listing.write_text("movie.tif\tlabels.tif\nr0.npz\n")
    assert main(["pretrain", "--list", str(listing), "--out", str(tmp_path / "run2"),
                 *common]) == 0
    listing.write_text("r0.npz\tlabels.tif\n")
    assert main(["pretrain", "--list", str(listing), "--out", str(tmp_path / "no"), *common]) == 2
    assert "only TIFF movies take them" in capsys.readouterr().err
    listing.write_text("movie.tif\tmissing.zip\n")
    assert main(["pretrain", "--list", str(listing), "--out", str(tmp_path / "no"), *common]) == 2
    assert "missing.zip: no such file" in capsys.readouterr().err


def test_pretrain_errors_of_loading_workers_are_one_line(tmp_path, capsys):
    bad = tmp_path / "no_rate.npz"  # no frame rate, and none given: read_recording refuses it
    np.savez(bad, traces=np.zeros((4, 96)), centroids=np.zeros((4, 2)))
    args = ["pretrain", str(bad), "--out", str(tmp_path / "run"), "--shape", json.dumps(SHAPE)]
    assert main([*args, "--steps", "1", "--device", "cpu", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"neurt pretrain: error: {bad} has no 'frame_rate'; pass frame_rate=... " \
        "(frames per second)\n"


def test_pretrain_errors_of_loading_workers_keep_the_message_of_the_package_errors(
    tmp_path, capsys
):
    # the worker's traceback names a ReaderError "napari_neurt.io._common.ReaderError: ..."
    plane = tmp_path / "plane0"
    plane.mkdir()
    np.save(plane / "F.npy", np.zeros(96, np.float32))  # not (ROIs, frames): a ReaderError
    np.save(plane / "stat.npy", np.array([{"ypix": [1], "xpix": [1]}], dtype=object))
    np.save(plane / "ops.npy", np.array({"fs": 10.0, "Ly": 8, "Lx": 8}, dtype=object))
    args = ["pretrain", str(plane), "--out", str(tmp_path / "run"), "--shape", json.dumps(SHAPE)]
    assert main([*args, "--steps", "1", "--device", "cpu", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"neurt pretrain: error: {plane / 'F.npy'} should be (ROIs, frames); it has " \
        "shape (96,)\n"


def test_pretrain_log_every_0_prints_the_last_step_only(tmp_path, capsys):
    path = write_recording(tmp_path / "r0.npz")
    args = ["pretrain", str(path), "--out", str(tmp_path / "run"), "--shape", json.dumps(SHAPE)]
    args += ["--steps", "2", "--batch-size", "4", "--device", "cpu", "--log-every", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "step 2/2" in err and "step 1/2" not in err


def test_pretrain_list_paths_are_relative_to_the_list(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_recording(tmp_path / "data" / "r0.npz", seed=0)
    (tmp_path / "data" / "recordings.txt").write_text("r0.npz\n")
    monkeypatch.chdir(tmp_path)  # not the list's folder
    common = ["--shape", json.dumps(SHAPE), "--batch-size", "4", "--steps", "1", "--device", "cpu"]
    assert main(["pretrain", "--list", "data/recordings.txt", "--out", "run", *common]) == 0
    # a list written from the current folder (ls data/*.npz > lists/all.txt) still reads
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "all.txt").write_text("data/r0.npz\n")
    assert main(["pretrain", "--list", "lists/all.txt", "--out", "run2", *common]) == 0


def test_finetune_command_defaults_are_finetune_configs():
    from napari_neurt.cli import build_parser
    from napari_neurt.training import FinetuneConfig

    args = build_parser().parse_args(["finetune", "manifest.csv", "--out", "out"])
    config = FinetuneConfig()
    assert (args.steps, args.lr, args.head_lr, args.bag_size, args.cached_recordings) == (
        config.steps, config.lr, config.head_lr, config.bag_size, config.cached_recordings
    )
    assert (args.recording_pooling, args.activity_statistics, args.statistics_spread) == (
        config.recording_pooling, config.activity_statistics, config.statistics_spread
    )
    assert args.whole_recording_fit is config.whole_recording_fit is None  # auto
    for flag, forced in (("--whole-recording-fit", True), ("--no-whole-recording-fit", False)):
        assert build_parser().parse_args(["finetune", "m.csv", "--out", "o", flag]) \
            .whole_recording_fit is forced


def test_finetune_help_states_the_fits_threshold(capsys):
    from napari_neurt.cli import build_parser
    from napari_neurt.training.finetune import WHOLE_RECORDING_MIN_ANIMALS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"at least {WHOLE_RECORDING_MIN_ANIMALS} animals of each class" in help_text


def test_finetune_command_writes_model_and_report(tmp_path, tiny_checkpoint, capsys):
    rows = []
    for kind in ("calm", "bursty"):
        for animal in range(2):
            name = f"{kind}{animal}.npz"
            write_recording(tmp_path / name, kind, seed=animal + (10 if kind == "calm" else 0))
            rows.append([name, f"{kind}-{animal}", kind])
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as file:
        csv.writer(file).writerows([["file", "mouse", "group"], *rows])
    out = tmp_path / "classifier"
    arguments = ["finetune", str(manifest), "--out", str(out), "--base", str(tiny_checkpoint)]
    arguments += ["--steps", "6", "--bag-size", "4", "--device", "cpu"]
    assert main(arguments) == 2
    assert "no column 'path'" in capsys.readouterr().err
    columns = ["--path-column", "file", "--animal-column", "mouse", "--label-column", "group"]
    assert main([*arguments, *columns, "--classes", "calm, bursty"]) == 0
    assert "model and report" in capsys.readouterr().out
    model = load_model(out, device="cpu")
    assert model.class_names == ("calm", "bursty") and model.config.neuron_stats == 5
    assert model.config.recording_pooling == "evidence" and model.config.stats_spread
    assert (out / "report.csv").is_file() and (out / "report.json").is_file()
    with_statistics = tmp_path / "gated-plain"
    arguments[arguments.index(str(out))] = str(with_statistics)
    options = ["--no-activity-statistics", "--recording-pooling", "gated"]
    assert main([*arguments, *columns, *options]) == 0
    plain = load_model(with_statistics, device="cpu")
    assert plain.config.neuron_stats == 0 and plain.config.recording_pooling == "gated"
    assert not plain.config.stats_spread  # only an evidence head reading statistics has it
    arguments[arguments.index(str(with_statistics))] = str(tmp_path / "no-spread")
    assert main([*arguments, *columns, "--no-statistics-spread"]) == 0
    no_spread = load_model(tmp_path / "no-spread", device="cpu").config
    assert no_spread.neuron_stats == 5 and not no_spread.stats_spread
    # too few animals for the whole-recording fit by default: the head as it learnt
    assert load_model(out, device="cpu").module.recording_head.evidence_scale.item() == 1.0
    arguments[arguments.index(str(tmp_path / "no-spread"))] = str(tmp_path / "whole")
    assert main([*arguments, *columns, "--whole-recording-fit"]) == 0  # forced
    whole = load_model(tmp_path / "whole", device="cpu").module.recording_head
    assert whole.evidence_scale.item() != 1.0


def test_reconstruct_with_adapt_records_the_adaptation(tmp_path, tiny_checkpoint):
    path = write_recording(tmp_path / "rec.npz")
    out = tmp_path / "results"
    arguments = ["reconstruct", str(path), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main([*arguments, "--adapt", "3", "--device", "cpu"]) == 0
    with np.load(out / "rec.neurt-reconstruct.npz") as results:
        model = json.loads(str(results["model"]))
    assert model["provenance"]["adapted"]["steps"] == 3


def test_finetune_cached_recordings_reaches_the_config(tmp_path, monkeypatch, capsys):
    import napari_neurt.training

    for k in range(4):
        folder = tmp_path / ("calm" if k % 2 else "bursty")
        folder.mkdir(exist_ok=True)
        write_recording(folder / f"a{k}.npz", seed=k)
    seen = []

    def finetune(data, out, config, **options):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(napari_neurt.training, "finetune", finetune)
    with pytest.raises(SystemExit):  # stopped at the call, before any training
        main(["finetune", str(tmp_path), "--out", str(tmp_path / "o"), "--cached-recordings", "0"])
    assert seen[0].cached_recordings == 0
    monkeypatch.undo()
    assert main(["finetune", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--cached-recordings", "-1"]) == 2
    assert "cached_recordings must be 0" in capsys.readouterr().err
