"""Dock widgets. Thin layers over the core API: they read a `Recording` (and its `Analysis`) from
a Labels layer's metadata, start the core's step generators in workers, and draw the results.

- `AnalysisWidget` (*NEuRT analysis*): inputs, model and device, Extract / Reconstruct / Classify,
  the scores layer's colouring and its legend, export.
- `TracePlotWidget` (*NEuRT traces*): the selected neuron's trace, reconstruction and attention.
- `AttentionMapWidget` (*NEuRT attention map*): time-by-time self-attention of a layer and head.
- `FineTuneWidget` (*NEuRT fine-tune*): fine-tune a classifier on labelled recordings.
"""

from ..scores import ANALYSIS_KEY, RECORDING_KEY, SCORES_KEY, analysis_of, recording_of
from .analysis import AnalysisWidget
from .attention import AttentionMapWidget
from .base import PlotWidget
from .finetune import FineTuneWidget
from .legend import ScoresLegend
from .traces import TracePlotWidget

__all__ = [
    "ANALYSIS_KEY",
    "RECORDING_KEY",
    "SCORES_KEY",
    "AnalysisWidget",
    "AttentionMapWidget",
    "FineTuneWidget",
    "PlotWidget",
    "ScoresLegend",
    "TracePlotWidget",
    "analysis_of",
    "recording_of",
]
