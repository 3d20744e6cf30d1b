"""Quality of napari-neurt's default weights: reconstruction, classification, attention.

    NEURT_TEST_DATA=../shared/data NEURT_WEIGHTS_DIR=../shared/neurt_official \\
        python benchmarks/quality.py [--adapt-steps 200] [--markdown /tmp/quality.md]

Prints three tables (markdown); `--markdown FILE` also writes them to FILE, replacing it, and
what is done so far to FILE's `.partial.md` sibling: not into docs/, whose quality.md is edited
by hand from these tables.

1. Masked reconstruction: R^2 of feature 0 (the neuron's own min-max-normalised trace, as in
   the tokens) at the hidden steps only. Pooled over neurons: all hidden (neuron, step) pairs of
   a recording are put together and R^2 = 1 - SSE / SST, SST about the mean of those true
   values. Three regimes, the hidden steps drawn with a fixed seed (`HIDE_SEED`), the same for
   every method:
   - "published": spans of whole time steps (all 5 features) as in the published pretraining,
     15 % of each neuron's frames, span lengths geometric (p = 0.2) up to 10;
   - "gap32" / "gap64": the own trace only (feature 0) in gaps of exactly 32 / 64 frames,
     about 15 % of each neuron's frames, gaps at least one gap length apart; the
     neighbourhood features stay visible.
   Rows: the default weights; the default weights after `NeurtModel.adapt` on that recording
   (the hidden steps kept out of the adaptation); each of those calibrated by
   `NeurtModel.calibrate` (its linear fill moved towards PCHIP and towards the kriging fill and
   its correction scaled, the shares fitted on the same recording at the hidden pattern shifted
   in time, the evaluated steps hidden and never scored); the published MICrONS
   weights (when NEURT_WEIGHTS_DIR is set); linear and PCHIP interpolation of the own trace
   across the hidden steps; the kriging fill alone (`napari_neurt.model.kriging_fill`: each
   gap's best linear prediction from the 8 visible frames on each side under the trace's own
   autocovariance); ridge regression from the visible neighbourhood features plus both
   interpolations, fitted on the same recording at OTHER hidden steps (drawn with another seed,
   their targets visible, the evaluated steps hidden from the features too).
   Data: the real recordings of NEURT_TEST_DATA (suite2p FISSA example; CaImAn demoMovie and
   example) and simulated held-out recordings (`simulate.training_recordings`, seed
   `SIM_SEED`, never used for training or tuning), each as raw fluorescence and as denoised
   traces (`simulate.denoised`, the true ΔF/F, like CaImAn's C).
   `--hide-draws K` also reconstructs the real recordings over K further draws of hidden steps
   (seeds `HIDE_SEED + 100 k + regime index`, k = 1..K; no adaptation) and prints each
   method's mean and s.d. over them, and the calibrated row's margin over linear and PCHIP
   interpolation in the same draw: how much of a difference in the main table is the draw.
2. Classification, wild type vs AD-like, on a simulated held-out cohort (seed `TEST_COHORT_SEED`):
   accuracy and AUC over animals for 4, 8 and 16 training animals per class (training cohorts
   with seeds `TRAIN_COHORT_SEED + n`, or `+ 1000 * repeat` for further draws), fine-tuned
   from the default pretrained encoder with `napari_neurt.training.finetune` (the recipe of the
   shipped demo classifier: encoder frozen, heads trained), against logistic regression on
   summary statistics (mean event rate and mean pairwise correlation); plus the shipped demo
   classifier itself. Every animal is `simulate.cohort(..., n_neurons=--neurons,
   n_frames=--frames)`: 100 neurons x 1000 frames (33 s at 30 Hz) unless told, to keep the run
   short; the simulator's own default is 300 x 3000. The recording head is `FinetuneConfig`'s
   default (evidence pooling, reading each neuron's activity statistics and their spread over
   neurons, its recording term then fitted to the whole training recordings where there are 8
   or more animals per class); `--[no-]whole-recording-fit` (force the fit either way),
   `--no-statistics-spread`, `--recording-pooling gated` and `--no-activity-statistics` give
   the earlier ones.
3. Attention faithfulness: AUROC of the recording head's `neuron_attention` for the ground-truth
   affected neurons of each held-out AD-like animal (mean and range over animals); the same for
   the window classifier's per-neuron class probability (`neuron_probability`), for comparison.
   ``--sizes ""`` measures the shipped demo classifier alone.

Nothing here is tuned on: the real recordings are evaluation data only; the settings of the
default weights were chosen before these figures were computed (see docs/model_card.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.interpolate import PchipInterpolator

from napari_neurt import simulate
from napari_neurt.io import read_suite2p
from napari_neurt.model import kriging_fill, load_model
from napari_neurt.model.tokens import neighborhood_tokens
from napari_neurt.training import FinetuneConfig, finetune
from napari_neurt.training.finetune import auc
from napari_neurt.training.masking import geometric_lengths, place_spans

HIDE_SEED = 20_260_101  # hidden steps of the evaluation
FIT_SEED = 31_337  # hidden steps the ridge baseline is fitted on
SIM_SEED = 424_242  # simulated held-out recordings (pretraining used seed 0)
TEST_COHORT_SEED = 9_000  # held-out animals (the demo classifier was trained on seed 7_000)
TRAIN_COHORT_SEED = 9_100  # + n: the benchmark's training cohorts
REGIMES = {"published": ("all", None), "gap32": ("own", 32), "gap64": ("own", 64)}
CLASS_NAMES = ["wild type", "AD-like"]


# --- data ---------------------------------------------------------------------------------------
def caiman_npz(path: Path, shape: tuple[int, int]):
    """Traces and centroids of a CaImAn CNMF results .npz (trusted test fixture only)."""
    data = np.load(path, allow_pickle=True, encoding="latin1")  # trusted fixture, never user data
    footprints = sparse.csc_matrix(data["A_full"].item())
    traces = np.asarray(data["C_full"], dtype=np.float32)
    d1, d2 = shape
    pixel = np.arange(footprints.shape[0])
    y, x = pixel % d1, pixel // d1  # pixels in Fortran order
    weight = np.asarray(footprints.sum(axis=0)).ravel()
    cy = np.asarray(footprints.T @ y).ravel() / weight
    cx = np.asarray(footprints.T @ x).ravel() / weight
    return traces, np.stack([cy, cx], axis=1)


def real_recordings(root: Path) -> list[tuple[str, np.ndarray]]:
    """(name, tokens) of the real evaluation recordings."""
    out = []
    rec = read_suite2p(root / "fissa_suite2p_outputs")
    out.append(("suite2p FISSA (real, %dx%d)" % rec.traces.shape,
                 neighborhood_tokens(rec.traces, rec.centroids, None).tokens))
    for name, shape in (("groundtruth_demoMovie", (60, 80)), ("example", (170, 170))):
        traces, centroids = caiman_npz(root / "caiman_cnmf_results" / f"{name}.npz", shape)
        out.append((f"CaImAn {name} (real, %dx%d)" % traces.shape,
                    neighborhood_tokens(traces, centroids, None).tokens))
    return out


def simulated_recordings(n: int, n_neurons, n_frames) -> list[tuple[str, np.ndarray]]:
    """(name, tokens) of `n` simulated held-out recordings, each raw and denoised."""
    out = []
    for k, raw in enumerate(simulate.training_recordings(n, seed=SIM_SEED, n_neurons=n_neurons,
                                                        n_frames=n_frames)):
        cond = raw.metadata["condition"]
        kind = "miniscope" if cond["imaging"]["kind"] == "miniscope" else "2p"
        for rec in (raw, simulate.denoised(raw)):
            name = (f"sim {k} ({kind}, {cond['frame_rate']:.0f} Hz, "
                    f"{rec.metadata['trace_kind']}, %dx%d)" % rec.traces.shape)
            out.append((name, neighborhood_tokens(rec.traces, rec.centroids, None,
                                                  pixel_size_um=rec.pixel_size_um).tokens))
    return out


def fixture(variable: str) -> Path | None:
    """The folder an environment variable names, None when it is unset; exits when it is set to
    something that is not a folder (a mistyped path would otherwise drop its rows silently)."""
    value = os.environ.get(variable)
    if value and not Path(value).is_dir():
        sys.exit(f"{variable}={value} is not a folder")
    return Path(value) if value else None


# --- hiding -------------------------------------------------------------------------------------
def hide_mask(n: int, t: int, regime: str, seed: int) -> np.ndarray:
    """bool (n, t) hidden steps of a regime, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    _, gap = REGIMES[regime]
    hidden = np.zeros((n, t), dtype=bool)
    if gap is None:
        lengths = geometric_lengths(10, 0.2)
        for i in range(n):
            hidden[i] = place_spans(rng, t, max(1, round(0.15 * t)), *lengths)
        return hidden
    n_gaps = max(1, round(0.15 * t / gap))
    for i in range(n):
        placed, tries = [], 0
        while len(placed) < n_gaps and tries < 1000:
            tries += 1
            start = int(rng.integers(1, t - gap - 1))
            if all(abs(start - s) >= 2 * gap for s in placed):
                placed.append(start)
        for s in placed:
            hidden[i, s : s + gap] = True
    return hidden


