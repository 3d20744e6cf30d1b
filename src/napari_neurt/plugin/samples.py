"""npe2 sample data: simulated recordings with their ground truth, as napari LayerData tuples.

Nothing here imports napari: npe2 turns the tuples into layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import simulate

#: Arguments of the two samples: big enough to look like data, small enough to open in seconds.
TWO_PHOTON_SAMPLE: dict[str, Any] = {"shape": (192, 192), "n_cells": 110, "n_frames": 900}
MINISCOPE_SAMPLE: dict[str, Any] = {"shape": (160, 160), "n_cells": 90, "n_frames": 600}


def sample_two_photon() -> list[tuple]:
    """A simulated two-photon movie (30 Hz, GCaMP6f) and its ROIs."""
    return layer_data(simulate.two_photon(**TWO_PHOTON_SAMPLE), "two-photon")


def sample_miniscope() -> list[tuple]:
    """A simulated one-photon miniscope movie (20 Hz, GCaMP6f) and its ROIs."""
    return layer_data(simulate.miniscope(**MINISCOPE_SAMPLE), "miniscope")


def layer_data(simulation: simulate.SimulatedRecording, title: str) -> list[tuple]:
    """napari LayerData tuples of a simulation: the movie (image) and its ROIs (labels).

    The labels layer's metadata holds the whole simulation under ``"neurt_ground_truth"``.
    """
    movie = simulation.movie
    # A few frames suffice for display limits.
    low, high = np.percentile(movie[:: max(1, len(movie) // 20)], (0.5, 99.9))
    image = {
        "name": f"{title} movie (simulated)",
        "colormap": "gray",
        "contrast_limits": (float(low), float(high)),
        "metadata": {
            "frame_rate": simulation.frame_rate,
            "pixel_size_um": simulation.pixel_size_um,
            "source": repr(simulation),
        },
    }
    labels = {
        "name": f"{title} ROIs (simulated)",
        "opacity": 0.4,
        "metadata": {"neurt_ground_truth": simulation},
    }
    return [(movie, image, "image"), (simulation.labels, labels, "labels")]
