"""Where the cells are and what they look like: placement, soma footprints, labels, vessels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.special import expit


def place_cells(
    shape: tuple[int, int],
    radii: np.ndarray,
    *,
    rng: np.random.Generator,
    overlap: float = 0.0,
    margin: float = 0.0,
    forbidden: np.ndarray | None = None,
) -> np.ndarray:
    """Random centres (float64 (N, 2), (y, x) in pixels) of cells that barely overlap.

    Centres are drawn uniformly at least `margin` pixels inside the image and never on a True
    pixel of the `forbidden` mask (vessels); a candidate is kept when it lies at least
    ``(1 - overlap) * (r_i + r_j)`` from every cell ``j`` kept before.

    Parameters
    ----------
    shape
        (height, width) of the image.
    radii
        (N,) radius of each cell, in pixels.
    rng
        Source of randomness.
    overlap
        Fraction of the sum of two radii by which two cells may overlap.
    margin
        Smallest distance of a centre from the image border, in pixels.
    forbidden
        Optional (H, W) boolean mask of pixels where no centre may fall.

    Raises
    ------
    ValueError
        When the cells do not fit.
    """
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    n_cells = len(radii)
    height, width = shape
    scale = 1.0 - overlap
    # A spatial hash with buckets as wide as the largest possible distance: a candidate need
    # only be compared with the cells in the 3 x 3 buckets around it.
    side = max(2 * scale * radii.max(initial=0.0), 1e-9)
    buckets: dict[tuple[int, int], list[int]] = {}
    centres = np.empty((n_cells, 2))
    n_placed = 0
    budget = 30 * n_cells + 1000
    while n_placed < n_cells and budget > 0:
        batch = rng.uniform((margin, margin), (height - margin, width - margin), size=(n_cells, 2))
        budget -= len(batch)
        if forbidden is not None:
            pixel = np.minimum(batch.astype(np.int64), (height - 1, width - 1))
            batch = batch[~forbidden[pixel[:, 0], pixel[:, 1]]]
        for y, x in batch:
            by, bx = int(y // side), int(x // side)
            near = [
                j
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                for j in buckets.get((by + dy, bx + dx), ())
            ]
            if near:
                distance = np.hypot(*(centres[near] - (y, x)).T)
                if (distance < scale * (radii[near] + radii[n_placed])).any():
                    continue
            buckets.setdefault((by, bx), []).append(n_placed)
            centres[n_placed] = y, x
            n_placed += 1
            if n_placed == n_cells:
                break
    if n_placed < n_cells:
        raise ValueError(
            f"could place only {n_placed} of {n_cells} cells in {height}x{width} pixels: "
            "ask for fewer cells or a larger image"
        )
    return centres


def cell_footprints(
    centres: np.ndarray,
    shape: tuple[int, int],
    diameters: np.ndarray,
    *,
    rng: np.random.Generator,
    elongation: float = 0.15,
    irregularity: float = 0.05,
    nucleus_brightness: float = 0.4,
    blur: float = 0.5,
    texture: float = 0.15,
) -> tuple[sparse.csr_array, sparse.csr_array]:
    """Soma footprints: ellipses with irregular edges and a dimmer nucleus, optically blurred.

    Parameters
    ----------
    centres
        (N, 2) centres (y, x) in pixels.
    shape
        (height, width) of the image.
    diameters
        (N,) mean soma diameters in pixels.
    rng
        Source of randomness.
    elongation
        The ratio of long to short axis is ``exp(2 u)`` with u uniform in [0, `elongation`].
    irregularity
        Standard deviation of the relative amplitude of the outline's second angular harmonic
        (harmonics 3 to 5 get 2/3, 2/4 and 2/5 of it).
    nucleus_brightness
        Brightness of the nucleus relative to the cytosol (GCaMP is cytosolic: < 1).
    blur
        Gaussian point-spread function sigma, in pixels.
    texture
        Relative standard deviation of the fine granularity of the cytosol.

    Returns
    -------
    weights
        float32 (N, H*W) footprints, each scaled so that its mean over its soma is 1.
    somata
        bool (N, H*W) masks of the somata (inside the irregular outline, before blurring).
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n_cells = len(centres)
    radius = _per_cell(np.broadcast_to(np.asarray(diameters, dtype=np.float64), (n_cells,)) / 2)
    stretch = _per_cell(np.exp(rng.uniform(0, elongation, n_cells)))
    # Each cell is drawn on its own square patch of pixels around its centre.
    reach = radius.max(initial=1) * stretch.max(initial=1) * (1 + 4 * irregularity) + 3 * blur
    offsets = np.arange(-int(reach) - 2, int(reach) + 3)
    anchor = np.round(centres).astype(np.int64)
    dy = (offsets[None, :, None] - _per_cell(centres[:, 0] - anchor[:, 0])) / radius
    dx = (offsets[None, None, :] - _per_cell(centres[:, 1] - anchor[:, 1])) / radius
    angle = _per_cell(rng.uniform(0, np.pi, n_cells))
    along = (dy * np.cos(angle) + dx * np.sin(angle)) / stretch
    across = (dx * np.cos(angle) - dy * np.sin(angle)) * stretch
    rho = np.hypot(along, across)  # 1 on the smooth elliptic outline
    phi = np.arctan2(across, along)
    outline = np.ones_like(rho)
    for harmonic in range(2, 6):
        # Higher harmonics are weaker, so that outlines stay blob-like rather than star-like.
        amplitude = _per_cell(irregularity * 2 / harmonic * rng.standard_normal(n_cells))
        phase = _per_cell(rng.uniform(0, 2 * np.pi, n_cells))
        outline += amplitude * np.cos(harmonic * phi + phase)
    outline = np.maximum(outline, 0.5)
    edge = 0.5  # pixels: soft edge of an optical section through a round soma
    soma = expit((outline - rho) * radius / edge)
    # The nucleus sits near the middle, 50-65 % of the soma's diameter.
    shift = rng.normal(0, 0.1, (2, n_cells))
    nucleus_size = _per_cell(rng.uniform(0.5, 0.65, n_cells))
    nucleus_rho = np.hypot(along - _per_cell(shift[0]), across - _per_cell(shift[1])) / nucleus_size
    nucleus = expit((1 - nucleus_rho) * radius / edge)
    weights = soma * (1 - (1 - nucleus_brightness) * nucleus)
    grain = ndimage.gaussian_filter(rng.standard_normal(weights.shape), (0, 0.7, 0.7))
    weights *= np.clip(1 + texture * grain / max(grain.std(), 1e-12), 0, None)
    if blur > 0:
        weights = ndimage.gaussian_filter(weights, (0, blur, blur), mode="constant")

    rows = _per_cell(anchor[:, 0]) + offsets[None, :, None]
    cols = _per_cell(anchor[:, 1]) + offsets[None, None, :]
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    somata = (rho < outline) & inside
    weights *= somata.sum((1, 2), keepdims=True) / (weights * somata).sum((1, 2), keepdims=True)
    keep = inside & (weights > 1e-3 * weights.max(axis=(1, 2), keepdims=True))
    pixel = rows * shape[1] + cols
    cell = np.broadcast_to(_per_cell(np.arange(n_cells)), weights.shape)
    size = (n_cells, shape[0] * shape[1])
    weights = sparse.csr_array((weights[keep].astype(np.float32), (cell[keep], pixel[keep])), size)
    somata = sparse.csr_array((np.ones(somata.sum(), bool), (cell[somata], pixel[somata])), size)
    return weights, somata


