"""Extracted fluorescence traces of large populations, simulated without rendering a movie.

Training needs thousands of neurons in many recordings; a movie costs pixels that the model never
sees. `population` goes from spikes straight to the traces a good extraction pipeline would give
(suite2p, CaImAn): each neuron's light with photon and read noise, what neuropil subtraction left
behind, slow drift and bleaching, and the occasional dropped frame. The model behind the numbers
is the movie simulator's (`TWO_PHOTON`, `MINISCOPE`), summed over a soma.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from ..recording import Recording
from ._random import log_normal
from .activity import Activity, ensemble_spikes
from .anatomy import place_cells
from .imaging import drift_trace
from .kinetics import Indicator, get_indicator, spikes_to_dff
from .recordings import _AMPLITUDE_SPREAD

# Somata are placed at least one diameter apart (centre to centre).
_SOMA_DIAMETER_UM = 12.0
# Kinds of dropped frame `population` knows (see `TraceImaging.dropped_frame_kinds`).
DROPPED_FRAME_KINDS = ("repeat", "dark", "nan")
# `drift_trace` is sampled at this many points per drift time scale, then interpolated.
_DRIFT_SAMPLES_PER_TIMESCALE = 10.0
# Brightness left in a "dark" frame: uniform between these fractions.
_DARK_FRAME_LIGHT = (0.1, 0.7)


@dataclass(frozen=True)
class TraceImaging:
    """Imaging settings as they show in extracted traces.

    The trace of neuron ``i``, in photons per frame collected from its soma, is ::

        F_i(t) = d(t) * F0_i * (1 + dff_i(t) + c_i * n_i(t)) + noise

    with ``d`` the drift shared by all light (`drift_trace`: bleaching times a slow wander),
    ``F0_i`` the resting brightness, ``dff_i`` the true ΔF/F, ``n_i`` the local neuropil ΔF/F (the
    Gaussian-weighted mean ΔF/F of the other neurons within `neuropil_sigma_um`; they stand in for
    the unseen neurites) and ``c_i`` the neuropil left after subtraction, or removed in excess when
    negative. The noise is Gaussian with the variance of the photons collected, soma and
    background alike (subtracting the background removes its mean, not its shot noise), plus the
    detector's read noise. Then some frames are dropped (`dropped_frame_kinds`).

    Attributes
    ----------
    kind
        "two-photon" or "miniscope" (one-photon).
    pixel_size_um
        Pixel size in micrometres (centroids are given in pixels).
    cells_per_mm2
        Density of the detected somata in the imaging plane; sets the field of view when it is
        not given.
    photons
        Median resting light of a soma: photons per frame summed over its region of interest.
    brightness_spread
        Standard deviation of the natural log of the resting light across neurons (truncated at
        two standard deviations).
    background
        Light of neuropil and background in a soma's region, relative to `photons`: adds shot
        noise only, since extraction removes its mean.
    neuropil_residue
        Mean of ``c_i``: the fraction of the local neuropil ΔF/F left in each trace.
    neuropil_residue_spread
        Standard deviation of ``c_i`` across neurons (the true contamination varies from cell to
        cell, the subtracted fraction does not).
    neuropil_sigma_um
        Gaussian radius over which the neuropil averages the population's ΔF/F.
    read_noise
        Standard deviation of the detector noise summed over a soma's region, in photons.
    bleach_time_s, drift, drift_timescale_s
        Bleaching time constant, and the standard deviation and time scale of the slow drift
        (see `drift_trace`).
    dropped_frames_per_1000
        Expected number of dropped frames per 1000 frames (Poisson).
    dropped_frame_kinds
        What a dropped frame looks like, drawn with equal probability for each dropped frame:
        "repeat", the previous frame again (acquisition software filling a frame it missed);
        "dark", every trace at 10 to 70 % of its light in that frame (a laser, shutter or
        detector-protection dip, or a frame cut short); "nan", not a number (a frame known to
        be missing, as after aligning frames to their time stamps). The default leaves out
        "nan", which most analysis code does not expect.
    """

    kind: str
    pixel_size_um: float
    cells_per_mm2: float
    photons: float
    brightness_spread: float
    background: float
    neuropil_residue: float
    neuropil_residue_spread: float
    neuropil_sigma_um: float
    read_noise: float
    bleach_time_s: float
    drift: float
    drift_timescale_s: float
    dropped_frames_per_1000: float
    dropped_frame_kinds: tuple[str, ...] = ("repeat", "dark")

    def __post_init__(self) -> None:
        unknown = set(self.dropped_frame_kinds) - set(DROPPED_FRAME_KINDS)
        if unknown or not self.dropped_frame_kinds:
            raise ValueError(
                f"dropped_frame_kinds must be some of {DROPPED_FRAME_KINDS}; "
                f"got {self.dropped_frame_kinds}"
            )
        if not (self.photons > 0 and self.pixel_size_um > 0 and self.cells_per_mm2 > 0):
            raise ValueError("photons, pixel_size_um and cells_per_mm2 must be positive")


TWO_PHOTON_TRACES = TraceImaging(
    kind="two-photon",
    pixel_size_um=1.2,
    cells_per_mm2=2000.0,
    photons=3400.0,
    brightness_spread=0.2,
    background=0.6,
    neuropil_residue=0.1,
    neuropil_residue_spread=0.1,
    neuropil_sigma_um=25.0,
    read_noise=10.0,
    bleach_time_s=3000.0,
    drift=0.02,
    drift_timescale_s=20.0,
    dropped_frames_per_1000=0.5,
)
"""Two-photon traces matching the `TWO_PHOTON` movie: 40 photons per pixel on a soma of about 85
pixels; neuropil (0.6 x 0.7 unoccluded) and background (0.15) add 0.6 of its light. The mean of
a resting soma then has about 2 % noise per frame, and one GCaMP6f spike (0.19) is about 9 times
that. Suite2p's fixed 0.7 neuropil coefficient leaves 0.1 +- 0.1 of the local neuropil ΔF/F;
about one frame in 2000 is dropped."""

MINISCOPE_TRACES = TraceImaging(
    kind="miniscope",
    pixel_size_um=2.5,
    cells_per_mm2=800.0,
    photons=4000.0,
    brightness_spread=0.3,
    background=4.0,
    neuropil_residue=0.3,
    neuropil_residue_spread=0.15,
    neuropil_sigma_um=50.0,
    read_noise=20.0,
    bleach_time_s=1500.0,
    drift=0.03,
    drift_timescale_s=20.0,
    dropped_frames_per_1000=2.0,
)
"""One-photon miniscope traces matching the `MINISCOPE` movie: 150 photons per pixel on a soma of
about 28 pixels, under out-of-focus light four times as bright, which is removed (CNMF-E) but
leaves its shot noise (about 3.6 % per frame) and 0.3 +- 0.15 of the local neuropil ΔF/F;
fewer cells are resolved, bleaching is faster and frames are dropped more often."""


def population(
    *,
    n_neurons: int = 500,
    n_frames: int = 3000,
    frame_rate: float = 30.0,
    indicator: str | Indicator = "GCaMP6f",
    seed: int = 0,
    imaging: TraceImaging = TWO_PHOTON_TRACES,
    activity: Activity | None = None,
    field_um: float | tuple[float, float] | None = None,
    positions_um: np.ndarray | None = None,
    rate_scale: float | np.ndarray = 1.0,
) -> Recording:
    """Extracted fluorescence traces of a simulated population, with the truth in `metadata`.

    Spikes come from `ensemble_spikes` (spatially clustered ensembles), ΔF/F from
    `spikes_to_dff`, and the traces from the model in `TraceImaging`. Vectorised over neurons and
    frames: 500 neurons x 6000 frames take about 0.3 s.

    Parameters
    ----------
    n_neurons
        Number of neurons (ignored when `positions_um` is given).
    n_frames, frame_rate
        Length of the recording and frames per second.
    indicator
        Calcium indicator: a name in `INDICATORS` or an `Indicator`.
    seed
        Seed of all randomness; anatomy, spikes, noise and dropped frames use independent streams.
    imaging
        Photon budget, contamination, drift and dropped frames, e.g. `TWO_PHOTON_TRACES` or
        `MINISCOPE_TRACES`.
    activity
        Firing statistics (default `Activity()`).
    field_um
        (height, width) of the field of view, or the side of a square one; default: the square
        that holds `n_neurons` at ``imaging.cells_per_mm2``.
    positions_um
        Optional (N, 2) soma positions (y, x) in micrometres inside the field, instead of
        random ones (see `place_neurons`); the field then defaults to their bounding box.
    rate_scale
        Factor on each neuron's private event rate, a scalar or (N,) (see `ensemble_spikes`).

    Returns
    -------
    Recording
        float32 traces (N, T) in photons per frame, centroids in pixels, `pixel_size_um`, no
        labels. `metadata` holds the truth: "spikes" (int32 (N, T) counts per frame), "dff"
        (float32 (N, T) true ΔF/F), "ensembles" (int32 (N,), -1 for none), "drift" (float32
        (T,)), "snr" (float32 (N,): peak ΔF/F of one spike over the noise of the resting trace,
        per frame), "dropped_frames" (int64 indices, ascending) and "dropped_frame_kinds" (their
        kinds), besides "kind", "indicator", "seed" and every setting in "params".
        `Recording.select` picks the per-neuron ones ("spikes", "dff", "ensembles", "snr") with
        the neurons and keeps the per-frame ones whole.
    """
    indicator = get_indicator(indicator)
    activity = Activity() if activity is None else activity
    anatomy_seed, activity_seed, noise_seed, dropped_seed = np.random.SeedSequence(seed).spawn(4)
    if positions_um is None and not n_neurons >= 1:  # a negative number failed in numpy
        raise ValueError(f"need a neuron; got n_neurons={n_neurons}")
    if positions_um is None:
        field_um = _field_um(field_um, n_neurons, imaging.cells_per_mm2)
        positions_um = place_neurons(
            n_neurons, field_um, rng=np.random.default_rng(anatomy_seed), imaging=imaging
        )
    else:
        positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
        if field_um is None:
            field_um = tuple(positions_um.max(axis=0, initial=0.0))
        field_um = _field_um(field_um, len(positions_um), imaging.cells_per_mm2)
    n_neurons = len(positions_um)
    if n_neurons < 1 or n_frames < 1 or not frame_rate > 0:
        raise ValueError(
            f"need a neuron, a frame and a positive frame rate; got {n_neurons}, {n_frames}, "
            f"{frame_rate}"
        )

    rng = np.random.default_rng(activity_seed)
    spikes, ensembles = ensemble_spikes(
        positions_um,
        n_frames,
        frame_rate,
        rng=rng,
        activity=activity,
        extent_um=field_um,
        rate_scale=rate_scale,
    )
    amplitude = log_normal(indicator.dff_per_spike, _AMPLITUDE_SPREAD, n_neurons, rng)
    dff = spikes_to_dff(
        spikes, indicator, frame_rate, dff_per_spike=amplitude, steady_start=True
    )
    drift = _drift(n_frames, frame_rate, imaging, rng)

    rng = np.random.default_rng(noise_seed)
    resting = log_normal(imaging.photons, imaging.brightness_spread, n_neurons, rng)
    residue = imaging.neuropil_residue + imaging.neuropil_residue_spread * np.clip(
        rng.standard_normal(n_neurons), -2.0, 2.0
    )
    # The soma's expected light d(t) * F0 * (1 + dff + c * n), built in place in the neuropil's
    # array: (N, T) float32 arrays are the memory this function needs.
    traces = local_mean(positions_um, dff, imaging.neuropil_sigma_um)
    traces *= residue[:, None].astype(np.float32)
    traces += dff
    traces += 1
    traces *= resting[:, None].astype(np.float32)
    traces *= drift
    # Shot noise of all the light collected (Gaussian: thousands of photons) and read noise.
    background = imaging.background * imaging.photons
    noise = traces + drift * np.float32(background) + np.float32(imaging.read_noise**2)
    np.sqrt(np.maximum(noise, 0, out=noise), out=noise)
    noise *= rng.standard_normal(traces.shape, dtype=np.float32)
    traces += noise
    resting_noise = np.sqrt(resting + background + imaging.read_noise**2)

    rng = np.random.default_rng(dropped_seed)
    dropped, dropped_kinds = drop_frames(traces, imaging, rng=rng)

    params = {
        "n_neurons": n_neurons,
        "n_frames": n_frames,
        "frame_rate": float(frame_rate),
        "field_um": tuple(float(side) for side in field_um),
        "seed": seed,
        "indicator": asdict(indicator),
        "imaging": asdict(imaging),
        "activity": asdict(activity),
    }
    return Recording(
        traces=traces,
        neuron_ids=np.arange(1, n_neurons + 1),
        centroids=positions_um / imaging.pixel_size_um,
        frame_rate=frame_rate,
        pixel_size_um=imaging.pixel_size_um,
        source=f"simulated {imaging.kind} traces ({indicator.name}, seed {seed})",
        metadata={
            "simulated": True,
            "trace_kind": "fluorescence",
            "kind": imaging.kind,
            "indicator": indicator.name,
            "seed": seed,
            "spikes": spikes,
            "dff": dff,
            "ensembles": ensembles,
            "drift": drift,
            "snr": (amplitude * resting / resting_noise).astype(np.float32),
            "dropped_frames": dropped,
            "dropped_frame_kinds": dropped_kinds,
            "params": params,
        },
    )


def place_neurons(
    n_neurons: int,
    field_um: tuple[float, float],
    *,
    rng: np.random.Generator,
    imaging: TraceImaging = TWO_PHOTON_TRACES,
    forbidden: np.ndarray | None = None,
) -> np.ndarray:
    """Random soma positions (float64 (N, 2), (y, x) in micrometres), at least a soma apart.

    Parameters
    ----------
    n_neurons
        Number of somata.
    field_um
        (height, width) of the field of view.
    rng
        Source of randomness.
    imaging
        Gives the pixel grid on which `forbidden` is defined.
    forbidden
        Optional boolean (H, W) mask, on the pixel grid of `imaging` covering `field_um`, of
        places where no soma may be (a plaque, a vessel).
    """
    shape = _shape_px(field_um, imaging.pixel_size_um)
    radius = _SOMA_DIAMETER_UM / 2 / imaging.pixel_size_um
    centres = place_cells(
        shape, np.full(n_neurons, radius), rng=rng, margin=radius / 2, forbidden=forbidden
    )
    return centres * imaging.pixel_size_um


def local_mean(positions_um: np.ndarray, values: np.ndarray, sigma_um: float) -> np.ndarray:
    """Gaussian-weighted mean of the other neurons' `values` (N, T) around each neuron (float32).

    Weights are cut at three `sigma_um`; a neuron with no other within that distance gets 0.
    """
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    n_neurons = len(positions_um)
    tree = cKDTree(positions_um)
    pairs = tree.query_pairs(3 * sigma_um, output_type="ndarray")
    pairs = np.concatenate([pairs, pairs[:, ::-1]])  # both directions; never a neuron itself
    distance2 = ((positions_um[pairs[:, 0]] - positions_um[pairs[:, 1]]) ** 2).sum(1)
    weight = np.exp(-distance2 / (2 * sigma_um**2))
    weights = sparse.csr_array(
        (weight, (pairs[:, 0], pairs[:, 1])), shape=(n_neurons, n_neurons), dtype=np.float32
    )
    total = weights.sum(axis=1)
    weights = sparse.diags_array(1 / np.maximum(total, 1e-12), dtype=np.float32) @ weights
    return np.asarray(weights @ np.asarray(values, dtype=np.float32), dtype=np.float32)


def drop_frames(
    traces: np.ndarray, imaging: TraceImaging, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a few frames of (N, T) `traces` in place, as `imaging` describes.

    Returns the dropped frames' indices (int64, ascending) and their kinds (str). The first frame
    is never dropped, so that a "repeat" always has a frame to repeat.
    """
    n_frames = traces.shape[1]
    n_dropped = min(rng.poisson(imaging.dropped_frames_per_1000 * n_frames / 1000), n_frames - 1)
    frames = np.sort(rng.choice(np.arange(1, n_frames), size=n_dropped, replace=False))
    kinds = np.asarray(imaging.dropped_frame_kinds)[
        rng.integers(len(imaging.dropped_frame_kinds), size=n_dropped)
    ]
    light = rng.uniform(*_DARK_FRAME_LIGHT, size=n_dropped)
    # In time order, so that a repeat of a frame that was itself dropped repeats it as recorded.
    for frame, kind, fraction in zip(frames, kinds, light, strict=True):
        if kind == "repeat":
            traces[:, frame] = traces[:, frame - 1]
        elif kind == "dark":
            traces[:, frame] *= fraction
        else:
            traces[:, frame] = np.nan
    return frames.astype(np.int64), kinds.astype(str)


