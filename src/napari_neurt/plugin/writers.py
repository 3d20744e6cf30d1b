"""npe2 writer contributions (see ``napari.yaml``): *File > Save Selected Layers* on a NEuRT
labels layer (ROIs or scores) writes its traces, reconstruction and per-neuron scores, with the
models' provenance, as CSV tables or an NWB file (`napari_neurt.io.export`).

napari calls a single-layer writer with the path, the layer's data and its attributes (which
include ``metadata``); nothing here imports napari or Qt.
"""

from __future__ import annotations

from typing import Any

from ..analysis import Analysis
from ..recording import Recording
from .scores import ANALYSIS_KEY, RECORDING_KEY


def _analysis(attributes: dict[str, Any]) -> Analysis:
    metadata = attributes.get("metadata") or {}
    analysis = metadata.get(ANALYSIS_KEY)
    recording = metadata.get(RECORDING_KEY)
    if isinstance(analysis, Analysis) and (recording is None or analysis.recording is recording):
        return analysis
    if isinstance(recording, Recording):
        return Analysis(recording)
    raise ValueError(
        "this labels layer carries no NEuRT recording: extract traces in the NEuRT analysis "
        "panel (or open a suite2p, CaImAn or NWB recording) before saving it as NEuRT results"
    )


def write_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """NEuRT results of a labels layer as CSV tables + provenance JSON."""
    from ..io.export import write_csv as write

    return [str(p) for p in write(path, _analysis(attributes))]


def write_nwb(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """NEuRT results of a labels layer as an NWB file (needs pynwb)."""
    from ..io.export import write_nwb as write

    return [str(write(path, _analysis(attributes)))]
