"""Train the default NEuRT weights that ship with napari-neurt (simulated data only).

    python scripts/train_default_weights.py --threads 2    # 4-12 min pretraining + 1-2 min
                                                           # fine-tuning on an idle 2-core CPU

Two stages, both seeded (``--seed``, default 0), both on simulated data only. A run stopped by
``--max-minutes`` (default 60) is resumed by the same command: the data stream and the
learning-rate schedule go on from the saved step, as if never stopped.

1. Masked-reconstruction pretraining (`napari_neurt.training.pretrain`), 1800 steps of 32
   windows, of a small interpolation-residual NEuRT (seq_len 256, 64 wide, 3 blocks, 4 heads,
   feed-forward 256, ``interpolate=True`` with a 17-step local convolution, ``local_kernel=17``:
   see `napari_neurt.model.neurt`) on a stream of varied
   simulated recordings: recording ``k`` is
   ``next(simulate.training_recordings(1, seed=seed * 1_000_003 + k))``, each with its own
   random condition (two-photon or miniscope, any indicator, 3-30 Hz, SNR, activity), as raw
   fluorescence (``--denoised-share`` gives that share of them as denoised traces instead: the
   true ΔF/F, as CaImAn's ``C`` gives them; see docs/model_card.md for a run with 0.3). Both
   masking regimes are mixed in every batch (`MaskingConfig`): the published one (15 % of the
   steps in geometric spans up to 10, all features hidden) and the own-trace one (25 % of the
   steps of feature 0 hidden in gaps of 1-64 steps, neighbourhood visible: 64 steps of a
   256-step window, so gaps of the full 64 occur).
2. A demo classifier, "wild type" vs "AD-like", fine-tuned (`napari_neurt.training.finetune`) on
   a simulated cohort (`simulate.cohort`, seed ``COHORT_SEED + seed``, kept apart from the
   evaluation cohorts of benchmarks/quality.py): up to 1200 steps of 4 bags of 32 neurons
   (early stopping on validation animals; the recording head's attention needs more steps than
   its decision, see docs/quality_history.md). The encoder is frozen (learning rate 0), only the
   window classifier (TimePool) and the recording head learn, so the reconstruction head stays
   valid and ONE checkpoint does both jobs.

The result, ``config.json`` + ``model.safetensors`` (well under 10 MB), is written to
``src/napari_neurt/model/weights/default/`` (``--out``), which ``load_model("default")`` reads.
No real recording is used: the real recordings in ../shared/data are the evaluation set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from napari_neurt import simulate
from napari_neurt.model.checkpoint import read_checkpoint, save_checkpoint
from napari_neurt.model.neurt import NeurtConfig
from napari_neurt.training import FinetuneConfig, MaskingConfig, PretrainConfig, finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "napari_neurt" / "model" / "weights" / "default"
CLASS_NAMES = ["wild type", "AD-like"]
COHORT_SEED = 7_000  # training cohort; benchmarks/quality.py evaluates on 9_000+ (disjoint)

MODEL = NeurtConfig(
    seq_len=256, n_features=5, n_embd=64, n_head=4, n_layer=3, n_ff=256, interpolate=True,
    local_kernel=17,
)


def simulated_recording(seed: int, denoised_share: float, k: int):
    """Pretraining recording `k` of the stream of `seed` (made only when it is loaded)."""
    return next(
        simulate.training_recordings(1, seed=seed * 1_000_003 + k, denoised_share=denoised_share)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=Path("runs/default-weights"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1800, help="pretraining steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--denoised-share", type=float, default=0.0,
                        help="share of pretraining recordings given as denoised traces")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="stop pretraining (resumably) after this wall time")
    parser.add_argument("--finetune-steps", type=int, default=1200)
    parser.add_argument("--cohort-per-group", type=int, default=12)
    parser.add_argument("--local-kernel", type=int, default=MODEL.local_kernel,
                        help="width of the local shape convolution (0: none; candidates of "
                        "benchmarks/tuning.py)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    model_config = replace(MODEL, local_kernel=args.local_kernel)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = {"seed": args.seed, "model": model_config.to_dict(),
           "torch_threads": torch.get_num_threads(),
           "denoised_share": args.denoised_share}

    # 1. pretraining -----------------------------------------------------------------------
    recordings_needed = args.steps * args.batch_size // 256 + 8
    sources = [
        partial(simulated_recording, args.seed, args.denoised_share, k)
        for k in range(recordings_needed)
    ]
    config = PretrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=0.05, seed=args.seed,
        masking=MaskingConfig(), windows_per_recording=256, recordings_per_round=2,
        num_workers=0, save_every=100, device="cpu",
    )
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes

    def progress(p) -> None:
        if p.done % 50 == 0 or p.done == p.total:
            rate = p.done / max(time.monotonic() - started, 1e-9)
            print(f"pretrain {p.done}/{p.total} loss {p.loss:.5f} lr {p.lr:.2e} "
                  f"({rate:.2f} steps/s)", flush=True)

    pretrained = args.work / "pretrain"
    result = pretrain(sources, pretrained, config, model=model_config, progress=progress,
                      stop=lambda: time.monotonic() > deadline)
    log["pretrain"] = {"steps": result.step, "planned_steps": args.steps,
                       "stopped_early": result.stopped,
                       "minutes": (time.monotonic() - started) / 60,
                       "final_loss_mean_last_100": sum(v for _, v in result.history[-100:])
                       / max(1, len(result.history[-100:]))}
    print(json.dumps(log["pretrain"]), flush=True)

    # 2. demo classifier on a simulated cohort, encoder frozen ------------------------------
    started = time.monotonic()
    animals = simulate.cohort(args.cohort_per_group, seed=COHORT_SEED + args.seed, n_neurons=150,
                              n_frames=1500)
    ft_config = FinetuneConfig(
        steps=args.finetune_steps, lr=0.0, head_lr=3e-3, bags_per_step=4, bag_size=32,
        test_per_class=1, validation_per_class=1, eval_every=50, patience=4, seed=args.seed,
        device="cpu",
    )

    def ft_progress(p) -> None:
        if p.done % 25 == 0:
            print(f"finetune {p.done}/{p.total} {p.stage}", flush=True)

    classifier = finetune(animals, args.work / "classifier", ft_config, base=pretrained,
                          class_names=CLASS_NAMES, progress=ft_progress)
    log["finetune"] = {"minutes": (time.monotonic() - started) / 60,
                       "cohort": {"seed": COHORT_SEED + args.seed,
                                  "per_group": args.cohort_per_group, "n_neurons": 150,
                                  "n_frames": 1500},
                       "held_out_summary": classifier.report.summary}
    print(json.dumps(log["finetune"], default=str), flush=True)

    # 3. the shipped checkpoint: weights only (no optimiser state) ------------------------
    checkpoint = read_checkpoint(args.work / "classifier")
    module = checkpoint.build()
    base = read_checkpoint(pretrained).build()
    drift = max((module.state_dict()[k] - v).abs().max().item()
                for k, v in base.state_dict().items())
    if drift:
        raise RuntimeError(f"the encoder moved during fine-tuning (max change {drift})")
    if args.out.exists():
        shutil.rmtree(args.out)
    save_checkpoint(
        args.out, module, class_names=CLASS_NAMES, tokens=checkpoint.tokens,
        frame_rate_hz=None,
        provenance={
            "source": "napari-neurt default weights (scripts/train_default_weights.py)",
            "trained_on": "simulated recordings only (napari_neurt.simulate)",
            "not": "these are NOT the published NEuRT MICrONS weights",
            "seed": args.seed, "pretrain_steps": result.step,
            "denoised_share": args.denoised_share,
            "finetune_steps": checkpoint.provenance.get("steps"),
            "finetune_best_step": checkpoint.provenance.get("best_step"),
        },
    )
    (args.work / "train_log.json").write_text(json.dumps(log, indent=2, default=str))
    print(json.dumps(log, indent=2, default=str))
    print("wrote", args.out, sorted(p.name for p in args.out.iterdir()))


if __name__ == "__main__":
    main()
