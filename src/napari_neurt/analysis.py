"""Analyses built on NEuRT: what the napari widgets, scripts and exports compute, without Qt.

One `Analysis` gathers everything computed for one `Recording`:

- `Reconstruction` (`iter_reconstruct` / `reconstruct`): NEuRT asked to predict frames it does
  not see. Three ways to choose the hidden frames (`HIDE_MODES`):

  ``"kfold"`` (the default)
      every frame in turn: time is cut into spans of `span` frames dealt round-robin to
      `n_folds` folds, and fold f is reconstructed with its spans hidden. Each frame's
      prediction is made without seeing it, and each neuron gets a *predictability* R^2 of its
      predicted against its recorded trace over all frames.
  ``"marked"``
      frames the user marks; predictability is the R^2 on those frames.
  ``"bad"``
      frames flagged as bad (`frame_quality` on the movie: frames unlike both their neighbours,
      or `bad_frames_from_traces`), which are imputed: `Reconstruction.imputed` is the trace with these frames replaced.

  Frames hidden in "marked" and "bad" modes are also left out of the min-max normalisation of
  the tokens (set to NaN, then interpolated by `neighborhood_tokens`), so that neither their
  values nor their extremes leak into what the model sees.
- `Classification` (`iter_classify` / `classify`): a NEuRT classifier's per-neuron class
  probabilities, temporal attention and neuron attention.
- `event_rate`: calcium events per minute from dF/F traces, for a model-free score to compare.

`Analysis.neuron_table` lays out every per-neuron value as columns (one row per neuron), which
is what the napari scores layer shows and what the exports write.

Every long job is a step generator (`napari_neurt.progress`): ``iter_*`` yields `Progress`
between batches and returns its result; the plain functions drive it with `run_steps`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .progress import Progress, Steps, relay, run_steps
from .recording import Recording

if TYPE_CHECKING:  # torch is heavy: imported by the model, never here at import time
    from .model import ClassificationResult, NeighborhoodTokens, NeurtModel

HIDE_MODES = ("kfold", "marked", "bad")
DEFAULT_FOLDS = 6  # 1/6 of frames hidden per pass: near the 15 % of NEuRT pretraining
DEFAULT_SPAN = 5  # frames per hidden span: near the mean span of NEuRT pretraining (~4.3)
ROW_BLOCK = 256  # neurons at once in per-neuron statistics (their float64 copies stay small)


# -- frames ----------------------------------------------------------------------------------------
def kfold_folds(
    n_frames: int, n_folds: int = DEFAULT_FOLDS, span: int = DEFAULT_SPAN
) -> np.ndarray:
    """Fold of each frame, int64 (T,): spans of `span` frames dealt round-robin to `n_folds`."""
    if n_folds < 2:
        raise ValueError(f"k-fold hiding needs at least 2 folds; got {n_folds}")
    if span < 1:
        raise ValueError(f"span must be at least 1 frame; got {span}")
    if n_frames <= span:  # one fold would hide every frame: nothing left to go on
        raise ValueError(
            f"k-fold hiding in spans of {span} frames needs more than {span} frames; the "
            f"recording has {n_frames}: use shorter spans"
        )
    return (np.arange(n_frames, dtype=np.int64) // int(span)) % int(n_folds)


def parse_frames(text: str, n_frames: int) -> np.ndarray:
    """Frames written as ``"10-20, 35, 100-105"`` (inclusive ranges, 0-based) -> bool (T,).

    Raises a ValueError naming the part it cannot read or the frame out of range.
    """
    hidden = np.zeros(n_frames, dtype=bool)
    text = re.sub(r"\s*([-:])\s*", r"\1", text)  # "10 - 20" is a range too
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:\s*[-:]\s*(\d+))?", part)
        if match is None:
            raise ValueError(
                f"cannot read {part!r} as frames: write frame numbers and ranges like '10-20, 35'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"range {part!r} ends before it starts")
        if last >= n_frames:
            raise ValueError(f"frame {last} is past the last frame ({n_frames - 1})")
        hidden[first : last + 1] = True
    return hidden


def format_frames(hidden: np.ndarray) -> str:
    """The inverse of `parse_frames`: a bool (T,) mask as ``"10-20, 35"``."""
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in frame_runs(hidden))


def frame_runs(hidden: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive True frames as inclusive (first, last) pairs."""
    hidden = np.asarray(hidden, dtype=bool).ravel()
    edges = np.diff(np.concatenate([[0], hidden.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b) - 1) for a, b in zip(starts, stops, strict=True)]


