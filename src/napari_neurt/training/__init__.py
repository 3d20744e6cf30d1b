"""Training NEuRT: masked-reconstruction pretraining, fine-tuning for classification, adaptation.

- `pretrain` / `iter_pretrain` (`PretrainConfig`): masked reconstruction on any recordings,
  streamed, resumable, on one process or many (``torchrun``, DDP).
- `finetune` / `iter_finetune` (`FinetuneConfig`): classification of animals' recordings by
  group, split by animal, with the published layer-wise learning-rate decay, a window classifier
  and a recording head trained together, and a report per held-out animal.
- `masking`: the two hiding regimes (published spans over all features; long gaps in the own
  trace) and the loss on hidden entries.

This package never imports Qt or napari.
"""

from .data import WindowStream, load_recording, source_tokens
from .engine import TrainingProgress
from .finetune import (
    FinetuneConfig,
    FinetuneReport,
    FinetuneResult,
    LabelledRecording,
    finetune,
    iter_finetune,
    labelled_recordings,
    layerwise_lr_groups,
    leave_one_animal_out,
    split_animals,
)
from .masking import MaskedBatch, MaskingConfig, mask_windows, masked_mse
from .pretrain import PretrainConfig, TrainingResult, iter_pretrain, pretrain

__all__ = [
    "FinetuneConfig",
    "FinetuneReport",
    "FinetuneResult",
    "LabelledRecording",
    "MaskedBatch",
    "MaskingConfig",
    "PretrainConfig",
    "TrainingProgress",
    "TrainingResult",
    "WindowStream",
    "finetune",
    "iter_finetune",
    "iter_pretrain",
    "labelled_recordings",
    "layerwise_lr_groups",
    "leave_one_animal_out",
    "load_recording",
    "mask_windows",
    "masked_mse",
    "pretrain",
    "source_tokens",
    "split_animals",
]
