"""Training data: recordings from anywhere, streamed as batches of random windows of tokens.

A *source* is anything that gives a recording, loaded only when it is needed:

- a path that `napari_neurt.io.read_recording` reads (suite2p folder, CaImAn .hdf5, .nwb, .npz of
  traces and centroids, a TIFF movie with ``labels=`` in `read_options`);
- a `Recording`, an object with a ``.recording()`` method (a simulated recording) or one whose
  ``.recording`` is a `Recording` (an animal of `simulate.cohort`);
- a callable without arguments that returns either (for example
  ``lambda: simulate.two_photon(seed=7).recording()``), so that nothing is made before it is used;
- tokens already built: `NeighborhoodTokens` or an array (N, T, n_features).

`WindowStream` holds the sources, never their data: it loads a few recordings at a time, builds
their tokens with the model's token settings, and yields batches of windows drawn uniformly over
neurons and start frames. See its docstring for sharding and reproducibility.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..io import read_recording
from ..model.tokens import NeighborhoodTokens, neighborhood_tokens
from ..recording import Recording

log = logging.getLogger(__name__)

# also accepted: any object with a .recording() method (a simulated recording) or a
# .recording attribute that is a Recording (an animal of a simulated cohort)
RecordingSource = (
    str | os.PathLike | Recording | NeighborhoodTokens | np.ndarray | Callable[[], Any]
)

# Tags that keep the random streams drawn from one seed independent of each other.
_ORDER, _WINDOWS, _MASK = 0, 1, 2


def describe_source(source: RecordingSource) -> str:
    """A short human-readable name for a source (for messages and reports)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Recording):
        return source.source or repr(source)
    if isinstance(source, NeighborhoodTokens | np.ndarray):
        return f"tokens {tuple(np.shape(getattr(source, 'tokens', source)))}"
    if isinstance(getattr(source, "recording", None), Recording):
        return getattr(source, "animal", None) or describe_source(source.recording)
    if isinstance(source, functools.partial) and source.args:  # a file read with options
        return describe_source(source.args[0])
    return getattr(source, "source", None) or getattr(source, "__name__", None) or repr(source)


def load_recording(source: RecordingSource, read_options: dict | None = None) -> Recording:
    """The `Recording` a source stands for (read, made or returned as is)."""
    if isinstance(source, (str, os.PathLike)):
        return read_recording(source, **(read_options or {}))
    if isinstance(source, Recording):
        return source
    if isinstance(getattr(source, "recording", None), Recording):  # a simulated cohort's animal
        return source.recording
    if hasattr(source, "recording") and callable(source.recording):
        return source.recording()
    if callable(source):
        return load_recording(source(), read_options)
    raise TypeError(
        f"cannot make a recording from {type(source).__name__}; give a path, a Recording, an "
        "object with .recording() or a .recording attribute, or a callable returning one"
    )


def delta_for(recording: Recording, token_settings: dict | None) -> float | None:
    """The neighbourhood radius a model's token settings ask for, in the recording's unit.

    The rule of `NeurtModel.tokens_for`: micrometres when the recording has a pixel size and the
    settings say ``delta_um``, pixels when it has none and they say ``delta_px``, else None (the
    default rule of `neighborhood_tokens`).
    """
    settings = token_settings or {}
    if recording.pixel_size_um and settings.get("delta_um"):
        return float(settings["delta_um"])
    if not recording.pixel_size_um and settings.get("delta_px"):
        return float(settings["delta_px"])
    return None


def source_tokens(
    source: RecordingSource, token_settings: dict | None = None, read_options: dict | None = None
) -> np.ndarray:
    """float32 tokens (N, T, F) of a source, built as the model with `token_settings` wants them."""
    tokens = source_neighbourhood(source, token_settings, read_options)
    return tokens.tokens if isinstance(tokens, NeighborhoodTokens) else tokens


