"""napari_neurt.analysis: k-fold hiding, predictability, bad frames, event rate, the neuron table.
No Qt, no napari: a tiny random NEuRT model stands in for trained weights."""

import numpy as np
import pytest
import torch

from napari_neurt import Cancelled, Recording, analysis, simulate
from napari_neurt.model import Neurt, NeurtConfig, NeurtModel

TINY = NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32, n_classes=2, mil_hidden=8)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return NeurtModel(Neurt(TINY), class_names=("quiet", "busy"), device="cpu")


@pytest.fixture(scope="module")
def recording():
    sim = simulate.two_photon(shape=(64, 64), n_cells=15, n_frames=300, seed=0)
    return sim.recording()


def test_kfold_deals_every_frame_to_exactly_one_fold():
    folds = analysis.kfold_folds(103, n_folds=4, span=5)
    assert folds.shape == (103,)
    assert set(np.unique(folds)) == {0, 1, 2, 3}
    assert (folds[:5] == 0).all() and (folds[5:10] == 1).all() and (folds[20:25] == 0).all()
    with pytest.raises(ValueError, match="at least 2 folds"):
        analysis.kfold_folds(10, n_folds=1)
    # a short recording leaves folds empty (their passes are skipped); one fold hiding every
    # frame is refused
    assert set(analysis.kfold_folds(12, n_folds=4, span=5)) == {0, 1, 2}
    with pytest.raises(ValueError, match="needs more than 5 frames; the recording has 5"):
        analysis.kfold_folds(5, n_folds=4, span=5)


def test_a_short_recording_skips_the_folds_it_leaves_empty(tiny_model, recording):
    short = recording.select(np.arange(4))
    short = Recording(**{**short.__dict__, "traces": short.traces[:, :40]})  # 40 frames
    result = analysis.reconstruct(tiny_model, short, n_folds=6, span=10)  # folds 4, 5 empty
    assert np.isfinite(result.reconstruction).all()


def test_parse_and_format_frames_round_trip():
    hidden = analysis.parse_frames("3-5, 9; 12:13", 20)
    assert np.flatnonzero(hidden).tolist() == [3, 4, 5, 9, 12, 13]
    assert analysis.format_frames(hidden) == "3-5, 9, 12-13"
    assert analysis.frame_runs(hidden) == [(3, 5), (9, 9), (12, 13)]
    with pytest.raises(ValueError, match="past the last frame"):
        analysis.parse_frames("18-25", 20)
    with pytest.raises(ValueError, match="cannot read 'x'"):
        analysis.parse_frames("1, x", 20)
    assert analysis.format_frames(analysis.parse_frames("3 - 5, 12 :13", 20)) == "3-5, 12-13"


def test_r_squared_is_one_for_a_perfect_prediction_and_nan_when_undefined():
    truth = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    r2 = analysis.r_squared(truth, truth)
    assert r2[0] == pytest.approx(1.0) and np.isnan(r2[1])
    mean_prediction = np.full_like(truth, 1.5)
    assert analysis.r_squared(truth, mean_prediction)[0] == pytest.approx(0.0)
    mask = np.array([True, True, False, False])
    assert analysis.r_squared(truth, truth + [0, 0, 9, 9], mask)[0] == pytest.approx(1.0)


def test_kfold_reconstruction_predicts_every_frame_in_trace_units(tiny_model, recording):
    seen = []
    result = analysis.reconstruct(
        tiny_model, recording, hide="kfold", n_folds=3, span=4, progress=seen.append
    )
    n, t = recording.traces.shape
    assert result.mode == "kfold" and result.hidden.all() and result.imputed is None
    assert result.reconstruction.shape == (n, t) and result.reconstruction.dtype == np.float32
    assert np.isfinite(result.reconstruction).all()
    # in trace units: within the range of each neuron's trace (a sigmoid-free head can overshoot,
    # so compare scales, not bounds)
    low, span = analysis.trace_scale(recording.traces)
    assert np.median(np.abs(result.reconstruction - low[:, None]) / span[:, None]) < 5
    assert result.predictability.shape == (n,)
    assert result.tokens.fallback.shape == (n,)
    assert result.model["config"]["seq_len"] == 64
    assert result.parameters["n_folds"] == 3
    # progress runs over all folds, ending at total
    assert seen[-1].done == seen[-1].total and "fold 3/3" in seen[-1].stage


