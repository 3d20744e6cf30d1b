"""What is hidden from NEuRT during masked-reconstruction training, and the loss on it.

Two regimes, mixed within every batch (each window follows one of them):

- ``"all"``, the published pretraining: spans of whole time steps (all features) are hidden,
  ``round(ratio * T)`` steps per window (15 %), span lengths geometric with ``span_p = 0.2``
  truncated to ``max_span = 10``. In ``zero_prob = 80 %`` of the windows the hidden steps are
  set to 0, in the others to uniform random values in [0, 1). The loss is on all features of the
  hidden steps. (An interpolation-residual model, `NeurtConfig.interpolate`, as the default
  weights are, replaces every hidden entry by the interpolation across it, whatever it holds:
  for it the random values change nothing, and `zero_prob` matters only to the published
  architecture.)
- ``"own"``, long gaps in the neuron's own trace: only feature 0 is hidden (set to 0), in spans of
  1 to ``own_max_span = 64`` steps (uniform), ``round(own_ratio * T)`` steps per window, while
  the neighbourhood features stay visible. The loss is on feature 0 of the hidden steps. A span
  is cut to the steps still to hide, so no gap is longer than ``round(own_ratio * T)``:
  ``own_ratio = 0.25`` hides 64 steps of a 256-step window, so gaps of the full 64 occur.

Zeroing goes through `napari_neurt.model.inference.hide_steps`, the function that
``NeurtModel.reconstruct(tokens, hide, channels="all" | "own")`` uses, so that training and
inference hide input the same way.

Span placement follows the published rule: spans are placed one after another at uniformly
drawn anchors that are not hidden yet, the last one shortened so that exactly the target number
of steps ends up hidden. (The published code never hides the last time step, an off-by-one that
is not reproduced here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..model.inference import hide_steps

REGIMES = ("all", "own")


@dataclass(frozen=True)
class MaskingConfig:
    """How windows are hidden for masked-reconstruction training (see the module docstring)."""

    ratio: float = 0.15
    max_span: int = 10
    span_p: float = 0.2
    zero_prob: float = 0.8
    own_fraction: float = 0.5  # share of each batch's windows in the "own" regime
    own_ratio: float = 0.25  # 64 of 256 steps: a whole own_max_span gap fits in a window
    own_max_span: int = 64

    def __post_init__(self) -> None:
        for name in ("ratio", "own_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(
                    f"MaskingConfig.{name} must be in (0, 1); got {getattr(self, name)}"
                )
        for name in ("span_p", "zero_prob", "own_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"MaskingConfig.{name} must be in [0, 1]; got {getattr(self, name)}"
                )
        if self.span_p == 0:
            raise ValueError("MaskingConfig.span_p must be positive")
        for name in ("max_span", "own_max_span"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"MaskingConfig.{name} must be at least 1; got {getattr(self, name)}"
                )


@dataclass
class MaskedBatch:
    """A batch ready for training: what the model sees, what it should output, where it is scored.

    inputs, target: float32 (B, T, F); loss_mask: bool (B, T, F); hidden: bool (B, T) the hidden
    time steps; own: bool (B,) windows in the "own" regime; random: bool (B,) "all" windows whose
    hidden steps hold random values instead of zeros; hidden_entries: bool (B, T, F) the entries
    hidden from the model (the scored ones, plus any that are hidden but never scored, as in
    `adapt`), which a model that fills hidden entries itself is given.
    """

    inputs: torch.Tensor
    target: torch.Tensor
    loss_mask: torch.Tensor
    hidden: torch.Tensor
    own: torch.Tensor
    random: torch.Tensor
    hidden_entries: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> MaskedBatch:
        return MaskedBatch(
            *(getattr(self, name).to(device, non_blocking=non_blocking) for name in _FIELDS)
        )

    def pin_memory(self) -> MaskedBatch:  # called by DataLoader(pin_memory=True)
        return MaskedBatch(*(getattr(self, name).pin_memory() for name in _FIELDS))


_FIELDS = ("inputs", "target", "loss_mask", "hidden", "own", "random", "hidden_entries")


def geometric_lengths(max_span: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Span lengths 1..max_span and their probabilities, geometric (p) truncated and renormalised."""
    lengths = np.arange(1, max_span + 1)
    probabilities = p * (1 - p) ** (lengths - 1)
    return lengths, probabilities / probabilities.sum()


