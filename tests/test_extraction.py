import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_neurt import Cancelled, extract_traces
from napari_neurt.extraction import (
    delta_f_over_f,
    iter_extract,
    neuropil_masks,
    PixelGroups,
    pixel_groups,
    running_percentile,
)


def grid_labels(shape=(64, 64), size=6, spacing=16):
    labels = np.zeros(shape, np.int32)
    next_id = 1
    for y in range(spacing // 2, shape[0] - size, spacing):
        for x in range(spacing // 2, shape[1] - size, spacing):
            labels[y : y + size, x : x + size] = next_id
            next_id += 1
    return labels


def naive_means(movie, labels):
    """What a user would write: a boolean mask per ROI."""
    return np.array([movie[:, labels == i].mean(axis=1) for i in np.unique(labels[labels > 0])])


@settings(max_examples=25, deadline=None)
@given(
    labels=arrays(np.int16, (12, 9), elements=st.integers(0, 5)).filter(lambda a: a.any()),
    n_frames=st.integers(1, 9),
    chunk_size=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_matches_per_roi_means_for_any_labels_and_chunking(labels, n_frames, chunk_size, seed):
    movie = np.random.default_rng(seed).integers(0, 4000, (n_frames, *labels.shape), dtype=np.uint16)
    traces = extract_traces(movie, labels, chunk_size=chunk_size)
    assert traces.dtype == np.float32
    np.testing.assert_allclose(traces, naive_means(movie, labels), rtol=1e-5)
    np.testing.assert_array_equal(extract_traces(movie, labels, chunk_size=chunk_size, workers=3), traces)
    np.testing.assert_array_equal(extract_traces(movie, labels, chunk_size=chunk_size, workers=0), traces)


def test_rows_follow_ascending_label_values_with_gaps():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 40
    labels[5:7, 5:7] = 3
    movie = np.zeros((4, 10, 10), np.float32)
    movie[:, 0:2, 0:2] = 40.0
    movie[:, 5:7, 5:7] = 3.0
    traces = extract_traces(movie, labels)
    np.testing.assert_array_equal(traces[:, 0], [3.0, 40.0])


def test_streams_a_memmap_and_matches_in_memory(tmp_path):
    labels = grid_labels()
    data = np.random.default_rng(0).integers(0, 60000, (50, 64, 64), dtype=np.uint16)
    path = tmp_path / "movie.raw"
    data.tofile(path)
    movie = np.memmap(path, dtype=np.uint16, mode="r", shape=data.shape)
    np.testing.assert_array_equal(extract_traces(movie, labels, chunk_size=7), extract_traces(data, labels))


def test_neuropil_annulus_avoids_every_roi_and_has_enough_pixels():
    labels = grid_labels((96, 96), size=6, spacing=16)
    masks = neuropil_masks(labels, inner_radius=2, min_pixels=60)
    assert len(masks) == labels.max()
    flat = labels.ravel()
    near = np.zeros(labels.shape, bool)
    from scipy import ndimage

    near = ndimage.distance_transform_edt(labels == 0) <= 2
    for roi, pixels in enumerate(masks, start=1):
        assert pixels.size >= 60
        assert not flat[pixels].any(), "an annulus took ROI pixels"
        assert not near.ravel()[pixels].any(), "an annulus took pixels inside the gap around ROIs"
        yy, xx = np.unravel_index(pixels, labels.shape)
        cy, cx = np.argwhere(labels == roi).mean(axis=0)
        assert np.hypot(yy - cy, xx - cx).max() < 16, "annulus is not around its own ROI"


def test_neuropil_annuli_do_not_depend_on_the_label_values():
    """Large or sparse ids (int64 labels from another tool) give the same annuli, quickly."""
    labels = grid_labels((64, 64), size=6, spacing=16)
    relabelled = np.where(labels > 0, labels.astype(np.int64) * 2**31 + 5, 0)
    for ours, theirs in zip(neuropil_masks(labels, min_pixels=60),
                            neuropil_masks(relabelled, min_pixels=60), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_neuropil_subtraction_removes_a_shared_background():
    labels = grid_labels()
    rng = np.random.default_rng(1)
    n_frames = 40
    cells = rng.random((labels.max(), n_frames)).astype(np.float32)
    background = (5 + np.sin(np.arange(n_frames) / 3)).astype(np.float32)
    movie = np.broadcast_to(background[:, None, None], (n_frames, *labels.shape)).copy()
    for i in range(labels.max()):
        movie[:, labels == i + 1] += cells[i][:, None]
    raw = extract_traces(movie, labels)
    corrected = extract_traces(movie, labels, neuropil=True, neuropil_coefficient=1.0)
    assert np.abs(raw - cells).max() > 3  # the background really contaminates the raw trace
    np.testing.assert_allclose(corrected, cells, atol=1e-4)
    default = extract_traces(movie, labels, neuropil=True)  # coefficient 0.7, as suite2p
    np.testing.assert_allclose(default, cells + 0.3 * background, atol=1e-4)


def test_pixel_groups_list_each_roi_then_its_annulus():
    labels = grid_labels()
    ids, groups = pixel_groups(labels, neuropil=True, min_pixels=50)
    assert len(groups) == 2 * len(ids)
    for i, roi in enumerate(ids):
        np.testing.assert_array_equal(np.sort(groups[i]), np.flatnonzero(labels == roi))
        assert groups[len(ids) + i].size >= 50


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 59), min_size=1, max_size=25, unique=True), min_size=1, max_size=8))
def test_pixel_group_means_match_plain_means_for_overlapping_groups(groups):
    groups = [np.array(g) for g in groups]
    frames = np.random.default_rng(len(groups)).random((3, 60)).astype(np.float32)
    means = PixelGroups.from_groups(groups).means(frames)
    np.testing.assert_allclose(means, np.stack([frames[:, g].mean(axis=1) for g in groups], axis=1), rtol=1e-5)


