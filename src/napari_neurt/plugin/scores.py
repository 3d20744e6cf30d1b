"""The scores layer: the ROI labels coloured per neuron by one column of its features table.

`scores_layer_data` builds everything (features table, `DirectLabelColormap`, markers) from an
`Analysis` without touching the viewer, so that a worker thread can do it; `apply_scores` then
adds or updates the layers in one go on the main thread. `recolour` changes the column or the
colormap of an existing scores layer.

The features table has one row per label value, background (0) first, keyed by an ``index``
column as napari expects, like the readers' tables; the ROI layer's own columns (for example
suite2p's ``iscell``) are carried over. Neurons whose value is missing (NaN) are grey. Neurons
whose neighbourhood was too small for the model (``fallback``: their context was filled with the
nearest or farthest neurons) are marked with a cross in a Points layer above the scores.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..analysis import Analysis
from ..recording import Recording

RECORDING_KEY = "neurt_recording"
ANALYSIS_KEY = "neurt_analysis"
SCORES_KEY = "neurt_scores"
MISSING_COLOUR = np.array([0.55, 0.55, 0.55, 1.0])
TRANSPARENT = np.zeros(4)
COLORMAPS = ("viridis", "magma", "plasma", "inferno", "cividis", "turbo", "coolwarm")

#: Readable names of the columns the analysis writes (the others are shown as they are).
COLUMN_LABELS = {
    "neuron_attention": "neuron attention",
    "attention_log10_ratio": "neuron attention, log10 of its ratio to an even share",
    "class_probability": "class probability (window classifier)",
    "predictability_r2": "predictability R²",
    "event_rate_per_min": "event rate (events/min)",
    "n_near": "neighbours nearer than delta",
    "n_far": "neurons farther than delta",
}
#: Colour-by columns in the order the issue lists them, offered first when present.
PREFERRED = (
    "attention_log10_ratio",
    "neuron_attention",
    "class_probability",
    "predictability_r2",
    "event_rate_per_min",
)
NOT_SCORES = {"index", "neuron_id", "centroid_y", "centroid_x", "fallback"}


def column_label(column: str, features: pd.DataFrame | None = None, analysis=None) -> str:
    label = COLUMN_LABELS.get(column, column)
    if column == "class_probability" and analysis is not None and analysis.classification:
        names = analysis.classification.result.class_names
        if len(names) > 1:
            label = f"window classifier's P({names[1]})"
    return label


def colour_columns(features: pd.DataFrame) -> list[str]:
    """Numeric per-neuron columns that can colour the labels, preferred ones first."""
    numeric = [
        c
        for c in features.columns
        if c not in NOT_SCORES
        and (pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]))
    ]
    return [c for c in PREFERRED if c in numeric] + [c for c in numeric if c not in PREFERRED]


def default_column(features: pd.DataFrame, analysis: Analysis | None, previous: str | None) -> str:
    """What to colour by: the newest result (classification, then reconstruction), else the
    previous choice, else the event rate."""
    columns = colour_columns(features)
    if analysis is not None and analysis.classification is not None:
        # attention on a log scale: it may sit on a few neurons, which a linear scale shows alone
        has_head = analysis.classification.result.recording_head
        wanted = "attention_log10_ratio" if has_head else "class_probability"
        if wanted in columns:
            return wanted
    if analysis is not None and analysis.reconstruction is not None and "predictability_r2" in columns:
        return "predictability_r2"
    if previous in columns:
        return previous
    return columns[0] if columns else "event_rate_per_min"


def features_table(analysis: Analysis, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Background row then one row per neuron: the analysis's columns and `extra`'s others."""
    table = analysis.neuron_table()
    ids = np.asarray(table["neuron_id"], dtype=np.int64)
    columns: dict[str, Any] = {"index": np.concatenate([[0], ids])}
    for name, values in table.items():
        values = np.asarray(values)
        if values.dtype == bool:
            columns[name] = np.concatenate([[False], values])
        elif np.issubdtype(values.dtype, np.integer) and name != "neuron_id":
            columns[name] = np.concatenate([[-1], values])
        elif name == "neuron_id":
            columns[name] = columns["index"].copy()
        else:
            columns[name] = np.concatenate([[np.nan], values.astype(np.float64)])
    frame = pd.DataFrame(columns)
    if extra is not None and len(extra) and "index" in extra.columns:
        others = [c for c in extra.columns if c not in frame.columns]
        if others:
            lookup = extra.drop_duplicates("index").set_index("index")[others]
            frame = frame.join(lookup, on="index")
    return frame


