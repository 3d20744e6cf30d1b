"""NEuRT inference speed: napari-neurt's model against a plain eager implementation of the
published model (explicit softmax attention, TF-style LayerNorm, separate q/k/v projections, float32
under torch.no_grad, as the published code runs), with the same weights, in the same run.

    python benchmarks/inference.py                       # CPU, or CUDA when there is one
    python benchmarks/inference.py --device cuda --batches 1 32 256 1024

Prints Markdown tables: windows of 512 steps per second at each batch size (best of a few
interleaved rounds, so that other load on a shared machine counts as little as possible), and
the end-to-end time of reconstructing a 500-neuron x 6,000-frame recording (tokens, then masked
reconstruction over overlapping windows), and what calibrating the default weights to that
recording costs (`NeurtModel.calibrate`, on by default). On CUDA our model runs under bf16 autocast with SDPA;
the reference stays float32 with explicit attention. Uses the published MICrONS weights when they
can be found (NEURT_WEIGHTS_DIR or the download cache), else random weights of the same shape.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_neurt import Recording
from napari_neurt.device import resolve_device
from napari_neurt.model import Calibration, NeurtModel, load_model, span_mask, window_starts
from napari_neurt.model.neurt import Neurt, NeurtConfig


class EagerReference(nn.Module):
    """The published NEuRT written the straightforward way: every operation spelled out."""

    def __init__(self, ours: Neurt):
        super().__init__()
        config = ours.config
        self.n_head, self.eps = config.n_head, config.norm_eps
        self.params = nn.ParameterDict()
        state = ours.state_dict()
        for name, tensor in state.items():
            if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
                for part, chunk in zip(
                    "qkv", tensor.chunk(3, dim=0), strict=True
                ):  # back to 3 projections
                    self.params[name.replace(".", "_").replace("qkv", part)] = nn.Parameter(
                        chunk.clone()
                    )
            else:
                self.params[name.replace(".", "_")] = nn.Parameter(tensor.clone())
        self.n_layer = config.n_layer

    def p(self, name: str) -> torch.Tensor:
        return self.params[name.replace(".", "_")]

    def layer_norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.p(prefix + ".weight") * ((x - mean) / torch.sqrt(variance + self.eps)) + self.p(
            prefix + ".bias"
        )

    def linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return x @ self.p(prefix + ".weight").t() + self.p(prefix + ".bias")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = tokens.shape
        h = self.linear(tokens, "embed") + self.p("pos.weight")[:steps]
        h = self.layer_norm(h, "ln_embed")
        for i in range(self.n_layer):
            block = f"blocks.{i}."
            q, k, v = (
                self.linear(h, block + f"attn.{part}")
                .view(batch, steps, self.n_head, -1)
                .transpose(1, 2)
                for part in "qkv"
            )
            scores = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.size(-1)), dim=-1)
            attended = (scores @ v).transpose(1, 2).contiguous().view(batch, steps, -1)
            h = self.layer_norm(h + self.linear(attended, block + "attn.proj"), block + "ln_1")
            feed = self.linear(F.relu(self.linear(h, block + "mlp.fc")), block + "mlp.proj")
            h = self.layer_norm(h + feed, block + "ln_2")
        return self.linear(h, "recon_head")


def windows_per_second(
    run, batch: int, device: torch.device, seq_len: int, min_seconds: float
) -> float:
    """Throughput of `run` on batches of `batch` random windows, timed for `min_seconds` or more."""
    x = torch.rand(batch, seq_len, 5, device=device)
    run(x[: min(batch, 8)])  # warm-up: kernels, allocator
    synchronize(device)
    count, start = 0, time.perf_counter()
    while True:
        run(x)
        synchronize(device)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count * batch / elapsed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or "CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def get_model(device: torch.device) -> tuple[NeurtModel, str]:
    try:
        model = load_model("neurt-microns", device=device)
        return model, f"neurt-microns (sha256 {model.provenance['weights_sha256'][:12]}...)"
    except (OSError, ValueError) as error:  # offline and not cached: same shapes, same speed
        torch.manual_seed(0)
        print(f"(published weights unavailable: {error.__class__.__name__}; using random weights)")
        return NeurtModel(Neurt(NeurtConfig()), device=device), "random, published shapes"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="time each measurement at least this long"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements per model and batch; the best counts"
    )
    parser.add_argument(
        "--neurons", type=int, default=500, help="end-to-end recording: neurons (0 skips)"
    )
    parser.add_argument("--frames", type=int, default=6000, help="end-to-end recording: frames")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, weights = get_model(device)
    reference = EagerReference(model.module).to(device).eval()
    seq_len = model.config.seq_len

    def ours(x):
        with model.inference_context():  # inference_mode, + bf16 autocast on CUDA
            return model.module(x)

    def eager(x):
        with torch.no_grad():
            return reference(x)

    check = torch.rand(4, seq_len, 5, device=device)
    difference = (ours(check).float() - eager(check)).abs().max().item()
    print(f"device: {device} - {hardware(device)}; torch {torch.__version__}; weights: {weights}")
    print(
        f"our model vs the eager reference on the same windows: max |difference| {difference:.2e}"
        f"{' (bf16 autocast)' if model.bf16 else ''}\n"
    )

    print("| batch | napari-neurt (windows/s) | eager published (windows/s) | speed-up |")
    print("|---:|---:|---:|---:|")
    for batch in args.batches:
        fast = slow = 0.0
        for _ in range(args.rounds):  # interleaved, best of: robust to other load on the machine
            fast = max(fast, windows_per_second(ours, batch, device, seq_len, args.min_seconds))
            slow = max(slow, windows_per_second(eager, batch, device, seq_len, args.min_seconds))
        print(f"| {batch} | {fast:.1f} | {slow:.1f} | {fast / slow:.2f}x |", flush=True)

    if args.neurons:
        rng = np.random.default_rng(0)
        recording = Recording(
            traces=rng.normal(size=(args.neurons, args.frames)).cumsum(axis=1).astype(np.float32),
            neuron_ids=np.arange(1, args.neurons + 1),
            centroids=rng.uniform(0, 512, size=(args.neurons, 2)),
            frame_rate=30.0,
            pixel_size_um=1.0,
        )
        batch_size = model.default_batch_size
        start = time.perf_counter()
        tokens = model.tokens_for(recording)
        tokens_done = time.perf_counter()
        hide = span_mask(args.neurons, args.frames, seed=0)
        model.reconstruct(tokens, hide, batch_size=batch_size)
        synchronize(device)
        end = time.perf_counter()
        n_windows = args.neurons * len(window_starts(args.frames, seq_len, model.default_overlap))
        print(
            f"\nEnd to end, {args.neurons} neurons x {args.frames} frames "
            f"({n_windows} windows of {seq_len}, "
            f"overlap {model.default_overlap}, batch {batch_size}):\n"
        )
        print("| tokens (s) | reconstruct (s) | total (s) |")
        print("|---:|---:|---:|")
        print(f"| {tokens_done - start:.1f} | {end - tokens_done:.1f} | {end - start:.1f} |")

        # the shipped weights: what calibrating them (on by default) costs
        default = load_model("default", device=device)
        tokens = default.tokens_for(recording)
        timings = {"as trained": [], "calibrated": [], "fill shares": []}
        # both fill paths (PCHIP and kriging), whatever the fit says
        bent = Calibration(cubic=0.25, kriging=0.25, correction=0.5)
        for _ in range(2):  # interleaved, best of two
            start = time.perf_counter()
            default.reconstruct(tokens, hide, batch_size=batch_size)
            synchronize(device)
            timings["as trained"].append(time.perf_counter() - start)
            start = time.perf_counter()
            calibration = default.calibrate(tokens, hide, batch_size=batch_size)
            default.reconstruct(tokens, hide, batch_size=batch_size, calibration=calibration)
            synchronize(device)
            timings["calibrated"].append(time.perf_counter() - start)
            start = time.perf_counter()
            default.reconstruct(tokens, hide, batch_size=batch_size, calibration=bent)
            synchronize(device)
            timings["fill shares"].append(time.perf_counter() - start)
        plain, fitted, cubic = (min(v) for v in timings.values())
        print("\nDefault weights, the same recording and hidden spans (fitted: cubic "
              f"{calibration.cubic:.2f}, kriging {calibration.kriging:.2f}, correction "
              f"{calibration.correction:.2f}):\n")
        print("| reconstruct as trained (s) | calibrate + reconstruct (s) | ratio "
              "| reconstruct with cubic and kriging shares of 0.25 (s) |")
        print("|---:|---:|---:|---:|")
        print(f"| {plain:.1f} | {fitted:.1f} | {fitted / plain:.2f}x | {cubic:.1f} |")


if __name__ == "__main__":
    main()
