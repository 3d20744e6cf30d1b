"""Self-supervised adaptation of a model to one recording."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neurt import Cancelled, Recording
from napari_neurt.model import NeurtModel, span_mask
from napari_neurt.model.neurt import Neurt, NeurtConfig

TINY = NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=2, n_ff=32)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> NeurtModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return NeurtModel(Neurt(TINY), device="cpu")


def wave_recording(n_neurons: int = 12, n_frames: int = 384) -> Recording:
    rng = np.random.default_rng(5)
    frames = np.arange(n_frames)
    traces = np.sin(2 * np.pi * frames / 16 + rng.uniform(0, 6.3, (n_neurons, 1)))
    return Recording(
        traces=traces + 0.03 * rng.standard_normal((n_neurons, n_frames)),
        neuron_ids=np.arange(1, n_neurons + 1),
        centroids=rng.uniform(0, 60, (n_neurons, 2)),
        frame_rate=10.0,
        source="waves",
    )


def weights(model: NeurtModel) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.module.parameters()])


def hidden_error(model: NeurtModel, tokens: np.ndarray, hide: np.ndarray) -> float:
    reconstruction = model.reconstruct(tokens, hide)
    return float(((reconstruction[..., 0] - tokens[..., 0])[hide] ** 2).mean())


def test_adapt_improves_reconstruction_of_unseen_frames_and_leaves_the_model_alone():
    model = tiny_model()
    before = weights(model)
    tokens = model.tokens_for(wave_recording()).tokens
    seen, unseen = tokens[:, :256], tokens[:, 256:]
    hide = span_mask(*unseen.shape[:2], seed=1)
    adapted = model.adapt(seen, steps=60, lr=3e-3, seed=0)

    assert hidden_error(adapted, unseen, hide) < 0.5 * hidden_error(model, unseen, hide)
    assert torch.equal(weights(model), before)  # the original is untouched
    assert adapted is not model and adapted.module is not model.module
    assert adapted.provenance["adapted"]["steps"] == 60
    assert adapted.token_settings == model.token_settings and adapted.device == model.device


def test_adapt_is_deterministic_for_a_seed():
    tokens = tiny_model().tokens_for(wave_recording()).tokens
    a = tiny_model().adapt(tokens, steps=5, seed=3)
    b = tiny_model().adapt(tokens, steps=5, seed=3)
    c = tiny_model().adapt(tokens, steps=5, seed=4)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))


def test_adapt_never_shows_the_model_the_steps_to_reconstruct(monkeypatch):
    from napari_neurt.training import adapt as adapt_module

    model = tiny_model()
    recording = wave_recording()
    tokens = model.tokens_for(recording).tokens
    hide = span_mask(*tokens.shape[:2], seed=2)
    batches = []
    masker = adapt_module._KeptOutMasker

    class Recorder(masker):
        def __call__(self, item):
            batch = super().__call__(item)
            batches.append((item[0][..., -1] > 0.5, batch))
            return batch

    monkeypatch.setattr(adapt_module, "_KeptOutMasker", Recorder)
    model.adapt(recording, steps=4, hide=hide, channels="own")
    for kept_out, batch in batches:
        assert kept_out.any()
        assert (batch.inputs[..., 0][kept_out] == 0).all()  # hidden as reconstruct hides
        assert not batch.loss_mask[..., 0][kept_out].any()  # and never scored


def test_adapt_progress_cancellation_and_bad_arguments():
    model = tiny_model()
    tokens = model.tokens_for(wave_recording()).tokens
    seen = []
    model.adapt(tokens, steps=3, progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3] and seen[-1].stage.startswith("adapt")
    with pytest.raises(Cancelled):
        model.adapt(tokens, steps=50, stop=lambda: True)
    with pytest.raises(ValueError, match="steps"):
        model.adapt(tokens, steps=0)
    with pytest.raises(ValueError, match="shape"):
        model.adapt(tokens, steps=2, hide=np.zeros((2, 2), bool))