# --- baselines ----------------------------------------------------------------------------------
def interpolate(y: np.ndarray, hidden: np.ndarray, kind: str) -> np.ndarray:
    """Each row of y (n, t) with its hidden steps filled by linear or PCHIP interpolation."""
    out = y.copy()
    t = np.arange(y.shape[1])
    for i in range(y.shape[0]):
        h = hidden[i]
        if not h.any():
            continue
        if kind == "linear":
            out[i, h] = np.interp(t[h], t[~h], y[i, ~h])
        else:
            values = PchipInterpolator(t[~h], y[i, ~h], extrapolate=True)(t[h])
            out[i, h] = np.clip(values, y[i, ~h].min(), y[i, ~h].max())
    return out


def ridge_features(tokens: np.ndarray, hidden: np.ndarray, channels: str) -> np.ndarray:
    """Per (neuron, step) features (n, t, k) from what is visible when `hidden` is hidden."""
    own = tokens[..., 0]
    parts = [interpolate(own, hidden, "linear"), interpolate(own, hidden, "pchip")]
    for f in range(1, tokens.shape[2]):
        neighbour = tokens[..., f]
        across = interpolate(neighbour, hidden, "linear")
        if channels == "own":  # the neighbourhood is visible: its value and its departure
            parts += [neighbour, neighbour - across]
        else:  # hidden too: only its interpolation
            parts.append(across)
    parts.append(np.ones_like(own))
    return np.stack(parts, axis=-1)


