"""npe2 sample data: simulated recordings with their ground truth (no napari import needed)."""

from __future__ import annotations

from typing import Any

from .. import simulate

#: Arguments of the two samples: small enough to open in a few seconds.
TWO_PHOTON_SAMPLE: dict[str, Any] = {
    "shape": (192, 192),
    "n_cells": 110,
    "n_frames": 900,
    "seed": 0,
}
MINISCOPE_SAMPLE: dict[str, Any] = {"shape": (160, 160), "n_cells": 90, "n_frames": 600, "seed": 0}


def sample_two_photon() -> list[tuple]:
    """A simulated two-photon movie (30 Hz, GCaMP6f) and its ROIs."""
    return layer_data(simulate.two_photon(**TWO_PHOTON_SAMPLE), "two-photon")


def sample_miniscope() -> list[tuple]:
    """A simulated one-photon miniscope movie (20 Hz, GCaMP6f) and its ROIs."""
    return layer_data(simulate.miniscope(**MINISCOPE_SAMPLE), "miniscope")


def layer_data(simulation: simulate.SimulatedRecording, title: str) -> list[tuple]:
    """napari LayerData tuples (movie image, ROI labels) of a simulation.

    The labels layer's metadata holds the whole simulation under ``"neurt_ground_truth"``.
    """
    movie = simulation.movie
    low, high = (float(v) for v in _percentiles(movie, (0.5, 99.9)))
    image_metadata = {
        "frame_rate": simulation.frame_rate,
        "pixel_size_um": simulation.pixel_size_um,
        "source": repr(simulation),
    }
    return [
        (
            movie,
            {
                "name": f"{title} movie (simulated)",
                "colormap": "gray",
                "contrast_limits": (low, high),
                "metadata": image_metadata,
            },
            "image",
        ),
        (
            simulation.labels,
            {
                "name": f"{title} ROIs (simulated)",
                "opacity": 0.4,
                "metadata": {"neurt_ground_truth": simulation},
            },
            "labels",
        ),
    ]


def _percentiles(movie, q):
    # A few frames suffice for display limits; the whole movie would take longer than rendering.
    import numpy as np

    step = max(1, movie.shape[0] // 20)
    return np.percentile(movie[::step], q)
