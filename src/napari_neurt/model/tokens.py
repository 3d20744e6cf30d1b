"""Tokens: what NEuRT sees at each time step of each neuron, built as the published code does.

For neuron i at frame t the token has 5 numbers (`FEATURES`):

    own trace          x_i(t)
    near mean, std     over the neurons whose centroid is strictly nearer than `delta` to i's
    far mean, std      over the neurons strictly farther than `delta` (neurons at exactly `delta`
                       are in neither group, as published)

where every trace is first min-max normalised over the whole recording, and the standard
deviation is the sample one (ddof = 1), as pandas computes it in the published preprocessing.

Where we differ from the published code, on purpose and visibly:

- Neurons with fewer than 2 neurons in a group are not dropped. The group is replaced by the 2
  nearest other neurons (near group) or the 2 farthest (far group), and `fallback` flags them so
  that a viewer can show which neurons' context is synthetic. (With only 2 neurons in the
  recording the group is the single other neuron and its std is 0; a lone neuron gets 0 and 0.)
- Non-finite samples are filled by linear interpolation in time from the neuron's finite samples
  (nearest finite value at the ends); a neuron with no finite sample, or a constant one, becomes 0
  after normalisation instead of NaN.

The group statistics are computed for all neurons at once with matrix products in float64 (sums
of squares lose too much to cancellation in float32), sparse when neighbourhoods are small, in
chunks of frames so that memory stays bounded; the result itself is float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import distance

from ..progress import Progress, Steps, StopFlag, run_steps

FEATURES = ("own", "near_mean", "near_std", "far_mean", "far_std")
DEFAULT_DELTA_UM = 50.0
# Without a pixel size the default delta is the median over neurons of the distance to their
# DEFAULT_NEAREST-th nearest neuron: a local neighbourhood of about that many cells at any scale.
DEFAULT_NEAREST = 10
MIN_GROUP = 2  # the published code skips neurons with fewer neurons than this in a group
# Group sums are a matrix product with a 0/1 membership matrix; below this density a sparse
# product is faster than dense BLAS (measured: ~7x at 1.5 %, break-even near 10 %).
SPARSE_BELOW = 0.05
NEAREST_NEURONS = 5  # neighbours whose event rates `activity_statistics` averages
ROW_BLOCK = 256  # neurons at once where float64 temporaries would grow with the recording


@dataclass
class NeighborhoodTokens:
    """Tokens of a recording and how they were made.

    Attributes
    ----------
    tokens
        float32 (N, T, 5), features in the order of `FEATURES`.
    fallback
        bool (N,): a group of this neuron had fewer than 2 neurons and was replaced (module doc).
    n_near, n_far
        int (N,): neurons strictly nearer / farther than `delta`, before any fallback.
    n_filled
        int (N,): non-finite samples that were interpolated.
    delta_px
        The neighbourhood radius in pixels.
    delta_um
        The same in micrometres, when the pixel size is known.
    nearest
        int64 (N, k): each neuron's k = min(`NEAREST_NEURONS`, N - 1) nearest other neurons by
        centroid, nearest first (what `activity_statistics` needs for the neighbours' event
        rates); None where unknown.
    """

    tokens: np.ndarray
    fallback: np.ndarray
    n_near: np.ndarray
    n_far: np.ndarray
    n_filled: np.ndarray
    delta_px: float
    delta_um: float | None
    nearest: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.tokens.shape

    def settings(self) -> dict:
        """How these tokens were built (for results files and checkpoints)."""
        return token_settings(delta_px=self.delta_px, delta_um=self.delta_um)


def token_settings(delta_px: float | None = None, delta_um: float | None = None) -> dict:
    """A JSON-able description of the token construction (stored in checkpoints and results)."""
    return {
        "features": list(FEATURES),
        "normalisation": "min-max per neuron over the whole recording",
        "groups": "centroid distance strictly below / above delta; mean and sample std (ddof=1)",
        "fallback": f"group of under {MIN_GROUP} -> the {MIN_GROUP} nearest / farthest neurons",
        "delta_px": delta_px,
        "delta_um": delta_um,
        "default_delta_um": DEFAULT_DELTA_UM,
    }


def neighborhood_tokens(
    traces: np.ndarray,
    centroids: np.ndarray,
    delta: float | None = None,
    *,
    pixel_size_um: float | None = None,
    chunk_frames: int | None = None,
    stop: StopFlag | Callable[[], bool] | None = None,
) -> NeighborhoodTokens:
    """Build NEuRT tokens (N, T, 5) from traces (N, T) and centroids (N, 2) in pixels.

    Parameters
    ----------
    delta
        Neighbourhood radius: in micrometres when `pixel_size_um` is given, else in pixels.
        Default: `DEFAULT_DELTA_UM` (50 um) when the pixel size is known; otherwise the median over
        neurons of the distance to their 10th nearest neuron (`default_delta_px`).
    pixel_size_um
        Pixel size, so that `delta` is in micrometres.
    chunk_frames
        Frames processed at once (memory bound); chosen from N when None.
    stop
        A `threading.Event` or a callable returning True: checked after each chunk of frames
        (as are the enclosing `napari_neurt.progress.stop_when` blocks); raises
        `napari_neurt.Cancelled` when set.
    """
    return run_steps(
        iter_neighborhood_tokens(
            traces, centroids, delta, pixel_size_um=pixel_size_um, chunk_frames=chunk_frames
        ),
        stop=stop,
    )


def iter_neighborhood_tokens(
    traces: np.ndarray,
    centroids: np.ndarray,
    delta: float | None = None,
    *,
    pixel_size_um: float | None = None,
    chunk_frames: int | None = None,
) -> Steps[NeighborhoodTokens]:
    """`neighborhood_tokens` as a step generator: yields `Progress` after each chunk of frames."""
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise ValueError(f"traces must be (neurons, frames); got shape {traces.shape}")
    if traces.shape[0] == 0:
        raise ValueError("the recording has no neurons: its tokens need at least one trace")
    n, n_frames = traces.shape
    centroids = np.asarray(centroids, dtype=np.float64)
    if centroids.shape != (n, 2):
        raise ValueError(f"centroids must be ({n}, 2) for {n} traces; got {centroids.shape}")
    if not np.isfinite(centroids).all():
        raise ValueError("centroids must be finite")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number; got {pixel_size_um}")

    # distances in the unit delta is given in (squared, as the published code compares them)
    scale = 1.0 if pixel_size_um is None else float(pixel_size_um)
    d2 = _squared_distances(centroids) * scale**2
    if delta is None:
        delta = DEFAULT_DELTA_UM if pixel_size_um is not None else default_delta_px(centroids)
    delta = float(delta)
    if not np.isfinite(delta) or delta <= 0:
        raise ValueError(f"delta must be a positive distance; got {delta}")
    delta_px = delta / scale
    delta_um = delta if pixel_size_um is not None else None

    x, n_filled = normalise_traces(traces)
    tokens = np.empty((n, n_frames, len(FEATURES)), dtype=np.float32)
    tokens[:, :, 0] = x

    self_mask = np.eye(n, dtype=bool)
    near = (d2 < delta**2) & ~self_mask
    far = d2 > delta**2
    n_near, n_far = near.sum(1), far.sum(1)
    tie_rows = np.flatnonzero((~near & ~far & ~self_mask).any(1))  # neurons at exactly delta

    # Fallback groups: the MIN_GROUP nearest / farthest other neurons (ties broken by index).
    k = min(MIN_GROUP, n - 1)
    near_fb = np.flatnonzero(n_near < MIN_GROUP)
    far_fb = np.flatnonzero(n_far < MIN_GROUP)
    near_fb_members = np.argsort(
        np.where(self_mask[near_fb], np.inf, d2[near_fb]), axis=1, kind="stable"
    )[:, :k]
    far_fb_members = np.argsort(
        np.where(self_mask[far_fb], np.inf, -d2[far_fb]), axis=1, kind="stable"
    )[:, :k]
    near_count = np.where(n_near < MIN_GROUP, k, n_near).astype(np.float64)
    far_count = np.where(n_far < MIN_GROUP, k, n_far).astype(np.float64)

    # Only the smaller of the two groups is summed explicitly; the other is "everyone else" minus
    # the neuron itself and the neurons at exactly delta.
    near_is_explicit = near.sum() <= far.sum()
    explicit = near if near_is_explicit else far
    if explicit.mean() < SPARSE_BELOW:
        explicit_matrix = sparse.csr_matrix(explicit, dtype=np.float64)
    else:
        explicit_matrix = explicit.astype(np.float64)
    tie_matrix = (~near & ~far & ~self_mask)[tie_rows].astype(np.float64)
    if chunk_frames is None:
        chunk_frames = default_chunk_frames(n)
    for start in range(0, n_frames, chunk_frames):
        stop = min(start + chunk_frames, n_frames)
        t = stop - start
        chunk = x[:, start:stop].astype(np.float64)
        # Centring each frame on the mean over neurons keeps sum-of-squares variances accurate.
        centre = chunk.mean(axis=0) if n else np.zeros(t)
        y = chunk - centre
        powers = np.concatenate([y, y * y], axis=1)  # (N, 2t): sums and sums of squares at once
        explicit_sums = np.asarray(explicit_matrix @ powers)
        other_sums = powers.sum(axis=0) - powers - explicit_sums
        if len(tie_rows):
            other_sums[tie_rows] -= tie_matrix @ powers
        near_sums, far_sums = (
            (explicit_sums, other_sums) if near_is_explicit else (other_sums, explicit_sums)
        )
        if len(near_fb):
            near_sums[near_fb] = powers[near_fb_members].sum(axis=1)
        if len(far_fb):
            far_sums[far_fb] = powers[far_fb_members].sum(axis=1)
        for column, sums, count in ((1, near_sums, near_count), (3, far_sums, far_count)):
            mean, std = _mean_and_sample_std(sums[:, :t], sums[:, t:], count)
            tokens[:, start:stop, column] = np.where(count[:, None] > 0, mean + centre, 0.0)
            tokens[:, start:stop, column + 1] = std
        yield Progress(stop, n_frames, "tokens")

    return NeighborhoodTokens(
        tokens=tokens,
        fallback=(n_near < MIN_GROUP) | (n_far < MIN_GROUP),
        n_near=n_near.astype(np.int64),
        n_far=n_far.astype(np.int64),
        n_filled=n_filled,
        delta_px=delta_px,
        delta_um=delta_um,
        nearest=_nearest(np.where(self_mask, np.inf, d2), min(NEAREST_NEURONS, n - 1)),
    )


def _nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """int64 (N, k): the columns of each row's k smallest `d2`, smallest first, ties by index
    (as a stable argsort of each row would give, without sorting all N of them)."""
    if k == 0:
        return np.zeros((len(d2), 0), dtype=np.int64)
    chosen = np.argpartition(d2, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(d2, chosen, axis=1)
    # where neurons tie with the k-th distance, argpartition picks among them arbitrarily
    tied = np.flatnonzero((d2 <= values.max(axis=1, keepdims=True)).sum(axis=1) > k)
    chosen[tied] = np.argsort(d2[tied], axis=1, kind="stable")[:, :k]
    values[tied] = np.take_along_axis(d2[tied], chosen[tied], axis=1)
    order = np.lexsort((chosen, values), axis=1)  # by distance, then by index
    return np.take_along_axis(chosen, order, axis=1).astype(np.int64)


def default_chunk_frames(n_neurons: int) -> int:
    """Frames per chunk for `n_neurons`: about 2^19 values (4 MiB in float64) per array, and
    between 64 and 1024 frames, so that each chunk takes well under a second and a cancel is
    heard soon (each frame is computed on its own: the chunking does not change the tokens).
    Chunks that fit in the CPU caches are also faster than larger ones (measured: 500 neurons x
    6,000 frames in 0.5 s with 256-frame chunks, 1.5 s in one chunk)."""
    return int(np.clip((1 << 19) // max(n_neurons, 1), 64, 1024))


def default_delta_px(centroids: np.ndarray, nearest: int = DEFAULT_NEAREST) -> float:
    """Median over neurons of the distance (pixels) to their `nearest`-th nearest other neuron."""
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    n = len(centroids)
    if n < 2:
        return 1.0  # no neighbours to define a scale; any radius gives the same (empty) groups
    d2 = _squared_distances(centroids)
    np.fill_diagonal(d2, np.inf)
    kth = min(nearest, n - 1) - 1
    distance = np.sqrt(np.partition(d2, kth, axis=1)[:, kth])
    # strictly nearer: go a hair past the k-th neighbour so that it is counted
    return float(np.median(distance) * (1 + 1e-9)) or 1.0


def normalise_traces(traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalise each trace over the recording, after filling non-finite samples.

    Returns float32 (N, T) in [0, 1] and the number of filled samples per neuron. Constant traces
    and traces without a finite sample become 0.
    """
    x = np.array(traces, dtype=np.float32)  # a copy: the caller's traces are left alone
    finite = np.isfinite(x)
    n_filled = (~finite).sum(axis=1).astype(np.int64)
    rows = np.flatnonzero(n_filled)
    if len(rows):
        x[rows] = _interpolate_gaps(x[rows], finite[rows])
    with np.errstate(invalid="ignore", over="ignore"):
        low = x.min(axis=1, keepdims=True) if x.shape[1] else np.zeros((len(x), 1), np.float32)
        span = (x.max(axis=1, keepdims=True) if x.shape[1] else low) - low
    constant = ~(span > 0)  # also true for NaN rows (no finite sample)
    # finite values whose range overflows float32 (beyond 3.4e38): those rows in float64
    wide = np.flatnonzero(np.isinf(span[:, 0]))
    if len(wide):
        wide_rows = x[wide].astype(np.float64)
        wide_rows -= wide_rows.min(axis=1, keepdims=True)
        wide_rows /= wide_rows.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        x -= np.where(constant, 0, low)
        x /= np.where(constant, 1, span)
    x[constant[:, 0]] = 0
    if len(wide):
        x[wide] = wide_rows
    return x, n_filled


