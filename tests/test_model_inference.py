"""Whole-recording inference: windows and blending, hiding, batching, progress, cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy.interpolate import PchipInterpolator

from napari_neurt import Cancelled, Progress, Recording
from napari_neurt.model import (
    Calibration,
    NeurtModel,
    kriging_fill,
    pchip_fill,
    window_starts,
    window_taper,
)
from napari_neurt.model.neurt import Neurt, NeurtConfig

L = 32  # seq_len of the small test model


def small_model(seed: int = 0, **overrides) -> NeurtModel:
    torch.manual_seed(seed)
    config = NeurtConfig(
        **{**dict(seq_len=L, n_embd=16, n_head=2, n_layer=2, n_ff=32), **overrides}
    )
    network = Neurt(config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    names = tuple(f"class {k}" for k in range(config.n_classes))
    return NeurtModel(network, class_names=names, device="cpu")


def random_tokens(n: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, t, 5), dtype=np.float32)


def smooth_tokens(n: int, t: int) -> np.ndarray:
    frames = np.arange(t)[None, :, None]
    phase = np.arange(n)[:, None, None] + np.arange(5)[None, None, :]
    return (0.5 + 0.4 * np.sin(2 * np.pi * frames / 150 + phase)).astype(np.float32)


def test_windows_cover_the_recording():
    starts = window_starts(3 * L + 17, L, L // 4)
    np.testing.assert_array_equal(starts, [0, 20, 40, 61, 81])  # evenly spaced, first 0, last T - L
    assert (np.diff(starts) <= L - L // 4).all()  # overlap at least as asked
    np.testing.assert_array_equal(window_starts(10, 10, 5), [0])
    np.testing.assert_array_equal(window_starts(64, 32, 0), [0, 32])
    np.testing.assert_array_equal(window_starts(65, 32, 0), [0, 16, 33])
    taper = window_taper(L)
    assert taper.min() > 0 and taper.argmax() in (L // 2 - 1, L // 2)


def test_single_window_equals_the_network():
    model = small_model()
    tokens = random_tokens(4, L)
    with torch.inference_mode():
        direct = model.module(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(model.reconstruct(tokens), direct, atol=1e-6)


@pytest.mark.parametrize("overlap", [None, 0, L // 2])
def test_long_recording_shape_and_blending(overlap):
    """3 x seq_len + 17 frames: a frame seen by one window is that window's output, a frame seen
    by several is a convex mix of theirs."""
    model = small_model()
    n_frames = 3 * L + 17
    tokens = random_tokens(3, n_frames)
    out = model.reconstruct(tokens, overlap=overlap)
    assert out.shape == (3, n_frames, 5) and out.dtype == np.float32
    starts = window_starts(n_frames, L, model.default_overlap if overlap is None else overlap)
    per_window = np.full((len(starts), 3, n_frames, 5), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for k, start in enumerate(starts):
            per_window[k, :, start : start + L] = model.module(
                torch.from_numpy(tokens[:, start : start + L])
            )
    seen_by = (~np.isnan(per_window[:, 0, :, 0])).sum(0)
    assert seen_by.min() == 1 and seen_by.max() >= 2
    alone = seen_by == 1
    np.testing.assert_allclose(out[:, alone], np.nanmax(per_window, 0)[:, alone], atol=1e-6)
    assert (out >= np.nanmin(per_window, 0) - 1e-6).all() and (
        out <= np.nanmax(per_window, 0) + 1e-6
    ).all()


def test_no_seams_at_window_boundaries():
    """With a position embedding that drifts along the window, hard window edges make visible
    jumps; the tapered blend must not."""
    model = small_model()
    with torch.no_grad():
        ramp = torch.linspace(0.5, 3, L)[:, None] * torch.randn(16)  # smooth along the window
        model.module.pos.weight.copy_(ramp)
    n_frames = 3 * L + 17
    tokens = smooth_tokens(4, n_frames)

    def worst_jump_at_edges_vs_inside(out, starts):
        steps = np.abs(np.diff(out, axis=1)).max(axis=(0, 2))  # step from frame f to f + 1
        n = out.shape[1]
        edges = {s - 1 for s in starts if s > 0} | {s + L - 1 for s in starts if s + L < n}
        inside = np.setdiff1d(np.arange(len(steps)), sorted(edges))
        return steps[sorted(edges)].max(), steps[inside].max()

    # control: 3 windows end to end, without overlap, meet in hard seams that the measure sees
    hard_jump, hard_inside = worst_jump_at_edges_vs_inside(
        model.reconstruct(tokens[:, : 3 * L], overlap=0), window_starts(3 * L, L, 0)
    )
    assert hard_jump > 4 * hard_inside

    for overlap in (model.default_overlap, L // 2):
        blended = model.reconstruct(tokens, overlap=overlap)
        jump, inside = worst_jump_at_edges_vs_inside(blended, window_starts(n_frames, L, overlap))
        assert jump <= 1.5 * inside
    # and it does not depend much on where the windows fall
    other = model.reconstruct(tokens, overlap=L // 2 + 4)
    assert np.abs(other - blended).max() < 0.5 * np.abs(blended).max()


def test_recording_shorter_than_a_window():
    model = small_model()
    tokens = random_tokens(2, 11)
    out = model.reconstruct(tokens)
    with torch.inference_mode():
        direct = model.module(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(out, direct, atol=1e-6)


def test_hide_all_channels_and_own_channel():
    model = small_model()
    tokens = random_tokens(3, 2 * L + 5)
    hide = np.zeros(tokens.shape[:2], dtype=bool)
    hide[:, 10:20] = True
    changed = tokens.copy()
    changed[:, 10:20, 0] += 5.0  # what the model must not see
    np.testing.assert_array_equal(model.reconstruct(changed, hide), model.reconstruct(tokens, hide))
    np.testing.assert_array_equal(
        model.reconstruct(changed, hide, channels="own"),
        model.reconstruct(tokens, hide, channels="own"),
    )
    assert not np.allclose(model.reconstruct(changed), model.reconstruct(tokens))

    neighbours_changed = tokens.copy()
    neighbours_changed[:, 10:20, 1] += 5.0
    # channels="all" hides the neighbourhood too; channels="own" leaves it visible
    np.testing.assert_array_equal(
        model.reconstruct(neighbours_changed, hide), model.reconstruct(tokens, hide)
    )
    assert not np.allclose(
        model.reconstruct(neighbours_changed, hide, channels="own"),
        model.reconstruct(tokens, hide, channels="own"),
    )
    # hiding zeroes the hidden steps: same as giving zeros there
    zeroed = tokens.copy()
    zeroed[hide] = 0
    np.testing.assert_allclose(
        model.reconstruct(tokens, hide), model.reconstruct(zeroed), atol=1e-6
    )


def test_batches_deterministic_and_independent_of_batch_size():
    model = small_model()
    tokens = random_tokens(5, 2 * L + 9)
    hide = np.random.default_rng(0).random(tokens.shape[:2]) < 0.2
    first = model.reconstruct(tokens, hide, batch_size=4)
    np.testing.assert_array_equal(first, model.reconstruct(tokens, hide, batch_size=4))
    np.testing.assert_allclose(first, model.reconstruct(tokens, hide, batch_size=1), atol=1e-5)
    np.testing.assert_allclose(first, model.reconstruct(tokens, hide, batch_size=1000), atol=1e-5)


def test_progress_and_cancellation():
    model = small_model()
    tokens = random_tokens(3, 2 * L)
    assert len(window_starts(2 * L, L, model.default_overlap)) == 3  # so 9 windows in all
    seen: list[Progress] = []
    model.reconstruct(tokens, batch_size=4, progress=seen.append)
    assert [(p.done, p.total, p.stage) for p in seen] == [
        (4, 9, "reconstruct"),
        (8, 9, "reconstruct"),
        (9, 9, "reconstruct"),
    ]

    stop = threading.Event()

    def stop_after_first(progress):
        stop.set()

    with pytest.raises(Cancelled, match="reconstruct at 4/9"):
        model.reconstruct(tokens, batch_size=4, progress=stop_after_first, stop=stop)

    # a napari worker drives the same generator with `yield from`
    steps = model.iter_reconstruct(tokens, batch_size=4)
    assert isinstance(next(steps), Progress)
    steps.close()


def test_out_of_memory_halves_the_batch(monkeypatch):
    model = small_model()
    tokens = random_tokens(4, 2 * L)
    expected = model.reconstruct(tokens, batch_size=16)
    sizes = []
    network_forward = model.module.forward

    def forward_with_small_memory(batch, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return network_forward(batch, *args, **kwargs)

    monkeypatch.setattr(model.module, "forward", forward_with_small_memory)
    out = model.reconstruct(tokens, batch_size=16)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert sizes[:3] == [12, 6, 3] and set(sizes[3:]) <= {3} and model.last_batch_size == 3


def test_classify_without_recording_head_uses_session_rule():
    model = small_model(n_classes=2)
    tokens = random_tokens(4, 2 * L + 3)
    result = model.classify(tokens, batch_size=5)
    starts = window_starts(2 * L + 3, L, model.default_overlap)
    n_windows = len(starts)
    assert result.neuron_probability.shape == (4,) and result.temporal_attention.shape == (
        4,
        2 * L + 3,
    )
    assert result.class_probability.shape == (4, 2) and result.neuron_embedding.shape == (4, 16)
    np.testing.assert_allclose(result.class_probability.sum(1), 1, atol=1e-6)
    assert not result.recording_head and "session rule" in result.recording_rule
    np.testing.assert_allclose(result.neuron_attention, 0.25)

    # session rule, recomputed window by window
    calls, probabilities = [], []
    for neuron in range(4):
        for start in starts:
            with torch.inference_mode():
                logits, _, _ = model.module.classify_windows(
                    torch.from_numpy(tokens[neuron : neuron + 1, start : start + L])
                )
            calls.append(int(logits.argmax()))
            probabilities.append(float(logits.softmax(-1)[0, 1]))
    assert result.recording_probability == pytest.approx(np.mean(np.array(calls) == 1))
    np.testing.assert_allclose(
        result.neuron_probability, np.array(probabilities).reshape(4, n_windows).mean(1), atol=1e-6
    )
    # each window's pooling weights sum to 1, so the stitched map averages to 1 / seq_len
    np.testing.assert_allclose(result.temporal_attention.mean(1), 1 / L, rtol=0.3)


def test_verdict_of_a_model_without_class_names():
    # a checkpoint may name no classes: the panel said "P(class 1) = ..." before the verdict line
    from napari_neurt.model.inference import verdict

    model = small_model(n_classes=2)
    model.class_names = ()
    result = model.classify(random_tokens(4, 2 * L + 3), batch_size=5)
    probability = result.recording_class_probability[1]
    assert verdict(result.class_names, result.recording_class_probability) == (
        f"P(class 1) = {probability:.3f}"
    )
    assert verdict((), [0.2, 0.5, 0.3]) == "class 1 (P(class 0) = 0.200, P(class 1) = 0.500, " \
        "P(class 2) = 0.300)"


def test_classify_with_recording_head():
    model = small_model(n_classes=2, mil_hidden=8)
    tokens = random_tokens(6, L + 5)
    result = model.classify(tokens)
    assert result.recording_head and "gated-attention" in result.recording_rule
    assert result.neuron_attention.shape == (6,)
    assert result.neuron_attention.sum() == pytest.approx(1, abs=1e-6)
    assert 0 <= result.recording_probability <= 1
    order = np.array([5, 3, 1, 0, 2, 4])
    permuted = model.classify(tokens[order])
    np.testing.assert_allclose(permuted.neuron_attention, result.neuron_attention[order], atol=1e-6)
    assert permuted.recording_probability == pytest.approx(result.recording_probability, abs=1e-6)


def test_attention_maps_of_one_window():
    model = small_model()
    tokens = random_tokens(1, 3 * L)
    maps = model.attention_maps(tokens[0], start=7)
    assert maps.shape == (2, 2, L, L) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(-1), 1, atol=1e-5)
    with torch.inference_mode():
        _, expected = model.module.encode(torch.from_numpy(tokens[:, 7 : 7 + L]), exact=True)
    np.testing.assert_allclose(maps[1], expected[1][0].numpy(), atol=1e-6)
    assert model.attention_maps(tokens[0, :10]).shape == (2, 2, 10, 10)
    with pytest.raises(ValueError, match="start"):
        model.attention_maps(tokens[0], start=3 * L - 5)
    with pytest.raises(ValueError, match="one neuron"):
        model.attention_maps(random_tokens(2, L))


def test_tokens_for_a_recording():
    model = small_model()
    rng = np.random.default_rng(0)
    recording = Recording(
        traces=rng.normal(size=(8, 50)),
        neuron_ids=np.arange(1, 9),
        centroids=rng.uniform(0, 40, (8, 2)),
        frame_rate=10.0,
        pixel_size_um=2.0,
    )
    tokens = model.tokens_for(recording)
    assert tokens.shape == (8, 50, 5) and tokens.delta_um == 50.0 and tokens.delta_px == 25.0
    assert model.reconstruct(tokens).shape == (8, 50, 5)  # NeighborhoodTokens are accepted as such
    model.token_settings["delta_um"] = 12.0  # a model trained with its own radius uses it
    assert model.tokens_for(recording).delta_um == 12.0
    model.frame_rate_hz = 30.0
    with pytest.warns(UserWarning, match="trained at 30 Hz"):
        model.tokens_for(recording)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.reconstruct(np.zeros((2, 40, 4), np.float32)), r"\(neurons, frames, 5\)"),
        (lambda m: m.reconstruct(np.zeros((40, 5), np.float32)), r"\(neurons, frames, 5\)"),
        (
            lambda m: m.reconstruct(np.zeros((2, 40, 5), np.float32), np.zeros((2, 39), bool)),
            "shape of the tokens",
        ),
        (lambda m: m.reconstruct(np.zeros((2, 40, 5), np.float32), np.zeros((2, 40))), "boolean"),
        (
            lambda m: m.reconstruct(np.zeros((2, 40, 5), np.float32), channels="neighbours"),
            "channels must be one of",
        ),
        (lambda m: m.reconstruct(np.full((2, 40, 5), np.nan, np.float32)), "NaN"),
        (lambda m: m.reconstruct(np.zeros((2, 40, 5), np.float32), overlap=L), "overlap"),
        (lambda m: m.reconstruct(np.zeros((2, 40, 5), np.float32), batch_size=0), "batch_size"),
        (lambda m: m.classify(np.zeros((2, 40, 5), np.float32)), "no classifier"),
    ],
)
def test_bad_input_gives_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(small_model())


# --- calibration ----------------------------------------------------------------------------
def gap_mask(n: int, t: int) -> np.ndarray:
    hide = np.zeros((n, t), dtype=bool)
    for neuron in range(n):
        start = 5 + 7 * neuron
        hide[neuron, start : start + 6] = True
    return hide


def test_calibration_moves_between_the_fills_and_the_model():
    model = small_model(interpolate=True, local_kernel=3)
    tokens, hide = smooth_tokens(3, L), gap_mask(3, L)  # one window, gaps inside it
    own = tokens[..., 0]

    def run(cubic, correction):
        calibration = Calibration(cubic=cubic, correction=correction)
        return model.reconstruct(tokens, hide, channels="own", calibration=calibration)

    full, linear, cubic, half = run(0, 1), run(0, 0), run(1, 0), run(0.5, 0.5)
    np.testing.assert_array_equal(full, model.reconstruct(tokens, hide, channels="own"))
    # correction 0: the own trace is the straight line (cubic 0) or SciPy's PCHIP (cubic 1)
    t = np.arange(L)
    line = np.stack([np.interp(t, t[~h], y[~h]) for y, h in zip(own, hide, strict=True)])
    pchip = np.stack(
        [PchipInterpolator(t[~h], y[~h])(t) for y, h in zip(own, hide, strict=True)]
    )
    np.testing.assert_allclose(linear[..., 0][hide], line[hide], atol=1e-5)
    np.testing.assert_allclose(cubic[..., 0][hide], pchip[hide], atol=1e-5)
    assert np.abs(pchip - line)[hide].max() > 1e-3  # the two fills differ here
    assert np.abs(full - linear)[..., 0][hide].max() > 1e-3  # the model does correct
    np.testing.assert_allclose(half, (cubic + full) / 2, atol=1e-5)
    visible = np.repeat(~hide[..., None], 5, axis=2)
    visible[..., 1:] = True  # the neighbourhood is not hidden: the cubic moves none of it
    np.testing.assert_array_equal(cubic[visible], linear[visible])
    with pytest.raises(ValueError, match="interpolation-residual"):
        small_model().reconstruct(tokens, hide, calibration=Calibration(correction=0.5))
    with pytest.raises(TypeError, match="Calibration"):
        model.reconstruct(tokens, hide, calibration=0.5)


@pytest.mark.parametrize(
    "values, message",
    [({"correction": float("nan")}, "finite"), ({"cubic": 1.5}, "between 0 and 1"),
     ({"cubic": "0"}, "finite"), ({"kriging": -0.1}, "between 0 and 1"),
     ({"cubic": 0.6, "kriging": 0.5}, "at most 1")],
)
def test_calibration_refuses_bad_shares(values, message):
    with pytest.raises(ValueError, match=message):
        Calibration(**values)


def test_calibration_takes_numpy_numbers_and_stores_floats():
    calibration = Calibration(cubic=np.float32(0.25), correction=np.int64(1))
    assert calibration == Calibration(0.25, 1.0)
    assert type(calibration.cubic) is float and type(calibration.correction) is float
    assert calibration.to_dict() == {"cubic": 0.25, "correction": 1.0, "kriging": 0.0}
    assert calibration.describe() == "cubic 0.25, correction 1.00, kriging 0.00"


def test_calibration_fit_is_least_squares_within_bounds():
    rng = np.random.default_rng(0)
    cubic, kriging, correction = rng.normal(size=(3, 200))
    zero = 0 * cubic

    def fit(target, towards_cubic=cubic, towards_kriging=kriging, model=correction):
        return Calibration.fit(target, towards_cubic=towards_cubic,
                               towards_kriging=towards_kriging, correction=model)

    fitted = fit(0.3 * cubic + 0.2 * kriging + 0.6 * correction)
    assert (fitted.cubic, fitted.kriging, fitted.correction) == pytest.approx(
        (0.3, 0.2, 0.6), abs=1e-6
    )
    # never beyond the fills nor amplifying the correction; an empty column stays as trained
    assert fit(3 * cubic, towards_kriging=zero, model=zero) == Calibration(1, 1, 0)
    assert fit(-correction, zero, zero) == Calibration(0, 0, 0)
    assert fit(2 * kriging, zero, kriging, zero) == Calibration(0, 1, 1)


def test_calibration_fit_keeps_the_fill_a_blend_and_is_the_constrained_optimum():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    columns = rng.normal(size=(3, 300))
    target = columns.T @ [0.8, 0.7, 0.4] + 0.1 * rng.normal(size=300)  # fill shares sum past 1
    fitted = Calibration.fit(target, towards_cubic=columns[0], towards_kriging=columns[1],
                             correction=columns[2])
    assert fitted.cubic + fitted.kriging == pytest.approx(1.0)

    def loss(shares):
        return np.sum((target - columns.T @ shares) ** 2)

    # an independent solver of the same problem (bounds and c + k <= 1) agrees
    best = minimize(loss, [0.3, 0.3, 0.5], method="SLSQP", bounds=[(0, 1)] * 3,
                    constraints=[{"type": "ineq", "fun": lambda s: 1 - s[0] - s[1]}],
                    options={"ftol": 1e-12})
    shares = [fitted.cubic, fitted.kriging, fitted.correction]
    assert loss(shares) <= best.fun + 1e-6
    np.testing.assert_allclose(shares, best.x, atol=1e-4)


def test_calibration_fit_keeps_shares_the_solver_rounds_past_a_bound():
    # SciPy's BVLS can return a coefficient a rounding error past its bound (here a cubic share
    # of -8.7e-19), which Calibration refused: calibrate, and analysis.reconstruct with it, then
    # failed (about one fit in 2,500 of such data; found on a one-neuron recording)
    rng = np.random.default_rng(4653)
    columns, target = rng.normal(size=(10, 3)), rng.normal(size=10)
    fitted = Calibration.fit(target, towards_cubic=columns[:, 0], towards_kriging=columns[:, 1],
                             correction=columns[:, 2])
    shares = [fitted.cubic, fitted.kriging, fitted.correction]
    assert all(0.0 <= share <= 1.0 for share in shares)
    assert fitted.cubic + fitted.kriging <= 1.0


def test_pchip_fill_is_scipys_inside_and_flat_outside():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 3, 30)).astype(np.float32)
    hidden = rng.random((2, 3, 30)) < 0.4
    hidden[0, 0, :3] = hidden[0, 0, -2:] = True  # hidden ends
    hidden[0, 1] = True  # nothing visible
    hidden[0, 2] = True
    hidden[0, 2, 7] = False  # one visible step
    filled = pchip_fill(values, hidden)
    assert filled.dtype == np.float32
    np.testing.assert_array_equal(filled[~hidden], values[~hidden])
    row, where = values[1, 0], hidden[1, 0]
    t = np.arange(30)
    inside = where & (t > t[~where][0]) & (t < t[~where][-1])
    np.testing.assert_allclose(
        filled[1, 0][inside], PchipInterpolator(t[~where], row[~where])(t[inside]), rtol=1e-5
    )
    seen = t[~hidden[0, 0]]
    assert (filled[0, 0, :3] == values[0, 0, seen[0]]).all()
    assert (filled[0, 0, -2:] == values[0, 0, seen[-1]]).all()
    assert (filled[0, 1] == 0).all() and (filled[0, 2] == values[0, 2, 7]).all()
    with pytest.raises(ValueError, match="shape"):
        pchip_fill(values, hidden[0])


class _Oracle(torch.nn.Module):
    """Stands in for the network: its correction is `sign` times the one that gives the truth."""

    def __init__(self, config, truth, sign):
        super().__init__()
        self.config, self.truth, self.sign = config, truth, sign

    def forward(self, batch, entries):
        from napari_neurt.model.neurt import interpolate_hidden

        fill = interpolate_hidden(batch, entries)
        return fill + self.sign * (self.truth[: len(batch)] - fill)


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (0.25, 1.0), (-1.0, 0.0), (0.0, 1.0)])
def test_calibrate_fits_the_correction_share(sign, expected):
    model = small_model(interpolate=True)
    tokens, hide = smooth_tokens(3, L), gap_mask(3, L)  # one window per neuron, one batch
    model.module = _Oracle(model.config, torch.from_numpy(tokens), sign)
    calibration = model.calibrate(tokens, hide, channels="own", batch_size=8)
    # a correction of `sign` times the right one is best scaled by 1 / sign, bounded to [0, 1];
    # a model that corrects nothing (sign 0) is left as it is
    assert calibration.correction == pytest.approx(expected, abs=1e-5)


def test_calibrate_bends_towards_the_cubic_on_smooth_traces():
    model = small_model(interpolate=True)
    tokens, hide = smooth_tokens(3, L), gap_mask(3, L)
    model.module = _Oracle(model.config, torch.from_numpy(tokens), 0.0)  # corrects nothing
    # a sine is much nearer its cubic interpolation than the straight line
    assert model.calibrate(tokens, hide, channels="own").cubic > 0.9
    ramps = np.repeat(np.linspace(0, 1, L, dtype=np.float32)[None, :, None], 3, axis=0)
    ramps = np.repeat(ramps, 5, axis=2)  # on straight lines the line is exact: as trained
    on_ramps = model.calibrate(ramps, hide, channels="own")
    assert (on_ramps.cubic, on_ramps.kriging) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_calibrate_finds_steps_to_fit_on_beside_a_periodic_pattern():
    """k-fold spans repeat: a shift by a multiple of their period lands on them, and is
    drawn again rather than leaving a neuron nothing to fit on."""
    model = small_model(interpolate=True, local_kernel=3)
    tokens = smooth_tokens(1, 6 * L)
    hide = np.zeros((1, 6 * L), dtype=bool)
    hide[0, ::4] = True  # period 4: the first draw of every seed below is a multiple of it
    period_seeds = [s for s in range(200)
                    if np.random.default_rng(s).integers(1, 6 * L, size=1)[0] % 4 == 0]
    assert period_seeds
    for seed in period_seeds[:3]:
        calibration = model.calibrate(tokens, hide, channels="own", seed=seed)
        assert 0.0 <= calibration.correction <= 1.0


def test_calibrate_keeps_hidden_steps_unscored_and_checks_its_input():
    model = small_model(interpolate=True, local_kernel=3)
    tokens, hide = smooth_tokens(4, 3 * L), gap_mask(4, 3 * L)
    poisoned = tokens.copy()
    poisoned[..., 0][hide] = 1e6  # values at the hidden steps must not matter
    assert model.calibrate(poisoned, hide, channels="own") == pytest.approx(
        model.calibrate(tokens, hide, channels="own"), abs=1e-6
    )
    calibration = model.calibrate(tokens, hide, channels="own", seed=3)
    assert 0.0 <= calibration.cubic <= 1.0 and 0.0 <= calibration.correction <= 1.0
    with pytest.raises(ValueError, match="needs hidden steps"):
        model.calibrate(tokens, np.zeros((4, 3 * L), dtype=bool))
    with pytest.raises(ValueError, match="no visible step"):
        model.calibrate(tokens, np.ones((4, 3 * L), dtype=bool))
    with pytest.raises(ValueError, match="interpolation-residual"):
        small_model().calibrate(tokens, hide)


def test_a_whole_cubic_share_is_pchip_across_windows_and_features():
    """Stitching over overlapping windows keeps the cubic share exact, every feature included."""
    model = small_model(interpolate=True, local_kernel=3)
    tokens, hide = smooth_tokens(3, 3 * L + 5), gap_mask(3, 3 * L + 5)
    hide[:, L - 3 : L + 9] = True  # a gap across a window boundary
    cubic = model.reconstruct(tokens, hide, calibration=Calibration(cubic=1.0, correction=0.0))
    entries = np.repeat(hide[..., None], 5, axis=2)  # channels "all": every feature hidden
    expected = pchip_fill(tokens.transpose(0, 2, 1), entries.transpose(0, 2, 1))
    np.testing.assert_allclose(cubic, expected.transpose(0, 2, 1), atol=1e-5)


def test_a_whole_kriging_share_is_the_kriging_fill_across_windows_and_features():
    model = small_model(interpolate=True, local_kernel=3)
    tokens, hide = smooth_tokens(3, 3 * L + 5), gap_mask(3, 3 * L + 5)
    hide[:, L - 3 : L + 9] = True  # a gap across a window boundary
    kriged = model.reconstruct(tokens, hide, calibration=Calibration(kriging=1.0, correction=0.0))
    entries = np.repeat(hide[..., None], 5, axis=2)
    expected = kriging_fill(tokens.transpose(0, 2, 1), entries.transpose(0, 2, 1))
    np.testing.assert_allclose(kriged, expected.transpose(0, 2, 1), atol=1e-5)
    # shares blend the fills linearly
    line = model.reconstruct(tokens, hide, calibration=Calibration(correction=0.0))
    cubic = model.reconstruct(tokens, hide, calibration=Calibration(cubic=1.0, correction=0.0))
    blend = model.reconstruct(tokens, hide,
                              calibration=Calibration(cubic=0.3, kriging=0.5, correction=0.0))
    np.testing.assert_allclose(blend, 0.2 * line + 0.3 * cubic + 0.5 * kriged, atol=1e-5)