def place_spans(
    rng: np.random.Generator,
    n_steps: int,
    n_hidden: int,
    lengths: np.ndarray,
    probabilities: np.ndarray,
) -> np.ndarray:
    """bool (n_steps,) with exactly `n_hidden` steps hidden in spans (published placement rule)."""
    n_hidden = min(n_hidden, n_steps)
    hidden = np.zeros(n_steps, dtype=bool)
    count = 0
    while count < n_hidden:
        # draws in blocks: the placement is sequential, the random numbers need not be
        spans = rng.choice(lengths, size=32, p=probabilities)
        anchors = rng.integers(0, n_steps, size=32)
        for span, anchor in zip(spans, anchors, strict=True):
            if hidden[anchor]:
                continue
            stop = min(anchor + min(span, n_hidden - count), n_steps)
            count += int(np.count_nonzero(~hidden[anchor:stop]))
            hidden[anchor:stop] = True
            if count >= n_hidden:
                break
    return hidden


def hidden_count(n_steps: int, ratio: float) -> int:
    """Steps hidden per window: round(ratio * n_steps), at least 1 (as published)."""
    return max(1, round(n_steps * ratio))


def own_count(batch: int, fraction: float, rng: np.random.Generator) -> int:
    """Windows of a batch in the "own" regime: `fraction` of them on average, whatever the batch
    size (rounding alone gave none at batch size 1). The whole part is exact; the rest is drawn,
    and only then, so batches where the share is whole use `rng` as before."""
    share = fraction * batch
    if abs(share - round(share)) < 1e-9:  # whole, up to floating point (0.3 * 10)
        return round(share)
    whole = math.floor(share)
    return whole + int(rng.random() < share - whole)


def mask_windows(
    windows: torch.Tensor, config: MaskingConfig, rng: np.random.Generator
) -> MaskedBatch:
    """Hide parts of clean windows (B, T, F) according to `config`; all randomness from `rng`."""
    windows = windows.float()
    batch, n_steps, n_features = windows.shape
    own = np.zeros(batch, dtype=bool)
    own[rng.permutation(batch)[: own_count(batch, config.own_fraction, rng)]] = True
    random = ~own & (rng.random(batch) >= config.zero_prob)

    all_lengths = geometric_lengths(config.max_span, config.span_p)
    own_lengths = np.arange(1, min(config.own_max_span, n_steps) + 1)
    own_probabilities = np.full(len(own_lengths), 1 / len(own_lengths))
    hidden = np.zeros((batch, n_steps), dtype=bool)
    for row, is_own in enumerate(own):
        if is_own:
            n_hidden = hidden_count(n_steps, config.own_ratio)
            hidden[row] = place_spans(rng, n_steps, n_hidden, own_lengths, own_probabilities)
        else:
            n_hidden = hidden_count(n_steps, config.ratio)
            hidden[row] = place_spans(rng, n_steps, n_hidden, *all_lengths)
    noise = rng.random((int(random.sum()), n_steps, n_features), dtype=np.float32)

    own_t, random_t, hidden_t = map(torch.from_numpy, (own, random, hidden))
    inputs = windows.clone()
    inputs[own_t] = hide_steps(windows[own_t], hidden_t[own_t], "own")
    inputs[~own_t] = hide_steps(windows[~own_t], hidden_t[~own_t], "all")
    if random.any():
        inputs[random_t] = torch.where(
            hidden_t[random_t, :, None], torch.from_numpy(noise), windows[random_t]
        )
    loss_mask = hidden_t[:, :, None].expand(-1, -1, n_features).clone()
    loss_mask[own_t, :, 1:] = False
    return MaskedBatch(inputs, windows, loss_mask, hidden_t, own_t, random_t, loss_mask.clone())


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor):
    """Mean squared error over the entries of `loss_mask` only (the hidden ones)."""
    weight = loss_mask.to(prediction.dtype)
    return ((prediction - target).square() * weight).sum() / weight.sum().clamp_min(1)


class Masker:
    """Turns a stream item (clean windows, seed) into a `MaskedBatch`.

    Given to a DataLoader as ``collate_fn``, so that masking runs in its worker processes; the
    seed makes each batch's mask a function of its place in the stream, which keeps runs
    reproducible and resumable.
    """

    def __init__(self, config: MaskingConfig):
        self.config = config

    def __call__(self, item: tuple[torch.Tensor, int]) -> MaskedBatch:
        windows, seed = item
        return mask_windows(windows, self.config, np.random.default_rng(seed))
