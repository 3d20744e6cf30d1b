"""NEuRT tokens against a plain per-neuron reference, and their documented edge-case rules."""

from __future__ import annotations

import numpy as np
import pytest

import napari_neurt
from napari_neurt.model.tokens import (
    ACTIVITY_STATISTICS,
    DEFAULT_DELTA_UM,
    FEATURES,
    NEAREST_NEURONS,
    activity_statistics,
    default_delta_px,
    neighborhood_tokens,
    normalise_traces,
    span_mask,
)


def reference_tokens(traces, centroids, delta):
    """The published construction written plainly, one neuron at a time, in float64, with our
    documented fallback (groups of fewer than 2 -> the 2 nearest / farthest other neurons)."""
    traces = np.asarray(traces, dtype=np.float64)
    low, high = traces.min(1, keepdims=True), traces.max(1, keepdims=True)
    x = (traces - low) / (high - low)
    n, t = x.shape
    out = np.zeros((n, t, 5))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        d2 = {j: float(((centroids[i] - centroids[j]) ** 2).sum()) for j in others}
        near = [j for j in others if d2[j] < delta**2]
        far = [j for j in others if d2[j] > delta**2]
        if len(near) < 2:
            near = sorted(others, key=lambda j: (d2[j], j))[:2]
        if len(far) < 2:
            far = sorted(others, key=lambda j: (-d2[j], j))[:2]
        out[i, :, 0] = x[i]
        out[i, :, 1], out[i, :, 2] = x[near].mean(0), x[near].std(0, ddof=1)
        out[i, :, 3], out[i, :, 4] = x[far].mean(0), x[far].std(0, ddof=1)
    return out


@pytest.fixture
def recording_arrays():
    rng = np.random.default_rng(7)
    n, t = 30, 120
    traces = rng.normal(size=(n, t)).cumsum(1) * rng.uniform(0.1, 10, (n, 1)) + rng.normal(
        0, 50, (n, 1)
    )
    # integer centroids on a small grid: many pairs at exactly delta (ties), one coincident pair
    centroids = rng.integers(0, 12, size=(n, 2)).astype(float)
    centroids[1] = centroids[0]
    centroids[2] = [200.0, 200.0]  # isolated: fewer than 2 neighbours
    return traces.astype(np.float32), centroids


@pytest.mark.parametrize("delta", [3.0, 6.0, 100.0])  # sparse groups, dense groups, no far group
def test_tokens_match_plain_reference(recording_arrays, delta):
    traces, centroids = recording_arrays
    tokens = neighborhood_tokens(traces, centroids, delta)
    expected = reference_tokens(traces, centroids, delta)
    assert tokens.tokens.shape == (30, 120, len(FEATURES)) and tokens.tokens.dtype == np.float32
    np.testing.assert_allclose(tokens.tokens, expected, atol=2e-6, rtol=0)


def test_counts_fallback_flags_and_ties(recording_arrays):
    traces, centroids = recording_arrays
    delta = 3.0
    tokens = neighborhood_tokens(traces, centroids, delta)
    d = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.nan)
    with np.errstate(invalid="ignore"):
        n_near = (d < delta).sum(1)
        n_far = (d > delta).sum(1)
    assert (d == delta).any(), "the fixture should have neurons at exactly delta"
    np.testing.assert_array_equal(tokens.n_near, n_near)
    np.testing.assert_array_equal(tokens.n_far, n_far)
    np.testing.assert_array_equal(tokens.fallback, (n_near < 2) | (n_far < 2))
    assert tokens.fallback[2] and not tokens.fallback.all()


def test_chunking_does_not_change_tokens(recording_arrays):
    traces, centroids = recording_arrays
    whole = neighborhood_tokens(traces, centroids, 6.0)
    chunked = neighborhood_tokens(traces, centroids, 6.0, chunk_frames=7)
    np.testing.assert_allclose(chunked.tokens, whole.tokens, atol=1e-6)


def test_delta_in_micrometres_when_pixel_size_known(recording_arrays):
    traces, centroids = recording_arrays
    in_um = neighborhood_tokens(traces, centroids, 9.0, pixel_size_um=1.5)
    in_px = neighborhood_tokens(traces, centroids, 6.0)
    assert in_um.delta_um == 9.0 and in_um.delta_px == pytest.approx(6.0)
    assert in_px.delta_um is None and in_px.delta_px == 6.0
    np.testing.assert_array_equal(in_um.n_near, in_px.n_near)
    np.testing.assert_allclose(in_um.tokens, in_px.tokens, atol=1e-6)