def ridge(tokens: np.ndarray, hidden: np.ndarray, channels: str, regime: str,
          alpha: float = 1.0) -> np.ndarray:
    """Ridge reconstruction of feature 0, fitted at other hidden steps of the same recording."""
    fit_hidden = hide_mask(*hidden.shape, regime, FIT_SEED) & ~hidden
    both = fit_hidden | hidden
    x_fit = ridge_features(tokens, both, channels)[fit_hidden]
    y_fit = tokens[..., 0][fit_hidden]
    k = x_fit.shape[1]
    w = np.linalg.solve(x_fit.T @ x_fit + alpha * np.eye(k), x_fit.T @ y_fit)
    return ridge_features(tokens, hidden, channels) @ w


def r2(truth: np.ndarray, estimate: np.ndarray) -> float:
    sse = float(np.sum((truth - estimate) ** 2))
    sst = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - sse / sst


# --- reconstruction table -----------------------------------------------------------------------
def reconstruction_table(recordings, models, adapt_steps: int, adapt_names: set[str],
                         partial=None, hide_seed: int = HIDE_SEED):
    """R^2 of every method: {method: {(recording, regime): r2}}; hidden steps from `hide_seed`."""
    rows = {}  # method -> {(recording, regime): r2}
    for name, tokens in recordings:
        for r_index, (regime, (channels, _)) in enumerate(REGIMES.items()):
            hidden = hide_mask(tokens.shape[0], tokens.shape[1], regime, hide_seed + r_index)
            truth = tokens[..., 0][hidden]
            key = (name, regime)
            t0 = time.monotonic()
            for label, model in models.items():
                out = model.reconstruct(tokens, hidden, channels=channels)[..., 0]
                rows.setdefault(label, {})[key] = r2(truth, out[hidden])
                candidates = {label: model}  # every candidate calibrated, the default adapted
                if label == "default" and adapt_steps and name in adapt_names:
                    adapted = model.adapt(tokens, adapt_steps, hide=hidden, channels=channels,
                                          seed=0)
                    out = adapted.reconstruct(tokens, hidden, channels=channels)[..., 0]
                    adapted_label = f"default + adapt ({adapt_steps} steps)"
                    rows.setdefault(adapted_label, {})[key] = r2(truth, out[hidden])
                    candidates[adapted_label] = adapted
                for base_label, candidate in candidates.items():
                    if not candidate.config.interpolate:
                        continue
                    calibration = candidate.calibrate(tokens, hidden, channels=channels)
                    out = candidate.reconstruct(tokens, hidden, channels=channels,
                                                calibration=calibration)[..., 0]
                    rows.setdefault(f"{base_label}, calibrated", {})[key] = r2(
                        truth, out[hidden])
                    print(f"  {name} {regime} {base_label}: {calibration.describe()}",
                          file=sys.stderr, flush=True)
            for kind in ("linear", "pchip"):
                est = interpolate(tokens[..., 0], hidden, kind)
                rows.setdefault(f"{kind} interpolation", {})[key] = r2(truth, est[hidden])
            est = kriging_fill(tokens[..., 0], hidden)
            rows.setdefault("kriging (own autocovariance)", {})[key] = r2(truth, est[hidden])
            est = ridge(tokens, hidden, channels, regime)
            rows.setdefault("ridge (neighbourhood + interpolation)", {})[key] = r2(
                truth, est[hidden])
            print(f"  {name} {regime}: {time.monotonic() - t0:.0f} s", file=sys.stderr,
                  flush=True)
            if partial is not None:  # what is done so far, in case the run is cut short
                partial.write_text(format_reconstruction(rows, recordings) + "\n")
    return rows