def value_limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        pad = 0.5 * (abs(low) or 1.0)
        low, high = low - pad, high + pad
    return low, high


@dataclass
class Colouring:
    """How a scores layer is coloured: the colour of each label and what the legend says."""

    column: str
    label: str
    cmap: str
    limits: tuple[float, float]
    color_dict: dict
    n_scored: int
    n_missing: int
    n_fallback: int

    def legend(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "label": self.label,
            "cmap": self.cmap,
            "limits": self.limits,
            "n_scored": self.n_scored,
            "n_missing": self.n_missing,
            "n_fallback": self.n_fallback,
        }


def colouring(
    features: pd.DataFrame,
    column: str,
    cmap: str = "viridis",
    *,
    label: str | None = None,
    limits: tuple[float, float] | None = None,
) -> Colouring:
    """Colours of the neurons (rows after the background) from `column` through `cmap`."""
    import matplotlib

    if column not in features.columns:
        raise ValueError(
            f"the scores have no column {column!r}; they have {', '.join(map(str, features.columns))}"
        )
    rows = features[features["index"] != 0]
    ids = rows["index"].to_numpy(dtype=np.int64)
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64)
    low, high = value_limits(values) if limits is None else (float(limits[0]), float(limits[1]))
    colormap = matplotlib.colormaps[cmap]
    position = np.clip((values - low) / ((high - low) or 1.0), 0.0, 1.0)
    colours = colormap(np.where(np.isfinite(values), position, 0.0))
    finite = np.isfinite(values)
    colours[~finite] = MISSING_COLOUR
    color_dict: dict = {None: TRANSPARENT, 0: TRANSPARENT}
    color_dict.update({int(i): c for i, c in zip(ids, colours, strict=True)})
    fallback = rows["fallback"].to_numpy(dtype=bool) if "fallback" in rows.columns else np.zeros(0)
    return Colouring(
        column=column,
        label=label or column_label(column),
        cmap=cmap,
        limits=(low, high),
        color_dict=color_dict,
        n_scored=int(finite.sum()),
        n_missing=int((~finite).sum()),
        n_fallback=int(fallback.sum()),
    )


def fallback_points(features: pd.DataFrame) -> np.ndarray:
    """(y, x) pixel centroids of the neurons flagged ``fallback``: (M, 2)."""
    if "fallback" not in features.columns:
        return np.zeros((0, 2))
    rows = features[(features["index"] != 0) & features["fallback"].astype(bool)]
    return rows[["centroid_y", "centroid_x"]].to_numpy(dtype=np.float64).reshape(-1, 2)


@dataclass
class ScoresLayerData:
    """Everything `apply_scores` puts into the viewer, built beforehand (in a worker)."""

    name: str
    labels: np.ndarray
    features: pd.DataFrame
    colouring: Colouring
    analysis: Analysis
    markers: np.ndarray
    roi_layer_name: str
    layer_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def markers_name(self) -> str:
        return f"{self.roi_layer_name} low-context neurons"


def scores_layer_data(
    analysis: Analysis,
    *,
    roi_layer_name: str,
    extra_features: pd.DataFrame | None = None,
    colour_by: str | None = None,
    cmap: str = "viridis",
    previous: str | None = None,
    layer_kwargs: dict[str, Any] | None = None,
) -> ScoresLayerData:
    """Build the scores layer of `analysis` (no viewer needed; safe in a worker thread)."""
    recording = analysis.recording
    if recording.labels is None:
        raise ValueError(
            "this recording has no labels image, so its neurons cannot be coloured; "
            "open it with its ROIs"
        )
    features = features_table(analysis, extra_features)
    column = colour_by if colour_by in colour_columns(features) else default_column(
        features, analysis, previous
    )
    colours = colouring(features, column, cmap, label=column_label(column, features, analysis))
    return ScoresLayerData(
        name=f"{roi_layer_name} scores",
        labels=recording.labels.copy(),  # painting the layer must not change the Recording
        features=features,
        colouring=colours,
        analysis=analysis,
        markers=fallback_points(features),
        roi_layer_name=roi_layer_name,
        layer_kwargs=dict(layer_kwargs or {}),
    )