def span_mask(
    n_neurons: int,
    n_frames: int,
    *,
    ratio: float = 0.15,
    max_span: int = 10,
    p: float = 0.2,
    seed: int | None = 0,
) -> np.ndarray:
    """Random spans of time steps to hide, as in NEuRT pretraining: bool (n_neurons, n_frames).

    Span lengths are geometric (`p`) truncated to `max_span`, start frames uniform, enough spans to
    hide about `ratio` of each neuron's frames (overlapping spans make it a little less). The same
    `seed` gives the same mask.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1); got {ratio}")
    if max_span < 1:
        raise ValueError(f"max_span must be at least 1 frame; got {max_span}")
    rng = np.random.default_rng(seed)
    lengths = np.arange(1, max_span + 1)
    probabilities = p * (1 - p) ** (lengths - 1)
    probabilities /= probabilities.sum()
    n_spans = int(np.ceil(ratio * n_frames / (lengths @ probabilities))) if n_frames else 0
    hide = np.zeros((n_neurons, n_frames + 1), dtype=np.int32)
    if n_spans and n_neurons:
        span = rng.choice(lengths, size=(n_neurons, n_spans), p=probabilities)
        start = rng.integers(0, n_frames, size=(n_neurons, n_spans))
        rows = np.repeat(np.arange(n_neurons), n_spans)
        np.add.at(hide, (rows, start.ravel()), 1)
        np.add.at(hide, (rows, np.minimum(start + span, n_frames).ravel()), -1)
    return np.cumsum(hide[:, :n_frames], axis=1) > 0


def _squared_distances(centroids: np.ndarray) -> np.ndarray:
    return distance.cdist(centroids, centroids, "sqeuclidean")


def _mean_and_sample_std(sums: np.ndarray, squares: np.ndarray, count: np.ndarray):
    count = count[:, None]
    mean = sums / np.maximum(count, 1)
    variance = (squares - sums * mean) / np.maximum(count - 1, 1)
    std = np.sqrt(np.clip(variance, 0, None))
    return mean, np.where(count > 1, std, 0.0)


def _interpolate_gaps(x: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Fill non-finite samples row-wise by linear interpolation between finite neighbours (in
    blocks of rows: the index and weight arrays are int64 and float64, 20 times the input)."""
    filled = np.empty(x.shape, dtype=np.float32)
    for first in range(0, len(x), ROW_BLOCK):
        block = slice(first, first + ROW_BLOCK)
        filled[block] = _interpolate_block(x[block], finite[block])
    return filled