def _per_cell(values: np.ndarray) -> np.ndarray:
    """(N,) values as (N, 1, 1), to broadcast over per-cell patches."""
    return np.asarray(values)[:, None, None]


def footprints_to_labels(
    weights: sparse.sparray, somata: sparse.sparray, shape: tuple[int, int]
) -> np.ndarray:
    """int32 (H, W) labels: cell ``i`` is ``i + 1`` on its soma; overlaps go to the brighter cell.

    `weights` decide overlaps: scale them by each cell's brightness to compare cells.
    """
    overlap = sparse.coo_array(sparse.csr_array(somata).multiply(weights))
    # Sort by pixel, then brightness: the last entry of each pixel's run is the brightest cell.
    order = np.lexsort((overlap.data, overlap.col))
    pixel, cell = overlap.col[order], overlap.row[order]
    last = np.append(pixel[1:] != pixel[:-1], True)
    labels = np.zeros(shape[0] * shape[1], dtype=np.int32)
    labels[pixel[last]] = cell[last] + 1
    return labels.reshape(shape)


def vessel_map(
    shape: tuple[int, int], *, spacing: float, width: float, rng: np.random.Generator
) -> np.ndarray:
    """Vessel-like network, float (H, W): 1 on a vessel's axis falling to 0 away from it.

    The vessels follow the zero crossings of a smooth Gaussian random field whose correlation
    length is `spacing` / 3 pixels; their full width at half maximum is about `width` pixels.
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), spacing / 3, mode="wrap")
    slope = np.hypot(*np.gradient(field))
    distance = np.abs(field) / np.maximum(slope, 1e-12 * field.std())  # to the zero crossing
    return np.exp(-0.5 * (distance / (width / 2.355)) ** 2)