def test_reports_progress_and_cancels_between_chunks():
    movie = np.zeros((100, 16, 16), np.uint16)
    labels = grid_labels((16, 16), size=4, spacing=8)
    seen = []
    extract_traces(movie, labels, chunk_size=10, progress=seen.append)
    assert [p.done for p in seen] == list(range(10, 101, 10))
    assert all(p.total == 100 for p in seen)

    stop = threading.Event()

    def stop_after_three(p):
        if p.done >= 30:
            stop.set()

    seen.clear()
    with pytest.raises(Cancelled):
        extract_traces(movie, labels, chunk_size=10, progress=lambda p: (seen.append(p), stop_after_three(p)), stop=stop)
    assert seen[-1].done == 30


def test_step_generator_yields_then_returns_result():
    movie = np.ones((5, 8, 8), np.float32)
    labels = grid_labels((8, 8), size=2, spacing=4)
    steps = iter_extract(movie, labels, chunk_size=2)
    assert [next(steps).done for _ in range(3)] == [2, 4, 5]
    with pytest.raises(StopIteration) as done:
        next(steps)
    np.testing.assert_array_equal(done.value.value.traces, 1.0)


@pytest.mark.parametrize(
    ("movie_shape", "labels", "message"),
    [
        ((5, 8, 8), np.ones((8, 9), np.int32), "differs from the movie's frame shape"),
        ((5, 8, 8), np.full((8, 8), 1.5), "non-integer"),
        ((5, 8, 8), np.zeros((8, 8), np.int32), "empty"),
        ((8, 8), np.ones((8, 8), np.int32), "single 2-D frame"),
        ((5, 8, 8), -np.ones((8, 8), np.int32), "negative"),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(movie_shape, labels, message):
    movie = np.arange(np.prod(movie_shape), dtype=np.float32).reshape(movie_shape)
    movie_before, labels_before = movie.copy(), labels.copy()
    with pytest.raises(ValueError, match=message):
        extract_traces(movie, labels)
    np.testing.assert_array_equal(movie, movie_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_integer_valued_float_labels_are_accepted():
    movie = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    labels = grid_labels((8, 8), size=2, spacing=4)
    np.testing.assert_array_equal(extract_traces(movie, labels.astype(float)), extract_traces(movie, labels))


def test_dff_recovers_transients_on_a_drifting_baseline():
    frame_rate = 10.0
    t = np.arange(3000) / frame_rate
    baseline = 100 + 20 * t / t[-1]  # slow bleaching-like drift
    transients = np.zeros_like(t)
    transients[::200] = 1.0
    transients = np.convolve(transients, np.exp(-np.arange(30) / 5.0))[: t.size]  # dF/F of 1 at peaks
    trace = (baseline * (1 + transients))[None].astype(np.float32)
    dff = delta_f_over_f(trace, frame_rate, window_s=60, percentile=10)
    assert dff.shape == trace.shape and dff.dtype == np.float32
    peaks = dff[0, ::200][1:-1]
    np.testing.assert_allclose(peaks, 1.0, atol=0.05)
    quiet = transients < 1e-3
    assert np.abs(dff[0, quiet]).max() < 0.05


def test_dff_stays_finite_for_non_positive_baselines():
    trace = np.r_[np.zeros(50), -np.ones(50)][None].astype(np.float32)
    assert np.isfinite(delta_f_over_f(trace, 10.0, window_s=5)).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_s": 0}, "window_s"),  # was a baseline of the trace itself: dF/F all 0
        ({"window_s": -60}, "window_s"),
        ({"window_s": np.inf}, "window_s"),  # was a raw OverflowError
        ({"window_s": np.nan}, "window_s"),
        ({"frame_rate": np.inf}, "frame_rate"),
        ({"frame_rate": 0}, "frame_rate"),
    ],
)
def test_dff_refuses_a_window_or_rate_it_cannot_use(options, message):
    arguments = {"frame_rate": 10.0} | options
    with pytest.raises(ValueError, match=message):
        delta_f_over_f(np.ones((1, 20), np.float32), **arguments)


def test_running_percentile_close_to_exact_filter():
    from scipy import ndimage

    rng = np.random.default_rng(2)
    x = (50 + np.sin(np.arange(4000) / 300)[None] * 10 + rng.normal(size=(4, 4000))).astype(np.float32)
    fast = running_percentile(x, 401, 8)
    exact = ndimage.percentile_filter(x, 8, size=(1, 401), mode="nearest")
    inner = slice(400, -400)  # the exact filter pads edges, ours shifts the window inwards
    assert np.abs(fast - exact)[:, inner].max() < 0.3  # noise sd is 1, signal range 20


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_dff_of_a_non_finite_frame_spoils_only_that_frame(bad_value):
    # a NaN (or inf) frame of the movie gives every ROI a non-finite sample there; the baselines
    # of the windows around it and the floor must leave it out, or the whole trace turns NaN
    rng = np.random.default_rng(3)
    trace = (100 + rng.normal(0, 1, (2, 600))).astype(np.float32)
    spoilt = trace.copy()
    spoilt[:, 300] = bad_value
    dff = delta_f_over_f(spoilt, 10.0, window_s=10)
    assert np.isfinite(dff).sum(axis=1).tolist() == [599, 599]
    clean = delta_f_over_f(trace, 10.0, window_s=10)
    far = np.r_[0:200, 400:600]  # windows that do not hold frame 300 have the same baseline
    np.testing.assert_array_equal(dff[:, far], clean[:, far])
    near = np.r_[200:300, 301:400]  # the others lose one sample of 100 from their percentile
    np.testing.assert_allclose(dff[:, near], clean[:, near], atol=0.01)
    assert np.isfinite(delta_f_over_f(np.full((1, 50), np.nan, np.float32), 10.0)).sum() == 0