def _interpolate_block(x: np.ndarray, finite: np.ndarray) -> np.ndarray:
    n_frames = x.shape[1]
    frames = np.broadcast_to(np.arange(n_frames), x.shape)
    before = np.maximum.accumulate(np.where(finite, frames, -1), axis=1)
    after = np.minimum.accumulate(np.where(finite, frames, n_frames)[:, ::-1], axis=1)[:, ::-1]
    no_data = ~finite.any(axis=1)
    before_c = np.clip(before, 0, n_frames - 1)
    after_c = np.clip(after, 0, n_frames - 1)
    rows = np.arange(len(x))[:, None]
    left, right = x[rows, before_c], x[rows, after_c]
    left = np.where(before < 0, right, left)  # leading gap: next finite value
    right = np.where(after >= n_frames, left, right)  # trailing gap: previous finite value
    gap = np.maximum(after - before, 1)
    weight = np.where((before >= 0) & (after < n_frames), (frames - before) / gap, 0.0)
    filled = np.where(finite, x, left + weight * (right - left)).astype(np.float32)
    filled[no_data] = np.nan  # left for normalise_traces to turn into 0
    return filled


ACTIVITY_STATISTICS = (
    "log_event_rate",
    "mean_correlation",
    "near_correlation",
    "near_log_event_rate",
    "nearest_log_event_rate",
)


