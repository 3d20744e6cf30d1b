"""Fine-tuning NEuRT to tell groups of animals apart (for example wild type vs a disease model).

    from napari_neurt.training import FinetuneConfig, finetune
    result = finetune("cohort/manifest.csv", "runs/classifier", base="neurt-microns")
    result.report.animals        # accuracy and AUC per held-out animal (also report.csv/.json)
    model = napari_neurt.load_model("runs/classifier")

Data (`labelled_recordings`): a CSV manifest with columns path, animal and label (paths relative
to the manifest); or a folder with one sub-folder per class, holding one folder per animal (or
one recording per animal); or any iterable of `LabelledRecording`, of ``(source, animal,
label)`` tuples, or of objects with ``.recording``, ``.animal`` and ``.label`` or ``.group``
(the animals of ``napari_neurt.simulate.cohort``).

Splits are by animal, never by window or recording: all recordings of an animal are on one side.
``evaluation="split"`` holds out `test_per_class` animals per class for the report;
``"leave-one-animal-out"`` (for small cohorts) trains one model per animal without it, reports
on each held-out animal, then trains the saved model on all animals. Within each training, up to
`validation_per_class` animals per class are kept aside for early stopping, when every class can
spare them and keep a training animal.

Training: by default (``lr = 0``) the pretrained encoder stays frozen and only the heads learn,
at `head_lr`; with ``lr > 0`` the encoder learns too, with the published layer-wise
learning-rate decay (the top block at `lr`, each block below ``layer_decay = 0.9`` times the one
above, the embedding at ``lr * embed_decay ** (n_layer - 1)`` with ``embed_decay = 0.8``). The
window classifier (`TimePool`) and the recording head (`RecordingHead`, pooling
over neurons) learn together: each step takes bags of neurons' windows, each bag from one
recording; every window is classified (cross-entropy against its recording's label) and the
bag's pooled embeddings go through the recording head (cross-entropy again). Recordings are drawn
so that every class, and every animal within a class, is seen equally often. Then
(`whole_recording_fit`) an evidence head's recording term is fitted to the whole training and
validation recordings (`fit_recording_term`), as the head sees recordings in use: every neuron,
each through all its windows; by default only with at least `WHOLE_RECORDING_MIN_ANIMALS`
animals of each class to fit on.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch.utils.data import DataLoader

from ..io.atomic import atomic_path
from ..io.suite2p import is_suite2p_folder
from ..model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint
from ..model.inference import FRAME_RATE_TOLERANCE, NeurtModel
from ..model.neurt import Neurt, check_recording_pooling, own_global_rng
from ..model.tokens import ACTIVITY_STATISTICS, NeighborhoodTokens, head_statistics
from ..progress import Steps, run_steps
from .data import (
    BagStream,
    RecordingSource,
    describe_source,
    draw_bags,
    load_recording,
    source_neighbourhood,
)
from .engine import (
    DistributedContext,
    ModelSpec,
    Stop,
    TrainingProgress,
    WarmupCosine,
    starting_point,
)

EVALUATIONS = ("split", "leave-one-animal-out")
MANIFEST_COLUMNS = ("path", "animal", "label")
# the files `neurt classify` / `neurt reconstruct` write (model.batch.results_path, with --csv)
NEURT_RESULTS = tuple(
    f".neurt-{task}.{suffix}" for task in ("classify", "reconstruct") for suffix in ("npz", "csv")
)
# L2 penalty of the whole-recording fit, on standardised inputs (chosen on tuning cohorts)
WHOLE_RECORDING_L2 = 0.1
# animals of each class the whole-recording fit needs by default: on tuning cohorts it helped
# with 8 per class and cost with 4 (docs/quality_history.md); in between is untested
WHOLE_RECORDING_MIN_ANIMALS = 8


@dataclass(frozen=True)
class LabelledRecording:
    """A recording (any source `napari_neurt.training.data` takes) of an animal of a class."""

    source: RecordingSource
    animal: str
    label: str


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run (see the module docstring)."""

    # The defaults are the recipe chosen on simulated tuning cohorts and measured in the quality
    # report: the encoder frozen (lr 0: its reconstructions stay those validated, and steps are
    # about 3x faster), the heads at 3e-3, up to 1200 steps of 4 bags of 32 neurons. The earlier
    # defaults trained the encoder too: lr 1e-4, head_lr 1e-3, bags of 16, 2000 steps.
    steps: int = 1200  # most optimiser steps per training; early stopping may end it sooner
    bags_per_step: int = 4  # bags (each from one recording) per step
    bag_size: int = 32  # neurons per bag, all over the same window
    lr: float = 0.0  # learning rate of the top encoder block; 0 freezes the encoder
    layer_decay: float = 0.9  # published: each block below gets this times the one above
    embed_decay: float = 0.8  # published: the embedding gets lr * embed_decay ** (n_layer - 1)
    head_lr: float = 3e-3  # classifier heads
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps with a linear warm-up, then cosine decay
    grad_clip: float = 1.0
    window_loss_weight: float = 1.0
    recording_loss_weight: float = 1.0
    mil_hidden: int = 64  # width of the recording head's gated attention
    # how the recording head pools neurons (model.neurt.RecordingHead): "evidence" (signed
    # per-neuron evidence; its weights point at the neurons that argue for the class) or "gated"
    recording_pooling: str = "evidence"
    # the recording head also reads each neuron's activity statistics (tokens.activity_statistics)
    activity_statistics: bool = True
    # an evidence head that reads the statistics also reads their spread over the recording's
    # neurons in its recording term (NeurtConfig.stats_spread); ignored by other heads
    statistics_spread: bool = True
    # after training on bags, fit an evidence head's recording term to whole training recordings
    # (`fit_recording_term`): None (auto) when every class has WHOLE_RECORDING_MIN_ANIMALS
    # animals to fit on, True always, False never; ignored by gated heads
    whole_recording_fit: bool | None = None
    evaluation: str = "split"  # or "leave-one-animal-out"
    test_per_class: int = 1  # animals per class held out for the report ("split")
    validation_per_class: int = 1  # animals per class kept aside for early stopping
    eval_every: int = 50  # steps between validations
    patience: int = 5  # validations without improvement before stopping
    recordings_per_round: int = 4  # recordings bags are drawn from in turn
    cached_recordings: int = 16  # recordings whose tokens are kept in memory
    bags_per_recording: int = 8  # bags cut from a recording each time it is loaded
    validation_bags: int = 16  # fixed bags per validation recording
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA (never elsewhere)

    def __post_init__(self) -> None:
        if self.evaluation not in EVALUATIONS:
            raise ValueError(
                f"evaluation must be one of {', '.join(map(repr, EVALUATIONS))}; "
                f"got {self.evaluation!r}"
            )
        check_recording_pooling(self.recording_pooling)
        for name in ("steps", "bags_per_step", "bag_size", "eval_every", "patience",
                     "recordings_per_round", "bags_per_recording"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be at least 1")
        if self.cached_recordings < 0:
            raise ValueError(
                "FinetuneConfig.cached_recordings must be 0 (keep none: read every recording "
                f"each time it is drawn) or more; got {self.cached_recordings}"
            )
        if self.bags_per_step > self.recordings_per_round * self.bags_per_recording:
            raise ValueError(
                f"FinetuneConfig: a round cuts recordings_per_round x bags_per_recording = "
                f"{self.recordings_per_round} x {self.bags_per_recording} bags, fewer than the "
                f"{self.bags_per_step} bags_per_step of one step; raise one or lower the other"
            )
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"FinetuneConfig.{name} must be a finite learning rate >= 0 (lr 0 freezes "
                    f"the encoder); got {value!r}"
                )

    @property
    def head_reads_spread(self) -> bool:
        """Whether the trained head reads the statistics' spread (`statistics_spread` applies to
        an evidence head that reads the statistics, and to no other)."""
        return (
            self.statistics_spread
            and self.activity_statistics
            and self.recording_pooling == "evidence"
        )

    def fits_whole_recordings(self, fewest_animals: int) -> bool:
        """Whether the trained head's recording term is then fitted to whole recordings, when
        the smallest class has `fewest_animals` animals to fit on (`whole_recording_fit`
        applies to an evidence head, and to no other)."""
        if self.recording_pooling != "evidence":
            return False
        if self.whole_recording_fit is None:
            return fewest_animals >= WHOLE_RECORDING_MIN_ANIMALS
        return self.whole_recording_fit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AnimalSplit:
    """Animals used to train, to stop early (validation) and to report on (test)."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class FinetuneReport:
    """Results on held-out animals.

    `animals` has one row per held-out animal: its label, fold, recordings and neurons, the
    recording head's accuracy over its recordings and mean probability of its true class
    (``p_true``), the window classifier's accuracy over its neurons, and ``neuron_auc``: how
    well its neurons' P(its class) separates them from the held-out neurons of the other classes
    (an AUC needs both classes, so it is measured against the other held-out animals).
    `summary` pools the held-out animals: accuracy and AUC at the animal, recording and neuron
    levels (AUC one-vs-rest, averaged over classes, when there are more than two).
    """

    class_names: tuple[str, ...]
    evaluation: str
    animals: list[dict[str, Any]]
    summary: dict[str, Any]
    folds: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``report.json`` (everything) and ``report.csv`` (per animal); return both."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "report.json") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        with atomic_path(folder / "report.csv") as tmp, open(tmp, "w", newline="") as file:
            columns = list(self.animals[0]) if self.animals else ["animal"]
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.animals)
        return folder / "report.json", folder / "report.csv"


@dataclass
class FinetuneResult:
    """The fine-tuned model (saved in `folder`) and its report (also in `folder`)."""

    folder: Path
    model: NeurtModel
    report: FinetuneReport | None  # None on the processes other than rank 0 under DDP
    stopped: bool


# --- data -----------------------------------------------------------------------------------
def read_manifest(
    path: str | os.PathLike,
    *,
    path_column: str = "path",
    animal_column: str = "animal",
    label_column: str = "label",
) -> list[LabelledRecording]:
    """Labelled recordings from a CSV manifest; relative paths are relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    # utf-8-sig: spreadsheet programs start a "CSV UTF-8" file with a byte-order mark
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            reader.fieldnames = columns = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in (path_column, animal_column, label_column) if c not in columns]
            if missing:
                raise ValueError(
                    f"{path}: no column {', '.join(map(repr, missing))}; the manifest has "
                    f"{', '.join(map(repr, columns)) or 'no header'}"
                )
            rows = list(reader)
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not a CSV manifest (it is not text); give a CSV with the columns "
            f"{path_column}, {animal_column} and {label_column}, one row per recording, or a "
            "folder with one sub-folder per class"
        ) from None
    items = []
    for line, row in enumerate(rows, start=2):
        values = [(row.get(c) or "").strip() for c in (path_column, animal_column, label_column)]
        if not all(values):
            raise ValueError(f"{path}, line {line}: path, animal and label must all be given")
        source = Path(values[0]) if Path(values[0]).is_absolute() else path.parent / values[0]
        items.append(LabelledRecording(source, values[1], values[2]))
    if not items:
        raise ValueError(f"{path} lists no recordings")
    missing = [str(item.source) for item in items if not item.source.exists()]
    if missing:
        raise FileNotFoundError(f"{path} lists recordings that do not exist: {', '.join(missing)}")
    return items