def test_kfold_prediction_of_a_frame_does_not_depend_on_its_value(tiny_model, recording):
    """Each frame is predicted without seeing it: changing one frame's values (in every neuron)
    leaves its own prediction unchanged."""
    options = dict(hide="kfold", n_folds=3, span=4)
    before = analysis.reconstruct(tiny_model, recording, **options)
    traces = recording.traces
    extremes = set(traces.argmin(axis=1)) | set(traces.argmax(axis=1))
    frame = next(f for f in range(150, 300) if f not in extremes)
    changed_traces = traces.copy()  # the midrange: min and max (the normalisation) stay put
    changed_traces[:, frame] = (traces.min(axis=1) + traces.max(axis=1)) / 2
    changed = Recording(**{**recording.__dict__, "traces": changed_traces})
    after = analysis.reconstruct(tiny_model, changed, **options)
    low_a, span_a = analysis.trace_scale(recording.traces)
    low_b, span_b = analysis.trace_scale(changed_traces)
    same_scale = np.allclose(low_a, low_b) & np.allclose(span_a, span_b)
    assert same_scale
    np.testing.assert_allclose(
        before.reconstruction[:, frame], after.reconstruction[:, frame], rtol=1e-4, atol=1e-5
    )


def test_adapted_kfold_passes_adapt_without_the_frames_they_hide(
    tiny_model, recording, monkeypatch
):
    """With `adapt_steps`, each k-fold pass adapts its own copy of the model, keeping the frames
    that pass hides out of the adaptation; adaptation changes the predictions, the same way every
    time, and leaves the given model as it was."""
    options = dict(hide="kfold", n_folds=3, span=4, adapt_steps=4)
    weights = {k: v.clone() for k, v in tiny_model.module.state_dict().items()}
    plain = analysis.reconstruct(tiny_model, recording, hide="kfold", n_folds=3, span=4)
    kept_out = []
    adapt = tiny_model.iter_adapt

    def spy(tokens, steps, *, hide=None, **kwargs):
        kept_out.append(np.asarray(hide).copy())
        return (yield from adapt(tokens, steps, hide=hide, **kwargs))

    monkeypatch.setattr(tiny_model, "iter_adapt", spy)
    adapted = analysis.reconstruct(tiny_model, recording, **options)
    folds = analysis.kfold_folds(recording.n_frames, 3, 4)
    assert len(kept_out) == 3
    for fold, hide in enumerate(kept_out):
        np.testing.assert_array_equal(
            hide, np.repeat((folds == fold)[None], recording.n_neurons, 0)
        )
    monkeypatch.undo()
    seen = []
    again = analysis.reconstruct(tiny_model, recording, progress=seen.append, **options)
    np.testing.assert_array_equal(adapted.reconstruction, again.reconstruction)
    # each pass reports its adaptation (steps of that pass), then its share of the reconstruction
    stages = [step.stage for step in seen]
    assert [s for s in dict.fromkeys(stages) if s.startswith("adapt")] == [
        f"adapt (reconstruct, fold {k}/3)" for k in (1, 2, 3)
    ]
    assert seen[-1].stage == "reconstruct, fold 3/3" and seen[-1].done == seen[-1].total
    assert not np.allclose(adapted.reconstruction, plain.reconstruction)
    assert adapted.parameters["adapt_steps"] == 4
    for key, value in tiny_model.module.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="adapt_steps"):
        analysis.reconstruct(tiny_model, recording, adapt_steps=-1)


def test_marked_frames_are_hidden_imputed_and_scored(tiny_model, recording):
    result = analysis.reconstruct(tiny_model, recording, hide="marked", frames="100-119, 200")
    assert np.flatnonzero(result.hidden).tolist() == [*range(100, 120), 200]
    assert result.hidden_runs == [(100, 119), (200, 200)]
    np.testing.assert_array_equal(result.imputed[:, :100], recording.traces[:, :100])
    np.testing.assert_array_equal(result.imputed[:, 105], result.reconstruction[:, 105])
    assert np.isfinite(result.predictability).all()
    assert result.parameters["hidden_frames"] == "100-119, 200"


def test_a_neuron_without_a_finite_value_is_imputed_as_unknown(tiny_model, recording):
    blank = recording.traces.copy()
    blank[0] = np.nan  # e.g. an ROI outside the field of view in this session
    given = Recording(**{**recording.__dict__, "traces": blank})
    result = analysis.reconstruct(tiny_model, given, hide="marked", frames="100-119")
    assert np.isnan(result.imputed[0, 100:120]).all()  # not a made-up 0
    assert np.isfinite(result.imputed[1:, 100:120]).all()