def _following_selection(colormap, layer):
    """`colormap` showing only `layer`'s selected label when the layer is set to: napari copies
    that onto a colormap only when it makes one, not onto one it is given."""
    colormap.use_selection = bool(layer.show_selected_label)
    colormap.selection = int(layer.selected_label)
    return colormap


def _direct_colormap(color_dict: dict):
    from napari.utils import DirectLabelColormap

    return DirectLabelColormap(color_dict=color_dict)


def _made_for(info: dict | None, roi_layer) -> bool:
    """Whether a scores layer's (or markers') `info` names `roi_layer`: the layer itself, held
    weakly, so that the link survives renames and a duplicate of the layer is another layer."""
    reference = (info or {}).get("roi_ref")
    return reference is not None and reference() is roi_layer


def scores_layer_of(viewer, roi_layer):
    """The scores layer made for `roi_layer` (a Labels layer), if any."""
    for layer in viewer.layers:
        info = layer.metadata.get(SCORES_KEY) if hasattr(layer, "metadata") else None
        if hasattr(layer, "selected_label") and info and "markers_of" not in info and _made_for(
            info, roi_layer
        ):
            return layer
    return None


def _markers_of(viewer, roi_layer):
    for layer in viewer.layers:
        info = getattr(layer, "metadata", {}).get(SCORES_KEY)
        if info and "markers_of" in info and _made_for(info, roi_layer):
            return layer
    return None


def apply_scores(viewer, data: ScoresLayerData, roi_layer):
    """Add the scores layer of `roi_layer` (and its markers) or update the existing one;
    returns the scores layer."""
    reference = weakref.ref(roi_layer)
    colormap = _direct_colormap(data.colouring.color_dict)
    metadata_info = {"roi_ref": reference, **data.colouring.legend()}
    layer = scores_layer_of(viewer, roi_layer)
    metadata = {
        RECORDING_KEY: data.analysis.recording,
        ANALYSIS_KEY: data.analysis,
        SCORES_KEY: metadata_info,
    }
    markers = _markers_of(viewer, roi_layer)
    kwargs = data.layer_kwargs
    if layer is None:
        layer = viewer.add_labels(
            data.labels,
            name=data.name,
            features=data.features,
            colormap=colormap,
            metadata=metadata,
            opacity=0.75,
            **kwargs,
        )
        ids = data.analysis.recording.neuron_ids  # napari's default label 1 may be no neuron
        layer.selected_label = (
            roi_layer.selected_label if roi_layer.selected_label in ids
            else int(ids[0]) if len(ids) else 1
        )
    else:
        with layer.events.selected_label.blocker():
            if layer.data is not data.labels and not np.array_equal(layer.data, data.labels):
                layer.data = data.labels
            layer.metadata = {**layer.metadata, **metadata}
            layer.colormap = _following_selection(colormap, layer)
            layer.features = data.features
    scale = kwargs.get("scale")
    translate = kwargs.get("translate")
    if len(data.markers) and markers is None:
        viewer.add_points(
            data.markers,
            name=data.markers_name,
            symbol="x",
            size=5,
            face_color="white",
            border_color="black",
            border_width=0.15,
            scale=scale,
            translate=translate,
            metadata={SCORES_KEY: {"markers_of": data.name, "roi_ref": reference}},
        )
    elif markers is not None:
        markers.data = data.markers
    return layer


def recolour(layer, column: str, cmap: str | None = None) -> Colouring:
    """Colour an existing scores layer by another column (and/or colormap)."""
    info = dict(layer.metadata.get(SCORES_KEY) or {})
    cmap = cmap or info.get("cmap", "viridis")
    analysis = layer.metadata.get(ANALYSIS_KEY)
    colours = colouring(
        layer.features, column, cmap, label=column_label(column, layer.features, analysis)
    )
    colormap = _following_selection(_direct_colormap(colours.color_dict), layer)
    with layer.events.selected_label.blocker():
        layer.colormap = colormap
    info.update(colours.legend())
    layer.metadata = {**layer.metadata, SCORES_KEY: info}
    return colours


def recording_of(layer) -> Recording | None:
    """The `Recording` a layer carries in its metadata, if any."""
    value = getattr(layer, "metadata", {}).get(RECORDING_KEY)
    return value if isinstance(value, Recording) else None


def analysis_of(layer) -> Analysis | None:
    value = getattr(layer, "metadata", {}).get(ANALYSIS_KEY)
    return value if isinstance(value, Analysis) else None
