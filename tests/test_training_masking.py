"""Masking for masked-reconstruction training: the published regime, the own-channel regime, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neurt.model import NeurtModel
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.training.masking import (
    MaskingConfig,
    geometric_lengths,
    mask_windows,
    masked_mse,
    place_spans,
)


def runs(hidden: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], hidden.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def masked(n_windows=400, n_steps=512, seed=0, **config) -> tuple:
    windows = torch.from_numpy(
        np.random.default_rng(seed).uniform(0.2, 0.9, (n_windows, n_steps, 5)).astype(np.float32)
    )
    return windows, mask_windows(windows, MaskingConfig(**config), np.random.default_rng(seed))


def test_published_regime_hides_15_percent_of_steps_in_all_features():
    windows, batch = masked(own_fraction=0.0)
    assert not batch.own.any()
    # exactly round(0.15 * 512) = 77 steps per window, as the published code
    np.testing.assert_array_equal(batch.hidden.sum(1).numpy(), 77)
    assert torch.equal(batch.loss_mask, batch.hidden[..., None].expand_as(windows))
    visible = ~batch.hidden
    assert torch.equal(batch.inputs[visible], windows[visible])
    assert torch.equal(batch.target, windows)

    zeroed = ~batch.random
    assert (batch.inputs[zeroed][batch.hidden[zeroed]] == 0).all()
    noisy = batch.inputs[batch.random][batch.hidden[batch.random]]
    assert 0 <= noisy.min() and noisy.max() < 1 and noisy.std() > 0.2  # uniform [0, 1)
    # 80 % zeros, 20 % random values (400 windows: sd of the share about 0.02)
    assert abs(batch.random.float().mean().item() - 0.2) < 0.06


def test_published_span_lengths_are_geometric_and_bounded():
    rng = np.random.default_rng(1)
    lengths, probabilities = geometric_lengths(10, 0.2)
    # few spans in a long window, so that spans rarely touch and runs are single spans
    spans = np.concatenate(
        [runs(place_spans(rng, 20_000, 200, lengths, probabilities)) for _ in range(20)]
    )
    assert np.percentile(spans, 99) <= 10
    assert abs(spans.mean() - lengths @ probabilities) < 0.3  # about 3.9 steps


def test_own_regime_hides_long_gaps_in_feature_0_only():
    windows, batch = masked(n_windows=200, own_fraction=1.0)
    assert batch.own.all() and not batch.random.any()
    np.testing.assert_array_equal(batch.hidden.sum(1).numpy(), round(0.25 * 512))
    assert torch.equal(batch.inputs[..., 1:], windows[..., 1:])  # neighbourhood stays visible
    assert (batch.inputs[..., 0][batch.hidden] == 0).all()
    assert torch.equal(batch.inputs[..., 0][~batch.hidden], windows[..., 0][~batch.hidden])
    assert not batch.loss_mask[..., 1:].any()
    assert torch.equal(batch.loss_mask[..., 0], batch.hidden)
    longest = max(runs(row).max() for row in batch.hidden.numpy())
    assert longest >= 64  # gaps up to 64 steps (and more where two meet)


def test_own_gaps_of_64_steps_occur_in_the_training_windows():
    # Issue 4 asks for own-trace gaps of up to at least 64 steps; with 20 % hidden a 256-step
    # window (the default weights' windows) held at most 51, as the shipped weights once trained.
    _, batch = masked(n_windows=400, n_steps=256, own_fraction=1.0)
    gap_lengths = np.concatenate([runs(row) for row in batch.hidden.numpy()])
    assert gap_lengths.max() >= 64
    assert (gap_lengths >= 52).mean() > 0.05


def test_regimes_are_mixed_within_a_batch():
    _, batch = masked(n_windows=64, own_fraction=0.5)
    assert batch.own.sum() == 32
    assert not (batch.own & batch.random).any()


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_small_batches_get_the_own_regime_at_its_share_on_average(batch):
    """Rounding per batch gave batches of one window never the own regime (adapt's default
    on small recordings), and batches of 3 two thirds."""
    rng = np.random.default_rng(0)
    windows = torch.rand(batch, 64, 5)
    shares = [mask_windows(windows, MaskingConfig(own_fraction=0.5), rng).own.float().mean()
              for _ in range(400)]
    assert float(np.mean(shares)) == pytest.approx(0.5, abs=0.05)


def test_a_whole_share_draws_nothing_more():
    """Batches whose own share is whole keep the masks (and weights) trained before."""
    from napari_neurt.training.masking import own_count

    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    assert own_count(32, 0.5, rng) == 16 and rng.bit_generator.state == state


def test_masking_is_a_function_of_the_seed():
    _, a = masked(n_windows=16, seed=3)
    _, b = masked(n_windows=16, seed=3)
    _, c = masked(n_windows=16, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.hidden, b.hidden)
    assert not torch.equal(a.hidden, c.hidden)


def test_training_hides_input_as_reconstruct_does():
    torch.manual_seed(0)
    config = NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=1, n_ff=32)
    model = NeurtModel(Neurt(config), device="cpu")
    windows, batch = masked(n_windows=8, n_steps=32, own_fraction=0.5, zero_prob=1.0)
    with torch.inference_mode():
        trained_on = model.module(batch.inputs).numpy()
    for k in range(8):
        channels = "own" if batch.own[k] else "all"
        asked = model.reconstruct(windows[k : k + 1], batch.hidden[k : k + 1], channels=channels)
        np.testing.assert_allclose(asked, trained_on[k : k + 1], atol=1e-6)


def test_loss_is_on_hidden_entries_only():
    windows, batch = masked(n_windows=4, n_steps=64)
    prediction = torch.rand_like(windows, requires_grad=True)
    loss = masked_mse(prediction, batch.target, batch.loss_mask)
    changed = batch.target.clone()
    changed[~batch.loss_mask] += 5.0  # every visible target moves: the loss does not
    assert masked_mse(prediction, changed, batch.loss_mask).item() == pytest.approx(loss.item())
    changed = batch.target.clone()
    changed[batch.loss_mask] += 0.5
    assert masked_mse(prediction, changed, batch.loss_mask).item() != pytest.approx(loss.item())
    loss.backward()
    assert (prediction.grad[~batch.loss_mask] == 0).all()
    expected = ((prediction - batch.target)[batch.loss_mask] ** 2).mean()
    assert loss.item() == pytest.approx(expected.item())


def test_bad_masking_settings_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        MaskingConfig(ratio=1.5)
    with pytest.raises(ValueError, match="own_max_span"):
        MaskingConfig(own_max_span=0)
