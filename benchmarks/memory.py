"""Peak memory of the stages that handle whole recordings, each in a fresh process.

    python benchmarks/memory.py                          # 800 neurons x 8,000 frames
    python benchmarks/memory.py --neurons 1600 --frames 16000
    python benchmarks/memory.py --src /path/to/other/checkout/src --src src   # side by side

Prints a Markdown table: for each stage, how much the process's peak resident memory grew
while it ran (getrusage's ru_maxrss, after its inputs were made), in MB and as a multiple of the
float32 traces (N x T x 4 bytes). A stage whose multiple grows with the recording holds
full-size copies; one bounded by its blocks stays near a constant. The growth is above the peak
that making the stage's inputs reached (the tokens, for most): 0 means the stage never went
above it. With several `--src` the same
stages run on each source tree, one column each (each run gets the tree first on PYTHONPATH).

Stages:
- `reconstruct, blended fills`: `NeurtModel.reconstruct` with a calibration that blends PCHIP
  and kriging fills (what the default weights do by default), on a tiny random network of the
  default's kind: the network's own cost is per batch, the fills' per recording;
- `activity statistics`: `tokens.activity_statistics` (every classification with the default
  recording head);
- `tokens of traces with gaps`: `neighborhood_tokens` of traces with 5 % NaN (marked and
  bad-frame modes blank every neuron's hidden frames);
- `R^2 and event rate`: `analysis.r_squared` and `analysis.event_rate` (every neuron table);
- `extraction from trial files`: `extract_traces` of a folder of uncompressed TIFF trials
  (memory-mapped; the pages a process touched count as its memory, and against cluster limits).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = {
    "reconstruct, blended fills": """
import torch
from napari_neurt.model import Calibration, NeurtModel, span_mask
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.model.tokens import neighborhood_tokens
torch.manual_seed(0)
config = NeurtConfig(seq_len=256, n_embd=8, n_head=2, n_layer=1, n_ff=16, interpolate=True)
model = NeurtModel(Neurt(config), device="cpu")
tokens = neighborhood_tokens(traces, centroids, None)
hide = span_mask(*traces.shape, ratio=0.15, seed=0)
calibration = Calibration(cubic=0.3, kriging=0.4, correction=0.6)
start()
model.reconstruct(tokens, hide, calibration=calibration)
""",
    "activity statistics": """
from napari_neurt.model.tokens import activity_statistics, neighborhood_tokens
tokens = neighborhood_tokens(traces, centroids, None)
start()
activity_statistics(tokens)
""",
    "tokens of traces with gaps": """
from napari_neurt.model.tokens import neighborhood_tokens
traces[rng.random(traces.shape) < 0.05] = np.nan
start()
neighborhood_tokens(traces, centroids, None)
""",
    "R^2 and event rate": """
from napari_neurt import analysis
prediction = traces + rng.normal(size=traces.shape).astype(np.float32)
start()
analysis.r_squared(traces, prediction)
analysis.event_rate(traces, 30.0)
""",
    "extraction from trial files": """
import tifffile
from napari_neurt import extract_traces
from napari_neurt.io.tiff import read_movie
folder = os.path.join(workdir, "trials")
os.makedirs(folder, exist_ok=True)
for k in range(TRIALS):
    tifffile.imwrite(os.path.join(folder, f"trial{k}.tif"),
                     rng.integers(0, 4000, (400, 256, 256), dtype=np.uint16))
labels = np.zeros((256, 256), np.int32)
labels[10:20, 10:20], labels[100:120, 50:60] = 1, 2
movie = read_movie(folder)
start()
extract_traces(movie, labels)
""",
}

PRELUDE = """
import os, resource, sys
import numpy as np
n, t, workdir, TRIALS = {n}, {t}, {workdir!r}, {trials}
rng = np.random.default_rng(0)
traces = rng.normal(size=(n, t)).cumsum(axis=1).astype(np.float32)
centroids = rng.uniform(0, 20 * np.sqrt(n), (n, 2))
marks = {{}}
def start():
    marks["base"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

REPORT = """
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("GROWTH_KB", peak - marks["base"])
"""


def measure(stage: str, src: str | None, n: int, t: int, trials: int) -> float:
    """Peak RSS growth of `stage` in MB, run in a fresh process with `src` first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as workdir:
        code = PRELUDE.format(n=n, t=t, workdir=workdir, trials=trials) + STAGES[stage] + REPORT
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{stage} failed:\n{done.stderr[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("GROWTH_KB"))
    return int(line.split()[1]) / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neurons", type=int, default=800)
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--trials", type=int, default=12, help="TIFF trials of 50 MB each")
    parser.add_argument("--src", action="append", help="a source tree to run (repeatable)")
    parser.add_argument("--stage", action="append", choices=list(STAGES), help="only these")
    args = parser.parse_args(argv)
    sources = args.src or [None]
    traces_mb = args.neurons * args.frames * 4 / 2**20
    movie_mb = args.trials * 400 * 256 * 256 * 2 / 2**20
    print(f"{args.neurons} neurons x {args.frames} frames: float32 traces {traces_mb:.0f} MB; "
          f"{args.trials} trial files, {movie_mb:.0f} MB of movie. Peak RSS growth, MB "
          "(multiple of the traces; of the movie for the extraction):\n")
    names = [str(Path(s).resolve()) if s else "installed" for s in sources]
    print("| stage | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(sources))
    for stage in args.stage or STAGES:
        size = movie_mb if stage.startswith("extraction") else traces_mb
        cells = []
        for src in sources:
            grown = measure(stage, src, args.neurons, args.frames, args.trials)
            cells.append(f"{grown:.0f} ({grown / size:.1f}x)")
        print(f"| {stage} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
