"""Compare candidate reconstruction weights on TUNING data only (what the default was chosen on).

    NEURT_TEST_DATA=../shared/data python benchmarks/tuning.py default runs/candidate/pretrain ...

Same measure as benchmarks/quality.py (R^2 of the own trace at hidden steps, regimes
published / gap32 / gap64), on data that quality.py never reports:

- simulated tuning recordings: `simulate.training_recordings(3, seed=5555, n_neurons=(60, 80),
  n_frames=(1500, 2000))`, each raw and denoised (quality.py evaluates on seed 424242);
- one real recording outside the evaluation set: the thunder mouse movie
  (NEURT_TEST_DATA/thunder_mouse_2p, Apache-2.0; 500 frames), with ROIs from local maxima of its
  smoothed mean image (3 x 3 pixel boxes; it comes without ROIs), as raw traces and denoised
  the way CaImAn's `C` is (`ar1_denoise`: baseline plus a sparse non-negative AR(1) fit).
  Skipped without NEURT_TEST_DATA.

The hidden steps are drawn with their own seed (777 + regime). Prints every method's R^2
(`quality.reconstruction_table`: each candidate as trained and calibrated, interpolation,
kriging, ridge) and each candidate's mean
margin over the better of linear and PCHIP interpolation (higher is better).
Candidates are anything `load_model` takes; train one with
``python scripts/train_default_weights.py --work runs/k9 --out runs/k9/out --local-kernel 9``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import quality
import tifffile
import torch
from scipy import ndimage
from scipy.signal import lfilter
from skimage.feature import peak_local_max

from napari_neurt import simulate
from napari_neurt.model import load_model
from napari_neurt.model.tokens import neighborhood_tokens

TUNE_SEED = 5_555
HIDE_SEED = 777


def thunder_traces(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Traces and centroids of the thunder movie: 3 x 3 boxes at maxima of its mean image."""
    movie = tifffile.imread(root / "thunder_mouse_2p" / "mouse_500x64x64_int16.tif")
    movie = movie.astype(np.float32)
    mean = ndimage.gaussian_filter(movie.mean(axis=0), 0.7)
    peaks = peak_local_max(mean, min_distance=2, threshold_rel=0.2, exclude_border=2)
    traces = np.stack([movie[:, y - 1 : y + 2, x - 1 : x + 2].mean(axis=(1, 2)) for y, x in peaks])
    return traces, peaks.astype(np.float32)


def ar1_denoise(y: np.ndarray, iterations: int = 300) -> np.ndarray:
    """A denoised trace like CaImAn's C: baseline + K s, K the AR(1) decay, s >= 0 and sparse.

    The decay g comes from the autocovariance (lag 2 over lag 1), the noise level from the
    frame-to-frame differences; s minimises ||y - b - K s||^2 / 2 + noise * sum(s) (FISTA).
    """
    y = y.astype(np.float64)
    baseline = np.percentile(y, 10)
    x = y - baseline
    centred = x - x.mean()
    lag1, lag2 = (np.dot(centred[:-k], centred[k:]) for k in (1, 2))
    g = float(np.clip(lag2 / max(lag1, 1e-12), 0.5, 0.98))
    noise = np.median(np.abs(np.diff(y))) / 0.6745 / np.sqrt(2)

    def decay(s):  # K s
        return lfilter([1.0], [1.0, -g], s)

    def decay_t(r):  # K^T r
        return lfilter([1.0], [1.0, -g], r[::-1])[::-1]

    step = (1 - g) ** 2  # 1 / Lipschitz constant of K^T K
    s = z = np.zeros_like(x)
    t = 1.0
    for _ in range(iterations):
        s_new = np.maximum(z - step * (decay_t(decay(z) - x) + noise), 0.0)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = s_new + (t - 1) / t_new * (s_new - s)
        s, t = s_new, t_new
    return (baseline + decay(s)).astype(np.float32)


def tuning_recordings(data: Path | None) -> list[tuple[str, np.ndarray]]:
    out = []
    if data is not None:
        traces, centroids = thunder_traces(data)
        denoised = np.stack([ar1_denoise(trace) for trace in traces])
        for kind, values in (("raw", traces), ("denoised", denoised)):
            tokens = neighborhood_tokens(values, centroids, None).tokens
            out.append((f"thunder (real, {kind}, {tokens.shape[0]}x{tokens.shape[1]})", tokens))
    for k, raw in enumerate(simulate.training_recordings(3, seed=TUNE_SEED, n_neurons=(60, 80),
                                                        n_frames=(1500, 2000))):
        rate = raw.metadata["condition"]["frame_rate"]
        for rec in (raw, simulate.denoised(raw)):
            name = f"sim {k} ({rate:.0f} Hz, {rec.metadata['trace_kind']})"
            out.append((name, neighborhood_tokens(rec.traces, rec.centroids, None,
                                                  pixel_size_um=rec.pixel_size_um).tokens))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("candidates", nargs="+", help="weights: 'default', a folder, ...")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--save", type=Path, help="also write every R^2, unrounded, as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = quality.fixture("NEURT_TEST_DATA")
    if data is None:
        print("left out: the thunder recording (NEURT_TEST_DATA is not set)", file=sys.stderr)
    try:
        recordings = tuning_recordings(data)
    except FileNotFoundError as error:
        sys.exit(f"benchmarks/tuning.py: {error}")
    models = {c: load_model(c, device="cpu") for c in args.candidates}
    # the evaluation's own table (the same methods, ridge included), on other hidden steps
    scores = quality.reconstruction_table(recordings, models, 0, set(), hide_seed=HIDE_SEED)
    keys = [(name, regime) for name, _ in recordings for regime in quality.REGIMES]
    best = {k: max(scores["linear interpolation"][k], scores["pchip interpolation"][k])
            for k in keys}
    print("| recording | regime | " + " | ".join(scores) + " |")
    print("| --- | --- |" + " ---: |" * len(scores))
    for key in keys:
        print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{s[key]:.3f}" for s in scores.values())
              + " |")
    if args.save:
        rows = [{"method": method, "recording": key[0], "regime": key[1], "r2": value}
                for method, cells in scores.items() for key, value in cells.items()]
        args.save.write_text(json.dumps(rows, indent=1))
    print("\nMean margin over the better of linear and PCHIP interpolation:")
    for label in scores:
        margin = np.mean([scores[label][k] - best[k] for k in keys])
        wins = sum(scores[label][k] > best[k] for k in keys)
        print(f"- {label}: {margin:+.4f} (above interpolation in {wins} of {len(keys)} cells)")


if __name__ == "__main__":
    main()
