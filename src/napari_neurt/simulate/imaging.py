"""How light from the tissue becomes a movie: optics, neuropil, background, drift and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse


@dataclass(frozen=True)
class Imaging:
    """Optical, tissue and detector settings of a simulated microscope.

    Brightnesses are in expected detected photons per pixel per frame, relative to
    `photons_per_pixel`, the resting brightness of a typical cell's soma.

    Attributes
    ----------
    kind
        "two-photon" or "miniscope" (one-photon).
    pixel_size_um
        Pixel size in micrometres.
    cell_diameter_um
        Range of soma diameters (uniform).
    cell_overlap
        Fraction of the sum of their radii by which two somata may overlap in the image.
    psf_sigma_um
        Lateral blur of cells, vessels and background (Gaussian sigma).
    nucleus_brightness
        Brightness of the nucleus relative to the cytosol (GCaMP is cytosolic: < 1).
    photons_per_pixel
        Median resting brightness of a soma (log-normal across cells, see `brightness_spread`).
    brightness_spread
        Standard deviation of the natural log of the cells' resting brightness (truncated at
        two standard deviations).
    neuropil_level
        Resting neuropil brightness relative to `photons_per_pixel`.
    neuropil_sigma_um
        Spatial scale (Gaussian sigma) over which the neuropil averages population activity.
    neuropil_gain
        Neuropil ΔF/F per unit of the local mean ΔF/F of the population.
    neuropil_occlusion
        Fraction of the neuropil hidden behind a soma (two-photon: 0.3, so that a soma's pixels
        hold 0.7 times the surrounding neuropil; one-photon collects out-of-focus light: 0).
    background_level
        Static background (autofluorescence, out-of-focus haze) relative to `photons_per_pixel`.
    vessels_um
        ``(spacing, width)`` in micrometres of each network of blood vessels, which are dark.
    vessel_contrast
        Fraction of neuropil and background light missing on a vessel's axis.
    vignetting
        Fraction of light lost in the corners of the field of view (quadratic fall-off).
    bleach_time_s
        Time constant of the exponential bleaching of all fluorescence (inf: none).
    drift
        Standard deviation of a slow multiplicative drift of all fluorescence (focus, laser).
    drift_timescale_s
        Time scale (Gaussian sigma) of that drift.
    gain
        Digital units per detected photon.
    read_noise
        Standard deviation of the Gaussian detector noise, in digital units.
    offset
        Digital value of zero photons.
    """

    kind: str
    pixel_size_um: float
    cell_diameter_um: tuple[float, float]
    cell_overlap: float
    psf_sigma_um: float
    nucleus_brightness: float
    photons_per_pixel: float
    brightness_spread: float
    neuropil_level: float
    neuropil_sigma_um: float
    neuropil_gain: float
    neuropil_occlusion: float
    background_level: float
    vessels_um: tuple[tuple[float, float], ...]
    vessel_contrast: float
    vignetting: float
    bleach_time_s: float
    drift: float
    drift_timescale_s: float
    gain: float
    read_noise: float
    offset: float


TWO_PHOTON = Imaging(
    kind="two-photon",
    pixel_size_um=1.2,
    cell_diameter_um=(10.0, 15.0),
    cell_overlap=0.1,
    psf_sigma_um=0.6,
    nucleus_brightness=0.4,
    photons_per_pixel=40.0,
    brightness_spread=0.2,
    neuropil_level=0.6,
    neuropil_sigma_um=25.0,
    neuropil_gain=1.0,
    neuropil_occlusion=0.3,
    background_level=0.15,
    vessels_um=((150.0, 8.0), (60.0, 3.5)),
    vessel_contrast=0.8,
    vignetting=0.1,
    bleach_time_s=1200.0,
    drift=0.02,
    drift_timescale_s=20.0,
    gain=1.0,
    read_noise=1.0,
    offset=100.0,
)
"""Two-photon imaging of GCaMP in mouse cortex L2/3, 1.2 um per pixel, photon-counting detector.

