"""Per-neuron traces from a movie and ROI labels, in one streaming pass.

The movie is read once, in chunks of frames, so memory stays bounded by the chunk size whatever
the movie's length: a TIFF memmap larger than RAM streams through. Each chunk is reduced for all
neurons at once (one gather of the ROI pixels, segmented sums; see `PixelGroups`): no Python
loop over neurons.

Neuropil follows suite2p's convention: each ROI gets an annulus of pixels around it that belong
to no ROI (nor to a small gap around any ROI), grown until it holds enough pixels, and the
corrected trace is ``F - coefficient * F_neuropil`` with a coefficient of 0.7 by default.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .progress import Progress, StopFlag, Steps, run_steps
from .recording import label_ids

#: Bytes of movie read per chunk when no chunk size is given.
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass
class Extraction:
    """What one extraction pass measured.

    `raw` is the mean fluorescence inside each ROI, `neuropil` the mean of its annulus (None when
    neuropil was not asked for); rows follow `neuron_ids` (ascending label values).
    """

    neuron_ids: np.ndarray
    raw: np.ndarray
    neuropil: np.ndarray | None
    neuropil_coefficient: float

    @property
    def traces(self) -> np.ndarray:
        """Neuropil-corrected traces when neuropil was measured, else the raw ROI means."""
        if self.neuropil is None:
            return self.raw
        return self.raw - np.float32(self.neuropil_coefficient) * self.neuropil


# -- input checks ----------------------------------------------------------------------------------
def check_labels(labels: np.ndarray, frame_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return `labels` as a non-negative integer (H, W) array, or raise a ValueError that says why not."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (height, width) image; got shape {labels.shape}")
    if frame_shape is not None and labels.shape != tuple(frame_shape):
        raise ValueError(
            f"labels shape {labels.shape} differs from the movie's frame shape {tuple(frame_shape)}; "
            "the ROI image must be drawn on the same field of view (crop or resample one of them)"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    elif np.issubdtype(labels.dtype, np.floating):
        finite = np.isfinite(labels)
        if not finite.all() or not np.array_equal(labels, np.round(labels)):
            raise ValueError(
                "labels are floating point with non-integer or non-finite values; a label image holds "
                "one integer id per ROI (0 = background): convert it with np.round/astype(int) "
                "only if that is what it means"
            )
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer image; got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels contain negative values; ids must be >= 0 (0 = background)")
    if not labels.any():
        raise ValueError("labels are empty (all background): draw or load at least one ROI")
    return labels


def check_movie(movie) -> tuple[int, int, int]:
    """Shape (T, H, W) of a movie-like array, or a ValueError that says what is wrong."""
    shape = tuple(getattr(movie, "shape", ()))
    if len(shape) == 2:
        raise ValueError(
            f"got a single 2-D frame of shape {shape} where a movie is expected; "
            "a movie is (frames, height, width): for one frame use frame[None]"
        )
    if len(shape) != 3:
        raise ValueError(f"a movie must be 3-D (frames, height, width); got shape {shape or type(movie)}")
    if 0 in shape:
        raise ValueError(f"the movie is empty: shape {shape}")
    return shape  # type: ignore[return-value]


# -- ROI and neuropil weights ----------------------------------------------------------------------
def neuropil_masks(
    labels: np.ndarray,
    *,
    inner_radius: float = 2.0,
    min_pixels: int = 350,
    max_radius: float = 50.0,
) -> list[np.ndarray]:
    """Flat pixel indices of the neuropil annulus of each ROI (ascending label order).

    A pixel qualifies when it lies farther than `inner_radius` from every ROI. Each ROI takes the
    qualifying pixels nearest to it, out to the distance that gives `min_pixels` of them (ties at
    that distance included), but never beyond `max_radius` pixels from the ROI. This mirrors
    suite2p's defaults (gap of 2 px, at least 350 pixels).
    """
    labels = check_labels(labels)
    height, width = labels.shape
    near_any_roi = ndimage.distance_transform_edt(labels == 0) <= inner_radius
    ids = label_ids(labels)
    # find_objects keeps a slot for every id up to the largest: number the ROIs 1..N first
    dense = np.where(labels != 0, np.searchsorted(ids, labels) + 1, 0)
    boxes = ndimage.find_objects(dense)
    reach = int(np.ceil(max_radius))
    masks = []
    for position, roi_id in enumerate(ids):  # once per ROI at set-up, never per frame
        rows, cols = boxes[position]
        y0, y1 = max(rows.start - reach, 0), min(rows.stop + reach, height)
        x0, x1 = max(cols.start - reach, 0), min(cols.stop + reach, width)
        local = labels[y0:y1, x0:x1] == roi_id
        distance = ndimage.distance_transform_edt(~local)
        allowed = ~near_any_roi[y0:y1, x0:x1] & (distance <= max_radius)
        candidates = distance[allowed]
        if candidates.size > min_pixels:
            cutoff = np.partition(candidates, min_pixels - 1)[min_pixels - 1]
            allowed &= distance <= cutoff
        yy, xx = np.nonzero(allowed)
        masks.append((yy + y0) * width + (xx + x0))
    return masks


@dataclass
class PixelGroups:
    """Groups of pixels (ROIs, neuropil annuli) to average in every frame, laid out for one gather
    and one segmented sum (`np.add.reduceat`), which beats a sparse (group x pixel) matrix
    product here. Groups may overlap (annuli do)."""

    pixels: np.ndarray  # flat frame indices, group after group
    starts: np.ndarray  # where each group begins in `pixels`
    sizes: np.ndarray  # pixels per group, float32

    @classmethod
    def from_groups(cls, groups: list[np.ndarray]) -> PixelGroups:
        sizes = np.array([g.size for g in groups])
        if (sizes == 0).any():
            raise ValueError("every group needs at least one pixel")
        return cls(
            pixels=np.concatenate(groups).astype(np.intp),
            starts=np.r_[0, np.cumsum(sizes)[:-1]].astype(np.intp),
            sizes=sizes.astype(np.float32),
        )

    def means(self, frames: np.ndarray) -> np.ndarray:
        """(frames, pixels of a frame) -> float32 (frames, groups) of group means."""
        values = np.take(frames, self.pixels, axis=1).astype(np.float32, copy=False)
        return np.add.reduceat(values, self.starts, axis=1) / self.sizes


def pixel_groups(labels: np.ndarray, *, neuropil: bool = False, **neuropil_options):
    """The pixel groups to average: each ROI in ascending label order, then (with `neuropil`) each
    ROI's annulus in the same order. Returns ``(neuron_ids, groups)``, groups as flat indices."""
    labels = check_labels(labels)
    flat = labels.ravel()
    ids = label_ids(labels)
    in_roi = np.flatnonzero(flat)
    by_label = in_roi[np.argsort(flat[in_roi], kind="stable")]
    groups = np.split(by_label, np.cumsum(np.bincount(np.searchsorted(ids, flat[in_roi])))[:-1])
    if neuropil:
        annuli = neuropil_masks(labels, **neuropil_options)
        empty = [int(i) for i, a in zip(ids, annuli) if a.size == 0]
        if empty:
            raise ValueError(
                f"ROIs {empty[:10]} have no neuropil pixels within max_radius: "
                "raise max_radius or extract without neuropil"
            )
        groups += annuli
    return ids, groups


