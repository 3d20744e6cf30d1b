"""napari-neurt checkpoints: a folder with `model.safetensors` and `config.json`. Never pickle.

`config.json` holds everything needed to use the weights correctly:

    {"format": "napari-neurt checkpoint", "format_version": 1,
     "model": {...NeurtConfig...},
     "class_names": ["wild type", "5xFAD"],
     "tokens": {...how tokens were built for training...},
     "frame_rate_hz": 20.0 or null (not known),
     "provenance": {...where the weights come from...},
     "weights_sha256": "..." (of model.safetensors as written with this config; older: absent)}

Loading checks that the config and the tensors agree and names every difference.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from ..io.atomic import atomic_files
from .neurt import Neurt, NeurtConfig, own_global_rng

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "napari-neurt checkpoint"
FORMAT_VERSION = 1
READ_ATTEMPTS = 3  # a read caught between a writer's renames is tried again


class MixedCheckpointError(ValueError):
    """A checkpoint folder whose weights are not those its config was written with."""


@dataclass
class Checkpoint:
    """Weights and everything that goes with them, in memory."""

    config: NeurtConfig
    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...] = ()
    tokens: dict[str, Any] = field(default_factory=dict)
    frame_rate_hz: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Neurt:
        """A `Neurt` module holding these weights (after checking that they fit the config)."""
        with own_global_rng():  # the weights are overwritten: leave the global RNG alone
            module = Neurt(self.config)
        check_state_dict(
            self.config, self.state_dict, where=self.provenance.get("path", "checkpoint"),
            module=module,
        )
        module.load_state_dict(self.state_dict, strict=True)
        return module.eval()


def check_frame_rate(frame_rate_hz: Any, where: str | os.PathLike = "") -> None:
    """Refuse a checkpoint's frame rate unless it is None (unknown) or a positive, finite number
    of Hz (a bool is no number); `where` names the file it came from."""
    if frame_rate_hz is None:
        return
    if isinstance(frame_rate_hz, bool) or not isinstance(frame_rate_hz, numbers.Real) or not (
        0 < frame_rate_hz < math.inf
    ):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}frame_rate_hz must be a positive number of Hz or null; got {frame_rate_hz!r}"
        )


def save_checkpoint(
    folder: str | os.PathLike,
    module: Neurt,
    *,
    class_names: tuple[str, ...] | list[str] = (),
    tokens: dict[str, Any] | None = None,
    frame_rate_hz: float | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write `module` as a checkpoint folder (created if needed) and return the folder."""
    folder = Path(folder)
    config = module.config
    class_names = tuple(str(name) for name in class_names)
    if config.n_classes and len(class_names) != config.n_classes:
        raise ValueError(
            f"the model has {config.n_classes} classes but {len(class_names)} class names"
        )
    check_frame_rate(frame_rate_hz)  # what read_checkpoint would refuse is not written
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}
    with atomic_files([folder / WEIGHTS_NAME, folder / CONFIG_NAME]) as (weights, config_file):
        save_file(tensors, str(weights), metadata={"format": "pt"})
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": config.to_dict(),
            "class_names": list(class_names),
            "tokens": dict(tokens or {}),
            "frame_rate_hz": None if frame_rate_hz is None else float(frame_rate_hz),
            "provenance": dict(provenance or {}),
            # the two files are renamed into place one after the other: a reader between the
            # renames sees one write's config with another's weights, and tells by this digest
            "weights_sha256": sha256_of(weights),
        }
        config_file.write_text(json.dumps(document, indent=2) + "\n")
    return folder


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """The checkpoint folder for `path`: the folder, or the one holding this config/weights file."""
    path = Path(path)
    folder = path.parent if path.name in (CONFIG_NAME, WEIGHTS_NAME) else path
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{path} is not a napari-neurt checkpoint: expected a folder holding {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}"
        )
    return folder


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder (or its config.json / model.safetensors) and check it."""
    folder = checkpoint_folder(path)
    for attempt in range(READ_ATTEMPTS):
        document, data = _read_pair(folder)
        digest = hashlib.sha256(data).hexdigest()
        written = document.get("weights_sha256") if isinstance(document, dict) else None
        if written is None or written == digest:
            break
        if attempt + 1 < READ_ATTEMPTS:  # caught between a writer's two renames: read again
            time.sleep(0.05 * (attempt + 1))
    else:
        raise MixedCheckpointError(
            f"{folder}: {WEIGHTS_NAME} is not the file {CONFIG_NAME} was written with (the "
            "folder is being written, or a save into it was interrupted between its two "
            "files); read it again once the write has ended, or save the model again"
        )
    return _checked(folder, document, data, digest)


def _read_pair(folder: Path) -> tuple[Any, bytes]:
    """config.json (parsed) and the bytes of model.safetensors, read in that order."""
    try:
        document = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {error}") from None
    try:
        return document, (folder / WEIGHTS_NAME).read_bytes()
    except OSError as error:
        raise ValueError(f"{folder / WEIGHTS_NAME} could not be read: {error}") from None


def _checked(folder: Path, document: Any, data: bytes, digest: str) -> Checkpoint:
    """The checkpoint of a config document and weights bytes, after checking that they agree."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_NAME} is not a napari-neurt checkpoint config")
    where = folder / CONFIG_NAME
    version = document.get("format_version", 0)
    if not isinstance(version, int):  # a damaged file, not a caller's bug: a ValueError
        raise ValueError(  # noqa: TRY004
            f"{where}: format_version must be a whole number; got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was written by a newer napari-neurt (format {version}); "
            "update napari-neurt to read it"
        )
    if not isinstance(document.get("model"), dict):
        raise ValueError(f"{where} has no \"model\" section (the network's shape)")  # noqa: TRY004
    try:
        config = NeurtConfig.from_dict(document["model"])
    except (TypeError, ValueError) as error:  # a field of the wrong type or value
        raise ValueError(f"{where}: its \"model\" section is not a valid config: {error}") from None
    class_names = document.get("class_names") or []
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"{where}: class_names must be a list of names; got {class_names!r}")
    if class_names and len(class_names) != config.n_classes:
        raise ValueError(
            f"{where} names {len(class_names)} classes ({', '.join(class_names)}) for a network "
            f"of {config.n_classes}"
        )
    frame_rate_hz = document.get("frame_rate_hz")
    check_frame_rate(frame_rate_hz, where)
    for section in ("tokens", "provenance"):
        if not isinstance(document.get(section) or {}, dict):
            raise ValueError(  # noqa: TRY004 - a damaged file, as every check of it here
                f"{where}: {section} must be a JSON object; got {document[section]!r}"
            )
    weights = folder / WEIGHTS_NAME
    try:
        state_dict = load(data)
    except SafetensorError as error:
        raise ValueError(f"{weights} is not a readable safetensors file: {error}") from None
    if config.mil_hidden and config.recording_pooling == "evidence":
        # written before evidence heads had a scale: their pooled evidence counted once
        state_dict.setdefault("recording_head.evidence_scale", torch.ones(config.n_classes - 1))
    check_state_dict(config, state_dict, where=str(folder))
    provenance = dict(document.get("provenance") or {})
    provenance.update(path=str(folder), weights_sha256=digest)
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        class_names=tuple(class_names),
        tokens=dict(document.get("tokens") or {}),
        frame_rate_hz=frame_rate_hz,
        provenance=provenance,
    )


