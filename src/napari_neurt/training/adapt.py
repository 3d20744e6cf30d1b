"""Self-supervised adaptation: a short masked-reconstruction fine-tune on the user's own recording.

    adapted = model.adapt(recording, steps=200)      # a new NeurtModel; `model` is unchanged
    reconstruction = adapted.reconstruct(adapted.tokens_for(recording), hide)

Both masking regimes of pretraining are used (`masking`). Time steps that are to be
reconstructed afterwards can be passed as `hide`: they are hidden from the model during
adaptation (as `reconstruct` will hide them, per `channels`) and never scored, so that the
adapted model has not seen the values it is then asked for.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..model.inference import NeurtModel, hidden_entries, hide_steps
from ..progress import Steps
from .data import WindowStream
from .engine import DistributedContext
from .masking import MaskedBatch, Masker, MaskingConfig
from .pretrain import PretrainConfig, ReconstructionTrainer, train_steps


def adaptation_steps(
    model: NeurtModel,
    tokens: np.ndarray,
    kept_out: np.ndarray,
    steps: int,
    *,
    channels: str = "all",
    lr: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    masking: MaskingConfig | None = None,
    source: str = "tokens",
) -> Steps[NeurtModel]:
    """Adapt a copy of `model` to checked `tokens` (N, T, F), never showing it `kept_out` (N, T).

    The work behind `NeurtModel.adapt` (which checks its arguments and calls this); a generator
    of `TrainingProgress` that returns the adapted `NeurtModel`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    # the kept-out flag travels with the tokens as one more feature, split off when masking
    flagged = np.concatenate([tokens, kept_out[..., None].astype(np.float32)], axis=-1)
    config = PretrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        save_every=0,
        masking=masking or MaskingConfig(),
        device=str(model.device),
        bf16=model.bf16,
    )
    module = copy.deepcopy(model.module)
    trainer = ReconstructionTrainer(module, config, DistributedContext(model.device))
    stream = WindowStream(
        [flagged],
        window_length=min(model.config.seq_len, tokens.shape[1]),
        batch_size=batch_size,
        seed=seed,
        windows_per_recording=64 * batch_size,
        recordings_per_round=1,
        rank=0,
        world_size=1,
    )
    masker = _KeptOutMasker(config.masking, channels)
    loader = DataLoader(stream, batch_size=None, collate_fn=masker)
    yield from train_steps(trainer, loader, save=lambda: None, stop=None, stage="adapt")
    provenance = {
        **model.provenance,
        "adapted": {"steps": trainer.step, "lr": lr, "seed": seed, "recording": source},
    }
    return replace_module(model, module.eval(), provenance)


def replace_module(model: NeurtModel, module: torch.nn.Module, provenance: dict) -> NeurtModel:
    """A `NeurtModel` like `model` (classes, tokens, device) around another network."""
    adapted = NeurtModel(
        module,
        class_names=model.class_names,
        tokens=model.token_settings,
        frame_rate_hz=model.frame_rate_hz,
        provenance=provenance,
        device=model.device,
    )
    adapted.bf16 = model.bf16
    return adapted


class _KeptOutMasker:
    """`Masker` for windows whose last feature flags steps kept out: hidden, and never scored."""

    def __init__(self, masking: MaskingConfig, channels: str):
        self.masker = Masker(masking)
        self.channels = channels

    def __call__(self, item: tuple[torch.Tensor, list[int]]) -> MaskedBatch:
        windows, seed = item
        kept_out = windows[..., -1] > 0.5
        batch = self.masker((windows[..., :-1], seed))
        if not kept_out.any():
            return batch
        inputs = hide_steps(batch.inputs, kept_out, self.channels)
        kept_out_entries = hidden_entries(kept_out, self.channels, inputs.shape[-1])
        return replace(
            batch,
            inputs=inputs,
            loss_mask=batch.loss_mask & ~kept_out_entries,
            hidden_entries=batch.hidden_entries | kept_out_entries,
        )