# -- extraction ------------------------------------------------------------------------------------
def iter_extract(
    movie,
    labels: np.ndarray,
    *,
    neuropil: bool = False,
    neuropil_coefficient: float = 0.7,
    chunk_size: int | None = None,
    workers: int | None = None,
    **neuropil_options,
) -> Steps[Extraction]:
    """Step generator behind `extract_traces`: yields `Progress` after each chunk of frames.

    See `napari_neurt.progress` for how to drive it (``run_steps``, or ``yield from`` in a worker).
    """
    n_frames, height, width = check_movie(movie)
    ids, groups = pixel_groups(check_labels(labels, (height, width)), neuropil=neuropil, **neuropil_options)
    plan = PixelGroups.from_groups(groups)
    if chunk_size is None:
        frame_bytes = height * width * np.dtype(getattr(movie, "dtype", np.float32)).itemsize
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // frame_bytes)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 frame; got {chunk_size}")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(1, workers)  # 0 or less: the chunk in one thread
    out = np.empty((len(groups), n_frames), dtype=np.float32)
    # numpy's gather and sums release the GIL, so the frames of a chunk are split between threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n_frames, chunk_size):
            stop = min(start + chunk_size, n_frames)
            block = movie[start:stop]
            frames = np.asarray(block).reshape(stop - start, height * width)
            parts = np.array_split(np.arange(stop - start), min(workers, stop - start))
            means = pool.map(lambda rows: plan.means(frames[rows[0] : rows[-1] + 1]), parts)
            out[:, start:stop] = np.concatenate(list(means)).T
            release_pages(block)
            yield Progress(stop, n_frames, "extracting traces")
    n = len(ids)
    return Extraction(
        neuron_ids=ids,
        raw=out[:n] if neuropil else out,
        neuropil=out[n:] if neuropil else None,
        neuropil_coefficient=neuropil_coefficient,
    )


