"""What every training loop here shares: processes and devices, optimiser, schedule, saved state.

Saved training state never uses pickle: tensors (the optimiser's moments) go to a safetensors
file, everything else (step, schedule, optimiser hyper-parameters, history) to JSON.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from ..io.atomic import atomic_path
from ..model.checkpoint import sha256_of
from ..model.inference import NeurtModel, load_model
from ..model.neurt import Neurt, NeurtConfig, own_global_rng
from ..model.tokens import token_settings
from ..progress import Progress, StopFlag

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FORMAT = "napari-neurt training state"

Stop = StopFlag | Callable[[], bool]
# Where training starts: a fresh network of a shape, or weights (see `starting_point`).
ModelSpec = NeurtConfig | NeurtModel | Neurt | str | os.PathLike | None


@dataclass(frozen=True)
class TrainingProgress(Progress):
    """`Progress` of a training loop: `done` of `total` optimiser steps, with the last loss (and
    the validation loss at the steps where one was computed, NaN elsewhere)."""

    loss: float = math.nan
    lr: float = math.nan
    validation_loss: float = math.nan


@dataclass
class DistributedContext:
    """This process's place in a (possibly single-process) training job.

    `setup` joins the process group that ``torchrun`` describes (WORLD_SIZE > 1): NCCL on CUDA,
    gloo otherwise, one GPU per process (LOCAL_RANK). `close` leaves it, if `setup` created it.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @classmethod
    def setup(cls, device: str | torch.device = "auto") -> DistributedContext:
        device = resolve_device(device)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size < 2 and not (dist.is_available() and dist.is_initialized()):
            return cls(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns_group = not dist.is_initialized()
        if owns_group:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        return cls(device, dist.get_rank(), dist.get_world_size(), owns_group)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel when there are several processes."""
        if not self.distributed:
            return module
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def current_device(self) -> contextlib.AbstractContextManager:
        """Make the training GPU the current one (a no-op elsewhere). Pinned host memory, and the
        DataLoader's pinning thread, use the current device: training on ``cuda:1`` in one
        process would otherwise also open a context (hundreds of MB) on GPU 0."""
        if self.device.type == "cuda" and self.device.index is not None:
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes (every process gets the same number)."""
        if not self.distributed:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def stop_requested(self, stop: Callable[[], bool] | None) -> bool:
        """True on every process if `stop` (a callable, or None) says stop on any of them."""
        return self.any(bool(stop is not None and stop()))

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any (so that all stop at the same step)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def map_to_main(self, function: Callable[[Any], np.ndarray], items: Sequence[Any]):
        """`function` of every item, each process taking its share (item i on rank i mod the
        number of processes); rank 0 gets the results in order, the others None. Results are
        float64 arrays of any shape, sent as tensors (never pickled)."""
        if not self.distributed:
            return [np.asarray(function(item), dtype=np.float64) for item in items]
        results = []
        for index, item in enumerate(items):
            owner = index % self.world_size
            if owner == self.rank:
                value = torch.as_tensor(np.asarray(function(item), dtype=np.float64))
                if self.is_main:
                    results.append(value.numpy())
                    continue
                for message in (
                    torch.tensor([value.ndim]),
                    torch.tensor(value.shape, dtype=torch.int64),
                    value,
                ):
                    dist.send(message.to(self.device), dst=0)  # number of dimensions, shape, values
            elif self.is_main:
                ndim = torch.zeros(1, dtype=torch.int64, device=self.device)
                dist.recv(ndim, src=owner)
                shape = torch.zeros(int(ndim), dtype=torch.int64, device=self.device)
                dist.recv(shape, src=owner)
                value = torch.empty(shape.tolist(), dtype=torch.float64, device=self.device)
                dist.recv(value, src=owner)
                results.append(value.cpu().numpy())
        return results if self.is_main else None

    def share_from_main(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite `tensors` (on this context's device) on every process with rank 0's."""
        if self.distributed:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


@dataclass
class StartingPoint:
    """A network to train (a copy, on the CPU) and what goes with its weights."""

    network: Neurt
    token_settings: dict[str, Any]
    frame_rate_hz: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()  # a classifier's, which a checkpoint of it must carry


def starting_point(spec: ModelSpec, seed: int = 0) -> StartingPoint:
    """What `spec` names: a `NeurtConfig` (fresh weights drawn with `seed`; None: the published
    shape), a `Neurt`, a `NeurtModel`, or anything `load_model` takes ("neurt-microns", a path)."""
    if spec is None or isinstance(spec, NeurtConfig):
        with own_global_rng(seed):  # seeded weights, global RNG left alone
            network = Neurt(spec or NeurtConfig())
        return StartingPoint(network, token_settings(), None, {"initial": f"random, seed {seed}"})
    if isinstance(spec, Neurt):
        return StartingPoint(copy.deepcopy(spec).cpu(), token_settings())
    model = spec if isinstance(spec, NeurtModel) else load_model(spec, device="cpu")
    provenance = {k: v for k, v in model.provenance.items() if k != "path"}
    return StartingPoint(
        copy.deepcopy(model.module).cpu(),
        dict(model.token_settings),
        model.frame_rate_hz,
        provenance,
        tuple(model.class_names),
    )


def decay_groups(parameters: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two parameter groups: matrices with weight decay; biases, norms and vectors without."""
    decay, no_decay = [], []
    for parameter in parameters:
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate factor at a step: linear warm-up to 1, then cosine decay to `final`."""

    total_steps: int
    warmup_steps: int
    final: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        remaining = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / remaining)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def save_training_state(
    folder: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scalars: dict[str, Any],
) -> None:
    """Write the optimiser, the schedule and `scalars` (JSON-able) into `folder`, atomically.

    The JSON file is written last and holds the sha256 of the optimiser's tensors (and, in
    `scalars`, the caller may put that of its weights): it is the commit record, so a save cut
    short between files is found on resume instead of mixing two steps."""
    folder = Path(folder)
    state = optimizer.state_dict()
    tensors, values = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                values[f"{index}.{name}"] = value
    schedule = scheduler.state_dict()
    if "lr_lambdas" in schedule:  # the factor functions come from the config, not the file
        schedule["lr_lambdas"] = [None] * len(schedule["lr_lambdas"])
    document = {
        "format": STATE_FORMAT,
        "format_version": 1,
        **scalars,
        "optimizer": {"param_groups": state["param_groups"], "values": values},
        "scheduler": schedule,
    }
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    document["tensors_sha256"] = sha256_of(folder / STATE_TENSORS)
    with atomic_path(folder / STATE_JSON) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")


def has_training_state(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STATE_JSON).is_file() and (Path(folder) / STATE_TENSORS).is_file()


def read_training_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a saved training state (step, config, history...)."""
    path = Path(folder) / STATE_JSON
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if document.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a napari-neurt training state")
    return document


def load_training_state(
    folder: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore the optimiser and the schedule from `folder`; return the JSON document."""
    document = read_training_state(folder)
    path = Path(folder) / STATE_TENSORS
    saved = document.get("tensors_sha256")  # states saved before it have none to check
    if saved is not None and saved != sha256_of(path):
        raise ValueError(
            f"{folder}: the optimiser state ({STATE_TENSORS}) is not the one its {STATE_JSON} "
            "was saved with; the run was interrupted while saving. Train into a new folder, or "
            "pass resume=False (--no-resume) to start this one over"
        )
    tensors = load_file(str(path))
    slots: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *document["optimizer"]["values"].items()]:
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    groups = [
        {**group, "betas": tuple(group["betas"])} if "betas" in group else group
        for group in document["optimizer"]["param_groups"]
    ]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    scheduler.load_state_dict(document["scheduler"])
    return document
