"""Checkpoints (safetensors + JSON), published .pth import, weight sources and their errors."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_neurt.model import NeurtModel, load_model, published, read_checkpoint, read_published
from napari_neurt.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.model.published import PUBLISHED, WeightsNotAvailable


def small_model(**overrides) -> NeurtModel:
    torch.manual_seed(0)
    config = NeurtConfig(
        **{**dict(seq_len=16, n_embd=8, n_head=2, n_layer=2, n_ff=16), **overrides}
    )
    names = tuple(f"group {k}" for k in range(config.n_classes))
    return NeurtModel(
        Neurt(config),
        class_names=names,
        frame_rate_hz=15.0,
        provenance={"source": "test"},
        device="cpu",
    )


def test_checkpoint_round_trip(tmp_path):
    model = small_model(n_classes=2, mil_hidden=4)
    model.token_settings["delta_um"] = 30.0
    folder = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    document = json.loads((folder / CONFIG_NAME).read_text())
    assert document["model"]["mil_hidden"] == 4 and document["class_names"] == [
        "group 0",
        "group 1",
    ]
    assert document["frame_rate_hz"] == 15.0 and document["tokens"]["delta_um"] == 30.0

    for where in (folder, folder / CONFIG_NAME, folder / WEIGHTS_NAME):
        loaded = load_model(where, device="cpu")
        assert loaded.config == model.config and loaded.class_names == model.class_names
        assert loaded.token_settings["delta_um"] == 30.0 and loaded.frame_rate_hz == 15.0
        assert len(loaded.provenance["weights_sha256"]) == 64
        for name, tensor in model.module.state_dict().items():
            torch.testing.assert_close(loaded.module.state_dict()[name], tensor, atol=0, rtol=0)


def test_loading_a_model_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_model("default", device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_whose_config_does_not_match_its_weights(tmp_path):
    folder = small_model().save(tmp_path / "ckpt")
    document = json.loads((folder / CONFIG_NAME).read_text())
    document["model"]["n_ff"] = 24
    document["model"]["n_layer"] = 3
    (folder / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="does not match the weights") as error:
        load_model(folder, device="cpu")
    message = str(error.value)
    assert (
        "blocks.0.mlp.fc.weight: the config needs shape (24, 8), the weights have (16, 8)"
        in message
    )
    assert "missing tensors: blocks.2." in message


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("model"), 'no "model" section'),
        (lambda d: d.update(model=None), 'no "model" section'),
        (lambda d: d.update(format_version="1"), "format_version must be a whole number"),
        (lambda d: d["model"].update(n_embd="eight"), "not a valid config|n_embd"),
        # of a type the network cannot use: refused by name, not a TypeError from torch when
        # the network is built or, for these two, only when it first runs
        (lambda d: d["model"].update(seq_len="16"), "seq_len must be a whole number"),
        (lambda d: d["model"].update(n_head=2.0), "n_head must be a whole number"),
        (lambda d: d["model"].update(norm_eps="1e-12"), "norm_eps must be a number"),
        (lambda d: d["model"].update(interpolate="false"), "interpolate must be true or false"),
        (lambda d: d.update(class_names=["only one"]), "names 1 classes"),
        (lambda d: d.update(class_names="wild type, AD"), "class_names must be a list"),
        (lambda d: d.update(frame_rate_hz="15"), "frame_rate_hz must be a positive number"),
        (lambda d: d.update(tokens=["own"]), "tokens must be a JSON object"),
        (lambda d: d.update(provenance="ours"), "provenance must be a JSON object"),
    ],
)
def test_a_damaged_config_is_one_clear_value_error(tmp_path, damage, message):
    folder = small_model(n_classes=2, mil_hidden=4).save(tmp_path / "ckpt")
    document = json.loads((folder / CONFIG_NAME).read_text())
    damage(document)
    (folder / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        read_checkpoint(folder)


@pytest.mark.parametrize("rate", [-20.0, 0.0, float("nan"), float("inf")])
def test_a_frame_rate_the_reader_refuses_is_not_written(tmp_path, rate):
    from napari_neurt.model import save_checkpoint
    from napari_neurt.training.pretrain import PretrainConfig

    with pytest.raises(ValueError, match="frame_rate_hz must be a positive number"):
        save_checkpoint(tmp_path / "ckpt", small_model().module, frame_rate_hz=rate)
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(ValueError, match="frame_rate_hz must be a positive number"):
        PretrainConfig(frame_rate_hz=rate)  # before training, not at its first save


def test_weights_of_another_write_are_refused_and_a_torn_read_is_read_again(
    tmp_path, monkeypatch
):
    from napari_neurt.model import checkpoint

    first = small_model().save(tmp_path / "first")
    torch.manual_seed(1)
    second = NeurtModel(Neurt(small_model().config), device="cpu").save(tmp_path / "second")
    document = json.loads((first / CONFIG_NAME).read_text())
    assert document["weights_sha256"] == checkpoint.sha256_of(first / WEIGHTS_NAME)

    # a reader that opened the config just before a writer renamed new weights into place
    # sees the two files of two writes; until the writer's config follows, that is refused
    shutil.copyfile(second / WEIGHTS_NAME, first / WEIGHTS_NAME)
    monkeypatch.setattr(checkpoint.time, "sleep", lambda seconds: None)
    with pytest.raises(ValueError, match="is not the file config.json was written with"):
        read_checkpoint(first)

    # once the config has followed (here on the second read), the checkpoint reads whole
    reads = []
    real_read_pair = checkpoint._read_pair

    def writer_finishes_after_the_first_read(folder):
        pair = real_read_pair(folder)
        if not reads:
            shutil.copyfile(second / CONFIG_NAME, first / CONFIG_NAME)
        reads.append(folder)
        return pair

    monkeypatch.setattr(checkpoint, "_read_pair", writer_finishes_after_the_first_read)
    loaded = read_checkpoint(first)
    assert len(reads) == 2
    assert loaded.provenance["weights_sha256"] == checkpoint.sha256_of(second / WEIGHTS_NAME)


def test_checkpoint_with_extra_or_missing_tensors(tmp_path):
    folder = small_model().save(tmp_path / "ckpt")
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors["time_pool.query"] = torch.zeros(8)
    del tensors["recon_head.bias"]
    save_file(tensors, str(folder / WEIGHTS_NAME))
    document = json.loads((folder / CONFIG_NAME).read_text())
    del document["weights_sha256"]  # weights put there by hand, under a config without digest
    (folder / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="missing tensors: recon_head.bias") as error:
        read_checkpoint(folder)
    assert "no place for: time_pool.query" in str(error.value)


class _RunsCode:
    """A pickle payload: unpickling it calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_with_code_running_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "the-payload-ran"
    evil = tmp_path / "model_epoch_20.pth"
    torch.save({"module.embed.lin.weight": torch.zeros(4, 5), "extra": _RunsCode(marker)}, evil)

    with pytest.raises(ValueError, match="refused to load"):
        load_model(evil, device="cpu")
    with pytest.raises(ValueError, match="refused to load"):
        read_published(evil)
    assert not marker.exists()

    # control: the payload is live, an unrestricted unpickler does run it
    control = tmp_path / "control-marker"
    torch.save({"x": _RunsCode(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_unknown_source_lists_the_valid_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="'default', 'neurt-microns', 'neurt-5xfad'"):
        load_model("neurt-mircons")
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="not a model file"):
        load_model(tmp_path / "weights.bin")


def test_offline_download_error_says_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(published.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(published.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(
        published.PublishedWeights, "url", property(lambda self: "http://127.0.0.1:9/x.pth")
    )
    with pytest.raises(WeightsNotAvailable) as error:
        load_model("neurt-microns", device="cpu")
    message = str(error.value)
    assert "http://127.0.0.1:9/x.pth" in message and "NEURT_WEIGHTS_DIR" in message
    assert str(tmp_path / "cache" / "weights") in message


@pytest.fixture
def serve_folder():
    """Serve a folder over HTTP on localhost, to stand in for GitHub."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_published_weights_are_downloaded_once_and_checked(
    weights_dir, tmp_path, monkeypatch, serve_folder
):
    base = serve_folder(weights_dir)
    monkeypatch.delenv(published.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(published.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(
        published.PublishedWeights, "url", property(lambda self: f"{base}/{self.relative_path}")
    )
    path = published.fetch_published("neurt-microns")
    assert path.parent == tmp_path / "cache" / "weights"
    assert path.read_bytes() == (weights_dir / "bert_recon" / "model_epoch_20.pth").read_bytes()

    # the second time it comes from the cache: no server needed
    monkeypatch.setattr(
        published.PublishedWeights, "url", property(lambda self: "http://127.0.0.1:9/gone")
    )
    assert published.fetch_published("neurt-microns") == path

    # a file with the wrong content is refused
    monkeypatch.setattr(
        published.PublishedWeights,
        "url",
        property(lambda self: f"{base}/bert_classifier/model_epoch_20.pth"),
    )
    monkeypatch.setenv(published.CACHE_DIR_ENV, str(tmp_path / "other-cache"))
    with pytest.raises(WeightsNotAvailable, match="sha256|hash"):
        published.fetch_published("neurt-microns")


def test_weights_dir_file_with_wrong_sha_is_refused(weights_dir, tmp_path, monkeypatch):
    fake = tmp_path / "bert_recon"
    fake.mkdir()
    shutil.copy(weights_dir / "bert_classifier" / "model_epoch_20.pth", fake / "model_epoch_20.pth")
    monkeypatch.setenv(published.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="not the published neurt-microns file"):
        load_model("neurt-microns", device="cpu")


def test_published_import_maps_every_parameter(weights_dir):
    for name, relative in (("neurt-microns", "bert_recon"), ("neurt-5xfad", "bert_classifier")):
        pth = weights_dir / relative / "model_epoch_20.pth"
        checkpoint = read_published(pth)
        theirs = torch.load(pth, map_location="cpu", weights_only=True)
        assert sum(t.numel() for t in theirs.values()) == sum(
            t.numel() for t in checkpoint.state_dict.values()
        )
        assert checkpoint.provenance["source"] == name
        assert checkpoint.provenance["weights_sha256"] == PUBLISHED[name].sha256
        prefix = "module." if name == "neurt-microns" else "module.bert."
        q, k, v = (theirs[f"{prefix}blocks.2.attn.proj_{x}.weight"] for x in "qkv")
        torch.testing.assert_close(
            checkpoint.state_dict["blocks.2.attn.qkv.weight"], torch.cat([q, k, v])
        )
    assert checkpoint.class_names == ("wild type", "5xFAD")
    assert checkpoint.config.n_classes == 2 and checkpoint.config.n_head == 4


def test_imported_checkpoint_gives_the_same_outputs(weights_dir, tmp_path):
    published_model = load_model(
        weights_dir / "bert_classifier" / "model_epoch_20.pth", device="cpu"
    )
    folder = published_model.save(tmp_path / "neurt-5xfad")
    assert (folder / WEIGHTS_NAME).read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip/pickle
    ours = load_model(folder, device="cpu")
    assert ours.provenance["derived_from_sha256"] == PUBLISHED["neurt-5xfad"].sha256
    tokens = np.random.default_rng(0).random((2, 600, 5), dtype=np.float32)
    a, b = published_model.classify(tokens), ours.classify(tokens)
    np.testing.assert_array_equal(a.class_probability, b.class_probability)
    assert b.class_names == ("wild type", "5xFAD")
