"""Random helpers shared by the simulators."""

from __future__ import annotations

import numpy as np


def log_normal(median, spread: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``median * exp(spread * z)`` with z standard normal truncated to [-2, 2].

    Truncation keeps per-cell factors (brightness, rate, amplitude) free of extreme outliers,
    whose product would otherwise make a few cells unrealistically dim and silent.
    """
    return median * np.exp(spread * np.clip(rng.standard_normal(size), -2.0, 2.0))
