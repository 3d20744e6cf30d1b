"""NEuRT over whole recordings: sliding windows, batching, devices, progress and cancellation.

`load_model` returns a `NeurtModel`: the network plus what is needed to use it right (class names,
token settings, provenance). Its long methods exist twice, the Progress protocol way
(`napari_neurt.progress`): ``iter_reconstruct`` / ``iter_classify`` are generators that yield a
`Progress` after each batch and return the result; ``reconstruct`` / ``classify`` drive them with
`run_steps` (optional progress callback and stop flag).

A recording of T frames is cut into windows of ``seq_len`` frames, evenly spaced from the first
frame to the last and overlapping by at least ``overlap`` frames (default seq_len // 4); a
recording shorter than ``seq_len`` is one window of its own length. Per-frame outputs of
overlapping windows are averaged with a Hann taper (`window_taper`), so that each window counts
least near its edges, where it sees the least context, and the result has no seams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..progress import Progress, Steps, StopFlag, run_steps
from ..recording import Recording
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, Checkpoint, read_checkpoint, save_checkpoint
from .fills import kriging_fill, pchip_fill
from .neurt import Neurt, NeurtConfig, interpolate_hidden
from .published import PUBLISHED, WeightsNotAvailable, fetch_published, read_published
from .tokens import (
    ROW_BLOCK,
    NeighborhoodTokens,
    head_statistics,
    neighborhood_tokens,
    token_settings,
)

log = logging.getLogger(__name__)

TokensLike = np.ndarray | torch.Tensor | NeighborhoodTokens  # (N, T, n_features)
ProgressCallback = Callable[[Progress], object]
Stop = StopFlag | Callable[[], bool]

SOURCES = ("default", *PUBLISHED)
CHANNELS = ("all", "own")
# Windows per batch unless told otherwise. On CPU small batches stay in cache and run fastest
# (measured: 8 windows ~60/s, 64 windows ~50/s on 2 cores); GPUs want large ones.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 256, "mps": 64}
TAPER_FLOOR = 1e-3  # keeps every frame's weight positive, also at the very edge of a window
CALIBRATION_REDRAWS = 32  # shifts tried for a row whose first one finds no step to hide


# a recording this far (as a share) from a model's training frame rate is warned about
FRAME_RATE_TOLERANCE = 0.1


@dataclass
class ClassificationResult:
    """What `NeurtModel.classify` says about one recording.

    Attributes
    ----------
    class_names
        Names of the classes; probabilities are of class 1 (``class_names[1]``).
    neuron_probability
        (N,) mean over each neuron's windows of the class-1 probability.
    class_probability
        (N, n_classes) the same for every class.
    temporal_attention
        (N, T) the classifier's pooling weights over time, stitched over windows (each window's
        weights sum to 1, so values are about 1 / seq_len where attention is even).
    neuron_attention
        (N,) weight of each neuron in the recording's decision, summing to 1. With an
        "evidence" recording head, the share of the pooled evidence for the most probable class
        other than class 0 (class 1 with two classes) that each neuron contributes: a high weight
        means the neuron argues for that class. With a "gated" head, how much the head looked at
        the neuron, whichever way it argues.
    recording_probability
        Probability that the recording is of class 1.
    recording_head
        True when the model has a recording head (pooling over neurons, see `RecordingHead`).
    recording_rule
        How `recording_probability` and `neuron_attention` were obtained, in words.
    neuron_embedding
        (N, n_embd) each neuron's time-pooled embedding, averaged over its windows.
    recording_class_probability
        (n_classes,) the recording's probability of every class (by the same rule as
        `recording_probability`, its element 1): with more than two classes, the verdict.
    """

    class_names: tuple[str, ...]
    neuron_probability: np.ndarray
    class_probability: np.ndarray
    temporal_attention: np.ndarray
    neuron_attention: np.ndarray
    recording_probability: float
    recording_head: bool
    recording_rule: str
    neuron_embedding: np.ndarray = field(repr=False)
    recording_class_probability: np.ndarray | None = None


def verdict(class_names: Sequence[str], probabilities: Sequence[float]) -> str:
    """A recording's verdict in words: P(class 1) with two classes, else every class's
    probability after the most probable class (P(class 1) alone says nothing of the others).
    A model without class names (a checkpoint may have none) names them "class <index>"."""
    if len(class_names) != len(probabilities):
        class_names = tuple(f"class {k}" for k in range(len(probabilities)))
    if len(class_names) <= 2:
        return f"P({class_names[1]}) = {float(probabilities[1]):.3f}"
    pairs = zip(class_names, probabilities, strict=True)
    each = ", ".join(f"P({name}) = {float(p):.3f}" for name, p in pairs)
    return f"{class_names[int(np.argmax(probabilities))]} ({each})"


@dataclass(frozen=True)
class Calibration:
    """How an interpolation-residual model's reconstruction is put together on one recording.

    A hidden entry becomes ``linear + cubic * (pchip - linear) + kriging * (kriging fill -
    linear) + correction * c``: `linear` is the model's own fill (straight lines across each
    gap), `pchip` SciPy's shape-preserving cubic through the same visible steps (`pchip_fill`),
    the kriging fill the best linear prediction from the steps around the gap under the row's
    own autocovariance (`kriging_fill`), and `c` the model's learned correction to its fill. The
    fill is thus a blend of the three (`cubic` and `kriging` at least 0, together at most 1).
    ``Calibration()`` (cubic 0, kriging 0, correction 1) is the model as trained;
    `NeurtModel.calibrate` fits the shares on the recording itself.
    """

    cubic: float = 0.0
    correction: float = 1.0
    kriging: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cubic", "correction", "kriging"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"Calibration.{name} must be a finite number; got {value!r}")
            object.__setattr__(self, name, float(value))  # numpy scalars included (frozen)
        for name in ("cubic", "kriging"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"Calibration.{name} is a share between 0 and 1; got {getattr(self, name)}"
                )
        if self.cubic + self.kriging > 1.0 + 1e-9:
            raise ValueError(
                "Calibration.cubic and Calibration.kriging are shares of one fill and add up to "
                f"at most 1; got {self.cubic} + {self.kriging}"
            )

    @property
    def blends_fills(self) -> bool:
        """Whether the fill is anything but the model's own straight line."""
        return bool(self.cubic or self.kriging)

    @classmethod
    def fit(cls, target: np.ndarray, *, towards_cubic: np.ndarray,
            towards_kriging: np.ndarray, correction: np.ndarray) -> Calibration:
        """The shares that fit ``target ~ cubic * towards_cubic + kriging * towards_kriging +
        correction * correction`` best.

        The arrays are the own trace at the fitting steps: the truth less the linear fill, the
        PCHIP and the kriging fill less the linear fill, and the model's correction. Least
        squares with every share in [0, 1] and the two fill shares adding up to at most 1, so
        that the fill never goes beyond a blend of the three and the correction is never
        amplified; a share whose column is all zeros cannot matter and stays as trained.
        """
        columns = np.stack([towards_cubic, towards_kriging, correction], axis=1)
        shares = _bounded_least_squares(columns, target)
        if shares[0] + shares[1] > 1.0:
            # a convex problem's optimum violating a constraint lies on it: kriging = 1 - cubic
            on_edge = np.stack([towards_cubic - towards_kriging, correction], axis=1)
            cubic, scale = _bounded_least_squares(on_edge, target - towards_kriging, [0.0, 1.0])
            shares = np.array([cubic, 1.0 - cubic, scale])
        return cls(cubic=float(shares[0]), kriging=float(shares[1]), correction=float(shares[2]))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        """The shares as text, as the panel's status and `neurt reconstruct` show them."""
        return ", ".join(f"{name} {value:.2f}" for name, value in self.to_dict().items())


