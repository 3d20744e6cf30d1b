"""Pretraining: data stream, learning, resuming, stopping, DDP across two processes."""

from __future__ import annotations

import contextlib
import json
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from napari_neurt import Recording, load_model
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.training import PretrainConfig, WindowStream, iter_pretrain, pretrain
from napari_neurt.training.engine import DistributedContext, read_training_state

TINY = NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=2, n_ff=32)


@pytest.fixture(autouse=True)
def one_thread():
    # small models train fastest on one thread, and the test machine is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sine_recording(seed: int, n_neurons: int = 10, n_frames: int = 300) -> Recording:
    """Noisy sines with a shared period: a signal a tiny model can learn to fill in."""
    rng = np.random.default_rng(seed)
    frames = np.arange(n_frames)
    phase = rng.uniform(0, 2 * np.pi, (n_neurons, 1))
    traces = np.sin(2 * np.pi * frames / 24 + phase) + 0.05 * rng.standard_normal(
        (n_neurons, n_frames)
    )
    return Recording(
        traces=traces,
        neuron_ids=np.arange(1, n_neurons + 1),
        centroids=rng.uniform(0, 100, (n_neurons, 2)),
        frame_rate=10.0,
        source=f"sines {seed}",
    )


def config(**overrides) -> PretrainConfig:
    values = {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup": 0.2, "save_every": 0}
    return PretrainConfig(**{**values, "device": "cpu", **overrides})


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.state_dict().values()])


def test_stream_draws_windows_reproducibly_and_resumes_without_reloading():
    sources = [sine_recording(k) for k in range(3)]
    stream = WindowStream(
        sources,
        window_length=32,
        batch_size=4,
        seed=1,
        windows_per_recording=4,
        recordings_per_round=2,
    )
    items = [item for item, _ in zip(stream, range(7), strict=False)]
    assert stream.batches_per_round == 2
    assert all(windows.shape == (4, 32, 5) for windows, _ in items)
    again = [item for item, _ in zip(stream, range(7), strict=False)]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(items, again, strict=True))
    stream.start_batch = 3
    resumed = [item for item, _ in zip(stream, range(4), strict=False)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items[3:], resumed, strict=True))


def test_a_stream_with_rounds_of_only_short_recordings_resumes_where_it_was():
    """A round whose recordings are all too short must still count as a round's batches, as
    the resumed stream (which skips rounds without loading them) counts it."""
    sources = [sine_recording(0, n_frames=20), sine_recording(1)] * 2
    stream = WindowStream(
        sources, window_length=32, batch_size=4, windows_per_recording=8, recordings_per_round=1
    )
    items = [item for item, _ in zip(stream, range(8), strict=False)]
    stream.start_batch = 3
    resumed = [item for item, _ in zip(stream, range(5), strict=False)]
    assert all(
        torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(items[3:], resumed, strict=True)
    )


def test_stream_holds_one_round_of_recordings_however_many_it_streams(live_tokens):
    """Pretraining streams: recordings are made when their round comes (sources are callables
    here) and dropped after it, so memory does not grow with the number of recordings."""
    sources = [lambda k=k: sine_recording(k, n_neurons=4, n_frames=64) for k in range(24)]
    stream = WindowStream(
        sources, window_length=32, batch_size=4, windows_per_recording=4, recordings_per_round=3
    )
    batches = iter(stream)
    for _ in range(8 * stream.batches_per_round):  # every recording once
        next(batches)
    assert live_tokens.built == 24
    assert live_tokens.most == 3  # one round's recordings


def window_shares(streams, n_sources: int, n_batches: int) -> np.ndarray:
    """Share of the windows from each source (whose tokens all equal its index) over streams."""
    counts = np.zeros(n_sources)
    for stream in streams:
        batches = iter(stream)
        for _ in range(n_batches):
            windows, _ = next(batches)
            counts += np.bincount(windows[:, 0, 0].long().numpy(), minlength=n_sources)
    return counts / counts.sum()