def read_class_folders(root: str | os.PathLike) -> list[LabelledRecording]:
    """Labelled recordings from ``root/<class>/<animal>/<recordings>``.

    An entry of a class folder that is itself a recording (a file, or a suite2p folder) is an
    animal with that one recording, named after it. An animal is named ``<class>/<name>``:
    folders of two classes are two animals, whatever they are called. Hidden entries (``.``)
    and napari-neurt's own outputs (`_neurt_output`) are skipped at every level.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    items = []
    for class_folder in sorted(p for p in root.iterdir() if p.is_dir() and not _skipped(p)):
        label = class_folder.name
        for entry in sorted(p for p in class_folder.iterdir() if not _skipped(p)):
            if entry.is_dir() and not is_suite2p_folder(entry):
                recordings = sorted(p for p in entry.iterdir() if not _skipped(p))
                items += [LabelledRecording(p, f"{label}/{entry.name}", label) for p in recordings]
            else:
                items.append(LabelledRecording(entry, f"{label}/{entry.stem}", label))
    if not items:
        raise ValueError(f"{root} has no class folders with recordings in them")
    return items


def _source_key(source: RecordingSource) -> Any:
    """What tells two recordings apart: a file's real path, an in-memory recording's identity."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).expanduser().resolve()
    return id(source)