def _bounded_least_squares(columns: np.ndarray, target: np.ndarray,
                           untouched: list[float] | None = None) -> np.ndarray:
    """Coefficients in [0, 1] of `columns` (n, k) that fit `target` best; an all-zero column
    cannot matter and keeps its `untouched` value (default: the model as trained, 0 0 1)."""
    from scipy.optimize import lsq_linear

    columns = np.asarray(columns, dtype=np.float64)
    shares = np.array(untouched if untouched is not None else [0.0, 0.0, 1.0])
    used = np.abs(columns).sum(axis=0) > 0
    if used.any():
        shares[used] = lsq_linear(
            columns[:, used], np.asarray(target, dtype=np.float64), bounds=(0, 1), method="bvls"
        ).x
    # BVLS can land a rounding error past a bound (-1e-16 for 0): the bounds are the shares'
    return np.clip(shares, 0.0, 1.0)


def attention_log10_ratio(attention: np.ndarray) -> np.ndarray:
    """log10 of each neuron's attention over an even share (1 / N): 0 for an average neuron.

    Attention can sit on a few neurons; on this scale every other neuron keeps its place too.
    """
    attention = np.asarray(attention, dtype=np.float64)
    return np.log10(np.maximum(attention * attention.size, np.finfo(np.float64).tiny))


def window_starts(n_frames: int, length: int, overlap: int) -> np.ndarray:
    """First frames of the fewest windows of `length` frames that overlap by at least `overlap`
    frames and cover [0, n_frames), evenly spaced: the first starts at 0, the last ends at T."""
    if n_frames <= length:
        return np.zeros(1, dtype=np.int64)
    count = math.ceil((n_frames - length) / (length - overlap)) + 1
    return np.round(np.linspace(0, n_frames - length, count)).astype(np.int64)


def window_taper(length: int) -> np.ndarray:
    """Hann weights over a window (float32, highest in the middle), floored above 0."""
    phase = (np.arange(length) + 0.5) / length
    return np.maximum(np.sin(np.pi * phase) ** 2, TAPER_FLOOR).astype(np.float32)