def test_bad_frames_do_not_leak_into_the_tokens(tiny_model, recording):
    """A wild value in a bad frame must not change the imputation: it is blanked first."""
    bad = np.zeros(recording.n_frames, bool)
    bad[[50, 51, 180]] = True
    wild = recording.traces.copy()
    wild[:, bad] = 1e6
    a = analysis.reconstruct(tiny_model, recording, hide="bad", frames=bad)
    b = analysis.reconstruct(
        tiny_model, Recording(**{**recording.__dict__, "traces": wild}), hide="bad", frames=bad
    )
    np.testing.assert_allclose(a.imputed[:, bad], b.imputed[:, bad], rtol=1e-5)
    assert np.isnan(a.predictability).all()
    assert np.all(np.abs(b.imputed) < 1e5)


def test_bad_input_is_refused_with_a_clear_message(tiny_model, recording):
    with pytest.raises(ValueError, match="hide must be one of"):
        analysis.reconstruct(tiny_model, recording, hide="random")
    with pytest.raises(ValueError, match="no frames to hide"):
        analysis.reconstruct(tiny_model, recording, hide="bad", frames=np.zeros(300, bool))
    with pytest.raises(ValueError, match="needs the frames"):
        analysis.reconstruct(tiny_model, recording, hide="marked")
    # arguments swapped (analyse takes the recording first) or traces for a recording: these
    # failed deep inside with "'NeurtModel' object has no attribute 'traces'"
    with pytest.raises(TypeError, match=r"analyse takes \(recording, model\)"):
        analysis.analyse(tiny_model, recording)
    with pytest.raises(TypeError, match=r"reconstruct takes \(model, recording\)"):
        analysis.reconstruct(recording, tiny_model)
    with pytest.raises(TypeError, match="got ndarray for the recording"):
        analysis.classify(tiny_model, recording.traces)


def test_a_stop_flag_cancels_between_batches(tiny_model, recording):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        analysis.reconstruct(tiny_model, recording, hide="kfold", stop=stop)


def test_classification_and_the_neuron_table(tiny_model, recording):
    result = analysis.analyse(recording, tiny_model, hide="kfold", n_folds=2, span=8)
    assert result.reconstruction is not None and result.classification is not None
    table = result.neuron_table()
    n = recording.n_neurons
    for column in (
        "neuron_id",
        "event_rate_per_min",
        "fallback",
        "predictability_r2",
        "class_probability",
        "p_quiet",
        "p_busy",
        "neuron_attention",
    ):
        assert column in table and len(table[column]) == n, column
    np.testing.assert_array_equal(table["neuron_id"], recording.neuron_ids)
    np.testing.assert_allclose(table["p_quiet"] + table["p_busy"], 1.0, rtol=1e-5)
    assert table["neuron_attention"].sum() == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(
        10 ** table["attention_log10_ratio"], n * table["neuron_attention"], rtol=1e-9
    )
    provenance = result.provenance()
    assert provenance["classification"]["model"]["config"]["n_classes"] == 2
    assert provenance["reconstruction"]["parameters"]["n_folds"] == 2
    # the classification sees the neighbourhood (and the batches) the reconstruction did
    narrow = analysis.analyse(recording, tiny_model, hide="kfold", n_folds=2, span=8,
                              delta=7.0, batch_size=3)
    seen = [(part.parameters["delta_px"], part.parameters["batch_size"])
            for part in (narrow.reconstruction, narrow.classification)]
    assert seen[0] == seen[1] and seen[0][1] == 3
    assert seen[0][0] != result.classification.parameters["delta_px"]


def test_event_rate_counts_transients_per_minute():
    frame_rate = 10.0
    t = np.arange(600)  # one minute
    rng = np.random.default_rng(0)
    trace = rng.normal(0, 0.01, size=(2, t.size))
    for onset in (50, 200, 203, 400):  # 203 is within 0.5 s of 200: merged
        trace[0, onset : onset + 15] += 1.0 * np.exp(-np.arange(15) / 5)
    rate = analysis.event_rate(trace, frame_rate)
    assert rate[0] == pytest.approx(3.0)
    assert rate[1] <= 1.0
    quiet = rng.normal(0, 0.1, size=(1, 600))
    quiet[0, [100, 300, 500]] = np.inf  # non-finite samples are below threshold, +inf too
    assert analysis.event_rate(quiet, frame_rate)[0] == 0.0


@pytest.mark.parametrize("frame_rate, spacing", [(5.0, 2), (9.0, 4), (29.0, 14), (30.9, 15)])
def test_crossings_closer_than_half_a_second_merge_at_any_frame_rate(frame_rate, spacing):
    """At these rates the spacing is under 0.5 s, which rounding the gap had counted as two."""
    trace = np.zeros((1, 600))
    trace[0, [100, 100 + spacing]] = 1.0
    trace += np.random.default_rng(0).normal(0, 1e-3, trace.shape)
    minutes = 600 / frame_rate / 60
    assert analysis.event_rate(trace, frame_rate)[0] * minutes == pytest.approx(1.0)


