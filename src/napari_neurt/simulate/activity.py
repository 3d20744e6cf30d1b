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
    distributed latencies. With `coupling` below 1, some of a member's ensemble bursts lose their
    ensemble's timing and fall at random times instead: the same spikes, less synchrony. The
    defaults describe an active population: about 3 spikes per second per neuron on average,
    about 60 % of the neurons in an ensemble.

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
    coupling
        Probability that a member's burst at an ensemble event keeps the event's time; otherwise
        it falls at a uniformly random time (1: fully coupled ensembles).
    """

    rate_hz: float = 1.5
    rate_spread: float = 0.25
    burst_spikes: float = 1.8
    ensembles_per_mm2: float = 300.0
    ensemble_radius_um: float = 35.0
    membership: float = 0.85
    event_rate_hz: float = 0.3
    participation: float = 0.9
    ensemble_burst_spikes: float = 3.0
    burst_duration_s: float = 0.05
    coupling: float = 1.0


def ensemble_spikes(
    positions_um: np.ndarray,
    n_frames: int,
    frame_rate: float,
    *,
    rng: np.random.Generator,
    activity: Activity = Activity(),
    extent_um: tuple[float, float] | None = None,
    rate_scale: float | np.ndarray = 1.0,
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
    rate_scale
        Factor on each neuron's private event rate, a scalar or (N,) (for example hyperactive
        neurons); ensemble events are unchanged.

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
    duration = n_frames / frame_rate
    spikes = np.zeros((n_neurons, n_frames), dtype=np.int32)

    # A Poisson process is a Poisson number of events at uniformly random times.
    rates = log_normal(activity.rate_hz, activity.rate_spread, n_neurons, rng) * rate_scale
    neuron = np.repeat(np.arange(n_neurons), rng.poisson(rates * duration))
    time = rng.uniform(0, duration, neuron.size)
    _add_bursts(spikes, neuron, time, activity.burst_spikes, activity, frame_rate, rng)

    events = np.repeat(
        np.arange(n_ensembles), rng.poisson(activity.event_rate_hz * duration, n_ensembles)
    )
    event_time = rng.uniform(0, duration, events.size)
    event, neuron = _members_at_events(ensembles, events)
    takes_part = rng.random(neuron.size) < activity.participation
    time = event_time[event[takes_part]]
    if activity.coupling < 1:
        uncoupled = rng.random(time.size) >= activity.coupling
        time[uncoupled] = rng.uniform(0, duration, np.count_nonzero(uncoupled))
    _add_bursts(
        spikes, neuron[takes_part], time, activity.ensemble_burst_spikes, activity, frame_rate, rng
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


def _members_at_events(ensembles: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (event, neuron) pair where the neuron belongs to the ensemble of the event."""
    members = np.flatnonzero(ensembles >= 0)
    members = members[np.argsort(ensembles[members], kind="stable")]  # grouped by ensemble
    group_size = np.bincount(ensembles[members], minlength=events.max(initial=-1) + 1)
    group_start = np.cumsum(group_size) - group_size
    pairs_per_event = group_size[events]
    event = np.repeat(np.arange(events.size), pairs_per_event)
    rank_in_group = np.arange(event.size) - np.repeat(
        np.cumsum(pairs_per_event) - pairs_per_event, pairs_per_event
    )
    return event, members[group_start[events[event]] + rank_in_group]


def _add_bursts(spikes, neuron, time, mean_spikes, activity, frame_rate, rng) -> None:
    """Add, in place, a burst of ``1 + Poisson(mean_spikes - 1)`` spikes per (neuron, time)."""
    n_spikes = 1 + rng.poisson(max(mean_spikes - 1.0, 0.0), size=neuron.size)
    neuron = np.repeat(neuron, n_spikes)
    time = np.repeat(time, n_spikes) + rng.exponential(activity.burst_duration_s, size=neuron.size)
    frame = np.floor(time * frame_rate).astype(np.int64)
    inside = frame < spikes.shape[1]
    np.add.at(spikes, (neuron[inside], frame[inside]), 1)
