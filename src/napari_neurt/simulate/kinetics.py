"""Calcium-indicator kinetics: how ΔF/F responds to spikes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from scipy.optimize import brentq
from scipy.signal import lfilter

# A double exponential exp(-t/tau_decay) - exp(-t/tau_rise) with tau_rise -> tau_decay becomes
# t * exp(-t / tau), whose half-decay (from the peak) is 1.68 times its time to peak: no double
# exponential decays relatively faster than that.
_MIN_DECAY_TO_PEAK = 1.7


@dataclass(frozen=True)
class Indicator:
    """Single-spike response of a calcium indicator.

    The ΔF/F response to one spike is a double exponential
    ``exp(-t / tau_decay) - exp(-t / tau_rise)`` scaled to peak at `dff_per_spike`; its two time
    constants (`time_constants`) are solved for so that the response peaks `time_to_peak_s` after
    the spike and falls to half its peak `half_decay_s` after the peak. Responses to several
    spikes add up, then saturate smoothly (see `saturation_spikes`).

    Attributes
    ----------
    name
        Indicator name, as in `INDICATORS`.
    dff_per_spike
        Peak ΔF/F of the response to a single spike.
    time_to_peak_s
        Time from the spike to the peak of the response, in seconds.
    half_decay_s
        Time from the peak to half the peak, in seconds.
    saturation_spikes
        ΔF/F saturates as ``s * tanh(linear / s)`` with ``s = saturation_spikes * dff_per_spike``:
        almost linear for a few spikes (10 spikes: -24 %, 3 spikes: -3 %). None: linear.
    reference
        Where the numbers come from.
    """

    name: str
    dff_per_spike: float
    time_to_peak_s: float
    half_decay_s: float
    saturation_spikes: float | None = 10.0
    reference: str = ""

    def __post_init__(self) -> None:
        if not (self.dff_per_spike > 0 and self.time_to_peak_s > 0 and self.half_decay_s > 0):
            raise ValueError(f"{self.name}: amplitude and times must be positive")
        if self.half_decay_s < _MIN_DECAY_TO_PEAK * self.time_to_peak_s:
            raise ValueError(
                f"{self.name}: a double exponential needs half_decay_s >= {_MIN_DECAY_TO_PEAK} x "
                f"time_to_peak_s; got {self.half_decay_s} and {self.time_to_peak_s}"
            )
        if self.saturation_spikes is not None and not self.saturation_spikes > 0:
            raise ValueError(f"{self.name}: saturation_spikes must be positive or None")

    @property
    def time_constants(self) -> tuple[float, float]:
        """``(tau_rise, tau_decay)`` of the double exponential, in seconds."""
        return _double_exponential_taus(self.time_to_peak_s, self.half_decay_s)


_CHEN_2013 = "Chen et al. 2013, Nature 499:295 (mouse V1 L2/3 in vivo)"
_DANA_2019 = "Dana et al. 2019, Nat Methods 16:649"
_ZHANG_2023 = "Zhang et al. 2023, Nature 615:884"
INDICATORS: dict[str, Indicator] = {
    name: Indicator(name, dff, peak, half, reference=reference)
    for name, dff, peak, half, reference in (
        # name, peak ΔF/F, time to peak (s), half decay (s), source
        ("OGB-1", 0.08, 0.020, 0.50, "Kerr et al. 2005, PNAS 102:14063; Grewe et al. 2010, "
         "Nat Methods 7:399 (bolus-loaded OGB-1 AM in vivo)"),
        ("GCaMP6s", 0.23, 0.180, 0.55, _CHEN_2013),
        ("GCaMP6m", 0.14, 0.080, 0.27, _CHEN_2013),
        ("GCaMP6f", 0.19, 0.045, 0.14, _CHEN_2013),
        ("jGCaMP7s", 0.35, 0.120, 1.00, _DANA_2019),
        ("jGCaMP7f", 0.25, 0.040, 0.27, _DANA_2019),
        ("jGCaMP8s", 0.50, 0.060, 0.30, _ZHANG_2023),
        ("jGCaMP8m", 0.40, 0.030, 0.12, _ZHANG_2023),
        ("jGCaMP8f", 0.30, 0.025, 0.07, _ZHANG_2023),
    )
}  # fmt: skip
"""Single-spike kinetics of common calcium indicators, by name.

Rounded single-action-potential figures: peak ΔF/F, time from spike to peak, and time from peak
to half the peak, from the papers that introduced or characterised each indicator (`reference`):

- OGB-1: Kerr et al. 2005, PNAS 102:14063; Grewe et al. 2010, Nat Methods 7:399.
- GCaMP6s, GCaMP6m, GCaMP6f: Chen et al. 2013, Nature 499:295 (mouse V1 L2/3 in vivo).
- jGCaMP7s, jGCaMP7f: Dana et al. 2019, Nat Methods 16:649.
- jGCaMP8s, jGCaMP8m, jGCaMP8f: Zhang et al. 2023, Nature 615:884.

