"""Masked-reconstruction pretraining of NEuRT on any number of recordings, on one or many GPUs.

    from napari_neurt.training import PretrainConfig, pretrain
    result = pretrain(paths, "runs/neurt", PretrainConfig(steps=20_000))
    model = napari_neurt.load_model("runs/neurt")

The output folder is a napari-neurt checkpoint (``load_model`` reads it) plus the training state
(`engine.save_training_state`). Running again with the same folder resumes where it stopped: the
data stream and the masks are functions of (seed, step), so a resumed run ends with the same
weights as an uninterrupted one (on the same device, world size and number of workers).

Launched by ``torchrun`` (WORLD_SIZE > 1), every process trains a DistributedDataParallel replica
on its own stream of windows from all the recordings (`WindowStream`); rank 0 writes the
checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..model.checkpoint import (
    WEIGHTS_NAME,
    MixedCheckpointError,
    check_frame_rate,
    read_checkpoint,
    save_checkpoint,
    sha256_of,
)
from ..model.neurt import Neurt, NeurtConfig
from ..progress import Steps, run_steps
from .data import RecordingSource, WindowStream
from .engine import (
    DistributedContext,
    ModelSpec,
    StartingPoint,
    Stop,
    TrainingProgress,
    WarmupCosine,
    decay_groups,
    has_training_state,
    load_training_state,
    read_training_state,
    save_training_state,
    starting_point,
)
from .masking import MaskedBatch, Masker, MaskingConfig, masked_mse

log = logging.getLogger(__name__)

# Settings that a resumed run may change: where and how often it saves, how it loads data, and
# its length (to extend a run; the cosine schedule then stretches from where it is).
_RESUMABLE_CHANGES = {"steps", "save_every", "num_workers", "device"}


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (model shape aside: that is the `NeurtConfig`)."""

    steps: int = 20_000  # optimiser steps in all (per process: each takes a batch)
    batch_size: int = 32  # windows per step and process
    lr: float = 5e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps with a linear warm-up
    final_lr: float = 0.0  # learning rate at the end, as a fraction of `lr` (cosine decay)
    grad_clip: float = 1.0  # largest gradient norm; 0 turns clipping off
    seed: int = 0
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    # Each worker holds `recordings_per_round` recordings' tokens at a time and draws
    # `windows_per_recording` windows from each before loading the next ones: more windows per
    # visit load less often, more recordings per round mix batches better; both cost memory.
    windows_per_recording: int = 256
    recordings_per_round: int = 8
    num_workers: int = 0  # DataLoader worker processes loading recordings and masking
    save_every: int = 1000  # steps between checkpoints (0: only at the end)
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA (never elsewhere)
    frame_rate_hz: float | None = None  # frame rate of the training data, kept in the checkpoint

    def __post_init__(self) -> None:
        if isinstance(self.masking, dict):
            self.masking = MaskingConfig(**self.masking)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a share of the steps in [0, 1); got {self.warmup}")
        check_frame_rate(self.frame_rate_hz)  # before training, not at its first save

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown PretrainConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass
class TrainingResult:
    """How a training run ended. `folder` holds the checkpoint (``load_model(folder)``)."""

    folder: Path
    step: int
    steps: int
    stopped: bool  # True when a stop flag ended it before `steps`
    history: list[tuple[int, float]]  # (step, loss) at every step of this process
    network: Neurt = field(repr=False)  # the trained network of this process (on its device)


