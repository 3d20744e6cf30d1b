"""The default weights that ship with napari-neurt (scripts/train_default_weights.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from napari_neurt import simulate
from napari_neurt.model import NeurtConfig, load_model

WEIGHTS = Path(str(files("napari_neurt.model") / "weights" / "default"))

# the documented configuration (docs/model_card.md)
DOCUMENTED = NeurtConfig(
    seq_len=256, n_features=5, n_embd=64, n_head=4, n_layer=3, n_ff=256, n_classes=2,
    mil_hidden=64, neuron_stats=5, recording_pooling="evidence", stats_spread=True,
    interpolate=True,
    local_kernel=17,
)


@pytest.fixture(scope="module")
def model():
    return load_model("default", device="cpu")


def test_shipped_files_are_small():
    shipped = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert {p.name for p in shipped} >= {"config.json", "model.safetensors"}
    assert sum(p.stat().st_size for p in shipped) < 10 * 1024 * 1024


def test_default_loads_with_documented_config(model):
    assert model.config == DOCUMENTED
    assert model.class_names == ("wild type", "AD-like")
    assert "simulated" in model.provenance.get("trained_on", "")


def test_default_reconstructs_better_than_a_constant_and_a_straight_line(model):
    recording = next(simulate.training_recordings(1, seed=987, n_neurons=40, n_frames=600))
    tokens = model.tokens_for(recording).tokens
    rng = np.random.default_rng(0)
    hide = np.zeros(tokens.shape[:2], dtype=bool)
    for i in range(tokens.shape[0]):
        for start in rng.choice(np.arange(10, 580, 40), 4, replace=False):
            hide[i, start : start + 8] = True
    for channels in ("all", "own"):
        out = model.reconstruct(tokens, hide, channels=channels)[..., 0]
        truth = tokens[..., 0][hide]
        sse = np.sum((out[hide] - truth) ** 2)
        constant = np.sum((truth - truth.mean()) ** 2)  # the best constant
        assert sse < constant, channels
        frames = np.arange(tokens.shape[1])
        line = [np.interp(frames[h], frames[~h], y[~h]) for y, h in zip(tokens[..., 0], hide)]
        assert sse < np.sum((np.concatenate(line) - truth) ** 2), channels


def test_default_classifies(model):
    animal = simulate.cohort(1, seed=5, n_neurons=30, n_frames=400)[0]
    result = model.classify(model.tokens_for(animal.recording))
    assert 0.0 <= result.recording_probability <= 1.0
    assert result.neuron_attention.shape == (animal.recording.n_neurons,)