def test_every_recording_weighs_the_same_whatever_the_number_of_processes_and_workers():
    # Each shard (rank, loader worker) streams all recordings in its own order. Splitting them
    # among shards, as before, gave 5 recordings on 2 ranks shares of 0.16-0.26.
    sources = [np.full((10, 64, 5), k, np.float32) for k in range(5)]
    options = {"window_length": 32, "batch_size": 8, "windows_per_recording": 16,
               "recordings_per_round": 2}
    ranks = [WindowStream(sources, **options, rank=r, world_size=2) for r in (0, 1)]
    np.testing.assert_allclose(window_shares(ranks, 5, 400), 0.2, atol=0.02)
    workers = DataLoader(WindowStream(sources, **options, rank=0, world_size=1),
                         batch_size=None, num_workers=2)
    np.testing.assert_allclose(window_shares([workers], 5, 400), 0.2, atol=0.02)
    # the ranks draw different recordings and windows
    first = [next(iter(stream))[0] for stream in ranks]
    assert not torch.equal(first[0], first[1])


def test_a_process_never_runs_out_of_usable_recordings_that_another_has():
    # one recording too short for the windows: every rank skips it and trains on the other
    sources = [np.zeros((10, 20, 5), np.float32), np.ones((10, 64, 5), np.float32)]
    for rank in (0, 1):
        windows, _ = next(iter(WindowStream(sources, window_length=32, batch_size=4,
                                            rank=rank, world_size=2)))
        assert (windows == 1).all()
    with pytest.raises(ValueError, match="no training recordings"):
        WindowStream([], window_length=32, batch_size=2)


def test_short_recordings_are_skipped_and_none_usable_is_an_error(caplog):
    short = sine_recording(0, n_frames=20)
    stream = WindowStream([short, sine_recording(1)], window_length=32, batch_size=2)
    windows, _ = next(iter(stream))
    assert windows.shape == (2, 32, 5) and "skipping" in caplog.text
    with pytest.raises(ValueError, match="at least 32 frames"):
        next(iter(WindowStream([short], window_length=32, batch_size=2)))


def test_pretraining_learns_a_simple_signal(tmp_path):
    sources = [sine_recording(k) for k in range(3)]
    result = pretrain(sources, tmp_path, config(steps=120, batch_size=16), model=TINY)
    losses = np.array([loss for _, loss in result.history])
    assert result.step == 120 and not result.stopped
    assert losses[-20:].mean() < 0.5 * losses[:10].mean()
    model = load_model(tmp_path, device="cpu")  # the folder is a checkpoint
    assert model.config == TINY and model.provenance["step"] == 120
    assert torch.equal(flat(model.module), flat(result.network))


def test_a_movie_read_with_its_rois_is_named_by_its_file():
    from functools import partial

    from napari_neurt.io import read_recording
    from napari_neurt.training.data import describe_source

    movie = partial(read_recording, "session1/movie.tif", labels="session1/RoiSet.zip")
    assert describe_source(movie) == "session1/movie.tif"  # in messages, not the partial's repr


def test_pretraining_takes_the_animals_of_a_simulated_cohort(tmp_path):
    from napari_neurt import simulate
    from napari_neurt.training.data import describe_source, load_recording

    animals = simulate.cohort(1, seed=3, n_neurons=12, n_frames=300)
    assert load_recording(animals[0]) is animals[0].recording
    assert describe_source(animals[0]) == animals[0].animal
    result = pretrain(animals, tmp_path, config(steps=2, batch_size=4), model=TINY)
    assert result.step == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_continues_exactly_as_an_uninterrupted_run(tmp_path, workers):
    sources = [sine_recording(k) for k in range(3)]
    # small rounds, so that the interrupted run stops inside a round, mid-way through a lane
    settings = config(num_workers=workers, windows_per_recording=8, recordings_per_round=2)
    straight = pretrain(sources, tmp_path / "straight", settings, model=TINY)

    stop = threading.Event()
    first = pretrain(
        sources,
        tmp_path / "resumed",
        settings,
        model=TINY,
        stop=stop,
        progress=lambda p: p.done == 5 and stop.set(),
    )
    assert first.stopped and first.step == 5
    second = pretrain(sources, tmp_path / "resumed", settings, model=TINY)
    assert second.step == 12 and not second.stopped
    assert torch.equal(flat(second.network), flat(straight.network))
    assert [s for s, _ in second.history] == list(range(1, 13))