@dataclass
class FrameQuality:
    """Per-frame quality of a movie (see `iter_frame_quality`).

    `correlation` is each frame's Pearson correlation with the neighbouring frame it resembles
    most (the previous or the next one), `brightness` the frame's mean; `bad` flags the frames
    that resemble neither neighbour (a torn, blank or displaced frame), are darker or brighter
    than both (a dark frame, a flash), or hold NaN/inf, by more than `threshold` robust standard
    deviations (1.4826 x median absolute deviation) from what is usual in this movie.
    """

    correlation: np.ndarray
    brightness: np.ndarray
    bad: np.ndarray
    threshold: float


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 MAD), with a floor on the spread so that flat input gives 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    median = np.median(values[finite])
    spread = 1.4826 * np.median(np.abs(values[finite] - median))
    spread = max(spread, 1e-6 * max(abs(median), 1.0), 1e-12)
    return (values - median) / spread


def iter_frame_quality(
    movie, *, threshold: float = 5.0, chunk_size: int | None = None
) -> Steps[FrameQuality]:
    """Flag bad frames of a (T, H, W) movie in one streaming pass; yields `Progress` per chunk.

    Each frame is compared with its two neighbours, so that what changes slowly or for many
    frames (bleaching, drift, a burst of activity, a lasting displacement, which wants motion
    correction rather than imputation) is not flagged, while a frame unlike both neighbours is:

    - decorrelation: ``1 - max(corr(F_t, F_t-1), corr(F_t, F_t+1))``, flagged when its logarithm
      is more than `threshold` robust SDs above the movie's median;
    - brightness: the log ratio of the frame's mean to each neighbour's (at the first and last
      frame, to the value extrapolated from the next two), flagged when both ratios are
      more than `threshold` robust SDs below (dark) or above (flash) the usual.
    """
    from .extraction import check_movie, release_pages

    n_frames, height, width = check_movie(movie)
    if chunk_size is None:
        chunk_size = max(1, (32 * 2**20) // (height * width * 8))
    neighbour = np.full(n_frames, np.nan)  # corr(F_t, F_t-1)
    brightness = np.empty(n_frames)
    finite = np.empty(n_frames, dtype=bool)
    previous = None  # (centred frame, norm) of the frame before the chunk
    for start in range(0, n_frames, chunk_size):
        stop = min(start + chunk_size, n_frames)
        block = movie[start:stop]
        frames = np.asarray(block, dtype=np.float64).reshape(stop - start, -1)
        release_pages(block)  # a memory-mapped movie streams through without staying resident
        finite[start:stop] = np.isfinite(frames).all(axis=1)
        means = frames.mean(axis=1)
        brightness[start:stop] = means
        centred = frames - means[:, None]
        norms = np.sqrt((centred**2).sum(axis=1))
        if previous is not None:
            centred = np.concatenate([previous[0][None], centred])
            norms = np.concatenate([[previous[1]], norms])
        products = (centred[1:] * centred[:-1]).sum(axis=1)
        denominator = norms[1:] * norms[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(denominator > 0, products / denominator, 0.0)
        first = start if previous is not None else start + 1
        neighbour[first:stop] = values
        previous = (centred[-1], norms[-1])
        yield Progress(stop, n_frames, "checking frames")

    before = np.r_[np.nan, neighbour[1:]]  # with the previous frame
    after = np.r_[neighbour[1:], np.nan]  # with the next frame
    correlation = np.fmax(before, after)
    seen = brightness[np.isfinite(brightness)]  # a frame with a NaN pixel has no brightness
    with np.errstate(invalid="ignore", divide="ignore"):
        decorrelation = np.log(np.clip(1.0 - correlation, 1e-12, None))
        level = np.log(
            np.clip(brightness, 1e-12, None)
            if (seen > 0).all()
            else brightness - (seen.min() if seen.size else 0.0) + 1.0
        )
    ratio_before = np.full(n_frames, np.nan)
    ratio_after = np.full(n_frames, np.nan)
    if n_frames >= 2:
        ratio_before[1:] = level[1:] - level[:-1]
        ratio_after[:-1] = level[:-1] - level[1:]
    if n_frames >= 3:
        # the ends: against the level extrapolated from their two neighbours (which follows a
        # drift), scaled to the noise of a one-neighbour difference (variance 6 vs 2 sigma^2)
        scale = np.sqrt(2 / 6)
        ratio_before[0] = scale * (level[0] - (2 * level[1] - level[2]))
        ratio_after[-1] = scale * (level[-1] - (2 * level[-2] - level[-3]))
    darker = np.fmax(ratio_before, ratio_after)  # both negative for a dark frame
    brighter = np.fmin(ratio_before, ratio_after)  # both positive for a flash
    bad = ~finite | ~np.isfinite(correlation) & (n_frames > 1)
    if n_frames >= 3:
        bad |= (
            (robust_z(decorrelation) > threshold)
            | (robust_z(darker) < -threshold)
            | (robust_z(brighter) > threshold)
        )
    return FrameQuality(correlation, brightness, bad, float(threshold))


def frame_quality(movie, **options) -> FrameQuality:
    """`iter_frame_quality` run to the end."""
    return run_steps(iter_frame_quality(movie, **options))


def bad_frames_from_traces(traces: np.ndarray, *, threshold: float = 5.0) -> np.ndarray:
    """Bad frames found from traces alone (no movie), bool (T,).

    A frame is bad when any neuron's value is not finite, when every neuron repeats the previous
    frame exactly (a duplicated frame), or when the median over neurons of the robust z-score of
    each trace drops more than `threshold` below its median over frames (a dark frame).
    """
    traces = np.asarray(traces, dtype=np.float64)
    n, n_frames = traces.shape
    bad = ~np.isfinite(traces).all(axis=0)
    if n == 0 or n_frames < 2:
        return bad
    repeated = np.zeros(n_frames, dtype=bool)
    repeated[1:] = (traces[:, 1:] == traces[:, :-1]).all(axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames: flagged above
        median = np.nanmedian(traces, axis=1, keepdims=True)
        spread = 1.4826 * np.nanmedian(np.abs(traces - median), axis=1, keepdims=True)
        z = (traces - median) / np.where(spread > 0, spread, 1.0)
        population = np.nanmedian(np.where(np.isfinite(z), z, np.nan), axis=0)
    population = np.where(np.isfinite(population), population, 0.0)
    return bad | repeated | (robust_z(population) < -threshold)


# -- model-free scores -----------------------------------------------------------------------------
def event_rate(
    traces: np.ndarray,
    frame_rate: float,
    *,
    threshold: float = 4.0,
    min_interval_s: float = 0.5,
) -> np.ndarray:
    """Calcium events per minute of each trace (float64 (N,)).

    An event is an upward crossing of ``median + threshold * sigma``, with sigma the robust
    standard deviation of the frame-to-frame differences (1.4826 MAD / sqrt 2, which ignores
    slow transients); crossings closer than `min_interval_s` to the previous event are merged.
    Non-finite samples count as below threshold.
    """
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise ValueError(f"traces must be (neurons, frames); got shape {traces.shape}")
    n, n_frames = traces.shape
    if n_frames < 2 or not frame_rate > 0:
        return np.full(n, np.nan)
    if n > ROW_BLOCK:
        return _in_row_blocks(event_rate, traces, frame_rate=frame_rate, threshold=threshold,
                              min_interval_s=min_interval_s)
    traces = np.asarray(traces, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN traces: no events
        median = np.nanmedian(traces, axis=1, keepdims=True)
        steps = np.diff(traces, axis=1)
        sigma = (
            1.4826
            * np.nanmedian(
                np.abs(steps - np.nanmedian(steps, axis=1, keepdims=True)), axis=1, keepdims=True
            )
            / np.sqrt(2)
        )
        above = traces > median + threshold * np.where(sigma > 0, sigma, np.inf)
    above &= np.isfinite(traces)  # +inf too counts as below
    crossing = above[:, 1:] & ~above[:, :-1]
    # kept: at least min_interval_s after the previous crossing (rounded up: closer ones merge)
    gap = max(1, math.ceil(min_interval_s * frame_rate - 1e-9))
    counts = np.zeros(n, dtype=np.int64)
    for i, row in enumerate(crossing):  # crossings are few: a Python loop over them is cheap
        frames = np.flatnonzero(row)
        if frames.size:
            kept = frames[np.concatenate([[True], np.diff(frames) >= gap])]
            counts[i] = kept.size
    minutes = n_frames / frame_rate / 60.0
    return counts / minutes


def _in_row_blocks(function, *arrays, **options) -> np.ndarray:
    """`function` of `arrays` (rows of neurons; None passes through), `ROW_BLOCK` rows at a
    time: its float64 copies are of a block, not of the recording. Per-row results join."""
    return np.concatenate([
        function(*(None if a is None else a[first : first + ROW_BLOCK] for a in arrays),
                 **options)
        for first in range(0, len(arrays[0]), ROW_BLOCK)
    ])


def r_squared(
    truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Per-row R^2 of `prediction` against `truth` over the frames in `mask` (default: all).

    NaN where fewer than 2 frames count or the truth is constant over them; non-finite truth
    samples are left out.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if mask is not None:
        mask = np.broadcast_to(mask, truth.shape)
    if truth.ndim == 2 and len(truth) > ROW_BLOCK:
        return _in_row_blocks(r_squared, truth, prediction, mask)
    truth = np.asarray(truth, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    weight = np.ones(truth.shape, dtype=bool) if mask is None else mask
    weight = weight & np.isfinite(truth) & np.isfinite(prediction)
    count = weight.sum(axis=1)
    t = np.where(weight, truth, 0.0)
    mean = t.sum(axis=1, keepdims=True) / np.maximum(count, 1)[:, None]
    total = (np.where(weight, truth - mean, 0.0) ** 2).sum(axis=1)
    residual = (np.where(weight, truth - prediction, 0.0) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((count >= 2) & (total > 0), 1.0 - residual / total, np.nan)


# -- results ---------------------------------------------------------------------------------------
@dataclass
class TokenInfo:
    """How each neuron's neighbourhood came out (from `NeighborhoodTokens`)."""

    fallback: np.ndarray
    n_near: np.ndarray
    n_far: np.ndarray
    delta_px: float
    delta_um: float | None

    @classmethod
    def of(cls, tokens: NeighborhoodTokens) -> TokenInfo:
        return cls(
            tokens.fallback.copy(),
            tokens.n_near.copy(),
            tokens.n_far.copy(),
            float(tokens.delta_px),
            tokens.delta_um,
        )


@dataclass
class Reconstruction:
    """NEuRT's prediction of hidden frames (see the module docstring for the modes).

    Attributes
    ----------
    mode
        "kfold", "marked" or "bad".
    reconstruction
        float32 (N, T) the model's own-trace output in the units of the recording's traces. In
        "kfold" mode every frame comes from the fold that hid it; otherwise hidden frames are
        predicted and the others are the model's reading of what it saw.
    hidden
        bool (T,) frames hidden from the model (all of them in "kfold" mode).
    folds
        int (T,) fold of each frame in "kfold" mode, else None.
    predictability
        float64 (N,) R^2 of the prediction against the trace on the hidden frames (NaN in
        "bad" mode, whose hidden frames hold no trustworthy truth).
    imputed
        float32 (N, T) the trace with its hidden frames replaced by the prediction ("bad" and
        "marked" modes), else None.
    tokens
        `TokenInfo` of the tokens the model was given.
    model
        `NeurtModel.describe()` of the model used (weights sha256, config, device).
    parameters
        The settings of this run.
    """

    mode: str
    reconstruction: np.ndarray
    hidden: np.ndarray
    folds: np.ndarray | None
    predictability: np.ndarray
    imputed: np.ndarray | None
    tokens: TokenInfo
    model: dict[str, Any]
    parameters: dict[str, Any]

    @property
    def hidden_runs(self) -> list[tuple[int, int]]:
        """Hidden frames as inclusive runs; empty in "kfold" mode, where every frame is hidden."""
        return [] if self.mode == "kfold" else frame_runs(self.hidden)


@dataclass
class Classification:
    """A NEuRT classifier's verdict on a recording, with the tokens' and model's description."""

    result: ClassificationResult
    tokens: TokenInfo
    model: dict[str, Any]
    parameters: dict[str, Any]


@dataclass
class Analysis:
    """Everything computed for one recording: what the scores layer shows and exports write."""

    recording: Recording
    reconstruction: Reconstruction | None = None
    classification: Classification | None = None

    def with_results(self, **changes) -> Analysis:
        """A new Analysis with some results replaced (the old one is left as it was)."""
        return replace(self, **changes)

    @property
    def token_info(self) -> TokenInfo | None:
        for part in (self.classification, self.reconstruction):
            if part is not None:
                return part.tokens
        return None

    def neuron_table(self) -> dict[str, np.ndarray]:
        """Per-neuron values, one row per neuron in `recording.neuron_ids` order.

        Columns: ``neuron_id``, ``centroid_y``, ``centroid_x``, ``event_rate_per_min`` always;
        ``fallback``, ``n_near``, ``n_far`` once the model has seen the recording;
        ``predictability_r2`` after a reconstruction; ``class_probability`` (of class 1),
        ``p_<class>`` for every class (``p_<class>_<index>`` for class names that come out the
        same, such as "Tg+" and "Tg-"), ``neuron_attention`` and ``attention_log10_ratio`` (the
        attention over an even share, 1/N, in log10: 0 for an average neuron, 1 for ten times
        it; attention can be concentrated on a few neurons, and this shows where every other
        neuron stands) after a classification.
        """
        recording = self.recording
        table: dict[str, np.ndarray] = {
            "neuron_id": recording.neuron_ids.copy(),
            "centroid_y": recording.centroids[:, 0].copy(),
            "centroid_x": recording.centroids[:, 1].copy(),
            "event_rate_per_min": event_rate(recording.traces, recording.frame_rate),
        }
        info = self.token_info
        if info is not None:
            table["fallback"] = info.fallback.astype(bool)
            table["n_near"] = info.n_near.astype(np.int64)
            table["n_far"] = info.n_far.astype(np.int64)
        if self.reconstruction is not None:
            table["predictability_r2"] = self.reconstruction.predictability.astype(np.float64)
        if self.classification is not None:
            result = self.classification.result
            table["class_probability"] = np.asarray(result.neuron_probability, dtype=np.float64)
            names = result.class_names or tuple(
                f"class {i}" for i in range(result.class_probability.shape[1])
            )
            fragments = [column_name(name) for name in names]
            for i, fragment in enumerate(fragments):
                if fragments.count(fragment) > 1:  # "Tg+" and "Tg-" would share p_tg
                    fragment = f"{fragment}_{i}"
                table[f"p_{fragment}"] = result.class_probability[:, i].astype(np.float64)
            attention = np.asarray(result.neuron_attention, dtype=np.float64)
            table["neuron_attention"] = attention
            from .model.inference import attention_log10_ratio  # torch is loaded by now

            table["attention_log10_ratio"] = attention_log10_ratio(attention)
        return table

    def provenance(self) -> dict[str, Any]:
        """Models (weights sha256, config) and parameters behind the results, JSON-able."""
        recording = self.recording
        document: dict[str, Any] = {
            "recording": {
                "source": recording.source,
                "n_neurons": recording.n_neurons,
                "n_frames": recording.n_frames,
                "frame_rate": recording.frame_rate,
                "pixel_size_um": recording.pixel_size_um,
                "trace_kind": recording.metadata.get("trace_kind", "unknown"),
            }
        }
        for name in ("reconstruction", "classification"):
            part = getattr(self, name)
            if part is not None:
                document[name] = {
                    "model": _jsonable(part.model),
                    "parameters": _jsonable(part.parameters),
                }
        from . import __version__

        document["napari_neurt"] = __version__
        return document


def column_name(name: str) -> str:
    """A class name as a column-name fragment: lower case, runs of other characters as '_'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "class"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- model runs ------------------------------------------------------------------------------------
def trace_scale(traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron (low, span) of the finite samples: the min-max normalisation of the tokens.

    ``normalised * span + low`` gives back trace units; constant or empty traces get span 0.
    """
    traces = np.asarray(traces, dtype=np.float64)
    finite = np.isfinite(traces)
    low = np.where(finite, traces, np.inf).min(axis=1) if traces.shape[1] else np.zeros(len(traces))
    high = np.where(finite, traces, -np.inf).max(axis=1) if traces.shape[1] else low
    empty = ~finite.any(axis=1) if traces.shape[1] else np.ones(len(traces), bool)
    low = np.where(empty, 0.0, low)
    span = np.where(empty, 0.0, high - low)
    return low, span


def _hidden_frames(
    mode: str, n_frames: int, frames: np.ndarray | str | None, n_folds: int, span: int
) -> tuple[np.ndarray, np.ndarray | None]:
    if mode not in HIDE_MODES:
        raise ValueError(f"hide must be one of {', '.join(map(repr, HIDE_MODES))}; got {mode!r}")
    if mode == "kfold":
        folds = kfold_folds(n_frames, n_folds, span)
        return np.ones(n_frames, dtype=bool), folds
    if frames is None:
        raise ValueError(
            f"hide={mode!r} needs the frames to hide"
            + (" (find them with frame_quality(movie).bad)" if mode == "bad" else "")
        )
    if isinstance(frames, str):
        hidden = parse_frames(frames, n_frames)
    else:
        frames = np.asarray(frames)
        if frames.dtype == bool:
            if frames.shape != (n_frames,):
                raise ValueError(f"a frame mask must have {n_frames} entries; got {frames.shape}")
            hidden = frames.copy()
        else:
            hidden = np.zeros(n_frames, dtype=bool)
            index = frames.astype(np.int64).ravel()
            if index.size and (index.min() < 0 or index.max() >= n_frames):
                raise ValueError(f"frames must be within [0, {n_frames - 1}]")
            hidden[index] = True
    if not hidden.any():
        raise ValueError(
            "no frames to hide: "
            + ("no bad frames were found" if mode == "bad" else "mark at least one frame")
        )
    if hidden.all():
        raise ValueError("every frame would be hidden: the model would have nothing to go on")
    return hidden, None


def _check_arguments(model, recording: Recording, function: str) -> None:
    """A clear TypeError for arguments in the wrong order or of the wrong kind."""
    order = "(recording, model)" if function == "analyse" else "(model, recording)"
    if not isinstance(recording, Recording):
        raise TypeError(
            f"{function} takes {order}; got {type(recording).__name__} for the recording "
            "(make one with napari_neurt.Recording or a reader such as read_recording)"
        )
    if model is not None and not hasattr(model, "tokens_for"):
        raise TypeError(
            f"{function} takes {order}; got {type(model).__name__} for the model "
            "(load one with napari_neurt.load_model)"
        )


def iter_reconstruct(
    model: NeurtModel,
    recording: Recording,
    *,
    hide: str = "kfold",
    frames: np.ndarray | str | None = None,
    n_folds: int = DEFAULT_FOLDS,
    span: int = DEFAULT_SPAN,
    channels: str = "all",
    delta: float | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    adapt_steps: int = 0,
    calibrate: bool = True,
) -> Steps[Reconstruction]:
    """`reconstruct` as a step generator: yields `Progress` per batch (over all folds)."""
    _check_arguments(model, recording, "reconstruct")
    if adapt_steps < 0:
        raise ValueError(f"adapt_steps must be 0 (no adaptation) or more; got {adapt_steps}")
    n, n_frames = recording.traces.shape
    if n == 0:
        raise ValueError("the recording has no neurons to reconstruct")
    hidden, folds = _hidden_frames(hide, n_frames, frames, n_folds, span)
    traces = recording.traces
    given = recording
    if hide != "kfold":  # keep hidden values (and their extremes) out of the tokens
        blanked = traces.copy()
        blanked[:, hidden] = np.nan
        given = replace(recording, traces=blanked, metadata=dict(recording.metadata))
    tokens = model.tokens_for(given, delta)
    low, scale = trace_scale(given.traces)
    yield Progress(0, 1, "tokens")
    # folds a short recording leaves empty hide nothing: no pass for them
    passes = ([folds == f for f in range(n_folds) if (folds == f).any()]
              if folds is not None else [hidden])
    out = np.empty((n, n_frames), dtype=np.float32)
    calibrations = []  # fitted on each pass
    for number, frames_hidden in enumerate(passes):
        mask = np.repeat(frames_hidden[None, :], n, axis=0)
        stage = (
            f"reconstruct, fold {number + 1}/{len(passes)}" if folds is not None else "reconstruct"
        )
        pass_model = model
        if adapt_steps:  # a copy adapted to this recording, never shown this pass's hidden frames
            adapting = model.iter_adapt(
                tokens, adapt_steps, hide=mask, channels=channels, seed=number
            )
            pass_model = yield from relay(
                adapting,
                lambda step, stage=stage: Progress(step.done, step.total, f"adapt ({stage})"),
            )
        calibration = None
        if calibrate and pass_model.config.interpolate:
            fitting = pass_model.iter_calibrate(
                tokens, mask, channels=channels, seed=number, overlap=overlap,
                batch_size=batch_size,
            )
            calibration = yield from relay(
                fitting,
                lambda step, stage=stage: Progress(step.done, step.total, f"calibrate ({stage})"),
            )
            calibrations.append(calibration.to_dict())
        steps = pass_model.iter_reconstruct(
            tokens, mask, channels=channels, overlap=overlap, batch_size=batch_size,
            calibration=calibration,
        )
        result = yield from relay(
            steps,
            lambda step, number=number, stage=stage: Progress(
                number * step.total + step.done, len(passes) * step.total, stage
            ),
        )
        own = result[..., 0]
        if folds is not None:
            out[:, frames_hidden] = own[:, frames_hidden]
        else:
            out[:] = own
    reconstruction = (out * scale[:, None] + low[:, None]).astype(np.float32)
    # a neuron the model was shown no finite value of has no units to predict in
    reconstruction[~np.isfinite(given.traces).any(axis=1)] = np.nan
    if hide == "bad":
        predictability = np.full(n, np.nan)
    else:
        predictability = r_squared(traces, reconstruction, hidden)
    imputed = None
    if hide != "kfold":
        imputed = traces.copy()
        imputed[:, hidden] = reconstruction[:, hidden]
    parameters = {
        "hide": hide,
        "n_folds": n_folds if hide == "kfold" else None,
        "span": span if hide == "kfold" else None,
        "hidden_frames": None if hide == "kfold" else format_frames(hidden),
        "channels": channels,
        "delta_px": float(tokens.delta_px),
        "delta_um": tokens.delta_um,
        "overlap": model.default_overlap if overlap is None else int(overlap),
        "batch_size": batch_size or model.default_batch_size,
        "adapt_steps": int(adapt_steps),
        "calibrations": calibrations or None,
    }
    return Reconstruction(
        mode=hide,
        reconstruction=reconstruction,
        hidden=hidden,
        folds=folds,
        predictability=predictability,
        imputed=imputed,
        tokens=TokenInfo.of(tokens),
        model=model.describe(),
        parameters=parameters,
    )


def reconstruct(
    model: NeurtModel, recording: Recording, *, progress=None, stop=None, **options
) -> Reconstruction:
    """Reconstruct `recording` with frames hidden as `hide` says (see the module docstring).

    Options: ``hide`` ("kfold", "marked", "bad"), ``frames`` (bool (T,) mask, frame indices or
    text like "10-20, 35" for "marked"/"bad"), ``n_folds`` and ``span`` (k-fold), ``channels``,
    ``delta``, ``overlap``, ``batch_size`` (as `NeurtModel.reconstruct`), ``adapt_steps``: first
    adapt a copy of the model to this recording by that many steps of masked reconstruction
    (`NeurtModel.adapt`; 0, the default, does not), once per pass and never showing it the frames
    that pass hides, so a k-fold R^2 stays a prediction of unseen frames.
    ``calibrate`` (default True): for an interpolation-residual model, fit on this recording
    how far to move its linear fill towards PCHIP and towards a kriging fill, and how much of its
    correction to keep (`NeurtModel.calibrate`), once per pass (never scoring the frames that pass hides); each
    pass's `Calibration` is in ``parameters["calibrations"]`` (as dicts). Models without an
    interpolation fill (the published ones) reconstruct as they are.
    """
    return run_steps(iter_reconstruct(model, recording, **options), progress, stop)


def iter_classify(
    model: NeurtModel,
    recording: Recording,
    *,
    delta: float | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tokens: NeighborhoodTokens | None = None,
) -> Steps[Classification]:
    """`classify` as a step generator."""
    _check_arguments(model, recording, "classify")
    if recording.n_neurons == 0:
        raise ValueError("the recording has no neurons to classify")
    if tokens is None:
        tokens = model.tokens_for(recording, delta)
        yield Progress(0, 1, "tokens")
    result = yield from model.iter_classify(tokens, overlap=overlap, batch_size=batch_size)
    parameters = {
        "delta_px": float(tokens.delta_px),
        "delta_um": tokens.delta_um,
        "overlap": model.default_overlap if overlap is None else int(overlap),
        "batch_size": batch_size or model.default_batch_size,
        "recording_probability": float(result.recording_probability),
        "recording_class_probability": result.recording_class_probability.tolist(),
        "recording_rule": result.recording_rule,
    }
    return Classification(result, TokenInfo.of(tokens), model.describe(), parameters)


def classify(
    model: NeurtModel, recording: Recording, *, progress=None, stop=None, **options
) -> Classification:
    """Classify the neurons and the recording with a NEuRT classifier (`NeurtModel.classify`)."""
    return run_steps(iter_classify(model, recording, **options), progress, stop)


def analyse(
    recording: Recording,
    model: NeurtModel | None = None,
    *,
    classifier: NeurtModel | None = None,
    progress=None,
    stop=None,
    **reconstruct_options,
) -> Analysis:
    """Reconstruct with `model` (if given) and classify with `classifier` (default: `model`
    when it has a classifier); returns the `Analysis`. See `reconstruct` for the options; the
    classification shares its neighbourhood (`delta`), `overlap` and `batch_size`."""
    _check_arguments(model, recording, "analyse")
    if classifier is not None:
        _check_arguments(classifier, recording, "analyse")
    analysis = Analysis(recording)
    if model is not None:
        analysis.reconstruction = reconstruct(
            model, recording, progress=progress, stop=stop, **reconstruct_options
        )
    if classifier is None and model is not None and model.config.n_classes >= 2:
        classifier = model
    if classifier is not None:
        shared = {key: reconstruct_options[key] for key in ("delta", "overlap", "batch_size")
                  if reconstruct_options.get(key) is not None}
        analysis.classification = classify(
            classifier, recording, progress=progress, stop=stop, **shared
        )
    return analysis


__all__ = [
    "DEFAULT_FOLDS",
    "DEFAULT_SPAN",
    "HIDE_MODES",
    "Analysis",
    "Classification",
    "FrameQuality",
    "Reconstruction",
    "TokenInfo",
    "analyse",
    "bad_frames_from_traces",
    "classify",
    "event_rate",
    "format_frames",
    "frame_quality",
    "frame_runs",
    "iter_classify",
    "iter_frame_quality",
    "iter_reconstruct",
    "kfold_folds",
    "parse_frames",
    "r_squared",
    "reconstruct",
    "robust_z",
    "trace_scale",
]
