"""`Recording`: the one data model the rest of napari-neurt passes around."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass
class Recording:
    """Per-neuron activity of one imaging plane.

    Attributes
    ----------
    traces
        float32 (N, T): one row per neuron, in the order of `neuron_ids`.
    neuron_ids
        int64 (N,): the neuron's value in `labels` (ascending when made from labels).
    centroids
        float64 (N, 2): centre of mass of each neuron in pixels, as (y, x).
    frame_rate
        Frames per second (Hz).
    labels
        Optional integer (H, W) ROI image; 0 is background, neuron `i` is `neuron_ids[i]`.
    pixel_size_um
        Optional pixel size in micrometres, so that distances can be given in um.
    mean_image
        Optional (H, W) reference image (for example suite2p's `meanImg`).
    source
        Where the data came from (a path, or a description).
    metadata
        Plain extra information (trace kind, reader options, iscell probabilities, ...). The
        entries named in `PER_NEURON_METADATA` hold one row per neuron (CaImAn's
        ``footprints`` one column), and `select` picks them along with the neurons.
    """

    traces: np.ndarray
    neuron_ids: np.ndarray
    centroids: np.ndarray
    frame_rate: float
    labels: np.ndarray | None = None
    pixel_size_um: float | None = None
    mean_image: np.ndarray | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.traces = np.ascontiguousarray(self.traces, dtype=np.float32)
        if self.traces.ndim != 2:
            raise ValueError(
                f"traces must be 2-D (neurons, frames); got shape {self.traces.shape}. "
                "A single neuron's trace is traces[None, :]."
            )
        n = self.traces.shape[0]
        self.neuron_ids = np.asarray(self.neuron_ids).astype(np.int64, copy=False).reshape(-1)
        if self.neuron_ids.shape != (n,):
            raise ValueError(f"neuron_ids has {self.neuron_ids.size} entries for {n} traces")
        if len(np.unique(self.neuron_ids)) != n:
            raise ValueError("neuron_ids must be unique")
        self.centroids = np.asarray(self.centroids, dtype=np.float64).reshape(-1, 2) if n else (
            np.zeros((0, 2))
        )
        if self.centroids.shape != (n, 2):
            raise ValueError(f"centroids must be (N, 2) = ({n}, 2) as (y, x); got {self.centroids.shape}")
        self.frame_rate = float(self.frame_rate)
        if not np.isfinite(self.frame_rate) or self.frame_rate <= 0:
            raise ValueError(f"frame_rate must be a positive number of Hz; got {self.frame_rate}")
        if self.pixel_size_um is not None:
            self.pixel_size_um = float(self.pixel_size_um)
            if not np.isfinite(self.pixel_size_um) or self.pixel_size_um <= 0:
                raise ValueError(f"pixel_size_um must be positive; got {self.pixel_size_um}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.ndim != 2 or not np.issubdtype(self.labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be a 2-D integer image; got {self.labels.ndim}-D {self.labels.dtype}"
                )
        if self.mean_image is not None:
            self.mean_image = np.asarray(self.mean_image)

    # -- derived -------------------------------------------------------------------
    @property
    def n_neurons(self) -> int:
        return self.traces.shape[0]

    @property
    def n_frames(self) -> int:
        return self.traces.shape[1]

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.frame_rate

    @property
    def times(self) -> np.ndarray:
        """Time of each frame in seconds."""
        return np.arange(self.n_frames) / self.frame_rate

    def __repr__(self) -> str:
        extra = f", labels {self.labels.shape}" if self.labels is not None else ""
        px = f", {self.pixel_size_um:g} um/px" if self.pixel_size_um else ""
        return (
            f"Recording({self.n_neurons} neurons x {self.n_frames} frames at {self.frame_rate:g} Hz"
            f"{px}{extra}, source={self.source!r})"
        )

    # -- constructors and views ----------------------------------------------------
    @classmethod
    def from_labels(cls, traces: np.ndarray, labels: np.ndarray, frame_rate: float, **kwargs) -> Recording:
        """A recording whose neurons are the non-zero values of `labels`, in ascending order."""
        labels = np.asarray(labels)
        ids = label_ids(labels)
        return cls(
            traces=traces,
            neuron_ids=ids,
            centroids=label_centroids(labels, ids),
            frame_rate=frame_rate,
            labels=labels,
            **kwargs,
        )

    def select(self, which: np.ndarray) -> Recording:
        """A new recording with only the neurons picked by a boolean mask or index array.

        The labels image keeps only the selected neurons (the others become background).
        """
        which = np.asarray(which)
        if which.dtype == bool:
            if which.shape != (self.n_neurons,):
                raise ValueError(
                    f"a neuron mask must have one entry per neuron ({self.n_neurons}); "
                    f"got shape {which.shape}"
                )
            index = np.flatnonzero(which)
        elif which.size and not np.issubdtype(which.dtype, np.integer):
            raise ValueError(f"select takes a boolean mask or integer indices; got {which.dtype}")
        else:
            index = which.astype(np.int64).reshape(-1)
        labels = self.labels
        if labels is not None:
            keep = np.isin(labels, self.neuron_ids[index])
            labels = np.where(keep, labels, 0).astype(labels.dtype)
        metadata = dict(self.metadata)
        for key in PER_NEURON_METADATA:
            value = metadata.get(key)
            if key == "footprints":  # pixels x neurons, a sparse matrix np.shape does not know
                if getattr(value, "shape", (0, 0))[-1] == self.n_neurons:
                    metadata[key] = value[:, index]
            elif np.ndim(value) and len(value) == self.n_neurons:
                metadata[key] = np.asarray(value)[index]
        return replace(
            self,
            traces=self.traces[index],
            neuron_ids=self.neuron_ids[index],
            centroids=self.centroids[index],
            labels=labels,
            metadata=metadata,
        )


PER_NEURON_METADATA = (
    "iscell", "is_cell", "suite2p_index", "neuropil", "spikes",  # suite2p
    "component_index", "footprints",  # CaImAn (footprints: pixels x neurons)
    "nwb_roi_id",  # NWB
    "dff", "ensembles", "snr", "affected",  # simulated
)  # fmt: skip
"""The `Recording.metadata` entries that follow the neurons (`Recording.select` picks them)."""


def label_ids(labels: np.ndarray) -> np.ndarray:
    """The non-zero values of a label image, ascending."""
    ids = np.unique(labels)
    return ids[ids != 0].astype(np.int64)


def label_centroids(labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Centre of mass (y, x) of each label in `ids` (default: all non-zero labels, ascending)."""
    if ids is None:
        ids = label_ids(labels)
    if len(ids) == 0:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, ids), dtype=np.float64).reshape(
        -1, 2
    )