def test_a_resumed_run_extended_to_more_steps_follows_its_own_schedule_from_its_first_step(
    tmp_path, monkeypatch
):
    """Resuming with a larger `steps` (docs: "to extend it") steps with the new schedule's rate
    from the first resumed step; the optimiser's rate saved by the finished run (the old
    schedule's end, 0) was used for that step."""
    from napari_neurt.training.engine import WarmupCosine
    from napari_neurt.training.pretrain import ReconstructionTrainer

    sources = [sine_recording(0)]
    pretrain(sources, tmp_path, config(steps=10), model=TINY)
    used = []
    step = ReconstructionTrainer.train_step

    def recording_rates(self, batch):
        used.append(self.optimizer.param_groups[0]["lr"])
        return step(self, batch)

    monkeypatch.setattr(ReconstructionTrainer, "train_step", recording_rates)
    settings = config(steps=20)
    pretrain(sources, tmp_path, settings, model=TINY)
    schedule = WarmupCosine(20, 4)  # ceil(warmup 0.2 x 20 steps)
    assert used == pytest.approx([settings.lr * schedule(k) for k in range(10, 20)])


def test_progress_reports_the_learning_rate_each_step_used(tmp_path):
    from napari_neurt.training.engine import WarmupCosine

    reported = []
    settings = config(steps=10)
    pretrain([sine_recording(0)], tmp_path, settings, model=TINY,
             progress=lambda p: reported.append(p.lr))
    schedule = WarmupCosine(10, 2)  # ceil(warmup 0.2 x 10 steps)
    assert reported == pytest.approx([settings.lr * schedule(k) for k in range(10)])


def test_each_checkpoint_is_written_once(tmp_path, monkeypatch):
    # the last periodic save is the final one when save_every divides the steps
    import importlib

    pretrain_module = importlib.import_module("napari_neurt.training.pretrain")

    saved = []
    write = pretrain_module._save
    monkeypatch.setattr(pretrain_module, "_save",
                        lambda folder, trainer, *rest: saved.append(trainer.step)
                        or write(folder, trainer, *rest))
    pretrain([sine_recording(0)], tmp_path, config(steps=4, save_every=2), model=TINY)
    assert saved == [2, 4]
    steps = iter_pretrain([sine_recording(0)], tmp_path / "closed", config(steps=9, save_every=3),
                          model=TINY)
    for _ in range(3):
        next(steps)
    steps.close()  # right after the save at step 3
    assert saved == [2, 4, 3]


def test_stop_ends_within_a_step_with_a_loadable_checkpoint(tmp_path):
    stop = threading.Event()
    seen = []

    def progress(p):
        seen.append(p.done)
        if p.done == 3:
            stop.set()

    result = pretrain(
        [sine_recording(0)], tmp_path, config(steps=50), model=TINY, stop=stop, progress=progress
    )
    assert result.stopped and result.step == 3 and seen == [1, 2, 3]
    assert read_training_state(tmp_path)["step"] == 3
    assert load_model(tmp_path, device="cpu").provenance["step"] == 3


def test_closing_the_generator_saves_a_checkpoint(tmp_path):
    steps = iter_pretrain([sine_recording(0)], tmp_path, config(steps=50), model=TINY)
    progress = [next(steps), next(steps)]
    assert progress[-1].done == 2 and "loss" in progress[-1].stage and progress[-1].loss > 0
    steps.close()  # what a napari worker's quit() does
    assert read_training_state(tmp_path)["step"] == 2