def _drift(
    n_frames: int, frame_rate: float, imaging: TraceImaging, rng: np.random.Generator
) -> np.ndarray:
    """`drift_trace` (float32 (T,)), made at a rate that resolves it and interpolated to frames.

    The drift changes over tens of seconds; smoothing white noise at the full frame rate would
    cost more than the rest of `population`.
    """
    if not imaging.drift_timescale_s > 0:
        raise ValueError(
            f"drift_timescale_s must be positive seconds; got {imaging.drift_timescale_s}"
        )
    rate = min(frame_rate, _DRIFT_SAMPLES_PER_TIMESCALE / imaging.drift_timescale_s)
    n_samples = int(np.ceil((n_frames - 1) * rate / frame_rate)) + 2
    drift = drift_trace(
        n_samples,
        rate,
        rng=rng,
        bleach_time_s=imaging.bleach_time_s,
        amplitude=imaging.drift,
        timescale_s=imaging.drift_timescale_s,
    )
    frame_times = np.arange(n_frames) / frame_rate
    return np.interp(frame_times, np.arange(n_samples) / rate, drift).astype(np.float32)


def _field_um(
    field_um: float | tuple[float, float] | None, n_neurons: int, cells_per_mm2: float
) -> tuple[float, float]:
    if field_um is None:
        side = 1000.0 * np.sqrt(max(n_neurons, 1) / cells_per_mm2)
        return (side, side)
    height, width = np.broadcast_to(np.asarray(field_um, dtype=np.float64), (2,))
    return (float(height), float(width))


def _shape_px(field_um: tuple[float, float], pixel_size_um: float) -> tuple[int, int]:
    return tuple(int(np.ceil(side / pixel_size_um)) for side in field_um)