def source_neighbourhood(
    source: RecordingSource, token_settings: dict | None = None, read_options: dict | None = None
) -> NeighborhoodTokens | np.ndarray:
    """`source_tokens` with what is known of the neurons' neighbourhoods: `NeighborhoodTokens`
    for a recording (or given ones), the float32 array itself for bare tokens."""
    if isinstance(source, NeighborhoodTokens):
        return source
    if isinstance(source, np.ndarray):
        if source.ndim != 3:
            raise ValueError(f"tokens must be (neurons, frames, features); got {source.shape}")
        return source.astype(np.float32, copy=False)
    recording = load_recording(source, read_options)
    return neighborhood_tokens(
        recording.traces,
        recording.centroids,
        delta_for(recording, token_settings),
        pixel_size_um=recording.pixel_size_um,
    )


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process: from torch.distributed when it is set up, else 0, 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class WindowStream(IterableDataset):
    """An endless stream of batches ``(windows (B, L, F) float32, mask seed)`` from many sources.

    The stream is cut into *rounds*. A round loads `recordings_per_round` recordings (each source
    once per pass, in an order shuffled every pass), builds their tokens, and yields
    `batches_per_round` batches of windows drawn uniformly over its recordings, their neurons and
    start frames; then the recordings are dropped. So at most one round's tokens are in memory.

    Sharding: each DDP rank and each DataLoader worker is a shard, ``rank * workers + worker``
    of ``world_size * workers``, that streams all the sources in an order of its own and draws
    its own windows. (Splitting the sources among the shards, as `DistributedSampler` splits a
    dataset, weighed a recording by the size of its shard's share, and left a shard whose share
    was all too short with nothing to stream.) Every random draw depends only on (seed, shard,
    round), never on the data, so a stream is reproducible and `start_batch` (batches this rank
    already took) resumes it without loading what is skipped.
    Use it with ``DataLoader(stream, batch_size=None, collate_fn=Masker(...))``.

    Recordings shorter than `window_length` or without neurons are skipped with a warning.
    """

    def __init__(
        self,
        sources: Iterable[RecordingSource],
        *,
        window_length: int,
        batch_size: int,
        seed: int = 0,
        token_settings: dict | None = None,
        read_options: dict | None = None,
        windows_per_recording: int = 256,
        recordings_per_round: int = 8,
        start_batch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("no training recordings were given")
        if window_length < 1 or batch_size < 1:
            raise ValueError("window_length and batch_size must be at least 1")
        self.window_length = int(window_length)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.token_settings = dict(token_settings or {})
        self.read_options = dict(read_options or {})
        self.recordings_per_round = max(1, int(recordings_per_round))
        self.windows_per_recording = max(1, int(windows_per_recording))
        self.start_batch = int(start_batch)
        if rank is None or world_size is None:
            rank, world_size = distributed_rank()
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def batches_per_round(self) -> int:
        windows = self.recordings_per_round * self.windows_per_recording
        return max(1, windows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[int]]]:
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        # The DataLoader takes batches from its workers in turn, starting with worker 0. In the
        # run being resumed, batch `start_batch` came from worker start_batch % n_workers, so
        # worker k continues the stream of worker (k + start_batch) % n_workers, which had
        # served the batches lane, lane + n_workers, ... below start_batch.
        lane = (worker_id + self.start_batch) % n_workers
        shard = self.rank * n_workers + lane
        skipped = max(0, (self.start_batch - lane + n_workers - 1) // n_workers)
        round_index, first_batch = divmod(skipped, self.batches_per_round)
        while True:
            produced = yield from self._round(shard, round_index, first_batch)
            if not produced:
                raise ValueError(
                    f"none of the {len(self.sources)} training recording(s) has neurons and at "
                    f"least {self.window_length} frames"
                )
            round_index, first_batch = round_index + 1, 0

    def _round_sources(self, shard: int, round_index: int) -> list:
        n = len(self.sources)
        count = min(self.recordings_per_round, n)
        chosen = []
        for position in range(round_index * count, (round_index + 1) * count):
            epoch, index = divmod(position, n)
            order = np.random.default_rng([self.seed, shard, epoch, _ORDER]).permutation(n)
            chosen.append(self.sources[order[index]])
        return chosen

    def _round(self, shard: int, round_index: int, first_batch: int):
        """Yield the batches [first_batch, batches_per_round) of a round; return how many."""
        rng = np.random.default_rng([self.seed, shard, round_index, _WINDOWS])
        n_windows = self.batches_per_round * self.batch_size
        draws = rng.random((3, n_windows))  # recording, neuron, start: drawn before any data
        # A round whose recordings are all unusable takes those of the rounds after it (keeping
        # its own draws), so every round yields all its batches: a resumed stream counts
        # batches_per_round per round it skips, without loading them. None usable over two
        # passes' worth of rounds: 0, an error.
        count = min(self.recordings_per_round, len(self.sources))
        for ahead in range(-(-2 * len(self.sources) // count)):
            sources = self._round_sources(shard, round_index + ahead)
            tokens = [x for x in map(self._usable_tokens, sources) if x is not None]
            if tokens:
                break
        else:
            return 0
        which = (draws[0] * len(tokens)).astype(np.int64)
        windows = np.empty((n_windows, self.window_length, tokens[0].shape[2]), dtype=np.float32)
        for k, x in enumerate(tokens):
            rows = np.flatnonzero(which == k)
            neurons = (draws[1, rows] * x.shape[0]).astype(np.int64)
            starts = (draws[2, rows] * (x.shape[1] - self.window_length + 1)).astype(np.int64)
            windows[rows] = x[neurons[:, None], starts[:, None] + np.arange(self.window_length)]
        for b in range(first_batch, self.batches_per_round):
            batch = windows[b * self.batch_size : (b + 1) * self.batch_size]
            yield torch.from_numpy(batch), [self.seed, shard, round_index, b, _MASK]
        return self.batches_per_round - first_batch

    def _usable_tokens(self, source: RecordingSource) -> np.ndarray | None:
        x = source_tokens(source, self.token_settings, self.read_options)
        if x.shape[0] == 0 or x.shape[1] < self.window_length:
            log.warning(
                "skipping %s: %d neurons x %d frames, windows need %d frames",
                describe_source(source),
                x.shape[0],
                x.shape[1],
                self.window_length,
            )
            return None
        return x


class BagStream(IterableDataset):
    """An endless stream of labelled bags for fine-tuning: ``(windows (B, n, L, F), statistics
    (B, n, S), labels (B,))``.

    A bag is `bag_size` neurons of one recording over the same `window_length` frames, labelled
    with the recording's class, with each neuron's row of `statistics` (one (N, S) array per
    source, for example its `activity_statistics`; without them S is 0). Each round loads
    `recordings_per_round` recordings drawn with `weights` (with replacement; the weights
    balance classes and animals, see `finetune`) and cuts `bags_per_recording` bags from each;
    the round's bags are shuffled and yielded `bags_per_step` at a time. The tokens of the
    `cached_recordings` most recently used recordings are kept, since a cohort's recordings come
    back often. Reproducible for a seed; under DDP each `rank` draws its own bags (rank 0 the
    same as a single process).
    """

    def __init__(
        self,
        sources: Sequence[RecordingSource],
        labels: Sequence[int],
        weights: Sequence[float],
        *,
        window_length: int,
        bag_size: int,
        bags_per_step: int,
        seed: int = 0,
        token_settings: dict | None = None,
        read_options: dict | None = None,
        recordings_per_round: int = 4,
        bags_per_recording: int = 8,
        cached_recordings: int = 16,
        statistics: Sequence[np.ndarray] | None = None,
        rank: int = 0,
    ):
        super().__init__()
        if not len(sources) == len(labels) == len(weights) or not sources:
            raise ValueError("need one label and one weight for each of at least one recording")
        if statistics is not None and len(statistics) != len(sources):
            raise ValueError("need one array of statistics per recording")
        if bags_per_step > recordings_per_round * bags_per_recording:
            raise ValueError(
                f"a round cuts recordings_per_round x bags_per_recording = {recordings_per_round}"
                f" x {bags_per_recording} bags, fewer than the {bags_per_step} of one step; "
                "raise one of them or lower bags_per_step"
            )
        self.statistics = statistics
        self.sources, self.labels = list(sources), np.asarray(labels, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.window_length, self.bag_size = int(window_length), int(bag_size)
        self.bags_per_step, self.seed = int(bags_per_step), int(seed)
        self.token_settings, self.read_options = token_settings, read_options
        self.recordings_per_round = int(recordings_per_round)
        self.bags_per_recording = int(bags_per_recording)
        self.cached_recordings = int(cached_recordings)
        self.rank = int(rank)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        cache: OrderedDict[int, np.ndarray] = OrderedDict()
        for round_index in itertools.count():
            stream = [self.seed, round_index, _WINDOWS] + ([self.rank] if self.rank else [])
            rng = np.random.default_rng(stream)
            picked = rng.choice(len(self.sources), self.recordings_per_round, p=self.weights)
            bags, statistics, labels = [], [], []
            for index in np.unique(picked):
                tokens = self._tokens(index, cache)
                n_bags = self.bags_per_recording * int(np.count_nonzero(picked == index))
                try:
                    windows, neurons = draw_bags(
                        tokens, n_bags, self.bag_size, self.window_length, rng
                    )
                except ValueError as error:
                    raise ValueError(f"{describe_source(self.sources[index])}: {error}") from None
                bags.append(windows)
                statistics.append(self._statistics(index, len(tokens))[neurons])
                labels.append(np.full(n_bags, self.labels[index]))
            bags, labels = np.concatenate(bags), np.concatenate(labels)
            statistics = np.concatenate(statistics)
            order = rng.permutation(len(bags))
            for first in range(0, len(order) - self.bags_per_step + 1, self.bags_per_step):
                chosen = order[first : first + self.bags_per_step]
                yield (
                    torch.from_numpy(bags[chosen]),
                    torch.from_numpy(statistics[chosen]),
                    torch.from_numpy(labels[chosen]),
                )

    def _tokens(self, index: int, cache: OrderedDict[int, np.ndarray]) -> np.ndarray:
        """Tokens of recording `index`, from `cache` (least recently used dropped) or built."""
        if index in cache:
            cache.move_to_end(index)
            return cache[index]
        tokens = source_tokens(self.sources[index], self.token_settings, self.read_options)
        cache[index] = tokens
        if len(cache) > self.cached_recordings:
            cache.popitem(last=False)
        return tokens

    def _statistics(self, index: int, n_neurons: int) -> np.ndarray:
        if self.statistics is None:
            return np.zeros((n_neurons, 0), dtype=np.float32)
        return self.statistics[index]


def draw_bags(
    tokens: np.ndarray, n_bags: int, bag_size: int, window_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random neurons over a common random window: float32 windows (n_bags, bag_size,
    window_length, F) and the neurons' indices (n_bags, bag_size).

    Neurons are drawn without replacement when the recording has at least `bag_size` of them.
    """
    n_neurons, n_frames, n_features = tokens.shape
    if n_neurons == 0 or n_frames < window_length:
        raise ValueError(
            f"a recording of {n_neurons} neurons x {n_frames} frames is too small for windows of "
            f"{window_length} frames"
        )
    bags = np.empty((n_bags, bag_size, window_length, n_features), dtype=np.float32)
    chosen = np.empty((n_bags, bag_size), dtype=np.int64)
    for k in range(n_bags):
        neurons = rng.choice(n_neurons, bag_size, replace=n_neurons < bag_size)
        start = rng.integers(0, n_frames - window_length + 1)
        bags[k] = tokens[neurons, start : start + window_length]
        chosen[k] = neurons
    return bags, chosen