def activity_statistics(tokens: NeighborhoodTokens | np.ndarray) -> np.ndarray:
    """float32 (N, 5) summary of each neuron's activity in its tokens (N, T, F), over all T frames.

    What a recording head needs next to a neuron's embedding, which describes a window of its
    trace but not how often it fires or how it goes with the rest of the population
    (`ACTIVITY_STATISTICS`): the log of its event rate (upward crossings of median + 3 robust
    s.d., 3 x 1.4826 MAD, of its own trace per 1000 frames, plus 1), its mean Pearson
    correlation with every other neuron, its correlation with the mean trace of its near neighbourhood (feature 1), the log
    event rate of that mean trace (high where the neighbours fire often together), and the mean
    log event rate of its `NEAREST_NEURONS` nearest neurons (high in a cluster of active
    neurons). A constant trace has correlation 0. The last needs the neighbours, which
    `NeighborhoodTokens` carry and a bare array does not: from an array, the first 4 columns
    only. The order is fixed: a head that reads k statistics reads the first k.
    """
    nearest = getattr(tokens, "nearest", None)
    tokens = np.asarray(getattr(tokens, "tokens", tokens))
    n, n_frames = tokens.shape[:2]

    def standardised(x):
        x = np.asarray(x, dtype=np.float64)
        centred = x - x.mean(axis=1, keepdims=True)
        scale = np.sqrt((centred**2).mean(axis=1, keepdims=True))
        return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-12)

    # in blocks of neurons: float64 copies of a block, not of the recording
    blocks = [slice(first, first + ROW_BLOCK) for first in range(0, n, ROW_BLOCK)]
    total = np.zeros(n_frames)  # the sum of all standardised traces, row after row
    for block in blocks:
        for row in standardised(tokens[block, :, 0]):
            total += row
    columns = np.empty((5, n))
    for block in blocks:
        own, near = tokens[block, :, 0], tokens[block, :, 1]
        z = standardised(own)
        # mean correlation with the others, without the N x N matrix
        columns[1, block] = ((z @ total) / n_frames - (z * z).mean(axis=1)) / max(n - 1, 1)
        columns[2, block] = (z * standardised(near)).mean(axis=1)
        columns[0, block] = _log_event_rate(np.asarray(own, dtype=np.float64))
        columns[3, block] = _log_event_rate(np.asarray(near, dtype=np.float64))
    log_rate = columns[0]
    columns = list(columns[:4])
    if nearest is not None:  # a lone neuron is its own neighbourhood
        columns.append(log_rate[nearest].mean(axis=1) if nearest.shape[1] else log_rate)
    return np.stack(columns, axis=1).astype(np.float32)


def head_statistics(tokens: NeighborhoodTokens | np.ndarray, count: int) -> np.ndarray:
    """float32 (N, count): the first `count` `activity_statistics`, what a recording head that
    reads `count` of them takes; a clear error where the tokens cannot give them."""
    values = activity_statistics(tokens)
    if values.shape[1] < count:
        raise ValueError(
            "bare tokens carry no neighbours, and this recording head reads each neuron's "
            "nearest neighbours' event rates: pass the recording's NeighborhoodTokens "
            "(model.tokens_for(recording)) or the recording itself"
        )
    return np.ascontiguousarray(values[:, :count])


def _log_event_rate(x: np.ndarray) -> np.ndarray:
    """log(1 + upward crossings of median + 3 x 1.4826 MAD per 1000 frames) of each row of x
    (N, T)."""
    median = np.median(x, axis=1, keepdims=True)
    mad = np.median(np.abs(x - median), axis=1, keepdims=True) * 1.4826
    above = x > median + 3 * np.maximum(mad, 1e-12)
    onsets = np.count_nonzero(above[:, 1:] & ~above[:, :-1], axis=1)
    return np.log1p(onsets * 1000.0 / max(x.shape[1], 1))