def format_reconstruction(rows, recordings) -> str:
    lines = []
    for name, _ in recordings:
        lines.append(f"\n**{name}**\n")
        lines.append("| method | " + " | ".join(REGIMES) + " |")
        lines.append("| --- |" + " ---: |" * len(REGIMES))
        for method, values in rows.items():
            if not any((name, g) in values for g in REGIMES):
                continue
            cells = [f"{values[(name, g)]:.3f}" if (name, g) in values else "—" for g in REGIMES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the spread over draws of hidden steps ------------------------------------------------------
DRAW_METHODS = ("default", "default, calibrated", "linear interpolation", "pchip interpolation",
                "kriging (own autocovariance)")


def draws_table(recordings, model, draws: int):
    """R^2 over further draws of hidden steps: {(recording, regime): {method: [r2 per draw]}}.

    Draw k (1..draws) hides the steps of seed HIDE_SEED + 100 k + regime index; draw 0, the one
    of the main table, is left out. Rows: `DRAW_METHODS` (no adaptation: its cost times `draws`).
    """
    table = {}
    for name, tokens in recordings:
        for r_index, (regime, (channels, _)) in enumerate(REGIMES.items()):
            t0 = time.monotonic()
            cell = table.setdefault((name, regime), {m: [] for m in DRAW_METHODS})
            for k in range(1, draws + 1):
                hidden = hide_mask(*tokens.shape[:2], regime, HIDE_SEED + 100 * k + r_index)
                truth = tokens[..., 0][hidden]
                own = tokens[..., 0]
                calibration = model.calibrate(tokens, hidden, channels=channels)
                estimates = {
                    "default": model.reconstruct(tokens, hidden, channels=channels)[..., 0],
                    "default, calibrated": model.reconstruct(
                        tokens, hidden, channels=channels, calibration=calibration)[..., 0],
                    "linear interpolation": interpolate(own, hidden, "linear"),
                    "pchip interpolation": interpolate(own, hidden, "pchip"),
                    "kriging (own autocovariance)": kriging_fill(own, hidden),
                }
                for method, estimate in estimates.items():
                    cell[method].append(r2(truth, estimate[hidden]))
            print(f"  draws {name} {regime}: {time.monotonic() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return table


def _margin(values: np.ndarray, reference: np.ndarray) -> str:
    """Mean (s.d.) of values - reference over the draws, and in how many draws it is above 0."""
    d = values - reference
    return f"{d.mean():+.4f} ({d.std(ddof=1):.4f}) {int((d > 0).sum())}/{len(d)}"


def format_draws(table, draws: int) -> str:
    """Mean (s.d.) of every method over the draws, and the calibrated row's paired margins."""
    lines = [
        (f"\nOver {draws} further draws of hidden steps (the main table's draw left out): "
         "mean R^2 (s.d.); margin = calibrated minus the interpolation in the same draw, "
         "mean (s.d.), and in how many draws it is above 0.\n"),
        ("| recording | regime | " + " | ".join(DRAW_METHODS)
         + " | margin over the better of linear and PCHIP | over PCHIP | over linear |"),
        "| --- | --- |" + " ---: |" * (len(DRAW_METHODS) + 3),
    ]
    for (name, regime), cell in table.items():
        values = {m: np.array(v) for m, v in cell.items()}
        calibrated = values["default, calibrated"]
        linear, pchip = values["linear interpolation"], values["pchip interpolation"]
        lines.append(f"| {name} | {regime} | "
                     + " | ".join(f"{v.mean():.3f} ({v.std(ddof=1):.3f})" for v in values.values())
                     + f" | {_margin(calibrated, np.maximum(linear, pchip))}"
                       f" | {_margin(calibrated, pchip)} | {_margin(calibrated, linear)} |")
    return "\n".join(lines)


# --- classification -----------------------------------------------------------------------------
def summary_statistics(recording) -> np.ndarray:
    """[mean event rate (events/s), mean pairwise correlation] of a recording's traces."""
    x = recording.traces.astype(np.float64)
    base = np.median(x, axis=1, keepdims=True)
    mad = np.median(np.abs(x - base), axis=1, keepdims=True) * 1.4826 + 1e-12
    above = (x - base) / mad > 3.0
    onsets = np.count_nonzero(above[:, 1:] & ~above[:, :-1], axis=1)
    rate = onsets / (x.shape[1] / recording.frame_rate)
    c = np.corrcoef(x)
    correlation = c[np.triu_indices_from(c, 1)].mean()
    return np.array([rate.mean(), correlation])


def logistic_regression(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 2000):
    """Plain L2 logistic regression by gradient descent on standardised features."""
    mean, std = x.mean(0), x.std(0) + 1e-12
    z = np.c_[(x - mean) / std, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ w))
        w -= 0.5 * (z.T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0])
    return lambda xt: 1 / (1 + np.exp(-np.c_[(xt - mean) / std, np.ones(len(xt))] @ w))