def test_default_delta(recording_arrays):
    traces, centroids = recording_arrays
    with_pixel_size = neighborhood_tokens(traces, centroids, pixel_size_um=0.5)
    assert with_pixel_size.delta_um == DEFAULT_DELTA_UM == 50.0
    assert with_pixel_size.delta_px == pytest.approx(100.0)

    # without a pixel size: median over neurons of the distance to their 10th nearest neuron
    rng = np.random.default_rng(3)
    spread = rng.uniform(0, 300, size=(60, 2))
    distances = np.sort(np.sqrt(((spread[:, None] - spread[None]) ** 2).sum(-1)), axis=1)[:, 1:]
    expected = np.median(distances[:, 9])
    tokens = neighborhood_tokens(rng.normal(size=(60, 20)), spread)
    assert tokens.delta_um is None
    assert tokens.delta_px == pytest.approx(expected, rel=1e-6) == default_delta_px(spread)
    # ... so that the median neuron has about 10 neurons strictly nearer
    assert np.median(tokens.n_near) == pytest.approx(10, abs=1)


def test_non_finite_and_constant_traces_do_not_become_nan():
    traces = np.array(
        [
            [0.0, np.nan, 2.0, 4.0, np.inf],  # gap inside (linear) and at the end (previous value)
            [np.nan, 1.0, 3.0, 2.0, 1.0],  # gap at the start (next value)
            [5.0, 5.0, 5.0, 5.0, 5.0],  # constant
            [np.nan] * 5,  # no data at all
            [1.0, 2.0, 3.0, 4.0, 5.0],
        ],
        dtype=np.float32,
    )
    normalised, n_filled = normalise_traces(traces)
    np.testing.assert_allclose(normalised[0], [0, 0.25, 0.5, 1, 1])
    np.testing.assert_allclose(normalised[1], [0, 0, 1, 0.5, 0])
    np.testing.assert_array_equal(normalised[2], 0)
    np.testing.assert_array_equal(normalised[3], 0)
    np.testing.assert_array_equal(n_filled, [2, 1, 0, 5, 0])
    assert np.isnan(traces[0, 1]), "the caller's array must not be modified"

    tokens = neighborhood_tokens(traces, np.arange(10.0).reshape(5, 2), 100.0)
    assert np.isfinite(tokens.tokens).all()
    np.testing.assert_array_equal(tokens.n_filled, [2, 1, 0, 5, 0])


def test_a_range_past_the_largest_float32_is_normalised():
    # max - min overflows float32 (3.4e38) though every value is finite: the row became NaN
    traces = np.array([[-3e38, 0.0, 3e38, 1.5e38], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    normalised, n_filled = normalise_traces(traces)
    np.testing.assert_allclose(normalised, [[0, 0.5, 1, 0.75], [0, 1 / 3, 2 / 3, 1]], atol=1e-6)
    np.testing.assert_array_equal(n_filled, 0)
    assert np.isfinite(neighborhood_tokens(traces, [[0.0, 0.0], [1.0, 1.0]]).tokens).all()


def test_tiny_recordings():
    one = neighborhood_tokens(np.arange(6.0)[None], np.zeros((1, 2)), 5.0)
    np.testing.assert_allclose(one.tokens[0, :, 0], np.linspace(0, 1, 6))
    np.testing.assert_array_equal(one.tokens[..., 1:], 0)  # no neighbour at all: 0 mean, 0 std
    assert one.fallback.all()
    two = neighborhood_tokens(
        np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [1.0, 1.0]]), 5.0
    )
    np.testing.assert_allclose(two.tokens[0, :, 1], [1, 0])  # the other neuron, std 0
    np.testing.assert_array_equal(two.tokens[..., 2], 0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="centroids"):
        neighborhood_tokens(np.zeros((3, 10)), np.zeros((2, 2)), 5.0)
    with pytest.raises(ValueError, match="neurons, frames"):
        neighborhood_tokens(np.zeros(10), np.zeros((1, 2)), 5.0)
    with pytest.raises(ValueError, match="delta"):
        neighborhood_tokens(np.zeros((3, 10)), np.zeros((3, 2)), -1.0)
    with pytest.raises(ValueError, match="the recording has no neurons"):
        neighborhood_tokens(np.zeros((0, 10)), np.zeros((0, 2)), None)


def test_lazy_export():
    assert napari_neurt.neighborhood_tokens is neighborhood_tokens