A good recording: resting somata give 40 photons per pixel per frame (median), so the mean of a
soma has about 2 % noise per frame and a single GCaMP6f spike is about 9 times that noise at
its peak. The neuropil is 0.6 times as bright as a soma and 30 % of it is hidden behind somata
(the usual 0.7 contamination ratio); with the background it adds about half of a soma's resting
light to the soma's pixels, fluctuating with the local population (ΔF/F s.d. about 2 %).
"""

MINISCOPE = Imaging(
    kind="miniscope",
    pixel_size_um=2.5,
    cell_diameter_um=(12.0, 18.0),
    cell_overlap=0.2,
    psf_sigma_um=3.5,
    nucleus_brightness=0.6,
    photons_per_pixel=150.0,
    brightness_spread=0.3,
    neuropil_level=3.0,
    neuropil_sigma_um=50.0,
    neuropil_gain=1.0,
    neuropil_occlusion=0.0,
    background_level=1.0,
    vessels_um=((200.0, 15.0),),
    vessel_contrast=0.4,
    vignetting=0.4,
    bleach_time_s=300.0,
    drift=0.03,
    drift_timescale_s=20.0,
    gain=1.0,
    read_noise=3.0,
    offset=50.0,
)
"""One-photon head-mounted miniscope (GRIN lens, CMOS camera), 2.5 um per pixel.

Larger somata blurred by a 3.5 um point-spread function, over out-of-focus light (neuropil and
unseen cells, smooth over 50 um) three times as bright as the cells and collected through them,
plus a static haze as bright again, strong vignetting and faster bleaching.
"""


# Expected photon counts from which `detect` approximates the Poisson distribution.
_EXACT_POISSON_BELOW = 10.0


class SmoothField:
    """A movie that is smooth in space, stored as values on a coarse grid of Gaussian bumps.

    ``frames(start, stop)`` interpolates the grid values to full resolution; the bumps sum to 1
    at every pixel, so a constant grid gives a constant image.

    Parameters
    ----------
    nodes
        (T, gy, gx) value of each grid node in each frame.
    basis_y, basis_x
        Sparse (H, gy) and (W, gx) weight of each node row / column at each image row / column.
    """

    def __init__(self, nodes: np.ndarray, basis_y: sparse.sparray, basis_x: sparse.sparray) -> None:
        self.nodes = np.asarray(nodes, dtype=np.float32)
        self.basis_y = sparse.csr_array(basis_y, dtype=np.float32)
        self.basis_x = sparse.csr_array(basis_x, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nodes.shape[0], self.basis_y.shape[0], self.basis_x.shape[0])

    def frames(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, H, W) frames of the field."""
        # Sparse products: no multi-threaded BLAS call, whose idle spinning threads would slow
        # down the single-threaded noise generation that follows on a busy machine.
        nodes = self.nodes[start:stop]
        n, grid_y, grid_x = nodes.shape
        height, width = self.shape[1:]
        along_x = self.basis_x @ nodes.reshape(n * grid_y, grid_x).T  # (W, n * gy)
        along_x = np.ascontiguousarray(along_x.reshape(width, n, grid_y).transpose(2, 1, 0))
        both = self.basis_y @ along_x.reshape(grid_y, n * width)  # (H, n * W)
        return np.ascontiguousarray(both.reshape(height, n, width).transpose(1, 0, 2))


def population_field(
    positions: np.ndarray, activity: np.ndarray, shape: tuple[int, int], sigma: float
) -> SmoothField:
    """Local Gaussian-weighted mean of the activity of a population, as a smooth movie.

    Parameters
    ----------
    positions
        (M, 2) positions (y, x) in pixels of the neurons, which may lie outside the image.
    activity
        (M, T) activity of each neuron, for example its ΔF/F.
    shape
        (height, width) of the image.
    sigma
        Gaussian radius of the averaging, in pixels.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    spacing = sigma / 2
    node_y = np.arange(-sigma, shape[0] + sigma + spacing, spacing)
    node_x = np.arange(-sigma, shape[1] + sigma + spacing, spacing)
    # The Gaussian weight of neuron m at node (j, k) factorises into a row and a column term.
    weight_y = _gaussian(node_y[:, None] - positions[None, :, 0], sigma)
    weight_x = _gaussian(node_x[:, None] - positions[None, :, 1], sigma)
    weight = (weight_y[:, None, :] * weight_x[None, :, :]).reshape(-1, len(positions))
    weight /= np.maximum(weight.sum(1, keepdims=True), np.float32(1e-12))
    nodes = (weight @ np.asarray(activity, dtype=np.float32)).T
    return SmoothField(
        nodes.reshape(-1, len(node_y), len(node_x)),
        _bump_basis(np.arange(shape[0]), node_y, spacing),
        _bump_basis(np.arange(shape[1]), node_x, spacing),
    )


def _gaussian(distance: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-(distance**2) / (2 * sigma**2)).astype(np.float32)


def _bump_basis(pixels: np.ndarray, nodes: np.ndarray, width: float) -> sparse.csr_array:
    """(pixels, nodes) weights of Gaussian bumps, cut at 3 widths, summing to 1 at each pixel."""
    offset = pixels[:, None] - nodes[None, :]
    basis = np.where(np.abs(offset) <= 3 * width, _gaussian(offset, width), 0.0)
    return sparse.csr_array(basis / basis.sum(1, keepdims=True))


def smooth_texture(
    shape: tuple[int, int], sigma: float, spread: float, *, rng: np.random.Generator
) -> np.ndarray:
    """Static log-normal texture (H, W): median 1, log s.d. `spread`, grain of `sigma` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return np.exp(spread * field / max(field.std(), 1e-12))


