"""NEuRT in napari-neurt: the network, its tokens, its weights and whole-recording inference.

    >>> import napari_neurt
    >>> model = napari_neurt.load_model("neurt-microns")          # doctest: +SKIP
    >>> tokens = model.tokens_for(recording)                      # doctest: +SKIP
    >>> reconstruction = model.reconstruct(tokens, hide)          # doctest: +SKIP

This package never imports Qt or napari.
"""

from .checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from .fills import kriging_fill, pchip_fill
from .inference import (
    Calibration,
    ClassificationResult,
    NeurtModel,
    load_model,
    window_starts,
    window_taper,
)
from .neurt import Neurt, NeurtConfig
from .published import PUBLISHED, WeightsNotAvailable, fetch_published, read_published
from .tokens import (
    ACTIVITY_STATISTICS,
    DEFAULT_DELTA_UM,
    FEATURES,
    NeighborhoodTokens,
    activity_statistics,
    neighborhood_tokens,
    normalise_traces,
    span_mask,
)

__all__ = [
    "ACTIVITY_STATISTICS",
    "DEFAULT_DELTA_UM",
    "FEATURES",
    "PUBLISHED",
    "Calibration",
    "Checkpoint",
    "ClassificationResult",
    "NeighborhoodTokens",
    "Neurt",
    "NeurtConfig",
    "NeurtModel",
    "WeightsNotAvailable",
    "activity_statistics",
    "fetch_published",
    "kriging_fill",
    "load_model",
    "neighborhood_tokens",
    "normalise_traces",
    "pchip_fill",
    "read_checkpoint",
    "read_published",
    "save_checkpoint",
    "span_mask",
    "window_starts",
    "window_taper",
]