def test_training_on_a_numbered_gpu_makes_it_the_current_device(tmp_path, monkeypatch):
    # Pinned memory goes to the current device: on cuda:1 without this, GPU 0 got a context too.
    scope = DistributedContext(torch.device("cuda", 1)).current_device()
    assert isinstance(scope, torch.cuda.device) and scope.idx == 1
    assert isinstance(DistributedContext(torch.device("cpu")).current_device(), contextlib.nullcontext)

    inside = []

    @contextlib.contextmanager
    def recording_scope(self):
        inside.append(True)
        yield
        inside.append(False)

    monkeypatch.setattr(DistributedContext, "current_device", recording_scope)
    states = []
    pretrain([sine_recording(0)], tmp_path, config(steps=2), model=TINY,
             progress=lambda p: states.append(list(inside)))
    assert states == [[True], [True]] and inside == [True, False]


def test_resuming_with_other_settings_is_refused(tmp_path):
    pretrain([sine_recording(0)], tmp_path, config(steps=2), model=TINY)
    saved_lr = config(steps=2).lr
    # the message gives the run's value, which the user has to pass to resume it
    with pytest.raises(ValueError, match=rf"lr {saved_lr!r} \(now 0.01\).*--no-resume"):
        pretrain([sine_recording(0)], tmp_path, config(steps=4, lr=1e-2), model=TINY)
    with pytest.raises(ValueError, match="network shape"):
        pretrain([sine_recording(0)], tmp_path, config(steps=4), model=NeurtConfig(seq_len=32))


def test_pretraining_can_start_from_a_classifier(tmp_path, caplog):
    """`neurt pretrain --model default` (or neurt-5xfad, or a fine-tuned folder): the default
    weights carry a classifier, whose class names the saved checkpoint must keep (saving failed
    with "the model has 2 classes but 0 class names", after the training steps had run)."""
    from dataclasses import replace

    from napari_neurt.model import NeurtModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = Neurt(replace(TINY, n_classes=2, mil_hidden=8))
    base = NeurtModel(network, class_names=("wild type", "AD-like"), device="cpu")
    base.save(tmp_path / "classifier")
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="napari_neurt.training.pretrain"):
        pretrain([sine_recording(0)], out, config(steps=2), model=str(tmp_path / "classifier"))
    assert load_model(out, device="cpu").class_names == ("wild type", "AD-like")
    assert "fine-tune" in caplog.text and "wild type vs AD-like" in caplog.text  # heads kept
    pretrain([sine_recording(0)], out, config(steps=3))  # resumed: the names are kept too
    resumed = load_model(out, device="cpu")
    assert resumed.provenance["step"] == 3 and resumed.class_names == ("wild type", "AD-like")


def test_a_save_cut_short_is_found_on_resume_not_mixed(tmp_path, monkeypatch):
    """Weights, config and optimiser state are three files: a crash between them must not
    resume newer weights with an older optimiser (or the other way round)."""
    from napari_neurt.io import atomic
    from napari_neurt.model import checkpoint
    from napari_neurt.training import engine

    pretrain([sine_recording(0)], tmp_path, config(steps=2, save_every=2), model=TINY)
    rename = atomic.os.replace

    def fail_on_config(source, target):  # the next save dies between its two renames
        if Path(target).name == checkpoint.CONFIG_NAME:
            raise OSError("disk full")
        return rename(source, target)

    monkeypatch.setattr(atomic.os, "replace", fail_on_config)
    with pytest.raises(OSError, match="disk full"):
        pretrain([sine_recording(0)], tmp_path, config(steps=4, save_every=2), model=TINY)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="interrupted while saving"):
        pretrain([sine_recording(0)], tmp_path, config(steps=6, save_every=2), model=TINY)

    (tmp_path / "b").mkdir()  # the same for the optimiser state, written before its record
    pretrain([sine_recording(0)], tmp_path / "b", config(steps=2), model=TINY)
    tensors = tmp_path / "b" / engine.STATE_TENSORS
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="optimiser state .* interrupted while saving"):
        pretrain([sine_recording(0)], tmp_path / "b", config(steps=4), model=TINY)


