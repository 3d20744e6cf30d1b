"""Trace extraction speed and memory on a movie larger than a comfortable chunk of RAM.

Writes a synthetic uint16 TIFF movie (default 4000 x 512 x 512 = 2.1 GB) with 500 ROIs, opens it
with `tifffile.memmap`, and times, each in a fresh process so that peak resident memory is its own:

- `sum pass`: one plain reduction over the memmap, chunk by chunk (the floor for any reader);
- `extract`: `napari_neurt.extract_traces` with its default threads (one per CPU, at most 4),
  with one thread, and with neuropil subtraction;
- `naive loop`: ``movie[:, labels == i].mean(axis=1)`` per ROI, what a user would write; timed on
  a subset of ROIs and scaled linearly to all of them (it re-reads the movie for every ROI).

Usage::

    python benchmarks/extraction.py                 # the full 2 GB case (needs ~2.2 GB of disk)
    python benchmarks/extraction.py --frames 500    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM), file-backed pages included."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(folder: Path, frames: int, size: int, n_rois: int, seed: int = 0) -> tuple[Path, Path]:
    import tifffile

    movie_path, labels_path = folder / "movie.tif", folder / "labels.npy"
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(8, size - 8, (n_rois, 2))
    for i, (cy, cx) in enumerate(centres, start=1):  # discs of radius 5 px; later ones on top
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = i
    np.save(labels_path, labels)  # always anew: a kept movie may come from another --rois
    if movie_path.exists():
        with tifffile.TiffFile(movie_path) as tif:
            if tif.series[0].shape == (frames, size, size):
                return movie_path, labels_path

    def frames_():  # written frame by frame: the benchmark itself never holds the movie in RAM
        for _ in range(frames):
            yield rng.integers(0, 4096, (size, size), dtype=np.uint16)

    tifffile.imwrite(movie_path, frames_(), shape=(frames, size, size), dtype=np.uint16,
                     bigtiff=True, photometric="minisblack")  # frames, never RGB planes
    return movie_path, labels_path


def run_method(method: str, movie_path: str, labels_path: str, chunk: int, naive_rois: int) -> dict:
    import tifffile

    from napari_neurt import extract_traces

    movie = tifffile.memmap(movie_path, mode="r")
    labels = np.load(labels_path)
    ids = np.unique(labels[labels > 0])
    start = time.perf_counter()
    if method == "sum pass":
        total = 0
        for t0 in range(0, movie.shape[0], chunk):
            total += int(movie[t0 : t0 + chunk].sum(dtype=np.uint64))
    elif method == "extract":
        extract_traces(movie, labels, chunk_size=chunk)
    elif method == "extract, 1 thread":
        extract_traces(movie, labels, chunk_size=chunk, workers=1)
    elif method == "extract + neuropil":
        extract_traces(movie, labels, chunk_size=chunk, neuropil=True)
    elif method == "naive loop":
        for roi in ids[:naive_rois]:
            movie[:, labels == roi].mean(axis=1)
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    if method == "naive loop":
        seconds *= len(ids) / min(naive_rois, len(ids))
    return {"method": method, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--size", type=int, default=512, help="frame height = width in pixels")
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=128, help="frames per chunk for every method")
    parser.add_argument("--naive-rois", type=int, default=10, help="ROIs timed for the naive loop")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the movie (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the movie for the next run")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # child process: one method, JSON on stdout
        print(json.dumps(run_method(args.worker[0], args.worker[1], args.worker[2], args.chunk, args.naive_rois)))
        return

    folder = args.dir or Path(tempfile.mkdtemp(prefix="neurt-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    movie_path, labels_path = make_inputs(folder, args.frames, args.size, args.rois)
    size_gb = movie_path.stat().st_size / 1e9

    def child(method: str) -> dict:
        command = [sys.executable, __file__, "--chunk", str(args.chunk), "--naive-rois", str(args.naive_rois)]
        out = subprocess.run([*command, "--worker", method, str(movie_path), str(labels_path)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{method} failed:\n{out.stderr}")
        return json.loads(out.stdout)

    child("sum pass")  # warm the page cache so that every method reads from the same state
    order = ["sum pass", "extract", "extract, 1 thread", "extract + neuropil", "sum pass", "naive loop"]
    results = [child(m) for m in order]
    floor = min(r["seconds"] for r in results if r["method"] == "sum pass")

    print(f"movie {args.frames} x {args.size} x {args.size} uint16 ({size_gb:.2f} GB on disk), "
          f"{args.rois} ROIs, chunks of {args.chunk} frames, tifffile.memmap, page cache warm")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print(f"| {'method':<20} | {'seconds':>8} | {'speed vs sum pass':>17} | {'peak RSS (MiB)':>14} |")
    print(f"|{'-' * 22}|{'-' * 10}|{'-' * 19}|{'-' * 16}|")
    for r in results:
        note = " (scaled)" if r["method"] == "naive loop" else ""
        print(f"| {r['method'] + note:<20} | {r['seconds']:8.2f} | {floor / r['seconds']:17.2f} | {r['peak_rss_mib']:14.0f} |")
    if not args.keep and args.dir is None:
        movie_path.unlink()
        labels_path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