Amplitudes vary several-fold between cells, expression levels and preparations, and kinetics
slow down for bursts; these are representative values for simulation, not a meta-analysis.
"""


def get_indicator(indicator: str | Indicator) -> Indicator:
    """The `Indicator` named `indicator` in `INDICATORS` (any case), or `indicator` itself."""
    if isinstance(indicator, Indicator):
        return indicator
    by_lower_name = {name.lower(): value for name, value in INDICATORS.items()}
    try:
        return by_lower_name[str(indicator).lower()]
    except KeyError:
        raise ValueError(
            f"unknown indicator {indicator!r}; known: {', '.join(INDICATORS)} "
            "(or pass an Indicator)"
        ) from None


def calcium_kernel(
    indicator: str | Indicator, frame_rate: float, n_frames: int | None = None
) -> np.ndarray:
    """ΔF/F of each frame after one spike at the start of frame 0 (linear, without saturation).

    Each frame holds the mean of the continuous response over the frame, so that fast indicators
    keep their area at low frame rates instead of being missed between samples.

    Parameters
    ----------
    indicator
        An `Indicator` or a name in `INDICATORS`.
    frame_rate
        Frames per second.
    n_frames
        Length of the kernel; default: until it has decayed below 0.1 % of its peak.
    """
    indicator = get_indicator(indicator)
    check_frame_rate(frame_rate)
    if n_frames is None:
        _, tau_decay = indicator.time_constants
        n_frames = int(np.ceil((indicator.time_to_peak_s + 7 * tau_decay) * frame_rate)) + 1
    impulse = np.zeros(n_frames)
    impulse[0] = 1.0
    linear = replace(indicator, saturation_spikes=None)
    return spikes_to_dff(impulse, linear, frame_rate).astype(np.float64)


def spikes_to_dff(
    spikes: np.ndarray,
    indicator: str | Indicator,
    frame_rate: float,
    *,
    dff_per_spike: float | np.ndarray | None = None,
    steady_start: bool = False,
) -> np.ndarray:
    """True ΔF/F of neurons given their spike counts per frame.

    Parameters
    ----------
    spikes
        (..., T) spike counts per frame, for instance (N, T); spikes fall at the start of a frame.
    indicator
        An `Indicator` or a name in `INDICATORS`.
    frame_rate
        Frames per second.
    dff_per_spike
        Single-spike amplitude, a scalar or one value per trace (shape ``spikes.shape[:-1]``);
        default: the indicator's.
    steady_start
        Start each trace where it would be had the neuron fired at its mean rate (over these
        frames) since long before the first frame, instead of from rest. A simulated recording
        is a window of ongoing activity: from rest, its first seconds are too dim (about a fifth
        of the steady level at the first half-decay), which reads as a ramp or a bad stretch.

    Returns
    -------
    float32 array shaped like `spikes`: the frame-averaged double-exponential responses summed
    over spikes, then saturated as described by `Indicator.saturation_spikes`.
    """
    indicator = get_indicator(indicator)
    check_frame_rate(frame_rate)
    counts = np.asarray(spikes, dtype=np.float32)
    amplitude = indicator.dff_per_spike if dff_per_spike is None else np.asarray(dff_per_spike)
    amplitude = np.broadcast_to(amplitude, counts.shape[:-1])[..., None].astype(np.float32)
    tau_rise, tau_decay = indicator.time_constants
    peak = _response(indicator.time_to_peak_s, tau_rise, tau_decay)
    # An exponential averaged over frame k is fs * tau * (1 - a) * a**k, a = exp(-1 / (fs * tau)):
    # a first-order recursive filter, so the convolution is exact and O(T) per neuron.
    dff = np.zeros_like(counts)
    for tau, sign in ((tau_decay, 1.0), (tau_rise, -1.0)):
        decay = np.exp(-1.0 / (frame_rate * tau))
        gain = sign * frame_rate * tau * (1.0 - decay) / peak
        # The filter's state before the first frame: y[-1] = gain * mean / (1 - decay), stored as
        # decay * y[-1] (lfilter's zi for this first-order filter).
        state = None
        if steady_start:
            state = decay * gain * counts.mean(axis=-1, keepdims=True) / (1.0 - decay)
        dff += _filter(gain, decay, counts, state)
    dff *= amplitude
    if indicator.saturation_spikes is not None:
        ceiling = indicator.saturation_spikes * amplitude
        dff = ceiling * np.tanh(dff / ceiling)
    return dff


def _filter(gain: float, decay: float, counts: np.ndarray, state: np.ndarray | None) -> np.ndarray:
    b, a = np.float32([gain]), np.float32([1.0, -decay])
    if state is None:
        return lfilter(b, a, counts, axis=-1)
    return lfilter(b, a, counts, axis=-1, zi=state.astype(np.float32))[0]


def check_frame_rate(frame_rate: float) -> None:
    """Refuse a frame rate that is not a positive, finite number of Hz (0 or less gave a division
    by zero, a kernel of zeros or a negative ΔF/F)."""
    if not (np.isfinite(frame_rate) and frame_rate > 0):
        raise ValueError(f"frame_rate must be a positive number of Hz; got {frame_rate}")


def _response(t: float, tau_rise: float, tau_decay: float) -> float:
    return float(np.exp(-t / tau_decay) - np.exp(-t / tau_rise))


@cache
def _double_exponential_taus(time_to_peak: float, half_decay: float) -> tuple[float, float]:
    # With tau_decay = 1 and tau_rise = r < 1 the response's shape depends on r alone, and
    # half_decay / time_to_peak falls monotonically from infinity (r -> 0) to 1.68 (r -> 1).
    def peak_time(r: float) -> float:
        return r * np.log(r) / (r - 1.0)

    def decay_to_peak(r: float) -> float:
        t_peak = peak_time(r)
        half = _response(t_peak, r, 1.0) / 2
        t_half = brentq(lambda t: _response(t, r, 1.0) - half, t_peak, -np.log(half) + 1.0)
        return (t_half - t_peak) / t_peak

    r = brentq(lambda r: decay_to_peak(r) - half_decay / time_to_peak, 1e-9, 1.0 - 1e-6)
    tau_decay = time_to_peak / peak_time(r)
    return r * tau_decay, tau_decay