def _code_digest() -> str:
    """A digest of the package's model, training and simulator code, so that a classifier saved
    in --work by another version of them (another recipe, other cohorts) is never reused."""
    import napari_neurt

    root = Path(napari_neurt.__file__).parent
    digest = hashlib.sha1()
    for file in sorted(f for part in ("model", "training", "simulate")
                       for f in (root / part).glob("*.py")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:8]


def classification(default_model, sizes, test_per_group, n_neurons, n_frames, steps, work,
                   full_lr=0.0, partial=None, repeat=0, activity_statistics=True,
                   recording_pooling="evidence", demo=True, statistics_spread=True,
                   whole_recording_fit=None):
    test = simulate.cohort(test_per_group, seed=TEST_COHORT_SEED, n_neurons=n_neurons,
                           n_frames=n_frames)
    y_test = np.array([a.group == "AD-like" for a in test], dtype=float)
    test_tokens = [default_model.tokens_for(a.recording) for a in test]
    stats_test = np.array([summary_statistics(a.recording) for a in test])
    rows, attention, window = [], {}, {}

    def evaluate(label, model, n):
        probs, faith, window_faith = [], [], []
        for animal, tokens in zip(test, test_tokens, strict=True):
            result = model.classify(tokens)
            probs.append(result.recording_probability)
            if animal.group == "AD-like" and 0 < animal.affected.sum() < len(animal.affected):
                faith.append(auc(result.neuron_attention, animal.affected))
                window_faith.append(auc(result.neuron_probability, animal.affected))
        probs = np.array(probs)
        accuracy = float(np.mean((probs > 0.5) == (y_test > 0.5)))
        rows.append((label, n, accuracy, auc(probs, y_test > 0.5)))
        attention[f"{label}, {n} per class"] = faith
        window[f"{label}, {n} per class"] = window_faith
        report_partial()

    def report_partial():
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        if partial is not None:
            partial.write_text(format_classification(rows, len(test)) + "\n\n"
                               + format_attention(attention) + "\n\n"
                               + format_attention(window) + "\n")

    def trained(name, train, config):
        """Fine-tune, or load the model a previous (interrupted) run of this benchmark saved."""
        folder = work / name
        if (folder / "model.safetensors").is_file():
            return load_model(folder, device="cpu")
        return finetune(train, folder, config, base=default_model, class_names=CLASS_NAMES).model

    base = hashlib.sha1(b"".join(value.detach().cpu().numpy().tobytes()
                                 for value in default_model.module.state_dict().values()))
    base = f"{base.hexdigest()[:10]}-{_code_digest()}"
    if demo:
        evaluate("default (shipped demo classifier)", default_model, 10)
    for n in sizes:
        t0 = time.monotonic()
        train = simulate.cohort(n, seed=TRAIN_COHORT_SEED + n + 1000 * repeat,
                                n_neurons=n_neurons, n_frames=n_frames)
        config = FinetuneConfig(steps=steps, lr=0.0, head_lr=3e-3, bags_per_step=4, bag_size=32,
                                test_per_class=0, validation_per_class=0, seed=0, device="cpu",
                                activity_statistics=activity_statistics,
                                recording_pooling=recording_pooling,
                                statistics_spread=statistics_spread,
                                whole_recording_fit=whole_recording_fit)
        head = f"{recording_pooling} head" + (", activity statistics" if activity_statistics
                                              else "")
        if config.head_reads_spread:
            head += " and their spread"
        if config.fits_whole_recordings(n):
            head += ", fitted to whole recordings"
        label = f"fine-tuned from default (encoder frozen, {head})"
        # every setting that changes the model is in the name, the base weights and the code by
        # digests, so that a rerun never picks up a model another run (or version) saved
        name = (f"classifier-{base}-{n}-draw{repeat}-{n_neurons}x{n_frames}-{steps}steps-"
                f"{recording_pooling}" + ("-statistics" if activity_statistics else "")
                + ("-spread" if config.head_reads_spread else "")
                + ("-fit" if config.fits_whole_recordings(n) else ""))
        evaluate(label, trained(name, train, config), n)
        if full_lr:
            config = replace(config, lr=full_lr)  # the same recipe, the encoder learning too
            evaluate(f"fine-tuned from default (whole encoder, lr {full_lr:g}, {head})",
                     trained(f"{name}-full{full_lr:g}", train, config), n)
        x = np.array([summary_statistics(a.recording) for a in train])
        y = np.array([a.group == "AD-like" for a in train], dtype=float)
        p = logistic_regression(x, y)(stats_test)
        rows.append(("logistic regression (event rate, mean correlation)", n,
                     float(np.mean((p > 0.5) == (y_test > 0.5))), auc(p, y_test > 0.5)))
        report_partial()
        print(f"  classification n={n}: {time.monotonic() - t0:.0f} s", file=sys.stderr,
              flush=True)
    return rows, attention, window, len(test)