def test_a_run_from_weights_records_them_as_its_start(tmp_path):
    pretrain([sine_recording(0)], tmp_path / "a", config(steps=2), model=TINY)
    pretrain([sine_recording(0)], tmp_path / "b", config(steps=2), model=str(tmp_path / "a"))
    origin = load_model(tmp_path / "b", device="cpu").provenance["started_from"]
    assert origin["source"] == "napari-neurt pretrain" and origin["step"] == 2  # a, not a's start
    assert origin["started_from"]["initial"].startswith("random")
    pretrain([sine_recording(0)], tmp_path / "b", config(steps=4), model=str(tmp_path / "a"))
    assert load_model(tmp_path / "b", device="cpu").provenance["started_from"] == origin


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from napari_neurt.model.neurt import NeurtConfig
    from napari_neurt.training import PretrainConfig, pretrain

    out, paths = sys.argv[1], sys.argv[2:]
    model = NeurtConfig(**{config})
    result = pretrain(paths, out, PretrainConfig(**{train}), model=model,
                      read_options=dict(frame_rate=10.0))
    weights = torch.cat([p.detach().reshape(-1) for p in result.network.state_dict().values()])
    np.save(os.path.join(out, f"rank{{os.environ['RANK']}}.npy"), weights.numpy())
    """
)


def run_ddp_pretraining(tmp_path, torchrun, n_recordings: int, script: str) -> Path:
    """Run `script` (DDP_SCRIPT, filled in) on two gloo processes over `n_recordings` sine
    recordings saved as .npz; return its output folder."""
    paths = []
    for k in range(n_recordings):
        recording = sine_recording(k)
        paths.append(tmp_path / f"rec{k}.npz")
        np.savez(paths[-1], traces=recording.traces, centroids=recording.centroids)
    (tmp_path / "train.py").write_text(script)
    out = tmp_path / "run"
    done = torchrun(tmp_path / "train.py", out, *paths, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_ddp_with_two_processes_keeps_replicas_identical(tmp_path, torchrun):
    train = {"steps": 6, "batch_size": 4, "lr": 3e-3, "save_every": 3, "device": "cpu"}
    script = DDP_SCRIPT.format(config=repr(TINY.to_dict()), train=repr(train))
    out = run_ddp_pretraining(tmp_path, torchrun, 4, script)

    rank0, rank1 = np.load(out / "rank0.npy"), np.load(out / "rank1.npy")
    np.testing.assert_array_equal(rank0, rank1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        initial = flat(Neurt(TINY)).numpy()
    assert np.abs(rank0 - initial).max() > 1e-3
    saved = load_model(out, device="cpu")  # rank 0 wrote the checkpoint
    np.testing.assert_array_equal(flat(saved.module).numpy(), rank0)
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 6


def test_ddp_pretraining_from_a_classifier(tmp_path, torchrun):
    """The default weights carry a classifier, whose heads get no gradient from reconstruction:
    DDP (one process per GPU) failed at the second step with "Expected to have finished
    reduction in the prior iteration" unless told that some parameters go unused."""
    from dataclasses import replace

    from napari_neurt.model import NeurtModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = Neurt(replace(TINY, n_classes=2, mil_hidden=8))
    NeurtModel(network, class_names=("a", "b"), device="cpu").save(tmp_path / "classifier")
    train = {"steps": 3, "batch_size": 4, "lr": 3e-3, "save_every": 0, "device": "cpu"}
    start = f"model = {str(tmp_path / 'classifier')!r}"
    script = DDP_SCRIPT.replace("model = NeurtConfig(**{config})", start).format(train=repr(train))
    out = run_ddp_pretraining(tmp_path, torchrun, 2, script)
    np.testing.assert_array_equal(np.load(out / "rank0.npy"), np.load(out / "rank1.npy"))
    trained = load_model(out, device="cpu").module
    for name in ("time_pool", "recording_head"):  # untouched, as by a single process
        for before, after in zip(getattr(network, name).parameters(),
                                 getattr(trained, name).parameters(), strict=True):
            torch.testing.assert_close(before, after, rtol=0, atol=0)