def extract_traces(
    movie,
    labels: np.ndarray,
    *,
    neuropil: bool = False,
    neuropil_coefficient: float = 0.7,
    chunk_size: int | None = None,
    workers: int | None = None,
    progress: Callable[[Progress], object] | None = None,
    stop: StopFlag | Callable[[], bool] | None = None,
    **neuropil_options,
) -> np.ndarray:
    """Mean fluorescence of each ROI in every frame: float32 (N, T), rows in ascending label order.

    Parameters
    ----------
    movie
        (T, H, W) array-like that can be sliced along time: numpy, a TIFF memmap, zarr, dask.
    labels
        (H, W) integer ROI image; 0 is background, each other value one neuron.
    neuropil
        Subtract ``neuropil_coefficient`` x the mean of an annulus around each ROI (see
        `neuropil_masks` for the annulus and its options `inner_radius`, `min_pixels`, `max_radius`).
    chunk_size
        Frames read at once (default: about 64 MiB of movie). Memory is bounded by it.
    workers
        Threads that share each chunk (default: up to 4, one per CPU).
    progress, stop
        Called with a `Progress` after each chunk / checked after each chunk: a set stop flag
        raises `napari_neurt.Cancelled`.
    """
    steps = iter_extract(
        movie,
        labels,
        neuropil=neuropil,
        neuropil_coefficient=neuropil_coefficient,
        chunk_size=chunk_size,
        workers=workers,
        **neuropil_options,
    )
    return run_steps(steps, progress, stop).traces


def release_pages(block) -> None:
    """Unmap the pages of a chunk read through a read-only or shared numpy memmap.

    A mapping keeps every page it touched resident; dropping them after each chunk keeps the file
    in the page cache but out of this process's memory, so a movie larger than RAM streams through
    with memory bounded by the chunk size.
    """
    mapping = getattr(block, "_mmap", None)
    if mapping is None or getattr(block, "mode", "c") == "c" or not hasattr(mapping, "madvise"):
        return  # not a memmap, or a private copy-on-write one whose changes must not be dropped
    base = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    start = block.ctypes.data - base
    aligned = start - start % mmap.PAGESIZE
    mapping.madvise(mmap.MADV_DONTNEED, aligned, start + block.nbytes - aligned)


