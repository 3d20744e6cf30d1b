"""Varied recording conditions, and a stream of varied recordings for pretraining."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..recording import Recording
from .activity import Activity
from .kinetics import INDICATORS
from .population import MINISCOPE_TRACES, TWO_PHOTON_TRACES, TraceImaging, population

# Share of one-photon miniscope recordings among random conditions.
_MINISCOPE_SHARE = 0.3
# Frame rates (Hz), drawn log-uniformly: resonant two-photon scanning runs at ~30 Hz, galvo or
# multi-plane imaging at a few Hz; miniscopes are often run (or binned) slower than 30 Hz.
_FRAME_RATES = {"two-photon": (3.0, 30.0), "miniscope": (3.0, 20.0)}
# OGB-1 is a synthetic dye loaded acutely for two-photon imaging; miniscopes image expressed
# GCaMPs through a chronically implanted lens.
_MINISCOPE_INDICATORS = tuple(name for name in INDICATORS if "GCaMP" in name)


@dataclass(frozen=True)
class Condition:
    """How a recording was made: indicator, frame rate, imaging and the population's activity.

    Attributes
    ----------
    indicator
        A name in `INDICATORS`.
    frame_rate
        Frames per second.
    imaging
        Photon budget, contamination, drift and dropped frames (`TraceImaging`).
    activity
        Firing statistics of the population (`Activity`).
    """

    indicator: str = "GCaMP6f"
    frame_rate: float = 30.0
    imaging: TraceImaging = TWO_PHOTON_TRACES
    activity: Activity = field(default_factory=Activity)

    @property
    def kind(self) -> str:
        """ "two-photon" or "miniscope"."""
        return self.imaging.kind

    def population(self, *, n_neurons: int, n_frames: int, seed: int, **options) -> Recording:
        """`population` under this condition; `options` go to `population` as they are."""
        recording = population(
            n_neurons=n_neurons,
            n_frames=n_frames,
            frame_rate=self.frame_rate,
            indicator=self.indicator,
            seed=seed,
            imaging=self.imaging,
            activity=self.activity,
            **options,
        )
        recording.metadata["condition"] = asdict(self)
        return recording


def random_condition(rng: np.random.Generator) -> Condition:
    """A random recording condition, spanning the indicators, microscopes and quality in use.

    - Microscope: two-photon (70 %) or one-photon miniscope (30 %: about half the SNR, four times
      the background, three times the neuropil residue, faster bleaching, more dropped frames;
      see `MINISCOPE_TRACES`).
    - Indicator: any of `INDICATORS` with two-photon, any GCaMP with a miniscope.
    - Frame rate: log-uniform in 3-30 Hz (two-photon) or 3-20 Hz (miniscope).
    - Imaging: the preset with its photon budget (hence SNR) varied about 4-fold either way, and
      background, neuropil residue, drift, bleaching and dropped frames varied around it.
    - Activity: median private event rate from about 0.4 to 6 Hz; ensembles from many small
      ones (600 per mm2, 20 um radius) to a few broad ones (15 per mm2, 100 um), with their
      event rate, participation and coupling varied from loose to tight.
    """
    miniscope = rng.random() < _MINISCOPE_SHARE
    preset = MINISCOPE_TRACES if miniscope else TWO_PHOTON_TRACES
    indicators = _MINISCOPE_INDICATORS if miniscope else tuple(INDICATORS)
    indicator = indicators[rng.integers(len(indicators))]
    low, high = _FRAME_RATES[preset.kind]
    frame_rate = float(np.exp(rng.uniform(np.log(low), np.log(high))))

    def around(value: float, log_spread: float) -> float:
        return float(value * np.exp(log_spread * rng.uniform(-1.0, 1.0)))

    imaging = replace(
        preset,
        photons=around(preset.photons, np.log(4.0)),
        background=around(preset.background, np.log(2.0)),
        neuropil_residue=around(preset.neuropil_residue, np.log(2.0)),
        drift=around(preset.drift, np.log(2.0)),
        bleach_time_s=around(preset.bleach_time_s, np.log(3.0)),
        dropped_frames_per_1000=float(preset.dropped_frames_per_1000 * rng.uniform(0.0, 2.0)),
    )
    default = Activity()
    activity = replace(
        default,
        rate_hz=around(default.rate_hz, np.log(4.0)),
        rate_spread=float(rng.uniform(0.15, 0.5)),
        ensembles_per_mm2=float(np.exp(rng.uniform(np.log(15.0), np.log(600.0)))),
        ensemble_radius_um=float(rng.uniform(20.0, 100.0)),
        event_rate_hz=around(default.event_rate_hz, np.log(3.0)),
        participation=float(rng.uniform(0.5, 0.95)),
        coupling=float(rng.uniform(0.5, 1.0)),
    )
    return Condition(indicator=indicator, frame_rate=frame_rate, imaging=imaging, activity=activity)


def training_recordings(
    n: int | None,
    seed: int = 0,
    *,
    n_neurons: int | tuple[int, int] = (100, 800),
    n_frames: int | tuple[int, int] = (1000, 4000),
    condition: Condition | None = None,
    denoised_share: float = 0.0,
) -> Iterator[Recording]:
    """Yield `n` varied simulated recordings for pretraining, one at a time (endless if None).

    Each recording draws its own condition (`random_condition`), size and seed; recording ``k``
    depends on `seed` and ``k`` only, so a stream can be cut, resumed or split between workers
    (``itertools.islice``) and gives the same recordings.

    Parameters
    ----------
    n
        Number of recordings, or None for an endless stream.
    seed
        Seed of the whole stream.
    n_neurons, n_frames
        A number, or an inclusive (low, high) range to draw uniformly from.
    condition
        One condition for every recording instead of random ones.
    denoised_share
        Probability that a recording comes as denoised traces (`denoised`), as CaImAn's ``C``
        or other model-based extractions give them, instead of raw fluorescence.

    Yields
    ------
    Recording
        From `population`; ``metadata["condition"]`` holds the condition as plain values and
        ``metadata["trace_kind"]`` says "fluorescence" or "denoised".
    """
    if not 0.0 <= denoised_share <= 1.0:
        raise ValueError(f"denoised_share is a probability in [0, 1]; got {denoised_share}")
    _check_size("n_neurons", n_neurons)
    _check_size("n_frames", n_frames)
    stream = np.random.SeedSequence(seed)
    k = 0
    while n is None or k < n:
        rng = np.random.default_rng(np.random.SeedSequence(stream.entropy, spawn_key=(k,)))
        this = random_condition(rng) if condition is None else condition
        recording = this.population(
            n_neurons=_draw(n_neurons, rng),
            n_frames=_draw(n_frames, rng),
            seed=int(rng.integers(2**32)),
        )
        # drawn after the recording's own draws, so a share of 0 leaves the stream as it was
        yield denoised(recording) if rng.random() < denoised_share else recording
        k += 1


def denoised(recording: Recording) -> Recording:
    """A simulated recording as a denoising extraction would give it: the true ΔF/F as traces.

    Model-based source extraction (CaImAn's CNMF ``C``, deconvolution followed by reconvolution)
    returns each neuron's calcium trace with the noise, neuropil, drift and bleaching removed:
    smooth rises and exponential decays. A model trained only on raw fluorescence learns
    corrections for noise that such traces do not have. `recording` must come from `population`
    (``metadata["dff"]`` holds the truth); everything but the traces and the trace kind is kept.
    """
    truth = recording.metadata.get("dff")
    if truth is None or np.shape(truth) != recording.traces.shape:
        raise ValueError(
            "denoised() needs a simulated recording from simulate.population, whose "
            'metadata["dff"] holds the true ΔF/F of every trace'
        )
    return replace(
        recording,
        traces=truth,
        source=f"{recording.source}, denoised (true ΔF/F)",
        metadata={**recording.metadata, "trace_kind": "denoised"},
    )


def _check_size(name: str, value: int | tuple[int, int]) -> None:
    """A size is a number or an inclusive (low, high) range, with 1 <= low <= high."""
    low, high = (value, value) if np.ndim(value) == 0 else value
    if not 1 <= low <= high:
        raise ValueError(
            f"{name} must be at least 1, or a range (low, high) with 1 <= low <= high; got {value}"
        )


def _draw(value: int | tuple[int, int], rng: np.random.Generator) -> int:
    if np.ndim(value) == 0:
        return int(value)
    low, high = value
    return int(rng.integers(low, high + 1))
