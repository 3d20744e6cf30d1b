"""Classical fills of hidden steps, which an interpolation-residual model's output is blended with.

Both take `values` (..., T) and a bool `hidden` of the same shape and fill each row's hidden steps
from its visible ones; visible steps are returned unchanged and a row with nothing visible is 0,
as in the model's own linear fill.

- `pchip_fill`: SciPy's shape-preserving piecewise cubic through the visible steps.
- `kriging_fill`: the best linear predictor of a hidden step from the visible steps around its
  gap under the row's own autocovariance (simple kriging, a Gaussian-process regression whose
  kernel is estimated from the row itself). Unlike an interpolant it does not pass through the
  visible values: on a noisy trace it averages the noise of the gap's edges away, and across a
  long gap it returns towards the row's mean instead of drawing a line.
"""

from __future__ import annotations

import numpy as np

#: visible frames each side of a gap that the kriging fill reads (chosen on tuning data:
#: 8 beat 16 and 32, where the estimated covariance's errors add up)
KRIGING_CONTEXT = 8
#: lags of the estimated autocovariance; beyond them the covariance is 0
KRIGING_LAGS = 4 * KRIGING_CONTEXT + 64
_JITTER = 1e-4  # added to the variance, in units of it: keeps the small solves well posed


def _rows(values: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A writable copy of `values` with hidden steps zeroed, and both as (rows, T) views."""
    if hidden.shape != values.shape:
        raise ValueError(f"hidden must have the shape of values {values.shape}; got {hidden.shape}")
    out = np.ascontiguousarray(np.where(hidden, 0, values), dtype=values.dtype)
    return out, out.reshape(-1, values.shape[-1]), hidden.reshape(-1, values.shape[-1])


def pchip_fill(values: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """`values` (..., T) with the `hidden` steps of each row filled by PCHIP interpolation.

    SciPy's `PchipInterpolator` (shape-preserving piecewise cubic: no overshoot between visible
    steps) through each row's visible steps; hidden steps before the first or after the last
    visible one take its value, and a row with nothing visible is 0, as in the linear fill.
    """
    from scipy.interpolate import PchipInterpolator

    out, flat, flat_hidden = _rows(values, hidden)
    t = np.arange(values.shape[-1])
    for row, where in zip(flat, flat_hidden, strict=True):
        if not where.any() or where.all():
            continue
        seen = t[~where]
        if len(seen) == 1:
            row[where] = row[seen[0]]
            continue
        inside = where & (t > seen[0]) & (t < seen[-1])
        row[inside] = PchipInterpolator(seen, row[seen])(t[inside])
        row[where & (t < seen[0])] = row[seen[0]]
        row[where & (t > seen[-1])] = row[seen[-1]]
    return out


def autocovariance(rows: np.ndarray, visible: np.ndarray,
                   lags: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each row's visible steps and a valid autocovariance c(0..lags) from them.

    `rows` and `visible` are (..., T); returns means (...) and covariances (..., lags + 1).
    Each lag averages the products of the pairs of visible steps it separates; a Tukey taper
    takes the far lags, the least certain, smoothly to 0, and the spectrum is clipped at 0, so
    that the result is positive semi-definite (a covariance some stationary process has).
    """
    from scipy.fft import next_fast_len

    visible = visible.astype(np.float64)
    means = (rows * visible).sum(axis=-1) / np.maximum(visible.sum(axis=-1), 1)
    centred = (rows - means[..., None]) * visible
    # zero-padded by more than `lags`: the lags read have no circular wrap-around
    size = next_fast_len(rows.shape[-1] + lags + 1, real=True)
    spectra = np.fft.rfft(np.stack([centred, visible]), size)
    power = spectra.real**2 + spectra.imag**2  # |F|^2: the transform of the autocorrelation
    products, pairs = np.fft.irfft(power, size)[..., : lags + 1]
    cov = products / np.maximum(np.round(pairs), 1)
    k = np.arange(lags + 1) / (lags + 1)
    cov *= np.where(k < 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * (2 * k - 1))))
    symmetric = np.concatenate([cov, cov[..., -1:0:-1]], axis=-1)
    spectrum = np.maximum(np.fft.rfft(symmetric).real, 0.0)
    return means, np.fft.irfft(spectrum, symmetric.shape[-1])[..., : lags + 1]