def check_state_dict(
    config: NeurtConfig,
    state_dict: dict[str, torch.Tensor],
    where: str = "",
    *,
    module: Neurt | None = None,
) -> None:
    """Raise a ValueError that lists every tensor missing, unexpected or of the wrong shape.

    The expected shapes are those of `module` when given (a `Neurt` built from `config`), else of
    a network built from `config` for the purpose.
    """
    expected = expected_shapes(config) if module is None else _shapes(module)
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("tensors the config has no place for: " + ", ".join(unexpected))
    for name in sorted(set(expected) & set(found)):
        if expected[name] != found[name]:
            problems.append(
                f"{name}: the config needs shape {expected[name]}, the weights have {found[name]}"
            )
    if problems:
        raise ValueError(
            f"{where or 'checkpoint'}: the model config does not match the weights "
            f"(config: {config}):\n  " + "\n  ".join(problems)
        )


def expected_shapes(config: NeurtConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of a `Neurt` built from `config`.

    Built on the CPU, not on the ``meta`` device: random initialisation on ``meta`` goes through
    torch's Python reference kernels, whose first use imports torch._dynamo and sympy (about 2 s
    of Python that holds the GIL, and froze napari's event loop for up to 0.75 s when a model was
    first loaded in a worker thread). A CPU build costs 5 to 35 ms for the published sizes; the
    global random state is left as it was.
    """
    with own_global_rng():
        return _shapes(Neurt(config))


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