def _skipped(path: Path) -> bool:
    """Whether class folders skip `path`: hidden, or one of napari-neurt's own outputs."""
    return path.name.startswith(".") or _neurt_output(path)


def _neurt_output(path: Path) -> bool:
    """A model folder (the fine-tune panel saves into ``<class folders>/neurt-finetuned`` by
    default) or the results that `neurt classify` / `neurt reconstruct` write next to each
    recording: never a class, an animal or a recording."""
    if path.is_dir():
        return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()
    return path.name.endswith(NEURT_RESULTS)


def labelled_recordings(data: str | os.PathLike | Iterable[Any]) -> list[LabelledRecording]:
    """`LabelledRecording`s from a manifest, class folders or an iterable (module docstring)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return read_class_folders(path)
        return read_manifest(path)
    items = []
    for item in data:
        if isinstance(item, LabelledRecording):
            items.append(item)
        elif isinstance(item, tuple) and len(item) == 3:
            items.append(LabelledRecording(item[0], str(item[1]), str(item[2])))
        elif hasattr(item, "recording") and hasattr(item, "animal"):
            label = getattr(item, "label", None) or getattr(item, "group", None)
            if label is None:
                raise ValueError(f"{item!r} has neither .label nor .group")
            items.append(LabelledRecording(item.recording, str(item.animal), str(label)))
        else:
            raise TypeError(
                "each labelled recording must be a LabelledRecording, a (source, animal, label) "
                f"tuple or an object with .recording, .animal and .label; got {item!r}"
            )
    if not items:
        raise ValueError("no labelled recordings were given")
    return items


def check_cohort(
    items: Sequence[LabelledRecording], class_names: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Check that the cohort can be split by animal; return the class names (sorted by default)."""
    if not items:
        raise ValueError("no labelled recordings were given")
    labels = sorted({item.label for item in items})
    class_names = tuple(class_names) if class_names else tuple(labels)
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the class names {list(class_names)}")
    if len(class_names) < 2:
        raise ValueError(f"fine-tuning needs at least 2 classes; all recordings are {labels}")
    animal_labels: dict[str, set[str]] = {}
    for item in items:
        animal_labels.setdefault(item.animal, set()).add(item.label)
    mixed = {a: sorted(ls) for a, ls in animal_labels.items() if len(ls) > 1}
    if mixed:
        raise ValueError(f"an animal must have one label; these have several: {mixed}")
    keys = [_source_key(item.source) for item in items]
    owners: dict[Any, set[str]] = {}  # one recording under two animals would leak across splits
    for item, key in zip(items, keys, strict=True):
        owners.setdefault(key, set()).add(item.animal)
    shared = {
        describe_source(item.source): sorted(owners[key])
        for item, key in zip(items, keys, strict=True)
        if len(owners[key]) > 1
    }
    if shared:
        raise ValueError(
            "a recording must belong to one animal (else it would be trained on and tested on); "
            f"these are listed under several: {shared}"
        )
    for name in class_names:
        animals = sorted(a for a, ls in animal_labels.items() if name in ls)
        if len(animals) < 2:
            raise ValueError(
                f"class {name!r} has {len(animals)} animal(s) ({', '.join(animals) or 'none'}); "
                "splitting by animal needs at least 2 per class"
            )
    return class_names


def animals_by_class(items: Sequence[LabelledRecording]) -> dict[str, list[str]]:
    """Each label's animals, sorted."""
    groups: dict[str, set[str]] = {}
    for item in items:
        groups.setdefault(item.label, set()).add(item.animal)
    return {label: sorted(animals) for label, animals in sorted(groups.items())}


def split_animals(
    items: Sequence[LabelledRecording],
    *,
    test_per_class: int = 1,
    validation_per_class: int = 1,
    seed: int = 0,
) -> AnimalSplit:
    """Random animal-wise split, stratified by class (every class keeps a training animal)."""
    rng = np.random.default_rng(seed)
    test = []
    remaining = {}
    for label, animals in animals_by_class(items).items():
        if len(animals) <= test_per_class:
            raise ValueError(
                f"class {label!r} has {len(animals)} animal(s): too few to hold out "
                f"{test_per_class} for testing and keep one for training"
            )
        shuffled = list(rng.permutation(animals))
        test += shuffled[:test_per_class]
        remaining[label] = shuffled[test_per_class:]
    train, validation = _validation_split(remaining, validation_per_class)
    return AnimalSplit(tuple(sorted(train)), tuple(sorted(validation)), tuple(sorted(test)))