def format_classification(rows, n_test) -> str:
    lines = [f"\nHeld-out simulated animals: {n_test} ({n_test // 2} per group).\n",
             "| method | training animals per class | accuracy | AUC |", "| --- | ---: | ---: | ---: |"]
    for label, n, accuracy, value in rows:
        lines.append(f"| {label} | {n} | {accuracy:.3f} | "
                     f"{'—' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines)


def format_attention(attention) -> str:
    lines = ["| model | AD-like animals | mean AUROC | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
    seen = set()
    for label, values in attention.items():
        values = [v for v in values if v is not None]
        if label in seen or not values:
            continue
        seen.add(label)
        lines.append(f"| {label} | {len(values)} | {np.mean(values):.3f} | {np.min(values):.3f} "
                     f"| {np.max(values):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="default")
    parser.add_argument("--adapt-steps", type=int, default=200,
                        help="steps of NeurtModel.adapt (its own default: 200)")
    parser.add_argument("--adapt-simulated", action="store_true")
    parser.add_argument("--sim-recordings", type=int, default=3)
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--test-per-group", type=int, default=6)
    parser.add_argument("--finetune-steps", type=int, default=1200)
    parser.add_argument("--neurons", type=int, default=100,
                        help="mean neurons per simulated animal (simulate.cohort's n_neurons)")
    parser.add_argument("--frames", type=int, default=1000,
                        help="frames per simulated animal (30 Hz; simulate.cohort's n_frames)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="training cohorts of another draw: seeds 9100 + n + 1000 * REPEAT")
    parser.add_argument("--activity-statistics", action=argparse.BooleanOptionalAction,
                        default=True, help="FinetuneConfig.activity_statistics (default: yes)")
    parser.add_argument("--statistics-spread", action=argparse.BooleanOptionalAction,
                        default=True, help="the evidence head also reads the statistics' spread "
                        "over neurons (FinetuneConfig.statistics_spread)")
    parser.add_argument("--whole-recording-fit", action=argparse.BooleanOptionalAction,
                        default=None, help="the evidence head's recording term is then fitted "
                        "to whole training recordings (FinetuneConfig.whole_recording_fit; "
                        "default: only with enough animals per class)")
    parser.add_argument("--recording-pooling", choices=("evidence", "gated"), default="evidence",
                        help="FinetuneConfig.recording_pooling (default: evidence)")
    parser.add_argument("--full-lr", type=float, default=1e-4,
                        help="also fine-tune the whole encoder at this top-block lr (0: no)")
    parser.add_argument("--hide-draws", type=int, default=0,
                        help="also reconstruct the real recordings over this many further draws "
                        "of hidden steps and print each method's spread over them (no adapt)")
    parser.add_argument("--skip", default="",
                        help="comma list: recon,classify,demo (demo: the shipped classifier's row)")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/neurt-quality"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    out = [f"Command: `python benchmarks/quality.py {' '.join(argv or sys.argv[1:])}`; "
           f"torch threads {torch.get_num_threads()}, CPU only."]
    model = load_model(args.weights, device="cpu")
    if "recon" not in skip:
        models, left_out = {"default": model}, []
        weights, data = fixture("NEURT_WEIGHTS_DIR"), fixture("NEURT_TEST_DATA")
        recordings = []
        try:
            if weights:
                models["published MICrONS (neurt-microns)"] = load_model("neurt-microns",
                                                                         device="cpu")
            if data:
                recordings += real_recordings(data)
        except FileNotFoundError as error:
            sys.exit(f"benchmarks/quality.py: {error}")
        if not weights:
            left_out.append("the published MICrONS weights (NEURT_WEIGHTS_DIR is not set)")
        if not data:
            left_out.append("the real recordings (NEURT_TEST_DATA is not set)")
        real = {name for name, _ in recordings}
        sim = simulated_recordings(args.sim_recordings, (100, 150), (1500, 2000))
        recordings += sim
        if not recordings:
            sys.exit("benchmarks/quality.py: no recording to reconstruct: set NEURT_TEST_DATA "
                     "(../shared/data) or ask for --sim-recordings")
        for what in left_out:
            print(f"left out: {what}", file=sys.stderr, flush=True)
        adapt_names = real | ({name for name, _ in sim} if args.adapt_simulated else set())
        partial = args.markdown.with_suffix(".partial.md") if args.markdown else None
        rows = reconstruction_table(recordings, models, args.adapt_steps, adapt_names, partial)
        out.append("\n### Masked reconstruction, R^2 of the own trace at hidden steps\n")
        out += [f"Left out: {what}." for what in left_out]
        out.append(format_reconstruction(rows, recordings))
        if args.hide_draws > 0:
            real_only = [(name, tokens) for name, tokens in recordings if name in real]
            out.append("\n### The spread over draws of hidden steps (real recordings)\n")
            out.append(format_draws(draws_table(real_only, model, args.hide_draws),
                                    args.hide_draws))
    if "classify" not in skip:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        rows, attention, window, n_test = classification(model, sizes, args.test_per_group,
                                                 args.neurons, args.frames,
                                                 args.finetune_steps, args.work, args.full_lr,
                                                 args.markdown.with_suffix(".partial.md")
                                                 if args.markdown else None, args.repeat,
                                                 args.activity_statistics,
                                                 args.recording_pooling, "demo" not in skip,
                                                 args.statistics_spread,
                                                 args.whole_recording_fit)
        out.append("\n### Classification, wild type vs AD-like (simulated)\n")
        out.append(format_classification(rows, n_test))
        out.append("\n### Attention faithfulness: AUROC of neuron_attention for affected neurons\n")
        out.append(format_attention(attention))
        out.append("\n### The window classifier's P(AD-like) per neuron: AUROC for affected "
                   "neurons\n")
        out.append(format_attention(window))
    out.append(f"\nWall time: {(time.monotonic() - started) / 60:.1f} min.")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
