"""Spike trains of a population with spatially clustered ensembles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._random import log_normal


@dataclass(frozen=True)
class Activity:
    """Statistics of the simulated population's firing.

    Every neuron has private Poisson events. Ensembles are centred at random points; a neuron
    joins its nearest ensemble with a probability that falls with distance as a Gaussian, so that
    neighbours tend to share activity. Each ensemble has Poisson events; at each of them, each
    member takes part with probability `participation`. Every event a neuron takes part in,
    private or shared, is a burst of ``1 + Poisson(mean - 1)`` spikes, delayed by exponentially
    distributed latencies.

    Attributes
    ----------
    rate_hz
        Median rate of a neuron's private events (log-normal across neurons).
    rate_spread
        Standard deviation of the natural log of the private event rate across neurons
        (truncated at two standard deviations).
    burst_spikes
        Mean spikes per private event (1: plain Poisson spikes).
    ensembles_per_mm2
        Density of ensemble centres in the field of view.
    ensemble_radius_um
        Gaussian radius of the membership probability around an ensemble centre.
    membership
        Probability that a neuron at an ensemble centre belongs to it.
    event_rate_hz
        Rate of each ensemble's events.
    participation
        Probability that a member fires at a given event of its ensemble.
    ensemble_burst_spikes
        Mean spikes a participating member fires per ensemble event.
    burst_duration_s
        Mean latency of a burst's spikes after its event.
    """

    rate_hz: float = 1.2
    rate_spread: float = 0.25
    burst_spikes: float = 1.8
    ensembles_per_mm2: float = 300.0
    ensemble_radius_um: float = 35.0
    membership: float = 0.85
    event_rate_hz: float = 0.25
    participation: float = 0.8
    ensemble_burst_spikes: float = 3.0
    burst_duration_s: float = 0.05


def ensemble_spikes(
    positions_um: np.ndarray,
    n_frames: int,
    frame_rate: float,
    *,
    rng: np.random.Generator,
    activity: Activity = Activity(),
    extent_um: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spike counts per frame of neurons grouped into spatial ensembles.

    Parameters
    ----------
    positions_um
        (N, 2) neuron positions (y, x) in micrometres.
    n_frames, frame_rate
        Length of the trains and frames per second.
    rng
        Source of randomness.
    activity
        Firing statistics.
    extent_um
        (height, width) of the area where ensemble centres are drawn, from the origin; default:
        the bounding box of the positions.

    Returns
    -------
    spikes
        int32 (N, n_frames) spike counts.
    ensembles
        int32 (N,) ensemble of each neuron, -1 for none.
    """
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    ensembles = assign_ensembles(positions_um, rng=rng, activity=activity, extent_um=extent_um)
    n_neurons = len(positions_um)
    n_ensembles = int(ensembles.max(initial=-1)) + 1
    spikes = np.zeros((n_neurons, n_frames), dtype=np.int32)

    rates = log_normal(activity.rate_hz, activity.rate_spread, n_neurons, rng)
    private = rng.poisson(rates[:, None] / frame_rate, size=(n_neurons, n_frames))
    neuron, frame = np.nonzero(private)
    repeat = private[neuron, frame]
    _add_bursts(
        spikes,
        np.repeat(neuron, repeat),
        np.repeat(frame, repeat),
        activity.burst_spikes,
        frame_rate,
        rng=rng,
        activity=activity,
    )

    events = rng.poisson(activity.event_rate_hz / frame_rate, size=(n_ensembles, n_frames))
    members = np.flatnonzero(ensembles >= 0)
    member_row, frame = np.nonzero(events[ensembles[members]])
    neuron = members[member_row]
    takes_part = rng.binomial(events[ensembles[neuron], frame], activity.participation)
    _add_bursts(
        spikes,
        np.repeat(neuron, takes_part),
        np.repeat(frame, takes_part),
        activity.ensemble_burst_spikes,
        frame_rate,
        rng=rng,
        activity=activity,
    )
    return spikes, ensembles


def assign_ensembles(
    positions_um: np.ndarray,
    *,
    rng: np.random.Generator,
    activity: Activity = Activity(),
    extent_um: tuple[float, float] | None = None,
) -> np.ndarray:
    """Ensemble of each neuron (int32, -1 for none), from randomly placed ensemble centres.

    The number of ensembles is ``activity.ensembles_per_mm2`` times the area (at least one).
    """
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    if extent_um is None:
        extent_um = tuple(positions_um.max(axis=0)) if len(positions_um) else (0.0, 0.0)
    area_mm2 = extent_um[0] * extent_um[1] * 1e-6
    n_ensembles = max(1, round(activity.ensembles_per_mm2 * area_mm2))
    centres = rng.uniform((0.0, 0.0), extent_um, size=(n_ensembles, 2))
    distance2 = ((positions_um[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    nearest = distance2.argmin(axis=1)
    nearest_distance2 = distance2[np.arange(len(positions_um)), nearest]
    p_join = activity.membership * np.exp(-nearest_distance2 / (2 * activity.ensemble_radius_um**2))
    joins = rng.random(len(positions_um)) < p_join
    return np.where(joins, nearest, -1).astype(np.int32)


def _add_bursts(spikes, neuron, frame, mean_spikes, frame_rate, *, rng, activity) -> None:
    """Add, in place, one burst of spikes per (neuron, frame) event."""
    n_spikes = 1 + rng.poisson(max(mean_spikes - 1.0, 0.0), size=neuron.size)
    neuron = np.repeat(neuron, n_spikes)
    event_time = np.repeat(frame + rng.random(frame.size), n_spikes) / frame_rate
    spike_time = event_time + rng.exponential(activity.burst_duration_s, size=neuron.size)
    spike_frame = np.floor(spike_time * frame_rate).astype(np.int64)
    inside = spike_frame < spikes.shape[1]
    np.add.at(spikes, (neuron[inside], spike_frame[inside]), 1)
