"""Calcium-imaging movies from (OME-)TIFF files, read lazily.

An uncompressed, contiguous TIFF is memory-mapped: it opens at once and a movie larger than RAM
streams from disk. Anything else (compressed, tiled, scattered pages) is read through tifffile's
zarr store, one decoded page per frame asked for. Either way ``movie[t0:t1]`` is a numpy array.

tifffile reads past damage: a truncated file opens with fewer pages, or with pages whose data lie
beyond the end of the file, and only a log message says so. Here such a file is refused with a
`ReaderError` instead of becoming a silently short or garbage movie.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ._common import PathLike, ReaderError, existing_path

__all__ = [
    "ConcatenatedMovie",
    "TiffInfo",
    "TiffMovie",
    "read_movie",
    "read_tiff_image",
    "tiff_info",
]

TIFF_SUFFIXES = (".tif", ".tiff")


class _CollectErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tiff_errors(path: Path) -> Iterator[None]:
    """Raise `ReaderError` for tifffile's exceptions and for the damage tifffile only logs.

    Wrap only calls into tifffile: a ValueError raised inside becomes "not a valid TIFF".
    """
    logger = logging.getLogger("tifffile")
    collected = _CollectErrors()
    logger.addHandler(collected)
    try:
        yield
    except ReaderError:
        raise
    except tifffile.TiffFileError as error:
        raise ReaderError(f"{path} is not a valid TIFF file or is damaged: {error}") from None
    except (EOFError, struct.error, ValueError, IndexError, KeyError) as error:
        raise ReaderError(
            f"{path} could not be read as TIFF; it is probably truncated or corrupt "
            f"({type(error).__name__}: {error})"
        ) from None
    finally:
        logger.removeHandler(collected)
    if collected.messages:
        raise ReaderError(
            f"{path} is truncated or corrupt: tifffile reports {collected.messages[0]!r}. "
            "Copy the file again from its source, or re-save it (e.g. in Fiji)."
        )


@dataclass(frozen=True)
class TiffInfo:
    """What the first image series of a TIFF holds, read from its tags only.

    `shape` and `axes` (tifffile's axis codes, e.g. ``"TYX"``; ``"S"`` is colour) have their
    singleton axes dropped.
    """

    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    n_series: int
    dataoffset: int | None  # where the data start when they are contiguous and uncompressed
    data_end: int  # byte just past the last image data
    scanimage_planes: int = 1  # z-planes per volume ScanImage saves frame by frame in turn
    scanimage_channels: int = 1  # channels ScanImage saves frame by frame in turn


def _scanimage_layout(tif: tifffile.TiffFile) -> tuple[int, int]:
    """(planes, channels) a ScanImage file saves one frame after the other; (1, 1) otherwise.

    tifffile splits these pages only when it can: a fast-z recording (one frame per plane) reads
    as a plain (planes x volumes, height, width) stack, and the channels of an acquisition stopped
    mid-frame stay interleaved.
    """
    frame_data = (tif.scanimage_metadata or {}).get("FrameData") or {}
    channels = frame_data.get("SI.hChannels.channelSave", 1)
    channels = len(channels) if isinstance(channels, list) else 1
    planes = frame_data.get("SI.hStackManager.actualNumSlices")  # ScanImage 2020 on
    if planes is None:
        stacks_on = frame_data.get("SI.hStackManager.enable", True)
        planes = frame_data.get("SI.hStackManager.numSlices", 1) if stacks_on else 1
    try:
        return max(int(planes), 1), channels
    except (TypeError, ValueError, OverflowError):
        return 1, channels


def _inspect(path: Path) -> TiffInfo:
    path = existing_path(path, "TIFF file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a TIFF file")
    with _tiff_errors(path), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ReaderError(f"{path} holds no images")
        series = tif.series[0]
        planes, channels = _scanimage_layout(tif) if tif.is_scanimage else (1, 1)
        contiguous = series.dataoffset is not None and series.keyframe.compression == 1
        if contiguous:
            data_end = series.dataoffset + series.nbytes
        else:
            data_end = max(
                (
                    offset + count
                    for page in series.pages
                    if page is not None
                    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)
                ),
                default=0,
            )
        info = TiffInfo(
            shape=tuple(series.shape),
            axes=series.axes,
            dtype=np.dtype(series.dtype),
            n_series=len(tif.series),
            dataoffset=series.dataoffset if contiguous else None,
            data_end=data_end,
            scanimage_planes=planes,
            scanimage_channels=channels,
        )
    file_size = os.path.getsize(path)
    if info.data_end > file_size:
        raise ReaderError(
            f"{path} is truncated: its image data should end at byte {info.data_end:,} but the "
            f"file has only {file_size:,} bytes. Copy the file again from its source."
        )
    return info


def _check_movie_shape(info: TiffInfo, path: Path) -> None:
    """Raise a ValueError saying why the series is not a single-channel (T, H, W) movie."""
    shape, axes = info.shape, info.axes
    if "S" in axes and shape[axes.index("S")] > 1:
        raise ValueError(
            f"{path} holds colour (RGB) images of shape {shape} (axes {axes}); a calcium movie has "
            "one value per pixel: save a single channel"
        )
    if len(shape) == 2:
        more = (
            f" (the file has {info.n_series} image series; only the first is read)"
            if info.n_series > 1
            else ""
        )
        raise ValueError(
            f"{path}: got a single 2-D frame of shape {shape}{more}; a movie needs (frames, "
            "height, width). Open it as an image or a label image instead."
        )
    if len(shape) == 3 and (info.scanimage_planes > 1 or info.scanimage_channels > 1):
        raise ValueError(
            f"{path} is a ScanImage recording of {info.scanimage_planes} planes and "
            f"{info.scanimage_channels} channels saved frame by frame in turn; a movie needs one "
            "plane and one channel: split them first (e.g. Image > Stacks > Tools > Deinterleave "
            "in Fiji)"
        )
    if len(shape) != 3:
        raise ValueError(
            f"{path} holds a {len(shape)}-D image of shape {shape} (axes {axes}); a movie needs "
            "(frames, height, width): keep one channel and one plane "
            "(e.g. Image > Hyperstacks in Fiji)"
        )


class TiffMovie:
    """A (frames, height, width) TIFF movie whose frames are decoded when indexed.

    Behaves like a read-only numpy array for what napari and the extraction need: ``shape``,
    ``dtype``, ``ndim``, ``len()``, indexing (returns numpy arrays) and ``np.asarray``.
    """

    def __init__(self, path: PathLike) -> None:
        import zarr

        self.path = Path(path)
        self._store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
        self._array = zarr.open_array(self._store, mode="r")
        self.shape: tuple[int, ...] = tuple(self._array.shape)
        self.dtype = np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        try:
            return np.asarray(self._array[key])
        except (IndexError, TypeError):
            raise
        except Exception as error:  # decoding errors surface here, long after opening
            raise ReaderError(
                f"could not decode frames {key!r} of {self.path}; the file is damaged "
                f"({type(error).__name__}: {error})"
            ) from None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                "a TiffMovie is decoded from its file: it cannot be viewed without a copy"
            )
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def close(self) -> None:
        """Release the file handle (indexing afterwards reopens it)."""
        self._store.close()

    def __enter__(self) -> TiffMovie:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TiffMovie({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class ConcatenatedMovie:
    """Several movies of the same frame shape and dtype, one after another along time."""

    def __init__(self, movies: Sequence, paths: Sequence[Path]) -> None:
        self.movies = list(movies)
        self.paths = list(paths)
        self.dtype = np.dtype(self.movies[0].dtype)
        lengths = [m.shape[0] for m in self.movies]
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.shape: tuple[int, ...] = (int(self._starts[-1]), *self.movies[0].shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        from ..extraction import release_pages

        key = key if isinstance(key, tuple) else (key,)
        if not key or key[0] is Ellipsis:
            first, rest = slice(None), key  # each file's frames then take the same key
        else:
            first, rest = key[0], key[1:]
        frames = np.arange(self.shape[0])[first]
        if np.ndim(frames) == 0:
            movie = int(np.searchsorted(self._starts, frames, side="right")) - 1
            return np.asarray(self.movies[movie][(int(frames - self._starts[movie]), *rest)])
        owners = np.searchsorted(self._starts, frames, side="right") - 1
        pieces = []
        breaks = np.flatnonzero(np.diff(owners)) + 1
        for run in np.split(np.arange(len(frames)), breaks):
            if len(run) == 0:
                continue
            movie = int(owners[run[0]])
            local = frames[run] - self._starts[movie]
            step = int(local[1] - local[0]) if len(local) > 1 else 1
            if step > 0 and np.array_equal(local, local[0] + step * np.arange(len(local))):
                index = slice(int(local[0]), int(local[-1]) + 1, step)
            else:
                index = local
            raw = self.movies[movie][(index, *rest)]
            # a memory-mapped file's frames are copied and its pages let go, as extraction
            # does for one file: streaming many files must not keep them all resident
            pieces.append(np.array(raw) if isinstance(raw, np.memmap) else np.asarray(raw))
            release_pages(raw)
        if not pieces:
            return np.asarray(self.movies[0][(slice(0, 0), *rest)])
        return np.concatenate(pieces, axis=0)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return (
            f"ConcatenatedMovie({len(self.movies)} files, shape={self.shape}, dtype={self.dtype})"
        )


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _tiffs_in(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
        key=_natural_key,
    )
    if not files:
        raise FileNotFoundError(f"no .tif/.tiff files in the folder {folder}")
    return files


def _read_one_movie(path: Path) -> np.ndarray | TiffMovie:
    info = _inspect(path)
    _check_movie_shape(info, path)
    with _tiff_errors(path):
        if info.dataoffset is not None:
            movie = tifffile.memmap(path, series=0, mode="r")
        else:
            movie = TiffMovie(path)
            movie[-1]  # decode the last frame now, so that a damaged file fails here, not later
    if tuple(movie.shape) != info.shape:
        raise ReaderError(
            f"{path}: the image data have shape {movie.shape}, the tags say {info.shape}"
        )
    return movie


def read_movie(path: PathLike | Sequence[PathLike]) -> np.ndarray | TiffMovie | ConcatenatedMovie:
    """Open a multi-page (OME-)TIFF movie lazily as a (frames, height, width) array.

    Parameters
    ----------
    path
        A TIFF file; or a list of TIFF files, or a folder of them (read in natural name order,
        so ``trial2`` comes before ``trial10``), which are joined along time, e.g. the separate
        trials of one field of view.

    Returns
    -------
    numpy.memmap or TiffMovie or ConcatenatedMovie
        A memory map for uncompressed contiguous files, otherwise an array-like that decodes only
        the frames indexed. ``movie[t0:t1]`` is always a numpy array.

    Raises
    ------
    FileNotFoundError
        If a path does not exist (or a folder holds no TIFF).
    ValueError
        If a file holds a single 2-D frame, colour or more than 3 dimensions, or the files of a
        list differ in frame shape or dtype; `ReaderError` (a ValueError) if a file is not a
        valid TIFF or is truncated.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path).expanduser()
        if not path.is_dir():
            return _read_one_movie(path)
        paths = _tiffs_in(path)
    else:
        paths = [Path(p).expanduser() for p in path]
        if not paths:
            raise ValueError("read_movie got an empty list of files")
    movies = [_read_one_movie(p) for p in paths]
    if len(movies) == 1:
        return movies[0]
    first = movies[0]
    for p, movie in zip(paths[1:], movies[1:], strict=True):
        if movie.shape[1:] != first.shape[1:] or movie.dtype != first.dtype:
            raise ValueError(
                f"{p} has frames of {movie.shape[1:]} {movie.dtype} but {paths[0]} has "
                f"{first.shape[1:]} {first.dtype}; only files of one field of view can be joined"
            )
    return ConcatenatedMovie(movies, paths)


def tiff_info(path: PathLike) -> TiffInfo:
    """Shape, axes and dtype of a TIFF's first image series, read from its tags only.

    Raises `ReaderError` when the file is not a valid TIFF or is truncated.
    """
    return _inspect(Path(path))


def read_tiff_image(path: PathLike) -> np.ndarray:
    """Read a TIFF's first image series fully into memory (for single images such as labels)."""
    path = Path(path)
    _inspect(path)
    with _tiff_errors(path):
        return tifffile.imread(path, series=0)