def test_span_mask_is_seeded_and_hides_about_the_ratio():
    first = span_mask(50, 2000, ratio=0.15, max_span=10, seed=1)
    assert first.shape == (50, 2000) and first.dtype == bool
    np.testing.assert_array_equal(first, span_mask(50, 2000, ratio=0.15, max_span=10, seed=1))
    assert not np.array_equal(first, span_mask(50, 2000, ratio=0.15, max_span=10, seed=2))
    assert 0.11 < first.mean() < 0.16
    # many separate spans (overlapping spans join, so count the starts of runs of hidden frames)
    edges = np.diff(first.astype(int), axis=1)
    assert (edges == 1).sum() > 50 * 2000 * 0.15 / 10
    assert not span_mask(4, 100, ratio=0.0).any()


def test_activity_statistics_are_rate_and_correlations():
    rng = np.random.default_rng(3)
    n_frames = 400
    tokens = rng.normal(size=(5, n_frames, 5))
    tokens[0, :, 0] = 0.0
    tokens[0, [50, 51, 200, 300], 0] = 10.0  # 3 events: two runs of one frame, one of two
    tokens[1, :, 0] = tokens[2, :, 0] * 2 + 1  # perfectly correlated pair
    tokens[3, :, 0] = 7.0  # constant
    tokens[4, :, 1] = -tokens[4, :, 0]  # anti-correlated with its near neighbourhood
    statistics = activity_statistics(tokens)  # a bare array: no neighbours, no fifth column
    assert statistics.shape == (5, len(ACTIVITY_STATISTICS) - 1)
    assert statistics.dtype == np.float32
    assert statistics[0, 0] == pytest.approx(np.log1p(3 * 1000 / n_frames))
    own = tokens[..., 0]
    correlation = np.zeros((5, 5))
    live = [0, 1, 2, 4]
    correlation[np.ix_(live, live)] = np.corrcoef(own[live])
    np.fill_diagonal(correlation, 0.0)
    np.testing.assert_allclose(statistics[:, 1], correlation.sum(axis=1) / 4, atol=1e-6)
    assert statistics[3, 1] == 0.0 and statistics[3, 2] == 0.0  # a constant trace: 0
    assert statistics[4, 2] == pytest.approx(-1.0, abs=1e-6)
    tokens[2, :, 1] = 0.0
    tokens[2, [10, 20, 30, 40, 41], 1] = 5.0  # the neighbours' mean trace: 4 events
    assert activity_statistics(tokens)[2, 3] == pytest.approx(np.log1p(4 * 1000 / n_frames))
    assert ACTIVITY_STATISTICS[:3] == ("log_event_rate", "mean_correlation", "near_correlation")


def test_activity_statistics_average_the_nearest_neurons_event_rates():
    rng = np.random.default_rng(0)
    n_frames = 300
    traces = rng.normal(0, 0.05, (8, n_frames))
    for i in range(8):  # neuron i fires i + 1 times
        traces[i, 20 + 30 * np.arange(i + 1)] += 5.0
    centroids = np.array([[0, 10 * i] for i in range(8)], dtype=float)  # a row, 10 px apart
    tokens = neighborhood_tokens(traces, centroids, delta=15.0)
    np.testing.assert_array_equal(tokens.nearest[3], [2, 4, 1, 5, 0])  # nearest first
    assert tokens.nearest.shape == (8, NEAREST_NEURONS)
    statistics = activity_statistics(tokens)
    assert statistics.shape == (8, len(ACTIVITY_STATISTICS))
    np.testing.assert_allclose(statistics[:, :4], activity_statistics(tokens.tokens))
    rates = statistics[:, 0]
    np.testing.assert_allclose(statistics[3, 4], rates[[2, 4, 1, 5, 0]].mean(), rtol=1e-6)
    assert statistics[0, 4] < statistics[7, 4]  # the busy end of the row
    lone = neighborhood_tokens(traces[:1], centroids[:1], delta=15.0)
    assert lone.nearest.shape == (1, 0)
    lone_statistics = activity_statistics(lone)
    assert lone_statistics[0, 4] == lone_statistics[0, 0]  # its own neighbourhood


def test_nearest_neurons_break_ties_by_index_as_a_full_sort_would():
    from napari_neurt.model.tokens import _nearest

    rng = np.random.default_rng(1)
    for _ in range(100):  # centroids on a coarse grid: many equal distances
        n = int(rng.integers(2, 60))
        centroids = rng.integers(0, 6, (n, 2)).astype(float)
        d2 = ((centroids[:, None] - centroids[None]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        k = min(NEAREST_NEURONS, n - 1)
        expected = np.argsort(d2, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(_nearest(d2, k), expected)
    assert _nearest(np.full((1, 1), np.inf), 0).shape == (1, 0)
