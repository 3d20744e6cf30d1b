"""Training simulator: trace-level populations, random conditions, and the wild-type / AD-like
cohort with its ground truth, including a simple baseline classifier of the two groups."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import re
import time
import types

import numpy as np
import pytest

from napari_neurt import simulate
from napari_neurt.io import read_recording

SMALL = {"n_neurons": 120, "n_frames": 1200}


def pairwise_correlation(traces: np.ndarray) -> np.ndarray:
    """Correlation matrix of the rows of `traces` with a zero diagonal."""
    correlation = np.corrcoef(traces)
    np.fill_diagonal(correlation, 0.0)
    return correlation


def mean_pairwise_correlation(traces: np.ndarray) -> float:
    """Mean correlation over all pairs of rows, in O(N T): with unit-norm centred rows z_i, the
    sum of all correlations is |sum_i z_i|^2, of which n are the diagonal's."""
    z = traces - traces.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    return float((np.sum(z.sum(axis=0) ** 2) - n) / (n * (n - 1)))


def dff_from_fluorescence(traces: np.ndarray, frame_rate: float, block_s: float = 10.0):
    """ΔF/F over a baseline that follows drift: 10th percentile of 10 s blocks, interpolated."""
    n_neurons, n_frames = traces.shape
    block = max(int(block_s * frame_rate), 2)
    n_blocks = max(n_frames // block, 1)
    low = np.percentile(traces[:, : n_blocks * block].reshape(n_neurons, n_blocks, -1), 10, axis=2)
    centres = (np.arange(n_blocks) + 0.5) * block
    frames = np.arange(n_frames)
    baseline = np.stack([np.interp(frames, centres, row) for row in low])
    return traces / baseline - 1


def event_rates(dff: np.ndarray, duration_s: float) -> np.ndarray:
    """Onsets per second of each row 4 noise s.d. above its median (noise from the MAD of the
    frame-to-frame differences; the median is the baseline of sparsely active neurons)."""
    noise = np.median(np.abs(np.diff(dff, axis=1)), axis=1) / (0.6745 * np.sqrt(2))
    above = dff - np.median(dff, axis=1, keepdims=True) > 4 * noise[:, None]
    return (above[:, 1:] & ~above[:, :-1]).sum(1) / duration_s


def spike_rates(recording) -> np.ndarray:
    return recording.metadata["spikes"].sum(1) / recording.duration_s


# -- population -----------------------------------------------------------------------------------


def test_population_is_deterministic_for_a_seed():
    first, again, other = (simulate.population(**SMALL, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.traces, again.traces)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    for name in ("spikes", "dff", "ensembles", "dropped_frames"):
        np.testing.assert_array_equal(first.metadata[name], again.metadata[name], err_msg=name)
    assert not np.array_equal(first.traces, other.traces)
    assert not np.array_equal(first.centroids, other.centroids)


def test_population_layout_and_truth():
    recording = simulate.population(n_neurons=200, n_frames=900, frame_rate=15.0, seed=1)
    truth = recording.metadata
    assert recording.traces.shape == (200, 900) and recording.traces.dtype == np.float32
    assert recording.frame_rate == 15.0 and recording.pixel_size_um == 1.2
    assert recording.labels is None
    np.testing.assert_array_equal(recording.neuron_ids, np.arange(1, 201))
    # Centroids in pixels, inside the field that holds 200 neurons at 2000 per mm2.
    side_px = 1000 * np.sqrt(200 / 2000) / 1.2
    assert recording.centroids.min() >= 0 and recording.centroids.max() <= side_px
    assert truth["spikes"].shape == truth["dff"].shape == (200, 900)
    assert truth["ensembles"].shape == (200,) and truth["drift"].shape == (900,)
    assert truth["kind"] == "two-photon" and truth["indicator"] == "GCaMP6f"
    # Photons per frame about the documented resting level, with a good SNR.
    assert 2000 < np.median(recording.traces) < 6000
    assert 6 < np.median(truth["snr"]) < 12


def test_select_picks_the_per_neuron_truth_as_the_population_docstring_says():
    recording = simulate.population(n_neurons=20, n_frames=50, seed=2)
    which = np.array([3, 0, 7])
    picked = recording.select(which)
    for name in ("spikes", "dff", "ensembles", "snr"):
        np.testing.assert_array_equal(picked.metadata[name], recording.metadata[name][which])
    np.testing.assert_array_equal(picked.metadata["drift"], recording.metadata["drift"])
    doc = " ".join(simulate.population.__doc__.split())
    assert "`Recording.select` picks the per-neuron ones" in doc
    assert "keeps these whole: index them" not in doc  # what it said before, wrongly


def test_population_of_500_neurons_by_6000_frames_is_fast():
    simulate.population(n_neurons=50, n_frames=100)  # warm-up
    start = time.perf_counter()
    simulate.population(n_neurons=500, n_frames=6000, seed=2)
    # About 0.3 s on a shared 2-core machine; generous for busier ones.
    assert time.perf_counter() - start < 3.0


def test_traces_follow_the_true_activity_and_miniscope_is_harder():
    fidelity = {}
    for imaging in (simulate.TWO_PHOTON_TRACES, simulate.MINISCOPE_TRACES):
        recording = simulate.population(**SMALL, imaging=imaging, seed=3)
        dff = dff_from_fluorescence(recording.traces, recording.frame_rate)
        true = recording.metadata["dff"]
        correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(dff, true, strict=True)]
        fidelity[imaging.kind] = np.median(correlation)
        snr = np.median(recording.metadata["snr"])
        fidelity[imaging.kind + " snr"] = snr
    assert fidelity["two-photon"] > 0.85
    assert fidelity["miniscope"] < fidelity["two-photon"]
    assert fidelity["miniscope snr"] < fidelity["two-photon snr"]


def test_dropped_frames_are_recorded_and_look_as_documented():
    imaging = dataclasses.replace(
        simulate.TWO_PHOTON_TRACES,
        dropped_frames_per_1000=20.0,
        dropped_frame_kinds=("repeat", "dark", "nan"),
    )
    clean = dataclasses.replace(imaging, dropped_frames_per_1000=0.0)
    recording = simulate.population(**SMALL, imaging=imaging, seed=4)
    reference = simulate.population(**SMALL, imaging=clean, seed=4)  # same seed, no drops
    frames = recording.metadata["dropped_frames"]
    kinds = recording.metadata["dropped_frame_kinds"]
    assert len(frames) == len(kinds) > 10 and set(kinds) == {"repeat", "dark", "nan"}
    assert np.all(np.diff(frames) > 0) and frames.min() >= 1
    assert reference.metadata["dropped_frames"].size == 0
    intact = np.setdiff1d(np.arange(recording.n_frames), frames)
    np.testing.assert_array_equal(recording.traces[:, intact], reference.traces[:, intact])
    for frame, kind in zip(frames, kinds, strict=True):
        seen, expected = recording.traces[:, frame], reference.traces[:, frame]
        if kind == "repeat":
            previous = recording.traces[:, frame - 1]
            np.testing.assert_array_equal(seen, previous)
        elif kind == "dark":
            ratio = seen / expected
            assert np.allclose(ratio, ratio[0], rtol=1e-4) and 0.1 <= ratio[0] <= 0.7
        else:
            assert np.isnan(seen).all()
    # The defaults drop about one frame in 2000, as repeats or dark frames, never NaN.
    default = simulate.population(n_neurons=20, n_frames=20000, seed=0)
    assert 3 <= len(default.metadata["dropped_frames"]) <= 20
    assert np.isfinite(default.traces).all()


def test_neighbours_in_an_ensemble_correlate_more_than_far_neurons():
    recording = simulate.population(n_neurons=400, n_frames=3000, seed=5)
    ensembles = recording.metadata["ensembles"]
    correlation = pairwise_correlation(
        dff_from_fluorescence(recording.traces, recording.frame_rate)
    )
    position = recording.centroids * recording.pixel_size_um
    distance = np.hypot(*(position[:, None, :] - position[None, :, :]).transpose(2, 0, 1))
    same = (ensembles[:, None] == ensembles[None, :]) & (ensembles[:, None] >= 0)
    neighbours = same & (distance < 50) & (distance > 0)
    far = distance > 200
    assert neighbours.sum() > 100
    assert correlation[neighbours].mean() > 0.1
    assert correlation[neighbours].mean() > 5 * abs(correlation[far].mean())


def test_bad_population_arguments_are_explained():
    with pytest.raises(ValueError, match="dropped_frame_kinds"):
        dataclasses.replace(simulate.TWO_PHOTON_TRACES, dropped_frame_kinds=("blank",))
    with pytest.raises(ValueError, match="frame rate"):
        simulate.population(n_neurons=5, n_frames=10, frame_rate=0)
    with pytest.raises(ValueError, match="cells"):
        simulate.population(n_neurons=100, n_frames=10, field_um=30)
    with pytest.raises(ValueError, match="need a neuron"):  # was numpy's "negative dimensions"
        simulate.population(n_neurons=-1, n_frames=10)


@pytest.mark.parametrize(
    ("n_neurons", "n_frames", "name"),
    [
        ((10, 5), 100, "n_neurons"),
        (10, (0, 50), "n_frames"),
        (0, 100, "n_neurons"),
        (10, -3, "n_frames"),
    ],
)
def test_bad_training_recording_sizes_are_explained(n_neurons, n_frames, name):
    # a reversed range failed in numpy ("low >= high") once the first recording was drawn
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        next(simulate.training_recordings(1, n_neurons=n_neurons, n_frames=n_frames))


# -- conditions -----------------------------------------------------------------------------------


def test_random_conditions_span_indicators_microscopes_and_frame_rates():
    rng = np.random.default_rng(0)
    conditions = [simulate.random_condition(rng) for _ in range(400)]
    rates = np.array([c.frame_rate for c in conditions])
    assert rates.min() >= 3 and rates.max() <= 30
    assert rates.min() < 4 and rates.max() > 25 and 8 < np.median(rates) < 14
    assert {c.indicator for c in conditions} == set(simulate.INDICATORS)
    kinds = [c.kind for c in conditions]
    assert 0.2 < kinds.count("miniscope") / len(kinds) < 0.4
    miniscope = [c for c in conditions if c.kind == "miniscope"]
    assert all(c.indicator != "OGB-1" and c.frame_rate <= 20 for c in miniscope)
    assert len({c.imaging.photons for c in conditions}) == len(conditions)
    assert len({c.activity.rate_hz for c in conditions}) == len(conditions)
    again = simulate.random_condition(np.random.default_rng(0))
    assert again == conditions[0]


def test_training_recordings_stream_varied_reproducible_recordings():
    options = {"n_neurons": (20, 60), "n_frames": (100, 300)}
    stream = simulate.training_recordings(6, seed=1, **options)
    assert isinstance(stream, types.GeneratorType)
    recordings = list(stream)
    assert len(recordings) == 6
    assert all(20 <= r.n_neurons <= 60 and 100 <= r.n_frames <= 300 for r in recordings)
    assert len({r.frame_rate for r in recordings}) == 6
    assert all("condition" in r.metadata for r in recordings)
    # Recording k depends on the seed and k only: an endless stream starts the same way.
    endless = simulate.training_recordings(None, seed=1, **options)
    for made, again in zip(recordings, itertools.islice(endless, 6), strict=True):
        np.testing.assert_array_equal(made.traces, again.traces)
    fixed = simulate.Condition(indicator="jGCaMP8m", frame_rate=10.0)
    same = list(simulate.training_recordings(2, seed=2, n_neurons=30, n_frames=50, condition=fixed))
    assert all(r.metadata["indicator"] == "jGCaMP8m" and r.frame_rate == 10.0 for r in same)


def test_denoised_share_swaps_whole_recordings_for_their_true_dff():
    options = {"n_neurons": 30, "n_frames": 200}
    raw = list(simulate.training_recordings(12, seed=3, **options))
    mixed = list(simulate.training_recordings(12, seed=3, denoised_share=0.5, **options))
    kinds = [r.metadata["trace_kind"] for r in mixed]
    assert 0 < kinds.count("denoised") < 12
    for plain, made in zip(raw, mixed, strict=True):
        # the same recording either way; only the traces of a denoised one change
        np.testing.assert_array_equal(plain.centroids, made.centroids)
        expected = (
            plain.metadata["dff"] if made.metadata["trace_kind"] == "denoised" else plain.traces
        )
        np.testing.assert_array_equal(made.traces, expected)
    with pytest.raises(ValueError, match="denoised_share"):
        next(simulate.training_recordings(1, denoised_share=1.5))
    with pytest.raises(ValueError, match='metadata\\["dff"\\]'):
        simulate.denoised(_without_truth(raw[0]))


def _without_truth(recording):
    metadata = {k: v for k, v in recording.metadata.items() if k != "dff"}
    return dataclasses.replace(recording, metadata=metadata)


# -- cohort ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def animals() -> list[simulate.CohortAnimal]:
    return simulate.cohort(6, seed=0, n_neurons=200, n_frames=1800)


def test_cohort_is_balanced_blind_and_reproducible(animals):
    groups = [animal.group for animal in animals]
    assert groups.count("wild type") == groups.count("AD-like") == 6
    assert groups != sorted(groups)  # interleaved at random
    assert [animal.animal for animal in animals] == [f"animal-{k:02d}" for k in range(1, 13)]
    assert len({animal.recording.n_neurons for animal in animals}) > 6  # animals differ
    first, again = (simulate.cohort(1, seed=3, n_neurons=50, n_frames=100) for _ in range(2))
    for animal, same in zip(first, again, strict=True):
        np.testing.assert_array_equal(animal.recording.traces, same.recording.traces)
        np.testing.assert_array_equal(animal.affected, same.affected)


def test_affected_neurons_are_ad_like_and_clustered_around_plaques(animals):
    phenotype = simulate.Phenotype()
    reach = phenotype.plaque_radius_um + phenotype.hyperactive_radius_um
    for animal in animals:
        recording = animal.recording
        assert animal.affected.shape == (recording.n_neurons,) and animal.affected.dtype == bool
        if animal.group == "wild type":
            assert not animal.affected.any() and animal.plaques.shape == (0, 2)
            continue
        assert len(animal.plaques) >= 1 and 0 < animal.affected.mean() < 0.6
        um = recording.pixel_size_um
        offset = recording.centroids[:, None, :] - animal.plaques[None, :, :]
        nearest = np.hypot(*offset.transpose(2, 0, 1)).min(axis=1) * um
        np.testing.assert_array_equal(animal.affected, nearest <= reach)
        assert nearest.min() >= phenotype.plaque_radius_um  # no soma in a plaque
        np.testing.assert_array_equal(recording.metadata["affected"], animal.affected)


def test_affected_neurons_fire_more_than_their_unaffected_neighbours(animals):
    for animal in animals:
        if animal.group == "AD-like":
            rates = spike_rates(animal.recording)
            assert rates[animal.affected].mean() > 2 * rates[~animal.affected].mean()


def test_documented_spike_ratio_and_ensemble_share_are_what_the_simulator_gives():
    # The figures in cohort's and Activity's docstrings, against a measurement (fixed seeds).
    # They said 2.8 times the spikes (measured 2.6) and two thirds of the neurons in an
    # ensemble (measured 0.58).
    doc = " ".join(simulate.cohort.__doc__.split())
    documented = float(re.search(r"about ([\d.]+) times the spikes", doc).group(1))
    ratios = []
    for animal in simulate.cohort(8, seed=0, n_neurons=300, n_frames=1500):
        if animal.group == "AD-like":
            spikes = animal.recording.metadata["spikes"].sum(axis=1)
            ratios.append(spikes[animal.affected].mean() / spikes[~animal.affected].mean())
    assert abs(np.mean(ratios) - documented) < 0.1, (np.mean(ratios), documented)

    doc = " ".join(simulate.Activity.__doc__.split())
    documented = float(re.search(r"about (\d+) % of the neurons in an ensemble", doc).group(1))
    share = np.mean(
        [
            (
                simulate.population(n_neurons=600, n_frames=10, seed=s).metadata["ensembles"] >= 0
            ).mean()
            for s in range(3)
        ]
    )
    assert abs(share - documented / 100) < 0.05, (share, documented)


def test_ad_like_animals_are_less_synchronous_on_average(animals):
    def synchrony(animal, truth: bool) -> float:
        if truth:
            return mean_pairwise_correlation(animal.recording.metadata["dff"])
        return recording_features(animal.recording)[1]

    for truth in (True, False):
        by_group = {group: [] for group in simulate.GROUPS}
        for animal in animals:
            by_group[animal.group].append(synchrony(animal, truth))
        assert np.mean(by_group["AD-like"]) < 0.7 * np.mean(by_group["wild type"]), truth


@pytest.mark.parametrize(
    "options", [{"effect": float("nan")}, {"effect": -1.0}, {"n_neurons": 0}, {"n_per_group": 0}]
)
def test_bad_cohort_arguments_are_explained(options):
    # effect=NaN failed in numpy ("lam value too large"); n_neurons=0 gave animals of 1 neuron
    arguments = {"n_per_group": 1, "n_neurons": 5, "n_frames": 20, **options}
    with pytest.raises(ValueError, match="need n_per_group >= 1, n_neurons >= 1 and effect >= 0"):
        simulate.cohort(arguments.pop("n_per_group"), **arguments)


def test_write_cohort_round_trips_through_read_recording(animals, tmp_path):
    manifest = simulate.write_cohort(tmp_path / "cohort", animals[:4])
    assert manifest == tmp_path / "cohort" / "manifest.csv"
    with open(manifest, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["animal"] for row in rows] == [animal.animal for animal in animals[:4]]
    assert sorted(p.name for p in manifest.parent.iterdir()) == sorted(
        [row["path"] for row in rows] + ["manifest.csv"]
    )
    for row, animal in zip(rows, animals, strict=False):
        assert row["label"] == animal.group
        path = manifest.parent / row["path"]
        recording = read_recording(path)
        np.testing.assert_array_equal(recording.traces, animal.recording.traces)
        np.testing.assert_array_equal(recording.centroids, animal.recording.centroids)
        np.testing.assert_array_equal(recording.neuron_ids, animal.recording.neuron_ids)
        assert recording.frame_rate == animal.recording.frame_rate
        assert recording.pixel_size_um == animal.recording.pixel_size_um
        with np.load(path) as arrays:
            np.testing.assert_array_equal(arrays["affected"], animal.affected)
            np.testing.assert_array_equal(arrays["plaques"], animal.plaques)


# -- how hard is the classification? --------------------------------------------------------------


def recording_features(recording) -> tuple[float, float]:
    """Log mean event rate and mean pairwise correlation of ΔF/F, as an experimenter measures
    them, leaving out the dropped frames (one dark frame, shared by all neurons, would add a
    large correlation of its own)."""
    intact = np.setdiff1d(np.arange(recording.n_frames), recording.metadata["dropped_frames"])
    dff = dff_from_fluorescence(recording.traces[:, intact], recording.frame_rate)
    return (
        float(np.log(event_rates(dff, recording.duration_s).mean())),
        mean_pairwise_correlation(dff),
    )


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Weights (bias first) of an L2-regularised logistic regression, by Newton's method."""
    x = np.column_stack([np.ones(len(features)), features])
    weights = np.zeros(x.shape[1])
    penalty = l2 * np.diag([0.0] + [1.0] * features.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ weights))
        gradient = x.T @ (p - labels) + penalty @ weights
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def leave_one_out_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the logistic regression on each animal, fitted on the others (standardised)."""
    correct = []
    for k in range(len(labels)):
        train = np.arange(len(labels)) != k
        mean, sd = features[train].mean(0), features[train].std(0)
        weights = fit_logistic((features[train] - mean) / sd, labels[train])
        score = weights[0] + ((features[k] - mean) / sd) @ weights[1:]
        correct.append((score > 0) == labels[k])
    return float(np.mean(correct))


def baseline_accuracy(effect: float) -> float:
    animals = simulate.cohort(12, seed=11, n_neurons=150, n_frames=1500, effect=effect)
    features = np.array([recording_features(animal.recording) for animal in animals])
    labels = np.array([animal.group == "AD-like" for animal in animals], dtype=float)
    return leave_one_out_accuracy(features, labels)


def test_a_simple_baseline_is_better_than_chance_but_not_perfect():
    # Logistic regression on event rate and synchrony, leave-one-animal-out over 24 animals:
    # the default phenotype is detectable from two summary statistics, a weak one is not.
    default, weak = baseline_accuracy(effect=1.0), baseline_accuracy(effect=0.25)
    print(f"baseline accuracy: {default:.2f} at effect 1, {weak:.2f} at effect 0.25")
    assert default >= 0.7
    assert weak < 0.8 and weak < default


@pytest.mark.parametrize("n_neurons", [1, 2])
def test_a_cohort_of_tiny_animals_has_room_beside_its_plaques(n_neurons):
    for seed in range(8):  # seeds 4 (one neuron) and 1 (two) once had no room left
        animals = simulate.cohort(1, seed=seed, n_neurons=n_neurons, n_frames=10)
        assert all(a.recording.n_neurons >= 1 for a in animals)


@pytest.mark.parametrize("timescale_s", [0.005, 0.01, 1.0])
def test_drift_keeps_its_amplitude_at_any_time_scale(timescale_s):
    from napari_neurt.simulate.imaging import drift_trace

    drift = drift_trace(200_000, 30.0, rng=np.random.default_rng(0), amplitude=0.02,
                        timescale_s=timescale_s)
    assert drift.std() == pytest.approx(0.02, rel=0.05)  # below a frame it fell to 0.0015
    with pytest.raises(ValueError, match="time scale must be positive"):
        drift_trace(10, 30.0, rng=np.random.default_rng(0), timescale_s=0.0)