def leave_one_animal_out(
    items: Sequence[LabelledRecording], *, validation_per_class: int = 1, seed: int = 0
) -> list[AnimalSplit]:
    """One split per animal, holding out that animal for testing."""
    groups = animals_by_class(items)
    splits = []
    for held_out in sorted(a for animals in groups.values() for a in animals):
        rng = np.random.default_rng([seed, len(splits)])
        remaining = {
            label: list(rng.permutation([a for a in animals if a != held_out]))
            for label, animals in groups.items()
        }
        train, validation = _validation_split(remaining, validation_per_class)
        splits.append(AnimalSplit(tuple(sorted(train)), tuple(sorted(validation)), (held_out,)))
    return splits


def _validation_split(remaining: dict[str, list[str]], per_class: int):
    """Take `per_class` animals of every class for validation, if every class keeps one."""
    if per_class < 1 or any(len(animals) <= per_class for animals in remaining.values()):
        return [a for animals in remaining.values() for a in animals], []
    train = [a for animals in remaining.values() for a in animals[per_class:]]
    validation = [a for animals in remaining.values() for a in animals[:per_class]]
    return train, validation


def plan_splits(items: Sequence[LabelledRecording], config: FinetuneConfig) -> list[AnimalSplit]:
    """The trainings `config.evaluation` asks for, the one whose model is saved last.

    "split": one training, tested on held-out animals. "leave-one-animal-out": one training per
    animal, tested on it, then one on all animals (nothing held out for testing).
    """
    if config.evaluation == "split":
        return [
            split_animals(
                items,
                test_per_class=config.test_per_class,
                validation_per_class=config.validation_per_class,
                seed=config.seed,
            )
        ]
    splits = leave_one_animal_out(
        items, validation_per_class=config.validation_per_class, seed=config.seed
    )
    rng = np.random.default_rng(config.seed)
    everyone = {
        label: list(rng.permutation(animals)) for label, animals in animals_by_class(items).items()
    }
    train, validation = _validation_split(everyone, config.validation_per_class)
    splits.append(AnimalSplit(tuple(sorted(train)), tuple(sorted(validation)), ()))
    return splits


def balanced_weights(items: Sequence[LabelledRecording]) -> np.ndarray:
    """Sampling weight per recording: classes equally likely, and animals within a class."""
    groups = animals_by_class(items)
    per_animal: dict[str, int] = {}
    for item in items:
        per_animal[item.animal] = per_animal.get(item.animal, 0) + 1
    return np.array(
        [1 / (len(groups) * len(groups[i.label]) * per_animal[i.animal]) for i in items]
    )


# --- model ----------------------------------------------------------------------------------
def classifier_network(
    base: Neurt,
    n_classes: int,
    mil_hidden: int,
    seed: int = 0,
    neuron_stats: int = 0,
    recording_pooling: str = "evidence",
    stats_spread: bool = False,
) -> Neurt:
    """`base`'s encoder with a window classifier and a recording head for `n_classes` classes.

    The head pools neurons by `recording_pooling` and reads `neuron_stats` activity statistics
    per neuron next to its embedding (0: none). Heads of `base` that fit (same number of
    classes and widths, and for the recording head the same pooling) are kept, others start
    fresh.
    """
    config = replace(
        base.config,
        n_classes=n_classes,
        mil_hidden=mil_hidden,
        neuron_stats=neuron_stats,
        recording_pooling=recording_pooling,
        stats_spread=stats_spread,
    )
    with own_global_rng(seed):
        module = Neurt(config)
    fresh = module.state_dict()
    same_pooling = base.config.recording_pooling == recording_pooling
    kept = {
        k: v
        for k, v in base.state_dict().items()
        if k in fresh
        and v.shape == fresh[k].shape
        and (same_pooling or not k.startswith("recording_head."))
        # a head learns on bags with its pooled evidence counted once; the whole-recording fit
        # sets the scale anew
        and k != "recording_head.evidence_scale"
    }
    module.load_state_dict(kept, strict=False)
    return module


def layerwise_lr_groups(
    module: Neurt,
    *,
    lr: float,
    head_lr: float,
    layer_decay: float = 0.9,
    embed_decay: float = 0.8,
    weight_decay: float = 0.01,
) -> list[dict[str, Any]]:
    """AdamW parameter groups with the published layer-wise learning-rate decay.

    Block i of n gets ``lr * layer_decay ** (n - 1 - i)`` (the top block `lr`), the embedding
    (input projection, positions and their LayerNorm) ``lr * embed_decay ** (n - 1)``, the heads
    `head_lr`. Matrices have weight decay; biases, norms and vectors do not.
    """
    n_layer = module.config.n_layer
    rates = {"embedding": lr * embed_decay ** (n_layer - 1)}
    rates.update({f"block {i}": lr * layer_decay ** (n_layer - 1 - i) for i in range(n_layer)})
    rates["heads"] = head_lr
    decayed = {name: [] for name in rates}
    plain = {name: [] for name in rates}
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else plain)[_layer_of(name)].append(parameter)
    groups = []
    for name, rate in rates.items():
        groups.append(
            {"name": name, "params": decayed[name], "lr": rate, "weight_decay": weight_decay}
        )
        groups.append(
            {"name": f"{name} (no decay)", "params": plain[name], "lr": rate, "weight_decay": 0.0}
        )
    return [group for group in groups if group["params"]]


def _layer_of(parameter_name: str) -> str:
    """The learning-rate group of a `Neurt` parameter: embedding, block i, or heads."""
    if parameter_name.startswith(("embed.", "embed_hidden.", "embed_local.", "pos.", "ln_embed.")):
        return "embedding"
    if parameter_name.startswith("blocks."):
        return f"block {parameter_name.split('.')[1]}"
    if parameter_name.startswith(("recon_head.", "time_pool.", "recording_head.")):
        return "heads"
    # a new part of the encoder must be placed on purpose, not trained at the heads' rate
    raise ValueError(f"no learning-rate group for parameter {parameter_name!r}")


