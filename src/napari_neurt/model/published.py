"""The published NEuRT weights (Raev et al., 2026; github.com/rgKric/NEuRT): where to get them and
how to read them.

The published files are PyTorch state dicts. They are read with ``torch.load(weights_only=True)``,
which refuses any pickle that would run code, and their parameters are renamed to ours by one
explicit table (`ENCODER_NAMES`, `CLASSIFIER_NAMES`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, check_state_dict, sha256_of
from .neurt import NeurtConfig
from .tokens import token_settings

REPOSITORY = "rgKric/NEuRT"
COMMIT = "b08db0434bf10861e1c8f72d6f9e6619e59f25c8"
WEIGHTS_DIR_ENV = "NEURT_WEIGHTS_DIR"  # a folder laid out as the repository's models/ folder
CACHE_DIR_ENV = "NEURT_CACHE_DIR"  # where downloads are kept (default: the user cache folder)


@dataclass(frozen=True)
class PublishedWeights:
    name: str
    repo_path: str  # path inside the published repository
    sha256: str
    class_names: tuple[str, ...]
    description: str

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{self.repo_path}"

    @property
    def relative_path(self) -> str:
        """Path below NEURT_WEIGHTS_DIR (the repository's models/ folder)."""
        return self.repo_path.removeprefix("models/")


PUBLISHED = {
    "neurt-microns": PublishedWeights(
        name="neurt-microns",
        repo_path="models/bert_recon/model_epoch_20.pth",
        sha256="10396b2b4b03b2d9f5a8c6f6a11c263ee912596600b2903ae80572517a921b5c",
        class_names=(),
        description="NEuRT pretrained on MICrONS (visual cortex, 2-photon), masked reconstruction",
    ),
    "neurt-5xfad": PublishedWeights(
        name="neurt-5xfad",
        repo_path="models/bert_classifier/model_epoch_20.pth",
        sha256="74fff6eb736a802e99d15e9ed97887c44a19e1c8100c623b829df4afe212108b",
        # class 1 is 5xFAD in the published training script (wild type is label 0)
        class_names=("wild type", "5xFAD"),
        description="NEuRT fine-tuned to tell wild-type from 5xFAD mice (hippocampus, miniscope)",
    ),
}


class WeightsNotAvailable(FileNotFoundError):
    """Published weights are neither in NEURT_WEIGHTS_DIR nor in the cache, nor downloadable."""


def cache_dir() -> Path:
    """Folder where downloaded weights are kept: $NEURT_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-neurt"))


def fetch_published(name: str) -> Path:
    """Local path of the published weights `name` ("neurt-microns" or "neurt-5xfad").

    Looks in $NEURT_WEIGHTS_DIR first, then in the cache; otherwise downloads the file once (with
    pooch) from the published repository at the pinned commit and checks its sha256.
    """
    if name not in PUBLISHED:
        raise ValueError(f"unknown published weights {name!r}; choose from {', '.join(PUBLISHED)}")
    weights = PUBLISHED[name]
    if os.environ.get(WEIGHTS_DIR_ENV):
        local = Path(os.environ[WEIGHTS_DIR_ENV]) / weights.relative_path
        if local.is_file():
            digest = sha256_of(local)
            if digest != weights.sha256:
                raise ValueError(
                    f"{local} is not the published {name} file: its sha256 is {digest}, "
                    f"expected {weights.sha256}"
                )
            return local

    import pooch

    folder = cache_dir() / "weights"
    fname = f"{name}-{weights.sha256[:12]}.pth"
    try:
        return Path(
            pooch.retrieve(
                weights.url, known_hash=f"sha256:{weights.sha256}", fname=fname, path=folder
            )
        )
    except Exception as error:  # no network, proxy, HTTP error, checksum mismatch...
        raise WeightsNotAvailable(
            f"could not get the published {name} weights ({type(error).__name__}: {error}). "
            f"Download {weights.url} yourself and either save it as {folder / fname}, "
            "or put it in a "
            f"folder laid out as the repository's models/ folder ({weights.relative_path}) and set "
            f"{WEIGHTS_DIR_ENV} to that folder."
        ) from error


# --- reading a published state dict --------------------------------------------------------------
# Our parameter name <- the published one. Published names are written without the prefixes the
# files carry: every key starts with "module." (they were saved from nn.DataParallel), and in the
# classifier the encoder sits below "bert.". "{i}" is the block index. A tuple is concatenated along
# dim 0 (we fuse q, k and v into one matmul). LayerNorm gamma/beta are torch's weight/bias: the
# published TF-style LayerNorm (epsilon inside the square root) is nn.LayerNorm.
ENCODER_NAMES: dict[str, str | tuple[str, ...]] = {
    "embed.weight": "embed.lin.weight",
    "embed.bias": "embed.lin.bias",
    "pos.weight": "embed.pos_embed.weight",
    "ln_embed.weight": "embed.norm.gamma",
    "ln_embed.bias": "embed.norm.beta",
    "recon_head.weight": "decoder.weight",
    "recon_head.bias": "decoder.bias",
    "blocks.{i}.attn.qkv.weight": (
        "blocks.{i}.attn.proj_q.weight",
        "blocks.{i}.attn.proj_k.weight",
        "blocks.{i}.attn.proj_v.weight",
    ),
    "blocks.{i}.attn.qkv.bias": (
        "blocks.{i}.attn.proj_q.bias",
        "blocks.{i}.attn.proj_k.bias",
        "blocks.{i}.attn.proj_v.bias",
    ),
    "blocks.{i}.attn.proj.weight": "blocks.{i}.proj.weight",
    "blocks.{i}.attn.proj.bias": "blocks.{i}.proj.bias",
    "blocks.{i}.ln_1.weight": "blocks.{i}.norm1.gamma",
    "blocks.{i}.ln_1.bias": "blocks.{i}.norm1.beta",
    "blocks.{i}.mlp.fc.weight": "blocks.{i}.pwff.fc1.weight",
    "blocks.{i}.mlp.fc.bias": "blocks.{i}.pwff.fc1.bias",
    "blocks.{i}.mlp.proj.weight": "blocks.{i}.pwff.fc2.weight",
    "blocks.{i}.mlp.proj.bias": "blocks.{i}.pwff.fc2.bias",
    "blocks.{i}.ln_2.weight": "blocks.{i}.norm2.gamma",
    "blocks.{i}.ln_2.bias": "blocks.{i}.norm2.beta",
}
CLASSIFIER_NAMES: dict[str, str] = {
    "time_pool.query": "classification_blocks.q",  # (1, 1, C) there, (C,) here
    "time_pool.head.weight": "classification_blocks.lin1.weight",
    "time_pool.head.bias": "classification_blocks.lin1.bias",
}
ENCODER_PREFIX_IN_CLASSIFIER = "bert."


def read_published(path: str | os.PathLike) -> Checkpoint:
    """Read a published NEuRT `.pth` (reconstruction or classifier) as a `Checkpoint`.

    Its `model_cfg.json`, when beside it, gives the number of heads (the only setting the tensor
    shapes do not tell) and is checked for switches this implementation does not support.
    """
    path = Path(path)
    raw = _load_plain_state_dict(path)
    if any(not key.startswith("module.") for key in raw):
        raw_names = raw
    else:
        raw_names = {key.removeprefix("module."): value for key, value in raw.items()}
    is_classifier = any(key.startswith("classification_blocks.") for key in raw_names)
    encoder_prefix = ENCODER_PREFIX_IN_CLASSIFIER if is_classifier else ""

    config = _published_config(raw_names, encoder_prefix, path)
    state_dict: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(theirs: str | tuple[str, ...], prefix: str) -> torch.Tensor:
        names = (theirs,) if isinstance(theirs, str) else theirs
        missing = [prefix + n for n in names if prefix + n not in raw_names]
        if missing:
            raise ValueError(f"{path} is not a published NEuRT state dict: no {', '.join(missing)}")
        used.update(prefix + n for n in names)
        return torch.cat([raw_names[prefix + n] for n in names], dim=0)

    for ours, theirs in ENCODER_NAMES.items():
        if "{i}" not in ours:
            state_dict[ours] = take(theirs, encoder_prefix)
            continue
        for i in range(config.n_layer):
            names = tuple(n.format(i=i) for n in ((theirs,) if isinstance(theirs, str) else theirs))
            state_dict[ours.format(i=i)] = take(names, encoder_prefix)
    if is_classifier:
        for ours, theirs in CLASSIFIER_NAMES.items():
            state_dict[ours] = take(theirs, "")
        state_dict["time_pool.query"] = state_dict["time_pool.query"].reshape(-1)
    left_over = sorted(set(raw_names) - used)
    if left_over:
        raise ValueError(
            f"{path}: parameters this implementation does not know: {', '.join(left_over)}"
        )
    state_dict = {name: t.to(torch.float32).contiguous() for name, t in state_dict.items()}
    check_state_dict(config, state_dict, where=str(path))

    digest = sha256_of(path)
    known = next((w for w in PUBLISHED.values() if w.sha256 == digest), None)
    if known is not None:
        class_names = known.class_names
        provenance = {
            "source": known.name,
            "description": known.description,
            "repository": f"https://github.com/{REPOSITORY}",
            "commit": COMMIT,
            "repo_path": known.repo_path,
        }
    else:
        class_names = tuple(f"class {k}" for k in range(config.n_classes))
        provenance = {"source": "published-format .pth (not one of the published files)"}
    provenance.update(path=str(path), weights_sha256=digest, imported_from="pth")
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        class_names=class_names,
        tokens=token_settings(),
        frame_rate_hz=None,  # the published code does not record the frame rate it trained at
        provenance=provenance,
    )


def _load_plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the published .pth file of the weights")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        # weights_only=True: the unpickler only builds tensors and plain containers; a file that
        # asks to call anything else is refused before anything is called.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"refused to load {path}: it is not a plain PyTorch state dict of tensors "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Files that would run code when unpickled are never loaded."
        ) from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return loaded


def _published_config(raw: dict[str, torch.Tensor], prefix: str, path: Path) -> NeurtConfig:
    try:
        n_embd, n_features = raw[prefix + "embed.lin.weight"].shape
        seq_len = raw[prefix + "embed.pos_embed.weight"].shape[0]
        n_ff = raw[prefix + "blocks.0.pwff.fc1.weight"].shape[0]
    except KeyError as error:
        raise ValueError(
            f"{path} is not a published NEuRT state dict: no {error.args[0]}"
        ) from None
    n_layer = 0
    while f"{prefix}blocks.{n_layer}.proj.weight" in raw:
        n_layer += 1
    head = raw.get("classification_blocks.lin1.weight")
    n_head = 4  # both published models; the tensor shapes cannot tell
    settings_file = path.parent / "model_cfg.json"
    if settings_file.is_file():
        settings = json.loads(settings_file.read_text())
        n_head = int(settings.get("n_heads", n_head))
        unsupported = {
            "emb_norm": (settings.get("emb_norm", False), False),
            "use_parametr_sharing_strategy": (
                settings.get("use_parametr_sharing_strategy", False),
                False,
            ),
        }
        if head is not None:  # the classifier pools the last block's output
            unsupported["embedding_mode"] = (settings.get("embedding_mode", "last"), "last")
            unsupported["block_embedding_mode"] = (
                settings.get("block_embedding_mode", "not_hidden"),
                "not_hidden",
            )
        wrong = [f"{k}={v!r} (supported: {ok!r})" for k, (v, ok) in unsupported.items() if v != ok]
        if wrong:
            raise ValueError(f"{settings_file}: unsupported published settings: {', '.join(wrong)}")
    return NeurtConfig(
        seq_len=int(seq_len),
        n_features=int(n_features),
        n_embd=int(n_embd),
        n_head=n_head,
        n_layer=n_layer,
        n_ff=int(n_ff),
        n_classes=0 if head is None else int(head.shape[0]),
    )