def test_frame_quality_finds_shifted_blank_dark_and_bright_frames():
    sim = simulate.two_photon(shape=(48, 48), n_cells=10, n_frames=240, seed=1)
    movie = sim.movie.astype(np.float32)
    movie[30] = np.roll(movie[30], 12, axis=1)  # a frame out of place
    movie[60] = movie[60].mean()  # blank
    movie[90] *= 0.2  # dark
    movie[120] *= 1.5  # flash
    movie[150:170] = np.roll(movie[150:170], 3, axis=2)  # a lasting shift: not a bad frame
    quality = analysis.frame_quality(movie, chunk_size=16)  # chunks: neighbours across them
    assert np.flatnonzero(quality.bad).tolist() == [30, 60, 90, 120]
    assert quality.correlation.shape == (240,)


def test_a_nan_pixel_does_not_blind_frame_quality_to_dark_and_bright_frames():
    rng = np.random.default_rng(0)
    movie = rng.normal(100, 5, (40, 12, 14))
    movie[12] *= 0.3  # dark
    movie[20] *= 3.0  # bright
    movie[30, 0, 0] = np.nan  # one damaged pixel elsewhere
    assert {12, 20} <= set(np.flatnonzero(analysis.frame_quality(movie).bad).tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_quality_flags_nothing_in_clean_simulated_movies(seed):
    for sim in (simulate.two_photon(seed=seed), simulate.miniscope(seed=seed, n_frames=300)):
        assert not analysis.frame_quality(sim.movie).bad.any(), sim


def test_bad_frames_from_traces():
    rng = np.random.default_rng(0)
    traces = rng.normal(1.0, 0.05, size=(20, 100)).astype(np.float32)
    traces[:, 10] = np.nan
    traces[:, 40] = traces[:, 39]
    traces[:, 70] *= 0.1
    assert np.flatnonzero(analysis.bad_frames_from_traces(traces)).tolist() == [10, 40, 70]


@pytest.fixture(scope="module")
def residual_model():
    """An interpolation-residual model whose (random) correction is far from right."""
    torch.manual_seed(1)
    network = Neurt(NeurtConfig(seq_len=64, n_embd=16, n_head=2, n_layer=1, n_ff=32,
                                interpolate=True, local_kernel=3))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return NeurtModel(network, device="cpu")


def test_kfold_calibrates_each_pass_without_seeing_its_frames(
    residual_model, recording
):
    options = dict(hide="kfold", n_folds=3, span=4, channels="own")
    fitted = analysis.reconstruct(residual_model, recording, **options)
    calibrations = fitted.parameters["calibrations"]
    assert len(calibrations) == 3
    assert all(0.0 <= c[share] <= 1.0 for c in calibrations for share in ("cubic", "kriging", "correction"))
    plain = analysis.reconstruct(residual_model, recording, calibrate=False, **options)
    assert plain.parameters["calibrations"] is None
    # a random correction only hurts: the calibration shrinks it, and the k-fold R^2 rises
    assert min(c["correction"] for c in calibrations) < 1.0
    assert np.nanmean(fitted.predictability) > np.nanmean(plain.predictability)
    # a frame's prediction still does not depend on its value, the calibration included
    traces = recording.traces
    extremes = set(traces.argmin(axis=1)) | set(traces.argmax(axis=1))
    frame = next(f for f in range(150, 300) if f not in extremes)
    changed_traces = traces.copy()
    changed_traces[:, frame] = (traces.min(axis=1) + traces.max(axis=1)) / 2
    changed = Recording(**{**recording.__dict__, "traces": changed_traces})
    after = analysis.reconstruct(residual_model, changed, **options)
    np.testing.assert_allclose(
        fitted.reconstruction[:, frame], after.reconstruction[:, frame], rtol=1e-4, atol=1e-5
    )


def test_class_names_that_make_the_same_column_keep_a_column_each(tiny_model, recording):
    # "Tg+" and "Tg-" are both "tg" as a column name: one class's probabilities were dropped
    model = NeurtModel(tiny_model.module, class_names=("Tg+", "Tg-"), device="cpu")
    result = analysis.analyse(recording, classifier=model)
    table = result.neuron_table()
    probability = result.classification.result.class_probability
    np.testing.assert_allclose(table["p_tg_0"], probability[:, 0])
    np.testing.assert_allclose(table["p_tg_1"], probability[:, 1])
