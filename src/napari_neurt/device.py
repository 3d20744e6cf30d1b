"""Pick the torch device once, the same way everywhere (API, CLI, napari widgets)."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:1", "mps" (or a `torch.device`) into an available device.

    "auto" takes the first available of CUDA, Apple MPS, CPU. Asking for a device that is not
    available raises a ValueError that says what is.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a string or torch.device; got {type(device).__name__}")

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}"
        ) from None

    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available here ({available()})"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but CUDA has {torch.cuda.device_count()} device(s)"
            )
        return resolved
    if resolved.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device 'mps' asked for, but Apple MPS is not available here ({available()})"
            )
        return resolved
    raise ValueError(f"unsupported device {device!r}; use one of {', '.join(DEVICE_CHOICES)}")


def available() -> str:
    """The devices this machine offers, in words (for error messages and the GUI)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return "available: " + ", ".join(found)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