def kriging_fill(values: np.ndarray, hidden: np.ndarray,
                 context: int = KRIGING_CONTEXT) -> np.ndarray:
    """`values` (..., T) with the `hidden` steps of each row filled by simple kriging.

    Each row's mean and autocovariance (`autocovariance`, `KRIGING_LAGS` lags) are estimated
    from its visible steps; each gap (a run of hidden steps) is then filled by the conditional
    mean given the visible steps within `context` frames of it. Gaps of one length are solved
    together, as a batch of small systems. A row with nothing visible is 0; one whose visible
    values are all equal takes that value.
    """
    out, flat, flat_hidden = _rows(values, hidden)
    n_frames = values.shape[-1]
    rows = np.flatnonzero(flat_hidden.any(axis=1) & ~flat_hidden.all(axis=1))
    if rows.size == 0:
        return out
    y, visible = flat[rows].astype(np.float64), ~flat_hidden[rows]
    lags = min(KRIGING_LAGS, n_frames - 1)
    chunks = [autocovariance(y[i : i + 256], visible[i : i + 256], lags)  # small temporaries
              for i in range(0, len(rows), 256)]
    means, cov = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    flat_rows = flat[rows]  # a copy, written back at the end
    varies = cov[:, 0] > 0
    flat_rows[~varies] = np.where(visible[~varies], flat_rows[~varies], means[~varies, None])

    edges = np.diff(np.pad(~visible & varies[:, None], ((0, 0), (1, 1))).astype(np.int8))
    row_of, starts = np.nonzero(edges == 1)  # row-major: each row's k-th start, k-th stop
    stops = np.nonzero(edges == -1)[1]
    around = np.r_[np.arange(-context, 0), np.arange(context)]  # before the start, from the stop
    beyond = np.concatenate([cov, np.zeros((len(cov), 1))], axis=1)  # lag lags + 1: covariance 0
    for length in np.unique(stops - starts):
        same = np.flatnonzero(stops - starts == length)
        # every gap of this length has the same layout: the same lags between its steps
        offsets = np.where(around < 0, around, around + length)
        lag_among = np.minimum(np.abs(offsets[:, None] - offsets[None, :]), lags + 1)
        lag_cross = np.minimum(np.abs(np.arange(length)[:, None] - offsets[None, :]), lags + 1)
        # chunks keep the (gaps, length + 2 context, 2 context) covariances near 4 M numbers
        per_gap = (length + 2 * context) * 2 * context
        for chunk in np.array_split(same, -(-len(same) * per_gap // 4_000_000)):
            r, start = row_of[chunk], starts[chunk]
            near = start[:, None] + offsets
            seen = (near >= 0) & (near < n_frames)
            near = np.clip(near, 0, n_frames - 1)
            seen &= visible[r[:, None], near]
            gap = start[:, None] + np.arange(length)
            row_cov = beyond[r]
            # unseen context steps become independent unit variables with no say in the gap
            among = np.take(row_cov, lag_among, axis=1)
            among *= seen[:, :, None] & seen[:, None, :]
            among[:, np.arange(2 * context), np.arange(2 * context)] += np.where(
                seen, _JITTER * cov[r, :1], 1.0
            )
            cross = np.take(row_cov, lag_cross, axis=1) * seen[:, None, :]
            centred = np.where(seen, y[r[:, None], near] - means[r, None], 0.0)
            weights = np.linalg.solve(among, centred[..., None])[..., 0]
            flat_rows[r[:, None], gap] = means[r, None] + np.einsum("ngk,nk->ng", cross, weights)
    flat[rows] = flat_rows
    return out