# -- dF/F ------------------------------------------------------------------------------------------
def delta_f_over_f(
    traces: np.ndarray,
    frame_rate: float,
    *,
    window_s: float = 60.0,
    percentile: float = 8.0,
) -> np.ndarray:
    """dF/F = (F - F0) / F0 with F0 a running percentile of F.

    F0 at frame t is the `percentile`-th percentile of F over the `window_s` seconds centred on t
    (edges use the nearest full window), which tracks slow drift and bleaching while ignoring
    transients that last much less than the window. The percentile is computed exactly every
    ``window / 32`` frames and linearly interpolated in between (see `running_percentile`). The defaults (8th percentile over 60 s) are
    common choices for GCaMP data. F0 is floored at 1 % of the trace's absolute mean, so that
    dF/F stays finite where it is near zero or negative (for example after a large neuropil
    subtraction).
    Non-finite samples (a NaN frame of the movie) are left out of the baseline and the mean, so
    they stay non-finite in dF/F without spoiling the frames around them.
    """
    traces = np.asarray(traces, dtype=np.float32)
    if traces.ndim != 2:
        raise ValueError(f"traces must be (neurons, frames); got shape {traces.shape}")
    if not 0 < frame_rate < np.inf:
        raise ValueError(f"frame_rate must be positive (Hz); got {frame_rate}")
    if not 0 < window_s < np.inf:
        raise ValueError(f"window_s must be a positive number of seconds; got {window_s}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100]; got {percentile}")
    baseline = running_percentile(traces, int(round(window_s * frame_rate)), percentile)
    magnitude = np.abs(traces).mean(axis=1, keepdims=True)
    if not np.isfinite(magnitude).all():  # a NaN frame: the mean of the finite samples
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # none finite: NaN, as the baseline
            magnitude = np.abs(traces).mean(axis=1, keepdims=True, where=np.isfinite(traces))
    floor = 0.01 * magnitude + np.finfo(np.float32).tiny
    baseline = np.maximum(baseline, floor)
    return ((traces - baseline) / baseline).astype(np.float32)


def running_percentile(traces: np.ndarray, window: int, percentile: float, *, points_per_window: int = 32):
    """Running `percentile` of each row over a centred `window` of frames.

    The exact percentile is evaluated every ``window // points_per_window`` frames and interpolated
    linearly in between: a baseline varies on the scale of the window, so this keeps it faithful at
    a small fraction of the cost of a full percentile filter. Near the edges the window is clipped
    to the recording (it is shifted inwards, keeping its length). Non-finite samples are left out
    of the windows that hold them; a row with no finite sample gives NaN.
    """
    traces = np.asarray(traces, dtype=np.float32)
    if not np.isfinite(traces).all():  # inf as NaN, which every window holding it turns to NaN
        traces = np.where(np.isfinite(traces), traces, np.float32(np.nan))
    n_rows, n_frames = traces.shape
    window = int(np.clip(window, 1, n_frames))
    stride = max(1, window // points_per_window)
    centres = np.unique(np.r_[np.arange(0, n_frames, stride), n_frames - 1])
    starts = np.clip(centres - window // 2, 0, n_frames - window)
    windows = np.lib.stride_tricks.sliding_window_view(traces, window, axis=1)  # a view, no copy
    out = np.empty((n_rows, n_frames), dtype=np.float32)
    rows_per_block = max(1, 2**25 // (len(centres) * window))  # bound the copy to ~128 MiB
    for r0 in range(0, n_rows, rows_per_block):
        block = np.percentile(windows[r0 : r0 + rows_per_block, starts], percentile, axis=-1)
        spoilt = np.isnan(block)  # windows holding a non-finite sample: their finite ones only
        if spoilt.any():  # (nanpercentile is much slower: only for these windows)
            rows, columns = np.nonzero(spoilt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a window of NaN only: NaN
                block[spoilt] = np.nanpercentile(
                    windows[r0 + rows, starts[columns]], percentile, axis=-1
                )
        for i, row in enumerate(block):
            known = np.isfinite(row)  # windows that held some finite sample
            if not known.any():
                out[r0 + i] = np.nan
                continue
            out[r0 + i] = np.interp(np.arange(n_frames), centres[known], row[known])
    return out
