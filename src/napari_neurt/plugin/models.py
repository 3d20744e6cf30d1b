"""Which NEuRT models the widgets offer, and one shared cache of loaded models.

Nothing here imports Qt: the pickers (analysis, fine-tune) fill their combo boxes from
`model_choices` and `device_choices`, and listen to `registry.changed` for checkpoints that
fine-tuning adds during the session.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

CHECKPOINT = "checkpoint"  # the "a checkpoint file" entry: the path comes from a file field


@dataclass(frozen=True)
class ModelChoice:
    label: str
    source: str  # what load_model takes ("default", "neurt-microns", a path) or CHECKPOINT


BUILT_IN = (
    ModelChoice("Embedded default", "default"),
    ModelChoice("Published MICrONS (reconstruction)", "neurt-microns"),
    ModelChoice("Published 5xFAD (classifier)", "neurt-5xfad"),
)
CHECKPOINT_CHOICE = ModelChoice("Checkpoint file…", CHECKPOINT)


class ModelRegistry:
    """Checkpoints made during this session (fine-tuning), offered by every model picker."""

    changed = Signal()

    def __init__(self) -> None:
        self._extra: list[ModelChoice] = []

    def add(self, folder: str | Path, label: str | None = None) -> ModelChoice:
        folder = str(Path(folder))
        for choice in self._extra:
            if choice.source == folder:
                return choice
        if label is None:  # two runs into folders of one name: say where each is
            taken = {choice.label for choice in self._extra}
            parts = Path(folder).parts
            for depth in range(1, len(parts) + 1):
                label = f"Fine-tuned: {'/'.join(parts[-depth:])}"
                if label not in taken:
                    break
        choice = ModelChoice(label, folder)
        self._extra.append(choice)
        self.changed.emit()
        return choice

    @property
    def extra(self) -> tuple[ModelChoice, ...]:
        return tuple(self._extra)


registry = ModelRegistry()


def model_choices() -> list[ModelChoice]:
    """Built-in models, then session checkpoints, then "Checkpoint file…"."""
    return [*BUILT_IN, *registry.extra, CHECKPOINT_CHOICE]


def device_choices() -> list[str]:
    """"auto", "cpu", every CUDA device, "mps" where available."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        choices.append("mps")
    return choices


_cache: dict[tuple[str, int | None, str], object] = {}  # (source, modified, device)
_lock = threading.Lock()  # guards _cache and _loading; never held while a model loads
_loading: dict[tuple[str, int | None, str], threading.Lock] = {}  # one per model being loaded


def get_model(source: str, device: str = "auto"):
    """`load_model(source, device)`, loaded once per (source, device) and shared (thread-safe).

    A checkpoint path is keyed by its resolved path and modification time, so that a file
    rewritten by fine-tuning is read again.
    """
    from ..model import load_model

    where, stamp = source, None
    path = Path(source)
    if source not in ("default", "neurt-microns", "neurt-5xfad") and path.exists():
        where = str(path.resolve())
        stamp = _modified(path)
    key = (where, stamp, device)
    with _lock:
        model = _cache.get(key)
        if model is not None:
            return model
        loading = _loading.setdefault(key, threading.Lock())
    # a job that wants another model (one already loaded) does not wait for this load (a
    # download of published weights); one that wants this one waits, and loads it only if it failed
    with loading:
        with _lock:
            model = _cache.get(key)
        if model is None:
            model = load_model(source, device=device)
            with _lock:
                # the versions this checkpoint's rewrite replaced are of no more use
                for old in [k for k in _cache if k[0] == where and k[1] != stamp]:
                    del _cache[old]
                _cache[key] = model
                _loading.pop(key, None)
    return model


def _modified(path: Path) -> int:
    """The latest modification time (ns) of `path` and of what it holds. A file that goes
    between listing and asking (the temporary file of a checkpoint being written) is left out."""
    stamps = []
    for entry in [path, *path.glob("*")]:
        try:
            stamps.append(entry.stat().st_mtime_ns)
        except FileNotFoundError:
            continue
    return max(stamps, default=0)


def clear_cache() -> None:
    with _lock:
        _cache.clear()
