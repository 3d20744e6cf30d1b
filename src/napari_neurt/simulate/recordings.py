"""Simulated recordings: movie, labels and ground truth, put together from the pieces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..recording import Recording
from ._random import log_normal
from .activity import Activity, ensemble_spikes
from .anatomy import cell_footprints, footprints_to_labels, place_cells, vessel_map
from .imaging import (
    MINISCOPE,
    TWO_PHOTON,
    Imaging,
    detect,
    drift_trace,
    population_field,
    smooth_texture,
    vignette,
)
from .kinetics import Indicator, check_frame_rate, get_indicator, spikes_to_dff

# Unseen neurons (out of focus, or without a soma in the plane) whose neurites make the
# neuropil, per imaged cell.
_NEUROPIL_NEURONS_PER_CELL = 4
# Log standard deviation of the single-spike amplitude across neurons.
_AMPLITUDE_SPREAD = 0.15
# Static background texture: grain size (um) and log standard deviation.
_BACKGROUND_GRAIN_UM = 15.0
_BACKGROUND_SPREAD = 0.3
# Expected-photon values computed at once while rendering (bounds memory for large movies).
_CHUNK_VALUES = 2**22


@dataclass(eq=False, repr=False)
class SimulatedRecording:
    """A simulated calcium-imaging movie with its ground truth.

    Attributes
    ----------
    movie
        uint16 (T, H, W) detector values: ``gain * photon counts + read noise + offset``.
    labels
        int32 (H, W) somata: 0 is background, cell ``i`` (row ``i`` below) is ``i + 1``; where
        somata overlap, the brighter footprint wins.
    spikes
        int32 (N, T) spike counts per frame.
    fluorescence
        float32 (N, T) true noise-free fluorescence of each cell: the expected photons per pixel
        per frame of the cell's own light, averaged over its soma, ``F0 * drift(t) * (1 + dff)``
        with ``F0`` its resting brightness (vignetting included) and ``drift`` the bleaching and
        slow drift shared by all light. Neuropil, background, other cells' light and noise are
        excluded. In `movie` units: ``gain * fluorescence`` above the offset.
    dff
        float32 (N, T) true ΔF/F: the indicator's response to `spikes`.
    ensembles
        int32 (N,) ensemble of each cell, -1 for none.
    centroids
        float64 (N, 2) true centre (y, x) of each cell, in pixels.
    frame_rate
        Frames per second.
    pixel_size_um
        Pixel size in micrometres.
    indicator
        Name of the calcium indicator.
    kind
        "two-photon" or "miniscope".
    seed
        Seed the recording was generated from.
    params
        Every setting used (shape, imaging, activity, indicator), as plain values.
    """

    movie: np.ndarray
    labels: np.ndarray
    spikes: np.ndarray
    fluorescence: np.ndarray
    dff: np.ndarray
    ensembles: np.ndarray
    centroids: np.ndarray
    frame_rate: float
    pixel_size_um: float
    indicator: str
    kind: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.spikes.shape[0]

    @property
    def n_frames(self) -> int:
        return self.movie.shape[0]

    def __repr__(self) -> str:
        height, width = self.labels.shape
        return (
            f"SimulatedRecording({self.kind}, {self.indicator}, {self.n_cells} cells, "
            f"{self.n_frames} frames of {height}x{width} px at {self.frame_rate:g} Hz, "
            f"seed={self.seed})"
        )

    def recording(self, traces: np.ndarray | None = None) -> Recording:
        """This simulation as a `Recording`, with the true fluorescence or the given traces.

        Parameters
        ----------
        traces
            (N, T) traces in label order (for example extracted from `movie`); default: the
            true `fluorescence`.
        """
        trace_kind = "true fluorescence" if traces is None else "given"
        traces = self.fluorescence if traces is None else np.asarray(traces)
        if traces.shape != self.fluorescence.shape:
            raise ValueError(
                f"traces must be (cells, frames) = {self.fluorescence.shape}; got {traces.shape}"
            )
        return Recording.from_labels(
            traces,
            self.labels,
            self.frame_rate,
            pixel_size_um=self.pixel_size_um,
            mean_image=self.movie.mean(axis=0, dtype=np.float32),
            source=f"simulated {self.kind} recording ({self.indicator}, seed {self.seed})",
            metadata={
                "simulated": True,
                "trace_kind": trace_kind,
                "kind": self.kind,
                "indicator": self.indicator,
                "seed": self.seed,
                "ensembles": self.ensembles.copy(),
                "params": self.params,
            },
        )


def two_photon(
    *,
    shape: tuple[int, int] = (128, 128),
    n_cells: int = 50,
    n_frames: int = 900,
    frame_rate: float = 30.0,
    indicator: str | Indicator = "GCaMP6f",
    seed: int = 0,
    imaging: Imaging = TWO_PHOTON,
    activity: Activity | None = None,
) -> SimulatedRecording:
    """A simulated two-photon recording of cortical somata (defaults: 30 s, 50 cells, ~1 s to make).

    See `generate` for the parameters; `imaging` defaults to `TWO_PHOTON`.
    """
    return generate(
        imaging,
        shape=shape,
        n_cells=n_cells,
        n_frames=n_frames,
        frame_rate=frame_rate,
        indicator=indicator,
        seed=seed,
        activity=activity,
    )


def miniscope(
    *,
    shape: tuple[int, int] = (128, 128),
    n_cells: int = 60,
    n_frames: int = 600,
    frame_rate: float = 20.0,
    indicator: str | Indicator = "GCaMP6f",
    seed: int = 0,
    imaging: Imaging = MINISCOPE,
    activity: Activity | None = None,
) -> SimulatedRecording:
    """A simulated one-photon miniscope recording: blurred cells on a bright, fluctuating haze.

    See `generate` for the parameters; `imaging` defaults to `MINISCOPE`.
    """
    return generate(
        imaging,
        shape=shape,
        n_cells=n_cells,
        n_frames=n_frames,
        frame_rate=frame_rate,
        indicator=indicator,
        seed=seed,
        activity=activity,
    )


def generate(
    imaging: Imaging,
    *,
    shape: tuple[int, int],
    n_cells: int,
    n_frames: int,
    frame_rate: float,
    indicator: str | Indicator = "GCaMP6f",
    seed: int = 0,
    activity: Activity | None = None,
) -> SimulatedRecording:
    """Simulate a calcium-imaging recording.

    Parameters
    ----------
    imaging
        Microscope, tissue and detector settings, e.g. `TWO_PHOTON` or `MINISCOPE`.
    shape
        (height, width) of the movie in pixels.
    n_cells
        Number of imaged cells.
    n_frames, frame_rate
        Length of the movie and frames per second.
    indicator
        Calcium indicator: a name in `INDICATORS` or an `Indicator`.
    seed
        Seed of all randomness: the same arguments and seed give identical arrays. Anatomy,
        activity, tissue and detector noise use independent streams, so that changing the noise
        settings, for instance, keeps the same cells and spikes.
    activity
        Firing statistics (default `Activity()`).
    """
    indicator = get_indicator(indicator)
    activity = Activity() if activity is None else activity
    shape = (int(shape[0]), int(shape[1]))
    if n_cells < 1 or n_frames < 1 or min(shape) < 1:
        raise ValueError(
            f"need at least one cell, frame and pixel; got {n_cells}, {n_frames}, {shape}"
        )
    check_frame_rate(frame_rate)
    um = imaging.pixel_size_um
    anatomy_seed, activity_seed, tissue_seed, noise_seed = np.random.SeedSequence(seed).spawn(4)
    anatomy_rng = np.random.default_rng(anatomy_seed)
    activity_rng = np.random.default_rng(activity_seed)
    tissue_rng = np.random.default_rng(tissue_seed)

    vessels = np.zeros(shape)
    for spacing_um, width_um in imaging.vessels_um:
        network = vessel_map(shape, spacing=spacing_um / um, width=width_um / um, rng=tissue_rng)
        vessels = np.maximum(vessels, network)
    collection = vignette(shape, imaging.vignetting)
    centroids, footprints, somata, resting = _cells(
        imaging, shape, n_cells, vessels, collection, anatomy_rng
    )
    labels = footprints_to_labels(footprints.multiply(resting[:, None]), somata, shape)

    # Spikes of the imaged cells and of the unseen neurons whose neurites make the neuropil.
    margin = 2 * imaging.neuropil_sigma_um / um
    extended = (shape[0] + 2 * margin) * (shape[1] + 2 * margin) / (shape[0] * shape[1])
    n_unseen = round(_NEUROPIL_NEURONS_PER_CELL * n_cells * extended)
    unseen = anatomy_rng.uniform(-margin, np.add(shape, margin), size=(n_unseen, 2))
    positions = np.concatenate([centroids, unseen])
    spikes, ensembles = ensemble_spikes(
        positions * um,
        n_frames,
        frame_rate,
        rng=activity_rng,
        activity=activity,
        extent_um=(shape[0] * um, shape[1] * um),
    )
    amplitude = log_normal(indicator.dff_per_spike, _AMPLITUDE_SPREAD, len(positions), activity_rng)
    dff = spikes_to_dff(
        spikes, indicator, frame_rate, dff_per_spike=amplitude, steady_start=True
    )
    drift = drift_trace(
        n_frames,
        frame_rate,
        rng=activity_rng,
        bleach_time_s=imaging.bleach_time_s,
        amplitude=imaging.drift,
        timescale_s=imaging.drift_timescale_s,
    ).astype(np.float32)
    fluorescence = resting[:, None].astype(np.float32) * drift * (1 + dff[:n_cells])

    # Light that is not the cells': neuropil (resting and modulated by the population's ΔF/F)
    # and static background, both dark on vessels.
    tissue = ndimage.gaussian_filter(
        1 - imaging.vessel_contrast * vessels, imaging.psf_sigma_um / um
    )
    tissue *= imaging.photons_per_pixel * collection
    soma_cover = np.minimum(somata.sum(axis=0).reshape(shape), 1)
    neuropil_rest = imaging.neuropil_level * tissue * (1 - imaging.neuropil_occlusion * soma_cover)
    texture = smooth_texture(shape, _BACKGROUND_GRAIN_UM / um, _BACKGROUND_SPREAD, rng=tissue_rng)
    background = imaging.background_level * tissue * texture
    neuropil = population_field(positions, dff, shape, imaging.neuropil_sigma_um / um)

    movie = _render(
        fluorescence,
        footprints,
        neuropil=neuropil,
        static=(neuropil_rest + background).astype(np.float32),
        neuropil_swing=(imaging.neuropil_gain * neuropil_rest).astype(np.float32),
        drift=drift,
        imaging=imaging,
        noise_seed=noise_seed,
    )
    params = {
        "shape": shape,
        "n_cells": n_cells,
        "n_frames": n_frames,
        "frame_rate": frame_rate,
        "seed": seed,
        "indicator": asdict(indicator),
        "imaging": asdict(imaging),
        "activity": asdict(activity),
    }
    return SimulatedRecording(
        movie=movie,
        labels=labels,
        spikes=spikes[:n_cells],
        fluorescence=fluorescence,
        dff=dff[:n_cells],
        ensembles=ensembles[:n_cells],
        centroids=centroids,
        frame_rate=float(frame_rate),
        pixel_size_um=float(um),
        indicator=indicator.name,
        kind=imaging.kind,
        seed=seed,
        params=params,
    )


def _cells(imaging, shape, n_cells, vessels, collection, rng):
    """Centres, footprints, somata and resting brightness (photons per pixel) of the cells."""
    um = imaging.pixel_size_um
    smallest, largest = np.asarray(imaging.cell_diameter_um) / um
    diameters = rng.uniform(smallest, largest, n_cells)
    centroids = place_cells(
        shape,
        diameters / 2,
        rng=rng,
        overlap=imaging.cell_overlap,
        margin=smallest / 4,
        forbidden=vessels > 0.3,
    )
    footprints, somata = cell_footprints(
        centroids,
        shape,
        diameters,
        rng=rng,
        nucleus_brightness=imaging.nucleus_brightness,
        blur=imaging.psf_sigma_um / um,
    )
    y, x = np.round(centroids).astype(np.int64).T
    resting = (
        log_normal(imaging.photons_per_pixel, imaging.brightness_spread, n_cells, rng)
        * collection[y, x]
    )
    return centroids, footprints, somata, resting


def _render(
    fluorescence, footprints, *, neuropil, static, neuropil_swing, drift, imaging, noise_seed
):
    """The uint16 movie, a chunk of frames at a time: expected photons, then detector noise.

    Expected photons are ``drift * (static + neuropil_swing * neuropil ΔF/F) + cells``; the
    cells' `fluorescence` already holds the drift.
    """
    n_frames = fluorescence.shape[1]
    _, height, width = neuropil.shape
    chunk = max(1, _CHUNK_VALUES // (height * width))
    starts = range(0, n_frames, chunk)
    # One noise stream per chunk; chunks depend on the frame size only, so results are reproducible.
    noise_rngs = [np.random.default_rng(child) for child in noise_seed.spawn(len(starts))]
    cells_by_pixel = footprints.T.tocsr()  # (H*W, N)
    static = static.reshape(height, width)
    neuropil_swing = neuropil_swing.reshape(height, width)
    movie = np.empty((n_frames, height, width), dtype=np.uint16)
    for start, rng in zip(starts, noise_rngs, strict=True):
        stop = min(start + chunk, n_frames)
        photons = neuropil.frames(start, stop)
        photons *= neuropil_swing
        photons += static
        photons *= drift[start:stop, None, None]
        photons += (cells_by_pixel @ fluorescence[:, start:stop]).T.reshape(-1, height, width)
        movie[start:stop] = detect(
            photons,
            rng=rng,
            gain=imaging.gain,
            read_noise=imaging.read_noise,
            offset=imaging.offset,
        )
    return movie
