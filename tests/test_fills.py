"""The kriging fill: a valid covariance, the conditional mean it defines, and why it is there."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import toeplitz

from napari_neurt.model import kriging_fill, pchip_fill
from napari_neurt.model.fills import KRIGING_CONTEXT, autocovariance


def ar1(n_frames: int, phi: float, noise: float, seed: int, rows: int = 1) -> np.ndarray:
    """A stationary AR(1) process (unit innovations) seen through white noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, n_frames))
    x[:, 0] = rng.normal(size=rows) / np.sqrt(1 - phi**2)
    for t in range(1, n_frames):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=rows)
    return x + noise * rng.normal(size=x.shape)


def spans(n_frames: int, seed: int, rows: int = 1, length: int = 6, every: int = 30):
    rng = np.random.default_rng(seed)
    hidden = np.zeros((rows, n_frames), dtype=bool)
    for row in hidden:
        for start in range(10, n_frames - length - 10, every):
            row[start + rng.integers(0, every - length) :][:length] = True
    return hidden


def test_autocovariance_is_positive_semidefinite_and_finds_the_process():
    y = ar1(20_000, 0.9, 0.0, seed=0)[0]
    visible = ~spans(20_000, seed=1)[0]
    mean, cov = autocovariance(y, visible, 96)
    assert mean == pytest.approx(y[visible].mean())
    assert cov[0] == pytest.approx(1 / (1 - 0.81), rel=0.15)
    assert cov[1] / cov[0] == pytest.approx(0.9, abs=0.02)
    assert cov[5] / cov[0] == pytest.approx(0.9**5, abs=0.05)
    assert np.linalg.eigvalsh(toeplitz(cov)).min() > -1e-9 * cov[0]
    # a raw estimate with a short, noisy series need not be; the clipped spectrum always is
    short = ar1(150, 0.99, 0.5, seed=2)[0]
    _, cov = autocovariance(short, np.ones(150, dtype=bool), 96)
    assert np.linalg.eigvalsh(toeplitz(cov)).min() > -1e-9 * cov[0]


def test_kriging_fill_is_the_conditional_mean_of_each_gap_given_its_context():
    y = ar1(400, 0.8, 0.3, seed=3)[0].astype(np.float32)
    hidden = np.zeros(400, dtype=bool)
    hidden[[100, 101, 102, 200, 201, 202, 206, 300]] = True  # 200-202 sees 206's gap nearby
    filled = kriging_fill(y[None], hidden[None])[0]
    mean, cov = autocovariance(y.astype(np.float64), ~hidden, 96)
    cov_of = toeplitz(np.r_[cov, np.zeros(400)])[:400, :400]
    for gap in ([100, 101, 102], [200, 201, 202], [300]):
        near = np.arange(gap[0] - KRIGING_CONTEXT, gap[-1] + KRIGING_CONTEXT + 1)
        seen = near[~hidden[near]]
        among = cov_of[np.ix_(seen, seen)] + 1e-4 * cov[0] * np.eye(len(seen))
        expected = mean + cov_of[np.ix_(gap, seen)] @ np.linalg.solve(among, y[seen] - mean)
        np.testing.assert_allclose(filled[gap], expected, rtol=1e-5, atol=1e-5)


def test_kriging_fill_keeps_what_is_seen_and_handles_every_row():
    values = ar1(120, 0.9, 0.2, seed=4, rows=4).astype(np.float32).reshape(2, 2, 120)
    hidden = spans(120, seed=5, rows=4).reshape(2, 2, 120)
    hidden[0, 1] = True  # nothing visible: 0, as in the linear fill
    values[1, 1] = 2.5  # constant: stays constant
    filled = kriging_fill(values, hidden)
    assert filled.dtype == np.float32 and filled.shape == values.shape
    np.testing.assert_array_equal(filled[~hidden], values[~hidden])
    assert (filled[0, 1] == 0).all()
    np.testing.assert_allclose(filled[1, 1], 2.5)
    with pytest.raises(ValueError, match="shape"):
        kriging_fill(values, hidden[0])


def test_kriging_averages_noise_away_where_interpolation_copies_it():
    truth = ar1(3_000, 0.9, 1.5, seed=6, rows=8)
    hidden = spans(3_000, seed=7, rows=8)
    def linear_fill(values, hidden):
        t = np.arange(values.shape[-1])
        return np.stack([np.interp(t, t[~h], v[~h]) for v, h in zip(values, hidden)])

    errors = {
        name: np.mean((fill(truth, hidden) - truth)[hidden] ** 2)
        for name, fill in (("kriging", kriging_fill), ("pchip", pchip_fill),
                           ("linear", linear_fill))
    }
    assert errors["kriging"] < 0.9 * min(errors["pchip"], errors["linear"])
    # across a long gap the line runs on between its ends; kriging returns to the mean
    long_gap = np.zeros_like(hidden)
    long_gap[:, 1_000:1_400] = True
    middle = kriging_fill(truth, long_gap)[:, 1_150:1_250]
    means = truth[:, ~long_gap[0]].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(middle, np.broadcast_to(means, middle.shape), atol=1e-6)


def test_many_gaps_in_many_rows_fill_as_each_row_alone():
    """Gaps are solved in batches across rows, in chunks: neither changes any value."""
    values = ar1(400, 0.9, 0.3, seed=8, rows=80)
    hidden = np.zeros_like(values, dtype=bool)
    hidden[:, 1::2] = True  # 200 one-frame gaps per row: 16,000 in all, more than one chunk
    hidden[:5, 100:160] = True  # and a few long ones
    together = kriging_fill(values, hidden)
    alone = np.stack([kriging_fill(v[None], h[None])[0] for v, h in zip(values, hidden)])
    np.testing.assert_allclose(together, alone, rtol=1e-10, atol=1e-12)