class NeurtModel:
    """A NEuRT network ready for inference on recordings of any length, on any device."""

    def __init__(
        self,
        module: Neurt,
        *,
        class_names: tuple[str, ...] | list[str] = (),
        tokens: dict[str, Any] | None = None,
        frame_rate_hz: float | None = None,
        provenance: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
    ):
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.class_names = tuple(class_names)
        self.token_settings = dict(tokens or token_settings())
        self.frame_rate_hz = frame_rate_hz
        self.provenance = dict(provenance or {})
        # bf16 autocast on CUDA only, where tensor cores make it pay; CPU and MPS stay float32,
        # which keeps parity with the published model. Set `bf16 = False` for float32 on CUDA.
        self.bf16 = self.device.type == "cuda"

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: str | torch.device = "auto"
    ) -> NeurtModel:
        return cls(
            checkpoint.build(),
            class_names=checkpoint.class_names,
            tokens=checkpoint.tokens,
            frame_rate_hz=checkpoint.frame_rate_hz,
            provenance=checkpoint.provenance,
            device=device,
        )

    @property
    def config(self) -> NeurtConfig:
        return self.module.config

    @property
    def default_batch_size(self) -> int:
        """Windows per batch unless told otherwise: 8 on CPU, 256 on CUDA, 64 on MPS."""
        return DEFAULT_BATCH_SIZE.get(self.device.type, 64)

    @property
    def default_overlap(self) -> int:
        """Frames shared by consecutive windows unless told otherwise: a quarter window."""
        return self.config.seq_len // 4

    def __repr__(self) -> str:
        source = self.provenance.get("source") or self.provenance.get("path", "?")
        return f"NeurtModel({source}, {self.config}, device={self.device})"

    def to(self, device: str | torch.device) -> NeurtModel:
        """Move to another device ("auto", "cpu", "cuda:1", ...); returns self."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        self.bf16 = self.device.type == "cuda"
        return self

    def save(self, folder: str | os.PathLike) -> Path:
        """Write this model as a napari-neurt checkpoint folder (safetensors + config.json)."""
        provenance = {
            k: v for k, v in self.provenance.items() if k not in ("path", "weights_sha256")
        }
        if "weights_sha256" in self.provenance:
            provenance["derived_from_sha256"] = self.provenance["weights_sha256"]
        return save_checkpoint(
            folder,
            self.module,
            class_names=self.class_names,
            tokens=self.token_settings,
            frame_rate_hz=self.frame_rate_hz,
            provenance=provenance,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the model (for results files)."""
        return {
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "tokens": self.token_settings,
            "frame_rate_hz": self.frame_rate_hz,
            "provenance": self.provenance,
            "device": str(self.device),
            "bf16": self.bf16,
        }

    # --- tokens -----------------------------------------------------------------------------
    def tokens_for(self, recording: Recording, delta: float | None = None) -> NeighborhoodTokens:
        """Tokens of `recording`; `delta` in um when it has a pixel size, else in pixels.

        Without `delta`, the model's own training radius is used when it is known in a usable
        unit, else the default rule of `neighborhood_tokens`.
        """
        if delta is None:
            if recording.pixel_size_um and self.token_settings.get("delta_um"):
                delta = float(self.token_settings["delta_um"])
            elif not recording.pixel_size_um and self.token_settings.get("delta_px"):
                delta = float(self.token_settings["delta_px"])
        if self.frame_rate_hz and (
            abs(recording.frame_rate / self.frame_rate_hz - 1) > FRAME_RATE_TOLERANCE
        ):
            warnings.warn(
                f"{recording.source or 'the recording'} is at {recording.frame_rate:g} Hz; "
                f"this model was trained at {self.frame_rate_hz:g} Hz, so its time scale differs",
                stacklevel=2,
            )
        return neighborhood_tokens(
            recording.traces, recording.centroids, delta, pixel_size_um=recording.pixel_size_um
        )

    # --- reconstruction ---------------------------------------------------------------------
    def reconstruct(
        self,
        tokens: TokensLike,
        hide: np.ndarray | torch.Tensor | None = None,
        *,
        channels: str = "all",
        overlap: int | None = None,
        batch_size: int | None = None,
        calibration: Calibration | None = None,
        progress: ProgressCallback | None = None,
        stop: Stop | None = None,
    ) -> np.ndarray:
        """The model's reconstruction, float32 (N, T, F), of `tokens` (N, T, F).

        `hide` is a bool (N, T) array of time steps hidden from the model: with ``channels="all"``
        all features of a hidden step are set to 0 (as in the published pretraining); with
        ``channels="own"`` only the neuron's own trace (feature 0) is, and the neighbourhood stays
        visible. `overlap` is the least overlap of consecutive windows in frames (default
        `default_overlap`, seq_len // 4): more costs more windows and puts every frame nearer
        the middle of some window. `batch_size` is in windows (default `default_batch_size`).
        `calibration` (interpolation-residual models only; see `Calibration`) sets how the
        hidden entries are assembled from the linear fill, a PCHIP fill and the model's
        correction; None is the model as trained. `calibrate` fits one on the recording itself.
        `progress` is called with a `Progress` after each batch; `stop` (an Event or a callable)
        cancels between batches by raising `napari_neurt.Cancelled`.
        """
        steps = self.iter_reconstruct(
            tokens,
            hide,
            channels=channels,
            overlap=overlap,
            batch_size=batch_size,
            calibration=calibration,
        )
        return run_steps(steps, progress=progress, stop=stop)

    def iter_reconstruct(
        self,
        tokens: TokensLike,
        hide: np.ndarray | torch.Tensor | None = None,
        *,
        channels: str = "all",
        overlap: int | None = None,
        batch_size: int | None = None,
        calibration: Calibration | None = None,
    ) -> Steps[np.ndarray]:
        """`reconstruct` as a generator of `Progress` that returns the reconstruction."""
        if calibration is None:
            calibration = Calibration()
        if not isinstance(calibration, Calibration):
            raise TypeError(
                "calibration must be a Calibration (from NeurtModel.calibrate); "
                f"got {calibration!r}"
            )
        if calibration != Calibration() and not self.config.interpolate:
            raise ValueError(
                "a calibration needs an interpolation-residual model (config.interpolate); this "
                "one predicts hidden values outright, there is no fill to calibrate"
            )
        x = self._check_tokens(tokens)
        hidden = self._check_hide(hide, x.shape[:2], channels)
        total = yield from self._iter_stitched(
            x, hidden, channels, overlap, batch_size, calibration
        )
        return total.numpy()

    def calibrate(
        self,
        tokens: TokensLike,
        hide: np.ndarray | torch.Tensor,
        *,
        channels: str = "all",
        seed: int = 0,
        overlap: int | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        stop: Stop | None = None,
    ) -> Calibration:
        """The `Calibration` of this model's fill and correction, fitted on the recording itself.

        An interpolation-residual model reconstructs a hidden step as its linear interpolation
        fill plus a learned correction. On recordings unlike its training data the correction
        can hurt (on smooth, fast traces it is noise), on smooth traces a cubic fill beats the
        straight line, and on noisy ones a kriging fill, which averages the gap's noisy edges,
        beats both. This hides, next to `hide`, the same pattern shifted in time by a random
        number of frames per neuron (at steps `hide` leaves visible, so the gaps have the same
        lengths), reconstructs both at once and fits, by least squares on the own trace
        (feature 0) at the extra steps, the three shares of `Calibration`: how far to move from
        the linear fill towards PCHIP and towards the kriging fill, and how much of the
        correction to add. Pass it to
        ``reconstruct(..., calibration=...)`` with the same `hide` and `channels`. The steps in
        `hide` are never scored, so that it can then be asked for them. `seed` draws the
        shifts; the rest as in `reconstruct`. Costs one reconstruction.
        """
        steps = self.iter_calibrate(
            tokens, hide, channels=channels, seed=seed, overlap=overlap, batch_size=batch_size
        )
        return run_steps(steps, progress=progress, stop=stop)

    def iter_calibrate(
        self,
        tokens: TokensLike,
        hide: np.ndarray | torch.Tensor,
        *,
        channels: str = "all",
        seed: int = 0,
        overlap: int | None = None,
        batch_size: int | None = None,
    ) -> Steps[Calibration]:
        """`calibrate` as a generator of `Progress` that returns the `Calibration`."""
        if not self.config.interpolate:
            raise ValueError("calibrate needs an interpolation-residual model (config.interpolate)")
        x = self._check_tokens(tokens)
        hidden = self._check_hide(hide, x.shape[:2], channels)
        n_frames = x.shape[1]
        if not hidden.any() or n_frames < 2:
            raise ValueError(
                "calibrate needs hidden steps (hide) to copy: it fits on the same pattern "
                "shifted in time"
            )
        rng = np.random.default_rng(seed)
        shifts = rng.integers(1, n_frames, size=x.shape[0])
        shifted = torch.stack([row.roll(int(s)) for row, s in zip(hidden, shifts, strict=True)])
        extra = shifted & ~hidden
        # a periodic pattern (k-fold spans) shifted by a multiple of its period lands on
        # itself: draw such a row's shift again
        for row in torch.nonzero(hidden.any(1) & ~hidden.all(1) & ~extra.any(1)).flatten():
            for shift in rng.integers(1, n_frames, size=CALIBRATION_REDRAWS):
                extra[row] = hidden[row].roll(int(shift)) & ~hidden[row]
                if extra[row].any():
                    break
        if not extra.any():
            raise ValueError(
                "calibrate found no visible step to hide: `hide` covers every frame its shifted "
                "copy falls on; hide fewer frames"
            )
        both = hidden | extra
        fill, correction = yield from self._iter_stitched(
            x, both, channels, overlap, batch_size, None
        )
        own, where = x[..., 0].numpy(), both.numpy()
        cubic, kriged = pchip_fill(own, where), kriging_fill(own, where)
        at = extra.numpy()
        fill = fill.numpy()[at].astype(np.float64)
        return Calibration.fit(
            own[at] - fill,
            towards_cubic=cubic[at] - fill,
            towards_kriging=kriged[at] - fill,
            correction=correction.numpy()[at],
        )

    def _iter_stitched(self, x, hidden, channels, overlap, batch_size, calibration):
        """Windowed reconstruction of tokens `x` with `hidden` steps, stitched with the taper.

        With a `Calibration`: the reconstruction (N, T, F) it describes (a published model's
        output is all correction, and only the identity calibration reaches it). With
        ``calibration=None``: the own trace's linear fill and correction apart, a pair of (N, T)
        tensors (stitching is linear: they add up to the reconstruction), which is what
        `calibrate` needs.
        """
        n, n_frames, n_features = x.shape
        plan = _WindowPlan(n, n_frames, self.config.seq_len, self._check_overlap(overlap))
        taper = torch.from_numpy(plan.taper)[None, :, None]
        if calibration is None:
            parts = torch.zeros((2, n, n_frames, 1), dtype=torch.float32)
        else:
            scale = calibration.correction
            total = torch.zeros((n, n_frames, n_features), dtype=torch.float32)
            # the fill shares move from the linear fill the windows used, stitched alike
            linear = torch.zeros_like(total) if calibration.blends_fills else None

        def step(first: int, last: int) -> None:
            neurons, frames = plan.indices(first, last)
            steps = hidden[neurons, frames]
            batch = hide_steps(x[neurons, frames], steps, channels)
            entries = hidden_entries(steps, channels, n_features)
            with self.inference_context():
                out = self.module(batch.to(self.device), entries.to(self.device)).float().cpu()
            if calibration is None:
                fill = interpolate_hidden(batch, entries)[..., :1]
                parts[0].index_put_((neurons, frames), fill * taper, accumulate=True)
                parts[1].index_put_((neurons, frames), (out[..., :1] - fill) * taper,
                                    accumulate=True)
                return
            if scale != 1.0 or linear is not None:  # only residual models get here (checked)
                fill = interpolate_hidden(batch, entries)
                out = fill + scale * (out - fill)
                if linear is not None:
                    linear.index_put_((neurons, frames), fill * taper, accumulate=True)
            total.index_put_((neurons, frames), out * taper, accumulate=True)

        yield from self._batches(plan.n_windows, batch_size, "reconstruct", step)
        weight = torch.from_numpy(plan.weight_sum)[None, :, None]
        if calibration is None:
            parts /= weight
            return parts[0, ..., 0], parts[1, ..., 0]
        total /= weight  # in place: the result can be large
        if linear is not None:
            linear /= weight
            blended, straight, tokens = total.numpy(), linear.numpy(), x.numpy()
            # the fills work row by row: blocks of neurons keep their temporaries (float64
            # copies, the kriging systems) to a block's size, with the same values
            for first in range(0, n, ROW_BLOCK):
                block = slice(first, first + ROW_BLOCK)
                entries = hidden_entries(hidden[block], channels, n_features).numpy()
                values = tokens[block].transpose(0, 2, 1)  # rows of (neuron, feature) over time
                rows = entries.transpose(0, 2, 1)
                shift = np.zeros_like(blended[block])
                for share, fill_rows in ((calibration.cubic, pchip_fill),
                                         (calibration.kriging, kriging_fill)):
                    if share:
                        shift += share * (fill_rows(values, rows).transpose(0, 2, 1)
                                          - straight[block])
                blended[block] += np.where(entries, shift, np.float32(0.0))
        return total

    # --- adaptation -------------------------------------------------------------------------
    def adapt(
        self,
        data: Recording | TokensLike,
        steps: int = 200,
        *,
        hide: np.ndarray | torch.Tensor | None = None,
        channels: str = "all",
        lr: float = 1e-4,
        batch_size: int = 16,
        seed: int = 0,
        delta: float | None = None,
        progress: ProgressCallback | None = None,
        stop: Stop | None = None,
    ) -> NeurtModel:
        """A copy of this model adapted to `data` by a short masked-reconstruction fine-tune.

        `data` is a `Recording` (tokens from `tokens_for` with `delta`) or its tokens. Both
        pretraining regimes are used (`napari_neurt.training.masking`). Steps in `hide` (bool
        (N, T)) are kept from the model, hidden as ``reconstruct(..., channels=channels)`` hides
        them and never scored, so that it can then be asked for them without having seen them.
        `steps` AdamW steps at `lr` of `batch_size` windows; the same `seed` gives the same
        weights. This model is left unchanged. `progress` and `stop` as in `reconstruct`.
        """
        steps_ = self.iter_adapt(
            data,
            steps,
            hide=hide,
            channels=channels,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            delta=delta,
        )
        return run_steps(steps_, progress=progress, stop=stop)

    def iter_adapt(
        self,
        data: Recording | TokensLike,
        steps: int = 200,
        *,
        hide: np.ndarray | torch.Tensor | None = None,
        channels: str = "all",
        lr: float = 1e-4,
        batch_size: int = 16,
        seed: int = 0,
        delta: float | None = None,
    ) -> Steps[NeurtModel]:
        """`adapt` as a generator of `Progress` that returns the adapted model."""
        from ..training.adapt import adaptation_steps  # training imports this module

        tokens = self.tokens_for(data, delta) if isinstance(data, Recording) else data
        x = self._check_tokens(tokens)
        kept_out = self._check_hide(hide, x.shape[:2], channels)
        source = data.source if isinstance(data, Recording) else "tokens"
        return (
            yield from adaptation_steps(
                self,
                x.numpy(),
                kept_out.numpy(),
                steps,
                channels=channels,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                source=source,
            )
        )

    # --- classification ---------------------------------------------------------------------
    def classify(
        self,
        tokens: TokensLike,
        *,
        overlap: int | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        stop: Stop | None = None,
    ) -> ClassificationResult:
        """Classify each neuron's windows and the recording as a whole; see `ClassificationResult`.

        Without a recording head (the published classifier) the recording's probability is the
        published session rule, the fraction of all windows called class 1, and every neuron
        weighs the same (1 / N).
        """
        steps = self.iter_classify(tokens, overlap=overlap, batch_size=batch_size)
        return run_steps(steps, progress=progress, stop=stop)

    def iter_classify(
        self,
        tokens: TokensLike,
        *,
        overlap: int | None = None,
        batch_size: int | None = None,
    ) -> Steps[ClassificationResult]:
        """`classify` as a generator of `Progress` that returns the `ClassificationResult`."""
        config = self.config
        if self.module.time_pool is None:
            raise ValueError("this model has no classifier: it was trained for reconstruction only")
        if config.n_classes < 2:
            raise ValueError("classification needs a model with at least 2 classes")
        x = self._check_tokens(tokens)
        n, n_frames, _ = x.shape
        if n == 0:
            raise ValueError("cannot classify a recording without neurons")
        plan = _WindowPlan(n, n_frames, config.seq_len, self._check_overlap(overlap))
        probabilities = torch.zeros((plan.n_windows, config.n_classes))
        pooled = torch.zeros((plan.n_windows, config.n_embd))
        attention = torch.zeros((n, n_frames))
        taper = torch.from_numpy(plan.taper)[None, :]

        def step(first: int, last: int) -> None:
            neurons, frames = plan.indices(first, last)
            with self.inference_context():
                logits, weights, embedding = self.module.classify_windows(
                    x[neurons, frames].to(self.device)
                )
            probabilities[first:last] = logits.float().softmax(dim=-1).cpu()
            pooled[first:last] = embedding.float().cpu()
            attention.index_put_((neurons, frames), weights.float().cpu() * taper, accumulate=True)

        yield from self._batches(plan.n_windows, batch_size, "classify", step)
        attention /= torch.from_numpy(plan.weight_sum)[None, :]
        class_probability = probabilities.view(n, plan.n_starts, -1).mean(dim=1)
        neuron_embedding = pooled.view(n, plan.n_starts, -1).mean(dim=1)

        if self.module.recording_head is not None:
            logits, weights = self.recording_decision(
                neuron_embedding, tokens if isinstance(tokens, NeighborhoodTokens) else x.numpy()
            )
            recording_class_probability = logits.float().softmax(dim=-1).cpu().numpy()
            recording_probability = float(recording_class_probability[1])
            neuron_attention = weights.float().cpu().numpy()
            if config.recording_pooling == "evidence":
                rule = (
                    "recording head: each neuron's evidence for a class, pooled by log-mean-exp "
                    "next to the mean neuron"
                )
            else:
                rule = "recording head: gated-attention pooling over neurons (Ilse et al. 2018)"
            if config.neuron_stats:
                rule += ", each read with its activity statistics (event rates, correlations)"
        else:
            called = probabilities.argmax(dim=-1)
            recording_class_probability = (
                torch.bincount(called, minlength=config.n_classes).float() / len(called)
            ).numpy()
            recording_probability = float(recording_class_probability[1])
            neuron_attention = np.full(n, 1.0 / n, dtype=np.float32)
            rule = (
                "no recording head: published session rule, the fraction of all windows called "
                f"{self.class_names[1] if len(self.class_names) > 1 else 'class 1'}; "
                "every neuron weighs the same"
            )
        return ClassificationResult(
            class_names=self.class_names,
            neuron_probability=class_probability[:, 1].numpy(),
            class_probability=class_probability.numpy(),
            temporal_attention=attention.numpy(),
            neuron_attention=neuron_attention,
            recording_probability=recording_probability,
            recording_head=self.module.recording_head is not None,
            recording_rule=rule,
            neuron_embedding=neuron_embedding.numpy(),
            recording_class_probability=recording_class_probability,
        )

    def recording_decision(
        self, neuron_embedding: torch.Tensor, tokens: NeighborhoodTokens | np.ndarray
    ):
        """The recording head's logits (n_classes,) and neuron weights (N,) for a recording's
        neuron embeddings (N, n_embd) (from `classify`), given its tokens (N, T, F) for a head
        that also reads their activity statistics (`NeighborhoodTokens` for a head that reads
        the neighbours' event rates)."""
        with self.inference_context():
            return self.module.classify_recording(*self._head_inputs(neuron_embedding, tokens))

    def recording_terms(
        self, neuron_embedding: torch.Tensor, tokens: NeighborhoodTokens | np.ndarray
    ):
        """What the recording head combines into its logits (`RecordingHead.terms`): the
        neurons' scores (N, n_scores) and the input of its linear term, for a recording given as
        to `recording_decision`."""
        if self.module.recording_head is None:
            raise ValueError("this model has no recording head")
        with self.inference_context():
            return self.module.recording_head.terms(*self._head_inputs(neuron_embedding, tokens))

    def _head_inputs(self, neuron_embedding: torch.Tensor, tokens):
        statistics = None
        if self.config.neuron_stats:
            values = head_statistics(tokens, self.config.neuron_stats)
            statistics = torch.from_numpy(values).to(self.device)
        return neuron_embedding.to(self.device), statistics

    # --- attention maps ---------------------------------------------------------------------
    def attention_maps(
        self,
        tokens: TokensLike,
        *,
        start: int = 0,
        hide: np.ndarray | torch.Tensor | None = None,
        channels: str = "all",
    ) -> np.ndarray:
        """Self-attention of one window of one neuron: float32 (n_layer, n_head, W, W).

        `tokens` is one neuron's (T, F) tokens (or (1, T, F)); the window is frames
        [start, start + W) with W = min(seq_len, T). Row q of a map is how much time step q
        attends to each time step. `hide` / `channels` as in `reconstruct`.
        """
        x = torch.as_tensor(
            np.asarray(tokens.tokens if isinstance(tokens, NeighborhoodTokens) else tokens)
        )
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != 1:
            raise ValueError(
                f"attention_maps takes one neuron's tokens (T, F); got shape {tuple(x.shape)}"
            )
        x = self._check_tokens(x)
        hidden = self._check_hide(hide, x.shape[:2], channels)
        n_frames = x.shape[1]
        width = min(self.config.seq_len, n_frames)
        if not 0 <= start <= n_frames - width:
            raise ValueError(
                f"start must be in [0, {n_frames - width}] for {n_frames} frames; got {start}"
            )
        frames = slice(start, start + width)
        window = hide_steps(x[:, frames], hidden[:, frames], channels)
        entries = hidden_entries(hidden[:, frames], channels, x.shape[-1])
        with torch.inference_mode():  # float32 even on CUDA: maps are for reading, not for speed
            _, maps = self.module.encode(
                window.to(self.device), entries.to(self.device), exact=True
            )
        return torch.stack([m[0] for m in maps]).float().cpu().numpy()

    # --- machinery --------------------------------------------------------------------------
    def inference_context(self) -> contextlib.ExitStack:
        """How `module` runs here: inference mode, plus bf16 autocast on CUDA when `bf16`."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.bf16 and self.device.type == "cuda":
            stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.bfloat16))
        return stack

    def _batches(
        self, n_windows: int, batch_size: int | None, stage: str, step: Callable[[int, int], None]
    ) -> Steps[None]:
        """Run `step(first, last)` over batches of windows; out of memory: halve, retry."""
        batch_size = self.default_batch_size if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        done = 0
        while done < n_windows:
            size = min(batch_size, n_windows - done)
            try:
                step(done, done + size)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                batch_size = size // 2
                log.warning(
                    "out of memory with %d windows per batch; retrying with %d", size, batch_size
                )
                continue
            done += size
            yield Progress(done, n_windows, stage)
        self.last_batch_size = batch_size

    def _check_tokens(self, tokens: TokensLike) -> torch.Tensor:
        if isinstance(tokens, NeighborhoodTokens):
            tokens = tokens.tokens
        x = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
        n_features = self.config.n_features
        if x.ndim != 3 or x.shape[-1] != n_features:
            raise ValueError(
                f"tokens must be (neurons, frames, {n_features}); got shape {tuple(x.shape)}. "
                "Build them with napari_neurt.neighborhood_tokens."
            )
        if x.shape[1] == 0:
            raise ValueError("tokens have no frames")
        x = x.detach().to("cpu", torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError(
                "tokens contain NaN or infinite values; neighborhood_tokens fills them"
            )
        return x

    def _check_hide(
        self, hide: np.ndarray | torch.Tensor | None, shape: tuple[int, int], channels: str
    ) -> torch.Tensor:
        if channels not in CHANNELS:
            raise ValueError(
                f"channels must be one of {', '.join(map(repr, CHANNELS))}; got {channels!r}"
            )
        if hide is None:
            return torch.zeros(shape, dtype=torch.bool)
        hide = hide if isinstance(hide, torch.Tensor) else torch.as_tensor(np.asarray(hide))
        if hide.dtype != torch.bool:
            raise ValueError(f"hide must be a boolean array; got dtype {hide.dtype}")
        if tuple(hide.shape) != tuple(shape):
            raise ValueError(
                f"hide must have the shape of the tokens' (neurons, frames) {tuple(shape)}; "
                f"got {tuple(hide.shape)}"
            )
        return hide.to("cpu")

    def _check_overlap(self, overlap: int | None) -> int:
        seq_len = self.config.seq_len
        if overlap is None:
            return self.default_overlap
        if not 0 <= int(overlap) < seq_len:
            raise ValueError(f"overlap must be in [0, {seq_len - 1}] frames; got {overlap}")
        return int(overlap)


class _WindowPlan:
    """All neurons' windows, neuron-major: window w is neuron w // n_starts, start w % n_starts."""

    def __init__(self, n_neurons: int, n_frames: int, seq_len: int, overlap: int):
        self.length = min(seq_len, n_frames)
        self.starts = window_starts(n_frames, self.length, overlap)
        self.n_starts = len(self.starts)
        self.n_windows = n_neurons * self.n_starts
        self.taper = window_taper(self.length)
        weight_sum = np.zeros(n_frames, dtype=np.float32)
        for start in self.starts:  # one pass over starts (not windows): a few hundred at most
            weight_sum[start : start + self.length] += self.taper
        self.weight_sum = weight_sum
        self._offsets = torch.arange(self.length)
        self._starts = torch.from_numpy(self.starts)

    def indices(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors (b, 1) neurons and (b, length) frames for windows [first, last)."""
        window = torch.arange(first, last)
        neurons = (window // self.n_starts)[:, None]
        frames = self._starts[window % self.n_starts][:, None] + self._offsets
        return neurons, frames


def hide_steps(windows: torch.Tensor, hidden: torch.Tensor, channels: str) -> torch.Tensor:
    """Zero the hidden time steps (B, T) of windows (B, T, F): all features, or feature 0 only.

    The one definition of hiding, shared by inference and by training (`napari_neurt.training`),
    so that a model is always asked what it was trained on. Returns a new tensor, or `windows`
    itself when nothing is hidden.
    """
    if not hidden.any():
        return windows
    if channels == "all":
        return windows.masked_fill(hidden[..., None], 0.0)
    own = windows[..., :1].masked_fill(hidden[..., None], 0.0)
    return torch.cat([own, windows[..., 1:]], dim=-1)


def hidden_entries(hidden: torch.Tensor, channels: str, n_features: int) -> torch.Tensor:
    """bool (B, T, n_features): the entries `hide_steps(windows, hidden, channels)` hides.

    What a model that fills hidden entries itself (``NeurtConfig.interpolate``) is given along
    with the windows.
    """
    entries = hidden[..., None].expand(*hidden.shape, n_features)
    if channels == "all":
        return entries
    return entries & (torch.arange(n_features, device=hidden.device) == 0)


# --- loading ------------------------------------------------------------------------------------
def load_model(
    source: str | os.PathLike = "default", device: str | torch.device = "auto"
) -> NeurtModel:
    """Load NEuRT weights for inference.

    `source` is one of:

    - ``"default"``: the weights that ship with napari-neurt;
    - ``"neurt-microns"``: the published model pretrained on MICrONS for reconstruction;
    - ``"neurt-5xfad"``: the published classifier, wild type vs 5xFAD;
    - a path to a napari-neurt checkpoint folder (or its config.json / model.safetensors), or to
      a published-format ``.pth`` state dict.

    Published weights are taken from $NEURT_WEIGHTS_DIR when set (laid out as the repository's
    ``models/`` folder), else downloaded once into the cache ($NEURT_CACHE_DIR or the user cache
    folder) and checked against their published sha256. `device` is "auto" (CUDA, then MPS, then
    CPU), "cpu", "cuda", "cuda:1" or "mps".
    """
    device = resolve_device(device)  # fail on a bad device before any download
    return NeurtModel.from_checkpoint(_read_source(source), device=device)


def _read_source(source: str | os.PathLike) -> Checkpoint:
    if isinstance(source, str) and source == "default":
        folder = files("napari_neurt.model") / "weights" / "default"
        if not (folder / CONFIG_NAME).is_file():
            raise WeightsNotAvailable(
                f"napari-neurt's default weights are missing from this installation ({folder}); "
                "reinstall napari-neurt, or use one of the published models "
                f"({', '.join(map(repr, PUBLISHED))}) or the path to a checkpoint."
            )
        return read_checkpoint(Path(str(folder)))
    if isinstance(source, str) and source in PUBLISHED:
        return read_published(fetch_published(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{str(source)!r} is neither a known model ({', '.join(map(repr, SOURCES))}) nor an "
            "existing checkpoint folder or .pth file"
        )
    if path.is_dir() or path.name in (CONFIG_NAME, WEIGHTS_NAME) or path.suffix == ".safetensors":
        return read_checkpoint(path if path.suffix != ".safetensors" else path.parent)
    if path.suffix in (".pth", ".pt"):
        return read_published(path)
    raise ValueError(
        f"{path}: not a model file; give a napari-neurt checkpoint folder or a published .pth"
    )


def n_windows(n_frames: int, seq_len: int, overlap: int) -> int:
    """Number of windows per neuron for a recording of `n_frames` frames."""
    return len(window_starts(n_frames, min(seq_len, n_frames), overlap))


__all__ = [
    "ClassificationResult",
    "NeurtModel",
    "hidden_entries",
    "hide_steps",
    "load_model",
    "window_starts",
    "window_taper",
    "n_windows",
]
