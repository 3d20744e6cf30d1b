"""The `neurt` command line. Each sub-command is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with the simulated two-photon sample: traces extracted, reconstructed "
        "and classified with NEuRT, scores coloured, trace plot",
    )
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help="weights to use ('neurt-microns', a checkpoint folder, ...); default: napari-neurt's "
        "own, else the published weights found on this machine",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .plugin.demo import run_demo

    return run_demo(screenshot=args.screenshot, seed=args.seed, model=args.model)


# --- NEuRT model: reconstruct, classify, import-weights -------------------------------------------
def _add_model_options(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument(
        "recordings",
        nargs="+",
        metavar="RECORDING",
        help="recordings in any format napari_neurt.io.read_recording reads "
        "(suite2p folder, CaImAn .hdf5, .nwb, .npz, TIFF movie with --labels)",
    )
    p.add_argument(
        "--model",
        default="default",
        metavar="SOURCE",
        help="'default', 'neurt-microns', 'neurt-5xfad', a checkpoint folder or a .pth "
        "(default: default)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps"
    )
    p.add_argument(
        "--out", metavar="DIR", help="write results here (default: next to each recording)"
    )
    p.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="neighbourhood radius: micrometres when the pixel size is known, else pixels "
        "(default: the model's, else 50 um / the 10th-nearest-neighbour distance)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        metavar="FRAMES",
        help="least overlap of consecutive windows (default seq_len / 4)",
    )
    p.add_argument(
        "--batch-size", type=int, help="windows per batch (default: 8 on CPU, 256 on CUDA)"
    )
    p.add_argument("--frame-rate", type=float, metavar="HZ", help="override the files' frame rate")
    p.add_argument(
        "--pixel-size", type=float, metavar="UM", help="override the files' pixel size (um)"
    )
    p.add_argument(
        "--labels", metavar="PATH", help="ROIs for TIFF movies (label image or ImageJ ROIs)"
    )
    p.add_argument("--csv", action="store_true", help="also write a per-neuron CSV table")
    p.set_defaults(task=task)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="hide random spans of each neuron's activity and reconstruct "
        "them with NEuRT (one results .npz per recording)",
    )
    _add_model_options(p, "reconstruct")
    p.add_argument(
        "--hide-ratio",
        type=float,
        default=0.15,
        help="fraction of frames hidden in random spans, as in NEuRT pretraining (default "
        "0.15; 0 hides nothing)",
    )
    p.add_argument(
        "--max-span", type=int, default=10, help="longest hidden span in frames (default 10)"
    )
    p.add_argument(
        "--channels",
        choices=("all", "own"),
        default="all",
        help="hide all features of a hidden frame (published) or only the own trace",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the hidden spans (default 0)")
    p.add_argument(
        "--adapt",
        type=int,
        default=0,
        metavar="STEPS",
        help="first adapt the model to each recording by STEPS steps of masked reconstruction "
        "(the hidden frames are kept from it); default 0, no adaptation",
    )
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="use an interpolation-residual model as trained, instead of fitting on each "
        "recording how far to move its linear fill towards PCHIP and towards a kriging fill, "
        "and how much of its correction to keep (see NeurtModel.calibrate)",
    )
    p.set_defaults(func=_run_model_task)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify each neuron and each recording with a NEuRT "
        "classifier (one results .npz per recording)",
    )
    _add_model_options(p, "classify")
    p.set_defaults(func=_run_model_task)


def _run_model_task(args: argparse.Namespace) -> int:
    import os

    import numpy as np
    import torch

    from . import __version__, io
    from .model import Calibration, batch, load_model
    from .model.inference import verdict

    device = args.device
    # under torchrun, one GPU per process: "cuda" as for pretrain and finetune, not all on GPU 0
    if (device.strip().lower() in ("auto", "cuda") and "LOCAL_RANK" in os.environ
            and torch.cuda.is_available()):
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    batch.check_results_paths(args.recordings, args.task, args.out)  # all ranks' files
    mine = batch.shard(args.recordings)
    rank = os.environ.get("RANK", "0")
    prefix = f"[rank {rank}] " if "WORLD_SIZE" in os.environ else ""
    if not mine:
        print(f"{prefix}no recordings for this process", file=sys.stderr)
        return 0
    model = load_model(args.model, device=device)
    if args.task == "classify" and model.module.time_pool is None:  # before reading any recording
        raise ValueError(
            f"--model {args.model} has no classifier (it was trained for reconstruction only); "
            "give a classifier, e.g. 'default', 'neurt-5xfad' or a fine-tuned checkpoint"
        )
    failed = 0
    for number, source in enumerate(mine, 1):
        label = f"{prefix}[{number}/{len(mine)}] {source}"
        try:
            recording = io.read_recording(
                source,
                labels=args.labels,
                frame_rate=args.frame_rate,
                pixel_size_um=args.pixel_size,
            )
            task_model = _adapted(model, recording, args) if getattr(args, "adapt", 0) else model
            options = dict(
                delta=args.delta,
                overlap=args.overlap,
                batch_size=args.batch_size,
                progress=_progress_printer(label),
            )
            if args.task == "reconstruct":
                options.update(
                    hide_ratio=args.hide_ratio,
                    max_span=args.max_span,
                    seed=args.seed,
                    channels=args.channels,
                    calibrate=args.calibrate,
                )
                arrays = batch.reconstruct_recording(task_model, recording, **options)
                columns = ("neuron_ids", "r2_hidden", "fallback", "n_near", "n_far")
                r2 = arrays["r2_hidden"]
                summary = (
                    f"median R^2 on hidden frames {np.nanmedian(r2):.3f}" if np.isfinite(r2).any()
                    else "no hidden frame to score"
                )
                if args.calibrate and task_model.config.interpolate and arrays["hide"].any():
                    shares = {name: float(arrays[f"calibration_{name}"])
                              for name in Calibration().to_dict()}
                    summary += f"; calibrated: {Calibration(**shares).describe()}"
            else:
                arrays = batch.classify_recording(task_model, recording, **options)
                columns = (
                    "neuron_ids",
                    "neuron_probability",
                    "neuron_attention",
                    "attention_log10_ratio",
                    "fallback",
                    "n_near",
                    "n_far",
                )
                summary = verdict(arrays["class_names"], arrays["recording_class_probability"])
            options.pop("progress")
            parameters = {
                "command": args.task,
                "recording": str(source),
                "model": str(args.model),
                **options,
                "frame_rate": recording.frame_rate,
                "pixel_size_um": recording.pixel_size_um,
                "napari_neurt": __version__,
            }
            out = batch.write_results(
                batch.results_path(source, args.task, args.out),
                arrays,
                model=task_model,
                parameters=parameters,
                csv_columns=columns if args.csv else (),
            )
            print(f"{label}: {summary} -> {out}")
        except (FileNotFoundError, ValueError) as error:
            failed += 1
            print(f"{label}: error: {error}", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - one odd file must not end the batch
            failed += 1
            print(f"{label}: error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _progress_printer(label: str):
    if not sys.stderr.isatty():
        return None

    def show(step) -> None:
        end = "\n" if step.done == step.total else ""
        print(f"\r{label}: {step.stage} {step.done}/{step.total} windows", end=end, file=sys.stderr)

    return show


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-weights",
        help="convert a published NEuRT .pth state dict into a "
        "napari-neurt checkpoint (safetensors + JSON)",
    )
    p.add_argument("pth", help="published state dict (read with torch.load(weights_only=True))")
    p.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="checkpoint folder to write (default: <pth without suffix>.neurt next to it)",
    )
    p.set_defaults(func=_run_import_weights)


def _run_import_weights(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .model import read_published, save_checkpoint

    out = Path(args.out) if args.out else Path(args.pth).with_suffix(".neurt")
    if out.exists() and not out.is_dir():  # the .pth itself, or any other file
        raise ValueError(f"{out} is a file; name a folder for the checkpoint")
    checkpoint = read_published(args.pth)
    provenance = dict(checkpoint.provenance)
    provenance["imported_from_sha256"] = provenance.pop("weights_sha256")
    provenance.pop("path", None)
    save_checkpoint(
        out,
        checkpoint.build(),
        class_names=checkpoint.class_names,
        tokens=checkpoint.tokens,
        frame_rate_hz=checkpoint.frame_rate_hz,
        provenance=provenance,
    )
    print(
        f"{args.pth} ({provenance.get('source')}, "
        f"sha256 {provenance['imported_from_sha256']}) -> {out}"
    )
    return 0


def _adapted(model, recording, args: argparse.Namespace):
    """`model` adapted to `recording` without seeing the frames `reconstruct_recording` hides."""
    from .model import span_mask

    hide = span_mask(  # the mask reconstruct_recording draws from the same arguments
        recording.n_neurons,
        recording.n_frames,
        ratio=args.hide_ratio,
        max_span=args.max_span,
        seed=args.seed,
    )
    return model.adapt(
        recording, args.adapt, hide=hide, channels=args.channels, seed=args.seed, delta=args.delta
    )


# --- training: pretrain --------------------------------------------------------------------------
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain NEuRT by masked reconstruction on recordings (resumable; several GPUs or "
        "nodes with torchrun)",
    )
    p.add_argument(
        "recordings",
        nargs="*",
        metavar="RECORDING",
        help="recordings in any format napari_neurt.io.read_recording reads",
    )
    p.add_argument(
        "--list", metavar="TXT",
        help="a text file naming one recording per line (relative paths: from its folder, "
        "else the current one); a TIFF movie's line may add its ROIs after a tab",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="checkpoint folder (resumed if it holds a run)"
    )
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help="weights to start from ('neurt-microns', a checkpoint, a .pth); default: a fresh "
        "network of the published shape",
    )
    p.add_argument(
        "--shape",
        metavar="JSON",
        help='NeurtConfig fields of a fresh network, e.g. \'{"seq_len": 256, "n_layer": 6}\'',
    )
    p.add_argument("--steps", type=int, default=20_000, help="optimiser steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step and process")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, windows and masks")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per trainer")
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument(
        "--log-every", type=int, default=50, help="steps between progress lines (0: the last only)"
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR holds a run")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (one GPU per process), mps")
    p.add_argument("--frame-rate", type=float, metavar="HZ", help="override the files' frame rate")
    p.add_argument(
        "--pixel-size", type=float, metavar="UM", help="override the files' pixel size (um)"
    )
    p.add_argument(
        "--labels",
        metavar="PATH",
        help="ROIs of the TIFF movies among the recordings (label image or ImageJ ROIs), for "
        "those whose --list line names none of their own",
    )
    p.set_defaults(func=_run_pretrain)


def _listed(name: str, folder) -> str:
    """A path from a list file: relative to the list's folder, as in a manifest; where nothing
    is there, relative to the current folder (lists written by ``ls data/* > list.txt``)."""
    from pathlib import Path

    path = Path(name).expanduser()
    if path.is_absolute() or not (folder / path).exists():
        return str(path)
    return str(folder / path)


def _movies_with_labels(entries: list[tuple[str, str | None]], labels: str | None,
                        read_options: dict) -> list:
    """Sources from (path, its ROIs or None) pairs: each TIFF movie read with its own ROIs, else
    with `labels` (--labels), when its turn comes; the other formats bring their own ROIs."""
    from functools import partial
    from pathlib import Path

    from .io import read_recording
    from .io.tiff import TIFF_SUFFIXES

    def is_movie(path: str) -> bool:
        return Path(path).suffix.lower() in TIFF_SUFFIXES

    if labels and not any(is_movie(path) for path, _ in entries):
        raise ValueError(
            "--labels is for TIFF movies, and none of the recordings is one (.tif, .tiff); "
            "drop --labels: the other formats bring their own ROIs"
        )
    sources = []
    for path, own in entries:
        rois = own or (labels if is_movie(path) else None)
        if rois is None:
            sources.append(path)
            continue
        if not is_movie(path):
            raise ValueError(
                f"{path}: ROIs are listed for it, but only TIFF movies take them (the other "
                "formats bring their own); drop the second column of its line"
            )
        where = "--labels" if own is None else f"the ROIs listed for {path}"
        if not Path(rois).expanduser().exists():
            raise FileNotFoundError(f"{where}: {rois}: no such file")
        sources.append(partial(read_recording, path, labels=rois, **read_options))
    return sources


def _run_pretrain(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from .model import NeurtConfig
    from .training import PretrainConfig, pretrain

    entries = [(path, None) for path in args.recordings]  # (recording, its ROIs if listed)
    if args.list:
        folder = Path(args.list).parent
        for line in Path(args.list).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name, _, rois = line.partition("\t")  # "movie.tif<TAB>its_rois.zip"
            rois = rois.strip()
            entries.append((_listed(name.strip(), folder), _listed(rois, folder) if rois else None))
    if not entries:
        raise ValueError("no recordings given (name them, or list them in a file with --list)")
    if args.model and args.shape:
        raise ValueError("give either --model (weights to start from) or --shape, not both")
    # neither: the published shape for a new run, the saved one when resuming
    model = args.model
    if args.shape:
        shape = json.loads(args.shape)
        if not isinstance(shape, dict):
            raise ValueError(f"--shape must be a JSON object of NeurtConfig fields; got {shape!r}")
        model = NeurtConfig.from_dict(shape)  # a misspelt field: one line, not a traceback
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_workers=args.workers,
        save_every=args.save_every,
        device=args.device,
        frame_rate_hz=args.frame_rate,
    )
    read_options = {"frame_rate": args.frame_rate, "pixel_size_um": args.pixel_size}
    read_options = {k: v for k, v in read_options.items() if v is not None}
    sources = _movies_with_labels(entries, args.labels, read_options)
    main_process = os.environ.get("RANK", "0") == "0"

    def show(step) -> None:
        every = args.log_every > 0 and step.done % args.log_every == 0
        if main_process and (every or step.done == step.total):
            print(
                f"step {step.done}/{step.total}  loss {step.loss:.5f}  lr {step.lr:.2e}",
                file=sys.stderr,
                flush=True,
            )

    with _stop_on_signals() as stop:
        result = pretrain(
            sources,
            args.out,
            config,
            model=model,
            resume=not args.no_resume,
            read_options=read_options,
            progress=show,
            stop=stop,
        )
    if main_process:
        state = "stopped (run again to resume)" if result.stopped else "done"
        print(f"pretrain {state} at step {result.step}/{result.steps} -> {result.folder}")
    return 0


# --- training: finetune --------------------------------------------------------------------------
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune NEuRT to classify animals' recordings by group (split by animal; writes "
        "the model and a report of accuracy and AUC per held-out animal)",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="a CSV manifest (columns path, animal, label; paths relative to it) or a folder "
        "with one sub-folder per class, one folder (or recording) per animal in each",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the model and report")
    p.add_argument(
        "--base",
        default="default",
        metavar="SOURCE",
        help="pretrained model: 'default', 'neurt-microns', a checkpoint folder or a .pth",
    )
    p.add_argument(
        "--evaluation",
        choices=("split", "leave-one-animal-out"),
        default="split",
        help="hold out animals per class for the report (split), or every animal in turn",
    )
    p.add_argument("--classes", metavar="A,B", help="class order (default: sorted labels)")
    p.add_argument("--label-column", default="label", help="manifest column of the labels")
    p.add_argument("--animal-column", default="animal", help="manifest column of the animals")
    p.add_argument("--path-column", default="path", help="manifest column of the recordings")
    # FinetuneConfig's defaults, spelt out so that `neurt --help` does not import torch
    p.add_argument("--steps", type=int, default=1200, help="most steps per training (1200)")
    p.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="learning rate of the encoder's top block, lower blocks decayed as published; "
        "default 0: the encoder stays frozen (the earlier default: 1e-4)",
    )
    p.add_argument(
        "--head-lr", type=float, default=3e-3, help="learning rate of the heads (3e-3)"
    )
    p.add_argument("--bag-size", type=int, default=32, help="neurons per bag (32)")
    p.add_argument(
        "--cached-recordings",
        type=int,
        default=16,
        metavar="N",
        help="training recordings whose model input is kept in memory (16; each takes five "
        "times its traces: lower it for long recordings, 0 reads each one whenever it is drawn)",
    )
    p.add_argument(
        "--recording-pooling",
        choices=("evidence", "gated"),  # model.neurt.RECORDING_POOLINGS, without importing torch
        default="evidence",
        help="how the recording head pools neurons: evidence (each neuron argues for a class; "
        "its weight is its share of the evidence) or gated (attention next to the mean neuron); "
        "default evidence",
    )
    p.add_argument(
        "--activity-statistics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whether the recording head also reads each neuron's activity statistics (event "
        "rates and correlations, see tokens.activity_statistics); default yes",
    )
    p.add_argument(
        "--statistics-spread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whether an evidence head reading the statistics also reads their spread over the "
        "recording's neurons; default yes",
    )
    p.add_argument(
        "--whole-recording-fit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether an evidence head's recording term is then fitted to the whole training "
        "recordings (the head learns on bags of neurons); default: only with at least 8 "
        "animals of each class to fit on (training.finetune.WHOLE_RECORDING_MIN_ANIMALS)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of splits, heads and sampling")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--frame-rate", type=float, metavar="HZ", help="override the files' frame rate")
    p.add_argument(
        "--pixel-size", type=float, metavar="UM", help="override the files' pixel size (um)"
    )
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .training import FinetuneConfig, finetune
    from .training.finetune import read_class_folders, read_manifest

    if Path(args.data).is_dir():
        data = read_class_folders(args.data)
    else:
        data = read_manifest(
            args.data,
            path_column=args.path_column,
            animal_column=args.animal_column,
            label_column=args.label_column,
        )
    config = FinetuneConfig(
        steps=args.steps,
        lr=args.lr,
        head_lr=args.head_lr,
        bag_size=args.bag_size,
        cached_recordings=args.cached_recordings,
        activity_statistics=args.activity_statistics,
        statistics_spread=args.statistics_spread,
        whole_recording_fit=args.whole_recording_fit,
        recording_pooling=args.recording_pooling,
        evaluation=args.evaluation,
        seed=args.seed,
        device=args.device,
    )
    read_options = {"frame_rate": args.frame_rate, "pixel_size_um": args.pixel_size}

    def show(step) -> None:
        validated = not math.isnan(getattr(step, "validation_loss", math.nan))
        if step.done % 50 == 0 or step.done == step.total or validated:
            print(f"{step.stage} [{step.done}/{step.total}]", file=sys.stderr, flush=True)

    with _stop_on_signals() as stop:
        result = finetune(
            data,
            args.out,
            config,
            base=args.base,
            class_names=[c.strip() for c in args.classes.split(",")] if args.classes else None,
            read_options={k: v for k, v in read_options.items() if v is not None},
            progress=show,
            stop=stop,
        )
    if result.report is None:  # a process other than rank 0 under torchrun: it reports nothing
        return 0
    for row in result.report.animals:
        print(
            f"{row['animal']} ({row['label']}): predicted {row['predicted']}, "
            f"P(true class) {row['p_true']:.3f}, neurons right {row['neuron_accuracy']:.0%}"
        )
    summary = result.report.summary
    if summary:
        auc = summary["animal_auc"]
        auc_text = "n/a (needs both classes)" if auc is None else f"{auc:.3f}"
        print(f"held-out animals: accuracy {summary['animal_accuracy']:.0%}, AUC {auc_text}")
    print(f"model and report -> {result.folder}" + (" (stopped early)" if result.stopped else ""))
    return 0


@contextlib.contextmanager
def _stop_on_signals():
    """A stop flag that Ctrl-C or SIGTERM sets, so that training ends after the current step
    with a checkpoint instead of dying mid-step; a second Ctrl-C interrupts at once."""
    import signal
    import threading

    flag = threading.Event()

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        flag.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_reconstruct(sub)
    _add_classify(sub)
    _add_import_weights(sub)
    _add_pretrain(sub)
    _add_finetune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # bad input: one clear line, no traceback
        print(f"neurt {args.command}: error: {_without_worker_traceback(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: files are written atomically, so none is left half done
        print(f"\nneurt {args.command}: interrupted", file=sys.stderr)
        return 130


def _without_worker_traceback(error: Exception) -> str:
    """The message of `error`, less the worker's traceback that a DataLoader worker process
    (``pretrain --workers``) puts before it when it raises the error again in the trainer."""
    text = str(error)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    kind = type(error)
    # the traceback names the error with its module unless it is a builtin (ReaderError is
    # "napari_neurt.io._common.ReaderError: ...")
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        last = f"\n{name}: "
        if last in text:
            return text[text.rfind(last) + len(last) :].strip()
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