class ReconstructionTrainer:
    """A `Neurt` with its AdamW optimiser and warm-up + cosine schedule, trained on `MaskedBatch`es.

    Shared by pretraining and `adapt`. Under DDP, `model` is the DistributedDataParallel wrapper
    (gradients are averaged by DDP during backward) and `module` the network itself.
    """

    def __init__(self, module: Neurt, config: PretrainConfig, context: DistributedContext):
        self.config = config
        self.context = context
        self.module = module.to(context.device).train()
        # a classifier's heads (pretraining from one, e.g. the default weights) take no part in
        # reconstruction: DDP, told so, stops waiting for their gradients (which stay None)
        heads = module.time_pool is not None or module.recording_head is not None
        self.model = context.wrap(self.module, find_unused_parameters=heads)
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.module.parameters(), config.weight_decay), lr=config.lr
        )
        warmup_steps = math.ceil(config.warmup * config.steps)
        schedule = WarmupCosine(config.steps, warmup_steps, config.final_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.lr = math.nan  # the learning rate of the last step taken
        self.history: list[tuple[int, float]] = []
        self.autocast = context.device.type == "cuda" and config.bf16

    def train_step(self, batch: MaskedBatch) -> float:
        """One optimiser step on `batch`; returns its loss."""
        batch = batch.to(self.context.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            prediction = self.model(batch.inputs, batch.hidden_entries)
        loss = masked_mse(prediction.float(), batch.target, batch.loss_mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.lr = float(self.scheduler.get_last_lr()[0])  # the rate this step used
        self.scheduler.step()
        self.step += 1
        value = float(loss.detach())
        self.history.append((self.step, value))
        return value

    def save_state(self, folder: Path, weights_sha256: str | None = None) -> None:
        save_training_state(
            folder,
            self.optimizer,
            self.scheduler,
            {"step": self.step, "config": self.config.to_dict(), "history": self.history,
             "weights_sha256": weights_sha256},
        )

    def load_state(self, folder: Path) -> None:
        document = load_training_state(folder, self.optimizer, self.scheduler)
        # the saved rates follow the saved run's schedule; a run resumed with other `steps`
        # follows its own from its first step (with the same steps, the same rates)
        for group, base, factor in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.step = int(document["step"])
        self.history = [(int(s), float(v)) for s, v in document.get("history", [])]


def pretrain(
    sources: Iterable[RecordingSource],
    out_dir: str | os.PathLike,
    config: PretrainConfig | None = None,
    *,
    model: ModelSpec = None,
    resume: bool = True,
    read_options: dict | None = None,
    progress: Callable[[TrainingProgress], object] | None = None,
    stop: Stop | None = None,
) -> TrainingResult:
    """Pretrain NEuRT by masked reconstruction on `sources`; the checkpoint goes to `out_dir`.

    `sources` are recordings in any form `napari_neurt.training.data` takes (paths, `Recording`
    objects, simulated recordings, callables). `model` is where to start: a `NeurtConfig` (a fresh
    network of that shape; default the published shape), or weights (a `NeurtModel`, a `Neurt`,
    or anything `load_model` takes, e.g. ``"neurt-microns"``) to go on training. With `resume`,
    a training state already in `out_dir` is continued (and `model` is ignored). `read_options`
    go to `read_recording` (e.g. ``frame_rate``, ``labels``). `progress` is called with a
    `TrainingProgress` after every step; when `stop` is set, training ends after the current step
    with a resumable checkpoint, and the result says ``stopped=True``.
    """
    steps = iter_pretrain(
        sources, out_dir, config, model=model, resume=resume, read_options=read_options, stop=stop
    )
    return run_steps(steps, progress=progress)


def iter_pretrain(
    sources: Iterable[RecordingSource],
    out_dir: str | os.PathLike,
    config: PretrainConfig | None = None,
    *,
    model: ModelSpec = None,
    resume: bool = True,
    read_options: dict | None = None,
    stop: Stop | None = None,
) -> Steps[TrainingResult]:
    """`pretrain` as a generator of `TrainingProgress` that returns the `TrainingResult`.

    Closing the generator early (a napari worker's ``quit()``) also saves a resumable checkpoint
    first (single process; under DDP use `stop`, which all processes agree on).
    """
    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    context = DistributedContext.setup(config.device)
    try:
        resuming = resume and has_training_state(out_dir)
        start = _resumed(out_dir, config, model) if resuming else starting_point(model, config.seed)
        module, tokens = start.network.train(), start.token_settings
        frame_rate = config.frame_rate_hz or start.frame_rate_hz
        trainer = ReconstructionTrainer(module, config, context)
        if resuming:
            trainer.load_state(out_dir)
            log.info("resuming %s at step %d of %d", out_dir, trainer.step, config.steps)
        if start.class_names and context.is_main:
            log.warning(
                "the starting weights are a classifier (%s): its heads are kept as they are, "
                "trained on the encoder before this pretraining; fine-tune from %s before "
                "classifying with it", " vs ".join(start.class_names), out_dir,
            )

        saved_at = trainer.step if resuming else None

        def save() -> None:  # once per step: the last periodic save may be the final one
            nonlocal saved_at
            if saved_at == trainer.step:
                return
            if context.is_main:
                _save(out_dir, trainer, tokens, frame_rate, start.provenance, start.class_names)
            context.barrier()
            saved_at = trainer.step

        stream = WindowStream(
            sources,
            window_length=module.config.seq_len,
            batch_size=config.batch_size,
            seed=config.seed,
            token_settings=tokens,
            read_options=read_options,
            windows_per_recording=config.windows_per_recording,
            recordings_per_round=config.recordings_per_round,
            start_batch=trainer.step,
            rank=context.rank,
            world_size=context.world_size,
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            collate_fn=Masker(config.masking),
            num_workers=config.num_workers,
            pin_memory=context.device.type == "cuda",
        )
        with context.current_device():
            stopped = yield from train_steps(trainer, loader, save, stop, "pretrain")
        save()
        return TrainingResult(
            out_dir, trainer.step, config.steps, stopped, trainer.history, trainer.module.eval()
        )
    finally:
        context.close()


def train_steps(
    trainer: ReconstructionTrainer,
    batches: Iterable[MaskedBatch],
    save: Callable[[], None],
    stop: Stop | None,
    stage: str,
) -> Steps[bool]:
    """Train until ``trainer.config.steps`` or a stop; return whether it stopped early.

    `save` is called every ``save_every`` steps and when the generator is closed early.
    """
    config = trainer.config
    should_stop = getattr(stop, "is_set", stop)
    batches = iter(batches)
    try:
        while trainer.step < config.steps:
            if trainer.context.stop_requested(should_stop):
                return True
            loss = trainer.train_step(next(batches))
            if config.save_every and trainer.step % config.save_every == 0:
                save()
            try:
                yield TrainingProgress(
                    trainer.step, config.steps, f"{stage} loss {loss:.5f}", loss, trainer.lr
                )
            except GeneratorExit:
                save()
                raise
        return False
    finally:
        del batches  # shuts the DataLoader's workers down


def _resumed(folder: Path, config: PretrainConfig, model: ModelSpec) -> StartingPoint:
    state = read_training_state(folder)
    saved = PretrainConfig.from_dict(state["config"])
    changed = [
        f.name
        for f in fields(PretrainConfig)
        if f.name not in _RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if changed:
        differences = ", ".join(
            f"{name} {getattr(saved, name)!r} (now {getattr(config, name)!r})" for name in changed
        )
        raise ValueError(
            f"{folder} holds a run with other settings: {differences}; resume it with the "
            "run's settings, or train into a new folder, or start this one over with "
            "resume=False (--no-resume)"
        )
    try:
        checkpoint = read_checkpoint(folder)
    except MixedCheckpointError:
        raise ValueError(
            f"{folder}: its weights and config are of two saves; the run was interrupted "
            "while saving. Train into a new folder, or pass resume=False (--no-resume) to start "
            "this one over"
        ) from None
    if isinstance(model, NeurtConfig) and model != checkpoint.config:
        raise ValueError(
            f"{folder} holds a run of another network shape ({checkpoint.config}); resume it "
            "without a shape (model=None, no --shape), or train into a new folder"
        )
    saved_weights = state.get("weights_sha256") or checkpoint.provenance["weights_sha256"]
    if (checkpoint.provenance.get("step") != state["step"]
            or saved_weights != checkpoint.provenance["weights_sha256"]):
        raise ValueError(
            f"{folder}: the weights (step {checkpoint.provenance.get('step')}) are not those "
            f"the training state (step {state['step']}) was saved with; the run was interrupted "
            "while saving. Train into a new folder, or pass resume=False (--no-resume) to start "
            "this one over"
        )
    origin = checkpoint.provenance.get("started_from") or {}
    return StartingPoint(
        checkpoint.build(), checkpoint.tokens, checkpoint.frame_rate_hz, origin,
        checkpoint.class_names,
    )


def _save(
    folder: Path, trainer: ReconstructionTrainer, tokens: dict, frame_rate, origin, class_names
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        folder,
        trainer.module,
        class_names=class_names,  # pretraining from a classifier keeps its heads and classes
        tokens=tokens,
        frame_rate_hz=frame_rate,
        provenance={
            "source": "napari-neurt pretrain",
            "step": trainer.step,
            "steps": trainer.config.steps,
            "started_from": origin,
        },
    )
    trainer.save_state(folder, sha256_of(folder / WEIGHTS_NAME))
