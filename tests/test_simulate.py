"""Simulated recordings: determinism, structure, kinetics, ensembles, optics, and trace fidelity."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage, stats

from napari_neurt import Recording, simulate
from napari_neurt.extraction import extract_traces
from napari_neurt.plugin import samples


@pytest.fixture(scope="module")
def two_photon() -> simulate.SimulatedRecording:
    return simulate.two_photon()


@pytest.fixture(scope="module")
def miniscope() -> simulate.SimulatedRecording:
    return simulate.miniscope()


@pytest.fixture(params=["two_photon", "miniscope"])
def simulation(request) -> simulate.SimulatedRecording:
    return request.getfixturevalue(request.param)


def row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def arrays(simulation: simulate.SimulatedRecording) -> dict[str, np.ndarray]:
    names = ("movie", "labels", "spikes", "fluorescence", "dff", "ensembles", "centroids")
    return {name: getattr(simulation, name) for name in names}


# -- determinism, structure ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [simulate.two_photon, simulate.miniscope])
def test_same_seed_same_arrays_and_other_seed_others(make):
    small = {"shape": (48, 56), "n_cells": 8, "n_frames": 60}
    first, again, other = make(**small, seed=3), make(**small, seed=3), make(**small, seed=4)
    for name, value in arrays(first).items():
        np.testing.assert_array_equal(value, getattr(again, name), err_msg=name)
    for name in ("movie", "labels", "spikes", "centroids"):
        assert not np.array_equal(getattr(first, name), getattr(other, name)), name


def test_shapes_dtypes_and_metadata(simulation):
    n_frames, height, width = simulation.movie.shape
    n_cells = simulation.n_cells
    assert simulation.movie.dtype == np.uint16
    assert simulation.labels.shape == (height, width) and simulation.labels.dtype == np.int32
    assert simulation.spikes.shape == (n_cells, n_frames)
    assert np.issubdtype(simulation.spikes.dtype, np.integer) and simulation.spikes.min() >= 0
    for name in ("fluorescence", "dff"):
        value = getattr(simulation, name)
        assert value.shape == (n_cells, n_frames) and value.dtype == np.float32, name
        assert np.isfinite(value).all(), name
    assert simulation.ensembles.shape == (n_cells,) and simulation.ensembles.min() >= -1
    assert simulation.centroids.shape == (n_cells, 2)
    assert simulation.indicator == "GCaMP6f" and simulation.seed == 0
    assert simulation.kind in ("two-photon", "miniscope")
    assert simulation.params["imaging"]["kind"] == simulation.kind
    assert "cells" in repr(simulation) and len(repr(simulation)) < 200


def test_default_sizes_are_as_documented(two_photon, miniscope):
    assert two_photon.movie.shape == (900, 128, 128) and two_photon.n_cells == 50
    assert two_photon.frame_rate == 30.0
    assert miniscope.movie.shape == (600, 128, 128) and miniscope.frame_rate == 20.0


def test_labels_are_1_to_n_and_hold_their_centroids(simulation):
    ids = np.unique(simulation.labels)
    np.testing.assert_array_equal(ids, np.arange(simulation.n_cells + 1))
    y, x = np.round(simulation.centroids).astype(int).T
    np.testing.assert_array_equal(simulation.labels[y, x], np.arange(1, simulation.n_cells + 1))


def test_truth_is_consistent(simulation):
    # dF/F is the indicator's response to the spikes (each cell with its own amplitude) ...
    linear = simulate.spikes_to_dff(simulation.spikes, simulation.indicator, simulation.frame_rate)
    assert row_correlation(linear, simulation.dff).min() > 0.99
    # ... and the fluorescence is F0 * drift(t) * (1 + dF/F), the drift shared by all cells.
    baseline = simulation.fluorescence / (1 + simulation.dff)
    drift = baseline / baseline[:, :1]
    np.testing.assert_allclose(drift, np.broadcast_to(drift[:1], drift.shape), rtol=1e-4)


def test_recordings_start_in_their_steady_state(simulation):
    # From rest the first frames held about a quarter of the mean ΔF/F (0.11-0.26 of it in the
    # first 3 frames of these samples); started steady, close to all of it (0.89).
    first_frames = simulation.dff[:, :3].mean() / simulation.dff.mean()
    assert 0.6 < first_frames < 1.4


def test_recording_view(two_photon):
    recording = two_photon.recording()
    assert isinstance(recording, Recording)
    np.testing.assert_array_equal(recording.traces, two_photon.fluorescence)
    np.testing.assert_array_equal(recording.neuron_ids, np.arange(1, two_photon.n_cells + 1))
    np.testing.assert_array_equal(recording.labels, two_photon.labels)
    assert recording.frame_rate == 30.0 and recording.pixel_size_um == two_photon.pixel_size_um
    assert recording.source.startswith("simulated two-photon")
    assert recording.metadata["trace_kind"] == "true fluorescence"
    assert recording.mean_image.shape == two_photon.labels.shape

    given = two_photon.recording(np.zeros_like(two_photon.fluorescence))
    assert given.metadata["trace_kind"] == "given" and not given.traces.any()
    with pytest.raises(ValueError, match="cells, frames"):
        two_photon.recording(two_photon.fluorescence[:, :10])


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"unknown indicator 'GCaMP99'.*GCaMP6f"):
        simulate.two_photon(indicator="GCaMP99")
    with pytest.raises(ValueError, match="could place only"):
        simulate.two_photon(shape=(32, 32), n_cells=200, n_frames=2)
    assert simulate.get_indicator("gcamp6s") is simulate.INDICATORS["GCaMP6s"]


@pytest.mark.parametrize("frame_rate", [0.0, -30.0, float("nan"), float("inf")])
def test_a_frame_rate_that_is_not_a_positive_number_is_explained(frame_rate):
    # it used to give a ZeroDivisionError (two_photon), a kernel of zeros (calcium_kernel) or a
    # constant negative "ΔF/F" (spikes_to_dff at -1 Hz)
    with pytest.raises(ValueError, match="frame_rate must be a positive"):
        simulate.two_photon(shape=(32, 32), n_cells=3, n_frames=5, frame_rate=frame_rate)
    with pytest.raises(ValueError, match="frame_rate must be a positive"):
        simulate.calcium_kernel("GCaMP6f", frame_rate)
    with pytest.raises(ValueError, match="frame_rate must be a positive"):
        simulate.spikes_to_dff(np.ones((2, 5)), "GCaMP6f", frame_rate)


# -- calcium kinetics ------------------------------------------------------------------------------


def measured_kinetics(response: np.ndarray, frame_rate: float) -> tuple[float, float, float]:
    """Peak, time to peak and half-decay time of a response to one spike at time 0."""
    times = (np.arange(response.size) + 0.5) / frame_rate  # frames are averages over exposures
    peak = int(np.argmax(response))
    half = response[peak] / 2
    after = peak + int(np.argmax(response[peak:] < half))
    # Linear interpolation between the two frames around half the peak.
    t_half = np.interp(half, response[after : after - 2 : -1], times[after : after - 2 : -1])
    return float(response[peak]), float(times[peak]), float(t_half - times[peak])


@pytest.mark.parametrize("name", list(simulate.INDICATORS))
def test_impulse_response_follows_the_indicator(name):
    indicator = simulate.INDICATORS[name]
    spikes = np.zeros(4000)
    spikes[0] = 1
    response = simulate.spikes_to_dff(spikes, indicator, frame_rate=1000.0)
    peak, time_to_peak, half_decay = measured_kinetics(response, 1000.0)
    assert peak == pytest.approx(indicator.dff_per_spike, rel=0.01)  # saturation is mild
    assert time_to_peak == pytest.approx(indicator.time_to_peak_s, rel=0.05, abs=0.002)
    assert half_decay == pytest.approx(indicator.half_decay_s, rel=0.05)
    assert indicator.reference


@pytest.mark.parametrize(("name", "frame_rate"), [("GCaMP6s", 30.0), ("GCaMP6f", 30.0)])
def test_impulse_response_at_imaging_frame_rates(name, frame_rate):
    indicator = simulate.INDICATORS[name]
    kernel = simulate.calcium_kernel(indicator, frame_rate)
    _, time_to_peak, half_decay = measured_kinetics(kernel, frame_rate)
    assert abs(time_to_peak - indicator.time_to_peak_s) <= 1 / frame_rate
    assert half_decay == pytest.approx(indicator.half_decay_s, rel=0.2)


def test_frames_average_the_response_so_fast_indicators_survive_slow_imaging():
    fine = simulate.calcium_kernel("jGCaMP8f", 1000.0)
    coarse = simulate.calcium_kernel("jGCaMP8f", 3.0)
    assert coarse.sum() / 3.0 == pytest.approx(fine.sum() / 1000.0, rel=0.01)


def test_saturation_is_mild():
    indicator = simulate.INDICATORS["GCaMP6f"]
    linear = dataclasses.replace(indicator, saturation_spikes=None)
    bursts = np.zeros((3, 200))
    bursts[:, 0] = (1, 3, 10)
    saturated = simulate.spikes_to_dff(bursts, indicator, 30.0).max(axis=1)
    proportional = simulate.spikes_to_dff(bursts, linear, 30.0).max(axis=1)
    np.testing.assert_allclose(saturated / proportional, [1.0, 0.97, 0.76], atol=0.01)


@pytest.mark.parametrize("name", ["GCaMP6s", "OGB-1"])
def test_a_steady_start_has_no_start_up_ramp(name):
    # A recording is a window of ongoing firing: from rest the first seconds sit well below the
    # steady level (the simulator's recordings once started dim, and their first frames were
    # flagged as bad); started steady they do not. Without saturation the expected level is flat.
    linear = dataclasses.replace(simulate.INDICATORS[name], saturation_spikes=None)
    spikes = np.random.default_rng(0).poisson(0.2, (2000, 900)).astype(np.float32)
    from_rest = simulate.spikes_to_dff(spikes, linear, 30.0)
    steady = simulate.spikes_to_dff(spikes, linear, 30.0, steady_start=True)
    late = steady[:, 600:].mean()
    assert from_rest[:, :30].mean() < 0.8 * late
    assert steady[:, :30].mean() == pytest.approx(late, rel=0.03)
    # the start only adds the decaying memory of the unseen past
    np.testing.assert_allclose(steady[:, -1], from_rest[:, -1], rtol=1e-3, atol=1e-4)


# -- activity --------------------------------------------------------------------------------------


def test_neighbours_in_an_ensemble_share_activity(two_photon):
    correlation = np.corrcoef(two_photon.dff)
    distance_um = two_photon.pixel_size_um * np.hypot(
        *(two_photon.centroids[:, None] - two_photon.centroids[None]).transpose(2, 0, 1)
    )
    ensemble = two_photon.ensembles
    i, j = np.triu_indices(two_photon.n_cells, 1)
    same_near = (ensemble[i] == ensemble[j]) & (ensemble[i] >= 0) & (distance_um[i, j] < 40)
    apart = (ensemble[i] != ensemble[j]) & (distance_um[i, j] > 80)
    assert same_near.sum() >= 10 and apart.sum() >= 100
    near, far = correlation[i, j][same_near].mean(), correlation[i, j][apart].mean()
    assert near > far + 0.1 and abs(far) < 0.05


def test_ensembles_are_spatial_clusters():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 1000, size=(4000, 2))
    activity = simulate.Activity(ensembles_per_mm2=20.0, ensemble_radius_um=60.0, membership=0.9)
    ensembles = simulate.assign_ensembles(
        positions, rng=rng, activity=activity, extent_um=(1000.0, 1000.0)
    )
    assert ensembles.max() + 1 == 20
    assert 0.2 < (ensembles >= 0).mean() < 0.6
    # Members spread about one ensemble radius around their centre; the population spreads
    # over the whole millimetre.
    spread = [positions[ensembles == k].std(axis=0).mean() for k in range(20)]
    assert np.median(spread) < 1.5 * 60 < 0.5 * positions.std(axis=0).mean()


# -- optics and noise ------------------------------------------------------------------------------


def test_miniscope_has_more_background_and_blur(two_photon, miniscope):
    def mean_light(simulation):
        return simulation.movie.mean(axis=0) - simulation.params["imaging"]["offset"]

    def background_to_cells(simulation):
        light, cells = mean_light(simulation), simulation.labels > 0
        return light[~cells].mean() / light[cells].mean()

    def detail_finer_than_3um(simulation):
        light = mean_light(simulation)
        smooth = ndimage.gaussian_filter(light, 3.0 / simulation.pixel_size_um)
        return np.std(light - smooth) / light.mean()

    assert background_to_cells(two_photon) < 0.6 < 0.7 < background_to_cells(miniscope)
    assert detail_finer_than_3um(two_photon) > 5 * detail_finer_than_3um(miniscope)


@pytest.mark.parametrize("mean", [3.0, 30.0, 300.0])
def test_detected_photons_are_poisson(mean):
    rng = np.random.default_rng(1)
    counts = simulate.detect(np.full(400_000, mean), rng=rng).astype(np.float64)
    assert counts.mean() == pytest.approx(mean, rel=0.01)
    assert counts.var() == pytest.approx(mean, rel=0.02)
    assert stats.skew(counts) == pytest.approx(1 / np.sqrt(mean), abs=0.02)


# -- acceptance: traces extracted from the movie follow the truth ----------------------------------


def test_extracted_traces_follow_the_true_fluorescence(two_photon):
    raw = extract_traces(two_photon.movie, two_photon.labels)
    corrected = extract_traces(two_photon.movie, two_photon.labels, neuropil=True)
    truth = two_photon.fluorescence
    r_raw, r_corrected = row_correlation(raw, truth), row_correlation(corrected, truth)
    assert r_raw.min() >= 0.9, np.sort(r_raw)[:5]
    assert r_corrected.min() >= 0.9, np.sort(r_corrected)[:5]
    assert np.median(r_corrected) >= np.median(r_raw)

    # Honest, not trivially clean: shot noise and neuropil are there. The per-frame noise of a
    # soma's mean is about 2 % of its resting light, and neuropil plus background add about
    # half of that light (see simulate.TWO_PHOTON).
    resting = (truth / (1 + two_photon.dff))[:, 0]
    light = raw - two_photon.params["imaging"]["offset"]
    noise = np.diff(light - truth, axis=1).std(axis=1) / np.sqrt(2)
    assert 0.01 < np.median(noise / resting) < 0.05
    assert 0.3 < np.median((light - truth).mean(axis=1) / resting) < 1.0


# -- packaging -------------------------------------------------------------------------------------


def test_samples_are_layer_data(monkeypatch):
    monkeypatch.setitem(samples.TWO_PHOTON_SAMPLE, "n_frames", 20)
    monkeypatch.setitem(samples.MINISCOPE_SAMPLE, "n_frames", 20)
    for make, title in (
        (samples.sample_two_photon, "two-photon"),
        (samples.sample_miniscope, "miniscope"),
    ):
        (movie, movie_kwargs, movie_type), (labels, labels_kwargs, labels_type) = make()
        assert (movie_type, labels_type) == ("image", "labels")
        assert movie_kwargs["name"] == f"{title} movie (simulated)"
        assert labels_kwargs["name"] == f"{title} ROIs (simulated)"
        truth = labels_kwargs["metadata"]["neurt_ground_truth"]
        assert isinstance(truth, simulate.SimulatedRecording)
        assert movie is truth.movie and labels is truth.labels and movie.shape[0] == 20
        assert movie_kwargs["metadata"]["frame_rate"] == truth.frame_rate
        low, high = movie_kwargs["contrast_limits"]
        assert movie.min() <= low < high <= movie.max()


def test_core_imports_neither_napari_nor_qt():
    code = (
        "import sys, napari_neurt.simulate, napari_neurt.plugin.samples\n"
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')\n"
        "bad = [name for name in sys.modules if name.split('.')[0] in gui]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