# --- training -------------------------------------------------------------------------------
@dataclass
class _Fit:
    module: Neurt
    steps: int
    best_step: int
    validation_loss: float | None
    stopped: bool
    history: list[tuple[int, float]] = field(default_factory=list)
    frame_rates: list[float] = field(default_factory=list)  # of the recordings it read


def _losses(module: Neurt, windows, statistics, labels, config: FinetuneConfig):
    """(total, window, recording) losses of bags `windows` (B, n, L, F), their neurons' activity
    `statistics` (B, n, S), labelled `labels` (B,)."""
    bags, size, length, n_features = windows.shape
    logits, _, pooled = module.classify_windows(windows.reshape(bags * size, length, n_features))
    window_loss = F.cross_entropy(logits.float(), labels.repeat_interleave(size))
    recording_logits, _ = module.classify_recording(pooled.reshape(bags, size, -1), statistics)
    recording_loss = F.cross_entropy(recording_logits.float(), labels)
    total = config.window_loss_weight * window_loss + config.recording_loss_weight * recording_loss
    return total, window_loss, recording_loss


class _BagLosses(torch.nn.Module):
    """`_losses` as a forward, so that DistributedDataParallel sees each step (and averages the
    gradients across processes during backward)."""

    def __init__(self, module: Neurt, config: FinetuneConfig):
        super().__init__()
        self.module, self.config = module, config

    def forward(self, windows, statistics, labels):
        return _losses(self.module, windows, statistics, labels, self.config)