def vignette(shape: tuple[int, int], loss: float) -> np.ndarray:
    """Relative light collection (H, W): 1 in the centre, ``1 - loss`` in the corners."""
    y = np.linspace(-1, 1, shape[0])[:, None]
    x = np.linspace(-1, 1, shape[1])[None, :]
    return 1 - loss * (y**2 + x**2) / 2


def drift_trace(
    n_frames: int,
    frame_rate: float,
    *,
    rng: np.random.Generator,
    bleach_time_s: float = np.inf,
    amplitude: float = 0.0,
    timescale_s: float = 20.0,
) -> np.ndarray:
    """Slow multiplicative change of all fluorescence (T,): bleaching times a smooth random drift.

    The drift ``1 + w(t)`` is a stationary Gaussian process of standard deviation `amplitude`
    (white noise smoothed by a Gaussian of sigma `timescale_s`): a recording shorter than the
    time scale sees only part of a swing.
    """
    if not timescale_s > 0:
        raise ValueError(f"the drift's time scale must be positive seconds; got {timescale_s}")
    time = np.arange(n_frames) / frame_rate
    bleaching = np.exp(-time / bleach_time_s)
    sigma = max(timescale_s * frame_rate, 1e-3)
    pad = int(np.ceil(4 * sigma))
    white = rng.standard_normal(n_frames + 2 * pad)  # padded: no edge effects
    wander = ndimage.gaussian_filter1d(white, sigma)[pad : pad + n_frames]
    if sigma >= 1:
        # Smoothing unit white noise with a Gaussian of sigma s leaves a standard deviation of
        # (4 pi s^2) ** -0.25.
        wander *= amplitude * (4 * np.pi * sigma**2) ** 0.25
    else:  # below a frame the sampled kernel is no Gaussian: measure what it leaves
        impulse = np.zeros(2 * pad + 1)
        impulse[pad] = 1.0
        wander *= amplitude / np.sqrt(np.sum(ndimage.gaussian_filter1d(impulse, sigma) ** 2))
    return bleaching * (1 + wander)


def detect(
    photons: np.ndarray,
    *,
    rng: np.random.Generator,
    gain: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
) -> np.ndarray:
    """Digital uint16 image of expected photon counts: shot noise, gain, read noise, offset.

    Photon counts are Poisson: drawn exactly below 10 expected photons, and above that from a
    skewness-corrected (Cornish-Fisher) rounded normal, which matches the Poisson mean, variance
    and skewness and differs from it by about 0.2 % in total variation, at a quarter of the cost.
    """
    photons = np.asarray(photons, dtype=np.float32)
    counts = np.empty(photons.shape, dtype=np.float32)
    exact = photons < _EXACT_POISSON_BELOW
    counts[exact] = rng.poisson(photons[exact])
    mean = photons[~exact]
    z = rng.standard_normal(mean.size, dtype=np.float32)
    # Rounding adds a variance of 1/12 and the skew term 1/18: take them from the normal part.
    counts[~exact] = np.floor(mean + np.sqrt(mean - np.float32(5 / 36)) * z + (z * z - 1) / 6 + 0.5)
    digital = np.maximum(counts, 0, out=counts)
    digital *= gain
    digital += offset
    if read_noise > 0:
        digital += np.float32(read_noise) * rng.standard_normal(photons.shape, dtype=np.float32)
    return np.clip(np.rint(digital), 0, np.iinfo(np.uint16).max).astype(np.uint16)