def _fit(
    module: Neurt,
    items: Sequence[LabelledRecording],
    validation: Sequence[LabelledRecording],
    class_names: Sequence[str],
    config: FinetuneConfig,
    token_settings: dict,
    read_options: dict | None,
    *,
    offset: int,
    total: int,
    stage: str,
    stop: Callable[[], bool] | None,
    context: DistributedContext,
) -> Steps[_Fit]:
    """Train `module` on `items`, stopping early on the `validation` recordings' loss.

    Under DDP every process draws its own bags, the gradients are averaged, and the stops
    (`stop`, early stopping) are decided alike on every process."""
    statistics = None  # per training recording, when the head reads them
    frame_rates = []
    if module.config.neuron_stats:  # reads every training recording once: report and obey stop
        statistics = []
        for item in items:
            if context.stop_requested(stop):
                return _Fit(module.eval(), 0, 0, None, True)
            yield TrainingProgress(offset, total, f"{stage} activity statistics")
            source = item.source
            if not isinstance(source, (NeighborhoodTokens, np.ndarray)):  # a recording
                source = load_recording(source, read_options)
                frame_rates.append(source.frame_rate)
            neighbourhood = source_neighbourhood(source, token_settings, read_options)
            statistics.append(_statistics(neighbourhood, module.config.neuron_stats, item.source))
        _standardise_statistics(module, np.concatenate(statistics))
    device = context.device
    autocast = device.type == "cuda" and config.bf16
    module = module.to(device).train()
    if config.lr == 0:  # a frozen encoder: no gradients through it (about 3x faster steps)
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(_layer_of(name) == "heads")
    optimizer = torch.optim.AdamW(
        layerwise_lr_groups(
            module,
            lr=config.lr,
            head_lr=config.head_lr,
            layer_decay=config.layer_decay,
            embed_decay=config.embed_decay,
            weight_decay=config.weight_decay,
        )
    )
    schedule = WarmupCosine(config.steps, math.ceil(config.warmup * config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    index = {name: k for k, name in enumerate(class_names)}
    stream = BagStream(
        [item.source for item in items],
        [index[item.label] for item in items],
        balanced_weights(items),
        window_length=module.config.seq_len,
        bag_size=config.bag_size,
        bags_per_step=config.bags_per_step,
        seed=config.seed,
        token_settings=token_settings,
        read_options=read_options,
        recordings_per_round=config.recordings_per_round,
        bags_per_recording=config.bags_per_recording,
        cached_recordings=config.cached_recordings,
        statistics=statistics,
        rank=context.rank,
    )
    # unused parameters: those of the reconstruction head, for one (they stay as they were)
    losses = context.wrap(_BagLosses(module, config), find_unused_parameters=True)
    held = _validation_bags(validation, index, module, config, token_settings, read_options)
    fit = _Fit(module, 0, 0, None, False, frame_rates=frame_rates)
    best_state, bad_validations = None, 0
    batches = iter(DataLoader(stream, batch_size=None))
    for step in range(1, config.steps + 1):
        if context.stop_requested(stop):
            fit.stopped = True
            break
        windows, statistics, labels = next(batches)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, _, _ = losses(windows.to(device), statistics.to(device), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        fit.steps = step
        fit.history.append((step, value))
        held_loss = math.nan
        if held is not None and (step % config.eval_every == 0 or step == config.steps):
            held_loss = context.mean(_validation_loss(module, held, config, device, autocast))
            if fit.validation_loss is None or held_loss < fit.validation_loss:
                fit.validation_loss, fit.best_step, bad_validations = held_loss, step, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad_validations += 1
        heads_lr = config.head_lr * schedule(step - 1)  # the rate this step used
        text = f"{stage} loss {value:.4f}"
        if not math.isnan(held_loss):
            text += f", validation {held_loss:.4f}"
        yield TrainingProgress(offset + step, total, text, value, heads_lr, held_loss)
        if bad_validations >= config.patience:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        fit.best_step = fit.steps
    fit.module = module.eval()
    return fit


def _statistics(neighbourhood, n_statistics: int, source) -> np.ndarray:
    """The first `n_statistics` activity statistics of a recording's neurons (N, S)."""
    try:
        return head_statistics(neighbourhood, n_statistics)
    except ValueError as error:
        raise ValueError(
            f"{describe_source(source)}: {error}; or fine-tune with activity_statistics=False"
        ) from None


def _standardise_statistics(module: Neurt, values: np.ndarray) -> None:
    """Scale the recording head's activity statistics by their mean and s.d. over `values`, the
    training recordings' neurons (N, S): the head sees numbers of order 1 whatever their units."""
    head = module.recording_head
    with torch.no_grad():
        head.stats_shift.copy_(torch.from_numpy(values.mean(axis=0)))
        head.stats_scale.copy_(torch.from_numpy(values.std(axis=0) + 1e-6))


def _validation_bags(items, index, module, config, token_settings, read_options):
    """Fixed bags of the validation recordings: (windows (V, n, L, F), their neurons' activity
    statistics (V, n, S; S is 0 unless `module`'s head reads them), labels (V,)), or None."""
    if not items:
        return None
    rng = np.random.default_rng([config.seed, 1])
    bags, statistics, labels = [], [], []
    for item in items:
        neighbourhood = source_neighbourhood(item.source, token_settings, read_options)
        tokens = np.asarray(getattr(neighbourhood, "tokens", neighbourhood))
        try:
            windows, neurons = draw_bags(
                tokens, config.validation_bags, config.bag_size, module.config.seq_len, rng
            )
        except ValueError as error:
            raise ValueError(f"{describe_source(item.source)}: {error}") from None
        bags.append(windows)
        if module.config.neuron_stats:
            n_statistics = module.config.neuron_stats
            statistics.append(_statistics(neighbourhood, n_statistics, item.source)[neurons])
        else:
            statistics.append(np.zeros((*neurons.shape, 0), dtype=np.float32))
        labels.append(np.full(config.validation_bags, index[item.label]))
    return tuple(torch.from_numpy(np.concatenate(x)) for x in (bags, statistics, labels))


@torch.no_grad()
def _validation_loss(module, held, config, device, autocast) -> float:
    module.eval()
    windows, statistics, labels = held
    total, count = 0.0, 0
    for first in range(0, len(labels), config.bags_per_step):
        chunk = slice(first, first + config.bags_per_step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, _, _ = _losses(
                module,
                windows[chunk].to(device),
                statistics[chunk].to(device),
                labels[chunk].to(device),
                config,
            )
        total += float(loss) * len(labels[chunk])
        count += len(labels[chunk])
    module.train()
    return total / count


# --- the recording term, fitted to whole recordings ------------------------------------------
def _fit_to_whole_recordings(model, items, class_names, read_options, context) -> None:
    """Fit `model`'s evidence head's recording term to the whole recordings `items`, in place
    on every process (each process reads its share of the recordings; rank 0 fits).

    The head learnt on bags of neurons, each seen through one window; in use it sees every
    neuron of a recording through all its windows. Its neuron scores (hence the neuron
    attention) stay as learnt; the weights of the pooled evidence, of the linear term and of
    the statistics it reads are fitted anew (`fit_recording_term`)."""
    head = model.module.recording_head

    def inputs(item) -> np.ndarray:  # the pooled evidence (K,), then the linear term's input
        tokens = source_neighbourhood(item.source, model.token_settings, read_options)
        embedding = torch.from_numpy(model.classify(tokens).neuron_embedding)
        scores, summary = model.recording_terms(embedding, tokens)
        return torch.cat([head.pooled(scores), summary]).double().cpu().numpy()

    rows = context.map_to_main(inputs, items)
    if context.is_main:
        rows = torch.from_numpy(np.stack(rows))
        n_classes = len(class_names) - 1
        labels = torch.tensor([class_names.index(item.label) for item in items])
        scale, weight, bias = fit_recording_term(
            rows[:, :n_classes],
            rows[:, n_classes:],
            head.head.weight.detach().double().cpu(),
            model.config.n_embd,
            labels,
            torch.from_numpy(balanced_weights(items)),
        )
        with torch.no_grad():
            for tensor, value in zip(
                (head.evidence_scale, head.head.weight, head.head.bias),
                (scale, weight, bias),
                strict=True,
            ):
                tensor.copy_(value.to(tensor))
    context.share_from_main([head.evidence_scale, head.head.weight, head.head.bias])


def fit_recording_term(
    pooled: torch.Tensor,
    summary: torch.Tensor,
    head_weight: torch.Tensor,
    n_embd: int,
    labels: torch.Tensor,
    sample_weights: torch.Tensor,
    l2: float = WHOLE_RECORDING_L2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An evidence head's recording term fitted to whole recordings.

    Per recording r and class c >= 1, the logit against class 0 is a logistic regression on
    three kinds of input: the pooled evidence `pooled` (R, K), the learnt linear term
    ``head_weight @ summary`` and the statistics part of `summary` (R, D; after the `n_embd`
    embedding means: the statistics' means and spreads over the neurons). Inputs are
    standardised over the recordings, the penalty is ``l2 / 2 * |coefficients|^2`` and
    `sample_weights` balance the classes. Returns the head's new evidence scale (K,), weight
    (K, D) and bias (K,), which give the same logits as the regression.
    """
    pooled, summary, head_weight = (t.double() for t in (pooled, summary, head_weight))
    n_recordings, n_classes = pooled.shape
    statistics = summary[:, n_embd:]
    x = torch.cat(
        [
            pooled[..., None],
            (summary @ head_weight.T)[..., None],
            statistics[:, None, :].expand(n_recordings, n_classes, -1),
        ],
        dim=-1,
    )  # (R, K, P)
    shift, scale = x.mean(dim=0), x.std(dim=0, correction=0)
    varies = scale > 1e-8  # an input equal in every recording says nothing
    scale = torch.where(varies, scale, torch.ones_like(scale))
    z = torch.where(varies, (x - shift) / scale, torch.zeros_like(x))
    coefficients = torch.zeros(x.shape[1:], dtype=torch.float64, requires_grad=True)
    intercept = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    weights = sample_weights.double() / sample_weights.sum()
    optimizer = torch.optim.LBFGS(
        [coefficients, intercept], max_iter=500, tolerance_grad=1e-10,
        tolerance_change=1e-14, line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        logits = (z * coefficients).sum(dim=-1) + intercept
        logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=-1)
        loss = (F.cross_entropy(logits, labels, reduction="none") * weights).sum()
        loss = loss + 0.5 * l2 * coefficients.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        raw = torch.where(varies, coefficients / scale, torch.zeros_like(coefficients))
        bias = intercept - (raw * shift).sum(dim=-1)
        weight = raw[:, 1:2] * head_weight
        weight[:, n_embd:] += raw[:, 2:]
    return raw[:, 0], weight, bias


# --- evaluation -----------------------------------------------------------------------------
def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both kinds."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _classify_held_out(model, items, class_names, read_options, fold, context):
    """Per recording: the recording head's class probabilities and each neuron's. Under DDP the
    recordings are shared out among the processes; rank 0 gets every record, the others none."""

    def probabilities(item) -> np.ndarray:  # row 0: the recording's, then one row per neuron
        tokens = source_neighbourhood(item.source, model.token_settings, read_options)
        result = model.classify(tokens)
        logits, _ = model.recording_decision(torch.from_numpy(result.neuron_embedding), tokens)
        recording = logits.float().softmax(-1).cpu().numpy()
        return np.concatenate([recording[None], result.class_probability])

    outputs = context.map_to_main(probabilities, items)
    return [
        {
            "animal": item.animal,
            "label": class_names.index(item.label),
            "recording": describe_source(item.source),
            "fold": fold,
            "probability": output[0],
            "neuron_probability": output[1:],
        }
        for item, output in zip(items, outputs or [])
    ]


def _report(records, class_names, evaluation, folds) -> FinetuneReport:
    if not records:  # stopped before any held-out animal was evaluated
        return FinetuneReport(tuple(class_names), evaluation, [], {}, folds)
    n_classes = len(class_names)
    animals = sorted({r["animal"] for r in records})
    rows = []
    animal_probability = {}
    for animal in animals:
        mine = [r for r in records if r["animal"] == animal]
        label = mine[0]["label"]
        probabilities = np.stack([r["probability"] for r in mine])
        neurons = np.concatenate([r["neuron_probability"] for r in mine])
        others = [r["neuron_probability"][:, label] for r in records if r["label"] != label]
        others = np.concatenate(others) if others else np.zeros(0)
        animal_probability[animal] = (label, probabilities.mean(0))
        rows.append(
            {
                "animal": animal,
                "label": class_names[label],
                "fold": mine[0]["fold"],
                "recordings": len(mine),
                "neurons": len(neurons),
                "predicted": class_names[int(probabilities.mean(0).argmax())],
                "p_true": float(probabilities[:, label].mean()),
                "recording_accuracy": float((probabilities.argmax(1) == label).mean()),
                "neuron_accuracy": float((neurons.argmax(1) == label).mean()),
                "neuron_auc": auc(
                    np.concatenate([neurons[:, label], others]),
                    np.arange(len(neurons) + len(others)) < len(neurons),
                ),
            }
        )

    def pooled_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
        if n_classes == 2:
            return auc(probabilities[:, 1], labels == 1)
        values = [auc(probabilities[:, c], labels == c) for c in range(n_classes)]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    animal_labels = np.array([label for label, _ in animal_probability.values()])
    animal_p = np.stack([p for _, p in animal_probability.values()])
    recording_labels = np.array([r["label"] for r in records])
    recording_p = np.stack([r["probability"] for r in records])
    neuron_labels = np.concatenate(
        [np.full(len(r["neuron_probability"]), r["label"]) for r in records]
    )
    neuron_p = np.concatenate([r["neuron_probability"] for r in records])
    summary = {
        "animals": len(animals),
        "animal_accuracy": float((animal_p.argmax(1) == animal_labels).mean()),
        "animal_auc": pooled_auc(animal_labels, animal_p),
        "recording_accuracy": float((recording_p.argmax(1) == recording_labels).mean()),
        "recording_auc": pooled_auc(recording_labels, recording_p),
        "neuron_accuracy": float((neuron_p.argmax(1) == neuron_labels).mean()),
        "neuron_auc": pooled_auc(neuron_labels, neuron_p),
    }
    return FinetuneReport(tuple(class_names), evaluation, rows, summary, folds)


# --- entry points ---------------------------------------------------------------------------
def finetune(
    data: str | os.PathLike | Iterable[Any],
    out_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    base: ModelSpec = "default",
    class_names: Sequence[str] | None = None,
    read_options: dict | None = None,
    progress: Callable[[TrainingProgress], object] | None = None,
    stop: Stop | None = None,
) -> FinetuneResult:
    """Fine-tune `base` to classify the recordings of `data` by their animals' labels.

    `data` is a manifest, class folders or an iterable of labelled recordings (module
    docstring). `base` is the pretrained model: anything `load_model` takes, a `NeurtModel`, or a
    `NeurtConfig` (an untrained network of that shape, for tests). `class_names` fixes the order
    of the classes (default: sorted labels; probabilities in results are of class 1).
    The model (with its class names) and ``report.json`` / ``report.csv`` are written to
    `out_dir`. `progress` gets a `TrainingProgress` after each step; `stop` ends training early
    (the model trained so far is evaluated and saved, and ``stopped`` is True).
    """
    steps = iter_finetune(
        data,
        out_dir,
        config,
        base=base,
        class_names=class_names,
        read_options=read_options,
        stop=stop,
    )
    return run_steps(steps, progress=progress)


def iter_finetune(
    data: str | os.PathLike | Iterable[Any],
    out_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    base: ModelSpec = "default",
    class_names: Sequence[str] | None = None,
    read_options: dict | None = None,
    stop: Stop | None = None,
) -> Steps[FinetuneResult]:
    """`finetune` as a generator of `TrainingProgress` that returns the `FinetuneResult`."""
    config = config or FinetuneConfig()
    items = labelled_recordings(data)
    class_names = check_cohort(items, class_names)
    check_out_dir(out_dir)
    should_stop = getattr(stop, "is_set", stop)
    start = starting_point(base, config.seed)
    context = DistributedContext.setup(config.device)
    try:
        return (
            yield from _iter_finetune(
                items, out_dir, config, start, class_names, read_options, should_stop, context
            )
        )
    finally:
        context.close()


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """Refuse, before any training, an output folder that cannot be made: the model and report
    are written only at the end."""
    out_dir = Path(out_dir).expanduser()
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(
                    f"cannot save the model to {out_dir}: {folder} is a file, not a folder"
                )
            return


def cohort_frame_rate(rates: Sequence[float], fallback: float | None) -> float | None:
    """The frame rate a classifier trained on recordings of `rates` records (the one its
    per-frame activity statistics were counted at, which `NeurtModel` warns about on other
    recordings): their median where they agree within `FRAME_RATE_TOLERANCE` (the share beyond
    which the model warns), `fallback` (the starting model's) where none was read, and none
    (with a warning) where they disagree."""
    if not len(rates):
        return fallback
    middle = float(np.median(rates))
    if max(abs(rate / middle - 1) for rate in rates) <= FRAME_RATE_TOLERANCE:
        return middle
    warnings.warn(
        f"the training recordings were taken at {min(rates):g} to {max(rates):g} Hz; the "
        "recording head counts activity per frame, so its statistics mean different things "
        "across them: resample them to one frame rate, or train a classifier per frame rate. "
        "The model records no frame rate.",
        stacklevel=2,
    )
    return None


def _iter_finetune(items, out_dir, config, start, class_names, read_options, should_stop, context):
    """The folds, the report and the saved model of `iter_finetune`, in `context` (every
    process trains and tests its share of the held-out recordings; rank 0 writes the model and
    the report)."""
    tokens, frame_rate = start.token_settings, start.frame_rate_hz
    device = context.device
    splits = plan_splits(items, config)
    total = config.steps * len(splits)
    records, folds, fit = [], [], None
    for number, split in enumerate(splits):
        name = f"held out {', '.join(split.test)}" if split.test else "all animals"
        stage = f"fold {number + 1}/{len(splits)} ({name})"
        module = classifier_network(
            start.network,
            len(class_names),
            config.mil_hidden,
            config.seed,
            neuron_stats=len(ACTIVITY_STATISTICS) if config.activity_statistics else 0,
            recording_pooling=config.recording_pooling,
            stats_spread=config.head_reads_spread,
        )
        fit = yield from _fit(
            module,
            [i for i in items if i.animal in split.train],
            [i for i in items if i.animal in split.validation],
            class_names,
            config,
            tokens,
            read_options,
            offset=number * config.steps,
            total=total,
            stage=stage,
            stop=should_stop,
            context=context,
        )
        frame_rate = cohort_frame_rate(fit.frame_rates, start.frame_rate_hz)
        model = NeurtModel(
            fit.module,
            class_names=class_names,
            tokens=tokens,
            frame_rate_hz=frame_rate,
            device=device,
        )
        model.bf16 = model.bf16 and config.bf16  # held-out animals, whole-recording fit: as trained
        fitting = split.train + split.validation
        fewest = min(len({i.animal for i in items if i.animal in fitting and i.label == name})
                     for name in class_names)
        # a stopped run saves the model as it was trained
        whole_fit = config.fits_whole_recordings(fewest) and not fit.stopped
        if whole_fit:
            fitted = [i for i in items if i.animal in fitting]
            yield TrainingProgress(
                number * config.steps + fit.steps,
                total,
                f"{stage} fitting the recording term to {len(fitted)} whole recordings",
            )
            _fit_to_whole_recordings(model, fitted, list(class_names), read_options, context)
        if split.test:
            records += _classify_held_out(
                model,
                [i for i in items if i.animal in split.test],
                list(class_names),
                read_options,
                number,
                context,
            )
        folds.append(
            {
                **asdict(split),
                "steps": fit.steps,
                "best_step": fit.best_step,
                "validation_loss": fit.validation_loss,
                "whole_recording_fit": whole_fit,
                "saved": number == len(splits) - 1,
            }
        )
        if fit.stopped:
            folds[-1]["saved"] = True  # the last model trained is the one saved
            break

    out_dir = Path(out_dir)
    if not context.is_main:
        context.barrier()  # rank 0 is writing
        return FinetuneResult(out_dir, model, None, fit.stopped)
    report = _report(records, class_names, config.evaluation, folds)
    save_checkpoint(
        out_dir,
        model.module,
        class_names=class_names,
        tokens=tokens,
        frame_rate_hz=frame_rate,
        provenance={
            "source": "napari-neurt finetune",
            "started_from": start.provenance,
            "train_animals": list(folds[-1]["train"]),
            "validation_animals": list(folds[-1]["validation"]),
            "steps": fit.steps,
            "best_step": fit.best_step,
            "config": config.to_dict(),
        },
    )
    report.write(out_dir)
    context.barrier()
    return FinetuneResult(out_dir, model, report, fit.stopped)
